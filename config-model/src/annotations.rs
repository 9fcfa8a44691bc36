//! Reading a Service's `maille.io/` annotations (and the Traefik Mesh prefixes) into table
//! options. Each annotation is parsed on its own: a bad value turns that one feature off and
//! is reported, the others still apply.

use std::collections::BTreeMap;

use crate::duration;
use crate::options::{
    self, Form, Given, OptionError, OptionField, OptionProblem, OptionsInput, ServiceOptions,
};
use crate::wire::{OptionsSpec, SchemeSpec, TrafficType};

/// Annotation prefixes, in the order they are read: Maille's own first, then Traefik Mesh's.
pub const PREFIXES: [&str; 3] = ["maille.io/", "mesh.traefik.io/", "maesh.containo.us/"];

/// `traffic-type`: http, tcp or udp.
pub const TRAFFIC_TYPE: &str = "traffic-type";
/// `retry-attempts`: integer from 1 to [`options::MAX_RETRY_ATTEMPTS`].
pub const RETRY_ATTEMPTS: &str = "retry-attempts";
/// `retry-budget`: percent of the request rate, 1 to 100.
pub const RETRY_BUDGET: &str = "retry-budget";
/// `timeout`: duration such as `5s`.
pub const TIMEOUT: &str = "timeout";
/// `ratelimit-average`: requests per second.
pub const RATELIMIT_AVERAGE: &str = "ratelimit-average";
/// `ratelimit-burst`: bucket size.
pub const RATELIMIT_BURST: &str = "ratelimit-burst";
/// `circuit-breaker-expression`.
pub const CIRCUIT_BREAKER: &str = "circuit-breaker-expression";
/// `circuit-breaker-recovery-period`: how long a tripped breaker stays open, e.g. `10s`.
pub const CIRCUIT_BREAKER_RECOVERY: &str = "circuit-breaker-recovery-period";
/// `scheme`: http, https or h2c.
pub const SCHEME: &str = "scheme";
/// `tls-server-name`: name verified for https upstreams.
pub const TLS_SERVER_NAME: &str = "tls-server-name";
/// `tls-insecure-skip-verify`: `true` to skip verification of https upstreams.
pub const TLS_INSECURE_SKIP_VERIFY: &str = "tls-insecure-skip-verify";

/// `mesh`: `"false"` leaves a service out of the mesh; `"true"` puts it in when the controller
/// meshes only annotated services. Linkerd's `enabled`/`disabled` are accepted too.
pub const MESH: &str = "mesh";

/// A bad annotation value. The caller adds the object (`namespace/name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: invalid value {value:?}: {reason}")]
pub struct AnnotationError {
    /// Full annotation key as written, e.g. `maille.io/retry-attempts`.
    pub annotation: String,
    /// The value as written, cut to a bounded length ([`crate::cut::cut`]).
    pub value: String,
    /// What was expected.
    pub reason: String,
    /// For an option annotation, what is wrong in terms the table's JSON form shares
    /// ([`ServiceOptions::build`]); `None` for `traffic-type` and `mesh`.
    pub problem: Option<OptionProblem>,
}

/// The first of `maille.io/<name>`, `mesh.traefik.io/<name>`, `maesh.containo.us/<name>` that is
/// set, as (full key, value).
pub fn lookup<'a>(
    annotations: &'a BTreeMap<String, String>,
    name: &str,
) -> Option<(&'a str, &'a str)> {
    // Compares in place rather than formatting each candidate key: the controller calls this
    // for every annotation name of every Service at every rebuild.
    PREFIXES.iter().find_map(|prefix| {
        annotations
            .iter()
            .find(|(k, _)| k.strip_prefix(prefix) == Some(name))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    })
}

fn error(key: &str, value: &str, reason: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation: crate::cut::cut(key).into_owned(),
        value: crate::cut::cut(value).into_owned(),
        reason: reason.into(),
        problem: None,
    }
}

/// The traffic type the annotations ask for, if any.
pub fn traffic_type(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<TrafficType>, AnnotationError> {
    match lookup(annotations, TRAFFIC_TYPE) {
        None => Ok(None),
        Some((k, v)) => v
            .trim()
            .to_ascii_lowercase()
            .parse()
            .map(Some)
            .map_err(|_| error(k, v, "expected http, tcp or udp")),
    }
}

/// Whether the annotations ask for the service to be meshed (`Some(true)`), left out
/// (`Some(false)`), or say nothing (`None`).
pub fn mesh(annotations: &BTreeMap<String, String>) -> Result<Option<bool>, AnnotationError> {
    let Some((k, v)) = lookup(annotations, MESH) else {
        return Ok(None);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "enabled" => Ok(Some(true)),
        "false" | "disabled" => Ok(Some(false)),
        _ => Err(error(k, v, "expected \"true\" or \"false\"")),
    }
}

/// The key and text of each option annotation that is set, in [`OptionField::ALL`] order.
fn option_annotations(annotations: &BTreeMap<String, String>) -> Vec<(OptionField, &str, &str)> {
    OptionField::ALL
        .into_iter()
        .filter_map(|f| lookup(annotations, f.annotation()).map(|(k, v)| (f, k, v)))
        .collect()
}

/// Reads the text of one option annotation: its syntax only, the rules come after
/// ([`ServiceOptions::build`]).
fn read<'a>(
    input: &mut OptionsInput<'a>,
    field: OptionField,
    text: &'a str,
) -> Result<(), OptionProblem> {
    let t = text.trim();
    let int = || -> Result<u32, OptionProblem> {
        t.parse::<u32>().map_err(|_| {
            let (min, max) = field.bounds().unwrap_or((0, u32::MAX));
            OptionProblem::Syntax(format!("expected an integer from {min} to {max}"))
        })
    };
    let millis = || duration::parse_millis(text).map_err(|e| OptionProblem::Syntax(e.to_string()));
    match field {
        OptionField::RetryAttempts => input.retry_attempts = Given::Value(int()?),
        OptionField::RetryBudget => {
            let n = t.strip_suffix('%').unwrap_or(t).trim().parse::<u32>();
            let n = n.map_err(|_| {
                OptionProblem::Syntax("expected a percentage from 1 to 100, e.g. 20".into())
            })?;
            input.retry_budget_percent = Given::Value(n);
        }
        OptionField::Timeout => input.timeout_ms = Given::Value(millis()?),
        OptionField::RateLimitAverage => input.rate_limit_average = Given::Value(int()?),
        OptionField::RateLimitBurst => input.rate_limit_burst = Given::Value(int()?),
        OptionField::CircuitBreaker => input.circuit_breaker = Given::Value(text),
        OptionField::CircuitBreakerRecovery => {
            input.circuit_breaker_recovery_ms = Given::Value(millis()?)
        }
        OptionField::Scheme => input.scheme = Given::Value(SchemeSpec::from(t)),
        OptionField::TlsServerName => input.tls_server_name = Given::Value(t),
        OptionField::TlsInsecureSkipVerify => {
            input.tls_insecure_skip_verify = Given::Value(match t {
                "true" => true,
                "false" => false,
                _ => return Err(OptionProblem::Syntax("expected true or false".into())),
            })
        }
    }
    Ok(())
}

fn mark_unreadable(input: &mut OptionsInput<'_>, field: OptionField) {
    match field {
        OptionField::RetryAttempts => input.retry_attempts = Given::Unreadable,
        OptionField::RetryBudget => input.retry_budget_percent = Given::Unreadable,
        OptionField::Timeout => input.timeout_ms = Given::Unreadable,
        OptionField::RateLimitAverage => input.rate_limit_average = Given::Unreadable,
        OptionField::RateLimitBurst => input.rate_limit_burst = Given::Unreadable,
        OptionField::CircuitBreaker => input.circuit_breaker = Given::Unreadable,
        OptionField::CircuitBreakerRecovery => {
            input.circuit_breaker_recovery_ms = Given::Unreadable
        }
        OptionField::Scheme => input.scheme = Given::Unreadable,
        OptionField::TlsServerName => input.tls_server_name = Given::Unreadable,
        OptionField::TlsInsecureSkipVerify => input.tls_insecure_skip_verify = Given::Unreadable,
    }
}

/// Reads the middleware annotations of a service of the given traffic type, with the same
/// rules as the table ([`ServiceOptions::build`]). Returns the options that passed, their
/// breaker expression parsed, and one error per annotation that did not.
pub fn service_options(
    annotations: &BTreeMap<String, String>,
    traffic_type: TrafficType,
) -> (ServiceOptions, Vec<AnnotationError>) {
    let found = option_annotations(annotations);
    let located = |e: OptionError| {
        let (_, k, v) = found
            .iter()
            .find(|(f, _, _)| *f == e.field)
            .copied()
            .unwrap_or((e.field, e.field.annotation(), ""));
        AnnotationError {
            annotation: crate::cut::cut(k).into_owned(),
            value: crate::cut::cut(v).into_owned(),
            reason: e.reason(Form::Annotation),
            problem: Some(e.problem),
        }
    };
    if traffic_type != TrafficType::Http {
        let mut errors = Vec::new();
        for &(f, _, v) in &found {
            if let Err(e) = options::check_traffic_type(f, v, traffic_type) {
                errors.push(located(e));
            }
        }
        return (ServiceOptions::default(), errors);
    }
    let mut errors: Vec<(OptionField, AnnotationError)> = Vec::new();
    let mut input = OptionsInput::default();
    for &(f, k, v) in &found {
        if let Err(problem) = read(&mut input, f, v) {
            mark_unreadable(&mut input, f);
            let mut e = error(k, v, String::new());
            e.reason = match &problem {
                OptionProblem::Syntax(s) => s.clone(),
                _ => String::new(),
            };
            e.problem = Some(problem);
            errors.push((f, e));
        }
    }
    let (options, rule_errors) = ServiceOptions::build(traffic_type, &input);
    errors.extend(rule_errors.into_iter().map(|e| (e.field, located(e))));
    // One list in option order, whichever stage found the error.
    errors.sort_by_key(|(f, _)| *f);
    (options, errors.into_iter().map(|(_, e)| e).collect())
}

/// Reads the middleware annotations of a service of the given traffic type into the table's
/// JSON form ([`service_options`], then its canonical spelling). Returns the options that
/// parsed and one error per annotation that did not.
pub fn options(
    annotations: &BTreeMap<String, String>,
    traffic_type: TrafficType,
) -> (OptionsSpec, Vec<AnnotationError>) {
    let (options, errors) = service_options(annotations, traffic_type);
    (OptionsSpec::from(&options), errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn maille_prefix_wins_over_traefik_prefixes() {
        let a = ann(&[
            ("mesh.traefik.io/traffic-type", "tcp"),
            ("maille.io/traffic-type", "udp"),
        ]);
        assert_eq!(traffic_type(&a), Ok(Some(TrafficType::Udp)));
        let a = ann(&[("maesh.containo.us/traffic-type", "TCP")]);
        assert_eq!(traffic_type(&a), Ok(Some(TrafficType::Tcp)));
        assert_eq!(traffic_type(&ann(&[])), Ok(None));
    }

    #[test]
    fn mesh_opt_in_and_opt_out() {
        assert_eq!(mesh(&ann(&[])), Ok(None));
        assert_eq!(mesh(&ann(&[("maille.io/mesh", "false")])), Ok(Some(false)));
        assert_eq!(mesh(&ann(&[("maille.io/mesh", " True ")])), Ok(Some(true)));
        assert_eq!(
            mesh(&ann(&[("maille.io/mesh", "disabled")])),
            Ok(Some(false))
        );
        let e = mesh(&ann(&[("maille.io/mesh", "no")])).unwrap_err();
        assert_eq!(e.annotation, "maille.io/mesh");
        assert!(e.to_string().contains("\"no\""), "{e}");
    }

    #[test]
    fn bad_traffic_type_names_key_and_value() {
        let e = traffic_type(&ann(&[("mesh.traefik.io/traffic-type", "sctp")])).unwrap_err();
        assert_eq!(e.annotation, "mesh.traefik.io/traffic-type");
        assert_eq!(e.to_string(), "annotation mesh.traefik.io/traffic-type: invalid value \"sctp\": expected http, tcp or udp");
    }

    #[test]
    fn parses_every_option() {
        let a = ann(&[
            ("maille.io/retry-attempts", "3"),
            ("maille.io/retry-budget", "25%"),
            ("maille.io/timeout", "1500ms"),
            ("maille.io/ratelimit-average", "100"),
            ("maille.io/ratelimit-burst", "200"),
            (
                "maille.io/circuit-breaker-expression",
                "NetworkErrorRatio() > 0.5",
            ),
            ("maille.io/circuit-breaker-recovery-period", "2s"),
            ("maille.io/scheme", "https"),
            ("maille.io/tls-server-name", "api.example"),
        ]);
        let (o, errors) = options(&a, TrafficType::Http);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(o.retry_attempts, Some(3));
        assert_eq!(o.retry_budget_percent, Some(25));
        assert_eq!(o.timeout_ms, Some(1500));
        assert_eq!(
            o.rate_limit,
            Some(crate::RateLimitSpec {
                average: 100,
                burst: 200
            })
        );
        assert_eq!(
            o.circuit_breaker.as_deref(),
            Some("NetworkErrorRatio() > 0.5")
        );
        assert_eq!(o.circuit_breaker_recovery_ms, Some(2000));
        assert_eq!(o.scheme, Some(SchemeSpec::Known(crate::Scheme::Https)));
        assert_eq!(o.tls_server_name.as_deref(), Some("api.example"));
    }

    #[test]
    fn traefik_prefixed_options_are_read() {
        let a = ann(&[
            ("mesh.traefik.io/retry-attempts", "2"),
            ("maesh.containo.us/ratelimit-average", "5"),
            ("maesh.containo.us/ratelimit-burst", "10"),
            (
                "mesh.traefik.io/circuit-breaker-expression",
                "LatencyAtQuantileMS(50.0) > 100",
            ),
        ]);
        let (o, errors) = options(&a, TrafficType::Http);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(o.retry_attempts, Some(2));
        assert_eq!(o.rate_limit.map(|r| (r.average, r.burst)), Some((5, 10)));
        assert!(o.circuit_breaker.is_some());
    }

    #[test]
    fn bad_breaker_expression_names_annotation_value_and_column() {
        let a = ann(&[
            (
                "maille.io/circuit-breaker-expression",
                "NetworkErrorRatio() > 0.5 || Bogus() > 1",
            ),
            ("maille.io/circuit-breaker-recovery-period", "5s"),
            ("maille.io/timeout", "2s"),
        ]);
        let (o, errors) = options(&a, TrafficType::Http);
        assert_eq!(o.circuit_breaker, None);
        assert_eq!(o.circuit_breaker_recovery_ms, None);
        assert_eq!(o.timeout_ms, Some(2000));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(
            errors[0].to_string(),
            "annotation maille.io/circuit-breaker-expression: invalid value \
             \"NetworkErrorRatio() > 0.5 || Bogus() > 1\": at column 30: unknown function \
             \"Bogus\": expected NetworkErrorRatio(), ResponseCodeRatio(from, to, \
             dividendFrom, dividendTo) or LatencyAtQuantileMS(quantile)"
        );
    }

    #[test]
    fn recovery_period_needs_a_breaker_and_a_duration() {
        let (o, errors) = options(
            &ann(&[("maille.io/circuit-breaker-recovery-period", "5s")]),
            TrafficType::Http,
        );
        assert_eq!(o.circuit_breaker_recovery_ms, None);
        assert!(errors[0]
            .reason
            .contains("without circuit-breaker-expression"));
        let (o, errors) = options(
            &ann(&[
                (
                    "maille.io/circuit-breaker-expression",
                    "NetworkErrorRatio() > 0.5",
                ),
                ("maille.io/circuit-breaker-recovery-period", "soon"),
            ]),
            TrafficType::Http,
        );
        assert!(o.circuit_breaker.is_some());
        assert_eq!(o.circuit_breaker_recovery_ms, None);
        assert_eq!(
            errors[0].annotation,
            "maille.io/circuit-breaker-recovery-period"
        );
    }

    #[test]
    fn invalid_numbers_are_rejected_with_the_expected_range() {
        for (name, value) in [
            ("retry-attempts", "0"),
            ("retry-attempts", "two"),
            ("retry-attempts", "1.5"),
            ("ratelimit-average", "-3"),
            ("ratelimit-burst", "0"),
            ("timeout", "0s"),
            ("timeout", "-1s"),
            ("scheme", "ftp"),
            ("retry-budget", "150"),
        ] {
            let mut a = ann(&[
                ("maille.io/retry-attempts", "1"),
                ("maille.io/ratelimit-average", "1"),
                ("maille.io/ratelimit-burst", "1"),
            ]);
            a.insert(format!("maille.io/{name}"), value.to_string());
            let (_, errors) = options(&a, TrafficType::Http);
            assert!(
                errors
                    .iter()
                    .any(|e| e.annotation == format!("maille.io/{name}") && e.value == value),
                "{name}={value}: {errors:?}"
            );
        }
    }

    #[test]
    fn a_bad_value_turns_off_only_its_feature() {
        let a = ann(&[
            ("maille.io/retry-attempts", "-1"),
            ("maille.io/timeout", "soon"),
            ("maille.io/ratelimit-average", "10"),
            ("maille.io/scheme", "h2c"),
        ]);
        let (o, errors) = options(&a, TrafficType::Http);
        assert_eq!(o.retry_attempts, None);
        assert_eq!(o.timeout_ms, None);
        assert_eq!(o.rate_limit, None);
        assert_eq!(o.scheme, Some(SchemeSpec::Known(crate::Scheme::H2c)));
        let keys: Vec<_> = errors.iter().map(|e| e.annotation.as_str()).collect();
        assert_eq!(
            keys,
            [
                "maille.io/retry-attempts",
                "maille.io/timeout",
                "maille.io/ratelimit-average"
            ]
        );
        assert!(errors[2].reason.contains("ratelimit-burst"));
    }

    #[test]
    fn errors_carry_the_problem_the_table_form_shares() {
        let a = ann(&[
            ("maille.io/retry-attempts", "101"),
            ("maille.io/retry-budget", "many"),
            ("maille.io/scheme", "HTTPS"),
            ("maille.io/tls-server-name", "api example"),
        ]);
        let (o, errors) = service_options(&a, TrafficType::Http);
        assert_eq!(o, ServiceOptions::default());
        let got: Vec<_> = errors
            .iter()
            .map(|e| (e.annotation.as_str(), e.value.as_str(), e.problem.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "maille.io/retry-attempts",
                    "101",
                    Some(OptionProblem::OutOfRange { min: 1, max: 100 })
                ),
                (
                    "maille.io/retry-budget",
                    "many",
                    Some(OptionProblem::Syntax(
                        "expected a percentage from 1 to 100, e.g. 20".into()
                    ))
                ),
                (
                    "maille.io/scheme",
                    "HTTPS",
                    Some(OptionProblem::UnknownScheme)
                ),
                // Not blamed for the scheme: only its own rule applies.
                (
                    "maille.io/tls-server-name",
                    "api example",
                    Some(OptionProblem::ServerName(
                        "expected a DNS name (labels of letters, digits, - and _, at most 63 \
                         each) or an IP address"
                    ))
                ),
            ]
        );
        assert_eq!(
            errors[0].to_string(),
            "annotation maille.io/retry-attempts: invalid value \"101\": expected an integer from 1 to 100"
        );
    }

    #[test]
    fn the_breaker_expression_comes_out_parsed() {
        let a = ann(&[(
            "maille.io/circuit-breaker-expression",
            "NetworkErrorRatio() > 0.5",
        )]);
        let (o, errors) = service_options(&a, TrafficType::Http);
        assert!(errors.is_empty(), "{errors:?}");
        let cb = o.circuit_breaker.expect("a breaker");
        assert_eq!(cb.expr.source, "NetworkErrorRatio() > 0.5");
        assert!(matches!(cb.expr.ast, crate::expr::Expr::Compare { .. }));
    }

    #[test]
    fn http_options_on_tcp_service_are_reported() {
        let (o, errors) = options(&ann(&[("maille.io/retry-attempts", "2")]), TrafficType::Tcp);
        assert_eq!(o, OptionsSpec::default());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].reason.contains("only http"));
        assert_eq!(errors[0].value, "2");
        assert_eq!(
            errors[0].problem,
            Some(OptionProblem::HttpOnly(TrafficType::Tcp))
        );
    }
}

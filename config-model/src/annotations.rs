//! Reading a Service's `maille.io/` annotations (and the Traefik Mesh prefixes) into table
//! options. Each annotation is parsed on its own: a bad value turns that one feature off and
//! is reported, the others still apply.

use std::collections::BTreeMap;

use crate::duration;
use crate::expr;
use crate::options::Scheme;
use crate::wire::{OptionsSpec, RateLimitSpec, TrafficType};

/// Annotation prefixes, in the order they are read: Maille's own first, then Traefik Mesh's.
pub const PREFIXES: [&str; 3] = ["maille.io/", "mesh.traefik.io/", "maesh.containo.us/"];

/// `traffic-type`: http, tcp or udp.
pub const TRAFFIC_TYPE: &str = "traffic-type";
/// `retry-attempts`: integer ≥ 1.
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

fn int_at_least(
    annotations: &BTreeMap<String, String>,
    name: &str,
    min: u32,
    max: u32,
    errors: &mut Vec<AnnotationError>,
) -> Option<u32> {
    let (k, v) = lookup(annotations, name)?;
    match v.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        _ => {
            errors.push(error(
                k,
                v,
                format!("expected an integer from {min} to {max}"),
            ));
            None
        }
    }
}

/// Reads the middleware annotations of a service of the given traffic type. Returns the
/// options that parsed and one error per annotation that did not.
pub fn options(
    annotations: &BTreeMap<String, String>,
    traffic_type: TrafficType,
) -> (OptionsSpec, Vec<AnnotationError>) {
    let mut errors = Vec::new();
    let mut o = OptionsSpec::default();
    if traffic_type != TrafficType::Http {
        for name in [
            RETRY_ATTEMPTS,
            RETRY_BUDGET,
            TIMEOUT,
            RATELIMIT_AVERAGE,
            RATELIMIT_BURST,
            CIRCUIT_BREAKER,
            CIRCUIT_BREAKER_RECOVERY,
            SCHEME,
            TLS_SERVER_NAME,
            TLS_INSECURE_SKIP_VERIFY,
        ] {
            if let Some((k, v)) = lookup(annotations, name) {
                errors.push(error(
                    k,
                    v,
                    format!("only http services support it, this one is {traffic_type}"),
                ));
            }
        }
        return (o, errors);
    }

    o.retry_attempts = int_at_least(annotations, RETRY_ATTEMPTS, 1, 100, &mut errors);
    if let Some((k, v)) = lookup(annotations, RETRY_BUDGET) {
        let t = v.trim();
        match t.strip_suffix('%').unwrap_or(t).trim().parse::<u32>() {
            Ok(n) if (1..=100).contains(&n) => o.retry_budget_percent = Some(n),
            _ => errors.push(error(k, v, "expected a percentage from 1 to 100, e.g. 20")),
        }
        if o.retry_attempts.is_none() && lookup(annotations, RETRY_ATTEMPTS).is_none() {
            errors.push(error(k, v, "has no effect without retry-attempts"));
            o.retry_budget_percent = None;
        }
    }

    if let Some((k, v)) = lookup(annotations, TIMEOUT) {
        match duration::parse_millis(v) {
            Ok(0) => errors.push(error(
                k,
                v,
                "expected a duration above zero, e.g. 5s or 250ms",
            )),
            Ok(ms) => o.timeout_ms = Some(ms),
            Err(e) => errors.push(error(k, v, e.to_string())),
        }
    }

    let average = int_at_least(annotations, RATELIMIT_AVERAGE, 1, u32::MAX, &mut errors);
    let burst = int_at_least(annotations, RATELIMIT_BURST, 1, u32::MAX, &mut errors);
    match (
        average,
        burst,
        lookup(annotations, RATELIMIT_AVERAGE),
        lookup(annotations, RATELIMIT_BURST),
    ) {
        (Some(average), Some(burst), _, _) => o.rate_limit = Some(RateLimitSpec { average, burst }),
        (Some(_), None, _, None) => {
            let (k, v) = lookup(annotations, RATELIMIT_AVERAGE).unwrap_or_default();
            errors.push(error(k, v, "ratelimit-burst must be set too"));
        }
        (None, Some(_), None, _) => {
            let (k, v) = lookup(annotations, RATELIMIT_BURST).unwrap_or_default();
            errors.push(error(k, v, "ratelimit-average must be set too"));
        }
        _ => {}
    }

    if let Some((k, v)) = lookup(annotations, CIRCUIT_BREAKER) {
        match expr::parse(v) {
            Ok(_) => o.circuit_breaker = Some(v.to_string()),
            Err(e) => errors.push(error(k, v, e.to_string())),
        }
    }
    if let Some((k, v)) = lookup(annotations, CIRCUIT_BREAKER_RECOVERY) {
        match duration::parse_millis(v) {
            _ if lookup(annotations, CIRCUIT_BREAKER).is_none() => errors.push(error(
                k,
                v,
                "has no effect without circuit-breaker-expression",
            )),
            Ok(0) => errors.push(error(k, v, "expected a duration above zero, e.g. 10s")),
            // Only meaningful with a breaker that parsed; a bad expression is reported already.
            Ok(ms) if o.circuit_breaker.is_some() => o.circuit_breaker_recovery_ms = Some(ms),
            Ok(_) => {}
            Err(e) => errors.push(error(k, v, e.to_string())),
        }
    }

    if let Some((k, v)) = lookup(annotations, SCHEME) {
        match Scheme::parse(v.trim()) {
            Some(Scheme::Http) => {}
            Some(s) => o.scheme = Some(s.as_str().to_string()),
            None => errors.push(error(k, v, "expected http, https or h2c")),
        }
    }
    let https = o.scheme.as_deref() == Some("https");
    if let Some((k, v)) = lookup(annotations, TLS_SERVER_NAME) {
        if !https {
            errors.push(error(k, v, "needs scheme https"));
        } else if v.trim().is_empty() {
            errors.push(error(k, v, "expected a DNS name"));
        } else {
            o.tls_server_name = Some(v.trim().to_string());
        }
    }
    if let Some((k, v)) = lookup(annotations, TLS_INSECURE_SKIP_VERIFY) {
        match v.trim() {
            "true" if https => o.tls_insecure_skip_verify = true,
            "true" => errors.push(error(k, v, "needs scheme https")),
            "false" => {}
            _ => errors.push(error(k, v, "expected true or false")),
        }
    }
    (o, errors)
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
            Some(RateLimitSpec {
                average: 100,
                burst: 200
            })
        );
        assert_eq!(
            o.circuit_breaker.as_deref(),
            Some("NetworkErrorRatio() > 0.5")
        );
        assert_eq!(o.circuit_breaker_recovery_ms, Some(2000));
        assert_eq!(o.scheme.as_deref(), Some("https"));
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
        assert_eq!(o.scheme.as_deref(), Some("h2c"));
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
    fn http_options_on_tcp_service_are_reported() {
        let (o, errors) = options(&ann(&[("maille.io/retry-attempts", "2")]), TrafficType::Tcp);
        assert_eq!(o, OptionsSpec::default());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].reason.contains("only http"));
    }
}

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::annotations::{self, AnnotationError};
use crate::expr::ExprError;
use crate::testing::{http, table};
use crate::{Error, Table};

fn problem<T: fmt::Debug>(r: Result<T, OptionError>) -> (OptionField, String, OptionProblem) {
    let e = r.unwrap_err();
    (e.field, e.value, e.problem)
}

fn range(min: u64, max: u64) -> OptionProblem {
    OptionProblem::OutOfRange { min, max }
}

#[test]
fn retry_attempts_are_1_to_100() {
    assert_eq!(RetryPolicy::check_attempts(1), Ok(1));
    assert_eq!(RetryPolicy::check_attempts(100), Ok(100));
    for bad in [0, 101, u32::MAX] {
        assert_eq!(
            problem(RetryPolicy::check_attempts(bad)),
            (OptionField::RetryAttempts, bad.to_string(), range(1, 100))
        );
    }
    assert_eq!(
        RetryPolicy::new(3, None),
        Ok(RetryPolicy {
            attempts: 3,
            budget_percent: DEFAULT_RETRY_BUDGET_PERCENT
        })
    );
}

#[test]
fn retry_budget_is_a_percentage() {
    assert_eq!(RetryPolicy::check_budget_percent(1), Ok(1));
    assert_eq!(RetryPolicy::check_budget_percent(100), Ok(100));
    for bad in [0, 101] {
        assert_eq!(
            problem(RetryPolicy::check_budget_percent(bad)),
            (OptionField::RetryBudget, bad.to_string(), range(1, 100))
        );
    }
    assert_eq!(
        problem(RetryPolicy::new(2, Some(0))).0,
        OptionField::RetryBudget
    );
    assert_eq!(
        problem(RetryPolicy::new(0, Some(0))).0,
        OptionField::RetryAttempts
    );
}

#[test]
fn timeout_is_above_zero() {
    assert_eq!(check_timeout_ms(1), Ok(1));
    assert_eq!(check_timeout_ms(u64::MAX), Ok(u64::MAX));
    assert_eq!(
        problem(check_timeout_ms(0)),
        (
            OptionField::Timeout,
            "0".into(),
            OptionProblem::ZeroDuration
        )
    );
}

#[test]
fn rate_limit_needs_both_above_zero() {
    assert_eq!(
        RateLimit::new(u32::MAX, 1),
        Ok(RateLimit {
            average: u32::MAX,
            burst: 1
        })
    );
    assert_eq!(
        problem(RateLimit::new(0, 5)),
        (
            OptionField::RateLimitAverage,
            "0".into(),
            range(1, u32::MAX.into())
        )
    );
    assert_eq!(problem(RateLimit::new(5, 0)).0, OptionField::RateLimitBurst);
}

#[test]
fn circuit_breaker_parses_once_and_shares_the_expression() {
    let cb = CircuitBreaker::new("NetworkErrorRatio() > 0.5", None).unwrap();
    assert_eq!(cb.recovery_ms, DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS);
    assert_eq!(cb.expr.source, "NetworkErrorRatio() > 0.5");
    let copy = cb.clone();
    assert!(Arc::ptr_eq(&cb.expr, &copy.expr), "a clone re-used the AST");

    let (field, value, p) = problem(CircuitBreaker::new("Bogus() > 1", None));
    assert_eq!(
        (field, value.as_str()),
        (OptionField::CircuitBreaker, "Bogus() > 1")
    );
    assert!(
        matches!(p, OptionProblem::Expression(ExprError { column: 1, .. })),
        "{p:?}"
    );

    assert_eq!(
        problem(CircuitBreaker::new("NetworkErrorRatio() > 0.5", Some(0))),
        (
            OptionField::CircuitBreakerRecovery,
            "0".into(),
            OptionProblem::ZeroDuration
        )
    );
    assert_eq!(CircuitBreaker::check_recovery_ms(2500), Ok(2500));
}

#[test]
fn scheme_is_an_enum_on_the_wire() {
    for s in Scheme::ALL {
        let json = serde_json::to_string(&SchemeSpec::Known(s)).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        let back: SchemeSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, SchemeSpec::Known(s));
        assert_eq!(Scheme::from_spec(&back), Ok(s));
    }
    let other: SchemeSpec = serde_json::from_str("\"HTTPS\"").unwrap();
    assert_eq!(other, SchemeSpec::Unknown("HTTPS".into()));
    assert_eq!(serde_json::to_string(&other).unwrap(), "\"HTTPS\"");
    assert_eq!(
        problem(Scheme::from_spec(&other)),
        (
            OptionField::Scheme,
            "HTTPS".into(),
            OptionProblem::UnknownScheme
        )
    );
    // A hostile value is quoted cut.
    let long = SchemeSpec::from("x".repeat(1 << 16).as_str());
    let e = Scheme::from_spec(&long).unwrap_err();
    assert!(e.value.len() < 200, "{} bytes", e.value.len());
    assert!(e.value.ends_with("…[65536 bytes]"), "{}", e.value);
}

#[test]
fn a_bad_scheme_in_table_json_names_service_field_and_value() {
    let long = "f".repeat(5000);
    for (scheme, shown) in [
        ("ftp".to_string(), "ftp".to_string()),
        (long.clone(), crate::cut::cut(&long).into_owned()),
    ] {
        let json = format!(
            r#"{{"schemaVersion":1,"services":[{{"namespace":"shop","name":"web","port":80,
                "meshPort":5000,"options":{{"scheme":"{scheme}"}}}}]}}"#
        );
        match Table::from_json(json.as_bytes()) {
            Err(crate::table::JsonError::Invalid(Error::InvalidField {
                service,
                field,
                value,
                reason,
            })) => {
                assert_eq!(
                    (service.as_str(), field.as_str(), value.as_str()),
                    ("shop/web:80", "options.scheme", shown.as_str())
                );
                assert_eq!(reason, "expected http, https or h2c");
            }
            other => panic!("{other:?}"),
        }
    }
    // Not a string at all: the JSON is not a table.
    let json = br#"{"schemaVersion":1,"services":[{"namespace":"shop","name":"web","port":80,
        "meshPort":5000,"options":{"scheme":7}}]}"#;
    assert!(matches!(
        Table::from_json(json),
        Err(crate::table::JsonError::Parse(_))
    ));
}

#[test]
fn tls_server_name_is_a_dns_name_or_an_address() {
    for ok in [
        "api.example",
        "API.Example.",
        "svc_1.ns",
        "10.0.0.1",
        "::1",
        "a",
    ] {
        assert_eq!(
            TlsOptions::check_server_name(ok),
            Ok(ok.to_string()),
            "{ok}"
        );
    }
    let long = format!("{}.example", "a".repeat(250));
    let label = "a".repeat(64);
    for bad in [
        "",
        " api",
        "a b",
        "-a.example",
        "a..b",
        "a/b",
        &long,
        &label,
    ] {
        let (field, value, p) = problem(TlsOptions::check_server_name(bad));
        assert_eq!(field, OptionField::TlsServerName, "{bad}");
        assert!(matches!(p, OptionProblem::ServerName(_)), "{bad}: {p:?}");
        assert_eq!(value, crate::cut::cut(bad), "{bad}");
    }
}

#[test]
fn tls_settings_need_https() {
    assert_eq!(
        TlsOptions::new(Scheme::Https, Some("api.example"), true),
        Ok(TlsOptions {
            server_name: Some("api.example".into()),
            insecure_skip_verify: true
        })
    );
    assert_eq!(
        problem(TlsOptions::new(Scheme::Http, Some("api.example"), false)),
        (
            OptionField::TlsServerName,
            "api.example".into(),
            OptionProblem::NeedsHttps
        )
    );
    assert_eq!(
        problem(TlsOptions::new(Scheme::H2c, None, true)),
        (
            OptionField::TlsInsecureSkipVerify,
            "true".into(),
            OptionProblem::NeedsHttps
        )
    );
    assert_eq!(
        TlsOptions::new(Scheme::H2c, None, false),
        Ok(TlsOptions::default())
    );
}

#[test]
fn every_option_is_http_only() {
    assert_eq!(
        check_traffic_type(OptionField::Timeout, 5, TrafficType::Http),
        Ok(())
    );
    let full = OptionsSpec {
        retry_attempts: Some(1),
        retry_budget_percent: Some(10),
        timeout_ms: Some(5),
        rate_limit: Some(RateLimitSpec {
            average: 1,
            burst: 1,
        }),
        circuit_breaker: Some("NetworkErrorRatio() > 0.5".into()),
        circuit_breaker_recovery_ms: Some(5),
        scheme: Some(Scheme::Http.into()),
        tls_server_name: Some("a".into()),
        tls_insecure_skip_verify: true,
    };
    for tt in [TrafficType::Tcp, TrafficType::Udp] {
        let (o, errors) = ServiceOptions::build(tt, &OptionsInput::from(&full));
        assert_eq!(o, ServiceOptions::default());
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, OptionField::ALL);
        assert!(errors
            .iter()
            .all(|e| e.problem == OptionProblem::HttpOnly(tt)));
    }
}

#[test]
fn an_option_that_needs_another_says_which() {
    let needs = |spec: OptionsSpec| {
        let e = ServiceOptions::try_from_spec(TrafficType::Http, &spec).unwrap_err();
        (e.field, e.problem)
    };
    assert_eq!(
        needs(OptionsSpec {
            retry_budget_percent: Some(30),
            ..OptionsSpec::default()
        }),
        (
            OptionField::RetryBudget,
            OptionProblem::Needs(OptionField::RetryAttempts)
        )
    );
    assert_eq!(
        needs(OptionsSpec {
            circuit_breaker_recovery_ms: Some(30),
            ..OptionsSpec::default()
        }),
        (
            OptionField::CircuitBreakerRecovery,
            OptionProblem::Needs(OptionField::CircuitBreaker)
        )
    );
    // Halves of a rate limit exist only as annotations; the rule is the same.
    let input = OptionsInput {
        rate_limit_average: Given::Value(10),
        ..OptionsInput::default()
    };
    let (o, errors) = ServiceOptions::build(TrafficType::Http, &input);
    assert_eq!(o.rate_limit, None);
    assert_eq!(
        errors[0].problem,
        OptionProblem::Needs(OptionField::RateLimitBurst)
    );
    // A dependency that was set but unreadable is reported once, by its reader.
    let input = OptionsInput {
        retry_attempts: Given::Unreadable,
        retry_budget_percent: Given::Value(30),
        ..OptionsInput::default()
    };
    assert_eq!(ServiceOptions::build(TrafficType::Http, &input).1, vec![]);
}

#[test]
fn a_refused_option_leaves_the_others() {
    let spec = OptionsSpec {
        retry_attempts: Some(2),
        retry_budget_percent: Some(0),
        timeout_ms: Some(0),
        circuit_breaker: Some("NetworkErrorRatio() > 0.5".into()),
        circuit_breaker_recovery_ms: Some(0),
        scheme: Some("ftp".into()),
        tls_server_name: Some("api.example".into()),
        ..OptionsSpec::default()
    };
    let (o, errors) = ServiceOptions::build(TrafficType::Http, &OptionsInput::from(&spec));
    assert_eq!(o.retry, RetryPolicy::new(2, None).ok());
    assert_eq!(o.timeout_ms, None);
    assert_eq!(
        o.circuit_breaker.map(|c| c.recovery_ms),
        Some(DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS)
    );
    let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
    // The server name is not blamed for the scheme that was refused.
    assert_eq!(
        fields,
        [
            OptionField::RetryBudget,
            OptionField::Timeout,
            OptionField::CircuitBreakerRecovery,
            OptionField::Scheme
        ]
    );
    // The table refuses the first, naming service, field and value.
    let mut web = http("shop", "web", 5000, &["10.0.0.1:80"]);
    web.options = spec;
    match Table::try_from(table(1, vec![web])).unwrap_err() {
        Error::InvalidField {
            service,
            field,
            value,
            reason,
        } => {
            assert_eq!(
                (service.as_str(), field.as_str(), value.as_str()),
                ("shop/web:80", "options.retryBudgetPercent", "0")
            );
            assert_eq!(reason, "expected a percentage from 1 to 100, e.g. 20");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn errors_name_field_and_value() {
    let e = RetryPolicy::check_attempts(0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "field options.retryAttempts: invalid value \"0\": expected an integer from 1 to 100"
    );
    assert_eq!(
        e.reason(Form::Annotation),
        "expected an integer from 1 to 100"
    );
    let e = OptionError::new(
        OptionField::CircuitBreakerRecovery,
        5,
        OptionProblem::Needs(OptionField::CircuitBreaker),
    );
    assert_eq!(
        e.reason(Form::Annotation),
        "has no effect without circuit-breaker-expression"
    );
    assert_eq!(
        e.reason(Form::Wire),
        "has no effect without options.circuitBreaker"
    );
}

#[test]
fn validated_options_travel_canonically_and_come_back_the_same() {
    let mut o = ServiceOptions {
        retry: Some(RetryPolicy::new(3, Some(35)).unwrap()),
        timeout_ms: Some(1500),
        rate_limit: Some(RateLimit::new(10, 20).unwrap()),
        circuit_breaker: Some(
            CircuitBreaker::new("NetworkErrorRatio() > 0.5", Some(2000)).unwrap(),
        ),
        scheme: Scheme::Https,
        tls: TlsOptions::new(Scheme::Https, Some("api.example"), true).unwrap(),
    };
    let spec = OptionsSpec::from(&o);
    assert_eq!(
        ServiceOptions::try_from_spec(TrafficType::Http, &spec),
        Ok(o.clone())
    );
    // Defaults are left out of the JSON.
    o.retry = RetryPolicy::new(3, None).ok();
    o.circuit_breaker = CircuitBreaker::new("NetworkErrorRatio() > 0.5", None).ok();
    o.scheme = Scheme::Http;
    o.tls = TlsOptions::default();
    let spec = OptionsSpec::from(&o);
    assert_eq!(spec.retry_budget_percent, None);
    assert_eq!(spec.circuit_breaker_recovery_ms, None);
    assert_eq!(spec.scheme, None);
    assert_eq!(
        ServiceOptions::try_from_spec(TrafficType::Http, &spec),
        Ok(o)
    );
}

// ---- The annotation and the table forms agree by construction ----

/// What a reader made of one service's options: the options, or the first error as (field,
/// problem, value).
type Outcome = Result<ServiceOptions, (OptionField, OptionProblem, String)>;

fn through_annotations(pairs: &[(OptionField, String)], tt: TrafficType) -> Outcome {
    let ann: BTreeMap<String, String> = pairs
        .iter()
        .map(|(f, v)| (format!("maille.io/{}", f.annotation()), v.clone()))
        .collect();
    let (o, errors) = annotations::service_options(&ann, tt);
    match errors.into_iter().next() {
        None => Ok(o),
        Some(AnnotationError {
            annotation,
            value,
            problem,
            ..
        }) => {
            let field = OptionField::ALL
                .into_iter()
                .find(|f| annotation == format!("maille.io/{}", f.annotation()))
                .expect("an option annotation");
            Err((field, problem.expect("an option problem"), value))
        }
    }
}

/// Through the whole table: JSON text, parse, validation, as a proxy reads it.
fn through_table(spec: &OptionsSpec, tt: TrafficType) -> Outcome {
    let mut svc = http("shop", "web", 5000, &["10.0.0.1:80"]);
    svc.traffic_type = tt;
    svc.options = spec.clone();
    let json = serde_json::to_vec(&table(1, vec![svc])).unwrap();
    match Table::from_json(&json) {
        Ok(t) => Ok(t.services()[0].options.clone()),
        Err(crate::table::JsonError::Invalid(Error::InvalidField {
            service,
            field,
            value,
            ..
        })) => {
            assert_eq!(service, "shop/web:80");
            // The typed error behind the table's message.
            let e = ServiceOptions::try_from_spec(tt, spec).unwrap_err();
            assert_eq!((field.as_str(), &value), (e.field.wire(), &e.value));
            Err((e.field, e.problem, value))
        }
        Err(other) => panic!("{other}"),
    }
}

/// One case: the same options as annotation text and as the JSON form.
#[derive(Debug)]
struct Case {
    annotations: Vec<(OptionField, String)>,
    wire: OptionsSpec,
    tt: TrafficType,
}

fn assert_agree(case: &Case) {
    let a = through_annotations(&case.annotations, case.tt);
    let w = through_table(&case.wire, case.tt);
    match (&a, &w) {
        (Ok(a), Ok(w)) => assert_eq!(a, w, "{:?}", case.annotations),
        (Err((af, ap, _)), Err((wf, wp, _))) => {
            assert_eq!((af, ap), (wf, wp), "{:?}", case.annotations)
        }
        _ => panic!(
            "{:?} on {}: annotations gave {a:?}, the table {w:?}",
            case.annotations, case.tt
        ),
    }
}

/// Cases at and around every bound, each option alone and with what it needs.
fn bound_cases() -> Vec<Case> {
    use OptionField as F;
    let mut cases = Vec::new();
    let mut add = |annotations: Vec<(F, String)>, wire: OptionsSpec| {
        for tt in [TrafficType::Http, TrafficType::Tcp, TrafficType::Udp] {
            cases.push(Case {
                annotations: annotations.clone(),
                wire: wire.clone(),
                tt,
            });
        }
    };
    let around = |min: u32, max: u32| {
        let mut v = vec![0, min, min.saturating_add(1), max - 1, max];
        v.extend(max.checked_add(1));
        v.extend(min.checked_sub(1));
        v.push(u32::MAX);
        v
    };
    for n in around(1, MAX_RETRY_ATTEMPTS) {
        add(
            vec![(F::RetryAttempts, n.to_string())],
            OptionsSpec {
                retry_attempts: Some(n),
                ..OptionsSpec::default()
            },
        );
    }
    for n in around(1, 100) {
        for attempts in [None, Some(2)] {
            let mut ann = vec![(F::RetryBudget, format!("{n}%"))];
            ann.extend(attempts.map(|a: u32| (F::RetryAttempts, a.to_string())));
            add(
                ann,
                OptionsSpec {
                    retry_attempts: attempts,
                    retry_budget_percent: Some(n),
                    ..OptionsSpec::default()
                },
            );
        }
    }
    for ms in [0u64, 1, 250, 90_000, 1 << 40] {
        add(
            vec![(F::Timeout, format!("{ms}ms"))],
            OptionsSpec {
                timeout_ms: Some(ms),
                ..OptionsSpec::default()
            },
        );
        for breaker in [None, Some("NetworkErrorRatio() > 0.5")] {
            let mut ann = vec![(F::CircuitBreakerRecovery, format!("{ms}ms"))];
            ann.extend(breaker.map(|b| (F::CircuitBreaker, b.to_string())));
            add(
                ann,
                OptionsSpec {
                    circuit_breaker: breaker.map(str::to_string),
                    circuit_breaker_recovery_ms: Some(ms),
                    ..OptionsSpec::default()
                },
            );
        }
    }
    for average in [0, 1, u32::MAX] {
        for burst in [0, 1, u32::MAX] {
            add(
                vec![
                    (F::RateLimitAverage, average.to_string()),
                    (F::RateLimitBurst, burst.to_string()),
                ],
                OptionsSpec {
                    rate_limit: Some(RateLimitSpec { average, burst }),
                    ..OptionsSpec::default()
                },
            );
        }
    }
    for expr in [
        "NetworkErrorRatio() > 0.5",
        "ResponseCodeRatio(500, 600, 0, 600) > 0.25 && LatencyAtQuantileMS(99.0) > 250",
        "Bogus() > 1",
        "NetworkErrorRatio() >",
        "ResponseCodeRatio(500, 2000, 0, 600) > 0.1",
        "",
    ] {
        add(
            vec![(F::CircuitBreaker, expr.to_string())],
            OptionsSpec {
                circuit_breaker: Some(expr.to_string()),
                ..OptionsSpec::default()
            },
        );
    }
    for scheme in ["http", "https", "h2c", "ftp", "HTTP"] {
        for name in [None, Some("api.example"), Some("a b"), Some("")] {
            for skip in [false, true] {
                let mut ann = vec![(F::Scheme, scheme.to_string())];
                ann.extend(name.map(|n| (F::TlsServerName, n.to_string())));
                if skip {
                    ann.push((F::TlsInsecureSkipVerify, "true".into()));
                }
                add(
                    ann,
                    OptionsSpec {
                        scheme: Some(scheme.into()),
                        tls_server_name: name.map(str::to_string),
                        tls_insecure_skip_verify: skip,
                        ..OptionsSpec::default()
                    },
                );
            }
        }
    }
    add(
        vec![(F::TlsServerName, "api.example".into())],
        OptionsSpec {
            tls_server_name: Some("api.example".into()),
            ..OptionsSpec::default()
        },
    );
    cases
}

#[test]
fn annotations_and_table_agree_at_every_bound() {
    let cases = bound_cases();
    assert!(cases.len() > 250, "{}", cases.len());
    for case in &cases {
        assert_agree(case);
    }
}

#[test]
fn the_retry_attempts_bound_is_the_same_in_both_forms() {
    use OptionField as F;
    let at = |n: u32| Case {
        annotations: vec![(F::RetryAttempts, n.to_string())],
        wire: OptionsSpec {
            retry_attempts: Some(n),
            ..OptionsSpec::default()
        },
        tt: TrafficType::Http,
    };
    let hundred = at(100);
    assert_eq!(
        through_table(&hundred.wire, hundred.tt).map(|o| o.retry.map(|r| r.attempts)),
        Ok(Some(100))
    );
    assert_agree(&hundred);
    let over = at(101);
    // Until now the table took any count and the annotation stopped at 100.
    assert_eq!(
        through_table(&over.wire, over.tt),
        Err((F::RetryAttempts, range(1, 100), "101".into()))
    );
    assert_eq!(
        through_annotations(&over.annotations, over.tt),
        Err((F::RetryAttempts, range(1, 100), "101".into()))
    );
}

fn arb_case() -> impl Strategy<Value = Case> {
    let expr = prop::sample::select(vec![
        "NetworkErrorRatio() > 0.5",
        "LatencyAtQuantileMS(50.0) > 100 || ResponseCodeRatio(500, 600, 0, 600) > 0.5",
        "Nope() > 1",
        "((",
    ]);
    let scheme = prop::sample::select(vec!["http", "https", "h2c", "tcp"]);
    let name = prop::sample::select(vec!["api.example", "10.1.2.3", "bad name", "-x"]);
    let tt = prop::sample::select(vec![TrafficType::Http, TrafficType::Http, TrafficType::Tcp]);
    (
        (
            proptest::option::of(0u32..120),
            proptest::option::of(0u32..120),
            proptest::option::of(0u64..1_000_000_000),
            proptest::option::of((0u32..3, 0u32..3)),
        ),
        (
            proptest::option::of(expr),
            proptest::option::of(0u64..100_000),
            proptest::option::of(scheme),
            proptest::option::of(name),
            any::<bool>(),
            tt,
        ),
    )
        .prop_map(
            |((attempts, budget, timeout, rl), (cb, recovery, scheme, name, skip, tt))| {
                use OptionField as F;
                let mut ann = Vec::new();
                let mut push = |f: F, v: Option<String>| ann.extend(v.map(|v| (f, v)));
                push(F::RetryAttempts, attempts.map(|n| n.to_string()));
                push(F::RetryBudget, budget.map(|n| n.to_string()));
                push(F::Timeout, timeout.map(|ms| format!("{ms}ms")));
                push(F::RateLimitAverage, rl.map(|r| r.0.to_string()));
                push(F::RateLimitBurst, rl.map(|r| r.1.to_string()));
                push(F::CircuitBreaker, cb.map(str::to_string));
                push(
                    F::CircuitBreakerRecovery,
                    recovery.map(|ms| format!("{ms}ms")),
                );
                push(F::Scheme, scheme.map(str::to_string));
                push(F::TlsServerName, name.map(str::to_string));
                push(F::TlsInsecureSkipVerify, skip.then(|| "true".to_string()));
                Case {
                    annotations: ann,
                    wire: OptionsSpec {
                        retry_attempts: attempts,
                        retry_budget_percent: budget,
                        timeout_ms: timeout,
                        rate_limit: rl.map(|(average, burst)| RateLimitSpec { average, burst }),
                        circuit_breaker: cb.map(str::to_string),
                        circuit_breaker_recovery_ms: recovery,
                        scheme: scheme.map(SchemeSpec::from),
                        tls_server_name: name.map(str::to_string),
                        tls_insecure_skip_verify: skip,
                    },
                    tt,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Any mix of options, valid or not, gives the same options or the same first error
    /// through the annotations and through the table.
    #[test]
    fn any_options_agree_in_both_forms(case in arb_case()) {
        assert_agree(&case);
    }
}

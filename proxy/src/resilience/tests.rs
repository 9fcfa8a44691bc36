use std::sync::Arc;

use config_model::testing::{http, table};
use config_model::{OptionsSpec, RateLimitSpec, ServiceKey, Table};

use super::*;
use crate::compiled::CompiledTable;

fn key(name: &str) -> ServiceKey {
    ServiceKey {
        namespace: "shop".into(),
        name: name.into(),
        port: 80,
    }
}

/// Compiled tables from one store, as a proxy swaps them in.
#[derive(Default)]
struct Tables(Arc<crate::store::TableStore>);

impl Tables {
    /// Swaps in a table of these services and returns it compiled.
    fn load(&self, limits: &[(&str, OptionsSpec)]) -> Arc<CompiledTable> {
        self.0.store(table_with(limits));
        self.0.current()
    }

    /// The resilience state of a service of `t`.
    fn service(&self, t: &CompiledTable, key: &ServiceKey) -> Option<Arc<ServiceState>> {
        t.runtime(t.service(key)?).resilience.clone()
    }
}

fn table_with(limits: &[(&str, OptionsSpec)]) -> Table {
    let services = limits
        .iter()
        .enumerate()
        .map(|(i, (name, o))| {
            let mut s = http("shop", name, 5000, &[&format!("10.0.0.{}:80", i + 1)]);
            s.options = o.clone();
            s
        })
        .collect();
    Table::try_from(table(1, services)).unwrap()
}

fn limited(average: u32, burst: u32) -> OptionsSpec {
    OptionsSpec {
        rate_limit: Some(RateLimitSpec { average, burst }),
        ..OptionsSpec::default()
    }
}

#[test]
fn state_survives_swaps_and_is_rebuilt_only_on_change() {
    let r = Tables::default();
    let t1 = r.load(&[
        ("a", limited(1, 2)),
        ("b", limited(1, 1)),
        ("c", OptionsSpec::default()),
    ]);
    let a1 = r.service(&t1, &key("a")).unwrap();
    let b1 = r.service(&t1, &key("b")).unwrap();
    assert!(r.service(&t1, &key("c")).is_none(), "no options, no state");

    // Spend a's burst, then swap in a new table where only b changed.
    let mut rs = RequestState::start(Some(a1.clone()));
    assert!(rs.admit().is_ok());
    assert!(RequestState::start(Some(a1.clone())).admit().is_ok());
    let t2 = r.load(&[
        ("a", limited(1, 2)),
        ("b", limited(5, 5)),
        ("c", OptionsSpec::default()),
    ]);
    let a2 = r.service(&t2, &key("a")).unwrap();
    let b2 = r.service(&t2, &key("b")).unwrap();
    assert!(Arc::ptr_eq(&a1, &a2), "unchanged options keep their state");
    assert!(!Arc::ptr_eq(&b1, &b2), "changed options get new state");
    // a's bucket is still empty after the swap.
    assert_eq!(
        RequestState::start(Some(a2)).admit(),
        Err(Rejection::RateLimited {
            retry_after_secs: 1
        })
    );

    // A service that left the table loses its state.
    let t3 = r.load(&[("b", limited(5, 5))]);
    assert!(r.service(&t3, &key("a")).is_none());
}

#[test]
fn retries_stop_at_the_attempt_limit() {
    let mut o = OptionsSpec {
        retry_attempts: Some(2),
        ..OptionsSpec::default()
    };
    o.retry_budget_percent = Some(100);
    let r = Tables::default();
    let t = r.load(&[("a", o)]);
    let s = r.service(&t, &key("a")).unwrap();
    let mut rs = RequestState::start(Some(s));
    rs.admit().unwrap();
    let mut decisions = Vec::new();
    for _ in 0..4 {
        let mut peer = HttpPeer::new("10.0.0.1:80", false, String::new());
        rs.start_attempt(&mut peer).unwrap();
        let mut e = Error::new_up(ErrorType::ConnectRefused);
        rs.on_connect_failure(&mut e, 5);
        decisions.push(e.retry());
        if !e.retry() {
            break;
        }
    }
    assert_eq!(decisions, [true, true, false]);
    assert_eq!(rs.attempts(), 3);
}

#[test]
fn non_idempotent_requests_are_not_retried_after_sending() {
    let o = OptionsSpec {
        retry_attempts: Some(3),
        ..OptionsSpec::default()
    };
    let r = Tables::default();
    let t = r.load(&[("a", o)]);
    let mut rs = RequestState::start(r.service(&t, &key("a")));
    rs.admit().unwrap();
    let mut e = Error::new_up(ErrorType::ConnectionClosed);
    rs.on_error_while_proxy(&mut e, &http::Method::POST, false, false);
    assert!(!e.retry());
    let mut e = Error::new_up(ErrorType::ConnectionClosed);
    rs.on_error_while_proxy(&mut e, &http::Method::PUT, false, false);
    assert!(e.retry());
    let mut e = Error::new_up(ErrorType::ConnectionClosed);
    rs.on_error_while_proxy(&mut e, &http::Method::GET, true, false);
    assert!(!e.retry(), "a body no longer buffered cannot be replayed");
}

#[test]
fn expired_deadline_answers_504() {
    let o = OptionsSpec {
        timeout_ms: Some(1),
        ..OptionsSpec::default()
    };
    let r = Tables::default();
    let t = r.load(&[("a", o)]);
    let mut rs = RequestState::start(r.service(&t, &key("a")));
    std::thread::sleep(Duration::from_millis(5));
    let mut peer = HttpPeer::new("10.0.0.1:80", false, String::new());
    let e = rs.start_attempt(&mut peer).unwrap_err();
    assert_eq!(rs.error_status(&e), Some(504));
}

#[test]
fn deadline_caps_peer_timeouts() {
    let mut peer = HttpPeer::new("10.0.0.1:80", false, String::new());
    peer.options.read_timeout = Some(Duration::from_secs(60));
    peer.options.connection_timeout = Some(Duration::from_millis(100));
    crate::upstream::apply_deadline(&mut peer, Duration::from_millis(500));
    assert_eq!(peer.options.read_timeout, Some(Duration::from_millis(500)));
    assert_eq!(peer.options.write_timeout, Some(Duration::from_millis(500)));
    assert_eq!(
        peer.options.connection_timeout,
        Some(Duration::from_millis(100))
    );
}

#[test]
fn connect_failures_are_retried_on_other_endpoints_without_a_retry_policy() {
    let r = Tables::default();
    let t = r.load(&[("a", OptionsSpec::default())]);
    for (endpoints, want) in [
        (1, vec![false]),
        (2, vec![true, false]),
        (5, vec![true, true, false]),
    ] {
        let mut rs = RequestState::start(r.service(&t, &key("a")));
        rs.admit().unwrap();
        let mut decisions = Vec::new();
        for _ in 0..5 {
            let mut peer = HttpPeer::new("10.0.0.1:80", false, String::new());
            rs.start_attempt(&mut peer).unwrap();
            let mut e = Error::new_up(ErrorType::ConnectRefused);
            rs.on_connect_failure(&mut e, endpoints);
            decisions.push(e.retry());
            if !e.retry() {
                break;
            }
        }
        assert_eq!(decisions, want, "{endpoints} endpoints");
    }
}

/// The policy of a route entry with these timeouts and retry, for service `a`.
fn route_policy(
    request_ms: Option<u64>,
    backend_request_ms: Option<u64>,
    retry: Option<config_model::route::RouteRetrySpec>,
) -> Arc<RoutePolicy> {
    let spec = config_model::RouteSpec {
        route: "shop/r".into(),
        timeouts: Some(config_model::route::RouteTimeoutsSpec {
            request_ms,
            backend_request_ms,
        }),
        retry,
        ..config_model::RouteSpec::default()
    };
    let route = config_model::Route::try_from(&spec).unwrap();
    Arc::new(RoutePolicy::new(&key("a"), &ServiceOptions::default(), &route).unwrap())
}

#[test]
fn a_route_retries_its_codes_with_backoff_up_to_its_attempts() {
    let policy = route_policy(
        None,
        Some(250),
        Some(config_model::route::RouteRetrySpec {
            attempts: 2,
            codes: vec![503, 502],
            backoff_ms: Some(40),
        }),
    );
    let mut rs = RequestState::start_routed(None, Some(policy));
    rs.admit().unwrap();
    assert_eq!(rs.backoff(), None, "no pause before the first attempt");
    let mut outcomes = Vec::new();
    for status in [503, 502, 503] {
        let mut peer = HttpPeer::new("10.0.0.1:80", false, String::new());
        rs.start_attempt(&mut peer).unwrap();
        assert_eq!(
            peer.options.read_timeout,
            Some(Duration::from_millis(250)),
            "backendRequestMs bounds each attempt"
        );
        let retry = rs.retry_status(status, false);
        if retry {
            let mut e = Error::new_up(ErrorType::HTTPStatus(status));
            rs.on_error_while_proxy(&mut e, &http::Method::POST, false, false);
            assert!(e.retry(), "the decision stands, whatever the method");
        }
        outcomes.push(retry);
    }
    assert_eq!(outcomes, [true, true, false], "2 attempts after the first");
    assert_eq!(rs.backoff(), Some(Duration::from_millis(40)));
    assert!(
        !rs.retry_status(500, false),
        "a code the rule does not list"
    );
    let mut fresh = RequestState::start_routed(
        None,
        Some(route_policy(
            None,
            None,
            Some(config_model::route::RouteRetrySpec {
                attempts: 1,
                codes: vec![503],
                backoff_ms: None,
            }),
        )),
    );
    fresh.admit().unwrap();
    let mut peer = HttpPeer::new("10.0.0.1:80", false, String::new());
    fresh.start_attempt(&mut peer).unwrap();
    assert!(!fresh.retry_status(503, true), "a body no longer buffered");
}

#[test]
fn a_route_timeout_replaces_the_annotation_and_an_attempt_timeout_is_a_504() {
    let o = OptionsSpec {
        timeout_ms: Some(1),
        ..OptionsSpec::default()
    };
    let r = Tables::default();
    let t = r.load(&[("a", o)]);
    let policy = route_policy(Some(60_000), Some(100), None);
    let mut rs = RequestState::start_routed(r.service(&t, &key("a")), Some(policy));
    std::thread::sleep(Duration::from_millis(5));
    let mut peer = HttpPeer::new("10.0.0.1:80", false, String::new());
    rs.start_attempt(&mut peer)
        .expect("the rule's 60 s, not the annotation's 1 ms");
    let e = Error::new_up(ErrorType::ReadTimedout);
    assert_eq!(rs.error_status(&e), Some(504));
}

/// A service port has the resilience series of the features its options turn on, and none of
/// the others (each series costs the registry several hundred bytes per service).
#[test]
fn only_the_series_a_service_can_count_are_created() {
    let tables = Tables::default();
    let limited = OptionsSpec {
        rate_limit: Some(RateLimitSpec {
            average: 5,
            burst: 5,
        }),
        ..OptionsSpec::default()
    };
    tables.load(&[("series-limited", limited)]);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    let has = |name: &str| {
        text.lines().any(|l| {
            l.starts_with(&format!("{name}{{")) && l.contains("service=\"series-limited\"")
        })
    };
    assert!(has("maille_proxy_ratelimited_requests_total"));
    for absent in [
        "maille_proxy_retries_total",
        "maille_proxy_retry_budget_exhausted_total",
        "maille_proxy_timeouts_total",
        "maille_proxy_circuit_breaker_state",
        "maille_proxy_circuit_breaker_trips_total",
        "maille_proxy_circuit_breaker_rejected_total",
    ] {
        assert!(
            !has(absent),
            "{absent} created for a service without the feature"
        );
    }
}

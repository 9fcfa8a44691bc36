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

use std::fmt::Write;

use config_model::testing::{http, service, table};
use config_model::{
    AccessRuleSpec, OptionsSpec, RateLimitSpec, SplitBackendSpec, SplitSpec, TableSpec, TrafficType,
};
use proptest::prelude::*;

use super::*;
use crate::store::TableStore;

/// Everything the request path reads of a compiled table, in a form two can be compared by.
fn describe(t: &CompiledTable) -> String {
    let mut out = format!("version {} acl {}\n", t.version, t.acl);
    // A delta keeps positions (an added service comes last): compare in key order.
    let mut ids: Vec<_> = t.iter().collect();
    ids.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    for (id, svc) in ids {
        let rt = t.runtime(id);
        assert!(
            Arc::ptr_eq(&rt.service, svc),
            "runtime of {} built for it",
            svc.key
        );
        let endpoints: Vec<_> = rt
            .endpoints
            .endpoints()
            .map(|(a, s)| (a, s.pending()))
            .collect();
        let _ = writeln!(
            out,
            "{} labels {:?} endpoints {endpoints:?}",
            svc.key,
            rt.labels()
        );
        for (i, split) in rt.splits.iter().enumerate() {
            let targets: Vec<_> = t.split_targets(id, i).iter().map(|b| &t[*b].key).collect();
            let _ = writeln!(
                out,
                "  split {i}: total {} over {} → {targets:?}, {} counters",
                split.picker.total(),
                split.picker.len(),
                split.sent.len()
            );
        }
        for (i, sources) in rt.access.iter().enumerate() {
            let mut sources: Vec<_> = sources.iter().collect();
            sources.sort();
            let _ = writeln!(out, "  access {i}: {sources:?}");
        }
        let _ = writeln!(
            out,
            "  resilience {:?}",
            rt.resilience.as_ref().map(|s| s.has_breaker())
        );
    }
    out
}

/// One service port of a generated table.
#[derive(Clone, Debug)]
struct Entry {
    name: usize,
    tcp: bool,
    endpoints: Vec<u8>,
    limit: Option<u32>,
    sources: Vec<u8>,
    split_to: Option<(usize, u32)>,
}

const NAMES: usize = 5;

fn entry() -> impl Strategy<Value = Entry> {
    (
        0..NAMES,
        any::<bool>(),
        proptest::collection::vec(1u8..6, 0..4),
        proptest::option::of(1u32..3),
        proptest::collection::vec(1u8..4, 0..3),
        proptest::option::of((0..NAMES, 0u32..3)),
    )
        .prop_map(|(name, tcp, endpoints, limit, sources, split_to)| Entry {
            name,
            tcp,
            endpoints,
            limit,
            sources,
            split_to,
        })
}

/// A valid table from generated entries (splits only towards higher-numbered names of the
/// same traffic type, so no cycles), services in key order as deltas leave them.
fn build(version: u64, acl: bool, entries: &[Entry]) -> TableSpec {
    let mut by_name: Vec<Option<&Entry>> = vec![None; NAMES];
    for e in entries {
        by_name[e.name] = Some(e);
    }
    let mut services = Vec::new();
    for (n, e) in by_name.iter().enumerate() {
        let Some(e) = e else { continue };
        let eps: Vec<String> = e
            .endpoints
            .iter()
            .map(|i| format!("10.0.0.{i}:80"))
            .collect();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        let name = format!("svc{n}");
        let mut s = if e.tcp {
            service("ns", &name, 81, 10000 + n as u16, TrafficType::Tcp, &eps)
        } else {
            let mut s = http("ns", &name, 5000, &eps);
            s.options = OptionsSpec {
                rate_limit: e.limit.map(|burst| RateLimitSpec { average: 1, burst }),
                ..OptionsSpec::default()
            };
            s
        };
        if !e.sources.is_empty() {
            s.access = vec![AccessRuleSpec {
                name: "ns/tt".into(),
                sources: e.sources.iter().map(|i| format!("10.1.0.{i}")).collect(),
                identities: vec![],
                http: None,
            }];
        }
        if let Some((to, weight)) = e.split_to {
            let target = by_name.get(to).copied().flatten();
            if to > n && target.is_some_and(|t| t.tcp == e.tcp) {
                s.splits = vec![SplitSpec {
                    name: format!("ns/split{n}"),
                    matches: Vec::new(),
                    backends: vec![SplitBackendSpec {
                        namespace: "ns".into(),
                        name: format!("svc{to}"),
                        port: s.port,
                        weight,
                    }],
                }];
            }
        }
        services.push(s);
    }
    let mut spec = table(version, services);
    spec.acl = acl;
    spec.sort_services();
    spec
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Applying the deltas between any sequence of tables gives, at every step, the same
    /// compiled table as compiling that step's full table; the runtime of every service the
    /// delta does not name is the one held (shared), a changed service whose options are
    /// equal keeps its resilience state, and every endpoint address a service keeps keeps its
    /// latency estimate (a new one starts unmeasured).
    #[test]
    fn any_sequence_of_deltas_gives_the_compiled_full_table(
        versions in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(entry(), 0..6)),
            1..6,
        )
    ) {
        let specs: Vec<TableSpec> = versions
            .iter()
            .enumerate()
            .map(|(i, (acl, entries))| build(i as u64 + 1, *acl, entries))
            .collect();
        let store = TableStore::new();
        store.store(Table::try_from(&specs[0]).unwrap());
        for pair in specs.windows(2) {
            let held = store.current();
            for (id, _) in held.iter() {
                for (_, stats) in held.runtime(id).endpoints.endpoints() {
                    stats.observe(std::time::Duration::from_millis(3));
                }
            }
            let delta = pair[1].delta_for(pair[0].version, &pair[0].changed_keys(&pair[1]));
            let bytes = serde_json::to_vec(&delta).unwrap();
            crate::source::swap_delta(&store, &bytes, "test").unwrap();
            let now = store.current();
            let whole = TableStore::new();
            whole.store(Table::try_from(&pair[1]).unwrap());
            prop_assert_eq!(describe(&now), describe(&whole.current()));
            for (id, svc) in now.iter() {
                let before = held.service(&svc.key).map(|b| &held.runtime(b).endpoints);
                for (addr, stats) in now.runtime(id).endpoints.endpoints() {
                    let kept = before.is_some_and(|b| b.stats_of(&addr).is_some());
                    prop_assert_eq!(stats.has_sample(), kept, "{} {} measured", &svc.key, addr);
                }
            }
            for (id, svc) in now.iter() {
                let Some(before) = held.service(&svc.key) else { continue };
                let (old, new) = (held.runtime(before), now.runtime(id));
                if !delta.changed.iter().any(|c| c.key() == svc.key) {
                    prop_assert!(std::ptr::eq(old, new), "{} runtime rebuilt", svc.key);
                } else if old.service.options == svc.options {
                    prop_assert_eq!(
                        old.resilience.as_ref().map(Arc::as_ptr),
                        new.resilience.as_ref().map(Arc::as_ptr),
                        "{} resilience state not carried", &svc.key
                    );
                }
            }
        }
    }
}

#[test]
fn a_full_table_with_equal_options_keeps_resilience_state_and_endpoint_statistics() {
    let limited = |eps: &[&str]| {
        let mut s = http("ns", "api", 5000, eps);
        s.options.rate_limit = Some(RateLimitSpec {
            average: 1,
            burst: 2,
        });
        s
    };
    let store = TableStore::new();
    store.store(Table::try_from(table(1, vec![limited(&["10.0.0.1:80"])])).unwrap());
    let t1 = store.current();
    let (id1, _) = t1.iter().next().unwrap();
    let stats = store
        .endpoint_stats(&"10.0.0.1:80".parse().unwrap())
        .unwrap();
    stats.observe(std::time::Duration::from_millis(5));
    store.store(Table::try_from(table(2, vec![limited(&["10.0.0.1:80", "10.0.0.2:80"])])).unwrap());
    let t2 = store.current();
    let (id2, _) = t2.iter().next().unwrap();
    assert!(
        !std::ptr::eq(t1.runtime(id1), t2.runtime(id2)),
        "endpoints changed"
    );
    assert!(Arc::ptr_eq(
        t1.runtime(id1).resilience.as_ref().unwrap(),
        t2.runtime(id2).resilience.as_ref().unwrap()
    ));
    let kept = store
        .endpoint_stats(&"10.0.0.1:80".parse().unwrap())
        .unwrap();
    assert!(!kept.same(&stats), "a new plan, a new slab");
    assert!(kept.has_sample(), "the estimate is carried over");
    assert!(!store
        .endpoint_stats(&"10.0.0.2:80".parse().unwrap())
        .unwrap()
        .has_sample());
}

/// A service whose endpoints stay the same while its options change keeps its plan's
/// statistics whole: the same slab, requests in flight still counted.
#[test]
fn changed_options_with_the_same_endpoints_keep_the_statistics_slab() {
    let with_limit = |burst: u32| {
        let mut s = http("ns", "api", 5000, &["10.0.0.1:80", "10.0.0.2:80"]);
        s.options.rate_limit = Some(RateLimitSpec { average: 1, burst });
        s
    };
    let store = TableStore::new();
    store.store(Table::try_from(table(1, vec![with_limit(2)])).unwrap());
    let t1 = store.current();
    let (id1, _) = t1.iter().next().unwrap();
    let balancer = crate::balance::Balancer::new(crate::config::Balancer::PeakEwma);
    let in_flight = balancer.pick(&t1.runtime(id1).endpoints, &[]).unwrap();
    store.store(Table::try_from(table(2, vec![with_limit(3)])).unwrap());
    let kept = store.endpoint_stats(&in_flight.addr).unwrap();
    assert_eq!(kept.pending(), 1, "the request in flight is still counted");
    drop(in_flight);
    assert_eq!(kept.pending(), 0);
}

#[test]
fn port_labels_are_the_decimal_port() {
    for port in [0u16, 7, 10, 80, 443, 5432, 10000, 65535] {
        assert_eq!(PortLabel::new(port).as_str(), port.to_string());
    }
}

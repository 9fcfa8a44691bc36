use proptest::prelude::*;

use std::sync::Arc;

use super::*;
use crate::testing::{http, service, table};
use crate::wire::{HttpMatchSpec, OptionsSpec, SplitBackendSpec, SplitSpec, TrafficType};

fn sorted(mut spec: TableSpec) -> TableSpec {
    spec.sort_services();
    spec
}

fn delta_between(old: &TableSpec, new: &TableSpec) -> TableDelta {
    new.delta_for(old.version, &old.changed_keys(new))
}

/// Everything a proxy routes with, in a form two tables can be compared by: the services in
/// order (endpoints, options, compiled matches, resolved split backends) and each one's routes.
fn view(t: &Table) -> String {
    let mut out = format!(
        "version {} acl {} indexes {:?}\n",
        t.version,
        t.acl,
        t.index_sizes()
    );
    let mut workloads: Vec<String> = t.workloads().iter().map(|w| format!("{w:?}")).collect();
    workloads.sort();
    out.push_str(&format!(
        "{} workloads {workloads:?}\n",
        t.workloads().len()
    ));
    for w in t.workloads().iter() {
        assert_eq!(t.workload(w.ip), Some(w));
    }
    // A delta keeps positions (an added service comes last): compare in key order.
    let mut ids: Vec<_> = t.iter().collect();
    ids.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    for (id, s) in ids {
        out.push_str(&format!("{s:?}\n"));
        for (i, _) in s.splits.iter().enumerate() {
            let targets: Vec<&ServiceKey> =
                t.split_targets(id, i).iter().map(|b| &t[*b].key).collect();
            out.push_str(&format!("split {i} → {targets:?}\n"));
        }
        assert_eq!(t.service(&s.key), Some(id));
        let routed = match s.traffic_type {
            TrafficType::Http => t.http_route(
                s.mesh_port,
                &format!("{}.{}.maille.mesh", s.key.name, s.key.namespace),
            ),
            TrafficType::Tcp => t.tcp_route(s.mesh_port),
            TrafficType::Udp => t.udp_route(s.mesh_port),
        };
        assert_eq!(routed, Some(id));
        if let Some(ip) = s.cluster_ip {
            assert_eq!(t.http_route(s.mesh_port, &ip.to_string()), Some(id));
        }
    }
    out
}

#[test]
fn a_delta_names_changed_added_and_removed_service_ports_only() {
    let old = sorted(table(
        4,
        vec![
            http("shop", "web", 5000, &["10.0.0.1:80"]),
            http("shop", "cart", 5000, &["10.0.0.2:80"]),
            http("shop", "gone", 5000, &["10.0.0.3:80"]),
        ],
    ));
    let new = sorted(table(
        9,
        vec![
            http("shop", "web", 5000, &["10.0.0.1:80"]),
            http("shop", "cart", 5000, &["10.0.0.2:80", "10.0.0.4:80"]),
            http("shop", "new", 5000, &[]),
        ],
    ));
    let d = delta_between(&old, &new);
    assert_eq!((d.base_version, d.version), (4, 9));
    let changed: Vec<_> = d.changed.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(changed, ["cart", "new"]);
    assert_eq!(d.removed.len(), 1);
    assert_eq!(d.removed[0].to_string(), "shop/gone:80");

    let held = Table::try_from(&old).unwrap();
    let next = held.apply_delta(&d).unwrap();
    assert_eq!(next.version, 9);
    assert!(next.http_route(5000, "gone.shop.maille.mesh").is_none());
    assert!(next.http_route(5000, "new.shop.maille.mesh").is_some());
    let cart = &next[next.http_route(5000, "cart.shop.maille.mesh").unwrap()];
    assert_eq!(cart.endpoints.len(), 2);
    let web = |t: &Table| {
        t.shared(t.http_route(5000, "web.shop.maille.mesh").unwrap())
            .clone()
    };
    assert!(
        Arc::ptr_eq(&web(&held), &web(&next)),
        "an unchanged service is shared, not copied"
    );
    assert_eq!(view(&next), view(&Table::try_from(&new).unwrap()));

    let mut spec = old.clone();
    apply_to_spec(&mut spec, &d).unwrap();
    assert_eq!(spec, new);
}

#[test]
fn a_delta_for_another_base_or_naming_an_unknown_service_is_refused() {
    let old = sorted(table(4, vec![http("shop", "web", 5000, &["10.0.0.1:80"])]));
    let held = Table::try_from(&old).unwrap();
    let mut d = TableDelta {
        schema_version: SCHEMA_VERSION,
        base_version: 3,
        version: 5,
        ..TableDelta::default()
    };
    assert_eq!(
        held.apply_delta(&d).unwrap_err(),
        DeltaError::Base { base: 3, held: 4 }
    );
    d.base_version = 4;
    d.removed.push(http("shop", "nope", 5000, &[]).key());
    assert_eq!(
        held.apply_delta(&d).unwrap_err().to_string(),
        "delta removes service shop/nope:80, which the table held does not have"
    );
    d.removed.clear();
    d.changed = vec![
        http("shop", "api", 5000, &[]),
        http("shop", "api", 5000, &["10.0.0.9:80"]),
    ];
    assert_eq!(
        held.apply_delta(&d).unwrap_err(),
        DeltaError::Duplicate(http("shop", "api", 5000, &[]).key())
    );
}

#[test]
fn a_delta_leading_to_a_bad_table_is_refused_and_names_the_service() {
    let mut root = http("shop", "web", 5000, &[]);
    root.splits = vec![SplitSpec {
        name: "shop/canary".into(),
        matches: Vec::new(),
        backends: vec![SplitBackendSpec {
            namespace: "shop".into(),
            name: "web-v2".into(),
            port: 80,
            weight: 10,
        }],
    }];
    let old = sorted(table(
        1,
        vec![root, http("shop", "web-v2", 5000, &["10.0.0.2:80"])],
    ));
    let held = Table::try_from(&old).unwrap();
    // Removing the backend of a kept split: the kept root no longer resolves.
    let d = TableDelta {
        schema_version: SCHEMA_VERSION,
        base_version: 1,
        version: 2,
        removed: vec![http("shop", "web-v2", 5000, &[]).key()],
        ..TableDelta::default()
    };
    let e = held.apply_delta(&d).unwrap_err().to_string();
    assert!(e.contains("shop/web:80"), "{e}");
    assert!(e.contains("splits[0].backends[0]"), "{e}");
    assert!(e.contains("shop/web-v2:80"), "{e}");
    // A changed service with a bad endpoint.
    let d = TableDelta {
        schema_version: SCHEMA_VERSION,
        base_version: 1,
        version: 2,
        changed: vec![http("shop", "web-v2", 5000, &["10.0.0.2"])],
        ..TableDelta::default()
    };
    let e = held.apply_delta(&d).unwrap_err().to_string();
    assert!(
        e.contains("shop/web-v2:80") && e.contains("endpoints[0].address"),
        "{e}"
    );
    // A new service claiming a TCP port another one holds.
    let tcp = |name: &str| service("shop", name, 9000, 10000, TrafficType::Tcp, &[]);
    let held = held
        .apply_delta(&TableDelta {
            schema_version: SCHEMA_VERSION,
            base_version: 1,
            version: 2,
            changed: vec![tcp("db")],
            ..TableDelta::default()
        })
        .unwrap();
    let e = held
        .apply_delta(&TableDelta {
            schema_version: SCHEMA_VERSION,
            base_version: 2,
            version: 3,
            changed: vec![tcp("db2")],
            ..TableDelta::default()
        })
        .unwrap_err();
    assert!(matches!(
        e,
        DeltaError::Invalid(Error::DuplicateMeshPort {
            mesh_port: 10000,
            ..
        })
    ));
}

#[test]
fn kept_splits_follow_their_backends_to_new_indices() {
    let mut root = http("shop", "web", 5000, &[]);
    root.splits = vec![SplitSpec {
        name: "shop/canary".into(),
        matches: vec![HttpMatchSpec {
            path_regex: Some("/api/.*".into()),
            ..HttpMatchSpec::default()
        }],
        backends: vec![SplitBackendSpec {
            namespace: "shop".into(),
            name: "web-v2".into(),
            port: 80,
            weight: 10,
        }],
    }];
    let old = sorted(table(
        1,
        vec![root.clone(), http("shop", "web-v2", 5000, &["10.0.0.2:80"])],
    ));
    // Services sorting before both shift every index.
    let new = sorted(table(
        2,
        vec![
            root,
            http("shop", "web-v2", 5000, &["10.0.0.2:80"]),
            http("shop", "a", 5000, &[]),
            http("aaa", "b", 5000, &[]),
        ],
    ));
    let next = Table::try_from(&old)
        .unwrap()
        .apply_delta(&delta_between(&old, &new))
        .unwrap();
    let web = next.service(&http("shop", "web", 5000, &[]).key()).unwrap();
    let backend = next.split_targets(web, 0)[0];
    assert_eq!(next[backend].key.name, "web-v2");
    assert_eq!(view(&next), view(&Table::try_from(&new).unwrap()));
}

/// One version of a generated table: which service ports exist and what they hold.
#[derive(Clone, Debug)]
struct Entry {
    name: usize,
    tcp: bool,
    endpoints: Vec<u8>,
    retries: Option<u32>,
    breaker: bool,
    split_to: Option<(usize, u32)>,
    /// A small pool of TCP mesh ports and HTTP cluster IPs, so that services trade them from
    /// one version to the next (the first name to ask gets one, the others go without).
    slot: u8,
}

const NAMES: usize = 6;

fn entry() -> impl Strategy<Value = Entry> {
    (
        0..NAMES,
        any::<bool>(),
        proptest::collection::vec(1u8..6, 0..4),
        proptest::option::of(1u32..4),
        any::<bool>(),
        proptest::option::of((0..NAMES, 0u32..100)),
        0u8..3,
    )
        .prop_map(
            |(name, tcp, endpoints, retries, breaker, split_to, slot)| Entry {
                name,
                tcp,
                endpoints,
                retries,
                breaker,
                split_to,
                slot,
            },
        )
}

/// Generated workloads: (which of 16 IPs, which of 3 ServiceAccounts). The IPs spread over a
/// few shards of the index and share some.
fn workloads() -> impl Strategy<Value = Vec<(u8, u8)>> {
    proptest::collection::vec((0u8..16, 0u8..3), 0..10)
}

fn workload_specs(ws: &[(u8, u8)]) -> Vec<crate::mesh::WorkloadSpec> {
    let mut out: Vec<crate::mesh::WorkloadSpec> = Vec::new();
    for &(ip, sa) in ws {
        let ip = format!("10.1.{}.{}", ip / 4, (ip % 4) * 64);
        if out.iter().any(|w| w.ip == ip) {
            continue;
        }
        out.push(crate::mesh::WorkloadSpec {
            ip,
            node: format!("node-{}", sa % 2),
            namespace: "ns".into(),
            service_account: format!("sa{sa}"),
        });
    }
    out
}

/// A valid table from generated entries: one port per name (http on port 80, or tcp on 81 with
/// its own listener), HTTP splits only towards higher-numbered HTTP names (no cycles).
fn build(version: u64, acl: bool, entries: &[Entry]) -> TableSpec {
    let mut by_name: Vec<Option<&Entry>> = vec![None; NAMES];
    for e in entries {
        by_name[e.name] = Some(e);
    }
    let mut services = Vec::new();
    let mut slots_taken = [[false; 3]; 2];
    for (n, e) in by_name.iter().enumerate() {
        let Some(e) = e else { continue };
        let taken = &mut slots_taken[usize::from(e.tcp)][usize::from(e.slot)];
        let slot = (!*taken).then_some(e.slot);
        *taken = true;
        let eps: Vec<String> = e
            .endpoints
            .iter()
            .map(|i| format!("10.0.0.{i}:80"))
            .collect();
        let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
        let name = format!("svc{n}");
        let mut s = if e.tcp {
            // Without a free slot, a port of its own.
            let port = slot.map_or(10010 + n as u16, |k| 10000 + u16::from(k));
            service("ns", &name, 81, port, TrafficType::Tcp, &eps)
        } else {
            let mut s = http("ns", &name, 5000, &eps);
            s.cluster_ip = slot.map(|k| format!("10.96.0.{k}"));
            s.options = OptionsSpec {
                retry_attempts: e.retries,
                circuit_breaker: e.breaker.then(|| "NetworkErrorRatio() > 0.5".to_string()),
                ..OptionsSpec::default()
            };
            s
        };
        if let Some((to, weight)) = e.split_to {
            let target = by_name.get(to).copied().flatten();
            if !e.tcp && to > n && target.is_some_and(|t| !t.tcp) {
                s.splits = vec![SplitSpec {
                    name: format!("ns/split{n}"),
                    matches: Vec::new(),
                    backends: vec![SplitBackendSpec {
                        namespace: "ns".into(),
                        name: format!("svc{to}"),
                        port: 80,
                        weight,
                    }],
                }];
            }
        }
        services.push(s);
    }
    let mut spec = table(version, services);
    spec.acl = acl;
    sorted(spec)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Applying the deltas between any sequence of tables gives, at every step, the same table
    /// as validating that step's full table, in both the validated and the wire form; the
    /// workload index shares every shard a delta does not touch.
    #[test]
    fn any_sequence_of_deltas_gives_the_full_table(
        versions in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(entry(), 0..8), workloads()),
            1..8,
        )
    ) {
        let specs: Vec<TableSpec> = versions
            .iter()
            .enumerate()
            .map(|(i, (acl, entries, ws))| {
                let mut spec = build(i as u64 + 1, *acl, entries);
                spec.workloads = workload_specs(ws);
                sorted(spec)
            })
            .collect();
        let mut held = Table::try_from(&specs[0]).unwrap();
        let mut held_spec = specs[0].clone();
        for pair in specs.windows(2) {
            let delta = pair[1].delta_since(&pair[0]);
            apply_to_spec(&mut held_spec, &delta).unwrap();
            prop_assert_eq!(&held_spec, &pair[1]);
            let next = held.apply_delta(&delta).unwrap();
            let touched = delta.workloads_changed.len() + delta.workloads_removed.len();
            if touched == 0 {
                prop_assert!(next.shares_workloads(&held));
            } else if !held.workloads().is_empty() {
                let shared = next.workloads().shared_shards(held.workloads());
                prop_assert!(
                    shared + touched >= crate::mesh::WORKLOAD_SHARDS,
                    "{touched} workloads changed, {shared} shards shared"
                );
            }
            // Every service the delta does not name is the held table's, shared.
            for (_, s) in next.iter() {
                if !delta.changed.iter().any(|c| c.key() == s.key) {
                    let before = held.service(&s.key).map(|id| held.shared(id));
                    prop_assert!(before.is_some_and(|b| Arc::ptr_eq(b, s)), "{} copied", s.key);
                }
            }
            held = next;
            prop_assert_eq!(view(&held), view(&Table::try_from(&pair[1]).unwrap()));
        }
    }
}

/// A table of `n` HTTP services named `svc{i}` for the `i` in `names`, each with a cluster IP,
/// one in five splitting to the next name up (when present).
fn large(version: u64, names: &[usize], endpoint: impl Fn(usize) -> u8) -> TableSpec {
    let services = names
        .iter()
        .map(|&i| {
            let mut s = http(
                "ns",
                &format!("svc{i}"),
                5000,
                &[&format!("10.0.{}.{}:80", i / 200, endpoint(i))],
            );
            s.cluster_ip = Some(format!("10.96.{}.{}", i / 200, i % 200));
            if i % 5 == 0 && names.contains(&(i + 1)) {
                s.splits = vec![SplitSpec {
                    name: format!("ns/split{i}"),
                    matches: Vec::new(),
                    backends: vec![SplitBackendSpec {
                        namespace: "ns".into(),
                        name: format!("svc{}", i + 1),
                        port: 80,
                        weight: 1,
                    }],
                }];
            }
            s
        })
        .collect();
    sorted(table(version, services))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// On a table of hundreds of services (several chunks, every shard in use), any sequence
    /// of deltas that change, remove and add a few services gives the full table of each step
    /// and copies only the chunks and shards of the positions it touches (a changed or added
    /// service: its own; a removal: the hole and the last position, which moves into it).
    #[test]
    fn deltas_on_a_large_table_copy_only_what_they_touch(
        steps in proptest::collection::vec(
            (
                proptest::collection::vec(0usize..400, 0..4),
                proptest::collection::vec(0usize..400, 0..3),
                proptest::collection::vec(400usize..420, 0..3),
                any::<u8>(),
            ),
            1..6,
        )
    ) {
        let mut names: Vec<usize> = (0..400).collect();
        let mut moved: Vec<(usize, u8)> = Vec::new();
        let endpoint = |moved: &[(usize, u8)], i: usize| {
            moved.iter().rev().find(|m| m.0 == i).map_or(1, |m| m.1)
        };
        let mut spec = large(1, &names, |i| endpoint(&moved, i));
        let mut held = Table::try_from(&spec).unwrap();
        for (version, (change, remove, add, ep)) in steps.iter().enumerate() {
            for &i in change {
                moved.push((i, ep % 250 + 2));
            }
            names.retain(|n| !remove.contains(n) || change.contains(n));
            for &a in add {
                if !names.contains(&a) {
                    names.push(a);
                }
            }
            names.sort_unstable();
            let next_spec = large(version as u64 + 2, &names, |i| endpoint(&moved, i));
            let delta = next_spec.delta_since(&spec);
            let next = held.apply_delta(&delta).unwrap();
            prop_assert_eq!(view(&next), view(&Table::try_from(&next_spec).unwrap()));
            // Positions touched: each changed or added service, and per removal two.
            let touched = delta.changed.len() + 2 * delta.removed.len();
            let [chunks, keys, hosts] = next.unshared_with(&held);
            prop_assert!(chunks <= touched, "{chunks} chunks copied for {touched} positions");
            prop_assert!(keys <= touched, "{keys} identity shards copied for {touched} positions");
            // Each service has two hosts (its name and its cluster IP); a removed one's leave.
            prop_assert!(hosts <= 2 * touched, "{hosts} host shards copied for {touched} positions");
            held = next;
            spec = next_spec;
        }
    }
}

//! The incremental translation against translation from scratch: after any sequence of object
//! changes a [`Translator`] that saw them all gives what a new one gives for the last
//! snapshot; and a change re-translates only what it touches.

use std::collections::BTreeMap;
use std::sync::Arc;

use config_model::Table;
use proptest::prelude::*;

use super::*;
use crate::manifests::parse_documents;
use crate::settings::PortRange;

/// Which object of the small universe the generated changes play with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    Service(u8),
    Slice(u8),
    Pod(u8),
    Smi(u8),
}

const SERVICES: u8 = 6;
const SLICES: u8 = 7;
const PODS: u8 = 4;
// SMI objects 0 to 5; Gateway API routes 6 and 7.
const SMI: u8 = 8;

fn service_ns(i: u8) -> &'static str {
    if i < 4 {
        "shop"
    } else {
        "lab"
    }
}

/// YAML of one object of the universe at one variant.
fn yaml(slot: Slot, v: u8) -> String {
    match slot {
        Slot::Service(i) => {
            let ns = service_ns(i);
            // Variants from 6 on take their cluster IP from a pool of two, so two Services
            // sometimes share one.
            let ip = if v < 6 {
                format!("10.96.1.{i}")
            } else {
                format!("10.96.0.{}", 1 + (i + v) % 2)
            };
            let (annotations, ports) = match v % 6 {
                0 => ("{}".to_string(), "[{name: http, port: 80}]"),
                1 => (
                    "{maille.io/traffic-type: tcp}".into(),
                    "[{name: db, port: 5432}]",
                ),
                2 => (
                    "{maille.io/traffic-type: udp}".into(),
                    "[{name: dns, port: 53, protocol: UDP}]",
                ),
                3 => (
                    "{maille.io/retry-attempts: \"2\"}".into(),
                    "[{name: http, port: 80}, {name: admin, port: 81}]",
                ),
                4 => (
                    "{maille.io/traffic-type: sctp}".into(),
                    "[{name: http, port: 80}]",
                ),
                _ => (
                    "{maille.io/mesh: \"false\"}".into(),
                    "[{name: http, port: 80}]",
                ),
            };
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: {ns}, annotations: {annotations}}}\nspec: {{clusterIP: {ip}, ports: {ports}}}\n"
            )
        }
        Slot::Slice(i) => {
            // Slice 6 names a Service that never exists.
            let svc = if i < SERVICES { i } else { 9 };
            let ns = service_ns(svc);
            let a = 1 + v % 4;
            let b = 1 + (v / 2) % 4;
            let ready = !v.is_multiple_of(3);
            // The nodes of the endpoints (read with mutual TLS on); a bad one at some variants.
            let node = ["n0", "n1", "N_bad"][usize::from(v % 3)];
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s{svc}-x{i}, namespace: {ns}, labels: {{kubernetes.io/service-name: s{svc}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"10.0.0.{a}\"], nodeName: n{a}}}, {{addresses: [\"10.0.0.{b}\"], nodeName: {node}, conditions: {{ready: {ready}}}}}]\nports: [{{name: http, port: 8080}}, {{name: admin, port: 9090}}, {{name: db, port: 5432}}, {{name: dns, port: 53, protocol: UDP}}]\n"
            )
        }
        Slot::Pod(i) => {
            // Variants v and v + 8 differ only in readiness, which translation does not read.
            let w = v % 8;
            let ip = 1 + (i + w / 2) % 4;
            let sa = if w.is_multiple_of(2) { "a" } else { "b" };
            let phase = if w == 7 { "Succeeded" } else { "Running" };
            let ready = if v >= 8 { "True" } else { "False" };
            // Pod 3 is a node proxy at some variants (read with mutual TLS on).
            let labels = if i == 3 && w.is_multiple_of(3) {
                "{app.kubernetes.io/name: maille-proxy}"
            } else {
                "{}"
            };
            let node = (i + w) % 3;
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: shop, labels: {labels}}}\nspec: {{nodeName: n{node}, serviceAccountName: {sa}, containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: 10.0.0.{ip}, phase: {phase}, conditions: [{{type: Ready, status: \"{ready}\"}}]}}\n"
            )
        }
        Slot::Smi(j) => match j {
            0 => format!(
                "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: t0, namespace: shop}}\nspec: {{service: s0, backends: [{{service: s1, weight: {}}}, {{service: s2, weight: 10}}]}}\n",
                v * 10
            ),
            // With t0, a cycle at some variants.
            1 => format!(
                "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: t1, namespace: shop}}\nspec: {{service: s{}, backends: [{{service: s0, weight: 1}}, {{service: s3, weight: 1}}]}}\n",
                1 + v % 3
            ),
            2 => "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: g, namespace: shop}\nspec: {matches: [{name: api, pathRegex: /api, methods: [\"*\"]}]}\n".into(),
            3 => "apiVersion: specs.smi-spec.io/v1alpha4\nkind: TCPRoute\nmetadata: {name: r, namespace: shop}\nspec: {}\n".into(),
            4 => format!(
                "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: tt0, namespace: shop}}\nspec:\n  destination: {{kind: ServiceAccount, name: {}}}\n  rules: [{{kind: {}, name: {}}}]\n  sources: [{{kind: ServiceAccount, name: b}}]\n",
                if v.is_multiple_of(2) { "a" } else { "b" },
                if v.is_multiple_of(3) { "TCPRoute" } else { "HTTPRouteGroup" },
                if v.is_multiple_of(3) { "r" } else { "g" },
            ),
            5 => format!(
                "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: t2, namespace: lab}}\nspec: {{service: s4, backends: [{{service: s5, weight: {v}}}, {{service: s4, weight: 1}}]}}\n"
            ),
            // An HTTPRoute on s0 (every port, port 80 or 81), backends s1 and s2 (or one in
            // another namespace), a filter Maille refuses at some variants.
            6 => {
                let port = ["", ", port: 80", ", port: 81"][usize::from(v % 3)];
                let filter = if v % 4 == 3 {
                    "[{type: RequestMirror, requestMirror: {backendRef: {name: s1, port: 80}}}]"
                } else {
                    "[{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-r, value: h0}]}}]"
                };
                let other = if v % 5 == 4 { ", namespace: lab" } else { "" };
                format!(
                    "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: h0, namespace: shop}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: s0{port}}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /api}}}}]\n    backendRefs: [{{name: s1, port: 80, weight: {v}}}, {{name: s2, port: 80{other}}}]\n  - matches: [{{path: {{type: Exact, value: /x}}, headers: [{{name: x-v, value: \"{v}\"}}]}}]\n    filters: {filter}\n"
                )
            }
            // A GRPCRoute on s1 and an HTTPRoute on s4 sending to s5.
            _ => format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g0, namespace: shop}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: s{}}}]\n  rules:\n  - matches: [{{method: {{service: shop.v1.S, method: M{v}}}}}]\n    backendRefs: [{{name: s3, port: 80}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: h1, namespace: lab}}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: s4}}]\n  rules: [{{backendRefs: [{{name: s5, port: 80, weight: {v}}}]}}]\n",
                1 + v % 2
            ),
        },
    }
}

/// The objects held, each parsed once (so an unchanged object keeps its `Arc`).
#[derive(Default)]
struct World {
    objects: BTreeMap<Slot, Snapshot>,
}

impl World {
    fn set(&mut self, slot: Slot, v: u8) {
        let mut s = Snapshot::default();
        parse_documents(&yaml(slot, v), "gen.yaml", &mut s).unwrap();
        assert!(s.problems.is_empty(), "{slot:?} {v}: {:?}", s.problems);
        self.objects.insert(slot, s);
    }

    fn snapshot(&self, reversed: bool) -> Snapshot {
        let mut out = Snapshot::default();
        for s in self.objects.values() {
            out.extend_from(s);
        }
        if reversed {
            out.services.reverse();
            out.endpoint_slices.reverse();
            out.pods.reverse();
        }
        out
    }
}

fn settings(acl: bool, mtls: config_model::MtlsMode) -> Settings {
    Settings {
        acl,
        mesh: crate::mesh::MeshSettings {
            mtls,
            ..crate::mesh::MeshSettings::default()
        },
        // Small ranges, so that some changes exhaust them.
        http_ports: PortRange::new(5000, 5001),
        tcp_ports: PortRange::new(10000, 10001),
        udp_ports: PortRange::new(15000, 15000),
        ..Settings::default()
    }
}

fn assert_same(inc: &Translation, full: &Translation, step: usize) {
    assert_eq!(inc.table, full.table, "step {step}: table");
    assert_eq!(inc.services, full.services, "step {step}: statuses");
    assert_eq!(inc.objects, full.objects, "step {step}: object rows");
    assert_eq!(inc.shadows, full.shadows, "step {step}: shadows");
    assert_eq!(inc.problems, full.problems, "step {step}: problems");
    assert_eq!(
        inc.route_statuses, full.route_statuses,
        "step {step}: route statuses"
    );
}

fn slot_of(kind: u8, i: u8) -> Slot {
    match kind % 4 {
        0 => Slot::Service(i % SERVICES),
        1 => Slot::Slice(i % SLICES),
        2 => Slot::Pod(i % PODS),
        _ => Slot::Smi(i % SMI),
    }
}

/// Runs the changes; after each, the incremental translation must equal one from scratch
/// (with an allocator that saw the same sequence), and the proxy must accept the table.
fn run(acl: bool, mtls: config_model::MtlsMode, start: &[(u8, u8, u8)], changes: &[(u8, u8, u8)]) {
    let settings = settings(acl, mtls);
    let mut world = World::default();
    for &(kind, i, v) in start {
        world.set(slot_of(kind, i), v);
    }
    let mut translator = Translator::new(settings.clone());
    let mut alloc_inc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let mut alloc_full = alloc_inc.clone();
    // A second one through `translate_if_changed`, as the rebuild loop uses it: `None` must
    // mean "the same as the last one returned".
    let mut lazy = Translator::new(settings.clone());
    let mut alloc_lazy = alloc_inc.clone();
    let mut last_lazy: Option<Translation> = None;
    let mut prev_inc: Option<Translation> = None;
    // The incremental translations published as the rebuild loop does (saying what changed),
    // and their tables published whole (the publisher compares): same versions, same JSON.
    let told = crate::api::ApiState::new(0, tokio_util::sync::CancellationToken::new());
    let walked = crate::api::ApiState::new(0, tokio_util::sync::CancellationToken::new());
    for (step, &(kind, i, v)) in std::iter::once(&(255, 0, 0)).chain(changes).enumerate() {
        if kind != 255 {
            let slot = slot_of(kind, i);
            match v {
                // Removed.
                0 => {
                    world.objects.remove(&slot);
                }
                // The same content again, as a new object (a no-op update).
                1 => {
                    if let Some(s) = world.objects.get(&slot) {
                        let text = s.clone();
                        let mut again = Snapshot::default();
                        for svc in &text.services {
                            again.services.push(Arc::new((**svc).clone()));
                        }
                        for sl in &text.endpoint_slices {
                            again.endpoint_slices.push(Arc::new((**sl).clone()));
                        }
                        for p in &text.pods {
                            again.pods.push(Arc::new((**p).clone()));
                        }
                        again.smi = text.smi.clone();
                        for r in &text.gateway.http_routes {
                            again.gateway.http_routes.push(Arc::new((**r).clone()));
                        }
                        for r in &text.gateway.grpc_routes {
                            again.gateway.grpc_routes.push(Arc::new((**r).clone()));
                        }
                        world.objects.insert(slot, again);
                    }
                }
                v => world.set(slot, v - 2),
            }
        }
        let snap = world.snapshot(step % 3 == 2);
        let inc = translator.translate(&snap, &mut alloc_inc);
        let full = translate(&snap, &settings, &mut alloc_full);
        assert_same(&inc, &full, step);
        let lineage = inc
            .lineage
            .as_ref()
            .expect("a translator's translation has a lineage");
        match &prev_inc {
            Some(prev) => assert_eq!(
                lineage.changes,
                prev.table.changes(&inc.table),
                "step {step}: what the translation says changed"
            ),
            None => assert_eq!(lineage.seq, 1),
        }
        assert_eq!(
            serde_json::to_value(&inc.table).unwrap(),
            serde_json::to_value(inc.table.spec()).unwrap(),
            "step {step}: the shared table's JSON"
        );
        let v_told = told.publish_translation(&inc, 0);
        let v_walked = walked.publish(inc.table.spec(), &inc.services.to_vec(), &inc.objects);
        assert_eq!(v_told, v_walked, "step {step}: versions");
        assert_eq!(
            told.current().unwrap().table_json(),
            walked.current().unwrap().table_json(),
            "step {step}: served tables"
        );
        if let Some(t) = lazy.translate_if_changed(&snap, &mut alloc_lazy) {
            if let Some(last) = &last_lazy {
                assert_eq!(
                    t.lineage.as_ref().map(|l| &l.changes),
                    Some(&last.table.changes(&t.table)),
                    "step {step}: what the lazy translation says changed"
                );
            }
            last_lazy = Some(t);
        }
        assert_same(last_lazy.as_ref().expect("a first result"), &full, step);
        if let Err(e) = Table::try_from(&inc.table.spec()) {
            panic!("step {step}: the proxy refuses the table: {e}");
        }
        prev_inc = Some(inc);
    }
}

fn change() -> impl Strategy<Value = (u8, u8, u8)> {
    (0u8..4, 0u8..8, 0u8..14)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn incremental_equals_from_scratch_after_any_changes(
        acl in any::<bool>(),
        mtls in prop_oneof![
            Just(config_model::MtlsMode::Disabled),
            Just(config_model::MtlsMode::Permissive),
            Just(config_model::MtlsMode::Strict),
        ],
        start in proptest::collection::vec((0u8..4, 0u8..8, 0u8..12), 0..24),
        changes in proptest::collection::vec(change(), 1..30),
    ) {
        run(acl, mtls, &start, &changes);
    }
}

/// Every object of the universe, at a few variants, one after another.
#[test]
fn every_object_and_variant_in_turn() {
    let mut changes = Vec::new();
    for v in 0..14 {
        for kind in 0..4 {
            for i in 0..8 {
                changes.push((kind, i, v));
            }
        }
    }
    run(true, config_model::MtlsMode::Disabled, &[], &changes);
    run(false, config_model::MtlsMode::Disabled, &[], &changes);
    run(true, config_model::MtlsMode::Strict, &[], &changes);
}

fn cluster(n: u8) -> World {
    let mut w = World::default();
    for i in 0..n.min(SERVICES) {
        w.set(Slot::Service(i), 0);
        w.set(Slot::Slice(i), 5);
    }
    // Pods at 10.0.0.1 to .4, under ServiceAccounts a, a, b, b.
    for i in 0..PODS {
        w.set(Slot::Pod(i), if i < 2 { 0 } else { 1 });
    }
    w
}

#[test]
fn one_endpoint_change_retranslates_one_service() {
    let settings = Settings::default();
    let mut world = cluster(SERVICES);
    let mut translator = Translator::new(settings.clone());
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    translator.translate(&world.snapshot(false), &mut alloc);
    assert_eq!(translator.work().services, usize::from(SERVICES));

    world.set(Slot::Slice(2), 6);
    let t = translator.translate(&world.snapshot(false), &mut alloc);
    assert_eq!(translator.work().services, 1, "{:?}", translator.work());
    let s2 = t.table.services.iter().find(|s| s.name == "s2").unwrap();
    assert_eq!(s2.endpoints.len(), 1, "{s2:?}");

    // Same objects again (a snapshot after an event that was filtered out): nothing redone.
    translator.translate(&world.snapshot(true), &mut alloc);
    assert_eq!(translator.work(), Work::default());
}

/// A Pod whose update changes nothing translation reads (a readiness flip) makes no new table
/// version and no work, with TrafficTargets in ACL mode as without.
#[test]
fn a_pod_update_that_changes_nothing_makes_no_new_version() {
    for acl in [false, true] {
        let settings = Settings {
            acl,
            ..Settings::default()
        };
        let mut world = cluster(SERVICES);
        if acl {
            // b's pods may call a's with the HTTP routes of g.
            world.set(Slot::Smi(2), 0);
            world.set(Slot::Smi(4), 2);
        }
        let api = crate::api::ApiState::new(0, tokio_util::sync::CancellationToken::new());
        let (out, _keep) = tokio::sync::watch::channel(None);
        let mut rebuilder = crate::rebuild::Rebuilder::new(settings, api.clone(), out);
        let first = rebuilder.rebuild(&world.snapshot(false));
        if acl {
            assert!(
                first.table.services.iter().any(|s| !s.access.is_empty()),
                "the target opens something: {:?}",
                first.problems
            );
        }
        let version = api.current().unwrap().version;
        let built = rebuilder.translations();

        // p1 becomes ready: same address, account and phase.
        assert_eq!(
            yaml(Slot::Pod(1), 0).replace("False", "True"),
            yaml(Slot::Pod(1), 8)
        );
        world.set(Slot::Pod(1), 8);
        rebuilder.rebuild(&world.snapshot(false));
        assert_eq!(api.current().unwrap().version, version, "acl {acl}");
        assert_eq!(rebuilder.work(), Work::default(), "acl {acl}");
        assert_eq!(
            rebuilder.translations(),
            built,
            "nothing put together, acl {acl}"
        );

        // A Pod that moves to another address is a change, in ACL mode.
        world.set(Slot::Pod(1), 4);
        let t = rebuilder.rebuild(&world.snapshot(false));
        assert_eq!(rebuilder.work().smi, acl, "acl {acl}");
        assert_eq!(
            rebuilder.translations(),
            built + u64::from(acl),
            "acl {acl}"
        );
        assert_eq!(
            api.current().unwrap().version > version,
            t.table != first.table,
            "acl {acl}"
        );
    }
}

/// The universe's routes do reach the table (so the property above covers the Gateway API
/// stage), and a change to a Service only a route names reruns that stage alone.
#[test]
fn routes_of_the_universe_reach_the_table() {
    let settings = Settings::default();
    let mut world = cluster(SERVICES);
    world.set(Slot::Smi(6), 0);
    world.set(Slot::Smi(7), 2);
    let mut translator = Translator::new(settings.clone());
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translator.translate(&world.snapshot(false), &mut alloc);
    let routed: Vec<String> = t
        .table
        .services
        .iter()
        .filter(|s| !s.routes.is_empty())
        .map(|s| s.key().to_string())
        .collect();
    assert_eq!(
        routed,
        ["lab/s4:80", "shop/s0:80", "shop/s1:80"],
        "{routed:?}"
    );
    assert_eq!(t.route_statuses.len(), 3);

    // s5 is named by a route only (a backend of h1): the route stage reruns.
    world.set(Slot::Slice(5), 6);
    translator.translate(&world.snapshot(false), &mut alloc);
    assert!(translator.work().gateway);
    // A slice of a Service no route names: no rerun.
    world.set(Slot::Slice(6), 3);
    translator.translate(&world.snapshot(false), &mut alloc);
    assert!(!translator.work().gateway, "{:?}", translator.work());
}

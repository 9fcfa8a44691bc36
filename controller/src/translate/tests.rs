//! Golden tests of the translation: fixture manifests in `golden/<case>.yaml`, expected output
//! in `golden/<case>.json` (regenerate with `MAILLE_BLESS=1` and review the diff).

use std::path::PathBuf;
use std::sync::Arc;

use config_model::{ServiceKey, TrafficType};
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::*;
use crate::manifests::parse_documents;
use crate::settings::{MeshServices, PortRange};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/translate/golden")
}

fn load(case: &str) -> Snapshot {
    let path = golden_dir().join(format!("{case}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut snap = Snapshot::default();
    parse_documents(&text, &format!("{case}.yaml"), &mut snap).unwrap();
    assert!(snap.problems.is_empty(), "{:?}", snap.problems);
    snap
}

fn render(t: &Translation) -> serde_json::Value {
    json!({
        "table": t.table,
        "services": t.services,
        "shadows": t.shadows.iter().map(|(name, s)| json!({
            "name": name,
            "service": format!("{}/{}", s.namespace, s.name),
            "ports": s.ports.iter().map(|p| format!("{} {}/{} -> {} ({})", p.name, p.port, p.protocol, p.mesh_port, p.traffic_type)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "problems": t.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    })
}

/// Translates the case's manifests and compares with the expected output.
fn golden(case: &str, settings: &Settings) -> Translation {
    let snap = load(case);
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&snap, settings, &mut alloc);
    let got = render(&t);
    let path = golden_dir().join(format!("{case}.json"));
    if std::env::var_os("MAILLE_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
    }
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with MAILLE_BLESS=1 to create it)",
                path.display()
            )
        }))
        .unwrap();
    assert_eq!(
        got,
        want,
        "translation of {case}.yaml differs from {case}.json; got:\n{}",
        serde_json::to_string_pretty(&got).unwrap()
    );
    t
}

fn find<'a>(
    t: &'a Translation,
    ns: &str,
    name: &str,
    port: u16,
) -> Option<&'a config_model::ServiceSpec> {
    t.table
        .services
        .iter()
        .find(|s| s.namespace == ns && s.name == name && s.port == port)
}

#[test]
fn traffic_types_and_prefixes() {
    let t = golden("traffic_types", &Settings::default());
    assert_eq!(
        find(&t, "shop", "web", 80).unwrap().traffic_type,
        TrafficType::Http
    );
    assert_eq!(find(&t, "shop", "web", 80).unwrap().mesh_port, 5000);
    assert_eq!(
        find(&t, "shop", "db", 5432).unwrap().traffic_type,
        TrafficType::Tcp
    );
    assert_eq!(find(&t, "shop", "db", 5432).unwrap().mesh_port, 10000);
    let dns = find(&t, "shop", "dns", 53).unwrap();
    assert_eq!(dns.traffic_type, TrafficType::Udp);
    assert_eq!(dns.mesh_port, 15000);
    // The TCP port of a udp service is not meshed.
    assert_eq!(
        t.table.services.iter().filter(|s| s.name == "dns").count(),
        1
    );
    assert_eq!(
        find(&t, "shop", "legacy", 6379).unwrap().traffic_type,
        TrafficType::Tcp
    );
    assert!(t.problems.is_empty(), "{:?}", t.problems);
}

#[test]
fn multi_port_named_target_ports_and_readiness() {
    let t = golden("endpoints", &Settings::default());
    let http = find(&t, "shop", "api", 80).unwrap();
    assert_eq!(http.mesh_port, 5000);
    let addrs: Vec<_> = http.endpoints.iter().map(|e| e.address.as_str()).collect();
    // 10.0.0.3 is not ready; 10.0.0.2 has no ready condition, which means ready.
    assert_eq!(addrs, ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"]);
    let metrics = find(&t, "shop", "api", 9090).unwrap();
    assert_eq!(metrics.mesh_port, 5001);
    assert_eq!(metrics.endpoints[0].address, "10.0.0.1:9100");
    let idle = find(&t, "shop", "idle", 80).expect("a service without ready endpoints is meshed");
    assert!(idle.endpoints.is_empty());
}

#[test]
fn namespace_lists_and_always_ignored_objects() {
    let mut settings = Settings::default();
    let t = golden("namespaces", &settings);
    let names: Vec<_> = t
        .table
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    assert_eq!(names, ["default/web", "legacy/web", "shop/web"]);

    settings.ignore_namespaces.insert("legacy".into());
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&load("namespaces"), &settings, &mut alloc);
    let names: Vec<_> = t
        .table
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    assert_eq!(names, ["default/web", "shop/web"]);

    settings.watch_namespaces.insert("shop".into());
    let t = translate(&load("namespaces"), &settings, &mut alloc);
    let names: Vec<_> = t
        .table
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    assert_eq!(names, ["shop/web"]);
}

#[test]
fn bad_annotations_stay_on_their_service() {
    let t = golden("bad_annotations", &Settings::default());
    // The good service is served as if the others did not exist.
    assert!(find(&t, "shop", "good", 80).is_some());
    // A bad traffic type keeps the service out, with its error in /api/services.
    assert!(find(&t, "shop", "bad-type", 80).is_none());
    let st = t.services.iter().find(|s| s.name == "bad-type").unwrap();
    assert_eq!(st.mesh_port, None);
    assert!(
        st.errors[0].contains("maille.io/traffic-type") && st.errors[0].contains("\"sctp\""),
        "{:?}",
        st.errors
    );
    // A bad option turns off that option only; the service is still meshed.
    let opt = find(&t, "shop", "bad-option", 80).unwrap();
    assert_eq!(opt.options.retry_attempts, None);
    assert_eq!(opt.options.timeout_ms, Some(2000));
    let st = t.services.iter().find(|s| s.name == "bad-option").unwrap();
    assert_eq!(st.mesh_port, Some(5000));
    assert!(
        st.errors[0].starts_with("shop/bad-option: annotation maille.io/retry-attempts"),
        "{:?}",
        st.errors
    );
    // A name too long for a shadow service is reported on that service.
    let long = t
        .problems
        .iter()
        .find(|p| p.object.name.starts_with("a-service-name"))
        .unwrap();
    assert!(long.message.contains("over the 63"), "{long}");
}

#[test]
fn table_level_conflicts_drop_only_the_culprit() {
    // Two services with the same ClusterIP would claim the same HTTP host: the second goes.
    let mut snap = Snapshot::default();
    for name in ["a", "b", "c"] {
        let ip = if name == "c" {
            "10.96.0.9"
        } else {
            "10.96.0.1"
        };
        snap.services
            .push(svc("shop", name, json!({}), ip, json!([{"port": 80}])));
    }
    let settings = Settings::default();
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&snap, &settings, &mut alloc);
    let names: Vec<_> = t.table.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(t.problems.len(), 1);
    assert_eq!(t.problems[0].object, ObjectRef::service("shop", "b"));
    assert!(
        t.problems[0].message.contains("10.96.0.1"),
        "{}",
        t.problems[0]
    );
    config_model::Table::try_from(&t.table.spec()).expect("the served table is valid");
}

fn svc(
    ns: &str,
    name: &str,
    annotations: serde_json::Value,
    ip: &str,
    ports: serde_json::Value,
) -> Arc<Service> {
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "annotations": annotations},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .unwrap(),
    )
}

fn tcp(name: &str) -> Arc<Service> {
    svc(
        "shop",
        name,
        json!({"maille.io/traffic-type": "tcp"}),
        "None",
        json!([{"port": 7000}, {"name": "b", "port": 7001}]),
    )
}

fn mesh_ports(t: &Translation) -> Vec<(String, u16, u16)> {
    t.table
        .services
        .iter()
        .map(|s| (s.name.clone(), s.port, s.mesh_port))
        .collect()
}

#[test]
fn tcp_ports_are_stable_across_rebuilds_and_restarts_and_reused() {
    let settings = Settings {
        tcp_ports: PortRange::new(10000, 10004),
        ..Settings::default()
    };
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let mut snap = Snapshot {
        services: vec![tcp("m"), tcp("t")],
        ..Snapshot::default()
    };
    let t1 = translate(&snap, &settings, &mut alloc);
    assert_eq!(
        mesh_ports(&t1),
        [
            ("m".into(), 7000, 10000),
            ("m".into(), 7001, 10001),
            ("t".into(), 7000, 10002),
            ("t".into(), 7001, 10003)
        ]
    );
    // A service sorting first arrives: nobody moves; it gets what is left and is told the
    // range is exhausted for its second port.
    snap.services.push(tcp("a"));
    let t2 = translate(&snap, &settings, &mut alloc);
    assert_eq!(
        mesh_ports(&t2),
        [
            ("a".into(), 7000, 10004),
            ("m".into(), 7000, 10000),
            ("m".into(), 7001, 10001),
            ("t".into(), 7000, 10002),
            ("t".into(), 7001, 10003)
        ]
    );
    assert_eq!(t2.problems.len(), 1);
    assert!(
        t2.problems[0]
            .message
            .contains("tcp port range 10000-10004 is exhausted"),
        "{}",
        t2.problems[0]
    );
    let st = t2
        .services
        .iter()
        .find(|s| s.name == "a" && s.port == 7001)
        .unwrap();
    assert_eq!(st.mesh_port, None);
    assert_eq!(st.errors.len(), 1);
    // "m" goes away: its ports are free again and "a" gets one.
    snap.services
        .retain(|s| s.metadata.name.as_deref() != Some("m"));
    let t3 = translate(&snap, &settings, &mut alloc);
    assert_eq!(
        mesh_ports(&t3),
        [
            ("a".into(), 7000, 10004),
            ("a".into(), 7001, 10000),
            ("t".into(), 7000, 10002),
            ("t".into(), 7001, 10003)
        ]
    );
    assert!(t3.problems.is_empty());
    // A restarted controller seeded from the shadow services gives the same ports.
    let mut fresh = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    for s in &t3.table.services {
        let key = ServiceKey {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            port: s.port,
        };
        assert!(fresh.seed(s.traffic_type, key, s.mesh_port));
    }
    let t4 = translate(&snap, &settings, &mut fresh);
    assert_eq!(mesh_ports(&t4), mesh_ports(&t3));
    // Without the seed, ports would have come out in name order instead.
    let mut unseeded = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    assert_ne!(
        mesh_ports(&translate(&snap, &settings, &mut unseeded)),
        mesh_ports(&t3)
    );
}

#[test]
fn http_range_too_small_is_reported_per_service() {
    let settings = Settings {
        http_ports: PortRange::new(5000, 5000),
        ..Settings::default()
    };
    let snap = Snapshot {
        services: vec![
            svc(
                "shop",
                "two",
                json!({}),
                "None",
                json!([{"name": "a", "port": 80}, {"name": "b", "port": 81}]),
            ),
            svc("shop", "one", json!({}), "None", json!([{"port": 80}])),
        ],
        ..Snapshot::default()
    };
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&snap, &settings, &mut alloc);
    assert_eq!(
        mesh_ports(&t),
        [("one".into(), 80, 5000), ("two".into(), 80, 5000)]
    );
    assert_eq!(t.problems.len(), 1);
    assert!(
        t.problems[0]
            .message
            .contains("HTTP port range 5000-5000 has only 1 ports"),
        "{}",
        t.problems[0]
    );
}

#[test]
fn shadow_ports_map_service_ports_to_mesh_ports() {
    let snap = Snapshot {
        services: vec![tcp("db")],
        ..Snapshot::default()
    };
    let settings = Settings::default();
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&snap, &settings, &mut alloc);
    let shadow = &t.shadows["db-6d61696c6c65-shop"];
    assert_eq!(shadow.ports.len(), 2);
    assert_eq!(
        (shadow.ports[0].port, shadow.ports[0].mesh_port),
        (7000, 10000)
    );
    assert_eq!(shadow.ports[0].name, "tcp-7000");
    assert_eq!(shadow.ports[1].name, "b");
}

#[test]
fn smi_objects_from_manifests_reach_the_table() {
    let mut snap = Snapshot::default();
    for f in ["00-services.yaml", "traffic-split-canary.yaml"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/smi")
            .join(f);
        parse_documents(&std::fs::read_to_string(&path).unwrap(), f, &mut snap).unwrap();
    }
    assert_eq!(snap.smi.traffic_splits.len(), 1);
    let settings = Settings::default();
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&snap, &settings, &mut alloc);
    let web = t
        .table
        .services
        .iter()
        .find(|s| s.namespace == "shop" && s.name == "web")
        .unwrap();
    assert_eq!(web.splits.len(), 1);
    let weights: Vec<_> = web.splits[0]
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(weights, [("web-v1", 90), ("web-v2", 10)]);
    config_model::Table::try_from(&t.table.spec()).unwrap();
}

#[test]
fn a_megabyte_annotation_is_quoted_cut_in_problems_and_api_services() {
    let huge = "7".repeat(1 << 20);
    let mut snap = Snapshot::default();
    snap.services.push(svc(
        "shop",
        "bad-type",
        json!({"maille.io/traffic-type": huge}),
        "10.96.0.1",
        json!([{"port": 80}]),
    ));
    snap.services.push(svc(
        "shop",
        "bad-option",
        json!({"maille.io/traffic-type": "http", "maille.io/retry-attempts": huge}),
        "10.96.0.2",
        json!([{"port": 80}]),
    ));
    let settings = Settings::default();
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&snap, &settings, &mut alloc);
    assert_eq!(t.problems.len(), 2, "{:?}", t.problems);
    for p in &t.problems {
        assert!(p.message.len() < 400, "{} bytes", p.message.len());
        assert!(p.message.contains("…[1048576 bytes]"), "{p}");
    }
    let statuses = serde_json::to_string(&t.services).unwrap();
    assert!(
        statuses.len() < 2_000,
        "/api/services: {} bytes",
        statuses.len()
    );
    assert_eq!(statuses.matches("[1048576 bytes]").count(), 2, "{statuses}");
}

fn snapshot_of(yaml: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    parse_documents(yaml, "inline.yaml", &mut snap).unwrap();
    snap
}

fn translate_default(snap: &Snapshot, settings: &Settings) -> Translation {
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    translate(snap, settings, &mut alloc)
}

const OWN_AND_FOREIGN_SHADOWS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
# The shadow of shop/web written by another install, whose mesh namespace is "mesh-b".
apiVersion: v1
kind: Service
metadata:
  name: web-6d61696c6c65-shop
  namespace: mesh-b
  labels: {app.kubernetes.io/managed-by: maille, maille.io/service-namespace: shop, maille.io/service-name: web}
spec: {ports: [{port: 80, targetPort: 5000}]}
---
# Something else that install manages (not shadow-named).
apiVersion: v1
kind: Service
metadata:
  name: maille-controller
  namespace: mesh-b
  labels: {app.kubernetes.io/managed-by: maille}
spec: {ports: [{port: 9000}]}
"#;

#[test]
fn services_maille_manages_are_never_meshed() {
    let t = translate_default(&snapshot_of(OWN_AND_FOREIGN_SHADOWS), &Settings::default());
    let names: Vec<_> = t
        .table
        .services
        .iter()
        .map(|s| format!("{}/{}", s.namespace, s.name))
        .collect();
    assert_eq!(names, ["shop/web"]);
    assert_eq!(
        t.shadows.keys().collect::<Vec<_>>(),
        ["web-6d61696c6c65-shop"]
    );
    assert!(t.services.iter().all(|s| s.namespace == "shop"));
}

const OPT_IN_OUT: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: out, namespace: shop, annotations: {maille.io/mesh: "false"}}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: in, namespace: shop, annotations: {maille.io/mesh: "true"}}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: typo, namespace: shop, annotations: {maille.io/mesh: "nope"}}
spec: {ports: [{port: 80}]}
"#;

fn meshed_names(t: &Translation) -> Vec<&str> {
    t.table.services.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn per_service_opt_out_and_annotated_only_mode() {
    let snap = snapshot_of(OPT_IN_OUT);
    let all = translate_default(&snap, &Settings::default());
    assert_eq!(meshed_names(&all), ["in", "plain", "typo"]);
    assert!(!all.shadows.contains_key("out-6d61696c6c65-shop"));
    // A bad value is reported on the service (in its row) and the mode's default applies.
    let typo = all.services.iter().find(|s| s.name == "typo").unwrap();
    assert!(
        typo.errors[0].contains("maille.io/mesh: invalid value \"nope\""),
        "{:?}",
        typo.errors
    );

    let settings = Settings {
        mesh_services: MeshServices::Annotated,
        ..Settings::default()
    };
    let annotated = translate_default(&snap, &settings);
    assert_eq!(meshed_names(&annotated), ["in"]);
    assert_eq!(
        annotated.shadows.keys().collect::<Vec<_>>(),
        ["in-6d61696c6c65-shop"]
    );
    // The bad value has no port row here (not meshed): it is listed as an object.
    let row = annotated
        .objects
        .iter()
        .find(|o| o.name == "typo")
        .expect("the service with a bad annotation is listed");
    assert_eq!(row.kind, "Service");
    assert!(row.errors[0].contains("\"nope\""), "{:?}", row.errors);
}

#[test]
fn problems_on_other_objects_are_listed_as_objects() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: canary, namespace: shop}
spec:
  service: web
  backends: [{service: web-v2, weight: 1}]
"#;
    let mut snap = snapshot_of(yaml);
    // What a provider found reading its objects (e.g. a manifests file that stopped parsing).
    snap.problems.push(Problem::new(
        ObjectRef::new("File", "", "broken.yaml"),
        "broken.yaml: document 1: not valid YAML",
    ));
    let t = translate_default(&snap, &Settings::default());
    let kinds: Vec<(&str, &str)> = t
        .objects
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    assert_eq!(kinds, [("File", "broken.yaml"), ("TrafficSplit", "canary")]);
    let split = &t.objects[1];
    assert_eq!(split.namespace, "shop");
    assert!(
        split
            .errors
            .iter()
            .any(|e| e.contains("backend shop/web-v2 is not meshed")),
        "{:?}",
        split.errors
    );
    assert!(t
        .problems
        .iter()
        .any(|p| p.object.kind == "File" && p.message.contains("not valid YAML")));
    // The service itself is fine and has its row.
    assert!(t
        .services
        .iter()
        .any(|s| s.name == "web" && s.errors.is_empty()));
}

fn mesh_settings(mtls: config_model::MtlsMode) -> Settings {
    Settings {
        acl: true,
        mesh: crate::mesh::MeshSettings {
            mtls,
            ..crate::mesh::MeshSettings::default()
        },
        ..Settings::default()
    }
}

/// Node proxies, workloads, endpoint nodes and identities, with hostile objects left out and
/// named (issue 14).
#[test]
fn mesh_nodes_workloads_and_identities() {
    let t = golden("mesh", &mesh_settings(config_model::MtlsMode::Strict));
    let table = &t.table;
    assert_eq!(table.mtls, config_model::MtlsMode::Strict);
    let nodes: Vec<_> = table
        .nodes
        .iter()
        .map(|n| format!("{} {}", n.name, n.tunnel))
        .collect();
    assert_eq!(nodes, ["node-a 127.0.1.1:15008", "node-b 127.0.2.1:16008"]);
    let workloads: Vec<_> = table
        .workloads
        .values()
        .map(|w| format!("{} {} {}/{}", w.ip, w.node, w.namespace, w.service_account))
        .collect();
    assert_eq!(
        workloads,
        [
            "127.0.1.10 node-a shop/client",
            "127.0.2.10 node-b shop/web",
            "127.0.3.10 node-c shop/web"
        ]
    );
    let web = find(&t, "shop", "web", 80).unwrap();
    let eps: Vec<_> = web
        .endpoints
        .iter()
        .map(|e| format!("{} {:?}", e.address, e.node))
        .collect();
    assert_eq!(
        eps,
        [
            "127.0.2.10:8080 Some(\"node-b\")",
            "127.0.3.10:8080 Some(\"node-c\")",
            "127.0.9.10:8080 None"
        ]
    );
    assert_eq!(web.access[0].identities, ["shop/client"]);
    assert_eq!(web.access[0].sources, ["127.0.1.10", "127.0.1.11"]);
    let problems = t
        .problems
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [
        "maille/proxy-b2: node node-b already has node proxy maille/proxy-b",
        "maille/proxy-d: field metadata.annotations[maille.io/tunnel-port]: invalid value \"70000\"",
        "shop/bad-node: field spec.nodeName: invalid value \"Node_A; rm -rf\"",
        "shop/bad-ip: field status.podIP: invalid value \"127.0.1.300\"",
        "field endpoints[3].nodeName: invalid value \"-bad-\"",
        "spec.sources[1]: serviceaccount \"Bad_Name\" is not a DNS subdomain",
    ] {
        assert!(problems.contains(needle), "{needle:?} not in\n{problems}");
    }
    // The proxy accepts it.
    config_model::Table::try_from(&table.spec()).unwrap();
}

/// Without mutual TLS the same objects give the table they gave before it existed: no
/// nodes, workloads, endpoint nodes or identities.
#[test]
fn mesh_objects_change_nothing_when_mtls_is_disabled() {
    let settings = mesh_settings(config_model::MtlsMode::Disabled);
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&load("mesh"), &settings, &mut alloc);
    let json = serde_json::to_string(&t.table).unwrap();
    for absent in ["mtls", "nodes", "workloads", "identities", "\"node\""] {
        assert!(!json.contains(absent), "{absent} in {json}");
    }
    let web = find(&t, "shop", "web", 80).unwrap();
    // The endpoint with a bad node name is kept: the node is not read.
    assert_eq!(web.endpoints.len(), 4);
    assert_eq!(web.access[0].sources, ["127.0.1.10", "127.0.1.11"]);
}

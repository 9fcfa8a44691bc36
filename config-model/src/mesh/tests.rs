use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::delta::apply_to_spec;
use crate::testing::{http, table};
use crate::wire::{AccessRuleSpec, EndpointSpec, TableSpec};
use crate::DeltaError;

fn node(name: &str, tunnel: &str) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        tunnel: tunnel.into(),
    }
}

fn workload(ip: &str, node: &str, ns: &str, sa: &str) -> WorkloadSpec {
    WorkloadSpec {
        ip: ip.into(),
        node: node.into(),
        namespace: ns.into(),
        service_account: sa.into(),
    }
}

fn mesh_table() -> TableSpec {
    let mut web = http("shop", "web", 5000, &[]);
    web.endpoints = vec![
        EndpointSpec::new("10.0.1.5:80").on_node("node-a"),
        EndpointSpec::new("10.0.2.5:80").on_node("node-b"),
        EndpointSpec::new("10.0.3.5:80"),
    ];
    web.access = vec![AccessRuleSpec {
        name: "shop/web".into(),
        sources: vec!["10.0.1.9".into()],
        identities: vec!["shop/client".into()],
        http: None,
    }];
    let mut t = table(3, vec![web]);
    t.mtls = MtlsMode::Strict;
    t.nodes = vec![
        node("node-a", "192.168.0.1:15008"),
        node("node-b", "[fd00::2]:15008"),
    ];
    t.workloads = vec![
        workload("10.0.1.9", "node-a", "shop", "client"),
        workload("10.0.2.5", "node-b", "shop", "web"),
    ];
    t
}

/// The object and field of a mesh error, and its message.
fn mesh_field(e: Error) -> (String, String, String) {
    let msg = e.to_string();
    match e {
        Error::InvalidMeshField { object, field, .. } => (object, field, msg),
        other => panic!("expected a mesh field error, got {other:?}"),
    }
}

/// A way to break a table, and the object, field and words its error must name.
type Case = (fn(&mut TableSpec), &'static str, &'static str, &'static str);

fn service_field(e: Error) -> (String, String) {
    let msg = e.to_string();
    match e {
        Error::InvalidField { field, .. } => (field, msg),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn a_table_without_mesh_fields_reads_as_before() {
    let json = br#"{"schemaVersion":1,"version":7,"services":[{"namespace":"a","name":"b",
        "port":80,"meshPort":5000,"endpoints":[{"address":"10.0.0.1:80"}],
        "access":[{"name":"a/t","sources":["10.0.0.2"]}]}],"someFutureField":true}"#;
    let t = crate::Table::from_json(json).unwrap();
    assert_eq!(t.mtls(), MtlsMode::Disabled);
    assert!(t.nodes().is_empty());
    assert!(t.workloads().is_empty());
    let svc = &t.services()[0];
    assert_eq!(svc.endpoints[0].node, None);
    assert!(svc.access[0].identities.is_empty());
    // And a table without them writes none of them.
    let spec: TableSpec = serde_json::from_slice(json).unwrap();
    let out = serde_json::to_string(&spec).unwrap();
    for absent in ["mtls", "nodes", "workloads", "identities", "\"node\""] {
        assert!(!out.contains(absent), "{absent} in {out}");
    }
}

#[test]
fn mesh_fields_round_trip_in_camel_case() {
    let t = mesh_table();
    let json = serde_json::to_string(&t).unwrap();
    for s in [
        r#""mtls":"strict""#,
        r#""serviceAccount":"client""#,
        r#""tunnel":"192.168.0.1:15008""#,
        r#""node":"node-a""#,
        r#""identities":["shop/client"]"#,
    ] {
        assert!(json.contains(s), "{s} not in {json}");
    }
    let back: TableSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, t);
}

#[test]
fn the_modes_parse_and_print_lowercase() {
    for m in [MtlsMode::Disabled, MtlsMode::Permissive, MtlsMode::Strict] {
        assert_eq!(m.as_str().parse::<MtlsMode>(), Ok(m));
        assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
    }
    let e = "Strict".parse::<MtlsMode>().unwrap_err();
    assert!(e.contains("\"Strict\"") && e.contains("permissive"), "{e}");
    let e = serde_json::from_str::<TableSpec>(r#"{"schemaVersion":1,"mtls":"loose"}"#);
    assert!(e.is_err());
}

#[test]
fn a_table_answers_nodes_workloads_and_endpoint_nodes() {
    let t = crate::Table::try_from(mesh_table()).unwrap();
    assert_eq!(t.mtls(), MtlsMode::Strict);
    assert_eq!(
        t.node("node-a").unwrap().tunnel,
        "192.168.0.1:15008".parse().unwrap()
    );
    assert_eq!(
        t.node("node-b").unwrap().tunnel,
        "[fd00::2]:15008".parse().unwrap()
    );
    assert!(t.node("node-c").is_none());
    assert_eq!(t.nodes().len(), 2);

    let client = t.workload("10.0.1.9".parse().unwrap()).unwrap();
    assert_eq!(&*client.node, "node-a");
    assert_eq!(client.identity.to_string(), "shop/client");
    // A client seen through an IPv6 socket as an IPv4-mapped address is the same workload.
    let mapped: IpAddr = "::ffff:10.0.1.9".parse().unwrap();
    assert_eq!(t.workload(mapped), Some(client));
    assert!(t.workload("10.0.1.10".parse().unwrap()).is_none());

    let web = &t.services()[0];
    let nodes: Vec<Option<&str>> = web.endpoints.iter().map(|e| e.node.as_deref()).collect();
    assert_eq!(nodes, [Some("node-a"), Some("node-b"), None]);
    let rule = &web.access[0];
    assert!(rule.admits_identity(&"shop/client".parse().unwrap()));
    assert!(!rule.admits_identity(&"shop/web".parse().unwrap()));
}

#[test]
fn identities_parse_print_and_name_their_spiffe_id() {
    let id: WorkloadIdentity = "shop/client.v2".parse().unwrap();
    assert_eq!(id.namespace, "shop");
    assert_eq!(id.service_account, "client.v2");
    assert_eq!(id.to_string(), "shop/client.v2");
    assert_eq!(
        id.spiffe("cluster.local"),
        "spiffe://cluster.local/ns/shop/sa/client.v2"
    );
    for bad in [
        "",
        "shop",
        "/client",
        "shop/",
        "Shop/client",
        "shop/client/x",
        "shop/cli ent",
    ] {
        let e = bad.parse::<WorkloadIdentity>().unwrap_err();
        assert!(!e.is_empty(), "{bad:?}");
    }
    let long = format!("shop/{}", "a".repeat(100_000));
    let e = long.parse::<WorkloadIdentity>().unwrap_err();
    assert!(e.len() < 400, "error not cut: {} bytes", e.len());
}

#[test]
fn bad_nodes_are_refused_naming_object_field_and_value() {
    let cases: Vec<Case> = vec![
        (
            |t| t.nodes[0].name = "Node_A".into(),
            "node Node_A",
            "nodes[0].name",
            "\"Node_A\"",
        ),
        (
            |t| t.nodes[1].tunnel = "fd00::2:15008".into(),
            "node node-b",
            "nodes[1].tunnel",
            "ip:port",
        ),
        (
            |t| t.nodes[0].tunnel = "192.168.0.1:0".into(),
            "node node-a",
            "nodes[0].tunnel",
            "port 0",
        ),
        (
            |t| t.nodes[0].tunnel = "0.0.0.0:15008".into(),
            "node node-a",
            "nodes[0].tunnel",
            "one host",
        ),
        (
            |t| t.nodes[1].name = "node-a".into(),
            "node node-a",
            "nodes[1].name",
            "nodes[0] has the same name",
        ),
    ];
    for (break_it, object, field, says) in cases {
        let mut t = mesh_table();
        break_it(&mut t);
        let (o, f, msg) = mesh_field(crate::Table::try_from(&t).unwrap_err());
        assert_eq!((o.as_str(), f.as_str()), (object, field), "{msg}");
        assert!(msg.contains(says), "{msg}");
    }
}

#[test]
fn bad_workloads_are_refused_naming_object_field_and_value() {
    let cases: Vec<Case> = vec![
        (
            |t| t.workloads[0].ip = "10.0.1.300".into(),
            "workload 10.0.1.300",
            "workloads[0].ip",
            "expected an IP address",
        ),
        (
            |t| t.workloads[0].ip = "0.0.0.0".into(),
            "workload 0.0.0.0",
            "workloads[0].ip",
            "one pod",
        ),
        (
            |t| t.workloads[1].node = "-node".into(),
            "workload 10.0.2.5",
            "workloads[1].node",
            "\"-node\"",
        ),
        (
            |t| t.workloads[1].namespace = "a.b".into(),
            "workload 10.0.2.5",
            "workloads[1].namespace",
            "DNS label",
        ),
        (
            |t| t.workloads[1].service_account = String::new(),
            "workload 10.0.2.5",
            "workloads[1].serviceAccount",
            "ServiceAccount",
        ),
        (
            |t| t.workloads[1].ip = "::ffff:10.0.1.9".into(),
            "workload 10.0.1.9",
            "workloads[1].ip",
            "workloads[0] has the same IP",
        ),
    ];
    for (break_it, object, field, says) in cases {
        let mut t = mesh_table();
        break_it(&mut t);
        let (o, f, msg) = mesh_field(crate::Table::try_from(&t).unwrap_err());
        assert_eq!((o.as_str(), f.as_str()), (object, field), "{msg}");
        assert!(msg.contains(says), "{msg}");
    }
}

#[test]
fn bad_endpoint_nodes_and_identities_are_refused_naming_the_service() {
    let mut t = mesh_table();
    t.services[0].endpoints[1].node = Some("x".repeat(300));
    let (field, msg) = service_field(crate::Table::try_from(&t).unwrap_err());
    assert_eq!(field, "endpoints[1].node");
    assert!(
        msg.contains("shop/web:80") && msg.contains("300 bytes"),
        "{msg}"
    );

    let mut t = mesh_table();
    t.services[0].access[0]
        .identities
        .push("client-without-namespace".into());
    let (field, msg) = service_field(crate::Table::try_from(&t).unwrap_err());
    assert_eq!(field, "access[0].identities[1]");
    assert!(msg.contains("client-without-namespace"), "{msg}");
}

#[test]
fn hostile_sizes_are_bounded_and_values_cut() {
    let mut t = mesh_table();
    t.workloads = vec![WorkloadSpec::default(); MAX_WORKLOADS + 1];
    let (o, f, msg) = mesh_field(crate::Table::try_from(&t).unwrap_err());
    assert_eq!((o.as_str(), f.as_str()), ("table", "workloads"), "{msg}");

    let mut t = mesh_table();
    t.nodes = vec![NodeSpec::default(); MAX_NODES + 1];
    let (o, f, _) = mesh_field(crate::Table::try_from(&t).unwrap_err());
    assert_eq!((o.as_str(), f.as_str()), ("table", "nodes"));

    let mut t = mesh_table();
    t.workloads[0].ip = "9".repeat(1 << 20);
    let msg = crate::Table::try_from(&t).unwrap_err().to_string();
    assert!(msg.len() < 600, "error not cut: {} bytes", msg.len());
}

#[test]
fn a_workload_change_travels_alone_and_the_rest_is_shared() {
    let mut old = mesh_table();
    for i in 0..1000 {
        old.workloads.push(workload(
            &format!("10.1.{}.{}", i / 250, i % 250),
            "node-a",
            "shop",
            "many",
        ));
    }
    old.sort_services();
    let held = crate::Table::try_from(&old).unwrap();

    let mut new = old.clone();
    new.version = 4;
    new.workloads[5].service_account = "other".into();
    let moved = new.workloads[5].ip.clone();
    let gone = new.workloads.remove(9).ip;
    new.workloads
        .push(workload("10.9.9.9", "node-b", "shop", "fresh"));
    new.sort_services();

    let d = new.delta_since(&old);
    assert!(d.changed.is_empty() && d.removed.is_empty() && d.nodes.is_none());
    let changed: Vec<&str> = d.workloads_changed.iter().map(|w| w.ip.as_str()).collect();
    assert_eq!(changed.len(), 2);
    assert!(changed.contains(&moved.as_str()) && changed.contains(&"10.9.9.9"));
    assert_eq!(d.workloads_removed, std::slice::from_ref(&gone));
    assert_eq!(d.mtls, MtlsMode::Strict);
    let bytes = serde_json::to_vec(&d).unwrap().len();
    assert!(bytes < 600, "a three-workload delta is {bytes} bytes");

    let next = held.apply_delta(&d).unwrap();
    assert!(next.shares_nodes(&held));
    assert!(!next.shares_workloads(&held));
    // Three workloads changed: at most three shards of the index were copied.
    let shared = next.workloads().shared_shards(held.workloads());
    assert!(shared >= WORKLOAD_SHARDS - 3, "{shared} shards shared");
    assert_eq!(
        next.workload(moved.parse().unwrap())
            .unwrap()
            .identity
            .service_account,
        "other"
    );
    assert!(next.workload(gone.parse().unwrap()).is_none());
    assert_eq!(next.workloads().len(), held.workloads().len());

    // A delta naming no workload shares them as they are.
    let mut newer = new.clone();
    newer.version = 5;
    newer.services[0].endpoints.pop();
    let d2 = newer.delta_since(&new);
    assert!(d2.workloads_changed.is_empty() && d2.workloads_removed.is_empty());
    let last = next.apply_delta(&d2).unwrap();
    assert!(last.shares_workloads(&next) && last.shares_nodes(&next));
}

#[test]
fn a_delta_carries_mode_and_node_changes() {
    let mut old = mesh_table();
    old.sort_services();
    let held = crate::Table::try_from(&old).unwrap();
    let mut new = old.clone();
    new.version = 4;
    new.mtls = MtlsMode::Permissive;
    new.nodes[1].tunnel = "[fd00::3]:15008".into();
    let c = old.changes(&new);
    assert!(c.nodes && c.services.is_empty() && c.workloads.is_empty());
    assert!(!c.is_empty());
    let next = held.apply_delta(&new.delta_since(&old)).unwrap();
    assert_eq!(next.mtls(), MtlsMode::Permissive);
    assert!(!next.shares_nodes(&held));
    assert_eq!(
        next.node("node-b").unwrap().tunnel,
        "[fd00::3]:15008".parse().unwrap()
    );

    // A mode change alone changes nothing else: the controller must still publish it.
    let mut only_mode = old.clone();
    only_mode.mtls = MtlsMode::Disabled;
    assert!(old.changes(&only_mode).is_empty());
}

#[test]
fn a_delta_that_disagrees_about_workloads_is_refused() {
    let mut old = mesh_table();
    old.sort_services();
    let held = crate::Table::try_from(&old).unwrap();
    let base = |f: fn(&mut crate::TableDelta)| {
        let mut d = old.delta_since(&old);
        d.version = 4;
        f(&mut d);
        held.apply_delta(&d)
    };
    assert_eq!(
        base(|d| d.workloads_removed = vec!["10.7.7.7".into()]).unwrap_err(),
        DeltaError::UnknownWorkloadRemoval("10.7.7.7".into())
    );
    assert_eq!(
        base(|d| {
            d.workloads_removed = vec!["10.0.1.9".into()];
            d.workloads_changed = vec![workload("10.0.1.9", "node-a", "shop", "x")];
        })
        .unwrap_err(),
        DeltaError::DuplicateWorkload("10.0.1.9".into())
    );
    let e = base(|d| d.workloads_changed = vec![workload("10.0.0.1", "n", "shop", "A")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("workloadsChanged[0].serviceAccount") && e.contains("\"A\""),
        "{e}"
    );
    let e = base(|d| d.workloads_removed = vec!["nope".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("workloadsRemoved[0]") && e.contains("nope"),
        "{e}"
    );
}

/// What the mesh part of a table holds, comparable between two tables.
fn mesh_view(t: &crate::Table) -> String {
    let mut workloads: Vec<String> = t
        .workloads()
        .iter()
        .map(|w| format!("{} {} {}", w.ip, w.node, w.identity))
        .collect();
    workloads.sort();
    let mut nodes: Vec<String> = t
        .nodes()
        .iter()
        .map(|n| format!("{} {}", n.name, n.tunnel))
        .collect();
    nodes.sort();
    format!("{} {nodes:?} {workloads:?}", t.mtls())
}

fn workloads_strategy() -> impl Strategy<Value = Vec<WorkloadSpec>> {
    prop::collection::btree_map(0u8..40, (0u8..3, 0u8..3), 0..25).prop_map(|m| {
        m.into_iter()
            .map(|(ip, (node, sa))| {
                workload(
                    &format!("10.0.0.{ip}"),
                    &format!("node-{node}"),
                    "ns",
                    &format!("sa-{sa}"),
                )
            })
            .collect()
    })
}

fn nodes_strategy() -> impl Strategy<Value = Vec<NodeSpec>> {
    prop::collection::btree_map(0u8..4, 1u16..4, 0..4).prop_map(|m| {
        m.into_iter()
            .map(|(n, port)| node(&format!("node-{n}"), &format!("10.9.0.{n}:{port}")))
            .collect()
    })
}

fn mode_strategy() -> impl Strategy<Value = MtlsMode> {
    prop_oneof![
        Just(MtlsMode::Disabled),
        Just(MtlsMode::Permissive),
        Just(MtlsMode::Strict)
    ]
}

proptest! {
    /// Applying the delta between two tables to the older one gives the newer one, in the
    /// proxy's validated form and in wire form, whatever the workloads, nodes and modes.
    #[test]
    fn a_delta_of_workloads_gives_the_full_table(
        (w1, n1, m1) in (workloads_strategy(), nodes_strategy(), mode_strategy()),
        (w2, n2, m2) in (workloads_strategy(), nodes_strategy(), mode_strategy()),
    ) {
        let mut old = table(1, vec![]);
        (old.workloads, old.nodes, old.mtls) = (w1, n1, m1);
        old.sort_services();
        let mut new = table(2, vec![]);
        (new.workloads, new.nodes, new.mtls) = (w2, n2, m2);
        new.sort_services();

        let delta = new.delta_since(&old);
        let held = crate::Table::try_from(&old).unwrap();
        let applied = held.apply_delta(&delta).unwrap();
        let full = crate::Table::try_from(&new).unwrap();
        prop_assert_eq!(mesh_view(&applied), mesh_view(&full));
        prop_assert_eq!(applied.shares_workloads(&held), old.workloads == new.workloads);

        let mut spec = old.clone();
        apply_to_spec(&mut spec, &delta).unwrap();
        prop_assert_eq!(spec, new);
    }
}

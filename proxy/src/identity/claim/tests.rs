use std::sync::Arc;

use config_model::testing::{http, service, table};
use config_model::{
    AccessRuleSpec, EndpointSpec, MtlsMode, NodeSpec, Table, TableSpec, TrafficType, WorkloadSpec,
};

use super::*;
use crate::store::TableStore;

fn workload(ip: &str, node: &str, sa: &str) -> WorkloadSpec {
    WorkloadSpec {
        ip: ip.into(),
        node: node.into(),
        namespace: "shop".into(),
        service_account: sa.into(),
    }
}

/// `web` has a pod on node-b (this proxy's node) and one on node-a; `db` (TCP) one on node-b.
/// `client` runs on node-a, `intruder` on node-c.
fn spec(acl: bool) -> TableSpec {
    let mut web = http("shop", "web", 5000, &[]);
    web.endpoints = vec![
        EndpointSpec::new("10.0.2.5:80").on_node("node-b"),
        EndpointSpec::new("10.0.1.5:80").on_node("node-a"),
        EndpointSpec::new("10.0.9.5:80"),
    ];
    web.access = vec![AccessRuleSpec {
        name: "shop/web".into(),
        sources: vec!["10.0.1.9".into()],
        identities: vec!["shop/client".into()],
        http: None,
    }];
    let mut db = service("shop", "db", 5432, 10000, TrafficType::Tcp, &[]);
    db.endpoints = vec![EndpointSpec::new("10.0.2.6:5432").on_node("node-b")];
    let mut t = table(1, vec![web, db]);
    t.acl = acl;
    t.mtls = MtlsMode::Strict;
    t.nodes = ["node-a", "node-b", "node-c"]
        .iter()
        .enumerate()
        .map(|(i, n)| NodeSpec {
            name: n.to_string(),
            tunnel: format!("127.0.0.{}:15008", i + 1),
        })
        .collect();
    t.workloads = vec![
        workload("10.0.1.9", "node-a", "client"),
        workload("10.0.3.9", "node-c", "intruder"),
    ];
    t
}

fn on_node_b(spec: &TableSpec) -> Arc<CompiledTable> {
    let store = TableStore::on_node(Some("node-b"), None);
    store.store(Table::try_from(spec).unwrap());
    store.current()
}

fn claim(service: &str, target: &str, source: Option<&str>, identity: Option<&str>) -> Claim {
    let (name, port) = service.split_once(':').unwrap();
    Claim {
        source_ip: source.map(|s| s.parse().unwrap()),
        identity: identity.map(|s| s.parse().unwrap()),
        service: ServiceKey {
            namespace: "shop".into(),
            name: name.into(),
            port: port.parse().unwrap(),
        },
        target: target.parse().unwrap(),
    }
}

fn reason(r: Result<Admitted, Denial>) -> &'static str {
    match r {
        Ok(_) => "admitted",
        Err(d) => {
            // Every denial says what was wrong.
            assert!(!d.to_string().is_empty());
            d.reason()
        }
    }
}

#[test]
fn the_target_must_be_an_endpoint_of_the_service_on_this_node() {
    let t = on_node_b(&spec(false));
    let client = (Some("10.0.1.9"), Some("shop/client"));
    let cases = [
        ("web:80", "10.0.2.5:80", "admitted"),
        ("db:5432", "10.0.2.6:5432", "admitted"),
        ("nope:80", "10.0.2.5:80", "no_service"),
        // db's pod is not web's endpoint, even on this node.
        ("web:80", "10.0.2.6:80", "not_an_endpoint"),
        ("web:80", "10.0.2.6:5432", "not_an_endpoint"),
        // web's pod on another node: this proxy is not the way to it.
        ("web:80", "10.0.1.5:80", "not_on_this_node"),
        // An endpoint whose node nobody knows.
        ("web:80", "10.0.9.5:80", "not_on_this_node"),
    ];
    for (svc, target, want) in cases {
        let got = reason(admit(&t, "node-a", &claim(svc, target, client.0, client.1)));
        assert_eq!(got, want, "{svc} → {target}");
    }
}

#[test]
fn a_node_cannot_speak_for_pods_of_another_node() {
    let t = on_node_b(&spec(false));
    let web = "10.0.2.5:80";
    // node-a states its own pod's identity: believed.
    let ok = claim("web:80", web, Some("10.0.1.9"), Some("shop/client"));
    assert_eq!(reason(admit(&t, "node-a", &ok)), "admitted");
    // node-c states node-a's pod (IP and identity): spoofed.
    let d = admit(&t, "node-c", &ok).unwrap_err();
    assert_eq!(d.reason(), "spoofed_identity");
    assert!(d.to_string().contains("node-c") && d.to_string().contains("10.0.1.9"));
    // node-c states an allowed identity for its own pod, which has another: spoofed.
    let lie = claim("web:80", web, Some("10.0.3.9"), Some("shop/client"));
    assert_eq!(reason(admit(&t, "node-c", &lie)), "spoofed_identity");
    // An identity for an address nobody has, or with no address at all.
    let ghost = claim("web:80", web, Some("10.0.3.77"), Some("shop/client"));
    assert_eq!(reason(admit(&t, "node-c", &ghost)), "spoofed_identity");
    let bare = claim("web:80", web, None, Some("shop/client"));
    assert_eq!(reason(admit(&t, "node-a", &bare)), "spoofed_identity");
    // Without ACL, a client not in the mesh (no identity) is carried.
    let outside = claim("web:80", web, Some("192.168.7.7"), None);
    assert_eq!(reason(admit(&t, "node-c", &outside)), "admitted");
}

#[test]
fn in_acl_mode_the_identity_must_be_allowed_by_a_rule() {
    let t = on_node_b(&spec(true));
    let web = "10.0.2.5:80";
    let allowed = admit(
        &t,
        "node-a",
        &claim("web:80", web, Some("10.0.1.9"), Some("shop/client")),
    )
    .unwrap();
    assert_eq!(allowed.rule, Some(0));
    assert_eq!(t[allowed.service].key.name, "web");
    // node-c's own pod, truthfully stated, but not allowed.
    let d = admit(
        &t,
        "node-c",
        &claim("web:80", web, Some("10.0.3.9"), Some("shop/intruder")),
    )
    .unwrap_err();
    assert_eq!(d.reason(), "access_denied");
    assert!(d.to_string().contains("shop/intruder"), "{d}");
    // Allowed IP, but no identity: the IP alone is not trusted across nodes.
    let anonymous = claim("web:80", web, Some("10.0.1.9"), None);
    assert_eq!(reason(admit(&t, "node-a", &anonymous)), "no_identity");
    // db has no rule at all.
    let db = claim(
        "db:5432",
        "10.0.2.6:5432",
        Some("10.0.1.9"),
        Some("shop/client"),
    );
    assert_eq!(reason(admit(&t, "node-a", &db)), "access_denied");
}

#[test]
fn a_proxy_without_a_node_name_admits_nothing() {
    let store = TableStore::on_node(None, None);
    store.store(Table::try_from(&spec(false)).unwrap());
    let t = store.current();
    let c = claim(
        "web:80",
        "10.0.2.5:80",
        Some("10.0.1.9"),
        Some("shop/client"),
    );
    assert_eq!(reason(admit(&t, "node-a", &c)), "not_on_this_node");
}

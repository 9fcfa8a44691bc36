use config_model::testing::{http, table};
use config_model::{EndpointSpec, NodeSpec, Table, TableSpec, WorkloadSpec};

use super::*;
use crate::store::TableStore;

fn spec(mode: MtlsMode) -> TableSpec {
    let mut web = http("shop", "web", 5000, &[]);
    web.endpoints = vec![
        EndpointSpec::new("10.0.1.5:80").on_node("node-a"),
        EndpointSpec::new("10.0.2.5:80").on_node("node-b"),
        EndpointSpec::new("10.0.3.5:80").on_node("node-c"),
        EndpointSpec::new("10.0.9.5:80"),
    ];
    let mut t = table(1, vec![web]);
    t.mtls = mode;
    t.nodes = vec![
        NodeSpec {
            name: "node-a".into(),
            tunnel: "127.0.0.1:15008".into(),
        },
        NodeSpec {
            name: "node-b".into(),
            tunnel: "127.0.0.2:15008".into(),
        },
    ];
    t.workloads = vec![
        WorkloadSpec {
            ip: "10.0.1.9".into(),
            node: "node-a".into(),
            namespace: "shop".into(),
            service_account: "client".into(),
        },
        WorkloadSpec {
            ip: "10.0.2.9".into(),
            node: "node-b".into(),
            namespace: "shop".into(),
            service_account: "other".into(),
        },
    ];
    t
}

fn compiled(node: Option<&str>, spec: &TableSpec) -> Arc<CompiledTable> {
    let store = TableStore::on_node(node, None);
    store.store(Table::try_from(spec).unwrap());
    store.current()
}

fn hops(t: &CompiledTable) -> Vec<Hop> {
    let id = t.http_route(5000, "web.shop.maille.mesh").unwrap();
    [
        "10.0.1.5:80",
        "10.0.2.5:80",
        "10.0.3.5:80",
        "10.0.9.5:80",
        "10.7.7.7:80",
    ]
    .iter()
    .map(|a| t.hop(id, a.parse().unwrap()))
    .collect()
}

fn tunnel(node: &str, addr: &str) -> Hop {
    Hop::Tunnel {
        node: node.into(),
        addr: addr.parse().unwrap(),
    }
}

#[test]
fn strict_tunnels_to_node_proxies_and_refuses_nodes_without_one() {
    let t = compiled(Some("node-a"), &spec(MtlsMode::Strict));
    assert_eq!(t.mtls(), MtlsMode::Strict);
    assert_eq!(t.node_name(), Some("node-a"));
    assert_eq!(
        hops(&t),
        [
            Hop::Direct,
            tunnel("node-b", "127.0.0.2:15008"),
            Hop::Refused {
                node: "node-c".into()
            },
            // No node known: reached directly.
            Hop::Direct,
            // Not an endpoint at all: nothing known of it.
            Hop::Direct,
        ]
    );
}

#[test]
fn permissive_sends_in_cleartext_where_no_proxy_runs() {
    let t = compiled(Some("node-b"), &spec(MtlsMode::Permissive));
    let h = hops(&t);
    assert_eq!(h[0], tunnel("node-a", "127.0.0.1:15008"));
    assert_eq!(h[1], Hop::Direct);
    assert_eq!(
        h[2],
        Hop::Cleartext {
            node: "node-c".into()
        }
    );
    assert_eq!(h[2].as_str(), "cleartext");
}

#[test]
fn disabled_reaches_every_endpoint_directly() {
    let t = compiled(Some("node-a"), &spec(MtlsMode::Disabled));
    assert!(hops(&t).iter().all(|h| *h == Hop::Direct));
}

#[test]
fn a_proxy_without_a_node_name_never_sends_a_known_node_cleartext_in_strict_mode() {
    let t = compiled(None, &spec(MtlsMode::Strict));
    let h = hops(&t);
    assert_eq!(h[0], tunnel("node-a", "127.0.0.1:15008"));
    assert_eq!(h[1], tunnel("node-b", "127.0.0.2:15008"));
    assert_eq!(h[2].as_str(), "refused");
    assert_eq!(t.local_identity("10.0.1.9".parse().unwrap()), None);
}

#[test]
fn local_identity_is_only_for_pods_of_this_node() {
    let t = compiled(Some("node-a"), &spec(MtlsMode::Strict));
    let id = t.local_identity("10.0.1.9".parse().unwrap()).unwrap();
    assert_eq!(id.to_string(), "shop/client");
    assert_eq!(
        id.spiffe("cluster.local"),
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    // Seen on an IPv6 socket.
    assert!(t
        .local_identity("::ffff:10.0.1.9".parse().unwrap())
        .is_some());
    // A pod of another node: this proxy does not speak for it.
    assert_eq!(t.local_identity("10.0.2.9".parse().unwrap()), None);
    assert_eq!(t.local_identity("10.0.7.7".parse().unwrap()), None);
}

#[test]
fn a_mode_switch_and_a_node_change_take_effect_with_the_next_table() {
    let store = TableStore::on_node(Some("node-a"), None);
    let mut s = spec(MtlsMode::Strict);
    s.sort_services();
    store.store(Table::try_from(&s).unwrap());
    let before = store.current();
    assert_eq!(hops(&before)[2].as_str(), "refused");

    // The controller switches to permissive and node-c gets a proxy: a delta, no restart.
    let mut next = s.clone();
    next.version = 2;
    next.mtls = MtlsMode::Permissive;
    next.nodes.push(NodeSpec {
        name: "node-c".into(),
        tunnel: "127.0.0.3:15008".into(),
    });
    next.sort_services();
    let applied = before.table().apply_delta(&next.delta_since(&s)).unwrap();
    store.store(applied);
    let after = store.current();
    assert_eq!(hops(&after)[2], tunnel("node-c", "127.0.0.3:15008"));
    // The service did not change: its runtime (and endpoint nodes) is shared.
    let id = after.http_route(5000, "web.shop.maille.mesh").unwrap();
    assert!(std::ptr::eq(after.runtime(id), before.runtime(id)));
}

//! Golden and incremental tests of the Gateway API stage: route entries in precedence order
//! on the service ports they attach to, the statuses of every parentRef, what is refused, and
//! that the stage reruns only when a route or a Service it names changes.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::manifests::parse_documents;

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
        "routes": t.table.services.iter().filter(|s| !s.routes.is_empty()).map(|s| json!({
            "service": s.key().to_string(),
            "routes": s.routes,
        })).collect::<Vec<_>>(),
        "statuses": t.route_statuses.iter().map(|o| json!({
            "route": o.key.to_string(),
            "generation": o.generation,
            "parents": o.parents.iter().map(|p| json!({
                "parentRef": p.parent_ref,
                "Accepted": format!("{} {}: {}", if p.accepted.ok { "True" } else { "False" }, p.accepted.reason, p.accepted.message),
                "ResolvedRefs": format!("{} {}: {}", if p.resolved.ok { "True" } else { "False" }, p.resolved.reason, p.resolved.message),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "problems": t.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
    })
}

fn golden(case: &str) -> Translation {
    let snap = load(case);
    let settings = Settings::default();
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&snap, &settings, &mut alloc);
    // Whatever routes give, the table is one a proxy accepts.
    config_model::Table::try_from(&t.table.spec()).expect("the table validates");
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

fn entries(t: &Translation, ns: &str, name: &str, port: u16) -> Vec<String> {
    let s = t
        .table
        .services
        .iter()
        .find(|s| s.namespace == ns && s.name == name && s.port == port)
        .unwrap_or_else(|| panic!("{ns}/{name}:{port} not in the table"));
    s.routes
        .iter()
        .map(|r| {
            let path = r
                .matches
                .path
                .as_ref()
                .map(|p| format!("{:?} {}", p.kind, p.value))
                .unwrap_or_default();
            format!("{} #{} {path}", r.route, r.rule)
        })
        .collect()
}

#[test]
fn routes_attach_in_precedence_order_and_report_every_parent() {
    let t = golden("gateway_routes");
    // Exact first, then the regex, then prefixes longest first; /api of both routes: the
    // older route's rule first; among matches without a path (a `/` prefix), the one with a
    // method before the one with a header.
    assert_eq!(
        entries(&t, "shop", "web", 80),
        [
            "shop/aa-newer #0 Exact /api/login",
            "shop/aa-newer #1 RegularExpression /items/[0-9]+",
            "shop/aa-newer #0 PathPrefix /api/v2",
            "shop/zz-older #0 PathPrefix /api",
            "shop/aa-newer #0 PathPrefix /api",
            "shop/aa-newer #2 PathPrefix /old",
            "shop/aa-newer #0 PathPrefix /",
            "shop/aa-newer #0 PathPrefix /",
        ]
    );
    let web = t
        .table
        .services
        .iter()
        .find(|s| s.name == "web" && s.port == 80)
        .unwrap();
    let login = &web.routes[0];
    assert_eq!(login.backends.len(), 1, "the missing backend is left out");
    assert_eq!(login.unresolved_weight, 3, "its weight is answered 500");
    let older = &web.routes[3];
    assert_eq!(
        older
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect::<Vec<_>>(),
        [("web", 90), ("web-v2", 10)]
    );
    assert_eq!(older.timeouts.unwrap().request_ms, Some(2000));
    assert_eq!(older.retry.as_ref().unwrap().attempts, 2);
    // Among `/` prefixes, a method ranks before headers and query parameters.
    assert_eq!(web.routes[6].matches.method.as_deref(), Some("DELETE"));
    assert_eq!(web.routes[7].matches.headers.len(), 1);
    // Nothing of the refused routes reached any port.
    for s in &t.table.services {
        for r in &s.routes {
            assert!(
                !["shop/mirror", "front/elsewhere", "shop/to-db"].contains(&r.route.as_str()),
                "{} on {}",
                r.route,
                s.key()
            );
        }
    }
    // gRPC: exact service+method, then the regexes, then the service prefix, then the
    // catch-all rule.
    assert_eq!(
        entries(&t, "shop", "cart", 50051),
        [
            "shop/cart #0 Exact /shop.v1.Cart/AddItem",
            "shop/cart #0 RegularExpression /(?:shop\\.v[0-9]+\\.Cart)/(?:Get.*)",
            "shop/cart #0 RegularExpression /[^/]+/Ping",
            "shop/cart #0 PathPrefix /shop.v1.Cart/",
            "shop/cart #1 PathPrefix /",
        ]
    );
}

#[test]
fn the_stage_reruns_only_for_route_changes_and_the_services_routes_name() {
    let mut snap = load("gateway_routes");
    let settings = Settings::default();
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let mut tr = Translator::new(settings.clone());
    let first = tr.translate_if_changed(&snap, &mut alloc).unwrap();
    assert!(tr.work().gateway);

    // A status write: a new object, the same spec. Nothing to redo.
    let i = snap
        .gateway
        .http_routes
        .iter()
        .position(|r| r.metadata.name.as_deref() == Some("zz-older"))
        .unwrap();
    let mut with_status = (*snap.gateway.http_routes[i]).clone();
    with_status.status = Some(crate::gateway::crd::RouteStatus::default());
    with_status.metadata.resource_version = Some("99".into());
    snap.gateway.http_routes[i] = Arc::new(with_status);
    assert!(tr.translate_if_changed(&snap, &mut alloc).is_none());
    assert!(!tr.work().gateway);

    // A Service no route names.
    snap.services.push(Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "unrelated"},
            "spec": {"ports": [{"port": 80}]},
        }))
        .unwrap(),
    ));
    tr.translate(&snap, &mut alloc);
    assert!(!tr.work().gateway);

    // The Service a backend names appears: the stage reruns and the backend resolves.
    snap.services.push(Arc::new(
        serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": "gone"},
            "spec": {"ports": [{"port": 80}]},
        }))
        .unwrap(),
    ));
    let t = tr.translate(&snap, &mut alloc);
    assert!(tr.work().gateway);
    let web = t
        .table
        .services
        .iter()
        .find(|s| s.name == "web" && s.port == 80)
        .unwrap();
    assert_eq!(web.routes[0].unresolved_weight, 0);
    assert_eq!(web.routes[0].backends.len(), 2);
    assert_ne!(first.table.services, t.table.services);

    // The same from scratch.
    let mut alloc2 = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let scratch = translate(&snap, &settings, &mut alloc2);
    assert_eq!(scratch.table, t.table);
    assert_eq!(scratch.route_statuses, t.route_statuses);

    // The last route gone: the entries go with it.
    snap.gateway = Default::default();
    let t = tr.translate(&snap, &mut alloc);
    assert!(tr.work().gateway);
    assert!(t.table.services.iter().all(|s| s.routes.is_empty()));
    assert!(t.route_statuses.is_empty());
}

#[test]
fn routes_win_over_a_traffic_split_on_the_same_port() {
    let mut snap = load("gateway_routes");
    let split = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\n\
                 metadata: {name: canary, namespace: shop}\n\
                 spec: {service: web, backends: [{service: web-v2, weight: 1}]}\n";
    let mut extra = Snapshot::default();
    parse_documents(split, "split.yaml", &mut extra).unwrap();
    snap.extend_from(&extra);
    let settings = Settings::default();
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&snap, &settings, &mut alloc);
    config_model::Table::try_from(&t.table.spec()).expect("the table validates");
    let web80 = t
        .table
        .services
        .iter()
        .find(|s| s.name == "web" && s.port == 80)
        .unwrap();
    assert!(web80.splits.is_empty(), "the routes win");
    assert!(!web80.routes.is_empty());
    let overridden: Vec<String> = t
        .problems
        .iter()
        .filter(|p| p.object.kind == "TrafficSplit")
        .map(|p| p.message.clone())
        .collect();
    assert!(
        overridden
            .iter()
            .any(|m| m.contains("overridden on service port shop/web:80")),
        "{overridden:?}"
    );
    // Without routes on the port, the split applies as before.
    snap.gateway = Default::default();
    let t = translate(&snap, &settings, &mut alloc);
    let web80 = t
        .table
        .services
        .iter()
        .find(|s| s.name == "web" && s.port == 80)
        .unwrap();
    assert_eq!(web80.splits.len(), 1);
}

#[test]
fn a_parent_port_left_out_of_the_table_is_not_accepted() {
    // Two Services on one cluster IP: the second in table order is left out.
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: twin-a, namespace: shop}\n\
                spec: {clusterIP: 10.0.0.99, ports: [{port: 80}]}\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: twin-b, namespace: shop}\n\
                spec: {clusterIP: 10.0.0.99, ports: [{port: 80}]}\n---\n\
                apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                metadata: {name: to-b, namespace: shop}\n\
                spec: {parentRefs: [{group: '', kind: Service, name: twin-b}], \
                rules: [{backendRefs: [{name: twin-a, port: 80}]}]}\n---\n\
                apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
                metadata: {name: to-a, namespace: shop}\n\
                spec: {parentRefs: [{group: '', kind: Service, name: twin-a}], \
                rules: [{backendRefs: [{name: twin-b, port: 80}]}]}\n";
    let mut snap = Snapshot::default();
    parse_documents(text, "twins.yaml", &mut snap).unwrap();
    let settings = Settings::default();
    let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = translate(&snap, &settings, &mut alloc);
    config_model::Table::try_from(&t.table.spec()).expect("the table validates");
    let outcome = |name: &str| {
        t.route_statuses
            .iter()
            .find(|o| o.key.name == name)
            .unwrap()
            .parents[0]
            .clone()
    };
    let b = outcome("to-b");
    assert!(!b.accepted.ok);
    assert_eq!(b.accepted.reason, "NoMatchingParent");
    assert!(
        b.accepted
            .message
            .contains("shop/twin-b:80 is left out of the table"),
        "{}",
        b.accepted.message
    );
    // The route on the kept twin stays, its backend (the left-out twin) answered 500.
    assert!(outcome("to-a").accepted.ok);
    let a = t
        .table
        .services
        .iter()
        .find(|s| s.name == "twin-a")
        .unwrap();
    assert_eq!(a.routes.len(), 1);
    assert!(a.routes[0].backends.is_empty());
    assert_eq!(a.routes[0].unresolved_weight, 1);
    assert!(t
        .problems
        .iter()
        .any(|p| p.object.name == "to-b" && p.message.contains("NoMatchingParent")));
}

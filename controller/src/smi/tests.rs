use std::path::PathBuf;

use config_model::testing::{http, service, table};
use config_model::{ServiceSpec, Table, TrafficType};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::json;

use super::*;

/// Pods and SMI objects from one YAML text.
fn objects(yaml: &str) -> (SmiObjects, Vec<Arc<Pod>>) {
    let mut pods = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        if v.get("kind").and_then(|k| k.as_str()) == Some("Pod") {
            pods.push(Arc::new(serde_json::from_value(v).unwrap()));
        }
    }
    (SmiObjects::from_yaml(yaml).unwrap(), pods)
}

fn pod(name: &str, sa: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  serviceAccountName: {sa}\n  containers: [{{name: c, image: x}}]\nstatus: {{podIP: {ip}, phase: Running}}\n"
    )
}

/// Runs the translation, checks the proxy would accept the table, and compares splits,
/// access rules and problems with `testdata/<case>.json` (`MAILLE_BLESS=1` rewrites it).
fn golden(case: &str, mut services: Vec<ServiceSpec>, yaml: &str) -> Table {
    let (objs, pods) = objects(yaml);
    let problems = apply(&mut services, &objs, &pods);
    let mut spec = table(1, services.clone());
    spec.acl = true;
    let t = Table::try_from(&spec).expect("the proxy must accept what SMI produced");
    let got = json!({
        "services": services.iter().filter(|s| !s.splits.is_empty() || !s.access.is_empty()).map(|s| json!({
            "service": s.display_name(),
            "splits": s.splits,
            "access": s.access,
        })).collect::<Vec<_>>(),
        "problems": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/smi/testdata")
        .join(format!("{case}.json"));
    let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
    if std::env::var_os("MAILLE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with MAILLE_BLESS=1 to create)",
            path.display()
        )
    });
    assert_eq!(text, want, "golden file {} differs", path.display());
    t
}

fn web_services() -> Vec<ServiceSpec> {
    vec![
        http("shop", "web", 5000, &["10.0.0.1:8080"]),
        http("shop", "web-v1", 5000, &["10.0.1.1:8080"]),
        http("shop", "web-v2", 5000, &["10.0.2.1:8080"]),
        http("shop", "web-v3", 5000, &["10.0.3.1:8080"]),
    ]
}

fn split_yaml(name: &str, root: &str, backends: &[(&str, i64)]) -> String {
    let mut s = format!(
        "---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  service: {root}\n  backends:\n"
    );
    for (b, w) in backends {
        s += &format!("  - {{service: {b}, weight: {w}}}\n");
    }
    s
}

fn weights(t: &Table, root: &str) -> Vec<(String, u32)> {
    let s = t.services().iter().find(|s| s.key.name == root).unwrap();
    s.splits[0]
        .backends
        .iter()
        .map(|b| (b.service.name.clone(), b.weight))
        .collect()
}

#[test]
fn split_50_50() {
    let t = golden(
        "split_50_50",
        web_services(),
        &split_yaml("half", "web", &[("web-v1", 50), ("web-v2", 50)]),
    );
    assert_eq!(
        weights(&t, "web"),
        [("web-v1".into(), 50), ("web-v2".into(), 50)]
    );
}

#[test]
fn split_90_10_in_v1alpha3_with_fqdn_root() {
    let yaml = split_yaml(
        "canary",
        "web.shop.svc.cluster.local",
        &[("web-v1", 90), ("web-v2", 10)],
    )
    .replace("v1alpha4", "v1alpha3");
    let t = golden("split_90_10", web_services(), &yaml);
    assert_eq!(
        weights(&t, "web"),
        [("web-v1".into(), 90), ("web-v2".into(), 10)]
    );
}

#[test]
fn split_with_http_route_group_match_comes_before_catch_all() {
    let yaml = split_yaml("all", "web", &[("web-v1", 1)])
        + &split_yaml("firefox", "web", &[("web-v2", 100), ("web-v1", 0)])
        + "  matches:\n  - {kind: HTTPRouteGroup, name: ab}\n"
        + r#"---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: ab, namespace: shop}
spec:
  matches:
  - name: firefox-users
    headers:
    - user-agent: ".*Firefox.*"
"#;
    let t = golden("split_with_match", web_services(), &yaml);
    let web = t.services().iter().find(|s| s.key.name == "web").unwrap();
    assert_eq!(web.splits.len(), 2);
    assert_eq!(web.splits[0].name, "shop/firefox");
    let ua = |v: &'static str| move |h: &str| (h == "user-agent").then_some(v);
    assert!(web.splits[0].matches[0].matches("GET", "/", ua("Mozilla Firefox/99")));
    assert!(!web.splits[0].matches[0].matches("GET", "/", ua("curl/8")));
    assert!(web.splits[1].matches.is_empty());
}

#[test]
fn nested_split() {
    let yaml = split_yaml("outer", "web", &[("web-v1", 50), ("web-v2", 50)])
        + &split_yaml("inner", "web-v2", &[("web-v3", 1)]);
    let t = golden("split_nested", web_services(), &yaml);
    assert_eq!(weights(&t, "web-v2"), [("web-v3".into(), 1)]);
}

#[test]
fn split_cycle_is_reported_and_left_out() {
    // a → v1 → v2 → v1 is a cycle; the split closing it (by name order) is left out.
    let yaml = split_yaml("a-outer", "web", &[("web-v1", 1)])
        + &split_yaml("b-forward", "web-v1", &[("web-v2", 1)])
        + &split_yaml("c-back", "web-v2", &[("web-v1", 1)])
        + &split_yaml("d-self", "web-v3", &[("web-v3", 1)]);
    let t = golden("split_cycle", web_services(), &yaml);
    let v2 = t
        .services()
        .iter()
        .find(|s| s.key.name == "web-v2")
        .unwrap();
    assert!(v2.splits.is_empty());
    let v3 = t
        .services()
        .iter()
        .find(|s| s.key.name == "web-v3")
        .unwrap();
    assert!(v3.splits.is_empty());
}

#[test]
fn split_backend_lacking_root_port_is_reported() {
    let mut services = web_services();
    // The root has ports 80 and 81; web-v2 only 80, and web-v9 does not exist.
    services.push(service(
        "shop",
        "web",
        81,
        5001,
        TrafficType::Http,
        &["10.0.0.1:8081"],
    ));
    services.push(service(
        "shop",
        "web-v1",
        81,
        5001,
        TrafficType::Http,
        &["10.0.1.1:8081"],
    ));
    let yaml = split_yaml(
        "two-ports",
        "web",
        &[("web-v1", 1), ("web-v2", 1), ("web-v9", 1)],
    ) + &split_yaml("bad-weight", "web-v3", &[("web-v1", -1)])
        + &split_yaml("no-root", "nope", &[("web-v1", 1)]);
    let t = golden("split_backend_lacks_port", services, &yaml);
    let on_81 = t
        .services()
        .iter()
        .find(|s| s.key.name == "web" && s.key.port == 81)
        .unwrap();
    assert_eq!(on_81.splits[0].backends.len(), 1);
}

fn acl_services() -> Vec<ServiceSpec> {
    vec![
        // api pods run as ServiceAccount "api"; the web pods as "web".
        service(
            "shop",
            "api",
            80,
            5000,
            TrafficType::Http,
            &["10.1.0.1:8080", "10.1.0.2:8080"],
        ),
        service(
            "shop",
            "api",
            9090,
            5001,
            TrafficType::Http,
            &["10.1.0.1:9090", "10.1.0.2:9090"],
        ),
        service(
            "shop",
            "db",
            5432,
            10000,
            TrafficType::Tcp,
            &["10.1.1.1:5432"],
        ),
        service("shop", "dns", 53, 15000, TrafficType::Udp, &["10.1.2.1:53"]),
        service(
            "shop",
            "web",
            80,
            5002,
            TrafficType::Http,
            &["10.2.0.1:8080"],
        ),
    ]
}

fn acl_pods() -> String {
    [
        pod("api-1", "api", "10.1.0.1"),
        pod("api-2", "api", "10.1.0.2"),
        pod("db-1", "db", "10.1.1.1"),
        pod("dns-1", "dns", "10.1.2.1"),
        pod("web-1", "web", "10.2.0.1"),
        pod("web-2", "web", "10.2.0.2"),
        pod("prom-1", "prometheus", "10.3.0.1"),
        // A finished pod's address may be reused: never a source.
        pod("web-old", "web", "10.2.0.9").replace("Running", "Succeeded"),
        // Host-network pods share the node's address: reported, never a source.
        pod("web-host", "web", "192.168.1.10").replace(
            "serviceAccountName: web",
            "serviceAccountName: web\n  hostNetwork: true",
        ),
    ]
    .concat()
}

const ROUTES: &str = r#"---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: api-routes, namespace: shop}
spec:
  matches:
  - name: api
    pathRegex: /api(/.*)?
    methods: ["*"]
  - name: metrics
    pathRegex: /metrics
    methods: [GET]
  - name: canary-header
    headers: {x-canary: "yes|true"}
  - name: broken
    pathRegex: "/(unclosed"
"#;

#[test]
fn acl_from_http_route_groups() {
    let yaml = acl_pods()
        + ROUTES
        + r#"---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: {name: web-to-api, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: shop, port: 8080}
  rules:
  - kind: HTTPRouteGroup
    name: api-routes
    matches: [api, canary-header, broken]
  sources:
  - {kind: ServiceAccount, name: web, namespace: shop}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: prometheus-scrapes, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api}
  rules:
  - {kind: HTTPRouteGroup, name: api-routes, matches: [metrics]}
  sources:
  - {kind: ServiceAccount, name: prometheus}
"#;
    let t = golden("acl_http", acl_services(), &yaml);
    let api80 = t
        .services()
        .iter()
        .find(|s| s.key.name == "api" && s.key.port == 80)
        .unwrap();
    let web_ip: IpAddr = "10.2.0.2".parse().unwrap();
    let prom_ip: IpAddr = "10.3.0.1".parse().unwrap();
    let allows = |ip: IpAddr, method: &str, path: &str, canary: Option<&'static str>| {
        api80.access.iter().any(|r| {
            r.admits(ip)
                && r.http.as_ref().is_none_or(|ms| {
                    ms.iter().any(|m| {
                        m.matches(
                            method,
                            path,
                            |h| if h == "x-canary" { canary } else { None },
                        )
                    })
                })
        })
    };
    assert!(allows(web_ip, "POST", "/api/orders", None));
    assert!(allows(web_ip, "GET", "/api", None));
    assert!(
        !allows(web_ip, "GET", "/", None),
        "path anchored at both ends"
    );
    assert!(
        !allows(web_ip, "GET", "/v2/api", None),
        "path anchored at the start"
    );
    assert!(allows(web_ip, "GET", "/", Some("true")), "header match");
    assert!(
        !allows(web_ip, "GET", "/", Some("truer")),
        "header regex anchored"
    );
    assert!(
        !allows(web_ip, "GET", "/metrics", None),
        "web was not given metrics"
    );
    assert!(allows(prom_ip, "GET", "/metrics", None));
    assert!(
        !allows(prom_ip, "POST", "/metrics", None),
        "metrics is GET only"
    );
    assert!(!allows("10.2.0.9".parse().unwrap(), "GET", "/api", None));
    // destination.port 8080 restricts web-to-api to the port-80 service port (pod port 8080).
    let api9090 = t
        .services()
        .iter()
        .find(|s| s.key.name == "api" && s.key.port == 9090)
        .unwrap();
    assert!(api9090.access.iter().all(|r| r.name != "shop/web-to-api"));
    assert!(api9090
        .access
        .iter()
        .any(|r| r.name == "shop/prometheus-scrapes"));
}

#[test]
fn acl_from_tcp_and_udp_routes_and_empty_rules() {
    let yaml = acl_pods()
        + r#"---
apiVersion: specs.smi-spec.io/v1alpha3
kind: TCPRoute
metadata: {name: any-tcp, namespace: shop}
spec: {}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: pg-only, namespace: shop}
spec:
  matches: {ports: [5432]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: TCPRoute
metadata: {name: other-port, namespace: shop}
spec:
  matches: {ports: [6000]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: UDPRoute
metadata: {name: dns, namespace: shop}
spec:
  matches: {ports: [53]}
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: web-to-db, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: db}
  rules: [{kind: TCPRoute, name: pg-only}]
  sources: [{kind: ServiceAccount, name: web}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: prometheus-to-db-wrong-port, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: db}
  rules: [{kind: TCPRoute, name: other-port}]
  sources: [{kind: ServiceAccount, name: prometheus}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: web-to-dns, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: dns}
  rules: [{kind: UDPRoute, name: dns}]
  sources: [{kind: ServiceAccount, name: web}]
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: {name: prometheus-any-tcp-to-web, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: web}
  rules: [{kind: TCPRoute, name: any-tcp}]
  sources: [{kind: ServiceAccount, name: prometheus}]
---
apiVersion: access.smi-spec.io/v1alpha2
kind: TrafficTarget
metadata: {name: no-rules, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api}
  sources: [{kind: ServiceAccount, name: web}]
---
apiVersion: access.smi-spec.io/v1alpha3
kind: TrafficTarget
metadata: {name: elsewhere, namespace: shop}
spec:
  destination: {kind: ServiceAccount, name: api, namespace: bank}
  rules: [{kind: TCPRoute, name: any-tcp}]
  sources: [{kind: ServiceAccount, name: web}]
"#;
    let t = golden("acl_l4", acl_services(), &yaml);
    let by = |n: &str| t.services().iter().find(|s| s.key.name == n).unwrap();
    assert_eq!(by("db").access.len(), 1);
    assert!(by("db").access[0].admits("10.2.0.1".parse().unwrap()));
    assert!(!by("db").access[0].admits("10.3.0.1".parse().unwrap()));
    assert_eq!(by("dns").access.len(), 1);
    assert!(by("api").access.is_empty(), "no rules allow nothing");
    assert!(
        by("web").access[0].http.is_none(),
        "a TCPRoute opens an http port whole"
    );
}

#[test]
fn parses_every_supported_version_and_refuses_others() {
    for (api, kind) in [
        ("access.smi-spec.io/v1alpha2", "TrafficTarget"),
        ("access.smi-spec.io/v1alpha3", "TrafficTarget"),
        ("specs.smi-spec.io/v1alpha3", "HTTPRouteGroup"),
        ("specs.smi-spec.io/v1alpha4", "HTTPRouteGroup"),
        ("specs.smi-spec.io/v1alpha3", "TCPRoute"),
        ("specs.smi-spec.io/v1alpha4", "TCPRoute"),
        ("specs.smi-spec.io/v1alpha4", "UDPRoute"),
        ("split.smi-spec.io/v1alpha3", "TrafficSplit"),
        ("split.smi-spec.io/v1alpha4", "TrafficSplit"),
    ] {
        let spec = match kind {
            "TrafficTarget" => json!({"destination": {"kind": "ServiceAccount", "name": "a"}}),
            "TrafficSplit" => json!({"service": "a", "backends": []}),
            _ => json!({}),
        };
        let doc = json!({"apiVersion": api, "kind": kind, "metadata": {"name": "x"}, "spec": spec});
        let obj = parse_manifest(&doc)
            .unwrap()
            .unwrap_or_else(|e| panic!("{api} {kind}: {e}"));
        let mut all = SmiObjects::default();
        all.insert(obj);
        assert!(!all.is_empty());
    }
    let doc = json!({"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit",
        "metadata": {"name": "old", "namespace": "shop"}, "spec": {"service": "a", "backends": []}});
    let e = parse_manifest(&doc).unwrap().unwrap_err().to_string();
    assert_eq!(
        e,
        "TrafficSplit shop/old: field apiVersion: \"split.smi-spec.io/v1alpha1\" is not supported; expected one of split.smi-spec.io/v1alpha3, split.smi-spec.io/v1alpha4"
    );
    let doc = json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "bad", "namespace": "shop"}, "spec": {"service": "a", "backends": [{"service": "b", "weight": "50%"}]}});
    let e = parse_manifest(&doc).unwrap().unwrap_err().to_string();
    assert!(e.starts_with("TrafficSplit shop/bad: "), "{e}");
    assert!(e.contains("invalid type"), "{e}");
    let doc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
    assert!(parse_manifest(&doc).is_none());
}

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

#[test]
fn chart_crds_serve_exactly_the_supported_versions_and_store_the_watched_one() {
    use kube::Resource;
    let mut crds = Vec::new();
    for entry in std::fs::read_dir(repo_file("charts/maille/crds")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        crds.push(serde_yaml::from_str::<serde_json::Value>(&text).unwrap());
    }
    let storage = |kind: &str| match kind {
        "TrafficTarget" => TrafficTarget::version(&()).to_string(),
        "HTTPRouteGroup" => HTTPRouteGroup::version(&()).to_string(),
        "TCPRoute" => TCPRoute::version(&()).to_string(),
        "UDPRoute" => UDPRoute::version(&()).to_string(),
        _ => TrafficSplit::version(&()).to_string(),
    };
    assert_eq!(crds.len(), SUPPORTED.len());
    for (group, kind, versions) in SUPPORTED {
        let crd = crds
            .iter()
            .find(|c| c["spec"]["group"] == *group && c["spec"]["names"]["kind"] == *kind)
            .unwrap_or_else(|| panic!("no CRD for {group} {kind}"));
        let vs = crd["spec"]["versions"].as_array().unwrap();
        let mut served: Vec<&str> = vs
            .iter()
            .filter(|v| v["served"] == true)
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        served.sort();
        assert_eq!(&served, versions, "{kind}");
        let stored: Vec<&str> = vs
            .iter()
            .filter(|v| v["storage"] == true)
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(stored, [storage(kind).as_str()], "{kind}");
    }
}

#[test]
fn examples_translate_without_problems() {
    let mut yaml = String::new();
    for entry in std::fs::read_dir(repo_file("examples/smi")).unwrap() {
        let path = entry.unwrap().path();
        // The canary and the nested example both split `web`; the nested one is tested here.
        if path.extension().is_some_and(|e| e == "yaml")
            && !path.ends_with("traffic-split-canary.yaml")
        {
            yaml += "\n---\n";
            yaml += &std::fs::read_to_string(&path).unwrap();
        }
    }
    yaml += &[
        pod("web-1", "web", "10.0.0.1"),
        pod("api-1", "api", "10.0.1.1"),
        pod("db-1", "db", "10.0.2.1"),
        pod("dns-1", "dns", "10.0.3.1"),
        pod("prom-1", "prometheus", "10.0.4.1"),
    ]
    .concat();
    let (objs, pods) = objects(&yaml);
    let mut services = vec![
        http("shop", "web", 5000, &["10.0.0.1:8080"]),
        http("shop", "web-v1", 5000, &["10.0.0.1:8080"]),
        http("shop", "web-v2", 5000, &["10.0.0.1:8080"]),
        http("shop", "web-v2-blue", 5000, &["10.0.0.1:8080"]),
        http("shop", "web-v2-green", 5000, &["10.0.0.1:8080"]),
        http("shop", "api", 5001, &["10.0.1.1:8080"]),
        service(
            "shop",
            "db",
            5432,
            10000,
            TrafficType::Tcp,
            &["10.0.2.1:5432"],
        ),
        service("shop", "dns", 53, 15000, TrafficType::Udp, &["10.0.3.1:53"]),
    ];
    let problems = apply(&mut services, &objs, &pods);
    assert!(problems.is_empty(), "{problems:#?}");
    let by = |n: &str| services.iter().find(|s| s.name == n).unwrap();
    assert_eq!(
        by("web").splits.len(),
        2,
        "A/B (with matches) then the 50/50"
    );
    assert_eq!(by("web").splits[0].name, "shop/web-ab");
    assert_eq!(by("web-v2").splits[0].backends.len(), 2);
    assert_eq!(by("api").access.len(), 2);
    assert_eq!(by("db").access[0].sources, ["10.0.1.1"]);
    assert_eq!(by("dns").access[0].sources, ["10.0.0.1", "10.0.1.1"]);
}

/// TrafficSplits `split-<i>`: `s<i> → s<i+1>` over `n` HTTP services `s<i>` (zero-padded, so
/// name order is index order).
fn split_chain(n: usize, order: impl Fn(usize) -> usize) -> (Vec<ServiceSpec>, SmiObjects) {
    let services = (0..n)
        .map(|i| http("shop", &format!("s{i:05}"), 5000, &["10.0.0.1:80"]))
        .collect();
    let mut objs = SmiObjects::default();
    for i in 0..n - 1 {
        let mut ts = TrafficSplit::new(
            &format!("split-{:05}", order(i)),
            crd::TrafficSplitSpec {
                service: format!("s{i:05}"),
                backends: vec![crd::TrafficSplitBackend {
                    service: format!("s{:05}", i + 1),
                    weight: 1,
                }],
                ..Default::default()
            },
        );
        ts.metadata.namespace = Some("shop".into());
        objs.insert(SmiObject::TrafficSplit(ts));
    }
    (services, objs)
}

#[test]
fn ten_thousand_nested_splits_keep_the_deepest_allowed_chain_and_report_the_rest() {
    let (mut services, objs) = split_chain(10_000, |i| i);
    let problems = apply(&mut services, &objs, &[]);
    let depth = config_model::split_graph::MAX_SPLIT_DEPTH as usize;
    // The last MAX_SPLIT_DEPTH splits of the chain stay; every one above is reported.
    let kept: Vec<usize> = (0..10_000)
        .filter(|&i| !services[i].splits.is_empty())
        .collect();
    assert_eq!(kept, (9_999 - depth..9_999).collect::<Vec<_>>());
    assert_eq!(problems.len(), 9_999 - depth);
    assert!(
        problems[0].message.contains("levels of nested splits"),
        "{}",
        problems[0]
    );
    Table::try_from(&table(1, services)).expect("the proxy accepts what is left");
}

#[test]
fn five_thousand_splits_are_checked_in_linear_work() {
    let n = 5_000;
    // Name order top-down, bottom-up (the order that made the old check cubic), and the chain
    // closed into one cycle.
    for (case, order) in [
        ("top-down", Box::new(|i| i) as Box<dyn Fn(usize) -> usize>),
        ("bottom-up", Box::new(move |i| n - i)),
    ] {
        for close in [false, true] {
            let (mut services, mut objs) = split_chain(n, &order);
            if close {
                let mut ts = TrafficSplit::new(
                    "split-close",
                    crd::TrafficSplitSpec {
                        service: format!("s{:05}", n - 1),
                        backends: vec![crd::TrafficSplitBackend {
                            service: "s00000".into(),
                            weight: 1,
                        }],
                        ..Default::default()
                    },
                );
                ts.metadata.namespace = Some("shop".into());
                objs.insert(SmiObject::TrafficSplit(ts));
            }
            let mut problems = Vec::new();
            let routes = Routes::new(&objs, &mut problems);
            let steps = split::apply(&mut services, &objs, &routes, &mut problems);
            assert!(
                steps <= 40 * n,
                "{case} closed={close}: {steps} steps for {n} splits"
            );
            if close {
                assert!(problems.iter().any(|p| p.message.contains("cycle")));
            }
            Table::try_from(&table(1, services)).expect("the proxy accepts what is left");
        }
    }
}

#[test]
fn many_disjoint_split_cycles_each_lose_their_last_split() {
    let services: Vec<ServiceSpec> = (0..2_000)
        .map(|i| http("shop", &format!("s{i:05}"), 5000, &["10.0.0.1:80"]))
        .collect();
    let mut objs = SmiObjects::default();
    for k in 0..1_000 {
        for (name, root, backend) in [
            (format!("a{k:05}"), 2 * k, 2 * k + 1),
            (format!("b{k:05}"), 2 * k + 1, 2 * k),
        ] {
            let mut ts = TrafficSplit::new(
                &name,
                crd::TrafficSplitSpec {
                    service: format!("s{root:05}"),
                    backends: vec![crd::TrafficSplitBackend {
                        service: format!("s{backend:05}"),
                        weight: 1,
                    }],
                    ..Default::default()
                },
            );
            ts.metadata.namespace = Some("shop".into());
            objs.insert(SmiObject::TrafficSplit(ts));
        }
    }
    let mut services = services;
    let problems = apply(&mut services, &objs, &[]);
    assert_eq!(problems.len(), 1_000);
    assert!(problems.iter().all(|p| p.name.starts_with('b')));
    assert_eq!(
        services.iter().filter(|s| !s.splits.is_empty()).count(),
        1_000
    );
}

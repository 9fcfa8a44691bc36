use super::*;
use crate::options::RetryPolicy;
use crate::split_graph::MAX_SPLIT_DEPTH;
use crate::testing::{http, service, table};
use crate::wire::{AccessRuleSpec, HttpMatchSpec, ServiceSpec, SplitSpec};
use crate::wire::{EndpointSpec, SplitBackendSpec};

fn build(services: Vec<ServiceSpec>) -> Result<Table> {
    Table::try_from(table(7, services))
}

fn field_error(e: Error) -> (String, String, String) {
    match e {
        Error::InvalidField {
            service,
            field,
            value,
            ..
        } => (service, field, value),
        other => panic!("expected InvalidField, got {other}"),
    }
}

#[test]
fn routes_http_by_port_and_host_in_any_case_with_or_without_port() {
    let mut web = http("shop", "web", 5000, &["10.0.0.1:8080"]);
    web.cluster_ip = Some("10.96.0.10".into());
    let t = build(vec![
        web,
        http("shop", "api", 5000, &["10.0.0.2:9090"]),
        http("shop", "api-admin", 5001, &[]),
    ])
    .unwrap();
    assert_eq!(t.version, 7);
    assert_eq!(
        t[t.http_route(5000, "web.shop.maille.mesh").unwrap()]
            .key
            .name,
        "web"
    );
    assert_eq!(
        t.http_route(5000, "WEB.Shop.maille.mesh:80")
            .map(|id| &t[id])
            .unwrap()
            .key
            .name,
        "web"
    );
    assert_eq!(
        t.http_route(5000, "web.shop.maille.mesh.")
            .map(|id| &t[id])
            .unwrap()
            .key
            .name,
        "web"
    );
    assert_eq!(
        t[t.http_route(5000, "10.96.0.10:80").unwrap()].key.name,
        "web"
    );
    assert_eq!(
        t[t.http_route(5000, "api.shop.maille.mesh").unwrap()]
            .key
            .name,
        "api"
    );
    assert!(
        t.http_route(5001, "web.shop.maille.mesh").is_none(),
        "wrong listener port"
    );
    assert!(t.http_route(5000, "nope.shop.maille.mesh").is_none());
    assert!(t.http_route(5000, &"x".repeat(300)).is_none());
}

#[test]
fn routes_tcp_and_udp_by_port() {
    let t = build(vec![
        service(
            "db",
            "pg",
            5432,
            10000,
            TrafficType::Tcp,
            &["10.0.0.3:5432"],
        ),
        service(
            "dns",
            "resolver",
            53,
            15000,
            TrafficType::Udp,
            &["10.0.0.4:53"],
        ),
    ])
    .unwrap();
    assert_eq!(t[t.tcp_route(10000).unwrap()].key.name, "pg");
    assert_eq!(t[t.udp_route(15000).unwrap()].key.name, "resolver");
    assert!(t.tcp_route(15000).is_none());
    assert!(t.udp_route(10000).is_none());
}

#[test]
fn bad_endpoint_names_service_field_and_value() {
    let e = build(vec![http(
        "shop",
        "web",
        5000,
        &["10.0.0.1:8080", "not-an-address"],
    )])
    .unwrap_err();
    assert_eq!(
        field_error(e.clone()),
        (
            "shop/web:80".into(),
            "endpoints[1].address".into(),
            "not-an-address".into()
        )
    );
    assert!(e.to_string().contains("expected ip:port"), "{e}");
}

#[test]
fn weight_out_of_range_is_refused_and_zero_weight_is_dropped() {
    let mut s = http("shop", "web", 5000, &[]);
    s.endpoints = vec![EndpointSpec {
        address: "10.0.0.1:80".into(),
        weight: MAX_WEIGHT + 1,
        node: None,
    }];
    assert_eq!(
        field_error(build(vec![s.clone()]).unwrap_err()).1,
        "endpoints[0].weight"
    );
    s.endpoints = vec![
        EndpointSpec {
            address: "10.0.0.1:80".into(),
            weight: 0,
            node: None,
        },
        EndpointSpec::new("10.0.0.2:80"),
    ];
    let t = build(vec![s]).unwrap();
    assert_eq!(t.services()[0].endpoints.len(), 1);
}

#[test]
fn duplicate_claims_are_refused() {
    let e = build(vec![http("a", "x", 5000, &[]), http("a", "x", 5000, &[])]).unwrap_err();
    assert_eq!(e, Error::DuplicateService("a/x:80".into()));
    let e = build(vec![
        service("a", "x", 1, 10000, TrafficType::Tcp, &[]),
        service("b", "y", 2, 10000, TrafficType::Tcp, &[]),
    ])
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::DuplicateMeshPort {
                mesh_port: 10000,
                ..
            }
        ),
        "{e}"
    );
    // The same port number in the TCP and UDP ranges is fine.
    build(vec![
        service("a", "x", 1, 10000, TrafficType::Tcp, &[]),
        service("b", "y", 2, 10000, TrafficType::Udp, &[]),
    ])
    .unwrap();
    let mut x = http("a", "x", 5000, &[]);
    x.cluster_ip = Some("10.96.0.1".into());
    let mut y = http("a", "y", 5000, &[]);
    y.cluster_ip = Some("10.96.0.1".into());
    assert!(matches!(
        build(vec![x, y]).unwrap_err(),
        Error::DuplicateHttpRoute { .. }
    ));
}

#[test]
fn schema_version_is_checked() {
    let mut spec = table(1, vec![]);
    spec.schema_version = 99;
    assert_eq!(
        Table::try_from(spec).unwrap_err(),
        Error::SchemaVersion {
            found: 99,
            expected: 1
        }
    );
}

#[test]
fn options_are_validated() {
    let mut s = http("a", "x", 5000, &[]);
    s.options.scheme = Some("ftp".into());
    assert_eq!(
        field_error(build(vec![s.clone()]).unwrap_err()).1,
        "options.scheme"
    );
    s.options.scheme = None;
    s.options.retry_attempts = Some(0);
    assert_eq!(
        field_error(build(vec![s.clone()]).unwrap_err()).1,
        "options.retryAttempts"
    );
    s.options.retry_attempts = Some(2);
    let t = build(vec![s]).unwrap();
    assert_eq!(
        t.services()[0].options.retry,
        Some(RetryPolicy {
            attempts: 2,
            budget_percent: 20
        })
    );
    let mut tcp = service("a", "t", 1, 10000, TrafficType::Tcp, &[]);
    tcp.options.timeout_ms = Some(10);
    assert_eq!(
        field_error(build(vec![tcp]).unwrap_err()).1,
        "options.timeoutMs"
    );
}

fn split_to(name: &str, backends: &[(&str, u32)]) -> SplitSpec {
    SplitSpec {
        name: format!("a/{name}"),
        matches: vec![],
        backends: backends
            .iter()
            .map(|(n, w)| SplitBackendSpec {
                namespace: "a".into(),
                name: n.to_string(),
                port: 80,
                weight: *w,
            })
            .collect(),
    }
}

#[test]
fn splits_resolve_backends_and_refuse_dangling_and_cycles() {
    let mut root = http("a", "root", 5000, &[]);
    root.splits = vec![split_to("s", &[("v1", 90), ("v2", 10)])];
    let t = build(vec![
        root.clone(),
        http("a", "v1", 5000, &[]),
        http("a", "v2", 5000, &[]),
    ])
    .unwrap();
    let split = &t.services()[0].splits[0];
    assert_eq!(split.total_weight(), 100);
    let root_id = t.iter().next().unwrap().0;
    assert_eq!(t[t.split_targets(root_id, 0)[0]].key.name, "v1");
    assert_eq!(split.backends[0].service.name, "v1");

    let e = build(vec![root.clone(), http("a", "v1", 5000, &[])]).unwrap_err();
    assert_eq!(field_error(e).1, "splits[0].backends[1]");

    let mut v1 = http("a", "v1", 5000, &[]);
    v1.splits = vec![split_to("back", &[("root", 1)])];
    let e = build(vec![root, v1, http("a", "v2", 5000, &[])]).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
}

#[test]
fn http_matches_are_anchored_and_anded() {
    let mut s = http("a", "x", 5000, &[]);
    s.access = vec![AccessRuleSpec {
        name: "a/tt".into(),
        sources: vec!["127.0.0.2".into()],
        identities: vec![],
        http: Some(vec![HttpMatchSpec {
            name: Some("api".into()),
            path_regex: Some("/api.*".into()),
            methods: vec!["get".into()],
            headers: [("X-User".to_string(), "alice|bob".to_string())].into(),
        }]),
    }];
    let t = build(vec![s.clone()]).unwrap();
    let rule = &t.services()[0].access[0];
    assert!(rule.admits("127.0.0.2".parse().unwrap()));
    assert!(rule.admits("::ffff:127.0.0.2".parse().unwrap()));
    assert!(!rule.admits("127.0.0.3".parse().unwrap()));
    let m = &rule.http.as_ref().unwrap()[0];
    let alice = |n: &str| (n == "x-user").then_some("alice");
    assert!(m.matches("GET", "/api/v1", alice));
    assert!(
        !m.matches("GET", "/v1/api", alice),
        "path regex is anchored"
    );
    assert!(!m.matches("POST", "/api/v1", alice));
    assert!(!m.matches("GET", "/api/v1", |n: &str| (n == "x-user")
        .then_some("alicex")));
    assert!(!m.matches("GET", "/api/v1", |_: &str| None));

    s.access[0].http.as_mut().unwrap()[0].path_regex = Some("(".into());
    assert_eq!(
        field_error(build(vec![s]).unwrap_err()).1,
        "access[0].http[0].pathRegex"
    );
}

#[test]
fn json_round_trip_tolerates_unknown_fields() {
    let json = br#"{"schemaVersion":1,"version":3,"futureField":{"x":1},
        "services":[{"namespace":"a","name":"x","port":80,"meshPort":5000,"trafficType":"http",
        "endpoints":[{"address":"127.0.0.1:8080"}],"newOption":true}]}"#;
    let t = Table::from_json(json).unwrap();
    assert_eq!(t.version, 3);
    assert_eq!(t.services()[0].endpoints[0].weight, 1);
    assert!(matches!(
        Table::from_json(b"{not json"),
        Err(JsonError::Parse(_))
    ));
    let spec = table(1, vec![http("a", "x", 5000, &["127.0.0.1:1"])]);
    let back: crate::TableSpec =
        serde_json::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn circuit_breaker_options_are_parsed_and_checked() {
    let mut s = http("a", "web", 5000, &[]);
    s.options.circuit_breaker = Some("NetworkErrorRatio() > 0.5".into());
    let t = build(vec![s.clone()]).unwrap();
    let cb = t.services()[0].options.circuit_breaker.as_ref().unwrap();
    assert_eq!(
        cb.recovery_ms,
        crate::options::DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS
    );
    assert_eq!(cb.expr.source, "NetworkErrorRatio() > 0.5");

    s.options.circuit_breaker_recovery_ms = Some(2500);
    let t = build(vec![s.clone()]).unwrap();
    assert_eq!(
        t.services()[0]
            .options
            .circuit_breaker
            .as_ref()
            .unwrap()
            .recovery_ms,
        2500
    );

    s.options.circuit_breaker = Some("Nope() > 1".into());
    let (svc, field, value) = field_error(build(vec![s.clone()]).unwrap_err());
    assert_eq!(
        (svc.as_str(), field.as_str(), value.as_str()),
        ("a/web:80", "options.circuitBreaker", "Nope() > 1")
    );

    s.options.circuit_breaker = None;
    assert_eq!(
        field_error(build(vec![s]).unwrap_err()).1,
        "options.circuitBreakerRecoveryMs"
    );
}

/// `n` HTTP services `s0 → s1 → … → s(n-1)`, each split to the next (namespace `a`).
fn split_chain(n: usize) -> Vec<ServiceSpec> {
    (0..n)
        .map(|i| {
            let mut s = http("a", &format!("s{i}"), 5000, &["10.0.0.1:80"]);
            if i + 1 < n {
                s.splits = vec![split_to(
                    &format!("split{i}"),
                    &[(&format!("s{}", i + 1), 1)],
                )];
            }
            s
        })
        .collect()
}

#[test]
fn a_chain_of_ten_thousand_nested_splits_is_refused_without_overflowing_the_stack() {
    let e = build(split_chain(10_000)).unwrap_err();
    let text = e.to_string();
    let (service, field, value) = field_error(e);
    // The shallowest service over the limit is named, with the split that goes too deep.
    let at = 10_000 - 2 - MAX_SPLIT_DEPTH as usize;
    assert_eq!(service, format!("a/s{at}:80"));
    assert_eq!(field, "splits[0].backends[0]");
    assert_eq!(value, format!("a/split{at}"));
    assert!(text.contains("17 nested splits"), "{text}");
    assert!(text.len() < 2_000, "{} bytes", text.len());
    // Closed into a cycle, it is refused as one, with a bounded message.
    let mut looped = split_chain(10_000);
    looped[9_999].splits = vec![split_to("back", &[("s0", 1)])];
    let e = build(looped).unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    assert!(e.to_string().len() < 2_000);
}

#[test]
fn nested_splits_up_to_the_depth_limit_are_accepted() {
    let n = MAX_SPLIT_DEPTH as usize + 1;
    let t = build(split_chain(n)).unwrap();
    assert_eq!(t.services()[0].splits.len(), 1);
    let e = build(split_chain(n + 1)).unwrap_err();
    assert_eq!(field_error(e).0, "a/s0:80");
}

#[test]
fn a_megabyte_value_is_quoted_cut() {
    let mut s = http("a", "x", 5000, &[]);
    s.cluster_ip = Some("1".repeat(1 << 20));
    let e = build(vec![s]).unwrap_err();
    let text = e.to_string();
    assert!(text.len() < 400, "{} bytes", text.len());
    assert!(text.contains("…[1048576 bytes]"), "{text}");
    assert!(text.contains("clusterIp"), "{text}");
}

#[test]
fn deeply_nested_json_is_refused_by_the_parser_not_the_stack() {
    // In a known field: refused as soon as the shape is wrong.
    let text = format!(
        "{{\"schemaVersion\":1,\"services\":{}}}",
        "[".repeat(10_000)
    );
    let e = Table::from_json(text.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("not valid JSON"), "{e}");
    // As a free-form value: refused at serde_json's recursion limit (128).
    let e = serde_json::from_str::<serde_json::Value>(&"[".repeat(10_000)).unwrap_err();
    assert!(e.to_string().contains("recursion limit exceeded"), "{e}");
    // In an unknown field (tolerated): serde_json skips it without recursing.
    let text = format!(
        "{{\"schemaVersion\":1,\"x\":{}1{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let t = std::thread::Builder::new()
        .stack_size(128 * 1024)
        .spawn(move || Table::from_json(text.as_bytes()).map(|t| t.len()))
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(t.unwrap(), 0);
}

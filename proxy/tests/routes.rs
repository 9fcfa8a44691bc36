//! Gateway API route entries through the real proxy and real backends: matches (path exact,
//! prefix element by element, regex; headers; query parameters; method), weighted backends
//! (the parent included), the unresolved share (500), no fitting entry (404), the filters
//! (request and response header changes, redirects, rewrites seen by the backend), timeouts
//! (504) and retries on status codes, in the spirit of the Gateway API mesh conformance tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use config_model::route::{
    HeaderModifierSpec, HeaderSpec, PathMatchSpec, PathMatchType, PathModifierSpec,
    PathModifierType, RequestRedirectSpec, RouteFilterSpec, RouteKind, RouteMatchSpec,
    RouteRetrySpec, RouteTimeoutsSpec, UrlRewriteSpec, ValueMatchSpec, ValueMatchType,
};
use config_model::testing::{http, table};
use config_model::{
    RouteSpec, Scheme, SchemeSpec, ServiceSpec, SplitBackendSpec, SplitSpec, TableSpec,
};
use maille_proxy::testing::client::HttpClient;
use maille_proxy::testing::{metric, HttpBackend, TestProxy, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WEB: &str = "web.shop.maille.mesh";

/// A response read whole from a raw HTTP/1.1 exchange.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn backend(&self) -> &str {
        self.header("x-backend").unwrap_or("")
    }
}

/// One request with these headers, on a connection of its own.
async fn send(
    to: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut conn = tokio::time::timeout(PATIENCE, TcpStream::connect(to))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    if method == "POST" {
        req += "content-length: 0\r\n";
    }
    req += "\r\n";
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn get(to: SocketAddr, path: &str) -> Reply {
    send(to, "GET", WEB, path, &[]).await
}

fn prefix(value: &str) -> RouteMatchSpec {
    path_match(PathMatchType::PathPrefix, value)
}

fn path_match(kind: PathMatchType, value: &str) -> RouteMatchSpec {
    RouteMatchSpec {
        path: Some(PathMatchSpec {
            kind,
            value: value.into(),
        }),
        ..RouteMatchSpec::default()
    }
}

fn to(backends: &[(&str, u32)]) -> Vec<SplitBackendSpec> {
    backends
        .iter()
        .map(|(n, w)| SplitBackendSpec {
            namespace: "shop".into(),
            name: n.to_string(),
            port: 80,
            weight: *w,
        })
        .collect()
}

fn rule(i: u32, matches: RouteMatchSpec, backends: &[(&str, u32)]) -> RouteSpec {
    RouteSpec {
        route: "shop/web-route".into(),
        rule: i,
        matches,
        backends: to(backends),
        ..RouteSpec::default()
    }
}

struct Backends {
    web: HttpBackend,
    v2: HttpBackend,
    v3: HttpBackend,
}

async fn backends() -> Backends {
    Backends {
        web: HttpBackend::start("web").await,
        v2: HttpBackend::start("v2").await,
        v3: HttpBackend::start("v3").await,
    }
}

/// `web` (with these route entries), `web-v2` and `web-v3`, each on its own backend.
fn services(b: &Backends, port: u16, routes: Vec<RouteSpec>) -> Vec<ServiceSpec> {
    let mut web = http("shop", "web", port, &[&b.web.addr_str()]);
    web.routes = routes;
    vec![
        web,
        http("shop", "web-v2", port, &[&b.v2.addr_str()]),
        http("shop", "web-v3", port, &[&b.v3.addr_str()]),
    ]
}

fn start(b: &Backends, routes: Vec<RouteSpec>) -> TestProxy {
    TestProxy::start(|p| table(1, services(b, p.http[0], routes)))
}

async fn spread(to: SocketAddr, path: &str, n: usize) -> BTreeMap<String, usize> {
    spread_at(to, WEB, path, n).await
}

/// Which backend answered `n` requests (or the status, when not 200).
async fn spread_at(to: SocketAddr, host: &str, path: &str, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let r = send(to, "GET", host, path, &[]).await;
        let key = if r.status == 200 {
            r.backend().to_string()
        } else {
            r.status.to_string()
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_including_to_the_parent() {
    let b = backends().await;
    let weighted = RouteSpec {
        route: "shop/weighted".into(),
        ..rule(0, prefix("/"), &[("web", 1), ("web-v2", 3)])
    };
    let proxy = start(&b, vec![weighted]);
    // 1:3 over 400 requests: v2 expects 300, standard deviation ≈ 8.7; ±45 is over 5 of them,
    // and fails when the weights are ignored, inverted or the parent is left out.
    let seen = spread(proxy.http[0], "/", 400).await;
    let v2 = seen.get("v2").copied().unwrap_or(0);
    assert!((255..=345).contains(&v2), "{seen:?}");
    assert_eq!(seen.get("web").copied().unwrap_or(0) + v2, 400, "{seen:?}");
    assert_eq!(b.v3.hits(), 0);
    assert_eq!(
        metric(
            "maille_proxy_route_requests_total",
            &[
                ("route", "shop/weighted"),
                ("rule", "0"),
                ("service", "web")
            ]
        ),
        400.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_fitting_match_wins_and_none_is_404() {
    let b = backends().await;
    let header = |name: &str, kind, value: &str| ValueMatchSpec {
        name: name.into(),
        kind,
        value: value.into(),
    };
    let routes = vec![
        rule(
            0,
            path_match(PathMatchType::Exact, "/exact"),
            &[("web-v2", 1)],
        ),
        rule(
            1,
            RouteMatchSpec {
                headers: vec![header("X-Env", ValueMatchType::Exact, "canary")],
                ..prefix("/api")
            },
            &[("web-v3", 1)],
        ),
        rule(
            2,
            RouteMatchSpec {
                query_params: vec![header("v", ValueMatchType::RegularExpression, "[23]")],
                method: Some("POST".into()),
                ..prefix("/api")
            },
            &[("web-v2", 1)],
        ),
        rule(3, prefix("/api"), &[]),
        rule(
            4,
            path_match(PathMatchType::RegularExpression, "/v[0-9]+/.*"),
            &[("web-v3", 1)],
        ),
    ];
    let proxy = start(&b, routes);
    let at = proxy.http[0];
    assert_eq!(get(at, "/exact").await.backend(), "v2");
    assert_eq!(get(at, "/exact/").await.status, 404, "exact is exact");
    let canary = send(at, "GET", WEB, "/api/x", &[("x-env", "canary")]).await;
    assert_eq!(canary.backend(), "v3", "header match");
    let other = send(at, "GET", WEB, "/api/x", &[("x-env", "stable")]).await;
    assert_eq!(
        other.backend(),
        "web",
        "header mismatch falls to the next rule (the parent)"
    );
    assert_eq!(send(at, "POST", WEB, "/api?v=2", &[]).await.backend(), "v2");
    assert_eq!(
        send(at, "POST", WEB, "/api?v=4", &[]).await.backend(),
        "web"
    );
    assert_eq!(
        send(at, "GET", WEB, "/api?v=2", &[]).await.backend(),
        "web",
        "method"
    );
    assert_eq!(get(at, "/api").await.backend(), "web");
    assert_eq!(get(at, "/v12/anything").await.backend(), "v3");
    // Prefixes match element by element: /apis is not under /api.
    let miss = get(at, "/apis").await;
    assert_eq!(miss.status, 404);
    assert!(miss.body.contains("no route rule fits"), "{}", miss.body);
    // Paths are matched normalised: /x/../api/./y is /api/y.
    assert_eq!(get(at, "/x/../api/./y").await.backend(), "web");
    assert_eq!(
        get(at, "/V1/x").await.status,
        404,
        "regexes are case-sensitive"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_change_the_request_and_the_response() {
    let b = backends().await;
    let h = |n: &str, v: &str| HeaderSpec {
        name: n.into(),
        value: v.into(),
    };
    let mut r = rule(0, prefix("/"), &[]);
    r.filters = vec![
        RouteFilterSpec::RequestHeaderModifier(HeaderModifierSpec {
            set: vec![h("X-Set", "new")],
            add: vec![h("x-add", "two")],
            remove: vec!["x-remove".into()],
        }),
        RouteFilterSpec::ResponseHeaderModifier(HeaderModifierSpec {
            set: vec![h("content-type", "text/x-route")],
            add: vec![h("x-route", "yes")],
            remove: vec!["x-backend".into()],
        }),
    ];
    let proxy = start(&b, vec![r]);
    let reply = send(
        proxy.http[0],
        "GET",
        WEB,
        "/echo",
        &[("x-set", "old"), ("x-add", "one"), ("x-remove", "gone")],
    )
    .await;
    assert_eq!(reply.status, 200);
    let echoed: Vec<&str> = reply.body.lines().collect();
    assert!(echoed.contains(&"x-set: new"), "{echoed:?}");
    assert!(!echoed.contains(&"x-set: old"), "{echoed:?}");
    assert!(
        echoed.contains(&"x-add: one") && echoed.contains(&"x-add: two"),
        "{echoed:?}"
    );
    assert!(
        !echoed.iter().any(|l| l.starts_with("x-remove")),
        "{echoed:?}"
    );
    assert_eq!(reply.header("x-route"), Some("yes"));
    assert_eq!(reply.header("content-type"), Some("text/x-route"));
    assert_eq!(reply.header("x-backend"), None, "removed from the response");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_build_the_location_and_never_reach_a_backend() {
    let b = backends().await;
    let redirect = |i, m: RouteMatchSpec, spec: RequestRedirectSpec| RouteSpec {
        filters: vec![RouteFilterSpec::RequestRedirect(spec)],
        ..rule(i, m, &[])
    };
    let routes = vec![
        redirect(
            0,
            prefix("/host"),
            RequestRedirectSpec {
                hostname: Some("example.org".into()),
                ..RequestRedirectSpec::default()
            },
        ),
        redirect(
            1,
            prefix("/old"),
            RequestRedirectSpec {
                scheme: Some("https".into()),
                path: Some(PathModifierSpec {
                    kind: PathModifierType::ReplacePrefixMatch,
                    value: "/new".into(),
                }),
                status_code: Some(301),
                ..RequestRedirectSpec::default()
            },
        ),
        redirect(
            2,
            prefix("/port"),
            RequestRedirectSpec {
                port: Some(8443),
                path: Some(PathModifierSpec {
                    kind: PathModifierType::ReplaceFullPath,
                    value: "/full".into(),
                }),
                ..RequestRedirectSpec::default()
            },
        ),
    ];
    let proxy = start(&b, routes);
    let at = proxy.http[0];
    let r = get(at, "/host/a?q=1").await;
    assert_eq!(r.status, 302, "302 by default");
    assert_eq!(r.header("location"), Some("http://example.org/host/a?q=1"));
    let r = send(at, "GET", "web.shop.maille.mesh:8080", "/old/x/y", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://web.shop.maille.mesh/new/x/y"),
        "a new scheme drops the request's port"
    );
    assert_eq!(
        get(at, "/old").await.header("location"),
        Some("https://web.shop.maille.mesh/new")
    );
    let r = send(at, "GET", "web.shop.maille.mesh:8080", "/hostx", &[]).await;
    assert_eq!(r.status, 404, "/hostx is not under /host");
    let r = send(at, "GET", "web.shop.maille.mesh:8080", "/host", &[]).await;
    assert_eq!(
        r.header("location"),
        Some("http://example.org:8080/host"),
        "the request's port stays when the scheme does"
    );
    assert_eq!(
        get(at, "/port/x").await.header("location"),
        Some("http://web.shop.maille.mesh:8443/full")
    );
    assert_eq!(b.web.hits() + b.v2.hits() + b.v3.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrites_are_what_the_backend_sees() {
    let b = backends().await;
    let rewrite =
        |i, m: RouteMatchSpec, spec: UrlRewriteSpec, backends: &[(&str, u32)]| RouteSpec {
            filters: vec![RouteFilterSpec::UrlRewrite(spec)],
            ..rule(i, m, backends)
        };
    let routes = vec![
        rewrite(
            0,
            prefix("/shop/echo"),
            UrlRewriteSpec {
                hostname: Some("rewritten.example".into()),
                path: Some(PathModifierSpec {
                    kind: PathModifierType::ReplacePrefixMatch,
                    value: "/echo/v2".into(),
                }),
            },
            &[("web-v2", 1)],
        ),
        rewrite(
            1,
            prefix("/full"),
            UrlRewriteSpec {
                hostname: None,
                path: Some(PathModifierSpec {
                    kind: PathModifierType::ReplaceFullPath,
                    value: "/echo/fixed".into(),
                }),
            },
            &[],
        ),
        rewrite(
            2,
            prefix("/strip"),
            UrlRewriteSpec {
                hostname: None,
                path: Some(PathModifierSpec {
                    kind: PathModifierType::ReplacePrefixMatch,
                    value: "/".into(),
                }),
            },
            &[],
        ),
    ];
    let proxy = start(&b, routes);
    let at = proxy.http[0];
    let r = get(at, "/shop/echo/x?a=b").await;
    assert_eq!(r.backend(), "v2");
    let lines: Vec<&str> = r.body.lines().collect();
    assert!(lines.contains(&"path=/echo/v2/x?a=b"), "{lines:?}");
    assert!(lines.contains(&"host: rewritten.example"), "{lines:?}");
    let r = get(at, "/full/anything").await;
    assert!(
        r.body.lines().any(|l| l == "path=/echo/fixed"),
        "{}",
        r.body
    );
    assert!(
        r.body.lines().any(|l| l == format!("host: {WEB}")),
        "{}",
        r.body
    );
    let r = get(at, "/strip/echo").await;
    assert!(r.body.lines().any(|l| l == "path=/echo"), "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolved_backends_answer_500_for_their_share() {
    let b = backends().await;
    let mut none = rule(0, prefix("/none"), &[]);
    none.unresolved_weight = 1;
    let mut half = rule(1, prefix("/half"), &[("web-v2", 1)]);
    half.unresolved_weight = 1;
    let zero = rule(2, prefix("/zero"), &[("web-v2", 0)]);
    let proxy = start(&b, vec![none, half, zero]);
    let at = proxy.http[0];
    let r = get(at, "/none").await;
    assert_eq!(r.status, 500);
    assert!(
        r.body.contains("rule 0 of route shop/web-route"),
        "{}",
        r.body
    );
    assert_eq!(get(at, "/zero").await.status, 500, "all weights 0");
    // 1:1 over 200: 100 ± 35 (5 standard deviations).
    let seen = spread(at, "/half", 200).await;
    let errors = seen.get("500").copied().unwrap_or(0);
    assert!((65..=135).contains(&errors), "{seen:?}");
    assert_eq!(
        errors + seen.get("v2").copied().unwrap_or(0),
        200,
        "{seen:?}"
    );
    assert_eq!(b.web.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_answer_504() {
    let b = backends().await;
    let timed = |i, path: &str, request_ms, backend_request_ms| RouteSpec {
        timeouts: Some(RouteTimeoutsSpec {
            request_ms,
            backend_request_ms,
        }),
        ..rule(i, prefix(path), &[])
    };
    let proxy = start(
        &b,
        vec![
            timed(0, "/sleep/2000", Some(300), None),
            timed(1, "/sleep/1500", Some(5000), Some(200)),
            rule(2, prefix("/"), &[]),
        ],
    );
    let at = proxy.http[0];
    let r = get(at, "/sleep/2000").await;
    assert_eq!(r.status, 504, "request timeout: {}", r.body);
    let r = get(at, "/sleep/1500").await;
    assert_eq!(r.status, 504, "backend request timeout: {}", r.body);
    // Without a timeout in its rule the same kind of request is served.
    assert_eq!(get(at, "/sleep/400").await.status, 200);
    // A rule's request timeout replaces the service's annotation; a rule without one keeps it.
    let proxy = TestProxy::start(|p| {
        let mut s = services(
            &b,
            p.http[0],
            vec![
                timed(0, "/sleep/600", Some(5000), None),
                rule(1, prefix("/"), &[]),
            ],
        );
        s[0].options.timeout_ms = Some(300);
        table(1, s)
    });
    let at = proxy.http[0];
    assert_eq!(get(at, "/sleep/600").await.status, 200, "the rule's 5 s");
    assert_eq!(
        get(at, "/sleep/700").await.status,
        504,
        "the annotation's 300 ms"
    );
    assert!(
        metric("maille_proxy_timeouts_total", &[("service", "web")]) >= 2.0,
        "timeouts counted"
    );
}

/// A backend whose every response announces 20 bytes of body and sends one each 100 ms.
async fn trickling_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 20\r\nx-backend: trickle\r\n\r\n";
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..20 {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    if s.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_timeout_covers_a_trickling_response_body() {
    let trickle = trickling_backend().await;
    let timed = RouteSpec {
        timeouts: Some(RouteTimeoutsSpec {
            request_ms: Some(500),
            backend_request_ms: None,
        }),
        ..rule(0, prefix("/timed"), &[])
    };
    let proxy = TestProxy::start(|p| {
        let mut web = http("shop", "web", p.http[0], &[&trickle.to_string()]);
        web.routes = vec![timed, rule(1, prefix("/"), &[])];
        table(1, vec![web])
    });
    // Each byte comes well within any read timeout; only the whole-response deadline can stop
    // it. Without a timeout in its rule the whole body arrives.
    let full = get(proxy.http[0], "/full").await;
    assert_eq!((full.status, full.body.len()), (200, 20));
    let cut = get(proxy.http[0], "/timed").await;
    assert_eq!(cut.status, 200, "the header was already sent");
    assert!(cut.body.len() < 20, "cut at the deadline: {:?}", cut.body);
}

/// A backend answering 503 to everything (HTTP/1.1 and h2c), counting requests.
async fn failing_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    async move {
                        http::Response::builder()
                            .status(503)
                            .header("x-backend", "failing")
                            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                b"busy",
                            )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_codes_go_to_another_endpoint() {
    retried_codes(None, "web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_codes_go_to_another_endpoint_over_h2c_upstreams() {
    retried_codes(Some(Scheme::H2c), "grpc").await;
}

async fn retried_codes(scheme: Option<Scheme>, name: &'static str) {
    let b = backends().await;
    let (failing, failing_hits) = failing_backend().await;
    let mut retried = rule(0, prefix("/retried"), &[]);
    retried.retry = Some(RouteRetrySpec {
        attempts: 2,
        codes: vec![503],
        backoff_ms: Some(5),
    });
    let plain = rule(1, prefix("/plain"), &[]);
    let proxy = TestProxy::start(|p| {
        let mut web = http(
            "shop",
            name,
            p.http[0],
            &[&b.web.addr_str(), &failing.to_string()],
        );
        web.routes = vec![retried, plain];
        // The service's retry budget (100%) is the one the rule's retries draw from.
        web.options.retry_attempts = Some(1);
        web.options.retry_budget_percent = Some(100);
        web.options.scheme = scheme.map(SchemeSpec::Known);
        table(1, vec![web])
    });
    let at = proxy.http[0];
    let host = format!("{name}.shop.maille.mesh");
    // Without retry, the failing endpoint's 503 reaches the client.
    let plain = spread_at(at, &host, "/plain", 40).await;
    assert!(plain.get("503").copied().unwrap_or(0) > 0, "{plain:?}");
    let before = failing_hits.load(Ordering::Relaxed);
    let retries_before = metric("maille_proxy_retries_total", &[("service", name)]);
    let seen = spread_at(at, &host, "/retried", 40).await;
    assert_eq!(
        seen.get("web"),
        Some(&40),
        "every 503 retried on the other endpoint: {seen:?}"
    );
    let failed = failing_hits.load(Ordering::Relaxed) - before;
    assert!(failed > 0, "the failing endpoint was tried");
    let retries = metric("maille_proxy_retries_total", &[("service", name)]) - retries_before;
    assert_eq!(retries, failed as f64, "one retry per 503");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_methods_route_by_path_over_h2c() {
    let b = backends().await;
    let grpc = |i, kind, value: &str, backend: &str| RouteSpec {
        kind: RouteKind::Grpc,
        matches: RouteMatchSpec {
            method: Some("POST".into()),
            ..path_match(kind, value)
        },
        ..rule(i, RouteMatchSpec::default(), &[(backend, 1)])
    };
    let proxy = start(
        &b,
        vec![
            grpc(0, PathMatchType::Exact, "/shop.Cart/Add", "web-v2"),
            grpc(1, PathMatchType::PathPrefix, "/shop.Cart/", "web-v3"),
        ],
    );
    let client = HttpClient::h2c();
    let at = proxy.http[0];
    let r = client
        .request("POST", at, WEB, "/shop.Cart/Add")
        .await
        .unwrap();
    assert_eq!(r.backend(), Some("v2"));
    let r = client
        .request("POST", at, WEB, "/shop.Cart/Remove")
        .await
        .unwrap();
    assert_eq!(r.backend(), Some("v3"));
    let r = client
        .request("POST", at, WEB, "/shop.Other/Add")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_win_over_a_traffic_split_and_leave_other_services_alone() {
    let b = backends().await;
    let proxy = TestProxy::start(|p| {
        let mut s = services(&b, p.http[0], vec![rule(0, prefix("/"), &[("web-v2", 1)])]);
        s[0].splits.push(SplitSpec {
            name: "shop/split".into(),
            matches: vec![],
            backends: to(&[("web-v3", 1)]),
        });
        let table: TableSpec = table(1, s);
        table
    });
    let at = proxy.http[0];
    assert_eq!(spread(at, "/", 10).await.get("v2"), Some(&10));
    let r = send(at, "GET", "web-v3.shop.maille.mesh", "/", &[]).await;
    assert_eq!(
        r.backend(),
        "v3",
        "a service without routes is served as before"
    );
}

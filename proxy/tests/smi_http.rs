//! SMI over HTTP through the real proxy: traffic splits (by weight, with matches, nested, all
//! zero) and access rules (ACL mode), with clients bound to distinct loopback addresses
//! (127.0.0.2, 127.0.0.3) standing for different pods.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use config_model::testing::{http, table};
use config_model::{
    AccessRuleSpec, HttpMatchSpec, ServiceSpec, SplitBackendSpec, SplitSpec, TableSpec,
};
use maille_proxy::testing::{HttpBackend, TestProxy, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const ALLOWED: [u8; 4] = [127, 0, 0, 2];
const OTHER: [u8; 4] = [127, 0, 0, 3];

/// Status, `x-backend` header and body of one HTTP/1.1 request sent from `src`.
async fn request(
    src: [u8; 4],
    to: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::from((src, 0))).unwrap();
    let mut conn = tokio::time::timeout(PATIENCE, sock.connect(to))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
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
    let status = head[9..12].parse().unwrap();
    let backend = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-backend: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, backend, body.to_string())
}

fn split(name: &str, backends: &[(&str, u32)], matches: Vec<HttpMatchSpec>) -> SplitSpec {
    SplitSpec {
        name: format!("shop/{name}"),
        matches,
        backends: backends
            .iter()
            .map(|(n, w)| SplitBackendSpec {
                namespace: "shop".into(),
                name: n.to_string(),
                port: 80,
                weight: *w,
            })
            .collect(),
    }
}

/// Counts which backend answered `n` requests to `host`.
async fn spread(
    to: SocketAddr,
    host: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (status, backend, _) = request([127, 0, 0, 1], to, host, "/", headers).await;
        assert_eq!(status, 200);
        *seen.entry(backend).or_insert(0) += 1;
    }
    seen
}

struct Backends {
    root: HttpBackend,
    v1: HttpBackend,
    v2: HttpBackend,
    v3: HttpBackend,
}

async fn backends() -> Backends {
    Backends {
        root: HttpBackend::start("root").await,
        v1: HttpBackend::start("v1").await,
        v2: HttpBackend::start("v2").await,
        v3: HttpBackend::start("v3").await,
    }
}

fn services(b: &Backends, port: u16) -> Vec<ServiceSpec> {
    vec![
        http("shop", "web", port, &[&b.root.addr_str()]),
        http("shop", "web-v1", port, &[&b.v1.addr_str()]),
        http("shop", "web-v2", port, &[&b.v2.addr_str()]),
        http("shop", "web-v3", port, &[&b.v3.addr_str()]),
    ]
}

fn with_splits(b: &Backends, port: u16, splits: Vec<(usize, SplitSpec)>) -> TableSpec {
    let mut s = services(b, port);
    for (i, sp) in splits {
        s[i].splits.push(sp);
    }
    table(1, s)
}

const WEB: &str = "web.shop.maille.mesh";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_spread_by_weight_within_tolerance() {
    let b = backends().await;
    let proxy = TestProxy::start(|p| {
        with_splits(
            &b,
            p.http[0],
            vec![(0, split("half", &[("web-v1", 50), ("web-v2", 50)], vec![]))],
        )
    });
    let to = proxy.http[0];
    // 50/50 over 300 requests: 150 ± 40 (over 4 standard deviations).
    let seen = spread(to, WEB, 300, &[]).await;
    assert_eq!(seen.get("root"), None, "{seen:?}");
    let v1 = seen.get("v1").copied().unwrap_or(0);
    assert!((110..=190).contains(&v1), "{seen:?}");

    proxy.set_table(&with_splits(
        &b,
        to.port(),
        vec![(
            0,
            split("canary", &[("web-v1", 90), ("web-v2", 10)], vec![]),
        )],
    ));
    // 90/10 over 300 requests: v2 gets 30 ± 20.
    let seen = spread(to, WEB, 300, &[]).await;
    let v2 = seen.get("v2").copied().unwrap_or(0);
    assert!((10..=50).contains(&v2), "{seen:?}");
    assert_eq!(seen.get("v1").copied().unwrap_or(0) + v2, 300, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_with_match_nested_split_and_all_zero_weights() {
    let b = backends().await;
    let firefox = HttpMatchSpec {
        name: Some("firefox-users".into()),
        headers: [("user-agent".to_string(), ".*Firefox.*".to_string())].into(),
        ..Default::default()
    };
    let proxy = TestProxy::start(|p| {
        with_splits(
            &b,
            p.http[0],
            vec![
                // Firefox users go to v2, which is itself split to v3; others stay on the root.
                (0, split("ab", &[("web-v2", 1)], vec![firefox.clone()])),
                (2, split("inner", &[("web-v3", 1)], vec![])),
                // Nothing may reach v1 through its split.
                (1, split("off", &[("web-v3", 0)], vec![])),
            ],
        )
    });
    let to = proxy.http[0];
    let seen = spread(to, WEB, 20, &[("user-agent", "curl/8")]).await;
    assert_eq!(seen, [("root".to_string(), 20)].into());
    let seen = spread(to, WEB, 20, &[("user-agent", "Mozilla/5.0 Firefox/128")]).await;
    assert_eq!(
        seen,
        [("v3".to_string(), 20)].into(),
        "match, then the nested split"
    );
    let (status, _, body) = request([127, 0, 0, 1], to, "web-v1.shop.maille.mesh", "/", &[]).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "maille: traffic split shop/off sends no traffic (all weights are 0)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_matches_see_the_normalised_path() {
    let b = backends().await;
    let canary = HttpMatchSpec {
        path_regex: Some("/canary(/.*)?".into()),
        methods: vec!["GET".into()],
        ..Default::default()
    };
    let proxy = TestProxy::start(|p| {
        with_splits(
            &b,
            p.http[0],
            vec![(0, split("canary", &[("web-v1", 1)], vec![canary]))],
        )
    });
    let to = proxy.http[0];
    let local = [127, 0, 0, 1];
    for (path, want) in [
        ("/canary/x", "v1"),
        ("/x/../canary/y", "v1"),
        ("/%63anary", "v1"),
        ("//canary", "v1"),
        ("/canary/../x", "root"),
        ("/canary/%2e%2e/x", "root"),
    ] {
        let (status, backend, _) = request(local, to, WEB, path, &[]).await;
        assert_eq!((status, backend.as_str()), (200, want), "{path}");
    }
    let (status, _, body) = request(local, to, WEB, "/canary/..;/x", &[]).await;
    assert_eq!(status, 400, "{body}");
}

fn guarded(b: &Backends, port: u16, rules: Vec<AccessRuleSpec>) -> TableSpec {
    let mut s = services(b, port);
    s[0].access = rules;
    let mut t = table(1, s);
    t.acl = true;
    t
}

fn allow(matches: Option<Vec<HttpMatchSpec>>) -> AccessRuleSpec {
    AccessRuleSpec {
        name: "shop/web-to-api".into(),
        sources: vec!["127.0.0.2".into()],
        identities: vec![],
        http: matches,
    }
}

fn denied_count(source: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("maille_proxy_acl_denied_total{")
                && l.contains("service=\"web\"")
                && l.contains(&format!("source=\"{source}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_allows_listed_sources_on_their_routes_and_denies_the_rest() {
    let b = backends().await;
    let proxy = TestProxy::start(|p| guarded(&b, p.http[0], vec![allow(None)]));
    let to = proxy.http[0];

    let (status, backend, _) = request(ALLOWED, to, WEB, "/", &[]).await;
    assert_eq!((status, backend.as_str()), (200, "root"));
    let before = denied_count("127.0.0.3");
    let (status, _, body) = request(OTHER, to, WEB, "/", &[]).await;
    assert_eq!(status, 403);
    assert_eq!(
        body,
        "maille: access denied: no TrafficTarget allows 127.0.0.3 to reach shop/web:80\n"
    );
    assert_eq!(denied_count("127.0.0.3"), before + 1.0);

    // Path-restricted: /api (and below) allowed, / denied.
    let api = HttpMatchSpec {
        path_regex: Some("/api(/.*)?".into()),
        methods: vec!["*".into()],
        ..Default::default()
    };
    proxy.set_table(&guarded(&b, to.port(), vec![allow(Some(vec![api]))]));
    assert_eq!(request(ALLOWED, to, WEB, "/api", &[]).await.0, 200);
    assert_eq!(
        request(ALLOWED, to, WEB, "/api/orders?x=1", &[]).await.0,
        200
    );
    assert_eq!(request(ALLOWED, to, WEB, "/", &[]).await.0, 403);
    assert_eq!(request(ALLOWED, to, WEB, "/apix", &[]).await.0, 403);

    // Header-restricted.
    let canary = HttpMatchSpec {
        headers: [("x-canary".to_string(), "true".to_string())].into(),
        ..Default::default()
    };
    proxy.set_table(&guarded(&b, to.port(), vec![allow(Some(vec![canary]))]));
    assert_eq!(
        request(ALLOWED, to, WEB, "/", &[("x-canary", "true")])
            .await
            .0,
        200
    );
    assert_eq!(
        request(ALLOWED, to, WEB, "/", &[("x-canary", "yes")])
            .await
            .0,
        403
    );
    assert_eq!(
        request(OTHER, to, WEB, "/", &[("x-canary", "true")])
            .await
            .0,
        403
    );

    // The TrafficTarget is deleted: the next table has no rule, and the client is denied again.
    proxy.set_table(&guarded(&b, to.port(), vec![]));
    assert_eq!(
        request(ALLOWED, to, WEB, "/", &[("x-canary", "true")])
            .await
            .0,
        403
    );
}

//! Gateway API scenarios end to end, in the spirit of the mesh conformance tests: the real
//! `maille-controller` on a manifests folder holding Services, EndpointSlices and HTTPRoutes,
//! the real `maille-proxy` pulling its table, backends on loopback that say who they are and
//! what they were sent. Split by weight, header match, path match, header modifiers, redirect,
//! rewrite, timeout, no match (404), and a route Maille refuses (reported, never applied).
//!
//! `scripts/test-all` builds every binary before the tests; the proxy binary is looked up next
//! to this test's own target directory.

use maille_controller::testing::write_manifest;
use std::time::{Duration, Instant};

use maille_controller::testing::{eventually, http_backend, LocalMesh};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP/1.1 backend answering `<name> <path>` and one `h:<header>=<value>` line per request
/// header; a path starting with `/slow` is answered after two seconds.
fn backend(name: &'static str) -> u16 {
    http_backend(move |head| {
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_string();
        let mut body = format!("{name} {path}\n");
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                body.push_str(&format!("h:{k}={}\n", v.trim()));
            }
        }
        if path.starts_with("/slow") {
            std::thread::sleep(Duration::from_secs(2));
        }
        body
    })
}

/// An answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The backend that answered (first word of the body).
    fn backend(&self) -> &str {
        self.body.split(' ').next().unwrap_or("")
    }
}

/// One GET to `web` on a fresh connection.
async fn request(port: u16, path: &str, headers: &[(&str, &str)]) -> Option<Answer> {
    send(port, "GET", "web", path, headers).await
}

/// One request to a Service of `shop` on a fresh connection.
async fn send(
    port: u16,
    method: &str,
    service: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<Answer> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {service}.shop.maille.mesh\r\ncontent-length: 0\r\nconnection: close\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(String::from_utf8_lossy(&out).into_owned())
    };
    let out = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()??;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

fn service(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{ports: [{{name: http, port: 80, targetPort: http}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"], conditions: {{ready: true}}}}]\n"
    )
}

fn ports(port: u16) -> String {
    format!("ports: [{{name: http, port: {port}, protocol: TCP}}]\n")
}

const ROUTES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: web, port: 80, weight: 3}, {name: web-v2, port: 80, weight: 1}]
  - matches: [{path: {type: PathPrefix, value: /canary}, headers: [{name: x-canary, value: "on"}]}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /canary}}]
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-set, value: by-route}], add: [{name: x-added, value: "yes"}], remove: [x-secret]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-served-by, value: maille}]}
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: shop.example, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart}]
  rules:
  - matches: [{method: {service: shop.v1.Cart, method: Checkout}}]
    backendRefs: [{name: cart-v2, port: 80}]
  - backendRefs: [{name: cart, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirror, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-v2, port: 80}}}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_scenarios_through_the_real_binaries() {
    let (v1, v2) = (backend("web-v1"), backend("web-v2"));
    let (cart1, cart2) = (backend("cart-v1"), backend("cart-v2"));
    let dir = tempfile::tempdir().unwrap();
    write_manifest(dir.path(), "web.yaml", &(service("web") + &ports(v1)));
    write_manifest(dir.path(), "web-v2.yaml", &(service("web-v2") + &ports(v2)));
    write_manifest(dir.path(), "cart.yaml", &(service("cart") + &ports(cart1)));
    write_manifest(
        dir.path(),
        "cart-v2.yaml",
        &(service("cart-v2") + &ports(cart2)),
    );

    let mesh = LocalMesh::start(env!("CARGO_BIN_EXE_maille-controller"), dir.path());
    let (api, http) = (mesh.api, mesh.http);

    // Without routes, any path reaches the Service.
    eventually(
        "first table at the proxy",
        Duration::from_secs(30),
        async || {
            request(http, "/anything", &[])
                .await
                .filter(|a| a.status == 200 && a.backend() == "web-v1")
        },
    )
    .await;

    write_manifest(dir.path(), "routes.yaml", ROUTES);
    // Path match: the routes are in effect (an exact path to web-v2).
    eventually(
        "the routes at the proxy",
        Duration::from_secs(5),
        async || {
            request(http, "/exact", &[])
                .await
                .filter(|a| a.status == 200 && a.backend() == "web-v2")
        },
    )
    .await;

    // No match: 404, as the Gateway API requires once routes attach to the Service.
    let a = request(http, "/nomatch", &[]).await.unwrap();
    assert_eq!(a.status, 404, "{}", a.body);
    // An exact match is exact.
    assert_eq!(request(http, "/exact/more", &[]).await.unwrap().status, 404);

    // Split by weight 3:1 (the parent itself is one of the backends).
    let mut counts = [0usize; 2];
    for _ in 0..200 {
        let a = request(http, "/split", &[]).await.unwrap();
        assert_eq!(a.status, 200);
        match a.backend() {
            "web-v1" => counts[0] += 1,
            "web-v2" => counts[1] += 1,
            other => panic!("{other}"),
        }
    }
    let share = counts[0] as f64 / 200.0;
    assert!(
        (0.62..=0.88).contains(&share),
        "3:1 expected, got {counts:?}"
    );

    // Header match: the match with the header wins over the one without.
    let canary = request(http, "/canary", &[("x-canary", "on")])
        .await
        .unwrap();
    assert_eq!((canary.status, canary.backend()), (200, "web-v2"));
    let plain = request(http, "/canary", &[("x-canary", "off")])
        .await
        .unwrap();
    assert_eq!(
        (plain.status, plain.backend()),
        (200, "web-v1"),
        "no backendRefs: the parent Service"
    );

    // Header modifiers, both ways.
    let a = request(
        http,
        "/headers",
        &[("x-set", "by-client"), ("x-secret", "hunter2")],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    assert!(a.body.contains("h:x-set=by-route\n"), "{}", a.body);
    assert!(!a.body.contains("by-client"), "{}", a.body);
    assert!(a.body.contains("h:x-added=yes\n"), "{}", a.body);
    assert!(!a.body.contains("x-secret"), "{}", a.body);
    assert_eq!(a.header("x-served-by"), Some("maille"));

    // Redirect: answered by the proxy, the backend never sees it.
    let a = request(http, "/old/page", &[]).await.unwrap();
    assert_eq!(a.status, 301);
    let location = a.header("location").unwrap_or_default();
    assert!(
        location.starts_with("https://shop.example") && location.ends_with("/old/page"),
        "{location}"
    );

    // Rewrite: the backend sees the new prefix.
    let a = request(http, "/rewrite/item", &[]).await.unwrap();
    assert_eq!(a.status, 200);
    assert!(a.body.starts_with("web-v1 /rewritten/item\n"), "{}", a.body);

    // Timeout: a backend answering after 2 s is cut at the rule's 300 ms.
    let start = Instant::now();
    let a = request(http, "/slow", &[]).await.unwrap();
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "{:?}",
        start.elapsed()
    );

    // GRPCRoute: service and method become a POST to /<service>/<method> (the routing of
    // gRPC proper over h2c is in proxy/tests/routes.rs; here the same path and method over
    // HTTP/1.1 show what the controller made of the route).
    let a = send(http, "POST", "cart", "/shop.v1.Cart/Checkout", &[])
        .await
        .unwrap();
    assert_eq!((a.status, a.backend()), (200, "cart-v2"), "{}", a.body);
    let a = send(http, "POST", "cart", "/shop.v1.Cart/AddItem", &[])
        .await
        .unwrap();
    assert_eq!((a.status, a.backend()), (200, "cart-v1"), "{}", a.body);
    let a = send(http, "GET", "cart", "/shop.v1.Cart/Checkout", &[])
        .await
        .unwrap();
    assert_eq!(a.status, 404, "gRPC matches are POSTs: {}", a.body);

    // The refused route is reported, and none of it is applied.
    assert_eq!(request(http, "/mirror", &[]).await.unwrap().status, 404);
    let services: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{api}/api/services"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = services.to_string();
    assert!(
        text.contains("HTTPRoute") && text.contains("RequestMirror"),
        "{text}"
    );

    // Removing the routes gives the Service back its plain routing.
    std::fs::remove_file(dir.path().join("routes.yaml")).unwrap();
    eventually("routes gone", Duration::from_secs(5), async || {
        request(http, "/nomatch", &[])
            .await
            .filter(|a| a.status == 200 && a.backend() == "web-v1")
    })
    .await;
}

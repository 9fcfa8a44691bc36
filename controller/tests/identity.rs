//! Mesh identity end to end, local mode: the real `maille-controller` with `--identity-dir` on
//! a manifests folder, real `maille-proxy` processes with `--node-name` and the bootstrap token.
//! A proxy of the folder gets a certificate naming its ServiceAccount and node and renews it
//! (seconds-long lifetimes here) while traffic flows; a wrong token or a node without a proxy
//! Pod gets nothing and the reason; a proxy whose controller is gone says so before expiry; the
//! CA files rotated in three steps under two running node proxies, which renew from the new
//! root while requests cross from one node to the other through the tunnel, none failing.
//!
//! Needs the proxy binary (`cargo build --workspace --bins`, as scripts/test-all does).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use maille_controller::testing::{
    eventually, free_port, http_backend, proxy_binary, write_manifest, KillOnDrop,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SPIFFE: &str = "spiffe://mesh.test/ns/maille/sa/maille-proxy";

/// The folder: a meshed HTTP service with one endpoint, and node proxy Pods on node-a and
/// node-b (node-c runs only a client).
fn manifests(dir: &Path, backend: u16) {
    let proxy_pod = |name: &str, node: &str, ip: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: maille\n  labels:\n    app.kubernetes.io/name: maille-proxy\nspec:\n  nodeName: {node}\n  serviceAccountName: maille-proxy\n  containers: [{{name: proxy, image: maille-proxy}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n"
        )
    };
    let text = [
        proxy_pod("proxy-a", "node-a", "127.0.0.1"),
        proxy_pod("proxy-b", "node-b", "127.0.0.2"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: client\n  namespace: shop\nspec:\n  nodeName: node-c\n  containers: [{name: c, image: c}]\nstatus:\n  phase: Running\n  podIP: 127.0.0.3\n".to_string(),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  clusterIP: 10.96.0.20\n  ports:\n    - name: http\n      port: 80\n".to_string(),
        format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: web\naddressType: IPv4\nendpoints:\n  - addresses: [\"127.0.0.1\"]\n    conditions: {{ready: true}}\nports:\n  - name: http\n    port: {backend}\n    protocol: TCP\n"),
    ]
    .join("---\n");
    std::fs::write(dir.join("mesh.yaml"), text).unwrap();
}

/// Two nodes: node-a's proxy on 127.0.0.2 with a client Pod (127.0.0.10), node-b's on
/// 127.0.0.3 running the one endpoint of `web` (the backend, on 127.0.0.1 of the machine).
fn two_node_manifests(dir: &Path, backend: u16) {
    let pod = |name: &str, ns: &str, node: &str, ip: &str, sa: &str, labels: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {labels}}}\nspec: {{nodeName: {node}, serviceAccountName: {sa}, containers: [{{name: c, image: x}}]}}\nstatus: {{podIP: {ip}, phase: Running}}\n"
        )
    };
    let proxy = "{app.kubernetes.io/name: maille-proxy}";
    let text = [
        pod("proxy-a", "maille", "node-a", "127.0.0.2", "maille-proxy", proxy),
        pod("proxy-b", "maille", "node-b", "127.0.0.3", "maille-proxy", proxy),
        pod("client", "shop", "node-a", "127.0.0.10", "client", "{}"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}]}\n".to_string(),
        format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"127.0.0.1\"], nodeName: node-b}}]\nports: [{{name: http, port: {backend}}}]\n"),
    ]
    .join("---\n");
    std::fs::write(dir.join("mesh.yaml"), text).unwrap();
}

/// One request from the client Pod's address (127.0.0.10) to node-a's proxy; the status.
async fn request_from_client(port: u16) -> Option<u16> {
    request_via([127, 0, 0, 10], [127, 0, 0, 2], port).await
}

/// An HTTP/1.1 backend answering `ok` on every request of every connection.
fn backend() -> u16 {
    http_backend(|_| "ok".into())
}

struct Controller {
    _proc: KillOnDrop,
    api: u16,
    http_port: u16,
}

fn start_controller(manifests: &Path, identity: &Path, lifetime: &str) -> Controller {
    start_controller_with(manifests, identity, lifetime, &[])
}

fn start_controller_with(
    manifests: &Path,
    identity: &Path,
    lifetime: &str,
    extra: &[String],
) -> Controller {
    let api = free_port();
    let http_port = free_port();
    let proc = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_maille-controller"))
            .arg("--manifests")
            .arg(manifests)
            .arg("--identity-dir")
            .arg(identity)
            .args(["--trust-domain", "mesh.test"])
            .args(["--certificate-lifetime", lifetime])
            .args(["--api-addr", &format!("127.0.0.1:{api}")])
            .args(["--http-ports", &format!("{http_port}-{http_port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start maille-controller"),
    );
    Controller {
        _proc: proc,
        api,
        http_port,
    }
}

struct Proxy {
    _proc: KillOnDrop,
    admin: u16,
    /// The tunnel listener's address.
    tunnel: (String, u16),
}

fn start_proxy(api: u16, http_port: u16, node: &str, token_file: &Path, tmp: &Path) -> Proxy {
    start_proxy_with(api, http_port, node, token_file, tmp, &[])
}

fn start_proxy_with(
    api: u16,
    http_port: u16,
    node: &str,
    token_file: &Path,
    tmp: &Path,
    extra: &[String],
) -> Proxy {
    start_proxy_at(
        api,
        http_port,
        node,
        ("127.0.0.1", free_port()),
        token_file,
        tmp,
        extra,
    )
}

/// A node proxy listening on `ip` (its HTTP port and its tunnel port `tunnel`).
fn start_proxy_at(
    api: u16,
    http_port: u16,
    node: &str,
    (ip, tunnel): (&str, u16),
    token_file: &Path,
    tmp: &Path,
    extra: &[String],
) -> Proxy {
    let admin = free_port();
    let proc = KillOnDrop(
        Command::new(proxy_binary())
            .args(["--controller-url", &format!("http://127.0.0.1:{api}")])
            .args(["--node-name", node])
            .arg("--identity-token-file")
            .arg(token_file)
            .args(["--listen-ip", ip])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--http-ports", &http_port.to_string()])
            .args(["--tcp-ports", "none", "--udp-ports", "none"])
            .args(["--tunnel-port", &tunnel.to_string()])
            .args(extra)
            .arg("--upgrade-sock")
            .arg(tmp.join(format!("upgrade-{node}-{admin}.sock")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start maille-proxy"),
    );
    Proxy {
        _proc: proc,
        admin,
        tunnel: (ip.to_string(), tunnel),
    }
}

async fn get_text(url: &str) -> Option<String> {
    let r = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.text().await.ok()
}

/// The sum of the samples of `name` whose labels contain `labels` in a Prometheus text page.
fn metric(page: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = series.split_once('{').unwrap_or((series, ""));
        if n == name && l.contains(labels) {
            *found.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    found
}

async fn identities(api: u16) -> Vec<serde_json::Value> {
    get_text(&format!("http://127.0.0.1:{api}/api/identities"))
        .await
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// One request through the proxy's HTTP listener on a new connection; the status.
async fn request(port: u16) -> Option<u16> {
    request_via([127, 0, 0, 1], [127, 0, 0, 1], port).await
}

/// `GET /` for `web.shop.maille.mesh` from `from` to `to`:`port` on a new connection; the
/// status.
async fn request_via(from: [u8; 4], to: [u8; 4], port: u16) -> Option<u16> {
    let exchange = async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind((from, 0).into()).ok()?;
        let mut s = socket.connect((to, port).into()).await.ok()?;
        s.write_all(b"GET / HTTP/1.1\r\nhost: web.shop.maille.mesh\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        String::from_utf8_lossy(&out)
            .split(' ')
            .nth(1)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()?
}

/// The sum of the samples of `name` with `result="<result>"`, 0 when there are none.
fn result_count(page: &str, name: &str, result: &str) -> f64 {
    metric(page, name, &format!("result=\"{result}\"")).unwrap_or(0.0)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The folder of [`manifests`] in `tmp/m` with a backend, and a controller on it whose
/// identity folder is `tmp/identity`, once it made its bootstrap token: (the identity folder,
/// the controller, the token file).
async fn start_mesh(tmp: &Path, lifetime: &str) -> (PathBuf, Controller, PathBuf) {
    let (folder, identity) = (tmp.join("m"), tmp.join("identity"));
    std::fs::create_dir(&folder).unwrap();
    manifests(&folder, backend());
    let controller = start_controller(&folder, &identity, lifetime);
    let token = identity.join("bootstrap-token");
    eventually("the bootstrap token", Duration::from_secs(15), async || {
        token.exists().then_some(())
    })
    .await;
    (identity, controller, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_proxy_gets_its_identity_renews_it_under_traffic_and_warns_when_the_controller_is_gone(
) {
    let tmp = tempfile::tempdir().unwrap();
    let (identity, controller, token) = start_mesh(tmp.path(), "4s").await;
    for f in ["ca.crt", "ca.key"] {
        assert!(identity.join(f).exists(), "{f} made on first start");
    }
    let proxy = start_proxy(
        controller.api,
        controller.http_port,
        "node-a",
        &token,
        tmp.path(),
    );
    let ready = format!("http://127.0.0.1:{}/ready", proxy.admin);

    let detail = eventually(
        "the proxy holds its certificate",
        Duration::from_secs(30),
        async || {
            get_text(&ready)
                .await
                .filter(|t| t.starts_with("ready") && t.contains(SPIFFE))
        },
    )
    .await;
    assert!(detail.contains("on node node-a"), "{detail}");
    let rows = identities(controller.api).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["node"], "node-a");
    assert_eq!(rows[0]["spiffe_id"], SPIFFE);
    assert_eq!(rows[0]["pod"], "maille/proxy-a");
    let first_serial = rows[0]["serial"].as_str().unwrap().to_string();
    let page = get_text(&format!("http://127.0.0.1:{}/metrics", proxy.admin))
        .await
        .unwrap();
    let expiry = metric(
        &page,
        "maille_proxy_identity_certificate_expiry_timestamp_seconds",
        "",
    )
    .unwrap();
    assert!(
        expiry > unix_now() && expiry < unix_now() + 10.0,
        "{expiry}"
    );

    // Steady traffic across several renewals (every ~2 s): not one request fails.
    let start = Instant::now();
    let (mut ok, mut failed) = (0, 0);
    while start.elapsed() < Duration::from_secs(7) {
        match request(controller.http_port).await {
            Some(200) => ok += 1,
            _ => failed += 1,
        }
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during renewals",
        ok + failed
    );
    let rows = identities(controller.api).await;
    let issued = rows[0]["issued"].as_u64().unwrap();
    assert!(issued >= 3, "renewed at about half of 4 s: {rows:?}");
    assert_ne!(rows[0]["serial"].as_str().unwrap(), first_serial);
    let page = get_text(&format!("http://127.0.0.1:{}/metrics", proxy.admin))
        .await
        .unwrap();
    assert!(
        metric(
            &page,
            "maille_proxy_identity_certificates_total",
            "kind=\"renewal\""
        )
        .unwrap()
            >= 2.0,
        "{page}"
    );

    // The tunnel port admits a peer with a certificate of this mesh (signed here with the
    // CA of the identity folder) and refuses a plain client and a foreign CA's certificate.
    let mesh_ca = TestCa::from_dir(&identity);
    let peer = mesh_ca.leaf(SPIFFE, "node-b");
    tunnel_handshake(&proxy.tunnel, &mesh_ca, Some(peer))
        .await
        .expect("a mesh peer gets through the tunnel handshake");
    let foreign = TestCa::new();
    let forged = foreign.leaf(SPIFFE, "node-b");
    assert!(tunnel_handshake(&proxy.tunnel, &mesh_ca, Some(forged))
        .await
        .is_err());
    assert!(tunnel_handshake(&proxy.tunnel, &mesh_ca, None)
        .await
        .is_err());
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", proxy.tunnel.1))
        .await
        .unwrap();
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = plain.read_to_end(&mut out).await;
    assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1"));
    let page = get_text(&format!("http://127.0.0.1:{}/metrics", proxy.admin))
        .await
        .unwrap();
    let tunnel = |r: &str| result_count(&page, "maille_proxy_tunnel_handshakes_total", r);
    assert!(tunnel("ok") >= 1.0 && tunnel("unknown_ca") >= 1.0, "{page}");

    // The controller goes away: the proxy keeps its certificate and says, before it ends,
    // that it is not renewed; then that it expired. Traffic continues on the last table.
    drop(controller._proc);
    let warned = eventually(
        "a warning before expiry",
        Duration::from_secs(10),
        async || get_text(&ready).await.filter(|t| t.contains("WARNING")),
    )
    .await;
    assert!(
        warned.contains("not renewed") || warned.contains("EXPIRED"),
        "{warned}"
    );
    assert!(warned.contains("requests failing"), "{warned}");
    eventually("expired, said so", Duration::from_secs(10), async || {
        get_text(&ready).await.filter(|t| t.contains("EXPIRED"))
    })
    .await;
    let page = get_text(&format!("http://127.0.0.1:{}/metrics", proxy.admin))
        .await
        .unwrap();
    assert!(
        metric(
            &page,
            "maille_proxy_identity_renewal_failures_total",
            "reason=\"unreachable\""
        )
        .unwrap()
            >= 1.0,
        "{page}"
    );
    assert_eq!(request(controller.http_port).await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_a_node_without_a_proxy_pod_gets_no_certificate_and_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (folder, identity) = (tmp.path().join("m"), tmp.path().join("identity"));
    std::fs::create_dir(&folder).unwrap();
    manifests(&folder, backend());
    let controller = start_controller(&folder, &identity, "1h");
    let token = identity.join("bootstrap-token");
    eventually("the bootstrap token", Duration::from_secs(15), async || {
        token.exists().then_some(())
    })
    .await;
    let wrong = tmp.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-bootstrap-token-at-all\n").unwrap();

    // node-c runs a client but no proxy Pod; the other proxy claims node-a with a wrong token.
    let foreign = start_proxy(
        controller.api,
        controller.http_port,
        "node-c",
        &token,
        tmp.path(),
    );
    // Its token is not in the identity folder: it names the identity server and the roots
    // to pin itself. The wrong token goes over TLS and gets 401.
    let url = eventually("the identity URL", Duration::from_secs(15), async || {
        std::fs::read_to_string(identity.join("identity-url")).ok()
    })
    .await;
    let forged = start_proxy_with(
        controller.api,
        free_port(),
        "node-a",
        &wrong,
        tmp.path(),
        &[
            format!("--identity-url={}", url.trim()),
            format!("--identity-ca-file={}", identity.join("ca.crt").display()),
        ],
    );
    let reason = async |admin: u16, want: &'static str| {
        eventually(want, Duration::from_secs(30), async || {
            get_text(&format!("http://127.0.0.1:{admin}/ready"))
                .await
                .filter(|t| t.contains(want))
        })
        .await
    };
    let text = reason(foreign.admin, "runs no proxy Pod").await;
    assert!(
        text.contains("no certificate yet for node node-c"),
        "{text}"
    );
    assert!(text.contains("403"), "{text}");
    let text = reason(forged.admin, "not the bootstrap token").await;
    assert!(text.contains("401"), "{text}");
    assert!(identities(controller.api).await.is_empty());
    let page = get_text(&format!("http://127.0.0.1:{}/metrics", controller.api))
        .await
        .unwrap();
    let count = |result: &str| {
        result_count(
            &page,
            "maille_controller_certificate_requests_total",
            result,
        )
    };
    assert!(
        count("forbidden") >= 1.0 && count("unauthenticated") >= 1.0,
        "{page}"
    );
    assert_eq!(count("issued"), 0.0);
    let page = get_text(&format!("http://127.0.0.1:{}/metrics", foreign.admin))
        .await
        .unwrap();
    assert!(
        metric(
            &page,
            "maille_proxy_identity_renewal_failures_total",
            "reason=\"refused\""
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        metric(
            &page,
            "maille_proxy_identity_certificate_expiry_timestamp_seconds",
            ""
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_requests_go_over_tls_to_a_server_verified_against_the_pinned_root() {
    let tmp = tempfile::tempdir().unwrap();
    let (folder, identity) = (tmp.path().join("m"), tmp.path().join("identity"));
    std::fs::create_dir(&folder).unwrap();
    manifests(&folder, backend());
    let controller = start_controller(&folder, &identity, "4s");
    let token = identity.join("bootstrap-token");
    let url_file = identity.join("identity-url");
    eventually("the identity URL", Duration::from_secs(15), async || {
        std::fs::read_to_string(&url_file)
            .ok()
            .filter(|u| u.starts_with("https://127.0.0.1:"))
    })
    .await;
    let url = std::fs::read_to_string(&url_file)
        .unwrap()
        .trim()
        .to_string();

    // The plain API refuses a certificate request, naming where to go; nothing is issued.
    let r = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/api/identity/certificate",
            controller.api
        ))
        .bearer_auth(std::fs::read_to_string(&token).unwrap().trim())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let text = r.text().await.unwrap();
    assert!(text.contains(&url) && text.contains("TLS only"), "{text}");

    // A proxy pinned to the mesh root (its own copy) gets its certificate over TLS.
    let anchor = tmp.path().join("pinned-roots.pem");
    std::fs::copy(identity.join("ca.crt"), &anchor).unwrap();
    let pinned = start_proxy_with(
        controller.api,
        controller.http_port,
        "node-a",
        &token,
        tmp.path(),
        &[
            format!("--identity-url={url}"),
            format!("--identity-ca-file={}", anchor.display()),
        ],
    );
    let ready = format!("http://127.0.0.1:{}/ready", pinned.admin);
    eventually(
        "a certificate over TLS",
        Duration::from_secs(30),
        async || get_text(&ready).await.filter(|t| t.contains(SPIFFE)),
    )
    .await;
    // A proxy pinned to another root refuses the controller: no certificate, and the reason
    // names the server and the verification failure.
    let foreign = tmp.path().join("foreign-roots.pem");
    std::fs::write(&foreign, TestCa::new().cert.pem()).unwrap();
    let wrong = start_proxy_with(
        controller.api,
        free_port(),
        "node-b",
        &token,
        tmp.path(),
        &[format!("--identity-ca-file={}", foreign.display())],
    );
    let text = eventually("the refusal", Duration::from_secs(30), async || {
        get_text(&format!("http://127.0.0.1:{}/ready", wrong.admin))
            .await
            .filter(|t| t.contains("does not verify"))
    })
    .await;
    assert!(
        text.contains("no certificate yet for node node-b"),
        "{text}"
    );
    assert!(
        text.contains(&url) && text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(text.contains("the token was not sent"), "{text}");

    // The pinned roots of the first proxy change to another CA's (an impostor's anchor, or a
    // rotation done wrong): renewals fail as untrusted and the certificate held stays.
    let rows = identities(controller.api).await;
    assert_eq!(rows.len(), 1, "node-b got nothing: {rows:?}");
    std::fs::copy(&foreign, &anchor).unwrap();
    let metrics = format!("http://127.0.0.1:{}/metrics", pinned.admin);
    eventually(
        "renewals refused as untrusted",
        Duration::from_secs(15),
        async || {
            let page = get_text(&metrics).await?;
            (metric(
                &page,
                "maille_proxy_identity_renewal_failures_total",
                "reason=\"untrusted\"",
            )? >= 1.0)
                .then_some(())
        },
    )
    .await;
    let issued = identities(controller.api).await[0]["issued"]
        .as_u64()
        .unwrap();
    let detail = get_text(&ready).await.unwrap();
    assert!(
        detail.contains(SPIFFE) && detail.contains("does not verify"),
        "{detail}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        identities(controller.api).await[0]["issued"]
            .as_u64()
            .unwrap(),
        issued,
        "no request reached the controller"
    );
    // The right roots back: renewed again.
    std::fs::copy(identity.join("ca.crt"), &anchor).unwrap();
    eventually(
        "renewed with the right roots",
        Duration::from_secs(15),
        async || {
            let rows = identities(controller.api).await;
            (rows[0]["issued"].as_u64()? > issued).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_files_rotate_under_a_running_proxy_which_renews_from_the_new_root_with_no_failed_request(
) {
    let tmp = tempfile::tempdir().unwrap();
    let (folder, identity) = (tmp.path().join("m"), tmp.path().join("identity"));
    std::fs::create_dir(&folder).unwrap();
    two_node_manifests(&folder, backend());
    let tunnel = free_port();
    let controller = start_controller_with(
        &folder,
        &identity,
        "4s",
        &["--proxy-tunnel-port".into(), tunnel.to_string()],
    );
    let token = identity.join("bootstrap-token");
    eventually("the bootstrap token", Duration::from_secs(15), async || {
        token.exists().then_some(())
    })
    .await;
    let start = |node: &str, ip: &str| {
        let (api, http) = (controller.api, controller.http_port);
        start_proxy_at(api, http, node, (ip, tunnel), &token, tmp.path(), &[])
    };
    let (proxy, peer) = (start("node-a", "127.0.0.2"), start("node-b", "127.0.0.3"));
    for p in [&proxy, &peer] {
        eventually(
            "the proxy holds its certificate",
            Duration::from_secs(30),
            async || {
                get_text(&format!("http://127.0.0.1:{}/ready", p.admin))
                    .await
                    .filter(|t| t.starts_with("ready") && t.contains(SPIFFE))
            },
        )
        .await;
    }
    // Cross-node: node-a's client reaches node-b's endpoint through the tunnel.
    eventually(
        "a request through the tunnel",
        Duration::from_secs(30),
        async || (request_from_client(controller.http_port).await == Some(200)).then_some(()),
    )
    .await;
    // Each file is written beside and renamed over, as a deploy tool does.
    let replace = |file: &str, text: &str| write_manifest(&identity, file, text);
    let old = TestCa::from_dir(&identity);
    let old_pem = std::fs::read_to_string(identity.join("ca.crt")).unwrap();
    let new = TestCa::new();
    let new_pem = new.cert.pem();

    // Requests from node-a's client to node-b's endpoint all along, on new connections.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (stop, port) = (stop.clone(), controller.http_port);
        async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match request_from_client(port).await {
                    Some(200) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }
    });
    let handshake = async |roots: &TestCa, peer: &TestCa| {
        tunnel_handshake(&proxy.tunnel, roots, Some(peer.leaf(SPIFFE, "node-b")))
            .await
            .is_ok()
    };
    assert!(
        !handshake(&old, &new).await,
        "the new root is not trusted yet"
    );

    // Step 1: the new root after the signer. The proxy's next certificate comes with both
    // roots: it admits a peer of the new root on its tunnel.
    replace("ca.crt", &format!("{}\n{new_pem}", old_pem.trim_end()));
    eventually(
        "the proxy trusts the new root",
        Duration::from_secs(30),
        async || handshake(&old, &new).await.then_some(()),
    )
    .await;
    // Step 2: the new root signs (its certificate first, then its key: the pair in between is
    // refused and the old CA keeps signing). The proxy renews from the new root.
    replace("ca.crt", &format!("{new_pem}{old_pem}"));
    replace("ca.key", &new.key.serialize_pem());
    eventually(
        "the proxy's certificate is the new root's",
        Duration::from_secs(30),
        async || handshake(&new, &new).await.then_some(()),
    )
    .await;
    // Peers whose certificate the old root signed are still admitted during the overlap.
    assert!(handshake(&new, &old).await);
    // Step 3: the old root leaves the bundle; once the proxy renewed, its peers are refused.
    replace("ca.crt", &new_pem);
    eventually(
        "the old root no longer trusted",
        Duration::from_secs(30),
        async || (!handshake(&new, &old).await).then_some(()),
    )
    .await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = traffic.await.unwrap();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the rotation",
        ok + failed
    );
    assert!(ok > 0);
    let page = get_text(&format!("http://127.0.0.1:{}/metrics", proxy.admin))
        .await
        .unwrap();
    let streams = metric(
        &page,
        "maille_proxy_tunnel_streams_total",
        "direction=\"out\",protocol=\"tcp\",result=\"ok\"",
    )
    .unwrap_or(0.0);
    assert!(
        streams >= 1.0,
        "the requests went through the tunnel: {page}"
    );
    // One controller process throughout: three steps applied, the half-written pair refused.
    let page = get_text(&format!("http://127.0.0.1:{}/metrics", controller.api))
        .await
        .unwrap();
    let changes = |r: &str| result_count(&page, "maille_controller_identity_ca_changes_total", r);
    assert_eq!(changes("applied"), 3.0, "{page}");
    assert!(changes("refused") <= 1.0, "{page}");
    let rows = identities(controller.api).await;
    assert!(rows[0]["issued"].as_u64().unwrap() >= 4, "{rows:?}");

    // A refused change shows on the controller's /ready (still ready: the CA held signs) until
    // a valid CA is in the folder again. The half-written pair's refusal was cleared by step 2.
    let ready = format!("http://127.0.0.1:{}/ready", controller.api);
    let text = get_text(&ready).await.unwrap();
    assert!(
        text.starts_with("ready") && !text.contains("refused"),
        "{text}"
    );
    let new_key = new.key.serialize_pem();
    replace(
        "ca.key",
        "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
    );
    let text = eventually(
        "the broken key refused and shown on /ready",
        Duration::from_secs(10),
        async || {
            get_text(&ready)
                .await
                .filter(|t| t.contains("change was refused"))
        },
    )
    .await;
    assert!(
        text.starts_with("ready") && text.contains("ca.key"),
        "{text}"
    );
    replace("ca.key", &new_key);
    eventually(
        "the refusal cleared once the key is valid again",
        Duration::from_secs(10),
        async || {
            get_text(&ready)
                .await
                .filter(|t| t.starts_with("ready") && !t.contains("refused"))
        },
    )
    .await;
}

/// A CA to sign test certificates with: the mesh's (read from the identity folder) or another.
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        let der = cert.der().clone();
        TestCa { cert, key, der }
    }

    fn from_dir(dir: &Path) -> TestCa {
        let pem = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
        let key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap())
            .unwrap();
        let params = rcgen::CertificateParams::from_ca_cert_pem(&pem).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = maille_controller::identity::ca::pem_der(&pem)
            .unwrap()
            .into();
        TestCa { cert, key, der }
    }

    fn leaf(
        &self,
        spiffe: &str,
        node: &str,
    ) -> (rustls::pki_types::CertificateDer<'static>, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.subject_alt_names = vec![
            rcgen::SanType::URI(rcgen::Ia5String::try_from(spiffe.to_string()).unwrap()),
            rcgen::SanType::DnsName(rcgen::Ia5String::try_from(node.to_string()).unwrap()),
        ];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::minutes(1);
        p.not_after = now + time::Duration::hours(1);
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.der().clone(), key)
    }
}

/// A TLS 1.3 handshake with the proxy's tunnel port (server name `node-a`, trusting `roots`);
/// Ok once the proxy spoke on the accepted session, Err when it refused.
async fn tunnel_handshake(
    (ip, port): &(String, u16),
    roots: &TestCa,
    client: Option<(rustls::pki_types::CertificateDer<'static>, rcgen::KeyPair)>,
) -> std::io::Result<()> {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut store = rustls::RootCertStore::empty();
    store.add(roots.der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(store);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect((ip.as_str(), *port)).await?;
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("node-a").unwrap(), tcp)
        .await?;
    // Accepted: the proxy speaks first on the session (its HTTP/2 SETTINGS). Refused: the
    // alert arrives on the first read.
    let mut buf = [0u8; 64];
    tls.read(&mut buf).await.map(|_| ())
}

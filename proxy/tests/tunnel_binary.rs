//! The real binaries, as issue 14's local mode runs them: `maille-controller --manifests DIR
//! --identity-dir DIR2` and two `maille-proxy` processes acting as node-a (127.0.0.2) and
//! node-b (127.0.0.3) with `--node-name` and the bootstrap token. The folder says where things
//! run: proxy Pods, a client Pod on node-a, the backends' Pod and its EndpointSlices on node-b.
//! node-b's proxy Pod names a relay (127.0.0.4) as its tunnel address, so every byte between
//! the nodes crosses the test. Cross-node HTTP, TCP and UDP go through one tunnel session and
//! none of it crosses in the clear; a plain client on the tunnel port is refused; certificates
//! of four seconds renew under steady load with no failed request.
//!
//! Needs the controller binary (`cargo build --workspace --bins`, as scripts/test-all does).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maille_proxy::tcp::testing::{echo, read_line};
use maille_proxy::testing::{free_tcp_ports, free_udp_ports, HttpBackend, TcpBackend, UdpBackend};
use maille_proxy::tunnel::testing::pod::{self, ask};
use maille_proxy::tunnel::testing::CaptureRelay;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT: [u8; 4] = [127, 0, 0, 10];
const WEB: &str = "web.shop.maille.mesh";
/// Long enough for a loaded debug build to start both binaries and get certificates.
const STARTUP: Duration = Duration::from_secs(60);

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/<profile>/maille-controller`, next to this test's own directory.
fn controller_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("maille-controller");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

struct Ports {
    api: u16,
    http: u16,
    tcp: u16,
    udp: u16,
}

fn proxy_pod(name: &str, node: &str, ip: &str, tunnel: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: maille\n  labels:\n    app.kubernetes.io/name: maille-proxy\n  annotations:\n    maille.io/tunnel-port: \"{tunnel}\"\nspec:\n  nodeName: {node}\n  serviceAccountName: maille-proxy\n  containers: [{{name: proxy, image: maille-proxy}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n"
    )
}

fn pod(name: &str, node: &str, ip: &str, sa: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  nodeName: {node}\n  serviceAccountName: {sa}\n  containers: [{{name: c, image: c}}]\nstatus:\n  phase: Running\n  podIP: {ip}\n"
    )
}

fn service(name: &str, kind: &str, port: u16, protocol: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n  annotations:\n    maille.io/traffic-type: {kind}\nspec:\n  ports:\n    - name: p\n      port: {port}\n      protocol: {protocol}\n"
    )
}

fn slice(name: &str, addr: SocketAddr, protocol: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nendpoints:\n  - addresses: [\"{}\"]\n    conditions: {{ready: true}}\n    nodeName: node-b\nports:\n  - name: p\n    port: {}\n    protocol: {protocol}\n",
        addr.ip(),
        addr.port()
    )
}

fn start_proxy(
    node: &str,
    ip: &str,
    tunnel: u16,
    admin: u16,
    p: &Ports,
    token: &Path,
    tmp: &Path,
) -> Kill {
    Kill(
        Command::new(env!("CARGO_BIN_EXE_maille-proxy"))
            .args(["--controller-url", &format!("http://127.0.0.1:{}", p.api)])
            .args(["--node-name", node])
            .arg("--identity-token-file")
            .arg(token)
            .args(["--listen-ip", ip])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--http-ports", &p.http.to_string()])
            .args(["--tcp-ports", &p.tcp.to_string()])
            .args(["--udp-ports", &p.udp.to_string()])
            .args(["--tunnel-port", &tunnel.to_string()])
            .arg("--upgrade-sock")
            .arg(tmp.join(format!("upgrade-{node}.sock")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start maille-proxy"),
    )
}

async fn admin(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < STARTUP, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_proxies_carry_http_tcp_and_udp_through_the_tunnel_and_renew_under_load() {
    let web = HttpBackend::start("web-on-b").await;
    let db = TcpBackend::start("db-on-b").await;
    let dns = UdpBackend::start("dns-on-b").await;
    let tcp_ports = free_tcp_ports(7);
    let p = Ports {
        api: tcp_ports[0],
        http: tcp_ports[1],
        tcp: tcp_ports[2],
        udp: free_udp_ports(1)[0],
    };
    let (tunnel_a, tunnel_b, admin_a, admin_b) =
        (tcp_ports[3], tcp_ports[4], tcp_ports[5], tcp_ports[6]);
    let relay =
        CaptureRelay::start("127.0.0.4:0", SocketAddr::from(([127, 0, 0, 3], tunnel_b))).await;
    let tmp = tempfile::tempdir().unwrap();
    let (folder, identity) = (tmp.path().join("mesh"), tmp.path().join("identity"));
    std::fs::create_dir_all(&folder).unwrap();
    let text = [
        proxy_pod("proxy-a", "node-a", "127.0.0.2", tunnel_a),
        // node-b's tunnel address, as the table says it, is the relay's.
        proxy_pod("proxy-b", "node-b", "127.0.0.4", relay.addr.port()),
        pod("client", "node-a", "127.0.0.10", "client"),
        pod("backends", "node-b", "127.0.0.1", "web"),
        service("web", "http", 80, "TCP"),
        service("db", "tcp", 5432, "TCP"),
        service("dns", "udp", 53, "UDP"),
        slice("web", web.addr, "TCP"),
        slice("db", db.addr, "TCP"),
        slice("dns", dns.addr, "UDP"),
    ]
    .join("---\n");
    std::fs::write(folder.join("mesh.yaml"), text).unwrap();
    let _controller = Kill(
        Command::new(controller_binary())
            .arg("--manifests")
            .arg(&folder)
            .arg("--identity-dir")
            .arg(&identity)
            .args([
                "--trust-domain",
                "mesh.test",
                "--certificate-lifetime",
                "4s",
            ])
            .args(["--api-addr", &format!("127.0.0.1:{}", p.api)])
            .args(["--http-ports", &format!("{0}-{0}", p.http)])
            .args(["--tcp-ports", &format!("{0}-{0}", p.tcp)])
            .args(["--udp-ports", &format!("{0}-{0}", p.udp)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start maille-controller"),
    );
    let token = identity.join("bootstrap-token");
    until("the controller's bootstrap token", || {
        let t = token.clone();
        async move { t.exists() }
    })
    .await;
    let _a = start_proxy(
        "node-a",
        "127.0.0.2",
        tunnel_a,
        admin_a,
        &p,
        &token,
        tmp.path(),
    );
    let _b = start_proxy(
        "node-b",
        "127.0.0.3",
        tunnel_b,
        admin_b,
        &p,
        &token,
        tmp.path(),
    );
    for port in [admin_a, admin_b] {
        until("a proxy with a table and a certificate", || async move {
            admin(port, "/ready").await.is_some_and(|r| {
                r.starts_with("HTTP/1.1 200") && r.contains("identity: spiffe://mesh.test/")
            })
        })
        .await;
    }
    let client = IpAddr::from(CLIENT);
    let http_a = SocketAddr::from(([127, 0, 0, 2], p.http));
    until("a request through the tunnel", || async move {
        matches!(pod::get(http_a, client, WEB).await, Ok((200, _)))
    })
    .await;

    assert_eq!(
        pod::get(http_a, client, WEB).await.unwrap(),
        (200, "web-on-b".to_string())
    );
    let mut tcp = pod::tcp(SocketAddr::from(([127, 0, 0, 2], p.tcp)), client)
        .await
        .unwrap();
    assert_eq!(read_line(&mut tcp).await, "db-on-b");
    assert_eq!(
        echo(&mut tcp, b"TCP-SECRET-PAYLOAD").await,
        b"TCP-SECRET-PAYLOAD"
    );
    let udp = pod::udp(SocketAddr::from(([127, 0, 0, 2], p.udp)), client)
        .await
        .unwrap();
    let wait = Duration::from_secs(5);
    assert_eq!(
        ask(&udp, b"whoami", wait).await.as_deref(),
        Some(&b"dns-on-b"[..])
    );
    assert_eq!(
        ask(&udp, b"UDP-SECRET-PAYLOAD", wait).await.as_deref(),
        Some(&b"UDP-SECRET-PAYLOAD"[..])
    );
    drop(tcp);
    assert!(
        relay.captured().len() > 1000,
        "the traffic crossed the relay"
    );
    for clear in [
        &b"GET / HTTP"[..],
        WEB.as_bytes(),
        b"web-on-b",
        b"TCP-SECRET",
        b"db-on-b",
        b"UDP-SECRET",
        b"dns-on-b",
    ] {
        assert!(
            !relay.saw(clear),
            "{:?} crossed between the nodes in the clear",
            String::from_utf8_lossy(clear)
        );
    }

    // A plain client on the tunnel port: closed during the handshake, counted.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.3", tunnel_b))
        .await
        .unwrap();
    let _ = plain
        .write_all(b"CONNECT 127.0.0.1:80 HTTP/1.1\r\n\r\n")
        .await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, plain.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("HTTP/1.1 200"));
    until("the plain client counted", || async move {
        admin(admin_b, "/metrics").await.is_some_and(|m| {
            m.lines().any(|l| {
                l.starts_with("maille_proxy_tunnel_handshakes_total{result=\"not_tls\"}")
                    && !l.ends_with(" 0")
            })
        })
    })
    .await;

    // Steady load across several renewals of both certificates (4 s lifetimes: about one
    // every 2 s each): no request fails.
    let sessions_before = relay.connections();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match pod::get(http_a, client, WEB).await {
                    Ok((200, b)) if b == "web-on-b" => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{ok} requests answered");
    assert!(ok > 20, "steady load: {ok} requests");
    assert!(
        relay.connections() > sessions_before,
        "renewed certificates opened new sessions ({} before, {} after)",
        sessions_before,
        relay.connections()
    );
    let metrics = admin(admin_a, "/metrics").await.unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("maille_proxy_identity_certificates_total{kind=\"renewal\"}")
            && !l.ends_with(" 0")),
        "node-a renewed its certificate"
    );
}

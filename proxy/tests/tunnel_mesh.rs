//! Two real proxies as two nodes (node-a on 127.0.0.2, node-b on 127.0.0.3), each holding a
//! certificate of one test mesh CA, the table saying which endpoint and which client pod runs
//! where; a relay between them records every byte node-a sends to node-b's tunnel. Clients are
//! "pods" with their own loopback addresses (127.0.0.10, ...). Cross-node HTTP, TCP and UDP go
//! through one tunnel session and nothing of them crosses in the clear; same-node traffic does
//! not tunnel; TrafficTarget is enforced on identities by the destination, including against a
//! client spoofing an allowed pod of another node; strict refuses and permissive sends in
//! cleartext to a node without proxy; certificates of both nodes rotate under steady load
//! with no failed request; HTTP connections through the tunnel are pooled and reused per
//! client identity, and those of a broken session are not handed out again; a plain HTTP/1
//! tunnel stream carries another request only after a clean answer (never after
//! `Connection: close`, HTTP/1.0, 101, a cut body, an upstream error, or a byte the backend
//! sent after its answer), and the streams kept per claim are bounded.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config_model::testing::{service, table};
use config_model::{
    AccessRuleSpec, EndpointSpec, MtlsMode, NodeSpec, TableSpec, TrafficType, WorkloadSpec,
};
use maille_proxy::tcp::testing::{echo, read_line};
use maille_proxy::testing::{
    eventually, free_tcp_ports, metric, HttpBackend, TcpBackend, TestPorts, TestProxy,
    TestProxyOptions, UdpBackend, PATIENCE,
};
use maille_proxy::tunnel::client::Pool;
use maille_proxy::tunnel::testing::pod::{self, ask};
use maille_proxy::tunnel::testing::{CaptureRelay, TestCa};
use maille_proxy::tunnel::{PeerNode, Protocol, StreamClaim, TunnelSettings};

const CLIENT: [u8; 4] = [127, 0, 0, 10]; // shop/client on node-a
const OTHER: [u8; 4] = [127, 0, 0, 11]; // shop/other on node-a
const ADMIN_ON_B: [u8; 4] = [127, 0, 0, 20]; // shop/admin on node-b
const STRANGER: [u8; 4] = [127, 0, 0, 12]; // not a pod of the mesh

/// A node proxy holding a certificate of `ca` (it asks no controller: tables come from the test).
fn node_proxy(ca: &TestCa, node: &'static str, ip: [u8; 4]) -> TestProxy {
    let tunnel_port = free_tcp_ports(1)[0];
    let opts = TestProxyOptions {
        // Never answers: the identity keeps the certificate the test gives it.
        controller_url: Some("http://127.0.0.1:1".into()),
        http_ports: 4,
        ..TestProxyOptions::default()
    };
    let proxy = TestProxy::start_with_config(opts, move |c| {
        c.listen_ip = ip.into();
        c.node_name = Some(node.into());
        c.identity_token_file = Some("/nonexistent/maille-test-token".into());
        c.tunnel_port = tunnel_port;
        c.tcp_connect_timeout = Duration::from_secs(2);
    });
    proxy.identity().unwrap().hold(ca.held(node, 3600));
    proxy
}

struct Backends {
    web_b: HttpBackend,
    web_a: HttpBackend,
    web_c: HttpBackend,
    db_b: TcpBackend,
    dns_b: UdpBackend,
    db_c: TcpBackend,
    dns_c: UdpBackend,
    script_b: ScriptBackend,
}

impl Backends {
    async fn start() -> Backends {
        Backends {
            web_b: HttpBackend::start("web-on-b").await,
            web_a: HttpBackend::start("web-on-a").await,
            web_c: HttpBackend::start("web-on-c").await,
            db_b: TcpBackend::start("db-on-b").await,
            dns_b: UdpBackend::start("dns-on-b").await,
            db_c: TcpBackend::start("db-on-c").await,
            dns_c: UdpBackend::start("dns-on-c").await,
            script_b: ScriptBackend::start().await,
        }
    }
}

fn on(addr: &str, node: &str) -> EndpointSpec {
    EndpointSpec {
        node: Some(node.into()),
        ..EndpointSpec::new(addr)
    }
}

fn workload(ip: [u8; 4], node: &str, sa: &str) -> WorkloadSpec {
    WorkloadSpec {
        ip: IpAddr::from(ip).to_string(),
        node: node.into(),
        namespace: "shop".into(),
        service_account: sa.into(),
    }
}

/// The mesh as node-a routes it (mesh ports of `ports`): `web` on node-b (HTTP), `local` on
/// node-a (HTTP), `far` on node-c which runs no proxy (HTTP), `db` (TCP) and `dns` (UDP) on
/// node-b, `script` (HTTP, a [`ScriptBackend`]) on node-b. node-b's tunnel address is the
/// relay's.
fn mesh(
    ports: &TestPorts,
    be: &Backends,
    mode: MtlsMode,
    a_tunnel: SocketAddr,
    b_tunnel: SocketAddr,
) -> TableSpec {
    let mut web = service("shop", "web", 80, ports.http[0], TrafficType::Http, &[]);
    web.endpoints = vec![on(&be.web_b.addr_str(), "node-b")];
    let mut local = service("shop", "local", 80, ports.http[1], TrafficType::Http, &[]);
    local.endpoints = vec![on(&be.web_a.addr_str(), "node-a")];
    let mut far = service("shop", "far", 80, ports.http[2], TrafficType::Http, &[]);
    far.endpoints = vec![on(&be.web_c.addr_str(), "node-c")];
    let mut db = service("shop", "db", 5432, ports.tcp[0], TrafficType::Tcp, &[]);
    db.endpoints = vec![on(&be.db_b.addr_str(), "node-b")];
    let mut dns = service("shop", "dns", 53, ports.udp[0], TrafficType::Udp, &[]);
    dns.endpoints = vec![on(&be.dns_b.addr_str(), "node-b")];
    let mut far_db = service("shop", "far-db", 5432, ports.tcp[1], TrafficType::Tcp, &[]);
    far_db.endpoints = vec![on(&be.db_c.addr_str(), "node-c")];
    let mut far_dns = service("shop", "far-dns", 53, ports.udp[1], TrafficType::Udp, &[]);
    far_dns.endpoints = vec![on(&be.dns_c.addr_str(), "node-c")];
    let mut script = service("shop", "script", 80, ports.http[3], TrafficType::Http, &[]);
    script.endpoints = vec![on(&be.script_b.addr.to_string(), "node-b")];
    let mut t = table(1, vec![web, local, far, db, dns, far_db, far_dns, script]);
    t.mtls = mode;
    t.nodes = vec![
        NodeSpec {
            name: "node-a".into(),
            tunnel: a_tunnel.to_string(),
        },
        NodeSpec {
            name: "node-b".into(),
            tunnel: b_tunnel.to_string(),
        },
    ];
    t.workloads = vec![
        workload(CLIENT, "node-a", "client"),
        workload(OTHER, "node-a", "other"),
        workload(ADMIN_ON_B, "node-b", "admin"),
    ];
    t
}

/// Only `shop/client` and `shop/admin` may call `web` and `db`; the IP sources admit every
/// pod, so that what the destination decides on identities shows.
fn with_acl(mut t: TableSpec) -> TableSpec {
    t.acl = true;
    let rule = AccessRuleSpec {
        name: "shop/web-clients".into(),
        sources: [CLIENT, OTHER, ADMIN_ON_B, STRANGER]
            .iter()
            .map(|ip| IpAddr::from(*ip).to_string())
            .collect(),
        identities: vec!["shop/client".into(), "shop/admin".into()],
        http: None,
    };
    for svc in &mut t.services {
        svc.access = vec![rule.clone()];
    }
    t
}

struct Mesh {
    a: TestProxy,
    b: TestProxy,
    relay: CaptureRelay,
    be: Backends,
    ca: TestCa,
}

impl Mesh {
    async fn start(mode: MtlsMode, acl: bool) -> Mesh {
        let ca = TestCa::new("mesh.test");
        let be = Backends::start().await;
        let a = node_proxy(&ca, "node-a", [127, 0, 0, 2]);
        let b = node_proxy(&ca, "node-b", [127, 0, 0, 3]);
        let b_tunnel = SocketAddr::new(b.config.listen_ip, b.config.tunnel_port);
        let a_tunnel = SocketAddr::new(a.config.listen_ip, a.config.tunnel_port);
        let relay = CaptureRelay::start("127.0.0.4:0", b_tunnel).await;
        let m = Mesh {
            a,
            b,
            relay,
            be,
            ca,
        };
        m.set(mode, acl, a_tunnel);
        m
    }

    fn set(&self, mode: MtlsMode, acl: bool, a_tunnel: SocketAddr) {
        let t = mesh(&self.a.ports, &self.be, mode, a_tunnel, self.relay.addr);
        let t = if acl { with_acl(t) } else { t };
        self.a.set_table(&t);
        self.b.set_table(&t);
    }

    fn a_tunnel(&self) -> SocketAddr {
        SocketAddr::new(self.a.config.listen_ip, self.a.config.tunnel_port)
    }

    /// GET `/` of `host` through node-a's HTTP port `port`, from pod address `from`.
    async fn get(&self, from: [u8; 4], port: usize, host: &str) -> (u16, String) {
        get(self.a.http[port], from, host).await
    }
}

async fn get(to: SocketAddr, from: [u8; 4], host: &str) -> (u16, String) {
    pod::get(to, IpAddr::from(from), host)
        .await
        .expect("answer")
}

/// A TCP connection to `to` from pod address `from`.
async fn tcp_from(to: SocketAddr, from: [u8; 4]) -> tokio::net::TcpStream {
    pod::tcp(to, IpAddr::from(from)).await.unwrap()
}

/// A UDP socket of pod address `from`, connected to `to`.
async fn udp_from(to: SocketAddr, from: [u8; 4]) -> tokio::net::UdpSocket {
    pod::udp(to, IpAddr::from(from)).await.unwrap()
}

fn denied(reason: &str) -> f64 {
    metric("maille_proxy_tunnel_denied_total", &[("reason", reason)])
}

/// `maille_proxy_tunnel_http_streams_total{event}` (process-wide: tests running alongside
/// add to it too, so only growth is asserted).
fn http_streams(event: &str) -> f64 {
    metric(
        "maille_proxy_tunnel_http_streams_total",
        &[("event", event)],
    )
}

const WEB: &str = "web.shop.maille.mesh";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_traffic_goes_through_one_encrypted_session_and_same_node_does_not() {
    let m = Mesh::start(MtlsMode::Strict, false).await;
    let (status, body) = m.get(CLIENT, 0, WEB).await;
    assert_eq!((status, body.as_str()), (200, "web-on-b"));

    let mut tcp = tcp_from(m.a.tcp[0], CLIENT).await;
    assert_eq!(read_line(&mut tcp).await, "db-on-b");
    assert_eq!(
        echo(&mut tcp, b"TCP-SECRET-PAYLOAD").await,
        b"TCP-SECRET-PAYLOAD"
    );

    let udp = udp_from(m.a.udp[0], CLIENT).await;
    assert_eq!(
        ask(&udp, b"whoami", PATIENCE).await.as_deref(),
        Some(&b"dns-on-b"[..])
    );
    assert_eq!(
        ask(&udp, b"UDP-SECRET-PAYLOAD", PATIENCE).await.as_deref(),
        Some(&b"UDP-SECRET-PAYLOAD"[..])
    );
    drop(tcp);

    assert_eq!(
        m.relay.connections(),
        1,
        "one session between the two nodes"
    );
    assert!(m.relay.captured().len() > 1000);
    for clear in [
        &b"GET / HTTP"[..],
        WEB.as_bytes(),
        b"web-on-b",
        b"TCP-SECRET",
        b"db-on-b",
        b"UDP-SECRET",
        b"dns-on-b",
        b"shop/client",
    ] {
        assert!(
            !m.relay.saw(clear),
            "{:?} crossed between the nodes in the clear",
            String::from_utf8_lossy(clear)
        );
    }
    // Same node: straight to the pod, nothing through the tunnel (once the closing of the
    // streams above has crossed).
    let mut before = m.relay.captured().len();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = m.relay.captured().len();
        if now == before {
            break;
        }
        before = now;
    }
    let (status, body) = m.get(CLIENT, 1, "local.shop.maille.mesh").await;
    assert_eq!((status, body.as_str()), (200, "web-on-a"));
    assert_eq!(
        m.relay.captured().len(),
        before,
        "same-node request did not tunnel"
    );
    assert_eq!(m.be.web_a.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_enforces_traffic_targets_on_identities() {
    let m = Mesh::start(MtlsMode::Strict, true).await;
    let by_identity = |identity: &str, result: &str| {
        metric(
            "maille_proxy_tunnel_client_identities_total",
            &[("identity", identity), ("result", result)],
        )
    };
    let admitted = by_identity("shop/client", "admitted");
    assert_eq!(m.get(CLIENT, 0, WEB).await, (200, "web-on-b".to_string()));
    assert!(by_identity("shop/client", "admitted") > admitted);

    // An IP the source admits, an identity the rule does not name: node-b says no.
    let before = denied("access_denied");
    let refused = by_identity("shop/other", "denied");
    assert_eq!(m.get(OTHER, 0, WEB).await.0, 403);
    assert!(denied("access_denied") > before);
    assert!(by_identity("shop/other", "denied") > refused);

    // A client on node-a using the address of an allowed pod of node-b: node-a knows no pod of
    // its own with that address, so it states no identity, and node-b refuses.
    let before = denied("no_identity");
    assert_eq!(m.get(ADMIN_ON_B, 0, WEB).await.0, 403);
    assert!(denied("no_identity") > before);

    // TCP: the same decision closes the connection before a byte of the pod.
    let mut tcp = tcp_from(m.a.tcp[0], OTHER).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "a denied TCP client reads nothing");
    let mut tcp = tcp_from(m.a.tcp[0], CLIENT).await;
    assert_eq!(read_line(&mut tcp).await, "db-on-b");

    // A node that speaks for a pod of another node (a compromised node-a stating shop/admin
    // for node-b's pod): refused as spoofed.
    let pool = Pool::new(m.ca.identity("node-a"), TunnelSettings::default());
    let claim = StreamClaim {
        target: m.be.web_b.addr,
        protocol: Protocol::Tcp,
        source_ip: Some(IpAddr::from(ADMIN_ON_B)),
        identity: Some("shop/admin".parse().unwrap()),
        service: config_model::ServiceKey {
            namespace: "shop".into(),
            name: "web".into(),
            port: 80,
        },
    };
    let peer = PeerNode {
        name: "node-b".into(),
        addr: m.relay.addr,
    };
    let before = denied("spoofed_identity");
    let e = pool.open(&peer, &claim).await.unwrap_err();
    assert_eq!(e.label(), "denied", "{e}");
    assert!(e.to_string().contains("spoofed_identity"), "{e}");
    assert!(denied("spoofed_identity") > before);
    // And for an endpoint that is not on node-b.
    let e = pool
        .open(
            &peer,
            &StreamClaim {
                target: m.be.web_a.addr,
                service: config_model::ServiceKey {
                    namespace: "shop".into(),
                    name: "local".into(),
                    port: 80,
                },
                ..claim
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not_on_this_node"), "{e}");
    assert_eq!(m.be.web_a.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_proxy_is_refused_in_strict_and_reached_in_cleartext_in_permissive() {
    let m = Mesh::start(MtlsMode::Strict, false).await;
    let far = "far.shop.maille.mesh";
    let refused = || {
        metric(
            "maille_proxy_mtls_refused_total",
            &[("service", "far"), ("protocol", "tcp")],
        )
    };
    let before = refused();
    let (status, body) = m.get(CLIENT, 2, far).await;
    assert_eq!(status, 503, "{body}");
    assert!(refused() > before);
    assert_eq!(m.be.web_c.hits(), 0);
    // TCP: closed; UDP: dropped; both counted.
    let mut tcp = tcp_from(m.a.tcp[1], CLIENT).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(PATIENCE, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte of the pod");
    let udp = udp_from(m.a.udp[1], CLIENT).await;
    assert_eq!(ask(&udp, b"whoami", Duration::from_millis(500)).await, None);
    assert_eq!(m.be.db_c.accepted(), 0);
    assert!(m.be.dns_c.sources().is_empty());
    for (svc, proto) in [("far-db", "tcp"), ("far-dns", "udp")] {
        assert!(
            metric(
                "maille_proxy_mtls_refused_total",
                &[("service", svc), ("protocol", proto)]
            ) >= 1.0,
            "{svc} refusal counted"
        );
    }

    m.set(MtlsMode::Permissive, false, m.a_tunnel());
    let cleartext = || {
        metric(
            "maille_proxy_mtls_cleartext_total",
            &[("service", "far"), ("protocol", "tcp")],
        )
    };
    let before = cleartext();
    assert_eq!(m.get(CLIENT, 2, far).await, (200, "web-on-c".to_string()));
    assert!(cleartext() > before);
    let mut tcp = tcp_from(m.a.tcp[1], CLIENT).await;
    assert_eq!(read_line(&mut tcp).await, "db-on-c");
    let udp = udp_from(m.a.udp[1], CLIENT).await;
    assert_eq!(
        ask(&udp, b"whoami", PATIENCE).await.as_deref(),
        Some(&b"dns-on-c"[..])
    );
    // Nodes with a proxy are still reached through the tunnel.
    assert_eq!(m.get(CLIENT, 0, WEB).await, (200, "web-on-b".to_string()));
    assert!(m.relay.connections() >= 1);
    assert!(!m.relay.saw(b"GET / HTTP"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_steady_load_without_a_failed_request() {
    let m = Arc::new(Mesh::start(MtlsMode::Strict, false).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (m, stop, ok, failed) = (m.clone(), stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match m.get(CLIENT, 0, WEB).await {
                    (200, b) if b == "web-on-b" => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Both nodes get new certificates (and keys), as at a renewal.
        m.a.identity().unwrap().hold(m.ca.held("node-a", 3600));
        if i % 2 == 0 {
            m.b.identity().unwrap().hold(m.ca.held("node-b", 3600));
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{ok} requests answered");
    assert!(ok > 20, "steady load: {ok} requests");
    assert!(
        m.relay.connections() >= 2,
        "renewals opened new sessions: {}",
        m.relay.connections()
    );
}

/// GET `/peer` of `web` (on node-b) through node-a from pod `from`: the address node-b's
/// proxy connected to the pod from, which tells the tunnel stream that carried the request.
async fn carried_by(m: &Mesh, from: [u8; 4]) -> String {
    let (status, body) = pod::get_path(m.a.http[0], IpAddr::from(from), WEB, "/peer")
        .await
        .expect("answer");
    assert_eq!(status, 200, "{body}");
    body
}

/// The tunnel streams (see [`carried_by`]) that `n` sequential requests of pod `from` rode, a
/// short pause between them.
async fn carriers(m: &Mesh, from: [u8; 4], n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        seen.insert(carried_by(m, from).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_through_the_tunnel_are_reused_per_client_identity() {
    // An upstream connection goes back to its pool just after the answer reaches the
    // client, so a request can now and then race it and open another connection (same-node
    // connections alike): the counts below allow a few streams, where each request opened
    // one of its own before connections through the tunnel were reused.
    let m = Mesh::start(MtlsMode::Strict, false).await;
    let pool = m.a.tunnel().expect("node-a has a tunnel pool");
    let opened = metric(
        "maille_proxy_tunnel_streams_total",
        &[("direction", "out"), ("protocol", "tcp"), ("result", "ok")],
    );
    // Sequential requests of one client (each on a new client connection): one stream
    // carries (nearly) all of them.
    let mine = carriers(&m, CLIENT, 20).await;
    assert!(
        mine.len() <= 3,
        "20 requests rode {} streams: {mine:?}",
        mine.len()
    );
    assert_eq!(m.be.web_b.hits(), 20);
    assert_eq!(pool.streams_opened(), mine.len() as u64, "{mine:?}");
    // Other tests of this binary open streams at the same time: at least ours are counted.
    assert!(
        metric(
            "maille_proxy_tunnel_streams_total",
            &[("direction", "out"), ("protocol", "tcp"), ("result", "ok")],
        ) >= opened + mine.len() as f64
    );

    // Another client identity of the same node: streams of its own, never the first one's,
    // and each keeps its own while they alternate.
    let (mut mine, mut others) = (mine, HashSet::new());
    for _ in 0..6 {
        mine.extend(carriers(&m, CLIENT, 1).await);
        others.extend(carriers(&m, OTHER, 1).await);
    }
    assert!(
        mine.is_disjoint(&others),
        "shop/other never rides shop/client's streams: {mine:?} {others:?}"
    );
    assert!(mine.len() <= 4 && others.len() <= 3, "{mine:?} {others:?}");
    assert_eq!(pool.streams_opened(), (mine.len() + others.len()) as u64);
    assert_eq!(m.relay.connections(), 1, "one session carries both");

    // The network between the nodes breaks: the pooled connections of that session are not
    // handed out again; the next requests dial a new session and open new streams, reused in
    // turn.
    m.relay.cut();
    eventually("node-a notices the broken session", || pool.sessions() == 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = pool.streams_opened();
    let after = carriers(&m, CLIENT, 10).await;
    assert!(
        after.is_disjoint(&mine),
        "new streams, hence new connections to the pod: {after:?} {mine:?}"
    );
    assert!(after.len() <= 3, "10 requests rode {} streams", after.len());
    assert_eq!(m.relay.connections(), 2);
    assert_eq!(pool.streams_opened(), before + after.len() as u64);
}

/// A raw HTTP/1.1 backend answering as scripted by the path, numbering its connections (each
/// tunnel stream makes one connection from node-b's proxy, so the number names the stream):
/// - `/conn`: 200, body `conn-<n>` (`conn-<n> <length>` after a request body);
/// - `/close`: the same with `Connection: close`, the connection kept open;
/// - `/http10`: the same as HTTP/1.0, the connection kept open;
/// - `/garbage`: bytes that are not an HTTP response, the connection kept open;
/// - `/cut`: a body shorter than its `Content-Length`, then the connection closed;
/// - `/stray`: the same as `/conn`, and 100 ms later a whole second response (`STRAY`);
/// - `/slow`: the same as `/conn`, a second later;
/// - `/upgrade`: 101 (websocket), then echoes the bytes it reads.
struct ScriptBackend {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptBackend {
    async fn start() -> ScriptBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            for n in 1.. {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(script_conn(s, n));
            }
        });
        ScriptBackend { addr, task }
    }
}

impl Drop for ScriptBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn script_conn(mut s: tokio::net::TcpStream, n: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    loop {
        // The next request's path and the length of its body (`Content-Length` only).
        let (path, length) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buf.drain(..end + 4).collect();
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap_or(0));
                break (head.split(' ').nth(1).unwrap_or("").to_string(), length);
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        };
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        let received = buf.drain(..length).count();
        let body = if received > 0 {
            format!("conn-{n} {received}")
        } else {
            format!("conn-{n}")
        };
        let answer = |version: &str, extra: &str| {
            format!(
                "{version} 200 OK\r\nContent-Length: {}\r\n{extra}\r\n{body}",
                body.len()
            )
        };
        let out = match path.as_str() {
            "/close" => answer("HTTP/1.1", "Connection: close\r\n"),
            "/http10" => answer("HTTP/1.0", ""),
            "/garbage" => "NOT AN HTTP RESPONSE\r\n\r\n".to_string(),
            "/cut" => "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nconn-".to_string(),
            "/upgrade" => {
                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                    .to_string()
            }
            _ => answer("HTTP/1.1", ""),
        };
        if path == "/slow" {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        if s.write_all(out.as_bytes()).await.is_err() {
            return;
        }
        match path.as_str() {
            "/cut" => return,
            "/stray" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let stray = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTRAY";
                if s.write_all(stray).await.is_err() {
                    return;
                }
            }
            "/upgrade" => {
                let (mut r, mut w) = s.split();
                let _ = w.write_all(&buf).await;
                let _ = tokio::io::copy(&mut r, &mut w).await;
                return;
            }
            _ => {}
        }
    }
}

const SCRIPT: &str = "script.shop.maille.mesh";

/// GET `path` of `script` (on node-b) through node-a from pod `from`, on a new client
/// connection.
async fn script(m: &Mesh, from: [u8; 4], path: &str) -> anyhow::Result<(u16, String)> {
    pod::get_path(m.a.http[3], IpAddr::from(from), SCRIPT, path).await
}

/// The tunnel stream (`conn-<n>`) that carried a GET `/conn` of pod `from`.
async fn stream_of(m: &Mesh, from: [u8; 4]) -> String {
    let (status, body) = script(m, from, "/conn").await.expect("answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("conn-"), "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http1_tunnel_stream_carries_another_request_only_after_a_clean_answer() {
    let m = Mesh::start(MtlsMode::Strict, false).await;
    let pool = m.a.tunnel().expect("node-a has a tunnel pool").clone();
    let events = ["opened", "reused", "kept", "not_kept", "stale"];
    let counted = events.map(http_streams);
    // Kept once the request has ended (just after the client has its answer).
    let kept = |n: usize| {
        let pool = pool.clone();
        async move { eventually("the stream is kept", || pool.idle().len() == n).await }
    };

    // Two requests of one client ride one stream; another client identity never rides it.
    let first = stream_of(&m, CLIENT).await;
    kept(1).await;
    assert_eq!(stream_of(&m, CLIENT).await, first);
    kept(1).await;
    let other = stream_of(&m, OTHER).await;
    assert_ne!(other, first, "shop/other rode shop/client's stream");
    kept(2).await;
    assert_eq!(stream_of(&m, OTHER).await, other);
    assert_eq!(stream_of(&m, CLIENT).await, first);
    kept(2).await;
    assert_eq!(pool.streams_opened(), 2);
    assert_eq!(m.relay.connections(), 1);

    // A request body crosses on the kept stream and leaves it kept.
    let posted = pod::post_path(
        m.a.http[3],
        IpAddr::from(CLIENT),
        SCRIPT,
        "/conn",
        vec![b'x'; 100_000],
    )
    .await
    .expect("answer");
    assert_eq!(posted, (200, format!("{first} 100000")));
    kept(2).await;
    assert_eq!(stream_of(&m, CLIENT).await, first);
    kept(2).await;

    // Each of these answers leaves its stream unusable (whatever the client got): the next
    // request rides a new stream and gets its own answer, and that new stream is kept in turn.
    let mut seen: HashSet<String> = [first, other].into();
    for path in ["/close", "/http10", "/garbage", "/cut", "/stray"] {
        let got = script(&m, CLIENT, path).await;
        match path {
            "/garbage" => assert_eq!(got.expect("answer").0, 502, "{path}"),
            // Cut after its header: the client sees a short or failed body.
            "/cut" => assert!(got.map_or(true, |(_, b)| b.len() < 100), "{path}"),
            _ => assert_eq!(got.expect("answer").0, 200, "{path}"),
        }
        // Time for the stray answer to arrive, and for a wrongly kept stream to show.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The stray answer comes after a clean one: that stream was kept, and is found
        // unusable when the next request would take it.
        let expected = if path == "/stray" { 2 } else { 1 };
        assert_eq!(pool.idle().len(), expected, "{path}: streams kept");
        let next = stream_of(&m, CLIENT).await;
        assert!(
            seen.insert(next.clone()),
            "{path}: rode a used stream again ({next})"
        );
        kept(2).await;
        assert_eq!(
            stream_of(&m, CLIENT).await,
            next,
            "{path}: the new stream is kept"
        );
        kept(2).await;
    }

    // A protocol switch (101): the connection is the client's until it closes, never reused.
    let before = stream_of(&m, CLIENT).await;
    kept(2).await;
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tcp_from(m.a.http[3], CLIENT).await;
        let req = format!(
            "GET /upgrade HTTP/1.1\r\nHost: {SCRIPT}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 1024];
            let k = tokio::time::timeout(PATIENCE, c.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(k > 0, "{}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..k]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        c.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        tokio::time::timeout(PATIENCE, c.read_exact(&mut echo))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echo, b"ping");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = stream_of(&m, CLIENT).await;
    assert_ne!(next, before, "the upgraded stream carried another request");
    assert!(!seen.contains(&next), "{next}");

    // What the operator sees: streams opened (2 clients, one per unusable answer, the upgrade,
    // the one after it), reused, kept, closed with their request (4 unusable answers and the
    // upgrade), and the one found unusable when taken (after /stray).
    let grew = |i: usize| http_streams(events[i]) - counted[i];
    for (i, least) in [8.0, 12.0, 12.0, 5.0, 1.0].into_iter().enumerate() {
        assert!(
            grew(i) >= least,
            "{}: +{} (at least {least})",
            events[i],
            grew(i)
        );
    }
    assert!(metric("maille_proxy_tunnel_http_streams_idle", &[]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_kept_for_one_claim_are_bounded() {
    let m = Arc::new(Mesh::start(MtlsMode::Strict, false).await);
    let pool = m.a.tunnel().expect("node-a has a tunnel pool").clone();
    let full = http_streams("full");
    // More requests of one client at once than streams kept per claim: each opens a stream.
    let n = maille_proxy::tunnel::lease::MAX_IDLE_PER_CLAIM + 8;
    let mut all = Vec::new();
    for _ in 0..n {
        let m = m.clone();
        all.push(tokio::spawn(
            async move { script(&m, CLIENT, "/slow").await },
        ));
    }
    for r in all {
        let (status, body) = r.await.unwrap().expect("answer");
        assert_eq!(status, 200, "{body}");
    }
    let opened = pool.streams_opened() as usize;
    assert!(
        opened > maille_proxy::tunnel::lease::MAX_IDLE_PER_CLAIM,
        "{opened} streams for {n} requests at once"
    );
    let bound = maille_proxy::tunnel::lease::MAX_IDLE_PER_CLAIM;
    eventually("the streams are kept", || pool.idle().len() >= bound).await;
    // Every request has ended by now (or soon after): none is kept beyond the bound.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.idle().len(), bound);
    // The streams beyond the bound were closed, and counted as such.
    assert!(
        http_streams("full") - full >= (opened - bound) as f64,
        "full: +{} for {} streams beyond the bound",
        http_streams("full") - full,
        opened - bound
    );
    // Those kept are used again: a further request opens no stream.
    stream_of(&m, CLIENT).await;
    assert_eq!(pool.streams_opened() as usize, opened);
}

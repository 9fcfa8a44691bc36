//! The tunnel's transport between two node proxies, on loopback addresses standing for two
//! nodes (127.0.0.2 dials, 127.0.0.3 listens): real mutual TLS 1.3 with certificates of one
//! mesh CA, real HTTP/2 `CONNECT` streams, a relay between the nodes recording every byte.
//! TCP and UDP streams share one session and cross it encrypted; a denied claim, an
//! unreachable endpoint, a foreign CA and a peer with another node's certificate are refused;
//! a renewed certificate opens a new session while the old one's streams finish; a session
//! that ended is dialled again.

use std::sync::Arc;
use std::time::Duration;

use maille_proxy::identity::tunnel::Tunnel;
use maille_proxy::identity::Identity;
use maille_proxy::tcp::testing::{echo, read_line};
use maille_proxy::testing::{metric, TcpBackend, UdpBackend, PATIENCE};
use maille_proxy::tunnel::client::Pool;
use maille_proxy::tunnel::server::{Admission, Denied, Forward};
use maille_proxy::tunnel::testing::{CaptureRelay, TestCa};
use maille_proxy::tunnel::udp::{read_datagram, write_datagram, MAX_FRAME};
use maille_proxy::tunnel::{PeerNode, Protocol, StreamClaim, TunnelSettings};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Admits what its rule says, recording who asked.
struct Rule {
    seen: Mutex<Vec<(String, StreamClaim)>>,
    deny: Option<&'static str>,
}

impl Admission for Rule {
    fn admit(&self, peer_node: &str, claim: &StreamClaim) -> Result<(), Denied> {
        self.seen
            .lock()
            .push((peer_node.to_string(), claim.clone()));
        match self.deny {
            Some(reason) => Err(Denied {
                reason,
                detail: "test rule".into(),
            }),
            None => Ok(()),
        }
    }
}

fn rule(deny: Option<&'static str>) -> Arc<Rule> {
    Arc::new(Rule {
        seen: Mutex::new(Vec::new()),
        deny,
    })
}

/// A node's tunnel listener on 127.0.0.3, stopped when dropped.
struct Listener {
    addr: std::net::SocketAddr,
    _stop: watch::Sender<bool>,
}

fn listen(identity: Arc<Identity>, admission: Arc<Rule>, at: &str) -> Listener {
    listen_with(identity, admission, at, TunnelSettings::default())
}

fn listen_with(
    identity: Arc<Identity>,
    admission: Arc<Rule>,
    at: &str,
    settings: TunnelSettings,
) -> Listener {
    let forward = Forward {
        admission,
        settings,
    };
    let tunnel = Tunnel::bind_with(identity, at.parse().unwrap(), Some(forward)).unwrap();
    let addr = tunnel.local_addr();
    let (tx, rx) = watch::channel(false);
    tokio::spawn(tunnel.run(rx));
    Listener { addr, _stop: tx }
}

fn claim(target: std::net::SocketAddr, protocol: Protocol) -> StreamClaim {
    StreamClaim {
        target,
        protocol,
        source_ip: Some("127.0.0.2".parse().unwrap()),
        identity: Some("shop/web".parse().unwrap()),
        service: config_model::ServiceKey {
            namespace: "shop".into(),
            name: "db".into(),
            port: 5432,
        },
    }
}

fn out(protocol: &str, result: &str) -> f64 {
    metric(
        "maille_proxy_tunnel_streams_total",
        &[
            ("direction", "out"),
            ("protocol", protocol),
            ("result", result),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_streams_share_one_encrypted_session() {
    let ca = TestCa::new("mesh.test");
    let backend = TcpBackend::start("db-on-b").await;
    let admission = rule(None);
    let b = listen(ca.identity("node-b"), admission.clone(), "127.0.0.3:0");
    let relay = CaptureRelay::start("127.0.0.3:0", b.addr).await;
    let pool = Pool::new(ca.identity("node-a"), TunnelSettings::default());
    let peer = PeerNode {
        name: "node-b".into(),
        addr: relay.addr,
    };
    let ok_before = out("tcp", "ok");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (pool, peer) = (pool.clone(), peer.clone());
        let c = claim(backend.addr, Protocol::Tcp);
        tasks.push(tokio::spawn(async move {
            let mut s = pool.open(&peer, &c).await.unwrap();
            assert_eq!(read_line(&mut s).await, "db-on-b");
            let msg = format!("SECRET-PAYLOAD-{i}");
            assert_eq!(echo(&mut s, msg.as_bytes()).await, msg.as_bytes());
            s.shutdown().await.unwrap();
            assert_eq!(read_line(&mut s).await, format!("bye {}", msg.len()));
        }));
    }
    for t in tasks {
        tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap();
    }
    assert_eq!(
        relay.connections(),
        1,
        "one TLS session carried all streams"
    );
    assert!(
        relay.captured().len() > 1000,
        "the session crossed the relay"
    );
    for clear in [&b"SECRET-PAYLOAD"[..], b"db-on-b", b"shop/web", b"CONNECT"] {
        assert!(
            !relay.saw(clear),
            "{:?} crossed in the clear",
            String::from_utf8_lossy(clear)
        );
    }
    assert_eq!(backend.accepted(), 8);
    let seen = admission.seen.lock();
    assert_eq!(seen.len(), 8);
    assert!(
        seen.iter()
            .all(|(node, c)| node == "node-a" && *c == claim(backend.addr, Protocol::Tcp)),
        "the destination judged each claim, from the node the certificate names"
    );
    assert!(out("tcp", "ok") >= ok_before + 8.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_keep_their_boundaries_through_the_tunnel() {
    let ca = TestCa::new("mesh.test");
    let backend = UdpBackend::start("dns-on-b").await;
    let b = listen(ca.identity("node-b"), rule(None), "127.0.0.3:0");
    let pool = Pool::new(ca.identity("node-a"), TunnelSettings::default());
    let peer = PeerNode {
        name: "node-b".into(),
        addr: b.addr,
    };
    let s = pool
        .open(&peer, &claim(backend.addr, Protocol::Udp))
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(s);
    let mut buf = vec![0u8; MAX_FRAME];
    for msg in [&b"whoami"[..], b"one", &[7u8; 1400]] {
        write_datagram(&mut w, msg).await.unwrap();
        let n = tokio::time::timeout(PATIENCE, read_datagram(&mut r, &mut buf))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let want: &[u8] = if msg == b"whoami" { b"dns-on-b" } else { msg };
        assert_eq!(&buf[..n], want);
    }
    assert_eq!(
        backend.sources().len(),
        1,
        "one session socket at the destination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_their_reason() {
    let ca = TestCa::new("mesh.test");
    let backend = TcpBackend::start("db").await;
    let b = listen(ca.identity("node-b"), rule(Some("spoofed")), "127.0.0.3:0");
    let pool = Pool::new(ca.identity("node-a"), TunnelSettings::default());
    let peer = PeerNode {
        name: "node-b".into(),
        addr: b.addr,
    };
    let e = pool
        .open(&peer, &claim(backend.addr, Protocol::Tcp))
        .await
        .unwrap_err();
    assert_eq!(e.label(), "denied", "{e}");
    assert!(e.to_string().contains("spoofed"), "{e}");
    assert_eq!(backend.accepted(), 0);

    // An endpoint nobody listens on: the destination says so (502).
    let b2 = listen(ca.identity("node-b"), rule(None), "127.0.0.3:0");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let peer2 = PeerNode {
        name: "node-b".into(),
        addr: b2.addr,
    };
    let e = pool
        .open(&peer2, &claim(closed, Protocol::Tcp))
        .await
        .unwrap_err();
    assert_eq!(e.label(), "unreachable", "{e}");

    // A listener whose certificate names another node than the table says: not dialled.
    let e = pool
        .open(
            &PeerNode {
                name: "node-c".into(),
                addr: b2.addr,
            },
            &claim(backend.addr, Protocol::Tcp),
        )
        .await
        .unwrap_err();
    assert_eq!(e.label(), "dial_failed", "{e}");

    // A proxy of another CA is refused by the listener.
    let foreign = Pool::new(
        TestCa::new("mesh.test").identity("node-a"),
        TunnelSettings::default(),
    );
    let e = foreign
        .open(&peer2, &claim(backend.addr, Protocol::Tcp))
        .await
        .unwrap_err();
    assert_eq!(e.label(), "dial_failed", "{e}");
    assert_eq!(backend.accepted(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_opens_a_new_session_and_old_streams_finish() {
    let ca = TestCa::new("mesh.test");
    let backend = TcpBackend::start("db").await;
    let b = listen(ca.identity("node-b"), rule(None), "127.0.0.3:0");
    let relay = CaptureRelay::start("127.0.0.3:0", b.addr).await;
    let a = ca.identity("node-a");
    let pool = Pool::new(a.clone(), TunnelSettings::default());
    let peer = PeerNode {
        name: "node-b".into(),
        addr: relay.addr,
    };
    let c = claim(backend.addr, Protocol::Tcp);
    let mut old = pool.open(&peer, &c).await.unwrap();
    assert_eq!(read_line(&mut old).await, "db");
    a.hold(ca.held("node-a", 3600));
    let mut new = pool.open(&peer, &c).await.unwrap();
    assert_eq!(read_line(&mut new).await, "db");
    assert_eq!(
        relay.connections(),
        2,
        "the new certificate dialled a new session"
    );
    assert_eq!(echo(&mut old, b"still here").await, b"still here");
    assert_eq!(echo(&mut new, b"new one").await, b"new one");
    // Further streams use the new session.
    let mut third = pool.open(&peer, &c).await.unwrap();
    assert_eq!(read_line(&mut third).await, "db");
    assert_eq!(relay.connections(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ended_is_dialled_again() {
    let ca = TestCa::new("mesh.test");
    let backend = TcpBackend::start("db").await;
    let b = listen(ca.identity("node-b"), rule(None), "127.0.0.3:0");
    let addr = b.addr;
    let pool = Pool::new(ca.identity("node-a"), TunnelSettings::default());
    let peer = PeerNode {
        name: "node-b".into(),
        addr,
    };
    let c = claim(backend.addr, Protocol::Tcp);
    let mut s = pool.open(&peer, &c).await.unwrap();
    assert_eq!(read_line(&mut s).await, "db");
    drop(s);
    // The peer proxy stops (its sessions end with it) and comes back on the same address.
    drop(b);
    let start = std::time::Instant::now();
    let _b = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(t) = Tunnel::bind_with(
            ca.identity("node-b"),
            addr,
            Some(Forward {
                admission: rule(None),
                settings: TunnelSettings::default(),
            }),
        ) {
            let (tx, rx) = watch::channel(false);
            tokio::spawn(t.run(rx));
            break tx;
        }
        assert!(start.elapsed() < PATIENCE);
    };
    let mut s = tokio::time::timeout(PATIENCE, async {
        loop {
            match pool.open(&peer, &c).await {
                Ok(s) => break s,
                Err(e) => {
                    assert_eq!(e.label(), "dial_failed", "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(read_line(&mut s).await, "db");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_carries_at_most_its_streams_and_closes_when_idle() {
    let ca = TestCa::new("mesh.test");
    let backend = TcpBackend::start("db").await;
    let settings = TunnelSettings {
        max_streams: 2,
        session_idle: Duration::from_millis(300),
        ..TunnelSettings::default()
    };
    let b = listen_with(ca.identity("node-b"), rule(None), "127.0.0.3:0", settings);
    let relay = CaptureRelay::start("127.0.0.3:0", b.addr).await;
    let pool = Pool::new(ca.identity("node-a"), settings);
    let peer = PeerNode {
        name: "node-b".into(),
        addr: relay.addr,
    };
    let c = claim(backend.addr, Protocol::Tcp);
    let mut one = pool.open(&peer, &c).await.unwrap();
    let mut two = pool.open(&peer, &c).await.unwrap();
    assert_eq!(read_line(&mut one).await, "db");
    assert_eq!(read_line(&mut two).await, "db");
    // The peer's limit: a third stream waits for one of the two to end.
    let third = {
        let (pool, peer, c) = (pool.clone(), peer.clone(), c.clone());
        tokio::spawn(async move { pool.open(&peer, &c).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !third.is_finished(),
        "a third stream started beyond the limit"
    );
    assert_eq!(backend.accepted(), 2);
    drop(one);
    let mut third = tokio::time::timeout(PATIENCE, third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(read_line(&mut third).await, "db");
    assert_eq!(
        relay.connections(),
        1,
        "the waiting stream used the same session"
    );
    drop((two, third));
    // No stream for the idle time: the session closes, and the next stream dials again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut again = pool.open(&peer, &c).await.unwrap();
    assert_eq!(read_line(&mut again).await, "db");
    assert_eq!(relay.connections(), 2, "an idle session was closed");
}

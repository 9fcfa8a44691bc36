//! UDP through the in-process proxy (the real server builder and flags), against real
//! backends on loopback.

mod tcp_udp_support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use config_model::testing::table;
use config_model::TrafficType;
use maille_proxy::config::Config;
use maille_proxy::testing::UdpBackend;
use maille_proxy::udp::testing::{ask, client};
use tcp_udp_support::*;

const UDP: TrafficType = TrafficType::Udp;
/// How long a test waits for a reply that should come.
const REPLY: Duration = Duration::from_secs(5);
/// How long a test waits before deciding that no reply is coming.
const SILENCE: Duration = Duration::from_millis(400);

fn defaults(_: &mut Config) {}

fn dropped(ns: &str, svc: &str, port: &str, reason: &str) -> f64 {
    metric(
        "maille_proxy_udp_dropped_total",
        &[
            ("namespace", ns),
            ("service", svc),
            ("port", port),
            ("reason", reason),
        ],
    )
}

fn sessions(ns: &str, svc: &str) -> f64 {
    metric("maille_proxy_udp_sessions_active", &labels(ns, svc))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_each_get_their_own_replies() {
    let a = UdpBackend::start("dns-a").await;
    let b = UdpBackend::start("dns-b").await;
    let p = proxy(0, 1, defaults);
    p.set_table(&table(
        1,
        vec![service(
            "u-many",
            "dns",
            UDP,
            p.ports.udp[0],
            &[a.addr, b.addr],
        )],
    ));

    const CLIENTS: usize = 8;
    const MESSAGES: usize = 25;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mesh = p.udp[0];
        tasks.spawn(async move {
            let sock = client(mesh).await;
            let first = ask(&sock, b"whoami", REPLY).await.expect("whoami reply");
            for m in 0..MESSAGES {
                let msg = format!("client {c} message {m}");
                let reply = ask(&sock, msg.as_bytes(), REPLY).await.expect("reply");
                assert_eq!(reply, msg.as_bytes(), "client {c} got someone else's reply");
            }
            // A client's datagrams all go to one endpoint while its session lives.
            let last = ask(&sock, b"whoami", REPLY).await.expect("whoami reply");
            assert_eq!(first, last);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // One session, so one upstream socket, per client.
    assert_eq!(a.sources().len() + b.sources().len(), CLIENTS);
    assert_eq!(sessions("u-many", "dns"), CLIENTS as f64);

    let l = labels("u-many", "dns");
    let datagrams = (CLIENTS * (MESSAGES + 2)) as f64;
    assert_eq!(
        metric("maille_proxy_udp_datagrams_received_total", &l),
        datagrams
    );
    // A reply is counted just after it is sent, so the count may trail the client a little.
    eventually("replies counted", || {
        metric("maille_proxy_udp_datagrams_sent_total", &l) == datagrams
    })
    .await;
    let payload: usize = (0..CLIENTS)
        .map(|c| {
            (0..MESSAGES)
                .map(|m| format!("client {c} message {m}").len())
                .sum::<usize>()
                + 2 * "whoami".len()
        })
        .sum();
    assert_eq!(
        metric("maille_proxy_udp_received_bytes_total", &l),
        payload as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_datagram_is_carried_intact() {
    let backend = UdpBackend::start("big").await;
    let p = proxy(0, 1, defaults);
    p.set_table(&table(
        1,
        vec![service(
            "u-big",
            "blob",
            UDP,
            p.ports.udp[0],
            &[backend.addr],
        )],
    ));
    let sock = client(p.udp[0]).await;
    // The largest UDP payload over IPv4 (65 535 minus the IP and UDP headers).
    let big: Vec<u8> = (0..65_507u32).map(|i| (i * 7 % 256) as u8).collect();
    let reply = ask(&sock, &big, REPLY)
        .await
        .expect("reply to a 64 KiB datagram");
    assert_eq!(reply.len(), big.len());
    assert_eq!(reply, big);
    let l = labels("u-big", "blob");
    eventually("reply bytes counted", || {
        metric("maille_proxy_udp_sent_bytes_total", &l) == big.len() as f64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_expires_and_its_socket_is_closed() {
    let backend = UdpBackend::start("exp").await;
    let p = proxy(0, 1, |c| {
        c.udp_session_idle_timeout = Duration::from_millis(300)
    });
    p.set_table(&table(
        1,
        vec![service(
            "u-exp",
            "echo",
            UDP,
            p.ports.udp[0],
            &[backend.addr],
        )],
    ));

    let sock = client(p.udp[0]).await;
    assert_eq!(ask(&sock, b"one", REPLY).await.unwrap(), b"one");
    assert_eq!(sessions("u-exp", "echo"), 1.0);
    let upstream = backend.sources();
    assert_eq!(upstream.len(), 1);

    eventually("session expired", || sessions("u-exp", "echo") == 0.0).await;
    // The session's socket is really closed: a datagram to it is refused by the kernel.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe.set_read_timeout(Some(REPLY)).unwrap();
    probe.connect(upstream[0]).unwrap();
    probe.send(b"anyone?").unwrap();
    let err = probe.recv(&mut [0u8; 16]).expect_err("nothing answers");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");

    // The client is served again, by a new session.
    assert_eq!(ask(&sock, b"two", REPLY).await.unwrap(), b"two");
    assert_eq!(sessions("u-exp", "echo"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_over_the_bound_are_dropped_and_counted() {
    let backend = UdpBackend::start("lim").await;
    let p = proxy(0, 1, |c| c.udp_max_sessions = 2);
    p.set_table(&table(
        1,
        vec![service(
            "u-lim",
            "echo",
            UDP,
            p.ports.udp[0],
            &[backend.addr],
        )],
    ));
    let c1 = client(p.udp[0]).await;
    let c2 = client(p.udp[0]).await;
    let c3 = client(p.udp[0]).await;
    assert_eq!(ask(&c1, b"1", REPLY).await.unwrap(), b"1");
    assert_eq!(ask(&c2, b"2", REPLY).await.unwrap(), b"2");
    assert_eq!(ask(&c3, b"3", SILENCE).await, None, "third session refused");
    assert_eq!(dropped("u-lim", "echo", "7000", "session_limit"), 1.0);
    // The open sessions carry on.
    assert_eq!(ask(&c1, b"1 again", REPLY).await.unwrap(), b"1 again");
    assert_eq!(sessions("u-lim", "echo"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagram_to_an_unmapped_port_is_dropped_and_counted() {
    let backend = UdpBackend::start("only").await;
    let p = proxy(0, 2, defaults);
    p.set_table(&table(
        1,
        vec![service(
            "u-none",
            "echo",
            UDP,
            p.ports.udp[0],
            &[backend.addr],
        )],
    ));
    let port = p.ports.udp[1].to_string();
    let sock = client(p.udp[1]).await;
    assert_eq!(ask(&sock, b"hello?", SILENCE).await, None);
    eventually("drop counted", || dropped("", "", &port, "no_route") == 1.0).await;
    assert!(backend.sources().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_follow_the_table_when_their_endpoint_goes() {
    let a = UdpBackend::start("a").await;
    let b = UdpBackend::start("b").await;
    let p = proxy(0, 1, defaults);
    let port = p.ports.udp[0];
    p.set_table(&table(
        1,
        vec![service("u-swap", "echo", UDP, port, &[a.addr])],
    ));
    let sock = client(p.udp[0]).await;
    assert_eq!(ask(&sock, b"whoami", REPLY).await.unwrap(), b"a");
    // b joins: the session stays where it is.
    p.set_table(&table(
        2,
        vec![service("u-swap", "echo", UDP, port, &[a.addr, b.addr])],
    ));
    for _ in 0..10 {
        assert_eq!(ask(&sock, b"whoami", REPLY).await.unwrap(), b"a");
    }
    // a leaves: the next datagram opens a session to b.
    p.set_table(&table(
        3,
        vec![service("u-swap", "echo", UDP, port, &[b.addr])],
    ));
    assert_eq!(ask(&sock, b"whoami", REPLY).await.unwrap(), b"b");
    assert_eq!(sessions("u-swap", "echo"), 1.0);
    // The service leaves: dropped as unrouted, and the session is closed.
    p.set_table(&table(4, vec![]));
    assert_eq!(ask(&sock, b"whoami", SILENCE).await, None);
    eventually("old session closed", || sessions("u-swap", "echo") == 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_ends_the_session_and_the_next_datagram_picks_again() {
    let live = UdpBackend::start("live").await;
    // Nothing listens there: the kernel answers with ICMP port unreachable.
    let dead: SocketAddr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let p = proxy(0, 1, defaults);
    p.set_table(&table(
        1,
        vec![service(
            "u-dead",
            "echo",
            UDP,
            p.ports.udp[0],
            &[dead, live.addr],
        )],
    ));
    let sock = client(p.udp[0]).await;
    let mut answered = false;
    // A new session lands on the dead endpoint at most about half the time; 30 misses in a
    // row would mean the session never moved.
    for _ in 0..30 {
        if ask(&sock, b"whoami", Duration::from_millis(200))
            .await
            .as_deref()
            == Some(b"live")
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "never reached the live endpoint");
    let distinct: HashSet<_> = live.sources().into_iter().collect();
    assert_eq!(distinct.len(), 1);
}

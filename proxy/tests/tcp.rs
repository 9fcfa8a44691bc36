//! TCP through the in-process proxy (the real server builder and flags), against real
//! backends on loopback.

mod tcp_udp_support;

use std::net::SocketAddr;
use std::time::Duration;

use config_model::testing::table;
use config_model::{EndpointSpec, TrafficType};
use maille_proxy::config::Config;
use maille_proxy::tcp::testing::{connect, echo, is_closed};
use maille_proxy::testing::{client, TcpBackend};
use tcp_udp_support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TCP: TrafficType = TrafficType::Tcp;

fn defaults(_: &mut Config) {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_through_the_proxy() {
    let backend = TcpBackend::start("alpha").await;
    let p = proxy(1, 0, defaults);
    p.set_table(&table(
        1,
        vec![service(
            "t-rr",
            "echo",
            TCP,
            p.ports.tcp[0],
            &[backend.addr],
        )],
    ));

    let (mut conn, name) = connect(p.tcp[0]).await;
    assert_eq!(name, "alpha");
    assert_eq!(echo(&mut conn, b"hello mesh").await, b"hello mesh");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo(&mut conn, &big).await, big, "large payload intact");
    conn.shutdown().await.unwrap();
    let mut bye = Vec::new();
    conn.read_to_end(&mut bye).await.unwrap();
    assert_eq!(bye, b"bye 200010\n");

    let l = labels("t-rr", "echo");
    eventually("connection counted closed", || {
        metric("maille_proxy_tcp_connections_closed_total", &l) == 1.0
    })
    .await;
    assert_eq!(metric("maille_proxy_tcp_connections_opened_total", &l), 1.0);
    assert_eq!(metric("maille_proxy_tcp_connections_open", &l), 0.0);
    assert_eq!(metric("maille_proxy_tcp_connections_failed_total", &l), 0.0);
    let sent = 10.0 + big.len() as f64;
    assert_eq!(metric("maille_proxy_tcp_received_bytes_total", &l), sent);
    // The greeting and goodbye lines come on top of the echo.
    assert_eq!(
        metric("maille_proxy_tcp_sent_bytes_total", &l),
        sent + "alpha\n".len() as f64 + bye.len() as f64
    );
    // And the admin endpoint serves them.
    let page = client::get_url(&p.admin_url("/metrics")).await.unwrap();
    assert!(
        page.body
            .contains("maille_proxy_tcp_connections_opened_total{namespace=\"t-rr\""),
        "{}",
        page.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_two_mesh_ports_reach_their_own_backends() {
    let a = TcpBackend::start("db-a").await;
    let b = TcpBackend::start("cache-b").await;
    let p = proxy(2, 0, defaults);
    p.set_table(&table(
        1,
        vec![
            service("t-two", "db", TCP, p.ports.tcp[0], &[a.addr]),
            service("t-two", "cache", TCP, p.ports.tcp[1], &[b.addr]),
        ],
    ));
    for _ in 0..5 {
        let (mut c0, n0) = connect(p.tcp[0]).await;
        let (mut c1, n1) = connect(p.tcp[1]).await;
        assert_eq!((n0.as_str(), n1.as_str()), ("db-a", "cache-b"));
        assert_eq!(echo(&mut c0, b"x").await, b"x");
        assert_eq!(echo(&mut c1, b"y").await, b"y");
    }
    assert_eq!((a.accepted(), b.accepted()), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_spread_over_weighted_endpoints() {
    let light = TcpBackend::start("light").await;
    let heavy = TcpBackend::start("heavy").await;
    let p = proxy(1, 0, defaults);
    let mut svc = service("t-spread", "echo", TCP, p.ports.tcp[0], &[]);
    svc.endpoints = vec![
        EndpointSpec {
            address: light.addr_str(),
            weight: 1,
            node: None,
        },
        EndpointSpec {
            address: heavy.addr_str(),
            weight: 3,
            node: None,
        },
    ];
    p.set_table(&table(1, vec![svc]));

    const N: usize = 400;
    let mesh = p.tcp[0];
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        tasks.spawn(async move {
            let (mut conn, name) = connect(mesh).await;
            let msg = format!("client {i}");
            assert_eq!(echo(&mut conn, msg.as_bytes()).await, msg.as_bytes());
            name
        });
    }
    let mut light_n = 0;
    while let Some(name) = tasks.join_next().await {
        if name.unwrap() == "light" {
            light_n += 1;
        }
    }
    assert_eq!(
        light.accepted() + heavy.accepted(),
        N,
        "every connection reached exactly one backend"
    );
    // The balancer is power-of-two-choices over connect latency × open connections, with
    // candidates drawn by weight: the weight-1 endpoint's share (p = 1/4) lies between p² and
    // 1-(1-p)² (from 6% to 44%: 25 to 175 of 400), whatever the latencies. Plus a margin for
    // chance of four standard deviations of the count at either end (one is about 5
    // connections at the low end, 10 at the high; 15..=185 failed once on a busy machine).
    assert!((5..=215).contains(&light_n), "light got {light_n} of {N}");
    assert!(heavy.accepted() > light.accepted(), "weights are honoured");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_to_an_unmapped_port_is_closed_promptly() {
    let backend = TcpBackend::start("only").await;
    let p = proxy(2, 0, defaults);
    let unmapped = p.ports.tcp[1].to_string();
    p.set_table(&table(
        1,
        vec![service(
            "t-unmapped",
            "echo",
            TCP,
            p.ports.tcp[0],
            &[backend.addr],
        )],
    ));
    let unrouted = [
        ("namespace", ""),
        ("service", ""),
        ("port", unmapped.as_str()),
    ];
    let before = metric("maille_proxy_tcp_connections_failed_total", &unrouted);

    let mut conn = TcpStream::connect(p.tcp[1]).await.unwrap();
    let _ = conn.write_all(b"anyone?").await;
    assert!(is_closed(&mut conn).await, "left open");
    assert_eq!(backend.accepted(), 0);
    eventually("unrouted connection counted", || {
        metric("maille_proxy_tcp_connections_failed_total", &unrouted) > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_passed_on_and_the_answer_still_arrives() {
    let backend = TcpBackend::start("hc").await;
    let p = proxy(1, 0, defaults);
    p.set_table(&table(
        1,
        vec![service(
            "t-half",
            "echo",
            TCP,
            p.ports.tcp[0],
            &[backend.addr],
        )],
    ));

    let (mut conn, _) = connect(p.tcp[0]).await;
    conn.write_all(b"12345").await.unwrap();
    // The client is done sending but still reading.
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut rest))
        .await
        .expect("the backend saw the half-close and finished")
        .unwrap();
    assert_eq!(rest, b"12345bye 5\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_is_retried_on_another_endpoint() {
    let live = TcpBackend::start("live").await;
    // Nothing listens there: connecting is refused at once.
    let dead = closed_tcp_port();
    let p = proxy(1, 0, defaults);
    p.set_table(&table(
        1,
        vec![service(
            "t-retry",
            "echo",
            TCP,
            p.ports.tcp[0],
            &[dead, live.addr],
        )],
    ));
    for _ in 0..20 {
        let (mut conn, name) = connect(p.tcp[0]).await;
        assert_eq!(name, "live");
        assert_eq!(echo(&mut conn, b"ok").await, b"ok");
    }
    assert_eq!(
        metric(
            "maille_proxy_tcp_connections_failed_total",
            &labels("t-retry", "echo")
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_is_closed_when_no_endpoint_answers() {
    let p = proxy(2, 0, defaults);
    p.set_table(&table(
        1,
        vec![
            service(
                "t-dead",
                "echo",
                TCP,
                p.ports.tcp[0],
                &[closed_tcp_port(), closed_tcp_port()],
            ),
            service("t-dead", "empty", TCP, p.ports.tcp[1], &[]),
        ],
    ));
    let mut conn = TcpStream::connect(p.tcp[0]).await.unwrap();
    assert!(is_closed(&mut conn).await, "left open");
    let mut conn = TcpStream::connect(p.tcp[1]).await.unwrap();
    assert!(is_closed(&mut conn).await, "left open");
    for svc in ["echo", "empty"] {
        let l = labels("t-dead", svc);
        eventually("failure counted", || {
            metric("maille_proxy_tcp_connections_failed_total", &l) == 1.0
                && metric("maille_proxy_tcp_connections_closed_total", &l) == 1.0
        })
        .await;
    }
}

/// A loopback listener that never accepts, with its accept queue filled: the kernel drops
/// further SYNs, so a connect to it hangs until the connecting side gives up. Keep the
/// returned value alive while it is used.
async fn unresponsive_listener() -> ((socket2::Socket, Vec<TcpStream>), SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(c)) => held.push(c),
            Ok(Err(e)) => panic!("unexpected connect error: {e}"),
            Err(_) => break,
        }
        assert!(held.len() < 16, "the listener's accept queue never filled");
    }
    ((socket, held), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_moves_on_to_the_next_endpoint() {
    let live = TcpBackend::start("live").await;
    let (_hold, unresponsive) = unresponsive_listener().await;
    let p = proxy(1, 0, |c| {
        c.tcp_connect_timeout = Duration::from_millis(200);
        c.tcp_connect_attempts = 2;
    });
    let mut svc = service(
        "t-cto",
        "echo",
        TCP,
        p.ports.tcp[0],
        &[unresponsive, live.addr],
    );
    // Nearly always tried first, so that nearly every connection goes through a timeout.
    svc.endpoints[0].weight = 1000;
    p.set_table(&table(1, vec![svc]));
    for _ in 0..6 {
        let (mut conn, name) = connect(p.tcp[0]).await;
        assert_eq!(name, "live");
        assert_eq!(echo(&mut conn, b"t").await, b"t");
    }
    assert_eq!(
        metric(
            "maille_proxy_tcp_connections_failed_total",
            &labels("t-cto", "echo")
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_are_bounded_by_the_flag() {
    let live = TcpBackend::start("live").await;
    let p = proxy(1, 0, |c| c.tcp_connect_attempts = 1);
    let (dead1, dead2) = (closed_tcp_port(), closed_tcp_port());
    let mut svc = service(
        "t-bound",
        "echo",
        TCP,
        p.ports.tcp[0],
        &[dead1, dead2, live.addr],
    );
    // The live endpoint is (almost) never the first choice, and there is no second one.
    svc.endpoints[2].weight = 1;
    svc.endpoints[0].weight = 10_000;
    svc.endpoints[1].weight = 10_000;
    p.set_table(&table(1, vec![svc]));
    let mut conn = TcpStream::connect(p.tcp[0]).await.unwrap();
    assert!(is_closed(&mut conn).await);
    eventually("failure counted", || {
        metric(
            "maille_proxy_tcp_connections_failed_total",
            &labels("t-bound", "echo"),
        ) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_is_closed_after_the_idle_timeout() {
    let backend = TcpBackend::start("idle").await;
    let p = proxy(1, 0, |c| c.tcp_idle_timeout = Duration::from_millis(300));
    p.set_table(&table(
        1,
        vec![service(
            "t-idle",
            "echo",
            TCP,
            p.ports.tcp[0],
            &[backend.addr],
        )],
    ));
    let (mut conn, _) = connect(p.tcp[0]).await;
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(echo(&mut conn, b"k").await, b"k");
    }
    // ...silence closes it.
    assert!(is_closed(&mut conn).await, "idle connection left open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_swap_leaves_open_connections_working() {
    let old = TcpBackend::start("old").await;
    let new = TcpBackend::start("new").await;
    let p = proxy(1, 0, defaults);
    let port = p.ports.tcp[0];
    p.set_table(&table(
        1,
        vec![service("t-swap", "echo", TCP, port, &[old.addr])],
    ));

    let mut open = Vec::new();
    for _ in 0..5 {
        let (mut conn, name) = connect(p.tcp[0]).await;
        assert_eq!(name, "old");
        assert_eq!(echo(&mut conn, b"before").await, b"before");
        open.push(conn);
    }
    // The service moves to another endpoint, then disappears altogether.
    p.set_table(&table(
        2,
        vec![service("t-swap", "echo", TCP, port, &[new.addr])],
    ));
    let (mut fresh, name) = connect(p.tcp[0]).await;
    assert_eq!(name, "new", "new connections follow the new table");
    assert_eq!(echo(&mut fresh, b"fresh").await, b"fresh");
    p.set_table(&table(3, vec![]));
    for conn in &mut open {
        assert_eq!(echo(conn, b"after").await, b"after");
    }
    assert_eq!(echo(&mut fresh, b"still").await, b"still");
    let mut late = TcpStream::connect(p.tcp[0]).await.unwrap();
    assert!(is_closed(&mut late).await, "no route any more");
    // And they still finish cleanly.
    for mut conn in open {
        conn.shutdown().await.unwrap();
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye 11\n");
    }
}

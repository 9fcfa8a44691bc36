//! SMI over TCP and UDP through the real proxy: access rules (ACL mode) with clients bound to
//! distinct loopback addresses standing for different pods, and TCP traffic splits.

mod tcp_udp_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use config_model::testing::table;
use config_model::{AccessRuleSpec, SplitBackendSpec, SplitSpec, TableSpec, TrafficType};
use maille_proxy::tcp::testing::{connect as tcp_connect, echo as tcp_echo};
use maille_proxy::testing::{TcpBackend, UdpBackend};
use maille_proxy::udp::testing::ask as udp_ask;
use tcp_udp_support::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream, UdpSocket};

const ALLOWED: [u8; 4] = [127, 0, 0, 2];
const OTHER: [u8; 4] = [127, 0, 0, 3];

/// A TCP connection to the proxy from a given loopback address (a "pod").
async fn connect_from(src: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((src, 0))).unwrap();
    tokio::time::timeout(PATIENCE, s.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// The first line the connection brings (the backend's name), or `None` when the proxy
/// closes it first.
async fn greeting(conn: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match tokio::time::timeout(PATIENCE, conn.read(&mut byte)).await {
            Ok(Ok(1)) if byte[0] == b'\n' => return Some(String::from_utf8(line).unwrap()),
            Ok(Ok(1)) => line.push(byte[0]),
            Ok(Ok(_)) | Ok(Err(_)) => return None,
            Err(_) => panic!("connection left open without a greeting"),
        }
    }
}

fn rule(name: &str, sources: &[[u8; 4]]) -> AccessRuleSpec {
    AccessRuleSpec {
        name: name.into(),
        sources: sources
            .iter()
            .map(|s| IpAddr::from(*s).to_string())
            .collect(),
        identities: vec![],
        http: None,
    }
}

fn acl(mut spec: TableSpec) -> TableSpec {
    spec.acl = true;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_route_admits_its_sources_and_closes_others_until_the_target_goes() {
    let backend = TcpBackend::start("pg").await;
    let p = proxy(1, 0, |_| {});
    let mut db = service(
        "acl-tcp",
        "db",
        TrafficType::Tcp,
        p.tcp[0].port(),
        &[backend.addr],
    );
    db.access.push(rule("acl-tcp/api-to-db", &[ALLOWED]));
    p.set_table(&acl(table(1, vec![db.clone()])));

    let mut ok = connect_from(ALLOWED, p.tcp[0]).await;
    assert_eq!(greeting(&mut ok).await.as_deref(), Some("pg"));
    assert_eq!(tcp_echo(&mut ok, b"select 1").await, b"select 1");

    let mut denied = connect_from(OTHER, p.tcp[0]).await;
    assert_eq!(
        greeting(&mut denied).await,
        None,
        "unlisted source is closed"
    );
    let denied_labels = [
        ("namespace", "acl-tcp"),
        ("service", "db"),
        ("port", "7000"),
        ("source", "127.0.0.3"),
    ];
    assert_eq!(metric("maille_proxy_acl_denied_total", &denied_labels), 1.0);

    // The TrafficTarget is deleted: the next table has no rule, and new connections are closed.
    db.access.clear();
    p.set_table(&acl(table(2, vec![db.clone()])));
    let mut again = connect_from(ALLOWED, p.tcp[0]).await;
    assert_eq!(greeting(&mut again).await, None);
    assert_eq!(
        metric(
            "maille_proxy_acl_denied_total",
            &[("service", "db"), ("source", "127.0.0.2")]
        ),
        1.0
    );

    // Out of ACL mode the same table lets everyone in.
    p.set_table(&table(3, vec![db]));
    let mut open = connect_from(OTHER, p.tcp[0]).await;
    assert_eq!(greeting(&mut open).await.as_deref(), Some("pg"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagrams_from_unlisted_sources_are_dropped() {
    let backend = UdpBackend::start("resolver").await;
    let p = proxy(0, 1, |_| {});
    let mesh = p.udp[0];
    let mut dns = service(
        "acl-udp",
        "dns",
        TrafficType::Udp,
        mesh.port(),
        &[backend.addr],
    );
    dns.access.push(rule("acl-udp/clients-to-dns", &[ALLOWED]));
    p.set_table(&acl(table(1, vec![dns.clone()])));

    let from = |src: [u8; 4]| async move {
        let s = UdpSocket::bind(SocketAddr::from((src, 0))).await.unwrap();
        s.connect(mesh).await.unwrap();
        s
    };
    let allowed = from(ALLOWED).await;
    let other = from(OTHER).await;
    assert_eq!(
        udp_ask(&allowed, b"whoami", PATIENCE).await.as_deref(),
        Some(&b"resolver"[..])
    );
    assert_eq!(
        udp_ask(&other, b"whoami", Duration::from_millis(300)).await,
        None
    );
    let labels = [
        ("namespace", "acl-udp"),
        ("service", "dns"),
        ("reason", "access_denied"),
    ];
    assert_eq!(metric("maille_proxy_udp_dropped_total", &labels), 1.0);
    assert_eq!(
        metric(
            "maille_proxy_acl_denied_total",
            &[("service", "dns"), ("source", "127.0.0.3")]
        ),
        1.0
    );

    // Removing the rule ends the allowed client's session too.
    dns.access.clear();
    p.set_table(&acl(table(2, vec![dns])));
    assert_eq!(
        udp_ask(&allowed, b"whoami", Duration::from_millis(300)).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_split_spreads_connections_by_weight() {
    let (a, b, root_backend) = (
        TcpBackend::start("v1").await,
        TcpBackend::start("v2").await,
        TcpBackend::start("root").await,
    );
    let p = proxy(3, 0, |_| {});
    let mut root = service(
        "split-tcp",
        "pg",
        TrafficType::Tcp,
        p.tcp[0].port(),
        &[root_backend.addr],
    );
    root.splits.push(SplitSpec {
        name: "split-tcp/move".into(),
        matches: vec![],
        backends: ["pg-v1", "pg-v2"]
            .iter()
            .map(|n| SplitBackendSpec {
                namespace: "split-tcp".into(),
                name: n.to_string(),
                port: 7000,
                weight: 50,
            })
            .collect(),
    });
    p.set_table(&table(
        1,
        vec![
            root,
            service(
                "split-tcp",
                "pg-v1",
                TrafficType::Tcp,
                p.tcp[1].port(),
                &[a.addr],
            ),
            service(
                "split-tcp",
                "pg-v2",
                TrafficType::Tcp,
                p.tcp[2].port(),
                &[b.addr],
            ),
        ],
    ));
    let n = 200;
    let mut v1 = 0;
    for _ in 0..n {
        let (_conn, name) = tcp_connect(p.tcp[0]).await;
        assert_ne!(name, "root", "the split takes every connection");
        if name == "v1" {
            v1 += 1;
        }
    }
    // 50/50 over 200 connections: 100 ± 30 (more than 4 standard deviations).
    assert!((70..=130).contains(&v1), "v1 got {v1} of {n}");
    let count = |backend: &str| {
        metric(
            "maille_proxy_split_requests_total",
            &[("service", "pg"), ("backend", backend)],
        )
    };
    assert_eq!(
        count("split-tcp/pg-v1") + count("split-tcp/pg-v2"),
        n as f64
    );
}

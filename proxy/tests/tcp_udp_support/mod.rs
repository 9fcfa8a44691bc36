//! Shared by the TCP and UDP tests: starting the in-process proxy with only TCP or UDP
//! listeners, table building, and metric reading.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use config_model::{ServiceSpec, TrafficType};
use maille_proxy::config::Config;
use maille_proxy::testing::{TestProxy, TestProxyOptions};

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A proxy with `tcp` TCP and `udp` UDP listener ports (ephemeral, loopback), no HTTP
/// listener, flags adjusted by `configure`, and no table yet.
pub fn proxy(tcp: usize, udp: usize, configure: fn(&mut Config)) -> TestProxy {
    // Logs with RUST_LOG=debug, captured per test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    TestProxy::start_with(TestProxyOptions {
        http_ports: 0,
        tcp_ports: tcp,
        udp_ports: udp,
        configure,
        ..TestProxyOptions::default()
    })
}

/// A TCP or UDP service port 7000 with endpoints of weight 1.
pub fn service(
    ns: &str,
    name: &str,
    tt: TrafficType,
    mesh_port: u16,
    endpoints: &[SocketAddr],
) -> ServiceSpec {
    let eps: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    let eps: Vec<&str> = eps.iter().map(|s| s.as_str()).collect();
    config_model::testing::service(ns, name, 7000, mesh_port, tt, &eps)
}

/// A port on 127.0.0.1 that nothing listens on (bound a moment ago, then released).
pub fn closed_tcp_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `namespace`, `service` and `port` labels of a test service.
pub fn labels<'a>(ns: &'a str, svc: &'a str) -> [(&'a str, &'a str); 3] {
    [("namespace", ns), ("service", svc), ("port", "7000")]
}

/// The value of the sample of `name` whose labels include `labels`, as `/metrics` serves it
/// (the default registry's text exposition); 0 when absent.
pub fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some(x) => x,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let have: Vec<&str> = label_part.split(',').collect();
        if wanted.iter().all(|w| have.contains(&w.as_str())) {
            return value.trim().parse().unwrap();
        }
    }
    0.0
}

/// Waits until `cond` holds, up to [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

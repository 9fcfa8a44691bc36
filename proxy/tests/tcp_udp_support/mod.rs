//! Shared by the TCP and UDP tests: starting the in-process proxy with only TCP or UDP
//! listeners and table building (waiting and metric reading are `maille_proxy::testing`'s).

// Each test binary uses a different part of this module.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;

use config_model::{ServiceSpec, TrafficType};
use maille_proxy::config::Config;
use maille_proxy::testing::{TestProxy, TestProxyOptions};

pub use maille_proxy::testing::{eventually, metric, PATIENCE};

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

//! The real `maille-proxy` binary carries TCP and UDP: flags, table file, round trips.

mod tcp_udp_support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use config_model::testing::table;
use config_model::TrafficType;
use maille_proxy::tcp::testing::{connect, echo};
use maille_proxy::testing::{client, free_tcp_ports, free_udp_ports, TcpBackend, UdpBackend};
use maille_proxy::udp::testing::{ask, client as udp_client};
use tcp_udp_support::*;

/// The proxy process, killed when dropped.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_carries_tcp_and_udp_from_a_table_file() {
    let tcp_backend = TcpBackend::start("tcp-one").await;
    let udp_backend = UdpBackend::start("udp-one").await;
    let tcp_ports = free_tcp_ports(3);
    let (tcp_port, admin_port) = (tcp_ports[0], tcp_ports[2]);
    let udp_port = free_udp_ports(1)[0];
    let dir = tempfile::tempdir().unwrap();
    let table_path = dir.path().join("table.json");
    let spec = table(
        1,
        vec![
            service("bin", "db", TrafficType::Tcp, tcp_port, &[tcp_backend.addr]),
            service(
                "bin",
                "dns",
                TrafficType::Udp,
                udp_port,
                &[udp_backend.addr],
            ),
        ],
    );
    std::fs::write(&table_path, serde_json::to_vec(&spec).unwrap()).unwrap();

    let child = Command::new(env!("CARGO_BIN_EXE_maille-proxy"))
        .args(["--listen-ip", "127.0.0.1", "--http-ports", "none"])
        .args(["--tcp-ports", &format!("{tcp_port},{}", tcp_ports[1])])
        .args(["--udp-ports", &udp_port.to_string()])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .args([
            "--tcp-connect-timeout",
            "2s",
            "--udp-session-idle-timeout",
            "5s",
        ])
        .arg("--config")
        .arg(&table_path)
        .arg("--upgrade-sock")
        .arg(dir.path().join("upgrade.sock"))
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("maille-proxy binary (built by cargo test)");
    let _proxy = Proxy(child);

    let ready = format!("http://127.0.0.1:{admin_port}/ready");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if client::get_url(&ready).await.is_ok_and(|r| r.status == 200) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "proxy never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (mut conn, name) = connect(([127, 0, 0, 1], tcp_port).into()).await;
    assert_eq!(name, "tcp-one");
    assert_eq!(
        echo(&mut conn, b"through the binary").await,
        b"through the binary"
    );

    let sock = udp_client(([127, 0, 0, 1], udp_port).into()).await;
    assert_eq!(
        ask(&sock, b"whoami", Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"udp-one"[..])
    );
    assert_eq!(
        ask(&sock, b"datagram", Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"datagram"[..])
    );

    // The second TCP port has no service: closed at once.
    let mut other = tokio::net::TcpStream::connect(("127.0.0.1", tcp_ports[1]))
        .await
        .unwrap();
    assert!(maille_proxy::tcp::testing::is_closed(&mut other).await);
}

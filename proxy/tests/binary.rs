//! Tests of the real `maille-proxy` binary: SIGTERM drains in-flight requests, and a graceful
//! upgrade (`--upgrade` + SIGQUIT) hands the listeners over without refusing a request.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use config_model::testing::{http, table};
use maille_proxy::testing::client::{self, HttpClient};
use maille_proxy::testing::{free_tcp_ports, wait_listening, HttpBackend};

/// A `maille-proxy` child process, killed when dropped.
struct ProxyProcess {
    child: Child,
}

impl ProxyProcess {
    fn start(table: &Path, http_port: u16, admin_port: u16, sock: &Path, extra: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_maille-proxy"))
            .args([
                "--config",
                table.to_str().unwrap(),
                "--listen-ip",
                "127.0.0.1",
                "--http-ports",
                &http_port.to_string(),
                "--tcp-ports",
                "none",
                "--udp-ports",
                "none",
                "--admin-addr",
                &format!("127.0.0.1:{admin_port}"),
                "--upgrade-sock",
                sock.to_str().unwrap(),
                "--threads",
                "1",
                "--log",
                "warn",
            ])
            .args(extra)
            .env_remove("MAILLE_CONTROLLER_URL")
            .stdin(Stdio::null())
            .spawn()
            .expect("start maille-proxy");
        ProxyProcess { child }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.child.id())])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "proxy still running after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_table(path: &Path, port: u16, backend: &HttpBackend) {
    let spec = table(1, vec![http("bin", "web", port, &[&backend.addr_str()])]);
    std::fs::write(path, serde_json::to_vec(&spec).unwrap()).unwrap();
}

async fn wait_ready(admin: SocketAddr) {
    let start = Instant::now();
    loop {
        if let Ok(r) = client::get_url(&format!("http://{admin}/ready")).await {
            if r.status == 200 {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "proxy never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish_then_exits() {
    let slow = HttpBackend::start_with_delay("slow", Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_tcp_ports(2);
    let table_path = dir.path().join("table.json");
    write_table(&table_path, ports[0], &slow);
    let mut proxy = ProxyProcess::start(
        &table_path,
        ports[0],
        ports[1],
        &dir.path().join("upgrade.sock"),
        &[
            "--grace-period-seconds",
            "3",
            "--graceful-shutdown-timeout-seconds",
            "2",
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    wait_listening(addr, Duration::from_secs(30));
    wait_ready(SocketAddr::from(([127, 0, 0, 1], ports[1]))).await;

    let in_flight =
        tokio::spawn(async move { client::get(addr, "web.bin.maille.mesh", "/").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        slow.hits(),
        1,
        "the request reached the backend before SIGTERM"
    );
    proxy.signal("TERM");

    // The request started before SIGTERM completes normally.
    let r = in_flight.await.unwrap().unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "slow"));
    // New connections are refused once the listeners stopped.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener still accepting after SIGTERM"
    );
    // Exits after the grace period (3 s) and the runtime timeout (2 s at most).
    let status = tokio::task::spawn_blocking(move || {
        let s = proxy.wait_exit(Duration::from_secs(20));
        drop(proxy);
        s
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_hands_over_the_listeners_without_failures() {
    let web = HttpBackend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_tcp_ports(2);
    let table_path = dir.path().join("table.json");
    let sock = dir.path().join("upgrade.sock");
    write_table(&table_path, ports[0], &web);
    let grace = [
        "--grace-period-seconds",
        "1",
        "--graceful-shutdown-timeout-seconds",
        "1",
    ];
    let mut old = ProxyProcess::start(&table_path, ports[0], ports[1], &sock, &grace);
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let admin = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    wait_listening(addr, Duration::from_secs(30));
    wait_ready(admin).await;

    // Steady traffic, a new connection per request, for the whole hand-over.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, ok) = (stop.clone(), ok.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 20_000 {
                n += 1;
                match HttpClient::http1()
                    .get(addr, "web.bin.maille.mesh", "/")
                    .await
                {
                    Ok(r) if r.status == 200 && r.body == "web" => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
                    Err(e) => failures.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            failures
        })
    };

    // The new process waits for the sockets; SIGQUIT makes the old one send them.
    let mut new = ProxyProcess::start(
        &table_path,
        ports[0],
        ports[1],
        &sock,
        &[&grace[..], &["--upgrade"]].concat(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    let old_status = tokio::task::spawn_blocking(move || {
        let s = old.wait_exit(Duration::from_secs(30));
        drop(old);
        s
    })
    .await
    .unwrap();
    assert!(old_status.success(), "old proxy exit status {old_status}");
    let served_before = ok.load(Ordering::Relaxed);
    // Only the new process is left: it serves the same ports.
    wait_ready(admin).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        ok.load(Ordering::Relaxed) > served_before,
        "no request served after the old proxy exited"
    );
    assert!(new.child.try_wait().unwrap().is_none(), "new proxy exited");
}

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

/// The tests of this file run one at a time: each picks free ports, releases them and lets a
/// child process bind them, so a test running alongside could be handed the same ports in
/// between and talk to another test's proxy.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A `maille-proxy` child process, killed when dropped.
struct ProxyProcess {
    child: Child,
}

impl ProxyProcess {
    fn start(table: &Path, http_port: u16, admin_port: u16, sock: &Path, extra: &[&str]) -> Self {
        let ports = http_port.to_string();
        let mut args = vec!["--config", table.to_str().unwrap(), "--http-ports", &ports];
        args.extend(["--tcp-ports", "none", "--udp-ports", "none"]);
        args.extend(extra);
        Self::spawn(admin_port, sock, &args)
    }

    /// `maille-proxy` on 127.0.0.1 with this admin port and upgrade socket, and `args`.
    fn spawn(admin_port: u16, sock: &Path, args: &[&str]) -> Self {
        Self::spawn_logging(admin_port, sock, args, "warn", None)
    }

    /// [`Self::spawn`] with this `--log` filter, its output written to `log` when given.
    fn spawn_logging(
        admin_port: u16,
        sock: &Path,
        args: &[&str],
        filter: &str,
        log: Option<std::fs::File>,
    ) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_maille-proxy"));
        cmd.args([
            "--listen-ip",
            "127.0.0.1",
            "--admin-addr",
            &format!("127.0.0.1:{admin_port}"),
            "--upgrade-sock",
            sock.to_str().unwrap(),
            "--threads",
            "1",
            "--log",
            filter,
        ])
        .args(args)
        .env_remove("MAILLE_CONTROLLER_URL")
        .env_remove("MAILLE_CONFIG")
        .stdin(Stdio::null());
        if let Some(log) = log {
            cmd.stdout(log.try_clone().unwrap()).stderr(log);
        }
        let child = cmd.spawn().expect("start maille-proxy");
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
    let _serial = SERIAL.lock().await;
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
    let _serial = SERIAL.lock().await;
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

// ---- Graceful upgrade with Maille's own hand-over, table hand-over, drain ----

use std::collections::HashSet;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn port_list(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// What happened to the requests of one load client.
#[derive(Debug, Default)]
struct Stats {
    answered: u64,
    /// Answers that carried `Connection: close`.
    told_to_close: u64,
    /// Connections refused (no request sent).
    refused: u64,
    /// Requests sent on a reused keep-alive connection that got no (right) answer.
    lost: Vec<String>,
    /// Requests sent on a fresh connection that got no (right) answer.
    lost_fresh: Vec<String>,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.answered += o.answered;
        self.told_to_close += o.told_to_close;
        self.refused += o.refused;
        self.lost.extend(o.lost);
        self.lost_fresh.extend(o.lost_fresh);
    }
}

/// Reads one HTTP/1.1 response: status, body, whether it said `Connection: close`.
async fn read_response(r: &mut BufReader<TcpStream>) -> Result<(u16, String, bool), String> {
    let mut line = String::new();
    if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
        return Err("connection closed before the response".into());
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {line:?}"))?;
    let (mut len, mut close) = (0usize, false);
    loop {
        line.clear();
        if r.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed in the response head".into());
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().map_err(|_| format!("bad length {l:?}"))?;
        }
        if l.starts_with("connection:") && l.contains("close") {
            close = true;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
}

/// A client sending `GET /` continuously: on one keep-alive connection (reconnecting only when
/// told to close, or when the connection failed), or on a fresh connection per request.
async fn client_loop(addr: SocketAddr, fresh: bool, stop: Arc<AtomicBool>) -> Stats {
    let mut stats = Stats::default();
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && n < 100_000 {
        n += 1;
        let reused = conn.is_some();
        if conn.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => conn = Some(BufReader::new(s)),
                Err(_) => {
                    stats.refused += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        let req = b"GET / HTTP/1.1\r\nHost: web.bin.maille.mesh\r\n\r\n";
        let outcome = match c.get_mut().write_all(req).await {
            Err(e) => Err(format!("write: {e}")),
            Ok(()) => tokio::time::timeout(Duration::from_secs(10), read_response(c))
                .await
                .unwrap_or_else(|_| Err("no answer within 10 s".into())),
        };
        match outcome {
            Ok((200, body, close)) if body == "web" => {
                stats.answered += 1;
                stats.told_to_close += u64::from(close);
                if close || fresh {
                    conn = None;
                }
            }
            other => {
                let what = format!("{other:?}");
                if reused {
                    stats.lost.push(what);
                } else {
                    stats.lost_fresh.push(what);
                }
                conn = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stats
}

/// An h2c client sending `GET /` continuously on one connection; when the proxy sends
/// `GOAWAY` (drain), it finishes its request there and opens a new connection.
/// What [`h2c_loop`] notes for a request hyper handed back unsent.
const UNSENT: &str = "not sent: the connection closed first";

async fn h2c_loop(addr: SocketAddr, stop: Arc<AtomicBool>) -> Stats {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut stats = Stats::default();
    let mut sender: Option<hyper::client::conn::http2::SendRequest<Empty<bytes::Bytes>>> = None;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) && n < 100_000 {
        n += 1;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            if sender.take().is_some() {
                stats.told_to_close += 1;
            }
            let Ok(stream) = TcpStream::connect(addr).await else {
                stats.refused += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
            {
                Ok((s, conn)) => {
                    tokio::spawn(conn);
                    sender = Some(s);
                }
                Err(e) => {
                    stats.lost_fresh.push(format!("h2c handshake: {e}"));
                    continue;
                }
            }
        }
        let s = sender.as_mut().unwrap();
        if s.ready().await.is_err() {
            // GOAWAY arrived: nothing was sent on this connection.
            continue;
        }
        let req = http::Request::get("http://web.bin.maille.mesh/")
            .body(Empty::new())
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            let resp = s.try_send_request(req).await.map_err(|mut e| {
                // Handed back: the connection closed (a GOAWAY) before a byte of it was sent.
                if e.take_message().is_some() {
                    UNSENT.to_string()
                } else {
                    format!("{:?}", e.error())
                }
            })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await
        .unwrap_or_else(|_| Err("no answer within 10 s".into()));
        match outcome {
            Ok((200, body)) if body == "web" => stats.answered += 1,
            // A stream above a GOAWAY's last stream id was not processed and may be sent again
            // (RFC 9113 §6.8), nor was a request hyper handed back: the client was told, as a
            // draining proxy should tell it.
            Err(e) if e.contains("GoAway") || e == UNSENT => {
                stats.told_to_close += 1;
                sender = None;
            }
            other => stats.lost.push(format!("h2c: {other:?}")),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stats
}

/// `keep_alive` keep-alive clients, `fresh` new-connection clients and `h2c` HTTP/2 clients
/// on `addr`, until the returned flag is set; the handle sums their stats.
fn start_load(
    addr: SocketAddr,
    keep_alive: usize,
    fresh: usize,
    h2c: usize,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Stats>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks: Vec<_> = (0..keep_alive + fresh)
        .map(|i| tokio::spawn(client_loop(addr, i >= keep_alive, stop.clone())))
        .collect();
    tasks.extend((0..h2c).map(|_| tokio::spawn(h2c_loop(addr, stop.clone()))));
    let all = tokio::spawn(async move {
        let mut sum = Stats::default();
        for t in tasks {
            sum.add(t.await.unwrap());
        }
        sum
    });
    (stop, all)
}

async fn wait_exit(mut p: ProxyProcess, limit: Duration) -> ExitStatus {
    tokio::task::spawn_blocking(move || {
        let s = p.wait_exit(limit);
        drop(p);
        s
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_with_the_default_listener_count_under_load_then_sigterm_loses_no_request() {
    let _serial = SERIAL.lock().await;
    // The default flags open 10 HTTP, 25 TCP and the admin listener: 36 sockets to hand over,
    // more than Pingora's 32 per message. The literal default port numbers may be taken on a
    // test machine, so the test uses free ports in the same numbers.
    let web = HttpBackend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let tcp_ports = free_tcp_ports(36);
    let (http, rest) = tcp_ports.split_at(10);
    let (tcp, admin) = (&rest[..25], rest[25]);
    let udp = maille_proxy::testing::free_udp_ports(25);
    let table_path = dir.path().join("table.json");
    let sock = dir.path().join("upgrade.sock");
    write_table(&table_path, http[0], &web);
    let (http_list, tcp_list, udp_list) = (port_list(http), port_list(tcp), port_list(&udp));
    let args = [
        "--config",
        table_path.to_str().unwrap(),
        "--http-ports",
        &http_list,
        "--tcp-ports",
        &tcp_list,
        "--udp-ports",
        &udp_list,
        "--grace-period-seconds",
        "2",
        "--graceful-shutdown-timeout-seconds",
        "1",
    ];
    let old = ProxyProcess::spawn(admin, &sock, &args);
    let addr = SocketAddr::from(([127, 0, 0, 1], http[0]));
    let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin));
    wait_listening(addr, Duration::from_secs(30));
    wait_ready(admin_addr).await;

    // Four HTTP/1 keep-alive clients, one new-connection-per-request client and two h2c
    // clients, throughout.
    let (stop, load) = start_load(addr, 4, 1, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = ProxyProcess::spawn(admin, &sock, &[&args[..], &["--upgrade"]].concat());
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("QUIT");
    let old_status = wait_exit(old, Duration::from_secs(30)).await;
    assert!(old_status.success(), "old proxy exit status {old_status}");
    // Only the new process is left, and it serves.
    let r = client::get(addr, "web.bin.maille.mesh", "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "web"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let s = load.await.unwrap();
    assert!(
        s.lost.is_empty() && s.lost_fresh.is_empty(),
        "lost requests: {s:?}"
    );
    assert_eq!(s.refused, 0, "refused connections: {s:?}");
    assert!(s.answered >= 10, "{s:?}");
    assert!(
        s.told_to_close >= 6,
        "each keep-alive client is told to close (GOAWAY on h2c) by the draining process: {s:?}"
    );
    let mut new = new;
    assert!(new.child.try_wait().unwrap().is_none(), "new proxy exited");
    // Every handed-over TCP listener accepts in the new process.
    for p in tcp {
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], *p)))
            .await
            .unwrap_or_else(|e| panic!("TCP port {p} after the upgrade: {e}"));
    }

    // SIGTERM with keep-alive clients: every request sent on an open connection is answered
    // (with `Connection: close`); only new connections are refused once the listeners stop.
    let (stop, load) = start_load(addr, 4, 0, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    new.signal("TERM");
    let status = wait_exit(new, Duration::from_secs(20)).await;
    assert!(status.success(), "exit status {status}");
    stop.store(true, Ordering::Relaxed);
    let s = load.await.unwrap();
    assert!(
        s.lost.is_empty(),
        "requests lost on open connections: {s:?}"
    );
    assert!(s.told_to_close >= 4, "{s:?}");
    assert!(s.answered >= 4, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_with_a_hundred_listeners() {
    let _serial = SERIAL.lock().await;
    let web = HttpBackend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_tcp_ports(100);
    let (http, rest) = ports.split_at(60);
    let (tcp, admin) = (&rest[..39], rest[39]);
    let table_path = dir.path().join("table.json");
    let sock = dir.path().join("upgrade.sock");
    write_table(&table_path, http[59], &web);
    let (http_list, tcp_list) = (port_list(http), port_list(tcp));
    let args = [
        "--config",
        table_path.to_str().unwrap(),
        "--http-ports",
        &http_list,
        "--tcp-ports",
        &tcp_list,
        "--udp-ports",
        "none",
        "--grace-period-seconds",
        "1",
        "--graceful-shutdown-timeout-seconds",
        "1",
    ];
    let old = ProxyProcess::spawn(admin, &sock, &args);
    let addr = SocketAddr::from(([127, 0, 0, 1], http[59]));
    wait_listening(addr, Duration::from_secs(30));
    wait_ready(SocketAddr::from(([127, 0, 0, 1], admin))).await;
    let (stop, load) = start_load(addr, 1, 1, 0);
    let mut new = ProxyProcess::spawn(admin, &sock, &[&args[..], &["--upgrade"]].concat());
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("QUIT");
    let old_status = wait_exit(old, Duration::from_secs(30)).await;
    assert!(old_status.success(), "old proxy exit status {old_status}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let s = load.await.unwrap();
    assert!(
        s.lost.is_empty() && s.lost_fresh.is_empty() && s.refused == 0,
        "{s:?}"
    );
    assert!(s.answered >= 2, "{s:?}");
    for p in http.iter().chain(tcp) {
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], *p)))
            .await
            .unwrap_or_else(|e| panic!("port {p} after the upgrade: {e}"));
    }
    assert!(new.child.try_wait().unwrap().is_none(), "new proxy exited");
}

/// A controller that serves one table, then can be stopped (every connection dropped).
struct FakeController {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
}

impl FakeController {
    async fn start(body: Vec<u8>) -> FakeController {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut rx = stop_rx.clone();
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => r.unwrap().0,
                    _ = rx.changed() => return,
                };
                let (body, mut rx) = (body.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    let mut r = BufReader::new(stream);
                    loop {
                        let mut conditional = false;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            tokio::select! {
                                n = r.read_line(&mut line) => if n.unwrap_or(0) == 0 { return },
                                _ = rx.changed() => return,
                            }
                            if line.to_ascii_lowercase().starts_with("if-none-match") {
                                conditional = true;
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        if conditional {
                            // Long-poll: nothing newer, until stopped.
                            let _ = rx.changed().await;
                            return;
                        }
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        let w = r.get_mut();
                        if w.write_all(head.as_bytes()).await.is_err()
                            || w.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        FakeController { addr, stop }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_while_the_controller_is_down_routes_with_the_handed_over_table() {
    let _serial = SERIAL.lock().await;
    let web = HttpBackend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_tcp_ports(2);
    let spec = table(1, vec![http("bin", "web", ports[0], &[&web.addr_str()])]);
    let controller = FakeController::start(serde_json::to_vec(&spec).unwrap()).await;
    let sock = dir.path().join("upgrade.sock");
    let url = format!("http://{}", controller.addr);
    let http_port = ports[0].to_string();
    // The old process gives requests in flight 3 s after its GOAWAY: 1 s cut an h2c request
    // once on a loaded 2-core machine (a timing of the test, not what it checks).
    let args = [
        "--controller-url",
        &url,
        "--http-ports",
        &http_port,
        "--tcp-ports",
        "none",
        "--udp-ports",
        "none",
        "--grace-period-seconds",
        "1",
        "--graceful-shutdown-timeout-seconds",
        "3",
    ];
    let old = ProxyProcess::spawn(ports[1], &sock, &args);
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let admin = SocketAddr::from(([127, 0, 0, 1], ports[1]));
    wait_listening(addr, Duration::from_secs(30));
    wait_ready(admin).await;

    // The controller goes away; then the upgrade.
    controller.stop.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(controller.addr).await.is_err(),
        "controller still up"
    );
    let (stop, load) = start_load(addr, 2, 1, 1);
    let mut new = ProxyProcess::spawn(ports[1], &sock, &[&args[..], &["--upgrade"]].concat());
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("QUIT");
    let old_status = wait_exit(old, Duration::from_secs(30)).await;
    assert!(old_status.success(), "old proxy exit status {old_status}");
    let r = client::get(addr, "web.bin.maille.mesh", "/").await.unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "web"),
        "new process routes"
    );
    let ready = client::get_url(&format!("http://{admin}/ready"))
        .await
        .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    stop.store(true, Ordering::Relaxed);
    let s = load.await.unwrap();
    assert!(
        s.lost.is_empty() && s.lost_fresh.is_empty() && s.refused == 0,
        "{s:?}"
    );
    assert!(new.child.try_wait().unwrap().is_none(), "new proxy exited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_a_table_answers_503_and_closes_tcp() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_tcp_ports(4);
    // Nothing listens on the controller's port.
    let url = format!("http://127.0.0.1:{}", ports[3]);
    let (h, t) = (ports[0].to_string(), ports[1].to_string());
    let _proxy = ProxyProcess::spawn(
        ports[2],
        &dir.path().join("upgrade.sock"),
        &[
            "--controller-url",
            &url,
            "--http-ports",
            &h,
            "--tcp-ports",
            &t,
            "--udp-ports",
            "none",
        ],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    wait_listening(addr, Duration::from_secs(30));
    let r = client::get(addr, "web.bin.maille.mesh", "/").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("no routing table yet"), "{}", r.body);
    let mut tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], ports[1])))
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("TCP connection left open without a table")
        .unwrap_or(0);
    assert_eq!(n, 0, "TCP connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_process_keeps_serving_when_the_new_one_does_not_confirm() {
    let _serial = SERIAL.lock().await;
    let web = HttpBackend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_tcp_ports(2);
    let table_path = dir.path().join("table.json");
    let sock = dir.path().join("upgrade.sock");
    write_table(&table_path, ports[0], &web);
    let old = ProxyProcess::start(&table_path, ports[0], ports[1], &sock, &[]);
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    wait_listening(addr, Duration::from_secs(30));
    wait_ready(SocketAddr::from(([127, 0, 0, 1], ports[1]))).await;

    // A "new process" that takes the sockets and the table, then dies before serving.
    let fake_new = {
        let sock = sock.clone();
        let expected: HashSet<String> = [format!("127.0.0.1:{}", ports[0])].into();
        std::thread::spawn(move || {
            let fds = maille_proxy::upgrade::new_fds();
            let h = maille_proxy::upgrade::receive(
                &sock,
                &expected,
                &fds,
                1 << 20,
                Duration::from_secs(20),
            )
            .unwrap();
            (h.listeners, h.table.is_some())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("QUIT");
    let (listeners, had_table) = tokio::task::spawn_blocking(move || fake_new.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        (listeners, had_table),
        (2, true),
        "HTTP and admin, and the table"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut old = old;
    assert!(old.child.try_wait().unwrap().is_none(), "old proxy let go");
    for _ in 0..20 {
        let r = client::get(addr, "web.bin.maille.mesh", "/").await.unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "web"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_hand_over_waits_for_the_new_process_still_drains() {
    let _serial = SERIAL.lock().await;
    let web = HttpBackend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_tcp_ports(2);
    let table_path = dir.path().join("table.json");
    write_table(&table_path, ports[0], &web);
    let grace = [
        "--grace-period-seconds",
        "1",
        "--graceful-shutdown-timeout-seconds",
        "1",
    ];
    let proxy = ProxyProcess::start(
        &table_path,
        ports[0],
        ports[1],
        &dir.path().join("upgrade.sock"),
        &grace,
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    wait_listening(addr, Duration::from_secs(30));
    wait_ready(SocketAddr::from(([127, 0, 0, 1], ports[1]))).await;
    // No new process: the hand-over keeps trying to reach one (for 10 s), still serving.
    proxy.signal("QUIT");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = client::get(addr, "web.bin.maille.mesh", "/").await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "web"));
    proxy.signal("TERM");
    // Drains (1 s grace) and exits well before the hand-over would have given up.
    let status = wait_exit(proxy, Duration::from_secs(8)).await;
    assert!(status.success(), "exit status {status}");
}

/// The access log names the endpoint that answered (it was empty: the pick was dropped before
/// the line was written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_the_upstream_that_answered() {
    let _serial = SERIAL.lock().await;
    let web = HttpBackend::start("web").await;
    let dir = tempfile::tempdir().unwrap();
    let ports = free_tcp_ports(2);
    let table_path = dir.path().join("table.json");
    write_table(&table_path, ports[0], &web);
    let log_path = dir.path().join("proxy.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let http = ports[0].to_string();
    let _proxy = ProxyProcess::spawn_logging(
        ports[1],
        &dir.path().join("upgrade.sock"),
        &[
            "--access-log",
            "--config",
            table_path.to_str().unwrap(),
            "--http-ports",
            &http,
        ]
        .into_iter()
        .chain(["--tcp-ports", "none", "--udp-ports", "none"])
        .collect::<Vec<_>>(),
        "warn,access=info",
        Some(log),
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    wait_listening(addr, Duration::from_secs(30));
    wait_ready(SocketAddr::from(([127, 0, 0, 1], ports[1]))).await;
    let r = client::get(addr, "web.bin.maille.mesh", "/logged")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let want = web.addr_str();
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap();
        let line = text.lines().find(|l| l.contains("/logged"));
        if let Some(line) = line {
            assert!(
                line.contains(&want),
                "access line without upstream {want}: {line}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no access line: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

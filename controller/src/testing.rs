//! Test helpers shared by the controller's unit tests and its integration tests (feature
//! `testing`): the in-memory Kubernetes API server, DNS fixtures, free ports and bounded waits.

pub mod dns;
pub mod fake_api;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

pub use fake_api::FakeApi;

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A process under test, killed and reaped when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `maille-proxy` binary of this build (`target/<profile>/maille-proxy`, next to the
/// `deps/` folder an integration test runs from); panics saying how to build it when absent.
pub fn proxy_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let proxy = dir.join("maille-proxy");
    assert!(
        proxy.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test-all does)",
        proxy.display()
    );
    proxy
}

/// The real controller in manifests mode on a folder and one real proxy fed by it, on loopback
/// ports that were free (one mesh port per traffic type) and an upgrade socket of its own (so
/// that tests running at once never share one); both killed when dropped.
pub struct LocalMesh {
    /// The controller's API port.
    pub api: u16,
    /// The proxy's one HTTP mesh port.
    pub http: u16,
    /// The proxy's one TCP mesh port.
    pub tcp: u16,
    /// The proxy's one UDP mesh port.
    pub udp: u16,
    /// The proxy's admin port (`/ready`, `/metrics`).
    pub admin: u16,
    /// The proxy's `--upgrade-sock`.
    pub upgrade_sock: PathBuf,
    /// The proxy's flags, for a second process (an upgrade: the same with `--upgrade`).
    pub proxy_args: Vec<String>,
    controller: Option<KillOnDrop>,
    /// The proxy process.
    pub proxy: KillOnDrop,
}

impl Drop for LocalMesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.upgrade_sock);
    }
}

/// Starts `maille-proxy` with `args`, its output (at `RUST_LOG=info`) in `log`, or discarded.
pub fn start_proxy(args: &[String], log: Option<&Path>) -> KillOnDrop {
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(proxy_binary());
    cmd.args(args);
    match log {
        Some(path) => {
            let out = std::fs::File::create(path).expect("create the proxy's log");
            cmd.stdout(out.try_clone().expect("log file"))
                .stderr(out)
                .env("RUST_LOG", "info");
        }
        None => {
            cmd.stdout(Stdio::null());
        }
    }
    KillOnDrop(cmd.spawn().expect("start maille-proxy"))
}

impl LocalMesh {
    /// Starts both on `manifests`; `controller` is the test's
    /// `env!("CARGO_BIN_EXE_maille-controller")` (known to integration tests only).
    pub fn start(controller: &str, manifests: &Path) -> LocalMesh {
        LocalMesh::start_with(controller, manifests, &[], None)
    }

    /// [`LocalMesh::start`], the proxy with the flags `extra` too and its output in `log`.
    pub fn start_with(
        controller: &str,
        manifests: &Path,
        extra: &[&str],
        log: Option<&Path>,
    ) -> LocalMesh {
        use std::process::{Command, Stdio};
        let (api, http, tcp, udp, admin) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let range = |flag: &str, p: u16| [format!("--{flag}"), format!("{p}-{p}")];
        let controller = KillOnDrop(
            Command::new(controller)
                .arg("--manifests")
                .arg(manifests)
                .args(["--api-addr", &format!("127.0.0.1:{api}")])
                .args(range("http-ports", http))
                .args(range("tcp-ports", tcp))
                .args(range("udp-ports", udp))
                .stdout(Stdio::null())
                .spawn()
                .expect("start maille-controller"),
        );
        let upgrade_sock = std::env::temp_dir().join(format!(
            "maille-test-upgrade-{}-{admin}.sock",
            std::process::id()
        ));
        let mut proxy_args: Vec<String> = [
            "--controller-url",
            &format!("http://127.0.0.1:{api}"),
            "--listen-ip",
            "127.0.0.1",
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
            "--http-ports",
            &http.to_string(),
            "--tcp-ports",
            &tcp.to_string(),
            "--udp-ports",
            &udp.to_string(),
            "--upgrade-sock",
            &upgrade_sock.display().to_string(),
        ]
        .map(String::from)
        .into();
        proxy_args.extend(extra.iter().map(|a| a.to_string()));
        let proxy = start_proxy(&proxy_args, log);
        LocalMesh {
            api,
            http,
            tcp,
            udp,
            admin,
            upgrade_sock,
            proxy_args,
            controller: Some(controller),
            proxy,
        }
    }

    /// Stops the controller (killed and reaped).
    pub fn stop_controller(&mut self) {
        self.controller = None;
    }
}

/// An HTTP/1.1 backend on 127.0.0.1:0, one thread per connection, keep-alive: each request
/// is answered 200 with the body `answer` makes of its head (request line and headers), and
/// the connection closed after it when the request said `connection: close`. Its port.
pub fn http_backend(answer: impl Fn(&str) -> String + Send + Sync + 'static) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local address").port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk) else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let close = head.to_ascii_lowercase().contains("connection: close");
                        let body = answer(&head);
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if conn.write_all(reply.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// One `GET /` with `Host: host` on a new connection to 127.0.0.1:`port`, answered within
/// 2 s: (status, body), or why there is none.
pub async fn http_get(port: u16, host: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        s.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&out).into_owned())
    };
    let out = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "no answer within 2 s".to_string())??;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not HTTP: {out:?}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    Ok((status, body.unwrap_or_default()))
}

/// Replaces the manifest `file` of the folder `dir` whole (written beside it, then renamed
/// over it), so the controller's watcher never reads it half written. Panics on an I/O error.
pub fn write_manifest(dir: &std::path::Path, file: &str, text: &str) {
    let staged = dir.join(format!(".{file}.tmp"));
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, dir.join(file)).unwrap();
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released), for a
/// process under test that must be told its port on the command line.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Asks `f` every 50 ms until it gives a value, and returns it; panics naming `what` after
/// `within`.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `f`'s output, or a panic naming `what` when it takes longer than [`PATIENCE`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}"))
}

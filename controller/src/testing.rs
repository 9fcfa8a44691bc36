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
/// ports that were free (one mesh port per traffic type); both killed when dropped.
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
    _controller: KillOnDrop,
    _proxy: KillOnDrop,
}

impl LocalMesh {
    /// Starts both on `manifests`; `controller` is the test's
    /// `env!("CARGO_BIN_EXE_maille-controller")` (known to integration tests only).
    pub fn start(controller: &str, manifests: &Path) -> LocalMesh {
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
        let proxy = KillOnDrop(
            Command::new(proxy_binary())
                .args(["--controller-url", &format!("http://127.0.0.1:{api}")])
                .args(["--listen-ip", "127.0.0.1"])
                .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
                .args(["--http-ports", &http.to_string()])
                .args(["--tcp-ports", &tcp.to_string()])
                .args(["--udp-ports", &udp.to_string()])
                .stdout(Stdio::null())
                .spawn()
                .expect("start maille-proxy"),
        );
        LocalMesh {
            api,
            http,
            tcp,
            udp,
            admin,
            _controller: controller,
            _proxy: proxy,
        }
    }
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

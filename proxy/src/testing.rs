//! In-process test harness (feature `testing`): a whole proxy (real Pingora server on its own
//! thread, real `Arc<TableStore>`, admin port) on free loopback ports, real HTTP backends, and
//! small clients. Used by this crate's tests and by other crates' tests.
//!
//! ```ignore
//! let web = HttpBackend::start("web-1").await;
//! let proxy = TestProxy::start(|p| table(1, vec![http("shop", "web", p.http[0], &[&web.addr_str()])]));
//! let (status, body) = client::get(proxy.http[0], "web.shop.maille.mesh", "/").await.unwrap();
//! ```

pub mod backend;
pub mod client;
pub mod metrics;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use config_model::{Table, TableSpec};
use pingora_core::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use tokio::sync::watch;

pub use crate::tcp::testing::TcpBackend;
pub use crate::udp::testing::UdpBackend;
pub use backend::HttpBackend;
pub use metrics::{metric, metric_in, metric_with};

use crate::balance::Balancer;
use crate::config::{Balancer as Mode, Config, PortList};
use crate::server::ProxyServer;
use crate::store::TableStore;

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Waits until `cond` holds, checking every 20 ms; panics naming `what` after [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` distinct free TCP ports on 127.0.0.1 (bound together, then released).
pub fn free_tcp_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// `n` distinct free UDP ports on 127.0.0.1.
pub fn free_udp_ports(n: usize) -> Vec<u16> {
    let held: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|s| s.local_addr().expect("local addr").port())
        .collect()
}

/// The listener ports of a test proxy, to build its table with.
#[derive(Clone, Debug)]
pub struct TestPorts {
    /// HTTP listener ports (the mesh ports of HTTP services).
    pub http: Vec<u16>,
    /// TCP listener ports.
    pub tcp: Vec<u16>,
    /// UDP listener ports.
    pub udp: Vec<u16>,
}

/// How to start a [`TestProxy`].
#[derive(Clone, Debug)]
pub struct TestProxyOptions {
    /// Number of HTTP listener ports.
    pub http_ports: usize,
    /// Number of TCP listener ports.
    pub tcp_ports: usize,
    /// Number of UDP listener ports.
    pub udp_ports: usize,
    /// Endpoint selection.
    pub balancer: Mode,
    /// Write access-log lines.
    pub access_log: bool,
    /// Table file to watch (instead of tables given by the test).
    pub config_file: Option<PathBuf>,
    /// Controller to pull from (instead of tables given by the test).
    pub controller_url: Option<String>,
    /// Worker threads per listener group.
    pub threads: usize,
    /// Last word on the flags (e.g. TCP and UDP timeouts), after the options above.
    pub configure: fn(&mut Config),
    /// `--upstream-ca-file`: CAs that verify https upstreams.
    pub upstream_ca_file: Option<PathBuf>,
}

impl Default for TestProxyOptions {
    fn default() -> Self {
        TestProxyOptions {
            http_ports: 2,
            tcp_ports: 2,
            udp_ports: 2,
            balancer: Mode::PeakEwma,
            access_log: false,
            config_file: None,
            controller_url: None,
            threads: 2,
            configure: |_| {},
            upstream_ca_file: None,
        }
    }
}

struct StopSignal(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::FastShutdown
    }
}

/// A running proxy. Dropping it stops the server and joins its thread.
pub struct TestProxy {
    /// HTTP listener addresses, in `--http-ports` order.
    pub http: Vec<SocketAddr>,
    /// TCP listener addresses.
    pub tcp: Vec<SocketAddr>,
    /// UDP listener addresses.
    pub udp: Vec<SocketAddr>,
    /// Admin address (`/ready`, `/live`, `/metrics`).
    pub admin: SocketAddr,
    /// The ports, as given to the table builder.
    pub ports: TestPorts,
    /// The flags the proxy runs with.
    pub config: Config,
    store: Arc<TableStore>,
    balancer: Arc<Balancer>,
    identity: Option<Arc<crate::identity::Identity>>,
    tunnel: Option<Arc<crate::tunnel::client::Pool>>,
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// Starts a proxy with default options and the table `table(ports)`.
    pub fn start(table: impl FnOnce(&TestPorts) -> TableSpec) -> TestProxy {
        let proxy = Self::start_with(TestProxyOptions::default());
        let spec = table(&proxy.ports);
        proxy.set_table(&spec);
        proxy
    }

    /// Starts a proxy holding no table yet (not ready).
    pub fn start_empty() -> TestProxy {
        Self::start_with(TestProxyOptions::default())
    }

    /// Starts a proxy with these options and no table given by the test.
    pub fn start_with(opts: TestProxyOptions) -> TestProxy {
        Self::start_with_config(opts, |_| {})
    }

    /// Same, and `edit` (which may capture, unlike `configure`) has the last word on the flags.
    pub fn start_with_config(opts: TestProxyOptions, edit: impl FnOnce(&mut Config)) -> TestProxy {
        let http = free_tcp_ports(opts.http_ports + opts.tcp_ports + 1);
        let (tcp, rest) = http[opts.http_ports..].split_at(opts.tcp_ports);
        let admin_port = rest[0];
        let ports = TestPorts {
            http: http[..opts.http_ports].to_vec(),
            tcp: tcp.to_vec(),
            udp: free_udp_ports(opts.udp_ports),
        };
        let mut config = Config {
            http_ports: PortList(ports.http.clone()),
            tcp_ports: PortList(ports.tcp.clone()),
            udp_ports: PortList(ports.udp.clone()),
            listen_ip: [127, 0, 0, 1].into(),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], admin_port)),
            controller_url: opts.controller_url.clone(),
            config: opts.config_file.clone(),
            grace_period_seconds: 0,
            graceful_shutdown_timeout_seconds: 1,
            threads: Some(opts.threads),
            load_balancer: opts.balancer,
            access_log: opts.access_log,
            upstream_ca_file: opts.upstream_ca_file.clone(),
            upgrade_sock: std::env::temp_dir()
                .join(format!("maille-test-upgrade-{admin_port}.sock")),
            ..Config::default()
        };
        (opts.configure)(&mut config);
        edit(&mut config);
        Self::start_config(config, ports)
    }

    fn start_config(config: Config, ports: TestPorts) -> TestProxy {
        let (stop, stop_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let cfg = config.clone();
        let thread = std::thread::Builder::new()
            .name("maille-test-proxy".into())
            .spawn(move || {
                let proxy = match ProxyServer::build(cfg) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((
                    proxy.store().clone(),
                    proxy.balancer().clone(),
                    proxy.identity().cloned(),
                    proxy.tunnel().cloned(),
                )));
                proxy.run(RunArgs {
                    shutdown_signal: Box::new(StopSignal(stop_rx)),
                });
            })
            .expect("spawn proxy thread");
        let (store, balancer, identity, tunnel) = ready_rx
            .recv()
            .expect("proxy thread died before start")
            .unwrap_or_else(|e| panic!("proxy did not build: {e}"));
        let proxy = TestProxy {
            http: config.http_listen_addrs(),
            tcp: config.tcp_listen_addrs(),
            udp: config.udp_listen_addrs(),
            admin: config.admin_addr,
            ports,
            config,
            store,
            balancer,
            identity,
            tunnel,
            stop,
            thread: Some(thread),
        };
        // An HTTP listener's probe is seen out (accepted, read to its end, closed) before the
        // test starts: a probe accepted late would take one of the proxy's connection slots,
        // or be refused and counted, in the middle of a test of the connection bound.
        for addr in &proxy.http {
            wait_http_listening(*addr, Duration::from_secs(20));
        }
        wait_listening(proxy.admin, Duration::from_secs(20));
        for addr in &proxy.tcp {
            wait_tcp_listening(*addr, Duration::from_secs(20));
        }
        proxy
    }

    /// The proxy's table store (swap tables with it).
    pub fn store(&self) -> &Arc<TableStore> {
        &self.store
    }

    /// The proxy's mesh identity (with `--identity-token-file`): tests give it a certificate
    /// with [`crate::identity::Identity::hold`].
    pub fn identity(&self) -> Option<&Arc<crate::identity::Identity>> {
        self.identity.as_ref()
    }

    /// The proxy's sessions to other nodes (with `--identity-token-file`).
    pub fn tunnel(&self) -> Option<&Arc<crate::tunnel::client::Pool>> {
        self.tunnel.as_ref()
    }

    /// The proxy's balancer.
    pub fn balancer(&self) -> &Arc<Balancer> {
        &self.balancer
    }

    /// Validates `spec` and swaps it in; panics if it is invalid (use
    /// [`crate::source::apply_json`] to test refusals).
    pub fn set_table(&self, spec: &TableSpec) {
        let table = Table::try_from(spec).unwrap_or_else(|e| panic!("invalid test table: {e}"));
        self.store.store(table);
    }

    /// `http://127.0.0.1:<admin port><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Blocks until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) {
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if start.elapsed() > limit {
            panic!("nothing listens on {addr} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Blocks until the proxy accepts on HTTP listener `addr` and has closed the probe connection,
/// which sends nothing and half-closes at once (the proxy reads its end and closes it).
pub fn wait_http_listening(addr: SocketAddr, limit: Duration) {
    probe_until_closed(addr, limit, true);
}

/// Blocks until the proxy accepts on TCP listener `addr`, and has closed the probe connection
/// (no table yet routes it), so that the probe cannot reach a backend of the test's table.
pub fn wait_tcp_listening(addr: SocketAddr, limit: Duration) {
    probe_until_closed(addr, limit, false);
}

/// Connects to `addr` until it accepts (half-closing at once when `half_close`), then waits
/// for the other side to close the probe (at most `limit`).
fn probe_until_closed(addr: SocketAddr, limit: Duration, half_close: bool) {
    use std::io::Read;
    let start = Instant::now();
    loop {
        if let Ok(mut probe) =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        {
            if half_close {
                let _ = probe.shutdown(std::net::Shutdown::Write);
            }
            let _ = probe.set_read_timeout(Some(limit));
            let _ = probe.read_to_end(&mut Vec::new());
            return;
        }
        if start.elapsed() > limit {
            panic!("nothing listens on {addr} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

//! UDP through the mesh. Pingora has no UDP, so this is a tokio service run inside the Pingora
//! server as a background service: one socket per mesh port, and per client address a session
//! with its own connected upstream socket.

mod listener;
pub mod metrics;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::{background_service, BackgroundService, GenBackgroundService};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::error;

use crate::balance::Balancer;
use crate::config::Config;
use crate::store::TableStore;

/// Default time a session lives on without a datagram either way.
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound on the number of sessions open at once, over all UDP mesh ports.
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Largest datagram carried: the largest a UDP socket can receive, so nothing is truncated.
pub const MAX_DATAGRAM: usize = 65_536;
/// Receive buffer asked for on mesh-port sockets (the kernel may cap it at `rmem_max`).
const LISTENER_RECV_BUFFER: usize = 4 << 20;

/// How the UDP listeners treat sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSettings {
    /// A session with no datagram either way for this long is closed with its socket.
    pub session_idle_timeout: Duration,
    /// Sessions open at once, over all UDP mesh ports; a datagram needing one more is dropped.
    pub max_sessions: usize,
}

impl UdpSettings {
    /// The settings given by the proxy's flags.
    pub fn from_config(c: &Config) -> UdpSettings {
        UdpSettings {
            session_idle_timeout: c.udp_session_idle_timeout,
            max_sessions: c.udp_max_sessions as usize,
        }
    }
}

impl Default for UdpSettings {
    fn default() -> Self {
        UdpSettings {
            session_idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

/// Why the UDP service could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mesh port could not be bound.
    #[error("cannot bind UDP mesh port {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The UDP side of the proxy: sockets bound at construction, served once the Pingora server
/// starts the background service.
pub struct UdpProxy {
    store: Arc<TableStore>,
    balancer: Arc<Balancer>,
    settings: UdpSettings,
    sockets: Mutex<Vec<std::net::UdpSocket>>,
    local_addrs: Vec<SocketAddr>,
    sessions: Arc<AtomicUsize>,
    tunnel: Option<Arc<crate::tunnel::client::Pool>>,
}

/// A view of a running [`UdpProxy`], for tests and diagnostics.
#[derive(Clone, Debug)]
pub struct UdpHandle {
    local_addrs: Vec<SocketAddr>,
    sessions: Arc<AtomicUsize>,
}

impl UdpHandle {
    /// The bound mesh-port addresses, in the order asked for (useful after binding port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Sessions open now, over all ports; each holds one upstream socket.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }
}

/// Binds every address of `listen` and wraps the proxy in a Pingora background service run
/// on `threads` threads.
pub fn service(
    store: Arc<TableStore>,
    balancer: Arc<Balancer>,
    settings: UdpSettings,
    listen: &[SocketAddr],
    threads: usize,
    tunnel: Option<Arc<crate::tunnel::client::Pool>>,
) -> Result<(GenBackgroundService<UdpProxy>, UdpHandle)> {
    let mut proxy = UdpProxy::bind(store, balancer, settings, listen)?;
    proxy.tunnel = tunnel;
    let handle = proxy.handle();
    let mut service = background_service("maille udp", proxy);
    service.threads = Some(threads.max(1));
    Ok((service, handle))
}

impl UdpProxy {
    /// Binds every address of `listen` now, so that a busy port is an error at start-up and
    /// port 0 resolves to a known port before the server runs.
    pub fn bind(
        store: Arc<TableStore>,
        balancer: Arc<Balancer>,
        settings: UdpSettings,
        listen: &[SocketAddr],
    ) -> Result<UdpProxy> {
        let mut sockets = Vec::with_capacity(listen.len());
        let mut local_addrs = Vec::with_capacity(listen.len());
        for &addr in listen {
            let socket = bind_reuseport(addr).map_err(|source| Error::Bind { addr, source })?;
            local_addrs.push(
                socket
                    .local_addr()
                    .map_err(|source| Error::Bind { addr, source })?,
            );
            sockets.push(socket);
        }
        Ok(UdpProxy {
            store,
            balancer,
            settings,
            sockets: Mutex::new(sockets),
            local_addrs,
            sessions: Arc::new(AtomicUsize::new(0)),
            tunnel: None,
        })
    }

    /// A handle that stays valid while the service runs.
    pub fn handle(&self) -> UdpHandle {
        UdpHandle {
            local_addrs: self.local_addrs.clone(),
            sessions: self.sessions.clone(),
        }
    }
}

/// A mesh-port socket with `SO_REUSEPORT`: Pingora hands TCP listeners over in a graceful
/// upgrade but not UDP sockets, so the new process must be able to bind while the old one
/// still holds the port.
fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Best effort: bursts of large datagrams need room; unprivileged, the kernel caps it.
    let _ = socket.set_recv_buffer_size(LISTENER_RECV_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[async_trait]
impl BackgroundService for UdpProxy {
    async fn start(&self, shutdown: ShutdownWatch) {
        let sockets = std::mem::take(&mut *self.sockets.lock().expect("socket list lock"));
        let mut tasks = tokio::task::JoinSet::new();
        for (socket, addr) in sockets.into_iter().zip(&self.local_addrs) {
            let socket = match tokio::net::UdpSocket::from_std(socket) {
                Ok(s) => s,
                Err(e) => {
                    error!(%addr, error = %e, "Cannot serve UDP mesh port");
                    continue;
                }
            };
            let listener = listener::Listener::new(
                Arc::new(socket),
                addr.port(),
                self.store.clone(),
                self.balancer.clone(),
                self.settings.clone(),
                self.sessions.clone(),
                shutdown.clone(),
            )
            .with_tunnel(self.tunnel.clone());
            tasks.spawn(listener.run());
        }
        while tasks.join_next().await.is_some() {}
    }
}

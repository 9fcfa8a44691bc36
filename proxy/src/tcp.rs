//! Raw TCP through the mesh: a Pingora `ServerApp` listening on every port of the TCP range,
//! routing each connection by the port it arrived on.

pub mod metrics;
pub(crate) mod relay;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use config_model::ServiceId;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::listening::Service;
use tokio::net::TcpStream;
use tracing::{debug, info, warn, Instrument};

use crate::balance::{Balancer, Pick};
use crate::compiled::CompiledTable;
use crate::config::Config;
use crate::refusal::{Refusal, Refused};
use crate::store::TableStore;
use crate::tunnel::Protocol;
use relay::End;

/// Default time allowed for one connect attempt to an endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of endpoints tried before a connection is given up.
pub const DEFAULT_CONNECT_ATTEMPTS: usize = 3;
/// Default time a connection may stay without traffic either way before it is closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// How the TCP listeners treat connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpSettings {
    /// Time allowed for one connect attempt.
    pub connect_timeout: Duration,
    /// Endpoints tried, each at most once, before the client connection is closed (≥ 1).
    pub connect_attempts: usize,
    /// Close a connection after this long without a byte either way; `None` never does.
    pub idle_timeout: Option<Duration>,
}

impl TcpSettings {
    /// The settings given by the proxy's flags.
    pub fn from_config(c: &Config) -> TcpSettings {
        TcpSettings {
            connect_timeout: c.tcp_connect_timeout,
            connect_attempts: usize::from(c.tcp_connect_attempts.max(1)),
            idle_timeout: (!c.tcp_idle_timeout.is_zero()).then_some(c.tcp_idle_timeout),
        }
    }
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            connect_attempts: DEFAULT_CONNECT_ATTEMPTS,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

/// The Pingora application behind every TCP mesh port.
pub struct TcpProxy {
    store: Arc<TableStore>,
    balancer: Arc<Balancer>,
    settings: TcpSettings,
    tracing: crate::trace::Tracing,
    tunnel: Option<Arc<crate::tunnel::client::Pool>>,
}

/// A Pingora service listening on each of `listen` (e.g. `0.0.0.0:10000`), carrying TCP to the
/// services the current table maps to those ports. All ports share one runtime.
pub fn service(
    store: Arc<TableStore>,
    balancer: Arc<Balancer>,
    settings: TcpSettings,
    listen: &[SocketAddr],
    tracing: crate::trace::Tracing,
    tunnel: Option<Arc<crate::tunnel::client::Pool>>,
) -> Service<TcpProxy> {
    let mut app = TcpProxy::new(store, balancer, settings).with_tracing(tracing);
    app.tunnel = tunnel;
    let mut service = Service::new("maille tcp".to_string(), app);
    for addr in listen {
        service.add_tcp(&addr.to_string());
    }
    service
}

/// Where a connection goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Route {
    /// The service port the client called (the metrics' labels).
    pub(crate) root: ServiceId,
    /// The service whose endpoints serve it: the called one, or the backend its traffic
    /// splits picked.
    pub(crate) service: ServiceId,
}

/// The route for a connection that arrived on `mesh_port` from `client`: the service mapped
/// to the port, or the backend its traffic splits pick; refused when no service is mapped, or
/// in ACL mode when no access rule of the serving service port admits the client.
pub(crate) fn route(
    table: &CompiledTable,
    mesh_port: u16,
    client: Option<SocketAddr>,
) -> Result<Route, Refused> {
    let root = table
        .tcp_route(mesh_port)
        .ok_or_else(|| Refused::no_route(format_args!("TCP port {mesh_port}")))?;
    let service = match crate::split::select(table, root, None, &mut rand::rng()) {
        crate::split::Selection::Service(i) => i,
        crate::split::Selection::NoTraffic { split, .. } => {
            return Err(Refused::no_traffic(&split))
        }
    };
    let rt = table.runtime(service);
    if table.acl {
        // A client without a known address cannot be admitted by any rule.
        let admitted = client.is_some_and(|c| crate::acl::admits_connection(true, rt, c.ip()));
        if !admitted {
            let ip = client.map(|c| c.ip()).unwrap_or([0u8; 4].into());
            crate::acl::count_denied(rt, ip);
            return Err(Refused::access_denied(&rt.service().key, ip));
        }
    }
    Ok(Route { root, service })
}

/// A byte stream to an endpoint: a TCP connection of its own, or a tunnel stream.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The endpoint a connection is relayed to. The balancer's pick, when there is one, stays
/// alive with the connection so that the endpoint counts it as load.
struct Upstream {
    stream: Box<dyn Io>,
    addr: SocketAddr,
    /// The node whose proxy carries it, when it goes through the tunnel.
    via: Option<Arc<str>>,
    /// The client's identity, as stated to that proxy.
    client_identity: Option<config_model::WorkloadIdentity>,
    _pick: Pick,
}

impl TcpProxy {
    /// The application on its own, for a caller that builds its own Pingora service.
    pub fn new(store: Arc<TableStore>, balancer: Arc<Balancer>, settings: TcpSettings) -> TcpProxy {
        TcpProxy {
            store,
            balancer,
            settings,
            tracing: crate::trace::Tracing::off(),
            tunnel: None,
        }
    }

    /// Carries connections to endpoints on other nodes through `pool`'s tunnel sessions.
    pub fn with_tunnel(mut self, pool: Option<Arc<crate::tunnel::client::Pool>>) -> TcpProxy {
        self.tunnel = pool;
        self
    }

    /// Traces connections with `tracing` (off by default).
    pub fn with_tracing(mut self, tracing: crate::trace::Tracing) -> TcpProxy {
        self.tracing = tracing;
        self
    }

    async fn serve(&self, client: Stream) {
        let digest = client.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let Some(local) = local else {
            warn!("TCP connection without a local address, closing");
            return;
        };
        let mesh_port = local.port();
        let mut trace = self.tracing.start_tcp(mesh_port, peer);
        let table = self.store.current();
        let route = match route(&table, mesh_port, peer) {
            Ok(r) => r,
            Err(refused) => return self.refuse(refused, mesh_port, peer, &mut trace),
        };
        let key = &table[route.root].key;
        trace.routed(key);
        let span = tracing::info_span!("tcp", service = %key, mesh_port, client = ?peer);
        self.proxy(client, table, route, &mut trace)
            .instrument(span)
            .await;
    }

    fn refuse(
        &self,
        refused: Refused,
        mesh_port: u16,
        peer: Option<SocketAddr>,
        trace: &mut crate::trace::TcpSpan,
    ) {
        trace.ended(refused.refusal.reason(), true);
        refused.log("tcp", peer);
        if refused.refusal == Refusal::NoRoute {
            metrics::unrouted(mesh_port);
        }
    }

    async fn proxy(
        &self,
        client: Stream,
        table: Arc<CompiledTable>,
        route: Route,
        trace: &mut crate::trace::TcpSpan,
    ) {
        let conn = metrics::ConnMetrics::open(table.runtime(route.root).labels());
        let svc = &table[route.service];
        if svc.endpoints.is_empty() {
            conn.failed();
            let refused = Refused::no_endpoint(&svc.key);
            trace.ended(refused.refusal.reason(), true);
            // The connection's span names the client.
            refused.log("tcp", None);
            return;
        }
        let client_ip = client
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let upstream = self.connect(&table, route.service, client_ip).await;
        // From here on the connection holds no table: swaps cannot touch it.
        drop(table);
        let Some(upstream) = upstream else {
            conn.failed();
            trace.ended("no_endpoint_reachable", true);
            return;
        };
        trace.endpoint(upstream.addr);
        let m = conn.metrics();
        let endpoint = upstream.addr;
        let via = upstream.via.as_deref().unwrap_or("");
        let client_identity = upstream
            .client_identity
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_default();
        match relay::relay(
            client,
            upstream.stream,
            self.settings.idle_timeout,
            &m.received,
            &m.sent,
        )
        .await
        {
            Ok(End::Finished) => {
                trace.ended("finished", false);
                debug!(%endpoint, tunnel = via, client_identity, "TCP connection finished")
            }
            Ok(End::Idle) => {
                trace.ended("idle", false);
                info!(%endpoint, tunnel = via, client_identity, "TCP connection idle too long, closed")
            }
            Err(e) => {
                trace.ended("error", true);
                debug!(%endpoint, tunnel = via, client_identity, error = %e, "TCP connection ended by an error")
            }
        }
    }

    /// Connects to one endpoint of service `idx`, trying others (each at most once) when a
    /// connect fails: nothing has been sent yet, so another endpoint is always safe. An
    /// endpoint on another node is reached through the tunnel to that node's proxy, stating
    /// `client`'s identity; one that mTLS `strict` forbids to reach is passed over.
    async fn connect(
        &self,
        table: &CompiledTable,
        idx: ServiceId,
        client: Option<std::net::IpAddr>,
    ) -> Option<Upstream> {
        let endpoints = &table[idx].endpoints;
        let plan = &table.runtime(idx).endpoints;
        if endpoints.is_empty() {
            // Refused by the caller already; no attempt to count.
            return None;
        }
        let attempts = self.settings.connect_attempts.clamp(1, endpoints.len());
        let mut tried: Vec<SocketAddr> = Vec::with_capacity(attempts);
        while tried.len() < attempts {
            // The balancer returns an excluded endpoint only when every one is excluded.
            let pick = self
                .balancer
                .pick(plan, &tried)
                .filter(|p| !tried.contains(&p.addr))?;
            let addr = pick.addr;
            tried.push(addr);
            use crate::tunnel::hop::{self, Way};
            let peer = match hop::way(table, idx, addr, self.tunnel.as_ref(), Protocol::Tcp) {
                Way::Refused => continue,
                Way::Direct | Way::Cleartext => None,
                Way::Tunnel(peer) => Some(peer),
            };
            if let (Some(peer), Some(pool)) = (peer, &self.tunnel) {
                let claim = hop::claim(table, idx, addr, client, Protocol::Tcp);
                match pool.open(&peer, &claim).await {
                    Ok(stream) => {
                        pick.observe_response();
                        return Some(Upstream {
                            stream: Box::new(stream),
                            addr,
                            via: Some(peer.name),
                            client_identity: claim.identity,
                            _pick: pick,
                        });
                    }
                    // A denial is the destination's access decision (logged there), and says
                    // nothing of the endpoint's health.
                    Err(e) if e.label() == "denied" => {
                        debug!(endpoint = %addr, node = %peer.name, error = %e, "Refused by the endpoint's node proxy");
                        return None;
                    }
                    Err(e) => {
                        warn!(endpoint = %addr, node = %peer.name, error = %e, "Connect to endpoint through the tunnel failed");
                        pick.observe_failure();
                    }
                }
                continue;
            }
            match tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr))
                .await
            {
                Ok(Ok(stream)) => {
                    pick.observe_response();
                    // Interactive protocols (databases, SSH) need their small writes sent now.
                    let _ = stream.set_nodelay(true);
                    return Some(Upstream {
                        stream: Box::new(stream),
                        addr,
                        via: None,
                        client_identity: None,
                        _pick: pick,
                    });
                }
                Ok(Err(e)) => warn!(endpoint = %addr, error = %e, "Connect to endpoint failed"),
                Err(_) => warn!(
                    endpoint = %addr,
                    timeout = ?self.settings.connect_timeout,
                    "Connect to endpoint timed out"
                ),
            }
            pick.observe_failure();
        }
        warn!(
            attempts = tried.len(),
            "No endpoint could be reached, closing"
        );
        None
    }
}

#[async_trait]
impl ServerApp for TcpProxy {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.serve(session).await;
        // Never reused: the connection belonged to one client and one endpoint.
        None
    }
}

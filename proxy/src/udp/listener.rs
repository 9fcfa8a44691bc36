//! One UDP mesh port: datagrams in, a session per client address, replies out through the
//! same socket.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use config_model::{ServiceId, ServiceKey};
use pingora::server::ShutdownWatch;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::metrics::{self, DropReason, ServiceMetrics};
use super::{UdpSettings, MAX_DATAGRAM};
use crate::balance::{Balancer, Pick};
use crate::compiled::mesh::Hop;
use crate::compiled::CompiledTable;
use crate::refusal::{Refusal, Refused};
use crate::store::TableStore;
use crate::tcp::relay::Activity;
use crate::tunnel::client::Pool;
use crate::tunnel::hop::{self, Way};
use crate::tunnel::udp::{read_datagram, write_datagram, MAX_FRAME};
use crate::tunnel::{PeerNode, Protocol, StreamClaim};
use bytes::Bytes;

/// Replies forwarded per wake-up of a session before it yields to the others.
const REPLIES_PER_WAKEUP: usize = 64;

thread_local! {
    /// Receive buffer for replies, shared by the sessions of a thread: a session holds no
    /// buffer of its own while it waits, so many sessions cost little memory.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// What carries a session's datagrams to its endpoint.
enum Upstream {
    /// A socket of its own, connected to the endpoint.
    Socket(UdpSocket),
    /// A stream of the tunnel to the endpoint's node, fed by its task through this queue.
    Tunnel(mpsc::Sender<Bytes>),
}

/// Datagrams queued for a tunnel stream (also while it opens); beyond, they are dropped.
const TUNNEL_QUEUE: usize = 256;

impl Upstream {
    /// Sends without waiting; `WouldBlock` when the socket or queue is full.
    fn send(&self, payload: &[u8]) -> io::Result<()> {
        match self {
            Upstream::Socket(s) => send_now(s, payload, None).map(|_| ()),
            Upstream::Tunnel(q) => {
                q.try_send(Bytes::copy_from_slice(payload))
                    .map_err(|e| match e {
                        mpsc::error::TrySendError::Full(_) => io::ErrorKind::WouldBlock.into(),
                        mpsc::error::TrySendError::Closed(_) => {
                            io::Error::new(io::ErrorKind::BrokenPipe, "tunnel stream closed")
                        }
                    })
            }
        }
    }
}

/// A client address and the upstream that carries its datagrams to one endpoint.
struct Session {
    id: u64,
    client: SocketAddr,
    key: ServiceKey,
    endpoint: SocketAddr,
    /// How the table said to reach the endpoint when the session opened.
    hop: Hop,
    upstream: Upstream,
    metrics: ServiceMetrics,
    activity: Activity,
    /// Set when the session's task has ended (idle or endpoint unreachable).
    closed: AtomicBool,
    /// Keeps the session counted as load on its endpoint by the balancer.
    _pick: Pick,
}

/// The listener's record of a session: its binding to a service port of one table.
struct Entry {
    session: Arc<Session>,
    task: JoinHandle<()>,
    /// The table the session's route was last checked against.
    checked: Weak<CompiledTable>,
    /// The service port the session is bound to, in `checked`.
    service: ServiceId,
}

impl Entry {
    /// Whether the session may go on carrying datagrams under `table`: same service on the
    /// port, its endpoint still one of the service's, and (ACL mode) the client still admitted.
    /// Checked once per table; the binding then moves to the service's id in `table`.
    fn still_routed(&mut self, table: &Arc<CompiledTable>, mesh_port: u16) -> bool {
        if std::ptr::eq(self.checked.as_ptr(), Arc::as_ptr(table)) {
            return true;
        }
        let s = &self.session;
        let Some(id) = table.udp_route(mesh_port) else {
            return false;
        };
        let rt = table.runtime(id);
        let svc = rt.service();
        let ok = svc.key == s.key
            && svc.endpoints.iter().any(|e| e.addr == s.endpoint)
            // A mode switch or a node's proxy coming or going changes the way.
            && table.hop(id, s.endpoint) == s.hop
            // A removed TrafficTarget ends the sessions it allowed.
            && crate::acl::admits_connection(table.acl, rt, s.client.ip());
        if ok {
            self.checked = Arc::downgrade(table);
            self.service = id;
        }
        ok
    }
}

pub(super) struct Listener {
    socket: Arc<UdpSocket>,
    mesh_port: u16,
    store: Arc<TableStore>,
    balancer: Arc<Balancer>,
    settings: UdpSettings,
    open: Arc<AtomicUsize>,
    shutdown: ShutdownWatch,
    sessions: HashMap<SocketAddr, Entry>,
    next_id: u64,
    ended_tx: mpsc::UnboundedSender<(SocketAddr, u64)>,
    ended_rx: mpsc::UnboundedReceiver<(SocketAddr, u64)>,
    tunnel: Option<Arc<Pool>>,
}

impl Listener {
    pub(super) fn new(
        socket: Arc<UdpSocket>,
        mesh_port: u16,
        store: Arc<TableStore>,
        balancer: Arc<Balancer>,
        settings: UdpSettings,
        open: Arc<AtomicUsize>,
        shutdown: ShutdownWatch,
    ) -> Listener {
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        Listener {
            socket,
            mesh_port,
            store,
            balancer,
            settings,
            open,
            shutdown,
            sessions: HashMap::new(),
            next_id: 0,
            ended_tx,
            ended_rx,
            tunnel: None,
        }
    }

    /// Carries sessions to endpoints on other nodes through `pool`'s tunnel sessions.
    pub(super) fn with_tunnel(mut self, pool: Option<Arc<Pool>>) -> Listener {
        self.tunnel = pool;
        self
    }

    pub(super) async fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some((client, id)) = self.ended_rx.recv() => self.ended(client, id),
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, client)) => self.datagram(&buf[..n], client),
                    // An unconnected socket reports little; nothing here concerns other clients.
                    Err(e) => debug!(mesh_port = self.mesh_port, error = %e, "UDP receive failed"),
                },
            }
        }
        for (_, entry) in std::mem::take(&mut self.sessions) {
            self.close(entry);
        }
    }

    /// A datagram from `client`: forwarded on its session's socket, which is opened if needed.
    fn datagram(&mut self, payload: &[u8], client: SocketAddr) {
        let Some(session) = self.session_for(client) else {
            return;
        };
        session.activity.touch();
        session.metrics.received(payload.len());
        // Never wait here: one slow upstream must not hold up the other clients of the port.
        if let Err(e) = session.upstream.send(payload) {
            session.metrics.dropped(DropReason::UpstreamError);
            if e.kind() != io::ErrorKind::WouldBlock {
                // Typically ECONNREFUSED: the endpoint is gone. The next datagram picks again.
                debug!(%client, endpoint = %session.endpoint, error = %e, "UDP send to endpoint failed, closing session");
                if let Some(entry) = self.sessions.remove(&client) {
                    self.close(entry);
                }
            }
        }
    }

    /// The live session of `client`, or a new one; `None` when the datagram is dropped (and
    /// counted).
    fn session_for(&mut self, client: SocketAddr) -> Option<Arc<Session>> {
        let table = self.store.load();
        if let Some(entry) = self.sessions.get_mut(&client) {
            if !entry.session.closed.load(Ordering::Acquire)
                && entry.still_routed(&table, self.mesh_port)
            {
                return Some(entry.session.clone());
            }
            let entry = self.sessions.remove(&client).expect("entry just seen");
            debug!(%client, "UDP session no longer routed by the table, reopening");
            self.close(entry);
        }
        let Some(idx) = route(&table, self.mesh_port) else {
            Refused::no_route(format_args!("UDP port {}", self.mesh_port)).log("udp", Some(client));
            metrics::dropped_unrouted(self.mesh_port);
            return None;
        };
        let rt = table.runtime(idx);
        let svc = rt.service();
        let m = ServiceMetrics::new(rt.labels());
        if !crate::acl::admits_connection(table.acl, rt, client.ip()) {
            crate::acl::count_denied(rt, client.ip());
            Refused::access_denied(&svc.key, client.ip()).log("udp", Some(client));
            m.dropped(DropReason::Refused(Refusal::AccessDenied));
            return None;
        }
        if svc.endpoints.is_empty() {
            Refused::no_endpoint(&svc.key).log("udp", Some(client));
            m.dropped(DropReason::Refused(Refusal::NoEndpoint));
            return None;
        }
        let max = self.settings.max_sessions;
        if self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            debug!(service = %svc.key, %client, max, "UDP session limit reached, dropping");
            m.dropped(DropReason::SessionLimit);
            return None;
        }
        let Some(pick) = self.balancer.pick(&rt.endpoints, &[]) else {
            self.open.fetch_sub(1, Ordering::AcqRel);
            m.dropped(DropReason::Refused(Refusal::NoEndpoint));
            return None;
        };
        let endpoint = pick.addr;
        let hop = table.hop(idx, endpoint);
        let (upstream, tunnel) = match hop::way(
            &table,
            idx,
            endpoint,
            self.tunnel.as_ref(),
            Protocol::Udp,
        ) {
            Way::Refused => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                m.dropped(DropReason::MtlsStrict);
                return None;
            }
            Way::Tunnel(peer) => {
                let (tx, rx) = mpsc::channel(TUNNEL_QUEUE);
                let claim = hop::claim(&table, idx, endpoint, Some(client.ip()), Protocol::Udp);
                (Upstream::Tunnel(tx), Some((peer, claim, rx)))
            }
            Way::Direct | Way::Cleartext => match connect_upstream(endpoint) {
                Ok(s) => (Upstream::Socket(s), None),
                Err(e) => {
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    warn!(service = %svc.key, %endpoint, error = %e, "Cannot open UDP socket to endpoint, dropping");
                    m.dropped(DropReason::UpstreamError);
                    return None;
                }
            },
        };
        m.sessions.inc();
        self.next_id += 1;
        let session = Arc::new(Session {
            id: self.next_id,
            client,
            key: svc.key.clone(),
            endpoint,
            hop,
            upstream,
            metrics: m,
            activity: Activity::new(),
            closed: AtomicBool::new(false),
            _pick: pick,
        });
        debug!(%client, service = %session.key, %endpoint, "UDP session opened");
        let task = match (tunnel, &self.tunnel) {
            (Some((peer, claim, queue)), Some(pool)) => tokio::spawn(tunnel_replies(
                session.clone(),
                TunnelSession {
                    pool: pool.clone(),
                    peer,
                    claim,
                    queue,
                },
                self.socket.clone(),
                self.ended_tx.clone(),
                self.settings.session_idle_timeout,
                self.shutdown.clone(),
            )),
            _ => tokio::spawn(replies(
                session.clone(),
                self.socket.clone(),
                self.ended_tx.clone(),
                self.settings.session_idle_timeout,
                self.shutdown.clone(),
            )),
        };
        self.sessions.insert(
            client,
            Entry {
                session: session.clone(),
                task,
                checked: Arc::downgrade(&table),
                service: idx,
            },
        );
        Some(session)
    }

    /// A session's task has ended; forget it unless it was already replaced.
    fn ended(&mut self, client: SocketAddr, id: u64) {
        if self
            .sessions
            .get(&client)
            .is_some_and(|e| e.session.id == id)
        {
            let entry = self.sessions.remove(&client).expect("entry just seen");
            self.close(entry);
        }
    }

    /// Ends a session removed from the map: its task stops and its socket closes with it.
    fn close(&self, entry: Entry) {
        entry.session.closed.store(true, Ordering::Release);
        entry.task.abort();
        entry.session.metrics.sessions.dec();
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The service that a datagram arriving on `mesh_port` goes to; `None` drops it. The access
/// check follows: where a new session is opened, and for a live session once per new table.
pub(crate) fn route(table: &CompiledTable, mesh_port: u16) -> Option<ServiceId> {
    table.udp_route(mesh_port)
}

/// Waits until the session's socket has a datagram (never, for a tunnelled session: its own
/// task carries its replies).
async fn readable(u: &Upstream) -> io::Result<()> {
    match u {
        Upstream::Socket(s) => s.readable().await,
        Upstream::Tunnel(_) => std::future::pending().await,
    }
}

/// Sends one datagram without waiting: straight to the kernel, which fails with `WouldBlock`
/// only when the socket's send buffer is full. (Tokio's `try_send` first consults readiness
/// that a new socket has not been given yet, and would drop a session's first datagram.)
fn send_now(socket: &UdpSocket, payload: &[u8], to: Option<SocketAddr>) -> io::Result<usize> {
    let sock = socket2::SockRef::from(socket);
    match to {
        Some(addr) => sock.send_to(payload, &addr.into()),
        None => sock.send(payload),
    }
}

/// A socket connected to `endpoint`, from an ephemeral port, so that only the endpoint's
/// datagrams reach it.
fn connect_upstream(endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match endpoint {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(endpoint)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Carries a session's replies to its client until the session is idle, its endpoint is
/// unreachable, or the server shuts down; then tells the listener.
async fn replies(
    s: Arc<Session>,
    listener: Arc<UdpSocket>,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    idle: Duration,
    mut shutdown: ShutdownWatch,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            () = tokio::time::sleep_until(s.activity.last() + idle) => {
                // Re-armed from the latest datagram unless the session really was idle.
                if s.activity.last() + idle <= Instant::now() {
                    info!(client = %s.client, service = %s.key, "UDP session idle, closing");
                    break;
                }
            }
            r = readable(&s.upstream) => {
                if r.is_err() || !forward_replies(&s, &listener) {
                    break;
                }
            }
        }
    }
    s.closed.store(true, Ordering::Release);
    let _ = ended.send((s.client, s.id));
}

/// What a tunnelled session's task needs: where to open its stream, what to claim, and the
/// datagrams queued for it.
struct TunnelSession {
    pool: Arc<Pool>,
    peer: PeerNode,
    claim: StreamClaim,
    queue: mpsc::Receiver<Bytes>,
}

/// A tunnelled session: opens its stream, then carries queued datagrams to it and its
/// datagrams back to the client until the session is idle, the stream ends or the server shuts
/// down; then tells the listener.
async fn tunnel_replies(
    s: Arc<Session>,
    mut t: TunnelSession,
    listener: Arc<UdpSocket>,
    ended: mpsc::UnboundedSender<(SocketAddr, u64)>,
    idle: Duration,
    mut shutdown: ShutdownWatch,
) {
    let carry = async {
        let stream = match t.pool.open(&t.peer, &t.claim).await {
            Ok(stream) => stream,
            Err(e) => {
                warn!(client = %s.client, service = %s.key, endpoint = %s.endpoint, node = %t.peer.name, error = %e, "UDP session through the tunnel failed to open");
                return;
            }
        };
        debug!(client = %s.client, service = %s.key, endpoint = %s.endpoint, node = %t.peer.name, "UDP session through the tunnel");
        let (mut r, mut w) = tokio::io::split(stream);
        let to_endpoint = async {
            while let Some(d) = t.queue.recv().await {
                if write_datagram(&mut w, &d).await.is_err() {
                    return;
                }
            }
        };
        let to_client = async {
            let mut buf = vec![0u8; MAX_FRAME];
            while let Ok(Some(n)) = read_datagram(&mut r, &mut buf).await {
                s.activity.touch();
                match send_now(&listener, &buf[..n], Some(s.client)) {
                    Ok(_) => s.metrics.sent(n),
                    Err(e) => {
                        debug!(client = %s.client, error = %e, "UDP reply to client failed");
                        s.metrics.dropped(DropReason::ClientError);
                    }
                }
            }
        };
        tokio::select! {
            () = to_endpoint => {}
            () = to_client => {}
        }
    };
    let idle_timer = async {
        loop {
            tokio::time::sleep_until(s.activity.last() + idle).await;
            if s.activity.last() + idle <= Instant::now() {
                info!(client = %s.client, service = %s.key, "UDP session idle, closing");
                return;
            }
        }
    };
    tokio::select! {
        () = carry => {}
        () = idle_timer => {}
        _ = shutdown.changed() => {}
    }
    s.closed.store(true, Ordering::Release);
    let _ = ended.send((s.client, s.id));
}

/// Forwards the replies waiting on the session's socket; `false` when the endpoint is
/// unreachable and the session should end.
fn forward_replies(s: &Session, listener: &UdpSocket) -> bool {
    let Upstream::Socket(upstream) = &s.upstream else {
        return false;
    };
    SCRATCH.with_borrow_mut(|buf| {
        for _ in 0..REPLIES_PER_WAKEUP {
            let n = match upstream.try_recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    debug!(client = %s.client, endpoint = %s.endpoint, error = %e, "UDP endpoint unreachable, closing session");
                    return false;
                }
            };
            s.activity.touch();
            match send_now(listener, &buf[..n], Some(s.client)) {
                Ok(_) => s.metrics.sent(n),
                Err(e) => {
                    debug!(client = %s.client, error = %e, "UDP reply to client failed");
                    s.metrics.dropped(DropReason::ClientError);
                }
            }
        }
        true
    })
}

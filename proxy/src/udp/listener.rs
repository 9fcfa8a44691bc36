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
use crate::compiled::CompiledTable;
use crate::refusal::{Refusal, Refused};
use crate::store::TableStore;
use crate::tcp::relay::Activity;

/// Replies forwarded per wake-up of a session before it yields to the others.
const REPLIES_PER_WAKEUP: usize = 64;

thread_local! {
    /// Receive buffer for replies, shared by the sessions of a thread: a session holds no
    /// buffer of its own while it waits, so many sessions cost little memory.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; MAX_DATAGRAM]);
}

/// A client address and the upstream socket that carries its datagrams to one endpoint.
struct Session {
    id: u64,
    client: SocketAddr,
    key: ServiceKey,
    endpoint: SocketAddr,
    upstream: UdpSocket,
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
        }
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
        if let Err(e) = send_now(&session.upstream, payload, None) {
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
        let upstream = match connect_upstream(endpoint) {
            Ok(s) => s,
            Err(e) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                warn!(service = %svc.key, %endpoint, error = %e, "Cannot open UDP socket to endpoint, dropping");
                m.dropped(DropReason::UpstreamError);
                return None;
            }
        };
        m.sessions.inc();
        self.next_id += 1;
        let session = Arc::new(Session {
            id: self.next_id,
            client,
            key: svc.key.clone(),
            endpoint,
            upstream,
            metrics: m,
            activity: Activity::new(),
            closed: AtomicBool::new(false),
            _pick: pick,
        });
        debug!(%client, service = %session.key, %endpoint, "UDP session opened");
        let task = tokio::spawn(replies(
            session.clone(),
            self.socket.clone(),
            self.ended_tx.clone(),
            self.settings.session_idle_timeout,
            self.shutdown.clone(),
        ));
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
            r = s.upstream.readable() => {
                if r.is_err() || !forward_replies(&s, &listener) {
                    break;
                }
            }
        }
    }
    s.closed.store(true, Ordering::Release);
    let _ = ended.send((s.client, s.id));
}

/// Forwards the replies waiting on the session's socket; `false` when the endpoint is
/// unreachable and the session should end.
fn forward_replies(s: &Session, listener: &UdpSocket) -> bool {
    SCRATCH.with_borrow_mut(|buf| {
        for _ in 0..REPLIES_PER_WAKEUP {
            let n = match s.upstream.try_recv(buf) {
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

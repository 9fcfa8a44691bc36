//! The source side: one session per peer node, opened on first use and shared by every stream
//! to that node (so a new connection through an established tunnel costs no handshake);
//! dialled again when it fails, and replaced when this proxy's certificate is renewed (new
//! streams use the new certificate, streams of the old session finish on it). A session with
//! no stream for the idle time is closed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use h2::client::SendRequest;
use http::StatusCode;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tracing::{debug, warn};

use super::{
    PeerNode, StreamClaim, TunnelSettings, TunnelStream, MAX_HEADER_LIST_SIZE, MAX_SEND_BUFFER,
    SESSION_WINDOW, STREAM_WINDOW,
};
use crate::clock;
use crate::identity::{Held, Identity};

/// Why a stream could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// This proxy holds no mesh certificate yet.
    #[error("tunnel to {peer}: this proxy holds no mesh certificate yet")]
    NoIdentity {
        /// The peer node.
        peer: String,
    },
    /// No session could be opened (TCP, TLS or HTTP/2 handshake).
    #[error("tunnel to {peer}: cannot open a session: {reason}")]
    Dial {
        /// The peer node.
        peer: String,
        /// What failed.
        reason: String,
    },
    /// The peer proxy refused the stream (403: its reason).
    #[error("tunnel to {peer}: stream to {target} refused with {status}: {reason}")]
    Refused {
        /// The peer node.
        peer: String,
        /// The endpoint asked for.
        target: std::net::SocketAddr,
        /// The peer's status.
        status: u16,
        /// The peer's `maille-reason`.
        reason: String,
    },
    /// No answer in time.
    #[error("tunnel to {peer}: no answer within {timeout:?}")]
    Timeout {
        /// The peer node.
        peer: String,
        /// The time allowed.
        timeout: std::time::Duration,
    },
    /// The session or stream failed.
    #[error("tunnel to {peer}: {reason}")]
    Stream {
        /// The peer node.
        peer: String,
        /// What failed.
        reason: String,
    },
}

impl OpenError {
    /// The `result` label of `maille_proxy_tunnel_streams_total{direction="out"}`.
    pub fn label(&self) -> &'static str {
        match self {
            OpenError::NoIdentity { .. } => "no_identity",
            OpenError::Dial { .. } => "dial_failed",
            OpenError::Refused { status: 403, .. } => "denied",
            OpenError::Refused {
                status: 502 | 504, ..
            } => "unreachable",
            OpenError::Refused { .. } => "refused",
            OpenError::Timeout { .. } => "timeout",
            OpenError::Stream { .. } => "error",
        }
    }
}

/// One TLS session to a peer node.
struct Session {
    /// `None` once retired: no new stream starts on it.
    send: parking_lot::Mutex<Option<SendRequest<Bytes>>>,
    /// The certificate it was opened with.
    held: Arc<Held>,
    streams: AtomicUsize,
    last_used_ns: AtomicU64,
}

impl Session {
    fn usable(&self) -> bool {
        self.send.lock().is_some()
    }

    /// No new stream; the session ends once its streams have.
    fn retire(&self) {
        self.send.lock().take();
    }
}

/// The session a stream was opened on.
pub(crate) struct SessionLink(Arc<Session>);

impl SessionLink {
    /// Whether the session still takes streams and was opened with the certificate `identity`
    /// holds now (a renewal moves new requests to a new session).
    pub(crate) fn current(&self, identity: &Identity) -> bool {
        self.0.usable()
            && identity
                .current()
                .is_some_and(|held| Arc::ptr_eq(&held, &self.0.held))
    }
}

/// Counts a stream on its session while it lives.
struct StreamGuard(Arc<Session>);

impl StreamGuard {
    fn new(s: Arc<Session>) -> StreamGuard {
        s.streams.fetch_add(1, Ordering::AcqRel);
        StreamGuard(s)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0
            .last_used_ns
            .fetch_max(clock::now_ns(), Ordering::Relaxed);
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Arc<Session>>>>;

/// Peers remembered before those without a live session are forgotten.
const PRUNE_AT: usize = 256;

/// The sessions of this proxy to its peer nodes.
pub struct Pool {
    identity: Arc<Identity>,
    settings: TunnelSettings,
    peers: parking_lot::Mutex<HashMap<PeerNode, Slot>>,
    config: parking_lot::Mutex<Option<(Arc<Held>, Arc<rustls::ClientConfig>)>>,
    /// The socket through which Pingora pools tunnelled HTTP connections, once one was asked.
    http: arc_swap::ArcSwapOption<super::bridge::Listening>,
    http_start: parking_lot::Mutex<()>,
    /// Plain HTTP/1 streams kept between requests.
    idle: Arc<super::lease::Idle>,
    /// Streams opened so far.
    opened: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("peers", &self.peers.lock().len())
            .finish_non_exhaustive()
    }
}

enum Failure {
    /// The session is unusable: dial again.
    Session(String),
    /// This stream failed.
    Final(OpenError),
}

impl Pool {
    /// A pool presenting the certificate `identity` holds.
    pub fn new(identity: Arc<Identity>, settings: TunnelSettings) -> Arc<Pool> {
        crate::metrics::register();
        Arc::new(Pool {
            idle: super::lease::Idle::new(identity.clone()),
            identity,
            settings,
            peers: parking_lot::Mutex::new(HashMap::new()),
            config: parking_lot::Mutex::new(None),
            http: arc_swap::ArcSwapOption::empty(),
            http_start: parking_lot::Mutex::new(()),
            opened: AtomicU64::new(0),
        })
    }

    /// Streams this pool opened so far (each HTTP connection, TCP connection or UDP session
    /// carried).
    pub fn streams_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// The socket of this proxy's tunnelled HTTP connections ([`super::bridge`]), started on
    /// first use in the current runtime (again if that runtime has stopped).
    pub fn http_socket(&self) -> std::io::Result<Arc<super::bridge::Listening>> {
        if let Some(l) = &*self.http.load() {
            if l.alive() {
                return Ok(l.clone());
            }
        }
        let _one = self.http_start.lock();
        if let Some(l) = &*self.http.load() {
            if l.alive() {
                return Ok(l.clone());
            }
        }
        let l = super::bridge::Listening::start()?;
        self.http.store(Some(l.clone()));
        Ok(l)
    }

    /// Which certificate new streams present: changes at every renewal. Pooled HTTP
    /// connections are keyed by it, so that after a renewal requests go on connections of a
    /// session with the new certificate (those of the old one idle out). The address of the
    /// held certificate: stable while it is held, and never that of a newer one while any
    /// stream of its session (which keeps it) lives.
    pub fn generation(&self) -> usize {
        self.identity
            .current()
            .map_or(0, |h| Arc::as_ptr(&h) as usize)
    }

    /// The plain HTTP/1 streams kept between requests.
    pub fn idle(&self) -> &Arc<super::lease::Idle> {
        &self.idle
    }

    /// Its bounds and timeouts.
    pub fn settings(&self) -> &TunnelSettings {
        &self.settings
    }

    /// The mesh identity this pool presents.
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// Sessions currently usable (for tests and `/ready`-style reports).
    pub fn sessions(&self) -> usize {
        self.peers
            .lock()
            .values()
            .filter(|slot| {
                slot.try_lock()
                    .map(|s| s.as_ref().is_some_and(|s| s.usable()))
                    .unwrap_or(true)
            })
            .count()
    }

    /// Opens a stream to `claim.target` through `peer`, counted by result.
    pub async fn open(
        &self,
        peer: &PeerNode,
        claim: &StreamClaim,
    ) -> Result<TunnelStream, OpenError> {
        self.open_linked(peer, claim).await.map(|(s, _)| s)
    }

    /// The same, with a link to the session that carries the stream: an HTTP stream kept for
    /// another request ([`super::lease`]) is handed out again only while that session is usable
    /// and holds the current certificate.
    pub(crate) async fn open_linked(
        &self,
        peer: &PeerNode,
        claim: &StreamClaim,
    ) -> Result<(TunnelStream, SessionLink), OpenError> {
        let r = self.open_counted(peer, claim).await;
        let label = match &r {
            Ok(_) => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
            Err(e) => e.label(),
        };
        crate::metrics::register()
            .tunnel_streams
            .with_label_values(&["out", claim.protocol.as_str(), label])
            .inc();
        r
    }

    async fn open_counted(
        &self,
        peer: &PeerNode,
        claim: &StreamClaim,
    ) -> Result<(TunnelStream, SessionLink), OpenError> {
        let timeout = self.settings.connect_timeout;
        let deadline = Instant::now() + timeout;
        let timed_out = || OpenError::Timeout {
            peer: peer.to_string(),
            timeout,
        };
        // A session that failed since its last use is found out by the first stream: dial
        // once more before giving up.
        let mut last = String::new();
        for _ in 0..2 {
            let session = timeout_at(deadline, self.session(peer))
                .await
                .map_err(|_| timed_out())??;
            match self.stream_on(&session, peer, claim, deadline).await {
                Ok(s) => return Ok((s, SessionLink(session))),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Session(reason)) => {
                    debug!(%peer, %reason, "Tunnel session unusable, dialling again");
                    session.retire();
                    last = reason;
                }
            }
        }
        Err(OpenError::Stream {
            peer: peer.to_string(),
            reason: last,
        })
    }

    async fn stream_on(
        &self,
        session: &Arc<Session>,
        peer: &PeerNode,
        claim: &StreamClaim,
        deadline: Instant,
    ) -> Result<TunnelStream, Failure> {
        let timed_out = || {
            Failure::Final(OpenError::Timeout {
                peer: peer.to_string(),
                timeout: self.settings.connect_timeout,
            })
        };
        let Some(send) = session.send.lock().clone() else {
            return Err(Failure::Session("session retired".into()));
        };
        // Waits while the session carries its peer's maximum of streams.
        let mut send = timeout_at(deadline, send.ready())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| Failure::Session(e.to_string()))?;
        let guard = StreamGuard::new(session.clone());
        let (response, stream) = send
            .send_request(claim.to_request(), false)
            .map_err(|e| Failure::Session(e.to_string()))?;
        drop(send);
        let response = match timeout_at(deadline, response).await {
            Err(_) => return Err(timed_out()),
            // GOAWAY or a broken connection: the stream was never taken on.
            Ok(Err(e)) if e.is_go_away() || e.is_io() => {
                return Err(Failure::Session(e.to_string()))
            }
            Ok(Err(e)) => {
                return Err(Failure::Final(OpenError::Stream {
                    peer: peer.to_string(),
                    reason: e.to_string(),
                }))
            }
            Ok(Ok(r)) => r,
        };
        if response.status() != StatusCode::OK {
            let reason = response
                .headers()
                .get(super::header::REASON)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            return Err(Failure::Final(OpenError::Refused {
                peer: peer.to_string(),
                target: claim.target,
                status: response.status().as_u16(),
                reason,
            }));
        }
        Ok(TunnelStream::new(
            stream,
            response.into_body(),
            "out",
            Some(Box::new(guard)),
        ))
    }

    /// The usable session to `peer` opened with the certificate held now, or a new one. One
    /// dial at a time per peer: streams arriving meanwhile wait for it.
    async fn session(&self, peer: &PeerNode) -> Result<Arc<Session>, OpenError> {
        let slot = {
            let mut peers = self.peers.lock();
            if !peers.contains_key(peer) && peers.len() >= PRUNE_AT {
                // Nodes come and go: forget peers whose session has ended (a slot being dialled
                // is locked and kept).
                peers.retain(|_, slot| {
                    slot.try_lock()
                        .map(|s| s.as_ref().is_some_and(|s| s.usable()))
                        .unwrap_or(true)
                });
            }
            peers.entry(peer.clone()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        let held = self
            .identity
            .current()
            .ok_or_else(|| OpenError::NoIdentity {
                peer: peer.to_string(),
            })?;
        if let Some(s) = slot.as_ref() {
            if s.usable() && Arc::ptr_eq(&s.held, &held) {
                return Ok(s.clone());
            }
            // Renewed: new streams go on a session with the new certificate; the old one's
            // streams run to their end.
            s.retire();
        }
        let session = self.dial(peer, held).await?;
        *slot = Some(session.clone());
        Ok(session)
    }

    fn client_config(&self, held: &Arc<Held>) -> Result<Arc<rustls::ClientConfig>, String> {
        let mut cached = self.config.lock();
        if let Some((h, c)) = &*cached {
            if Arc::ptr_eq(h, held) {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(crate::identity::tunnel::client_config(held)?);
        *cached = Some((held.clone(), c.clone()));
        Ok(c)
    }

    async fn dial(&self, peer: &PeerNode, held: Arc<Held>) -> Result<Arc<Session>, OpenError> {
        let fail = |reason: String| OpenError::Dial {
            peer: peer.to_string(),
            reason,
        };
        let config = self.client_config(&held).map_err(fail)?;
        let name = rustls::pki_types::ServerName::try_from(peer.name.to_string())
            .map_err(|e| fail(format!("node name {:?}: {e}", peer.name)))?;
        let tcp = TcpStream::connect(peer.addr)
            .await
            .map_err(|e| fail(format!("connect {}: {e}", peer.addr)))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("TLS: {}", crate::identity::chain(&e))))?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(SESSION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|e| fail(format!("HTTP/2: {e}")))?;
        let session = Arc::new(Session {
            send: parking_lot::Mutex::new(Some(send)),
            held,
            streams: AtomicUsize::new(0),
            last_used_ns: AtomicU64::new(clock::now_ns()),
        });
        debug!(%peer, "Tunnel session opened");
        tokio::spawn(drive(
            conn,
            session.clone(),
            peer.clone(),
            self.settings.session_idle,
        ));
        Ok(session)
    }
}

/// Runs a session's connection until it ends, retiring it when it stayed without streams for
/// `idle` (then the connection ends by itself with a GOAWAY).
async fn drive<T>(
    conn: h2::client::Connection<T, Bytes>,
    session: Arc<Session>,
    peer: PeerNode,
    idle: std::time::Duration,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let open = crate::metrics::register()
        .tunnel_sessions
        .with_label_values(&["out"]);
    open.inc();
    let tick = (idle / 4).clamp(
        std::time::Duration::from_millis(50),
        std::time::Duration::from_secs(10),
    );
    tokio::pin!(conn);
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    if !e.is_go_away() {
                        warn!(%peer, error = %e, "Tunnel session failed");
                    }
                }
                break;
            }
            () = tokio::time::sleep(tick) => {
                let last = clock::instant(session.last_used_ns.load(Ordering::Relaxed));
                if session.streams.load(Ordering::Acquire) == 0 && last + idle <= Instant::now() && session.usable() {
                    debug!(%peer, "Tunnel session idle, closing");
                    session.retire();
                }
            }
        }
    }
    session.retire();
    open.dec();
}

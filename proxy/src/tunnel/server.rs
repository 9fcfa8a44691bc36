//! The destination side: HTTP/2 on an accepted mutual-TLS session (the peer's node name taken
//! from its certificate), each `CONNECT` stream's claim read and judged ([`Admission`]), then a
//! connection to the pod on this node and bytes (or datagrams) copied both ways. Answers: 200
//! once connected, 400 for a claim that cannot be read, 403 with `maille-reason` for a denial,
//! 502/504 when the pod cannot be reached, 503 without a routing table.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response, StatusCode};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{
    Protocol, StreamClaim, TunnelSettings, TunnelStream, MAX_HEADER_LIST_SIZE, MAX_SEND_BUFFER,
    SESSION_WINDOW, STREAM_WINDOW,
};
use crate::clock;

/// A stream the destination refuses to carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// Stable, for the `reason` label and `maille-reason`.
    pub reason: &'static str,
    /// For the log.
    pub detail: String,
}

/// Decides whether a peer node may have a stream carried to a pod of this node.
pub trait Admission: Send + Sync + 'static {
    /// `Ok` to carry the stream `claim` describes, from the proxy of `peer_node` (as its
    /// certificate names it).
    fn admit(&self, peer_node: &str, claim: &StreamClaim) -> Result<(), Denied>;
}

/// Admits nothing: a listener that cannot judge claims carries no stream.
#[derive(Debug)]
pub struct DenyAll;

impl Admission for DenyAll {
    fn admit(&self, _: &str, _: &StreamClaim) -> Result<(), Denied> {
        Err(Denied {
            reason: "not_ready",
            detail: "this proxy cannot judge tunnel streams".into(),
        })
    }
}

/// What serves the streams of accepted sessions.
#[derive(Clone)]
pub struct Forward {
    /// Judges each stream's claim.
    pub admission: Arc<dyn Admission>,
    /// Bounds and timeouts.
    pub settings: TunnelSettings,
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The relay's per-service counters are the source proxy's; the destination counts the
/// tunnel's bytes only (`maille_proxy_tunnel_bytes_total`).
static UNCOUNTED: LazyLock<IntCounter> =
    LazyLock::new(|| IntCounter::new("uncounted", "not registered").expect("counter"));

fn count(protocol: &str, result: &str) {
    crate::metrics::register()
        .tunnel_streams
        .with_label_values(&["in", protocol, result])
        .inc();
}

/// Counts a stream by the client identity it states (bounded label values).
fn count_identity(claim: &StreamClaim, admitted: bool) {
    let m = crate::metrics::register();
    m.identity_labels
        .counter(&m.tunnel_identities, claim.identity.as_ref(), admitted)
        .inc();
}

/// Serves one accepted session from the proxy of `peer_node` until it ends, is idle for
/// `settings.session_idle`, or `shutdown`.
pub async fn serve<T>(
    io: T,
    peer_node: Arc<str>,
    peer: SocketAddr,
    forward: Forward,
    mut shutdown: pingora_core::server::ShutdownWatch,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let settings = forward.settings;
    let handshake = h2::server::Builder::new()
        .max_concurrent_streams(settings.max_streams)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(SESSION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout(settings.connect_timeout, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(%peer, node = %peer_node, error = %e, "Tunnel session: no HTTP/2");
            return;
        }
        Err(_) => {
            debug!(%peer, node = %peer_node, "Tunnel session: no HTTP/2 preface in time");
            return;
        }
    };
    let open = crate::metrics::register()
        .tunnel_sessions
        .with_label_values(&["in"]);
    open.inc();
    let state = Arc::new(Activity {
        streams: AtomicUsize::new(0),
        last_ns: AtomicU64::new(clock::now_ns()),
    });
    let tick =
        (settings.session_idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(10));
    let mut closing = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                None => break,
                Some(Err(e)) => {
                    if !e.is_go_away() {
                        debug!(%peer, node = %peer_node, error = %e, "Tunnel session ended by an error");
                    }
                    break;
                }
                Some(Ok((req, respond))) => {
                    let guard = StreamCount::new(state.clone());
                    tokio::spawn(stream(req, respond, peer_node.clone(), forward.clone(), guard));
                }
            },
            () = tokio::time::sleep(tick), if !closing => {
                let last = clock::instant(state.last_ns.load(Ordering::Relaxed));
                if state.streams.load(Ordering::Acquire) == 0 && last + settings.session_idle <= Instant::now() {
                    debug!(%peer, node = %peer_node, "Tunnel session idle, closing");
                    conn.graceful_shutdown();
                    closing = true;
                }
            }
            _ = shutdown.changed(), if !closing => {
                conn.graceful_shutdown();
                closing = true;
            }
        }
    }
    open.dec();
}

struct Activity {
    streams: AtomicUsize,
    last_ns: AtomicU64,
}

struct StreamCount(Arc<Activity>);

impl StreamCount {
    fn new(a: Arc<Activity>) -> StreamCount {
        a.streams.fetch_add(1, Ordering::AcqRel);
        StreamCount(a)
    }
}

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.last_ns.fetch_max(clock::now_ns(), Ordering::Relaxed);
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

fn answer(respond: &mut SendResponse<Bytes>, status: StatusCode, reason: &str) {
    let mut resp = Response::builder().status(status);
    if !reason.is_empty() {
        resp = resp.header(super::header::REASON, reason);
    }
    let resp = resp.body(()).expect("response");
    let _ = respond.send_response(resp, true);
}

async fn stream(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer_node: Arc<str>,
    forward: Forward,
    guard: StreamCount,
) {
    let claim = match StreamClaim::from_request(&req) {
        Ok(c) => c,
        Err(e) => {
            count("unknown", "bad_request");
            debug!(node = %peer_node, error = %e, "Tunnel stream refused");
            answer(&mut respond, StatusCode::BAD_REQUEST, "bad_request");
            return;
        }
    };
    let proto = claim.protocol.as_str();
    let admitted = forward.admission.admit(&peer_node, &claim);
    count_identity(&claim, admitted.is_ok());
    if let Err(d) = admitted {
        count(proto, "denied");
        crate::metrics::register()
            .tunnel_denied
            .with_label_values(&[d.reason])
            .inc();
        // Counted every time; at debug like the source's own access refusals (a client that
        // keeps retrying must not flood the log).
        debug!(
            node = %peer_node,
            source = ?claim.source_ip,
            source_identity = %claim.identity.as_ref().map(|i| i.to_string()).unwrap_or_default(),
            service = %claim.service,
            endpoint = %claim.target,
            reason = d.reason,
            detail = %d.detail,
            "Tunnel stream denied"
        );
        answer(&mut respond, StatusCode::FORBIDDEN, d.reason);
        return;
    }
    let settings = forward.settings;
    match claim.protocol {
        Protocol::Tcp => {
            let tcp = match tokio::time::timeout(
                settings.connect_timeout,
                TcpStream::connect(claim.target),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    count(proto, "unreachable");
                    warn!(node = %peer_node, service = %claim.service, endpoint = %claim.target, error = %e, "Tunnel stream: endpoint unreachable");
                    answer(&mut respond, StatusCode::BAD_GATEWAY, "unreachable");
                    return;
                }
                Err(_) => {
                    count(proto, "unreachable");
                    warn!(node = %peer_node, service = %claim.service, endpoint = %claim.target, "Tunnel stream: endpoint connect timed out");
                    answer(&mut respond, StatusCode::GATEWAY_TIMEOUT, "unreachable");
                    return;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Ok(send) = respond.send_response(Response::new(()), false) else {
                count(proto, "error");
                return;
            };
            count(proto, "ok");
            let tunnel = TunnelStream::new(send, req.into_body(), "in", Some(Box::new(guard)));
            debug!(node = %peer_node, source = ?claim.source_ip, source_identity = %claim.identity.as_ref().map(|i| i.to_string()).unwrap_or_default(), service = %claim.service, endpoint = %claim.target, "Tunnel stream carried");
            let end =
                crate::tcp::relay::relay(tunnel, tcp, settings.stream_idle, &UNCOUNTED, &UNCOUNTED)
                    .await;
            debug!(node = %peer_node, endpoint = %claim.target, end = ?end, "Tunnel stream ended");
        }
        Protocol::Udp => {
            let socket = match super::udp::connect_udp(claim.target) {
                Ok(s) => s,
                Err(e) => {
                    count(proto, "unreachable");
                    warn!(node = %peer_node, service = %claim.service, endpoint = %claim.target, error = %e, "Tunnel stream: cannot open UDP socket to endpoint");
                    answer(&mut respond, StatusCode::BAD_GATEWAY, "unreachable");
                    return;
                }
            };
            let Ok(send) = respond.send_response(Response::new(()), false) else {
                count(proto, "error");
                return;
            };
            count(proto, "ok");
            let tunnel = TunnelStream::new(send, req.into_body(), "in", Some(Box::new(guard)));
            let idle = settings
                .stream_idle
                .unwrap_or(crate::udp::DEFAULT_SESSION_IDLE_TIMEOUT);
            super::udp::relay_to_socket(tunnel, socket, idle).await;
            debug!(node = %peer_node, endpoint = %claim.target, "Tunnel UDP stream ended");
        }
    }
}

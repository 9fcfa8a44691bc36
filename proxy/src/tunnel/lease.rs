//! Plain HTTP/1 through the tunnel without a socket in between: Pingora gets each tunnel
//! stream as a virtual socket (a [`Lease`]), and this proxy keeps the streams between requests
//! in a pool of its own ([`Idle`]), because Pingora 0.9 never hands a pooled virtual stream
//! back (`HttpPeer::matches_fd` needs a file descriptor).
//!
//! A stream is kept for another request only when everything says it is clean, never by
//! default: Pingora judged the response complete and the connection reusable (it kept the
//! lease in its own pool instead of closing or dropping it), the last read of the lease found
//! nothing more to read, the request ended without error ([`settle`], from the request's
//! `logging` hook), its response was a final HTTP/1.1 answer that did not ask to close or
//! switch protocols, and the client's request body was read to its end. The lease marks itself
//! unusable on shutdown, end of stream, any error, and when it is dropped before that verdict.
//! A kept stream is handed out again only to the same claim (node, endpoint, client address
//! and identity, service), from a session still usable and holding the current certificate,
//! within [`POOL_IDLE`], and only if nothing is readable on it: a byte a backend sent after its
//! response makes the stream useless, never the start of the next answer. Idle streams are
//! bounded per claim, per peer node (a
//! quarter of the streams its session carries at once) and in total.
//!
//! In Pingora's pool every lease has the id of every virtual stream, -1; each attempt's peer
//! has a group key of its own ([`attempt_key`]), so no other request ever takes a lease from
//! there. The shared id only confuses the pool's count of idle entries for a moment when two
//! leases are released and removed at once (see `[profile.dev.package.pingora-pool]` in the
//! workspace's Cargo.toml).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use async_trait::async_trait;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, Result};
use pingora_http::ResponseHeader;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::client::{Pool, SessionLink};
use super::connector::POOL_IDLE;
use super::{PeerNode, StreamClaim, TunnelStream};
use crate::identity::Identity;

/// Idle streams kept for one claim.
pub const MAX_IDLE_PER_CLAIM: usize = 128;
/// Idle streams kept for one peer node: a kept stream holds one of its session's HTTP/2
/// streams, so idle ones may take at most a quarter of what a session carries at once, and
/// new claims to that node never wait behind streams nobody uses.
pub const MAX_IDLE_PER_PEER: usize = super::MAX_CONCURRENT_STREAMS as usize / 4;
/// Idle streams kept in all.
pub const MAX_IDLE: usize = 1024;

type Key = (PeerNode, StreamClaim);

/// The `event` values of `maille_proxy_tunnel_http_streams_total`, in [`Event`]'s order.
pub const EVENTS: [&str; 6] = ["opened", "reused", "kept", "not_kept", "full", "stale"];

/// What happened to a request's tunnel stream (see the metric's help in [`crate::metrics`]).
#[derive(Clone, Copy, Debug)]
enum Event {
    Opened,
    Reused,
    Kept,
    NotKept,
    Full,
    Stale,
}

/// Counts `n` times `event` (the counters are looked up once, not per request).
fn count(event: Event, n: usize) {
    static COUNTERS: OnceLock<[IntCounter; 6]> = OnceLock::new();
    if n == 0 {
        return;
    }
    let counters = COUNTERS.get_or_init(|| {
        let m = &crate::metrics::register().tunnel_http_streams;
        EVENTS.map(|e| m.with_label_values(&[e]))
    });
    counters[event as usize].inc_by(n as u64);
}

/// Moves the gauge of kept streams by `delta`.
fn idle_moved(delta: i64) {
    if delta != 0 {
        crate::metrics::register().tunnel_http_idle.add(delta);
    }
}

struct Parked {
    stream: TunnelStream,
    link: SessionLink,
    since: Instant,
}

/// The tunnel streams kept between HTTP/1 requests, by claim.
pub struct Idle {
    identity: Arc<Identity>,
    state: parking_lot::Mutex<IdleState>,
}

#[derive(Default)]
struct IdleState {
    by_claim: HashMap<Key, Vec<Parked>>,
    counts: Counts,
    /// Whether a task closes streams idle for too long.
    swept: bool,
}

/// How many streams are kept, in all and by peer node, against the bounds.
#[derive(Default, Debug)]
struct Counts {
    total: usize,
    by_peer: HashMap<PeerNode, usize>,
}

impl Counts {
    /// Whether one more stream may be kept for `peer`, which keeps `for_claim` for its claim.
    fn may_keep(&self, peer: &PeerNode, for_claim: usize) -> bool {
        self.total < MAX_IDLE
            && for_claim < MAX_IDLE_PER_CLAIM
            && self.by_peer.get(peer).copied().unwrap_or(0) < MAX_IDLE_PER_PEER
    }

    fn kept(&mut self, peer: &PeerNode) {
        self.total += 1;
        *self.by_peer.entry(peer.clone()).or_default() += 1;
    }

    fn gone(&mut self, peer: &PeerNode, n: usize) {
        if n == 0 {
            return;
        }
        self.total -= n;
        if let Some(c) = self.by_peer.get_mut(peer) {
            *c -= n;
            if *c == 0 {
                self.by_peer.remove(peer);
            }
        }
    }
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle")
            .field("streams", &self.state.lock().counts.total)
            .finish_non_exhaustive()
    }
}

impl Idle {
    pub(crate) fn new(identity: Arc<Identity>) -> Arc<Idle> {
        Arc::new(Idle {
            identity,
            state: parking_lot::Mutex::new(IdleState::default()),
        })
    }

    /// Idle streams kept now.
    pub fn len(&self) -> usize {
        self.state.lock().counts.total
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most recently kept stream of `key` that may carry another request; those found
    /// unusable on the way are closed.
    fn take(&self, key: &Key) -> Option<(TunnelStream, SessionLink)> {
        let mut closed = Vec::new();
        let found = {
            let mut st = self.state.lock();
            let mut found = None;
            if let Some(list) = st.by_claim.get_mut(key) {
                while let Some(mut p) = list.pop() {
                    if p.since.elapsed() <= POOL_IDLE
                        && p.link.current(&self.identity)
                        && nothing_readable(&mut p.stream)
                    {
                        found = Some((p.stream, p.link));
                        break;
                    }
                    closed.push(p);
                }
                if list.is_empty() {
                    st.by_claim.remove(key);
                }
            }
            let gone = closed.len() + usize::from(found.is_some());
            st.counts.gone(&key.0, gone);
            idle_moved(-(gone as i64));
            found
        };
        count(Event::Stale, closed.len());
        drop(closed);
        found
    }

    /// Keeps `stream` for `key`, unless the bounds are reached.
    fn put(self: &Arc<Idle>, key: Key, stream: TunnelStream, link: SessionLink) {
        let mut st = self.state.lock();
        let for_claim = st.by_claim.get(&key).map_or(0, Vec::len);
        if !st.counts.may_keep(&key.0, for_claim) {
            drop(st);
            count(Event::Full, 1);
            return;
        }
        st.counts.kept(&key.0);
        idle_moved(1);
        count(Event::Kept, 1);
        st.by_claim.entry(key).or_default().push(Parked {
            stream,
            link,
            since: Instant::now(),
        });
        if !st.swept {
            st.swept = true;
            drop(st);
            tokio::spawn(sweep(Sweeping(Arc::downgrade(self))));
        }
    }

    /// Closes the streams idle for longer than [`POOL_IDLE`] or whose session is no longer
    /// current.
    fn sweep(&self) {
        let mut closed = Vec::new();
        {
            let st = &mut *self.state.lock();
            let counts = &mut st.counts;
            st.by_claim.retain(|(peer, _), list| {
                let (keep, old): (Vec<_>, Vec<_>) =
                    std::mem::take(list).into_iter().partition(|p| {
                        p.since.elapsed() <= POOL_IDLE && p.link.current(&self.identity)
                    });
                counts.gone(peer, old.len());
                idle_moved(-(old.len() as i64));
                closed.extend(old);
                *list = keep;
                !list.is_empty()
            });
        }
        count(Event::Stale, closed.len());
        drop(closed);
    }
}

impl Drop for Idle {
    fn drop(&mut self) {
        // The streams still kept close with the pool.
        idle_moved(-(self.state.get_mut().counts.total as i64));
    }
}

/// Marks the pool unswept when the sweeping task ends (its runtime stopped), so that the next
/// stream kept starts another.
struct Sweeping(Weak<Idle>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        if let Some(idle) = self.0.upgrade() {
            idle.state.lock().swept = false;
        }
    }
}

async fn sweep(guard: Sweeping) {
    loop {
        tokio::time::sleep(POOL_IDLE / 4).await;
        let Some(idle) = guard.0.upgrade() else {
            return;
        };
        idle.sweep();
    }
}

/// Whether a read of `stream` would wait: no byte, end or reset arrived since its last
/// response. (A stream found otherwise is closed, so a byte read here is never lost to a
/// request.)
fn nothing_readable(stream: &mut TunnelStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(stream).poll_read(&mut cx, &mut buf).is_pending()
}

/// What the lease knows about its stream's use.
struct LeaseState {
    /// `None` once settled (kept or closed) or dropped.
    stream: Option<TunnelStream>,
    /// Shut down, ended, failed or dropped: never kept.
    spoiled: bool,
    /// The last read found nothing to read (and nothing was written since).
    waiting: bool,
    /// The task waiting to read, woken when the stream is taken away.
    reader: Option<Waker>,
}

type Shared = Arc<parking_lot::Mutex<LeaseState>>;

/// A tunnel stream as Pingora's upstream connection of one request.
pub struct Lease(Shared);

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Lease").finish_non_exhaustive()
    }
}

fn taken() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "tunnel stream released")
}

impl AsyncRead for Lease {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.0.lock();
        let st = &mut *st;
        let Some(stream) = st.stream.as_mut() else {
            // Settled: an end of stream, so that Pingora's idle poll lets go of the lease.
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        let r = Pin::new(stream).poll_read(cx, buf);
        match &r {
            Poll::Pending => {
                st.waiting = true;
                if !st.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    st.reader = Some(cx.waker().clone());
                }
            }
            Poll::Ready(Ok(())) => {
                st.waiting = false;
                if buf.filled().len() == before && buf.remaining() > 0 {
                    st.spoiled = true;
                }
            }
            Poll::Ready(Err(_)) => {
                st.waiting = false;
                st.spoiled = true;
            }
        }
        r
    }
}

impl AsyncWrite for Lease {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.0.lock();
        let st = &mut *st;
        let Some(stream) = st.stream.as_mut() else {
            return Poll::Ready(Err(taken()));
        };
        st.waiting = false;
        let r = Pin::new(stream).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Err(_))) {
            st.spoiled = true;
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.0.lock();
        match st.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut st = self.0.lock();
        st.spoiled = true;
        match st.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl VirtualSocket for Lease {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> io::Result<()> {
        // No-delay and keep-alive belong to the session's TCP socket.
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let stream = {
            let mut st = self.0.lock();
            st.spoiled = true;
            st.stream.take()
        };
        // Dropped unfinished: a reset, and the destination closes its connection to the pod.
        drop(stream);
    }
}

/// The lease of one request attempt, as its connector filled it in.
struct Leased {
    shared: Shared,
    link: SessionLink,
    /// Taken from [`Idle`] rather than opened.
    reused: bool,
}

/// What connects an attempt and what its request's end settles, shared.
struct Slot {
    idle: Arc<Idle>,
    key: Key,
    leased: parking_lot::Mutex<Option<Leased>>,
}

/// The connector of one request attempt (`HttpPeer.options.custom_l4`): a kept stream of the
/// claim, else a new one.
pub struct LeaseConnect {
    pool: Arc<Pool>,
    slot: Arc<Slot>,
}

impl std::fmt::Debug for LeaseConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseConnect")
            .field("peer", &self.slot.key.0)
            .field("target", &self.slot.key.1.target)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl L4Connect for LeaseConnect {
    async fn connect(&self, _addr: &PingoraAddr) -> Result<Stream> {
        let (peer, claim) = &self.slot.key;
        let (stream, link, reused) = match self.slot.idle.take(&self.slot.key) {
            Some((s, link)) => (s, link, true),
            None => {
                let (s, link) = self
                    .pool
                    .open_linked(peer, claim)
                    .await
                    .map_err(super::connector::open_error)?;
                (s, link, false)
            }
        };
        count(if reused { Event::Reused } else { Event::Opened }, 1);
        let shared: Shared = Arc::new(parking_lot::Mutex::new(LeaseState {
            stream: Some(stream),
            spoiled: false,
            waiting: false,
            reader: None,
        }));
        let earlier = self.slot.leased.lock().replace(Leased {
            shared: shared.clone(),
            link,
            reused,
        });
        if let Some(earlier) = earlier {
            count(Event::NotKept, 1);
            discard(earlier);
        }
        Ok(Stream::from(VirtualSocketStream::new(Box::new(Lease(
            shared,
        )))))
    }
}

/// Takes the stream from its lease (which reads an end of stream from then on) and closes it.
fn discard(leased: Leased) {
    let (stream, reader) = {
        let mut st = leased.shared.lock();
        st.spoiled = true;
        (st.stream.take(), st.reader.take())
    };
    drop(stream);
    if let Some(w) = reader {
        w.wake();
    }
}

/// The request's hold on its attempt's tunnel stream (in the request's context): settled when
/// the request ends ([`settle`]); dropped unsettled (a retry, a failure), the stream is closed.
pub struct Ticket {
    slot: Arc<Slot>,
    /// A final response was read (status 200 or more).
    final_response: bool,
    /// A response said the connection cannot carry another request.
    refused: bool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("peer", &self.slot.key.0)
            .field("final_response", &self.final_response)
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

/// A `group_key` of its own for each attempt's peer in Pingora's pool (0 is what every direct
/// peer has).
pub(crate) fn attempt_key() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The connector and ticket of one request attempt to `peer` with `claim`.
pub(crate) fn lease(pool: Arc<Pool>, peer: PeerNode, claim: StreamClaim) -> (LeaseConnect, Ticket) {
    let slot = Arc::new(Slot {
        idle: pool.idle().clone(),
        key: (peer, claim),
        leased: parking_lot::Mutex::new(None),
    });
    (
        LeaseConnect {
            pool,
            slot: slot.clone(),
        },
        Ticket {
            slot,
            final_response: false,
            refused: false,
        },
    )
}

impl Ticket {
    /// Whether the attempt rode a stream kept from an earlier request (a failure on it says
    /// nothing about the endpoint, as on any pooled connection).
    pub fn reused(&self) -> bool {
        self.slot.leased.lock().as_ref().is_some_and(|l| l.reused)
    }

    /// Notes a response header read from the upstream (informational ones included).
    pub fn on_response(&mut self, resp: &ResponseHeader) {
        let status = resp.status.as_u16();
        let closes = resp
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close") || has_token(v.as_bytes(), b"upgrade"));
        if status == 101 || resp.version != http::Version::HTTP_11 || closes {
            self.refused = true;
        }
        if status >= 200 {
            self.final_response = true;
        }
    }

    fn finish(&mut self, clean: bool) {
        let Some(leased) = self.slot.leased.lock().take() else {
            return;
        };
        if !clean {
            count(Event::NotKept, 1);
            discard(leased);
            return;
        }
        let (stream, reader) = {
            let mut st = leased.shared.lock();
            let keep = !st.spoiled && st.waiting;
            st.spoiled = true;
            let stream = st.stream.take();
            (stream.filter(|_| keep), st.reader.take())
        };
        if let Some(w) = reader {
            // Pingora's idle poll of the lease reads the end and drops it.
            w.wake();
        }
        match stream {
            Some(stream) if leased.link.current(&self.slot.idle.identity) => {
                self.slot
                    .idle
                    .put(self.slot.key.clone(), stream, leased.link);
            }
            Some(_) => count(Event::Stale, 1),
            None => count(Event::NotKept, 1),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// Whether a comma-separated header value names `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Ends the request's hold on its tunnel stream (from the `logging` hook): kept for another
/// request of the claim only when the request ended without error, a final response that
/// allows another request was read, the client asked for no close and its request body was
/// read to the end, and the lease itself is clean (see the module's documentation).
pub fn settle(ticket: Option<Ticket>, session: &mut pingora_proxy::Session, e: Option<&Error>) {
    let Some(mut ticket) = ticket else {
        return;
    };
    let request_closes = session
        .req_header()
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"close") || has_token(v.as_bytes(), b"upgrade"));
    let clean = e.is_none()
        && ticket.final_response
        && !ticket.refused
        && !request_closes
        && session
            .response_written()
            .is_some_and(|r| r.status.as_u16() != 101)
        && session.is_body_done();
    ticket.finish(clean);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, port: u16) -> PeerNode {
        PeerNode {
            name: name.into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn idle_streams_are_bounded_by_claim_by_peer_and_in_all() {
        let mut c = Counts::default();
        let a = node("node-a", 15008);
        assert!(c.may_keep(&a, MAX_IDLE_PER_CLAIM - 1));
        assert!(!c.may_keep(&a, MAX_IDLE_PER_CLAIM), "per claim");
        for _ in 0..MAX_IDLE_PER_PEER {
            assert!(c.may_keep(&a, 0));
            c.kept(&a);
        }
        assert!(!c.may_keep(&a, 0), "per peer node");
        let b = node("node-b", 15008);
        assert!(c.may_keep(&b, 0), "another node is not held back");
        c.gone(&a, 1);
        assert!(c.may_keep(&a, 0), "a stream gone frees its place");
        // In all: as many nodes as it takes, each under its own bound.
        let mut port = 20_000;
        while c.total < MAX_IDLE {
            let n = node("node-n", port);
            port += 1;
            while c.total < MAX_IDLE && c.may_keep(&n, 0) {
                c.kept(&n);
            }
        }
        assert!(!c.may_keep(&node("node-z", 1), 0), "in all");
        c.gone(&a, MAX_IDLE_PER_PEER - 1);
        assert!(
            !c.by_peer.contains_key(&a),
            "a node with none kept is forgotten"
        );
        assert_eq!(c.total, MAX_IDLE - (MAX_IDLE_PER_PEER - 1));
        // The bound leaves most of a session's streams to requests under way.
        const { assert!(MAX_IDLE_PER_PEER * 4 <= super::super::MAX_CONCURRENT_STREAMS as usize) };
    }

    #[test]
    fn connection_tokens_are_read_whole_and_case_blind() {
        assert!(has_token(b"close", b"close"));
        assert!(has_token(b"keep-alive, Close", b"close"));
        assert!(has_token(b" UPGRADE ", b"upgrade"));
        assert!(!has_token(b"closed", b"close"));
        assert!(!has_token(b"keep-alive", b"close"));
    }
}

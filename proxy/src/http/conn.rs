//! Client connection bounds on the HTTP listeners: a deadline for reading a request header
//! (slowloris), an idle keep-alive timeout between requests, and a bound on connections open
//! at once. Pingora 0.9 times out single reads only (a trickle resets it) and waits without
//! limit for the 24 bytes of the h2c preface, so [`ClientStream`] wraps each accepted stream
//! and enforces the deadlines itself; the proxy hooks move it between phases.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics;

/// The HTTP/2 connection preface; what Pingora peeks for on an h2c-enabled port.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Client connection limits of the HTTP listeners (`--http-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// From accept (or the first byte of a following request) to the end of the header.
    pub header_timeout: Duration,
    /// Between the end of a response and the first byte of the next request.
    pub idle_timeout: Duration,
    /// Client connections open at once over all HTTP listeners.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// What the connection is waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A request header, which must be complete by the deadline.
    Header,
    /// Nothing of ours: a request is being served (body reads have Pingora's own timeout),
    /// or the connection speaks HTTP/2 (which has its own idle timeout).
    Busy,
    /// The next request, whose first byte must come by the deadline.
    Idle,
}

#[derive(Debug)]
struct Control {
    phase: Phase,
    deadline: Option<Instant>,
}

/// An accepted client stream with the header and idle deadlines applied to its reads. A read
/// that misses its deadline fails with `TimedOut`, which makes Pingora close the connection.
pub struct ClientStream {
    inner: Stream,
    limits: ConnLimits,
    /// Bytes read while looking for the h2c preface, handed out before reading more.
    peeked: Vec<u8>,
    peeked_at: usize,
    control: Mutex<Control>,
    sleep: Pin<Box<Sleep>>,
}

impl fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStream")
            .field("inner", &self.inner)
            .field("control", &self.control)
            .finish()
    }
}

impl ClientStream {
    /// Wraps a just-accepted stream: its first request header is due within the header
    /// timeout.
    pub fn new(inner: Stream, limits: ConnLimits) -> Self {
        let deadline = Instant::now() + limits.header_timeout;
        ClientStream {
            inner,
            limits,
            peeked: Vec::new(),
            peeked_at: 0,
            control: Mutex::new(Control {
                phase: Phase::Header,
                deadline: Some(deadline),
            }),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    fn set(&self, phase: Phase, after: Option<Duration>) {
        let mut c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        c.phase = phase;
        c.deadline = after.map(|d| Instant::now() + d);
    }

    /// The request header was read: no deadline of ours while it is served.
    pub fn request_started(&self) {
        self.set(Phase::Busy, None);
    }

    /// The response was sent: the next request must start within the idle timeout.
    pub fn request_finished(&self) {
        self.set(Phase::Idle, Some(self.limits.idle_timeout));
    }

    fn control(&self) -> (Phase, Option<Instant>) {
        let c = self.control.lock().unwrap_or_else(|e| e.into_inner());
        (c.phase, c.deadline)
    }

    /// Waits for the deadline (if any) alongside a pending read; `Ready` when it passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let (phase, Some(deadline)) = self.control() else {
            return Poll::Pending;
        };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        ready!(self.sleep.as_mut().poll(cx));
        let label = if phase == Phase::Idle {
            "idle"
        } else {
            "header"
        };
        metrics::register()
            .http_client_timeouts
            .with_label_values(&[label])
            .inc();
        Poll::Ready(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("client {label} timeout"),
        ))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.peeked_at < this.peeked.len() {
            let n = buf.remaining().min(this.peeked.len() - this.peeked_at);
            buf.put_slice(&this.peeked[this.peeked_at..this.peeked_at + n]);
            this.peeked_at += n;
            if this.peeked_at == this.peeked.len() {
                this.peeked = Vec::new();
                this.peeked_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && this.control().0 == Phase::Idle {
                    // The next request began: its header is due within the header timeout.
                    this.set(Phase::Header, Some(this.limits.header_timeout));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Peek for ClientStream {
    /// Reads until `buf` is full, the bytes stop looking like the h2c preface, the client
    /// closes, or the header deadline passes (an error: the connection is closed). Pingora's
    /// own peek waits for all 24 bytes, so a shorter HTTP/1 request (`GET /\r\n`,
    /// `GET / HTTP/1.0\r\n\r\n`) was never answered. The bytes are handed out again by reads.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut got = std::mem::take(&mut self.peeked);
        got.drain(..self.peeked_at);
        self.peeked_at = 0;
        while got.len() < buf.len() && H2_PREFACE.starts_with(&got) {
            let mut chunk = [0u8; 64];
            let want = (buf.len() - got.len()).min(chunk.len());
            // Reads through `self`, so the header deadline applies.
            let n = self.read(&mut chunk[..want]).await?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        let n = got.len().min(buf.len());
        buf[..n].copy_from_slice(&got[..n]);
        buf[n..].fill(0);
        if got.starts_with(H2_PREFACE) {
            // HTTP/2: its idle timeout is Pingora's (`h2_idle_timeout`), per connection.
            self.set(Phase::Busy, None);
        }
        self.peeked = got;
        Ok(true)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// The [`ClientStream`] under an HTTP/1 session, if there is one.
pub fn client_stream(session: &pingora_proxy::Session) -> Option<&ClientStream> {
    session
        .as_ref()
        .stream()?
        .as_any()
        .downcast_ref::<ClientStream>()
}

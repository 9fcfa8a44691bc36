//! One `CONNECT` stream as a byte stream (`AsyncRead` + `AsyncWrite`): HTTP/2 DATA frames in
//! both directions, flow-control credit given back as bytes are read, end of stream as the
//! half-close, and the bytes counted in `maille_proxy_tunnel_bytes_total`.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest DATA chunk written at once.
const MAX_CHUNK: usize = 64 * 1024;

/// A `CONNECT` stream of a tunnel session, either side.
pub struct TunnelStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not read yet.
    pending: Bytes,
    /// END_STREAM sent.
    ended: bool,
    sent_bytes: IntCounter,
    received_bytes: IntCounter,
    /// Keeps the session's stream count while the stream lives.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("stream_id", &self.send.stream_id().as_u32())
            .finish_non_exhaustive()
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().expect("is_io");
    }
    let kind = match e.reason() {
        Some(h2::Reason::CANCEL) | Some(h2::Reason::NO_ERROR) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::BrokenPipe,
    };
    io::Error::new(kind, e)
}

impl TunnelStream {
    /// The stream of `send` and `recv`; `direction` is `out` (this proxy opened it) or `in`.
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        direction: &str,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> TunnelStream {
        let bytes = &crate::metrics::register().tunnel_bytes;
        TunnelStream {
            send,
            recv,
            pending: Bytes::new(),
            ended: false,
            sent_bytes: bytes.with_label_values(&[direction, "sent"]),
            received_bytes: bytes.with_label_values(&[direction, "received"]),
            _guard: guard,
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                Some(Ok(data)) => {
                    // Credit back at once: the bytes are ours now, bounded by the window.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.received_bytes.inc_by(data.len() as u64);
                    this.pending = data;
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        let want = buf.len().min(MAX_CHUNK);
        this.send.reserve_capacity(want);
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "tunnel stream closed",
                    )))
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(want);
                    this.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_io)?;
                    this.sent_bytes.inc_by(n as u64);
                    return Poll::Ready(Ok(n));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The session's task writes frames as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        self.ended = true;
        // END_STREAM: the peer reads EOF, and may go on sending.
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(h2_io))
    }
}

impl pingora_core::protocols::l4::virt::VirtualSocket for TunnelStream {
    fn set_socket_option(
        &self,
        _opt: pingora_core::protocols::l4::virt::VirtualSockOpt,
    ) -> io::Result<()> {
        // No-delay and keep-alive belong to the session's TCP socket, set when it was opened.
        Ok(())
    }
}

//! Copies bytes both ways between a client and an endpoint: half-close passed on, both sides
//! closed when either fails, and an idle timeout over both directions.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::clock;

/// Per-direction copy buffer. Two per connection.
const BUF_SIZE: usize = 16 * 1024;

/// How a relayed connection ended without an I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides finished sending (each saw the other's FIN).
    Finished,
    /// Nothing moved either way for the idle timeout.
    Idle,
}

/// Time of the last byte moved in either direction ([`clock::now_ns`]), shared by the two
/// copy loops (and by a UDP session's two directions).
pub(crate) struct Activity {
    last_ns: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            last_ns: AtomicU64::new(clock::now_ns()),
        }
    }

    pub(crate) fn touch(&self) {
        self.last_ns.fetch_max(clock::now_ns(), Ordering::Relaxed);
    }

    pub(crate) fn last(&self) -> Instant {
        clock::instant(self.last_ns.load(Ordering::Relaxed))
    }
}

/// Relays until both directions have finished, either side fails, or the connection has been
/// idle for `idle` (never, when `None`). Bytes are counted as they move, so the counters of a
/// long-lived connection stay current.
pub(crate) async fn relay<C, U>(
    client: C,
    upstream: U,
    idle: Option<Duration>,
    received: &IntCounter,
    sent: &IntCounter,
) -> io::Result<End>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let to_upstream = pump(&mut client_r, &mut up_w, &activity, received);
    let to_client = pump(&mut up_r, &mut client_w, &activity, sent);
    tokio::pin!(to_upstream, to_client);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        let idle_at = idle.map(|d| activity.last() + d);
        tokio::select! {
            r = &mut to_upstream, if !up_done => { r?; up_done = true; }
            r = &mut to_client, if !down_done => { r?; down_done = true; }
            () = sleep_until(idle_at) => {
                // Bytes may have moved since the timer was set; it is re-armed from the latest.
                if let Some(d) = idle {
                    if activity.last() + d <= Instant::now() {
                        return Ok(End::Idle);
                    }
                }
            }
        }
    }
    Ok(End::Finished)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Copies one direction; at end of input, shuts the write side so the peer sees the half-close.
async fn pump<R, W>(
    r: &mut R,
    w: &mut W,
    activity: &Activity,
    counter: &IntCounter,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        activity.touch();
        w.write_all(&buf[..n]).await?;
        // Pingora's downstream stream buffers writes: flush so interactive protocols see each
        // chunk at once.
        w.flush().await?;
        activity.touch();
        counter.inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn counter(name: &str) -> IntCounter {
        IntCounter::new(name, "test").unwrap()
    }

    #[tokio::test]
    async fn copies_both_ways_and_passes_half_close_on() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let (rx, tx) = (counter("rx"), counter("tx"));
        let relay = tokio::spawn({
            let (rx, tx) = (rx.clone(), tx.clone());
            async move { relay(client, upstream, None, &rx, &tx).await }
        });
        client_peer.write_all(b"ping").await.unwrap();
        client_peer.shutdown().await.unwrap();
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"ping", "endpoint sees the bytes, then EOF");
        // The other direction still works after the client's half-close.
        upstream_peer.write_all(b"pong!").await.unwrap();
        upstream_peer.shutdown().await.unwrap();
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"pong!");
        assert_eq!(relay.await.unwrap().unwrap(), End::Finished);
        assert_eq!((rx.get(), tx.get()), (4, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_is_closed_after_the_timeout_and_not_before() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let (rx, tx) = (counter("rx"), counter("tx"));
        let relay = tokio::spawn(async move {
            relay(client, upstream, Some(Duration::from_secs(10)), &rx, &tx).await
        });
        tokio::time::sleep(Duration::from_secs(8)).await;
        client_peer.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        upstream_peer.read_exact(&mut one).await.unwrap();
        // 16 s after start, but only 8 s after the last byte: still open.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(!relay.is_finished());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(relay.await.unwrap().unwrap(), End::Idle);
    }

    #[tokio::test]
    async fn a_write_error_on_one_side_closes_both() {
        let (client, client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let (rx, tx) = (counter("rx"), counter("tx"));
        let relay = tokio::spawn(async move { relay(client, upstream, None, &rx, &tx).await });
        // The client is gone for good; the endpoint's answer cannot be delivered.
        drop(client_peer);
        upstream_peer.write_all(b"late answer").await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("relay ends once the client side fails")
            .unwrap();
        assert!(r.is_err(), "ended with {r:?}");
        // The endpoint side was closed too: it reads EOF (after the half-close) and then its
        // writes fail.
        let mut rest = Vec::new();
        upstream_peer.read_to_end(&mut rest).await.unwrap();
        assert!(upstream_peer.write_all(b"more").await.is_err());
    }
}

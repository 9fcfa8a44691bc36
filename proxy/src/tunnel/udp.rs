//! UDP on a tunnel stream: each datagram is a 2-byte big-endian length and its payload, one
//! stream per UDP session. The destination relays them to a socket connected to the pod.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::tcp::relay::Activity;

/// Largest payload a frame carries.
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Writes one datagram as a frame.
pub async fn write_datagram<W: AsyncWrite + Unpin>(w: &mut W, payload: &[u8]) -> io::Result<()> {
    let len = u16::try_from(payload.len()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("datagram of {} bytes, at most {MAX_FRAME}", payload.len()),
        )
    })?;
    let mut frame = Vec::with_capacity(2 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame).await?;
    w.flush().await
}

/// Reads one frame into `buf` (at least [`MAX_FRAME`] long): its length, or `None` at the end
/// of the stream between frames.
pub async fn read_datagram<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let mut len = [0u8; 2];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = usize::from(u16::from_be_bytes(len));
    r.read_exact(&mut buf[..n]).await?;
    Ok(Some(n))
}

/// A socket connected to `endpoint`, from an ephemeral port.
pub fn connect_udp(endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match endpoint {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(endpoint)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Relays frames of `stream` to `socket` and datagrams of `socket` back as frames, until the
/// stream ends, either side fails, or nothing moved for `idle`.
pub async fn relay_to_socket<S>(stream: S, socket: UdpSocket, idle: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let (mut r, mut w) = tokio::io::split(stream);
    let inbound = async {
        let mut buf = vec![0u8; MAX_FRAME];
        while let Ok(Some(n)) = read_datagram(&mut r, &mut buf).await {
            activity.touch();
            // A datagram the socket cannot take now is dropped, as UDP would.
            let _ = socket.send(&buf[..n]).await;
        }
    };
    let outbound = async {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let Ok(n) = socket.recv(&mut buf).await else {
                // ICMP unreachable: the pod is gone.
                return;
            };
            activity.touch();
            if write_datagram(&mut w, &buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let idle_timer = async {
        loop {
            tokio::time::sleep_until(activity.last() + idle).await;
            if activity.last() + idle <= Instant::now() {
                return;
            }
        }
    };
    tokio::select! {
        () = inbound => {}
        () = outbound => {}
        () = idle_timer => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_keep_datagram_boundaries_and_end_cleanly() {
        let (mut a, mut b) = tokio::io::duplex(256);
        let sizes = [0usize, 1, 300, MAX_FRAME];
        let writer = tokio::spawn(async move {
            for n in sizes {
                write_datagram(&mut a, &vec![n as u8; n]).await.unwrap();
            }
            assert!(write_datagram(&mut a, &vec![0; MAX_FRAME + 1])
                .await
                .is_err());
        });
        let mut buf = vec![0u8; MAX_FRAME];
        for n in sizes {
            assert_eq!(read_datagram(&mut b, &mut buf).await.unwrap(), Some(n));
            assert!(buf[..n].iter().all(|x| *x == n as u8));
        }
        writer.await.unwrap();
        assert_eq!(read_datagram(&mut b, &mut buf).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_cut_frame_is_an_error_not_a_datagram() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&[0, 10, 1, 2, 3]).await.unwrap();
        drop(a);
        let mut buf = vec![0u8; MAX_FRAME];
        assert!(read_datagram(&mut b, &mut buf).await.is_err());
    }
}

//! A TCP load generator for the load bench: connections per second (each connection sends
//! `PING`, reads `PONG` and the backend's close) and one-way throughput (connections that read
//! the backend's endless stream). Bounded in time; prints one JSON line.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backend::PONG;

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Whole connections (connect mode) that got their `PONG` and the close.
    pub connections: u64,
    /// Connections that failed anywhere along the way.
    pub errors: u64,
    /// Bytes read (stream mode).
    pub bytes: u64,
    /// How long the run lasted.
    pub seconds: f64,
}

impl Report {
    /// The report as one JSON object.
    pub fn to_json(&self, mode: &str) -> String {
        serde_json::json!({
            "mode": mode,
            "connections": self.connections,
            "errors": self.errors,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "connections_per_second": self.connections as f64 / self.seconds,
            "megabytes_per_second": self.bytes as f64 / self.seconds / 1e6,
        })
        .to_string()
    }
}

async fn one_connection(target: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect(target).await?;
    s.set_nodelay(true)?;
    s.write_all(b"PING").await?;
    let mut got = [0u8; 5];
    let mut n = 0;
    loop {
        let r = s.read(&mut got[n..]).await?;
        if r == 0 {
            break;
        }
        n += r;
        if n == got.len() {
            break;
        }
    }
    if &got[..n] != PONG {
        return Err(std::io::Error::other(format!(
            "expected PONG then close, got {:?}",
            String::from_utf8_lossy(&got[..n])
        )));
    }
    Ok(())
}

/// `concurrency` loops of connect, `PING`, `PONG`, close, against `target` for `duration`.
pub async fn connections(target: SocketAddr, concurrency: usize, duration: Duration) -> Report {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                match tokio::time::timeout_at(deadline.into(), one_connection(target)).await {
                    Ok(Ok(())) => ok += 1,
                    Ok(Err(_)) => {
                        errors += 1;
                        // A refused or reset connection returns at once: do not spin.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => break,
                }
            }
            (ok, errors)
        }));
    }
    let mut report = Report {
        connections: 0,
        errors: 0,
        bytes: 0,
        seconds: 0.0,
    };
    for t in tasks {
        let (ok, errors) = t.await.unwrap_or((0, 1));
        report.connections += ok;
        report.errors += errors;
    }
    report.seconds = start.elapsed().as_secs_f64();
    report
}

/// `concurrency` connections reading the backend's stream through `target` for `duration`.
pub async fn stream(target: SocketAddr, concurrency: usize, duration: Duration) -> Report {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        tasks.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            let run = async {
                let mut s = TcpStream::connect(target).await?;
                s.write_all(b"S").await?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = s.read(&mut buf).await?;
                    if n == 0 {
                        return Err(std::io::Error::other("stream ended early"));
                    }
                    bytes += n as u64;
                }
            };
            let failed = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(Err(_)) => 1,
                Ok(Ok(())) | Err(_) => 0,
            };
            (bytes, failed)
        }));
    }
    let mut report = Report {
        connections: concurrency as u64,
        errors: 0,
        bytes: 0,
        seconds: 0.0,
    };
    for t in tasks {
        let (bytes, failed) = t.await.unwrap_or((0, 1));
        report.bytes += bytes;
        report.errors += failed;
    }
    report.seconds = start.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::backend::serve_tcp;

    async fn backend() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve_tcp(l));
        addr
    }

    #[tokio::test]
    async fn counts_whole_connections() {
        let addr = backend().await;
        let r = connections(addr, 4, Duration::from_millis(200)).await;
        assert!(r.connections > 0, "{r:?}");
        assert_eq!(r.errors, 0, "{r:?}");
    }

    #[tokio::test]
    async fn counts_refused_connections_as_errors() {
        // A port nothing listens on: bind, note it, close.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let r = connections(addr, 2, Duration::from_millis(50)).await;
        assert_eq!(r.connections, 0);
        assert!(r.errors > 0);
    }

    #[tokio::test]
    async fn stream_reads_bytes() {
        let addr = backend().await;
        let r = stream(addr, 2, Duration::from_millis(200)).await;
        assert!(r.bytes > 64 * 1024, "{r:?}");
        assert_eq!(r.errors, 0);
    }
}

//! Test helpers for TCP through the proxy (feature `testing`): a real TCP backend that says
//! who it is, and small clients.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::testing::PATIENCE;

/// A real TCP backend on 127.0.0.1: greets each connection with `<name>\n`, echoes every byte,
/// and when the client half-closes, writes `bye <bytes received>\n` and closes. Stops when
/// dropped.
pub struct TcpBackend {
    /// Its name, the greeting line.
    pub name: String,
    /// Where it listens (ephemeral port).
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TcpBackend {
    /// Starts a backend on an ephemeral loopback port.
    pub async fn start(name: &str) -> TcpBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let greeting = format!("{name}\n");
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(serve(conn, greeting.clone()));
            }
        });
        TcpBackend {
            name: name.to_string(),
            addr,
            accepted,
            task,
        }
    }

    /// `ip:port`, as a table endpoint.
    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn serve(mut conn: TcpStream, greeting: String) {
    if conn.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0usize;
    loop {
        match conn.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                if conn.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = conn.write_all(format!("bye {total}\n").as_bytes()).await;
    let _ = conn.shutdown().await;
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts the connections.
        self.task.abort();
    }
}

/// Connects (through the proxy) and reads the greeting: the name of the backend reached.
pub async fn connect(addr: SocketAddr) -> (TcpStream, String) {
    let mut conn = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let name = read_line(&mut conn).await;
    (conn, name)
}

/// Reads up to a newline (excluded); panics on end of stream or after [`PATIENCE`].
pub async fn read_line<S: tokio::io::AsyncRead + Unpin>(conn: &mut S) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut byte))
            .await
            .expect("line in time")
            .expect("read");
        assert_eq!(n, 1, "connection closed before a full line: {line:?}");
        if byte[0] == b'\n' {
            return String::from_utf8(line).expect("utf-8 line");
        }
        line.push(byte[0]);
    }
}

/// Writes `msg` and reads as many bytes back.
pub async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut S,
    msg: &[u8],
) -> Vec<u8> {
    conn.write_all(msg).await.expect("write");
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(PATIENCE, conn.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    back
}

/// Whether the peer closed the connection (end of stream or reset) within [`PATIENCE`];
/// `false` when it sent data or kept it open.
pub async fn is_closed(conn: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

//! Test helpers for UDP through the proxy (feature `testing`): a real UDP backend that says
//! who it is, and a small client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A real UDP backend on 127.0.0.1: answers `whoami` with its name and echoes any other
/// datagram. Records how many datagrams came from each source address (for the proxy: one
/// per session socket). Stops when dropped.
pub struct UdpBackend {
    /// Its name, the answer to `whoami`.
    pub name: String,
    /// Where it listens (ephemeral port).
    pub addr: SocketAddr,
    sources: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    task: JoinHandle<()>,
}

impl UdpBackend {
    /// Starts a backend on an ephemeral loopback port.
    pub async fn start(name: &str) -> UdpBackend {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind udp 127.0.0.1:0");
        let addr = socket.local_addr().expect("local addr");
        let sources = Arc::new(Mutex::new(HashMap::new()));
        let seen = sources.clone();
        let me = name.as_bytes().to_vec();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                *seen.lock().expect("sources lock").entry(from).or_insert(0) += 1;
                let reply = if &buf[..n] == b"whoami" {
                    &me[..]
                } else {
                    &buf[..n]
                };
                let _ = socket.send_to(reply, from).await;
            }
        });
        UdpBackend {
            name: name.to_string(),
            addr,
            sources,
            task,
        }
    }

    /// `ip:port`, as a table endpoint.
    pub fn addr_str(&self) -> String {
        self.addr.to_string()
    }

    /// The distinct addresses datagrams came from.
    pub fn sources(&self) -> Vec<SocketAddr> {
        self.sources
            .lock()
            .expect("sources lock")
            .keys()
            .copied()
            .collect()
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP client on an ephemeral loopback port, connected to `target`.
pub async fn client(target: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind udp 127.0.0.1:0");
    s.connect(target).await.expect("connect udp");
    s
}

/// Sends `msg` and waits up to `wait` for one datagram back.
pub async fn ask(s: &UdpSocket, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    s.send(msg).await.expect("send");
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(wait, s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

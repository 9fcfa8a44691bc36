//! Shared by the TCP and UDP tests: a Pingora server carrying the TCP and UDP services on
//! ephemeral loopback ports, real echo backends, and metric readers.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use config_model::{ServiceSpec, Table, TableSpec, TrafficType};
use maille_proxy::tcp::{tcp_service, TcpSettings};
use maille_proxy::udp::{udp_service, UdpHandle, UdpSettings};
use maille_proxy::TableStore;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Upper bound for anything a test waits on, so that a bug fails the test instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct StopSignal(Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().unwrap().take();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

/// A running Pingora server with the TCP and UDP services; stopped when dropped.
pub struct Proxy {
    pub store: Arc<TableStore>,
    pub tcp: Vec<SocketAddr>,
    pub udp: UdpHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a server with `tcp_ports` TCP and `udp_ports` UDP mesh ports, all ephemeral.
    pub async fn start(
        tcp_ports: usize,
        udp_ports: usize,
        tcp_settings: TcpSettings,
        udp_settings: UdpSettings,
    ) -> Proxy {
        // Logs with RUST_LOG=debug, captured per test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let store = TableStore::new();
        let tcp: Vec<SocketAddr> = (0..tcp_ports)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_tcp_port())))
            .collect();
        let udp_listen = vec![SocketAddr::from(([127, 0, 0, 1], 0)); udp_ports];
        let (udp_bg, udp) = udp_service(store.clone(), udp_settings, &udp_listen).unwrap();
        let tcp_svc = tcp_service(store.clone(), tcp_settings, &tcp);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let mut server = Server::new(None).unwrap();
            server.bootstrap();
            server.add_service(tcp_svc);
            server.add_service(udp_bg);
            server.run(RunArgs {
                shutdown_signal: Box::new(StopSignal(Mutex::new(Some(stop_rx)))),
            });
        });
        // Listening once a connection is accepted; the table is still empty, so the probe
        // is closed at once.
        for addr in &tcp {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            let mut probe = loop {
                match TcpStream::connect(addr).await {
                    Ok(c) => break c,
                    Err(_) => {
                        assert!(
                            tokio::time::Instant::now() < deadline,
                            "proxy never listened on {addr}"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            // Wait for the proxy to have closed the probe, so it cannot be routed by the
            // table the test stores next.
            let mut sink = [0u8; 1];
            let _ = tokio::time::timeout(PATIENCE, probe.read(&mut sink)).await;
        }
        Proxy {
            store,
            tcp,
            udp,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Validates and stores a table, as a table source would.
    pub fn set_table(&self, spec: &TableSpec) {
        self.store
            .store(Table::try_from(spec).expect("test table is valid"));
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP or UDP service spec with endpoints of weight 1.
pub fn service(
    ns: &str,
    name: &str,
    tt: TrafficType,
    mesh_port: u16,
    endpoints: &[SocketAddr],
) -> ServiceSpec {
    let eps: Vec<String> = endpoints.iter().map(|a| a.to_string()).collect();
    let eps: Vec<&str> = eps.iter().map(|s| s.as_str()).collect();
    config_model::testing::service(ns, name, 7000, mesh_port, tt, &eps)
}

/// A real TCP backend: greets each connection with `<name>\n`, echoes everything, and when
/// the client half-closes, writes `bye <bytes received>\n` and closes.
pub struct TcpBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpBackend {
    pub async fn start(name: &str) -> TcpBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let greeting = format!("{name}\n");
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if conn.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; 8192];
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
                });
            }
        });
        TcpBackend {
            name: name.to_string(),
            addr,
            accepted,
            task,
        }
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects through the proxy and reads the greeting line: the name of the backend reached.
pub async fn tcp_connect(addr: SocketAddr) -> (TcpStream, String) {
    let mut conn = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let name = read_line(&mut conn).await;
    (conn, name)
}

/// Reads up to a newline (excluded); panics on EOF or after [`PATIENCE`].
pub async fn read_line(conn: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut byte))
            .await
            .expect("line in time")
            .expect("read");
        assert_eq!(n, 1, "connection closed before a full line: {line:?}");
        if byte[0] == b'\n' {
            return String::from_utf8(line).unwrap();
        }
        line.push(byte[0]);
    }
}

/// Writes `msg` and reads the same number of bytes back.
pub async fn tcp_echo(conn: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    conn.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(PATIENCE, conn.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    back
}

/// A real UDP backend: answers `whoami` with its name and echoes any other datagram. Records
/// the source address of every datagram (the proxy's session sockets).
pub struct UdpBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub sources: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpBackend {
    pub async fn start(name: &str) -> UdpBackend {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let sources = Arc::new(Mutex::new(HashMap::new()));
        let seen = sources.clone();
        let reply_name = name.as_bytes().to_vec();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                *seen.lock().unwrap().entry(from).or_insert(0) += 1;
                let reply = if &buf[..n] == b"whoami" {
                    &reply_name[..]
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

    pub fn source_addrs(&self) -> Vec<SocketAddr> {
        self.sources.lock().unwrap().keys().copied().collect()
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP client on loopback, connected to a mesh port.
pub async fn udp_client(mesh: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(mesh).await.unwrap();
    s
}

/// Sends `msg` and waits for one reply; `None` after `wait`.
pub async fn udp_ask(s: &UdpSocket, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    s.send(msg).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    match tokio::time::timeout(wait, s.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// The value of a metric sample in the default registry's text exposition (what `/metrics`
/// serves) whose labels include `labels`; 0 when absent.
pub fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some(x) => x,
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let have: Vec<&str> = label_part.split(',').collect();
        if wanted.iter().all(|w| have.contains(&w.as_str())) {
            return value.trim().parse().unwrap();
        }
    }
    0.0
}

/// Waits until `cond` holds, up to [`PATIENCE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

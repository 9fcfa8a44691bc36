//! A mesh CA for tests (feature `testing`): node certificates shaped as the controller signs
//! them (one SPIFFE ID, the node as DNS name), held by an [`Identity`] without a controller.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::identity::{unix_now, Held, Identity};

/// A certificate authority of one trust domain.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// Its trust domain.
    pub trust_domain: String,
}

impl TestCa {
    /// A new root for `trust_domain`.
    pub fn new(trust_domain: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, trust_domain);
        TestCa {
            cert: p.self_signed(&key).expect("root"),
            key,
            trust_domain: trust_domain.to_string(),
        }
    }

    /// The root, DER.
    pub fn root(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A certificate for the proxy of `node`, valid for `secs` from now.
    pub fn held(&self, node: &str, secs: i64) -> Held {
        let key = rcgen::KeyPair::generate().expect("key");
        let spiffe_id = format!("spiffe://{}/ns/maille/sa/maille-proxy", self.trust_domain);
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, node);
        p.subject_alt_names = vec![
            rcgen::SanType::URI(rcgen::Ia5String::try_from(spiffe_id.clone()).expect("uri")),
            rcgen::SanType::DnsName(rcgen::Ia5String::try_from(node.to_string()).expect("dns")),
        ];
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::seconds(60);
        p.not_after = now + time::Duration::seconds(secs);
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf");
        Held {
            spiffe_id,
            node: node.to_string(),
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            trust_bundle: vec![self.root()],
            not_before: unix_now() - 60,
            not_after: unix_now() + secs,
            received: unix_now(),
        }
    }

    /// The identity of the proxy of `node`, holding a certificate valid for an hour (it never
    /// asks a controller: its token file and URL lead nowhere).
    pub fn identity(&self, node: &str) -> Arc<Identity> {
        let id = Identity::new(
            node,
            PathBuf::from("/nonexistent/maille-test-token"),
            "http://127.0.0.1:1",
        )
        .expect("identity");
        id.hold(self.held(node, 3600));
        id
    }
}

/// A TCP relay that records every byte crossing it and counts its connections: put between
/// two proxies, it shows what an observer of the network between nodes sees.
pub struct CaptureRelay {
    /// Where to connect instead of the target.
    pub addr: std::net::SocketAddr,
    captured: Arc<parking_lot::Mutex<Vec<u8>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    /// The copy tasks of its connections, to cut them.
    copies: Arc<parking_lot::Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CaptureRelay {
    /// Listens on `listen` (port 0) and relays each connection to `target`.
    pub async fn start(listen: &str, target: std::net::SocketAddr) -> CaptureRelay {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let captured = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (cap, conns) = (captured.clone(), connections.clone());
        let copies: Arc<parking_lot::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let tasks = copies.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let Ok(upstream) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let (c1, c2) = (cap.clone(), cap.clone());
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        c1.lock().extend_from_slice(&buf[..n]);
                    }
                    let _ = uw.shutdown().await;
                });
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = ur.read(&mut buf).await {
                        if n == 0 || cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        c2.lock().extend_from_slice(&buf[..n]);
                    }
                    let _ = cw.shutdown().await;
                });
                let mut tasks = tasks.lock();
                tasks.retain(|t| !t.is_finished());
                tasks.extend([up.abort_handle(), down.abort_handle()]);
            }
        });
        CaptureRelay {
            addr,
            captured,
            connections,
            copies,
            task,
        }
    }

    /// Every byte seen so far, both ways.
    pub fn captured(&self) -> Vec<u8> {
        self.captured.lock().clone()
    }

    /// Whether `needle` crossed the relay in the clear.
    pub fn saw(&self, needle: &[u8]) -> bool {
        self.captured
            .lock()
            .windows(needle.len())
            .any(|w| w == needle)
    }

    /// Closes every connection it relays now (a session broken by the network); it goes on
    /// accepting new ones.
    pub fn cut(&self) {
        for t in self.copies.lock().drain(..) {
            t.abort();
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CaptureRelay {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Clients with the address of a pod: loopback addresses stand for pods of the nodes.
pub mod pod {
    use std::net::{IpAddr, SocketAddr};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use crate::testing::PATIENCE;

    /// GET `/` with Host `host` from address `from` to `to`: status and body.
    pub async fn get(to: SocketAddr, from: IpAddr, host: &str) -> anyhow::Result<(u16, String)> {
        get_path(to, from, host, "/").await
    }

    /// GET `path` with Host `host` from address `from` to `to` (a new client connection):
    /// status and body.
    pub async fn get_path(
        to: SocketAddr,
        from: IpAddr,
        host: &str,
        path: &str,
    ) -> anyhow::Result<(u16, String)> {
        request(to, from, host, http::Method::GET, path, Bytes::new()).await
    }

    /// POST `body` to `path`, otherwise as [`get_path`].
    pub async fn post_path(
        to: SocketAddr,
        from: IpAddr,
        host: &str,
        path: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, String)> {
        request(to, from, host, http::Method::POST, path, body.into()).await
    }

    async fn request(
        to: SocketAddr,
        from: IpAddr,
        host: &str,
        method: http::Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, String)> {
        let mut conn = HttpConnector::new();
        conn.set_local_address(Some(from));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(format!("http://{to}{path}"))
            .header(http::header::HOST, host)
            .body(Full::new(body))?;
        let resp = tokio::time::timeout(PATIENCE, client.request(req)).await??;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// A TCP connection to `to` from address `from`.
    pub async fn tcp(to: SocketAddr, from: IpAddr) -> std::io::Result<tokio::net::TcpStream> {
        let s = match from {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        s.bind(SocketAddr::new(from, 0))?;
        tokio::time::timeout(PATIENCE, s.connect(to)).await?
    }

    /// A UDP socket of address `from`, connected to `to`.
    pub async fn udp(to: SocketAddr, from: IpAddr) -> std::io::Result<tokio::net::UdpSocket> {
        let s = tokio::net::UdpSocket::bind(SocketAddr::new(from, 0)).await?;
        s.connect(to).await?;
        Ok(s)
    }

    /// Sends `msg` and waits up to `wait` for one datagram back.
    pub async fn ask(s: &tokio::net::UdpSocket, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
        s.send(msg).await.ok()?;
        let mut buf = vec![0u8; 65536];
        match tokio::time::timeout(wait, s.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }
}

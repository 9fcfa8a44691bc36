//! The tunnel listener (`--tunnel-port`, default 15008 on `--listen-ip`): accepts only mutual
//! TLS 1.3 with a client certificate of this mesh (chaining to the trust bundle held, valid
//! now, its single SPIFFE ID in this proxy's trust domain) and refuses everything else during
//! the handshake, counted by reason and logged once a minute per source address. An accepted
//! session carries HTTP/2 `CONNECT` streams from the peer proxy ([`crate::tunnel::server`]),
//! the peer's node name taken from its certificate. See docs/security.md, "The tunnel".

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use prometheus::IntCounterVec;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::Semaphore;

use super::{Held, Identity};

/// Time a client has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; a connection beyond is closed at accept.
pub const MAX_HANDSHAKES: usize = 1024;
/// A refusal from one source address is logged at most once per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The `result` label values of `maille_proxy_tunnel_handshakes_total`.
pub const RESULTS: [&str; 10] = [
    "ok",
    "no_client_certificate",
    "unknown_ca",
    "expired",
    "foreign_trust_domain",
    "bad_certificate",
    "not_tls",
    "timeout",
    "no_identity",
    "overload",
];

/// `maille_proxy_tunnel_handshakes_total`, in the proxy's one set of metrics.
fn handshakes() -> &'static IntCounterVec {
    &crate::metrics::register().tunnel_handshakes
}

/// The SPIFFE IDs (URI SANs starting `spiffe://`) of a DER certificate.
pub fn spiffe_ids(cert: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                        Some(u.to_string())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The trust domain of a SPIFFE ID.
pub fn trust_domain(spiffe_id: &str) -> Option<&str> {
    spiffe_id
        .strip_prefix("spiffe://")?
        .split('/')
        .next()
        .filter(|d| !d.is_empty())
}

/// The web PKI checks of the trust bundle, then: exactly one SPIFFE ID, in `trust_domain`.
#[derive(Debug)]
struct MeshClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        in_trust_domain(end_entity, &self.trust_domain)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The server configuration for the certificate held: its chain and key, clients verified
/// against its trust bundle and trust domain, TLS 1.3 only, ALPN `h2`.
pub fn server_config(held: &Held) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (roots, td) = trust(held)?;
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let verifier = Arc::new(MeshClientVerifier {
        inner,
        trust_domain: td,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            held.chain.clone(),
            PrivateKeyDer::Pkcs8(held.key.clone_key()),
        )
        .map_err(|e| format!("certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The roots of the held trust bundle and the trust domain of the held identity: what both
/// sides of the tunnel verify the peer against.
fn trust(held: &Held) -> Result<(rustls::RootCertStore, String), String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in &held.trust_bundle {
        roots
            .add(c.clone())
            .map_err(|e| format!("trust bundle: {e}"))?;
    }
    let td = trust_domain(&held.spiffe_id)
        .ok_or_else(|| format!("{} is not a SPIFFE ID", held.spiffe_id))?
        .to_string();
    Ok((roots, td))
}

/// A peer certificate the chain check accepted must also carry exactly one SPIFFE ID, of our
/// trust domain.
fn in_trust_domain(end_entity: &CertificateDer<'_>, td: &str) -> Result<(), rustls::Error> {
    match spiffe_ids(end_entity).as_slice() {
        [one] if trust_domain(one) == Some(td) => Ok(()),
        _ => Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        )),
    }
}

/// The node a mesh certificate is for: its DNS name (the controller writes the node name as
/// the one DNS SAN), if it has exactly one.
pub fn node_name(cert: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let san = cert.subject_alternative_name().ok().flatten()?;
    let mut names = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
        _ => None,
    });
    let one = names.next()?;
    names.next().is_none().then_some(one)
}

/// The web PKI checks of the trust bundle and the node name asked for, then: exactly one
/// SPIFFE ID, in `trust_domain`.
#[derive(Debug)]
struct MeshServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    trust_domain: String,
}

impl rustls::client::danger::ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        in_trust_domain(end_entity, &self.trust_domain)?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client configuration for the certificate held: its chain and key presented, the peer
/// proxy verified against its trust bundle, the node name dialled (the `ServerName` of each
/// connection) and the trust domain; TLS 1.3 only, ALPN `h2`.
pub fn client_config(held: &Held) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (roots, td) = trust(held)?;
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("server verifier: {e}"))?;
    let verifier = Arc::new(MeshServerVerifier {
        inner,
        trust_domain: td,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(
            held.chain.clone(),
            PrivateKeyDer::Pkcs8(held.key.clone_key()),
        )
        .map_err(|e| format!("certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Why a handshake failed, as a `result` label.
fn classify(e: &std::io::Error) -> &'static str {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "not_tls";
    };
    match tls {
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::InvalidCertificate(c) => match c {
            // Not signed by a root of the bundle (a forger may copy the root's name: then the
            // signature is what fails).
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::ApplicationVerificationFailure => "foreign_trust_domain",
            _ => "bad_certificate",
        },
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => "not_tls",
        _ => "bad_certificate",
    }
}

/// The tunnel listener of one proxy.
pub struct Tunnel {
    identity: Arc<Identity>,
    listener: Mutex<Option<std::net::TcpListener>>,
    addr: SocketAddr,
    /// The configuration for the certificate held, remade when it is renewed.
    config: Mutex<Option<(Arc<Held>, Arc<rustls::ServerConfig>)>>,
    handshakes: Arc<Semaphore>,
    logged: Mutex<HashMap<IpAddr, Instant>>,
    /// What serves accepted sessions; without it a session is closed after the handshake.
    forward: Option<crate::tunnel::server::Forward>,
}

impl Tunnel {
    /// Binds `addr` now (`SO_REUSEPORT`, so that a new process can bind it during an upgrade:
    /// the tunnel socket is not handed over).
    pub fn bind(identity: Arc<Identity>, addr: SocketAddr) -> std::io::Result<Arc<Tunnel>> {
        Self::bind_with(identity, addr, None)
    }

    /// Same, serving the streams of accepted sessions with `forward`.
    pub fn bind_with(
        identity: Arc<Identity>,
        addr: SocketAddr,
        forward: Option<crate::tunnel::server::Forward>,
    ) -> std::io::Result<Arc<Tunnel>> {
        crate::metrics::register();
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr()?;
        Ok(Arc::new(Tunnel {
            identity,
            listener: Mutex::new(Some(listener)),
            addr,
            config: Mutex::new(None),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            logged: Mutex::new(HashMap::new()),
            forward,
        }))
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server configuration for the certificate held now, if any.
    fn current_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        let held = self.identity.current()?;
        let mut cached = self.config.lock().expect("tunnel config lock");
        if let Some((h, c)) = &*cached {
            if Arc::ptr_eq(h, &held) {
                return Some(c.clone());
            }
        }
        match server_config(&held) {
            Ok(c) => {
                let c = Arc::new(c);
                *cached = Some((held, c.clone()));
                Some(c)
            }
            Err(e) => {
                tracing::error!(error = %e, "Tunnel: the certificate held cannot serve TLS");
                None
            }
        }
    }

    fn refused(&self, peer: SocketAddr, result: &'static str, detail: &str) {
        handshakes().with_label_values(&[result]).inc();
        let now = Instant::now();
        let mut logged = self.logged.lock().expect("tunnel log lock");
        if logged.len() > 4096 {
            logged.retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
        }
        let due = logged
            .get(&peer.ip())
            .is_none_or(|at| now.duration_since(*at) >= REFUSAL_LOG_INTERVAL);
        if due {
            logged.insert(peer.ip(), now);
            tracing::warn!(peer = %peer, reason = result, detail, "Tunnel connection refused (logged once a minute per source)");
        }
    }

    async fn handle(
        self: Arc<Self>,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        shutdown: ShutdownWatch,
    ) {
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            self.refused(peer, "overload", "too many handshakes in progress");
            return;
        };
        let Some(config) = self.current_config() else {
            self.refused(
                peer,
                "no_identity",
                "this proxy holds no mesh certificate yet",
            );
            return;
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Err(_) => self.refused(peer, "timeout", "no complete handshake in time"),
            Ok(Err(e)) => self.refused(peer, classify(&e), &e.to_string()),
            Ok(Ok(mut tls)) => {
                drop(permit);
                let (_, session) = tls.get_ref();
                let leaf = session.peer_certificates().and_then(|c| c.first());
                let peer_id = leaf.map(|c| spiffe_ids(c).join(",")).unwrap_or_default();
                // The node the peer speaks for is the one its certificate names, never a
                // claim of its own.
                let Some(node) = leaf.and_then(|c| node_name(c)) else {
                    self.refused(
                        peer,
                        "bad_certificate",
                        "the certificate names no single node",
                    );
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.shutdown().await;
                    return;
                };
                handshakes().with_label_values(&["ok"]).inc();
                match &self.forward {
                    Some(forward) => {
                        tracing::debug!(%peer, peer_identity = %peer_id, %node, "Tunnel session accepted");
                        crate::tunnel::server::serve(
                            tls,
                            Arc::from(node.as_str()),
                            peer,
                            forward.clone(),
                            shutdown,
                        )
                        .await;
                    }
                    None => {
                        tracing::debug!(%peer, peer_identity = %peer_id, %node, "Tunnel session accepted (no forwarding: closing)");
                        use tokio::io::AsyncWriteExt;
                        let _ = tls.shutdown().await;
                    }
                }
            }
        }
    }

    /// Accepts until `shutdown`.
    pub async fn run(self: Arc<Self>, mut shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().expect("listener lock").take() else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, addr = %self.addr, "Tunnel listener cannot start");
                return;
            }
        };
        tracing::info!(addr = %self.addr, "Tunnel listening (mutual TLS, mesh certificates only)");
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        tokio::spawn(self.clone().handle(tcp, peer, shutdown.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Tunnel accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Runs [`Tunnel::run`] as a Pingora background service.
pub struct TunnelService(pub Arc<Tunnel>);

#[async_trait]
impl BackgroundService for TunnelService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.clone().run(shutdown).await
    }
}

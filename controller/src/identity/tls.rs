//! The identity API's own TLS listener (`--identity-listen`): a server certificate the mesh CA
//! signs for the controller's names (its Service DNS names; locally the listen address),
//! renewed at half its life and whenever the CA changes, and the HTTP/1.1 server behind it,
//! bounded in connections, in handshake time and in connection time. Certificate requests and
//! the trust bundle are served here only: a proxy's token never crosses the network in
//! cleartext, and the bundle it gets comes over a channel it verified against a root it was
//! given out of band.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use rcgen::SanType;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{metrics, Service};

/// Default port of `--identity-listen` on a cluster (the chart's `identity.port`).
pub const DEFAULT_PORT: u16 = 9443;
/// File of `--identity-dir` where a local controller writes the identity server's URL.
pub const URL_FILE: &str = "identity-url";
/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a request head may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest life of one connection (a proxy sends one request on it).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections open at once; one beyond is closed at accept.
pub const MAX_CONNECTIONS: usize = 1024;
/// Shortest wait between two server certificate renewals (and retry delay after a failure).
pub const MIN_RENEW: Duration = Duration::from_secs(1);

/// Why the identity server's certificate cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name of `--identity-server-names` is not a DNS name or IP address.
    #[error("--identity-server-names: invalid value {value:?}: {reason}")]
    Name {
        /// The name, cut.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// Signing or key handling failed.
    #[error("identity server certificate: {0}")]
    Certificate(String),
}

/// The names the server certificate carries: IP addresses and DNS names.
pub fn san_list(names: &[String]) -> Result<Vec<SanType>, Error> {
    let mut out: Vec<SanType> = Vec::new();
    for raw in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let san = match raw.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                if !super::valid_node_name(raw) && raw != "localhost" {
                    return Err(Error::Name {
                        value: config_model::cut::cut(raw).to_string(),
                        reason: "expected a DNS name (lowercase letters, digits, '-' and '.') or an IP address".into(),
                    });
                }
                SanType::DnsName(rcgen::Ia5String::try_from(raw.to_string()).map_err(|e| {
                    Error::Name {
                        value: raw.to_string(),
                        reason: e.to_string(),
                    }
                })?)
            }
        };
        if !out.contains(&san) {
            out.push(san);
        }
    }
    if out.is_empty() {
        return Err(Error::Name {
            value: String::new(),
            reason: "no name: the server certificate needs at least one".into(),
        });
    }
    Ok(out)
}

/// The server certificate currently presented, swapped whole on renewal.
#[derive(Debug)]
pub struct ServerCert {
    names: Vec<SanType>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    not_after: RwLock<Option<i64>>,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().expect("server cert lock").clone()
    }
}

impl ServerCert {
    /// A certificate for `names`, none made yet.
    pub fn new(names: Vec<SanType>) -> Arc<ServerCert> {
        Arc::new(ServerCert {
            names,
            current: RwLock::new(None),
            not_after: RwLock::new(None),
        })
    }

    /// When the certificate presented ends, Unix seconds.
    pub fn not_after(&self) -> Option<i64> {
        *self.not_after.read().expect("server cert lock")
    }

    /// Signs a new certificate (a new key) with `service`'s CA and presents it from now on;
    /// returns its end, Unix seconds.
    pub fn renew(&self, service: &Service) -> Result<i64, Error> {
        let ca = service
            .ca()
            .ok_or_else(|| Error::Certificate("the mesh CA is not loaded yet".into()))?;
        let key = rcgen::KeyPair::generate().map_err(|e| Error::Certificate(e.to_string()))?;
        let signed = ca
            .sign_server(&key, &self.names, service.config().lifetime)
            .map_err(|e| Error::Certificate(e.to_string()))?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(signed.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Certificate(format!("chain: {e}")))?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| Error::Certificate(format!("key: {e}")))?;
        *self.current.write().expect("server cert lock") =
            Some(Arc::new(CertifiedKey::new(chain, signing)));
        *self.not_after.write().expect("server cert lock") = Some(signed.not_after);
        metrics::register().server_expiry.set(signed.not_after);
        tracing::info!(serial = %signed.serial, not_after = signed.not_after, "Identity server certificate issued");
        Ok(signed.not_after)
    }
}

/// Keeps `cert` current once `service` has a CA: the first one at once, each next one at
/// half the life of the last or at once when the CA changes (so the listener always chains to
/// the CA signing now), retrying failures every [`MIN_RENEW`] (doubling to a minute).
pub async fn keep_renewed(
    service: Arc<Service>,
    cert: Arc<ServerCert>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = service.wait_installed() => {}
        _ = shutdown.cancelled() => return,
    }
    let mut cas = service.subscribe_ca();
    let mut retry = MIN_RENEW;
    loop {
        // Seen before signing: a CA that changes while this one signs gives another renewal.
        cas.borrow_and_update();
        let wait = match cert.renew(&service) {
            Ok(not_after) => {
                retry = MIN_RENEW;
                let left = (not_after - super::unix_now()).max(0) as u64;
                Duration::from_millis(left * 500).max(MIN_RENEW)
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?retry, "Identity server certificate not renewed; the one held stays");
                let r = retry;
                retry = (retry * 2).min(Duration::from_secs(60));
                r
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = cas.changed() => {
                if r.is_err() {
                    return;
                }
                retry = MIN_RENEW;
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The TLS configuration of the identity listener: the certificate `cert` holds, no client
/// certificate (a proxy has none before its first), HTTP/1.1.
pub fn server_config(cert: Arc<ServerCert>) -> rustls::ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// Serves `app` over TLS on `listener` until `shutdown`. Each connection has
/// [`HANDSHAKE_TIMEOUT`] to finish its handshake, [`HEADER_TIMEOUT`] per request head and
/// [`CONNECTION_TIMEOUT`] in all; at most [`MAX_CONNECTIONS`] are open at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: rustls::ServerConfig,
    app: Router,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "Identity listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::register()
                .tls_refused
                .with_label_values(&["overload"])
                .inc();
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = async {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        metrics::register()
                            .tls_refused
                            .with_label_values(&["handshake"])
                            .inc();
                        tracing::debug!(%peer, error = %e, "Identity listener: TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics::register()
                            .tls_refused
                            .with_label_values(&["timeout"])
                            .inc();
                        return;
                    }
                };
                let svc = hyper_util::service::TowerToHyperService::new(
                    app.layer(Extension(ConnectInfo(peer))),
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(64 * 1024)
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            };
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// The `https://` URL a local proxy uses to reach a listener bound to `addr` (loopback when it
/// listens on every address).
pub fn local_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => IpAddr::from([127, 0, 0, 1]),
            SocketAddr::V6(_) => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        addr.ip()
    };
    format!("https://{}", SocketAddr::new(ip, addr.port()))
}

/// Writes `url` to `DIR/identity-url` (through a temporary file, so a reader never sees half).
pub fn write_url_file(dir: &Path, url: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{URL_FILE}.tmp"));
    std::fs::write(&tmp, format!("{url}\n"))?;
    std::fs::rename(&tmp, dir.join(URL_FILE))
}

/// Testing: an HTTPS request to the identity listener, trusting `roots` (PEM) and asking for
/// `server_name`; the status and body. Each call opens its own connection.
#[cfg(any(test, feature = "testing"))]
pub async fn request(
    addr: SocketAddr,
    server_name: &str,
    roots_pem: &str,
    req: http::Request<String>,
) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

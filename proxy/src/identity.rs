//! The node proxy's mesh identity (`--node-name`, `--identity-token-file`): a private key made
//! here and never sent anywhere, a certificate the controller signs for it
//! (`POST /api/identity/certificate` on the controller's TLS identity listener, authenticated
//! by the token), renewed with a fresh key at about half its lifetime, kept while the
//! controller is away, and reported loudly (log, metric, `/ready` detail) when it nears its end
//! without a renewal. The identity server is verified against roots pinned out of band
//! (`--identity-ca-file`: the trust ConfigMap the chart mounts, or `ca.crt` of the local
//! identity folder) before the token is sent; a server that does not verify gets nothing, and
//! the trust bundle the tunnel uses comes only over that verified channel. See
//! docs/security.md, "Identity".

pub mod claim;
pub mod tunnel;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// Largest token file read (a ServiceAccount token is about 1 KiB).
pub const MAX_TOKEN_BYTES: u64 = 8 * 1024;
/// Largest controller answer read.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// Largest trust anchor file read (PEM roots; a root is about 1 KiB).
pub const MAX_ANCHOR_BYTES: u64 = 256 * 1024;
/// Largest `identity-url` file read.
pub const MAX_URL_FILE_BYTES: u64 = 4 * 1024;
/// Time allowed to connect to the identity server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Local mode: the file next to the token holding the identity server's URL (the controller
/// writes it), used without `--identity-url`.
pub const URL_FILE: &str = "identity-url";
/// Local mode: the file next to the token holding the mesh roots, used without
/// `--identity-ca-file`.
pub const ANCHOR_FILE: &str = "ca.crt";
/// Time allowed for one certificate request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed request; doubles up to [`RETRY_MAX`].
pub const RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay (shorter for short lifetimes: at most an eighth of it).
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a certificate request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value is wrong.
    #[error("{flag} {value:?}: {reason}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The token file cannot be read, or is empty or too large.
    #[error("--identity-token-file {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The pinned roots cannot be read or hold no certificate.
    #[error("trust anchor {path}: {reason}")]
    Anchor {
        /// The file (`--identity-ca-file`).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The identity server's certificate does not verify against the pinned roots: nothing
    /// was sent to it.
    #[error("identity server {uri}: its TLS certificate does not verify against the trust anchor {anchor}: {reason}; the token was not sent")]
    Untrusted {
        /// The server's URL.
        uri: String,
        /// The anchor file.
        anchor: String,
        /// The verification failure.
        reason: String,
    },
    /// No controller answered.
    #[error("POST {uri}: {reason}")]
    Unreachable {
        /// The request URI.
        uri: String,
        /// What went wrong.
        reason: String,
    },
    /// The controller refused the request.
    #[error("POST {uri}: refused with {status}: {reason}")]
    Refused {
        /// The request URI.
        uri: String,
        /// The status.
        status: u16,
        /// The controller's reason.
        reason: String,
    },
    /// The answer cannot be used.
    #[error("POST {uri}: unusable answer: {reason}")]
    Invalid {
        /// The request URI.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// The `reason` label of `maille_proxy_identity_renewal_failures_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Flag { .. } | Error::Token { .. } => "token",
            Error::Unreachable { .. } => "unreachable",
            Error::Untrusted { .. } => "untrusted",
            Error::Anchor { .. } => "trust_anchor",
            Error::Refused { .. } => "refused",
            Error::Invalid { .. } => "invalid",
        }
    }
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The certificate held, with its key and the trust bundle that came with it.
pub struct Held {
    /// `spiffe://...`.
    pub spiffe_id: String,
    /// The node, as the certificate says.
    pub node: String,
    /// The certificate, then any intermediate.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key made here, PKCS#8.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// The roots of the mesh.
    pub trust_bundle: Vec<CertificateDer<'static>>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// When the proxy received it, Unix seconds (its life is counted from here: `not_before`
    /// is set a little in the past for clocks behind).
    pub received: i64,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("spiffe_id", &self.spiffe_id)
            .field("node", &self.node)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Held {
    /// Seconds from its receipt to its end.
    pub fn life(&self) -> i64 {
        (self.not_after - self.received).max(1)
    }

    /// When to renew: half-way through its life.
    pub fn renew_at(&self) -> i64 {
        self.received + self.life() / 2
    }

    /// From when a missing renewal is a warning: the last quarter of its life.
    pub fn warn_from(&self) -> i64 {
        self.not_after - self.life() / 4
    }
}

/// What the controller answers (`maille-controller`'s `CertificateResponse`).
#[derive(Debug, serde::Deserialize)]
struct Answer {
    spiffe_id: String,
    node: String,
    certificate_chain: String,
    trust_bundle: String,
}

/// Why the last request failed, and since when requests have failed.
#[derive(Debug, Default)]
struct Failing {
    since: Option<i64>,
    last: Option<String>,
}

/// The proxy's identity: the certificate held (swapped whole on renewal) and how to renew it.
pub struct Identity {
    node: String,
    token_file: PathBuf,
    /// `--identity-url` as given (comma-separated); empty: read `identity-url` next to the
    /// token at each request.
    urls: String,
    /// `--identity-ca-file`, else `ca.crt` next to the token.
    anchor_file: PathBuf,
    current: ArcSwapOption<Held>,
    failing: Mutex<Failing>,
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The certificate endpoints of `urls` (comma-separated `https://host[:port]` base URLs);
/// `origin` names where they came from in errors. Plain `http://` is refused: a token must
/// never cross the network in cleartext.
pub fn parse_urls(urls: &str, origin: &'static str) -> Result<Vec<Uri>> {
    let bad = |reason: String| Error::Flag {
        flag: origin,
        value: config_model::cut::cut(urls).to_string(),
        reason,
    };
    let mut out = Vec::new();
    for one in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let uri: Uri = format!("{}/api/identity/certificate", one.trim_end_matches('/'))
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        if uri.scheme_str() != Some("https") || uri.host().is_none() {
            return Err(bad(format!(
                "{:?} is not an https:// URL (certificate requests go over TLS only)",
                config_model::cut::cut(one)
            )));
        }
        out.push(uri);
    }
    if out.is_empty() {
        return Err(bad("no URL given".into()));
    }
    Ok(out)
}

/// Reads at most `max` bytes of `path` as text; more is an error.
fn read_bounded(path: &std::path::Path, max: u64) -> std::result::Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    file.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > max {
        return Err(format!("longer than {max} bytes"));
    }
    Ok(text)
}

/// The identity server's certificate must chain to the pinned roots and name the host
/// dialled (web PKI), and must not carry a SPIFFE ID: node certificates all do, so a node
/// (whose name might be one the controller answers to) cannot pass for the identity server.
#[derive(Debug)]
struct IdentityServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for IdentityServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if !tunnel::spiffe_ids(end_entity).is_empty() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Words for a failed verification of the identity server.
fn describe_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let why = match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "not signed by a root of the anchor (another CA, or the anchor is out of date)"
        }
        rustls::Error::InvalidCertificate(
            C::NotValidForName | C::NotValidForNameContext { .. },
        ) => "it does not name the host of the URL",
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => "it expired",
        rustls::Error::InvalidCertificate(C::ApplicationVerificationFailure) => {
            "it carries a SPIFFE ID: a node certificate, not the controller's identity server"
        }
        _ => "",
    };
    if why.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {why}")
    }
}

impl Identity {
    /// The identity of the proxy on `node`, asking the identity server(s) of `identity_url`
    /// (`https://`, comma-separated; empty: the `identity-url` file next to `token_file`) with
    /// the token in `token_file`, verifying them against `ca.crt` next to the token. Holds
    /// nothing until [`Self::renew`] succeeds. URLs and roots are read at each request.
    pub fn new(node: &str, token_file: PathBuf, identity_url: &str) -> Result<Arc<Identity>> {
        Identity::with_anchor(node, token_file, identity_url, None)
    }

    /// [`Self::new`], verifying the identity server against the roots of `anchor_file`
    /// (`--identity-ca-file`) when given.
    pub fn with_anchor(
        node: &str,
        token_file: PathBuf,
        identity_url: &str,
        anchor_file: Option<PathBuf>,
    ) -> Result<Arc<Identity>> {
        crate::metrics::register();
        if node.trim().is_empty() {
            return Err(Error::Flag {
                flag: "--node-name",
                value: node.to_string(),
                reason: "empty".into(),
            });
        }
        let dir = token_file
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default();
        Ok(Arc::new(Identity {
            node: node.to_string(),
            anchor_file: anchor_file.unwrap_or_else(|| dir.join(ANCHOR_FILE)),
            token_file,
            urls: identity_url.trim().to_string(),
            current: ArcSwapOption::empty(),
            failing: Mutex::new(Failing::default()),
        }))
    }

    /// The pinned roots' file.
    pub fn anchor_file(&self) -> &std::path::Path {
        &self.anchor_file
    }

    /// The certificate endpoints to ask, in turn: `--identity-url`, else the URL the local
    /// controller wrote next to the token.
    fn endpoints(&self) -> Result<Vec<Uri>> {
        if !self.urls.is_empty() {
            return parse_urls(&self.urls, "--identity-url");
        }
        let file = self
            .token_file
            .parent()
            .map(|d| d.join(URL_FILE))
            .unwrap_or_else(|| PathBuf::from(URL_FILE));
        let text = read_bounded(&file, MAX_URL_FILE_BYTES).map_err(|reason| Error::Flag {
            flag: "--identity-url",
            value: String::new(),
            reason: format!(
                "not given, and {} (written by a local controller) cannot be read: {reason}",
                file.display()
            ),
        })?;
        parse_urls(text.trim(), "--identity-url (from the identity folder)")
    }

    /// The TLS client configuration verifying the identity server against the pinned roots.
    fn tls_config(&self) -> Result<(rustls::ClientConfig, String)> {
        let err = |reason: String| Error::Anchor {
            path: self.anchor_file.clone(),
            reason,
        };
        let text = read_bounded(&self.anchor_file, MAX_ANCHOR_BYTES).map_err(err)?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(text.as_bytes()) {
            let c = c.map_err(|e| err(format!("not PEM certificates: {e}")))?;
            roots
                .add(c)
                .map_err(|e| err(format!("a certificate cannot be a root: {e}")))?;
        }
        if roots.is_empty() {
            return Err(err("no certificate in it".into()));
        }
        let described = format!(
            "{} ({} root{})",
            self.anchor_file.display(),
            roots.len(),
            if roots.len() == 1 { "" } else { "s" }
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| err(e.to_string()))?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IdentityServerVerifier { inner }))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok((config, described))
    }

    /// The certificate held, if any (it may have expired: see [`Held::not_after`]).
    pub fn current(&self) -> Option<Arc<Held>> {
        self.current.load_full()
    }

    /// Holds `held` as if the controller had just sent it (tests: no controller needed).
    #[cfg(any(test, feature = "testing"))]
    pub fn hold(&self, held: Held) {
        self.current.store(Some(Arc::new(held)));
    }

    /// The node name this proxy claims.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn read_token(&self) -> Result<String> {
        let text =
            read_bounded(&self.token_file, MAX_TOKEN_BYTES).map_err(|reason| Error::Token {
                path: self.token_file.clone(),
                reason,
            })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(Error::Token {
                path: self.token_file.clone(),
                reason: "empty".into(),
            });
        }
        Ok(token.to_string())
    }

    /// Asks for a certificate with a new key (each URL in turn until one answers) and holds
    /// it. On failure the certificate held stays.
    pub async fn renew(&self) -> Result<Arc<Held>> {
        let result = self.request().await;
        let m = crate::metrics::register();
        match &result {
            Ok(held) => {
                let kind = if self.current.load().is_some() {
                    "renewal"
                } else {
                    "first"
                };
                m.identity_certificates.with_label_values(&[kind]).inc();
                m.identity_expiry.set(held.not_after);
                self.current.store(Some(held.clone()));
                *self.failing.lock().expect("failing lock") = Failing::default();
            }
            Err(e) => {
                m.identity_failures.with_label_values(&[e.label()]).inc();
                let mut f = self.failing.lock().expect("failing lock");
                f.since.get_or_insert_with(unix_now);
                f.last = Some(e.to_string());
            }
        }
        result
    }

    async fn request(&self) -> Result<Arc<Held>> {
        let token = self.read_token()?;
        let uris = self.endpoints()?;
        let (tls, anchor) = self.tls_config()?;
        let tls = Arc::new(tls);
        let key = rcgen::KeyPair::generate().map_err(|e| Error::Invalid {
            uri: String::new(),
            reason: format!("making a key: {e}"),
        })?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, self.node.as_str());
        let csr = params
            .serialize_request(&key)
            .and_then(|c| c.pem())
            .map_err(|e| Error::Invalid {
                uri: String::new(),
                reason: format!("making the certificate request: {e}"),
            })?;
        let body = serde_json::to_vec(&serde_json::json!({"node": self.node, "csr": csr}))
            .expect("request serialises");
        let mut last = None;
        for uri in &uris {
            match self.post(uri, &tls, &anchor, &token, body.clone()).await {
                Ok(answer) => return self.accept(uri, answer, key).map(Arc::new),
                // A refusal is the controller's answer: another replica would say the same.
                Err(e @ Error::Refused { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one URL"))
    }

    /// One request on a new TLS connection to `uri`'s server, verified with `tls` before the
    /// token is sent.
    async fn post(
        &self,
        uri: &Uri,
        tls: &Arc<rustls::ClientConfig>,
        anchor: &str,
        token: &str,
        body: Vec<u8>,
    ) -> Result<Answer> {
        let unreachable = |reason: String| Error::Unreachable {
            uri: uri.to_string(),
            reason,
        };
        let host = uri.host().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = uri.port_u16().unwrap_or(443);
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| unreachable(format!("host {host:?}: {e}")))?;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        let stream = tokio::time::timeout(
            REQUEST_TIMEOUT,
            tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(|_| unreachable(format!("no TLS handshake within {REQUEST_TIMEOUT:?}")))?
        .map_err(|e| {
            match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(tls @ rustls::Error::InvalidCertificate(_)) => Error::Untrusted {
                    uri: format!(
                        "{}://{}",
                        uri.scheme_str().unwrap_or("https"),
                        uri.authority().map(|a| a.as_str()).unwrap_or(host)
                    ),
                    anchor: anchor.to_string(),
                    reason: describe_tls(tls),
                },
                _ => unreachable(format!("TLS: {}", crate::identity::chain(&e))),
            }
        })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(crate::identity::chain(&e)))?;
        let driver = tokio::spawn(conn);
        let req = Request::post(uri.path())
            .header(
                header::HOST,
                uri.authority().map(|a| a.as_str()).unwrap_or(host),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(e.to_string()))?;
        let answer = self.exchange(uri, &mut send, req).await;
        driver.abort();
        answer
    }

    async fn exchange(
        &self,
        uri: &Uri,
        send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        req: Request<Full<Bytes>>,
    ) -> Result<Answer> {
        let unreachable = |reason: String| Error::Unreachable {
            uri: uri.to_string(),
            reason,
        };
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, send.send_request(req))
            .await
            .map_err(|_| unreachable(format!("no answer within {REQUEST_TIMEOUT:?}")))?
            .map_err(|e| unreachable(crate::identity::chain(&e)))?;
        let status = resp.status();
        let body = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect(),
        )
        .await
        .map_err(|_| unreachable("answer body too slow".into()))?
        .map_err(|e| Error::Invalid {
            uri: uri.to_string(),
            reason: format!("body: {e} (at most {MAX_ANSWER_BYTES} bytes)"),
        })?
        .to_bytes();
        if status != StatusCode::OK {
            let reason = String::from_utf8_lossy(&body[..body.len().min(1024)])
                .trim()
                .to_string();
            return Err(if status.is_client_error() {
                Error::Refused {
                    uri: uri.to_string(),
                    status: status.as_u16(),
                    reason,
                }
            } else {
                unreachable(format!("status {status}: {reason}"))
            });
        }
        serde_json::from_slice(&body).map_err(|e| Error::Invalid {
            uri: uri.to_string(),
            reason: format!("not a certificate answer: {e}"),
        })
    }

    /// Checks the answer: the certificate is for this key and this node, and valid now.
    fn accept(&self, uri: &Uri, answer: Answer, key: rcgen::KeyPair) -> Result<Held> {
        let invalid = |reason: String| Error::Invalid {
            uri: uri.to_string(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(answer.certificate_chain.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("certificate_chain: {e}")))?;
        let trust_bundle: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(answer.trust_bundle.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("trust_bundle: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| invalid("certificate_chain is empty".into()))?;
        if trust_bundle.is_empty() {
            return Err(invalid("trust_bundle is empty".into()));
        }
        let (_, cert) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| invalid(format!("certificate: {e}")))?;
        if cert.public_key().raw != key.public_key_der().as_slice() {
            return Err(invalid("the certificate is not for the key sent".into()));
        }
        let sans = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| s.value.general_names.clone())
            .unwrap_or_default();
        let has = |want: &x509_parser::extensions::GeneralName<'_>| sans.iter().any(|n| n == want);
        if !has(&x509_parser::extensions::GeneralName::URI(
            &answer.spiffe_id,
        )) {
            return Err(invalid(format!(
                "the certificate does not name {}",
                answer.spiffe_id
            )));
        }
        if answer.node != self.node
            || !has(&x509_parser::extensions::GeneralName::DNSName(&self.node))
        {
            return Err(invalid(format!(
                "the certificate is for node {:?}, not {:?}",
                answer.node, self.node
            )));
        }
        let not_before = cert.validity().not_before.timestamp();
        let not_after = cert.validity().not_after.timestamp();
        if not_after <= unix_now() {
            return Err(invalid(format!(
                "the certificate expired at {}",
                cert.validity().not_after
            )));
        }
        Ok(Held {
            spiffe_id: answer.spiffe_id,
            node: answer.node,
            chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            trust_bundle,
            not_before,
            not_after,
            received: unix_now(),
        })
    }

    /// The lines `/ready` shows about identity.
    pub fn ready_detail(&self) -> String {
        let now = unix_now();
        let failing = self.failing.lock().expect("failing lock");
        let why = |f: &Failing| match (&f.since, &f.last) {
            (Some(since), Some(last)) => {
                format!("; requests failing for {}s: {last}", now - since)
            }
            _ => String::new(),
        };
        match self.current() {
            None => format!(
                "identity: no certificate yet for node {}{}\n",
                self.node,
                why(&failing)
            ),
            Some(h) if h.not_after <= now => format!(
                "identity: WARNING: certificate of {} EXPIRED {}s ago{}\n",
                h.spiffe_id,
                now - h.not_after,
                why(&failing)
            ),
            Some(h) if now >= h.warn_from() => format!(
                "identity: WARNING: certificate of {} expires in {}s and is not renewed{}\n",
                h.spiffe_id,
                h.not_after - now,
                why(&failing)
            ),
            Some(h) => format!(
                "identity: {} on node {}, expires in {}s{}\n",
                h.spiffe_id,
                h.node,
                h.not_after - now,
                why(&failing)
            ),
        }
    }

    /// Gets a certificate, then renews it at about half its lifetime until `shutdown`;
    /// retries failures with a growing delay, keeping the certificate held meanwhile.
    pub async fn run(&self, mut shutdown: ShutdownWatch) {
        let mut delay = RETRY_MIN;
        loop {
            let wait = match self.renew().await {
                Ok(held) => {
                    delay = RETRY_MIN;
                    tracing::info!(spiffe_id = %held.spiffe_id, node = %held.node, not_after = held.not_after, "Mesh certificate received");
                    // A little jitter, so that proxies started together do not renew together.
                    let life_ms = held.life() as u64 * 1000;
                    let jitter = rand::random::<u64>() % (life_ms / 10).max(1);
                    let at_ms = (held.renew_at() - unix_now()).max(0) as u64 * 1000;
                    Duration::from_millis(at_ms.saturating_sub(jitter)).max(RETRY_MIN)
                }
                Err(e) => {
                    let now = unix_now();
                    let cap = match self.current() {
                        Some(h) => RETRY_MAX
                            .min(Duration::from_millis(h.life() as u64 * 1000 / 8).max(RETRY_MIN)),
                        None => RETRY_MAX,
                    };
                    match self.current() {
                        Some(h) if h.not_after <= now => {
                            tracing::error!(error = %e, spiffe_id = %h.spiffe_id, expired_s_ago = now - h.not_after, "Mesh certificate EXPIRED and cannot be renewed")
                        }
                        Some(h) if now >= h.warn_from() => {
                            tracing::error!(error = %e, spiffe_id = %h.spiffe_id, expires_in_s = h.not_after - now, "Mesh certificate nears its end and cannot be renewed; the controller must answer before it expires")
                        }
                        Some(h) => {
                            tracing::warn!(error = %e, expires_in_s = h.not_after - now, retry_in = ?delay, "Certificate renewal failed; keeping the current certificate")
                        }
                        None => {
                            tracing::warn!(error = %e, retry_in = ?delay, "No mesh certificate yet: request failed")
                        }
                    }
                    let d = delay;
                    delay = (delay * 2).min(cap);
                    d
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// An error and its sources, `: `-separated.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Runs [`Identity::run`] as a Pingora background service.
pub struct IdentityService(pub Arc<Identity>);

#[async_trait]
impl BackgroundService for IdentityService {
    async fn start(&self, shutdown: ShutdownWatch) {
        tracing::info!(node = %self.0.node, "Requesting a mesh certificate from the controller");
        self.0.run(shutdown).await
    }
}

#[cfg(test)]
mod tests;

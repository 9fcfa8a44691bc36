//! The node proxy's mesh identity (`--node-name`, `--identity-token-file`): a private key made
//! here and never sent anywhere, a certificate the controller signs for it
//! (`POST /api/identity/certificate`, authenticated by the token), renewed with a fresh key at
//! about half its lifetime, kept while the controller is away, and reported loudly (log,
//! metric, `/ready` detail) when it nears its end without a renewal. See docs/security.md.

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
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// Largest token file read (a ServiceAccount token is about 1 KiB).
pub const MAX_TOKEN_BYTES: u64 = 8 * 1024;
/// Largest controller answer read.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
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

/// The proxy's identity: the certificate held (swapped whole on renewal) and the client that
/// renews it.
pub struct Identity {
    node: String,
    token_file: PathBuf,
    uris: Vec<Uri>,
    client: Client<HttpConnector, Full<Bytes>>,
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

fn parse_uris(controller_url: &str) -> Result<Vec<Uri>> {
    let bad = |reason: String| Error::Flag {
        flag: "--controller-url",
        value: controller_url.to_string(),
        reason,
    };
    let mut uris = Vec::new();
    for one in controller_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        let uri: Uri = format!("{}/api/identity/certificate", one.trim_end_matches('/'))
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(bad(format!("{one:?} is not an http:// URL")));
        }
        uris.push(uri);
    }
    if uris.is_empty() {
        return Err(bad("no URL given".into()));
    }
    Ok(uris)
}

impl Identity {
    /// The identity of the proxy on `node`, asking the controller(s) of `controller_url` with
    /// the token in `token_file`. Holds nothing until [`Self::renew`] succeeds.
    pub fn new(node: &str, token_file: PathBuf, controller_url: &str) -> Result<Arc<Identity>> {
        crate::metrics::register();
        if node.trim().is_empty() {
            return Err(Error::Flag {
                flag: "--node-name",
                value: node.to_string(),
                reason: "empty".into(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Arc::new(Identity {
            node: node.to_string(),
            token_file,
            uris: parse_uris(controller_url)?,
            client,
            current: ArcSwapOption::empty(),
            failing: Mutex::new(Failing::default()),
        }))
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
        use std::io::Read;
        let err = |reason: String| Error::Token {
            path: self.token_file.clone(),
            reason,
        };
        let file = std::fs::File::open(&self.token_file).map_err(|e| err(e.to_string()))?;
        let mut text = String::new();
        file.take(MAX_TOKEN_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(|e| err(e.to_string()))?;
        if text.len() as u64 > MAX_TOKEN_BYTES {
            return Err(err(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let token = text.trim();
        if token.is_empty() {
            return Err(err("empty".into()));
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
        for uri in &self.uris {
            match self.post(uri, &token, body.clone()).await {
                Ok(answer) => return self.accept(uri, answer, key).map(Arc::new),
                // A refusal is the controller's answer: another replica would say the same.
                Err(e @ Error::Refused { .. }) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one URL"))
    }

    async fn post(&self, uri: &Uri, token: &str, body: Vec<u8>) -> Result<Answer> {
        let unreachable = |reason: String| Error::Unreachable {
            uri: uri.to_string(),
            reason,
        };
        let req = Request::post(uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req))
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

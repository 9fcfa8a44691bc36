//! Mesh identity in the controller: the CA (`identity/ca.rs`), who may ask for a node
//! certificate (`identity/auth.rs`), and the API that signs proxies' certificate requests and
//! shows who holds which identity: `POST /api/identity/certificate` and
//! `GET /api/identity/trust-bundle` on the TLS listener only (`identity/tls.rs`),
//! `GET /api/identities` there and on the plain API. The roots reach proxies out of band: the
//! ConfigMap the controller writes (`identity/trust.rs`) or, locally, the identity folder.
//! See docs/security.md, "Identity".

pub mod auth;
pub mod ca;
pub mod metrics;
pub mod reload;
pub mod secret;
pub mod tls;
pub mod trust;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rcgen::{CertificateSigningRequestParams, SanType};
use serde::{Deserialize, Serialize};

pub use auth::{Authenticator, Refusal, Subject};
pub use ca::Ca;

/// Largest certificate request body accepted (JSON with a PEM CSR; a P-256 CSR is ~500 bytes).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Largest PEM CSR accepted.
pub const MAX_CSR_BYTES: usize = 8 * 1024;
/// Largest bearer token accepted (a ServiceAccount token is about 1 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest node name (a DNS subdomain).
pub const MAX_NODE_BYTES: usize = 253;
/// Default certificate lifetime.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Rows of `/api/identities` whose certificate ended longer ago than this are dropped.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);
/// A refusal from one address for one reason is logged at most once per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What identity is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `spiffe://<trust_domain>/...`.
    pub trust_domain: String,
    /// Lifetime of a node certificate.
    pub lifetime: Duration,
}

/// The SPIFFE ID of a ServiceAccount.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// A certificate request: the node the proxy runs on and its CSR (PEM).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// The node name the proxy claims.
    pub node: String,
    /// PKCS#10, PEM.
    pub csr: String,
}

/// The answer to a certificate request.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertificateResponse {
    /// `spiffe://...`.
    pub spiffe_id: String,
    /// The node, as in the certificate.
    pub node: String,
    /// The certificate, then any intermediate, PEM.
    pub certificate_chain: String,
    /// The roots every proxy trusts, PEM.
    pub trust_bundle: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// One row of `/api/identities`: the last certificate signed for a node.
#[derive(Clone, Debug, Serialize)]
pub struct Issued {
    /// The node.
    pub node: String,
    /// Its proxy's SPIFFE ID.
    pub spiffe_id: String,
    /// The proxy pod, `namespace/name`.
    pub pod: String,
    /// Serial number, hex.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Certificates signed for this node since the controller started.
    pub issued: u64,
    /// Whether `not_after` has passed.
    pub expired: bool,
}

/// What became of a CA offered to [`Service::offer_ca`].
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Signing with it from now on.
    Applied,
    /// The same CA as the one held: nothing to do.
    Unchanged,
    /// Invalid: the CA held stays. The reason.
    Refused(String),
}

/// The identity service: set up at start, able to sign once its CA and authenticator are
/// installed (a CA kept in a Secret is read in the background; requests before get 503). The
/// CA can change while it runs ([`Service::offer_ca`]); a request signs with the CA held when
/// it started.
pub struct Service {
    config: Config,
    auth: OnceLock<Authenticator>,
    /// The CA signing now (`None` until installed); its subscribers follow every change.
    ca: tokio::sync::watch::Sender<Option<Arc<Ca>>>,
    /// Why the last CA offered was refused, with where it came from.
    ca_refused: Mutex<Option<String>>,
    /// The root of the signer replaced last, and when: what it signed is valid up to a
    /// certificate lifetime after.
    retired: Mutex<Option<(Vec<u8>, Instant)>>,
    issued: Mutex<BTreeMap<String, Issued>>,
    refusals_logged: Mutex<HashMap<(IpAddr, &'static str), Instant>>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Whether `node` is a DNS subdomain (RFC 1123), as Kubernetes node names are.
pub fn valid_node_name(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= MAX_NODE_BYTES
        && node.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The public key of a PEM CSR whose signature verifies and which asks for no name other
/// than `spiffe_id` and `node` (the controller decides the names; a request for others is
/// refused rather than quietly narrowed).
pub fn check_csr(pem: &str, spiffe_id: &str, node: &str) -> Result<rcgen::PublicKey, Refusal> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(Refusal::BadRequest(format!(
            "csr: {} bytes, more than the {MAX_CSR_BYTES} accepted",
            pem.len()
        )));
    }
    let csr = CertificateSigningRequestParams::from_pem(pem).map_err(|e| {
        Refusal::BadRequest(format!(
            "csr: not a PKCS#10 request with a valid signature and only name extensions: {e}"
        ))
    })?;
    for san in &csr.params.subject_alt_names {
        let allowed = match san {
            SanType::URI(u) => u.as_str() == spiffe_id,
            SanType::DnsName(d) => d.as_str() == node,
            _ => false,
        };
        if !allowed {
            return Err(Refusal::BadRequest(format!(
                "csr: asks for the name {san:?}; the controller decides a node certificate's names ({spiffe_id}, {node}), leave them out"
            )));
        }
    }
    Ok(csr.public_key)
}

impl Service {
    /// A service with nothing installed yet.
    pub fn new(config: Config) -> Arc<Service> {
        metrics::register();
        Arc::new(Service {
            config,
            auth: OnceLock::new(),
            ca: tokio::sync::watch::Sender::new(None),
            ca_refused: Mutex::new(None),
            retired: Mutex::new(None),
            issued: Mutex::new(BTreeMap::new()),
            refusals_logged: Mutex::new(HashMap::new()),
        })
    }

    /// Makes the service sign with `ca`, for whom `auth` lets through. Only the first call
    /// counts; later CAs come through [`Service::offer_ca`].
    pub fn install(&self, ca: Ca, auth: Authenticator) {
        if self.auth.set(auth).is_err() {
            return;
        }
        metrics::register().ca_expiry.set(ca.not_after());
        self.ca.send_replace(Some(Arc::new(ca)));
    }

    /// Returns once a CA is installed.
    pub async fn wait_installed(&self) {
        let mut rx = self.ca.subscribe();
        let _ = rx.wait_for(Option::is_some).await;
    }

    /// The CA signing now, once installed.
    pub fn ca(&self) -> Option<Arc<Ca>> {
        self.ca.borrow().clone()
    }

    /// Why the last CA offered was refused (naming where it came from, the part and the
    /// reason), if it was: cleared once a valid CA (a new one, or the one held) is offered.
    /// `/ready` shows it while it stands.
    pub fn last_ca_refusal(&self) -> Option<String> {
        self.ca_refused.lock().expect("ca refusal lock").clone()
    }

    /// Follows the CA: the receiver sees each one installed or applied.
    pub fn subscribe_ca(&self) -> tokio::sync::watch::Receiver<Option<Arc<Ca>>> {
        self.ca.subscribe()
    }

    /// A CA read again from `origin` (its Secret or folder) while running: a valid one that
    /// differs from the CA held signs from now on (requests under way finish with the one they
    /// started with) and its roots are served; an invalid one is refused, logged with its
    /// reason and counted, and the CA held stays.
    pub fn offer_ca(&self, candidate: Result<Ca, String>, origin: &str) -> Offer {
        let m = metrics::register();
        let new = match candidate {
            Ok(ca) => ca,
            Err(reason) => {
                m.ca_changes.with_label_values(&["refused"]).inc();
                *self.ca_refused.lock().expect("ca refusal lock") = Some(reason.clone());
                let held = self.ca();
                tracing::error!(%origin, %reason, held = held.as_ref().map_or("none", |c| c.describe()), "Mesh CA change refused; the CA held stays");
                return Offer::Refused(reason);
            }
        };
        // What is offered now is valid: an earlier refusal no longer stands.
        if self
            .ca_refused
            .lock()
            .expect("ca refusal lock")
            .take()
            .is_some()
        {
            tracing::info!(%origin, "The mesh CA offered is valid again; the refusal is cleared");
        }
        let old = self.ca();
        if old.as_ref().is_some_and(|o| o.same_as(&new)) {
            return Offer::Unchanged;
        }
        if let Some(old) = &old {
            // The documented rotation keeps an overlap: warn when a change skips it.
            if !old.roots().iter().any(|r| r == new.signer_root()) {
                tracing::warn!(%origin, "The new signer's root was not among the roots served before: proxies refuse what it signs until they renew and receive it (rotate in steps: docs/security.md, \"Rotating the mesh root\")");
            }
            let mut retired = self.retired.lock().expect("retired lock");
            if old.signer_root() != new.signer_root() {
                *retired = Some((old.signer_root().to_vec(), Instant::now()));
            }
            let dropped: Vec<&Vec<u8>> = old
                .roots()
                .iter()
                .filter(|r| !new.roots().contains(r))
                .collect();
            let recent = retired.as_ref().filter(|(root, at)| {
                dropped.contains(&root) && at.elapsed() < self.config.lifetime
            });
            if let Some((_, at)) = recent {
                tracing::warn!(%origin, retired_secs_ago = at.elapsed().as_secs(), lifetime_secs = self.config.lifetime.as_secs(), "The new trust bundle drops the root that signed until less than a certificate lifetime ago: certificates it signed, still valid, stop verifying at proxies that renew");
            } else if !dropped.is_empty() {
                tracing::info!(%origin, dropped = dropped.len(), "The trust bundle drops roots of the previous one");
            }
        }
        m.ca_expiry.set(new.not_after());
        m.ca_changes.with_label_values(&["applied"]).inc();
        tracing::info!(%origin, signer = %new.describe(), roots = new.roots().len(), previous = old.as_ref().map_or("none", |c| c.describe()), "Mesh CA changed: signing with it, serving its roots");
        self.ca.send_replace(Some(Arc::new(new)));
        Offer::Applied
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Signs a certificate for the proxy `token` stands for, or says why not.
    pub async fn issue(
        &self,
        token: &str,
        request: &CertificateRequest,
    ) -> Result<CertificateResponse, Refusal> {
        let node = request.node.as_str();
        if !valid_node_name(node) {
            return Err(Refusal::BadRequest(format!(
                "node: {:?} is not a node name (a DNS subdomain of at most {MAX_NODE_BYTES} characters)",
                config_model::cut::cut(node)
            )));
        }
        let not_loaded = || Refusal::Unavailable("the mesh CA is not loaded yet".into());
        let auth = self.auth.get().ok_or_else(not_loaded)?;
        let ca = self.ca().ok_or_else(not_loaded)?;
        let subject = auth.authenticate(token, node).await?;
        let id = spiffe_id(
            &self.config.trust_domain,
            &subject.namespace,
            &subject.service_account,
        );
        let public_key = check_csr(&request.csr, &id, node)?;
        let signed = ca
            .sign(&public_key, &id, node, self.config.lifetime)
            .map_err(|e| Refusal::Unavailable(e.to_string()))?;
        self.remember(Issued {
            node: node.to_string(),
            spiffe_id: id.clone(),
            pod: format!("{}/{}", subject.namespace, subject.pod),
            serial: signed.serial.clone(),
            not_before: signed.not_before,
            not_after: signed.not_after,
            issued: 0,
            expired: false,
        });
        tracing::info!(%node, spiffe_id = %id, serial = %signed.serial, not_after = signed.not_after, "Node certificate issued");
        Ok(CertificateResponse {
            spiffe_id: id,
            node: node.to_string(),
            certificate_chain: signed.chain_pem,
            trust_bundle: ca.trust_bundle().to_string(),
            not_before: signed.not_before,
            not_after: signed.not_after,
        })
    }

    fn remember(&self, mut row: Issued) {
        let mut issued = self.issued.lock().expect("issued lock");
        row.issued = issued.get(&row.node).map_or(0, |r| r.issued) + 1;
        issued.insert(row.node.clone(), row);
        let now = unix_now();
        issued.retain(|_, r| r.not_after + FORGET_AFTER.as_secs() as i64 > now);
        let live = issued.values().filter(|r| r.not_after > now).count();
        metrics::register().proxies.set(live as i64);
    }

    /// Each node's last certificate, by node name.
    pub fn identities(&self) -> Vec<Issued> {
        let now = unix_now();
        let issued = self.issued.lock().expect("issued lock");
        let live = issued.values().filter(|r| r.not_after > now).count();
        metrics::register().proxies.set(live as i64);
        issued
            .values()
            .cloned()
            .map(|mut r| {
                r.expired = r.not_after <= now;
                r
            })
            .collect()
    }

    /// Whether a refusal from `ip` for `reason` should be logged now.
    fn log_refusal_now(&self, ip: IpAddr, reason: &'static str) -> bool {
        let mut logged = self.refusals_logged.lock().expect("refusal log lock");
        let now = Instant::now();
        if logged.len() > 4096 {
            logged.retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
        }
        match logged.get(&(ip, reason)) {
            Some(at) if now.duration_since(*at) < REFUSAL_LOG_INTERVAL => false,
            _ => {
                logged.insert((ip, reason), now);
                true
            }
        }
    }
}

/// Kubernetes mode: loads (or creates) the CA Secret, retrying while the API server refuses,
/// then lets the service sign for tokens a TokenReview accepts, publishes the roots in the
/// ConfigMap `trust_configmap` of the mesh namespace for proxies to pin, and follows the Secret
/// ([`reload::follow_secret`]): a valid change signs and is published without a restart.
pub async fn run_kubernetes(
    service: Arc<Service>,
    client: kube::Client,
    at: secret::SecretRef,
    audience: String,
    proxy_labels: BTreeMap<String, String>,
    trust_configmap: String,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let trust_domain = service.config.trust_domain.clone();
    let Some(ca) = secret::load_with_retry(
        client.clone(),
        at.clone(),
        trust_domain,
        Duration::from_secs(5),
        shutdown.clone(),
    )
    .await
    else {
        return;
    };
    tracing::info!(secret = %format!("{}/{}", at.namespace, at.name), signer = %ca.describe(), "Mesh CA loaded: signing node certificates");
    service.install(
        ca,
        Authenticator::Kubernetes {
            client: client.clone(),
            audience,
            namespace: at.namespace.clone(),
            proxy_labels,
        },
    );
    tokio::spawn(trust::keep_published(
        client.clone(),
        at.namespace.clone(),
        trust_configmap,
        service.subscribe_ca(),
        shutdown.clone(),
    ));
    reload::follow_secret(service, client, at, shutdown).await;
}

/// The identity routes served on the TLS listener ([`tls::serve`]).
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/api/identity/certificate", post(certificate))
        .route("/api/identity/trust-bundle", get(trust_bundle))
        .route("/api/identities", get(identities))
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(service)
}

/// The identity routes of the plain HTTP API: `/api/identities` (no secret in it), and a
/// refusal for certificate requests and the trust bundle, which are served over TLS only, at
/// `tls_url`. A refused request's body and token are never read.
pub fn plain_router(service: Arc<Service>, tls_url: String) -> Router {
    let refuse = move |ConnectInfo(peer): ConnectInfo<SocketAddr>,
                       State(service): State<Arc<Service>>| {
        let url = tls_url.clone();
        async move {
            metrics::register()
                .requests
                .with_label_values(&["cleartext"])
                .inc();
            if service.log_refusal_now(peer.ip(), "cleartext") {
                tracing::warn!(peer = %peer.ip(), identity_url = %url, "Identity request over plain HTTP refused: a token sent this way may have been read by others");
            }
            (
                StatusCode::FORBIDDEN,
                format!(
                    "certificate requests and the trust bundle are served over TLS only, at {url} (--identity-listen); this request was not read. Verify that server with the mesh root given out of band (the trust ConfigMap, or ca.crt of the identity folder)\n"
                ),
            )
        }
    };
    Router::new()
        .route("/api/identity/certificate", post(refuse.clone()))
        .route("/api/identity/trust-bundle", get(refuse))
        .route("/api/identities", get(identities))
        .with_state(service)
}

fn bearer(headers: &HeaderMap) -> Result<&str, Refusal> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Refusal::Unauthenticated("no Authorization: Bearer token".into()))?;
    if value.len() > MAX_TOKEN_BYTES + 7 {
        return Err(Refusal::BadRequest(format!(
            "the token is longer than {MAX_TOKEN_BYTES} bytes"
        )));
    }
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Refusal::Unauthenticated("Authorization is not a Bearer token".into()))
}

async fn certificate(
    State(service): State<Arc<Service>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let m = metrics::register();
    let outcome = async {
        let token = bearer(&headers)?;
        let request: CertificateRequest = serde_json::from_slice(&body).map_err(|e| {
            Refusal::BadRequest(format!(
                "body: expected {{\"node\": ..., \"csr\": ...}}: {e}"
            ))
        })?;
        let node = request.node.clone();
        service
            .issue(token, &request)
            .await
            .map_err(|r| r.about(&node))
    }
    .await;
    match outcome {
        Ok(answer) => {
            m.requests.with_label_values(&["issued"]).inc();
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&answer).expect("response serialises"),
            )
                .into_response()
        }
        Err(refusal) => {
            m.requests.with_label_values(&[refusal.label()]).inc();
            if service.log_refusal_now(peer.ip(), refusal.label()) {
                tracing::warn!(peer = %peer.ip(), reason = %refusal, "Certificate request refused");
            }
            let mut resp = (refusal.status(), format!("{refusal}\n")).into_response();
            if matches!(refusal, Refusal::Unavailable(_)) {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            }
            resp
        }
    }
}

async fn trust_bundle(State(service): State<Arc<Service>>) -> Response {
    match service.ca().as_deref() {
        Some(ca) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            ca.trust_bundle().to_string(),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the mesh CA is not loaded yet\n",
        )
            .into_response(),
    }
}

async fn identities(State(service): State<Arc<Service>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&service.identities()).expect("rows serialise"),
    )
        .into_response()
}

#[cfg(test)]
mod tests;

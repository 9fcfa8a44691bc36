//! Who may ask for a node certificate: a token checked against the bootstrap token (local
//! mode) or by a TokenReview (Kubernetes), and the proxy pod behind it, which must run on the
//! node the request names. The answer is the pod's namespace and ServiceAccount, which the
//! certificate's SPIFFE ID is made of; nothing in the request itself decides it.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use kube::Api;
use tokio::sync::watch;

use crate::snapshot::Snapshot;

/// The label that marks node proxy Pods in a manifests folder.
pub const LOCAL_PROXY_LABEL: (&str, &str) = ("app.kubernetes.io/name", "maille-proxy");

/// TokenReview `user.extra` keys of a bound (projected) ServiceAccount token.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// The bound pod's uid.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// Why a request is refused; each variant is an HTTP status and a `result` label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The request itself is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No token, or a token that does not authenticate (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// An authenticated token that may not have this certificate (403).
    #[error("{0}")]
    Forbidden(String),
    /// The controller cannot decide now (503): retry later.
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    /// The `result` label of `maille_controller_certificate_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "bad_request",
            Refusal::Unauthenticated(_) => "unauthenticated",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::Unavailable(_) => "unavailable",
        }
    }

    /// The same refusal, its message prefixed with the node it is about.
    pub fn about(self, node: &str) -> Refusal {
        let node = config_model::cut::cut(node);
        match self {
            Refusal::BadRequest(m) => Refusal::BadRequest(format!("node {node:?}: {m}")),
            Refusal::Unauthenticated(m) => Refusal::Unauthenticated(format!("node {node:?}: {m}")),
            Refusal::Forbidden(m) => Refusal::Forbidden(format!("node {node:?}: {m}")),
            Refusal::Unavailable(m) => Refusal::Unavailable(format!("node {node:?}: {m}")),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Refusal::BadRequest(_) => http::StatusCode::BAD_REQUEST,
            Refusal::Unauthenticated(_) => http::StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => http::StatusCode::FORBIDDEN,
            Refusal::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The proxy pod a token stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    /// The pod's namespace.
    pub namespace: String,
    /// Its ServiceAccount.
    pub service_account: String,
    /// The pod's name.
    pub pod: String,
}

/// Checks tokens and node claims.
pub enum Authenticator {
    /// Local mode: the token of `DIR/bootstrap-token`; proxy Pods of the manifests folder.
    Bootstrap {
        /// The token.
        token: String,
        /// The folder's current objects.
        snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    },
    /// Kubernetes: a TokenReview for `audience`; proxy pods of the mesh namespace with the
    /// proxy labels.
    Kubernetes {
        /// The client.
        client: kube::Client,
        /// The audience proxy tokens are made for.
        audience: String,
        /// The mesh namespace.
        namespace: String,
        /// Labels every proxy pod has (`--proxy-selector`).
        proxy_labels: BTreeMap<String, String>,
    },
}

/// Compares without stopping at the first difference.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) || pod.metadata.deletion_timestamp.is_some()
}

fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

fn pod_service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

impl Authenticator {
    /// The proxy pod `token` stands for, if it may have a certificate for `node`.
    pub async fn authenticate(&self, token: &str, node: &str) -> Result<Subject, Refusal> {
        match self {
            Authenticator::Bootstrap {
                token: expected,
                snapshots,
            } => {
                if !same_secret(token.as_bytes(), expected.as_bytes()) {
                    return Err(Refusal::Unauthenticated(
                        "the token is not the bootstrap token of this controller's --identity-dir"
                            .into(),
                    ));
                }
                let snap = snapshots.borrow().clone().ok_or_else(|| {
                    Refusal::Unavailable("the manifests folder is not read yet".into())
                })?;
                local_proxy_on(&snap, node)
            }
            Authenticator::Kubernetes {
                client,
                audience,
                namespace,
                proxy_labels,
            } => review(client, audience, namespace, proxy_labels, token, node).await,
        }
    }
}

/// The proxy Pod of the folder on `node` (the first by namespace and name if several).
pub fn local_proxy_on(snap: &Snapshot, node: &str) -> Result<Subject, Refusal> {
    let (k, v) = LOCAL_PROXY_LABEL;
    let mut proxies: Vec<&Pod> = snap
        .pods
        .iter()
        .map(Arc::as_ref)
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(k))
                .is_some_and(|l| l == v)
                && !finished(p)
        })
        .collect();
    proxies.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let pod = proxies
        .iter()
        .find(|p| pod_node(p) == Some(node))
        .ok_or_else(|| {
            let nodes: std::collections::BTreeSet<&str> =
                proxies.iter().filter_map(|p| pod_node(p)).collect();
            Refusal::Forbidden(format!(
                "node {node:?} runs no proxy Pod (label {k}: {v} and spec.nodeName) in the manifests folder; proxy nodes: {nodes:?}"
            ))
        })?;
    Ok(Subject {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        service_account: pod_service_account(pod),
        pod: pod.metadata.name.clone().unwrap_or_default(),
    })
}

/// A TokenReview of `token` for `audience`, then the pod it is bound to.
async fn review(
    client: &kube::Client,
    audience: &str,
    namespace: &str,
    proxy_labels: &BTreeMap<String, String>,
    token: &str,
    node: &str,
) -> Result<Subject, Refusal> {
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: Some(vec![audience.to_string()]),
        },
        ..Default::default()
    };
    let answer = reviews
        .create(&PostParams::default(), &request)
        .await
        .map_err(|e| Refusal::Unavailable(format!("TokenReview failed: {e}")))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(Refusal::Unauthenticated(format!(
            "the token does not authenticate: {}",
            status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "TokenReview says not authenticated".into())
        )));
    }
    if let Some(auds) = &status.audiences {
        if !auds.iter().any(|a| a == audience) {
            return Err(Refusal::Unauthenticated(format!(
                "the token is not for audience {audience:?} (its audiences: {auds:?})"
            )));
        }
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let Some((sa_ns, sa)) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    else {
        return Err(Refusal::Forbidden(format!(
            "{username:?} is not a ServiceAccount"
        )));
    };
    let extra = user.extra.unwrap_or_default();
    let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    let (Some(pod_name), Some(pod_uid)) = (one(EXTRA_POD_NAME), one(EXTRA_POD_UID)) else {
        return Err(Refusal::Forbidden(format!(
            "the token of {username} is not bound to a pod (use a projected ServiceAccount token with audience {audience:?})"
        )));
    };
    if sa_ns != namespace {
        return Err(Refusal::Forbidden(format!(
            "pod {sa_ns}/{pod_name} is not in the mesh namespace {namespace:?}"
        )));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = match pods.get_opt(&pod_name).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(Refusal::Forbidden(format!(
                "pod {namespace}/{pod_name} of the token no longer exists"
            )))
        }
        Err(e) => {
            return Err(Refusal::Unavailable(format!(
                "reading pod {namespace}/{pod_name}: {e}"
            )))
        }
    };
    let who = format!("pod {namespace}/{pod_name}");
    if pod.metadata.uid.as_deref() != Some(pod_uid.as_str()) {
        return Err(Refusal::Forbidden(format!(
            "{who} was replaced since the token was made (uid {pod_uid} is gone)"
        )));
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if let Some((k, v)) = proxy_labels
        .iter()
        .find(|(k, v)| labels.get(*k) != Some(*v))
    {
        return Err(Refusal::Forbidden(format!(
            "{who} is not a proxy pod (label {k}={v} missing)"
        )));
    }
    if pod_service_account(&pod) != sa {
        return Err(Refusal::Forbidden(format!(
            "{who} does not run as ServiceAccount {sa}"
        )));
    }
    if finished(&pod) {
        return Err(Refusal::Forbidden(format!(
            "{who} is finished or terminating"
        )));
    }
    match pod_node(&pod) {
        Some(n) if n == node => {}
        Some(n) => {
            return Err(Refusal::Forbidden(format!(
                "{who} runs on node {n:?}, not on {node:?}"
            )))
        }
        None => {
            return Err(Refusal::Forbidden(format!(
                "{who} is not scheduled on a node yet"
            )))
        }
    }
    Ok(Subject {
        namespace: namespace.to_string(),
        service_account: sa.to_string(),
        pod: pod_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abcdef", b"abcdef"));
        assert!(!same_secret(b"abcdef", b"abcdeg"));
        assert!(!same_secret(b"abc", b"abcdef"));
    }
}

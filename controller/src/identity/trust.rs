//! The mesh roots published for proxies to pin (Kubernetes): a ConfigMap of the mesh namespace
//! (`--identity-trust-configmap`, default `maille-identity-trust`, key `ca.crt`) that the chart
//! mounts into every proxy pod. A proxy verifies the identity listener against it before it
//! sends its token, so the roots never come from the server being verified. Written with
//! server-side apply once the CA is loaded, at once whenever it changes, and again every few
//! minutes (a deleted or edited ConfigMap comes back; applying the same content changes
//! nothing).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, Patch, PatchParams};
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Ca;

/// Default name of the ConfigMap.
pub const DEFAULT_CONFIGMAP: &str = "maille-identity-trust";
/// The key of the roots (PEM) in the ConfigMap.
pub const KEY: &str = "ca.crt";
/// The field manager of the apply.
pub const FIELD_MANAGER: &str = "maille-controller";
/// Interval between two applies that worked.
pub const REAPPLY: Duration = Duration::from_secs(300);
/// Interval after a failed apply.
pub const RETRY: Duration = Duration::from_secs(5);

/// The ConfigMap holding `bundle_pem`.
pub fn configmap(namespace: &str, name: &str, bundle_pem: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "maille-controller".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(KEY.to_string(), bundle_pem.to_string())])),
        ..Default::default()
    }
}

/// Applies the ConfigMap once.
pub async fn apply(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    bundle_pem: &str,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(configmap(namespace, name, bundle_pem)),
    )
    .await
    .map(|_| ())
}

/// Keeps the ConfigMap holding the roots of the CA `cas` holds until `shutdown`: applied
/// again every [`REAPPLY`], and at once when the CA changes (a rotation step).
pub async fn keep_published(
    client: kube::Client,
    namespace: String,
    name: String,
    mut cas: watch::Receiver<Option<Arc<Ca>>>,
    shutdown: CancellationToken,
) {
    let mut published: Option<String> = None;
    loop {
        let bundle = cas
            .borrow_and_update()
            .as_ref()
            .map(|ca| ca.trust_bundle().to_string());
        let wait = match &bundle {
            None => REAPPLY,
            Some(bundle) => match apply(&client, &namespace, &name, bundle).await {
                Ok(()) => {
                    if published.as_ref() != Some(bundle) {
                        let roots = bundle.matches("-----BEGIN CERTIFICATE-----").count();
                        tracing::info!(configmap = %format!("{namespace}/{name}"), roots, "Mesh roots published for proxies to pin");
                        published = Some(bundle.clone());
                    }
                    REAPPLY
                }
                Err(e) => {
                    tracing::error!(configmap = %format!("{namespace}/{name}"), error = %e, "Mesh roots not published: proxies that have not pinned them yet cannot verify the identity listener");
                    RETRY
                }
            },
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = cas.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

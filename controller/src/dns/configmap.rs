//! Writes to the cluster DNS objects: ConfigMap edits retried on conflict, the pod-template
//! annotation that rolls CoreDNS, and API errors that name the object.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::Client;
use tracing::{debug, info};

use super::{
    corefile, Error, Result, AKS_CUSTOM_CONFIGMAP, AKS_CUSTOM_KEY, COREFILE_KEY, DNS_NAMESPACE,
    RESTART_ANNOTATION,
};

pub(super) fn api_err(
    action: &'static str,
    kind: &str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let object = format!("{kind} {namespace}/{name}");
    move |source| Error::Api {
        action,
        object,
        source,
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Outcome of an [`update_configmap`] edit.
pub(super) enum Edit {
    /// Leave the object as it is.
    Keep,
    /// Write this object (same resourceVersion as read, so a concurrent change is a 409).
    Replace(Box<ConfigMap>),
    /// Delete the object.
    Delete,
}

const ATTEMPTS: u32 = 3;

/// Reads a ConfigMap, lets `edit` decide, and writes the decision; re-reads and re-decides when
/// someone else changed it in between. Returns whether anything was written, `None` when the
/// ConfigMap does not exist.
pub(super) async fn update_configmap(
    api: &Api<ConfigMap>,
    name: &str,
    mut edit: impl FnMut(&ConfigMap) -> Result<Edit>,
) -> Result<Option<bool>> {
    let ns = api.namespace().unwrap_or(DNS_NAMESPACE).to_string();
    for _ in 0..ATTEMPTS {
        let Some(current) =
            api.get_opt(name)
                .await
                .map_err(api_err("read", "configmap", &ns, name))?
        else {
            return Ok(None);
        };
        let result = match edit(&current)? {
            Edit::Keep => return Ok(Some(false)),
            Edit::Replace(next) => api
                .replace(name, &PostParams::default(), &next)
                .await
                .map(|_| ()),
            Edit::Delete => {
                let dp = DeleteParams {
                    preconditions: Some(kube::api::Preconditions {
                        resource_version: current.metadata.resource_version.clone(),
                        uid: None,
                    }),
                    ..DeleteParams::default()
                };
                api.delete(name, &dp).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => return Ok(Some(true)),
            Err(e) if is_conflict(&e) => {
                debug!(configmap = %format!("{ns}/{name}"), "Changed concurrently, retrying");
                continue;
            }
            Err(e) => return Err(api_err("update", "configmap", &ns, name)(e)),
        }
    }
    Err(Error::Conflict {
        object: format!("configmap {ns}/{name}"),
        attempts: ATTEMPTS,
    })
}

pub(super) fn data_value<'a>(cm: &'a ConfigMap, key: &str) -> Option<&'a str> {
    cm.data.as_ref()?.get(key).map(String::as_str)
}

pub(super) fn with_data(cm: &ConfigMap, key: &str, value: Option<String>) -> ConfigMap {
    let mut next = cm.clone();
    let data = next.data.get_or_insert_with(BTreeMap::new);
    match value {
        Some(v) => {
            data.insert(key.to_string(), v);
        }
        None => {
            data.remove(key);
        }
    }
    next
}

/// FNV-1a: a stable content hash for the restart annotation (no dependency, same on every build).
pub(crate) fn content_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Rolls the CoreDNS pods by changing a pod-template annotation (what `kubectl rollout
/// restart` does): to `Some(hash)`, or removing it with `None`.
pub(super) async fn restart(
    client: &Client,
    deployment: &str,
    value: Option<String>,
) -> Result<()> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), DNS_NAMESPACE);
    let patch = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {RESTART_ANNOTATION: value}}}}
    });
    api.patch(deployment, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err("restart", "deployment", DNS_NAMESPACE, deployment))?;
    info!(deployment = %format!("{DNS_NAMESPACE}/{deployment}"), "Restarted CoreDNS to load the new configuration");
    Ok(())
}

/// Takes Maille's section out of the Corefile of ConfigMap `name`. Returns whether anything
/// was written, and the Corefile as it is now (`None` when the ConfigMap or its Corefile is
/// missing).
pub(super) async fn remove_corefile_section(
    api: &Api<ConfigMap>,
    name: &str,
) -> Result<(bool, Option<String>)> {
    let mut left = None;
    let changed = update_configmap(api, name, |cm| {
        let Some(current) = data_value(cm, COREFILE_KEY) else {
            return Ok(Edit::Keep);
        };
        let next = corefile::remove(current).map_err(|source| Error::Corefile {
            configmap: name.to_string(),
            key: COREFILE_KEY,
            source,
        })?;
        left = Some(next.clone());
        Ok(if next == current {
            Edit::Keep
        } else {
            Edit::Replace(Box::new(with_data(cm, COREFILE_KEY, Some(next))))
        })
    })
    .await?
    .unwrap_or(false);
    Ok((changed, left))
}

/// Drops Maille's key from AKS's `coredns-custom`; whether anything was written.
pub(super) async fn remove_aks_key(api: &Api<ConfigMap>) -> Result<bool> {
    let changed = update_configmap(api, AKS_CUSTOM_CONFIGMAP, |cm| {
        Ok(if data_value(cm, AKS_CUSTOM_KEY).is_some() {
            Edit::Replace(Box::new(with_data(cm, AKS_CUSTOM_KEY, None)))
        } else {
            Edit::Keep
        })
    })
    .await?;
    Ok(changed.unwrap_or(false))
}

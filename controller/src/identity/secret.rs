//! The mesh CA kept in a Secret of the mesh namespace (`kubernetes.io/tls`: `tls.crt`,
//! `tls.key`, optional `ca.crt`): read when present (made by an earlier start, or supplied by
//! the user, e.g. from cert-manager), otherwise made and created once, the first replica to
//! create it winning a race.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use tokio_util::sync::CancellationToken;

use super::ca::{self, Ca};

/// Where the CA Secret is and whether the controller may create it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// The mesh namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// Create it when absent (off when the user supplies it).
    pub create: bool,
}

/// The text of `key` in the Secret, refused past [`ca::MAX_PEM_BYTES`] or when not UTF-8.
fn text(secret: &Secret, key: &str, origin: &str) -> Result<Option<String>, String> {
    let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) else {
        return Ok(None);
    };
    if bytes.0.len() > ca::MAX_PEM_BYTES {
        return Err(format!(
            "mesh CA from {origin}: {key}: {} bytes, more than the {} accepted",
            bytes.0.len(),
            ca::MAX_PEM_BYTES
        ));
    }
    String::from_utf8(bytes.0.clone())
        .map(Some)
        .map_err(|_| format!("mesh CA from {origin}: {key}: not UTF-8 text (expected PEM)"))
}

/// The CA of an existing Secret.
pub fn from_secret(secret: &Secret, origin: &str) -> Result<Ca, String> {
    let cert = text(secret, ca::SECRET_CERT_KEY, origin)?
        .ok_or_else(|| format!("mesh CA from {origin}: no {} key", ca::SECRET_CERT_KEY))?;
    let key = text(secret, ca::SECRET_KEY_KEY, origin)?
        .ok_or_else(|| format!("mesh CA from {origin}: no {} key", ca::SECRET_KEY_KEY))?;
    let bundle = text(secret, ca::SECRET_BUNDLE_KEY, origin)?;
    Ca::from_pem(&cert, &key, bundle.as_deref(), origin).map_err(|e| e.to_string())
}

/// What of a Secret makes the CA: the three keys' bytes, to tell a change from a relist.
pub fn content(secret: &Secret) -> Vec<Option<Vec<u8>>> {
    [
        ca::SECRET_CERT_KEY,
        ca::SECRET_KEY_KEY,
        ca::SECRET_BUNDLE_KEY,
    ]
    .iter()
    .map(|k| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(*k))
            .map(|b| b.0.clone())
    })
    .collect()
}

/// Reads the CA from its Secret, or makes and creates it. One attempt.
pub async fn load_or_create(
    client: &kube::Client,
    at: &SecretRef,
    trust_domain: &str,
) -> Result<Ca, String> {
    let origin = format!("Secret {}/{}", at.namespace, at.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    match secrets.get_opt(&at.name).await {
        Ok(Some(s)) => return from_secret(&s, &origin),
        Ok(None) if !at.create => {
            return Err(format!(
                "{origin} does not exist and the controller may not create it (it is supplied by you: tls.crt, tls.key, optionally ca.crt)"
            ))
        }
        Ok(None) => {}
        Err(e) => return Err(format!("reading {origin}: {e}")),
    }
    let new = Ca::generate(trust_domain).map_err(|e| e.to_string())?;
    let data: BTreeMap<String, ByteString> = [
        (ca::SECRET_CERT_KEY, new.cert_pem().to_string()),
        (ca::SECRET_KEY_KEY, new.key_pem()),
        (ca::SECRET_BUNDLE_KEY, new.trust_bundle().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
    .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(at.name.clone()),
            namespace: Some(at.namespace.clone()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "maille-controller".to_string(),
            )])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(data),
        ..Default::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            tracing::info!(secret = %origin, %trust_domain, "Mesh CA created");
            Ok(new)
        }
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => match secrets.get_opt(&at.name).await {
            Ok(Some(s)) => from_secret(&s, &origin),
            Ok(None) => Err(format!("{origin}: created by someone else, then gone")),
            Err(e) => Err(format!("reading {origin}: {e}")),
        },
        Err(e) => Err(format!("creating {origin}: {e}")),
    }
}

/// Loads the CA from its Secret, retrying every `retry` until it works or `shutdown`.
pub async fn load_with_retry(
    client: kube::Client,
    at: SecretRef,
    trust_domain: String,
    retry: Duration,
    shutdown: CancellationToken,
) -> Option<Ca> {
    loop {
        match load_or_create(&client, &at, &trust_domain).await {
            Ok(ca) => return Some(ca),
            Err(e) => {
                tracing::error!(error = %e, "Mesh CA not loaded; no certificate is issued until it is")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

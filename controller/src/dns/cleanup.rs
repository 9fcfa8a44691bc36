//! `cleanup`: what `prepare` added taken out of every place it may be, CoreDNS rolled back,
//! the shadow services deleted.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use super::configmap::{
    api_err, content_hash, data_value, remove_aks_key, remove_corefile_section, restart,
    update_configmap, with_data, Edit,
};
use super::discover::{discover, DnsServer};
use super::{
    stub, CleanedUp, DnsOptions, Error, Result, AKS_CUSTOM_CONFIGMAP, COREDNS_DEPLOYMENT,
    CREATED_BY_ANNOTATION, DNS_NAMESPACE, KUBE_DNS_CONFIGMAP, RESTART_ANNOTATION, STUB_DOMAINS_KEY,
};
use crate::naming::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};

/// Removes everything `prepare` added, wherever it is (Corefile section, AKS key, kube-dns
/// stub domain), leaving the rest as it was, and deletes the shadow services.
pub async fn cleanup(client: Client, opts: &DnsOptions) -> Result<CleanedUp> {
    opts.validate()?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), DNS_NAMESPACE);
    let mut done = CleanedUp::default();
    let coredns = match discover(&client, opts).await {
        Ok(DnsServer::CoreDns(c)) => Some(c),
        Ok(DnsServer::KubeDns) => None,
        // Clean up what we can even when the DNS server is gone or unreadable.
        Err(e) => {
            warn!(error = %e, "Cannot identify the cluster DNS; cleaning the usual places");
            None
        }
    };
    let corefile_map = coredns
        .as_ref()
        .map_or(COREDNS_DEPLOYMENT.to_string(), |c| c.configmap.clone());

    let (corefile_changed, written) = remove_corefile_section(&configmaps, &corefile_map).await?;
    if corefile_changed {
        done.configmaps
            .push(format!("{DNS_NAMESPACE}/{corefile_map}"));
    }
    let aks_changed = remove_aks_key(&configmaps).await?;
    if aks_changed {
        done.configmaps
            .push(format!("{DNS_NAMESPACE}/{AKS_CUSTOM_CONFIGMAP}"));
    }

    let stub_changed = update_configmap(&configmaps, KUBE_DNS_CONFIGMAP, |cm| {
        let Some(current) = data_value(cm, STUB_DOMAINS_KEY) else {
            return Ok(Edit::Keep);
        };
        let next = stub::without_entry(current).map_err(|source| Error::StubDomains { source })?;
        if next.as_deref() == Some(current) {
            return Ok(Edit::Keep);
        }
        let next_cm = with_data(cm, STUB_DOMAINS_KEY, next);
        let ours = cm.annotations().contains_key(CREATED_BY_ANNOTATION);
        let empty = next_cm.data.as_ref().is_none_or(BTreeMap::is_empty)
            && next_cm.binary_data.as_ref().is_none_or(BTreeMap::is_empty);
        Ok(if ours && empty {
            Edit::Delete
        } else {
            Edit::Replace(Box::new(next_cm))
        })
    })
    .await?
    .unwrap_or(false);
    if stub_changed {
        done.configmaps
            .push(format!("{DNS_NAMESPACE}/{KUBE_DNS_CONFIGMAP}"));
    }

    if corefile_changed || aks_changed {
        if let Some(c) = &coredns {
            // Dropping our annotation both rolls the pods and leaves the Deployment as before
            // prepare; should it be gone already, a fresh hash rolls them instead.
            let api: Api<Deployment> = Api::namespaced(client.clone(), DNS_NAMESPACE);
            let annotated = api
                .get(&c.deployment)
                .await
                .map_err(api_err("read", "deployment", DNS_NAMESPACE, &c.deployment))?
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .is_some_and(|a| a.contains_key(RESTART_ANNOTATION));
            let value = if annotated {
                None
            } else {
                Some(content_hash(written.as_deref().unwrap_or_default()))
            };
            restart(&client, &c.deployment, value).await?;
            done.restarted = true;
        }
    }

    done.services_deleted = delete_shadow_services(&client, &opts.mesh_namespace).await?;
    info!(configmaps = ?done.configmaps, restarted = done.restarted, services = done.services_deleted.len(), "Cluster DNS cleaned up");
    Ok(done)
}

/// Deletes the shadow services: Services in the mesh namespace that [`naming::is_own_shadow`]
/// recognises (Services have no delete-collection, so one by one).
async fn delete_shadow_services(client: &Client, namespace: &str) -> Result<Vec<String>> {
    let api: Api<Service> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}");
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(api_err("list", "services", namespace, &selector))?;
    let mut deleted = Vec::new();
    for svc in list.items {
        let name = svc.name_any();
        if !naming::is_own_shadow(&name, svc.metadata.labels.as_ref()) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            // Deleted by someone else meanwhile: the goal is reached.
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err("delete", "service", namespace, &name)(e)),
        }
        deleted.push(format!("{namespace}/{name}"));
    }
    Ok(deleted)
}

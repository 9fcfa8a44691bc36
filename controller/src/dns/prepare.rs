//! `prepare`: the mesh zone written where the cluster DNS reads it (the Corefile, AKS's
//! `coredns-custom`, or a kube-dns stub domain), CoreDNS rolled when it changed.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tracing::{info, warn};

use super::configmap::{
    api_err, content_hash, data_value, remove_aks_key, remove_corefile_section, restart,
    update_configmap, with_data, Edit,
};
use super::discover::{discover, CoreDns, DnsServer};
use super::{
    corefile, stub, DnsOptions, Error, Prepared, Result, Target, AKS_CUSTOM_CONFIGMAP,
    AKS_CUSTOM_KEY, COREFILE_KEY, CREATED_BY_ANNOTATION, DNS_NAMESPACE, KUBE_DNS_CONFIGMAP,
    STUB_DOMAINS_KEY,
};

/// Makes `<service>.<namespace>.maille.mesh` resolve through the cluster DNS. Idempotent:
/// when everything is already in place nothing is written and CoreDNS is not restarted.
pub async fn prepare(client: Client, opts: &DnsOptions) -> Result<Prepared> {
    opts.validate()?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), DNS_NAMESPACE);
    let prepared = match discover(&client, opts).await? {
        DnsServer::CoreDns(coredns) => {
            prepare_coredns(&client, &configmaps, opts, &coredns).await?
        }
        DnsServer::KubeDns => prepare_kube_dns(&client, &configmaps, opts).await?,
    };
    info!(target_ = ?prepared.target, changed = prepared.changed, restarted = prepared.restarted, note = prepared.note.as_deref().unwrap_or(""), "Cluster DNS prepared");
    Ok(prepared)
}

async fn prepare_coredns(
    client: &Client,
    configmaps: &Api<ConfigMap>,
    opts: &DnsOptions,
    coredns: &CoreDns,
) -> Result<Prepared> {
    let section = corefile::managed_section(&opts.block_params(coredns.version));
    // AKS imports every `*.server` key of coredns-custom as extra server blocks and reverts
    // any edit of its own Corefile, so the block goes there, but only when CoreDNS really reads
    // it: a stray coredns-custom (say, on kubeadm) would take the block and resolve nothing.
    let custom = configmaps
        .get_opt(AKS_CUSTOM_CONFIGMAP)
        .await
        .map_err(api_err(
            "read",
            "configmap",
            DNS_NAMESPACE,
            AKS_CUSTOM_CONFIGMAP,
        ))?;
    let mut note = None;
    if custom.is_some() {
        if let Some(why) = aks_unused(configmaps, coredns).await? {
            warn!(configmap = %format!("{DNS_NAMESPACE}/{AKS_CUSTOM_CONFIGMAP}"), reason = %why, "Not using the AKS custom ConfigMap: CoreDNS does not read it; writing the Corefile instead");
            note = Some(format!(
                "ConfigMap {DNS_NAMESPACE}/{AKS_CUSTOM_CONFIGMAP} exists but CoreDNS does not read it: {why}; the Corefile was used"
            ));
            // A block left there by an earlier prepare would become a second `maille.mesh`
            // server (CoreDNS refuses to start) if the ConfigMap were imported later.
            remove_aks_key(configmaps).await?;
        }
    }
    let aks = if note.is_some() {
        None
    } else {
        update_configmap(configmaps, AKS_CUSTOM_CONFIGMAP, |cm| {
            Ok(
                if data_value(cm, AKS_CUSTOM_KEY) == Some(section.as_str()) {
                    Edit::Keep
                } else {
                    Edit::Replace(Box::new(with_data(
                        cm,
                        AKS_CUSTOM_KEY,
                        Some(section.clone()),
                    )))
                },
            )
        })
        .await?
    };
    let (target, changed, hashed) = match aks {
        Some(custom_changed) => {
            // A section left in the main Corefile by an earlier prepare (before coredns-custom
            // existed) would be a second `maille.mesh` server block: CoreDNS refuses to start.
            let (stale_removed, _) =
                remove_corefile_section(configmaps, &coredns.configmap).await?;
            (
                Target::AksCustom {
                    version: coredns.version,
                },
                custom_changed || stale_removed,
                section.clone(),
            )
        }
        None => {
            let mut written = String::new();
            let changed = update_configmap(configmaps, &coredns.configmap, |cm| {
                let current = data_value(cm, COREFILE_KEY).ok_or_else(|| Error::NoCorefile {
                    configmap: coredns.configmap.clone(),
                    deployment: coredns.deployment.clone(),
                    what: "has no data.Corefile",
                })?;
                let next =
                    corefile::apply(current, &section).map_err(|source| Error::Corefile {
                        configmap: coredns.configmap.clone(),
                        key: COREFILE_KEY,
                        source,
                    })?;
                written.clone_from(&next);
                Ok(if next == current {
                    Edit::Keep
                } else {
                    Edit::Replace(Box::new(with_data(cm, COREFILE_KEY, Some(next))))
                })
            })
            .await?
            .ok_or_else(|| Error::NoCorefile {
                configmap: coredns.configmap.clone(),
                deployment: coredns.deployment.clone(),
                what: "not found",
            })?;
            (
                Target::Corefile {
                    configmap: coredns.configmap.clone(),
                    version: coredns.version,
                },
                changed,
                written,
            )
        }
    };
    if changed {
        restart(client, &coredns.deployment, Some(content_hash(&hashed))).await?;
    }
    Ok(Prepared {
        target,
        changed,
        restarted: changed,
        note,
    })
}

/// Why CoreDNS would not read a `maille.server` key of `coredns-custom`, if it would not: the
/// Deployment must mount that ConfigMap in the coredns container, and the Corefile must import
/// `*.server` files from there at its top level (as AKS's does: `import custom/*.server`).
async fn aks_unused(configmaps: &Api<ConfigMap>, coredns: &CoreDns) -> Result<Option<String>> {
    let dir = match &coredns.custom_mount {
        Ok(dir) => dir,
        Err(why) => return Ok(Some(why.clone())),
    };
    let main = configmaps
        .get_opt(&coredns.configmap)
        .await
        .map_err(api_err(
            "read",
            "configmap",
            DNS_NAMESPACE,
            &coredns.configmap,
        ))?;
    let text = main
        .as_ref()
        .and_then(|cm| data_value(cm, COREFILE_KEY))
        .unwrap_or("");
    if corefile::imports_file(text, &coredns.corefile_dir, dir, AKS_CUSTOM_KEY) {
        Ok(None)
    } else {
        Ok(Some(format!(
            "the Corefile (ConfigMap {DNS_NAMESPACE}/{}, key {COREFILE_KEY}) has no top-level import of {AKS_CUSTOM_KEY} from {dir}, where the Deployment mounts {AKS_CUSTOM_CONFIGMAP}",
            coredns.configmap
        )))
    }
}

async fn prepare_kube_dns(
    client: &Client,
    configmaps: &Api<ConfigMap>,
    opts: &DnsOptions,
) -> Result<Prepared> {
    let services: Api<Service> = Api::namespaced(client.clone(), &opts.mesh_namespace);
    let service_err = |what: String| Error::DnsService {
        namespace: opts.mesh_namespace.clone(),
        name: opts.dns_service.clone(),
        what,
    };
    let svc = services
        .get_opt(&opts.dns_service)
        .await
        .map_err(api_err(
            "read",
            "service",
            &opts.mesh_namespace,
            &opts.dns_service,
        ))?
        .ok_or_else(|| service_err("not found".into()))?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .filter(|ip| !ip.is_empty() && ip != "None")
        .ok_or_else(|| service_err("field spec.clusterIP: has no ClusterIP (headless?)".into()))?;

    let changed = update_configmap(configmaps, KUBE_DNS_CONFIGMAP, |cm| {
        let current = data_value(cm, STUB_DOMAINS_KEY);
        let next =
            stub::with_entry(current, &ip).map_err(|source| Error::StubDomains { source })?;
        Ok(if Some(next.as_str()) == current {
            Edit::Keep
        } else {
            Edit::Replace(Box::new(with_data(cm, STUB_DOMAINS_KEY, Some(next))))
        })
    })
    .await?;
    let changed = match changed {
        Some(changed) => changed,
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(KUBE_DNS_CONFIGMAP.into()),
                    namespace: Some(DNS_NAMESPACE.into()),
                    annotations: Some(BTreeMap::from([(
                        CREATED_BY_ANNOTATION.to_string(),
                        "maille-controller prepare".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([(
                    STUB_DOMAINS_KEY.to_string(),
                    stub::with_entry(None, &ip).map_err(|source| Error::StubDomains { source })?,
                )])),
                ..Default::default()
            };
            configmaps
                .create(&PostParams::default(), &cm)
                .await
                .map_err(api_err(
                    "create",
                    "configmap",
                    DNS_NAMESPACE,
                    KUBE_DNS_CONFIGMAP,
                ))?;
            true
        }
    };
    // kube-dns watches its ConfigMap and applies stubDomains without a restart.
    Ok(Prepared {
        target: Target::KubeDnsStub { nameserver: ip },
        changed,
        restarted: false,
        note: None,
    })
}

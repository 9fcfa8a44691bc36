//! Which cluster DNS runs: the CoreDNS Deployment (its version, the ConfigMap and folders it
//! mounts) or kube-dns, read from the Deployments in kube-system.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::configmap::api_err;
use super::version::{Version, MIN_SUPPORTED};
use super::{
    DnsOptions, Error, Result, AKS_CUSTOM_CONFIGMAP, COREDNS_DEPLOYMENT, COREFILE_KEY,
    DNS_NAMESPACE, KUBE_DNS_SELECTOR,
};

/// The running CoreDNS.
#[derive(Debug, Clone)]
pub(super) struct CoreDns {
    pub(super) deployment: String,
    pub(super) configmap: String,
    pub(super) version: Version,
    /// Where the coredns container sees its Corefile's folder (relative imports start there).
    pub(super) corefile_dir: String,
    /// Where the coredns container sees AKS's `coredns-custom`, or why it does not.
    pub(super) custom_mount: Result<String, String>,
}

/// The folder the coredns container mounts a ConfigMap at, or why it does not.
fn configmap_mount(d: &Deployment, c: &Container, configmap: &str) -> Result<String, String> {
    let deployment = format!("{DNS_NAMESPACE}/{}", d.name_any());
    let volume = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.as_ref())
        .into_iter()
        .flatten()
        .find(|v| v.config_map.as_ref().is_some_and(|cm| cm.name == configmap))
        .ok_or_else(|| {
            format!("the Deployment {deployment} has no volume from ConfigMap {configmap}")
        })?;
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .map(|m| m.mount_path.clone())
        .ok_or_else(|| {
            format!(
                "container {} of the Deployment {deployment} does not mount volume {} (ConfigMap {configmap})",
                c.name, volume.name
            )
        })
}

#[derive(Debug, Clone)]
pub(super) enum DnsServer {
    CoreDns(CoreDns),
    KubeDns,
}

/// Last path segment of an image reference, without tag or digest.
fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

fn containers(d: &Deployment) -> &[Container] {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.as_slice())
        .unwrap_or_default()
}

fn coredns_container(d: &Deployment) -> Option<&Container> {
    containers(d)
        .iter()
        .find(|c| c.name == "coredns" || c.image.as_deref().map(image_name) == Some("coredns"))
}

fn is_kube_dns(d: &Deployment) -> bool {
    containers(d).iter().any(|c| {
        c.name == "kubedns"
            || c.image
                .as_deref()
                .is_some_and(|i| image_name(i).starts_with("k8s-dns-kube-dns"))
    })
}

/// The ConfigMap the CoreDNS Deployment mounts its Corefile from.
fn corefile_configmap(d: &Deployment) -> String {
    let volumes = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.volumes.as_ref());
    let maps: Vec<_> = volumes
        .into_iter()
        .flatten()
        .filter_map(|v| v.config_map.as_ref())
        .collect();
    maps.iter()
        .find(|cm| {
            cm.items
                .iter()
                .flatten()
                .any(|item| item.key == COREFILE_KEY)
        })
        .or_else(|| maps.iter().find(|cm| cm.name != AKS_CUSTOM_CONFIGMAP))
        .map(|cm| cm.name.clone())
        .unwrap_or_else(|| COREDNS_DEPLOYMENT.to_string())
}

async fn dns_deployments(client: &Client) -> Result<Vec<Deployment>> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), DNS_NAMESPACE);
    let mut found = api
        .list(&ListParams::default().labels(KUBE_DNS_SELECTOR))
        .await
        .map_err(api_err(
            "list",
            "deployments",
            DNS_NAMESPACE,
            KUBE_DNS_SELECTOR,
        ))?
        .items;
    if !found.iter().any(|d| d.name_any() == COREDNS_DEPLOYMENT) {
        let by_name = api.get_opt(COREDNS_DEPLOYMENT).await.map_err(api_err(
            "read",
            "deployment",
            DNS_NAMESPACE,
            COREDNS_DEPLOYMENT,
        ))?;
        found.extend(by_name);
    }
    found.sort_by_key(|d| d.name_any());
    Ok(found)
}

pub(super) async fn discover(client: &Client, opts: &DnsOptions) -> Result<DnsServer> {
    let deployments = dns_deployments(client).await?;
    if let Some((d, c)) = deployments
        .iter()
        .find_map(|d| coredns_container(d).map(|c| (d, c)))
    {
        let deployment = d.name_any();
        let image = c.image.clone().unwrap_or_default();
        let version = match opts.coredns_version.or_else(|| Version::from_image(&image)) {
            Some(v) => v,
            None => {
                return Err(Error::UnknownVersion {
                    deployment,
                    container: c.name.clone(),
                    image,
                })
            }
        };
        if version < MIN_SUPPORTED {
            return Err(Error::Unsupported {
                deployment,
                version,
            });
        }
        let configmap = corefile_configmap(d);
        return Ok(DnsServer::CoreDns(CoreDns {
            corefile_dir: configmap_mount(d, c, &configmap)
                .unwrap_or_else(|_| "/etc/coredns".to_string()),
            custom_mount: configmap_mount(d, c, AKS_CUSTOM_CONFIGMAP),
            configmap,
            deployment,
            version,
        }));
    }
    if deployments.iter().any(is_kube_dns) {
        return Ok(DnsServer::KubeDns);
    }
    Err(Error::NoDnsServer)
}

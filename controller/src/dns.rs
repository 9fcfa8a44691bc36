//! Cluster DNS for mesh names: `prepare` makes `<service>.<namespace>.maille.mesh` resolve to
//! the shadow service (CoreDNS Corefile, AKS `coredns-custom`, or kube-dns `stubDomains`) and
//! `cleanup` takes exactly that away again, together with the shadow services.

pub mod corefile;
pub mod stub;
pub mod version;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Service};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tracing::{debug, info, warn};

use crate::naming::{self, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use corefile::BlockParams;
use version::{Version, MIN_SUPPORTED};

/// Namespace of the cluster DNS server.
pub const DNS_NAMESPACE: &str = "kube-system";
/// Name of the CoreDNS Deployment (when it lacks the `k8s-app=kube-dns` label).
pub const COREDNS_DEPLOYMENT: &str = "coredns";
/// Label selecting the cluster DNS Deployment (kube-dns and CoreDNS alike).
pub const KUBE_DNS_SELECTOR: &str = "k8s-app=kube-dns";
/// ConfigMap whose `*.server` keys AKS imports into CoreDNS.
pub const AKS_CUSTOM_CONFIGMAP: &str = "coredns-custom";
/// Our key in [`AKS_CUSTOM_CONFIGMAP`].
pub const AKS_CUSTOM_KEY: &str = "maille.server";
/// Key of the Corefile in the CoreDNS ConfigMap.
pub const COREFILE_KEY: &str = "Corefile";
/// ConfigMap kube-dns reads its `stubDomains` from.
pub const KUBE_DNS_CONFIGMAP: &str = "kube-dns";
/// Key of the stub domains in [`KUBE_DNS_CONFIGMAP`].
pub const STUB_DOMAINS_KEY: &str = "stubDomains";
/// Pod-template annotation on CoreDNS whose change rolls its pods: a hash of the DNS
/// configuration Maille wrote.
pub const RESTART_ANNOTATION: &str = "maille.io/dns-config-hash";
/// Annotation on a kube-dns ConfigMap that `prepare` created (so `cleanup` may delete it).
pub const CREATED_BY_ANNOTATION: &str = "maille.io/created-by";

/// Flags of `prepare` and `cleanup`.
#[derive(Debug, Clone, clap::Args)]
pub struct DnsArgs {
    /// Namespace Maille is installed in (where the shadow services live).
    #[arg(long = "namespace", env = "MAILLE_NAMESPACE", default_value = "maille")]
    pub namespace: String,
    /// The cluster's DNS domain.
    #[arg(long, env = "MAILLE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Service (in --namespace) of the CoreDNS the chart deploys for kube-dns clusters.
    #[arg(long, env = "MAILLE_DNS_SERVICE", default_value = "maille-coredns")]
    pub dns_service: String,
    /// CoreDNS version to write for, when its image tag does not say (e.g. pinned by digest).
    #[arg(long, env = "MAILLE_COREDNS_VERSION")]
    pub coredns_version: Option<Version>,
    /// Kubeconfig file (default: in-cluster config, then $KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "MAILLE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

impl DnsArgs {
    /// The library options these flags stand for.
    pub fn options(&self) -> DnsOptions {
        DnsOptions {
            mesh_namespace: self.namespace.clone(),
            cluster_domain: self.cluster_domain.clone(),
            dns_service: self.dns_service.clone(),
            coredns_version: self.coredns_version,
        }
    }
}

/// What `prepare` and `cleanup` need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOptions {
    /// Namespace of the shadow services.
    pub mesh_namespace: String,
    /// The cluster's DNS domain, `cluster.local` unless the cluster says otherwise.
    pub cluster_domain: String,
    /// Service in the mesh namespace fronting the chart's CoreDNS (kube-dns clusters only).
    pub dns_service: String,
    /// Overrides the version read from the CoreDNS image.
    pub coredns_version: Option<Version>,
}

impl Default for DnsOptions {
    fn default() -> Self {
        Self {
            mesh_namespace: "maille".into(),
            cluster_domain: "cluster.local".into(),
            dns_service: "maille-coredns".into(),
            coredns_version: None,
        }
    }
}

/// Failures of `prepare` and `cleanup`. Nothing is written after the first one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value that cannot appear in a DNS name or regex.
    #[error("--{flag} {value:?}: {expected}")]
    BadOption {
        /// Flag name.
        flag: &'static str,
        /// Value given.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
    /// Neither CoreDNS nor kube-dns was found.
    #[error("no cluster DNS found in {DNS_NAMESPACE}: no Deployment labelled {KUBE_DNS_SELECTOR} or named {COREDNS_DEPLOYMENT} runs a coredns or kubedns container")]
    NoDnsServer,
    /// The CoreDNS image tag does not carry a version.
    #[error("deployment {DNS_NAMESPACE}/{deployment}: field spec.template.spec.containers[{container}].image: cannot read a CoreDNS version from {image:?}; expected a tag like v1.11.1, or pass --coredns-version")]
    UnknownVersion {
        /// CoreDNS Deployment.
        deployment: String,
        /// Container name.
        container: String,
        /// Its image.
        image: String,
    },
    /// CoreDNS older than Maille's syntax was checked against.
    #[error("deployment {DNS_NAMESPACE}/{deployment}: CoreDNS {version} is older than {MIN_SUPPORTED}, the oldest version Maille writes configuration for; upgrade CoreDNS")]
    Unsupported {
        /// CoreDNS Deployment.
        deployment: String,
        /// Its version.
        version: Version,
    },
    /// The CoreDNS ConfigMap is missing or has no Corefile.
    #[error("configmap {DNS_NAMESPACE}/{configmap}: {what} (mounted by deployment {DNS_NAMESPACE}/{deployment})")]
    NoCorefile {
        /// ConfigMap name.
        configmap: String,
        /// CoreDNS Deployment.
        deployment: String,
        /// What is missing.
        what: &'static str,
    },
    /// The Corefile's Maille markers are damaged or a foreign `maille.mesh` block exists.
    #[error("configmap {DNS_NAMESPACE}/{configmap}: field data.{key}: {source}")]
    Corefile {
        /// ConfigMap name.
        configmap: String,
        /// Data key.
        key: &'static str,
        /// What is wrong.
        source: corefile::Error,
    },
    /// kube-dns `stubDomains` is not a JSON object.
    #[error(
        "configmap {DNS_NAMESPACE}/{KUBE_DNS_CONFIGMAP}: field data.{STUB_DOMAINS_KEY}: {source}"
    )]
    StubDomains {
        /// What is wrong.
        source: stub::Error,
    },
    /// The chart's CoreDNS Service for kube-dns clusters is missing or has no ClusterIP.
    #[error("service {namespace}/{name}: {what}; kube-dns forwards {zone} to it, and the chart deploys it (check --dns-service and --namespace)", zone = corefile::MESH_ZONE)]
    DnsService {
        /// Mesh namespace.
        namespace: String,
        /// Service name.
        name: String,
        /// What is wrong.
        what: String,
    },
    /// A Kubernetes API call failed.
    #[error("{action} {object}: {source}")]
    Api {
        /// What was being done (`read`, `update`, ...).
        action: &'static str,
        /// `kind namespace/name`.
        object: String,
        /// The client error.
        source: kube::Error,
    },
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// Someone else kept changing the object between our read and our write.
    #[error("{object}: changed by someone else on each of {attempts} attempts; run again")]
    Conflict {
        /// `kind namespace/name`.
        object: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where `prepare` put the mesh zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A server block in the CoreDNS Corefile.
    Corefile {
        /// The ConfigMap holding it.
        configmap: String,
        /// CoreDNS version written for.
        version: Version,
    },
    /// A key of AKS's `coredns-custom` ConfigMap.
    AksCustom {
        /// CoreDNS version written for.
        version: Version,
    },
    /// A kube-dns stub domain pointing at the chart's CoreDNS.
    KubeDnsStub {
        /// The ClusterIP the stub domain points at.
        nameserver: String,
    },
}

/// What `prepare` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Where the configuration lives.
    pub target: Target,
    /// Whether anything was written.
    pub changed: bool,
    /// Whether CoreDNS pods were rolled to load it.
    pub restarted: bool,
    /// Why a path that looked possible was not taken (AKS's `coredns-custom` exists but CoreDNS
    /// does not read it), when that happened.
    pub note: Option<String>,
}

/// What `cleanup` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanedUp {
    /// ConfigMaps (`namespace/name`) from which Maille's configuration was removed.
    pub configmaps: Vec<String>,
    /// Whether CoreDNS pods were rolled to drop it.
    pub restarted: bool,
    /// Shadow services deleted (`namespace/name`).
    pub services_deleted: Vec<String>,
}

impl DnsOptions {
    /// Refuses values that would produce a broken regex or name.
    pub fn validate(&self) -> Result<()> {
        if !config_model::is_dns_label(&self.mesh_namespace) {
            return Err(Error::BadOption {
                flag: "namespace",
                value: self.mesh_namespace.clone(),
                expected: "a namespace name: lowercase letters, digits and '-', at most 63",
            });
        }
        if !config_model::is_dns_label(&self.dns_service) {
            return Err(Error::BadOption {
                flag: "dns-service",
                value: self.dns_service.clone(),
                expected: "a service name: lowercase letters, digits and '-', at most 63",
            });
        }
        let domain = self.cluster_domain.trim_end_matches('.');
        if domain.len() > 253 || !domain.split('.').all(config_model::is_dns_label) {
            return Err(Error::BadOption {
                flag: "cluster-domain",
                value: self.cluster_domain.clone(),
                expected: "a DNS domain such as cluster.local",
            });
        }
        Ok(())
    }

    fn block_params(&self, version: Version) -> BlockParams<'_> {
        BlockParams {
            mesh_namespace: &self.mesh_namespace,
            cluster_domain: self.cluster_domain.trim_end_matches('.'),
            family: version.family(),
        }
    }
}

/// A client from a kubeconfig file, or the default configuration (in-cluster first).
pub async fn kube_client(kubeconfig: Option<&std::path::Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Kubeconfig(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Kubeconfig(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| Error::Kubeconfig(e.to_string()))
}

fn api_err(
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

/// The running CoreDNS.
#[derive(Debug, Clone)]
struct CoreDns {
    deployment: String,
    configmap: String,
    version: Version,
    /// Where the coredns container sees its Corefile's folder (relative imports start there).
    corefile_dir: String,
    /// Where the coredns container sees AKS's `coredns-custom`, or why it does not.
    custom_mount: Result<String, String>,
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
enum DnsServer {
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

async fn discover(client: &Client, opts: &DnsOptions) -> Result<DnsServer> {
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

/// Outcome of an [`update_configmap`] edit.
enum Edit {
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
async fn update_configmap(
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

fn data_value<'a>(cm: &'a ConfigMap, key: &str) -> Option<&'a str> {
    cm.data.as_ref()?.get(key).map(String::as_str)
}

fn with_data(cm: &ConfigMap, key: &str, value: Option<String>) -> ConfigMap {
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
async fn restart(client: &Client, deployment: &str, value: Option<String>) -> Result<()> {
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
            update_configmap(configmaps, AKS_CUSTOM_CONFIGMAP, |cm| {
                Ok(if data_value(cm, AKS_CUSTOM_KEY).is_some() {
                    Edit::Replace(Box::new(with_data(cm, AKS_CUSTOM_KEY, None)))
                } else {
                    Edit::Keep
                })
            })
            .await?;
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
            let stale_removed = update_configmap(configmaps, &coredns.configmap, |cm| {
                let Some(current) = data_value(cm, COREFILE_KEY) else {
                    return Ok(Edit::Keep);
                };
                let next = corefile::remove(current).map_err(|source| Error::Corefile {
                    configmap: coredns.configmap.clone(),
                    key: COREFILE_KEY,
                    source,
                })?;
                Ok(if next == current {
                    Edit::Keep
                } else {
                    Edit::Replace(Box::new(with_data(cm, COREFILE_KEY, Some(next))))
                })
            })
            .await?
            .unwrap_or(false);
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

    let mut written = None;
    let corefile_changed = update_configmap(&configmaps, &corefile_map, |cm| {
        let Some(current) = data_value(cm, COREFILE_KEY) else {
            return Ok(Edit::Keep);
        };
        let next = corefile::remove(current).map_err(|source| Error::Corefile {
            configmap: corefile_map.clone(),
            key: COREFILE_KEY,
            source,
        })?;
        written = Some(next.clone());
        Ok(if next == current {
            Edit::Keep
        } else {
            Edit::Replace(Box::new(with_data(cm, COREFILE_KEY, Some(next))))
        })
    })
    .await?
    .unwrap_or(false);
    if corefile_changed {
        done.configmaps
            .push(format!("{DNS_NAMESPACE}/{corefile_map}"));
    }

    let aks_changed = update_configmap(&configmaps, AKS_CUSTOM_CONFIGMAP, |cm| {
        Ok(if data_value(cm, AKS_CUSTOM_KEY).is_some() {
            Edit::Replace(Box::new(with_data(cm, AKS_CUSTOM_KEY, None)))
        } else {
            Edit::Keep
        })
    })
    .await?
    .unwrap_or(false);
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

//! Cluster DNS for mesh names: `prepare` makes `<service>.<namespace>.maille.mesh` resolve to
//! the shadow service (CoreDNS Corefile, AKS `coredns-custom`, or kube-dns `stubDomains`) and
//! `cleanup` takes exactly that away again, together with the shadow services. This module
//! holds the names and outcomes; the steps are in its submodules.

mod cleanup;
mod configmap;
pub mod corefile;
mod discover;
mod options;
mod prepare;
pub mod stub;
pub mod version;

#[cfg(test)]
mod tests;

pub use cleanup::cleanup;
pub(crate) use configmap::content_hash;
pub use options::{DnsArgs, DnsOptions};
pub use prepare::prepare;

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

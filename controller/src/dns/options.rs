//! The flags of `prepare` and `cleanup` and the options they give, checked before any call.

use std::path::PathBuf;

use super::corefile::BlockParams;
use super::version::Version;
use super::{Error, Result};

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

    pub(super) fn block_params(&self, version: Version) -> BlockParams<'_> {
        BlockParams {
            mesh_namespace: &self.mesh_namespace,
            cluster_domain: self.cluster_domain.trim_end_matches('.'),
            family: version.family(),
        }
    }
}

//! The objects translation reads, as one value: what either provider (Kubernetes watchers or a
//! manifests folder) currently holds.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::gateway::GatewayObjects;
use crate::problem::Problem;
use crate::smi::SmiObjects;

/// The current objects, shared with the provider's stores (hence `Arc`).
///
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Services of every namespace (translation applies the namespace filters).
    pub services: Vec<Arc<Service>>,
    /// `discovery.k8s.io/v1` EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Pods (their IPs and service accounts identify clients in ACL mode).
    pub pods: Vec<Arc<Pod>>,
    /// The SMI resources (TrafficTarget, HTTPRouteGroup, TCPRoute, UDPRoute, TrafficSplit).
    pub smi: SmiObjects,
    /// The Gateway API routes (HTTPRoute, GRPCRoute).
    pub gateway: GatewayObjects,
    /// Problems the provider found while reading objects (e.g. a manifests file that does not
    /// parse); translation reports them with its own.
    pub problems: Vec<Problem>,
    /// The highest resourceVersion (etcd revision) among the objects and deletions the provider
    /// had seen when it took the snapshot; 0 without a cluster. The same on every controller
    /// replica for the same cluster state, so table versions derived from it compare across
    /// replicas.
    pub revision: u64,
}

impl Snapshot {
    /// Object counts per kind, for the `maille_controller_objects_watched` gauge.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        let mut counts = vec![
            ("Service", self.services.len()),
            ("EndpointSlice", self.endpoint_slices.len()),
            ("Pod", self.pods.len()),
        ];
        counts.extend(self.smi.counts());
        counts.extend(self.gateway.counts());
        counts
    }
}

impl Snapshot {
    /// Appends the objects of `other` (used to put together the objects of several files).
    /// Kinds added to [`Snapshot`] are appended here too.
    pub fn extend_from(&mut self, other: &Snapshot) {
        self.services.extend(other.services.iter().cloned());
        self.endpoint_slices
            .extend(other.endpoint_slices.iter().cloned());
        self.pods.extend(other.pods.iter().cloned());
        self.smi.extend_from(&other.smi);
        self.gateway.extend_from(&other.gateway);
        self.problems.extend(other.problems.iter().cloned());
        self.revision = self.revision.max(other.revision);
    }
}

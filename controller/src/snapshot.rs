//! The objects translation reads, as one value: what either provider (Kubernetes watchers or a
//! manifests folder) currently holds.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::problem::Problem;

/// The current objects, shared with the provider's stores (hence `Arc`).
///
/// The SMI kinds are added here as further fields by the SMI support, next to the core kinds.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Services of every namespace (translation applies the namespace filters).
    pub services: Vec<Arc<Service>>,
    /// `discovery.k8s.io/v1` EndpointSlices.
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Pods (their IPs and service accounts identify clients in ACL mode).
    pub pods: Vec<Arc<Pod>>,
    /// Problems the provider found while reading objects (e.g. a manifests file that does not
    /// parse); translation reports them with its own.
    pub problems: Vec<Problem>,
}

impl Snapshot {
    /// Object counts per kind, for the `maille_controller_objects_watched` gauge.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("Service", self.services.len()),
            ("EndpointSlice", self.endpoint_slices.len()),
            ("Pod", self.pods.len()),
        ]
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
        self.problems.extend(other.problems.iter().cloned());
    }
}

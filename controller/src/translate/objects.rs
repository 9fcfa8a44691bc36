//! Stage 1 of translation: the objects of a snapshot against those of the last one, by
//! pointer. Both providers share an unchanged object between snapshots (a reflector store
//! keeps its `Arc`; the manifests provider keeps the objects of unchanged files), so what
//! changed is found without looking inside the objects, and the Services it affects are named.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::SERVICE_NAME_LABEL;
use crate::snapshot::Snapshot;

/// A Service's namespace and name.
pub(super) type Name = (String, String);

/// What changed since the last call, for the later stages.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// Services whose object or EndpointSlices changed (added, modified or removed).
    pub services: BTreeSet<Name>,
    /// Whether a Pod changed in what translation reads of it (addresses, ServiceAccount, host
    /// network, finished).
    pub pods: bool,
    /// The Pod objects gone and new since the last call (a Pod updated is in both), whether
    /// or not they differ in what translation reads.
    pub pods_went: Vec<Arc<Pod>>,
    pub pods_came: Vec<Arc<Pod>>,
    /// Whether an SMI object was added, changed or removed.
    pub smi: bool,
}

/// The objects of the last snapshot, indexed for the entry stage.
#[derive(Default)]
pub(super) struct Objects {
    services: Held<Service>,
    slices: Held<EndpointSlice>,
    pods: Held<Pod>,
    smi: Vec<usize>,
    /// Services by namespace/name (more than one only from a provider that breaks the
    /// one-object-per-name rule; the first in snapshot order is used).
    by_name: HashMap<Name, Vec<Arc<Service>>>,
    /// EndpointSlices by the namespace/name of the Service they name.
    slices_by_service: HashMap<Name, Vec<Arc<EndpointSlice>>>,
}

impl Objects {
    /// Takes in the objects of `snap`; returns what changed. Cost: one hash lookup per object,
    /// plus work in proportion to the objects that changed.
    pub fn update(&mut self, snap: &Snapshot) -> Changes {
        let mut changes = Changes::default();
        let (removed, added) = self.services.update(&snap.services);
        let mut crowded = Vec::new();
        for s in removed {
            let name = service_name(&s);
            if let Some(list) = self.by_name.get_mut(&name) {
                list.retain(|o| !Arc::ptr_eq(o, &s));
                if list.is_empty() {
                    self.by_name.remove(&name);
                }
            }
            changes.services.insert(name);
        }
        for s in added {
            let name = service_name(&s);
            let list = self.by_name.entry(name.clone()).or_default();
            list.push(s);
            if list.len() > 1 {
                crowded.push(name.clone());
            }
            changes.services.insert(name);
        }
        if !crowded.is_empty() {
            // Several objects for one name: put them in snapshot order, as a translation from
            // scratch sees them.
            let order: HashMap<usize, usize> = snap
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| (ptr(s), i))
                .collect();
            for name in crowded {
                if let Some(list) = self.by_name.get_mut(&name) {
                    list.sort_by_key(|s| order.get(&ptr(s)).copied().unwrap_or(usize::MAX));
                }
            }
        }

        let (removed, added) = self.slices.update(&snap.endpoint_slices);
        for s in removed {
            if let Some(name) = slice_service(&s) {
                if let Some(list) = self.slices_by_service.get_mut(&name) {
                    list.retain(|o| !Arc::ptr_eq(o, &s));
                    if list.is_empty() {
                        self.slices_by_service.remove(&name);
                    }
                }
                changes.services.insert(name);
            }
        }
        for s in added {
            if let Some(name) = slice_service(&s) {
                self.slices_by_service
                    .entry(name.clone())
                    .or_default()
                    .push(s);
                changes.services.insert(name);
            }
        }

        // A Pod replaced by one that reads the same (a readiness flip, a new condition) changes
        // nothing: compare what translation reads of the pods that went and came.
        let (removed, added) = self.pods.update(&snap.pods);
        let mut went: Vec<(Name, u64)> = removed.iter().map(|p| pod_fingerprint(p)).collect();
        let mut came: Vec<(Name, u64)> = added.iter().map(|p| pod_fingerprint(p)).collect();
        went.sort();
        came.sort();
        changes.pods = went != came;
        changes.pods_went = removed;
        changes.pods_came = added;

        let smi = &snap.smi;
        let smi_ptrs: Vec<usize> = (smi.traffic_targets.iter().map(ptr))
            .chain(smi.http_route_groups.iter().map(ptr))
            .chain(smi.tcp_routes.iter().map(ptr))
            .chain(smi.udp_routes.iter().map(ptr))
            .chain(smi.traffic_splits.iter().map(ptr))
            .collect();
        // Kinds are concatenated without a separator, so also compare their lengths.
        let lens = [
            smi.traffic_targets.len(),
            smi.http_route_groups.len(),
            smi.tcp_routes.len(),
            smi.udp_routes.len(),
            smi.traffic_splits.len(),
        ];
        let mut key = smi_ptrs;
        key.extend(lens);
        changes.smi = key != self.smi;
        self.smi = key;
        changes
    }

    /// The Service of this name (the first in snapshot order) and the EndpointSlices naming
    /// it.
    pub fn service(&self, name: &Name) -> Option<(&Service, &[Arc<EndpointSlice>])> {
        let svc = self.by_name.get(name)?.first()?;
        let slices = self
            .slices_by_service
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Some((svc, slices))
    }
}

fn ptr<T>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a) as usize
}

fn service_name(s: &Service) -> Name {
    (
        super::entries::meta_ns(s).to_string(),
        super::entries::meta_name(s).to_string(),
    )
}

fn slice_service(s: &EndpointSlice) -> Option<Name> {
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
    Some((ns.to_string(), svc.clone()))
}

/// What translation reads of a Pod (see `smi::PodIndex`), as its name and a hash.
fn pod_fingerprint(pod: &Pod) -> (Name, u64) {
    let name = (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    (name, crate::smi::pod_fingerprint(pod))
}

/// The objects of one kind held from the last snapshot, by address, with the call that last
/// saw each.
struct Held<K> {
    by_ptr: HashMap<usize, (Arc<K>, u64), BuildHasherDefault<PtrHasher>>,
    round: u64,
}

impl<K> Default for Held<K> {
    fn default() -> Self {
        Held {
            by_ptr: HashMap::default(),
            round: 0,
        }
    }
}

impl<K> Held<K> {
    /// Takes in the objects now held; returns those gone and those new since the last call.
    fn update(&mut self, now: &[Arc<K>]) -> (Vec<Arc<K>>, Vec<Arc<K>>) {
        self.round += 1;
        let round = self.round;
        let mut added = Vec::new();
        let mut still = 0;
        for o in now {
            match self.by_ptr.get_mut(&ptr(o)) {
                Some((_, seen)) => {
                    if *seen != round {
                        *seen = round;
                        still += 1;
                    }
                }
                None => {
                    self.by_ptr.insert(ptr(o), (o.clone(), round));
                    added.push(o.clone());
                }
            }
        }
        let mut removed = Vec::new();
        if still + added.len() < self.by_ptr.len() {
            self.by_ptr.retain(|_, (o, seen)| {
                let keep = *seen == round;
                if !keep {
                    removed.push(o.clone());
                }
                keep
            });
        }
        (removed, added)
    }
}

/// A hasher for addresses: they are already unique, so one multiplication spreads them.
#[derive(Default)]
struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64 ^ (n as u64 >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

//! Table deltas: what changed between two versions of the table, keyed by service port, and how
//! a proxy applies one to the table it holds without validating the unchanged services again.

use std::collections::HashSet;
use std::net::IpAddr;

use std::sync::Arc;

use crate::mesh::{check_workload_count, parse_workload_ip, Nodes, Workload, WorkloadSpec};
use crate::table::{Error, ServiceKey, Table};
use crate::wire::{ServiceSpec, TableDelta, TableSpec};
use crate::SCHEMA_VERSION;

/// Why a delta cannot be applied to a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The delta starts from another version than the one held: ask for the full table.
    #[error("delta starts from version {base} but the table held is version {held}")]
    Base {
        /// `baseVersion` of the delta.
        base: u64,
        /// Version of the table held.
        held: u64,
    },
    /// The delta removes a service port the table does not have: the two sides disagree.
    #[error("delta removes service {0}, which the table held does not have")]
    UnknownRemoval(ServiceKey),
    /// The same service port appears twice in the delta.
    #[error("delta names service {0} more than once")]
    Duplicate(ServiceKey),
    /// The delta removes a workload the table does not have.
    #[error("delta removes workload {0}, which the table held does not have")]
    UnknownWorkloadRemoval(String),
    /// The same workload IP appears twice in the delta.
    #[error("delta names workload {0} more than once")]
    DuplicateWorkload(String),
    /// The table the delta leads to is refused.
    #[error(transparent)]
    Invalid(#[from] Error),
}

impl ServiceSpec {
    /// The identity of this service port.
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            port: self.port,
        }
    }

    fn key_ref(&self) -> (&str, &str, u16) {
        (&self.namespace, &self.name, self.port)
    }
}

/// What differs between two versions of a table, beyond the modes (`acl`, `mtls`), which every
/// delta carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Service ports added, changed or removed, sorted.
    pub services: Vec<ServiceKey>,
    /// IPs (as written) of the workloads added, changed or removed, sorted.
    pub workloads: Vec<String>,
    /// Whether the node proxies differ.
    pub nodes: bool,
}

impl Changes {
    /// Whether nothing but perhaps the modes changed.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.workloads.is_empty() && !self.nodes
    }

    /// How many items a delta carrying these changes names (a history of changes is bounded
    /// by it).
    pub fn len(&self) -> usize {
        self.services.len() + self.workloads.len() + usize::from(self.nodes)
    }
}

/// The walk both `changed_keys` and `changed_workloads` make: the keys of the items of two
/// sorted lists that are in one only or differ.
fn sorted_diff<'a, T: PartialEq, K: Ord>(
    old: &'a [T],
    new: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> Vec<&'a T> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let order = match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) => key(a).cmp(&key(b)),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                out.push(&old[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(&new[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                if old[i] != new[j] {
                    out.push(&new[j]);
                }
                i += 1;
                j += 1;
            }
        }
    }
    out
}

impl TableSpec {
    /// Puts the services in [`ServiceKey`] order, the order a table built from deltas has,
    /// the workloads in order of their IP as written and the node proxies in order of name
    /// (the orders [`TableSpec::changes`] walks in).
    pub fn sort_services(&mut self) {
        self.services.sort_by(|a, b| a.key_ref().cmp(&b.key_ref()));
        self.workloads.sort_by(|a, b| a.ip.cmp(&b.ip));
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// What differs between `self` and `newer`; both sorted ([`TableSpec::sort_services`]).
    pub fn changes(&self, newer: &TableSpec) -> Changes {
        Changes {
            services: self.changed_keys(newer),
            workloads: self.changed_workloads(newer),
            nodes: self.nodes != newer.nodes,
        }
    }

    /// The IPs of the workloads that differ between `self` and `newer` (added, changed or
    /// removed), sorted. Both tables must be sorted ([`TableSpec::sort_services`]).
    pub fn changed_workloads(&self, newer: &TableSpec) -> Vec<String> {
        debug_assert!(self.workloads.is_sorted_by(|a, b| a.ip <= b.ip));
        debug_assert!(newer.workloads.is_sorted_by(|a, b| a.ip <= b.ip));
        sorted_diff(&self.workloads, &newer.workloads, |w| w.ip.as_str())
            .into_iter()
            .map(|w| w.ip.clone())
            .collect()
    }

    /// The delta from `older` (the version a proxy holds) to this table; both sorted.
    pub fn delta_since(&self, older: &TableSpec) -> TableDelta {
        let c = older.changes(self);
        self.delta_with(
            older.version,
            &c.services,
            c.workloads.iter().map(String::as_str),
            c.nodes,
        )
    }

    /// The keys of the service ports that differ between `self` and `newer` (added, changed or
    /// removed), sorted. Both tables must be in [`ServiceKey`] order
    /// ([`TableSpec::sort_services`]); the walk is linear and allocates only for the result.
    pub fn changed_keys(&self, newer: &TableSpec) -> Vec<ServiceKey> {
        let (old, new) = (&self.services, &newer.services);
        debug_assert!(old.is_sorted_by(|a, b| a.key_ref() <= b.key_ref()));
        debug_assert!(new.is_sorted_by(|a, b| a.key_ref() <= b.key_ref()));
        sorted_diff(old, new, ServiceSpec::key_ref)
            .into_iter()
            .map(ServiceSpec::key)
            .collect()
    }

    /// The delta from `base_version` to this table for the service ports in `keys` (those that
    /// changed since), when neither workloads nor node proxies changed: see
    /// [`TableSpec::delta_with`].
    pub fn delta_for<'a>(
        &self,
        base_version: u64,
        keys: impl IntoIterator<Item = &'a ServiceKey>,
    ) -> TableDelta {
        self.delta_with(base_version, keys, [], false)
    }

    /// The delta from `base_version` to this table for the service ports in `keys` and the
    /// workloads with the IPs in `workloads` (those that changed since): each one present here
    /// is sent whole, the others as removed; the node proxies are sent whole when `nodes`.
    /// The table must be sorted ([`TableSpec::sort_services`]).
    pub fn delta_with<'a, 'b>(
        &self,
        base_version: u64,
        keys: impl IntoIterator<Item = &'a ServiceKey>,
        workloads: impl IntoIterator<Item = &'b str>,
        nodes: bool,
    ) -> TableDelta {
        let mut delta = TableDelta {
            schema_version: self.schema_version,
            base_version,
            version: self.version,
            acl: self.acl,
            mtls: self.mtls,
            nodes: nodes.then(|| self.nodes.clone()),
            ..TableDelta::default()
        };
        for key in keys {
            let probe = (key.namespace.as_str(), key.name.as_str(), key.port);
            match self.services.binary_search_by(|s| s.key_ref().cmp(&probe)) {
                Ok(i) => delta.changed.push(self.services[i].clone()),
                Err(_) => delta.removed.push(key.clone()),
            }
        }
        for ip in workloads {
            match self.workloads.binary_search_by(|w| w.ip.as_str().cmp(ip)) {
                Ok(i) => delta.workloads_changed.push(self.workloads[i].clone()),
                Err(_) => delta.workloads_removed.push(ip.to_string()),
            }
        }
        delta
    }
}

impl Table {
    /// The table that `delta` leads to from this one. Services the delta does not name are
    /// shared with this table as they are (the same `Arc`: endpoints, options, parsed breaker
    /// expressions, compiled matches) and keep their [`ServiceId`](crate::ServiceId), but one
    /// per removal: the last service port takes the place of a removed one. The containers
    /// are shared in pieces (the service list in chunks of 64, the identity and host indexes in
    /// 256 shards): the new table copies one pointer per chunk and shard, then only the chunks
    /// and shards holding the services the delta names (and those moved), so the cost and the
    /// memory grow with the size of the delta, not the table. The new table checks the routes
    /// of the services the delta names against the others', and resolves again the backends
    /// of the services with splits or routes (checking the split graph), as
    /// [`Table::try_from`] does. Added service ports come last, in the order of the delta.
    pub fn apply_delta(&self, delta: &TableDelta) -> std::result::Result<Table, DeltaError> {
        if delta.schema_version != SCHEMA_VERSION {
            return Err(Error::SchemaVersion {
                found: delta.schema_version,
                expected: SCHEMA_VERSION,
            }
            .into());
        }
        if delta.base_version != self.version {
            return Err(DeltaError::Base {
                base: delta.base_version,
                held: self.version,
            });
        }
        let mut touched: HashSet<&ServiceKey> = HashSet::with_capacity(delta.removed.len());
        let mut removed = Vec::with_capacity(delta.removed.len());
        for key in &delta.removed {
            let Some(id) = self.service(key) else {
                return Err(DeltaError::UnknownRemoval(key.clone()));
            };
            if !touched.insert(key) {
                return Err(DeltaError::Duplicate(key.clone()));
            }
            removed.push(id);
        }
        let mut changed = Vec::with_capacity(delta.changed.len());
        let mut changed_keys: HashSet<(&str, &str, u16)> =
            HashSet::with_capacity(delta.changed.len());
        for spec in &delta.changed {
            let (ns, name, port) = spec.key_ref();
            if !changed_keys.insert((ns, name, port)) || touched.contains(&spec.key()) {
                return Err(DeltaError::Duplicate(spec.key()));
            }
            changed.push(Arc::new(spec.validate_local()?));
        }

        let nodes = match &delta.nodes {
            Some(specs) => Arc::new(Nodes::from_specs(specs)?),
            None => self.nodes.clone(),
        };
        let workloads = self.workloads_after(delta)?;
        let mut next = self.copy_for(delta.version, delta.acl, delta.mtls, nodes, workloads);
        next.apply_changes(removed, changed)?;
        Ok(next)
    }
}

impl Table {
    /// The workloads after `delta`: this table's own (shared) when it names none.
    fn workloads_after(
        &self,
        delta: &TableDelta,
    ) -> std::result::Result<Arc<crate::mesh::Workloads>, DeltaError> {
        if delta.workloads_changed.is_empty() && delta.workloads_removed.is_empty() {
            return Ok(self.workloads.clone());
        }
        let mut touched: HashSet<IpAddr> =
            HashSet::with_capacity(delta.workloads_changed.len() + delta.workloads_removed.len());
        let mut removed = Vec::with_capacity(delta.workloads_removed.len());
        for (i, ip) in delta.workloads_removed.iter().enumerate() {
            let addr = parse_workload_ip(
                &format!("workload {}", crate::cut::cut(ip)),
                &format!("workloadsRemoved[{i}]"),
                ip,
            )?;
            if self.workloads.get(addr).is_none() {
                return Err(DeltaError::UnknownWorkloadRemoval(addr.to_string()));
            }
            if !touched.insert(addr) {
                return Err(DeltaError::DuplicateWorkload(addr.to_string()));
            }
            removed.push(addr);
        }
        let mut changed = Vec::with_capacity(delta.workloads_changed.len());
        for (i, spec) in delta.workloads_changed.iter().enumerate() {
            let w = Workload::from_spec(&format!("workloadsChanged[{i}]"), spec)?;
            if !touched.insert(w.ip) {
                return Err(DeltaError::DuplicateWorkload(w.ip.to_string()));
            }
            changed.push(w);
        }
        let mut workloads = (*self.workloads).clone();
        for ip in removed {
            workloads.remove(ip);
        }
        for w in changed {
            workloads.insert(w);
        }
        check_workload_count(workloads.len())?;
        Ok(Arc::new(workloads))
    }
}

/// Applies a delta to a table in wire form (what a test or a simulated proxy holds): the
/// services of `delta.changed` replace or join those of `spec`, those of `delta.removed`
/// leave, and the result is in [`ServiceKey`] order. Checks only the base version.
pub fn apply_to_spec(
    spec: &mut TableSpec,
    delta: &TableDelta,
) -> std::result::Result<(), DeltaError> {
    if delta.base_version != spec.version {
        return Err(DeltaError::Base {
            base: delta.base_version,
            held: spec.version,
        });
    }
    let gone: HashSet<(&str, &str, u16)> = delta
        .removed
        .iter()
        .map(|k| (k.namespace.as_str(), k.name.as_str(), k.port))
        .chain(delta.changed.iter().map(ServiceSpec::key_ref))
        .collect();
    let mut services: Vec<ServiceSpec> = std::mem::take(&mut spec.services)
        .into_iter()
        .filter(|s| !gone.contains(&s.key_ref()))
        .collect();
    services.extend(delta.changed.iter().cloned());
    spec.services = services;
    let gone: HashSet<&str> = delta
        .workloads_removed
        .iter()
        .map(String::as_str)
        .chain(delta.workloads_changed.iter().map(|w| w.ip.as_str()))
        .collect();
    let mut workloads: Vec<WorkloadSpec> = std::mem::take(&mut spec.workloads)
        .into_iter()
        .filter(|w| !gone.contains(w.ip.as_str()))
        .collect();
    workloads.extend(delta.workloads_changed.iter().cloned());
    spec.workloads = workloads;
    if let Some(nodes) = &delta.nodes {
        spec.nodes = nodes.clone();
    }
    spec.sort_services();
    spec.version = delta.version;
    spec.acl = delta.acl;
    spec.mtls = delta.mtls;
    spec.schema_version = delta.schema_version;
    Ok(())
}

#[cfg(test)]
mod tests;

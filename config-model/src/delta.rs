//! Table deltas: what changed between two versions of the table, keyed by service port, and how
//! a proxy applies one to the table it holds without validating the unchanged services again.

use std::collections::HashSet;

use std::sync::Arc;

use crate::table::{Builder, Error, Service, ServiceKey, Table};
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

impl TableSpec {
    /// Puts the services in [`ServiceKey`] order, the order a table built from deltas has.
    pub fn sort_services(&mut self) {
        self.services.sort_by(|a, b| a.key_ref().cmp(&b.key_ref()));
    }

    /// The keys of the service ports that differ between `self` and `newer` (added, changed or
    /// removed), sorted. Both tables must be in [`ServiceKey`] order
    /// ([`TableSpec::sort_services`]); the walk is linear and allocates only for the result.
    pub fn changed_keys(&self, newer: &TableSpec) -> Vec<ServiceKey> {
        let (old, new) = (&self.services, &newer.services);
        debug_assert!(old.is_sorted_by(|a, b| a.key_ref() <= b.key_ref()));
        debug_assert!(new.is_sorted_by(|a, b| a.key_ref() <= b.key_ref()));
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            let order = match (old.get(i), new.get(j)) {
                (Some(a), Some(b)) => a.key_ref().cmp(&b.key_ref()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    out.push(old[i].key());
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    out.push(new[j].key());
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    if old[i] != new[j] {
                        out.push(new[j].key());
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        out
    }

    /// The delta from `base_version` to this table for the service ports in `keys` (those that
    /// changed since): each one present here is sent whole, the others as removed. The
    /// services must be in [`ServiceKey`] order.
    pub fn delta_for<'a>(
        &self,
        base_version: u64,
        keys: impl IntoIterator<Item = &'a ServiceKey>,
    ) -> TableDelta {
        let mut delta = TableDelta {
            schema_version: self.schema_version,
            base_version,
            version: self.version,
            acl: self.acl,
            ..TableDelta::default()
        };
        for key in keys {
            let probe = (key.namespace.as_str(), key.name.as_str(), key.port);
            match self.services.binary_search_by(|s| s.key_ref().cmp(&probe)) {
                Ok(i) => delta.changed.push(self.services[i].clone()),
                Err(_) => delta.removed.push(key.clone()),
            }
        }
        delta
    }
}

impl Table {
    /// The table that `delta` leads to from this one. Services the delta does not name are
    /// shared with this table as they are (the same `Arc`: endpoints, options, parsed breaker
    /// expressions, compiled matches), so the cost grows with the size of the delta, not of the
    /// table, apart from re-indexing; the new table checks the routes and splits of every
    /// service as a whole, as [`Table::try_from`] does. The services of the result are in
    /// [`ServiceKey`] order.
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
        let mut touched: HashSet<ServiceKey> =
            HashSet::with_capacity(delta.changed.len() + delta.removed.len());
        for key in &delta.removed {
            if self.service(key).is_none() {
                return Err(DeltaError::UnknownRemoval(key.clone()));
            }
            if !touched.insert(key.clone()) {
                return Err(DeltaError::Duplicate(key.clone()));
            }
        }
        for s in &delta.changed {
            let key = s.key();
            if touched.contains(&key) {
                return Err(DeltaError::Duplicate(key));
            }
            touched.insert(key);
        }

        let mut services: Vec<Arc<Service>> = Vec::with_capacity(self.len() + delta.changed.len());
        for s in self.services() {
            if !touched.contains(&s.key) {
                services.push(s.clone());
            }
        }
        for spec in &delta.changed {
            services.push(Arc::new(spec.validate_local()?));
        }
        services.sort_by(|a, b| a.key.cmp(&b.key));

        let mut builder = Builder::new(delta.version, delta.acl, services.len());
        for svc in services {
            builder.push(svc)?;
        }
        Ok(builder.finish()?)
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
    spec.sort_services();
    spec.version = delta.version;
    spec.acl = delta.acl;
    spec.schema_version = delta.schema_version;
    Ok(())
}

#[cfg(test)]
mod tests;

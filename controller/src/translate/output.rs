//! What a translation hands out, shared between versions: the table (service ports by key,
//! workloads by IP, node proxies) and the `/api/services` rows, each a [`SharedMap`] whose
//! unchanged entries one translation shares with the last. The table serialises to the JSON
//! of a [`TableSpec`] and makes deltas without being copied into one.

use std::sync::Arc;

use config_model::delta::Changes;
use config_model::{
    MtlsMode, NodeSpec, ServiceKey, ServiceSpec, TableDelta, TableSpec, WorkloadSpec,
};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};

use super::objects::Name;
use super::shared::SharedMap;
use super::ServiceStatus;

/// The service ports of a table by key; iterating gives the specs in key order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceList(pub SharedMap<ServiceKey, ServiceSpec>);

impl ServiceList {
    /// The service ports in key order.
    pub fn iter(&self) -> impl Iterator<Item = &ServiceSpec> + '_ {
        self.0.values()
    }

    /// Number of service ports.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The service port of this key.
    pub fn get(&self, key: &ServiceKey) -> Option<&ServiceSpec> {
        self.0.get(key)
    }
}

impl<'a> IntoIterator for &'a ServiceList {
    type Item = &'a ServiceSpec;
    type IntoIter = Box<dyn Iterator<Item = &'a ServiceSpec> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// A table as a translation keeps it: [`TableSpec`]'s fields, with the service ports and the
/// workloads shared between versions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SharedTable {
    /// Must equal [`config_model::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Version; set by the publisher.
    pub version: u64,
    /// Access-control mode.
    pub acl: bool,
    /// Mutual-TLS mode.
    pub mtls: MtlsMode,
    /// Service ports, in key order.
    pub services: ServiceList,
    /// Node proxies, by name.
    pub nodes: Arc<Vec<NodeSpec>>,
    /// Workloads by IP as written.
    pub workloads: SharedMap<String, WorkloadSpec>,
}

impl SharedTable {
    /// The table as one [`TableSpec`] (a copy of every entry: for tests and validation).
    pub fn spec(&self) -> TableSpec {
        TableSpec {
            schema_version: self.schema_version,
            version: self.version,
            acl: self.acl,
            services: self.services.iter().cloned().collect(),
            mtls: self.mtls,
            nodes: (*self.nodes).clone(),
            workloads: self.workloads.values().cloned().collect(),
        }
    }

    /// The same table, shared form. Two entries of one key: the last holds.
    pub fn from_spec(spec: TableSpec) -> Self {
        let mut nodes = spec.nodes;
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        SharedTable {
            schema_version: spec.schema_version,
            version: spec.version,
            acl: spec.acl,
            mtls: spec.mtls,
            services: ServiceList(spec.services.into_iter().map(|s| (s.key(), s)).collect()),
            nodes: Arc::new(nodes),
            workloads: spec
                .workloads
                .into_iter()
                .map(|w| (w.ip.clone(), w))
                .collect(),
        }
    }

    /// What differs between `self` and `newer`, by a walk of both (what a translation says
    /// itself when it follows the last one published: [`super::Translation::changes`]).
    pub fn changes(&self, newer: &SharedTable) -> Changes {
        Changes {
            services: diff(&self.services.0, &newer.services.0),
            workloads: diff(&self.workloads, &newer.workloads),
            nodes: self.nodes != newer.nodes,
        }
    }

    /// The delta from `base_version` to this table for the service ports in `keys` and the
    /// workloads with the IPs in `workloads`: each one present here is sent whole, the others
    /// as removed; the node proxies are sent whole when `nodes`. As
    /// [`TableSpec::delta_with`].
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
            nodes: nodes.then(|| (*self.nodes).clone()),
            ..TableDelta::default()
        };
        for key in keys {
            match self.services.get(key) {
                Some(s) => delta.changed.push(s.clone()),
                None => delta.removed.push(key.clone()),
            }
        }
        for ip in workloads {
            match self.workloads.get(ip) {
                Some(w) => delta.workloads_changed.push(w.clone()),
                None => delta.workloads_removed.push(ip.to_string()),
            }
        }
        delta
    }
}

/// The keys in one map only or whose values differ, sorted.
fn diff<K: Ord + Clone, V: PartialEq>(old: &SharedMap<K, V>, new: &SharedMap<K, V>) -> Vec<K> {
    let mut out = Vec::new();
    let (mut a, mut b) = (old.entries().peekable(), new.entries().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some((k, _)), None) => {
                out.push((*k).clone());
                a.next();
            }
            (None, Some((k, _))) => {
                out.push((*k).clone());
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.push((*ka).clone());
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push((*kb).clone());
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if !Arc::ptr_eq(va, vb) && va != vb {
                        out.push((*ka).clone());
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// A serialised sequence of the items an iterator gives, without collecting them.
struct Seq<I>(std::cell::RefCell<Option<I>>);

impl<I: Iterator<Item = T>, T: Serialize> Serialize for Seq<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let items = self.0.borrow_mut().take().expect("serialised once");
        let mut seq = serializer.serialize_seq(None)?;
        for item in items {
            seq.serialize_element(&item)?;
        }
        seq.end()
    }
}

fn seq<I: Iterator>(items: I) -> Seq<I> {
    Seq(std::cell::RefCell::new(Some(items)))
}

/// The JSON of the [`TableSpec`] it holds (field for field: a test compares them).
impl Serialize for SharedTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut st = serializer.serialize_struct("TableSpec", 7)?;
        st.serialize_field("schemaVersion", &self.schema_version)?;
        st.serialize_field("version", &self.version)?;
        st.serialize_field("acl", &self.acl)?;
        st.serialize_field("services", &seq(self.services.iter()))?;
        if self.mtls.is_disabled() {
            st.skip_field("mtls")?;
        } else {
            st.serialize_field("mtls", &self.mtls)?;
        }
        if self.nodes.is_empty() {
            st.skip_field("nodes")?;
        } else {
            st.serialize_field("nodes", &*self.nodes)?;
        }
        if self.workloads.is_empty() {
            st.skip_field("workloads")?;
        } else {
            st.serialize_field("workloads", &seq(self.workloads.values()))?;
        }
        st.end()
    }
}

/// The `/api/services` rows of the service ports, by Service; iterating gives the rows in
/// order of namespace, name and the Service's ports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusRows(pub SharedMap<Name, Vec<ServiceStatus>>);

impl StatusRows {
    /// The rows in order.
    pub fn iter(&self) -> impl Iterator<Item = &ServiceStatus> + '_ {
        self.0.values().flatten()
    }

    /// The rows as one list (for tests).
    pub fn to_vec(&self) -> Vec<ServiceStatus> {
        self.iter().cloned().collect()
    }

    /// The rows of these statuses, grouped by their Service (kept in the order given).
    pub fn from_rows(rows: &[ServiceStatus]) -> Self {
        let mut grouped: std::collections::BTreeMap<Name, Vec<ServiceStatus>> =
            std::collections::BTreeMap::new();
        for r in rows {
            grouped
                .entry((r.namespace.clone(), r.name.clone()))
                .or_default()
                .push(r.clone());
        }
        StatusRows(SharedMap::from_sorted(
            grouped.into_iter().map(|(k, v)| (k, Arc::new(v))),
        ))
    }
}

impl Serialize for StatusRows {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        seq(self.iter()).serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use config_model::testing;

    use super::*;

    #[test]
    fn serialises_as_the_table_spec_it_holds() {
        let mut spec = testing::table(
            7,
            (0..200)
                .map(|i| testing::http("shop", &format!("s{i:03}"), 5000, &["10.0.0.1:80"]))
                .collect(),
        );
        spec.acl = true;
        spec.sort_services();
        let shared = SharedTable::from_spec(spec.clone());
        assert_eq!(
            serde_json::to_string(&shared).unwrap(),
            serde_json::to_string(&spec).unwrap()
        );
        assert_eq!(shared.spec(), spec);
        spec.mtls = MtlsMode::Strict;
        spec.nodes = vec![NodeSpec {
            name: "n1".into(),
            tunnel: "10.0.0.1:15008".into(),
        }];
        spec.workloads = vec![WorkloadSpec {
            ip: "10.1.0.1".into(),
            node: "n1".into(),
            namespace: "shop".into(),
            service_account: "web".into(),
        }];
        let shared = SharedTable::from_spec(spec.clone());
        assert_eq!(
            serde_json::to_string(&shared).unwrap(),
            serde_json::to_string(&spec).unwrap()
        );
    }
}

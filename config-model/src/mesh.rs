//! The mesh part of the table: the mutual-TLS mode, the node proxies' tunnel addresses and the
//! workloads (pod IP, node, ServiceAccount) that identities are derived from; their wire form,
//! their validation and the indexes a proxy looks them up in.
//!
//! A table's nodes and workloads are held behind `Arc`s so that a delta that does not touch
//! them shares them with the table it was applied to (a pod change sends that one workload).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cut::cut_display;
use crate::table::{canonical_ip, is_dns_label, Error, Result, Table};

/// Most node proxies a table may list (twice the number of nodes Kubernetes is tested with).
pub const MAX_NODES: usize = 10_000;

/// Most workloads a table may list (twice the number of pods Kubernetes is tested with).
pub const MAX_WORKLOADS: usize = 300_000;

/// Longest Kubernetes object name that is a DNS subdomain (node and ServiceAccount names).
const MAX_SUBDOMAIN: usize = 253;

/// How traffic between nodes is carried.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    /// No tunnel: every endpoint is reached directly, in cleartext, as before mutual TLS. The
    /// default on the wire, so that a table without the field keeps its old meaning.
    #[default]
    Disabled,
    /// Through the tunnel where the endpoint's node runs a proxy, in cleartext (counted)
    /// where it does not.
    Permissive,
    /// Through the tunnel only: an endpoint on a node without a proxy is refused.
    Strict,
}

impl MtlsMode {
    /// The lowercase name used in flags, chart values, JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Disabled => "disabled",
            MtlsMode::Permissive => "permissive",
            MtlsMode::Strict => "strict",
        }
    }

    /// Whether this is [`MtlsMode::Disabled`] (not written on the wire).
    pub fn is_disabled(&self) -> bool {
        *self == MtlsMode::Disabled
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for MtlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disabled" => Ok(MtlsMode::Disabled),
            "permissive" => Ok(MtlsMode::Permissive),
            "strict" => Ok(MtlsMode::Strict),
            other => Err(format!(
                "invalid mtls mode {:?}: expected strict, permissive or disabled",
                cut_display(other)
            )),
        }
    }
}

/// A node proxy as it travels: the node it runs on and where its tunnel listens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSpec {
    /// The Kubernetes node name (`spec.nodeName` of the proxy's pod).
    pub name: String,
    /// `ip:port` of that node proxy's tunnel listener (IPv6 as `[ip]:port`).
    pub tunnel: String,
}

/// A workload (a pod) as it travels: what identity its traffic carries and where it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// The pod IP.
    pub ip: String,
    /// The node the pod runs on.
    pub node: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's ServiceAccount.
    pub service_account: String,
}

/// Whether `s` is an RFC 1123 DNS subdomain, as Kubernetes requires of node and ServiceAccount
/// names: dot-separated DNS labels, at most 253 bytes.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_SUBDOMAIN && s.split('.').all(is_dns_label)
}

/// Who a workload is: its namespace and ServiceAccount. Written `namespace/serviceaccount`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadIdentity {
    /// Namespace (a DNS label).
    pub namespace: String,
    /// ServiceAccount name (a DNS subdomain).
    pub service_account: String,
}

impl WorkloadIdentity {
    /// An identity from its parts, checked as Kubernetes checks them; the error says which
    /// part is wrong and what was expected.
    pub fn new(namespace: &str, service_account: &str) -> Result<WorkloadIdentity, String> {
        if !is_dns_label(namespace) {
            return Err(format!(
                "namespace {:?} is not a DNS label (a-z, 0-9, -; at most 63)",
                cut_display(namespace)
            ));
        }
        if !is_dns_subdomain(service_account) {
            return Err(format!(
                "serviceaccount {:?} is not a DNS subdomain (a-z, 0-9, -, .; at most 253)",
                cut_display(service_account)
            ));
        }
        Ok(WorkloadIdentity {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// The SPIFFE ID of this identity in a trust domain:
    /// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
    pub fn spiffe(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

impl fmt::Display for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.service_account)
    }
}

impl std::str::FromStr for WorkloadIdentity {
    type Err = String;

    /// Parses `namespace/serviceaccount`.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((ns, sa)) = s.split_once('/') else {
            return Err(format!(
                "identity {:?} is not namespace/serviceaccount",
                cut_display(s)
            ));
        };
        WorkloadIdentity::new(ns, sa)
    }
}

/// A validated node proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node name.
    pub name: Arc<str>,
    /// Its proxy's tunnel listener.
    pub tunnel: SocketAddr,
}

/// A validated workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Pod IP (an IPv4-mapped IPv6 address is kept as IPv4).
    pub ip: IpAddr,
    /// The node it runs on.
    pub node: Arc<str>,
    /// Its identity.
    pub identity: WorkloadIdentity,
}

/// The node proxies of a table, by name (in the order of the spec).
#[derive(Debug, Default)]
pub struct Nodes {
    list: Vec<Node>,
    by_name: HashMap<Arc<str>, usize>,
}

impl Nodes {
    /// Validates the node proxies of a table: names are DNS subdomains and unique, tunnel
    /// addresses `ip:port` with a port, at most [`MAX_NODES`].
    pub fn from_specs(specs: &[NodeSpec]) -> Result<Nodes> {
        if specs.len() > MAX_NODES {
            return Err(mesh_error(
                "table",
                "nodes",
                specs.len(),
                format!("at most {MAX_NODES} node proxies"),
            ));
        }
        let mut nodes = Nodes {
            list: Vec::with_capacity(specs.len()),
            by_name: HashMap::with_capacity(specs.len()),
        };
        for (i, spec) in specs.iter().enumerate() {
            let object = format!("node {}", cut_display(&spec.name));
            if !is_dns_subdomain(&spec.name) {
                return Err(mesh_error(
                    &object,
                    format!("nodes[{i}].name"),
                    &spec.name,
                    "expected a node name (DNS subdomain: a-z, 0-9, -, .; at most 253)",
                ));
            }
            let tunnel = parse_tunnel(&object, &format!("nodes[{i}].tunnel"), &spec.tunnel)?;
            let name: Arc<str> = spec.name.as_str().into();
            if let Some(j) = nodes.by_name.insert(name.clone(), i) {
                return Err(mesh_error(
                    &object,
                    format!("nodes[{i}].name"),
                    &spec.name,
                    format!("nodes[{j}] has the same name"),
                ));
            }
            nodes.list.push(Node { name, tunnel });
        }
        Ok(nodes)
    }

    /// The node proxy of a node, if it runs one.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.by_name.get(name).map(|&i| &self.list[i])
    }

    /// Every node proxy, in the order of the spec.
    pub fn as_slice(&self) -> &[Node] {
        &self.list
    }
}

fn parse_tunnel(object: &str, field: &str, value: &str) -> Result<SocketAddr> {
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| mesh_error(object, field, value, "expected ip:port (IPv6 as [ip]:port)"))?;
    if addr.port() == 0 {
        return Err(mesh_error(object, field, value, "port 0 is not a port"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(mesh_error(
            object,
            field,
            value,
            "expected the address of one host",
        ));
    }
    Ok(addr)
}

/// Shards of the workload index: a delta that changes a few workloads copies the shards they
/// fall in (about `len / WORKLOAD_SHARDS` entries each) and shares the others.
pub(crate) const WORKLOAD_SHARDS: usize = 256;

type WorkloadShard = HashMap<IpAddr, Arc<Workload>>;

/// The workloads of a table, by IP. Each is shared (`Arc`), and so is each shard of the index
/// (the workloads are spread over [`WORKLOAD_SHARDS`] maps by the low bits of their IP): the
/// copy a delta makes costs a reference count per shard, and a changed workload copies the
/// entries of its shard only (issue 14: a pod change must not copy 100,000 workloads).
#[derive(Clone, Debug, Default)]
pub struct Workloads {
    /// Empty, or [`WORKLOAD_SHARDS`] shards.
    shards: Box<[Arc<WorkloadShard>]>,
    len: usize,
}

/// The shard of an IP: its last two bytes mixed (pod IPs of a node differ in the last byte;
/// the next one spreads nodes whose ranges share low bytes).
fn shard_of(ip: IpAddr) -> usize {
    let (a, b) = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[3], o[2])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            (o[15], o[14])
        }
    };
    usize::from(a ^ b.rotate_left(3)) % WORKLOAD_SHARDS
}

impl Workloads {
    /// Validates the workloads of a table: IPs unique, node names DNS subdomains, identities
    /// valid, at most [`MAX_WORKLOADS`].
    pub fn from_specs(specs: &[WorkloadSpec]) -> Result<Workloads> {
        check_workload_count(specs.len())?;
        let mut shards: Vec<WorkloadShard> = Vec::new();
        if !specs.is_empty() {
            let each = specs.len() / WORKLOAD_SHARDS + 1;
            shards.resize_with(WORKLOAD_SHARDS, || HashMap::with_capacity(each));
        }
        let mut position: HashMap<IpAddr, usize> = HashMap::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let field = format!("workloads[{i}]");
            let workload = Workload::from_spec(&field, spec)?;
            if let Some(j) = position.insert(workload.ip, i) {
                return Err(mesh_error(
                    &format!("workload {}", workload.ip),
                    format!("{field}.ip"),
                    &spec.ip,
                    format!("workloads[{j}] has the same IP"),
                ));
            }
            shards[shard_of(workload.ip)].insert(workload.ip, Arc::new(workload));
        }
        Ok(Workloads {
            shards: shards.into_iter().map(Arc::new).collect(),
            len: specs.len(),
        })
    }

    /// The workload with this IP (an IPv4-mapped IPv6 address finds the IPv4 one).
    pub fn get(&self, ip: IpAddr) -> Option<&Workload> {
        let ip = canonical_ip(ip);
        self.shards.get(shard_of(ip))?.get(&ip).map(|w| &**w)
    }

    /// Number of workloads.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every workload, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Workload> + '_ {
        self.shards
            .iter()
            .flat_map(|shard| shard.values())
            .map(|w| &**w)
    }

    /// The shard `ip` falls in, for a change: copied first when another table shares it.
    fn shard_mut(&mut self, ip: IpAddr) -> &mut WorkloadShard {
        if self.shards.is_empty() {
            self.shards = (0..WORKLOAD_SHARDS).map(|_| Arc::default()).collect();
        }
        Arc::make_mut(&mut self.shards[shard_of(ip)])
    }

    pub(crate) fn insert(&mut self, w: Workload) {
        let ip = w.ip;
        if self.shard_mut(ip).insert(ip, Arc::new(w)).is_none() {
            self.len += 1;
        }
    }

    pub(crate) fn remove(&mut self, ip: IpAddr) -> bool {
        if self.get(ip).is_none() {
            return false;
        }
        self.shard_mut(ip).remove(&ip);
        self.len -= 1;
        true
    }

    /// How many shards of the index `self` and `other` hold in common (the same `Arc`): what
    /// a delta left unchanged.
    pub fn shared_shards(&self, other: &Workloads) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }
}

pub(crate) fn check_workload_count(n: usize) -> Result<()> {
    if n > MAX_WORKLOADS {
        return Err(mesh_error(
            "table",
            "workloads",
            n,
            format!("at most {MAX_WORKLOADS} workloads"),
        ));
    }
    Ok(())
}

/// A workload IP as the table keys it, or an error naming `field`.
pub(crate) fn parse_workload_ip(object: &str, field: &str, value: &str) -> Result<IpAddr> {
    let ip: IpAddr = value
        .parse()
        .map_err(|_| mesh_error(object, field, value, "expected an IP address"))?;
    let ip = canonical_ip(ip);
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(mesh_error(
            object,
            field,
            value,
            "expected the address of one pod",
        ));
    }
    Ok(ip)
}

impl Workload {
    /// Validates one workload; `field` is its path, e.g. `workloads[3]`.
    pub(crate) fn from_spec(field: &str, spec: &WorkloadSpec) -> Result<Workload> {
        let object = format!("workload {}", cut_display(&spec.ip));
        let ip = parse_workload_ip(&object, &format!("{field}.ip"), &spec.ip)?;
        if !is_dns_subdomain(&spec.node) {
            return Err(mesh_error(
                &object,
                format!("{field}.node"),
                &spec.node,
                "expected a node name (DNS subdomain: a-z, 0-9, -, .; at most 253)",
            ));
        }
        if !is_dns_label(&spec.namespace) {
            return Err(mesh_error(
                &object,
                format!("{field}.namespace"),
                &spec.namespace,
                "expected a DNS label (a-z, 0-9, -; at most 63)",
            ));
        }
        if !is_dns_subdomain(&spec.service_account) {
            return Err(mesh_error(
                &object,
                format!("{field}.serviceAccount"),
                &spec.service_account,
                "expected a ServiceAccount name (DNS subdomain: a-z, 0-9, -, .; at most 253)",
            ));
        }
        Ok(Workload {
            ip,
            node: spec.node.as_str().into(),
            identity: WorkloadIdentity {
                namespace: spec.namespace.clone(),
                service_account: spec.service_account.clone(),
            },
        })
    }
}

/// The error for a bad mesh field: `object` (e.g. `node kind-worker`, `workload 10.0.0.3`),
/// the field path, the value (cut) and what was expected.
pub(crate) fn mesh_error(
    object: &str,
    field: impl Into<String>,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> Error {
    Error::InvalidMeshField {
        object: object.to_string(),
        field: field.into(),
        value: cut_display(value),
        reason: reason.into(),
    }
}

/// The mesh part of a validated table.
impl Table {
    /// The mutual-TLS mode.
    pub fn mtls(&self) -> MtlsMode {
        self.mtls
    }

    /// The node proxy of a node, if that node runs one.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Every node proxy.
    pub fn nodes(&self) -> &[Node] {
        self.nodes.as_slice()
    }

    /// The workload with this pod IP.
    pub fn workload(&self, ip: IpAddr) -> Option<&Workload> {
        self.workloads.get(ip)
    }

    /// Every workload.
    pub fn workloads(&self) -> &Workloads {
        &self.workloads
    }

    /// Whether two tables share their node proxies (the same validated set, as a delta that
    /// does not touch them leaves it): derived state can be carried over.
    pub fn shares_nodes(&self, other: &Table) -> bool {
        Arc::ptr_eq(&self.nodes, &other.nodes)
    }

    /// Whether two tables share their workloads.
    pub fn shares_workloads(&self, other: &Table) -> bool {
        Arc::ptr_eq(&self.workloads, &other.workloads)
    }
}

#[cfg(test)]
mod tests;

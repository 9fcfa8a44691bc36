//! The mesh part of a translation (issue 14): from Pods, the node proxies (a Pod of the proxy
//! labels with a node and an address: its tunnel listens on that address) and the workloads
//! (pod IP, node, namespace, ServiceAccount) that proxies derive identities from. Workloads are
//! listed only when mutual TLS is not disabled. A Pod that cannot be honoured is left out and
//! reported as a [`Problem`] naming it, the field and the (cut) value.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use config_model::cut::cut;
use config_model::mesh::{MAX_NODES, MAX_WORKLOADS};
use config_model::{MtlsMode, NodeSpec, WorkloadSpec};
use k8s_openapi::api::core::v1::Pod;

use crate::problem::{ObjectRef, Problem};

mod index;

pub use index::MeshIndex;

/// The Pod annotation that moves a node proxy's tunnel off `--proxy-tunnel-port`.
pub const TUNNEL_PORT_ANNOTATION: &str = "maille.io/tunnel-port";

/// The tunnel port of node proxies unless a Pod says otherwise (the proxy's `--tunnel-port`).
pub const DEFAULT_TUNNEL_PORT: u16 = 15008;

/// The mesh settings of a translation (flags `--mtls`, `--proxy-selector`,
/// `--proxy-tunnel-port`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshSettings {
    /// How traffic between nodes is carried.
    pub mtls: MtlsMode,
    /// Labels every node proxy Pod has.
    pub proxy_labels: BTreeMap<String, String>,
    /// The only namespace node proxy Pods are taken from (the mesh namespace on a cluster, so
    /// that nobody else can declare a node proxy); any namespace when `None` (a manifests
    /// folder, whose author declares everything anyway).
    pub proxy_namespace: Option<String>,
    /// The tunnel port of a node proxy whose Pod has no [`TUNNEL_PORT_ANNOTATION`].
    pub tunnel_port: u16,
}

impl Default for MeshSettings {
    fn default() -> Self {
        let (k, v) = crate::identity::auth::LOCAL_PROXY_LABEL;
        MeshSettings {
            mtls: MtlsMode::Disabled,
            proxy_labels: [(k.to_string(), v.to_string())].into(),
            proxy_namespace: None,
            tunnel_port: DEFAULT_TUNNEL_PORT,
        }
    }
}

/// What the Pods give the table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeshPart {
    /// Node proxies, by node name.
    pub nodes: Vec<NodeSpec>,
    /// Workloads, by IP as written (empty when mutual TLS is disabled).
    pub workloads: Vec<WorkloadSpec>,
    /// Pods left out, and why.
    pub problems: Vec<Problem>,
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The Pod's addresses: `status.podIP`, then the others of `status.podIPs`.
fn pod_ips(pod: &Pod) -> Vec<&str> {
    let mut ips: Vec<&str> = Vec::new();
    if let Some(s) = pod.status.as_ref() {
        ips.extend(s.pod_ip.as_deref());
        for ip in s.pod_ips.iter().flatten() {
            if !ips.contains(&ip.ip.as_str()) {
                ips.push(ip.ip.as_str());
            }
        }
    }
    ips
}

fn problem(ns: &str, name: &str, field: &str, value: &str, reason: &str) -> Problem {
    Problem::new(
        ObjectRef::new("Pod", ns, name),
        format!(
            "{ns}/{}: field {field}: invalid value {:?}: {reason}",
            cut(name),
            cut(value)
        ),
    )
}

impl MeshSettings {
    /// Whether a Pod is a node proxy by its labels and namespace.
    pub fn is_proxy(&self, pod: &Pod) -> bool {
        if let Some(ns) = &self.proxy_namespace {
            if pod.metadata.namespace.as_deref().unwrap_or("default") != ns {
                return false;
            }
        }
        let labels = pod.metadata.labels.as_ref();
        !self.proxy_labels.is_empty()
            && self
                .proxy_labels
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    }
}

/// The node proxies and workloads of these Pods. Node proxies come first by the Pod's node;
/// two on one node: the first by namespace and name (the other reported). Workloads: Pods of
/// every namespace with an address, a node and not finished, except host-network Pods (their
/// address is the node's, shared by everything on it) and the proxies themselves; two Pods
/// with one address: the first by namespace and name. Bounded by the table's limits: beyond
/// them the rest is left out and reported once.
pub fn mesh_part(pods: &[Arc<Pod>], settings: &MeshSettings) -> MeshPart {
    let mut out = MeshPart::default();
    if settings.mtls == MtlsMode::Disabled {
        return out;
    }
    // Sorted by namespace and name, borrowed: a Pod change redoes this for every Pod.
    let mut sorted: Vec<(&str, &str, &Pod)> = pods
        .iter()
        .map(|p| {
            let m = &p.metadata;
            (
                m.namespace.as_deref().unwrap_or("default"),
                m.name.as_deref().unwrap_or(""),
                &**p,
            )
        })
        .collect();
    sorted.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let who = |i: usize| format!("{}/{}", sorted[i].0, sorted[i].1);

    // Node name → (its proxy, position of the proxy Pod in `sorted`).
    let mut nodes: BTreeMap<String, (NodeSpec, usize)> = BTreeMap::new();
    let mut workloads: Vec<WorkloadSpec> = Vec::new();
    // Address → position of the Pod holding it.
    let mut owners: HashMap<IpAddr, usize> = HashMap::new();
    let mut over = (0usize, 0usize);
    for (i, &(ns, name, pod)) in sorted.iter().enumerate() {
        // What the Pod says alone is the index's own reading; what follows is what depends on
        // the Pods before it in this order.
        let index::Part { problems, role } = index::part(pod, settings);
        out.problems.extend(problems);
        match role {
            index::Role::Nothing => {}
            index::Role::Proxy(spec) => match nodes.get(spec.name.as_str()) {
                Some(&(_, other)) => {
                    out.problems
                        .push(node_taken(ns, name, &spec.name, &who(other)))
                }
                None if nodes.len() >= MAX_NODES => over.0 += 1,
                None => {
                    nodes.insert(spec.name.clone(), (spec, i));
                }
            },
            index::Role::Workload {
                node,
                service_account,
                addrs,
            } => {
                for a in addrs {
                    if let Some(&owner) = owners.get(&a) {
                        out.problems.push(address_taken(ns, name, a, &who(owner)));
                        continue;
                    }
                    if workloads.len() >= MAX_WORKLOADS {
                        over.1 += 1;
                        continue;
                    }
                    owners.insert(a, i);
                    workloads.push(WorkloadSpec {
                        ip: a.to_string(),
                        node: node.clone(),
                        namespace: ns.to_string(),
                        service_account: service_account.clone(),
                    });
                }
            }
        }
    }
    if over.0 > 0 || over.1 > 0 {
        out.problems.push(Problem::new(
            ObjectRef::new("Pod", "", "-"),
            format!(
                "more pods than a table holds: {} node proxies beyond {MAX_NODES} and {} workloads beyond {MAX_WORKLOADS} are left out of the mesh",
                over.0, over.1
            ),
        ));
    }
    // The order of the table: by IP as written (each IP once, `owners` saw to it).
    workloads.sort_unstable_by(|a, b| a.ip.cmp(&b.ip));
    out.nodes = nodes.into_values().map(|(n, _)| n).collect();
    out.workloads = workloads;
    out
}

/// The problem of the Pod `ns/name` whose address `addr` the Pod `owner` holds.
fn address_taken(ns: &str, name: &str, addr: IpAddr, owner: &str) -> Problem {
    Problem::new(
        ObjectRef::new("Pod", ns, name),
        format!(
            "{ns}/{}: address {addr} is also pod {owner}'s; the identity of {owner} holds for it",
            cut(name)
        ),
    )
}

/// The problem of the node proxy Pod `ns/name` on `node`, which the proxy `owner` holds.
fn node_taken(ns: &str, name: &str, node: &str, owner: &str) -> Problem {
    Problem::new(
        ObjectRef::new("Pod", ns, name),
        format!(
            "{ns}/{}: node {node} already has node proxy {owner}; this one is left out",
            cut(name)
        ),
    )
}

fn pod_service_account(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    #[allow(deprecated)]
    spec.and_then(|s| {
        s.service_account_name
            .clone()
            .or_else(|| s.service_account.clone())
    })
    .filter(|s| !s.is_empty())
    .unwrap_or_else(|| "default".into())
}

/// The Pod's tunnel port: its annotation, or `default`. The annotation's text (cut) when it is
/// not a port.
fn tunnel_port(pod: &Pod, default: u16) -> Result<u16, String> {
    let Some(v) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TUNNEL_PORT_ANNOTATION))
    else {
        return Ok(default);
    };
    match v.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(cut(v).into_owned()),
    }
}

/// Access rules carry the identities of their sources only where a proxy checks them (mutual
/// TLS on): with it disabled they are dropped, and so are the rules left with no source
/// address, so that the table is what it was before identities existed.
pub fn keep_identities(mtls: MtlsMode, specs: &mut [config_model::ServiceSpec]) {
    if mtls != MtlsMode::Disabled {
        return;
    }
    for s in specs {
        if s.access.iter().any(|r| !r.identities.is_empty()) {
            for r in &mut s.access {
                r.identities.clear();
            }
            s.access.retain(|r| !r.sources.is_empty());
        }
    }
}

/// What of a Pod the mesh part reads, beyond what SMI reads (`smi::pod_fingerprint` hashes
/// this in): its node, its labels and its tunnel-port annotation.
pub fn hash_mesh_fields(pod: &Pod, h: &mut impl std::hash::Hasher) {
    use std::hash::Hash;
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .hash(h);
    pod.metadata.labels.hash(h);
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TUNNEL_PORT_ANNOTATION))
        .hash(h);
}

#[cfg(test)]
mod tests;

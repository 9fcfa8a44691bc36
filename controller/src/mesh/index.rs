//! The mesh part kept up to date per Pod event (issue 14): what each Pod contributes (a node
//! proxy, workload addresses, its own problems) is worked out from that Pod alone, and who
//! holds a contested address or node from the claimants of that address or node alone, so a
//! Pod change touches its own addresses and node, not the other Pods. The result equals
//! [`super::mesh_part`] over the same Pods; where that depends on the order of all Pods (more
//! node proxies or workloads than a table holds, two Pods of one name) the index says so and
//! the caller computes it whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use config_model::mesh::{is_dns_subdomain, MAX_NODES, MAX_WORKLOADS};
use config_model::{is_dns_label, MtlsMode, NodeSpec, WorkloadSpec};
use k8s_openapi::api::core::v1::Pod;

use super::{
    address_taken, finished, node_taken, pod_ips, pod_service_account, problem, tunnel_port,
    MeshSettings, TUNNEL_PORT_ANNOTATION,
};
use crate::problem::Problem;

/// A Pod's namespace and name.
type PodName = (String, String);

/// One claim on an address or a node: the Pod, its object (two objects of one name are told
/// apart), and the place of the address among the Pod's own.
type Claimant = (PodName, usize, usize);

/// What one Pod contributes, worked out from it alone.
#[derive(Debug, Default)]
pub(super) struct Part {
    pub(super) problems: Vec<Problem>,
    pub(super) role: Role,
}

#[derive(Debug, Default)]
pub(super) enum Role {
    #[default]
    Nothing,
    Proxy(NodeSpec),
    Workload {
        node: String,
        service_account: String,
        addrs: Vec<IpAddr>,
    },
}

/// What `pod` contributes on its own ([`super::mesh_part`] reads every Pod through it too).
pub(super) fn part(pod: &Pod, settings: &MeshSettings) -> Part {
    let mut out = Part::default();
    let m = &pod.metadata;
    let ns = m.namespace.as_deref().unwrap_or("default");
    let name = m.name.as_deref().unwrap_or("");
    if finished(pod) || name.is_empty() {
        return out;
    }
    let spec = pod.spec.as_ref();
    let Some(node) = spec.and_then(|s| s.node_name.as_deref()) else {
        return out;
    };
    let ips = pod_ips(pod);
    if ips.is_empty() {
        return out;
    }
    if !is_dns_subdomain(node) {
        out.problems.push(problem(
            ns,
            name,
            "spec.nodeName",
            node,
            "expected a node name (DNS subdomain: a-z, 0-9, -, .; at most 253); the pod is left out of the mesh",
        ));
        return out;
    }
    let mut addrs: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in &ips {
        match ip.parse::<IpAddr>() {
            Ok(a) if !a.is_unspecified() && !a.is_multicast() => addrs.push(a),
            _ => out.problems.push(problem(
                ns,
                name,
                "status.podIP",
                ip,
                "expected the IP address of one pod; the address is left out of the mesh",
            )),
        }
    }
    let Some(&first) = addrs.first() else {
        return out;
    };
    if settings.is_proxy(pod) {
        match tunnel_port(pod, settings.tunnel_port) {
            Ok(port) => {
                let tunnel = match first {
                    IpAddr::V4(a) => format!("{a}:{port}"),
                    IpAddr::V6(a) => format!("[{a}]:{port}"),
                };
                out.role = Role::Proxy(NodeSpec {
                    name: node.to_string(),
                    tunnel,
                });
            }
            Err(value) => out.problems.push(problem(
                ns,
                name,
                &format!("metadata.annotations[{TUNNEL_PORT_ANNOTATION}]"),
                &value,
                "expected a port from 1 to 65535; the node proxy is left out",
            )),
        }
        return out;
    }
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return out;
    }
    let sa = pod_service_account(pod);
    if !is_dns_subdomain(&sa) || !is_dns_label(ns) {
        out.problems.push(problem(
            ns,
            name,
            "spec.serviceAccountName",
            &sa,
            "expected a ServiceAccount name (DNS subdomain) in a namespace that is a DNS label; the pod has no mesh identity",
        ));
        return out;
    }
    out.role = Role::Workload {
        node: node.to_string(),
        service_account: sa,
        addrs,
    };
    out
}

/// The node proxies and workloads of the Pods seen so far, and who claims what.
#[derive(Default)]
pub struct MeshIndex {
    /// Each Pod object's part, by name and object address.
    pods: HashMap<PodName, Vec<(usize, Part)>>,
    /// Claimants of each address, first by Pod name: the first holds it.
    addrs: HashMap<IpAddr, BTreeSet<Claimant>>,
    /// Node proxies claiming each node, first by Pod name: the first is the node's.
    nodes: BTreeMap<String, BTreeSet<Claimant>>,
    /// Addresses and nodes with more than one claimant.
    contested_addrs: BTreeSet<IpAddr>,
    contested_nodes: BTreeSet<String>,
    /// Pods with problems of their own.
    with_problems: BTreeSet<PodName>,
    /// Names held by more than one Pod object.
    crowded: BTreeSet<PodName>,
}

fn ptr(p: &Arc<Pod>) -> usize {
    Arc::as_ptr(p) as usize
}

fn pod_name(p: &Pod) -> PodName {
    (
        p.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

impl MeshIndex {
    /// Takes in the Pods that went and came (a Pod updated is in both); returns the addresses
    /// whose claimants changed (as the table writes them).
    pub fn update(
        &mut self,
        went: &[Arc<Pod>],
        came: &[Arc<Pod>],
        settings: &MeshSettings,
    ) -> BTreeSet<String> {
        let mut touched_addrs: BTreeSet<IpAddr> = BTreeSet::new();
        for p in went {
            let name = pod_name(p);
            let Some(list) = self.pods.get_mut(&name) else {
                continue;
            };
            let Some(at) = list.iter().position(|(o, _)| *o == ptr(p)) else {
                continue;
            };
            let (object, part) = list.remove(at);
            if list.is_empty() {
                self.pods.remove(&name);
            }
            self.unclaim(&name, object, &part, &mut touched_addrs);
        }
        if settings.mtls != MtlsMode::Disabled {
            for p in came {
                let name = pod_name(p);
                let part = part(p, settings);
                self.claim(&name, ptr(p), &part, &mut touched_addrs);
                self.pods.entry(name).or_default().push((ptr(p), part));
            }
        }
        for name in went.iter().chain(came).map(|p| pod_name(p)) {
            match self.pods.get(&name) {
                Some(list) if list.iter().any(|(_, part)| !part.problems.is_empty()) => {
                    self.with_problems.insert(name.clone());
                }
                _ => {
                    self.with_problems.remove(&name);
                }
            }
            if self.pods.get(&name).is_some_and(|l| l.len() > 1) {
                self.crowded.insert(name);
            } else {
                self.crowded.remove(&name);
            }
        }
        touched_addrs.iter().map(IpAddr::to_string).collect()
    }

    /// Whether the result depends on the order of all Pods (two Pods of one name, or more node
    /// proxies or workloads than a table holds): then [`super::mesh_part`] must be used.
    pub fn whole(&self) -> bool {
        !self.crowded.is_empty() || self.nodes.len() > MAX_NODES || self.addrs.len() > MAX_WORKLOADS
    }

    fn claim(
        &mut self,
        name: &PodName,
        object: usize,
        part: &Part,
        touched: &mut BTreeSet<IpAddr>,
    ) {
        match &part.role {
            Role::Nothing => {}
            Role::Proxy(node) => {
                let set = self.nodes.entry(node.name.clone()).or_default();
                set.insert((name.clone(), object, 0));
                if set.len() > 1 {
                    self.contested_nodes.insert(node.name.clone());
                }
            }
            Role::Workload { addrs, .. } => {
                for (i, a) in addrs.iter().enumerate() {
                    let set = self.addrs.entry(*a).or_default();
                    set.insert((name.clone(), object, i));
                    if set.len() > 1 {
                        self.contested_addrs.insert(*a);
                    }
                    touched.insert(*a);
                }
            }
        }
    }

    fn unclaim(
        &mut self,
        name: &PodName,
        object: usize,
        part: &Part,
        touched: &mut BTreeSet<IpAddr>,
    ) {
        match &part.role {
            Role::Nothing => {}
            Role::Proxy(node) => {
                if let Some(set) = self.nodes.get_mut(&node.name) {
                    set.remove(&(name.clone(), object, 0));
                    if set.len() < 2 {
                        self.contested_nodes.remove(&node.name);
                    }
                    if set.is_empty() {
                        self.nodes.remove(&node.name);
                    }
                }
            }
            Role::Workload { addrs, .. } => {
                for (i, a) in addrs.iter().enumerate() {
                    if let Some(set) = self.addrs.get_mut(a) {
                        set.remove(&(name.clone(), object, i));
                        if set.len() < 2 {
                            self.contested_addrs.remove(a);
                        }
                        if set.is_empty() {
                            self.addrs.remove(a);
                        }
                    }
                    touched.insert(*a);
                }
            }
        }
    }

    fn part_of(&self, (name, object, _): &Claimant) -> &Part {
        let list = &self.pods[name];
        &list
            .iter()
            .find(|(o, _)| o == object)
            .expect("a claimant's part")
            .1
    }

    /// The node proxies, by node name.
    pub fn node_specs(&self) -> Vec<NodeSpec> {
        self.nodes
            .values()
            .filter_map(|set| match &self.part_of(set.first()?).role {
                Role::Proxy(n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    /// The workload of this address (as the table writes it), if one holds it.
    pub fn workload(&self, ip: &str) -> Option<WorkloadSpec> {
        let a: IpAddr = ip.parse().ok()?;
        let first = self.addrs.get(&a)?.first()?;
        match &self.part_of(first).role {
            Role::Workload {
                node,
                service_account,
                ..
            } => Some(WorkloadSpec {
                ip: a.to_string(),
                node: node.clone(),
                namespace: first.0 .0.clone(),
                service_account: service_account.clone(),
            }),
            _ => None,
        }
    }

    /// Every workload, by address as written.
    pub fn workloads(&self) -> Vec<WorkloadSpec> {
        let mut out: Vec<WorkloadSpec> = self
            .addrs
            .keys()
            .filter_map(|a| self.workload(&a.to_string()))
            .collect();
        out.sort_unstable_by(|a, b| a.ip.cmp(&b.ip));
        out
    }

    /// The Pods left out, and why (unsorted): their own problems, and the claims that lost an
    /// address or a node to another Pod.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        for name in &self.with_problems {
            for (_, part) in self.pods.get(name).into_iter().flatten() {
                out.extend(part.problems.iter().cloned());
            }
        }
        let who = |c: &Claimant| format!("{}/{}", c.0 .0, c.0 .1);
        for a in &self.contested_addrs {
            let mut claims = self.addrs[a].iter();
            let Some(owner) = claims.next() else {
                continue;
            };
            let owner = who(owner);
            for ((ns, name), _, _) in claims {
                out.push(address_taken(ns, name, *a, &owner));
            }
        }
        for node in &self.contested_nodes {
            let mut claims = self.nodes[node].iter();
            let Some(owner) = claims.next() else {
                continue;
            };
            let owner = who(owner);
            for ((ns, name), _, _) in claims {
                out.push(node_taken(ns, name, node, &owner));
            }
        }
        out
    }
}

//! SMI (Service Mesh Interface) support: the TrafficTarget, HTTPRouteGroup, TCPRoute, UDPRoute
//! and TrafficSplit resources, and their translation into the splits and access rules of the
//! routing table, as a pure post-pass over the service ports the controller built.
//!
//! Nothing here refuses a table: an SMI object that cannot be honoured (a dangling reference,
//! a cycle of splits, a bad regex) is left out and reported as a [`Problem`] naming the object,
//! so one bad object never takes the others (or the services) down with it.

pub mod access;
pub mod crd;
pub mod split;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use config_model::{HttpMatchSpec, ServiceSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;

pub use crd::{
    HTTPRouteGroup, TCPRoute, TrafficSplit, TrafficTarget, UDPRoute, ACCESS_GROUP, SPECS_GROUP,
    SPLIT_GROUP, SUPPORTED,
};

/// Why an object of a manifests folder could not be read as an SMI resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A known SMI kind at a version Maille does not read.
    #[error("{kind} {object}: field apiVersion: {api_version:?} is not supported; expected one of {expected}")]
    UnsupportedVersion {
        /// Kind of the object.
        kind: String,
        /// `namespace/name`.
        object: String,
        /// The apiVersion found.
        api_version: String,
        /// The apiVersions accepted for this kind.
        expected: String,
    },
    /// The object does not have the shape of its kind.
    #[error("{kind} {object}: {message}")]
    Invalid {
        /// Kind of the object.
        kind: String,
        /// `namespace/name`.
        object: String,
        /// What serde found wrong (names the field).
        message: String,
    },
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One SMI object, of any kind.
#[derive(Clone, Debug)]
pub enum SmiObject {
    /// access.smi-spec.io TrafficTarget.
    TrafficTarget(TrafficTarget),
    /// specs.smi-spec.io HTTPRouteGroup.
    HTTPRouteGroup(HTTPRouteGroup),
    /// specs.smi-spec.io TCPRoute.
    TCPRoute(TCPRoute),
    /// specs.smi-spec.io UDPRoute.
    UDPRoute(UDPRoute),
    /// split.smi-spec.io TrafficSplit.
    TrafficSplit(TrafficSplit),
}

/// Every SMI object the controller currently knows of.
#[derive(Clone, Debug, Default)]
pub struct SmiObjects {
    /// TrafficTargets.
    pub traffic_targets: Vec<Arc<TrafficTarget>>,
    /// HTTPRouteGroups.
    pub http_route_groups: Vec<Arc<HTTPRouteGroup>>,
    /// TCPRoutes.
    pub tcp_routes: Vec<Arc<TCPRoute>>,
    /// UDPRoutes.
    pub udp_routes: Vec<Arc<UDPRoute>>,
    /// TrafficSplits.
    pub traffic_splits: Vec<Arc<TrafficSplit>>,
}

impl SmiObjects {
    /// Adds one object.
    pub fn insert(&mut self, obj: SmiObject) {
        match obj {
            SmiObject::TrafficTarget(o) => self.traffic_targets.push(Arc::new(o)),
            SmiObject::HTTPRouteGroup(o) => self.http_route_groups.push(Arc::new(o)),
            SmiObject::TCPRoute(o) => self.tcp_routes.push(Arc::new(o)),
            SmiObject::UDPRoute(o) => self.udp_routes.push(Arc::new(o)),
            SmiObject::TrafficSplit(o) => self.traffic_splits.push(Arc::new(o)),
        }
    }

    /// Appends the objects of `other`.
    pub fn extend_from(&mut self, other: &SmiObjects) {
        self.traffic_targets
            .extend(other.traffic_targets.iter().cloned());
        self.http_route_groups
            .extend(other.http_route_groups.iter().cloned());
        self.tcp_routes.extend(other.tcp_routes.iter().cloned());
        self.udp_routes.extend(other.udp_routes.iter().cloned());
        self.traffic_splits
            .extend(other.traffic_splits.iter().cloned());
    }

    /// Object counts per kind, for the `maille_controller_objects_watched` gauge.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("TrafficTarget", self.traffic_targets.len()),
            ("HTTPRouteGroup", self.http_route_groups.len()),
            ("TCPRoute", self.tcp_routes.len()),
            ("UDPRoute", self.udp_routes.len()),
            ("TrafficSplit", self.traffic_splits.len()),
        ]
    }

    /// Whether there is no SMI object at all.
    pub fn is_empty(&self) -> bool {
        self.traffic_targets.is_empty()
            && self.http_route_groups.is_empty()
            && self.tcp_routes.is_empty()
            && self.udp_routes.is_empty()
            && self.traffic_splits.is_empty()
    }

    /// Parses YAML documents (`---` separated) holding SMI objects; other kinds are skipped.
    /// Meant for tests and examples; the manifests folder goes through [`parse_manifest`].
    pub fn from_yaml(text: &str) -> Result<SmiObjects> {
        let mut out = SmiObjects::default();
        for doc in serde_yaml::Deserializer::from_str(text) {
            let value = serde_json::Value::deserialize(doc).map_err(|e| Error::Invalid {
                kind: "document".into(),
                object: "-".into(),
                message: e.to_string(),
            })?;
            if let Some(obj) = parse_manifest(&value) {
                out.insert(obj?);
            }
        }
        Ok(out)
    }
}

/// Reads one manifest as an SMI object. `None` when it is not an SMI kind Maille reads (another
/// group or kind); an error when it is one but at an unsupported version or badly shaped.
pub fn parse_manifest(doc: &serde_json::Value) -> Option<Result<SmiObject>> {
    let api_version = doc.get("apiVersion")?.as_str()?;
    let kind = doc.get("kind")?.as_str()?;
    let (group, version) = api_version.split_once('/')?;
    let (_, _, versions) = SUPPORTED
        .iter()
        .find(|(g, k, _)| *g == group && *k == kind)?;
    let meta = doc.get("metadata");
    let field = |f: &str| {
        meta.and_then(|m| m.get(f))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let namespace = field("namespace");
    let object = format!(
        "{}/{}",
        if namespace.is_empty() {
            "default"
        } else {
            namespace.as_str()
        },
        field("name")
    );
    if !versions.contains(&version) {
        return Some(Err(Error::UnsupportedVersion {
            kind: kind.into(),
            object,
            api_version: api_version.into(),
            expected: versions
                .iter()
                .map(|v| format!("{group}/{v}"))
                .collect::<Vec<_>>()
                .join(", "),
        }));
    }
    fn typed<T: DeserializeOwned>(doc: &serde_json::Value, kind: &str, object: &str) -> Result<T> {
        serde_json::from_value(doc.clone()).map_err(|e| Error::Invalid {
            kind: kind.into(),
            object: object.into(),
            message: e.to_string(),
        })
    }
    let obj = match kind {
        "TrafficTarget" => typed(doc, kind, &object).map(SmiObject::TrafficTarget),
        "HTTPRouteGroup" => typed(doc, kind, &object).map(SmiObject::HTTPRouteGroup),
        "TCPRoute" => typed(doc, kind, &object).map(SmiObject::TCPRoute),
        "UDPRoute" => typed(doc, kind, &object).map(SmiObject::UDPRoute),
        "TrafficSplit" => typed(doc, kind, &object).map(SmiObject::TrafficSplit),
        _ => return None,
    };
    Some(obj.map(|mut o| {
        // A manifest without a namespace lands in `default`, as kubectl would put it.
        if namespace.is_empty() {
            set_default_namespace(&mut o);
        }
        o
    }))
}

fn set_default_namespace(o: &mut SmiObject) {
    let meta = match o {
        SmiObject::TrafficTarget(x) => &mut x.metadata,
        SmiObject::HTTPRouteGroup(x) => &mut x.metadata,
        SmiObject::TCPRoute(x) => &mut x.metadata,
        SmiObject::UDPRoute(x) => &mut x.metadata,
        SmiObject::TrafficSplit(x) => &mut x.metadata,
    };
    meta.namespace = Some("default".into());
}

/// An SMI object (or part of one) that Maille could not honour and left out.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Problem {
    /// Kind of the object at fault, e.g. `TrafficSplit`.
    pub kind: &'static str,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// What is wrong and what was done about it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{}: {}",
            self.kind, self.namespace, self.name, self.message
        )
    }
}

/// A problem on an SMI object; the message is cut to a bounded length, like every problem's.
fn problem(kind: &'static str, obj: &impl ResourceExt, message: impl Into<String>) -> Problem {
    let message = message.into();
    Problem {
        kind,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
        message: config_model::cut::cut_message(&message, config_model::cut::MAX_MESSAGE)
            .into_owned(),
    }
}

/// Fills the `splits` and `access` of the service ports from the SMI objects, and returns what
/// could not be honoured. `pods` identify clients (by `status.podIP`) and the destinations of
/// TrafficTargets (by `spec.serviceAccountName`). Deterministic: the same inputs give the same
/// table, whatever the order of the objects.
pub fn apply(
    services: &mut [ServiceSpec],
    objects: &SmiObjects,
    pods: &[Arc<Pod>],
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let routes = Routes::new(objects, &mut problems);
    split::apply(services, objects, &routes, &mut problems);
    let pods = PodIndex::new(pods);
    access::apply(services, objects, &routes, &pods, &mut problems);
    problems.sort();
    problems.dedup();
    problems
}

/// The route resources by `(namespace, name)`, with HTTP matches already checked.
pub(crate) struct Routes<'a> {
    http: HashMap<(String, String), Vec<HttpMatchSpec>>,
    tcp: HashMap<(String, String), &'a TCPRoute>,
    udp: HashMap<(String, String), &'a UDPRoute>,
}

impl<'a> Routes<'a> {
    fn new(objects: &'a SmiObjects, problems: &mut Vec<Problem>) -> Self {
        let mut http = HashMap::new();
        for g in &objects.http_route_groups {
            let mut matches = Vec::new();
            for (i, m) in g.spec.matches.iter().enumerate() {
                let spec = HttpMatchSpec {
                    name: Some(m.name.clone()),
                    path_regex: m.path_regex.clone(),
                    methods: m.methods.clone(),
                    headers: m
                        .headers
                        .as_ref()
                        .map(|h| {
                            h.pairs()
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                match check_match(&spec) {
                    Ok(()) => matches.push(spec),
                    Err(reason) => problems.push(problem(
                        "HTTPRouteGroup",
                        &**g,
                        format!("spec.matches[{i}] ({:?}): {reason}; match left out", m.name),
                    )),
                }
            }
            http.insert(key(&**g), matches);
        }
        Routes {
            http,
            tcp: objects
                .tcp_routes
                .iter()
                .map(|r| (key(&**r), &**r))
                .collect(),
            udp: objects
                .udp_routes
                .iter()
                .map(|r| (key(&**r), &**r))
                .collect(),
        }
    }

    pub(crate) fn http(&self, namespace: &str, name: &str) -> Option<&[HttpMatchSpec]> {
        self.http
            .get(&(namespace.to_string(), name.to_string()))
            .map(Vec::as_slice)
    }

    /// The pod ports a TCPRoute allows; empty means every port.
    pub(crate) fn tcp_ports(&self, namespace: &str, name: &str) -> Option<Vec<u16>> {
        self.tcp
            .get(&(namespace.to_string(), name.to_string()))
            .map(|r| {
                r.spec
                    .matches
                    .as_ref()
                    .map(|m| m.ports.clone())
                    .unwrap_or_default()
            })
    }

    /// The pod ports a UDPRoute allows; empty means every port.
    pub(crate) fn udp_ports(&self, namespace: &str, name: &str) -> Option<Vec<u16>> {
        self.udp
            .get(&(namespace.to_string(), name.to_string()))
            .map(|r| {
                r.spec
                    .matches
                    .as_ref()
                    .map(|m| m.ports.clone())
                    .unwrap_or_default()
            })
    }
}

fn key(o: &impl ResourceExt) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// Checks an HTTP match with the table's own rule ([`config_model::matching`]), so a match
/// that would make the proxy refuse the whole table is caught here and left out instead.
fn check_match(m: &HttpMatchSpec) -> std::result::Result<(), String> {
    config_model::HttpMatch::try_from(m)
        .map(drop)
        .map_err(|e| format!("{} {:?}: {}", e.field.leaf(), e.value, e.reason()))
}

/// What of a Pod translation reads ([`PodIndex`]): its addresses, ServiceAccount, host
/// network and whether it has finished, as a hash. Two versions of a Pod with the same
/// fingerprint (and name) translate alike.
pub fn pod_fingerprint(pod: &Pod) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let spec = pod.spec.as_ref();
    #[allow(deprecated)]
    (
        spec.and_then(|s| s.service_account_name.as_deref()),
        spec.and_then(|s| s.service_account.as_deref()),
        spec.and_then(|s| s.host_network),
    )
        .hash(&mut h);
    if let Some(st) = pod.status.as_ref() {
        matches!(st.phase.as_deref(), Some("Succeeded" | "Failed")).hash(&mut h);
        st.pod_ip.hash(&mut h);
        for ip in st.pod_ips.iter().flatten() {
            ip.ip.hash(&mut h);
        }
    }
    crate::mesh::hash_mesh_fields(pod, &mut h);
    h.finish()
}

/// Pods by IP, for identifying clients and destinations.
pub(crate) struct PodIndex {
    by_ip: HashMap<IpAddr, PodInfo>,
}

#[derive(Clone, Debug)]
pub(crate) struct PodInfo {
    pub namespace: String,
    pub service_account: String,
    pub host_network: bool,
}

impl PodIndex {
    fn new(pods: &[Arc<Pod>]) -> Self {
        let mut by_ip = HashMap::new();
        for pod in pods {
            let status = pod.status.as_ref();
            // A finished pod's address may already belong to another pod.
            if matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ) {
                continue;
            }
            let spec = pod.spec.as_ref();
            #[allow(deprecated)]
            let sa = spec
                .and_then(|s| {
                    s.service_account_name
                        .clone()
                        .or_else(|| s.service_account.clone())
                })
                .unwrap_or_else(|| "default".into());
            let info = PodInfo {
                namespace: pod.namespace().unwrap_or_else(|| "default".into()),
                service_account: sa,
                host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            };
            let mut ips: Vec<&str> = Vec::new();
            if let Some(s) = status {
                ips.extend(s.pod_ip.as_deref());
                for ip in s.pod_ips.iter().flatten() {
                    ips.push(ip.ip.as_str());
                }
            }
            let rank = (info.host_network, info.namespace.clone(), pod.name_any());
            for ip in ips {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    // Two pods with one address (host network, or a finished pod's address
                    // reused): the same one wins whatever the order of the pods, a pod with an
                    // address of its own first.
                    match by_ip.entry(ip) {
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert((rank.clone(), info.clone()));
                        }
                        std::collections::hash_map::Entry::Occupied(mut o) => {
                            if rank < o.get().0 {
                                o.insert((rank.clone(), info.clone()));
                            }
                        }
                    }
                }
            }
        }
        PodIndex {
            by_ip: by_ip
                .into_iter()
                .map(|(ip, (_, info))| (ip, info))
                .collect(),
        }
    }

    pub(crate) fn get(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.by_ip.get(&ip)
    }

    /// Addresses of the pods running under a ServiceAccount, sorted, with the number of those
    /// left out because they share the node's address (host network).
    pub(crate) fn ips_of(&self, namespace: &str, service_account: &str) -> (Vec<IpAddr>, usize) {
        let mut ips = Vec::new();
        let mut host = 0;
        for (ip, p) in &self.by_ip {
            if p.namespace == namespace && p.service_account == service_account {
                if p.host_network {
                    host += 1;
                } else {
                    ips.push(*ip);
                }
            }
        }
        ips.sort();
        (ips, host)
    }
}

#[cfg(test)]
mod tests;

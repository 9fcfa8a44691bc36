//! Stage 2 of translation: one Service and its EndpointSlices to its service-port entries,
//! statuses and problems. Depends on nothing else, so its result is kept until one of those
//! objects changes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use config_model::annotations;
use config_model::mesh::is_dns_subdomain;
use config_model::{EndpointSpec, ServiceSpec, TrafficType};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::ServiceStatus;
use crate::naming::{parse_shadow_name, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::problem::{ObjectRef, Problem};
use crate::settings::{MeshServices, Settings};

/// What one Service contributes before mesh ports are assigned.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Entry {
    /// Its meshed service ports, each valid on its own, in the order of the Service's ports.
    /// TCP and UDP ports have `mesh_port` 0 until the port stage assigns one.
    pub ports: Vec<ServiceSpec>,
    /// One row per port considered, for `/api/services` (mesh port and errors filled later).
    pub statuses: Vec<ServiceStatus>,
    /// Problems on the Service and its EndpointSlices.
    pub problems: Vec<Problem>,
}

/// Translates one Service (the first of its name) with the EndpointSlices that name it.
/// `None` when the Service is not considered at all (filtered namespace, managed by Maille,
/// opted out).
pub(super) fn entry(
    svc: &Service,
    slices: &[Arc<EndpointSlice>],
    settings: &Settings,
) -> Option<Entry> {
    if !is_candidate(svc, settings) {
        return None;
    }
    let ns = meta_ns(svc);
    let name = meta_name(svc);
    let mut out = Entry::default();
    let problems = &mut out.problems;
    // Built only when there is a problem to report: most services have none.
    let obj = || ObjectRef::service(ns, name);
    let no_annotations = BTreeMap::new();
    let annotations = svc.metadata.annotations.as_ref().unwrap_or(&no_annotations);
    let opted = annotations::mesh(annotations).unwrap_or_else(|e| {
        problems.push(Problem::new(
            obj(),
            format!("{ns}/{name}: {e}; the --mesh-services default applies"),
        ));
        None
    });
    if !opted.unwrap_or(settings.mesh_services == MeshServices::All) {
        // Opted out: nothing meshed, no row; a bad opt-out annotation is still reported.
        return (!out.problems.is_empty()).then_some(out);
    }
    let spec = svc.spec.as_ref();
    let ports: &[ServicePort] = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();

    let explicit = match annotations::traffic_type(annotations) {
        Ok(tt) => tt,
        Err(e) => {
            problems.push(Problem::new(obj(), format!("{ns}/{name}: {e}")));
            for p in ports {
                out.statuses.push(status(ns, name, p, None, 0));
            }
            return Some(out);
        }
    };
    let tt = explicit.unwrap_or(settings.default_mode);
    let (options, errors) = annotations::options(annotations, tt);
    for e in errors {
        problems.push(Problem::new(obj(), format!("{ns}/{name}: {e}")));
    }
    let want_protocol = if tt == TrafficType::Udp { "UDP" } else { "TCP" };
    let cluster_ip = spec
        .and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| ip.parse::<IpAddr>().is_ok())
        .map(str::to_string);

    let mut meshed_any = false;
    let mut seen_ports = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        if protocol != want_protocol {
            continue;
        }
        meshed_any = true;
        let Ok(port) = u16::try_from(p.port) else {
            problems.push(Problem::new(
                obj(),
                format!(
                    "{ns}/{name}: field spec.ports[{i}].port: invalid value {}: expected a port from 1 to 65535",
                    p.port
                ),
            ));
            continue;
        };
        let with_nodes = settings.mesh.mtls != config_model::MtlsMode::Disabled;
        let endpoints = endpoints_for(
            slices,
            ns,
            p.name.as_deref(),
            protocol,
            with_nodes,
            problems,
        );
        out.statuses
            .push(status(ns, name, p, Some(tt), endpoints.len()));
        let mesh_port = match tt {
            TrafficType::Http => match settings.http_ports.nth(i) {
                Some(mp) => mp,
                None => {
                    problems.push(Problem::new(
                        obj(),
                        format!(
                            "{ns}/{name}: port {port} is port number {} of the service but the HTTP port range {} has only {} ports; widen --http-ports",
                            i + 1,
                            settings.http_ports,
                            settings.http_ports.len()
                        ),
                    ));
                    continue;
                }
            },
            // Assigned by the port stage, once every port wanting one is known.
            TrafficType::Tcp | TrafficType::Udp => 0,
        };
        let spec = ServiceSpec {
            namespace: ns.to_string(),
            name: name.to_string(),
            port,
            port_name: p.name.clone().filter(|n| !n.is_empty()),
            mesh_port,
            traffic_type: tt,
            cluster_ip: cluster_ip.clone(),
            endpoints,
            options: options.clone(),
            ..ServiceSpec::default()
        };
        if !seen_ports.insert(port) {
            // Kubernetes refuses this; a manifests folder may not.
            problems.push(Problem::new(
                obj(),
                config_model::Error::DuplicateService(spec.display_name()).to_string(),
            ));
            continue;
        }
        // Each service port on its own; a TCP/UDP port is checked with a stand-in mesh port
        // (any assigned one is valid).
        let checked = if mesh_port == 0 {
            ServiceSpec {
                mesh_port: 1,
                ..spec.clone()
            }
            .validate()
        } else {
            spec.validate()
        };
        match checked {
            Ok(()) => out.ports.push(spec),
            Err(e) => problems.push(Problem::new(obj(), e.to_string())),
        }
    }
    if !meshed_any && explicit.is_some() {
        for p in ports {
            out.statuses.push(status(ns, name, p, Some(tt), 0));
        }
        problems.push(Problem::new(
            obj(),
            format!(
                "{ns}/{name}: annotation traffic-type is {tt} but the service has no {want_protocol} port; nothing is meshed"
            ),
        ));
    }
    Some(out)
}

fn status(
    ns: &str,
    name: &str,
    p: &ServicePort,
    tt: Option<TrafficType>,
    endpoints: usize,
) -> ServiceStatus {
    ServiceStatus {
        namespace: ns.to_string(),
        name: name.to_string(),
        port: u16::try_from(p.port).unwrap_or(0),
        port_name: p.name.clone().filter(|n| !n.is_empty()),
        traffic_type: tt,
        mesh_port: None,
        endpoints,
        errors: Vec::new(),
    }
}

pub(super) fn meta_ns(s: &Service) -> &str {
    s.metadata.namespace.as_deref().unwrap_or("default")
}

pub(super) fn meta_name(s: &Service) -> &str {
    s.metadata.name.as_deref().unwrap_or("")
}

/// Whether a Service is considered at all: watched namespace, not one of the always-ignored,
/// not one Maille manages.
fn is_candidate(s: &Service, settings: &Settings) -> bool {
    let ns = meta_ns(s);
    let name = meta_name(s);
    if name.is_empty() || !settings.namespace_meshed(ns) {
        return false;
    }
    if ns == "default" && name == "kubernetes" {
        return false;
    }
    // Never mesh what Maille itself manages: the shadow services of this install or of another
    // one (meshing those would shadow the shadows, recursively).
    let managed = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY_VALUE);
    if managed || parse_shadow_name(name).is_some() {
        return false;
    }
    let spec = s.spec.as_ref();
    if spec.and_then(|sp| sp.type_.as_deref()) == Some("ExternalName") {
        return false;
    }
    true
}

/// Ready endpoints of one service port: the addresses of every ready endpoint of the service's
/// slices, with the port the slice gives for this port name (the resolved target port), and
/// `with_nodes` the node each runs on (`endpoints[].nodeName`; an endpoint with a node name
/// that is not one is left out: a proxy would take it for one of its own node's).
fn endpoints_for(
    slices: &[Arc<EndpointSlice>],
    ns: &str,
    port_name: Option<&str>,
    protocol: &str,
    with_nodes: bool,
    problems: &mut Vec<Problem>,
) -> Vec<EndpointSpec> {
    let mut addrs: BTreeMap<String, Option<String>> = BTreeMap::new();
    let port_name = port_name.unwrap_or("");
    for slice in slices {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == protocol
        }) else {
            continue;
        };
        let Some(target) = target
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
        else {
            continue;
        };
        for (i, ep) in slice.endpoints.iter().enumerate() {
            // A missing `ready` condition means ready, as the API documents.
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            let node = match ep.node_name.as_deref().filter(|_| with_nodes) {
                Some(n) if !is_dns_subdomain(n) => {
                    let slice_name = slice.metadata.name.as_deref().unwrap_or("");
                    problems.push(Problem::new(
                        ObjectRef::new("EndpointSlice", ns, slice_name),
                        format!(
                            "{ns}/{slice_name}: field endpoints[{i}].nodeName: invalid value {:?}: expected a node name (DNS subdomain); the endpoint is left out",
                            config_model::cut::cut(n)
                        ),
                    ));
                    continue;
                }
                n => n.map(str::to_string),
            };
            for a in &ep.addresses {
                let addr = match a.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => format!("{ip}:{target}"),
                    Ok(IpAddr::V6(ip)) => format!("[{ip}]:{target}"),
                    Err(_) => {
                        let slice_name = slice.metadata.name.as_deref().unwrap_or("");
                        problems.push(Problem::new(
                            ObjectRef::new("EndpointSlice", ns, slice_name),
                            format!("{ns}/{slice_name}: field endpoints[].addresses: invalid value {a:?}: expected an IP address"),
                        ));
                        continue;
                    }
                };
                // One address in several slices: the first node named for it holds.
                let held = addrs.entry(addr).or_default();
                if held.is_none() {
                    held.clone_from(&node);
                }
            }
        }
    }
    addrs
        .into_iter()
        .map(|(address, node)| EndpointSpec {
            node,
            ..EndpointSpec::new(address)
        })
        .collect()
}

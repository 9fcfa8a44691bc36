//! Translation: the objects of a [`Snapshot`] to a routing table, the per-port status list of
//! `/api/services`, the shadow services to keep, and the problems found. Pure apart from the
//! [`PortAllocator`] it carries between rebuilds.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use config_model::annotations;
use config_model::{
    EndpointSpec, ServiceKey, ServiceSpec, Table, TableSpec, TrafficType, SCHEMA_VERSION,
};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Serialize;

use crate::alloc::PortAllocator;
use crate::naming::{parse_shadow_name, shadow_name, MANAGED_BY_LABEL, MANAGED_BY_VALUE};
use crate::problem::{ObjectRef, Problem};
use crate::settings::{MeshServices, Settings};
use crate::snapshot::Snapshot;

/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The result of one translation.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    /// The table to serve; validated as a whole. Its `version` is set by the publisher.
    pub table: TableSpec,
    /// One entry per service port considered (meshed or refused), for `/api/services`.
    pub services: Vec<ServiceStatus>,
    /// The other objects with problems (SMI objects, manifests files, services without a port
    /// entry), for `/api/services`.
    pub objects: Vec<ObjectStatus>,
    /// Shadow services to keep in the mesh namespace, by shadow name.
    pub shadows: BTreeMap<String, ShadowSpec>,
    /// Every problem found, sorted.
    pub problems: Vec<Problem>,
}

/// The status of one service port, as `/api/services` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// Namespace of the user's Service.
    pub namespace: String,
    /// Name of the user's Service.
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Name of the Service port, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// How the port is meshed; `None` when the traffic-type annotation is invalid.
    pub traffic_type: Option<TrafficType>,
    /// The proxy port it is reached on; `None` when the port is not in the table.
    pub mesh_port: Option<u16>,
    /// Number of ready endpoints.
    pub endpoints: usize,
    /// Problems found on the Service (all its ports share them); empty when none.
    pub errors: Vec<String>,
}

/// An object other than a service port that has problems, as `/api/services` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectStatus {
    /// `TrafficSplit`, `TrafficTarget`, ..., `File` for a manifests file.
    pub kind: String,
    /// Namespace; empty for a file.
    pub namespace: String,
    /// Name (for a file: its path).
    pub name: String,
    /// Its problems.
    pub errors: Vec<String>,
}

/// A shadow Service to keep in the mesh namespace for one meshed user Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowSpec {
    /// Namespace of the user's Service.
    pub namespace: String,
    /// Name of the user's Service.
    pub name: String,
    /// Its ports.
    pub ports: Vec<ShadowPort>,
}

/// One port of a shadow Service: the user's Service port, forwarded to a proxy listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowPort {
    /// Name of the user's port (shadow ports need names when there are several).
    pub name: String,
    /// The user's Service port.
    pub port: u16,
    /// The proxy listener port (target port of the shadow).
    pub mesh_port: u16,
    /// `TCP` or `UDP`.
    pub protocol: String,
    /// How the port is meshed.
    pub traffic_type: TrafficType,
}

/// One service port on its way to the table.
struct Candidate {
    spec: ServiceSpec,
}

/// Translates the objects into a table. The allocator keeps TCP/UDP ports stable between
/// calls. Never fails: whatever is wrong is reported per object and left out.
pub fn translate(
    snapshot: &Snapshot,
    settings: &Settings,
    alloc: &mut PortAllocator,
) -> Translation {
    // Problems the provider found reading the objects (a manifests file that does not parse,
    // an object defined twice) are reported with the others.
    let mut problems = snapshot.problems.clone();
    let slices = slices_by_service(&snapshot.endpoint_slices);

    let mut services: Vec<&Service> = snapshot
        .services
        .iter()
        .map(|s| s.as_ref())
        .filter(|s| is_candidate(s, settings))
        .collect();
    services.sort_by(|a, b| (meta_ns(a), meta_name(a)).cmp(&(meta_ns(b), meta_name(b))));
    services.dedup_by(|a, b| meta_ns(a) == meta_ns(b) && meta_name(a) == meta_name(b));

    let mut candidates: Vec<Candidate> = Vec::new();
    let mut statuses: Vec<ServiceStatus> = Vec::new();
    // Ports waiting for a TCP/UDP listener port, in a stable order.
    let mut wanted: BTreeMap<TrafficType, Vec<ServiceKey>> = BTreeMap::new();

    for svc in &services {
        let ns = meta_ns(svc);
        let name = meta_name(svc);
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
            continue;
        }
        let spec = svc.spec.as_ref();
        let ports: &[ServicePort] = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();

        let explicit = match annotations::traffic_type(annotations) {
            Ok(tt) => tt,
            Err(e) => {
                problems.push(Problem::new(obj(), format!("{ns}/{name}: {e}")));
                for p in ports {
                    statuses.push(status(ns, name, p, None, 0));
                }
                continue;
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
            let endpoints = endpoints_for(
                &slices,
                ns,
                name,
                p.name.as_deref(),
                protocol,
                &mut problems,
            );
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
                        statuses.push(status(ns, name, p, Some(tt), endpoints.len()));
                        continue;
                    }
                },
                // Assigned below, once every port wanting one is known.
                TrafficType::Tcp | TrafficType::Udp => {
                    wanted.entry(tt).or_default().push(ServiceKey {
                        namespace: ns.to_string(),
                        name: name.to_string(),
                        port,
                    });
                    0
                }
            };
            statuses.push(status(ns, name, p, Some(tt), endpoints.len()));
            candidates.push(Candidate {
                spec: ServiceSpec {
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
                },
            });
        }
        if !meshed_any && explicit.is_some() {
            for p in ports {
                statuses.push(status(ns, name, p, Some(tt), 0));
            }
            problems.push(Problem::new(
                obj(),
                format!(
                    "{ns}/{name}: annotation traffic-type is {tt} but the service has no {want_protocol} port; nothing is meshed"
                ),
            ));
        }
    }

    // TCP and UDP listener ports.
    for (tt, keys) in &wanted {
        let range = alloc.range(*tt).expect("tcp and udp have ranges");
        let got = alloc.assign(*tt, keys);
        candidates.retain_mut(|c| {
            if c.spec.traffic_type != *tt {
                return true;
            }
            let key = ServiceKey {
                namespace: c.spec.namespace.clone(),
                name: c.spec.name.clone(),
                port: c.spec.port,
            };
            match got.get(&key).copied().flatten() {
                Some(mp) => {
                    c.spec.mesh_port = mp;
                    true
                }
                None => {
                    problems.push(Problem::new(
                        ObjectRef::service(&key.namespace, &key.name),
                        format!(
                            "{}/{}: port {}: the {tt} port range {range} is exhausted ({} ports, all in use); widen --{tt}-ports",
                            key.namespace, key.name, key.port, range.len()
                        ),
                    ));
                    false
                }
            }
        });
    }

    // Each service port on its own.
    let mut specs: Vec<ServiceSpec> = Vec::with_capacity(candidates.len());
    for c in candidates {
        match c.spec.validate() {
            Ok(()) => specs.push(c.spec),
            Err(e) => problems.push(Problem::new(
                ObjectRef::service(&c.spec.namespace, &c.spec.name),
                e.to_string(),
            )),
        }
    }

    // Post-passes that add to the services (SMI splits and access rules), before the table is
    // validated as a whole.
    if !snapshot.smi.is_empty() {
        for p in crate::smi::apply(&mut specs, &snapshot.smi, &snapshot.pods) {
            problems.push(Problem::new(
                ObjectRef::new(p.kind, &p.namespace, &p.name),
                format!("{}/{}: {}", p.namespace, p.name, p.message),
            ));
        }
    }

    let table = validate_table(specs, settings.acl, &mut problems);
    let shadows = shadows_for(&table, &mut problems);

    // Fill in mesh ports and errors of the statuses.
    let mut meshed: BTreeMap<(&str, &str, u16), u16> = BTreeMap::new();
    for s in &table.services {
        meshed.insert((&s.namespace, &s.name, s.port), s.mesh_port);
    }
    problems.sort();
    problems.dedup();
    let mut errors: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for p in &problems {
        if p.object.kind == "Service" {
            errors
                .entry((&p.object.namespace, &p.object.name))
                .or_default()
                .push(p.message.clone());
        }
    }
    let with_rows: BTreeSet<(&str, &str)> = statuses
        .iter()
        .map(|s| (s.namespace.as_str(), s.name.as_str()))
        .collect();
    let mut objects: Vec<ObjectStatus> = Vec::new();
    for p in &problems {
        let o = &p.object;
        if o.kind == "Service" && with_rows.contains(&(o.namespace.as_str(), o.name.as_str())) {
            continue;
        }
        match objects.last_mut() {
            Some(last)
                if last.kind == o.kind && last.namespace == o.namespace && last.name == o.name =>
            {
                last.errors.push(p.message.clone())
            }
            _ => objects.push(ObjectStatus {
                kind: o.kind.clone(),
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                errors: vec![p.message.clone()],
            }),
        }
    }
    for st in &mut statuses {
        st.mesh_port = meshed
            .get(&(st.namespace.as_str(), st.name.as_str(), st.port))
            .copied();
        if let Some(e) = errors.get(&(st.namespace.as_str(), st.name.as_str())) {
            st.errors = e.clone();
        }
    }

    Translation {
        table,
        services: statuses,
        objects,
        shadows,
        problems,
    }
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

fn meta_ns(s: &Service) -> &str {
    s.metadata.namespace.as_deref().unwrap_or("default")
}

fn meta_name(s: &Service) -> &str {
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

fn slices_by_service(
    slices: &[std::sync::Arc<EndpointSlice>],
) -> BTreeMap<(&str, &str), Vec<&EndpointSlice>> {
    let mut out: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        let Some(svc) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        out.entry((ns, svc.as_str())).or_default().push(s);
    }
    out
}

/// Ready endpoints of one service port: the addresses of every ready endpoint of the service's
/// slices, with the port the slice gives for this port name (the resolved target port).
fn endpoints_for(
    slices: &BTreeMap<(&str, &str), Vec<&EndpointSlice>>,
    ns: &str,
    name: &str,
    port_name: Option<&str>,
    protocol: &str,
    problems: &mut Vec<Problem>,
) -> Vec<EndpointSpec> {
    let mut addrs: BTreeSet<String> = BTreeSet::new();
    let port_name = port_name.unwrap_or("");
    for slice in slices
        .get(&(ns, name))
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
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
        for ep in &slice.endpoints {
            // A missing `ready` condition means ready, as the API documents.
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &ep.addresses {
                match a.parse::<IpAddr>() {
                    Ok(IpAddr::V4(ip)) => addrs.insert(format!("{ip}:{target}")),
                    Ok(IpAddr::V6(ip)) => addrs.insert(format!("[{ip}]:{target}")),
                    Err(_) => {
                        let slice_name = slice.metadata.name.as_deref().unwrap_or("");
                        problems.push(Problem::new(
                            ObjectRef::new("EndpointSlice", ns, slice_name),
                            format!("{ns}/{slice_name}: field endpoints[].addresses: invalid value {a:?}: expected an IP address"),
                        ));
                        false
                    }
                };
            }
        }
    }
    addrs.into_iter().map(EndpointSpec::new).collect()
}

/// Checks the table as a whole; a service port the table refuses (duplicate route, bad split)
/// is dropped with a problem and the rest is checked again, so one bad service never takes the
/// table down.
fn validate_table(specs: Vec<ServiceSpec>, acl: bool, problems: &mut Vec<Problem>) -> TableSpec {
    let mut table = TableSpec {
        schema_version: SCHEMA_VERSION,
        version: 0,
        acl,
        services: specs,
    };
    for _ in 0..=table.services.len() {
        let err = match Table::try_from(&table) {
            Ok(_) => return table,
            Err(e) => e,
        };
        let specs = &mut table.services;
        let culprit = match &err {
            config_model::Error::InvalidField { service, .. } => service.clone(),
            config_model::Error::DuplicateHttpRoute { second, .. } => second.clone(),
            config_model::Error::DuplicateMeshPort { second, .. } => second.clone(),
            config_model::Error::DuplicateService(s) => s.clone(),
            config_model::Error::SchemaVersion { .. } => String::new(),
        };
        let before = specs.len();
        let mut dropped = None;
        // Drop the last service port with that name (for duplicates, the second one).
        if let Some(pos) = specs.iter().rposition(|s| s.display_name() == culprit) {
            let s = specs.remove(pos);
            dropped = Some((s.namespace, s.name));
        }
        match dropped {
            Some((ns, name)) => problems.push(Problem::new(
                ObjectRef::service(&ns, &name),
                err.to_string(),
            )),
            None => {
                tracing::error!(%err, "Table refused and no service to blame; serving an empty table");
                specs.clear();
            }
        }
        if specs.len() == before {
            break;
        }
    }
    table.services = Vec::new();
    table
}

fn shadows_for(table: &TableSpec, problems: &mut Vec<Problem>) -> BTreeMap<String, ShadowSpec> {
    let mut out: BTreeMap<String, ShadowSpec> = BTreeMap::new();
    for s in &table.services {
        let shadow = match shadow_name(&s.namespace, &s.name) {
            Ok(n) => n,
            Err(e) => {
                problems.push(Problem::new(
                    ObjectRef::service(&s.namespace, &s.name),
                    e.to_string(),
                ));
                continue;
            }
        };
        let entry = out.entry(shadow).or_insert_with(|| ShadowSpec {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            ports: Vec::new(),
        });
        entry.ports.push(ShadowPort {
            name: s
                .port_name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", s.traffic_type, s.port)),
            port: s.port,
            mesh_port: s.mesh_port,
            protocol: if s.traffic_type == TrafficType::Udp {
                "UDP"
            } else {
                "TCP"
            }
            .to_string(),
            traffic_type: s.traffic_type,
        });
    }
    out
}

#[cfg(test)]
mod tests;

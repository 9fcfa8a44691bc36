//! TrafficTarget → the `access` rules of destination service ports (used in ACL mode).
//!
//! A TrafficTarget's destination is a ServiceAccount; its service ports are those whose ready
//! endpoints include a pod running under that account, and its pod ports are those endpoints'
//! target ports. `destination.port` and the ports of TCPRoutes and UDPRoutes are pod ports.
//! Rules by traffic type of the service port:
//! - http: the HTTPRouteGroup matches named by its rules (all matches of a group when the rule
//!   names none); when the target also has TCPRoute rules, one of them must cover the pod port.
//!   With TCPRoute rules only, a covered port is open to every request.
//! - tcp: a TCPRoute rule that covers the pod port.
//! - udp: a UDPRoute rule that covers the pod port.
//!
//! A TrafficTarget without rules allows nothing.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use config_model::{AccessRuleSpec, HttpMatchSpec, ServiceSpec, TrafficType};
use kube::ResourceExt;

use super::{problem, PodIndex, Problem, Routes, SmiObjects, TrafficTarget};

const KIND: &str = "TrafficTarget";

pub(crate) fn apply(
    services: &mut [ServiceSpec],
    objects: &SmiObjects,
    routes: &Routes<'_>,
    pods: &PodIndex,
    problems: &mut Vec<Problem>,
) {
    let mut targets: Vec<&TrafficTarget> = objects.traffic_targets.iter().map(|t| &**t).collect();
    targets.sort_by_key(|t| (t.namespace(), t.name_any()));
    for tt in targets {
        translate(tt, services, routes, pods, problems);
    }
}

/// What the rules of one TrafficTarget allow.
#[derive(Default)]
struct Allowed {
    /// From HTTPRouteGroup rules; `None` when there is no such rule.
    http: Option<Vec<HttpMatchSpec>>,
    /// From TCPRoute rules: pod ports allowed (empty set = all ports); `None` when no rule.
    tcp: Option<BTreeSet<u16>>,
    /// From UDPRoute rules, likewise.
    udp: Option<BTreeSet<u16>>,
}

fn covers(ports: &Option<BTreeSet<u16>>, pod_ports: &BTreeSet<u16>) -> bool {
    match ports {
        None => false,
        Some(p) => p.is_empty() || p.iter().any(|x| pod_ports.contains(x)),
    }
}

/// Merges a route's port list into what is allowed so far (an empty list means every port).
fn merge_ports(acc: &mut Option<BTreeSet<u16>>, ports: Vec<u16>) {
    match acc {
        Some(set) if set.is_empty() => {}
        Some(_) if ports.is_empty() => *acc = Some(BTreeSet::new()),
        Some(set) => set.extend(ports),
        None => *acc = Some(ports.into_iter().collect()),
    }
}

fn translate(
    tt: &TrafficTarget,
    services: &mut [ServiceSpec],
    routes: &Routes<'_>,
    pods: &PodIndex,
    problems: &mut Vec<Problem>,
) {
    let ns = tt.namespace().unwrap_or_default();
    let name = format!("{ns}/{}", tt.name_any());
    let dest = &tt.spec.destination;
    if dest.kind != "ServiceAccount" {
        problems.push(problem(
            KIND,
            tt,
            format!(
                "spec.destination.kind {:?}: expected ServiceAccount; target left out",
                dest.kind
            ),
        ));
        return;
    }
    if let Some(dns) = dest.namespace.as_deref().filter(|d| *d != ns) {
        // Only the owner of a namespace may open its pods: a target elsewhere cannot.
        problems.push(problem(
            KIND,
            tt,
            format!("spec.destination.namespace {dns:?}: a TrafficTarget can only open pods of its own namespace {ns:?}; target left out"),
        ));
        return;
    }
    if tt.spec.rules.is_empty() {
        problems.push(problem(
            KIND,
            tt,
            "spec.rules is empty: a TrafficTarget without rules allows nothing",
        ));
        return;
    }

    let mut allowed = Allowed::default();
    for (i, rule) in tt.spec.rules.iter().enumerate() {
        match rule.kind.as_str() {
            "HTTPRouteGroup" => {
                let Some(group) = routes.http(&ns, &rule.name) else {
                    problems.push(problem(
                        KIND,
                        tt,
                        format!(
                            "spec.rules[{i}]: HTTPRouteGroup {ns}/{} not found; rule left out",
                            rule.name
                        ),
                    ));
                    continue;
                };
                let acc = allowed.http.get_or_insert_with(Vec::new);
                if rule.matches.is_empty() {
                    acc.extend(group.iter().cloned());
                }
                for m in &rule.matches {
                    match group.iter().find(|g| g.name.as_deref() == Some(m.as_str())) {
                        Some(g) => acc.push(g.clone()),
                        None => problems.push(problem(
                            KIND,
                            tt,
                            format!(
                                "spec.rules[{i}].matches: HTTPRouteGroup {ns}/{} has no (usable) match {m:?}; left out",
                                rule.name
                            ),
                        )),
                    }
                }
            }
            "TCPRoute" | "UDPRoute" => {
                let tcp = rule.kind == "TCPRoute";
                let ports = if tcp {
                    routes.tcp_ports(&ns, &rule.name)
                } else {
                    routes.udp_ports(&ns, &rule.name)
                };
                let Some(ports) = ports else {
                    problems.push(problem(
                        KIND,
                        tt,
                        format!("spec.rules[{i}]: {} {ns}/{} not found; rule left out", rule.kind, rule.name),
                    ));
                    continue;
                };
                merge_ports(if tcp { &mut allowed.tcp } else { &mut allowed.udp }, ports);
            }
            other => problems.push(problem(
                KIND,
                tt,
                format!(
                    "spec.rules[{i}].kind {other:?}: expected HTTPRouteGroup, TCPRoute or UDPRoute; rule left out"
                ),
            )),
        }
    }

    let mut sources: BTreeSet<IpAddr> = BTreeSet::new();
    let mut identities: BTreeSet<String> = BTreeSet::new();
    for (i, src) in tt.spec.sources.iter().enumerate() {
        if src.kind != "ServiceAccount" {
            problems.push(problem(
                KIND,
                tt,
                format!(
                    "spec.sources[{i}].kind {:?}: expected ServiceAccount; source left out",
                    src.kind
                ),
            ));
            continue;
        }
        let sns = src.namespace.as_deref().unwrap_or(&ns);
        // Checked by the destination proxy for traffic from other nodes (mutual TLS).
        match config_model::WorkloadIdentity::new(sns, &src.name) {
            Ok(id) => {
                identities.insert(id.to_string());
            }
            Err(e) => {
                problems.push(problem(
                    KIND,
                    tt,
                    format!("spec.sources[{i}]: {e}; source left out"),
                ));
                continue;
            }
        }
        let (ips, host_network) = pods.ips_of(sns, &src.name);
        if host_network > 0 {
            problems.push(problem(
                KIND,
                tt,
                format!(
                    "spec.sources[{i}]: {host_network} pod(s) of ServiceAccount {sns}/{} use the host network; their address is the node's, shared by everything on it, so they are not admitted",
                    src.name
                ),
            ));
        }
        sources.extend(ips);
    }
    let sources: Vec<String> = sources.iter().map(IpAddr::to_string).collect();
    let identities: Vec<String> = identities.into_iter().collect();
    if sources.is_empty() && identities.is_empty() {
        // Nobody to let in: no rule, which in ACL mode denies.
        return;
    }

    for s in services.iter_mut() {
        let pod_ports: BTreeSet<u16> = s
            .endpoints
            .iter()
            .filter_map(|e| e.address.parse::<SocketAddr>().ok())
            .filter(|a| {
                pods.get(a.ip())
                    .is_some_and(|p| p.namespace == ns && p.service_account == dest.name)
            })
            .map(|a| a.port())
            .collect();
        if pod_ports.is_empty() {
            continue;
        }
        if let Some(port) = dest.port {
            if !pod_ports.contains(&port) {
                continue;
            }
        }
        let http = match s.traffic_type {
            TrafficType::Udp if covers(&allowed.udp, &pod_ports) => None,
            TrafficType::Tcp if covers(&allowed.tcp, &pod_ports) => None,
            TrafficType::Http => {
                let port_ok = allowed.tcp.is_none() || covers(&allowed.tcp, &pod_ports);
                match &allowed.http {
                    Some(ms) if port_ok && !ms.is_empty() => Some(ms.clone()),
                    None if allowed.tcp.is_some() && port_ok => None,
                    _ => continue,
                }
            }
            _ => continue,
        };
        s.access.push(AccessRuleSpec {
            name: name.clone(),
            sources: sources.clone(),
            identities: identities.clone(),
            http,
        });
    }
}

//! Stage 6 of translation: the stages' results put together into a [`Translation`]: the table
//! (service ports kept, with what SMI added), one `/api/services` row per port considered and
//! per other object with problems, the shadow Services, and every problem, sorted.

use std::collections::{BTreeMap, BTreeSet};

use config_model::{ServiceSpec, TrafficType};

use super::{
    shadow_name, ObjectRef, ObjectStatus, Problem, ServiceStatus, ShadowPort, ShadowSpec,
    TableSpec, Translation, Translator, SCHEMA_VERSION,
};

/// Puts the translation together; `problems` are those of the port stage and the provider.
pub(super) fn assemble(t: &Translator, mut problems: Vec<Problem>) -> Translation {
    let left_out = &t.checks.left_out;
    let additions = &t.smi.additions;
    let routes = &t.gateway.attached.routes;
    let mut specs: Vec<ServiceSpec> = Vec::with_capacity(t.services.len());
    let mut statuses: Vec<ServiceStatus> = Vec::with_capacity(t.services.len());
    let mut shadows: BTreeMap<String, ShadowSpec> = BTreeMap::new();
    for ((ns, name), slot) in &t.services {
        problems.extend(slot.entry.problems.iter().cloned());
        let first = specs.len();
        for p in &slot.ported {
            if !left_out.is_empty() || !additions.is_empty() || !routes.is_empty() {
                let key = p.key();
                if left_out.contains_key(&key) {
                    continue;
                }
                let add = additions.get(&key);
                let attached = routes.get(&key);
                if add.is_some() || attached.is_some() {
                    let mut spec = p.clone();
                    if let Some(add) = add {
                        spec.splits = add.splits.clone();
                        spec.access = add.access.clone();
                    }
                    if let Some(attached) = attached {
                        // Routes win over an SMI TrafficSplit on the same port.
                        for split in spec.splits.drain(..) {
                            let (sns, sname) =
                                split.name.split_once('/').unwrap_or(("", &split.name));
                            problems.push(Problem::new(
                                ObjectRef::new("TrafficSplit", sns, sname),
                                format!(
                                    "{}: overridden on service port {key} by Gateway API routes (routes win over a TrafficSplit, see docs/gateway-api.md)",
                                    split.name
                                ),
                            ));
                        }
                        spec.routes = attached.clone();
                    }
                    specs.push(spec);
                    continue;
                }
            }
            specs.push(p.clone());
        }
        let kept = &specs[first..];
        for st in &slot.entry.statuses {
            let mut st = st.clone();
            st.mesh_port = kept.iter().find(|s| s.port == st.port).map(|s| s.mesh_port);
            statuses.push(st);
        }
        if kept.is_empty() {
            continue;
        }
        match shadow_name(ns, name) {
            Ok(shadow) => {
                shadows.insert(
                    shadow,
                    ShadowSpec {
                        namespace: ns.clone(),
                        name: name.clone(),
                        ports: kept.iter().map(shadow_port).collect(),
                    },
                );
            }
            Err(e) => problems.push(Problem::new(ObjectRef::service(ns, name), e.to_string())),
        }
    }
    if !routes.is_empty() {
        unresolve_left_out_backends(&mut specs, &mut problems);
    }
    let route_statuses = route_statuses(t, &mut problems);
    problems.extend(left_out.values().cloned());
    problems.extend(t.smi.problems.iter().cloned());
    problems.extend(t.gateway.problems.iter().cloned());
    let mesh = t.mesh.clone().unwrap_or_default();
    problems.extend(mesh.problems);
    crate::mesh::keep_identities(t.settings.mesh.mtls, &mut specs);
    problems.sort();
    problems.dedup();

    // Errors of each Service on its rows; problems of other objects (and of Services without
    // a row) as object rows.
    let mut errors: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for p in &problems {
        if p.object.kind == "Service" {
            errors
                .entry((&p.object.namespace, &p.object.name))
                .or_default()
                .push(p.message.clone());
        }
    }
    let with_rows: BTreeSet<(&str, &str)> = errors
        .keys()
        .filter(|(ns, name)| {
            t.services
                .get(&(ns.to_string(), name.to_string()))
                .is_some_and(|slot| !slot.entry.statuses.is_empty())
        })
        .copied()
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
    if !errors.is_empty() {
        for st in &mut statuses {
            if let Some(e) = errors.get(&(st.namespace.as_str(), st.name.as_str())) {
                st.errors = e.clone();
            }
        }
    }

    Translation {
        table: TableSpec {
            schema_version: SCHEMA_VERSION,
            version: 0,
            acl: t.settings.acl,
            services: specs,
            mtls: t.settings.mesh.mtls,
            nodes: mesh.nodes,
            workloads: mesh.workloads,
        },
        services: statuses,
        objects,
        shadows,
        problems,
        route_statuses,
    }
}

/// The routes' outcomes, where a parent whose every attached port the checks left out of the
/// table is not accepted after all (its problem says why).
fn route_statuses(
    t: &Translator,
    problems: &mut Vec<Problem>,
) -> Vec<crate::gateway::status::RouteOutcome> {
    use crate::gateway::status::{reason, Verdict};
    let left_out = &t.checks.left_out;
    let mut out: Vec<_> = t.gateway.attached.outcomes.values().cloned().collect();
    if left_out.is_empty() {
        return out;
    }
    for o in &mut out {
        for p in &mut o.parents {
            let Some(first) = p.ports.first() else {
                continue;
            };
            if !p.accepted.ok || !p.ports.iter().all(|k| left_out.contains_key(k)) {
                continue;
            }
            let why = &left_out[first].message;
            p.accepted = Verdict::no(
                reason::NO_MATCHING_PARENT,
                format!("the Service port {first} is left out of the table: {why}"),
            );
            problems.push(Problem::new(
                ObjectRef::new(o.key.kind.as_str(), &o.key.namespace, &o.key.name),
                format!(
                    "{}/{}: parentRef Service {}: Accepted=False (NoMatchingParent): {}",
                    o.key.namespace, o.key.name, p.parent_ref.name, p.accepted.message
                ),
            ));
        }
    }
    out
}

/// Route backends that the checks left out of the table (or that are absent) get the share of
/// an unresolved backend (answered 500), so that the table stays whole.
fn unresolve_left_out_backends(specs: &mut [ServiceSpec], problems: &mut Vec<Problem>) {
    let kept: BTreeSet<config_model::ServiceKey> = specs.iter().map(ServiceSpec::key).collect();
    for spec in specs.iter_mut() {
        let key = spec.key();
        for entry in &mut spec.routes {
            let mut gone = 0u32;
            entry.backends.retain(|b| {
                let present = kept.contains(&config_model::ServiceKey {
                    namespace: b.namespace.clone(),
                    name: b.name.clone(),
                    port: b.port,
                });
                if !present {
                    gone = gone.saturating_add(b.weight);
                    let (ns, name) = entry.route.split_once('/').unwrap_or(("", &entry.route));
                    problems.push(Problem::new(
                        ObjectRef::new(
                            match entry.kind {
                                config_model::route::RouteKind::Http => "HTTPRoute",
                                config_model::route::RouteKind::Grpc => "GRPCRoute",
                            },
                            ns,
                            name,
                        ),
                        format!(
                            "{}: backend {}/{}:{} of the entry on {key} is left out of the table (see its problems); its share is answered 500",
                            entry.route, b.namespace, b.name, b.port
                        ),
                    ));
                }
                present
            });
            if gone > 0 {
                entry.unresolved_weight = entry
                    .unresolved_weight
                    .saturating_add(gone)
                    .min(config_model::table::MAX_WEIGHT);
            }
        }
    }
}

fn shadow_port(s: &ServiceSpec) -> ShadowPort {
    ShadowPort {
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
    }
}

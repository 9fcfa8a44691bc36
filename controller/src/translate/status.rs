//! Stage 6 of translation: the stages' results put together into a [`Translation`]: the table
//! (service ports kept, with what SMI and routes added), one `/api/services` row per port
//! considered and per other object with problems, the shadow Services, and every problem,
//! sorted. Kept between calls ([`Assembly`]): only the Services a change touched (their
//! entry, their SMI additions or route entries, whether the checks leave a port out) are put
//! together again, and the table, rows and shadows they change are updated in maps shared with
//! the last translation; what is left grows with the problems, not with the table.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use config_model::delta::Changes;
use config_model::{NodeSpec, ServiceKey, ServiceSpec, TrafficType, WorkloadSpec};

use super::objects::Name;
use super::output::{ServiceList, SharedTable, StatusRows};
use super::shared::SharedMap;
use super::{
    shadow_name, Lineage, ObjectRef, ObjectStatus, Problem, ServiceStatus, ShadowPort, ShadowSpec,
    Translation, Translator, SCHEMA_VERSION,
};

/// What assembly made of one Service the last time it was put together.
#[derive(Debug, Default)]
struct Made {
    /// Its service ports in the table.
    keys: Vec<ServiceKey>,
    /// Its shadow's name, if it has one.
    shadow: Option<String>,
    /// Its problems: the entry's, splits overridden by routes, a shadow name too long, route
    /// backends of its ports left out.
    problems: Vec<Problem>,
    /// Its `/api/services` rows, errors not filled in.
    statuses: Vec<ServiceStatus>,
}

/// The assembled result kept between calls.
#[derive(Default)]
pub(super) struct Assembly {
    made: HashMap<Name, Made>,
    services: SharedMap<ServiceKey, ServiceSpec>,
    rows: SharedMap<Name, Vec<ServiceStatus>>,
    shadows: SharedMap<String, ShadowSpec>,
    /// Services whose `made.problems` is not empty.
    with_problems: BTreeSet<Name>,
    /// Services whose rows carry errors.
    erred: BTreeSet<Name>,
    /// Service ports the checks left out at the last call.
    left_out: BTreeSet<ServiceKey>,
    nodes: Arc<Vec<NodeSpec>>,
    workloads: SharedMap<String, WorkloadSpec>,
    /// Translations made so far.
    seq: u64,
}

/// A service port with what SMI and routes add to it; `None` when the checks leave it out.
/// Pushes the problems of SMI splits that routes override.
fn final_spec(t: &Translator, p: &ServiceSpec, problems: &mut Vec<Problem>) -> Option<ServiceSpec> {
    let left_out = &t.checks.left_out;
    let additions = &t.smi.additions;
    let routes = &t.gateway.attached.routes;
    if left_out.is_empty() && additions.is_empty() && routes.is_empty() {
        return Some(p.clone());
    }
    let key = p.key();
    if left_out.contains_key(&key) {
        return None;
    }
    let add = additions.get(&key);
    let attached = routes.get(&key);
    let mut spec = p.clone();
    if let Some(add) = add {
        spec.splits = add.splits.clone();
        spec.access = add.access.clone();
    }
    if let Some(attached) = attached {
        // Routes win over an SMI TrafficSplit on the same port.
        for split in spec.splits.drain(..) {
            let (sns, sname) = split.name.split_once('/').unwrap_or(("", &split.name));
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
    Some(spec)
}

/// Puts the translation together; `problems` are those of the port stage and the provider.
pub(super) fn assemble(t: &mut Translator, problems: Vec<Problem>) -> Translation {
    let mut a = std::mem::take(&mut t.assembly);
    let dirty = std::mem::take(&mut t.dirty);
    let pending = std::mem::take(&mut t.mesh_pending);
    let out = a.assemble(t, dirty, pending, problems);
    t.assembly = a;
    out
}

impl Assembly {
    /// The workloads of the table as last assembled.
    pub(super) fn workloads(&self) -> SharedMap<String, WorkloadSpec> {
        self.workloads.clone()
    }

    fn assemble(
        &mut self,
        t: &Translator,
        mut dirty: BTreeSet<Name>,
        workloads_pending: BTreeSet<String>,
        mut problems: Vec<Problem>,
    ) -> Translation {
        let first = self.seq == 0;
        self.seq += 1;
        if first {
            dirty.extend(t.services.keys().cloned());
        }
        // Ports the checks now leave out, or no longer do.
        let left_out: BTreeSet<ServiceKey> = t.checks.left_out.keys().cloned().collect();
        for k in left_out.symmetric_difference(&self.left_out) {
            dirty.insert((k.namespace.clone(), k.name.clone()));
        }
        self.left_out = left_out;
        // Route backends are checked against the whole table: the ports with routes are put
        // together again at every call (there are few).
        let routes = &t.gateway.attached.routes;
        for k in routes.keys() {
            dirty.insert((k.namespace.clone(), k.name.clone()));
        }

        // 1: the Services to redo leave the table; their new ports are made.
        let mut old: HashMap<ServiceKey, Arc<ServiceSpec>> = HashMap::new();
        let mut pending: Vec<(Name, Made, Vec<ServiceSpec>, Option<ShadowSpec>)> = Vec::new();
        for name in &dirty {
            if let Some(made) = self.made.remove(name) {
                for k in &made.keys {
                    if let Some(v) = self.services.remove(k) {
                        old.insert(k.clone(), v);
                    }
                }
                if let Some(shadow) = &made.shadow {
                    self.shadows.remove(shadow.as_str());
                }
            }
            self.with_problems.remove(name);
            let Some(slot) = t.services.get(name) else {
                self.rows.remove(name);
                continue;
            };
            let (ns, svc) = name;
            let mut made = Made {
                problems: slot.entry.problems.clone(),
                ..Made::default()
            };
            let mut specs: Vec<ServiceSpec> = Vec::with_capacity(slot.ported.len());
            for p in &slot.ported {
                specs.extend(final_spec(t, p, &mut made.problems));
            }
            for st in &slot.entry.statuses {
                let mut st = st.clone();
                st.mesh_port = specs
                    .iter()
                    .find(|s| s.port == st.port)
                    .map(|s| s.mesh_port);
                made.statuses.push(st);
            }
            let mut shadow = None;
            if !specs.is_empty() {
                match shadow_name(ns, svc) {
                    Ok(sh) => {
                        shadow = Some(ShadowSpec {
                            namespace: ns.clone(),
                            name: svc.clone(),
                            ports: specs.iter().map(shadow_port).collect(),
                        });
                        made.shadow = Some(sh);
                    }
                    Err(e) => made
                        .problems
                        .push(Problem::new(ObjectRef::service(ns, svc), e.to_string())),
                }
            }
            crate::mesh::keep_identities(t.settings.mesh.mtls, &mut specs);
            pending.push((name.clone(), made, specs, shadow));
        }

        // 2: route backends not in the table get the share of an unresolved one.
        if !routes.is_empty() {
            let new_keys: HashSet<ServiceKey> = pending
                .iter()
                .flat_map(|(_, _, specs, _)| specs.iter().map(ServiceSpec::key))
                .collect();
            let kept = |k: &ServiceKey| self.services.contains_key(k) || new_keys.contains(k);
            for (_, made, specs, _) in &mut pending {
                unresolve_left_out_backends(specs, &kept, &mut made.problems);
            }
        }

        // 3: the new ports join the table; those equal to what they replace stay shared.
        let mut changed: BTreeSet<ServiceKey> = BTreeSet::new();
        for (name, mut made, specs, shadow) in pending {
            for spec in specs {
                let key = spec.key();
                let value = match old.remove(&key) {
                    Some(was) if *was == spec => was,
                    _ => {
                        changed.insert(key.clone());
                        Arc::new(spec)
                    }
                };
                made.keys.push(key.clone());
                self.services.insert(key, value);
            }
            if let (Some(sh), Some(spec)) = (&made.shadow, shadow) {
                self.shadows.insert(sh.clone(), Arc::new(spec));
            }
            if !made.problems.is_empty() {
                self.with_problems.insert(name.clone());
            }
            self.made.insert(name, made);
        }
        changed.extend(old.into_keys());

        // The node proxies and workloads, where the Pods changed them.
        let mut nodes_changed = false;
        let mesh = t.mesh.as_ref();
        let nodes: &[NodeSpec] = mesh.map(|m| m.nodes.as_slice()).unwrap_or_default();
        if *self.nodes != nodes {
            self.nodes = Arc::new(nodes.to_vec());
            nodes_changed = true;
        }
        let mut workloads_changed = Vec::with_capacity(workloads_pending.len());
        for ip in workloads_pending {
            match mesh.and_then(|m| m.workload(&t.mesh_index, &ip)) {
                Some(w) => {
                    self.workloads.insert(ip.clone(), Arc::new(w));
                }
                None => {
                    self.workloads.remove(ip.as_str());
                }
            }
            workloads_changed.push(ip);
        }

        // Every problem, sorted.
        let route_statuses = route_statuses(t, &mut problems);
        for name in &self.with_problems {
            problems.extend(self.made[name].problems.iter().cloned());
        }
        problems.extend(t.checks.left_out.values().cloned());
        problems.extend(t.smi.problems.iter().cloned());
        problems.extend(t.gateway.problems.iter().cloned());
        if let Some(m) = mesh {
            problems.extend(m.problems.iter().cloned());
        }
        problems.sort();
        problems.dedup();

        // Errors of each Service on its rows; problems of other objects (and of Services
        // without a row) as object rows.
        let mut errors: BTreeMap<Name, Vec<String>> = BTreeMap::new();
        for p in &problems {
            if p.object.kind == "Service" {
                errors
                    .entry((p.object.namespace.clone(), p.object.name.clone()))
                    .or_default()
                    .push(p.message.clone());
            }
        }
        let has_rows = |name: &Name| {
            t.services
                .get(name)
                .is_some_and(|slot| !slot.entry.statuses.is_empty())
        };
        let mut objects: Vec<ObjectStatus> = Vec::new();
        for p in &problems {
            let o = &p.object;
            if o.kind == "Service" && has_rows(&(o.namespace.clone(), o.name.clone())) {
                continue;
            }
            match objects.last_mut() {
                Some(last)
                    if last.kind == o.kind
                        && last.namespace == o.namespace
                        && last.name == o.name =>
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
        // Rows again for the Services put together and those whose errors may have changed.
        let erred: BTreeSet<Name> = errors.keys().cloned().collect();
        let again: BTreeSet<&Name> = dirty.iter().chain(&self.erred).chain(&erred).collect();
        for name in again {
            let statuses = self.made.get(name).map(|m| &m.statuses);
            match statuses.filter(|s| !s.is_empty()) {
                Some(statuses) => {
                    let mut rows = statuses.clone();
                    if let Some(e) = errors.get(name) {
                        for r in &mut rows {
                            r.errors = e.clone();
                        }
                    }
                    let same = self.rows.get(name) == Some(&rows);
                    if !same {
                        self.rows.insert(name.clone(), Arc::new(rows));
                    }
                }
                None => {
                    self.rows.remove(name);
                }
            }
        }
        self.erred = erred;

        Translation {
            table: SharedTable {
                schema_version: SCHEMA_VERSION,
                version: 0,
                acl: t.settings.acl,
                mtls: t.settings.mesh.mtls,
                services: ServiceList(self.services.clone()),
                nodes: self.nodes.clone(),
                workloads: self.workloads.clone(),
            },
            services: StatusRows(self.rows.clone()),
            objects,
            shadows: self.shadows.clone(),
            problems,
            route_statuses,
            lineage: Some(Lineage {
                translator: t.id,
                seq: self.seq,
                changes: Changes {
                    services: changed.into_iter().collect(),
                    workloads: workloads_changed,
                    nodes: nodes_changed,
                },
            }),
        }
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
fn unresolve_left_out_backends(
    specs: &mut [ServiceSpec],
    kept: &impl Fn(&ServiceKey) -> bool,
    problems: &mut Vec<Problem>,
) {
    for spec in specs.iter_mut() {
        let key = spec.key();
        for entry in &mut spec.routes {
            let mut gone = 0u32;
            entry.backends.retain(|b| {
                let present = kept(&ServiceKey {
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

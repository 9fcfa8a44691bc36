//! Translation: the objects of a [`Snapshot`] to a routing table, the per-port status list of
//! `/api/services`, the shadow services to keep, and the problems found, in stages that a
//! [`Translator`] keeps between rebuilds so that a change costs in proportion to what it
//! touches: objects (what changed, `objects.rs`) → per-service entries (`entries.rs`) → mesh
//! ports → SMI (`smi_pass.rs`) → Gateway API routes (`gateway_pass.rs`) → table checks (`checks.rs`) → statuses (`status.rs`);
//! beside them, node proxies and workloads from the Pods (`crate::mesh`), redone when a Pod
//! changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use config_model::delta::Changes;
use config_model::{ServiceKey, ServiceSpec, TrafficType, SCHEMA_VERSION};
use serde::Serialize;

use crate::alloc::PortAllocator;
use crate::naming::shadow_name;
use crate::problem::{ObjectRef, Problem};
use crate::settings::Settings;
use crate::snapshot::Snapshot;

mod checks;
mod entries;
mod gateway_pass;
mod objects;
mod output;
mod shared;
mod smi_pass;
mod status;

pub use output::{ServiceList, SharedTable, StatusRows};
pub use shared::SharedMap;

use entries::Entry;
use objects::Name;

/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The result of one translation. The table, the rows and the shadows share their unchanged
/// entries with those of the translation before.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    /// The table to serve; validated as a whole. Its `version` is set by the publisher.
    pub table: SharedTable,
    /// One entry per service port considered (meshed or refused), for `/api/services`.
    pub services: StatusRows,
    /// The other objects with problems (SMI objects, manifests files, services without a port
    /// entry), for `/api/services`.
    pub objects: Vec<ObjectStatus>,
    /// Shadow services to keep in the mesh namespace, by shadow name.
    pub shadows: SharedMap<String, ShadowSpec>,
    /// Every problem found, sorted.
    pub problems: Vec<Problem>,
    /// What Maille concluded for every Gateway API route with a Service parent, for the
    /// `status.parents[]` the leader writes.
    pub route_statuses: Vec<crate::gateway::status::RouteOutcome>,
    /// Which translation this one follows and what changed in the table since it, so that the
    /// publisher need not compare the tables; `None` for a translation made some other way.
    pub lineage: Option<Lineage>,
}

/// Where a translation stands among those of one [`Translator`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lineage {
    /// The translator (unique in the process).
    pub translator: u64,
    /// The translation's number: 1 for the first of its translator.
    pub seq: u64,
    /// What differs in the table from translation `seq - 1` (everything for the first).
    pub changes: Changes,
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

/// Translates the objects into a table from scratch. The allocator keeps TCP/UDP ports stable
/// between calls. Never fails: whatever is wrong is reported per object and left out. The
/// rebuild loop keeps a [`Translator`] instead, which gives the same result for less work.
pub fn translate(
    snapshot: &Snapshot,
    settings: &Settings,
    alloc: &mut PortAllocator,
) -> Translation {
    Translator::new(settings.clone()).translate(snapshot, alloc)
}

/// Translation kept between snapshots: each stage's result, redone only for the Services a
/// change touches. `Translator::new(s).translate(snap, alloc)` after any sequence of earlier
/// snapshots equals [`translate`]`(snap, s, alloc)` (a property test holds it to that).
pub struct Translator {
    settings: Settings,
    objects: objects::Objects,
    /// Per considered Service: its entry, its ports once mesh ports are assigned, its shadow.
    services: BTreeMap<Name, Slot>,
    /// The mesh ports assigned at the last call.
    assigned: BTreeMap<ServiceKey, Option<u16>>,
    smi: smi_pass::SmiPass,
    gateway: gateway_pass::GatewayPass,
    checks: checks::Checks,
    work: Work,
    /// Node proxies and the Pods' problems (and, when the index cannot say, every
    /// workload), as of the last Pod change.
    mesh: Option<MeshOut>,
    /// What each Pod contributes to the mesh part, kept per Pod event.
    mesh_index: crate::mesh::MeshIndex,
    /// Workload addresses whose entry differs from the assembled table's.
    mesh_pending: BTreeSet<String>,
    /// The port stage's and the provider's problems at the last `translate_if_changed`.
    last_problems: Option<Vec<Problem>>,
    /// Services to put together again at the next assembly (touched since the last one).
    dirty: BTreeSet<Name>,
    /// The assembled result of the last call.
    assembly: status::Assembly,
    /// This translator's number, for [`Lineage`].
    id: u64,
}

/// Numbers of translators made so far.
static TRANSLATORS: AtomicU64 = AtomicU64::new(0);

/// The work of the last [`Translator::translate`], for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Services translated again (their object or EndpointSlices changed, or their mesh
    /// ports moved).
    pub services: usize,
    /// Whether the SMI stage ran (or dropped what it had, the last SMI object gone).
    pub smi: bool,
    /// Whether the Gateway API stage ran (or dropped what it had, the last route gone).
    pub gateway: bool,
    /// Whether the node proxies or workloads changed.
    pub mesh: bool,
}

/// The mesh part as of the last Pod change.
#[derive(Debug, Default)]
struct MeshOut {
    /// Node proxies, by node name.
    nodes: Vec<config_model::NodeSpec>,
    /// Pods left out, sorted.
    problems: Vec<Problem>,
    /// Every workload by address, when the index cannot say ([`crate::mesh::MeshIndex::whole`]).
    whole: Option<Vec<config_model::WorkloadSpec>>,
}

impl MeshOut {
    /// The workload of this address (as the table writes it).
    fn workload(
        &self,
        index: &crate::mesh::MeshIndex,
        ip: &str,
    ) -> Option<config_model::WorkloadSpec> {
        match &self.whole {
            Some(all) => all
                .binary_search_by(|w| w.ip.as_str().cmp(ip))
                .ok()
                .map(|i| all[i].clone()),
            None => index.workload(ip),
        }
    }
}

/// What one Service has come to so far.
struct Slot {
    entry: Entry,
    /// The entry's ports with their mesh ports; a port without one (range exhausted) is out.
    ported: Vec<ServiceSpec>,
}

impl Translator {
    /// A translator that has seen nothing yet.
    pub fn new(settings: Settings) -> Self {
        Translator {
            settings,
            objects: objects::Objects::default(),
            services: BTreeMap::new(),
            assigned: BTreeMap::new(),
            smi: smi_pass::SmiPass::default(),
            gateway: gateway_pass::GatewayPass::default(),
            checks: checks::Checks::default(),
            work: Work::default(),
            mesh: None,
            mesh_index: crate::mesh::MeshIndex::default(),
            mesh_pending: BTreeSet::new(),
            last_problems: None,
            dirty: BTreeSet::new(),
            assembly: status::Assembly::default(),
            id: TRANSLATORS.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }

    /// What the last translation redid.
    pub fn work(&self) -> Work {
        self.work
    }

    /// Translates `snapshot`, redoing only what its changes since the last call touch.
    pub fn translate(&mut self, snapshot: &Snapshot, alloc: &mut PortAllocator) -> Translation {
        let problems = self.update(snapshot, alloc);
        // Stage 6: table, statuses, shadows and problems.
        status::assemble(self, problems)
    }

    /// [`Translator::translate`], or `None` when the result would equal the last one returned
    /// (say, a snapshot after a Pod update that changes nothing translation reads): then not
    /// even the result is put together.
    pub fn translate_if_changed(
        &mut self,
        snapshot: &Snapshot,
        alloc: &mut PortAllocator,
    ) -> Option<Translation> {
        let problems = self.update(snapshot, alloc);
        let same = self.work == Work::default() && self.last_problems.as_ref() == Some(&problems);
        self.last_problems = Some(problems.clone());
        if same {
            return None;
        }
        Some(status::assemble(self, problems))
    }

    /// Stages 1 to 5; returns the problems of the port stage and the provider.
    fn update(&mut self, snapshot: &Snapshot, alloc: &mut PortAllocator) -> Vec<Problem> {
        // Stage 1: which Services changed (their object or their EndpointSlices).
        let changes = self.objects.update(snapshot);

        // Stage 2: their entries.
        let mut touched: BTreeSet<Name> = BTreeSet::new();
        for name in &changes.services {
            let entry = self
                .objects
                .service(name)
                .and_then(|(svc, slices)| entries::entry(svc, slices, &self.settings));
            match entry {
                Some(entry) => {
                    self.services.insert(
                        name.clone(),
                        Slot {
                            entry,
                            ported: Vec::new(),
                        },
                    );
                }
                None => {
                    self.services.remove(name);
                }
            }
            touched.insert(name.clone());
        }

        // Stage 3: TCP and UDP mesh ports, over every port wanting one (the allocator keeps
        // them stable); a Service whose ports moved is touched too.
        let mut problems = self.assign_ports(alloc, &mut touched);

        // Stage 4: SMI splits and access rules, for the Services SMI objects reach.
        let (smi_ran, mut smi_touched) = self.smi.run(&self.services, &touched, &changes, snapshot);

        // Stage 4b: Gateway API routes, for the Services they name.
        let (gateway_ran, gateway_touched) = self.gateway.run(&self.services, &touched, snapshot);
        smi_touched.extend(gateway_touched);

        // Beside: node proxies and workloads, from the Pods that changed.
        let mut mesh_changed = false;
        if !changes.pods_went.is_empty() || !changes.pods_came.is_empty() || self.mesh.is_none() {
            mesh_changed = self.update_mesh(&changes, snapshot);
        }
        self.work = Work {
            services: touched.len(),
            smi: smi_ran,
            gateway: gateway_ran,
            mesh: mesh_changed,
        };

        // Stage 5: the table as a whole, in one pass naming every service port left out.
        self.checks.update(
            &self.services,
            &touched,
            &smi_touched,
            &self.smi,
            &self.gateway.attached.routes,
        );
        self.dirty.extend(touched);
        self.dirty.extend(smi_touched);

        problems.extend(snapshot.problems.iter().cloned());
        problems
    }

    /// Brings the mesh part up to date with the Pods that went and came; returns whether it
    /// changed (node proxies, workloads or the Pods' problems).
    fn update_mesh(&mut self, changes: &objects::Changes, snapshot: &Snapshot) -> bool {
        let settings = &self.settings.mesh;
        let touched = self
            .mesh_index
            .update(&changes.pods_went, &changes.pods_came, settings);
        let was_whole = self.mesh.as_ref().is_some_and(|m| m.whole.is_some());
        let held = self.assembly.workloads();
        let (out, candidates): (MeshOut, Vec<String>) = if self.mesh_index.whole() {
            // The result depends on the order of all Pods: from scratch, compared whole.
            let mut part = crate::mesh::mesh_part(&snapshot.pods, settings);
            part.problems.sort();
            let mut ips: BTreeSet<String> = held.keys().cloned().collect();
            ips.extend(part.workloads.iter().map(|w| w.ip.clone()));
            let out = MeshOut {
                nodes: part.nodes,
                problems: part.problems,
                whole: Some(part.workloads),
            };
            (out, ips.into_iter().collect())
        } else {
            let mut problems = self.mesh_index.problems();
            problems.sort();
            let out = MeshOut {
                nodes: self.mesh_index.node_specs(),
                problems,
                whole: None,
            };
            let ips: Vec<String> = if was_whole {
                let mut ips: BTreeSet<String> = held.keys().cloned().collect();
                ips.extend(self.mesh_index.workloads().into_iter().map(|w| w.ip));
                ips.into_iter().collect()
            } else {
                touched.into_iter().collect()
            };
            (out, ips)
        };
        for ip in candidates {
            let want = out.workload(&self.mesh_index, &ip);
            if want.as_ref() == held.get(ip.as_str()) {
                self.mesh_pending.remove(&ip);
            } else {
                self.mesh_pending.insert(ip);
            }
        }
        let changed = !self.mesh_pending.is_empty()
            || self
                .mesh
                .as_ref()
                .is_none_or(|m| m.nodes != out.nodes || m.problems != out.problems);
        self.mesh = Some(out);
        changed
    }

    /// Assigns the TCP/UDP mesh ports and fills each touched Service's `ported`. Returns the
    /// problems of ports left without one.
    fn assign_ports(
        &mut self,
        alloc: &mut PortAllocator,
        touched: &mut BTreeSet<Name>,
    ) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut wanted: BTreeMap<TrafficType, Vec<ServiceKey>> = BTreeMap::new();
        for slot in self.services.values() {
            for p in &slot.entry.ports {
                if p.traffic_type != TrafficType::Http {
                    wanted.entry(p.traffic_type).or_default().push(p.key());
                }
            }
        }
        let mut assigned: BTreeMap<ServiceKey, Option<u16>> = BTreeMap::new();
        for (tt, keys) in &wanted {
            let range = alloc.range(*tt).expect("tcp and udp have ranges");
            for (key, port) in alloc.assign(*tt, keys) {
                if port.is_none() {
                    problems.push(Problem::new(
                        ObjectRef::service(&key.namespace, &key.name),
                        format!(
                            "{}/{}: port {}: the {tt} port range {range} is exhausted ({} ports, all in use); widen --{tt}-ports",
                            key.namespace, key.name, key.port, range.len()
                        ),
                    ));
                }
                assigned.insert(key, port);
            }
        }
        // Services whose assignment changed, though their entry did not.
        let mut moved: BTreeSet<Name> = BTreeSet::new();
        let mut diff = |k: &ServiceKey| {
            moved.insert((k.namespace.clone(), k.name.clone()));
        };
        let (mut old, mut new) = (self.assigned.iter().peekable(), assigned.iter().peekable());
        loop {
            match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some((k, _)), None) => {
                    diff(k);
                    old.next();
                }
                (None, Some((k, _))) => {
                    diff(k);
                    new.next();
                }
                (Some((a, x)), Some((b, y))) => match a.cmp(b) {
                    std::cmp::Ordering::Less => {
                        diff(a);
                        old.next();
                    }
                    std::cmp::Ordering::Greater => {
                        diff(b);
                        new.next();
                    }
                    std::cmp::Ordering::Equal => {
                        if x != y {
                            diff(a);
                        }
                        old.next();
                        new.next();
                    }
                },
            }
        }
        touched.extend(moved);
        for name in touched.iter() {
            let Some(slot) = self.services.get_mut(name) else {
                continue;
            };
            slot.ported = slot
                .entry
                .ports
                .iter()
                .filter_map(|p| {
                    let mut p = p.clone();
                    if p.traffic_type != TrafficType::Http {
                        p.mesh_port = assigned.get(&p.key()).copied().flatten()?;
                    }
                    Some(p)
                })
                .collect();
        }
        self.assigned = assigned;
        problems
    }
}

#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod tests;

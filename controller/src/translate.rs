//! Translation: the objects of a [`Snapshot`] to a routing table, the per-port status list of
//! `/api/services`, the shadow services to keep, and the problems found, in stages that a
//! [`Translator`] keeps between rebuilds so that a change costs in proportion to what it
//! touches: objects (what changed, `objects.rs`) → per-service entries (`entries.rs`) → mesh
//! ports → SMI (`smi_pass.rs`) → Gateway API routes (`gateway_pass.rs`) → table checks (`checks.rs`) → statuses (`status.rs`);
//! beside them, node proxies and workloads from the Pods (`crate::mesh`), redone when a Pod
//! changes.

use std::collections::{BTreeMap, BTreeSet};

use config_model::{ServiceKey, ServiceSpec, TableSpec, TrafficType, SCHEMA_VERSION};
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
mod smi_pass;
mod status;

use entries::Entry;
use objects::Name;

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
    /// What Maille concluded for every Gateway API route with a Service parent, for the
    /// `status.parents[]` the leader writes.
    pub route_statuses: Vec<crate::gateway::status::RouteOutcome>,
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
    /// Node proxies and workloads, as of the last Pod change.
    mesh: Option<crate::mesh::MeshPart>,
    /// The port stage's and the provider's problems at the last `translate_if_changed`.
    last_problems: Option<Vec<Problem>>,
}

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
            last_problems: None,
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
        (!same).then(|| status::assemble(self, problems))
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

        // Beside: node proxies and workloads, from the Pods.
        let mut mesh_changed = false;
        if changes.pods || self.mesh.is_none() {
            let part = crate::mesh::mesh_part(&snapshot.pods, &self.settings.mesh);
            mesh_changed = self.mesh.as_ref() != Some(&part);
            self.mesh = Some(part);
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

        problems.extend(snapshot.problems.iter().cloned());
        problems
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

//! Stage 4b of translation: the Gateway API routes (`crate::gateway::routes::attach`), run
//! again only when a route changed in what translation reads of it (its spec, uid, generation
//! or creation time: a status write is not a change), or when a Service a route names (as
//! parent or backend) was touched. The service ports whose route entries changed are handed
//! to the checks stage; the others are left as they are.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use config_model::ServiceKey;
use kube::ResourceExt;

use super::objects::Name;
use super::Slot;
use crate::gateway::routes::{attach, referenced, Attached};
use crate::gateway::status::RouteOutcome;
use crate::gateway::{GRPCRoute, GatewayObjects, HTTPRoute};
use crate::problem::{ObjectRef, Problem};
use crate::snapshot::Snapshot;

/// The Gateway API stage's state between calls.
#[derive(Default)]
pub(super) struct GatewayPass {
    http: Held<HTTPRoute>,
    grpc: Held<GRPCRoute>,
    /// Services the routes name, as parents or backends.
    referenced: BTreeSet<Name>,
    /// Route entries per service port, and the outcome of every route with a Service parent.
    pub attached: Attached,
    /// Problems on routes (a parent not accepted, a backend not resolved).
    pub problems: Vec<Problem>,
}

/// What translation reads of a route, by namespace/name, to tell a status write (ignored)
/// from a change.
struct Held<K> {
    by_name: HashMap<(String, String), Arc<K>>,
}

impl<K> Default for Held<K> {
    fn default() -> Self {
        Held {
            by_name: HashMap::new(),
        }
    }
}

trait Read {
    fn same_for_translation(&self, other: &Self) -> bool;
}

impl Read for HTTPRoute {
    fn same_for_translation(&self, other: &Self) -> bool {
        same_meta(self, other) && self.spec == other.spec
    }
}

impl Read for GRPCRoute {
    fn same_for_translation(&self, other: &Self) -> bool {
        same_meta(self, other) && self.spec == other.spec
    }
}

fn same_meta(a: &impl ResourceExt, b: &impl ResourceExt) -> bool {
    a.uid() == b.uid()
        && a.meta().generation == b.meta().generation
        && a.creation_timestamp() == b.creation_timestamp()
}

impl<K: Read + ResourceExt> Held<K> {
    /// Takes in the routes now held; returns whether any changed in what translation reads.
    fn update(&mut self, now: &[Arc<K>]) -> bool {
        let mut changed = now.len() != self.by_name.len();
        let mut next = HashMap::with_capacity(now.len());
        for r in now {
            let key = (r.namespace().unwrap_or_default(), r.name_any());
            if !changed {
                changed = match self.by_name.get(&key) {
                    Some(old) => !Arc::ptr_eq(old, r) && !old.same_for_translation(r),
                    None => true,
                };
            }
            next.insert(key, r.clone());
        }
        // Two objects of one name (a provider breaking the rule) count as a change.
        changed |= next.len() != now.len();
        self.by_name = next;
        changed
    }
}

impl GatewayPass {
    /// Brings the route entries up to date. Returns whether routes were attached again (or
    /// what they gave was dropped, the last route gone), and the Services whose route entries
    /// changed.
    pub fn run(
        &mut self,
        services: &BTreeMap<Name, Slot>,
        touched: &BTreeSet<Name>,
        snap: &Snapshot,
    ) -> (bool, BTreeSet<Name>) {
        let objects: &GatewayObjects = &snap.gateway;
        let routes_changed =
            self.http.update(&objects.http_routes) | self.grpc.update(&objects.grpc_routes);
        if objects.is_empty() {
            let had = !self.attached.routes.is_empty() || !self.attached.outcomes.is_empty();
            let changed = names_of(self.attached.routes.keys());
            *self = GatewayPass::default();
            return (had, changed);
        }
        if routes_changed {
            self.referenced = referenced(objects);
        } else if !touched.iter().any(|n| self.referenced.contains(n)) {
            return (false, BTreeSet::new());
        }
        let attached = attach(objects, |name| {
            services.get(name).map(|slot| slot.ported.as_slice())
        });
        let mut changed = BTreeSet::new();
        for (k, entries) in &self.attached.routes {
            if attached.routes.get(k) != Some(entries) {
                changed.insert((k.namespace.clone(), k.name.clone()));
            }
        }
        for k in attached.routes.keys() {
            if !self.attached.routes.contains_key(k) {
                changed.insert((k.namespace.clone(), k.name.clone()));
            }
        }
        self.problems = attached.outcomes.values().flat_map(problems_of).collect();
        self.attached = attached;
        (true, changed)
    }
}

fn names_of<'a>(keys: impl Iterator<Item = &'a ServiceKey>) -> BTreeSet<Name> {
    keys.map(|k| (k.namespace.clone(), k.name.clone()))
        .collect()
}

/// A problem per false condition of a route's outcome, for `/api/services` and the logs.
fn problems_of(o: &RouteOutcome) -> Vec<Problem> {
    let object = ObjectRef::new(o.key.kind.as_str(), &o.key.namespace, &o.key.name);
    let mut out = Vec::new();
    for p in &o.parents {
        for (condition, v) in [("Accepted", &p.accepted), ("ResolvedRefs", &p.resolved)] {
            if !v.ok {
                out.push(Problem::new(
                    object.clone(),
                    format!(
                        "{}/{}: parentRef Service {}: {condition}=False ({}): {}",
                        o.key.namespace, o.key.name, p.parent_ref.name, v.reason, v.message
                    ),
                ));
            }
        }
    }
    out
}

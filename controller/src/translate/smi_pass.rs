//! Stage 4 of translation: the SMI splits and access rules (`crate::smi::apply`), run over
//! the Services SMI objects can reach only, and again only when those Services, the SMI
//! objects or (with TrafficTargets) the Pods changed.
//!
//! A Service is reached when a TrafficSplit names it (as root or backend), or when one of its
//! endpoints is a Pod running under the destination ServiceAccount of a TrafficTarget.
//! `smi::apply` never looks at other Services, so running it over the reached ones gives what
//! running it over all gives.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};

use config_model::{AccessRuleSpec, ServiceKey, ServiceSpec, SplitSpec};
use kube::ResourceExt;

use super::objects::{Changes, Name};
use super::Slot;
use crate::problem::{ObjectRef, Problem};
use crate::snapshot::Snapshot;

/// What SMI adds to one service port.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Additions {
    pub splits: Vec<SplitSpec>,
    pub access: Vec<AccessRuleSpec>,
}

/// The SMI stage's state between calls.
#[derive(Default)]
pub(super) struct SmiPass {
    /// Services named by a TrafficSplit (namespace of the split, first label of the name).
    split_names: BTreeSet<Name>,
    /// Addresses of the Pods running under a destination ServiceAccount of a TrafficTarget.
    access_ips: HashSet<IpAddr>,
    /// The Services reached, as of the last call.
    reached: BTreeSet<Name>,
    /// What SMI added, by service port (ports with nothing added are absent).
    pub additions: BTreeMap<ServiceKey, Additions>,
    /// Problems on SMI objects.
    pub problems: Vec<Problem>,
}

impl SmiPass {
    /// Brings the additions up to date. Returns whether `smi::apply` ran (or what it gave was
    /// dropped), and the Services whose additions changed.
    pub fn run(
        &mut self,
        services: &BTreeMap<Name, Slot>,
        touched: &BTreeSet<Name>,
        changes: &Changes,
        snap: &Snapshot,
    ) -> (bool, BTreeSet<Name>) {
        let smi = &snap.smi;
        if smi.is_empty() {
            // The last SMI object gone: what it added and its problems go too.
            let had = !self.additions.is_empty() || !self.problems.is_empty();
            let changed = names_of(self.additions.keys());
            *self = SmiPass::default();
            return (had, changed);
        }
        let inputs = changes.smi || (changes.pods && !smi.traffic_targets.is_empty());
        if inputs {
            self.split_names = split_names(snap);
            self.access_ips = access_ips(snap);
            self.reached = services
                .iter()
                .filter(|(name, slot)| self.reaches(name, &slot.ported))
                .map(|(name, _)| name.clone())
                .collect();
        } else {
            let mut rerun = false;
            for name in touched {
                let was = self.reached.remove(name);
                let is = services
                    .get(name)
                    .is_some_and(|slot| self.reaches(name, &slot.ported));
                if is {
                    self.reached.insert(name.clone());
                }
                rerun |= was || is;
            }
            if !rerun {
                return (false, BTreeSet::new());
            }
        }

        let mut subset: Vec<ServiceSpec> = self
            .reached
            .iter()
            .filter_map(|name| services.get(name))
            .flat_map(|slot| slot.ported.iter().cloned())
            .collect();
        self.problems = crate::smi::apply(&mut subset, smi, &snap.pods)
            .into_iter()
            .map(|p| {
                Problem::new(
                    ObjectRef::new(p.kind, &p.namespace, &p.name),
                    format!("{}/{}: {}", p.namespace, p.name, p.message),
                )
            })
            .collect();
        let additions: BTreeMap<ServiceKey, Additions> = subset
            .into_iter()
            .filter(|s| !s.splits.is_empty() || !s.access.is_empty())
            .map(|s| {
                (
                    s.key(),
                    Additions {
                        splits: s.splits,
                        access: s.access,
                    },
                )
            })
            .collect();
        let mut changed = BTreeSet::new();
        for (k, a) in &self.additions {
            if additions.get(k) != Some(a) {
                changed.insert((k.namespace.clone(), k.name.clone()));
            }
        }
        for k in additions.keys() {
            if !self.additions.contains_key(k) {
                changed.insert((k.namespace.clone(), k.name.clone()));
            }
        }
        self.additions = additions;
        (true, changed)
    }

    fn reaches(&self, name: &Name, ports: &[ServiceSpec]) -> bool {
        self.split_names.contains(name)
            || (!self.access_ips.is_empty()
                && ports.iter().flat_map(|p| &p.endpoints).any(|e| {
                    e.address
                        .parse::<SocketAddr>()
                        .is_ok_and(|a| self.access_ips.contains(&a.ip()))
                }))
    }
}

fn names_of<'a>(keys: impl Iterator<Item = &'a ServiceKey>) -> BTreeSet<Name> {
    keys.map(|k| (k.namespace.clone(), k.name.clone()))
        .collect()
}

/// Every Service a TrafficSplit names, whether or not the name is valid (a superset is safe).
fn split_names(snap: &Snapshot) -> BTreeSet<Name> {
    let mut out = BTreeSet::new();
    for ts in &snap.smi.traffic_splits {
        let ns = ts.namespace().unwrap_or_default();
        let names =
            std::iter::once(&ts.spec.service).chain(ts.spec.backends.iter().map(|b| &b.service));
        for n in names {
            let first = n.split('.').next().unwrap_or("");
            out.insert((ns.clone(), first.to_string()));
        }
    }
    out
}

/// Addresses of every unfinished Pod running under a destination ServiceAccount of some
/// TrafficTarget (in the target's namespace). A superset of what `smi::access` matches.
fn access_ips(snap: &Snapshot) -> HashSet<IpAddr> {
    let mut accounts: HashSet<(String, &str)> = HashSet::new();
    for tt in &snap.smi.traffic_targets {
        accounts.insert((
            tt.namespace().unwrap_or_default(),
            tt.spec.destination.name.as_str(),
        ));
    }
    let mut out = HashSet::new();
    if accounts.is_empty() {
        return out;
    }
    for pod in &snap.pods {
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let spec = pod.spec.as_ref();
        #[allow(deprecated)]
        let sa = spec
            .and_then(|s| {
                s.service_account_name
                    .as_deref()
                    .or(s.service_account.as_deref())
            })
            .unwrap_or("default");
        if !accounts.contains(&(ns, sa)) {
            continue;
        }
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        let ips = status
            .pod_ip
            .iter()
            .chain(status.pod_ips.iter().flatten().map(|p| &p.ip));
        out.extend(ips.filter_map(|ip| ip.parse::<IpAddr>().ok()));
    }
    out
}

//! Stage 5 of translation: the checks of the table as a whole, in one pass that names every
//! service port left out. Each service port is already valid alone (entry stage); what is left
//! is what two of them can do together: claim the same HTTP host on a listener (the mesh name,
//! or a cluster IP two Services share) or the same TCP/UDP listener, and splits whose
//! backends are gone. The claims are kept between calls and updated for the Services that
//! changed, so a change costs in proportion to it; the service ports SMI added to are checked
//! again whole.
//!
//! When claims collide, service ports are taken in table order and each one that claims
//! something an earlier kept one holds is left out, the way the proxy would refuse it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use config_model::route::RouteSpec;
use config_model::{Error, ServiceKey, ServiceSpec, TrafficType, MESH_DOMAIN};

use super::objects::Name;
use super::smi_pass::SmiPass;
use super::Slot;
use crate::problem::{ObjectRef, Problem};

/// Something only one service port may have.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Claim {
    /// An HTTP host name (`name.namespace.maille.mesh`) on a listener port.
    Host(Name, u16),
    /// An HTTP host given as an address (the cluster IP) on a listener port.
    Ip(IpAddr, u16),
    /// A TCP or UDP listener port.
    Port(TrafficType, u16),
}

/// The checks' state between calls.
#[derive(Default)]
pub(super) struct Checks {
    /// Who claims what.
    holders: HashMap<Claim, BTreeSet<ServiceKey>>,
    /// What each Service's ports claim, to take it back when the Service changes.
    by_service: HashMap<Name, Vec<(ServiceKey, Vec<Claim>)>>,
    /// Claims with more than one holder.
    contested: BTreeSet<Claim>,
    /// Service ports SMI or Gateway API routes added to, with why the whole port is refused
    /// (if it is).
    smi_refused: BTreeMap<ServiceKey, Option<Error>>,
    /// Service ports left out, with why.
    pub left_out: BTreeMap<ServiceKey, Problem>,
}

fn claims(s: &ServiceSpec) -> Vec<Claim> {
    match s.traffic_type {
        TrafficType::Http => {
            let mut out = vec![Claim::Host(
                (s.namespace.clone(), s.name.clone()),
                s.mesh_port,
            )];
            if let Some(ip) = s
                .cluster_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            {
                out.push(Claim::Ip(ip.to_canonical(), s.mesh_port));
            }
            out
        }
        tt => vec![Claim::Port(tt, s.mesh_port)],
    }
}

impl Checks {
    /// Updates the claims of the `touched` Services, checks again the ports of those SMI
    /// added to (`smi_touched`: their additions changed), and works out what is left out.
    pub fn update(
        &mut self,
        services: &BTreeMap<Name, Slot>,
        touched: &BTreeSet<Name>,
        smi_touched: &BTreeSet<Name>,
        smi: &SmiPass,
        routes: &BTreeMap<ServiceKey, Vec<RouteSpec>>,
    ) {
        for name in touched {
            for (key, claims) in self.by_service.remove(name).unwrap_or_default() {
                for c in claims {
                    if let Some(set) = self.holders.get_mut(&c) {
                        set.remove(&key);
                        match set.len() {
                            0 => {
                                self.holders.remove(&c);
                                self.contested.remove(&c);
                            }
                            1 => {
                                self.contested.remove(&c);
                            }
                            _ => {}
                        }
                    }
                }
            }
            let Some(slot) = services.get(name) else {
                continue;
            };
            let mut mine = Vec::with_capacity(slot.ported.len());
            for s in &slot.ported {
                let key = s.key();
                let cs = claims(s);
                for c in &cs {
                    let set = self.holders.entry(c.clone()).or_default();
                    set.insert(key.clone());
                    if set.len() > 1 {
                        self.contested.insert(c.clone());
                    }
                }
                mine.push((key, cs));
            }
            self.by_service.insert(name.clone(), mine);
        }

        // SMI additions and route entries, checked with the port they go to (route entries
        // were checked alone when attached; this is the port's rule over all of them). Routes
        // replace SMI splits on a port (docs/gateway-api.md).
        let again: BTreeSet<&Name> = touched.iter().chain(smi_touched).collect();
        self.smi_refused.retain(|k, _| {
            (smi.additions.contains_key(k) || routes.contains_key(k))
                && !again.contains(&name_of(k))
        });
        let keys: BTreeSet<&ServiceKey> = smi.additions.keys().chain(routes.keys()).collect();
        for key in keys {
            if self.smi_refused.contains_key(key) {
                continue;
            }
            let Some(spec) = services
                .get(&name_of(key))
                .and_then(|slot| slot.ported.iter().find(|s| s.port == key.port))
            else {
                continue;
            };
            let add = smi.additions.get(key);
            let routes = routes.get(key).cloned().unwrap_or_default();
            let whole = ServiceSpec {
                splits: if routes.is_empty() {
                    add.map(|a| a.splits.clone()).unwrap_or_default()
                } else {
                    Vec::new()
                },
                access: add.map(|a| a.access.clone()).unwrap_or_default(),
                routes,
                ..spec.clone()
            };
            self.smi_refused.insert(key.clone(), whole.validate().err());
        }

        self.left_out.clear();
        let problem = |key: &ServiceKey, e: Error| {
            Problem::new(ObjectRef::service(&key.namespace, &key.name), e.to_string())
        };
        for (key, e) in &self.smi_refused {
            if let Some(e) = e {
                self.left_out.insert(key.clone(), problem(key, e.clone()));
            }
        }

        // Contested claims: in table order, each port that claims what an earlier kept one
        // holds is left out. Ports with no contested claim are kept whatever happens here.
        let contenders: BTreeSet<&ServiceKey> = self
            .contested
            .iter()
            .flat_map(|c| &self.holders[c])
            .collect();
        let mut held: HashMap<&Claim, &ServiceKey> = HashMap::new();
        for key in contenders {
            if self.left_out.contains_key(key) {
                continue;
            }
            let mine = &self.by_service[&name_of(key)];
            let Some((_, cs)) = mine.iter().find(|(k, _)| k == key) else {
                continue;
            };
            let clash = cs.iter().find_map(|c| held.get(c).map(|first| (c, *first)));
            match clash {
                Some((c, first)) => {
                    let (first, second) = (first.to_string(), key.to_string());
                    let e = match c {
                        Claim::Host((ns, name), mesh_port) => Error::DuplicateHttpRoute {
                            first,
                            second,
                            host: format!("{name}.{ns}.{MESH_DOMAIN}"),
                            mesh_port: *mesh_port,
                        },
                        Claim::Ip(ip, mesh_port) => Error::DuplicateHttpRoute {
                            first,
                            second,
                            host: ip.to_string(),
                            mesh_port: *mesh_port,
                        },
                        Claim::Port(traffic_type, mesh_port) => Error::DuplicateMeshPort {
                            first,
                            second,
                            traffic_type: *traffic_type,
                            mesh_port: *mesh_port,
                        },
                    };
                    self.left_out.insert(key.clone(), problem(key, e));
                }
                None => {
                    for c in cs {
                        held.insert(c, key);
                    }
                }
            }
        }

        // Splits whose backend is left out or absent leave their root out, and so on up.
        loop {
            let mut more = Vec::new();
            for (key, add) in &smi.additions {
                if self.left_out.contains_key(key) || routes.contains_key(key) {
                    continue;
                }
                let gone = add.splits.iter().enumerate().find_map(|(i, split)| {
                    split.backends.iter().enumerate().find_map(|(j, b)| {
                        let bk = ServiceKey {
                            namespace: b.namespace.clone(),
                            name: b.name.clone(),
                            port: b.port,
                        };
                        let present = services
                            .get(&name_of(&bk))
                            .is_some_and(|slot| slot.ported.iter().any(|s| s.port == bk.port));
                        (!present || self.left_out.contains_key(&bk))
                            .then(|| (format!("splits[{i}].backends[{j}]"), bk))
                    })
                });
                if let Some((field, bk)) = gone {
                    let e = Error::InvalidField {
                        service: key.to_string(),
                        field,
                        value: bk.to_string(),
                        reason: "the backend is not in the table (left out, see its problems)"
                            .into(),
                    };
                    more.push((key.clone(), problem(key, e)));
                }
            }
            if more.is_empty() {
                break;
            }
            self.left_out.extend(more);
        }
    }
}

fn name_of(k: &ServiceKey) -> Name {
    (k.namespace.clone(), k.name.clone())
}

//! The lookup indexes of a [`Table`] (identity, HTTP host, TCP and UDP port) and how one
//! service port enters, leaves or moves in them: shared by a full build and by a delta, which
//! copies the indexes (reference counts only, no allocation per entry) and touches the entries
//! of the services it names.

use std::collections::HashMap;
use std::sync::Arc;

use super::shards::Keyed;
use super::{Error, Result, Service, ServiceId, ServiceKey, Table};
use crate::mesh::{MtlsMode, Nodes, Workloads};
use crate::wire::TrafficType;
use crate::MESH_DOMAIN;

/// An entry of the identity index: the service port (the `Arc` the table holds, so the index
/// needs no copy of the key) and its position.
#[derive(Clone, Debug)]
pub(super) struct KeyEntry {
    pub(super) svc: Arc<Service>,
    pub(super) id: ServiceId,
}

impl Keyed for KeyEntry {
    type Key = ServiceKey;
    fn key(&self) -> &ServiceKey {
        &self.svc.key
    }
}

/// An entry of the HTTP host index: a lower-case host and the service ports claiming it.
#[derive(Clone, Debug)]
pub(super) struct HostEntry {
    host: Arc<str>,
    pub(super) ports: HostPorts,
}

impl Keyed for HostEntry {
    type Key = str;
    fn key(&self) -> &str {
        &self.host
    }
}

/// The service ports claiming one HTTP host, by listener port. Nearly every host has one
/// claimant, kept inline (no allocation); more share a slice.
#[derive(Clone, Debug)]
pub(super) enum HostPorts {
    One(u16, ServiceId),
    Many(Arc<[(u16, ServiceId)]>),
}

impl HostPorts {
    pub(super) fn get(&self, port: u16) -> Option<ServiceId> {
        match self {
            HostPorts::One(p, id) => (*p == port).then_some(*id),
            HostPorts::Many(all) => all.iter().find(|(p, _)| *p == port).map(|(_, id)| *id),
        }
    }

    /// The claims with one more; `None` when `port` is already claimed (by the id returned).
    fn with(&self, port: u16, id: ServiceId) -> std::result::Result<HostPorts, ServiceId> {
        if let Some(other) = self.get(port) {
            return Err(other);
        }
        let mut all: Vec<(u16, ServiceId)> = match self {
            HostPorts::One(p, i) => vec![(*p, *i)],
            HostPorts::Many(all) => all.to_vec(),
        };
        all.push((port, id));
        Ok(HostPorts::Many(all.into()))
    }

    /// The claims without `id`'s; `None` when none is left.
    fn without(&self, id: ServiceId) -> Option<HostPorts> {
        match self {
            HostPorts::One(_, i) if *i == id => None,
            HostPorts::One(..) => Some(self.clone()),
            HostPorts::Many(all) => {
                let rest: Vec<(u16, ServiceId)> =
                    all.iter().copied().filter(|(_, i)| *i != id).collect();
                match rest[..] {
                    [] => None,
                    [(p, i)] => Some(HostPorts::One(p, i)),
                    _ => Some(HostPorts::Many(rest.into())),
                }
            }
        }
    }

    /// The claims with `from`'s claim made by `to`.
    fn repointed(&self, from: ServiceId, to: ServiceId) -> HostPorts {
        let swap = |i: ServiceId| if i == from { to } else { i };
        match self {
            HostPorts::One(p, i) => HostPorts::One(*p, swap(*i)),
            HostPorts::Many(all) => {
                HostPorts::Many(all.iter().map(|(p, i)| (*p, swap(*i))).collect())
            }
        }
    }
}

/// The HTTP hosts a service port answers: its mesh name and, when it has one, its cluster IP.
fn http_hosts(svc: &Service) -> impl Iterator<Item = String> {
    let mesh = format!("{}.{}.{}", svc.key.name, svc.key.namespace, MESH_DOMAIN);
    std::iter::once(mesh).chain(svc.cluster_ip.map(|ip| ip.to_string()))
}

impl Table {
    /// Adds service port `id` (already in `services`) to the identity index. Refuses a key the
    /// table already has.
    pub(super) fn index_key(&mut self, id: ServiceId) -> Result<()> {
        let svc = self.services[id.index()].clone();
        if let Some(other) = self.by_key.get(&svc.key) {
            if other.id != id {
                return Err(Error::DuplicateService(svc.key.to_string()));
            }
        }
        self.set_key(svc, id);
        Ok(())
    }

    /// Points the identity entry of `svc` at `id`, holding `svc` itself (the entry is replaced
    /// whole: keeping its old `Arc` would keep a replaced service alive).
    fn set_key(&mut self, svc: Arc<Service>, id: ServiceId) {
        self.by_key.insert(KeyEntry { svc, id });
    }

    /// Adds the routes of service port `id` (already in `services`) to the host and port
    /// indexes, refusing a host or port another service port holds.
    pub(super) fn index_routes(&mut self, id: ServiceId) -> Result<()> {
        let svc = self.services[id.index()].clone();
        let port = svc.mesh_port;
        match svc.traffic_type {
            TrafficType::Http => {
                for host in http_hosts(&svc) {
                    let next = match self.http_hosts.get(host.as_str()) {
                        None => HostPorts::One(port, id),
                        Some(claims) => claims.ports.with(port, id).map_err(|other| {
                            Error::DuplicateHttpRoute {
                                first: self[other].key.to_string(),
                                second: svc.key.to_string(),
                                host: host.clone(),
                                mesh_port: port,
                            }
                        })?,
                    };
                    self.http_hosts.insert(HostEntry {
                        host: Arc::from(host),
                        ports: next,
                    });
                }
            }
            tt @ (TrafficType::Tcp | TrafficType::Udp) => {
                let ports = port_index(&mut self.tcp_ports, &mut self.udp_ports, tt);
                if let Some(&other) = ports.get(&port) {
                    return Err(Error::DuplicateMeshPort {
                        first: self.services[other.index()].key.to_string(),
                        second: svc.key.to_string(),
                        traffic_type: tt,
                        mesh_port: port,
                    });
                }
                Arc::make_mut(ports).insert(port, id);
            }
        }
        Ok(())
    }

    /// Takes the routes of service port `id` out of the host and port indexes.
    pub(super) fn unindex_routes(&mut self, id: ServiceId) {
        let svc = self.services[id.index()].clone();
        match svc.traffic_type {
            TrafficType::Http => {
                for host in http_hosts(&svc) {
                    let rest = match self.http_hosts.get(host.as_str()) {
                        Some(claims) => claims.ports.without(id),
                        None => continue,
                    };
                    match rest {
                        Some(rest) => {
                            if let Some(claims) = self.http_hosts.get_mut(host.as_str()) {
                                claims.ports = rest;
                            }
                        }
                        None => {
                            self.http_hosts.remove(host.as_str());
                        }
                    }
                }
            }
            tt @ (TrafficType::Tcp | TrafficType::Udp) => {
                let ports = port_index(&mut self.tcp_ports, &mut self.udp_ports, tt);
                if ports.get(&svc.mesh_port) == Some(&id) {
                    Arc::make_mut(ports).remove(&svc.mesh_port);
                }
            }
        }
    }

    /// Moves the service port at `from` to the position `to` (free, or the one it takes over):
    /// its identity entry and whatever routes of it are indexed follow.
    pub(super) fn move_service(&mut self, from: ServiceId, to: ServiceId) {
        let svc = self.services[from.index()].clone();
        self.services.set(to.index(), svc.clone());
        self.set_key(svc.clone(), to);
        match svc.traffic_type {
            TrafficType::Http => {
                for host in http_hosts(&svc) {
                    if let Some(claims) = self.http_hosts.get_mut(host.as_str()) {
                        claims.ports = claims.ports.repointed(from, to);
                    }
                }
            }
            tt @ (TrafficType::Tcp | TrafficType::Udp) => {
                let ports = port_index(&mut self.tcp_ports, &mut self.udp_ports, tt);
                if ports.get(&svc.mesh_port) == Some(&from) {
                    Arc::make_mut(ports).insert(svc.mesh_port, to);
                }
            }
        }
    }
}

fn port_index<'a>(
    tcp: &'a mut Arc<HashMap<u16, ServiceId>>,
    udp: &'a mut Arc<HashMap<u16, ServiceId>>,
    tt: TrafficType,
) -> &'a mut Arc<HashMap<u16, ServiceId>> {
    if tt == TrafficType::Tcp {
        tcp
    } else {
        udp
    }
}

impl Table {
    /// A copy of this table's services and indexes under a new version and mesh part, to
    /// apply a delta to ([`Table::apply_changes`]): one reference count per chunk and shard,
    /// and the list of services with splits or routes.
    pub(crate) fn copy_for(
        &self,
        version: u64,
        acl: bool,
        mtls: MtlsMode,
        nodes: Arc<Nodes>,
        workloads: Arc<Workloads>,
    ) -> Table {
        Table {
            version,
            acl,
            mtls,
            nodes,
            workloads,
            services: self.services.clone(),
            targets: self.targets.clone(),
            roots: self.roots.clone(),
            http_hosts: self.http_hosts.clone(),
            tcp_ports: self.tcp_ports.clone(),
            udp_ports: self.udp_ports.clone(),
            by_key: self.by_key.clone(),
        }
    }

    /// Takes out the service ports at `removed` (distinct positions of this table) and puts in
    /// `changed` (validated, distinct keys, none of them removed): a changed service port keeps
    /// its position, an added one comes last, the last one takes the place of a removed one.
    /// Then checks the routes of the changed service ports against the others' and resolves
    /// the split and route backends of all ([`Table::resolve_targets`]).
    pub(crate) fn apply_changes(
        &mut self,
        mut removed: Vec<ServiceId>,
        changed: Vec<Arc<Service>>,
    ) -> Result<()> {
        // Every route of a removed or changed service leaves before any comes in, so that two
        // services may trade a host or port in one delta.
        for &id in &removed {
            self.unindex_routes(id);
            let key = self.services[id.index()].key.clone();
            self.by_key.remove(&key);
        }
        // Positions whose service is not the one there before: their split and route
        // backends are resolved again.
        let mut touched = Vec::with_capacity(changed.len() + removed.len());
        let mut added = Vec::new();
        for svc in changed.iter() {
            match self.service(&svc.key) {
                Some(id) => {
                    self.unindex_routes(id);
                    self.services.set(id.index(), svc.clone());
                    self.set_key(svc.clone(), id);
                    touched.push(id);
                }
                None => added.push(svc.clone()),
            }
        }
        removed.sort_unstable_by(|a, b| b.cmp(a));
        for id in removed {
            let last = ServiceId::new(self.services.len() - 1);
            if last != id {
                self.move_service(last, id);
                touched.push(id);
            }
            self.services.pop();
            self.targets.pop();
        }
        for svc in added {
            let id = ServiceId::new(self.services.len());
            self.services.push(svc);
            self.targets.push(None);
            self.index_key(id)?;
            touched.push(id);
        }
        for svc in &changed {
            let id = self
                .service(&svc.key)
                .expect("a changed service port is in the table");
            self.index_routes(id)?;
        }
        self.resolve_targets(touched)
    }
}

#[cfg(test)]
impl Table {
    /// The number of entries of each index (identity, HTTP host claims, TCP, UDP): a table
    /// reached by deltas must have no entry left over that one built whole lacks.
    pub(crate) fn index_sizes(&self) -> [usize; 4] {
        let claims = self
            .http_hosts
            .iter()
            .map(|c| match &c.ports {
                HostPorts::One(..) => 1,
                HostPorts::Many(all) => all.len(),
            })
            .sum();
        [
            self.by_key.len(),
            claims,
            self.tcp_ports.len(),
            self.udp_ports.len(),
        ]
    }

    /// Chunks of the service list, shards of the identity index and shards of the host index
    /// that this table holds and `other` does not share.
    pub(crate) fn unshared_with(&self, other: &Table) -> [usize; 3] {
        [
            self.services.chunks_unshared_with(&other.services),
            self.by_key.shards_unshared_with(&other.by_key),
            self.http_hosts.shards_unshared_with(&other.http_hosts),
        ]
    }
}

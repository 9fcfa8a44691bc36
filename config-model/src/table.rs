//! The validated, indexed routing table that the proxy holds and routes with.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::cut::cut_display;
use crate::mesh::{MtlsMode, Nodes, Workloads};
use crate::wire::TrafficType;

mod build;
pub mod chunks;
mod index;
mod service;
mod shards;
mod stream;
mod validate;

pub use chunks::Chunks;
pub use service::{AccessRule, Endpoint, HttpMatch, Service, ServiceKey, Split, SplitBackend};
pub use validate::is_dns_label;

/// Highest endpoint or split weight accepted.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Why a table (or one service of it) was refused. Every variant names the service at fault
/// (`namespace/name:port`), the field and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The table was written for another schema.
    #[error("table schema version {found} is not supported (this build reads version {expected})")]
    SchemaVersion {
        /// Version in the table.
        found: u32,
        /// Version this build reads.
        expected: u32,
    },
    /// A field of a service has a value that is not allowed. The value is cut to a bounded
    /// length ([`crate::cut::cut`]).
    #[error("service {service}: field {field}: invalid value {value:?}: {reason}")]
    InvalidField {
        /// `namespace/name:port`.
        service: String,
        /// Path of the field, e.g. `endpoints[2].address`.
        field: String,
        /// The offending value.
        value: String,
        /// What was expected instead.
        reason: String,
    },
    /// Two HTTP services answer the same host on the same listener port.
    #[error("services {first} and {second} both claim host {host:?} on mesh port {mesh_port}")]
    DuplicateHttpRoute {
        /// One claimant.
        first: String,
        /// The other.
        second: String,
        /// The host both claim.
        host: String,
        /// The listener port.
        mesh_port: u16,
    },
    /// Two TCP (or two UDP) services are mapped to the same listener port.
    #[error("services {first} and {second} both use {traffic_type} mesh port {mesh_port}")]
    DuplicateMeshPort {
        /// One claimant.
        first: String,
        /// The other.
        second: String,
        /// tcp or udp.
        traffic_type: TrafficType,
        /// The listener port.
        mesh_port: u16,
    },
    /// The same service port appears twice.
    #[error("service {0} appears more than once in the table")]
    DuplicateService(String),
    /// A field of the mesh part of the table (a node proxy, a workload) has a value that is
    /// not allowed. The value is cut to a bounded length.
    #[error("{object}: field {field}: invalid value {value:?}: {reason}")]
    InvalidMeshField {
        /// What is wrong: `node <name>`, `workload <ip>` or `table`.
        object: String,
        /// Path of the field, e.g. `workloads[3].node`.
        field: String,
        /// The offending value.
        value: String,
        /// What was expected instead.
        reason: String,
    },
}

/// `pub type Result` of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Position of a service port in one [`Table`]: what the lookups return and what a proxy keys
/// per-service state by. Valid only for the table that produced it (positions move when
/// services come and go), so a holder of a `ServiceId` holds the table too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(u32);

impl ServiceId {
    /// The position in [`Table::services`].
    pub fn index(self) -> usize {
        self.0 as usize
    }

    fn new(index: usize) -> ServiceId {
        // A table is read from a bounded body: 2^32 services cannot be in one.
        ServiceId(u32::try_from(index).expect("fewer than 2^32 services in a table"))
    }
}

/// Per split (or route entry) of one service, its backends resolved in one table.
type Targets = Box<[Box<[ServiceId]>]>;

/// The split and route backends of one service, resolved in one table.
#[derive(Debug, PartialEq, Eq)]
struct Resolved {
    splits: Targets,
    routes: Targets,
}

/// The validated routing table. Immutable once built; share it behind an `Arc`.
///
/// Its services are `Arc`s, shared with the table it was built from by [`Table::apply_delta`]
/// when unchanged, and every container is shared in pieces too: the service list in chunks of
/// 64 ([`Chunks`]), the identity and host indexes in 256 shards, so that the table a
/// one-service delta leads to copies a few chunks and shards (a few KB), not the table.
#[derive(Debug, Default)]
pub struct Table {
    /// Generation number from the controller.
    pub version: u64,
    /// Access-control mode.
    pub acl: bool,
    /// Mutual-TLS mode ([`Table::mtls`]).
    pub(crate) mtls: MtlsMode,
    /// The node proxies, shared with the previous table when a delta leaves them.
    pub(crate) nodes: Arc<Nodes>,
    /// The workloads, shared with the previous table when a delta leaves them.
    pub(crate) workloads: Arc<Workloads>,
    /// All service ports, in the order of the spec; [`ServiceId`] is the position.
    services: Chunks<Arc<Service>>,
    /// Per service, its split and route backends resolved in this table; `None` for a service
    /// with neither (most of them).
    targets: Chunks<Option<Arc<Resolved>>>,
    /// The services with splits or routes: those resolved again when a delta changes the table.
    roots: BTreeSet<ServiceId>,
    /// HTTP: lower-case host → (listener port, service) pairs.
    http_hosts: shards::Shards<index::HostEntry>,
    /// TCP listener port → service; copied whole by a delta that changes a TCP service (at
    /// most one entry per port).
    tcp_ports: Arc<HashMap<u16, ServiceId>>,
    /// UDP listener port → service, as `tcp_ports`.
    udp_ports: Arc<HashMap<u16, ServiceId>>,
    /// Identity → service.
    by_key: shards::Shards<index::KeyEntry>,
}

impl std::ops::Index<ServiceId> for Table {
    type Output = Service;

    fn index(&self, id: ServiceId) -> &Service {
        &self.services[id.index()]
    }
}

impl Table {
    /// An empty table of generation 0, for a proxy that has none yet.
    pub fn empty() -> Arc<Table> {
        Arc::new(Table::default())
    }

    /// Parses and validates a JSON table: the table and the errors of parsing it as a
    /// [`TableSpec`](crate::TableSpec) and validating that, without ever holding the whole wire form (each
    /// service port is validated as it is read and its wire form dropped).
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Table, JsonError> {
        Table::from_json_streamed(bytes)
    }

    /// The HTTP service for a request that arrived on `mesh_port` with this Host header (port,
    /// case and a trailing dot are ignored).
    pub fn http_route(&self, mesh_port: u16, host: &str) -> Option<ServiceId> {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let mut buf = [0u8; 256];
        let key: &str = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            let n = host.len();
            if n > buf.len() {
                return None;
            }
            buf[..n].copy_from_slice(host.as_bytes());
            buf[..n].make_ascii_lowercase();
            std::str::from_utf8(&buf[..n]).ok()?
        } else {
            host
        };
        self.http_hosts.get(key)?.ports.get(mesh_port)
    }

    /// The TCP service mapped to a listener port.
    pub fn tcp_route(&self, mesh_port: u16) -> Option<ServiceId> {
        self.tcp_ports.get(&mesh_port).copied()
    }

    /// The UDP service mapped to a listener port.
    pub fn udp_route(&self, mesh_port: u16) -> Option<ServiceId> {
        self.udp_ports.get(&mesh_port).copied()
    }

    /// A service port by identity.
    pub fn service(&self, key: &ServiceKey) -> Option<ServiceId> {
        self.by_key.get(key).map(|e| e.id)
    }

    /// Every service port, in order: the position of each is its [`ServiceId`]. Indexable and
    /// iterable like a slice; [`Chunks::unshared`] tells the positions at which two tables
    /// (one reached from the other by deltas) may differ without comparing every service.
    pub fn services(&self) -> &Chunks<Arc<Service>> {
        &self.services
    }

    /// The service ports with their ids.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (ServiceId, &Arc<Service>)> + '_ {
        self.services
            .iter()
            .enumerate()
            .map(|(i, s)| (ServiceId::new(i), s))
    }

    /// The shared service port behind `id` (pointer-equal across tables while unchanged).
    pub fn shared(&self, id: ServiceId) -> &Arc<Service> {
        &self.services[id.index()]
    }

    /// Number of service ports.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether the table has no service port.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// The backends of split `split` of service `id`, resolved in this table, in the order of
    /// its [`Split::backends`].
    pub fn split_targets(&self, id: ServiceId, split: usize) -> &[ServiceId] {
        let resolved = self.targets[id.index()].as_ref();
        &resolved.expect("a service with splits").splits[split]
    }

    /// The backends of route entry `route` of service `id`, resolved in this table, in the
    /// order of its [`Route::backends`](crate::route::Route::backends).
    pub fn route_targets(&self, id: ServiceId, route: usize) -> &[ServiceId] {
        let resolved = self.targets[id.index()].as_ref();
        &resolved.expect("a service with routes").routes[route]
    }
}

/// A table that could not be read from JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// Not JSON, or not shaped like a table.
    #[error("table is not valid JSON: {0}")]
    Parse(String),
    /// JSON, but refused by validation.
    #[error(transparent)]
    Invalid(#[from] Error),
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port or [v6]
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rfind(':') {
        // A single colon: name:port or v4:port. More than one: a bare IPv6 address.
        Some(i) if host[..i].find(':').is_none() => &host[..i],
        _ => host,
    }
}

pub(crate) fn invalid(
    service: &str,
    field: impl Into<String>,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> Error {
    Error::InvalidField {
        service: service.to_string(),
        field: field.into(),
        value: cut_display(value),
        reason: reason.into(),
    }
}

/// Client addresses as the table keeps them: an IPv4-mapped IPv6 address as IPv4.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests;

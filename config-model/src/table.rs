//! The validated, indexed routing table that the proxy holds and routes with.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use regex::Regex;

use crate::cut::{cut_display, cut_message};
use crate::matching::{check_split_backend, check_split_root, check_weight, SplitError};
use crate::options::ServiceOptions;
use crate::split_graph::{self, MAX_SPLIT_DEPTH};
use crate::wire::{AccessRuleSpec, HttpMatchSpec, ServiceSpec, SplitSpec, TableSpec, TrafficType};
use crate::{MESH_DOMAIN, SCHEMA_VERSION};

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
}

/// `pub type Result` of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Identity of a meshed service port (also its wire form, in deltas).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// Service port.
    pub port: u16,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
    }
}

/// A backend address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Relative weight, 1 to [`MAX_WEIGHT`].
    pub weight: u32,
}

/// A compiled HTTP match; conditions are ANDed.
#[derive(Clone, Debug)]
pub struct HttpMatch {
    /// Name of the match, for diagnostics.
    pub name: Option<String>,
    /// Anchored path regex.
    pub path: Option<Regex>,
    /// Upper-case methods; empty means any.
    pub methods: Vec<String>,
    /// Lower-case header name and anchored value regex.
    pub headers: Vec<(String, Regex)>,
}

impl HttpMatch {
    /// Whether a request fits this match. `header` returns the value of a header by its
    /// lower-case name. Methods compare exactly: RFC 9110 methods are case-sensitive, so
    /// `get` does not fit a `GET` rule.
    pub fn matches<'a>(
        &self,
        method: &str,
        path: &str,
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        if let Some(re) = &self.path {
            if !re.is_match(path) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, re)| header(name).is_some_and(|v| re.is_match(v)))
    }
}

/// One weighted backend of a split, named by its identity: a [`Service`] is shared between the
/// tables that hold it unchanged, so it cannot hold positions in one of them. The table resolves
/// it to a [`ServiceId`] ([`Table::split_targets`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitBackend {
    /// The backend service port.
    pub service: ServiceKey,
    /// Relative weight; 0 sends it nothing.
    pub weight: u32,
}

/// A traffic split on a root service port.
#[derive(Clone, Debug)]
pub struct Split {
    /// `namespace/name` of the TrafficSplit.
    pub name: String,
    /// Requests it applies to; empty means all.
    pub matches: Vec<HttpMatch>,
    /// Weighted backends.
    pub backends: Vec<SplitBackend>,
}

impl Split {
    /// Sum of the backend weights; 0 means the split sends no traffic anywhere.
    pub fn total_weight(&self) -> u64 {
        self.backends.iter().map(|b| u64::from(b.weight)).sum()
    }
}

/// In ACL mode: one rule allowing some clients to reach a service port.
#[derive(Clone, Debug)]
pub struct AccessRule {
    /// `namespace/name` of the TrafficTarget.
    pub name: String,
    /// Allowed client addresses.
    pub sources: Vec<IpAddr>,
    /// For HTTP, the requests allowed (any of them); `None` allows everything.
    pub http: Option<Vec<HttpMatch>>,
}

impl AccessRule {
    /// Whether the rule lets this client in (before any HTTP match).
    pub fn admits(&self, client: IpAddr) -> bool {
        let client = canonical_ip(client);
        self.sources.contains(&client)
    }
}

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

/// One validated, meshed service port. Shared (`Arc`) by every table that holds it unchanged.
#[derive(Clone, Debug)]
pub struct Service {
    /// Identity.
    pub key: ServiceKey,
    /// Name of the service port, if any.
    pub port_name: Option<String>,
    /// Listener port on the proxy.
    pub mesh_port: u16,
    /// How traffic is carried.
    pub traffic_type: TrafficType,
    /// ClusterIP, if known.
    pub cluster_ip: Option<IpAddr>,
    /// Ready endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Middlewares.
    pub options: ServiceOptions,
    /// Traffic splits rooted here.
    pub splits: Vec<Split>,
    /// Access rules (meaningful in ACL mode only).
    pub access: Vec<AccessRule>,
}

/// The validated routing table. Immutable once built; share it behind an `Arc`. Its services
/// are `Arc`s, shared with the table it was built from by [`Table::apply_delta`] when unchanged.
#[derive(Debug, Default)]
pub struct Table {
    /// Generation number from the controller.
    pub version: u64,
    /// Access-control mode.
    pub acl: bool,
    /// All service ports, in the order of the spec; [`ServiceId`] is the position.
    services: Vec<Arc<Service>>,
    /// Per service, per split, the backends resolved in this table (empty without splits).
    split_targets: Vec<Box<[Box<[ServiceId]>]>>,
    /// HTTP: lower-case host → (listener port, service) pairs.
    http_hosts: HashMap<Box<str>, Vec<(u16, ServiceId)>>,
    tcp_ports: HashMap<u16, ServiceId>,
    udp_ports: HashMap<u16, ServiceId>,
    by_key: HashMap<ServiceKey, ServiceId>,
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

    /// Parses and validates a JSON table.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Table, JsonError> {
        let spec: TableSpec =
            serde_json::from_slice(bytes).map_err(|e| JsonError::Parse(e.to_string()))?;
        Ok(Table::try_from(spec)?)
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
        let candidates = self.http_hosts.get(key)?;
        candidates
            .iter()
            .find(|(port, _)| *port == mesh_port)
            .map(|(_, id)| *id)
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
        self.by_key.get(key).copied()
    }

    /// Every service port, in order: the position of each is its [`ServiceId`].
    pub fn services(&self) -> &[Arc<Service>] {
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
        &self.split_targets[id.index()][split]
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

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
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

/// Whether `s` is an RFC 1123 DNS label, as Kubernetes requires of namespaces and Service
/// names: lower-case letters, digits and `-`, at most 63, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl ServiceSpec {
    /// `namespace/name:port`, the way errors name a service port.
    pub fn display_name(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port)
    }

    /// The mesh host name `<name>.<namespace>.maille.mesh`.
    pub fn mesh_host(&self) -> String {
        format!("{}.{}.{}", self.name, self.namespace, MESH_DOMAIN)
    }

    /// Validates this service port on its own (everything but references to other services).
    pub fn validate(&self) -> Result<()> {
        self.validate_local().map(|_| ())
    }

    pub(crate) fn validate_local(&self) -> Result<Service> {
        let id = self.display_name();
        if !is_dns_label(&self.namespace) {
            return Err(invalid(
                &id,
                "namespace",
                &self.namespace,
                "expected a DNS label (a-z, 0-9, -; at most 63)",
            ));
        }
        if !is_dns_label(&self.name) {
            return Err(invalid(
                &id,
                "name",
                &self.name,
                "expected a DNS label (a-z, 0-9, -; at most 63)",
            ));
        }
        if self.port == 0 {
            return Err(invalid(
                &id,
                "port",
                self.port,
                "expected a port from 1 to 65535",
            ));
        }
        if self.mesh_port == 0 {
            return Err(invalid(
                &id,
                "meshPort",
                self.mesh_port,
                "expected a port from 1 to 65535",
            ));
        }
        let cluster_ip = match &self.cluster_ip {
            None => None,
            Some(s) => {
                Some(canonical_ip(s.parse::<IpAddr>().map_err(|_| {
                    invalid(&id, "clusterIp", s, "expected an IP address")
                })?))
            }
        };
        let mut endpoints = Vec::with_capacity(self.endpoints.len());
        for (i, ep) in self.endpoints.iter().enumerate() {
            let addr: SocketAddr = ep.address.parse().map_err(|_| {
                invalid(
                    &id,
                    format!("endpoints[{i}].address"),
                    &ep.address,
                    "expected ip:port (IPv6 as [ip]:port)",
                )
            })?;
            if addr.port() == 0 {
                return Err(invalid(
                    &id,
                    format!("endpoints[{i}].address"),
                    &ep.address,
                    "port 0 is not a port",
                ));
            }
            if let Err(e) = check_weight(ep.weight) {
                return Err(invalid(
                    &id,
                    format!("endpoints[{i}].weight"),
                    e.value,
                    format!("expected an integer from 0 to {MAX_WEIGHT}"),
                ));
            }
            if ep.weight > 0 {
                endpoints.push(Endpoint {
                    addr,
                    weight: ep.weight,
                });
            }
        }
        let options = ServiceOptions::from_spec(&id, self.traffic_type, &self.options)?;
        let mut access = Vec::with_capacity(self.access.len());
        for (i, rule) in self.access.iter().enumerate() {
            access.push(validate_access(&id, i, self.traffic_type, rule)?);
        }
        for (i, split) in self.splits.iter().enumerate() {
            if let Err(e) = check_split_root(self.traffic_type, !split.matches.is_empty()) {
                let field = match e {
                    SplitError::UdpRoot => format!("splits[{i}]"),
                    _ => format!("splits[{i}].matches"),
                };
                return Err(invalid(&id, field, &split.name, e.to_string()));
            }
        }
        let splits = validate_splits(&id, &self.splits)?;
        Ok(Service {
            key: ServiceKey {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                port: self.port,
            },
            port_name: self.port_name.clone(),
            mesh_port: self.mesh_port,
            traffic_type: self.traffic_type,
            cluster_ip,
            endpoints,
            options,
            splits,
            access,
        })
    }
}

/// A match of the service `id` at `field` (e.g. `splits[0].matches[1]`), by the match rules
/// ([`crate::matching`]).
fn validate_match(id: &str, field: &str, m: &HttpMatchSpec) -> Result<HttpMatch> {
    HttpMatch::try_from(m).map_err(|e| {
        invalid(
            id,
            format!("{field}.{}", e.field.path()),
            &e.value,
            e.reason(),
        )
    })
}

fn validate_access(
    id: &str,
    i: usize,
    tt: TrafficType,
    rule: &AccessRuleSpec,
) -> Result<AccessRule> {
    let mut sources = Vec::with_capacity(rule.sources.len());
    for (j, s) in rule.sources.iter().enumerate() {
        let ip: IpAddr = s.parse().map_err(|_| {
            invalid(
                id,
                format!("access[{i}].sources[{j}]"),
                s,
                "expected an IP address",
            )
        })?;
        sources.push(canonical_ip(ip));
    }
    let http = match &rule.http {
        None => None,
        Some(_) if tt != TrafficType::Http => {
            return Err(invalid(
                id,
                format!("access[{i}].http"),
                &rule.name,
                format!("HTTP matches need an http service, this one is {tt}"),
            ))
        }
        Some(ms) => Some(
            ms.iter()
                .enumerate()
                .map(|(k, m)| validate_match(id, &format!("access[{i}].http[{k}]"), m))
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    Ok(AccessRule {
        name: rule.name.clone(),
        sources,
        http,
    })
}

/// The splits of a service on their own: matches compiled, weights checked, backends named by
/// key (resolved when the table is put together, [`Builder::finish`]).
fn validate_splits(id: &str, specs: &[SplitSpec]) -> Result<Vec<Split>> {
    let mut splits = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let matches = s
            .matches
            .iter()
            .enumerate()
            .map(|(k, m)| validate_match(id, &format!("splits[{i}].matches[{k}]"), m))
            .collect::<Result<Vec<_>>>()?;
        let mut backends = Vec::with_capacity(s.backends.len());
        for (j, b) in s.backends.iter().enumerate() {
            if let Err(e) = check_weight(b.weight) {
                return Err(invalid(
                    id,
                    format!("splits[{i}].backends[{j}].weight"),
                    e.value,
                    format!("expected an integer from 0 to {MAX_WEIGHT}"),
                ));
            }
            backends.push(SplitBackend {
                service: ServiceKey {
                    namespace: b.namespace.clone(),
                    name: b.name.clone(),
                    port: b.port,
                },
                weight: b.weight,
            });
        }
        splits.push(Split {
            name: s.name.clone(),
            matches,
            backends,
        });
    }
    Ok(splits)
}

/// Puts validated services together into a table: the identity index, the HTTP host and
/// TCP/UDP port indexes, the split backends resolved, and the checks that no two services
/// claim the same route and that the splits form no cycle.
pub(crate) struct Builder {
    table: Table,
    http_claims: HashMap<(Box<str>, u16), ServiceId>,
    tcp_claims: BTreeMap<u16, ServiceId>,
    udp_claims: BTreeMap<u16, ServiceId>,
}

impl Builder {
    pub(crate) fn new(version: u64, acl: bool, capacity: usize) -> Builder {
        let mut table = Table {
            version,
            acl,
            ..Table::default()
        };
        table.services.reserve(capacity);
        table.by_key.reserve(capacity);
        Builder {
            table,
            http_claims: HashMap::with_capacity(capacity),
            tcp_claims: BTreeMap::new(),
            udp_claims: BTreeMap::new(),
        }
    }

    /// Adds one service port (shared as it is: nothing in it depends on the table).
    pub(crate) fn push(&mut self, svc: Arc<Service>) -> Result<ServiceId> {
        let table = &mut self.table;
        let id = ServiceId::new(table.services.len());
        if table.by_key.insert(svc.key.clone(), id).is_some() {
            return Err(Error::DuplicateService(svc.key.to_string()));
        }
        match svc.traffic_type {
            TrafficType::Http => {
                let mesh_host = format!("{}.{}.{}", svc.key.name, svc.key.namespace, MESH_DOMAIN);
                let mut hosts: Vec<Box<str>> = vec![mesh_host.into_boxed_str()];
                if let Some(ip) = svc.cluster_ip {
                    hosts.push(ip.to_string().into_boxed_str());
                }
                for host in hosts {
                    if let Some(&other) = self.http_claims.get(&(host.clone(), svc.mesh_port)) {
                        return Err(Error::DuplicateHttpRoute {
                            first: table[other].key.to_string(),
                            second: svc.key.to_string(),
                            host: host.to_string(),
                            mesh_port: svc.mesh_port,
                        });
                    }
                    self.http_claims.insert((host.clone(), svc.mesh_port), id);
                    table
                        .http_hosts
                        .entry(host)
                        .or_default()
                        .push((svc.mesh_port, id));
                }
            }
            tt @ (TrafficType::Tcp | TrafficType::Udp) => {
                let claims = if tt == TrafficType::Tcp {
                    &mut self.tcp_claims
                } else {
                    &mut self.udp_claims
                };
                if let Some(&other) = claims.get(&svc.mesh_port) {
                    return Err(Error::DuplicateMeshPort {
                        first: table[other].key.to_string(),
                        second: svc.key.to_string(),
                        traffic_type: tt,
                        mesh_port: svc.mesh_port,
                    });
                }
                claims.insert(svc.mesh_port, id);
            }
        }
        table.services.push(svc);
        Ok(id)
    }

    /// The table with every service in: split backends resolved and checked (they must exist,
    /// not be the root, and carry the root's traffic type), the split graph checked.
    pub(crate) fn finish(self) -> Result<Table> {
        let mut table = self.table;
        table.tcp_ports = self.tcp_claims.into_iter().collect();
        table.udp_ports = self.udp_claims.into_iter().collect();
        let mut split_targets = Vec::with_capacity(table.services.len());
        for (root, svc) in table.iter() {
            if svc.splits.is_empty() {
                split_targets.push(Box::default());
                continue;
            }
            let id = svc.key.to_string();
            let mut splits = Vec::with_capacity(svc.splits.len());
            for (i, split) in svc.splits.iter().enumerate() {
                let mut targets = Vec::with_capacity(split.backends.len());
                for (j, b) in split.backends.iter().enumerate() {
                    let field = format!("splits[{i}].backends[{j}]");
                    targets.push(resolve_backend(&id, &field, root, &b.service, &table)?);
                }
                splits.push(targets.into_boxed_slice());
            }
            split_targets.push(splits.into_boxed_slice());
        }
        table.split_targets = split_targets;
        check_split_graph(&table)?;
        Ok(table)
    }
}

/// A split backend named by `key`, resolved in `table` and checked against the root.
fn resolve_backend(
    id: &str,
    field: &str,
    root: ServiceId,
    key: &ServiceKey,
    table: &Table,
) -> Result<ServiceId> {
    let root_tt = table[root].traffic_type;
    let backend = table
        .service(key)
        .ok_or_else(|| invalid(id, field, key, "no such service port in the table"))?;
    if backend == root {
        return Err(invalid(
            id,
            field,
            key,
            "a split cannot send traffic to its own root",
        ));
    }
    check_split_backend(root_tt, table[backend].traffic_type)
        .map_err(|e| invalid(id, field, key, e.to_string()))?;
    Ok(backend)
}

impl TryFrom<TableSpec> for Table {
    type Error = Error;

    fn try_from(spec: TableSpec) -> Result<Table> {
        Table::try_from(&spec)
    }
}

impl TryFrom<&TableSpec> for Table {
    type Error = Error;

    fn try_from(spec: &TableSpec) -> Result<Table> {
        if spec.schema_version != SCHEMA_VERSION {
            return Err(Error::SchemaVersion {
                found: spec.schema_version,
                expected: SCHEMA_VERSION,
            });
        }
        let mut builder = Builder::new(spec.version, spec.acl, spec.services.len());
        for s in &spec.services {
            builder.push(Arc::new(s.validate_local()?))?;
        }
        builder.finish()
    }
}

/// Refuses split graphs with a cycle, which would make a request loop between services, and
/// chains of nested splits deeper than [`MAX_SPLIT_DEPTH`]; the error names the first split
/// at fault. One linear pass, no recursion (see [`split_graph`]).
fn check_split_graph(table: &Table) -> Result<()> {
    let mut edges = Vec::new();
    for (i, splits) in table.split_targets.iter().enumerate() {
        for targets in splits.iter() {
            edges.extend(targets.iter().map(|b| (i, b.index())));
        }
    }
    let report = split_graph::check(table.services.len(), &edges);
    let name = |i: usize| table.services[i].key.to_string();
    // The split of `at` that sends traffic to `to`, as field path and split name.
    let split_to = |at: usize, to: usize| -> (String, String) {
        let svc = &table.services[at];
        for (i, targets) in table.split_targets[at].iter().enumerate() {
            if let Some(j) = targets.iter().position(|b| b.index() == to) {
                return (
                    format!("splits[{i}].backends[{j}]"),
                    svc.splits[i].name.clone(),
                );
            }
        }
        ("splits".into(), String::new())
    };
    if let Some(cycle) = report.cycles.first() {
        let (field, split) = split_to(cycle[0], cycle[1]);
        let path = cycle
            .iter()
            .map(|&i| name(i))
            .collect::<Vec<_>>()
            .join(" → ");
        return Err(invalid(
            &name(cycle[0]),
            field,
            split,
            format!(
                "traffic splits form a cycle ({})",
                cut_message(&path, MAX_PATH_IN_ERROR)
            ),
        ));
    }
    // The shallowest node over the limit: its deepest backend sits exactly at the limit.
    let Some(at) = report
        .too_deep()
        .min_by_key(|&i| report.height(i).unwrap_or(u32::MAX))
    else {
        return Ok(());
    };
    // Down the deepest path: at most MAX_SPLIT_DEPTH + 2 services, since `at` is the shallowest.
    let mut chain = vec![at];
    let mut n = at;
    while let Some(h) = report.height(n).filter(|&h| h > 0) {
        let Some(next) = table.split_targets[n]
            .iter()
            .flat_map(|targets| targets.iter())
            .map(|b| b.index())
            .find(|&b| report.height(b) == Some(h - 1))
        else {
            break;
        };
        chain.push(next);
        n = next;
    }
    let (field, split) = split_to(at, chain[1]);
    let path = chain
        .iter()
        .map(|&i| name(i))
        .collect::<Vec<_>>()
        .join(" → ");
    Err(invalid(
        &name(at),
        field,
        split,
        format!(
            "requests would pass through {} nested splits ({}); at most {MAX_SPLIT_DEPTH}",
            report.height(at).unwrap_or_default(),
            cut_message(&path, MAX_PATH_IN_ERROR)
        ),
    ))
}

/// Longest service path quoted in a split error, in bytes.
const MAX_PATH_IN_ERROR: usize = 1024;

#[cfg(test)]
mod tests;

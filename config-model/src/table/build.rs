//! Putting validated services together into a [`Table`]: the identity and route indexes, the
//! checks that no two services claim the same route, split backends resolved and the split
//! graph checked.

use std::collections::HashMap;
use std::sync::Arc;

use super::{invalid, Error, Resolved, Result, Service, ServiceId, ServiceKey, Table, Targets};
use crate::cut::cut_message;
use crate::matching::check_split_backend;
use crate::mesh::{MtlsMode, Nodes, Workloads};
use crate::split_graph::{self, MAX_SPLIT_DEPTH};
use crate::wire::{TableSpec, TrafficType};
use crate::SCHEMA_VERSION;

/// Puts validated services together into a table: the identity index, the HTTP host and
/// TCP/UDP port indexes, the split backends resolved, and the checks that no two services
/// claim the same route and that the splits form no cycle.
pub(crate) struct Builder {
    table: Table,
}

impl Builder {
    pub(crate) fn new(version: u64, acl: bool, capacity: usize) -> Builder {
        let mut table = Table {
            version,
            acl,
            ..Table::default()
        };
        table.by_key.reserve(capacity);
        table.http_hosts.reserve(capacity);
        Builder { table }
    }

    /// Sets the mesh part: the mutual-TLS mode, node proxies and workloads (already validated).
    pub(crate) fn mesh(&mut self, mtls: MtlsMode, nodes: Arc<Nodes>, workloads: Arc<Workloads>) {
        self.table.mtls = mtls;
        self.table.nodes = nodes;
        self.table.workloads = workloads;
    }

    /// Adds one service port (shared as it is: nothing in it depends on the table).
    pub(crate) fn push(&mut self, svc: Arc<Service>) -> Result<ServiceId> {
        let table = &mut self.table;
        let id = ServiceId::new(table.services.len());
        table.services.push(svc);
        table.targets.push(None);
        let indexed = table.index_key(id).and_then(|()| table.index_routes(id));
        if let Err(e) = indexed {
            table.services.pop();
            table.targets.pop();
            return Err(e);
        }
        Ok(id)
    }

    /// The table with every service in: split and route backends resolved and checked, the
    /// split graph checked ([`Table::resolve_targets`]).
    pub(crate) fn finish(self) -> Result<Table> {
        let mut table = self.table;
        let all = (0..table.len()).map(ServiceId::new).collect();
        table.resolve_targets(all)?;
        Ok(table)
    }
}

impl Table {
    /// Notes which of the `touched` positions (those whose service is new there) hold a
    /// service with splits or routes, then resolves the split backends (they must exist, not be
    /// the root, and carry the root's traffic type) and the route backends of every such
    /// service of the table, and checks the split graph. The cost follows the number of
    /// services with splits or routes, not the table; a service whose backends resolve as
    /// before keeps its entry (and the chunk holding it stays shared).
    pub(crate) fn resolve_targets(&mut self, touched: Vec<ServiceId>) -> Result<()> {
        let len = self.services.len();
        for id in touched.into_iter().filter(|id| id.index() < len) {
            let svc = &self.services[id.index()];
            if !svc.splits.is_empty() || !svc.routes.is_empty() {
                self.roots.insert(id);
            } else {
                self.roots.remove(&id);
                if self.targets[id.index()].is_some() {
                    self.targets.set(id.index(), None);
                }
            }
        }
        // Positions past the end left with the services popped off.
        self.roots.split_off(&ServiceId::new(len));
        let roots: Vec<ServiceId> = self.roots.iter().copied().collect();
        for root in roots {
            let resolved = Resolved {
                splits: resolve_splits(self, root)?,
                routes: resolve_routes(self, root)?,
            };
            if self.targets[root.index()].as_deref() != Some(&resolved) {
                self.targets.set(root.index(), Some(Arc::new(resolved)));
            }
        }
        check_split_graph(self)
    }

    /// The split backends of `id`, resolved (empty when it has no split).
    fn resolved_splits(&self, id: usize) -> &[Box<[ServiceId]>] {
        self.targets[id].as_ref().map_or(&[], |r| &r.splits[..])
    }
}

/// The split backends of service `root`, resolved in `table`.
fn resolve_splits(table: &Table, root: ServiceId) -> Result<Targets> {
    let svc = &table[root];
    let mut splits = Vec::with_capacity(svc.splits.len());
    for (i, split) in svc.splits.iter().enumerate() {
        let mut targets = Vec::with_capacity(split.backends.len());
        for (j, b) in split.backends.iter().enumerate() {
            targets.push(resolve_backend(root, i, j, &b.service, table)?);
        }
        splits.push(targets.into_boxed_slice());
    }
    Ok(splits.into_boxed_slice())
}

/// The route backends of service `parent`, resolved in `table`: each an http service port of
/// the table, the parent itself allowed (a route's backends receive the request as it is,
/// their own routes and splits are not applied again, so no cycle can form).
fn resolve_routes(table: &Table, parent: ServiceId) -> Result<Targets> {
    let svc = &table[parent];
    let mut routes = Vec::with_capacity(svc.routes.len());
    for (i, route) in svc.routes.iter().enumerate() {
        let mut targets = Vec::with_capacity(route.backends.len());
        for (j, b) in route.backends.iter().enumerate() {
            let field = || format!("routes[{i}].backends[{j}]");
            let id = || svc.key.to_string();
            let backend = table.service(&b.service).ok_or_else(|| {
                invalid(
                    &id(),
                    field(),
                    &b.service,
                    "no such service port in the table",
                )
            })?;
            let tt = table[backend].traffic_type;
            if tt != TrafficType::Http {
                return Err(invalid(
                    &id(),
                    field(),
                    &b.service,
                    format!("a route backend must be an http service, this one is {tt}"),
                ));
            }
            targets.push(backend);
        }
        routes.push(targets.into_boxed_slice());
    }
    Ok(routes.into_boxed_slice())
}

/// Backend `j` of split `i` of `root`, named by `key`, resolved in `table` and checked against
/// the root.
fn resolve_backend(
    root: ServiceId,
    i: usize,
    j: usize,
    key: &ServiceKey,
    table: &Table,
) -> Result<ServiceId> {
    let id = || table[root].key.to_string();
    let field = || format!("splits[{i}].backends[{j}]");
    let root_tt = table[root].traffic_type;
    let backend = table
        .service(key)
        .ok_or_else(|| invalid(&id(), field(), key, "no such service port in the table"))?;
    if backend == root {
        return Err(invalid(
            &id(),
            field(),
            key,
            "a split cannot send traffic to its own root",
        ));
    }
    check_split_backend(root_tt, table[backend].traffic_type)
        .map_err(|e| invalid(&id(), field(), key, e.to_string()))?;
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
        builder.mesh(
            spec.mtls,
            Arc::new(Nodes::from_specs(&spec.nodes)?),
            Arc::new(Workloads::from_specs(&spec.workloads)?),
        );
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
    // The graph of the services with splits and their backends only, numbered densely, so that
    // the check costs what the splits do, not the table.
    let mut dense: HashMap<usize, usize> = HashMap::new();
    let mut nodes: Vec<usize> = Vec::new();
    let mut number = |i: usize| {
        *dense.entry(i).or_insert_with(|| {
            nodes.push(i);
            nodes.len() - 1
        })
    };
    let mut edges = Vec::new();
    for root in &table.roots {
        let i = root.index();
        for targets in table.resolved_splits(i) {
            for b in targets.iter() {
                edges.push((number(i), number(b.index())));
            }
        }
    }
    if edges.is_empty() {
        return Ok(());
    }
    let report = split_graph::check(nodes.len(), &edges);
    let height = |i: usize| dense.get(&i).and_then(|&d| report.height(d));
    let name = |i: usize| table.services[i].key.to_string();
    // The split of `at` that sends traffic to `to`, as field path and split name.
    let split_to = |at: usize, to: usize| -> (String, String) {
        let svc = &table.services[at];
        for (i, targets) in table.resolved_splits(at).iter().enumerate() {
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
        let cycle: Vec<usize> = cycle.iter().map(|&d| nodes[d]).collect();
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
        .min_by_key(|&d| report.height(d).unwrap_or(u32::MAX))
        .map(|d| nodes[d])
    else {
        return Ok(());
    };
    // Down the deepest path: at most MAX_SPLIT_DEPTH + 2 services, since `at` is the shallowest.
    let mut chain = vec![at];
    let mut n = at;
    while let Some(h) = height(n).filter(|&h| h > 0) {
        let Some(next) = table
            .resolved_splits(n)
            .iter()
            .flat_map(|targets| targets.iter())
            .map(|b| b.index())
            .find(|&b| height(b) == Some(h - 1))
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
            height(at).unwrap_or_default(),
            cut_message(&path, MAX_PATH_IN_ERROR)
        ),
    ))
}

/// Longest service path quoted in a split error, in bytes.
const MAX_PATH_IN_ERROR: usize = 1024;

//! Putting validated services together into a [`Table`]: the identity and route indexes, the
//! checks that no two services claim the same route, split backends resolved and the split
//! graph checked.

use std::sync::Arc;

use super::{invalid, Error, Result, Service, ServiceId, ServiceKey, Table, Targets};
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
        table.services.reserve(capacity);
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
        let indexed = table.index_key(id).and_then(|()| table.index_routes(id));
        if let Err(e) = indexed {
            table.services.pop();
            return Err(e);
        }
        Ok(id)
    }

    /// The table with every service in: split and route backends resolved and checked, the
    /// split graph checked ([`Table::resolve_targets`]).
    pub(crate) fn finish(self) -> Result<Table> {
        let mut table = self.table;
        table.resolve_targets()?;
        Ok(table)
    }
}

impl Table {
    /// Resolves the split backends (they must exist, not be the root, and carry the root's
    /// traffic type) and the route backends of every service port, and checks the split
    /// graph. Services without splits or routes cost a look at each.
    pub(crate) fn resolve_targets(&mut self) -> Result<()> {
        let mut split_targets = Vec::with_capacity(self.services.len());
        for (root, svc) in self.iter() {
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
                    targets.push(resolve_backend(&id, &field, root, &b.service, self)?);
                }
                splits.push(targets.into_boxed_slice());
            }
            split_targets.push(splits.into_boxed_slice());
        }
        self.split_targets = split_targets;
        self.route_targets = resolve_routes(self)?;
        check_split_graph(self)
    }
}

/// The route backends of every service, resolved in `table`: each an http service port of the
/// table, the parent itself allowed (a route's backends receive the request as it is, their
/// own routes and splits are not applied again, so no cycle can form).
fn resolve_routes(table: &Table) -> Result<Vec<Targets>> {
    let mut all = Vec::with_capacity(table.services.len());
    for (_, svc) in table.iter() {
        if svc.routes.is_empty() {
            all.push(Box::default());
            continue;
        }
        let id = svc.key.to_string();
        let mut routes = Vec::with_capacity(svc.routes.len());
        for (i, route) in svc.routes.iter().enumerate() {
            let mut targets = Vec::with_capacity(route.backends.len());
            for (j, b) in route.backends.iter().enumerate() {
                let field = format!("routes[{i}].backends[{j}]");
                let backend = table.service(&b.service).ok_or_else(|| {
                    invalid(&id, &field, &b.service, "no such service port in the table")
                })?;
                let tt = table[backend].traffic_type;
                if tt != TrafficType::Http {
                    return Err(invalid(
                        &id,
                        field,
                        &b.service,
                        format!("a route backend must be an http service, this one is {tt}"),
                    ));
                }
                targets.push(backend);
            }
            routes.push(targets.into_boxed_slice());
        }
        all.push(routes.into_boxed_slice());
    }
    Ok(all)
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

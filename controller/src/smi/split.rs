//! TrafficSplit → the `splits` of root service ports, leaving out what cannot be honoured:
//! backends without the root's port, unknown route groups, and splits that would close a cycle.

use std::collections::HashMap;

use config_model::cut::cut_message;
use config_model::matching::{check_split_backend, check_split_root, check_weight, SplitError};
use config_model::split_graph::{self, MAX_SPLIT_DEPTH};
use config_model::table::MAX_WEIGHT;
use config_model::{ServiceSpec, SplitBackendSpec, SplitSpec};
use kube::ResourceExt;

use super::{problem, Problem, Routes, SmiObjects, TrafficSplit};

const KIND: &str = "TrafficSplit";

/// Adds the TrafficSplits to their roots' `splits`; returns the work units of the graph check
/// (for tests that prove it linear).
pub(crate) fn apply(
    services: &mut [ServiceSpec],
    objects: &SmiObjects,
    routes: &Routes<'_>,
    problems: &mut Vec<Problem>,
) -> usize {
    let mut by_port: HashMap<(&str, &str, u16), usize> = HashMap::new();
    let mut by_name: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        by_port.insert((&s.namespace, &s.name, s.port), i);
        by_name.entry((&s.namespace, &s.name)).or_default().push(i);
    }
    let mut splits: Vec<&TrafficSplit> = objects.traffic_splits.iter().map(|s| &**s).collect();
    splits.sort_by_key(|s| (s.namespace(), s.name_any()));

    let candidates: Vec<(&TrafficSplit, Vec<(usize, SplitSpec)>)> = splits
        .into_iter()
        .filter_map(|ts| {
            translate(ts, services, &by_port, &by_name, routes, problems).map(|c| (ts, c))
        })
        .collect();
    // Split edges root → backend, each owned by the candidate (index, in name order) that
    // brings it.
    let mut edges: Vec<(usize, usize, usize)> = Vec::new();
    for (k, (_, entries)) in candidates.iter().enumerate() {
        for (root, spec) in entries {
            for b in &spec.backends {
                edges.push((
                    *root,
                    by_port[&(b.namespace.as_str(), b.name.as_str(), b.port)],
                    k,
                ));
            }
        }
    }
    let left_out = check_graph(services, &candidates, &edges, problems);
    let left_out_steps = left_out.steps;
    let accepted = candidates
        .into_iter()
        .zip(left_out.kept)
        .filter(|(_, keep)| *keep)
        .flat_map(|((_, entries), _)| entries);
    for (root, spec) in accepted {
        services[root].splits.push(spec);
    }
    for s in services.iter_mut() {
        // The first split whose matches fit wins: specific (matching) splits before catch-alls,
        // then by name.
        s.splits.sort_by_key(|x| x.matches.is_empty());
    }
    left_out_steps
}

/// The split entries of one TrafficSplit (one per port of its root), or `None` when it is left
/// out whole.
fn translate(
    ts: &TrafficSplit,
    services: &[ServiceSpec],
    by_port: &HashMap<(&str, &str, u16), usize>,
    by_name: &HashMap<(&str, &str), Vec<usize>>,
    routes: &Routes<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Vec<(usize, SplitSpec)>> {
    let ns = ts.namespace().unwrap_or_default();
    let name = format!("{ns}/{}", ts.name_any());
    let mut fail = |msg: String| {
        problems.push(problem(KIND, ts, msg));
        None
    };
    let root = match local_name(&ts.spec.service, &ns) {
        Ok(r) => r,
        Err(e) => {
            return fail(format!(
                "spec.service {:?}: {e}; split left out",
                ts.spec.service
            ))
        }
    };
    let Some(root_ports) = by_name.get(&(ns.as_str(), root)) else {
        return fail(format!(
            "spec.service {:?}: service {ns}/{root} is not meshed (no maille.io/traffic-type annotation, or no such Service); split left out",
            ts.spec.service
        ));
    };
    let mut weights = Vec::with_capacity(ts.spec.backends.len());
    for (i, b) in ts.spec.backends.iter().enumerate() {
        match check_weight(b.weight) {
            Ok(w) => weights.push(w),
            Err(_) => {
                return fail(format!(
                    "spec.backends[{i}].weight {}: expected an integer from 0 to {MAX_WEIGHT}; split left out",
                    b.weight
                ))
            }
        }
    }
    let mut matches = Vec::new();
    for (i, m) in ts.spec.matches.iter().enumerate() {
        if m.kind != "HTTPRouteGroup" {
            return fail(format!(
                "spec.matches[{i}].kind {:?}: expected HTTPRouteGroup; split left out",
                m.kind
            ));
        }
        match routes.http(&ns, &m.name) {
            Some(ms) => matches.extend(ms.iter().cloned()),
            None => {
                return fail(format!(
                    "spec.matches[{i}]: HTTPRouteGroup {ns}/{} not found; split left out",
                    m.name
                ))
            }
        }
    }
    if !ts.spec.matches.is_empty() && matches.is_empty() {
        return fail("its HTTPRouteGroups have no usable match; split left out".into());
    }

    let mut out = Vec::new();
    for &r in root_ports {
        let rs = &services[r];
        match check_split_root(rs.traffic_type, !matches.is_empty()) {
            Ok(()) => {}
            Err(SplitError::UdpRoot) => {
                problems.push(problem(
                    KIND,
                    ts,
                    format!(
                        "root {} is a udp service; UDP traffic is not split; port left out",
                        rs.display_name()
                    ),
                ));
                continue;
            }
            Err(_) => {
                problems.push(problem(
                    KIND,
                    ts,
                    format!(
                        "root {} is a {} service but spec.matches needs http; port left out",
                        rs.display_name(),
                        rs.traffic_type
                    ),
                ));
                continue;
            }
        }
        let mut backends = Vec::new();
        for (i, b) in ts.spec.backends.iter().enumerate() {
            let bname = match local_name(&b.service, &ns) {
                Ok(n) => n,
                Err(e) => {
                    problems.push(problem(
                        KIND,
                        ts,
                        format!(
                            "spec.backends[{i}].service {:?}: {e}; backend left out",
                            b.service
                        ),
                    ));
                    continue;
                }
            };
            let Some(&bi) = by_port.get(&(ns.as_str(), bname, rs.port)) else {
                let msg = if by_name.contains_key(&(ns.as_str(), bname)) {
                    format!(
                        "spec.backends[{i}]: backend {ns}/{bname} has no port {} like the root {ns}/{root}; backend left out on that port",
                        rs.port
                    )
                } else {
                    format!(
                        "spec.backends[{i}]: backend {ns}/{bname} is not meshed (or no such Service); backend left out"
                    )
                };
                problems.push(problem(KIND, ts, msg));
                continue;
            };
            let bs = &services[bi];
            if check_split_backend(rs.traffic_type, bs.traffic_type).is_err() {
                problems.push(problem(
                    KIND,
                    ts,
                    format!(
                        "spec.backends[{i}]: backend {} is {} but the root {} is {}; backend left out",
                        bs.display_name(),
                        bs.traffic_type,
                        rs.display_name(),
                        rs.traffic_type
                    ),
                ));
                continue;
            }
            backends.push(SplitBackendSpec {
                namespace: ns.clone(),
                name: bname.to_string(),
                port: rs.port,
                weight: weights[i],
            });
        }
        if backends.is_empty() {
            problems.push(problem(
                KIND,
                ts,
                format!(
                    "no usable backend for root {}; port left out",
                    rs.display_name()
                ),
            ));
            continue;
        }
        out.push((
            r,
            SplitSpec {
                name: name.clone(),
                matches: matches.clone(),
                backends,
            },
        ));
    }
    if out.is_empty() {
        None
    } else {
        Some(out)
    }
}

/// A service named by a split: `name`, or a DNS form `name.namespace[.svc[.cluster.local]]`
/// that must stay in the split's namespace (SMI splits are namespace-local).
fn local_name<'a>(service: &'a str, namespace: &str) -> Result<&'a str, String> {
    let mut labels = service.split('.');
    let name = labels.next().unwrap_or("");
    if name.is_empty() {
        return Err("expected a service name".into());
    }
    if let Some(ns) = labels.next() {
        if ns != namespace {
            return Err(format!(
                "names namespace {ns:?}, but a split only reaches services of its own namespace {namespace:?}"
            ));
        }
    }
    Ok(name)
}

/// What the split-graph check kept, and the work it did.
pub(crate) struct GraphOutcome {
    /// Per candidate (name order): kept or left out.
    pub kept: Vec<bool>,
    /// Units of work of the config-model check, summed over its passes.
    pub steps: usize,
}

/// Passes of the cycle check that each leave out the last split (in name order) of every cycle
/// found; what still forms a cycle after them is left out whole.
const CYCLE_PASSES: usize = 4;

/// Leaves out the splits that close a cycle (the last of each cycle in name order) and those
/// that nest deeper than [`MAX_SPLIT_DEPTH`], with the config-model check: a few linear passes
/// whatever the number of splits or the shape of their graph.
fn check_graph(
    services: &[ServiceSpec],
    candidates: &[(&TrafficSplit, Vec<(usize, SplitSpec)>)],
    edges: &[(usize, usize, usize)],
    problems: &mut Vec<Problem>,
) -> GraphOutcome {
    let mut kept = vec![true; candidates.len()];
    let mut steps = 0;
    let kept_edges = |kept: &[bool]| -> Vec<(usize, usize)> {
        edges
            .iter()
            .filter(|e| kept[e.2])
            .map(|&(a, b, _)| (a, b))
            .collect()
    };
    let name = |i: usize| services[i].display_name();
    let mut report = split_graph::check(services.len(), &kept_edges(&kept));
    steps += report.steps;
    for pass in 0..=CYCLE_PASSES {
        if report.cycles.is_empty() {
            break;
        }
        if pass == CYCLE_PASSES {
            // Still cyclic after several passes: leave out every split between nodes that
            // reach a cycle.
            for &(a, b, k) in edges {
                if kept[k] && report.height(a).is_none() && report.height(b).is_none() {
                    kept[k] = false;
                    problems.push(problem(
                        KIND,
                        candidates[k].0,
                        format!(
                            "its backends are entangled in cycles of splits (through {} → {}); split left out",
                            name(a),
                            name(b)
                        ),
                    ));
                }
            }
        } else {
            let mut owners: HashMap<(usize, usize), usize> = HashMap::new();
            for &(a, b, k) in edges {
                if kept[k] {
                    let o = owners.entry((a, b)).or_insert(k);
                    *o = (*o).max(k);
                }
            }
            for cycle in &report.cycles {
                // The edge of the last split in name order closes the cycle.
                let Some((pos, k)) = cycle
                    .windows(2)
                    .enumerate()
                    .filter_map(|(pos, w)| owners.get(&(w[0], w[1])).map(|&k| (pos, k)))
                    .max_by_key(|&(_, k)| k)
                else {
                    continue;
                };
                steps += cycle.len();
                if !kept[k] {
                    continue;
                }
                kept[k] = false;
                let len = cycle.len() - 1;
                let path = (0..=len)
                    .map(|i| name(cycle[(pos + i) % len]))
                    .collect::<Vec<_>>()
                    .join(" → ");
                problems.push(problem(
                    KIND,
                    candidates[k].0,
                    format!(
                        "its backends form a cycle of splits ({}); split left out",
                        cut_message(&path, 512)
                    ),
                ));
            }
        }
        report = split_graph::check(services.len(), &kept_edges(&kept));
        steps += report.steps;
    }
    // Depth: a split whose backend already has MAX_SPLIT_DEPTH splits below it would make the
    // chain too deep. Heights only shrink when splits are left out, so one pass suffices.
    for &(a, b, k) in edges {
        let Some(below) = report.height(b) else {
            continue;
        };
        if kept[k] && below >= MAX_SPLIT_DEPTH {
            kept[k] = false;
            problems.push(problem(
                KIND,
                candidates[k].0,
                format!(
                    "backend {} is the root of {below} levels of nested splits; with root {} that is more than {MAX_SPLIT_DEPTH}; split left out",
                    name(b),
                    name(a)
                ),
            ));
        }
    }
    GraphOutcome { kept, steps }
}

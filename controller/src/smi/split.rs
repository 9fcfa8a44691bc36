//! TrafficSplit → the `splits` of root service ports, leaving out what cannot be honoured:
//! backends without the root's port, unknown route groups, and splits that would close a cycle.

use std::collections::{BTreeMap, HashMap};

use config_model::table::MAX_WEIGHT;
use config_model::{ServiceSpec, SplitBackendSpec, SplitSpec, TrafficType};
use kube::ResourceExt;

use super::{problem, Problem, Routes, SmiObjects, TrafficSplit};

const KIND: &str = "TrafficSplit";

pub(crate) fn apply(
    services: &mut [ServiceSpec],
    objects: &SmiObjects,
    routes: &Routes<'_>,
    problems: &mut Vec<Problem>,
) {
    let mut by_port: HashMap<(&str, &str, u16), usize> = HashMap::new();
    let mut by_name: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        by_port.insert((&s.namespace, &s.name, s.port), i);
        by_name.entry((&s.namespace, &s.name)).or_default().push(i);
    }
    let mut splits: Vec<&TrafficSplit> = objects.traffic_splits.iter().map(|s| &**s).collect();
    splits.sort_by_key(|s| (s.namespace(), s.name_any()));

    // Accepted split edges root → backend, to refuse the split that would close a cycle.
    let mut graph: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut accepted: Vec<(usize, SplitSpec)> = Vec::new();
    for ts in splits {
        let Some(candidate) = translate(ts, services, &by_port, &by_name, routes, problems) else {
            continue;
        };
        let mark = graph.clone();
        for (root, spec) in &candidate {
            graph.entry(*root).or_default().extend(
                spec.backends
                    .iter()
                    .map(|b| by_port[&(b.namespace.as_str(), b.name.as_str(), b.port)]),
            );
        }
        if let Some(cycle) = candidate
            .iter()
            .find_map(|(root, _)| find_cycle(&graph, *root))
        {
            let path = cycle
                .iter()
                .map(|&i| services[i].display_name())
                .collect::<Vec<_>>()
                .join(" → ");
            problems.push(problem(
                KIND,
                ts,
                format!("its backends form a cycle of splits ({path}); split left out"),
            ));
            graph = mark;
            continue;
        }
        accepted.extend(candidate);
    }
    for (root, spec) in accepted {
        services[root].splits.push(spec);
    }
    for s in services.iter_mut() {
        // The first split whose matches fit wins: specific (matching) splits before catch-alls,
        // then by name.
        s.splits.sort_by_key(|x| x.matches.is_empty());
    }
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
    for (i, b) in ts.spec.backends.iter().enumerate() {
        if !(0..=i64::from(MAX_WEIGHT)).contains(&b.weight) {
            return fail(format!(
                "spec.backends[{i}].weight {}: expected an integer from 0 to {MAX_WEIGHT}; split left out",
                b.weight
            ));
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
        if rs.traffic_type == TrafficType::Udp {
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
        if !matches.is_empty() && rs.traffic_type != TrafficType::Http {
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
            if bs.traffic_type != rs.traffic_type {
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
                weight: b.weight as u32,
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

/// A cycle reachable from `start`, as the list of service indices (first repeated at the end).
fn find_cycle(graph: &BTreeMap<usize, Vec<usize>>, start: usize) -> Option<Vec<usize>> {
    fn visit(
        g: &BTreeMap<usize, Vec<usize>>,
        n: usize,
        path: &mut Vec<usize>,
        done: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        if let Some(pos) = path.iter().position(|&p| p == n) {
            let mut cycle = path[pos..].to_vec();
            cycle.push(n);
            return Some(cycle);
        }
        if done.contains(&n) {
            return None;
        }
        path.push(n);
        for &next in g.get(&n).map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(n);
        None
    }
    visit(graph, start, &mut Vec::new(), &mut Vec::new())
}

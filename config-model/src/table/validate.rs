//! Validation of one service port of the wire form on its own: names, ports, endpoints,
//! options, HTTP matches, access rules and splits (references to other services are checked
//! when the table is put together, in `build`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::{
    canonical_ip, invalid, AccessRule, Endpoint, HttpMatch, Result, Service, ServiceKey, Split,
    SplitBackend, MAX_WEIGHT,
};
use crate::matching::{check_split_root, check_weight, SplitError};
use crate::mesh::{is_dns_subdomain, WorkloadIdentity};
use crate::options::ServiceOptions;
use crate::route::{check_route_entries, Route, RouteSpec};
use crate::wire::{AccessRuleSpec, HttpMatchSpec, ServiceSpec, SplitSpec, TrafficType};
use crate::MESH_DOMAIN;

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
            let node = match &ep.node {
                None => None,
                Some(n) if is_dns_subdomain(n) => Some(n.as_str().into()),
                Some(n) => {
                    return Err(invalid(
                        &id,
                        format!("endpoints[{i}].node"),
                        n,
                        "expected a node name (DNS subdomain: a-z, 0-9, -, .; at most 253)",
                    ))
                }
            };
            if ep.weight > 0 {
                endpoints.push(Endpoint {
                    addr,
                    weight: ep.weight,
                    node,
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
        let routes = validate_routes(&id, self.traffic_type, &self.routes)?;
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
            routes,
        })
    }
}

/// The route entries of a service on their own, by the route rules ([`crate::route`]):
/// http services only, at most [`crate::route::MAX_MATCHES_PER_ROUTE`] entries per route; backends named by
/// key (resolved when the table is put together).
fn validate_routes(id: &str, tt: TrafficType, specs: &[RouteSpec]) -> Result<Vec<Route>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    if tt != TrafficType::Http {
        return Err(invalid(
            id,
            "routes",
            &specs[0].route,
            format!("Gateway API routes need an http service, this one is {tt}"),
        ));
    }
    let mut per_route: HashMap<&str, usize> = HashMap::new();
    let mut routes = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let n = per_route.entry(spec.route.as_str()).or_default();
        *n += 1;
        check_route_entries(&spec.route, *n)
            .map_err(|e| invalid(id, format!("routes[{i}].{}", e.field), &e.value, e.reason()))?;
        let route = Route::try_from(spec)
            .map_err(|e| invalid(id, format!("routes[{i}].{}", e.field), &e.value, e.reason()))?;
        routes.push(route);
    }
    Ok(routes)
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
    let mut identities = Vec::with_capacity(rule.identities.len());
    for (j, s) in rule.identities.iter().enumerate() {
        let identity: WorkloadIdentity = s
            .parse()
            .map_err(|e: String| invalid(id, format!("access[{i}].identities[{j}]"), s, e))?;
        identities.push(identity);
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
        identities,
        http,
    })
}

/// The splits of a service on their own: matches compiled, weights checked, backends named by
/// key (resolved when the table is put together, [`Table::resolve_targets`]).
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

//! Fixture builders for tables, shared by the tests of every crate (feature `testing`).

use crate::wire::{EndpointSpec, ServiceSpec, TableSpec, TrafficType};
use crate::SCHEMA_VERSION;

/// A table of the current schema with these services.
pub fn table(version: u64, services: Vec<ServiceSpec>) -> TableSpec {
    TableSpec {
        schema_version: SCHEMA_VERSION,
        version,
        acl: false,
        services,
        ..TableSpec::default()
    }
}

/// A service port with endpoints of weight 1.
pub fn service(
    namespace: &str,
    name: &str,
    port: u16,
    mesh_port: u16,
    traffic_type: TrafficType,
    endpoints: &[&str],
) -> ServiceSpec {
    ServiceSpec {
        namespace: namespace.into(),
        name: name.into(),
        port,
        mesh_port,
        traffic_type,
        endpoints: endpoints.iter().map(|a| EndpointSpec::new(*a)).collect(),
        ..ServiceSpec::default()
    }
}

/// An HTTP service port.
pub fn http(namespace: &str, name: &str, mesh_port: u16, endpoints: &[&str]) -> ServiceSpec {
    service(namespace, name, 80, mesh_port, TrafficType::Http, endpoints)
}

/// An HTTP service port whose endpoints (`address`, `weight`) carry the given weights.
pub fn weighted<A: AsRef<str>>(
    namespace: &str,
    name: &str,
    mesh_port: u16,
    endpoints: &[(A, u32)],
) -> ServiceSpec {
    let mut svc = http(namespace, name, mesh_port, &[]);
    svc.endpoints = endpoints
        .iter()
        .map(|(address, weight)| EndpointSpec {
            address: address.as_ref().to_string(),
            weight: *weight,
            node: None,
        })
        .collect();
    svc
}

//! The Kubernetes objects behind the tables of [`crate::fixtures`], for the controller's
//! translation bench: for each service a `Service` (ClusterIP, one named port, the fixture's
//! annotations) and one `EndpointSlice` of ready endpoints with the resolved target port. The
//! shape is the fixture's: TCP on every 40th service while the TCP range lasts, retries and a
//! timeout on 10% of the services, a rate limit on 5%, a circuit breaker on 2%.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec as K8sServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use maille_controller::translate::SERVICE_NAME_LABEL;
use maille_controller::Snapshot;

use crate::fixtures::{ip, name, namespace, tcp_slot};

/// The port the fixture's backends listen on (the slices' resolved target port).
pub const TARGET_PORT: i32 = 8080;

fn annotations(i: usize) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let mut set = |k: &str, v: &str| a.insert(format!("maille.io/{k}"), v.to_string());
    if tcp_slot(i).is_some() {
        set("traffic-type", "tcp");
        return a;
    }
    set("traffic-type", "http");
    if i % 10 == 1 {
        set("retry-attempts", "2");
        set("timeout", "5s");
    }
    if i % 20 == 3 {
        set("ratelimit-average", "100");
        set("ratelimit-burst", "200");
    }
    if i % 50 == 7 {
        set("circuit-breaker-expression", "NetworkErrorRatio() > 0.5");
    }
    a
}

/// The `Service` of the `i`-th fixture service.
pub fn service(i: usize) -> Service {
    let tcp = tcp_slot(i).is_some();
    let port_name = if tcp { "db" } else { "http" };
    Service {
        metadata: ObjectMeta {
            name: Some(name(i)),
            namespace: Some(namespace(i)),
            annotations: Some(annotations(i)),
            resource_version: Some("1".into()),
            ..ObjectMeta::default()
        },
        spec: Some(K8sServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(ip(i, 10)),
            ports: Some(vec![ServicePort {
                name: Some(port_name.into()),
                port: if tcp { 5432 } else { 80 },
                protocol: Some("TCP".into()),
                target_port: Some(IntOrString::String(port_name.into())),
                ..ServicePort::default()
            }]),
            ..K8sServiceSpec::default()
        }),
        status: None,
    }
}

/// The `EndpointSlice` of the `i`-th fixture service: `endpoints` ready endpoints, of which
/// the first `not_ready` are not ready. `generation` goes into the slice's name suffix and
/// resource version, so two generations are different objects for the same service.
pub fn endpoint_slice(
    i: usize,
    endpoints: usize,
    not_ready: usize,
    generation: u32,
) -> EndpointSlice {
    let port_name = if tcp_slot(i).is_some() { "db" } else { "http" };
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-abcde", name(i))),
            namespace: Some(namespace(i)),
            labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), name(i))])),
            resource_version: Some(generation.to_string()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: (0..endpoints)
            .map(|j| Endpoint {
                addresses: vec![ip(i * endpoints + j, 11)],
                conditions: Some(EndpointConditions {
                    ready: Some(j >= not_ready),
                    serving: Some(j >= not_ready),
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(port_name.into()),
            port: Some(TARGET_PORT),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]),
    }
}

/// The objects of `services` services with `endpoints` ready endpoints each, as a provider
/// hands them to translation.
pub fn snapshot(services: usize, endpoints: usize) -> Snapshot {
    Snapshot {
        services: (0..services).map(|i| Arc::new(service(i))).collect(),
        endpoint_slices: (0..services)
            .map(|i| Arc::new(endpoint_slice(i, endpoints, 0, 1)))
            .collect(),
        ..Snapshot::default()
    }
}

/// `base` after one change: the EndpointSlice of service `i` replaced by one in which its first
/// endpoint is not ready (a pod going away, the most common change in a cluster). Shares every
/// other object with `base`, as a provider's store does between two events.
pub fn with_endpoint_not_ready(base: &Snapshot, i: usize, endpoints: usize) -> Snapshot {
    let mut changed = base.clone();
    changed.endpoint_slices[i] = Arc::new(endpoint_slice(i, endpoints, 1, 2));
    changed
}

#[cfg(test)]
mod tests {
    use maille_controller::alloc::PortAllocator;
    use maille_controller::{translate, Settings};

    use super::*;
    use crate::fixtures;

    /// The objects translate to the fixture table the proxy benches use: same services, mesh
    /// ports, traffic types, endpoints and options. So the two benches measure the same cluster.
    #[test]
    fn objects_translate_to_the_fixture_table() {
        let n = 200;
        let settings = Settings::default();
        let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
        let t = translate(&snapshot(n, 3), &settings, &mut alloc);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        let mut got = t.table.spec().services;
        let mut want = fixtures::table(n, 3).services;
        let key = |s: &config_model::ServiceSpec| (s.namespace.clone(), s.name.clone());
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got.len(), want.len());
        let tcp_ports: std::collections::BTreeSet<u16> = got
            .iter()
            .filter(|s| s.traffic_type == config_model::TrafficType::Tcp)
            .map(|s| s.mesh_port)
            .collect();
        assert_eq!(
            tcp_ports.len(),
            5,
            "one TCP port each for svc-0, -40, -80, -120, -160"
        );
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (&g.namespace, &g.name, g.port),
                (&w.namespace, &w.name, w.port)
            );
            assert_eq!(g.traffic_type, w.traffic_type, "{}", g.name);
            if g.traffic_type == config_model::TrafficType::Http {
                assert_eq!(g.mesh_port, w.mesh_port, "{}", g.name);
            } else {
                // The controller hands out TCP ports in (namespace, name) order, the fixture in
                // index order: same range, another order.
                assert!(settings.tcp_ports.contains(g.mesh_port), "{}", g.name);
            }
            assert_eq!(g.cluster_ip, w.cluster_ip, "{}", g.name);
            assert_eq!(g.options, w.options, "{}", g.name);
            let addrs = |s: &config_model::ServiceSpec| {
                let mut a: Vec<String> = s.endpoints.iter().map(|e| e.address.clone()).collect();
                a.sort();
                a
            };
            assert_eq!(addrs(g), addrs(w), "{}", g.name);
        }
    }

    #[test]
    fn one_endpoint_not_ready_changes_only_that_service() {
        let settings = Settings::default();
        let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
        let base = snapshot(50, 4);
        let before = translate(&base, &settings, &mut alloc).table;
        let after = translate(&with_endpoint_not_ready(&base, 7, 4), &settings, &mut alloc).table;
        let changed: Vec<&str> = before
            .services
            .iter()
            .zip(&after.services)
            .filter(|(b, a)| b != a)
            .map(|(b, _)| b.name.as_str())
            .collect();
        assert_eq!(changed, ["svc-7"]);
        let svc7 = after.services.iter().find(|s| s.name == "svc-7").unwrap();
        assert_eq!(svc7.endpoints.len(), 3);
    }
}

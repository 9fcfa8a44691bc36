//! Synthetic routing tables shaped like a real cluster's, for the micro-benches and the memory
//! figure: mostly HTTP services with a ClusterIP, up to 25 TCP services (the default TCP port
//! range), several endpoints each, and middlewares on a share of the services.

use config_model::{EndpointSpec, OptionsSpec, RateLimitSpec, ServiceSpec, TableSpec, TrafficType};

/// Namespaces the services are spread over.
pub const NAMESPACES: usize = 50;
/// The first port of the default HTTP range; every HTTP service of the fixture listens there.
pub const HTTP_MESH_PORT: u16 = 5000;
/// The first port of the default TCP range.
pub const TCP_MESH_PORT: u16 = 10000;
/// TCP services in a table (the default TCP range has 25 ports); every 40th service is TCP
/// until they are used up.
pub const MAX_TCP_SERVICES: usize = 25;

/// Whether the `i`-th service of a fixture is a TCP one, and if so its index in the TCP range.
pub fn tcp_slot(i: usize) -> Option<u16> {
    (i.is_multiple_of(40) && i / 40 < MAX_TCP_SERVICES).then_some((i / 40) as u16)
}

/// Name of the `i`-th service.
pub fn name(i: usize) -> String {
    format!("svc-{i}")
}

/// Namespace of the `i`-th service.
pub fn namespace(i: usize) -> String {
    format!("ns-{}", i % NAMESPACES)
}

/// The mesh host name of the `i`-th service (`svc-i.ns-k.maille.mesh`).
pub fn host(i: usize) -> String {
    format!("{}.{}.{}", name(i), namespace(i), config_model::MESH_DOMAIN)
}

/// The `n`-th address of the `first.0.0.0/8` block the fixtures draw from (`10.` for
/// ClusterIPs, `11.` for endpoints).
pub fn ip(n: usize, first: u8) -> String {
    format!(
        "{first}.{}.{}.{}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// One service of the fixture with `endpoints` endpoints.
pub fn service(i: usize, endpoints: usize) -> ServiceSpec {
    let tcp = tcp_slot(i);
    let mut options = OptionsSpec::default();
    if tcp.is_none() {
        if i % 10 == 1 {
            options.retry_attempts = Some(2);
            options.timeout_ms = Some(5_000);
        }
        if i % 20 == 3 {
            options.rate_limit = Some(RateLimitSpec {
                average: 100,
                burst: 200,
            });
        }
        if i % 50 == 7 {
            options.circuit_breaker = Some("NetworkErrorRatio() > 0.5".into());
        }
    }
    ServiceSpec {
        namespace: namespace(i),
        name: name(i),
        port: if tcp.is_some() { 5432 } else { 80 },
        port_name: Some(if tcp.is_some() { "db" } else { "http" }.into()),
        mesh_port: match tcp {
            Some(slot) => TCP_MESH_PORT + slot,
            None => HTTP_MESH_PORT,
        },
        traffic_type: if tcp.is_some() {
            TrafficType::Tcp
        } else {
            TrafficType::Http
        },
        cluster_ip: Some(ip(i, 10)),
        endpoints: (0..endpoints)
            .map(|j| EndpointSpec::new(format!("{}:8080", ip(i * endpoints + j, 11))))
            .collect(),
        options,
        ..ServiceSpec::default()
    }
}

/// A table of `services` services with `endpoints` endpoints each.
pub fn table(services: usize, endpoints: usize) -> TableSpec {
    config_model::testing::table(1, (0..services).map(|i| service(i, endpoints)).collect())
}

/// The table as the controller serves it.
pub fn table_json(services: usize, endpoints: usize) -> Vec<u8> {
    serde_json::to_vec(&table(services, endpoints)).expect("a table spec always serializes")
}

#[cfg(test)]
mod tests {
    use config_model::Table;

    use super::*;

    #[test]
    fn fixture_validates_and_routes_every_service() {
        let table = Table::from_json(&table_json(1_000, 10)).expect("fixture must validate");
        assert_eq!(table.len(), 1_000);
        let endpoints: usize = table.services().iter().map(|s| s.endpoints.len()).sum();
        assert_eq!(endpoints, 10_000);
        let mut tcp = 0;
        for i in 0..1_000 {
            let svc = match tcp_slot(i) {
                Some(slot) => {
                    tcp += 1;
                    table.tcp_route(TCP_MESH_PORT + slot)
                }
                None => table.http_route(HTTP_MESH_PORT, &host(i)),
            };
            assert_eq!(
                svc.map(|s| table[s].key.name.clone()),
                Some(name(i)),
                "service {i}"
            );
        }
        assert_eq!(tcp, MAX_TCP_SERVICES);
        assert!(table
            .http_route(HTTP_MESH_PORT, "nope.ns-0.maille.mesh")
            .is_none());
    }

    #[test]
    fn small_tables_have_one_tcp_service() {
        let table = Table::try_from(table(10, 1)).expect("fixture must validate");
        assert_eq!(
            table.tcp_route(TCP_MESH_PORT).map(|s| table[s].key.port),
            Some(5432)
        );
        assert!(table.tcp_route(TCP_MESH_PORT + 1).is_none());
    }
}

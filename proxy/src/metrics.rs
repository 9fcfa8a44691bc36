//! The proxy's HTTP and table metrics, registered once in the `prometheus` default registry
//! (the one `/metrics` serves).

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Labels of a service port: `namespace`, `service`, `port` (the Service port).
pub const SERVICE_LABELS: [&str; 3] = ["namespace", "service", "port"];

/// Requests answered, by service port and status code. Requests that matched no route are
/// counted with empty `namespace`/`service` and the listener port.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_http_requests_total",
        "HTTP requests answered by the proxy, by service port and status code.",
        &["namespace", "service", "port", "code"]
    )
    .expect("register maille_proxy_http_requests_total")
});

/// Time from the request header to the end of the response, by service port.
pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "maille_proxy_http_request_duration_seconds",
        "Time from the request header to the end of the response, by service port.",
        &SERVICE_LABELS,
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
    )
    .expect("register maille_proxy_http_request_duration_seconds")
});

/// Client connections open on the HTTP listeners.
pub static HTTP_CONNECTIONS_OPEN: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "maille_proxy_http_connections_open",
        "Client connections open on the HTTP listeners."
    )
    .expect("register maille_proxy_http_connections_open")
});

/// Client connections closed because a deadline passed, by what was awaited.
pub static HTTP_CLIENT_TIMEOUTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "maille_proxy_http_client_timeouts_total",
        "Client connections on the HTTP listeners closed because a request header was not read in time (phase=header) or no next request came (phase=idle).",
        &["phase"]
    )
    .expect("register maille_proxy_http_client_timeouts_total")
});

/// Client connections closed at accept because `--http-max-connections` were open.
pub static HTTP_CONNECTIONS_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "maille_proxy_http_connections_refused_total",
        "Client connections closed at accept because --http-max-connections were already open."
    )
    .expect("register maille_proxy_http_connections_refused_total")
});

/// Version (controller generation) of the table in use.
pub static TABLE_VERSION: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "maille_proxy_table_version",
        "Version (controller generation) of the routing table in use."
    )
    .expect("register maille_proxy_table_version")
});

/// Unix time of the last table swap.
pub static TABLE_LAST_SWAP: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "maille_proxy_table_last_swap_timestamp_seconds",
        "Unix time at which the routing table in use was swapped in."
    )
    .expect("register maille_proxy_table_last_swap_timestamp_seconds")
});

/// Services of the current table that this proxy cannot route, by service port and reason.
pub static UNROUTABLE_SERVICES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "maille_proxy_unroutable_services",
        "Service ports of the current table that this proxy cannot route (1 each), by reason: no_listener (the mesh port is not among this proxy's listener ports of the service's traffic type) or wrong_listener (the port is a listener of another traffic type).",
        &["namespace", "service", "port", "reason"]
    )
    .expect("register maille_proxy_unroutable_services")
});

/// Tables swapped in.
pub static TABLE_SWAPS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "maille_proxy_table_swaps_total",
        "Routing tables swapped in."
    )
    .expect("register maille_proxy_table_swaps_total")
});

/// Tables refused (bad JSON or failed validation); the previous table stays.
pub static TABLE_REFUSALS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "maille_proxy_table_refusals_total",
        "Routing tables refused because they did not parse or validate."
    )
    .expect("register maille_proxy_table_refusals_total")
});

/// Registers the HTTP and table metrics (idempotent), so that they appear on `/metrics`
/// before the first request.
pub fn register() {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&HTTP_DURATION);
    LazyLock::force(&HTTP_CONNECTIONS_OPEN);
    LazyLock::force(&HTTP_CONNECTIONS_REFUSED);
    for phase in ["header", "idle"] {
        HTTP_CLIENT_TIMEOUTS.with_label_values(&[phase]);
    }
    LazyLock::force(&TABLE_VERSION);
    LazyLock::force(&TABLE_LAST_SWAP);
    LazyLock::force(&TABLE_SWAPS);
    LazyLock::force(&UNROUTABLE_SERVICES);
    LazyLock::force(&TABLE_REFUSALS);
}

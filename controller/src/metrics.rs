//! The controller's Prometheus metrics, in the default registry (served on `/metrics`).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Every metric of the controller.
pub struct Metrics {
    /// `maille_controller_rebuilds_total`.
    pub rebuilds: IntCounter,
    /// `maille_controller_rebuild_duration_seconds`.
    pub rebuild_duration: Histogram,
    /// `maille_controller_objects_watched{kind}`.
    pub objects_watched: IntGaugeVec,
    /// `maille_controller_services_meshed{traffic_type}`.
    pub services_meshed: IntGaugeVec,
    /// `maille_controller_service_errors`.
    pub service_errors: IntGauge,
    /// `maille_controller_longpoll_waiting`.
    pub longpoll_waiting: IntGauge,
    /// `maille_controller_table_version`.
    pub table_version: IntGauge,
    /// `maille_controller_api_writes_total{kind,result}`.
    pub api_writes: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    Metrics {
    rebuilds: register_int_counter!(
        "maille_controller_rebuilds_total",
        "Routing table rebuilds (a burst of object changes gives one)."
    )
    .expect("register maille_controller_rebuilds_total"),
    rebuild_duration: register_histogram!(
        "maille_controller_rebuild_duration_seconds",
        "Time to translate the objects into a validated table.",
        vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
    )
    .expect("register maille_controller_rebuild_duration_seconds"),
    objects_watched: register_int_gauge_vec!(
        "maille_controller_objects_watched",
        "Objects the controller currently holds, by kind.",
        &["kind"]
    )
    .expect("register maille_controller_objects_watched"),
    services_meshed: register_int_gauge_vec!(
        "maille_controller_services_meshed",
        "Service ports in the current table, by traffic type.",
        &["traffic_type"]
    )
    .expect("register maille_controller_services_meshed"),
    service_errors: register_int_gauge!(
        "maille_controller_service_errors",
        "Objects with at least one problem at the last rebuild (bad annotation, port range exhausted, ...)."
    )
    .expect("register maille_controller_service_errors"),
    longpoll_waiting: register_int_gauge!(
        "maille_controller_longpoll_waiting",
        "Proxies currently waiting on a long-poll of /api/configuration."
    )
    .expect("register maille_controller_longpoll_waiting"),
    table_version: register_int_gauge!(
        "maille_controller_table_version",
        "Version of the table currently served."
    )
    .expect("register maille_controller_table_version"),
    api_writes: register_int_counter_vec!(
        "maille_controller_api_writes_total",
        "Writes to the Kubernetes API (shadow services, events), by kind and result.",
        &["kind", "result"]
    )
    .expect("register maille_controller_api_writes_total"),
}
});

/// Registers the controller's metrics (idempotent) and returns them.
pub fn register() -> &'static Metrics {
    &METRICS
}

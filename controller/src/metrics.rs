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
    /// `maille_controller_translations_total`.
    pub translations: IntCounter,
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
    /// `maille_controller_longpoll_refusals_total{bound}`.
    pub longpoll_refusals: IntCounterVec,
    /// `maille_controller_table_version`.
    pub table_version: IntGauge,
    /// `maille_controller_api_writes_total{kind,result}`.
    pub api_writes: IntCounterVec,
    /// `maille_controller_watch_up{kind}`.
    pub watch_up: IntGaugeVec,
    /// `maille_controller_watch_errors_total{kind}`.
    pub watch_errors: IntCounterVec,
    /// `maille_controller_watch_events_ignored_total{kind}`.
    pub watch_events_ignored: IntCounterVec,
    /// `maille_controller_leader`.
    pub leader: IntGauge,
    /// `maille_controller_table_responses_total{kind}`: tables sent, `full` or `delta`.
    pub table_responses: IntCounterVec,
    /// `maille_controller_table_response_bytes_total{kind}`: their bodies, as sent.
    pub table_response_bytes: IntCounterVec,
}

/// The `kind` label values of `maille_controller_api_writes_total`.
pub const API_WRITE_KINDS: [&str; 2] = ["Service", "Event"];
/// The `result` label values of `maille_controller_api_writes_total`.
pub const API_WRITE_RESULTS: [&str; 2] = ["ok", "error"];

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
    rebuilds: register_int_counter!(
        "maille_controller_rebuilds_total",
        "Routing table rebuilds (a burst of object changes gives one)."
    )
    .expect("register maille_controller_rebuilds_total"),
    translations: register_int_counter!(
        "maille_controller_translations_total",
        "Rebuilds that put a table together again (one for changes translation does not read, such as a Pod readiness flip, puts nothing together)."
    )
    .expect("register maille_controller_translations_total"),
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
    longpoll_refusals: register_int_counter_vec!(
        "maille_controller_longpoll_refusals_total",
        "Long-polls of /api/configuration refused with 429, by the bound that refused them (client: per address; total).",
        &["bound"]
    )
    .expect("register maille_controller_longpoll_refusals_total"),
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
    watch_up: register_int_gauge_vec!(
        "maille_controller_watch_up",
        "1 while the watch of this kind is synced and running; 0 while it fails (the view of this kind is stale), is skipped (forbidden, CRD not installed) or has not synced yet.",
        &["kind"]
    )
    .expect("register maille_controller_watch_up"),
    watch_errors: register_int_counter_vec!(
        "maille_controller_watch_errors_total",
        "List and watch errors, by kind (410 Gone included: each one is a relist).",
        &["kind"]
    )
    .expect("register maille_controller_watch_errors_total"),
    watch_events_ignored: register_int_counter_vec!(
        "maille_controller_watch_events_ignored_total",
        "Watch events that cannot change the table (a Pod update that leaves its addresses, ServiceAccount and phase as they were), stored without a rebuild.",
        &["kind"]
    )
    .expect("register maille_controller_watch_events_ignored_total"),
    leader: register_int_gauge!(
        "maille_controller_leader",
        "1 while this replica holds the leader Lease and writes shadow services and Events."
    )
    .expect("register maille_controller_leader"),
    table_responses: register_int_counter_vec!(
        "maille_controller_table_responses_total",
        "Tables sent to proxies on /api/configuration, whole (full) or as a delta from the version held.",
        &["kind"]
    )
    .expect("register maille_controller_table_responses_total"),
    table_response_bytes: register_int_counter_vec!(
        "maille_controller_table_response_bytes_total",
        "Bytes of the table bodies sent on /api/configuration (after compression), by kind.",
        &["kind"]
    )
    .expect("register maille_controller_table_response_bytes_total"),
    };
    for kind in ["full", "delta"] {
        m.table_responses.with_label_values(&[kind]);
        m.table_response_bytes.with_label_values(&[kind]);
    }
    // Every series exists from the start, at zero: a controller that has written nothing (the
    // manifests provider, or a cluster with nothing to shadow yet) shows 0 writes and 0 errors
    // rather than no data, and `rate()`/`increase()` see the first write.
    for kind in API_WRITE_KINDS {
        for result in API_WRITE_RESULTS {
            m.api_writes.with_label_values(&[kind, result]);
        }
    }
    for bound in ["client", "total"] {
        m.longpoll_refusals.with_label_values(&[bound]);
    }
    m
});

/// Registers the controller's metrics (idempotent) and returns them.
pub fn register() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_write_series_exist_at_zero_before_any_write() {
        register();
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&prometheus::gather())
            .expect("encode");
        for kind in API_WRITE_KINDS {
            for result in API_WRITE_RESULTS {
                let line = format!(
                    "maille_controller_api_writes_total{{kind=\"{kind}\",result=\"{result}\"}}"
                );
                assert!(text.contains(&line), "{line} missing from:\n{text}");
            }
        }
    }
}

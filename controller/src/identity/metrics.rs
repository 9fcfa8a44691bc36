//! Metrics of the mesh CA and certificate requests, in the default registry.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, register_int_gauge, IntCounterVec, IntGauge};

/// The `result` label values of `maille_controller_certificate_requests_total`.
pub const RESULTS: [&str; 6] = [
    "issued",
    "bad_request",
    "unauthenticated",
    "forbidden",
    "unavailable",
    "cleartext",
];

/// The `reason` label values of `maille_controller_identity_tls_refused_total`.
pub const TLS_REFUSALS: [&str; 3] = ["handshake", "timeout", "overload"];

/// The `result` label values of `maille_controller_identity_ca_changes_total`.
pub const CA_CHANGES: [&str; 2] = ["applied", "refused"];

/// Every identity metric of the controller.
pub struct Metrics {
    /// `maille_controller_certificate_requests_total{result}`.
    pub requests: IntCounterVec,
    /// `maille_controller_identity_ca_expiry_timestamp_seconds`.
    pub ca_expiry: IntGauge,
    /// `maille_controller_identity_proxies`: node proxies holding an unexpired certificate.
    pub proxies: IntGauge,
    /// `maille_controller_identity_server_certificate_expiry_timestamp_seconds`.
    pub server_expiry: IntGauge,
    /// `maille_controller_identity_tls_refused_total{reason}`.
    pub tls_refused: IntCounterVec,
    /// `maille_controller_identity_ca_changes_total{result}`.
    pub ca_changes: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        requests: register_int_counter_vec!(
            "maille_controller_certificate_requests_total",
            "Node certificate requests, by result: issued, bad_request, unauthenticated, forbidden, unavailable, cleartext (sent to the plain HTTP API, not read).",
            &["result"]
        )
        .expect("register maille_controller_certificate_requests_total"),
        ca_expiry: register_int_gauge!(
            "maille_controller_identity_ca_expiry_timestamp_seconds",
            "When the mesh CA's certificate expires (Unix seconds); 0 until it is loaded."
        )
        .expect("register maille_controller_identity_ca_expiry_timestamp_seconds"),
        proxies: register_int_gauge!(
            "maille_controller_identity_proxies",
            "Node proxies holding an unexpired certificate from this controller."
        )
        .expect("register maille_controller_identity_proxies"),
        server_expiry: register_int_gauge!(
            "maille_controller_identity_server_certificate_expiry_timestamp_seconds",
            "When the identity listener's server certificate expires (Unix seconds); 0 until it is made."
        )
        .expect("register maille_controller_identity_server_certificate_expiry_timestamp_seconds"),
        tls_refused: register_int_counter_vec!(
            "maille_controller_identity_tls_refused_total",
            "Connections to the identity listener closed before a request, by reason: handshake (not TLS, or the client refused the certificate), timeout, overload.",
            &["reason"]
        )
        .expect("register maille_controller_identity_tls_refused_total"),
        ca_changes: register_int_counter_vec!(
            "maille_controller_identity_ca_changes_total",
            "Changes of the mesh CA seen while running (its Secret, or the files of the identity folder), by result: applied (signing with it, its roots served), refused (invalid: the CA held stays).",
            &["result"]
        )
        .expect("register maille_controller_identity_ca_changes_total"),
    };
    for r in CA_CHANGES {
        m.ca_changes.with_label_values(&[r]);
    }
    for r in RESULTS {
        m.requests.with_label_values(&[r]);
    }
    for r in TLS_REFUSALS {
        m.tls_refused.with_label_values(&[r]);
    }
    m
});

/// Registers the identity metrics (once) and returns them.
pub fn register() -> &'static Metrics {
    &METRICS
}

//! Metrics of the proxy's mesh identity, in the default registry.

use std::sync::LazyLock;

use prometheus::{register_int_counter_vec, register_int_gauge, IntCounterVec, IntGauge};

/// The `reason` label values of `maille_proxy_identity_renewal_failures_total`.
pub const FAILURE_REASONS: [&str; 4] = ["token", "unreachable", "refused", "invalid"];

/// Every identity metric of the proxy.
pub struct Metrics {
    /// `maille_proxy_identity_certificate_expiry_timestamp_seconds`.
    pub expiry: IntGauge,
    /// `maille_proxy_identity_certificate_renewals_total`.
    pub renewals: IntCounterVec,
    /// `maille_proxy_identity_renewal_failures_total{reason}`.
    pub failures: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        expiry: register_int_gauge!(
            "maille_proxy_identity_certificate_expiry_timestamp_seconds",
            "When the proxy's mesh certificate expires (Unix seconds); 0 while it holds none."
        )
        .expect("register maille_proxy_identity_certificate_expiry_timestamp_seconds"),
        renewals: register_int_counter_vec!(
            "maille_proxy_identity_certificates_total",
            "Certificates the proxy received from the controller (first and renewals).",
            &["kind"]
        )
        .expect("register maille_proxy_identity_certificates_total"),
        failures: register_int_counter_vec!(
            "maille_proxy_identity_renewal_failures_total",
            "Failed certificate requests, by reason: token (unreadable token file), unreachable (no controller answered), refused (the controller said no), invalid (an answer the proxy cannot use).",
            &["reason"]
        )
        .expect("register maille_proxy_identity_renewal_failures_total"),
    };
    for r in FAILURE_REASONS {
        m.failures.with_label_values(&[r]);
    }
    for k in ["first", "renewal"] {
        m.renewals.with_label_values(&[k]);
    }
    m
});

/// Registers the identity metrics (once) and returns them.
pub fn register() -> &'static Metrics {
    &METRICS
}

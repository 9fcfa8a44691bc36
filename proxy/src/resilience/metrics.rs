//! Metrics of the resilience decisions (retries, budget, rate limit, timeouts, breaker).

use std::sync::LazyLock;

use config_model::ServiceKey;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts};

const LABELS: [&str; 3] = ["namespace", "service", "port"];

fn counter(name: &str, help: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &LABELS).expect("valid metric definition")
}

pub(crate) static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "maille_proxy_retries_total",
        "Requests sent again to another endpoint after a connect failure or an upstream error.",
    )
});
pub(crate) static BUDGET_EXHAUSTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "maille_proxy_retry_budget_exhausted_total",
        "Retries not made because the service's retry budget was spent.",
    )
});
pub(crate) static RATELIMITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "maille_proxy_ratelimited_requests_total",
        "Requests answered 429 by the service's rate limit.",
    )
});
pub(crate) static TIMEOUTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "maille_proxy_timeouts_total",
        "Requests answered 504 because the service's whole-request timeout expired.",
    )
});
pub(crate) static BREAKER_TRIPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "maille_proxy_circuit_breaker_trips_total",
        "Times the service's circuit breaker opened.",
    )
});
pub(crate) static BREAKER_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "maille_proxy_circuit_breaker_rejected_total",
        "Requests answered 503 at once because the service's circuit breaker was open.",
    )
});
pub(crate) static BREAKER_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    IntGaugeVec::new(
        Opts::new(
            "maille_proxy_circuit_breaker_state",
            "State of the service's circuit breaker: 0 closed, 1 open, 2 half-open.",
        ),
        &LABELS,
    )
    .expect("valid metric definition")
});

/// Registers the resilience metrics in the default registry (what `/metrics` serves).
/// Calling it again is harmless.
pub fn register() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(|| {
        let r = prometheus::default_registry();
        for c in [
            &*RETRIES,
            &*BUDGET_EXHAUSTED,
            &*RATELIMITED,
            &*TIMEOUTS,
            &*BREAKER_TRIPS,
            &*BREAKER_REJECTED,
        ] {
            if let Err(e) = r.register(Box::new(c.clone())) {
                tracing::warn!(error = %e, "Metric not registered");
            }
        }
        if let Err(e) = r.register(Box::new(BREAKER_STATE.clone())) {
            tracing::warn!(error = %e, "Metric not registered");
        }
    });
}

/// The metric handles of one service port, resolved once so that the request path does not
/// look labels up.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    pub(crate) retries: IntCounter,
    pub(crate) budget_exhausted: IntCounter,
    pub(crate) ratelimited: IntCounter,
    pub(crate) timeouts: IntCounter,
    pub(crate) breaker_trips: IntCounter,
    pub(crate) breaker_rejected: IntCounter,
    pub(crate) breaker_state: IntGauge,
}

fn label_values(key: &ServiceKey) -> [String; 3] {
    [
        key.namespace.clone(),
        key.name.clone(),
        key.port.to_string(),
    ]
}

impl ServiceMetrics {
    /// Handles for this service port.
    pub fn new(key: &ServiceKey) -> Self {
        let l = label_values(key);
        let l = [l[0].as_str(), l[1].as_str(), l[2].as_str()];
        ServiceMetrics {
            retries: RETRIES.with_label_values(&l),
            budget_exhausted: BUDGET_EXHAUSTED.with_label_values(&l),
            ratelimited: RATELIMITED.with_label_values(&l),
            timeouts: TIMEOUTS.with_label_values(&l),
            breaker_trips: BREAKER_TRIPS.with_label_values(&l),
            breaker_rejected: BREAKER_REJECTED.with_label_values(&l),
            breaker_state: BREAKER_STATE.with_label_values(&l),
        }
    }

    /// Drops the breaker state series of a service port that left the table or lost its
    /// breaker (a stale "open" would mislead); counters stay, as Prometheus expects.
    pub fn forget_breaker(key: &ServiceKey) {
        let l = label_values(key);
        let _ = BREAKER_STATE.remove_label_values(&[&l[0], &l[1], &l[2]]);
    }
}

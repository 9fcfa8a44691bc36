//! The per-service handles of the resilience metrics (retries, budget, rate limit, timeouts,
//! breaker), taken from [`crate::metrics::Metrics`].

use config_model::ServiceKey;
use prometheus::{IntCounter, IntGauge};

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
        let m = crate::metrics::register();
        let l = label_values(key);
        let l = [l[0].as_str(), l[1].as_str(), l[2].as_str()];
        ServiceMetrics {
            retries: m.retries.with_label_values(&l),
            budget_exhausted: m.retry_budget_exhausted.with_label_values(&l),
            ratelimited: m.ratelimited.with_label_values(&l),
            timeouts: m.timeouts.with_label_values(&l),
            breaker_trips: m.breaker_trips.with_label_values(&l),
            breaker_rejected: m.breaker_rejected.with_label_values(&l),
            breaker_state: m.breaker_state.with_label_values(&l),
        }
    }

    /// Drops the breaker state series of a service port that left the table or lost its
    /// breaker (a stale "open" would mislead); counters stay, as Prometheus expects.
    pub fn forget_breaker(key: &ServiceKey) {
        let l = label_values(key);
        let _ = crate::metrics::register()
            .breaker_state
            .remove_label_values(&[&l[0], &l[1], &l[2]]);
    }
}

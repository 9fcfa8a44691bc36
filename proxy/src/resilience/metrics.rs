//! The per-service handles of the resilience metrics (retries, budget, rate limit, timeouts,
//! breaker), taken from [`crate::metrics::Metrics`] for the features a service port's options
//! turn on: a series that cannot count anything is not created (each one costs the registry
//! a copy of the metric's description and its label pairs, several hundred bytes).

use config_model::ServiceKey;
use prometheus::core::{MetricVec, MetricVecBuilder};
use prometheus::{IntCounter, IntGauge};

/// The metric handles of one service port (or one route rule of it), resolved once so that
/// the request path does not look labels up. `None` where the settings cannot count.
#[derive(Debug, Clone, Default)]
pub struct ServiceMetrics {
    pub(crate) retries: Option<IntCounter>,
    pub(crate) budget_exhausted: Option<IntCounter>,
    pub(crate) ratelimited: Option<IntCounter>,
    pub(crate) timeouts: Option<IntCounter>,
    pub(crate) breaker_rejected: Option<IntCounter>,
}

/// The features whose series a [`ServiceMetrics`] holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counted {
    /// Retries and the retry budget.
    pub retries: bool,
    /// Requests refused by the rate limit.
    pub rate_limit: bool,
    /// Whole-request (or per-attempt) timeouts.
    pub timeouts: bool,
    /// Requests refused by an open breaker.
    pub breaker: bool,
}

fn label_values(key: &ServiceKey) -> [String; 3] {
    [
        key.namespace.clone(),
        key.name.clone(),
        key.port.to_string(),
    ]
}

/// The series of `vec` for `key`, when `on`.
fn series<T: MetricVecBuilder>(on: bool, vec: &MetricVec<T>, key: &[String; 3]) -> Option<T::M> {
    on.then(|| vec.with_label_values(&[key[0].as_str(), key[1].as_str(), key[2].as_str()]))
}

impl ServiceMetrics {
    /// Handles for this service port, for the features in `counted`.
    pub fn new(key: &ServiceKey, counted: Counted) -> Self {
        let m = crate::metrics::register();
        let l = label_values(key);
        ServiceMetrics {
            retries: series(counted.retries, &m.retries, &l),
            budget_exhausted: series(counted.retries, &m.retry_budget_exhausted, &l),
            ratelimited: series(counted.rate_limit, &m.ratelimited, &l),
            timeouts: series(counted.timeouts, &m.timeouts, &l),
            breaker_rejected: series(counted.breaker, &m.breaker_rejected, &l),
        }
    }

    /// The breaker's own handles for this service port: its state gauge and trip counter.
    pub fn breaker(key: &ServiceKey) -> (IntGauge, IntCounter) {
        let m = crate::metrics::register();
        let l = label_values(key);
        let l = [l[0].as_str(), l[1].as_str(), l[2].as_str()];
        (
            m.breaker_state.with_label_values(&l),
            m.breaker_trips.with_label_values(&l),
        )
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

/// Counts one, where the series exists.
pub(crate) fn inc(counter: &Option<IntCounter>) {
    if let Some(c) = counter {
        c.inc();
    }
}

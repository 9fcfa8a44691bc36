//! Per-service resilience: rate limits, circuit breakers, retries with a budget and
//! whole-request deadlines. A service's [`ServiceState`] is built when a table is compiled
//! ([`crate::compiled`]) and carried over to the next table while the service's options are
//! unchanged. Nothing here takes a lock on the request path.
//!
//! The HTTP proxy calls, per request: [`RequestState::start`] with the compiled service's state
//! and [`RequestState::admit`] in `request_filter`, [`RequestState::start_attempt`] in
//! `upstream_peer`,
//! [`RequestState::on_connect_failure`] / [`RequestState::on_error_while_proxy`] to decide
//! retries, [`RequestState::error_status`] in `fail_to_proxy`, and [`RequestState::finish`]
//! in `logging`.
//!
//! A request that a Gateway API route entry matched carries that rule's [`RoutePolicy`]
//! ([`RequestState::start_routed`]): its request timeout and retry replace the service's
//! (annotation) ones when the rule sets them; its backend-request timeout bounds each attempt;
//! its retried codes turn those responses into retries ([`RequestState::retry_status`]); its
//! backoff pauses before each retry ([`RequestState::backoff`]).

pub mod breaker;
pub mod budget;
pub mod metrics;
pub mod ratelimit;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use config_model::route::RouteRetry;
use config_model::{Service, ServiceKey, ServiceOptions, TrafficType};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};

use crate::clock;
use breaker::{Admission, Breaker, Outcome};
use budget::RetryBudget;
use metrics::{inc, Counted, ServiceMetrics};
use ratelimit::TokenBucket;

/// Upstream connect attempts of an HTTP request to a service without a retry policy (each on
/// another endpoint while there is one), like `--tcp-connect-attempts` for TCP.
pub const DEFAULT_CONNECT_ATTEMPTS: usize = 3;

/// The resilience state of one service port, built from its options when a table is
/// compiled ([`crate::compiled`]) and carried over to the next table while they are unchanged.
#[derive(Debug)]
pub struct ServiceState {
    options: ServiceOptions,
    rate_limit: Option<TokenBucket>,
    breaker: Option<Breaker>,
    budget: Option<RetryBudget>,
    metrics: ServiceMetrics,
}

impl ServiceState {
    fn new(svc: &Service) -> Self {
        let o = &svc.options;
        let metrics = ServiceMetrics::new(
            &svc.key,
            Counted {
                retries: o.retry.is_some(),
                rate_limit: o.rate_limit.is_some(),
                timeouts: o.timeout_ms.is_some(),
                breaker: o.circuit_breaker.is_some(),
            },
        );
        ServiceState {
            options: o.clone(),
            rate_limit: o.rate_limit.map(|r| TokenBucket::new(r.average, r.burst)),
            breaker: o.circuit_breaker.as_ref().map(|cb| {
                let (state, trips) = ServiceMetrics::breaker(&svc.key);
                Breaker::new(cb, state, trips)
            }),
            budget: o.retry.map(|r| RetryBudget::new(r.budget_percent)),
            metrics,
        }
    }

    /// The state of `svc` in a new table: `previous` (the state of the same service port in
    /// the table before) when its options are unchanged, so that tokens, breaker windows and
    /// budgets live on; else new state; `None` when its options need none.
    pub fn carry_or_build(
        svc: &Service,
        previous: Option<&Arc<ServiceState>>,
    ) -> Option<Arc<ServiceState>> {
        if svc.traffic_type != TrafficType::Http || !needs_state(&svc.options) {
            return None;
        }
        match previous {
            Some(s) if s.options == svc.options => Some(s.clone()),
            _ => Some(Arc::new(ServiceState::new(svc))),
        }
    }

    /// Whether it has a circuit breaker (whose state gauge is dropped with it).
    pub(crate) fn has_breaker(&self) -> bool {
        self.breaker.is_some()
    }
}

/// Whether a service's options need any per-service state.
fn needs_state(o: &ServiceOptions) -> bool {
    o.retry.is_some()
        || o.timeout_ms.is_some()
        || o.rate_limit.is_some()
        || o.circuit_breaker.is_some()
}

/// The timeouts and retries of one route entry, built when the table is compiled
/// ([`crate::compiled::routes`]) for an entry that sets any.
#[derive(Debug)]
pub struct RoutePolicy {
    /// Whole request, retries included; replaces the service's `timeout` when set.
    request_ms: Option<u64>,
    /// Each attempt.
    backend_request_ms: Option<u64>,
    /// Replaces the service's retry options when set.
    retry: Option<RouteRetry>,
    /// The rule's own retry budget (the service's percentage, or the default).
    budget: Option<RetryBudget>,
    /// The budget's percentage, to tell whether a policy can be carried over.
    budget_percent: u32,
    /// The parent service port's resilience metrics.
    metrics: ServiceMetrics,
}

impl RoutePolicy {
    /// The policy of a route entry of service `parent`; `None` when the entry sets neither
    /// timeouts nor retry (the service's options then apply as they are).
    pub fn new(
        parent: &ServiceKey,
        options: &ServiceOptions,
        route: &config_model::Route,
    ) -> Option<RoutePolicy> {
        let t = route.timeouts;
        if t.request_ms.is_none() && t.backend_request_ms.is_none() && route.retry.is_none() {
            return None;
        }
        let percent = options
            .retry
            .map_or(config_model::options::DEFAULT_RETRY_BUDGET_PERCENT, |r| {
                r.budget_percent
            });
        Some(RoutePolicy {
            request_ms: t.request_ms,
            backend_request_ms: t.backend_request_ms,
            budget: route.retry.as_ref().map(|_| RetryBudget::new(percent)),
            budget_percent: percent,
            retry: route.retry.clone(),
            // A request of this rule counts its timeouts here whichever deadline (the rule's
            // or the service's) ran out.
            metrics: ServiceMetrics::new(
                parent,
                Counted {
                    retries: route.retry.is_some(),
                    timeouts: t.request_ms.is_some()
                        || t.backend_request_ms.is_some()
                        || options.timeout_ms.is_some(),
                    ..Counted::default()
                },
            ),
        })
    }
}

impl RoutePolicy {
    /// Whether `other` has the same settings, so that it (its retry budget) can stand in for
    /// this one.
    pub fn same_settings(&self, other: &RoutePolicy) -> bool {
        self.request_ms == other.request_ms
            && self.backend_request_ms == other.backend_request_ms
            && self.retry == other.retry
            && self.budget_percent == other.budget_percent
    }
}

/// Why a request is answered without going upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 429: over the rate limit; retry after this many seconds.
    RateLimited {
        /// Value of the `Retry-After` header.
        retry_after_secs: u64,
    },
    /// 503: the circuit breaker is open.
    CircuitOpen,
}

impl Rejection {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::RateLimited { .. } => 429,
            Rejection::CircuitOpen => 503,
        }
    }
}

/// Per-request resilience state; lives in the proxy's request context.
#[derive(Debug, Default)]
pub struct RequestState {
    service: Option<Arc<ServiceState>>,
    route: Option<Arc<RoutePolicy>>,
    /// A response of a retried code was turned into an error to retry
    /// ([`RequestState::retry_status`]); `error_while_proxy` keeps that decision.
    status_retry: bool,
    start_ns: u64,
    deadline_ns: Option<u64>,
    admission: Option<Admission>,
    /// Upstream attempts started (1 for the first).
    attempts: u32,
    timed_out: bool,
    upstream_failed: bool,
    finished: bool,
}

/// The HTTP methods retried even after bytes were sent upstream.
pub fn is_idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ]
    .contains(method)
}

impl RequestState {
    /// Starts tracking a request to a service (whose state may be `None`: nothing to enforce
    /// but the upstream scheme).
    pub fn start(service: Option<Arc<ServiceState>>) -> Self {
        Self::start_routed(service, None)
    }

    /// Same, for a request a route entry with this policy matched.
    pub fn start_routed(
        service: Option<Arc<ServiceState>>,
        route: Option<Arc<RoutePolicy>>,
    ) -> Self {
        let start_ns = clock::now_ns();
        let timeout_ms = match route.as_ref().and_then(|r| r.request_ms) {
            Some(ms) => Some(ms),
            None => service.as_ref().and_then(|s| s.options.timeout_ms),
        };
        let deadline_ns =
            timeout_ms.map(|ms| start_ns.saturating_add(ms.saturating_mul(1_000_000)));
        RequestState {
            service,
            route,
            start_ns,
            deadline_ns,
            ..RequestState::default()
        }
    }

    /// The route entry's retry, when it has one (it replaces the service's).
    fn route_retry(&self) -> Option<(&RouteRetry, &RoutePolicy)> {
        let r = self.route.as_deref()?;
        Some((r.retry.as_ref()?, r))
    }

    /// Whether a retry policy (the route's or the service's) decides retries.
    fn has_retry_policy(&self) -> bool {
        self.route_retry().is_some()
            || self
                .service
                .as_ref()
                .is_some_and(|s| s.options.retry.is_some())
    }

    /// Rate limit, then circuit breaker: `Err` when the request must be answered at once.
    pub fn admit(&mut self) -> Result<(), Rejection> {
        self.record_route_request();
        let Some(s) = self.service.clone() else {
            return Ok(());
        };
        let now = clock::now_ns();
        if let Some(bucket) = &s.rate_limit {
            if let Err(wait) = bucket.try_acquire(now) {
                inc(&s.metrics.ratelimited);
                return Err(Rejection::RateLimited {
                    retry_after_secs: ratelimit::retry_after_secs(wait),
                });
            }
        }
        if let Some(b) = &s.breaker {
            match b.admit(now) {
                Admission::Reject => {
                    inc(&s.metrics.breaker_rejected);
                    return Err(Rejection::CircuitOpen);
                }
                a => self.admission = Some(a),
            }
        }
        if let Some(budget) = &s.budget {
            budget.record_request(now);
        }
        Ok(())
    }

    /// Counts the request in its route's retry budget (called once admitted).
    fn record_route_request(&self) {
        if let Some(budget) = self.route.as_ref().and_then(|r| r.budget.as_ref()) {
            budget.record_request(clock::now_ns());
        }
    }

    /// Upstream attempts started so far (1 once the first has begun), for the access log and
    /// the trace as well as the retry decisions.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Time left before the deadline, `None` without a timeout. Zero once expired.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline_ns
            .map(|d| Duration::from_nanos(d.saturating_sub(clock::now_ns())))
    }

    /// Counts an upstream attempt and sets the peer's timeouts from the time left (called from
    /// `upstream_peer`, once per attempt). Fails with 504 when the deadline has passed.
    pub fn start_attempt(&mut self, peer: &mut HttpPeer) -> pingora_error::Result<()> {
        self.attempts += 1;
        let per_attempt = self
            .route
            .as_ref()
            .and_then(|r| r.backend_request_ms)
            .map(Duration::from_millis);
        if let Some(left) = self.remaining() {
            if left.is_zero() {
                self.timed_out = true;
                return Err(Error::explain(
                    ErrorType::HTTPStatus(504),
                    "whole-request timeout expired before an upstream attempt",
                ));
            }
            crate::upstream::apply_deadline(peer, per_attempt.map_or(left, |a| a.min(left)));
        } else if let Some(a) = per_attempt {
            crate::upstream::apply_deadline(peer, a);
        }
        Ok(())
    }

    /// For a request whose route entry has a request timeout: an error once that deadline has
    /// passed while the response body is still arriving (called per piece of body). The
    /// Gateway API's request timeout covers the whole response; the per-read timeouts set at
    /// each attempt catch a stall, this catches a body that keeps trickling past the deadline.
    pub fn check_body_deadline(&mut self) -> pingora_error::Result<()> {
        let route_deadline = self.route.as_ref().is_some_and(|r| r.request_ms.is_some());
        if route_deadline && self.remaining().is_some_and(|d| d.is_zero()) {
            self.timed_out = true;
            return Err(Error::explain(
                ErrorType::ReadTimedout,
                "the route's request timeout expired while the response body was arriving",
            ));
        }
        Ok(())
    }

    /// The pause before the next attempt, when this is a retry of a route entry with a
    /// backoff (never past the deadline).
    pub fn backoff(&self) -> Option<Duration> {
        if self.attempts == 0 {
            return None;
        }
        let (retry, _) = self.route_retry()?;
        let pause = Duration::from_millis(retry.backoff_ms?);
        Some(self.remaining().map_or(pause, |left| pause.min(left)))
    }

    /// Whether the error being handled is a response of a retried code turned into a retry by
    /// [`RequestState::retry_status`].
    pub fn is_status_retry(&self) -> bool {
        self.status_retry
    }

    /// Whether a response of `status` is turned into a retry: its code is one the route
    /// entry retries, the request body can be sent again (`body_buffer_truncated` false), and
    /// attempts, budget and time are left. When true, the caller fails the attempt with a
    /// retryable error and `error_while_proxy` keeps the decision.
    pub fn retry_status(&mut self, status: u16, body_buffer_truncated: bool) -> bool {
        let retried = self
            .route_retry()
            .is_some_and(|(r, _)| r.codes.binary_search(&status).is_ok());
        if !retried || body_buffer_truncated {
            return false;
        }
        self.status_retry = self.may_retry();
        self.status_retry
    }

    fn may_retry(&mut self) -> bool {
        if let Some((retry, route)) = self.route_retry() {
            if self.attempts > retry.attempts || self.remaining().is_some_and(|d| d.is_zero()) {
                return false;
            }
            let budget_ok = route
                .budget
                .as_ref()
                .is_none_or(|b| b.try_retry(clock::now_ns()));
            if !budget_ok {
                inc(&route.metrics.budget_exhausted);
                return false;
            }
            inc(&route.metrics.retries);
            return true;
        }
        let Some(s) = self.service.clone() else {
            return false;
        };
        let Some(policy) = s.options.retry else {
            return false;
        };
        if self.attempts > policy.attempts {
            return false;
        }
        if self.remaining().is_some_and(|d| d.is_zero()) {
            return false;
        }
        let budget_ok = s
            .budget
            .as_ref()
            .is_none_or(|b| b.try_retry(clock::now_ns()));
        if !budget_ok {
            inc(&s.metrics.budget_exhausted);
            return false;
        }
        inc(&s.metrics.retries);
        true
    }

    fn note_timeout(&mut self, e: &Error) {
        // A timer set from the deadline may fire a hair before it (timer wheel granularity).
        let remaining = self.remaining();
        let deadline_passed = remaining.is_some_and(|d| d.is_zero());
        let near_deadline = remaining.is_some_and(|d| d < Duration::from_millis(20));
        if self.deadline_ns.is_some()
            && (deadline_passed
                || near_deadline
                    && matches!(
                        e.etype(),
                        ErrorType::ConnectTimedout
                            | ErrorType::ReadTimedout
                            | ErrorType::WriteTimedout
                            | ErrorType::TLSHandshakeTimedout
                    ))
        {
            self.timed_out = true;
        }
    }

    /// `fail_to_connect`: nothing was sent, so a retry is always safe. With a retry policy it
    /// happens when the service has attempts and budget left, and time remains. Without one,
    /// a connect failure is still retried on another endpoint, up to
    /// [`DEFAULT_CONNECT_ATTEMPTS`] attempts in all and at most once per endpoint of the
    /// service (`endpoints`): a refused connect never reached the application.
    pub fn on_connect_failure(&mut self, e: &mut Error, endpoints: usize) {
        self.upstream_failed = true;
        self.note_timeout(e);
        if self.has_retry_policy() {
            let retry = !self.timed_out && self.may_retry();
            e.set_retry(retry);
        } else {
            let left = (self.attempts as usize) < DEFAULT_CONNECT_ATTEMPTS.min(endpoints);
            e.set_retry(left && !self.timed_out);
        }
    }

    /// `error_while_proxy`: the request may have reached the upstream. Only idempotent
    /// requests whose body is still buffered are retried. Without a retry policy Pingora's own
    /// rule stays (retry once on a reused, stale keep-alive connection).
    pub fn on_error_while_proxy(
        &mut self,
        e: &mut Error,
        method: &http::Method,
        body_buffer_truncated: bool,
        client_reused: bool,
    ) {
        if std::mem::take(&mut self.status_retry) {
            // A response of a retried code: decided (and counted) by `retry_status`.
            e.set_retry(true);
            return;
        }
        self.upstream_failed = true;
        self.note_timeout(e);
        let has_policy = self.has_retry_policy();
        if !is_idempotent(method) || body_buffer_truncated || self.timed_out {
            e.set_retry(false);
        } else if has_policy {
            let retry = self.may_retry();
            e.set_retry(retry);
        } else {
            e.retry.decide_reuse(client_reused);
        }
    }

    /// The status to answer a failed request with, when resilience decides it: 504 once the
    /// whole-request deadline is the cause.
    pub fn error_status(&mut self, e: &Error) -> Option<u16> {
        self.note_timeout(e);
        // A route entry's backend-request timeout is a gateway timeout too (Gateway API).
        let attempt_timed_out = self
            .route
            .as_ref()
            .is_some_and(|r| r.backend_request_ms.is_some())
            && matches!(
                e.etype(),
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            );
        if self.timed_out || attempt_timed_out {
            if let Some(r) = &self.route {
                inc(&r.metrics.timeouts);
            } else if let Some(s) = &self.service {
                inc(&s.metrics.timeouts);
            }
            self.timed_out = true;
            return Some(504);
        }
        None
    }

    /// Records how the request ended (from `logging`): feeds the circuit breaker. `status` is
    /// what the client got (0 if nothing was sent).
    pub fn finish(&mut self, status: u16, error: Option<&Error>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let (Some(s), Some(admission)) = (&self.service, self.admission) else {
            return;
        };
        let Some(b) = &s.breaker else { return };
        let now = clock::now_ns();
        let network_error = self.upstream_failed
            && error.is_some_and(|e| {
                *e.esource() == pingora_error::ErrorSource::Upstream
                    || matches!(e.etype(), ErrorType::HTTPStatus(504))
            });
        let status = match status {
            0 if network_error => 502,
            s => s,
        };
        b.record(
            now,
            admission,
            Outcome {
                status,
                network_error,
                latency_us: now.saturating_sub(self.start_ns) / 1000,
            },
        );
    }
}

#[cfg(test)]
mod tests;

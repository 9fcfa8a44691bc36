//! Validated per-service middleware options, and their conversion from the wire form.

use crate::expr::{self, CircuitBreakerExpr};
use crate::table::{invalid, Result};
use crate::wire::{OptionsSpec, TrafficType};

/// How long a tripped circuit breaker stays open before probing, by default, in milliseconds.
pub const DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS: u64 = 10_000;

/// Default share of the request rate that retries may add, in percent.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;

/// How the proxy talks to a service's endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// HTTP/1.1 in clear text.
    #[default]
    Http,
    /// HTTP/1.1 or HTTP/2 over TLS.
    Https,
    /// HTTP/2 in clear text (prior knowledge), as gRPC servers expect.
    H2c,
}

impl Scheme {
    /// Parses `http`, `https` or `h2c`.
    pub fn parse(s: &str) -> Option<Scheme> {
        match s {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            "h2c" => Some(Scheme::H2c),
            _ => None,
        }
    }

    /// The name used in annotations and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::H2c => "h2c",
        }
    }
}

/// Retry settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    /// Extra attempts after the first (≥ 1).
    pub attempts: u32,
    /// Share of the request rate retries may add, in percent (1 to 100).
    pub budget_percent: u32,
}

/// Token-bucket settings (both > 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub average: u32,
    /// Bucket size.
    pub burst: u32,
}

/// A circuit breaker: its parsed trip expression and how long it stays open.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitBreaker {
    /// The trip condition.
    pub expr: CircuitBreakerExpr,
    /// How long requests fail fast after a trip before probes are let through, in
    /// milliseconds (default [`DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS`]).
    pub recovery_ms: u64,
}

/// TLS settings for `https` upstreams.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsOptions {
    /// Name verified against the certificate and sent as SNI; defaults to
    /// `<name>.<namespace>.svc.cluster.local`.
    pub server_name: Option<String>,
    /// Skip certificate verification (only when the user asked for it).
    pub insecure_skip_verify: bool,
}

/// Validated middleware options of one service port. All off by default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceOptions {
    /// Retries on another endpoint.
    pub retry: Option<RetryPolicy>,
    /// Whole-request deadline in milliseconds.
    pub timeout_ms: Option<u64>,
    /// Token bucket per service per proxy.
    pub rate_limit: Option<RateLimit>,
    /// Circuit breaker.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Upstream protocol.
    pub scheme: Scheme,
    /// TLS settings, used when `scheme` is `https`.
    pub tls: TlsOptions,
}

impl ServiceOptions {
    /// Validates the wire options of the service port `id` (`namespace/name:port`) carrying
    /// `tt` traffic.
    pub(crate) fn from_spec(id: &str, tt: TrafficType, o: &OptionsSpec) -> Result<ServiceOptions> {
        let http_only = |field: &str, set: bool| -> Result<()> {
            if set && tt != TrafficType::Http {
                return Err(invalid(
                    id,
                    format!("options.{field}"),
                    "set",
                    format!("only http services support it, this one is {tt}"),
                ));
            }
            Ok(())
        };
        http_only("retryAttempts", o.retry_attempts.is_some())?;
        http_only("timeoutMs", o.timeout_ms.is_some())?;
        http_only("rateLimit", o.rate_limit.is_some())?;
        http_only("circuitBreaker", o.circuit_breaker.is_some())?;
        http_only("scheme", o.scheme.as_deref().is_some_and(|s| s != "http"))?;

        let retry = match o.retry_attempts {
            None => None,
            Some(0) => {
                return Err(invalid(
                    id,
                    "options.retryAttempts",
                    0,
                    "expected an integer ≥ 1",
                ))
            }
            Some(attempts) => {
                let budget_percent = o
                    .retry_budget_percent
                    .unwrap_or(DEFAULT_RETRY_BUDGET_PERCENT);
                if !(1..=100).contains(&budget_percent) {
                    return Err(invalid(
                        id,
                        "options.retryBudgetPercent",
                        budget_percent,
                        "expected a percentage from 1 to 100",
                    ));
                }
                Some(RetryPolicy {
                    attempts,
                    budget_percent,
                })
            }
        };
        if o.timeout_ms == Some(0) {
            return Err(invalid(
                id,
                "options.timeoutMs",
                0,
                "expected a duration above zero",
            ));
        }
        let rate_limit = match o.rate_limit {
            None => None,
            Some(rl) if rl.average == 0 => {
                return Err(invalid(
                    id,
                    "options.rateLimit.average",
                    0,
                    "expected an integer > 0",
                ))
            }
            Some(rl) if rl.burst == 0 => {
                return Err(invalid(
                    id,
                    "options.rateLimit.burst",
                    0,
                    "expected an integer > 0",
                ))
            }
            Some(rl) => Some(RateLimit {
                average: rl.average,
                burst: rl.burst,
            }),
        };
        if o.circuit_breaker_recovery_ms == Some(0) {
            return Err(invalid(
                id,
                "options.circuitBreakerRecoveryMs",
                0,
                "expected a duration above zero",
            ));
        }
        if o.circuit_breaker_recovery_ms.is_some() && o.circuit_breaker.is_none() {
            return Err(invalid(
                id,
                "options.circuitBreakerRecoveryMs",
                o.circuit_breaker_recovery_ms.unwrap_or_default(),
                "needs options.circuitBreaker",
            ));
        }
        let circuit_breaker = match &o.circuit_breaker {
            None => None,
            Some(src) => Some(CircuitBreaker {
                expr: expr::parse(src)
                    .map_err(|e| invalid(id, "options.circuitBreaker", src, e.to_string()))?,
                recovery_ms: o
                    .circuit_breaker_recovery_ms
                    .unwrap_or(DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS),
            }),
        };
        let scheme = match o.scheme.as_deref() {
            None => Scheme::Http,
            Some(s) => Scheme::parse(s)
                .ok_or_else(|| invalid(id, "options.scheme", s, "expected http, https or h2c"))?,
        };
        if scheme != Scheme::Https && (o.tls_server_name.is_some() || o.tls_insecure_skip_verify) {
            return Err(invalid(
                id,
                "options.tlsServerName",
                o.tls_server_name.as_deref().unwrap_or(""),
                "TLS settings need scheme https",
            ));
        }
        Ok(ServiceOptions {
            retry,
            timeout_ms: o.timeout_ms,
            rate_limit,
            circuit_breaker,
            scheme,
            tls: TlsOptions {
                server_name: o.tls_server_name.clone(),
                insecure_skip_verify: o.tls_insecure_skip_verify,
            },
        })
    }
}

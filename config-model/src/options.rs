//! Validated per-service middleware options.

use crate::expr::CircuitBreakerExpr;

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

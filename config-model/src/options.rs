//! Per-service middleware options and their rules: one constructor per rule, returning an
//! [`OptionError`], called by every reader (service annotations in [`crate::annotations`], the
//! table's JSON form in [`crate::table`]) so that the forms agree by construction.
//!
//! Each reader turns its own syntax into an [`OptionsInput`] (annotations parse text, JSON is
//! typed already) and [`ServiceOptions::build`] applies the rules: bounds, the options that need
//! another (`retry-budget` needs `retry-attempts`), TLS settings that need `scheme: https`, and
//! every option being HTTP-only.

use std::fmt;
use std::sync::Arc;

use crate::expr::{self, CircuitBreakerExpr};
use crate::table::{invalid, Result};
use crate::wire::{OptionsSpec, RateLimitSpec, SchemeSpec, TrafficType};

mod error;

pub use error::{Form, OptionError, OptionField, OptionProblem};

/// How long a tripped circuit breaker stays open before probing, by default, in milliseconds.
pub const DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS: u64 = 10_000;

/// Default share of the request rate that retries may add, in percent.
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;

/// Most retry attempts accepted. Pingora ends a request after 16 attempts in all, so more than
/// 15 act as 15 (docs/resilience.md); the bound is the one the annotation always had, which
/// every table a controller ever sent keeps to.
pub const MAX_RETRY_ATTEMPTS: u32 = 100;

/// Longest TLS server name accepted, in bytes (the longest DNS name).
pub const MAX_SERVER_NAME_LEN: usize = 253;

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
    /// Every scheme.
    pub const ALL: [Scheme; 3] = [Scheme::Http, Scheme::Https, Scheme::H2c];

    /// Parses `http`, `https` or `h2c` (lower case, as written in annotations and JSON).
    pub fn parse(s: &str) -> Option<Scheme> {
        Scheme::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// The name used in annotations and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::H2c => "h2c",
        }
    }

    /// The rule of the `scheme` option: a scheme this build knows.
    pub fn from_spec(spec: &SchemeSpec) -> Result<Scheme, OptionError> {
        match spec {
            SchemeSpec::Known(s) => Ok(*s),
            SchemeSpec::Unknown(other) => Err(OptionError::new(
                OptionField::Scheme,
                other,
                OptionProblem::UnknownScheme,
            )),
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Retry settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    /// Extra attempts after the first, 1 to [`MAX_RETRY_ATTEMPTS`].
    pub attempts: u32,
    /// Share of the request rate retries may add, in percent (1 to 100).
    pub budget_percent: u32,
}

impl RetryPolicy {
    /// A retry policy; the budget defaults to [`DEFAULT_RETRY_BUDGET_PERCENT`].
    pub fn new(attempts: u32, budget_percent: Option<u32>) -> Result<Self, OptionError> {
        Ok(RetryPolicy {
            attempts: Self::check_attempts(attempts)?,
            budget_percent: match budget_percent {
                None => DEFAULT_RETRY_BUDGET_PERCENT,
                Some(b) => Self::check_budget_percent(b)?,
            },
        })
    }

    /// The rule of `retry-attempts`: 1 to [`MAX_RETRY_ATTEMPTS`].
    pub fn check_attempts(n: u32) -> Result<u32, OptionError> {
        in_range(OptionField::RetryAttempts, n)
    }

    /// The rule of `retry-budget`: a percentage from 1 to 100.
    pub fn check_budget_percent(n: u32) -> Result<u32, OptionError> {
        in_range(OptionField::RetryBudget, n)
    }
}

/// The rule of `timeout`: a duration above zero, in milliseconds.
pub fn check_timeout_ms(ms: u64) -> Result<u64, OptionError> {
    positive_duration(OptionField::Timeout, ms)
}

/// Token-bucket settings (both > 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub average: u32,
    /// Bucket size.
    pub burst: u32,
}

impl RateLimit {
    /// A rate limit of `average` requests per second, `burst` at once.
    pub fn new(average: u32, burst: u32) -> Result<Self, OptionError> {
        Ok(RateLimit {
            average: Self::check_average(average)?,
            burst: Self::check_burst(burst)?,
        })
    }

    /// The rule of `ratelimit-average`: at least one request per second.
    pub fn check_average(n: u32) -> Result<u32, OptionError> {
        in_range(OptionField::RateLimitAverage, n)
    }

    /// The rule of `ratelimit-burst`: a bucket of at least one request.
    pub fn check_burst(n: u32) -> Result<u32, OptionError> {
        in_range(OptionField::RateLimitBurst, n)
    }
}

/// A circuit breaker: its parsed trip expression and how long it stays open.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitBreaker {
    /// The trip condition, parsed once when the options are built and shared from then on
    /// (the proxy's breaker state holds the same one).
    pub expr: Arc<CircuitBreakerExpr>,
    /// How long requests fail fast after a trip before probes are let through, in
    /// milliseconds (default [`DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS`]).
    pub recovery_ms: u64,
}

impl CircuitBreaker {
    /// A breaker tripping on `expression`, open for `recovery_ms` (default
    /// [`DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS`]).
    pub fn new(expression: &str, recovery_ms: Option<u64>) -> Result<Self, OptionError> {
        Ok(CircuitBreaker {
            expr: Self::parse_expression(expression)?,
            recovery_ms: match recovery_ms {
                None => DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS,
                Some(ms) => Self::check_recovery_ms(ms)?,
            },
        })
    }

    /// The rule of `circuit-breaker-expression`: an expression of the Traefik Mesh language
    /// ([`crate::expr`]).
    pub fn parse_expression(source: &str) -> Result<Arc<CircuitBreakerExpr>, OptionError> {
        expr::parse(source).map(Arc::new).map_err(|e| {
            OptionError::new(
                OptionField::CircuitBreaker,
                source,
                OptionProblem::Expression(e),
            )
        })
    }

    /// The rule of `circuit-breaker-recovery-period`: a duration above zero, in milliseconds.
    pub fn check_recovery_ms(ms: u64) -> Result<u64, OptionError> {
        positive_duration(OptionField::CircuitBreakerRecovery, ms)
    }
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

impl TlsOptions {
    /// TLS settings of a service talking `scheme` to its endpoints: any setting needs `https`.
    pub fn new(
        scheme: Scheme,
        server_name: Option<&str>,
        insecure_skip_verify: bool,
    ) -> Result<Self, OptionError> {
        let server_name = server_name.map(Self::check_server_name).transpose()?;
        if scheme != Scheme::Https {
            if let Some(name) = server_name {
                return Err(OptionError::new(
                    OptionField::TlsServerName,
                    name,
                    OptionProblem::NeedsHttps,
                ));
            }
            if insecure_skip_verify {
                return Err(OptionError::new(
                    OptionField::TlsInsecureSkipVerify,
                    true,
                    OptionProblem::NeedsHttps,
                ));
            }
        }
        Ok(TlsOptions {
            server_name,
            insecure_skip_verify,
        })
    }

    /// The rule of `tls-server-name`: a DNS name (letters, digits, `-` and `_` in labels of at
    /// most 63, at most [`MAX_SERVER_NAME_LEN`] in all, one trailing dot allowed) or an IP
    /// address: what the certificate is checked against and what is sent as SNI.
    pub fn check_server_name(name: &str) -> Result<String, OptionError> {
        let bad = |why| {
            Err(OptionError::new(
                OptionField::TlsServerName,
                name,
                OptionProblem::ServerName(why),
            ))
        };
        if name.is_empty() {
            return bad("expected a DNS name, it is empty");
        }
        if name.len() > MAX_SERVER_NAME_LEN {
            return bad("expected a DNS name, at most 253 bytes long");
        }
        if name.parse::<std::net::IpAddr>().is_ok() {
            return Ok(name.to_string());
        }
        let labels = name.strip_suffix('.').unwrap_or(name);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !labels.split('.').all(label_ok) {
            return bad(
                "expected a DNS name (labels of letters, digits, - and _, at most 63 each) \
                 or an IP address",
            );
        }
        Ok(name.to_string())
    }
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

/// One option as a reader found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Given<T> {
    /// Not set.
    #[default]
    Absent,
    /// Set, but its text did not parse; the reader has reported it. Options that need this
    /// one do not report it missing.
    Unreadable,
    /// Set to this value.
    Value(T),
}

impl<T> Given<T> {
    /// `Absent` for `None`.
    pub fn from_option(o: Option<T>) -> Self {
        o.map_or(Given::Absent, Given::Value)
    }

    fn is_absent(&self) -> bool {
        matches!(self, Given::Absent)
    }
}

/// The options of one service as a reader found them, before any rule is applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OptionsInput<'a> {
    /// `retry-attempts`.
    pub retry_attempts: Given<u32>,
    /// `retry-budget`, in percent.
    pub retry_budget_percent: Given<u32>,
    /// `timeout`, in milliseconds.
    pub timeout_ms: Given<u64>,
    /// `ratelimit-average`.
    pub rate_limit_average: Given<u32>,
    /// `ratelimit-burst`.
    pub rate_limit_burst: Given<u32>,
    /// `circuit-breaker-expression`, unparsed.
    pub circuit_breaker: Given<&'a str>,
    /// `circuit-breaker-recovery-period`, in milliseconds.
    pub circuit_breaker_recovery_ms: Given<u64>,
    /// `scheme`.
    pub scheme: Given<SchemeSpec>,
    /// `tls-server-name`.
    pub tls_server_name: Given<&'a str>,
    /// `tls-insecure-skip-verify`.
    pub tls_insecure_skip_verify: Given<bool>,
}

impl<'a> From<&'a OptionsSpec> for OptionsInput<'a> {
    fn from(o: &'a OptionsSpec) -> Self {
        let (average, burst) = match o.rate_limit {
            Some(rl) => (Given::Value(rl.average), Given::Value(rl.burst)),
            None => (Given::Absent, Given::Absent),
        };
        OptionsInput {
            retry_attempts: Given::from_option(o.retry_attempts),
            retry_budget_percent: Given::from_option(o.retry_budget_percent),
            timeout_ms: Given::from_option(o.timeout_ms),
            rate_limit_average: average,
            rate_limit_burst: burst,
            circuit_breaker: Given::from_option(o.circuit_breaker.as_deref()),
            circuit_breaker_recovery_ms: Given::from_option(o.circuit_breaker_recovery_ms),
            scheme: Given::from_option(o.scheme.clone()),
            tls_server_name: Given::from_option(o.tls_server_name.as_deref()),
            // JSON cannot tell `false` from unset, and both mean verify.
            tls_insecure_skip_verify: if o.tls_insecure_skip_verify {
                Given::Value(true)
            } else {
                Given::Absent
            },
        }
    }
}

impl OptionsInput<'_> {
    /// The options that are set, with their values as text.
    fn set_fields(&self) -> Vec<(OptionField, String)> {
        fn text<T: fmt::Display>(g: &Given<T>) -> Option<String> {
            match g {
                Given::Value(v) => Some(v.to_string()),
                _ => None,
            }
        }
        [
            (OptionField::RetryAttempts, text(&self.retry_attempts)),
            (OptionField::RetryBudget, text(&self.retry_budget_percent)),
            (OptionField::Timeout, text(&self.timeout_ms)),
            (
                OptionField::RateLimitAverage,
                text(&self.rate_limit_average),
            ),
            (OptionField::RateLimitBurst, text(&self.rate_limit_burst)),
            (OptionField::CircuitBreaker, text(&self.circuit_breaker)),
            (
                OptionField::CircuitBreakerRecovery,
                text(&self.circuit_breaker_recovery_ms),
            ),
            (OptionField::Scheme, text(&self.scheme)),
            (OptionField::TlsServerName, text(&self.tls_server_name)),
            (
                OptionField::TlsInsecureSkipVerify,
                text(&self.tls_insecure_skip_verify),
            ),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.map(|v| (f, v)))
        .collect()
    }
}

/// The rule that every option is an HTTP middleware: an option set on a `tcp` or `udp` service
/// is refused.
pub fn check_traffic_type(
    field: OptionField,
    value: impl fmt::Display,
    traffic_type: TrafficType,
) -> Result<(), OptionError> {
    if traffic_type == TrafficType::Http {
        Ok(())
    } else {
        Err(OptionError::new(
            field,
            value,
            OptionProblem::HttpOnly(traffic_type),
        ))
    }
}

/// An option after its own rule: not set, refused (or unreadable), or accepted.
enum Checked<T> {
    Absent,
    Refused,
    Ok(T),
}

impl<T> Checked<T> {
    fn ok(self) -> Option<T> {
        match self {
            Checked::Ok(v) => Some(v),
            _ => None,
        }
    }
}

fn check<T: Copy, U>(
    given: &Given<T>,
    rule: impl FnOnce(T) -> Result<U, OptionError>,
    errors: &mut Vec<OptionError>,
) -> Checked<U> {
    match *given {
        Given::Absent => Checked::Absent,
        Given::Unreadable => Checked::Refused,
        Given::Value(v) => match rule(v) {
            Ok(u) => Checked::Ok(u),
            Err(e) => {
                errors.push(e);
                Checked::Refused
            }
        },
    }
}

/// A dependent option: checked by its own rule only when what it needs is set (readable or
/// not); otherwise reported as having no effect.
fn check_dependent<T: Copy + fmt::Display, U>(
    field: OptionField,
    given: &Given<T>,
    needs: OptionField,
    needed_set: bool,
    rule: impl FnOnce(T) -> Result<U, OptionError>,
    errors: &mut Vec<OptionError>,
) -> Checked<U> {
    match given {
        Given::Value(v) if !needed_set => {
            errors.push(OptionError::new(field, v, OptionProblem::Needs(needs)));
            Checked::Refused
        }
        _ => check(given, rule, errors),
    }
}

impl ServiceOptions {
    /// Applies every option rule to what a reader found, for a service carrying `traffic_type`.
    /// Returns the options that passed and one error per option that did not: an option that
    /// fails its rule is left off, the others still apply. Annotations report every error;
    /// the table refuses a service with any.
    pub fn build(
        traffic_type: TrafficType,
        input: &OptionsInput<'_>,
    ) -> (ServiceOptions, Vec<OptionError>) {
        let mut errors = Vec::new();
        let mut out = ServiceOptions::default();
        if traffic_type != TrafficType::Http {
            for (field, value) in input.set_fields() {
                errors.extend(check_traffic_type(field, value, traffic_type).err());
            }
            return (out, errors);
        }

        let attempts = check(
            &input.retry_attempts,
            RetryPolicy::check_attempts,
            &mut errors,
        );
        let budget = check_dependent(
            OptionField::RetryBudget,
            &input.retry_budget_percent,
            OptionField::RetryAttempts,
            !input.retry_attempts.is_absent(),
            RetryPolicy::check_budget_percent,
            &mut errors,
        );
        if let Checked::Ok(attempts) = attempts {
            out.retry = Some(RetryPolicy {
                attempts,
                budget_percent: budget.ok().unwrap_or(DEFAULT_RETRY_BUDGET_PERCENT),
            });
        }

        out.timeout_ms = check(&input.timeout_ms, check_timeout_ms, &mut errors).ok();

        let average = check_dependent(
            OptionField::RateLimitAverage,
            &input.rate_limit_average,
            OptionField::RateLimitBurst,
            !input.rate_limit_burst.is_absent(),
            RateLimit::check_average,
            &mut errors,
        );
        let burst = check_dependent(
            OptionField::RateLimitBurst,
            &input.rate_limit_burst,
            OptionField::RateLimitAverage,
            !input.rate_limit_average.is_absent(),
            RateLimit::check_burst,
            &mut errors,
        );
        if let (Checked::Ok(average), Checked::Ok(burst)) = (average, burst) {
            out.rate_limit = Some(RateLimit { average, burst });
        }

        let expr = check(
            &input.circuit_breaker,
            CircuitBreaker::parse_expression,
            &mut errors,
        );
        let recovery = check_dependent(
            OptionField::CircuitBreakerRecovery,
            &input.circuit_breaker_recovery_ms,
            OptionField::CircuitBreaker,
            !input.circuit_breaker.is_absent(),
            CircuitBreaker::check_recovery_ms,
            &mut errors,
        );
        if let Checked::Ok(expr) = expr {
            out.circuit_breaker = Some(CircuitBreaker {
                expr,
                recovery_ms: recovery.ok().unwrap_or(DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS),
            });
        }

        let scheme = match &input.scheme {
            Given::Absent => Checked::Absent,
            Given::Unreadable => Checked::Refused,
            Given::Value(spec) => match Scheme::from_spec(spec) {
                Ok(s) => Checked::Ok(s),
                Err(e) => {
                    errors.push(e);
                    Checked::Refused
                }
            },
        };
        // TLS settings need https; with a scheme that was refused, only their own rules apply.
        let https = match scheme {
            Checked::Ok(s) => {
                out.scheme = s;
                Some(s == Scheme::Https)
            }
            Checked::Absent => Some(false),
            Checked::Refused => None,
        };
        let needs_https = |field, value: &dyn fmt::Display, errors: &mut Vec<OptionError>| {
            errors.push(OptionError::new(field, value, OptionProblem::NeedsHttps));
        };
        let server_name = check(
            &input.tls_server_name,
            TlsOptions::check_server_name,
            &mut errors,
        );
        if let Checked::Ok(name) = server_name {
            match https {
                Some(true) => out.tls.server_name = Some(name),
                Some(false) => needs_https(OptionField::TlsServerName, &name, &mut errors),
                None => {}
            }
        }
        if input.tls_insecure_skip_verify == Given::Value(true) {
            match https {
                Some(true) => out.tls.insecure_skip_verify = true,
                Some(false) => needs_https(OptionField::TlsInsecureSkipVerify, &true, &mut errors),
                None => {}
            }
        }
        (out, errors)
    }

    /// The options of the table's JSON form, all rules applied; the first error if any.
    pub fn try_from_spec(
        traffic_type: TrafficType,
        spec: &OptionsSpec,
    ) -> Result<ServiceOptions, OptionError> {
        let (options, errors) = ServiceOptions::build(traffic_type, &OptionsInput::from(spec));
        match errors.into_iter().next() {
            None => Ok(options),
            Some(e) => Err(e),
        }
    }

    /// [`ServiceOptions::try_from_spec`] for the service port `id` (`namespace/name:port`),
    /// as the table reports it.
    pub(crate) fn from_spec(id: &str, tt: TrafficType, o: &OptionsSpec) -> Result<ServiceOptions> {
        ServiceOptions::try_from_spec(tt, o)
            .map_err(|e| invalid(id, e.field.wire(), &e.value, e.reason(Form::Wire)))
    }
}

/// The JSON form of validated options, in one canonical spelling: defaults are left out, so
/// that the same options always travel as the same JSON.
impl From<&ServiceOptions> for OptionsSpec {
    fn from(o: &ServiceOptions) -> Self {
        OptionsSpec {
            retry_attempts: o.retry.map(|r| r.attempts),
            retry_budget_percent: o
                .retry
                .map(|r| r.budget_percent)
                .filter(|b| *b != DEFAULT_RETRY_BUDGET_PERCENT),
            timeout_ms: o.timeout_ms,
            rate_limit: o.rate_limit.map(|r| RateLimitSpec {
                average: r.average,
                burst: r.burst,
            }),
            circuit_breaker: o.circuit_breaker.as_ref().map(|c| c.expr.source.clone()),
            circuit_breaker_recovery_ms: o
                .circuit_breaker
                .as_ref()
                .map(|c| c.recovery_ms)
                .filter(|ms| *ms != DEFAULT_CIRCUIT_BREAKER_RECOVERY_MS),
            scheme: (o.scheme != Scheme::Http).then_some(SchemeSpec::Known(o.scheme)),
            tls_server_name: o.tls.server_name.clone(),
            tls_insecure_skip_verify: o.tls.insecure_skip_verify,
        }
    }
}

impl OptionField {
    /// The bounds of an integer option, both included; `None` for the others.
    pub fn bounds(self) -> Option<(u32, u32)> {
        match self {
            OptionField::RetryAttempts => Some((1, MAX_RETRY_ATTEMPTS)),
            OptionField::RetryBudget => Some((1, 100)),
            OptionField::RateLimitAverage | OptionField::RateLimitBurst => Some((1, u32::MAX)),
            _ => None,
        }
    }
}

fn in_range(field: OptionField, n: u32) -> Result<u32, OptionError> {
    let (min, max) = field.bounds().unwrap_or((0, u32::MAX));
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(OptionError::new(
            field,
            n,
            OptionProblem::OutOfRange {
                min: min.into(),
                max: max.into(),
            },
        ))
    }
}

fn positive_duration(field: OptionField, ms: u64) -> Result<u64, OptionError> {
    if ms == 0 {
        Err(OptionError::new(field, ms, OptionProblem::ZeroDuration))
    } else {
        Ok(ms)
    }
}

#[cfg(test)]
mod tests;

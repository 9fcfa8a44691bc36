//! What is wrong with an option value: which option, the value, and a problem kind that the
//! annotation and the table (JSON) forms share.

use std::fmt;

use crate::annotations;
use crate::cut::cut;
use crate::expr::ExprError;
use crate::wire::TrafficType;

/// One per-service option, known by its annotation name and by its field of the table's JSON
/// form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OptionField {
    /// Extra attempts after the first.
    RetryAttempts,
    /// Share of the request rate retries may add.
    RetryBudget,
    /// Whole-request deadline.
    Timeout,
    /// Sustained requests per second of the rate limit.
    RateLimitAverage,
    /// Bucket size of the rate limit.
    RateLimitBurst,
    /// Circuit-breaker expression.
    CircuitBreaker,
    /// How long a tripped breaker stays open.
    CircuitBreakerRecovery,
    /// Upstream protocol.
    Scheme,
    /// Name verified for `https` upstreams.
    TlsServerName,
    /// Skip verification of `https` upstreams.
    TlsInsecureSkipVerify,
}

impl OptionField {
    /// Every option, in the order readers check them.
    pub const ALL: [OptionField; 10] = [
        OptionField::RetryAttempts,
        OptionField::RetryBudget,
        OptionField::Timeout,
        OptionField::RateLimitAverage,
        OptionField::RateLimitBurst,
        OptionField::CircuitBreaker,
        OptionField::CircuitBreakerRecovery,
        OptionField::Scheme,
        OptionField::TlsServerName,
        OptionField::TlsInsecureSkipVerify,
    ];

    /// The annotation name, after its prefix (`retry-attempts` of `maille.io/retry-attempts`).
    pub fn annotation(self) -> &'static str {
        match self {
            OptionField::RetryAttempts => annotations::RETRY_ATTEMPTS,
            OptionField::RetryBudget => annotations::RETRY_BUDGET,
            OptionField::Timeout => annotations::TIMEOUT,
            OptionField::RateLimitAverage => annotations::RATELIMIT_AVERAGE,
            OptionField::RateLimitBurst => annotations::RATELIMIT_BURST,
            OptionField::CircuitBreaker => annotations::CIRCUIT_BREAKER,
            OptionField::CircuitBreakerRecovery => annotations::CIRCUIT_BREAKER_RECOVERY,
            OptionField::Scheme => annotations::SCHEME,
            OptionField::TlsServerName => annotations::TLS_SERVER_NAME,
            OptionField::TlsInsecureSkipVerify => annotations::TLS_INSECURE_SKIP_VERIFY,
        }
    }

    /// The field path in a service of the table's JSON form (`options.retryAttempts`).
    pub fn wire(self) -> &'static str {
        match self {
            OptionField::RetryAttempts => "options.retryAttempts",
            OptionField::RetryBudget => "options.retryBudgetPercent",
            OptionField::Timeout => "options.timeoutMs",
            OptionField::RateLimitAverage => "options.rateLimit.average",
            OptionField::RateLimitBurst => "options.rateLimit.burst",
            OptionField::CircuitBreaker => "options.circuitBreaker",
            OptionField::CircuitBreakerRecovery => "options.circuitBreakerRecoveryMs",
            OptionField::Scheme => "options.scheme",
            OptionField::TlsServerName => "options.tlsServerName",
            OptionField::TlsInsecureSkipVerify => "options.tlsInsecureSkipVerify",
        }
    }

    /// The name of the option in `form`.
    pub fn name(self, form: Form) -> &'static str {
        match form {
            Form::Annotation => self.annotation(),
            Form::Wire => self.wire(),
        }
    }
}

/// Which reader an error is worded for: options name each other differently in each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Service annotations (`retry-attempts`, durations such as `5s`).
    Annotation,
    /// The table's JSON form (`options.retryAttempts`, durations in milliseconds).
    Wire,
}

/// What is wrong with an option value. The annotation and the table forms of the same value
/// give the same problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionProblem {
    /// A number outside `min..=max`.
    OutOfRange {
        /// Smallest accepted.
        min: u64,
        /// Largest accepted.
        max: u64,
    },
    /// A duration of zero where a positive one is needed.
    ZeroDuration,
    /// Text that is not of the option's type (annotations only: JSON types its values); what
    /// was expected.
    Syntax(String),
    /// A circuit-breaker expression that does not parse.
    Expression(ExprError),
    /// Not `http`, `https` or `h2c`.
    UnknownScheme,
    /// Not a DNS name or an IP address; why.
    ServerName(&'static str),
    /// Set on a service that does not carry HTTP: every option is an HTTP middleware.
    HttpOnly(TrafficType),
    /// Has no effect without this other option, which is not set.
    Needs(OptionField),
    /// A TLS setting on a service whose scheme is not `https`.
    NeedsHttps,
}

/// A refused option value: the option, the value (cut, [`crate::cut::cut`]) and the problem.
/// The reader adds the object it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError {
    /// The option.
    pub field: OptionField,
    /// The value as given, cut to a bounded length.
    pub value: String,
    /// What is wrong with it.
    pub problem: OptionProblem,
}

impl OptionError {
    /// An error about `value` of `field`, cut.
    pub fn new(field: OptionField, value: impl fmt::Display, problem: OptionProblem) -> Self {
        let value = value.to_string();
        let value = match cut(&value) {
            std::borrow::Cow::Borrowed(_) => value,
            std::borrow::Cow::Owned(c) => c,
        };
        OptionError {
            field,
            value,
            problem,
        }
    }

    /// What was expected, worded for `form`.
    pub fn reason(&self, form: Form) -> String {
        let f = self.field;
        match &self.problem {
            OptionProblem::OutOfRange { min, max } if f == OptionField::RetryBudget => {
                format!("expected a percentage from {min} to {max}, e.g. 20")
            }
            OptionProblem::OutOfRange { min, max } => {
                format!("expected an integer from {min} to {max}")
            }
            OptionProblem::ZeroDuration => match (form, f) {
                (Form::Wire, _) => "expected a duration above zero, in milliseconds".into(),
                (Form::Annotation, OptionField::Timeout) => {
                    "expected a duration above zero, e.g. 5s or 250ms".into()
                }
                (Form::Annotation, _) => "expected a duration above zero, e.g. 10s".into(),
            },
            OptionProblem::Syntax(expected) => expected.clone(),
            OptionProblem::Expression(e) => e.to_string(),
            OptionProblem::UnknownScheme => "expected http, https or h2c".into(),
            OptionProblem::ServerName(why) => (*why).into(),
            OptionProblem::HttpOnly(tt) => {
                format!("only http services support it, this one is {tt}")
            }
            OptionProblem::Needs(other) => {
                format!("has no effect without {}", other.name(form))
            }
            OptionProblem::NeedsHttps => match form {
                Form::Annotation => "needs scheme https".into(),
                Form::Wire => "needs options.scheme https".into(),
            },
        }
    }
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "field {}: invalid value {:?}: {}",
            self.field.wire(),
            self.value,
            self.reason(Form::Wire)
        )
    }
}

impl std::error::Error for OptionError {}

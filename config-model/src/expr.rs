//! Circuit-breaker expressions in the Traefik Mesh language
//! (`NetworkErrorRatio() > 0.5 || LatencyAtQuantileMS(50.0) > 100`).

use std::fmt;

/// A parsed circuit-breaker expression.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitBreakerExpr {
    /// The expression as the user wrote it.
    pub source: String,
}

/// Why an expression did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError(pub String);

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ExprError {}

/// Parses an expression. (The full grammar is filled in by the resilience work.)
pub fn parse(source: &str) -> Result<CircuitBreakerExpr, ExprError> {
    if source.trim().is_empty() {
        return Err(ExprError("empty expression".into()));
    }
    Ok(CircuitBreakerExpr {
        source: source.to_string(),
    })
}

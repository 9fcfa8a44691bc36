//! Circuit-breaker expressions in the Traefik Mesh language
//! (`NetworkErrorRatio() > 0.5 || LatencyAtQuantileMS(50.0) > 100`): parsing into an AST and
//! evaluation against a window of request outcomes.
//!
//! Grammar (whitespace is free between tokens):
//!
//! ```text
//! expr       := and ( "||" and )*
//! and        := primary ( "&&" primary )*
//! primary    := "(" expr ")" | comparison
//! comparison := operand ( ">" | "<" | ">=" | "<=" | "==" | "!=" ) operand
//! operand    := number | metric
//! metric     := "NetworkErrorRatio" "(" ")"
//!             | "ResponseCodeRatio" "(" int "," int "," int "," int ")"
//!             | "LatencyAtQuantileMS" "(" number ")"
//! ```
//!
//! A comparison needs at least one metric; `&&` binds tighter than `||`.

use std::fmt;

/// Longest expression accepted, in bytes.
pub const MAX_SOURCE_LEN: usize = 4096;
/// Deepest nesting of parentheses accepted.
pub const MAX_DEPTH: usize = 32;
/// Highest HTTP status code a `ResponseCodeRatio` bound may name (bounds are exclusive above).
pub const MAX_STATUS_BOUND: u16 = 1000;

/// A parsed circuit-breaker expression.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitBreakerExpr {
    /// The expression as the user wrote it.
    pub source: String,
    /// Its syntax tree.
    pub ast: Expr,
}

/// A boolean circuit-breaker condition.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    /// Both sides hold.
    And(Box<Expr>, Box<Expr>),
    /// Either side holds.
    Or(Box<Expr>, Box<Expr>),
    /// A comparison of two operands (at least one of them a metric).
    Compare {
        /// Left operand.
        left: Operand,
        /// Operator.
        op: CmpOp,
        /// Right operand.
        right: Operand,
    },
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A number literal.
    Number(f64),
    /// A value measured over the window.
    Metric(Metric),
}

/// A value measured over the breaker's sliding window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Metric {
    /// `NetworkErrorRatio()`: requests that got no response from upstream (connect failure,
    /// reset, timeout) over all requests; 0 when there were none.
    NetworkErrorRatio,
    /// `ResponseCodeRatio(from, to, dividendFrom, dividendTo)`: responses with a status in
    /// `[from, to)` over responses with a status in `[dividendFrom, dividendTo)`; 0 when the
    /// dividend range saw none.
    ResponseCodeRatio {
        /// Lower bound of the counted codes (inclusive).
        from: u16,
        /// Upper bound of the counted codes (exclusive).
        to: u16,
        /// Lower bound of the codes counted as the whole (inclusive).
        dividend_from: u16,
        /// Upper bound of the codes counted as the whole (exclusive).
        dividend_to: u16,
    },
    /// `LatencyAtQuantileMS(q)`: the q-th percentile (0 < q ≤ 100) of request latency in
    /// milliseconds; 0 when there were no requests.
    LatencyAtQuantileMs(f64),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `>`
    Gt,
    /// `<`
    Lt,
    /// `>=`
    Ge,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl CmpOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Lt => "<",
            CmpOp::Ge => ">=",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }

    fn apply(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Gt => a > b,
            CmpOp::Lt => a < b,
            CmpOp::Ge => a >= b,
            CmpOp::Le => a <= b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }
}

/// The measurements an expression is evaluated against (a snapshot of the breaker's window).
pub trait WindowStats {
    /// Share of requests that got no response from upstream, 0 to 1.
    fn network_error_ratio(&self) -> f64;
    /// Count of responses whose status is in `[from, to)`.
    fn status_count(&self, from: u16, to: u16) -> u64;
    /// Latency at this percentile (0 < q ≤ 100), in milliseconds.
    fn latency_at_quantile_ms(&self, q: f64) -> f64;
}

impl Metric {
    /// The metric's value over a window.
    pub fn value(&self, stats: &impl WindowStats) -> f64 {
        match *self {
            Metric::NetworkErrorRatio => stats.network_error_ratio(),
            Metric::ResponseCodeRatio {
                from,
                to,
                dividend_from,
                dividend_to,
            } => {
                let whole = stats.status_count(dividend_from, dividend_to);
                if whole == 0 {
                    0.0
                } else {
                    stats.status_count(from, to) as f64 / whole as f64
                }
            }
            Metric::LatencyAtQuantileMs(q) => stats.latency_at_quantile_ms(q),
        }
    }
}

impl Operand {
    fn value(&self, stats: &impl WindowStats) -> f64 {
        match self {
            Operand::Number(n) => *n,
            Operand::Metric(m) => m.value(stats),
        }
    }
}

impl Expr {
    /// Whether the condition holds over this window.
    pub fn evaluate(&self, stats: &impl WindowStats) -> bool {
        match self {
            Expr::And(a, b) => a.evaluate(stats) && b.evaluate(stats),
            Expr::Or(a, b) => a.evaluate(stats) || b.evaluate(stats),
            Expr::Compare { left, op, right } => op.apply(left.value(stats), right.value(stats)),
        }
    }

    /// Calls `f` on every metric the expression reads.
    pub fn for_each_metric(&self, f: &mut impl FnMut(&Metric)) {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.for_each_metric(f);
                b.for_each_metric(f);
            }
            Expr::Compare { left, right, .. } => {
                for side in [left, right] {
                    if let Operand::Metric(m) = side {
                        f(m);
                    }
                }
            }
        }
    }
}

impl CircuitBreakerExpr {
    /// Whether the breaker should trip over this window.
    pub fn evaluate(&self, stats: &impl WindowStats) -> bool {
        self.ast.evaluate(stats)
    }

    /// Whether any `LatencyAtQuantileMS` is used (so latencies must be recorded).
    pub fn uses_latency(&self) -> bool {
        let mut found = false;
        self.ast.for_each_metric(&mut |m| {
            found |= matches!(m, Metric::LatencyAtQuantileMs(_));
        });
        found
    }

    /// The sorted, distinct bounds of every `ResponseCodeRatio` range: counting responses per
    /// segment between consecutive bounds answers every range of the expression exactly.
    pub fn status_bounds(&self) -> Vec<u16> {
        let mut bounds = Vec::new();
        self.ast.for_each_metric(&mut |m| {
            if let Metric::ResponseCodeRatio {
                from,
                to,
                dividend_from,
                dividend_to,
            } = *m
            {
                bounds.extend([from, to, dividend_from, dividend_to]);
            }
        });
        bounds.sort_unstable();
        bounds.dedup();
        bounds
    }
}

impl fmt::Display for CircuitBreakerExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Why an expression did not parse: where (a 1-based column, counted in characters) and what
/// was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// 1-based column of the offending character (one past the end for a truncated input).
    pub column: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for ExprError {}

/// Parses an expression.
pub fn parse(source: &str) -> Result<CircuitBreakerExpr, ExprError> {
    if source.len() > MAX_SOURCE_LEN {
        return Err(ExprError {
            column: 1,
            message: format!(
                "expression is {} bytes long, at most {MAX_SOURCE_LEN} are accepted",
                source.len()
            ),
        });
    }
    let tokens = lex(source)?;
    let mut p = Parser {
        tokens: &tokens,
        pos: 0,
        end_column: source.chars().count() + 1,
    };
    if p.peek().is_none() {
        return Err(ExprError {
            column: 1,
            message: "empty expression: expected e.g. NetworkErrorRatio() > 0.5".into(),
        });
    }
    let ast = p.expr(0)?;
    if let Some(t) = p.peek() {
        return Err(p.error_at(
            t,
            format!(
                "expected && or || or the end of the expression, found {}",
                t.kind
            ),
        ));
    }
    Ok(CircuitBreakerExpr {
        source: source.to_string(),
        ast,
    })
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Ident(String),
    Number(f64),
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Cmp(CmpOp),
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Ident(s) => write!(f, "{:?}", crate::cut::cut(s)),
            Kind::Number(n) => write!(f, "number {n}"),
            Kind::LParen => f.write_str("\"(\""),
            Kind::RParen => f.write_str("\")\""),
            Kind::Comma => f.write_str("\",\""),
            Kind::And => f.write_str("\"&&\""),
            Kind::Or => f.write_str("\"||\""),
            Kind::Cmp(op) => write!(f, "{:?}", op.as_str()),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    column: usize,
}

fn lex(source: &str) -> Result<Vec<Token>, ExprError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let next = chars.get(i + 1).copied();
        let (kind, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => (Kind::LParen, 1),
            ')' => (Kind::RParen, 1),
            ',' => (Kind::Comma, 1),
            '&' if next == Some('&') => (Kind::And, 2),
            '|' if next == Some('|') => (Kind::Or, 2),
            '>' if next == Some('=') => (Kind::Cmp(CmpOp::Ge), 2),
            '<' if next == Some('=') => (Kind::Cmp(CmpOp::Le), 2),
            '=' if next == Some('=') => (Kind::Cmp(CmpOp::Eq), 2),
            '!' if next == Some('=') => (Kind::Cmp(CmpOp::Ne), 2),
            '>' => (Kind::Cmp(CmpOp::Gt), 1),
            '<' => (Kind::Cmp(CmpOp::Lt), 1),
            '&' | '|' | '=' => {
                return Err(ExprError {
                    column,
                    message: format!("unexpected {c:?}: did you mean {c}{c}?"),
                })
            }
            c if c.is_ascii_digit() || c == '.' || c == '-' => {
                let start = i;
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                    j += 1;
                }
                let text: String = chars[start..j].iter().collect();
                let n = text
                    .parse::<f64>()
                    .ok()
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| ExprError {
                        column,
                        message: format!("{:?} is not a number", crate::cut::cut(&text)),
                    })?;
                (Kind::Number(n), j - start)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                (Kind::Ident(chars[start..j].iter().collect()), j - start)
            }
            other => {
                return Err(ExprError {
                    column,
                    message: format!(
                        "unexpected character {other:?}: expected a function, a number, an \
                         operator or a parenthesis"
                    ),
                })
            }
        };
        tokens.push(Token { kind, column });
        i += len;
    }
    Ok(tokens)
}

struct Parser<'a> {
    tokens: &'a [Token],
    pos: usize,
    end_column: usize,
}

const FUNCTIONS: &str = "NetworkErrorRatio(), ResponseCodeRatio(from, to, dividendFrom, \
                         dividendTo) or LatencyAtQuantileMS(quantile)";

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a Token> {
        self.tokens.get(self.pos)
    }

    fn error_at(&self, t: &Token, message: String) -> ExprError {
        ExprError {
            column: t.column,
            message,
        }
    }

    /// An error at the next token, or at the end when there is none.
    fn expected(&self, what: &str) -> ExprError {
        match self.peek() {
            Some(t) => self.error_at(t, format!("expected {what}, found {}", t.kind)),
            None => ExprError {
                column: self.end_column,
                message: format!("expected {what}, found the end of the expression"),
            },
        }
    }

    fn expect(&mut self, kind: &Kind, what: &str) -> Result<(), ExprError> {
        match self.peek() {
            Some(t) if &t.kind == kind => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(self.expected(what)),
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut left = self.and(depth)?;
        while matches!(self.peek(), Some(Token { kind: Kind::Or, .. })) {
            self.pos += 1;
            let right = self.and(depth)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut left = self.primary(depth)?;
        while matches!(
            self.peek(),
            Some(Token {
                kind: Kind::And,
                ..
            })
        ) {
            self.pos += 1;
            let right = self.primary(depth)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, ExprError> {
        if let Some(t) = self.peek() {
            if t.kind == Kind::LParen {
                if depth >= MAX_DEPTH {
                    return Err(
                        self.error_at(t, format!("parentheses nested deeper than {MAX_DEPTH}"))
                    );
                }
                self.pos += 1;
                let inner = self.expr(depth + 1)?;
                self.expect(&Kind::RParen, "\")\" or && or ||")?;
                return Ok(inner);
            }
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, ExprError> {
        let start = self.peek();
        let left = self.operand()?;
        let op = match self.peek() {
            Some(Token {
                kind: Kind::Cmp(op),
                ..
            }) => {
                self.pos += 1;
                *op
            }
            _ => return Err(self.expected("a comparison (>, <, >=, <=, == or !=)")),
        };
        let right = self.operand()?;
        if let (Operand::Number(_), Operand::Number(_), Some(t)) = (&left, &right, start) {
            return Err(self.error_at(
                t,
                format!("this comparison has no function: expected one of {FUNCTIONS}"),
            ));
        }
        Ok(Expr::Compare { left, op, right })
    }

    fn operand(&mut self) -> Result<Operand, ExprError> {
        let what = format!("a number or a function ({FUNCTIONS})");
        let Some(t) = self.peek() else {
            return Err(self.expected(&what));
        };
        match &t.kind {
            Kind::Number(n) => {
                self.pos += 1;
                Ok(Operand::Number(*n))
            }
            Kind::Ident(name) => {
                self.pos += 1;
                self.function(t, name).map(Operand::Metric)
            }
            _ => Err(self.expected(&what)),
        }
    }

    fn function(&mut self, name_token: &Token, name: &str) -> Result<Metric, ExprError> {
        let arity = match name {
            "NetworkErrorRatio" => 0,
            "ResponseCodeRatio" => 4,
            "LatencyAtQuantileMS" => 1,
            _ => {
                return Err(self.error_at(
                    name_token,
                    format!(
                        "unknown function {:?}: expected {FUNCTIONS}",
                        crate::cut::cut(name)
                    ),
                ))
            }
        };
        self.expect(&Kind::LParen, &format!("\"(\" after {name}"))?;
        let mut args: Vec<(f64, &Token)> = Vec::new();
        if !matches!(
            self.peek(),
            Some(Token {
                kind: Kind::RParen,
                ..
            })
        ) {
            loop {
                match self.peek() {
                    Some(
                        t @ Token {
                            kind: Kind::Number(n),
                            ..
                        },
                    ) => {
                        self.pos += 1;
                        args.push((*n, t));
                    }
                    _ => return Err(self.expected(&format!("a number argument of {name}"))),
                }
                match self.peek() {
                    Some(Token {
                        kind: Kind::Comma, ..
                    }) => self.pos += 1,
                    _ => break,
                }
            }
        }
        let close = self.peek();
        self.expect(&Kind::RParen, &format!("\",\" or \")\" in {name}(...)"))?;
        if args.len() != arity {
            let at = close.unwrap_or(name_token);
            return Err(self.error_at(
                at,
                format!(
                    "{name} takes {arity} argument{}, found {}",
                    if arity == 1 { "" } else { "s" },
                    args.len()
                ),
            ));
        }
        match name {
            "NetworkErrorRatio" => Ok(Metric::NetworkErrorRatio),
            "LatencyAtQuantileMS" => {
                let (q, t) = args[0];
                if !(q > 0.0 && q <= 100.0) {
                    return Err(self.error_at(
                        t,
                        format!("quantile {q} is out of range: expected above 0 and at most 100"),
                    ));
                }
                Ok(Metric::LatencyAtQuantileMs(q))
            }
            _ => {
                let mut codes = [0u16; 4];
                for (slot, (n, t)) in codes.iter_mut().zip(&args) {
                    if n.fract() != 0.0 || *n < 0.0 || *n > f64::from(MAX_STATUS_BOUND) {
                        return Err(self.error_at(
                            t,
                            format!(
                                "status code bound {n} is invalid: expected an integer from 0 \
                                 to {MAX_STATUS_BOUND}"
                            ),
                        ));
                    }
                    *slot = *n as u16;
                }
                let [from, to, dividend_from, dividend_to] = codes;
                if from >= to {
                    return Err(self.error_at(
                        args[1].1,
                        format!("range [{from}, {to}) is empty: expected from < to"),
                    ));
                }
                if dividend_from >= dividend_to {
                    return Err(self.error_at(
                        args[3].1,
                        format!(
                            "dividend range [{dividend_from}, {dividend_to}) is empty: expected \
                             dividendFrom < dividendTo"
                        ),
                    ));
                }
                Ok(Metric::ResponseCodeRatio {
                    from,
                    to,
                    dividend_from,
                    dividend_to,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! Why a route entry was refused: the field inside the entry, its value (cut) and the rule
//! it broke.

use crate::cut::cut;

/// What is wrong with part of a route entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteProblem {
    /// `route` is not `namespace/name`.
    RouteName,
    /// More items than allowed (headers of a match, backends, codes, ...).
    TooMany {
        /// How many there are.
        found: usize,
        /// The most allowed.
        max: usize,
    },
    /// More entries (matches over all rules) of one route on one service port than
    /// [`super::MAX_MATCHES_PER_ROUTE`].
    TooManyEntries {
        /// How many there are (at least).
        found: usize,
    },
    /// A string longer than allowed, in bytes.
    TooLong {
        /// The most allowed.
        max: usize,
    },
    /// Not a regex the proxy compiles within its size limits; the regex crate's reason.
    Regex(String),
    /// Not an absolute path without `?`, `#`, whitespace or control bytes.
    Path,
    /// Not an HTTP header name (an RFC 9110 token).
    HeaderName,
    /// A header whose change would break the message framing or the connection.
    ReservedHeader,
    /// A header value with a control byte (CR, LF, NUL, ...).
    HeaderValue,
    /// A query parameter name with a byte that cannot be compared raw (`&`, `=`, `#`, space,
    /// control bytes).
    QueryName,
    /// Not an HTTP method (an upper-case token such as `GET`).
    Method,
    /// Not `http` or `https`.
    Scheme,
    /// Not a DNS name (lower-case labels of a-z, 0-9 and `-`).
    Hostname,
    /// Port 0.
    Port,
    /// Not a redirect status code this build sends.
    RedirectStatus,
    /// Not a retried status code (400 to 599).
    RetryCode,
    /// A weight out of range.
    Weight,
    /// A duration out of range.
    Duration,
    /// `backendRequestMs` longer than `requestMs`.
    BackendTimeoutOverRequest,
    /// A filter type given twice in one rule.
    DuplicateFilter,
    /// `RequestRedirect` and `URLRewrite` in one rule.
    RedirectWithRewrite,
    /// `replacePrefixMatch` without a `pathPrefix` match.
    PrefixWithoutPrefixMatch,
    /// Retry attempts beyond the limit.
    RetryAttempts,
}

/// A refused route entry: the field (a path inside the entry, e.g.
/// `match.headers[1].value`), the value cut to a bounded length, and the problem. The caller
/// names the object and where the entry sits in it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: invalid value {value:?}: {}", self.reason())]
pub struct RouteError {
    /// Path of the field inside the entry.
    pub field: String,
    /// The value, cut ([`crate::cut::cut`]).
    pub value: String,
    /// What is wrong.
    pub problem: RouteProblem,
}

impl RouteError {
    pub(crate) fn new(field: impl Into<String>, value: &str, problem: RouteProblem) -> Self {
        RouteError {
            field: field.into(),
            value: cut(value).into_owned(),
            problem,
        }
    }

    /// The same error for a field one level down, e.g. `match` + `path.value`.
    pub(crate) fn under(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }

    /// What was expected, in words.
    pub fn reason(&self) -> String {
        use super::model::*;
        match &self.problem {
            RouteProblem::RouteName => "expected namespace/name of the route".into(),
            RouteProblem::TooMany { max, .. } => format!("expected at most {max}"),
            RouteProblem::TooManyEntries { found } => format!(
                "the route puts {found} matches on this service port; at most {MAX_MATCHES_PER_ROUTE}"
            ),
            RouteProblem::TooLong { max } => format!("longer than {max} bytes"),
            RouteProblem::Regex(why) => format!("not a valid regex: {why}"),
            RouteProblem::Path => {
                "expected an absolute path (starting with /) without ?, #, spaces or control bytes"
                    .into()
            }
            RouteProblem::HeaderName => "expected a header name".into(),
            RouteProblem::ReservedHeader => {
                "this header belongs to the connection and cannot be changed by a route".into()
            }
            RouteProblem::HeaderValue => {
                "a header value cannot hold control bytes (CR, LF, NUL, ...)".into()
            }
            RouteProblem::QueryName => {
                "expected a query parameter name without &, =, #, spaces or control bytes".into()
            }
            RouteProblem::Method => "expected an HTTP method such as GET".into(),
            RouteProblem::Scheme => "expected http or https".into(),
            RouteProblem::Hostname => "expected a DNS name such as example.com".into(),
            RouteProblem::Port => "expected a port from 1 to 65535".into(),
            RouteProblem::RedirectStatus => "expected 301, 302, 303, 307 or 308".into(),
            RouteProblem::RetryCode => "expected a status code from 400 to 599".into(),
            RouteProblem::Weight => {
                format!("expected an integer from 0 to {}", crate::table::MAX_WEIGHT)
            }
            RouteProblem::Duration => {
                format!("expected milliseconds from 0 (none) to {MAX_DURATION_MS}")
            }
            RouteProblem::BackendTimeoutOverRequest => {
                "backendRequestMs cannot be longer than requestMs".into()
            }
            RouteProblem::DuplicateFilter => "a filter type may appear once per rule".into(),
            RouteProblem::RedirectWithRewrite => {
                "RequestRedirect and URLRewrite cannot be in the same rule".into()
            }
            RouteProblem::PrefixWithoutPrefixMatch => {
                "replacePrefixMatch needs a pathPrefix path match".into()
            }
            RouteProblem::RetryAttempts => {
                format!("expected 0 to {}", crate::options::MAX_RETRY_ATTEMPTS)
            }
        }
    }
}

//! Gateway API routes (HTTPRoute, GRPCRoute) of a service port: their wire form, one entry per
//! match in precedence order, and the rules that turn an entry into a validated [`Route`]
//! ([`Route::try_from`], called by table validation and by the controller, which reports what
//! it refuses as `UnsupportedValue` instead of emitting it).
//!
//! The controller sorts the entries across all routes and rules of a service port by the
//! Gateway API precedence; the proxy takes the first entry whose match fits a request and
//! answers 404 when the service has entries and none fits.

use serde::{Deserialize, Serialize};

use crate::wire::SplitBackendSpec;

mod error;
mod model;

pub use error::{RouteError, RouteProblem};
pub use model::{
    check_route_entries, check_route_name, query_param, HeaderModifier, PathMatch, PathModifier,
    Redirect, Rewrite, Route, RouteFilters, RouteMatch, RouteRetry, RouteTimeouts, ValueMatch,
    ValueMatcher, DEFAULT_REDIRECT_STATUS, MAX_BACKENDS, MAX_DURATION_MS, MAX_HEADER_MODIFIERS,
    MAX_HEADER_NAME_LEN, MAX_HEADER_VALUE_LEN, MAX_MATCHES_PER_ROUTE, MAX_PATH_LEN, MAX_REGEX_LEN,
    MAX_RETRY_CODES, MAX_ROUTE_NAME_LEN, MAX_VALUE_MATCHES, REGEX_SIZE_LIMIT,
};

/// Which kind of Gateway API route an entry came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// An `HTTPRoute`.
    #[default]
    Http,
    /// A `GRPCRoute` (its service/method matches arrive as path matches).
    Grpc,
}

impl RouteKind {
    /// `http` or `grpc`, as in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "http",
            RouteKind::Grpc => "grpc",
        }
    }
}

/// One match of one rule of a Gateway API route attached to a service port, with what the rule
/// does to the requests that fit it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// `namespace/name` of the route object, for logs, metrics and errors.
    pub route: String,
    /// HTTPRoute or GRPCRoute.
    #[serde(default)]
    pub kind: RouteKind,
    /// Index of the rule in the route.
    #[serde(default)]
    pub rule: u32,
    /// What a request must fit; the default fits every request.
    #[serde(rename = "match", default)]
    pub matches: RouteMatchSpec,
    /// Filters applied to the requests that fit, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilterSpec>,
    /// Weighted backends, each a service port of the table (Gateway API weights: 0 sends
    /// nothing). Empty: the parent service port itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<SplitBackendSpec>,
    /// The weight of the backendRefs that did not resolve: that share of the requests is
    /// answered 500, as the Gateway API requires.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unresolved_weight: u32,
    /// `timeouts` of the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<RouteTimeoutsSpec>,
    /// `retry` of the rule (the Gateway API retry proposal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetrySpec>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A request match; its conditions are ANDed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatchSpec {
    /// The path condition, on the normalised request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatchSpec>,
    /// Header conditions (names are case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatchSpec>,
    /// Query parameter conditions (names are case-sensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatchSpec>,
    /// The request method, e.g. `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// How a path is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatchType {
    /// The whole path equals the value.
    Exact,
    /// The path starts with the value, element by element (`/foo` fits `/foo/bar`, not
    /// `/foobar`); a trailing `/` of the value is ignored.
    #[default]
    PathPrefix,
    /// The whole path fits the regex.
    RegularExpression,
}

/// A path condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathMatchSpec {
    /// How the value is compared (default `pathPrefix`, as in the Gateway API).
    #[serde(rename = "type", default)]
    pub kind: PathMatchType,
    /// The path or regex.
    pub value: String,
}

/// How a header or query parameter value is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ValueMatchType {
    /// Equal, case-sensitive.
    #[default]
    Exact,
    /// The whole value fits the regex.
    RegularExpression,
}

/// A header or query parameter condition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueMatchSpec {
    /// The header or parameter name.
    pub name: String,
    /// How the value is compared (default `exact`).
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    /// The value or regex.
    pub value: String,
}

/// A filter of a rule, named as in the Gateway API (`type` tells which).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum RouteFilterSpec {
    /// Change the request's headers before it goes upstream.
    RequestHeaderModifier(HeaderModifierSpec),
    /// Change the response's headers before it goes back to the client.
    ResponseHeaderModifier(HeaderModifierSpec),
    /// Answer with a redirect instead of proxying.
    RequestRedirect(RequestRedirectSpec),
    /// Change the host and path the upstream sees.
    #[serde(rename = "URLRewrite")]
    UrlRewrite(UrlRewriteSpec),
}

/// Header changes: `set` replaces, `add` appends, `remove` deletes (names case-insensitive).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifierSpec {
    /// Headers set, replacing any value present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderSpec>,
    /// Headers added beside any value present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderSpec>,
    /// Header names removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderSpec {
    /// The name.
    pub name: String,
    /// The value.
    pub value: String,
}

/// A redirect answer; what is not given stays as in the request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestRedirectSpec {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The host of the Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path of the Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifierSpec>,
    /// The port of the Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// 301, 302 (the default), 303, 307 or 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// A rewrite of what the upstream sees.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UrlRewriteSpec {
    /// The Host header sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifierSpec>,
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathModifierType {
    /// The whole path becomes the value.
    ReplaceFullPath,
    /// The part the `pathPrefix` match fitted becomes the value.
    ReplacePrefixMatch,
}

/// A path change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifierSpec {
    /// Which change.
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    /// The new path or prefix.
    pub value: String,
}

/// `timeouts` of a rule, in milliseconds; 0 or absent means none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteTimeoutsSpec {
    /// The whole request, retries included (answered 504 when it runs out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ms: Option<u64>,
    /// Each attempt at a backend; at most `requestMs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request_ms: Option<u64>,
}

/// `retry` of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRetrySpec {
    /// Extra attempts after the first.
    #[serde(default)]
    pub attempts: u32,
    /// Response codes (400-599) that are retried, besides connection errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    /// Pause before each retry, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_ms: Option<u64>,
}

#[cfg(test)]
mod tests;

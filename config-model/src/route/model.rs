//! Validated route entries and their rules: one constructor per part (match, filters,
//! timeouts, retry), each returning a [`RouteError`]; the matching of a request against an
//! entry (no allocation); the path a redirect or rewrite produces.

use regex::{Regex, RegexBuilder};

use super::error::{RouteError, RouteProblem};
use super::{
    HeaderModifierSpec, PathMatchSpec, PathMatchType, PathModifierSpec, PathModifierType,
    RequestRedirectSpec, RouteFilterSpec, RouteKind, RouteMatchSpec, RouteRetrySpec, RouteSpec,
    RouteTimeoutsSpec, UrlRewriteSpec, ValueMatchSpec, ValueMatchType,
};
use crate::matching::check_weight;
use crate::options::MAX_RETRY_ATTEMPTS;
use crate::table::{is_dns_label, ServiceKey, SplitBackend};

/// Most entries one route may put on one service port (matches over all its rules).
pub const MAX_MATCHES_PER_ROUTE: usize = 64;
/// Most header conditions, and most query parameter conditions, of one match.
pub const MAX_VALUE_MATCHES: usize = 16;
/// Longest regex accepted, in bytes of its source.
pub const MAX_REGEX_LEN: usize = 1024;
/// Size limit of a compiled regex (and of its lazy DFA), in bytes.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest header or query parameter value (to match or to set), in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Longest header or query parameter name, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 256;
/// Longest path (to match, redirect to or rewrite to), in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Most headers in each of `set`, `add` and `remove` of a header modifier.
pub const MAX_HEADER_MODIFIERS: usize = 16;
/// Most backends of one rule (the Gateway API's own limit on backendRefs).
pub const MAX_BACKENDS: usize = 16;
/// Most retried status codes of one rule.
pub const MAX_RETRY_CODES: usize = 64;
/// Longest timeout or backoff, in milliseconds (100,000 hours: beyond any Gateway API
/// duration a user writes, small enough that no deadline overflows).
pub const MAX_DURATION_MS: u64 = 360_000_000_000;
/// Longest `route` (`namespace/name`), in bytes.
pub const MAX_ROUTE_NAME_LEN: usize = 63 + 1 + 253;
/// The status of a redirect that does not say.
pub const DEFAULT_REDIRECT_STATUS: u16 = 302;

/// Headers a header modifier may not set, add or remove: they frame the message or belong to
/// the connection (`host` is changed by `URLRewrite`'s hostname).
const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "content-length",
    "host",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// One validated route entry: a match and what the rule does with the requests that fit it.
#[derive(Clone, Debug)]
pub struct Route {
    /// `namespace/name` of the route object.
    pub route: String,
    /// HTTPRoute or GRPCRoute.
    pub kind: RouteKind,
    /// Index of the rule in the route.
    pub rule: u32,
    /// What a request must fit.
    pub matches: RouteMatch,
    /// What is done to the requests that fit.
    pub filters: RouteFilters,
    /// Weighted backends, named by identity (resolved by the table); empty: the parent.
    pub backends: Vec<SplitBackend>,
    /// Weight answered 500 (backendRefs that did not resolve).
    pub unresolved_weight: u32,
    /// Timeouts; both `None` when the rule has none.
    pub timeouts: RouteTimeouts,
    /// Retries, when the rule has them.
    pub retry: Option<RouteRetry>,
}

impl TryFrom<&RouteSpec> for Route {
    type Error = RouteError;

    /// The rules of a route entry, all of them: the one constructor both the table and the
    /// controller call.
    fn try_from(spec: &RouteSpec) -> Result<Route, RouteError> {
        check_route_name(&spec.route)?;
        let matches = RouteMatch::new(&spec.matches).map_err(|e| e.under("match"))?;
        let filters = RouteFilters::new(&spec.filters, &matches)?;
        if spec.backends.len() > MAX_BACKENDS {
            return Err(too_many("backends", spec.backends.len(), MAX_BACKENDS));
        }
        let mut backends = Vec::with_capacity(spec.backends.len());
        for (i, b) in spec.backends.iter().enumerate() {
            let weight = check_weight(b.weight).map_err(|e| {
                RouteError::new(
                    format!("backends[{i}].weight"),
                    &e.value,
                    RouteProblem::Weight,
                )
            })?;
            backends.push(SplitBackend {
                service: ServiceKey {
                    namespace: b.namespace.clone(),
                    name: b.name.clone(),
                    port: b.port,
                },
                weight,
            });
        }
        let unresolved_weight = check_weight(spec.unresolved_weight)
            .map_err(|e| RouteError::new("unresolvedWeight", &e.value, RouteProblem::Weight))?;
        let timeouts = match &spec.timeouts {
            None => RouteTimeouts::default(),
            Some(t) => RouteTimeouts::new(t).map_err(|e| e.under("timeouts"))?,
        };
        let retry = match &spec.retry {
            None => None,
            Some(r) => Some(RouteRetry::new(r).map_err(|e| e.under("retry"))?),
        };
        Ok(Route {
            route: spec.route.clone(),
            kind: spec.kind,
            rule: spec.rule,
            matches,
            filters,
            backends,
            unresolved_weight,
            timeouts,
            retry,
        })
    }
}

impl Route {
    /// Sum of the backend weights, the unresolved weight included.
    pub fn total_weight(&self) -> u64 {
        self.backends
            .iter()
            .map(|b| u64::from(b.weight))
            .sum::<u64>()
            + u64::from(self.unresolved_weight)
    }
}

/// The rule of `route`: `namespace/name`, a DNS label and a DNS subdomain.
pub fn check_route_name(route: &str) -> Result<(), RouteError> {
    let bad = || RouteError::new("route", route, RouteProblem::RouteName);
    if route.len() > MAX_ROUTE_NAME_LEN {
        return Err(bad());
    }
    let (namespace, name) = route.split_once('/').ok_or_else(bad)?;
    if !is_dns_label(namespace) || !is_dns_name(name) {
        return Err(bad());
    }
    Ok(())
}

/// The rule of how many entries one route puts on one service port: at most
/// [`MAX_MATCHES_PER_ROUTE`].
pub fn check_route_entries(route: &str, count: usize) -> Result<(), RouteError> {
    if count > MAX_MATCHES_PER_ROUTE {
        return Err(RouteError::new(
            "route",
            route,
            RouteProblem::TooManyEntries { found: count },
        ));
    }
    Ok(())
}

fn too_many(field: &str, found: usize, max: usize) -> RouteError {
    RouteError::new(
        field,
        &format!("{found} items"),
        RouteProblem::TooMany { found, max },
    )
}

/// A DNS name (RFC 1123 subdomain): lower-case labels, at most 253 bytes.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The rule of a header name: a token of at most [`MAX_HEADER_NAME_LEN`] bytes, lower-cased.
fn header_name(field: &str, name: &str) -> Result<String, RouteError> {
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(RouteError::new(
            field,
            name,
            RouteProblem::TooLong {
                max: MAX_HEADER_NAME_LEN,
            },
        ));
    }
    if !is_header_name(name) {
        return Err(RouteError::new(field, name, RouteProblem::HeaderName));
    }
    Ok(name.to_ascii_lowercase())
}

/// The rule of a header value: at most [`MAX_HEADER_VALUE_LEN`] bytes, no control byte but
/// tab (what a request or response may carry: no CR or LF that would split it).
fn header_value(field: &str, value: &str) -> Result<String, RouteError> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(RouteError::new(
            field,
            value,
            RouteProblem::TooLong {
                max: MAX_HEADER_VALUE_LEN,
            },
        ));
    }
    if value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(RouteError::new(field, value, RouteProblem::HeaderValue));
    }
    Ok(value.to_string())
}

/// The rule of a route regex: at most [`MAX_REGEX_LEN`] bytes, anchored at both ends (the
/// whole path or value must fit), compiled within [`REGEX_SIZE_LIMIT`].
fn route_regex(field: &str, pattern: &str) -> Result<Regex, RouteError> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(RouteError::new(
            field,
            pattern,
            RouteProblem::TooLong { max: MAX_REGEX_LEN },
        ));
    }
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let why = e.to_string();
            let why = why.lines().last().unwrap_or_default();
            RouteError::new(
                field,
                pattern,
                RouteProblem::Regex(why.trim_start_matches("error: ").to_string()),
            )
        })
}

/// The rule of a path value (to match, or to redirect or rewrite to): absolute, at most
/// [`MAX_PATH_LEN`] bytes, visible ASCII without `?` or `#`.
fn path_value(field: &str, path: &str) -> Result<String, RouteError> {
    if path.len() > MAX_PATH_LEN {
        return Err(RouteError::new(
            field,
            path,
            RouteProblem::TooLong { max: MAX_PATH_LEN },
        ));
    }
    if !path.starts_with('/')
        || !path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#')
    {
        return Err(RouteError::new(field, path, RouteProblem::Path));
    }
    Ok(path.to_string())
}

/// The path condition of a match.
#[derive(Clone, Debug)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A prefix, element by element, kept without trailing `/` (so `/` is empty and fits
    /// every path).
    Prefix(String),
    /// An anchored regex.
    Regex(Regex),
}

impl PathMatch {
    /// The rule of a path condition.
    pub fn new(spec: &PathMatchSpec) -> Result<PathMatch, RouteError> {
        Ok(match spec.kind {
            PathMatchType::Exact => PathMatch::Exact(path_value("path.value", &spec.value)?),
            PathMatchType::PathPrefix => {
                let p = path_value("path.value", &spec.value)?;
                PathMatch::Prefix(p.trim_end_matches('/').to_string())
            }
            PathMatchType::RegularExpression => {
                PathMatch::Regex(route_regex("path.value", &spec.value)?)
            }
        })
    }

    /// Whether `path` (normalised, without query) fits.
    pub fn fits(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => {
                path.starts_with(p.as_str())
                    && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// How a header or query parameter value is compared.
#[derive(Clone, Debug)]
pub enum ValueMatcher {
    /// Equal, case-sensitive.
    Exact(String),
    /// An anchored regex.
    Regex(Regex),
}

impl ValueMatcher {
    /// Whether `value` fits.
    pub fn fits(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(v) => v == value,
            ValueMatcher::Regex(re) => re.is_match(value),
        }
    }
}

/// A header (name lower-cased) or query parameter (name as given) condition.
#[derive(Clone, Debug)]
pub struct ValueMatch {
    /// The name.
    pub name: String,
    /// The value condition.
    pub matcher: ValueMatcher,
}

impl ValueMatch {
    fn new(field: &str, spec: &ValueMatchSpec, header: bool) -> Result<ValueMatch, RouteError> {
        let name = if header {
            header_name(&format!("{field}.name"), &spec.name)?
        } else {
            query_name(&format!("{field}.name"), &spec.name)?
        };
        let value_field = format!("{field}.value");
        let matcher = match spec.kind {
            ValueMatchType::Exact => ValueMatcher::Exact(header_value(&value_field, &spec.value)?),
            ValueMatchType::RegularExpression => {
                ValueMatcher::Regex(route_regex(&value_field, &spec.value)?)
            }
        };
        Ok(ValueMatch { name, matcher })
    }
}

/// The rule of a query parameter name: bytes compared raw, so none that the query syntax or a
/// request line gives another meaning.
fn query_name(field: &str, name: &str) -> Result<String, RouteError> {
    if name.len() > MAX_HEADER_NAME_LEN {
        return Err(RouteError::new(
            field,
            name,
            RouteProblem::TooLong {
                max: MAX_HEADER_NAME_LEN,
            },
        ));
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"&=#".contains(&b))
    {
        return Err(RouteError::new(field, name, RouteProblem::QueryName));
    }
    Ok(name.to_string())
}

/// A validated match; its conditions are ANDed, an empty one fits every request.
#[derive(Clone, Debug, Default)]
pub struct RouteMatch {
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Header conditions (names lower-case).
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions.
    pub query_params: Vec<ValueMatch>,
    /// Method, exact.
    pub method: Option<String>,
}

impl RouteMatch {
    /// The rules of a match: path, at most [`MAX_VALUE_MATCHES`] headers and as many query
    /// parameters, a method.
    pub fn new(spec: &RouteMatchSpec) -> Result<RouteMatch, RouteError> {
        let path = spec.path.as_ref().map(PathMatch::new).transpose()?;
        if spec.headers.len() > MAX_VALUE_MATCHES {
            return Err(too_many("headers", spec.headers.len(), MAX_VALUE_MATCHES));
        }
        if spec.query_params.len() > MAX_VALUE_MATCHES {
            return Err(too_many(
                "queryParams",
                spec.query_params.len(),
                MAX_VALUE_MATCHES,
            ));
        }
        let headers = spec
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| ValueMatch::new(&format!("headers[{i}]"), h, true))
            .collect::<Result<Vec<_>, _>>()?;
        let query_params = spec
            .query_params
            .iter()
            .enumerate()
            .map(|(i, q)| ValueMatch::new(&format!("queryParams[{i}]"), q, false))
            .collect::<Result<Vec<_>, _>>()?;
        let method = match &spec.method {
            None => None,
            Some(m)
                if !m.is_empty() && m.len() <= 32 && m.bytes().all(|b| b.is_ascii_uppercase()) =>
            {
                Some(m.clone())
            }
            Some(m) => return Err(RouteError::new("method", m, RouteProblem::Method)),
        };
        Ok(RouteMatch {
            path,
            headers,
            query_params,
            method,
        })
    }

    /// Whether a request fits: `path` normalised and without query, `query` the raw query
    /// string (after `?`), `header` the first value of a header by its lower-case name. A
    /// query parameter is compared raw, by its first occurrence. Allocates nothing.
    pub fn fits<'a>(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        header: impl Fn(&str) -> Option<&'a str>,
    ) -> bool {
        if let Some(m) = &self.method {
            if m != method {
                return false;
            }
        }
        if let Some(p) = &self.path {
            if !p.fits(path) {
                return false;
            }
        }
        if !self
            .headers
            .iter()
            .all(|h| header(&h.name).is_some_and(|v| h.matcher.fits(v)))
        {
            return false;
        }
        self.query_params
            .iter()
            .all(|q| query_param(query, &q.name).is_some_and(|v| q.matcher.fits(v)))
    }

    /// For a `pathPrefix` match, the length of the prefix a fitting path starts with (what
    /// `replacePrefixMatch` replaces).
    pub fn prefix_len(&self) -> Option<usize> {
        match &self.path {
            Some(PathMatch::Prefix(p)) => Some(p.len()),
            _ => None,
        }
    }
}

/// The value of the first `name` parameter of a raw query string (`a=1&b`: `b` has value "").
pub fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// A header change, names lower-case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    /// Set, replacing.
    pub set: Vec<(String, String)>,
    /// Added.
    pub add: Vec<(String, String)>,
    /// Removed.
    pub remove: Vec<String>,
}

impl HeaderModifier {
    /// The rules of a header modifier: at most [`MAX_HEADER_MODIFIERS`] in each list, header
    /// names and values as a message may carry them, none of the connection's own headers.
    pub fn new(spec: &HeaderModifierSpec) -> Result<HeaderModifier, RouteError> {
        for (list, n) in [
            ("set", spec.set.len()),
            ("add", spec.add.len()),
            ("remove", spec.remove.len()),
        ] {
            if n > MAX_HEADER_MODIFIERS {
                return Err(too_many(list, n, MAX_HEADER_MODIFIERS));
            }
        }
        let name = |field: String, n: &str| {
            let name = header_name(&field, n)?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(RouteError::new(field, n, RouteProblem::ReservedHeader));
            }
            Ok(name)
        };
        let pairs = |list: &str, hs: &[super::HeaderSpec]| {
            hs.iter()
                .enumerate()
                .map(|(i, h)| {
                    Ok((
                        name(format!("{list}[{i}].name"), &h.name)?,
                        header_value(&format!("{list}[{i}].value"), &h.value)?,
                    ))
                })
                .collect::<Result<Vec<_>, RouteError>>()
        };
        Ok(HeaderModifier {
            set: pairs("set", &spec.set)?,
            add: pairs("add", &spec.add)?,
            remove: spec
                .remove
                .iter()
                .enumerate()
                .map(|(i, n)| name(format!("remove[{i}]"), n))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// A path change of a redirect or rewrite.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    /// The whole path becomes this.
    Full(String),
    /// The matched prefix becomes this (kept without trailing `/`).
    Prefix(String),
}

impl PathModifier {
    fn new(spec: &PathModifierSpec, m: &RouteMatch) -> Result<PathModifier, RouteError> {
        let value = path_value("value", &spec.value)?;
        Ok(match spec.kind {
            PathModifierType::ReplaceFullPath => PathModifier::Full(value),
            PathModifierType::ReplacePrefixMatch => {
                if m.prefix_len().is_none() {
                    return Err(RouteError::new(
                        "type",
                        "replacePrefixMatch",
                        RouteProblem::PrefixWithoutPrefixMatch,
                    ));
                }
                PathModifier::Prefix(value.trim_end_matches('/').to_string())
            }
        })
    }

    /// The new path for `path`, of which the match's prefix covered `prefix_len` bytes:
    /// `/foo` replaced by `/bar` turns `/foo/x` into `/bar/x` and `/foo` into `/bar`; replaced
    /// by `/`, it turns `/foo/x` into `/x` and `/foo` into `/`.
    pub fn apply(&self, path: &str, prefix_len: usize) -> String {
        match self {
            PathModifier::Full(p) => p.clone(),
            PathModifier::Prefix(p) => {
                let rest = path.get(prefix_len..).unwrap_or_default();
                let mut out = String::with_capacity(p.len() + rest.len() + 1);
                out.push_str(p);
                out.push_str(rest);
                if out.is_empty() {
                    out.push('/');
                }
                out
            }
        }
    }
}

/// A redirect answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`; `None` keeps the request's.
    pub scheme: Option<String>,
    /// Host; `None` keeps the request's.
    pub hostname: Option<String>,
    /// Path change; `None` keeps the request's path.
    pub path: Option<PathModifier>,
    /// Port; `None`: the scheme's default when the scheme is given, else the request's.
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

impl Redirect {
    fn new(spec: &RequestRedirectSpec, m: &RouteMatch) -> Result<Redirect, RouteError> {
        let scheme = match spec.scheme.as_deref() {
            None => None,
            Some(s @ ("http" | "https")) => Some(s.to_string()),
            Some(s) => return Err(RouteError::new("scheme", s, RouteProblem::Scheme)),
        };
        let hostname = spec
            .hostname
            .as_deref()
            .map(|h| hostname("hostname", h))
            .transpose()?;
        let path = spec
            .path
            .as_ref()
            .map(|p| PathModifier::new(p, m).map_err(|e| e.under("path")))
            .transpose()?;
        if spec.port == Some(0) {
            return Err(RouteError::new("port", "0", RouteProblem::Port));
        }
        let status = match spec.status_code {
            None => DEFAULT_REDIRECT_STATUS,
            Some(s @ (301 | 302 | 303 | 307 | 308)) => s,
            Some(s) => {
                return Err(RouteError::new(
                    "statusCode",
                    &s.to_string(),
                    RouteProblem::RedirectStatus,
                ))
            }
        };
        Ok(Redirect {
            scheme,
            hostname,
            path,
            port: spec.port,
            status,
        })
    }
}

fn hostname(field: &str, h: &str) -> Result<String, RouteError> {
    if is_dns_name(h) {
        Ok(h.to_string())
    } else {
        Err(RouteError::new(field, h, RouteProblem::Hostname))
    }
}

/// A rewrite of what the upstream sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewrite {
    /// The Host sent upstream.
    pub hostname: Option<String>,
    /// The path change.
    pub path: Option<PathModifier>,
}

impl Rewrite {
    fn new(spec: &UrlRewriteSpec, m: &RouteMatch) -> Result<Rewrite, RouteError> {
        Ok(Rewrite {
            hostname: spec
                .hostname
                .as_deref()
                .map(|h| hostname("hostname", h))
                .transpose()?,
            path: spec
                .path
                .as_ref()
                .map(|p| PathModifier::new(p, m).map_err(|e| e.under("path")))
                .transpose()?,
        })
    }
}

/// The filters of a rule, at most one of each type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteFilters {
    /// `RequestHeaderModifier`.
    pub request_headers: Option<HeaderModifier>,
    /// `ResponseHeaderModifier`.
    pub response_headers: Option<HeaderModifier>,
    /// `RequestRedirect`.
    pub redirect: Option<Redirect>,
    /// `URLRewrite`.
    pub rewrite: Option<Rewrite>,
}

impl RouteFilters {
    /// The rules of a rule's filters: each type at most once, not both a redirect and a
    /// rewrite, `replacePrefixMatch` only with a `pathPrefix` match (`m`).
    pub fn new(specs: &[RouteFilterSpec], m: &RouteMatch) -> Result<RouteFilters, RouteError> {
        let mut f = RouteFilters::default();
        for (i, spec) in specs.iter().enumerate() {
            let field = format!("filters[{i}]");
            let dup = || {
                RouteError::new(
                    field.clone(),
                    type_name(spec),
                    RouteProblem::DuplicateFilter,
                )
            };
            match spec {
                RouteFilterSpec::RequestHeaderModifier(h) => {
                    if f.request_headers.is_some() {
                        return Err(dup());
                    }
                    f.request_headers = Some(HeaderModifier::new(h).map_err(|e| e.under(&field))?);
                }
                RouteFilterSpec::ResponseHeaderModifier(h) => {
                    if f.response_headers.is_some() {
                        return Err(dup());
                    }
                    f.response_headers = Some(HeaderModifier::new(h).map_err(|e| e.under(&field))?);
                }
                RouteFilterSpec::RequestRedirect(r) => {
                    if f.redirect.is_some() {
                        return Err(dup());
                    }
                    f.redirect = Some(Redirect::new(r, m).map_err(|e| e.under(&field))?);
                }
                RouteFilterSpec::UrlRewrite(r) => {
                    if f.rewrite.is_some() {
                        return Err(dup());
                    }
                    f.rewrite = Some(Rewrite::new(r, m).map_err(|e| e.under(&field))?);
                }
            }
            if f.redirect.is_some() && f.rewrite.is_some() {
                return Err(RouteError::new(
                    field,
                    type_name(spec),
                    RouteProblem::RedirectWithRewrite,
                ));
            }
        }
        Ok(f)
    }
}

fn type_name(spec: &RouteFilterSpec) -> &'static str {
    match spec {
        RouteFilterSpec::RequestHeaderModifier(_) => "RequestHeaderModifier",
        RouteFilterSpec::ResponseHeaderModifier(_) => "ResponseHeaderModifier",
        RouteFilterSpec::RequestRedirect(_) => "RequestRedirect",
        RouteFilterSpec::UrlRewrite(_) => "URLRewrite",
    }
}

fn duration(field: &str, ms: Option<u64>) -> Result<Option<u64>, RouteError> {
    match ms {
        None | Some(0) => Ok(None),
        Some(ms) if ms <= MAX_DURATION_MS => Ok(Some(ms)),
        Some(ms) => Err(RouteError::new(
            field,
            &ms.to_string(),
            RouteProblem::Duration,
        )),
    }
}

/// A rule's timeouts, in milliseconds (`None`: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteTimeouts {
    /// The whole request, retries included.
    pub request_ms: Option<u64>,
    /// Each attempt.
    pub backend_request_ms: Option<u64>,
}

impl RouteTimeouts {
    /// The rules of timeouts: 0 means none, at most [`MAX_DURATION_MS`], and a backend request
    /// no longer than the request.
    pub fn new(spec: &RouteTimeoutsSpec) -> Result<RouteTimeouts, RouteError> {
        let request_ms = duration("requestMs", spec.request_ms)?;
        let backend_request_ms = duration("backendRequestMs", spec.backend_request_ms)?;
        if let (Some(r), Some(b)) = (request_ms, backend_request_ms) {
            if b > r {
                return Err(RouteError::new(
                    "backendRequestMs",
                    &b.to_string(),
                    RouteProblem::BackendTimeoutOverRequest,
                ));
            }
        }
        Ok(RouteTimeouts {
            request_ms,
            backend_request_ms,
        })
    }
}

/// A rule's retries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteRetry {
    /// Extra attempts after the first, at most [`MAX_RETRY_ATTEMPTS`].
    pub attempts: u32,
    /// Retried response codes, sorted, without repeats.
    pub codes: Vec<u16>,
    /// Pause before each retry.
    pub backoff_ms: Option<u64>,
}

impl RouteRetry {
    /// The rules of retries: attempts up to [`MAX_RETRY_ATTEMPTS`], at most
    /// [`MAX_RETRY_CODES`] codes from 400 to 599, a backoff up to [`MAX_DURATION_MS`].
    pub fn new(spec: &RouteRetrySpec) -> Result<RouteRetry, RouteError> {
        if spec.attempts > MAX_RETRY_ATTEMPTS {
            return Err(RouteError::new(
                "attempts",
                &spec.attempts.to_string(),
                RouteProblem::RetryAttempts,
            ));
        }
        if spec.codes.len() > MAX_RETRY_CODES {
            return Err(too_many("codes", spec.codes.len(), MAX_RETRY_CODES));
        }
        let mut codes = Vec::with_capacity(spec.codes.len());
        for (i, &c) in spec.codes.iter().enumerate() {
            if !(400..=599).contains(&c) {
                return Err(RouteError::new(
                    format!("codes[{i}]"),
                    &c.to_string(),
                    RouteProblem::RetryCode,
                ));
            }
            codes.push(c);
        }
        codes.sort_unstable();
        codes.dedup();
        Ok(RouteRetry {
            attempts: spec.attempts,
            codes,
            backoff_ms: duration("backoffMs", spec.backoff_ms)?,
        })
    }
}

//! The rules of HTTP matches, traffic splits and endpoint weights: one constructor or check
//! each, returning a typed error, called by table validation and by the controller's SMI
//! translation (which leaves out what the table would refuse). Cycles and depth of nested
//! splits are [`crate::split_graph`]'s.

use std::fmt;

use regex::Regex;

use crate::cut::{cut, cut_display};
use crate::table::{HttpMatch, MAX_WEIGHT};
use crate::wire::{HttpMatchSpec, TrafficType};

/// The part of an HTTP match a [`MatchError`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchField {
    /// `pathRegex`.
    PathRegex,
    /// One of `methods`.
    Methods,
    /// The name of one of `headers`.
    HeaderName,
    /// The value regex of the header of this (lower-case, cut) name.
    HeaderValue(String),
}

impl MatchField {
    /// The path of the field inside a match of the table's JSON form, e.g. `headers.x-user`.
    pub fn path(&self) -> String {
        match self {
            MatchField::PathRegex => "pathRegex".into(),
            MatchField::Methods => "methods".into(),
            MatchField::HeaderName => "headers".into(),
            MatchField::HeaderValue(name) => format!("headers.{name}"),
        }
    }

    /// The last part of [`MatchField::path`]: the field as an SMI HTTPRouteGroup names it
    /// (`pathRegex`, `methods`, `headers`, or the header's name).
    pub fn leaf(&self) -> &str {
        match self {
            MatchField::PathRegex => "pathRegex",
            MatchField::Methods => "methods",
            MatchField::HeaderName => "headers",
            MatchField::HeaderValue(name) => name,
        }
    }
}

/// What is wrong with part of an HTTP match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchProblem {
    /// Not a regex the proxy can compile; the regex crate's reason, on one line.
    Regex(String),
    /// Not an HTTP method (letters only) or `*`.
    Method,
    /// Not an HTTP header name (an RFC 9110 token).
    HeaderName,
}

/// A refused HTTP match: which part, its value (cut, [`crate::cut::cut`]) and why. The
/// caller adds the object and where the match sits in it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: invalid value {value:?}: {}", field.path(), self.reason())]
pub struct MatchError {
    /// The part of the match.
    pub field: MatchField,
    /// The value, cut to a bounded length.
    pub value: String,
    /// What is wrong with it.
    pub problem: MatchProblem,
}

impl MatchError {
    fn new(field: MatchField, value: &str, problem: MatchProblem) -> Self {
        MatchError {
            field,
            value: cut(value).into_owned(),
            problem,
        }
    }

    /// What was expected.
    pub fn reason(&self) -> String {
        match &self.problem {
            MatchProblem::Regex(why) => format!("not a valid regex: {why}"),
            MatchProblem::Method => "expected an HTTP method such as GET, or *".into(),
            MatchProblem::HeaderName => "expected a header name".into(),
        }
    }
}

/// The rule of a match's regexes: `pattern` must match whole values (anchored at both ends,
/// as SMI specifies) and compile within the regex crate's size limits.
pub fn anchored_regex(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| one_line(&e.to_string()))
}

/// The regex crate explains an error on several lines (the pattern, a caret, then the error);
/// its first and last lines say what is wrong.
fn one_line(message: &str) -> String {
    match message.rsplit_once('\n') {
        Some((head, last)) => {
            let head = head
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end_matches(':');
            format!("{head}: {}", last.trim_start_matches("error: "))
        }
        None => message.to_string(),
    }
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl TryFrom<&HttpMatchSpec> for HttpMatch {
    type Error = MatchError;

    /// Compiles a match: regexes anchored, methods upper-cased (`*` means any), header names
    /// lower-cased.
    fn try_from(m: &HttpMatchSpec) -> Result<HttpMatch, MatchError> {
        let path = match &m.path_regex {
            None => None,
            Some(p) => Some(anchored_regex(p).map_err(|why| {
                MatchError::new(MatchField::PathRegex, p, MatchProblem::Regex(why))
            })?),
        };
        let mut methods = Vec::new();
        for meth in &m.methods {
            if meth == "*" {
                methods.clear();
                break;
            }
            if meth.is_empty() || !meth.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(MatchError::new(
                    MatchField::Methods,
                    meth,
                    MatchProblem::Method,
                ));
            }
            methods.push(meth.to_ascii_uppercase());
        }
        let mut headers = Vec::with_capacity(m.headers.len());
        for (name, pattern) in &m.headers {
            if !is_header_name(name) {
                return Err(MatchError::new(
                    MatchField::HeaderName,
                    name,
                    MatchProblem::HeaderName,
                ));
            }
            let name = name.to_ascii_lowercase();
            let re = anchored_regex(pattern).map_err(|why| {
                MatchError::new(
                    MatchField::HeaderValue(cut(&name).into_owned()),
                    pattern,
                    MatchProblem::Regex(why),
                )
            })?;
            headers.push((name, re));
        }
        Ok(HttpMatch {
            name: m.name.clone(),
            path,
            methods,
            headers,
        })
    }
}

/// A weight outside `0..=`[`MAX_WEIGHT`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value}: expected an integer from 0 to {MAX_WEIGHT}")]
pub struct WeightError {
    /// The weight as given.
    pub value: String,
}

/// The rule of endpoint and split backend weights: an integer from 0 (no traffic) to
/// [`MAX_WEIGHT`]. Takes any integer, as Kubernetes objects carry them.
pub fn check_weight(weight: impl Into<i64> + fmt::Display + Copy) -> Result<u32, WeightError> {
    let w: i64 = weight.into();
    match u32::try_from(w) {
        Ok(w) if w <= MAX_WEIGHT => Ok(w),
        _ => Err(WeightError {
            value: cut_display(weight),
        }),
    }
}

/// What a traffic split may not do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// UDP datagrams are not split.
    #[error("traffic splits apply to http and tcp services only, this one is udp")]
    UdpRoot,
    /// HTTP matches on a root that does not carry HTTP.
    #[error("HTTP matches need an http service, this one is {0}")]
    MatchesNeedHttp(TrafficType),
    /// A backend that carries another kind of traffic than its root.
    #[error("backend is {backend} but the root is {root}")]
    TrafficType {
        /// The root's traffic type.
        root: TrafficType,
        /// The backend's.
        backend: TrafficType,
    },
}

/// The rule of a split's root: an http or tcp service, and http when the split has matches.
pub fn check_split_root(root: TrafficType, has_matches: bool) -> Result<(), SplitError> {
    match root {
        TrafficType::Udp => Err(SplitError::UdpRoot),
        TrafficType::Tcp if has_matches => Err(SplitError::MatchesNeedHttp(root)),
        _ => Ok(()),
    }
}

/// The rule of a split's backend: it carries the same traffic as its root.
pub fn check_split_backend(root: TrafficType, backend: TrafficType) -> Result<(), SplitError> {
    if root == backend {
        Ok(())
    } else {
        Err(SplitError::TrafficType { root, backend })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(path: Option<&str>, methods: &[&str], headers: &[(&str, &str)]) -> HttpMatchSpec {
        HttpMatchSpec {
            name: Some("m".into()),
            path_regex: path.map(str::to_string),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn a_match_compiles_anchored_with_methods_and_headers_normalised() {
        let m = HttpMatch::try_from(&spec(
            Some("/api/.*"),
            &["get", "POST"],
            &[("X-User", "alice|bob")],
        ))
        .unwrap();
        assert_eq!(m.methods, ["GET", "POST"]);
        assert_eq!(m.headers[0].0, "x-user");
        let header = |v: &'static str| move |n: &str| (n == "x-user").then_some(v);
        assert!(m.matches("GET", "/api/x", header("alice")));
        assert!(
            !m.matches("GET", "/v1/api/x", header("alice")),
            "path anchored"
        );
        assert!(
            !m.matches("GET", "/api/x", header("alicex")),
            "header anchored"
        );
        assert!(!m.matches("PUT", "/api/x", header("bob")));
        let any = HttpMatch::try_from(&spec(None, &["GET", "*"], &[])).unwrap();
        assert!(any.methods.is_empty());
    }

    #[test]
    fn each_part_of_a_match_is_checked_and_named() {
        let e = HttpMatch::try_from(&spec(Some("/(unclosed"), &[], &[])).unwrap_err();
        assert_eq!(e.field, MatchField::PathRegex);
        assert_eq!(e.value, "/(unclosed");
        assert_eq!(
            e.reason(),
            "not a valid regex: regex parse error: unclosed group"
        );
        let e = HttpMatch::try_from(&spec(None, &["GET", "G3T"], &[])).unwrap_err();
        assert_eq!((e.field, e.value.as_str()), (MatchField::Methods, "G3T"));
        let e = HttpMatch::try_from(&spec(None, &[], &[("bad name", "x")])).unwrap_err();
        assert_eq!(e.problem, MatchProblem::HeaderName);
        let e = HttpMatch::try_from(&spec(None, &[], &[("X-Id", "[")])).unwrap_err();
        assert_eq!(e.field.path(), "headers.x-id");
        assert_eq!(e.field.leaf(), "x-id");
        assert_eq!(
            e.to_string(),
            "headers.x-id: invalid value \"[\": not a valid regex: regex parse error: unclosed character class"
        );
    }

    #[test]
    fn hostile_matches_are_quoted_cut() {
        let long = format!("({}", "a".repeat(1 << 16));
        let e = HttpMatch::try_from(&spec(Some(&long), &[], &[])).unwrap_err();
        assert!(e.to_string().len() < 1024, "{} bytes", e.to_string().len());
        let name = "x".repeat(1 << 16);
        let e = HttpMatch::try_from(&spec(None, &[], &[(&name, "(")])).unwrap_err();
        assert!(e.to_string().len() < 1024, "{} bytes", e.to_string().len());
        // A pattern that compiles too big for the regex crate is refused, not built.
        let huge = "(?:a{1000}){1000}";
        let e = HttpMatch::try_from(&spec(Some(huge), &[], &[])).unwrap_err();
        assert!(matches!(e.problem, MatchProblem::Regex(_)), "{e}");
    }

    #[test]
    fn splits_root_on_http_or_tcp_and_keep_to_its_traffic() {
        use TrafficType::*;
        assert_eq!(check_split_root(Http, true), Ok(()));
        assert_eq!(check_split_root(Tcp, false), Ok(()));
        assert_eq!(
            check_split_root(Tcp, true),
            Err(SplitError::MatchesNeedHttp(Tcp))
        );
        assert_eq!(check_split_root(Udp, false), Err(SplitError::UdpRoot));
        assert_eq!(check_split_backend(Tcp, Tcp), Ok(()));
        assert_eq!(
            check_split_backend(Http, Tcp).unwrap_err().to_string(),
            "backend is tcp but the root is http"
        );
    }

    #[test]
    fn the_table_refuses_what_the_split_rules_refuse() {
        use crate::testing::{service, table};
        use crate::{Error, SplitBackendSpec, SplitSpec, Table};
        let split = |to: &str| SplitSpec {
            name: "shop/canary".into(),
            matches: vec![],
            backends: vec![SplitBackendSpec {
                namespace: "shop".into(),
                name: to.into(),
                port: 80,
                weight: 1,
            }],
        };
        let refused = |services| match Table::try_from(table(1, services)).unwrap_err() {
            Error::InvalidField {
                service,
                field,
                value,
                reason,
            } => (service, field, value, reason),
            other => panic!("{other}"),
        };
        let mut dns = service("shop", "dns", 80, 15000, TrafficType::Udp, &[]);
        dns.splits = vec![split("dns-v2")];
        let dns2 = service("shop", "dns-v2", 80, 15001, TrafficType::Udp, &[]);
        assert_eq!(
            refused(vec![dns, dns2]),
            (
                "shop/dns:80".into(),
                "splits[0]".into(),
                "shop/canary".into(),
                SplitError::UdpRoot.to_string()
            )
        );
        let mut db = service("shop", "db", 80, 10000, TrafficType::Tcp, &[]);
        db.splits = vec![split("web")];
        let web = service("shop", "web", 80, 5000, TrafficType::Http, &[]);
        let (svc, field, value, reason) = refused(vec![db, web]);
        assert_eq!(
            (svc.as_str(), field.as_str(), value.as_str()),
            ("shop/db:80", "splits[0].backends[0]", "shop/web:80")
        );
        assert_eq!(reason, "backend is http but the root is tcp");
    }

    #[test]
    fn weights_are_0_to_a_million() {
        assert_eq!(check_weight(0u32), Ok(0));
        assert_eq!(check_weight(MAX_WEIGHT), Ok(MAX_WEIGHT));
        assert_eq!(
            check_weight(MAX_WEIGHT + 1).unwrap_err().to_string(),
            "invalid value 1000001: expected an integer from 0 to 1000000"
        );
        assert_eq!(check_weight(-1i64).unwrap_err().value, "-1");
        assert!(check_weight(i64::MAX).is_err());
    }
}

//! The order of route matches on one service port, as the Gateway API specification sets it
//! (HTTPRouteRule, "matches"): across every rule of every route attached to the port,
//!
//! 1. an `Exact` path match first, then a `RegularExpression` path (the specification leaves
//!    its rank to the implementation; Maille puts it after exact and before every prefix,
//!    longer expressions first), then `PathPrefix` matches, the longest prefix first (a match
//!    without a path is a `/` prefix);
//! 2. then a match with a method before one without;
//! 3. then the most header conditions;
//! 4. then the most query parameter conditions;
//! 5. ties across routes: the oldest route (creation timestamp; an object without one, as in
//!    a manifests folder, after those with one), then `namespace/name` in alphabetical order
//!    (HTTPRoute before GRPCRoute of the same name);
//! 6. ties within a route: the first rule, then the first match, in list order.
//!
//! The proxy takes the first entry that fits a request, so sorting by [`Rank`] is the whole
//! of precedence.

use std::cmp::Reverse;

/// How a path condition ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathClass {
    /// `Exact`.
    Exact,
    /// `RegularExpression`.
    Regex,
    /// `PathPrefix` (or no path).
    Prefix,
}

/// Which kind of route a match comes from (the last tie-break between two routes of the same
/// name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKindRank {
    /// HTTPRoute.
    Http,
    /// GRPCRoute.
    Grpc,
}

/// The sort key of one match: smaller ranks first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rank {
    class: PathClass,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query: Reverse<usize>,
    /// `(no timestamp, RFC 3339 timestamp)`: timestamps of the API server (UTC, `Z`, whole
    /// seconds) sort as strings.
    created: (bool, String),
    namespace: String,
    name: String,
    kind: RouteKindRank,
    rule: usize,
    index: usize,
}

/// What [`Rank::new`] reads of a match.
#[derive(Clone, Copy, Debug)]
pub struct MatchShape {
    /// Path class.
    pub class: PathClass,
    /// Length of the path value (characters).
    pub path_len: usize,
    /// Whether a method is set.
    pub method: bool,
    /// Number of header conditions.
    pub headers: usize,
    /// Number of query parameter conditions.
    pub query: usize,
}

/// Where a match comes from.
#[derive(Clone, Copy, Debug)]
pub struct MatchOrigin<'a> {
    /// Route kind.
    pub kind: RouteKindRank,
    /// Route namespace.
    pub namespace: &'a str,
    /// Route name.
    pub name: &'a str,
    /// Creation timestamp of the route, RFC 3339, if it has one.
    pub created: Option<&'a str>,
    /// Rule index in the route.
    pub rule: usize,
    /// Match index in the rule.
    pub index: usize,
}

impl Rank {
    /// The rank of a match of this shape from this origin.
    pub fn new(shape: MatchShape, origin: MatchOrigin<'_>) -> Self {
        Rank {
            class: shape.class,
            path_len: Reverse(shape.path_len),
            no_method: !shape.method,
            headers: Reverse(shape.headers),
            query: Reverse(shape.query),
            created: (
                origin.created.is_none(),
                origin.created.unwrap_or_default().to_string(),
            ),
            namespace: origin.namespace.to_string(),
            name: origin.name.to_string(),
            kind: origin.kind,
            rule: origin.rule,
            index: origin.index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(class: PathClass, path_len: usize) -> MatchShape {
        MatchShape {
            class,
            path_len,
            method: false,
            headers: 0,
            query: 0,
        }
    }

    fn origin(name: &'static str, created: Option<&'static str>) -> MatchOrigin<'static> {
        MatchOrigin {
            kind: RouteKindRank::Http,
            namespace: "shop",
            name,
            created,
            rule: 0,
            index: 0,
        }
    }

    #[test]
    fn path_kind_and_length_come_first() {
        let o = origin("a", None);
        let exact = Rank::new(shape(PathClass::Exact, 2), o);
        let regex = Rank::new(shape(PathClass::Regex, 40), o);
        let long = Rank::new(shape(PathClass::Prefix, 10), o);
        let short = Rank::new(shape(PathClass::Prefix, 4), o);
        let mut all = vec![short.clone(), regex.clone(), long.clone(), exact.clone()];
        all.sort();
        assert_eq!(all, vec![exact, regex, long, short]);
    }

    #[test]
    fn then_method_headers_and_query_params() {
        let o = origin("a", None);
        let base = shape(PathClass::Prefix, 1);
        let method = Rank::new(
            MatchShape {
                method: true,
                ..base
            },
            o,
        );
        let two_headers = Rank::new(MatchShape { headers: 2, ..base }, o);
        let one_header_three_params = Rank::new(
            MatchShape {
                headers: 1,
                query: 3,
                ..base
            },
            o,
        );
        let one_header = Rank::new(MatchShape { headers: 1, ..base }, o);
        let mut all = vec![
            one_header.clone(),
            one_header_three_params.clone(),
            two_headers.clone(),
            method.clone(),
        ];
        all.sort();
        assert_eq!(
            all,
            vec![method, two_headers, one_header_three_params, one_header]
        );
    }

    #[test]
    fn ties_go_to_the_oldest_route_then_the_name_then_list_order() {
        let s = shape(PathClass::Prefix, 1);
        let old = Rank::new(s, origin("zeta", Some("2026-01-01T00:00:00Z")));
        let new = Rank::new(s, origin("alpha", Some("2026-06-01T00:00:00Z")));
        let undated_a = Rank::new(s, origin("alpha", None));
        let undated_b = Rank::new(s, origin("beta", None));
        let second_rule = Rank::new(
            s,
            MatchOrigin {
                rule: 1,
                ..origin("beta", None)
            },
        );
        let mut all = vec![
            second_rule.clone(),
            undated_b.clone(),
            undated_a.clone(),
            new.clone(),
            old.clone(),
        ];
        all.sort();
        assert_eq!(all, vec![old, new, undated_a, undated_b, second_rule]);
    }
}

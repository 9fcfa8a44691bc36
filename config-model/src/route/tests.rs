use proptest::prelude::*;

use super::*;
use crate::testing::{http, service, table};
use crate::wire::TrafficType;
use crate::{Error, Table};

fn entry(route: &str) -> RouteSpec {
    RouteSpec {
        route: route.into(),
        ..RouteSpec::default()
    }
}

fn refused(spec: &RouteSpec) -> (String, String, RouteProblem) {
    let e = Route::try_from(spec).unwrap_err();
    (e.field, e.value, e.problem)
}

fn path(kind: PathMatchType, value: &str) -> RouteMatchSpec {
    RouteMatchSpec {
        path: Some(PathMatchSpec {
            kind,
            value: value.into(),
        }),
        ..RouteMatchSpec::default()
    }
}

fn value(name: &str, kind: ValueMatchType, value: &str) -> ValueMatchSpec {
    ValueMatchSpec {
        name: name.into(),
        kind,
        value: value.into(),
    }
}

fn header(name: &str, value: &str) -> HeaderSpec {
    HeaderSpec {
        name: name.into(),
        value: value.into(),
    }
}

/// The JSON the controller writes and the proxy reads, every field of the contract once.
const FULL: &str = r#"{
  "route": "shop/web-canary", "kind": "grpc", "rule": 2,
  "match": {
    "path": {"type": "pathPrefix", "value": "/api/"},
    "headers": [{"name": "X-User", "type": "regularExpression", "value": "alice|bob"}],
    "queryParams": [{"name": "debug", "value": "1"}],
    "method": "POST"
  },
  "filters": [
    {"type": "RequestHeaderModifier", "set": [{"name": "X-A", "value": "1"}],
     "add": [{"name": "x-b", "value": "2"}], "remove": ["X-C"]},
    {"type": "ResponseHeaderModifier", "add": [{"name": "x-served-by", "value": "maille"}]},
    {"type": "URLRewrite", "hostname": "web.shop", "path": {"type": "replacePrefixMatch", "value": "/v2"}}
  ],
  "backends": [{"namespace": "shop", "name": "web", "port": 80, "weight": 90},
               {"namespace": "shop", "name": "web-v2", "port": 80, "weight": 10}],
  "unresolvedWeight": 5,
  "timeouts": {"requestMs": 2000, "backendRequestMs": 500},
  "retry": {"attempts": 2, "codes": [503, 502, 503], "backoffMs": 50}
}"#;

#[test]
fn the_wire_form_reads_every_field_and_round_trips() {
    let spec: RouteSpec = serde_json::from_str(FULL).unwrap();
    assert_eq!(spec.kind, RouteKind::Grpc);
    assert_eq!(spec.matches.query_params[0].kind, ValueMatchType::Exact);
    assert_eq!(spec.unresolved_weight, 5);
    let again: RouteSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);
    let r = Route::try_from(&spec).unwrap();
    assert_eq!(r.matches.headers[0].name, "x-user");
    assert_eq!(
        r.matches.prefix_len(),
        Some(4),
        "trailing / of a prefix ignored"
    );
    let req = r.filters.request_headers.as_ref().unwrap();
    assert_eq!(req.set, [("x-a".to_string(), "1".to_string())]);
    assert_eq!(req.remove, ["x-c"]);
    assert_eq!(
        r.filters.rewrite.as_ref().unwrap().path,
        Some(PathModifier::Prefix("/v2".into()))
    );
    assert_eq!(r.total_weight(), 105);
    assert_eq!(r.timeouts.backend_request_ms, Some(500));
    assert_eq!(r.retry.as_ref().unwrap().codes, [502, 503]);
    // An entry with only its route fits everything and goes to the parent.
    let min: RouteSpec = serde_json::from_str(r#"{"route": "a/b"}"#).unwrap();
    assert_eq!(
        serde_json::to_string(&min).unwrap(),
        r#"{"route":"a/b","kind":"http","rule":0,"match":{}}"#
    );
    let r = Route::try_from(&min).unwrap();
    assert!(r.matches.fits("GET", "/anything", None, |_| None));
    assert!(r.backends.is_empty());
    // A table without routes is written as before.
    let svc = http("shop", "web", 5000, &[]);
    assert!(!serde_json::to_string(&svc).unwrap().contains("routes"));
}

#[test]
fn prefixes_match_element_by_element() {
    let m = |v: &str| RouteMatch::new(&path(PathMatchType::PathPrefix, v)).unwrap();
    let fits = |m: &RouteMatch, p: &str| m.fits("GET", p, None, |_| None);
    let foo = m("/foo");
    assert!(fits(&foo, "/foo"));
    assert!(fits(&foo, "/foo/"));
    assert!(fits(&foo, "/foo/bar"));
    assert!(!fits(&foo, "/foobar"));
    assert!(!fits(&foo, "/fo"));
    assert!(!fits(&foo, "/"));
    let slash = m("/foo/");
    assert!(fits(&slash, "/foo"), "a trailing / is ignored");
    assert!(!fits(&slash, "/foobar"));
    let root = m("/");
    assert!(fits(&root, "/"));
    assert!(fits(&root, "/anything/at/all"));
    let exact = RouteMatch::new(&path(PathMatchType::Exact, "/foo")).unwrap();
    assert!(fits(&exact, "/foo"));
    assert!(!fits(&exact, "/foo/"));
    let re = RouteMatch::new(&path(PathMatchType::RegularExpression, "/v[0-9]+/.*")).unwrap();
    assert!(fits(&re, "/v2/x"));
    assert!(!fits(&re, "/api/v2/x"), "regexes are anchored");
}

#[test]
fn headers_query_params_and_method_are_anded() {
    let spec = RouteMatchSpec {
        headers: vec![
            value("X-Env", ValueMatchType::Exact, "canary"),
            value("x-user", ValueMatchType::RegularExpression, "a.*"),
        ],
        query_params: vec![value("v", ValueMatchType::Exact, "2")],
        method: Some("GET".into()),
        ..RouteMatchSpec::default()
    };
    let m = RouteMatch::new(&spec).unwrap();
    let hs = |env: &'static str| {
        move |n: &str| match n {
            "x-env" => Some(env),
            "x-user" => Some("ann"),
            _ => None,
        }
    };
    assert!(m.fits("GET", "/", Some("a=1&v=2"), hs("canary")));
    assert!(
        !m.fits("GET", "/", Some("a=1&v=2"), hs("Canary")),
        "values are case-sensitive"
    );
    assert!(!m.fits("POST", "/", Some("v=2"), hs("canary")));
    assert!(
        !m.fits("GET", "/", Some("v=3&v=2"), hs("canary")),
        "the first v counts"
    );
    assert!(!m.fits("GET", "/", None, hs("canary")));
    assert!(!m.fits("GET", "/", Some("v=2"), |_| None));
    assert_eq!(query_param(Some("a&b=&c=3"), "a"), Some(""));
    assert_eq!(query_param(Some("a&b=&c=3"), "c"), Some("3"));
    assert_eq!(query_param(Some("ab=1"), "a"), None);
}

#[test]
fn prefix_replacement_keeps_what_follows_the_prefix() {
    let p = |v: &str| PathModifier::Prefix(v.trim_end_matches('/').into());
    assert_eq!(p("/bar").apply("/foo/x", 4), "/bar/x");
    assert_eq!(p("/bar").apply("/foo", 4), "/bar");
    assert_eq!(p("/").apply("/foo/x", 4), "/x");
    assert_eq!(p("/").apply("/foo", 4), "/");
    assert_eq!(p("/bar/").apply("/foo/", 4), "/bar/");
    assert_eq!(p("/bar").apply("/x", 0), "/bar/x", "a / prefix replaced");
    assert_eq!(PathModifier::Full("/new".into()).apply("/foo/x", 4), "/new");
}

#[test]
fn each_rule_names_its_field() {
    let cases: Vec<(RouteSpec, &str, RouteProblem)> = vec![
        (entry("no-slash"), "route", RouteProblem::RouteName),
        (entry("Shop/web"), "route", RouteProblem::RouteName),
        (
            RouteSpec {
                matches: path(PathMatchType::Exact, "relative"),
                ..entry("a/b")
            },
            "match.path.value",
            RouteProblem::Path,
        ),
        (
            RouteSpec {
                matches: path(PathMatchType::PathPrefix, "/a?b"),
                ..entry("a/b")
            },
            "match.path.value",
            RouteProblem::Path,
        ),
        (
            RouteSpec {
                matches: RouteMatchSpec {
                    headers: vec![value("bad name", ValueMatchType::Exact, "x")],
                    ..RouteMatchSpec::default()
                },
                ..entry("a/b")
            },
            "match.headers[0].name",
            RouteProblem::HeaderName,
        ),
        (
            RouteSpec {
                matches: RouteMatchSpec {
                    query_params: vec![value("a=b", ValueMatchType::Exact, "x")],
                    ..RouteMatchSpec::default()
                },
                ..entry("a/b")
            },
            "match.queryParams[0].name",
            RouteProblem::QueryName,
        ),
        (
            RouteSpec {
                matches: RouteMatchSpec {
                    method: Some("get".into()),
                    ..RouteMatchSpec::default()
                },
                ..entry("a/b")
            },
            "match.method",
            RouteProblem::Method,
        ),
        (
            RouteSpec {
                filters: vec![RouteFilterSpec::RequestHeaderModifier(HeaderModifierSpec {
                    add: vec![header("x-ok", "1"), header("x-evil", "a\r\nset-cookie: x")],
                    ..HeaderModifierSpec::default()
                })],
                ..entry("a/b")
            },
            "filters[0].add[1].value",
            RouteProblem::HeaderValue,
        ),
        (
            RouteSpec {
                filters: vec![RouteFilterSpec::ResponseHeaderModifier(
                    HeaderModifierSpec {
                        remove: vec!["Content-Length".into()],
                        ..HeaderModifierSpec::default()
                    },
                )],
                ..entry("a/b")
            },
            "filters[0].remove[0]",
            RouteProblem::ReservedHeader,
        ),
        (
            RouteSpec {
                filters: vec![RouteFilterSpec::RequestRedirect(RequestRedirectSpec {
                    status_code: Some(200),
                    ..RequestRedirectSpec::default()
                })],
                ..entry("a/b")
            },
            "filters[0].statusCode",
            RouteProblem::RedirectStatus,
        ),
        (
            RouteSpec {
                filters: vec![RouteFilterSpec::RequestRedirect(RequestRedirectSpec {
                    scheme: Some("ftp".into()),
                    ..RequestRedirectSpec::default()
                })],
                ..entry("a/b")
            },
            "filters[0].scheme",
            RouteProblem::Scheme,
        ),
        (
            RouteSpec {
                filters: vec![RouteFilterSpec::RequestRedirect(RequestRedirectSpec {
                    hostname: Some("Not_A.Host".into()),
                    ..RequestRedirectSpec::default()
                })],
                ..entry("a/b")
            },
            "filters[0].hostname",
            RouteProblem::Hostname,
        ),
        (
            RouteSpec {
                filters: vec![RouteFilterSpec::RequestRedirect(RequestRedirectSpec {
                    port: Some(0),
                    ..RequestRedirectSpec::default()
                })],
                ..entry("a/b")
            },
            "filters[0].port",
            RouteProblem::Port,
        ),
        (
            RouteSpec {
                matches: path(PathMatchType::Exact, "/x"),
                filters: vec![RouteFilterSpec::UrlRewrite(UrlRewriteSpec {
                    path: Some(PathModifierSpec {
                        kind: PathModifierType::ReplacePrefixMatch,
                        value: "/y".into(),
                    }),
                    ..UrlRewriteSpec::default()
                })],
                ..entry("a/b")
            },
            "filters[0].path.type",
            RouteProblem::PrefixWithoutPrefixMatch,
        ),
        (
            RouteSpec {
                filters: vec![
                    RouteFilterSpec::UrlRewrite(UrlRewriteSpec::default()),
                    RouteFilterSpec::RequestRedirect(RequestRedirectSpec::default()),
                ],
                ..entry("a/b")
            },
            "filters[1]",
            RouteProblem::RedirectWithRewrite,
        ),
        (
            RouteSpec {
                filters: vec![
                    RouteFilterSpec::RequestHeaderModifier(HeaderModifierSpec::default()),
                    RouteFilterSpec::RequestHeaderModifier(HeaderModifierSpec::default()),
                ],
                ..entry("a/b")
            },
            "filters[1]",
            RouteProblem::DuplicateFilter,
        ),
        (
            RouteSpec {
                backends: vec![crate::SplitBackendSpec {
                    namespace: "a".into(),
                    name: "b".into(),
                    port: 80,
                    weight: 1_000_001,
                }],
                ..entry("a/b")
            },
            "backends[0].weight",
            RouteProblem::Weight,
        ),
        (
            RouteSpec {
                timeouts: Some(RouteTimeoutsSpec {
                    request_ms: Some(100),
                    backend_request_ms: Some(200),
                }),
                ..entry("a/b")
            },
            "timeouts.backendRequestMs",
            RouteProblem::BackendTimeoutOverRequest,
        ),
        (
            RouteSpec {
                timeouts: Some(RouteTimeoutsSpec {
                    request_ms: Some(u64::MAX),
                    backend_request_ms: None,
                }),
                ..entry("a/b")
            },
            "timeouts.requestMs",
            RouteProblem::Duration,
        ),
        (
            RouteSpec {
                retry: Some(RouteRetrySpec {
                    attempts: 1,
                    codes: vec![503, 200],
                    backoff_ms: None,
                }),
                ..entry("a/b")
            },
            "retry.codes[1]",
            RouteProblem::RetryCode,
        ),
        (
            RouteSpec {
                retry: Some(RouteRetrySpec {
                    attempts: 101,
                    ..RouteRetrySpec::default()
                }),
                ..entry("a/b")
            },
            "retry.attempts",
            RouteProblem::RetryAttempts,
        ),
    ];
    for (spec, field, problem) in cases {
        let (f, _, p) = refused(&spec);
        assert_eq!((f.as_str(), p), (field, problem), "{spec:?}");
    }
    // Timeouts of 0 mean none, as the Gateway API's "0s".
    let zero = RouteSpec {
        timeouts: Some(RouteTimeoutsSpec {
            request_ms: Some(0),
            backend_request_ms: Some(0),
        }),
        ..entry("a/b")
    };
    assert_eq!(
        Route::try_from(&zero).unwrap().timeouts,
        RouteTimeouts::default()
    );
    let e = Route::try_from(&entry("Shop/web")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "route: invalid value \"Shop/web\": expected namespace/name of the route"
    );
}

#[test]
fn bounds_of_the_contract_hold() {
    let many = |n: usize| {
        (0..n)
            .map(|i| value(&format!("x-{i}"), ValueMatchType::Exact, "v"))
            .collect::<Vec<_>>()
    };
    let with_headers = |n| RouteSpec {
        matches: RouteMatchSpec {
            headers: many(n),
            ..RouteMatchSpec::default()
        },
        ..entry("a/b")
    };
    assert!(Route::try_from(&with_headers(MAX_VALUE_MATCHES)).is_ok());
    assert_eq!(
        refused(&with_headers(MAX_VALUE_MATCHES + 1)).2,
        RouteProblem::TooMany { found: 17, max: 16 }
    );
    let with_query = RouteSpec {
        matches: RouteMatchSpec {
            query_params: many(MAX_VALUE_MATCHES + 1),
            ..RouteMatchSpec::default()
        },
        ..entry("a/b")
    };
    assert_eq!(refused(&with_query).0, "match.queryParams");
    // Regexes: 1 KiB of source, compiled within the size limit.
    let re = |v: String| RouteSpec {
        matches: path(PathMatchType::RegularExpression, &v),
        ..entry("a/b")
    };
    assert!(Route::try_from(&re("a".repeat(MAX_REGEX_LEN))).is_ok());
    let (field, quoted, problem) = refused(&re("a".repeat(MAX_REGEX_LEN + 1)));
    assert_eq!(
        (field.as_str(), problem),
        ("match.path.value", RouteProblem::TooLong { max: 1024 })
    );
    assert!(quoted.len() < 200, "the value is quoted cut");
    let (_, _, problem) = refused(&re("(?:a{1000}){1000}".into()));
    assert!(matches!(problem, RouteProblem::Regex(_)), "{problem:?}");
    let (_, _, problem) = refused(&re("\\w{100}\\w{100}\\w{100}".into()));
    assert!(
        matches!(problem, RouteProblem::Regex(_)),
        "unicode classes blow the size limit: {problem:?}"
    );
    // Header values: 4 KiB, to match and to set.
    let val = |n: usize| RouteSpec {
        matches: RouteMatchSpec {
            headers: vec![value("x", ValueMatchType::Exact, &"v".repeat(n))],
            ..RouteMatchSpec::default()
        },
        ..entry("a/b")
    };
    assert!(Route::try_from(&val(MAX_HEADER_VALUE_LEN)).is_ok());
    assert_eq!(
        refused(&val(MAX_HEADER_VALUE_LEN + 1)).2,
        RouteProblem::TooLong { max: 4096 }
    );
    let set = RouteSpec {
        filters: vec![RouteFilterSpec::RequestHeaderModifier(HeaderModifierSpec {
            set: vec![header("x", &"v".repeat(MAX_HEADER_VALUE_LEN + 1))],
            ..HeaderModifierSpec::default()
        })],
        ..entry("a/b")
    };
    assert_eq!(refused(&set).0, "filters[0].set[0].value");
    assert_eq!(check_route_entries("a/b", MAX_MATCHES_PER_ROUTE), Ok(()));
    assert_eq!(
        check_route_entries("a/b", MAX_MATCHES_PER_ROUTE + 1)
            .unwrap_err()
            .to_string(),
        "route: invalid value \"a/b\": the route puts 65 matches on this service port; at most 64"
    );
    assert_eq!(
        Route::try_from(&with_headers(MAX_VALUE_MATCHES + 1))
            .unwrap_err()
            .to_string(),
        "match.headers: invalid value \"17 items\": expected at most 16"
    );
}

#[test]
fn the_table_checks_routes_and_resolves_their_backends() {
    let backend = |name: &str, weight| crate::SplitBackendSpec {
        namespace: "shop".into(),
        name: name.into(),
        port: 80,
        weight,
    };
    let mut web = http("shop", "web", 5000, &["10.0.0.1:80"]);
    let v2 = http("shop", "web-v2", 5000, &["10.0.0.2:80"]);
    web.routes = vec![RouteSpec {
        backends: vec![backend("web", 1), backend("web-v2", 3)],
        ..entry("shop/canary")
    }];
    let t = Table::try_from(table(1, vec![web.clone(), v2.clone()])).unwrap();
    let id = t.service(&"shop/web:80".parse_key()).unwrap();
    let names: Vec<_> = t
        .route_targets(id, 0)
        .iter()
        .map(|b| t[*b].key.name.as_str())
        .collect();
    assert_eq!(names, ["web", "web-v2"], "the parent itself is a backend");
    assert_eq!(t[id].routes[0].total_weight(), 4);

    let invalid = |services| match Table::try_from(table(1, services)).unwrap_err() {
        Error::InvalidField { field, reason, .. } => (field, reason),
        other => panic!("{other}"),
    };
    let mut missing = web.clone();
    missing.routes[0].backends.push(backend("gone", 1));
    assert_eq!(
        invalid(vec![missing, v2.clone()]),
        (
            "routes[0].backends[2]".into(),
            "no such service port in the table".into()
        )
    );
    let db = service("shop", "db", 80, 10000, TrafficType::Tcp, &[]);
    let mut to_tcp = web.clone();
    to_tcp.routes[0].backends = vec![backend("db", 1)];
    assert_eq!(invalid(vec![to_tcp, db.clone()]).0, "routes[0].backends[0]");
    let mut tcp_root = db;
    tcp_root.routes = vec![entry("shop/r")];
    let (field, reason) = invalid(vec![tcp_root]);
    assert_eq!(field, "routes");
    assert!(reason.contains("need an http service"), "{reason}");
    let mut bad = web.clone();
    bad.routes.push(RouteSpec {
        matches: path(PathMatchType::Exact, "x"),
        ..entry("shop/canary")
    });
    assert_eq!(
        invalid(vec![bad, v2.clone()]).0,
        "routes[1].match.path.value"
    );
    let mut too_many = web;
    too_many.routes = (0..=MAX_MATCHES_PER_ROUTE)
        .map(|_| entry("shop/canary"))
        .collect();
    too_many.routes.push(entry("shop/other"));
    assert_eq!(invalid(vec![too_many, v2]).0, "routes[64].route");
}

trait ParseKey {
    fn parse_key(&self) -> crate::ServiceKey;
}

impl ParseKey for str {
    fn parse_key(&self) -> crate::ServiceKey {
        let (ns, rest) = self.split_once('/').unwrap();
        let (name, port) = rest.split_once(':').unwrap();
        crate::ServiceKey {
            namespace: ns.into(),
            name: name.into(),
            port: port.parse().unwrap(),
        }
    }
}

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[\\x00-\\x1f\\x7f a-zA-Z0-9/?#%:\\r\\n]{0,64}",
        (1usize..20_000).prop_map(|n| "a".repeat(n)),
        (1usize..200).prop_map(|n| "(".repeat(n)),
        (1usize..100).prop_map(|n| format!("{}{}", "(?:a{100})".repeat(n), "b")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever a hostile table puts in an entry, the constructor answers (no panic), an error
    /// quotes a bounded value, and an accepted entry keeps to the bounds.
    #[test]
    fn hostile_entries_are_refused_bounded_or_kept_in_bounds(
        route in hostile_string(),
        p in hostile_string(),
        kind in prop_oneof![Just(PathMatchType::Exact), Just(PathMatchType::PathPrefix), Just(PathMatchType::RegularExpression)],
        hname in hostile_string(),
        hvalue in hostile_string(),
        regex in any::<bool>(),
        status in any::<u16>(),
        code in any::<u16>(),
        ms in any::<u64>(),
    ) {
        let spec = RouteSpec {
            route: if route.len() % 2 == 0 { "a/b".into() } else { route },
            matches: RouteMatchSpec {
                path: Some(PathMatchSpec { kind, value: p }),
                headers: vec![value(&hname, if regex { ValueMatchType::RegularExpression } else { ValueMatchType::Exact }, &hvalue)],
                ..RouteMatchSpec::default()
            },
            filters: vec![
                RouteFilterSpec::ResponseHeaderModifier(HeaderModifierSpec {
                    set: vec![header(&hname, &hvalue)],
                    ..HeaderModifierSpec::default()
                }),
                RouteFilterSpec::RequestRedirect(RequestRedirectSpec { status_code: Some(status), ..RequestRedirectSpec::default() }),
            ],
            timeouts: Some(RouteTimeoutsSpec { request_ms: Some(ms), backend_request_ms: None }),
            retry: Some(RouteRetrySpec { attempts: 1, codes: vec![code], backoff_ms: None }),
            ..RouteSpec::default()
        };
        match Route::try_from(&spec) {
            Err(e) => {
                prop_assert!(e.to_string().len() < 1024, "{} bytes", e.to_string().len());
            }
            Ok(r) => {
                if let Some(v) = r.filters.response_headers.as_ref().map(|h| &h.set[0].1) {
                    prop_assert!(v.len() <= MAX_HEADER_VALUE_LEN);
                    prop_assert!(!v.contains('\r') && !v.contains('\n'));
                }
                prop_assert!([301, 302, 303, 307, 308].contains(&r.filters.redirect.unwrap().status));
                prop_assert!(r.timeouts.request_ms.is_none_or(|m| m <= MAX_DURATION_MS));
                prop_assert!((400..=599).contains(&r.retry.unwrap().codes[0]));
                prop_assert!(r.route.len() <= MAX_ROUTE_NAME_LEN);
            }
        }
    }

    /// A table JSON with hostile route entries is refused or accepted, never a panic.
    #[test]
    fn hostile_route_json_never_panics(v in hostile_string(), depth in 1usize..200) {
        let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        for route in [
            format!(r#"{{"route":"a/b","match":{{"path":{{"type":"regularExpression","value":{}}}}}}}"#, serde_json::to_string(&v).unwrap()),
            format!(r#"{{"route":"a/b","match":{{"headers":[{{"name":{},"value":"x"}}]}}}}"#, serde_json::to_string(&v).unwrap()),
            format!(r#"{{"route":"a/b","filters":[{{"type":"RequestRedirect","statusCode":{nested}}}]}}"#),
            r#"{"route":"a/b","filters":[{"type":"Mirror"}]}"#.to_string(),
        ] {
            let json = format!(
                r#"{{"schemaVersion":1,"services":[{{"namespace":"a","name":"b","port":80,"meshPort":5000,"routes":[{route}]}}]}}"#
            );
            if let Err(e) = Table::from_json(json.as_bytes()) {
                let _ = e.to_string();
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// A prefix fits a path exactly when its segments are the path's first segments (the
    /// Gateway API's element-wise rule), and replacing the matched prefix keeps what follows
    /// it and always gives an absolute path.
    #[test]
    fn prefixes_fit_by_segments_and_replacement_keeps_the_rest(
        prefix in proptest::collection::vec("[ab]{1,2}", 0..4),
        path in proptest::collection::vec("[ab]{1,2}", 0..5),
        slash in any::<bool>(),
        trailing in any::<bool>(),
        replacement in proptest::collection::vec("[xy]{1,2}", 0..3),
    ) {
        let p = format!("/{}{}", prefix.join("/"), if slash && !prefix.is_empty() { "/" } else { "" });
        let full = format!("/{}{}", path.join("/"), if trailing && !path.is_empty() { "/" } else { "" });
        let m = RouteMatch::new(&RouteMatchSpec {
            path: Some(PathMatchSpec { kind: PathMatchType::PathPrefix, value: p.clone() }),
            ..RouteMatchSpec::default()
        }).unwrap();
        let expected = path.len() >= prefix.len() && path[..prefix.len()] == prefix[..];
        prop_assert_eq!(m.fits("GET", &full, None, |_| None), expected, "{} on {}", p, full);
        if expected {
            let to = format!("/{}", replacement.join("/"));
            let out = PathModifier::Prefix(to.trim_end_matches('/').into())
                .apply(&full, m.prefix_len().unwrap());
            prop_assert!(out.starts_with('/'), "{}", out);
            let rest: Vec<_> = out.trim_start_matches('/').split('/').filter(|s| !s.is_empty()).collect();
            let want: Vec<_> = replacement.iter().chain(&path[prefix.len()..]).map(String::as_str).collect();
            prop_assert_eq!(rest, want, "{} -> {}", full, out);
        }
    }
}

//! HTTPRoutes and GRPCRoutes to route entries: each route is read into one entry per match
//! (GRPCRoute service/method matches become path matches), every entry checked with the
//! table's own rule (`config_model::Route::try_from`), its backends resolved against the meshed
//! service ports, then attached to the service ports its Service parentRefs name and sorted by
//! the specification's precedence ([`super::precedence`]). A route that cannot be honoured is
//! left out whole, and every parentRef gets the outcome its status reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use config_model::route::{
    check_route_entries, HeaderModifierSpec, HeaderSpec, PathMatchSpec, PathMatchType,
    PathModifierSpec, PathModifierType, RequestRedirectSpec, RouteFilterSpec,
    RouteKind as WireKind, RouteMatchSpec, RouteRetrySpec, RouteSpec, RouteTimeoutsSpec,
    UrlRewriteSpec, ValueMatchSpec, ValueMatchType,
};
use config_model::{Route, ServiceKey, ServiceSpec, SplitBackendSpec, TrafficType};
use kube::ResourceExt;

use super::crd::{
    limits, BackendRef, GRPCMethodMatch, GRPCRoute, HTTPRoute, HTTPRouteFilter, HTTPRouteRetry,
    HTTPRouteTimeouts, HeaderModifier, ParentReference, PathModifier, ValueMatch,
};
use super::precedence::{MatchOrigin, MatchShape, PathClass, Rank, RouteKindRank};
use super::status::{reason, ParentOutcome, RouteKey, RouteKind, RouteOutcome, Verdict};
use super::GatewayObjects;

/// A Service's namespace and name.
pub type Name = (String, String);

/// What the routes add to the table, and what each route's status says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attached {
    /// Route entries per service port, in precedence order.
    pub routes: BTreeMap<ServiceKey, Vec<RouteSpec>>,
    /// One outcome per route that names a Service parent, by route.
    pub outcomes: BTreeMap<RouteKey, RouteOutcome>,
}

/// The Services routes name (as parents or backends), whatever their state: a change to any
/// other Service cannot change what routes give.
pub fn referenced(objects: &GatewayObjects) -> BTreeSet<Name> {
    let mut out = BTreeSet::new();
    let mut add = |route_ns: &str,
                   parents: &[ParentReference],
                   backends: &mut dyn Iterator<Item = &BackendRef>| {
        for p in parents.iter().filter(|p| is_service_parent(p)) {
            out.insert((
                p.namespace.clone().unwrap_or_else(|| route_ns.to_string()),
                p.name.clone(),
            ));
        }
        for b in backends {
            out.insert((
                b.namespace.clone().unwrap_or_else(|| route_ns.to_string()),
                b.name.clone(),
            ));
        }
    };
    for r in &objects.http_routes {
        let ns = r.namespace().unwrap_or_default();
        add(
            &ns,
            &r.spec.parent_refs,
            &mut r.spec.rules.iter().flat_map(|x| &x.backend_refs),
        );
    }
    for r in &objects.grpc_routes {
        let ns = r.namespace().unwrap_or_default();
        add(
            &ns,
            &r.spec.parent_refs,
            &mut r.spec.rules.iter().flat_map(|x| &x.backend_refs),
        );
    }
    out
}

/// Whether a parentRef names a core Service (the mesh profile); others belong to other
/// controllers.
pub fn is_service_parent(p: &ParentReference) -> bool {
    p.group.as_deref() == Some("") && p.kind.as_deref() == Some("Service")
}

/// Attaches every route to the service ports `ports` gives for a Service (the meshed ports,
/// mesh ports assigned; `None` for a Service not in the mesh).
pub fn attach<'a>(
    objects: &GatewayObjects,
    ports: impl Fn(&Name) -> Option<&'a [ServiceSpec]>,
) -> Attached {
    let mut ranked: BTreeMap<ServiceKey, Vec<(Rank, RouteSpec)>> = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    let routes = objects
        .http_routes
        .iter()
        .map(|r| read_http(r))
        .chain(objects.grpc_routes.iter().map(|r| read_grpc(r)));
    for route in routes {
        if let Some(outcome) = attach_one(&route, &ports, &mut ranked) {
            outcomes.insert(outcome.key.clone(), outcome);
        }
    }
    let routes = ranked
        .into_iter()
        .map(|(key, mut entries)| {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            (key, entries.into_iter().map(|(_, e)| e).collect())
        })
        .collect();
    Attached { routes, outcomes }
}

/// A route of either kind, read into entries (or refused, with why).
struct Read<'r> {
    key: RouteKey,
    generation: Option<i64>,
    created: Option<String>,
    parents: &'r [ParentReference],
    /// The entries with their shapes and their rule's backendRefs; an error message (naming
    /// the field) when the route cannot be honoured.
    entries: Result<Vec<Entry<'r>>, String>,
}

struct Entry<'r> {
    spec: RouteSpec,
    shape: MatchShape,
    index: usize,
    backend_refs: &'r [BackendRef],
}

fn key_of(kind: RouteKind, r: &impl ResourceExt) -> RouteKey {
    RouteKey {
        kind,
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
        uid: r.uid().unwrap_or_default(),
    }
}

fn created(r: &impl ResourceExt) -> Option<String> {
    r.creation_timestamp().map(|t| t.0.to_string())
}

fn too_many(field: &str, found: usize, max: usize) -> Result<(), String> {
    if found > max {
        return Err(format!("{field}: {found} items, at most {max} are allowed"));
    }
    Ok(())
}

/// A route of either kind read: its key, generation, creation time and parents, and the
/// entries `entries` reads from it.
fn read<'r, R: ResourceExt>(
    kind: RouteKind,
    r: &'r R,
    parents: &'r [ParentReference],
    entries: fn(&'r R, &str) -> Result<Vec<Entry<'r>>, String>,
) -> Read<'r> {
    let key = key_of(kind, r);
    let name = format!("{}/{}", key.namespace, key.name);
    Read {
        generation: r.meta().generation,
        created: created(r),
        parents,
        entries: entries(r, &name),
        key,
    }
}

fn read_http(r: &Arc<HTTPRoute>) -> Read<'_> {
    read(RouteKind::Http, &**r, &r.spec.parent_refs, http_entries)
}

/// The bounds of a route's spec, either kind, checked before its rules are read.
fn check_spec(parent_refs: usize, rules: usize) -> Result<(), String> {
    too_many("spec.parentRefs", parent_refs, limits::PARENT_REFS)?;
    too_many("spec.rules", rules, limits::RULES)
}

/// What every rule of either kind must keep (`at` is `spec.rules[i]`), checked before its
/// matches and filters are read: their counts, no session persistence, its backendRefs.
fn check_rule(
    at: &str,
    matches: usize,
    filters: usize,
    session_persistence: bool,
    backend_refs: &[BackendRef],
) -> Result<(), String> {
    too_many(&format!("{at}.matches"), matches, limits::MATCHES)?;
    if session_persistence {
        return Err(format!("{at}.sessionPersistence: not supported"));
    }
    too_many(&format!("{at}.filters"), filters, limits::FILTERS)?;
    check_backend_refs(backend_refs, at)
}

fn http_entries<'r>(r: &'r HTTPRoute, route: &str) -> Result<Vec<Entry<'r>>, String> {
    let spec = &r.spec;
    check_spec(spec.parent_refs.len(), spec.rules.len())?;
    let mut out = Vec::new();
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        check_rule(
            &at,
            rule.matches.len(),
            rule.filters.len(),
            rule.session_persistence.is_some(),
            &rule.backend_refs,
        )?;
        let filters = rule
            .filters
            .iter()
            .enumerate()
            .map(|(j, f)| http_filter(f, &format!("{at}.filters[{j}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let timeouts = rule
            .timeouts
            .as_ref()
            .map(|t| timeouts(t, &format!("{at}.timeouts")))
            .transpose()?
            .flatten();
        let retry = rule
            .retry
            .as_ref()
            .map(|t| retry(t, &format!("{at}.retry")))
            .transpose()?;
        let default_match = [super::crd::HTTPRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default_match[..]
        } else {
            &rule.matches[..]
        };
        for (j, m) in matches.iter().enumerate() {
            let at = format!("{at}.matches[{j}]");
            too_many(
                &format!("{at}.headers"),
                m.headers.len(),
                limits::CONDITIONS,
            )?;
            too_many(
                &format!("{at}.queryParams"),
                m.query_params.len(),
                limits::CONDITIONS,
            )?;
            let path = m.path.clone().unwrap_or_default();
            let (kind, class) = match path.type_.as_str() {
                "Exact" => (PathMatchType::Exact, PathClass::Exact),
                "PathPrefix" => (PathMatchType::PathPrefix, PathClass::Prefix),
                "RegularExpression" => (PathMatchType::RegularExpression, PathClass::Regex),
                other => return Err(unsupported(&format!("{at}.path.type"), other)),
            };
            let matches = RouteMatchSpec {
                path: Some(PathMatchSpec {
                    kind,
                    value: path.value.clone(),
                }),
                headers: value_matches(&m.headers, &format!("{at}.headers"))?,
                query_params: value_matches(&m.query_params, &format!("{at}.queryParams"))?,
                method: m.method.clone(),
            };
            let shape = MatchShape {
                class,
                path_len: path.value.chars().count(),
                method: m.method.is_some(),
                headers: m.headers.len(),
                query: m.query_params.len(),
            };
            out.push(Entry {
                spec: RouteSpec {
                    route: route.to_string(),
                    kind: WireKind::Http,
                    rule: i as u32,
                    matches,
                    filters: filters.clone(),
                    backends: Vec::new(),
                    unresolved_weight: 0,
                    timeouts,
                    retry: retry.clone(),
                },
                shape,
                index: j,
                backend_refs: &rule.backend_refs,
            });
        }
    }
    if spec.rules.is_empty() {
        // No rules: the CRD's default, one rule sending everything to the parent.
        out.push(Entry {
            spec: RouteSpec {
                route: route.to_string(),
                kind: WireKind::Http,
                matches: RouteMatchSpec {
                    path: Some(PathMatchSpec {
                        kind: PathMatchType::PathPrefix,
                        value: "/".into(),
                    }),
                    ..RouteMatchSpec::default()
                },
                ..RouteSpec::default()
            },
            shape: MatchShape {
                class: PathClass::Prefix,
                path_len: 1,
                method: false,
                headers: 0,
                query: 0,
            },
            index: 0,
            backend_refs: &[],
        });
    }
    Ok(out)
}

fn read_grpc(r: &Arc<GRPCRoute>) -> Read<'_> {
    read(RouteKind::Grpc, &**r, &r.spec.parent_refs, grpc_entries)
}

fn grpc_entries<'r>(r: &'r GRPCRoute, route: &str) -> Result<Vec<Entry<'r>>, String> {
    let spec = &r.spec;
    check_spec(spec.parent_refs.len(), spec.rules.len())?;
    let mut out = Vec::new();
    let everything = [super::crd::GRPCRouteMatch::default()];
    let default_rule = [super::crd::GRPCRouteRule::default()];
    let rules = if spec.rules.is_empty() {
        &default_rule[..]
    } else {
        &spec.rules[..]
    };
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        check_rule(
            &at,
            rule.matches.len(),
            rule.filters.len(),
            rule.session_persistence.is_some(),
            &rule.backend_refs,
        )?;
        let filters = rule
            .filters
            .iter()
            .enumerate()
            .map(|(j, f)| {
                let field = format!("{at}.filters[{j}]");
                match f.type_.as_str() {
                    "RequestHeaderModifier" | "ResponseHeaderModifier" => http_filter(f, &field),
                    other => Err(unsupported(&format!("{field}.type"), other)),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let matches = if rule.matches.is_empty() {
            &everything[..]
        } else {
            &rule.matches[..]
        };
        for (j, m) in matches.iter().enumerate() {
            let at = format!("{at}.matches[{j}]");
            too_many(
                &format!("{at}.headers"),
                m.headers.len(),
                limits::CONDITIONS,
            )?;
            let (path, class) = grpc_path(m.method.as_ref(), &format!("{at}.method"))?;
            let shape = MatchShape {
                class,
                path_len: path.value.chars().count(),
                method: true,
                headers: m.headers.len(),
                query: 0,
            };
            out.push(Entry {
                spec: RouteSpec {
                    route: route.to_string(),
                    kind: WireKind::Grpc,
                    rule: i as u32,
                    matches: RouteMatchSpec {
                        path: Some(path),
                        headers: value_matches(&m.headers, &format!("{at}.headers"))?,
                        query_params: Vec::new(),
                        method: Some("POST".into()),
                    },
                    filters: filters.clone(),
                    ..RouteSpec::default()
                },
                shape,
                index: j,
                backend_refs: spec.rules.get(i).map_or(&[][..], |r| &r.backend_refs[..]),
            });
        }
    }
    Ok(out)
}

/// A gRPC service/method match as a path match on `/<service>/<method>`: both exact gives an
/// exact path, a service alone a prefix, a method alone or regular expressions a regex.
fn grpc_path(m: Option<&GRPCMethodMatch>, at: &str) -> Result<(PathMatchSpec, PathClass), String> {
    let Some(m) = m else {
        return Ok((
            PathMatchSpec {
                kind: PathMatchType::PathPrefix,
                value: "/".into(),
            },
            PathClass::Prefix,
        ));
    };
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    if service.is_none() && method.is_none() {
        return Err(format!(
            "{at}: one or both of service and method must be set"
        ));
    }
    match m.type_.as_str() {
        "Exact" => {
            if let Some(s) = service {
                if !is_grpc_service(s) {
                    return Err(invalid(
                        &format!("{at}.service"),
                        s,
                        "expected a gRPC service name such as shop.v1.Cart",
                    ));
                }
            }
            if let Some(x) = method {
                if !is_grpc_method(x) {
                    return Err(invalid(
                        &format!("{at}.method"),
                        x,
                        "expected a gRPC method name such as AddItem",
                    ));
                }
            }
            Ok(match (service, method) {
                (Some(s), Some(x)) => (
                    PathMatchSpec {
                        kind: PathMatchType::Exact,
                        value: format!("/{s}/{x}"),
                    },
                    PathClass::Exact,
                ),
                (Some(s), None) => (
                    PathMatchSpec {
                        kind: PathMatchType::PathPrefix,
                        value: format!("/{s}/"),
                    },
                    PathClass::Prefix,
                ),
                // Names are checked above: only letters, digits, `_` and `.` (escaped here).
                (None, Some(x)) => (
                    PathMatchSpec {
                        kind: PathMatchType::RegularExpression,
                        value: format!("/[^/]+/{x}"),
                    },
                    PathClass::Regex,
                ),
                (None, None) => unreachable!("checked above"),
            })
        }
        "RegularExpression" => {
            let s = service.map_or("[^/]+".to_string(), |s| format!("(?:{s})"));
            let x = method.map_or("[^/]+".to_string(), |x| format!("(?:{x})"));
            Ok((
                PathMatchSpec {
                    kind: PathMatchType::RegularExpression,
                    value: format!("/{s}/{x}"),
                },
                PathClass::Regex,
            ))
        }
        other => Err(unsupported(&format!("{at}.type"), other)),
    }
}

/// `^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$`, case-insensitive (the CRD's rule).
fn is_grpc_service(s: &str) -> bool {
    let s = s.strip_prefix('.').unwrap_or(s);
    !s.is_empty() && s.split('.').all(is_grpc_method)
}

/// `^[A-Za-z_][A-Za-z_0-9]*$`.
fn is_grpc_method(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unsupported(field: &str, value: &str) -> String {
    invalid(field, value, "not supported")
}

fn invalid(field: &str, value: &str, why: &str) -> String {
    format!("{field}: {:?}: {why}", config_model::cut::cut(value))
}

fn value_matches(list: &[ValueMatch], at: &str) -> Result<Vec<ValueMatchSpec>, String> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let kind = match v.type_.as_str() {
                "Exact" => ValueMatchType::Exact,
                "RegularExpression" => ValueMatchType::RegularExpression,
                other => return Err(unsupported(&format!("{at}[{i}].type"), other)),
            };
            Ok(ValueMatchSpec {
                name: v.name.clone(),
                kind,
                value: v.value.clone(),
            })
        })
        .collect()
}

fn http_filter(f: &HTTPRouteFilter, at: &str) -> Result<RouteFilterSpec, String> {
    let missing = |field: &str| format!("{at}.{field}: must be set for type {:?}", f.type_);
    Ok(match f.type_.as_str() {
        "RequestHeaderModifier" => RouteFilterSpec::RequestHeaderModifier(header_modifier(
            f.request_header_modifier
                .as_ref()
                .ok_or_else(|| missing("requestHeaderModifier"))?,
            &format!("{at}.requestHeaderModifier"),
        )?),
        "ResponseHeaderModifier" => RouteFilterSpec::ResponseHeaderModifier(header_modifier(
            f.response_header_modifier
                .as_ref()
                .ok_or_else(|| missing("responseHeaderModifier"))?,
            &format!("{at}.responseHeaderModifier"),
        )?),
        "RequestRedirect" => {
            let r = f
                .request_redirect
                .as_ref()
                .ok_or_else(|| missing("requestRedirect"))?;
            let at = format!("{at}.requestRedirect");
            RouteFilterSpec::RequestRedirect(RequestRedirectSpec {
                scheme: r.scheme.clone(),
                hostname: r.hostname.clone(),
                path: r
                    .path
                    .as_ref()
                    .map(|p| path_modifier(p, &format!("{at}.path")))
                    .transpose()?,
                port: r
                    .port
                    .map(|p| {
                        u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                            invalid(&format!("{at}.port"), &p.to_string(), "expected 1 to 65535")
                        })
                    })
                    .transpose()?,
                status_code: r
                    .status_code
                    .map(|c| {
                        u16::try_from(c).map_err(|_| {
                            invalid(
                                &format!("{at}.statusCode"),
                                &c.to_string(),
                                "expected 301, 302, 303, 307 or 308",
                            )
                        })
                    })
                    .transpose()?,
            })
        }
        "URLRewrite" => {
            let r = f
                .url_rewrite
                .as_ref()
                .ok_or_else(|| missing("urlRewrite"))?;
            RouteFilterSpec::UrlRewrite(UrlRewriteSpec {
                hostname: r.hostname.clone(),
                path: r
                    .path
                    .as_ref()
                    .map(|p| path_modifier(p, &format!("{at}.urlRewrite.path")))
                    .transpose()?,
            })
        }
        other => return Err(unsupported(&format!("{at}.type"), other)),
    })
}

fn header_modifier(m: &HeaderModifier, at: &str) -> Result<HeaderModifierSpec, String> {
    too_many(&format!("{at}.set"), m.set.len(), limits::HEADER_EDITS)?;
    too_many(&format!("{at}.add"), m.add.len(), limits::HEADER_EDITS)?;
    too_many(
        &format!("{at}.remove"),
        m.remove.len(),
        limits::HEADER_EDITS,
    )?;
    let headers = |list: &[super::crd::HTTPHeader]| {
        list.iter()
            .map(|h| HeaderSpec {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    Ok(HeaderModifierSpec {
        set: headers(&m.set),
        add: headers(&m.add),
        remove: m.remove.clone(),
    })
}

fn path_modifier(p: &PathModifier, at: &str) -> Result<PathModifierSpec, String> {
    let (kind, value) = match p.type_.as_str() {
        "ReplaceFullPath" => (PathModifierType::ReplaceFullPath, &p.replace_full_path),
        "ReplacePrefixMatch" => (
            PathModifierType::ReplacePrefixMatch,
            &p.replace_prefix_match,
        ),
        other => return Err(unsupported(&format!("{at}.type"), other)),
    };
    let value = value
        .clone()
        .ok_or_else(|| format!("{at}: type {:?} needs the field of the same name", p.type_))?;
    Ok(PathModifierSpec { kind, value })
}

fn check_backend_refs(refs: &[BackendRef], at: &str) -> Result<(), String> {
    too_many(
        &format!("{at}.backendRefs"),
        refs.len(),
        limits::BACKEND_REFS,
    )?;
    for (i, b) in refs.iter().enumerate() {
        if !b.filters.is_empty() {
            return Err(format!(
                "{at}.backendRefs[{i}].filters: per-backend filters are not supported"
            ));
        }
        if let Some(w) = b.weight {
            if !(0..=limits::WEIGHT).contains(&w) {
                return Err(invalid(
                    &format!("{at}.backendRefs[{i}].weight"),
                    &w.to_string(),
                    "expected 0 to 1000000",
                ));
            }
        }
    }
    Ok(())
}

/// A Gateway API duration (`^([0-9]{1,5}(h|m|s|ms)){1,4}$`) in milliseconds; `0s` is none.
fn duration(value: &str, at: &str) -> Result<Option<u64>, String> {
    let bad = || {
        invalid(
            at,
            value,
            "expected a Gateway API duration such as 10s, 1m30s or 500ms",
        )
    };
    let mut parts = 0;
    let mut rest = value;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        rest = &rest[digits..];
        let unit = if rest.starts_with("ms") { 2 } else { 1 };
        if !matches!(rest.get(..unit), Some("ms" | "h" | "m" | "s")) {
            return Err(bad());
        }
        rest = &rest[unit..];
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    let ms = config_model::duration::parse_millis(value).map_err(|_| bad())?;
    Ok((ms > 0).then_some(ms))
}

fn timeouts(t: &HTTPRouteTimeouts, at: &str) -> Result<Option<RouteTimeoutsSpec>, String> {
    let request_ms = t
        .request
        .as_deref()
        .map(|v| duration(v, &format!("{at}.request")))
        .transpose()?
        .flatten();
    let backend_request_ms = t
        .backend_request
        .as_deref()
        .map(|v| duration(v, &format!("{at}.backendRequest")))
        .transpose()?
        .flatten();
    Ok(
        (request_ms.is_some() || backend_request_ms.is_some()).then_some(RouteTimeoutsSpec {
            request_ms,
            backend_request_ms,
        }),
    )
}

fn retry(r: &HTTPRouteRetry, at: &str) -> Result<RouteRetrySpec, String> {
    let attempts = match r.attempts {
        None => 1,
        Some(a) => u32::try_from(a)
            .map_err(|_| invalid(&format!("{at}.attempts"), &a.to_string(), "out of range"))?,
    };
    let codes = r
        .codes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            u16::try_from(*c).map_err(|_| {
                invalid(
                    &format!("{at}.codes[{i}]"),
                    &c.to_string(),
                    "expected 400 to 599",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let backoff_ms = r
        .backoff
        .as_deref()
        .map(|v| duration(v, &format!("{at}.backoff")))
        .transpose()?
        .flatten();
    Ok(RouteRetrySpec {
        attempts,
        codes,
        backoff_ms,
    })
}

/// The backends of a rule resolved against the meshed service ports: the resolved ones, the
/// weight of the others, and the first failure (reason, message) for `ResolvedRefs`.
fn resolve_backends<'a>(
    refs: &[BackendRef],
    route_ns: &str,
    at: &str,
    ports: &impl Fn(&Name) -> Option<&'a [ServiceSpec]>,
) -> (Vec<SplitBackendSpec>, u32, Option<(&'static str, String)>) {
    let mut resolved = Vec::new();
    let mut unresolved: u32 = 0;
    let mut failure = None;
    for (i, b) in refs.iter().enumerate() {
        let weight = b.weight.unwrap_or(1).clamp(0, limits::WEIGHT) as u32;
        let field = format!("{at}.backendRefs[{i}]");
        let ns = b.namespace.clone().unwrap_or_else(|| route_ns.to_string());
        let problem = if !matches!(b.group.as_deref(), None | Some(""))
            || !matches!(b.kind.as_deref(), None | Some("Service"))
        {
            Some((
                reason::INVALID_KIND,
                format!(
                    "{field}: {}/{} is not a core Service; only Services are supported",
                    b.group.as_deref().unwrap_or(""),
                    b.kind.as_deref().unwrap_or("Service")
                ),
            ))
        } else if ns != route_ns {
            Some((
                reason::REF_NOT_PERMITTED,
                format!(
                    "{field}: Service {ns}/{} is in another namespace; Maille does not read ReferenceGrants and refuses cross-namespace backends",
                    b.name
                ),
            ))
        } else {
            match b.port.and_then(|p| u16::try_from(p).ok()) {
                None => Some((
                    reason::BACKEND_NOT_FOUND,
                    format!("{field}: a Service backend needs a port"),
                )),
                Some(port) => {
                    let found = ports(&(ns.clone(), b.name.clone()))
                        .and_then(|list| list.iter().find(|s| s.port == port));
                    match found {
                        Some(s) if s.traffic_type == TrafficType::Http => {
                            resolved.push(SplitBackendSpec {
                                namespace: ns.clone(),
                                name: b.name.clone(),
                                port,
                                weight,
                            });
                            None
                        }
                        Some(s) => Some((
                            reason::BACKEND_NOT_FOUND,
                            format!(
                                "{field}: port {port} of Service {ns}/{} is meshed as {}, a route backend must be http",
                                b.name, s.traffic_type
                            ),
                        )),
                        None => Some((
                            reason::BACKEND_NOT_FOUND,
                            format!(
                                "{field}: Service {ns}/{} port {port} is not in the mesh (no such Service or port, or not meshed)",
                                b.name
                            ),
                        )),
                    }
                }
            }
        };
        if let Some(p) = problem {
            unresolved = unresolved.saturating_add(weight);
            failure.get_or_insert(p);
        }
    }
    (resolved, unresolved, failure)
}

/// Attaches one route; returns its outcome when it names a Service parent.
fn attach_one<'a>(
    route: &Read<'_>,
    ports: &impl Fn(&Name) -> Option<&'a [ServiceSpec]>,
    ranked: &mut BTreeMap<ServiceKey, Vec<(Rank, RouteSpec)>>,
) -> Option<RouteOutcome> {
    let service_parents: Vec<&ParentReference> = route
        .parents
        .iter()
        .filter(|p| is_service_parent(p))
        .take(limits::STATUS_PARENTS)
        .collect();
    if service_parents.is_empty() {
        return None;
    }
    let ns = route.key.namespace.as_str();
    let name = format!("{ns}/{}", route.key.name);

    // The entries, checked alone (the same for every parent); their backends resolved.
    let mut resolved_refs = Verdict::yes(reason::RESOLVED_REFS, "Every backendRef resolved");
    let entries: Result<Vec<(RouteSpec, MatchShape, usize)>, String> = route
        .entries
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|entries| {
            check_route_entries(&name, entries.len()).map_err(|e| format!("spec.rules: {e}"))?;
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                let mut spec = e.spec.clone();
                let at = format!("spec.rules[{}]", spec.rule);
                let (backends, unresolved, failure) =
                    resolve_backends(e.backend_refs, ns, &at, ports);
                if let Some((why, message)) = failure {
                    if resolved_refs.ok {
                        resolved_refs = Verdict::no(why, message);
                    }
                }
                spec.backends = backends;
                spec.unresolved_weight = unresolved;
                Route::try_from(&spec)
                    .map_err(|err| format!("{at}.matches[{}]: {err}", e.index))?;
                out.push((spec, e.shape, e.index));
            }
            Ok(out)
        });

    let mut parents = Vec::with_capacity(service_parents.len());
    for p in service_parents {
        let (accepted, attached) = match &entries {
            Err(why) => (
                Verdict::no(reason::UNSUPPORTED_VALUE, why.clone()),
                Vec::new(),
            ),
            Ok(entries) => attach_to_parent(route, p, entries, ports, ranked),
        };
        parents.push(ParentOutcome {
            parent_ref: p.clone(),
            accepted,
            resolved: resolved_refs.clone(),
            ports: attached,
        });
    }
    Some(RouteOutcome {
        key: route.key.clone(),
        generation: route.generation,
        parents,
    })
}

/// Attaches the route's entries to the ports of one Service parentRef; returns `Accepted` and
/// the ports attached to.
fn attach_to_parent<'a>(
    route: &Read<'_>,
    p: &ParentReference,
    entries: &[(RouteSpec, MatchShape, usize)],
    ports: &impl Fn(&Name) -> Option<&'a [ServiceSpec]>,
    ranked: &mut BTreeMap<ServiceKey, Vec<(Rank, RouteSpec)>>,
) -> (Verdict, Vec<ServiceKey>) {
    let verdict = attach_ports(route, p, entries, ports, ranked);
    match verdict {
        Ok((v, keys)) => (v, keys),
        Err(v) => (v, Vec::new()),
    }
}

fn attach_ports<'a>(
    route: &Read<'_>,
    p: &ParentReference,
    entries: &[(RouteSpec, MatchShape, usize)],
    ports: &impl Fn(&Name) -> Option<&'a [ServiceSpec]>,
    ranked: &mut BTreeMap<ServiceKey, Vec<(Rank, RouteSpec)>>,
) -> Result<(Verdict, Vec<ServiceKey>), Verdict> {
    let ns = route.key.namespace.as_str();
    let parent_ns = p.namespace.as_deref().unwrap_or(ns);
    if parent_ns != ns {
        return Err(Verdict::no(
            reason::UNSUPPORTED_VALUE,
            format!(
                "parentRef Service {parent_ns}/{}: a route in another namespace than its Service (a consumer route) is not supported; put the route in {parent_ns}",
                p.name
            ),
        ));
    }
    let service = format!("{parent_ns}/{}", p.name);
    let Some(list) = ports(&(parent_ns.to_string(), p.name.clone())) else {
        return Err(Verdict::no(
            reason::NO_MATCHING_PARENT,
            format!("Service {service} is not in the mesh (no such Service, or not meshed)"),
        ));
    };
    let chosen: Vec<&ServiceSpec> = list
        .iter()
        .filter(|s| p.port.is_none_or(|port| i32::from(s.port) == port))
        .filter(|s| {
            p.section_name
                .as_ref()
                .is_none_or(|n| s.port_name.as_ref() == Some(n))
        })
        .collect();
    let what = match (&p.port, &p.section_name) {
        (Some(port), _) => format!("port {port}"),
        (None, Some(n)) => format!("port named {n:?}"),
        (None, None) => "any port".to_string(),
    };
    if chosen.is_empty() {
        return Err(Verdict::no(
            reason::NO_MATCHING_PARENT,
            format!("Service {service} has no meshed {what}"),
        ));
    }
    let http: Vec<&ServiceSpec> = chosen
        .into_iter()
        .filter(|s| s.traffic_type == TrafficType::Http)
        .collect();
    if http.is_empty() {
        return Err(Verdict::no(
            reason::NO_MATCHING_PARENT,
            format!(
                "Service {service}: {what} is meshed as tcp or udp; routes attach to http ports"
            ),
        ));
    }
    let kind = match route.key.kind {
        RouteKind::Http => RouteKindRank::Http,
        RouteKind::Grpc => RouteKindRank::Grpc,
    };
    for s in &http {
        let list = ranked.entry(s.key()).or_default();
        let wire_kind = entries.first().map(|(e, _, _)| e.kind);
        if list.iter().any(|(_, e)| {
            Some(e.kind) == wire_kind && entries.first().is_some_and(|(f, _, _)| f.route == e.route)
        }) {
            // Two parentRefs naming the same port: attached once.
            continue;
        }
        for (spec, shape, index) in entries {
            let rank = Rank::new(
                *shape,
                MatchOrigin {
                    kind,
                    namespace: ns,
                    name: &route.key.name,
                    created: route.created.as_deref(),
                    rule: spec.rule as usize,
                    index: *index,
                },
            );
            list.push((rank, spec.clone()));
        }
    }
    let ports: Vec<String> = http.iter().map(|s| s.port.to_string()).collect();
    Ok((
        Verdict::yes(
            reason::ACCEPTED,
            format!("Attached to Service {service} port {}", ports.join(", ")),
        ),
        http.iter().map(|s| s.key()).collect(),
    ))
}

//! The Gateway API step of an HTTP request: on a service port with route entries, the first
//! entry whose match fits the (normalised) request decides: a redirect answered at once, or a
//! backend picked by weight (the parent itself when the entry names none; 500 for the share of
//! backendRefs that did not resolve). No entry fitting is 404. A service port without entries
//! goes through its traffic splits as before ([`super::route::resolve_split`]); with entries,
//! the routes win over splits.

use config_model::cut::cut;
use config_model::{Route, Service, ServiceId};
use pingora_proxy::Session;

use super::filters;
use super::route;
use crate::compiled::routes::RouteRuntime;
use crate::compiled::CompiledTable;
use crate::refusal::Refused;

/// Where the routing step sends a request.
#[derive(Debug)]
pub enum Routed {
    /// Served by the endpoints of this service port.
    To(ServiceId),
    /// Answered with a redirect.
    Redirect {
        /// 301, 302, ...
        status: u16,
        /// The `Location` value.
        location: String,
    },
    /// Refused (404 no entry fits, 500 unresolved backend, or a split's refusal).
    Refused(Refused),
}

/// The position of the first entry of `svc` whose match fits the request. Allocates nothing.
pub fn first_fit(svc: &Service, req: &http::request::Parts) -> Option<usize> {
    let method = req.method.as_str();
    let path = req.uri.path();
    let query = req.uri.query();
    let headers = &req.headers;
    svc.routes.iter().position(|r| {
        r.matches.fits(method, path, query, |name| {
            headers.get(name).and_then(|v| v.to_str().ok())
        })
    })
}

/// Routes a request addressed to `service`; `entry` receives the position of the route entry
/// that matched, if one did.
pub fn resolve(
    table: &CompiledTable,
    service: ServiceId,
    session: &Session,
    entry: &mut Option<usize>,
) -> Routed {
    let svc = &table[service];
    if svc.routes.is_empty() {
        return match route::resolve_split(table, service, session) {
            Ok(backend) => Routed::To(backend),
            Err(refused) => Routed::Refused(refused),
        };
    }
    let req = session.req_header();
    let Some(i) = first_fit(svc, req) else {
        return Routed::Refused(Refused::no_route(format_args!(
            "{} {:?} on service {} (no route rule fits)",
            req.method,
            cut(req.uri.path()),
            svc.key
        )));
    };
    *entry = Some(i);
    let route = &svc.routes[i];
    let rt = &table.runtime(service).routes[i];
    rt.requests.inc();
    if let Some(redirect) = &route.filters.redirect {
        return Routed::Redirect {
            status: redirect.status,
            location: filters::location(redirect, &route.matches, session),
        };
    }
    match pick(route, rt) {
        Pick::Parent => Routed::To(service),
        Pick::Backend(pos) => Routed::To(table.route_targets(service, i)[pos]),
        Pick::Unresolved => Routed::Refused(Refused::backend_not_found(&route.route, route.rule)),
    }
}

/// What a route entry's weights chose.
#[derive(Debug, PartialEq, Eq)]
enum Pick {
    /// The entry names no backend: the parent serves.
    Parent,
    /// This backend of the entry.
    Backend(usize),
    /// The unresolved share, or nothing has weight: 500.
    Unresolved,
}

fn pick(route: &Route, rt: &RouteRuntime) -> Pick {
    if route.backends.is_empty() && route.unresolved_weight == 0 {
        return Pick::Parent;
    }
    match rt.picker.random(&mut rand::rng()) {
        Some(pos) if !rt.is_unresolved(pos) => Pick::Backend(pos),
        _ => Pick::Unresolved,
    }
}

#[cfg(test)]
mod tests {
    use config_model::route::{PathMatchSpec, PathMatchType, RouteMatchSpec};
    use config_model::testing::{http, table};
    use config_model::{RouteSpec, SplitBackendSpec, Table};

    use super::*;

    fn compiled(routes: Vec<RouteSpec>) -> std::sync::Arc<CompiledTable> {
        let mut web = http("shop", "web", 5000, &["10.0.0.1:80"]);
        web.routes = routes;
        let v2 = http("shop", "v2", 5000, &["10.0.0.2:80"]);
        let store = crate::store::TableStore::new();
        store.store(Table::try_from(table(1, vec![web, v2])).unwrap());
        store.current()
    }

    fn entry(path: &str, backends: &[(&str, u32)], unresolved: u32) -> RouteSpec {
        RouteSpec {
            route: "shop/r".into(),
            matches: RouteMatchSpec {
                path: Some(PathMatchSpec {
                    kind: PathMatchType::PathPrefix,
                    value: path.into(),
                }),
                ..RouteMatchSpec::default()
            },
            backends: backends
                .iter()
                .map(|(n, w)| SplitBackendSpec {
                    namespace: "shop".into(),
                    name: n.to_string(),
                    port: 80,
                    weight: *w,
                })
                .collect(),
            unresolved_weight: unresolved,
            ..RouteSpec::default()
        }
    }

    fn request(path: &str) -> http::request::Parts {
        http::Request::get(path).body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_first_fitting_entry_wins() {
        let t = compiled(vec![entry("/api/v2", &[], 0), entry("/api", &[], 0)]);
        let web = &t[t.iter().next().unwrap().0];
        assert_eq!(first_fit(web, &request("/api/v2/x")), Some(0));
        assert_eq!(first_fit(web, &request("/api/v3")), Some(1));
        assert_eq!(first_fit(web, &request("/apis")), None);
    }

    #[test]
    fn weights_pick_backends_and_the_unresolved_share() {
        let t = compiled(vec![
            entry("/", &[("web", 1), ("v2", 3)], 0),
            entry("/", &[], 1),
            entry("/", &[("v2", 0)], 0),
            entry("/", &[], 0),
        ]);
        let id = t.iter().next().unwrap().0;
        let (svc, rt) = (&t[id], t.runtime(id));
        let mut counts = [0usize; 2];
        for _ in 0..4000 {
            match pick(&svc.routes[0], &rt.routes[0]) {
                Pick::Backend(p) => counts[p] += 1,
                other => panic!("{other:?}"),
            }
        }
        // Expected 1000/3000; the bound is about 6 standard deviations (≈27).
        assert!((850..1150).contains(&counts[0]), "{counts:?}");
        assert_eq!(pick(&svc.routes[1], &rt.routes[1]), Pick::Unresolved);
        assert_eq!(pick(&svc.routes[2], &rt.routes[2]), Pick::Unresolved);
        assert_eq!(pick(&svc.routes[3], &rt.routes[3]), Pick::Parent);
    }
}

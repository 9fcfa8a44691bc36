//! The Gateway API route entries of a service port, ready for the request path: per entry a
//! weighted picker over its backends (and the unresolved share), header changes as
//! `http` header names and values, the rewritten Host, the timeout and retry policy, and the
//! request counter. Built when the table is compiled; like the rest of a
//! [`super::ServiceRuntime`] it depends on the service alone (backends are positions in the
//! entry, resolved through [`config_model::Table::route_targets`]). The timeout and retry
//! policy of a rule is one for all its entries, and carried over from the previous runtime of
//! the service while the rule's settings are unchanged, so that its retry budget lives on.

use std::sync::Arc;

use config_model::route::HeaderModifier;
use config_model::{Route, Service};
use http::{HeaderName, HeaderValue};
use prometheus::IntCounter;

use crate::picker::WeightedPicker;
use crate::resilience::RoutePolicy;

/// A header change with names and values parsed once.
#[derive(Debug, Default)]
pub struct CompiledHeaders {
    /// Set, replacing.
    pub set: Box<[(HeaderName, HeaderValue)]>,
    /// Added.
    pub add: Box<[(HeaderName, HeaderValue)]>,
    /// Removed.
    pub remove: Box<[HeaderName]>,
}

impl CompiledHeaders {
    /// `None` when a name or value does not parse, which validation already rules out.
    fn new(m: &HeaderModifier) -> Option<CompiledHeaders> {
        let pairs = |list: &[(String, String)]| {
            list.iter()
                .map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect::<Option<Box<[_]>>>()
        };
        Some(CompiledHeaders {
            set: pairs(&m.set)?,
            add: pairs(&m.add)?,
            remove: m
                .remove
                .iter()
                .map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect::<Option<_>>()?,
        })
    }
}

/// One route entry, ready to serve.
#[derive(Debug)]
pub struct RouteRuntime {
    /// `namespace/name` of the route and the rule's index: who owns [`RouteRuntime::policy`].
    rule: (Box<str>, u32),
    /// Picks a position among the entry's backends; the position one past the last is the
    /// unresolved share (answered 500).
    pub picker: WeightedPicker,
    /// `RequestHeaderModifier`.
    pub request_headers: Option<CompiledHeaders>,
    /// `ResponseHeaderModifier`.
    pub response_headers: Option<CompiledHeaders>,
    /// `URLRewrite`'s hostname as a Host value.
    pub rewrite_host: Option<HeaderValue>,
    /// Timeouts and retries, when the entry sets any.
    pub policy: Option<Arc<RoutePolicy>>,
    /// `maille_proxy_route_requests_total` of the entry's route and rule.
    pub requests: IntCounter,
}

impl RouteRuntime {
    fn new(
        svc: &Service,
        route: &Route,
        port_label: &str,
        carry: &[&[RouteRuntime]],
    ) -> RouteRuntime {
        let weights = route
            .backends
            .iter()
            .map(|b| b.weight)
            .chain(std::iter::once(route.unresolved_weight));
        let mut rule = itoa::Buffer::new();
        let requests = crate::metrics::register()
            .route_requests
            .with_label_values(&[
                svc.key.namespace.as_str(),
                svc.key.name.as_str(),
                port_label,
                route.route.as_str(),
                rule.format(route.rule),
            ]);
        let rule_id: (Box<str>, u32) = (route.route.as_str().into(), route.rule);
        let policy = RoutePolicy::new(&svc.key, &svc.options, route).map(|fresh| {
            carry
                .iter()
                .flat_map(|runtimes| runtimes.iter())
                .filter(|rt| rt.rule == rule_id)
                .filter_map(|rt| rt.policy.as_ref())
                .find(|p| p.same_settings(&fresh))
                .cloned()
                .unwrap_or_else(|| Arc::new(fresh))
        });
        RouteRuntime {
            rule: rule_id,
            picker: WeightedPicker::new(weights),
            request_headers: route
                .filters
                .request_headers
                .as_ref()
                .and_then(CompiledHeaders::new),
            response_headers: route
                .filters
                .response_headers
                .as_ref()
                .and_then(CompiledHeaders::new),
            rewrite_host: route
                .filters
                .rewrite
                .as_ref()
                .and_then(|r| r.hostname.as_deref())
                .and_then(|h| HeaderValue::from_str(h).ok()),
            policy,
            requests,
        }
    }

    /// Whether `pos`, a pick of [`RouteRuntime::picker`], is the unresolved share.
    pub fn is_unresolved(&self, pos: usize) -> bool {
        pos + 1 == self.picker.len()
    }
}

/// The runtimes of a service's route entries, in the order of [`Service::routes`]; a rule's
/// policy is shared by its entries and taken over from `previous` (the runtimes of the same
/// service port in the table before) while its settings are equal.
pub(crate) fn compile(
    svc: &Service,
    port_label: &str,
    previous: &[RouteRuntime],
) -> Box<[RouteRuntime]> {
    let mut out: Vec<RouteRuntime> = Vec::with_capacity(svc.routes.len());
    for r in &svc.routes {
        let rt = RouteRuntime::new(svc, r, port_label, &[previous, &out]);
        out.push(rt);
    }
    out.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use config_model::route::{RouteRetrySpec, RouteTimeoutsSpec};
    use config_model::testing::{http, table};
    use config_model::{RouteSpec, Table};

    use crate::store::TableStore;

    fn entry(rule: u32, attempts: u32) -> RouteSpec {
        RouteSpec {
            route: "shop/r".into(),
            rule,
            timeouts: Some(RouteTimeoutsSpec {
                request_ms: Some(1000),
                backend_request_ms: None,
            }),
            retry: Some(RouteRetrySpec {
                attempts,
                codes: vec![503],
                backoff_ms: None,
            }),
            ..RouteSpec::default()
        }
    }

    fn load(store: &TableStore, endpoint: &str, routes: Vec<RouteSpec>) -> Vec<usize> {
        let mut web = http("shop", "web", 5000, &[endpoint]);
        web.routes = routes;
        store.store(Table::try_from(table(1, vec![web])).unwrap());
        let t = store.current();
        let id = t.iter().next().unwrap().0;
        t.runtime(id)
            .routes
            .iter()
            .map(|rt| std::sync::Arc::as_ptr(rt.policy.as_ref().unwrap()) as usize)
            .collect()
    }

    #[test]
    fn a_rules_policy_is_shared_by_its_entries_and_outlives_other_changes() {
        let store = TableStore::new();
        let first = load(
            &store,
            "10.0.0.1:80",
            vec![entry(0, 2), entry(0, 2), entry(1, 2)],
        );
        assert_eq!(first[0], first[1], "two matches of one rule: one budget");
        assert_ne!(first[0], first[2], "another rule: its own");
        // The endpoints change (a new runtime for the service): the policies are kept.
        let second = load(
            &store,
            "10.0.0.2:80",
            vec![entry(0, 2), entry(0, 2), entry(1, 2)],
        );
        assert_eq!(second, first);
        // Rule 1's retry changes: only its policy is new.
        let third = load(
            &store,
            "10.0.0.3:80",
            vec![entry(0, 2), entry(0, 2), entry(1, 3)],
        );
        assert_eq!(third[0], first[0]);
        assert_ne!(third[2], first[2]);
    }
}

//! The Gateway API route entries of a service port, ready for the request path: per entry a
//! weighted picker over its backends (and the unresolved share), header changes as
//! `http` header names and values, the rewritten Host, the timeout and retry policy, and the
//! request counter. Built when the table is compiled; like the rest of a
//! [`super::ServiceRuntime`] it depends on the service alone (backends are positions in the
//! entry, resolved through [`config_model::Table::route_targets`]).

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
    fn new(svc: &Service, route: &Route, port_label: &str) -> RouteRuntime {
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
        RouteRuntime {
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
            policy: RoutePolicy::new(&svc.key, &svc.options, route).map(Arc::new),
            requests,
        }
    }

    /// Whether `pos`, a pick of [`RouteRuntime::picker`], is the unresolved share.
    pub fn is_unresolved(&self, pos: usize) -> bool {
        pos + 1 == self.picker.len()
    }
}

/// The runtimes of a service's route entries, in the order of [`Service::routes`].
pub(crate) fn compile(svc: &Service, port_label: &str) -> Box<[RouteRuntime]> {
    svc.routes
        .iter()
        .map(|r| RouteRuntime::new(svc, r, port_label))
        .collect()
}

//! The compiled table: a validated [`Table`] together with everything the request path needs
//! per service port, built when the table is applied (off the request path) and swapped in
//! with it in one `ArcSwap` ([`crate::store::TableStore`]).
//!
//! Per [`ServiceId`] a [`ServiceRuntime`] holds the endpoint plan (weighted picker and latency
//! statistics), a weighted picker per traffic split, the access rules' client sets (hashed),
//! the resilience state (rate limit, breaker, retry budget) and the metric label values. A
//! runtime depends on its [`Service`] only, never on positions in a table, so a service the
//! new table shares with the old one (the same `Arc`, as [`Table::apply_delta`] leaves
//! unchanged services) keeps its runtime as it is; a changed service gets a new runtime that
//! takes over the resilience state when its options are equal. Latency statistics are kept
//! per endpoint address whatever happens to the services. The table is compiled knowing this
//! proxy's node, so that it can say how each endpoint is reached ([`mesh`]).

pub mod mesh;

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use config_model::{Service, ServiceId, Table};
use prometheus::IntCounter;

use crate::balance::{EndpointPlan, EndpointRegistry};
use crate::picker::WeightedPicker;
use crate::resilience::metrics::ServiceMetrics as ResilienceMetrics;
use crate::resilience::ServiceState;

pub mod routes;

/// A table and the runtime of each of its service ports. Immutable; replaced whole.
#[derive(Debug, Default)]
pub struct CompiledTable {
    table: Arc<Table>,
    runtimes: Vec<Arc<ServiceRuntime>>,
    /// This proxy's node (`--node-name`): what [`CompiledTable::hop`] and
    /// [`CompiledTable::local_identity`] compare with.
    node: Option<Arc<str>>,
}

impl Deref for CompiledTable {
    type Target = Table;

    fn deref(&self) -> &Table {
        &self.table
    }
}

impl CompiledTable {
    /// The validated table.
    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The runtime of a service port of this table.
    pub fn runtime(&self, id: ServiceId) -> &ServiceRuntime {
        &self.runtimes[id.index()]
    }

    /// Builds the runtime of every service port of `table`, taking over from `previous` what
    /// still holds: the whole runtime of a service `previous` shares, the resilience state of
    /// a changed service whose options are equal. `endpoints` supplies (and afterwards holds
    /// exactly) the latency statistics of the endpoint addresses in use.
    pub(crate) fn compile(
        table: Arc<Table>,
        previous: &CompiledTable,
        endpoints: &mut EndpointRegistry,
        node: Option<Arc<str>>,
    ) -> CompiledTable {
        let mut runtimes = Vec::with_capacity(table.len());
        for (_, svc) in table.iter() {
            let before = previous
                .table
                .service(&svc.key)
                .map(|id| &previous.runtimes[id.index()]);
            let runtime = match before {
                Some(rt) if Arc::ptr_eq(&rt.service, svc) => rt.clone(),
                _ => Arc::new(ServiceRuntime::new(
                    svc,
                    before.and_then(|rt| rt.resilience.as_ref()),
                    before.map_or(&[], |rt| &rt.routes),
                    endpoints,
                )),
            };
            runtimes.push(runtime);
        }
        endpoints.retain_plans(runtimes.iter().map(|rt| &rt.endpoints));
        forget_dropped_breakers(previous, &table, &runtimes);
        CompiledTable {
            table,
            runtimes,
            node,
        }
    }
}

/// Drops the breaker state gauge of each service port that had a breaker in `previous` and has
/// none in the new table (a stale "open" would mislead); counters stay, as Prometheus expects.
fn forget_dropped_breakers(
    previous: &CompiledTable,
    table: &Table,
    runtimes: &[Arc<ServiceRuntime>],
) {
    for rt in &previous.runtimes {
        if !rt.resilience.as_ref().is_some_and(|s| s.has_breaker()) {
            continue;
        }
        let kept = table.service(&rt.service.key).is_some_and(|id| {
            runtimes[id.index()]
                .resilience
                .as_ref()
                .is_some_and(|s| s.has_breaker())
        });
        if !kept {
            ResilienceMetrics::forget_breaker(&rt.service.key);
        }
    }
}

/// What the request path needs of one service port, built from the service alone.
#[derive(Debug)]
pub struct ServiceRuntime {
    service: Arc<Service>,
    /// The service's endpoints, their statistics and a weighted picker over them.
    pub endpoints: EndpointPlan,
    /// Per split (in the order of [`Service::splits`]): a picker over its backends' positions,
    /// and the counter of requests it sent to each backend.
    pub splits: Box<[SplitRuntime]>,
    /// Per Gateway API route entry (in the order of [`Service::routes`]): its picker, header
    /// changes, policy and counter.
    pub routes: Box<[routes::RouteRuntime]>,
    /// Per access rule (in the order of [`Service::access`]): the client addresses it admits.
    pub access: Box<[HashSet<IpAddr>]>,
    /// Rate limit, breaker and retry budget, when the options ask for any.
    pub resilience: Option<Arc<ServiceState>>,
    /// The node of each endpoint whose node is known ([`CompiledTable::hop`]).
    pub nodes: mesh::EndpointNodes,
    /// The `port` label value (the Service port), formatted once.
    port_label: Box<str>,
}

/// A traffic split, ready to pick.
#[derive(Debug)]
pub struct SplitRuntime {
    /// Picks a position in the split's backends by weight.
    pub picker: WeightedPicker,
    /// `maille_proxy_split_requests_total` of each backend.
    pub sent: Box<[IntCounter]>,
}

impl ServiceRuntime {
    fn new(
        svc: &Arc<Service>,
        previous: Option<&Arc<ServiceState>>,
        previous_routes: &[routes::RouteRuntime],
        endpoints: &EndpointRegistry,
    ) -> ServiceRuntime {
        let port_label: Box<str> = svc.key.port.to_string().into();
        let splits = svc
            .splits
            .iter()
            .map(|split| SplitRuntime {
                picker: WeightedPicker::new(split.backends.iter().map(|b| b.weight)),
                sent: split
                    .backends
                    .iter()
                    .map(|b| {
                        let backend = format!("{}/{}", b.service.namespace, b.service.name);
                        crate::metrics::register()
                            .split_requests
                            .with_label_values(&[
                                svc.key.namespace.as_str(),
                                svc.key.name.as_str(),
                                &port_label,
                                &backend,
                            ])
                    })
                    .collect(),
            })
            .collect();
        ServiceRuntime {
            endpoints: EndpointPlan::new(svc, endpoints),
            splits,
            routes: routes::compile(svc, &port_label, previous_routes),
            access: svc
                .access
                .iter()
                .map(|rule| rule.sources.iter().copied().collect())
                .collect(),
            resilience: ServiceState::carry_or_build(svc, previous),
            nodes: mesh::EndpointNodes::new(svc),
            port_label,
            service: svc.clone(),
        }
    }

    /// The service port this runtime was built from.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// The `namespace`, `service` and `port` label values of the service port.
    pub fn labels(&self) -> [&str; 3] {
        let k = &self.service.key;
        [k.namespace.as_str(), k.name.as_str(), &self.port_label]
    }
}

#[cfg(test)]
mod tests;

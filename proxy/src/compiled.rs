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
//! takes over the resilience state when its options are equal, and the latency statistics of
//! the endpoint addresses it keeps ([`EndpointPlan::new`]). The table is compiled knowing this
//! proxy's node, so that it can say how each endpoint is reached ([`mesh`]).

pub mod mesh;

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use config_model::{Chunks, Service, ServiceId, Table};
use prometheus::IntCounter;

use crate::balance::{EndpointPlan, StatsRef};
use crate::picker::WeightedPicker;
use crate::resilience::metrics::ServiceMetrics as ResilienceMetrics;
use crate::resilience::ServiceState;

pub mod routes;

/// A table and the runtime of each of its service ports. Immutable; replaced whole. The
/// runtimes are kept in chunks of the same size as the table's services ([`Chunks`]): where
/// a table shares a chunk of services with the one it replaced, the compiled table shares the
/// chunk of runtimes, so a delta's table costs the few chunks it changed.
#[derive(Debug, Default)]
pub struct CompiledTable {
    table: Arc<Table>,
    runtimes: Chunks<Arc<ServiceRuntime>>,
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

    /// The statistics of an endpoint address, in the plan of the first service port of this
    /// table that has it (a look at every service: for tests and diagnostics, not requests).
    pub fn endpoint_stats(&self, addr: &std::net::SocketAddr) -> Option<StatsRef> {
        self.runtimes
            .iter()
            .find_map(|rt| rt.endpoints.stats_of(addr))
    }

    /// Builds the runtime of every service port of `table`, taking over from `previous` what
    /// still holds: the whole runtime of a service `previous` shares; for a changed service,
    /// the resilience state when its options are equal and the latency statistics of the
    /// endpoint addresses it keeps.
    ///
    /// A runtime is carried by position while the service at that position is the same `Arc`
    /// (a delta keeps positions). Only positions in chunks of services `previous` does not
    /// share are looked at ([`Chunks::unshared`]): after a delta, the chunks holding the
    /// services it named and the one moved per removal; among those, only the services that
    /// are not the same `Arc` are looked up by key or built.
    pub(crate) fn compile(
        table: Arc<Table>,
        previous: &CompiledTable,
        node: Option<Arc<str>>,
    ) -> CompiledTable {
        let old = previous.table.services();
        let new = table.services();
        let mut runtimes = previous.runtimes.clone();
        // Positions of `previous` whose runtime was carried to another position, and those
        // whose service is not at the same position any more (a delta keeps positions, so
        // after one these are the few services it named and the one moved per removal).
        let mut moved: HashSet<usize> = HashSet::new();
        let mut replaced: Vec<usize> = Vec::new();
        for i in new.unshared(old) {
            let Some(svc) = new.get(i) else {
                // Past the end of the new table: dropped below unless carried elsewhere.
                replaced.push(i);
                continue;
            };
            if old.get(i).is_some_and(|o| Arc::ptr_eq(o, svc)) {
                continue;
            }
            if i < old.len() {
                replaced.push(i);
            }
            let before = previous.table.service(&svc.key).map(|id| id.index());
            let runtime = match before {
                Some(p) if Arc::ptr_eq(&old[p], svc) => {
                    moved.insert(p);
                    previous.runtimes[p].clone()
                }
                _ => Arc::new(ServiceRuntime::new(
                    svc,
                    before.map(|p| &*previous.runtimes[p]),
                )),
            };
            if i < runtimes.len() {
                runtimes.set(i, runtime);
            } else {
                runtimes.push(runtime);
            }
        }
        while runtimes.len() > new.len() {
            runtimes.pop();
        }
        let dropped = replaced
            .into_iter()
            .filter(|p| !moved.contains(p))
            .map(|p| &previous.runtimes[p]);
        for rt in dropped {
            forget_dropped_breaker(rt, &table, &runtimes);
        }
        CompiledTable {
            table,
            runtimes,
            node,
        }
    }
}

/// Drops the breaker state gauge of a service port that had a breaker in the previous table
/// (`rt`, not carried over) and has none in the new table (a stale "open" would mislead);
/// counters stay, as Prometheus expects.
fn forget_dropped_breaker(
    rt: &ServiceRuntime,
    table: &Table,
    runtimes: &Chunks<Arc<ServiceRuntime>>,
) {
    if !rt.resilience.as_ref().is_some_and(|s| s.has_breaker()) {
        return;
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
    port_label: PortLabel,
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
    /// The runtime of `svc`, taking over from `previous` (the runtime of the same service port
    /// in the table before, if any) its resilience state and route policies where their
    /// settings are unchanged, and its endpoints' statistics.
    fn new(svc: &Arc<Service>, previous: Option<&ServiceRuntime>) -> ServiceRuntime {
        let port_label = PortLabel::new(svc.key.port);
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
                                port_label.as_str(),
                                &backend,
                            ])
                    })
                    .collect(),
            })
            .collect();
        ServiceRuntime {
            endpoints: EndpointPlan::new(svc, previous.map(|rt| &rt.endpoints)),
            splits,
            routes: routes::compile(
                svc,
                port_label.as_str(),
                previous.map_or(&[], |rt| &rt.routes),
            ),
            access: svc
                .access
                .iter()
                .map(|rule| rule.sources.iter().copied().collect())
                .collect(),
            resilience: ServiceState::carry_or_build(
                svc,
                previous.and_then(|rt| rt.resilience.as_ref()),
            ),
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
        [
            k.namespace.as_str(),
            k.name.as_str(),
            self.port_label.as_str(),
        ]
    }
}

/// A port number as a label value: its decimal digits, kept inline (no allocation per
/// service).
#[derive(Debug)]
struct PortLabel {
    digits: [u8; 5],
    len: u8,
}

impl PortLabel {
    fn new(port: u16) -> PortLabel {
        let mut digits = [0u8; 5];
        let mut len = 0;
        let mut rest = port;
        loop {
            digits[len] = b'0' + (rest % 10) as u8;
            len += 1;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        digits[..len].reverse();
        PortLabel {
            digits,
            len: len as u8,
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.digits[..usize::from(self.len)]).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;

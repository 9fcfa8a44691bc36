//! Writes to the API server: shadow services (create/update by server-side apply, delete of
//! the ones no longer wanted, orphans included) and a Warning Event on the object of each new
//! problem (a Service, an EndpointSlice or an SMI object), named after the problem so that a
//! repeat bumps its `count` as the Kubernetes event recorder does; and Maille's
//! `status.parents[]` entries of Gateway API routes (`crate::gateway::status::write`). A work
//! queue with per-object
//! exponential backoff: a failed write is retried later and never holds up the others, nor the
//! table builds (which run in their own task). A write not yet seen by the watch is not made
//! again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Event, EventSource, ObjectReference, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::gateway::status::{RouteKey, RouteOutcome};
use crate::kubernetes::Shadows;
use crate::metrics;
use crate::naming::{
    is_own_shadow, MANAGED_BY_LABEL, MANAGED_BY_VALUE, SOURCE_NAMESPACE_LABEL, SOURCE_NAME_LABEL,
};
use crate::problem::Problem;
use crate::translate::{ShadowSpec, Translation};

/// Field manager of the controller's server-side applies.
pub const FIELD_MANAGER: &str = "maille-controller";
/// Reason of the Events about problems on a Service.
pub const EVENT_REASON: &str = "MailleConfigError";

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a write not yet seen by the watch stops the same write from being made again.
/// The watch normally shows it within milliseconds; past this, the write is made again.
const IN_FLIGHT_FOR: Duration = Duration::from_secs(30);

/// One write.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Create or update a shadow service.
    Apply(Box<Service>),
    /// Delete a shadow service.
    Delete(String),
    /// Report a problem on a user's Service.
    Event(Problem),
    /// Bring Maille's `status.parents[]` entries of a Gateway API route to this outcome.
    RouteStatus(Box<RouteOutcome>),
}

/// The queue key of a write: one pending write per object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// A shadow service, by name.
    Shadow(String),
    /// An Event, by problem.
    Event(Problem),
    /// The status of a route.
    RouteStatus(RouteKey),
}

impl Op {
    /// The key of this write.
    pub fn key(&self) -> Key {
        match self {
            Op::Apply(s) => Key::Shadow(s.metadata.name.clone().unwrap_or_default()),
            Op::Delete(n) => Key::Shadow(n.clone()),
            Op::Event(p) => Key::Event(p.clone()),
            Op::RouteStatus(o) => Key::RouteStatus(o.key.clone()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Op::Apply(_) | Op::Delete(_) => "Service",
            Op::Event(_) => "Event",
            Op::RouteStatus(o) => o.key.kind.as_str(),
        }
    }
}

/// The shadow Service object for a shadow spec.
pub fn shadow_service(
    name: &str,
    spec: &ShadowSpec,
    mesh_namespace: &str,
    proxy_labels: &BTreeMap<String, String>,
) -> Service {
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string()),
        (SOURCE_NAMESPACE_LABEL.to_string(), spec.namespace.clone()),
        (SOURCE_NAME_LABEL.to_string(), spec.name.clone()),
    ]);
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(mesh_namespace.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(proxy_labels.clone()),
            internal_traffic_policy: Some("Local".into()),
            ports: Some(
                spec.ports
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: i32::from(p.port),
                        target_port: Some(IntOrString::Int(i32::from(p.mesh_port))),
                        protocol: Some(p.protocol.clone()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// Whether the observed shadow already has what the desired one sets.
fn up_to_date(observed: &Service, desired: &Service) -> bool {
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| observed.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let (Some(o), Some(d)) = (&observed.spec, &desired.spec) else {
        return false;
    };
    let ports = |s: &ServiceSpec| -> Vec<(Option<String>, i32, Option<IntOrString>, String)> {
        s.ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone(),
                    p.port,
                    p.target_port.clone(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                )
            })
            .collect()
    };
    labels_ok
        && o.selector == d.selector
        && o.internal_traffic_policy == d.internal_traffic_policy
        && ports(o) == ports(d)
}

/// Writes made but not yet seen by the watch of shadow services, so that a pass planned
/// before the watch catches up does not make them again.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Shadow name to (what was applied, resourceVersion the watch showed then, when).
    applied: BTreeMap<String, (Box<Service>, Option<String>, Instant)>,
    /// Shadow name to (resourceVersion the watch showed when it was deleted, when).
    deleted: BTreeMap<String, (Option<String>, Instant)>,
}

fn version(s: Option<&Arc<Service>>) -> Option<String> {
    s.and_then(|s| s.metadata.resource_version.clone())
}

impl InFlight {
    /// Forgets the writes the watch has shown (the shadow's resourceVersion moved) or that are
    /// too old to wait for.
    fn settle(&mut self, observed: &Shadows, now: Instant) {
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < IN_FLIGHT_FOR;
        self.applied
            .retain(|name, (_, rv, at)| fresh(at) && version(observed.get(name)) == *rv);
        self.deleted
            .retain(|name, (rv, at)| fresh(at) && version(observed.get(name)) == *rv);
    }

    fn applying(&self, name: &str, desired: &Service) -> bool {
        self.applied
            .get(name)
            .is_some_and(|(applied, _, _)| applied.as_ref() == desired)
    }

    fn deleting(&self, name: &str) -> bool {
        self.deleted.contains_key(name)
    }
}

/// The writes that bring the cluster to the translation: shadow applies (by name), deletes of
/// shadows no longer wanted (orphans included, but only services the controller wrote), then
/// Events for problems not yet reported, on the objects Events can name. Writes in flight
/// (made, not yet seen by the watch) are not planned again.
pub fn plan(
    t: &Translation,
    observed: &Shadows,
    reported: &BTreeSet<Problem>,
    in_flight: &InFlight,
    mesh_namespace: &str,
    proxy_labels: &BTreeMap<String, String>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for (name, spec) in &t.shadows {
        let desired = shadow_service(name, spec, mesh_namespace, proxy_labels);
        if !observed.get(name).is_some_and(|o| up_to_date(o, &desired))
            && !in_flight.applying(name, &desired)
        {
            ops.push(Op::Apply(Box::new(desired)));
        }
    }
    for (name, svc) in observed {
        if !t.shadows.contains_key(name)
            && is_own_shadow(name, svc.metadata.labels.as_ref())
            && !in_flight.deleting(name)
        {
            ops.push(Op::Delete(name.clone()));
        }
    }
    for p in &t.problems {
        if event_resource(&p.object.kind).is_some() && !reported.contains(p) {
            ops.push(Op::Event(p.clone()));
        }
    }
    ops
}

/// The route status writes a translation calls for: every route whose outcome differs from the
/// one this writer last wrote, and, for a route written before that no longer names a Service
/// parent, one removing Maille's entries.
pub fn plan_route_statuses(t: &Translation, written: &BTreeMap<RouteKey, RouteOutcome>) -> Vec<Op> {
    let mut ops = Vec::new();
    let current: BTreeSet<&RouteKey> = t.route_statuses.iter().map(|o| &o.key).collect();
    for o in &t.route_statuses {
        if written.get(&o.key) != Some(o) {
            ops.push(Op::RouteStatus(Box::new(o.clone())));
        }
    }
    for (key, o) in written {
        if !current.contains(key) {
            ops.push(Op::RouteStatus(Box::new(RouteOutcome {
                key: key.clone(),
                generation: o.generation,
                parents: Vec::new(),
            })));
        }
    }
    ops
}

/// The API resource of a kind that problems are reported on, when Events can name it.
fn event_resource(kind: &str) -> Option<ApiResource> {
    use crate::smi::{HTTPRouteGroup, TCPRoute, TrafficSplit, TrafficTarget, UDPRoute};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    Some(match kind {
        "Service" => ApiResource::erase::<Service>(&()),
        "EndpointSlice" => ApiResource::erase::<EndpointSlice>(&()),
        "TrafficTarget" => ApiResource::erase::<TrafficTarget>(&()),
        "HTTPRouteGroup" => ApiResource::erase::<HTTPRouteGroup>(&()),
        "TCPRoute" => ApiResource::erase::<TCPRoute>(&()),
        "UDPRoute" => ApiResource::erase::<UDPRoute>(&()),
        "TrafficSplit" => ApiResource::erase::<TrafficSplit>(&()),
        _ => return None,
    })
}

/// The Event's name: the object's name and a hash of what makes two Events the same (the
/// object, its uid, reason and message), so that the same problem always finds its Event,
/// across passes and restarts, and a recreated object gets a new one.
pub fn event_name(p: &Problem, uid: &str) -> String {
    let key = format!(
        "{}\n{}\n{}\n{uid}\n{EVENT_REASON}\n{}",
        p.object.kind, p.object.namespace, p.object.name, p.message
    );
    let suffix = crate::dns::content_hash(&key);
    // An Event name is a DNS subdomain of at most 253 characters.
    let mut prefix = p.object.name.as_str();
    if prefix.len() > 253 - 1 - suffix.len() {
        prefix = &prefix[..253 - 1 - suffix.len()];
        prefix = prefix.trim_end_matches(['.', '-']);
    }
    format!("{prefix}.{suffix}")
}

fn event_for(p: &Problem, resource: &ApiResource, object: &DynamicObject, now: Time) -> Event {
    let uid = object.metadata.uid.clone().unwrap_or_default();
    Event {
        metadata: ObjectMeta {
            name: Some(event_name(p, &uid)),
            namespace: Some(p.object.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some(resource.api_version.clone()),
            kind: Some(resource.kind.clone()),
            namespace: Some(p.object.namespace.clone()),
            name: Some(p.object.name.clone()),
            uid: Some(uid),
            resource_version: object.metadata.resource_version.clone(),
            ..ObjectReference::default()
        },
        reason: Some(EVENT_REASON.into()),
        message: Some(p.message.clone()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some(FIELD_MANAGER.into()),
            host: None,
        }),
        reporting_component: Some(FIELD_MANAGER.into()),
        reporting_instance: Some(FIELD_MANAGER.into()),
        action: Some("Translate".into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Event::default()
    }
}

struct Backoff {
    attempts: u32,
    until: Instant,
}

/// The writer: applies plans, retrying failed writes with per-object backoff.
pub struct Writer {
    client: Client,
    mesh_namespace: String,
    proxy_labels: BTreeMap<String, String>,
    reported: BTreeSet<Problem>,
    backoff: BTreeMap<Key, Backoff>,
    in_flight: InFlight,
    /// Route statuses written (or found already right) by this writer, by route: a status is
    /// written again when its outcome changes.
    route_statuses: BTreeMap<RouteKey, RouteOutcome>,
}

impl Writer {
    /// A writer for this mesh namespace; shadows select pods with `proxy_labels`.
    pub fn new(
        client: Client,
        mesh_namespace: String,
        proxy_labels: BTreeMap<String, String>,
    ) -> Self {
        Writer {
            client,
            mesh_namespace,
            proxy_labels,
            reported: BTreeSet::new(),
            backoff: BTreeMap::new(),
            in_flight: InFlight::default(),
            route_statuses: BTreeMap::new(),
        }
    }

    async fn execute(&self, op: &Op) -> Result<(), kube::Error> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), &self.mesh_namespace);
        match op {
            Op::Apply(svc) => {
                let name = svc.metadata.name.clone().unwrap_or_default();
                let mut body = serde_json::to_value(svc.as_ref()).expect("service serialises");
                body["apiVersion"] = "v1".into();
                body["kind"] = "Service".into();
                services
                    .patch(
                        &name,
                        &PatchParams::apply(FIELD_MANAGER).force(),
                        &Patch::Apply(body),
                    )
                    .await
                    .map(|_| ())
            }
            Op::Delete(name) => match services.delete(name, &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e),
            },
            Op::Event(p) => self.report(p).await,
            Op::RouteStatus(o) => crate::gateway::status::write(&self.client, o).await,
        }
    }

    /// Writes the Event of a problem: bumps `count` and `lastTimestamp` of the Event already
    /// written for it (by this run or an earlier one), or creates it. Nothing when the object
    /// is gone.
    async fn report(&self, p: &Problem) -> Result<(), kube::Error> {
        let Some(resource) = event_resource(&p.object.kind) else {
            return Ok(());
        };
        let objects: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &p.object.namespace, &resource);
        let Some(object) = objects.get_opt(&p.object.name).await? else {
            return Ok(());
        };
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let event = event_for(p, &resource, &object, now.clone());
        let name = event.metadata.name.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &p.object.namespace);
        match events.get_opt(&name).await? {
            Some(existing) => {
                let patch = serde_json::json!({
                    "count": existing.count.unwrap_or(1).saturating_add(1),
                    "lastTimestamp": now,
                    "involvedObject": {"resourceVersion": object.metadata.resource_version},
                });
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
            None => events
                .create(&PostParams::default(), &event)
                .await
                .map(|_| ()),
        }
    }

    /// Runs one pass: executes every planned write not in backoff. Returns when the next
    /// backoff ends, if any write is waiting for one.
    pub async fn pass(&mut self, t: &Translation, observed: &Shadows) -> Option<Instant> {
        // Problems that went away may be reported again if they come back.
        let current: BTreeSet<&Problem> = t.problems.iter().collect();
        self.reported.retain(|p| current.contains(p));
        self.in_flight.settle(observed, Instant::now());
        let mut ops = plan(
            t,
            observed,
            &self.reported,
            &self.in_flight,
            &self.mesh_namespace,
            &self.proxy_labels,
        );
        ops.extend(plan_route_statuses(t, &self.route_statuses));
        let wanted: BTreeSet<Key> = ops.iter().map(Op::key).collect();
        self.backoff.retain(|k, _| wanted.contains(k));
        let now = Instant::now();
        for op in ops {
            let key = op.key();
            if self.backoff.get(&key).is_some_and(|b| b.until > now) {
                continue;
            }
            let result = self.execute(&op).await;
            let label = if result.is_ok() { "ok" } else { "error" };
            metrics::register()
                .api_writes
                .with_label_values(&[op.kind(), label])
                .inc();
            match result {
                Ok(()) => {
                    tracing::info!(?key, "Wrote to the API server");
                    self.backoff.remove(&key);
                    match op {
                        Op::Event(p) => {
                            self.reported.insert(p);
                        }
                        Op::RouteStatus(o) => {
                            if o.parents.is_empty() {
                                self.route_statuses.remove(&o.key);
                            } else {
                                self.route_statuses.insert(o.key.clone(), *o);
                            }
                        }
                        Op::Apply(svc) => {
                            let name = svc.metadata.name.clone().unwrap_or_default();
                            let rv = version(observed.get(&name));
                            self.in_flight
                                .applied
                                .insert(name, (svc, rv, Instant::now()));
                        }
                        Op::Delete(name) => {
                            let rv = version(observed.get(&name));
                            self.in_flight.deleted.insert(name, (rv, Instant::now()));
                        }
                    }
                }
                Err(err) => {
                    let attempts = self.backoff.get(&key).map_or(0, |b| b.attempts) + 1;
                    let delay = BACKOFF_MIN
                        .saturating_mul(1 << attempts.min(16))
                        .min(BACKOFF_MAX);
                    tracing::warn!(?key, %err, attempts, retry_in_ms = delay.as_millis() as u64, "Write failed; will retry");
                    self.backoff.insert(
                        key,
                        Backoff {
                            attempts,
                            until: Instant::now() + delay,
                        },
                    );
                }
            }
        }
        self.backoff.values().map(|b| b.until).min()
    }

    /// Brings the cluster to each new translation (and back to it when shadows drift), until
    /// shutdown. Waits for the first translation: nothing is deleted before a table exists.
    pub async fn run(
        mut self,
        mut translations: watch::Receiver<Option<Arc<Translation>>>,
        mut shadows: watch::Receiver<Shadows>,
        shutdown: CancellationToken,
    ) {
        loop {
            let t = translations.borrow_and_update().clone();
            let observed = shadows.borrow_and_update().clone();
            let next = match t {
                Some(t) => self.pass(&t, &observed).await,
                None => None,
            };
            let retry = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = translations.changed() => if r.is_err() { return },
                r = shadows.changed() => if r.is_err() { return },
                _ = retry => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;

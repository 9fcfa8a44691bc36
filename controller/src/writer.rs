//! Writes to the API server: shadow services (create/update by server-side apply, delete of
//! the ones no longer wanted, orphans included) and an Event on a user's Service for each new
//! problem. A work queue with per-object exponential backoff: a failed write is retried later
//! and never holds up the others, nor the table builds (which run in their own task).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Event, EventSource, ObjectReference, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::kubernetes::Shadows;
use crate::metrics;
use crate::naming::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, SOURCE_NAMESPACE_LABEL, SOURCE_NAME_LABEL,
};
use crate::problem::Problem;
use crate::translate::{ShadowSpec, Translation};

/// Field manager of the controller's server-side applies.
pub const FIELD_MANAGER: &str = "maille-controller";
/// Reason of the Events about problems on a Service.
pub const EVENT_REASON: &str = "MailleConfigError";

const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// One write.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Create or update a shadow service.
    Apply(Box<Service>),
    /// Delete a shadow service.
    Delete(String),
    /// Report a problem on a user's Service.
    Event(Problem),
}

/// The queue key of a write: one pending write per object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// A shadow service, by name.
    Shadow(String),
    /// An Event, by problem.
    Event(Problem),
}

impl Op {
    /// The key of this write.
    pub fn key(&self) -> Key {
        match self {
            Op::Apply(s) => Key::Shadow(s.metadata.name.clone().unwrap_or_default()),
            Op::Delete(n) => Key::Shadow(n.clone()),
            Op::Event(p) => Key::Event(p.clone()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Op::Apply(_) | Op::Delete(_) => "Service",
            Op::Event(_) => "Event",
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

/// The writes that bring the cluster to the translation: shadow applies (by name), deletes of
/// shadows no longer wanted (orphans included), then Events for problems not yet reported.
pub fn plan(
    t: &Translation,
    observed: &Shadows,
    reported: &BTreeSet<Problem>,
    mesh_namespace: &str,
    proxy_labels: &BTreeMap<String, String>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for (name, spec) in &t.shadows {
        let desired = shadow_service(name, spec, mesh_namespace, proxy_labels);
        if !observed.get(name).is_some_and(|o| up_to_date(o, &desired)) {
            ops.push(Op::Apply(Box::new(desired)));
        }
    }
    for name in observed.keys() {
        if !t.shadows.contains_key(name) {
            ops.push(Op::Delete(name.clone()));
        }
    }
    for p in &t.problems {
        if p.object.kind == "Service" && !reported.contains(p) {
            ops.push(Op::Event(p.clone()));
        }
    }
    ops
}

fn event_for(p: &Problem, now: Time) -> Event {
    let stamp = now.0.as_nanosecond();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{:x}", p.object.name, stamp)),
            namespace: Some(p.object.namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(p.object.namespace.clone()),
            name: Some(p.object.name.clone()),
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
            Op::Event(p) => {
                let events: Api<Event> = Api::namespaced(self.client.clone(), &p.object.namespace);
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                events
                    .create(&PostParams::default(), &event_for(p, now))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Runs one pass: executes every planned write not in backoff. Returns when the next
    /// backoff ends, if any write is waiting for one.
    pub async fn pass(&mut self, t: &Translation, observed: &Shadows) -> Option<Instant> {
        // Problems that went away may be reported again if they come back.
        let current: BTreeSet<&Problem> = t.problems.iter().collect();
        self.reported.retain(|p| current.contains(p));
        let ops = plan(
            t,
            observed,
            &self.reported,
            &self.mesh_namespace,
            &self.proxy_labels,
        );
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
                    if let Op::Event(p) = op {
                        self.reported.insert(p);
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

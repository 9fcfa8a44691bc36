//! The Kubernetes provider: reflectors on Services, EndpointSlices, Pods and the SMI resources,
//! turned into [`Snapshot`]s (a burst of watch events gives one), plus the shadow services
//! currently in the mesh namespace, for the writer (ports are taken from the shadows in the
//! snapshot's Services at every rebuild, see `Rebuilder::with_ports_from_shadows`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use config_model::{ServiceKey, TrafficType};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::alloc::PortAllocator;
use crate::gateway::{GRPCRoute, GatewayObjects, HTTPRoute};
use crate::metrics;
use crate::naming::{
    MANAGED_BY_LABEL, MANAGED_BY_VALUE, SOURCE_NAMESPACE_LABEL, SOURCE_NAME_LABEL,
};
use crate::settings::Settings;
use crate::smi::{HTTPRouteGroup, SmiObjects, TCPRoute, TrafficSplit, TrafficTarget, UDPRoute};
use crate::snapshot::Snapshot;

/// Why the Kubernetes provider could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No usable kubeconfig or in-cluster account.
    #[error("cannot configure the Kubernetes client ({source_name}): {message}")]
    Config {
        /// Where the configuration came from.
        source_name: String,
        /// What went wrong.
        message: String,
    },
    /// The watches stopped before the first full sync.
    #[error("the {kind} watch stopped before its first sync")]
    Sync {
        /// The kind whose watch stopped.
        kind: &'static str,
    },
}

/// `pub type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client from `--kubeconfig`, or else the in-cluster account or `$KUBECONFIG`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let (source_name, config) = match kubeconfig {
        Some(path) => {
            let name = path.display().to_string();
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Config {
                source_name: name.clone(),
                message: e.to_string(),
            })?;
            let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Config {
                    source_name: name.clone(),
                    message: e.to_string(),
                })?;
            (name, config)
        }
        None => (
            "in-cluster or $KUBECONFIG".to_string(),
            kube::Config::infer().await.map_err(|e| Error::Config {
                source_name: "in-cluster or $KUBECONFIG".into(),
                message: e.to_string(),
            })?,
        ),
    };
    Client::try_from(config).map_err(|e| Error::Config {
        source_name,
        message: e.to_string(),
    })
}

/// Shadow services found in the mesh namespace, by name.
pub type Shadows = BTreeMap<String, Arc<Service>>;

/// How often the watches retry: a failing watch backs off from `backoff_min`, doubling, up to
/// a cap that depends on why it fails. A `410 Gone` relists at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchTiming {
    /// First retry delay after an error.
    pub backoff_min: Duration,
    /// Cap for errors that should pass (API server restarting, network): the view is stale
    /// for at most about this long after the API server is back.
    pub backoff_max: Duration,
    /// Cap for an optional kind whose CRD is not installed (404): how soon a CRD installed
    /// later is noticed.
    pub absent_recheck: Duration,
    /// Cap for a kind the controller may not list (403): a permission granted later is
    /// noticed within this.
    pub forbidden_recheck: Duration,
}

impl Default for WatchTiming {
    fn default() -> Self {
        WatchTiming {
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(4),
            absent_recheck: Duration::from_secs(15),
            forbidden_recheck: Duration::from_secs(60),
        }
    }
}

/// What the watch of one kind is doing now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchState {
    /// The first list has not been answered yet.
    Starting,
    /// Listed, and watching for changes.
    Synced,
    /// The last list or watch failed; the objects held are those of the last sync.
    Failing {
        /// The last error.
        error: String,
        /// When the watch started failing.
        since: std::time::Instant,
    },
    /// An optional kind whose resource the API server does not serve (CRD not installed).
    NotInstalled,
    /// The controller may not list this kind (403).
    Forbidden {
        /// The API server's message.
        error: String,
    },
}

/// The health of one kind's watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindHealth {
    /// Whether readiness waits for this kind (Services, EndpointSlices, Pods); the SMI kinds
    /// are optional.
    pub required: bool,
    /// What the watch is doing.
    pub state: WatchState,
    /// Whether the watch has listed its objects at least once.
    pub synced_once: bool,
}

impl KindHealth {
    /// Whether the first sync is over for readiness: a required kind has listed its objects,
    /// an optional one has either listed them or found out that it cannot.
    pub fn settled(&self) -> bool {
        self.synced_once || (!self.required && self.state != WatchState::Starting)
    }
}

/// Watch health of every kind, by kind.
pub type Health = BTreeMap<&'static str, KindHealth>;

/// One line per kind, for `/ready`: `Service: synced`, `UDPRoute: forbidden (...)`.
pub fn describe_health(health: &Health) -> String {
    let mut out = String::new();
    for (kind, h) in health {
        let optional = if h.required { "" } else { " (optional)" };
        let what = match &h.state {
            WatchState::Starting => "starting".to_string(),
            WatchState::Synced => "synced".to_string(),
            WatchState::Failing { error, since } => format!(
                "STALE: failing for {}s: {}",
                since.elapsed().as_secs(),
                cut(error)
            ),
            WatchState::NotInstalled => "not installed (CRD absent; rechecked)".to_string(),
            WatchState::Forbidden { error } => {
                format!("forbidden, skipped (rechecked): {}", cut(error))
            }
        };
        out.push_str(&format!("{kind}{optional}: {what}\n"));
    }
    out
}

/// An error message cut to a bounded length for `/ready` and logs.
fn cut(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Why a watch error happened, which sets how long to wait before retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// `410 Gone`: the resume point was compacted; relist now.
    Expired,
    /// 404 on the list: the resource is not served.
    Absent,
    /// 403.
    Forbidden,
    /// Anything else.
    Other,
}

pub(crate) fn classify(err: &watcher::Error) -> Failure {
    let code = match err {
        watcher::Error::WatchError(status) => Some(status.code),
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    };
    match code {
        Some(410) => Failure::Expired,
        Some(404) => Failure::Absent,
        Some(403) => Failure::Forbidden,
        _ => Failure::Other,
    }
}

/// The resourceVersion of an object as a number (etcd's revision): cluster-wide and growing.
fn revision<K: Resource>(obj: &K) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The watches and their stores.
pub struct Provider {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    smi: SmiStores,
    http_routes: Store<HTTPRoute>,
    grpc_routes: Store<GRPCRoute>,
    changed: Arc<Notify>,
    mesh_namespace: String,
    shadows: watch::Sender<Shadows>,
    health: watch::Sender<Health>,
    revision: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

struct SmiStores {
    traffic_targets: Store<TrafficTarget>,
    http_route_groups: Store<HTTPRouteGroup>,
    tcp_routes: Store<TCPRoute>,
    udp_routes: Store<UDPRoute>,
    traffic_splits: Store<TrafficSplit>,
}

/// What every watch task shares.
#[derive(Clone)]
struct Shared {
    changed: Arc<Notify>,
    health: watch::Sender<Health>,
    revision: Arc<AtomicU64>,
    timing: WatchTiming,
    shutdown: CancellationToken,
}

impl Shared {
    fn set_state(&self, kind: &'static str, state: WatchState) {
        self.health.send_if_modified(|h| match h.get_mut(kind) {
            Some(k) if k.state != state => {
                // Keep when the failure started across repeated errors.
                if let (WatchState::Failing { since: old, .. }, WatchState::Failing { error, .. }) =
                    (&k.state, &state)
                {
                    k.state = WatchState::Failing {
                        error: error.clone(),
                        since: *old,
                    };
                } else {
                    k.synced_once |= state == WatchState::Synced;
                    k.state = state;
                }
                true
            }
            _ => false,
        });
    }
}

/// Starts a reflector for one kind. Every change wakes `changed`; errors back off (see
/// [`WatchTiming`]) and are logged once per change of state; the kind's health is kept in
/// `shared.health`.
fn reflect<K>(api: Api<K>, required: bool, shared: &Shared) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    reflect_with(api, required, shared, |_| None)
}

/// What of a Pod translation reads, for [`reflect_with`]: see [`crate::smi::pod_fingerprint`].
/// Status updates that change none of it (readiness, conditions, container states: most Pod
/// events) cannot change the table.
fn pod_fingerprint(pod: &Pod) -> Option<u64> {
    Some(crate::smi::pod_fingerprint(pod))
}

/// [`reflect`], waking the rebuild only for changes `fingerprint` sees: an update whose
/// fingerprint equals the object's last one is stored but rebuilds nothing. `None` means
/// "every change counts".
fn reflect_with<K>(
    api: Api<K>,
    required: bool,
    shared: &Shared,
    fingerprint: fn(&K) -> Option<u64>,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind: &'static str = Box::leak(K::kind(&Default::default()).to_string().into_boxed_str());
    shared.health.send_modify(|h| {
        h.insert(
            kind,
            KindHealth {
                required,
                state: WatchState::Starting,
                synced_once: false,
            },
        );
    });
    let stream = watcher(api, watcher::Config::default()).reflect(writer);
    let shared = shared.clone();
    let m = metrics::register();
    m.watch_up.with_label_values(&[kind]).set(0);
    m.watch_errors.with_label_values(&[kind]);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut delay = shared.timing.backoff_min;
        let mut last_failure = None;
        let mut synced_once = false;
        // Fingerprints of the objects held, by namespace/name (only with a fingerprint).
        let mut seen: std::collections::HashMap<(Option<String>, String), u64> =
            std::collections::HashMap::new();
        let key = |o: &K| {
            (
                o.meta().namespace.clone(),
                o.meta().name.clone().unwrap_or_default(),
            )
        };
        loop {
            // A watch resumed after an error gives no event until something changes: when the
            // retry has not failed within a few backoff steps, the watch is up again.
            let quiet = shared.timing.backoff_min * 4;
            let recovering = last_failure.is_some() && synced_once;
            let ev = tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                ev = stream.next() => ev,
                _ = tokio::time::sleep(quiet), if recovering => {
                    tracing::info!(kind, "Watch recovered");
                    last_failure = None;
                    shared.set_state(kind, WatchState::Synced);
                    m.watch_up.with_label_values(&[kind]).set(1);
                    continue;
                }
            };
            let err = match ev {
                None => return,
                Some(Ok(ev)) => {
                    if !matches!(ev, watcher::Event::Init) {
                        // Progress (an Init also follows every failed list).
                        delay = shared.timing.backoff_min;
                    }
                    let rev = match &ev {
                        watcher::Event::Apply(o)
                        | watcher::Event::Delete(o)
                        | watcher::Event::InitApply(o) => revision(o),
                        _ => 0,
                    };
                    shared.revision.fetch_max(rev, Ordering::AcqRel);
                    match ev {
                        watcher::Event::InitDone => {
                            synced_once = true;
                            if last_failure.take().is_some() {
                                tracing::info!(kind, "Watch recovered");
                            }
                            shared.set_state(kind, WatchState::Synced);
                            m.watch_up.with_label_values(&[kind]).set(1);
                            shared.changed.notify_one();
                        }
                        watcher::Event::Apply(o) => match fingerprint(&o) {
                            Some(fp) if seen.insert(key(&o), fp) == Some(fp) => {
                                m.watch_events_ignored.with_label_values(&[kind]).inc();
                            }
                            _ => shared.changed.notify_one(),
                        },
                        watcher::Event::Delete(o) => {
                            seen.remove(&key(&o));
                            shared.changed.notify_one();
                        }
                        watcher::Event::Init => seen.clear(),
                        watcher::Event::InitApply(o) => {
                            if let Some(fp) = fingerprint(&o) {
                                seen.insert(key(&o), fp);
                            }
                        }
                    }
                    continue;
                }
                Some(Err(err)) => err,
            };
            let failure = classify(&err);
            m.watch_errors.with_label_values(&[kind]).inc();
            if failure == Failure::Expired {
                // The resume point is gone: the watcher relists at its next poll, now.
                tracing::info!(kind, "Watch expired (410 Gone); relisting");
                continue;
            }
            m.watch_up.with_label_values(&[kind]).set(0);
            let (state, cap) = match failure {
                Failure::Absent if !required => {
                    (WatchState::NotInstalled, shared.timing.absent_recheck)
                }
                Failure::Forbidden if !required => (
                    WatchState::Forbidden {
                        error: err.to_string(),
                    },
                    shared.timing.forbidden_recheck,
                ),
                _ => (
                    WatchState::Failing {
                        error: err.to_string(),
                        since: std::time::Instant::now(),
                    },
                    if failure == Failure::Forbidden {
                        shared.timing.forbidden_recheck
                    } else {
                        shared.timing.backoff_max
                    },
                ),
            };
            if last_failure != Some(failure) {
                match &state {
                    WatchState::NotInstalled => tracing::warn!(
                        kind,
                        recheck_s = cap.as_secs(),
                        "Optional resource (SMI or Gateway API) not installed; skipping it until its CRD appears"
                    ),
                    WatchState::Forbidden { .. } => tracing::warn!(
                        kind,
                        %err,
                        "Not allowed to list this optional resource (SMI or Gateway API); skipping it (grant list and watch to use it)"
                    ),
                    _ => {
                        tracing::warn!(kind, %err, "Watch failed; serving the last view while retrying")
                    }
                }
                last_failure = Some(failure);
            } else {
                tracing::debug!(kind, %err, retry_in_ms = delay.as_millis() as u64, "Watch still failing");
            }
            shared.set_state(kind, state);
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(cap);
        }
    });
    reader
}

impl Provider {
    /// Starts the watches, with the default [`WatchTiming`].
    pub async fn start(client: Client, settings: &Settings, shutdown: CancellationToken) -> Self {
        Self::start_with(client, settings, WatchTiming::default(), shutdown)
    }

    /// Starts the watches. The SMI kinds are optional: one that is not installed or not
    /// allowed is skipped (and rechecked) without holding up readiness.
    pub fn start_with(
        client: Client,
        settings: &Settings,
        timing: WatchTiming,
        shutdown: CancellationToken,
    ) -> Self {
        let shared = Shared {
            changed: Arc::new(Notify::new()),
            health: watch::Sender::new(Health::new()),
            revision: Arc::new(AtomicU64::new(0)),
            timing,
            shutdown: shutdown.clone(),
        };
        let services = reflect(Api::<Service>::all(client.clone()), true, &shared);
        let slices = reflect(Api::<EndpointSlice>::all(client.clone()), true, &shared);
        let pods = reflect_with(
            Api::<Pod>::all(client.clone()),
            true,
            &shared,
            pod_fingerprint,
        );
        let smi = SmiStores {
            traffic_targets: reflect(Api::all(client.clone()), false, &shared),
            http_route_groups: reflect(Api::all(client.clone()), false, &shared),
            tcp_routes: reflect(Api::all(client.clone()), false, &shared),
            udp_routes: reflect(Api::all(client.clone()), false, &shared),
            traffic_splits: reflect(Api::all(client.clone()), false, &shared),
        };
        // Gateway API routes are optional like SMI: without their CRDs the controller runs
        // without routes (logged once, rechecked).
        let http_routes = reflect(Api::all(client.clone()), false, &shared);
        let grpc_routes = reflect(Api::all(client.clone()), false, &shared);
        Provider {
            services,
            slices,
            pods,
            smi,
            http_routes,
            grpc_routes,
            changed: shared.changed,
            mesh_namespace: settings.mesh_namespace.clone(),
            shadows: watch::Sender::new(Shadows::new()),
            health: shared.health,
            revision: shared.revision,
            shutdown,
        }
    }

    /// Waits until every required watch has listed its objects once, and every optional one
    /// has listed them or found that it cannot.
    pub async fn wait_synced(&self) -> Result<()> {
        let mut rx = self.health.subscribe();
        let settled = rx.wait_for(|h| h.values().all(KindHealth::settled)).await;
        if settled.is_err() {
            return Err(Error::Sync { kind: "Service" });
        }
        drop(settled);
        self.shadows.send_replace(self.current_shadows());
        tracing::info!(services = self.services.len(), "Watches synced");
        Ok(())
    }

    /// The health of every watch, kept current.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// The objects the stores hold now.
    pub fn snapshot(&self) -> Snapshot {
        // Read before the stores: the snapshot holds at least what this revision says.
        let revision = self.revision.load(Ordering::Acquire);
        Snapshot {
            services: self.services.state(),
            endpoint_slices: self.slices.state(),
            pods: self.pods.state(),
            smi: SmiObjects {
                traffic_targets: self.smi.traffic_targets.state(),
                http_route_groups: self.smi.http_route_groups.state(),
                tcp_routes: self.smi.tcp_routes.state(),
                udp_routes: self.smi.udp_routes.state(),
                traffic_splits: self.smi.traffic_splits.state(),
            },
            gateway: GatewayObjects {
                http_routes: self.http_routes.state(),
                grpc_routes: self.grpc_routes.state(),
            },
            problems: Vec::new(),
            revision,
        }
    }

    fn current_shadows(&self) -> Shadows {
        self.services
            .state()
            .into_iter()
            .filter(|s| is_shadow(s, &self.mesh_namespace))
            .map(|s| (s.metadata.name.clone().unwrap_or_default(), s))
            .collect()
    }

    /// The shadow services in the mesh namespace, kept current while [`Provider::run`] runs.
    pub fn shadows(&self) -> watch::Receiver<Shadows> {
        self.shadows.subscribe()
    }

    /// Publishes a snapshot now and after every burst of changes, until shutdown.
    pub async fn run(&self, tx: watch::Sender<Option<Arc<Snapshot>>>) -> Result<()> {
        loop {
            tx.send_replace(Some(Arc::new(self.snapshot())));
            let shadows = self.current_shadows();
            self.shadows.send_if_modified(|cur| {
                let same = cur.len() == shadows.len()
                    && cur.iter().zip(shadows.iter()).all(|((a, x), (b, y))| {
                        a == b && x.metadata.resource_version == y.metadata.resource_version
                    });
                if !same {
                    *cur = shadows;
                }
                !same
            });
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = self.changed.notified() => {}
            }
            // Coalesce a burst of events (a rollout touches many objects) into one rebuild.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Whether a Service is a shadow service Maille owns in the mesh namespace.
pub fn is_shadow(s: &Service, mesh_namespace: &str) -> bool {
    s.metadata.namespace.as_deref() == Some(mesh_namespace)
        && s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_BY_LABEL))
            .map(String::as_str)
            == Some(MANAGED_BY_VALUE)
}

/// Seeds `alloc` from shadow services: each TCP/UDP port whose target port lies in the TCP or
/// UDP range keeps it. Returns how many allocations were recovered.
pub fn seed_from_shadows<'a>(
    shadows: impl IntoIterator<Item = &'a Service>,
    alloc: &mut PortAllocator,
    settings: &Settings,
) -> usize {
    let mut n = 0;
    for s in shadows {
        let labels = s.metadata.labels.clone().unwrap_or_default();
        let (Some(ns), Some(name)) = (
            labels.get(SOURCE_NAMESPACE_LABEL),
            labels.get(SOURCE_NAME_LABEL),
        ) else {
            continue;
        };
        for p in s.spec.iter().flat_map(|sp| sp.ports.iter().flatten()) {
            let Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(target)) =
                p.target_port
            else {
                continue;
            };
            let (Ok(port), Ok(target)) = (u16::try_from(p.port), u16::try_from(target)) else {
                continue;
            };
            let tt = match p.protocol.as_deref().unwrap_or("TCP") {
                "UDP" if settings.udp_ports.contains(target) => TrafficType::Udp,
                "TCP" if settings.tcp_ports.contains(target) => TrafficType::Tcp,
                _ => continue,
            };
            let key = ServiceKey {
                namespace: ns.clone(),
                name: name.clone(),
                port,
            };
            if alloc.seed(tt, key, target) {
                n += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests;

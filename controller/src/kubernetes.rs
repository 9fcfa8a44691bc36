//! The Kubernetes provider: reflectors on Services, EndpointSlices, Pods and the SMI resources,
//! turned into [`Snapshot`]s (a burst of watch events gives one), plus the shadow services
//! currently in the mesh namespace, for the writer and for port recovery at start.

use std::collections::BTreeMap;
use std::path::Path;
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

/// The watches and their stores.
pub struct Provider {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    smi: SmiStores,
    changed: Arc<Notify>,
    mesh_namespace: String,
    shadows: watch::Sender<Shadows>,
    shutdown: CancellationToken,
}

#[derive(Default)]
struct SmiStores {
    traffic_targets: Option<Store<TrafficTarget>>,
    http_route_groups: Option<Store<HTTPRouteGroup>>,
    tcp_routes: Option<Store<TCPRoute>>,
    udp_routes: Option<Store<UDPRoute>>,
    traffic_splits: Option<Store<TrafficSplit>>,
}

fn state<K>(store: &Option<Store<K>>) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.as_ref().map(Store::state).unwrap_or_default()
}

/// Starts a reflector for one kind; every event wakes `changed`.
fn reflect<K>(api: Api<K>, changed: Arc<Notify>, shutdown: CancellationToken) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&Default::default()).to_string();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => match ev {
                    Some(Ok(_)) => changed.notify_one(),
                    Some(Err(err)) => tracing::warn!(%kind, %err, "Watch failed; retrying"),
                    None => return,
                },
            }
        }
    });
    reader
}

/// Whether the API server serves this custom resource (the SMI CRDs are optional).
async fn served<K>(api: &Api<K>) -> bool
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(kube::Error::Api(e)) if e.code == 404 => false,
        Err(err) => {
            tracing::warn!(%err, "Cannot list an SMI resource; watching it anyway");
            true
        }
    }
}

impl Provider {
    /// Starts the watches. SMI kinds whose CRD is not installed are skipped (with a warning).
    pub async fn start(client: Client, settings: &Settings, shutdown: CancellationToken) -> Self {
        let changed = Arc::new(Notify::new());
        let services = reflect(
            Api::<Service>::all(client.clone()),
            changed.clone(),
            shutdown.clone(),
        );
        let slices = reflect(
            Api::<EndpointSlice>::all(client.clone()),
            changed.clone(),
            shutdown.clone(),
        );
        let pods = reflect(
            Api::<Pod>::all(client.clone()),
            changed.clone(),
            shutdown.clone(),
        );
        let mut smi = SmiStores::default();
        macro_rules! smi_kind {
            ($field:ident, $ty:ty) => {{
                let api = Api::<$ty>::all(client.clone());
                if served(&api).await {
                    smi.$field = Some(reflect(api, changed.clone(), shutdown.clone()));
                } else {
                    tracing::warn!(kind = %<$ty>::kind(&()), "SMI resource not installed; not watching it");
                }
            }};
        }
        smi_kind!(traffic_targets, TrafficTarget);
        smi_kind!(http_route_groups, HTTPRouteGroup);
        smi_kind!(tcp_routes, TCPRoute);
        smi_kind!(udp_routes, UDPRoute);
        smi_kind!(traffic_splits, TrafficSplit);
        Provider {
            services,
            slices,
            pods,
            smi,
            changed,
            mesh_namespace: settings.mesh_namespace.clone(),
            shadows: watch::Sender::new(Shadows::new()),
            shutdown,
        }
    }

    /// Waits until every watch has listed its objects once.
    pub async fn wait_synced(&self) -> Result<()> {
        self.services
            .wait_until_ready()
            .await
            .map_err(|_| Error::Sync { kind: "Service" })?;
        self.slices
            .wait_until_ready()
            .await
            .map_err(|_| Error::Sync {
                kind: "EndpointSlice",
            })?;
        self.pods
            .wait_until_ready()
            .await
            .map_err(|_| Error::Sync { kind: "Pod" })?;
        macro_rules! wait {
            ($field:ident, $kind:literal) => {
                if let Some(s) = &self.smi.$field {
                    s.wait_until_ready()
                        .await
                        .map_err(|_| Error::Sync { kind: $kind })?;
                }
            };
        }
        wait!(traffic_targets, "TrafficTarget");
        wait!(http_route_groups, "HTTPRouteGroup");
        wait!(tcp_routes, "TCPRoute");
        wait!(udp_routes, "UDPRoute");
        wait!(traffic_splits, "TrafficSplit");
        self.shadows.send_replace(self.current_shadows());
        tracing::info!(services = self.services.len(), "Watches synced");
        Ok(())
    }

    /// The objects the stores hold now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            services: self.services.state(),
            endpoint_slices: self.slices.state(),
            pods: self.pods.state(),
            smi: SmiObjects {
                traffic_targets: state(&self.smi.traffic_targets),
                http_route_groups: state(&self.smi.http_route_groups),
                tcp_routes: state(&self.smi.tcp_routes),
                udp_routes: state(&self.smi.udp_routes),
                traffic_splits: state(&self.smi.traffic_splits),
            },
            problems: Vec::new(),
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

    /// Seeds the allocator with the TCP/UDP ports the shadow services hold, so that every
    /// service keeps its port across a restart of the controller.
    pub fn seed_allocations(&self, alloc: &mut PortAllocator, settings: &Settings) -> usize {
        seed_from_shadows(
            self.current_shadows().values().map(Arc::as_ref),
            alloc,
            settings,
        )
    }

    /// Publishes a snapshot now and after every burst of changes, until shutdown.
    pub async fn run(self, tx: watch::Sender<Option<Arc<Snapshot>>>) -> Result<()> {
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

//! The Kubernetes provider against the fake API server behind `kube::Client`: lists, watches,
//! a kind that may not be listed (403), a resume point that is gone (410), a CRD installed
//! after start, and the health that `/ready` shows.

use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::smi::crd::{TrafficSplitBackend, TrafficSplitSpec};
use crate::testing::{within, FakeApi};

fn service(ns: &str, name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn split(ns: &str, name: &str) -> TrafficSplit {
    let mut s = TrafficSplit::new(
        name,
        TrafficSplitSpec {
            service: "web".into(),
            backends: vec![TrafficSplitBackend {
                service: "web-v2".into(),
                weight: 1,
            }],
            ..TrafficSplitSpec::default()
        },
    );
    s.metadata.namespace = Some(ns.into());
    s
}

/// Quick retries, so that a test sees a few of them; each test overrides what it checks.
fn timing() -> WatchTiming {
    WatchTiming {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        absent_recheck: Duration::from_millis(200),
        forbidden_recheck: Duration::from_millis(200),
    }
}

struct Running {
    provider: Arc<Provider>,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts the provider and its publishing loop.
fn start(api: &FakeApi, timing: WatchTiming) -> Running {
    let shutdown = CancellationToken::new();
    let provider =
        Provider::start_with(api.client(), &Settings::default(), timing, shutdown.clone());
    let (tx, snapshots) = watch::channel(None);
    let provider = Arc::new(provider);
    let p = provider.clone();
    tokio::spawn(async move {
        let _ = p.run(tx).await;
    });
    Running {
        provider,
        snapshots,
        shutdown,
    }
}

/// Waits for a published snapshot that satisfies `pred`.
async fn snapshot_where(
    r: &mut Running,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    within(what, async {
        loop {
            if let Some(s) = r.snapshots.borrow_and_update().clone() {
                if pred(&s) {
                    return s;
                }
            }
            r.snapshots.changed().await.expect("provider running");
        }
    })
    .await
}

async fn state_of(r: &Running, kind: &'static str, pred: impl Fn(&WatchState) -> bool) -> Health {
    let mut rx = r.provider.health();
    let h = within(
        kind,
        rx.wait_for(|h| h.get(kind).is_some_and(|k| pred(&k.state))),
    )
    .await
    .expect("provider running")
    .clone();
    h
}

fn names(s: &Snapshot) -> Vec<String> {
    let mut v: Vec<String> = s
        .services
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or(""),
                s.metadata.name.as_deref().unwrap_or("")
            )
        })
        .collect();
    v.sort();
    v
}

fn lists_of(api: &FakeApi, resource: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| {
            r.starts_with("GET ")
                && r.contains(&format!("/{resource}?"))
                && !r.contains("watch=true")
        })
        .count()
}

/// Waits until a watch of `resource` is open (after the first sync, the watcher opens it at
/// its next poll), so that ending watches ends that one.
async fn watching(api: &FakeApi, resource: &str) {
    let needle = format!("/{resource}?");
    within("a watch", async {
        while !api
            .requests()
            .iter()
            .any(|r| r.contains(&needle) && r.contains("watch=true"))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn snapshots_follow_lists_and_watches_with_growing_revisions() {
    let api = FakeApi::new();
    api.insert(&service("shop", "web"));
    api.insert(&split("shop", "web-split"));
    let mut r = start(&api, timing());
    within("first sync", r.provider.wait_synced())
        .await
        .unwrap();
    let first = snapshot_where(&mut r, "the listed objects", |s| s.services.len() == 1).await;
    assert_eq!(names(&first), ["shop/web"]);
    assert_eq!(first.smi.traffic_splits.len(), 1);
    assert!(first.revision > 0);

    api.insert(&service("shop", "cart"));
    let added = snapshot_where(&mut r, "an added Service", |s| s.services.len() == 2).await;
    assert_eq!(names(&added), ["shop/cart", "shop/web"]);
    assert!(
        added.revision > first.revision,
        "{} then {}",
        first.revision,
        added.revision
    );

    api.remove::<Service>("shop", "web");
    let removed = snapshot_where(&mut r, "a deleted Service", |s| s.services.len() == 1).await;
    assert_eq!(names(&removed), ["shop/cart"]);
    // A deletion is a newer revision too: a table without "web" never looks older.
    assert!(removed.revision > added.revision);
    let health = r.provider.health().borrow().clone();
    assert_eq!(
        health.len(),
        10,
        "3 required kinds, 5 SMI and 2 Gateway API: {health:?}"
    );
    assert!(
        health.values().all(|h| h.state == WatchState::Synced),
        "{health:?}"
    );
}

#[tokio::test]
async fn a_forbidden_optional_kind_is_skipped_without_gating_readiness_and_backs_off() {
    let api = FakeApi::new();
    api.insert(&service("shop", "web"));
    api.set_forbidden("udproutes", true);
    let mut r = start(
        &api,
        WatchTiming {
            forbidden_recheck: Duration::from_millis(400),
            ..timing()
        },
    );
    // Today's controller watched it anyway and never became ready.
    within(
        "readiness despite a 403 on UDPRoute",
        r.provider.wait_synced(),
    )
    .await
    .unwrap();
    let health = state_of(&r, "UDPRoute", |s| {
        matches!(s, WatchState::Forbidden { .. })
    })
    .await;
    let text = describe_health(&health);
    assert!(
        text.contains("UDPRoute (optional): forbidden, skipped"),
        "{text}"
    );
    assert!(
        text.contains("cannot list resource \"udproutes\""),
        "{text}"
    );
    assert!(text.contains("Service: synced"), "{text}");
    snapshot_where(&mut r, "the Services", |s| s.services.len() == 1).await;

    // Retries grow from 50 ms to a 400 ms cap: over 2 s that is at most 2+5 lists (the
    // ~1.3 s fixed retry of before would be 2, a 50 ms one 40).
    let before = lists_of(&api, "udproutes");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = lists_of(&api, "udproutes") - before;
    assert!(
        (1..=8).contains(&during),
        "{during} lists of udproutes in 2 s"
    );

    // Granted later: picked up without a restart.
    api.set_forbidden("udproutes", false);
    state_of(&r, "UDPRoute", |s| *s == WatchState::Synced).await;
}

#[tokio::test]
async fn a_required_kind_that_cannot_be_listed_keeps_the_controller_unready() {
    let api = FakeApi::new();
    api.set_forbidden("endpointslices", true);
    let r = start(&api, timing());
    let health = state_of(&r, "EndpointSlice", |s| {
        matches!(s, WatchState::Failing { .. })
    })
    .await;
    assert!(describe_health(&health).contains("EndpointSlice: STALE: failing for"));
    let ready = tokio::time::timeout(Duration::from_millis(500), r.provider.wait_synced()).await;
    assert!(ready.is_err(), "ready without EndpointSlices");
    api.set_forbidden("endpointslices", false);
    within("readiness once allowed", r.provider.wait_synced())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_gone_resume_point_relists_at_once() {
    let api = FakeApi::new();
    api.insert(&service("shop", "web"));
    // Retries after errors wait 30 s: only a relist without backoff sees the change below in time.
    let mut r = start(
        &api,
        WatchTiming {
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30),
            ..timing()
        },
    );
    within("first sync", r.provider.wait_synced())
        .await
        .unwrap();
    let lists = lists_of(&api, "services");
    watching(&api, "services").await;

    // The API server restarts after a compaction: every resume is answered 410 Gone.
    api.compact();
    api.insert(&service("shop", "cart"));
    api.end_watches();
    let s = snapshot_where(&mut r, "the Service created across the restart", |s| {
        s.services.len() == 2
    })
    .await;
    assert_eq!(names(&s), ["shop/cart", "shop/web"]);
    assert!(lists_of(&api, "services") > lists, "no relist after 410");
    assert_eq!(
        r.provider.health().borrow()["Service"].state,
        WatchState::Synced
    );
}

#[tokio::test]
async fn a_watch_that_fails_after_sync_keeps_the_last_view_and_reports_it_stale() {
    let api = FakeApi::new();
    api.insert(&service("shop", "web"));
    let mut r = start(&api, timing());
    within("first sync", r.provider.wait_synced())
        .await
        .unwrap();
    watching(&api, "pods").await;
    api.set_forbidden("pods", true);
    api.end_watches();
    let health = state_of(&r, "Pod", |s| matches!(s, WatchState::Failing { .. })).await;
    let text = describe_health(&health);
    assert!(text.contains("Pod: STALE: failing for"), "{text}");
    assert!(health.values().all(KindHealth::settled), "{health:?}");
    // The last view is still served.
    snapshot_where(&mut r, "the Services", |s| s.services.len() == 1).await;
    api.set_forbidden("pods", false);
    state_of(&r, "Pod", |s| *s == WatchState::Synced).await;
}

#[tokio::test]
async fn an_smi_crd_installed_after_start_is_watched_without_a_restart() {
    let api = FakeApi::new();
    api.uninstall("trafficsplits");
    let mut r = start(&api, timing());
    within(
        "readiness without the TrafficSplit CRD",
        r.provider.wait_synced(),
    )
    .await
    .unwrap();
    let health = state_of(&r, "TrafficSplit", |s| *s == WatchState::NotInstalled).await;
    assert!(describe_health(&health).contains("TrafficSplit (optional): not installed"));

    api.install("trafficsplits");
    api.insert(&split("shop", "web-split"));
    let s = snapshot_where(&mut r, "the TrafficSplit", |s| {
        s.smi.traffic_splits.len() == 1
    })
    .await;
    assert_eq!(
        s.smi.traffic_splits[0].metadata.name.as_deref(),
        Some("web-split")
    );
    state_of(&r, "TrafficSplit", |s| *s == WatchState::Synced).await;
}

fn pod(ns: &str, name: &str, ip: &str, ready: &str) -> Pod {
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    Pod {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some("client".into()),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: ready.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

/// Issue 16 item 8: Pod status updates that leave what translation reads as it was (addresses,
/// ServiceAccount, phase) publish no snapshot, so nothing is rebuilt; a new address does.
#[tokio::test]
async fn pod_updates_that_cannot_change_the_table_rebuild_nothing() {
    let api = FakeApi::new();
    api.insert(&service("shop", "web"));
    api.insert(&pod("shop", "client-1", "10.1.0.5", "True"));
    let mut r = start(&api, timing());
    within("first sync", r.provider.wait_synced())
        .await
        .unwrap();
    snapshot_where(&mut r, "the listed pod", |s| s.pods.len() == 1).await;
    // Let the first syncs of every kind publish what they publish, then count from there.
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.snapshots.borrow_and_update();

    // Twenty readiness flips, spaced wider than the publisher's 50 ms coalescing.
    for i in 0..20 {
        let ready = if i % 2 == 0 { "False" } else { "True" };
        api.insert(&pod("shop", "client-1", "10.1.0.5", ready));
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    // Then one change that matters: the snapshot after it must be the only one published.
    api.insert(&pod("shop", "client-1", "10.1.0.9", "True"));
    let mut published = 0;
    within("the pod's new address", async {
        loop {
            r.snapshots.changed().await.expect("provider running");
            published += 1;
            let s = r.snapshots.borrow_and_update().clone().unwrap();
            let ip = s.pods[0].status.as_ref().unwrap().pod_ip.clone();
            if ip.as_deref() == Some("10.1.0.9") {
                return;
            }
        }
    })
    .await;
    assert_eq!(
        published, 1,
        "snapshots published for readiness-only Pod updates"
    );
}

#[tokio::test]
async fn gateway_api_routes_are_optional_and_watched_once_their_crds_appear() {
    use crate::gateway::crd::{GRPCRouteSpec, HTTPRouteSpec};
    use crate::gateway::{GRPCRoute, HTTPRoute};
    let api = FakeApi::new();
    api.uninstall("httproutes");
    api.uninstall("grpcroutes");
    api.insert(&service("shop", "web"));
    let mut r = start(&api, timing());
    within(
        "readiness without the Gateway API CRDs",
        r.provider.wait_synced(),
    )
    .await
    .unwrap();
    let health = state_of(&r, "HTTPRoute", |s| *s == WatchState::NotInstalled).await;
    let text = describe_health(&health);
    assert!(
        text.contains("HTTPRoute (optional): not installed"),
        "{text}"
    );
    assert!(
        text.contains("GRPCRoute (optional): not installed"),
        "{text}"
    );
    // The controller goes on without routes.
    snapshot_where(&mut r, "the Services", |s| s.services.len() == 1).await;

    api.install("httproutes");
    api.install("grpcroutes");
    let mut route = HTTPRoute::new("web", HTTPRouteSpec::default());
    route.metadata.namespace = Some("shop".into());
    api.insert(&route);
    let mut grpc = GRPCRoute::new("cart", GRPCRouteSpec::default());
    grpc.metadata.namespace = Some("shop".into());
    api.insert(&grpc);
    let s = snapshot_where(&mut r, "the routes", |s| {
        s.gateway.http_routes.len() == 1 && s.gateway.grpc_routes.len() == 1
    })
    .await;
    assert_eq!(
        s.gateway.http_routes[0].metadata.name.as_deref(),
        Some("web")
    );
    state_of(&r, "HTTPRoute", |s| *s == WatchState::Synced).await;
    state_of(&r, "GRPCRoute", |s| *s == WatchState::Synced).await;
}

/// Issue 14: what the mesh reads of a Pod (its node, its labels) counts as a change: a proxy
/// Pod scheduled and labelled publishes a snapshot, which lists it as its node's proxy with
/// the cluster's settings (the --proxy-selector labels, in the mesh namespace).
#[tokio::test]
async fn a_proxy_pod_scheduled_on_a_node_becomes_that_nodes_proxy() {
    use crate::mesh::MeshSettings;
    use config_model::MtlsMode;
    let api = FakeApi::new();
    api.insert(&service("shop", "web"));
    let mut proxy = pod("maille", "proxy-x", "10.1.0.7", "True");
    api.insert(&proxy);
    let mut r = start(&api, timing());
    within("first sync", r.provider.wait_synced())
        .await
        .unwrap();
    snapshot_where(&mut r, "the listed pod", |s| s.pods.len() == 1).await;
    // Let the first syncs of every kind publish what they publish: the next snapshot is the
    // Pod update's own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.snapshots.borrow_and_update();

    proxy.metadata.labels = Some(
        [
            ("app.kubernetes.io/name", "maille"),
            ("app.kubernetes.io/component", "proxy"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    );
    proxy.spec.as_mut().unwrap().node_name = Some("node-1".into());
    api.insert(&proxy);
    let snap = snapshot_where(&mut r, "the scheduled proxy", |s| {
        s.pods[0]
            .spec
            .as_ref()
            .is_some_and(|p| p.node_name.is_some())
    })
    .await;

    let settings = Settings {
        mesh: MeshSettings {
            mtls: MtlsMode::Strict,
            proxy_labels: [
                ("app.kubernetes.io/name", "maille"),
                ("app.kubernetes.io/component", "proxy"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            proxy_namespace: Some("maille".into()),
            tunnel_port: 15008,
        },
        ..Settings::default()
    };
    let mut alloc = crate::alloc::PortAllocator::new(settings.tcp_ports, settings.udp_ports);
    let t = crate::translate::translate(&snap, &settings, &mut alloc);
    let nodes: Vec<_> = t
        .table
        .nodes
        .iter()
        .map(|n| format!("{} {}", n.name, n.tunnel))
        .collect();
    assert_eq!(nodes, ["node-1 10.1.0.7:15008"]);
    assert!(t.table.workloads.is_empty(), "a proxy is not a workload");
}

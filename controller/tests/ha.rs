//! Two controller replicas (the library's `run_until`, each on a runtime of its own so that one
//! can die abruptly) against one fake API server over loopback HTTP: one leader writes, both
//! serve the same table, the follower takes over when the leader dies.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use k8s_openapi::api::core::v1::Service;
use maille_controller::cli::Cli;
use maille_controller::naming;
use maille_controller::testing::{eventually, free_port, FakeApi, PATIENCE};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

fn tcp_service(name: &str, port: u16) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": name,
                     "annotations": {"maille.io/traffic-type": "tcp"}},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": port}]},
    }))
    .unwrap()
}

/// A shadow service as a leader writes it: `port` reached on mesh port `mesh_port`.
fn shadow(name: &str, port: u16, mesh_port: u16) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "maille", "name": naming::shadow_name("shop", name).unwrap(),
                     "labels": {naming::MANAGED_BY_LABEL: naming::MANAGED_BY_VALUE,
                                naming::SOURCE_NAMESPACE_LABEL: "shop",
                                naming::SOURCE_NAME_LABEL: name}},
        "spec": {"ports": [{"name": format!("tcp-{port}"), "port": port,
                            "targetPort": mesh_port, "protocol": "TCP"}]},
    }))
    .unwrap()
}

struct Replica {
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
}

impl Replica {
    fn start(kubeconfig: &std::path::Path, identity: &str) -> Self {
        let port = free_port();
        let cli = Cli::try_parse_from([
            "maille-controller",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--api-addr",
            &format!("127.0.0.1:{port}"),
            "--lease-identity",
            identity,
            "--lease-duration",
            "2",
            "--tcp-ports",
            "10000-10009",
            // Each replica's shadows select other pods: a follower writing would show (and
            // the two would rewrite each other's shadows forever).
            "--proxy-selector",
            &format!("app=proxy-{identity}"),
        ])
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = CancellationToken::new();
        runtime.spawn(maille_controller::run::run_until(cli.run, shutdown.clone()));
        Replica {
            port,
            runtime: Some(runtime),
            shutdown,
        }
    }

    /// Dies at once: no Lease given up, no last write.
    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }

    async fn get(&self, path: &str) -> Option<(u16, String, Option<String>)> {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}{path}", self.port))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        let etag = r
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Some((status, r.text().await.ok()?, etag))
    }

    async fn ready(&self) -> String {
        match self.get("/ready").await {
            Some((200, body, _)) => body,
            _ => String::new(),
        }
    }

    /// The table's mesh ports by service name, and its ETag.
    async fn ports(&self) -> Option<(BTreeMap<String, u64>, String)> {
        let (status, body, etag) = self.get("/api/configuration").await?;
        if status != 200 {
            return None;
        }
        let table: Value = serde_json::from_str(&body).ok()?;
        let ports = table["services"]
            .as_array()?
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap_or("").to_string(),
                    s["meshPort"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        Some((ports, etag?))
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.kill();
    }
}

fn shadow_writes(api: &FakeApi, name: &str) -> usize {
    let shadow = naming::shadow_name("shop", name).unwrap();
    api.writes()
        .iter()
        .filter(|w| w.starts_with("PATCH services") && w.ends_with(&format!("maille/{shadow}")))
        .count()
}

/// The proxy pods a shadow selects: who wrote it.
fn shadow_writer(api: &FakeApi, name: &str) -> Option<String> {
    let s: Service = api.get("maille", &naming::shadow_name("shop", name).unwrap())?;
    s.spec?.selector?.get("app").cloned()
}

fn service_writes(api: &FakeApi) -> usize {
    api.writes()
        .iter()
        .filter(|w| w.contains(" services "))
        .count()
}

/// Waits until the Service writes stop (no new one for a second); returns how many there were.
async fn writes_settle(api: &FakeApi) -> usize {
    let mut n = service_writes(api);
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = service_writes(api);
        if now == n {
            return n;
        }
        n = now;
    }
    panic!("writes never stop: {:?}", api.writes());
}

fn shadow_port(api: &FakeApi, name: &str) -> Option<i64> {
    let s: Service = api.get("maille", &naming::shadow_name("shop", name).unwrap())?;
    let p = s.spec?.ports?.into_iter().next()?;
    match p.target_port? {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => Some(i64::from(n)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_writes_both_serve_the_same_table_and_the_follower_takes_over() {
    let api = FakeApi::new();
    api.insert(&tcp_service("db", 5432));
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, _server) = api.serve_kubeconfig(dir.path()).await.unwrap();

    let mut replicas = [
        Replica::start(&kubeconfig, "controller-a"),
        Replica::start(&kubeconfig, "controller-b"),
    ];
    // Both ready; exactly one leads, and /ready says which and how the watches are.
    let leader = eventually("one leader, both ready", PATIENCE, async || {
        let (a, b) = (replicas[0].ready().await, replicas[1].ready().await);
        let leads = |t: &str| t.contains("leader: yes");
        let follows = |t: &str| t.contains("leader: no");
        match (leads(&a), leads(&b)) {
            (true, false) if follows(&b) => Some((0, a)),
            (false, true) if follows(&a) => Some((1, b)),
            _ => None,
        }
    })
    .await;
    let (leader, ready) = leader;
    assert!(ready.contains("Service: synced"), "{ready}");
    assert!(ready.contains("TrafficSplit (optional): synced"), "{ready}");
    let follower = 1 - leader;

    // The leader writes the shadow; both publish the port it holds.
    eventually("the shadow of db", PATIENCE, async || {
        shadow_port(&api, "db")
    })
    .await;
    let (table, etag) = eventually("the same table on both", PATIENCE, async || {
        let a = replicas[0].ports().await?;
        let b = replicas[1].ports().await?;
        (a.0 == b.0 && a.0.get("db") == Some(&10000)).then_some(a)
    })
    .await;
    assert_eq!(table.len(), 1, "{table:?}");
    writes_settle(&api).await;
    let ids = ["controller-a", "controller-b"];
    let leader_selector = format!("proxy-{}", ids[leader]);
    assert_eq!(shadow_writer(&api, "db"), Some(leader_selector.clone()));
    assert!(shadow_writes(&api, "db") >= 1);

    // The port comes from the shadow service, not from a replica's memory: when the shadow
    // holds another port (an earlier leader's choice), both replicas follow it and the leader
    // does not write it back.
    api.insert(&shadow("db", 5432, 10007));
    let (_, etag2) = eventually("both on the shadow's port", PATIENCE, async || {
        let a = replicas[0].ports().await?;
        let b = replicas[1].ports().await?;
        (a.0 == b.0 && a.0.get("db") == Some(&10007)).then_some(b)
    })
    .await;
    let version = |e: &str| e.trim_matches('"').parse::<u64>().unwrap();
    assert!(version(&etag2) > version(&etag), "{etag} then {etag2}");
    writes_settle(&api).await;
    assert_eq!(shadow_port(&api, "db"), Some(10007));
    // The leader made the shadow select its proxies again, keeping the port.
    assert_eq!(shadow_writer(&api, "db"), Some(leader_selector));

    // The leader dies. A new service needs a shadow: the follower takes over and writes it.
    replicas[leader].kill();
    let died = Instant::now();
    api.insert(&tcp_service("cache", 6379));
    let port = eventually("the follower writing as leader", PATIENCE, async || {
        shadow_port(&api, "cache")
    })
    .await;
    assert!(
        died.elapsed() < Duration::from_secs(15),
        "{:?}",
        died.elapsed()
    );
    assert_eq!(port, 10000, "the lowest free port");
    assert_eq!(
        shadow_writer(&api, "cache"),
        Some(format!("proxy-{}", ids[follower]))
    );
    let ready = replicas[follower].ready().await;
    assert!(ready.contains("leader: yes"), "{ready}");
    let (table, etag3) = eventually("the new table", PATIENCE, async || {
        let t = replicas[follower].ports().await?;
        (t.0.get("cache") == Some(&10000)).then_some(t)
    })
    .await;
    assert_eq!(table.get("db"), Some(&10007));
    // Versions follow the cluster's resourceVersions: newer state, higher version, whichever
    // replica published it.
    assert!(version(&etag3) > version(&etag2), "{etag2} then {etag3}");
}

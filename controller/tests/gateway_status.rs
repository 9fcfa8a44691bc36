//! Route statuses from the controller as it runs in a cluster: two replicas (the library's
//! `run_until`, as the binary runs it) against the fake API server over loopback HTTP. The
//! leader alone writes Maille's `status.parents[]` entry on an HTTPRoute, beside another
//! controller's entry, follows the route's generation, and stops writing once the status says
//! what it concluded (its own status writes do not start a write loop).

use std::time::Duration;

use clap::Parser;
use k8s_openapi::api::core::v1::Service;
use maille_controller::cli::Cli;
use maille_controller::gateway::crd::RouteStatus;
use maille_controller::gateway::{HTTPRoute, CONTROLLER_NAME};
use maille_controller::testing::{eventually, free_port, FakeApi, PATIENCE};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": name},
        "spec": {"clusterIP": "10.96.0.30", "ports": [{"name": "http", "port": 80}]},
    }))
    .unwrap()
}

fn route(generation: i64, filter: Option<&str>) -> HTTPRoute {
    let filters = match filter {
        Some(f) => json!([{"type": f, "cors": {"allowOrigins": ["*"]}}]),
        None => json!([]),
    };
    serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "web", "uid": "route-uid", "generation": generation},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80},
                           {"name": "public-gateway"}],
            "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}], "filters": filters}],
        },
        "status": {"parents": [{
            "parentRef": {"name": "public-gateway"},
            "controllerName": "example.com/gateway",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                            "message": "theirs", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }]},
    }))
    .unwrap()
}

struct Replica {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
}

impl Replica {
    fn start(kubeconfig: &std::path::Path, identity: &str) -> Self {
        let cli = Cli::try_parse_from([
            "maille-controller",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--api-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--lease-identity",
            identity,
            "--lease-duration",
            "2",
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
            runtime: Some(runtime),
            shutdown,
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn status(api: &FakeApi) -> Option<RouteStatus> {
    api.get::<HTTPRoute>("shop", "web")?.status
}

/// A condition as (type, status, reason, observedGeneration).
type Cond = (String, String, String, Option<i64>);

/// Maille's conditions.
fn ours(st: &RouteStatus) -> Option<Vec<Cond>> {
    let p = st
        .parents
        .iter()
        .find(|p| p.controller_name == CONTROLLER_NAME)?;
    Some(
        p.conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.observed_generation,
                )
            })
            .collect(),
    )
}

fn status_writes(api: &FakeApi) -> usize {
    api.writes()
        .iter()
        .filter(|w| w.starts_with("PATCH httproutes shop/web"))
        .count()
}

async fn writes_settle(api: &FakeApi) -> usize {
    let mut n = status_writes(api);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = status_writes(api);
        if now == n {
            return n;
        }
        n = now;
    }
    panic!("status writes never stop: {:?}", api.writes());
}

fn c(t: &str, s: &str, r: &str, g: i64) -> Cond {
    (t.into(), s.into(), r.into(), Some(g))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_route_statuses_beside_other_controllers_entries() {
    let api = FakeApi::new();
    api.insert(&service("web"));
    api.insert(&service("web-v2"));
    api.insert(&route(1, None));
    let dir = tempfile::tempdir().unwrap();
    let (kubeconfig, _server) = api.serve_kubeconfig(dir.path()).await.unwrap();
    let _replicas = [
        Replica::start(&kubeconfig, "controller-a"),
        Replica::start(&kubeconfig, "controller-b"),
    ];

    eventually("Maille's entry on the route", PATIENCE, async || {
        let st = status(&api)?;
        (ours(&st)?
            == [
                c("Accepted", "True", "Accepted", 1),
                c("ResolvedRefs", "True", "ResolvedRefs", 1),
            ])
        .then_some(())
    })
    .await;
    let written = writes_settle(&api).await;
    assert_eq!(written, 1, "one leader, one write: {:?}", api.writes());
    let st = status(&api).unwrap();
    assert_eq!(st.parents.len(), 2, "{st:?}");
    assert_eq!(st.parents[0].controller_name, "example.com/gateway");
    assert_eq!(st.parents[0].conditions[0].message, "theirs");

    // A new generation with a filter Maille does not support: refused, said so.
    api.insert(&route(2, Some("CORS")));
    eventually("the refusal on the route", PATIENCE, async || {
        let st = status(&api)?;
        let conditions = ours(&st)?;
        (conditions[0] == c("Accepted", "False", "UnsupportedValue", 2)).then_some(())
    })
    .await;
    let st = status(&api).unwrap();
    let accepted = &st
        .parents
        .iter()
        .find(|p| p.controller_name == CONTROLLER_NAME)
        .unwrap()
        .conditions[0];
    assert!(accepted.message.contains("CORS"), "{}", accepted.message);
    assert_eq!(st.parents.len(), 2, "{st:?}");
    assert_eq!(writes_settle(&api).await, 2, "{:?}", api.writes());
}

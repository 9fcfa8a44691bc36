//! The controller's CPU per change (issue 15's goals: ≤ 10 ms for one changed endpoint at
//! 10,000 services, ≤ 1 ms and no new table version for a Pod update that changes nothing):
//! the real rebuild path (`Rebuilder::rebuild`: translation, then publishing to the API) fed
//! snapshots that share every unchanged object with the last one, as both providers do.
//! Cases, each repeated and reported as the median and mean of the rebuilding thread's own
//! CPU time (`/proc/thread-self/schedstat`, nanoseconds) and wall time:
//! - `endpoint`: one EndpointSlice changes (an endpoint no longer ready, then ready again);
//! - `pod-noop`: one Pod is replaced by one that differs only in readiness;
//! - `pod-moved`: with mutual TLS on (workloads in the table), one Pod moves to another node;
//! - `manifests`: manifests mode end to end on the controller's side: the real provider
//!   (`ManifestsDir`) on a real folder laid out as the fleet bench lays it out (one JSON `List`
//!   file per namespace and kind, `benches/src/fleet/cluster.rs`), one endpoint changed per
//!   repetition (its namespace's file written beside and renamed over), the folder read again
//!   as the provider's loop reads it after the file event (`ManifestsDir::refresh` with the
//!   path the event named) and the snapshot rebuilt: CPU of reading and of rebuilding, and
//!   their sum. `--manifests-whole` reads as at the once-a-second check instead (every file's
//!   stamp looked at).
//!
//! Run: `cargo run --release -p maille-benches --bin controller-cost -- --services 10000`.

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use maille_benches::fixtures::NAMESPACES;
use maille_benches::fleet::cluster::Cluster;
use maille_benches::{fixtures, objects};
use maille_controller::api::ApiState;
use maille_controller::manifests::ManifestsDir;
use maille_controller::rebuild::Rebuilder;
use maille_controller::{Settings, Snapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Measures the controller's CPU per change.
#[derive(Parser, Debug)]
struct Args {
    /// Services (one port, one EndpointSlice and one Pod each).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Changes measured per case (after 5 not measured).
    #[arg(long, default_value_t = 100)]
    reps: usize,
    /// Cases to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "endpoint,pod-noop,pod-moved,manifests"
    )]
    cases: Vec<String>,
    /// The folder of the `manifests` case (created, then removed; default: in the temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// In the `manifests` case, look at every file's stamp at each change (as the provider's
    /// once-a-second check does), not only at the file the change's event named.
    #[arg(long)]
    manifests_whole: bool,
}

/// This thread's CPU time so far, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The `i`-th service's Pod, on node `node`, ready or not.
fn pod(i: usize, endpoints: usize, node: usize, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-0", fixtures::name(i))),
            namespace: Some(fixtures::namespace(i)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(fixtures::name(i)),
            node_name: Some(format!("node-{node}")),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(fixtures::ip(i * endpoints, 11)),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

struct Figures {
    cpu: Vec<u64>,
    wall: Vec<u64>,
}

fn median(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0) as f64 / 1e6
}

fn mean(v: &[u64]) -> f64 {
    v.iter().sum::<u64>() as f64 / v.len().max(1) as f64 / 1e6
}

/// Rebuilds alternately from `snaps`, `reps` times after 5 unmeasured.
fn run(rebuilder: &mut Rebuilder, snaps: &[Snapshot; 2], reps: usize) -> Figures {
    let mut f = Figures {
        cpu: Vec::with_capacity(reps),
        wall: Vec::with_capacity(reps),
    };
    for turn in 0..reps + 5 {
        let snap = &snaps[turn % 2];
        let (cpu, wall) = (thread_cpu_ns(), Instant::now());
        let t = rebuilder.rebuild(snap);
        let (cpu, wall) = (thread_cpu_ns() - cpu, wall.elapsed().as_nanos() as u64);
        drop(t);
        if turn >= 5 {
            f.cpu.push(cpu);
            f.wall.push(wall);
        }
    }
    f
}

fn report(case: &str, n: usize, mut f: Figures, extra: &str) {
    println!(
        "{case:<10} services={n:<6} cpu_ms median={:>8.3} mean={:>8.3}  wall_ms median={:>8.3}  {extra}",
        median(&mut f.cpu),
        mean(&f.cpu),
        median(&mut f.wall)
    );
}

/// The `manifests` case: the provider reads the folder again after each change and the
/// rebuilder takes the snapshot, which is then dropped as the provider's channel drops it.
fn manifests(args: &Args) {
    let (n, e) = (args.services, args.endpoints);
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("maille-controller-cost-{}", std::process::id()))
    });
    Cluster::remove(&dir);
    let mut cluster = Cluster::write(&dir, n, e).expect("write the folder");
    let mut provider = ManifestsDir::new(&dir);
    let api = ApiState::new(0, CancellationToken::new());
    let (out, _keep) = watch::channel(None);
    let mut rebuilder = Rebuilder::new(Settings::default(), api.clone(), out);
    let start = Instant::now();
    let first = provider.refresh(None).expect("read the folder").unwrap();
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    rebuilder.rebuild(&first);
    let first_ms = start.elapsed().as_secs_f64() * 1e3;
    // What the provider's channel holds: the last snapshot, dropped when the next is sent.
    let mut published = Some(first);
    let v0 = api.current().map(|p| p.version).unwrap_or(0);
    let (mut read, mut rebuild, mut total, mut wall) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for turn in 0..args.reps + 5 {
        let (change, pending) = cluster.change().expect("stage a change");
        pending.publish().expect("rename the file in");
        // The file the rename's event names (`Cluster` writes one per namespace).
        let touched = [dir.join(format!("endpoints-ns-{}.json", change.service % NAMESPACES))];
        let (cpu, clock) = (thread_cpu_ns(), Instant::now());
        let touched = (!args.manifests_whole).then_some(&touched[..]);
        let snap = provider.refresh(touched).expect("read the folder");
        let snap = snap.expect("the renamed file is seen");
        let cpu_read = thread_cpu_ns();
        let t = rebuilder.rebuild(&snap);
        drop(published.replace(snap));
        let cpu_end = thread_cpu_ns();
        let elapsed = clock.elapsed().as_nanos() as u64;
        drop(t);
        if turn >= 5 {
            read.push(cpu_read - cpu);
            rebuild.push(cpu_end - cpu_read);
            total.push(cpu_end - cpu);
            wall.push(elapsed);
        }
    }
    let versions = api.current().map(|p| p.version).unwrap_or(0) - v0;
    Cluster::remove(&dir);
    println!(
        "{:<10} services={n:<6} cpu_ms median={:>8.3} mean={:>8.3}  wall_ms median={:>8.3}  read_cpu_ms mean={:.3} rebuild_cpu_ms mean={:.3} first_load_and_rebuild_ms={first_ms:.0} new_versions={versions}",
        "manifests",
        median(&mut total.clone()),
        mean(&total),
        median(&mut wall),
        mean(&read),
        mean(&rebuild),
    );
}

fn main() {
    let args = Args::parse();
    let n = args.services;
    let e = args.endpoints;
    for case in &args.cases {
        if case == "manifests" {
            manifests(&args);
            continue;
        }
        let mut settings = Settings::default();
        let mut base = objects::snapshot(n, e);
        base.pods = (0..n).map(|i| Arc::new(pod(i, e, i % 100, true))).collect();
        let snaps: [Snapshot; 2] = match case.as_str() {
            "endpoint" => {
                let changed = objects::with_endpoint_not_ready(&base, n / 2, e);
                [base, changed]
            }
            "pod-noop" => {
                let mut flipped = base.clone();
                flipped.pods[n / 2] = Arc::new(pod(n / 2, e, (n / 2) % 100, false));
                [base, flipped]
            }
            "pod-moved" => {
                settings.mesh.mtls = config_model::MtlsMode::Strict;
                let mut moved = base.clone();
                moved.pods[n / 2] = Arc::new(pod(n / 2, e, (n / 2 + 1) % 100, true));
                [base, moved]
            }
            other => {
                eprintln!("unknown case {other:?}: endpoint, pod-noop, pod-moved, manifests");
                std::process::exit(2);
            }
        };
        let api = ApiState::new(0, CancellationToken::new());
        let (out, _keep) = watch::channel(None);
        let mut rebuilder = Rebuilder::new(settings, api.clone(), out);
        let start = Instant::now();
        rebuilder.rebuild(&snaps[0]);
        let first_ms = start.elapsed().as_secs_f64() * 1e3;
        let v0 = api.current().map(|p| p.version).unwrap_or(0);
        let f = run(&mut rebuilder, &snaps, args.reps);
        let versions = api.current().map(|p| p.version).unwrap_or(0) - v0;
        report(
            case,
            n,
            f,
            &format!("first_rebuild_ms={first_ms:.0} new_versions={versions}"),
        );
    }
}

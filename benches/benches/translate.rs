//! The controller's translation, objects to routing table, for clusters of 1,000 and 10,000
//! services (10 endpoints each: 10,000 and 100,000 endpoints; one Pod per service):
//! - `full`: a translation from scratch (`translate`), with an empty port allocator: what the
//!   controller paid for every change before translation became incremental, and still pays
//!   at start. The baseline the other figures are read against;
//! - `one_endpoint_changed`: the running controller's `Translator` after one EndpointSlice
//!   changed (an endpoint no longer ready), alternating between two snapshots that differ in
//!   that slice and share every other object, as a provider's store does between two events;
//! - `rebuild_and_publish`: the same change through the controller's `Rebuilder`, which also
//!   publishes the table (compares it with the one served, keeps the delta history, updates
//!   the metrics and wakes the long-polls): the whole time from a new snapshot to a table the
//!   proxies can fetch;
//! - `pod_unchanged`: a rebuild after a Pod update that changes nothing translation reads (a
//!   readiness flip: a new object, same address and ServiceAccount), which must make no new
//!   table version;
//! - `manifests_one_file_changed`: manifests mode end to end, with the services spread over
//!   100 JSON files: one file rewritten (one endpoint no longer ready), the folder loaded
//!   (only that file is read again) and the snapshot rebuilt and published.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use maille_benches::{fixtures, objects};
use maille_controller::alloc::PortAllocator;
use maille_controller::api::ApiState;
use maille_controller::manifests::ManifestsDir;
use maille_controller::rebuild::Rebuilder;
use maille_controller::translate::Translator;
use maille_controller::{translate, Settings, Snapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SIZES: [usize; 2] = [1_000, 10_000];
const ENDPOINTS: usize = 10;
const FILES: usize = 100;

/// The `i`-th service's first Pod, ready or not (readiness is not read by translation).
fn pod(i: usize, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{}-0", fixtures::name(i))),
            namespace: Some(fixtures::namespace(i)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some(fixtures::name(i)),
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(fixtures::ip(i * ENDPOINTS, 11)),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn with_pods(mut snap: Snapshot, n: usize) -> Snapshot {
    snap.pods = (0..n).map(|i| Arc::new(pod(i, true))).collect();
    snap
}

fn translation(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let settings = Settings::default();
    for n in SIZES {
        let base = with_pods(objects::snapshot(n, ENDPOINTS), n);
        // Two snapshots that differ in one slice, so that every rebuild finds a changed
        // table (as a real change does).
        let changed = objects::with_endpoint_not_ready(&base, n / 2, ENDPOINTS);
        let snaps = [&base, &changed];
        group.throughput(Throughput::Elements(n as u64));

        group.bench_function(BenchmarkId::new("full", n), |b| {
            b.iter(|| {
                let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
                translate(black_box(&base), &settings, &mut alloc)
            })
        });

        let mut alloc = PortAllocator::new(settings.tcp_ports, settings.udp_ports);
        let mut translator = Translator::new(settings.clone());
        translator.translate(&base, &mut alloc);
        let mut turn = 0usize;
        group.bench_function(BenchmarkId::new("one_endpoint_changed", n), |b| {
            b.iter(|| {
                turn += 1;
                translator.translate(black_box(snaps[turn % 2]), &mut alloc)
            })
        });

        let api = ApiState::new(0, CancellationToken::new());
        let (out, _keep) = watch::channel(None);
        let mut rebuilder = Rebuilder::new(settings.clone(), api.clone(), out);
        rebuilder.rebuild(&base);
        group.bench_function(BenchmarkId::new("rebuild_and_publish", n), |b| {
            b.iter(|| {
                turn += 1;
                rebuilder.rebuild(black_box(snaps[turn % 2]))
            })
        });

        // Pod 0 flips readiness: a new object each time, nothing translation reads changes.
        let mut flips = [base.clone(), base.clone()];
        for (k, snap) in flips.iter_mut().enumerate() {
            snap.pods[0] = Arc::new(pod(0, k == 0));
        }
        rebuilder.rebuild(&flips[0]);
        let version = api.current().map(|p| p.version);
        group.bench_function(BenchmarkId::new("pod_unchanged", n), |b| {
            b.iter(|| {
                turn += 1;
                rebuilder.rebuild(black_box(&flips[turn % 2]))
            })
        });
        assert_eq!(
            api.current().map(|p| p.version),
            version,
            "a Pod update that changes nothing made a new table version"
        );

        let dir = Folder::new(&format!("maille-translate-bench-{n}"));
        let files = write_files(&dir.0, &base, &changed, n / 2);
        let mut manifests = ManifestsDir::new(&dir.0);
        let api = ApiState::new(0, CancellationToken::new());
        let (out, _keep) = watch::channel(None);
        let mut rebuilder = Rebuilder::new(settings.clone(), api, out);
        rebuilder.rebuild(&manifests.load().expect("the folder loads"));
        group.bench_function(BenchmarkId::new("manifests_one_file_changed", n), |b| {
            b.iter(|| {
                turn += 1;
                let (path, texts) = &files;
                std::fs::write(path, &texts[turn % 2]).expect("write the changed file");
                let snap = manifests.load().expect("the folder loads");
                rebuilder.rebuild(black_box(&snap))
            })
        });
    }
    group.finish();
}

/// A folder removed when the bench ends.
struct Folder(PathBuf);

impl Folder {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the manifests folder");
        Folder(path)
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the objects of `base` as `FILES` JSON lists; returns the file holding service
/// `changed_at` and its two contents (as in `base`, as in `changed`). The two differ in length
/// (`false` against `true`), so the folder's change check sees every rewrite.
fn write_files(
    dir: &Path,
    base: &Snapshot,
    changed: &Snapshot,
    changed_at: usize,
) -> (PathBuf, [String; 2]) {
    let n = base.services.len();
    let per_file = n.div_ceil(FILES);
    let list = |snap: &Snapshot, f: usize| {
        let range = f * per_file..((f + 1) * per_file).min(n);
        let mut items: Vec<serde_json::Value> = Vec::new();
        for i in range {
            items.push(serde_json::to_value(&*snap.services[i]).expect("service as JSON"));
            items.push(serde_json::to_value(&*snap.endpoint_slices[i]).expect("slice as JSON"));
            items.push(serde_json::to_value(&*snap.pods[i]).expect("pod as JSON"));
        }
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
    };
    for f in 0..FILES {
        std::fs::write(dir.join(format!("{f:03}.json")), list(base, f)).expect("write");
    }
    let f = changed_at / per_file;
    (
        dir.join(format!("{f:03}.json")),
        [list(base, f), list(changed, f)],
    )
}

criterion_group!(benches, translation);
criterion_main!(benches);

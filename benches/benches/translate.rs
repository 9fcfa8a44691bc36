//! The controller's translation, objects to routing table, for clusters of 1,000 and 10,000
//! services (10 endpoints each: 10,000 and 100,000 endpoints):
//! - `full`: the first translation, with an empty port allocator (a controller starting);
//! - `one_endpoint_changed`: a rebuild after one EndpointSlice changed (an endpoint no longer
//!   ready), with the allocator kept from the previous rebuilds, as the running controller does
//!   it. The controller rebuilds the whole table on every change (coalesced), so this is the
//!   cost of an incremental change;
//! - `rebuild_and_publish`: the same change through the controller's `Rebuilder`, which also
//!   compares the table with the one served, serialises the new one to the JSON the proxies
//!   pull, updates the metrics and wakes the long-polls: the whole time from a new snapshot to
//!   a table the proxies can fetch.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use maille_benches::objects;
use maille_controller::alloc::PortAllocator;
use maille_controller::api::ApiState;
use maille_controller::rebuild::Rebuilder;
use maille_controller::{translate, Settings};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SIZES: [usize; 2] = [1_000, 10_000];
const ENDPOINTS: usize = 10;

fn translation(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let settings = Settings::default();
    for n in SIZES {
        let base = objects::snapshot(n, ENDPOINTS);
        // Alternate between two snapshots that differ in one slice, so that every rebuild
        // finds a changed table (as a real change does).
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
        translate(&base, &settings, &mut alloc);
        let mut turn = 0usize;
        group.bench_function(BenchmarkId::new("one_endpoint_changed", n), |b| {
            b.iter(|| {
                turn += 1;
                translate(black_box(snaps[turn % 2]), &settings, &mut alloc)
            })
        });

        let api = ApiState::new(0, CancellationToken::new());
        let (out, _keep) = watch::channel(None);
        let mut rebuilder = Rebuilder::new(settings.clone(), api, out);
        rebuilder.rebuild(&base);
        group.bench_function(BenchmarkId::new("rebuild_and_publish", n), |b| {
            b.iter(|| {
                turn += 1;
                rebuilder.rebuild(black_box(snaps[turn % 2]))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, translation);
criterion_main!(benches);

//! A table update as the proxy does it: JSON parse, validation into the indexed `Table`, and
//! the `ArcSwap` swap in `TableStore` (which also drops the previous table), for tables of
//! 1,000 and 10,000 services with 10 endpoints each (10,000 and 100,000 endpoints). Each step
//! is also measured alone to show where the time goes. A delta naming one service (one
//! endpoint moved) is measured the same way: applied to the held table, compiled and swapped,
//! and the whole of it from the JSON body as `source::swap_delta` does it.

use std::hint::black_box;
use std::time::Duration;

use config_model::{Table, TableDelta, TableSpec};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use maille_benches::fixtures;
use maille_proxy::TableStore;

const SIZES: [usize; 2] = [1_000, 10_000];
const ENDPOINTS: usize = 10;

fn table_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("table_update");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    for n in SIZES {
        let json = fixtures::table_json(n, ENDPOINTS);
        let spec: TableSpec = serde_json::from_slice(&json).expect("fixture parses");
        group.throughput(Throughput::Elements(n as u64));

        group.bench_function(BenchmarkId::new("parse_json", n), |b| {
            b.iter(|| serde_json::from_slice::<TableSpec>(black_box(&json)).expect("parses"))
        });
        group.bench_function(BenchmarkId::new("validate", n), |b| {
            b.iter(|| Table::try_from(black_box(&spec)).expect("validates"))
        });
        let store = TableStore::new();
        store.store(Table::try_from(&spec).expect("validates"));
        group.bench_function(BenchmarkId::new("swap_and_drop_old", n), |b| {
            b.iter_batched(
                || Table::try_from(&spec).expect("validates"),
                |table| drop(store.store(table)),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(BenchmarkId::new("parse_validate_swap", n), |b| {
            b.iter(|| drop(store.store(Table::from_json(black_box(&json)).expect("valid"))))
        });

        let delta = one_service_delta(&spec);
        let held = Table::try_from(&spec).expect("validates");
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("apply_delta_one_service", n), |b| {
            b.iter(|| held.apply_delta(black_box(&delta)).expect("applies"))
        });
        let store = TableStore::new();
        store.store(Table::try_from(&spec).expect("validates"));
        let mut round = 0u32;
        let mut next_delta = || {
            round += 1;
            let mut d = delta.clone();
            d.base_version = store.load().version;
            d.version = d.base_version + 1;
            d.changed[0].endpoints[0].address =
                format!("10.250.{}.{}:8080", round / 250 % 250, round % 250);
            d
        };
        group.bench_function(BenchmarkId::new("compile_after_delta", n), |b| {
            b.iter_batched(
                || store.load().apply_delta(&next_delta()).expect("applies"),
                |table| drop(store.store(table)),
                BatchSize::PerIteration,
            )
        });
        group.bench_function(BenchmarkId::new("delta_parse_apply_swap", n), |b| {
            b.iter_batched(
                || serde_json::to_vec(&next_delta()).expect("serializes"),
                |json| maille_proxy::source::swap_delta(&store, &json, "bench").expect("applies"),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// The delta that moves the first endpoint of one service in the middle of the table.
fn one_service_delta(spec: &TableSpec) -> TableDelta {
    let mut next = spec.clone();
    next.version += 1;
    next.sort_services();
    let i = next.services.len() / 2;
    next.services[i].endpoints[0].address = "10.250.0.0:8080".into();
    let key = next.services[i].key();
    let mut held = spec.clone();
    held.sort_services();
    next.delta_for(held.version, [&key])
}

criterion_group!(benches, table_update);
criterion_main!(benches);

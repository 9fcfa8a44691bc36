//! A table update as the proxy does it: JSON parse, validation into the indexed `Table`, and
//! the `ArcSwap` swap in `TableStore` (which also drops the previous table), for tables of
//! 1,000 and 10,000 services with 10 endpoints each (10,000 and 100,000 endpoints). Each step
//! is also measured alone to show where the time goes.

use std::hint::black_box;
use std::time::Duration;

use config_model::{Table, TableSpec};
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
    }
    group.finish();
}

criterion_group!(benches, table_update);
criterion_main!(benches);

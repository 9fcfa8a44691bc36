//! Route lookup on the request path: `Table::http_route` (listener port + Host) and
//! `Table::tcp_route` (listener port), hit and miss, on tables of 10, 1,000 and 10,000
//! services; and `route_and_pick`, the lookup through the store followed by the balancer's
//! pick of one of the service's 10 endpoints (peak-EWMA and round robin), the whole routing
//! decision of a request. Lookups cycle through every service's host so the figures include
//! cache misses a busy proxy would see, not one hot entry.

use std::hint::black_box;

use config_model::Table;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use maille_benches::fixtures::{self, HTTP_MESH_PORT, TCP_MESH_PORT};
use maille_proxy::balance::Balancer;
use maille_proxy::config::Balancer as Mode;
use maille_proxy::TableStore;

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const ENDPOINTS: usize = 10;

fn http_hosts(n: usize) -> Vec<String> {
    (0..n)
        .filter(|&i| fixtures::tcp_slot(i).is_none())
        .map(fixtures::host)
        .collect()
}

/// Runs `f` on the hosts in turn, one per iteration.
fn cycling<'a, R>(
    hosts: &'a [String],
    mut f: impl FnMut(&'a str) -> R + 'a,
) -> impl FnMut() -> R + 'a {
    let mut i = 0;
    move || {
        i += 1;
        if i == hosts.len() {
            i = 0;
        }
        f(black_box(hosts[i].as_str()))
    }
}

fn http_route(c: &mut Criterion) {
    let mut group = c.benchmark_group("http_route");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let table = Table::try_from(fixtures::table(n, ENDPOINTS)).expect("fixture validates");
        let hosts = http_hosts(n);
        let with_port: Vec<String> = hosts.iter().map(|h| format!("{h}:80")).collect();
        let upper: Vec<String> = hosts.iter().map(|h| h.to_ascii_uppercase()).collect();
        let unknown: Vec<String> = (0..hosts.len())
            .map(|i| format!("nope-{i}.ns-{}.maille.mesh", i % fixtures::NAMESPACES))
            .collect();
        let store = TableStore::new();
        store.store(Table::try_from(fixtures::table(n, ENDPOINTS)).expect("fixture validates"));

        group.bench_function(BenchmarkId::new("hit", n), |b| {
            let t = &table;
            let mut next = cycling(&hosts, move |h| t.http_route(HTTP_MESH_PORT, h).is_some());
            b.iter(|| assert!(next()))
        });
        group.bench_function(BenchmarkId::new("hit_host_with_port", n), |b| {
            let t = &table;
            let mut next = cycling(&with_port, move |h| {
                t.http_route(HTTP_MESH_PORT, h).is_some()
            });
            b.iter(|| assert!(next()))
        });
        group.bench_function(BenchmarkId::new("hit_upper_case", n), |b| {
            let t = &table;
            let mut next = cycling(&upper, move |h| t.http_route(HTTP_MESH_PORT, h).is_some());
            b.iter(|| assert!(next()))
        });
        group.bench_function(BenchmarkId::new("hit_through_store", n), |b| {
            let s = &store;
            let mut next = cycling(&hosts, move |h| {
                s.load().http_route(HTTP_MESH_PORT, h).is_some()
            });
            b.iter(|| assert!(next()))
        });
        group.bench_function(BenchmarkId::new("miss_unknown_host", n), |b| {
            let t = &table;
            let mut next = cycling(&unknown, move |h| t.http_route(HTTP_MESH_PORT, h).is_none());
            b.iter(|| assert!(next()))
        });
        group.bench_function(BenchmarkId::new("miss_other_port", n), |b| {
            let t = &table;
            let mut next = cycling(&hosts, move |h| {
                t.http_route(HTTP_MESH_PORT + 1, h).is_none()
            });
            b.iter(|| assert!(next()))
        });
    }
    group.finish();
}

fn tcp_route(c: &mut Criterion) {
    let mut group = c.benchmark_group("tcp_route");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let table = Table::try_from(fixtures::table(n, ENDPOINTS)).expect("fixture validates");
        let ports: Vec<u16> = (0..n)
            .filter_map(fixtures::tcp_slot)
            .map(|slot| TCP_MESH_PORT + slot)
            .collect();
        group.bench_function(BenchmarkId::new("hit", n), |b| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % ports.len();
                assert!(table.tcp_route(black_box(ports[i])).is_some())
            })
        });
        group.bench_function(BenchmarkId::new("miss", n), |b| {
            b.iter(|| assert!(table.tcp_route(black_box(TCP_MESH_PORT + 30)).is_none()))
        });
    }
    group.finish();
}

fn route_and_pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_and_pick");
    group.throughput(Throughput::Elements(1));
    for n in [1_000, 10_000] {
        let hosts = http_hosts(n);
        let store = TableStore::new();
        store.store(Table::try_from(fixtures::table(n, ENDPOINTS)).expect("fixture validates"));
        for (name, mode) in [
            ("peak_ewma", Mode::PeakEwma),
            ("round_robin", Mode::RoundRobin),
        ] {
            let balancer = Balancer::new(mode);
            group.bench_function(BenchmarkId::new(name, n), |b| {
                let (s, lb) = (&store, &balancer);
                let mut next = cycling(&hosts, move |h| {
                    let t = s.load();
                    let id = t.http_route(HTTP_MESH_PORT, h)?;
                    lb.pick(&t.runtime(id).endpoints, &[]).map(|p| p.addr)
                });
                b.iter(|| assert!(next().is_some()))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, http_route, tcp_route, route_and_pick);
criterion_main!(benches);

//! Per-request bookkeeping of the resilience features, as the proxy does it for every request
//! of a service that has them: token-bucket admission, circuit-breaker admit + record, retry
//! budget request count. Each on one thread (uncontended) and on 2 threads hitting the same
//! service state (the atomics then bounce between cores). Every iteration reads the clock, as
//! the request path does.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use config_model::CircuitBreaker;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use maille_proxy::clock::now_ns;
use maille_proxy::resilience::breaker::{Admission, Breaker, Outcome};
use maille_proxy::resilience::budget::RetryBudget;
use maille_proxy::resilience::ratelimit::TokenBucket;
use prometheus::{IntCounter, IntGauge};

/// Time for `iters` operations split over `threads` threads sharing `state`: wall time from a
/// common start to the last thread's end.
fn on_threads<S: Sync>(threads: usize, iters: u64, state: &S, op: impl Fn(&S) + Sync) -> Duration {
    if threads == 1 {
        let start = Instant::now();
        for _ in 0..iters {
            op(state);
        }
        return start.elapsed();
    }
    let barrier = Barrier::new(threads + 1);
    let per_thread = iters.div_ceil(threads as u64);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                barrier.wait();
                for _ in 0..per_thread {
                    op(state);
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Scope end joins the workers.
        start
    })
    .elapsed()
}

fn breaker(source: &str) -> Breaker {
    let config = CircuitBreaker::new(source, Some(10_000)).expect("valid expression");
    Breaker::new(
        &config,
        IntGauge::new("bench_breaker_state", "unregistered").expect("metric"),
        IntCounter::new("bench_breaker_trips", "unregistered").expect("metric"),
    )
}

const OK: Outcome = Outcome {
    status: 200,
    network_error: false,
    latency_us: 450,
};

fn resilience(c: &mut Criterion) {
    let mut group = c.benchmark_group("resilience");
    group.throughput(Throughput::Elements(1));
    for threads in [1usize, 2] {
        // Admitting: a limit far above what the bench reaches.
        let open_bucket = TokenBucket::new(u32::MAX, u32::MAX);
        group.bench_function(BenchmarkId::new("rate_limit_admit", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &open_bucket, |t| {
                    let _ = black_box(t.try_acquire(now_ns()));
                })
            })
        });
        // Refusing: 1 request/s, so nearly every call answers 429.
        let full_bucket = TokenBucket::new(1, 1);
        group.bench_function(BenchmarkId::new("rate_limit_refuse", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &full_bucket, |t| {
                    let _ = black_box(t.try_acquire(now_ns()));
                })
            })
        });
        for (name, source) in [
            ("breaker_error_ratio", "NetworkErrorRatio() > 0.5"),
            (
                "breaker_latency_quantile",
                "LatencyAtQuantileMS(99.0) > 100 || ResponseCodeRatio(500, 600, 0, 600) > 0.25",
            ),
        ] {
            let br = breaker(source);
            group.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, &br, |br| {
                        let now = now_ns();
                        let admission = br.admit(now);
                        assert_eq!(admission, Admission::Pass);
                        br.record(now, admission, OK);
                    })
                })
            });
        }
        let budget = RetryBudget::new(20);
        group.bench_function(BenchmarkId::new("retry_budget_request", threads), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &budget, |bu| bu.record_request(now_ns()))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, resilience);
criterion_main!(benches);

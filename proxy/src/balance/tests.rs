use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use config_model::testing::{table, weighted};
use config_model::Table;

use super::*;
use crate::compiled::CompiledTable;
use crate::store::TableStore;

/// A balancer and the store whose compiled tables give it endpoint plans.
struct Lb {
    balancer: Balancer,
    store: Arc<TableStore>,
}

impl Lb {
    fn new(mode: Mode) -> Lb {
        Lb {
            balancer: Balancer::new(mode),
            store: TableStore::new(),
        }
    }

    /// Swaps in a table of one service with these weighted endpoints.
    fn load(&self, eps: &[(&str, u32)]) -> Arc<CompiledTable> {
        let svc = weighted("default", "web", 5000, eps);
        self.store
            .store(Table::try_from(table(1, vec![svc])).unwrap());
        self.store.current()
    }

    fn pick(&self, t: &CompiledTable, exclude: &[SocketAddr]) -> Option<Pick> {
        let id = t.iter().next().expect("a service").0;
        self.balancer.pick(&t.runtime(id).endpoints, exclude)
    }

    fn stats(&self, addr: &SocketAddr) -> Option<StatsRef> {
        self.store.endpoint_stats(addr)
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn share(counts: &HashMap<SocketAddr, u32>, a: &str, n: u32) -> f64 {
    f64::from(*counts.get(&addr(a)).unwrap_or(&0)) / f64::from(n)
}

#[test]
fn round_robin_is_exact_per_round_and_interleaved() {
    let b = Lb::new(Mode::RoundRobin);
    let t = b.load(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 3)]);
    let mut counts = HashMap::new();
    let mut seq = Vec::new();
    for _ in 0..4000 {
        let p = b.pick(&t, &[]).unwrap();
        *counts.entry(p.addr).or_insert(0u32) += 1;
        seq.push(p.addr);
    }
    assert_eq!(counts[&addr("10.0.0.1:80")], 1000);
    assert_eq!(counts[&addr("10.0.0.2:80")], 3000);
    // Interleaved: the weight-1 endpoint never gets two picks in a row.
    assert!(seq
        .windows(2)
        .all(|w| w[0] != w[1] || w[0] == addr("10.0.0.2:80")));
}

#[test]
fn without_latency_data_peak_ewma_falls_back_to_round_robin() {
    let b = Lb::new(Mode::PeakEwma);
    let t = b.load(&[("10.0.0.1:80", 2), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)]);
    let mut counts = HashMap::new();
    for _ in 0..400 {
        // Picks are dropped unanswered: no sample is ever recorded.
        let p = b.pick(&t, &[]).unwrap();
        *counts.entry(p.addr).or_insert(0u32) += 1;
    }
    assert_eq!(counts[&addr("10.0.0.1:80")], 200);
    assert_eq!(counts[&addr("10.0.0.2:80")], 100);
    assert_eq!(counts[&addr("10.0.0.3:80")], 100);
}

#[test]
fn equal_latency_spreads_by_weight_within_two_points() {
    let b = Lb::new(Mode::PeakEwma);
    let t = b.load(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 3)]);
    // Seed both with the same latency.
    for a in ["10.0.0.1:80", "10.0.0.2:80"] {
        b.pick(&t, &[]);
        b.stats(&addr(a)).unwrap().observe(Duration::from_millis(1));
    }
    let n = 20_000;
    let mut counts = HashMap::new();
    for _ in 0..n {
        let p = b.pick(&t, &[]).unwrap();
        p.stats().observe(Duration::from_millis(1));
        *counts.entry(p.addr).or_insert(0u32) += 1;
    }
    let s = share(&counts, "10.0.0.1:80", n);
    // Expected 0.25; binomial standard deviation at n = 20000 is 0.003.
    assert!((0.23..0.27).contains(&s), "share of weight-1 endpoint {s}");
}

#[test]
fn a_slow_endpoint_gets_less_traffic() {
    let b = Lb::new(Mode::PeakEwma);
    let t = b.load(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]);
    b.pick(&t, &[]);
    let n = 4000;
    let mut counts = HashMap::new();
    for _ in 0..n {
        let p = b.pick(&t, &[]).unwrap();
        let rtt = if p.addr == addr("10.0.0.1:80") { 20 } else { 1 };
        p.stats().observe(Duration::from_millis(rtt));
        *counts.entry(p.addr).or_insert(0u32) += 1;
    }
    // Equal weights would give 0.5; the slow one only wins when drawn twice: ~0.25.
    let s = share(&counts, "10.0.0.1:80", n);
    assert!(s < 0.32, "share of slow endpoint {s}");
}

#[test]
fn busy_endpoint_gets_less_traffic() {
    let b = Lb::new(Mode::PeakEwma);
    let t = b.load(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]);
    b.pick(&t, &[]);
    for a in ["10.0.0.1:80", "10.0.0.2:80"] {
        b.stats(&addr(a)).unwrap().observe(Duration::from_millis(1));
    }
    // Ten requests stuck on the first endpoint.
    let stuck: Vec<_> = (0..100)
        .filter_map(|_| b.pick(&t, &[]))
        .filter(|p| p.addr == addr("10.0.0.1:80"))
        .take(10)
        .collect();
    assert_eq!(stuck.len(), 10);
    let picks: Vec<_> = (0..200).map(|_| b.pick(&t, &[]).unwrap().addr).collect();
    let busy = picks.iter().filter(|a| **a == addr("10.0.0.1:80")).count();
    assert!(busy < 80, "busy endpoint picked {busy} of 200");
}

#[test]
fn latency_state_survives_a_table_swap() {
    let b = Lb::new(Mode::PeakEwma);
    let t1 = b.load(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1)]);
    b.pick(&t1, &[]);
    b.stats(&addr("10.0.0.1:80"))
        .unwrap()
        .observe(Duration::from_millis(7));
    let t2 = b.load(&[("10.0.0.1:80", 5), ("10.0.0.3:80", 1)]);
    b.pick(&t2, &[]);
    let kept = b.stats(&addr("10.0.0.1:80")).unwrap();
    assert!(kept.has_sample());
    assert!(kept.estimate_ns() > 1_000_000.0);
    // Addresses gone from the table are forgotten.
    assert!(b.stats(&addr("10.0.0.2:80")).is_none());
    assert!(!b.stats(&addr("10.0.0.3:80")).unwrap().has_sample());
}

#[test]
fn excluded_endpoints_are_avoided_while_others_remain() {
    for mode in [Mode::PeakEwma, Mode::RoundRobin] {
        let b = Lb::new(mode);
        let t = b.load(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)]);
        for _ in 0..200 {
            let p = b
                .pick(&t, &[addr("10.0.0.1:80"), addr("10.0.0.2:80")])
                .unwrap();
            assert_eq!(p.addr, addr("10.0.0.3:80"), "{mode:?}");
        }
    }
}

#[test]
fn pending_counts_follow_picks() {
    let b = Lb::new(Mode::PeakEwma);
    let t = b.load(&[("10.0.0.1:80", 1)]);
    let p = b.pick(&t, &[]).unwrap();
    let q = b.pick(&t, &[]).unwrap();
    assert_eq!(p.stats().pending(), 2);
    drop(p);
    assert_eq!(q.stats().pending(), 1);
    drop(q);
    assert_eq!(b.stats(&addr("10.0.0.1:80")).unwrap().pending(), 0);
}

#[test]
fn no_endpoints_means_no_pick() {
    let b = Lb::new(Mode::PeakEwma);
    let t = b.load(&[]);
    assert!(b.pick(&t, &[]).is_none());
}

#[test]
fn peak_then_decay() {
    let s = EndpointStats::new();
    s.observe(Duration::from_millis(1));
    s.observe(Duration::from_millis(50));
    assert!(
        s.estimate_ns() > 40e6,
        "a peak replaces the estimate at once"
    );
    s.observe(Duration::from_millis(1));
    assert!(
        s.estimate_ns() > 40e6,
        "a low sample right after blends in slowly"
    );
}

#[test]
fn consecutive_failures_eject_an_endpoint_but_never_all_of_them() {
    for mode in [Mode::RoundRobin, Mode::PeakEwma] {
        let b = Lb::new(mode);
        let t = b.load(&[("10.0.0.1:80", 1), ("10.0.0.2:80", 1), ("10.0.0.3:80", 1)]);
        let fail = |a: &str, times: usize| {
            for _ in 0..times {
                // Failures are charged to the endpoint whatever pick made the attempt.
                let p = Pick::new(addr(a), b.stats(&addr(a)).unwrap());
                p.observe_failure();
            }
        };
        fail("10.0.0.1:80", EJECT_AFTER_FAILURES as usize - 1);
        assert!(!b.stats(&addr("10.0.0.1:80")).unwrap().is_ejected());
        fail("10.0.0.1:80", 1);
        assert!(b.stats(&addr("10.0.0.1:80")).unwrap().is_ejected());
        for _ in 0..300 {
            assert_ne!(
                b.pick(&t, &[]).unwrap().addr,
                addr("10.0.0.1:80"),
                "{mode:?}"
            );
        }
        // With the others ejected or excluded too, picks still find an endpoint.
        fail("10.0.0.2:80", EJECT_AFTER_FAILURES as usize);
        for _ in 0..100 {
            assert_eq!(b.pick(&t, &[]).unwrap().addr, addr("10.0.0.3:80"));
        }
        fail("10.0.0.3:80", EJECT_AFTER_FAILURES as usize);
        let exclude = [addr("10.0.0.1:80"), addr("10.0.0.3:80")];
        for _ in 0..100 {
            assert_eq!(b.pick(&t, &exclude).unwrap().addr, addr("10.0.0.2:80"));
        }
        // One success ends the streak and the ejection.
        let p = b
            .pick(&t, &[addr("10.0.0.2:80"), addr("10.0.0.3:80")])
            .unwrap();
        assert_eq!(p.addr, addr("10.0.0.1:80"));
        p.observe_response();
        assert!(!p.stats().is_ejected());
    }
}

#[test]
fn ejections_in_a_row_grow_up_to_the_maximum() {
    let s = EndpointStats::new();
    let until = |s: &EndpointStats| {
        Duration::from_nanos(s.ejected_until_ns.load(Ordering::Relaxed) - crate::clock::now_ns())
    };
    for _ in 0..EJECT_AFTER_FAILURES {
        s.record_failure();
    }
    assert!(until(&s) <= EJECTION_BASE && until(&s) > EJECTION_BASE / 2);
    // An ejection that ran out, then another failure: twice as long.
    s.ejected_until_ns.store(1, Ordering::Relaxed);
    s.record_failure();
    assert!(until(&s) > EJECTION_BASE && until(&s) <= 2 * EJECTION_BASE);
    for _ in 0..20 {
        s.ejected_until_ns.store(1, Ordering::Relaxed);
        s.record_failure();
    }
    assert!(until(&s) <= EJECTION_MAX && until(&s) > EJECTION_MAX / 2);
}

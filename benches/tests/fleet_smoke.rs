//! The fleet bench's quick run (200 services, 5 simulated proxies, 3 changes per phase, the real
//! `maille-proxy` too): every phase completes, every proxy gets every change (the bench checks
//! each proxy's table), and the deliveries rank as they must in bytes. No timing is asserted.
//!
//! Its own test binary: the controller's metrics, which the bench reads, are per process.
//! The proxy binary must be built first (`cargo build --workspace --bins`; scripts/test-all does).

use maille_benches::fleet::{self, real, Delivery, Options};

#[test]
fn the_quick_fleet_run_delivers_every_change_to_every_proxy() {
    let dir = std::env::temp_dir().join(format!("maille-fleet-smoke-{}", std::process::id()));
    let binary = real::binary_next_to_this_one().unwrap_or_else(|| {
        panic!("maille-proxy is missing next to this test: run `cargo build --workspace --bins` first (scripts/test-all does)")
    });
    let opts = Options {
        real_proxy: Some(binary),
        ..Options::quick(dir.clone())
    };
    let report = fleet::run(&opts).unwrap();
    assert!(!dir.exists(), "the manifests folder is removed");

    assert_eq!(report.fleet.len(), 3);
    let bytes = |d: Delivery| {
        let p = report.fleet.iter().find(|p| p.delivery == d).unwrap();
        assert_eq!(p.proxies, 5);
        assert_eq!(p.changes.len(), 3, "{d:?}");
        assert_eq!((p.errors, p.resyncs), (0, 0), "{d:?}");
        for c in &p.changes {
            assert_eq!(c.per_proxy.len(), 5);
            assert!(c.controller_cpu > std::time::Duration::ZERO, "{d:?}");
        }
        p.changes.iter().map(|c| c.bytes).max().unwrap()
    };
    let (full, gzip, delta) = (
        bytes(Delivery::Full),
        bytes(Delivery::FullGzip),
        bytes(Delivery::Delta),
    );
    // Five proxies each got the whole table (an endpoint less or more than at the start), or its
    // gzip form, or only the changed service.
    assert!(
        full >= 5 * report.table_bytes * 9 / 10,
        "{full} {}",
        report.table_bytes
    );
    assert!(gzip < full / 3, "{gzip} {full}");
    assert!(delta < gzip / 3, "{delta} {gzip}");

    assert_eq!(report.real.len(), 2, "full-gzip and delta");
    for p in &report.real {
        assert_eq!(p.changes.len(), 3, "{:?}", p.delivery);
        assert!(p.rss > 0 && p.peak_rss >= p.rss);
        for c in &p.changes {
            // The controller's steps were seen, in order, and the proxy said what its apply took.
            let m = c.milestones;
            assert!(
                m.published > std::time::Duration::ZERO && m.answered >= m.published,
                "{m:?}"
            );
            assert!(c.work.parse + c.work.apply + c.work.swap > std::time::Duration::ZERO);
        }
    }
    let text = fleet::report::markdown(&report);
    assert!(text.contains("| 5 | delta |"), "{text}");
    assert!(text.contains("change visible at a real proxy"), "{text}");
    assert!(
        text.contains("Where the real proxy's change time goes"),
        "{text}"
    );
}

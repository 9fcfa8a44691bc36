//! The circuit breaker of one service: a sliding window of outcomes and latencies, evaluated
//! against the user's expression; closed → open (fail fast) for the recovery period →
//! half-open (a few probes) → closed, or open again.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use config_model::expr::{CircuitBreakerExpr, WindowStats};
use config_model::CircuitBreaker;
use prometheus::{IntCounter, IntGauge};

use super::window::Window;

/// Slots of the sliding window.
pub const WINDOW_SLOTS: usize = 10;
/// Length of one slot: the window covers the last 10 seconds.
pub const SLOT_NS: u64 = 1_000_000_000;
/// The expression is evaluated at most this often while closed.
pub const CHECK_PERIOD_NS: u64 = 100_000_000;
/// Fewer requests than this in the window never trip a closed breaker.
pub const MIN_REQUESTS: u64 = 5;
/// Requests let through while half-open; their outcomes decide.
pub const PROBES: u32 = 3;

/// Breaker states, as exported in `maille_proxy_circuit_breaker_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Requests flow; outcomes are recorded.
    Closed = 0,
    /// Requests get 503 at once.
    Open = 1,
    /// A few probes flow; the rest get 503.
    HalfOpen = 2,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Open,
            2 => State::HalfOpen,
            _ => State::Closed,
        }
    }
}

/// What the breaker says about a new request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Pass,
    /// Half-open: go ahead as one of the probes.
    Probe,
    /// Open (or half-open with all probes out): answer 503.
    Reject,
}

/// How one request ended, as the breaker counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Status sent to the client (a network error counts as the 502/504 the client got).
    pub status: u16,
    /// The request got no response from upstream (connect failure, reset, timeout).
    pub network_error: bool,
    /// Time from request start to the end, in microseconds.
    pub latency_us: u64,
}

// Counter layout of the window: total, network errors, one counter per status segment, then
// the latency histogram (when the expression reads latency).
const TOTAL: usize = 0;
const NETWORK: usize = 1;
const STATUS0: usize = 2;

/// Latency buckets: 8 per power of two of microseconds (about 9 % wide), up to 2^36 µs.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
const MAX_MSB: u32 = 36;
/// Number of latency buckets.
pub const LATENCY_BUCKETS: usize = ((MAX_MSB - SUB_BITS + 2) as usize) * SUB as usize;

fn latency_bucket(us: u64) -> usize {
    let us = us.min((1u64 << (MAX_MSB + 1)) - 1);
    if us < SUB {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let shift = msb - SUB_BITS;
    (((msb - SUB_BITS + 1) as u64) * SUB + ((us >> shift) & (SUB - 1))) as usize
}

/// Upper bound of a latency bucket, in microseconds.
fn latency_bucket_upper(index: usize) -> u64 {
    let i = index as u64;
    if i < SUB {
        return i + 1;
    }
    let msb = (i / SUB - 1) as u32 + SUB_BITS;
    let shift = msb - SUB_BITS;
    ((SUB + i % SUB) << shift) + (1 << shift)
}

/// The circuit breaker of one service port.
pub struct Breaker {
    /// Parsed once, with the table; shared with it.
    expr: Arc<CircuitBreakerExpr>,
    recovery_ns: u64,
    /// Sorted bounds of the status ranges the expression reads.
    bounds: Vec<u16>,
    latency_at: Option<usize>,
    window: Window,
    state: AtomicU8,
    opened_at: AtomicU64,
    next_check: AtomicU64,
    probes_issued: AtomicU32,
    probes_done: AtomicU32,
    state_gauge: IntGauge,
    trips: IntCounter,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("expr", &self.expr.source)
            .field("state", &self.state())
            .finish()
    }
}

/// The window's sums, read by the expression.
struct Snapshot<'a> {
    counts: Vec<u64>,
    bounds: &'a [u16],
    latency_at: Option<usize>,
}

impl Snapshot<'_> {
    fn segment(&self, status: u16) -> usize {
        self.bounds.partition_point(|b| *b <= status)
    }
}

impl WindowStats for Snapshot<'_> {
    fn network_error_ratio(&self) -> f64 {
        match self.counts[TOTAL] {
            0 => 0.0,
            total => self.counts[NETWORK] as f64 / total as f64,
        }
    }

    fn status_count(&self, from: u16, to: u16) -> u64 {
        // `from` and `to` are bounds of the expression, so they start segments exactly.
        let (a, b) = (self.segment(from), self.segment(to));
        (a..b).map(|s| self.counts[STATUS0 + s]).sum()
    }

    fn latency_at_quantile_ms(&self, q: f64) -> f64 {
        let Some(start) = self.latency_at else {
            return 0.0;
        };
        let hist = &self.counts[start..];
        let total: u64 = hist.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return latency_bucket_upper(i) as f64 / 1000.0;
            }
        }
        latency_bucket_upper(hist.len() - 1) as f64 / 1000.0
    }
}

impl Breaker {
    /// A closed breaker for this configuration, reporting to these metric handles.
    pub fn new(config: &CircuitBreaker, state_gauge: IntGauge, trips: IntCounter) -> Self {
        let bounds = config.expr.status_bounds();
        let segments = bounds.len() + 1;
        let latency_at = config.expr.uses_latency().then_some(STATUS0 + segments);
        let width = STATUS0
            + segments
            + if latency_at.is_some() {
                LATENCY_BUCKETS
            } else {
                0
            };
        state_gauge.set(State::Closed as i64);
        Breaker {
            expr: config.expr.clone(),
            recovery_ns: config.recovery_ms.saturating_mul(1_000_000),
            bounds,
            latency_at,
            window: Window::new(WINDOW_SLOTS, SLOT_NS, width),
            state: AtomicU8::new(State::Closed as u8),
            opened_at: AtomicU64::new(0),
            next_check: AtomicU64::new(0),
            probes_issued: AtomicU32::new(0),
            probes_done: AtomicU32::new(0),
            state_gauge,
            trips,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    fn set_state(&self, from: State, to: State) -> bool {
        let ok = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if ok {
            self.state_gauge.set(to as i64);
        }
        ok
    }

    /// Decides whether a request arriving at `now_ns` may go upstream.
    pub fn admit(&self, now_ns: u64) -> Admission {
        match self.state() {
            State::Closed => Admission::Pass,
            State::Open => {
                let opened = self.opened_at.load(Ordering::Acquire);
                if now_ns.saturating_sub(opened) < self.recovery_ns {
                    return Admission::Reject;
                }
                // One thread moves it to half-open and clears the slate for the probes; until
                // it has, `probes_issued` still reads "all out" (set by `trip`).
                if self.set_state(State::Open, State::HalfOpen) {
                    self.window.reset();
                    self.probes_done.store(0, Ordering::Release);
                    self.probes_issued.store(0, Ordering::Release);
                }
                self.admit_probe()
            }
            State::HalfOpen => self.admit_probe(),
        }
    }

    fn admit_probe(&self) -> Admission {
        if self.state() != State::HalfOpen {
            return Admission::Reject;
        }
        match self
            .probes_issued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < PROBES).then_some(n + 1)
            }) {
            Ok(_) => Admission::Probe,
            Err(_) => Admission::Reject,
        }
    }

    /// Records how a request that was let through ended.
    pub fn record(&self, now_ns: u64, admission: Admission, outcome: Outcome) {
        match (self.state(), admission) {
            (State::Closed, Admission::Pass) => {
                self.count(now_ns, outcome);
                let due = self.next_check.load(Ordering::Acquire);
                if now_ns >= due
                    && self
                        .next_check
                        .compare_exchange(
                            due,
                            now_ns + CHECK_PERIOD_NS,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
                {
                    let snap = self.snapshot(now_ns);
                    if snap.counts[TOTAL] >= MIN_REQUESTS && self.expr.evaluate(&snap) {
                        self.trip(now_ns, State::Closed);
                    }
                }
            }
            (State::HalfOpen, Admission::Probe) => {
                self.count(now_ns, outcome);
                let done = self.probes_done.fetch_add(1, Ordering::AcqRel) + 1;
                if done == PROBES {
                    let snap = self.snapshot(now_ns);
                    if self.expr.evaluate(&snap) {
                        self.trip(now_ns, State::HalfOpen);
                    } else {
                        self.window.reset();
                        self.next_check.store(0, Ordering::Release);
                        self.set_state(State::HalfOpen, State::Closed);
                    }
                }
            }
            // Outcomes of requests admitted under an earlier state say nothing now.
            _ => {}
        }
    }

    fn trip(&self, now_ns: u64, from: State) {
        self.probes_issued.store(PROBES, Ordering::Release);
        self.opened_at.store(now_ns, Ordering::Release);
        if self.set_state(from, State::Open) {
            self.trips.inc();
            tracing::warn!(expression = %self.expr.source, "Circuit breaker tripped");
        }
    }

    fn count(&self, now_ns: u64, o: Outcome) {
        let w = &self.window;
        w.add(now_ns, TOTAL, 1);
        if o.network_error {
            w.add(now_ns, NETWORK, 1);
        }
        let seg = self.bounds.partition_point(|b| *b <= o.status);
        w.add(now_ns, STATUS0 + seg, 1);
        if let Some(start) = self.latency_at {
            w.add(now_ns, start + latency_bucket(o.latency_us), 1);
        }
    }

    fn snapshot(&self, now_ns: u64) -> Snapshot<'_> {
        Snapshot {
            counts: self.window.snapshot(now_ns),
            bounds: &self.bounds,
            latency_at: self.latency_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn breaker(src: &str, recovery_ms: u64) -> Breaker {
        let config = CircuitBreaker::new(src, Some(recovery_ms)).unwrap();
        Breaker::new(
            &config,
            IntGauge::new("g", "g").unwrap(),
            IntCounter::new("c", "c").unwrap(),
        )
    }

    fn ok(latency_ms: u64) -> Outcome {
        Outcome {
            status: 200,
            network_error: false,
            latency_us: latency_ms * 1000,
        }
    }

    fn status(status: u16) -> Outcome {
        Outcome {
            status,
            network_error: false,
            latency_us: 1000,
        }
    }

    const DOWN: Outcome = Outcome {
        status: 502,
        network_error: true,
        latency_us: 100,
    };

    #[test]
    fn latency_buckets_are_ordered_and_tight() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            7,
            8,
            15,
            16,
            17,
            100,
            999,
            1000,
            150_000,
            10_000_000,
            u64::MAX,
        ] {
            let b = latency_bucket(us);
            assert!(b >= last && b < LATENCY_BUCKETS, "{us} -> {b}");
            last = b;
            if us < 1 << 36 {
                let upper = latency_bucket_upper(b);
                assert!(upper > us, "{us}: upper {upper}");
                assert!(
                    upper as f64 <= (us as f64 * 1.13).max(us as f64 + 1.0),
                    "{us}: {upper}"
                );
            }
        }
    }

    #[test]
    fn full_cycle_closed_open_half_open_closed() {
        let b = breaker("NetworkErrorRatio() > 0.5", 1000);
        let t = 1000 * MS;
        // Fewer than MIN_REQUESTS failures never trip.
        for i in 0..MIN_REQUESTS - 1 {
            assert_eq!(b.admit(t + i), Admission::Pass);
            b.record(t + i, Admission::Pass, DOWN);
        }
        assert_eq!(b.state(), State::Closed);
        let t = t + CHECK_PERIOD_NS;
        b.record(t, Admission::Pass, DOWN);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.trips.get(), 1);
        assert_eq!(b.state_gauge.get(), 1);
        assert_eq!(b.admit(t + 999 * MS), Admission::Reject);

        // Recovery elapsed: exactly PROBES probes, others rejected.
        let t = t + 1000 * MS;
        let adm: Vec<_> = (0..5).map(|_| b.admit(t)).collect();
        assert_eq!(
            adm.iter().filter(|a| **a == Admission::Probe).count(),
            PROBES as usize
        );
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.state_gauge.get(), 2);
        // A failing probe majority re-opens.
        b.record(t, Admission::Probe, DOWN);
        b.record(t, Admission::Probe, DOWN);
        b.record(t, Admission::Probe, ok(1));
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.trips.get(), 2);

        // Next round: healthy probes close it, and old failures are forgotten.
        let t = t + 1000 * MS;
        for _ in 0..PROBES {
            assert_eq!(b.admit(t), Admission::Probe);
        }
        for _ in 0..PROBES {
            b.record(t, Admission::Probe, ok(1));
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.state_gauge.get(), 0);
        assert_eq!(b.admit(t), Admission::Pass);
        b.record(t + CHECK_PERIOD_NS, Admission::Pass, ok(1));
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn response_code_ratio_counts_ranges() {
        let b = breaker("ResponseCodeRatio(500, 600, 0, 600) > 0.25", 1000);
        let t = 1000 * MS;
        for s in [200, 200, 200, 404, 500] {
            b.record(t, Admission::Pass, status(s));
        }
        // 1 of 5 is 5xx: 0.2, not above 0.25.
        assert_eq!(b.state(), State::Closed);
        b.record(t + CHECK_PERIOD_NS, Admission::Pass, status(503));
        // 2 of 6.
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn latency_quantile_trips_on_slow_responses() {
        let b = breaker("LatencyAtQuantileMS(50.0) > 100", 1000);
        let t = 1000 * MS;
        for i in 0..10 {
            b.record(t + i * CHECK_PERIOD_NS, Admission::Pass, ok(20));
        }
        assert_eq!(b.state(), State::Closed);
        for i in 10..30 {
            b.record(t + i * CHECK_PERIOD_NS, Admission::Pass, ok(150));
        }
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn old_failures_slide_out_of_the_window() {
        let b = breaker("NetworkErrorRatio() > 0.5", 1000);
        let t = 1000 * MS;
        for _ in 0..3 {
            b.record(t, Admission::Pass, DOWN);
        }
        // 11 s later the failures are gone; healthy traffic keeps it closed.
        let t = t + 11_000 * MS;
        for i in 0..10 {
            b.record(t + i * CHECK_PERIOD_NS, Admission::Pass, ok(1));
        }
        assert_eq!(b.state(), State::Closed);
    }
}

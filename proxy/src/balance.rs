//! Endpoint selection: weighted power-of-two-choices over peak-EWMA latency (as Linkerd does),
//! with weighted round robin while latency data is missing. Each service's [`EndpointPlan`] is
//! built when a table is compiled, so a pick takes no lock; it owns the latency state of its
//! endpoints in one slab, which a table swap carries over ([`EndpointPlan::new`]).
//!
//! How a pick works (mode [`Balancer::PeakEwma`](crate::config::Balancer::PeakEwma)):
//! 1. Two candidates are drawn at random, each with probability proportional to its weight.
//! 2. If neither has a latency sample yet, weighted round robin decides. If one has none, it
//!    is taken (so that it gets measured).
//! 3. Otherwise each candidate's cost is its peak-EWMA round-trip time times (requests in
//!    flight + 1). The cheaper one wins, unless the costs are within [`TIE_RATIO`] (or
//!    [`TIE_SLACK`]) of each other: then a fair coin decides.
//!
//! With weighted draws and a fair coin on near-ties, endpoints of equal latency receive traffic
//! in proportion to their weights (P(i) = p_i² + 2·p_i·(1-p_i)·½ = p_i); a clearly slower or
//! busier endpoint receives less, down to p_i² of its share.
//!
//! Passive health (outlier detection, as Envoy's consecutive failures and Linkerd's failure
//! accrual): after [`EJECT_AFTER_FAILURES`] failures in a row (refused or timed-out connects,
//! resets before a response) an endpoint is ejected, that is skipped by picks, for
//! [`EJECTION_BASE`], doubling with each ejection in a row up to [`EJECTION_MAX`]. When the
//! time is up it gets traffic again; one success ends the streak. A pick never finds every
//! endpoint ejected: if all are, ejection is ignored for that service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use config_model::Service;
use rand::Rng;

use crate::clock;
use crate::config::Balancer as Mode;
use crate::picker::WeightedPicker;

/// Time constant of the EWMA: a sample's influence falls to 1/e after this long, and an
/// unmeasured endpoint's estimate decays toward zero at the same pace.
pub const DECAY: Duration = Duration::from_secs(2);
/// Costs within this ratio of each other count as a tie.
pub const TIE_RATIO: f64 = 1.25;
/// Costs within this absolute difference count as a tie.
pub const TIE_SLACK: Duration = Duration::from_micros(500);
/// Round-trip time charged to an endpoint that failed to connect or answer.
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// Failures in a row that eject an endpoint.
pub const EJECT_AFTER_FAILURES: u32 = 3;
/// Length of a first ejection; each further ejection in a row doubles it.
pub const EJECTION_BASE: Duration = Duration::from_secs(2);
/// Longest ejection.
pub const EJECTION_MAX: Duration = Duration::from_secs(60);

/// Latency and load of one endpoint address.
#[derive(Debug)]
pub struct EndpointStats {
    /// Peak-EWMA round-trip time in nanoseconds, as `f64` bits; 0 = no sample yet.
    ewma_ns: AtomicU64,
    /// When `ewma_ns` was last updated ([`clock::now_ns`]).
    stamp_ns: AtomicU64,
    /// Requests sent and not yet answered.
    pending: AtomicI64,
    /// Failures in a row (passive health).
    failures: AtomicU32,
    /// Ejections in a row: the next one lasts `EJECTION_BASE · 2^ejections`.
    ejections: AtomicU32,
    /// Ejected until this time ([`clock::now_ns`]); 0 = not ejected.
    ejected_until_ns: AtomicU64,
}

impl EndpointStats {
    fn new() -> Self {
        EndpointStats {
            ewma_ns: AtomicU64::new(0f64.to_bits()),
            stamp_ns: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ns: AtomicU64::new(0),
        }
    }

    /// A copy of the latency estimate and passive-health state, with no request in flight:
    /// what a new plan of the same service takes over.
    fn carried(&self) -> Self {
        let copy = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        let copy32 = |a: &AtomicU32| AtomicU32::new(a.load(Ordering::Relaxed));
        EndpointStats {
            ewma_ns: copy(&self.ewma_ns),
            stamp_ns: copy(&self.stamp_ns),
            pending: AtomicI64::new(0),
            failures: copy32(&self.failures),
            ejections: copy32(&self.ejections),
            ejected_until_ns: copy(&self.ejected_until_ns),
        }
    }

    /// Whether passive health has ejected this endpoint now.
    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ns.load(Ordering::Relaxed);
        until != 0 && clock::now_ns() < until
    }

    /// Counts a failure; ejects the endpoint once [`EJECT_AFTER_FAILURES`] are in a row (and
    /// again on each failure after an ejection ran out, for twice as long).
    fn record_failure(&self) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures < EJECT_AFTER_FAILURES || self.is_ejected() {
            return;
        }
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let length = EJECTION_BASE.saturating_mul(1 << k).min(EJECTION_MAX);
        let until =
            clock::now_ns().saturating_add(u64::try_from(length.as_nanos()).unwrap_or(u64::MAX));
        self.ejected_until_ns.store(until, Ordering::Relaxed);
        crate::metrics::register().endpoint_ejections.inc();
    }

    /// Ends a failure streak.
    fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejections.store(0, Ordering::Relaxed);
            self.ejected_until_ns.store(0, Ordering::Relaxed);
        }
    }

    /// Whether a latency sample was ever recorded.
    pub fn has_sample(&self) -> bool {
        f64::from_bits(self.ewma_ns.load(Ordering::Relaxed)) > 0.0
    }

    /// The estimate decayed to now, in nanoseconds.
    pub fn estimate_ns(&self) -> f64 {
        let ewma = f64::from_bits(self.ewma_ns.load(Ordering::Relaxed));
        let since = clock::now_ns().saturating_sub(self.stamp_ns.load(Ordering::Relaxed));
        ewma * (-(since as f64) / DECAY.as_nanos() as f64).exp()
    }

    /// Requests in flight.
    pub fn pending(&self) -> i64 {
        self.pending.load(Ordering::Relaxed)
    }

    fn cost(&self) -> f64 {
        self.estimate_ns() * (self.pending().max(0) as f64 + 1.0)
    }

    /// Records a round-trip time: a higher value replaces the estimate at once (the "peak"),
    /// a lower one is blended in according to the time since the last sample.
    pub fn observe(&self, rtt: Duration) {
        let rtt = (rtt.as_nanos() as f64).max(1.0);
        let now = clock::now_ns();
        let last = self.stamp_ns.swap(now, Ordering::Relaxed);
        let elapsed = now.saturating_sub(last) as f64;
        let decay = (-elapsed / DECAY.as_nanos() as f64).exp();
        let mut cur = self.ewma_ns.load(Ordering::Relaxed);
        loop {
            let old = f64::from_bits(cur);
            let new = if old <= 0.0 || rtt > old {
                rtt
            } else {
                old * decay + rtt * (1.0 - decay)
            };
            match self.ewma_ns.compare_exchange_weak(
                cur,
                new.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// The statistics of one endpoint of a plan: a share of the plan's slab, so that a pick holds
/// them past a table swap without a reference count per endpoint.
#[derive(Clone, Debug)]
pub struct StatsRef {
    slab: Arc<[EndpointStats]>,
    index: usize,
}

impl StatsRef {
    /// Whether both are the statistics of the same endpoint of the same slab.
    pub fn same(&self, other: &StatsRef) -> bool {
        std::ptr::eq::<EndpointStats>(&**self, &**other)
    }
}

impl std::ops::Deref for StatsRef {
    type Target = EndpointStats;

    fn deref(&self) -> &EndpointStats {
        &self.slab[self.index]
    }
}

/// One endpoint chosen for one attempt. Counts as in flight until dropped.
#[derive(Debug)]
pub struct Pick {
    /// Where to connect.
    pub addr: SocketAddr,
    stats: StatsRef,
    started: Instant,
}

impl Pick {
    fn new(addr: SocketAddr, stats: StatsRef) -> Self {
        stats.pending.fetch_add(1, Ordering::Relaxed);
        Pick {
            addr,
            stats,
            started: Instant::now(),
        }
    }

    /// Records the time from the pick to now as a round-trip sample (call when the response
    /// header arrives).
    pub fn observe_response(&self) {
        self.stats.observe(self.started.elapsed());
        self.stats.record_success();
    }

    /// Charges the endpoint a failure (connect refused, reset before a response), toward
    /// passive-health ejection.
    pub fn observe_failure(&self) {
        self.stats.observe(FAILURE_PENALTY);
        self.stats.record_failure();
    }

    /// The endpoint's statistics.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.stats.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Services with more endpoints than this find an address of their previous plan through a
/// map built for the purpose; fewer are searched in place.
const CARRY_SCAN_MAX: usize = 16;

/// The endpoints of one service port with their statistics and a weighted picker over them,
/// built when a table is compiled ([`crate::compiled`]).
#[derive(Debug)]
pub struct EndpointPlan {
    /// The service the endpoints are of (shared with the table: the addresses are not copied).
    service: Arc<Service>,
    /// The statistics of each endpoint, in the order of the service's endpoints: one
    /// allocation per plan.
    stats: Arc<[EndpointStats]>,
    picker: WeightedPicker,
}

impl EndpointPlan {
    /// The plan of `svc`'s endpoints. `previous`, the plan of the same service port in the
    /// table before, passes on what it measured: its whole slab when the addresses are the
    /// same, in the same order (an options change: requests in flight stay counted); else, per
    /// address it also had, the latency estimate and the passive-health state (requests in
    /// flight are counted where they were picked, so the new plan starts from none; what they
    /// observe after the swap updates the old plan only). Addresses it did not have start
    /// unmeasured.
    pub(crate) fn new(svc: &Arc<Service>, previous: Option<&EndpointPlan>) -> EndpointPlan {
        EndpointPlan {
            service: svc.clone(),
            stats: match previous {
                Some(p) if same_addresses(&p.service, svc) => p.stats.clone(),
                Some(p) => carry(p, svc),
                None => svc.endpoints.iter().map(|_| EndpointStats::new()).collect(),
            },
            picker: WeightedPicker::new(svc.endpoints.iter().map(|e| e.weight)),
        }
    }

    /// The endpoint addresses with their statistics.
    #[cfg(test)]
    pub(crate) fn endpoints(&self) -> impl Iterator<Item = (SocketAddr, StatsRef)> + '_ {
        self.service
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.addr, self.stats_ref(i)))
    }

    /// The statistics of an endpoint address of this plan.
    pub fn stats_of(&self, addr: &SocketAddr) -> Option<StatsRef> {
        let i = self
            .service
            .endpoints
            .iter()
            .position(|e| e.addr == *addr)?;
        Some(self.stats_ref(i))
    }

    fn stats_ref(&self, index: usize) -> StatsRef {
        StatsRef {
            slab: self.stats.clone(),
            index,
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.stats.len()
    }

    /// Whether the service has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
    }
}

fn same_addresses(a: &Service, b: &Service) -> bool {
    a.endpoints.len() == b.endpoints.len()
        && a.endpoints
            .iter()
            .zip(&b.endpoints)
            .all(|(x, y)| x.addr == y.addr)
}

/// A slab for `svc` with what `previous` measured of the addresses it shares.
fn carry(previous: &EndpointPlan, svc: &Service) -> Arc<[EndpointStats]> {
    let old = &previous.service.endpoints;
    let by_addr: Option<HashMap<SocketAddr, usize>> = (old.len() > CARRY_SCAN_MAX).then(|| {
        old.iter()
            .enumerate()
            .map(|(i, e)| (e.addr, i))
            .rev()
            .collect()
    });
    let find = |addr: SocketAddr| match &by_addr {
        Some(map) => map.get(&addr).copied(),
        None => old.iter().position(|e| e.addr == addr),
    };
    svc.endpoints
        .iter()
        .map(|e| match find(e.addr) {
            Some(i) => previous.stats[i].carried(),
            None => EndpointStats::new(),
        })
        .collect()
}

/// Picks endpoints with a service's [`EndpointPlan`]. One per proxy, shared by all listeners.
#[derive(Debug)]
pub struct Balancer {
    mode: Mode,
}

impl Balancer {
    /// A balancer picking the way `mode` says.
    pub fn new(mode: Mode) -> Self {
        Balancer { mode }
    }

    /// Chooses an endpoint of a service, avoiding the addresses in `exclude` when another
    /// endpoint is left. `None` when the service has no endpoint.
    pub fn pick(&self, plan: &EndpointPlan, exclude: &[SocketAddr]) -> Option<Pick> {
        let n = plan.len();
        if n == 0 {
            return None;
        }
        let eps = &plan.service.endpoints;
        let sp = plan;
        let mut rng = rand::rng();
        let usable = |i: usize| !exclude.contains(&eps[i].addr) && !sp.stats[i].is_ejected();
        let round_robin = || sp.picker.round_robin().unwrap_or(0);
        let mut idx = if n == 1 {
            0
        } else if self.mode == Mode::RoundRobin {
            retry_until(round_robin, usable, n)
        } else {
            let mut draw = || sp.picker.random(&mut rand::rng()).unwrap_or(0);
            let a = retry_until(&mut draw, usable, n);
            let b = retry_until(&mut draw, usable, n);
            choose(sp, a, b, &mut rng, usable)
        };
        if !usable(idx) && n > 1 {
            // The draws kept landing on excluded or ejected endpoints: take the first usable one
            // from a random start; failing that, one not excluded (never eject them all).
            let start = rng.random_range(0..n);
            let order = (0..n).map(|k| (start + k) % n);
            if let Some(i) = order
                .clone()
                .find(|&i| usable(i))
                .or_else(|| order.clone().find(|&i| !exclude.contains(&eps[i].addr)))
            {
                idx = i;
            }
        }
        Some(Pick::new(eps[idx].addr, sp.stats_ref(idx)))
    }
}

/// Draws with `draw` until `ok` accepts, at most a few times (then takes the last draw).
fn retry_until(mut draw: impl FnMut() -> usize, ok: impl Fn(usize) -> bool, n: usize) -> usize {
    let mut i = draw();
    for _ in 0..(2 * n).min(16) {
        if ok(i) {
            break;
        }
        i = draw();
    }
    i
}

fn choose(
    sp: &EndpointPlan,
    a: usize,
    b: usize,
    rng: &mut impl Rng,
    usable: impl Fn(usize) -> bool,
) -> usize {
    let (sa, sb) = (&sp.stats[a], &sp.stats[b]);
    match (sa.has_sample(), sb.has_sample()) {
        (false, false) => {
            let round_robin = || sp.picker.round_robin().unwrap_or(a);
            return retry_until(round_robin, &usable, sp.stats.len());
        }
        _ if a == b => return a,
        (false, true) => return a,
        (true, false) => return b,
        (true, true) => {}
    }
    let (ca, cb) = (sa.cost(), sb.cost());
    let (lo, hi) = if ca <= cb { (ca, cb) } else { (cb, ca) };
    let tie = hi <= lo * TIE_RATIO || hi - lo <= TIE_SLACK.as_nanos() as f64;
    if tie {
        if rng.random_bool(0.5) {
            a
        } else {
            b
        }
    } else if ca < cb {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests;

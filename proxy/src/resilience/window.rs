//! A sliding window of atomic counters: a ring of time slots, each holding the counts of one
//! slot length. Recording is a relaxed `fetch_add` (plus, once per slot, the reset of a stale
//! slot); reading sums the slots still inside the window. No lock.
//!
//! A record that races with the reset of its slot may be lost; the window is a statistic, and
//! that loss is bounded by what a few concurrent requests contribute at a slot boundary.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters summed over the last `slots × slot_ns` nanoseconds.
pub struct Window {
    slot_ns: u64,
    /// Every slot's cells in one allocation: per slot, `1 + width` cells, the first holding
    /// 1 + the index of the time slot its counters belong to (0 when never used), the others
    /// its counters.
    cells: Box<[AtomicU64]>,
    width: usize,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("slot_ns", &self.slot_ns)
            .field("slots", &self.slots())
            .field("width", &self.width)
            .finish()
    }
}

impl Window {
    /// A window of `slots` slots of `slot_ns` each, with `width` counters per slot.
    pub fn new(slots: usize, slot_ns: u64, width: usize) -> Self {
        Window {
            slot_ns: slot_ns.max(1),
            cells: (0..slots.max(1) * (1 + width))
                .map(|_| AtomicU64::new(0))
                .collect(),
            width,
        }
    }

    /// Number of counters per slot.
    pub fn width(&self) -> usize {
        self.width
    }

    fn slots(&self) -> usize {
        self.cells.len() / (1 + self.width)
    }

    /// Slot `i`: its epoch cell and its counters.
    fn slot(&self, i: usize) -> (&AtomicU64, &[AtomicU64]) {
        let cells = &self.cells[i * (1 + self.width)..(i + 1) * (1 + self.width)];
        (&cells[0], &cells[1..])
    }

    /// The counters of the slot `now_ns` falls in, reset first when they were of an older one.
    fn slot_at(&self, now_ns: u64) -> &[AtomicU64] {
        let epoch = now_ns / self.slot_ns + 1;
        let (stamp, counters) = self.slot((epoch % self.slots() as u64) as usize);
        let seen = stamp.load(Ordering::Acquire);
        if seen != epoch
            && seen < epoch
            && stamp
                .compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            for c in counters {
                c.store(0, Ordering::Relaxed);
            }
        }
        counters
    }

    /// Adds `n` to counter `index` at `now_ns`.
    pub fn add(&self, now_ns: u64, index: usize, n: u64) {
        if let Some(c) = self.slot_at(now_ns).get(index) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Subtracts `n` from counter `index` at `now_ns` (undoing an `add` of the same instant).
    pub fn sub(&self, now_ns: u64, index: usize, n: u64) {
        if let Some(c) = self.slot_at(now_ns).get(index) {
            // Saturate: the slot may have been reset in between.
            let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        }
    }

    /// The counters of the slots still inside the window ending at `now_ns`.
    fn live(&self, now_ns: u64) -> impl Iterator<Item = &[AtomicU64]> {
        let newest = now_ns / self.slot_ns + 1;
        let oldest = newest.saturating_sub(self.slots() as u64 - 1);
        (0..self.slots())
            .map(|i| self.slot(i))
            .filter_map(move |(stamp, counters)| {
                let e = stamp.load(Ordering::Acquire);
                (e >= oldest && e <= newest && e != 0).then_some(counters)
            })
    }

    /// Sum of counter `index` over the window ending at `now_ns`.
    pub fn sum(&self, now_ns: u64, index: usize) -> u64 {
        self.live(now_ns)
            .filter_map(|s| s.get(index))
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Sums of every counter over the window ending at `now_ns`.
    pub fn snapshot(&self, now_ns: u64) -> Vec<u64> {
        let mut out = vec![0u64; self.width];
        for s in self.live(now_ns) {
            for (o, c) in out.iter_mut().zip(s) {
                *o += c.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// Forgets everything recorded so far.
    pub fn reset(&self) {
        for i in 0..self.slots() {
            let (stamp, counters) = self.slot(i);
            stamp.store(0, Ordering::Release);
            for c in counters {
                c.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn counts_slide_out_of_the_window() {
        let w = Window::new(10, S, 2);
        let t0 = 100 * S;
        w.add(t0, 0, 3);
        w.add(t0 + S, 0, 4);
        w.add(t0 + S, 1, 1);
        assert_eq!(w.snapshot(t0 + S), vec![7, 1]);
        assert_eq!(w.sum(t0 + 9 * S, 0), 7);
        // At t0 + 10 s the first slot has left the window.
        assert_eq!(w.sum(t0 + 10 * S, 0), 4);
        assert_eq!(w.sum(t0 + 11 * S, 0), 0);
        // A slot reused a full turn later starts from zero.
        w.add(t0 + 10 * S, 0, 1);
        assert_eq!(w.sum(t0 + 10 * S, 0), 5);
        w.sub(t0 + 10 * S, 0, 1);
        assert_eq!(w.sum(t0 + 10 * S, 0), 4);
        w.reset();
        assert_eq!(w.snapshot(t0 + 10 * S), vec![0, 0]);
    }

    #[test]
    fn concurrent_adds_are_all_counted_within_a_slot() {
        let w = std::sync::Arc::new(Window::new(4, S, 1));
        let now = 7 * S;
        // Claim the slot first: adds that race with its reset may be lost, by design.
        w.add(now, 0, 0);
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        w.add(now, 0, 1);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(w.sum(now, 0), 4000);
    }
}

//! Weighted choice among a fixed list, precomputed once per compiled table: the one
//! implementation behind endpoint picks ([`crate::balance`]) and traffic-split backends
//! ([`crate::split`]).

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

/// Picks a position of a list in proportion to its weight, at random or in a smooth weighted
/// round robin. Built off the request path; a pick takes no lock and allocates nothing.
#[derive(Debug)]
pub struct WeightedPicker {
    /// Cumulative weights: position i owns `[cumulative[i-1], cumulative[i])`.
    cumulative: Box<[u64]>,
    /// A step coprime with the total weight, so that `counter * stride mod total` visits every
    /// slot once per round while interleaving positions.
    stride: u64,
    rr: AtomicU64,
}

impl WeightedPicker {
    /// A picker over these weights (0 never picked), round robin starting at a random slot.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> WeightedPicker {
        let mut acc = 0u64;
        let cumulative: Box<[u64]> = weights
            .into_iter()
            .map(|w| {
                acc += u64::from(w);
                acc
            })
            .collect();
        let start = if acc > 0 {
            rand::rng().random_range(0..acc)
        } else {
            0
        };
        WeightedPicker {
            cumulative,
            stride: coprime_stride(acc),
            rr: AtomicU64::new(start),
        }
    }

    /// Sum of the weights; 0 means nothing can be picked.
    pub fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Number of positions.
    pub fn len(&self) -> usize {
        self.cumulative.len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.cumulative.is_empty()
    }

    fn slot_owner(&self, slot: u64) -> usize {
        self.cumulative.partition_point(|c| *c <= slot)
    }

    /// A position drawn with probability proportional to its weight; `None` when the total
    /// weight is 0.
    pub fn random(&self, rng: &mut impl Rng) -> Option<usize> {
        let total = self.total();
        (total > 0).then(|| self.slot_owner(rng.random_range(0..total)))
    }

    /// The next position of the weighted round robin; `None` when the total weight is 0.
    pub fn round_robin(&self) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let n = self.rr.fetch_add(1, Ordering::Relaxed);
        let slot = (u128::from(n) * u128::from(self.stride) % u128::from(total)) as u64;
        Some(self.slot_owner(slot))
    }
}

/// A stride near total/φ that shares no factor with `total`.
fn coprime_stride(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let mut s = ((total as f64) * 0.618_033_988_75) as u64;
    s = s.max(1);
    while gcd(s, total) != 1 {
        s += 1;
    }
    s
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn draws_follow_the_weights_and_zero_weights_never_win() {
        let p = WeightedPicker::new([1, 0, 3]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 3];
        for _ in 0..40_000 {
            counts[p.random(&mut rng).unwrap()] += 1;
        }
        assert_eq!(counts[1], 0);
        // Expected 10 000 / 30 000; the bound is many standard deviations (≈87) wide.
        assert!((9_000..11_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn round_robin_gives_each_its_share_per_round() {
        let p = WeightedPicker::new([2, 1, 0, 4]);
        let mut counts = [0u32; 4];
        for _ in 0..7 * 100 {
            counts[p.round_robin().unwrap()] += 1;
        }
        assert_eq!(counts, [200, 100, 0, 400]);
    }

    #[test]
    fn nothing_to_pick_without_weight() {
        let p = WeightedPicker::new([0, 0]);
        assert_eq!(p.random(&mut rand::rng()), None);
        assert_eq!(p.round_robin(), None);
        assert!(WeightedPicker::new([]).is_empty());
    }
}

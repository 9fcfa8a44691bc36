//! Weighted choice among a fixed list, precomputed once per compiled table: the one
//! implementation behind endpoint picks ([`crate::balance`]) and traffic-split backends
//! ([`crate::split`]).

use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;

/// Picks a position of a list in proportion to its weight, at random or in a smooth weighted
/// round robin. Built off the request path; a pick takes no lock and allocates nothing.
#[derive(Debug)]
pub struct WeightedPicker {
    slots: Slots,
    /// A step coprime with the total weight, so that `counter * stride mod total` visits every
    /// slot once per round while interleaving positions.
    stride: u64,
    rr: AtomicU64,
}

/// Which position owns each slot of `0..total`.
#[derive(Debug)]
enum Slots {
    /// Every position has this weight (the common case: endpoints of equal weight): position
    /// i owns `[i·weight, (i+1)·weight)`, no table needed.
    Equal { len: usize, weight: u64 },
    /// Cumulative weights: position i owns `[cumulative[i-1], cumulative[i])`.
    Cumulative(Box<[u64]>),
}

impl WeightedPicker {
    /// A picker over these weights (0 never picked), round robin starting at a random slot.
    pub fn new(weights: impl IntoIterator<Item = u32>) -> WeightedPicker {
        let weights: Vec<u64> = weights.into_iter().map(u64::from).collect();
        let slots = match weights.first() {
            Some(&w) if weights.iter().all(|&x| x == w) => Slots::Equal {
                len: weights.len(),
                weight: w,
            },
            None => Slots::Equal { len: 0, weight: 0 },
            Some(_) => {
                let mut acc = 0u64;
                Slots::Cumulative(
                    weights
                        .iter()
                        .map(|w| {
                            acc += w;
                            acc
                        })
                        .collect(),
                )
            }
        };
        let total = slots.total();
        let start = if total > 0 {
            rand::rng().random_range(0..total)
        } else {
            0
        };
        WeightedPicker {
            slots,
            stride: coprime_stride(total),
            rr: AtomicU64::new(start),
        }
    }

    /// Sum of the weights; 0 means nothing can be picked.
    pub fn total(&self) -> u64 {
        self.slots.total()
    }

    /// Number of positions.
    pub fn len(&self) -> usize {
        match &self.slots {
            Slots::Equal { len, .. } => *len,
            Slots::Cumulative(c) => c.len(),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The position owning `slot` (below the total, which is not 0).
    fn slot_owner(&self, slot: u64) -> usize {
        match &self.slots {
            Slots::Equal { weight, .. } => (slot / weight) as usize,
            Slots::Cumulative(c) => c.partition_point(|c| *c <= slot),
        }
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

impl Slots {
    fn total(&self) -> u64 {
        match self {
            Slots::Equal { len, weight } => *len as u64 * weight,
            Slots::Cumulative(c) => c.last().copied().unwrap_or(0),
        }
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
    fn equal_weights_need_no_table_and_pick_alike() {
        let p = WeightedPicker::new([3, 3, 3]);
        assert!(matches!(p.slots, Slots::Equal { len: 3, weight: 3 }));
        assert_eq!(p.total(), 9);
        let mut counts = [0u32; 3];
        for _ in 0..9 * 100 {
            counts[p.round_robin().unwrap()] += 1;
        }
        assert_eq!(counts, [300, 300, 300]);
        let mut rng = StdRng::seed_from_u64(3);
        let mut drawn = [0u32; 3];
        for _ in 0..30_000 {
            drawn[p.random(&mut rng).unwrap()] += 1;
        }
        assert!(
            drawn.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{drawn:?}"
        );
    }

    #[test]
    fn nothing_to_pick_without_weight() {
        let p = WeightedPicker::new([0, 0]);
        assert_eq!(p.random(&mut rand::rng()), None);
        assert_eq!(p.round_robin(), None);
        assert!(WeightedPicker::new([]).is_empty());
    }
}

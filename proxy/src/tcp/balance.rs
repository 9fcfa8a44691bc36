//! Weighted choice of an endpoint for a new TCP connection or UDP session, skipping the ones
//! already tried.

use config_model::Endpoint;
use rand::Rng;

/// Picks an endpoint at random in proportion to its weight, among those whose index is not in
/// `tried`. `None` when every endpoint has been tried (or there are none).
pub(crate) fn pick(endpoints: &[Endpoint], tried: &[usize]) -> Option<usize> {
    pick_with(endpoints, tried, &mut rand::rng())
}

fn pick_with(endpoints: &[Endpoint], tried: &[usize], rng: &mut impl Rng) -> Option<usize> {
    let eligible = |i: &usize| !tried.contains(i);
    let total: u64 = (0..endpoints.len())
        .filter(eligible)
        .map(|i| u64::from(endpoints[i].weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.random_range(0..total);
    for i in (0..endpoints.len()).filter(eligible) {
        let w = u64::from(endpoints[i].weight);
        if point < w {
            return Some(i);
        }
        point -= w;
    }
    unreachable!("point below the total weight always lands on an endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn eps(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Endpoint {
                addr: format!("10.0.0.{}:80", i + 1).parse().unwrap(),
                weight: *w,
            })
            .collect()
    }

    #[test]
    fn follows_the_weights() {
        let endpoints = eps(&[1, 3]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 2];
        for _ in 0..40_000 {
            counts[pick_with(&endpoints, &[], &mut rng).unwrap()] += 1;
        }
        // Expected 10 000 / 30 000; the bound is many standard deviations (≈87) wide.
        assert!((9_000..11_000).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn skips_tried_endpoints_and_ends_when_all_are_tried() {
        let endpoints = eps(&[5, 1, 5]);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert_eq!(pick_with(&endpoints, &[0, 2], &mut rng), Some(1));
        }
        assert_eq!(pick_with(&endpoints, &[0, 1, 2], &mut rng), None);
        assert_eq!(pick_with(&[], &[], &mut rng), None);
    }
}

//! A token bucket per service, as one atomic word (the generic cell rate algorithm): `average`
//! requests per second sustained, up to `burst` at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Token bucket state: the theoretical arrival time of the next request, in nanoseconds.
/// A request is admitted when admitting it would not push that time further than `burst`
/// intervals ahead of now. One compare-and-swap per request, no lock.
#[derive(Debug)]
pub struct TokenBucket {
    interval_ns: u64,
    capacity_ns: u64,
    tat: AtomicU64,
}

impl TokenBucket {
    /// A full bucket. `average` and `burst` are at least 1 (the model guarantees it).
    pub fn new(average: u32, burst: u32) -> Self {
        let interval_ns = 1_000_000_000 / u64::from(average.max(1));
        TokenBucket {
            interval_ns: interval_ns.max(1),
            capacity_ns: interval_ns.max(1).saturating_mul(u64::from(burst.max(1))),
            tat: AtomicU64::new(0),
        }
    }

    /// Takes a token at `now_ns`, or says how long until one is available.
    pub fn try_acquire(&self, now_ns: u64) -> Result<(), Duration> {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_ns).saturating_add(self.interval_ns);
            let limit = now_ns.saturating_add(self.capacity_ns);
            if next > limit {
                return Err(Duration::from_nanos(next - limit));
            }
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }
}

/// The `Retry-After` value for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn burst_then_average() {
        let b = TokenBucket::new(2, 5);
        let t0 = 10 * S;
        for i in 0..5 {
            assert!(b.try_acquire(t0).is_ok(), "request {i} of the burst");
        }
        let wait = b.try_acquire(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_secs(wait), 1);
        // Half a second later exactly one more token has accrued.
        assert!(b.try_acquire(t0 + S / 2).is_ok());
        assert!(b.try_acquire(t0 + S / 2).is_err());
        // After a long idle time the bucket is full again, not fuller.
        let later = t0 + 100 * S;
        assert_eq!((0..10).filter(|_| b.try_acquire(later).is_ok()).count(), 5);
    }

    #[test]
    fn sustained_rate_is_average() {
        let b = TokenBucket::new(10, 1);
        let admitted = (0..1000)
            .filter(|i| b.try_acquire(i * S / 100).is_ok())
            .count();
        // 10 s at 100 attempts per second, 10 per second admitted.
        assert_eq!(admitted, 100);
    }

    #[test]
    fn concurrent_takers_never_exceed_the_burst() {
        let b = std::sync::Arc::new(TokenBucket::new(1, 50));
        let now = 5 * S;
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..100).filter(|_| b.try_acquire(now).is_ok()).count())
            })
            .collect();
        let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 50);
    }
}

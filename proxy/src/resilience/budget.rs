//! The retry budget of one service: retries may add at most `percent` of the requests seen in
//! the last 10 seconds, plus a floor of [`MIN_RETRIES_PER_SEC`] per second so that a quiet
//! service can still retry. Like Finagle's and Linkerd's budgets, it keeps retries from
//! multiplying an outage.

use super::window::Window;

/// Slots of the window (one second each).
pub const WINDOW_SECS: u64 = 10;
/// Retries always allowed per second of the window, whatever the request rate.
pub const MIN_RETRIES_PER_SEC: u64 = 1;

const REQUESTS: usize = 0;
const RETRIES: usize = 1;

/// Request and retry counts over a sliding window.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u64,
    window: Window,
}

impl RetryBudget {
    /// A budget allowing retries of `percent` (1 to 100) of the request rate.
    pub fn new(percent: u32) -> Self {
        RetryBudget {
            percent: u64::from(percent),
            window: Window::new(WINDOW_SECS as usize, 1_000_000_000, 2),
        }
    }

    /// Counts a client request (not a retry).
    pub fn record_request(&self, now_ns: u64) {
        self.window.add(now_ns, REQUESTS, 1);
    }

    /// Takes one retry from the budget; false when the budget is spent.
    pub fn try_retry(&self, now_ns: u64) -> bool {
        // Count first, then check, so that concurrent retries cannot all pass one check.
        self.window.add(now_ns, RETRIES, 1);
        let requests = self.window.sum(now_ns, REQUESTS);
        let allowed = requests * self.percent / 100 + MIN_RETRIES_PER_SEC * WINDOW_SECS;
        if self.window.sum(now_ns, RETRIES) <= allowed {
            true
        } else {
            self.window.sub(now_ns, RETRIES, 1);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn retries_are_capped_by_share_plus_floor() {
        let b = RetryBudget::new(20);
        let t = 50 * S;
        for _ in 0..100 {
            b.record_request(t);
        }
        let granted = (0..1000).filter(|_| b.try_retry(t)).count() as u64;
        assert_eq!(granted, 20 + MIN_RETRIES_PER_SEC * WINDOW_SECS);
        // More traffic earns more retries.
        for _ in 0..50 {
            b.record_request(t);
        }
        assert_eq!((0..1000).filter(|_| b.try_retry(t)).count(), 10);
        // Once the window has moved on, the floor is available again.
        let later = t + (WINDOW_SECS + 1) * S;
        assert_eq!(
            (0..1000).filter(|_| b.try_retry(later)).count() as u64,
            MIN_RETRIES_PER_SEC * WINDOW_SECS
        );
    }
}

//! The proxy's one clock: monotonic nanoseconds since a process-wide epoch, so that a time fits
//! in one atomic word. Rate limits, breakers, retry budgets, endpoint latency and ejections, and
//! the idle timers of TCP and UDP all read it. It is Tokio's clock (the system's monotonic
//! clock in the binary), so that tests with paused time drive every timer alike.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process-wide epoch.
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The `Instant` that `ns` (a reading of [`now_ns`]) stands for, for timers.
pub fn instant(ns: u64) -> Instant {
    epoch() + Duration::from_nanos(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_go_forward_and_map_back_to_instants() {
        let a = now_ns();
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let b = now_ns();
        assert!(b >= a + 2_000_000, "{a} then {b}");
        assert!(instant(b) > before);
        assert!(instant(b) <= Instant::now());
    }
}

//! A monotonic clock in nanoseconds since the first use in this process, so that time fits
//! in one atomic word.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the process-wide epoch.
pub fn now_ns() -> u64 {
    nanos_at(Instant::now())
}

/// Nanoseconds since the process-wide epoch at `t` (0 for instants before it).
pub fn nanos_at(t: Instant) -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

//! One monotonic clock for the whole load generator: senders and the receiver stamp
//! events with nanoseconds since the first use.

use std::sync::LazyLock;
use std::time::Instant;

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

pub fn now_ns() -> u64 {
    START.elapsed().as_nanos() as u64
}

/// Milliseconds from `from_ns` to `to_ns` (both from [`now_ns`]).
pub fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e6
}

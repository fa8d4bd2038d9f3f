//! Capped exponential backoff between retries.

use std::time::Duration;

/// Delay before the n-th retry: `min * 2^n`, never above `max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff starting at `min` and doubling up to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max }
    }

    /// The delay before retry number `retry` (0 for the first retry). No jitter: the client
    /// must behave the same on every run of a seeded simulation, and the cap on retries
    /// already bounds how long a herd of callers keeps hammering a recovering node.
    pub(crate) fn delay(&self, retry: u32) -> Duration {
        // Past 2^31 the cap has long been reached; clamping the shift keeps it defined.
        let factor = 1u32 << retry.min(31);
        self.min.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_min_and_stops_at_max() {
        let backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        let delays: Vec<u128> = (0..8).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [20, 40, 80, 160, 320, 640, 1000, 1000]);
    }

    #[test]
    fn never_overflows_and_never_exceeds_max() {
        let backoff = Backoff::new(Duration::from_secs(3), Duration::from_secs(10));
        for retry in [30, 31, 32, 63, 64, u32::MAX] {
            assert_eq!(backoff.delay(retry), Duration::from_secs(10), "retry {retry}");
        }
        // A minimum above the maximum still respects the maximum.
        let inverted = Backoff::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(inverted.delay(0), Duration::from_secs(1));
    }
}

//! `EntryClock`: the clock reading a partition leader stamps into each entry it proposes
//! (replicated time, DESIGN.md §2 promise 13). Apply never reads a clock; it takes the
//! largest reading applied so far, so time in a partition never goes back. Here, at the
//! leader, a reading is also bounded against a clock that jumps: within one leadership term
//! readings may run ahead of the monotonic clock by at most [`CLOCK_JUMP_SLACK`] since the
//! term's first reading, so a wall clock set a day ahead does not expire a day of records.
//! What this cannot catch is a clock already wrong when the node takes over (it anchors
//! there); the hardening issue adds skew between hosts to the simulation.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How far the wall clock may run ahead of the monotonic clock within a term (NTP steps and
/// slews stay well inside it).
pub const CLOCK_JUMP_SLACK: Duration = Duration::from_secs(1);

/// The first reading of a term, and when (by the monotonic clock) it was taken.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    term: u64,
    reading_ms: i64,
    at: Instant,
}

/// One partition leader's readings.
#[derive(Debug, Default)]
pub struct EntryClock {
    anchor: Mutex<Option<Anchor>>,
}

impl EntryClock {
    /// The reading for an entry proposed now in `term`: the wall clock `wall_ms`, never below
    /// the partition's replicated time `applied_ms`, never further ahead of the term's first
    /// reading than the monotonic clock has moved plus [`CLOCK_JUMP_SLACK`].
    pub fn stamp(&self, term: u64, wall_ms: i64, applied_ms: i64) -> i64 {
        let now = Instant::now();
        let mut anchor = self.anchor.lock();
        let current = match *anchor {
            Some(current) if current.term == term => current,
            _ => {
                let reading_ms = wall_ms.max(applied_ms);
                *anchor = Some(Anchor { term, reading_ms, at: now });
                return reading_ms;
            }
        };
        let elapsed = now.saturating_duration_since(current.at) + CLOCK_JUMP_SLACK;
        let ceiling = current.reading_ms.saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
        if wall_ms > ceiling {
            flotilla_types::coverage!("leader_clock_jump_clamped");
        }
        wall_ms.min(ceiling).max(applied_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_clock_jump_while_leading_is_clamped_to_real_time_and_time_never_goes_back() {
        let clock = EntryClock::default();
        assert_eq!(clock.stamp(3, 10_000, 9_000), 10_000, "the term's first reading anchors");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clock.stamp(3, 15_000, 10_000), 15_000, "a clock moving with real time passes");
        // The wall clock jumps a day ahead: readings follow real time (+ slack) instead.
        assert_eq!(clock.stamp(3, 86_400_000, 15_000), 16_000);
        // The wall clock jumps back: the partition's time stands still.
        assert_eq!(clock.stamp(3, 1_000, 15_000), 15_000);
        // A new term anchors afresh.
        assert_eq!(clock.stamp(4, 20_000, 15_000), 20_000);
    }
}

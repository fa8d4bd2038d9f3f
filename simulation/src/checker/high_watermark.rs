//! The high watermark never goes backwards (DESIGN.md §2, promise 5): successive fetches of
//! one partition by one consumer report a non-decreasing high watermark, across leader
//! changes and restarts. A watermark that moves back means a consumer was shown records a
//! new leader did not have — uncommitted data served as committed (Redpanda's leader_ack
//! fix, a follower serving before it caught up).

use std::collections::BTreeMap;

use super::{Findings, History, PartitionKey};

pub const NAME: &str = "high watermark regression";

pub fn check(history: &History, findings: &mut Findings) {
    let mut highest: BTreeMap<(u32, &PartitionKey), u64> = BTreeMap::new();
    for fetch in &history.fetches {
        let seen = highest.entry((fetch.consumer, &fetch.partition)).or_insert(0);
        if fetch.high_watermark < *seen {
            findings.violation(format!(
                "consumer {} saw the high watermark of {} go back from {} to {}",
                fetch.consumer, fetch.partition, seen, fetch.high_watermark
            ));
        }
        *seen = (*seen).max(fetch.high_watermark);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Fetch;
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn a_watermark_moving_back_is_caught() {
        let mut h = history(vec![], vec![]);
        for (consumer, high_watermark) in [(0, 5), (1, 2), (0, 7), (0, 6)] {
            h.fetches.push(Fetch { consumer, partition: p(0), from: 0, sent_ms: 0, high_watermark, records: vec![] });
        }
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("from 7 to 6"), "{found:?}");
    }
}

//! Read after acknowledge, across clients (DESIGN.md §2: an acknowledged record is committed):
//! once any client was told a record is acknowledged at offset `o`, no fetch that any client
//! sends afterwards may report a high watermark at or below `o`. The per-consumer check
//! (`high_watermark.rs`) cannot see a stale leader that serves a consumer which never fetched
//! from the new one: this one compares each fetch with every acknowledgement received before
//! it was sent, whoever received it (review suspicion A: lease reads after a fast restart).

use std::collections::BTreeMap;

use super::{Findings, History, PartitionKey};

pub const NAME: &str = "read after acknowledge";

pub fn check(history: &History, findings: &mut Findings) {
    // Per partition: acknowledgements by the time they were received, with the highest
    // acknowledged offset up to each.
    let mut acked: BTreeMap<&PartitionKey, Vec<(u64, u64, &str)>> = BTreeMap::new();
    for ack in &history.acks {
        acked.entry(&ack.partition).or_default().push((ack.acked_ms, ack.offset, &ack.value));
    }
    let mut highest: BTreeMap<&PartitionKey, Vec<(u64, u64, &str)>> = BTreeMap::new();
    for (partition, mut acks) in acked {
        acks.sort_unstable();
        let mut running: Vec<(u64, u64, &str)> = Vec::with_capacity(acks.len());
        for (at, offset, value) in acks {
            match running.last() {
                Some(&(_, top, _)) if top >= offset => {
                    let previous = *running.last().expect("not empty");
                    running.push((at, previous.1, previous.2));
                }
                _ => running.push((at, offset, value)),
            }
        }
        highest.insert(partition, running);
    }
    for fetch in &history.fetches {
        let Some(acks) = highest.get(&fetch.partition) else { continue };
        // Only acknowledgements received strictly before the fetch was sent.
        let before = acks.partition_point(|(at, _, _)| *at < fetch.sent_ms);
        let Some(&(at, offset, value)) = before.checked_sub(1).and_then(|i| acks.get(i)) else { continue };
        if fetch.high_watermark <= offset {
            findings.violation(format!(
                "consumer {} fetched {} at {} ms and was told the high watermark is {}, but {value:?} had been \
                 acknowledged at offset {offset} at {at} ms: an acknowledged record was not served as committed",
                fetch.consumer, fetch.partition, fetch.sent_ms, fetch.high_watermark
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Fetch;
    use super::super::test_support::*;
    use super::*;

    #[test]
    fn a_fetch_sent_after_an_acknowledgement_must_see_it_committed() {
        let mut first = ack(0, 4, "a");
        first.acked_ms = 100;
        let mut second = ack(0, 2, "b");
        second.acked_ms = 150;
        let mut h = history(vec![first, second], vec![]);
        let fetch = |consumer, sent_ms, high_watermark| Fetch {
            consumer,
            partition: p(0),
            from: 0,
            sent_ms,
            high_watermark,
            records: vec![],
        };
        // Before any acknowledgement anything goes; after, the watermark must pass offset 4.
        h.fetches.extend([fetch(0, 50, 1), fetch(1, 200, 5), fetch(2, 200, 4), fetch(3, 100, 3)]);
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("consumer 2") && found[0].contains("offset 4"), "{found:?}");
    }
}

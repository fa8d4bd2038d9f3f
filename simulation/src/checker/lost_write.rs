//! No lost acknowledged write (DESIGN.md §2, promise 1): every acknowledged record is read
//! back by the final drain at the offset it was acknowledged at — unless retention removed
//! it, and only what retention may remove. Another record at that offset does not stand in
//! for it: a cluster that lost its log tail and appended new records over it has lost the
//! acknowledged ones (the same offset is also an `offset conflict`). Prevents the Jepsen classics: a leader
//! acknowledging before a quorum fsynced, a whole-cluster power loss wiping un-synced
//! acknowledged entries (NATS #7564), a truncated log tail after recovery; and, with
//! retention, a trim that removes more than its policy allows or a snapshot install that
//! leaves a hole (DESIGN.md §3's trap).
//!
//! What retention may remove, judged from the history alone:
//! - only a prefix: records below the log start at which the drain began; a record missing
//!   above it is lost;
//! - a record below an offset some `DeleteRecords` named (acknowledged or not);
//! - under `retention.ms` M, a record first sent at least M before the drain began (it cannot
//!   have been appended before it was sent, and expiry waits M past the append in replicated
//!   time, which never runs ahead of the run's clock);
//! - under `retention.bytes` B with batches of at most `max.message.bytes` X, a record with
//!   more than B - X bytes of records above it (a batch is trimmed only while the partition
//!   holds more than B, the batch included); records above it whose size the history does not
//!   know count as the largest record the workload sends.

use std::collections::BTreeMap;

use super::{Ack, Findings, History, PartitionKey};

pub const NAME: &str = "lost write";

pub fn check(history: &History, findings: &mut Findings) {
    let sizes = known_sizes(history);
    for ack in &history.acks {
        let start = history.drain_starts.get(&ack.partition).map_or(0, |s| s.offset);
        let records = history.reads.get(&ack.partition).map(Vec::as_slice).unwrap_or_default();
        if ack.offset >= start {
            match records.iter().find(|(offset, _)| *offset == ack.offset) {
                Some((_, value)) if *value == ack.value => {}
                Some((_, value)) => findings.violation(format!(
                    "{:?} was acknowledged at {} offset {} but the final drain read {value:?} there",
                    ack.value, ack.partition, ack.offset
                )),
                None => findings.violation(format!(
                    "{:?} was acknowledged at {} offset {} but the final drain of that partition read {} records from \
                     offset {start}",
                    ack.value,
                    ack.partition,
                    ack.offset,
                    records.len()
                )),
            }
        } else if let Err(why) = removable(history, ack, &sizes) {
            findings.violation(format!(
                "{:?} was acknowledged at {} offset {} and is gone (the log starts at {start}), but no retention \
                 removes it: {why}",
                ack.value, ack.partition, ack.offset
            ));
        }
    }
}

/// The size of every record the history knows the offset and size of, per partition.
fn known_sizes(history: &History) -> BTreeMap<&PartitionKey, BTreeMap<u64, u64>> {
    let mut sizes: BTreeMap<&PartitionKey, BTreeMap<u64, u64>> = BTreeMap::new();
    for ack in &history.acks {
        sizes.entry(&ack.partition).or_default().insert(ack.offset, ack.bytes);
    }
    sizes
}

/// Why retention may have removed `ack`, or why nothing could have.
fn removable(history: &History, ack: &Ack, sizes: &BTreeMap<&PartitionKey, BTreeMap<u64, u64>>) -> Result<(), String> {
    if history.trims.iter().any(|trim| trim.partition == ack.partition && trim.before_offset > ack.offset) {
        return Ok(());
    }
    let Some(settings) = history.retention.get(&ack.partition.topic) else {
        return Err(format!("topic {:?} has no retention and no trim covered the record", ack.partition.topic));
    };
    let known = sizes.get(&ack.partition);
    let end = history
        .reads
        .get(&ack.partition)
        .and_then(|records| records.last().map(|(offset, _)| offset + 1))
        .into_iter()
        .chain(known.and_then(|k| k.keys().next_back().map(|o| o + 1)))
        .max()
        .unwrap_or(ack.offset + 1);
    let observed_ms = history.drain_starts.get(&ack.partition).map_or(0, |s| s.at_ms);
    let mut reasons = Vec::new();
    for setting in settings {
        if let Some(max_age_ms) = setting.max_age_ms {
            if ack.first_sent_ms.saturating_add(max_age_ms) <= observed_ms {
                return Ok(());
            }
            reasons.push(format!(
                "sent at {} ms, under retention.ms={max_age_ms} it could expire at {} ms at the earliest, after the \
                 drain found it gone at {observed_ms} ms",
                ack.first_sent_ms,
                ack.first_sent_ms + max_age_ms
            ));
        }
        if let Some(max_bytes) = setting.max_bytes {
            let above = bytes_above(ack.offset, end, known, history.record_bytes_max);
            if above.saturating_add(setting.max_batch_bytes) > max_bytes {
                return Ok(());
            }
            reasons.push(format!(
                "at most {above} bytes of records lie above it, and retention.bytes={max_bytes} with batches of at \
                 most {} bytes trims a batch only under more than {} bytes above it",
                setting.max_batch_bytes,
                max_bytes.saturating_sub(setting.max_batch_bytes)
            ));
        }
    }
    Err(reasons.join("; "))
}

/// At most how many bytes of records lie at offsets in `(offset, end)`: the known sizes, and
/// the largest record for every offset of unknown size.
fn bytes_above(offset: u64, end: u64, known: Option<&BTreeMap<u64, u64>>, record_bytes_max: u64) -> u64 {
    let slots = end.saturating_sub(offset + 1);
    let (known_count, known_bytes) = known
        .map(|k| k.range(offset + 1..end).fold((0u64, 0u64), |(n, b), (_, size)| (n + 1, b + size)))
        .unwrap_or_default();
    known_bytes + (slots - known_count) * record_bytes_max
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::{RetentionSetting, TrimAttempt};
    use super::*;

    #[test]
    fn an_acknowledged_record_missing_from_the_drain_is_lost() {
        let h = history(vec![ack(0, 0, "a"), ack(0, 1, "b")], vec![(0, vec!["a"]), (1, vec![])]);
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("\"b\""), "{found:?}");
    }

    #[test]
    fn an_acknowledged_record_overwritten_by_another_is_lost() {
        let h = history(vec![ack(0, 0, "a"), ack(0, 1, "b")], vec![(0, vec!["a", "c"])]);
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("\"b\"") && found[0].contains("read \"c\" there"), "{found:?}");
    }

    #[test]
    fn records_read_back_are_not_lost() {
        let h = history(vec![ack(0, 0, "a"), ack(1, 0, "b")], vec![(0, vec!["a"]), (1, vec!["b"])]);
        assert!(findings(check, &h).is_empty());
    }

    /// Partition 0 with acks at offsets 0..4 of 10 bytes each, drained from offset `start`.
    fn trimmed(start: u64) -> History {
        let acks: Vec<Ack> = (0..4).map(|o| ack(0, o, &format!("v{o}"))).collect();
        let mut h = history(acks, vec![]);
        let drained = (start..4).map(|o| (o, format!("v{o}"))).collect();
        h.reads.insert(p(0), drained);
        h.drain_starts.insert(p(0), super::super::DrainStart { offset: start, at_ms: 1_500 });
        h.record_bytes_max = 10;
        h
    }

    #[test]
    fn a_trim_without_any_retention_or_delete_records_is_a_lost_write() {
        let found = findings(check, &trimmed(2));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("no retention and no trim"), "{found:?}");
    }

    #[test]
    fn delete_records_may_remove_what_lies_below_its_offset_and_nothing_above() {
        let mut h = trimmed(2);
        h.trims.push(TrimAttempt { partition: p(0), before_offset: 1, log_start: None });
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "offset 1 is above the trim: {found:?}");
        h.trims.push(TrimAttempt { partition: p(0), before_offset: 2, log_start: Some(2) });
        assert!(findings(check, &h).is_empty());
        // Still, a hole above the log start is lost whatever was trimmed.
        h.reads.get_mut(&p(0)).expect("drained").retain(|(o, _)| *o != 3);
        assert_eq!(findings(check, &h).len(), 1);
    }

    #[test]
    fn retention_by_age_removes_only_records_sent_long_enough_before_the_drain() {
        let mut h = trimmed(2);
        h.retention.insert(
            "t".into(),
            vec![RetentionSetting { max_age_ms: Some(1_000), max_bytes: None, max_batch_bytes: 100 }],
        );
        for (i, ack) in h.acks.iter_mut().enumerate() {
            ack.first_sent_ms = 400 * i as u64; // 0, 400, 800, 1200
        }
        assert!(findings(check, &h).is_empty(), "offsets 0 and 1 were sent by 500 ms");
        h.acks[1].first_sent_ms = 600;
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "offset 1, sent at 600 ms, cannot expire before 1600 ms: {found:?}");
        assert!(found[0].contains("retention.ms=1000"), "{found:?}");
    }

    #[test]
    fn retention_by_bytes_needs_enough_bytes_above_a_trimmed_record() {
        // 10-byte records; retention.bytes=25 with batches of at most 10 bytes trims a record
        // only with more than 15 bytes above it: offsets 0 (30 above) and 1 (20 above), not 2.
        let mut h = trimmed(2);
        h.retention
            .insert("t".into(), vec![RetentionSetting { max_age_ms: None, max_bytes: Some(25), max_batch_bytes: 10 }]);
        assert!(findings(check, &h).is_empty());
        let mut too_far = trimmed(3);
        too_far.retention = h.retention.clone();
        let found = findings(check, &too_far);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("offset 2") && found[0].contains("retention.bytes=25"), "{found:?}");
    }
}

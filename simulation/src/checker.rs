//! The history of a run and the checker that judges it: what the client was told
//! (acknowledgements, failures) against what it read back at the end. Pure functions over
//! plain data, so a checker rule can be unit-tested with a hand-written history.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use flotilla_types::PartitionId;

/// Most violation messages kept in a report; the count of all of them is kept separately.
const VIOLATIONS_SHOWN_MAX: usize = 40;

/// One acknowledged record: the server said `value` is at `offset` of `partition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Partition the record landed in.
    pub partition: PartitionId,
    /// Offset the server acknowledged.
    pub offset: u64,
    /// The record's value (unique per produced record).
    pub value: String,
}

/// Everything the workload observed.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Partitions of the topic.
    pub partitions: u32,
    /// Every value the workload tried to produce.
    pub attempted: BTreeSet<String>,
    /// Acknowledgements, in the order the client received them.
    pub acks: Vec<Ack>,
    /// Values sent in a produce attempt that failed or timed out: they may or may not be in
    /// the log, possibly more than once (produce without idempotence is at-least-once).
    pub ambiguous: BTreeSet<String>,
    /// The final read of each partition from offset 0: (offset, value) in the order read.
    pub reads: BTreeMap<PartitionId, Vec<(u64, String)>>,
    /// Problems the workload itself found: a final read that never reached the end, or
    /// produce calls that kept failing after every fault was healed.
    pub liveness_failures: Vec<String>,
}

/// The checker's verdict.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Records acknowledged.
    pub acknowledged: usize,
    /// Records read back by the final read.
    pub read: usize,
    /// Values whose produce attempt failed or timed out.
    pub ambiguous: usize,
    /// Of those, how many are in the log anyway.
    pub ambiguous_present: usize,
    /// Values in the log more than once, all from failed or timed-out attempts (allowed).
    pub ambiguous_duplicates: usize,
    /// Every broken rule, counted.
    pub violation_count: usize,
    /// Broken rules by kind ("lost write", "offset conflict", ...).
    pub violation_kinds: BTreeMap<&'static str, usize>,
    /// The first broken rules, one sentence each.
    pub violations: Vec<String>,
}

impl Report {
    /// Whether every rule held.
    pub fn ok(&self) -> bool {
        self.violation_count == 0
    }

    /// How many violations of `kind` were found.
    pub fn count(&self, kind: &str) -> usize {
        self.violation_kinds.get(kind).copied().unwrap_or(0)
    }

    fn violation(&mut self, kind: &'static str, message: String) {
        self.violation_count += 1;
        *self.violation_kinds.entry(kind).or_default() += 1;
        if self.violations.len() < VIOLATIONS_SHOWN_MAX {
            self.violations.push(message);
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acknowledged, {} read back, {} in failed or timed-out attempts ({} of them present, {} duplicated), {} violations",
            self.acknowledged,
            self.read,
            self.ambiguous,
            self.ambiguous_present,
            self.ambiguous_duplicates,
            self.violation_count
        )?;
        if !self.violation_kinds.is_empty() {
            let kinds: Vec<String> = self.violation_kinds.iter().map(|(kind, n)| format!("{n} {kind}")).collect();
            write!(f, " ({})", kinds.join(", "))?;
        }
        for violation in &self.violations {
            write!(f, "\n  VIOLATION: {violation}")?;
        }
        if self.violation_count > self.violations.len() {
            write!(f, "\n  ... and {} more", self.violation_count - self.violations.len())?;
        }
        Ok(())
    }
}

/// Judges a history:
/// - every acknowledged record is read back at exactly its acknowledged offset (no lost write);
/// - no (partition, offset) holds two different values across acknowledgements and reads;
/// - each partition reads back densely from offset 0;
/// - acknowledged offsets of a partition increase in acknowledgement order (one sequential
///   producer: a record acknowledged later was sent after the earlier one was committed);
/// - every value read was produced (no phantom record);
/// - a value appears at most once unless an attempt that carried it failed or timed out;
/// - the workload's liveness checks held.
pub fn check(history: &History) -> Report {
    let mut report = Report {
        acknowledged: history.acks.len(),
        read: history.reads.values().map(Vec::len).sum(),
        ambiguous: history.ambiguous.len(),
        ..Report::default()
    };

    let mut acked: BTreeMap<(PartitionId, u64), &str> = BTreeMap::new();
    let mut last_acked: BTreeMap<PartitionId, u64> = BTreeMap::new();
    for ack in &history.acks {
        let key = (ack.partition, ack.offset);
        match acked.get(&key) {
            Some(other) if *other != ack.value => report.violation(
                "offset conflict",
                format!(
                    "partition {} offset {} was acknowledged for two values: {other:?} and {:?}",
                    ack.partition, ack.offset, ack.value
                ),
            ),
            _ => {
                acked.insert(key, &ack.value);
            }
        }
        if let Some(previous) = last_acked.insert(ack.partition, ack.offset)
            && ack.offset <= previous
        {
            report.violation(
                "producer order",
                format!(
                    "partition {}: {:?} was acknowledged at offset {} after an earlier record at offset {previous}",
                    ack.partition, ack.value, ack.offset
                ),
            );
        }
    }

    let mut read: BTreeMap<(PartitionId, u64), &str> = BTreeMap::new();
    let mut copies: BTreeMap<&str, Vec<(PartitionId, u64)>> = BTreeMap::new();
    for partition in 0..history.partitions {
        let records = history.reads.get(&partition).map(Vec::as_slice).unwrap_or_default();
        if let Some((position, (offset, _))) =
            records.iter().enumerate().find(|(position, (offset, _))| *offset != *position as u64)
        {
            report.violation(
                "gap",
                format!(
                    "partition {partition}: the final read is not dense from 0: record {position} has offset {offset}"
                ),
            );
        }
        for (offset, value) in records {
            let key = (partition, *offset);
            if let Some(other) = read.insert(key, value) {
                // Reading one offset twice is already a gap in density; two values is worse.
                if other != value {
                    report.violation(
                        "offset conflict",
                        format!("partition {partition} offset {offset} was read as {other:?} and as {value:?}"),
                    );
                }
                continue;
            }
            copies.entry(value).or_default().push(key);
            if !history.attempted.contains(value) {
                report.violation(
                    "phantom",
                    format!("partition {partition} offset {offset} holds {value:?}, which nobody produced"),
                );
            }
        }
    }
    for partition in history.reads.keys().filter(|p| **p >= history.partitions) {
        report.violation("phantom", format!("partition {partition} does not exist but was read"));
    }

    for ack in &history.acks {
        match read.get(&(ack.partition, ack.offset)) {
            None => report.violation(
                "lost write",
                format!(
                    "lost write: {:?} was acknowledged at partition {} offset {} but the final read ends at offset {}",
                    ack.value,
                    ack.partition,
                    ack.offset,
                    history.reads.get(&ack.partition).map_or(0, Vec::len)
                ),
            ),
            Some(value) if *value != ack.value => report.violation(
                "offset conflict",
                format!(
                    "partition {} offset {} was acknowledged for {:?} but holds {value:?}",
                    ack.partition, ack.offset, ack.value
                ),
            ),
            Some(_) => {}
        }
    }

    for (value, places) in &copies {
        let ambiguous = history.ambiguous.contains(*value);
        if ambiguous {
            report.ambiguous_present += 1;
        }
        if places.len() > 1 {
            if ambiguous {
                report.ambiguous_duplicates += 1;
            } else {
                report.violation("duplicate", format!(
                    "{value:?} appears {} times (partition, offset): {places:?}, though every attempt that carried it was acknowledged",
                    places.len()
                ));
            }
        }
    }

    for failure in &history.liveness_failures {
        report.violation("liveness", format!("liveness: {failure}"));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(partition: PartitionId, offset: u64, value: &str) -> Ack {
        Ack { partition, offset, value: value.to_string() }
    }

    fn history(acks: Vec<Ack>, reads: Vec<(PartitionId, Vec<&str>)>) -> History {
        let mut history = History { partitions: 2, ..History::default() };
        for ack in &acks {
            history.attempted.insert(ack.value.clone());
        }
        history.acks = acks;
        for (partition, values) in reads {
            let records = values.iter().enumerate().map(|(offset, v)| (offset as u64, v.to_string())).collect();
            history.reads.insert(partition, records);
        }
        history
    }

    #[test]
    fn a_clean_history_passes() {
        let h =
            history(vec![ack(0, 0, "a"), ack(0, 1, "b"), ack(1, 0, "c")], vec![(0, vec!["a", "b"]), (1, vec!["c"])]);
        let report = check(&h);
        assert!(report.ok(), "{report}");
        assert_eq!(report.acknowledged, 3);
        assert_eq!(report.read, 3);
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        let h = history(vec![ack(0, 0, "a"), ack(0, 1, "b")], vec![(0, vec!["a"]), (1, vec![])]);
        let report = check(&h);
        assert_eq!(report.violation_count, 1, "{report}");
        assert_eq!(report.count("lost write"), 1, "{report}");
    }

    #[test]
    fn an_overwritten_offset_is_caught() {
        let mut h = history(vec![ack(0, 0, "a")], vec![(0, vec!["x"]), (1, vec![])]);
        h.attempted.insert("x".into());
        h.ambiguous.insert("x".into());
        let report = check(&h);
        assert_eq!(report.violation_count, 1, "{report}");
        assert_eq!(report.count("offset conflict"), 1, "{report}");
    }

    #[test]
    fn a_gap_a_phantom_and_a_reordered_ack_are_caught() {
        let mut h = history(vec![ack(0, 1, "b"), ack(0, 0, "a")], vec![(0, vec!["a", "b"]), (1, vec![])]);
        h.reads.insert(1, vec![(1, "ghost".to_string())]);
        let report = check(&h);
        assert_eq!(report.violation_count, 3, "{report}");
        for kind in ["producer order", "gap", "phantom"] {
            assert_eq!(report.count(kind), 1, "{kind}: {report}");
        }
    }

    #[test]
    fn duplicates_are_allowed_only_for_failed_attempts() {
        let mut h = history(vec![ack(0, 0, "a")], vec![(0, vec!["a", "b", "b"]), (1, vec!["a"])]);
        h.attempted.insert("b".into());
        h.ambiguous.insert("b".into());
        let report = check(&h);
        assert_eq!(report.ambiguous_duplicates, 1);
        assert_eq!(report.ambiguous_present, 1);
        assert_eq!(report.violation_count, 1, "{report}");
        assert_eq!(report.count("duplicate"), 1, "{report}");
    }
}

//! The checker: pure functions that judge a [`History`]. One module per invariant, each
//! saying what it prevents; [`check`] runs them all. Pure data in, verdict out, so every
//! rule is unit-tested with hand-written histories and the same code judges simulation runs
//! and real-process chaos runs.

mod duplicates;
mod fetch_order;
mod group_offsets;
mod high_watermark;
mod history;
mod liveness;
mod lost_write;
mod offset_conflict;
mod phantom;
mod producer_order;
mod read_after_ack;
mod replica_divergence;
mod topic_existence;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use history::{
    Ack, CommitOutcome, DrainStart, Fetch, GroupCommit, GroupOffsetRead, GroupPoll, GroupStint, History, PartitionKey,
    ReplicaDigest, RetentionSetting, TrimAttempt,
};

/// Most violation messages kept in a report; the count of all of them is kept separately.
const VIOLATIONS_SHOWN_MAX: usize = 40;

/// One invariant: its name in reports and the function that checks it.
struct Invariant {
    name: &'static str,
    check: fn(&History, &mut Findings),
}

/// Every invariant, in report order.
const INVARIANTS: &[Invariant] = &[
    Invariant { name: lost_write::NAME, check: lost_write::check },
    Invariant { name: offset_conflict::NAME, check: offset_conflict::check },
    Invariant { name: duplicates::NAME, check: duplicates::check },
    Invariant { name: phantom::NAME, check: phantom::check },
    Invariant { name: producer_order::NAME, check: producer_order::check },
    Invariant { name: fetch_order::NAME, check: fetch_order::check },
    Invariant { name: high_watermark::NAME, check: high_watermark::check },
    Invariant { name: read_after_ack::NAME, check: read_after_ack::check },
    Invariant { name: replica_divergence::NAME, check: replica_divergence::check },
    Invariant { name: topic_existence::NAME, check: topic_existence::check },
    Invariant { name: group_offsets::NAME, check: group_offsets::check },
    Invariant { name: liveness::NAME, check: liveness::check },
];

/// The names of every invariant the checker judges.
pub fn invariant_names() -> impl Iterator<Item = &'static str> {
    INVARIANTS.iter().map(|invariant| invariant.name)
}

/// What one invariant found: violation sentences (the first few kept) and a count.
#[derive(Debug, Default)]
pub struct Findings {
    count: usize,
    shown: Vec<String>,
}

impl Findings {
    /// Records one violation.
    pub fn violation(&mut self, message: String) {
        self.count += 1;
        if self.shown.len() < VIOLATIONS_SHOWN_MAX {
            self.shown.push(message);
        }
    }
}

/// The checker's verdict.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// Records acknowledged.
    pub acknowledged: usize,
    /// Records read back by the final drain.
    pub read: usize,
    /// Records seen by tailing consumers.
    pub consumed: usize,
    /// Values whose outcome was unknown to the producer.
    pub ambiguous: usize,
    /// Of those, how many are in the log anyway.
    pub ambiguous_present: usize,
    /// Values in the log more than once, all from non-idempotent attempts with an unknown
    /// outcome (allowed: produce without idempotence is at-least-once).
    pub ambiguous_duplicates: usize,
    /// Records delivered to consumer-group members.
    #[serde(default)]
    pub group_delivered: usize,
    /// Commits of group offsets acknowledged, and attempted.
    #[serde(default)]
    pub group_commits_acknowledged: usize,
    #[serde(default)]
    pub group_commits: usize,
    /// Reads of committed group offsets.
    #[serde(default)]
    pub group_reads: usize,
    /// Violations per invariant; every invariant is listed, so a zero is a checked zero.
    pub violations_by_invariant: BTreeMap<String, usize>,
    /// The first violations, one sentence each, prefixed with the invariant's name.
    pub violations: Vec<String>,
}

impl Report {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.violation_count() == 0
    }

    /// Violations of all invariants.
    pub fn violation_count(&self) -> usize {
        self.violations_by_invariant.values().sum()
    }

    /// Violations of the invariant `name`.
    pub fn count(&self, name: &str) -> usize {
        self.violations_by_invariant.get(name).copied().unwrap_or(0)
    }

    /// Whether only the liveness invariant failed (the run was safe but did not recover).
    pub fn only_liveness_failed(&self) -> bool {
        !self.ok() && self.violation_count() == self.count(liveness::NAME)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} acknowledged, {} read back, {} consumed, {} with unknown outcome ({} of them present, {} duplicated), {} violations",
            self.acknowledged,
            self.read,
            self.consumed,
            self.ambiguous,
            self.ambiguous_present,
            self.ambiguous_duplicates,
            self.violation_count()
        )?;
        let broken: Vec<String> = self
            .violations_by_invariant
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{n} {name}"))
            .collect();
        if !broken.is_empty() {
            write!(f, " ({})", broken.join(", "))?;
        }
        if self.group_commits > 0 || self.group_reads > 0 {
            write!(
                f,
                "; groups: {} delivered, {} of {} commits acknowledged, {} offset reads",
                self.group_delivered, self.group_commits_acknowledged, self.group_commits, self.group_reads
            )?;
        }
        for violation in &self.violations {
            write!(f, "\n  VIOLATION: {violation}")?;
        }
        let shown = self.violations.len();
        if self.violation_count() > shown {
            write!(f, "\n  ... and {} more", self.violation_count() - shown)?;
        }
        Ok(())
    }
}

/// Judges `history` against every invariant.
pub fn check(history: &History) -> Report {
    let mut report = Report {
        acknowledged: history.acks.len(),
        read: history.reads.values().map(Vec::len).sum(),
        consumed: history.fetches.iter().map(|fetch| fetch.records.len()).sum(),
        ambiguous: history.ambiguous.len(),
        ..Report::default()
    };
    let (present, duplicated) = duplicates::ambiguous_figures(history);
    report.ambiguous_present = present;
    report.ambiguous_duplicates = duplicated;
    (report.group_delivered, report.group_commits_acknowledged, report.group_commits, report.group_reads) =
        group_offsets::figures(history);
    for invariant in INVARIANTS {
        let mut findings = Findings::default();
        (invariant.check)(history, &mut findings);
        report.violations_by_invariant.insert(invariant.name.to_string(), findings.count);
        let room = VIOLATIONS_SHOWN_MAX.saturating_sub(report.violations.len());
        report.violations.extend(findings.shown.into_iter().take(room).map(|m| format!("{}: {m}", invariant.name)));
    }
    report
}

/// Where each value was read in the final drain: value → every (partition, offset) holding it.
fn placements(history: &History) -> BTreeMap<&str, Vec<(&PartitionKey, u64)>> {
    let mut places: BTreeMap<&str, Vec<(&PartitionKey, u64)>> = BTreeMap::new();
    for (partition, records) in &history.reads {
        let mut seen = std::collections::BTreeSet::new();
        for (offset, value) in records {
            // An offset read twice is a density problem (fetch_order), not a duplicate.
            if seen.insert(*offset) {
                places.entry(value.as_str()).or_default().push((partition, *offset));
            }
        }
    }
    places
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Hand-written histories for the invariants' unit tests.

    use super::*;

    /// Partition `p` of topic "t".
    pub fn p(partition: u32) -> PartitionKey {
        PartitionKey::new("t", partition)
    }

    /// An acknowledgement by producer 0.
    pub fn ack(partition: u32, offset: u64, value: &str) -> Ack {
        Ack {
            partition: p(partition),
            offset,
            value: value.to_string(),
            producer: 0,
            bytes: 10,
            first_sent_ms: 0,
            acked_ms: 0,
        }
    }

    /// A history of two partitions of topic "t" with these acks and final reads (dense from
    /// 0); every acknowledged or read value counts as attempted.
    pub fn history(acks: Vec<Ack>, reads: Vec<(u32, Vec<&str>)>) -> History {
        let mut history = History::default();
        history.partitions.insert(p(0));
        history.partitions.insert(p(1));
        history.created_topics.insert("t".into());
        for ack in &acks {
            history.attempted.insert(ack.value.clone());
        }
        history.acks = acks;
        for (partition, values) in reads {
            let records = values.iter().enumerate().map(|(offset, v)| (offset as u64, v.to_string())).collect();
            history.reads.insert(p(partition), records);
        }
        history
    }

    /// Runs one invariant.
    pub fn findings(check: fn(&History, &mut Findings), history: &History) -> Vec<String> {
        let mut findings = Findings::default();
        check(history, &mut findings);
        assert_eq!(findings.count, findings.shown.len());
        findings.shown
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    #[test]
    fn a_clean_history_passes_every_invariant() {
        let h =
            history(vec![ack(0, 0, "a"), ack(0, 1, "b"), ack(1, 0, "c")], vec![(0, vec!["a", "b"]), (1, vec!["c"])]);
        let report = check(&h);
        assert!(report.ok(), "{report}");
        assert_eq!(report.acknowledged, 3);
        assert_eq!(report.read, 3);
        assert_eq!(report.violations_by_invariant.len(), INVARIANTS.len(), "every invariant is reported");
    }

    #[test]
    fn violations_are_counted_per_invariant_and_named() {
        let h = history(vec![ack(0, 0, "a"), ack(0, 1, "b")], vec![(0, vec!["a"]), (1, vec![])]);
        let report = check(&h);
        assert_eq!(report.count(lost_write::NAME), 1, "{report}");
        assert_eq!(report.violation_count(), 1, "{report}");
        assert!(report.violations[0].starts_with("lost write: "), "{report}");
        assert!(!report.only_liveness_failed());
    }
}

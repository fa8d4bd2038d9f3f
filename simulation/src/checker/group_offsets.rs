//! Committed group offsets (DESIGN.md §2, promise 6): per group and partition, what the
//! group's members were delivered, what they committed and what the coordinator reported as
//! committed must tell one consistent at-least-once story.
//!
//! - Reads never go backwards in real time: a read that started after another ended returns
//!   at least as much (Kafka KIP-320's offset reset after a coordinator failover; a deposed
//!   coordinator answering from a stale catalogue).
//! - An acknowledged commit is never lost: every read that started after its answer returns
//!   at least its offset (a commit acknowledged before the metadata group made it durable).
//! - Committed offsets name delivered positions: each is 0 or one past a record some member
//!   was delivered, and none lies beyond the partition's final log end (a commit of a position
//!   nobody reached, or an unfenced commit of garbage).
//! - Nothing is skipped: every offset below the highest committed offset was delivered to
//!   some member (a new owner starting past the old owner's commit, a consumer that jumps).
//! - Every delivered record is the final log's record at that offset (nothing phantom).
//! - A member starts a partition at a position the group committed (or 0 when nothing was),
//!   never below a commit acknowledged before it read its start, and within one ownership
//!   stint receives a gap-free increasing run from there (the hand-over contract: a stale
//!   start position is a rewind past acknowledged progress, any other start a skip).
//!
//! Not checked: that two members never hold one partition at once. The protocol does not
//! promise it — a member cut off from the coordinator keeps consuming until it learns it was
//! evicted, while the partition's new owner already does — it promises only that the stale
//! member's commits are fenced, which the rules above observe.

use std::collections::{BTreeMap, BTreeSet};

use super::{CommitOutcome, Findings, GroupCommit, GroupOffsetRead, GroupPoll, GroupStint, History, PartitionKey};

pub const NAME: &str = "group offsets";

pub fn check(history: &History, findings: &mut Findings) {
    for (group, topics) in &history.groups {
        let mut partitions: BTreeSet<&PartitionKey> =
            history.partitions.iter().filter(|p| topics.contains(&p.topic)).collect();
        partitions.extend(history.group_polls.iter().filter(|p| &p.group == group).map(|p| &p.partition));
        partitions.extend(history.group_stints.iter().filter(|s| &s.group == group).map(|s| &s.partition));
        for partition in partitions {
            PartitionView::new(history, group, partition).check(findings);
        }
    }
}

/// (records delivered to group members, commits acknowledged, commits attempted, offset reads).
pub fn figures(history: &History) -> (usize, usize, usize, usize) {
    let delivered = history.group_polls.iter().map(|p| p.records.len()).sum();
    let acknowledged = history.group_commits.iter().filter(|c| c.outcome == CommitOutcome::Acknowledged).count();
    (delivered, acknowledged, history.group_commits.len(), history.group_reads.len())
}

/// Everything the history says about one partition of one group.
struct PartitionView<'a> {
    group: &'a str,
    partition: &'a PartitionKey,
    /// The final drain of the partition, if it was drained.
    drain: Option<&'a [(u64, String)]>,
    /// Each offset delivered to some member: the value and the member it first went to.
    delivered: BTreeMap<u64, (&'a str, &'a str)>,
    polls: Vec<&'a GroupPoll>,
    stints: Vec<&'a GroupStint>,
    /// Every commit attempt naming the partition, with the offset it named.
    commits: Vec<(&'a GroupCommit, u64)>,
    /// Acknowledged commits by answer, with the largest offset acknowledged up to each.
    acknowledged: Vec<(u64, u64, &'a GroupCommit)>,
    /// Reads of the group's offsets, with what each said of the partition.
    reads: Vec<(&'a GroupOffsetRead, Option<u64>)>,
}

impl<'a> PartitionView<'a> {
    fn new(history: &'a History, group: &'a str, partition: &'a PartitionKey) -> Self {
        let polls: Vec<&GroupPoll> =
            history.group_polls.iter().filter(|p| p.group == group && &p.partition == partition).collect();
        let mut delivered = BTreeMap::new();
        for poll in &polls {
            for (offset, value) in &poll.records {
                delivered.entry(*offset).or_insert((value.as_str(), poll.member.as_str()));
            }
        }
        let commits: Vec<(&GroupCommit, u64)> = history
            .group_commits
            .iter()
            .filter(|c| c.group == group)
            .filter_map(|c| c.offsets.get(partition).map(|offset| (c, *offset)))
            .collect();
        let mut by_answer: Vec<(&GroupCommit, u64)> =
            commits.iter().copied().filter(|(c, _)| c.outcome == CommitOutcome::Acknowledged).collect();
        by_answer.sort_by_key(|(c, _)| c.answered);
        let mut acknowledged = Vec::with_capacity(by_answer.len());
        let mut highest: Option<(u64, &GroupCommit)> = None;
        for (commit, offset) in by_answer {
            if highest.is_none_or(|(h, _)| offset > h) {
                highest = Some((offset, commit));
            }
            let (h, which) = highest.expect("set above");
            acknowledged.push((commit.answered, h, which));
        }
        PartitionView {
            group,
            partition,
            drain: history.reads.get(partition).map(Vec::as_slice),
            delivered,
            polls,
            stints: history.group_stints.iter().filter(|s| s.group == group && &s.partition == partition).collect(),
            commits,
            acknowledged,
            reads: history
                .group_reads
                .iter()
                .filter(|r| r.group == group)
                .map(|r| (r, r.offsets.get(partition).copied()))
                .collect(),
        }
    }

    /// The highest offset acknowledged by a commit answered before tick `before`, and that
    /// commit.
    fn acknowledged_before(&self, before: u64) -> Option<(u64, &'a GroupCommit)> {
        let count = self.acknowledged.partition_point(|(answered, _, _)| *answered < before);
        count.checked_sub(1).map(|i| (self.acknowledged[i].1, self.acknowledged[i].2))
    }

    fn check(&self, findings: &mut Findings) {
        self.reads_never_go_back(findings);
        self.acknowledged_commits_are_kept(findings);
        self.commits_name_delivered_positions(findings);
        self.nothing_skipped(findings);
        self.deliveries_match_the_log(findings);
        self.stints_start_at_commits_and_run_on(findings);
    }

    fn reads_never_go_back(&self, findings: &mut Findings) {
        let mut by_end: Vec<&(&GroupOffsetRead, Option<u64>)> = self.reads.iter().collect();
        by_end.sort_by_key(|(r, _)| r.ended);
        // The largest value returned by any read ended so far, and that read.
        let mut highest: Vec<(Option<u64>, &GroupOffsetRead)> = Vec::with_capacity(by_end.len());
        for (read, value) in &by_end {
            match highest.last() {
                Some((h, _)) if *h >= *value => highest.push(highest[highest.len() - 1]),
                _ => highest.push((*value, read)),
            }
        }
        for (read, value) in &self.reads {
            let ended_before = by_end.partition_point(|(r, _)| r.ended < read.started);
            if let Some((Some(before), earlier)) = ended_before.checked_sub(1).map(|i| highest[i])
                && value.is_none_or(|v| v < before)
            {
                findings.violation(format!(
                    "group {} {}: a read of the committed offsets started at {:.3}s returned {} after a read that ended at {:.3}s had returned {before}",
                    self.group,
                    self.partition,
                    secs(read.started_ms),
                    show(*value),
                    secs(earlier.ended_ms)
                ));
            }
        }
    }

    fn acknowledged_commits_are_kept(&self, findings: &mut Findings) {
        for (read, value) in &self.reads {
            if let Some((acknowledged, commit)) = self.acknowledged_before(read.started)
                && value.is_none_or(|v| v < acknowledged)
            {
                findings.violation(format!(
                    "group {} {}: member {}'s commit of {acknowledged} was acknowledged, yet a read that started after it (at {:.3}s) returned {}",
                    self.group,
                    self.partition,
                    commit.member,
                    secs(read.started_ms),
                    show(*value)
                ));
            }
        }
    }

    fn commits_name_delivered_positions(&self, findings: &mut Findings) {
        let log_end = self.drain.map(<[_]>::len);
        let committed = self.commits.iter().map(|(c, offset)| (*offset, format!("member {}'s commit", c.member)));
        let read = self.reads.iter().filter_map(|(r, value)| {
            value.map(|v| (v, format!("the read of committed offsets at {:.3}s", secs(r.started_ms))))
        });
        for (offset, source) in committed.chain(read) {
            if offset > 0 && !self.delivered.contains_key(&(offset - 1)) {
                findings.violation(format!(
                    "group {} {}: {source} names position {offset}, but no member was delivered offset {}",
                    self.group,
                    self.partition,
                    offset - 1
                ));
            }
        }
        let Some(log_end) = log_end else { return };
        let acknowledged = self
            .commits
            .iter()
            .filter(|(c, _)| c.outcome == CommitOutcome::Acknowledged)
            .map(|(c, offset)| (*offset, format!("member {}'s acknowledged commit", c.member)));
        let read = self.reads.iter().filter_map(|(r, value)| {
            value.map(|v| (v, format!("the read of committed offsets at {:.3}s", secs(r.started_ms))))
        });
        for (offset, source) in acknowledged.chain(read) {
            if offset > log_end as u64 {
                findings.violation(format!(
                    "group {} {}: {source} says {offset}, beyond the final log end {log_end}",
                    self.group, self.partition
                ));
            }
        }
    }

    fn nothing_skipped(&self, findings: &mut Findings) {
        let acknowledged = self.acknowledged.last().map(|(_, highest, _)| *highest);
        let read = self.reads.iter().filter_map(|(_, value)| *value).max();
        let Some(committed) = acknowledged.max(read) else { return };
        let Some(first) = (0..committed).find(|o| !self.delivered.contains_key(o)) else { return };
        let last = (first..committed).take_while(|o| !self.delivered.contains_key(o)).last().unwrap_or(first);
        findings.violation(format!(
            "group {} {}: offsets {first}..={last} lie below the committed offset {committed} but no member was delivered them",
            self.group, self.partition
        ));
    }

    fn deliveries_match_the_log(&self, findings: &mut Findings) {
        let Some(drain) = self.drain else { return };
        for poll in &self.polls {
            for (offset, value) in &poll.records {
                let logged = drain
                    .get(*offset as usize)
                    .filter(|(o, _)| o == offset)
                    .or_else(|| drain.iter().find(|(o, _)| o == offset));
                match logged {
                    Some((_, logged)) if logged == value => {}
                    Some((_, logged)) => findings.violation(format!(
                        "group {} {}: member {} was delivered {value:?} at offset {offset}, where the log holds {logged:?}",
                        self.group, self.partition, poll.member
                    )),
                    None => findings.violation(format!(
                        "group {} {}: member {} was delivered {value:?} at offset {offset}, beyond the final log end {}",
                        self.group,
                        self.partition,
                        poll.member,
                        drain.len()
                    )),
                }
            }
        }
    }

    fn stints_start_at_commits_and_run_on(&self, findings: &mut Findings) {
        let named: BTreeSet<u64> = self.commits.iter().map(|(_, offset)| *offset).collect();
        let mut polls: BTreeMap<u64, Vec<&GroupPoll>> = BTreeMap::new();
        for poll in &self.polls {
            polls.entry(poll.stint).or_default().push(poll);
        }
        for stint in &self.stints {
            let (group, partition, member, start) = (self.group, self.partition, &stint.member, stint.start);
            if start > 0 && !named.contains(&start) {
                findings.violation(format!(
                    "group {group} {partition}: member {member} started at offset {start}, which no commit of the group named"
                ));
            }
            if let Some((acknowledged, commit)) = self.acknowledged_before(stint.read_after)
                && start < acknowledged
            {
                findings.violation(format!(
                    "group {group} {partition}: member {member} started at offset {start}, below member {}'s commit of {acknowledged} acknowledged before it read its start",
                    commit.member
                ));
            }
            let mut next = start;
            let mut stint_polls = polls.remove(&stint.id).unwrap_or_default();
            stint_polls.sort_by_key(|p| p.seq);
            'polls: for poll in stint_polls {
                for (offset, _) in &poll.records {
                    if *offset != next {
                        findings.violation(format!(
                            "group {group} {partition}: member {member} was delivered offset {offset} where {next} came next in its stint from {start}"
                        ));
                        break 'polls;
                    }
                    next += 1;
                }
            }
        }
        for (stint, polls) in polls {
            findings.violation(format!(
                "group {} {}: member {} was delivered records in stint {stint}, which the history never started",
                self.group, self.partition, polls[0].member
            ));
        }
    }
}

fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn show(value: Option<u64>) -> String {
    value.map_or("nothing committed".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

    const G: &str = "g";

    /// A group "g" on topic "t" whose partition 0 holds "a" to "f" (offsets 0 to 5).
    fn base() -> History {
        let mut h = history(vec![], vec![(0, vec!["a", "b", "c", "d", "e", "f"]), (1, vec![])]);
        h.groups.insert(G.into(), ["t".to_string()].into());
        h
    }

    fn stint(h: &mut History, member: &str, start: u64, read_after: u64) -> u64 {
        let id = h.group_stints.len() as u64;
        h.group_stints.push(GroupStint {
            id,
            group: G.into(),
            member: member.into(),
            partition: p(0),
            start,
            read_after,
        });
        id
    }

    /// Member `member` is delivered `offsets` of partition 0, with the drain's values.
    fn poll(h: &mut History, member: &str, stint: u64, offsets: std::ops::Range<u64>, seq: u64) {
        let values = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let records = offsets.map(|o| (o, values[o as usize].to_string())).collect();
        h.group_polls.push(GroupPoll { group: G.into(), member: member.into(), stint, partition: p(0), records, seq });
    }

    fn commit(h: &mut History, member: &str, offset: u64, sent: u64, answered: u64, acknowledged: bool) {
        let outcome = if acknowledged {
            CommitOutcome::Acknowledged
        } else {
            CommitOutcome::Failed { code: None, error: "timeout".into() }
        };
        h.group_commits.push(GroupCommit {
            group: G.into(),
            member: member.into(),
            offsets: [(p(0), offset)].into(),
            sent,
            answered,
            outcome,
        });
    }

    fn read(h: &mut History, started: u64, ended: u64, offset: Option<u64>) {
        h.group_reads.push(GroupOffsetRead {
            group: G.into(),
            started,
            ended,
            started_ms: started * 100,
            ended_ms: ended * 100,
            offsets: offset.map(|o| (p(0), o)).into_iter().collect(),
        });
    }

    /// Member A reads 0..3 and commits 3; its partition goes to B, which starts at 3, reads to
    /// the end and commits 6; reads of the offsets follow along.
    fn clean() -> History {
        let mut h = base();
        read(&mut h, 1, 2, None);
        let a = stint(&mut h, "a", 0, 1);
        poll(&mut h, "a", a, 0..2, 3);
        poll(&mut h, "a", a, 2..3, 4);
        commit(&mut h, "a", 3, 5, 6, true);
        read(&mut h, 7, 8, Some(3));
        let b = stint(&mut h, "b", 3, 9);
        poll(&mut h, "b", b, 3..6, 10);
        commit(&mut h, "b", 6, 11, 13, true);
        read(&mut h, 12, 14, Some(3));
        read(&mut h, 15, 16, Some(6));
        h
    }

    #[test]
    fn a_clean_hand_over_passes() {
        let h = clean();
        assert!(findings(check, &h).is_empty(), "{:?}", findings(check, &h));
        assert_eq!(figures(&h), (6, 2, 2, 4));
    }

    #[test]
    fn a_read_going_back_in_real_time_is_caught_but_overlapping_reads_may_differ() {
        let mut h = clean();
        // Overlaps the read that returned 6 (15 to 16) and B's commit (11 to 13): may see 3.
        read(&mut h, 12, 17, Some(3));
        assert!(findings(check, &h).is_empty(), "{:?}", findings(check, &h));
        read(&mut h, 20, 21, Some(3));
        read(&mut h, 22, 23, None);
        let found = findings(check, &h);
        assert!(
            found.iter().any(|f| f.contains("returned 3 after a read that ended at 1.600s had returned 6")),
            "{found:?}"
        );
        assert!(found.iter().any(|f| f.contains("returned nothing committed after a read")), "{found:?}");
    }

    #[test]
    fn an_acknowledged_commit_missing_from_a_later_read_is_lost() {
        let mut h = base();
        let a = stint(&mut h, "a", 0, 0);
        poll(&mut h, "a", a, 0..4, 1);
        commit(&mut h, "a", 4, 2, 5, true);
        // Started before the acknowledgement: may miss it.
        read(&mut h, 4, 6, None);
        assert!(findings(check, &h).is_empty(), "{:?}", findings(check, &h));
        read(&mut h, 7, 8, Some(2));
        let found = findings(check, &h);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("commit of 4 was acknowledged, yet a read that started after it"), "{found:?}");
    }

    #[test]
    fn a_commit_of_a_position_nobody_reached_or_beyond_the_log_is_caught() {
        let mut h = base();
        let a = stint(&mut h, "a", 0, 0);
        poll(&mut h, "a", a, 0..2, 1);
        // Position 4 names offset 3, which nobody was delivered (and 2 was skipped).
        commit(&mut h, "a", 4, 2, 3, false);
        read(&mut h, 4, 5, Some(7));
        let found = findings(check, &h);
        assert!(
            found.iter().any(|f| f.contains("commit names position 4, but no member was delivered offset 3")),
            "{found:?}"
        );
        assert!(found.iter().any(|f| f.contains("says 7, beyond the final log end 6")), "{found:?}");
    }

    #[test]
    fn offsets_below_the_committed_offset_that_nobody_was_delivered_are_skipped() {
        let mut h = base();
        let a = stint(&mut h, "a", 0, 0);
        poll(&mut h, "a", a, 0..1, 1);
        let b = stint(&mut h, "b", 3, 2);
        poll(&mut h, "b", b, 3..5, 3);
        commit(&mut h, "b", 5, 4, 5, true);
        let found = findings(check, &h);
        assert!(found.iter().any(|f| f.contains("offsets 1..=2 lie below the committed offset 5")), "{found:?}");
        assert!(
            found.iter().any(|f| f.contains("started at offset 3, which no commit of the group named")),
            "{found:?}"
        );
    }

    #[test]
    fn a_delivered_record_that_is_not_the_logs_is_phantom() {
        let mut h = base();
        let a = stint(&mut h, "a", 4, 0);
        commit(&mut h, "x", 4, 0, 0, false);
        h.group_polls.push(GroupPoll {
            group: G.into(),
            member: "a".into(),
            stint: a,
            partition: p(0),
            records: vec![(4, "e".into()), (5, "zz".into()), (6, "g".into())],
            seq: 1,
        });
        let found = findings(check, &h);
        assert!(
            found.iter().any(|f| f.contains("delivered \"zz\" at offset 5, where the log holds \"f\"")),
            "{found:?}"
        );
        assert!(found.iter().any(|f| f.contains("at offset 6, beyond the final log end 6")), "{found:?}");
        assert!(!found.iter().any(|f| f.contains("offset 4,")), "the record at 4 is the log's: {found:?}");
    }

    #[test]
    fn a_stint_starting_below_an_acknowledged_commit_or_running_with_gaps_is_caught() {
        let mut h = base();
        let a = stint(&mut h, "a", 0, 0);
        poll(&mut h, "a", a, 0..3, 1);
        commit(&mut h, "a", 3, 2, 3, true);
        // B read its start after the commit of 3 was acknowledged, yet starts at 0.
        let b = stint(&mut h, "b", 0, 4);
        poll(&mut h, "b", b, 0..2, 5);
        // C starts at 3 but is handed 3 then 5.
        let c = stint(&mut h, "c", 3, 4);
        poll(&mut h, "c", c, 3..4, 6);
        poll(&mut h, "c", c, 5..6, 7);
        let found = findings(check, &h);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].contains("member b started at offset 0, below member a's commit of 3"), "{found:?}");
        assert!(found[1].contains("member c was delivered offset 5 where 4 came next"), "{found:?}");
    }

    #[test]
    fn a_start_read_before_the_acknowledgement_may_be_older() {
        let mut h = base();
        let a = stint(&mut h, "a", 0, 0);
        poll(&mut h, "a", a, 0..3, 1);
        commit(&mut h, "a", 3, 2, 5, true);
        // B may have read its start before A's commit was answered: at-least-once redelivery.
        let b = stint(&mut h, "b", 0, 4);
        poll(&mut h, "b", b, 0..3, 6);
        assert!(findings(check, &h).is_empty(), "{:?}", findings(check, &h));
    }
}

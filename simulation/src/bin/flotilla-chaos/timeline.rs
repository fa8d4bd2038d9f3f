//! Which nodes were faulty when, and the longest time without an acknowledgement while the
//! faults left a majority working.
//!
//! A node is *faulty* at an instant unless it belongs to the largest set of nodes that are all
//! running (not killed, not paused), reachable by the workload, and can all talk to each
//! other both ways. So an isolated node is one faulty node, a 2|3 split makes two, a one-way
//! cut between two nodes makes one, and a ring (each node cut from its non-neighbours) makes
//! three of five: no three nodes there can all talk to each other, and Raft without
//! pre-vote may legitimately churn leaders. With at most a minority faulty, a majority can
//! elect a leader, commit, and answer the workload, so the cluster owes it progress.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::netns::Peer;

/// The faults in force from `at` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Time since the run began.
    pub at: Duration,
    /// Nodes not running.
    pub down: BTreeSet<u64>,
    /// Nodes stopped with SIGSTOP.
    pub paused: BTreeSet<u64>,
    /// Cut links: (sending node, destination).
    pub blocked: BTreeSet<(u64, Peer)>,
}

impl Snapshot {
    /// How many of `members` are faulty (see the module comment).
    pub fn faulty(&self, members: &[u64]) -> usize {
        let healthy: Vec<u64> = members
            .iter()
            .copied()
            .filter(|id| {
                !self.down.contains(id) && !self.paused.contains(id) && !self.blocked.contains(&(*id, Peer::Client))
            })
            .collect();
        members.len() - self.largest_clique(&healthy)
    }

    /// Whether at most a minority of `members` is faulty.
    pub fn minority_faulty(&self, members: &[u64]) -> bool {
        self.faulty(members) <= (members.len().saturating_sub(1)) / 2
    }

    /// What is wrong, for a report: "down n1; paused n3; cut n2->n4".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let list = |ids: &BTreeSet<u64>| ids.iter().map(|id| format!("n{id}")).collect::<Vec<_>>().join(",");
        if !self.down.is_empty() {
            parts.push(format!("down {}", list(&self.down)));
        }
        if !self.paused.is_empty() {
            parts.push(format!("paused {}", list(&self.paused)));
        }
        if !self.blocked.is_empty() {
            // A link cut both ways reads "n1-n2"; one way, "n1->n2".
            let mut cuts = Vec::new();
            for (from, to) in &self.blocked {
                match to {
                    Peer::Node(to) if self.blocked.contains(&(*to, Peer::Node(*from))) => {
                        if from < to {
                            cuts.push(format!("n{from}-n{to}"));
                        }
                    }
                    to => cuts.push(format!("n{from}->{to}")),
                }
            }
            parts.push(format!("cut {}", cuts.join(",")));
        }
        if parts.is_empty() { "no faults".into() } else { parts.join("; ") }
    }

    fn connected(&self, a: u64, b: u64) -> bool {
        !self.blocked.contains(&(a, Peer::Node(b))) && !self.blocked.contains(&(b, Peer::Node(a)))
    }

    /// Size of the largest subset of `nodes` whose members are pairwise connected. Brute
    /// force: clusters have a handful of nodes.
    fn largest_clique(&self, nodes: &[u64]) -> usize {
        assert!(nodes.len() <= 16, "the clique search is exponential; {} nodes is too many", nodes.len());
        let mut best = 0;
        for mask in 0u32..(1 << nodes.len()) {
            let size = mask.count_ones() as usize;
            if size <= best {
                continue;
            }
            let chosen: Vec<u64> =
                nodes.iter().enumerate().filter(|(i, _)| mask & (1 << i) != 0).map(|(_, id)| *id).collect();
            let clique = chosen.iter().enumerate().all(|(i, a)| chosen[i + 1..].iter().all(|b| self.connected(*a, *b)));
            if clique {
                best = size;
            }
        }
        best
    }
}

/// The fault state over a run: a snapshot at every change.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    snapshots: Vec<Snapshot>,
}

impl Timeline {
    /// Records the state from `snapshot.at` on, unless nothing changed.
    pub fn record(&mut self, snapshot: Snapshot) -> bool {
        let changed = self.snapshots.last().is_none_or(|last| {
            last.down != snapshot.down || last.paused != snapshot.paused || last.blocked != snapshot.blocked
        });
        if changed {
            self.snapshots.push(snapshot);
        }
        changed
    }

    /// The stretches of `[from, to)` during which at most a minority of each of `groups` was
    /// faulty (say, the whole cluster and one partition's replicas).
    pub fn minority_spans(&self, groups: &[&[u64]], from: Duration, to: Duration) -> Vec<(Duration, Duration)> {
        let mut spans: Vec<(Duration, Duration)> = Vec::new();
        for (i, snapshot) in self.snapshots.iter().enumerate() {
            let start = snapshot.at.max(from);
            let end = self.snapshots.get(i + 1).map_or(to, |next| next.at).min(to);
            if start >= end || !groups.iter().all(|members| snapshot.minority_faulty(members)) {
                continue;
            }
            match spans.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => spans.push((start, end)),
            }
        }
        spans
    }

    /// The fault states in force during `[from, to)`, described, in order.
    pub fn describe_during(&self, from: Duration, to: Duration) -> String {
        let mut states: Vec<String> = Vec::new();
        for (i, snapshot) in self.snapshots.iter().enumerate() {
            let end = self.snapshots.get(i + 1).map_or(Duration::MAX, |next| next.at);
            if end > from && snapshot.at < to {
                let described = snapshot.describe();
                if states.last() != Some(&described) {
                    states.push(described);
                }
            }
        }
        if states.is_empty() { "no faults".into() } else { states.join(", then ") }
    }
}

/// The longest stretch without an acknowledgement, two ways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unavailability {
    /// Longest gap between two acknowledgements (or the window's edges) during the whole of
    /// which at most a minority was faulty; with where it started.
    pub strict: (Duration, Duration),
    /// Longest stretch without an acknowledgement inside a minority-faulty span, counting a
    /// gap that began under a majority fault from the moment the majority was back: this
    /// includes how long the cluster took to recover from, say, every node being killed.
    pub recovery: (Duration, Duration),
}

/// Measures [`Unavailability`] over `[from, to)` given acknowledgement times (any order) and
/// the minority-faulty spans of that window.
pub fn unavailability(
    acks: &[Duration],
    spans: &[(Duration, Duration)],
    from: Duration,
    to: Duration,
) -> Unavailability {
    let mut times: Vec<Duration> = acks.iter().copied().filter(|t| *t >= from && *t < to).collect();
    times.sort_unstable();
    let mut edges = Vec::with_capacity(times.len() + 2);
    edges.push(from);
    edges.extend(times);
    edges.push(to);
    let mut result = Unavailability::default();
    for pair in edges.windows(2) {
        let (gap_start, gap_end) = (pair[0], pair[1]);
        for (span_start, span_end) in spans {
            let start = gap_start.max(*span_start);
            let end = gap_end.min(*span_end);
            if start >= end {
                continue;
            }
            let length = end - start;
            if length > result.recovery.0 {
                result.recovery = (length, start);
            }
            if *span_start <= gap_start && gap_end <= *span_end && length > result.strict.0 {
                result.strict = (length, start);
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(at: u64, down: &[u64], blocked: &[(u64, Peer)]) -> Snapshot {
        Snapshot {
            at: Duration::from_secs(at),
            down: down.iter().copied().collect(),
            paused: BTreeSet::new(),
            blocked: blocked.iter().copied().collect(),
        }
    }

    fn cut_both(a: u64, b: u64) -> [(u64, Peer); 2] {
        [(a, Peer::Node(b)), (b, Peer::Node(a))]
    }

    const FIVE: [u64; 5] = [1, 2, 3, 4, 5];

    #[test]
    fn partitions_count_the_nodes_outside_the_largest_connected_group() {
        assert_eq!(snapshot(0, &[], &[]).faulty(&FIVE), 0);
        assert_eq!(snapshot(0, &[2], &[]).faulty(&FIVE), 1);
        // One-way cut: the two cannot talk, so one of them is out.
        assert_eq!(snapshot(0, &[], &[(1, Peer::Node(2))]).faulty(&FIVE), 1);
        // 2|3 split.
        let mut split = Vec::new();
        for a in [1, 2] {
            for b in [3, 4, 5] {
                split.extend(cut_both(a, b));
            }
        }
        let split = snapshot(0, &[], &split);
        assert_eq!(split.faulty(&FIVE), 2);
        assert!(split.minority_faulty(&FIVE));
        // Ring 1-2-3-4-5-1: no triangle survives.
        let mut ring = Vec::new();
        for (a, b) in [(1, 3), (1, 4), (2, 4), (2, 5), (3, 5)] {
            ring.extend(cut_both(a, b));
        }
        assert_eq!(snapshot(0, &[], &ring).faulty(&FIVE), 3);
        // The workload cannot reach node 4.
        assert_eq!(snapshot(0, &[], &[(4, Peer::Client)]).faulty(&FIVE), 1);
        // A partition's own replicas only.
        assert_eq!(snapshot(0, &[4, 5], &[]).faulty(&[1, 2, 3]), 0);
    }

    #[test]
    fn unavailability_counts_whole_gaps_and_recovery_separately() {
        let mut timeline = Timeline::default();
        timeline.record(snapshot(0, &[], &[]));
        timeline.record(snapshot(10, &[1, 2, 3], &[])); // majority down
        timeline.record(snapshot(20, &[], &[]));
        let spans = timeline.minority_spans(&[&FIVE], Duration::ZERO, Duration::from_secs(40));
        assert_eq!(
            spans,
            vec![(Duration::ZERO, Duration::from_secs(10)), (Duration::from_secs(20), Duration::from_secs(40))]
        );
        let s = Duration::from_secs;
        // Acks every second except: a 3 s gap at 2..5, and nothing from 9 to 26.
        let acks = [s(1), s(2), s(5), s(6), s(7), s(8), s(9), s(26), s(27), s(39)];
        let measured = unavailability(&acks, &spans, Duration::ZERO, s(40));
        // 27..39 is the longest gap wholly inside a minority span.
        assert_eq!(measured.strict, (s(12), s(27)));
        // Recovery from the majority fault: 20..26 is shorter than 27..39, so the same.
        assert_eq!(measured.recovery, (s(12), s(27)));
        let acks = [s(1), s(9), s(35), s(39)];
        let measured = unavailability(&acks, &spans, Duration::ZERO, s(40));
        assert_eq!(measured.strict, (s(8), s(1)));
        assert_eq!(measured.recovery, (s(15), s(20)));
    }
}

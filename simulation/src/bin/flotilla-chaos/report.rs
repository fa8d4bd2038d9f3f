//! The run's summary block: faults by kind, what was acknowledged and read back, every
//! checker invariant with its count, divergent replicas, and availability figures; and the
//! verdict.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_simulation::checker::Report;

use crate::nemesis::{FaultKind, NemesisReport};
use crate::timeline::Unavailability;

/// The checker's names for the four headline anomalies, with the words the summary uses.
const HEADLINE: [(&str, &str); 4] =
    [("lost", "lost write"), ("duplicated", "duplicate"), ("reordered", "producer order"), ("phantom", "phantom read")];
/// The checker's name for a lost acknowledged write.
const LOST_WRITE: &str = "lost write";
/// The checker's name for replica divergence.
const DIVERGENCE: &str = "replica divergence";

/// Everything the summary shows.
#[derive(Debug)]
pub struct Summary {
    /// The seed of the fault schedule.
    pub seed: u64,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// In a power-loss run, the whole-cluster cuts asked for.
    pub power_cuts_wanted: Option<usize>,
    /// The nodes ran without fsync: the run passes only if writes were lost.
    pub expect_lost_writes: bool,
    /// Wall time the faults ran.
    pub fault_time: Duration,
    /// How the nodes were networked.
    pub network: String,
    /// Whether links could be cut.
    pub partitions_enabled: bool,
    /// What the nemesis did.
    pub nemesis: NemesisReport,
    /// Produce attempts that left records unacknowledged.
    pub failed_attempts: usize,
    /// The checker's verdict.
    pub report: Report,
    /// Replica digests compared, and in how many partitions.
    pub digests_compared: (usize, usize),
    /// Cluster-wide unavailability while at most a minority of nodes was faulty.
    pub unavailability: Unavailability,
    /// The fault states during the longest strict window.
    pub unavailability_state: String,
    /// The longest per-partition window (strict), its start and the partition.
    pub partition_unavailability: (Duration, Duration, u32),
    /// Time from the final heal and restart to the first acknowledgement.
    pub recovery: Option<Duration>,
    /// Panics found in node logs (a fail-stop assertion included).
    pub panics: Vec<String>,
    /// Lines logged at ERROR level by the nodes.
    pub error_lines: usize,
    /// The JSONL record and the checker's history.
    pub files: Vec<PathBuf>,
}

impl Summary {
    /// Whether the run found nothing wrong; with sync disabled, whether it found lost writes.
    pub fn passed(&self) -> bool {
        if !self.power_cuts_done() {
            return false;
        }
        if self.expect_lost_writes {
            return self.report.count(LOST_WRITE) > 0;
        }
        self.report.ok()
            && self.nemesis.unexpected_exits.is_empty()
            && self.nemesis.hung_on_stop.is_empty()
            && self.panics.is_empty()
    }

    /// Whether a power-loss run made every whole-cluster cut it was asked for.
    fn power_cuts_done(&self) -> bool {
        self.power_cuts_wanted.is_none_or(|wanted| self.power_cuts(FaultKind::PowerCutAll) >= wanted)
    }

    fn power_cuts(&self, kind: FaultKind) -> usize {
        self.nemesis.faults.get(&kind).copied().unwrap_or(0)
    }

    /// The summary block.
    pub fn render(&self) -> String {
        let secs = |d: Duration| format!("{:.2}s", d.as_secs_f64());
        let mut out = String::new();
        let _ = writeln!(out, "==== flotilla-chaos summary ====");
        let _ = writeln!(
            out,
            "seed {}, {} nodes, {:.0}s of rotating faults, {}",
            self.seed,
            self.nodes,
            self.fault_time.as_secs_f64(),
            self.network
        );
        if !self.partitions_enabled {
            let _ =
                writeln!(out, "WARNING: network partitions were DISABLED (no network namespaces); process faults only");
        }
        let kinds: Vec<String> = self.nemesis.faults.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
        let _ = writeln!(
            out,
            "faults injected: {} ({}); quiet spells: {}",
            self.nemesis.total(),
            kinds.join(", "),
            self.nemesis.quiet
        );
        if let Some(wanted) = self.power_cuts_wanted {
            let whole = self.power_cuts(FaultKind::PowerCutAll);
            let minority = self.power_cuts(FaultKind::PowerCutMinority);
            let mut acks = self.nemesis.acks_before_cuts.clone();
            acks.sort_unstable();
            let _ = writeln!(
                out,
                "power cuts: {whole} of the whole cluster (asked for {wanted}), {minority} of a minority; {} of {} \
                 under load; acks between cuts min {} median {}; {} unsynced bytes dropped",
                self.nemesis.cuts_under_load,
                whole + minority,
                acks.first().copied().unwrap_or(0),
                acks.get(acks.len() / 2).copied().unwrap_or(0),
                self.nemesis.unsynced_bytes_dropped
            );
            if whole < wanted {
                let _ = writeln!(out, "FAILED: only {whole} whole-cluster cuts of {wanted} within the time cap");
            }
        }
        if self.expect_lost_writes {
            let _ = writeln!(
                out,
                "fsync was DISABLED on every node: this run passes only if the checker finds lost writes; it found {}",
                self.report.count(LOST_WRITE)
            );
        }
        let _ = writeln!(
            out,
            "acknowledged records: {} ({} produce attempts left records unacknowledged)",
            self.report.acknowledged, self.failed_attempts
        );
        let _ = writeln!(
            out,
            "read back: {} by the final drain, {} by tailing consumers; {} with unknown outcome ({} present, {} duplicated: allowed)",
            self.report.read,
            self.report.consumed,
            self.report.ambiguous,
            self.report.ambiguous_present,
            self.report.ambiguous_duplicates
        );
        let headline: Vec<String> =
            HEADLINE.iter().map(|(word, name)| format!("{word} {}", self.report.count(name))).collect();
        let _ = writeln!(out, "{}", headline.join(" / "));
        let _ = writeln!(
            out,
            "divergent replicas: {} ({} replica digests compared over {} partitions)",
            self.report.count(DIVERGENCE),
            self.digests_compared.0,
            self.digests_compared.1
        );
        let others: Vec<String> = self
            .report
            .violations_by_invariant
            .iter()
            .filter(|(name, _)| name.as_str() != DIVERGENCE && !HEADLINE.iter().any(|(_, n)| n == *name))
            .map(|(name, count)| format!("{name} {count}"))
            .collect();
        let _ = writeln!(out, "other invariants: {}", others.join(", "));
        let (length, start) = self.unavailability.strict;
        let _ = writeln!(
            out,
            "longest unavailability while at most a minority was faulty: {} (from +{:.1}s: {})",
            secs(length),
            start.as_secs_f64(),
            self.unavailability_state
        );
        let (length, start) = self.unavailability.recovery;
        let _ = writeln!(
            out,
            "  counting recovery after majority faults too: {} (from +{:.1}s)",
            secs(length),
            start.as_secs_f64()
        );
        let (length, start, partition) = self.partition_unavailability;
        let _ = writeln!(
            out,
            "  one partition, at most a minority of its replicas faulty: {} (p{partition} from +{:.1}s)",
            secs(length),
            start.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "recovery after the final restart of every node: {} to the first acknowledgement",
            self.recovery.map_or("no acknowledgement".to_string(), secs)
        );
        let exits: Vec<String> =
            self.nemesis.unexpected_exits.iter().map(|(node, status)| format!("n{node}: {status}")).collect();
        let _ = writeln!(
            out,
            "unexpected node exits: {}{}; hung on SIGTERM: {:?}; panics in node logs: {}; ERROR log lines: {}",
            exits.len(),
            if exits.is_empty() { String::new() } else { format!(" ({})", exits.join(", ")) },
            self.nemesis.hung_on_stop,
            self.panics.len(),
            self.error_lines
        );
        for panic in self.panics.iter().take(5) {
            let _ = writeln!(out, "  PANIC: {panic}");
        }
        for violation in &self.report.violations {
            let _ = writeln!(out, "  VIOLATION: {violation}");
        }
        if self.report.violation_count() > self.report.violations.len() {
            let _ = writeln!(out, "  ... and {} more", self.report.violation_count() - self.report.violations.len());
        }
        for file in &self.files {
            let _ = writeln!(out, "history: {}", file.display());
        }
        let verdict = match (self.passed(), self.expect_lost_writes) {
            (true, false) => "PASS",
            (true, true) => "PASS (the harness caught the lost writes)",
            (false, false) => "FAIL",
            (false, true) => "FAIL (fsync was off, yet no lost write was found: the harness does not bite)",
        };
        let _ = writeln!(out, "VERDICT: {verdict}");
        out
    }
}

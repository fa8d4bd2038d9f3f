//! Many seeds, one `flotilla-sim` process each (a run replays only as the sole simulation
//! of its process), a few at a time. Aggregates what the runs report: seeds, simulated
//! minutes, records checked, violations per invariant, and per coverage point the number
//! of seeds that reached it — a point no seed reached is reported as stuck at zero.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;

use crate::coverage::EXPECTED_POINTS;

/// What one child run printed as its JSON summary line.
#[derive(Debug, Deserialize)]
struct RunSummary {
    verdict: String,
    broken: Option<String>,
    report: crate::checker::Report,
    simulated_secs: f64,
    coverage: BTreeMap<String, u64>,
    options: serde_json::Value,
    replay: String,
    options_line: String,
}

/// The sweep's totals.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub seeds: usize,
    pub simulated_secs: f64,
    pub acknowledged: usize,
    pub read: usize,
    pub consumed: usize,
    pub group_delivered: usize,
    pub group_commits_acknowledged: usize,
    pub group_commits: usize,
    pub group_reads: usize,
    /// Seeds that ran consumer groups.
    pub group_seeds: usize,
    pub violations: BTreeMap<String, usize>,
    /// Seeds that reached each coverage point.
    pub coverage_seeds: BTreeMap<String, usize>,
    /// Faults injected by kind, over all seeds.
    pub faults: BTreeMap<String, u64>,
    /// One line per failed seed: verdict, options and the replay command.
    pub failures: Vec<String>,
}

impl SweepReport {
    /// Expected coverage points no seed reached.
    pub fn stuck_points(&self) -> Vec<&'static str> {
        EXPECTED_POINTS
            .iter()
            .map(|(point, _)| *point)
            .filter(|point| self.coverage_seeds.get(*point).copied().unwrap_or(0) == 0)
            .collect()
    }

    fn absorb(&mut self, seed: u64, summary: Result<RunSummary, String>) {
        self.seeds += 1;
        let summary = match summary {
            Ok(summary) => summary,
            Err(problem) => {
                self.failures.push(format!("seed {seed}: {problem}"));
                return;
            }
        };
        self.simulated_secs += summary.simulated_secs;
        self.acknowledged += summary.report.acknowledged;
        self.read += summary.report.read;
        self.consumed += summary.report.consumed;
        self.group_delivered += summary.report.group_delivered;
        self.group_commits_acknowledged += summary.report.group_commits_acknowledged;
        self.group_commits += summary.report.group_commits;
        self.group_reads += summary.report.group_reads;
        self.group_seeds += usize::from(summary.report.group_commits + summary.report.group_reads > 0);
        for (invariant, count) in &summary.report.violations_by_invariant {
            *self.violations.entry(invariant.clone()).or_default() += count;
        }
        for (point, count) in &summary.coverage {
            if let Some(kind) = point.strip_prefix("fault:") {
                *self.faults.entry(kind.to_string()).or_default() += count;
            } else {
                *self.coverage_seeds.entry(point.clone()).or_default() += usize::from(*count > 0);
            }
        }
        if summary.verdict != "pass" {
            let mut line = format!("seed {seed}: {} — {}", summary.verdict, summary.options_line);
            if let Some(broken) = &summary.broken {
                let _ = write!(line, "\n    broke: {broken}");
            }
            for violation in summary.report.violations.iter().take(3) {
                let _ = write!(line, "\n    {violation}");
            }
            let _ = write!(line, "\n    replay: {}", summary.replay);
            let _ = summary.options;
            self.failures.push(line);
        }
    }
}

impl std::fmt::Display for SweepReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} seeds, {:.1} simulated minutes, {} acknowledged records checked ({} read back by final drains, {} seen by tailing consumers)",
            self.seeds,
            self.simulated_secs / 60.0,
            self.acknowledged,
            self.read,
            self.consumed
        )?;
        writeln!(
            f,
            "consumer groups in {} seeds: {} records delivered to members, {} of {} commits acknowledged, {} reads of committed offsets checked",
            self.group_seeds,
            self.group_delivered,
            self.group_commits_acknowledged,
            self.group_commits,
            self.group_reads
        )?;
        writeln!(f, "violations by invariant:")?;
        for name in crate::checker::invariant_names() {
            writeln!(f, "  {name:<28} {}", self.violations.get(name).copied().unwrap_or(0))?;
        }
        writeln!(f, "faults injected:")?;
        for (kind, count) in &self.faults {
            writeln!(f, "  {kind:<28} {count}")?;
        }
        writeln!(f, "coverage (seeds that reached each point):")?;
        for (point, meaning) in EXPECTED_POINTS {
            let seeds = self.coverage_seeds.get(*point).copied().unwrap_or(0);
            let flag = if seeds == 0 { "  <- STUCK AT ZERO" } else { "" };
            writeln!(f, "  {point:<34} {seeds:>6}  {meaning}{flag}")?;
        }
        for (point, seeds) in &self.coverage_seeds {
            if !EXPECTED_POINTS.iter().any(|(p, _)| p == point) {
                writeln!(f, "  {point:<34} {seeds:>6}")?;
            }
        }
        if self.failures.is_empty() {
            write!(f, "all {} seeds passed", self.seeds)
        } else {
            writeln!(f, "{} seeds FAILED:", self.failures.len())?;
            for failure in &self.failures {
                writeln!(f, "  {failure}")?;
            }
            Ok(())
        }
    }
}

/// Runs `binary --seed S --json <extra>` for every seed, `jobs` at a time, printing a
/// progress line per seed to stderr.
pub fn sweep(binary: &Path, seeds: &[u64], extra_args: &[String], jobs: usize) -> SweepReport {
    let queue = Arc::new(Mutex::new(seeds.iter().copied().collect::<std::collections::VecDeque<u64>>()));
    let report = Arc::new(Mutex::new(SweepReport::default()));
    let total = seeds.len();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let (queue, report) = (Arc::clone(&queue), Arc::clone(&report));
            scope.spawn(move || {
                loop {
                    let Some(seed) = queue.lock().pop_front() else { return };
                    let summary = run_child(binary, seed, extra_args);
                    let mut report = report.lock();
                    let verdict = match &summary {
                        Ok(summary) => summary.verdict.clone(),
                        Err(_) => "broken".to_string(),
                    };
                    report.absorb(seed, summary);
                    eprintln!("[{}/{total}] seed {seed}: {verdict}", report.seeds);
                }
            });
        }
    });
    Arc::try_unwrap(report).map(Mutex::into_inner).unwrap_or_default()
}

fn run_child(binary: &Path, seed: u64, extra_args: &[String]) -> Result<RunSummary, String> {
    let output = Command::new(binary)
        .arg("--seed")
        .arg(seed.to_string())
        .arg("--json")
        .args(extra_args)
        .env_remove("RUST_LOG")
        .output()
        .map_err(|err| format!("could not start {}: {err}", binary.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().rev().find(|line| line.starts_with('{')).ok_or_else(|| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        format!("exited with {} and no summary; stderr ends: {}", output.status, tail.join(" | "))
    })?;
    serde_json::from_str(line).map_err(|err| format!("unreadable summary ({err}): {line}"))
}

//! Deterministic simulation of a Flotilla cluster under turmoil: three or five nodes on
//! simulated TCP and in-memory disks, producers and tailing consumers, and a nemesis that
//! rotates faults drawn from the seed's mix (partitions of many shapes, pauses, latency,
//! lossy links, crashes with torn un-synced tails, power loss, slow fsync). After a heal and
//! a final drain, the checker judges the history.
//!
//! Layout: `options.rs` (what a seed expands to), `cluster.rs` (the nodes and the turmoil
//! seams), `workload/` (clients; shared with the real-process chaos test), `nemesis/` (fault
//! primitives and rotation), `scenarios.rs` (named regression scripts), `checker/` (one
//! module per invariant), `coverage.rs` (how often interesting events happened), `sweep.rs`
//! (many seeds, one process each), and [`run`], the driver that steps the simulation and
//! performs what only it can (crashes, restarts, link settings).
//!
//! One seed fixes the whole run: the options, turmoil's network and scheduler, openraft's
//! election timeouts, the fault schedule and how much of a crashed node's unsynced data
//! survives.

pub mod checker;
pub mod cluster;
pub mod coverage;
pub mod nemesis;
pub mod options;
pub mod scenarios;
pub mod shared;
pub mod sweep;
pub mod workload;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::bail;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use flotilla_storage::MemoryFaults;

use crate::checker::Report;
use crate::cluster::{CLIENT_HOST, Cluster, NEMESIS_HOST};
use crate::nemesis::faults::NORMAL_MAX_LATENCY;
use crate::options::{Bug, SimOptions};
use crate::shared::{DriverAction, Shared};
use crate::workload::Environment;

/// Simulated time allowed beyond the safety phase for startup, healing, the healed phase
/// and the final drain; a run still going after that is a liveness failure.
const RECOVERY_ALLOWANCE: Duration = Duration::from_secs(240);
/// Socket buffer, in messages. turmoil's default (64) overflows under Raft's pipelining and
/// panics with "server socket buffer full".
const TCP_CAPACITY: usize = 65_536;

/// How a run ended, with the process exit code `flotilla-sim` uses for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every invariant held.
    Pass,
    /// A safety invariant broke (data lost, duplicated, reordered, diverged...).
    Safety,
    /// Only liveness failed: the healed cluster did not serve within the bound.
    Liveness,
    /// The run itself broke: a node panicked or failed to start, or a client gave up.
    Crash,
}

impl Verdict {
    /// The process exit code for this verdict.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Safety => 1,
            Verdict::Liveness => 2,
            Verdict::Crash => 3,
        }
    }
}

/// What one run produced.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub options: SimOptions,
    pub verdict: Verdict,
    /// Why the run broke, for [`Verdict::Crash`] and a run out of simulated time.
    pub broken: Option<String>,
    /// The checker's verdict (empty when the run broke before the checker ran).
    pub report: Report,
    /// Hash of the trace: equal for two runs exactly when they behaved alike.
    pub trace_hash: u64,
    #[serde(skip)]
    pub trace: Vec<String>,
    /// Simulated time the run took, in seconds.
    pub simulated_secs: f64,
    /// Coverage points reached in this run (faults injected as `fault:<kind>`).
    pub coverage: BTreeMap<String, u64>,
}

/// The command that replays `options` (after `cargo build --release --workspace`).
pub fn replay_command(options: &SimOptions) -> String {
    let mut command = format!("$CARGO_TARGET_DIR/release/flotilla-sim --seed {}", options.seed);
    if let Some(scenario) = options.scenario {
        command.push_str(&format!(" --scenario {}", kebab(&format!("{scenario:?}"))));
    }
    if let Some(bug) = options.bug {
        command.push_str(&format!(" --bug {}", kebab(&format!("{bug:?}"))));
    }
    command
}

/// `PowerLossAfterAcks` → `power-loss-after-acks`.
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Whether this process has started a run.
static RUN_STARTED: AtomicBool = AtomicBool::new(false);

/// Runs one seed and checks its history.
///
/// Once per process, and with no other tokio runtime busy in it: tokio numbers tasks with a
/// process-wide counter and a runtime shuts its tasks down in an order derived from those
/// numbers. A crashed host's tasks close their sockets in that order, each close draws a
/// latency from the simulation's RNG, so a second run in the same process (or a run beside
/// another one) diverges at its first crash. Sweeps and tests therefore run the binary.
pub fn run(options: SimOptions) -> anyhow::Result<Outcome> {
    if RUN_STARTED.swap(true, Ordering::SeqCst) {
        bail!("a simulation already ran in this process; a second run would not replay (see `run`)");
    }
    let seed = options.seed;
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(cluster::EPOCH_SECS))
        .simulation_duration(options.safety + RECOVERY_ALLOWANCE)
        .tcp_capacity(TCP_CAPACITY)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(NORMAL_MAX_LATENCY)
        .build();
    let cluster = Cluster::start(&mut sim, options.nodes, seed);
    if options.bug == Some(Bug::SyncLies) {
        for (_, engine) in cluster.engines() {
            engine.set_faults(MemoryFaults { sync_lies: true, ..MemoryFaults::default() });
        }
    }
    let shared = Arc::new(Shared::new(|| turmoil::sim_elapsed().unwrap_or_default()));
    let env = Environment {
        brokers: (1..=options.nodes).map(cluster::client_address).collect(),
        connector: cluster::connector(),
        request_timeout: Duration::from_secs(3),
        clients: Arc::default(),
    };
    let mut plan = options.workload.clone();
    if options.bug == Some(Bug::GroupSkip) {
        plan.groups.iter_mut().for_each(|group| group.skip_on_start = true);
    }
    {
        let (shared, env) = (Arc::clone(&shared), env.clone());
        sim.client(CLIENT_HOST, async move { workload::run(plan, env, shared).await.map_err(Into::into) });
    }
    {
        let (shared, options, engines) = (Arc::clone(&shared), options.clone(), cluster.engines());
        sim.client(NEMESIS_HOST, async move { nemesis::run(options, env, engines, shared).await.map_err(Into::into) });
    }

    let broken = drive(&mut sim, &cluster, &shared, seed);
    let simulated = sim.elapsed();
    drop(sim);

    let history = std::mem::take(&mut *shared.history.lock());
    let report = checker::check(&history);
    let mut trace = std::mem::take(&mut *shared.trace.lock());
    for (partition, records) in &history.reads {
        for (offset, value) in records {
            trace.record(simulated, format!("read {partition}@{offset} {value}"));
        }
    }
    let verdict = match &broken {
        Some(Broken::Crash(_)) => Verdict::Crash,
        _ if !report.ok() && !report.only_liveness_failed() => Verdict::Safety,
        Some(Broken::OutOfTime(_)) => Verdict::Liveness,
        _ if !report.ok() => Verdict::Liveness,
        _ => Verdict::Pass,
    };
    Ok(Outcome {
        options,
        verdict,
        broken: broken.map(|b| match b {
            Broken::Crash(why) | Broken::OutOfTime(why) => why,
        }),
        report,
        trace_hash: trace.hash(),
        trace: trace.lines,
        simulated_secs: simulated.as_secs_f64(),
        coverage: coverage::snapshot(),
    })
}

/// Why stepping stopped early.
enum Broken {
    /// A host panicked or returned an error.
    Crash(String),
    /// Simulated time ran out before the workload finished.
    OutOfTime(String),
}

/// Steps the simulation to the end, performing the nemesis' driver actions between steps.
fn drive(sim: &mut turmoil::Sim<'_>, cluster: &Cluster, shared: &Shared, seed: u64) -> Option<Broken> {
    // How much of a crashed node's unsynced tail survives comes from its own stream, so
    // changing the schedule elsewhere does not reshuffle it.
    let mut disk_rng = StdRng::seed_from_u64(seed ^ 0x746f_726e_5f74_6169);
    loop {
        // A panic in any host (a node's fail-stop assertion included) surfaces here: turmoil
        // builds host runtimes that shut down on an unhandled panic, and `step` panics then.
        let finished = match std::panic::catch_unwind(AssertUnwindSafe(|| sim.step())) {
            Ok(Ok(finished)) => finished,
            Ok(Err(err)) => {
                let message = format!("at {:?}: {err}", sim.elapsed());
                return Some(if message.contains("Ran for duration") {
                    Broken::OutOfTime(message)
                } else {
                    Broken::Crash(message)
                });
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                return Some(Broken::Crash(format!(
                    "a host panicked at {:?}: {message} (the panic itself is on stderr)",
                    sim.elapsed()
                )));
            }
        };
        let actions: Vec<DriverAction> = shared.driver.lock().drain(..).collect();
        for action in actions {
            perform(sim, cluster, shared, &mut disk_rng, action);
        }
        if finished {
            return None;
        }
    }
}

/// Performs one driver action.
fn perform(
    sim: &mut turmoil::Sim<'_>,
    cluster: &Cluster,
    shared: &Shared,
    disk_rng: &mut StdRng,
    action: DriverAction,
) {
    let at = sim.elapsed();
    let others = |node: u64| -> Vec<String> {
        cluster
            .node_ids()
            .into_iter()
            .filter(|id| *id != node)
            .map(cluster::host_name)
            .chain([CLIENT_HOST.to_string()])
            .collect()
    };
    let event = match action {
        DriverAction::Crash(id) => {
            sim.crash(cluster::host_name(id));
            let engine = cluster.engine(id);
            let pending = engine.pending_batches();
            let keep = disk_rng.random_range(0..=pending);
            engine.crash(keep);
            if keep < pending && !shared.history.lock().acks.is_empty() {
                coverage::hit("crash_lost_unsynced_writes");
            }
            if keep > 0 && keep < pending {
                coverage::hit("torn_tail");
            }
            format!("crash n{id}: {keep} of {pending} unsynced batches survive")
        }
        DriverAction::Restart(id) => {
            sim.bounce(cluster::host_name(id));
            format!("restart n{id}")
        }
        DriverAction::LinkLatency { node, max } => {
            for other in others(node) {
                sim.set_link_max_message_latency(cluster::host_name(node), other.as_str(), max);
            }
            format!("links of n{node}: latency up to {max:?}")
        }
        DriverAction::LinkFailRate { node, rate } => {
            for other in others(node) {
                sim.set_link_fail_rate(cluster::host_name(node), other.as_str(), rate);
            }
            format!("links of n{node}: fail rate {rate:.4}")
        }
        DriverAction::Wipe(id) => {
            cluster.engine(id).wipe();
            format!("wipe the disk of n{id}")
        }
    };
    shared.trace.lock().record(at, event);
}

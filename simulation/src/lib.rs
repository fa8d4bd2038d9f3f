//! Deterministic simulation of a Flotilla cluster under turmoil: three nodes on simulated TCP
//! and in-memory disks, a client that produces keyed records while a nemesis isolates leaders
//! and crashes nodes (each losing a torn tail of its unsynced writes), then a checker that
//! compares every acknowledgement with what the cluster returns at the end.
//!
//! Layout: `cluster.rs` (the nodes and the turmoil seams), `workload.rs` (the client),
//! `nemesis.rs` (the fault schedule), `checker.rs` (the history and its rules), and [`run`],
//! the driver that steps the simulation and performs the crashes the nemesis asks for.
//!
//! One seed fixes the whole run: turmoil's network and scheduler, openraft's election
//! timeouts, the fault schedule and how much of a crashed node's unsynced data survives. The
//! `flotilla-sim` binary replays a seed; `tests/smoke.rs` runs it and checks that two runs of
//! the same seed give the same trace.

pub mod checker;
pub mod cluster;
pub mod nemesis;
pub mod workload;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::bail;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use flotilla_storage::MemoryFaults;

use crate::checker::{History, Report};
use crate::cluster::Cluster;
use crate::nemesis::HostFault;

/// Nodes in the simulated cluster.
pub const NODES: u64 = 3;
/// Upper bound on simulated time; a run that has not finished by then fails (a liveness bug).
const SIMULATION_DURATION: Duration = Duration::from_secs(300);
/// Socket buffer, in messages. turmoil's default (64) overflows under Raft's pipelining and
/// panics with "server socket buffer full".
const TCP_CAPACITY: usize = 65_536;

/// What one run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The seed that was run.
    pub seed: u64,
    /// The checker's verdict.
    pub report: Report,
    /// Hash of the trace: equal for two runs exactly when they behaved alike.
    pub trace_hash: u64,
    /// The trace itself, one event per line.
    pub trace: Vec<String>,
    /// Simulated time the run took.
    pub simulated: Duration,
}

/// What a run puts the cluster through, beyond the seed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scenario {
    /// The last round crashes every node at once (a power cut) instead of one, so only what
    /// each node synced, plus a torn tail, survives.
    pub power_loss: bool,
    /// Every engine's `sync` reports success without making anything durable: a deliberately
    /// broken disk, to prove the checker catches acknowledge-before-fsync. Never set it for
    /// anything but that proof.
    pub sync_lies: bool,
}

impl Scenario {
    /// The flags of `flotilla-sim` that select this scenario.
    pub fn flags(&self) -> String {
        let mut flags = String::new();
        if self.power_loss {
            flags.push_str(" --power-loss");
        }
        if self.sync_lies {
            flags.push_str(" --sync-lies");
        }
        flags
    }
}

/// The command that replays `seed` under `scenario` (after `cargo build --release --workspace`).
pub fn replay_command(seed: u64, scenario: &Scenario) -> String {
    format!("$CARGO_TARGET_DIR/release/flotilla-sim --seed {seed}{}", scenario.flags())
}

/// The run's event log, stamped with simulated time. Every line goes into the hash that the
/// determinism check compares.
#[derive(Debug, Default)]
pub struct Trace {
    lines: Vec<String>,
}

impl Trace {
    /// Appends an event that happened at `at`.
    pub fn record(&mut self, at: Duration, event: impl AsRef<str>) {
        self.lines.push(format!("{:>9.3}s {}", at.as_secs_f64(), event.as_ref()));
    }

    /// FNV-1a over every line: stable across processes and builds, unlike `RandomState`.
    pub fn hash(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for line in &self.lines {
            for byte in line.bytes().chain(std::iter::once(b'\n')) {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }
}

/// State the driver, the workload and the nemesis share. Every simulated host runs on the
/// driver's thread, one at a time, so the locks are never contended (and never held across
/// an `.await`).
#[derive(Debug, Default)]
pub struct Shared {
    trace: Mutex<Trace>,
    history: Mutex<History>,
    /// Crashes and restarts the nemesis asks for; only the driver can perform them.
    host_faults: Mutex<VecDeque<HostFault>>,
    /// Set by the workload once the topic exists.
    topic_ready: AtomicBool,
    /// Set by the nemesis once every fault is healed.
    faults_done: AtomicBool,
}

impl Shared {
    /// Records an event at the current host's simulated time.
    pub fn note(&self, event: impl AsRef<str>) {
        self.trace.lock().record(turmoil::sim_elapsed().unwrap_or_default(), event);
    }
}

/// Whether this process has started a run.
static RUN_STARTED: AtomicBool = AtomicBool::new(false);

/// Runs `scenario` for `seed` and checks its history. `Err` means the run itself broke (a
/// node panicked or failed to start, the workload gave up, simulated time ran out); a safety
/// violation is an `Ok` outcome whose report is not ok.
///
/// Once per process, and with no other tokio runtime busy in it: tokio numbers tasks with a
/// process-wide counter and a runtime shuts its tasks down in an order derived from those
/// numbers. A crashed host's tasks close their sockets in that order, each close draws a
/// latency from the simulation's RNG, so a second run in the same process (or a run beside
/// another one) diverges at its first crash. The smoke test therefore runs the binary.
pub fn run(seed: u64, scenario: &Scenario) -> anyhow::Result<Outcome> {
    if RUN_STARTED.swap(true, Ordering::SeqCst) {
        bail!("a simulation already ran in this process; a second run would not replay (see `run`)");
    }
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(cluster::EPOCH_SECS))
        .simulation_duration(SIMULATION_DURATION)
        .tcp_capacity(TCP_CAPACITY)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(20))
        .build();
    let cluster = Cluster::start(&mut sim, NODES, seed);
    if scenario.sync_lies {
        for id in cluster.node_ids() {
            cluster.engine(id).set_faults(MemoryFaults { sync_lies: true, ..MemoryFaults::default() });
        }
    }
    let shared = Arc::new(Shared::default());

    let workload_shared = Arc::clone(&shared);
    sim.client("client", async move { workload::run(workload_shared).await.map_err(Into::into) });
    let nemesis_shared = Arc::clone(&shared);
    let scenario = *scenario;
    sim.client("nemesis", async move { nemesis::run(seed, scenario, nemesis_shared).await.map_err(Into::into) });

    // How much of a crashed node's unsynced tail survives comes from its own stream, so
    // changing the scenario elsewhere does not reshuffle it.
    let mut disk_rng = StdRng::seed_from_u64(seed ^ 0x746f_726e_5f74_6169);
    loop {
        // A panic in any host (a node's fail-stop assertion included) surfaces here: turmoil
        // builds host runtimes that shut down on an unhandled panic, and `step` panics then.
        let finished = match std::panic::catch_unwind(AssertUnwindSafe(|| sim.step())) {
            Ok(Ok(finished)) => finished,
            Ok(Err(err)) => bail!("seed {seed}: the simulation failed at {:?}: {err}", sim.elapsed()),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                bail!("seed {seed}: a host panicked at {:?}: {message} (the panic itself is on stderr)", sim.elapsed())
            }
        };
        let faults: Vec<HostFault> = shared.host_faults.lock().drain(..).collect();
        for fault in faults {
            match fault {
                HostFault::Crash(id) => {
                    sim.crash(cluster::host_name(id));
                    let engine = cluster.engine(id);
                    let pending = engine.pending_batches();
                    let keep = disk_rng.random_range(0..=pending);
                    engine.crash(keep);
                    shared
                        .trace
                        .lock()
                        .record(sim.elapsed(), format!("crash n{id}: {keep} of {pending} unsynced batches survive"));
                }
                HostFault::Restart(id) => {
                    sim.bounce(cluster::host_name(id));
                    shared.trace.lock().record(sim.elapsed(), format!("restart n{id}"));
                }
            }
        }
        if finished {
            break;
        }
    }

    let simulated = sim.elapsed();
    drop(sim);
    let history = std::mem::take(&mut *shared.history.lock());
    let report = checker::check(&history);
    let mut trace = std::mem::take(&mut *shared.trace.lock());
    for (partition, records) in &history.reads {
        for (offset, value) in records {
            trace.record(simulated, format!("read p{partition} o{offset} {value}"));
        }
    }
    Ok(Outcome { seed, report, trace_hash: trace.hash(), trace: trace.lines, simulated })
}

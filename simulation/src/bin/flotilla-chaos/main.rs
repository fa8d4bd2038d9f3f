//! `flotilla-chaos`: the real-process chaos test. Five `flotilla` processes on RocksDB, each in
//! its own network namespace, take a concurrent produce/consume workload while a nemesis
//! rotates faults for the given time: SIGKILL and restart, SIGSTOP longer than an election
//! timeout, graceful restarts, whole-cluster kills, and network partitions (one node, a
//! leader, majority|minority, a ring, one-way, workload|leader). Then everything is healed
//! and restarted, the log drained, replica digests compared, and the same checker the
//! simulation uses judges the history. Exit status: 0 pass, 1 violations, 2 the harness broke.
//!
//! With `--power-loss` every node's data directory sits on a lazy filesystem
//! (`crates/lazyfs`) that keeps unsynced writes in memory, and the faults are power cuts: of
//! the whole cluster or of a minority, each under load, each a SIGKILL followed by dropping
//! every write the node had not fsynced; the run ends after `--cuts` whole-cluster cuts. With
//! `--unsafe-no-sync` as well the nodes run with their engine's fsync off
//! (`FLOTILLA_TEST_UNSAFE_NO_SYNC=1`), and the run passes only if the checker finds lost
//! writes: the proof that the harness bites.
//!
//! Layout: `netns.rs` (namespaces, bridge, cut links), `supervisor.rs` (the node processes,
//! signalled only by their own PIDs), `nemesis.rs` (the fault rotation), `workload.rs` (the
//! simulation's workload set up for real sockets), `timeline.rs` (who was faulty when;
//! availability), `recorder.rs` (the JSONL history), `probe.rs` (direct questions to one
//! node), `report.rs` (the summary), `disks.rs` (the lazy disks of a power-loss run).
//!
//! ```text
//! cargo build --release --workspace --all-targets
//! sudo $CARGO_TARGET_DIR/release/flotilla-chaos --minutes 10 [--seed S]
//! sudo $CARGO_TARGET_DIR/release/flotilla-chaos --power-loss --cuts 20 [--unsafe-no-sync]
//! ```

mod disks;
mod nemesis;
mod netns;
mod probe;
mod recorder;
mod report;
mod supervisor;
mod timeline;
mod workload;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use flotilla_simulation::checker::{self, History};
use flotilla_simulation::shared::Shared;
use serde_json::json;
use tokio::time::Instant;

use crate::disks::Disks;
use crate::nemesis::{Nemesis, PowerLoss, STOP_TIMEOUT, snapshot_of};
use crate::netns::Network;
use crate::probe::Layout;
use crate::recorder::Recorder;
use crate::report::Summary;
use crate::supervisor::Supervisor;
use crate::timeline::unavailability;

/// The topic the workload writes.
const TOPIC: &str = "chaos";
/// How long a freshly started (or fully restarted) cluster may take to serve.
const READY_DEADLINE: Duration = Duration::from_secs(120);
/// How long the workload may take, after the final heal, to recover, drain and collect
/// digests. Its own deadlines are shorter; this only keeps a stuck run from hanging.
const WORKLOAD_END_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// Quiet time at the start, so the first fault meets a cluster that has leaders.
const WARM_UP: Duration = Duration::from_secs(5);
/// The environment variable that turns a node's fsync off (read by the `flotilla` binary).
const UNSAFE_NO_SYNC_ENV: &str = "FLOTILLA_TEST_UNSAFE_NO_SYNC";
/// The cap on a power-loss run's faults when neither --minutes nor --seconds is given.
const POWER_LOSS_TIME_MAX: Duration = Duration::from_secs(60 * 60);

/// How to network the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetChoice {
    /// Network namespaces if this process may create them, else loopback (loudly).
    Auto,
    /// Network namespaces, or fail.
    Netns,
    /// Loopback only: process faults, no partitions.
    Loopback,
}

/// Real-process chaos test of a Flotilla cluster.
#[derive(Debug, Parser)]
#[command(name = "flotilla-chaos", about)]
struct Flags {
    /// Minutes of rotating faults [default: 10; with --power-loss, a cap of 60].
    #[arg(long)]
    minutes: Option<f64>,
    /// Seconds of rotating faults (overrides --minutes).
    #[arg(long)]
    seconds: Option<u64>,
    /// Seed of the fault schedule; random (and printed) when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 5)]
    nodes: u64,
    /// Where node data, logs and the history go; node data is wiped first.
    #[arg(long, default_value = ".flotilla/chaos")]
    run_dir: PathBuf,
    /// The node binary; by default `flotilla` next to this executable.
    #[arg(long, env = "FLOTILLA_BIN")]
    flotilla: Option<PathBuf>,
    /// How to network the nodes.
    #[arg(long, value_enum, default_value = "auto")]
    net: NetChoice,
    /// Suffix of the namespace, bridge and veth names, so two runs can coexist (≤ 4 chars).
    #[arg(long, default_value = "")]
    net_tag: String,
    /// First three octets of the /24 the namespaces use.
    #[arg(long, default_value = "10.213.0")]
    subnet: String,
    /// First port on loopback (three per node).
    #[arg(long, default_value_t = 17100)]
    port_base: u16,
    /// Shortest fault episode (a fault, its healing, and calm until the next pick), seconds.
    #[arg(long, default_value_t = nemesis::EPISODE_MIN.as_secs())]
    episode_min_secs: u64,
    /// Longest fault episode, seconds.
    #[arg(long, default_value_t = nemesis::EPISODE_MAX.as_secs())]
    episode_max_secs: u64,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4)]
    producers: u32,
    /// Partitions of the workload's topic.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Replication factor of the workload's topic.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Power cuts instead of the usual faults, on lazy disks that drop unsynced writes
    /// (needs root and /dev/fuse).
    #[arg(long)]
    power_loss: bool,
    /// With --power-loss: whole-cluster power cuts after which the run ends (a minority cut
    /// comes between about every two).
    #[arg(long, default_value_t = 20, requires = "power_loss")]
    cuts: usize,
    /// With --power-loss: run the nodes with fsync DISABLED; the run passes only if the
    /// checker finds lost writes (proof that the harness catches them).
    #[arg(long, requires = "power_loss")]
    unsafe_no_sync: bool,
}

impl Flags {
    fn fault_time(&self) -> Duration {
        match (self.seconds, self.minutes) {
            (Some(seconds), _) => Duration::from_secs(seconds),
            (None, Some(minutes)) => Duration::from_secs_f64(minutes.max(0.0) * 60.0),
            (None, None) if self.power_loss => POWER_LOSS_TIME_MAX,
            (None, None) => Duration::from_secs(10 * 60),
        }
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chaos: cannot start tokio: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(main_async(flags)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("chaos: the run broke: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Sets up, runs, and tears down; `Ok(passed)` unless the harness itself broke.
async fn main_async(flags: Flags) -> anyhow::Result<bool> {
    let seed = flags.seed.unwrap_or_else(os_seed);
    let flotilla = match &flags.flotilla {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("this executable has no directory")?
            .join("flotilla"),
    };
    ensure!(
        flotilla.is_file(),
        "no flotilla binary at {} (build with `cargo build --release --workspace --all-targets`, or pass --flotilla)",
        flotilla.display()
    );
    ensure!(flags.nodes >= 3, "--nodes {}: chaos needs at least 3 nodes", flags.nodes);
    ensure!(
        flags.episode_min_secs >= 1 && flags.episode_min_secs <= flags.episode_max_secs,
        "--episode-min-secs {} must be at least 1 and at most --episode-max-secs {}",
        flags.episode_min_secs,
        flags.episode_max_secs
    );
    std::fs::create_dir_all(&flags.run_dir).with_context(|| format!("creating {}", flags.run_dir.display()))?;
    let run_dir = flags.run_dir.canonicalize().context("resolving --run-dir")?;
    let _lock = lock_run(&flags.net_tag)?;

    let network = Arc::new(match flags.net {
        NetChoice::Loopback => Network::loopback(flags.nodes, flags.port_base),
        NetChoice::Netns => Network::namespaces(flags.nodes, &flags.net_tag, &flags.subnet)?,
        NetChoice::Auto => match netns::namespaces_unavailable(&flags.net_tag) {
            None => Network::namespaces(flags.nodes, &flags.net_tag, &flags.subnet)?,
            Some(why) => {
                eprintln!("{}", "!".repeat(100));
                eprintln!("!! chaos: network namespaces are unavailable ({why});");
                eprintln!("!! running on loopback with PROCESS FAULTS ONLY: network partitions are DISABLED.");
                eprintln!("{}", "!".repeat(100));
                Network::loopback(flags.nodes, flags.port_base)
            }
        },
    });
    let epoch = Instant::now();
    if flags.power_loss {
        disks::clear_stale_mounts(&run_dir, flags.nodes)?;
    }
    let mut supervisor = Supervisor::new(&flotilla, Arc::clone(&network), &run_dir, flags.nodes, epoch)?;
    if flags.unsafe_no_sync {
        supervisor.set_node_env(UNSAFE_NO_SYNC_ENV, "1");
    }
    let supervisor = Arc::new(supervisor);
    let disks = match flags.power_loss {
        true => Some(Arc::new(Disks::mount(&supervisor)?)),
        false => None,
    };
    let outcome = tokio::select! {
        outcome = run(&flags, seed, &run_dir, epoch, Arc::clone(&network), Arc::clone(&supervisor), disks.clone()) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    supervisor.kill_all();
    let teardown = network.teardown();
    // Only once every node is down: an unmount under a running node would fail its I/O.
    let unmounted = match disks.map(Arc::try_unwrap) {
        Some(Ok(disks)) => disks.unmount(),
        Some(Err(_)) => Err(anyhow::anyhow!("the lazy disks are still in use at the end of the run")),
        None => Ok(()),
    };
    let summary = match outcome {
        Ok(summary) => summary,
        Err(error) => {
            for id in supervisor.node_ids() {
                eprint!("{}", supervisor.log_tail(id, 15));
            }
            eprintln!("chaos: seed {seed}; node logs and history in {}", run_dir.display());
            return Err(error);
        }
    };
    teardown?;
    unmounted?;
    print!("{}", summary.render());
    if !summary.passed() {
        let power = match (flags.power_loss, flags.unsafe_no_sync) {
            (false, _) => String::new(),
            (true, false) => format!(" --power-loss --cuts {}", flags.cuts),
            (true, true) => format!(" --power-loss --cuts {} --unsafe-no-sync", flags.cuts),
        };
        println!(
            "replay the fault schedule (timing will differ): flotilla-chaos --seed {seed} --seconds {} \
             --episode-min-secs {} --episode-max-secs {} --producers {} --partitions {} --replication-factor {} \
             --nodes {}{power}",
            flags.fault_time().as_secs(),
            flags.episode_min_secs,
            flags.episode_max_secs,
            flags.producers,
            flags.partitions,
            flags.replication_factor,
            flags.nodes
        );
    }
    Ok(summary.passed())
}

/// The run proper, from starting the nodes to the summary.
async fn run(
    flags: &Flags,
    seed: u64,
    run_dir: &Path,
    epoch: Instant,
    network: Arc<Network>,
    supervisor: Arc<Supervisor>,
    disks: Option<Arc<Disks>>,
) -> anyhow::Result<Summary> {
    let recorder = Arc::new(Recorder::new(run_dir, epoch));
    let shared = workload::shared(epoch);
    let result = run_recorded(flags, seed, run_dir, &network, &supervisor, &recorder, &shared, disks).await;
    // The record is worth most when the run broke: write it whatever happened.
    let written = recorder.write(&shared.trace.lock().lines);
    let summary = result?;
    written?;
    Ok(summary)
}

#[allow(clippy::too_many_arguments, reason = "the run's parts, each built once in main_async")]
async fn run_recorded(
    flags: &Flags,
    seed: u64,
    run_dir: &Path,
    network: &Arc<Network>,
    supervisor: &Arc<Supervisor>,
    recorder: &Arc<Recorder>,
    shared: &Arc<Shared>,
    disks: Option<Arc<Disks>>,
) -> anyhow::Result<Summary> {
    let fault_time = flags.fault_time();
    say(
        recorder,
        format!(
            "seed {seed}; {} nodes; {:.0}s of faults; {}; run dir {}",
            flags.nodes,
            fault_time.as_secs_f64(),
            network.describe(),
            run_dir.display()
        ),
    );
    let nodes = supervisor.node_ids();
    for &id in &nodes {
        supervisor.start(id)?;
    }
    recorder.fault_state(snapshot_of(supervisor, network), &nodes);
    wait_ready(supervisor, network).await.context("starting the cluster")?;
    let brokers: Vec<String> = nodes.iter().map(|id| network.client_address(*id)).collect();

    let plan = workload::plan(seed, TOPIC, flags.partitions, flags.replication_factor, flags.producers);
    let mut workload_task = tokio::spawn(flotilla_simulation::workload::run(
        plan,
        workload::environment(brokers.clone()),
        Arc::clone(shared),
    ));
    let ready_deadline = Instant::now() + READY_DEADLINE;
    while !shared.topics_ready.load(Ordering::SeqCst) {
        if workload_task.is_finished() || Instant::now() >= ready_deadline {
            let outcome = (&mut workload_task).await;
            bail!("the workload did not create its topic: {outcome:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let layout = Layout::fetch(&workload::admin_client(&brokers)?, TOPIC).await?;
    say(
        recorder,
        format!("cluster ready; topic {TOPIC:?} with {} partitions; workload running", layout.partitions.len()),
    );

    let mut settling = nemesis::NemesisReport::default();
    if flags.power_loss {
        // With fsync off nothing the nodes wrote is durable until RocksDB syncs on its own,
        // which a restart makes it do (recovery flushes the replayed WAL into synced files).
        // One restart here keeps the topic and the nodes' registrations, so the cuts of a
        // sync-disabled run lose acknowledged tails of a cluster that lives on, not the whole
        // cluster; with fsync on it is one more restart.
        say(recorder, "restarting every node once before the first power cut (SIGTERM, wait, start)".into());
        restart_every_node(supervisor, network, recorder, &mut settling, "the settling SIGTERM").await?;
        wait_ready(supervisor, network).await.context("restarting the cluster before the first power cut")?;
    }
    tokio::time::sleep(WARM_UP).await;
    let window_start = recorder.now();
    let episodes = (Duration::from_secs(flags.episode_min_secs), Duration::from_secs(flags.episode_max_secs));
    if flags.unsafe_no_sync {
        say(
            recorder,
            format!("!! the nodes run with {UNSAFE_NO_SYNC_ENV}=1: fsync is OFF; this run must find lost writes"),
        );
    }
    let power = disks.map(|disks| PowerLoss::new(disks, Arc::clone(shared), flags.cuts));
    let nemesis = Nemesis::new(
        Arc::clone(supervisor),
        Arc::clone(network),
        Arc::clone(recorder),
        layout.clone(),
        seed,
        episodes,
        power,
    );
    let mut nemesis = nemesis.run(Instant::now() + fault_time).await?;
    nemesis.unexpected_exits.append(&mut settling.unexpected_exits);
    nemesis.hung_on_stop.append(&mut settling.hung_on_stop);
    let window_end = recorder.now();

    say(recorder, "faults over and healed; restarting every node (SIGTERM, wait, start)".into());
    restart_every_node(supervisor, network, recorder, &mut nemesis, "the final SIGTERM").await?;
    let healed = recorder.now();
    if let Err(error) = wait_ready(supervisor, network).await {
        say(recorder, format!("the restarted cluster is not ready: {error:#}"));
    }
    shared.faults_done.store(true, Ordering::SeqCst);
    say(recorder, "cluster restarted; the workload must recover, then drains every partition".into());
    match tokio::time::timeout(WORKLOAD_END_DEADLINE, &mut workload_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => bail!("the workload failed: {error:#}"),
        Ok(Err(panic)) => bail!("the workload panicked: {panic}"),
        Err(_) => {
            workload_task.abort();
            bail!("the workload did not finish within {WORKLOAD_END_DEADLINE:?} of the final heal");
        }
    }
    for (id, status) in supervisor.reap_unexpected_exits() {
        nemesis.unexpected_exits.push((id, status.to_string()));
    }

    let history = shared.history.lock().clone();
    let report = checker::check(&history);
    let history_path = run_dir.join("history.json");
    let file = File::create(&history_path).with_context(|| format!("creating {}", history_path.display()))?;
    serde_json::to_writer(std::io::BufWriter::new(file), &history_json(&history))
        .context("writing the checker's history")?;

    let timeline = recorder.timeline();
    let acks = workload::ack_times(shared);
    let recovery = acks.iter().map(|ack| ack.at).filter(|at| *at >= healed).min().map(|at| at - healed);
    let all: Vec<Duration> = acks.iter().map(|ack| ack.at).collect();
    let spans = timeline.minority_spans(&[&nodes], window_start, window_end);
    let unavailable = unavailability(&all, &spans, window_start, window_end);
    let (length, start) = unavailable.strict;
    let unavailability_state = timeline.describe_during(start, start + length);
    let mut partition_unavailability = (Duration::ZERO, Duration::ZERO, 0);
    for partition in &layout.partitions {
        let times: Vec<Duration> =
            acks.iter().filter(|ack| ack.partition == partition.partition).map(|ack| ack.at).collect();
        let spans = timeline.minority_spans(&[&nodes, &partition.replicas], window_start, window_end);
        let measured = unavailability(&times, &spans, window_start, window_end);
        if measured.strict.0 > partition_unavailability.0 {
            partition_unavailability = (measured.strict.0, measured.strict.1, partition.partition);
        }
    }
    let (panics, error_lines) = scan_logs(supervisor);
    Ok(Summary {
        seed,
        nodes: flags.nodes,
        power_cuts_wanted: flags.power_loss.then_some(flags.cuts),
        expect_lost_writes: flags.unsafe_no_sync,
        fault_time: window_end.saturating_sub(window_start),
        network: network.describe(),
        partitions_enabled: network.can_partition(),
        nemesis,
        failed_attempts: workload::failed_attempts(shared),
        report,
        digests_compared: (history.digests.values().map(Vec::len).sum(), history.digests.len()),
        unavailability: unavailable,
        unavailability_state,
        partition_unavailability,
        recovery,
        panics,
        error_lines,
        files: vec![recorder.path().to_path_buf(), history_path],
    })
}

/// The checker's history as JSON. Its maps keyed by partition become lists of
/// `{"partition": .., ...}` objects: JSON object keys must be strings.
fn history_json(history: &History) -> serde_json::Value {
    let reads: Vec<_> = history
        .reads
        .iter()
        .map(|(partition, records)| json!({ "partition": partition, "records": records }))
        .collect();
    let digests: Vec<_> = history
        .digests
        .iter()
        .map(|(partition, digests)| json!({ "partition": partition, "digests": digests }))
        .collect();
    json!({
        "partitions": history.partitions,
        "created_topics": history.created_topics,
        "deleted_topics": history.deleted_topics,
        "attempted": history.attempted,
        "acks": history.acks,
        "ambiguous": history.ambiguous,
        "failed": history.failed,
        "idempotent": history.idempotent,
        "fetches": history.fetches,
        "reads": reads,
        "digests": digests,
        "final_listings": history.final_listings,
        "liveness_failures": history.liveness_failures,
    })
}

/// Stops every node gracefully, one after another, then starts them all; exits other than a
/// clean one go into `report`, named with `what` stopped them.
async fn restart_every_node(
    supervisor: &Supervisor,
    network: &Network,
    recorder: &Recorder,
    report: &mut nemesis::NemesisReport,
    what: &str,
) -> anyhow::Result<()> {
    let nodes = supervisor.node_ids();
    for &id in &nodes {
        match supervisor.terminate(id, STOP_TIMEOUT).await {
            Ok(status) if !status.success() => report.unexpected_exits.push((id, format!("{status} after {what}"))),
            Ok(_) => {}
            Err(_) => report.hung_on_stop.push(id),
        }
        recorder.fault_state(snapshot_of(supervisor, network), &nodes);
    }
    for &id in &nodes {
        supervisor.start(id)?;
    }
    recorder.fault_state(snapshot_of(supervisor, network), &nodes);
    Ok(())
}

/// Waits until every node serves, sees every node live, and all name the same metadata leader.
async fn wait_ready(supervisor: &Supervisor, network: &Network) -> anyhow::Result<()> {
    let nodes = supervisor.node_ids();
    let deadline = Instant::now() + READY_DEADLINE;
    loop {
        let mut leaders = Vec::new();
        let mut problem = None;
        for &id in &nodes {
            match probe::ready(&network.client_address(id), nodes.len()).await {
                Ok(leader) => leaders.push(leader),
                Err(error) => {
                    problem = Some(error);
                    break;
                }
            }
        }
        leaders.dedup();
        match problem {
            None if leaders.len() == 1 => return Ok(()),
            None => problem = Some(anyhow::anyhow!("nodes name different metadata leaders: {leaders:?}")),
            Some(_) => {}
        }
        let exited = supervisor.reap_unexpected_exits();
        if let Some((id, status)) = exited.first() {
            bail!("node {id} exited with {status} while starting\n{}", supervisor.log_tail(*id, 30));
        }
        if Instant::now() >= deadline {
            let problem = problem.map(|p| format!("{p:#}")).unwrap_or_default();
            bail!(
                "the cluster was not ready within {READY_DEADLINE:?}: {problem} (with network namespaces, check that \
                 bridged traffic is not filtered: sysctl net.bridge.bridge-nf-call-iptables)"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Panics (with their message line) and the number of ERROR lines in the node logs.
fn scan_logs(supervisor: &Supervisor) -> (Vec<String>, usize) {
    let mut panics = Vec::new();
    let mut errors = 0;
    for id in supervisor.node_ids() {
        let Ok(text) = std::fs::read_to_string(supervisor.log_path(id)) else { continue };
        for line in text.lines() {
            if line.contains("panicked at") {
                panics.push(format!("n{id}: {}", line.trim()));
            } else if line.contains(" ERROR ") {
                errors += 1;
            }
        }
    }
    (panics, errors)
}

/// Holds an exclusive lock for the network tag, so two runs cannot tear down each other's
/// namespaces.
fn lock_run(tag: &str) -> anyhow::Result<File> {
    let path = std::env::temp_dir().join(format!("flotilla-chaos{tag}.lock"));
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("another flotilla-chaos run holds {} (use another --net-tag and --subnet)", path.display())
        }
        Err(std::fs::TryLockError::Error(error)) => Err(error).with_context(|| format!("locking {}", path.display())),
    }
}

fn say(recorder: &Recorder, text: String) {
    println!("{:>8.1}s  {text}", recorder.now().as_secs_f64());
    recorder.event(json!({ "type": "note", "text": text }));
}

/// A fresh seed when none is given; printed so the schedule can be replayed.
#[allow(
    clippy::disallowed_methods,
    reason = "the chaos run is not a simulation; an unseeded run picks its seed at random and prints it"
)]
fn os_seed() -> u64 {
    rand::random::<u64>() % 1_000_000
}

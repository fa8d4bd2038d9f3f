//! The nemesis: every 5–20 s it picks a fault (or, a quarter of the time, a quiet spell) with a
//! seeded RNG, injects it, holds it, and heals it, so at most one fault is in force at a time
//! and every fault ends before the next begins.
//!
//! Process faults act on the supervisor's own children by PID (SIGKILL then restart, SIGSTOP
//! then SIGCONT, SIGTERM then restart, occasionally SIGKILL of every node). Network faults
//! cut links with blackhole routes inside the nodes' namespaces. Leader-directed faults ask
//! the nodes who leads a partition (or the metadata group) and aim there.
//!
//! In a power-loss run (`--power-loss`) the rotation is power cuts only: of every node, or of
//! a minority that includes a leader. A cut waits until the workload is being acknowledged,
//! SIGKILLs its nodes, drops their disks' unsynced writes ([`Disks`]) and restarts them; the
//! run ends after the asked number of whole-cluster cuts.
//!
//! After every change the fault state goes to the [`Recorder`]'s timeline, from which the
//! report judges availability.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flotilla_simulation::shared::Shared;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use tokio::time::Instant;

use crate::disks::Disks;
use crate::netns::{Network, Peer};
use crate::probe::{self, Layout};
use crate::recorder::Recorder;
use crate::supervisor::{Health, Supervisor};
use crate::timeline::Snapshot;

/// Shortest and longest fault episode, unless the caller asks otherwise.
pub const EPISODE_MIN: Duration = Duration::from_secs(5);
pub const EPISODE_MAX: Duration = Duration::from_secs(20);
/// Longest wait before a killed node is restarted.
const RESTART_DELAY_MAX: Duration = Duration::from_secs(10);
/// Longest wait before the nodes of a whole-cluster kill are restarted.
const KILL_ALL_RESTART_DELAY_MAX: Duration = Duration::from_secs(5);
/// Shortest and longest SIGSTOP: always longer than the election timeout (750–1500 ms), so
/// a paused leader is replaced and, on waking, must notice that it no longer leads.
const PAUSE_MIN: Duration = Duration::from_secs(2);
const PAUSE_MAX: Duration = Duration::from_secs(8);
/// How long a node may take to exit after SIGTERM before it counts as hung.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the nemesis looks for nodes that exited on their own while it waits.
const EXIT_CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// Weight of a quiet spell against the sum of the fault weights (78). A quiet spell never
/// follows another, so about a fifth of the episodes are quiet; without that rule a short run
/// could be all quiet (seed 42 of a one-minute run was).
const QUIET_WEIGHT: u32 = 26;
/// A power cut waits for this many new acknowledgements, so it lands under load...
const LOAD_ACKS: usize = 20;
/// ...for at most this long after the previous restart (a cluster that does not serve by then
/// is cut anyway, and the cut counted as not under load).
const LOAD_DEADLINE: Duration = Duration::from_secs(120);
/// Then it strikes at a random moment within this, so it does not always hit the same phase
/// of a produce round.
const CUT_JITTER_MAX: Duration = Duration::from_millis(1500);

/// The faults the nemesis injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL a random node, restart it after 0–10 s.
    Kill,
    /// SIGKILL the leader of a partition or of the metadata group, restart after 0–10 s.
    KillLeader,
    /// SIGKILL every node at once, restart them all after 0–5 s.
    KillAll,
    /// SIGSTOP a random node for 2–8 s.
    Pause,
    /// SIGSTOP a leader for 2–8 s.
    PauseLeader,
    /// SIGTERM a random node, wait for it to exit, start it again.
    Restart,
    /// Cut a random node off from every other node.
    Isolate,
    /// Cut a leader off from every other node (the workload still reaches it).
    IsolateLeader,
    /// Split the nodes into a minority and a majority.
    Split,
    /// Cut each node off from all but its two neighbours in a random ring.
    Ring,
    /// Drop what one node sends to another, in one direction only.
    OneWay,
    /// Cut a leader off from the workload only; its peers still reach it.
    ClientLeader,
    /// Power cut of every node: SIGKILL, drop unsynced writes, restart after 0–5 s.
    PowerCutAll,
    /// Power cut of a minority including a leader, restarted after 0–10 s.
    PowerCutMinority,
}

impl FaultKind {
    /// Every kind with its weight in the rotation.
    const WEIGHTED: [(FaultKind, u32); 12] = [
        (FaultKind::Kill, 10),
        (FaultKind::KillLeader, 10),
        (FaultKind::KillAll, 2),
        (FaultKind::Pause, 7),
        (FaultKind::PauseLeader, 8),
        (FaultKind::Restart, 5),
        (FaultKind::Isolate, 7),
        (FaultKind::IsolateLeader, 8),
        (FaultKind::Split, 7),
        (FaultKind::Ring, 4),
        (FaultKind::OneWay, 5),
        (FaultKind::ClientLeader, 5),
    ];

    /// The rotation of a power-loss run: two whole-cluster cuts for each minority cut.
    const POWER: [(FaultKind, u32); 2] = [(FaultKind::PowerCutAll, 2), (FaultKind::PowerCutMinority, 1)];

    /// The kind's name in reports and in the history.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillAll => "kill-all",
            FaultKind::Pause => "pause",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::Restart => "restart",
            FaultKind::Isolate => "isolate",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::Split => "split",
            FaultKind::Ring => "ring",
            FaultKind::OneWay => "one-way",
            FaultKind::ClientLeader => "client-leader",
            FaultKind::PowerCutAll => "power-cut-all",
            FaultKind::PowerCutMinority => "power-cut-minority",
        }
    }

    /// Whether the fault cuts links (impossible without network namespaces).
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            FaultKind::Isolate
                | FaultKind::IsolateLeader
                | FaultKind::Split
                | FaultKind::Ring
                | FaultKind::OneWay
                | FaultKind::ClientLeader
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the nemesis did over a run.
#[derive(Debug, Clone, Default)]
pub struct NemesisReport {
    /// Faults injected, by kind.
    pub faults: BTreeMap<FaultKind, usize>,
    /// Quiet spells.
    pub quiet: usize,
    /// Nodes that exited although nobody stopped them: (node, exit status).
    pub unexpected_exits: Vec<(u64, String)>,
    /// Nodes that did not exit within [`STOP_TIMEOUT`] of SIGTERM.
    pub hung_on_stop: Vec<u64>,
    /// Power cuts that struck while the workload was being acknowledged.
    pub cuts_under_load: usize,
    /// Acknowledgements between the previous power cut (or the start) and each cut.
    pub acks_before_cuts: Vec<usize>,
    /// Bytes of unsynced file data the power cuts dropped.
    pub unsynced_bytes_dropped: u64,
}

impl NemesisReport {
    /// Faults injected, all kinds.
    pub fn total(&self) -> usize {
        self.faults.values().sum()
    }
}

/// Injects faults into the cluster until a deadline.
#[derive(Debug)]
pub struct Nemesis {
    supervisor: Arc<Supervisor>,
    network: Arc<Network>,
    recorder: Arc<Recorder>,
    layout: Layout,
    rng: StdRng,
    kinds: Vec<(FaultKind, u32)>,
    /// Shortest and longest episode.
    episodes: (Duration, Duration),
    /// Set in a power-loss run.
    power: Option<PowerLoss>,
    report: NemesisReport,
}

/// What a power-loss run's nemesis needs: the disks to cut, the workload's history to tell
/// load by, and how many whole-cluster cuts end the run.
pub struct PowerLoss {
    /// The nodes' lazy disks.
    pub disks: Arc<Disks>,
    /// The workload's state; its acknowledgements tell whether the cluster is under load.
    pub shared: Arc<Shared>,
    /// Whole-cluster cuts after which the run ends.
    pub whole_cuts: usize,
    /// Acknowledgements counted at the previous cut.
    acks_at_last_cut: usize,
}

impl std::fmt::Debug for PowerLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PowerLoss")
            .field("disks", &self.disks)
            .field("whole_cuts", &self.whole_cuts)
            .finish_non_exhaustive()
    }
}

impl PowerLoss {
    /// Power cuts on `disks` until `whole_cuts` of them cut every node.
    pub fn new(disks: Arc<Disks>, shared: Arc<Shared>, whole_cuts: usize) -> PowerLoss {
        PowerLoss { disks, shared, whole_cuts, acks_at_last_cut: 0 }
    }

    fn acks(&self) -> usize {
        self.shared.history.lock().acks.len()
    }
}

impl Nemesis {
    /// A nemesis seeded with `seed` whose episodes last `episodes.0..=episodes.1`; without
    /// network namespaces it skips network faults. With `power` it makes power cuts only.
    pub fn new(
        supervisor: Arc<Supervisor>,
        network: Arc<Network>,
        recorder: Arc<Recorder>,
        layout: Layout,
        seed: u64,
        episodes: (Duration, Duration),
        power: Option<PowerLoss>,
    ) -> Nemesis {
        let partitions = network.can_partition();
        let kinds = match power {
            Some(_) => FaultKind::POWER.to_vec(),
            None => FaultKind::WEIGHTED.into_iter().filter(|(kind, _)| partitions || !kind.needs_network()).collect(),
        };
        Nemesis {
            supervisor,
            network,
            recorder,
            layout,
            rng: StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            kinds,
            episodes: (episodes.0, episodes.1.max(episodes.0)),
            power,
            report: NemesisReport::default(),
        }
    }

    /// Runs episodes until `until` (in a power-loss run: until the whole-cluster cuts are
    /// done, or `until`), then heals everything. Errors are the harness's own (an
    /// `ip` command failing, a node that cannot be started); the cluster's misbehaviour goes
    /// into the report instead.
    pub async fn run(mut self, until: Instant) -> anyhow::Result<NemesisReport> {
        self.observe();
        let mut last_quiet = false;
        loop {
            // A node that crashed on its own during a quiet spell is started again here.
            self.heal_all().await.context("healing before a fault")?;
            if let Some(power) = &self.power
                && self.report.faults.get(&FaultKind::PowerCutAll).copied().unwrap_or(0) >= power.whole_cuts
            {
                break;
            }
            let left = until.saturating_duration_since(Instant::now());
            let (shortest, longest) = self.episodes;
            if left < shortest {
                self.wait(left).await;
                break;
            }
            let length = self.rng.random_range(shortest..=longest.min(left));
            // A power-loss run has no quiet spells: the restarts after each cut are calm enough.
            let quiet_weight = if last_quiet || self.power.is_some() { 0 } else { QUIET_WEIGHT };
            let total_weight: u32 = self.kinds.iter().map(|(_, weight)| weight).sum::<u32>() + quiet_weight;
            let mut pick = self.rng.random_range(0..total_weight);
            let mut chosen = None;
            for (kind, weight) in &self.kinds {
                if pick < *weight {
                    chosen = Some(*kind);
                    break;
                }
                pick -= weight;
            }
            last_quiet = chosen.is_none();
            match chosen {
                None => {
                    self.report.quiet += 1;
                    let text = format!("quiet for {:.1}s", length.as_secs_f64());
                    self.recorder.event(json!({ "type": "quiet", "detail": text }));
                    self.say(text);
                    self.wait(length).await;
                }
                Some(kind) => {
                    let started = Instant::now();
                    self.episode(kind, length).await.with_context(|| format!("injecting {kind}"))?;
                    *self.report.faults.entry(kind).or_default() += 1;
                    self.heal_all().await.context("healing after a fault")?;
                    self.wait(length.saturating_sub(started.elapsed())).await;
                }
            }
        }
        self.heal_all().await.context("the final heal")?;
        Ok(self.report)
    }

    async fn episode(&mut self, kind: FaultKind, length: Duration) -> anyhow::Result<()> {
        let nodes = self.supervisor.node_ids();
        let secs = |d: Duration| format!("{:.1}s", d.as_secs_f64());
        match kind {
            FaultKind::Kill | FaultKind::KillLeader => {
                let (victim, why) = self.target(kind == FaultKind::KillLeader).await;
                let delay = self.rng.random_range(Duration::ZERO..=RESTART_DELAY_MAX.min(length));
                self.fault(kind, &[victim], format!("SIGKILL n{victim}{why}, restart after {}", secs(delay)));
                if self.supervisor.health(victim) == Health::Down {
                    // It exited on its own a moment ago (reported as such); nothing to kill.
                    return Ok(());
                }
                self.supervisor.kill(victim)?;
                self.observe();
                self.wait(delay).await;
                self.start(victim)?;
            }
            FaultKind::KillAll => {
                let delay = self.rng.random_range(Duration::ZERO..=KILL_ALL_RESTART_DELAY_MAX);
                self.fault(kind, &nodes, format!("SIGKILL every node, restart after {}", secs(delay)));
                for &id in &nodes {
                    if self.supervisor.health(id) != Health::Down {
                        self.supervisor.kill(id)?;
                    }
                }
                self.observe();
                self.wait(delay).await;
                for &id in &nodes {
                    self.start(id)?;
                }
            }
            FaultKind::Pause | FaultKind::PauseLeader => {
                let (victim, why) = self.target(kind == FaultKind::PauseLeader).await;
                let pause = self.rng.random_range(PAUSE_MIN..=PAUSE_MAX.min(length).max(PAUSE_MIN));
                self.fault(kind, &[victim], format!("SIGSTOP n{victim}{why} for {}", secs(pause)));
                if self.supervisor.health(victim) == Health::Down {
                    return Ok(());
                }
                self.supervisor.pause(victim)?;
                self.observe();
                self.wait(pause).await;
                if self.supervisor.health(victim) == Health::Paused {
                    self.supervisor.resume(victim)?;
                }
            }
            FaultKind::Restart => {
                let victim = *nodes.choose(&mut self.rng).expect("a cluster has nodes");
                self.fault(kind, &[victim], format!("SIGTERM n{victim}, then start it again"));
                if self.supervisor.health(victim) == Health::Down {
                    return Ok(());
                }
                match self.supervisor.terminate(victim, STOP_TIMEOUT).await {
                    Ok(status) if !status.success() => {
                        self.note(format!("n{victim} exited with {status} after SIGTERM"));
                        self.report.unexpected_exits.push((victim, format!("{status} after SIGTERM")));
                    }
                    Ok(_) => {}
                    Err(error) => {
                        self.note(format!("{error:#}"));
                        self.report.hung_on_stop.push(victim);
                    }
                }
                self.observe();
                self.start(victim)?;
            }
            FaultKind::Isolate | FaultKind::IsolateLeader => {
                let (victim, why) = self.target(kind == FaultKind::IsolateLeader).await;
                self.fault(
                    kind,
                    &[victim],
                    format!("cut n{victim}{why} off from every other node for {}", secs(length)),
                );
                for &other in nodes.iter().filter(|id| **id != victim) {
                    self.network.block_both(victim, other)?;
                }
                self.observe();
                self.wait(length).await;
            }
            FaultKind::Split => {
                let mut shuffled = nodes.clone();
                shuffled.shuffle(&mut self.rng);
                let (minority, majority) = shuffled.split_at((nodes.len() - 1) / 2);
                let (minority, majority) = (sorted(minority), sorted(majority));
                self.fault(kind, &minority, format!("split {minority:?} | {majority:?} for {}", secs(length)));
                for &a in &minority {
                    for &b in &majority {
                        self.network.block_both(a, b)?;
                    }
                }
                self.observe();
                self.wait(length).await;
            }
            FaultKind::Ring => {
                let mut ring = nodes.clone();
                ring.shuffle(&mut self.rng);
                let n = ring.len();
                self.fault(
                    kind,
                    &nodes,
                    format!("ring {ring:?}: each node reaches only its neighbours, for {}", secs(length)),
                );
                for i in 0..n {
                    for j in (i + 1)..n {
                        let neighbours = j - i == 1 || (i == 0 && j == n - 1);
                        if !neighbours {
                            self.network.block_both(ring[i], ring[j])?;
                        }
                    }
                }
                self.observe();
                self.wait(length).await;
            }
            FaultKind::OneWay => {
                let mut shuffled = nodes.clone();
                shuffled.shuffle(&mut self.rng);
                // Aim at a leader half of the time: its outgoing heartbeats are what matter.
                let (from, why) =
                    if self.rng.random_bool(0.5) { self.target(true).await } else { (shuffled[0], String::new()) };
                let to = *shuffled.iter().find(|id| **id != from).expect("at least two nodes");
                self.fault(kind, &[from, to], format!("drop what n{from}{why} sends to n{to}, for {}", secs(length)));
                self.network.block(from, Peer::Node(to))?;
                self.observe();
                self.wait(length).await;
            }
            FaultKind::PowerCutAll | FaultKind::PowerCutMinority => {
                let victims = if kind == FaultKind::PowerCutAll {
                    nodes.clone()
                } else {
                    // A leader and random others, a minority in all.
                    let (leader, _) = self.target(true).await;
                    let mut others: Vec<u64> = nodes.iter().copied().filter(|id| *id != leader).collect();
                    others.shuffle(&mut self.rng);
                    let mut victims = vec![leader];
                    victims.extend(others.into_iter().take((nodes.len() - 1) / 2 - 1));
                    sorted(&victims)
                };
                let delay_max =
                    if kind == FaultKind::PowerCutAll { KILL_ALL_RESTART_DELAY_MAX } else { RESTART_DELAY_MAX };
                let delay = self.rng.random_range(Duration::ZERO..=delay_max);
                let (under_load, acks) = self.await_load().await;
                self.fault(
                    kind,
                    &victims,
                    format!(
                        "power cut of {victims:?} ({}, {acks} acks since the previous cut): SIGKILL, drop unsynced \
                         writes, restart after {}",
                        if under_load { "under load" } else { "NOT under load: no acks within the deadline" },
                        secs(delay)
                    ),
                );
                for &id in &victims {
                    if self.supervisor.health(id) != Health::Down {
                        self.supervisor.kill(id)?;
                    }
                }
                self.observe();
                let disks = Arc::clone(&self.power.as_ref().expect("power faults only run with power").disks);
                let mut dropped = Vec::new();
                for &id in &victims {
                    let cut = disks.cut(&self.supervisor, id)?;
                    self.report.unsynced_bytes_dropped += cut.bytes;
                    // Files the kernel had not yet released for the dead process: their
                    // late writes are refused by the filesystem.
                    let open = match cut.open_handles {
                        0 => String::new(),
                        n => format!(" ({n} handles not yet released)"),
                    };
                    dropped.push(format!("n{id} {} B in {} files{open}", cut.bytes, cut.files));
                }
                self.note(format!("dropped unsynced writes: {}", dropped.join(", ")));
                self.wait(delay).await;
                for &id in &victims {
                    self.start(id)?;
                }
            }
            FaultKind::ClientLeader => {
                let (victim, why) = self.target(true).await;
                self.fault(kind, &[victim], format!("cut the workload off from n{victim}{why} for {}", secs(length)));
                self.network.block(victim, Peer::Client)?;
                self.observe();
                self.wait(length).await;
            }
        }
        Ok(())
    }

    /// Waits until the workload is being acknowledged (or [`LOAD_DEADLINE`] passed), then a
    /// random moment more. Returns whether it was, and the acknowledgements since the last cut.
    async fn await_load(&mut self) -> (bool, usize) {
        let power = self.power.as_ref().expect("power faults only run with power");
        let before = power.acks();
        let deadline = Instant::now() + LOAD_DEADLINE;
        let mut under_load = false;
        while Instant::now() < deadline {
            if self.power.as_ref().expect("checked above").acks() >= before + LOAD_ACKS {
                under_load = true;
                break;
            }
            self.wait(Duration::from_millis(100)).await;
        }
        let jitter = self.rng.random_range(Duration::ZERO..=CUT_JITTER_MAX);
        self.wait(jitter).await;
        let power = self.power.as_mut().expect("checked above");
        let now = power.acks();
        let since = now - power.acks_at_last_cut;
        power.acks_at_last_cut = now;
        self.report.cuts_under_load += usize::from(under_load);
        self.report.acks_before_cuts.push(since);
        (under_load, since)
    }

    /// A node to fault: a leader (of a random partition, or of the metadata group a third of
    /// the time) when `leader`, else a random node; with a phrase naming why it was chosen.
    async fn target(&mut self, leader: bool) -> (u64, String) {
        let nodes = self.supervisor.node_ids();
        let random = *nodes.choose(&mut self.rng).expect("a cluster has nodes");
        if !leader {
            return (random, String::new());
        }
        let metadata = self.layout.partitions.is_empty() || self.rng.random_ratio(1, 3);
        let found = if metadata {
            self.metadata_leader().await.map(|id| (id, " (metadata leader)".to_string()))
        } else {
            let partition = self.layout.partitions.choose(&mut self.rng).expect("checked non-empty").clone();
            self.partition_leader(partition.group_id, &partition.replicas)
                .await
                .map(|id| (id, format!(" (leader of p{})", partition.partition)))
        };
        found.unwrap_or((random, " (no leader known; a random node)".to_string()))
    }

    async fn metadata_leader(&self) -> Option<u64> {
        for id in self.supervisor.node_ids() {
            if self.supervisor.health(id) != Health::Running {
                continue;
            }
            if let Ok(status) = probe::status(&self.network.client_address(id)).await
                && status.metadata_leader_id != 0
            {
                return Some(status.metadata_leader_id);
            }
        }
        None
    }

    /// The replica of `group` that claims leadership in the highest term.
    async fn partition_leader(&self, group: u64, replicas: &[u64]) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for &id in replicas {
            if self.supervisor.health(id) != Health::Running {
                continue;
            }
            let Ok(answer) = probe::local_replicas(&self.network.client_address(id), vec![group]).await else {
                continue;
            };
            for replica in answer.replicas.iter().filter(|r| r.group_id == group && r.is_leader) {
                if best.is_none_or(|(term, _)| replica.term > term) {
                    best = Some((replica.term, id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Restores every link, wakes every paused node and starts every stopped one.
    async fn heal_all(&mut self) -> anyhow::Result<()> {
        let cut = !self.network.blocked().is_empty();
        self.network.heal()?;
        for id in self.supervisor.node_ids() {
            match self.supervisor.health(id) {
                Health::Running => {}
                Health::Paused => self.supervisor.resume(id)?,
                Health::Down => self.start(id)?,
            }
        }
        if cut || self.observe() {
            self.recorder.event(json!({ "type": "heal" }));
        }
        Ok(())
    }

    fn start(&mut self, id: u64) -> anyhow::Result<()> {
        if self.supervisor.health(id) == Health::Down {
            self.supervisor.start(id)?;
        }
        self.observe();
        Ok(())
    }

    /// Sleeps for `duration`, reaping nodes that exit on their own meanwhile.
    async fn wait(&mut self, duration: Duration) {
        let deadline = Instant::now() + duration;
        loop {
            self.check_exits();
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep((deadline - now).min(EXIT_CHECK_INTERVAL)).await;
        }
    }

    fn check_exits(&mut self) {
        for (id, status) in self.supervisor.reap_unexpected_exits() {
            self.say(format!(
                "!! n{id} exited on its own with {status}; see {}",
                self.supervisor.log_path(id).display()
            ));
            self.recorder.event(json!({ "type": "crash", "node": id, "status": status.to_string() }));
            self.report.unexpected_exits.push((id, status.to_string()));
            self.observe();
        }
    }

    /// Records the current fault state; returns whether anything is still faulted.
    fn observe(&self) -> bool {
        let snapshot = snapshot_of(&self.supervisor, &self.network);
        let faulted = !snapshot.down.is_empty() || !snapshot.paused.is_empty() || !snapshot.blocked.is_empty();
        self.recorder.fault_state(snapshot, &self.supervisor.node_ids());
        faulted
    }

    fn fault(&self, kind: FaultKind, nodes: &[u64], detail: String) {
        self.say(format!("{kind}: {detail}"));
        self.recorder.event(json!({ "type": "fault", "kind": kind.name(), "nodes": nodes, "detail": detail }));
    }

    fn note(&self, text: String) {
        self.say(text.clone());
        self.recorder.event(json!({ "type": "note", "text": text }));
    }

    fn say(&self, text: String) {
        println!("{:>8.1}s  {text}", self.recorder.now().as_secs_f64());
    }
}

/// The fault state right now, as the supervisor and the network know it.
pub fn snapshot_of(supervisor: &Supervisor, network: &Network) -> Snapshot {
    let mut snapshot = Snapshot {
        at: Duration::ZERO,
        down: Default::default(),
        paused: Default::default(),
        blocked: network.blocked(),
    };
    for id in supervisor.node_ids() {
        match supervisor.health(id) {
            Health::Running => {}
            Health::Paused => {
                snapshot.paused.insert(id);
            }
            Health::Down => {
                snapshot.down.insert(id);
            }
        }
    }
    snapshot
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids
}

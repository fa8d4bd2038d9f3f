//! Fault primitives over turmoil's network controls, the driver's crash/restart and link
//! settings, and the in-memory disks' fault switches. Every primitive notes what it did in
//! the trace and counts itself, and `heal_everything` undoes whatever is still in force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_client::Client;
use flotilla_storage::{MemoryEngine, MemoryFaults};
use flotilla_types::NodeId;
use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::cluster::{self, CLIENT_HOST};
use crate::coverage;
use crate::options::{FaultKind, SimOptions};
use crate::shared::{DriverAction, Shared};

/// Message latency bound outside latency spikes (matches the simulation's builder).
pub const NORMAL_MAX_LATENCY: Duration = Duration::from_millis(20);
/// Longer than the largest election timeout, so a paused leader is replaced.
const PAUSE_MIN: Duration = Duration::from_millis(2_000);

/// A role a fault can target.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// A node picked at random.
    Any,
    /// The metadata group's leader.
    MetadataLeader,
    /// The leader of a partition picked at random.
    PartitionLeader,
}

/// The nemesis' hands.
pub struct Faults {
    nodes: Vec<NodeId>,
    partitions: Vec<(String, u32)>,
    observer: Client,
    engines: Vec<(NodeId, Arc<MemoryEngine>)>,
    shared: Arc<Shared>,
    rng: StdRng,
    /// Node pairs currently cut (both directions or one), to repair at heal time.
    cut: BTreeSet<(String, String)>,
    crashed: BTreeSet<NodeId>,
    paused: BTreeSet<NodeId>,
    /// Nodes moved out of each partition: they may never become its replicas again.
    moved_out: BTreeMap<(String, u32), Vec<NodeId>>,
}

impl Faults {
    pub fn new(
        options: &SimOptions,
        observer: Client,
        engines: Vec<(NodeId, Arc<MemoryEngine>)>,
        shared: Arc<Shared>,
        rng: StdRng,
    ) -> Faults {
        Faults {
            nodes: (1..=options.nodes).collect(),
            partitions: options
                .workload
                .topics
                .iter()
                .flat_map(|t| (0..t.partitions).map(|p| (t.name.clone(), p)))
                .collect(),
            observer,
            engines,
            shared,
            rng,
            cut: BTreeSet::new(),
            crashed: BTreeSet::new(),
            paused: BTreeSet::new(),
            moved_out: BTreeMap::new(),
        }
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    pub fn note(&self, event: impl AsRef<str>) {
        self.shared.note(format!("nemesis: {}", event.as_ref()));
    }

    /// Injects one fault of `kind` for about `span`, then heals it.
    pub async fn inject(&mut self, kind: FaultKind, span: Duration) {
        coverage::hit(&format!("fault:{}", kind.name()));
        match kind {
            FaultKind::IsolateNode => {
                let node = self.find(Role::Any).await;
                self.isolate(node);
                self.hold_for(span).await;
            }
            FaultKind::IsolateLeader => {
                let role = if self.rng.random_bool(0.5) { Role::MetadataLeader } else { Role::PartitionLeader };
                let node = self.find(role).await;
                self.isolate(node);
                self.hold_for(span).await;
            }
            FaultKind::MajoritySplit => {
                let mut nodes = self.nodes.clone();
                nodes.shuffle(&mut self.rng);
                let (minority, majority) = nodes.split_at(nodes.len() / 2);
                for a in minority {
                    for b in majority {
                        self.cut_pair(*a, *b);
                    }
                }
                self.note(format!("split {minority:?} | {majority:?}"));
                self.hold_for(span).await;
            }
            FaultKind::Ring => {
                let mut ring = self.nodes.clone();
                ring.shuffle(&mut self.rng);
                if ring.len() <= 3 {
                    // A bridge: the first two cannot talk; the third reaches both.
                    self.cut_pair(ring[0], ring[1]);
                    self.note(format!("bridge: n{} | n{} via n{}", ring[0], ring[1], ring[2]));
                } else {
                    let n = ring.len();
                    for i in 0..n {
                        for j in (i + 2)..n {
                            if !(i == 0 && j == n - 1) {
                                self.cut_pair(ring[i], ring[j]);
                            }
                        }
                    }
                    self.note(format!("ring {ring:?}: each node reaches only its neighbours"));
                }
                self.hold_for(span).await;
            }
            FaultKind::OneWay => {
                let node = self.find(Role::Any).await;
                let outbound = self.rng.random_bool(0.5);
                for other in self.others(node) {
                    let (from, to) = if outbound { (node, other) } else { (other, node) };
                    turmoil::partition_oneway(cluster::host_name(from), cluster::host_name(to));
                    self.cut.insert((cluster::host_name(from), cluster::host_name(to)));
                }
                coverage::set_partitioned(true);
                self.note(format!(
                    "n{node} can {} its peers",
                    if outbound { "hear but not reach" } else { "reach but not hear" }
                ));
                self.hold_for(span).await;
            }
            FaultKind::ClientToLeader => {
                let node = self.find(Role::PartitionLeader).await;
                turmoil::partition(CLIENT_HOST, cluster::host_name(node));
                self.cut.insert((CLIENT_HOST.to_string(), cluster::host_name(node)));
                self.cut.insert((cluster::host_name(node), CLIENT_HOST.to_string()));
                self.note(format!("clients cut off from leader n{node}"));
                self.hold_for(span).await;
            }
            FaultKind::Flapping => {
                let node = self.find(Role::Any).await;
                let start = tokio::time::Instant::now();
                self.note(format!("n{node} flaps"));
                while start.elapsed() < span {
                    self.isolate(node);
                    let down = Duration::from_millis(self.rng.random_range(100..=2_000));
                    tokio::time::sleep(down).await;
                    self.heal_network();
                    let up = Duration::from_millis(self.rng.random_range(100..=2_000));
                    tokio::time::sleep(up).await;
                }
            }
            FaultKind::Pause => {
                let role = if self.rng.random_bool(0.5) { Role::PartitionLeader } else { Role::Any };
                let node = self.find(role).await;
                self.pause(node, span.max(PAUSE_MIN)).await;
            }
            FaultKind::LatencySpike => {
                let node = self.find(Role::Any).await;
                let max = Duration::from_millis(self.rng.random_range(100..=800));
                self.note(format!("n{node}'s links slow to up to {max:?} per message"));
                self.shared.drive(DriverAction::LinkLatency { node, max });
                tokio::time::sleep(span).await;
                self.shared.drive(DriverAction::LinkLatency { node, max: NORMAL_MAX_LATENCY });
            }
            FaultKind::LinkNoise => {
                let node = self.find(Role::Any).await;
                let rate = self.rng.random_range(0.001..0.01);
                self.note(format!("n{node}'s links drop {:.2}% of messages", rate * 100.0));
                self.shared.drive(DriverAction::LinkFailRate { node, rate });
                tokio::time::sleep(span).await;
                self.shared.drive(DriverAction::LinkFailRate { node, rate: 0.0 });
            }
            FaultKind::CrashNode => {
                let node = self.find(Role::Any).await;
                self.crash_and_restart(&[node], span).await;
            }
            FaultKind::CrashLeader => {
                let role = if self.rng.random_bool(0.5) { Role::MetadataLeader } else { Role::PartitionLeader };
                let node = self.find(role).await;
                self.crash_and_restart(&[node], span).await;
            }
            FaultKind::CrashMinority => {
                let mut nodes = self.nodes.clone();
                nodes.shuffle(&mut self.rng);
                nodes.truncate((self.nodes.len() - 1) / 2);
                self.crash_and_restart(&nodes, span).await;
            }
            FaultKind::PowerLoss => {
                coverage::hit("power_loss");
                let nodes = self.nodes.clone();
                let down = Duration::from_millis(self.rng.random_range(500..=3_000));
                self.crash_and_restart(&nodes, down).await;
            }
            FaultKind::SlowFsync => {
                let count = self.rng.random_range(1..=self.nodes.len());
                let mut nodes = self.nodes.clone();
                nodes.shuffle(&mut self.rng);
                nodes.truncate(count);
                let latency = Duration::from_millis(self.rng.random_range(5..=100));
                self.note(format!("fsync takes {latency:?} on {nodes:?}"));
                coverage::hit("slow_fsync");
                self.set_sync_latency(&nodes, latency);
                tokio::time::sleep(span).await;
                self.set_sync_latency(&nodes, Duration::ZERO);
            }
            FaultKind::MoveReplica => {
                let with_fault = self.rng.random_bool(0.5);
                self.move_replica(false, with_fault, span).await;
            }
        }
    }

    /// Moves the replica of a random partition on one node (the leader's, always with
    /// `leader_first`, else half the time) to a
    /// node outside its replica set, if the cluster has one; with `with_fault`, crashes the
    /// partition's leader or isolates a random node right after the move, for `span`.
    /// Returns whether a move was made.
    pub async fn move_replica(&mut self, leader_first: bool, with_fault: bool, span: Duration) -> bool {
        let (topic, partition) = self.partitions[self.rng.random_range(0..self.partitions.len())].clone();
        let Ok(metadata) = self.observer.metadata(vec![topic.clone()]).await else {
            self.note(format!("no metadata for {topic}: no replica move"));
            tokio::time::sleep(span).await;
            return false;
        };
        let Some(layout) = metadata.topics.iter().flat_map(|t| &t.partitions).find(|p| p.partition == partition) else {
            tokio::time::sleep(span).await;
            return false;
        };
        let (replicas, leader) = (layout.replicas.clone(), layout.leader_id);
        // A node that never held this partition: a node moved out can never return.
        let former = self.moved_out.get(&(topic.clone(), partition)).cloned().unwrap_or_default();
        let outside: Vec<NodeId> =
            self.nodes.iter().copied().filter(|n| !replicas.contains(n) && !former.contains(n)).collect();
        if outside.is_empty() {
            self.note(format!(
                "{topic}/{partition}: no node outside its replicas {replicas:?} (and never one of them): no move"
            ));
            tokio::time::sleep(span).await;
            return false;
        }
        let to = outside[self.rng.random_range(0..outside.len())];
        let from = if replicas.contains(&leader) && (leader_first || self.rng.random_bool(0.5)) {
            leader
        } else {
            replicas[self.rng.random_range(0..replicas.len())]
        };
        match self.observer.move_replica(&topic, partition, from, to).await {
            Ok(()) => {
                self.note(format!("move {topic}/{partition} from n{from} to n{to} (leader n{leader})"));
                self.moved_out.entry((topic.clone(), partition)).or_default().push(from);
            }
            Err(err) => {
                // An ambiguous failure may still have moved it: remember `from` as gone anyway.
                self.note(format!("move {topic}/{partition} from n{from} to n{to} failed: {err}"));
                self.moved_out.entry((topic.clone(), partition)).or_default().push(from);
                tokio::time::sleep(span).await;
                return false;
            }
        }
        if with_fault {
            coverage::hit("membership_change_during_fault");
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..=500))).await;
            if self.rng.random_bool(0.5) {
                let node =
                    if self.crashed.contains(&leader) || leader == 0 { self.find(Role::Any).await } else { leader };
                self.crash_and_restart(&[node], span).await;
            } else {
                let node = self.find(Role::Any).await;
                self.isolate(node);
                self.hold_for(span).await;
            }
        } else {
            tokio::time::sleep(span).await;
        }
        true
    }

    /// The node playing `role` now, or a node picked by the seed if the cluster cannot say.
    pub async fn find(&mut self, role: Role) -> NodeId {
        let found = match role {
            Role::Any => None,
            Role::MetadataLeader => self.observer.cluster_status().await.ok().map(|s| s.metadata_leader_id),
            Role::PartitionLeader => {
                let (topic, partition) = self.partitions[self.rng.random_range(0..self.partitions.len())].clone();
                self.observer.metadata(vec![topic]).await.ok().and_then(|metadata| {
                    metadata
                        .topics
                        .iter()
                        .flat_map(|t| &t.partitions)
                        .find(|p| p.partition == partition)
                        .map(|p| p.leader_id)
                })
            }
        };
        match found {
            Some(id) if self.nodes.contains(&id) && !self.crashed.contains(&id) => id,
            _ => {
                let up: Vec<NodeId> = self.nodes.iter().copied().filter(|n| !self.crashed.contains(n)).collect();
                let pool = if up.is_empty() { &self.nodes } else { &up };
                let node = pool[self.rng.random_range(0..pool.len())];
                if !matches!(role, Role::Any) {
                    self.note(format!("no node is known to play {role:?}; picked n{node}"));
                }
                node
            }
        }
    }

    /// The nodes other than `node`.
    pub fn others(&self, node: NodeId) -> Vec<NodeId> {
        self.nodes.iter().copied().filter(|n| *n != node).collect()
    }

    /// Cuts the link between `a` and `b` both ways (each still reaches everyone else).
    pub fn cut_pair(&mut self, a: NodeId, b: NodeId) {
        turmoil::partition(cluster::host_name(a), cluster::host_name(b));
        self.cut.insert((cluster::host_name(a), cluster::host_name(b)));
        self.cut.insert((cluster::host_name(b), cluster::host_name(a)));
        coverage::set_partitioned(true);
    }

    /// Cuts `node` off from every other node (clients still reach it).
    pub fn isolate(&mut self, node: NodeId) {
        for other in self.others(node) {
            self.cut_pair(node, other);
        }
        self.note(format!("isolate n{node}"));
    }

    /// Keeps the current network faults for `span`, then repairs them.
    pub async fn hold_for(&mut self, span: Duration) {
        tokio::time::sleep(span).await;
        self.heal_network();
    }

    /// Repairs every cut link.
    pub fn heal_network(&mut self) {
        for (from, to) in std::mem::take(&mut self.cut) {
            turmoil::repair_oneway(from.as_str(), to.as_str());
        }
        coverage::set_partitioned(!self.paused.is_empty());
    }

    /// Holds every message to and from `node` for `span`, then releases them all at once:
    /// its peers see it stop, then get a burst of stale messages (SIGSTOP, then SIGCONT).
    pub async fn pause(&mut self, node: NodeId, span: Duration) {
        self.hold_node(node);
        tokio::time::sleep(span).await;
        self.release_node(node);
    }

    fn node_links(&self, node: NodeId) -> Vec<String> {
        self.others(node).into_iter().map(cluster::host_name).chain([CLIENT_HOST.to_string()]).collect()
    }

    /// Starts holding every message to and from `node`.
    pub fn hold_node(&mut self, node: NodeId) {
        let host = cluster::host_name(node);
        for other in self.node_links(node) {
            turmoil::hold(host.as_str(), other.as_str());
        }
        self.paused.insert(node);
        coverage::set_partitioned(true);
        self.note(format!("pause n{node}"));
    }

    /// Delivers everything held for `node`.
    pub fn release_node(&mut self, node: NodeId) {
        let host = cluster::host_name(node);
        for other in self.node_links(node) {
            turmoil::release(host.as_str(), other.as_str());
        }
        self.paused.remove(&node);
        coverage::set_partitioned(!self.cut.is_empty() || !self.paused.is_empty());
        coverage::hit("node_paused");
        self.note(format!("resume n{node}"));
    }

    /// Crashes `nodes` at once and restarts them after `down`.
    pub async fn crash_and_restart(&mut self, nodes: &[NodeId], down: Duration) {
        self.crash(nodes);
        tokio::time::sleep(down).await;
        self.restart(nodes);
    }

    /// Crashes `nodes`, each losing a torn tail of its un-synced writes.
    pub fn crash(&mut self, nodes: &[NodeId]) {
        for node in nodes {
            if self.crashed.insert(*node) {
                self.shared.drive(DriverAction::Crash(*node));
            }
        }
        self.note(format!("crash {nodes:?}"));
    }

    /// Restarts crashed `nodes`.
    pub fn restart(&mut self, nodes: &[NodeId]) {
        for node in nodes {
            if self.crashed.remove(node) {
                self.shared.drive(DriverAction::Restart(*node));
            }
        }
        self.note(format!("restart {nodes:?}"));
    }

    /// Erases the disk of `node`, which must be crashed: a disk replaced by an empty one.
    /// Restarted, the node must refuse to start under its old id (it is registered, so it
    /// would be an empty voter), so it is retired: the final drain no longer expects it to
    /// answer, and the rest must still hold every acknowledged record.
    pub fn wipe(&mut self, node: NodeId) {
        assert!(self.crashed.contains(&node), "n{node} must be crashed before its disk is wiped");
        self.shared.history.lock().retired_nodes.insert(node);
        self.shared.drive(DriverAction::Wipe(node));
        self.note(format!("wipe the disk of n{node}; it is retired"));
    }

    /// Makes every fsync of `node`'s disk fail (EIO) until [`Faults::repair_disk`]: the node
    /// must stop itself rather than stay up on a disk it cannot trust.
    pub fn fail_disk(&mut self, node: NodeId) {
        if let Some((_, engine)) = self.engines.iter().find(|(id, _)| *id == node) {
            engine.set_faults(MemoryFaults { sync_fails: true, ..engine.faults() });
        }
        self.note(format!("every fsync of n{node} fails from now on"));
    }

    /// Repairs `node`'s disk: fsyncs succeed again (the node, stopped, needs a restart).
    pub fn repair_disk(&mut self, node: NodeId) {
        if let Some((_, engine)) = self.engines.iter().find(|(id, _)| *id == node) {
            engine.set_faults(MemoryFaults { sync_fails: false, ..engine.faults() });
        }
        self.note(format!("the disk of n{node} is repaired"));
    }

    fn set_sync_latency(&self, nodes: &[NodeId], latency: Duration) {
        for (id, engine) in &self.engines {
            if nodes.contains(id) {
                engine.set_faults(MemoryFaults { sync_latency: latency, ..engine.faults() });
            }
        }
    }

    /// Undoes every fault still in force: links repaired, latency and loss back to normal,
    /// disks fast, crashed nodes restarted.
    pub async fn heal_everything(&mut self) {
        for node in self.paused.clone() {
            self.release_node(node);
        }
        self.heal_network();
        for node in self.nodes.clone() {
            self.shared.drive(DriverAction::LinkLatency { node, max: NORMAL_MAX_LATENCY });
            self.shared.drive(DriverAction::LinkFailRate { node, rate: 0.0 });
        }
        let nodes = self.nodes.clone();
        self.set_sync_latency(&nodes, Duration::ZERO);
        for node in nodes {
            self.repair_disk(node);
        }
        let crashed: Vec<NodeId> = self.crashed.iter().copied().collect();
        if !crashed.is_empty() {
            self.restart(&crashed);
        }
        // Let the driver run the queued actions before the workload is told.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

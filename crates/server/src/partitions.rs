//! `Partitions`: the partition replicas this node hosts, kept in line with the catalogue's
//! placement, and the reporter that tells the metadata group which replicas lead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_broker::{
    PartitionCommand, PartitionConfig, PartitionEntry, PartitionReader, PartitionStateMachine, PartitionStatus,
    PartitionWatermarks,
};
use flotilla_metadata::{MetaCommand, MetadataState};
use flotilla_raft::openraft::{Raft, ServerState};
use flotilla_raft::{GroupLauncher, NodeInfo, PurgeMode, RaftConfig, StateMachineStore};
use flotilla_storage::{Direction, Space, WriteBatch, group_prefix_range};
use flotilla_types::{Clock, GroupId, NodeId, RetentionPolicy};
use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};

use crate::NodeError;
use crate::entry_clock::EntryClock;
use crate::meta::Meta;
use crate::partition_driver::{self, Driver};

/// A partition group's Raft handle.
pub type PartitionRaft = Raft<PartitionConfig, StateMachineStore<PartitionConfig, PartitionStateMachine>>;

/// Leader reports queued before the reporter applies backpressure.
const REPORT_QUEUE: usize = 4096;
/// How long one leader report may take to commit before it is retried.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// One local replica of a partition.
pub struct Replica {
    pub group: GroupId,
    pub raft: PartitionRaft,
    pub reader: PartitionReader,
    /// What the partition published after its last apply batch.
    pub status: watch::Receiver<PartitionStatus>,
    /// Keeps each idempotent producer's batches in sequence order on their way into Raft.
    pub proposal_order: crate::proposal_order::ProposalOrder,
    /// The node's wall clock and this leader's readings of it for entries.
    clock: Arc<dyn Clock>,
    entry_clock: Arc<EntryClock>,
    /// A `Configure` proposal is in flight (one at a time per replica).
    configuring: std::sync::atomic::AtomicBool,
}

impl Replica {
    /// The offsets the replica holds, as of its last apply.
    pub fn watermarks(&self) -> PartitionWatermarks {
        self.status.borrow().watermarks
    }

    /// The clock reading for an entry this replica proposes now, as the leader
    /// ([`EntryClock`]).
    pub fn stamp(&self) -> i64 {
        stamp(&self.raft, &self.entry_clock, self.clock.as_ref(), &self.status)
    }

    /// The leader as this replica sees it, with its addresses.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        use flotilla_raft::openraft::async_runtime::watch::WatchReceiver;
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let leader = metrics.current_leader?;
        let info = metrics.membership_config.membership().get_node(&leader).cloned()?;
        Some((leader, info))
    }

    /// The group's membership as this replica sees it: voters, learners, and whether it is
    /// settled (uniform, not joint, and applied, hence committed).
    pub fn membership(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>, bool) {
        use flotilla_raft::openraft::async_runtime::watch::WatchReceiver;
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let settled = membership.get_joint_config().len() == 1
            && metrics.membership_config.log_id().as_ref() <= metrics.last_applied.as_ref();
        (voters, learners, settled)
    }

    /// Whether this replica is the leader right now (by its own metrics).
    pub fn is_leader(&self, node_id: NodeId) -> bool {
        use flotilla_raft::openraft::async_runtime::watch::WatchReceiver;
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics.state == ServerState::Leader && metrics.current_leader == Some(node_id)
    }
}

/// A leader's clock reading for its next entry: the term's, bounded by [`EntryClock`].
fn stamp(
    raft: &PartitionRaft,
    entry_clock: &EntryClock,
    clock: &dyn Clock,
    status: &watch::Receiver<PartitionStatus>,
) -> i64 {
    use flotilla_raft::openraft::async_runtime::watch::WatchReceiver;
    let term = raft.metrics().borrow_watched().current_term;
    entry_clock.stamp(term, clock.now_ms(), status.borrow().now_ms)
}

/// The partition replicas of this node.
pub struct Partitions {
    launcher: Arc<GroupLauncher>,
    raft_config: RaftConfig,
    clock: Arc<dyn Clock>,
    replicas: RwLock<BTreeMap<GroupId, Arc<Replica>>>,
    /// Groups this process retired after a move: never started again.
    retired: parking_lot::Mutex<BTreeSet<GroupId>>,
    reports: mpsc::Sender<(GroupId, NodeId, u64)>,
}

impl Partitions {
    /// The partition manager, and the receiver of leader reports for [`run_leader_reporter`].
    pub fn new(
        launcher: Arc<GroupLauncher>,
        raft_config: RaftConfig,
        clock: Arc<dyn Clock>,
    ) -> (Arc<Partitions>, mpsc::Receiver<(GroupId, NodeId, u64)>) {
        let (reports, rx) = mpsc::channel(REPORT_QUEUE);
        let partitions = Arc::new(Partitions {
            launcher,
            raft_config,
            clock,
            replicas: RwLock::new(BTreeMap::new()),
            retired: parking_lot::Mutex::new(BTreeSet::new()),
            reports,
        });
        (partitions, rx)
    }

    /// The local replica of `group`, if this node hosts one.
    pub fn get(&self, group: GroupId) -> Option<Arc<Replica>> {
        self.replicas.read().get(&group).cloned()
    }

    /// Every local replica.
    pub fn all(&self) -> Vec<Arc<Replica>> {
        let mut all: Vec<_> = self.replicas.read().values().cloned().collect();
        all.sort_by_key(|r| r.group);
        all
    }

    /// Starts replicas the catalogue places here and stops those of deleted topics.
    ///
    /// A replica this node was moved out of keeps running (and is started again after a
    /// restart, if its copy is still on disk) until the group's committed membership no
    /// longer has this node ([`crate::membership`] then calls [`Partitions::retire`]): until
    /// then it may still be a voter the group needs for a quorum.
    pub async fn reconcile(&self, catalogue: &MetadataState) {
        let me = self.launcher.node_id();
        let node_info = |id: &NodeId| {
            catalogue
                .nodes
                .get(id)
                .map(|n| NodeInfo { peer_address: n.peer_address.clone(), client_address: n.client_address.clone() })
                .unwrap_or_default()
        };
        let mut wanted: BTreeMap<GroupId, Option<BTreeMap<NodeId, NodeInfo>>> = BTreeMap::new();
        let mut leaving: BTreeSet<GroupId> = BTreeSet::new();
        for (group, topic, partition, replicas) in catalogue.partition_groups() {
            let p = partition as usize;
            let initial = topic.initial_replicas.get(p).map_or(replicas, Vec::as_slice);
            if !replicas.contains(&me) {
                if topic.former_replicas.get(p).is_some_and(|former| former.contains(&me)) {
                    leaving.insert(group);
                }
                continue;
            }
            // Only the original replicas bootstrap the group, all with the same membership.
            // A node that joined by a move starts empty and waits for the leader to add it.
            let bootstrap = initial.contains(&me).then(|| initial.iter().map(|id| (*id, node_info(id))).collect());
            wanted.insert(group, bootstrap);
        }
        let existing: Vec<GroupId> = self.replicas.read().keys().copied().collect();
        for group in existing {
            if !wanted.contains_key(&group) && !leaving.contains(&group) {
                self.remove(group, "removed with its topic").await;
            }
        }
        for group in leaving {
            // After a restart: a copy still on disk keeps serving until it is confirmed
            // removed; without one there is nothing to serve (and an empty replica must not
            // vote).
            if self.get(group).is_none() && !self.retired.lock().contains(&group) && self.has_local_copy(group) {
                wanted.insert(group, None);
            }
        }
        self.configure_leaders(catalogue);
        for (group, bootstrap) in wanted {
            if self.get(group).is_some() || self.retired.lock().contains(&group) {
                continue;
            }
            match self.start(group, bootstrap).await {
                Ok(replica) => {
                    self.replicas.write().insert(group, replica);
                }
                Err(err) => tracing::error!(%group, error = %err, "starting partition replica failed"),
            }
        }
    }

    /// Brings each topic's retention into the partitions this node leads whose applied
    /// retention differs: a `Configure` entry, so every replica applies a change at the same
    /// position in the log. Runs on every catalogue change, which includes every leader report,
    /// so a new leader catches up with the catalogue as soon as it has reported itself.
    fn configure_leaders(&self, catalogue: &MetadataState) {
        let me = self.launcher.node_id();
        for replica in self.all() {
            let Some((topic_id, _)) = replica.group.partition() else { continue };
            let Some(topic) = catalogue.topic_by_id(topic_id) else { continue };
            let wanted = topic.config.retention();
            if replica.status.borrow().retention == wanted || !replica.is_leader(me) {
                continue;
            }
            if replica.configuring.swap(true, std::sync::atomic::Ordering::AcqRel) {
                continue;
            }
            tokio::spawn(configure(Arc::clone(&replica), wanted, me));
        }
    }

    /// Whether the engine holds Raft state of `group` (a vote or log entries).
    fn has_local_copy(&self, group: GroupId) -> bool {
        let range = group_prefix_range(group.0, b"");
        [Space::RaftState, Space::RaftLog].into_iter().any(|space| {
            self.launcher
                .engine()
                .scan(space, range.start.as_slice()..range.end.as_slice(), Direction::Forward, 1)
                .is_ok_and(|found| !found.is_empty())
        })
    }

    async fn start(
        &self,
        group: GroupId,
        bootstrap: Option<BTreeMap<NodeId, NodeInfo>>,
    ) -> Result<Arc<Replica>, NodeError> {
        let storage = |err: std::io::Error| flotilla_raft::RaftGlueError::Start { group, message: err.to_string() };
        let engine = Arc::clone(self.launcher.engine());
        let (state_machine, watches) = PartitionStateMachine::open(group, Arc::clone(&engine)).map_err(storage)?;
        let reader = state_machine.reader();
        let app = Arc::new(parking_lot::Mutex::new(state_machine));
        let config = self.raft_config.partition(group)?;
        let purge = PurgeMode::KeepRecords(watches.floor.clone());
        let raft = self.launcher.launch(group, app, purge, config, self.raft_config.append_bytes_max).await?;
        let node_id = self.launcher.node_id();
        // Every original replica bootstraps the group with the same membership: the identical
        // first entry on each is what makes that safe, and it means no single replica has to
        // be up for the partition to come to life.
        if let Some(members) = bootstrap
            && !raft.is_initialized().await.unwrap_or(true)
            && let Err(err) = raft.initialize(members).await
        {
            tracing::debug!(%group, error = %err, "partition already initialized");
        }
        tokio::spawn(report_leadership(node_id, group, raft.clone(), self.reports.clone()));
        let entry_clock = Arc::new(EntryClock::default());
        let stamp = {
            let (raft, entry_clock, clock, status) =
                (raft.clone(), Arc::clone(&entry_clock), Arc::clone(&self.clock), watches.status.clone());
            Arc::new(move || stamp(&raft, &entry_clock, clock.as_ref(), &status))
        };
        tokio::spawn(partition_driver::run(Driver {
            node_id,
            raft: raft.clone(),
            maintenance: watches.maintenance,
            clock: Arc::clone(&self.clock),
            stamp,
        }));
        tracing::info!(%group, "partition replica started");
        Ok(Arc::new(Replica {
            group,
            raft,
            reader,
            status: watches.status,
            proposal_order: Default::default(),
            clock: Arc::clone(&self.clock),
            entry_clock,
            configuring: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Stops the local replica of `group`, which the group's committed membership no longer
    /// has (the node was moved out of the partition), and deletes its copy: the move was an
    /// explicit admin command and the node can never rejoin the group under its id, so the
    /// copy would only take space. The group is not started again in this process.
    pub async fn retire(&self, group: GroupId) {
        self.retired.lock().insert(group);
        self.remove(group, "moved away: the group's committed membership no longer has this node").await;
    }

    async fn remove(&self, group: GroupId, why: &str) {
        let Some(replica) = self.replicas.write().remove(&group) else { return };
        self.launcher.registry().remove(group);
        if let Err(err) = replica.raft.shutdown().await {
            tracing::warn!(%group, error = %err, "stopping partition replica");
        }
        // Only an explicit topic delete or a completed move gets here: the copy goes.
        let mut batch = WriteBatch::new();
        for space in [Space::RaftLog, Space::RaftState, Space::StateMachine] {
            let range = group_prefix_range(group.0, b"");
            batch.delete_range(space, range.start.clone(), range.end.clone());
            self.launcher.reclaimer().deleted(space, range.start, range.end);
        }
        if let Err(err) = self.launcher.engine().write(batch) {
            tracing::error!(%group, error = %err, "deleting partition data");
        }
        tracing::info!(%group, "partition replica removed ({why})");
    }

    /// Stops every replica (graceful shutdown).
    pub async fn shutdown(&self) {
        for replica in self.all() {
            let _ = replica.raft.shutdown().await;
        }
    }
}

/// Attempts at one `Configure` before waiting for the next catalogue change, and the pause
/// between them: a proposal right after an election can be refused while leadership settles.
const CONFIGURE_ATTEMPTS: u32 = 40;
const CONFIGURE_RETRY: Duration = Duration::from_millis(250);

/// Proposes `retention` into the partition `replica` leads, until the partition applies it,
/// the replica stops leading (the next leader configures it once it has reported itself), or
/// the attempts run out (the next catalogue change tries again).
async fn configure(replica: Arc<Replica>, retention: RetentionPolicy, node_id: NodeId) {
    for _ in 0..CONFIGURE_ATTEMPTS {
        if replica.status.borrow().retention == retention || !replica.is_leader(node_id) {
            break;
        }
        let entry = PartitionEntry { now_ms: replica.stamp(), command: PartitionCommand::Configure { retention } };
        match tokio::time::timeout(REPORT_TIMEOUT, replica.raft.client_write(entry)).await {
            Ok(Ok(_)) => {
                flotilla_types::coverage!("partition_configured");
                break;
            }
            Ok(Err(err)) => tracing::debug!(group = %replica.group, error = %err, "configuration not applied yet"),
            Err(_) => tracing::debug!(group = %replica.group, "configuration not committed within {REPORT_TIMEOUT:?}"),
        }
        tokio::time::sleep(CONFIGURE_RETRY).await;
    }
    replica.configuring.store(false, std::sync::atomic::Ordering::Release);
}

/// Watches one replica and queues a report each time it becomes leader in a new term.
async fn report_leadership(
    node_id: NodeId,
    group: GroupId,
    raft: PartitionRaft,
    reports: mpsc::Sender<(GroupId, NodeId, u64)>,
) {
    use flotilla_raft::openraft::async_runtime::watch::WatchReceiver;
    let mut metrics = raft.metrics();
    let mut reported_term = None;
    loop {
        let report = {
            let current = metrics.borrow_and_update();
            let leading = current.state == ServerState::Leader && current.current_leader == Some(node_id);
            (leading && reported_term != Some(current.current_term)).then_some(current.current_term)
        };
        if let Some(term) = report {
            flotilla_types::coverage!("partition_leader_elected");
            if reports.send((group, node_id, term)).await.is_err() {
                return;
            }
            reported_term = Some(term);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Commits queued leader reports to the metadata group, many per proposal.
pub async fn run_leader_reporter(meta: Arc<Meta>, mut rx: mpsc::Receiver<(GroupId, NodeId, u64)>) {
    let mut pending: BTreeMap<GroupId, (NodeId, u64)> = BTreeMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some((group, node, term)) => {
                    pending.insert(group, (node, term));
                }
                None => return,
            }
        }
        while let Ok((group, node, term)) = rx.try_recv() {
            pending.insert(group, (node, term));
        }
        let reports: Vec<_> = pending.iter().map(|(g, (n, t))| (*g, *n, *t)).collect();
        match meta.propose(MetaCommand::ReportLeaders { reports }, REPORT_TIMEOUT).await {
            Ok(_) => pending.clear(),
            Err(err) => {
                tracing::debug!(error = %err.message, "leader report not committed yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

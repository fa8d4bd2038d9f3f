//! `GroupLauncher`: the one place a Raft group is assembled on a node — its log and state
//! machine over the shared engine, its network over the shared transport, openraft's RNG
//! seeded per group, and its registration for incoming messages.

use std::sync::Arc;

use flotilla_storage::{Engine, Reclaimer, SyncHandle};
use flotilla_types::{GroupId, NodeId};
use openraft::Raft;

use crate::{
    GroupConfig, GroupNetworkFactory, GroupRegistry, GroupStateMachine, LogStore, PurgeMode, RaftEndpoint,
    RaftGlueError, StateMachineStore, Transport, scoped,
};

/// What every group on a node shares.
pub struct GroupLauncher {
    node_id: NodeId,
    engine: Arc<dyn Engine>,
    syncer: SyncHandle,
    transport: Arc<Transport>,
    registry: Arc<GroupRegistry>,
    reclaimer: Arc<Reclaimer>,
    seed: u64,
}

impl GroupLauncher {
    /// A launcher for node `node_id`; `seed` seeds openraft's RNG (fixed in simulation).
    pub fn new(
        node_id: NodeId,
        engine: Arc<dyn Engine>,
        syncer: SyncHandle,
        transport: Arc<Transport>,
        registry: Arc<GroupRegistry>,
        reclaimer: Arc<Reclaimer>,
        seed: u64,
    ) -> Self {
        GroupLauncher { node_id, engine, syncer, transport, registry, reclaimer, seed }
    }

    /// The node's record of deleted ranges whose space the engine should give back.
    pub fn reclaimer(&self) -> &Arc<Reclaimer> {
        &self.reclaimer
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The node's storage engine.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The node's registry of local groups.
    pub fn registry(&self) -> &Arc<GroupRegistry> {
        &self.registry
    }

    /// Starts `group` with state machine `app` and registers it for incoming messages.
    pub async fn launch<C: GroupConfig, A: GroupStateMachine<C>>(
        &self,
        group: GroupId,
        app: Arc<parking_lot::Mutex<A>>,
        purge_mode: PurgeMode,
        config: Arc<openraft::Config>,
        read_budget_bytes: usize,
    ) -> Result<Raft<C, StateMachineStore<C, A>>, RaftGlueError> {
        let failed = |message: String| RaftGlueError::Start { group, message };
        let store = StateMachineStore::open(group, Arc::clone(&self.engine), app).map_err(|e| failed(e.to_string()))?;
        let log = LogStore::new(
            group,
            Arc::clone(&self.engine),
            self.syncer.clone(),
            purge_mode,
            read_budget_bytes,
            Arc::clone(&self.reclaimer),
        );
        let network = GroupNetworkFactory::new(group, Arc::clone(&self.transport));
        let raft = scoped(group_seed(self.seed, group), Raft::new(self.node_id, config, network, log, store))
            .await
            .map_err(|e| failed(e.to_string()))?;
        self.registry.insert(group, Arc::new(RaftEndpoint::new(raft.clone(), group, Arc::clone(&self.engine))));
        Ok(raft)
    }
}

/// openraft's RNG seed for `group`: distinct per group, fixed for a fixed node seed.
fn group_seed(seed: u64, group: GroupId) -> u64 {
    seed ^ group.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

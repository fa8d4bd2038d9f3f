//! `NodeContext`: what every part of a running node shares (its id, the metadata handle, the
//! local partition replicas, channels to peers, limits, the clock, the engine), with the
//! lookups the services and background tasks all need. It sits below the API layer: services
//! and tasks use it; it uses neither.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use flotilla_metadata::TopicRecord;
use flotilla_raft::NodeInfo;
use flotilla_storage::Engine;
use flotilla_types::{Clock, ErrorCode, GroupId, Limits, NodeId, PartitionId};

use crate::api_error::ApiError;
use crate::meta::Meta;
use crate::partitions::Partitions;
use crate::peers::Peers;

/// What every service and background task of a node needs.
pub struct NodeContext {
    pub node_id: NodeId,
    pub meta: Arc<Meta>,
    pub partitions: Arc<Partitions>,
    pub peers: Peers,
    pub limits: Limits,
    pub clock: Arc<dyn Clock>,
    pub engine: Arc<dyn Engine>,
    /// Rotates the partition of keyless records (one partition per request).
    pub round_robin: AtomicU32,
    /// Idempotent batches this node's partitions answered from the producer table instead of
    /// appending them again (client retries whose first attempt had landed).
    pub produce_duplicates: AtomicU64,
    /// When the group coordinator (this node, while it leads the metadata group) last heard
    /// from each consumer-group member.
    pub sessions: parking_lot::Mutex<crate::coordinator::Sessions>,
}

impl NodeContext {
    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Result<TopicRecord, ApiError> {
        self.meta
            .catalogue()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownTopic, format!("topic {name:?} does not exist")))
    }

    /// Checks that `partition` exists in `topic`.
    pub fn check_partition(&self, topic: &TopicRecord, partition: PartitionId) -> Result<(), ApiError> {
        if partition >= topic.partitions {
            return Err(ApiError::new(
                ErrorCode::PartitionOutOfRange,
                format!(
                    "topic {:?} has {} partitions (0..={}); partition {partition} does not exist",
                    topic.name,
                    topic.partitions,
                    topic.partitions - 1
                ),
            ));
        }
        Ok(())
    }

    /// The leader of `group`: the local replica's view, else the catalogue's hint.
    pub fn leader_of(&self, group: GroupId) -> Option<(NodeId, NodeInfo)> {
        if let Some(replica) = self.partitions.get(group)
            && let Some(leader) = replica.leader()
        {
            return Some(leader);
        }
        let catalogue = self.meta.catalogue();
        let hint = catalogue.leaders.get(&group)?;
        let node = catalogue.nodes.get(&hint.node)?;
        Some((
            hint.node,
            NodeInfo { peer_address: node.peer_address.clone(), client_address: node.client_address.clone() },
        ))
    }

    /// Runs a read of the engine: on the blocking pool when the engine's calls block (RocksDB),
    /// inline when they never do (the in-memory engine, which must stay on the simulation's
    /// scheduler to replay deterministically).
    pub async fn read_storage<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        if self.engine.sync_blocks() {
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|err| ApiError::new(ErrorCode::Internal, format!("storage read task failed: {err}")))
        } else {
            Ok(read())
        }
    }

    /// Client address of a registered node.
    pub fn client_address_of(&self, node: NodeId) -> Option<String> {
        self.meta.catalogue().nodes.get(&node).map(|n| n.client_address.clone())
    }
}

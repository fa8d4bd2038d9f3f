//! The public gRPC API (`flotilla.v1`): one module per service over a shared [`NodeState`].

mod admin;
mod cluster;
mod error;
mod fetch;
mod group;
mod produce;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use flotilla_metadata::TopicRecord;
use flotilla_raft::NodeInfo;
use flotilla_storage::Engine;
use flotilla_types::{Clock, ErrorCode, GroupId, Limits, NodeId, PartitionId};

pub use admin::AdminApi;
pub use cluster::ClusterApi;
pub use error::ApiError;
pub use fetch::FetchApi;
pub use group::{GroupApi, group_error};
pub use produce::ProduceApi;

use crate::meta::Meta;
use crate::partitions::Partitions;
use crate::peers::Peers;

/// Request header marking a request one node forwarded to another. A forwarded request
/// that still misses the leader gets `NotLeader` back instead of bouncing again.
pub const FORWARDED_HEADER: &str = "x-flotilla-forwarded";

/// How long a request waits for a partition leader to emerge (an election after a crash).
pub const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Bound on a request forwarded to another node.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a metadata change.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between attempts while waiting for a leader.
pub const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// What every service needs.
pub struct NodeState {
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

impl NodeState {
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

/// Whether `request` was forwarded by another node.
pub fn is_forwarded<T>(request: &tonic::Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_HEADER)
}

/// Wraps `message` as a request forwarded by this node, with a deadline.
pub fn forwarded<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    request.set_timeout(timeout);
    request
}

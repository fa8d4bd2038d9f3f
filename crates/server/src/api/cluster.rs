//! `ClusterService`: membership and liveness, routing metadata, and this node's replicas.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_broker::replica_digest;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_proto::v1::cluster_service_server::ClusterService;
use flotilla_proto::v1::{
    LocalReplica, LocalReplicasRequest, LocalReplicasResponse, MetadataRequest, MetadataResponse, Node,
    PartitionMetadata, ReplicaDigestRequest, ReplicaDigestResponse, StatusRequest, StatusResponse, TopicMetadata,
};
use flotilla_raft::openraft::Instant as _;
use flotilla_raft::openraft::ServerState;
use flotilla_raft::openraft::async_runtime::watch::WatchReceiver;
use flotilla_types::{ErrorCode, GroupId};
use tonic::{Request, Response, Status};

use super::convert::topic_message;
use crate::api_error::ApiError;
use crate::context::NodeContext;
use crate::routing::{FORWARD_TIMEOUT, forwarded, is_forwarded};

/// A node that acknowledged the metadata leader within this window counts as live.
const LIVENESS_WINDOW: Duration = Duration::from_secs(3);

/// Serves `flotilla.v1.ClusterService`.
pub struct ClusterApi {
    state: Arc<NodeContext>,
}

impl ClusterApi {
    /// The service over `state`.
    pub fn new(state: Arc<NodeContext>) -> Self {
        ClusterApi { state }
    }
}

/// This node's report on its replicas of `groups` (all when empty).
pub fn local_replicas(state: &NodeContext, groups: &[u64]) -> Vec<LocalReplica> {
    let wanted: BTreeSet<u64> = groups.iter().copied().collect();
    state
        .partitions
        .all()
        .into_iter()
        .filter(|replica| wanted.is_empty() || wanted.contains(&replica.group.0))
        .map(|replica| {
            let metrics = replica.raft.metrics();
            let metrics = metrics.borrow_watched();
            let status = *replica.status.borrow();
            let marks = status.watermarks;
            let membership = metrics.membership_config.membership();
            let membership_settled = membership.get_joint_config().len() == 1
                && metrics.membership_config.log_id().as_ref() <= metrics.last_applied.as_ref();
            LocalReplica {
                members: membership.nodes().map(|(id, _)| *id).collect(),
                membership_settled,
                group_id: replica.group.0,
                is_leader: metrics.state == ServerState::Leader,
                term: metrics.current_term,
                leader_id: metrics.current_leader.unwrap_or(0),
                log_start_offset: marks.log_start,
                log_end_offset: marks.high_watermark,
                applied_index: metrics.last_applied.as_ref().map_or(0, |id| id.index),
                retained_bytes: status.retained_bytes,
            }
        })
        .collect()
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let state = &self.state;
        let is_forwarded = is_forwarded(&request);
        let metrics = state.meta.raft().metrics().borrow_watched().clone();
        let leader = metrics.current_leader;
        // Liveness is judged by the metadata leader from Raft acknowledgements; other nodes
        // ask it.
        if leader.is_some()
            && leader != Some(state.node_id)
            && !is_forwarded
            && let Some((_, info)) = state.meta.leader()
            && !info.client_address.is_empty()
        {
            let channel = state.peers.channel(&info.client_address)?;
            if let Ok(response) =
                ClusterServiceClient::new(channel).status(forwarded(StatusRequest {}, FORWARD_TIMEOUT)).await
            {
                return Ok(response);
            }
        }
        let leading = leader == Some(state.node_id) && metrics.state == ServerState::Leader;
        let voters: BTreeSet<u64> = metrics.membership_config.voter_ids().collect();
        let catalogue = state.meta.catalogue();
        let nodes = catalogue
            .nodes
            .values()
            .map(|node| {
                let last_seen_ms_ago = if node.id == state.node_id {
                    Some(0)
                } else if leading {
                    metrics
                        .heartbeat
                        .as_ref()
                        .and_then(|beats| beats.get(&node.id).cloned().flatten())
                        .map(|at| i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
                } else {
                    None
                };
                Node {
                    id: node.id,
                    client_address: node.client_address.clone(),
                    peer_address: node.peer_address.clone(),
                    live: last_seen_ms_ago.is_some_and(|ms| (ms as u128) < LIVENESS_WINDOW.as_millis()),
                    last_seen_ms_ago: last_seen_ms_ago.unwrap_or(-1),
                    metadata_voter: voters.contains(&node.id),
                }
            })
            .collect();
        Ok(Response::new(StatusResponse {
            nodes,
            metadata_leader_id: leader.unwrap_or(0),
            metadata_term: metrics.current_term,
            answered_by: state.node_id,
        }))
    }

    async fn metadata(&self, request: Request<MetadataRequest>) -> Result<Response<MetadataResponse>, Status> {
        let request = request.into_inner();
        let state = &self.state;
        let catalogue = state.meta.catalogue();
        let mut topics = Vec::new();
        for name in &request.topics {
            if !catalogue.topics.contains_key(name) {
                return Err(ApiError::new(ErrorCode::UnknownTopic, format!("topic {name:?} does not exist")).into());
            }
        }
        for topic in catalogue.topics.values() {
            if !request.topics.is_empty() && !request.topics.contains(&topic.name) {
                continue;
            }
            let partitions = topic
                .replicas
                .iter()
                .enumerate()
                .map(|(p, replicas)| {
                    let group: GroupId = topic.group(p as u32);
                    PartitionMetadata {
                        partition: p as u32,
                        group_id: group.0,
                        leader_id: state.leader_of(group).map_or(0, |(id, _)| id),
                        replicas: replicas.clone(),
                    }
                })
                .collect();
            topics.push(TopicMetadata { topic: Some(topic_message(topic)), partitions });
        }
        let nodes = catalogue
            .nodes
            .values()
            .map(|node| Node {
                id: node.id,
                client_address: node.client_address.clone(),
                peer_address: node.peer_address.clone(),
                live: false,
                last_seen_ms_ago: -1,
                metadata_voter: false,
            })
            .collect();
        Ok(Response::new(MetadataResponse { nodes, topics }))
    }

    async fn local_replicas(
        &self,
        request: Request<LocalReplicasRequest>,
    ) -> Result<Response<LocalReplicasResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(LocalReplicasResponse {
            node_id: self.state.node_id,
            replicas: local_replicas(&self.state, &request.group_ids),
        }))
    }

    async fn replica_digest(
        &self,
        request: Request<ReplicaDigestRequest>,
    ) -> Result<Response<ReplicaDigestResponse>, Status> {
        let request = request.into_inner();
        let group = GroupId(request.group_id);
        let replica = self.state.partitions.get(group).ok_or_else(|| {
            ApiError::new(
                ErrorCode::ReplicaNotHere,
                format!("node {} holds no replica of partition group {group}", self.state.node_id),
            )
        })?;
        let marks = replica.watermarks();
        let end_offset = request.end_offset.unwrap_or(marks.high_watermark);
        let start_offset = request.start_offset.unwrap_or(marks.log_start);
        let reader = replica.reader.clone();
        let digest = self
            .state
            .read_storage(move || replica_digest(&reader, marks, start_offset, end_offset))
            .await?
            .map_err(|err| ApiError::read(format!("partition group {group}"), err))?;
        Ok(Response::new(ReplicaDigestResponse {
            node_id: self.state.node_id,
            group_id: group.0,
            log_start_offset: start_offset,
            end_offset,
            high_watermark: marks.high_watermark,
            digest,
        }))
    }
}

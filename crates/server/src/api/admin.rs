//! `AdminService`: topic create, delete, list and describe.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_metadata::{MetaCommand, MetaError, MetaResponse, TopicRecord};
use flotilla_proto::v1::admin_service_server::AdminService;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_proto::v1::{
    CreateTopicRequest, CreateTopicResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeTopicRequest,
    DescribeTopicResponse, ListTopicsRequest, ListTopicsResponse, LocalReplica, LocalReplicasRequest,
    MoveReplicaRequest, MoveReplicaResponse, PartitionDescription, ReplicaState, Topic,
};
use flotilla_types::{ErrorCode, NodeId, validate_topic_name};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::cluster::local_replicas;
use super::{ApiError, METADATA_TIMEOUT, NodeState, RETRY_PAUSE};

/// Replication factor when a request leaves it at 0.
const DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// How long `describe` waits for each replica's own report.
const REPLICA_REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `flotilla.v1.AdminService`.
pub struct AdminApi {
    state: Arc<NodeState>,
}

impl AdminApi {
    /// The service over `state`.
    pub fn new(state: Arc<NodeState>) -> Self {
        AdminApi { state }
    }
}

/// The wire form of a topic.
pub fn topic_message(topic: &TopicRecord) -> Topic {
    Topic {
        name: topic.name.clone(),
        id: topic.id.0,
        partitions: topic.partitions,
        replication_factor: topic.replication_factor,
        created_at_ms: topic.created_at_ms,
    }
}

fn meta_error(err: MetaError) -> ApiError {
    let code = match &err {
        MetaError::TopicExists { .. } => ErrorCode::TopicExists,
        MetaError::UnknownTopic { .. } => ErrorCode::UnknownTopic,
        MetaError::ReplicationFactorTooLarge { .. } => ErrorCode::ReplicationFactorTooLarge,
        MetaError::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
        MetaError::InvalidPartitionCount { .. } => ErrorCode::InvalidPartitionCount,
        MetaError::UnknownPartition { .. } => ErrorCode::PartitionOutOfRange,
        MetaError::NotAReplica { .. }
        | MetaError::UnknownNode { .. }
        | MetaError::AlreadyAReplica { .. }
        | MetaError::FormerReplica { .. } => ErrorCode::InvalidRequest,
    };
    ApiError::new(code, err.to_string())
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<CreateTopicResponse>, Status> {
        let request = request.into_inner();
        let state = &self.state;
        validate_topic_name(&request.name)
            .map_err(|err| ApiError::new(ErrorCode::InvalidTopicName, err.to_string()))?;
        if request.partitions == 0 || request.partitions > state.limits.partitions_max {
            return Err(meta_error(MetaError::InvalidPartitionCount {
                requested: request.partitions,
                max: state.limits.partitions_max,
            })
            .into());
        }
        // Right after a cluster starts, members may not have registered their addresses yet;
        // give them a moment rather than refuse (or under-replicate) the topic.
        let members = state.meta.member_count();
        let deadline = Instant::now() + METADATA_TIMEOUT;
        while state.meta.catalogue().nodes.len() < members && Instant::now() < deadline {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        let catalogue = state.meta.catalogue();
        let nodes = catalogue.nodes.len() as u32;
        let replication_factor = match request.replication_factor {
            0 => DEFAULT_REPLICATION_FACTOR.min(nodes.max(1)),
            rf => rf,
        };
        catalogue.check_create_topic(&request.name, request.partitions, replication_factor).map_err(meta_error)?;
        let command = MetaCommand::CreateTopic {
            name: request.name.clone(),
            partitions: request.partitions,
            replication_factor,
            created_at_ms: state.clock.now_ms(),
        };
        let topic = match state.meta.propose(command, METADATA_TIMEOUT).await? {
            MetaResponse::TopicCreated(topic) => topic,
            MetaResponse::Rejected(err) => return Err(meta_error(err).into()),
            MetaResponse::Done => {
                return Err(ApiError::new(ErrorCode::Internal, "create topic returned nothing").into());
            }
        };
        // Answer once this node's catalogue has the topic, so the caller's next request to
        // this node finds it.
        let deadline = Instant::now() + METADATA_TIMEOUT;
        while !state.meta.catalogue().topics.contains_key(&topic.name) && Instant::now() < deadline {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Ok(Response::new(CreateTopicResponse { topic: Some(topic_message(&topic)) }))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let request = request.into_inner();
        let state = &self.state;
        state.topic(&request.name)?;
        match state.meta.propose(MetaCommand::DeleteTopic { name: request.name.clone() }, METADATA_TIMEOUT).await? {
            MetaResponse::Rejected(err) => Err(meta_error(err).into()),
            _ => Ok(Response::new(DeleteTopicResponse {})),
        }
    }

    async fn move_replica(
        &self,
        request: Request<MoveReplicaRequest>,
    ) -> Result<Response<MoveReplicaResponse>, Status> {
        let request = request.into_inner();
        let state = &self.state;
        let (topic, partition, from, to) = (request.topic, request.partition, request.from_node, request.to_node);
        state.meta.catalogue().check_move_replica(&topic, partition, from, to).map_err(meta_error)?;
        let command = MetaCommand::MoveReplica { topic: topic.clone(), partition, from, to };
        if let MetaResponse::Rejected(err) = state.meta.propose(command, METADATA_TIMEOUT).await? {
            return Err(meta_error(err).into());
        }
        // Answer once this node's catalogue has the move, so a describe sent here next shows it.
        let deadline = Instant::now() + METADATA_TIMEOUT;
        let moved = |catalogue: &flotilla_metadata::MetadataState| {
            catalogue
                .topics
                .get(&topic)
                .and_then(|t| t.replicas.get(partition as usize))
                .is_some_and(|r| r.contains(&to))
        };
        while !moved(&state.meta.catalogue()) && Instant::now() < deadline {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Ok(Response::new(MoveReplicaResponse {}))
    }

    async fn list_topics(&self, _request: Request<ListTopicsRequest>) -> Result<Response<ListTopicsResponse>, Status> {
        let topics = self.state.meta.catalogue().topics.values().map(topic_message).collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<DescribeTopicResponse>, Status> {
        let request = request.into_inner();
        let state = &self.state;
        let topic = state.topic(&request.name)?;
        let groups: Vec<u64> = (0..topic.partitions).map(|p| topic.group(p).0).collect();
        let nodes: BTreeSet<NodeId> = topic.replicas.iter().flatten().copied().collect();
        // Ask every replica node for its own view, concurrently and with a bound: a dead node
        // shows as unreachable instead of stalling the answer.
        let asks = nodes.iter().map(|node| {
            let groups = groups.clone();
            async move {
                let reports = if *node == state.node_id {
                    Some(local_replicas(state, &groups))
                } else {
                    let address = state.client_address_of(*node)?;
                    let channel = state.peers.channel(&address).ok()?;
                    let mut request = Request::new(LocalReplicasRequest { group_ids: groups });
                    request.set_timeout(REPLICA_REPORT_TIMEOUT);
                    let mut client = ClusterServiceClient::new(channel);
                    match tokio::time::timeout(REPLICA_REPORT_TIMEOUT, client.local_replicas(request)).await {
                        Ok(Ok(response)) => Some(response.into_inner().replicas),
                        _ => None,
                    }
                };
                Some((*node, reports?))
            }
        });
        let mut reports: BTreeMap<(NodeId, u64), LocalReplica> = BTreeMap::new();
        for (node, replicas) in futures::future::join_all(asks).await.into_iter().flatten() {
            for replica in replicas {
                reports.insert((node, replica.group_id), replica);
            }
        }
        let mut partitions = Vec::with_capacity(topic.partitions as usize);
        for (partition, replicas) in topic.replicas.iter().enumerate() {
            let group = topic.group(partition as u32);
            let leader_id = state.leader_of(group).map_or(0, |(id, _)| id);
            let leader_report = reports.get(&(leader_id, group.0));
            let replica_states = replicas
                .iter()
                .map(|node| match reports.get(&(*node, group.0)) {
                    Some(report) => ReplicaState {
                        node_id: *node,
                        reachable: true,
                        is_leader: report.is_leader,
                        term: report.term,
                        log_end_offset: report.log_end_offset,
                        applied_index: report.applied_index,
                    },
                    None => ReplicaState { node_id: *node, reachable: false, ..Default::default() },
                })
                .collect();
            partitions.push(PartitionDescription {
                partition: partition as u32,
                group_id: group.0,
                leader_id,
                replicas: replicas.clone(),
                log_start_offset: leader_report.map_or(0, |r| r.log_start_offset),
                high_watermark: leader_report.map_or(0, |r| r.log_end_offset),
                replica_states,
            });
        }
        Ok(Response::new(DescribeTopicResponse { topic: Some(topic_message(&topic)), partitions }))
    }
}

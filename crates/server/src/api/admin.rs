//! `AdminService`: topic create, delete, list, describe and configuration; replica moves;
//! record deletion.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_broker::{PartitionCommand, PartitionEntry, PartitionResponse};
use flotilla_metadata::{MetaCommand, MetaError, MetaResponse};
use flotilla_proto::v1::admin_service_client::AdminServiceClient;
use flotilla_proto::v1::admin_service_server::AdminService;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_proto::v1::{
    AlterTopicConfigRequest, AlterTopicConfigResponse, CreateTopicRequest, CreateTopicResponse, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicRequest, DeleteTopicResponse, DescribeTopicRequest, DescribeTopicResponse,
    ListTopicsRequest, ListTopicsResponse, LocalReplica, LocalReplicasRequest, MoveReplicaRequest, MoveReplicaResponse,
    PartitionDescription, ReplicaState,
};
use flotilla_types::{ErrorCode, NodeId, TopicConfig, validate_topic_name};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::cluster::local_replicas;
use super::convert::{config_entries, topic_message};
use crate::api_error::{ApiError, from_status};
use crate::context::NodeContext;
use crate::routing::{
    Attempt, FORWARD_TIMEOUT, Leadership, METADATA_TIMEOUT, RETRY_PAUSE, at_leader, forwarded, is_forwarded,
};

/// Replication factor when a request leaves it at 0.
const DEFAULT_REPLICATION_FACTOR: u32 = 3;
/// How long `describe` waits for each replica's own report.
const REPLICA_REPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves `flotilla.v1.AdminService`.
pub struct AdminApi {
    state: Arc<NodeContext>,
}

impl AdminApi {
    /// The service over `state`.
    pub fn new(state: Arc<NodeContext>) -> Self {
        AdminApi { state }
    }
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
            return Err(ApiError::from(MetaError::InvalidPartitionCount {
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
        catalogue.check_create_topic(&request.name, request.partitions, replication_factor).map_err(ApiError::from)?;
        let config = TopicConfig::default()
            .altered(&request.config.into_iter().collect(), &[], &state.limits)
            .map_err(|source| ApiError::from(MetaError::InvalidConfig { topic: request.name.clone(), source }))?;
        let command = MetaCommand::CreateTopic {
            name: request.name.clone(),
            partitions: request.partitions,
            replication_factor,
            created_at_ms: state.clock.now_ms(),
            config,
        };
        let topic = match state.meta.propose(command, METADATA_TIMEOUT).await? {
            MetaResponse::TopicCreated(topic) => topic,
            MetaResponse::Rejected(err) => return Err(ApiError::from(err).into()),
            MetaResponse::Done | MetaResponse::TopicAltered(_) => {
                return Err(ApiError::new(ErrorCode::Internal, "create topic returned no topic").into());
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
            MetaResponse::Rejected(err) => Err(ApiError::from(err).into()),
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
        state.meta.catalogue().check_move_replica(&topic, partition, from, to).map_err(ApiError::from)?;
        let command = MetaCommand::MoveReplica { topic: topic.clone(), partition, from, to };
        if let MetaResponse::Rejected(err) = state.meta.propose(command, METADATA_TIMEOUT).await? {
            return Err(ApiError::from(err).into());
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
                        log_start_offset: report.log_start_offset,
                        retained_bytes: report.retained_bytes,
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
                retained_bytes: leader_report.map_or(0, |r| r.retained_bytes),
            });
        }
        Ok(Response::new(DescribeTopicResponse {
            topic: Some(topic_message(&topic)),
            partitions,
            config: config_entries(&topic.config, &state.limits),
        }))
    }

    async fn alter_topic_config(
        &self,
        request: Request<AlterTopicConfigRequest>,
    ) -> Result<Response<AlterTopicConfigResponse>, Status> {
        let request = request.into_inner();
        let state = &self.state;
        let set: std::collections::BTreeMap<String, String> = request.set.into_iter().collect();
        let batch_bytes_max = state.limits.batch_bytes_max as u64;
        // An early, friendly check; apply judges again against the config it finds.
        state
            .meta
            .catalogue()
            .check_alter_topic_config(&request.name, &set, &request.delete, batch_bytes_max)
            .map_err(ApiError::from)?;
        let command =
            MetaCommand::AlterTopicConfig { name: request.name.clone(), set, unset: request.delete, batch_bytes_max };
        let topic = match state.meta.propose(command, METADATA_TIMEOUT).await? {
            MetaResponse::TopicAltered(topic) => topic,
            MetaResponse::Rejected(err) => return Err(ApiError::from(err).into()),
            other => {
                return Err(ApiError::new(ErrorCode::Internal, format!("alter topic config answered {other:?}")).into());
            }
        };
        // Answer once this node's catalogue has the change, so a describe sent here shows it.
        let deadline = Instant::now() + METADATA_TIMEOUT;
        while state.meta.catalogue().topics.get(&topic.name).is_some_and(|t| t.config != topic.config)
            && Instant::now() < deadline
        {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        Ok(Response::new(AlterTopicConfigResponse { config: config_entries(&topic.config, &state.limits) }))
    }

    async fn delete_records(
        &self,
        request: Request<DeleteRecordsRequest>,
    ) -> Result<Response<DeleteRecordsResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let request = request.into_inner();
        let state = &self.state;
        let topic = state.topic(&request.topic)?;
        state.check_partition(&topic, request.partition)?;
        let target = Leadership::partition(state, &topic, request.partition);
        let (request, what) = (&request, &target.what);
        let log_start = at_leader(
            state,
            &target,
            was_forwarded,
            |replica| async move {
                let marks = replica.watermarks();
                if request.before_offset > marks.high_watermark {
                    // The early answer; apply refuses it again against the watermark it sees.
                    return Attempt::Done(Err(ApiError::rejected(
                        what,
                        flotilla_broker::PartitionRejection::TrimBeyondHighWatermark {
                            before_offset: request.before_offset,
                            high_watermark: marks.high_watermark,
                        },
                    )));
                }
                let entry = PartitionEntry {
                    now_ms: replica.stamp(),
                    command: PartitionCommand::DeleteRecords { before_offset: request.before_offset },
                };
                match replica.raft.client_write(entry).await {
                    Ok(written) => Attempt::Done(match written.data {
                        PartitionResponse::Trimmed { log_start } => Ok(log_start),
                        PartitionResponse::Rejected(rejection) => Err(ApiError::rejected(what, rejection)),
                        other => Err(ApiError::new(
                            ErrorCode::Internal,
                            format!("{what}: delete records answered {other:?}"),
                        )),
                    }),
                    // A trim is idempotent (deleting below an offset twice deletes nothing more),
                    // so any failure to learn the outcome is retried.
                    Err(err) => {
                        Attempt::Retry(ApiError::from_propose(what, flotilla_raft::endpoint_propose_error(err)))
                    }
                }
            },
            |channel| async move {
                let result = AdminServiceClient::new(channel)
                    .delete_records(forwarded(request.clone(), FORWARD_TIMEOUT))
                    .await
                    .map(|response| response.into_inner().log_start_offset)
                    .map_err(|status| from_status(&status));
                match result {
                    // Idempotent as above: transport failures and retriable codes are retried.
                    Err(err) if err.code.is_retriable() => Attempt::Retry(err),
                    other => Attempt::Done(other),
                }
            },
        )
        .await?;
        Ok(Response::new(DeleteRecordsResponse { log_start_offset: log_start }))
    }
}

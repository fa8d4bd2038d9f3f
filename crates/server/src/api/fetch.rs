//! `FetchService`: reads committed records at the partition leader, with long polling.

use std::sync::Arc;
use std::time::Duration;

use flotilla_broker::{BrokerError, FetchedBatch};
use flotilla_metadata::TopicRecord;
use flotilla_proto::v1::fetch_service_client::FetchServiceClient;
use flotilla_proto::v1::fetch_service_server::FetchService;
use flotilla_proto::v1::{
    FetchRequest, FetchResponse, FetchedRecord, ListOffsetsRequest, ListOffsetsResponse, PartitionOffsets,
};
use flotilla_raft::openraft::ReadPolicy;
use flotilla_types::{ErrorCode, PartitionId};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::error::from_status;
use super::{ApiError, FORWARD_TIMEOUT, LEADER_WAIT, NodeState, RETRY_PAUSE, forwarded, is_forwarded};
use crate::partitions::Replica;

/// Records returned when a fetch does not say.
const DEFAULT_FETCH_RECORDS: u32 = 1000;
/// Bytes returned when a fetch does not say.
const DEFAULT_FETCH_BYTES: u32 = 1024 * 1024;

/// Serves `flotilla.v1.FetchService`.
pub struct FetchApi {
    state: Arc<NodeState>,
}

impl FetchApi {
    /// The service over `state`.
    pub fn new(state: Arc<NodeState>) -> Self {
        FetchApi { state }
    }
}

/// The local replica of a partition if it leads and its lease confirms it; `None` when the
/// request must go to another node.
async fn leading_replica(state: &NodeState, replica: Option<Arc<Replica>>) -> Option<Arc<Replica>> {
    let replica = replica?;
    if !replica.is_leader(state.node_id) {
        return None;
    }
    // The lease read confirms leadership and waits until everything committed before it is
    // applied here, so the high watermark a client sees never goes backwards, even across
    // a leader change.
    replica.raft.ensure_linearizable(ReadPolicy::LeaseRead).await.ok()?;
    Some(replica)
}

#[tonic::async_trait]
impl FetchService for FetchApi {
    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let request = request.into_inner();
        let state = &self.state;
        let topic = state.topic(&request.topic)?;
        state.check_partition(&topic, request.partition)?;
        let group = topic.group(request.partition);
        let what = format!("partition {} of topic {:?}", request.partition, topic.name);
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            if let Some(replica) = leading_replica(state, state.partitions.get(group)).await {
                return Ok(Response::new(serve_fetch(state, &replica, &request).await?));
            }
            match state.leader_of(group) {
                Some((leader, info)) if leader != state.node_id => {
                    if was_forwarded {
                        return Err(ApiError::not_leader(&what, Some((leader, info))).into());
                    }
                    let channel = state.peers.channel(&info.client_address)?;
                    let wait = Duration::from_millis(u64::from(request.max_wait_ms));
                    match FetchServiceClient::new(channel)
                        .max_decoding_message_size(usize::MAX)
                        .fetch(forwarded(request.clone(), FORWARD_TIMEOUT + wait))
                        .await
                    {
                        Ok(response) => return Ok(response),
                        Err(status) => {
                            let err = from_status(&status);
                            let retry = matches!(
                                err.code,
                                ErrorCode::NotLeader | ErrorCode::LeaderUnavailable | ErrorCode::Unavailable
                            );
                            if !retry || Instant::now() >= deadline {
                                return Err(err.into());
                            }
                        }
                    }
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(
                    ApiError::new(ErrorCode::LeaderUnavailable, format!("{what} has no reachable leader")).into()
                );
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let request = request.into_inner();
        let state = &self.state;
        let topic = state.topic(&request.topic)?;
        let partitions: Vec<PartitionId> =
            if request.partitions.is_empty() { (0..topic.partitions).collect() } else { request.partitions.clone() };
        for partition in &partitions {
            state.check_partition(&topic, *partition)?;
        }
        let timestamp_ms = request.timestamp_ms;
        let lookups = partitions
            .iter()
            .map(|partition| partition_offsets(state, &topic, *partition, timestamp_ms, was_forwarded));
        let mut out = Vec::with_capacity(partitions.len());
        for result in futures::future::join_all(lookups).await {
            out.push(result?);
        }
        Ok(Response::new(ListOffsetsResponse { partitions: out }))
    }
}

/// Log start and high watermark of one partition (and, with `timestamp_ms`, the first offset
/// at or after that time), from the partition's leader: read here when this node leads it,
/// else asked of the leader. `was_forwarded`: the caller is another node, so answer
/// `NotLeader` rather than forward again.
pub(crate) async fn partition_offsets(
    state: &NodeState,
    topic: &TopicRecord,
    partition: PartitionId,
    timestamp_ms: Option<i64>,
    was_forwarded: bool,
) -> Result<PartitionOffsets, ApiError> {
    let group = topic.group(partition);
    let what = format!("partition {partition} of topic {:?}", topic.name);
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(replica) = leading_replica(state, state.partitions.get(group)).await {
            let marks = *replica.watermarks.borrow();
            let offset_for_timestamp = match timestamp_ms {
                Some(timestamp_ms) => {
                    let reader = replica.reader.clone();
                    let found = state.read_storage(move || reader.offset_for_time(timestamp_ms, marks)).await?;
                    Some(found.map_err(|err| ApiError::new(ErrorCode::Internal, err.to_string()))?)
                }
                None => None,
            };
            return Ok(PartitionOffsets {
                partition,
                log_start_offset: marks.log_start,
                high_watermark: marks.high_watermark,
                offset_for_timestamp,
            });
        }
        match state.leader_of(group) {
            Some((leader, info)) if leader != state.node_id => {
                if was_forwarded {
                    return Err(ApiError::not_leader(&what, Some((leader, info))));
                }
                let channel = state.peers.channel(&info.client_address)?;
                let message =
                    ListOffsetsRequest { topic: topic.name.clone(), partitions: vec![partition], timestamp_ms };
                match FetchServiceClient::new(channel).list_offsets(forwarded(message, FORWARD_TIMEOUT)).await {
                    Ok(response) => {
                        if let Some(found) = response.into_inner().partitions.into_iter().next() {
                            return Ok(found);
                        }
                    }
                    Err(status) => {
                        let err = from_status(&status);
                        if Instant::now() >= deadline {
                            return Err(err);
                        }
                    }
                }
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(ApiError::new(ErrorCode::LeaderUnavailable, format!("{what} has no reachable leader")));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Serves a fetch from the local leader replica.
async fn serve_fetch(state: &NodeState, replica: &Replica, request: &FetchRequest) -> Result<FetchResponse, ApiError> {
    let limits = &state.limits;
    let max_records = match request.max_records {
        0 => DEFAULT_FETCH_RECORDS,
        n => n.min(limits.fetch_records_max),
    } as usize;
    let max_bytes = match request.max_bytes {
        0 => DEFAULT_FETCH_BYTES,
        n => n.min(limits.fetch_bytes_max),
    } as usize;
    let wait = Duration::from_millis(u64::from(request.max_wait_ms.min(limits.fetch_wait_ms_max)));
    let mut watermarks = replica.watermarks.clone();
    let mut marks = *watermarks.borrow_and_update();
    if request.offset == marks.high_watermark && !wait.is_zero() {
        // Long poll: wake on the first apply past the offset, or give up at the deadline.
        let deadline = Instant::now() + wait;
        while marks.high_watermark <= request.offset {
            match tokio::time::timeout_at(deadline, watermarks.changed()).await {
                Ok(Ok(())) => marks = *watermarks.borrow_and_update(),
                _ => break,
            }
        }
    }
    let reader = replica.reader.clone();
    let offset = request.offset;
    let read = move || reader.read(offset, max_records, max_bytes, marks);
    let batch = state.read_storage(read).await?;
    let batch: FetchedBatch = batch.map_err(|err| match err {
        BrokerError::OffsetOutOfRange { offset, log_start, high_watermark, .. } => ApiError::new(
            ErrorCode::OffsetOutOfRange,
            format!(
                "offset {offset} is out of range for partition {} of topic {:?}: valid offsets are {log_start}..={high_watermark}",
                request.partition, request.topic
            ),
        ),
        other => ApiError::new(ErrorCode::Internal, other.to_string()),
    })?;
    Ok(FetchResponse {
        records: batch
            .records
            .into_iter()
            .map(|(offset, record)| FetchedRecord { offset, record: Some(record.into()) })
            .collect(),
        high_watermark: marks.high_watermark,
        log_start_offset: marks.log_start,
    })
}

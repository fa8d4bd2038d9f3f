//! `ProduceService`: validates a batch, splits it by partition, and appends each part at its
//! partition's leader (here, or forwarded).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use flotilla_broker::{PartitionCommand, PartitionResponse};
use flotilla_metadata::TopicRecord;
use flotilla_proto::v1::produce_service_client::ProduceServiceClient;
use flotilla_proto::v1::produce_service_server::ProduceService;
use flotilla_proto::v1::{ProduceRequest, ProduceResponse, RecordAck};
use flotilla_raft::ProposeError;
use flotilla_types::{ErrorCode, PartitionId, Record, partition_for_key};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::error::from_status;
use super::{ApiError, FORWARD_TIMEOUT, LEADER_WAIT, NodeState, RETRY_PAUSE, forwarded, is_forwarded};

/// Serves `flotilla.v1.ProduceService`.
pub struct ProduceApi {
    state: Arc<NodeState>,
}

impl ProduceApi {
    /// The service over `state`.
    pub fn new(state: Arc<NodeState>) -> Self {
        ProduceApi { state }
    }
}

#[tonic::async_trait]
impl ProduceService for ProduceApi {
    async fn produce(&self, request: Request<ProduceRequest>) -> Result<Response<ProduceResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let request = request.into_inner();
        Ok(Response::new(produce(&self.state, request, forwarded).await?))
    }
}

fn validate(state: &NodeState, request: &ProduceRequest) -> Result<(), ApiError> {
    let limits = &state.limits;
    if request.records.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptyBatch,
            format!("produce to topic {:?} carries no records", request.topic),
        ));
    }
    if request.records.len() > limits.batch_records_max {
        return Err(ApiError::new(
            ErrorCode::TooManyRecords,
            format!(
                "produce carries {} records; the limit is {} per request",
                request.records.len(),
                limits.batch_records_max
            ),
        ));
    }
    let mut total = 0usize;
    for (index, record) in request.records.iter().enumerate() {
        let size = record.key.as_ref().map_or(0, |k| k.len())
            + record.value.len()
            + record.headers.iter().map(|h| h.key.len() + h.value.len()).sum::<usize>();
        if size > limits.record_bytes_max {
            return Err(ApiError::new(
                ErrorCode::RecordTooLarge,
                format!("record {index} is {size} bytes; the limit is {} bytes per record", limits.record_bytes_max),
            ));
        }
        total += size;
    }
    if total > limits.batch_bytes_max {
        return Err(ApiError::new(
            ErrorCode::BatchTooLarge,
            format!(
                "produce carries {total} bytes of records; the limit is {} bytes per request",
                limits.batch_bytes_max
            ),
        ));
    }
    Ok(())
}

/// Handles one produce request end to end.
pub async fn produce(state: &NodeState, request: ProduceRequest, forwarded: bool) -> Result<ProduceResponse, ApiError> {
    let topic = state.topic(&request.topic)?;
    validate(state, &request)?;
    // Partition of each record, then the records of each partition in request order.
    let keyless = match request.partition {
        Some(partition) => {
            state.check_partition(&topic, partition)?;
            partition
        }
        None => state.round_robin.fetch_add(1, Ordering::Relaxed) % topic.partitions,
    };
    let mut by_partition: BTreeMap<PartitionId, (Vec<usize>, Vec<Record>)> = BTreeMap::new();
    for (index, record) in request.records.into_iter().enumerate() {
        let partition = match (request.partition, &record.key) {
            (Some(partition), _) => partition,
            (None, Some(key)) => partition_for_key(key, topic.partitions),
            (None, None) => keyless,
        };
        let slot = by_partition.entry(partition).or_default();
        slot.0.push(index);
        slot.1.push(Record::from(record));
    }
    let count: usize = by_partition.values().map(|(indexes, _)| indexes.len()).sum();
    let appends = by_partition.into_iter().map(|(partition, (indexes, records))| {
        let topic = &topic;
        async move {
            let base = append(state, topic, partition, records, forwarded).await?;
            Ok::<_, ApiError>((partition, indexes, base))
        }
    });
    let mut acks = vec![RecordAck::default(); count];
    for result in futures::future::join_all(appends).await {
        let (partition, indexes, base) = result?;
        for (i, index) in indexes.into_iter().enumerate() {
            acks[index] = RecordAck { partition, offset: base + i as u64 };
        }
    }
    Ok(ProduceResponse { acks })
}

/// Appends `records` to one partition and returns the base offset they got.
async fn append(
    state: &NodeState,
    topic: &TopicRecord,
    partition: PartitionId,
    records: Vec<Record>,
    forwarded: bool,
) -> Result<u64, ApiError> {
    let group = topic.group(partition);
    let what = format!("partition {partition} of topic {:?}", topic.name);
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(replica) = state.partitions.get(group)
            && replica.is_leader(state.node_id)
        {
            let command = PartitionCommand::Append { records: records.clone(), timestamp_ms: state.clock.now_ms() };
            match replica.raft.client_write(command).await {
                Ok(response) => match response.data {
                    PartitionResponse::Appended { base_offset, .. } => return Ok(base_offset),
                    PartitionResponse::Done => {
                        return Err(ApiError::new(
                            ErrorCode::Internal,
                            format!("{what}: append applied without offsets"),
                        ));
                    }
                },
                Err(err) => match flotilla_raft::endpoint_propose_error(err) {
                    // Lost leadership before appending: nothing was written, try again.
                    ProposeError::NotLeader { .. } => {}
                    other => return Err(ApiError::from_propose(&what, other)),
                },
            }
        }
        match state.leader_of(group) {
            Some((leader, _)) if leader == state.node_id => {
                // Our own stale view: leadership is changing; wait for it to settle.
            }
            Some((leader, info)) if forwarded => return Err(ApiError::not_leader(&what, Some((leader, info)))),
            Some((_, info)) => {
                let channel = state.peers.channel(&info.client_address)?;
                let message = ProduceRequest {
                    topic: topic.name.clone(),
                    partition: Some(partition),
                    records: records.iter().cloned().map(Into::into).collect(),
                };
                match ProduceServiceClient::new(channel)
                    .max_encoding_message_size(usize::MAX)
                    .produce(forwarded_request(message))
                    .await
                {
                    Ok(response) => {
                        let acks = response.into_inner().acks;
                        return acks.first().map(|ack| ack.offset).ok_or_else(|| {
                            ApiError::new(ErrorCode::Internal, format!("{what}: forwarded produce returned no acks"))
                        });
                    }
                    Err(status) => {
                        // Retry only when the records were certainly not appended: the leader
                        // said it does not lead, or the connection was never made. After any
                        // other failure (a reset mid-request, a timeout) the append may have
                        // happened, and a retry here would store the records twice.
                        let wire = flotilla_proto::error::WireError::from_status(&status);
                        let not_appended =
                            matches!(wire.code, Some(ErrorCode::NotLeader | ErrorCode::LeaderUnavailable))
                                || (wire.code.is_none() && never_connected(&status));
                        if !not_appended || Instant::now() >= deadline {
                            return Err(from_status(&status));
                        }
                    }
                }
            }
            None => {}
        }
        if Instant::now() >= deadline {
            return Err(ApiError::new(
                ErrorCode::LeaderUnavailable,
                format!("{what} has had no reachable leader for {LEADER_WAIT:?}; retry later"),
            ));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// Whether a transport failure happened before the request reached the peer.
fn never_connected(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound)
        {
            return true;
        }
        source = err.source();
    }
    status.message().contains("Connection refused")
}

fn forwarded_request(message: ProduceRequest) -> Request<ProduceRequest> {
    forwarded(message, FORWARD_TIMEOUT)
}

//! `ProduceService`: validates a batch, splits it by partition, and appends each part at its
//! partition's leader (here, or forwarded); starts idempotent producer sessions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use flotilla_broker::{PartitionCommand, PartitionRejection, PartitionResponse, ProducerSequence};
use flotilla_metadata::TopicRecord;
use flotilla_proto::v1::produce_service_client::ProduceServiceClient;
use flotilla_proto::v1::produce_service_server::ProduceService;
use flotilla_proto::v1::{InitProducerRequest, InitProducerResponse, ProduceRequest, ProduceResponse, RecordAck};
use flotilla_raft::ProposeError;
use flotilla_raft::openraft::error::RaftError;
use flotilla_raft::openraft::impls::ProgressResponder;
use flotilla_types::{ErrorCode, PartitionId, Record, partition_for_key};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::error::from_status;
use super::{
    ApiError, FORWARD_TIMEOUT, LEADER_WAIT, METADATA_TIMEOUT, NodeState, RETRY_PAUSE, forwarded, is_forwarded,
};

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

    async fn init_producer(
        &self,
        _request: Request<InitProducerRequest>,
    ) -> Result<Response<InitProducerResponse>, Status> {
        let producer_id = self.state.meta.allocate_producer_id(METADATA_TIMEOUT).await?;
        // Every id is fresh, so its first epoch is 0; higher epochs are for re-opening an id.
        Ok(Response::new(InitProducerResponse { producer_id, producer_epoch: 0 }))
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
    if let Some(producer) = &request.idempotence {
        validate_idempotence(request, producer)?;
    }
    Ok(())
}

/// Checks the idempotence fields of a request that has them.
fn validate_idempotence(
    request: &ProduceRequest,
    producer: &flotilla_proto::v1::ProducerSequence,
) -> Result<(), ApiError> {
    let invalid = |message: String| Err(ApiError::new(ErrorCode::InvalidRequest, message));
    if request.partition.is_none() {
        return invalid(format!(
            "idempotent produce to topic {:?} (producer {}) names no partition; an idempotent batch must set \
             `partition` explicitly, because its sequence numbers count the records of one partition",
            request.topic, producer.producer_id
        ));
    }
    if producer.producer_id == 0 {
        return invalid(format!(
            "idempotent produce to topic {:?} carries producer_id 0; producer ids come from InitProducer and \
             start at 1",
            request.topic
        ));
    }
    if producer.base_sequence.checked_add(request.records.len() as u64).is_none() {
        return invalid(format!(
            "idempotent produce to topic {:?} (producer {}) starts at sequence {} with {} records, past the \
             largest sequence {}; start a new producer session",
            request.topic,
            producer.producer_id,
            producer.base_sequence,
            request.records.len(),
            u64::MAX
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
    // Validation made sure an idempotent request names its partition: all records are one batch.
    let producer = request.idempotence.map(|p| ProducerSequence {
        producer_id: p.producer_id,
        producer_epoch: p.producer_epoch,
        base_sequence: p.base_sequence,
    });
    let count: usize = by_partition.values().map(|(indexes, _)| indexes.len()).sum();
    let appends = by_partition.into_iter().map(|(partition, (indexes, records))| {
        let topic = &topic;
        async move {
            let base = append(state, topic, partition, records, producer, forwarded).await?;
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

/// Appends `records` to one partition and returns the base offset they got. With `producer`
/// the batch is idempotent: the partition appends it at most once, and a retry (by the client,
/// or here after an unknown outcome) gets the offsets of the first append.
async fn append(
    state: &NodeState,
    topic: &TopicRecord,
    partition: PartitionId,
    records: Vec<Record>,
    producer: Option<ProducerSequence>,
    forwarded: bool,
) -> Result<u64, ApiError> {
    let group = topic.group(partition);
    let what = format!("partition {partition} of topic {:?}", topic.name);
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        if let Some(replica) = state.partitions.get(group)
            && replica.is_leader(state.node_id)
        {
            let timestamp_ms = state.clock.now_ms();
            let records = records.clone();
            let written = match producer {
                None => replica.raft.client_write(PartitionCommand::Append { records, timestamp_ms }).await,
                Some(producer) => {
                    let count = records.len() as u64;
                    let command = PartitionCommand::AppendIdempotent { records, timestamp_ms, producer };
                    let (responder, outcome) = ProgressResponder::complete_only();
                    let enqueue = || replica.raft.client_write_ff(command, Some(responder));
                    match replica.proposal_order.propose_in_order(&producer, count, enqueue).await {
                        Ok(()) => match outcome.await {
                            Ok(result) => result.map_err(RaftError::APIError),
                            Err(_) => Err(ApiError::new(
                                ErrorCode::Unavailable,
                                format!("{what}: the Raft group stopped before answering"),
                            ))?,
                        },
                        Err(fatal) => Err(RaftError::Fatal(fatal)),
                    }
                }
            };
            match written {
                Ok(response) => return append_outcome(state, &what, response.data),
                Err(err) => match flotilla_raft::endpoint_propose_error(err) {
                    // Lost leadership before appending: nothing was written, try again.
                    ProposeError::NotLeader { .. } => {}
                    // The entry may or may not commit; an idempotent batch can simply be sent
                    // again: if the first one commits, the partition answers its offsets.
                    ProposeError::OutcomeUnknown { .. } if producer.is_some() && Instant::now() < deadline => {}
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
                    idempotence: producer.map(|p| flotilla_proto::v1::ProducerSequence {
                        producer_id: p.producer_id,
                        producer_epoch: p.producer_epoch,
                        base_sequence: p.base_sequence,
                    }),
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
                        // happened, and a retry here would store the records twice — unless
                        // the batch is idempotent: then the partition answers a retry of an
                        // appended batch with its first offsets, so every failure that is not
                        // a refusal (a transport error, a retriable code) is retried.
                        let wire = flotilla_proto::error::WireError::from_status(&status);
                        let not_appended =
                            matches!(wire.code, Some(ErrorCode::NotLeader | ErrorCode::LeaderUnavailable))
                                || (wire.code.is_none() && never_connected(&status));
                        let deduplicated = producer.is_some() && wire.code.is_none_or(|code| code.is_retriable());
                        if !(not_appended || deduplicated) || Instant::now() >= deadline {
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

/// The offsets of an applied append, or the error its refusal maps to.
fn append_outcome(state: &NodeState, what: &str, response: PartitionResponse) -> Result<u64, ApiError> {
    match response {
        PartitionResponse::Appended { base_offset, .. } => Ok(base_offset),
        PartitionResponse::Duplicate { base_offset, .. } => {
            state.produce_duplicates.fetch_add(1, Ordering::Relaxed);
            Ok(base_offset)
        }
        PartitionResponse::Rejected(rejection) => {
            let code = match rejection {
                PartitionRejection::ProducerFenced { .. } => ErrorCode::ProducerFenced,
                PartitionRejection::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            };
            Err(ApiError::new(code, format!("{what}: {rejection}")))
        }
        PartitionResponse::Done => {
            Err(ApiError::new(ErrorCode::Internal, format!("{what}: append applied without offsets")))
        }
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

//! `ProduceService`: validates a batch, splits it by partition, and appends each part at its
//! partition's leader (here, or forwarded); starts idempotent producer sessions.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use flotilla_broker::{PartitionCommand, PartitionEntry, PartitionResponse, ProducerSequence};
use flotilla_metadata::TopicRecord;
use flotilla_proto::v1::produce_service_client::ProduceServiceClient;
use flotilla_proto::v1::produce_service_server::ProduceService;
use flotilla_proto::v1::{InitProducerRequest, InitProducerResponse, ProduceRequest, ProduceResponse};
use flotilla_raft::ProposeError;
use flotilla_raft::openraft::error::RaftError;
use flotilla_raft::openraft::impls::ProgressResponder;
use flotilla_types::{ErrorCode, HEADER_OVERHEAD_BYTES, PartitionId, Record, partition_for_key};
use tonic::{Request, Response, Status};

use super::produce_answer::{PartitionOutcome, answer};
use crate::api_error::{ApiError, from_status};
use crate::context::NodeContext;
use crate::partitions::Replica;
use crate::routing::{Attempt, FORWARD_TIMEOUT, Leadership, METADATA_TIMEOUT, at_leader, forwarded, is_forwarded};

/// Serves `flotilla.v1.ProduceService`.
pub struct ProduceApi {
    state: Arc<NodeContext>,
}

impl ProduceApi {
    /// The service over `state`.
    pub fn new(state: Arc<NodeContext>) -> Self {
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

fn validate(state: &NodeContext, request: &ProduceRequest) -> Result<(), ApiError> {
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
        if record.headers.len() > limits.headers_per_record_max {
            return Err(ApiError::new(
                ErrorCode::RecordTooLarge,
                format!(
                    "record {index} has {} headers; the limit is {} headers per record",
                    record.headers.len(),
                    limits.headers_per_record_max
                ),
            ));
        }
        let size = record.key.as_ref().map_or(0, |k| k.len())
            + record.value.len()
            + record.headers.iter().map(|h| h.key.len() + h.value.len() + HEADER_OVERHEAD_BYTES).sum::<usize>();
        if size > limits.record_bytes_max {
            return Err(ApiError::new(
                ErrorCode::RecordTooLarge,
                format!(
                    "record {index} is {size} bytes (key, value and headers, each header counting {} bytes more); \
                     the limit is {} bytes per record",
                    HEADER_OVERHEAD_BYTES, limits.record_bytes_max
                ),
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

/// Checks each partition's share of the request against the topic's `max.message.bytes`: the
/// largest batch one produce may append to one of its partitions.
fn check_max_message_bytes(
    state: &NodeContext,
    topic: &TopicRecord,
    by_partition: &BTreeMap<PartitionId, (Vec<usize>, Vec<Record>)>,
) -> Result<(), ApiError> {
    let max = topic.config.effective_max_message_bytes(&state.limits);
    for (partition, (_, records)) in by_partition {
        let bytes: u64 = records.iter().map(|r| r.size_bytes() as u64).sum();
        if bytes > max {
            return Err(ApiError::new(
                ErrorCode::BatchTooLarge,
                format!(
                    "the records for partition {partition} of topic {:?} take {bytes} bytes; the topic's \
                     {} is {max} bytes per batch",
                    topic.name,
                    flotilla_types::MAX_MESSAGE_BYTES
                ),
            ));
        }
    }
    Ok(())
}

/// Handles one produce request end to end.
pub async fn produce(
    state: &NodeContext,
    request: ProduceRequest,
    forwarded: bool,
) -> Result<ProduceResponse, ApiError> {
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
    check_max_message_bytes(state, &topic, &by_partition)?;
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
            let result = append(state, topic, partition, records, producer, forwarded).await;
            PartitionOutcome { partition, indexes, result }
        }
    });
    let outcomes = futures::future::join_all(appends).await;
    answer(&topic.name, count, outcomes)
}

/// Appends `records` to one partition and returns the base offset they got. With `producer`
/// the batch is idempotent: the partition appends it at most once, and a retry (by the client,
/// or here after an unknown outcome) gets the offsets of the first append.
async fn append(
    state: &NodeContext,
    topic: &TopicRecord,
    partition: PartitionId,
    records: Vec<Record>,
    producer: Option<ProducerSequence>,
    was_forwarded: bool,
) -> Result<u64, ApiError> {
    let target = Leadership::partition(state, topic, partition);
    let records = &records;
    let what = &target.what;
    at_leader(
        state,
        &target,
        was_forwarded,
        |replica| async move { append_here(state, &replica, what, records.clone(), producer).await },
        |channel| async move { append_there(channel, topic, partition, records, producer).await },
    )
    .await
}

/// Proposes the batch at the local leader replica.
async fn append_here(
    state: &NodeContext,
    replica: &Replica,
    what: &str,
    records: Vec<Record>,
    producer: Option<ProducerSequence>,
) -> Attempt<u64> {
    let now_ms = replica.stamp();
    let written = match producer {
        None => {
            replica.raft.client_write(PartitionEntry { now_ms, command: PartitionCommand::Append { records } }).await
        }
        Some(producer) => {
            let count = records.len() as u64;
            let entry = PartitionEntry { now_ms, command: PartitionCommand::AppendIdempotent { records, producer } };
            let (responder, outcome) = ProgressResponder::complete_only();
            let enqueue = || replica.raft.client_write_ff(entry, Some(responder));
            match replica.proposal_order.propose_in_order(&producer, count, enqueue).await {
                Ok(()) => match outcome.await {
                    Ok(result) => result.map_err(RaftError::APIError),
                    Err(_) => {
                        return Attempt::Done(Err(ApiError::new(
                            ErrorCode::Unavailable,
                            format!("{what}: the Raft group stopped before answering"),
                        )));
                    }
                },
                Err(fatal) => Err(RaftError::Fatal(fatal)),
            }
        }
    };
    match written {
        Ok(response) => Attempt::Done(append_outcome(state, what, response.data)),
        Err(err) => match flotilla_raft::endpoint_propose_error(err) {
            // Lost leadership before appending: nothing was written, try again.
            err @ ProposeError::NotLeader { .. } => Attempt::Retry(ApiError::from_propose(what, err)),
            // The entry may or may not commit; an idempotent batch can simply be sent again: if
            // the first one commits, the partition answers its offsets.
            err @ ProposeError::OutcomeUnknown { .. } if producer.is_some() => {
                Attempt::Retry(ApiError::from_propose(what, err))
            }
            other => Attempt::Done(Err(ApiError::from_propose(what, other))),
        },
    }
}

/// Forwards the batch to the partition's leader over `channel`.
async fn append_there(
    channel: tonic::transport::Channel,
    topic: &TopicRecord,
    partition: PartitionId,
    records: &[Record],
    producer: Option<ProducerSequence>,
) -> Attempt<u64> {
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
        .produce(forwarded(message, FORWARD_TIMEOUT))
        .await
    {
        Ok(response) => Attempt::Done(response.into_inner().acks.first().map(|ack| ack.offset).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Internal,
                format!("partition {partition} of topic {:?}: forwarded produce returned no acks", topic.name),
            )
        })),
        Err(status) => {
            // Retry only when the records were certainly not appended: the leader said it does
            // not lead, or the connection was never made. After any other failure (a reset
            // mid-request, a timeout) the append may have happened, and a retry here would
            // store the records twice — unless the batch is idempotent: then the partition
            // answers a retry of an appended batch with its first offsets, so every failure
            // that is not a refusal (a transport error, a retriable code) is retried.
            let wire = flotilla_proto::error::WireError::from_status(&status);
            let not_appended = matches!(wire.code, Some(ErrorCode::NotLeader | ErrorCode::LeaderUnavailable))
                || (wire.code.is_none() && never_connected(&status));
            let deduplicated = producer.is_some() && wire.code.is_none_or(|code| code.is_retriable());
            if not_appended || deduplicated {
                Attempt::Retry(from_status(&status))
            } else {
                Attempt::Done(Err(from_status(&status)))
            }
        }
    }
}

/// The offsets of an applied append, or the error its refusal maps to.
fn append_outcome(state: &NodeContext, what: &str, response: PartitionResponse) -> Result<u64, ApiError> {
    match response {
        PartitionResponse::Appended { base_offset, .. } => Ok(base_offset),
        PartitionResponse::Duplicate { base_offset, .. } => {
            state.produce_duplicates.fetch_add(1, Ordering::Relaxed);
            Ok(base_offset)
        }
        PartitionResponse::Rejected(rejection) => Err(ApiError::rejected(what, rejection)),
        PartitionResponse::Done | PartitionResponse::Trimmed { .. } => {
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

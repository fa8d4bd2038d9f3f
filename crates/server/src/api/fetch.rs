//! `FetchService`: reads committed records at the partition leader, with long polling.

use std::sync::Arc;
use std::time::Duration;

use flotilla_broker::FetchedBatch;
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

use crate::api_error::{ApiError, from_status};
use crate::context::NodeContext;
use crate::partitions::Replica;
use crate::routing::{Attempt, FORWARD_TIMEOUT, Leadership, at_leader, forwarded, is_forwarded};

/// Records returned when a fetch does not say.
const DEFAULT_FETCH_RECORDS: u32 = 1000;
/// Bytes returned when a fetch does not say.
const DEFAULT_FETCH_BYTES: u32 = 1024 * 1024;

/// Serves `flotilla.v1.FetchService`.
pub struct FetchApi {
    state: Arc<NodeContext>,
}

impl FetchApi {
    /// The service over `state`.
    pub fn new(state: Arc<NodeContext>) -> Self {
        FetchApi { state }
    }
}

/// Confirms that the local leader `replica` still leads, by a lease read, which also waits
/// until everything committed before it is applied here: so the high watermark a client sees
/// never goes backwards, even across a leader change. A replica that cannot confirm is asked
/// again through the leader lookup.
async fn confirm_leading(replica: &Replica, what: &str) -> Result<(), ApiError> {
    replica
        .raft
        .ensure_linearizable(ReadPolicy::LeaseRead)
        .await
        .map(|_| ())
        .map_err(|err| ApiError::new(ErrorCode::NotLeader, format!("this node cannot confirm it leads {what}: {err}")))
}

/// The retry rule of reads: a read has no effect, so any answer that says no leader served it
/// is tried again.
fn read_attempt<T>(result: Result<Response<T>, Status>) -> Attempt<T> {
    Attempt::unless_no_leader(result.map(Response::into_inner).map_err(|status| from_status(&status)))
}

#[tonic::async_trait]
impl FetchService for FetchApi {
    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        let was_forwarded = is_forwarded(&request);
        let request = request.into_inner();
        let state = &self.state;
        let topic = state.topic(&request.topic)?;
        state.check_partition(&topic, request.partition)?;
        let target = Leadership::partition(state, &topic, request.partition);
        let (request, what) = (&request, &target.what);
        let response = at_leader(
            state,
            &target,
            was_forwarded,
            |replica| async move {
                match confirm_leading(&replica, what).await {
                    Ok(()) => Attempt::Done(serve_fetch(state, &replica, request).await),
                    Err(err) => Attempt::Retry(err),
                }
            },
            |channel| async move {
                let wait = Duration::from_millis(u64::from(request.max_wait_ms));
                read_attempt(
                    FetchServiceClient::new(channel)
                        .max_decoding_message_size(usize::MAX)
                        .fetch(forwarded(request.clone(), FORWARD_TIMEOUT + wait))
                        .await,
                )
            },
        )
        .await?;
        Ok(Response::new(response))
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
    state: &NodeContext,
    topic: &TopicRecord,
    partition: PartitionId,
    timestamp_ms: Option<i64>,
    was_forwarded: bool,
) -> Result<PartitionOffsets, ApiError> {
    let target = Leadership::partition(state, topic, partition);
    let what = &target.what;
    at_leader(
        state,
        &target,
        was_forwarded,
        |replica| async move {
            if let Err(err) = confirm_leading(&replica, what).await {
                return Attempt::Retry(err);
            }
            let marks = replica.watermarks();
            let offset_for_timestamp = match timestamp_ms {
                Some(timestamp_ms) => {
                    let reader = replica.reader.clone();
                    match state.read_storage(move || reader.offset_for_time(timestamp_ms, marks)).await {
                        Ok(Ok(found)) => Some(found),
                        Ok(Err(err)) => return Attempt::Done(Err(ApiError::read(what, err))),
                        Err(err) => return Attempt::Done(Err(err)),
                    }
                }
                None => None,
            };
            Attempt::Done(Ok(PartitionOffsets {
                partition,
                log_start_offset: marks.log_start,
                high_watermark: marks.high_watermark,
                offset_for_timestamp,
            }))
        },
        |channel| async move {
            let message = ListOffsetsRequest { topic: topic.name.clone(), partitions: vec![partition], timestamp_ms };
            match read_attempt(FetchServiceClient::new(channel).list_offsets(forwarded(message, FORWARD_TIMEOUT)).await)
            {
                Attempt::Done(Ok(found)) => match found.partitions.into_iter().next() {
                    Some(offsets) => Attempt::Done(Ok(offsets)),
                    None => Attempt::Retry(ApiError::new(
                        ErrorCode::Internal,
                        format!("{what}: the leader answered ListOffsets without the partition"),
                    )),
                },
                Attempt::Done(Err(err)) => Attempt::Done(Err(err)),
                Attempt::Retry(err) => Attempt::Retry(err),
            }
        },
    )
    .await
}

/// Serves a fetch from the local leader replica.
async fn serve_fetch(
    state: &NodeContext,
    replica: &Replica,
    request: &FetchRequest,
) -> Result<FetchResponse, ApiError> {
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
    let mut status = replica.status.clone();
    let mut marks = status.borrow_and_update().watermarks;
    if request.offset == marks.high_watermark && !wait.is_zero() {
        // Long poll: wake on the first apply past the offset, or give up at the deadline.
        let deadline = Instant::now() + wait;
        while marks.high_watermark <= request.offset {
            match tokio::time::timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => marks = status.borrow_and_update().watermarks,
                _ => break,
            }
        }
    }
    let reader = replica.reader.clone();
    let offset = request.offset;
    let read = move || reader.read(offset, max_records, max_bytes, marks);
    let batch = state.read_storage(read).await?;
    let what = format!("partition {} of topic {:?}", request.partition, request.topic);
    let batch: FetchedBatch = batch.map_err(|err| ApiError::read(&what, err))?;
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

//! `IdempotentProducer`: a producer session whose retries never append a batch twice.
//!
//! The session holds a producer id and epoch from `InitProducer` and, per partition, the
//! sequence number of the next record. Each batch gets its sequence once; every retry resends
//! the same records under the same sequence, and the partition answers a batch it has already
//! appended with the offsets it got the first time (DESIGN.md §2, promise 4). The numbering
//! and the reading of answers are the [`Sequencer`]'s, shared with the batching
//! [`crate::Producer`]; this session is that sequencer with one batch in flight, driven by the
//! caller's own batches.

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_proto::v1;
use flotilla_types::PartitionId;
use futures::future::join_all;

use crate::Client;
use crate::error::ClientError;
use crate::plan::{SubBatchOutcome, reassemble, split};
use crate::producer::{BatchId, Outcome, Sequencer, Verdict};

/// A producer session with exactly-once appends for its retries.
///
/// What "exactly once" covers: every batch [`IdempotentProducer::send`] acknowledges is in its
/// partition once, however many times it was resent (timeouts, lost connections, leader
/// changes) — by this call, or by a later call with the same records after an error with an
/// unknown outcome (see below). It does not cover a new session: a process that crashes and
/// starts over gets a new producer id, and the partitions cannot tell its resends from new
/// records. Deduplicating across restarts needs idempotency keys.
///
/// Errors and what to do:
/// - retriable errors ([`ClientError::is_retriable`], e.g. retries exhausted during a long
///   outage) leave the batch *in doubt*: call `send` again with the same records for that
///   partition and it is appended at most once; other records for that partition fail with
///   [`ClientError::SequenceInDoubt`] until then.
/// - refusals (`OUT_OF_ORDER_SEQUENCE`, `PRODUCER_FENCED`, invalid input) append nothing.
///   After `PRODUCER_FENCED` every call fails: another session owns the producer id. After
///   `OUT_OF_ORDER_SEQUENCE` the partition has lost track of this session (it remembers 10,000
///   producers): start a new session.
///
/// One batch per partition is in flight at a time; calls for the same partition wait for each
/// other, calls for different partitions run concurrently. Cheap to share behind an `Arc`.
pub struct IdempotentProducer {
    client: Client,
    producer_id: u64,
    producer_epoch: u32,
    /// Sequence state per (topic, partition).
    partitions: parking_lot::Mutex<BTreeMap<(String, PartitionId), SequenceSlot>>,
    /// Set once a partition said another session took over this producer id.
    fenced: parking_lot::Mutex<Option<ClientError>>,
}

/// One partition's sequence state; the async lock keeps one batch per partition in flight.
type SequenceSlot = Arc<tokio::sync::Mutex<PartitionSequence>>;

/// Where this session stands with one partition.
struct PartitionSequence {
    /// Numbers the batches, one in flight at a time.
    sequencer: Sequencer,
    /// Id of the next batch.
    next_id: BatchId,
    /// A batch sent without a definite answer: it must be settled before any other.
    in_doubt: Option<InDoubt>,
}

struct InDoubt {
    id: BatchId,
    base_sequence: u64,
    records: Vec<v1::Record>,
}

impl std::fmt::Debug for IdempotentProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotentProducer")
            .field("producer_id", &self.producer_id)
            .field("producer_epoch", &self.producer_epoch)
            .finish_non_exhaustive()
    }
}

impl IdempotentProducer {
    /// A session over `client` for the producer id and epoch `InitProducer` returned.
    pub(crate) fn new(client: Client, producer_id: u64, producer_epoch: u32) -> IdempotentProducer {
        IdempotentProducer {
            client,
            producer_id,
            producer_epoch,
            partitions: parking_lot::Mutex::new(BTreeMap::new()),
            fenced: parking_lot::Mutex::new(None),
        }
    }

    /// The session's producer id.
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// The session's epoch.
    pub fn producer_epoch(&self) -> u32 {
        self.producer_epoch
    }

    /// Appends `records` to one partition as one batch and returns where each landed, in order.
    /// The batch takes the partition's next sequence numbers once; retriable failures are
    /// retried with the client's backoff, always with the same records and sequence, so the
    /// batch is appended at most once. The sequence moves on only when the batch succeeds.
    pub async fn send(
        &self,
        topic: &str,
        partition: PartitionId,
        records: Vec<v1::Record>,
    ) -> Result<Vec<v1::RecordAck>, ClientError> {
        if let Some(fenced) = self.fenced_error() {
            return Err(fenced);
        }
        let slot = self.slot(topic, partition);
        let mut sequence = slot.lock().await;
        let count = records.len();
        let (id, stamp) = match &sequence.in_doubt {
            None => {
                let id = sequence.next_id;
                sequence.next_id += 1;
                (id, sequence.sequencer.assign(id, count))
            }
            Some(doubt) if doubt.records == records => {
                let id = doubt.id;
                if sequence.sequencer.in_flight(id) {
                    // The call that sent it was dropped mid-request: its outcome is unknown.
                    sequence.sequencer.on_outcome(id, Outcome::Unknown);
                }
                (id, sequence.sequencer.resend(id).flatten())
            }
            Some(doubt) => {
                return Err(ClientError::SequenceInDoubt {
                    producer_id: self.producer_id,
                    topic: topic.to_string(),
                    partition,
                    base_sequence: doubt.base_sequence,
                    records: doubt.records.len(),
                });
            }
        };
        let Some(stamp) = stamp else {
            return Err(ClientError::Protocol {
                operation: "produce",
                detail: format!("producer {} has no sequence for its batch to {topic}/{partition}", self.producer_id),
            });
        };
        let idempotence = v1::ProducerSequence {
            producer_id: self.producer_id,
            producer_epoch: stamp.epoch,
            base_sequence: stamp.base_sequence,
        };
        // In doubt from the moment it leaves: if the caller drops this future mid-request (a
        // timeout around `send`), the batch may still land, and the next call must resend it
        // rather than reuse its sequence for other records (which the partition would answer
        // as a duplicate, silently dropping them).
        if sequence.in_doubt.is_none() {
            sequence.in_doubt = Some(InDoubt { id, base_sequence: stamp.base_sequence, records: records.clone() });
        }
        let result = self.client.produce_to(topic, Some(partition), records, Some(idempotence), None).await;
        match sequence.sequencer.on_outcome(id, Outcome::of(&result)) {
            Verdict::Settled | Verdict::Failed => sequence.in_doubt = None,
            // With one batch in flight nothing is parked or stranded: those stay in doubt too.
            Verdict::Retry | Verdict::Parked | Verdict::Stranded => {}
            Verdict::Fenced => {
                if let Err(error) = &result {
                    self.fenced.lock().get_or_insert_with(|| error.clone());
                }
            }
        }
        result
    }

    /// Appends `records` to `topic`, split by partition the way [`Client::produce`] splits them:
    /// keyed records by `murmur2(key) mod partitions`. Keyless records all go to one partition
    /// fixed for the session (`producer_id mod partitions`), so a retried call sends them where
    /// the first attempt did. Each partition's share is one batch with its own sequence, sent
    /// concurrently; acknowledgements come back in call order.
    ///
    /// If some partitions fail the error is [`ClientError::PartiallyAcknowledged`]: resend only
    /// the records without an ack (resending acknowledged ones would append them again, as new
    /// records). The records of an in-doubt partition are then the same batch again.
    pub async fn send_keyed(&self, topic: &str, records: Vec<v1::Record>) -> Result<Vec<v1::RecordAck>, ClientError> {
        let partitions = self.client.partition_count(topic).await?;
        if partitions == 0 {
            return Err(ClientError::UnknownTopic { topic: topic.to_string() });
        }
        let keyless_partition = (self.producer_id % u64::from(partitions)) as PartitionId;
        let total = records.len();
        let batches = split(records, partitions, keyless_partition);
        let sends = batches.into_iter().map(|batch| async move {
            let result = self.send(topic, batch.partition, batch.records).await;
            (batch.partition, batch.positions, result) as SubBatchOutcome
        });
        reassemble(total, join_all(sends).await)
    }

    fn slot(&self, topic: &str, partition: PartitionId) -> SequenceSlot {
        let mut partitions = self.partitions.lock();
        let slot = partitions.entry((topic.to_string(), partition)).or_insert_with(|| {
            Arc::new(tokio::sync::Mutex::new(PartitionSequence {
                sequencer: Sequencer::new(Some(self.producer_epoch), 1),
                next_id: 0,
                in_doubt: None,
            }))
        });
        Arc::clone(slot)
    }

    fn fenced_error(&self) -> Option<ClientError> {
        self.fenced.lock().clone()
    }
}

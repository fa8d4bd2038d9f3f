//! Commands a partition group applies, and their outcomes.

use flotilla_types::Record;
use serde::{Deserialize, Serialize};

/// A change to a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionCommand {
    /// Appends records; they get consecutive offsets at apply. `timestamp_ms` is the leader's
    /// clock when it accepted the batch and stamps records that came without a timestamp.
    Append { records: Vec<Record>, timestamp_ms: i64 },
    /// Appends a batch of an idempotent producer, unless the partition's producer table shows
    /// it was appended already (then the answer is the first append's offsets) or the batch is
    /// out of order or from a fenced epoch (then nothing is appended). A variant of its own,
    /// rather than a field of `Append`, so log entries written before it still decode.
    AppendIdempotent { records: Vec<Record>, timestamp_ms: i64, producer: ProducerSequence },
}

impl PartitionCommand {
    /// The records the entry carries and the leader's accept time, whether or not apply
    /// appended them (the index says which entries hold appended records).
    pub fn into_records(self) -> (Vec<Record>, i64) {
        match self {
            PartitionCommand::Append { records, timestamp_ms }
            | PartitionCommand::AppendIdempotent { records, timestamp_ms, .. } => (records, timestamp_ms),
        }
    }
}

/// Who sent an idempotent batch and where it falls in that producer's stream of records to
/// this partition: record `i` of the batch has sequence `base_sequence + i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerSequence {
    /// Allocated by the metadata group; never 0, never reused.
    pub producer_id: u64,
    /// Higher epochs of the same id fence lower ones.
    pub producer_epoch: u32,
    /// Sequence of the batch's first record.
    pub base_sequence: u64,
}

impl std::fmt::Display for PartitionCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionCommand::Append { records, .. } => write!(f, "append {} records", records.len()),
            PartitionCommand::AppendIdempotent { records, producer, .. } => write!(
                f,
                "append {} records from producer {} epoch {} at sequence {}",
                records.len(),
                producer.producer_id,
                producer.producer_epoch,
                producer.base_sequence
            ),
        }
    }
}

/// The outcome of a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionResponse {
    /// Nothing to report (blank and membership entries).
    #[default]
    Done,
    /// Records got offsets `[base_offset, base_offset + count)`.
    Appended { base_offset: u64, count: u32 },
    /// An idempotent batch the partition had appended already: it was not appended again, and
    /// `[base_offset, base_offset + count)` are the offsets it got the first time.
    Duplicate { base_offset: u64, count: u32 },
    /// Nothing was appended, for this reason.
    Rejected(PartitionRejection),
}

/// Why a partition refused an idempotent batch. Decided at apply, identically on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PartitionRejection {
    /// The partition has seen a higher epoch of this producer id: this session was replaced.
    #[error(
        "producer {producer_id} epoch {epoch} is fenced: the partition has seen epoch {current_epoch} of that \
         producer; this session was replaced, start a new one"
    )]
    ProducerFenced { producer_id: u64, epoch: u32, current_epoch: u32 },
    /// The batch is neither the next one nor one of the last batches appended.
    #[error(
        "producer {producer_id} epoch {epoch} sent a batch at sequence {received}; the partition expected sequence \
         {expected} (the first sequence after its last appended batch, or 0 for a producer it does not know); \
         only the last {cached} batches are answered as duplicates",
        cached = crate::producer_table::BATCHES_PER_PRODUCER
    )]
    OutOfOrderSequence { producer_id: u64, epoch: u32, expected: u64, received: u64 },
}

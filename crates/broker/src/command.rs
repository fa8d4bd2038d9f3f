//! What a partition group applies: [`PartitionEntry`] (a command stamped with the leader's
//! clock) and the outcomes.
//!
//! Stored in the Raft log under the command format version of `PartitionConfig`. Variants of
//! [`PartitionCommand`] are only ever appended at the end, never reordered or removed, so every
//! log entry ever written keeps decoding; any other change bumps the version.

use flotilla_types::{Record, RetentionPolicy};
use serde::{Deserialize, Serialize};

/// A partition log entry: a command and the leader's clock reading when it proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionEntry {
    /// The leader's clock (ms since the epoch) when it proposed the entry. Apply takes its
    /// time from here, never from the applying node's clock, and never lets it go backwards:
    /// the entry's *replicated time* is the largest `now_ms` applied so far in the group.
    /// Records that come without a timestamp are stamped with this reading.
    pub now_ms: i64,
    pub command: PartitionCommand,
}

/// A change to a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionCommand {
    /// Appends records; they get consecutive offsets at apply.
    Append { records: Vec<Record> },
    /// Appends a batch of an idempotent producer, unless the partition's producer table shows
    /// it was appended already (then the answer is the first append's offsets) or the batch is
    /// out of order or from a fenced epoch (then nothing is appended).
    AppendIdempotent { records: Vec<Record>, producer: ProducerSequence },
    /// Runs whatever the parts have due at the entry's replicated time (retention by age). The
    /// leader proposes one only when a part has a deadline that has passed.
    Tick,
    /// Deletes every record below `before_offset` (`DeleteRecords`, `flo topic trim`); the
    /// log start becomes `before_offset`. Refused past the high watermark.
    DeleteRecords { before_offset: u64 },
    /// The topic's retention as the catalogue has it, brought into the partition's log so
    /// every replica applies a change at the same position.
    Configure { retention: RetentionPolicy },
}

impl PartitionCommand {
    /// The records the entry carries (none for commands without records).
    pub fn into_records(self) -> Vec<Record> {
        match self {
            PartitionCommand::Append { records } | PartitionCommand::AppendIdempotent { records, .. } => records,
            PartitionCommand::Tick | PartitionCommand::DeleteRecords { .. } | PartitionCommand::Configure { .. } => {
                Vec::new()
            }
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

impl std::fmt::Display for PartitionEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.command {
            PartitionCommand::Append { records } => write!(f, "append {} records", records.len()),
            PartitionCommand::AppendIdempotent { records, producer } => write!(
                f,
                "append {} records from producer {} epoch {} at sequence {}",
                records.len(),
                producer.producer_id,
                producer.producer_epoch,
                producer.base_sequence
            ),
            PartitionCommand::Tick => write!(f, "tick at {}", self.now_ms),
            PartitionCommand::DeleteRecords { before_offset } => write!(f, "delete records before {before_offset}"),
            PartitionCommand::Configure { retention } => write!(f, "configure {retention:?}"),
        }
    }
}

/// The outcome of a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionResponse {
    /// Nothing to report (blank and membership entries, ticks, configuration).
    #[default]
    Done,
    /// Records got offsets `[base_offset, base_offset + count)`.
    Appended { base_offset: u64, count: u32 },
    /// An idempotent batch the partition had appended already: it was not appended again, and
    /// `[base_offset, base_offset + count)` are the offsets it got the first time.
    Duplicate { base_offset: u64, count: u32 },
    /// Nothing was appended or deleted, for this reason.
    Rejected(PartitionRejection),
    /// Records below `log_start` are deleted (by `DeleteRecords`).
    Trimmed { log_start: u64 },
}

/// Why a partition refused a command. Decided at apply, identically on every replica.
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
        cached = crate::producers::BATCHES_PER_PRODUCER
    )]
    OutOfOrderSequence { producer_id: u64, epoch: u32, expected: u64, received: u64 },
    /// A `DeleteRecords` past the high watermark: it would delete records not yet written.
    #[error(
        "cannot delete records before offset {before_offset}: the high watermark is {high_watermark}, and a trim \
         never removes records that are not yet committed"
    )]
    TrimBeyondHighWatermark { before_offset: u64, high_watermark: u64 },
    /// The partition does not know the producer and cannot tell whether it forgot it: the
    /// id is at or below the highest id it evicted to stay within its producer bound.
    #[error(
        "producer {producer_id} is unknown to the partition: it remembers at most {max} producers and has          forgotten producers with ids up to {evicted_through}, so it can no longer tell whether this batch was          appended before; start a new producer session",
        max = crate::producers::PRODUCERS_PER_PARTITION_MAX
    )]
    UnknownProducerId { producer_id: u64, evicted_through: u64 },
}

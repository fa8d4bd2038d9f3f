//! Errors of partition reads.

use flotilla_types::GroupId;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The offset lies outside what the partition holds.
    #[error("offset {offset} is out of range for partition {group}: valid offsets are {log_start}..={high_watermark}")]
    OffsetOutOfRange { group: GroupId, offset: u64, log_start: u64, high_watermark: u64 },
    /// Storage failed or returned something that does not decode.
    #[error("reading partition {group}: {source}")]
    Storage {
        group: GroupId,
        #[source]
        source: std::io::Error,
    },
}

//! Commands a partition group applies.

use flotilla_types::Record;
use serde::{Deserialize, Serialize};

/// A change to a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionCommand {
    /// Appends records; they get consecutive offsets at apply. `timestamp_ms` is the leader's
    /// clock when it accepted the batch and stamps records that came without a timestamp.
    Append { records: Vec<Record>, timestamp_ms: i64 },
}

impl std::fmt::Display for PartitionCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PartitionCommand::Append { records, .. } => write!(f, "append {} records", records.len()),
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
}

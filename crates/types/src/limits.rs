//! Sizes a client may send. Every one bounds memory on the server and is named in the error
//! a client gets when it exceeds it.

use serde::{Deserialize, Serialize};

/// Request and record size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest record: key + value + headers.
    pub record_bytes_max: usize,
    /// Largest produce request, all records together. Also the gRPC message limit, so an
    /// oversized request is refused before it is decoded.
    pub batch_bytes_max: usize,
    /// Most records in one produce request.
    pub batch_records_max: usize,
    /// Most records one fetch returns.
    pub fetch_records_max: u32,
    /// Most bytes one fetch returns (at least one record is always returned).
    pub fetch_bytes_max: u32,
    /// Longest long-poll wait a fetch may ask for.
    pub fetch_wait_ms_max: u32,
    /// Most partitions per topic.
    pub partitions_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            record_bytes_max: 1024 * 1024,
            batch_bytes_max: 8 * 1024 * 1024,
            batch_records_max: 100_000,
            fetch_records_max: 10_000,
            fetch_bytes_max: 8 * 1024 * 1024,
            fetch_wait_ms_max: 60_000,
            partitions_max: 10_000,
        }
    }
}

//! Sizes a client may send. Every one bounds memory on the server and is named in the error
//! a client gets when it exceeds it.

use serde::{Deserialize, Serialize};

/// Request and record size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest record: key + value + headers.
    pub record_bytes_max: usize,
    /// Largest produce request, all records together. With the framing of
    /// `batch_records_max` records it makes the gRPC message limit
    /// ([`Limits::request_bytes_max`]), so an oversized request is refused before it is decoded.
    pub batch_bytes_max: usize,
    /// Most records in one produce request.
    pub batch_records_max: usize,
    /// Most headers on one record.
    pub headers_per_record_max: usize,
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
            headers_per_record_max: 64,
            fetch_records_max: 10_000,
            fetch_bytes_max: 8 * 1024 * 1024,
            fetch_wait_ms_max: 60_000,
            partitions_max: 10_000,
        }
    }
}

/// What one header costs toward `record_bytes_max` beyond its key and value: an empty header
/// is not free (it costs the server a few dozen bytes of memory), so it is not counted as 0.
pub const HEADER_OVERHEAD_BYTES: usize = 16;

/// Protobuf framing per record beyond its payload, at most: the record's own tag and length,
/// the key's and value's, and the timestamp.
const RECORD_FRAMING_BYTES: usize = 24;

impl Limits {
    /// Largest gRPC request a node decodes: a full produce batch (`batch_bytes_max`, where
    /// headers count with their overhead) plus the framing of `batch_records_max` records
    /// and 64 KiB for the rest of the request. Larger requests are refused before decoding.
    pub fn request_bytes_max(&self) -> usize {
        self.batch_bytes_max
            .saturating_add(self.batch_records_max.saturating_mul(RECORD_FRAMING_BYTES))
            .saturating_add(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_limit_is_the_batch_limit_plus_a_small_margin() {
        let limits = Limits::default();
        let margin = limits.request_bytes_max() - limits.batch_bytes_max;
        assert!(margin < limits.batch_bytes_max / 2, "margin {margin} for a {} byte batch", limits.batch_bytes_max);
    }
}

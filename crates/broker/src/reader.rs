//! `PartitionReader`: serves fetches from the Raft log through the offset index.

use std::sync::Arc;

use flotilla_raft::{decode, openraft};
use flotilla_storage::{Direction, Engine, Space, group_key, group_prefix_range};
use flotilla_types::{GroupId, Record};
use openraft::EntryPayload;
use openraft::RaftTypeConfig;

use crate::state_machine::{INDEX_PREFIX, IndexEntry, index_key};
use crate::{BrokerError, PartitionConfig, PartitionWatermarks};

/// Index entries read per storage scan while walking forward.
const INDEX_SCAN_CHUNK: usize = 64;

/// Records read by one fetch, in offset order, contiguous from the requested offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchedBatch {
    pub records: Vec<(u64, Record)>,
}

/// Reads one partition's committed records.
#[derive(Clone)]
pub struct PartitionReader {
    group: GroupId,
    engine: Arc<dyn Engine>,
}

impl PartitionReader {
    /// A reader of `group`'s records in `engine`.
    pub fn new(group: GroupId, engine: Arc<dyn Engine>) -> Self {
        PartitionReader { group, engine }
    }

    /// The partition group this reader reads.
    pub fn group(&self) -> GroupId {
        self.group
    }

    fn storage(&self, source: std::io::Error) -> BrokerError {
        BrokerError::Storage { group: self.group, source }
    }

    /// Reads from `offset` up to `max_records` records or about `max_bytes` (at least one
    /// record when any is available), never at or past `watermarks.high_watermark`.
    pub fn read(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: usize,
        watermarks: PartitionWatermarks,
    ) -> Result<FetchedBatch, BrokerError> {
        let high_watermark = watermarks.high_watermark;
        if offset < watermarks.log_start || offset > high_watermark {
            return Err(BrokerError::OffsetOutOfRange {
                group: self.group,
                offset,
                log_start: watermarks.log_start,
                high_watermark,
            });
        }
        let mut out = FetchedBatch::default();
        if offset == high_watermark || max_records == 0 {
            return Ok(out);
        }
        // The batch holding `offset` is the one with the greatest base offset <= offset.
        let prefix = group_prefix_range(self.group.0, INDEX_PREFIX);
        let upto = index_key(self.group, offset + 1);
        let first = self
            .engine
            .scan(Space::StateMachine, &prefix.start[..]..&upto[..], Direction::Reverse, 1)
            .map_err(|e| self.storage(e.into()))?;
        let Some((first_key, _)) = first.into_iter().next() else {
            return Err(self.storage(std::io::Error::other(format!("no index entry at or below offset {offset}"))));
        };
        let mut cursor = first_key;
        let mut bytes = 0usize;
        let mut next_offset = offset;
        'scan: loop {
            let rows = self
                .engine
                .scan(Space::StateMachine, &cursor[..]..&prefix.end[..], Direction::Forward, INDEX_SCAN_CHUNK)
                .map_err(|e| self.storage(e.into()))?;
            if rows.is_empty() {
                break;
            }
            let last_key = rows.last().map(|(k, _)| k.clone()).expect("rows is not empty");
            for (key, value) in rows {
                let base = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("index keys end in 8 bytes"));
                if base >= high_watermark {
                    break 'scan;
                }
                let entry: IndexEntry = decode(&value).map_err(|e| self.storage(e))?;
                let (records, timestamp_ms) = self.batch_records(entry.log_index)?;
                assert_eq!(
                    records.len(),
                    entry.count as usize,
                    "partition {} index says log entry {} holds {} records",
                    self.group,
                    entry.log_index,
                    entry.count
                );
                for (i, mut record) in records.into_iter().enumerate() {
                    let record_offset = base + i as u64;
                    if record_offset < next_offset {
                        continue;
                    }
                    if record_offset >= high_watermark {
                        break 'scan;
                    }
                    // Offsets are dense: a gap here means the index or the log is corrupt.
                    assert_eq!(record_offset, next_offset, "partition {} offset gap", self.group);
                    let size = record.size_bytes();
                    if !out.records.is_empty() && bytes + size > max_bytes {
                        break 'scan;
                    }
                    if record.timestamp_ms == 0 {
                        record.timestamp_ms = timestamp_ms;
                    }
                    bytes += size;
                    out.records.push((record_offset, record));
                    next_offset += 1;
                    if out.records.len() >= max_records {
                        break 'scan;
                    }
                }
            }
            // Continue after the last key of this chunk.
            cursor = last_key;
            cursor.push(0);
        }
        Ok(out)
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, or the high
    /// watermark when no record is that recent (Kafka's ListOffsets by time). Walks the index,
    /// which carries each batch's latest timestamp, and opens only the batch that holds it.
    pub fn offset_for_time(&self, timestamp_ms: i64, watermarks: PartitionWatermarks) -> Result<u64, BrokerError> {
        let high_watermark = watermarks.high_watermark;
        let prefix = group_prefix_range(self.group.0, INDEX_PREFIX);
        let mut cursor = index_key(self.group, watermarks.log_start);
        // The batch holding log_start may begin below it.
        let first = self
            .engine
            .scan(Space::StateMachine, &prefix.start[..]..&cursor[..], Direction::Reverse, 1)
            .map_err(|e| self.storage(e.into()))?;
        if let Some((key, _)) = first.into_iter().next() {
            cursor = key;
        }
        loop {
            let rows = self
                .engine
                .scan(Space::StateMachine, &cursor[..]..&prefix.end[..], Direction::Forward, INDEX_SCAN_CHUNK)
                .map_err(|e| self.storage(e.into()))?;
            let Some((last_key, _)) = rows.last().cloned() else { return Ok(high_watermark) };
            for (key, value) in rows {
                let base = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("index keys end in 8 bytes"));
                if base >= high_watermark {
                    return Ok(high_watermark);
                }
                let entry: IndexEntry = decode(&value).map_err(|e| self.storage(e))?;
                if entry.max_timestamp_ms < timestamp_ms {
                    continue;
                }
                let (records, batch_timestamp_ms) = self.batch_records(entry.log_index)?;
                let found = records.iter().enumerate().find_map(|(i, record)| {
                    let offset = base + i as u64;
                    let stamp = if record.timestamp_ms == 0 { batch_timestamp_ms } else { record.timestamp_ms };
                    (offset >= watermarks.log_start && offset < high_watermark && stamp >= timestamp_ms)
                        .then_some(offset)
                });
                if let Some(offset) = found {
                    return Ok(offset);
                }
            }
            cursor = last_key;
            cursor.push(0);
        }
    }

    fn batch_records(&self, log_index: u64) -> Result<(Vec<Record>, i64), BrokerError> {
        let key = group_key(self.group.0, &log_index.to_be_bytes());
        let bytes = self
            .engine
            .get(Space::RaftLog, &key)
            .map_err(|e| self.storage(e.into()))?
            .ok_or_else(|| self.storage(std::io::Error::other(format!("log entry {log_index} is missing"))))?;
        let entry: <PartitionConfig as RaftTypeConfig>::Entry = decode(&bytes).map_err(|e| self.storage(e))?;
        match entry.payload {
            EntryPayload::Normal(command) => Ok(command.into_records()),
            other => Err(self.storage(std::io::Error::other(format!(
                "index points at log entry {log_index} that holds no records: {other}"
            )))),
        }
    }
}

//! `PartitionReader`: serves fetches from the Raft log through the offset index.
//!
//! Each read goes through one engine view, so it sees the index, the log and the log start of
//! one moment: retention deleting the batches it reads (the index first, the log entries after
//! the partition driver's purge) can at most move the log start past the offset asked for, which is
//! then answered as out of range, never as a gap or a missing entry.

use std::sync::Arc;

use flotilla_raft::{LogLayout, decode_versioned, openraft};
use flotilla_storage::{Engine, EngineView, Space};
use flotilla_types::{GroupId, Record};
use openraft::EntryPayload;

use super::index::{LogMeta, batch_holding, scan_index};
use crate::keys::Prefix;
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

    /// A view to read from, and the range `watermarks` allows that the view still holds: the
    /// caller's high watermark (never read past what it was shown) and the later of the two log
    /// starts.
    fn view(&self, watermarks: PartitionWatermarks) -> Result<(Arc<dyn EngineView>, PartitionWatermarks), BrokerError> {
        let view = self.engine.view();
        let stored =
            view.get(Space::StateMachine, &Prefix::LogMeta.key(self.group, b"")).map_err(|e| self.storage(e.into()))?;
        let log_start = match stored {
            Some(bytes) => decode_versioned::<LogMeta>(&bytes).map_err(|e| self.storage(e))?.watermarks.log_start,
            None => 0,
        };
        let bounds = PartitionWatermarks { log_start: log_start.max(watermarks.log_start), ..watermarks };
        Ok((view, bounds))
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
        let (view, watermarks) = self.view(watermarks)?;
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
        let Some((first_base, _)) = batch_holding(view.as_ref(), self.group, offset).map_err(|e| self.storage(e))?
        else {
            return Err(self.storage(std::io::Error::other(format!("no index entry at or below offset {offset}"))));
        };
        let mut cursor = first_base;
        let mut bytes = 0usize;
        let mut next_offset = offset;
        'scan: loop {
            let rows = scan_index(view.as_ref(), self.group, cursor, high_watermark, INDEX_SCAN_CHUNK)
                .map_err(|e| self.storage(e))?;
            let Some(&(last_base, _)) = rows.last() else { break };
            for (base, entry) in rows {
                let (records, timestamp_ms) = self.batch_records(view.as_ref(), entry.log_index)?;
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
            // Continue after the last batch of this chunk.
            cursor = last_base + 1;
        }
        Ok(out)
    }

    /// The first offset whose record timestamp is at or after `timestamp_ms`, or the high
    /// watermark when no record is that recent (Kafka's ListOffsets by time). Walks the index,
    /// which carries each batch's latest timestamp, and opens only the batch that holds it.
    pub fn offset_for_time(&self, timestamp_ms: i64, watermarks: PartitionWatermarks) -> Result<u64, BrokerError> {
        let (view, watermarks) = self.view(watermarks)?;
        let high_watermark = watermarks.high_watermark;
        // The batch holding log_start may begin below it.
        let mut cursor =
            match batch_holding(view.as_ref(), self.group, watermarks.log_start).map_err(|e| self.storage(e))? {
                Some((base, _)) => base,
                None => watermarks.log_start,
            };
        loop {
            let rows = scan_index(view.as_ref(), self.group, cursor, high_watermark, INDEX_SCAN_CHUNK)
                .map_err(|e| self.storage(e))?;
            let Some(&(last_base, _)) = rows.last() else { return Ok(high_watermark) };
            for (base, entry) in rows {
                if entry.max_timestamp_ms < timestamp_ms {
                    continue;
                }
                let (records, batch_timestamp_ms) = self.batch_records(view.as_ref(), entry.log_index)?;
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
            cursor = last_base + 1;
        }
    }

    /// The records of the log entry at `log_index` and the leader's clock reading in it.
    fn batch_records(&self, view: &dyn EngineView, log_index: u64) -> Result<(Vec<Record>, i64), BrokerError> {
        let entry =
            LogLayout::new(self.group).read_entry::<PartitionConfig>(view, log_index).map_err(|e| self.storage(e))?;
        // The index promised this entry: its absence means our own data is corrupt.
        let entry = entry.unwrap_or_else(|| {
            panic!("partition {} index names log entry {log_index}, which is missing from the log", self.group)
        });
        match entry.payload {
            EntryPayload::Normal(entry) => Ok((entry.command.into_records(), entry.now_ms)),
            other => Err(self.storage(std::io::Error::other(format!(
                "index points at log entry {log_index} that holds no records: {other}"
            )))),
        }
    }
}

//! `PartitionStateMachine`: assigns offsets to appended batches and keeps the index from
//! offsets to the Raft log entries that hold the records.

use std::io;
use std::sync::Arc;

use flotilla_raft::openraft;
use flotilla_raft::{GroupStateMachine, Persistence, decode, encode};
use flotilla_storage::{Direction, Engine, Space, WriteBatch, group_key, group_prefix_range};
use flotilla_types::GroupId;
use openraft::alias::LogIdOf;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{PartitionCommand, PartitionResponse};

flotilla_raft::declare_group_config!(
    /// openraft types of partition groups.
    pub PartitionConfig: PartitionCommand => PartitionResponse
);

/// Prefix of index keys: `group ++ INDEX_PREFIX ++ base_offset (BE)` → [`IndexEntry`].
pub(crate) const INDEX_PREFIX: &[u8] = b"o";
const STATE_KEY: &[u8] = b"s";

/// Where the batch starting at some offset lives in the Raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    pub log_index: u64,
    pub count: u32,
}

/// The offsets a partition holds: `[log_start, high_watermark)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionWatermarks {
    /// First offset still retained.
    pub log_start: u64,
    /// One past the last applied (so committed) offset.
    pub high_watermark: u64,
}

/// Everything needed to rebuild a replica: watermarks, index and the log entries it points
/// to. Records live in the log, so a snapshot must carry them (DESIGN.md §3's trap).
#[derive(Serialize, Deserialize)]
struct PartitionSnapshot {
    watermarks: PartitionWatermarks,
    batches: Vec<(u64, IndexEntry, Vec<u8>)>,
}

/// The state machine of one partition.
pub struct PartitionStateMachine {
    group: GroupId,
    engine: Arc<dyn Engine>,
    watermarks: PartitionWatermarks,
    published: watch::Sender<PartitionWatermarks>,
}

pub(crate) fn index_key(group: GroupId, base_offset: u64) -> Vec<u8> {
    let mut suffix = INDEX_PREFIX.to_vec();
    suffix.extend_from_slice(&base_offset.to_be_bytes());
    group_key(group.0, &suffix)
}

impl PartitionStateMachine {
    /// Opens the partition of `group`, loading its watermarks from `engine`.
    pub fn open(group: GroupId, engine: Arc<dyn Engine>) -> io::Result<(Self, watch::Receiver<PartitionWatermarks>)> {
        let watermarks = match engine.get(Space::StateMachine, &group_key(group.0, STATE_KEY))? {
            Some(bytes) => decode(&bytes)?,
            None => PartitionWatermarks::default(),
        };
        let (published, rx) = watch::channel(watermarks);
        Ok((PartitionStateMachine { group, engine, watermarks, published }, rx))
    }

    /// Current watermarks.
    pub fn watermarks(&self) -> PartitionWatermarks {
        self.watermarks
    }
}

impl GroupStateMachine<PartitionConfig> for PartitionStateMachine {
    fn persistence(&self) -> Persistence {
        Persistence::Incremental
    }

    fn apply(
        &mut self,
        log_id: &LogIdOf<PartitionConfig>,
        command: PartitionCommand,
        batch: &mut WriteBatch,
    ) -> PartitionResponse {
        match command {
            PartitionCommand::Append { records, .. } => {
                let count = u32::try_from(records.len()).expect("batch sizes are capped far below u32::MAX");
                if count == 0 {
                    return PartitionResponse::Appended { base_offset: self.watermarks.high_watermark, count: 0 };
                }
                let base_offset = self.watermarks.high_watermark;
                let entry = IndexEntry { log_index: log_id.index, count };
                batch.put(Space::StateMachine, index_key(self.group, base_offset), encode(&entry));
                self.watermarks.high_watermark = base_offset + u64::from(count);
                batch.put(Space::StateMachine, group_key(self.group.0, STATE_KEY), encode(&self.watermarks));
                PartitionResponse::Appended { base_offset, count }
            }
        }
    }

    fn applied(&mut self) {
        self.published.send_replace(self.watermarks);
    }

    fn snapshot(&self) -> io::Result<Vec<u8>> {
        let range = group_prefix_range(self.group.0, INDEX_PREFIX);
        let rows =
            self.engine.scan(Space::StateMachine, &range.start[..]..&range.end[..], Direction::Forward, usize::MAX)?;
        let mut batches = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let base = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("index keys end in 8 bytes"));
            let entry: IndexEntry = decode(&value)?;
            let log_key = group_key(self.group.0, &entry.log_index.to_be_bytes());
            let bytes = self.engine.get(Space::RaftLog, &log_key)?.ok_or_else(|| {
                io::Error::other(format!(
                    "partition {} index names log entry {} that is gone",
                    self.group, entry.log_index
                ))
            })?;
            batches.push((base, entry, bytes));
        }
        Ok(encode(&PartitionSnapshot { watermarks: self.watermarks, batches }))
    }

    fn restore(&mut self, data: &[u8], batch: &mut WriteBatch) -> io::Result<()> {
        let snapshot: PartitionSnapshot = decode(data)?;
        let range = group_prefix_range(self.group.0, INDEX_PREFIX);
        batch.delete_range(Space::StateMachine, range.start, range.end);
        for (base, entry, bytes) in snapshot.batches {
            batch.put(Space::StateMachine, index_key(self.group, base), encode(&entry));
            // The log entry goes back under its own index: openraft considers it purged, but
            // fetches read records from it.
            batch.put(Space::RaftLog, group_key(self.group.0, &entry.log_index.to_be_bytes()), bytes);
        }
        self.watermarks = snapshot.watermarks;
        batch.put(Space::StateMachine, group_key(self.group.0, STATE_KEY), encode(&self.watermarks));
        Ok(())
    }
}

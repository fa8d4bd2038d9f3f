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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use flotilla_raft::GroupStateMachine;
    use flotilla_storage::{Engine, MemoryEngine, Space, WriteBatch, group_key};
    use flotilla_types::{GroupId, Record};
    use openraft::testing::log_id;
    use openraft::{Entry, EntryPayload, RaftTypeConfig};

    use super::*;
    use crate::{BrokerError, PartitionReader};

    const GROUP: GroupId = GroupId(7 << 20);

    fn record(value: &str) -> Record {
        Record { key: Some(Bytes::from("k")), value: Bytes::from(value.to_string()), headers: vec![], timestamp_ms: 0 }
    }

    /// Appends one batch the way openraft would: the entry into the log, then apply.
    fn append(engine: &Arc<dyn Engine>, sm: &mut PartitionStateMachine, index: u64, values: &[&str]) -> u64 {
        let command = PartitionCommand::Append {
            records: values.iter().map(|v| record(v)).collect(),
            timestamp_ms: 1_000 + index as i64,
        };
        let id = log_id::<PartitionConfig>(1, 1, index);
        let entry: <PartitionConfig as RaftTypeConfig>::Entry =
            Entry { log_id: id, payload: EntryPayload::Normal(command.clone()) };
        let mut log = WriteBatch::new();
        log.put(Space::RaftLog, group_key(GROUP.0, &index.to_be_bytes()), flotilla_raft::encode(&entry));
        engine.write(log).expect("write log entry");
        let mut batch = WriteBatch::new();
        let response = sm.apply(&id, command, &mut batch);
        engine.write(batch).expect("write apply effects");
        sm.applied();
        match response {
            PartitionResponse::Appended { base_offset, .. } => base_offset,
            PartitionResponse::Done => panic!("append gave no offsets"),
        }
    }

    fn values(batch: &crate::FetchedBatch) -> Vec<(u64, String)> {
        batch.records.iter().map(|(o, r)| (*o, String::from_utf8_lossy(&r.value).into_owned())).collect()
    }

    #[test]
    fn offsets_are_dense_and_fetches_are_contiguous_runs() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, marks) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        assert_eq!(append(&engine, &mut sm, 1, &["a", "b", "c"]), 0);
        assert_eq!(append(&engine, &mut sm, 3, &["d"]), 3, "a log index without records (2) takes no offset");
        assert_eq!(append(&engine, &mut sm, 4, &["e", "f"]), 4);
        assert_eq!(marks.borrow().high_watermark, 6);
        let reader = PartitionReader::new(GROUP, Arc::clone(&engine));
        let all = reader.read(0, 100, usize::MAX, sm.watermarks()).expect("read");
        assert_eq!(
            values(&all),
            vec![(0, "a".into()), (1, "b".into()), (2, "c".into()), (3, "d".into()), (4, "e".into()), (5, "f".into())]
        );
        // From the middle of a batch, capped by count.
        let mid = reader.read(2, 3, usize::MAX, sm.watermarks()).expect("read");
        assert_eq!(values(&mid), vec![(2, "c".into()), (3, "d".into()), (4, "e".into())]);
        // A byte cap still returns at least one record.
        let one = reader.read(1, 100, 0, sm.watermarks()).expect("read");
        assert_eq!(values(&one), vec![(1, "b".into())]);
        // Records without a timestamp carry the leader's accept time from the log.
        assert_eq!(one.records[0].1.timestamp_ms, 1_001);
        // At the high watermark: nothing yet; past it: out of range, naming the range.
        assert!(reader.read(6, 10, usize::MAX, sm.watermarks()).expect("read").records.is_empty());
        let err = reader.read(7, 10, usize::MAX, sm.watermarks()).expect_err("past the end");
        assert!(matches!(err, BrokerError::OffsetOutOfRange { offset: 7, log_start: 0, high_watermark: 6, .. }));
    }

    #[test]
    fn never_reads_past_the_high_watermark_it_is_given() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        append(&engine, &mut sm, 1, &["a", "b"]);
        let committed = sm.watermarks();
        append(&engine, &mut sm, 2, &["c"]);
        let reader = PartitionReader::new(GROUP, Arc::clone(&engine));
        let read = reader.read(0, 100, usize::MAX, committed).expect("read");
        assert_eq!(values(&read), vec![(0, "a".into()), (1, "b".into())]);
    }

    #[test]
    fn reopening_restores_the_watermarks() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        append(&engine, &mut sm, 1, &["a", "b"]);
        let (reopened, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("reopen");
        assert_eq!(reopened.watermarks().high_watermark, 2);
    }

    #[test]
    fn a_snapshot_carries_the_records_so_an_empty_replica_can_serve_them() {
        // DESIGN.md §3's trap: the log is the record store, so a replica that installs a
        // snapshot must end up with every record, not just the watermarks.
        let leader: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, _) = PartitionStateMachine::open(GROUP, Arc::clone(&leader)).expect("open");
        append(&leader, &mut sm, 1, &["a", "b"]);
        append(&leader, &mut sm, 2, &["c"]);
        let snapshot = sm.snapshot().expect("snapshot");

        let follower: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut empty, _) = PartitionStateMachine::open(GROUP, Arc::clone(&follower)).expect("open");
        let mut batch = WriteBatch::new();
        empty.restore(&snapshot, &mut batch).expect("restore");
        follower.write(batch).expect("write");
        assert_eq!(empty.watermarks().high_watermark, 3);
        let reader = PartitionReader::new(GROUP, follower);
        let read = reader.read(0, 100, usize::MAX, empty.watermarks()).expect("read");
        assert_eq!(values(&read), vec![(0, "a".into()), (1, "b".into()), (2, "c".into())]);
    }
}

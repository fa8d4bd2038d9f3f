//! `PartitionStateMachine`: assigns offsets to appended batches, keeps the index from
//! offsets to the Raft log entries that hold the records, and keeps the idempotent producers'
//! table that turns a resent batch into its original offsets.

use std::io;
use std::sync::Arc;

use flotilla_raft::openraft;
use flotilla_raft::{GroupStateMachine, Persistence, decode, encode};
use flotilla_storage::{Direction, Engine, Space, WriteBatch, group_key, group_prefix_range};
use flotilla_types::GroupId;
use openraft::alias::LogIdOf;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::producer_table::{ProducerState, ProducerTable, Verdict};
use crate::{PartitionCommand, PartitionRejection, PartitionResponse, ProducerSequence};

flotilla_raft::declare_group_config!(
    /// openraft types of partition groups.
    pub PartitionConfig: PartitionCommand => PartitionResponse
);

/// Prefix of index keys: `group ++ INDEX_PREFIX ++ base_offset (BE)` → [`IndexEntry`].
pub(crate) const INDEX_PREFIX: &[u8] = b"o";
const STATE_KEY: &[u8] = b"s";
/// Prefix of producer keys: `group ++ PRODUCER_PREFIX ++ producer_id (BE)` → `ProducerState`.
const PRODUCER_PREFIX: &[u8] = b"p";

/// Where the batch starting at some offset lives in the Raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IndexEntry {
    pub log_index: u64,
    pub count: u32,
    /// The latest record timestamp in the batch (records without one carry the batch's), so
    /// a search by time reads only the index until it finds the batch to open.
    pub max_timestamp_ms: i64,
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
/// to. Records live in the log, so a snapshot must carry them (DESIGN.md §3's trap). The
/// producer table rides along: a replica that installed a snapshot must answer a resent batch
/// exactly as the others do.
#[derive(Serialize, Deserialize)]
struct PartitionSnapshot {
    watermarks: PartitionWatermarks,
    batches: Vec<(u64, IndexEntry, Vec<u8>)>,
    producers: Vec<(u64, ProducerState)>,
}

/// The state machine of one partition.
pub struct PartitionStateMachine {
    group: GroupId,
    engine: Arc<dyn Engine>,
    watermarks: PartitionWatermarks,
    published: watch::Sender<PartitionWatermarks>,
    producers: ProducerTable,
}

fn producer_key(group: GroupId, producer_id: u64) -> Vec<u8> {
    let mut suffix = PRODUCER_PREFIX.to_vec();
    suffix.extend_from_slice(&producer_id.to_be_bytes());
    group_key(group.0, &suffix)
}

pub(crate) fn index_key(group: GroupId, base_offset: u64) -> Vec<u8> {
    let mut suffix = INDEX_PREFIX.to_vec();
    suffix.extend_from_slice(&base_offset.to_be_bytes());
    group_key(group.0, &suffix)
}

impl PartitionStateMachine {
    /// Opens the partition of `group`, loading its watermarks and producer table from `engine`.
    pub fn open(group: GroupId, engine: Arc<dyn Engine>) -> io::Result<(Self, watch::Receiver<PartitionWatermarks>)> {
        let watermarks = match engine.get(Space::StateMachine, &group_key(group.0, STATE_KEY))? {
            Some(bytes) => decode(&bytes)?,
            None => PartitionWatermarks::default(),
        };
        let range = group_prefix_range(group.0, PRODUCER_PREFIX);
        let rows =
            engine.scan(Space::StateMachine, &range.start[..]..&range.end[..], Direction::Forward, usize::MAX)?;
        let mut entries = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let id = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("producer keys end in 8 bytes"));
            entries.push((id, decode::<ProducerState>(&value)?));
        }
        let producers = ProducerTable::from_entries(entries);
        let (published, rx) = watch::channel(watermarks);
        Ok((PartitionStateMachine { group, engine, watermarks, published, producers }, rx))
    }

    /// Current watermarks.
    pub fn watermarks(&self) -> PartitionWatermarks {
        self.watermarks
    }

    /// Idempotent producers this partition remembers (at most
    /// [`crate::PRODUCERS_PER_PARTITION_MAX`]).
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Gives the `count` records of the log entry at `log_index` the next offsets and indexes
    /// the entry; returns the first offset.
    fn append(&mut self, log_index: u64, count: u32, max_timestamp_ms: i64, batch: &mut WriteBatch) -> u64 {
        let base_offset = self.watermarks.high_watermark;
        let entry = IndexEntry { log_index, count, max_timestamp_ms };
        batch.put(Space::StateMachine, index_key(self.group, base_offset), encode(&entry));
        self.watermarks.high_watermark = base_offset + u64::from(count);
        batch.put(Space::StateMachine, group_key(self.group.0, STATE_KEY), encode(&self.watermarks));
        base_offset
    }

    /// Applies an idempotent producer's batch: appends it if it is the producer's next one,
    /// answers the original offsets if it was appended before, refuses it otherwise. Every
    /// change to the producer table is written in the same batch as the applied position, so a
    /// replica that restarts re-applies from exactly the table it had.
    fn append_idempotent(
        &mut self,
        log_index: u64,
        count: u32,
        max_timestamp_ms: i64,
        producer: &ProducerSequence,
        batch: &mut WriteBatch,
    ) -> PartitionResponse {
        let id = producer.producer_id;
        match self.producers.check(producer, count) {
            Verdict::Append => {
                let base_offset = self.append(log_index, count, max_timestamp_ms, batch);
                for evicted in self.producers.record_append(producer, count, base_offset, log_index) {
                    batch.delete(Space::StateMachine, producer_key(self.group, evicted));
                }
                self.put_producer(id, batch);
                PartitionResponse::Appended { base_offset, count }
            }
            Verdict::Duplicate { base_offset } => {
                flotilla_types::coverage!("idempotent_duplicate_answered");
                self.producers.touch(id, log_index);
                self.put_producer(id, batch);
                PartitionResponse::Duplicate { base_offset, count }
            }
            Verdict::Reject(rejection) => {
                match rejection {
                    PartitionRejection::ProducerFenced { .. } => flotilla_types::coverage!("producer_epoch_fenced"),
                    PartitionRejection::OutOfOrderSequence { .. } => flotilla_types::coverage!("out_of_order_sequence"),
                }
                PartitionResponse::Rejected(rejection)
            }
        }
    }

    fn put_producer(&self, producer_id: u64, batch: &mut WriteBatch) {
        let state = self.producers.get(producer_id).expect("the producer was just recorded");
        batch.put(Space::StateMachine, producer_key(self.group, producer_id), encode(state));
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
        let (records, producer, batch_timestamp_ms) = match &command {
            PartitionCommand::Append { records, timestamp_ms } => (records, None, *timestamp_ms),
            PartitionCommand::AppendIdempotent { records, producer, timestamp_ms } => {
                (records, Some(producer), *timestamp_ms)
            }
        };
        let max_timestamp_ms = records
            .iter()
            .map(|r| if r.timestamp_ms == 0 { batch_timestamp_ms } else { r.timestamp_ms })
            .max()
            .unwrap_or(batch_timestamp_ms);
        let count = u32::try_from(records.len()).expect("batch sizes are capped far below u32::MAX");
        if count == 0 {
            // Nodes refuse empty batches; an empty entry takes no offset and changes no table.
            return PartitionResponse::Appended { base_offset: self.watermarks.high_watermark, count: 0 };
        }
        match producer {
            None => PartitionResponse::Appended {
                base_offset: self.append(log_id.index, count, max_timestamp_ms, batch),
                count,
            },
            Some(producer) => self.append_idempotent(log_id.index, count, max_timestamp_ms, producer, batch),
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
        let producers = self.producers.entries().map(|(id, state)| (id, state.clone())).collect();
        Ok(encode(&PartitionSnapshot { watermarks: self.watermarks, batches, producers }))
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
        let range = group_prefix_range(self.group.0, PRODUCER_PREFIX);
        batch.delete_range(Space::StateMachine, range.start, range.end);
        for (id, state) in &snapshot.producers {
            batch.put(Space::StateMachine, producer_key(self.group, *id), encode(state));
        }
        self.producers = ProducerTable::from_entries(snapshot.producers);
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

    /// Applies one command the way openraft would: the entry into the log, then apply.
    fn apply(
        engine: &Arc<dyn Engine>,
        sm: &mut PartitionStateMachine,
        index: u64,
        command: PartitionCommand,
    ) -> PartitionResponse {
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
        response
    }

    /// Appends one plain batch and returns its base offset.
    fn append(engine: &Arc<dyn Engine>, sm: &mut PartitionStateMachine, index: u64, values: &[&str]) -> u64 {
        let command = PartitionCommand::Append {
            records: values.iter().map(|v| record(v)).collect(),
            timestamp_ms: 1_000 + index as i64,
        };
        match apply(engine, sm, index, command) {
            PartitionResponse::Appended { base_offset, .. } => base_offset,
            other => panic!("append gave no offsets: {other:?}"),
        }
    }

    /// Applies a batch of producer `producer_id` (epoch `epoch`) starting at `sequence`.
    fn send(
        engine: &Arc<dyn Engine>,
        sm: &mut PartitionStateMachine,
        index: u64,
        (producer_id, epoch, sequence): (u64, u32, u64),
        values: &[&str],
    ) -> PartitionResponse {
        let command = PartitionCommand::AppendIdempotent {
            records: values.iter().map(|v| record(v)).collect(),
            timestamp_ms: 1_000 + index as i64,
            producer: ProducerSequence { producer_id, producer_epoch: epoch, base_sequence: sequence },
        };
        apply(engine, sm, index, command)
    }

    fn values(batch: &crate::FetchedBatch) -> Vec<(u64, String)> {
        batch.records.iter().map(|(o, r)| (*o, String::from_utf8_lossy(&r.value).into_owned())).collect()
    }

    #[test]
    fn offset_for_time_finds_the_first_record_at_or_after_the_time() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        // Batches stamped 1001, 1002 and 1004 (their log index + 1000).
        append(&engine, &mut sm, 1, &["a", "b"]);
        append(&engine, &mut sm, 2, &["c"]);
        // One record with its own, earlier, timestamp inside a later batch.
        let mut early = record("d");
        early.timestamp_ms = 500;
        let command = PartitionCommand::Append { records: vec![early, record("e")], timestamp_ms: 1_004 };
        apply(&engine, &mut sm, 4, command);
        let reader = PartitionReader::new(GROUP, Arc::clone(&engine));
        let marks = sm.watermarks();
        assert_eq!(reader.offset_for_time(0, marks).expect("search"), 0);
        assert_eq!(reader.offset_for_time(1_001, marks).expect("search"), 0);
        assert_eq!(reader.offset_for_time(1_002, marks).expect("search"), 2);
        assert_eq!(reader.offset_for_time(1_003, marks).expect("search"), 4, "skips the early record at 3");
        assert_eq!(reader.offset_for_time(9_999, marks).expect("search"), 5, "nothing that recent: the high watermark");
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
    #[test]
    fn a_resent_batch_gets_its_original_offsets_and_is_not_appended_again() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        assert_eq!(
            send(&engine, &mut sm, 1, (7, 0, 0), &["a", "b"]),
            PartitionResponse::Appended { base_offset: 0, count: 2 }
        );
        assert_eq!(append(&engine, &mut sm, 2, &["x"]), 2, "plain appends interleave");
        // The retry of a batch whose first attempt did land (a timeout, a leader change).
        assert_eq!(
            send(&engine, &mut sm, 3, (7, 0, 0), &["a", "b"]),
            PartitionResponse::Duplicate { base_offset: 0, count: 2 }
        );
        assert_eq!(sm.watermarks().high_watermark, 3, "the duplicate took no offsets");
        assert_eq!(
            send(&engine, &mut sm, 4, (7, 0, 2), &["c"]),
            PartitionResponse::Appended { base_offset: 3, count: 1 }
        );
        let reader = PartitionReader::new(GROUP, Arc::clone(&engine));
        let read = reader.read(0, 100, usize::MAX, sm.watermarks()).expect("read");
        assert_eq!(values(&read), vec![(0, "a".into()), (1, "b".into()), (2, "x".into()), (3, "c".into())]);
        // Another producer has a sequence of its own.
        assert_eq!(
            send(&engine, &mut sm, 5, (8, 0, 0), &["d"]),
            PartitionResponse::Appended { base_offset: 4, count: 1 }
        );
    }

    #[test]
    fn a_gap_in_the_sequence_is_refused_naming_both_sequences() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        send(&engine, &mut sm, 1, (7, 0, 0), &["a", "b"]);
        let response = send(&engine, &mut sm, 2, (7, 0, 5), &["c"]);
        let PartitionResponse::Rejected(rejection) = response else { panic!("a gap must be refused: {response:?}") };
        assert_eq!(
            rejection,
            PartitionRejection::OutOfOrderSequence { producer_id: 7, epoch: 0, expected: 2, received: 5 }
        );
        let message = rejection.to_string();
        assert!(message.contains("sequence 5") && message.contains("expected sequence 2"), "{message}");
        assert_eq!(sm.watermarks().high_watermark, 2, "nothing appended");
        // A producer the partition has never seen must start at 0.
        let response = send(&engine, &mut sm, 3, (9, 0, 3), &["d"]);
        assert!(matches!(
            response,
            PartitionResponse::Rejected(PartitionRejection::OutOfOrderSequence { expected: 0, .. })
        ));
        // The refused batches left the sequence where it was.
        assert_eq!(
            send(&engine, &mut sm, 4, (7, 0, 2), &["c"]),
            PartitionResponse::Appended { base_offset: 2, count: 1 }
        );
    }

    #[test]
    fn a_lower_epoch_is_fenced() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        send(&engine, &mut sm, 1, (7, 0, 0), &["a"]);
        assert_eq!(
            send(&engine, &mut sm, 2, (7, 1, 0), &["b"]),
            PartitionResponse::Appended { base_offset: 1, count: 1 }
        );
        let response = send(&engine, &mut sm, 3, (7, 0, 1), &["zombie"]);
        assert_eq!(
            response,
            PartitionResponse::Rejected(PartitionRejection::ProducerFenced {
                producer_id: 7,
                epoch: 0,
                current_epoch: 1
            })
        );
        // Even a resend of the old epoch's batch is fenced, not answered.
        assert!(matches!(send(&engine, &mut sm, 4, (7, 0, 0), &["a"]), PartitionResponse::Rejected(_)));
        assert_eq!(sm.watermarks().high_watermark, 2);
    }

    #[test]
    fn the_producer_table_survives_a_restart_and_a_snapshot() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        send(&engine, &mut sm, 1, (7, 0, 0), &["a", "b"]);
        send(&engine, &mut sm, 2, (7, 0, 2), &["c"]);
        send(&engine, &mut sm, 3, (8, 2, 0), &["d"]);

        let (mut reopened, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("reopen");
        assert_eq!(reopened.producer_count(), 2);
        assert_eq!(
            send(&engine, &mut reopened, 4, (7, 0, 0), &["a", "b"]),
            PartitionResponse::Duplicate { base_offset: 0, count: 2 }
        );
        assert!(
            matches!(send(&engine, &mut reopened, 5, (8, 1, 1), &["e"]), PartitionResponse::Rejected(_)),
            "epoch kept"
        );

        let snapshot = reopened.snapshot().expect("snapshot");
        let follower: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut restored, _) = PartitionStateMachine::open(GROUP, Arc::clone(&follower)).expect("open");
        let mut batch = WriteBatch::new();
        restored.restore(&snapshot, &mut batch).expect("restore");
        follower.write(batch).expect("write");
        assert_eq!(
            send(&follower, &mut restored, 6, (7, 0, 2), &["c"]),
            PartitionResponse::Duplicate { base_offset: 2, count: 1 }
        );
        assert_eq!(
            send(&follower, &mut restored, 7, (7, 0, 3), &["f"]),
            PartitionResponse::Appended { base_offset: 4, count: 1 }
        );
        // What restore wrote is what a restart of the follower loads.
        let (after_restart, _) = PartitionStateMachine::open(GROUP, Arc::clone(&follower)).expect("reopen follower");
        assert_eq!(after_restart.producers.get(7), restored.producers.get(7));
        assert_eq!(after_restart.producers.get(8), restored.producers.get(8));
    }

    #[test]
    fn evicted_producers_are_deleted_from_storage_too() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let (mut sm, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        let producers = crate::PRODUCERS_PER_PARTITION_MAX as u64 + 1;
        for id in 1..=producers {
            send(&engine, &mut sm, id, (id, 0, 0), &["r"]);
        }
        assert_eq!(sm.producer_count(), crate::PRODUCERS_PER_PARTITION_MAX);
        let (reopened, _) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("reopen");
        assert_eq!(reopened.producer_count(), crate::PRODUCERS_PER_PARTITION_MAX);
        assert!(reopened.producers.get(1).is_none(), "the least recently used producer went");
        // Forgotten, producer 1 is a stranger now: it must start a new session.
        assert!(matches!(
            send(&engine, &mut sm, producers + 1, (1, 0, 1), &["r"]),
            PartitionResponse::Rejected(PartitionRejection::OutOfOrderSequence { expected: 0, .. })
        ));
    }
}

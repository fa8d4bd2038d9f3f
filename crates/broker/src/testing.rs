//! A partition driven the way openraft drives it, for the crate's unit tests: each command is
//! put in the Raft log, applied, finished and written, then published.

use std::sync::Arc;

use bytes::Bytes;
use flotilla_raft::openraft::testing::log_id;
use flotilla_raft::openraft::{Entry, EntryPayload, RaftTypeConfig};
use flotilla_raft::{GroupStateMachine, LogLayout, RetainFloor};
use flotilla_storage::{Engine, MemoryEngine, WriteBatch};
use flotilla_types::{GroupId, Record};

use crate::{
    FetchedBatch, PartitionCommand, PartitionConfig, PartitionEntry, PartitionReader, PartitionResponse,
    PartitionStateMachine, PartitionStatus, ProducerSequence,
};

/// The group every test partition uses.
pub(crate) const GROUP: GroupId = GroupId(7 << 20);

/// A keyed record without a timestamp.
pub(crate) fn record(value: &str) -> Record {
    Record { key: Some(Bytes::from("k")), value: Bytes::from(value.to_string()), headers: vec![], timestamp_ms: 0 }
}

/// One partition replica on an in-memory engine.
pub(crate) struct Replica {
    pub engine: Arc<dyn Engine>,
    pub sm: PartitionStateMachine,
    pub status: tokio::sync::watch::Receiver<PartitionStatus>,
    pub floor: RetainFloor,
    /// The next Raft log index to use.
    pub next_index: u64,
}

impl Replica {
    /// A new, empty replica.
    pub fn new() -> Replica {
        Replica::on(Arc::new(MemoryEngine::new()))
    }

    /// The replica whose state is in `engine`.
    pub fn on(engine: Arc<dyn Engine>) -> Replica {
        let (sm, watches) = PartitionStateMachine::open(GROUP, Arc::clone(&engine)).expect("open");
        Replica { engine, sm, status: watches.status, floor: watches.floor, next_index: 1 }
    }

    /// The same engine opened again (a restart).
    pub fn reopen(&self) -> Replica {
        let mut replica = Replica::on(Arc::clone(&self.engine));
        replica.next_index = self.next_index;
        replica
    }

    /// Applies `command` stamped `now_ms` at the next log index; one apply batch.
    pub fn apply(&mut self, now_ms: i64, command: PartitionCommand) -> PartitionResponse {
        self.apply_batch(vec![(now_ms, command)]).pop().expect("one response")
    }

    /// Applies several commands in one apply batch (one write), as openraft does when entries
    /// commit together.
    pub fn apply_batch(&mut self, commands: Vec<(i64, PartitionCommand)>) -> Vec<PartitionResponse> {
        let layout = LogLayout::new(GROUP);
        let mut log = WriteBatch::new();
        let mut entries = Vec::new();
        for (now_ms, command) in commands {
            let id = log_id::<PartitionConfig>(1, 1, self.next_index);
            self.next_index += 1;
            let entry = PartitionEntry { now_ms, command };
            let stored: <PartitionConfig as RaftTypeConfig>::Entry =
                Entry { log_id: id, payload: EntryPayload::Normal(entry.clone()) };
            layout.put_entry::<PartitionConfig>(&mut log, &stored);
            entries.push((id, entry));
        }
        self.engine.write(log).expect("write log entries");
        let mut batch = WriteBatch::new();
        let responses = entries.into_iter().map(|(id, entry)| self.sm.apply(&id, entry, &mut batch)).collect();
        self.sm.finish_batch(&mut batch);
        self.engine.write(batch).expect("write apply effects");
        self.sm.applied();
        responses
    }

    /// Appends a plain batch of `values` at `now_ms`; returns its base offset.
    pub fn append_at(&mut self, now_ms: i64, values: &[&str]) -> u64 {
        let records = values.iter().map(|v| record(v)).collect();
        match self.apply(now_ms, PartitionCommand::Append { records }) {
            PartitionResponse::Appended { base_offset, .. } => base_offset,
            other => panic!("append gave no offsets: {other:?}"),
        }
    }

    /// Appends a plain batch stamped with 1000 + its log index.
    pub fn append(&mut self, values: &[&str]) -> u64 {
        let now = 1_000 + self.next_index as i64;
        self.append_at(now, values)
    }

    /// Applies a batch of producer `producer_id` (epoch `epoch`) starting at `sequence`.
    pub fn send(
        &mut self,
        (producer_id, producer_epoch, base_sequence): (u64, u32, u64),
        values: &[&str],
    ) -> PartitionResponse {
        let records = values.iter().map(|v| record(v)).collect();
        let producer = ProducerSequence { producer_id, producer_epoch, base_sequence };
        let now = 1_000 + self.next_index as i64;
        self.apply(now, PartitionCommand::AppendIdempotent { records, producer })
    }

    /// Replaces this replica's state by a snapshot of `leader`'s, frame by frame, the way the
    /// Raft glue installs one (the application's keys cleared first).
    pub fn install_from(&mut self, leader: &Replica) {
        let mut frames = leader.sm.snapshot(leader.engine.view()).expect("snapshot");
        let mut batch = WriteBatch::new();
        let app = flotilla_storage::group_key(GROUP.0, b"")
            ..flotilla_storage::group_key(GROUP.0, flotilla_raft::APP_KEYS_END);
        batch.delete_range(flotilla_storage::Space::StateMachine, app.start, app.end);
        while let Some(frame) = frames.next_frame().expect("frame") {
            self.sm.restore_frame(&frame, &mut batch).expect("restore frame");
        }
        self.engine.write(batch).expect("write restored state");
        self.sm.restored().expect("reload");
        self.sm.applied();
        self.next_index = leader.next_index;
    }

    /// A reader of this replica.
    pub fn reader(&self) -> PartitionReader {
        self.sm.reader()
    }

    /// Every retained record as `(offset, value)`.
    pub fn contents(&self) -> Vec<(u64, String)> {
        let marks = self.sm.watermarks();
        values(&self.reader().read(marks.log_start, usize::MAX, usize::MAX, marks).expect("read"))
    }
}

/// `(offset, value)` of each fetched record.
pub(crate) fn values(batch: &FetchedBatch) -> Vec<(u64, String)> {
    batch.records.iter().map(|(o, r)| (*o, String::from_utf8_lossy(&r.value).into_owned())).collect()
}

//! `PartitionStateMachine`: the partition as openraft applies it. It owns the parts (the log,
//! the idempotent producers) and only dispatches: each command goes to the part methods that
//! handle it, in one match arm; replicated time advances once per entry; the parts write what
//! changed once per apply batch; snapshots are the parts' sections in turn.

use std::io;
use std::sync::Arc;

use flotilla_raft::openraft;
use flotilla_raft::{FrameSource, GroupStateMachine, IterFrames, Persistence, RetainFloor};
use flotilla_storage::{Engine, EngineView, WriteBatch};
use flotilla_types::{GroupId, Record, RetentionPolicy};
use openraft::alias::LogIdOf;
use tokio::sync::watch;

use crate::keys::Section;
use crate::log::{LogPart, NewBatch, PartitionReader, PartitionWatermarks};
use crate::part::{ApplyContext, Part};
use crate::producers::{ProducersPart, Verdict};
use crate::{PartitionCommand, PartitionEntry, PartitionRejection, PartitionResponse, ProducerSequence};

flotilla_raft::declare_group_config!(
    /// openraft types of partition groups.
    pub PartitionConfig: PartitionEntry => PartitionResponse, format "partition command" version 1
);

/// What a partition publishes after each apply batch, for fetches (long polls wait on it),
/// `describe` and the node's partition driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    pub watermarks: PartitionWatermarks,
    /// Record bytes retained.
    pub retained_bytes: u64,
    /// The replicated time of the last applied entry.
    pub now_ms: i64,
    /// The earliest replicated time at which some part has work due (a `Tick` runs it).
    pub next_deadline_ms: Option<i64>,
    /// The first Raft log index that holds a retained record.
    pub floor: u64,
    /// The retention the partition applies.
    pub retention: RetentionPolicy,
}

/// What the node's partition driver acts on: it changes far less often than the status (not
/// on every append), so the driver wakes only when there is something new to do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// The earliest replicated time at which a part has work due: the leader proposes a
    /// `Tick` once its clock passes it.
    pub next_deadline_ms: Option<i64>,
    /// The first Raft log index holding a retained record: the log below it may be purged.
    pub floor: u64,
}

/// What a partition hands the node when it opens.
pub struct PartitionWatches {
    /// Changes after every apply batch.
    pub status: watch::Receiver<PartitionStatus>,
    /// Changes when a deadline or the floor does.
    pub maintenance: watch::Receiver<Maintenance>,
    /// For the group's log store, whose purge keeps the records at or above it.
    pub floor: RetainFloor,
}

/// The state machine of one partition.
pub struct PartitionStateMachine {
    group: GroupId,
    engine: Arc<dyn Engine>,
    log: LogPart,
    producers: ProducersPart,
    published: watch::Sender<PartitionStatus>,
    maintenance: watch::Sender<Maintenance>,
    floor: RetainFloor,
}

impl PartitionStateMachine {
    /// Opens the partition of `group`, loading every part from `engine`.
    pub fn open(group: GroupId, engine: Arc<dyn Engine>) -> io::Result<(Self, PartitionWatches)> {
        let log = LogPart::load(group, engine.as_ref())?;
        let producers = ProducersPart::load(group, engine.as_ref())?;
        let floor = RetainFloor::new(log.floor());
        let (published, status) = watch::channel(PartitionStatus::default());
        let (maintenance_tx, maintenance) = watch::channel(Maintenance::default());
        let machine = PartitionStateMachine {
            group,
            engine,
            log,
            producers,
            published,
            maintenance: maintenance_tx,
            floor: floor.clone(),
        };
        machine.publish();
        Ok((machine, PartitionWatches { status, maintenance, floor }))
    }

    /// A reader of this partition's records.
    pub fn reader(&self) -> PartitionReader {
        PartitionReader::new(self.group, Arc::clone(&self.engine))
    }

    /// Current watermarks.
    pub fn watermarks(&self) -> PartitionWatermarks {
        self.log.watermarks()
    }

    /// Idempotent producers this partition remembers (at most
    /// [`crate::PRODUCERS_PER_PARTITION_MAX`]).
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    fn status(&self) -> PartitionStatus {
        let meta = self.log.meta();
        PartitionStatus {
            watermarks: meta.watermarks,
            retained_bytes: meta.retained_bytes,
            now_ms: meta.now_ms,
            next_deadline_ms: self.log.next_deadline_ms(),
            floor: meta.floor,
            retention: meta.retention,
        }
    }

    fn publish(&self) {
        let status = self.status();
        self.published.send_replace(status);
        let maintenance = Maintenance { next_deadline_ms: status.next_deadline_ms, floor: status.floor };
        self.maintenance.send_if_modified(|current| std::mem::replace(current, maintenance) != maintenance);
    }

    /// Appends `records` (a batch of `count`, at least 1) held by the entry in `ctx`.
    fn append(&mut self, ctx: &mut ApplyContext<'_>, records: &[Record], batch_now_ms: i64) -> u64 {
        let count = u32::try_from(records.len()).expect("batch sizes are capped far below u32::MAX");
        let max_timestamp_ms = records
            .iter()
            .map(|r| if r.timestamp_ms == 0 { batch_now_ms } else { r.timestamp_ms })
            .max()
            .unwrap_or(batch_now_ms);
        let bytes = records.iter().map(|r| r.size_bytes() as u64).sum();
        let base_offset = self.log.append(ctx, NewBatch { count, max_timestamp_ms, bytes });
        self.log.enforce_retention(ctx);
        base_offset
    }

    /// Applies an idempotent producer's batch: appends it if it is the producer's next one,
    /// answers the original offsets if it was appended before, refuses it otherwise.
    fn append_idempotent(
        &mut self,
        ctx: &mut ApplyContext<'_>,
        records: &[Record],
        batch_now_ms: i64,
        producer: &ProducerSequence,
    ) -> PartitionResponse {
        let count = u32::try_from(records.len()).expect("batch sizes are capped far below u32::MAX");
        match self.producers.check(producer, count) {
            Verdict::Append => {
                let base_offset = self.append(ctx, records, batch_now_ms);
                self.producers.record_append(producer, count, base_offset, ctx.log_index);
                PartitionResponse::Appended { base_offset, count }
            }
            Verdict::Duplicate { base_offset } => {
                flotilla_types::coverage!("idempotent_duplicate_answered");
                self.producers.touch(producer.producer_id, ctx.log_index);
                PartitionResponse::Duplicate { base_offset, count }
            }
            Verdict::Reject(rejection) => {
                match rejection {
                    PartitionRejection::ProducerFenced { .. } => flotilla_types::coverage!("producer_epoch_fenced"),
                    PartitionRejection::OutOfOrderSequence { .. } => flotilla_types::coverage!("out_of_order_sequence"),
                    PartitionRejection::UnknownProducerId { .. } => flotilla_types::coverage!("unknown_producer_id"),
                    PartitionRejection::TrimBeyondHighWatermark { .. } => {}
                }
                PartitionResponse::Rejected(rejection)
            }
        }
    }
}

impl GroupStateMachine<PartitionConfig> for PartitionStateMachine {
    fn persistence(&self) -> Persistence {
        Persistence::Incremental
    }

    fn apply(
        &mut self,
        log_id: &LogIdOf<PartitionConfig>,
        entry: PartitionEntry,
        batch: &mut WriteBatch,
    ) -> PartitionResponse {
        // Replicated time: the leader's reading, never behind an earlier entry's.
        let now_ms = self.log.now_ms().max(entry.now_ms);
        self.log.set_now(now_ms);
        let engine = Arc::clone(&self.engine);
        let mut ctx =
            ApplyContext { group: self.group, log_index: log_id.index, now_ms, store: engine.as_ref(), batch };
        match &entry.command {
            // Nodes refuse empty batches; an empty entry takes no offset and changes no table.
            PartitionCommand::Append { records } | PartitionCommand::AppendIdempotent { records, .. }
                if records.is_empty() =>
            {
                PartitionResponse::Appended { base_offset: self.log.watermarks().high_watermark, count: 0 }
            }
            PartitionCommand::Append { records } => {
                let count = records.len() as u32;
                PartitionResponse::Appended { base_offset: self.append(&mut ctx, records, entry.now_ms), count }
            }
            PartitionCommand::AppendIdempotent { records, producer } => {
                self.append_idempotent(&mut ctx, records, entry.now_ms, producer)
            }
            PartitionCommand::Tick => {
                flotilla_types::coverage!("partition_tick_applied");
                self.log.enforce_retention(&mut ctx);
                PartitionResponse::Done
            }
            PartitionCommand::DeleteRecords { before_offset } => {
                match self.log.delete_records(&mut ctx, *before_offset) {
                    Ok(log_start) => PartitionResponse::Trimmed { log_start },
                    Err(rejection) => PartitionResponse::Rejected(rejection),
                }
            }
            PartitionCommand::Configure { retention } => {
                self.log.configure(&mut ctx, *retention);
                PartitionResponse::Done
            }
        }
    }

    fn finish_batch(&mut self, batch: &mut WriteBatch) {
        self.log.flush(self.group, batch);
        self.producers.flush(self.group, batch);
    }

    fn applied(&mut self) {
        // Only now, with the trim written, may the log store's purge delete below the floor:
        // on disk the purge then always follows the trim that allowed it.
        self.floor.raise(self.log.floor());
        self.publish();
    }

    fn snapshot(&self, view: Arc<dyn EngineView>) -> io::Result<Box<dyn FrameSource>> {
        let frames = LogPart::snapshot_frames(self.group, Arc::clone(&view))
            .chain(ProducersPart::snapshot_frames(self.group, view));
        Ok(Box::new(IterFrames(frames)))
    }

    fn restore_frame(&mut self, frame: &[u8], batch: &mut WriteBatch) -> io::Result<()> {
        let Some((&section, body)) = frame.split_first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "an empty partition snapshot frame"));
        };
        let section = Section::of(section)?;
        if LogPart::SECTIONS.contains(&section) {
            LogPart::restore_frame(self.group, section, body, batch)
        } else if ProducersPart::SECTIONS.contains(&section) {
            ProducersPart::restore_frame(self.group, section, body, batch)
        } else {
            Err(io::Error::other(format!("no part of partition {} restores section {section:?}", self.group)))
        }
    }

    fn restored(&mut self) -> io::Result<()> {
        flotilla_types::coverage!("partition_snapshot_installed");
        self.log = LogPart::load(self.group, self.engine.as_ref())?;
        self.producers = ProducersPart::load(self.group, self.engine.as_ref())?;
        // A restored state replaces the old one, floor included.
        self.floor.set(self.log.floor());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BrokerError;
    use crate::testing::{Replica, record, values};

    #[test]
    fn offset_for_time_finds_the_first_record_at_or_after_the_time() {
        let mut p = Replica::new();
        // Batches stamped 1001 and 1002 (1000 + their log index).
        p.append(&["a", "b"]);
        p.append(&["c"]);
        // One record with its own, earlier, timestamp inside a later batch.
        let mut early = record("d");
        early.timestamp_ms = 500;
        p.apply(1_004, PartitionCommand::Append { records: vec![early, record("e")] });
        let reader = p.reader();
        let marks = p.sm.watermarks();
        assert_eq!(reader.offset_for_time(0, marks).expect("search"), 0);
        assert_eq!(reader.offset_for_time(1_001, marks).expect("search"), 0);
        assert_eq!(reader.offset_for_time(1_002, marks).expect("search"), 2);
        assert_eq!(reader.offset_for_time(1_003, marks).expect("search"), 4, "skips the early record at 3");
        assert_eq!(reader.offset_for_time(9_999, marks).expect("search"), 5, "nothing that recent: the high watermark");
    }

    #[test]
    fn offsets_are_dense_and_fetches_are_contiguous_runs() {
        let mut p = Replica::new();
        assert_eq!(p.append(&["a", "b", "c"]), 0);
        p.apply(1_002, PartitionCommand::Tick);
        assert_eq!(p.append(&["d"]), 3, "a log entry without records takes no offset");
        assert_eq!(p.append(&["e", "f"]), 4);
        assert_eq!(p.status.borrow().watermarks.high_watermark, 6);
        let reader = p.reader();
        let marks = p.sm.watermarks();
        assert_eq!(
            values(&reader.read(0, 100, usize::MAX, marks).expect("read")),
            vec![(0, "a".into()), (1, "b".into()), (2, "c".into()), (3, "d".into()), (4, "e".into()), (5, "f".into())]
        );
        // From the middle of a batch, capped by count.
        let mid = reader.read(2, 3, usize::MAX, marks).expect("read");
        assert_eq!(values(&mid), vec![(2, "c".into()), (3, "d".into()), (4, "e".into())]);
        // A byte cap still returns at least one record.
        let one = reader.read(1, 100, 0, marks).expect("read");
        assert_eq!(values(&one), vec![(1, "b".into())]);
        // Records without a timestamp carry the leader's clock reading from the log entry.
        assert_eq!(one.records[0].1.timestamp_ms, 1_001);
        // At the high watermark: nothing yet; past it: out of range, naming the range.
        assert!(reader.read(6, 10, usize::MAX, marks).expect("read").records.is_empty());
        let err = reader.read(7, 10, usize::MAX, marks).expect_err("past the end");
        assert!(matches!(err, BrokerError::OffsetOutOfRange { offset: 7, log_start: 0, high_watermark: 6, .. }));
    }

    #[test]
    fn never_reads_past_the_high_watermark_it_is_given() {
        let mut p = Replica::new();
        p.append(&["a", "b"]);
        let committed = p.sm.watermarks();
        p.append(&["c"]);
        let read = p.reader().read(0, 100, usize::MAX, committed).expect("read");
        assert_eq!(values(&read), vec![(0, "a".into()), (1, "b".into())]);
    }

    #[test]
    fn replicated_time_never_goes_back_and_a_restart_keeps_everything() {
        let mut p = Replica::new();
        p.append_at(5_000, &["a", "b"]);
        // A leader whose clock is behind the previous one's: the partition's time stands still.
        p.append_at(4_000, &["c"]);
        assert_eq!(p.status.borrow().now_ms, 5_000);
        p.append_at(6_000, &["d"]);
        assert_eq!(p.status.borrow().now_ms, 6_000);
        let reopened = p.reopen();
        assert_eq!(reopened.sm.watermarks().high_watermark, 4);
        assert_eq!(*reopened.status.borrow(), *p.status.borrow(), "a restart loads the same state");
    }

    #[test]
    fn a_snapshot_carries_the_retained_records_so_an_empty_replica_can_serve_them() {
        // DESIGN.md §3's trap: the log is the record store, so a replica that installs a
        // snapshot must end up with every retained record, not just the watermarks.
        let mut leader = Replica::new();
        leader.append(&["a", "b"]);
        leader.append(&["c"]);
        leader.append(&["d", "e"]);
        leader.apply(2_000, PartitionCommand::DeleteRecords { before_offset: 3 });
        let mut follower = Replica::new();
        follower.install_from(&leader);
        assert_eq!(follower.sm.watermarks(), PartitionWatermarks { log_start: 3, high_watermark: 5 });
        assert_eq!(follower.contents(), vec![(3, "d".into()), (4, "e".into())]);
        assert_eq!(*follower.status.borrow(), *leader.status.borrow());
        // And it goes on from there exactly as the leader does.
        assert_eq!(follower.append(&["f"]), leader.append(&["f"]));
        assert_eq!(follower.contents(), leader.contents());
    }

    #[test]
    fn a_snapshot_read_through_a_view_is_not_disturbed_by_later_trims() {
        let mut leader = Replica::new();
        for value in ["a", "b", "c", "d"] {
            leader.append(&[value]);
        }
        let mut frames = leader.sm.snapshot(leader.engine.view()).expect("snapshot");
        // Retention removes everything while the transfer is still reading.
        leader.apply(9_000, PartitionCommand::DeleteRecords { before_offset: 4 });
        let mut follower = Replica::new();
        let mut batch = WriteBatch::new();
        while let Some(frame) = frames.next_frame().expect("frame") {
            follower.sm.restore_frame(&frame, &mut batch).expect("restore");
        }
        follower.engine.write(batch).expect("write");
        follower.sm.restored().expect("reload");
        assert_eq!(follower.sm.watermarks(), PartitionWatermarks { log_start: 0, high_watermark: 4 });
        assert_eq!(follower.contents(), vec![(0, "a".into()), (1, "b".into()), (2, "c".into()), (3, "d".into())]);
    }

    #[test]
    fn a_resent_batch_gets_its_original_offsets_and_is_not_appended_again() {
        let mut p = Replica::new();
        assert_eq!(p.send((7, 0, 0), &["a", "b"]), PartitionResponse::Appended { base_offset: 0, count: 2 });
        assert_eq!(p.append(&["x"]), 2, "plain appends interleave");
        // The retry of a batch whose first attempt did land (a timeout, a leader change).
        assert_eq!(p.send((7, 0, 0), &["a", "b"]), PartitionResponse::Duplicate { base_offset: 0, count: 2 });
        assert_eq!(p.sm.watermarks().high_watermark, 3, "the duplicate took no offsets");
        assert_eq!(p.send((7, 0, 2), &["c"]), PartitionResponse::Appended { base_offset: 3, count: 1 });
        assert_eq!(p.contents(), vec![(0, "a".into()), (1, "b".into()), (2, "x".into()), (3, "c".into())]);
        // Another producer has a sequence of its own.
        assert_eq!(p.send((8, 0, 0), &["d"]), PartitionResponse::Appended { base_offset: 4, count: 1 });
    }

    #[test]
    fn a_gap_in_the_sequence_is_refused_naming_both_sequences() {
        let mut p = Replica::new();
        p.send((7, 0, 0), &["a", "b"]);
        let response = p.send((7, 0, 5), &["c"]);
        let PartitionResponse::Rejected(rejection) = response else { panic!("a gap must be refused: {response:?}") };
        assert_eq!(
            rejection,
            PartitionRejection::OutOfOrderSequence { producer_id: 7, epoch: 0, expected: 2, received: 5 }
        );
        let message = rejection.to_string();
        assert!(message.contains("sequence 5") && message.contains("expected sequence 2"), "{message}");
        assert_eq!(p.sm.watermarks().high_watermark, 2, "nothing appended");
        // A producer the partition has never seen must start at 0.
        assert!(matches!(
            p.send((9, 0, 3), &["d"]),
            PartitionResponse::Rejected(PartitionRejection::OutOfOrderSequence { expected: 0, .. })
        ));
        // The refused batches left the sequence where it was.
        assert_eq!(p.send((7, 0, 2), &["c"]), PartitionResponse::Appended { base_offset: 2, count: 1 });
    }

    #[test]
    fn a_lower_epoch_is_fenced() {
        let mut p = Replica::new();
        p.send((7, 0, 0), &["a"]);
        assert_eq!(p.send((7, 1, 0), &["b"]), PartitionResponse::Appended { base_offset: 1, count: 1 });
        assert_eq!(
            p.send((7, 0, 1), &["zombie"]),
            PartitionResponse::Rejected(PartitionRejection::ProducerFenced {
                producer_id: 7,
                epoch: 0,
                current_epoch: 1
            })
        );
        // Even a resend of the old epoch's batch is fenced, not answered.
        assert!(matches!(p.send((7, 0, 0), &["a"]), PartitionResponse::Rejected(_)));
        assert_eq!(p.sm.watermarks().high_watermark, 2);
    }

    #[test]
    fn the_producer_table_survives_a_restart_and_a_snapshot() {
        let mut p = Replica::new();
        p.send((7, 0, 0), &["a", "b"]);
        p.send((7, 0, 2), &["c"]);
        p.send((8, 2, 0), &["d"]);

        let mut reopened = p.reopen();
        assert_eq!(reopened.sm.producer_count(), 2);
        assert_eq!(reopened.send((7, 0, 0), &["a", "b"]), PartitionResponse::Duplicate { base_offset: 0, count: 2 });
        assert!(matches!(reopened.send((8, 1, 1), &["e"]), PartitionResponse::Rejected(_)), "epoch kept");

        let mut follower = Replica::new();
        follower.install_from(&reopened);
        assert_eq!(follower.send((7, 0, 2), &["c"]), PartitionResponse::Duplicate { base_offset: 2, count: 1 });
        assert_eq!(follower.send((7, 0, 3), &["f"]), PartitionResponse::Appended { base_offset: 4, count: 1 });
        // What the install wrote is what a restart of the follower loads.
        let after_restart = follower.reopen();
        assert_eq!(after_restart.sm.producers.get(7), follower.sm.producers.get(7));
        assert_eq!(after_restart.sm.producers.get(8), follower.sm.producers.get(8));
    }

    #[test]
    fn evicted_producers_are_deleted_from_storage_and_stay_unknown() {
        let mut p = Replica::new();
        let producers = crate::PRODUCERS_PER_PARTITION_MAX as u64 + 1;
        for id in 1..=producers {
            p.send((id, 0, 0), &["r"]);
        }
        assert_eq!(p.sm.producer_count(), crate::PRODUCERS_PER_PARTITION_MAX);
        let mut reopened = p.reopen();
        assert_eq!(reopened.sm.producer_count(), crate::PRODUCERS_PER_PARTITION_MAX);
        assert!(reopened.sm.producers.get(1).is_none(), "the least recently used producer went");
        // Forgotten, producer 1 can no longer be deduplicated: neither its retried first batch
        // nor its next one is taken for a new producer's, here or after a restart (the
        // eviction floor is stored with the producers).
        let mut installed = Replica::new();
        installed.install_from(&p);
        for replica in [&mut p, &mut reopened, &mut installed] {
            for sequence in [0, 1] {
                assert_eq!(
                    replica.send((1, 0, sequence), &["r"]),
                    PartitionResponse::Rejected(PartitionRejection::UnknownProducerId {
                        producer_id: 1,
                        evicted_through: 1
                    })
                );
            }
        }
    }
}

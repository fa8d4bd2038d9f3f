//! The log part: offsets assigned at apply, the index from offsets to the Raft log entries
//! that hold the records (the Raft log doubles as the record store, so records are written to
//! disk once), retention, and the reader that serves fetches.

mod frames;
mod index;
mod reader;
mod retention;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use flotilla_storage::{EngineView, Space, WriteBatch};
use flotilla_types::{GroupId, RetentionPolicy};

#[cfg(test)]
pub(crate) use frames::{BatchRun, SnapshotBatch};
pub use index::{IndexEntry, LogMeta, PartitionWatermarks};
pub use reader::{FetchedBatch, PartitionReader};

use crate::keys::{Prefix, Section};
use crate::part::{ApplyContext, Frames, Part};

/// The log of one partition.
pub(crate) struct LogPart {
    meta: LogMeta,
    /// Batches appended since the last flush, by base offset. Their index entries are in the
    /// apply batch, not yet in the engine, so retention looks here for them.
    pending: BTreeMap<u64, IndexEntry>,
    /// The metadata changed since the last flush.
    dirty: bool,
}

/// What the log needs to know of an appended batch.
pub(crate) struct NewBatch {
    pub count: u32,
    pub max_timestamp_ms: i64,
    pub bytes: u64,
}

impl LogPart {
    /// The offsets held.
    pub fn watermarks(&self) -> PartitionWatermarks {
        self.meta.watermarks
    }

    /// The log's metadata as of the last apply.
    pub fn meta(&self) -> &LogMeta {
        &self.meta
    }

    /// The replicated time of the last applied entry.
    pub fn now_ms(&self) -> i64 {
        self.meta.now_ms
    }

    /// Moves replicated time to `now_ms` (callers pass the larger of the entry's reading and
    /// the current time, so it never goes back).
    pub fn set_now(&mut self, now_ms: i64) {
        if now_ms != self.meta.now_ms {
            self.meta.now_ms = now_ms;
            self.dirty = true;
        }
    }

    /// Gives `batch`, held by the log entry being applied, the next offsets and indexes it;
    /// returns its base offset. Retention runs afterwards ([`LogPart::enforce_retention`]).
    pub fn append(&mut self, ctx: &mut ApplyContext<'_>, batch: NewBatch) -> u64 {
        let base_offset = self.meta.watermarks.high_watermark;
        let entry = IndexEntry {
            log_index: ctx.log_index,
            count: batch.count,
            max_timestamp_ms: batch.max_timestamp_ms,
            appended_ms: ctx.now_ms,
            bytes: batch.bytes,
        };
        ctx.batch.put(
            Space::StateMachine,
            index::index_key(ctx.group, base_offset),
            flotilla_raft::encode_versioned(&entry),
        );
        self.pending.insert(base_offset, entry);
        self.meta.watermarks.high_watermark = base_offset + u64::from(batch.count);
        self.meta.retained_bytes += batch.bytes;
        if self.meta.oldest.is_none() {
            self.meta.oldest = Some((base_offset, entry));
            self.meta.floor = ctx.log_index;
        }
        self.dirty = true;
        base_offset
    }

    /// Takes the topic's retention into the partition and applies it at once.
    pub fn configure(&mut self, ctx: &mut ApplyContext<'_>, retention: RetentionPolicy) {
        if self.meta.retention != retention {
            self.meta.retention = retention;
            self.dirty = true;
        }
        self.enforce_retention(ctx);
    }

    /// The first Raft log index that holds a retained record.
    pub fn floor(&self) -> u64 {
        self.meta.floor
    }
}

impl Part for LogPart {
    const SECTIONS: &'static [Section] = &[Section::LogMeta, Section::LogBatches];

    fn load(group: GroupId, store: &dyn EngineView) -> io::Result<Self> {
        let meta = match store.get(Space::StateMachine, &Prefix::LogMeta.key(group, b""))? {
            Some(bytes) => flotilla_raft::decode_versioned(&bytes)?,
            None => LogMeta::default(),
        };
        Ok(LogPart { meta, pending: BTreeMap::new(), dirty: false })
    }

    fn flush(&mut self, group: GroupId, batch: &mut WriteBatch) {
        self.pending.clear();
        if std::mem::take(&mut self.dirty) {
            batch.put(
                Space::StateMachine,
                Prefix::LogMeta.key(group, b""),
                flotilla_raft::encode_versioned(&self.meta),
            );
        }
    }

    fn next_deadline_ms(&self) -> Option<i64> {
        let max_age = i64::try_from(self.meta.retention.max_age_ms?).unwrap_or(i64::MAX);
        let (_, oldest) = self.meta.oldest?;
        Some(oldest.appended_ms.saturating_add(max_age))
    }

    fn snapshot_frames(group: GroupId, view: Arc<dyn EngineView>) -> Frames {
        frames::log_frames(group, view)
    }

    fn restore_frame(group: GroupId, section: Section, body: &[u8], batch: &mut WriteBatch) -> io::Result<()> {
        frames::restore(group, section, body, batch)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_types::RetentionPolicy;

    use super::*;
    use crate::testing::{Replica, record};
    use crate::{BrokerError, PartitionCommand, PartitionRejection, PartitionResponse};

    fn configure(p: &mut Replica, now_ms: i64, max_age_ms: Option<u64>, max_bytes: Option<u64>) {
        let retention = RetentionPolicy { max_age_ms, max_bytes };
        assert_eq!(p.apply(now_ms, PartitionCommand::Configure { retention }), PartitionResponse::Done);
    }

    /// The base offsets of the index entries stored.
    fn stored_bases(p: &Replica) -> Vec<u64> {
        index::scan_index(p.engine.as_ref(), crate::testing::GROUP, 0, u64::MAX, usize::MAX)
            .expect("scan")
            .into_iter()
            .map(|(base, _)| base)
            .collect()
    }

    #[test]
    fn retention_by_bytes_keeps_the_newest_batches_within_the_limit() {
        let mut p = Replica::new();
        // Each record is 1 (key) + 3 (value) = 4 bytes; keep at most 10.
        configure(&mut p, 1_000, None, Some(10));
        p.append(&["aaa", "bbb"]); // offsets 0-1, 8 bytes
        p.append(&["ccc"]); // 2, 4 bytes: 12 > 10, the first batch goes
        assert_eq!(p.sm.watermarks(), PartitionWatermarks { log_start: 2, high_watermark: 3 });
        assert_eq!(p.status.borrow().retained_bytes, 4);
        p.append(&["ddd"]);
        p.append(&["eee"]); // 12 > 10 again: offset 2 goes
        assert_eq!(p.contents(), vec![(3, "ddd".into()), (4, "eee".into())]);
        assert_eq!(stored_bases(&p), vec![3, 4], "trimmed index entries are deleted, not just hidden");
        // The floor is the log index of the oldest retained batch (entry 4, after the
        // configuration and three appends, holds offset 3).
        assert_eq!(p.status.borrow().floor, 4);
        assert_eq!(p.floor.get(), 4, "the log store's purge sees the floor once the trim is written");
        // A batch larger than the limit alone is kept: the newest batch never goes for size.
        p.append(&["fffffffffff"]);
        assert_eq!(p.contents(), vec![(5, "fffffffffff".into())]);
        let err = p.reader().read(1, 10, usize::MAX, p.sm.watermarks()).expect_err("trimmed");
        assert!(matches!(err, BrokerError::OffsetOutOfRange { offset: 1, log_start: 5, high_watermark: 6, .. }));
    }

    #[test]
    fn retention_by_age_judges_replicated_time_and_ticks_when_due() {
        let mut p = Replica::new();
        configure(&mut p, 1_000, Some(1_000), None);
        assert_eq!(p.status.borrow().next_deadline_ms, None, "nothing to expire yet");
        p.append_at(1_000, &["a"]);
        p.append_at(1_500, &["b"]);
        p.append_at(2_200, &["c"]);
        // Appending at 2200 already expired the batch of 1000 (1000 + 1000 <= 2200).
        assert_eq!(p.contents(), vec![(1, "b".into()), (2, "c".into())]);
        assert_eq!(p.status.borrow().next_deadline_ms, Some(2_500));
        // A client's own timestamp does not keep a record alive: age is by append time.
        let mut stamped = record("d");
        stamped.timestamp_ms = i64::MAX / 2;
        p.apply(2_300, PartitionCommand::Append { records: vec![stamped] });
        // Nothing runs before the deadline...
        p.apply(2_400, PartitionCommand::Tick);
        assert_eq!(p.sm.watermarks().log_start, 1);
        // ...and a tick at it expires what is due.
        p.apply(2_500, PartitionCommand::Tick);
        assert_eq!(p.contents(), vec![(2, "c".into()), (3, "d".into())]);
        p.apply(9_999, PartitionCommand::Tick);
        assert_eq!(p.sm.watermarks(), PartitionWatermarks { log_start: 4, high_watermark: 4 });
        assert_eq!(p.status.borrow().next_deadline_ms, None);
        assert_eq!(p.status.borrow().retained_bytes, 0);
        // Nothing retained: the whole log up to the tick may be purged.
        assert_eq!(p.status.borrow().floor, p.next_index);
        // Offsets go on from the high watermark.
        assert_eq!(p.append_at(10_000, &["e"]), 4);
    }

    #[test]
    fn a_clock_that_runs_behind_cannot_expire_records_early() {
        let mut p = Replica::new();
        configure(&mut p, 5_000, Some(1_000), None);
        p.append_at(5_000, &["a"]);
        // A new leader whose clock says 1970: replicated time stays at 5000, nothing expires.
        p.apply(1, PartitionCommand::Tick);
        assert_eq!(p.contents(), vec![(0, "a".into())]);
        assert_eq!(p.status.borrow().now_ms, 5_000);
    }

    #[test]
    fn delete_records_moves_the_log_start_exactly_and_never_past_the_high_watermark() {
        let mut p = Replica::new();
        p.append(&["a", "b", "c"]);
        p.append(&["d", "e"]);
        let refused = p.apply(2_000, PartitionCommand::DeleteRecords { before_offset: 6 });
        assert_eq!(
            refused,
            PartitionResponse::Rejected(PartitionRejection::TrimBeyondHighWatermark {
                before_offset: 6,
                high_watermark: 5
            })
        );
        assert!(refused_message(&refused).contains("high watermark is 5"));
        // Inside the first batch: the batch stays, the records below the new start are gone.
        assert_eq!(
            p.apply(2_000, PartitionCommand::DeleteRecords { before_offset: 2 }),
            PartitionResponse::Trimmed { log_start: 2 }
        );
        assert_eq!(p.contents(), vec![(2, "c".into()), (3, "d".into()), (4, "e".into())]);
        assert_eq!(stored_bases(&p), vec![0, 3]);
        // Backwards is a no-op that reports where the log starts.
        assert_eq!(
            p.apply(2_000, PartitionCommand::DeleteRecords { before_offset: 1 }),
            PartitionResponse::Trimmed { log_start: 2 }
        );
        assert_eq!(
            p.apply(2_000, PartitionCommand::DeleteRecords { before_offset: 5 }),
            PartitionResponse::Trimmed { log_start: 5 }
        );
        assert!(p.contents().is_empty());
        assert_eq!(stored_bases(&p), Vec::<u64>::new());
    }

    fn refused_message(response: &PartitionResponse) -> String {
        match response {
            PartitionResponse::Rejected(rejection) => rejection.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn trims_within_one_apply_batch_see_the_batches_appended_before_them() {
        let mut p = Replica::new();
        configure(&mut p, 1_000, None, Some(8));
        // Four appends committed together: their index entries are not in the engine yet when
        // the later ones trim the earlier ones.
        let append = |value: &str| (1_000, PartitionCommand::Append { records: vec![record(value)] });
        p.apply_batch(vec![append("aaa"), append("bbb"), append("ccc"), append("ddd")]);
        assert_eq!(p.contents(), vec![(2, "ccc".into()), (3, "ddd".into())]);
        assert_eq!(stored_bases(&p), vec![2, 3]);
        let reopened = p.reopen();
        assert_eq!(*reopened.status.borrow(), *p.status.borrow(), "what was written is what loads");
    }
}

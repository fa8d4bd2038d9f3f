//! The log part's snapshot sections: first its metadata, then the retained batches in runs of
//! about [`RUN_BYTES`], each batch with its index entry and the Raft log entry that holds its
//! records, byte for byte as the leader stored it. A replica that installs the snapshot ends
//! with exactly the records retention has not removed, however far behind the trim point it
//! was (DESIGN.md §3's trap): the records travel with the snapshot, not as log entries that
//! openraft would consider purged.

use std::io;
use std::sync::Arc;

use flotilla_raft::{LogLayout, Versioned, decode_versioned, encode_versioned};
use flotilla_storage::{EngineView, Space, WriteBatch};
use flotilla_types::GroupId;
use serde::{Deserialize, Serialize};

use super::index::{IndexEntry, LogMeta, index_key, scan_index};
use crate::keys::{Prefix, Section};
use crate::part::Frames;

/// Raft log bytes per batch-run frame, about (a frame holds at least one batch).
const RUN_BYTES: usize = 1 << 20;
/// Index entries read per scan while building a run.
const INDEX_SCAN: usize = 64;

/// One retained batch as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBatch {
    pub base_offset: u64,
    pub entry: IndexEntry,
    /// The stored Raft log entry at `entry.log_index`.
    pub raw_entry: Vec<u8>,
}

/// A run of retained batches, in offset order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRun {
    pub batches: Vec<SnapshotBatch>,
}

impl Versioned for BatchRun {
    const FORMAT: &'static str = "partition snapshot batch run";
    const VERSION: u8 = 1;
}

/// The log's frames, read from `view`.
pub(super) fn log_frames(group: GroupId, view: Arc<dyn EngineView>) -> Frames {
    Box::new(LogFrames { group, view, next_base: None, high_watermark: 0, done: false })
}

struct LogFrames {
    group: GroupId,
    view: Arc<dyn EngineView>,
    /// The base offset to read batches from; `None` before the metadata frame.
    next_base: Option<u64>,
    high_watermark: u64,
    done: bool,
}

impl LogFrames {
    fn meta_frame(&mut self) -> io::Result<Vec<u8>> {
        let meta: LogMeta = match self.view.get(Space::StateMachine, &Prefix::LogMeta.key(self.group, b""))? {
            Some(bytes) => decode_versioned(&bytes)?,
            None => LogMeta::default(),
        };
        self.high_watermark = meta.watermarks.high_watermark;
        self.next_base = Some(meta.oldest.map_or(meta.watermarks.high_watermark, |(base, _)| base));
        Ok(Section::LogMeta.frame(encode_versioned(&meta)))
    }

    fn run_frame(&mut self, from: u64) -> io::Result<Option<Vec<u8>>> {
        let layout = LogLayout::new(self.group);
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        let mut next = from;
        'fill: while next < self.high_watermark && bytes < RUN_BYTES {
            let entries = scan_index(self.view.as_ref(), self.group, next, self.high_watermark, INDEX_SCAN)?;
            if entries.is_empty() {
                break;
            }
            for (base, entry) in entries {
                let raw_entry = layout.read_raw(self.view.as_ref(), entry.log_index)?.ok_or_else(|| {
                    io::Error::other(format!(
                        "partition {} index names log entry {} for offset {base}, which is gone",
                        self.group, entry.log_index
                    ))
                })?;
                bytes += raw_entry.len();
                next = base + u64::from(entry.count);
                batches.push(SnapshotBatch { base_offset: base, entry, raw_entry });
                if bytes >= RUN_BYTES {
                    break 'fill;
                }
            }
        }
        self.next_base = Some(next);
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(Section::LogBatches.frame(encode_versioned(&BatchRun { batches }))))
    }
}

impl Iterator for LogFrames {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let frame = match self.next_base {
            None => self.meta_frame().map(Some),
            Some(from) => self.run_frame(from),
        };
        match frame {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

/// Restores one frame of the log's sections into `batch`.
pub(super) fn restore(group: GroupId, section: Section, body: &[u8], batch: &mut WriteBatch) -> io::Result<()> {
    match section {
        Section::LogMeta => {
            let meta: LogMeta = decode_versioned(body)?;
            batch.put(Space::StateMachine, Prefix::LogMeta.key(group, b""), encode_versioned(&meta));
        }
        Section::LogBatches => {
            let run: BatchRun = decode_versioned(body)?;
            let layout = LogLayout::new(group);
            for stored in run.batches {
                batch.put(Space::StateMachine, index_key(group, stored.base_offset), encode_versioned(&stored.entry));
                layout.put_raw(batch, stored.entry.log_index, stored.raw_entry);
            }
        }
        other => return Err(io::Error::other(format!("the log part has no snapshot section {other:?}"))),
    }
    Ok(())
}

//! The log part's stored formats: the offset index ([`IndexEntry`]) and the part's metadata
//! ([`LogMeta`]), each with its format version.

use flotilla_raft::Versioned;
use flotilla_storage::{Direction, EngineView, Space};
use flotilla_types::{GroupId, RetentionPolicy};
use serde::{Deserialize, Serialize};

use crate::keys::Prefix;

/// Where the batch starting at some offset lives in the Raft log, and what retention needs to
/// know of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// The Raft log entry holding the batch's records.
    pub log_index: u64,
    /// Records in the batch.
    pub count: u32,
    /// The latest record timestamp in the batch (records without one carry the entry's), so
    /// a search by time reads only the index until it finds the batch to open.
    pub max_timestamp_ms: i64,
    /// The replicated time at which the batch was appended; `retention.ms` judges this, so a
    /// client's own timestamps can neither keep records forever nor expire them early.
    pub appended_ms: i64,
    /// The batch's record bytes (key, value and headers of each record): what
    /// `retention.bytes` counts.
    pub bytes: u64,
}

impl Versioned for IndexEntry {
    const FORMAT: &'static str = "partition index entry";
    const VERSION: u8 = 1;
}

/// The offsets a partition holds: `[log_start, high_watermark)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionWatermarks {
    /// First offset still retained.
    pub log_start: u64,
    /// One past the last applied (so committed) offset.
    pub high_watermark: u64,
}

/// The log part's state besides the index, written once per apply batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogMeta {
    pub watermarks: PartitionWatermarks,
    /// Record bytes of the retained batches (the one holding `log_start` counts whole).
    pub retained_bytes: u64,
    /// The oldest retained batch (the one holding `log_start`): its base offset and entry.
    pub oldest: Option<(u64, IndexEntry)>,
    /// The first Raft log index that holds a retained record; the log below it may go.
    pub floor: u64,
    /// The replicated time of the last applied entry.
    pub now_ms: i64,
    /// The retention the topic's configuration last brought into the log.
    pub retention: RetentionPolicy,
}

impl Versioned for LogMeta {
    const FORMAT: &'static str = "partition log metadata";
    const VERSION: u8 = 1;
}

/// The key of the index entry of the batch starting at `base_offset`.
pub(crate) fn index_key(group: GroupId, base_offset: u64) -> Vec<u8> {
    Prefix::Index.id_key(group, base_offset)
}

/// Up to `limit` index entries with base offsets in `[from, to)`, in order.
pub(crate) fn scan_index(
    store: &dyn EngineView,
    group: GroupId,
    from: u64,
    to: u64,
    limit: usize,
) -> std::io::Result<Vec<(u64, IndexEntry)>> {
    let (start, end) = (index_key(group, from), index_key(group, to));
    let rows = store.scan(Space::StateMachine, &start[..]..&end[..], Direction::Forward, limit)?;
    rows.into_iter().map(|(key, value)| Ok((Prefix::id_of(&key)?, flotilla_raft::decode_versioned(&value)?))).collect()
}

/// The index entry of the batch holding `offset`: the one with the greatest base at or below
/// it.
pub(crate) fn batch_holding(
    store: &dyn EngineView,
    group: GroupId,
    offset: u64,
) -> std::io::Result<Option<(u64, IndexEntry)>> {
    let (start, end) = (Prefix::Index.range(group).start, index_key(group, offset.saturating_add(1)));
    let rows = store.scan(Space::StateMachine, &start[..]..&end[..], Direction::Reverse, 1)?;
    match rows.into_iter().next() {
        Some((key, value)) => Ok(Some((Prefix::id_of(&key)?, flotilla_raft::decode_versioned(&value)?))),
        None => Ok(None),
    }
}

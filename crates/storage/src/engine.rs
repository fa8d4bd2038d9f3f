//! The `Engine` trait: an ordered key-value store with atomic batches, an explicit
//! durability barrier and point-in-time read views, shared by all Raft groups of a node.

use std::ops::Range;
use std::sync::Arc;

use crate::StorageError;

/// A key space. The RocksDB engine maps each to a column family; keys inside a space start
/// with the 8-byte big-endian group id so one range delete drops a whole group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Raft log entries, keyed `group ++ index`.
    RaftLog,
    /// Per-group Raft bookkeeping: vote, committed and purged log ids.
    RaftState,
    /// State-machine data of every group (partition indexes, metadata snapshots, ...).
    StateMachine,
    /// Node identity and other node-wide facts.
    Node,
}

impl Space {
    /// Every space, in a fixed order (engines create them all at open).
    pub const ALL: [Space; 4] = [Space::RaftLog, Space::RaftState, Space::StateMachine, Space::Node];

    /// A stable name, used as the RocksDB column-family name.
    pub fn name(self) -> &'static str {
        match self {
            Space::RaftLog => "raft_log",
            Space::RaftState => "raft_state",
            Space::StateMachine => "state_machine",
            Space::Node => "node",
        }
    }
}

/// One mutation inside a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert or overwrite `key`.
    Put { space: Space, key: Vec<u8>, value: Vec<u8> },
    /// Remove `key` (absent keys are fine).
    Delete { space: Space, key: Vec<u8> },
    /// Remove every key in `[start, end)`; an empty or inverted range removes nothing.
    DeleteRange { space: Space, start: Vec<u8>, end: Vec<u8> },
}

/// Mutations applied atomically, in order: after a crash either all of them survive or none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Put { space, key: key.into(), value: value.into() });
    }

    /// Adds a point delete.
    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete { space, key: key.into() });
    }

    /// Adds a delete of `[start, end)`.
    pub fn delete_range(&mut self, space: Space, start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::DeleteRange { space, start: start.into(), end: end.into() });
    }

    /// The mutations, in order.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Consumes the batch into its mutations.
    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops
    }

    /// Whether the batch holds no mutation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values in the batch (for write-amplification accounting).
    pub fn payload_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => key.len() + value.len(),
                WriteOp::Delete { key, .. } => key.len(),
                WriteOp::DeleteRange { start, end, .. } => start.len() + end.len(),
            })
            .sum()
    }
}

/// A key and its value, as scans return them.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Scan order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Ascending keys from the start of the range.
    Forward,
    /// Descending keys from the end of the range.
    Reverse,
}

/// Reads of an engine. On the engine itself they see every write that returned; on a
/// [view](Engine::view) they see the engine as it was when the view was taken: writes made
/// after that are invisible to it. A snapshot transfer reads a partition through one while applies and
/// retention go on, so the records it streams are exactly those of one applied position.
///
/// A view pins what it sees (RocksDB keeps the files holding data deleted since), so it is
/// held only while a task needs it and then dropped.
pub trait EngineView: Send + Sync + 'static {
    /// Reads one key as of the view.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// Reads at most `limit` pairs with keys in `range`, in `direction` order, as of the view.
    fn scan(
        &self,
        space: Space,
        range: Range<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError>;
}

/// An ordered key-value store shared by every Raft group on a node.
///
/// Contract (checked by [`crate::conformance`]):
/// - `write` is atomic and its effects are visible to reads as soon as it returns;
/// - a write is durable only once a later `sync` has returned `Ok`; a crash keeps a prefix
///   of the writes in the order they were made (never a later write without an earlier one);
/// - `sync` covers every write that returned before it was called, from any thread, so one
///   call can complete the appends of many groups (group commit);
/// - a [`view`](Engine::view) sees every write that returned before it was taken and none
///   made after.
///
/// Reads (`get`, `scan`) come from [`EngineView`]: on the engine itself they see the latest
/// writes, so code that only reads takes a `&dyn EngineView` and serves both.
pub trait Engine: EngineView {
    /// Applies `batch` atomically.
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// Makes every write that returned before this call durable.
    fn sync(&self) -> Result<(), StorageError>;

    /// A point-in-time view of the whole engine.
    fn view(&self) -> Arc<dyn EngineView>;

    /// Gives back the disk space of keys deleted from `range` of `space` (by range deletes):
    /// an LSM engine keeps deleted data until a compaction passes over it, and RocksDB keeps a
    /// blob file until no table refers to any blob in it. May block for a while; engines
    /// that free space at once (the in-memory one) do nothing.
    fn compact_range(&self, _space: Space, _range: Range<&[u8]>) -> Result<(), StorageError> {
        Ok(())
    }

    /// Whether `sync` blocks the calling thread on real I/O. Callers then run it on a
    /// blocking thread; the in-memory engine says `false` so simulations stay on one thread.
    fn sync_blocks(&self) -> bool;

    /// Extra time a sync round takes, awaited before `sync` on engines whose calls do not
    /// block: the in-memory engine's slow-disk fault. Real engines take their real time.
    fn sync_latency(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Bytes this engine has written to its files so far, if it can tell (the denominator of
    /// write amplification is the bytes clients produced).
    fn bytes_written(&self) -> Option<u64> {
        None
    }
}

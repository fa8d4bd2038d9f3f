//! `MemoryEngine`: the in-memory engine the simulation runs on. It keeps what a disk would
//! hold after a power cut apart from what only the page cache holds, so a simulated crash
//! loses exactly the writes that were never synced.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::{Direction, Engine, EngineView, KeyValue, Space, StorageError, WriteBatch, WriteOp};

/// A persistent ordered map: cloning it (a view, the durable image after a crash) is O(1) and
/// later writes copy only the paths they change, so views cost next to nothing even while
/// the engine keeps writing.
type Tree = imbl::OrdMap<Vec<u8>, Vec<u8>>;
type Trees = BTreeMap<Space, Tree>;

/// Fault switches for simulations and tests. All off by default.
#[derive(Debug, Clone, Default)]
pub struct MemoryFaults {
    /// A deliberately broken engine: `sync` reports success without making anything
    /// durable. Exists so tests can prove the history checker catches acknowledge-before-
    /// fsync bugs; never set it anywhere else.
    pub sync_lies: bool,
    /// Every `sync` fails with an injected error while set.
    pub sync_fails: bool,
    /// A slow disk: each sync round takes this long (in the runtime's time, so simulated
    /// time under turmoil). Zero is an instant disk.
    pub sync_latency: std::time::Duration,
}

#[derive(Debug, Default)]
struct Inner {
    /// What reads see: durable plus pending writes.
    visible: Trees,
    /// What survives a crash.
    durable: Trees,
    /// Batches written since the last sync, oldest first.
    pending: Vec<WriteBatch>,
    faults: MemoryFaults,
    bytes_written: u64,
}

/// An in-memory [`Engine`] with an explicit durable image.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    inner: Mutex<Inner>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates a power cut: the first `keep_pending` unsynced batches reach the disk (a
    /// torn tail keeps a prefix, never a later write without an earlier one), the rest are
    /// lost, and reads afterwards see only what survived.
    pub fn crash(&self, keep_pending: usize) {
        let mut inner = self.inner.lock();
        let pending = std::mem::take(&mut inner.pending);
        let keep = keep_pending.min(pending.len());
        for batch in pending.into_iter().take(keep) {
            apply(&mut inner.durable, batch);
        }
        inner.visible = inner.durable.clone();
    }

    /// How many batches are written but not yet synced.
    pub fn pending_batches(&self) -> usize {
        self.inner.lock().pending.len()
    }

    /// Replaces the fault switches.
    pub fn set_faults(&self, faults: MemoryFaults) {
        self.inner.lock().faults = faults;
    }

    /// The fault switches in force.
    pub fn faults(&self) -> MemoryFaults {
        self.inner.lock().faults.clone()
    }

    /// Drops everything, durable or not: a disk replaced by an empty one.
    pub fn wipe(&self) {
        let mut inner = self.inner.lock();
        let faults = inner.faults.clone();
        *inner = Inner { faults, ..Inner::default() };
    }
}

fn apply(trees: &mut Trees, batch: WriteBatch) {
    for op in batch.into_ops() {
        match op {
            WriteOp::Put { space, key, value } => {
                trees.entry(space).or_default().insert(key, value);
            }
            WriteOp::Delete { space, key } => {
                if let Some(tree) = trees.get_mut(&space) {
                    tree.remove(&key);
                }
            }
            WriteOp::DeleteRange { space, start, end } => {
                // An empty or inverted range deletes nothing (the Engine contract).
                if let Some(tree) = trees.get_mut(&space)
                    && start < end
                {
                    let doomed: Vec<Vec<u8>> = tree.range(start..end).map(|(k, _)| k.clone()).collect();
                    for key in doomed {
                        tree.remove(&key);
                    }
                }
            }
        }
    }
}

/// Reads `range` of `tree` the way [`Engine::scan`] does.
fn scan_tree(tree: Option<&Tree>, range: Range<&[u8]>, direction: Direction, limit: usize) -> Vec<KeyValue> {
    let Some(tree) = tree else { return Vec::new() };
    if range.start >= range.end {
        return Vec::new();
    }
    let bounds = (std::ops::Bound::Included(range.start.to_vec()), std::ops::Bound::Excluded(range.end.to_vec()));
    let iter = tree.range::<_, Vec<u8>>(bounds).map(|(k, v)| (k.clone(), v.clone()));
    match direction {
        Direction::Forward => iter.take(limit).collect(),
        Direction::Reverse => iter.rev().take(limit).collect(),
    }
}

/// A view of a [`MemoryEngine`]: the trees as they were.
struct MemoryView {
    trees: Trees,
}

impl EngineView for MemoryView {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.trees.get(&space).and_then(|tree| tree.get(key).cloned()))
    }

    fn scan(
        &self,
        space: Space,
        range: Range<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        Ok(scan_tree(self.trees.get(&space), range, direction, limit))
    }
}

impl EngineView for MemoryEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let inner = self.inner.lock();
        Ok(inner.visible.get(&space).and_then(|tree| tree.get(key).cloned()))
    }

    fn scan(
        &self,
        space: Space,
        range: Range<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        let inner = self.inner.lock();
        Ok(scan_tree(inner.visible.get(&space), range, direction, limit))
    }
}

impl Engine for MemoryEngine {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        inner.bytes_written += batch.payload_bytes() as u64;
        apply(&mut inner.visible, batch.clone());
        inner.pending.push(batch);
        Ok(())
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mut inner = self.inner.lock();
        if inner.faults.sync_fails {
            return Err(StorageError::Injected { operation: "sync" });
        }
        if inner.faults.sync_lies {
            return Ok(());
        }
        let pending = std::mem::take(&mut inner.pending);
        for batch in pending {
            apply(&mut inner.durable, batch);
        }
        Ok(())
    }

    fn sync_latency(&self) -> std::time::Duration {
        self.inner.lock().faults.sync_latency
    }

    fn view(&self) -> Arc<dyn EngineView> {
        Arc::new(MemoryView { trees: self.inner.lock().visible.clone() })
    }

    fn sync_blocks(&self) -> bool {
        false
    }

    fn bytes_written(&self) -> Option<u64> {
        Some(self.inner.lock().bytes_written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_conformance_suite() {
        crate::conformance::run_all(&|| Box::new(MemoryEngine::new()));
    }

    #[test]
    fn crash_loses_exactly_the_unsynced_writes() {
        let engine = MemoryEngine::new();
        let mut synced = WriteBatch::new();
        synced.put(Space::RaftLog, b"a".to_vec(), b"1".to_vec());
        engine.write(synced).expect("write");
        engine.sync().expect("sync");
        for (key, value) in [(b"b", b"2"), (b"c", b"3")] {
            let mut batch = WriteBatch::new();
            batch.put(Space::RaftLog, key.to_vec(), value.to_vec());
            engine.write(batch).expect("write");
        }
        assert_eq!(engine.pending_batches(), 2);
        // A torn tail keeps the first pending batch and loses the second.
        engine.crash(1);
        assert_eq!(engine.get(Space::RaftLog, b"a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(engine.get(Space::RaftLog, b"b").expect("get"), Some(b"2".to_vec()));
        assert_eq!(engine.get(Space::RaftLog, b"c").expect("get"), None);
    }

    #[test]
    fn lying_sync_loses_data_on_crash() {
        let engine = MemoryEngine::new();
        engine.set_faults(MemoryFaults { sync_lies: true, ..MemoryFaults::default() });
        let mut batch = WriteBatch::new();
        batch.put(Space::Node, b"k".to_vec(), b"v".to_vec());
        engine.write(batch).expect("write");
        engine.sync().expect("sync");
        engine.crash(0);
        assert_eq!(engine.get(Space::Node, b"k").expect("get"), None);
    }
}

//! `Reclaimer`: gives the disk space of deleted key ranges back to the file system. Retention
//! deletes a partition's oldest records in one range delete when its log is purged; RocksDB
//! frees that space only once a compaction passes over the range (and drops a blob file only
//! when no table refers to it any more), which for a log whose tables see few writes can take
//! very long. So deleted ranges are noted here and compacted in the background, coalesced and
//! at most once per interval, off the async workers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::{Engine, Space};

/// Deleted ranges waiting for a compaction, by space and start key (the latest end kept).
type Pending = BTreeMap<(Space, Vec<u8>), Vec<u8>>;

/// The node's record of deleted ranges to compact.
pub struct Reclaimer {
    engine: Arc<dyn Engine>,
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for Reclaimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reclaimer").field("pending", &self.pending.lock().len()).finish()
    }
}

impl Reclaimer {
    /// A reclaimer for `engine`; [`Reclaimer::run`] does the work.
    pub fn new(engine: Arc<dyn Engine>) -> Arc<Reclaimer> {
        Arc::new(Reclaimer { engine, pending: Mutex::new(BTreeMap::new()) })
    }

    /// Notes that `[start, end)` of `space` was range-deleted. Ranges with the same start (a
    /// partition's log prefix, growing) are kept as one.
    pub fn deleted(&self, space: Space, start: Vec<u8>, end: Vec<u8>) {
        let mut pending = self.pending.lock();
        let slot = pending.entry((space, start)).or_default();
        if end > *slot {
            *slot = end;
        }
    }

    /// Ranges noted and not yet compacted.
    pub fn pending(&self) -> usize {
        self.pending.lock().len()
    }

    /// Compacts what was noted, every `interval`, until the task is dropped (an intentionally
    /// endless loop: it lives as long as the node).
    pub async fn run(self: Arc<Self>, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let ranges = std::mem::take(&mut *self.pending.lock());
            if ranges.is_empty() || !self.engine.sync_blocks() {
                // The in-memory engine frees deleted data at once.
                continue;
            }
            let engine = Arc::clone(&self.engine);
            let compacted = tokio::task::spawn_blocking(move || {
                for ((space, start), end) in &ranges {
                    if let Err(err) = engine.compact_range(*space, &start[..]..&end[..]) {
                        tracing::warn!(space = space.name(), error = %err, "compacting a deleted range");
                    }
                }
                ranges.len()
            })
            .await;
            if let Ok(count) = compacted {
                tracing::debug!(ranges = count, "compacted deleted ranges");
            }
        }
    }
}

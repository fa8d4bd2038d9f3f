//! Fail-stop on storage faults: the node's engine is wrapped so that the first storage call
//! that fails (a write, an fsync, a read of data RocksDB finds corrupt) stops the whole node.
//!
//! A node whose disk failed must not stay up: RocksDB turns read-only after a failed write or
//! fsync, so every group on the node would fail its appends while the node kept answering
//! heartbeats, votes and reads from state it can no longer make durable (a zombie). Stopping
//! is safe: the other replicas hold everything a quorum acknowledged, and an operator (or a
//! supervisor) restarts the node once the disk is fixed, when it recovers from what it synced.

use std::ops::Range;
use std::sync::Arc;

use flotilla_storage::{Direction, Engine, EngineView, KeyValue, Space, StorageError, WriteBatch};
use tokio::sync::watch;

/// Exit status of a node stopped by a storage fault (`EX_IOERR` of sysexits.h), so a
/// supervisor can tell it from a crash or a refusal to start.
pub const EXIT_STORAGE_FAILED: u8 = 74;

/// The first storage failure, once there is one.
pub type StorageFailure = watch::Receiver<Option<StorageError>>;

/// Wraps `engine`: every call goes through, and the first failure is published on the
/// returned receiver.
pub fn watch_engine(engine: Arc<dyn Engine>) -> (Arc<dyn Engine>, StorageFailure) {
    let (failed, failure) = watch::channel(None);
    let failed = Arc::new(failed);
    (Arc::new(Watched { inner: engine, failed }), failure)
}

/// An engine (or one of its views) that reports its first failure.
struct Watched<T: ?Sized> {
    inner: Arc<T>,
    failed: Arc<watch::Sender<Option<StorageError>>>,
}

impl<T: ?Sized> Watched<T> {
    /// Publishes `result`'s error if it is the first.
    fn noted<R>(&self, result: Result<R, StorageError>) -> Result<R, StorageError> {
        if let Err(err) = &result {
            self.failed.send_if_modified(|first| {
                if first.is_some() {
                    return false;
                }
                *first = Some(err.clone());
                true
            });
        }
        result
    }
}

impl<T: EngineView + ?Sized> EngineView for Watched<T> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.noted(self.inner.get(space, key))
    }

    fn scan(
        &self,
        space: Space,
        range: Range<&[u8]>,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StorageError> {
        self.noted(self.inner.scan(space, range, direction, limit))
    }
}

impl Engine for Watched<dyn Engine> {
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.noted(self.inner.write(batch))
    }

    fn sync(&self) -> Result<(), StorageError> {
        self.noted(self.inner.sync())
    }

    fn view(&self) -> Arc<dyn EngineView> {
        Arc::new(Watched { inner: self.inner.view(), failed: Arc::clone(&self.failed) })
    }

    fn compact_range(&self, space: Space, range: Range<&[u8]>) -> Result<(), StorageError> {
        self.noted(self.inner.compact_range(space, range))
    }

    fn sync_blocks(&self) -> bool {
        self.inner.sync_blocks()
    }

    fn sync_latency(&self) -> std::time::Duration {
        self.inner.sync_latency()
    }

    fn bytes_written(&self) -> Option<u64> {
        self.inner.bytes_written()
    }
}

#[cfg(test)]
mod tests {
    use flotilla_storage::{MemoryEngine, MemoryFaults};

    use super::*;

    #[test]
    fn the_first_failed_call_is_published_and_later_ones_do_not_replace_it() {
        let memory = Arc::new(MemoryEngine::new());
        let (engine, failure) = watch_engine(Arc::clone(&memory) as Arc<dyn Engine>);
        let mut batch = WriteBatch::new();
        batch.put(Space::Node, b"k".to_vec(), b"v".to_vec());
        engine.write(batch).expect("write");
        engine.sync().expect("sync");
        assert!(failure.borrow().is_none(), "nothing failed yet");
        memory.set_faults(MemoryFaults { sync_fails: true, ..MemoryFaults::default() });
        let err = engine.sync().expect_err("the injected fault");
        assert_eq!(failure.borrow().as_ref().map(ToString::to_string), Some(err.to_string()));
        let _ = engine.sync();
        assert!(failure.has_changed().expect("open"), "published once");
    }
}

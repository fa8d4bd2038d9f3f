//! Storage calls off the async workers: a RocksDB write can stall (a write stall throttles
//! writers by sleeping in the calling thread) and an fsync takes milliseconds, and on a tokio
//! worker either would hold up every task scheduled there, heartbeats and elections included.

use std::io;
use std::sync::Arc;

use flotilla_storage::{Engine, WriteBatch};

/// Runs `work` on the blocking pool when the engine's calls block (RocksDB), inline when they
/// never do (the in-memory engine of the simulation, which must stay on its scheduler).
pub(crate) async fn off_the_workers<T: Send + 'static>(
    blocking: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    if blocking {
        tokio::task::spawn_blocking(work).await.map_err(|err| io::Error::other(format!("storage task failed: {err}")))
    } else {
        Ok(work())
    }
}

/// Runs `work`, which may block, where it cannot hold up other tasks: on a multi-threaded
/// runtime with an engine whose calls block, `block_in_place` hands this worker's other tasks
/// to another thread for the duration (no thread hop for `work` itself, and it may run under
/// a lock, unlike a task on the blocking pool); otherwise inline (the simulation's in-memory
/// engine, or a single-threaded runtime, which cannot hand its tasks over).
pub(crate) fn blocking_call<T>(blocking: bool, work: impl FnOnce() -> T) -> T {
    let multi_threaded = tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if blocking && multi_threaded { tokio::task::block_in_place(work) } else { work() }
}

/// Writes `batch` to `engine` without holding up the async workers ([`blocking_call`]).
pub(crate) fn write(engine: &Arc<dyn Engine>, batch: WriteBatch) -> io::Result<()> {
    blocking_call(engine.sync_blocks(), || engine.write(batch)).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use flotilla_storage::{Direction, EngineView, KeyValue, MemoryEngine, Space, StorageError};

    use super::*;

    /// An engine whose writes block the calling thread for a while, as a stalled disk does.
    struct StallingEngine(MemoryEngine);

    impl EngineView for StallingEngine {
        fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            self.0.get(space, key)
        }
        fn scan(
            &self,
            space: Space,
            range: std::ops::Range<&[u8]>,
            direction: Direction,
            limit: usize,
        ) -> Result<Vec<KeyValue>, StorageError> {
            self.0.scan(space, range, direction, limit)
        }
    }

    impl Engine for StallingEngine {
        fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
            std::thread::sleep(Duration::from_millis(500));
            self.0.write(batch)
        }
        fn sync(&self) -> Result<(), StorageError> {
            self.0.sync()
        }
        fn view(&self) -> Arc<dyn EngineView> {
            self.0.view()
        }
        fn sync_blocks(&self) -> bool {
            true
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_stalled_write_does_not_hold_up_the_other_tasks() {
        // Review finding 7: appends, truncations, purges and applies wrote to RocksDB on the
        // async worker, so a write stall froze the runtime's other tasks (heartbeats).
        let engine: Arc<dyn Engine> = Arc::new(StallingEngine(MemoryEngine::new()));
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = {
            let ticks = Arc::clone(&ticks);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let mut batch = WriteBatch::new();
        batch.put(Space::Node, b"k".to_vec(), b"v".to_vec());
        // Awaited from a task, as openraft's storage calls are.
        let writer = tokio::spawn({
            let engine = Arc::clone(&engine);
            async move { write(&engine, batch) }
        });
        writer.await.expect("joined").expect("written");
        ticker.abort();
        // 500 ms of stall at 10 ms a tick; a frozen runtime would tick at most once.
        assert!(ticks.load(Ordering::Relaxed) >= 5, "only {} ticks during the write", ticks.load(Ordering::Relaxed));
    }
}

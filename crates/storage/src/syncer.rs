//! Group commit: one task owns the engine's durability barrier, and every Raft group that
//! appended something queues a completion on it. One `sync` then completes the appends of
//! all groups that wrote before it, so a node fsyncs once per round, not once per group.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{Engine, StorageError};

/// Called once the writes made before it was queued are durable (or failed to become so).
pub type SyncCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send + 'static>;

/// Completions taken per round at most. Bounds the work between two fsyncs so one burst
/// cannot delay the acknowledgements of earlier writers without limit.
const MAX_CALLBACKS_PER_SYNC: usize = 65_536;

/// Queue depth before `after_sync` waits: backpressure on appenders when the disk is slower
/// than they are, instead of unbounded memory.
const QUEUE_CAPACITY: usize = 65_536;

/// Cloneable handle to the syncer task.
#[derive(Clone)]
pub struct SyncHandle {
    tx: mpsc::Sender<SyncCallback>,
}

impl std::fmt::Debug for SyncHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHandle").finish_non_exhaustive()
    }
}

impl SyncHandle {
    /// Queues `callback` to run after the next sync. Writes that returned before this call
    /// are covered by that sync.
    pub async fn after_sync(&self, callback: SyncCallback) {
        if let Err(mpsc::error::SendError(callback)) = self.tx.send(callback).await {
            callback(Err(StorageError::Engine { operation: "sync", message: "syncer stopped".into() }));
        }
    }

    /// Waits until every write that returned before this call is durable.
    pub async fn sync(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.after_sync(Box::new(move |res| {
            let _ = tx.send(res);
        }))
        .await;
        rx.await.unwrap_or_else(|_| {
            Err(StorageError::Engine { operation: "sync", message: "syncer dropped the request".into() })
        })
    }
}

/// The group-commit task.
pub struct Syncer;

impl Syncer {
    /// Starts the syncer on the current tokio runtime. It ends when every handle is dropped.
    pub fn spawn(engine: Arc<dyn Engine>) -> SyncHandle {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(engine, rx));
        SyncHandle { tx }
    }
}

async fn run(engine: Arc<dyn Engine>, mut rx: mpsc::Receiver<SyncCallback>) {
    let mut round: Vec<SyncCallback> = Vec::new();
    while let Some(first) = rx.recv().await {
        round.push(first);
        while round.len() < MAX_CALLBACKS_PER_SYNC {
            match rx.try_recv() {
                Ok(callback) => round.push(callback),
                Err(_) => break,
            }
        }
        let result = if engine.sync_blocks() {
            let engine = Arc::clone(&engine);
            match tokio::task::spawn_blocking(move || engine.sync()).await {
                Ok(res) => res,
                Err(join) => Err(StorageError::Engine { operation: "sync", message: join.to_string() }),
            }
        } else {
            let latency = engine.sync_latency();
            if !latency.is_zero() {
                // Writes that land while the disk is busy are covered by this sync too, as
                // they would be by a real fsync that starts after them.
                tokio::time::sleep(latency).await;
            }
            engine.sync()
        };
        if let Err(err) = &result {
            tracing::error!(error = %err, waiters = round.len(), "sync failed");
        }
        for callback in round.drain(..) {
            callback(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EngineView, MemoryEngine, Space, WriteBatch};

    #[tokio::test]
    async fn one_sync_completes_every_queued_writer() {
        let engine = Arc::new(MemoryEngine::new());
        let handle = Syncer::spawn(engine.clone());
        for group in 0..10u64 {
            let mut batch = WriteBatch::new();
            batch.put(Space::RaftLog, crate::group_key(group, b"x"), b"v".to_vec());
            engine.write(batch).expect("write");
        }
        handle.sync().await.expect("sync");
        assert_eq!(engine.pending_batches(), 0);
        engine.crash(0);
        for group in 0..10u64 {
            assert!(engine.get(Space::RaftLog, &crate::group_key(group, b"x")).expect("get").is_some());
        }
    }
}

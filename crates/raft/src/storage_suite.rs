//! openraft's own storage test suite, run against [`LogStore`] and [`StateMachineStore`] on
//! both engines: the in-memory engine of the simulation and RocksDB.

use std::io;
use std::sync::Arc;

use flotilla_storage::{Engine, EngineView, MemoryEngine, Reclaimer, Syncer, WriteBatch};
use flotilla_types::GroupId;
use openraft::StorageError;
use openraft::alias::LogIdOf;
use openraft::error::ErrorSource;
use openraft::testing::log::{StoreBuilder, Suite};
use serde::{Deserialize, Serialize};

use crate::{
    FrameSource, GroupStateMachine, IterFrames, LogStore, Persistence, PurgeMode, RetainFloor, StateMachineStore,
    decode, encode, scoped,
};

/// A command of the test application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Put(pub(crate) u64);

impl std::fmt::Display for Put {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "put {}", self.0)
    }
}

crate::declare_group_config!(pub(crate) TestConfig: Put => u64, format "test command" version 1);

/// Sums what is put into it.
struct Sum {
    total: u64,
    persistence: Persistence,
}

impl GroupStateMachine<TestConfig> for Sum {
    fn persistence(&self) -> Persistence {
        self.persistence
    }

    fn apply(&mut self, _log_id: &LogIdOf<TestConfig>, command: Put, _batch: &mut WriteBatch) -> u64 {
        self.total += command.0;
        self.total
    }

    fn snapshot(&self, _view: Arc<dyn EngineView>) -> io::Result<Box<dyn FrameSource>> {
        Ok(Box::new(IterFrames(vec![Ok(encode(&self.total))].into_iter())))
    }

    fn restore_frame(&mut self, frame: &[u8], _batch: &mut WriteBatch) -> io::Result<()> {
        self.total = decode(frame)?;
        Ok(())
    }

    fn restored(&mut self) -> io::Result<()> {
        Ok(())
    }
}

type Log = LogStore<TestConfig>;
type Machine = StateMachineStore<TestConfig, Sum>;

/// Builds stores over a fresh engine each time.
struct Builder {
    engine: fn() -> (Arc<dyn Engine>, Option<tempfile::TempDir>),
    persistence: Persistence,
    purge_mode: PurgeMode,
}

impl StoreBuilder<TestConfig, Log, Machine, Option<tempfile::TempDir>> for Builder {
    async fn build(&self) -> Result<(Option<tempfile::TempDir>, Log, Machine), StorageError<TestConfig>> {
        let (engine, dir) = (self.engine)();
        let syncer = Syncer::spawn(Arc::clone(&engine));
        let group = GroupId(42);
        // A small read budget, so the suite's ranges are read in many byte-bounded pieces.
        let reclaimer = Reclaimer::new(Arc::clone(&engine));
        let log = LogStore::new(group, Arc::clone(&engine), syncer, self.purge_mode.clone(), 64, reclaimer);
        let app = Arc::new(parking_lot::Mutex::new(Sum { total: 0, persistence: self.persistence }));
        let machine =
            StateMachineStore::open(group, engine, app).map_err(|e| StorageError::read(ErrorSource::from_error(&e)))?;
        Ok((dir, log, machine))
    }
}

fn memory() -> (Arc<dyn Engine>, Option<tempfile::TempDir>) {
    (Arc::new(MemoryEngine::new()), None)
}

fn rocks() -> (Arc<dyn Engine>, Option<tempfile::TempDir>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = flotilla_storage_rocks::RocksEngine::open(dir.path(), flotilla_storage_rocks::RocksConfig::default())
        .expect("open RocksDB");
    (Arc::new(engine), Some(dir))
}

fn run_suite(builder: Builder) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(scoped(7, async move {
        Suite::test_all(builder).await.expect("openraft storage suite");
    }));
}

#[test]
fn memory_engine_passes_openraft_suite_incremental() {
    run_suite(Builder { engine: memory, persistence: Persistence::Incremental, purge_mode: PurgeMode::Delete });
}

#[test]
fn memory_engine_passes_openraft_suite_snapshot_only() {
    run_suite(Builder { engine: memory, persistence: Persistence::SnapshotOnly, purge_mode: PurgeMode::Delete });
}

#[test]
fn memory_engine_passes_openraft_suite_keeping_purged_entries() {
    run_suite(Builder {
        engine: memory,
        persistence: Persistence::Incremental,
        purge_mode: PurgeMode::KeepRecords(RetainFloor::new(0)),
    });
}

#[test]
fn rocksdb_engine_passes_openraft_suite() {
    run_suite(Builder { engine: rocks, persistence: Persistence::Incremental, purge_mode: PurgeMode::Delete });
}

#[test]
fn rocksdb_engine_passes_openraft_suite_keeping_purged_entries() {
    run_suite(Builder {
        engine: rocks,
        persistence: Persistence::SnapshotOnly,
        purge_mode: PurgeMode::KeepRecords(RetainFloor::new(0)),
    });
}

//! Snapshot installs that must not destroy what a replica holds: a snapshot that does not
//! decode fails before the commit point, and a snapshot built before an install never
//! replaces the newer one the install stored.

use std::io;
use std::sync::Arc;

use flotilla_storage::{Engine, EngineView, MemoryEngine, Space, WriteBatch, group_key};
use flotilla_types::GroupId;
use openraft::alias::{LogIdOf, SnapshotMetaOf};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload};

use crate::storage_suite::{Put, TestConfig};
use crate::{FrameSource, GroupSnapshot, GroupStateMachine, IterFrames, Persistence, StateMachineStore, scoped};

const GROUP: GroupId = GroupId(5);

/// Keeps one number under one key of its own.
struct Kept {
    engine: Arc<dyn Engine>,
    value: u64,
    persistence: Persistence,
}

fn value_key() -> Vec<u8> {
    group_key(GROUP.0, b"v")
}

impl GroupStateMachine<TestConfig> for Kept {
    fn persistence(&self) -> Persistence {
        self.persistence
    }

    fn apply(&mut self, _log_id: &LogIdOf<TestConfig>, command: Put, batch: &mut WriteBatch) -> u64 {
        self.value = command.0;
        batch.put(Space::StateMachine, value_key(), self.value.to_be_bytes().to_vec());
        self.value
    }

    fn snapshot(&self, _view: Arc<dyn EngineView>) -> io::Result<Box<dyn FrameSource>> {
        Ok(Box::new(IterFrames(vec![Ok(self.value.to_be_bytes().to_vec())].into_iter())))
    }

    fn restore_frame(&mut self, frame: &[u8], batch: &mut WriteBatch) -> io::Result<()> {
        let bytes: [u8; 8] =
            frame.try_into().map_err(|_| io::Error::other(format!("a frame of {} bytes", frame.len())))?;
        if self.persistence == Persistence::SnapshotOnly {
            self.value = u64::from_be_bytes(bytes);
        }
        batch.put(Space::StateMachine, value_key(), bytes.to_vec());
        Ok(())
    }

    fn restored(&mut self) -> io::Result<()> {
        if self.persistence == Persistence::Incremental
            && let Some(bytes) = self.engine.get(Space::StateMachine, &value_key())?
        {
            self.value = u64::from_be_bytes(bytes.try_into().map_err(|_| io::Error::other("stored value"))?);
        }
        Ok(())
    }
}

fn store(engine: &Arc<dyn Engine>, persistence: Persistence) -> StateMachineStore<TestConfig, Kept> {
    let app = Kept { engine: Arc::clone(engine), value: 0, persistence };
    StateMachineStore::open(GROUP, Arc::clone(engine), Arc::new(parking_lot::Mutex::new(app))).expect("open")
}

async fn apply(store: &mut StateMachineStore<TestConfig, Kept>, index: u64, value: u64) {
    let entry = Entry { log_id: log_id::<TestConfig>(1, 1, index), payload: EntryPayload::Normal(Put(value)) };
    store.apply(futures::stream::iter(vec![Ok((entry, None))])).await.expect("apply");
}

fn frames(frames: Vec<Vec<u8>>) -> GroupSnapshot {
    GroupSnapshot::source(Box::new(IterFrames(frames.into_iter().map(Ok).collect::<Vec<_>>().into_iter())), false)
}

fn meta(index: u64) -> SnapshotMetaOf<TestConfig> {
    SnapshotMetaOf::<TestConfig> {
        last_log_id: Some(log_id::<TestConfig>(2, 1, index)),
        last_membership: Default::default(),
    }
}

fn run(test: impl std::future::Future<Output = ()>) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(scoped(3, test));
}

#[test]
fn a_snapshot_that_does_not_decode_leaves_the_old_state_intact() {
    run(async {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let mut sm = store(&engine, Persistence::Incremental);
        apply(&mut sm, 3, 5).await;
        // A newer build's frame this one cannot read.
        let err = sm.install_snapshot(&meta(10), frames(vec![vec![1, 2, 3]])).await.expect_err("undecodable");
        assert!(err.to_string().contains("a frame of 3 bytes"), "{err}");
        let (applied, _) = sm.applied_state().await.expect("state");
        assert_eq!(applied.map(|id| id.index), Some(3), "the applied position is the old one");
        assert_eq!(engine.get(Space::StateMachine, &value_key()).expect("get"), Some(5u64.to_be_bytes().to_vec()));
        // And a restart does not try to finish an install that never began.
        let mut reopened = store(&engine, Persistence::Incremental);
        let (applied, _) = reopened.applied_state().await.expect("state");
        assert_eq!(applied.map(|id| id.index), Some(3));
        // A snapshot that decodes installs.
        reopened.install_snapshot(&meta(10), frames(vec![7u64.to_be_bytes().to_vec()])).await.expect("install");
        assert_eq!(reopened.app().lock().value, 7);
    });
}

#[test]
fn a_snapshot_built_before_an_install_never_replaces_the_installed_one() {
    run(async {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let mut sm = store(&engine, Persistence::SnapshotOnly);
        apply(&mut sm, 2, 5).await;
        let mut builder = sm.get_snapshot_builder().await;
        // The install lands while the build (openraft runs it in a task of its own) is slow.
        sm.install_snapshot(&meta(9), frames(vec![100u64.to_be_bytes().to_vec()])).await.expect("install");
        builder.build_snapshot().await.expect("build");
        let current = sm.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.meta.last_log_id.map(|id| id.index), Some(9), "the older build did not overwrite it");
        let reopened = store(&engine, Persistence::SnapshotOnly);
        assert_eq!(reopened.app().lock().value, 100, "a restart restores the installed snapshot");
    });
}

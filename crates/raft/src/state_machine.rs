//! `StateMachineStore`: adapts an application's pure state machine to openraft's
//! `RaftStateMachine`, persisting its effects and the applied position in the node's engine.

use std::io;
use std::sync::Arc;

use flotilla_storage::{Engine, Space, WriteBatch, group_key};
use flotilla_types::GroupId;
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::{GroupConfig, decode, encode};

const APPLIED_KEY: &[u8] = b"~applied";
const SNAPSHOT_KEY: &[u8] = b"~snapshot";

/// How a state machine survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Each apply writes its effects and the applied position in one batch; on restart the
    /// application reloads itself from the engine. For large states (partitions).
    Incremental,
    /// The state lives in memory and reaches the disk only as snapshots; on restart the
    /// latest snapshot is restored and openraft re-applies the log after it. For small,
    /// hot states (metadata).
    SnapshotOnly,
}

/// An application state machine: deterministic, with its effects written into batches the
/// adapter commits. Implementations never touch openraft, sockets or clocks.
pub trait GroupStateMachine<C: GroupConfig>: Send + Sync + 'static {
    /// How this state survives restarts.
    fn persistence(&self) -> Persistence;

    /// Applies one committed command. Durable effects go into `batch`, which is written
    /// together with the new applied position.
    fn apply(&mut self, log_id: &LogIdOf<C>, command: C::D, batch: &mut WriteBatch) -> C::R;

    /// Notes that an entry without a command (a blank or membership entry) was applied at
    /// `log_id`; partitions use it to keep their index of log positions complete.
    fn apply_empty(&mut self, _log_id: &LogIdOf<C>, _batch: &mut WriteBatch) {}

    /// Runs after a batch of applies is written and visible to readers (wake long polls).
    fn applied(&mut self) {}

    /// The whole state as bytes, consistent with the last applied entry.
    fn snapshot(&self) -> io::Result<Vec<u8>>;

    /// Replaces the whole state by `data` from [`Self::snapshot`], writing its durable form
    /// into `batch`.
    fn restore(&mut self, data: &[u8], batch: &mut WriteBatch) -> io::Result<()>;
}

/// The applied position, stored with incremental persistence.
#[derive(Serialize, Deserialize)]
struct Applied<LogId, Membership> {
    last_applied: Option<LogId>,
    membership: Membership,
}

/// The latest snapshot, stored so it survives restarts.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot<Meta> {
    meta: Meta,
    data: Vec<u8>,
}

/// openraft's view of one group's state machine.
pub struct StateMachineStore<C: GroupConfig, A: GroupStateMachine<C>> {
    group: GroupId,
    engine: Arc<dyn Engine>,
    app: Arc<parking_lot::Mutex<A>>,
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
}

impl<C: GroupConfig, A: GroupStateMachine<C>> StateMachineStore<C, A> {
    /// Opens the state machine of `group`, recovering the applied position (incremental
    /// persistence) or the latest snapshot (snapshot-only persistence).
    pub fn open(group: GroupId, engine: Arc<dyn Engine>, app: Arc<parking_lot::Mutex<A>>) -> io::Result<Self> {
        let mut store = StateMachineStore {
            group,
            engine,
            app,
            last_applied: None,
            membership: StoredMembershipOf::<C>::default(),
        };
        let persistence = store.app.lock().persistence();
        match persistence {
            Persistence::Incremental => {
                if let Some(bytes) = store.engine.get(Space::StateMachine, &store.key(APPLIED_KEY))? {
                    let applied: Applied<LogIdOf<C>, StoredMembershipOf<C>> = decode(&bytes)?;
                    store.last_applied = applied.last_applied;
                    store.membership = applied.membership;
                }
            }
            Persistence::SnapshotOnly => {
                if let Some(snapshot) = store.stored_snapshot()? {
                    let mut ignored = WriteBatch::new();
                    store.app.lock().restore(&snapshot.data, &mut ignored)?;
                    store.last_applied = snapshot.meta.last_log_id.clone();
                    store.membership = snapshot.meta.last_membership.clone();
                }
            }
        }
        Ok(store)
    }

    /// The application, shared with readers.
    pub fn app(&self) -> Arc<parking_lot::Mutex<A>> {
        Arc::clone(&self.app)
    }

    fn key(&self, name: &[u8]) -> Vec<u8> {
        group_key(self.group.0, name)
    }

    fn stored_snapshot(&self) -> io::Result<Option<StoredSnapshot<SnapshotMetaOf<C>>>> {
        match self.engine.get(Space::StateMachine, &self.key(SNAPSHOT_KEY))? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_applied(&self, batch: &mut WriteBatch) {
        let applied = Applied { last_applied: self.last_applied.clone(), membership: self.membership.clone() };
        batch.put(Space::StateMachine, self.key(APPLIED_KEY), encode(&applied));
    }
}

impl<C: GroupConfig, A: GroupStateMachine<C>> RaftStateMachine<C> for StateMachineStore<C, A> {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder<C, A>;

    async fn applied_state(&mut self) -> io::Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>)> {
        Ok((self.last_applied.clone(), self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<C>>> + Unpin + OptionalSend,
    {
        // Drain the stream before taking the lock: the guard must not live across an await.
        let mut received = Vec::new();
        while let Some(item) = entries.try_next().await? {
            received.push(item);
        }
        let mut batch = WriteBatch::new();
        let mut responses = Vec::new();
        {
            let mut app = self.app.lock();
            for (entry, responder) in received {
                let log_id = entry.log_id();
                let response = match C::into_payload(entry) {
                    EntryPayload::Blank => {
                        app.apply_empty(&log_id, &mut batch);
                        C::R::default()
                    }
                    EntryPayload::Membership(membership) => {
                        app.apply_empty(&log_id, &mut batch);
                        self.membership = StoredMembershipOf::<C>::new(Some(log_id.clone()), membership);
                        C::R::default()
                    }
                    EntryPayload::Normal(command) => app.apply(&log_id, command, &mut batch),
                };
                self.last_applied = Some(log_id);
                if let Some(responder) = responder {
                    responses.push((responder, response));
                }
            }
            if app.persistence() == Persistence::Incremental {
                self.put_applied(&mut batch);
            }
            if !batch.is_empty() {
                // Not synced: every applied entry is committed in the log, so anything lost in
                // a crash is re-applied from there.
                self.engine.write(batch)?;
            }
            app.applied();
        }
        for (responder, response) in responses {
            responder.send(response);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Taken here, on the state-machine worker, so the bytes match `last_applied` even if
        // openraft runs the build in another task while applies continue.
        let data = self.app.lock().snapshot();
        SnapshotBuilder {
            group: self.group,
            engine: Arc::clone(&self.engine),
            data: Some(data),
            last_applied: self.last_applied.clone(),
            membership: self.membership.clone(),
            _app: std::marker::PhantomData,
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<C>, snapshot: Vec<u8>) -> io::Result<()> {
        let mut batch = WriteBatch::new();
        self.app.lock().restore(&snapshot, &mut batch)?;
        self.last_applied = meta.last_log_id.clone();
        self.membership = meta.last_membership.clone();
        self.put_applied(&mut batch);
        let stored = StoredSnapshot { meta: meta.clone(), data: snapshot };
        batch.put(Space::StateMachine, self.key(SNAPSHOT_KEY), encode(&stored));
        self.engine.write(batch)?;
        self.app.lock().applied();
        flotilla_types::coverage!("snapshot_installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<C, Vec<u8>>>> {
        Ok(self.stored_snapshot()?.map(|stored| SnapshotOf::<C, Vec<u8>> { meta: stored.meta, snapshot: stored.data }))
    }
}

/// Builds a snapshot of the state as of the moment the builder was made.
pub struct SnapshotBuilder<C: GroupConfig, A: GroupStateMachine<C>> {
    group: GroupId,
    engine: Arc<dyn Engine>,
    data: Option<io::Result<Vec<u8>>>,
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    _app: std::marker::PhantomData<fn() -> A>,
}

impl<C: GroupConfig, A: GroupStateMachine<C>> RaftSnapshotBuilder<C> for SnapshotBuilder<C, A> {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<C, Vec<u8>>> {
        let data = self.data.take().unwrap_or_else(|| Err(io::Error::other("snapshot builder used twice")))?;
        flotilla_types::coverage!("snapshot_built");
        let meta =
            SnapshotMetaOf::<C> { last_log_id: self.last_applied.clone(), last_membership: self.membership.clone() };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        let mut batch = WriteBatch::new();
        batch.put(Space::StateMachine, group_key(self.group.0, SNAPSHOT_KEY), encode(&stored));
        self.engine.write(batch)?;
        Ok(SnapshotOf::<C, Vec<u8>> { meta, snapshot: data })
    }
}

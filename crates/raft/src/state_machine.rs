//! `StateMachineStore`: adapts an application's pure state machine to openraft's
//! `RaftStateMachine`: persists its effects and the applied position in the node's engine,
//! and moves its snapshots in bounded frames (`crate::snapshot`).
//!
//! Installing a received snapshot (incremental persistence) goes in three steps, so a crash at
//! any point leaves either the old state or the new one, never a mix, and never loses what the
//! old log held before the new state is safely staged:
//! 1. *staged*: every chunk is in the staging area (the live state is untouched);
//! 2. *commit point*: one atomic write clears the application's keys and the Raft log up to
//!    the snapshot, records the snapshot as purged and applied, and sets the `~adopting`
//!    marker;
//! 3. *adopt*: staged chunks are restored one by one, each in one write that also deletes it;
//!    a restart with the marker present resumes here before the group starts.

use std::io;
use std::sync::Arc;

use flotilla_storage::{Direction, Engine, EngineView, Space, WriteBatch};
use flotilla_types::GroupId;
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::blocking::off_the_workers;
use crate::codec::{decode_with_version, encode_with_version};
use crate::snapshot::keys::{ADOPTING, APPLIED, SNAPSHOT_CHUNK, SNAPSHOT_META, app_range, chunk_key, chunk_range, key};
use crate::snapshot::staging::Staging;
use crate::snapshot::{FrameSource, GroupSnapshot, split_frames};
use crate::{GroupConfig, LogLayout};

/// Version of the applied position, the stored snapshot's metadata and the adopting marker.
pub const SM_STATE_VERSION: u8 = 1;

/// Entries applied under one lock and one write, at most: bounds the write batch and the time
/// readers wait for the lock while a long committed range is applied.
const APPLY_CHUNK_ENTRIES: usize = 512;

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
///
/// Keys an application keeps in `Space::StateMachine` sort below
/// [`crate::APP_KEYS_END`] (after its group prefix); the adapter owns the rest.
pub trait GroupStateMachine<C: GroupConfig>: Send + Sync + 'static {
    /// How this state survives restarts.
    fn persistence(&self) -> Persistence;

    /// Applies one committed command. Durable effects go into `batch`, which is written
    /// together with the new applied position.
    fn apply(&mut self, log_id: &LogIdOf<C>, command: C::D, batch: &mut WriteBatch) -> C::R;

    /// Notes that an entry without a command (a blank or membership entry) was applied at
    /// `log_id`.
    fn apply_empty(&mut self, _log_id: &LogIdOf<C>, _batch: &mut WriteBatch) {}

    /// Runs after the last apply of a batch, before the batch is written: state that many
    /// applies changed is written once here.
    fn finish_batch(&mut self, _batch: &mut WriteBatch) {}

    /// Runs after a batch of applies is written and visible to readers (wake long polls).
    fn applied(&mut self) {}

    /// The state as frames, consistent with the last applied entry. `view` was taken at that
    /// entry; an incremental state reads itself from it lazily, while the transfer runs.
    fn snapshot(&self, view: Arc<dyn EngineView>) -> io::Result<Box<dyn FrameSource>>;

    /// Restores one frame of a snapshot, in order. With incremental persistence the durable
    /// form goes into `batch` (the application's keys were cleared before the first frame)
    /// and nothing else may depend on earlier frames: a restore interrupted by a crash
    /// resumes at a later frame in a new process.
    fn restore_frame(&mut self, frame: &[u8], batch: &mut WriteBatch) -> io::Result<()>;

    /// Every frame is restored and written: rebuild the in-memory state from it.
    fn restored(&mut self) -> io::Result<()>;
}

/// The applied position, stored with incremental persistence.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Applied<LogId, Membership> {
    pub(crate) last_applied: Option<LogId>,
    pub(crate) membership: Membership,
}

/// openraft's view of one group's state machine.
pub struct StateMachineStore<C: GroupConfig, A: GroupStateMachine<C>> {
    group: GroupId,
    engine: Arc<dyn Engine>,
    app: Arc<parking_lot::Mutex<A>>,
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    /// Serializes storing a snapshot (snapshot-only persistence): openraft builds snapshots in
    /// a task of their own, which may finish after an install stored a newer one.
    snapshot_lock: Arc<parking_lot::Mutex<()>>,
}

impl<C: GroupConfig, A: GroupStateMachine<C>> StateMachineStore<C, A> {
    /// Opens the state machine of `group`: recovers the applied position (incremental
    /// persistence, finishing an interrupted snapshot install first) or the latest snapshot
    /// (snapshot-only persistence), and drops the leftovers of an interrupted transfer.
    pub fn open(group: GroupId, engine: Arc<dyn Engine>, app: Arc<parking_lot::Mutex<A>>) -> io::Result<Self> {
        let mut store = StateMachineStore {
            group,
            engine,
            app,
            last_applied: None,
            membership: StoredMembershipOf::<C>::default(),
            snapshot_lock: Arc::default(),
        };
        let persistence = store.app.lock().persistence();
        match persistence {
            Persistence::Incremental => {
                if store.read::<SnapshotMetaOf<C>>(ADOPTING, "snapshot install marker")?.is_some() {
                    tracing::info!(group = %group, "resuming a snapshot install interrupted by a restart");
                    adopt::<C, A>(group, &store.engine, &store.app)?;
                } else {
                    store.staging().clear()?;
                }
                if let Some(applied) =
                    store.read::<Applied<LogIdOf<C>, StoredMembershipOf<C>>>(APPLIED, "applied position")?
                {
                    store.last_applied = applied.last_applied;
                    store.membership = applied.membership;
                }
            }
            Persistence::SnapshotOnly => {
                store.staging().clear()?;
                if let Some(meta) = store.read::<SnapshotMetaOf<C>>(SNAPSHOT_META, "snapshot metadata")? {
                    let mut ignored = WriteBatch::new();
                    let range = chunk_range(group, SNAPSHOT_CHUNK);
                    let rows = store.engine.scan(
                        Space::StateMachine,
                        &range.start[..]..&range.end[..],
                        Direction::Forward,
                        usize::MAX,
                    )?;
                    let mut app = store.app.lock();
                    for (_, chunk) in rows {
                        for frame in split_frames(&chunk)? {
                            app.restore_frame(frame, &mut ignored)?;
                        }
                    }
                    app.restored()?;
                    drop(app);
                    store.last_applied = meta.last_log_id.clone();
                    store.membership = meta.last_membership.clone();
                }
            }
        }
        Ok(store)
    }

    /// The application, shared with readers.
    pub fn app(&self) -> Arc<parking_lot::Mutex<A>> {
        Arc::clone(&self.app)
    }

    fn staging(&self) -> Staging {
        Staging::new(self.group, Arc::clone(&self.engine))
    }

    fn read<T: serde::de::DeserializeOwned>(&self, name: &[u8], format: &str) -> io::Result<Option<T>> {
        match self.engine.get(Space::StateMachine, &key(self.group, name))? {
            Some(bytes) => Ok(Some(decode_with_version(format, SM_STATE_VERSION, &bytes)?)),
            None => Ok(None),
        }
    }

    fn put_applied(&self, batch: &mut WriteBatch) {
        let applied = Applied { last_applied: self.last_applied.clone(), membership: self.membership.clone() };
        batch.put(Space::StateMachine, key(self.group, APPLIED), encode_with_version(SM_STATE_VERSION, &applied));
    }

    /// Applies received entries under one lock and writes their effects in one batch.
    fn apply_chunk(&mut self, received: Vec<EntryResponder<C>>) -> io::Result<()> {
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
            app.finish_batch(&mut batch);
            if app.persistence() == Persistence::Incremental {
                self.put_applied(&mut batch);
            }
            if !batch.is_empty() {
                // Not synced: every applied entry is committed in the log, so anything lost in
                // a crash is re-applied from there. Under the lock, so readers never see state
                // the engine does not hold yet.
                crate::blocking::write(&self.engine, batch)?;
            }
            app.applied();
        }
        for (responder, response) in responses {
            responder.send(response);
        }
        Ok(())
    }

    /// Installs a received snapshot into a snapshot-only state: restored in memory from the
    /// staged chunks, which then become the stored snapshot.
    fn install_in_memory(&mut self, meta: &SnapshotMetaOf<C>) -> io::Result<()> {
        let staging = self.staging();
        let mut batch = WriteBatch::new();
        let stored = chunk_range(self.group, SNAPSHOT_CHUNK);
        batch.delete_range(Space::StateMachine, stored.start, stored.end);
        let mut app = self.app.lock();
        let mut ignored = WriteBatch::new();
        let (mut from, mut stored_seq) = (0u64, 0u64);
        while let Some((seq, chunk)) = staging.next_from(from)? {
            for frame in split_frames(&chunk)? {
                app.restore_frame(frame, &mut ignored)?;
            }
            batch.put(Space::StateMachine, chunk_key(self.group, SNAPSHOT_CHUNK, stored_seq), chunk);
            stored_seq += 1;
            from = seq + 1;
        }
        app.restored()?;
        staging.clear_into(&mut batch);
        batch.put(Space::StateMachine, key(self.group, SNAPSHOT_META), encode_with_version(SM_STATE_VERSION, meta));
        self.last_applied = meta.last_log_id.clone();
        self.membership = meta.last_membership.clone();
        let _stored = self.snapshot_lock.lock();
        self.engine.write(batch)?;
        app.applied();
        Ok(())
    }

    fn current_meta(&self) -> SnapshotMetaOf<C> {
        SnapshotMetaOf::<C> { last_log_id: self.last_applied.clone(), last_membership: self.membership.clone() }
    }
}

/// Step 1½ of an install: every staged frame must restore before the old state is given up,
/// so a snapshot this build cannot read (a newer build's section, a corrupt chunk) fails the
/// install with the old state intact rather than after the commit point, where every restart
/// would fail again.
fn check_staged<C: GroupConfig, A: GroupStateMachine<C>>(
    staging: &Staging,
    app: &parking_lot::Mutex<A>,
) -> io::Result<()> {
    let mut app = app.lock();
    let mut from = 0;
    while let Some((seq, chunk)) = staging.next_from(from)? {
        for frame in split_frames(&chunk)? {
            // Restoring into a batch that is never written only decodes.
            app.restore_frame(frame, &mut WriteBatch::new())?;
        }
        from = seq + 1;
    }
    Ok(())
}

/// Step 2 of an install (see the module docs): the commit point.
fn commit_install<C: GroupConfig>(group: GroupId, engine: &dyn Engine, meta: &SnapshotMetaOf<C>) -> io::Result<()> {
    let Some(last) = meta.last_log_id.clone() else {
        return Err(io::Error::other(format!("group {group}: a snapshot without a last log id")));
    };
    let mut batch = WriteBatch::new();
    let app_keys = app_range(group);
    batch.delete_range(Space::StateMachine, app_keys.start, app_keys.end);
    // The old log up to the snapshot goes: what of it matters (retained records) comes back
    // from the snapshot. Marking it purged in the same write keeps the log openraft sees
    // consistent at every step, whatever order the adoption writes its records in.
    let layout = LogLayout::new(group);
    layout.delete_entries(&mut batch, 0, last.index() + 1);
    layout.put_purged::<C>(&mut batch, &last);
    let applied = Applied { last_applied: Some(last), membership: meta.last_membership.clone() };
    batch.put(Space::StateMachine, key(group, APPLIED), encode_with_version(SM_STATE_VERSION, &applied));
    batch.put(Space::StateMachine, key(group, ADOPTING), encode_with_version(SM_STATE_VERSION, meta));
    Ok(engine.write(batch)?)
}

/// Step 3 of an install: restores every staged chunk, one write per chunk, then reloads the
/// application and makes the install durable (openraft counts this replica as holding the
/// snapshot as soon as the install returns).
fn adopt<C: GroupConfig, A: GroupStateMachine<C>>(
    group: GroupId,
    engine: &Arc<dyn Engine>,
    app: &parking_lot::Mutex<A>,
) -> io::Result<()> {
    let staging = Staging::new(group, Arc::clone(engine));
    let mut app = app.lock();
    while let Some((seq, chunk)) = staging.next_from(0)? {
        let mut batch = WriteBatch::new();
        for frame in split_frames(&chunk)? {
            app.restore_frame(frame, &mut batch)?;
        }
        staging.consume_into(&mut batch, seq);
        engine.write(batch)?;
    }
    let mut batch = WriteBatch::new();
    staging.clear_into(&mut batch);
    batch.delete(Space::StateMachine, key(group, ADOPTING));
    engine.write(batch)?;
    engine.sync()?;
    app.restored()?;
    app.applied();
    Ok(())
}

impl<C: GroupConfig, A: GroupStateMachine<C>> RaftStateMachine<C> for StateMachineStore<C, A> {
    type SnapshotData = GroupSnapshot;
    type SnapshotBuilder = SnapshotBuilder<C>;

    async fn applied_state(&mut self) -> io::Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>)> {
        Ok((self.last_applied.clone(), self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<C>>> + Unpin + OptionalSend,
    {
        // Entries are taken in pieces (the log store streams them in byte-bounded reads) and
        // each piece is applied under the lock without an await in between.
        let mut received = Vec::new();
        while let Some(item) = entries.try_next().await? {
            received.push(item);
            if received.len() >= APPLY_CHUNK_ENTRIES {
                self.apply_chunk(std::mem::take(&mut received))?;
            }
        }
        if !received.is_empty() {
            self.apply_chunk(received)?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let persistence = self.app.lock().persistence();
        // Taken here, on the state-machine worker, so the frames match `last_applied` even if
        // openraft runs the build in another task while applies continue.
        // A snapshot-only state is in memory anyway, so its chunks are made here, at once.
        let chunks = match persistence {
            Persistence::Incremental => None,
            Persistence::SnapshotOnly => Some(self.app.lock().snapshot(self.engine.view()).and_then(|frames| {
                let mut source = GroupSnapshot::source(frames, false);
                let mut chunks = Vec::new();
                while let Some(chunk) = source.next_chunk()? {
                    chunks.push(chunk);
                }
                Ok(chunks)
            })),
        };
        SnapshotBuilder {
            group: self.group,
            engine: Arc::clone(&self.engine),
            chunks,
            meta: self.current_meta(),
            lock: Arc::clone(&self.snapshot_lock),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<C>, mut snapshot: GroupSnapshot) -> io::Result<()> {
        if snapshot.staged_chunks().is_none() {
            // A snapshot handed over in-process (openraft's storage suite, tests): stage it
            // first, so every install takes the same path.
            let staging = self.staging();
            staging.begin(0)?;
            let mut seq = 0;
            while let Some(chunk) = snapshot.next_chunk()? {
                staging.put(seq, &chunk)?;
                seq += 1;
            }
        }
        let persistence = self.app.lock().persistence();
        match persistence {
            Persistence::Incremental => {
                // Reads and rewrites every staged chunk: off the async workers, or a large
                // install would stall every group's heartbeats on this node.
                let (group, engine, app, staged_meta) =
                    (self.group, Arc::clone(&self.engine), Arc::clone(&self.app), meta.clone());
                off_the_workers(self.engine.sync_blocks(), move || {
                    check_staged::<C, A>(&Staging::new(group, Arc::clone(&engine)), &app)?;
                    commit_install::<C>(group, engine.as_ref(), &staged_meta)?;
                    adopt::<C, A>(group, &engine, &app)
                })
                .await??;
                self.last_applied = meta.last_log_id.clone();
                self.membership = meta.last_membership.clone();
            }
            Persistence::SnapshotOnly => self.install_in_memory(meta)?,
        }
        flotilla_types::coverage!("snapshot_installed");
        tracing::info!(group = %self.group, last = ?meta.last_log_id, "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<C, GroupSnapshot>>> {
        let persistence = self.app.lock().persistence();
        let blocking = self.engine.sync_blocks();
        match persistence {
            // The current state is the snapshot: read lazily through a view taken now.
            Persistence::Incremental => {
                if self.last_applied.is_none() {
                    return Ok(None);
                }
                let frames = self.app.lock().snapshot(self.engine.view())?;
                Ok(Some(SnapshotOf::<C, GroupSnapshot> {
                    meta: self.current_meta(),
                    snapshot: GroupSnapshot::source(frames, blocking),
                }))
            }
            Persistence::SnapshotOnly => {
                let Some(meta) = self.read::<SnapshotMetaOf<C>>(SNAPSHOT_META, "snapshot metadata")? else {
                    return Ok(None);
                };
                let frames = StoredChunks { group: self.group, view: self.engine.view(), next: 0, pending: Vec::new() };
                Ok(Some(SnapshotOf::<C, GroupSnapshot> {
                    meta,
                    snapshot: GroupSnapshot::source(Box::new(frames), blocking),
                }))
            }
        }
    }
}

/// The frames of a stored (snapshot-only) snapshot, read chunk by chunk through a view.
struct StoredChunks {
    group: GroupId,
    view: Arc<dyn EngineView>,
    next: u64,
    pending: Vec<Vec<u8>>,
}

impl FrameSource for StoredChunks {
    fn next_frame(&mut self) -> io::Result<Option<Vec<u8>>> {
        while self.pending.is_empty() {
            let Some(chunk) = self.view.get(Space::StateMachine, &chunk_key(self.group, SNAPSHOT_CHUNK, self.next))?
            else {
                return Ok(None);
            };
            self.next += 1;
            self.pending = split_frames(&chunk)?.into_iter().rev().map(<[u8]>::to_vec).collect();
        }
        Ok(self.pending.pop())
    }
}

/// Builds a snapshot of the state as of the moment the builder was made.
pub struct SnapshotBuilder<C: GroupConfig> {
    group: GroupId,
    engine: Arc<dyn Engine>,
    /// The chunks to store (snapshot-only persistence); `None` for incremental persistence,
    /// whose snapshot is its live state, read when a transfer starts.
    chunks: Option<io::Result<Vec<Vec<u8>>>>,
    meta: SnapshotMetaOf<C>,
    lock: Arc<parking_lot::Mutex<()>>,
}

impl<C: GroupConfig> RaftSnapshotBuilder<C> for SnapshotBuilder<C> {
    type SnapshotData = GroupSnapshot;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<C, GroupSnapshot>> {
        let meta = self.meta.clone();
        let Some(chunks) = self.chunks.take() else {
            // Incremental: nothing to write. openraft learns the snapshot point and may purge
            // the log up to it; the records it keeps are the partition's own business.
            return Ok(SnapshotOf::<C, GroupSnapshot> { meta, snapshot: GroupSnapshot::meta_only() });
        };
        let chunks = chunks?;
        let _stored = self.lock.lock();
        // An install may have stored a newer snapshot while this one was being built; the
        // log below it is gone, so keeping the older one would make the state unrecoverable.
        if let Some(bytes) = self.engine.get(Space::StateMachine, &key(self.group, SNAPSHOT_META))? {
            let current: SnapshotMetaOf<C> = decode_with_version("snapshot metadata", SM_STATE_VERSION, &bytes)?;
            if current.last_log_id >= meta.last_log_id {
                return Ok(SnapshotOf::<C, GroupSnapshot> { meta: current, snapshot: GroupSnapshot::meta_only() });
            }
        }
        let mut batch = WriteBatch::new();
        let stored = chunk_range(self.group, SNAPSHOT_CHUNK);
        batch.delete_range(Space::StateMachine, stored.start, stored.end);
        for (seq, chunk) in (0u64..).zip(chunks) {
            batch.put(Space::StateMachine, chunk_key(self.group, SNAPSHOT_CHUNK, seq), chunk);
        }
        batch.put(Space::StateMachine, key(self.group, SNAPSHOT_META), encode_with_version(SM_STATE_VERSION, &meta));
        self.engine.write(batch)?;
        flotilla_types::coverage!("snapshot_built");
        Ok(SnapshotOf::<C, GroupSnapshot> { meta, snapshot: GroupSnapshot::meta_only() })
    }
}

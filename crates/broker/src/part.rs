//! `Part`: one piece of partition state (the log and its index, the idempotent producers, and
//! later queue groups, timers, half messages). A part loads itself from storage, applies the
//! commands the state machine routes to it through its own typed methods, writes what changed
//! once per apply batch, says when it next has work to do in replicated time, and writes and
//! restores its own section of a snapshot. `PartitionStateMachine` only dispatches.

use std::io;
use std::sync::Arc;

use flotilla_storage::{EngineView, WriteBatch};
use flotilla_types::GroupId;

use crate::keys::Section;

/// A partition snapshot section's frames, read lazily from an engine view.
pub(crate) type Frames = Box<dyn Iterator<Item = io::Result<Vec<u8>>> + Send>;

/// Everything an apply step may use.
pub(crate) struct ApplyContext<'a> {
    pub group: GroupId,
    /// The Raft log index of the entry being applied.
    pub log_index: u64,
    /// The entry's replicated time: the leader's reading, never below an earlier entry's.
    pub now_ms: i64,
    /// Reads of what earlier apply batches wrote (this batch's writes are not in it yet, so a
    /// part keeps what it needs of them in memory until [`Part::flush`]).
    pub store: &'a dyn EngineView,
    /// Where the entry's effects go.
    pub batch: &'a mut WriteBatch,
}

/// A piece of partition state.
pub(crate) trait Part: Sized {
    /// The snapshot sections the part writes (and restores).
    const SECTIONS: &'static [Section];

    /// Loads the part as stored: on open, and after a snapshot was restored.
    fn load(group: GroupId, store: &dyn EngineView) -> io::Result<Self>;

    /// Writes what changed since the last flush into `batch`; called once per apply batch,
    /// after its last apply and before it is written.
    fn flush(&mut self, group: GroupId, batch: &mut WriteBatch);

    /// The earliest replicated time at which the part has work due (a `Tick` runs it).
    fn next_deadline_ms(&self) -> Option<i64> {
        None
    }

    /// The part's sections of a snapshot, as frames (each made by `Section::frame`) read from
    /// `view` while the transfer asks for them.
    fn snapshot_frames(group: GroupId, view: Arc<dyn EngineView>) -> Frames;

    /// Restores the body of one frame of `section` (one of [`Part::SECTIONS`]) into `batch`.
    /// Frames come in order, but a restore interrupted by a crash resumes at a later one, so
    /// each frame is restored on its own.
    fn restore_frame(group: GroupId, section: Section, body: &[u8], batch: &mut WriteBatch) -> io::Result<()>;
}

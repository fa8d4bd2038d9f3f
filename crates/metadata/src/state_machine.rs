//! `MetadataStateMachine`: the catalogue as a Raft group's state machine. It lives in memory;
//! its snapshot is the whole catalogue, versioned, in frames of at most one chunk.

use std::io;
use std::sync::Arc;

use flotilla_raft::openraft;
use flotilla_raft::{
    CHUNK_BYTES, FrameSource, GroupStateMachine, IterFrames, Persistence, Versioned, decode_versioned, encode_versioned,
};
use flotilla_storage::{EngineView, WriteBatch};
use openraft::alias::LogIdOf;
use tokio::sync::watch;

use crate::{MetaCommand, MetaReply, MetadataState};

flotilla_raft::declare_group_config!(
    /// openraft types of the metadata group.
    pub MetaConfig: MetaCommand => MetaReply, format "metadata command" version 1
);

impl Versioned for MetadataState {
    const FORMAT: &'static str = "metadata catalogue";
    const VERSION: u8 = 1;
}

/// The catalogue plus a watch that ticks on every change, so the node can reconcile its
/// local partition replicas with the placement.
pub struct MetadataStateMachine {
    state: MetadataState,
    changed: watch::Sender<Arc<MetadataState>>,
    /// The frames of a snapshot being restored, until all have come.
    restoring: Vec<u8>,
}

impl MetadataStateMachine {
    /// An empty catalogue and the receiver that sees every applied version of it.
    pub fn new() -> (MetadataStateMachine, watch::Receiver<Arc<MetadataState>>) {
        let (changed, rx) = watch::channel(Arc::new(MetadataState::default()));
        (MetadataStateMachine { state: MetadataState::default(), changed, restoring: Vec::new() }, rx)
    }

    /// The current catalogue.
    pub fn state(&self) -> &MetadataState {
        &self.state
    }
}

impl GroupStateMachine<MetaConfig> for MetadataStateMachine {
    fn persistence(&self) -> Persistence {
        Persistence::SnapshotOnly
    }

    fn apply(&mut self, _log_id: &LogIdOf<MetaConfig>, command: MetaCommand, _batch: &mut WriteBatch) -> MetaReply {
        self.state.apply(command)
    }

    fn applied(&mut self) {
        // Cloning the catalogue per apply batch is cheap at catalogue sizes; receivers always
        // see a consistent version.
        self.changed.send_replace(Arc::new(self.state.clone()));
    }

    fn snapshot(&self, _view: Arc<dyn EngineView>) -> io::Result<Box<dyn FrameSource>> {
        // The catalogue is in memory: its encoding, cut into frames that each fit a chunk.
        let bytes = encode_versioned(&self.state);
        let frames: Vec<io::Result<Vec<u8>>> = bytes.chunks(CHUNK_BYTES - 4).map(|part| Ok(part.to_vec())).collect();
        Ok(Box::new(IterFrames(frames.into_iter())))
    }

    fn restore_frame(&mut self, frame: &[u8], _batch: &mut WriteBatch) -> io::Result<()> {
        self.restoring.extend_from_slice(frame);
        Ok(())
    }

    fn restored(&mut self) -> io::Result<()> {
        let bytes = std::mem::take(&mut self.restoring);
        self.state = decode_versioned(&bytes)?;
        self.changed.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }
}

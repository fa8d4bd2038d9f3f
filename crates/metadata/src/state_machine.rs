//! `MetadataStateMachine`: the catalogue as a Raft group's state machine.

use std::io;
use std::sync::Arc;

use flotilla_raft::openraft;
use flotilla_raft::{GroupStateMachine, Persistence, decode, encode};
use flotilla_storage::WriteBatch;
use openraft::alias::LogIdOf;
use tokio::sync::watch;

use crate::{MetaCommand, MetaReply, MetadataState};

flotilla_raft::declare_group_config!(
    /// openraft types of the metadata group.
    pub MetaConfig: MetaCommand => MetaReply
);

/// The catalogue plus a watch that ticks on every change, so the node can reconcile its
/// local partition replicas with the placement.
pub struct MetadataStateMachine {
    state: MetadataState,
    changed: watch::Sender<Arc<MetadataState>>,
}

impl MetadataStateMachine {
    /// An empty catalogue and the receiver that sees every applied version of it.
    pub fn new() -> (MetadataStateMachine, watch::Receiver<Arc<MetadataState>>) {
        let (changed, rx) = watch::channel(Arc::new(MetadataState::default()));
        (MetadataStateMachine { state: MetadataState::default(), changed }, rx)
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

    fn snapshot(&self) -> io::Result<Vec<u8>> {
        Ok(encode(&self.state))
    }

    fn restore(&mut self, data: &[u8], _batch: &mut WriteBatch) -> io::Result<()> {
        self.state = decode(data)?;
        self.changed.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }
}

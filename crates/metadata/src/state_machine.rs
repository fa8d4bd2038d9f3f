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

use serde::{Deserialize, Serialize};

use crate::{MetaCommand, MetaReply, MetadataState, RequestLog};

flotilla_raft::declare_group_config!(
    /// openraft types of the metadata group.
    pub MetaConfig: MetaCommand => MetaReply, format "metadata command" version 1
);

/// What a metadata snapshot holds: the catalogue and the request log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueSnapshot {
    pub state: MetadataState,
    pub requests: RequestLog,
}

impl Versioned for CatalogueSnapshot {
    const FORMAT: &'static str = "metadata catalogue";
    /// 2: the request log after the catalogue.
    const VERSION: u8 = 2;

    fn decode_older(version: u8, bytes: &[u8]) -> Result<Self, io::Error> {
        match version {
            // The catalogue alone, from before requests were deduplicated: none to remember.
            1 => Ok(CatalogueSnapshot { state: flotilla_raft::decode(bytes)?, requests: RequestLog::default() }),
            other => Err(flotilla_raft::unreadable_version(Self::FORMAT, other, Self::VERSION)),
        }
    }
}

/// The catalogue plus a watch that ticks on every change, so the node can reconcile its
/// local partition replicas with the placement.
pub struct MetadataStateMachine {
    state: MetadataState,
    /// Replies to the last deduplicated requests (kept beside the catalogue, not in it: readers
    /// get a copy of the catalogue per apply batch and have no use for these).
    requests: RequestLog,
    changed: watch::Sender<Arc<MetadataState>>,
    /// The frames of a snapshot being restored, until all have come.
    restoring: Vec<u8>,
}

impl MetadataStateMachine {
    /// An empty catalogue and the receiver that sees every applied version of it.
    pub fn new() -> (MetadataStateMachine, watch::Receiver<Arc<MetadataState>>) {
        let (changed, rx) = watch::channel(Arc::new(MetadataState::default()));
        (
            MetadataStateMachine {
                state: MetadataState::default(),
                requests: RequestLog::default(),
                changed,
                restoring: Vec::new(),
            },
            rx,
        )
    }

    /// The current catalogue.
    pub fn state(&self) -> &MetadataState {
        &self.state
    }

    /// Applies one command; a deduplicated one at most once per request id.
    pub fn apply_command(&mut self, command: MetaCommand) -> MetaReply {
        match command {
            MetaCommand::Deduplicated { request, command } => {
                if let Some(reply) = self.requests.reply(&request) {
                    flotilla_types::coverage!("metadata_request_deduplicated");
                    return reply.clone();
                }
                let reply = self.state.apply(*command);
                self.requests.remember(request, reply.clone());
                reply
            }
            other => self.state.apply(other),
        }
    }
}

impl GroupStateMachine<MetaConfig> for MetadataStateMachine {
    fn persistence(&self) -> Persistence {
        Persistence::SnapshotOnly
    }

    fn apply(&mut self, _log_id: &LogIdOf<MetaConfig>, command: MetaCommand, _batch: &mut WriteBatch) -> MetaReply {
        self.apply_command(command)
    }

    fn applied(&mut self) {
        // Cloning the catalogue per apply batch is cheap at catalogue sizes; receivers always
        // see a consistent version.
        self.changed.send_replace(Arc::new(self.state.clone()));
    }

    fn snapshot(&self, _view: Arc<dyn EngineView>) -> io::Result<Box<dyn FrameSource>> {
        // The catalogue is in memory: its encoding, cut into frames that each fit a chunk.
        let bytes = encode_versioned(&CatalogueSnapshot { state: self.state.clone(), requests: self.requests.clone() });
        let frames: Vec<io::Result<Vec<u8>>> = bytes.chunks(CHUNK_BYTES - 4).map(|part| Ok(part.to_vec())).collect();
        Ok(Box::new(IterFrames(frames.into_iter())))
    }

    fn restore_frame(&mut self, frame: &[u8], _batch: &mut WriteBatch) -> io::Result<()> {
        self.restoring.extend_from_slice(frame);
        Ok(())
    }

    fn restored(&mut self) -> io::Result<()> {
        let bytes = std::mem::take(&mut self.restoring);
        let CatalogueSnapshot { state, requests } = decode_versioned(&bytes)?;
        self.state = state;
        self.requests = requests;
        self.changed.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use flotilla_storage::{Engine, MemoryEngine};
    use flotilla_types::TopicConfig;

    use super::*;
    use crate::{MetaResponse, RequestId};

    fn create(name: &str) -> MetaCommand {
        MetaCommand::CreateTopic {
            name: name.into(),
            partitions: 1,
            replication_factor: 1,
            created_at_ms: 0,
            config: TopicConfig::default(),
        }
    }

    fn once(sequence: u64, command: MetaCommand) -> MetaCommand {
        MetaCommand::Deduplicated {
            request: RequestId { node: 1, incarnation: 42, sequence },
            command: Box::new(command),
        }
    }

    #[test]
    fn a_retried_request_gets_its_first_reply_even_after_a_snapshot() {
        // Review finding 3: a CreateTopic retried after the leader applied it (the answer was
        // lost) used to be answered TOPIC_EXISTS; a retried JoinGroup added a second member.
        let (mut sm, _) = MetadataStateMachine::new();
        sm.apply_command(MetaCommand::RegisterNode { id: 1, peer_address: "p".into(), client_address: "c".into() });
        let first = sm.apply_command(once(1, create("orders")));
        assert!(matches!(first, MetaReply::Catalogue(MetaResponse::TopicCreated(_))), "{first:?}");
        assert_eq!(sm.apply_command(once(1, create("orders"))), first, "the retry is answered as the first");
        let join = || MetaCommand::JoinGroup {
            group: "billing".into(),
            client_id: "c1".into(),
            topics: vec!["orders".into()],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
        };
        let joined = sm.apply_command(once(2, join()));
        // A replica that starts from a snapshot taken now answers the retry the same way.
        let engine = MemoryEngine::new();
        let mut frames = sm.snapshot(engine.view()).expect("snapshot");
        let (mut restored, _) = MetadataStateMachine::new();
        let mut batch = WriteBatch::new();
        while let Some(frame) = frames.next_frame().expect("frame") {
            restored.restore_frame(&frame, &mut batch).expect("restore");
        }
        restored.restored().expect("restored");
        assert_eq!(restored.apply_command(once(2, join())), joined);
        assert_eq!(restored.state().groups["billing"].members.len(), 1, "one member, no orphan");
        // Another request with the same command is another request.
        let again = restored.apply_command(once(3, create("orders")));
        assert!(matches!(again, MetaReply::Catalogue(MetaResponse::Rejected(_))), "{again:?}");
    }
}

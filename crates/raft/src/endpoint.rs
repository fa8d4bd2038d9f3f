//! `GroupEndpoint`: the receiving side of one local group, type-erased so one registry and
//! one gRPC service can route messages to groups of different applications.

use std::sync::Arc;

use bytes::Bytes;
use flotilla_proto::raft::v1::{MessageKind, SnapshotChunkRequest};
use flotilla_storage::Engine;
use flotilla_types::{GroupId, NodeId};
use futures::future::BoxFuture;
use openraft::Raft;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::storage::RaftStateMachine;
use openraft::vote::{RaftLeaderId, RaftVote};
use serde::{Deserialize, Serialize};

use crate::snapshot::staging::{Received, Receiving, Staging};
use crate::{GroupConfig, GroupSnapshot, NodeInfo, decode, encode};

/// Why a proposal was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    /// This node does not lead the group; nothing was appended, so retrying at the leader
    /// is safe.
    #[error("not the leader; leader is {leader:?}")]
    NotLeader { leader: Option<(NodeId, NodeInfo)> },
    /// The entry was appended but leadership changed before it committed: it may or may not
    /// take effect. Callers must treat the outcome as unknown.
    #[error("leadership changed before the entry committed; outcome unknown (leader now {leader:?})")]
    OutcomeUnknown { leader: Option<(NodeId, NodeInfo)> },
    /// The group is stopped or broken on this node.
    #[error("group unavailable: {0}")]
    Unavailable(String),
    /// The command did not decode.
    #[error("invalid command: {0}")]
    Invalid(String),
}

/// A local group as the transport sees it.
pub trait GroupEndpoint: Send + Sync + 'static {
    /// Handles one Raft message; the reply is the encoded openraft response.
    fn handle(&self, kind: MessageKind, payload: Bytes) -> BoxFuture<'static, Result<Vec<u8>, String>>;

    /// Takes one chunk of a snapshot the leader sends; the last one installs it and answers
    /// with the encoded openraft response.
    fn snapshot_chunk(&self, chunk: SnapshotChunkRequest) -> BoxFuture<'static, Result<Vec<u8>, String>>;

    /// Proposes an encoded command; the reply is the encoded application response.
    fn propose(&self, command: Bytes) -> BoxFuture<'static, Result<Vec<u8>, ProposeError>>;
}

/// [`GroupEndpoint`] over an openraft handle.
pub struct RaftEndpoint<C: GroupConfig, SM: RaftStateMachine<C, SnapshotData = GroupSnapshot>> {
    raft: Raft<C, SM>,
    group: GroupId,
    engine: Arc<dyn Engine>,
    /// The snapshot transfer being received. Held across a whole chunk, install included, by
    /// a task of its own (not the gRPC handler, which a cancelled RPC drops mid-install), so
    /// a new transfer's first chunk cannot clear the staging area an install is reading.
    receiving: Arc<tokio::sync::Mutex<Receiving>>,
}

impl<C: GroupConfig, SM: RaftStateMachine<C, SnapshotData = GroupSnapshot>> RaftEndpoint<C, SM> {
    /// Wraps `raft`, the group `group` whose snapshots are staged in `engine`.
    pub fn new(raft: Raft<C, SM>, group: GroupId, engine: Arc<dyn Engine>) -> Self {
        RaftEndpoint { raft, group, engine, receiving: Default::default() }
    }
}

fn leader_of<C: GroupConfig>(forward: &openraft::error::ForwardToLeader<C>) -> Option<(NodeId, NodeInfo)> {
    match (&forward.leader_id, &forward.leader_node) {
        (Some(id), Some(node)) => Some((*id, node.clone())),
        _ => None,
    }
}

/// Maps an openraft write error to the proposal outcome a caller can act on.
pub fn propose_error<C: GroupConfig>(err: RaftError<C, ClientWriteError<C>>) -> ProposeError {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            ProposeError::NotLeader { leader: leader_of(&forward) }
        }
        RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward)) => {
            // A deposed leader's in-flight proposal: fenced by the new term.
            flotilla_types::coverage!("proposal_outcome_unknown");
            ProposeError::OutcomeUnknown { leader: leader_of(&forward) }
        }
        RaftError::APIError(other) => ProposeError::Unavailable(other.to_string()),
        RaftError::Fatal(fatal) => ProposeError::Unavailable(fatal.to_string()),
    }
}

impl<C: GroupConfig, SM: RaftStateMachine<C, SnapshotData = GroupSnapshot>> GroupEndpoint for RaftEndpoint<C, SM> {
    fn handle(&self, kind: MessageKind, payload: Bytes) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let raft = self.raft.clone();
        Box::pin(async move {
            match kind {
                MessageKind::Append => {
                    let request: AppendEntriesRequest<C> = decode(&payload).map_err(|e| e.to_string())?;
                    let response = raft.append_entries(request).await.map_err(|e| e.to_string())?;
                    Ok(encode(&response))
                }
                MessageKind::Vote => {
                    let request: VoteRequest<C> = decode(&payload).map_err(|e| e.to_string())?;
                    let response = raft.vote(request).await.map_err(|e| e.to_string())?;
                    Ok(encode(&response))
                }
                MessageKind::PreVote => {
                    let request: VoteRequest<C> = decode(&payload).map_err(|e| e.to_string())?;
                    let response = raft.pre_vote(request).await.map_err(|e| e.to_string())?;
                    Ok(encode(&response))
                }
                MessageKind::TransferLeader => {
                    let request: TransferLeaderRequest<C> = decode(&payload).map_err(|e| e.to_string())?;
                    let response = raft.handle_transfer_leader(request).await.map_err(|e| e.to_string())?;
                    Ok(encode(&response))
                }
                MessageKind::Unspecified => Err("message kind unspecified".to_string()),
            }
        })
    }

    fn snapshot_chunk(&self, chunk: SnapshotChunkRequest) -> BoxFuture<'static, Result<Vec<u8>, String>> {
        let raft = self.raft.clone();
        let group = self.group;
        let staging = Staging::new(group, Arc::clone(&self.engine));
        let receiving = Arc::clone(&self.receiving);
        // The chunk is handled by a task that owns the receiving lock until it is done: if the
        // sender gives up on the RPC (a deadline, a leader stepping down, a dead connection),
        // the handler's future is dropped, but an install already under way finishes before
        // any other transfer may touch the staging area.
        let task = tokio::spawn(async move {
            let mut receiving = receiving.lock_owned().await;
            if chunk.seq == 0 {
                // A deposed leader's transfer must not reset the current leader's.
                let (vote, _): (VoteOf<C>, SnapshotMetaOf<C>) = decode(&chunk.header).map_err(|e| e.to_string())?;
                let term = raft.metrics().borrow_watched().current_term;
                let sender_term = vote.leader_id().term();
                if sender_term < term {
                    return Err(format!(
                        "group {group}: a snapshot from a leader of term {sender_term}, this node is at term {term}"
                    ));
                }
            }
            let received =
                receiving.chunk(&staging, chunk.transfer_id, chunk.seq, &chunk.header, &chunk.data, chunk.done)?;
            let Received::Done { header, chunks } = received else { return Ok(Vec::new()) };
            let (vote, meta): (VoteOf<C>, SnapshotMetaOf<C>) = decode(&header).map_err(|e| e.to_string())?;
            let snapshot = SnapshotOf::<C, GroupSnapshot> { meta, snapshot: GroupSnapshot::staged(chunks) };
            let response = raft.install_full_snapshot(vote, snapshot).await.map_err(|e| e.to_string());
            // openraft skips an install that is not newer than what this node has committed
            // (and refuses a stale leader's): whatever it left staged is of no use.
            if let Err(err) = staging.clear() {
                tracing::warn!(%group, error = %err, "clearing a staged snapshot");
            }
            Ok(encode(&response?))
        });
        Box::pin(async move { task.await.map_err(|err| format!("snapshot chunk task failed: {err}"))? })
    }

    fn propose(&self, command: Bytes) -> BoxFuture<'static, Result<Vec<u8>, ProposeError>> {
        let raft = self.raft.clone();
        Box::pin(async move {
            let command: C::D = decode(&command).map_err(|e| ProposeError::Invalid(e.to_string()))?;
            let response = raft.client_write(command).await.map_err(propose_error::<C>)?;
            Ok(encode(&response.data))
        })
    }
}

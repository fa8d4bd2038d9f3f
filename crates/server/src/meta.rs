//! `Meta`: this node's handle on the metadata group: the local catalogue, who leads, and
//! proposing changes (locally when leader, forwarded to the leader otherwise).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_metadata::{
    GroupReply, MemberView, MetaCommand, MetaConfig, MetaReply, MetaResponse, MetadataState, MetadataStateMachine,
    RequestId,
};
use flotilla_proto::raft::v1::propose_response;
use flotilla_raft::openraft::Raft;
use flotilla_raft::openraft::ReadPolicy;
use flotilla_raft::openraft::async_runtime::watch::WatchReceiver;
use flotilla_raft::{NodeInfo, ProposeError, StateMachineStore, Transport, decode, encode};
use flotilla_types::{ErrorCode, METADATA_GROUP, NodeId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api_error::ApiError;

/// The metadata Raft handle.
pub type MetaRaft = Raft<MetaConfig, StateMachineStore<MetaConfig, MetadataStateMachine>>;

/// Pause between attempts while the metadata group has no reachable leader.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// This node's view of the metadata group.
pub struct Meta {
    node_id: NodeId,
    raft: MetaRaft,
    transport: Arc<Transport>,
    catalogue: watch::Receiver<Arc<MetadataState>>,
    /// Drawn when this process started: with the node id and the counter it makes request
    /// ids that no earlier or later process of this node reuses.
    incarnation: u64,
    /// The last request id's sequence.
    requests: AtomicU64,
}

impl Meta {
    /// Wraps the metadata group's handle.
    /// `incarnation` must differ between starts of the node (a random number does).
    pub fn new(
        node_id: NodeId,
        raft: MetaRaft,
        transport: Arc<Transport>,
        catalogue: watch::Receiver<Arc<MetadataState>>,
        incarnation: u64,
    ) -> Self {
        Meta { node_id, raft, transport, catalogue, incarnation, requests: AtomicU64::new(0) }
    }

    /// The metadata Raft handle.
    pub fn raft(&self) -> &MetaRaft {
        &self.raft
    }

    /// The catalogue as this node has applied it (may trail the leader slightly).
    pub fn catalogue(&self) -> Arc<MetadataState> {
        Arc::clone(&self.catalogue.borrow())
    }

    /// The catalogue after a lease read on the metadata leader: everything committed before
    /// this call is in it (a change acknowledged through any node is seen). A new leader's
    /// own catalogue may trail what the old leader committed until it has applied that.
    pub async fn linearizable_catalogue(&self) -> Result<Arc<MetadataState>, ApiError> {
        self.raft.ensure_linearizable(ReadPolicy::LeaseRead).await.map_err(|err| {
            ApiError::new(ErrorCode::Unavailable, format!("the metadata group cannot serve a read: {err}"))
        })?;
        Ok(self.catalogue())
    }

    /// A receiver that sees every new catalogue version.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MetadataState>> {
        self.catalogue.clone()
    }

    /// Nodes in the metadata group's membership (voters and learners): every node of the
    /// cluster, registered or not yet.
    pub fn member_count(&self) -> usize {
        self.raft.metrics().borrow_watched().membership_config.membership().nodes().count()
    }

    /// The metadata leader and its addresses, if known.
    pub fn leader(&self) -> Option<(NodeId, NodeInfo)> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        let info = metrics.membership_config.membership().get_node(&leader).cloned().unwrap_or_default();
        // Prefer the registered client address: membership only knows peer addresses of
        // the bootstrap voters.
        let client_address = self.catalogue().nodes.get(&leader).map(|n| n.client_address.clone());
        Some((leader, NodeInfo { client_address: client_address.unwrap_or(info.client_address), ..info }))
    }

    /// Applies the catalogue command `command` through the metadata leader, retrying leader
    /// changes until `timeout` passes.
    pub async fn propose(&self, command: MetaCommand, timeout: Duration) -> Result<MetaResponse, ApiError> {
        let what = command.to_string();
        match self.propose_reply(command, timeout).await? {
            MetaReply::Catalogue(response) => Ok(response),
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!("the metadata group answered catalogue command \"{what}\" with {other:?}"),
            )),
        }
    }

    /// Allocates a fresh idempotent-producer id through the metadata leader. A retry after an
    /// unknown outcome may burn an id; ids are plentiful and never reused, so that is harmless.
    pub async fn allocate_producer_id(&self, timeout: Duration) -> Result<u64, ApiError> {
        match self.propose_reply(MetaCommand::AllocateProducerId, timeout).await? {
            MetaReply::ProducerIdAllocated { producer_id } => Ok(producer_id),
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!("the metadata group answered a producer-id allocation with {other:?}"),
            )),
        }
    }

    /// Applies the consumer-group command `command` through the metadata leader; the group's
    /// refusal comes back as its client-visible error.
    pub async fn propose_group(&self, command: MetaCommand, timeout: Duration) -> Result<GroupReply, ApiError> {
        let what = command.to_string();
        match self.propose_reply(command, timeout).await? {
            MetaReply::Group(outcome) => outcome.map_err(ApiError::from),
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!("the metadata group answered group command \"{what}\" with {other:?}"),
            )),
        }
    }

    /// Applies a group command that answers with a member's state (join, release).
    pub async fn propose_member(&self, command: MetaCommand, timeout: Duration) -> Result<MemberView, ApiError> {
        let what = command.to_string();
        match self.propose_group(command, timeout).await? {
            GroupReply::Member(view) => Ok(view),
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!("the metadata group answered group command \"{what}\" with {other:?}"),
            )),
        }
    }

    /// Whether this node leads the metadata group, and in which term.
    pub fn leading_term(&self) -> Option<u64> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        (metrics.current_leader == Some(self.node_id)).then_some(metrics.current_term)
    }

    /// Applies `command` through the metadata leader, retrying leader changes until
    /// `timeout` passes, and returns the group's reply.
    ///
    /// A command whose second application would answer differently goes under a request id
    /// that every attempt shares, so an attempt that failed ambiguously (a reset after the
    /// leader applied it, a leader change before the answer) can be retried: the state
    /// machine applies it once and answers every attempt with that outcome.
    async fn propose_reply(&self, command: MetaCommand, timeout: Duration) -> Result<MetaReply, ApiError> {
        let command = if command.needs_deduplication() {
            let request = RequestId {
                node: self.node_id,
                incarnation: self.incarnation,
                sequence: self.requests.fetch_add(1, Ordering::Relaxed) + 1,
            };
            MetaCommand::Deduplicated { request, command: Box::new(command) }
        } else {
            command
        };
        let deadline = Instant::now() + timeout;
        let mut last_error = ApiError::new(ErrorCode::Unavailable, "the metadata group has no leader");
        while Instant::now() < deadline {
            let attempt = match self.leader() {
                Some((leader, _)) if leader == self.node_id => self
                    .raft
                    .client_write(command.clone())
                    .await
                    .map(|response| response.data)
                    .map_err(flotilla_raft::endpoint_propose_error::<MetaConfig>),
                Some((leader, info)) => self.forward(leader, &info, &command, deadline).await,
                None => Err(ProposeError::NotLeader { leader: None }),
            };
            match attempt {
                Ok(response) => return Ok(response),
                // The leader moved or is unknown, or the forward failed (perhaps after the
                // leader applied it): try again, under the same request id if it matters.
                Err(ProposeError::NotLeader { .. }) | Err(ProposeError::Unavailable(_)) => {
                    last_error = ApiError::new(ErrorCode::Unavailable, "the metadata group has no reachable leader");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(err) => return Err(ApiError::from_propose("the metadata group", err)),
            }
        }
        last_error.message = format!("{} within {timeout:?}", last_error.message);
        Err(last_error)
    }

    async fn forward(
        &self,
        leader: NodeId,
        info: &NodeInfo,
        command: &MetaCommand,
        deadline: Instant,
    ) -> Result<MetaReply, ProposeError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let reply = self
            .transport
            .propose(leader, &info.peer_address, METADATA_GROUP, encode(command), remaining)
            .await
            .map_err(|err| ProposeError::Unavailable(err.to_string()))?;
        match reply.result {
            Some(propose_response::Result::Response(bytes)) => {
                decode(&bytes).map_err(|err| ProposeError::Invalid(err.to_string()))
            }
            Some(propose_response::Result::Error(bytes)) => {
                Err(decode(&bytes).unwrap_or_else(|err| ProposeError::Invalid(err.to_string())))
            }
            None => Err(ProposeError::Invalid("empty propose reply".into())),
        }
    }
}

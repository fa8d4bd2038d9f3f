//! `RaftTransportService`: the receiving side of node-to-node traffic (the `raft.v1` gRPC
//! service on the peer port).

use std::collections::BTreeMap;
use std::sync::Arc;

use flotilla_proto::raft::v1::{
    BatchRequest, BatchResponse, GroupReply, IntroduceRequest, IntroduceResponse, MessageKind, ProposeRequest,
    ProposeResponse, SnapshotChunkReply, SnapshotChunkRequest, group_reply, propose_response,
    raft_transport_server::RaftTransport,
};
use flotilla_types::{GroupId, NodeId};
use tonic::{Request, Response, Status};

use crate::{GroupRegistry, ProposeError, encode};

/// Most messages the receiver takes in one `Batch`: as many as a sender puts in one
/// (`TransportConfig::batch_messages_max` defaults to it). Without a bound, one batch within the
/// 64 MiB message limit can hold tens of millions of empty messages, each handled and answered
/// with a reply of its own: GiBs held at once for one RPC.
pub const BATCH_MESSAGES_MAX: usize = 4096;

/// This node's answer to a peer asking "does your catalogue list node N?" (the `Introduce`
/// RPC). The application decides what its catalogue is; this crate only carries the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Introduction {
    /// The catalogue lists the node: it has registered, so it has run before.
    pub registered: bool,
    /// The answer is usable; false while this node cannot tell yet (its state is loading).
    pub catalogue_known: bool,
}

/// Answers introductions: called with the asking node's id.
pub type Introductions = Arc<dyn Fn(NodeId) -> Introduction + Send + Sync>;

/// Serves `raft.v1.RaftTransport` for the groups in a registry.
pub struct RaftTransportService {
    node_id: NodeId,
    registry: Arc<GroupRegistry>,
    introductions: Option<Introductions>,
}

impl RaftTransportService {
    /// The service of node `node_id`. It answers `Introduce` with `Unimplemented` until given
    /// [`with_introductions`](Self::with_introductions).
    pub fn new(node_id: NodeId, registry: Arc<GroupRegistry>) -> Self {
        RaftTransportService { node_id, registry, introductions: None }
    }

    /// Answers `Introduce` with `answer`.
    pub fn with_introductions(mut self, answer: Introductions) -> Self {
        self.introductions = Some(answer);
        self
    }

    fn check_target(&self, to_node: NodeId) -> Result<(), Status> {
        if to_node != self.node_id {
            // A peer with a stale address book reached the wrong process; answering for
            // another node's groups would corrupt them.
            return Err(Status::failed_precondition(format!(
                "message for node {to_node} reached node {}",
                self.node_id
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn batch(&self, request: Request<BatchRequest>) -> Result<Response<BatchResponse>, Status> {
        let request = request.into_inner();
        self.check_target(request.to_node)?;
        let count = request.messages.len();
        if count > BATCH_MESSAGES_MAX {
            return Err(Status::invalid_argument(format!(
                "a batch from node {} holds {count} messages; at most {BATCH_MESSAGES_MAX} are taken in one",
                request.from_node
            )));
        }
        // Messages of one group are handled one after another in arrival order (appends
        // must reach openraft in the order the leader sent them); groups run concurrently.
        let mut by_group: BTreeMap<u64, Vec<(usize, MessageKind, bytes::Bytes)>> = BTreeMap::new();
        for (position, message) in request.messages.into_iter().enumerate() {
            let kind = MessageKind::try_from(message.kind).unwrap_or(MessageKind::Unspecified);
            by_group.entry(message.group_id).or_default().push((position, kind, message.payload));
        }
        let registry = &self.registry;
        let per_group = by_group.into_iter().map(|(group, messages)| async move {
            let endpoint = registry.get(GroupId(group));
            let mut replies = Vec::with_capacity(messages.len());
            for (position, kind, payload) in messages {
                let result = match &endpoint {
                    Some(endpoint) => match endpoint.handle(kind, payload).await {
                        Ok(bytes) => group_reply::Result::Payload(bytes.into()),
                        Err(message) => group_reply::Result::Error(message),
                    },
                    None => group_reply::Result::Error(format!("group {} is not hosted on this node", GroupId(group))),
                };
                replies.push((position, result));
            }
            replies
        });
        let mut replies: Vec<GroupReply> = vec![GroupReply { result: None }; count];
        for group_replies in futures::future::join_all(per_group).await {
            for (position, result) in group_replies {
                replies[position] = GroupReply { result: Some(result) };
            }
        }
        Ok(Response::new(BatchResponse { replies }))
    }

    async fn snapshot_chunk(
        &self,
        request: Request<SnapshotChunkRequest>,
    ) -> Result<Response<SnapshotChunkReply>, Status> {
        let chunk = request.into_inner();
        self.check_target(chunk.to_node)?;
        let group = GroupId(chunk.group_id);
        let endpoint = self
            .registry
            .get(group)
            .ok_or_else(|| Status::not_found(format!("group {group} is not hosted on this node")))?;
        let payload = endpoint.snapshot_chunk(chunk).await.map_err(Status::internal)?;
        Ok(Response::new(SnapshotChunkReply { payload: payload.into() }))
    }

    async fn propose(&self, request: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let request = request.into_inner();
        let group = GroupId(request.group_id);
        let result = match self.registry.get(group) {
            Some(endpoint) => endpoint.propose(request.command).await,
            None => Err(ProposeError::Unavailable(format!("group {group} is not hosted on node {}", self.node_id))),
        };
        let result = match result {
            Ok(response) => propose_response::Result::Response(response.into()),
            Err(err) => propose_response::Result::Error(encode(&err).into()),
        };
        Ok(Response::new(ProposeResponse { result: Some(result) }))
    }

    async fn introduce(&self, request: Request<IntroduceRequest>) -> Result<Response<IntroduceResponse>, Status> {
        let asked = request.into_inner().node_id;
        let Some(answer) = &self.introductions else {
            return Err(Status::unimplemented(format!("node {} does not answer introductions", self.node_id)));
        };
        let Introduction { registered, catalogue_known } = answer(asked);
        Ok(Response::new(IntroduceResponse { responder_id: self.node_id, registered, catalogue_known }))
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::raft::v1::GroupMessage;

    use super::*;
    use crate::TransportConfig;

    fn batch_of(messages: usize) -> Request<BatchRequest> {
        let message = GroupMessage { group_id: 7, kind: MessageKind::Append as i32, payload: bytes::Bytes::new() };
        Request::new(BatchRequest { from_node: 2, to_node: 1, messages: vec![message; messages] })
    }

    /// Found by the black-box fuzz test: a batch of a few hundred thousand empty messages (6 MiB
    /// on the wire) was handled message by message and answered with a reply each, tens of
    /// MiB; within the 64 MiB message limit that is tens of millions of messages and GiBs of
    /// replies held at once. No sender puts more than `TransportConfig::batch_messages_max`
    /// in a batch, so the receiver refuses more, naming both numbers.
    #[tokio::test]
    async fn a_batch_of_more_messages_than_a_sender_sends_is_refused() {
        let service = RaftTransportService::new(1, GroupRegistry::new());
        let most = TransportConfig::default().batch_messages_max;
        let replies = service.batch(batch_of(most)).await.expect("a full batch is answered").into_inner().replies;
        assert_eq!(replies.len(), most, "one reply per message");
        let Err(status) = service.batch(batch_of(most + 1)).await else {
            panic!("a batch of {} messages, one more than a sender sends, was answered", most + 1);
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(&(most + 1).to_string()) && status.message().contains(&most.to_string()),
            "the refusal names the count and the limit: {}",
            status.message()
        );
    }
}

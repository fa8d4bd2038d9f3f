//! `GroupNetworkFactory`: openraft's network for one group, carried by the node's shared
//! [`Transport`]. Appends are pipelined: the next append leaves before the previous reply is
//! back, and replies are matched in order.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::raft::v1::{MessageKind, SnapshotChunkRequest};
use flotilla_types::{GroupId, NodeId};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use openraft::alias::{SnapshotOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkFactory, RaftNetworkV2};

use crate::transport::{Lane, SendError};
use crate::{GroupConfig, GroupSnapshot, NodeInfo, Transport, decode, encode};

/// Appends of one group to one follower that may be in flight at once.
const APPEND_PIPELINE_DEPTH: usize = 8;

/// Time one snapshot chunk (about 1 MiB) may take to reach the follower and be staged. A
/// follower that cannot stage a chunk in this long is stalled; the transfer fails and openraft
/// starts another later.
const SNAPSHOT_CHUNK_DEADLINE: Duration = Duration::from_secs(10);
/// The last chunk installs the snapshot (restoring every staged chunk), which takes time in
/// proportion to its size: this long at least, plus [`SNAPSHOT_INSTALL_PER_MIB`] per MiB sent.
const SNAPSHOT_INSTALL_DEADLINE_MIN: Duration = Duration::from_secs(30);
const SNAPSHOT_INSTALL_PER_MIB: Duration = Duration::from_millis(100);

/// Least time an append carrying entries gets. openraft's TTL for the replication stream is
/// the heartbeat interval (150 ms); an append also waits for the follower's fsync and its
/// lane, and under load that takes longer. Cutting it off then makes openraft back off and
/// stall replication for far longer than the append would have taken — and every abandoned
/// call resets an HTTP/2 stream, which in bulk makes the peer close the connection.
const APPEND_DEADLINE_MIN: Duration = Duration::from_secs(2);

/// Creates openraft network clients for one group.
pub struct GroupNetworkFactory<C: GroupConfig> {
    group: GroupId,
    transport: Arc<Transport>,
    _config: PhantomData<C>,
}

impl<C: GroupConfig> GroupNetworkFactory<C> {
    /// The network of `group` over `transport`.
    pub fn new(group: GroupId, transport: Arc<Transport>) -> Self {
        GroupNetworkFactory { group, transport, _config: PhantomData }
    }
}

impl<C: GroupConfig> RaftNetworkFactory<C> for GroupNetworkFactory<C> {
    type Network = GroupClient<C>;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        assert_ne!(
            target,
            self.transport.node_id(),
            "openraft asked group {} for a client to its own node",
            self.group
        );
        GroupClient {
            group: self.group,
            target,
            address: node.peer_address.clone(),
            transport: Arc::clone(&self.transport),
            appends: Lane::Ordered,
            _config: PhantomData,
        }
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &NodeInfo) -> Self::Network {
        // Heartbeats need no ordering with appends; on the control lane they never wait
        // behind a batch that waits for a follower's fsync.
        let mut client = self.new_client(target, node).await;
        client.appends = Lane::Control;
        client
    }
}

/// One group's connection to one peer.
pub struct GroupClient<C: GroupConfig> {
    group: GroupId,
    target: NodeId,
    address: String,
    transport: Arc<Transport>,
    /// The lane this client's appends take: ordered for replication, control for heartbeats.
    appends: Lane,
    _config: PhantomData<C>,
}

/// How long an append may take: at least [`APPEND_DEADLINE_MIN`]. Heartbeats stay bounded
/// by openraft's own timeout around them (the heartbeat interval), which drops the call.
fn append_deadline<C: GroupConfig>(_request: &AppendEntriesRequest<C>, option: &RPCOption) -> Duration {
    option.soft_ttl().max(APPEND_DEADLINE_MIN)
}

fn to_rpc_error<C: GroupConfig>(err: SendError) -> RPCError<C> {
    RPCError::Unreachable(Unreachable::new(&err))
}

impl<C: GroupConfig> GroupClient<C> {
    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        kind: MessageKind,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<C>> {
        let payload = encode(request);
        let lane = if kind == MessageKind::Append { self.appends } else { Lane::Control };
        let reply = self
            .transport
            .call(self.target, &self.address, self.group, lane, kind, payload, timeout)
            .await
            .map_err(to_rpc_error::<C>)?;
        decode(&reply).map_err(|err| RPCError::Unreachable(Unreachable::new(&err)))
    }
}

impl<C: GroupConfig> RaftNetworkV2<C> for GroupClient<C> {
    type SnapshotData = GroupSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        self.call(MessageKind::Append, &rpc, append_deadline(&rpc, &option)).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>>, RPCError<C>>>
    where
        S: Stream<Item = AppendEntriesRequest<C>> + OptionalSend + Unpin + 'static,
    {
        let this: &'s GroupClient<C> = self;
        Box::pin(async move {
            // Each request becomes a call started as soon as it is read; `buffered` keeps up
            // to APPEND_PIPELINE_DEPTH calls running and yields their results in order. The
            // transport keeps one group's messages in order to the peer, so pipelined
            // appends arrive in the order the leader sent them.
            let calls = input
                .map(move |request| {
                    let prev = request.prev_log_id.clone();
                    let last = request.entries.last().map(|entry| entry.log_id()).or_else(|| prev.clone());
                    let option = option.clone();
                    async move {
                        let response: AppendEntriesResponse<C> =
                            this.call(MessageKind::Append, &request, append_deadline(&request, &option)).await?;
                        Ok::<_, RPCError<C>>((response, prev, last))
                    }
                })
                .buffered(APPEND_PIPELINE_DEPTH);
            // Stop after the first failure, conflict or partial success: later appends in
            // flight were built on an assumption that no longer holds.
            let results = calls.scan(false, |stopped, item| {
                if *stopped {
                    return futures::future::ready(None);
                }
                let out = match item {
                    Err(err) => {
                        *stopped = true;
                        Err(err)
                    }
                    Ok((response, prev, last)) => {
                        let partial = matches!(&response, AppendEntriesResponse::PartialSuccess(id) if *id != last);
                        let result = response.into_stream_result(prev, last);
                        if result.is_err() || partial {
                            *stopped = true;
                        }
                        Ok(result)
                    }
                };
                futures::future::ready(Some(out))
            });
            let stream: BoxStream<'s, Result<StreamAppendResult<C>, RPCError<C>>> = Box::pin(results);
            Ok(stream)
        })
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(MessageKind::Vote, &rpc, option.soft_ttl()).await
    }

    async fn pre_vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.call(MessageKind::PreVote, &rpc, option.soft_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, GroupSnapshot>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        // openraft's `install_snapshot_timeout` (the option's TTL) would bound the whole
        // transfer; each chunk gets a deadline of its own instead (see the constants above).
        fn unreachable<C: GroupConfig>(err: impl std::error::Error + 'static) -> StreamingError<C> {
            StreamingError::Unreachable(Unreachable::new(&err))
        }
        let header = encode(&(vote, snapshot.meta));
        let mut data = snapshot.snapshot;
        let transfer_id = self.transport.next_transfer_id();
        let mut cancel = std::pin::pin!(cancel);
        let mut seq = 0u64;
        let mut sent_bytes = 0usize;
        loop {
            let chunk = if data.blocks() {
                let (back, chunk) = tokio::task::spawn_blocking(move || {
                    let chunk = data.next_chunk();
                    (data, chunk)
                })
                .await
                .map_err(unreachable::<C>)?;
                data = back;
                chunk
            } else {
                data.next_chunk()
            }
            .map_err(unreachable::<C>)?;
            let done = chunk.is_none();
            let body = chunk.unwrap_or_default();
            sent_bytes += body.len();
            let request = SnapshotChunkRequest {
                from_node: self.transport.node_id(),
                to_node: self.target,
                group_id: self.group.0,
                transfer_id,
                seq,
                header: if seq == 0 { header.clone().into() } else { Default::default() },
                data: body.into(),
                done,
            };
            let deadline = if done {
                let mib = u32::try_from(sent_bytes >> 20).unwrap_or(u32::MAX);
                SNAPSHOT_INSTALL_DEADLINE_MIN + SNAPSHOT_INSTALL_PER_MIB * mib
            } else {
                SNAPSHOT_CHUNK_DEADLINE
            };
            let reply = tokio::select! {
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                reply = self.transport.snapshot_chunk(self.target, &self.address, request, deadline) => reply,
            };
            let reply = reply.map_err(unreachable::<C>)?;
            if done {
                flotilla_types::coverage!("snapshot_sent");
                return decode(&reply).map_err(unreachable::<C>);
            }
            seq += 1;
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        self.call(MessageKind::TransferLeader, &req, option.soft_ttl()).await
    }
}

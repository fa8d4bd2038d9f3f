//! `Transport`: the sending side of node-to-node Raft traffic. Messages of every group bound
//! for one peer queue on one of that peer's lanes, and each lane's sender task ships
//! whatever has queued as one `Batch` RPC. A lane has one batch in flight at a time and a
//! group always uses the same lane: that keeps each group's messages in order end to end
//! (the receiver handles a batch before answering it), and everything that queues during a
//! round trip leaves together in the next one. Several lanes per peer run in parallel, so one
//! slow batch (a follower's fsync) does not hold up every other group; the metadata group has
//! a lane of its own, and heartbeats and votes — which need no ordering with appends — go on
//! a control lane that never waits behind a disk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_proto::net::{ChannelSettings, Connector, channel};
use flotilla_proto::raft::v1::{
    BatchRequest, GroupMessage, IntroduceRequest, IntroduceResponse, MessageKind, ProposeRequest, ProposeResponse,
    SnapshotChunkRequest, group_reply, raft_transport_client::RaftTransportClient,
};
use flotilla_types::{GroupId, METADATA_GROUP, NodeId};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::service::BATCH_MESSAGES_MAX;

/// Tunables of the node-to-node transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Connection settings (keepalive, connect timeout, message size).
    pub channel: ChannelSettings,
    /// Most messages in one batch RPC. Bounds the receiver's work per round. At most
    /// [`BATCH_MESSAGES_MAX`], which receivers refuse to exceed.
    pub batch_messages_max: usize,
    /// Most payload bytes in one batch RPC (one message may exceed it alone).
    pub batch_bytes_max: usize,
    /// Messages queued per peer before senders wait: backpressure on a slow peer.
    pub queue_capacity: usize,
    /// Upper bound on one batch RPC. A batch to a dead or partitioned peer fails after this
    /// instead of holding up every later message to that peer.
    pub batch_timeout: Duration,
    /// Ordered lanes per peer for partition groups, each with one batch in flight (at least
    /// 1), on top of the control lane and the metadata lane.
    pub partition_lanes_per_peer: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            channel: ChannelSettings::default(),
            batch_messages_max: BATCH_MESSAGES_MAX,
            batch_bytes_max: 16 * 1024 * 1024,
            queue_capacity: 16_384,
            batch_timeout: Duration::from_secs(3),
            partition_lanes_per_peer: 4,
        }
    }
}

/// Why a message got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    /// The peer could not be reached or did not answer in time.
    #[error("node {node} unreachable: {message}")]
    Unreachable { node: NodeId, message: String },
    /// The peer answered with an error for this message.
    #[error("node {node} refused the message: {message}")]
    Remote { node: NodeId, message: String },
}

struct Outgoing {
    message: GroupMessage,
    reply: oneshot::Sender<Result<Bytes, SendError>>,
}

/// Which lane a message takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Heartbeats and votes: unordered, never behind an append.
    Control,
    /// Appends: in order with every other ordered message of the group.
    Ordered,
}

/// Lanes that are not for ordered partition traffic: control (0) and metadata (1).
const RESERVED_LANES: usize = 2;

struct Peer {
    address: String,
    /// Lane 0 is the control lane, lane 1 carries the metadata group's appends, and
    /// partition groups spread over the rest.
    lanes: Vec<mpsc::Sender<Outgoing>>,
    client: RaftTransportClient<tonic::transport::Channel>,
}

impl Peer {
    fn lane(&self, group: GroupId, lane: Lane) -> &mpsc::Sender<Outgoing> {
        let index = match lane {
            Lane::Control => 0,
            Lane::Ordered if group == METADATA_GROUP => 1,
            Lane::Ordered => RESERVED_LANES + (group.0 % (self.lanes.len() - RESERVED_LANES) as u64) as usize,
        };
        &self.lanes[index]
    }
}

/// The node's sending side for Raft messages, shared by all its groups.
pub struct Transport {
    node_id: NodeId,
    config: TransportConfig,
    connector: Connector,
    peers: Mutex<BTreeMap<NodeId, Arc<Peer>>>,
    /// Snapshot transfers started, for their ids.
    transfers: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport for `node_id` that opens connections through `connector`.
    pub fn new(node_id: NodeId, config: TransportConfig, connector: Connector) -> Arc<Transport> {
        Arc::new(Transport {
            node_id,
            config,
            connector,
            peers: Mutex::new(BTreeMap::new()),
            transfers: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    fn peer(&self, target: NodeId, address: &str) -> Result<Arc<Peer>, SendError> {
        let mut peers = self.peers.lock();
        if let Some(peer) = peers.get(&target)
            && peer.address == address
            && !peer.lanes[0].is_closed()
        {
            return Ok(Arc::clone(peer));
        }
        let channel = channel(address, &self.connector, &self.config.channel).map_err(|err| {
            SendError::Unreachable { node: target, message: format!("bad address {address:?}: {err}") }
        })?;
        let client = RaftTransportClient::new(channel)
            .max_decoding_message_size(self.config.channel.message_bytes_max)
            .max_encoding_message_size(self.config.channel.message_bytes_max);
        let mut lanes = Vec::new();
        for _ in 0..RESERVED_LANES + self.config.partition_lanes_per_peer.max(1) {
            let (lane, rx) = mpsc::channel(self.config.queue_capacity);
            tokio::spawn(run_lane(self.node_id, target, client.clone(), rx, self.config.clone()));
            lanes.push(lane);
        }
        let peer = Arc::new(Peer { address: address.to_string(), lanes, client });
        peers.insert(target, Arc::clone(&peer));
        Ok(peer)
    }

    /// Sends one group message to `target` on `lane` and waits for its reply until `timeout`.
    #[allow(clippy::too_many_arguments, reason = "each is a distinct part of the address and the message")]
    pub async fn call(
        &self,
        target: NodeId,
        address: &str,
        group: GroupId,
        lane: Lane,
        kind: MessageKind,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, SendError> {
        let peer = self.peer(target, address)?;
        let (reply, rx) = oneshot::channel();
        let message = GroupMessage { group_id: group.0, kind: kind as i32, payload: payload.into() };
        let deadline = Instant::now() + timeout;
        let unreachable = |message: &str| SendError::Unreachable { node: target, message: message.to_string() };
        tokio::time::timeout_at(deadline, peer.lane(group, lane).send(Outgoing { message, reply }))
            .await
            .map_err(|_| unreachable("send queue full until the deadline"))?
            .map_err(|_| unreachable("sender stopped"))?;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(unreachable("reply dropped")),
            Err(_) => Err(unreachable(&format!("no reply within {timeout:?}"))),
        }
    }

    /// A transfer id for a snapshot sent from this node, unique among its transfers.
    pub fn next_transfer_id(&self) -> u64 {
        let counter = self.transfers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (self.node_id << 40) ^ counter
    }

    /// Sends one snapshot chunk to `target` and waits for it to be staged (or, for the last,
    /// installed) until `timeout`.
    pub async fn snapshot_chunk(
        &self,
        target: NodeId,
        address: &str,
        request: SnapshotChunkRequest,
        timeout: Duration,
    ) -> Result<Bytes, SendError> {
        let peer = self.peer(target, address)?;
        let mut client = peer.client.clone();
        match tokio::time::timeout(timeout, client.snapshot_chunk(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner().payload),
            Ok(Err(status)) => Err(SendError::Remote { node: target, message: status.message().to_string() }),
            Err(_) => Err(SendError::Unreachable {
                node: target,
                message: format!("snapshot chunk not acknowledged within {timeout:?}"),
            }),
        }
    }

    /// Forwards a command to `group`'s leader at `target`.
    pub async fn propose(
        &self,
        target: NodeId,
        address: &str,
        group: GroupId,
        command: Vec<u8>,
        timeout: Duration,
    ) -> Result<ProposeResponse, SendError> {
        let peer = self.peer(target, address)?;
        let mut client = peer.client.clone();
        let request = ProposeRequest { group_id: group.0, command: command.into() };
        match tokio::time::timeout(timeout, client.propose(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(SendError::Unreachable { node: target, message: status.message().to_string() }),
            Err(_) => Err(SendError::Unreachable { node: target, message: format!("no reply within {timeout:?}") }),
        }
    }

    /// Asks `target` whether its catalogue lists this node (see `Introduce` in raft.proto).
    pub async fn introduce(
        &self,
        target: NodeId,
        address: &str,
        timeout: Duration,
    ) -> Result<IntroduceResponse, SendError> {
        let peer = self.peer(target, address)?;
        let mut client = peer.client.clone();
        let request = IntroduceRequest { node_id: self.node_id };
        match tokio::time::timeout(timeout, client.introduce(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => {
                let message = format!("{:?}: {}", status.code(), status.message());
                Err(match status.code() {
                    tonic::Code::Unavailable => SendError::Unreachable { node: target, message },
                    _ => SendError::Remote { node: target, message },
                })
            }
            Err(_) => Err(SendError::Unreachable { node: target, message: format!("no reply within {timeout:?}") }),
        }
    }
}

/// One lane's sender loop. Ends when the transport drops the peer (all senders gone).
async fn run_lane(
    from: NodeId,
    to: NodeId,
    mut client: RaftTransportClient<tonic::transport::Channel>,
    mut rx: mpsc::Receiver<Outgoing>,
    config: TransportConfig,
) {
    // A message that did not fit the last batch leads the next one.
    let mut carried: Option<Outgoing> = None;
    let mut pending: Vec<Outgoing> = Vec::new();
    // Room for the batch's own framing: the batch must stay below the message limit.
    let batch_bytes_max = config.batch_bytes_max.min(config.channel.message_bytes_max.saturating_sub(64 * 1024));
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match rx.recv().await {
                Some(first) => first,
                None => break,
            },
        };
        let first_bytes = first.message.payload.len();
        if first_bytes > batch_bytes_max {
            // Too large for any batch: refuse it alone rather than fail every message it
            // would share a batch with (review-correctness finding 1).
            let _ = first.reply.send(Err(SendError::Remote {
                node: to,
                message: format!(
                    "a {}-byte message for group {} exceeds the {batch_bytes_max}-byte batch limit",
                    first_bytes,
                    GroupId(first.message.group_id)
                ),
            }));
            continue;
        }
        pending.push(first);
        let mut bytes: usize = first_bytes;
        while pending.len() < config.batch_messages_max && bytes < batch_bytes_max {
            match rx.try_recv() {
                Ok(next) if bytes + next.message.payload.len() > batch_bytes_max => {
                    carried = Some(next);
                    break;
                }
                Ok(next) => {
                    bytes += next.message.payload.len();
                    pending.push(next);
                }
                Err(_) => break,
            }
        }
        // A caller that already gave up (deadline passed) needs no answer; skip its message.
        pending.retain(|outgoing| !outgoing.reply.is_closed());
        if pending.is_empty() {
            continue;
        }
        let (messages, replies): (Vec<GroupMessage>, Vec<_>) =
            pending.drain(..).map(|outgoing| (outgoing.message, outgoing.reply)).unzip();
        let request = BatchRequest { from_node: from, to_node: to, messages };
        let outcome = tokio::time::timeout(config.batch_timeout, client.batch(request)).await;
        match outcome {
            Ok(Ok(response)) => {
                let results = response.into_inner().replies;
                let mut results = results.into_iter();
                for reply in replies {
                    let result = match results.next().and_then(|r| r.result) {
                        Some(group_reply::Result::Payload(payload)) => Ok(payload),
                        Some(group_reply::Result::Error(message)) => Err(SendError::Remote { node: to, message }),
                        None => Err(SendError::Remote { node: to, message: "reply missing from batch".into() }),
                    };
                    let _ = reply.send(result);
                }
            }
            Ok(Err(status)) => {
                let error =
                    SendError::Unreachable { node: to, message: format!("{:?}: {}", status.code(), status.message()) };
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(_) => {
                let error = SendError::Unreachable {
                    node: to,
                    message: format!("batch timed out after {:?}", config.batch_timeout),
                };
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

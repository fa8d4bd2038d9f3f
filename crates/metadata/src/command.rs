//! Commands the metadata group applies, and their outcomes.

use std::collections::BTreeMap;

use flotilla_types::{ConfigError, GroupId, NodeId, TopicConfig};
use serde::{Deserialize, Serialize};

use crate::{GroupError, MemberView, RequestId, TopicPartition, TopicRecord};

/// A change to the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// A node announces (or re-announces) its addresses.
    RegisterNode { id: NodeId, peer_address: String, client_address: String },
    /// Creates a topic; placement is computed during apply from the catalogue itself. The
    /// config was validated by the proposing node.
    CreateTopic { name: String, partitions: u32, replication_factor: u32, created_at_ms: i64, config: TopicConfig },
    /// Deletes a topic (its partitions' data goes with it).
    DeleteTopic { name: String },
    /// Partition leaders as nodes observed them; a hint is kept only if its term is newer.
    ReportLeaders { reports: Vec<(GroupId, NodeId, u64)> },
    /// Allocates a fresh idempotent-producer id (InitProducer).
    AllocateProducerId,
    /// Moves one replica of a partition from node `from` to node `to`. The catalogue changes
    /// at once; the partition's Raft leader then changes the group's membership to match
    /// (`server/src/membership.rs`).
    MoveReplica { topic: String, partition: u32, from: NodeId, to: NodeId },
    /// A consumer joins `group` (created on first join), subscribed to `topics`.
    JoinGroup {
        group: String,
        client_id: String,
        topics: Vec<String>,
        session_timeout_ms: u32,
        rebalance_timeout_ms: u32,
    },
    /// A member leaves its group, or the coordinator evicts it.
    LeaveGroup { group: String, member_id: u64, reason: LeaveReason },
    /// A member reports the partitions it still consumes; revoked ones it dropped are
    /// handed to their new owners.
    ReleasePartitions { group: String, member_id: u64, still_owned: Vec<TopicPartition> },
    /// A member commits positions (the next offset to process) of partitions it owns.
    /// `committed_at_ms` is the proposing node's clock (apply reads no clock).
    CommitOffsets {
        group: String,
        member_id: u64,
        member_epoch: u64,
        offsets: Vec<(TopicPartition, u64)>,
        committed_at_ms: i64,
    },
    /// Sets an inactive group's positions, in any direction (`flo group reset`).
    ResetOffsets { group: String, offsets: Vec<(TopicPartition, u64)>, at_ms: i64 },
    /// Changes a topic's configuration: `set` keys to values, `unset` keys back to their
    /// defaults. Judged at apply against the topic's config then (so concurrent changes of
    /// different keys both hold), with the proposing node's batch limit, which it carries.
    AlterTopicConfig { name: String, set: BTreeMap<String, String>, unset: Vec<String>, batch_bytes_max: u64 },
    /// `command`, applied at most once per `request`: a later entry with the same request id
    /// (a retry after an ambiguous failure) is answered with the first one's reply while the
    /// state machine remembers it (`RequestLog`). Never nested.
    Deduplicated { request: RequestId, command: Box<MetaCommand> },
    /// Deletes a group that has no members, with its committed offsets (the coordinator
    /// proposes it once a group stayed empty for the offsets retention period). A group that
    /// has members again is kept: `GROUP_ACTIVE`.
    DeleteGroup { group: String },
}

impl MetaCommand {
    /// Whether a retry of this command after an ambiguous failure would change the outcome,
    /// so it is proposed [`MetaCommand::Deduplicated`]: creating, deleting, moving, configuring,
    /// joining, leaving and resetting. Registrations, leader reports, allocations (a lost id
    /// is harmless), releases (a second one finds nothing left to release and answers the
    /// member's state) and offset commits (fenced, and the same commit twice is the same
    /// commit) are safe to apply twice and too frequent to remember: a release goes with
    /// heartbeats during a rebalance, and would push joins out of the request log.
    pub fn needs_deduplication(&self) -> bool {
        match self {
            MetaCommand::CreateTopic { .. }
            | MetaCommand::DeleteTopic { .. }
            | MetaCommand::MoveReplica { .. }
            | MetaCommand::AlterTopicConfig { .. }
            | MetaCommand::JoinGroup { .. }
            | MetaCommand::LeaveGroup { .. }
            | MetaCommand::ResetOffsets { .. }
            | MetaCommand::DeleteGroup { .. } => true,
            MetaCommand::RegisterNode { .. }
            | MetaCommand::ReportLeaders { .. }
            | MetaCommand::AllocateProducerId
            | MetaCommand::ReleasePartitions { .. }
            | MetaCommand::CommitOffsets { .. }
            | MetaCommand::Deduplicated { .. } => false,
        }
    }
}

/// Why a member left its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaveReason {
    /// The member said goodbye.
    Left,
    /// The coordinator heard no heartbeat within the member's session timeout.
    SessionExpired,
    /// The member held a revoked partition longer than its rebalance timeout.
    RevocationTimeout,
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("topic {name:?} already exists")]
    TopicExists { name: String },
    #[error("topic {name:?} does not exist")]
    UnknownTopic { name: String },
    #[error("replication factor {requested} is larger than the {nodes} registered nodes")]
    ReplicationFactorTooLarge { requested: u32, nodes: u32 },
    #[error("replication factor must be at least 1, got {requested}")]
    InvalidReplicationFactor { requested: u32 },
    #[error("partition count must be between 1 and {max}, got {requested}")]
    InvalidPartitionCount { requested: u32, max: u32 },
    #[error("topic {topic:?} has {partitions} partitions; there is no partition {partition}")]
    UnknownPartition { topic: String, partition: u32, partitions: u32 },
    #[error("node {node} is not a replica of {topic:?} partition {partition} (its replicas are {replicas:?})")]
    NotAReplica { topic: String, partition: u32, node: NodeId, replicas: Vec<NodeId> },
    #[error("node {node} is not a registered node (registered: {registered:?})")]
    UnknownNode { node: NodeId, registered: Vec<NodeId> },
    #[error("node {node} is already a replica of {topic:?} partition {partition} (its replicas are {replicas:?})")]
    AlreadyAReplica { topic: String, partition: u32, node: NodeId, replicas: Vec<NodeId> },
    #[error(
        "node {node} was a replica of {topic:?} partition {partition} before and cannot be one again: \
         a node id holds one log of a Raft group for the group's lifetime, and its copy was deleted"
    )]
    FormerReplica { topic: String, partition: u32, node: NodeId },
    #[error("topic {topic:?}: {source}")]
    InvalidConfig { topic: String, source: ConfigError },
    #[error("cannot register node {id} (peer address {peer_address:?}, client address {client_address:?}): {rule}")]
    InvalidRegistration { id: NodeId, peer_address: String, client_address: String, rule: String },
}

/// The outcome of a command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Applied; nothing to report (also the response to blank and membership entries).
    #[default]
    Done,
    /// The topic as created.
    TopicCreated(TopicRecord),
    /// The topic with its configuration changed.
    TopicAltered(TopicRecord),
    /// Nothing changed, for this reason.
    Rejected(MetaError),
}

/// What the metadata group answers any proposal with: the outcome of a catalogue command, or
/// what an allocation handed out. Allocations are kept out of [`MetaResponse`] so callers that
/// only change the catalogue match on catalogue outcomes alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaReply {
    /// The outcome of a catalogue command (also blank and membership entries: `Done`).
    Catalogue(MetaResponse),
    /// A producer id no one else has been or will be given; its epoch starts at 0.
    ProducerIdAllocated { producer_id: u64 },
    /// The outcome of a consumer-group command.
    Group(Result<GroupReply, GroupError>),
}

/// What a successful consumer-group command answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupReply {
    /// The member's state after the command (join, release).
    Member(MemberView),
    /// Applied (leave, commit, reset).
    Done,
}

impl Default for MetaReply {
    fn default() -> Self {
        MetaReply::Catalogue(MetaResponse::Done)
    }
}

impl From<MetaResponse> for MetaReply {
    fn from(response: MetaResponse) -> Self {
        MetaReply::Catalogue(response)
    }
}

impl std::fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaCommand::RegisterNode { id, .. } => write!(f, "register node {id}"),
            MetaCommand::CreateTopic { name, partitions, replication_factor, .. } => {
                write!(f, "create topic {name:?} partitions={partitions} rf={replication_factor}")
            }
            MetaCommand::DeleteTopic { name } => write!(f, "delete topic {name:?}"),
            MetaCommand::ReportLeaders { reports } => write!(f, "report {} leaders", reports.len()),
            MetaCommand::AllocateProducerId => write!(f, "allocate producer id"),
            MetaCommand::MoveReplica { topic, partition, from, to } => {
                write!(f, "move replica of {topic:?} partition {partition} from node {from} to node {to}")
            }
            MetaCommand::JoinGroup { group, topics, .. } => write!(f, "join group {group:?} for topics {topics:?}"),
            MetaCommand::LeaveGroup { group, member_id, reason } => {
                write!(f, "remove member {member_id} from group {group:?} ({reason:?})")
            }
            MetaCommand::ReleasePartitions { group, member_id, .. } => {
                write!(f, "member {member_id} of group {group:?} releases revoked partitions")
            }
            MetaCommand::CommitOffsets { group, member_id, offsets, .. } => {
                write!(f, "member {member_id} of group {group:?} commits {} offsets", offsets.len())
            }
            MetaCommand::ResetOffsets { group, offsets, .. } => {
                write!(f, "reset {} offsets of group {group:?}", offsets.len())
            }
            MetaCommand::AlterTopicConfig { name, set, unset, .. } => {
                write!(f, "alter topic {name:?}: set {set:?}, unset {unset:?}")
            }
            MetaCommand::Deduplicated { request, command } => write!(f, "{command} (request {request})"),
            MetaCommand::DeleteGroup { group } => write!(f, "delete empty group {group:?}"),
        }
    }
}

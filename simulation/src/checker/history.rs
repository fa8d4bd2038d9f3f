//! The history of a run: everything clients were told and everything they read, as plain
//! data. The simulation and the real-process chaos test record into the same type, so one
//! checker judges both.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use flotilla_types::{NodeId, PartitionId};
use serde::{Deserialize, Serialize};

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionKey {
    pub topic: String,
    pub partition: PartitionId,
}

impl PartitionKey {
    pub fn new(topic: impl Into<String>, partition: PartitionId) -> Self {
        PartitionKey { topic: topic.into(), partition }
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// One acknowledged record: the server said `value` is at `offset` of `partition`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub partition: PartitionKey,
    pub offset: u64,
    /// The record's value, unique across the run.
    pub value: String,
    /// The producer session that sent it; its sends are sequential.
    pub producer: u32,
    /// The record's size as retention counts it (key, value and headers), in bytes.
    #[serde(default)]
    pub bytes: u64,
    /// Run time, in milliseconds, of the first attempt to send the record: it cannot have been
    /// appended earlier, so retention by age cannot have removed it before this plus
    /// `retention.ms`.
    #[serde(default)]
    pub first_sent_ms: u64,
    /// Run time, in milliseconds, when the acknowledgement was received.
    #[serde(default)]
    pub acked_ms: u64,
}

/// One successful fetch by a tailing consumer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetch {
    pub consumer: u32,
    pub partition: PartitionKey,
    /// The offset asked for.
    pub from: u64,
    /// Run time, in milliseconds, when the fetch was sent.
    #[serde(default)]
    pub sent_ms: u64,
    /// The high watermark the answer carried.
    pub high_watermark: u64,
    /// What came back, in order.
    pub records: Vec<(u64, String)>,
}

/// One replica's digest of a partition, taken after the final drain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaDigest {
    pub node: NodeId,
    /// Records `[start_offset, end_offset)` were hashed.
    #[serde(default)]
    pub start_offset: u64,
    pub end_offset: u64,
    /// The replica's own high watermark when asked.
    pub high_watermark: u64,
    pub digest: u64,
}

/// A member of a consumer group started consuming a partition (an ownership stint, as far as
/// the member can tell): it was handed the partition and read its start position, or it
/// resumed somewhere other than where it stood, which only a fresh hand-over explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStint {
    /// Unique in the run; [`GroupPoll::stint`] refers to it.
    pub id: u64,
    pub group: String,
    /// The workload's name for the member (one per `Consumer`, never reused).
    pub member: String,
    pub partition: PartitionKey,
    /// Where the member started: the group's committed offset, or 0 if nothing was committed.
    pub start: u64,
    /// The member read its start position after this point of the history ([`History::tick`]):
    /// every commit acknowledged before it must be reflected in `start`.
    pub read_after: u64,
}

/// Records one member of a consumer group received from one `poll`: a contiguous run of one
/// partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPoll {
    pub group: String,
    pub member: String,
    /// The stint the records belong to.
    pub stint: u64,
    pub partition: PartitionKey,
    /// (offset, value) in the order received.
    pub records: Vec<(u64, String)>,
    /// When the poll returned ([`History::tick`]).
    pub seq: u64,
}

/// How a commit of group offsets ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitOutcome {
    /// The server acknowledged it: every offset in it is committed.
    Acknowledged,
    /// An error, with its code if the server gave one. Not necessarily definite: a retried
    /// call may have been applied by an earlier attempt.
    Failed { code: Option<String>, error: String },
}

/// One `Consumer::commit` of a member: the positions it committed (every partition the member
/// held; the SDK leaves out those already committed at that position).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCommit {
    pub group: String,
    pub member: String,
    pub offsets: BTreeMap<PartitionKey, u64>,
    /// [`History::tick`] before the call and after its answer.
    pub sent: u64,
    pub answered: u64,
    pub outcome: CommitOutcome,
}

/// One successful read of a group's committed offsets (`Client::group_offsets`, answered by the
/// coordinator after a linearizable read).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupOffsetRead {
    pub group: String,
    /// [`History::tick`] before the call and after its answer.
    pub started: u64,
    pub ended: u64,
    /// Run time of the start and the end, in milliseconds, for messages.
    pub started_ms: u64,
    pub ended_ms: u64,
    /// Committed offset per partition; a partition missing has nothing committed.
    pub offsets: BTreeMap<PartitionKey, u64>,
}

/// A retention the workload configured on a topic (at creation, or by an alter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionSetting {
    /// `retention.ms`; `None` for no limit.
    pub max_age_ms: Option<u64>,
    /// `retention.bytes`; `None` for no limit.
    pub max_bytes: Option<u64>,
    /// `max.message.bytes`: the largest batch, which bounds what `retention.bytes` keeps above
    /// a trimmed batch.
    pub max_batch_bytes: u64,
}

/// Where the final drain of a partition began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStart {
    /// The partition's log start: records below it were gone.
    pub offset: u64,
    /// Run time, in milliseconds, once the drain knew the log start: whatever retention removed
    /// below it, it removed by then.
    pub at_ms: u64,
}

/// One `DeleteRecords` the workload sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrimAttempt {
    pub partition: PartitionKey,
    pub before_offset: u64,
    /// The log start the server answered with; `None` if the outcome is unknown or refused.
    pub log_start: Option<u64>,
}

/// Everything the clients observed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    /// Every partition of every topic the workload created.
    pub partitions: BTreeSet<PartitionKey>,
    /// Topics whose create was acknowledged.
    pub created_topics: BTreeSet<String>,
    /// Topics whose delete was acknowledged.
    pub deleted_topics: BTreeSet<String>,
    /// Every value any producer tried to produce.
    pub attempted: BTreeSet<String>,
    /// Acknowledgements, in the order the clients received them.
    pub acks: Vec<Ack>,
    /// Values of attempts whose outcome is unknown (timeout, lost connection, a client that
    /// gave up mid-request): they may be in the log, more than once without idempotence.
    pub ambiguous: BTreeSet<String>,
    /// Values of attempts the server definitely refused (an error code that promises nothing
    /// was appended) and that were never acknowledged or retried ambiguously.
    pub failed: BTreeSet<String>,
    /// Values sent by idempotent producers: they must never appear twice.
    pub idempotent: BTreeSet<String>,
    /// Tailing consumers' fetches, in the order each consumer made them.
    pub fetches: Vec<Fetch>,
    /// The final drain of each partition from offset 0: (offset, value) in the order read.
    pub reads: BTreeMap<PartitionKey, Vec<(u64, String)>>,
    /// Each replica's digest after the final drain.
    pub digests: BTreeMap<PartitionKey, Vec<ReplicaDigest>>,
    /// Topic listings taken from each node after the final drain.
    pub final_listings: BTreeMap<NodeId, BTreeSet<String>>,
    /// Problems the workload itself found: a drain that never reached the end, produce calls
    /// that kept failing after every fault was healed, replicas that never caught up.
    pub liveness_failures: Vec<String>,
    /// Nodes the nemesis took out for good (a wiped disk: the node must refuse to rejoin under
    /// its id). The final drain asks them for no digest or listing.
    #[serde(default)]
    pub retired_nodes: BTreeSet<NodeId>,
    /// Consumer groups the workload ran, with the topics each subscribed to.
    #[serde(default)]
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// Ownership stints of group members, in the order they were seen.
    #[serde(default)]
    pub group_stints: Vec<GroupStint>,
    /// Records delivered to group members, one entry per `poll` that returned some.
    #[serde(default)]
    pub group_polls: Vec<GroupPoll>,
    /// Commits of group offsets, in the order they were answered.
    #[serde(default)]
    pub group_commits: Vec<GroupCommit>,
    /// Reads of committed group offsets, in the order they were answered.
    #[serde(default)]
    pub group_reads: Vec<GroupOffsetRead>,
    /// The last value [`History::tick`] handed out.
    #[serde(default)]
    pub ticks: u64,
    /// Retention the workload configured per topic, every setting ever asked for (including
    /// changes whose outcome is unknown): what retention may have removed.
    #[serde(default)]
    pub retention: BTreeMap<String, Vec<RetentionSetting>>,
    /// Every `DeleteRecords` the workload sent, whatever its outcome.
    #[serde(default)]
    pub trims: Vec<TrimAttempt>,
    /// Where the final drain of each partition began: its log start then.
    #[serde(default)]
    pub drain_starts: BTreeMap<PartitionKey, DrainStart>,
    /// The largest record the workload sends (key, value and headers), in bytes.
    #[serde(default)]
    pub record_bytes_max: u64,
}

impl History {
    /// The next point of the history's real-time order. Taken under the history's lock, so of
    /// two ticks the smaller was taken first; an event that ended at tick `a` happened before
    /// one that started at tick `b > a`.
    pub fn tick(&mut self) -> u64 {
        self.ticks += 1;
        self.ticks
    }

    /// Records a value that is about to be sent.
    pub fn attempt(&mut self, value: &str, idempotent: bool) {
        self.attempted.insert(value.to_string());
        if idempotent {
            self.idempotent.insert(value.to_string());
        }
    }

    /// Records that the outcome of sending `value` is unknown.
    pub fn outcome_unknown(&mut self, value: &str) {
        self.failed.remove(value);
        self.ambiguous.insert(value.to_string());
    }

    /// Records that the server definitely refused `value` this time.
    pub fn refused(&mut self, value: &str) {
        if !self.ambiguous.contains(value) {
            self.failed.insert(value.to_string());
        }
    }

    /// Records an acknowledgement.
    pub fn acknowledged(&mut self, ack: Ack) {
        self.failed.remove(&ack.value);
        self.acks.push(ack);
    }
}

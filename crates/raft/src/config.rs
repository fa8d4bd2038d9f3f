//! `RaftConfig`: Raft timing and log policy for the metadata group and partition groups.

use std::sync::Arc;

use flotilla_types::GroupId;

use crate::RaftGlueError;

/// Raft tunables of a node.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Leader heartbeat period of the metadata group, in milliseconds.
    pub metadata_heartbeat_ms: u64,
    /// Election timeout range of the metadata group, in milliseconds.
    pub metadata_election_timeout_min_ms: u64,
    pub metadata_election_timeout_max_ms: u64,
    /// Leader heartbeat period of partition groups. Each leader heartbeats each follower this
    /// often, so it sets the idle cost of a partition.
    pub partition_heartbeat_ms: u64,
    /// Election timeout range of partition groups. With the leader lease, a failed leader is
    /// replaced roughly this long after it stops heartbeating.
    pub partition_election_timeout_min_ms: u64,
    pub partition_election_timeout_max_ms: u64,
    /// Metadata log entries between snapshots.
    pub metadata_snapshot_every_entries: u64,
    /// Metadata log entries kept behind the last snapshot; a follower further behind than
    /// this catches up by installing the snapshot.
    pub metadata_logs_kept_after_snapshot: u64,
    /// Most entries per append message.
    pub append_entries_max: u64,
    /// About the most bytes of entries per append message (at least one entry is sent). Keeps
    /// every append far below the transport's 64 MiB message limit, so a follower any distance
    /// behind catches up in steps of this size; also the size of the pieces apply reads.
    pub append_bytes_max: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            metadata_heartbeat_ms: 150,
            metadata_election_timeout_min_ms: 750,
            metadata_election_timeout_max_ms: 1500,
            partition_heartbeat_ms: 150,
            partition_election_timeout_min_ms: 750,
            partition_election_timeout_max_ms: 1500,
            metadata_snapshot_every_entries: 10_000,
            metadata_logs_kept_after_snapshot: 1000,
            append_entries_max: 1024,
            append_bytes_max: 1024 * 1024,
        }
    }
}

impl RaftConfig {
    /// openraft configuration of the metadata group.
    pub fn metadata(&self) -> Result<Arc<openraft::Config>, RaftGlueError> {
        let config = openraft::Config {
            cluster_name: "flotilla-metadata".to_string(),
            heartbeat_interval: self.metadata_heartbeat_ms,
            election_timeout_min: self.metadata_election_timeout_min_ms,
            election_timeout_max: self.metadata_election_timeout_max_ms,
            enable_pre_vote: Some(true),
            enable_leader_restore: Some(false),
            max_payload_entries: self.append_entries_max,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.metadata_snapshot_every_entries),
            max_in_snapshot_log_to_keep: self.metadata_logs_kept_after_snapshot,
            ..Default::default()
        };
        validate(config, GroupId(0))
    }

    /// openraft configuration of a partition group.
    pub fn partition(&self, group: GroupId) -> Result<Arc<openraft::Config>, RaftGlueError> {
        let config = openraft::Config {
            cluster_name: "flotilla-partition".to_string(),
            heartbeat_interval: self.partition_heartbeat_ms,
            election_timeout_min: self.partition_election_timeout_min_ms,
            election_timeout_max: self.partition_election_timeout_max_ms,
            enable_pre_vote: Some(true),
            enable_leader_restore: Some(false),
            max_payload_entries: self.append_entries_max,
            // The partition log is the record store: openraft never compacts it on its own
            // schedule. After retention trims records, the node asks for a snapshot (which costs
            // nothing: a partition's snapshot is its live state, read when a transfer starts)
            // and purges the log below the first retained record (`server/src/partition_driver.rs`).
            snapshot_policy: openraft::SnapshotPolicy::Never,
            // No purge of its own after a snapshot: only up to what retention removed.
            max_in_snapshot_log_to_keep: u64::MAX,
            ..Default::default()
        };
        validate(config, group)
    }
}

// Why `enable_leader_restore` is off (openraft defaults it on): with it, a leader that
// restarts before anyone else campaigns resumes leading in the same term. Our state machines
// do not fsync at apply and `committed` is not synced, which is exactly when openraft's docs
// call it unsafe; and a leader that lost un-fsynced entries its followers already hold would
// then write different entries under the same (term, index). A restarted leader must win a
// new election in a new term, as in standard Raft.

fn validate(config: openraft::Config, group: GroupId) -> Result<Arc<openraft::Config>, RaftGlueError> {
    config.validate().map(Arc::new).map_err(|err| RaftGlueError::Config { group, message: err.to_string() })
}

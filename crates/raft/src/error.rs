//! Errors of the Raft glue.

use flotilla_types::GroupId;

/// Failures setting up or driving groups.
#[derive(Debug, thiserror::Error)]
pub enum RaftGlueError {
    /// openraft refused the configuration.
    #[error("invalid Raft configuration for {group}: {message}")]
    Config { group: GroupId, message: String },
    /// openraft failed to start the group (storage unreadable, etc).
    #[error("starting Raft group {group} failed: {message}")]
    Start { group: GroupId, message: String },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] flotilla_storage::StorageError),
}

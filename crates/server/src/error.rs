//! Errors that stop a node from starting or running.

use flotilla_types::NodeId;

/// A node-level failure.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The configuration is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory belongs to another node.
    #[error(
        "data directory belongs to node {found}, but this node was started as node {configured}; refusing to start (use the right --node-id or an empty --data-dir)"
    )]
    NodeIdMismatch { configured: NodeId, found: NodeId },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] flotilla_storage::StorageError),
    /// Raft setup failed.
    #[error(transparent)]
    Raft(#[from] flotilla_raft::RaftGlueError),
    /// A server failed.
    #[error("{what}: {message}")]
    Serve { what: &'static str, message: String },
}

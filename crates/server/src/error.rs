//! Errors that stop a node from starting or running.

use std::path::PathBuf;

use flotilla_types::{ErrorCode, NodeId};

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
    /// The data directory is empty, but a peer's catalogue lists this node: it has run
    /// before, so its disk was wiped or replaced. An empty voter could grant two votes in one
    /// term and elect a stale leader, so the node refuses to start.
    #[error(
        "node {node_id} is registered in the cluster (node {answered_by} lists it), but its data directory {} is empty: its disk was wiped or replaced; refusing to start, because it must not rejoin under the same id with an empty disk (it could vote twice in one term and lose acknowledged data); start it with a new --node-id, or restore its data",
        data_dir.display()
    )]
    WipedDisk { node_id: NodeId, data_dir: PathBuf, answered_by: NodeId },
    /// The data directory was written in a storage format this build cannot read.
    #[error(
        "data directory {} was written {}; this build reads storage format version {}: refusing to start. {}",
        data_dir.display(),
        match found {
            Some(version) => format!("in storage format version {version}"),
            None => "by a build from before stored formats were versioned".to_string(),
        },
        crate::node::STORAGE_FORMAT_VERSION,
        match found {
            Some(version) if *version > crate::node::STORAGE_FORMAT_VERSION =>
                "It comes from a newer build of Flotilla: run that build (or newer) on it.",
            _ => "Its data cannot be upgraded in place: start the cluster on empty data directories (for the local \
                  cluster, `make clean-data`), or run the build that wrote it.",
        }
    )]
    StorageFormat { data_dir: PathBuf, found: Option<u8> },
    /// Storage failed while starting.
    #[error(transparent)]
    Storage(#[from] flotilla_storage::StorageError),
    /// Storage failed while the node ran: it stopped (fail-stop).
    #[error("storage failed, node stopped: {0}")]
    StorageFailed(flotilla_storage::StorageError),
    /// Raft setup failed.
    #[error(transparent)]
    Raft(#[from] flotilla_raft::RaftGlueError),
    /// A server failed.
    #[error("{what}: {message}")]
    Serve { what: &'static str, message: String },
}

impl NodeError {
    /// The stable error code of a refusal to start that an operator must act on.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            NodeError::NodeIdMismatch { .. } => Some(ErrorCode::NodeIdMismatch),
            NodeError::WipedDisk { .. } => Some(ErrorCode::WipedDisk),
            NodeError::StorageFormat { .. } => Some(ErrorCode::UnsupportedStorageFormat),
            _ => None,
        }
    }

    /// The process exit status for this error: [`crate::EXIT_STORAGE_FAILED`] for a storage
    /// fault (at start or while running), 1 for anything else.
    pub fn exit_status(&self) -> u8 {
        match self {
            NodeError::Storage(_) | NodeError::StorageFailed(_) => crate::fail_stop::EXIT_STORAGE_FAILED,
            _ => 1,
        }
    }
}

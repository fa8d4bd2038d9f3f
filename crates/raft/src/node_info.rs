//! `NodeInfo`: what a Raft membership records about each node.

use serde::{Deserialize, Serialize};

/// Addresses of a node, carried in Raft membership so every member can reach every other.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node-to-node (Raft) address, `host:port`.
    pub peer_address: String,
    /// Client gRPC address, `host:port`.
    pub client_address: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer={} client={}", self.peer_address, self.client_address)
    }
}

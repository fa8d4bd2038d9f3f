//! `NodeConfig`: a node's validated configuration, as the composition root receives it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flotilla_raft::RaftConfig;
use flotilla_types::{Limits, NodeId};

use crate::NodeError;

/// Everything a node needs to run. Identity fields have no default.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id; never reused by another node.
    pub node_id: NodeId,
    /// Where the node keeps its data (the binary opens RocksDB there).
    pub data_dir: PathBuf,
    /// Address clients use to reach this node (`host:port`).
    pub client_address: String,
    /// Address peers use to reach this node (`host:port`).
    pub peer_address: String,
    /// Peer addresses of the initial metadata voters. A node listed here bootstraps the
    /// metadata group with the others on first start.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// Raft timing.
    pub raft: RaftConfig,
    /// Client request limits.
    pub limits: Limits,
}

impl NodeConfig {
    /// Checks the configuration once, at startup.
    pub fn validate(self) -> Result<NodeConfig, NodeError> {
        if self.node_id == 0 {
            return Err(NodeError::Config("node id must be at least 1 (0 is reserved)".into()));
        }
        for (field, address) in [("listen", &self.client_address), ("peer-listen", &self.peer_address)] {
            if address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(NodeError::Config(format!("--{field} {address:?} is not host:port")));
            }
        }
        if let Some(listed) = self.initial_cluster.get(&self.node_id) {
            if listed != &self.peer_address {
                return Err(NodeError::Config(format!(
                    "--initial-cluster lists node {} at {listed:?} but --peer-listen is {:?}",
                    self.node_id, self.peer_address
                )));
            }
        }
        if self.raft.partition_election_timeout_min_ms <= self.raft.partition_heartbeat_ms {
            return Err(NodeError::Config(format!(
                "raft.partition_election_timeout_min_ms ({}) must exceed raft.partition_heartbeat_ms ({})",
                self.raft.partition_election_timeout_min_ms, self.raft.partition_heartbeat_ms
            )));
        }
        Ok(self)
    }
}

/// Parses `1=host:port,2=host:port,...`.
pub fn parse_initial_cluster(spec: &str) -> Result<BTreeMap<NodeId, String>, NodeError> {
    let mut members = BTreeMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, address) = part
            .split_once('=')
            .ok_or_else(|| NodeError::Config(format!("--initial-cluster entry {part:?} is not ID=HOST:PORT")))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| NodeError::Config(format!("--initial-cluster entry {part:?}: {id:?} is not a node id")))?;
        if members.insert(id, address.trim().to_string()).is_some() {
            return Err(NodeError::Config(format!("--initial-cluster lists node {id} twice")));
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_initial_cluster_and_names_bad_entries() {
        let members = parse_initial_cluster("1=127.0.0.1:7201, 2=127.0.0.1:7202").expect("valid");
        assert_eq!(members.len(), 2);
        assert_eq!(members[&2], "127.0.0.1:7202");
        let err = parse_initial_cluster("1=a:1,x=b:2").expect_err("bad id").to_string();
        assert!(err.contains("\"x\""), "{err}");
        assert!(parse_initial_cluster("1=a:1,1=b:2").is_err());
    }
}

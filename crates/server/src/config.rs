//! `NodeConfig`: a node's validated configuration, as the composition root receives it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flotilla_raft::RaftConfig;
use flotilla_types::{Limits, NodeId};

use serde::{Deserialize, Serialize};

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
    /// Consumer-group settings.
    pub groups: GroupsConfig,
}

/// The `[groups]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// How long a consumer group without members keeps its committed offsets before the
    /// coordinator deletes it (Kafka's `offsets.retention.minutes`, 7 days). Counted from when
    /// the group became empty, as the metadata leader saw it: a leader change restarts the
    /// count, which can delay a deletion, never hasten one.
    pub offsets_retention_ms: u64,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig { offsets_retention_ms: 7 * 24 * 60 * 60 * 1000 }
    }
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
        if let Some(listed) = self.initial_cluster.get(&self.node_id)
            && listed != &self.peer_address
        {
            return Err(NodeError::Config(format!(
                "--initial-cluster lists node {} at {listed:?} but --peer-listen is {:?}",
                self.node_id, self.peer_address
            )));
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

/// The TOML configuration file, section by section (deploy/config/flotilla.toml lists every
/// key). The binary reads it; flags and `FLOTILLA_*` variables override it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub node_id: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub peer_listen: Option<String>,
    pub http_listen: Option<String>,
    pub initial_cluster: Option<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
    pub raft: RaftConfig,
    pub limits: Limits,
    pub groups: GroupsConfig,
    pub rocksdb: RocksFileConfig,
}

/// The `[rocksdb]` section; absent keys keep the engine's defaults (`RocksConfig`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RocksFileConfig {
    pub write_buffer_bytes: Option<usize>,
    pub block_cache_bytes: Option<usize>,
    pub max_background_jobs: Option<u16>,
    pub enable_blob_files: Option<bool>,
    pub min_blob_bytes: Option<u64>,
    pub enable_blob_gc: Option<bool>,
    pub compress_blobs: Option<bool>,
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

    const DEPLOY_CONFIG: &str = include_str!("../../../deploy/config/flotilla.toml");

    /// The keys of a TOML table, sorted.
    fn keys(table: &toml::Table) -> Vec<String> {
        table.keys().cloned().collect()
    }

    #[test]
    fn deploy_config_lists_every_key_with_its_default() {
        // deny_unknown_fields: a key the code does not know fails here.
        let file: FileConfig = toml::from_str(DEPLOY_CONFIG).expect("deploy/config/flotilla.toml parses");
        let documented: toml::Table = toml::from_str(DEPLOY_CONFIG).expect("valid TOML");
        // Every section lists every key the code has, with the code's default.
        let raft_defaults = toml::Table::try_from(RaftConfig::default()).expect("serializable");
        assert_eq!(keys(documented["raft"].as_table().expect("[raft]")), keys(&raft_defaults), "[raft] keys");
        assert_eq!(toml::Table::try_from(&file.raft).expect("serializable"), raft_defaults, "[raft] defaults");
        let limits_defaults = toml::Table::try_from(Limits::default()).expect("serializable");
        assert_eq!(keys(documented["limits"].as_table().expect("[limits]")), keys(&limits_defaults), "[limits] keys");
        assert_eq!(file.limits, Limits::default(), "[limits] defaults");
        let all_rocks = RocksFileConfig {
            write_buffer_bytes: Some(0),
            block_cache_bytes: Some(0),
            max_background_jobs: Some(0),
            enable_blob_files: Some(false),
            min_blob_bytes: Some(0),
            enable_blob_gc: Some(false),
            compress_blobs: Some(false),
        };
        let rocks_keys = keys(&toml::Table::try_from(all_rocks).expect("serializable"));
        assert_eq!(keys(documented["rocksdb"].as_table().expect("[rocksdb]")), rocks_keys, "[rocksdb] keys");
        // Top-level keys: every field of FileConfig.
        let top: Vec<String> = documented.keys().cloned().collect();
        for key in [
            "node_id",
            "data_dir",
            "listen",
            "peer_listen",
            "http_listen",
            "initial_cluster",
            "log_format",
            "log_level",
        ] {
            assert!(top.contains(&key.to_string()), "top-level key {key} is documented");
        }
    }

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

//! Questions asked of one node directly, with no routing and no retries: is it up, who does
//! it think leads. The SDK routes and retries, which is right for the workload but would hide
//! which node answered.

use std::time::Duration;

use anyhow::{Context, ensure};
use flotilla_client::v1::cluster_service_client::ClusterServiceClient;
use flotilla_client::{Client, v1};
use tonic::transport::{Channel, Endpoint};

/// Bound on one probe. A paused node never answers; the probe must not wait for it.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily connected channel to one node whose calls time out after [`PROBE_TIMEOUT`].
pub fn channel_to(address: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("bad address {address:?}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(PROBE_TIMEOUT);
    Ok(endpoint.connect_lazy())
}

/// The cluster status as the node at `address` sees it.
pub async fn status(address: &str) -> anyhow::Result<v1::StatusResponse> {
    let mut stub = ClusterServiceClient::new(channel_to(address)?);
    let response = tokio::time::timeout(PROBE_TIMEOUT, stub.status(v1::StatusRequest {}))
        .await
        .with_context(|| format!("status from {address}: no answer within {PROBE_TIMEOUT:?}"))?
        .with_context(|| format!("status from {address}"))?;
    Ok(response.into_inner())
}

/// The node's own replicas of `groups` (all when empty), with who it thinks leads each.
pub async fn local_replicas(address: &str, groups: Vec<u64>) -> anyhow::Result<v1::LocalReplicasResponse> {
    let mut stub = ClusterServiceClient::new(channel_to(address)?);
    let request = v1::LocalReplicasRequest { group_ids: groups };
    let response = tokio::time::timeout(PROBE_TIMEOUT, stub.local_replicas(request))
        .await
        .with_context(|| format!("local replicas from {address}: no answer within {PROBE_TIMEOUT:?}"))?
        .with_context(|| format!("local replicas from {address}"))?;
    Ok(response.into_inner())
}

/// Whether the node at `address` serves, sees all `nodes` nodes live, and names a metadata
/// leader; returns that leader.
pub async fn ready(address: &str, nodes: usize) -> anyhow::Result<u64> {
    let status = status(address).await?;
    let live = status.nodes.iter().filter(|node| node.live).count();
    ensure!(
        status.nodes.len() == nodes && live == nodes,
        "{address} sees {} nodes, {live} live; want {nodes}",
        status.nodes.len()
    );
    ensure!(status.metadata_leader_id != 0, "{address} knows no metadata leader");
    Ok(status.metadata_leader_id)
}

/// Where a topic's partitions live.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// Its partitions, by number.
    pub partitions: Vec<PartitionLayout>,
}

/// One partition's Raft group and replicas.
#[derive(Debug, Clone)]
pub struct PartitionLayout {
    /// The partition number.
    pub partition: u32,
    /// Its Raft group id.
    pub group_id: u64,
    /// Nodes holding a replica.
    pub replicas: Vec<u64>,
}

impl Layout {
    /// Asks the cluster where `topic`'s partitions are.
    pub async fn fetch(client: &Client, topic: &str) -> anyhow::Result<Layout> {
        let metadata = client.metadata(vec![topic.to_string()]).await.context("asking for the topic's layout")?;
        let found = metadata
            .topics
            .into_iter()
            .find(|t| t.topic.as_ref().is_some_and(|t| t.name == topic))
            .with_context(|| format!("topic {topic:?} is not in the metadata"))?;
        let mut partitions: Vec<PartitionLayout> = found
            .partitions
            .into_iter()
            .map(|p| PartitionLayout { partition: p.partition, group_id: p.group_id, replicas: p.replicas })
            .collect();
        partitions.sort_by_key(|p| p.partition);
        ensure!(!partitions.is_empty(), "topic {topic:?} has no partitions in the metadata");
        Ok(Layout { partitions })
    }
}

//! A fresh 3-node cluster forms: every node is registered and live and one metadata leader is
//! agreed on, as `flo cluster status` reports it.

use anyhow::{Context, ensure};
use flotilla_tests::{Cluster, stdout_of};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_form_a_cluster_with_one_metadata_leader() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;

    let output = cluster.flo(&["cluster", "status", "-o", "json"], None).await?;
    let status: Value = serde_json::from_str(&stdout_of(&output, "flo cluster status")?)?;
    let nodes = status["nodes"].as_array().context("no nodes array")?;
    ensure!(nodes.len() == 3, "expected 3 nodes, got {status}");
    let leader = status["metadata_leader_id"].as_u64().context("no metadata leader")?;
    ensure!((1..=3).contains(&leader), "metadata leader {leader} is not one of the nodes: {status}");
    let mut ids = Vec::new();
    for node in nodes {
        let id = node["id"].as_u64().context("node without id")?;
        ids.push(id);
        ensure!(node["live"] == true, "node {id} is not live: {status}");
        ensure!(node["metadata_voter"] == true, "node {id} is not a metadata voter: {status}");
        ensure!(
            node["client_address"] == cluster.client_address(id),
            "node {id} advertises client address {} but listens on {}",
            node["client_address"],
            cluster.client_address(id)
        );
        ensure!(node["peer_address"] == cluster.peer_address(id), "node {id} has the wrong peer address: {status}");
        ensure!(node["metadata_leader"] == (id == leader), "node {id} has the wrong leader flag: {status}");
    }
    ids.sort_unstable();
    ensure!(ids == [1, 2, 3], "node ids are {ids:?}");

    // Asked alone, every node gives the same picture (a follower forwards the question to the
    // metadata leader, which judges liveness, or answers itself if the leader is unreachable).
    for id in cluster.node_ids() {
        let output =
            cluster.flo_with_brokers(cluster.client_address(id), &["cluster", "status", "-o", "json"], None).await?;
        let status: Value = serde_json::from_str(&stdout_of(&output, "flo cluster status")?)?;
        let answered_by = status["answered_by"].as_u64().context("no answered_by")?;
        ensure!(answered_by == id || answered_by == leader, "asked node {id}, answered by node {answered_by}");
        ensure!(status["metadata_leader_id"] == leader, "node {id} names another metadata leader: {status}");
        let live = status["nodes"].as_array().map_or(0, |nodes| nodes.iter().filter(|n| n["live"] == true).count());
        ensure!(live == 3, "asked node {id}: {live} of 3 nodes live: {status}");
    }
    Ok(())
}

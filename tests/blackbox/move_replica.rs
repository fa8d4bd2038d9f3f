//! Moving a partition replica: `flo topic move-replica` changes the catalogue at once, the
//! partition leader copies the log to the new node and swaps it in as a voter, and the old
//! replica retires. Here the replica moved is the leader's own, so the leader drives its own
//! removal and steps down. Afterwards the old node is killed: every record is still there and
//! every replica (the new one included) holds the same log.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use flotilla_client::v1::cluster_service_client::ClusterServiceClient;
use flotilla_client::{Client, v1};
use flotilla_tests::{Cluster, read_partition, record, stdout_of};

const TOPIC: &str = "moves";
/// Time allowed for the move (catch-up plus two membership entries) and for recovery.
const MOVE_TIMEOUT: Duration = Duration::from_secs(90);

async fn produce(client: &Client, from: usize, count: usize) -> anyhow::Result<()> {
    for start in (from..from + count).step_by(100) {
        let records = (start..start + 100).map(|i| record(&format!("k{i}"), format!("v{i}"))).collect();
        let acks = client.produce(TOPIC, Some(0), records).await.with_context(|| format!("producing from {start}"))?;
        ensure!(acks.first().map(|a| a.offset) == Some(start as u64), "records {start}.. landed at {acks:?}");
    }
    Ok(())
}

async fn digest(cluster: &Cluster, node: u64, group_id: u64, end_offset: u64) -> anyhow::Result<u64> {
    let mut stub = ClusterServiceClient::new(cluster.channel(node)?);
    let response = stub
        .replica_digest(v1::ReplicaDigestRequest { group_id, end_offset: Some(end_offset), start_offset: None })
        .await
        .with_context(|| format!("digest of node {node}"))?
        .into_inner();
    Ok(response.digest)
}

async fn hosts_group(cluster: &Cluster, node: u64, group_id: u64) -> anyhow::Result<bool> {
    let mut stub = ClusterServiceClient::new(cluster.channel(node)?);
    let response = stub.local_replicas(v1::LocalReplicasRequest { group_ids: vec![group_id] }).await?.into_inner();
    Ok(response.replicas.iter().any(|r| r.group_id == group_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moving_the_leaders_replica_to_a_new_node_keeps_every_record() -> anyhow::Result<()> {
    let cluster = Cluster::start(4).await?;
    let client = cluster.client()?;
    client.create_topic(TOPIC, 1, 3).await?;
    produce(&client, 0, 1000).await?;

    // Move the leader's replica to the node outside the replica set.
    let (from, to, group_id) = cluster
        .wait_for("a leader of the partition", MOVE_TIMEOUT, || async {
            let description = client.describe_topic(TOPIC).await?;
            let partition = description.partitions.first().context("no partition")?;
            ensure!(partition.leader_id != 0, "no leader yet");
            let outside = cluster.node_ids().into_iter().find(|n| !partition.replicas.contains(n));
            Ok((partition.leader_id, outside.context("every node is a replica")?, partition.group_id))
        })
        .await?;
    let output = cluster
        .flo(&["topic", "move-replica", TOPIC, "0", "--from", &from.to_string(), "--to", &to.to_string()], None)
        .await?;
    let printed = stdout_of(&output, "flo topic move-replica")?;
    ensure!(printed.contains(&format!("from node {from} to node {to}")), "flo printed {printed:?}");

    // Bad moves are refused with messages naming the values.
    let err = client.move_replica(TOPIC, 0, from, to).await.expect_err("from is no longer a replica");
    ensure!(err.to_string().contains(&format!("node {from} is not a replica")), "{err}");
    let other = cluster.node_ids().into_iter().find(|n| *n != from && *n != to).context("a third node")?;
    let err = client.move_replica(TOPIC, 0, other, from).await.expect_err("from was a replica before");
    ensure!(err.to_string().contains(&format!("node {from} was a replica")), "{err}");
    let err = client.move_replica(TOPIC, 0, to, 9).await.expect_err("node 9 does not exist");
    ensure!(err.to_string().contains("node 9 is not a registered node"), "{err}");

    // The new replica catches up and the old one retires.
    let replicas = cluster
        .wait_for("the new replica to hold the whole log", MOVE_TIMEOUT, || async {
            let description = client.describe_topic(TOPIC).await?;
            let partition = description.partitions.first().context("no partition")?;
            ensure!(partition.replicas.contains(&to) && !partition.replicas.contains(&from), "{partition:?}");
            ensure!(partition.leader_id != 0 && partition.leader_id != from, "leader {}", partition.leader_id);
            for state in &partition.replica_states {
                ensure!(
                    state.reachable && state.log_end_offset == 1000,
                    "replica states {:?}",
                    partition.replica_states
                );
            }
            Ok(partition.replicas.clone())
        })
        .await?;
    cluster
        .wait_for("the old replica to retire", MOVE_TIMEOUT, || async {
            if hosts_group(&cluster, from, group_id).await? {
                bail!("node {from} still hosts the group");
            }
            Ok(())
        })
        .await?;

    // The partition still takes writes; then the old node dies and nothing is missed.
    produce(&client, 1000, 200).await?;
    cluster.kill9(from)?;
    let records = cluster
        .wait_for("reading every record back", MOVE_TIMEOUT, || read_partition(&client, TOPIC, 0, 0, 1200))
        .await?;
    for (i, fetched) in records.iter().enumerate() {
        let value = fetched.record.as_ref().map(|r| r.value.clone()).unwrap_or_default();
        ensure!(value == format!("v{i}").into_bytes(), "offset {i} holds {:?}", String::from_utf8_lossy(&value));
    }
    let digests: BTreeSet<u64> = cluster
        .wait_for("every replica to hold 1200 records", MOVE_TIMEOUT, || async {
            let mut digests = BTreeSet::new();
            for node in &replicas {
                digests.insert(digest(&cluster, *node, group_id, 1200).await?);
            }
            Ok(digests)
        })
        .await?;
    ensure!(digests.len() == 1, "replicas {replicas:?} disagree: digests {digests:?}");
    Ok(())
}

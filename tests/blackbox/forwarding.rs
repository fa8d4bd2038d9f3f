//! Any node answers any request: produce and fetch sent over raw gRPC to a node that does not
//! lead the partition (a follower, or a node without a replica) are forwarded to the leader.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use flotilla_client::v1;
use flotilla_client::v1::fetch_service_client::FetchServiceClient;
use flotilla_client::v1::produce_service_client::ProduceServiceClient;
use flotilla_tests::{Cluster, record};
use flotilla_types::partition_for_key;

const TIMEOUT: Duration = Duration::from_secs(60);

/// The partition's description once it has a leader.
async fn described(cluster: &Cluster, topic: &str, partition: u32) -> anyhow::Result<v1::PartitionDescription> {
    let client = cluster.client()?;
    cluster
        .wait_for(&format!("a leader of {topic}/{partition}"), TIMEOUT, || async {
            let description = client.describe_topic(topic).await?;
            match description.partitions.into_iter().find(|p| p.partition == partition) {
                Some(p) if p.leader_id != 0 => Ok(p),
                other => bail!("no leader yet: {other:?}"),
            }
        })
        .await
}

/// Produces `values` to `topic`/`partition` through node `via` alone, then fetches them back
/// through the same node and checks they come back at the acknowledged offsets.
async fn round_trip_via(
    cluster: &Cluster,
    via: u64,
    topic: &str,
    partition: u32,
    values: &[&str],
) -> anyhow::Result<()> {
    let channel = cluster.channel(via)?;
    let mut produce = ProduceServiceClient::new(channel.clone());
    let records = values.iter().map(|v| record("fwd", *v)).collect();
    let request =
        v1::ProduceRequest { topic: topic.to_string(), partition: Some(partition), records, idempotence: None };
    let acks = produce
        .produce(request)
        .await
        .with_context(|| format!("produce to {topic}/{partition} through node {via}"))?
        .into_inner()
        .acks;
    ensure!(acks.len() == values.len(), "{} acks for {} records", acks.len(), values.len());
    let base = acks[0].offset;
    for (i, ack) in acks.iter().enumerate() {
        ensure!(
            ack.partition == partition && ack.offset == base + i as u64,
            "records of one request must land contiguously in {topic}/{partition}: {acks:?}"
        );
    }

    let mut fetch = FetchServiceClient::new(channel);
    let request = v1::FetchRequest {
        topic: topic.to_string(),
        partition,
        offset: base,
        max_records: values.len() as u32,
        max_bytes: 0,
        max_wait_ms: 0,
    };
    let response =
        fetch.fetch(request).await.with_context(|| format!("fetch {topic}/{partition} through node {via}"))?;
    let response = response.into_inner();
    let fetched: Vec<(u64, String)> = response
        .records
        .iter()
        .map(|r| {
            (r.offset, r.record.as_ref().map(|r| String::from_utf8_lossy(&r.value).into_owned()).unwrap_or_default())
        })
        .collect();
    let expected: Vec<(u64, String)> =
        values.iter().enumerate().map(|(i, v)| (base + i as u64, v.to_string())).collect();
    ensure!(fetched == expected, "fetched {fetched:?} through node {via}, produced {expected:?}");
    ensure!(response.high_watermark >= base + values.len() as u64, "high watermark {}", response.high_watermark);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn followers_and_non_replicas_forward_produce_and_fetch() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;

    // RF 3: every other node is a follower of the leader.
    client.create_topic("replicated", 3, 3).await?;
    let p0 = described(&cluster, "replicated", 0).await?;
    let followers: Vec<u64> = cluster.node_ids().into_iter().filter(|&id| id != p0.leader_id).collect();
    ensure!(followers.len() == 2, "leader {} of a 3-node cluster leaves followers {followers:?}", p0.leader_id);
    for &follower in &followers {
        let values = [format!("via-follower-{follower}-a"), format!("via-follower-{follower}-b")];
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        round_trip_via(&cluster, follower, "replicated", 0, &values).await?;
    }

    // RF 1: a node without any replica of the partition forwards too.
    client.create_topic("single", 1, 1).await?;
    let p = described(&cluster, "single", 0).await?;
    ensure!(p.replicas.len() == 1, "RF 1 topic has replicas {:?}", p.replicas);
    let outsider =
        cluster.node_ids().into_iter().find(|id| !p.replicas.contains(id)).context("every node holds the replica")?;
    round_trip_via(&cluster, outsider, "single", 0, &["via-outsider"]).await?;

    // Without an explicit partition a follower places keyed records by murmur2, as the SDK
    // does, and still acknowledges them in request order.
    let keys = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let mut produce = ProduceServiceClient::new(cluster.channel(followers[0])?);
    let request = v1::ProduceRequest {
        topic: "replicated".to_string(),
        partition: None,
        records: keys.iter().map(|k| record(k, *k)).collect(),
        idempotence: None,
    };
    let acks = produce.produce(request).await.context("keyed produce through a follower")?.into_inner().acks;
    ensure!(acks.len() == keys.len(), "{} acks for {} records", acks.len(), keys.len());
    for (key, ack) in keys.iter().zip(&acks) {
        let expected = partition_for_key(key.as_bytes(), 3);
        ensure!(ack.partition == expected, "key {key} went to partition {}, murmur2 says {expected}", ack.partition);
    }
    cluster.check_running()
}

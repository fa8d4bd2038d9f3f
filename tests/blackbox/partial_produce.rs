//! A produce whose records go to several partitions, appended on some and not on others, is
//! answered `PRODUCE_INCOMPLETE` with each partition's outcome: never with one partition's
//! error, which would say nothing was appended (review finding 2).

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use flotilla_client::v1;
use flotilla_client::v1::produce_service_client::ProduceServiceClient;
use flotilla_tests::{Cluster, error_code, record};
use flotilla_types::{ErrorCode, partition_for_key};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A key that murmur2 places in `partition` of a topic with `partitions`.
fn key_for(partition: u32, partitions: u32) -> String {
    (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| partition_for_key(k.as_bytes(), partitions) == partition)
        .expect("some key")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partly_appended_produce_says_which_partitions_took_its_records() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    // RF 1: each partition lives on one node, so killing a node takes its partitions away.
    client.create_topic("split", 3, 1).await?;
    let leaders: Vec<u64> = cluster
        .wait_for("a leader for every partition", TIMEOUT, || async {
            let described = client.describe_topic("split").await?;
            let leaders: Vec<u64> = described.partitions.iter().map(|p| p.leader_id).collect();
            if leaders.len() == 3 && leaders.iter().all(|&l| l != 0) { Ok(leaders) } else { bail!("{leaders:?}") }
        })
        .await?;
    // Two partitions on different nodes: `kept` on the node the request goes to, `lost` on the
    // node that dies.
    let (kept, lost) = (0..3u32)
        .flat_map(|a| (0..3u32).map(move |b| (a, b)))
        .find(|&(a, b)| leaders[a as usize] != leaders[b as usize])
        .context("placement put every partition on one node")?;
    let (via, dead) = (leaders[kept as usize], leaders[lost as usize]);
    cluster.kill9(dead)?;

    let keys = [key_for(kept, 3), key_for(lost, 3), key_for(kept, 3)];
    let request = v1::ProduceRequest {
        topic: "split".into(),
        partition: None,
        records: keys.iter().enumerate().map(|(i, k)| record(k, format!("v{i}"))).collect(),
        idempotence: None,
    };
    // Longer than the node waits for the dead partition's leader (10 s) before it answers.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.client_address(via)))?
        .timeout(TIMEOUT)
        .connect_lazy();
    let status =
        ProduceServiceClient::new(channel).produce(request).await.expect_err("partition {lost}'s only replica is down");
    ensure!(
        error_code(&status) == Some(ErrorCode::ProduceIncomplete),
        "a produce appended on partition {kept} only was answered {:?}: {}",
        error_code(&status),
        status.message()
    );
    let result = flotilla_client::produce_result(&status).context("the per-partition outcome")?;
    let by_partition = |p: u32| result.partitions.iter().find(|r| r.partition == p).cloned();
    let kept_result = by_partition(kept).context("the kept partition's outcome")?;
    let lost_result = by_partition(lost).context("the lost partition's outcome")?;
    ensure!(kept_result.record_count == 2 && kept_result.error.is_none(), "{kept_result:?}");
    ensure!(lost_result.record_count == 1 && lost_result.base_offset.is_none(), "{lost_result:?}");
    ensure!(lost_result.error.is_some(), "the lost partition names its error: {lost_result:?}");
    // The acknowledged records are there, at the offsets the answer gave.
    let base = kept_result.base_offset.context("the kept partition's offsets")?;
    let fetched = flotilla_tests::read_partition(&client, "split", kept, base, base + 2).await?;
    let values: Vec<String> =
        fetched.iter().map(|r| String::from_utf8_lossy(&r.record.as_ref().expect("a record").value).into()).collect();
    ensure!(values == ["v0", "v2"], "partition {kept} holds {values:?} from offset {base}");
    Ok(())
}

//! A node whose disk was wiped or replaced must not rejoin under its old id with an empty
//! disk: an empty voter can grant two votes in one term and elect a stale leader, losing
//! acknowledged records (Jepsen's TigerBeetle analysis). Restarted on an empty data directory,
//! it learns from its peers that the cluster lists it and refuses to start; the other two
//! keep serving every record.

use std::time::Duration;

use anyhow::{Context, ensure};
use flotilla_client::v1;
use flotilla_tests::{Cluster, read_partition, record};

const TOPIC: &str = "ledger";
const PARTITIONS: u32 = 3;
const RECORDS: usize = 300;
/// How long the wiped node may take to refuse: a few rounds of asking its peers.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for the two remaining nodes to serve again after the third left.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn a_node_restarted_on_a_wiped_disk_refuses_to_rejoin_under_its_id() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic(TOPIC, PARTITIONS, 3).await.context("creating the topic")?;
    // (ack, value): acks come back in the order the records were given.
    let mut acked: Vec<(v1::RecordAck, String)> = Vec::new();
    for batch in 0..RECORDS / 100 {
        let values: Vec<String> = (0..100).map(|i| format!("v{}", batch * 100 + i)).collect();
        let records: Vec<v1::Record> =
            values.iter().enumerate().map(|(i, value)| record(&format!("k{i}"), value.as_str())).collect();
        let acks = client.produce(TOPIC, None, records).await.context("producing")?;
        acked.extend(acks.into_iter().zip(values));
    }
    ensure!(acked.len() == RECORDS, "{} of {RECORDS} records acknowledged", acked.len());

    let status = cluster.stop(3).await?;
    ensure!(status.success(), "node 3 did not stop cleanly: {status}");
    let data_dir = cluster.data_dir(3).to_path_buf();
    std::fs::remove_dir_all(&data_dir).with_context(|| format!("wiping {}", data_dir.display()))?;

    let (status, printed) = cluster.start_expecting_exit(3, REFUSAL_TIMEOUT).await?;
    ensure!(!status.success(), "node 3 exited with {status} on a wiped disk; expected a refusal:\n{printed}");
    for needle in ["node 3 is registered in the cluster", "is empty: its disk was wiped or replaced", "--node-id"] {
        ensure!(printed.contains(needle), "node 3's refusal does not say {needle:?}:\n{printed}");
    }
    ensure!(
        printed.contains(&data_dir.display().to_string()),
        "node 3's refusal does not name its data directory {}:\n{printed}",
        data_dir.display()
    );

    // The other two still hold and serve every acknowledged record at its offset.
    let mut ends = vec![0u64; PARTITIONS as usize];
    for (ack, _) in &acked {
        let end = &mut ends[ack.partition as usize];
        *end = (*end).max(ack.offset + 1);
    }
    for (partition, &end) in ends.iter().enumerate() {
        let partition = partition as u32;
        let records = cluster
            .wait_for(&format!("reading {TOPIC}/{partition} from nodes 1 and 2"), RECOVERY_TIMEOUT, || {
                read_partition(&client, TOPIC, partition, 0, end)
            })
            .await?;
        for (ack, value) in acked.iter().filter(|(a, _)| a.partition == partition) {
            let found = records
                .iter()
                .find(|r| r.offset == ack.offset)
                .and_then(|r| r.record.as_ref())
                .map(|r| String::from_utf8_lossy(&r.value).into_owned());
            ensure!(
                found.as_deref() == Some(value.as_str()),
                "{value} was acknowledged at {TOPIC}/{partition} offset {} but the survivors hold {found:?}",
                ack.offset
            );
        }
    }
    Ok(())
}

//! Bad input gets a clear error (the right stable code, a message naming the offending value)
//! from every node, never a crash: afterwards the cluster still serves. A node started on a
//! data directory of another node id refuses to start.

use std::time::Duration;

use anyhow::{Context, ensure};
use flotilla_client::v1;
use flotilla_client::v1::admin_service_client::AdminServiceClient;
use flotilla_client::v1::fetch_service_client::FetchServiceClient;
use flotilla_client::v1::produce_service_client::ProduceServiceClient;
use flotilla_tests::{Cluster, expect_error, record, stdout_of};
use flotilla_types::{ErrorCode, Limits};

const TOPIC: &str = "orders";
const UNKNOWN: &str = "no-such-topic";

fn produce_request(topic: &str, partition: Option<u32>, records: Vec<v1::Record>) -> v1::ProduceRequest {
    v1::ProduceRequest { topic: topic.to_string(), partition, records, idempotence: None }
}

fn fetch_request(topic: &str, partition: u32, offset: u64) -> v1::FetchRequest {
    v1::FetchRequest { topic: topic.to_string(), partition, offset, max_records: 10, max_bytes: 0, max_wait_ms: 0 }
}

fn create_request(name: &str, partitions: u32, replication_factor: u32) -> v1::CreateTopicRequest {
    v1::CreateTopicRequest { name: name.to_string(), partitions, replication_factor, config: Default::default() }
}

/// Sends every kind of bad request to node `id` alone (forwarded requests must keep their
/// error code on the way back). `high_watermark` is that of `TOPIC`/0.
async fn bad_requests_via(cluster: &Cluster, id: u64, high_watermark: u64) -> anyhow::Result<()> {
    let channel = cluster.channel(id)?;
    let mut produce = ProduceServiceClient::new(channel.clone());
    let mut fetch = FetchServiceClient::new(channel.clone());
    let mut admin = AdminServiceClient::new(channel);
    let at = |what: &str| format!("{what} (via node {id})");
    let one = || vec![record("k", "v")];

    let result = produce.produce(produce_request(UNKNOWN, None, one())).await;
    expect_error(&at("produce to an unknown topic"), result, ErrorCode::UnknownTopic, &[UNKNOWN])?;
    let result = fetch.fetch(fetch_request(UNKNOWN, 0, 0)).await;
    expect_error(&at("fetch from an unknown topic"), result, ErrorCode::UnknownTopic, &[UNKNOWN])?;
    let result = admin.describe_topic(v1::DescribeTopicRequest { name: UNKNOWN.to_string() }).await;
    expect_error(&at("describe an unknown topic"), result, ErrorCode::UnknownTopic, &[UNKNOWN])?;

    let result = produce.produce(produce_request(TOPIC, Some(7), one())).await;
    expect_error(&at("produce to partition 7 of 3"), result, ErrorCode::PartitionOutOfRange, &[TOPIC, "7"])?;
    let result = fetch.fetch(fetch_request(TOPIC, 7, 0)).await;
    expect_error(&at("fetch from partition 7 of 3"), result, ErrorCode::PartitionOutOfRange, &[TOPIC, "7"])?;

    for partition in [Some(0), None] {
        let result = produce.produce(produce_request(TOPIC, partition, Vec::new())).await;
        expect_error(&at("produce without records"), result, ErrorCode::EmptyBatch, &[TOPIC])?;
    }

    let limit = Limits::default().record_bytes_max;
    let huge = vec![record("big", vec![b'x'; limit + 1])];
    let result = produce.produce(produce_request(TOPIC, Some(0), huge)).await;
    expect_error(&at("produce a record over the limit"), result, ErrorCode::RecordTooLarge, &[&limit.to_string()])?;

    // Headers are bounded in number, and an empty header is not free (review finding 5: empty
    // headers used to count 0 bytes, so one record could carry millions of them).
    let limits = Limits::default();
    let header = |key: &str| v1::Header { key: key.to_string(), value: Default::default() };
    let mut crowded = record("k", "v");
    crowded.headers = (0..=limits.headers_per_record_max).map(|i| header(&format!("h{i}"))).collect();
    let result = produce.produce(produce_request(TOPIC, Some(0), vec![crowded])).await;
    let count = (limits.headers_per_record_max + 1).to_string();
    expect_error(&at("produce a record with too many headers"), result, ErrorCode::RecordTooLarge, &[&count])?;
    let mut heavy = record("k", vec![b'x'; limits.record_bytes_max - 8]);
    heavy.headers = vec![header("")];
    let result = produce.produce(produce_request(TOPIC, Some(0), vec![heavy])).await;
    expect_error(
        &at("produce a record whose empty header tips it over"),
        result,
        ErrorCode::RecordTooLarge,
        &[&limits.record_bytes_max.to_string()],
    )?;
    // A request larger than a batch plus framing is refused before it is decoded.
    let oversized: Vec<v1::Record> =
        (0..10).map(|_| record("k", vec![b'x'; limits.request_bytes_max() / 10 + 1024])).collect();
    let result = ProduceServiceClient::new(cluster.channel(id)?)
        .max_encoding_message_size(usize::MAX)
        .produce(produce_request(TOPIC, Some(0), oversized))
        .await;
    let status = result.expect_err("an oversized request is refused");
    ensure!(
        status.code() == tonic::Code::OutOfRange || status.code() == tonic::Code::ResourceExhausted,
        "{}: {status:?}",
        at("an oversized request")
    );

    let far = high_watermark + 1_000_000;
    let result = fetch.fetch(fetch_request(TOPIC, 0, far)).await;
    expect_error(
        &at("fetch past the high watermark"),
        result,
        ErrorCode::OffsetOutOfRange,
        &[&far.to_string(), &high_watermark.to_string()],
    )?;

    let result = admin.create_topic(create_request("bad name", 1, 1)).await;
    expect_error(&at("create a topic with a space in its name"), result, ErrorCode::InvalidTopicName, &["bad name"])?;
    let result = admin.create_topic(create_request(TOPIC, 3, 3)).await;
    expect_error(&at("create an existing topic"), result, ErrorCode::TopicExists, &[TOPIC])?;
    let result = admin.create_topic(create_request("too-wide", 1, 5)).await;
    expect_error(&at("create a topic with RF 5 on 3 nodes"), result, ErrorCode::ReplicationFactorTooLarge, &["5"])?;
    let result = admin.create_topic(create_request("no-partitions", 0, 1)).await;
    expect_error(&at("create a topic with 0 partitions"), result, ErrorCode::InvalidPartitionCount, &["0"])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors_and_never_crashes_a_node() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic(TOPIC, 3, 3).await?;
    let acks = client.produce(TOPIC, Some(0), (0..5).map(|i| record("k", format!("v{i}"))).collect()).await?;
    let high_watermark = acks.last().context("no acks")?.offset + 1;

    for id in cluster.node_ids() {
        bad_requests_via(&cluster, id, high_watermark).await?;
    }

    // The CLI passes the code and the message on and exits with 1.
    let output = cluster.flo(&["topic", "create", "bad name"], None).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(1), "flo topic create \"bad name\" exited with {}", output.status);
    ensure!(stderr.contains("INVALID_TOPIC_NAME") && stderr.contains("bad name"), "flo said: {stderr}");
    let output = cluster.flo(&["produce", UNKNOWN], Some(b"hello\n".to_vec())).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(1), "flo produce to an unknown topic exited with {}", output.status);
    ensure!(stderr.contains("UNKNOWN_TOPIC") && stderr.contains(UNKNOWN), "flo said: {stderr}");

    // A data directory remembers its node id: starting node 4 on node 3's data is refused.
    // (Node 4 is not in --initial-cluster, so no other check can refuse it first.)
    let status = cluster.stop(3).await?;
    ensure!(status.success(), "node 3 exited with {status} after SIGTERM");
    let data_dir = cluster.data_dir(3).display().to_string();
    let args: Vec<String> = [
        "--node-id",
        "4",
        "--data-dir",
        &data_dir,
        "--listen",
        "127.0.0.1:0",
        "--peer-listen",
        "127.0.0.1:0",
        "--initial-cluster",
        cluster.initial_cluster(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let output = cluster.run_flotilla(&args, Duration::from_secs(30)).await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(!output.status.success(), "flotilla as node 4 on node 3's data dir exited with {}", output.status);
    ensure!(stderr.contains("belongs to node"), "flotilla on another node's data dir said: {stderr}");

    // The refused start left node 3's data alone: it comes back, and everything still serves.
    cluster.restart(3).await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let output =
        cluster.flo(&["produce", TOPIC, "-k", "after", "-o", "json"], Some(b"still serving\n".to_vec())).await?;
    let acks = stdout_of(&output, "flo produce after the bad input")?;
    ensure!(acks.lines().count() == 1, "one record produced, acks: {acks}");
    cluster.check_running()
}

//! The SDK's batching, idempotent `Producer` against a real cluster: a partition leader killed
//! with SIGKILL mid-stream costs no record and duplicates none, and a producer whose id another
//! session took over (a higher epoch) fails clearly instead of writing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use flotilla_client::v1::produce_service_client::ProduceServiceClient;
use flotilla_client::{Client, ClientError, DeliveryFuture, ErrorCode, ProducerConfig, ProducerRecord, v1};
use flotilla_tests::{Cluster, read_partition};

/// Time allowed for a recovery step; generous, as in `failover.rs`.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);
/// Records the failover test produces.
const RECORDS: u64 = 20_000;
/// Distinct keys; each key's records must come back in send order.
const KEYS: u64 = 64;

/// The leader of `topic`/`partition`, once one is known.
async fn leader_of(cluster: &Cluster, client: &Client, topic: &str, partition: u32) -> anyhow::Result<u64> {
    cluster
        .wait_for(&format!("a leader of {topic}/{partition}"), RECOVERY_TIMEOUT, || async {
            let description = client.describe_topic(topic).await?;
            match description.partitions.iter().find(|p| p.partition == partition).map(|p| p.leader_id) {
                Some(leader) if leader != 0 => Ok(leader),
                _ => bail!("no leader yet: {description:?}"),
            }
        })
        .await
}

/// Waits until `topic`/`partition` serves reads up to `end` (a new leader learns the commit
/// point only after committing an entry of its own term), then reads `[0, end)`.
async fn read_up_to(
    cluster: &Cluster,
    client: &Client,
    topic: &str,
    partition: u32,
    end: u64,
) -> anyhow::Result<Vec<v1::FetchedRecord>> {
    cluster
        .wait_for(&format!("{topic}/{partition} to serve offsets below {end}"), RECOVERY_TIMEOUT, || async {
            let offsets = client.list_offsets(topic).await?;
            let high_watermark = offsets.iter().find(|o| o.partition == partition).map_or(0, |o| o.high_watermark);
            ensure!(high_watermark >= end, "high watermark {high_watermark}, want {end}");
            Ok(())
        })
        .await?;
    read_partition(client, topic, partition, 0, end).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_killed_mid_stream_costs_no_record_and_duplicates_none() -> anyhow::Result<()> {
    const TOPIC: &str = "producer-failover";
    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic(TOPIC, 3, 3).await?;
    for partition in 0..3 {
        leader_of(&cluster, &client, TOPIC, partition).await?;
    }
    let producer = client.producer(ProducerConfig::default()).await?;

    // Paced (about 5,000 records a second) so the kill lands mid-stream.
    let sent = Arc::new(AtomicU64::new(0));
    let feeder = {
        let producer = producer.clone();
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let mut deliveries: Vec<(u64, DeliveryFuture)> = Vec::with_capacity(RECORDS as usize);
            for i in 0..RECORDS {
                let record = ProducerRecord::new(TOPIC, format!("v{i:05}")).key(format!("k{:02}", i % KEYS));
                deliveries.push((i, producer.send_nowait(record).await?));
                sent.store(i + 1, Ordering::Relaxed);
                if i % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Ok::<_, ClientError>(deliveries)
        })
    };
    let wait_sent = |at_least: u64| {
        let sent = Arc::clone(&sent);
        let what = format!("{at_least} records sent");
        let cluster = &cluster;
        async move {
            cluster
                .wait_for(&what, RECOVERY_TIMEOUT, move || {
                    let now = sent.load(Ordering::Relaxed);
                    async move { if now >= at_least { Ok(()) } else { bail!("{now} sent") } }
                })
                .await
        }
    };
    wait_sent(RECORDS / 4).await?;
    let victim = leader_of(&cluster, &client, TOPIC, 0).await?;
    cluster.kill9(victim)?;
    eprintln!("killed node {victim}, leader of {TOPIC}/0, after {} records", sent.load(Ordering::Relaxed));
    wait_sent(RECORDS * 3 / 4).await?;
    cluster.restart(victim).await?;

    // Every send is acknowledged.
    let deliveries = feeder.await.context("the feeder panicked")?.context("queueing a record")?;
    let mut acked: BTreeMap<String, v1::RecordAck> = BTreeMap::new();
    let mut by_key: BTreeMap<u64, Vec<v1::RecordAck>> = BTreeMap::new();
    for (i, delivery) in deliveries {
        let ack = tokio::time::timeout(RECOVERY_TIMEOUT, delivery)
            .await
            .with_context(|| format!("record {i} was not acknowledged within {RECOVERY_TIMEOUT:?}"))?
            .with_context(|| format!("record {i} failed"))?;
        by_key.entry(i % KEYS).or_default().push(ack);
        acked.insert(format!("v{i:05}"), ack);
    }
    eprintln!("producer stats: {:?}", producer.stats());
    producer.close().await;

    // Per key, offsets rise in send order (one key, one partition).
    for (key, acks) in &by_key {
        ensure!(acks.windows(2).all(|w| w[0].partition == w[1].partition), "key k{key:02} spans partitions");
        ensure!(acks.windows(2).all(|w| w[0].offset < w[1].offset), "key k{key:02} was appended out of send order");
    }

    // Every value is in the log exactly once, at its acknowledged place, and nothing else is.
    let mut ends = [0u64; 3];
    for ack in acked.values() {
        ends[ack.partition as usize] = ends[ack.partition as usize].max(ack.offset + 1);
    }
    let mut found: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for partition in 0..3u32 {
        let offsets = client.list_offsets(TOPIC).await?;
        let high_watermark = offsets.iter().find(|o| o.partition == partition).map_or(0, |o| o.high_watermark);
        let end = high_watermark.max(ends[partition as usize]);
        for record in read_up_to(&cluster, &client, TOPIC, partition, end).await? {
            let value = record.record.map(|r| String::from_utf8_lossy(&r.value).into_owned()).unwrap_or_default();
            found.entry(value).or_default().push((partition, record.offset));
        }
    }
    let duplicated: Vec<_> = found.iter().filter(|(_, places)| places.len() > 1).take(5).collect();
    ensure!(duplicated.is_empty(), "values appended more than once (value, places): {duplicated:?}");
    ensure!(
        found.len() == acked.len(),
        "the log holds {} distinct values; {} were produced and acknowledged",
        found.len(),
        acked.len()
    );
    for (value, ack) in &acked {
        let places = found.get(value).with_context(|| format!("acknowledged {value} is missing from the log"))?;
        ensure!(
            places[..] == [(ack.partition, ack.offset)],
            "{value} was acknowledged at {}/{} but is at {places:?}",
            ack.partition,
            ack.offset
        );
    }
    cluster.check_running()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fenced_producer_fails_every_send_clearly_and_writes_nothing_more() -> anyhow::Result<()> {
    const TOPIC: &str = "producer-fenced";
    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic(TOPIC, 2, 3).await?;
    let leader = leader_of(&cluster, &client, TOPIC, 0).await?;
    // Small batches, so several are queued behind the one that is refused.
    let config = ProducerConfig { batch_records_max: 10, ..ProducerConfig::default() };
    let producer = client.producer(config).await?;
    let producer_id = producer.producer_id().context("an idempotent producer has an id")?;
    let first = producer.send(ProducerRecord::new(TOPIC, "before").partition(0)).await?;
    ensure!(first.offset == 0, "first record at {first:?}");

    // Another session takes the producer id over: a batch under a higher epoch starts a new
    // sequence at 0, and the partition now refuses epoch 0.
    let takeover = v1::ProduceRequest {
        topic: TOPIC.to_string(),
        partition: Some(0),
        records: vec![v1::Record { value: "takeover".into(), ..Default::default() }],
        idempotence: Some(v1::ProducerSequence { producer_id, producer_epoch: 1, base_sequence: 0 }),
    };
    ProduceServiceClient::new(cluster.channel(leader)?).produce(takeover).await.context("the takeover batch")?;

    let mut deliveries = Vec::new();
    for i in 0..100 {
        deliveries.push(producer.send_nowait(ProducerRecord::new(TOPIC, format!("after {i}")).partition(0)).await?);
    }
    for (i, delivery) in deliveries.into_iter().enumerate() {
        match delivery.await {
            Err(error @ ClientError::ProducerFenced { .. }) => {
                ensure!(error.code() == Some(ErrorCode::ProducerFenced), "record {i}: {error}");
                let message = error.to_string();
                ensure!(
                    message.contains(&format!("producer {producer_id} was fenced")) && message.contains("higher epoch"),
                    "record {i}: the error does not say what happened: {message}"
                );
            }
            other => bail!("record {i} after the takeover: expected PRODUCER_FENCED, got {other:?}"),
        }
    }
    // Later sends fail at once, for any partition.
    match producer.send_nowait(ProducerRecord::new(TOPIC, "later").partition(1)).await {
        Err(ClientError::ProducerFenced { .. }) => {}
        other => bail!("a send after the fence: expected PRODUCER_FENCED, got {other:?}"),
    }
    producer.close().await;

    // Nothing after the takeover was written.
    let offsets = client.list_offsets(TOPIC).await?;
    let high_watermarks: BTreeMap<u32, u64> = offsets.iter().map(|o| (o.partition, o.high_watermark)).collect();
    let high_watermarks: Vec<u64> = high_watermarks.into_values().collect();
    ensure!(high_watermarks == [2, 0], "partitions hold {high_watermarks:?}; want [2, 0]");
    cluster.check_running()
}

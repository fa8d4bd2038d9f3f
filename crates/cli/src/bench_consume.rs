//! `flo bench consume`: how fast a consumer-group member reads a backlog through the SDK's
//! [`Consumer`] (one long-polling fetcher per partition, straight to the leaders).

use std::time::Duration;

use clap::Args;
use flotilla_client::{Client, Consumer, ConsumerConfig, StartFrom, v1};
use futures::stream::{FuturesUnordered, StreamExt};
use rand::{RngCore, SeedableRng};
use serde_json::json;
use tokio::time::Instant;

use crate::bench::ensure_topic;
use crate::output::{Output, print_json, print_text, thousands};

/// Records per produce request while filling the backlog.
const FILL_BATCH_RECORDS: u64 = 1000;
/// Produce requests in flight while filling the backlog.
const FILL_IN_FLIGHT: usize = 16;

/// Arguments of `flo bench consume`.
#[derive(Debug, Args)]
pub struct BenchConsumeArgs {
    /// Topic to read; created and filled to --records if it holds fewer.
    #[arg(long, default_value = "bench-consume")]
    topic: String,
    /// Partitions of the topic, if it has to be created.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
    /// Replication factor of the topic, if it has to be created.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Records to consume (the backlog is filled up to this many first).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    records: u64,
    /// Size of each filled record's value in bytes.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records one fetch asks for.
    #[arg(long, default_value_t = 10_000)]
    fetch_records: u32,
    /// Bytes one fetch asks for.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    fetch_bytes: u32,
}

/// Fills the backlog, then consumes --records records as a member of a fresh group and
/// reports msgs/s and MB/s from the first poll to the last record.
pub async fn run(client: &Client, output: Output, args: BenchConsumeArgs) -> anyhow::Result<()> {
    let partitions = ensure_topic(client, &args.topic, args.partitions, args.replication_factor).await?;
    let held: u64 = client.list_offsets(&args.topic).await?.iter().map(|o| o.high_watermark - o.log_start_offset).sum();
    if held < args.records {
        fill(client, &args.topic, partitions, args.records - held, args.record_bytes).await?;
    }

    let group = format!("bench-consume-{}", std::process::id());
    let mut config = ConsumerConfig::new(group.clone(), vec![args.topic.clone()]);
    config.client_id = "flo-bench".to_string();
    config.start_from = StartFrom::Earliest;
    config.fetch_max_records = args.fetch_records;
    config.fetch_max_bytes = args.fetch_bytes;
    config.fetch_max_wait = Duration::from_millis(100);
    let consumer = Consumer::new(client.clone(), config);
    let mut received = 0u64;
    let mut bytes = 0u64;
    let mut started: Option<Instant> = None;
    let mut last_report = Instant::now();
    let idle_deadline = Duration::from_secs(30);
    let mut last_record = Instant::now();
    while received < args.records {
        let records = consumer.poll(Duration::from_secs(1)).await?;
        if records.is_empty() {
            if last_record.elapsed() > idle_deadline {
                anyhow::bail!("no record for {idle_deadline:?} after {received} of {} records", args.records);
            }
            continue;
        }
        started.get_or_insert_with(Instant::now);
        last_record = Instant::now();
        received += records.len() as u64;
        bytes += records.iter().map(|r| r.value.len() as u64).sum::<u64>();
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!("consumed {} records", thousands(received));
            last_report = Instant::now();
        }
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed()).max(Duration::from_micros(1));
    consumer.commit().await?;
    consumer.close().await?;
    let seconds = elapsed.as_secs_f64();
    let rate = received as f64 / seconds;
    let megabytes = bytes as f64 / 1e6 / seconds;
    match output {
        Output::Json => print_json(&json!({
            "topic": args.topic,
            "partitions": partitions,
            "group": group,
            "records": received,
            "seconds": seconds,
            "msgs_per_sec": rate,
            "mb_per_sec": megabytes,
        })),
        Output::Table => print_text(&format!(
            "consumed {} records from {} partitions in {seconds:.2} s as one group member: {} msgs/s, {megabytes:.1} MB/s\n",
            thousands(received),
            partitions,
            thousands(rate as u64)
        )),
    }
}

/// Appends `count` random keyless records, many requests in flight.
async fn fill(client: &Client, topic: &str, partitions: u32, count: u64, record_bytes: usize) -> anyhow::Result<()> {
    eprintln!("filling {topic} with {} records of {record_bytes} bytes", thousands(count));
    let mut rng = rand::rngs::StdRng::seed_from_u64(count);
    let mut value = vec![0u8; record_bytes];
    rng.fill_bytes(&mut value);
    let value = bytes::Bytes::from(value);
    let batch = |size: u64| -> Vec<v1::Record> {
        (0..size)
            .map(|_| v1::Record { key: None, value: value.clone(), headers: Vec::new(), timestamp_ms: 0 })
            .collect()
    };
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut number) = (0u64, 0u32);
    while sent < count || !in_flight.is_empty() {
        while sent < count && in_flight.len() < FILL_IN_FLIGHT {
            let size = FILL_BATCH_RECORDS.min(count - sent);
            let records = batch(size);
            let partition = number % partitions;
            number += 1;
            sent += size;
            in_flight.push(async move { client.produce(topic, Some(partition), records).await });
        }
        if let Some(result) = in_flight.next().await {
            result?;
        }
    }
    Ok(())
}

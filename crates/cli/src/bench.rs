//! `flo bench`: load generators that measure what a client sees (throughput and per-request
//! latency) against a running cluster.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Subcommand};
use flotilla_client::{Client, ErrorCode, v1};
use hdrhistogram::Histogram;
use rand::{RngCore, SeedableRng};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::output::{Output, print_json, print_text, thousands};

/// Bench subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce random records as fast as the cluster acknowledges them, with many batches in
    /// flight.
    ///
    /// Prints a progress line every second on stderr and the final figures on stdout:
    /// records, msgs/s, MB/s (10^6 bytes of record values per second), and the latency of
    /// each batch from send to acknowledgement as the client measures it (p50, p99, p999,
    /// max). Exits with 1 if any batch failed; Ctrl-C stops early and still reports.
    Produce(BenchProduceArgs),
}

/// Arguments of `flo bench produce`.
#[derive(Debug, Args)]
pub struct BenchProduceArgs {
    /// Topic to produce to; created if missing.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Partitions of the topic, if it has to be created.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Replication factor of the topic, if it has to be created.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Size of each record's value in bytes (random bytes, no key).
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Records per produce request. Each batch goes to one partition, round-robin.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    batch_records: u32,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    in_flight: u32,
    /// Run for this many seconds (default 10 unless --records is given).
    #[arg(long, value_name = "SECS", conflicts_with = "records")]
    duration_secs: Option<u64>,
    /// Produce this many records, then stop.
    #[arg(long, value_name = "N")]
    records: Option<u64>,
}

/// Runs a bench subcommand.
pub async fn run(client: &Client, output: Output, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Produce(args) => bench_produce(client, output, args).await,
    }
}

/// Bytes of random data record values are sliced from.
const PAYLOAD_POOL_BYTES: usize = 4 * 1024 * 1024;
/// How long to wait for new partitions to elect leaders before starting anyway.
const LEADER_WAIT: Duration = Duration::from_secs(15);

/// Counters shared by the workers and the progress line.
#[derive(Default)]
struct Counters {
    records: AtomicU64,
    bytes: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    /// Next batch number to send.
    next_batch: AtomicU64,
    /// Set on Ctrl-C or a non-retriable error: no new batches start.
    stop: AtomicBool,
    /// The first failure, for the final report.
    first_error: OnceLock<String>,
}

/// What each worker needs to build and send batches.
struct Plan {
    topic: String,
    partitions: u32,
    record_bytes: usize,
    batch_records: u64,
    /// Total records to send, if bounded by count.
    records: Option<u64>,
    /// When to stop starting batches, if bounded by time.
    deadline: Option<Instant>,
    pool: Bytes,
}

impl Plan {
    /// The records of batch `number`, or `None` when the run is over.
    fn batch(&self, number: u64) -> Option<Vec<v1::Record>> {
        if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return None;
        }
        let first = number.checked_mul(self.batch_records)?;
        let count = match self.records {
            Some(total) if first >= total => return None,
            Some(total) => self.batch_records.min(total - first),
            None => self.batch_records,
        };
        let span = (self.pool.len() - self.record_bytes + 1) as u64;
        Some(
            (first..first + count)
                .map(|i| {
                    // Different records get different bytes; 7919 is prime, so starts spread.
                    let start = (i.wrapping_mul(7919) % span) as usize;
                    v1::Record {
                        key: None,
                        value: self.pool.slice(start..start + self.record_bytes),
                        headers: Vec::new(),
                        timestamp_ms: 0,
                    }
                })
                .collect(),
        )
    }
}

async fn bench_produce(client: &Client, output: Output, args: BenchProduceArgs) -> anyhow::Result<()> {
    let partitions = ensure_topic(client, &args.topic, args.partitions, args.replication_factor).await?;
    let mut pool = vec![0u8; PAYLOAD_POOL_BYTES.max(args.record_bytes * 2)];
    // Seeded: runs are comparable, and no entropy source is needed.
    rand::rngs::StdRng::seed_from_u64(0x5eed).fill_bytes(&mut pool);
    let duration = match (args.duration_secs, args.records) {
        (Some(secs), _) => Some(Duration::from_secs(secs)),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(10)),
    };
    let started = Instant::now();
    let plan = Arc::new(Plan {
        topic: args.topic.clone(),
        partitions,
        record_bytes: args.record_bytes,
        batch_records: u64::from(args.batch_records),
        records: args.records,
        deadline: duration.map(|d| started + d),
        pool: Bytes::from(pool),
    });
    let counters = Arc::new(Counters::default());
    let mut workers = JoinSet::new();
    for _ in 0..args.in_flight {
        let histogram = new_histogram()?;
        workers.spawn(worker(client.clone(), Arc::clone(&plan), Arc::clone(&counters), histogram));
    }
    let mut histogram = new_histogram()?;
    let mut ticker = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut interrupted = false;
    let mut previous_records = 0;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                None => break,
                Some(Ok(worker_histogram)) => histogram.add(&worker_histogram)?,
                Some(Err(error)) => anyhow::bail!("a bench worker failed: {error}"),
            },
            _ = ticker.tick() => {
                let records = counters.records.load(Ordering::Relaxed);
                eprintln!("{}", progress_line(&counters, started.elapsed(), records - previous_records));
                previous_records = records;
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                counters.stop.store(true, Ordering::Relaxed);
                eprintln!("interrupted: waiting for the batches in flight");
            }
        }
    }
    let elapsed = started.elapsed();
    report(output, &args, partitions, &counters, &histogram, elapsed)?;
    let errors = counters.errors.load(Ordering::Relaxed);
    if errors > 0 {
        let first = counters.first_error.get().map_or("unknown", String::as_str);
        anyhow::bail!("{} batches failed; first error: {first}", thousands(errors));
    }
    Ok(())
}

/// Sends batches one after another until the plan runs out or the run stops, recording the
/// ack latency of each successful batch (microseconds) in `histogram`.
async fn worker(
    client: Client,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    mut histogram: Histogram<u64>,
) -> Histogram<u64> {
    while !counters.stop.load(Ordering::Relaxed) {
        let number = counters.next_batch.fetch_add(1, Ordering::Relaxed);
        let Some(records) = plan.batch(number) else { break };
        let count = records.len() as u64;
        let partition = (number % u64::from(plan.partitions)) as u32;
        counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let result = client.produce(&plan.topic, Some(partition), records).await;
        let latency = sent.elapsed();
        counters.in_flight.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(_) => {
                histogram.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
                counters.records.fetch_add(count, Ordering::Relaxed);
                counters.bytes.fetch_add(count * plan.record_bytes as u64, Ordering::Relaxed);
                counters.batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                if !error.is_retriable() {
                    // A refusal (unknown topic, record too large) fails every batch alike.
                    counters.stop.store(true, Ordering::Relaxed);
                }
                let _ = counters.first_error.set(format!("{:#}", anyhow::Error::new(error)));
            }
        }
    }
    histogram
}

/// A latency histogram in microseconds, 1 µs to 1 h, 3 significant digits.
fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 3_600_000_000, 3)?)
}

/// Creates the topic unless it exists, waits (bounded) until every partition has a leader so
/// the run measures steady state rather than elections, and returns its partition count.
async fn ensure_topic(client: &Client, topic: &str, partitions: u32, replication_factor: u32) -> anyhow::Result<u32> {
    match client.create_topic(topic, partitions, replication_factor).await {
        Ok(created) => eprintln!(
            "created topic {topic}: partitions {}, replication factor {}",
            created.partitions, created.replication_factor
        ),
        Err(error) if error.code() == Some(ErrorCode::TopicExists) => {}
        Err(error) => return Err(error.into()),
    }
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        let metadata = client.metadata(vec![topic.to_string()]).await?;
        let found = metadata.topics.iter().find(|t| t.topic.as_ref().is_some_and(|t| t.name == topic));
        if let Some(found) = found {
            let count = found.topic.as_ref().map_or(0, |t| t.partitions);
            let led = found.partitions.iter().filter(|p| p.leader_id != 0).count();
            if count > 0 && led == count as usize {
                return Ok(count);
            }
            if Instant::now() >= deadline {
                eprintln!("warning: {led} of {count} partitions of {topic} have a leader; starting anyway");
                return Ok(count);
            }
        } else if Instant::now() >= deadline {
            anyhow::bail!("topic {topic:?} did not appear in the cluster metadata within {LEADER_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The once-a-second progress line: totals so far and the rate over the last second.
fn progress_line(counters: &Counters, elapsed: Duration, last_second_records: u64) -> String {
    let records = counters.records.load(Ordering::Relaxed);
    let bytes = counters.bytes.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    format!(
        "{:>4.0}s  {} records  {} msgs/s (last second {})  {:.1} MB/s  in flight {}  errors {}",
        seconds,
        thousands(records),
        thousands((records as f64 / seconds) as u64),
        thousands(last_second_records),
        bytes as f64 / seconds / 1e6,
        counters.in_flight.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed),
    )
}

/// Prints the final figures. MB are 10^6 bytes of record values.
fn report(
    output: Output,
    args: &BenchProduceArgs,
    partitions: u32,
    counters: &Counters,
    histogram: &Histogram<u64>,
    elapsed: Duration,
) -> anyhow::Result<()> {
    let records = counters.records.load(Ordering::Relaxed);
    let bytes = counters.bytes.load(Ordering::Relaxed);
    let batches = counters.batches.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let msgs_per_sec = records as f64 / seconds;
    let mb_per_sec = bytes as f64 / seconds / 1e6;
    let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
    let (p50, p99, p999, max) = if histogram.is_empty() {
        (0.0, 0.0, 0.0, 0.0)
    } else {
        (ms(0.5), ms(0.99), ms(0.999), histogram.max() as f64 / 1000.0)
    };
    match output {
        Output::Json => print_json(&json!({
            "topic": args.topic,
            "partitions": partitions,
            "record_bytes": args.record_bytes,
            "batch_records": args.batch_records,
            "in_flight": args.in_flight,
            "records": records,
            "batches": batches,
            "errors": errors,
            "elapsed_secs": seconds,
            "msgs_per_sec": msgs_per_sec,
            "mb_per_sec": mb_per_sec,
            "latency_ms": { "p50": p50, "p99": p99, "p999": p999, "max": max },
        })),
        Output::Table => print_text(&format!(
            "topic {} ({partitions} partitions), {} B records, {} records per batch, {} batches in flight\n\
             records     {}\n\
             batches     {}\n\
             errors      {}\n\
             elapsed     {seconds:.2} s\n\
             throughput  {} msgs/s, {mb_per_sec:.1} MB/s\n\
             latency     p50 {p50:.3} ms, p99 {p99:.3} ms, p999 {p999:.3} ms, max {max:.3} ms (per batch ack)\n",
            args.topic,
            args.record_bytes,
            args.batch_records,
            args.in_flight,
            thousands(records),
            thousands(batches),
            thousands(errors),
            thousands(msgs_per_sec as u64),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(records: Option<u64>) -> Plan {
        Plan {
            topic: "bench".into(),
            partitions: 3,
            record_bytes: 10,
            batch_records: 4,
            records,
            deadline: None,
            pool: Bytes::from(vec![7u8; 64]),
        }
    }

    #[test]
    fn a_record_bound_run_sends_exactly_that_many_records() {
        let plan = plan(Some(10));
        let sizes: Vec<usize> = (0..5).map_while(|n| plan.batch(n)).map(|b| b.len()).collect();
        assert_eq!(sizes, [4, 4, 2]);
        assert!(plan.batch(u64::MAX).is_none(), "no overflow on absurd batch numbers");
        let batch = plan.batch(0).expect("first batch");
        assert!(batch.iter().all(|r| r.value.len() == 10 && r.key.is_none()));
    }

    #[test]
    fn a_time_bound_run_stops_at_its_deadline() {
        let mut plan = plan(None);
        assert!(plan.batch(1_000_000).is_some());
        plan.deadline = Some(Instant::now());
        assert!(plan.batch(0).is_none());
    }
}

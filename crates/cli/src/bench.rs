//! `flo bench`: load generators that measure what a client sees (throughput and per-request
//! latency) against a running cluster. `produce` drives either raw produce calls (many
//! batches in flight) or the SDK's [`Producer`]; `e2e` produces at a fixed rate while one
//! long-poll consumer per partition tails the topic, and measures produce→consume latency;
//! `consume` (in `bench_consume.rs`) reads a backlog as one consumer-group member.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args, Subcommand};
use flotilla_client::{
    Client, ClientError, DeliveryFuture, ErrorCode, Producer, ProducerConfig, ProducerRecord, ProducerStats, v1,
};
use futures::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use rand::{RngCore, SeedableRng};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::output::{Output, print_json, print_text, thousands};
use crate::produce::CompressionArg;

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
    ///
    /// With --producer the records go through the SDK's batching, idempotent producer
    /// instead (keyless records, sticky partitioning, batches cut by --linger-ms and
    /// --batch-bytes, 5 requests per partition in flight) and latency is per record, from
    /// send to acknowledgement.
    Produce(BenchProduceArgs),
    /// Produce at a fixed rate while consumers tail every partition, and measure the latency
    /// from send to consume.
    ///
    /// The producer (the SDK's, idempotent) stamps each record's send time into the first 8
    /// bytes of its value; one task per partition long-polls fetches from the end of the
    /// partition and records now − stamp for each record it reads. Prints the achieved
    /// produce rate and the produce→consume latency (p50, p90, p99, p99.9, max). Exits with 1
    /// if a record failed or was not consumed.
    E2e(BenchE2eArgs),
    /// Read a backlog as fast as one consumer-group member can.
    ///
    /// Fills the topic up to --records records (1 KiB, keyless) if it holds fewer, then joins
    /// a fresh group (starting at the earliest record) through the SDK's `Consumer` — one
    /// long-polling fetcher per partition, straight to the leaders — and reads --records
    /// records. Prints records, seconds, msgs/s and MB/s (10^6 bytes of values per second)
    /// from the first poll to the last record.
    Consume(crate::bench_consume::BenchConsumeArgs),
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
    /// Send through the SDK's batching producer instead of raw produce calls
    /// (--batch-records and --in-flight then do not apply).
    #[arg(long)]
    producer: bool,
    #[command(flatten)]
    producer_options: ProducerOptions,
}

/// Settings of the SDK producer a bench uses.
#[derive(Debug, Args)]
pub struct ProducerOptions {
    /// With --producer (and for e2e): how long a batch waits for more records, in ms.
    #[arg(long, default_value_t = 5, value_name = "MS")]
    linger_ms: u64,
    /// With --producer (and for e2e): record bytes that close a batch.
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    batch_bytes: usize,
    /// With --producer (and for e2e): produce without idempotence (at-least-once).
    #[arg(long)]
    no_idempotence: bool,
    /// With --producer (and for e2e): batches per partition sent and not yet acknowledged
    /// (at most 5 with idempotence).
    #[arg(long, default_value_t = 5, value_name = "N")]
    max_in_flight: usize,
    /// With --producer (and for e2e): gRPC compression of produce requests.
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    compression: CompressionArg,
}

impl ProducerOptions {
    fn config(&self) -> ProducerConfig {
        ProducerConfig {
            linger: Duration::from_millis(self.linger_ms),
            batch_bytes: self.batch_bytes,
            idempotence: !self.no_idempotence,
            compression: self.compression.into(),
            max_in_flight_per_partition: self.max_in_flight,
            ..ProducerConfig::default()
        }
    }
}

/// Arguments of `flo bench e2e`.
#[derive(Debug, Args)]
pub struct BenchE2eArgs {
    /// Topic to produce to and consume from; created if missing.
    #[arg(long, default_value = "bench-e2e")]
    topic: String,
    /// Partitions of the topic, if it has to be created.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Replication factor of the topic, if it has to be created.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Size of each record's value in bytes (at least 8: the send time stamp).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(8..))]
    record_bytes: u64,
    /// Records per second to produce (about half the peak of the reference machine).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    rate: u64,
    /// How long to produce, in seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    duration_secs: u64,
    #[command(flatten)]
    producer_options: ProducerOptions,
}

/// Runs a bench subcommand.
pub async fn run(client: &Client, output: Output, command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Produce(args) if args.producer => bench_produce_with_producer(client, output, args).await,
        BenchCommand::Produce(args) => bench_produce(client, output, args).await,
        BenchCommand::E2e(args) => bench_e2e(client, output, args).await,
        BenchCommand::Consume(args) => crate::bench_consume::run(client, output, args).await,
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
        Some(
            (first..first + count)
                .map(|i| v1::Record { key: None, value: self.value(i), headers: Vec::new(), timestamp_ms: 0 })
                .collect(),
        )
    }

    /// Whether record `number` is still to be sent.
    fn more(&self, number: u64) -> bool {
        self.records.is_none_or(|total| number < total)
            && self.deadline.is_none_or(|deadline| Instant::now() < deadline)
    }

    /// The value of record `number`: a slice of the random pool.
    fn value(&self, number: u64) -> Bytes {
        let span = (self.pool.len() - self.record_bytes + 1) as u64;
        // Different records get different bytes; 7919 is prime, so starts spread.
        let start = (number.wrapping_mul(7919) % span) as usize;
        self.pool.slice(start..start + self.record_bytes)
    }
}

async fn bench_produce(client: &Client, output: Output, args: BenchProduceArgs) -> anyhow::Result<()> {
    let (plan, started) = prepare(client, &args).await?;
    let counters = Arc::new(Counters::default());
    let mut workers = JoinSet::new();
    for _ in 0..args.in_flight {
        let histogram = new_histogram()?;
        workers.spawn(worker(client.clone(), Arc::clone(&plan), Arc::clone(&counters), histogram));
    }
    let histogram = drive(workers, &counters, started).await?;
    let mode = format!("{} records per batch, {} batches in flight", args.batch_records, args.in_flight);
    report(output, &args, plan.partitions, &mode, &counters, &histogram, started.elapsed(), None)?;
    check_errors(&counters)
}

/// `flo bench produce --producer`: one task feeds records to the SDK producer as fast as it
/// takes them (its buffer is the backpressure), another awaits their acknowledgements.
async fn bench_produce_with_producer(client: &Client, output: Output, args: BenchProduceArgs) -> anyhow::Result<()> {
    let producer = client.producer(args.producer_options.config()).await?;
    let (plan, started) = prepare(client, &args).await?;
    let counters = Arc::new(Counters::default());
    let (acks_tx, acks_rx) = mpsc::channel(ACK_QUEUE);
    let mut workers = JoinSet::new();
    let feeder = feed(producer.clone(), Arc::clone(&plan), Arc::clone(&counters), acks_tx);
    let empty = new_histogram()?;
    workers.spawn(async move {
        feeder.await;
        empty
    });
    let collector = collect(acks_rx, Arc::clone(&counters), plan.record_bytes as u64, new_histogram()?);
    workers.spawn(async move { collector.await.0 });
    let histogram = drive(workers, &counters, started).await?;
    let elapsed = started.elapsed();
    producer.close().await;
    let stats = producer.stats();
    counters.batches.store(stats.batches, Ordering::Relaxed);
    let options = &args.producer_options;
    let mode = format!(
        "SDK producer (linger {} ms, batch {} B, {} in flight per partition, {}, compression {:?})",
        options.linger_ms,
        options.batch_bytes,
        options.max_in_flight,
        if options.no_idempotence { "not idempotent" } else { "idempotent" },
        options.compression
    );
    report(output, &args, plan.partitions, &mode, &counters, &histogram, elapsed, Some(stats))?;
    check_errors(&counters)
}

/// Creates the topic if needed and builds the plan; the run starts now.
async fn prepare(client: &Client, args: &BenchProduceArgs) -> anyhow::Result<(Arc<Plan>, Instant)> {
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
    Ok((plan, started))
}

/// Waits for the workers, printing a progress line every second; Ctrl-C stops new work.
/// Returns the workers' histograms merged.
async fn drive(
    mut workers: JoinSet<Histogram<u64>>,
    counters: &Counters,
    started: Instant,
) -> anyhow::Result<Histogram<u64>> {
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
                eprintln!("{}", progress_line(counters, started.elapsed(), records - previous_records));
                previous_records = records;
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                counters.stop.store(true, Ordering::Relaxed);
                eprintln!("interrupted: waiting for the batches in flight");
            }
        }
    }
    Ok(histogram)
}

/// Fails the command if any batch or record failed.
fn check_errors(counters: &Counters) -> anyhow::Result<()> {
    let errors = counters.errors.load(Ordering::Relaxed);
    if errors > 0 {
        let first = counters.first_error.get().map_or("unknown", String::as_str);
        anyhow::bail!("{} batches or records failed; first error: {first}", thousands(errors));
    }
    Ok(())
}

/// Acknowledgements queued between the feeder and the collector. The producer's buffer
/// bounds how many records are unresolved; this only decouples the two tasks.
const ACK_QUEUE: usize = 65_536;

/// A record's acknowledgement with the instant it was handed to the producer.
type Pending = (DeliveryFuture, Instant);

/// Hands records to the producer until the plan runs out or the run stops.
async fn feed(producer: Producer, plan: Arc<Plan>, counters: Arc<Counters>, acks: mpsc::Sender<Pending>) {
    let mut number = 0u64;
    while !counters.stop.load(Ordering::Relaxed) && plan.more(number) {
        let record = ProducerRecord::new(plan.topic.as_str(), plan.value(number));
        number += 1;
        if !hand_over(&producer, record, &counters, &acks).await {
            break;
        }
    }
}

/// Gives `record` to the producer and its acknowledgement to the collector; false when the
/// run must stop (the record was refused, or the collector is gone).
async fn hand_over(
    producer: &Producer,
    record: ProducerRecord,
    counters: &Counters,
    acks: &mpsc::Sender<Pending>,
) -> bool {
    let sent = Instant::now();
    match producer.send_nowait(record).await {
        Ok(delivery) => {
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            acks.send((delivery, sent)).await.is_ok()
        }
        Err(error) => {
            note_error(counters, &error);
            false
        }
    }
}

/// Awaits acknowledgements as they come (any order), counting records and recording each
/// record's send→ack latency. Returns the histogram and, per partition, one past the highest
/// acknowledged offset.
async fn collect(
    mut acks: mpsc::Receiver<Pending>,
    counters: Arc<Counters>,
    record_bytes: u64,
    mut histogram: Histogram<u64>,
) -> (Histogram<u64>, Vec<u64>) {
    let mut pending = FuturesUnordered::new();
    let mut ends: Vec<u64> = Vec::new();
    let mut input_done = false;
    loop {
        tokio::select! {
            item = acks.recv(), if !input_done => match item {
                Some((delivery, sent)) => pending.push(async move { (delivery.await, sent) }),
                None => input_done = true,
            },
            Some((result, sent)) = pending.next(), if !pending.is_empty() => {
                counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                match result {
                    Ok(ack) => {
                        histogram.saturating_record(micros(sent.elapsed()));
                        counters.records.fetch_add(1, Ordering::Relaxed);
                        counters.bytes.fetch_add(record_bytes, Ordering::Relaxed);
                        let index = ack.partition as usize;
                        if ends.len() <= index {
                            ends.resize(index + 1, 0);
                        }
                        ends[index] = ends[index].max(ack.offset + 1);
                    }
                    Err(error) => note_error(&counters, &error),
                }
            }
            else => break,
        }
    }
    (histogram, ends)
}

/// Counts a failure and stops the run on one that retrying cannot fix.
fn note_error(counters: &Counters, error: &ClientError) {
    counters.errors.fetch_add(1, Ordering::Relaxed);
    if !error.is_retriable() {
        counters.stop.store(true, Ordering::Relaxed);
    }
    let _ = counters.first_error.set(format!("{:#}", anyhow::Error::new(error.clone())));
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
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
                histogram.saturating_record(micros(latency));
                counters.records.fetch_add(count, Ordering::Relaxed);
                counters.bytes.fetch_add(count * plan.record_bytes as u64, Ordering::Relaxed);
                counters.batches.fetch_add(1, Ordering::Relaxed);
            }
            // A refusal (unknown topic, record too large) fails every batch alike: stop.
            Err(error) => note_error(&counters, &error),
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
pub(crate) async fn ensure_topic(
    client: &Client,
    topic: &str,
    partitions: u32,
    replication_factor: u32,
) -> anyhow::Result<u32> {
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
#[allow(clippy::too_many_arguments, reason = "one call site per mode; a struct would only rename them")]
fn report(
    output: Output,
    args: &BenchProduceArgs,
    partitions: u32,
    mode: &str,
    counters: &Counters,
    histogram: &Histogram<u64>,
    elapsed: Duration,
    producer: Option<ProducerStats>,
) -> anyhow::Result<()> {
    let records = counters.records.load(Ordering::Relaxed);
    let bytes = counters.bytes.load(Ordering::Relaxed);
    let batches = counters.batches.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let seconds = elapsed.as_secs_f64().max(1e-9);
    let msgs_per_sec = records as f64 / seconds;
    let mb_per_sec = bytes as f64 / seconds / 1e6;
    let latency = Quantiles::of(histogram);
    let (p50, p99, p999, max) = (latency.p50, latency.p99, latency.p999, latency.max);
    let per = if producer.is_some() { "per record, send to ack" } else { "per batch ack" };
    match output {
        Output::Json => print_json(&json!({
            "topic": args.topic,
            "partitions": partitions,
            "record_bytes": args.record_bytes,
            "mode": if producer.is_some() { "producer" } else { "batches" },
            "batch_records": args.batch_records,
            "in_flight": args.in_flight,
            "records": records,
            "batches": batches,
            "errors": errors,
            "elapsed_secs": seconds,
            "msgs_per_sec": msgs_per_sec,
            "mb_per_sec": mb_per_sec,
            "latency_ms": { "p50": p50, "p99": p99, "p999": p999, "max": max },
            "producer": producer.map(|stats| stats_json(&stats)),
        })),
        Output::Table => print_text(&format!(
            "topic {} ({partitions} partitions), {} B records, {mode}\n\
             records     {}\n\
             batches     {}\n\
             errors      {}\n\
             elapsed     {seconds:.2} s\n\
             throughput  {} msgs/s, {mb_per_sec:.1} MB/s\n\
             latency     p50 {p50:.3} ms, p99 {p99:.3} ms, p999 {p999:.3} ms, max {max:.3} ms ({per})\n{}",
            args.topic,
            args.record_bytes,
            thousands(records),
            thousands(batches),
            thousands(errors),
            thousands(msgs_per_sec as u64),
            producer.map(|stats| stats_line(&stats)).unwrap_or_default(),
        )),
    }
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
struct Quantiles {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Quantiles {
    /// Of a histogram in microseconds; zeros when it is empty.
    fn of(histogram: &Histogram<u64>) -> Quantiles {
        if histogram.is_empty() {
            return Quantiles::default();
        }
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        Quantiles { p50: ms(0.5), p90: ms(0.9), p99: ms(0.99), p999: ms(0.999), max: histogram.max() as f64 / 1000.0 }
    }

    fn json(&self) -> serde_json::Value {
        json!({ "p50": self.p50, "p90": self.p90, "p99": self.p99, "p999": self.p999, "max": self.max })
    }

    fn text(&self) -> String {
        format!(
            "p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

fn stats_json(stats: &ProducerStats) -> serde_json::Value {
    json!({
        "requests": stats.requests,
        "batches": stats.batches,
        "resends_in_doubt": stats.resends_in_doubt,
        "resends_reordered": stats.resends_reordered,
        "epoch_bumps": stats.epoch_bumps,
    })
}

fn stats_line(stats: &ProducerStats) -> String {
    format!(
        "producer    {} requests for {} batches ({} resent in doubt, {} resent after overtaking, {} epoch bumps)\n",
        thousands(stats.requests),
        thousands(stats.batches),
        thousands(stats.resends_in_doubt),
        thousands(stats.resends_reordered),
        thousands(stats.epoch_bumps),
    )
}

/// How long consumers may take, after the producer stops, to read what it wrote.
const E2E_DRAIN: Duration = Duration::from_secs(30);
/// Long-poll wait of the consumers' fetches: short, so they notice the end of the run.
const E2E_FETCH_WAIT_MS: u32 = 200;

/// `flo bench e2e`: produce at `--rate` with the SDK producer while one task per partition
/// tails it, and measure send→consume latency from the stamp in each record's value.
async fn bench_e2e(client: &Client, output: Output, args: BenchE2eArgs) -> anyhow::Result<()> {
    let partitions = ensure_topic(client, &args.topic, args.partitions, args.replication_factor).await?;
    let starts = start_offsets(client, &args.topic, partitions).await?;
    let producer = client.producer(args.producer_options.config()).await?;
    let record_bytes = usize::try_from(args.record_bytes).unwrap_or(usize::MAX);
    let mut pool = vec![0u8; PAYLOAD_POOL_BYTES.max(record_bytes * 2)];
    rand::rngs::StdRng::seed_from_u64(0x5eed).fill_bytes(&mut pool);
    let pool = Bytes::from(pool);

    // Consumers first, so they are polling before the first record lands.
    let started = Instant::now();
    let (ends_tx, ends_rx) = tokio::sync::watch::channel::<Option<Vec<u64>>>(None);
    let consumed = Arc::new(AtomicU64::new(0));
    let mut consumers = JoinSet::new();
    for (partition, start) in starts.iter().enumerate() {
        consumers.spawn(tail(
            client.clone(),
            args.topic.clone(),
            partition as u32,
            *start,
            started,
            ends_rx.clone(),
            Arc::clone(&consumed),
            new_histogram()?,
        ));
    }

    let counters = Arc::new(Counters::default());
    let (acks_tx, acks_rx) = mpsc::channel(ACK_QUEUE);
    let collector = tokio::spawn(collect(acks_rx, Arc::clone(&counters), args.record_bytes, new_histogram()?));
    let feeder = paced_feed(
        producer.clone(),
        args.topic.clone(),
        args.rate,
        Duration::from_secs(args.duration_secs),
        started,
        pool,
        record_bytes,
        Arc::clone(&counters),
        acks_tx,
    );
    let mut feeder = tokio::spawn(feeder);
    let mut ticker = tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let (mut previous_sent, mut previous_consumed) = (0, 0);
    let mut interrupted = false;
    let produced_for = loop {
        tokio::select! {
            joined = &mut feeder => {
                joined?;
                break started.elapsed();
            }
            _ = ticker.tick() => {
                let sent = counters.next_batch.load(Ordering::Relaxed);
                let read = consumed.load(Ordering::Relaxed);
                eprintln!(
                    "{:>4.0}s  sent {} msgs/s  acked {}  consumed {} msgs/s  errors {}",
                    started.elapsed().as_secs_f64(),
                    thousands(sent - previous_sent),
                    thousands(counters.records.load(Ordering::Relaxed)),
                    thousands(read - previous_consumed),
                    thousands(counters.errors.load(Ordering::Relaxed)),
                );
                (previous_sent, previous_consumed) = (sent, read);
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                counters.stop.store(true, Ordering::Relaxed);
                eprintln!("interrupted: waiting for the records in flight");
            }
        }
    };
    producer.close().await;
    let (ack_histogram, acked_ends) = collector.await?;
    // Consumers stop at one past the last acknowledged offset of their partition.
    let ends: Vec<u64> =
        (0..partitions as usize).map(|p| acked_ends.get(p).copied().unwrap_or(0).max(starts[p])).collect();
    let _ = ends_tx.send(Some(ends.clone()));
    let mut latency = new_histogram()?;
    let drain_deadline = Instant::now() + E2E_DRAIN;
    while let Some(joined) = tokio::time::timeout_at(drain_deadline, consumers.join_next()).await.ok().flatten() {
        latency.add(&joined??)?;
    }
    consumers.abort_all();
    let sent = counters.next_batch.load(Ordering::Relaxed);
    let acked = counters.records.load(Ordering::Relaxed);
    let expected: u64 = ends.iter().zip(&starts).map(|(end, start)| end - start).sum();
    let read = consumed.load(Ordering::Relaxed);
    let errors = counters.errors.load(Ordering::Relaxed);
    let seconds = produced_for.as_secs_f64().max(1e-9);
    let e2e = Quantiles::of(&latency);
    let ack = Quantiles::of(&ack_histogram);
    let stats = producer.stats();
    match output {
        Output::Json => print_json(&json!({
            "topic": args.topic,
            "partitions": partitions,
            "record_bytes": args.record_bytes,
            "target_rate": args.rate,
            "elapsed_secs": seconds,
            "sent": sent,
            "acked": acked,
            "errors": errors,
            "produce_rate": acked as f64 / seconds,
            "consumed": read,
            "expected": expected,
            "e2e_latency_ms": e2e.json(),
            "ack_latency_ms": ack.json(),
            "producer": stats_json(&stats),
        }))?,
        Output::Table => print_text(&format!(
            "topic {} ({partitions} partitions), {} B records, target {} msgs/s for {} s\n\
             produced     {} records acknowledged in {seconds:.2} s ({} msgs/s), {} errors\n\
             consumed     {} of {} records\n\
             e2e latency  {} (send to consume)\n\
             ack latency  {} (send to ack)\n{}",
            args.topic,
            args.record_bytes,
            thousands(args.rate),
            args.duration_secs,
            thousands(acked),
            thousands((acked as f64 / seconds) as u64),
            thousands(errors),
            thousands(read),
            thousands(expected),
            e2e.text(),
            ack.text(),
            stats_line(&stats),
        ))?,
    }
    check_errors(&counters)?;
    if read < expected {
        anyhow::bail!(
            "consumers read {} of the {} records acknowledged within {E2E_DRAIN:?} after the producer stopped",
            thousands(read),
            thousands(expected)
        );
    }
    Ok(())
}

/// The high watermark of every partition of `topic`, by partition index.
async fn start_offsets(client: &Client, topic: &str, partitions: u32) -> anyhow::Result<Vec<u64>> {
    let mut starts = vec![0u64; partitions as usize];
    for offsets in client.list_offsets(topic).await? {
        if let Some(start) = starts.get_mut(offsets.partition as usize) {
            *start = offsets.high_watermark;
        }
    }
    Ok(starts)
}

/// Sends records at `rate` per second for `duration`, each value starting with the send time
/// (microseconds since `started`, little-endian), the rest from `pool`.
#[allow(clippy::too_many_arguments, reason = "a task's inputs, passed once")]
async fn paced_feed(
    producer: Producer,
    topic: String,
    rate: u64,
    duration: Duration,
    started: Instant,
    pool: Bytes,
    record_bytes: usize,
    counters: Arc<Counters>,
    acks: mpsc::Sender<Pending>,
) {
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let span = (pool.len() - record_bytes + 1) as u64;
    let mut number = 0u64;
    while !counters.stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate as f64) as u64;
        while number < due && !counters.stop.load(Ordering::Relaxed) {
            let start = (number.wrapping_mul(7919) % span) as usize;
            let mut value = BytesMut::with_capacity(record_bytes);
            value.put_u64_le(micros(started.elapsed()));
            value.extend_from_slice(&pool[start + 8..start + record_bytes]);
            let record = ProducerRecord::new(topic.as_str(), value.freeze());
            number += 1;
            // In this bench `next_batch` counts records sent, for the progress line.
            counters.next_batch.store(number, Ordering::Relaxed);
            if !hand_over(&producer, record, &counters, &acks).await {
                return;
            }
        }
    }
}

/// Tails one partition from `from` with long-poll fetches, recording for each record the
/// time since the stamp in its value. Ends once `ends` names an end offset it has reached.
#[allow(clippy::too_many_arguments, reason = "a task's inputs, passed once")]
async fn tail(
    client: Client,
    topic: String,
    partition: u32,
    from: u64,
    started: Instant,
    mut ends: tokio::sync::watch::Receiver<Option<Vec<u64>>>,
    consumed: Arc<AtomicU64>,
    mut histogram: Histogram<u64>,
) -> anyhow::Result<Histogram<u64>> {
    let mut next = from;
    loop {
        let end = ends.borrow_and_update().as_ref().map(|ends| ends.get(partition as usize).copied().unwrap_or(0));
        if end.is_some_and(|end| next >= end) {
            return Ok(histogram);
        }
        let response = match client.fetch(&topic, partition, next, 10_000, 0, E2E_FETCH_WAIT_MS).await {
            Ok(response) => response,
            Err(error) if error.is_retriable() => {
                // The router already retried for seconds; pause before asking again.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(error) => return Err(anyhow::Error::new(error).context(format!("tailing {topic}/{partition}"))),
        };
        let now = micros(started.elapsed());
        for fetched in response.records {
            next = fetched.offset + 1;
            let Some(record) = fetched.record else { continue };
            let Some(stamp) = record.value.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { continue };
            histogram.saturating_record(now.saturating_sub(u64::from_le_bytes(stamp)));
            consumed.fetch_add(1, Ordering::Relaxed);
        }
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

//! The client workload: create a topic, produce keyed batches of unique values until the
//! nemesis has healed every fault, check that producing works again, then read every
//! partition back from offset 0. Everything the client is told goes into the shared
//! [`History`](crate::checker::History).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::bail;
use flotilla_client::{Client, ClientConfig, ClientError, ErrorCode, v1};
use flotilla_types::PartitionId;
use tokio::time::Instant;

use crate::checker::Ack;
use crate::{NODES, Shared, cluster};

/// The topic the workload writes.
pub const TOPIC: &str = "sim-orders";
/// Its partitions.
pub const PARTITIONS: u32 = 2;
/// Its replication factor: every node holds every partition.
const REPLICATION_FACTOR: u32 = 3;
/// Records per produce call.
const BATCH_RECORDS: u64 = 6;
/// Distinct keys; records with one key share a partition.
const KEYS: u64 = 16;
/// Pause between two produce calls.
const BATCH_PAUSE: Duration = Duration::from_millis(50);
/// Attempts per batch while faults are active; then the workload moves on.
const ATTEMPTS_DURING_FAULTS: u32 = 3;
/// Batches produced after every fault is healed; each must eventually be acknowledged.
const HEALED_BATCHES: u64 = 20;
/// Attempts per batch once healed: bounds how long the cluster may take to recover.
const ATTEMPTS_WHEN_HEALED: u32 = 20;
/// Pause between two attempts of one batch.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// Time for elections and catch-up after the last repair, before the healed phase starts.
const SETTLE: Duration = Duration::from_secs(2);
/// Quiet time between the last produce and the final read.
const QUIET: Duration = Duration::from_secs(3);
/// How long the cluster may take to create the topic at startup.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// How long the final read of one partition may take.
const FINAL_READ_DEADLINE: Duration = Duration::from_secs(60);
/// Records asked for per fetch.
const FETCH_RECORDS: u32 = 500;

/// The brokers every client is given.
pub fn brokers() -> Vec<String> {
    (1..=NODES).map(cluster::client_address).collect()
}

/// A client over turmoil sockets with timeouts sized for the simulation.
pub fn client(retries_max: u32) -> anyhow::Result<Client> {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(3),
        connect_timeout: Duration::from_secs(1),
        keepalive_interval: Duration::from_secs(1),
        keepalive_timeout: Duration::from_secs(2),
        retries_max,
        ..ClientConfig::default()
    };
    Ok(Client::connect_with(brokers(), config, cluster::connector())?)
}

/// Runs the workload to the end.
pub async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    // One attempt per call: a produce the client retried by itself after a timeout could land
    // twice although the call succeeded, and the checker could not tell that from a bug. The
    // workload retries instead, and knows which values it sent more than once.
    let producer = client(0)?;
    create_topic(&shared).await?;
    shared.history.lock().partitions = PARTITIONS;
    shared.topic_ready.store(true, Ordering::SeqCst);
    shared.note(format!("topic {TOPIC} ready"));

    let mut next_value = 0u64;
    while !shared.faults_done.load(Ordering::SeqCst) {
        let batch = next_batch(&mut next_value);
        produce(&producer, &shared, batch, ATTEMPTS_DURING_FAULTS).await;
        tokio::time::sleep(BATCH_PAUSE).await;
    }

    tokio::time::sleep(SETTLE).await;
    shared.note("faults healed; every batch must now be acknowledged");
    for _ in 0..HEALED_BATCHES {
        let batch = next_batch(&mut next_value);
        let first = batch.first().map(|(_, v)| v.clone()).unwrap_or_default();
        if !produce(&producer, &shared, batch, ATTEMPTS_WHEN_HEALED).await {
            shared.history.lock().liveness_failures.push(format!(
                "the batch starting with {first:?} was not acknowledged in {ATTEMPTS_WHEN_HEALED} attempts after every fault was healed"
            ));
            // One such failure says it all; more would only run the clock out.
            break;
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }

    tokio::time::sleep(QUIET).await;
    final_read(&shared).await
}

/// Creates the topic, waiting for the cluster to form. Creation is not idempotent, so a
/// retry that finds the topic already there counts as success.
async fn create_topic(shared: &Shared) -> anyhow::Result<()> {
    let admin = client(3)?;
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        match admin.create_topic(TOPIC, PARTITIONS, REPLICATION_FACTOR).await {
            Ok(_) => return Ok(()),
            Err(err) if err.code() == Some(ErrorCode::TopicExists) => return Ok(()),
            Err(err) if Instant::now() < deadline => {
                shared.note(format!("create topic: {}", error_chain(&err)));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => bail!("the cluster did not create topic {TOPIC:?} within {STARTUP_DEADLINE:?}: {err}"),
        }
    }
}

/// The next batch of (key, value) pairs; values are unique across the run.
fn next_batch(next_value: &mut u64) -> Vec<(String, String)> {
    (0..BATCH_RECORDS)
        .map(|_| {
            let n = *next_value;
            *next_value += 1;
            (format!("k{:02}", n % KEYS), format!("v{n:06}"))
        })
        .collect()
}

/// Produces `batch` in up to `attempts` calls, retrying only the records not yet
/// acknowledged. Returns whether every record was acknowledged.
async fn produce(client: &Client, shared: &Shared, mut batch: Vec<(String, String)>, attempts: u32) -> bool {
    {
        let mut history = shared.history.lock();
        history.attempted.extend(batch.iter().map(|(_, value)| value.clone()));
    }
    for attempt in 1..=attempts {
        if attempt > 1 {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        let records = batch
            .iter()
            .map(|(key, value)| v1::Record {
                key: Some(key.clone().into_bytes().into()),
                value: value.clone().into_bytes().into(),
                ..v1::Record::default()
            })
            .collect();
        let (acks, failure) = match client.produce(TOPIC, None, records).await {
            Ok(acks) => (acks.into_iter().map(Some).collect(), None),
            Err(ClientError::PartiallyAcknowledged { acks, source, .. }) => (acks, Some(source)),
            Err(err) => (vec![None; batch.len()], Some(Box::new(err))),
        };
        let mut unacknowledged = Vec::new();
        {
            let mut history = shared.history.lock();
            for ((key, value), ack) in batch.into_iter().zip(acks) {
                match ack {
                    Some(ack) => {
                        history.acks.push(Ack { partition: ack.partition, offset: ack.offset, value: value.clone() });
                        shared.note(format!("ack p{} o{} {value}", ack.partition, ack.offset));
                    }
                    None => {
                        history.ambiguous.insert(value.clone());
                        unacknowledged.push((key, value));
                    }
                }
            }
        }
        if let Some(failure) = failure {
            let failure = error_chain(&*failure);
            shared.note(format!(
                "produce attempt {attempt} left {} records unacknowledged: {failure}",
                unacknowledged.len()
            ));
        }
        if unacknowledged.is_empty() {
            return true;
        }
        batch = unacknowledged;
    }
    false
}

/// An error and its causes, outermost first: the client's "gave up after 1 attempts" alone
/// does not say what went wrong.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Reads every partition from offset 0 with a fresh client, until at least the highest
/// acknowledged offset and the high watermark are reached.
async fn final_read(shared: &Shared) -> anyhow::Result<()> {
    let reader = client(10)?;
    for partition in 0..PARTITIONS {
        let expected_end = {
            let history = shared.history.lock();
            history.acks.iter().filter(|a| a.partition == partition).map(|a| a.offset + 1).max().unwrap_or(0)
        };
        let (records, complete) = read_partition(&reader, shared, partition, expected_end).await;
        shared.note(format!("final read of p{partition}: {} records", records.len()));
        let mut history = shared.history.lock();
        if let Some(problem) = complete {
            history.liveness_failures.push(problem);
        }
        history.reads.insert(partition, records);
    }
    Ok(())
}

/// One partition's records from offset 0, and a problem if the read could not finish.
async fn read_partition(
    reader: &Client,
    shared: &Shared,
    partition: PartitionId,
    expected_end: u64,
) -> (Vec<(u64, String)>, Option<String>) {
    let deadline = Instant::now() + FINAL_READ_DEADLINE;
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut high_watermark = 0u64;
    while Instant::now() < deadline {
        match reader.fetch(TOPIC, partition, offset, FETCH_RECORDS, 0, 0).await {
            Ok(response) => {
                high_watermark = response.high_watermark;
                if response.records.is_empty() {
                    if offset >= high_watermark && offset >= expected_end {
                        return (records, None);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                for fetched in response.records {
                    let value =
                        fetched.record.map(|r| String::from_utf8_lossy(&r.value).into_owned()).unwrap_or_default();
                    records.push((fetched.offset, value));
                    offset = fetched.offset + 1;
                }
            }
            Err(err) => {
                shared.note(format!("final read of p{partition} at offset {offset}: {}", error_chain(&err)));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let problem = format!(
        "the final read of partition {partition} stopped at offset {offset} (high watermark {high_watermark}, highest acknowledged offset {}) after {FINAL_READ_DEADLINE:?}",
        expected_end.saturating_sub(1)
    );
    (records, Some(problem))
}

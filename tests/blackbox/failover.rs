//! Acknowledged records survive crashes: SIGKILL of a partition leader while producers run,
//! and SIGKILL of the whole cluster. Afterwards every acknowledged record is read back at its
//! acknowledged offset, and the replicas converge again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use flotilla_client::{Client, ClientError, v1};
use flotilla_tests::{Cluster, read_partition, record};

/// Time allowed for a recovery step (failover, catch-up, restart). Generous: a loaded CI
/// machine runs other clusters at the same time; the failover target itself is measured by
/// `flo bench`, not here.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// One acknowledged record.
#[derive(Debug, Clone)]
struct Ack {
    partition: u32,
    offset: u64,
    value: String,
}

/// What the producers saw.
#[derive(Debug, Default)]
struct ProduceLog {
    /// Acknowledged records, per producer, in acknowledgement order.
    acked: BTreeMap<usize, Vec<Ack>>,
    /// Values whose produce failed: they may or may not be in the log.
    unacked: Vec<String>,
    /// Failed produce calls, for the report.
    errors: Vec<String>,
}

impl ProduceLog {
    fn acked_count(&self) -> usize {
        self.acked.values().map(Vec::len).sum()
    }

    fn acked_in(&self, partition: u32) -> usize {
        self.acked.values().flatten().filter(|ack| ack.partition == partition).count()
    }

    fn all_acks(&self) -> Vec<Ack> {
        self.acked.values().flatten().cloned().collect()
    }
}

/// Produces batches of `batch` keyed records in a loop until `stop`, logging every outcome.
/// Values are `p{producer}-{seq}`, unique across the run.
async fn produce_until_stopped(
    client: Client,
    topic: &'static str,
    producer: usize,
    batch: usize,
    log: Arc<Mutex<ProduceLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut seq = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let values: Vec<String> = (seq..seq + batch).map(|s| format!("p{producer}-{s}")).collect();
        let records: Vec<v1::Record> = values
            .iter()
            .enumerate()
            .map(|(i, value)| record(&format!("k{}", (seq + i) % 16), value.as_str()))
            .collect();
        seq += batch;
        let result = client.produce(topic, None, records).await;
        let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (acks, error): (Vec<Option<v1::RecordAck>>, Option<ClientError>) = match result {
            Ok(acks) => (acks.into_iter().map(Some).collect(), None),
            Err(ClientError::PartiallyAcknowledged { acks, source, .. }) => (acks, Some(*source)),
            Err(error) => (vec![None; values.len()], Some(error)),
        };
        if let Some(error) = error {
            log.errors.push(error.to_string());
        }
        for (value, ack) in values.into_iter().zip(acks) {
            match ack {
                Some(ack) => log.acked.entry(producer).or_default().push(Ack {
                    partition: ack.partition,
                    offset: ack.offset,
                    value,
                }),
                None => log.unacked.push(value),
            }
        }
    }
}

/// Waits until the log shows `check` true, failing after `RECOVERY_TIMEOUT`.
async fn wait_log(
    cluster: &Cluster,
    log: &Arc<Mutex<ProduceLog>>,
    what: &str,
    check: impl Fn(&ProduceLog) -> bool,
) -> anyhow::Result<()> {
    cluster
        .wait_for(what, RECOVERY_TIMEOUT, || {
            let log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let done = check(&log);
            let summary = format!("{} acked, {} failed calls so far", log.acked_count(), log.errors.len());
            async move { if done { Ok(()) } else { bail!("{summary}") } }
        })
        .await
}

/// The leader of `topic`/`partition`, once one is known.
async fn leader_of(cluster: &Cluster, client: &Client, topic: &str, partition: u32) -> anyhow::Result<u64> {
    cluster
        .wait_for(&format!("a leader of {topic}/{partition}"), RECOVERY_TIMEOUT, || async {
            let description = client.describe_topic(topic).await?;
            let found = description.partitions.iter().find(|p| p.partition == partition);
            match found.map(|p| p.leader_id) {
                Some(leader) if leader != 0 => Ok(leader),
                _ => bail!("no leader yet: {description:?}"),
            }
        })
        .await
}

/// What the read-back found.
#[derive(Debug)]
struct Verified {
    /// Records in the log, all partitions.
    records: usize,
    /// Values present more than once (a retried produce whose first ack was lost).
    duplicates: usize,
    /// Values whose produce failed but which made it into the log.
    unacked_present: usize,
    /// High watermark per partition.
    high_watermarks: Vec<u64>,
}

/// Reads every partition of `topic` from the start and checks that every acknowledged record
/// is at its acknowledged offset, that offsets are dense, and that nothing we did not produce
/// is there. First waits until each high watermark covers the acknowledged offsets (a new
/// leader learns the commit point only after committing an entry of its own term).
async fn verify_acked(
    cluster: &Cluster,
    client: &Client,
    topic: &str,
    partitions: u32,
    acks: &[Ack],
    unacked: &[String],
) -> anyhow::Result<Verified> {
    let mut needed = vec![0u64; partitions as usize];
    for ack in acks {
        let slot = needed.get_mut(ack.partition as usize).context("ack for a partition that does not exist")?;
        *slot = (*slot).max(ack.offset + 1);
    }
    let high_watermarks = cluster
        .wait_for("high watermarks to cover every acknowledged offset", RECOVERY_TIMEOUT, || async {
            let mut offsets = client.list_offsets(topic).await?;
            offsets.sort_by_key(|o| o.partition);
            let hws: Vec<u64> = offsets.iter().map(|o| o.high_watermark).collect();
            ensure!(hws.len() == needed.len(), "list_offsets returned {} partitions", hws.len());
            for (partition, (hw, need)) in hws.iter().zip(&needed).enumerate() {
                ensure!(hw >= need, "partition {partition}: high watermark {hw}, acknowledged offsets up to {need}");
            }
            ensure!(offsets.iter().all(|o| o.log_start_offset == 0), "retention removed records: {offsets:?}");
            Ok(hws)
        })
        .await?;

    let mut log: BTreeMap<(u32, u64), String> = BTreeMap::new();
    for (partition, &hw) in high_watermarks.iter().enumerate() {
        let partition = partition as u32;
        let records = cluster
            .wait_for(&format!("reading {topic}/{partition}"), RECOVERY_TIMEOUT, || {
                read_partition(client, topic, partition, 0, hw)
            })
            .await?;
        for fetched in records {
            let value = fetched.record.map(|r| String::from_utf8_lossy(&r.value).into_owned()).unwrap_or_default();
            log.insert((partition, fetched.offset), value);
        }
    }

    let mut wrong = Vec::new();
    for ack in acks {
        let found = log.get(&(ack.partition, ack.offset));
        if found != Some(&ack.value) {
            wrong.push(format!("{} acked at {}/{} but the log holds {found:?}", ack.value, ack.partition, ack.offset));
        }
    }
    ensure!(
        wrong.is_empty(),
        "{} of {} acknowledged records are not at their offset (lost or overwritten), e.g.:\n  {}",
        wrong.len(),
        acks.len(),
        wrong[..wrong.len().min(10)].join("\n  ")
    );

    let acked_values: std::collections::BTreeSet<&str> = acks.iter().map(|a| a.value.as_str()).collect();
    let unacked_values: std::collections::BTreeSet<&str> = unacked.iter().map(String::as_str).collect();
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for ((partition, offset), value) in &log {
        ensure!(
            acked_values.contains(value.as_str()) || unacked_values.contains(value.as_str()),
            "{topic}/{partition} offset {offset} holds {value:?}, which nobody produced"
        );
        *copies.entry(value.as_str()).or_default() += 1;
    }
    Ok(Verified {
        records: log.len(),
        duplicates: copies.values().filter(|&&n| n > 1).count(),
        unacked_present: copies.keys().filter(|v| unacked_values.contains(*v)).count(),
        high_watermarks,
    })
}

/// Waits until every replica of every partition of `topic` is reachable and has applied the
/// whole log (the same log end offset as the leader's high watermark).
async fn wait_replicas_converged(cluster: &Cluster, client: &Client, topic: &str) -> anyhow::Result<()> {
    cluster
        .wait_for("every replica to catch up with its leader", RECOVERY_TIMEOUT, || async {
            let description = client.describe_topic(topic).await?;
            for p in &description.partitions {
                ensure!(p.leader_id != 0, "partition {} has no leader", p.partition);
                ensure!(
                    p.replica_states.len() == p.replicas.len(),
                    "partition {}: {} replica states for replicas {:?}",
                    p.partition,
                    p.replica_states.len(),
                    p.replicas
                );
                for r in &p.replica_states {
                    ensure!(
                        r.reachable && r.log_end_offset == p.high_watermark,
                        "partition {}: replica on node {} (reachable {}) is at {}, high watermark {}",
                        p.partition,
                        r.node_id,
                        r.reachable,
                        r.log_end_offset,
                        p.high_watermark
                    );
                }
            }
            Ok(())
        })
        .await
}

/// Each producer waits for one batch's ack before sending the next, so in every partition its
/// acknowledged offsets must grow in acknowledgement order.
fn check_producer_order(log: &ProduceLog) -> anyhow::Result<()> {
    for (producer, acks) in &log.acked {
        let mut last: BTreeMap<u32, &Ack> = BTreeMap::new();
        for ack in acks {
            if let Some(previous) = last.get(&ack.partition) {
                ensure!(
                    previous.offset < ack.offset,
                    "producer {producer}: {} was acked at {}/{} after {} at offset {}",
                    ack.value,
                    ack.partition,
                    ack.offset,
                    previous.value,
                    previous.offset
                );
            }
            last.insert(ack.partition, ack);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_a_partition_leader_mid_stream_loses_no_acknowledged_record() -> anyhow::Result<()> {
    const TOPIC: &str = "events";
    const PARTITIONS: u32 = 3;
    const PRODUCERS: usize = 4;
    const BATCH: usize = 10;
    /// Acks wanted in each phase: before the kill, while the node is down, after its restart.
    const PER_PHASE: usize = 1500;

    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic(TOPIC, PARTITIONS, 3).await?;
    for partition in 0..PARTITIONS {
        leader_of(&cluster, &client, TOPIC, partition).await?;
    }

    let log = Arc::new(Mutex::new(ProduceLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| tokio::spawn(produce_until_stopped(client.clone(), TOPIC, p, BATCH, log.clone(), stop.clone())))
        .collect();
    let result = async {
        wait_log(&cluster, &log, "acks before the kill", |log| log.acked_count() >= PER_PHASE).await?;
        let victim = leader_of(&cluster, &client, TOPIC, 0).await?;
        let before: Vec<usize> = {
            let log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            (0..PARTITIONS).map(|p| log.acked_in(p)).collect()
        };
        cluster.kill9(victim)?;
        eprintln!("killed node {victim}, the leader of {TOPIC}/0, after {} acks", before.iter().sum::<usize>());
        // Every partition, the victim's included, must take writes again.
        wait_log(&cluster, &log, "every partition to take writes after the kill", |log| {
            (0..PARTITIONS).all(|p| log.acked_in(p) >= before[p as usize] + PER_PHASE / PARTITIONS as usize)
        })
        .await?;
        let down = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).acked_count();
        cluster.restart(victim).await?;
        wait_log(&cluster, &log, "acks after the restart", |log| log.acked_count() >= down + PER_PHASE).await?;
        Ok::<u64, anyhow::Error>(victim)
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await.context("a producer task panicked")?;
    }
    let victim = result?;

    let log = Arc::into_inner(log).context("producers still hold the log")?;
    let log = log.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    check_producer_order(&log)?;
    let acks = log.all_acks();
    let verified = verify_acked(&cluster, &client, TOPIC, PARTITIONS, &acks, &log.unacked).await?;
    eprintln!(
        "node {victim} killed and restarted: {} acked, {} unacked ({} failed calls), {} records in the log \
         (high watermarks {:?}), {} duplicated values, {} unacked values present",
        acks.len(),
        log.unacked.len(),
        log.errors.len(),
        verified.records,
        verified.high_watermarks,
        verified.duplicates,
        verified.unacked_present
    );
    wait_replicas_converged(&cluster, &client, TOPIC).await?;
    // The restarted node is back in the cluster, not just in its partitions.
    cluster.wait_ready(RECOVERY_TIMEOUT).await
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_every_node_at_once_loses_no_acknowledged_record() -> anyhow::Result<()> {
    const TOPIC: &str = "durable";
    const PARTITIONS: u32 = 3;
    const BATCHES: usize = 30;
    const BATCH: usize = 100;

    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic(TOPIC, PARTITIONS, 3).await?;
    let mut acks = Vec::new();
    for b in 0..BATCHES {
        let values: Vec<String> = (0..BATCH).map(|i| format!("r-{}", b * BATCH + i)).collect();
        let records = values.iter().enumerate().map(|(i, v)| record(&format!("k{}", i % 20), v.as_str())).collect();
        let answer = client.produce(TOPIC, None, records).await.with_context(|| format!("producing batch {b}"))?;
        ensure!(answer.len() == BATCH, "batch {b}: {} acks for {BATCH} records", answer.len());
        acks.extend(answer.into_iter().zip(values).map(|(a, value)| Ack {
            partition: a.partition,
            offset: a.offset,
            value,
        }));
    }

    let ids = cluster.node_ids();
    for &id in &ids {
        cluster.kill9(id)?;
    }
    cluster.restart_many(&ids).await?;
    cluster.wait_ready(RECOVERY_TIMEOUT).await?;

    // A fresh client: the old one's cached leaders are all dead.
    let client = cluster.client()?;
    let verified = verify_acked(&cluster, &client, TOPIC, PARTITIONS, &acks, &[]).await?;
    ensure!(
        verified.records == acks.len(),
        "{} records in the log for {} acknowledged (nothing failed, so nothing may be duplicated)",
        verified.records,
        acks.len()
    );

    // Offsets are never reused after a crash: the next record of each partition goes right
    // after the recovered log.
    for partition in 0..PARTITIONS {
        let answer = client
            .produce(TOPIC, Some(partition), vec![record("after", "after-restart")])
            .await
            .with_context(|| format!("producing to {TOPIC}/{partition} after the restart"))?;
        let hw = verified.high_watermarks[partition as usize];
        ensure!(
            answer.len() == 1 && answer[0].offset == hw,
            "{TOPIC}/{partition}: the first record after the restart got {answer:?}, expected offset {hw}"
        );
    }
    wait_replicas_converged(&cluster, &client, TOPIC).await?;
    cluster.check_running()
}

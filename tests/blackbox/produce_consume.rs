//! Records piped through `flo produce` come back from `flo consume` exactly once, at the offset
//! they were acknowledged with, in produce order per key, with dense offsets per partition.

use std::collections::BTreeMap;

use anyhow::{Context, bail, ensure};
use flotilla_tests::{Cluster, stdout_of};
use flotilla_types::partition_for_key;
use serde_json::Value;

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;
const RECORDS: usize = 10_000;
const KEYS: usize = 50;

#[tokio::test(flavor = "multi_thread")]
async fn keyed_lines_round_trip_through_the_cli() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let output = cluster.flo(&["topic", "create", TOPIC, "-p", "3", "-r", "3", "-o", "json"], None).await?;
    let created: Value = serde_json::from_str(&stdout_of(&output, "flo topic create")?)?;
    ensure!(created["partitions"] == PARTITIONS && created["replication_factor"] == 3, "created {created}");

    // Line n is `key{n % KEYS}:value-n`.
    let key_of = |n: usize| format!("key{}", n % KEYS);
    let input: String = (0..RECORDS).map(|n| format!("{}:value-{n}\n", key_of(n))).collect();
    let output =
        cluster.flo(&["produce", TOPIC, "--key-separator", ":", "-o", "json"], Some(input.into_bytes())).await?;
    let acks: Vec<Value> = stdout_of(&output, "flo produce")?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("flo produce printed a line that is not JSON")?;
    ensure!(acks.len() == RECORDS, "flo produce acknowledged {} of {RECORDS} records", acks.len());
    // Acks come in input order: ack n is where line n landed.
    let mut landed: BTreeMap<(u64, u64), usize> = BTreeMap::new();
    for (n, ack) in acks.iter().enumerate() {
        let partition = ack["partition"].as_u64().with_context(|| format!("ack {n} has no partition: {ack}"))?;
        let offset = ack["offset"].as_u64().with_context(|| format!("ack {n} has no offset: {ack}"))?;
        ensure!(ack["key"] == key_of(n).as_str(), "ack {n} names key {} instead of {}", ack["key"], key_of(n));
        let expected = u64::from(partition_for_key(key_of(n).as_bytes(), PARTITIONS));
        ensure!(partition == expected, "{} went to partition {partition}, murmur2 says {expected}", key_of(n));
        if let Some(other) = landed.insert((partition, offset), n) {
            bail!("lines {other} and {n} were both acknowledged at partition {partition} offset {offset}");
        }
    }

    let output =
        cluster.flo(&["consume", TOPIC, "--from-beginning", "-o", "json", "--timeout-ms", "3000"], None).await?;
    let consumed: Vec<Value> = stdout_of(&output, "flo consume")?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("flo consume printed a line that is not JSON")?;

    let mut seen = vec![false; RECORDS];
    let mut offsets: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut last_of_key: BTreeMap<String, usize> = BTreeMap::new();
    for record in &consumed {
        let partition = record["partition"].as_u64().with_context(|| format!("no partition in {record}"))?;
        let offset = record["offset"].as_u64().with_context(|| format!("no offset in {record}"))?;
        let key = record["key"].as_str().with_context(|| format!("no key in {record}"))?;
        let value = record["value"].as_str().with_context(|| format!("no value in {record}"))?;
        let n: usize = value
            .strip_prefix("value-")
            .and_then(|n| n.parse().ok())
            .filter(|&n| n < RECORDS)
            .with_context(|| format!("consumed a value that was never produced: {record}"))?;
        ensure!(!seen[n], "value-{n} was consumed twice (again at partition {partition} offset {offset})");
        seen[n] = true;
        ensure!(key == key_of(n), "value-{n} came with key {key:?}, produced with {:?}", key_of(n));
        ensure!(
            landed.get(&(partition, offset)) == Some(&n),
            "value-{n} was consumed at partition {partition} offset {offset}, but acknowledged at {}",
            acks[n]
        );
        // Records of one partition print in offset order, so per key they must be in produce order.
        if let Some(&previous) = last_of_key.get(key) {
            ensure!(previous < n, "key {key}: value-{n} was consumed after value-{previous}");
        }
        last_of_key.insert(key.to_string(), n);
        offsets.entry(partition).or_default().push(offset);
    }
    let missing: Vec<usize> = (0..RECORDS).filter(|&n| !seen[n]).collect();
    ensure!(
        missing.is_empty(),
        "{} acknowledged values were not consumed, e.g. value-{:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for (partition, offsets) in &offsets {
        let dense = offsets.iter().enumerate().all(|(i, &offset)| offset == i as u64);
        ensure!(dense, "partition {partition}: consumed offsets are not 0, 1, 2, ... in order");
    }
    ensure!(offsets.len() == PARTITIONS as usize, "only partitions {:?} received records", offsets.keys());
    Ok(())
}

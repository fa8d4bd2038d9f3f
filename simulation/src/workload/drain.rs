//! The final drain, as Jepsen's final polls do it: with every fault healed, a fresh client
//! reads every partition from its log start (0 unless retention removed records) to at least
//! its highest acknowledged offset; then every replica is asked for its digest of the range
//! they all hold (they must converge and agree) and every node for its topic listing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_client::{Client, ErrorCode, v1};
use flotilla_proto::v1::admin_service_client::AdminServiceClient;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_types::NodeId;
use tokio::time::Instant;

use super::{Environment, WorkloadPlan, error_chain};
use crate::checker::{DrainStart, PartitionKey, ReplicaDigest};
use crate::shared::Shared;

/// How long the drain of one partition may take.
const READ_DEADLINE: Duration = Duration::from_secs(60);
/// How long replicas may take to converge on one high watermark.
const CONVERGE_DEADLINE: Duration = Duration::from_secs(30);
/// Records asked for per fetch.
const FETCH_RECORDS: u32 = 500;
/// Bound on one question to one node.
const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(plan: &WorkloadPlan, env: &Environment, shared: &Shared) -> anyhow::Result<()> {
    let reader = env.client(10)?;
    for partition in plan.partitions() {
        let expected_end = {
            let history = shared.history.lock();
            history.acks.iter().filter(|a| a.partition == partition).map(|a| a.offset + 1).max().unwrap_or(0)
        };
        let (records, start, problem) = read_partition(&reader, shared, &partition, expected_end).await;
        shared.note(format!("final read of {partition}: {} records from offset {}", records.len(), start.offset));
        let mut history = shared.history.lock();
        history.liveness_failures.extend(problem);
        history.reads.insert(partition.clone(), records);
        history.drain_starts.insert(partition, start);
    }
    let metadata = metadata(&reader, shared).await?;
    // A retired node (its disk wiped) refuses to start: it answers nothing, by design.
    let retired = shared.history.lock().retired_nodes.clone();
    let addresses: BTreeMap<NodeId, String> = metadata
        .nodes
        .iter()
        .filter(|node| !retired.contains(&node.id))
        .map(|node| (node.id, node.client_address.clone()))
        .collect();
    for topic in &metadata.topics {
        let Some(name) = topic.topic.as_ref().map(|t| t.name.clone()) else { continue };
        for partition in &topic.partitions {
            let key = PartitionKey::new(&name, partition.partition);
            let replicas: Vec<NodeId> =
                partition.replicas.iter().copied().filter(|node| !retired.contains(node)).collect();
            let digests = converge(env, shared, &key, partition.group_id, &replicas, &addresses).await;
            shared.history.lock().digests.insert(key, digests);
        }
    }
    for (node, address) in &addresses {
        match list_topics(env, address).await {
            Ok(listed) => {
                shared.history.lock().final_listings.insert(*node, listed);
            }
            Err(err) => shared
                .history
                .lock()
                .liveness_failures
                .push(format!("node {node} did not list its topics after the heal: {err:#}")),
        }
    }
    Ok(())
}

/// The cluster's routing metadata, retried until some node answers.
async fn metadata(reader: &Client, shared: &Shared) -> anyhow::Result<v1::MetadataResponse> {
    let deadline = Instant::now() + READ_DEADLINE;
    loop {
        match reader.metadata(Vec::new()).await {
            Ok(metadata) => return Ok(metadata),
            Err(err) if Instant::now() < deadline => {
                shared.note(format!("final metadata: {}", error_chain(&err)));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(err) => anyhow::bail!("no node answered metadata after the heal: {err}"),
        }
    }
}

/// The log start of `partition` (asked until some node answers, or the deadline passes), and
/// when it was known.
async fn log_start(reader: &Client, shared: &Shared, partition: &PartitionKey, deadline: Instant) -> DrainStart {
    loop {
        match reader.list_offsets(&partition.topic).await {
            Ok(all) => {
                if let Some(found) = all.iter().find(|o| o.partition == partition.partition) {
                    return DrainStart { offset: found.log_start_offset, at_ms: shared.now().as_millis() as u64 };
                }
            }
            Err(err) => shared.note(format!("final offsets of {partition}: {}", error_chain(&err))),
        }
        if Instant::now() >= deadline {
            return DrainStart { offset: 0, at_ms: shared.now().as_millis() as u64 };
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One partition's records from its log start, where the read began, and a problem if the
/// read could not finish. If retention moves the log start past the read meanwhile, the read
/// starts over there: a drain is one dense run.
async fn read_partition(
    reader: &Client,
    shared: &Shared,
    partition: &PartitionKey,
    expected_end: u64,
) -> (Vec<(u64, String)>, DrainStart, Option<String>) {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut start = log_start(reader, shared, partition, deadline).await;
    let mut records = Vec::new();
    let mut offset = start.offset;
    let mut high_watermark = 0u64;
    while Instant::now() < deadline {
        match reader.fetch(&partition.topic, partition.partition, offset, FETCH_RECORDS, 0, 0).await {
            Ok(response) => {
                high_watermark = response.high_watermark;
                if response.records.is_empty() {
                    if offset >= high_watermark && offset >= expected_end {
                        return (records, start, None);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                for fetched in response.records {
                    let value = fetched.record.map(|r| super::label(&r.value)).unwrap_or_default();
                    records.push((fetched.offset, value));
                    offset = fetched.offset + 1;
                }
            }
            Err(err) if err.code() == Some(ErrorCode::OffsetOutOfRange) => {
                let moved = log_start(reader, shared, partition, deadline).await;
                if moved.offset > offset {
                    shared.note(format!(
                        "final read of {partition}: the log start moved to {}; starting over",
                        moved.offset
                    ));
                    start = moved;
                    records.clear();
                    offset = moved.offset;
                } else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            Err(err) => {
                shared.note(format!("final read of {partition} at offset {offset}: {}", error_chain(&err)));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let problem = format!(
        "the final drain of {partition} stopped at offset {offset} (high watermark {high_watermark}, highest acknowledged offset {}) after {READ_DEADLINE:?}",
        expected_end.saturating_sub(1)
    );
    (records, start, Some(problem))
}

/// Waits for every replica of a partition to reach one high watermark and returns their
/// digests of the range every one of them holds (replicas apply retention at slightly
/// different moments, so their log starts may differ). Replicas that never converge are a
/// liveness failure; their digests are then taken over the range every answering replica
/// has, which must still agree.
async fn converge(
    env: &Environment,
    shared: &Shared,
    partition: &PartitionKey,
    group_id: u64,
    replicas: &[NodeId],
    addresses: &BTreeMap<NodeId, String>,
) -> Vec<ReplicaDigest> {
    let deadline = Instant::now() + CONVERGE_DEADLINE;
    let mut last_seen: Vec<ReplicaDigest> = Vec::new();
    loop {
        let digests = digests_of(env, shared, partition, group_id, replicas, addresses, (None, None)).await;
        let ends: BTreeSet<u64> = digests.iter().map(|d| d.end_offset).collect();
        if digests.len() == replicas.len() && ends.len() == 1 {
            let starts: BTreeSet<u64> = digests.iter().map(|d| d.start_offset).collect();
            if starts.len() == 1 {
                return digests;
            }
            // Compare from the latest log start; a replica that trimmed past it meanwhile
            // fails the digest and the round is tried again.
            let range = (starts.last().copied(), ends.first().copied());
            let common = digests_of(env, shared, partition, group_id, replicas, addresses, range).await;
            if common.len() == replicas.len() {
                return common;
            }
        }
        if !digests.is_empty() {
            last_seen = digests;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let seen: Vec<String> = last_seen.iter().map(|d| format!("node {} at {}", d.node, d.high_watermark)).collect();
    shared.history.lock().liveness_failures.push(format!(
        "the {} replicas of {partition} did not converge within {CONVERGE_DEADLINE:?} after the heal: {}",
        replicas.len(),
        seen.join(", ")
    ));
    // Compare what they do have: the range every answering replica holds.
    let (Some(end), Some(start)) =
        (last_seen.iter().map(|d| d.high_watermark).min(), last_seen.iter().map(|d| d.start_offset).max())
    else {
        return Vec::new();
    };
    let answering: Vec<NodeId> = last_seen.iter().map(|d| d.node).collect();
    digests_of(env, shared, partition, group_id, &answering, addresses, (Some(start), Some(end.max(start)))).await
}

/// Every replica's digest of `[start, end)` (their own log start and high watermark where
/// `None`), of those that answer.
async fn digests_of(
    env: &Environment,
    shared: &Shared,
    partition: &PartitionKey,
    group_id: u64,
    replicas: &[NodeId],
    addresses: &BTreeMap<NodeId, String>,
    (start_offset, end_offset): (Option<u64>, Option<u64>),
) -> Vec<ReplicaDigest> {
    let mut found = Vec::new();
    for node in replicas {
        let answer = match addresses.get(node) {
            Some(address) => digest(env, address, group_id, start_offset, end_offset).await,
            None => Err(anyhow::anyhow!("node {node} has no registered address")),
        };
        match answer {
            Ok(digest) => found.push(digest),
            Err(err) => shared.note(format!("digest of {partition} on node {node}: {err:#}")),
        }
    }
    found
}

/// One replica's digest of `[start_offset, end_offset)` (its whole retained log when `None`).
async fn digest(
    env: &Environment,
    address: &str,
    group_id: u64,
    start_offset: Option<u64>,
    end_offset: Option<u64>,
) -> anyhow::Result<ReplicaDigest> {
    let mut client = ClusterServiceClient::new(env.node_channel(address)?);
    let mut request = tonic::Request::new(v1::ReplicaDigestRequest { group_id, end_offset, start_offset });
    request.set_timeout(NODE_CALL_TIMEOUT);
    let response = tokio::time::timeout(NODE_CALL_TIMEOUT, client.replica_digest(request)).await??.into_inner();
    Ok(ReplicaDigest {
        node: response.node_id,
        start_offset: response.log_start_offset,
        end_offset: response.end_offset,
        high_watermark: response.high_watermark,
        digest: response.digest,
    })
}

/// The topics one node lists from its own catalogue.
async fn list_topics(env: &Environment, address: &str) -> anyhow::Result<BTreeSet<String>> {
    let deadline = Instant::now() + READ_DEADLINE;
    loop {
        let mut client = AdminServiceClient::new(env.node_channel(address)?);
        let mut request = tonic::Request::new(v1::ListTopicsRequest {});
        request.set_timeout(NODE_CALL_TIMEOUT);
        match tokio::time::timeout(NODE_CALL_TIMEOUT, client.list_topics(request)).await {
            Ok(Ok(response)) => return Ok(response.into_inner().topics.into_iter().map(|t| t.name).collect()),
            Ok(Err(status)) if Instant::now() >= deadline => anyhow::bail!("{status}"),
            Err(_) if Instant::now() >= deadline => anyhow::bail!("no answer within {NODE_CALL_TIMEOUT:?}"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

//! The final drain, as Jepsen's final polls do it: with every fault healed, a fresh client
//! reads every partition from offset 0 to at least its highest acknowledged offset; then
//! every replica is asked for its digest (they must converge and agree) and every node for
//! its topic listing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flotilla_client::{Client, v1};
use flotilla_proto::v1::admin_service_client::AdminServiceClient;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_types::NodeId;
use tokio::time::Instant;

use super::{Environment, WorkloadPlan, error_chain};
use crate::checker::{PartitionKey, ReplicaDigest};
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
        let (records, problem) = read_partition(&reader, shared, &partition, expected_end).await;
        shared.note(format!("final read of {partition}: {} records", records.len()));
        let mut history = shared.history.lock();
        history.liveness_failures.extend(problem);
        history.reads.insert(partition, records);
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

/// One partition's records from offset 0, and a problem if the read could not finish.
async fn read_partition(
    reader: &Client,
    shared: &Shared,
    partition: &PartitionKey,
    expected_end: u64,
) -> (Vec<(u64, String)>, Option<String>) {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut high_watermark = 0u64;
    while Instant::now() < deadline {
        match reader.fetch(&partition.topic, partition.partition, offset, FETCH_RECORDS, 0, 0).await {
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
                shared.note(format!("final read of {partition} at offset {offset}: {}", error_chain(&err)));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let problem = format!(
        "the final drain of {partition} stopped at offset {offset} (high watermark {high_watermark}, highest acknowledged offset {}) after {READ_DEADLINE:?}",
        expected_end.saturating_sub(1)
    );
    (records, Some(problem))
}

/// Waits for every replica of a partition to reach one high watermark and returns their
/// digests of it. Replicas that never converge are a liveness failure; their digests are
/// then taken over the prefix every replica has, which must still agree.
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
        let mut digests = Vec::new();
        for node in replicas {
            let answer = match addresses.get(node) {
                Some(address) => digest(env, address, group_id, None).await,
                None => Err(anyhow::anyhow!("node {node} has no registered address")),
            };
            match answer {
                Ok(digest) => digests.push(digest),
                Err(err) => shared.note(format!("digest of {partition} on node {node}: {err:#}")),
            }
        }
        let ends: BTreeSet<u64> = digests.iter().map(|d| d.end_offset).collect();
        if digests.len() == replicas.len() && ends.len() == 1 {
            return digests;
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
    // Compare what they do have: the prefix every answering replica holds.
    let Some(common) = last_seen.iter().map(|d| d.high_watermark).min() else { return Vec::new() };
    let mut digests = Vec::new();
    for node in last_seen.iter().map(|d| d.node) {
        if let Some(address) = addresses.get(&node)
            && let Ok(digest) = digest(env, address, group_id, Some(common)).await
        {
            digests.push(digest);
        }
    }
    digests
}

/// One replica's digest of `[0, end_offset)` (its whole committed log when `None`).
async fn digest(
    env: &Environment,
    address: &str,
    group_id: u64,
    end_offset: Option<u64>,
) -> anyhow::Result<ReplicaDigest> {
    let mut client = ClusterServiceClient::new(env.node_channel(address)?);
    let mut request = tonic::Request::new(v1::ReplicaDigestRequest { group_id, end_offset, start_offset: None });
    request.set_timeout(NODE_CALL_TIMEOUT);
    let response = tokio::time::timeout(NODE_CALL_TIMEOUT, client.replica_digest(request)).await??.into_inner();
    Ok(ReplicaDigest {
        node: response.node_id,
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

//! The fault schedule. It runs as its own simulated client so it can ask the cluster who
//! leads what. Each round first cuts a leader (of the metadata group or of a partition,
//! picked by the seed) off from the other nodes for a few seconds, then crashes a node and
//! restarts it.
//! Network faults it applies itself; crashes only the driver can perform, so it queues them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_client::Client;
use flotilla_types::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::workload::{PARTITIONS, TOPIC};
use crate::{NODES, Scenario, Shared, cluster, workload};

/// A fault on a host, performed by the driver between two simulation steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFault {
    /// Stop the node's software and lose a torn tail of its unsynced writes.
    Crash(NodeId),
    /// Start the node again on what its disk kept.
    Restart(NodeId),
}

/// Rounds of faults; each isolates a leader, then crashes a node.
const ROUNDS: u32 = 3;
/// Produce traffic before the first fault.
const WARMUP: Duration = Duration::from_secs(3);
/// Time between healing one fault and starting the next.
const BETWEEN_FAULTS: Duration = Duration::from_secs(4);
/// Shortest and longest time a fault lasts, in milliseconds.
const FAULT_MS_MIN: u64 = 3_000;
const FAULT_MS_MAX: u64 = 6_000;

/// Which node a fault hits.
#[derive(Debug, Clone, Copy)]
enum Victim {
    MetadataLeader,
    PartitionLeader(u32),
}

/// Runs the fault schedule, then tells the workload that everything is healed.
pub async fn run(seed: u64, scenario: Scenario, shared: Arc<Shared>) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321);
    let observer = workload::client(3)?;
    while !shared.topic_ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(WARMUP).await;

    for round in 1..=ROUNDS {
        isolate_a_leader(&observer, &shared, &mut rng, round).await;
        tokio::time::sleep(BETWEEN_FAULTS).await;
        if scenario.power_loss && round == ROUNDS {
            cut_the_power(&shared, &mut rng, round).await;
        } else {
            crash_a_node(&observer, &shared, &mut rng, round).await;
        }
        tokio::time::sleep(BETWEEN_FAULTS).await;
    }

    shared.note("nemesis done");
    shared.faults_done.store(true, Ordering::SeqCst);
    Ok(())
}

/// Cuts a leader off from its peers for a few seconds. The client can still reach it, so
/// produces sent to it hang until a new leader takes over, and the old leader's uncommitted
/// tail must vanish.
async fn isolate_a_leader(observer: &Client, shared: &Shared, rng: &mut StdRng, round: u32) {
    let victim = pick_victim(rng);
    let isolated = find(observer, shared, victim, rng).await;
    let others: Vec<String> = (1..=NODES).filter(|id| *id != isolated).map(cluster::host_name).collect();
    for other in &others {
        turmoil::partition(cluster::host_name(isolated), other.as_str());
    }
    shared.note(format!("round {round}: partition n{isolated} ({victim:?}) from {}", others.join(",")));
    tokio::time::sleep(fault_duration(rng)).await;
    for other in &others {
        turmoil::repair(cluster::host_name(isolated), other.as_str());
    }
    shared.note(format!("round {round}: repair n{isolated}"));
}

/// Crashes a node and restarts it a few seconds later. The crash loses whatever the node
/// wrote but had not synced, except a torn prefix the driver picks.
async fn crash_a_node(observer: &Client, shared: &Shared, rng: &mut StdRng, round: u32) {
    let victim = pick_victim(rng);
    let crashed = find(observer, shared, victim, rng).await;
    shared.note(format!("round {round}: crash requested for n{crashed} ({victim:?})"));
    shared.host_faults.lock().push_back(HostFault::Crash(crashed));
    tokio::time::sleep(fault_duration(rng)).await;
    shared.host_faults.lock().push_back(HostFault::Restart(crashed));
}

/// Crashes every node at once and restarts them all: only what each synced survives.
async fn cut_the_power(shared: &Shared, rng: &mut StdRng, round: u32) {
    shared.note(format!("round {round}: power loss on every node"));
    shared.host_faults.lock().extend((1..=NODES).map(HostFault::Crash));
    tokio::time::sleep(fault_duration(rng)).await;
    shared.host_faults.lock().extend((1..=NODES).map(HostFault::Restart));
}

fn pick_victim(rng: &mut StdRng) -> Victim {
    if rng.random_bool(0.5) { Victim::MetadataLeader } else { Victim::PartitionLeader(rng.random_range(0..PARTITIONS)) }
}

fn fault_duration(rng: &mut StdRng) -> Duration {
    Duration::from_millis(rng.random_range(FAULT_MS_MIN..=FAULT_MS_MAX))
}

/// The node currently playing `victim`'s role, or a node picked by the seed if the cluster
/// cannot say (no leader right now, or the question timed out).
async fn find(observer: &Client, shared: &Shared, victim: Victim, rng: &mut StdRng) -> NodeId {
    let found = match victim {
        Victim::MetadataLeader => observer.cluster_status().await.map(|status| status.metadata_leader_id),
        Victim::PartitionLeader(partition) => observer
            .describe_topic(TOPIC)
            .await
            .map(|topic| topic.partitions.iter().find(|p| p.partition == partition).map_or(0, |p| p.leader_id)),
    };
    match found {
        Ok(id) if (1..=NODES).contains(&id) => id,
        other => {
            let id = rng.random_range(1..=NODES);
            let why = match other {
                Ok(id) => format!("leader id {id}"),
                Err(err) => err.to_string(),
            };
            shared.note(format!("no node plays {victim:?} ({why}); picked n{id}"));
            id
        }
    }
}

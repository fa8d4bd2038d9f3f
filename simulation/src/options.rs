//! What one seed expands to: cluster size, topics, workload shape and fault mix, picked at
//! random per seed ("swarm testing": a narrow fault mix per run reaches corners a uniform
//! mix dilutes). Printed with every failure, so a report says what the run was.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use std::collections::BTreeMap;

use crate::checker::RetentionSetting;
use crate::scenarios::Scenario;
use crate::workload::{GroupSpec, WorkloadPlan};

/// One family of faults the nemesis can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// Cut one random node off from the other nodes.
    IsolateNode,
    /// Cut the leader of the metadata group or of a partition off from the other nodes.
    IsolateLeader,
    /// Split the nodes into a majority and a minority.
    MajoritySplit,
    /// Every node reaches only its ring neighbours (overlapping majorities); with three
    /// nodes, a bridge: two nodes cut apart, the third reaching both.
    Ring,
    /// One node can send but not receive, or receive but not send.
    OneWay,
    /// The clients cannot reach a leader, which still reaches its peers.
    ClientToLeader,
    /// One node's links go down and up every 100 ms to 2 s.
    Flapping,
    /// Hold all of a node's messages past the election timeout, then deliver them in a burst
    /// (what a SIGSTOP/SIGCONT does to its peers).
    Pause,
    /// A node's links get slow: up to hundreds of milliseconds per message.
    LatencySpike,
    /// A node's links lose messages now and then, which breaks TCP connections.
    LinkNoise,
    /// Crash a random node and restart it, losing a torn tail of its un-synced writes.
    CrashNode,
    /// Crash the leader of the metadata group or of a partition.
    CrashLeader,
    /// Crash a minority of the nodes at once.
    CrashMinority,
    /// Crash every node at once (a power cut).
    PowerLoss,
    /// Slow fsync on some nodes.
    SlowFsync,
    /// Move a partition's replica (sometimes the leader's) to a node outside its replica set
    /// (five-node clusters), sometimes crashing the partition's leader or isolating a node
    /// mid-move.
    MoveReplica,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 16] = [
        FaultKind::IsolateNode,
        FaultKind::IsolateLeader,
        FaultKind::MajoritySplit,
        FaultKind::Ring,
        FaultKind::OneWay,
        FaultKind::ClientToLeader,
        FaultKind::Flapping,
        FaultKind::Pause,
        FaultKind::LatencySpike,
        FaultKind::LinkNoise,
        FaultKind::CrashNode,
        FaultKind::CrashLeader,
        FaultKind::CrashMinority,
        FaultKind::PowerLoss,
        FaultKind::SlowFsync,
        FaultKind::MoveReplica,
    ];

    /// The kebab-case name used in flags and reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::IsolateNode => "isolate-node",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::MajoritySplit => "majority-split",
            FaultKind::Ring => "ring",
            FaultKind::OneWay => "one-way",
            FaultKind::ClientToLeader => "client-to-leader",
            FaultKind::Flapping => "flapping",
            FaultKind::Pause => "pause",
            FaultKind::LatencySpike => "latency-spike",
            FaultKind::LinkNoise => "link-noise",
            FaultKind::CrashNode => "crash-node",
            FaultKind::CrashLeader => "crash-leader",
            FaultKind::CrashMinority => "crash-minority",
            FaultKind::PowerLoss => "power-loss",
            FaultKind::SlowFsync => "slow-fsync",
            FaultKind::MoveReplica => "move-replica",
        }
    }
}

/// A topic the workload creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: u32,
}

/// Everything a run does, derived from its seed (and flags that pin parts of it).
#[derive(Debug, Clone, Serialize)]
pub struct SimOptions {
    pub seed: u64,
    /// Nodes in the cluster, all metadata voters: 3 or 5.
    pub nodes: u64,
    /// Topics, producers and consumers: what the clients do.
    pub workload: WorkloadPlan,
    /// Simulated time of the safety phase, during which faults rotate.
    #[serde(serialize_with = "millis")]
    pub safety: Duration,
    /// Shortest and longest time one fault (or quiet spell) lasts.
    #[serde(serialize_with = "millis")]
    pub fault_min: Duration,
    #[serde(serialize_with = "millis")]
    pub fault_max: Duration,
    /// Chance that a rotation brings a quiet spell instead of a fault.
    pub quiet_chance: f64,
    /// The fault families this seed draws from.
    pub faults: Vec<FaultKind>,
    /// A deliberately injected bug, to prove the checker catches it.
    pub bug: Option<Bug>,
    /// A named scenario whose script replaces the random fault rotation.
    pub scenario: Option<Scenario>,
}

/// A bug the simulation can inject on purpose, to prove the checker catches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Bug {
    /// Every disk's `sync` reports success without making anything durable: acknowledge
    /// before fsync.
    SyncLies,
    /// Consumer-group members skip the first record of every partition they are handed (a
    /// consumer resuming one past the committed offset): records go unprocessed.
    GroupSkip,
}

/// Serializes a duration as whole milliseconds.
pub(crate) fn millis<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_millis() as u64)
}

impl SimOptions {
    /// The options seed `seed` expands to.
    pub fn from_seed(seed: u64) -> SimOptions {
        // Its own stream, so adding an option elsewhere does not reshuffle the rest of the run.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6f70_7469_6f6e_7321);
        let nodes = if rng.random_bool(0.35) { 5 } else { 3 };
        let topics: Vec<TopicSpec> = (0..rng.random_range(1..=3u32))
            .map(|i| TopicSpec { name: format!("sim-{i}"), partitions: rng.random_range(1..=4) })
            .collect();
        let mut faults = FaultKind::ALL.to_vec();
        faults.shuffle(&mut rng);
        faults.truncate(rng.random_range(3..=FaultKind::ALL.len()));
        // Every seed crashes something, so every run checks durability across restarts.
        if !faults.iter().any(|f| {
            matches!(f, FaultKind::CrashNode | FaultKind::CrashLeader | FaultKind::CrashMinority | FaultKind::PowerLoss)
        }) {
            let crash = *[FaultKind::CrashNode, FaultKind::CrashLeader, FaultKind::CrashMinority, FaultKind::PowerLoss]
                .choose(&mut rng)
                .expect("not empty");
            faults.push(crash);
        }
        faults.sort();
        let fault_min = Duration::from_millis(rng.random_range(1_000..=4_000));
        // Drawn in a fixed order: a seed must keep expanding to the same options.
        let producers = rng.random_range(1..=4);
        let idempotent_producers = rng.random_range(0..=producers);
        let consumers = rng.random_range(1..=3);
        let batch_records = rng.random_range(1..=8);
        let produce_pause = Duration::from_millis(rng.random_range(5..=150));
        let abandon_chance = *[0.0, 0.01, 0.05].choose(&mut rng).expect("not empty");
        let safety = Duration::from_secs(rng.random_range(30..=75));
        let fault_max = fault_min + Duration::from_millis(rng.random_range(1_000..=8_000));
        // Drawn after everything above, so seeds keep the rest of their shape.
        let mut groups = groups(&mut rng, &topics);
        let retention = retention(&mut rng, &topics, &mut groups, batch_records);
        let (producers, produce_pause) = if retention.record_padding > 0 {
            // About 1 MiB per batch: fewer, slower producers keep a run's data (every node
            // holds it in memory) to tens of megabytes.
            (producers.min(2), produce_pause.max(Duration::from_millis(400)))
        } else {
            (producers, produce_pause)
        };
        let idempotent_producers = idempotent_producers.min(producers);
        SimOptions {
            seed,
            nodes,
            workload: WorkloadPlan {
                seed,
                topics,
                replication_factor: 3,
                producers,
                idempotent_producers,
                consumers,
                batch_records,
                produce_pause,
                abandon_chance,
                groups,
                retention: retention.topics,
                trims: retention.trims,
                record_padding: retention.record_padding,
            },
            safety,
            fault_min,
            fault_max,
            quiet_chance: 0.25,
            faults,
            bug: None,
            scenario: None,
        }
    }

    /// The options of a named scenario under `seed`: the seed's workload on the scenario's
    /// cluster, with the scenario's script instead of the random mix.
    pub fn for_scenario(scenario: Scenario, seed: u64) -> SimOptions {
        let mut options = SimOptions {
            nodes: scenario.nodes(),
            faults: Vec::new(),
            scenario: Some(scenario),
            ..SimOptions::from_seed(seed)
        };
        if scenario.idempotent_only() {
            let workload = &mut options.workload;
            workload.producers = workload.producers.max(2);
            workload.idempotent_producers = workload.producers;
            workload.abandon_chance = workload.abandon_chance.max(0.05);
        }
        if scenario == Scenario::SnapshotTrap {
            // Every topic trims by size, fast: the isolated follower falls behind the trim
            // point within seconds.
            let workload = &mut options.workload;
            workload.groups.clear();
            workload.record_padding = 0;
            workload.produce_pause = workload.produce_pause.min(Duration::from_millis(20));
            workload.batch_records = workload.batch_records.max(4);
            workload.retention = workload
                .topics
                .iter()
                .map(|t| {
                    let setting = RetentionSetting {
                        max_age_ms: None,
                        max_bytes: Some(BATCH_BYTES_SMALL),
                        max_batch_bytes: BATCH_BYTES_SMALL,
                    };
                    (t.name.clone(), setting)
                })
                .collect();
        }
        options
    }

    /// Total partitions across topics.
    pub fn partition_count(&self) -> u32 {
        self.workload.topics.iter().map(|t| t.partitions).sum()
    }
}

/// What a seed retains, and how.
struct RetentionPlan {
    topics: BTreeMap<String, RetentionSetting>,
    trims: bool,
    record_padding: usize,
}

/// Records of the workload without padding stay below this (a 3-byte key and a value such as
/// "p3-000123"), so a batch of at most 8 stays below 200 bytes.
const BATCH_BYTES_SMALL: u64 = 1024;
/// A big-batch seed's batch limit: a batch of about 1 MiB fits.
const BATCH_BYTES_BIG: u64 = 2 << 20;

/// Retention for about half of the topics no group consumes (by size, by age or both, small
/// enough that partitions trim within a run), a trimmer sending `DeleteRecords` in some seeds,
/// and in about one seed in twelve batches of about 1 MiB, with retention by size on every
/// topic (and no groups) so that a run's data stays small.
fn retention(rng: &mut StdRng, topics: &[TopicSpec], groups: &mut Vec<GroupSpec>, batch_records: u64) -> RetentionPlan {
    let big = rng.random_bool(0.08);
    if big {
        groups.clear();
    }
    let grouped: Vec<&String> = groups.iter().flat_map(|g| &g.topics).collect();
    let mut chosen = BTreeMap::new();
    for topic in topics {
        let eligible = !grouped.contains(&&topic.name);
        let retained = eligible && (big || rng.random_bool(0.5));
        if !retained {
            continue;
        }
        let setting = if big {
            RetentionSetting {
                max_age_ms: None,
                max_bytes: Some(rng.random_range(BATCH_BYTES_BIG..=3 * BATCH_BYTES_BIG)),
                max_batch_bytes: BATCH_BYTES_BIG,
            }
        } else {
            let kind = rng.random_range(0..3);
            RetentionSetting {
                max_age_ms: (kind != 0).then(|| rng.random_range(8_000..=40_000)),
                max_bytes: (kind != 1).then(|| rng.random_range(BATCH_BYTES_SMALL..=4 * BATCH_BYTES_SMALL)),
                max_batch_bytes: BATCH_BYTES_SMALL,
            }
        };
        chosen.insert(topic.name.clone(), setting);
    }
    let trims = !chosen.is_empty() && rng.random_bool(0.5);
    let record_padding = if big { (1_000_000 / batch_records.max(1)) as usize } else { 0 };
    RetentionPlan { topics: chosen, trims, record_padding }
}

/// Zero to two consumer groups over the seed's topics: each subscribes to a random non-empty
/// subset of them, with one to three members and a session timeout of 2 to 6 s.
fn groups(rng: &mut StdRng, topics: &[TopicSpec]) -> Vec<GroupSpec> {
    (0..rng.random_range(0..=2u32))
        .map(|i| {
            let mut subscribed: Vec<String> =
                topics.iter().filter(|_| rng.random_bool(0.6)).map(|t| t.name.clone()).collect();
            if subscribed.is_empty() {
                subscribed.push(topics.choose(rng).expect("a seed has topics").name.clone());
            }
            GroupSpec {
                name: format!("sim-group-{i}"),
                topics: subscribed,
                members: rng.random_range(1..=3),
                session_timeout: Duration::from_millis(rng.random_range(2_000..=6_000)),
                churn: rng.random_bool(0.7),
                skip_on_start: false,
            }
        })
        .collect()
}

impl fmt::Display for SimOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let workload = &self.workload;
        let topics: Vec<String> = workload.topics.iter().map(|t| format!("{}x{}", t.name, t.partitions)).collect();
        let faults: Vec<&str> = self.faults.iter().map(|k| k.name()).collect();
        write!(
            f,
            "nodes={} topics=[{}] rf={} producers={} ({} idempotent) consumers={} batch={} pause={}ms abandon={} safety={}s faults={}-{}ms quiet={:.0}% mix=[{}]",
            self.nodes,
            topics.join(","),
            workload.replication_factor,
            workload.producers,
            workload.idempotent_producers,
            workload.consumers,
            workload.batch_records,
            workload.produce_pause.as_millis(),
            workload.abandon_chance,
            self.safety.as_secs(),
            self.fault_min.as_millis(),
            self.fault_max.as_millis(),
            self.quiet_chance * 100.0,
            faults.join(",")
        )?;
        if !workload.groups.is_empty() {
            let groups: Vec<String> = workload
                .groups
                .iter()
                .map(|g| {
                    format!(
                        "{}:{}x{}/{}ms{}",
                        g.name,
                        g.topics.join("+"),
                        g.members,
                        g.session_timeout.as_millis(),
                        if g.churn { "/churn" } else { "" }
                    )
                })
                .collect();
            write!(f, " groups=[{}]", groups.join(","))?;
        }
        if let Some(scenario) = self.scenario {
            write!(f, " scenario={scenario:?}")?;
        }
        if let Some(bug) = self.bug {
            write!(f, " bug={bug:?}")?;
        }
        Ok(())
    }
}

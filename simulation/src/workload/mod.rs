//! The client workload, the same under the simulation and against real processes: create
//! the topics, run producers, tailing consumers and consumer groups until the nemesis has
//! healed every fault, require the healed cluster to acknowledge again (and every group to
//! commit up to the log end) within a bound, then drain every
//! partition from offset 0, collect every replica's digest and every node's topic listing.
//! Everything the clients are told goes into the shared [`History`](crate::checker::History).

mod consumer;
mod drain;
mod group_consumer;
mod producer;
mod trimmer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;
use flotilla_client::{Client, ClientConfig, ClientError, Connector, ErrorCode};
use flotilla_proto::net::{ChannelSettings, channel};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::checker::{PartitionKey, RetentionSetting};
use crate::options::TopicSpec;
use crate::shared::Shared;

pub use group_consumer::GroupSpec;

/// What the workload does; the simulation derives it from the seed's options.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadPlan {
    /// Seeds the producers' choices of topics and keys.
    pub seed: u64,
    pub topics: Vec<TopicSpec>,
    /// Replicas per partition.
    pub replication_factor: u32,
    /// Concurrent producer sessions, each sending one batch at a time.
    pub producers: u32,
    /// Producers `0..idempotent_producers` use idempotent sessions: their records must never
    /// repeat.
    pub idempotent_producers: u32,
    /// Tailing consumers; the partitions are split between them.
    pub consumers: u32,
    /// Records per produce call.
    pub batch_records: u64,
    /// Pause between two produce calls of one producer.
    #[serde(serialize_with = "crate::options::millis")]
    pub produce_pause: Duration,
    /// Chance that a producer abandons a request mid-flight (a client crash) and retries it.
    pub abandon_chance: f64,
    /// Consumer groups, each with members sharing its topics' partitions and committing.
    pub groups: Vec<GroupSpec>,
    /// Retention each topic is created with (a topic absent keeps the defaults, which remove
    /// nothing within a run). Never on a topic a group consumes: the group invariant expects
    /// every record it could deliver.
    pub retention: BTreeMap<String, RetentionSetting>,
    /// Whether a trimmer sends `DeleteRecords` to the retention topics now and then.
    pub trims: bool,
    /// Bytes of padding after every record's value: a seed with big batches sends about 1 MiB
    /// per batch. The history keeps only the part before the padding.
    pub record_padding: usize,
}

impl WorkloadPlan {
    /// Every partition of every topic, in a fixed order.
    pub fn partitions(&self) -> Vec<PartitionKey> {
        self.topics.iter().flat_map(|t| (0..t.partitions).map(|p| PartitionKey::new(&t.name, p))).collect()
    }
}

/// How clients reach the cluster: seed brokers, the socket layer and timeouts.
#[derive(Clone)]
pub struct Environment {
    pub brokers: Vec<String>,
    pub connector: Connector,
    pub request_timeout: Duration,
    /// Every client handed out, kept open until the last copy of the environment is dropped
    /// (after the final drain). A client keeps its connections in a `HashMap`, so dropping
    /// one closes them in an order that differs from process to process; in the simulation
    /// that reorders network events and a seed no longer replays.
    pub clients: Arc<parking_lot::Mutex<Vec<Client>>>,
}

impl Environment {
    /// A client; `retries_max` 0 makes one attempt per call, so the workload knows exactly
    /// which attempts had an unknown outcome.
    pub fn client(&self, retries_max: u32) -> anyhow::Result<Client> {
        let config = ClientConfig {
            request_timeout: self.request_timeout,
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            retries_max,
            ..ClientConfig::default()
        };
        let client = Client::connect_with(self.brokers.clone(), config, Arc::clone(&self.connector))?;
        self.clients.lock().push(client.clone());
        Ok(client)
    }

    /// A channel to one node, for questions only that node can answer (its replica digests,
    /// its own topic listing).
    pub fn node_channel(&self, address: &str) -> anyhow::Result<Channel> {
        let settings = ChannelSettings {
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
            ..ChannelSettings::default()
        };
        Ok(channel(address, &self.connector, &settings)?)
    }
}

/// How long the cluster may take to create the topics at startup.
const STARTUP_DEADLINE: Duration = Duration::from_secs(60);
/// Time for elections and catch-up after the last repair, before the healed phase starts.
const SETTLE: Duration = Duration::from_secs(3);
/// Quiet time between the last produce and the final drain.
const QUIET: Duration = Duration::from_secs(3);

/// Runs the workload to the end.
pub async fn run(plan: WorkloadPlan, env: Environment, shared: Arc<Shared>) -> anyhow::Result<()> {
    if plan.record_padding > 0 {
        crate::coverage::hit("workload_big_batches");
    }
    create_topics(&plan, &env, &shared).await?;
    shared.topics_ready.store(true, Ordering::SeqCst);
    shared.note("topics ready");

    let consumers_stop = Arc::new(AtomicBool::new(false));
    let trimmer = plan
        .trims
        .then(|| -> anyhow::Result<_> {
            let trimmer = trimmer::Trimmer::new(&plan, env.client(0)?, Arc::clone(&shared));
            Ok(tokio::spawn(trimmer.run()))
        })
        .transpose()?;
    let mut producers = Vec::new();
    for id in 0..plan.producers {
        let producer = producer::Producer::start(id, &plan, env.client(0)?, Arc::clone(&shared)).await?;
        producers.push(tokio::spawn(producer.run(SETTLE)));
    }
    let partitions = plan.partitions();
    let mut consumers = Vec::new();
    for id in 0..plan.consumers {
        let assigned: Vec<PartitionKey> = partitions
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u32 % plan.consumers == id)
            .map(|(_, p)| p.clone())
            .collect();
        let consumer = consumer::Consumer::new(id, assigned, env.client(0)?, Arc::clone(&shared));
        consumers.push(tokio::spawn(consumer.run(Arc::clone(&consumers_stop))));
    }
    let producers_done = Arc::new(AtomicBool::new(false));
    let mut groups = Vec::new();
    for (index, spec) in plan.groups.iter().enumerate() {
        groups.push(tokio::spawn(group_consumer::run(
            spec.clone(),
            index as u32,
            plan.seed,
            env.clone(),
            Arc::clone(&shared),
            Arc::clone(&producers_done),
        )));
    }
    for producer in producers {
        producer.await?;
    }
    producers_done.store(true, Ordering::SeqCst);
    consumers_stop.store(true, Ordering::SeqCst);
    for consumer in consumers {
        consumer.await?;
    }
    for group in groups {
        group.await??;
    }
    if let Some(trimmer) = trimmer {
        trimmer.await?;
    }

    tokio::time::sleep(QUIET).await;
    drain::run(&plan, &env, &shared).await
}

/// Creates every topic, waiting for the cluster to form. Creation is not idempotent, so a
/// retry that finds the topic already there counts as success.
async fn create_topics(plan: &WorkloadPlan, env: &Environment, shared: &Shared) -> anyhow::Result<()> {
    let admin = env.client(3)?;
    let deadline = Instant::now() + STARTUP_DEADLINE;
    shared.history.lock().record_bytes_max = record_bytes_max(plan);
    for topic in &plan.topics {
        let setting = plan.retention.get(&topic.name);
        let config = setting.map(topic_config).unwrap_or_default();
        let config: Vec<(&str, &str)> = config.iter().map(|(k, v)| (*k, v.as_str())).collect();
        if let Some(setting) = setting {
            // Recorded before the create: from then on the topic may be trimmed.
            shared.history.lock().retention.entry(topic.name.clone()).or_default().push(setting.clone());
        }
        loop {
            match admin.create_topic_with_config(&topic.name, topic.partitions, plan.replication_factor, &config).await
            {
                Ok(_) => break,
                Err(err) if err.code() == Some(ErrorCode::TopicExists) => break,
                Err(err) if Instant::now() < deadline => {
                    shared.note(format!("create topic {}: {}", topic.name, error_chain(&err)));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => {
                    bail!("the cluster did not create topic {:?} within {STARTUP_DEADLINE:?}: {err}", topic.name)
                }
            }
        }
        let mut history = shared.history.lock();
        history.created_topics.insert(topic.name.clone());
        history.partitions.extend((0..topic.partitions).map(|p| PartitionKey::new(&topic.name, p)));
    }
    Ok(())
}

/// The part of a record's value the history keeps: everything before the padding a big-batch
/// seed appends (after a '.').
pub fn label(value: &[u8]) -> String {
    let end = value.iter().position(|b| *b == b'.').unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end]).into_owned()
}

/// The largest record the workload sends, key and padding included.
pub fn record_bytes_max(plan: &WorkloadPlan) -> u64 {
    // A 3-byte key, a value such as "p3-000123" (12 bytes leaves room), a '.' and the padding.
    3 + 12 + if plan.record_padding > 0 { 1 + plan.record_padding as u64 } else { 0 }
}

/// The topic configuration that asks for `setting`.
fn topic_config(setting: &RetentionSetting) -> Vec<(&'static str, String)> {
    let limit = |bound: Option<u64>| bound.map_or_else(|| "unlimited".to_string(), |b| b.to_string());
    vec![
        ("retention.ms", limit(setting.max_age_ms)),
        ("retention.bytes", limit(setting.max_bytes)),
        ("max.message.bytes", setting.max_batch_bytes.to_string()),
    ]
}

/// Whether a failed produce certainly appended nothing: the server promises that for these
/// codes (it refused before proposing, or the node it asked does not lead). Anything else
/// (a timeout, a lost connection, `Unavailable` mid-commit) leaves the outcome unknown.
pub fn definitely_not_appended(err: &ClientError) -> bool {
    // `SequenceInDoubt`: the session refused to send other records before an in-doubt batch.
    matches!(err, ClientError::SequenceInDoubt { .. })
        || matches!(
            err.code(),
            Some(
                ErrorCode::UnknownTopic
                    | ErrorCode::PartitionOutOfRange
                    | ErrorCode::EmptyBatch
                    | ErrorCode::RecordTooLarge
                    | ErrorCode::BatchTooLarge
                    | ErrorCode::TooManyRecords
                    | ErrorCode::InvalidRequest
                    | ErrorCode::NotLeader
                    | ErrorCode::LeaderUnavailable
                    | ErrorCode::ReplicaNotHere
                    | ErrorCode::ProducerFenced
                    | ErrorCode::OutOfOrderSequence
            )
        )
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

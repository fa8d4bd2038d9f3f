//! One producer session: keyed batches of run-unique values, one request at a time, retrying
//! what was not acknowledged. An idempotent session resends exactly the unacknowledged
//! records, as its contract asks, so none may ever appear twice. Now and then it abandons a request mid-flight (a client crash)
//! and retries. Once every fault is healed, each batch must be acknowledged within a bound.

use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{Client, ClientError, IdempotentProducer, v1};
use flotilla_types::partition_for_key;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::{WorkloadPlan, definitely_not_appended, error_chain};
use crate::checker::{Ack, PartitionKey};
use crate::coverage;
use crate::options::TopicSpec;
use crate::shared::Shared;

/// Distinct keys; records with one key share a partition.
const KEYS: u64 = 16;
/// Attempts per batch while faults are active; then the producer moves on.
const ATTEMPTS_DURING_FAULTS: u32 = 3;
/// Batches produced after every fault is healed; each must eventually be acknowledged.
const HEALED_BATCHES: u64 = 10;
/// Attempts per batch once healed: bounds how long the cluster may take to recover.
const ATTEMPTS_WHEN_HEALED: u32 = 40;
/// Pause between two attempts of one batch.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How long an idempotent producer may take to open its session.
const SESSION_DEADLINE: Duration = Duration::from_secs(60);

/// One producer session.
pub struct Producer {
    id: u32,
    topics: Vec<TopicSpec>,
    batch_records: u64,
    pause: Duration,
    abandon_chance: f64,
    client: Client,
    /// The idempotent session, for an idempotent producer.
    session: Option<IdempotentProducer>,
    shared: Arc<Shared>,
    rng: StdRng,
    next_value: u64,
    /// Bytes of padding after each value (see [`WorkloadPlan::record_padding`]).
    padding: Vec<u8>,
}

impl Producer {
    /// A producer; an idempotent one first opens its session, retrying until the cluster
    /// answers.
    pub async fn start(id: u32, plan: &WorkloadPlan, client: Client, shared: Arc<Shared>) -> anyhow::Result<Producer> {
        let mut session = None;
        if id < plan.idempotent_producers {
            let deadline = tokio::time::Instant::now() + SESSION_DEADLINE;
            loop {
                match client.idempotent_producer().await {
                    Ok(opened) => {
                        shared.note(format!("producer {id}: idempotent session {}", opened.producer_id()));
                        session = Some(opened);
                        break;
                    }
                    Err(err) if tokio::time::Instant::now() < deadline => {
                        shared.note(format!("producer {id}: opening a session: {}", error_chain(&err)));
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(err) => anyhow::bail!("producer {id} could not open an idempotent session: {err}"),
                }
            }
        }
        Ok(Producer {
            session,
            id,
            topics: plan.topics.clone(),
            batch_records: plan.batch_records,
            pause: plan.produce_pause,
            abandon_chance: plan.abandon_chance,
            client,
            shared,
            rng: StdRng::seed_from_u64(plan.seed ^ 0x7072_6f64_7563_6572 ^ u64::from(id).wrapping_mul(0x9E37_79B9)),
            next_value: 0,
            padding: if plan.record_padding > 0 {
                let mut padding = vec![b'x'; plan.record_padding + 1];
                padding[0] = b'.';
                padding
            } else {
                Vec::new()
            },
        })
    }

    /// Produces until the faults are healed, waits `settle`, then checks the cluster serves.
    pub async fn run(mut self, settle: Duration) {
        while !self.shared.faults_done() {
            if let Some(first) = self.produce_one(ATTEMPTS_DURING_FAULTS).await
                && self.session.is_some()
            {
                // An idempotent producer gives up on a batch only after the heal.
                self.healed_batch_failed(&first);
                return;
            }
            tokio::time::sleep(self.pause).await;
        }
        tokio::time::sleep(settle).await;
        for _ in 0..HEALED_BATCHES {
            if let Some(first) = self.produce_one(ATTEMPTS_WHEN_HEALED).await {
                self.healed_batch_failed(&first);
                // One such failure says it all; more would only run the clock out.
                return;
            }
            tokio::time::sleep(self.pause).await;
        }
    }

    fn healed_batch_failed(&self, first: &str) {
        self.shared.history.lock().liveness_failures.push(format!(
            "producer {}: the batch starting with {first:?} was not acknowledged in {ATTEMPTS_WHEN_HEALED} attempts after every fault was healed",
            self.id
        ));
    }

    /// Produces one fresh batch; `None` once all of it is acknowledged, else the batch's
    /// first value. A plain producer tries `attempts` times and moves on. An idempotent one
    /// must settle a batch before it sends another (its session refuses anything else), so
    /// it retries until acknowledged, or until `ATTEMPTS_WHEN_HEALED` attempts after the heal.
    async fn produce_one(&mut self, attempts: u32) -> Option<String> {
        let topic = self.topics.choose(&mut self.rng).expect("a plan has topics").name.clone();
        // An idempotent batch carries one key, so it is one partition's batch: after an
        // abandoned call the producer knows exactly which records are in doubt.
        let batch_key = self.rng.random_range(0..KEYS);
        let mut batch: Vec<(String, String)> = (0..self.batch_records)
            .map(|_| {
                let n = self.next_value;
                self.next_value += 1;
                let key = if self.session.is_some() { batch_key } else { self.rng.random_range(0..KEYS) };
                (format!("k{key:02}"), format!("p{}-{n:06}", self.id))
            })
            .collect();
        let first = batch.first().map(|(_, v)| v.clone()).unwrap_or_default();
        {
            let mut history = self.shared.history.lock();
            for (_, value) in &batch {
                history.attempt(value, self.session.is_some());
            }
        }
        let mut attempt = 0;
        let mut attempts_after_heal = 0;
        let first_sent_ms = self.shared.now().as_millis() as u64;
        loop {
            attempt += 1;
            if attempt > 1 {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            batch = self.attempt(&topic, batch, attempt, first_sent_ms).await;
            if batch.is_empty() {
                return None;
            }
            if self.session.is_some() {
                attempts_after_heal += u32::from(self.shared.faults_done());
                if attempts_after_heal >= ATTEMPTS_WHEN_HEALED {
                    return Some(first);
                }
            } else if attempt >= attempts {
                return Some(first);
            }
        }
    }

    /// One produce call; returns the records that were not acknowledged.
    async fn attempt(
        &mut self,
        topic: &str,
        batch: Vec<(String, String)>,
        attempt: u32,
        first_sent_ms: u64,
    ) -> Vec<(String, String)> {
        let records: Vec<v1::Record> = batch
            .iter()
            .map(|(key, value)| {
                let mut bytes = value.clone().into_bytes();
                bytes.extend_from_slice(&self.padding);
                v1::Record { key: Some(key.clone().into_bytes().into()), value: bytes.into(), ..v1::Record::default() }
            })
            .collect();
        let abandon_after =
            self.rng.random_bool(self.abandon_chance).then(|| Duration::from_millis(self.rng.random_range(1..=40)));
        let call = async {
            match &self.session {
                Some(session) => match self.client.partition_count(topic).await {
                    Ok(partitions) => {
                        let key = records.first().and_then(|r| r.key.clone()).unwrap_or_default();
                        session.send(topic, partition_for_key(&key, partitions.max(1)), records).await
                    }
                    Err(err) => Err(err),
                },
                None => self.client.produce(topic, None, records).await,
            }
        };
        let result = match abandon_after {
            Some(after) => tokio::time::timeout(after, call).await.ok(),
            None => Some(call.await),
        };
        let (acks, failure, definite) = match result {
            Some(Ok(acks)) => (acks.into_iter().map(Some).collect(), None, false),
            Some(Err(ClientError::PartiallyAcknowledged { acks, source, .. })) => {
                let definite = definitely_not_appended(&source);
                (acks, Some(error_chain(&*source)), definite)
            }
            Some(Err(err)) => (vec![None; batch.len()], Some(error_chain(&err)), definitely_not_appended(&err)),
            None => {
                coverage::hit("client_abandoned_request");
                (vec![None; batch.len()], Some("the client abandoned the request mid-flight".to_string()), false)
            }
        };
        let mut unacknowledged = Vec::new();
        let acked_ms = self.shared.now().as_millis() as u64;
        {
            let mut history = self.shared.history.lock();
            for ((key, value), ack) in batch.into_iter().zip(acks) {
                match ack {
                    Some(ack) => {
                        let partition = PartitionKey::new(topic, ack.partition);
                        self.shared.note(format!("ack {partition}@{} {value}", ack.offset));
                        let bytes = (key.len() + value.len() + self.padding.len()) as u64;
                        history.acknowledged(Ack {
                            partition,
                            offset: ack.offset,
                            value,
                            producer: self.id,
                            bytes,
                            first_sent_ms,
                            acked_ms,
                        });
                    }
                    None => {
                        if definite {
                            history.refused(&value);
                        } else {
                            history.outcome_unknown(&value);
                        }
                        unacknowledged.push((key, value));
                    }
                }
            }
        }
        if let Some(failure) = failure {
            self.shared.note(format!(
                "producer {} attempt {attempt} left {} records unacknowledged: {failure}",
                self.id,
                unacknowledged.len()
            ));
        }
        unacknowledged
    }
}

//! `Consumer`: a member of a consumer group. It joins, heartbeats in the background, fetches
//! the partitions the coordinator assigns (one long-polling fetcher per partition, straight to
//! the partition's leader) and commits positions when told to (or on a timer).
//!
//! Hand-over and at-least-once: when the coordinator moves a partition to another member, this
//! member stops fetching it at once but gives it up only at the next [`Consumer::poll`] (or
//! [`Consumer::close`]): calling `poll` says the application is done with the records the last
//! one returned. With auto-commit the position is committed right before the partition is
//! released; with manual commits, call [`Consumer::commit`] before `poll` to keep the progress.
//! The new owner starts at the committed offset, so records after the last commit are
//! delivered again — and no record is ever skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_proto::v1;
use flotilla_types::{ErrorCode, PartitionId};
use tokio::sync::{Notify, mpsc};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::Client;
use crate::error::ClientError;

/// A topic's partition.
pub type TopicPartition = (String, PartitionId);

/// Where a member starts in a partition its group has committed nothing for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The first retained record: a new group processes the whole backlog.
    #[default]
    Earliest,
    /// The log end: a new group sees only records produced from now on.
    Latest,
}

/// Tunables of a [`Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The group to join.
    pub group: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Shown by `flo group describe`.
    pub client_id: String,
    /// The coordinator evicts the member after this long without a heartbeat; its partitions
    /// then go to the other members. Between 1 s and 300 s.
    pub session_timeout: Duration,
    /// The coordinator evicts the member if it keeps a revoked partition this long (it did not
    /// call `poll`). Between 1 s and 30 min.
    pub rebalance_timeout: Duration,
    /// Commit positions automatically at this interval (and before releasing a partition,
    /// and on close); `None` means only [`Consumer::commit`] commits.
    pub auto_commit: Option<Duration>,
    /// Where to start in partitions without a committed offset.
    pub start_from: StartFrom,
    /// Records one fetch asks for.
    pub fetch_max_records: u32,
    /// Bytes one fetch asks for (at least one record always comes).
    pub fetch_max_bytes: u32,
    /// How long a fetch waits at the partition leader for new records.
    pub fetch_max_wait: Duration,
    /// Fetched batches buffered ahead of `poll` across all partitions.
    pub prefetch_batches: usize,
}

impl ConsumerConfig {
    /// Defaults for consuming `topics` as a member of `group`: manual commits, start at the
    /// earliest record, 10 s session timeout.
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> Self {
        ConsumerConfig {
            group: group.into(),
            topics,
            client_id: "flotilla-rust".to_string(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(60),
            auto_commit: None,
            start_from: StartFrom::Earliest,
            fetch_max_records: 1_000,
            fetch_max_bytes: 1024 * 1024,
            fetch_max_wait: Duration::from_millis(500),
            prefetch_batches: 64,
        }
    }
}

/// One record as a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: Arc<str>,
    pub partition: PartitionId,
    pub offset: u64,
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<v1::Header>,
    pub timestamp_ms: i64,
}

/// A member of a consumer group. See the module docs for the delivery guarantee.
pub struct Consumer {
    shared: Arc<Shared>,
    batches: tokio::sync::Mutex<mpsc::Receiver<Fetched>>,
    membership: JoinHandle<()>,
    last_auto_commit: parking_lot::Mutex<Instant>,
}

struct Shared {
    client: Client,
    config: ConsumerConfig,
    state: parking_lot::Mutex<State>,
    /// Wakes the membership task: there is a release to report.
    heartbeat_now: Notify,
    /// Wakes `poll`: a partition is being revoked.
    revoked: Notify,
    batches: mpsc::Sender<Fetched>,
}

#[derive(Default)]
struct State {
    /// Member id and epoch, once joined.
    member: Option<(u64, u64)>,
    partitions: BTreeMap<TopicPartition, Owned>,
    /// Source of fetcher generations: batches of an older generation are stale.
    generations: u64,
}

struct Owned {
    /// Offset of the next record to hand to the application.
    position: u64,
    /// The last offset known committed for the group.
    committed: Option<u64>,
    generation: u64,
    /// The coordinator asked for it back; released at the next poll.
    revoking: bool,
    paused: bool,
    fetcher: Option<AbortHandle>,
}

struct Fetched {
    partition: TopicPartition,
    generation: u64,
    records: Vec<v1::FetchedRecord>,
    /// The fetcher found its position below the log start and moved up to this offset: the
    /// records in between were removed by retention, so the position moves past them too.
    skipped_to: Option<u64>,
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(fetcher) = self.fetcher.take() {
            fetcher.abort();
        }
    }
}

impl Consumer {
    /// Starts a member of `config.group`. Returns at once; the member joins in the background
    /// and records arrive through [`Consumer::poll`].
    pub fn new(client: Client, config: ConsumerConfig) -> Consumer {
        let (sender, receiver) = mpsc::channel(config.prefetch_batches.max(1));
        let shared = Arc::new(Shared {
            client,
            config,
            state: parking_lot::Mutex::new(State::default()),
            heartbeat_now: Notify::new(),
            revoked: Notify::new(),
            batches: sender,
        });
        let membership = tokio::spawn(run_membership(Arc::clone(&shared)));
        Consumer {
            shared,
            batches: tokio::sync::Mutex::new(receiver),
            membership,
            last_auto_commit: parking_lot::Mutex::new(Instant::now()),
        }
    }

    /// The member id, once joined.
    pub fn member_id(&self) -> Option<u64> {
        self.shared.state.lock().member.map(|(id, _)| id)
    }

    /// Partitions this member consumes now (revoked ones excluded).
    pub fn assignment(&self) -> BTreeSet<TopicPartition> {
        let state = self.shared.state.lock();
        state.partitions.iter().filter(|(_, o)| !o.revoking).map(|(tp, _)| tp.clone()).collect()
    }

    /// Offset of the next record [`Consumer::poll`] returns for each owned partition.
    pub fn positions(&self) -> BTreeMap<TopicPartition, u64> {
        let state = self.shared.state.lock();
        state.partitions.iter().map(|(tp, o)| (tp.clone(), o.position)).collect()
    }

    /// The next records, from any assigned partition, waiting up to `timeout` for some (an
    /// empty result means none arrived). Records of one partition come in offset order, each
    /// once per assignment. Calling `poll` also releases partitions being revoked (see the
    /// module docs) and runs the auto-commit.
    pub async fn poll(&self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.release_revoked().await;
            self.auto_commit().await;
            let mut batches = self.batches.lock().await;
            tokio::select! {
                biased;
                () = self.shared.revoked.notified() => continue,
                fetched = batches.recv() => {
                    let Some(fetched) = fetched else {
                        return Err(ClientError::Protocol { operation: "poll", detail: "the consumer is closed".into() });
                    };
                    let records = self.accept(fetched);
                    if !records.is_empty() {
                        return Ok(records);
                    }
                }
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            }
        }
    }

    /// Commits the position of every owned partition that moved since its last commit: the
    /// records [`Consumer::poll`] returned so far count as processed. Fenced by the member
    /// epoch: a member that was evicted gets `UNKNOWN_MEMBER` (its partitions went to others,
    /// which resume from the last successful commit).
    pub async fn commit(&self) -> Result<(), ClientError> {
        let offsets: Vec<(TopicPartition, u64)> = {
            let state = self.shared.state.lock();
            state
                .partitions
                .iter()
                .filter(|(_, o)| o.committed != Some(o.position))
                .map(|(tp, o)| (tp.clone(), o.position))
                .collect()
        };
        self.shared.commit(offsets).await
    }

    /// Moves the position of an owned partition: the next `poll` returns records from `offset`.
    pub fn seek(&self, topic: &str, partition: PartitionId, offset: u64) -> Result<(), ClientError> {
        let mut state = self.shared.state.lock();
        let generation = next_generation(&mut state);
        let owned = owned_mut(&mut state, &self.shared.config.group, topic, partition)?;
        owned.position = offset;
        owned.generation = generation;
        if !owned.paused && !owned.revoking {
            owned.fetcher = Some(self.shared.spawn_fetcher((topic.to_string(), partition), offset, generation));
        }
        Ok(())
    }

    /// Stops returning records of an owned partition until [`Consumer::resume`]; the member
    /// keeps the partition.
    pub fn pause(&self, topic: &str, partition: PartitionId) -> Result<(), ClientError> {
        let mut state = self.shared.state.lock();
        let generation = next_generation(&mut state);
        let owned = owned_mut(&mut state, &self.shared.config.group, topic, partition)?;
        owned.paused = true;
        owned.generation = generation;
        owned.fetcher = None;
        Ok(())
    }

    /// Undoes [`Consumer::pause`].
    pub fn resume(&self, topic: &str, partition: PartitionId) -> Result<(), ClientError> {
        let mut state = self.shared.state.lock();
        let generation = next_generation(&mut state);
        let owned = owned_mut(&mut state, &self.shared.config.group, topic, partition)?;
        if owned.paused {
            owned.paused = false;
            owned.generation = generation;
            if !owned.revoking {
                owned.fetcher =
                    Some(self.shared.spawn_fetcher((topic.to_string(), partition), owned.position, generation));
            }
        }
        Ok(())
    }

    /// Leaves the group gracefully: stops fetching, commits if auto-commit is on, and tells the
    /// coordinator, so the partitions move to the other members at once instead of after the
    /// session timeout.
    pub async fn close(self) -> Result<(), ClientError> {
        self.membership.abort();
        if self.shared.config.auto_commit.is_some() {
            self.commit().await?;
        }
        let member = {
            let mut state = self.shared.state.lock();
            state.partitions.clear();
            state.member.take()
        };
        match member {
            Some((member_id, _)) => match self.shared.client.leave_group(&self.shared.config.group, member_id).await {
                Err(err) if err.code() == Some(ErrorCode::UnknownMember) => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    /// Records of a fetched batch that are still wanted, advancing the partition's position.
    fn accept(&self, fetched: Fetched) -> Vec<ConsumerRecord> {
        let mut state = self.shared.state.lock();
        let Some(owned) = state.partitions.get_mut(&fetched.partition) else { return Vec::new() };
        if owned.generation != fetched.generation || owned.revoking || owned.paused {
            return Vec::new();
        }
        if let Some(log_start) = fetched.skipped_to
            && owned.position < log_start
        {
            // Retention removed the records from the position up to the log start.
            owned.position = log_start;
        }
        let topic: Arc<str> = Arc::from(fetched.partition.0.as_str());
        let mut out = Vec::with_capacity(fetched.records.len());
        for fetched_record in fetched.records {
            // Fetches are contiguous from the position the fetcher started at; anything else
            // is a stale batch (a seek raced it) and is dropped.
            if fetched_record.offset != owned.position {
                continue;
            }
            let record = fetched_record.record.unwrap_or_default();
            owned.position += 1;
            out.push(ConsumerRecord {
                topic: Arc::clone(&topic),
                partition: fetched.partition.1,
                offset: fetched_record.offset,
                key: record.key,
                value: record.value,
                headers: record.headers,
                timestamp_ms: record.timestamp_ms,
            });
        }
        out
    }

    /// Gives up partitions being revoked (committing them first with auto-commit) and tells
    /// the coordinator at once.
    async fn release_revoked(&self) {
        let revoked: Vec<(TopicPartition, u64, Option<u64>)> = {
            let state = self.shared.state.lock();
            state
                .partitions
                .iter()
                .filter(|(_, o)| o.revoking)
                .map(|(tp, o)| (tp.clone(), o.position, o.committed))
                .collect()
        };
        if revoked.is_empty() {
            return;
        }
        if self.shared.config.auto_commit.is_some() {
            let offsets: Vec<(TopicPartition, u64)> = revoked
                .iter()
                .filter(|(_, position, committed)| *committed != Some(*position))
                .map(|(tp, position, _)| (tp.clone(), *position))
                .collect();
            if let Err(err) = self.shared.commit(offsets).await {
                tracing::warn!(group = %self.shared.config.group, error = %err, "commit before releasing partitions failed");
            }
        }
        {
            let mut state = self.shared.state.lock();
            for (tp, _, _) in &revoked {
                state.partitions.remove(tp);
            }
        }
        self.shared.heartbeat_now.notify_one();
    }

    async fn auto_commit(&self) {
        let Some(interval) = self.shared.config.auto_commit else { return };
        let due = {
            let mut last = self.last_auto_commit.lock();
            let due = last.elapsed() >= interval;
            if due {
                *last = Instant::now();
            }
            due
        };
        if due && let Err(err) = self.commit().await {
            tracing::warn!(group = %self.shared.config.group, error = %err, "auto-commit failed");
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // Without `close` the member is evicted after its session timeout.
        self.membership.abort();
        self.shared.state.lock().partitions.clear();
    }
}

impl Shared {
    /// Commits `offsets` as the current member, recording them as committed.
    async fn commit(&self, offsets: Vec<(TopicPartition, u64)>) -> Result<(), ClientError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let Some((member_id, member_epoch)) = self.state.lock().member else {
            return Err(ClientError::Protocol {
                operation: "commit",
                detail: format!("not a member of group {:?} (yet, or any more)", self.config.group),
            });
        };
        let message = v1::CommitOffsetsRequest {
            group: self.config.group.clone(),
            member_id,
            member_epoch,
            offsets: offsets
                .iter()
                .map(|((topic, partition), offset)| v1::PartitionOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
        };
        self.client.commit_offsets(message).await?;
        let mut state = self.state.lock();
        for (tp, offset) in offsets {
            if let Some(owned) = state.partitions.get_mut(&tp) {
                owned.committed = Some(owned.committed.map_or(offset, |c| c.max(offset)));
            }
        }
        Ok(())
    }

    /// A task fetching `partition` from `offset` into the batch channel, for `generation`.
    fn spawn_fetcher(&self, partition: TopicPartition, offset: u64, generation: u64) -> AbortHandle {
        let client = self.client.clone();
        let sender = self.batches.clone();
        let (max_records, max_bytes) = (self.config.fetch_max_records, self.config.fetch_max_bytes);
        let wait_ms = u32::try_from(self.config.fetch_max_wait.as_millis()).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            let (topic, p) = partition.clone();
            let mut offset = offset;
            let mut skipped_to = None;
            loop {
                match client.fetch(&topic, p, offset, max_records, max_bytes, wait_ms).await {
                    Ok(response) => {
                        let Some(last) = response.records.last().map(|r| r.offset) else { continue };
                        let fetched = Fetched {
                            partition: partition.clone(),
                            generation,
                            records: response.records,
                            skipped_to: skipped_to.take(),
                        };
                        if sender.send(fetched).await.is_err() {
                            return;
                        }
                        offset = last + 1;
                    }
                    Err(err) if err.code() == Some(ErrorCode::OffsetOutOfRange) => {
                        // Below the log start (retention removed the records): go to the first
                        // retained record. Otherwise wait; the position cannot be past the end.
                        match client.list_offsets(&topic).await {
                            Ok(all) => match all.iter().find(|o| o.partition == p) {
                                Some(found) if offset < found.log_start_offset => {
                                    tracing::warn!(
                                        topic,
                                        partition = p,
                                        offset,
                                        log_start = found.log_start_offset,
                                        "position below the log start; skipping to it"
                                    );
                                    offset = found.log_start_offset;
                                    skipped_to = Some(offset);
                                }
                                _ => tokio::time::sleep(Duration::from_millis(500)).await,
                            },
                            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                        }
                    }
                    Err(err) => {
                        tracing::debug!(topic, partition = p, offset, error = %err, "fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        })
        .abort_handle()
    }

    /// Takes in the coordinator's answer: starts fetching new partitions (from the committed
    /// offset), stops fetching revoked ones, drops ones taken away outright.
    async fn apply(&self, member_epoch: u64, assignment: Vec<v1::TopicPartitions>, revoking: Vec<v1::TopicPartitions>) {
        let assigned = flotilla_proto::flatten_topics(assignment);
        let revoking = flotilla_proto::flatten_topics(revoking);
        let new: Vec<TopicPartition> = {
            let mut state = self.state.lock();
            if let Some((_, epoch)) = state.member.as_mut() {
                *epoch = member_epoch;
            }
            state.partitions.retain(|tp, _| assigned.contains(tp) || revoking.contains(tp));
            let mut any_revoked = false;
            for tp in &revoking {
                if let Some(owned) = state.partitions.get_mut(tp)
                    && !owned.revoking
                {
                    owned.revoking = true;
                    owned.fetcher = None;
                    any_revoked = true;
                }
            }
            if any_revoked {
                self.revoked.notify_one();
            }
            assigned.iter().filter(|tp| !state.partitions.contains_key(*tp)).cloned().collect()
        };
        if new.is_empty() {
            return;
        }
        let starts = match self.start_positions(&new).await {
            Ok(starts) => starts,
            Err(err) => {
                // Not taken yet: the next heartbeat lists them again.
                tracing::warn!(group = %self.config.group, error = %err, "cannot read start offsets of new partitions");
                return;
            }
        };
        let mut state = self.state.lock();
        for (tp, (position, committed)) in starts {
            if state.partitions.contains_key(&tp) || state.member.is_none() {
                continue;
            }
            let generation = next_generation(&mut state);
            let fetcher = Some(self.spawn_fetcher(tp.clone(), position, generation));
            state
                .partitions
                .insert(tp, Owned { position, committed, generation, revoking: false, paused: false, fetcher });
        }
    }

    /// Where to start in each of `partitions`: the committed offset, else per `start_from`.
    async fn start_positions(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, (u64, Option<u64>)>, ClientError> {
        let committed: BTreeMap<TopicPartition, u64> = self
            .client
            .group_offsets(&self.config.group)
            .await?
            .into_iter()
            .map(|c| ((c.topic, c.partition), c.offset))
            .collect();
        let mut out = BTreeMap::new();
        let mut log_offsets: BTreeMap<String, Vec<v1::PartitionOffsets>> = BTreeMap::new();
        for tp in partitions {
            if let Some(offset) = committed.get(tp) {
                out.insert(tp.clone(), (*offset, Some(*offset)));
                continue;
            }
            if !log_offsets.contains_key(&tp.0) {
                log_offsets.insert(tp.0.clone(), self.client.list_offsets(&tp.0).await?);
            }
            let found =
                log_offsets[&tp.0].iter().find(|o| o.partition == tp.1).ok_or_else(|| ClientError::Protocol {
                    operation: "list offsets",
                    detail: format!("no offsets for partition {} of topic {:?}", tp.1, tp.0),
                })?;
            let start = match self.config.start_from {
                StartFrom::Earliest => found.log_start_offset,
                StartFrom::Latest => found.high_watermark,
            };
            out.insert(tp.clone(), (start, None));
        }
        Ok(out)
    }
}

/// Joins, heartbeats and follows the assignment for the consumer's lifetime.
async fn run_membership(shared: Arc<Shared>) {
    let mut interval = Duration::from_millis(500);
    loop {
        let member = shared.state.lock().member;
        match member {
            None => {
                let request = v1::JoinGroupRequest {
                    group: shared.config.group.clone(),
                    topics: shared.config.topics.clone(),
                    session_timeout_ms: millis(shared.config.session_timeout),
                    rebalance_timeout_ms: millis(shared.config.rebalance_timeout),
                    client_id: shared.config.client_id.clone(),
                };
                match shared.client.join_group(request).await {
                    Ok(joined) => {
                        tracing::info!(group = %shared.config.group, member_id = joined.member_id, "joined consumer group");
                        shared.state.lock().member = Some((joined.member_id, joined.member_epoch));
                        interval = Duration::from_millis(u64::from(joined.heartbeat_interval_ms.max(50)));
                        shared.apply(joined.member_epoch, joined.assignment, Vec::new()).await;
                    }
                    Err(err) => {
                        tracing::warn!(group = %shared.config.group, error = %err, "cannot join consumer group")
                    }
                }
            }
            Some((member_id, member_epoch)) => {
                let owned: Vec<TopicPartition> = shared.state.lock().partitions.keys().cloned().collect();
                let request = v1::HeartbeatRequest {
                    group: shared.config.group.clone(),
                    member_id,
                    member_epoch,
                    owned: flotilla_proto::group_by_topic(&owned),
                };
                match shared.client.group_heartbeat(request).await {
                    Ok(reply) => {
                        interval = Duration::from_millis(u64::from(reply.heartbeat_interval_ms.max(50)));
                        shared.apply(reply.member_epoch, reply.assignment, reply.revoking).await;
                    }
                    Err(err) if err.code() == Some(ErrorCode::UnknownMember) => {
                        // Evicted: everything it owned went to others. Stop and join afresh.
                        tracing::warn!(group = %shared.config.group, member_id, "evicted from the group; rejoining");
                        let mut state = shared.state.lock();
                        state.member = None;
                        state.partitions.clear();
                        continue;
                    }
                    Err(err) => tracing::warn!(group = %shared.config.group, error = %err, "heartbeat failed"),
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shared.heartbeat_now.notified() => {}
        }
    }
}

fn next_generation(state: &mut State) -> u64 {
    state.generations += 1;
    state.generations
}

fn owned_mut<'a>(
    state: &'a mut State,
    group: &str,
    topic: &str,
    partition: PartitionId,
) -> Result<&'a mut Owned, ClientError> {
    state.partitions.get_mut(&(topic.to_string(), partition)).ok_or_else(|| ClientError::Protocol {
        operation: "seek/pause/resume",
        detail: format!("partition {partition} of topic {topic:?} is not assigned to this member of group {group:?}"),
    })
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

//! Consumer groups: members built on the SDK's `Consumer`, as an application runs them — poll,
//! process, commit — recording every record delivered, every commit and every ownership stint
//! they can see, plus a monitor that reads the group's committed offsets now and then. Members
//! keep working through the nemesis' faults; some are replaced on the way, either closed
//! gracefully or abandoned without a word (a dying process, which the coordinator must evict
//! after its session timeout). After the producers finish, the group must commit up to the
//! log end of every partition within a bound.
//!
//! What a member can see of its ownership: `Consumer::positions()` lists the partitions it
//! holds and where it stands. A partition appearing, disappearing, or standing somewhere its
//! deliveries do not explain marks a stint (the SDK read its start position at the
//! coordinator). A drop and a re-acquisition between two looks go unseen when the member
//! resumes exactly where it stood, which changes nothing for the checker.
//!
//! The recorded commits and stints rely on nothing else running between a look at the
//! consumer and the call after it (a simulated host's runtime is single-threaded), so the
//! real-process chaos test, on a multi-threaded runtime, runs no groups yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flotilla_client::{Client, ClientError, Consumer, ConsumerConfig, ConsumerRecord, ErrorCode};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use super::{Environment, error_chain};
use crate::checker::{CommitOutcome, GroupCommit, GroupOffsetRead, GroupPoll, GroupStint, PartitionKey};
use crate::coverage;
use crate::shared::Shared;

/// One consumer group of the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSpec {
    pub name: String,
    /// Topics every member subscribes to.
    pub topics: Vec<String>,
    /// Members running at once.
    pub members: u32,
    /// The coordinator evicts a member this long after its last heartbeat.
    #[serde(serialize_with = "crate::options::millis")]
    pub session_timeout: Duration,
    /// Whether members are replaced now and then during the faults (closed or abandoned).
    pub churn: bool,
    /// A deliberate bug ([`crate::options::Bug::GroupSkip`]): members seek one record past
    /// where they start in a partition, to prove the checker sees skipped records.
    pub skip_on_start: bool,
}

/// Retries of a member's client per call (joins, heartbeats, fetches, commits): a few, so a
/// call outlives a leader change but a member still notices an outage within seconds.
const MEMBER_RETRIES: u32 = 3;
/// A member holding a revoked partition is evicted after this long. Well above what a commit
/// can take under faults (`MEMBER_RETRIES` attempts of the request timeout each), since the
/// member releases at its next poll, right after that commit.
const REBALANCE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one member lives when its group churns, before it is closed or abandoned.
const LIFETIME_MS: std::ops::RangeInclusive<u64> = 3_000..=30_000;
/// How long the group may take, once the producers are done, to commit every partition up to
/// its log end. Members abandoned just before the heal are evicted within their session
/// timeout (at most 6 s); the rest is catching up on a backlog of a few thousand records.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two catch-up checks.
const CATCH_UP_PAUSE: Duration = Duration::from_millis(500);
/// Pause after a failed call before trying again.
const ERROR_PAUSE: Duration = Duration::from_millis(200);

/// Runs one group: its members and monitor until `producers_done`, then the catch-up check,
/// then every member leaves and a last read of the offsets is taken.
pub async fn run(
    spec: GroupSpec,
    index: u32,
    seed: u64,
    env: Environment,
    shared: Arc<Shared>,
    producers_done: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    shared.history.lock().groups.insert(spec.name.clone(), spec.topics.iter().cloned().collect());
    let group_seed = seed ^ 0x6772_6f75_7073_2121 ^ u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let stop = Arc::new(AtomicBool::new(false));
    let book = Arc::new(Mutex::new(Book::default()));
    let monitor =
        tokio::spawn(monitor(spec.name.clone(), group_seed, env.client(1)?, Arc::clone(&shared), Arc::clone(&stop)));
    let mut slots = Vec::new();
    for slot in 0..spec.members {
        let slot = Slot {
            spec: spec.clone(),
            slot,
            rng: StdRng::seed_from_u64(group_seed ^ u64::from(slot + 1).wrapping_mul(0xA24B_AED4_963E_E407)),
            env: env.clone(),
            shared: Arc::clone(&shared),
            book: Arc::clone(&book),
            stop: Arc::clone(&stop),
        };
        slots.push(tokio::spawn(slot.run()));
    }
    while !producers_done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    catch_up(&spec, &env, &shared).await?;
    stop.store(true, Ordering::SeqCst);
    for slot in slots {
        slot.await??;
    }
    monitor.await??;
    // After every member left: what the group keeps.
    let reader = env.client(MEMBER_RETRIES)?;
    let deadline = Instant::now() + CATCH_UP_DEADLINE;
    loop {
        match read_offsets(&reader, &spec.name, &shared).await {
            Ok(_) => return Ok(()),
            Err(err) if Instant::now() < deadline => {
                shared.note(format!("group {}: final offset read: {}", spec.name, error_chain(&err)));
                tokio::time::sleep(CATCH_UP_PAUSE).await;
            }
            Err(err) => {
                shared.history.lock().liveness_failures.push(format!(
                    "group {}: its committed offsets could not be read after the heal: {}",
                    spec.name,
                    error_chain(&err)
                ));
                return Ok(());
            }
        }
    }
}

/// Waits for the group to commit every partition of its topics up to the log end the
/// partition has now that the producers are done; records a liveness failure otherwise.
async fn catch_up(spec: &GroupSpec, env: &Environment, shared: &Shared) -> anyhow::Result<()> {
    let client = env.client(MEMBER_RETRIES)?;
    let started = Instant::now();
    let deadline = started + CATCH_UP_DEADLINE;
    let mut ends: BTreeMap<PartitionKey, u64> = BTreeMap::new();
    for topic in &spec.topics {
        loop {
            match client.list_offsets(topic).await {
                Ok(offsets) => {
                    ends.extend(offsets.iter().map(|o| (PartitionKey::new(topic, o.partition), o.high_watermark)));
                    break;
                }
                Err(err) if Instant::now() < deadline => {
                    shared.note(format!("group {}: log ends of {topic}: {}", spec.name, error_chain(&err)));
                    tokio::time::sleep(CATCH_UP_PAUSE).await;
                }
                Err(err) => {
                    shared.history.lock().liveness_failures.push(format!(
                        "group {}: the log ends of topic {topic} could not be read after the heal: {}",
                        spec.name,
                        error_chain(&err)
                    ));
                    return Ok(());
                }
            }
        }
    }
    let mut behind = String::from("no read of its offsets succeeded");
    loop {
        match read_offsets(&client, &spec.name, shared).await {
            Ok(committed) => {
                let lagging: Vec<String> = ends
                    .iter()
                    .filter(|(partition, end)| committed.get(*partition).copied().unwrap_or(0) < **end)
                    .map(|(partition, end)| {
                        let at = committed.get(partition).map_or("nothing".to_string(), u64::to_string);
                        format!("{partition} at {at} of {end}")
                    })
                    .collect();
                if lagging.is_empty() {
                    shared.note(format!(
                        "group {}: committed up to the log end of all {} partitions {:.1}s after the producers finished",
                        spec.name,
                        ends.len(),
                        started.elapsed().as_secs_f64()
                    ));
                    return Ok(());
                }
                behind = lagging.join(", ");
            }
            Err(err) => shared.note(format!("group {}: offset read: {}", spec.name, error_chain(&err))),
        }
        if Instant::now() >= deadline {
            shared.history.lock().liveness_failures.push(format!(
                "group {}: did not commit up to the log end within {CATCH_UP_DEADLINE:?} after the producers finished: {behind}",
                spec.name
            ));
            return Ok(());
        }
        tokio::time::sleep(CATCH_UP_PAUSE).await;
    }
}

/// Reads the group's committed offsets now and then until `stop`.
async fn monitor(
    group: String,
    seed: u64,
    client: Client,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6d6f_6e69_746f_7221);
    while !stop.load(Ordering::SeqCst) {
        if let Err(err) = read_offsets(&client, &group, &shared).await {
            // Before the first member joins the group does not exist; during faults the
            // coordinator may be out of reach. Either way the next read comes soon.
            shared.note(format!("group {group}: monitor read: {}", error_chain(&err)));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..=600))).await;
    }
    Ok(())
}

/// One read of the group's committed offsets, recorded with its place in the history.
async fn read_offsets(
    client: &Client,
    group: &str,
    shared: &Shared,
) -> Result<BTreeMap<PartitionKey, u64>, ClientError> {
    let (started, started_ms) = (shared.history.lock().tick(), millis(shared.now()));
    let answer = client.group_offsets(group).await?;
    let offsets: BTreeMap<PartitionKey, u64> =
        answer.into_iter().map(|c| (PartitionKey::new(c.topic, c.partition), c.offset)).collect();
    let ended_ms = millis(shared.now());
    let mut history = shared.history.lock();
    let ended = history.tick();
    history.group_reads.push(GroupOffsetRead {
        group: group.to_string(),
        started,
        ended,
        started_ms,
        ended_ms,
        offsets: offsets.clone(),
    });
    Ok(offsets)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// What the members of one group learn of each other, for coverage only.
#[derive(Default)]
struct Book {
    /// Per partition: the member of the last stint, and whether it gave the partition up while
    /// still a member (a revoke it honoured) rather than by losing its membership.
    last_owner: BTreeMap<PartitionKey, (String, bool)>,
    /// Per partition: one past the highest offset delivered to any member.
    delivered_end: BTreeMap<PartitionKey, u64>,
}

/// One member slot of a group: a member, and when it is replaced, the next.
struct Slot {
    spec: GroupSpec,
    slot: u32,
    rng: StdRng,
    env: Environment,
    shared: Arc<Shared>,
    book: Arc<Mutex<Book>>,
    stop: Arc<AtomicBool>,
}

impl Slot {
    async fn run(mut self) -> anyhow::Result<()> {
        for generation in 0u32.. {
            let name = format!("{}.{generation}", self.slot);
            let lifetime = self.spec.churn.then(|| Duration::from_millis(self.rng.random_range(LIFETIME_MS)));
            let config = ConsumerConfig {
                client_id: format!("sim-{name}"),
                session_timeout: self.spec.session_timeout,
                rebalance_timeout: REBALANCE_TIMEOUT,
                fetch_max_records: self.rng.random_range(20..=200),
                ..ConsumerConfig::new(self.spec.name.clone(), self.spec.topics.clone())
            };
            let created = self.shared.history.lock().tick();
            let member = Member {
                group: self.spec.name.clone(),
                name,
                consumer: Consumer::new(self.env.client(MEMBER_RETRIES)?, config),
                shared: Arc::clone(&self.shared),
                book: Arc::clone(&self.book),
                rng: StdRng::seed_from_u64(self.rng.random()),
                created,
                member_id: None,
                tracked: BTreeMap::new(),
                last_present: BTreeMap::new(),
                commit_every: self.rng.random_range(1..=3),
                uncommitted_polls: 0,
                skip_on_start: self.spec.skip_on_start,
            };
            self.shared.note(format!("group {}: member {} starts", member.group, member.name));
            if member.run(lifetime, &self.stop).await == Ended::Stopped {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Why a member stopped.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The workload is over; the member left the group.
    Stopped,
    /// Its lifetime ran out: it was closed or abandoned, and the slot starts another.
    Replaced,
}

/// What a member knows of one partition it holds.
struct Tracked {
    stint: u64,
    /// Where it stands: the next offset `poll` should return.
    position: u64,
    /// The last tick at which the member was seen holding the partition in this stint.
    last_seen: u64,
}

/// One `Consumer` and what it has seen.
struct Member {
    group: String,
    name: String,
    consumer: Consumer,
    shared: Arc<Shared>,
    book: Arc<Mutex<Book>>,
    rng: StdRng,
    /// The tick before the consumer was created: it read nothing before.
    created: u64,
    /// The SDK's member id when last looked at.
    member_id: Option<u64>,
    tracked: BTreeMap<PartitionKey, Tracked>,
    /// Partitions held before and not now: the last tick at which each was held.
    last_present: BTreeMap<PartitionKey, u64>,
    /// Commit after this many polls that returned records.
    commit_every: u32,
    uncommitted_polls: u32,
    /// See [`GroupSpec::skip_on_start`].
    skip_on_start: bool,
}

impl Member {
    /// Poll, process, commit, until `stop` or the end of `lifetime` (only before the heal).
    async fn run(mut self, lifetime: Option<Duration>, stop: &AtomicBool) -> Ended {
        let end_of_life = lifetime.map(|lifetime| Instant::now() + lifetime);
        loop {
            if stop.load(Ordering::SeqCst) {
                self.close().await;
                return Ended::Stopped;
            }
            if end_of_life.is_some_and(|end| Instant::now() >= end) && !self.shared.faults_done() {
                if self.rng.random_bool(0.5) {
                    self.abandon();
                } else {
                    self.close().await;
                }
                return Ended::Replaced;
            }
            self.observe();
            let timeout = Duration::from_millis(self.rng.random_range(100..=500));
            match self.consumer.poll(timeout).await {
                Ok(records) if !records.is_empty() => {
                    self.delivered(records);
                    self.observe();
                    // Processing.
                    tokio::time::sleep(Duration::from_millis(self.rng.random_range(0..=80))).await;
                    self.uncommitted_polls += 1;
                    if self.uncommitted_polls >= self.commit_every {
                        self.commit().await;
                    }
                }
                Ok(_) => {
                    if self.uncommitted_polls > 0 {
                        self.commit().await;
                    }
                }
                Err(err) => {
                    self.shared.note(format!("group {}: member {} poll: {}", self.group, self.name, error_chain(&err)));
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
    }

    /// Looks at what the member holds now, recording stints that began or ended since the
    /// last look; returns the positions.
    fn observe(&mut self) -> BTreeMap<PartitionKey, u64> {
        let positions: BTreeMap<PartitionKey, u64> = self
            .consumer
            .positions()
            .into_iter()
            .map(|((topic, partition), offset)| (PartitionKey::new(topic, partition), offset))
            .collect();
        let member_id = self.consumer.member_id();
        let same_membership = member_id.is_some() && member_id == self.member_id;
        if member_id != self.member_id {
            match (self.member_id, member_id) {
                (Some(old), Some(new)) => {
                    coverage::hit("group_member_rejoined");
                    self.shared.note(format!(
                        "group {}: member {} was evicted as id {old} and joined again as id {new}",
                        self.group, self.name
                    ));
                }
                (_, Some(new)) => {
                    self.shared.note(format!("group {}: member {} joined as id {new}", self.group, self.name))
                }
                (Some(old), None) => self
                    .shared
                    .note(format!("group {}: member {} lost its membership (id {old})", self.group, self.name)),
                (None, None) => {}
            }
            self.member_id = member_id;
        }
        let shared = Arc::clone(&self.shared);
        let mut history = shared.history.lock();
        let seq = history.tick();
        let gone: Vec<PartitionKey> = self.tracked.keys().filter(|p| !positions.contains_key(*p)).cloned().collect();
        for partition in gone {
            let tracked = self.tracked.remove(&partition).expect("listed above");
            self.last_present.insert(partition.clone(), tracked.last_seen);
            if same_membership {
                coverage::hit("group_partition_released");
            }
            if let Some(owner) = self.book.lock().last_owner.get_mut(&partition)
                && owner.0 == self.name
            {
                owner.1 = same_membership;
            }
            self.shared.note(format!(
                "group {}: member {} no longer holds {partition} (stood at {}; {})",
                self.group,
                self.name,
                tracked.position,
                if same_membership { "released" } else { "membership lost" }
            ));
        }
        let mut started = Vec::new();
        for (partition, position) in &positions {
            let read_after = match self.tracked.get_mut(partition) {
                Some(tracked) if tracked.position == *position => {
                    tracked.last_seen = seq;
                    continue;
                }
                Some(tracked) => tracked.last_seen,
                None => {
                    started.push((partition, *position));
                    self.last_present.get(partition).copied().unwrap_or(self.created)
                }
            };
            self.start_stint(&mut history, partition, *position, read_after, seq);
        }
        drop(history);
        if self.skip_on_start {
            for (partition, position) in started {
                // The deliberate bug, once per partition handed over: the next look sees the
                // member stand one further.
                let _ = self.consumer.seek(&partition.topic, partition.partition, position + 1);
            }
        }
        positions
    }

    /// Records what one poll delivered.
    fn delivered(&mut self, records: Vec<ConsumerRecord>) {
        let mut runs: Vec<(PartitionKey, Vec<(u64, String)>)> = Vec::new();
        for record in records {
            let partition = PartitionKey::new(record.topic.as_ref(), record.partition);
            let value = super::label(&record.value);
            match runs.last_mut() {
                Some((last, run)) if *last == partition => run.push((record.offset, value)),
                _ => runs.push((partition, vec![(record.offset, value)])),
            }
        }
        let shared = Arc::clone(&self.shared);
        let mut history = shared.history.lock();
        for (partition, run) in runs {
            let seq = history.tick();
            let (first, last) = (run[0].0, run[run.len() - 1].0);
            let stint = match self.tracked.get(&partition) {
                Some(tracked) if tracked.position == first => tracked.stint,
                // It stood elsewhere: the partition was dropped and handed back during the
                // poll, after the last look.
                Some(tracked) => {
                    let read_after = tracked.last_seen;
                    self.start_stint(&mut history, &partition, first, read_after, seq)
                }
                None => {
                    let read_after = self.last_present.get(&partition).copied().unwrap_or(self.created);
                    self.start_stint(&mut history, &partition, first, read_after, seq)
                }
            };
            {
                let mut book = self.book.lock();
                let end = book.delivered_end.entry(partition.clone()).or_default();
                if first < *end {
                    coverage::hit("group_record_redelivered");
                }
                *end = (*end).max(last + 1);
            }
            let tracked = self.tracked.get_mut(&partition).expect("a stint was started above");
            tracked.position = last + 1;
            tracked.last_seen = seq;
            history.group_polls.push(GroupPoll {
                group: self.group.clone(),
                member: self.name.clone(),
                stint,
                partition,
                records: run,
                seq,
            });
        }
    }

    /// Records a new stint of `partition` starting at `start`; returns its id.
    fn start_stint(
        &mut self,
        history: &mut crate::checker::History,
        partition: &PartitionKey,
        start: u64,
        read_after: u64,
        seq: u64,
    ) -> u64 {
        let id = history.group_stints.len() as u64;
        {
            let mut book = self.book.lock();
            if let Some((previous, released)) = book.last_owner.get(partition)
                && *previous != self.name
            {
                coverage::hit("group_partition_handed_over");
                if *released {
                    coverage::hit("group_hand_over_after_release");
                }
                // Resumed exactly where another member's acknowledged commit left it.
                let resumed = history.group_commits.iter().rev().find(|c| {
                    c.group == self.group
                        && c.outcome == CommitOutcome::Acknowledged
                        && c.offsets.contains_key(partition)
                });
                if start > 0 && resumed.is_some_and(|c| c.member != self.name && c.offsets[partition] == start) {
                    coverage::hit("group_resumed_at_anothers_commit");
                }
            }
            book.last_owner.insert(partition.clone(), (self.name.clone(), false));
        }
        history.group_stints.push(GroupStint {
            id,
            group: self.group.clone(),
            member: self.name.clone(),
            partition: partition.clone(),
            start,
            read_after,
        });
        self.tracked.insert(partition.clone(), Tracked { stint: id, position: start, last_seen: seq });
        self.shared.note(format!("group {}: member {} holds {partition} from offset {start}", self.group, self.name));
        id
    }

    /// Commits what the member has processed: every position it holds.
    async fn commit(&mut self) {
        // No await between this look and the SDK taking its own: both see the same positions.
        let offsets = self.observe();
        if offsets.is_empty() {
            self.uncommitted_polls = 0;
            return;
        }
        let sent = self.shared.history.lock().tick();
        let result = self.consumer.commit().await;
        let outcome = match &result {
            Ok(()) => CommitOutcome::Acknowledged,
            Err(err) => {
                let code = err.code();
                let point = match code {
                    Some(ErrorCode::UnknownMember) => Some("group_commit_refused_unknown_member"),
                    Some(ErrorCode::StaleMemberEpoch) => Some("group_commit_refused_stale_epoch"),
                    Some(ErrorCode::PartitionNotAssigned) => Some("group_commit_refused_not_assigned"),
                    Some(ErrorCode::OffsetRegression) => Some("group_commit_refused_regression"),
                    _ => None,
                };
                if let Some(point) = point {
                    coverage::hit(point);
                }
                CommitOutcome::Failed { code: code.map(|c| c.name().to_string()), error: error_chain(err) }
            }
        };
        let summary: Vec<String> = offsets.iter().map(|(p, o)| format!("{p}@{o}")).collect();
        match &outcome {
            CommitOutcome::Acknowledged => {
                self.uncommitted_polls = 0;
                self.shared.note(format!("group {}: member {} committed {}", self.group, self.name, summary.join(" ")));
            }
            CommitOutcome::Failed { error, .. } => self.shared.note(format!(
                "group {}: member {} commit of {} failed: {error}",
                self.group,
                self.name,
                summary.join(" ")
            )),
        }
        let mut history = self.shared.history.lock();
        let answered = history.tick();
        history.group_commits.push(GroupCommit {
            group: self.group.clone(),
            member: self.name.clone(),
            offsets,
            sent,
            answered,
            outcome,
        });
    }

    /// Leaves the group gracefully.
    async fn close(self) {
        coverage::hit("group_member_closed");
        let (group, name, shared) = (self.group.clone(), self.name.clone(), Arc::clone(&self.shared));
        match self.consumer.close().await {
            Ok(()) => shared.note(format!("group {group}: member {name} left")),
            Err(err) => shared.note(format!("group {group}: member {name} could not leave: {}", error_chain(&err))),
        }
    }

    /// Drops the member without leaving: a process that died. The coordinator must evict it.
    fn abandon(self) {
        coverage::hit("group_member_abandoned");
        self.shared.note(format!("group {}: member {} abandoned without leaving", self.group, self.name));
        drop(self.consumer);
    }
}

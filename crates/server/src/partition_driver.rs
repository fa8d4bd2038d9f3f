//! The partition driver: one task per local replica that acts on what the partition says it
//! needs ([`Maintenance`]), the way `coordinator.rs` drives consumer groups.
//!
//! - **Ticks.** On the leader, once its clock passes a part's deadline (the oldest batch's
//!   expiry under `retention.ms`), it proposes a `Tick` stamped with its clock; apply does the
//!   work at that replicated time. At most one tick per [`TICK_INTERVAL_MIN`]. A partition
//!   with no deadline proposes nothing and the task sleeps: idle partitions cost no entries.
//! - **Compaction.** On every replica, once retention raised the floor (the first log index
//!   holding a retained record), it lets openraft purge the log below it: first a snapshot
//!   covering the floor (free for a partition: its snapshot is its live state), then the
//!   purge, whose range delete is what frees the trimmed records' disk space. At most one
//!   round per [`COMPACT_INTERVAL`], so retention trimming at every append does not turn into
//!   a purge per append.

use std::sync::Arc;
use std::time::Duration;

use flotilla_broker::{Maintenance, PartitionCommand, PartitionEntry};
use flotilla_raft::openraft::async_runtime::watch::WatchReceiver;
use flotilla_types::{Clock, NodeId};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::partitions::PartitionRaft;

/// Least time between two ticks of one partition: bounds the entries a partition whose
/// deadlines fall densely (many small batches expiring one after another) proposes.
pub const TICK_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Least time between two compaction rounds of one replica.
pub const COMPACT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a compaction round waits for openraft to build the snapshot it asked for.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);
/// How long a tick may take to commit before the driver stops waiting for it.
const TICK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the driver of one replica needs.
pub struct Driver {
    pub node_id: NodeId,
    pub raft: PartitionRaft,
    pub maintenance: watch::Receiver<Maintenance>,
    pub clock: Arc<dyn Clock>,
    /// Stamps the leader's entries (shared with the produce path).
    pub stamp: Arc<dyn Fn() -> i64 + Send + Sync>,
}

/// Runs until the replica's state machine goes away (the replica stopped).
pub async fn run(mut driver: Driver) {
    let mut last_tick: Option<Instant> = None;
    let mut last_compaction: Option<Instant> = None;
    loop {
        let maintenance = *driver.maintenance.borrow_and_update();
        let now = Instant::now();
        let mut wake: Option<Instant> = None;

        // Compaction.
        if maintenance.floor > 0 && purged_below(&driver.raft) < maintenance.floor {
            let due = last_compaction.map_or(now, |at| at + COMPACT_INTERVAL);
            if due <= now {
                compact(&driver.raft, maintenance.floor - 1).await;
                last_compaction = Some(Instant::now());
            } else {
                wake = earliest(wake, due);
            }
        }

        // Ticks.
        if let Some(deadline_ms) = maintenance.next_deadline_ms {
            let wait_ms = deadline_ms.saturating_sub(driver.clock.now_ms());
            let due_by_clock = now + Duration::from_millis(u64::try_from(wait_ms).unwrap_or(0));
            let due = last_tick.map_or(due_by_clock, |at| due_by_clock.max(at + TICK_INTERVAL_MIN));
            if due <= now {
                if is_leader(&driver) {
                    propose_tick(&driver).await;
                }
                last_tick = Some(Instant::now());
                // Followers, and a tick that did not resolve the deadline, look again after
                // the interval.
                wake = earliest(wake, Instant::now() + TICK_INTERVAL_MIN);
            } else {
                wake = earliest(wake, due);
            }
        }

        let changed = async {
            match wake {
                Some(at) => tokio::time::timeout_at(at, driver.maintenance.changed()).await.unwrap_or(Ok(())),
                None => driver.maintenance.changed().await,
            }
        };
        if changed.await.is_err() {
            return;
        }
    }
}

fn earliest(current: Option<Instant>, candidate: Instant) -> Option<Instant> {
    Some(current.map_or(candidate, |at| at.min(candidate)))
}

fn is_leader(driver: &Driver) -> bool {
    let metrics = driver.raft.metrics();
    let metrics = metrics.borrow_watched();
    metrics.current_leader == Some(driver.node_id) && metrics.state == flotilla_raft::openraft::ServerState::Leader
}

/// The first log index openraft has not purged.
fn purged_below(raft: &PartitionRaft) -> u64 {
    raft.metrics().borrow_watched().purged.as_ref().map_or(0, |id| id.index + 1)
}

async fn propose_tick(driver: &Driver) {
    let entry = PartitionEntry { now_ms: (driver.stamp)(), command: PartitionCommand::Tick };
    match tokio::time::timeout(TICK_TIMEOUT, driver.raft.client_write(entry)).await {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => tracing::debug!(error = %err, "tick not applied; the next leader ticks"),
        Err(_) => tracing::debug!("tick not committed within {TICK_TIMEOUT:?}"),
    }
}

/// Purges the log up to and including `upto` (the index just below the floor).
async fn compact(raft: &PartitionRaft, upto: u64) {
    let covered =
        |raft: &PartitionRaft| raft.metrics().borrow_watched().snapshot.as_ref().is_some_and(|id| id.index >= upto);
    if !covered(raft) {
        // openraft purges only what a snapshot covers.
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
        let mut metrics = raft.metrics();
        let waited = tokio::time::timeout(SNAPSHOT_WAIT, async {
            while !covered(raft) {
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if waited.is_err() || !covered(raft) {
            tracing::debug!(upto, "no snapshot covering the floor yet; compaction retries later");
            return;
        }
    }
    if raft.trigger().purge_log(upto).await.is_ok() {
        flotilla_types::coverage!("partition_log_purged_after_trim");
    }
}

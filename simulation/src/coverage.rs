//! Coverage counters ("sometimes" assertions): how often each interesting event happened in
//! a run. Node code marks events with `flotilla_types::coverage!`; the simulation marks its
//! own (a crash that lost acknowledged-era data, a leader elected during a partition). A
//! sweep over many seeds reports, per point, how many seeds reached it; a point no seed
//! reaches means the faults never drive the code there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

use flotilla_types::COVERAGE_TARGET;

/// Every point a healthy sweep must reach, with what reaching it proves.
pub const EXPECTED_POINTS: &[(&str, &str)] = &[
    ("partition_leader_elected", "partition leaders are elected (node code)"),
    ("leader_elected_during_partition", "a partition leader changed while the network was partitioned"),
    (
        "crash_lost_unsynced_writes",
        "a crash lost un-synced writes of a node that had taken part in acknowledged writes",
    ),
    ("torn_tail", "a crash kept part of the un-synced tail (a torn tail) and the node restarted on it"),
    ("power_loss", "every node crashed at once"),
    ("node_paused", "a node's links were held past the election timeout and released in a burst"),
    ("snapshot_built", "a Raft snapshot was built (node code)"),
    ("snapshot_installed", "a lagging replica caught up by installing a snapshot (node code)"),
    ("proposal_outcome_unknown", "a deposed leader's in-flight proposal was fenced by a new term (node code)"),
    ("client_abandoned_request", "a client gave up mid-request and retried"),
    ("idempotent_duplicate_answered", "a resent idempotent batch was answered with its first offsets (node code)"),
    ("slow_fsync", "fsync was slow on some node"),
    ("partition_membership_changed", "a partition leader changed its group's voters after a replica move (node code)"),
    (
        "partition_replica_retired",
        "a replica moved out deleted its copy once the committed membership dropped it (node code)",
    ),
    (
        "membership_change_during_fault",
        "a replica move was under way while the partition's leader crashed or a node was cut off",
    ),
    (
        "group_member_evicted",
        "the group coordinator evicted a member past its session or rebalance timeout (node code)",
    ),
    ("group_member_rejoined", "a member still running after its eviction learned of it and joined again"),
    ("group_commit_refused_unknown_member", "a commit by an evicted member was fenced (UNKNOWN_MEMBER)"),
    ("group_hand_over_after_release", "a member released a revoked partition and another member took it up"),
    (
        "group_resumed_at_anothers_commit",
        "a member took up a partition exactly at another member's acknowledged commit",
    ),
    ("group_record_redelivered", "a record was delivered again in its group after progress went uncommitted"),
    ("retention_by_bytes", "a partition trimmed its oldest batches under retention.bytes (node code)"),
    ("retention_by_age", "a partition trimmed batches older than retention.ms (node code)"),
    ("partition_tick_applied", "a partition leader proposed a Tick because a deadline passed (node code)"),
    ("records_deleted_on_request", "DeleteRecords moved a partition's log start (node code)"),
    (
        "partition_log_purged_after_trim",
        "a replica purged its Raft log below the retention floor, deleting trimmed records (node code)",
    ),
    ("workload_big_batches", "producers sent batches of about 1 MiB"),
    (
        "partition_snapshot_installed",
        "a partition replica behind the trim point caught up by installing a streamed snapshot (node code)",
    ),
];

/// Points counted in this process.
static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
/// Whether some network partition is in force right now (set by the nemesis).
static PARTITIONED: AtomicBool = AtomicBool::new(false);

/// Counts one occurrence of `point`.
pub fn hit(point: &str) {
    *COUNTS.lock().entry(point.to_string()).or_default() += 1;
}

/// Tells the counters whether a network partition is in force.
pub fn set_partitioned(partitioned: bool) {
    PARTITIONED.store(partitioned, Ordering::SeqCst);
}

/// Every point counted so far, with each expected point present (zero if never reached).
pub fn snapshot() -> BTreeMap<String, u64> {
    let mut counts = COUNTS.lock().clone();
    for (point, _) in EXPECTED_POINTS {
        counts.entry((*point).to_string()).or_default();
    }
    counts
}

/// The tracing layer that counts node code's coverage points. Install it with a filter that
/// lets [`COVERAGE_TARGET`] through at DEBUG.
pub struct CoverageLayer;

impl<S: Subscriber> Layer<S> for CoverageLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != COVERAGE_TARGET {
            return;
        }
        let mut visitor = PointVisitor(None);
        event.record(&mut visitor);
        if let Some(point) = visitor.0 {
            if point == "partition_leader_elected" && PARTITIONED.load(Ordering::SeqCst) {
                hit("leader_elected_during_partition");
            }
            hit(&point);
        }
    }
}

/// Reads the `point` field of a coverage event.
struct PointVisitor(Option<String>);

impl Visit for PointVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "point" {
            self.0 = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "point" {
            self.0 = Some(format!("{value:?}").trim_matches('"').to_string());
        }
    }
}

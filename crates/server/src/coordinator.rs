//! The consumer-group coordinator: the metadata leader's in-memory view of member liveness.
//!
//! Membership, assignments and offsets live in the catalogue (replicated); heartbeats do not —
//! writing each one through Raft would cost a replicated fsync per member per second for no
//! durable value. Instead the metadata leader remembers when it last heard from each member and
//! proposes an eviction when a member misses its session timeout, or holds a revoked partition
//! past its rebalance timeout. A new leader knows nothing of the old leader's clocks, so it
//! starts every member's clock afresh when it takes over: a failover can delay an eviction by
//! one session timeout, never cause one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use flotilla_metadata::{LeaveReason, MemberView, MetaCommand, TopicPartition};
use tokio::time::Instant;

use crate::api_error::ApiError;
use crate::context::NodeContext;
use crate::routing::METADATA_TIMEOUT;

/// How often the leader looks for expired members.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// A member, by group name and member id.
type MemberKey = (String, u64);

/// What the leader has heard, valid for one leadership term.
#[derive(Default)]
pub struct Sessions {
    /// The term these clocks belong to; a different term starts them afresh.
    term: Option<u64>,
    last_heartbeat: BTreeMap<MemberKey, Instant>,
    /// Since when a member has held a partition it was asked to give up.
    revoking_since: BTreeMap<MemberKey, Instant>,
    /// Since when a group has had no members, with its epoch and newest commit time then: a
    /// change to either (a reset of its offsets) starts the count again.
    empty_since: BTreeMap<String, (Instant, u64, i64)>,
}

impl Sessions {
    /// Forgets everything if `term` is not the term the clocks were started in.
    fn align(&mut self, term: u64) {
        if self.term != Some(term) {
            *self = Sessions { term: Some(term), ..Sessions::default() };
        }
    }

    /// How long ago the leader last heard from a member, if it has in this term.
    pub fn since_heartbeat(&self, group: &str, member_id: u64) -> Option<Duration> {
        self.last_heartbeat.get(&(group.to_string(), member_id)).map(|at| at.elapsed())
    }
}

/// A heartbeat at the metadata leader: notes the member alive, releases the revoked partitions
/// it no longer reports, and answers what it should consume.
pub async fn heartbeat(
    state: &NodeContext,
    group: &str,
    member_id: u64,
    owned: BTreeSet<TopicPartition>,
) -> Result<MemberView, ApiError> {
    let Some(term) = state.meta.leading_term() else {
        return Err(ApiError::not_leader("the metadata group (group coordinator)", state.meta.leader()));
    };
    // Only from a catalogue holding everything committed: a new leader that has not applied
    // the old leader's last commits yet would answer UNKNOWN_MEMBER to a member that just
    // joined, which would then join again and leave an orphan behind.
    let catalogue = state.meta.linearizable_catalogue().await?;
    let view = catalogue
        .groups
        .get(group)
        .ok_or_else(|| ApiError::from(flotilla_metadata::GroupError::UnknownGroup { group: group.to_string() }))?
        .view(member_id)
        .ok_or_else(|| {
            ApiError::from(flotilla_metadata::GroupError::UnknownMember { group: group.to_string(), member_id })
        })?;
    {
        let mut sessions = state.sessions.lock();
        sessions.align(term);
        sessions.last_heartbeat.insert((group.to_string(), member_id), Instant::now());
    }
    if view.revoking.iter().all(|tp| owned.contains(tp)) {
        return Ok(view);
    }
    let command = MetaCommand::ReleasePartitions {
        group: group.to_string(),
        member_id,
        still_owned: owned.into_iter().collect(),
    };
    state.meta.propose_member(command, METADATA_TIMEOUT).await
}

/// Evicts members that went silent or hold revoked partitions too long, and deletes groups
/// that stayed empty for `offsets_retention`, while this node leads the metadata group. Runs
/// for the node's lifetime.
pub async fn run_coordinator(state: Arc<NodeContext>, offsets_retention: Duration) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(term) = state.meta.leading_term() else { continue };
        for (key, reason) in expired(&state, term) {
            let (group, member_id) = key;
            tracing::info!(group, member_id, ?reason, "evicting consumer-group member");
            let command = MetaCommand::LeaveGroup { group: group.clone(), member_id, reason };
            match state.meta.propose_group(command, METADATA_TIMEOUT).await {
                Ok(_) => flotilla_types::coverage!("group_member_evicted"),
                Err(err) => tracing::debug!(group, member_id, error = %err.message, "eviction not proposed"),
            }
        }
        for group in long_empty(&state, term, offsets_retention) {
            tracing::info!(
                group,
                retention_ms = offsets_retention.as_millis() as u64,
                "deleting consumer group empty for the offsets retention period"
            );
            let command = MetaCommand::DeleteGroup { group: group.clone() };
            match state.meta.propose_group(command, METADATA_TIMEOUT).await {
                Ok(_) => flotilla_types::coverage!("empty_group_deleted"),
                // It has members again (a join won the race): kept, which is right.
                Err(err) => tracing::debug!(group, error = %err.message, "empty group not deleted"),
            }
        }
    }
}

/// Groups that have had no members, and no change to their offsets, for `retention` as this
/// leader saw them. Starts the count for groups seen empty for the first time.
fn long_empty(state: &NodeContext, term: u64, retention: Duration) -> Vec<String> {
    let catalogue = state.meta.catalogue();
    let now = Instant::now();
    let mut sessions = state.sessions.lock();
    sessions.align(term);
    let mut due = Vec::new();
    let mut empty = BTreeSet::new();
    for (name, group) in catalogue.groups.iter().filter(|(_, g)| g.members.is_empty()) {
        empty.insert(name.clone());
        let newest_commit = group.offsets.values().map(|o| o.committed_at_ms).max().unwrap_or(i64::MIN);
        let seen = (group.epoch, newest_commit);
        let entry = sessions.empty_since.entry(name.clone()).or_insert((now, seen.0, seen.1));
        if (entry.1, entry.2) != seen {
            *entry = (now, seen.0, seen.1);
        }
        if now.duration_since(entry.0) >= retention {
            due.push(name.clone());
        }
    }
    sessions.empty_since.retain(|name, _| empty.contains(name));
    due
}

/// Members to evict now, with why. Starts the clocks of members seen for the first time.
fn expired(state: &NodeContext, term: u64) -> Vec<(MemberKey, LeaveReason)> {
    let catalogue = state.meta.catalogue();
    let now = Instant::now();
    let mut sessions = state.sessions.lock();
    sessions.align(term);
    let mut live = BTreeSet::new();
    let mut out = Vec::new();
    for (name, group) in &catalogue.groups {
        for (id, member) in &group.members {
            let key = (name.clone(), *id);
            live.insert(key.clone());
            let heard = *sessions.last_heartbeat.entry(key.clone()).or_insert(now);
            let revoking = group.view(*id).is_some_and(|view| !view.revoking.is_empty());
            let revoking_since = if revoking {
                Some(*sessions.revoking_since.entry(key.clone()).or_insert(now))
            } else {
                sessions.revoking_since.remove(&key);
                None
            };
            if now.duration_since(heard) > Duration::from_millis(u64::from(member.session_timeout_ms)) {
                out.push((key, LeaveReason::SessionExpired));
            } else if revoking_since.is_some_and(|since| {
                now.duration_since(since) > Duration::from_millis(u64::from(member.rebalance_timeout_ms))
            }) {
                out.push((key, LeaveReason::RevocationTimeout));
            }
        }
    }
    sessions.last_heartbeat.retain(|key, _| live.contains(key));
    sessions.revoking_since.retain(|key, _| live.contains(key));
    out
}

//! Consumer groups in the catalogue: members and their partitions, committed offsets, and the
//! assignor (balanced, sticky, incremental).
//!
//! How a partition changes hands without stopping the group: the assignor computes a *target*
//! owner for every subscribed partition. A member is handed a partition only once no other
//! member holds it; a member that holds a partition whose target is someone else is asked to
//! give it up (its assignment no longer lists it) and keeps it — still allowed to commit it —
//! until it reports, in a heartbeat, that it stopped consuming it ([`ConsumerGroup::release`]),
//! leaves, or is evicted. Every other member keeps consuming throughout.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_types::PartitionId;
use serde::{Deserialize, Serialize};

/// A topic's partition, named the way clients name it.
pub type TopicPartition = (String, PartitionId);

/// Members a group may have at most (bounds the catalogue and the assignor's work).
pub const GROUP_MEMBERS_MAX: usize = 1_000;

/// Consumer groups the catalogue holds at most (bounds its memory and snapshot). Empty groups
/// are deleted after the offsets retention period, so only live or recent ones count.
pub const GROUPS_MAX: usize = 10_000;

/// A consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerGroup {
    pub name: String,
    /// Bumped on every change to the group's membership or to any member's partitions;
    /// member epochs are values of it.
    pub epoch: u64,
    /// The last member id handed out; ids are never reused within the group, so a member
    /// evicted while it was away cannot be mistaken for a live one when it comes back.
    pub last_member_id: u64,
    pub members: BTreeMap<u64, GroupMember>,
    /// The assignor's output: the member each subscribed partition should end up with.
    pub target: BTreeMap<TopicPartition, u64>,
    /// Committed positions: the offset of the next record the group will process.
    pub offsets: BTreeMap<TopicPartition, CommittedOffset>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub id: u64,
    /// What the client called itself (for `flo group describe`).
    pub client_id: String,
    pub topics: BTreeSet<String>,
    /// The coordinator evicts the member after this long without a heartbeat.
    pub session_timeout_ms: u32,
    /// The coordinator evicts the member if it holds a revoked partition this long.
    pub rebalance_timeout_ms: u32,
    /// The group epoch when the member's partitions last changed.
    pub epoch: u64,
    /// Partitions handed to the member and not yet released, each with the group epoch at
    /// which it was handed over. A commit is valid for a partition the member owns if the
    /// member epoch it carries is at least that epoch.
    pub owned: BTreeMap<TopicPartition, u64>,
}

/// A committed position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: u64,
    /// When the commit (or reset) was accepted, by the proposing node's clock.
    pub committed_at_ms: i64,
}

/// What a member should be doing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub member_id: u64,
    pub member_epoch: u64,
    /// Partitions to consume: owned and targeted at this member.
    pub assignment: Vec<TopicPartition>,
    /// Partitions owned but targeted elsewhere: stop consuming them (commit first) and report
    /// them no longer owned.
    pub revoking: Vec<TopicPartition>,
}

/// Why a group command changed nothing. Messages name the values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GroupError {
    #[error("consumer group {group:?} does not exist")]
    UnknownGroup { group: String },
    #[error("group {group:?} cannot subscribe to topic {topic:?}: the topic does not exist")]
    UnknownTopic { group: String, topic: String },
    #[error(
        "member {member_id} is not in group {group:?}: it left or was evicted after missing its session timeout; join again"
    )]
    UnknownMember { group: String, member_id: u64 },
    #[error("member {member_id} of group {group:?} sent member epoch {given}, but {detail}")]
    StaleMemberEpoch { group: String, member_id: u64, given: u64, detail: String },
    #[error("member {member_id} of group {group:?} does not own partition {partition} of topic {topic:?}")]
    NotAssigned { group: String, member_id: u64, topic: String, partition: PartitionId },
    #[error(
        "group {group:?} committed offset {committed} for partition {partition} of topic {topic:?}; a commit of {offset} \
         would move it backwards (only `flo group reset` may)"
    )]
    OffsetRegression { group: String, topic: String, partition: PartitionId, offset: u64, committed: u64 },
    #[error("group {group:?} has {} active members ({members:?}); stop them before resetting its offsets", members.len())]
    GroupActive { group: String, members: Vec<u64> },
    #[error("group {group:?} already has {GROUP_MEMBERS_MAX} members, the most a group may have")]
    TooManyMembers { group: String },
    #[error("a member of group {group:?} must subscribe to at least one topic")]
    NoTopics { group: String },
    #[error(
        "cannot create group {group:?}: the cluster already has {GROUPS_MAX} consumer groups, the most it may have \
         (empty groups are deleted after the offsets retention period)"
    )]
    TooManyGroups { group: String },
}

impl ConsumerGroup {
    /// An empty group.
    pub fn new(name: String) -> Self {
        ConsumerGroup {
            name,
            epoch: 0,
            last_member_id: 0,
            members: BTreeMap::new(),
            target: BTreeMap::new(),
            offsets: BTreeMap::new(),
        }
    }

    /// What `member_id` should be doing, if it is a member.
    pub fn view(&self, member_id: u64) -> Option<MemberView> {
        let member = self.members.get(&member_id)?;
        let (assignment, revoking) =
            member.owned.keys().cloned().partition(|tp| self.target.get(tp) == Some(&member_id));
        Some(MemberView { member_id, member_epoch: member.epoch, assignment, revoking })
    }

    /// The member of the group, or `UnknownMember`.
    pub fn member(&self, member_id: u64) -> Result<&GroupMember, GroupError> {
        self.members.get(&member_id).ok_or_else(|| GroupError::UnknownMember { group: self.name.clone(), member_id })
    }

    /// Adds a member subscribed to `topics` (checked to exist by the caller) and hands out
    /// whatever partitions are free for it.
    pub fn join(
        &mut self,
        client_id: String,
        topics: BTreeSet<String>,
        session_timeout_ms: u32,
        rebalance_timeout_ms: u32,
        partitions: &BTreeMap<String, u32>,
    ) -> Result<MemberView, GroupError> {
        if topics.is_empty() {
            return Err(GroupError::NoTopics { group: self.name.clone() });
        }
        if self.members.len() >= GROUP_MEMBERS_MAX {
            return Err(GroupError::TooManyMembers { group: self.name.clone() });
        }
        self.last_member_id += 1;
        let id = self.last_member_id;
        self.epoch += 1;
        let member = GroupMember {
            id,
            client_id,
            topics,
            session_timeout_ms,
            rebalance_timeout_ms,
            epoch: self.epoch,
            owned: BTreeMap::new(),
        };
        self.members.insert(id, member);
        self.reconcile(partitions);
        Ok(self.view(id).expect("just inserted"))
    }

    /// Removes a member (it left or was evicted); its partitions go to the others.
    pub fn remove(&mut self, member_id: u64, partitions: &BTreeMap<String, u32>) -> Result<(), GroupError> {
        self.member(member_id)?;
        self.members.remove(&member_id);
        self.epoch += 1;
        self.reconcile(partitions);
        Ok(())
    }

    /// The member reports what it still consumes: revoked partitions it no longer lists are
    /// released and handed to their target owners.
    pub fn release(
        &mut self,
        member_id: u64,
        still_owned: &BTreeSet<TopicPartition>,
        partitions: &BTreeMap<String, u32>,
    ) -> Result<MemberView, GroupError> {
        let view =
            self.view(member_id).ok_or_else(|| GroupError::UnknownMember { group: self.name.clone(), member_id })?;
        let released: Vec<TopicPartition> = view.revoking.into_iter().filter(|tp| !still_owned.contains(tp)).collect();
        if !released.is_empty() {
            self.epoch += 1;
            let epoch = self.epoch;
            let member = self.members.get_mut(&member_id).expect("viewed above");
            for tp in &released {
                member.owned.remove(tp);
            }
            member.epoch = epoch;
            self.reconcile(partitions);
        }
        Ok(self.view(member_id).expect("still a member"))
    }

    /// Checks a commit of `offsets` by `member_id` at `member_epoch` without applying it.
    pub fn check_commit(
        &self,
        member_id: u64,
        member_epoch: u64,
        offsets: &[(TopicPartition, u64)],
    ) -> Result<(), GroupError> {
        let member = self.member(member_id)?;
        if member_epoch > member.epoch {
            return Err(GroupError::StaleMemberEpoch {
                group: self.name.clone(),
                member_id,
                given: member_epoch,
                detail: format!("its current epoch is {}; an epoch is never ahead of the group", member.epoch),
            });
        }
        for ((topic, partition), offset) in offsets {
            let tp = (topic.clone(), *partition);
            let Some(acquired) = member.owned.get(&tp) else {
                return Err(GroupError::NotAssigned {
                    group: self.name.clone(),
                    member_id,
                    topic: topic.clone(),
                    partition: *partition,
                });
            };
            if member_epoch < *acquired {
                return Err(GroupError::StaleMemberEpoch {
                    group: self.name.clone(),
                    member_id,
                    given: member_epoch,
                    detail: format!(
                        "it was handed partition {partition} of topic {topic:?} at epoch {acquired}: the commit predates that"
                    ),
                });
            }
            if let Some(committed) = self.offsets.get(&tp)
                && *offset < committed.offset
            {
                return Err(GroupError::OffsetRegression {
                    group: self.name.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    committed: committed.offset,
                });
            }
        }
        Ok(())
    }

    /// Commits `offsets` for `member_id`: all of them or, if any is refused, none.
    pub fn commit(
        &mut self,
        member_id: u64,
        member_epoch: u64,
        offsets: Vec<(TopicPartition, u64)>,
        committed_at_ms: i64,
    ) -> Result<(), GroupError> {
        self.check_commit(member_id, member_epoch, &offsets)?;
        for (tp, offset) in offsets {
            self.offsets.insert(tp, CommittedOffset { offset, committed_at_ms });
        }
        Ok(())
    }

    /// Sets committed offsets regardless of direction; only while the group has no members.
    pub fn reset(&mut self, offsets: Vec<(TopicPartition, u64)>, at_ms: i64) -> Result<(), GroupError> {
        if !self.members.is_empty() {
            return Err(GroupError::GroupActive {
                group: self.name.clone(),
                members: self.members.keys().copied().collect(),
            });
        }
        for (tp, offset) in offsets {
            self.offsets.insert(tp, CommittedOffset { offset, committed_at_ms: at_ms });
        }
        Ok(())
    }

    /// Forgets a deleted topic: its offsets and its partitions.
    pub fn forget_topic(&mut self, topic: &str, partitions: &BTreeMap<String, u32>) {
        self.offsets.retain(|(t, _), _| t != topic);
        self.reconcile(partitions);
    }

    /// Hands a newly created topic's partitions to the members subscribed to it.
    pub fn topic_created(&mut self, partitions: &BTreeMap<String, u32>) {
        self.reconcile(partitions);
    }

    /// Recomputes the target and hands every free targeted partition to its target member.
    /// `partitions`: partition count of every existing topic.
    fn reconcile(&mut self, partitions: &BTreeMap<String, u32>) {
        let exists = |(topic, partition): &TopicPartition| partitions.get(topic).is_some_and(|count| partition < count);
        let mut changed = BTreeSet::new();
        for member in self.members.values_mut() {
            let before = member.owned.len();
            member.owned.retain(|tp, _| exists(tp));
            if member.owned.len() != before {
                changed.insert(member.id);
            }
        }
        let subscriptions: BTreeMap<u64, &BTreeSet<String>> =
            self.members.iter().map(|(id, m)| (*id, &m.topics)).collect();
        self.target = assign(&subscriptions, partitions, &self.target);
        let held: BTreeSet<&TopicPartition> = self.members.values().flat_map(|m| m.owned.keys()).collect();
        let handed: Vec<(TopicPartition, u64)> =
            self.target.iter().filter(|(tp, _)| !held.contains(tp)).map(|(tp, m)| (tp.clone(), *m)).collect();
        if handed.is_empty() && changed.is_empty() {
            return;
        }
        self.epoch += 1;
        let epoch = self.epoch;
        for (tp, member) in handed {
            self.members.get_mut(&member).expect("targets name members").owned.insert(tp, epoch);
            changed.insert(member);
        }
        for id in changed {
            self.members.get_mut(&id).expect("changed members exist").epoch = epoch;
        }
    }
}

/// The assignor: for members with their subscriptions, every partition of every subscribed
/// existing topic gets one subscribed member, such that
/// - it is *sticky*: a partition stays with its `previous` owner while that owner is still
///   subscribed and the balance allows it;
/// - it is *balanced*: no partition could move to another subscribed member holding at least
///   two fewer partitions.
///
/// Deterministic (ordered maps, ties broken by member id), as apply must be.
pub fn assign(
    subscriptions: &BTreeMap<u64, &BTreeSet<String>>,
    partitions: &BTreeMap<String, u32>,
    previous: &BTreeMap<TopicPartition, u64>,
) -> BTreeMap<TopicPartition, u64> {
    let eligible = |member: u64, topic: &str| subscriptions.get(&member).is_some_and(|topics| topics.contains(topic));
    let mut all: Vec<TopicPartition> = Vec::new();
    let subscribed: BTreeSet<&String> = subscriptions.values().flat_map(|topics| topics.iter()).collect();
    for topic in subscribed {
        if let Some(count) = partitions.get(topic) {
            all.extend((0..*count).map(|p| (topic.clone(), p)));
        }
    }
    let mut owner: BTreeMap<TopicPartition, u64> = BTreeMap::new();
    let mut held: BTreeMap<u64, BTreeSet<TopicPartition>> =
        subscriptions.keys().map(|id| (*id, BTreeSet::new())).collect();
    // Stick with the previous owner where it is still subscribed.
    for tp in &all {
        if let Some(member) = previous.get(tp)
            && eligible(*member, &tp.0)
        {
            owner.insert(tp.clone(), *member);
            held.get_mut(member).expect("subscribed members are held").insert(tp.clone());
        }
    }
    // Everything else to the least-loaded subscribed member.
    for tp in &all {
        if owner.contains_key(tp) {
            continue;
        }
        let least = held
            .iter()
            .filter(|(member, _)| eligible(**member, &tp.0))
            .min_by_key(|(member, owned)| (owned.len(), **member))
            .map(|(member, _)| *member);
        if let Some(member) = least {
            owner.insert(tp.clone(), member);
            held.get_mut(&member).expect("found above").insert(tp.clone());
        }
    }
    // Even out: move a partition from the most loaded member to a subscribed member holding
    // at least two fewer, until no such move exists. Each move lowers the sum of squared
    // loads, so this ends.
    loop {
        let mut by_load: Vec<(usize, u64)> = held.iter().map(|(m, owned)| (owned.len(), *m)).collect();
        by_load.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut moved = None;
        'search: for (load, from) in &by_load {
            // Prefer giving away the partitions acquired last (highest), keeping the oldest.
            for tp in held[from].iter().rev() {
                let to = held
                    .iter()
                    .filter(|(member, owned)| **member != *from && owned.len() + 1 < *load && eligible(**member, &tp.0))
                    .min_by_key(|(member, owned)| (owned.len(), **member))
                    .map(|(member, _)| *member);
                if let Some(to) = to {
                    moved = Some((tp.clone(), *from, to));
                    break 'search;
                }
            }
        }
        let Some((tp, from, to)) = moved else { break };
        held.get_mut(&from).expect("from holds it").remove(&tp);
        held.get_mut(&to).expect("to is subscribed").insert(tp.clone());
        owner.insert(tp, to);
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn counts(entries: &[(&str, u32)]) -> BTreeMap<String, u32> {
        entries.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    fn loads(target: &BTreeMap<TopicPartition, u64>) -> BTreeMap<u64, usize> {
        let mut out = BTreeMap::new();
        for member in target.values() {
            *out.entry(*member).or_default() += 1;
        }
        out
    }

    #[test]
    fn assignments_are_balanced_and_sticky_when_a_member_joins() {
        let t = topics(&["t"]);
        let partitions = counts(&[("t", 6)]);
        let one: BTreeMap<u64, &BTreeSet<String>> = [(1, &t)].into_iter().collect();
        let first = assign(&one, &partitions, &BTreeMap::new());
        assert_eq!(loads(&first), [(1, 6)].into_iter().collect());
        let two: BTreeMap<u64, &BTreeSet<String>> = [(1, &t), (2, &t)].into_iter().collect();
        let second = assign(&two, &partitions, &first);
        assert_eq!(loads(&second), [(1, 3), (2, 3)].into_iter().collect());
        // Only the partitions that had to move did: member 1 kept three of its six.
        assert_eq!(second.values().filter(|m| **m == 1).count(), 3);
        let three: BTreeMap<u64, &BTreeSet<String>> = [(1, &t), (2, &t), (3, &t)].into_iter().collect();
        let third = assign(&three, &partitions, &second);
        let moved = third.iter().filter(|(tp, m)| second[*tp] != **m).count();
        assert_eq!(moved, 2, "two partitions move to the newcomer, nothing else changes: {third:?}");
    }

    #[test]
    fn members_get_only_topics_they_subscribe_to() {
        let (a, ab) = (topics(&["a"]), topics(&["a", "b"]));
        let partitions = counts(&[("a", 2), ("b", 4)]);
        let subs: BTreeMap<u64, &BTreeSet<String>> = [(1, &a), (2, &ab)].into_iter().collect();
        let target = assign(&subs, &partitions, &BTreeMap::new());
        assert_eq!(target.len(), 6);
        assert!(target.iter().filter(|(tp, _)| tp.0 == "b").all(|(_, m)| *m == 2));
        // Member 2 holds all of b; balance gives member 1 both partitions of a.
        assert_eq!(loads(&target), [(1, 2), (2, 4)].into_iter().collect());
    }

    fn group_with(members: u32, partitions: &BTreeMap<String, u32>) -> (ConsumerGroup, Vec<u64>) {
        let mut group = ConsumerGroup::new("g".into());
        let ids = (0..members)
            .map(|i| group.join(format!("c{i}"), topics(&["t"]), 10_000, 60_000, partitions).expect("joins").member_id)
            .collect();
        (group, ids)
    }

    #[test]
    fn a_partition_changes_hands_only_after_its_owner_releases_it() {
        let partitions = counts(&[("t", 6)]);
        let (mut group, ids) = group_with(1, &partitions);
        let first = ids[0];
        assert_eq!(group.view(first).expect("member").assignment.len(), 6);
        let second = group.join("c2".into(), topics(&["t"]), 10_000, 60_000, &partitions).expect("joins").member_id;
        // The newcomer gets nothing yet: the first member still owns everything.
        let newcomer = group.view(second).expect("member");
        assert!(newcomer.assignment.is_empty(), "{newcomer:?}");
        let old = group.view(first).expect("member");
        assert_eq!((old.assignment.len(), old.revoking.len()), (3, 3));
        // The old member may still commit what it is giving up.
        let revoked = old.revoking[0].clone();
        group.commit(first, old.member_epoch, vec![(revoked.clone(), 7)], 1).expect("commit while revoking");
        // Releasing one hands exactly that one over.
        let still: BTreeSet<TopicPartition> = old.assignment.iter().chain(&old.revoking[1..]).cloned().collect();
        let after = group.release(first, &still, &partitions).expect("release");
        assert_eq!(after.revoking.len(), 2);
        let newcomer = group.view(second).expect("member");
        assert_eq!(newcomer.assignment, vec![revoked.clone()]);
        // The old owner can no longer commit it, the new one can, and never backwards.
        let err = group.commit(first, after.member_epoch, vec![(revoked.clone(), 8)], 2).expect_err("not owned");
        assert!(matches!(err, GroupError::NotAssigned { .. }), "{err}");
        let err = group.commit(second, newcomer.member_epoch, vec![(revoked.clone(), 6)], 2).expect_err("backwards");
        assert_eq!(err.to_string(), "group \"g\" committed offset 7 for partition 0 of topic \"t\"; a commit of 6 would move it backwards (only `flo group reset` may)".replace("partition 0", &format!("partition {}", revoked.1)));
        group.commit(second, newcomer.member_epoch, vec![(revoked, 9)], 2).expect("new owner commits");
    }

    #[test]
    fn commits_from_before_a_partition_was_handed_over_are_stale() {
        let partitions = counts(&[("t", 2)]);
        let (mut group, ids) = group_with(2, &partitions);
        // Member 2 joined after member 1 had both partitions: member 1 released one.
        let view = group.view(ids[0]).expect("member");
        let still: BTreeSet<TopicPartition> = view.assignment.iter().cloned().collect();
        group.release(ids[0], &still, &partitions).expect("release");
        let second = group.view(ids[1]).expect("member");
        let tp = second.assignment[0].clone();
        let err = group.commit(ids[1], second.member_epoch - 1, vec![(tp.clone(), 1)], 1).expect_err("stale");
        assert!(matches!(err, GroupError::StaleMemberEpoch { .. }), "{err}");
        assert!(err.to_string().contains(&format!("sent member epoch {}", second.member_epoch - 1)), "{err}");
        group.commit(ids[1], second.member_epoch, vec![(tp, 1)], 1).expect("current epoch commits");
    }

    #[test]
    fn leaving_hands_partitions_over_at_once_and_reset_needs_an_empty_group() {
        let partitions = counts(&[("t", 4)]);
        let (mut group, ids) = group_with(2, &partitions);
        let view = group.view(ids[0]).expect("member");
        let still: BTreeSet<TopicPartition> = view.assignment.iter().cloned().collect();
        group.release(ids[0], &still, &partitions).expect("release");
        let err = group.reset(vec![(("t".into(), 0), 0)], 5).expect_err("active");
        assert_eq!(err, GroupError::GroupActive { group: "g".into(), members: ids.clone() });
        group.remove(ids[0], &partitions).expect("leave");
        assert_eq!(group.view(ids[1]).expect("member").assignment.len(), 4);
        group.remove(ids[1], &partitions).expect("leave");
        assert!(group.target.is_empty());
        group.reset(vec![(("t".into(), 0), 0)], 5).expect("inactive group resets");
        let err = group.remove(ids[1], &partitions).expect_err("gone");
        assert_eq!(err, GroupError::UnknownMember { group: "g".into(), member_id: ids[1] });
    }
}

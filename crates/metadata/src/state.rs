//! `MetadataState`: the catalogue itself.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use flotilla_types::{GroupId, Limits, NodeId, PartitionId, TopicConfig, TopicId};
use serde::{Deserialize, Serialize};

use crate::{
    ConsumerGroup, GROUPS_MAX, GroupError, GroupReply, MetaCommand, MetaError, MetaReply, MetaResponse, place_replicas,
};

/// Partitions a topic may have at most (bounded by the group-id scheme and memory).
pub const PARTITIONS_MAX: u32 = 10_000;

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub peer_address: String,
    pub client_address: String,
}

/// A topic and its placement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub id: TopicId,
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
    pub created_at_ms: i64,
    /// Replica set per partition; the first replica is the preferred leader.
    pub replicas: Vec<Vec<NodeId>>,
    /// Replica set per partition at creation: the membership every original replica
    /// bootstraps the group with (`Raft::initialize`). A node that joins later by a move
    /// never initializes: a second first entry with another membership would diverge.
    pub initial_replicas: Vec<Vec<NodeId>>,
    /// Nodes moved out of each partition. They delete their copy once the group's committed
    /// membership excludes them, and may never come back under the same id (openraft: a node
    /// id must not rejoin a group with an empty log).
    pub former_replicas: Vec<Vec<NodeId>>,
    /// The topic's configuration overrides (retention, batch size).
    pub config: TopicConfig,
}

impl TopicRecord {
    /// The Raft group of `partition`.
    pub fn group(&self, partition: PartitionId) -> GroupId {
        GroupId::for_partition(self.id, partition)
    }
}

/// Who leads a partition, as last reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    pub node: NodeId,
    pub term: u64,
}

/// The catalogue. Ordered maps only: snapshots must encode identically on every replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataState {
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub topics: BTreeMap<String, TopicRecord>,
    pub leaders: BTreeMap<GroupId, LeaderHint>,
    /// Next topic id; ids are never reused.
    pub next_topic_id: u64,
    /// The last idempotent-producer id handed out (0: none yet). Ids start at 1 and are never
    /// reused, so a new session can never be mistaken for an old one by a partition.
    pub last_producer_id: u64,
    /// Consumer groups by name. Each behind an `Arc` so the per-apply copy of the catalogue
    /// that readers get shares the groups an apply batch did not touch.
    pub groups: BTreeMap<String, Arc<ConsumerGroup>>,
}

impl MetadataState {
    /// Applies `command`.
    pub fn apply(&mut self, command: MetaCommand) -> MetaReply {
        let response = match command {
            MetaCommand::RegisterNode { id, peer_address, client_address } => {
                // Checked at apply too: a registration is a proposal like any other, and a
                // node 0 or one without addresses would be given replicas nobody can reach.
                let rule = if id == 0 {
                    Some("node ids start at 1")
                } else if peer_address.is_empty() || client_address.is_empty() {
                    Some("a node needs a peer and a client address")
                } else {
                    None
                };
                match rule {
                    Some(rule) => MetaResponse::Rejected(MetaError::InvalidRegistration {
                        id,
                        peer_address,
                        client_address,
                        rule: rule.to_string(),
                    }),
                    None => {
                        self.nodes.insert(id, NodeRecord { id, peer_address, client_address });
                        MetaResponse::Done
                    }
                }
            }
            MetaCommand::CreateTopic { name, partitions, replication_factor, created_at_ms, config } => {
                match self.create_topic(name, partitions, replication_factor, created_at_ms, config) {
                    Ok(topic) => MetaResponse::TopicCreated(topic),
                    Err(err) => MetaResponse::Rejected(err),
                }
            }
            MetaCommand::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(topic) => {
                    for partition in 0..topic.partitions {
                        self.leaders.remove(&topic.group(partition));
                    }
                    let partitions = self.partition_counts();
                    for group in self.groups.values_mut() {
                        let subscribed = group.members.values().any(|m| m.topics.contains(&name));
                        if subscribed || group.offsets.keys().any(|(t, _)| *t == name) {
                            Arc::make_mut(group).forget_topic(&name, &partitions);
                        }
                    }
                    MetaResponse::Done
                }
                None => MetaResponse::Rejected(MetaError::UnknownTopic { name }),
            },
            MetaCommand::ReportLeaders { reports } => {
                for (group, node, term) in reports {
                    // Only for partitions that still exist, and never back to an older term.
                    if !self.group_exists(group) {
                        continue;
                    }
                    let newer = self.leaders.get(&group).is_none_or(|hint| term >= hint.term);
                    if newer {
                        self.leaders.insert(group, LeaderHint { node, term });
                    }
                }
                MetaResponse::Done
            }
            MetaCommand::AllocateProducerId => {
                // u64 ids cannot run out: at a million sessions a second that takes 584,000
                // years. Checked arithmetic only names the bug if something else went wrong.
                self.last_producer_id = self.last_producer_id.checked_add(1).expect("producer ids never run out");
                return MetaReply::ProducerIdAllocated { producer_id: self.last_producer_id };
            }
            MetaCommand::MoveReplica { topic, partition, from, to } => {
                match self.move_replica(&topic, partition, from, to) {
                    Ok(()) => MetaResponse::Done,
                    Err(err) => MetaResponse::Rejected(err),
                }
            }
            MetaCommand::AlterTopicConfig { name, set, unset, batch_bytes_max } => {
                match self.alter_topic_config(&name, &set, &unset, batch_bytes_max) {
                    Ok(topic) => MetaResponse::TopicAltered(topic),
                    Err(err) => MetaResponse::Rejected(err),
                }
            }
            // Deduplication is the state machine's (`MetadataStateMachine`, which keeps the
            // request log); the catalogue alone just applies the command.
            MetaCommand::Deduplicated { command, .. } => return self.apply(*command),
            MetaCommand::JoinGroup { .. }
            | MetaCommand::LeaveGroup { .. }
            | MetaCommand::ReleasePartitions { .. }
            | MetaCommand::CommitOffsets { .. }
            | MetaCommand::ResetOffsets { .. }
            | MetaCommand::DeleteGroup { .. } => return MetaReply::Group(self.apply_group(command)),
        };
        MetaReply::Catalogue(response)
    }

    fn apply_group(&mut self, command: MetaCommand) -> Result<GroupReply, GroupError> {
        let partitions = self.partition_counts();
        match command {
            MetaCommand::JoinGroup { group, client_id, topics, session_timeout_ms, rebalance_timeout_ms } => {
                let topics: BTreeSet<String> = topics.into_iter().collect();
                if let Some(unknown) = topics.iter().find(|t| !self.topics.contains_key(*t)) {
                    return Err(GroupError::UnknownTopic { group, topic: unknown.clone() });
                }
                if !self.groups.contains_key(&group) && self.groups.len() >= GROUPS_MAX {
                    return Err(GroupError::TooManyGroups { group });
                }
                let entry = self.groups.entry(group.clone()).or_insert_with(|| Arc::new(ConsumerGroup::new(group)));
                let view = Arc::make_mut(entry).join(
                    client_id,
                    topics,
                    session_timeout_ms,
                    rebalance_timeout_ms,
                    &partitions,
                )?;
                Ok(GroupReply::Member(view))
            }
            MetaCommand::LeaveGroup { group, member_id, reason: _ } => {
                self.group_mut(&group)?.remove(member_id, &partitions)?;
                Ok(GroupReply::Done)
            }
            MetaCommand::ReleasePartitions { group, member_id, still_owned } => {
                let still_owned = still_owned.into_iter().collect();
                let view = self.group_mut(&group)?.release(member_id, &still_owned, &partitions)?;
                Ok(GroupReply::Member(view))
            }
            MetaCommand::CommitOffsets { group, member_id, member_epoch, offsets, committed_at_ms } => {
                let found = self.groups.get(&group).ok_or_else(|| GroupError::UnknownGroup { group: group.clone() })?;
                // Check before `make_mut`, so a refused commit does not copy the group.
                found.check_commit(member_id, member_epoch, &offsets)?;
                self.group_mut(&group)?.commit(member_id, member_epoch, offsets, committed_at_ms)?;
                Ok(GroupReply::Done)
            }
            MetaCommand::ResetOffsets { group, offsets, at_ms } => {
                self.group_mut(&group)?.reset(offsets, at_ms)?;
                Ok(GroupReply::Done)
            }
            MetaCommand::DeleteGroup { group } => {
                let found = self.groups.get(&group).ok_or_else(|| GroupError::UnknownGroup { group: group.clone() })?;
                if !found.members.is_empty() {
                    return Err(GroupError::GroupActive { group, members: found.members.keys().copied().collect() });
                }
                self.groups.remove(&group);
                Ok(GroupReply::Done)
            }
            other => unreachable!("not a group command: {other}"),
        }
    }

    fn group_mut(&mut self, group: &str) -> Result<&mut ConsumerGroup, GroupError> {
        match self.groups.get_mut(group) {
            Some(found) => Ok(Arc::make_mut(found)),
            None => Err(GroupError::UnknownGroup { group: group.to_string() }),
        }
    }

    /// Partition count of every topic, by name.
    pub fn partition_counts(&self) -> BTreeMap<String, u32> {
        self.topics.iter().map(|(name, topic)| (name.clone(), topic.partitions)).collect()
    }

    /// Checks a topic creation without applying it (for early, friendly errors; apply checks
    /// again because the catalogue may change in between).
    pub fn check_create_topic(&self, name: &str, partitions: u32, replication_factor: u32) -> Result<(), MetaError> {
        if self.topics.contains_key(name) {
            return Err(MetaError::TopicExists { name: name.to_string() });
        }
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(MetaError::InvalidPartitionCount { requested: partitions, max: PARTITIONS_MAX });
        }
        if replication_factor == 0 {
            return Err(MetaError::InvalidReplicationFactor { requested: replication_factor });
        }
        let nodes = self.nodes.len() as u32;
        if replication_factor > nodes {
            return Err(MetaError::ReplicationFactorTooLarge { requested: replication_factor, nodes });
        }
        Ok(())
    }

    /// Checks a configuration change without applying it (apply checks again against the
    /// config it then finds).
    pub fn check_alter_topic_config(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        unset: &[String],
        batch_bytes_max: u64,
    ) -> Result<TopicConfig, MetaError> {
        let topic = self.topics.get(name).ok_or_else(|| MetaError::UnknownTopic { name: name.to_string() })?;
        let limits =
            Limits { batch_bytes_max: usize::try_from(batch_bytes_max).unwrap_or(usize::MAX), ..Limits::default() };
        topic
            .config
            .altered(set, unset, &limits)
            .map_err(|source| MetaError::InvalidConfig { topic: name.to_string(), source })
    }

    fn alter_topic_config(
        &mut self,
        name: &str,
        set: &BTreeMap<String, String>,
        unset: &[String],
        batch_bytes_max: u64,
    ) -> Result<TopicRecord, MetaError> {
        let config = self.check_alter_topic_config(name, set, unset, batch_bytes_max)?;
        let topic = self.topics.get_mut(name).expect("checked above");
        topic.config = config;
        Ok(topic.clone())
    }

    fn create_topic(
        &mut self,
        name: String,
        partitions: u32,
        replication_factor: u32,
        created_at_ms: i64,
        config: TopicConfig,
    ) -> Result<TopicRecord, MetaError> {
        self.check_create_topic(&name, partitions, replication_factor)?;
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
        for topic in self.topics.values() {
            for replicas in &topic.replicas {
                for node in replicas {
                    *load.entry(*node).or_default() += 1;
                }
            }
        }
        self.next_topic_id += 1;
        let id = TopicId(self.next_topic_id);
        let replicas = place_replicas(&nodes, &load, partitions, replication_factor, id.0);
        let topic = TopicRecord {
            id,
            name: name.clone(),
            partitions,
            replication_factor,
            created_at_ms,
            initial_replicas: replicas.clone(),
            former_replicas: vec![Vec::new(); replicas.len()],
            replicas,
            config,
        };
        self.topics.insert(name.clone(), topic.clone());
        // Members may be subscribed to the name already (a topic deleted and created again, or
        // joined while it existed): the new partitions are theirs now.
        let partitions = self.partition_counts();
        for group in self.groups.values_mut() {
            if group.members.values().any(|m| m.topics.contains(&name)) {
                Arc::make_mut(group).topic_created(&partitions);
            }
        }
        Ok(topic)
    }

    /// Checks a replica move without applying it (apply checks again).
    pub fn check_move_replica(&self, topic: &str, partition: u32, from: NodeId, to: NodeId) -> Result<(), MetaError> {
        let record = self.topics.get(topic).ok_or_else(|| MetaError::UnknownTopic { name: topic.to_string() })?;
        let Some(replicas) = record.replicas.get(partition as usize) else {
            return Err(MetaError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: record.partitions,
            });
        };
        if !replicas.contains(&from) {
            return Err(MetaError::NotAReplica {
                topic: topic.to_string(),
                partition,
                node: from,
                replicas: replicas.clone(),
            });
        }
        if !self.nodes.contains_key(&to) {
            return Err(MetaError::UnknownNode { node: to, registered: self.nodes.keys().copied().collect() });
        }
        if replicas.contains(&to) {
            return Err(MetaError::AlreadyAReplica {
                topic: topic.to_string(),
                partition,
                node: to,
                replicas: replicas.clone(),
            });
        }
        if record.former_replicas.get(partition as usize).is_some_and(|former| former.contains(&to)) {
            return Err(MetaError::FormerReplica { topic: topic.to_string(), partition, node: to });
        }
        Ok(())
    }

    fn move_replica(&mut self, topic: &str, partition: u32, from: NodeId, to: NodeId) -> Result<(), MetaError> {
        self.check_move_replica(topic, partition, from, to)?;
        let record = self.topics.get_mut(topic).expect("checked above");
        let p = partition as usize;
        for slot in record.replicas[p].iter_mut() {
            if *slot == from {
                *slot = to;
            }
        }
        if record.former_replicas.len() <= p {
            record.former_replicas.resize(record.replicas.len(), Vec::new());
        }
        record.former_replicas[p].push(from);
        Ok(())
    }

    fn group_exists(&self, group: GroupId) -> bool {
        match group.partition() {
            Some((topic_id, partition)) => self.topics.values().any(|t| t.id == topic_id && partition < t.partitions),
            None => false,
        }
    }

    /// The topic with id `id`.
    pub fn topic_by_id(&self, id: TopicId) -> Option<&TopicRecord> {
        self.topics.values().find(|t| t.id == id)
    }

    /// Every partition group with its replica set.
    pub fn partition_groups(&self) -> impl Iterator<Item = (GroupId, &TopicRecord, PartitionId, &[NodeId])> {
        self.topics.values().flat_map(|topic| {
            topic
                .replicas
                .iter()
                .enumerate()
                .map(move |(p, replicas)| (topic.group(p as PartitionId), topic, p as PartitionId, replicas.as_slice()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LeaveReason, TopicPartition};

    fn three_nodes() -> MetadataState {
        let mut state = MetadataState::default();
        for id in 1..=3 {
            state.apply(MetaCommand::RegisterNode {
                id,
                peer_address: format!("127.0.0.1:720{id}"),
                client_address: format!("127.0.0.1:710{id}"),
            });
        }
        state
    }

    #[test]
    fn creates_and_deletes_topics_with_fresh_ids() {
        let mut state = three_nodes();
        let create = |partitions| MetaCommand::CreateTopic {
            name: "orders".into(),
            partitions,
            replication_factor: 3,
            created_at_ms: 1,
            config: TopicConfig::default(),
        };
        let MetaReply::Catalogue(MetaResponse::TopicCreated(first)) = state.apply(create(3)) else { panic!("created") };
        assert_eq!(first.replicas.len(), 3);
        assert_eq!(
            state.apply(create(3)),
            MetaResponse::Rejected(MetaError::TopicExists { name: "orders".into() }).into()
        );
        assert_eq!(state.apply(MetaCommand::DeleteTopic { name: "orders".into() }), MetaResponse::Done.into());
        let MetaReply::Catalogue(MetaResponse::TopicCreated(second)) = state.apply(create(2)) else {
            panic!("created again")
        };
        assert_ne!(first.id, second.id, "topic ids are never reused");
    }

    #[test]
    fn refuses_replication_factor_above_node_count() {
        let mut state = three_nodes();
        let response = state.apply(MetaCommand::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: 5,
            created_at_ms: 0,
            config: TopicConfig::default(),
        });
        assert_eq!(
            response,
            MetaResponse::Rejected(MetaError::ReplicationFactorTooLarge { requested: 5, nodes: 3 }).into()
        );
    }

    #[test]
    fn producer_ids_start_at_one_and_survive_a_snapshot() {
        let mut state = MetadataState::default();
        let allocate = |state: &mut MetadataState| match state.apply(MetaCommand::AllocateProducerId) {
            MetaReply::ProducerIdAllocated { producer_id } => producer_id,
            other => panic!("expected a producer id, got {other:?}"),
        };
        assert_eq!(allocate(&mut state), 1, "0 is never a producer id");
        assert_eq!(allocate(&mut state), 2);
        // The counter is part of the state, so a replica restored from a snapshot (or a
        // restarted node) continues after the last id instead of handing it out again.
        let mut restored: MetadataState =
            flotilla_raft::decode(&flotilla_raft::encode(&state)).expect("snapshot round trip");
        assert_eq!(allocate(&mut restored), 3);
    }

    #[test]
    fn leader_hints_never_go_back_in_term() {
        let mut state = three_nodes();
        let MetaReply::Catalogue(MetaResponse::TopicCreated(topic)) = state.apply(MetaCommand::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: 3,
            created_at_ms: 0,
            config: TopicConfig::default(),
        }) else {
            panic!("created")
        };
        let group = topic.group(0);
        state.apply(MetaCommand::ReportLeaders { reports: vec![(group, 2, 5)] });
        state.apply(MetaCommand::ReportLeaders { reports: vec![(group, 1, 4)] });
        assert_eq!(state.leaders[&group], LeaderHint { node: 2, term: 5 });
        // Hints for groups that do not exist are ignored.
        state.apply(MetaCommand::ReportLeaders { reports: vec![(GroupId(999_999), 1, 1)] });
        assert!(!state.leaders.contains_key(&GroupId(999_999)));
    }

    fn four_nodes_with_topic() -> (MetadataState, TopicRecord) {
        let mut state = three_nodes();
        let MetaReply::Catalogue(MetaResponse::TopicCreated(topic)) = state.apply(MetaCommand::CreateTopic {
            name: "t".into(),
            partitions: 2,
            replication_factor: 3,
            created_at_ms: 0,
            config: TopicConfig::default(),
        }) else {
            panic!("created")
        };
        state.apply(MetaCommand::RegisterNode {
            id: 4,
            peer_address: "127.0.0.1:7204".into(),
            client_address: "127.0.0.1:7104".into(),
        });
        (state, topic)
    }

    fn move_replica(topic: &str, partition: u32, from: NodeId, to: NodeId) -> MetaCommand {
        MetaCommand::MoveReplica { topic: topic.into(), partition, from, to }
    }

    #[test]
    fn a_move_replaces_the_replica_in_place_and_keeps_the_initial_set() {
        let (mut state, topic) = four_nodes_with_topic();
        let before = topic.replicas[1].clone();
        let from = before[0];
        assert_eq!(state.apply(move_replica("t", 1, from, 4)), MetaResponse::Done.into());
        let after = &state.topics["t"];
        let expected: Vec<NodeId> = before.iter().map(|n| if *n == from { 4 } else { *n }).collect();
        assert_eq!(after.replicas[1], expected, "the moved slot keeps its position (preferred leader)");
        assert_eq!(after.replicas[0], topic.replicas[0], "other partitions are untouched");
        assert_eq!(after.initial_replicas, topic.replicas, "the bootstrap membership never changes");
        assert_eq!(after.former_replicas[1], vec![from]);
        // The catalogue survives a snapshot with the new fields.
        let restored: MetadataState =
            flotilla_raft::decode(&flotilla_raft::encode(&state)).expect("snapshot round trip");
        assert_eq!(restored, state);
    }

    #[test]
    fn a_move_is_validated_at_apply_with_messages_naming_the_values() {
        let (mut state, topic) = four_nodes_with_topic();
        let replicas = topic.replicas[0].clone();
        let rejected = |state: &mut MetadataState, command| match state.apply(command) {
            MetaReply::Catalogue(MetaResponse::Rejected(err)) => err,
            other => panic!("expected a rejection, got {other:?}"),
        };
        let err = rejected(&mut state, move_replica("nope", 0, 1, 4));
        assert_eq!(err, MetaError::UnknownTopic { name: "nope".into() });
        let err = rejected(&mut state, move_replica("t", 2, 1, 4));
        assert_eq!(err, MetaError::UnknownPartition { topic: "t".into(), partition: 2, partitions: 2 });
        assert!(err.to_string().contains("no partition 2"), "{err}");
        let err = rejected(&mut state, move_replica("t", 0, 4, 1));
        assert_eq!(
            err,
            MetaError::NotAReplica { topic: "t".into(), partition: 0, node: 4, replicas: replicas.clone() }
        );
        assert!(err.to_string().contains("node 4 is not a replica"), "{err}");
        let err = rejected(&mut state, move_replica("t", 0, replicas[0], 9));
        assert_eq!(err, MetaError::UnknownNode { node: 9, registered: vec![1, 2, 3, 4] });
        assert!(err.to_string().contains("node 9 is not a registered node"), "{err}");
        let err = rejected(&mut state, move_replica("t", 0, replicas[0], replicas[1]));
        assert!(matches!(err, MetaError::AlreadyAReplica { node, .. } if node == replicas[1]), "{err}");
        assert_eq!(state.topics["t"].replicas, topic.replicas, "rejected moves change nothing");
        // Moved out, a node can never come back (its copy is deleted; ids are not reused).
        assert_eq!(state.apply(move_replica("t", 0, replicas[0], 4)), MetaResponse::Done.into());
        let err = rejected(&mut state, move_replica("t", 0, 4, replicas[0]));
        assert_eq!(err, MetaError::FormerReplica { topic: "t".into(), partition: 0, node: replicas[0] });
    }

    #[test]
    fn config_changes_are_judged_at_apply_and_keep_other_keys() {
        let mut state = three_nodes();
        state.apply(MetaCommand::CreateTopic {
            name: "logs".into(),
            partitions: 1,
            replication_factor: 3,
            created_at_ms: 0,
            config: TopicConfig::default(),
        });
        let alter = |set: &[(&str, &str)], unset: &[&str]| MetaCommand::AlterTopicConfig {
            name: "logs".into(),
            set: set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            unset: unset.iter().map(|k| k.to_string()).collect(),
            batch_bytes_max: 8 << 20,
        };
        // Two changes of different keys, proposed from the same old config, both hold.
        state.apply(alter(&[("retention.ms", "60000")], &[]));
        let MetaReply::Catalogue(MetaResponse::TopicAltered(topic)) =
            state.apply(alter(&[("retention.bytes", "16777216")], &[]))
        else {
            panic!("altered")
        };
        assert_eq!(topic.config.retention().max_age_ms, Some(60_000));
        assert_eq!(topic.config.retention().max_bytes, Some(16 << 20));
        let MetaReply::Catalogue(MetaResponse::Rejected(err)) = state.apply(alter(&[("retention.bytes", "5")], &[]))
        else {
            panic!("refused")
        };
        assert!(matches!(err, MetaError::InvalidConfig { .. }), "{err}");
        assert!(err.to_string().contains("retention.bytes") && err.to_string().contains("\"5\""), "{err}");
        state.apply(alter(&[], &["retention.ms"]));
        assert_eq!(state.topics["logs"].config.retention().max_age_ms, Some(flotilla_types::DEFAULT_RETENTION_MS));
        // The catalogue keeps the config through a snapshot.
        let restored: MetadataState =
            flotilla_raft::decode(&flotilla_raft::encode(&state)).expect("snapshot round trip");
        assert_eq!(restored, state);
    }

    #[test]
    fn a_recreated_topic_is_assigned_to_the_members_subscribed_to_it() {
        // Review finding 9: a member subscribed to a topic that is deleted and created again
        // used to get none of the new topic's partitions until the group changed otherwise.
        let mut state = three_nodes();
        let create = MetaCommand::CreateTopic {
            name: "orders".into(),
            partitions: 2,
            replication_factor: 1,
            created_at_ms: 0,
            config: TopicConfig::default(),
        };
        state.apply(create.clone());
        let MetaReply::Group(Ok(GroupReply::Member(joined))) = state.apply(MetaCommand::JoinGroup {
            group: "billing".into(),
            client_id: "c1".into(),
            topics: vec!["orders".into()],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
        }) else {
            panic!("joined")
        };
        let assigned =
            |state: &MetadataState| state.groups["billing"].view(joined.member_id).expect("a member").assignment;
        assert_eq!(assigned(&state).len(), 2);
        state.apply(MetaCommand::DeleteTopic { name: "orders".into() });
        assert!(assigned(&state).is_empty(), "a deleted topic's partitions are taken away");
        state.apply(create);
        let expected: BTreeSet<TopicPartition> = [("orders".to_string(), 0), ("orders".to_string(), 1)].into();
        assert_eq!(assigned(&state).into_iter().collect::<BTreeSet<_>>(), expected);
    }

    #[test]
    fn groups_are_bounded_and_only_an_empty_one_is_deleted() {
        // Review finding 8: groups were unbounded and never deleted.
        let mut state = three_nodes();
        state.apply(MetaCommand::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: 1,
            created_at_ms: 0,
            config: TopicConfig::default(),
        });
        let join = |group: &str| MetaCommand::JoinGroup {
            group: group.into(),
            client_id: "c".into(),
            topics: vec!["t".into()],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 60_000,
        };
        let MetaReply::Group(Ok(GroupReply::Member(member))) = state.apply(join("g")) else { panic!("joined") };
        let refused = state.apply(MetaCommand::DeleteGroup { group: "g".into() });
        assert!(matches!(refused, MetaReply::Group(Err(GroupError::GroupActive { .. }))), "{refused:?}");
        state.apply(MetaCommand::LeaveGroup {
            group: "g".into(),
            member_id: member.member_id,
            reason: LeaveReason::Left,
        });
        assert_eq!(state.apply(MetaCommand::DeleteGroup { group: "g".into() }), MetaReply::Group(Ok(GroupReply::Done)));
        assert!(!state.groups.contains_key("g"));
        for i in 0..GROUPS_MAX {
            let name = format!("g{i}");
            state.groups.insert(name.clone(), Arc::new(ConsumerGroup::new(name)));
        }
        let refused = state.apply(join("one-too-many"));
        assert!(matches!(&refused, MetaReply::Group(Err(GroupError::TooManyGroups { .. }))), "{refused:?}");
        let MetaReply::Group(Err(err)) = refused else { unreachable!() };
        assert!(err.to_string().contains("one-too-many") && err.to_string().contains(&GROUPS_MAX.to_string()), "{err}");
        // An existing group still takes members.
        assert!(matches!(state.apply(join("g7")), MetaReply::Group(Ok(_))));
    }

    #[test]
    fn a_registration_of_node_0_or_without_addresses_is_refused() {
        // Found by the fuzz test: four zero bytes proposed through the peer port decoded as
        // "register node 0 with no addresses", and topics created later got replicas on it.
        let mut state = three_nodes();
        for (id, peer, client) in [(0, "p:1", "c:1"), (4, "", "c:4"), (4, "p:4", "")] {
            let reply =
                state.apply(MetaCommand::RegisterNode { id, peer_address: peer.into(), client_address: client.into() });
            assert!(
                matches!(reply, MetaReply::Catalogue(MetaResponse::Rejected(MetaError::InvalidRegistration { .. }))),
                "{reply:?}"
            );
        }
        assert_eq!(state.nodes.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}

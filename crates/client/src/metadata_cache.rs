//! The client's copy of the routing metadata: node addresses and partition leaders. Pure
//! data, no I/O, so routing decisions are unit-testable.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_proto::error::LeaderHint;
use flotilla_proto::v1;
use flotilla_types::{NodeId, PartitionId};
use tokio::time::Instant;

/// Leader id meaning "no leader known", as the API encodes it.
const NO_LEADER: NodeId = 0;

/// Node addresses and partition leaders as last fetched, amended by leader hints.
#[derive(Debug, Default)]
pub(crate) struct MetadataCache {
    /// Client address per node id.
    nodes: BTreeMap<NodeId, String>,
    /// Leader per partition index, per topic name; [`NO_LEADER`] when unknown.
    topics: BTreeMap<String, Vec<NodeId>>,
    /// When the last full refresh succeeded; `None` before the first.
    refreshed_at: Option<Instant>,
    /// Set when an answer showed the cache to be wrong; cleared by a full refresh.
    stale: bool,
    /// Bumped by every refresh attempt, so callers that queued behind a refresh can tell it
    /// happened and skip their own.
    generation: u64,
}

impl MetadataCache {
    /// Takes in a `Metadata` answer. `full` when it lists every topic: topics missing from it
    /// are then gone (deleted) and the cache counts as freshly refreshed.
    pub(crate) fn apply(&mut self, response: &v1::MetadataResponse, full: bool, now: Instant) {
        for node in &response.nodes {
            if !node.client_address.is_empty() {
                self.nodes.insert(node.id, node.client_address.clone());
            }
        }
        if full {
            self.topics.clear();
            self.refreshed_at = Some(now);
            self.stale = false;
        }
        for topic in &response.topics {
            let Some(description) = &topic.topic else { continue };
            let mut leaders = vec![NO_LEADER; description.partitions as usize];
            for partition in &topic.partitions {
                if let Some(slot) = leaders.get_mut(partition.partition as usize) {
                    *slot = partition.leader_id;
                }
            }
            self.topics.insert(description.name.clone(), leaders);
        }
    }

    /// Counts a refresh attempt, successful or not.
    pub(crate) fn bump_generation(&mut self) {
        self.generation += 1;
    }

    /// The refresh attempt counter.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether routed requests should refresh the cache first.
    pub(crate) fn needs_refresh(&self, now: Instant, max_age: Duration) -> bool {
        match self.refreshed_at {
            None => true,
            Some(at) => self.stale || now.saturating_duration_since(at) >= max_age,
        }
    }

    /// Marks the cache as known to be out of date.
    pub(crate) fn invalidate(&mut self) {
        self.stale = true;
    }

    /// The partition count of `topic`, if the cache knows the topic.
    pub(crate) fn partition_count(&self, topic: &str) -> Option<u32> {
        self.topics.get(topic).map(|leaders| leaders.len() as u32)
    }

    /// The client address of the leader of `topic`/`partition`, if known.
    pub(crate) fn leader_address(&self, topic: &str, partition: PartitionId) -> Option<&str> {
        let leader = *self.topics.get(topic)?.get(partition as usize)?;
        if leader == NO_LEADER {
            return None;
        }
        self.nodes.get(&leader).map(String::as_str)
    }

    /// Records a `NotLeader` hint: the named node leads the partition now.
    pub(crate) fn learn_leader(&mut self, topic: &str, partition: PartitionId, hint: &LeaderHint) {
        if !hint.address.is_empty() {
            self.nodes.insert(hint.id, hint.address.clone());
        }
        if let Some(slot) = self.topics.get_mut(topic).and_then(|leaders| leaders.get_mut(partition as usize)) {
            *slot = hint.id;
        }
    }

    /// Forgets the leader of a partition, so requests go to any broker until a refresh.
    pub(crate) fn forget_leader(&mut self, topic: &str, partition: PartitionId) {
        if let Some(slot) = self.topics.get_mut(topic).and_then(|leaders| leaders.get_mut(partition as usize)) {
            *slot = NO_LEADER;
        }
    }

    /// Brokers to send unrouted requests to: the configured seeds first, then every other node
    /// the metadata names (so the client survives the loss of all its seeds).
    pub(crate) fn brokers(&self, seeds: &[String]) -> Vec<String> {
        let mut brokers = seeds.to_vec();
        for address in self.nodes.values() {
            if !brokers.contains(address) {
                brokers.push(address.clone());
            }
        }
        brokers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(leaders: &[u64]) -> v1::MetadataResponse {
        let node = |id: u64| v1::Node { id, client_address: format!("127.0.0.1:710{id}"), ..Default::default() };
        v1::MetadataResponse {
            nodes: vec![node(1), node(2), node(3)],
            topics: vec![v1::TopicMetadata {
                topic: Some(v1::Topic {
                    name: "orders".into(),
                    partitions: leaders.len() as u32,
                    ..Default::default()
                }),
                partitions: leaders
                    .iter()
                    .enumerate()
                    .rev() // order in the answer must not matter
                    .map(|(p, &leader_id)| v1::PartitionMetadata {
                        partition: p as u32,
                        leader_id,
                        ..Default::default()
                    })
                    .collect(),
            }],
        }
    }

    #[test]
    fn routes_to_leaders_and_follows_hints() {
        let now = Instant::now();
        let mut cache = MetadataCache::default();
        assert!(cache.needs_refresh(now, Duration::from_secs(30)));
        cache.apply(&response(&[1, 2, 0]), true, now);
        assert!(!cache.needs_refresh(now, Duration::from_secs(30)));
        assert_eq!(cache.partition_count("orders"), Some(3));
        assert_eq!(cache.leader_address("orders", 0), Some("127.0.0.1:7101"));
        assert_eq!(cache.leader_address("orders", 1), Some("127.0.0.1:7102"));
        assert_eq!(cache.leader_address("orders", 2), None, "leader 0 means unknown");
        assert_eq!(cache.leader_address("orders", 3), None, "no such partition");
        assert_eq!(cache.leader_address("other", 0), None);

        let hint = LeaderHint { id: 4, address: "127.0.0.1:7104".into() };
        cache.learn_leader("orders", 0, &hint);
        assert_eq!(cache.leader_address("orders", 0), Some("127.0.0.1:7104"));
        cache.forget_leader("orders", 1);
        assert_eq!(cache.leader_address("orders", 1), None);

        cache.invalidate();
        assert!(cache.needs_refresh(now, Duration::from_secs(30)));
    }

    #[test]
    fn full_refresh_drops_deleted_topics_and_ages_out() {
        let now = Instant::now();
        let mut cache = MetadataCache::default();
        cache.apply(&response(&[1]), true, now);
        cache.apply(&v1::MetadataResponse::default(), true, now);
        assert_eq!(cache.partition_count("orders"), None);
        assert!(cache.needs_refresh(now + Duration::from_secs(30), Duration::from_secs(30)));
        // A partial answer adds topics but does not count as a refresh.
        let mut partial = MetadataCache::default();
        partial.apply(&response(&[1]), false, now);
        assert_eq!(partial.partition_count("orders"), Some(1));
        assert!(partial.needs_refresh(now, Duration::from_secs(30)));
    }

    #[test]
    fn brokers_are_seeds_then_other_known_nodes() {
        let mut cache = MetadataCache::default();
        cache.apply(&response(&[1]), true, Instant::now());
        let seeds = vec!["127.0.0.1:7102".to_string(), "seed:1".to_string()];
        assert_eq!(cache.brokers(&seeds), ["127.0.0.1:7102", "seed:1", "127.0.0.1:7101", "127.0.0.1:7103"]);
    }
}

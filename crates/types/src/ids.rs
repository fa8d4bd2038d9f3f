//! Identifier newtypes that cross crate boundaries.

use serde::{Deserialize, Serialize};

/// A node of the cluster. Never reused once a node has left: openraft may otherwise count
/// an old vote of the id towards a new quorum.
pub type NodeId = u64;

/// A topic's identity, assigned by the metadata group and never reused (a topic deleted and
/// created again under the same name gets a new id, so stale data never resurfaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TopicId(pub u64);

/// A partition's index within its topic.
pub type PartitionId = u32;

/// A record's position within its partition. Dense and increasing from 0.
pub type Offset = u64;

/// A Raft group. Group 0 is the metadata group; partition groups are derived from the
/// topic id and partition index so every node computes the same id without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u64);

/// The metadata group's id.
pub const METADATA_GROUP: GroupId = GroupId(0);

/// Partitions per topic the group-id scheme leaves room for.
const PARTITION_BITS: u32 = 20;

impl GroupId {
    /// The group replicating `partition` of `topic`.
    pub fn for_partition(topic: TopicId, partition: PartitionId) -> GroupId {
        assert!(u64::from(partition) < (1 << PARTITION_BITS), "partition {partition} exceeds the group-id space");
        assert!(topic.0 < (1 << (64 - PARTITION_BITS)), "topic id {} exceeds the group-id space", topic.0);
        GroupId((topic.0 << PARTITION_BITS) | u64::from(partition))
    }

    /// The (topic, partition) of a partition group; `None` for the metadata group.
    pub fn partition(self) -> Option<(TopicId, PartitionId)> {
        if self == METADATA_GROUP {
            return None;
        }
        let partition = (self.0 & ((1 << PARTITION_BITS) - 1)) as PartitionId;
        Some((TopicId(self.0 >> PARTITION_BITS), partition))
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.partition() {
            None => write!(f, "metadata"),
            Some((topic, partition)) => write!(f, "t{}p{}", topic.0, partition),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_round_trip_and_never_collide_with_metadata() {
        for (topic, partition) in [(1u64, 0u32), (1, 7), (42, 999_999)] {
            let group = GroupId::for_partition(TopicId(topic), partition);
            assert_ne!(group, METADATA_GROUP);
            assert_eq!(group.partition(), Some((TopicId(topic), partition)));
        }
    }
}

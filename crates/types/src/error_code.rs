//! Stable numeric error codes carried on the wire. A code is never reused once retired.

use serde::{Deserialize, Serialize};

/// Every error a client can see. The numeric value is part of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum ErrorCode {
    /// A bug or an unexpected failure inside the node.
    Internal = 1,
    /// The node is shutting down.
    ShuttingDown = 2,
    /// The request did not complete in time; it may or may not have taken effect.
    Timeout = 3,
    /// A malformed request not covered by a more specific code.
    InvalidRequest = 4,

    /// No topic has that name.
    UnknownTopic = 100,
    /// A topic with that name exists already.
    TopicExists = 101,
    /// The topic name breaks the naming rules.
    InvalidTopicName = 102,
    /// The partition index is not below the topic's partition count.
    PartitionOutOfRange = 103,
    /// The partition count is zero or above the limit.
    InvalidPartitionCount = 104,
    /// More replicas asked for than there are nodes.
    ReplicationFactorTooLarge = 105,
    /// The replication factor is not usable.
    InvalidReplicationFactor = 106,
    /// A topic configuration key is unknown, or its value breaks the key's rule; the message
    /// names the key, the value and the rule.
    InvalidConfig = 107,

    /// A produce request without records.
    EmptyBatch = 200,
    /// One record exceeds the record size limit.
    RecordTooLarge = 201,
    /// The request exceeds the batch size limit.
    BatchTooLarge = 202,
    /// The request holds more records than allowed.
    TooManyRecords = 203,
    /// A produce whose records went to several partitions was appended on some and not on
    /// others: the message and the `flotilla-produce-result-bin` trailer (a `ProduceResponse`)
    /// give each partition's outcome. Not retriable as a whole: resending it would append the
    /// acknowledged partitions' records again.
    ProduceIncomplete = 204,
    /// The fetch offset is outside the partition's retained range.
    OffsetOutOfRange = 210,

    /// This node does not lead the group; the error names the leader when known.
    NotLeader = 300,
    /// No leader is known for the group right now (election in progress); retry.
    LeaderUnavailable = 301,
    /// This node does not host the requested replica.
    ReplicaNotHere = 302,
    /// The cluster cannot serve: no quorum, or a peer is unreachable.
    Unavailable = 303,

    /// The data directory belongs to another node id.
    NodeIdMismatch = 400,
    /// The node's data directory is empty but the cluster lists the node: its disk was wiped
    /// or replaced, and it refuses to rejoin under the same id.
    WipedDisk = 401,
    /// The data directory was written in a storage format this build cannot read (an older
    /// build's, or a newer one's); the message names the format and both versions.
    UnsupportedStorageFormat = 402,

    /// An idempotent producer's epoch is older than one the partition has seen for the same
    /// producer id: another session took over. Start a new session.
    ProducerFenced = 500,
    /// An idempotent batch is neither the next one the partition expects from the producer
    /// nor a recent one it already appended; the message names both sequence numbers.
    OutOfOrderSequence = 501,
    /// The partition does not remember the producer id and cannot tell whether it forgot it
    /// (it evicted producers to stay within its bound): it can no longer deduplicate this
    /// producer's batches. This attempt was not appended, but an earlier attempt of the same
    /// batch may have been (before the eviction); start a new producer session.
    UnknownProducerId = 502,

    /// No consumer group has that name.
    UnknownGroup = 600,
    /// The member id is not (or no longer) in the group: it left, or the coordinator evicted
    /// it after its session timeout. The member must stop consuming and join again.
    UnknownMember = 601,
    /// The request carries an older member epoch than the member's current one (a zombie or a
    /// late request); the message names both.
    StaleMemberEpoch = 602,
    /// The group has members; resetting its offsets needs an inactive group.
    GroupActive = 603,
    /// The member committed an offset for a partition it is not assigned.
    PartitionNotAssigned = 604,
    /// A commit would move a group's committed offset backwards (only a reset may).
    OffsetRegression = 605,
    /// The group name breaks the naming rules.
    InvalidGroupName = 606,
}

impl ErrorCode {
    /// The stable numeric value.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// Parses a numeric value; `None` for codes this build does not know.
    pub fn from_u32(code: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => Internal,
            2 => ShuttingDown,
            3 => Timeout,
            4 => InvalidRequest,
            100 => UnknownTopic,
            101 => TopicExists,
            102 => InvalidTopicName,
            103 => PartitionOutOfRange,
            104 => InvalidPartitionCount,
            105 => ReplicationFactorTooLarge,
            106 => InvalidReplicationFactor,
            107 => InvalidConfig,
            200 => EmptyBatch,
            201 => RecordTooLarge,
            202 => BatchTooLarge,
            203 => TooManyRecords,
            204 => ProduceIncomplete,
            210 => OffsetOutOfRange,
            300 => NotLeader,
            301 => LeaderUnavailable,
            302 => ReplicaNotHere,
            303 => Unavailable,
            400 => NodeIdMismatch,
            401 => WipedDisk,
            402 => UnsupportedStorageFormat,
            500 => ProducerFenced,
            501 => OutOfOrderSequence,
            502 => UnknownProducerId,
            600 => UnknownGroup,
            601 => UnknownMember,
            602 => StaleMemberEpoch,
            603 => GroupActive,
            604 => PartitionNotAssigned,
            605 => OffsetRegression,
            606 => InvalidGroupName,
            _ => return None,
        })
    }

    /// Whether a client may retry the same request (possibly against another node).
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::LeaderUnavailable
                | ErrorCode::Unavailable
                | ErrorCode::Timeout
                | ErrorCode::ShuttingDown
                | ErrorCode::ReplicaNotHere
        )
    }

    /// A stable upper-snake name, for logs and the CLI.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Internal => "INTERNAL",
            ShuttingDown => "SHUTTING_DOWN",
            Timeout => "TIMEOUT",
            InvalidRequest => "INVALID_REQUEST",
            UnknownTopic => "UNKNOWN_TOPIC",
            TopicExists => "TOPIC_EXISTS",
            InvalidTopicName => "INVALID_TOPIC_NAME",
            PartitionOutOfRange => "PARTITION_OUT_OF_RANGE",
            InvalidPartitionCount => "INVALID_PARTITION_COUNT",
            ReplicationFactorTooLarge => "REPLICATION_FACTOR_TOO_LARGE",
            InvalidReplicationFactor => "INVALID_REPLICATION_FACTOR",
            InvalidConfig => "INVALID_CONFIG",
            EmptyBatch => "EMPTY_BATCH",
            RecordTooLarge => "RECORD_TOO_LARGE",
            BatchTooLarge => "BATCH_TOO_LARGE",
            TooManyRecords => "TOO_MANY_RECORDS",
            ProduceIncomplete => "PRODUCE_INCOMPLETE",
            OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            NotLeader => "NOT_LEADER",
            LeaderUnavailable => "LEADER_UNAVAILABLE",
            ReplicaNotHere => "REPLICA_NOT_HERE",
            Unavailable => "UNAVAILABLE",
            NodeIdMismatch => "NODE_ID_MISMATCH",
            WipedDisk => "WIPED_DISK",
            UnsupportedStorageFormat => "UNSUPPORTED_STORAGE_FORMAT",
            ProducerFenced => "PRODUCER_FENCED",
            OutOfOrderSequence => "OUT_OF_ORDER_SEQUENCE",
            UnknownProducerId => "UNKNOWN_PRODUCER_ID",
            UnknownGroup => "UNKNOWN_GROUP",
            UnknownMember => "UNKNOWN_MEMBER",
            StaleMemberEpoch => "STALE_MEMBER_EPOCH",
            GroupActive => "GROUP_ACTIVE",
            PartitionNotAssigned => "PARTITION_NOT_ASSIGNED",
            OffsetRegression => "OFFSET_REGRESSION",
            InvalidGroupName => "INVALID_GROUP_NAME",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..1000 {
            if let Some(parsed) = ErrorCode::from_u32(code) {
                assert_eq!(parsed.as_u32(), code);
            }
        }
        assert_eq!(ErrorCode::from_u32(300), Some(ErrorCode::NotLeader));
    }

    #[test]
    fn producer_session_codes_are_stable_and_not_retriable() {
        // The numbers are public API: clients compare them.
        assert_eq!(ErrorCode::from_u32(500), Some(ErrorCode::ProducerFenced));
        assert_eq!(ErrorCode::from_u32(501), Some(ErrorCode::OutOfOrderSequence));
        assert_eq!(ErrorCode::from_u32(502), Some(ErrorCode::UnknownProducerId));
        assert_eq!(ErrorCode::UnknownProducerId.name(), "UNKNOWN_PRODUCER_ID");
        assert!(!ErrorCode::UnknownProducerId.is_retriable());
        assert_eq!(ErrorCode::ProducerFenced.name(), "PRODUCER_FENCED");
        assert_eq!(ErrorCode::OutOfOrderSequence.name(), "OUT_OF_ORDER_SEQUENCE");
        // Resending the same batch cannot fix either: the session must change.
        assert!(!ErrorCode::ProducerFenced.is_retriable());
        assert!(!ErrorCode::OutOfOrderSequence.is_retriable());
    }

    #[test]
    fn consumer_group_codes_are_stable_and_not_retriable() {
        for (number, code, name) in [
            (600, ErrorCode::UnknownGroup, "UNKNOWN_GROUP"),
            (601, ErrorCode::UnknownMember, "UNKNOWN_MEMBER"),
            (602, ErrorCode::StaleMemberEpoch, "STALE_MEMBER_EPOCH"),
            (603, ErrorCode::GroupActive, "GROUP_ACTIVE"),
            (604, ErrorCode::PartitionNotAssigned, "PARTITION_NOT_ASSIGNED"),
            (605, ErrorCode::OffsetRegression, "OFFSET_REGRESSION"),
            (606, ErrorCode::InvalidGroupName, "INVALID_GROUP_NAME"),
        ] {
            assert_eq!(ErrorCode::from_u32(number), Some(code));
            assert_eq!(code.name(), name);
            // Each needs the member to rejoin or the caller to change the request.
            assert!(!code.is_retriable(), "{name}");
        }
    }

    #[test]
    fn node_identity_codes_are_stable() {
        assert_eq!(ErrorCode::from_u32(400), Some(ErrorCode::NodeIdMismatch));
        assert_eq!(ErrorCode::from_u32(401), Some(ErrorCode::WipedDisk));
        assert_eq!(ErrorCode::WipedDisk.name(), "WIPED_DISK");
        assert!(!ErrorCode::WipedDisk.is_retriable());
    }
}

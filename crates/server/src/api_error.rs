//! `ApiError`: the one place internal failures become client-visible errors: every domain
//! error (catalogue, consumer group, partition, read, proposal, configuration) maps to its
//! stable wire code here and nowhere else.

use flotilla_broker::{BrokerError, PartitionRejection};
use flotilla_metadata::{GroupError, MetaError};
use flotilla_proto::error::{LeaderHint, attach_produce_result, status};
use flotilla_proto::v1::ProduceResponse;
use flotilla_raft::{NodeInfo, ProposeError};
use flotilla_types::{ConfigError, ErrorCode, NodeId};

/// An error returned to a client: a stable code, a message naming the offending value, for
/// `NotLeader` where the leader is, and for a produce that failed on some partitions what
/// happened on each.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub leader: Option<LeaderHint>,
    pub produce_result: Option<Box<ProduceResponse>>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), leader: None, produce_result: None }
    }

    /// `NotLeader` pointing at `leader` when known.
    pub fn not_leader(what: impl std::fmt::Display, leader: Option<(NodeId, NodeInfo)>) -> Self {
        match leader {
            Some((id, info)) => ApiError {
                code: ErrorCode::NotLeader,
                message: format!("this node does not lead {what}; node {id} at {} does", info.client_address),
                leader: Some(LeaderHint { id, address: info.client_address }),
                produce_result: None,
            },
            None => {
                ApiError::new(ErrorCode::LeaderUnavailable, format!("{what} has no leader right now; retry shortly"))
            }
        }
    }

    /// Maps a failed proposal on `what`.
    pub fn from_propose(what: impl std::fmt::Display, err: ProposeError) -> Self {
        match err {
            ProposeError::NotLeader { leader } => ApiError::not_leader(what, leader),
            ProposeError::OutcomeUnknown { .. } => ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "leadership of {what} changed while the request was in flight; it may or may not have been applied"
                ),
            ),
            ProposeError::Unavailable(message) => {
                ApiError::new(ErrorCode::Unavailable, format!("{what} is unavailable: {message}"))
            }
            ProposeError::Invalid(message) => ApiError::new(ErrorCode::Internal, format!("{what}: {message}")),
        }
    }
}

impl From<MetaError> for ApiError {
    fn from(err: MetaError) -> Self {
        let code = match &err {
            MetaError::TopicExists { .. } => ErrorCode::TopicExists,
            MetaError::UnknownTopic { .. } => ErrorCode::UnknownTopic,
            MetaError::ReplicationFactorTooLarge { .. } => ErrorCode::ReplicationFactorTooLarge,
            MetaError::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
            MetaError::InvalidPartitionCount { .. } => ErrorCode::InvalidPartitionCount,
            MetaError::UnknownPartition { .. } => ErrorCode::PartitionOutOfRange,
            MetaError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
            MetaError::NotAReplica { .. }
            | MetaError::UnknownNode { .. }
            | MetaError::AlreadyAReplica { .. }
            | MetaError::FormerReplica { .. }
            | MetaError::InvalidRegistration { .. } => ErrorCode::InvalidRequest,
        };
        ApiError::new(code, err.to_string())
    }
}

impl From<GroupError> for ApiError {
    fn from(err: GroupError) -> Self {
        let code = match &err {
            GroupError::UnknownGroup { .. } => ErrorCode::UnknownGroup,
            GroupError::UnknownTopic { .. } => ErrorCode::UnknownTopic,
            GroupError::UnknownMember { .. } => ErrorCode::UnknownMember,
            GroupError::StaleMemberEpoch { .. } => ErrorCode::StaleMemberEpoch,
            GroupError::NotAssigned { .. } => ErrorCode::PartitionNotAssigned,
            GroupError::OffsetRegression { .. } => ErrorCode::OffsetRegression,
            GroupError::GroupActive { .. } => ErrorCode::GroupActive,
            GroupError::TooManyMembers { .. } | GroupError::NoTopics { .. } | GroupError::TooManyGroups { .. } => {
                ErrorCode::InvalidRequest
            }
        };
        ApiError::new(code, err.to_string())
    }
}

impl From<ConfigError> for ApiError {
    fn from(err: ConfigError) -> Self {
        ApiError::new(ErrorCode::InvalidConfig, err.to_string())
    }
}

impl ApiError {
    /// A partition's refusal of a command on `what` (a partition, named for the message).
    pub fn rejected(what: impl std::fmt::Display, rejection: PartitionRejection) -> Self {
        let code = match rejection {
            PartitionRejection::ProducerFenced { .. } => ErrorCode::ProducerFenced,
            PartitionRejection::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequence,
            PartitionRejection::TrimBeyondHighWatermark { .. } => ErrorCode::OffsetOutOfRange,
            PartitionRejection::UnknownProducerId { .. } => ErrorCode::UnknownProducerId,
        };
        ApiError::new(code, format!("{what}: {rejection}"))
    }

    /// A failed read of `what` (a partition, named for the message).
    pub fn read(what: impl std::fmt::Display, err: BrokerError) -> Self {
        match err {
            BrokerError::OffsetOutOfRange { offset, log_start, high_watermark, .. } => ApiError::new(
                ErrorCode::OffsetOutOfRange,
                format!("offset {offset} is out of range for {what}: valid offsets are {log_start}..={high_watermark}"),
            ),
            other => ApiError::new(ErrorCode::Internal, format!("{what}: {other}")),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        let mut status = status(err.code, err.message, err.leader.as_ref());
        if let Some(result) = &err.produce_result {
            attach_produce_result(&mut status, result);
        }
        status
    }
}

/// Reads a forwarded call's failure back into an [`ApiError`], keeping the code.
pub fn from_status(status: &tonic::Status) -> ApiError {
    let wire = flotilla_proto::error::WireError::from_status(status);
    ApiError {
        code: wire.code.unwrap_or(ErrorCode::Unavailable),
        message: wire.message,
        leader: wire.leader,
        produce_result: flotilla_proto::error::produce_result(status).map(Box::new),
    }
}

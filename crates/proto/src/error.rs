//! Flotilla errors on the wire: a gRPC status plus trailers carrying the stable error code
//! and, for `NotLeader`, where the leader is. Servers build them with [`status`]; clients
//! read them back with [`WireError::from_status`].

use flotilla_types::{ErrorCode, NodeId};
use tonic::metadata::MetadataValue;

const CODE_KEY: &str = "flotilla-error-code";
const NAME_KEY: &str = "flotilla-error-name";
const LEADER_ID_KEY: &str = "flotilla-leader-id";
const LEADER_ADDRESS_KEY: &str = "flotilla-leader-address";
/// Trailer of a `PRODUCE_INCOMPLETE` error: the encoded `ProduceResponse` with each
/// partition's outcome.
pub const PRODUCE_RESULT_KEY: &str = "flotilla-produce-result-bin";

/// A leader hint attached to `NotLeader` errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    pub id: NodeId,
    pub address: String,
}

/// The gRPC status code that best matches a Flotilla error code.
pub fn grpc_code(code: ErrorCode) -> tonic::Code {
    use ErrorCode::*;
    match code {
        Internal => tonic::Code::Internal,
        ShuttingDown | Unavailable | LeaderUnavailable | NotLeader | ReplicaNotHere => tonic::Code::Unavailable,
        Timeout => tonic::Code::DeadlineExceeded,
        UnknownTopic => tonic::Code::NotFound,
        TopicExists => tonic::Code::AlreadyExists,
        OffsetOutOfRange | PartitionOutOfRange => tonic::Code::OutOfRange,
        ReplicationFactorTooLarge => tonic::Code::FailedPrecondition,
        NodeIdMismatch
        | WipedDisk
        | UnsupportedStorageFormat
        | ProducerFenced
        | OutOfOrderSequence
        | UnknownProducerId => tonic::Code::FailedPrecondition,
        // Partly done: the client must look at the parts before doing anything else.
        ProduceIncomplete => tonic::Code::Aborted,
        UnknownGroup => tonic::Code::NotFound,
        UnknownMember | StaleMemberEpoch | GroupActive | PartitionNotAssigned | OffsetRegression => {
            tonic::Code::FailedPrecondition
        }
        InvalidRequest
        | InvalidTopicName
        | InvalidPartitionCount
        | InvalidReplicationFactor
        | InvalidConfig
        | EmptyBatch
        | RecordTooLarge
        | BatchTooLarge
        | TooManyRecords
        | InvalidGroupName => tonic::Code::InvalidArgument,
    }
}

/// Builds the status for `code` with a message naming the offending value.
pub fn status(code: ErrorCode, message: impl Into<String>, leader: Option<&LeaderHint>) -> tonic::Status {
    let mut status = tonic::Status::new(grpc_code(code), message);
    let metadata = status.metadata_mut();
    metadata.insert(CODE_KEY, MetadataValue::from(code.as_u32()));
    metadata.insert(NAME_KEY, MetadataValue::from_static(code.name()));
    if let Some(leader) = leader {
        metadata.insert(LEADER_ID_KEY, MetadataValue::from(leader.id));
        if let Ok(address) = leader.address.parse() {
            metadata.insert(LEADER_ADDRESS_KEY, address);
        }
    }
    status
}

/// Attaches a produce request's per-partition outcome to its `PRODUCE_INCOMPLETE` status.
pub fn attach_produce_result(status: &mut tonic::Status, result: &crate::v1::ProduceResponse) {
    let bytes = prost::Message::encode_to_vec(result);
    status.metadata_mut().insert_bin(PRODUCE_RESULT_KEY, tonic::metadata::MetadataValue::from_bytes(&bytes));
}

/// The per-partition outcome a `PRODUCE_INCOMPLETE` status carries, if it carries one.
pub fn produce_result(status: &tonic::Status) -> Option<crate::v1::ProduceResponse> {
    let value = status.metadata().get_bin(PRODUCE_RESULT_KEY)?;
    let bytes = value.to_bytes().ok()?;
    prost::Message::decode(bytes.as_ref()).ok()
}

/// A Flotilla error as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// `None` when the status did not come from a Flotilla node (a transport failure, or a
    /// code this build does not know).
    pub code: Option<ErrorCode>,
    pub grpc_code: tonic::Code,
    pub message: String,
    pub leader: Option<LeaderHint>,
}

impl WireError {
    /// Reads the Flotilla fields out of a status.
    pub fn from_status(status: &tonic::Status) -> WireError {
        let metadata = status.metadata();
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok()).map(str::to_string);
        let code = text(CODE_KEY).and_then(|c| c.parse().ok()).and_then(ErrorCode::from_u32);
        let leader = match (text(LEADER_ID_KEY).and_then(|id| id.parse().ok()), text(LEADER_ADDRESS_KEY)) {
            (Some(id), Some(address)) => Some(LeaderHint { id, address }),
            _ => None,
        };
        WireError { code, grpc_code: status.code(), message: status.message().to_string(), leader }
    }

    /// Whether retrying (possibly elsewhere) can succeed. Transport failures count as
    /// retriable: the request may not have reached any node.
    pub fn is_retriable(&self) -> bool {
        match self.code {
            Some(code) => code.is_retriable(),
            None => matches!(
                self.grpc_code,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
            ),
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "{} ({}): {}", code.name(), code.as_u32(), self.message),
            None => write!(f, "{:?}: {}", self.grpc_code, self.message),
        }
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_code_and_leader_hint() {
        let hint = LeaderHint { id: 2, address: "127.0.0.1:7102".into() };
        let status = status(ErrorCode::NotLeader, "node 1 does not lead t1p0", Some(&hint));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let wire = WireError::from_status(&status);
        assert_eq!(wire.code, Some(ErrorCode::NotLeader));
        assert_eq!(wire.leader, Some(hint));
        assert!(wire.is_retriable());
    }
}

//! Errors the client returns.

use flotilla_proto::error::WireError;
use flotilla_proto::v1::RecordAck;
use flotilla_types::ErrorCode;

/// Everything that can go wrong in a client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// [`crate::Client::connect`] was given no broker address.
    #[error("no broker address given; pass at least one HOST:PORT")]
    NoBrokers,
    /// A broker address is not `HOST:PORT`.
    #[error("broker address {address:?} is not HOST:PORT: {reason}")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server refused the request with an error that retrying cannot fix. The message is
    /// the server's, unchanged: it names the offending value.
    #[error("{0}")]
    Server(WireError),
    /// Every attempt failed with a retriable error (or no node answered).
    #[error("{operation} ({target}) gave up after {attempts} attempts")]
    RetriesExhausted {
        /// The API call, e.g. "produce".
        operation: &'static str,
        /// Where it was sent, e.g. "leader of orders/2".
        target: String,
        /// Attempts made, the first included.
        attempts: u32,
        /// The error of the last attempt.
        #[source]
        last: WireError,
    },
    /// The topic is not in the cluster metadata the client fetched.
    #[error("topic {topic:?} does not exist (it is not in the cluster metadata)")]
    UnknownTopic {
        /// The topic asked for.
        topic: String,
    },
    /// A produce split across partitions succeeded for some partitions only.
    #[error("{acknowledged} of {total} records were acknowledged; the others failed")]
    PartiallyAcknowledged {
        /// Per request record, in request order: where it landed, or `None` if it failed.
        acks: Vec<Option<RecordAck>>,
        /// Records acknowledged.
        acknowledged: usize,
        /// Records in the request.
        total: usize,
        /// The first failure.
        #[source]
        source: Box<ClientError>,
    },
    /// An [`crate::IdempotentProducer`] cannot send other records to this partition yet: an
    /// earlier batch failed without a definite answer, so it may or may not have been appended.
    /// Sending that batch's records again settles it (exactly once either way); a new session
    /// abandons it.
    #[error(
        "the batch of {records} records at sequence {base_sequence} from producer {producer_id} to {topic}/{partition} \
         may or may not have been appended; send the same records again to settle it, or start a new producer \
         session"
    )]
    SequenceInDoubt {
        /// The session's producer id.
        producer_id: u64,
        /// Topic of the unsettled batch.
        topic: String,
        /// Partition of the unsettled batch.
        partition: u32,
        /// Its sequence number.
        base_sequence: u64,
        /// How many records it holds.
        records: usize,
    },
    /// The server's answer breaks the API contract (e.g. fewer acks than records).
    #[error("unexpected answer to {operation}: {detail}")]
    Protocol {
        /// The API call.
        operation: &'static str,
        /// What was wrong with the answer.
        detail: String,
    },
}

impl ClientError {
    /// The server's error behind this one, if any (the last one for exhausted retries).
    pub fn wire(&self) -> Option<&WireError> {
        match self {
            ClientError::Server(wire) | ClientError::RetriesExhausted { last: wire, .. } => Some(wire),
            ClientError::PartiallyAcknowledged { source, .. } => source.wire(),
            _ => None,
        }
    }

    /// The stable Flotilla error code behind this error, if the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        self.wire().and_then(|wire| wire.code)
    }

    /// Whether the same call may succeed if made again later: true for exhausted retries
    /// (the cluster may recover), false for refusals and contract violations.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::RetriesExhausted { .. } => true,
            ClientError::Server(wire) => wire.is_retriable(),
            ClientError::PartiallyAcknowledged { source, .. } => source.is_retriable(),
            _ => false,
        }
    }
}

//! Errors the client returns.

use std::time::Duration;

use flotilla_proto::error::WireError;
use flotilla_proto::v1::RecordAck;
use flotilla_types::ErrorCode;

/// Everything that can go wrong in a client call. `Clone`, because a [`crate::Producer`]
/// reports one batch's failure to every record of the batch.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// A [`crate::Producer`] setting is out of range.
    #[error("producer setting {field} {reason}")]
    InvalidConfig {
        /// The setting, e.g. "batch_bytes".
        field: &'static str,
        /// What is wrong with it, naming the value and the rule.
        reason: String,
    },
    /// A record a [`crate::Producer`] was asked to send breaks a limit or names a partition
    /// the topic does not have; checked before the record is queued, so nothing was sent.
    #[error("record for topic {topic:?} refused before sending: {reason}")]
    InvalidRecord {
        /// The record's topic.
        topic: String,
        /// The rule it breaks, naming the value.
        reason: String,
    },
    /// The [`crate::Producer`] was closed; no more records are accepted.
    #[error("the producer is closed; create a new one to send more records")]
    ProducerClosed,
    /// A partition refused a batch of this [`crate::Producer`] with `PRODUCER_FENCED`: another
    /// session took over its producer id with a higher epoch. The producer fails every
    /// pending and later record with this error rather than risk duplicates.
    #[error(
        "producer {producer_id} was fenced on {topic}/{partition}: another session took over its producer id with \
         a higher epoch, so this producer sends nothing more (create a new producer): {source}"
    )]
    ProducerFenced {
        /// The fenced producer id.
        producer_id: u64,
        /// Topic of the batch that was refused.
        topic: String,
        /// Its partition.
        partition: u32,
        /// The partition's refusal.
        #[source]
        source: WireError,
    },
    /// A [`crate::Producer`] could not get a record acknowledged within its delivery timeout.
    #[error(
        "records for {topic}/{partition} were not acknowledged within the delivery timeout of {timeout:?}; {}{}",
        if *.sent {
            "they were sent and may or may not have been appended (an idempotent producer keeps resending \
             the batch under its sequence numbers, so they are appended at most once)"
        } else {
            "they were never sent, so nothing was appended"
        },
        .last.as_ref().map(|last| format!("; last error: {last}")).unwrap_or_default()
    )]
    DeliveryTimeout {
        /// Topic of the records.
        topic: String,
        /// Their partition.
        partition: u32,
        /// The producer's delivery timeout.
        timeout: Duration,
        /// Whether the batch had been sent: if so the outcome is unknown, else nothing was
        /// appended.
        sent: bool,
        /// The last failure of the batch's requests, if any.
        last: Option<Box<ClientError>>,
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
            ClientError::Server(wire)
            | ClientError::RetriesExhausted { last: wire, .. }
            | ClientError::ProducerFenced { source: wire, .. } => Some(wire),
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

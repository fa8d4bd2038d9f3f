//! How the outcomes of a produce's per-partition appends become one answer that never claims
//! more than is true: a request appended on some partitions and not on others is never
//! answered as if nothing (or everything) had been appended.

use flotilla_proto::v1::{ErrorDetail, PartitionProduceResult, ProduceResponse, RecordAck};
use flotilla_types::{ErrorCode, PartitionId};

use crate::api_error::ApiError;

/// Largest per-partition result carried in a trailer, in bytes (about 300 partitions' worth).
const PRODUCE_RESULT_TRAILER_MAX: usize = 6 * 1024;
/// Longest error message, in bytes: it travels in a header too.
const MESSAGE_MAX: usize = 4 * 1024;

/// `message` cut to [`MESSAGE_MAX`] bytes at a character boundary.
fn truncate(mut message: String) -> String {
    if message.len() > MESSAGE_MAX {
        let mut end = MESSAGE_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// What became of one partition's share of a request.
pub(super) struct PartitionOutcome {
    pub partition: PartitionId,
    /// Positions in the request of the records that went to the partition, in order.
    pub indexes: Vec<usize>,
    /// The base offset they got, or the partition's error.
    pub result: Result<u64, ApiError>,
}

/// The answer to a request of `count` records from its partitions' outcomes (by partition):
/// - every partition appended: the acks, one per record in request order;
/// - one partition, failed: its error, unchanged;
/// - several partitions, none appended, all with the same code: that code (each partition
///   answered it, so it means what it would for one partition), naming each;
/// - otherwise `PRODUCE_INCOMPLETE`, naming each partition's outcome; both errors carry the
///   per-partition results (and the acks of what was appended) in their trailer.
pub(super) fn answer(topic: &str, count: usize, outcomes: Vec<PartitionOutcome>) -> Result<ProduceResponse, ApiError> {
    let mut acks = vec![RecordAck::default(); count];
    let mut partitions = Vec::with_capacity(outcomes.len());
    let mut failures = Vec::new();
    for outcome in &outcomes {
        let mut result = PartitionProduceResult {
            partition: outcome.partition,
            record_count: outcome.indexes.len() as u32,
            ..PartitionProduceResult::default()
        };
        match &outcome.result {
            Ok(base) => {
                result.base_offset = Some(*base);
                for (i, index) in outcome.indexes.iter().enumerate() {
                    acks[*index] = RecordAck { partition: outcome.partition, offset: base + i as u64 };
                }
            }
            Err(err) => {
                result.error = Some(ErrorDetail {
                    code: err.code.as_u32(),
                    name: err.code.name().into(),
                    message: err.message.clone(),
                });
                failures.push((outcome.partition, err));
            }
        }
        partitions.push(result);
    }
    if failures.is_empty() {
        return Ok(ProduceResponse { acks, partitions });
    }
    if outcomes.len() == 1 {
        let Some(PartitionOutcome { result: Err(err), .. }) = outcomes.into_iter().next() else {
            unreachable!("the one partition failed")
        };
        return Err(err);
    }
    let appended: Vec<String> = partitions
        .iter()
        .filter_map(|p| {
            p.base_offset.map(|base| format!("{} ({} records from offset {base})", p.partition, p.record_count))
        })
        .collect();
    let failed: Vec<String> =
        failures.iter().map(|(partition, err)| format!("{partition}: {} ({})", err.code.name(), err.message)).collect();
    let first_code = failures[0].1.code;
    let (code, message) = if appended.is_empty() && failures.iter().all(|(_, err)| err.code == first_code) {
        (first_code, format!("produce to topic {topic:?} failed on every partition: {}", failed.join("; ")))
    } else {
        (
            ErrorCode::ProduceIncomplete,
            format!(
                "produce to topic {topic:?} was appended on partitions {} but not acknowledged on partitions {}; \
                 resend only the records of the partitions that failed",
                if appended.is_empty() { "(none)".to_string() } else { appended.join(", ") },
                failed.join("; ")
            ),
        )
    };
    // The trailer holds the per-partition results only (a partition's records took
    // consecutive offsets from its base, in request order), and only while it stays well
    // within the 16 KiB of headers gRPC clients accept: a bigger one would make the client
    // drop the whole answer and see a retriable transport error instead.
    let mut err = ApiError::new(code, truncate(message));
    let result = ProduceResponse { acks: Vec::new(), partitions };
    if prost::Message::encoded_len(&result) <= PRODUCE_RESULT_TRAILER_MAX {
        err.produce_result = Some(Box::new(result));
    } else {
        err.message.push_str(" (too many partitions to list each one's outcome in the trailer)");
    }
    Err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appended(partition: PartitionId, indexes: Vec<usize>, base: u64) -> PartitionOutcome {
        PartitionOutcome { partition, indexes, result: Ok(base) }
    }

    fn failed(partition: PartitionId, indexes: Vec<usize>, code: ErrorCode) -> PartitionOutcome {
        PartitionOutcome {
            partition,
            indexes,
            result: Err(ApiError::new(code, format!("partition {partition} said no"))),
        }
    }

    #[test]
    fn a_request_appended_everywhere_gets_one_ack_per_record_in_request_order() {
        let answer = answer("t", 3, vec![appended(0, vec![0, 2], 10), appended(1, vec![1], 5)]).expect("appended");
        let acks: Vec<(u32, u64)> = answer.acks.iter().map(|a| (a.partition, a.offset)).collect();
        assert_eq!(acks, vec![(0, 10), (1, 5), (0, 11)]);
        assert_eq!(answer.partitions.len(), 2);
        assert_eq!(answer.partitions[0].base_offset, Some(10));
    }

    #[test]
    fn a_partly_appended_request_is_never_answered_with_one_partitions_error() {
        // Review finding 2: this used to be answered NOT_LEADER, which promises nothing was
        // appended, while partition 0 had committed its records.
        let err = answer("t", 3, vec![appended(0, vec![0, 2], 10), failed(1, vec![1], ErrorCode::NotLeader)])
            .expect_err("not every partition appended");
        assert_eq!(err.code, ErrorCode::ProduceIncomplete);
        assert!(!err.code.is_retriable(), "resending all of it would append partition 0's records twice");
        assert!(err.message.contains("appended on partitions 0 (2 records from offset 10)"), "{}", err.message);
        assert!(err.message.contains("1: NOT_LEADER"), "{}", err.message);
        let result = err.produce_result.expect("per-partition results");
        assert_eq!(result.partitions[0].base_offset, Some(10));
        assert_eq!(result.partitions[1].error.as_ref().map(|e| e.code), Some(ErrorCode::NotLeader.as_u32()));
        assert!(result.acks.is_empty(), "offsets follow from each partition's base: no per-record acks");
    }

    #[test]
    fn a_request_refused_everywhere_alike_keeps_the_code_and_mixed_refusals_do_not() {
        let err =
            answer("t", 2, vec![failed(0, vec![0], ErrorCode::NotLeader), failed(1, vec![1], ErrorCode::NotLeader)])
                .expect_err("refused");
        assert_eq!(err.code, ErrorCode::NotLeader);
        assert!(err.message.contains("0: NOT_LEADER") && err.message.contains("1: NOT_LEADER"), "{}", err.message);
        // A timeout (may have been appended) beside a refusal: neither code alone is true.
        let err =
            answer("t", 2, vec![failed(0, vec![0], ErrorCode::NotLeader), failed(1, vec![1], ErrorCode::Timeout)])
                .expect_err("refused");
        assert_eq!(err.code, ErrorCode::ProduceIncomplete);
        // One partition: its error as it was.
        let err = answer("t", 1, vec![failed(3, vec![0], ErrorCode::Timeout)]).expect_err("refused");
        assert_eq!((err.code, err.produce_result.is_none()), (ErrorCode::Timeout, true));
    }

    #[test]
    fn the_answer_stays_within_what_a_grpc_client_accepts_in_headers() {
        // Review: a trailer with one ack per record outgrew the 16 KiB of headers a tonic
        // client takes, and the client saw a retriable transport error instead.
        let mut outcomes: Vec<PartitionOutcome> =
            (0..2000).map(|p| appended(p, vec![p as usize], u64::from(p) * 1_000_000)).collect();
        outcomes.push(failed(2000, vec![2000], ErrorCode::Timeout));
        let err = answer("t", 2001, outcomes).expect_err("incomplete");
        assert_eq!(err.code, ErrorCode::ProduceIncomplete);
        assert!(err.message.len() <= MESSAGE_MAX + 100, "{} bytes of message", err.message.len());
        assert!(err.produce_result.is_none(), "too big for the trailer");
    }
}

//! Splitting one produce call into per-partition requests and putting the acknowledgements
//! back in request order. Pure functions, no I/O.

use std::collections::BTreeMap;

use flotilla_proto::v1::{Record, RecordAck};
use flotilla_types::{PartitionId, partition_for_key};

use crate::error::ClientError;

/// The records of one produce call bound for one partition.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SubBatch {
    /// Where they go.
    pub(crate) partition: PartitionId,
    /// Index of each record in the original call, ascending.
    pub(crate) positions: Vec<usize>,
    /// The records, in call order.
    pub(crate) records: Vec<Record>,
}

/// Splits `records` by partition: keyed records by murmur2 of their key (the server's rule,
/// so a key lands in the same partition whichever way it is sent), keyless records all to
/// `keyless_partition`. Sub-batches come out in partition order, records in call order, so
/// records with the same key keep their relative order. `partitions` must be at least 1.
pub(crate) fn split(records: Vec<Record>, partitions: u32, keyless_partition: PartitionId) -> Vec<SubBatch> {
    let mut batches: BTreeMap<PartitionId, SubBatch> = BTreeMap::new();
    for (position, record) in records.into_iter().enumerate() {
        let partition = match &record.key {
            Some(key) => partition_for_key(key, partitions),
            None => keyless_partition,
        };
        let batch = batches.entry(partition).or_insert_with(|| SubBatch {
            partition,
            positions: Vec::new(),
            records: Vec::new(),
        });
        batch.positions.push(position);
        batch.records.push(record);
    }
    batches.into_values().collect()
}

/// The outcome of one sub-batch: its positions in the call and its acks or error.
pub(crate) type SubBatchOutcome = (PartitionId, Vec<usize>, Result<Vec<RecordAck>, ClientError>);

/// Puts the acks of the sub-batches of a call of `total` records back in call order.
/// Fails with the first error if any sub-batch failed (wrapped in
/// [`ClientError::PartiallyAcknowledged`] when others succeeded), and with
/// [`ClientError::Protocol`] if a sub-batch's acks do not match its records.
pub(crate) fn reassemble(total: usize, outcomes: Vec<SubBatchOutcome>) -> Result<Vec<RecordAck>, ClientError> {
    let mut acks: Vec<Option<RecordAck>> = vec![None; total];
    let mut first_error = None;
    for (partition, positions, outcome) in outcomes {
        let result = outcome.and_then(|sub_acks| check_acks(partition, positions.len(), sub_acks));
        match result {
            Ok(sub_acks) => {
                for (position, ack) in positions.into_iter().zip(sub_acks) {
                    if let Some(slot) = acks.get_mut(position) {
                        *slot = Some(ack);
                    }
                }
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    let acknowledged = acks.iter().filter(|ack| ack.is_some()).count();
    match first_error {
        None if acknowledged == total => Ok(acks.into_iter().flatten().collect()),
        None => Err(ClientError::Protocol {
            operation: "produce",
            detail: format!("{} of {total} records got no ack", total - acknowledged),
        }),
        Some(error) if acknowledged == 0 => Err(error),
        Some(error) => Err(ClientError::PartiallyAcknowledged { acks, acknowledged, total, source: Box::new(error) }),
    }
}

/// Checks that a request for `partition` with `expected` records got one ack per record, all
/// in that partition.
pub(crate) fn check_acks(
    partition: PartitionId,
    expected: usize,
    acks: Vec<RecordAck>,
) -> Result<Vec<RecordAck>, ClientError> {
    if acks.len() != expected {
        return Err(ClientError::Protocol {
            operation: "produce",
            detail: format!("{} acks for {expected} records sent to partition {partition}", acks.len()),
        });
    }
    if let Some(stray) = acks.iter().find(|ack| ack.partition != partition) {
        return Err(ClientError::Protocol {
            operation: "produce",
            detail: format!("ack in partition {} for a record sent to partition {partition}", stray.partition),
        });
    }
    Ok(acks)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use flotilla_proto::error::WireError;

    use super::*;

    fn record(key: Option<&str>, value: &str) -> Record {
        Record {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Bytes::copy_from_slice(value.as_bytes()),
            ..Default::default()
        }
    }

    /// What a leader would answer: consecutive offsets from `base`.
    fn acks_for(batch: &SubBatch, base: u64) -> Vec<RecordAck> {
        (0..batch.records.len()).map(|i| RecordAck { partition: batch.partition, offset: base + i as u64 }).collect()
    }

    #[test]
    fn keyed_records_follow_murmur2_and_keyless_go_together() {
        let records = vec![
            record(Some("a"), "1"),
            record(None, "2"),
            record(Some("b"), "3"),
            record(Some("a"), "4"),
            record(None, "5"),
        ];
        let batches = split(records.clone(), 4, 3);
        let mut seen = vec![false; records.len()];
        for batch in &batches {
            assert_eq!(batch.positions.len(), batch.records.len());
            assert!(batch.positions.windows(2).all(|w| w[0] < w[1]), "call order kept: {batch:?}");
            for (position, record) in batch.positions.iter().zip(&batch.records) {
                assert_eq!(&records[*position], record);
                let expected = record.key.as_ref().map_or(3, |key| partition_for_key(key, 4));
                assert_eq!(batch.partition, expected);
                seen[*position] = true;
            }
        }
        assert!(seen.iter().all(|s| *s), "every record is in exactly one sub-batch");
        assert!(batches.windows(2).all(|w| w[0].partition < w[1].partition));
    }

    #[test]
    fn acks_come_back_in_call_order() {
        let records: Vec<Record> = (0..50).map(|i| record(Some(&format!("key-{}", i % 7)), "v")).collect();
        let batches = split(records.clone(), 5, 0);
        assert!(batches.len() > 1, "the keys spread over several partitions");
        // Answer the sub-batches in reverse, as concurrent requests may complete.
        let outcomes: Vec<SubBatchOutcome> = batches
            .iter()
            .rev()
            .map(|b| (b.partition, b.positions.clone(), Ok(acks_for(b, 100 * u64::from(b.partition)))))
            .collect();
        let acks = reassemble(records.len(), outcomes).expect("all succeeded");
        assert_eq!(acks.len(), records.len());
        for (position, ack) in acks.iter().enumerate() {
            let key = records[position].key.as_ref().expect("keyed");
            assert_eq!(ack.partition, partition_for_key(key, 5));
        }
        // Within a partition, offsets rise in call order.
        for partition in 0..5 {
            let offsets: Vec<u64> = acks.iter().filter(|a| a.partition == partition).map(|a| a.offset).collect();
            assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "partition {partition}: {offsets:?}");
        }
    }

    #[test]
    fn partial_failure_keeps_the_acks_that_succeeded() {
        let records = vec![record(Some("a"), "1"), record(Some("b"), "2"), record(Some("c"), "3")];
        let batches = split(records, 3, 0);
        assert!(batches.len() >= 2);
        let wire = WireError { code: None, grpc_code: tonic::Code::Unavailable, message: "down".into(), leader: None };
        let mut outcomes: Vec<SubBatchOutcome> = Vec::new();
        for (i, b) in batches.iter().enumerate() {
            let outcome = if i == 0 { Err(ClientError::Server(wire.clone())) } else { Ok(acks_for(b, 0)) };
            outcomes.push((b.partition, b.positions.clone(), outcome));
        }
        match reassemble(3, outcomes) {
            Err(ClientError::PartiallyAcknowledged { acks, acknowledged, total, source }) => {
                assert_eq!(total, 3);
                assert_eq!(acknowledged, 3 - batches[0].positions.len());
                for position in &batches[0].positions {
                    assert_eq!(acks[*position], None);
                }
                assert!(matches!(*source, ClientError::Server(_)));
            }
            other => panic!("expected a partial failure, got {other:?}"),
        }
    }

    #[test]
    fn total_failure_returns_the_error_itself() {
        let batches = split(vec![record(None, "x")], 2, 1);
        let outcomes = vec![(
            batches[0].partition,
            batches[0].positions.clone(),
            Err(ClientError::UnknownTopic { topic: "t".into() }),
        )];
        assert!(matches!(reassemble(1, outcomes), Err(ClientError::UnknownTopic { .. })));
    }

    #[test]
    fn wrong_ack_count_or_partition_is_a_protocol_error() {
        let short = vec![RecordAck { partition: 1, offset: 0 }];
        assert!(matches!(check_acks(1, 2, short), Err(ClientError::Protocol { .. })));
        let stray = vec![RecordAck { partition: 2, offset: 0 }];
        assert!(matches!(check_acks(1, 1, stray), Err(ClientError::Protocol { .. })));
        let outcomes = vec![(0, vec![0, 1], Ok(vec![RecordAck { partition: 0, offset: 5 }]))];
        assert!(matches!(reassemble(2, outcomes), Err(ClientError::Protocol { .. })));
    }
}

//! Golden files of what a partition stores: its log entries (every command), its index and
//! metadata, its producers, and its snapshot sections. A change that makes stored partition
//! data unreadable fails here.

use std::path::PathBuf;

use bytes::Bytes;
use flotilla_raft::golden;
use flotilla_raft::openraft::testing::log_id;
use flotilla_raft::openraft::{Entry, EntryPayload, RaftTypeConfig};
use flotilla_raft::{decode_entry, encode_entry};
use flotilla_types::{Header, Record, RetentionPolicy};

use crate::log::{BatchRun, SnapshotBatch};
use crate::producers::{ProducerRun, ProducerState, ProducersMeta};
use crate::{
    IndexEntry, LogMeta, PartitionCommand, PartitionConfig, PartitionEntry, PartitionWatermarks, ProducerSequence,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn records() -> Vec<Record> {
    vec![
        Record {
            key: Some(Bytes::from_static(b"customer-7")),
            value: Bytes::from_static(b"order-1"),
            headers: vec![Header { key: "trace".into(), value: Bytes::from_static(b"abc") }],
            timestamp_ms: 1_700_000_000_123,
        },
        Record { key: None, value: Bytes::from_static(b""), headers: vec![], timestamp_ms: 0 },
    ]
}

fn index_entry() -> IndexEntry {
    IndexEntry {
        log_index: 42,
        count: 2,
        max_timestamp_ms: 1_700_000_000_123,
        appended_ms: 1_700_000_000_200,
        bytes: 30,
    }
}

#[test]
fn every_partition_log_entry_still_decodes() {
    let producer = ProducerSequence { producer_id: 9, producer_epoch: 2, base_sequence: 100 };
    let commands = vec![
        ("append", PartitionCommand::Append { records: records() }),
        ("append_idempotent", PartitionCommand::AppendIdempotent { records: records(), producer }),
        ("tick", PartitionCommand::Tick),
        ("delete_records", PartitionCommand::DeleteRecords { before_offset: 500 }),
        (
            "configure",
            PartitionCommand::Configure {
                retention: RetentionPolicy { max_age_ms: Some(60_000), max_bytes: Some(16 << 20) },
            },
        ),
    ];
    for (index, (name, command)) in (1u64..).zip(commands) {
        let entry: <PartitionConfig as RaftTypeConfig>::Entry = Entry {
            log_id: log_id::<PartitionConfig>(4, 2, index),
            payload: EntryPayload::Normal(PartitionEntry { now_ms: 1_700_000_000_000 + index as i64, command }),
        };
        golden::check_with(
            &dir(),
            &format!("partition_entry_{name}.v1"),
            &entry,
            encode_entry::<PartitionConfig>,
            decode_entry::<PartitionConfig>,
        );
    }
}

#[test]
fn the_partition_state_still_decodes() {
    golden::check(&dir(), "partition_index_entry.v1", &index_entry());
    let meta = LogMeta {
        watermarks: PartitionWatermarks { log_start: 10, high_watermark: 12 },
        retained_bytes: 30,
        oldest: Some((10, index_entry())),
        floor: 42,
        now_ms: 1_700_000_000_200,
        retention: RetentionPolicy { max_age_ms: Some(604_800_000), max_bytes: None },
    };
    golden::check(&dir(), "partition_log_meta.v1", &meta);
    golden::check(&dir(), "partition_producer_state.v1", &producer_state());
    golden::check(&dir(), "partition_producers_meta.v1", &ProducersMeta { evicted_through: 77 });
}

fn producer_state() -> ProducerState {
    let mut table = crate::producers::ProducerTable::default();
    let producer = ProducerSequence { producer_id: 9, producer_epoch: 2, base_sequence: 0 };
    table.record_append(&producer, 3, 100, 7);
    table.record_append(&ProducerSequence { base_sequence: 3, ..producer }, 1, 103, 8);
    table.get(9).cloned().expect("recorded")
}

#[test]
fn the_snapshot_sections_still_decode() {
    let run = BatchRun {
        batches: vec![SnapshotBatch { base_offset: 10, entry: index_entry(), raw_entry: vec![1, 1, 0, 42, 7] }],
    };
    golden::check(&dir(), "partition_snapshot_batch_run.v1", &run);
    golden::check(
        &dir(),
        "partition_snapshot_producer_run.v1",
        &ProducerRun { producers: vec![(9, producer_state())] },
    );
}

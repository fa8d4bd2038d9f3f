//! Golden files of what the metadata group stores: its log entries (every command) and its
//! snapshot (the catalogue). A change that makes stored metadata unreadable fails here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flotilla_raft::golden;
use flotilla_raft::openraft::testing::log_id;
use flotilla_raft::openraft::{Entry, EntryPayload, RaftTypeConfig};
use flotilla_raft::{decode_entry, encode_entry};
use flotilla_types::{GroupId, Limit, TopicConfig};

use crate::state_machine::CatalogueSnapshot;
use crate::{LeaveReason, MetaCommand, MetaConfig, MetaResponse, MetadataState, RequestId, RequestLog};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// One of each command, with every field set to something other than its default.
fn commands() -> Vec<(&'static str, MetaCommand)> {
    let config = TopicConfig {
        retention_ms: Some(Limit::AtMost(60_000)),
        retention_bytes: Some(Limit::Unlimited),
        max_message_bytes: Some(1 << 20),
    };
    vec![
        (
            "register_node",
            MetaCommand::RegisterNode { id: 2, peer_address: "n2:7201".into(), client_address: "n2:7101".into() },
        ),
        (
            "create_topic",
            MetaCommand::CreateTopic {
                name: "orders".into(),
                partitions: 3,
                replication_factor: 3,
                created_at_ms: 1_700_000_000_000,
                config,
            },
        ),
        ("delete_topic", MetaCommand::DeleteTopic { name: "old".into() }),
        ("report_leaders", MetaCommand::ReportLeaders { reports: vec![(GroupId((1 << 20) | 2), 3, 7)] }),
        ("allocate_producer_id", MetaCommand::AllocateProducerId),
        ("move_replica", MetaCommand::MoveReplica { topic: "orders".into(), partition: 1, from: 2, to: 4 }),
        (
            "join_group",
            MetaCommand::JoinGroup {
                group: "billing".into(),
                client_id: "c1".into(),
                topics: vec!["orders".into()],
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 60_000,
            },
        ),
        (
            "leave_group",
            MetaCommand::LeaveGroup { group: "billing".into(), member_id: 4, reason: LeaveReason::SessionExpired },
        ),
        (
            "release_partitions",
            MetaCommand::ReleasePartitions {
                group: "billing".into(),
                member_id: 4,
                still_owned: vec![("orders".into(), 0)],
            },
        ),
        (
            "commit_offsets",
            MetaCommand::CommitOffsets {
                group: "billing".into(),
                member_id: 4,
                member_epoch: 9,
                offsets: vec![(("orders".into(), 1), 77)],
                committed_at_ms: 5,
            },
        ),
        (
            "reset_offsets",
            MetaCommand::ResetOffsets { group: "billing".into(), offsets: vec![(("orders".into(), 2), 0)], at_ms: 6 },
        ),
        (
            "alter_topic_config",
            MetaCommand::AlterTopicConfig {
                name: "orders".into(),
                set: BTreeMap::from([("retention.ms".into(), "1000".into())]),
                unset: vec!["max.message.bytes".into()],
                batch_bytes_max: 8 << 20,
            },
        ),
        (
            "deduplicated",
            MetaCommand::Deduplicated {
                request: RequestId { node: 3, incarnation: 0xabcd, sequence: 12 },
                command: Box::new(MetaCommand::DeleteTopic { name: "old".into() }),
            },
        ),
        ("delete_group", MetaCommand::DeleteGroup { group: "gone".into() }),
    ]
}

#[test]
fn every_metadata_log_entry_still_decodes() {
    for (index, (name, command)) in (1u64..).zip(commands()) {
        let entry: <MetaConfig as RaftTypeConfig>::Entry =
            Entry { log_id: log_id::<MetaConfig>(3, 1, index), payload: EntryPayload::Normal(command) };
        golden::check_with(
            &dir(),
            &format!("metadata_entry_{name}.v1"),
            &entry,
            encode_entry::<MetaConfig>,
            decode_entry::<MetaConfig>,
        );
    }
}

#[test]
fn the_catalogue_snapshot_still_decodes() {
    let mut state = MetadataState::default();
    for id in 1..=4 {
        state.apply(MetaCommand::RegisterNode {
            id,
            peer_address: format!("n{id}:7201"),
            client_address: format!("n{id}:7101"),
        });
    }
    for (_, command) in commands() {
        state.apply(command);
    }
    state.apply(MetaCommand::JoinGroup {
        group: "audit".into(),
        client_id: "c2".into(),
        topics: vec!["orders".into()],
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 60_000,
    });
    assert!(
        !state.topics.is_empty() && !state.groups.is_empty() && state.last_producer_id > 0,
        "a catalogue with every kind of state"
    );
    golden::check_older(
        &dir(),
        "metadata_catalogue.v1",
        &CatalogueSnapshot { state: state.clone(), requests: RequestLog::default() },
    );
    let mut requests = RequestLog::default();
    requests.remember(RequestId { node: 2, incarnation: 0xfeed, sequence: 9 }, MetaResponse::Done.into());
    golden::check(&dir(), "metadata_catalogue.v2", &CatalogueSnapshot { state, requests });
}

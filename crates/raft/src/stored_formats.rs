//! Golden files of what the Raft glue stores for every group: votes, committed and purged log
//! ids, the log entry envelope, the applied position and snapshot metadata. A change that
//! makes stored Raft state unreadable fails here.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

use openraft::alias::{LogIdOf, SnapshotMetaOf, StoredMembershipOf, VoteOf};
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload, Membership, RaftTypeConfig};

use crate::state_machine::Applied;
use crate::storage_suite::{Put, TestConfig};
use crate::{
    RAFT_STATE_VERSION, SM_STATE_VERSION, decode_entry, decode_with_version, encode_entry, encode_with_version, golden,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_state<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    name: &str,
    format: &'static str,
    version: u8,
    value: &T,
) {
    golden::check_with(
        &dir(),
        name,
        value,
        |v| encode_with_version(version, v),
        |b: &[u8]| -> io::Result<T> { decode_with_version(format, version, b) },
    );
}

fn membership() -> StoredMembershipOf<TestConfig> {
    let voters: BTreeSet<u64> = [1, 2, 3].into_iter().collect();
    StoredMembershipOf::<TestConfig>::new(
        Some(log_id::<TestConfig>(1, 1, 0)),
        Membership::new_with_defaults(vec![voters], [4]),
    )
}

#[test]
fn raft_state_still_decodes() {
    let vote = VoteOf::<TestConfig>::new_committed(5, 2);
    check_state("raft_vote.v1", "Raft vote", RAFT_STATE_VERSION, &vote);
    let committed: Option<LogIdOf<TestConfig>> = Some(log_id::<TestConfig>(5, 2, 77));
    check_state("raft_committed.v1", "Raft committed log id", RAFT_STATE_VERSION, &committed);
    let purged: LogIdOf<TestConfig> = log_id::<TestConfig>(4, 1, 40);
    check_state("raft_purged.v1", "Raft purged log id", RAFT_STATE_VERSION, &purged);
}

#[test]
fn the_log_entry_envelope_still_decodes() {
    let entries: Vec<(&str, <TestConfig as RaftTypeConfig>::Entry)> = vec![
        ("blank", Entry { log_id: log_id::<TestConfig>(2, 1, 5), payload: EntryPayload::Blank }),
        ("normal", Entry { log_id: log_id::<TestConfig>(2, 1, 6), payload: EntryPayload::Normal(Put(99)) }),
        (
            "membership",
            Entry {
                log_id: log_id::<TestConfig>(2, 1, 7),
                payload: EntryPayload::Membership(membership().membership().clone()),
            },
        ),
    ];
    for (name, entry) in entries {
        golden::check_with(
            &dir(),
            &format!("raft_entry_{name}.v1"),
            &entry,
            encode_entry::<TestConfig>,
            decode_entry::<TestConfig>,
        );
    }
}

#[test]
fn the_applied_position_and_snapshot_metadata_still_decode() {
    let applied = Applied { last_applied: Some(log_id::<TestConfig>(3, 2, 90)), membership: membership() };
    check_state("sm_applied.v1", "applied position", SM_STATE_VERSION, &applied);
    let meta = SnapshotMetaOf::<TestConfig> {
        last_log_id: Some(log_id::<TestConfig>(3, 2, 90)),
        last_membership: membership(),
    };
    check_state("sm_snapshot_meta.v1", "snapshot metadata", SM_STATE_VERSION, &meta);
}

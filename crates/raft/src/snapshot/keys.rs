//! The keys this crate keeps in `Space::StateMachine` for every group, next to the
//! application's own. They all start with `~`; an application's keys sort below it
//! ([`APP_KEYS_END`]), so "everything the application stores" is one key range.

use std::ops::Range;

use flotilla_storage::group_key;
use flotilla_types::GroupId;

/// Applications' keys in `Space::StateMachine` must sort below this suffix (start with a byte
/// below `~`): the range `[group, group ++ "~")` is the application's whole state, which a
/// snapshot install clears before restoring.
pub const APP_KEYS_END: &[u8] = b"~";

/// The applied position (incremental persistence).
pub(crate) const APPLIED: &[u8] = b"~applied";
/// Metadata of the stored snapshot (snapshot-only persistence).
pub(crate) const SNAPSHOT_META: &[u8] = b"~snapshot-meta";
/// Chunks of the stored snapshot: `~snapshot/` ++ seq (BE).
pub(crate) const SNAPSHOT_CHUNK: &[u8] = b"~snapshot/";
/// The transfer being received: its id, the sender's header and the chunks so far.
pub(crate) const STAGE_META: &[u8] = b"~stage-meta";
/// Chunks of the snapshot being received: `~stage/` ++ seq (BE).
pub(crate) const STAGE_CHUNK: &[u8] = b"~stage/";
/// Present while a received snapshot is being adopted: the group's old state is gone and the
/// staged chunks left are still to be restored (resumed after a crash).
pub(crate) const ADOPTING: &[u8] = b"~adopting";

/// `group ++ name`.
pub(crate) fn key(group: GroupId, name: &[u8]) -> Vec<u8> {
    group_key(group.0, name)
}

/// `group ++ prefix ++ seq`.
pub(crate) fn chunk_key(group: GroupId, prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut suffix = prefix.to_vec();
    suffix.extend_from_slice(&seq.to_be_bytes());
    group_key(group.0, &suffix)
}

/// Every `group ++ prefix ++ seq` key.
pub(crate) fn chunk_range(group: GroupId, prefix: &[u8]) -> Range<Vec<u8>> {
    chunk_key(group, prefix, 0)..chunk_key(group, prefix, u64::MAX)
}

/// The application's keys of `group`.
pub(crate) fn app_range(group: GroupId) -> Range<Vec<u8>> {
    group_key(group.0, b"")..group_key(group.0, APP_KEYS_END)
}

//! `LogLayout`: the one owner of where and how a group's Raft log and Raft state are stored.
//! The log store, the state-machine adapter (which restores snapshots into the log) and the
//! partition reader (which serves records from it) all go through here.
//!
//! - `Space::RaftLog`: `group ++ index (u64 BE)` → a log entry, encoded as
//!   `[ENTRY_ENVELOPE_VERSION, command format version] ++ postcard(entry)`.
//! - `Space::RaftState`: `group ++ "vote" | "committed" | "purged"` → versioned openraft
//!   values.

use std::io;
use std::ops::Range;

use flotilla_storage::{Direction, EngineView, Space, WriteBatch, group_key, group_range};
use flotilla_types::GroupId;
use openraft::alias::{LogIdOf, VoteOf};
use openraft::entry::RaftEntry;

use crate::GroupConfig;
use crate::codec::{decode_with_version, encode_with_version, unreadable_version};

/// Version of the entry envelope: openraft's `Entry` (log id, payload kind) as we encode it.
/// The application's command inside has a version of its own ([`GroupConfig::COMMAND_VERSION`]).
pub const ENTRY_ENVELOPE_VERSION: u8 = 1;
/// Version of the stored vote, committed and purged log ids.
pub const RAFT_STATE_VERSION: u8 = 1;

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"purged";

/// Where one group's log lives.
#[derive(Debug, Clone, Copy)]
pub struct LogLayout {
    group: GroupId,
}

impl LogLayout {
    /// The layout of `group`'s log.
    pub fn new(group: GroupId) -> Self {
        LogLayout { group }
    }

    /// The group.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Key of the entry at `index`.
    pub fn entry_key(&self, index: u64) -> Vec<u8> {
        group_key(self.group.0, &index.to_be_bytes())
    }

    /// Keys of the entries at indexes `[lo, hi)`.
    pub fn entry_range(&self, lo: u64, hi: u64) -> Range<Vec<u8>> {
        group_range(self.group.0, b"", lo, hi)
    }

    /// The log index of an entry key of this group.
    pub fn index_of(&self, key: &[u8]) -> Result<u64, io::Error> {
        key.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("group {} has a log key of {} bytes", self.group, key.len()),
            )
        })
    }

    /// The stored bytes of the entry at `index`, if present.
    pub fn read_raw(&self, store: &dyn EngineView, index: u64) -> Result<Option<Vec<u8>>, io::Error> {
        Ok(store.get(Space::RaftLog, &self.entry_key(index))?)
    }

    /// The entry at `index`, if present.
    pub fn read_entry<C: GroupConfig>(
        &self,
        store: &dyn EngineView,
        index: u64,
    ) -> Result<Option<C::Entry>, io::Error> {
        match self.read_raw(store, index)? {
            Some(bytes) => Ok(Some(decode_entry::<C>(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` stored entries with indexes in `[lo, hi)`, in order, as `(index, bytes)`.
    pub fn scan_raw(
        &self,
        store: &dyn EngineView,
        lo: u64,
        hi: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, io::Error> {
        let range = self.entry_range(lo, hi);
        let rows = store.scan(Space::RaftLog, &range.start[..]..&range.end[..], Direction::Forward, limit)?;
        rows.into_iter().map(|(key, value)| Ok((self.index_of(&key)?, value))).collect()
    }

    /// The stored entry with the highest index, if any.
    pub fn last_raw(&self, store: &dyn EngineView) -> Result<Option<(u64, Vec<u8>)>, io::Error> {
        let range = self.entry_range(0, u64::MAX);
        let last = store.scan(Space::RaftLog, &range.start[..]..&range.end[..], Direction::Reverse, 1)?;
        match last.into_iter().next() {
            Some((key, value)) => Ok(Some((self.index_of(&key)?, value))),
            None => Ok(None),
        }
    }

    /// Stores already-encoded entry bytes at `index` (a snapshot restores retained records
    /// this way, byte for byte as the leader stored them).
    pub fn put_raw(&self, batch: &mut WriteBatch, index: u64, bytes: Vec<u8>) {
        batch.put(Space::RaftLog, self.entry_key(index), bytes);
    }

    /// Stores `entry`.
    pub fn put_entry<C: GroupConfig>(&self, batch: &mut WriteBatch, entry: &C::Entry) {
        batch.put(Space::RaftLog, self.entry_key(entry.index()), encode_entry::<C>(entry));
    }

    /// Deletes the entries at indexes `[lo, hi)`.
    pub fn delete_entries(&self, batch: &mut WriteBatch, lo: u64, hi: u64) {
        let range = self.entry_range(lo, hi);
        batch.delete_range(Space::RaftLog, range.start, range.end);
    }

    fn state_key(&self, name: &[u8]) -> Vec<u8> {
        group_key(self.group.0, name)
    }

    fn read_state<T: serde::de::DeserializeOwned>(
        &self,
        store: &dyn EngineView,
        name: &[u8],
        format: &str,
    ) -> Result<Option<T>, io::Error> {
        match store.get(Space::RaftState, &self.state_key(name))? {
            Some(bytes) => Ok(Some(decode_with_version(format, RAFT_STATE_VERSION, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The saved vote.
    pub fn read_vote<C: GroupConfig>(&self, store: &dyn EngineView) -> Result<Option<VoteOf<C>>, io::Error> {
        self.read_state(store, VOTE_KEY, "Raft vote")
    }

    /// Saves `vote`.
    pub fn put_vote<C: GroupConfig>(&self, batch: &mut WriteBatch, vote: &VoteOf<C>) {
        batch.put(Space::RaftState, self.state_key(VOTE_KEY), encode_with_version(RAFT_STATE_VERSION, vote));
    }

    /// The saved committed log id.
    pub fn read_committed<C: GroupConfig>(&self, store: &dyn EngineView) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.read_state::<Option<LogIdOf<C>>>(store, COMMITTED_KEY, "Raft committed log id")?.flatten())
    }

    /// Saves the committed log id.
    pub fn put_committed<C: GroupConfig>(&self, batch: &mut WriteBatch, committed: &Option<LogIdOf<C>>) {
        batch.put(Space::RaftState, self.state_key(COMMITTED_KEY), encode_with_version(RAFT_STATE_VERSION, committed));
    }

    /// The last purged log id: entries at or below it are no longer part of the Raft log
    /// (though a partition keeps the ones holding retained records).
    pub fn read_purged<C: GroupConfig>(&self, store: &dyn EngineView) -> Result<Option<LogIdOf<C>>, io::Error> {
        self.read_state(store, PURGED_KEY, "Raft purged log id")
    }

    /// Saves the last purged log id.
    pub fn put_purged<C: GroupConfig>(&self, batch: &mut WriteBatch, purged: &LogIdOf<C>) {
        batch.put(Space::RaftState, self.state_key(PURGED_KEY), encode_with_version(RAFT_STATE_VERSION, purged));
    }
}

/// Encodes a log entry for storage.
pub fn encode_entry<C: GroupConfig>(entry: &C::Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(ENTRY_ENVELOPE_VERSION);
    out.push(C::COMMAND_VERSION);
    match postcard::to_io(entry, &mut out) {
        Ok(_) => out,
        Err(err) => panic!("encoding a log entry of {} must not fail: {err}", C::COMMAND_FORMAT),
    }
}

/// Decodes a stored log entry, refusing envelope or command versions this build cannot read.
pub fn decode_entry<C: GroupConfig>(bytes: &[u8]) -> Result<C::Entry, io::Error> {
    let [envelope, command, body @ ..] = bytes else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("stored log entry of {} has {} bytes, less than its header", C::COMMAND_FORMAT, bytes.len()),
        ));
    };
    if *envelope != ENTRY_ENVELOPE_VERSION {
        return Err(unreadable_version("Raft log entry envelope", *envelope, ENTRY_ENVELOPE_VERSION));
    }
    if *command != C::COMMAND_VERSION {
        return Err(unreadable_version(C::COMMAND_FORMAT, *command, C::COMMAND_VERSION));
    }
    postcard::from_bytes(body).map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("decoding a stored log entry of {} ({} bytes): {err}", C::COMMAND_FORMAT, bytes.len()),
        )
    })
}

//! `LogStore`: one group's Raft log and vote, stored in the node's shared engine under the
//! group's key prefix. Appends are made durable by the node's group-commit syncer, so one
//! fsync completes the appends of every group that wrote since the last one.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use flotilla_storage::{Direction, Engine, Space, SyncHandle, WriteBatch, group_key, group_range};
use flotilla_types::GroupId;
use openraft::alias::{LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::{GroupConfig, decode, encode};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const PURGED_KEY: &[u8] = b"purged";

/// What `purge` does to entries openraft no longer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeMode {
    /// Delete them: the state machine's snapshot holds everything they held.
    Delete,
    /// Only record the purge point and keep the entries: the partition log doubles as the
    /// record store, so records stay until retention removes them, whatever openraft has
    /// compacted (see the snapshot trap in DESIGN.md §3).
    KeepEntries,
}

/// The Raft log of one group.
pub struct LogStore<C: GroupConfig> {
    group: GroupId,
    engine: Arc<dyn Engine>,
    syncer: SyncHandle,
    purge_mode: PurgeMode,
    _config: PhantomData<C>,
}

impl<C: GroupConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            group: self.group,
            engine: Arc::clone(&self.engine),
            syncer: self.syncer.clone(),
            purge_mode: self.purge_mode,
            _config: PhantomData,
        }
    }
}

impl<C: GroupConfig> LogStore<C> {
    /// The log of `group` in `engine`.
    pub fn new(group: GroupId, engine: Arc<dyn Engine>, syncer: SyncHandle, purge_mode: PurgeMode) -> Self {
        LogStore { group, engine, syncer, purge_mode, _config: PhantomData }
    }

    fn state_key(&self, name: &[u8]) -> Vec<u8> {
        group_key(self.group.0, name)
    }

    fn entry_key(&self, index: u64) -> Vec<u8> {
        group_key(self.group.0, &index.to_be_bytes())
    }

    fn read_state<T: serde::de::DeserializeOwned>(&self, name: &[u8]) -> Result<Option<T>, std::io::Error> {
        match self.engine.get(Space::RaftState, &self.state_key(name))? {
            Some(bytes) => Ok(Some(decode(&bytes)?)),
            None => Ok(None),
        }
    }

    fn last_entry_log_id(&self) -> Result<Option<LogIdOf<C>>, std::io::Error> {
        let range = group_range(self.group.0, b"", 0, u64::MAX);
        let last = self.engine.scan(Space::RaftLog, &range.start[..]..&range.end[..], Direction::Reverse, 1)?;
        match last.first() {
            Some((_, bytes)) => Ok(Some(decode::<C::Entry>(bytes)?.log_id())),
            None => Ok(None),
        }
    }
}

impl<C: GroupConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, std::io::Error> {
        let lo = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        // With KeepEntries, purged entries are still stored (as records) but no longer part
        // of the Raft log openraft sees. With Delete they are gone, so no lookup is needed.
        let lo = match self.purge_mode {
            PurgeMode::KeepEntries => match self.read_state::<LogIdOf<C>>(PURGED_KEY)? {
                Some(purged) => lo.max(purged.index() + 1),
                None => lo,
            },
            PurgeMode::Delete => lo,
        };
        if lo >= hi {
            return Ok(Vec::new());
        }
        let keys = group_range(self.group.0, b"", lo, hi);
        let limit = usize::try_from(hi - lo).unwrap_or(usize::MAX);
        let rows = self.engine.scan(Space::RaftLog, &keys.start[..]..&keys.end[..], Direction::Forward, limit)?;
        let mut entries = Vec::with_capacity(rows.len());
        for (_, bytes) in rows {
            let entry: C::Entry = decode(&bytes)?;
            // The range may start below the first retained entry, but what is returned must
            // be consecutive: a hole would make openraft replicate a log it never wrote.
            if let Some(previous) = entries.last() {
                let previous: &C::Entry = previous;
                assert_eq!(
                    entry.index(),
                    previous.index() + 1,
                    "group {} log has a hole after index {} reading [{lo}, {hi})",
                    self.group,
                    previous.index()
                );
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, std::io::Error> {
        self.read_state(VOTE_KEY)
    }
}

impl<C: GroupConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, std::io::Error> {
        let last_purged_log_id: Option<LogIdOf<C>> = self.read_state(PURGED_KEY)?;
        let last_entry = self.last_entry_log_id()?;
        // With KeepEntries the newest entry may sit below the purge point (a snapshot was
        // installed past it); openraft then expects the purge point as the last log id.
        let last_log_id = match (last_entry, &last_purged_log_id) {
            (Some(entry), Some(purged)) if entry.index() > purged.index() => Some(entry),
            (Some(_), Some(purged)) => Some(purged.clone()),
            (entry, purged) => entry.or_else(|| purged.clone()),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), std::io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(Space::RaftState, self.state_key(VOTE_KEY), encode(vote));
        self.engine.write(batch)?;
        // A vote must survive a crash before it is acted upon, or a node could vote twice
        // in one term.
        self.syncer.sync().await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), std::io::Error> {
        // Not synced: losing it only means re-learning the commit index from the leader.
        let mut batch = WriteBatch::new();
        batch.put(Space::RaftState, self.state_key(COMMITTED_KEY), encode(&committed));
        self.engine.write(batch)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, std::io::Error> {
        Ok(self.read_state::<Option<LogIdOf<C>>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        for entry in entries {
            batch.put(Space::RaftLog, self.entry_key(entry.index()), encode(&entry));
        }
        self.engine.write(batch)?;
        // The entries are readable now; the callback fires once the syncer's next fsync
        // covers them, which is when openraft may count this node towards a quorum.
        self.syncer
            .after_sync(Box::new(move |result| callback.io_completed(result.map_err(std::io::Error::from))))
            .await;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), std::io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let range = group_range(self.group.0, b"", from, u64::MAX);
        let mut batch = WriteBatch::new();
        batch.delete_range(Space::RaftLog, range.start, range.end);
        self.engine.write(batch)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), std::io::Error> {
        let mut batch = WriteBatch::new();
        batch.put(Space::RaftState, self.state_key(PURGED_KEY), encode(&log_id));
        if self.purge_mode == PurgeMode::Delete {
            let range = group_range(self.group.0, b"", 0, log_id.index() + 1);
            batch.delete_range(Space::RaftLog, range.start, range.end);
        }
        self.engine.write(batch)?;
        Ok(())
    }
}

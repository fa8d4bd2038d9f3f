//! `LogStore`: one group's Raft log and vote, stored in the node's shared engine under the
//! group's key prefix ([`LogLayout`]). Appends are made durable by the node's group-commit
//! syncer, so one fsync completes the appends of every group that wrote since the last one.
//! Reads for replication and apply come in byte-bounded pieces, so a follower any distance
//! behind catches up without a message or a batch ever holding more than about
//! [`LogStore`]'s read budget.

use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_storage::{Engine, Reclaimer, Space, SyncHandle, WriteBatch};
use flotilla_types::GroupId;
use futures::Stream;
use openraft::alias::{LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::{GroupConfig, LogLayout, decode_entry};

/// What `entries_stream` yields (openraft's `EntriesStreamResult`, which it does not export).
type EntriesStreamResult<C> = Result<<C as openraft::RaftTypeConfig>::Entry, std::io::Error>;

/// Entries read per storage scan while filling a byte budget, at most. The first scan of a
/// read takes one entry, later ones as many as the entries seen so far suggest will fit, so a
/// read of 8 MiB entries never scans a hundred of them at once.
const SCAN_ENTRIES_MAX: usize = 256;

/// The first log index that holds a record a partition still retains: entries from there on
/// are records and outlive openraft's purge, entries below it go with the purge. Set by the
/// state machine after each apply batch is written (so the purge that deletes below it never
/// precedes, on disk, the trim that allowed it); read by [`LogStore::purge`].
#[derive(Debug, Clone, Default)]
pub struct RetainFloor(Arc<AtomicU64>);

impl RetainFloor {
    /// A floor starting at `index`.
    pub fn new(index: u64) -> Self {
        RetainFloor(Arc::new(AtomicU64::new(index)))
    }

    /// The floor now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Raises the floor to `index` (it never goes down).
    pub fn raise(&self, index: u64) {
        self.0.fetch_max(index, Ordering::AcqRel);
    }

    /// Sets the floor to `index`, up or down (a restored snapshot replaces the state).
    pub fn set(&self, index: u64) {
        self.0.store(index, Ordering::Release);
    }
}

/// What `purge` does to entries openraft no longer needs.
#[derive(Debug, Clone)]
pub enum PurgeMode {
    /// Delete them: the state machine's snapshot holds everything they held.
    Delete,
    /// Keep the ones at or above the floor, delete the rest: the partition log doubles as the
    /// record store, so records stay until retention removes them, whatever openraft has
    /// compacted (see the snapshot trap in DESIGN.md §3).
    KeepRecords(RetainFloor),
}

/// The Raft log of one group.
pub struct LogStore<C: GroupConfig> {
    layout: LogLayout,
    engine: Arc<dyn Engine>,
    syncer: SyncHandle,
    purge_mode: PurgeMode,
    read_budget_bytes: usize,
    /// Told of every purged range, so the engine gives its space back.
    reclaimer: Arc<Reclaimer>,
    _config: PhantomData<C>,
}

impl<C: GroupConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            layout: self.layout,
            engine: Arc::clone(&self.engine),
            syncer: self.syncer.clone(),
            purge_mode: self.purge_mode.clone(),
            read_budget_bytes: self.read_budget_bytes,
            reclaimer: Arc::clone(&self.reclaimer),
            _config: PhantomData,
        }
    }
}

impl<C: GroupConfig> LogStore<C> {
    /// The log of `group` in `engine`. Replication and apply read it in pieces of about
    /// `read_budget_bytes` (at least one entry each).
    pub fn new(
        group: GroupId,
        engine: Arc<dyn Engine>,
        syncer: SyncHandle,
        purge_mode: PurgeMode,
        read_budget_bytes: usize,
        reclaimer: Arc<Reclaimer>,
    ) -> Self {
        LogStore {
            layout: LogLayout::new(group),
            engine,
            syncer,
            purge_mode,
            read_budget_bytes: read_budget_bytes.max(1),
            reclaimer,
            _config: PhantomData,
        }
    }

    /// The first index openraft may read: with kept records, entries at or below the purge
    /// point are still stored but no longer part of the log openraft sees.
    fn first_readable(&self, lo: u64) -> Result<u64, std::io::Error> {
        Ok(match self.purge_mode {
            PurgeMode::KeepRecords(_) => match self.layout.read_purged::<C>(self.engine.as_ref())? {
                Some(purged) => lo.max(purged.index() + 1),
                None => lo,
            },
            PurgeMode::Delete => lo,
        })
    }

    /// Entries of `[lo, hi)`, consecutive from the first one present, stopping once they hold
    /// `budget` bytes (but never before the first entry).
    fn read_entries(&self, lo: u64, hi: u64, budget: usize) -> Result<Vec<C::Entry>, std::io::Error> {
        let lo = self.first_readable(lo)?;
        let mut entries: Vec<C::Entry> = Vec::new();
        let mut bytes = 0usize;
        let mut next = lo;
        while next < hi && (entries.is_empty() || bytes < budget) {
            let want = if entries.is_empty() {
                1
            } else {
                // As many as the average entry so far says still fit, at least one.
                let average = (bytes / entries.len()).max(1);
                ((budget - bytes) / average).clamp(1, SCAN_ENTRIES_MAX)
            };
            let rows = self.layout.scan_raw(self.engine.as_ref(), next, hi, want)?;
            if rows.is_empty() {
                break;
            }
            for (index, raw) in rows {
                // The range may start below the first retained entry, but what is returned must
                // be consecutive: a hole would make openraft replicate a log it never wrote.
                if let Some(previous) = entries.last() {
                    let previous: &C::Entry = previous;
                    assert_eq!(
                        index,
                        previous.index() + 1,
                        "group {} log has a hole after index {} reading [{lo}, {hi})",
                        self.layout.group(),
                        previous.index()
                    );
                }
                bytes += raw.len();
                entries.push(decode_entry::<C>(&raw)?);
                next = index + 1;
                if bytes >= budget {
                    break;
                }
            }
        }
        Ok(entries)
    }
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
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
    (lo, hi)
}

impl<C: GroupConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, std::io::Error> {
        let (lo, hi) = bounds(&range);
        self.read_entries(lo, hi, usize::MAX)
    }

    /// At most about the read budget: an append carries 1 MiB, not `max_payload_entries`
    /// entries of up to 8 MiB each, which could exceed the transport's message limit and be
    /// refused forever (review-correctness finding 1).
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<C::Entry>, std::io::Error> {
        self.read_entries(start, end, self.read_budget_bytes)
    }

    /// Streams `range` in pieces of about the read budget, so applying a long committed range
    /// (a follower that caught up, a restart) never holds all of it in memory.
    async fn entries_stream<RB>(&mut self, range: RB) -> impl Stream<Item = EntriesStreamResult<C>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        use futures::StreamExt;
        let (lo, hi) = bounds(&range);
        let store = self.clone();
        futures::stream::unfold((store, lo, false), move |(store, next, done)| async move {
            if done || next >= hi {
                return None;
            }
            match store.read_entries(next, hi, store.read_budget_bytes) {
                Ok(entries) if entries.is_empty() => None,
                Ok(entries) => {
                    let after = entries.last().map_or(hi, |e: &C::Entry| e.index() + 1);
                    let items: Vec<EntriesStreamResult<C>> = entries.into_iter().map(Ok).collect();
                    Some((futures::stream::iter(items), (store, after, false)))
                }
                Err(err) => Some((futures::stream::iter(vec![Err(err)]), (store, hi, true))),
            }
        })
        .flatten()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, std::io::Error> {
        self.layout.read_vote::<C>(self.engine.as_ref())
    }
}

impl<C: GroupConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, std::io::Error> {
        let last_purged_log_id: Option<LogIdOf<C>> = self.layout.read_purged::<C>(self.engine.as_ref())?;
        let last_entry = match self.layout.last_raw(self.engine.as_ref())? {
            Some((_, raw)) => Some(decode_entry::<C>(&raw)?.log_id()),
            None => None,
        };
        // With kept records the newest entry may sit below the purge point (a snapshot was
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
        self.layout.put_vote::<C>(&mut batch, vote);
        crate::blocking::write(&self.engine, batch)?;
        // A vote must survive a crash before it is acted upon, or a node could vote twice
        // in one term.
        self.syncer.sync().await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), std::io::Error> {
        // Not synced: losing it only means re-learning the commit index from the leader.
        let mut batch = WriteBatch::new();
        self.layout.put_committed::<C>(&mut batch, &committed);
        crate::blocking::write(&self.engine, batch)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, std::io::Error> {
        self.layout.read_committed::<C>(self.engine.as_ref())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), std::io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::new();
        for entry in entries {
            self.layout.put_entry::<C>(&mut batch, &entry);
        }
        crate::blocking::write(&self.engine, batch)?;
        // The entries are readable now; the callback fires once the syncer's next fsync
        // covers them, which is when openraft may count this node towards a quorum.
        self.syncer
            .after_sync(Box::new(move |result| callback.io_completed(result.map_err(std::io::Error::from))))
            .await;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), std::io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let mut batch = WriteBatch::new();
        self.layout.delete_entries(&mut batch, from, u64::MAX);
        crate::blocking::write(&self.engine, batch)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), std::io::Error> {
        let mut batch = WriteBatch::new();
        self.layout.put_purged::<C>(&mut batch, &log_id);
        let end = match &self.purge_mode {
            PurgeMode::Delete => log_id.index() + 1,
            // Records at or above the floor stay; everything below it (trimmed records, and
            // blank, membership and refused entries) goes.
            PurgeMode::KeepRecords(floor) => (log_id.index() + 1).min(floor.get()),
        };
        // Always from 0: a range delete of what is already gone costs nothing, and it sweeps
        // up whatever an earlier purge had to leave for a floor that has risen since.
        self.layout.delete_entries(&mut batch, 0, end);
        crate::blocking::write(&self.engine, batch)?;
        let range = self.layout.entry_range(0, end);
        self.reclaimer.deleted(Space::RaftLog, range.start, range.end);
        Ok(())
    }
}

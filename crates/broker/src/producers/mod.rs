//! The producers part: the idempotent producers' table, stored one key per producer, and its
//! snapshot section.

mod table;

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;

use flotilla_raft::{Versioned, decode_versioned, encode_versioned};
use flotilla_storage::{Direction, EngineView, Space, WriteBatch};
use flotilla_types::GroupId;
use serde::{Deserialize, Serialize};

pub use table::{BATCHES_PER_PRODUCER, PRODUCERS_PER_PARTITION_MAX, ProducerState};
pub(crate) use table::{ProducerTable, Verdict};

use crate::ProducerSequence;
use crate::keys::{Prefix, Section};
use crate::part::{Frames, Part};

/// Producers per snapshot frame.
const PRODUCERS_PER_FRAME: usize = 1000;

/// A run of producers as a snapshot carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerRun {
    pub producers: Vec<(u64, ProducerState)>,
}

impl Versioned for ProducerRun {
    const FORMAT: &'static str = "partition snapshot producer run";
    const VERSION: u8 = 1;
}

/// The producers part's own state beside the table: stored under its own key and sent as its
/// own snapshot section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducersMeta {
    /// The highest producer id the partition evicted (0: none).
    pub evicted_through: u64,
}

impl Versioned for ProducersMeta {
    const FORMAT: &'static str = "partition producers metadata";
    const VERSION: u8 = 1;
}

/// The idempotent producers of one partition.
pub(crate) struct ProducersPart {
    table: ProducerTable,
    /// Producers changed since the last flush.
    dirty: BTreeSet<u64>,
    /// Producers evicted since the last flush.
    evicted: BTreeSet<u64>,
    /// The eviction floor as last written.
    flushed_floor: u64,
}

impl ProducersPart {
    /// What to do with a batch of `count` records from `producer`.
    pub fn check(&self, producer: &ProducerSequence, count: u32) -> Verdict {
        self.table.check(producer, count)
    }

    /// Remembers that `producer`'s batch got `base_offset`, by the entry at `log_index`.
    pub fn record_append(&mut self, producer: &ProducerSequence, count: u32, base_offset: u64, log_index: u64) {
        for gone in self.table.record_append(producer, count, base_offset, log_index) {
            self.dirty.remove(&gone);
            self.evicted.insert(gone);
        }
        self.evicted.remove(&producer.producer_id);
        self.dirty.insert(producer.producer_id);
    }

    /// Marks `producer_id` used by the entry at `log_index` (a duplicate answered).
    pub fn touch(&mut self, producer_id: u64, log_index: u64) {
        self.table.touch(producer_id, log_index);
        self.dirty.insert(producer_id);
    }

    /// Producers remembered.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// The state of `producer_id`, if remembered.
    #[cfg(test)]
    pub fn get(&self, producer_id: u64) -> Option<&ProducerState> {
        self.table.get(producer_id)
    }
}

impl Part for ProducersPart {
    const SECTIONS: &'static [Section] = &[Section::ProducersMeta, Section::Producers];

    fn load(group: GroupId, store: &dyn EngineView) -> io::Result<Self> {
        let meta = match store.get(Space::StateMachine, &Prefix::ProducersMeta.key(group, &[]))? {
            Some(bytes) => decode_versioned::<ProducersMeta>(&bytes)?,
            None => ProducersMeta::default(),
        };
        let range = Prefix::Producer.range(group);
        let rows = store.scan(Space::StateMachine, &range.start[..]..&range.end[..], Direction::Forward, usize::MAX)?;
        let mut entries = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            entries.push((Prefix::id_of(&key)?, decode_versioned::<ProducerState>(&value)?));
        }
        Ok(ProducersPart {
            table: ProducerTable::from_entries(entries, meta.evicted_through),
            dirty: BTreeSet::new(),
            evicted: BTreeSet::new(),
            flushed_floor: meta.evicted_through,
        })
    }

    fn flush(&mut self, group: GroupId, batch: &mut WriteBatch) {
        let floor = self.table.evicted_through();
        if floor != self.flushed_floor {
            let meta = ProducersMeta { evicted_through: floor };
            batch.put(Space::StateMachine, Prefix::ProducersMeta.key(group, &[]), encode_versioned(&meta));
            self.flushed_floor = floor;
        }
        for id in std::mem::take(&mut self.evicted) {
            batch.delete(Space::StateMachine, Prefix::Producer.id_key(group, id));
        }
        for id in std::mem::take(&mut self.dirty) {
            if let Some(state) = self.table.get(id) {
                batch.put(Space::StateMachine, Prefix::Producer.id_key(group, id), encode_versioned(state));
            }
        }
    }

    fn snapshot_frames(group: GroupId, view: Arc<dyn EngineView>) -> Frames {
        let meta = view
            .get(Space::StateMachine, &Prefix::ProducersMeta.key(group, &[]))
            .map_err(io::Error::from)
            .and_then(|stored| match stored {
                Some(bytes) => decode_versioned::<ProducersMeta>(&bytes),
                None => Ok(ProducersMeta::default()),
            })
            .map(|meta| Section::ProducersMeta.frame(encode_versioned(&meta)));
        let range = Prefix::Producer.range(group);
        let mut cursor = range.start.clone();
        let mut done = false;
        let producers = std::iter::from_fn(move || {
            if done {
                return None;
            }
            let rows = match view.scan(
                Space::StateMachine,
                &cursor[..]..&range.end[..],
                Direction::Forward,
                PRODUCERS_PER_FRAME,
            ) {
                Ok(rows) => rows,
                Err(err) => {
                    done = true;
                    return Some(Err(err.into()));
                }
            };
            let Some((last, _)) = rows.last() else {
                done = true;
                return None;
            };
            cursor = last.clone();
            cursor.push(0);
            let producers: io::Result<Vec<(u64, ProducerState)>> =
                rows.iter().map(|(key, value)| Ok((Prefix::id_of(key)?, decode_versioned(value)?))).collect();
            Some(producers.map(|producers| Section::Producers.frame(encode_versioned(&ProducerRun { producers }))))
        });
        Box::new(std::iter::once(meta).chain(producers))
    }

    fn restore_frame(group: GroupId, section: Section, body: &[u8], batch: &mut WriteBatch) -> io::Result<()> {
        if section == Section::ProducersMeta {
            let meta: ProducersMeta = decode_versioned(body)?;
            batch.put(Space::StateMachine, Prefix::ProducersMeta.key(group, &[]), encode_versioned(&meta));
            return Ok(());
        }
        let run: ProducerRun = decode_versioned(body)?;
        for (id, state) in &run.producers {
            batch.put(Space::StateMachine, Prefix::Producer.id_key(group, *id), encode_versioned(state));
        }
        Ok(())
    }
}

//! `ProducerTable`: what a partition remembers of each idempotent producer (its epoch and its
//! last few batches), and the rule that decides, at apply, whether a batch is appended, answered
//! as a duplicate, or refused.
//!
//! Pure and deterministic: recency is the Raft log index of the command that last used an
//! entry, never a clock, so every replica keeps and evicts exactly the same producers.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{PartitionRejection, ProducerSequence};

/// Batches remembered per producer. One batch in flight per partition (what the SDK sends)
/// needs one; five leave room for clients that pipeline a few, as Kafka does.
pub const BATCHES_PER_PRODUCER: usize = 5;

/// Producers remembered per partition. Beyond it the least recently used producer is
/// forgotten: its next batch is refused with `UNKNOWN_PRODUCER_ID` (never taken for a new
/// producer's first batch, which could append a retried batch twice) and it must start a new
/// session. Without a bound, a client that opens sessions in a loop would grow every
/// partition's memory and snapshot without limit. 10,000 entries take about 1.5 MB.
pub const PRODUCERS_PER_PARTITION_MAX: usize = 10_000;

/// One appended batch of a producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedBatch {
    pub base_sequence: u64,
    pub count: u32,
    pub base_offset: u64,
}

/// What a partition remembers of one producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    /// The highest epoch seen; lower ones are fenced.
    pub epoch: u32,
    /// The last appended batches of `epoch`, oldest first, at most [`BATCHES_PER_PRODUCER`].
    pub batches: Vec<CachedBatch>,
    /// Log index of the last command that appended or answered a batch of this producer;
    /// orders eviction.
    pub last_used: u64,
}

impl flotilla_raft::Versioned for ProducerState {
    const FORMAT: &'static str = "partition producer state";
    const VERSION: u8 = 1;
}

impl ProducerState {
    /// The sequence the next batch of `epoch` must start at.
    fn next_sequence(&self) -> u64 {
        // Appends check that base + count does not overflow, so this cannot either.
        self.batches.last().map_or(0, |b| b.base_sequence + u64::from(b.count))
    }
}

/// What to do with an idempotent batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The next batch of the producer: append it, then [`ProducerTable::record_append`].
    Append,
    /// Appended before at `base_offset`: answer that, append nothing.
    Duplicate { base_offset: u64 },
    /// Refuse it.
    Reject(PartitionRejection),
}

/// The producers of one partition.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProducerTable {
    producers: BTreeMap<u64, ProducerState>,
    /// `(last_used, producer_id)` of every producer: the first is the one to evict.
    by_recency: BTreeSet<(u64, u64)>,
    /// The highest producer id ever evicted (0: none). Producer ids are handed out in
    /// increasing order and never reused, so a producer this table does not know is new to
    /// the partition only if its id is above this; at or below, it may have been evicted.
    evicted_through: u64,
}

impl ProducerTable {
    /// A table holding `entries` (as loaded from storage or a snapshot).
    pub fn from_entries(
        entries: impl IntoIterator<Item = (u64, ProducerState)>,
        evicted_through: u64,
    ) -> ProducerTable {
        let mut table = ProducerTable { evicted_through, ..ProducerTable::default() };
        for (id, state) in entries {
            table.by_recency.insert((state.last_used, id));
            table.producers.insert(id, state);
        }
        table
    }

    /// Every producer, by id.
    #[cfg(test)]
    pub fn entries(&self) -> impl Iterator<Item = (u64, &ProducerState)> {
        self.producers.iter().map(|(id, state)| (*id, state))
    }

    /// The state of `producer_id`, if remembered.
    pub fn get(&self, producer_id: u64) -> Option<&ProducerState> {
        self.producers.get(&producer_id)
    }

    /// Decides what to do with a batch of `count` records (at least 1) from `producer`.
    pub fn check(&self, producer: &ProducerSequence, count: u32) -> Verdict {
        let ProducerSequence { producer_id, producer_epoch: epoch, base_sequence: received } = *producer;
        let expected = match self.producers.get(&producer_id) {
            // Perhaps evicted: its batch may be a retry of one appended before, which this
            // table can no longer recognise. Neither appending it (a duplicate) nor calling it
            // out of order (it may be in order) would be true.
            None if producer_id <= self.evicted_through => {
                return Verdict::Reject(PartitionRejection::UnknownProducerId {
                    producer_id,
                    evicted_through: self.evicted_through,
                });
            }
            // A producer new to this partition starts at 0.
            None => 0,
            Some(state) if epoch < state.epoch => {
                return Verdict::Reject(PartitionRejection::ProducerFenced {
                    producer_id,
                    epoch,
                    current_epoch: state.epoch,
                });
            }
            // A new epoch starts its sequence over.
            Some(state) if epoch > state.epoch => 0,
            Some(state) => {
                if let Some(batch) = state.batches.iter().find(|b| b.base_sequence == received && b.count == count) {
                    return Verdict::Duplicate { base_offset: batch.base_offset };
                }
                state.next_sequence()
            }
        };
        if received != expected || received.checked_add(u64::from(count)).is_none() {
            return Verdict::Reject(PartitionRejection::OutOfOrderSequence { producer_id, epoch, expected, received });
        }
        Verdict::Append
    }

    /// Remembers that `producer`'s batch of `count` records got `base_offset`, by the command
    /// at `log_index`. Returns the producers evicted to stay within
    /// [`PRODUCERS_PER_PARTITION_MAX`] (never `producer` itself).
    pub fn record_append(
        &mut self,
        producer: &ProducerSequence,
        count: u32,
        base_offset: u64,
        log_index: u64,
    ) -> Vec<u64> {
        let id = producer.producer_id;
        let state = self.producers.entry(id).or_insert_with(|| ProducerState {
            epoch: producer.producer_epoch,
            batches: Vec::with_capacity(BATCHES_PER_PRODUCER),
            last_used: log_index,
        });
        if producer.producer_epoch > state.epoch {
            state.epoch = producer.producer_epoch;
            state.batches.clear();
        }
        state.batches.push(CachedBatch { base_sequence: producer.base_sequence, count, base_offset });
        if state.batches.len() > BATCHES_PER_PRODUCER {
            state.batches.remove(0);
        }
        self.touch(id, log_index);
        let mut evicted = Vec::new();
        while self.producers.len() > PRODUCERS_PER_PARTITION_MAX {
            // `id` was used last, so it is never the first to go.
            let (_, oldest) = self.by_recency.pop_first().expect("more producers than the bound, so not empty");
            self.producers.remove(&oldest);
            self.evicted_through = self.evicted_through.max(oldest);
            evicted.push(oldest);
        }
        evicted
    }

    /// Marks `producer_id` as used by the command at `log_index` (a duplicate answered).
    pub fn touch(&mut self, producer_id: u64, log_index: u64) {
        if let Some(state) = self.producers.get_mut(&producer_id) {
            self.by_recency.remove(&(state.last_used, producer_id));
            state.last_used = log_index;
            self.by_recency.insert((log_index, producer_id));
        }
    }

    /// The highest producer id ever evicted (0: none).
    pub fn evicted_through(&self) -> u64 {
        self.evicted_through
    }

    /// Producers remembered.
    pub fn len(&self) -> usize {
        self.producers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: u64, producer_epoch: u32, base_sequence: u64) -> ProducerSequence {
        ProducerSequence { producer_id, producer_epoch, base_sequence }
    }

    #[test]
    fn sequences_run_on_from_the_last_batch_and_duplicates_find_their_offsets() {
        let mut table = ProducerTable::default();
        assert_eq!(table.check(&batch(1, 0, 0), 3), Verdict::Append);
        table.record_append(&batch(1, 0, 0), 3, 100, 1);
        assert_eq!(table.check(&batch(1, 0, 3), 2), Verdict::Append);
        table.record_append(&batch(1, 0, 3), 2, 200, 2);
        assert_eq!(table.check(&batch(1, 0, 0), 3), Verdict::Duplicate { base_offset: 100 });
        assert_eq!(table.check(&batch(1, 0, 3), 2), Verdict::Duplicate { base_offset: 200 });
        // Same start, other length: not the batch that was appended.
        assert!(matches!(
            table.check(&batch(1, 0, 3), 1),
            Verdict::Reject(PartitionRejection::OutOfOrderSequence { expected: 5, received: 3, .. })
        ));
    }

    #[test]
    fn only_the_last_batches_are_remembered() {
        let mut table = ProducerTable::default();
        for i in 0..=BATCHES_PER_PRODUCER as u64 {
            table.record_append(&batch(1, 0, i), 1, 10 * i, i + 1);
        }
        assert_eq!(table.get(1).map(|s| s.batches.len()), Some(BATCHES_PER_PRODUCER));
        assert!(matches!(table.check(&batch(1, 0, 0), 1), Verdict::Reject(_)), "the oldest batch is forgotten");
        assert_eq!(table.check(&batch(1, 0, 1), 1), Verdict::Duplicate { base_offset: 10 });
    }

    #[test]
    fn a_higher_epoch_starts_over_and_fences_the_lower_one() {
        let mut table = ProducerTable::default();
        table.record_append(&batch(1, 0, 0), 4, 0, 1);
        assert!(matches!(
            table.check(&batch(1, 1, 4), 1),
            Verdict::Reject(PartitionRejection::OutOfOrderSequence { expected: 0, received: 4, .. })
        ));
        assert_eq!(table.check(&batch(1, 1, 0), 1), Verdict::Append);
        table.record_append(&batch(1, 1, 0), 1, 4, 2);
        assert_eq!(
            table.check(&batch(1, 0, 4), 1),
            Verdict::Reject(PartitionRejection::ProducerFenced { producer_id: 1, epoch: 0, current_epoch: 1 })
        );
        // The old epoch's batches are no longer answered as duplicates either.
        assert_eq!(table.get(1).map(|s| s.batches.len()), Some(1));
    }

    #[test]
    fn an_unknown_producer_must_start_at_zero_and_sequences_cannot_wrap() {
        let table = ProducerTable::default();
        assert!(matches!(
            table.check(&batch(9, 0, 7), 1),
            Verdict::Reject(PartitionRejection::OutOfOrderSequence { expected: 0, received: 7, .. })
        ));
        let mut table = ProducerTable::default();
        table.record_append(&batch(9, 0, 0), 1, 0, 1);
        table.producers.get_mut(&9).expect("recorded").batches[0].base_sequence = u64::MAX - 1;
        assert!(matches!(table.check(&batch(9, 0, u64::MAX), 2), Verdict::Reject(_)), "u64::MAX + 2 overflows");
    }

    #[test]
    fn beyond_the_bound_the_least_recently_used_producer_is_evicted() {
        let mut table = ProducerTable::default();
        let mut index = 0;
        for id in 1..=PRODUCERS_PER_PARTITION_MAX as u64 {
            index += 1;
            assert!(table.record_append(&batch(id, 0, 0), 1, id, index).is_empty());
        }
        // Producer 1 answers a duplicate, so producer 2 is now the least recently used.
        index += 1;
        table.touch(1, index);
        index += 1;
        let evicted = table.record_append(&batch(u64::MAX, 0, 0), 1, 0, index);
        assert_eq!(evicted, vec![2]);
        assert_eq!(table.len(), PRODUCERS_PER_PARTITION_MAX);
        assert!(table.get(1).is_some() && table.get(2).is_none());
        // The rebuilt table evicts the same way (recency is part of the persisted state).
        let rebuilt = ProducerTable::from_entries(table.entries().map(|(id, s)| (id, s.clone())), 2);
        assert_eq!(rebuilt.by_recency, table.by_recency);
    }

    #[test]
    fn an_evicted_producer_is_refused_as_unknown_never_taken_for_a_new_one() {
        // Review finding 6: an evicted producer's retried first batch used to be appended a
        // second time, and a later batch refused as out of order although it was appended.
        let mut table = ProducerTable::default();
        let mut index = 0;
        for id in 1..=PRODUCERS_PER_PARTITION_MAX as u64 + 1 {
            index += 1;
            table.record_append(&batch(id, 0, 0), 1, id, index);
        }
        assert!(table.get(1).is_none(), "producer 1 was the least recently used");
        assert_eq!(table.evicted_through(), 1);
        let unknown = Verdict::Reject(PartitionRejection::UnknownProducerId { producer_id: 1, evicted_through: 1 });
        assert_eq!(table.check(&batch(1, 0, 0), 1), unknown, "a retry of its appended batch");
        assert_eq!(table.check(&batch(1, 0, 1), 1), unknown, "its next batch");
        assert_eq!(table.check(&batch(1, 1, 0), 1), unknown, "a new epoch of the same id");
        // Ids above the floor are new to the partition: their first batch starts at 0.
        let fresh = PRODUCERS_PER_PARTITION_MAX as u64 + 2;
        assert_eq!(table.check(&batch(fresh, 0, 0), 1), Verdict::Append);
        // The floor survives a reload.
        let rebuilt =
            ProducerTable::from_entries(table.entries().map(|(id, s)| (id, s.clone())), table.evicted_through());
        assert_eq!(rebuilt.check(&batch(1, 0, 0), 1), unknown);
    }
}

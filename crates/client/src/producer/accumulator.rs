//! `Accumulator`: one partition's records waiting to be sent, grouped into batches. Pure: the
//! caller passes the time in, so batching is testable without a runtime or a server.
//!
//! A batch closes ("is sealed") when it holds `records_max` records or `bytes_max` bytes, or
//! when the next record would not fit; an open batch becomes ready `linger` after its first
//! record. A record larger than `bytes_max` (but within the server's record limit, which the
//! producer checks first) still goes, alone in its batch.

use std::collections::VecDeque;
use std::time::Duration;

use flotilla_proto::v1;
use tokio::time::Instant;

/// How batches are cut.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchRules {
    /// How long an open batch waits for more records after its first one.
    pub(crate) linger: Duration,
    /// Record bytes (key + value + headers, the server's measure) that close a batch.
    pub(crate) bytes_max: usize,
    /// Records that close a batch.
    pub(crate) records_max: usize,
}

/// Records bound for one partition as one request, with a ticket per record (what the caller
/// needs to report the record's outcome).
#[derive(Debug)]
pub(crate) struct Batch<T> {
    /// The records, in the order they were added.
    pub(crate) records: Vec<v1::Record>,
    /// One per record, same order.
    pub(crate) tickets: Vec<T>,
    /// Record bytes, the server's measure.
    pub(crate) bytes: usize,
    /// When its first record was added.
    pub(crate) created: Instant,
    /// Number (per partition, from 0) of its first record.
    pub(crate) first_record: u64,
}

/// What [`Accumulator::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// The record opened a new batch (the sender must learn its linger deadline).
    pub(crate) opened: bool,
    /// At least one batch was sealed (it can be sent at once).
    pub(crate) sealed: bool,
}

/// One partition's unsent batches: sealed ones in order, then at most one open batch.
#[derive(Debug)]
pub(crate) struct Accumulator<T> {
    rules: BatchRules,
    sealed: VecDeque<Batch<T>>,
    open: Option<Batch<T>>,
    /// Number the next record gets.
    next_record: u64,
}

impl<T> Accumulator<T> {
    /// An empty accumulator cutting batches by `rules`.
    pub(crate) fn new(rules: BatchRules) -> Accumulator<T> {
        Accumulator { rules, sealed: VecDeque::new(), open: None, next_record: 0 }
    }

    /// Adds `record` of `bytes` record bytes, arriving at `now`.
    pub(crate) fn push(&mut self, record: v1::Record, bytes: usize, ticket: T, now: Instant) -> Pushed {
        let mut sealed = false;
        if let Some(open) = &self.open
            && (open.records.len() >= self.rules.records_max || open.bytes + bytes > self.rules.bytes_max)
        {
            self.seal_open();
            sealed = true;
        }
        let opened = self.open.is_none();
        let first_record = self.next_record;
        self.next_record += 1;
        let open = self.open.get_or_insert_with(|| Batch {
            records: Vec::new(),
            tickets: Vec::new(),
            bytes: 0,
            created: now,
            first_record,
        });
        open.records.push(record);
        open.tickets.push(ticket);
        open.bytes += bytes;
        if open.records.len() >= self.rules.records_max || open.bytes >= self.rules.bytes_max {
            self.seal_open();
            sealed = true;
        }
        Pushed { opened, sealed }
    }

    /// Closes the open batch, if any, so it is sent without waiting out its linger (a flush).
    pub(crate) fn seal_open(&mut self) {
        if let Some(open) = self.open.take() {
            self.sealed.push_back(open);
        }
    }

    /// Takes the oldest batch that is ready at `now`: a sealed one, or the open one once its
    /// linger has passed.
    pub(crate) fn take_ready(&mut self, now: Instant) -> Option<Batch<T>> {
        if let Some(batch) = self.sealed.pop_front() {
            return Some(batch);
        }
        if self.open.as_ref().is_some_and(|open| now >= open.created + self.rules.linger) {
            return self.open.take();
        }
        None
    }

    /// When the next batch becomes ready: now if one is sealed, else when the open batch's
    /// linger ends; `None` when empty.
    pub(crate) fn ready_at(&self) -> Option<Instant> {
        match (self.sealed.front(), &self.open) {
            (Some(batch), _) => Some(batch.created),
            (None, Some(open)) => Some(open.created + self.rules.linger),
            (None, None) => None,
        }
    }

    /// Whether a batch is open (a keyless record arriving now would join it).
    pub(crate) fn has_open(&self) -> bool {
        self.open.is_some()
    }

    /// Removes and returns every batch created at or before `cutoff` (their records waited
    /// too long), oldest first.
    pub(crate) fn expire(&mut self, cutoff: Instant) -> Vec<Batch<T>> {
        let mut expired = Vec::new();
        while self.sealed.front().is_some_and(|batch| batch.created <= cutoff) {
            expired.extend(self.sealed.pop_front());
        }
        // The open batch is younger than every sealed one.
        if self.sealed.is_empty() && self.open.as_ref().is_some_and(|open| open.created <= cutoff) {
            expired.extend(self.open.take());
        }
        expired
    }

    /// Removes and returns every batch.
    pub(crate) fn drain(&mut self) -> Vec<Batch<T>> {
        self.seal_open();
        self.sealed.drain(..).collect()
    }

    /// When the oldest batch was created.
    pub(crate) fn oldest(&self) -> Option<Instant> {
        self.sealed.front().or(self.open.as_ref()).map(|batch| batch.created)
    }

    /// Number of the oldest record still here, or of the next record when empty.
    pub(crate) fn first_record(&self) -> u64 {
        self.sealed.front().or(self.open.as_ref()).map_or(self.next_record, |batch| batch.first_record)
    }

    /// Number the next record will get.
    pub(crate) fn next_record(&self) -> u64 {
        self.next_record
    }

    /// Whether no record is waiting.
    pub(crate) fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.open.is_none()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn rules() -> BatchRules {
        BatchRules { linger: Duration::from_millis(5), bytes_max: 100, records_max: 3 }
    }

    fn record(bytes: usize) -> v1::Record {
        v1::Record { value: Bytes::from(vec![0u8; bytes]), ..Default::default() }
    }

    fn push(acc: &mut Accumulator<u64>, bytes: usize, now: Instant) -> Pushed {
        let ticket = acc.next_record();
        acc.push(record(bytes), bytes, ticket, now)
    }

    #[test]
    fn an_open_batch_waits_for_its_linger_then_goes() {
        let start = Instant::now();
        let mut acc = Accumulator::new(rules());
        assert_eq!(push(&mut acc, 10, start), Pushed { opened: true, sealed: false });
        assert_eq!(push(&mut acc, 10, start + Duration::from_millis(3)), Pushed { opened: false, sealed: false });
        assert_eq!(acc.ready_at(), Some(start + Duration::from_millis(5)), "linger runs from the first record");
        assert!(acc.take_ready(start + Duration::from_millis(4)).is_none());
        let batch = acc.take_ready(start + Duration::from_millis(5)).expect("linger passed");
        assert_eq!(batch.tickets, [0, 1]);
        assert_eq!(batch.bytes, 20);
        assert!(acc.is_empty());
        assert_eq!(acc.ready_at(), None);
    }

    #[test]
    fn a_full_batch_is_sealed_and_ready_at_once() {
        let now = Instant::now();
        let mut acc = Accumulator::new(rules());
        push(&mut acc, 1, now);
        push(&mut acc, 1, now);
        assert_eq!(push(&mut acc, 1, now), Pushed { opened: false, sealed: true }, "records_max reached");
        assert_eq!(push(&mut acc, 1, now), Pushed { opened: true, sealed: false });
        assert_eq!(acc.take_ready(now).expect("sealed").tickets, [0, 1, 2]);
        assert!(acc.take_ready(now).is_none(), "the new batch lingers");
        assert_eq!(acc.first_record(), 3);
    }

    #[test]
    fn batch_bytes_cap_the_batch_and_the_record_that_does_not_fit_starts_the_next() {
        let now = Instant::now();
        let mut acc = Accumulator::new(rules());
        push(&mut acc, 60, now);
        assert_eq!(push(&mut acc, 60, now), Pushed { opened: true, sealed: true }, "60 + 60 > 100");
        assert_eq!(push(&mut acc, 40, now), Pushed { opened: false, sealed: true }, "exactly 100 bytes closes it");
        let first = acc.take_ready(now).expect("sealed");
        let second = acc.take_ready(now).expect("sealed");
        assert_eq!((first.tickets, first.bytes), (vec![0], 60));
        assert_eq!((second.tickets, second.bytes), (vec![1, 2], 100));
    }

    #[test]
    fn a_record_larger_than_batch_bytes_goes_alone() {
        let now = Instant::now();
        let mut acc = Accumulator::new(rules());
        push(&mut acc, 10, now);
        assert_eq!(push(&mut acc, 500, now), Pushed { opened: true, sealed: true });
        push(&mut acc, 10, now);
        assert_eq!(acc.take_ready(now).expect("sealed").tickets, [0]);
        let big = acc.take_ready(now).expect("sealed");
        assert_eq!((big.tickets, big.bytes), (vec![1], 500));
        assert!(acc.take_ready(now).is_none(), "the record after it opens a batch of its own");
        assert_eq!(acc.take_ready(now + Duration::from_millis(5)).expect("lingered").tickets, [2]);
    }

    #[test]
    fn flush_seals_and_expiry_takes_old_batches_oldest_first() {
        let start = Instant::now();
        let mut acc = Accumulator::new(rules());
        push(&mut acc, 1, start);
        acc.seal_open();
        assert!(acc.take_ready(start).is_some(), "a sealed batch does not linger");
        push(&mut acc, 1, start);
        push(&mut acc, 1, start);
        push(&mut acc, 1, start);
        push(&mut acc, 1, start + Duration::from_secs(1));
        assert_eq!(acc.oldest(), Some(start));
        let expired = acc.expire(start);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].tickets, [1, 2, 3]);
        assert!(acc.has_open(), "the younger batch stays");
        assert_eq!(acc.first_record(), 4);
        assert_eq!(acc.drain().len(), 1);
        assert!(acc.is_empty());
    }
}

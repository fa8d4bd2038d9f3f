//! `Sequencer`: the sequence numbers of one producer session on one partition, and what to do
//! with each answer the partition gives. Pure (no I/O, no clock), so every rule below is
//! tested without a server. Both the pipelined [`crate::Producer`] and the one-batch
//! [`crate::IdempotentProducer`] keep their per-partition state in it.
//!
//! The partition's side (ARCHITECTURE.md, "Idempotent producer"): it remembers a producer's
//! epoch and last five batches; it appends the batch that starts at the next sequence, answers
//! a remembered batch with its first offsets, refuses a lower epoch (`PRODUCER_FENCED`) and
//! anything else (`OUT_OF_ORDER_SEQUENCE`); a higher epoch starts over at sequence 0.
//!
//! The rules this side follows:
//! - A batch takes its sequence numbers once, when first sent; every resend carries the same
//!   epoch and sequence. At most `max_in_flight` batches hold sequences without a settled
//!   outcome, and at most five when idempotent, so a resent batch is always among the five the
//!   partition remembers.
//! - Requests to one partition may overtake each other (concurrent requests, a leader change,
//!   a forwarded retry). A batch refused as out of order that was sent while an earlier batch
//!   was unsettled is *parked* and resent, unchanged, once every earlier batch is
//!   acknowledged. What counts is the state when the request left, not when its answer
//!   arrives: a refusal may be generated before an earlier batch lands and reach the client
//!   after that batch's acknowledgement. Only a request sent with nothing earlier unsettled
//!   gets a real refusal. Waiting for acknowledgements (rather than resending while earlier
//!   batches are merely in flight) keeps a batch from bouncing off a partition for as long as
//!   an earlier one is stuck retrying.
//! - Overtaking is costly: the partition refuses the overtaking batch only at apply, after a
//!   replicated, fsynced Raft round, and it must be sent again. So the number of batches in
//!   flight adapts, like a congestion window: it drops to one when a batch is parked and grows
//!   by one after [`WIDEN_AFTER_ACKS`] acknowledgements in a row, up to `max_in_flight`. Under
//!   saturation, where large concurrent requests overtake each other often, it stays narrow;
//!   at moderate load batches rarely overtake, and it stays wide and hides round trips.
//! - A batch without a definite answer (a timeout, a lost connection, retries exhausted) is
//!   *in doubt*: it may be in the log. It is resent under its sequence until it settles, and
//!   its sequence never goes to other records. A definite refusal does not settle a batch that
//!   was in doubt before: an earlier attempt may still be in the log.
//! - A batch refused definitively leaves a gap: later batches of the epoch can never be
//!   appended. Once every batch before the gap has settled and no request is in flight, the
//!   partition's stream restarts: the epoch goes up by one (the producer id belongs to this
//!   session alone, so no one else uses that epoch) and the stranded batches are renumbered
//!   from 0. Waiting for those conditions keeps two promises: a batch that may be in the log
//!   is never renumbered (renumbering it could append it twice), and no request of the old
//!   epoch is outstanding, so none can reach the partition after the new epoch starts and
//!   be refused as fenced while it was merely in doubt. If the refused batch was the last one
//!   with a sequence, its numbers are simply reused by the next batch.
//! - `PRODUCER_FENCED` ends the session for every partition: another session holds the id
//!   with a higher epoch.
//!
//! Without idempotence the sequencer only counts batches in flight: requests carry no
//! sequence, an unknown outcome is retried (at-least-once) and a refusal fails the batch.

use std::collections::VecDeque;

use flotilla_types::ErrorCode;

use crate::error::ClientError;

/// Identifies a batch within one partition's sender.
pub(crate) type BatchId = u64;

/// Batches a partition remembers per producer (the broker's `BATCHES_PER_PRODUCER`); more
/// unsettled batches than this could not all be recognised as duplicates when resent.
pub const IDEMPOTENT_IN_FLIGHT_MAX: usize = 5;

/// Acknowledgements in a row, without a batch overtaking another, that widen the window of
/// batches in flight by one. Measured under saturation (1 MiB batches, 3 partitions): growing
/// after one window's worth of acks still let a quarter of all batches overtake; after 16,
/// overtaking costs a few percent.
pub(crate) const WIDEN_AFTER_ACKS: usize = 16;

/// The sequence fields of one idempotent request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The epoch of the partition's current stream.
    pub(crate) epoch: u32,
    /// Sequence of the batch's first record.
    pub(crate) base_sequence: u64,
}

/// What an answer says about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Appended now or before (a duplicate is answered with its first offsets).
    Acked,
    /// No definite answer: the batch may or may not be in the log.
    Unknown,
    /// `OUT_OF_ORDER_SEQUENCE`: not appended, the partition expects another sequence.
    OutOfOrder,
    /// `PRODUCER_FENCED`: another session holds the producer id.
    Fenced,
    /// Any other definite refusal: nothing was appended.
    Refused,
}

impl Outcome {
    /// Reads a produce call's result. Only a Flotilla code that promises "nothing appended"
    /// is definite; a status without one (transport), a retriable code, exhausted retries, a
    /// broken answer or `INTERNAL` (a node that failed somewhere, perhaps after appending)
    /// leaves the outcome unknown.
    pub(crate) fn of<T>(result: &Result<T, ClientError>) -> Outcome {
        let error = match result {
            Ok(_) => return Outcome::Acked,
            Err(error) => error,
        };
        match error {
            ClientError::Server(wire) => match wire.code {
                Some(ErrorCode::ProducerFenced) => Outcome::Fenced,
                Some(ErrorCode::OutOfOrderSequence) => Outcome::OutOfOrder,
                Some(ErrorCode::Internal) | None => Outcome::Unknown,
                Some(code) if code.is_retriable() => Outcome::Unknown,
                Some(_) => Outcome::Refused,
            },
            ClientError::ProducerFenced { .. } => Outcome::Fenced,
            ClientError::RetriesExhausted { .. } | ClientError::Protocol { .. } => Outcome::Unknown,
            _ => Outcome::Refused,
        }
    }
}

/// What the caller does with a batch after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Appended: report the acks. The batch is forgotten.
    Settled,
    /// Still possibly in the log: resend it (same sequence) after a backoff.
    Retry,
    /// Overtook an earlier batch: it is resent when [`Sequencer::sends_due`] names it.
    Parked,
    /// Waits for the stream to restart under a new epoch; [`Sequencer::sends_due`] names it then.
    Stranded,
    /// Refused, nothing appended: report the error. The batch is forgotten.
    Failed,
    /// The session is fenced: fail everything.
    Fenced,
}

/// Where a batch with a sequence stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// A request for it is outstanding.
    InFlight,
    /// Its last request got no definite answer; waiting to be resent.
    InDoubt,
    /// Refused as out of order behind an unsettled batch; waiting to be resent.
    Parked,
    /// Behind a gap; waiting for the restart.
    Stranded,
    /// Renumbered by a restart; to be sent.
    Ready,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    id: BatchId,
    base_sequence: u64,
    count: u64,
    state: SlotState,
    /// Some request for it ended without a definite answer: it may be in the log.
    maybe_appended: bool,
    /// Its latest request left while an earlier batch was unsettled, so an out-of-order
    /// refusal of it may only mean that the earlier batch had not landed yet.
    sent_behind: bool,
}

/// One session's sequence state for one partition.
#[derive(Debug, Clone)]
pub(crate) struct Sequencer {
    /// `None` without idempotence.
    epoch: Option<u32>,
    next_sequence: u64,
    max_in_flight: usize,
    /// Batches allowed unsettled now: between 1 and `max_in_flight` (see the module docs).
    window: usize,
    /// Acknowledgements since the window last changed or a batch overtook another.
    acks_in_window: usize,
    /// Batches with a sequence and no settled outcome, in sequence order.
    slots: VecDeque<Slot>,
    /// First sequence of a batch refused definitively while later batches had sequences.
    gap_from: Option<u64>,
    fenced: bool,
    /// Restarts so far (epoch bumps), for statistics.
    restarts: u64,
}

impl Sequencer {
    /// A sequencer for an idempotent session at `epoch`, or a plain counter of batches in
    /// flight when `epoch` is `None`. `max_in_flight` is at least 1.
    pub(crate) fn new(epoch: Option<u32>, max_in_flight: usize) -> Sequencer {
        Sequencer {
            epoch,
            next_sequence: 0,
            max_in_flight: max_in_flight.max(1),
            window: max_in_flight.max(1),
            acks_in_window: 0,
            slots: VecDeque::new(),
            gap_from: None,
            fenced: false,
            restarts: 0,
        }
    }

    /// Whether a new batch may take sequence numbers now: below the in-flight bound, and the
    /// stream is healthy (nothing in doubt, parked or stranded that a new batch would only
    /// overtake).
    pub(crate) fn can_assign(&self) -> bool {
        !self.fenced
            && self.gap_from.is_none()
            && self.slots.len() < self.window
            && self.slots.iter().all(|slot| slot.state == SlotState::InFlight)
    }

    /// Gives batch `id` of `count` records its sequence numbers and marks it in flight.
    /// Returns the stamp to send (`None` without idempotence).
    pub(crate) fn assign(&mut self, id: BatchId, count: usize) -> Option<Stamp> {
        let count = count as u64;
        let base_sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.saturating_add(count);
        let sent_behind = !self.slots.is_empty();
        self.slots.push_back(Slot {
            id,
            base_sequence,
            count,
            state: SlotState::InFlight,
            maybe_appended: false,
            sent_behind,
        });
        self.stamp(base_sequence)
    }

    /// Takes in the answer to a request for batch `id`.
    pub(crate) fn on_outcome(&mut self, id: BatchId, outcome: Outcome) -> Verdict {
        if outcome == Outcome::Fenced || self.fenced {
            self.fenced = true;
            return Verdict::Fenced;
        }
        let Some(index) = self.slots.iter().position(|slot| slot.id == id) else {
            // Not ours (abandoned): nothing to decide.
            return Verdict::Failed;
        };
        let slot = self.slots[index];
        let stranded = self.gap_from.is_some_and(|gap| slot.base_sequence > gap);
        let idempotent = self.epoch.is_some();
        match outcome {
            Outcome::Acked => {
                self.slots.remove(index);
                self.acks_in_window += 1;
                if self.acks_in_window >= WIDEN_AFTER_ACKS {
                    self.window = (self.window + 1).min(self.max_in_flight);
                    self.acks_in_window = 0;
                }
                Verdict::Settled
            }
            // A stranded batch cannot have been appended (the batch at the gap never was), so
            // whatever this answer says, it waits for the restart. A refusal other than
            // ordering would come again after it; report that one at once.
            _ if stranded && outcome != Outcome::Refused => {
                self.slots[index].state = SlotState::Stranded;
                Verdict::Stranded
            }
            Outcome::Unknown => {
                let slot = &mut self.slots[index];
                slot.maybe_appended = true;
                slot.state = SlotState::InDoubt;
                Verdict::Retry
            }
            Outcome::OutOfOrder if idempotent && (index > 0 || slot.sent_behind) => {
                self.slots[index].state = SlotState::Parked;
                self.window = 1;
                self.acks_in_window = 0;
                Verdict::Parked
            }
            Outcome::OutOfOrder | Outcome::Refused if idempotent && slot.maybe_appended && !stranded => {
                // This answer is definite for this request only: an earlier one may have
                // appended the batch. It stays in doubt and keeps its sequence.
                self.slots[index].state = SlotState::InDoubt;
                Verdict::Retry
            }
            Outcome::OutOfOrder | Outcome::Refused | Outcome::Fenced => {
                self.slots.remove(index);
                if idempotent && !stranded {
                    self.open_gap(slot.base_sequence);
                }
                Verdict::Failed
            }
        }
    }

    /// Batches to send now, with their stamps, all marked in flight: after a restart every
    /// renumbered batch, in sequence order; otherwise the first batch if it is parked (every
    /// earlier batch is acknowledged). Restarts the stream first when that is due.
    pub(crate) fn sends_due(&mut self) -> Vec<(BatchId, Option<Stamp>)> {
        if self.fenced {
            return Vec::new();
        }
        self.restart_if_due();
        let mut sends = Vec::new();
        let mut blocked = false;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            match slot.state {
                SlotState::InFlight => {}
                SlotState::Parked if index == 0 => {
                    slot.state = SlotState::InFlight;
                    slot.sent_behind = false;
                    sends.push((slot.id, slot.base_sequence));
                }
                SlotState::Ready if !blocked => {
                    slot.state = SlotState::InFlight;
                    slot.sent_behind = index > 0;
                    sends.push((slot.id, slot.base_sequence));
                }
                SlotState::InDoubt | SlotState::Stranded | SlotState::Parked | SlotState::Ready => blocked = true,
            }
        }
        sends.into_iter().map(|(id, base)| (id, self.stamp(base))).collect()
    }

    /// Marks in-doubt batch `id` in flight again and returns its unchanged stamp; `None` (and
    /// nothing to send) if it is not in doubt, or is now stranded behind a gap.
    pub(crate) fn resend(&mut self, id: BatchId) -> Option<Option<Stamp>> {
        if self.fenced {
            return None;
        }
        let gap = self.gap_from;
        let index = self.slots.iter().position(|slot| slot.id == id && slot.state == SlotState::InDoubt)?;
        let slot = &mut self.slots[index];
        if gap.is_some_and(|gap| slot.base_sequence > gap) {
            slot.state = SlotState::Stranded;
            return None;
        }
        slot.state = SlotState::InFlight;
        slot.sent_behind = index > 0;
        let base = slot.base_sequence;
        Some(self.stamp(base))
    }

    /// Forgets batch `id` without an outcome (a non-idempotent batch given up at its delivery
    /// timeout). Only for batches without a request in flight.
    pub(crate) fn abandon(&mut self, id: BatchId) {
        self.slots.retain(|slot| slot.id != id);
    }

    /// Whether batch `id` has a request outstanding.
    pub(crate) fn in_flight(&self, id: BatchId) -> bool {
        self.slots.iter().any(|slot| slot.id == id && slot.state == SlotState::InFlight)
    }

    /// Batches with a sequence and no settled outcome.
    #[cfg(test)]
    pub(crate) fn unsettled(&self) -> usize {
        self.slots.len()
    }

    /// Batches allowed unsettled now.
    #[cfg(test)]
    pub(crate) fn window(&self) -> usize {
        self.window
    }

    /// The epoch of the partition's current stream (`None` without idempotence).
    pub(crate) fn epoch(&self) -> Option<u32> {
        self.epoch
    }

    /// Times the stream restarted under a new epoch.
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Whether the session was fenced.
    #[cfg(test)]
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced
    }

    fn stamp(&self, base_sequence: u64) -> Option<Stamp> {
        self.epoch.map(|epoch| Stamp { epoch, base_sequence })
    }

    /// Records a gap at `base_sequence`: the batches after it are stranded. Without later
    /// batches there is no gap: the next batch takes the same numbers.
    fn open_gap(&mut self, base_sequence: u64) {
        let later = self.slots.iter().any(|slot| slot.base_sequence > base_sequence);
        if !later && self.gap_from.is_none() {
            self.next_sequence = base_sequence;
            return;
        }
        let gap = self.gap_from.map_or(base_sequence, |gap| gap.min(base_sequence));
        self.gap_from = Some(gap);
        for slot in &mut self.slots {
            if slot.base_sequence > gap && slot.state != SlotState::InFlight {
                slot.state = SlotState::Stranded;
            }
        }
    }

    /// Restarts the stream under the next epoch once every batch before the gap has settled
    /// and no request is in flight: the stranded batches are renumbered from 0.
    fn restart_if_due(&mut self) {
        let (Some(gap), Some(epoch)) = (self.gap_from, self.epoch) else { return };
        let settled_before_gap = self.slots.iter().all(|slot| slot.base_sequence > gap);
        let quiet = self.slots.iter().all(|slot| slot.state != SlotState::InFlight);
        if !settled_before_gap || !quiet {
            return;
        }
        let Some(next_epoch) = epoch.checked_add(1) else {
            // Four billion restarts of one partition's stream: treat it as fenced rather
            // than wrap into epochs the partition would refuse.
            self.fenced = true;
            return;
        };
        self.epoch = Some(next_epoch);
        self.gap_from = None;
        self.restarts += 1;
        let mut next = 0u64;
        for slot in &mut self.slots {
            slot.base_sequence = next;
            slot.state = SlotState::Ready;
            slot.maybe_appended = false;
            next += slot.count;
        }
        self.next_sequence = next;
    }
}

#[cfg(test)]
mod tests {
    use flotilla_proto::error::WireError;

    use super::*;

    fn stamp(epoch: u32, base_sequence: u64) -> Option<Stamp> {
        Some(Stamp { epoch, base_sequence })
    }

    fn server(code: Option<ErrorCode>) -> Result<(), ClientError> {
        Err(ClientError::Server(WireError {
            code,
            grpc_code: tonic::Code::FailedPrecondition,
            message: "m".into(),
            leader: None,
        }))
    }

    #[test]
    fn answers_are_read_as_definite_only_when_the_code_promises_nothing_was_appended() {
        assert_eq!(Outcome::of(&Ok::<(), ClientError>(())), Outcome::Acked);
        assert_eq!(Outcome::of(&server(Some(ErrorCode::ProducerFenced))), Outcome::Fenced);
        assert_eq!(Outcome::of(&server(Some(ErrorCode::OutOfOrderSequence))), Outcome::OutOfOrder);
        assert_eq!(Outcome::of(&server(Some(ErrorCode::RecordTooLarge))), Outcome::Refused);
        assert_eq!(Outcome::of(&server(Some(ErrorCode::InvalidRequest))), Outcome::Refused);
        // A status that did not come from a Flotilla node says nothing about the append; nor
        // does a node's internal failure or a retriable code.
        assert_eq!(Outcome::of(&server(None)), Outcome::Unknown);
        assert_eq!(Outcome::of(&server(Some(ErrorCode::Internal))), Outcome::Unknown);
        assert_eq!(Outcome::of(&server(Some(ErrorCode::Timeout))), Outcome::Unknown);
        let exhausted: Result<(), ClientError> = Err(ClientError::RetriesExhausted {
            operation: "produce",
            target: "leader of t/0".into(),
            attempts: 41,
            last: WireError {
                code: Some(ErrorCode::NotLeader),
                grpc_code: tonic::Code::Unavailable,
                message: "m".into(),
                leader: None,
            },
        });
        assert_eq!(Outcome::of(&exhausted), Outcome::Unknown);
    }

    #[test]
    fn batches_take_consecutive_sequences_up_to_the_in_flight_bound() {
        let mut seq = Sequencer::new(Some(0), 3);
        assert_eq!(seq.assign(1, 10), stamp(0, 0));
        assert_eq!(seq.assign(2, 5), stamp(0, 10));
        assert!(seq.can_assign());
        assert_eq!(seq.assign(3, 1), stamp(0, 15));
        assert!(!seq.can_assign(), "three unsettled batches");
        assert_eq!(seq.on_outcome(2, Outcome::Acked), Verdict::Settled, "acks may come out of order");
        assert!(seq.can_assign());
        assert_eq!(seq.assign(4, 2), stamp(0, 16));
        assert_eq!(seq.unsettled(), 3);
    }

    #[test]
    fn an_overtaking_batch_is_parked_and_resent_unchanged_once_every_earlier_one_is_acknowledged() {
        let mut seq = Sequencer::new(Some(0), 5);
        seq.assign(1, 10);
        seq.assign(2, 10);
        seq.assign(3, 10);
        // Batch 3 reached the leader first: out of order behind batches 1 and 2.
        assert_eq!(seq.on_outcome(3, Outcome::OutOfOrder), Verdict::Parked);
        assert!(!seq.can_assign(), "no new batches while one is parked");
        assert!(seq.sends_due().is_empty(), "batches 1 and 2 are not acknowledged yet: it would only bounce again");
        assert_eq!(seq.on_outcome(2, Outcome::OutOfOrder), Verdict::Parked);
        assert_eq!(seq.on_outcome(1, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.sends_due(), vec![(2, stamp(0, 10))], "the first parked batch goes, the next waits for it");
        assert_eq!(seq.on_outcome(2, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.sends_due(), vec![(3, stamp(0, 20))]);
        assert_eq!(seq.on_outcome(3, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.assign(4, 1), stamp(0, 30), "nothing was renumbered");
    }

    #[test]
    fn overtaking_narrows_the_window_to_one_and_in_order_acks_widen_it_again() {
        let mut seq = Sequencer::new(Some(0), 3);
        seq.assign(1, 1);
        seq.assign(2, 1);
        assert_eq!(seq.on_outcome(2, Outcome::OutOfOrder), Verdict::Parked);
        assert_eq!(seq.window(), 1);
        assert_eq!(seq.on_outcome(1, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.sends_due(), vec![(2, stamp(0, 1))]);
        assert!(!seq.can_assign(), "one batch in flight fills a window of one");
        assert_eq!(seq.on_outcome(2, Outcome::Acked), Verdict::Settled);
        let mut id = 3;
        let mut ack_one = |seq: &mut Sequencer| {
            seq.assign(id, 1);
            assert_eq!(seq.on_outcome(id, Outcome::Acked), Verdict::Settled);
            id += 1;
        };
        // Two acknowledgements so far; the window widens after WIDEN_AFTER_ACKS in a row.
        for _ in 2..WIDEN_AFTER_ACKS {
            assert_eq!(seq.window(), 1);
            ack_one(&mut seq);
        }
        assert_eq!(seq.window(), 2);
        for _ in 0..10 * WIDEN_AFTER_ACKS {
            ack_one(&mut seq);
        }
        assert_eq!(seq.window(), 3, "never past max_in_flight");
    }

    #[test]
    fn a_refusal_that_arrives_after_the_earlier_batch_landed_is_still_not_real() {
        // Batch 2 left while batch 1 was unsettled; the leader refused it before batch 1
        // landed, but the refusal arrives after batch 1's acknowledgement.
        let mut seq = Sequencer::new(Some(0), 5);
        seq.assign(1, 10);
        seq.assign(2, 10);
        assert_eq!(seq.on_outcome(1, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.on_outcome(2, Outcome::OutOfOrder), Verdict::Parked);
        assert_eq!(seq.sends_due(), vec![(2, stamp(0, 10))]);
        // Sent again with nothing earlier unsettled: now a refusal is real.
        assert_eq!(seq.on_outcome(2, Outcome::OutOfOrder), Verdict::Failed);
    }

    #[test]
    fn a_parked_batch_waits_behind_an_earlier_batch_in_doubt() {
        let mut seq = Sequencer::new(Some(0), 5);
        seq.assign(1, 10);
        seq.assign(2, 10);
        assert_eq!(seq.on_outcome(1, Outcome::Unknown), Verdict::Retry);
        assert_eq!(seq.on_outcome(2, Outcome::OutOfOrder), Verdict::Parked);
        assert!(seq.sends_due().is_empty(), "batch 1 is not acknowledged: batch 2 would overtake it again");
        assert_eq!(seq.resend(1), Some(stamp(0, 0)), "resent under its first sequence");
        assert!(seq.sends_due().is_empty());
        assert_eq!(seq.on_outcome(1, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.sends_due(), vec![(2, stamp(0, 10))]);
    }

    #[test]
    fn a_batch_in_doubt_keeps_its_sequence_until_it_settles_even_through_refusals() {
        let mut seq = Sequencer::new(Some(0), 5);
        seq.assign(1, 10);
        assert_eq!(seq.on_outcome(1, Outcome::Unknown), Verdict::Retry);
        assert!(!seq.can_assign(), "nothing new while a batch is in doubt");
        assert_eq!(seq.resend(1), Some(stamp(0, 0)));
        // A refusal of this attempt does not say the first attempt was not appended.
        assert_eq!(seq.on_outcome(1, Outcome::OutOfOrder), Verdict::Retry);
        assert_eq!(seq.resend(1), Some(stamp(0, 0)));
        assert_eq!(seq.on_outcome(1, Outcome::Acked), Verdict::Settled, "a duplicate answer settles it");
        assert_eq!(seq.assign(2, 1), stamp(0, 10), "its numbers were never given to other records");
        assert_eq!(seq.resend(1), None, "settled batches are not resent");
    }

    #[test]
    fn out_of_order_with_nothing_earlier_unsettled_is_a_real_refusal() {
        let mut seq = Sequencer::new(Some(0), 5);
        seq.assign(1, 10);
        assert_eq!(seq.on_outcome(1, Outcome::OutOfOrder), Verdict::Failed);
        assert_eq!(seq.assign(2, 3), stamp(0, 0), "the last batch's numbers are reused: no gap");
    }

    #[test]
    fn a_refusal_before_later_batches_restarts_the_stream_under_the_next_epoch() {
        let mut seq = Sequencer::new(Some(4), 5);
        seq.assign(1, 10);
        seq.assign(2, 10);
        seq.assign(3, 5);
        seq.assign(4, 5);
        // Batch 2 is refused (say its records broke a server limit): 3 and 4 can never be
        // appended in epoch 4.
        assert_eq!(seq.on_outcome(2, Outcome::Refused), Verdict::Failed);
        assert!(!seq.can_assign());
        assert_eq!(seq.on_outcome(3, Outcome::OutOfOrder), Verdict::Stranded);
        assert!(seq.sends_due().is_empty(), "batch 1 (before the gap) and 4 are in flight");
        assert_eq!(seq.on_outcome(4, Outcome::Unknown), Verdict::Stranded, "it cannot have been appended");
        assert!(seq.sends_due().is_empty(), "batch 1 has not settled");
        assert_eq!(seq.on_outcome(1, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.sends_due(), vec![(3, stamp(5, 0)), (4, stamp(5, 5))]);
        assert_eq!(seq.epoch(), Some(5));
        assert_eq!(seq.restarts(), 1);
        assert_eq!(seq.on_outcome(3, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.on_outcome(4, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.assign(5, 1), stamp(5, 10));
    }

    #[test]
    fn a_batch_before_the_gap_that_is_in_doubt_settles_before_the_restart() {
        let mut seq = Sequencer::new(Some(0), 5);
        seq.assign(1, 1);
        seq.assign(2, 1);
        seq.assign(3, 1);
        assert_eq!(seq.on_outcome(1, Outcome::Unknown), Verdict::Retry);
        assert_eq!(seq.on_outcome(2, Outcome::Refused), Verdict::Failed);
        assert_eq!(seq.on_outcome(3, Outcome::OutOfOrder), Verdict::Stranded);
        assert!(seq.sends_due().is_empty(), "batch 1 may be in the log; it must settle in epoch 0");
        assert_eq!(seq.resend(1), Some(stamp(0, 0)));
        assert_eq!(seq.on_outcome(1, Outcome::Acked), Verdict::Settled);
        assert_eq!(seq.sends_due(), vec![(3, stamp(1, 0))]);
    }

    #[test]
    fn fencing_ends_the_session() {
        let mut seq = Sequencer::new(Some(0), 5);
        seq.assign(1, 1);
        seq.assign(2, 1);
        assert_eq!(seq.on_outcome(2, Outcome::Fenced), Verdict::Fenced);
        assert_eq!(seq.on_outcome(1, Outcome::Acked), Verdict::Fenced);
        assert!(seq.is_fenced());
        assert!(!seq.can_assign());
        assert!(seq.sends_due().is_empty());
    }

    #[test]
    fn without_idempotence_only_the_in_flight_bound_applies() {
        let mut seq = Sequencer::new(None, 2);
        assert_eq!(seq.assign(1, 10), None);
        assert_eq!(seq.assign(2, 10), None);
        assert!(!seq.can_assign());
        assert_eq!(seq.on_outcome(1, Outcome::Refused), Verdict::Failed);
        assert_eq!(seq.on_outcome(2, Outcome::Unknown), Verdict::Retry);
        assert_eq!(seq.resend(2), Some(None));
        assert!(seq.in_flight(2));
        assert_eq!(seq.on_outcome(2, Outcome::Unknown), Verdict::Retry);
        seq.abandon(2);
        assert_eq!(seq.unsettled(), 0);
        assert!(seq.can_assign());
        assert!(seq.sends_due().is_empty());
    }
}

//! `PartitionSender`: one partition's queue and the task that sends it. Callers push records
//! into the [`Accumulator`]; the task cuts batches, numbers them through the [`Sequencer`],
//! keeps up to the in-flight bound of requests outstanding, and resolves every record's
//! future when its batch settles or fails. All decisions are made under the partition's lock
//! by `State::step` and `State::complete`; only the requests themselves run outside it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_proto::v1;
use flotilla_types::PartitionId;
use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use tokio::time::Instant;

use super::accumulator::{Accumulator, Batch, BatchRules};
use super::sequencer::{BatchId, Outcome, Sequencer, Stamp, Verdict};
use super::{ProducerShared, RECORD_OVERHEAD_BYTES};
use crate::Client;
use crate::error::ClientError;

/// Where one record's outcome goes.
pub(crate) type Reply = oneshot::Sender<Result<v1::RecordAck, ClientError>>;

/// What a partition's task needs besides its queue.
pub(crate) struct SenderContext {
    pub(crate) client: Client,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: PartitionId,
    /// The session's producer id, when idempotent.
    pub(crate) producer_id: Option<u64>,
    pub(crate) compression: Option<tonic::codec::CompressionEncoding>,
    pub(crate) delivery_timeout: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) shared: Arc<ProducerShared>,
    /// The producer's buffer: a batch gives its bytes back when it leaves.
    pub(crate) memory: Arc<Semaphore>,
}

/// One partition's queue, shared by the producer handle (which pushes) and the task (which
/// sends).
pub(crate) struct PartitionSender {
    state: Mutex<State>,
    /// Wakes the task: a batch opened or closed, a flush, a close.
    wake: Notify,
    /// Number of the oldest record whose outcome is not yet reported; flushes wait on it.
    settled: watch::Sender<u64>,
}

impl PartitionSender {
    /// An idle sender; [`run`] drives it.
    pub(crate) fn new(rules: BatchRules, sequencer: Sequencer) -> PartitionSender {
        PartitionSender {
            state: Mutex::new(State {
                acc: Accumulator::new(rules),
                sequencer,
                batches: BTreeMap::new(),
                next_id: 0,
                closing: false,
                stopped: None,
            }),
            wake: Notify::new(),
            settled: watch::Sender::new(0),
        }
    }

    /// Queues a record of `bytes` record bytes. Fails if the task has stopped (the producer
    /// was closed or fenced); the caller then still owns the record's buffer room.
    pub(crate) fn push(&self, record: v1::Record, bytes: usize, reply: Reply, now: Instant) -> Result<(), ClientError> {
        let pushed = {
            let mut state = self.state.lock();
            if let Some(stopped) = &state.stopped {
                return Err(stopped.clone());
            }
            if state.closing {
                return Err(ClientError::ProducerClosed);
            }
            state.acc.push(record, bytes, reply, now)
        };
        if pushed.opened || pushed.sealed {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Whether a batch is open (keyless records stick to a partition while it is).
    pub(crate) fn has_open_batch(&self) -> bool {
        self.state.lock().acc.has_open()
    }

    /// Closes the open batch so it goes without lingering; returns the number of the next
    /// record, which [`PartitionSender::wait_settled`] waits for.
    pub(crate) fn flush_target(&self) -> u64 {
        let target = {
            let mut state = self.state.lock();
            state.acc.seal_open();
            state.acc.next_record()
        };
        self.wake.notify_one();
        target
    }

    /// Waits until every record numbered below `target` has its outcome.
    pub(crate) async fn wait_settled(&self, target: u64) {
        let mut settled = self.settled.subscribe();
        // The sender lives as long as `self`, so this ends only when the records settle.
        let _ = settled.wait_for(|settled| *settled >= target).await;
    }

    /// Asks the task to send what it holds and then end.
    pub(crate) fn close(&self) {
        self.state.lock().closing = true;
        self.wake.notify_one();
    }

    fn publish_settled(&self, state: &State) {
        let settled = state.settled_below();
        self.settled.send_if_modified(|current| {
            let changed = *current != settled;
            *current = settled;
            changed
        });
    }
}

/// Sends one partition's batches until the producer closes (and everything is settled) or is
/// fenced.
pub(crate) async fn run(sender: Arc<PartitionSender>, context: Arc<SenderContext>) {
    let mut requests = FuturesUnordered::new();
    loop {
        let step = {
            let mut state = sender.state.lock();
            let step = state.step(Instant::now(), &context);
            sender.publish_settled(&state);
            step
        };
        if step.exit {
            // Whatever is still in flight belongs to abandoned batches.
            break;
        }
        for request in step.sends {
            requests.push(send(Arc::clone(&context), request));
        }
        let wake_at = step.wake_at;
        tokio::select! {
            Some((id, result)) = requests.next(), if !requests.is_empty() => {
                let mut state = sender.state.lock();
                state.complete(id, result, Instant::now(), &context);
                sender.publish_settled(&state);
            }
            () = sender.wake.notified() => {}
            () = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now)), if wake_at.is_some() => {}
        }
    }
}

/// One produce request for a batch.
struct Request {
    id: BatchId,
    stamp: Option<Stamp>,
    records: Vec<v1::Record>,
}

async fn send(context: Arc<SenderContext>, request: Request) -> (BatchId, Result<Vec<v1::RecordAck>, ClientError>) {
    context.shared.requests.fetch_add(1, Ordering::Relaxed);
    let idempotence = match (request.stamp, context.producer_id) {
        (Some(stamp), Some(producer_id)) => {
            Some(v1::ProducerSequence { producer_id, producer_epoch: stamp.epoch, base_sequence: stamp.base_sequence })
        }
        _ => None,
    };
    let count = request.records.len();
    let result = context
        .client
        .produce_to(&context.topic, Some(context.partition), request.records, idempotence, context.compression)
        .await;
    tracing::trace!(
        topic = %context.topic,
        partition = context.partition,
        batch = request.id,
        stamp = ?request.stamp,
        count,
        outcome = ?result.as_ref().map(|acks| acks.first().map(|ack| ack.offset)),
        "produce request answered"
    );
    (request.id, result)
}

/// What the task does next.
struct Step {
    sends: Vec<Request>,
    /// When to look again if nothing else happens.
    wake_at: Option<Instant>,
    /// Nothing left to do: end the task.
    exit: bool,
}

/// A batch that has left the accumulator: sent at least once, not yet settled.
struct Sent {
    records: Vec<v1::Record>,
    /// One per record; empty once the outcome was reported (a batch kept after its delivery
    /// timeout only to settle its sequence).
    replies: Vec<Reply>,
    created: Instant,
    first_record: u64,
    /// When to resend it, while in doubt.
    retry_at: Option<Instant>,
    last_error: Option<ClientError>,
    _room: Room,
}

/// Buffer room held by a batch, given back when it is dropped.
struct Room {
    memory: Arc<Semaphore>,
    permits: usize,
}

impl Room {
    fn of<T>(batch: &Batch<T>, memory: &Arc<Semaphore>) -> Room {
        Room { memory: Arc::clone(memory), permits: batch.bytes + RECORD_OVERHEAD_BYTES * batch.records.len() }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.memory.add_permits(self.permits);
    }
}

struct State {
    acc: Accumulator<Reply>,
    sequencer: Sequencer,
    batches: BTreeMap<BatchId, Sent>,
    next_id: BatchId,
    closing: bool,
    /// Set when the task stops early (fenced): later records fail with it.
    stopped: Option<ClientError>,
}

impl State {
    /// Expires what waited too long, then picks the requests to send now: parked and
    /// renumbered batches, in-doubt batches whose pause is over, and new batches while the
    /// in-flight bound allows.
    fn step(&mut self, now: Instant, context: &SenderContext) -> Step {
        let fenced = context.shared.fenced.lock().clone();
        if let Some(fenced) = fenced {
            self.stop(fenced, context);
            return Step { sends: Vec::new(), wake_at: None, exit: true };
        }
        if self.closing {
            self.acc.seal_open();
        }
        self.expire(now, context);

        let mut sends = Vec::new();
        let restarts = self.sequencer.restarts();
        for (id, stamp) in self.sequencer.sends_due() {
            if let Some(batch) = self.batches.get(&id) {
                context.shared.resends_reordered.fetch_add(1, Ordering::Relaxed);
                sends.push(Request { id, stamp, records: batch.records.clone() });
            }
        }
        if self.sequencer.restarts() > restarts {
            context.shared.epoch_bumps.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(topic = %context.topic, partition = context.partition, epoch = ?self.sequencer.epoch(), "sequence stream restarted");
        }
        for (id, batch) in &mut self.batches {
            if batch.retry_at.is_some_and(|at| at <= now) {
                batch.retry_at = None;
                if let Some(stamp) = self.sequencer.resend(*id) {
                    context.shared.resends_in_doubt.fetch_add(1, Ordering::Relaxed);
                    sends.push(Request { id: *id, stamp, records: batch.records.clone() });
                }
            }
        }
        while self.sequencer.can_assign() {
            let Some(batch) = self.acc.take_ready(now) else { break };
            let id = self.next_id;
            self.next_id += 1;
            let stamp = self.sequencer.assign(id, batch.records.len());
            let room = Room::of(&batch, &context.memory);
            sends.push(Request { id, stamp, records: batch.records.clone() });
            self.batches.insert(
                id,
                Sent {
                    records: batch.records,
                    replies: batch.tickets,
                    created: batch.created,
                    first_record: batch.first_record,
                    retry_at: None,
                    last_error: None,
                    _room: room,
                },
            );
        }

        let timeout = context.delivery_timeout;
        let mut wake_at: Option<Instant> = None;
        let mut wake = |at: Instant| wake_at = Some(wake_at.map_or(at, |current| current.min(at)));
        if self.sequencer.can_assign()
            && let Some(ready) = self.acc.ready_at()
        {
            wake(ready);
        }
        if let Some(oldest) = self.acc.oldest() {
            wake(oldest + timeout);
        }
        for (id, batch) in &self.batches {
            if let Some(at) = batch.retry_at {
                wake(at);
            }
            if !batch.replies.is_empty() && !self.sequencer.in_flight(*id) {
                wake(batch.created + timeout);
            }
        }
        let exit = self.closing && self.acc.is_empty() && self.batches.values().all(|b| b.replies.is_empty());
        Step { sends, wake_at, exit }
    }

    /// Takes in the answer to a request for batch `id`.
    fn complete(
        &mut self,
        id: BatchId,
        result: Result<Vec<v1::RecordAck>, ClientError>,
        now: Instant,
        context: &SenderContext,
    ) {
        let verdict = self.sequencer.on_outcome(id, Outcome::of(&result));
        let error = match result {
            Ok(acks) => {
                // Appended, whatever else happened meanwhile: report it.
                if let Some(batch) = self.batches.remove(&id) {
                    context.shared.batches.fetch_add(1, Ordering::Relaxed);
                    context.shared.records.fetch_add(acks.len() as u64, Ordering::Relaxed);
                    for (reply, ack) in batch.replies.into_iter().zip(acks) {
                        let _ = reply.send(Ok(ack));
                    }
                }
                return;
            }
            Err(error) => error,
        };
        match verdict {
            Verdict::Retry => {
                if let Some(batch) = self.batches.get_mut(&id) {
                    tracing::debug!(topic = %context.topic, partition = context.partition, %error, "batch in doubt; resending");
                    batch.retry_at = Some(now + context.retry_backoff);
                    batch.last_error = Some(error);
                }
            }
            Verdict::Parked | Verdict::Stranded => {
                if let Some(batch) = self.batches.get_mut(&id) {
                    batch.last_error = Some(error);
                }
            }
            Verdict::Settled | Verdict::Failed => {
                if let Some(batch) = self.batches.remove(&id) {
                    fail(batch.replies, &error);
                }
            }
            Verdict::Fenced => {
                let fenced = {
                    let mut shared = context.shared.fenced.lock();
                    shared
                        .get_or_insert_with(|| match error.wire() {
                            Some(wire) if error.code() == Some(flotilla_types::ErrorCode::ProducerFenced) => {
                                ClientError::ProducerFenced {
                                    producer_id: context.producer_id.unwrap_or_default(),
                                    topic: context.topic.to_string(),
                                    partition: context.partition,
                                    source: wire.clone(),
                                }
                            }
                            _ => error.clone(),
                        })
                        .clone()
                };
                self.stop(fenced, context);
            }
        }
    }

    /// Fails records that waited past the delivery timeout: unsent batches (nothing appended)
    /// and sent batches with no request outstanding (outcome unknown). An idempotent batch
    /// stays, without its replies, until its sequence settles; any other is dropped.
    fn expire(&mut self, now: Instant, context: &SenderContext) {
        let Some(cutoff) = now.checked_sub(context.delivery_timeout) else { return };
        let timeout = |sent: bool, last: Option<ClientError>| ClientError::DeliveryTimeout {
            topic: context.topic.to_string(),
            partition: context.partition,
            timeout: context.delivery_timeout,
            sent,
            last: last.map(Box::new),
        };
        for batch in self.acc.expire(cutoff) {
            let _room = Room::of(&batch, &context.memory);
            fail(batch.tickets, &timeout(false, None));
        }
        let idempotent = self.sequencer.epoch().is_some();
        let expired: Vec<BatchId> = self
            .batches
            .iter()
            .filter(|(id, batch)| {
                batch.created <= cutoff && !batch.replies.is_empty() && !self.sequencer.in_flight(**id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let Some(batch) = self.batches.get_mut(&id) else { continue };
            let error = timeout(true, batch.last_error.take());
            fail(std::mem::take(&mut batch.replies), &error);
            if !idempotent {
                self.sequencer.abandon(id);
                self.batches.remove(&id);
            }
        }
    }

    /// Fails every queued and unsettled record with `error` and refuses later ones.
    fn stop(&mut self, error: ClientError, context: &SenderContext) {
        for batch in self.acc.drain() {
            let _room = Room::of(&batch, &context.memory);
            fail(batch.tickets, &error);
        }
        for (_, batch) in std::mem::take(&mut self.batches) {
            fail(batch.replies, &error);
        }
        self.stopped = Some(error);
    }

    /// Number of the oldest record whose outcome is not reported yet.
    fn settled_below(&self) -> u64 {
        let sent = self.batches.values().filter(|b| !b.replies.is_empty()).map(|b| b.first_record).min();
        sent.map_or(self.acc.first_record(), |first| first.min(self.acc.first_record()))
    }
}

/// Reports `error` to every record of a batch.
fn fail(replies: Vec<Reply>, error: &ClientError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

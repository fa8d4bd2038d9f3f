//! `Producer`: the SDK's batching producer, idempotent by default.
//!
//! Records are grouped per partition into batches (`accumulator.rs`: closed by `linger`,
//! `batch_bytes` or `batch_records_max`); one task per partition (`sender.rs`) sends them to the
//! partition's leader with up to `max_in_flight_per_partition` requests outstanding and
//! resolves each record's [`DeliveryFuture`] with its partition and offset. With idempotence
//! (the default) every batch carries the session's producer id, an epoch and per-partition
//! sequence numbers (`sequencer.rs`), so a resent batch is answered with its original offsets
//! instead of being appended twice. Compression is gRPC message compression: the server
//! decompresses on receipt and stores records uncompressed.

mod accumulator;
mod record;
mod sender;
mod sequencer;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use flotilla_proto::v1;
use flotilla_types::{Limits, PartitionId, partition_for_key};
use parking_lot::Mutex;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;

use self::accumulator::BatchRules;
pub use self::record::ProducerRecord;
use self::record::record_bytes;
use self::sender::{PartitionSender, SenderContext};
pub use self::sequencer::IDEMPOTENT_IN_FLIGHT_MAX;
pub(crate) use self::sequencer::{BatchId, Outcome, Sequencer, Verdict};
use crate::Client;
use crate::error::ClientError;

/// Buffer bytes charged per record on top of its own bytes, so records with empty values
/// still count against [`ProducerConfig::buffer_bytes`].
pub(crate) const RECORD_OVERHEAD_BYTES: usize = 64;

/// Spreads the first sticky partition of producers in one process.
static PRODUCERS_CREATED: AtomicU32 = AtomicU32::new(0);

/// gRPC message compression for produce requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Send requests as they are.
    #[default]
    None,
    /// gzip: widely supported, slower.
    Gzip,
    /// zstd: better ratio and speed than gzip.
    Zstd,
}

impl Compression {
    pub(crate) fn encoding(self) -> Option<tonic::codec::CompressionEncoding> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some(tonic::codec::CompressionEncoding::Gzip),
            Compression::Zstd => Some(tonic::codec::CompressionEncoding::Zstd),
        }
    }
}

/// Tunables of a [`Producer`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records after its first one. Longer means larger
    /// batches and fewer requests, at that much added latency.
    pub linger: Duration,
    /// Record bytes (key + value + headers) that close a batch. A single larger record still
    /// goes, alone, if it is within the server's record limit.
    pub batch_bytes: usize,
    /// Records that close a batch; at most the server's `batch_records_max`.
    pub batch_records_max: usize,
    /// Batches per partition sent and not yet settled. More hide more round trips; with
    /// idempotence at most [`IDEMPOTENT_IN_FLIGHT_MAX`] (what a partition remembers per
    /// producer), and the producer narrows to one while batches overtake each other (each
    /// overtaking batch costs the partition a Raft round and a resend), widening again as
    /// acknowledgements come in order. Without idempotence, more than 1 lets a retried batch
    /// land after a later one, so records of one key may be reordered.
    pub max_in_flight_per_partition: usize,
    /// Bytes of records accepted but not yet settled, over all partitions. `send` waits for
    /// room (backpressure) instead of buffering without bound when the cluster is slower than
    /// the caller.
    pub buffer_bytes: usize,
    /// Producer id + epoch + sequence numbers, so retries never append a batch twice.
    pub idempotence: bool,
    /// gRPC compression of produce requests.
    pub compression: Compression,
    /// Longest time from `send` to a record's outcome. A record not acknowledged by then fails
    /// with [`ClientError::DeliveryTimeout`]; without this bound a record for an unavailable
    /// partition would wait forever.
    pub delivery_timeout: Duration,
    /// Pause before resending a batch whose request ended without a definite answer (the
    /// client already retried within the request).
    pub retry_backoff: Duration,
    /// The server's limits (set them if the cluster runs with other limits): records are
    /// checked against them before they are queued, and batches are cut within them.
    pub limits: Limits,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_bytes: 1024 * 1024,
            batch_records_max: 10_000,
            max_in_flight_per_partition: IDEMPOTENT_IN_FLIGHT_MAX,
            buffer_bytes: 64 * 1024 * 1024,
            idempotence: true,
            compression: Compression::None,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(100),
            limits: Limits::default(),
        }
    }
}

impl ProducerConfig {
    /// Checks the settings against each other and the server's limits.
    pub fn validate(&self) -> Result<(), ClientError> {
        let invalid = |field: &'static str, reason: String| Err(ClientError::InvalidConfig { field, reason });
        let limits = &self.limits;
        if self.batch_bytes == 0 || self.batch_bytes > limits.batch_bytes_max {
            return invalid(
                "batch_bytes",
                format!(
                    "is {}; it must be from 1 to the server's batch limit of {} bytes",
                    self.batch_bytes, limits.batch_bytes_max
                ),
            );
        }
        if self.batch_records_max == 0 || self.batch_records_max > limits.batch_records_max {
            return invalid(
                "batch_records_max",
                format!(
                    "is {}; it must be from 1 to the server's limit of {} records per request",
                    self.batch_records_max, limits.batch_records_max
                ),
            );
        }
        let in_flight_max = if self.idempotence { IDEMPOTENT_IN_FLIGHT_MAX } else { usize::MAX };
        if self.max_in_flight_per_partition == 0 || self.max_in_flight_per_partition > in_flight_max {
            return invalid(
                "max_in_flight_per_partition",
                format!(
                    "is {}; it must be at least 1{}",
                    self.max_in_flight_per_partition,
                    if self.idempotence {
                        format!(
                            " and at most {IDEMPOTENT_IN_FLIGHT_MAX} with idempotence (a partition remembers the last \
                             {IDEMPOTENT_IN_FLIGHT_MAX} batches of a producer)"
                        )
                    } else {
                        String::new()
                    }
                ),
            );
        }
        let buffer_min = self.batch_bytes.max(limits.record_bytes_max) + RECORD_OVERHEAD_BYTES;
        if self.buffer_bytes < buffer_min || u32::try_from(self.buffer_bytes).is_err() {
            return invalid(
                "buffer_bytes",
                format!(
                    "is {}; it must hold a full batch and the largest record ({buffer_min} bytes) and be below 4 GiB",
                    self.buffer_bytes
                ),
            );
        }
        if self.delivery_timeout.is_zero() {
            return invalid("delivery_timeout", "is 0; records need time to be delivered".to_string());
        }
        Ok(())
    }

    fn batch_rules(&self) -> BatchRules {
        BatchRules { linger: self.linger, bytes_max: self.batch_bytes, records_max: self.batch_records_max }
    }
}

/// Counters of a producer's work, for benchmarks and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Produce requests sent, resends included.
    pub requests: u64,
    /// Batches acknowledged.
    pub batches: u64,
    /// Records acknowledged.
    pub records: u64,
    /// Resends of batches whose previous request had no definite answer.
    pub resends_in_doubt: u64,
    /// Resends of batches that overtook an earlier one and were refused as out of order.
    pub resends_reordered: u64,
    /// Restarts of a partition's sequence stream under a new epoch (after a refused batch).
    pub epoch_bumps: u64,
}

/// A batching producer. Cheap to clone; clones share batches and the session.
///
/// Created by [`Client::producer`]. See the module docs of `flotilla_client::producer` for
/// how batches are cut and sent; ARCHITECTURE.md (Decisions) for the sequencing rules.
///
/// Guarantees with idempotence (the default): every acknowledged record is in its partition
/// exactly once, however often its batch was resent; records of one partition (so of one key)
/// are appended in `send` order. A record that fails with [`ClientError::DeliveryTimeout`]
/// after being sent may or may not be in the log (still at most once). The guarantees cover
/// one producer: a process that starts over gets a new producer id.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: ProducerConfig,
    producer_id: Option<u64>,
    /// The epoch every partition's stream starts at (`None` without idempotence).
    epoch: Option<u32>,
    context: Arc<ProducerShared>,
    memory: Arc<Semaphore>,
    /// Per topic, per partition index: its sender, started on first use.
    partitions: Mutex<Senders>,
    /// Per topic: where keyless records go now.
    sticky: Mutex<BTreeMap<Arc<str>, Sticky>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// First sticky partition (modulo the partition count).
    sticky_start: u32,
}

/// Partition senders per topic, indexed by partition.
type Senders = BTreeMap<Arc<str>, Vec<Option<Arc<PartitionSender>>>>;

/// What the producer handle and its partition tasks share.
#[derive(Default)]
pub(crate) struct ProducerShared {
    /// Set once a partition fenced the session; every send fails with it from then on.
    pub(crate) fenced: parking_lot::Mutex<Option<ClientError>>,
    /// No more records are accepted.
    pub(crate) closed: AtomicBool,
    pub(crate) requests: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) resends_in_doubt: AtomicU64,
    pub(crate) resends_reordered: AtomicU64,
    pub(crate) epoch_bumps: AtomicU64,
}

/// The sticky partition of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sticky {
    partition: PartitionId,
    /// A record was placed there since it was chosen.
    used: bool,
}

impl Sticky {
    /// Where the next keyless record goes, given whether the current partition has an open
    /// batch: records stay while the batch they fill is open, and move to the next partition
    /// once it has closed (filled up or lingered out), so keyless records form full batches
    /// yet spread over every partition.
    fn place(self, partitions: u32, batch_open: bool) -> Sticky {
        let partitions = partitions.max(1);
        let partition = self.partition % partitions;
        if self.used && !batch_open {
            Sticky { partition: (partition + 1) % partitions, used: true }
        } else {
            Sticky { partition, used: true }
        }
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("producer_id", &self.inner.producer_id)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer over `client`; `producer` is the session (id, epoch) from `InitProducer`
    /// when idempotent.
    pub(crate) fn new(
        client: Client,
        config: ProducerConfig,
        producer: Option<(u64, u32)>,
    ) -> Result<Producer, ClientError> {
        config.validate()?;
        let memory = Arc::new(Semaphore::new(config.buffer_bytes));
        let sticky_start = match producer {
            Some((id, _)) => id as u32,
            None => PRODUCERS_CREATED.fetch_add(1, Ordering::Relaxed),
        };
        let context = Arc::new(ProducerShared::default());
        Ok(Producer {
            inner: Arc::new(Inner {
                client,
                producer_id: producer.map(|(id, _)| id),
                epoch: producer.map(|(_, epoch)| epoch),
                config,
                context,
                memory,
                partitions: Mutex::new(BTreeMap::new()),
                sticky: Mutex::new(BTreeMap::new()),
                tasks: Mutex::new(Vec::new()),
                sticky_start,
            }),
        })
    }

    /// The session's producer id (`None` without idempotence).
    pub fn producer_id(&self) -> Option<u64> {
        self.inner.producer_id
    }

    /// The settings this producer runs with.
    pub fn config(&self) -> &ProducerConfig {
        &self.inner.config
    }

    /// Sends `record` and waits for its acknowledgement: the partition and offset it landed
    /// at. Waits first for buffer room. Records sent concurrently (from clones or other tasks)
    /// share batches.
    pub async fn send(&self, record: ProducerRecord) -> Result<v1::RecordAck, ClientError> {
        self.send_nowait(record).await?.await
    }

    /// Queues `record` and returns a future of its acknowledgement, waiting only for buffer
    /// room: call it in a loop to pipeline. Records to one partition are appended in the order
    /// of these calls. Fails at once if the record breaks a limit, names a partition the topic
    /// lacks, the topic does not exist, or the producer is closed or fenced. Dropping the
    /// returned future does not cancel the record.
    pub async fn send_nowait(&self, record: ProducerRecord) -> Result<DeliveryFuture, ClientError> {
        let inner = &self.inner;
        inner.check_usable()?;
        let ProducerRecord { topic, key, value, headers, partition, timestamp_ms } = record;
        let bytes = record_bytes(key.as_ref(), &value, &headers);
        let record_bytes_max = inner.config.limits.record_bytes_max;
        if bytes > record_bytes_max {
            return Err(ClientError::InvalidRecord {
                topic,
                reason: format!(
                    "the record is {bytes} bytes (key + value + headers); the limit is {record_bytes_max} bytes per record"
                ),
            });
        }
        let partitions = inner.client.partition_count(&topic).await?;
        if partitions == 0 {
            return Err(ClientError::UnknownTopic { topic });
        }
        if let Some(partition) = partition
            && partition >= partitions
        {
            return Err(ClientError::InvalidRecord {
                topic: topic.clone(),
                reason: format!("topic {topic:?} has {partitions} partitions; partition {partition} does not exist"),
            });
        }
        let cost = bytes + RECORD_OVERHEAD_BYTES;
        // `validate` keeps buffer_bytes below 4 GiB, and the record fits in it.
        let permits = inner
            .memory
            .acquire_many(u32::try_from(cost).unwrap_or(u32::MAX))
            .await
            .map_err(|_closed| ClientError::ProducerClosed)?;
        permits.forget();
        let record = v1::Record { key, value, headers, timestamp_ms: timestamp_ms.unwrap_or(0) };
        let topic: Arc<str> = Arc::from(topic);
        let sender = inner.place(&topic, partitions, partition, record.key.as_ref());
        let (reply, receiver) = oneshot::channel();
        match sender.push(record, bytes, reply, Instant::now()) {
            Ok(()) => Ok(DeliveryFuture { receiver }),
            Err(error) => {
                inner.memory.add_permits(cost);
                Err(error)
            }
        }
    }

    /// Sends every record queued so far without waiting out the linger, and waits until each
    /// has its outcome (acknowledged or failed). Records sent concurrently may be waited for
    /// too.
    pub async fn flush(&self) {
        let senders = self.inner.senders();
        let mut waits = Vec::with_capacity(senders.len());
        for sender in &senders {
            waits.push(sender.flush_target());
        }
        for (sender, target) in senders.iter().zip(waits) {
            sender.wait_settled(target).await;
        }
    }

    /// Stops accepting records, flushes what is queued, and stops the partition tasks. Batches
    /// whose outcome is unknown after their delivery timeout are abandoned (their records
    /// already failed with [`ClientError::DeliveryTimeout`]). Later sends fail with
    /// [`ClientError::ProducerClosed`]; closing twice is harmless.
    pub async fn close(&self) {
        self.inner.context.closed.store(true, Ordering::Relaxed);
        self.flush().await;
        for sender in self.inner.senders() {
            sender.close();
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.inner.tasks.lock());
        for task in tasks {
            // A task that panicked has already failed its records (their replies dropped).
            let _ = task.await;
        }
    }

    /// Counters of the work done so far.
    pub fn stats(&self) -> ProducerStats {
        let c = &self.inner.context;
        ProducerStats {
            requests: c.requests.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            resends_in_doubt: c.resends_in_doubt.load(Ordering::Relaxed),
            resends_reordered: c.resends_reordered.load(Ordering::Relaxed),
            epoch_bumps: c.epoch_bumps.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    /// The error every send fails with once the producer is closed or fenced.
    fn check_usable(&self) -> Result<(), ClientError> {
        if let Some(fenced) = self.context.fenced.lock().as_ref() {
            return Err(fenced.clone());
        }
        if self.context.closed.load(Ordering::Relaxed) {
            return Err(ClientError::ProducerClosed);
        }
        Ok(())
    }

    /// The sender of the partition a record goes to: `explicit`, else by key, else the
    /// topic's sticky partition, which moves on once the batch it was filling has closed.
    fn place(
        &self,
        topic: &Arc<str>,
        partitions: u32,
        explicit: Option<PartitionId>,
        key: Option<&bytes::Bytes>,
    ) -> Arc<PartitionSender> {
        if let Some(partition) = explicit {
            return self.sender(topic, partition);
        }
        if let Some(key) = key {
            return self.sender(topic, partition_for_key(key, partitions));
        }
        let mut sticky = self.sticky.lock();
        let entry = sticky
            .entry(Arc::clone(topic))
            .or_insert(Sticky { partition: self.sticky_start % partitions, used: false });
        let current = entry.partition % partitions;
        let batch_open = self.sender(topic, current).has_open_batch();
        *entry = entry.place(partitions, batch_open);
        self.sender(topic, entry.partition)
    }

    /// The sender of `topic`/`partition`, started on first use.
    fn sender(&self, topic: &Arc<str>, partition: PartitionId) -> Arc<PartitionSender> {
        let mut partitions = self.partitions.lock();
        let senders = partitions.entry(Arc::clone(topic)).or_default();
        let index = partition as usize;
        if senders.len() <= index {
            senders.resize(index + 1, None);
        }
        if let Some(sender) = &senders[index] {
            return Arc::clone(sender);
        }
        let context = Arc::new(SenderContext {
            client: self.client.clone(),
            topic: Arc::clone(topic),
            partition,
            producer_id: self.producer_id,
            compression: self.config.compression.encoding(),
            delivery_timeout: self.config.delivery_timeout,
            retry_backoff: self.config.retry_backoff,
            shared: Arc::clone(&self.context),
            memory: Arc::clone(&self.memory),
        });
        let sequencer = Sequencer::new(self.epoch, self.config.max_in_flight_per_partition);
        let sender = Arc::new(PartitionSender::new(self.config.batch_rules(), sequencer));
        let task = tokio::spawn(sender::run(Arc::clone(&sender), context));
        self.tasks.lock().push(task);
        senders[index] = Some(Arc::clone(&sender));
        sender
    }

    /// Every partition sender started so far.
    fn senders(&self) -> Vec<Arc<PartitionSender>> {
        self.partitions.lock().values().flatten().flatten().cloned().collect()
    }
}

impl Drop for Inner {
    /// The last handle is gone: each partition task sends what it holds, then ends.
    fn drop(&mut self) {
        for sender in self.partitions.get_mut().values().flatten().flatten() {
            sender.close();
        }
    }
}

/// The acknowledgement of one record: resolves to its partition and offset, or to why it was
/// not acknowledged.
#[derive(Debug)]
#[must_use = "a DeliveryFuture does nothing unless awaited (the record is sent either way)"]
pub struct DeliveryFuture {
    receiver: oneshot::Receiver<Result<v1::RecordAck, ClientError>>,
}

impl Future for DeliveryFuture {
    type Output = Result<v1::RecordAck, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver).poll(cx).map(|received| match received {
            Ok(outcome) => outcome,
            // The partition task ended without an answer: only a panic does that.
            Err(_dropped) => Err(ClientError::ProducerClosed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyless_records_stick_to_a_partition_until_its_batch_closes() {
        let start = Sticky { partition: 2, used: false };
        let first = start.place(3, false);
        assert_eq!(first, Sticky { partition: 2, used: true }, "the first record opens a batch where it is");
        assert_eq!(first.place(3, true), first, "stays while the batch is open");
        assert_eq!(first.place(3, false), Sticky { partition: 0, used: true }, "moves on, wrapping around");
        // The topic shrank in the metadata (or the start was past it): stay in range.
        assert_eq!(Sticky { partition: 7, used: false }.place(3, false).partition, 1);
    }

    #[test]
    fn config_is_checked_against_the_server_limits() {
        assert!(ProducerConfig::default().validate().is_ok());
        let field = |config: ProducerConfig| match config.validate() {
            Err(ClientError::InvalidConfig { field, .. }) => field,
            other => panic!("expected an invalid config, got {other:?}"),
        };
        let limits = Limits::default();
        assert_eq!(
            field(ProducerConfig { batch_bytes: limits.batch_bytes_max + 1, ..Default::default() }),
            "batch_bytes"
        );
        assert_eq!(
            field(ProducerConfig { batch_records_max: limits.batch_records_max + 1, ..Default::default() }),
            "batch_records_max"
        );
        assert_eq!(
            field(ProducerConfig { max_in_flight_per_partition: 6, ..Default::default() }),
            "max_in_flight_per_partition"
        );
        let plain = ProducerConfig { max_in_flight_per_partition: 64, idempotence: false, ..Default::default() };
        assert!(plain.validate().is_ok(), "without idempotence more may be in flight");
        assert_eq!(field(ProducerConfig { buffer_bytes: 1024, ..Default::default() }), "buffer_bytes");
        assert_eq!(
            field(ProducerConfig { delivery_timeout: Duration::ZERO, ..Default::default() }),
            "delivery_timeout"
        );
    }
}

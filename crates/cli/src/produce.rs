//! `flo produce`: appends stdin lines as records. Lines are batched per partition and each
//! partition has at most one request in flight, so records of one key (one partition) are
//! appended in input order while different partitions proceed in parallel.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, Read};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use flotilla_client::{Client, ClientError, v1};
use flotilla_types::{Limits, PartitionId, partition_for_key};
use futures::FutureExt;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::output::{JsonLine, Output, print_text, thousands};

/// Most records in one produce request.
const BATCH_RECORDS_MAX: usize = 1000;
/// Most record bytes in one produce request (a larger single record still goes alone).
const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Queued records are sent once stdin has been quiet this long...
const LINGER: Duration = Duration::from_millis(5);
/// ...or at the latest this long after the previous flush, when input trickles in steadily.
const FLUSH_INTERVAL_MAX: Duration = Duration::from_millis(50);
/// Records read but not yet acknowledged or failed. Stdin is not read past this, which bounds
/// memory when the cluster is slower than the input.
const UNRESOLVED_MAX: usize = 100_000;
/// Lines read ahead of the batcher.
const READ_AHEAD: usize = 4096;

/// Arguments of `flo produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to append to.
    topic: String,
    /// Key for every record (all then land in one partition, in order).
    #[arg(short, long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Split each line at the first SEP into key and value. A line without SEP is an error.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Send every record to this partition instead of placing it by key (keyed records) or
    /// round-robin per batch (keyless records).
    #[arg(short, long)]
    partition: Option<PartitionId>,
}

/// Reads stdin to the end and produces every line. In JSON mode prints
/// `{"partition":P,"offset":O,"key":K}` per acknowledged record, in input order (`key` is
/// null for keyless records; a key that is not UTF-8 comes as `key_base64`).
pub async fn run(client: &Client, output: Output, args: ProduceArgs) -> anyhow::Result<()> {
    if args.key_separator.as_deref() == Some("") {
        anyhow::bail!("--key-separator must not be empty");
    }
    let partitions = match args.partition {
        Some(_) => None,
        None => Some(client.partition_count(&args.topic).await?),
    };
    let key_mode = match (args.key, args.key_separator) {
        (Some(key), _) => KeyMode::Fixed(Bytes::from(key)),
        (None, Some(separator)) => KeyMode::Separator(separator.into_bytes()),
        (None, None) => KeyMode::None,
    };
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    spawn_stdin_reader(key_mode, tx)?;
    let placement = match (args.partition, partitions) {
        (Some(partition), _) => Placement::Fixed(partition),
        (None, Some(count)) => {
            #[allow(
                clippy::disallowed_methods,
                reason = "the CLI never runs under simulation; any start partition will do"
            )]
            let start = rand::random::<u32>();
            Placement::ByKey { count, sticky: start % count.max(1) }
        }
        (None, None) => Placement::Fixed(0),
    };
    let report = pipeline(client, Arc::from(args.topic.as_str()), placement, rx, output).await?;
    if output == Output::Table && report.acknowledged > 0 {
        let touched: Vec<String> = report.partitions.iter().map(u32::to_string).collect();
        print_text(&format!(
            "produced {} records to {} (partitions {})\n",
            thousands(report.acknowledged),
            args.topic,
            touched.join(", ")
        ))?;
    }
    match (report.failure, report.input_error) {
        (None, None) => Ok(()),
        (Some(reason), _) => {
            let lost = report.read - report.acknowledged;
            Err(reason.context(format!(
                "{} of {} records read were not acknowledged ({} failed, {} not sent after the failure)",
                thousands(lost),
                thousands(report.read),
                thousands(report.failed),
                thousands(lost - report.failed)
            )))
        }
        (None, Some(reason)) => Err(anyhow::anyhow!(
            "{reason:#}; the {} records read before it were acknowledged and the rest of stdin was not read",
            thousands(report.acknowledged)
        )),
    }
}

/// How a line becomes a key and a value.
#[derive(Debug, Clone)]
enum KeyMode {
    None,
    Fixed(Bytes),
    Separator(Vec<u8>),
}

/// Turns line `number` (1-based, without its line break) into a record.
fn parse_line(line: Bytes, number: u64, mode: &KeyMode) -> anyhow::Result<v1::Record> {
    let (key, value) = match mode {
        KeyMode::None => (None, line),
        KeyMode::Fixed(key) => (Some(key.clone()), line),
        KeyMode::Separator(separator) => {
            let at =
                line.windows(separator.len()).position(|window| window == separator.as_slice()).with_context(|| {
                    format!("line {number} has no key separator {:?}", String::from_utf8_lossy(separator))
                })?;
            (Some(line.slice(..at)), line.slice(at + separator.len()..))
        }
    };
    Ok(v1::Record { key, value, headers: Vec::new(), timestamp_ms: 0 })
}

/// Reads stdin on its own thread (a blocked read must not hold up the runtime or its
/// shutdown) and sends one record per line, or the first error, then stops.
fn spawn_stdin_reader(mode: KeyMode, tx: mpsc::Sender<anyhow::Result<v1::Record>>) -> anyhow::Result<()> {
    // Bounds one line's buffer: nothing longer fits in a produce request anyway.
    let line_bytes_max = Limits::default().batch_bytes_max;
    std::thread::Builder::new()
        .name("stdin-reader".into())
        .spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut number = 0u64;
            loop {
                number += 1;
                let mut line = Vec::new();
                let read = (&mut stdin).take(line_bytes_max as u64 + 1).read_until(b'\n', &mut line);
                let item = match read {
                    Ok(0) => return,
                    Ok(_) if line.len() > line_bytes_max && line.last() != Some(&b'\n') => {
                        Err(anyhow::anyhow!("line {number} is longer than {line_bytes_max} bytes"))
                    }
                    Ok(_) => {
                        if line.last() == Some(&b'\n') {
                            line.pop();
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                        }
                        parse_line(Bytes::from(line), number, &mode)
                    }
                    Err(error) => Err(anyhow::Error::new(error).context(format!("reading line {number} of stdin"))),
                };
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
            }
        })
        .context("starting the stdin reader thread")?;
    Ok(())
}

/// How records are assigned to partitions.
#[derive(Debug, Clone, Copy)]
enum Placement {
    /// Every record to one partition.
    Fixed(PartitionId),
    /// Keyed records by murmur2 of the key; keyless ones to `sticky`, which moves to the next
    /// partition whenever a batch for it is sent (Kafka's sticky partitioner), so keyless
    /// records form large batches yet spread over all partitions.
    ByKey { count: u32, sticky: PartitionId },
}

impl Placement {
    fn partition(&self, record: &v1::Record) -> PartitionId {
        match *self {
            Placement::Fixed(partition) => partition,
            Placement::ByKey { count, sticky } => match &record.key {
                Some(key) => partition_for_key(key, count),
                None => sticky,
            },
        }
    }

    fn sent(&mut self, partition: PartitionId) {
        if let Placement::ByKey { count, sticky } = self
            && *sticky == partition
        {
            *sticky = (*sticky + 1) % (*count).max(1);
        }
    }
}

/// What a produce run achieved.
struct Report {
    read: u64,
    acknowledged: u64,
    failed: u64,
    partitions: BTreeSet<PartitionId>,
    /// The first failed request; no batch is sent after it.
    failure: Option<anyhow::Error>,
    /// Why reading stdin stopped early (a malformed line); records before it are sent.
    input_error: Option<anyhow::Error>,
}

/// Batches records from `rx`, keeps one request per partition in flight, and prints acks in
/// input order (JSON mode). After a failed request it stops reading and sending and waits for
/// what is in flight; after a malformed line it sends what it read before it.
async fn pipeline(
    client: &Client,
    topic: Arc<str>,
    mut placement: Placement,
    mut rx: mpsc::Receiver<anyhow::Result<v1::Record>>,
    output: Output,
) -> anyhow::Result<Report> {
    let mut batcher = Batcher::new(BATCH_RECORDS_MAX, BATCH_BYTES_MAX);
    let mut in_order = InOrder::default();
    let mut in_flight = FuturesUnordered::new();
    let mut report =
        Report { read: 0, acknowledged: 0, failed: 0, partitions: BTreeSet::new(), failure: None, input_error: None };
    let mut input_done = false;
    let mut last_input = Instant::now();
    let mut last_flush = Instant::now();
    let dispatch = |batch: Batch, placement: &mut Placement| {
        placement.sent(batch.partition);
        let client = client.clone();
        let topic = Arc::clone(&topic);
        async move {
            let result = client.produce(&topic, Some(batch.partition), batch.records).await;
            (batch.partition, batch.seqs, result)
        }
        .boxed()
    };
    loop {
        if input_done && report.failure.is_none() {
            for batch in batcher.take_all_idle() {
                in_flight.push(dispatch(batch, &mut placement));
            }
        }
        if in_flight.is_empty() && (report.failure.is_some() || (input_done && batcher.is_empty())) {
            break;
        }
        let flush_at = (report.failure.is_none() && batcher.has_idle())
            .then(|| (last_input + LINGER).min(last_flush + FLUSH_INTERVAL_MAX));
        let can_read = !input_done && report.failure.is_none() && in_order.len() < UNRESOLVED_MAX;
        tokio::select! {
            Some((partition, seqs, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let result: Result<Vec<v1::RecordAck>, ClientError> = result;
                match result {
                    Ok(acks) => {
                        report.acknowledged += acks.len() as u64;
                        report.partitions.insert(partition);
                        for (seq, ack) in seqs.into_iter().zip(acks) {
                            in_order.resolve(seq, Some(ack));
                        }
                    }
                    Err(error) => {
                        report.failed += seqs.len() as u64;
                        for seq in seqs {
                            in_order.resolve(seq, None);
                        }
                        if report.failure.is_none() {
                            report.failure = Some(anyhow::Error::new(error).context(format!("producing to partition {partition}")));
                        }
                    }
                }
                drain_ready(&mut in_order, output)?;
                batcher.complete(partition);
                // Records that queued behind this request have waited long enough.
                if report.failure.is_none()
                    && let Some(batch) = batcher.take(partition)
                {
                    in_flight.push(dispatch(batch, &mut placement));
                }
            }
            item = rx.recv(), if can_read => match item {
                None => input_done = true,
                Some(Err(error)) => {
                    // Records read before the bad line are valid: they are still sent.
                    input_done = true;
                    report.input_error = Some(error);
                }
                Some(Ok(record)) => {
                    report.read += 1;
                    last_input = Instant::now();
                    let partition = placement.partition(&record);
                    let seq = in_order.add(record.key.clone());
                    if batcher.push(partition, seq, record)
                        && let Some(batch) = batcher.take(partition)
                    {
                        in_flight.push(dispatch(batch, &mut placement));
                    }
                }
            },
            _ = tokio::time::sleep_until(flush_at.unwrap_or(last_input)), if flush_at.is_some() => {
                last_flush = Instant::now();
                for batch in batcher.take_all_idle() {
                    in_flight.push(dispatch(batch, &mut placement));
                }
            }
            else => anyhow::bail!(
                "produce pipeline stalled with {} records unresolved and nothing in flight (a bug in flo)",
                in_order.len()
            ),
        }
    }
    drain_ready(&mut in_order, output)?;
    Ok(report)
}

/// Drops the outcomes that are next in input order, printing the acks in JSON mode. Called in
/// every mode: undrained outcomes count against the read-ahead bound.
fn drain_ready(in_order: &mut InOrder, output: Output) -> anyhow::Result<()> {
    let mut text = String::new();
    while let Some((key, ack)) = in_order.pop_ready() {
        let Some(ack) = ack.filter(|_| output == Output::Json) else { continue };
        let line =
            JsonLine::new().field("partition", ack.partition).field("offset", ack.offset).bytes("key", key.as_deref());
        text.push_str(&line.finish());
        text.push('\n');
    }
    if text.is_empty() { Ok(()) } else { print_text(&text) }
}

/// Records of one request.
#[derive(Debug)]
struct Batch {
    partition: PartitionId,
    /// Input sequence number of each record.
    seqs: Vec<u64>,
    records: Vec<v1::Record>,
}

/// Per-partition queues of records waiting to be sent, and which partitions have a request
/// in flight. At most one request per partition is in flight, which keeps each partition's
/// records (and so each key's) in input order even when a request is retried.
#[derive(Debug)]
struct Batcher {
    queues: BTreeMap<PartitionId, VecDeque<(u64, v1::Record)>>,
    /// Partitions with a request in flight.
    busy: BTreeSet<PartitionId>,
    /// Partitions with queued records and no request in flight: sent on the next flush.
    idle: BTreeSet<PartitionId>,
    queued: usize,
    records_max: usize,
    bytes_max: usize,
}

impl Batcher {
    fn new(records_max: usize, bytes_max: usize) -> Batcher {
        Batcher {
            queues: BTreeMap::new(),
            busy: BTreeSet::new(),
            idle: BTreeSet::new(),
            queued: 0,
            records_max: records_max.max(1),
            bytes_max,
        }
    }

    /// Queues a record; true when its partition now holds a full batch and is idle.
    fn push(&mut self, partition: PartitionId, seq: u64, record: v1::Record) -> bool {
        let queue = self.queues.entry(partition).or_default();
        queue.push_back((seq, record));
        self.queued += 1;
        let full = queue.len() >= self.records_max;
        if self.busy.contains(&partition) {
            return false;
        }
        self.idle.insert(partition);
        full
    }

    /// Takes the next batch of `partition` and marks it busy, unless it is busy or empty.
    fn take(&mut self, partition: PartitionId) -> Option<Batch> {
        if self.busy.contains(&partition) {
            return None;
        }
        let queue = self.queues.get_mut(&partition)?;
        let mut batch = Batch { partition, seqs: Vec::new(), records: Vec::new() };
        let mut bytes = 0;
        while let Some((_, record)) = queue.front() {
            let size = record_size(record);
            if !batch.records.is_empty() && (batch.records.len() >= self.records_max || bytes + size > self.bytes_max) {
                break;
            }
            bytes += size;
            let Some((seq, record)) = queue.pop_front() else { break };
            batch.seqs.push(seq);
            batch.records.push(record);
        }
        if queue.is_empty() {
            self.queues.remove(&partition);
        }
        self.idle.remove(&partition);
        if batch.records.is_empty() {
            return None;
        }
        self.queued -= batch.records.len();
        self.busy.insert(partition);
        Some(batch)
    }

    /// Takes one batch from every idle partition that has records.
    fn take_all_idle(&mut self) -> Vec<Batch> {
        let idle: Vec<PartitionId> = self.idle.iter().copied().collect();
        idle.into_iter().filter_map(|partition| self.take(partition)).collect()
    }

    /// The request of `partition` finished.
    fn complete(&mut self, partition: PartitionId) {
        self.busy.remove(&partition);
        if self.queues.contains_key(&partition) {
            self.idle.insert(partition);
        }
    }

    /// Whether an idle partition has records waiting.
    fn has_idle(&self) -> bool {
        !self.idle.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.queued == 0
    }
}

/// Bytes a record adds to a request.
fn record_size(record: &v1::Record) -> usize {
    record.key.as_ref().map_or(0, Bytes::len) + record.value.len() + 16
}

/// Outcomes of records in input order: records resolve out of order (partitions run in
/// parallel) but are reported in the order they were read.
#[derive(Debug, Default)]
struct InOrder {
    /// Sequence number of the front slot.
    base: u64,
    /// Per record from `base` on: its key and, once resolved, `Some(ack)` or `Some(None)` for
    /// a failure.
    slots: VecDeque<(Option<Bytes>, Option<Option<v1::RecordAck>>)>,
}

impl InOrder {
    /// Registers the next record read and returns its sequence number.
    fn add(&mut self, key: Option<Bytes>) -> u64 {
        self.slots.push_back((key, None));
        self.base + self.slots.len() as u64 - 1
    }

    /// Records the outcome of record `seq`: its ack, or `None` if it failed.
    fn resolve(&mut self, seq: u64, ack: Option<v1::RecordAck>) {
        let index = seq.checked_sub(self.base).and_then(|i| usize::try_from(i).ok());
        if let Some(slot) = index.and_then(|i| self.slots.get_mut(i)) {
            slot.1 = Some(ack);
        }
    }

    /// The next record in input order, if it is resolved: its key and ack (`None` if failed).
    fn pop_ready(&mut self) -> Option<(Option<Bytes>, Option<v1::RecordAck>)> {
        if self.slots.front().is_some_and(|(_, outcome)| outcome.is_some()) {
            let (key, outcome) = self.slots.pop_front()?;
            self.base += 1;
            return Some((key, outcome.flatten()));
        }
        None
    }

    /// Records registered and not yet popped.
    fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: Option<&str>, value: &str) -> v1::Record {
        v1::Record {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: Bytes::copy_from_slice(value.as_bytes()),
            ..Default::default()
        }
    }

    #[test]
    fn lines_split_at_the_first_separator() {
        let mode = KeyMode::Separator(b"::".to_vec());
        let parsed = parse_line(Bytes::from_static(b"user-1::a::b"), 1, &mode).expect("has separator");
        assert_eq!(parsed.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(&parsed.value[..], b"a::b");
        let empty_key = parse_line(Bytes::from_static(b"::v"), 2, &mode).expect("has separator");
        assert_eq!(empty_key.key.as_deref(), Some(&b""[..]));
        let error = parse_line(Bytes::from_static(b"no separator"), 17, &mode).expect_err("missing");
        assert!(error.to_string().contains("line 17"), "{error}");
        let fixed = parse_line(Bytes::from_static(b"v"), 1, &KeyMode::Fixed(Bytes::from_static(b"k"))).expect("ok");
        assert_eq!(fixed.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(parse_line(Bytes::from_static(b"v"), 1, &KeyMode::None).expect("ok").key, None);
    }

    #[test]
    fn one_request_per_partition_and_batches_respect_caps() {
        let mut batcher = Batcher::new(3, 1 << 20);
        for seq in 0..7 {
            let full = batcher.push(0, seq, record(None, "x"));
            assert_eq!(full, seq == 2, "seq {seq}");
            if full {
                let batch = batcher.take(0).expect("records queued");
                assert_eq!(batch.seqs, [0, 1, 2]);
            }
        }
        // Partition 0 is busy: nothing more is taken until its request completes.
        assert!(batcher.take(0).is_none());
        assert!(batcher.take_all_idle().is_empty());
        batcher.push(1, 7, record(None, "y"));
        let idle = batcher.take_all_idle();
        assert_eq!(idle.len(), 1);
        assert_eq!(idle[0].partition, 1);
        batcher.complete(0);
        assert_eq!(batcher.take(0).expect("queued").seqs, [3, 4, 5]);
        batcher.complete(0);
        assert_eq!(batcher.take(0).expect("queued").seqs, [6]);
        batcher.complete(0);
        batcher.complete(1);
        assert!(batcher.is_empty());
        assert!(!batcher.has_idle());
    }

    #[test]
    fn byte_cap_splits_batches_but_a_large_record_still_goes() {
        let mut batcher = Batcher::new(100, 100);
        let big = "x".repeat(500);
        batcher.push(0, 0, record(None, &big));
        batcher.push(0, 1, record(None, "small"));
        assert_eq!(batcher.take(0).expect("queued").seqs, [0]);
        batcher.complete(0);
        assert_eq!(batcher.take(0).expect("queued").seqs, [1]);
    }

    #[test]
    fn acks_are_reported_in_input_order() {
        let mut in_order = InOrder::default();
        let seqs: Vec<u64> = (0..4).map(|i| in_order.add(Some(Bytes::from(format!("k{i}"))))).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        in_order.resolve(1, Some(v1::RecordAck { partition: 1, offset: 10 }));
        assert!(in_order.pop_ready().is_none(), "record 0 is still pending");
        in_order.resolve(0, None);
        in_order.resolve(3, Some(v1::RecordAck { partition: 0, offset: 5 }));
        let (key, ack) = in_order.pop_ready().expect("record 0 resolved");
        assert_eq!((key.as_deref(), ack), (Some(&b"k0"[..]), None));
        assert_eq!(in_order.pop_ready().expect("record 1").1, Some(v1::RecordAck { partition: 1, offset: 10 }));
        assert!(in_order.pop_ready().is_none(), "record 2 is still pending");
        assert_eq!(in_order.len(), 2);
        in_order.resolve(2, Some(v1::RecordAck { partition: 2, offset: 0 }));
        assert_eq!(in_order.pop_ready().expect("record 2").1.map(|a| a.partition), Some(2));
        assert_eq!(in_order.pop_ready().expect("record 3").1.map(|a| a.offset), Some(5));
        assert_eq!(in_order.len(), 0);
    }

    #[test]
    fn keyless_records_stick_to_a_partition_until_it_is_sent() {
        let mut placement = Placement::ByKey { count: 3, sticky: 2 };
        assert_eq!(placement.partition(&record(None, "a")), 2);
        placement.sent(1);
        assert_eq!(placement.partition(&record(None, "a")), 2, "another partition's batch leaves it alone");
        placement.sent(2);
        assert_eq!(placement.partition(&record(None, "a")), 0);
        assert_eq!(placement.partition(&record(Some("k"), "a")), partition_for_key(b"k", 3));
    }
}

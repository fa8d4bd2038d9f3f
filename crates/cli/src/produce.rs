//! `flo produce`: appends stdin lines as records through the SDK's [`Producer`], which
//! batches them per partition (linger, batch bytes), keeps several requests per partition in
//! flight and, by default, is idempotent: a batch retried after a leader change is appended
//! once. Acknowledgements are reported in input order.

use std::collections::BTreeSet;
use std::io::{BufRead, Read};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use flotilla_client::{Client, ClientError, Compression, DeliveryFuture, ProducerConfig, ProducerRecord, v1};
use flotilla_types::{Limits, PartitionId};
use futures::FutureExt;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;

use crate::output::{JsonLine, Output, print_text, thousands};

/// Records read but not yet acknowledged or failed. Stdin is not read past this, which bounds
/// memory when the cluster is slower than the input (the producer's buffer bounds it too).
const UNRESOLVED_MAX: usize = 100_000;
/// Lines read ahead of the producer.
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
    /// sticking to one partition per batch (keyless records).
    #[arg(short, long)]
    partition: Option<PartitionId>,
    /// Produce without a producer session: at-least-once, so a batch retried after an
    /// ambiguous failure (a timeout, a leader change) may be appended twice.
    #[arg(long)]
    no_idempotence: bool,
    /// How long a batch waits for more lines after its first, in milliseconds.
    #[arg(long, default_value_t = 5, value_name = "MS")]
    linger_ms: u64,
    /// Record bytes (key + value) that close a batch; a larger single line still goes alone.
    #[arg(long, default_value_t = 1024 * 1024, value_name = "BYTES")]
    batch_bytes: usize,
    /// gRPC compression of produce requests (records are stored uncompressed).
    #[arg(long, value_enum, default_value_t = CompressionArg::None)]
    compression: CompressionArg,
}

/// `--compression` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// No compression.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl From<CompressionArg> for Compression {
    fn from(arg: CompressionArg) -> Compression {
        match arg {
            CompressionArg::None => Compression::None,
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
        }
    }
}

/// Reads stdin to the end and produces every line. In JSON mode prints
/// `{"partition":P,"offset":O,"key":K}` per acknowledged record, in input order (`key` is
/// null for keyless records; a key that is not UTF-8 comes as `key_base64`).
pub async fn run(client: &Client, output: Output, args: ProduceArgs) -> anyhow::Result<()> {
    if args.key_separator.as_deref() == Some("") {
        anyhow::bail!("--key-separator must not be empty");
    }
    // Fails early, naming the topic, if it does not exist.
    client.partition_count(&args.topic).await?;
    let config = ProducerConfig {
        linger: Duration::from_millis(args.linger_ms),
        batch_bytes: args.batch_bytes,
        idempotence: !args.no_idempotence,
        compression: args.compression.into(),
        ..ProducerConfig::default()
    };
    let producer = client.producer(config).await.context("starting the producer")?;
    let key_mode = match (args.key, args.key_separator) {
        (Some(key), _) => KeyMode::Fixed(Bytes::from(key)),
        (None, Some(separator)) => KeyMode::Separator(separator.into_bytes()),
        (None, None) => KeyMode::None,
    };
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    spawn_stdin_reader(key_mode, tx)?;
    let report = pipeline(&producer, &args.topic, args.partition, rx, output).await;
    producer.close().await;
    let report = report?;
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
            Err(anyhow::Error::new(reason).context(format!(
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

/// What a produce run achieved.
struct Report {
    read: u64,
    acknowledged: u64,
    failed: u64,
    partitions: BTreeSet<PartitionId>,
    /// The first record that failed; nothing more is read after it.
    failure: Option<ClientError>,
    /// Why reading stdin stopped early (a malformed line); records before it are sent.
    input_error: Option<anyhow::Error>,
}

/// Hands records from `rx` to the producer and reports their outcomes in input order (JSON
/// mode). After a failed record it stops reading and waits for what is in flight; after a
/// malformed line it sends what it read before it.
async fn pipeline(
    producer: &flotilla_client::Producer,
    topic: &str,
    partition: Option<PartitionId>,
    mut rx: mpsc::Receiver<anyhow::Result<v1::Record>>,
    output: Output,
) -> anyhow::Result<Report> {
    // Per record in input order: its key (for the JSON line) and its acknowledgement.
    let mut pending = FuturesOrdered::new();
    let mut report =
        Report { read: 0, acknowledged: 0, failed: 0, partitions: BTreeSet::new(), failure: None, input_error: None };
    let mut input_done = false;
    loop {
        if pending.is_empty() && (input_done || report.failure.is_some()) {
            break;
        }
        let can_read = !input_done && report.failure.is_none() && pending.len() < UNRESOLVED_MAX;
        tokio::select! {
            Some(first) = pending.next(), if !pending.is_empty() => {
                let first: (Option<Bytes>, Result<v1::RecordAck, ClientError>) = first;
                let mut text = String::new();
                // Whatever else is already resolved goes out in the same write.
                let ready = std::iter::once(first).chain(std::iter::from_fn(|| pending.next().now_or_never().flatten()));
                for (key, outcome) in ready {
                    match outcome {
                        Ok(ack) => {
                            report.acknowledged += 1;
                            report.partitions.insert(ack.partition);
                            if output == Output::Json {
                                text.push_str(&ack_line(&ack, key.as_deref()));
                                text.push('\n');
                            }
                        }
                        Err(error) => {
                            report.failed += 1;
                            report.failure.get_or_insert(error);
                        }
                    }
                }
                if !text.is_empty() {
                    print_text(&text)?;
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
                    let key = record.key.clone();
                    let mut produced = ProducerRecord::new(topic, record.value);
                    produced.key = record.key;
                    produced.partition = partition;
                    match producer.send_nowait(produced).await {
                        Ok(delivery) => pending.push_back(keyed(key, delivery)),
                        Err(error) => {
                            report.failed += 1;
                            report.failure.get_or_insert(error);
                        }
                    }
                }
            },
            else => anyhow::bail!(
                "produce pipeline stalled with {} records unresolved (a bug in flo)",
                pending.len()
            ),
        }
    }
    Ok(report)
}

/// A record's acknowledgement together with its key.
async fn keyed(key: Option<Bytes>, delivery: DeliveryFuture) -> (Option<Bytes>, Result<v1::RecordAck, ClientError>) {
    (key, delivery.await)
}

/// The JSON line of one acknowledged record.
fn ack_line(ack: &v1::RecordAck, key: Option<&[u8]>) -> String {
    JsonLine::new().field("partition", ack.partition).field("offset", ack.offset).bytes("key", key).finish()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn ack_lines_carry_partition_offset_and_key() {
        let ack = v1::RecordAck { partition: 2, offset: 17 };
        assert_eq!(ack_line(&ack, Some(b"k1")), r#"{"partition":2,"offset":17,"key":"k1"}"#);
        assert_eq!(ack_line(&ack, None), r#"{"partition":2,"offset":17,"key":null}"#);
    }
}

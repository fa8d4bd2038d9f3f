//! `flo consume`: prints records of a topic as they arrive, fetching every partition
//! concurrently with long polls; with `--group`, as a member of a consumer group that commits
//! what it printed.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flotilla_client::{Client, Consumer, ConsumerConfig, ErrorCode, v1};
use flotilla_types::{Offset, PartitionId};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::output::{JsonLine, Output};

/// Records asked for per fetch.
const FETCH_RECORDS_MAX: u32 = 1000;
/// Bytes asked for per fetch.
const FETCH_BYTES_MAX: u32 = 4 * 1024 * 1024;
/// Long-poll wait per fetch: how long a fetch waits on the server for a first record.
const LONG_POLL_MS: u32 = 1000;
/// Idle timeout when neither --count nor --timeout-ms nor --follow is given.
const IDLE_TIMEOUT_DEFAULT_MS: u64 = 5000;
/// Fetched batches buffered ahead of the printer, per topic.
const BATCHES_AHEAD: usize = 64;

/// Arguments of `flo consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Start every partition (or the one given by --partition) at its first retained record.
    /// Without it, only records produced from now on are printed.
    #[arg(long, conflicts_with_all = ["offset", "group"])]
    from_beginning: bool,
    /// Consume as a member of this consumer group: the group's members split the partitions,
    /// each printed batch is committed, and a restarted member resumes after the last commit.
    /// Partitions the group never committed start at their first retained record.
    #[arg(short, long, conflicts_with_all = ["partition", "offset"])]
    group: Option<String>,
    /// With --group: the coordinator hands this member's partitions to the others after this
    /// long without a heartbeat (killed process, lost network).
    #[arg(long, value_name = "MS", default_value_t = 10_000, requires = "group")]
    session_timeout_ms: u64,
    /// Read only this partition.
    #[arg(short, long)]
    partition: Option<PartitionId>,
    /// Start at this offset of --partition.
    #[arg(long, requires = "partition")]
    offset: Option<Offset>,
    /// Stop after printing N records.
    #[arg(short = 'n', long, value_name = "N")]
    count: Option<u64>,
    /// Stop after MS milliseconds without a new record. Default: 5000 when --count is not
    /// given; with --count, wait until N records have arrived.
    #[arg(long, value_name = "MS", conflicts_with = "follow")]
    timeout_ms: Option<u64>,
    /// Never stop for lack of records: keep printing new ones until interrupted.
    #[arg(short, long)]
    follow: bool,
}

/// Records of one fetch.
struct Fetched {
    partition: PartitionId,
    records: Vec<v1::FetchedRecord>,
}

/// Prints records until --count records are printed, the idle timeout passes, or a fetch
/// fails. Records of one partition print in offset order; partitions interleave.
pub async fn run(client: &Client, output: Output, args: ConsumeArgs) -> anyhow::Result<()> {
    let idle = match (args.follow, args.timeout_ms, args.count) {
        (true, _, _) => None,
        (false, Some(ms), _) => Some(Duration::from_millis(ms)),
        (false, None, Some(_)) => None,
        (false, None, None) => Some(Duration::from_millis(IDLE_TIMEOUT_DEFAULT_MS)),
    };
    if let Some(group) = &args.group {
        return run_group_member(client, output, &args, group, idle).await;
    }
    let starts = start_offsets(client, &args).await?;
    let (tx, mut rx) = mpsc::channel(BATCHES_AHEAD);
    // Dropping the set when this function returns aborts every fetch loop.
    let mut fetchers = JoinSet::new();
    for (partition, offset) in starts {
        fetchers.spawn(fetch_loop(client.clone(), args.topic.clone(), partition, offset, tx.clone()));
    }
    drop(tx);
    let mut printed = 0u64;
    loop {
        let next = match idle {
            Some(idle) => match tokio::time::timeout_at(Instant::now() + idle, rx.recv()).await {
                Ok(next) => next,
                Err(_elapsed) => return Ok(()),
            },
            None => rx.recv().await,
        };
        let Some(fetched) = next else { return Ok(()) };
        let fetched = fetched?;
        let mut text = String::new();
        for fetched_record in &fetched.records {
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
            let record = fetched_record.record.clone().unwrap_or_default();
            format_record(&mut text, output, fetched.partition, fetched_record.offset, &record);
            printed += 1;
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        if args.count.is_some_and(|count| printed >= count) {
            return Ok(());
        }
    }
}

/// `flo consume --group`: polls as a group member, prints, then commits what it printed, so
/// a member killed between the two re-delivers only records after its last commit. Leaves the
/// group on the way out (count reached, idle timeout, Ctrl-C) so its partitions move at once.
async fn run_group_member(
    client: &Client,
    output: Output,
    args: &ConsumeArgs,
    group: &str,
    idle: Option<Duration>,
) -> anyhow::Result<()> {
    let mut config = ConsumerConfig::new(group, vec![args.topic.clone()]);
    config.client_id = format!("flo-{}", std::process::id());
    config.session_timeout = Duration::from_millis(args.session_timeout_ms);
    config.fetch_max_records = FETCH_RECORDS_MAX;
    config.fetch_max_bytes = FETCH_BYTES_MAX;
    let consumer = Consumer::new(client.clone(), config);
    let outcome = tokio::select! {
        outcome = print_as_member(&consumer, output, args, idle) => outcome,
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let closed = consumer.close().await;
    outcome?;
    closed.with_context(|| format!("leaving group {group:?}"))
}

async fn print_as_member(
    consumer: &Consumer,
    output: Output,
    args: &ConsumeArgs,
    idle: Option<Duration>,
) -> anyhow::Result<()> {
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    loop {
        let wait = idle.map_or(Duration::from_secs(1), |idle| idle.saturating_sub(last_record.elapsed()));
        let records = consumer.poll(wait).await?;
        if records.is_empty() {
            if idle.is_some_and(|idle| last_record.elapsed() >= idle) {
                return Ok(());
            }
            continue;
        }
        last_record = Instant::now();
        let mut text = String::new();
        let mut unprinted: Vec<(PartitionId, Offset)> = Vec::new();
        for consumed in &records {
            if args.count.is_some_and(|count| printed >= count) {
                // Hand these back: the commit below must cover printed records only.
                if !unprinted.iter().any(|(p, _)| *p == consumed.partition) {
                    unprinted.push((consumed.partition, consumed.offset));
                }
                continue;
            }
            let record = v1::Record {
                key: consumed.key.clone(),
                value: consumed.value.clone(),
                headers: consumed.headers.clone(),
                timestamp_ms: consumed.timestamp_ms,
            };
            format_record(&mut text, output, consumed.partition, consumed.offset, &record);
            printed += 1;
        }
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        stdout.flush()?;
        drop(stdout);
        for (partition, offset) in unprinted {
            consumer.seek(&args.topic, partition, offset)?;
        }
        match consumer.commit().await {
            Ok(()) => {}
            // Evicted (e.g. paused past the session timeout): the partitions went to other
            // members, which re-deliver from the last commit; this one rejoins by itself.
            Err(err) if err.code() == Some(ErrorCode::UnknownMember) => {
                eprintln!("warning: {err}; the member rejoins the group");
            }
            Err(err) => return Err(err).context("committing printed records"),
        }
        if args.count.is_some_and(|count| printed >= count) {
            return Ok(());
        }
    }
}

/// Where each partition starts.
async fn start_offsets(client: &Client, args: &ConsumeArgs) -> anyhow::Result<Vec<(PartitionId, Offset)>> {
    if let (Some(partition), Some(offset)) = (args.partition, args.offset) {
        return Ok(vec![(partition, offset)]);
    }
    let mut offsets = client.list_offsets(&args.topic).await?;
    offsets.sort_by_key(|o| o.partition);
    if let Some(partition) = args.partition {
        offsets.retain(|o| o.partition == partition);
        if offsets.is_empty() {
            anyhow::bail!("topic {:?} has no partition {partition}", args.topic);
        }
    }
    Ok(offsets
        .into_iter()
        .map(|o| (o.partition, if args.from_beginning { o.log_start_offset } else { o.high_watermark }))
        .collect())
}

/// Fetches one partition from `offset` on and sends what arrives. Loops until the printer
/// hangs up or a fetch fails (after the client's retries); every fetch is bounded by the
/// request timeout plus the long-poll wait.
async fn fetch_loop(
    client: Client,
    topic: String,
    partition: PartitionId,
    mut offset: Offset,
    tx: mpsc::Sender<anyhow::Result<Fetched>>,
) {
    loop {
        let started = Instant::now();
        let result = client.fetch(&topic, partition, offset, FETCH_RECORDS_MAX, FETCH_BYTES_MAX, LONG_POLL_MS).await;
        let result = result
            .map_err(anyhow::Error::new)
            .and_then(|response| check_contiguous(offset, response.records))
            .with_context(|| format!("fetching {topic}/{partition} at offset {offset}"));
        let records = match result {
            Ok(records) => records,
            Err(error) => {
                let _ = tx.send(Err(error)).await;
                return;
            }
        };
        let Some(last) = records.last() else {
            // Nothing new. A server that answers at once instead of waiting must not turn
            // this loop into a busy loop.
            if started.elapsed() < Duration::from_millis(u64::from(LONG_POLL_MS) / 2) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        offset = last.offset + 1;
        if tx.send(Ok(Fetched { partition, records })).await.is_err() {
            return;
        }
    }
}

/// Checks that fetched records run densely from `offset` (the API promises a contiguous run);
/// a gap would mean records silently skipped.
fn check_contiguous(offset: Offset, records: Vec<v1::FetchedRecord>) -> anyhow::Result<Vec<v1::FetchedRecord>> {
    for (i, record) in records.iter().enumerate() {
        let expected = offset + i as u64;
        if record.offset != expected {
            anyhow::bail!("the server returned offset {} where offset {expected} was expected", record.offset);
        }
    }
    Ok(records)
}

/// Appends one record as a line: JSON, or `partition<TAB>offset<TAB>key<TAB>value`.
fn format_record(text: &mut String, output: Output, partition: PartitionId, offset: Offset, record: &v1::Record) {
    match output {
        Output::Json => {
            let mut line = JsonLine::new()
                .field("partition", partition)
                .field("offset", offset)
                .bytes("key", record.key.as_deref())
                .bytes("value", Some(&record.value))
                .field("timestamp", record.timestamp_ms);
            if !record.headers.is_empty() {
                let headers: Vec<String> = record
                    .headers
                    .iter()
                    .map(|header| {
                        JsonLine::new().field("key", header.key.as_str()).bytes("value", Some(&header.value)).finish()
                    })
                    .collect();
                line = line.raw("headers", &format!("[{}]", headers.join(",")));
            }
            text.push_str(&line.finish());
        }
        Output::Table => {
            let key = record.key.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
            text.push_str(&format!("{partition}\t{offset}\t{key}\t{}", String::from_utf8_lossy(&record.value)));
        }
    }
    text.push('\n');
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn fetched(offset: u64, key: Option<&[u8]>, value: &[u8]) -> v1::FetchedRecord {
        v1::FetchedRecord {
            offset,
            record: Some(v1::Record {
                key: key.map(Bytes::copy_from_slice),
                value: Bytes::copy_from_slice(value),
                headers: Vec::new(),
                timestamp_ms: 1700,
            }),
        }
    }

    fn print(text: &mut String, output: Output, partition: PartitionId, fetched: &v1::FetchedRecord) {
        format_record(text, output, partition, fetched.offset, fetched.record.as_ref().expect("record"));
    }

    #[test]
    fn records_print_as_json_with_base64_for_binary_values() {
        let mut text = String::new();
        print(&mut text, Output::Json, 2, &fetched(7, Some(b"k"), b"hello"));
        print(&mut text, Output::Json, 2, &fetched(8, None, &[0xff, 0xfe]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], r#"{"partition":2,"offset":7,"key":"k","value":"hello","timestamp":1700}"#);
        assert_eq!(lines[1], r#"{"partition":2,"offset":8,"key":null,"value_base64":"//4=","timestamp":1700}"#);
        let mut table = String::new();
        print(&mut table, Output::Table, 0, &fetched(3, None, b"v w"));
        assert_eq!(table, "0\t3\t\tv w\n");
    }

    #[test]
    fn gaps_in_fetched_offsets_are_errors() {
        assert!(check_contiguous(5, vec![fetched(5, None, b""), fetched(6, None, b"")]).is_ok());
        assert!(check_contiguous(5, vec![fetched(6, None, b"")]).is_err());
        assert!(check_contiguous(5, vec![fetched(5, None, b""), fetched(7, None, b"")]).is_err());
    }
}

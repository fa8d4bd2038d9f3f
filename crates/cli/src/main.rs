//! `flo`: the Flotilla command-line client. Parses the command line, runs one command against
//! the cluster and maps failures to exit codes (1 for server and user errors, 2 for usage
//! errors, which clap reports itself).

mod bench;
mod bench_consume;
mod cluster;
mod consume;
mod group;
mod output;
mod produce;
mod topic;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_client::{Client, ClientConfig};

use crate::output::Output;

/// Command-line client for Flotilla, a Raft-replicated log and message queue.
#[derive(Debug, Parser)]
#[command(name = "flo", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, clap::Args)]
struct Global {
    /// Client addresses of brokers, HOST:PORT, comma-separated. One live broker is enough;
    /// the client learns the others from it.
    #[arg(
        long,
        env = "FLOTILLA_BROKERS",
        value_delimiter = ',',
        default_value = flotilla_client::LOCAL_CLUSTER,
        global = true
    )]
    brokers: Vec<String>,

    /// Output format: `table` for people, `json` for programs.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,

    /// Timeout of each request to a broker, in milliseconds. Failed requests are retried
    /// (up to 10 times) before a command gives up; a fetch adds its long-poll wait.
    #[arg(long, default_value_t = 10_000, value_name = "MS", global = true)]
    request_timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Cluster membership and health.
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// Create, list, describe and delete topics.
    Topic {
        #[command(subcommand)]
        command: topic::TopicCommand,
    },
    /// Append records read from stdin, one per line.
    ///
    /// Lines go through the SDK's producer: batched per partition (a batch closes at
    /// --batch-bytes or 10,000 records, or --linger-ms after its first line), sent straight to
    /// partition leaders with up to 5 requests per partition in flight. The producer is
    /// idempotent unless --no-idempotence: a batch retried after a leader change is appended
    /// once, and records with the same key keep their input order.
    ///
    /// Table output: one summary line. JSON output: `{"partition":P,"offset":O,"key":K}` per
    /// acknowledged record, in input order; `key` is null for keyless records, and a key that
    /// is not valid UTF-8 comes as `key_base64` (standard base64) instead.
    ///
    /// Exits with 1, saying how many records were not acknowledged and why, when a record
    /// fails; stdin is not read after a failure (records already queued are still sent). A
    /// malformed line stops reading; the lines before it are still sent.
    Produce(produce::ProduceArgs),
    /// Print records of a topic as they arrive.
    ///
    /// All partitions (or --partition) are fetched concurrently with long polls; within a
    /// partition records print in offset order. Without --from-beginning or --offset only
    /// records produced from now on are printed.
    ///
    /// Table output: `partition<TAB>offset<TAB>key<TAB>value` per record (bytes that are not
    /// UTF-8 are replaced). JSON output: one line per record,
    /// `{"partition":P,"offset":O,"key":K,"value":V,"timestamp":T}` plus `"headers"` when the
    /// record has any. Keys and values are strings when they are valid UTF-8; otherwise they
    /// come as `key_base64` / `value_base64` (standard base64) instead. `key` is null for
    /// keyless records; `timestamp` is milliseconds since the Unix epoch.
    ///
    /// With --group, the process joins a consumer group: members split the partitions, each
    /// printed batch is committed, and when a member dies the others take over its partitions
    /// after its session timeout, resuming after its last commit.
    Consume(consume::ConsumeArgs),
    /// List, describe (members, lag) and reset consumer groups.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
    },
    /// Measure throughput and latency against the cluster.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        // `flo consume | head` closes our stdout on purpose: that is not a failure.
        Err(error) if is_broken_pipe(&error) => 0,
        Err(error) => {
            eprintln!("error: {error:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    // Exit without dropping the runtime: dropping it would wait for the stdin reader thread
    // of `produce`, which blocks until the user types another line.
    std::process::exit(code)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Global { brokers, output, request_timeout_ms } = cli.global;
    let config = ClientConfig { request_timeout: Duration::from_millis(request_timeout_ms), ..Default::default() };
    let brokers: Vec<String> = brokers.into_iter().map(|b| b.trim().to_string()).filter(|b| !b.is_empty()).collect();
    if brokers.is_empty() {
        anyhow::bail!("no broker address given: set --brokers or FLOTILLA_BROKERS to HOST:PORT[,HOST:PORT...]");
    }
    let client = Client::connect(brokers, config)?;
    match cli.command {
        Command::Cluster { command } => cluster::run(&client, output, command).await,
        Command::Topic { command } => topic::run(&client, output, command).await,
        Command::Produce(args) => produce::run(&client, output, args).await,
        Command::Consume(args) => consume::run(&client, output, args).await,
        Command::Group { command } => group::run(&client, output, command).await,
        Command::Bench { command } => bench::run(&client, output, command).await,
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (warnings only by default), so they never mix
/// with the records and JSON on stdout.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn brokers_default_to_the_dev_cluster_and_split_on_commas() {
        let cli = Cli::try_parse_from(["flo", "topic", "list"]).expect("parses");
        assert_eq!(cli.global.brokers, ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]);
        let cli = Cli::try_parse_from(["flo", "topic", "list", "--brokers", "a:1,b:2", "-o", "json"]).expect("parses");
        assert_eq!(cli.global.brokers, ["a:1", "b:2"]);
        assert_eq!(cli.global.output, Output::Json);
    }
}

//! The `flotilla` server binary: reads flags, environment and an optional TOML file, opens
//! RocksDB, binds the sockets and runs the node until SIGTERM or Ctrl-C.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use flotilla_proto::net::{tcp_connector, tcp_incoming};
use flotilla_server::{FileConfig, NodeConfig, NodeSeams, RocksFileConfig, parse_initial_cluster, run, serve_http};
use flotilla_storage_rocks::{RocksConfig, RocksEngine};
use flotilla_types::SystemClock;

/// A Flotilla node: a Raft-replicated log and message queue server.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about)]
struct Flags {
    /// This node's id (a positive integer, never reused by another node).
    #[arg(long, env = "FLOTILLA_NODE_ID")]
    node_id: Option<u64>,
    /// Directory holding this node's data; created if missing.
    #[arg(long, env = "FLOTILLA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Client gRPC address (host:port). Also what other nodes tell clients to use.
    #[arg(long, env = "FLOTILLA_LISTEN")]
    listen: Option<String>,
    /// Node-to-node (Raft) address (host:port).
    #[arg(long, env = "FLOTILLA_PEER_LISTEN")]
    peer_listen: Option<String>,
    /// HTTP address for /health and /metrics (host:port).
    #[arg(long, env = "FLOTILLA_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Peer addresses of the initial metadata voters: "1=host:port,2=host:port,3=host:port".
    #[arg(long, env = "FLOTILLA_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// TOML configuration file; flags and FLOTILLA_* variables override its values.
    #[arg(long, env = "FLOTILLA_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: "text" or "json".
    #[arg(long, env = "FLOTILLA_LOG_FORMAT")]
    log_format: Option<String>,
    /// Log filter, e.g. "info" or "flotilla_server=debug,info".
    #[arg(long, env = "FLOTILLA_LOG_LEVEL")]
    log_level: Option<String>,
}

/// The test-only switch that turns the engine's fsync off (`flotilla-chaos --power-loss
/// --unsafe-no-sync` sets it to prove the harness catches lost writes). Deliberately not a
/// flag or a configuration key, and not in `--help`: nobody should find it by accident.
const UNSAFE_NO_SYNC: &str = "FLOTILLA_TEST_UNSAFE_NO_SYNC";

/// Whether [`UNSAFE_NO_SYNC`] asks for the engine without fsync: only the exact value `1`;
/// any other value is refused rather than guessed at.
fn unsafe_no_sync_requested() -> anyhow::Result<bool> {
    match std::env::var_os(UNSAFE_NO_SYNC) {
        None => Ok(false),
        Some(value) if value == "1" => Ok(true),
        Some(value) => bail!("{UNSAFE_NO_SYNC}={value:?}: the only accepted value is 1 (and it disables fsync)"),
    }
}

fn rocks_config(file: RocksFileConfig) -> RocksConfig {
    let defaults = RocksConfig::default();
    RocksConfig {
        write_buffer_bytes: file.write_buffer_bytes.unwrap_or(defaults.write_buffer_bytes),
        block_cache_bytes: file.block_cache_bytes.unwrap_or(defaults.block_cache_bytes),
        max_background_jobs: file.max_background_jobs.unwrap_or(defaults.max_background_jobs),
        enable_blob_files: file.enable_blob_files.unwrap_or(defaults.enable_blob_files),
        min_blob_bytes: file.min_blob_bytes.unwrap_or(defaults.min_blob_bytes),
        enable_blob_gc: file.enable_blob_gc.unwrap_or(defaults.enable_blob_gc),
        compress_blobs: file.compress_blobs.unwrap_or(defaults.compress_blobs),
    }
}

/// A fresh seed for openraft's election-timeout RNG: production wants nodes to differ.
#[allow(clippy::disallowed_methods, reason = "the production binary seeds from the OS; simulations pass fixed seeds")]
fn os_seed() -> u64 {
    rand::random()
}

fn init_tracing(format: &str, level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level).with_context(|| format!("bad --log-level {level:?}"))?;
    // Colour only for a person at a terminal; log files and shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => bail!("--log-format {other:?} is not \"text\" or \"json\""),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match serve(Flags::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // One line naming what was wrong, not a backtrace: this is what an operator reads.
            eprintln!("error: {err:#}");
            // A storage fault has its own status, so a supervisor can tell a failed disk from a
            // crash or a refusal to start.
            match err.downcast_ref::<flotilla_server::NodeError>() {
                // Exit now: returning would drop the runtime, which waits for its blocking
                // threads, and one may be stuck on the failed disk forever.
                Some(node_error @ flotilla_server::NodeError::StorageFailed(_)) => {
                    std::process::exit(i32::from(node_error.exit_status()))
                }
                Some(node_error) => std::process::ExitCode::from(node_error.exit_status()),
                None => std::process::ExitCode::FAILURE,
            }
        }
    }
}

async fn serve(flags: Flags) -> anyhow::Result<()> {
    let file: FileConfig = match &flags.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading --config {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing --config {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let log_format = flags.log_format.or(file.log_format).unwrap_or_else(|| "text".into());
    let log_level = flags.log_level.or(file.log_level).unwrap_or_else(|| "info".into());
    init_tracing(&log_format, &log_level)?;

    let node_id = flags.node_id.or(file.node_id).context("--node-id is required (or node_id in --config)")?;
    let data_dir = flags.data_dir.or(file.data_dir).context("--data-dir is required (or data_dir in --config)")?;
    let listen = flags.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:7101".into());
    let peer_listen = flags.peer_listen.or(file.peer_listen).unwrap_or_else(|| "127.0.0.1:7201".into());
    let http_listen = flags.http_listen.or(file.http_listen);
    let initial_cluster = match flags.initial_cluster.or(file.initial_cluster) {
        Some(spec) => parse_initial_cluster(&spec)?,
        None => [(node_id, peer_listen.clone())].into_iter().collect(),
    };
    let config = NodeConfig {
        node_id,
        data_dir: data_dir.clone(),
        client_address: listen.clone(),
        peer_address: peer_listen.clone(),
        initial_cluster,
        raft: file.raft,
        limits: file.limits,
        groups: file.groups,
    }
    .validate()?;

    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating --data-dir {}", data_dir.display()))?;
    let mut engine = RocksEngine::open(&data_dir.join("db"), rocks_config(file.rocksdb))
        .with_context(|| format!("opening RocksDB in {}", data_dir.display()))?;
    if unsafe_no_sync_requested()? {
        for _ in 0..3 {
            tracing::warn!(
                "{UNSAFE_NO_SYNC}=1: fsync is DISABLED; this node can lose acknowledged records at a power cut. \
                 This switch exists only for the power-loss harness; never set it anywhere else"
            );
        }
        engine = engine.unsafe_skip_sync_for_tests();
    }
    let client_listener =
        tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding --listen {listen}"))?;
    let peer_listener = tokio::net::TcpListener::bind(&peer_listen)
        .await
        .with_context(|| format!("binding --peer-listen {peer_listen}"))?;
    let http_listener = match &http_listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding --http-listen {address}"))?,
        ),
        None => None,
    };
    let seams = NodeSeams {
        engine: Arc::new(engine),
        connector: tcp_connector(),
        client_incoming: tcp_incoming(client_listener),
        peer_incoming: tcp_incoming(peer_listener),
        clock: Arc::new(SystemClock),
        seed: os_seed(),
        on_metrics: http_listener.map(|listener| {
            Box::new(move |metrics| {
                tokio::spawn(serve_http(listener, metrics));
            }) as Box<dyn FnOnce(_) + Send>
        }),
    };
    tracing::info!(node_id, data_dir = %data_dir.display(), %listen, %peer_listen, "starting flotilla node");
    run(config, seams, shutdown_signal()).await?;
    tracing::info!(node_id, "stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_config_rocksdb_section_matches_engine_defaults() {
        let text = include_str!("../../../deploy/config/flotilla.toml");
        let file: FileConfig = toml::from_str(text).expect("deploy/config/flotilla.toml parses");
        assert_eq!(rocks_config(file.rocksdb), RocksConfig::default());
    }
}

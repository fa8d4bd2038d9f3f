//! The simulated cluster: three or five Flotilla nodes as turmoil hosts, each with an in-memory engine
//! that outlives the host (so a crash loses only what was never synced), plus the turmoil
//! versions of the network and clock seams.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use flotilla_proto::net::{Conn, Connector, Incoming, Io};
use flotilla_server::{GroupsConfig, NodeConfig, NodeError, NodeSeams};
use flotilla_storage::{Engine, MemoryEngine};
use flotilla_types::{Clock, Limits, NodeId};

/// Port of every node's client gRPC server.
pub const CLIENT_PORT: u16 = 7101;
/// Port of every node's Raft transport.
pub const PEER_PORT: u16 = 7201;
/// Simulated wall-clock time at the start of every run (2023-11-14), in seconds since the Unix
/// epoch. Fixed so record timestamps are the same in every replay of a seed.
pub const EPOCH_SECS: u64 = 1_700_000_000;

/// The turmoil host every workload client runs on.
pub const CLIENT_HOST: &str = "client";
/// The turmoil host the nemesis runs on.
pub const NEMESIS_HOST: &str = "nemesis";

/// The turmoil host name of node `id`.
pub fn host_name(id: NodeId) -> String {
    format!("n{id}")
}

/// The client address of node `id`, as clients and the catalogue spell it.
pub fn client_address(id: NodeId) -> String {
    format!("{}:{CLIENT_PORT}", host_name(id))
}

/// The peer (Raft) address of node `id`.
pub fn peer_address(id: NodeId) -> String {
    format!("{}:{PEER_PORT}", host_name(id))
}

/// Opens connections with turmoil's simulated TCP. Host names resolve through turmoil's DNS
/// (`"n1:7101"` works as is). The connect itself needs no deadline here: tonic wraps the
/// connector in the channel's `connect_timeout`.
pub fn connector() -> Connector {
    Arc::new(|address: String| {
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(address.as_str()).await?;
            Ok(Box::new(stream) as Box<dyn Io>)
        })
    })
}

/// Binds `port` on the current host and serves its accepted connections. turmoil binds only
/// the unspecified or loopback address; peers reach it by the host's name.
pub async fn incoming(port: u16) -> std::io::Result<Incoming> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(Box::pin(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| Conn(Box::new(stream) as Box<dyn Io>));
        Some((accepted, listener))
    })))
}

/// Wall-clock time of the host being simulated: the fixed epoch plus simulated time.
#[derive(Debug, Clone, Copy, Default)]
pub struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        // `since_epoch` is `None` only outside a host's execution, which never happens for
        // node code; the epoch itself is a deterministic fallback.
        let since = turmoil::since_epoch().unwrap_or(std::time::Duration::from_secs(EPOCH_SECS));
        i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The nodes' disks, kept by the driver across crashes and restarts.
#[derive(Debug, Default)]
pub struct Cluster {
    engines: BTreeMap<NodeId, Arc<MemoryEngine>>,
}

impl Cluster {
    /// Registers nodes `1..=nodes` as turmoil hosts. Every start (first boot or `bounce`) of a
    /// node runs `flotilla_server::run` on the same engine; the openraft seed differs per node
    /// and per start, derived from `seed`, so a replay makes the same choices.
    pub fn start(sim: &mut turmoil::Sim<'_>, nodes: u64, seed: u64) -> Cluster {
        let initial_cluster: BTreeMap<NodeId, String> = (1..=nodes).map(|id| (id, peer_address(id))).collect();
        let mut engines = BTreeMap::new();
        for id in 1..=nodes {
            let engine = Arc::new(MemoryEngine::new());
            engines.insert(id, Arc::clone(&engine));
            let config = NodeConfig {
                node_id: id,
                data_dir: PathBuf::from(format!("/sim/{}", host_name(id))),
                client_address: client_address(id),
                peer_address: peer_address(id),
                initial_cluster: initial_cluster.clone(),
                raft: simulation_raft_config(),
                limits: Limits::default(),
                // Short, so simulated runs see groups that emptied being deleted.
                groups: GroupsConfig { offsets_retention_ms: 20_000 },
            };
            let starts = AtomicU64::new(0);
            sim.host(host_name(id), move || {
                let start = starts.fetch_add(1, Ordering::Relaxed);
                let node_seed = mix(seed, id, start);
                let engine: Arc<dyn Engine> = Arc::clone(&engine) as Arc<dyn Engine>;
                let config = config.clone();
                async move {
                    let seams = NodeSeams {
                        engine,
                        connector: connector(),
                        client_incoming: incoming(CLIENT_PORT).await?,
                        peer_incoming: incoming(PEER_PORT).await?,
                        clock: Arc::new(SimClock),
                        seed: node_seed,
                        on_metrics: None,
                    };
                    // The node runs until the driver crashes it; the run ends without a
                    // graceful shutdown, as a kill -9 would.
                    match flotilla_server::run(config, seams, std::future::pending()).await {
                        // A node restarted on a wiped disk must refuse to start: that is the
                        // expected outcome, not a broken run. The host stays down for good.
                        Err(err @ NodeError::WipedDisk { .. }) => {
                            tracing::warn!(node = id, error = %err, "node refused to start");
                            std::future::pending::<()>().await;
                        }
                        // A node whose disk failed stops itself (fail-stop); the host stays
                        // down until the nemesis restarts it on a repaired disk.
                        Err(err @ NodeError::StorageFailed(_)) => {
                            tracing::warn!(node = id, error = %err, "node stopped on a storage fault");
                            crate::coverage::hit("node_stopped_on_storage_fault");
                            std::future::pending::<()>().await;
                        }
                        outcome => outcome?,
                    }
                    Ok(())
                }
            });
        }
        Cluster { engines }
    }

    /// The ids of the nodes.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.engines.keys().copied().collect()
    }

    /// Node `id`'s engine.
    pub fn engine(&self, id: NodeId) -> &MemoryEngine {
        self.engines.get(&id).unwrap_or_else(|| panic!("node {id} is not in the simulated cluster"))
    }

    /// Every node's engine.
    pub fn engines(&self) -> Vec<(NodeId, Arc<MemoryEngine>)> {
        self.engines.iter().map(|(id, engine)| (*id, Arc::clone(engine))).collect()
    }
}

/// Raft settings for simulated nodes: production timing, but metadata snapshots every few
/// dozen entries with a short log behind them, so crashed and partitioned nodes catch up by
/// installing snapshots (a path production reaches only after 10,000 entries).
fn simulation_raft_config() -> flotilla_raft::RaftConfig {
    flotilla_raft::RaftConfig {
        metadata_snapshot_every_entries: 4,
        metadata_logs_kept_after_snapshot: 0,
        ..Default::default()
    }
}

/// Derives a seed for one start of one node (splitmix64 of the inputs).
fn mix(seed: u64, node: NodeId, start: u64) -> u64 {
    let mut z = seed ^ node.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ start.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

//! `run`: the composition root of a node. Everything the outside world provides (storage,
//! sockets, clock, randomness) comes in through [`NodeSeams`], which is how the same code
//! runs as the `flotilla` binary and inside the deterministic simulation.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use flotilla_metadata::{MetaCommand, MetadataState, MetadataStateMachine};
use flotilla_proto::net::{ChannelSettings, Connector, Incoming, limit_connections};
use flotilla_proto::raft::v1::raft_transport_server::RaftTransportServer;
use flotilla_proto::v1::admin_service_server::AdminServiceServer;
use flotilla_proto::v1::cluster_service_server::ClusterServiceServer;
use flotilla_proto::v1::fetch_service_server::FetchServiceServer;
use flotilla_proto::v1::group_service_server::GroupServiceServer;
use flotilla_proto::v1::produce_service_server::ProduceServiceServer;
use flotilla_raft::{
    GroupLauncher, GroupRegistry, Introduction, Introductions, NodeInfo, PurgeMode, RaftTransportService, Transport,
    TransportConfig,
};
use flotilla_storage::{Engine, Reclaimer, Space, Syncer, WriteBatch};
use flotilla_types::{Clock, METADATA_GROUP, NodeId};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;

use crate::api::{AdminApi, ClusterApi, FetchApi, GroupApi, ProduceApi};
use crate::context::NodeContext;
use crate::http::MetricsFn;
use crate::meta::Meta;
use crate::partitions::{Partitions, run_leader_reporter};
use crate::{NodeConfig, NodeError};

/// Key of the node id in the engine's node space.
const NODE_ID_KEY: &[u8] = b"node_id";
/// Key of the data directory's storage format version in the node space, written with the
/// node id when a node claims an empty directory.
const STORAGE_FORMAT_KEY: &[u8] = b"storage_format";
/// The layout of everything a node stores (spaces, key layouts; each stored value carries a
/// version of its own as well). A build reads only its own layout: a directory of another
/// layout is refused at start, naming both versions (ARCHITECTURE.md, "Stored formats").
pub const STORAGE_FORMAT_VERSION: u8 = 1;
/// Largest message on the peer port: a lane batch of appends is kept below it, and one entry
/// holds at most one produce batch (8 MiB by default) plus its envelope.
const PEER_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Concurrent requests one client connection may have in flight. Clients pipeline (the bench
/// keeps up to 4096 in flight); each request's size is bounded by the message limit.
const CLIENT_STREAMS_MAX: u32 = 4096;
/// Client connections open at once; more wait in the listen backlog until one closes.
const CLIENT_CONNECTIONS_MAX: usize = 1024;
/// Peer connections open at once: a few per peer (one per lane) in any real cluster.
const PEER_CONNECTIONS_MAX: usize = 256;
/// How often a server pings an idle connection, and how long it waits for the answer before
/// closing it: a connection whose other end vanished must not keep its slot forever.
const SERVER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const SERVER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a node stopping on a storage fault waits for its Raft groups to stop.
const FAIL_STOP_GRACE: Duration = Duration::from_secs(2);
/// How often deleted ranges (purged logs, removed replicas) are compacted so their disk space
/// comes back. Retention frees space this long after a trim at most (plus the compaction).
const RECLAIM_INTERVAL: Duration = Duration::from_secs(10);
/// Bound on one registration attempt.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the world provides to a node.
pub struct NodeSeams {
    /// The node's storage engine (RocksDB in production, in-memory in simulation).
    pub engine: Arc<dyn Engine>,
    /// How to open connections to other nodes.
    pub connector: Connector,
    /// Accepted client connections.
    pub client_incoming: Incoming,
    /// Accepted peer (Raft) connections.
    pub peer_incoming: Incoming,
    /// Wall-clock time for record timestamps.
    pub clock: Arc<dyn Clock>,
    /// Seed of openraft's RNG (election timeouts). Fixed in simulation, random in production.
    pub seed: u64,
    /// Called with a function that renders this node's metrics, once the node is up (the
    /// binary serves it over HTTP).
    pub on_metrics: Option<Box<dyn FnOnce(MetricsFn) + Send>>,
}

/// The node id stored in the data directory: `Some` when the directory has been claimed
/// (by this node: a directory of another node is refused), `None` when it is empty.
fn stored_identity(engine: &dyn Engine, node_id: NodeId) -> Result<Option<NodeId>, NodeError> {
    let Some(bytes) = engine.get(Space::Node, NODE_ID_KEY)? else { return Ok(None) };
    let found = u64::from_be_bytes(
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| NodeError::Config(format!("stored node id has {} bytes, expected 8", bytes.len())))?,
    );
    if found != node_id {
        return Err(NodeError::NodeIdMismatch { configured: node_id, found });
    }
    Ok(Some(found))
}

/// Claims an empty data directory for `node_id`, durably, before the node takes part in any
/// Raft group. The node registers in the catalogue only later, so a node the catalogue lists
/// has a claimed directory unless its disk was wiped or replaced (see [`introduce_self`]).
fn claim_identity(engine: &dyn Engine, node_id: NodeId) -> Result<(), NodeError> {
    let mut batch = WriteBatch::new();
    batch.put(Space::Node, NODE_ID_KEY.to_vec(), node_id.to_be_bytes().to_vec());
    batch.put(Space::Node, STORAGE_FORMAT_KEY.to_vec(), vec![STORAGE_FORMAT_VERSION]);
    engine.write(batch)?;
    engine.sync()?;
    Ok(())
}

/// Refuses a claimed data directory this build cannot read: one written before formats were
/// versioned (no format key), or by a build with another storage layout.
fn check_storage_format(engine: &dyn Engine, data_dir: &std::path::Path) -> Result<(), NodeError> {
    let found = engine.get(Space::Node, STORAGE_FORMAT_KEY)?;
    match found.as_deref() {
        Some([STORAGE_FORMAT_VERSION]) => Ok(()),
        Some([version]) => Err(NodeError::StorageFormat { data_dir: data_dir.to_path_buf(), found: Some(*version) }),
        Some(_) | None => Err(NodeError::StorageFormat { data_dir: data_dir.to_path_buf(), found: None }),
    }
}

/// What this node answers a peer that asks whether the catalogue lists it (`Introduce`).
enum Desk {
    /// The data directory holds no identity claim: this node holds no state at all, hence no
    /// registration of anyone, and can say so.
    Empty,
    /// The node has state on disk, but its catalogue is not loaded yet: it cannot tell.
    Loading,
    /// The metadata group runs: the answer is the applied catalogue's.
    Catalogue(watch::Receiver<Arc<MetadataState>>),
}

fn introductions(desk: Arc<parking_lot::RwLock<Desk>>) -> Introductions {
    Arc::new(move |asked: NodeId| match &*desk.read() {
        Desk::Empty => Introduction { registered: false, catalogue_known: true },
        Desk::Loading => Introduction { registered: false, catalogue_known: false },
        Desk::Catalogue(catalogue) => {
            Introduction { registered: catalogue.borrow().nodes.contains_key(&asked), catalogue_known: true }
        }
    })
}

/// How many other initial members must answer "not registered" before a node without an
/// identity claim may start; 0 when nobody else can know (a single-node cluster).
///
/// The initial members are the metadata group's voters (there are no membership changes),
/// so had this node ever registered, the `RegisterNode` entry committed on a majority of
/// them. This node may have been one of that majority, and its copy is gone with its disk;
/// so at least `majority - 1` of the others hold the entry (`majority` if this node is not
/// a voter), and at most `others - holders` do not. Any `others - holders + 1` of the others
/// therefore include a holder, which would have answered "registered". Counting one fewer
/// (a majority of the whole cluster including this node) is not enough: the one holder
/// besides the wiped node might be the peer that is down, and the lagging peers that answer
/// would let the node start as an empty voter and elect a stale leader. The price: the first
/// start of a cluster needs `others - holders + 1` of the other members up (all of them in a
/// three-node cluster, four of five in a five-node one), not just a majority.
fn clearances_needed(voters: usize, self_is_voter: bool) -> usize {
    let others = voters - usize::from(self_is_voter);
    if others == 0 {
        return 0;
    }
    let majority = voters / 2 + 1;
    let holders = majority - usize::from(self_is_voter);
    others - holders + 1
}

/// Pause between two rounds of introductions.
const INTRODUCE_INTERVAL: Duration = Duration::from_millis(500);
/// Bound on one introduction.
const INTRODUCE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node still waiting for introductions says whom it waits for.
const INTRODUCE_LOG_EVERY: Duration = Duration::from_secs(5);

/// Asks the other initial members whether their catalogue lists this node, which has no
/// identity claim on disk. Any "registered" means the node ran before and lost its disk:
/// [`NodeError::WipedDisk`]. Returns once [`clearances_needed`] peers have answered "not
/// registered"; until then it asks again every [`INTRODUCE_INTERVAL`], forever (a node that
/// cannot tell must not start).
async fn introduce_self(config: &NodeConfig, transport: &Transport) -> Result<(), NodeError> {
    let node_id = config.node_id;
    let others: BTreeMap<NodeId, String> =
        config.initial_cluster.iter().filter(|(id, _)| **id != node_id).map(|(id, a)| (*id, a.clone())).collect();
    let needed = clearances_needed(config.initial_cluster.len(), config.initial_cluster.contains_key(&node_id));
    if needed == 0 {
        return Ok(());
    }
    tracing::info!(node_id, needed, peers = ?others.keys().collect::<Vec<_>>(),
        "empty data directory: asking the other initial members whether they know this node before joining");
    let mut cleared: BTreeSet<NodeId> = BTreeSet::new();
    let mut last_word: BTreeMap<NodeId, String> = BTreeMap::new();
    let mut last_log = Instant::now();
    loop {
        let mut round: FuturesUnordered<_> = others
            .iter()
            .filter(|(id, _)| !cleared.contains(id))
            .map(|(id, address)| async move { (*id, transport.introduce(*id, address, INTRODUCE_TIMEOUT).await) })
            .collect();
        while let Some((peer, answer)) = round.next().await {
            match answer {
                Ok(answer) if answer.responder_id != peer => {
                    last_word.insert(peer, format!("its address is served by node {}", answer.responder_id));
                }
                Ok(answer) if answer.registered => {
                    flotilla_types::coverage!("wiped_node_refused");
                    return Err(NodeError::WipedDisk { node_id, data_dir: config.data_dir.clone(), answered_by: peer });
                }
                Ok(answer) if answer.catalogue_known => {
                    cleared.insert(peer);
                    if cleared.len() >= needed {
                        tracing::info!(node_id, cleared = ?cleared, "no peer knows this node: joining as a new node");
                        return Ok(());
                    }
                }
                Ok(_) => {
                    last_word.insert(peer, "its catalogue is still loading".into());
                }
                Err(err) => {
                    last_word.insert(peer, err.to_string());
                }
            }
        }
        if last_log.elapsed() >= INTRODUCE_LOG_EVERY {
            let unheard: Vec<String> = others
                .keys()
                .filter(|id| !cleared.contains(id))
                .map(|id| format!("node {id}: {}", last_word.get(id).map_or("no answer yet", String::as_str)))
                .collect();
            tracing::info!(
                node_id,
                cleared = cleared.len(),
                needed,
                "waiting for enough peers to confirm this node is new before joining; still unheard: {}",
                unheard.join("; ")
            );
            last_log = Instant::now();
        }
        tokio::time::sleep(INTRODUCE_INTERVAL).await;
    }
}

/// Runs a node until `shutdown` resolves, then stops it gracefully.
pub async fn run(
    config: NodeConfig,
    seams: NodeSeams,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), NodeError> {
    let config = config.validate()?;
    let node_id = config.node_id;
    let NodeSeams { engine, connector, client_incoming, peer_incoming, clock, seed, on_metrics } = seams;
    // Every storage call goes through the fail-stop wrapper: the first one that fails stops
    // the node (`fail_stop.rs`).
    let (engine, storage_failure) = crate::fail_stop::watch_engine(engine);
    let claimed = stored_identity(engine.as_ref(), node_id)?.is_some();
    if claimed {
        check_storage_format(engine.as_ref(), &config.data_dir)?;
    }
    let transport = Transport::new(node_id, TransportConfig::default(), connector.clone());
    let registry = GroupRegistry::new();

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    {
        let stop_tx = Arc::clone(&stop_tx);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    }
    // Every early return below stops the peer server too.
    let _stop_on_return = StopOnDrop(Arc::clone(&stop_tx));
    {
        let stop_tx = Arc::clone(&stop_tx);
        let mut failure = storage_failure.clone();
        tokio::spawn(async move {
            let Ok(failed) = failure.wait_for(Option::is_some).await else { return };
            let error = failed.as_ref().map(ToString::to_string).unwrap_or_default();
            tracing::error!(
                node_id,
                %error,
                exit_status = crate::fail_stop::EXIT_STORAGE_FAILED,
                "storage failed: stopping the node; a node that cannot trust its disk must not keep serving or \
                 voting (the other replicas hold what a quorum acknowledged). Fix the disk, then restart it"
            );
            let _ = stop_tx.send(true);
        });
    }

    // The peer server starts first, while the registry is empty: no group can be reached or
    // vote yet, but peers can ask this node whether it knows them (and it can ask them).
    let desk = Arc::new(parking_lot::RwLock::new(if claimed { Desk::Loading } else { Desk::Empty }));
    let peer_service = RaftTransportServer::new(
        RaftTransportService::new(node_id, Arc::clone(&registry)).with_introductions(introductions(Arc::clone(&desk))),
    )
    .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
    let peer_incoming = limit_connections(peer_incoming, PEER_CONNECTIONS_MAX);
    let peer_server = tokio::spawn(
        Server::builder()
            // Pings find connections whose peer vanished (a cut link, a killed process), so
            // they close and give their connection slot back.
            .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(SERVER_KEEPALIVE_TIMEOUT))
            .add_service(peer_service)
            .serve_with_incoming_shutdown(peer_incoming, stopped(stop_rx.clone())),
    );

    if !claimed {
        // A node with an empty disk must not vote before it knows it is new to the cluster.
        let introduced = tokio::select! {
            introduced = introduce_self(&config, &transport) => Some(introduced),
            () = stopped(stop_rx.clone()) => None,
        };
        match introduced {
            Some(Ok(())) => {}
            Some(Err(err)) => {
                let _ = stop_tx.send(true);
                let _ = peer_server.await;
                return Err(err);
            }
            None => {
                tracing::info!(node_id, "stopped before joining");
                let _ = peer_server.await;
                return Ok(());
            }
        }
        *desk.write() = Desk::Loading;
        claim_identity(engine.as_ref(), node_id)?;
    }

    let syncer = Syncer::spawn(Arc::clone(&engine));
    let reclaimer = Reclaimer::new(Arc::clone(&engine));
    let reclaiming = tokio::spawn(Arc::clone(&reclaimer).run(RECLAIM_INTERVAL));
    let launcher = Arc::new(GroupLauncher::new(
        node_id,
        Arc::clone(&engine),
        syncer.clone(),
        Arc::clone(&transport),
        Arc::clone(&registry),
        reclaimer,
        seed,
    ));

    // The metadata group: every node is a member; the initial cluster's nodes are voters.
    // Launching it registers it, from which point the peer server routes its traffic.
    let (state_machine, catalogue) = MetadataStateMachine::new();
    let app = Arc::new(parking_lot::Mutex::new(state_machine));
    let meta_raft = launcher
        .launch(METADATA_GROUP, app, PurgeMode::Delete, config.raft.metadata()?, config.raft.append_bytes_max)
        .await?;
    *desk.write() = Desk::Catalogue(catalogue.clone());

    if config.initial_cluster.contains_key(&node_id) && !meta_raft.is_initialized().await.unwrap_or(true) {
        let members: BTreeMap<NodeId, NodeInfo> = config
            .initial_cluster
            .iter()
            .map(|(id, peer)| {
                let client_address = if *id == node_id { config.client_address.clone() } else { String::new() };
                (*id, NodeInfo { peer_address: peer.clone(), client_address })
            })
            .collect();
        // Every initial node bootstraps with the same membership; the identical first entry
        // makes that safe and means no single node must be up first.
        if let Err(err) = meta_raft.initialize(members).await {
            tracing::debug!(error = %err, "metadata group already initialized");
        }
    }

    let meta = Arc::new(Meta::new(node_id, meta_raft.clone(), Arc::clone(&transport), catalogue, seed));
    let (partitions, reports) = Partitions::new(launcher, config.raft.clone(), Arc::clone(&clock));
    let mut tasks = vec![
        tokio::spawn(reconcile_partitions(Arc::clone(&meta), Arc::clone(&partitions))),
        tokio::spawn(run_leader_reporter(Arc::clone(&meta), reports)),
        tokio::spawn(register_node(
            Arc::clone(&meta),
            node_id,
            config.peer_address.clone(),
            config.client_address.clone(),
        )),
    ];

    let state = Arc::new(NodeContext {
        node_id,
        meta: Arc::clone(&meta),
        partitions: Arc::clone(&partitions),
        peers: crate::peers::Peers::new(connector, ChannelSettings::default()),
        limits: config.limits,
        clock,
        engine: Arc::clone(&engine),
        round_robin: AtomicU32::new(0),
        produce_duplicates: AtomicU64::new(0),
        sessions: parking_lot::Mutex::new(Default::default()),
    });
    tasks.push(tokio::spawn(crate::membership::run_membership(Arc::clone(&state))));
    let offsets_retention = Duration::from_millis(config.groups.offsets_retention_ms);
    tasks.push(tokio::spawn(crate::coordinator::run_coordinator(Arc::clone(&state), offsets_retention)));
    if let Some(on_metrics) = on_metrics {
        let metrics_state = Arc::clone(&state);
        on_metrics(Arc::new(move || render_metrics(&metrics_state)));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ProduceServiceServer<ProduceApi>>().await;
    health.set_serving::<FetchServiceServer<FetchApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    health.set_serving::<ClusterServiceServer<ClusterApi>>().await;
    health.set_serving::<GroupServiceServer<GroupApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| NodeError::Serve { what: "reflection service", message: err.to_string() })?;

    // Refused before it is decoded: a request larger than a full batch plus its framing.
    let request_bytes_max = config.limits.request_bytes_max();
    let response_bytes_max = request_bytes_max.max(config.limits.fetch_bytes_max as usize + (1 << 20));
    tracing::info!(node_id, client = %config.client_address, peer = %config.peer_address, "node serving");
    let serving = Server::builder()
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(SERVER_KEEPALIVE_TIMEOUT))
        // Clients pipeline many requests on one connection (the bench keeps 256 to 4096 in
        // flight); hyper's default stream limit would queue them.
        .max_concurrent_streams(Some(CLIENT_STREAMS_MAX))
        .add_service(health_service)
        .add_service(reflection)
        // Compression is gRPC message compression only: produce requests are decompressed on
        // receipt and records are stored uncompressed; fetch answers are compressed only for
        // clients that ask (grpc-accept-encoding).
        .add_service(
            ProduceServiceServer::new(ProduceApi::new(Arc::clone(&state)))
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(request_bytes_max)
                .max_encoding_message_size(response_bytes_max),
        )
        .add_service(
            FetchServiceServer::new(FetchApi::new(Arc::clone(&state)))
                .send_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(request_bytes_max)
                .max_encoding_message_size(response_bytes_max),
        )
        .add_service(AdminServiceServer::new(AdminApi::new(Arc::clone(&state))))
        .add_service(ClusterServiceServer::new(ClusterApi::new(Arc::clone(&state))))
        .add_service(GroupServiceServer::new(GroupApi::new(Arc::clone(&state))))
        .serve_with_incoming_shutdown(
            limit_connections(client_incoming, CLIENT_CONNECTIONS_MAX),
            stopped(stop_rx.clone()),
        );
    let mut failure = storage_failure.clone();
    let served = tokio::select! {
        served = serving => served,
        // A storage fault: no graceful drain (a long-poll fetch could hold it for a minute),
        // and the groups stop at once, so the ones this node leads stop heartbeating and
        // their followers elect new leaders. Bounded: a group stuck on the disk cannot hold
        // the stop up; the process exits right after (`main.rs`).
        _ = failure.wait_for(Option::is_some) => {
            for task in tasks {
                task.abort();
            }
            reclaiming.abort();
            let _ = tokio::time::timeout(FAIL_STOP_GRACE, async {
                partitions.shutdown().await;
                let _ = meta_raft.shutdown().await;
            })
            .await;
            let err = storage_failure.borrow().clone().expect("a failure was published");
            return Err(NodeError::StorageFailed(err));
        }
    };

    tracing::info!(node_id, "node stopping");
    for task in tasks {
        task.abort();
    }
    reclaiming.abort();
    let _ = peer_server.await;
    partitions.shutdown().await;
    let _ = meta_raft.shutdown().await;
    // Whatever was written but not yet synced (state-machine progress) is made durable so
    // a clean restart replays nothing.
    let _ = syncer.sync().await;
    served.map_err(|err| NodeError::Serve { what: "client gRPC server", message: err.to_string() })
}

/// Stops the node's servers when dropped: an early return of [`run`] must not leave the peer
/// server answering for a node that is gone.
struct StopOnDrop(Arc<watch::Sender<bool>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// Keeps the local partition replicas in line with every new catalogue version.
async fn reconcile_partitions(meta: Arc<Meta>, partitions: Arc<Partitions>) {
    let mut catalogue = meta.subscribe();
    loop {
        let current = Arc::clone(&catalogue.borrow_and_update());
        partitions.reconcile(&current).await;
        if catalogue.changed().await.is_err() {
            return;
        }
    }
}

/// Records this node's addresses in the catalogue, again whenever they are missing or stale.
async fn register_node(meta: Arc<Meta>, node_id: NodeId, peer_address: String, client_address: String) {
    let mut catalogue = meta.subscribe();
    loop {
        let registered = catalogue
            .borrow_and_update()
            .nodes
            .get(&node_id)
            .is_some_and(|n| n.peer_address == peer_address && n.client_address == client_address);
        if !registered {
            let command = MetaCommand::RegisterNode {
                id: node_id,
                peer_address: peer_address.clone(),
                client_address: client_address.clone(),
            };
            if let Err(err) = meta.propose(command, REGISTER_TIMEOUT).await {
                tracing::debug!(error = %err.message, "registration not committed yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            continue;
        }
        if catalogue.changed().await.is_err() {
            return;
        }
    }
}

fn render_metrics(state: &NodeContext) -> String {
    use flotilla_raft::openraft::async_runtime::watch::WatchReceiver;
    let replicas = state.partitions.all();
    let leading = replicas.iter().filter(|r| r.is_leader(state.node_id)).count();
    let metadata = state.meta.raft().metrics().borrow_watched().clone();
    let mut out = String::new();
    out.push_str("# HELP flotilla_partition_replicas Partition replicas hosted on this node.\n");
    out.push_str("# TYPE flotilla_partition_replicas gauge\n");
    out.push_str(&format!("flotilla_partition_replicas{{node=\"{}\"}} {}\n", state.node_id, replicas.len()));
    out.push_str("# HELP flotilla_partition_leaders Partition replicas this node leads.\n");
    out.push_str("# TYPE flotilla_partition_leaders gauge\n");
    out.push_str(&format!("flotilla_partition_leaders{{node=\"{}\"}} {leading}\n", state.node_id));
    out.push_str("# HELP flotilla_partition_high_watermark One past the last committed offset.\n");
    out.push_str("# TYPE flotilla_partition_high_watermark gauge\n");
    for replica in &replicas {
        out.push_str(&format!(
            "flotilla_partition_high_watermark{{node=\"{}\",group=\"{}\"}} {}\n",
            state.node_id,
            replica.group,
            replica.watermarks().high_watermark
        ));
    }
    out.push_str(
        "# HELP flotilla_produce_duplicates_total Idempotent batches answered with their first offsets instead of \
         being appended again.\n",
    );
    out.push_str("# TYPE flotilla_produce_duplicates_total counter\n");
    out.push_str(&format!(
        "flotilla_produce_duplicates_total{{node=\"{}\"}} {}\n",
        state.node_id,
        state.produce_duplicates.load(Ordering::Relaxed)
    ));
    out.push_str("# HELP flotilla_metadata_term Current term of the metadata group.\n");
    out.push_str("# TYPE flotilla_metadata_term gauge\n");
    out.push_str(&format!("flotilla_metadata_term{{node=\"{}\"}} {}\n", state.node_id, metadata.current_term));
    out
}

#[cfg(test)]
mod tests {
    use flotilla_metadata::NodeRecord;
    use flotilla_storage::MemoryEngine;

    use super::*;

    #[test]
    fn a_wiped_node_needs_answers_from_more_peers_than_could_lack_its_registration() {
        // A single node: nobody else can know it.
        assert_eq!(clearances_needed(1, true), 0);
        // Three voters: the registration is on 2, maybe this node and one other; both others
        // must answer, since the one that answers might be the one without it.
        assert_eq!(clearances_needed(3, true), 2);
        assert_eq!(clearances_needed(2, true), 1);
        assert_eq!(clearances_needed(4, true), 2);
        assert_eq!(clearances_needed(5, true), 3);
        // Not a voter itself: the registration is on a full majority of the others.
        assert_eq!(clearances_needed(3, false), 2);
        assert_eq!(clearances_needed(5, false), 3);
        for voters in 1..=9usize {
            let majority = voters / 2 + 1;
            let others = voters - 1;
            let holders = majority - 1;
            // Any `needed` of the others include a holder (when there are others at all).
            assert!(others == 0 || clearances_needed(voters, true) + holders > others, "{voters} voters");
        }
    }

    #[test]
    fn the_identity_claim_is_durable_and_refuses_another_node() {
        let engine = MemoryEngine::new();
        assert_eq!(stored_identity(&engine, 3).expect("readable"), None);
        claim_identity(&engine, 3).expect("claimed");
        // Synced: a crash that drops every unsynced write keeps it.
        engine.crash(0);
        assert_eq!(stored_identity(&engine, 3).expect("readable"), Some(3));
        let err = stored_identity(&engine, 4).expect_err("another node's directory");
        assert!(matches!(err, NodeError::NodeIdMismatch { configured: 4, found: 3 }), "{err}");
        check_storage_format(&engine, std::path::Path::new("/d")).expect("the claim records this build's format");
    }

    #[test]
    fn a_directory_of_another_storage_format_is_refused_naming_both_versions() {
        let dir = std::path::Path::new("/var/lib/flotilla");
        // Written before formats were versioned: a node id, no format key.
        let engine = MemoryEngine::new();
        let mut batch = WriteBatch::new();
        batch.put(Space::Node, NODE_ID_KEY.to_vec(), 3u64.to_be_bytes().to_vec());
        engine.write(batch).expect("write");
        let err = check_storage_format(&engine, dir).expect_err("unversioned");
        assert_eq!(err.code(), Some(flotilla_types::ErrorCode::UnsupportedStorageFormat));
        let message = err.to_string();
        assert!(
            message.contains("/var/lib/flotilla") && message.contains("before") && message.contains("version 1"),
            "{message}"
        );
        let mut batch = WriteBatch::new();
        batch.put(Space::Node, STORAGE_FORMAT_KEY.to_vec(), vec![9]);
        engine.write(batch).expect("write");
        let message = check_storage_format(&engine, dir).expect_err("newer").to_string();
        assert!(message.contains("version 9") && message.contains("newer"), "{message}");
    }

    #[test]
    fn introductions_answer_from_what_the_node_holds() {
        let desk = Arc::new(parking_lot::RwLock::new(Desk::Empty));
        let answer = introductions(Arc::clone(&desk));
        assert_eq!(answer(7), Introduction { registered: false, catalogue_known: true });
        *desk.write() = Desk::Loading;
        assert_eq!(answer(7), Introduction { registered: false, catalogue_known: false });
        let mut state = MetadataState::default();
        state.nodes.insert(7, NodeRecord { id: 7, peer_address: "n7:7201".into(), client_address: "n7:7101".into() });
        let (_tx, rx) = watch::channel(Arc::new(state));
        *desk.write() = Desk::Catalogue(rx);
        assert_eq!(answer(7), Introduction { registered: true, catalogue_known: true });
        assert_eq!(answer(8), Introduction { registered: false, catalogue_known: true });
    }

    #[test]
    fn the_refusal_says_what_happened_and_what_to_do() {
        let err = NodeError::WipedDisk { node_id: 3, data_dir: "/var/lib/flotilla".into(), answered_by: 1 };
        let message = err.to_string();
        for needle in [
            "node 3 is registered in the cluster",
            "/var/lib/flotilla is empty",
            "wiped or replaced",
            "vote twice",
            "new --node-id",
            "restore its data",
        ] {
            assert!(message.contains(needle), "{message:?} does not say {needle:?}");
        }
        assert_eq!(err.code(), Some(flotilla_types::ErrorCode::WipedDisk));
    }
}

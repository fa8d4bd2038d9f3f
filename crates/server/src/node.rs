//! `run`: the composition root of a node. Everything the outside world provides (storage,
//! sockets, clock, randomness) comes in through [`NodeSeams`], which is how the same code
//! runs as the `flotilla` binary and inside the deterministic simulation.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use flotilla_metadata::{MetaCommand, MetadataStateMachine};
use flotilla_proto::net::{ChannelSettings, Connector, Incoming};
use flotilla_proto::raft::v1::raft_transport_server::RaftTransportServer;
use flotilla_proto::v1::admin_service_server::AdminServiceServer;
use flotilla_proto::v1::cluster_service_server::ClusterServiceServer;
use flotilla_proto::v1::fetch_service_server::FetchServiceServer;
use flotilla_proto::v1::produce_service_server::ProduceServiceServer;
use flotilla_raft::{
    GroupLauncher, GroupRegistry, NodeInfo, PurgeMode, RaftTransportService, Transport, TransportConfig,
};
use flotilla_storage::{Engine, Space, Syncer, WriteBatch};
use flotilla_types::{Clock, METADATA_GROUP, NodeId};
use tokio::sync::watch;
use tonic::transport::Server;

use crate::api::{AdminApi, ClusterApi, FetchApi, NodeState, ProduceApi};
use crate::http::MetricsFn;
use crate::meta::Meta;
use crate::partitions::{Partitions, run_leader_reporter};
use crate::{NodeConfig, NodeError};

/// Key of the node id in the engine's node space.
const NODE_ID_KEY: &[u8] = b"node_id";
/// Largest gRPC message a node accepts: a full produce batch plus framing.
const GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Concurrent requests one client connection may have in flight.
const CLIENT_STREAMS_MAX: u32 = 8192;
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

/// Refuses a data directory that belongs to another node; claims an empty one.
fn claim_identity(engine: &dyn Engine, node_id: NodeId) -> Result<(), NodeError> {
    match engine.get(Space::Node, NODE_ID_KEY)? {
        Some(bytes) => {
            let found = u64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| NodeError::Config(format!("stored node id has {} bytes, expected 8", bytes.len())))?,
            );
            if found != node_id {
                return Err(NodeError::NodeIdMismatch { configured: node_id, found });
            }
        }
        None => {
            let mut batch = WriteBatch::new();
            batch.put(Space::Node, NODE_ID_KEY.to_vec(), node_id.to_be_bytes().to_vec());
            engine.write(batch)?;
            engine.sync()?;
        }
    }
    Ok(())
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
    claim_identity(engine.as_ref(), node_id)?;
    let syncer = Syncer::spawn(Arc::clone(&engine));
    let transport = Transport::new(node_id, TransportConfig::default(), connector.clone());
    let registry = GroupRegistry::new();
    let launcher = Arc::new(GroupLauncher::new(
        node_id,
        Arc::clone(&engine),
        syncer.clone(),
        Arc::clone(&transport),
        Arc::clone(&registry),
        seed,
    ));

    // The metadata group: every node is a member; the initial cluster's nodes are voters.
    let (state_machine, catalogue) = MetadataStateMachine::new();
    let app = Arc::new(parking_lot::Mutex::new(state_machine));
    let meta_raft = launcher.launch(METADATA_GROUP, app, PurgeMode::Delete, config.raft.metadata()?).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let peer_service = RaftTransportServer::new(RaftTransportService::new(node_id, Arc::clone(&registry)))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let peer_server = tokio::spawn(
        Server::builder()
            .add_service(peer_service)
            .serve_with_incoming_shutdown(peer_incoming, stopped(stop_rx.clone())),
    );

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

    let meta = Arc::new(Meta::new(node_id, meta_raft.clone(), Arc::clone(&transport), catalogue));
    let (partitions, reports) = Partitions::new(launcher, config.raft.clone());
    let tasks = vec![
        tokio::spawn(reconcile_partitions(Arc::clone(&meta), Arc::clone(&partitions))),
        tokio::spawn(run_leader_reporter(Arc::clone(&meta), reports)),
        tokio::spawn(register_node(
            Arc::clone(&meta),
            node_id,
            config.peer_address.clone(),
            config.client_address.clone(),
        )),
    ];

    let state = Arc::new(NodeState {
        node_id,
        meta: Arc::clone(&meta),
        partitions: Arc::clone(&partitions),
        peers: crate::peers::Peers::new(connector, ChannelSettings::default()),
        limits: config.limits,
        clock,
        engine: Arc::clone(&engine),
        round_robin: AtomicU32::new(0),
        produce_duplicates: AtomicU64::new(0),
    });
    if let Some(on_metrics) = on_metrics {
        let metrics_state = Arc::clone(&state);
        on_metrics(Arc::new(move || render_metrics(&metrics_state)));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ProduceServiceServer<ProduceApi>>().await;
    health.set_serving::<FetchServiceServer<FetchApi>>().await;
    health.set_serving::<AdminServiceServer<AdminApi>>().await;
    health.set_serving::<ClusterServiceServer<ClusterApi>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flotilla_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|err| NodeError::Serve { what: "reflection service", message: err.to_string() })?;

    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tracing::info!(node_id, client = %config.client_address, peer = %config.peer_address, "node serving");
    let served = Server::builder()
        // Clients pipeline many requests on one connection (the bench keeps 256 to 4096 in
        // flight); hyper's default stream limit would queue them.
        .max_concurrent_streams(Some(CLIENT_STREAMS_MAX))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            ProduceServiceServer::new(ProduceApi::new(Arc::clone(&state)))
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
        )
        .add_service(
            FetchServiceServer::new(FetchApi::new(Arc::clone(&state)))
                .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX),
        )
        .add_service(AdminServiceServer::new(AdminApi::new(Arc::clone(&state))))
        .add_service(ClusterServiceServer::new(ClusterApi::new(Arc::clone(&state))))
        .serve_with_incoming_shutdown(client_incoming, stopped(stop_rx.clone()))
        .await;

    tracing::info!(node_id, "node stopping");
    for task in tasks {
        task.abort();
    }
    let _ = peer_server.await;
    partitions.shutdown().await;
    let _ = meta_raft.shutdown().await;
    // Whatever was written but not yet synced (state-machine progress) is made durable so
    // a clean restart replays nothing.
    let _ = syncer.sync().await;
    served.map_err(|err| NodeError::Serve { what: "client gRPC server", message: err.to_string() })
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

fn render_metrics(state: &NodeState) -> String {
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
            replica.watermarks.borrow().high_watermark
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

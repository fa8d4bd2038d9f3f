//! The client handle and its API calls: admin, cluster metadata, produce and fetch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use flotilla_proto::net::{Connector, tcp_connector};
use flotilla_proto::v1;
use flotilla_proto::v1::admin_service_client::AdminServiceClient;
use flotilla_proto::v1::cluster_service_client::ClusterServiceClient;
use flotilla_proto::v1::fetch_service_client::FetchServiceClient;
use flotilla_proto::v1::produce_service_client::ProduceServiceClient;
use flotilla_types::PartitionId;
use futures::future::join_all;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::idempotent_producer::IdempotentProducer;
use crate::plan::{SubBatchOutcome, check_acks, reassemble, split};
use crate::producer::{Producer, ProducerConfig};
use crate::router::{Router, Target, request};

/// The client addresses of the local development cluster that `make cluster` starts.
pub const LOCAL_CLUSTER: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// A handle to a Flotilla cluster. Cheap to clone; clones share connections and metadata.
#[derive(Clone)]
pub struct Client {
    pub(crate) router: Arc<Router>,
    /// Round-robin cursor for keyless records of produce calls without a partition.
    keyless_cursor: Arc<AtomicU32>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("config", self.router.config()).finish_non_exhaustive()
    }
}

impl Client {
    /// A client for the cluster reachable at `brokers` ("HOST:PORT" each; one live node is
    /// enough). Connects lazily: nothing is sent until the first call, so this fails only on
    /// malformed addresses.
    pub fn connect(brokers: Vec<String>, config: ClientConfig) -> Result<Client, ClientError> {
        Client::connect_with(brokers, config, tcp_connector())
    }

    /// A client for the brokers in the `FLOTILLA_BROKERS` environment variable
    /// (`HOST:PORT,HOST:PORT,...`, as `flo` reads it), or the local development cluster
    /// (`make cluster`: 127.0.0.1:7101-7103) when it is unset.
    pub fn connect_from_env(config: ClientConfig) -> Result<Client, ClientError> {
        let brokers = std::env::var("FLOTILLA_BROKERS").unwrap_or_else(|_| LOCAL_CLUSTER.to_string());
        Client::connect(brokers.split(',').map(|b| b.trim().to_string()).filter(|b| !b.is_empty()).collect(), config)
    }

    /// Like [`Client::connect`], opening connections through `connector` (the simulation
    /// passes its own sockets here).
    pub fn connect_with(
        brokers: Vec<String>,
        config: ClientConfig,
        connector: Connector,
    ) -> Result<Client, ClientError> {
        let router = Router::new(brokers, config, connector)?;
        Ok(Client { router: Arc::new(router), keyless_cursor: Arc::new(AtomicU32::new(0)) })
    }

    /// The tunables this client runs with.
    pub fn config(&self) -> &ClientConfig {
        self.router.config()
    }

    /// Creates a topic; `replication_factor` 0 lets the server pick (3, capped at the node
    /// count). Not idempotent: if an attempt times out and a retry finds the topic created,
    /// the call fails with `TopicExists`.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
    ) -> Result<v1::Topic, ClientError> {
        self.create_topic_with_config(name, partitions, replication_factor, &[]).await
    }

    /// [`Client::create_topic`] with configuration overrides (`("retention.bytes",
    /// "16777216")`, ...); every other key takes its default.
    pub async fn create_topic_with_config(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u32,
        config: &[(&str, &str)],
    ) -> Result<v1::Topic, ClientError> {
        let config = config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let message = v1::CreateTopicRequest { name: name.to_string(), partitions, replication_factor, config };
        let response = self
            .router
            .call("create topic", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.admin(channel);
                let request = request(message.clone(), timeout);
                async move { stub.create_topic(request).await }
            })
            .await;
        // Whatever happened, the cached layout may now be wrong.
        self.router.invalidate();
        response?.topic.ok_or_else(|| ClientError::Protocol {
            operation: "create topic",
            detail: format!("no topic in the answer for {name:?}"),
        })
    }

    /// Deletes a topic and its records.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let message = v1::DeleteTopicRequest { name: name.to_string() };
        let response = self
            .router
            .call("delete topic", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.admin(channel);
                let request = request(message.clone(), timeout);
                async move { stub.delete_topic(request).await }
            })
            .await;
        self.router.invalidate();
        response.map(|_| ())
    }

    /// Moves the replica of `topic`'s `partition` on node `from` to node `to`. Returns once the
    /// catalogue records the move; the partition's leader completes the Raft membership change
    /// afterwards (watch it with [`Client::describe_topic`]). Not idempotent: if an attempt
    /// times out and a retry finds the move done, the call fails with `InvalidRequest` (`to`
    /// is already a replica).
    pub async fn move_replica(&self, topic: &str, partition: u32, from: u64, to: u64) -> Result<(), ClientError> {
        let message = v1::MoveReplicaRequest { topic: topic.to_string(), partition, from_node: from, to_node: to };
        let response = self
            .router
            .call("move replica", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.admin(channel);
                let request = request(message.clone(), timeout);
                async move { stub.move_replica(request).await }
            })
            .await;
        self.router.invalidate();
        response.map(|_| ())
    }

    /// Every topic.
    pub async fn list_topics(&self) -> Result<Vec<v1::Topic>, ClientError> {
        let response = self
            .router
            .call("list topics", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.admin(channel);
                let request = request(v1::ListTopicsRequest {}, timeout);
                async move { stub.list_topics(request).await }
            })
            .await?;
        Ok(response.topics)
    }

    /// A topic's layout plus, per partition, its leader and every replica's offsets.
    pub async fn describe_topic(&self, name: &str) -> Result<v1::DescribeTopicResponse, ClientError> {
        let message = v1::DescribeTopicRequest { name: name.to_string() };
        self.router
            .call("describe topic", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.admin(channel);
                let request = request(message.clone(), timeout);
                async move { stub.describe_topic(request).await }
            })
            .await
    }

    /// Nodes, their addresses and liveness, and the metadata leader, as one node sees them.
    pub async fn cluster_status(&self) -> Result<v1::StatusResponse, ClientError> {
        self.router
            .call("cluster status", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.cluster(channel);
                let request = request(v1::StatusRequest {}, timeout);
                async move { stub.status(request).await }
            })
            .await
    }

    /// Routing metadata for `topics` (all topics when empty). The answer also refreshes the
    /// client's own routing cache.
    pub async fn metadata(&self, topics: Vec<String>) -> Result<v1::MetadataResponse, ClientError> {
        let full = topics.is_empty();
        let message = v1::MetadataRequest { topics };
        let response = self
            .router
            .call("metadata", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.cluster(channel);
                let request = request(message.clone(), timeout);
                async move { stub.metadata(request).await }
            })
            .await?;
        self.router.absorb(&response, full);
        Ok(response)
    }

    /// The number of partitions of `topic`, from the cached metadata (refreshed if the topic
    /// is not in it).
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        match self.router.partition_count(topic).await {
            Some(count) => Ok(count),
            // Ask for the topic by name: the server's own error, if any, names it best.
            None => {
                let response = self.metadata(vec![topic.to_string()]).await?;
                response
                    .topics
                    .iter()
                    .filter_map(|t| t.topic.as_ref())
                    .find(|t| t.name == topic)
                    .map(|t| t.partitions)
                    .ok_or_else(|| ClientError::UnknownTopic { topic: topic.to_string() })
            }
        }
    }

    /// Appends `records` to `topic` and returns where each landed, in request order. Resolves
    /// once every record is committed by a quorum.
    ///
    /// With `partition`, all records go to that partition's leader in one request. Without,
    /// keyed records go to `murmur2(key) mod partitions` (as the server would place them) and
    /// keyless ones together to one partition picked round-robin; each partition's share is
    /// sent to its leader, concurrently. Records of one partition are appended contiguously
    /// and in call order. If some partitions fail and others succeed the error is
    /// [`ClientError::PartiallyAcknowledged`], which says which records landed.
    ///
    /// Retries after a timeout or a lost connection may append a record twice (at-least-once);
    /// an [`IdempotentProducer`] (from [`Client::idempotent_producer`]) never duplicates.
    pub async fn produce(
        &self,
        topic: &str,
        partition: Option<PartitionId>,
        records: Vec<v1::Record>,
    ) -> Result<Vec<v1::RecordAck>, ClientError> {
        if let Some(partition) = partition {
            return self.produce_to(topic, Some(partition), records, None, None).await;
        }
        let partitions = match self.router.partition_count(topic).await {
            Some(count) if count > 0 && !records.is_empty() => count,
            // Unknown topic, an empty batch or no metadata: let a node route the request (and
            // name the problem in its error, if there is one).
            _ => return self.produce_to(topic, None, records, None, None).await,
        };
        let keyless_partition = self.keyless_cursor.fetch_add(1, Ordering::Relaxed) % partitions;
        let total = records.len();
        let batches = split(records, partitions, keyless_partition);
        let sends = batches.into_iter().map(|batch| async move {
            let result = self.produce_to(topic, Some(batch.partition), batch.records, None, None).await;
            (batch.partition, batch.positions, result) as SubBatchOutcome
        });
        reassemble(total, join_all(sends).await)
    }

    /// Reads committed records of one partition from `offset` on: up to `max_records` and
    /// about `max_bytes` (0 means the server default), waiting up to `max_wait_ms` for the first
    /// one if none is available yet. Sent to the partition's leader.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: PartitionId,
        offset: u64,
        max_records: u32,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<v1::FetchResponse, ClientError> {
        let message =
            v1::FetchRequest { topic: topic.to_string(), partition, offset, max_records, max_bytes, max_wait_ms };
        let wait = Duration::from_millis(u64::from(max_wait_ms));
        self.router
            .call("fetch", Target::Leader { topic, partition }, wait, |channel, timeout| {
                let mut stub = self.fetch_stub(channel);
                let request = request(message.clone(), timeout);
                async move { stub.fetch(request).await }
            })
            .await
    }

    /// Log start offset and high watermark of every partition of `topic`.
    pub async fn list_offsets(&self, topic: &str) -> Result<Vec<v1::PartitionOffsets>, ClientError> {
        let message = v1::ListOffsetsRequest { topic: topic.to_string(), partitions: Vec::new(), timestamp_ms: None };
        let response = self
            .router
            .call("list offsets", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.fetch_stub(channel);
                let request = request(message.clone(), timeout);
                async move { stub.list_offsets(request).await }
            })
            .await?;
        Ok(response.partitions)
    }

    /// Starts an idempotent producer session on the cluster: a fresh producer id (never handed
    /// out before) and its epoch. [`Client::idempotent_producer`] wraps it in a session that
    /// numbers and retries batches; use this only to speak the wire protocol yourself.
    pub async fn init_producer(&self) -> Result<v1::InitProducerResponse, ClientError> {
        self.router
            .call("init producer", Target::Any, Duration::ZERO, |channel, timeout| {
                let mut stub = self.produce_stub(channel);
                let request = request(v1::InitProducerRequest {}, timeout);
                async move { stub.init_producer(request).await }
            })
            .await
    }

    /// Starts an [`IdempotentProducer`] session: produce whose retries never append a batch
    /// twice. For batching and pipelining, use [`Client::producer`].
    pub async fn idempotent_producer(&self) -> Result<IdempotentProducer, ClientError> {
        let session = self.init_producer().await?;
        Ok(IdempotentProducer::new(self.clone(), session.producer_id, session.producer_epoch))
    }

    /// Starts a batching [`Producer`]. With `config.idempotence` (the default) it first opens
    /// a producer session (`InitProducer`), so its retries never append a batch twice. Fails
    /// if `config` is out of range or the session cannot be opened.
    pub async fn producer(&self, config: ProducerConfig) -> Result<Producer, ClientError> {
        config.validate()?;
        let session = if config.idempotence {
            let session = self.init_producer().await?;
            Some((session.producer_id, session.producer_epoch))
        } else {
            None
        };
        Producer::new(self.clone(), config, session)
    }

    /// One produce request: to the partition's leader when `partition` is given, else to any
    /// broker (which places the records itself). `idempotence` makes it an idempotent
    /// producer's batch (it needs `partition`); every retry resends it unchanged.
    /// `compression` compresses the gRPC message (the server stores records uncompressed).
    pub(crate) async fn produce_to(
        &self,
        topic: &str,
        partition: Option<PartitionId>,
        records: Vec<v1::Record>,
        idempotence: Option<v1::ProducerSequence>,
        compression: Option<CompressionEncoding>,
    ) -> Result<Vec<v1::RecordAck>, ClientError> {
        let expected = records.len();
        let message = v1::ProduceRequest { topic: topic.to_string(), partition, records, idempotence };
        let target = match partition {
            Some(partition) => Target::Leader { topic, partition },
            None => Target::Any,
        };
        let response = self
            .router
            .call("produce", target, Duration::ZERO, |channel, timeout| {
                let mut stub = self.produce_stub(channel);
                if let Some(encoding) = compression {
                    stub = stub.send_compressed(encoding);
                }
                let request = request(message.clone(), timeout);
                async move { stub.produce(request).await }
            })
            .await?;
        match partition {
            Some(partition) => check_acks(partition, expected, response.acks),
            None if response.acks.len() == expected => Ok(response.acks),
            None => Err(ClientError::Protocol {
                operation: "produce",
                detail: format!("{} acks for {expected} records", response.acks.len()),
            }),
        }
    }

    pub(crate) fn admin(&self, channel: Channel) -> AdminServiceClient<Channel> {
        let limit = self.router.config().message_bytes_max;
        AdminServiceClient::new(channel).max_decoding_message_size(limit).max_encoding_message_size(limit)
    }

    pub(crate) fn cluster(&self, channel: Channel) -> ClusterServiceClient<Channel> {
        let limit = self.router.config().message_bytes_max;
        ClusterServiceClient::new(channel).max_decoding_message_size(limit).max_encoding_message_size(limit)
    }

    fn produce_stub(&self, channel: Channel) -> ProduceServiceClient<Channel> {
        let limit = self.router.config().message_bytes_max;
        ProduceServiceClient::new(channel).max_decoding_message_size(limit).max_encoding_message_size(limit)
    }

    fn fetch_stub(&self, channel: Channel) -> FetchServiceClient<Channel> {
        let limit = self.router.config().message_bytes_max;
        FetchServiceClient::new(channel).max_decoding_message_size(limit).max_encoding_message_size(limit)
    }
}

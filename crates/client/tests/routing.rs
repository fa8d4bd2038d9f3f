//! Black-box tests of the client's routing and retries against fake nodes on loopback: each
//! fake node serves the produce and cluster services from a shared script of who leads what.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_client::{Client, ClientConfig, ClientError, ErrorCode, v1};
use flotilla_proto::error::{LeaderHint, status};
use flotilla_proto::net::tcp_incoming;
use flotilla_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use flotilla_proto::v1::produce_service_server::{ProduceService, ProduceServiceServer};
use parking_lot::Mutex;
use tonic::{Request, Response, Status};

/// What every fake node knows: addresses, the metadata it serves, who really leads each
/// partition, and what it has been asked.
#[derive(Default)]
struct Cluster {
    addresses: BTreeMap<u64, String>,
    /// Leaders announced in metadata answers (may be wrong on purpose).
    advertised: Vec<u64>,
    /// Who really leads each partition; other nodes answer `NotLeader` with a hint.
    leaders: Vec<u64>,
    /// Next offset per partition.
    next_offset: Vec<u64>,
    /// Produce requests received: (node, partition).
    produces: Vec<(u64, Option<u32>)>,
    /// When set, every produce fails with this code and message.
    fail_with: Option<(ErrorCode, String)>,
    /// Producer ids handed out so far.
    producer_ids: u64,
    /// Idempotent batches appended per (producer, partition), like a partition's producer table.
    batches: BTreeMap<(u64, u32), Vec<AppendedBatch>>,
    /// Idempotent requests received: (partition, base sequence, records).
    sequences: Vec<(u32, u64, usize)>,
    /// Replies to drop after appending (the client sees a timeout), as when a leader commits a
    /// batch but its answer never arrives.
    lose_replies: usize,
}

/// An idempotent batch the fake appended: (base sequence, count, base offset).
type AppendedBatch = (u64, usize, u64);

#[derive(Clone)]
struct FakeNode {
    id: u64,
    cluster: Arc<Mutex<Cluster>>,
}

#[tonic::async_trait]
impl ProduceService for FakeNode {
    async fn produce(&self, request: Request<v1::ProduceRequest>) -> Result<Response<v1::ProduceResponse>, Status> {
        let request = request.into_inner();
        let mut cluster = self.cluster.lock();
        cluster.produces.push((self.id, request.partition));
        if let Some((code, message)) = &cluster.fail_with {
            return Err(status(*code, message.clone(), None));
        }
        let Some(partition) = request.partition else {
            return Err(status(ErrorCode::InvalidRequest, "the fake needs explicit partitions", None));
        };
        let leader = cluster.leaders[partition as usize];
        if leader != self.id {
            let hint = LeaderHint { id: leader, address: cluster.addresses[&leader].clone() };
            return Err(status(
                ErrorCode::NotLeader,
                format!("node {} does not lead t/{partition}", self.id),
                Some(&hint),
            ));
        }
        let count = request.records.len();
        if let Some(producer) = &request.idempotence {
            cluster.sequences.push((partition, producer.base_sequence, count));
            let seen = cluster.batches.entry((producer.producer_id, partition)).or_default();
            if let Some((_, _, base)) = seen.iter().find(|(seq, n, _)| *seq == producer.base_sequence && *n == count) {
                let acks = (0..count as u64).map(|i| v1::RecordAck { partition, offset: base + i }).collect();
                return Ok(Response::new(v1::ProduceResponse { acks, ..Default::default() }));
            }
            let expected = seen.last().map_or(0, |(seq, n, _)| seq + *n as u64);
            if producer.base_sequence != expected {
                let message = format!("expected sequence {expected}, got {}", producer.base_sequence);
                return Err(status(ErrorCode::OutOfOrderSequence, message, None));
            }
            let base = cluster.next_offset[partition as usize];
            cluster.batches.entry((producer.producer_id, partition)).or_default().push((
                producer.base_sequence,
                count,
                base,
            ));
        }
        let mut acks = Vec::new();
        for _ in &request.records {
            let offset = cluster.next_offset[partition as usize];
            cluster.next_offset[partition as usize] += 1;
            acks.push(v1::RecordAck { partition, offset });
        }
        if cluster.lose_replies > 0 {
            cluster.lose_replies -= 1;
            return Err(status(ErrorCode::Timeout, "the reply was lost", None));
        }
        Ok(Response::new(v1::ProduceResponse { acks, ..Default::default() }))
    }

    async fn init_producer(
        &self,
        _: Request<v1::InitProducerRequest>,
    ) -> Result<Response<v1::InitProducerResponse>, Status> {
        let mut cluster = self.cluster.lock();
        cluster.producer_ids += 1;
        Ok(Response::new(v1::InitProducerResponse { producer_id: cluster.producer_ids, producer_epoch: 0 }))
    }
}

#[tonic::async_trait]
impl ClusterService for FakeNode {
    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        Ok(Response::new(v1::StatusResponse { answered_by: self.id, ..Default::default() }))
    }

    async fn metadata(&self, _: Request<v1::MetadataRequest>) -> Result<Response<v1::MetadataResponse>, Status> {
        let cluster = self.cluster.lock();
        let nodes = cluster
            .addresses
            .iter()
            .map(|(id, address)| v1::Node { id: *id, client_address: address.clone(), ..Default::default() })
            .collect();
        let partitions = cluster
            .advertised
            .iter()
            .enumerate()
            .map(|(p, leader)| v1::PartitionMetadata { partition: p as u32, leader_id: *leader, ..Default::default() })
            .collect();
        let topic = v1::Topic { name: "t".into(), partitions: cluster.advertised.len() as u32, ..Default::default() };
        Ok(Response::new(v1::MetadataResponse {
            nodes,
            topics: vec![v1::TopicMetadata { topic: Some(topic), partitions }],
        }))
    }

    async fn local_replicas(
        &self,
        _: Request<v1::LocalReplicasRequest>,
    ) -> Result<Response<v1::LocalReplicasResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn replica_digest(
        &self,
        _: Request<v1::ReplicaDigestRequest>,
    ) -> Result<Response<v1::ReplicaDigestResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }
}

/// Starts `count` fake nodes (ids 1..=count) sharing one cluster script.
async fn start_cluster(count: u64, leaders: Vec<u64>) -> (Arc<Mutex<Cluster>>, Vec<String>) {
    let cluster = Arc::new(Mutex::new(Cluster {
        next_offset: vec![0; leaders.len()],
        advertised: leaders.clone(),
        leaders,
        ..Default::default()
    }));
    let mut addresses = Vec::new();
    for id in 1..=count {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let address = listener.local_addr().expect("bound address").to_string();
        cluster.lock().addresses.insert(id, address.clone());
        addresses.push(address);
        let node = FakeNode { id, cluster: Arc::clone(&cluster) };
        let server = tonic::transport::Server::builder()
            .add_service(ProduceServiceServer::new(node.clone()))
            .add_service(ClusterServiceServer::new(node))
            .serve_with_incoming(tcp_incoming(listener));
        tokio::spawn(server);
    }
    (cluster, addresses)
}

fn config() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(5),
        retry_backoff_min: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(5),
        retries_max: 4,
        ..Default::default()
    }
}

fn keyed(keys: &[&str]) -> Vec<v1::Record> {
    keys.iter()
        .map(|key| v1::Record {
            key: Some(Bytes::copy_from_slice(key.as_bytes())),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        })
        .collect()
}

#[tokio::test]
async fn produce_goes_to_each_partitions_leader_and_acks_come_back_in_order() {
    let (cluster, addresses) = start_cluster(3, vec![1, 2, 3]).await;
    let client = Client::connect(vec![addresses[0].clone()], config()).expect("valid address");
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let acks = client.produce("t", None, keyed(&key_refs)).await.expect("produce succeeds");
    assert_eq!(acks.len(), keys.len());
    for (key, ack) in keys.iter().zip(&acks) {
        assert_eq!(ack.partition, flotilla_types::partition_for_key(key.as_bytes(), 3), "{key}");
    }
    let cluster = cluster.lock();
    for (node, partition) in &cluster.produces {
        let partition = partition.expect("the client names the partition");
        assert_eq!(cluster.leaders[partition as usize], *node, "request for partition {partition} went to node {node}");
    }
}

#[tokio::test]
async fn follows_a_not_leader_hint_and_remembers_it() {
    // Metadata says node 1 leads partition 0, but node 2 does.
    let (cluster, addresses) = start_cluster(2, vec![2]).await;
    cluster.lock().advertised = vec![1];
    let client = Client::connect(vec![addresses[0].clone()], config()).expect("valid address");
    for expected_offset in 0..3 {
        let acks = client.produce("t", Some(0), keyed(&["a"])).await.expect("produce succeeds");
        assert_eq!(acks, [v1::RecordAck { partition: 0, offset: expected_offset }]);
    }
    let produces = cluster.lock().produces.clone();
    assert_eq!(produces, [(1, Some(0)), (2, Some(0)), (2, Some(0)), (2, Some(0))]);
}

#[tokio::test]
async fn a_leader_the_client_cannot_reach_is_bypassed_through_another_broker() {
    // Metadata names node 2 as the leader, but the client cannot reach node 2 (its advertised
    // address is dead to it); node 1, which the client does reach, can serve — as a real
    // node would by forwarding. The client must stop insisting on the unreachable leader.
    let (cluster, addresses) = start_cluster(2, vec![1]).await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").to_string()
    };
    {
        let mut cluster = cluster.lock();
        cluster.advertised = vec![2];
        cluster.addresses.insert(2, dead);
    }
    let client = Client::connect(vec![addresses[0].clone()], config()).expect("valid address");
    for expected_offset in 0..3 {
        let acks = client.produce("t", Some(0), keyed(&["a"])).await.expect("served through node 1");
        assert_eq!(acks, [v1::RecordAck { partition: 0, offset: expected_offset }]);
    }
    assert_eq!(cluster.lock().produces.len(), 3, "every produce reached node 1");
}

#[tokio::test]
async fn non_retriable_errors_come_back_at_once_with_the_servers_message() {
    let (cluster, addresses) = start_cluster(1, vec![1]).await;
    let message = "record of 2000000 bytes exceeds record_bytes_max 1048576".to_string();
    cluster.lock().fail_with = Some((ErrorCode::RecordTooLarge, message.clone()));
    let client = Client::connect(addresses, config()).expect("valid address");
    let error = client.produce("t", Some(0), keyed(&["a"])).await.expect_err("refused");
    match &error {
        ClientError::Server(wire) => {
            assert_eq!(wire.code, Some(ErrorCode::RecordTooLarge));
            assert_eq!(wire.message, message);
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    assert!(error.to_string().contains(&message), "{error}");
    assert_eq!(cluster.lock().produces.len(), 1, "no retry");
}

#[tokio::test]
async fn retriable_errors_are_retried_up_to_the_cap() {
    let (cluster, addresses) = start_cluster(1, vec![1]).await;
    cluster.lock().fail_with = Some((ErrorCode::LeaderUnavailable, "election in progress".into()));
    let client = Client::connect(addresses, config()).expect("valid address");
    let error = client.produce("t", Some(0), keyed(&["a"])).await.expect_err("never succeeds");
    match &error {
        ClientError::RetriesExhausted { attempts, last, .. } => {
            assert_eq!(*attempts, 5);
            assert_eq!(last.code, Some(ErrorCode::LeaderUnavailable));
        }
        other => panic!("expected exhausted retries, got {other:?}"),
    }
    assert_eq!(cluster.lock().produces.len(), 5, "first attempt plus retries_max retries");
}

#[tokio::test]
async fn a_dead_seed_broker_is_skipped() {
    let (_cluster, addresses) = start_cluster(1, vec![1]).await;
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        listener.local_addr().expect("bound address").to_string()
    };
    let client = Client::connect(vec![dead, addresses[0].clone()], config()).expect("valid addresses");
    let status = client.cluster_status().await.expect("the live broker answers");
    assert_eq!(status.answered_by, 1);
}

#[tokio::test]
async fn an_unreachable_cluster_fails_with_the_address_and_cause() {
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        listener.local_addr().expect("bound address").to_string()
    };
    let client = Client::connect(vec![dead.clone()], config()).expect("valid address");
    let error = client.cluster_status().await.expect_err("nothing listens");
    let chain = format!("{error}: {}", error.wire().expect("a wire error").message);
    assert!(chain.contains(&dead), "{chain}");
    assert!(matches!(error, ClientError::RetriesExhausted { .. }), "{error:?}");
}

#[tokio::test]
async fn an_idempotent_retry_after_a_lost_reply_gets_the_first_offsets() {
    let (cluster, addresses) = start_cluster(1, vec![1]).await;
    cluster.lock().lose_replies = 1;
    let client = Client::connect(addresses, config()).expect("valid address");
    let producer = client.idempotent_producer().await.expect("session");
    assert_eq!(producer.producer_id(), 1);
    let acks = producer.send("t", 0, keyed(&["a", "b"])).await.expect("the retry succeeds");
    assert_eq!(acks, [v1::RecordAck { partition: 0, offset: 0 }, v1::RecordAck { partition: 0, offset: 1 }]);
    let acks = producer.send("t", 0, keyed(&["c"])).await.expect("next batch");
    assert_eq!(acks, [v1::RecordAck { partition: 0, offset: 2 }]);
    let cluster = cluster.lock();
    // The lost reply's batch was resent under the same sequence; the next batch went on from it.
    assert_eq!(cluster.sequences, [(0, 0, 2), (0, 0, 2), (0, 2, 1)]);
    assert_eq!(cluster.next_offset, [3], "nothing was appended twice");
}

#[tokio::test]
async fn an_unsettled_batch_must_be_resent_before_other_records() {
    let (cluster, addresses) = start_cluster(1, vec![1]).await;
    let client = Client::connect(addresses, config()).expect("valid address");
    let producer = client.idempotent_producer().await.expect("session");
    cluster.lock().fail_with = Some((ErrorCode::LeaderUnavailable, "election in progress".into()));
    let error = producer.send("t", 0, keyed(&["a"])).await.expect_err("never succeeds");
    assert!(error.is_retriable(), "{error:?}");
    let produces = cluster.lock().produces.len();
    let error = producer.send("t", 0, keyed(&["b"])).await.expect_err("in doubt");
    assert!(matches!(error, ClientError::SequenceInDoubt { base_sequence: 0, records: 1, .. }), "{error:?}");
    assert_eq!(cluster.lock().produces.len(), produces, "refused without a request");
    cluster.lock().fail_with = None;
    let acks = producer.send("t", 0, keyed(&["a"])).await.expect("the same records settle it");
    assert_eq!(acks, [v1::RecordAck { partition: 0, offset: 0 }]);
    let acks = producer.send("t", 0, keyed(&["b"])).await.expect("then others go on");
    assert_eq!(acks, [v1::RecordAck { partition: 0, offset: 1 }]);
    assert_eq!(cluster.lock().sequences.last(), Some(&(0, 1, 1)));
}

#[tokio::test]
async fn a_send_dropped_mid_request_leaves_its_batch_in_doubt() {
    // Found by the simulation: a caller's timeout around `send` used to leave the sequence
    // unclaimed, so the next batch reused it and the partition answered it as a duplicate of
    // the dropped one — its records silently never appended.
    let (cluster, addresses) = start_cluster(1, vec![1]).await;
    let patient = ClientConfig { retries_max: 10_000, retry_backoff_max: Duration::from_millis(5), ..config() };
    let client = Client::connect(addresses, patient).expect("valid address");
    let producer = client.idempotent_producer().await.expect("session");
    // The leader keeps saying "election in progress", so the send is still retrying when the
    // caller's timeout drops it.
    cluster.lock().fail_with = Some((ErrorCode::LeaderUnavailable, "election in progress".into()));
    let dropped = tokio::time::timeout(Duration::from_millis(50), producer.send("t", 0, keyed(&["a"]))).await;
    assert!(dropped.is_err(), "the send was cut off mid-request");
    cluster.lock().fail_with = None;
    let error = producer.send("t", 0, keyed(&["b"])).await.expect_err("the dropped batch is in doubt");
    assert!(matches!(error, ClientError::SequenceInDoubt { base_sequence: 0, records: 1, .. }), "{error:?}");
    let acks = producer.send("t", 0, keyed(&["a"])).await.expect("resending the same records settles it");
    assert_eq!(acks, [v1::RecordAck { partition: 0, offset: 0 }]);
    let acks = producer.send("t", 0, keyed(&["b"])).await.expect("then other records go on");
    assert_eq!(acks, [v1::RecordAck { partition: 0, offset: 1 }]);
}

#[tokio::test]
async fn a_fenced_session_refuses_every_later_send() {
    let (cluster, addresses) = start_cluster(1, vec![1]).await;
    let client = Client::connect(addresses, config()).expect("valid address");
    let producer = client.idempotent_producer().await.expect("session");
    cluster.lock().fail_with = Some((ErrorCode::ProducerFenced, "producer 1 epoch 0 is fenced".into()));
    let error = producer.send("t", 0, keyed(&["a"])).await.expect_err("fenced");
    assert_eq!(error.code(), Some(ErrorCode::ProducerFenced));
    assert_eq!(cluster.lock().produces.len(), 1, "a refusal is not retried");
    cluster.lock().fail_with = None;
    let error = producer.send("t", 0, keyed(&["b"])).await.expect_err("still fenced");
    assert_eq!(error.code(), Some(ErrorCode::ProducerFenced));
    assert_eq!(cluster.lock().produces.len(), 1, "a fenced session sends nothing more");
}

#[tokio::test]
async fn keyed_sends_number_each_partition_on_its_own() {
    let (cluster, addresses) = start_cluster(3, vec![1, 2, 3]).await;
    let client = Client::connect(vec![addresses[0].clone()], config()).expect("valid address");
    let producer = client.idempotent_producer().await.expect("session");
    let keys: Vec<String> = (0..30).map(|i| format!("key-{i}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    for _ in 0..2 {
        let acks = producer.send_keyed("t", keyed(&key_refs)).await.expect("send");
        for (key, ack) in keys.iter().zip(&acks) {
            assert_eq!(ack.partition, flotilla_types::partition_for_key(key.as_bytes(), 3), "{key}");
        }
    }
    let cluster = cluster.lock();
    for partition in 0..3 {
        let sent: Vec<(u64, usize)> =
            cluster.sequences.iter().filter(|(p, _, _)| *p == partition).map(|(_, seq, n)| (*seq, *n)).collect();
        assert_eq!(sent.len(), 2, "partition {partition}: {sent:?}");
        assert_eq!(sent[0].0, 0, "each partition starts at 0: {sent:?}");
        assert_eq!(sent[1].0, sent[0].1 as u64, "and goes on from its own last batch: {sent:?}");
    }
}

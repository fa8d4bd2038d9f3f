//! Runs the `flo` binary against an in-memory fake node on loopback: one node that leads
//! every partition and implements the admin, cluster, produce and fetch services the way the
//! API documents them.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::error::status;
use flotilla_proto::net::tcp_incoming;
use flotilla_proto::v1;
use flotilla_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use flotilla_proto::v1::cluster_service_server::{ClusterService, ClusterServiceServer};
use flotilla_proto::v1::fetch_service_server::{FetchService, FetchServiceServer};
use flotilla_proto::v1::produce_service_server::{ProduceService, ProduceServiceServer};
use flotilla_types::{ErrorCode, partition_for_key};
use serde_json::Value;
use tokio::sync::{Mutex, Notify};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    address: String,
    /// Records per partition, per topic.
    topics: BTreeMap<String, Vec<Vec<v1::Record>>>,
    next_topic_id: u64,
    keyless_cursor: u32,
}

#[derive(Clone, Default)]
struct FakeNode {
    state: Arc<Mutex<State>>,
    appended: Arc<Notify>,
}

fn unknown_topic(name: &str) -> Status {
    status(ErrorCode::UnknownTopic, format!("topic {name:?} does not exist"), None)
}

fn topic_message(name: &str, partitions: usize) -> v1::Topic {
    v1::Topic { name: name.to_string(), id: 1, partitions: partitions as u32, replication_factor: 1, created_at_ms: 0 }
}

#[tonic::async_trait]
impl AdminService for FakeNode {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let request = request.into_inner();
        let mut state = self.state.lock().await;
        if state.topics.contains_key(&request.name) {
            return Err(status(ErrorCode::TopicExists, format!("topic {:?} exists already", request.name), None));
        }
        if request.partitions == 0 {
            return Err(status(ErrorCode::InvalidPartitionCount, "a topic needs at least 1 partition; got 0", None));
        }
        state.next_topic_id += 1;
        state.topics.insert(request.name.clone(), vec![Vec::new(); request.partitions as usize]);
        Ok(Response::new(v1::CreateTopicResponse {
            topic: Some(topic_message(&request.name, request.partitions as usize)),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        match self.state.lock().await.topics.remove(&name) {
            Some(_) => Ok(Response::new(v1::DeleteTopicResponse {})),
            None => Err(unknown_topic(&name)),
        }
    }

    async fn list_topics(&self, _: Request<v1::ListTopicsRequest>) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let state = self.state.lock().await;
        let topics = state.topics.iter().map(|(name, partitions)| topic_message(name, partitions.len())).collect();
        Ok(Response::new(v1::ListTopicsResponse { topics }))
    }

    async fn move_replica(
        &self,
        _: Request<v1::MoveReplicaRequest>,
    ) -> Result<Response<v1::MoveReplicaResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn alter_topic_config(
        &self,
        _: Request<v1::AlterTopicConfigRequest>,
    ) -> Result<Response<v1::AlterTopicConfigResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn delete_records(
        &self,
        _: Request<v1::DeleteRecordsRequest>,
    ) -> Result<Response<v1::DeleteRecordsResponse>, Status> {
        Err(Status::unimplemented("not faked"))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        let state = self.state.lock().await;
        let partitions = state.topics.get(&name).ok_or_else(|| unknown_topic(&name))?;
        let descriptions = partitions
            .iter()
            .enumerate()
            .map(|(p, records)| v1::PartitionDescription {
                partition: p as u32,
                group_id: p as u64 + 1,
                leader_id: 1,
                replicas: vec![1],
                log_start_offset: 0,
                high_watermark: records.len() as u64,
                replica_states: vec![v1::ReplicaState {
                    node_id: 1,
                    reachable: true,
                    is_leader: true,
                    term: 1,
                    log_end_offset: records.len() as u64,
                    applied_index: records.len() as u64,
                    log_start_offset: 0,
                    retained_bytes: 0,
                }],
                retained_bytes: 0,
            })
            .collect();
        Ok(Response::new(v1::DescribeTopicResponse {
            topic: Some(topic_message(&name, partitions.len())),
            partitions: descriptions,
            config: Vec::new(),
        }))
    }
}

#[tonic::async_trait]
impl ClusterService for FakeNode {
    async fn status(&self, _: Request<v1::StatusRequest>) -> Result<Response<v1::StatusResponse>, Status> {
        let state = self.state.lock().await;
        Ok(Response::new(v1::StatusResponse {
            nodes: vec![v1::Node {
                id: 1,
                client_address: state.address.clone(),
                peer_address: "127.0.0.1:1".into(),
                live: true,
                last_seen_ms_ago: 0,
                metadata_voter: true,
            }],
            metadata_leader_id: 1,
            metadata_term: 1,
            answered_by: 1,
        }))
    }

    async fn metadata(&self, request: Request<v1::MetadataRequest>) -> Result<Response<v1::MetadataResponse>, Status> {
        let wanted = request.into_inner().topics;
        let state = self.state.lock().await;
        let topics = state
            .topics
            .iter()
            .filter(|(name, _)| wanted.is_empty() || wanted.contains(name))
            .map(|(name, partitions)| v1::TopicMetadata {
                topic: Some(topic_message(name, partitions.len())),
                partitions: (0..partitions.len())
                    .map(|p| v1::PartitionMetadata {
                        partition: p as u32,
                        group_id: p as u64 + 1,
                        leader_id: 1,
                        replicas: vec![1],
                    })
                    .collect(),
            })
            .collect();
        let node = v1::Node { id: 1, client_address: state.address.clone(), ..Default::default() };
        Ok(Response::new(v1::MetadataResponse { nodes: vec![node], topics }))
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

#[tonic::async_trait]
impl ProduceService for FakeNode {
    async fn produce(&self, request: Request<v1::ProduceRequest>) -> Result<Response<v1::ProduceResponse>, Status> {
        let request = request.into_inner();
        let mut guard = self.state.lock().await;
        let state = &mut *guard;
        let partitions = state.topics.get_mut(&request.topic).ok_or_else(|| unknown_topic(&request.topic))?;
        let count = partitions.len() as u32;
        if let Some(p) = request.partition.filter(|p| *p >= count) {
            return Err(status(
                ErrorCode::PartitionOutOfRange,
                format!("topic {:?} has {count} partitions; partition {p} does not exist", request.topic),
                None,
            ));
        }
        let keyless = state.keyless_cursor % count;
        state.keyless_cursor += 1;
        let mut acks = Vec::new();
        for record in request.records {
            let partition = match (request.partition, &record.key) {
                (Some(p), _) => p,
                (None, Some(key)) => partition_for_key(key, count),
                (None, None) => keyless,
            };
            let log = &mut partitions[partition as usize];
            acks.push(v1::RecordAck { partition, offset: log.len() as u64 });
            log.push(record);
        }
        self.appended.notify_waiters();
        Ok(Response::new(v1::ProduceResponse { acks, ..Default::default() }))
    }

    /// One session for everyone: the fake appends idempotent batches like any other (it never
    /// fails, so nothing is ever resent).
    async fn init_producer(
        &self,
        _: Request<v1::InitProducerRequest>,
    ) -> Result<Response<v1::InitProducerResponse>, Status> {
        Ok(Response::new(v1::InitProducerResponse { producer_id: 1, producer_epoch: 0 }))
    }
}

#[tonic::async_trait]
impl FetchService for FakeNode {
    async fn fetch(&self, request: Request<v1::FetchRequest>) -> Result<Response<v1::FetchResponse>, Status> {
        let request = request.into_inner();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(request.max_wait_ms));
        loop {
            let appended = self.appended.notified();
            {
                let state = self.state.lock().await;
                let partitions = state.topics.get(&request.topic).ok_or_else(|| unknown_topic(&request.topic))?;
                let log = partitions
                    .get(request.partition as usize)
                    .ok_or_else(|| status(ErrorCode::PartitionOutOfRange, "no such partition", None))?;
                let high_watermark = log.len() as u64;
                if request.offset > high_watermark {
                    return Err(status(
                        ErrorCode::OffsetOutOfRange,
                        format!("offset {} is beyond the high watermark {high_watermark}", request.offset),
                        None,
                    ));
                }
                if request.offset < high_watermark || tokio::time::Instant::now() >= deadline {
                    let end = high_watermark.min(request.offset + u64::from(request.max_records.max(1)));
                    let records = (request.offset..end)
                        .map(|offset| v1::FetchedRecord { offset, record: Some(log[offset as usize].clone()) })
                        .collect();
                    return Ok(Response::new(v1::FetchResponse { records, high_watermark, log_start_offset: 0 }));
                }
            }
            let _ = tokio::time::timeout_at(deadline, appended).await;
        }
    }

    async fn list_offsets(
        &self,
        request: Request<v1::ListOffsetsRequest>,
    ) -> Result<Response<v1::ListOffsetsResponse>, Status> {
        let topic = request.into_inner().topic;
        let state = self.state.lock().await;
        let partitions = state.topics.get(&topic).ok_or_else(|| unknown_topic(&topic))?;
        let offsets = partitions
            .iter()
            .enumerate()
            .map(|(p, log)| v1::PartitionOffsets {
                partition: p as u32,
                log_start_offset: 0,
                high_watermark: log.len() as u64,
                offset_for_timestamp: None,
            })
            .collect();
        Ok(Response::new(v1::ListOffsetsResponse { partitions: offsets }))
    }
}

/// Starts a fake node and returns its address.
async fn start_node() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let address = listener.local_addr().expect("bound address").to_string();
    let node = FakeNode::default();
    node.state.lock().await.address = address.clone();
    let server = tonic::transport::Server::builder()
        .add_service(AdminServiceServer::new(node.clone()))
        .add_service(ClusterServiceServer::new(node.clone()))
        .add_service(ProduceServiceServer::new(node.clone()))
        .add_service(FetchServiceServer::new(node))
        .serve_with_incoming(tcp_incoming(listener));
    tokio::spawn(server);
    address
}

/// What a `flo` run printed and how it exited.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `flo --brokers ADDRESS ARGS...` with `stdin` as input, off the async runtime so the
/// fake node keeps serving.
async fn flo(address: &str, args: &[&str], stdin: &str) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flo"));
    command
        .arg("--brokers")
        .arg(address)
        .args(args)
        .env_remove("FLOTILLA_BROKERS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("flo starts");
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // Closing stdin after writing is the end of input for `produce`.
        pipe.write_all(stdin.as_bytes()).expect("write stdin");
        drop(pipe);
        let output = child.wait_with_output().expect("flo finishes");
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    })
    .await
    .expect("the blocking task finishes")
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_are_acked_in_input_order_and_consumed_in_offset_order() {
    let address = start_node().await;
    let created = flo(&address, &["topic", "create", "orders", "--partitions", "3", "-o", "json"], "").await;
    assert_eq!(created.code, Some(0), "{}", created.stderr);
    assert_eq!(json_lines(&created.stdout)[0]["partitions"], 3);

    let input: String = (0..500).map(|i| format!("user-{}:event {i}\n", i % 13)).collect();
    let produced = flo(&address, &["produce", "orders", "--key-separator", ":", "-o", "json"], &input).await;
    assert_eq!(produced.code, Some(0), "{}", produced.stderr);
    let acks = json_lines(&produced.stdout);
    assert_eq!(acks.len(), 500);
    let mut next_offset = [0u64; 3];
    for (i, ack) in acks.iter().enumerate() {
        let key = format!("user-{}", i % 13);
        assert_eq!(ack["key"], key.as_str(), "ack {i} is in input order");
        let partition = ack["partition"].as_u64().expect("partition");
        assert_eq!(partition, u64::from(partition_for_key(key.as_bytes(), 3)));
        // One request per partition at a time: offsets follow input order within a partition.
        assert_eq!(ack["offset"].as_u64(), Some(next_offset[partition as usize]), "ack {i}");
        next_offset[partition as usize] += 1;
    }

    let consumed =
        flo(&address, &["consume", "orders", "--from-beginning", "--timeout-ms", "300", "-o", "json"], "").await;
    assert_eq!(consumed.code, Some(0), "{}", consumed.stderr);
    let records = json_lines(&consumed.stdout);
    assert_eq!(records.len(), 500);
    let mut seen = [0u64; 3];
    for record in &records {
        let partition = record["partition"].as_u64().expect("partition") as usize;
        assert_eq!(record["offset"].as_u64(), Some(seen[partition]), "offset order within a partition");
        seen[partition] += 1;
        let value = record["value"].as_str().expect("UTF-8 value");
        let i: usize = value.trim_start_matches("event ").parse().expect("event number");
        assert_eq!(record["key"], format!("user-{}", i % 13).as_str());
    }

    let counted = flo(&address, &["consume", "orders", "--partition", "1", "--offset", "2", "-n", "3"], "").await;
    assert_eq!(counted.code, Some(0), "{}", counted.stderr);
    let lines: Vec<&str> = counted.stdout.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("1\t2\tuser-"), "{}", counted.stdout);

    let described = flo(&address, &["topic", "describe", "orders"], "").await;
    assert_eq!(described.code, Some(0), "{}", described.stderr);
    assert!(described.stdout.contains("leader"), "{}", described.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_and_fixed_partition_produce_report_a_summary() {
    let address = start_node().await;
    assert_eq!(flo(&address, &["topic", "create", "logs", "-p", "2"], "").await.code, Some(0));
    // More lines than the producer's read-ahead bound (100,000 unresolved records).
    let input: String = (0..150_000).map(|i| format!("{i}\n")).collect();
    let produced = flo(&address, &["produce", "logs"], &input).await;
    assert_eq!(produced.code, Some(0), "{}", produced.stderr);
    assert_eq!(produced.stdout, "produced 150,000 records to logs (partitions 0, 1)\n");
    let fixed = flo(&address, &["produce", "logs", "--partition", "1", "-o", "json"], "a\nb\n").await;
    assert_eq!(fixed.code, Some(0), "{}", fixed.stderr);
    assert!(json_lines(&fixed.stdout).iter().all(|ack| ack["partition"] == 1 && ack["key"].is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_exit_1_with_the_reason_and_usage_errors_exit_2() {
    let address = start_node().await;
    let unknown = flo(&address, &["produce", "nope"], "x\n").await;
    assert_eq!(unknown.code, Some(1));
    assert!(unknown.stderr.contains("error: ") && unknown.stderr.contains("\"nope\""), "{}", unknown.stderr);

    assert_eq!(flo(&address, &["topic", "create", "t"], "").await.code, Some(0));
    let bad_line =
        flo(&address, &["produce", "t", "--key-separator", "=", "-o", "json"], "a=1\nb=2\nthird\nd=4\n").await;
    assert_eq!(bad_line.code, Some(1));
    assert!(bad_line.stderr.contains("line 3"), "{}", bad_line.stderr);
    assert!(bad_line.stderr.contains("the 2 records read before it were acknowledged"), "{}", bad_line.stderr);
    assert_eq!(json_lines(&bad_line.stdout).len(), 2, "the lines before the bad one were produced");

    let out_of_range = flo(&address, &["produce", "t", "--partition", "9"], "x\n").await;
    assert_eq!(out_of_range.code, Some(1));
    assert!(out_of_range.stderr.contains("partition 9 does not exist"), "{}", out_of_range.stderr);

    let usage = flo(&address, &["consume", "t", "--offset", "3"], "").await;
    assert_eq!(usage.code, Some(2), "--offset needs --partition: {}", usage.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_produce_sends_the_asked_number_of_records() {
    let address = start_node().await;
    let bench = flo(
        &address,
        &[
            "bench",
            "produce",
            "--records",
            "1050",
            "--batch-records",
            "100",
            "--in-flight",
            "4",
            "--replication-factor",
            "1",
            "-o",
            "json",
        ],
        "",
    )
    .await;
    assert_eq!(bench.code, Some(0), "{}", bench.stderr);
    let figures = &json_lines(&bench.stdout)[0];
    assert_eq!(figures["records"], 1050);
    assert_eq!(figures["batches"], 11);
    assert_eq!(figures["errors"], 0);
    assert!(figures["latency_ms"]["p50"].as_f64().is_some_and(|p50| p50 > 0.0), "{figures}");

    let timed = flo(
        &address,
        &[
            "bench",
            "produce",
            "--topic",
            "timed",
            "--duration-secs",
            "2",
            "--record-bytes",
            "64",
            "--in-flight",
            "8",
            "--replication-factor",
            "1",
        ],
        "",
    )
    .await;
    assert_eq!(timed.code, Some(0), "{}", timed.stderr);
    assert!(timed.stderr.contains("created topic timed"), "{}", timed.stderr);
    assert!(timed.stderr.lines().any(|line| line.contains("msgs/s") && line.contains("in flight")), "{}", timed.stderr);
    assert!(timed.stdout.contains("throughput") && timed.stdout.contains("p999"), "{}", timed.stdout);

    let status = flo(&address, &["cluster", "status", "-o", "json"], "").await;
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    assert_eq!(json_lines(&status.stdout)[0]["metadata_leader_id"], 1);
}

//! Malformed input, fuzzed: random and mutated protobuf requests, and broken gRPC and HTTP/2
//! framing, sent for a bounded time to every client RPC and every peer (Raft transport) RPC of
//! a 3-node cluster. Every answer must be a gRPC status (or a well-framed response), no node may
//! crash, hang a call or leak file descriptors or memory, and afterwards the cluster must
//! still serve and still hold every record acknowledged before the fuzzing.
//!
//! `FLOTILLA_FUZZ_SECONDS` (default 20) sets the fuzzing time, `FLOTILLA_FUZZ_SEED` the seed
//! (default: a new one each run, printed). Each worker's requests follow from the seed; the
//! cluster's answers depend on timing, so a seed replays the requests, not the whole run.
//! A longer run: `FLOTILLA_FUZZ_SECONDS=600 make test TEST_ARGS='--test blackbox -- fuzz --nocapture'`.

mod mutate;
mod raw_grpc;
mod schema;
mod tame;
mod wire;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use flotilla_client::v1;
use flotilla_client::v1::cluster_service_client::ClusterServiceClient;
use flotilla_client::v1::group_service_client::GroupServiceClient;
use flotilla_tests::{Cluster, ProcessUsage, read_partition, record};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use mutate::{Framing, Mutation};
use raw_grpc::{Answer, RawConnection};
use schema::{Dictionary, Method, Port, Schema};

/// Fuzzing time in `make test`: long enough for every RPC to see a few hundred requests,
/// short enough for the suite's budget.
const DEFAULT_SECONDS: u64 = 20;
/// Concurrent fuzzing workers, each with its own connections. The cluster and the test share
/// 2 cores; more workers would mostly measure the scheduler.
const WORKERS: u64 = 4;
/// Longest wait for one answer. A fetch may long-poll for up to 60 s (`fetch_wait_ms_max`)
/// when a mutated `grpc-timeout` header does not cut it short, so anything shorter would
/// call a legitimate wait a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(75);
/// Topics the fuzzer may name (and create, delete, move, trim). The topic holding the
/// records checked afterwards is not among them.
const FUZZ_TOPICS: [&str; 4] = ["fuzz", "fuzz-a", "fuzz-b", "fz-1"];
/// Holds records acknowledged before the fuzzing; no request names it.
const KEPT_TOPIC: &str = "acknowledged-before-the-fuzzing";
/// File descriptors a node may hold above its count before the fuzzing once the fuzzer's
/// connections are closed: RocksDB opens files as it flushes and compacts what the fuzzing
/// wrote, so the count is not expected to return exactly.
const FD_GROWTH_MAX: u64 = 64;
/// Resident memory a node may gain over the fuzzing. Generous on purpose: the fuzzing creates
/// topics and groups (legitimate state), and allocators keep freed memory; a leak per request
/// over thousands of requests, or one unbounded buffer, still shows.
const RSS_GROWTH_MAX_KIB: u64 = 512 * 1024;

/// gRPC status codes by number, for the report.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Counts and findings of a run, shared by the workers.
#[derive(Debug, Default)]
struct Stats {
    calls: u64,
    /// Per method: calls, and answers from the handler itself (an OK, a Flotilla error code,
    /// or on the peer port any status but a decode failure).
    methods: BTreeMap<String, (u64, u64)>,
    mutations: BTreeMap<Mutation, u64>,
    framings: BTreeMap<Framing, u64>,
    codes: BTreeMap<i32, u64>,
    /// Streams the client abandoned on purpose, and server resets of those.
    abandoned: u64,
    /// Raw TCP connections that sent garbage instead of HTTP/2: closed by the server / left
    /// open waiting for more.
    garbage_closed: u64,
    garbage_open: u64,
    /// Calls that broke a rule, described with what was sent.
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn fuzzed_requests_get_statuses_and_the_cluster_still_serves() -> anyhow::Result<()> {
    let seconds = env_u64("FLOTILLA_FUZZ_SECONDS")?.unwrap_or(DEFAULT_SECONDS);
    let seed = match env_u64("FLOTILLA_FUZZ_SEED")? {
        Some(seed) => seed,
        None => fresh_seed(),
    };
    eprintln!("fuzz: seed {seed}, {seconds} s (replay the requests: FLOTILLA_FUZZ_SEED={seed})");
    let schema = Arc::new(Schema::load()?);

    let cluster = Cluster::start(3).await?;
    let client = cluster.client()?;
    client.create_topic(FUZZ_TOPICS[0], 3, 3).await?;
    client.create_topic(KEPT_TOPIC, 2, 3).await?;
    let mut kept = Vec::new();
    for partition in 0..2 {
        let values: Vec<String> = (0..20).map(|i| format!("kept-{partition}-{i}")).collect();
        let acks = client
            .produce(KEPT_TOPIC, Some(partition), values.iter().map(|v| record("k", v.clone())).collect())
            .await?;
        ensure!(acks.len() == values.len(), "{} acks for {} records", acks.len(), values.len());
        kept.push((partition, acks[0].offset, values));
    }
    client.produce(FUZZ_TOPICS[0], Some(0), (0..10).map(|i| record("k", format!("f{i}"))).collect()).await?;
    let dictionary = Arc::new(dictionary(&cluster).await?);

    let nodes = cluster.node_ids();
    let before: Vec<ProcessUsage> = nodes.iter().map(|&id| cluster.usage(id)).collect::<anyhow::Result<_>>()?;
    let stats = Arc::new(Mutex::new(Stats::default()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let targets: Vec<(u64, String, String)> = nodes
        .iter()
        .map(|&id| (id, cluster.client_address(id).to_string(), cluster.peer_address(id).to_string()))
        .collect();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let rng = StdRng::seed_from_u64(seed ^ worker.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let (schema, dictionary, stats, targets) =
                (Arc::clone(&schema), Arc::clone(&dictionary), Arc::clone(&stats), targets.clone());
            tokio::spawn(fuzz_worker(worker, rng, schema, dictionary, targets, stats, deadline))
        })
        .collect();
    for worker in workers {
        worker.await.context("a fuzz worker panicked")??;
    }
    cluster.check_running().context("a node crashed under fuzzing")?;
    match client.list_topics().await {
        Ok(topics) => {
            let shown: Vec<String> = topics
                .iter()
                .map(|topic| format!("{} ({}x{})", topic.name, topic.partitions, topic.replication_factor))
                .collect();
            eprintln!("fuzz: topics after the fuzzing: {}", shown.join(", "));
        }
        Err(error) => eprintln!("fuzz: listing the topics after the fuzzing failed: {error}"),
    }

    // No leak: once the fuzzer's connections are gone, each node's descriptors return to
    // about where they were, and its memory has not run away.
    let mut after = Vec::new();
    for (&id, before) in nodes.iter().zip(&before) {
        let settled = cluster
            .wait_for(&format!("node {id}'s file descriptors to settle"), Duration::from_secs(30), || async {
                let usage = cluster.usage(id)?;
                ensure!(
                    usage.fds <= before.fds + FD_GROWTH_MAX,
                    "node {id} holds {} file descriptors, {} before the fuzzing",
                    usage.fds,
                    before.fds
                );
                Ok(usage)
            })
            .await?;
        after.push(settled);
    }

    {
        let stats = stats.lock().expect("stats");
        let run = Run { stats: &stats, schema: &schema, nodes: &nodes, before: &before, after: &after, seed, seconds };
        eprintln!("{}", run.report());
        run.judge()?;
    }

    // The cluster still serves: a new topic takes records and gives them back, and every
    // record acknowledged before the fuzzing is still there.
    cluster.wait_ready(Duration::from_secs(60)).await.context("the cluster after the fuzzing")?;
    client.create_topic("after-the-fuzzing", 3, 3).await?;
    let values: Vec<String> = (0..30).map(|i| format!("after-{i}")).collect();
    let acks =
        client.produce("after-the-fuzzing", Some(1), values.iter().map(|v| record("k", v.clone())).collect()).await?;
    let start = acks.first().context("no acks")?.offset;
    let read = read_partition(&client, "after-the-fuzzing", 1, start, start + values.len() as u64).await?;
    ensure_values("after-the-fuzzing", 1, &read, &values)?;
    for (partition, start, values) in kept {
        let read = read_partition(&client, KEPT_TOPIC, partition, start, start + values.len() as u64).await?;
        ensure_values(KEPT_TOPIC, partition, &read, &values)?;
    }
    cluster.check_running()
}

/// Sends fuzzed calls to random nodes until `deadline`.
async fn fuzz_worker(
    worker: u64,
    mut rng: StdRng,
    schema: Arc<Schema>,
    dictionary: Arc<Dictionary>,
    targets: Vec<(u64, String, String)>,
    stats: Arc<Mutex<Stats>>,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut connections: BTreeMap<(u64, Port), RawConnection> = BTreeMap::new();
    let mut previous = Vec::new();
    let mut sent = 0u64;
    while Instant::now() < deadline {
        let (node, client_address, peer_address) = targets.choose(&mut rng).expect("nodes");
        if rng.random_bool(0.01) {
            let address = if rng.random_bool(0.5) { client_address } else { peer_address };
            let closed = garbage_connection(address, &mut rng).await?;
            let mut stats = stats.lock().expect("stats");
            if closed {
                stats.garbage_closed += 1
            } else {
                stats.garbage_open += 1
            }
            continue;
        }
        let method = schema.methods().choose(&mut rng).expect("methods").clone();
        let address = if method.port == Port::Client { client_address } else { peer_address };
        let generated = schema.generate(&method.input, &dictionary, &mut rng);
        let (mutation, message) = mutate::mutate(generated, &previous, &mut rng);
        let message = tame::tame(&method.path, message);
        let (framing, call) = mutate::frame_call(&method.path, message.clone(), &mut rng);
        let message_bytes = message.len();
        previous = message;

        let key = (*node, method.port);
        if connections.get(&key).is_none_or(RawConnection::is_closed) {
            connections.insert(key, RawConnection::connect(address).await?);
        }
        let connection = connections.get_mut(&key).expect("just connected");
        let answer = connection.call(&call, CALL_TIMEOUT).await?;
        sent += 1;
        let verdict = judge(&method, framing, answer.as_ref());
        let mut stats = stats.lock().expect("stats");
        stats.calls += 1;
        *stats.mutations.entry(mutation).or_default() += 1;
        *stats.framings.entry(framing).or_default() += 1;
        let entry = stats.methods.entry(method.path.clone()).or_default();
        entry.0 += 1;
        if verdict.handled {
            entry.1 += 1;
        }
        match &answer {
            Some(Answer::Status { code, .. }) => *stats.codes.entry(*code).or_default() += 1,
            Some(Answer::Abandoned) => stats.abandoned += 1,
            _ => {}
        }
        if let Some(problem) = verdict.problem {
            let shown = &call.body[..call.body.len().min(48)];
            stats.failures.push(format!(
                "worker {worker} call {sent}: {} on node {node} ({:?} port), {mutation:?} message of {} bytes in \
                 {framing:?} framing {:?}, body starts {shown:02x?}: {problem}",
                method.path, method.port, message_bytes, call.headers,
            ));
        }
        if rng.random_bool(0.02) {
            // Now and then a fresh connection, so connection setup and teardown are fuzzed
            // alongside and one poisoned connection cannot hide the rest of a run.
            connections.remove(&key);
        }
    }
    Ok(())
}

/// What one answer says about the server.
struct Verdict {
    /// The request reached the method's own handler.
    handled: bool,
    /// A broken rule, if any.
    problem: Option<String>,
}

fn judge(method: &Method, framing: Framing, answer: Option<&Answer>) -> Verdict {
    let problem = match answer {
        None => Some(format!("no answer within {CALL_TIMEOUT:?}: the call hangs")),
        Some(Answer::Status { code, message, messages, well_framed, error_code }) => {
            if !(0..=16).contains(code) {
                Some(format!("grpc-status {code} is not a gRPC status code"))
            } else if *code == 0 && (!well_framed || *messages != 1) {
                Some(format!("OK with {messages} response messages (well framed: {well_framed}) instead of one"))
            } else if *code != 0 && message.trim().is_empty() {
                Some(format!("status {} without a message", CODE_NAMES[*code as usize]))
            } else if *code == 2 || (*code == 13 && error_code.is_some()) {
                // UNKNOWN is what tonic answers when a handler panics or returns an unmapped
                // error; a Flotilla code on INTERNAL is the server admitting a bug.
                Some(format!("status {} ({message:?}, flotilla code {error_code:?})", CODE_NAMES[*code as usize]))
            } else {
                None
            }
        }
        Some(Answer::NoStatus { http_status }) => Some(format!("HTTP {http_status} without a grpc-status")),
        Some(Answer::Reset(why)) if !framing.may_go_unanswered() => Some(format!("no status, the stream ended: {why}")),
        Some(Answer::Reset(_)) | Some(Answer::Abandoned) => None,
    };
    let handled = match answer {
        Some(Answer::Status { code: 0, .. }) => true,
        Some(Answer::Status { error_code: Some(_), .. }) => true,
        Some(Answer::Status { code, message, .. }) => {
            method.port == Port::Peer && *code != 13 && *code != 12 && !message.contains("decode")
        }
        _ => false,
    };
    Verdict { handled, problem }
}

/// Opens a TCP connection to `address` and sends bytes that are not HTTP/2 (or a valid
/// preface followed by garbage frames); returns whether the server closed the connection
/// within a few seconds. Leaving it open is allowed (it may wait for more bytes); answering
/// anything but a close or an HTTP/2 GOAWAY is not the server's job to get right for us.
async fn garbage_connection(address: &str, rng: &mut StdRng) -> anyhow::Result<bool> {
    let mut stream =
        tokio::net::TcpStream::connect(address).await.with_context(|| format!("connecting to {address}"))?;
    let mut garbage = Vec::new();
    if rng.random_bool(0.5) {
        garbage.extend_from_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }
    garbage.extend(schema::random_bytes(rng, 4096));
    // The server may close before reading everything: a failed write is an answer too.
    if stream.write_all(&garbage).await.is_err() {
        return Ok(true);
    }
    let mut buffer = vec![0u8; 4096];
    let read_until_closed = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    Ok(tokio::time::timeout(Duration::from_secs(3), read_until_closed).await.is_ok())
}

/// Names and numbers from the running cluster, so that generated requests often refer to
/// things that exist.
async fn dictionary(cluster: &Cluster) -> anyhow::Result<Dictionary> {
    let channel = cluster.channel(1)?;
    let metadata = ClusterServiceClient::new(channel.clone())
        .metadata(v1::MetadataRequest { topics: vec![FUZZ_TOPICS[0].to_string()] })
        .await?
        .into_inner();
    let mut raft_groups: Vec<u64> = vec![0];
    for topic in &metadata.topics {
        raft_groups.extend(topic.partitions.iter().map(|partition| partition.group_id));
    }
    let joined = GroupServiceClient::new(channel)
        .join_group(v1::JoinGroupRequest {
            group: "fuzz-group".to_string(),
            topics: vec![FUZZ_TOPICS[0].to_string()],
            session_timeout_ms: 300_000,
            rebalance_timeout_ms: 0,
            client_id: "fuzz".to_string(),
        })
        .await?
        .into_inner();
    Ok(Dictionary {
        topics: FUZZ_TOPICS.iter().map(|topic| topic.to_string()).collect(),
        groups: vec!["fuzz-group".to_string(), "fuzz-other".to_string()],
        nodes: cluster.node_ids(),
        raft_groups,
        offsets: vec![0, 1, 5, 9, 10, 11, u64::MAX],
        members: vec![joined.member_id, joined.member_epoch, joined.member_epoch + 1],
    })
}

/// A finished fuzzing run: what was counted, and each node's usage before and after.
struct Run<'a> {
    stats: &'a Stats,
    schema: &'a Schema,
    nodes: &'a [u64],
    before: &'a [ProcessUsage],
    after: &'a [ProcessUsage],
    seed: u64,
    seconds: u64,
}

impl Run<'_> {
    /// The rules for the run as a whole: no broken rule on any call, every RPC's handler reached,
    /// no node's memory run away.
    fn judge(&self) -> anyhow::Result<()> {
        let Run { stats, schema, nodes, before, after, seed, .. } = *self;
        ensure!(
            stats.failures.is_empty(),
            "{} fuzzed calls broke the rules (seed {seed}); the first ones:\n{}",
            stats.failures.len(),
            stats.failures.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
        );
        for method in schema.methods() {
            let (calls, handled) = stats.methods.get(&method.path).copied().unwrap_or_default();
            ensure!(
                handled > 0,
                "{} got {calls} fuzzed calls but no answer from its handler: the generator never got past decoding",
                method.path
            );
        }
        for ((id, before), after) in nodes.iter().zip(before).zip(after) {
            ensure!(
                after.rss_kib <= before.rss_kib + RSS_GROWTH_MAX_KIB,
                "node {id} grew from {} KiB to {} KiB resident during the fuzzing",
                before.rss_kib,
                after.rss_kib
            );
        }
        Ok(())
    }

    /// The summary printed after every run.
    fn report(&self) -> String {
        use std::fmt::Write as _;
        let Run { stats, schema, nodes, before, after, seed, seconds } = *self;
        let mut out =
            format!("fuzz: seed {seed}, {seconds} s, {} calls\n  per method (calls / handled):\n", stats.calls);
        for method in schema.methods() {
            let (calls, handled) = stats.methods.get(&method.path).copied().unwrap_or_default();
            let _ = writeln!(out, "    {:<48} {calls:>6} / {handled}", method.path);
        }
        let codes: Vec<String> = stats
            .codes
            .iter()
            .map(|(code, count)| format!("{} {count}", CODE_NAMES.get(*code as usize).copied().unwrap_or("?")))
            .collect();
        let _ = writeln!(out, "  statuses: {}", codes.join(", "));
        let _ = writeln!(out, "  abandoned by the client: {}", stats.abandoned);
        let _ = writeln!(
            out,
            "  garbage TCP connections: {} closed by the server, {} left open",
            stats.garbage_closed, stats.garbage_open
        );
        let _ = writeln!(out, "  mutations: {:?}", stats.mutations);
        let _ = writeln!(out, "  framings: {:?}", stats.framings);
        for ((id, before), after) in nodes.iter().zip(before).zip(after) {
            let _ = writeln!(
                out,
                "  node {id}: RSS {} -> {} MiB, fds {} -> {}, threads {} -> {}",
                before.rss_kib / 1024,
                after.rss_kib / 1024,
                before.fds,
                after.fds,
                before.threads,
                after.threads
            );
        }
        let _ = writeln!(out, "  broken rules: {}", stats.failures.len());
        out
    }
}

fn ensure_values(topic: &str, partition: u32, read: &[v1::FetchedRecord], values: &[String]) -> anyhow::Result<()> {
    let got: Vec<String> = read
        .iter()
        .map(|fetched| {
            let value = fetched.record.as_ref().map(|record| record.value.to_vec()).unwrap_or_default();
            String::from_utf8_lossy(&value).into_owned()
        })
        .collect();
    ensure!(got == values, "{topic}/{partition}: read back {got:?}, acknowledged {values:?}");
    Ok(())
}

fn env_u64(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value.trim().parse().with_context(|| format!("{name}={value:?} is not a number"))?)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {name}")),
    }
}

/// A new seed per run, so runs explore different requests; it is printed for replay.
#[allow(clippy::disallowed_methods)] // Not simulation code: the wall clock only picks a seed.
fn fresh_seed() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    now.as_nanos() as u64 ^ u64::from(std::process::id())
}

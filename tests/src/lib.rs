//! Harness for the black-box tests: runs real `flotilla` nodes as child processes on loopback
//! ports, with their data in a temporary directory, and the `flo` CLI against them.
//!
//! A [`Cluster`] owns its node processes. Dropping it (a finished test, a failed assertion, a
//! panic) kills every node it started, reaps it, and prints the tail of each node's log; the
//! test harness shows that output only for failing tests. Set `FLOTILLA_TEST_KEEP_DATA=1` to
//! keep the data directories and full logs of a run (their path is printed).
//!
//! The binaries are taken from `FLOTILLA_BIN` / `FLO_BIN` or else from the target directory the
//! test executable itself was built into. `cargo test --test blackbox` does not build them: run
//! `cargo build --release --workspace --all-targets` first (`make test` does).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use flotilla_client::v1::cluster_service_client::ClusterServiceClient;
use flotilla_client::{Client, ClientConfig, ErrorCode, WireError, v1};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// How long a freshly started cluster may take until every node serves and the metadata group
/// has a leader. Generous: CI machines with 2 cores run several clusters at once.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one `flo` invocation; a hung CLI fails the test instead of hanging it.
pub const FLO_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a node may take to exit after SIGTERM before the harness calls it hung.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between two checks of a polled condition.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Log lines printed per node when a cluster is dropped.
const LOG_TAIL_LINES: usize = 40;
/// Attempts at starting a cluster when a node loses the race for a port the harness picked.
const PORT_RACE_ATTEMPTS: usize = 3;

/// The `flotilla` and `flo` executables.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The server.
    pub flotilla: PathBuf,
    /// The CLI.
    pub flo: PathBuf,
}

impl Binaries {
    /// Finds the binaries: `FLOTILLA_BIN` / `FLO_BIN`, else next to the test executable's
    /// `deps/` directory (`target/release/deps/blackbox-HASH` → `target/release/flotilla`).
    pub fn locate() -> anyhow::Result<Binaries> {
        let exe = std::env::current_exe().context("locating the test executable")?;
        // deps/ → release/
        let release_dir = exe.parent().and_then(Path::parent).map(Path::to_path_buf);
        let find = |env: &str, name: &str| -> anyhow::Result<PathBuf> {
            let path = match std::env::var_os(env) {
                Some(path) => PathBuf::from(path),
                None => release_dir
                    .as_ref()
                    .map(|dir| dir.join(name))
                    .with_context(|| format!("cannot derive the target directory from {}", exe.display()))?,
            };
            ensure!(
                path.is_file(),
                "no `{name}` binary at {} (set {env} to override): run \
                 `cargo build --release --workspace --all-targets` first (`make test` does)",
                path.display()
            );
            Ok(path)
        };
        Ok(Binaries { flotilla: find("FLOTILLA_BIN", "flotilla")?, flo: find("FLO_BIN", "flo")? })
    }
}

/// One node of a [`Cluster`]: its identity, addresses and files, and its process when running.
#[derive(Debug)]
struct Node {
    id: u64,
    client_address: String,
    peer_address: String,
    http_address: String,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// The running process; `None` after a kill or stop.
    process: Mutex<Option<Child>>,
}

/// A cluster of real `flotilla` processes on loopback, node ids `1..=n`.
#[derive(Debug)]
pub struct Cluster {
    /// Holds every node's data directory and log; removed on drop.
    dir: Option<tempfile::TempDir>,
    binaries: Binaries,
    nodes: Vec<Node>,
    initial_cluster: String,
}

impl Cluster {
    /// Starts `n` nodes and waits until every one serves clients, every node is live and the
    /// metadata group has a leader.
    pub async fn start(n: usize) -> anyhow::Result<Cluster> {
        ensure!(n > 0, "a cluster needs at least one node");
        let binaries = Binaries::locate()?;
        let mut attempt = 1;
        loop {
            let cluster = Cluster::spawn(n, binaries.clone())?;
            match cluster.wait_ready(START_TIMEOUT).await {
                Ok(()) => return Ok(cluster),
                // Ports are picked by binding port 0 and releasing it, so another process may
                // take one before the node binds it; pick new ports and try again.
                Err(error) if attempt < PORT_RACE_ATTEMPTS && cluster.lost_port_race() => {
                    eprintln!("harness: a node could not bind its port (attempt {attempt}): {error:#}; retrying");
                    attempt += 1;
                }
                Err(error) => return Err(error.context(format!("starting a {n}-node cluster"))),
            }
        }
    }

    fn spawn(n: usize, binaries: Binaries) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("flotilla-blackbox-").tempdir().context("creating a temp dir")?;
        let ports = free_ports(3 * n)?;
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let id = i as u64 + 1;
                Node {
                    id,
                    client_address: format!("127.0.0.1:{}", ports[3 * i]),
                    peer_address: format!("127.0.0.1:{}", ports[3 * i + 1]),
                    http_address: format!("127.0.0.1:{}", ports[3 * i + 2]),
                    data_dir: dir.path().join(format!("node{id}")),
                    log_path: dir.path().join(format!("node{id}.log")),
                    process: Mutex::new(None),
                }
            })
            .collect();
        let initial_cluster =
            nodes.iter().map(|node| format!("{}={}", node.id, node.peer_address)).collect::<Vec<_>>().join(",");
        let cluster = Cluster { dir: Some(dir), binaries, nodes, initial_cluster };
        for node in &cluster.nodes {
            cluster.spawn_node(node)?;
        }
        Ok(cluster)
    }

    /// Node ids, `1..=n`.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    /// Client addresses of every node ("127.0.0.1:PORT").
    pub fn brokers(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.client_address.clone()).collect()
    }

    /// Client address of node `id`.
    pub fn client_address(&self, id: u64) -> &str {
        &self.node(id).client_address
    }

    /// Raft peer address of node `id`.
    pub fn peer_address(&self, id: u64) -> &str {
        &self.node(id).peer_address
    }

    /// Data directory of node `id`.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }

    /// The `--initial-cluster` value every node runs with.
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// An SDK client that knows every node.
    pub fn client(&self) -> anyhow::Result<Client> {
        Client::connect(self.brokers(), ClientConfig::default()).context("creating a client")
    }

    /// A raw gRPC channel to node `id` alone (no routing, no retries): what `grpcurl` would
    /// do. Every call on it times out after 10 s.
    pub fn channel(&self, id: u64) -> anyhow::Result<Channel> {
        channel_to(self.client_address(id))
    }

    /// The process id of node `id`, if it is running.
    pub fn pid(&self, id: u64) -> Option<u32> {
        lock(&self.node(id).process).as_ref().map(Child::id)
    }

    /// What node `id`'s process holds now (from `/proc`), for leak checks.
    pub fn usage(&self, id: u64) -> anyhow::Result<ProcessUsage> {
        let pid = self.pid(id).with_context(|| format!("node {id} is not running"))?;
        ProcessUsage::of(pid).with_context(|| format!("reading /proc for node {id} (pid {pid})"))
    }

    /// Kills node `id` with SIGKILL (no chance to flush or say goodbye) and reaps it.
    pub fn kill9(&self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id);
        let mut process = lock(&node.process);
        let mut child = process.take().with_context(|| format!("node {id} is not running"))?;
        // std's Child::kill sends SIGKILL on Unix.
        child.kill().with_context(|| format!("SIGKILL to node {id}"))?;
        child.wait().with_context(|| format!("reaping node {id}"))?;
        Ok(())
    }

    /// Freezes node `id` with SIGSTOP: it stays up but answers nothing (a long GC pause, a
    /// stalled VM) until [`Cluster::resume`].
    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "-STOP")
    }

    /// Lets a node frozen by [`Cluster::pause`] run again (SIGCONT).
    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        self.signal(id, "-CONT")
    }

    fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let node = self.node(id);
        let process = lock(&node.process);
        let pid = process.as_ref().with_context(|| format!("node {id} is not running"))?.id();
        let status = Command::new("kill").args([signal, &pid.to_string()]).status().context("running kill")?;
        ensure!(status.success(), "kill {signal} {pid} (node {id}) failed: {status}");
        Ok(())
    }

    /// Stops node `id` with SIGTERM and waits for it to exit; fails (after a SIGKILL) if it
    /// is still running [`STOP_TIMEOUT`] later.
    pub async fn stop(&self, id: u64) -> anyhow::Result<ExitStatus> {
        let node = self.node(id);
        let pid = {
            let process = lock(&node.process);
            process.as_ref().with_context(|| format!("node {id} is not running"))?.id()
        };
        // The child is not reaped before the wait below, so the pid cannot have been reused.
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().context("running `kill -TERM`")?;
        ensure!(status.success(), "`kill -TERM {pid}` (node {id}) failed: {status}");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            {
                let mut process = lock(&node.process);
                let child = process.as_mut().with_context(|| format!("node {id} is not running"))?;
                if let Some(status) = child.try_wait().with_context(|| format!("waiting for node {id}"))? {
                    process.take();
                    return Ok(status);
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    process.take();
                    bail!(
                        "node {id} still ran {STOP_TIMEOUT:?} after SIGTERM (killed it)\n{}",
                        self.log_tail(id, LOG_TAIL_LINES)
                    );
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Starts node `id` again with the same flags and data directory, and waits until it
    /// answers clients (not until it has caught up: tests poll for what they need).
    pub async fn restart(&self, id: u64) -> anyhow::Result<()> {
        self.restart_many(&[id]).await
    }

    /// Starts several stopped nodes at once (a node that needs a quorum to serve cannot wait
    /// for its peers one at a time) and waits until each answers clients.
    pub async fn restart_many(&self, ids: &[u64]) -> anyhow::Result<()> {
        for &id in ids {
            self.spawn_node(self.node(id))?;
        }
        for &id in ids {
            let address = self.client_address(id).to_string();
            self.wait_for(&format!("restarted node {id} to answer a cluster status request"), START_TIMEOUT, || {
                let address = address.clone();
                async move { status_of(&address).await.map(|_| ()) }
            })
            .await?;
        }
        Ok(())
    }

    /// Starts stopped node `id` again, expecting it to refuse to start: waits up to `timeout`
    /// for the process to exit on its own and returns its exit status and what it printed
    /// during this run. Fails (after a SIGKILL) if it is still running at the deadline.
    pub async fn start_expecting_exit(&self, id: u64, timeout: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let node = self.node(id);
        let start = std::fs::metadata(&node.log_path).map_or(0, |m| m.len());
        self.spawn_node(node)?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            {
                let mut process = lock(&node.process);
                let child = process.as_mut().with_context(|| format!("node {id} is not running"))?;
                if let Some(status) = child.try_wait().with_context(|| format!("waiting for node {id}"))? {
                    process.take();
                    break status;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    process.take();
                    bail!(
                        "node {id} was expected to refuse to start but still ran after {timeout:?} (killed it)\n{}",
                        self.log_tail(id, LOG_TAIL_LINES)
                    );
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        };
        let bytes = std::fs::read(&node.log_path).with_context(|| format!("reading {}", node.log_path.display()))?;
        let printed = usize::try_from(start).ok().and_then(|start| bytes.get(start..)).unwrap_or_default();
        let printed = String::from_utf8_lossy(printed).into_owned();
        Ok((status, printed))
    }

    /// Waits until every running node answers clients, every node of the cluster is live and
    /// the metadata group has a leader.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let addresses: Vec<(u64, String)> = self
            .nodes
            .iter()
            .filter(|node| lock(&node.process).is_some())
            .map(|node| (node.id, node.client_address.clone()))
            .collect();
        self.wait_for("every node to serve, be live, and agree on a metadata leader", timeout, || {
            let addresses = addresses.clone();
            async move {
                let mut leaders = Vec::new();
                for (id, address) in &addresses {
                    let status = status_of(address).await.with_context(|| format!("node {id}"))?;
                    let live = status.nodes.iter().filter(|node| node.live).count();
                    ensure!(
                        status.nodes.len() == n && live == n,
                        "node {id} sees {} nodes, {live} live; want {n}",
                        status.nodes.len()
                    );
                    ensure!(status.metadata_leader_id != 0, "node {id} knows no metadata leader");
                    leaders.push(status.metadata_leader_id);
                }
                leaders.dedup();
                ensure!(leaders.len() == 1, "nodes name different metadata leaders: {leaders:?}");
                Ok(())
            }
        })
        .await
    }

    /// Polls `check` until it returns `Ok` or `timeout` passes; the error then names `what`
    /// and carries the last failure. Fails at once if a node the harness started has exited
    /// on its own (a crash), with the tail of its log.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            let last = match tokio::time::timeout_at(deadline, check()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
                Err(_elapsed) => anyhow!("the last check was still running at the deadline"),
            };
            if Instant::now() + POLL_INTERVAL >= deadline {
                return Err(last.context(format!("gave up after {timeout:?} waiting for {what}")));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Fails if a node that should be running has exited (crashed), naming it with its exit
    /// status and log tail.
    pub fn check_running(&self) -> anyhow::Result<()> {
        for node in &self.nodes {
            let mut process = lock(&node.process);
            let Some(child) = process.as_mut() else { continue };
            if let Some(status) = child.try_wait().with_context(|| format!("polling node {}", node.id))? {
                process.take();
                bail!("node {} exited on its own with {status}\n{}", node.id, self.log_tail(node.id, LOG_TAIL_LINES));
            }
        }
        Ok(())
    }

    /// Runs `flo --brokers <every node> ARGS`, feeding it `stdin` (or nothing).
    pub async fn flo(&self, args: &[&str], stdin: Option<Vec<u8>>) -> anyhow::Result<Output> {
        let brokers = self.brokers().join(",");
        self.flo_with_brokers(&brokers, args, stdin).await
    }

    /// Runs `flo --brokers BROKERS ARGS`, feeding it `stdin` (or nothing).
    pub async fn flo_with_brokers(
        &self,
        brokers: &str,
        args: &[&str],
        stdin: Option<Vec<u8>>,
    ) -> anyhow::Result<Output> {
        let mut command = clean_command(&self.binaries.flo);
        command.arg("--brokers").arg(brokers).args(args);
        run_with_timeout(command, stdin, FLO_TIMEOUT).await.with_context(|| format!("running flo {args:?}"))
    }

    /// Starts `flo --brokers <every node> ARGS` in the background, collecting its stdout lines
    /// as they come (for long-running commands such as `flo consume --follow`).
    pub fn spawn_flo(&self, args: &[&str]) -> anyhow::Result<FloProcess> {
        let mut command = clean_command(&self.binaries.flo);
        command.arg("--brokers").arg(self.brokers().join(",")).args(args);
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().with_context(|| format!("starting flo {args:?}"))?;
        let collect = |stream: Box<dyn std::io::Read + Send>| {
            let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
            let sink = std::sync::Arc::clone(&lines);
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    sink.lock().expect("line sink").push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().context("flo stdout")?));
        let stderr = collect(Box::new(child.stderr.take().context("flo stderr")?));
        Ok(FloProcess { child, stdout, stderr })
    }

    /// Runs a one-off `flotilla` process with `args` (nothing added) until it exits, for
    /// misconfiguration tests; fails if it still runs after `timeout`.
    pub async fn run_flotilla(&self, args: &[String], timeout: Duration) -> anyhow::Result<Output> {
        let mut command = clean_command(&self.binaries.flotilla);
        command.args(args);
        run_with_timeout(command, None, timeout).await.with_context(|| format!("running flotilla {args:?}"))
    }

    /// The last `lines` lines of node `id`'s log (all its runs), framed for printing.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let node = self.node(id);
        let text = match std::fs::read(&node.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => return format!("(no log for node {id} at {}: {error})\n", node.log_path.display()),
        };
        let all: Vec<&str> = text.lines().collect();
        let mut out = format!("---- node {id}: last {lines} lines of {} ----\n", node.log_path.display());
        for line in &all[all.len().saturating_sub(lines)..] {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(out, "---- end of node {id} ----");
        out
    }

    fn node(&self, id: u64) -> &Node {
        let index = usize::try_from(id).ok().and_then(|id| id.checked_sub(1));
        match index.and_then(|index| self.nodes.get(index)) {
            Some(node) => node,
            None => panic!("the cluster has nodes 1..={}; there is no node {id}", self.nodes.len()),
        }
    }

    /// Starts the process of `node` (not running yet), its output appended to its log.
    fn spawn_node(&self, node: &Node) -> anyhow::Result<()> {
        let mut process = lock(&node.process);
        ensure!(process.is_none(), "node {} is already running", node.id);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        writeln!(log, "==== harness: starting node {} ====", node.id)?;
        let mut command = clean_command(&self.binaries.flotilla);
        command
            .arg("--node-id")
            .arg(node.id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--listen")
            .arg(&node.client_address)
            .arg("--peer-listen")
            .arg(&node.peer_address)
            .arg("--http-listen")
            .arg(&node.http_address)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log);
        let child = command.spawn().with_context(|| format!("spawning {}", self.binaries.flotilla.display()))?;
        *process = Some(child);
        Ok(())
    }

    /// Whether a node died because its port was taken between the harness picking it and the
    /// node binding it.
    fn lost_port_race(&self) -> bool {
        self.nodes.iter().any(|node| {
            let exited = lock(&node.process).as_mut().is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))));
            let log = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            exited && log.contains("binding --") && log.contains("in use")
        })
    }
}

impl Drop for Cluster {
    /// Kills and reaps every node (no orphan outlives the test), then prints each node's log
    /// tail, which the test harness shows only when the test failed.
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(mut child) = lock(&node.process).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let mut report = String::new();
        for node in &self.nodes {
            report.push_str(&self.log_tail(node.id, LOG_TAIL_LINES));
        }
        eprint!("{report}");
        if std::env::var_os("FLOTILLA_TEST_KEEP_DATA").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("harness: keeping the cluster's data and logs in {}", dir.keep().display());
        }
    }
}

/// Resources a process holds, read from `/proc/PID` (Linux only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessUsage {
    /// Resident memory (`VmRSS`), in KiB.
    pub rss_kib: u64,
    /// Open file descriptors (sockets included).
    pub fds: u64,
    /// Threads.
    pub threads: u64,
}

impl ProcessUsage {
    /// Reads `/proc/PID/status` and `/proc/PID/fd`.
    pub fn of(pid: u32) -> anyhow::Result<ProcessUsage> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status.lines().find(|line| line.starts_with(name)).with_context(|| format!("no {name}"))?;
            let value = line[name.len()..].split_whitespace().next().with_context(|| format!("empty {name}"))?;
            value.parse().with_context(|| format!("{name} {value:?}"))
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
        Ok(ProcessUsage { rss_kib: field("VmRSS:")?, fds, threads: field("Threads:")? })
    }
}

/// The stdout of a command that must have succeeded; otherwise an error carrying its exit
/// status and stderr.
pub fn stdout_of(output: &Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        output.status.success(),
        "{what} failed with {}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).with_context(|| format!("{what} printed something that is not UTF-8"))
}

/// Every record of `topic`/`partition` in `[from, to)`, checked to be a dense run of offsets.
pub async fn read_partition(
    client: &Client,
    topic: &str,
    partition: u32,
    from: u64,
    to: u64,
) -> anyhow::Result<Vec<v1::FetchedRecord>> {
    let mut records: Vec<v1::FetchedRecord> = Vec::new();
    let mut next = from;
    while next < to {
        let response = client
            .fetch(topic, partition, next, 1000, 0, 0)
            .await
            .with_context(|| format!("fetching {topic}/{partition} at offset {next}"))?;
        ensure!(
            !response.records.is_empty(),
            "fetching {topic}/{partition} at offset {next} returned nothing (high watermark {}, want records up to {to})",
            response.high_watermark
        );
        for record in response.records {
            ensure!(
                record.offset == next,
                "{topic}/{partition}: fetch returned offset {} where {next} was due (offsets must be dense)",
                record.offset
            );
            next += 1;
            records.push(record);
            if next == to {
                break;
            }
        }
    }
    Ok(records)
}

/// The Flotilla error code of a gRPC status, if it carries one.
pub fn error_code(status: &tonic::Status) -> Option<ErrorCode> {
    WireError::from_status(status).code
}

/// Asserts that `result` failed with `code` and a message containing every one of `needles`;
/// returns the message.
pub fn expect_error<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tonic::Status>,
    code: ErrorCode,
    needles: &[&str],
) -> anyhow::Result<String> {
    let status = match result {
        Ok(value) => bail!("{what}: expected {} but the call succeeded: {value:?}", code.name()),
        Err(status) => status,
    };
    let wire = WireError::from_status(&status);
    ensure!(wire.code == Some(code), "{what}: expected {}, got {wire}", code.name());
    for needle in needles {
        ensure!(wire.message.contains(needle), "{what}: the message {:?} does not mention {needle:?}", wire.message);
    }
    Ok(wire.message)
}

/// A keyed record with the given value.
pub fn record(key: &str, value: impl Into<Vec<u8>>) -> v1::Record {
    v1::Record {
        key: Some(key.as_bytes().to_vec().into()),
        value: value.into().into(),
        headers: Vec::new(),
        timestamp_ms: 0,
    }
}

/// A lazily connected gRPC channel to `address` whose calls time out after 10 s.
pub fn channel_to(address: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .with_context(|| format!("bad address {address:?}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10));
    Ok(endpoint.connect_lazy())
}

/// Asks the node at `address` itself (no routing) for the cluster status.
async fn status_of(address: &str) -> anyhow::Result<v1::StatusResponse> {
    let mut stub = ClusterServiceClient::new(channel_to(address)?);
    let response = stub.status(v1::StatusRequest {}).await.with_context(|| format!("status from {address}"))?;
    Ok(response.into_inner())
}

/// A command for one of our binaries, without the caller's `FLOTILLA_*` variables (the server
/// reads them as configuration) and with uncoloured logs.
/// A `flo` process running in the background; SIGKILLed when dropped.
#[derive(Debug)]
pub struct FloProcess {
    child: Child,
    stdout: std::sync::Arc<Mutex<Vec<String>>>,
    stderr: std::sync::Arc<Mutex<Vec<String>>>,
}

impl FloProcess {
    /// The lines it printed to stdout so far.
    pub fn lines(&self) -> Vec<String> {
        self.stdout.lock().expect("line sink").clone()
    }

    /// The lines it printed to stderr so far.
    pub fn errors(&self) -> String {
        self.stderr.lock().expect("line sink").join("\n")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILLs it and reaps it.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("killing flo")?;
        self.child.wait().context("reaping flo")?;
        Ok(())
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }
}

impl Drop for FloProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FLOTILLA_") || name == "FLO_BIN" {
            command.env_remove(name);
        }
    }
    command.env("NO_COLOR", "1");
    command
}

/// Runs `command` to completion with `stdin` written on a thread of its own (so a child that
/// writes while it reads cannot deadlock against us). SIGKILLs it after `timeout`.
async fn run_with_timeout(mut command: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> anyhow::Result<Output> {
    command
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("spawning {:?}", command.get_program()))?;
    let pid = child.id();
    let writer = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || pipe.write_all(&bytes))),
        _ => None,
    };
    let waiting = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(timeout, waiting).await {
        Ok(joined) => joined.context("the waiting thread panicked")?.context("waiting for the child")?,
        Err(_elapsed) => {
            // Not reaped yet (the blocking wait is still pending), so the pid is still ours.
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            bail!("{:?} did not finish within {timeout:?} (killed it)", command.get_program());
        }
    };
    if let Some(writer) = writer {
        // A child that exits without reading all of stdin breaks the pipe: that is its call.
        let _ = writer.join();
    }
    Ok(output)
}

/// `count` distinct free loopback ports: all bound at once (so they differ), then released.
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding a probe port"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners.iter().map(|listener| Ok(listener.local_addr()?.port())).collect()
}

/// Locks `mutex`, ignoring poisoning: a panicking test must still be able to clean up.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

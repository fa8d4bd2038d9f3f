//! The supervisor: starts the `flotilla` node processes and faults them, touching only its own
//! children and only by the PID it got when it started them.
//!
//! A child is reaped (waited for) only here, under its node's lock, and its handle dropped at
//! once; a signal is sent only while the handle is held. So a PID we signal cannot have been
//! reused by an unrelated process: until we reap it, the kernel keeps the PID as ours (a
//! zombie at worst, for which a signal is harmless).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::netns::Network;

/// Pause between two checks of whether a terminated node has exited.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// What a node's process is doing, as far as the supervisor made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Started and not stopped.
    Running,
    /// Stopped with SIGSTOP.
    Paused,
    /// Not running (killed, terminated, or never started).
    Down,
}

/// One node: identity, files, and its process while it runs.
#[derive(Debug)]
struct NodeProcess {
    id: u64,
    data_dir: PathBuf,
    log_path: PathBuf,
    state: Mutex<ProcessState>,
}

#[derive(Debug, Default)]
struct ProcessState {
    /// The running process; `None` once it was reaped.
    child: Option<Child>,
    /// Whether it was sent SIGSTOP and not SIGCONT since.
    paused: bool,
    /// How many times it was started.
    starts: u32,
}

/// The node processes of one chaos run.
#[derive(Debug)]
pub struct Supervisor {
    flotilla: PathBuf,
    network: Arc<Network>,
    nodes: Vec<NodeProcess>,
    initial_cluster: String,
    /// The run's start, for the banners written into node logs.
    epoch: Instant,
    /// Environment set on every node on top of the supervisor's own (whose `FLOTILLA_*`
    /// variables are removed).
    node_env: Vec<(String, String)>,
}

impl Supervisor {
    /// A supervisor for nodes `1..=nodes` whose data and logs go to `run_dir/node{i}/`, wiped
    /// first. Starts nothing.
    pub fn new(
        flotilla: &Path,
        network: Arc<Network>,
        run_dir: &Path,
        nodes: u64,
        epoch: Instant,
    ) -> anyhow::Result<Supervisor> {
        ensure!(flotilla.is_file(), "no flotilla binary at {}", flotilla.display());
        let nodes: Vec<NodeProcess> = (1..=nodes)
            .map(|id| {
                let dir = run_dir.join(format!("node{id}"));
                NodeProcess {
                    id,
                    data_dir: dir.join("data"),
                    log_path: dir.join("flotilla.log"),
                    state: Mutex::new(ProcessState::default()),
                }
            })
            .collect();
        for node in &nodes {
            let dir = node.data_dir.parent().expect("the data dir is inside the node dir");
            if dir.exists() {
                std::fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let initial_cluster = nodes
            .iter()
            .map(|node| format!("{}={}", node.id, network.peer_address(node.id)))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Supervisor {
            flotilla: flotilla.to_path_buf(),
            network,
            nodes,
            initial_cluster,
            epoch,
            node_env: Vec::new(),
        })
    }

    /// Sets `name=value` in the environment of every node started from now on.
    pub fn set_node_env(&mut self, name: &str, value: &str) {
        self.node_env.push((name.to_string(), value.to_string()));
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }

    /// Node ids, `1..=n`.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|node| node.id).collect()
    }

    /// Starts node `id` on its data directory, its output appended to its log.
    pub fn start(&self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id);
        let mut state = node.state.lock();
        ensure!(state.child.is_none(), "node {id} is already running");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("opening {}", node.log_path.display()))?;
        state.starts += 1;
        writeln!(
            log,
            "==== chaos +{:.3}s: starting node {id} (start #{}) ====",
            self.epoch.elapsed().as_secs_f64(),
            state.starts
        )?;
        let mut command = self.network.command(id, &self.flotilla);
        command
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--listen")
            .arg(self.network.client_address(id))
            .arg("--peer-listen")
            .arg(self.network.peer_address(id))
            .arg("--http-listen")
            .arg(self.network.http_address(id))
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--log-level")
            .arg("info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal reaches only the supervisor,
            // which then stops every node itself (a paused node would ignore SIGINT anyway).
            .process_group(0);
        for (name, _) in std::env::vars_os() {
            // The node reads FLOTILLA_* as configuration; the caller's must not leak in.
            if name.to_string_lossy().starts_with("FLOTILLA_") {
                command.env_remove(name);
            }
        }
        for (name, value) in &self.node_env {
            command.env(name, value);
        }
        let child = command.spawn().with_context(|| format!("starting node {id} ({})", self.flotilla.display()))?;
        state.child = Some(child);
        state.paused = false;
        Ok(())
    }

    /// SIGKILLs node `id` and reaps it. A paused node dies as well.
    pub fn kill(&self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id);
        let mut state = node.state.lock();
        let Some(child) = state.child.as_mut() else { bail!("node {id} is not running") };
        // std's Child::kill is SIGKILL on Unix, to the PID it started.
        child.kill().with_context(|| format!("SIGKILL to node {id}"))?;
        child.wait().with_context(|| format!("reaping node {id}"))?;
        state.child = None;
        state.paused = false;
        Ok(())
    }

    /// SIGSTOPs node `id`.
    pub fn pause(&self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id);
        let mut state = node.state.lock();
        let Some(child) = state.child.as_ref() else { bail!("node {id} is not running") };
        signal(child, libc::SIGSTOP).with_context(|| format!("SIGSTOP to node {id}"))?;
        state.paused = true;
        Ok(())
    }

    /// SIGCONTs node `id` (harmless if it was not paused).
    pub fn resume(&self, id: u64) -> anyhow::Result<()> {
        let node = self.node(id);
        let mut state = node.state.lock();
        let Some(child) = state.child.as_ref() else { bail!("node {id} is not running") };
        signal(child, libc::SIGCONT).with_context(|| format!("SIGCONT to node {id}"))?;
        state.paused = false;
        Ok(())
    }

    /// Stops node `id` gracefully: SIGCONT (a stopped process cannot act on SIGTERM), SIGTERM,
    /// and waits up to `timeout` for it to exit. If it has not by then, SIGKILLs it and fails:
    /// a node that ignores SIGTERM is a bug worth reporting.
    pub async fn terminate(&self, id: u64, timeout: Duration) -> anyhow::Result<ExitStatus> {
        {
            let node = self.node(id);
            let mut state = node.state.lock();
            let Some(child) = state.child.as_ref() else { bail!("node {id} is not running") };
            signal(child, libc::SIGCONT).with_context(|| format!("SIGCONT to node {id}"))?;
            signal(child, libc::SIGTERM).with_context(|| format!("SIGTERM to node {id}"))?;
            state.paused = false;
        }
        let deadline = Instant::now() + timeout;
        loop {
            {
                let node = self.node(id);
                let mut state = node.state.lock();
                let Some(child) = state.child.as_mut() else { bail!("node {id} was reaped by someone else") };
                if let Some(status) = child.try_wait().with_context(|| format!("waiting for node {id}"))? {
                    state.child = None;
                    return Ok(status);
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    state.child = None;
                    bail!("node {id} still ran {timeout:?} after SIGTERM (SIGKILLed it)");
                }
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Node `id`'s process state.
    pub fn health(&self, id: u64) -> Health {
        let state = self.node(id).state.lock();
        match (&state.child, state.paused) {
            (None, _) => Health::Down,
            (Some(_), true) => Health::Paused,
            (Some(_), false) => Health::Running,
        }
    }

    /// Reaps nodes that exited although nobody stopped them (a crash, a panic, a fail-stop
    /// assertion) and returns them with their exit status.
    pub fn reap_unexpected_exits(&self) -> Vec<(u64, ExitStatus)> {
        let mut exited = Vec::new();
        for node in &self.nodes {
            let mut state = node.state.lock();
            if let Some(child) = state.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                state.child = None;
                state.paused = false;
                exited.push((node.id, status));
            }
        }
        exited
    }

    /// Node `id`'s log file.
    pub fn log_path(&self, id: u64) -> &Path {
        &self.node(id).log_path
    }

    /// The last `lines` lines of node `id`'s log, framed for printing.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let path = self.log_path(id);
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => return format!("(no log for node {id} at {}: {error})\n", path.display()),
        };
        let all: Vec<&str> = text.lines().collect();
        let mut out = format!("---- node {id}: last {lines} lines of {} ----\n", path.display());
        for line in &all[all.len().saturating_sub(lines)..] {
            let _ = writeln!(out, "{line}");
        }
        out
    }

    /// SIGKILLs and reaps every node still running.
    pub fn kill_all(&self) {
        for node in &self.nodes {
            let mut state = node.state.lock();
            if let Some(mut child) = state.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            state.paused = false;
        }
    }

    fn node(&self, id: u64) -> &NodeProcess {
        let index = usize::try_from(id).ok().and_then(|id| id.checked_sub(1));
        match index.and_then(|index| self.nodes.get(index)) {
            Some(node) => node,
            None => panic!("the cluster has nodes 1..={}; there is no node {id}", self.nodes.len()),
        }
    }
}

impl Drop for Supervisor {
    /// No node outlives the supervisor, whatever ended the run (an error, a panic, Ctrl-C).
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Sends `signal` to `child`, which the caller holds unreaped (see the module comment).
#[allow(unsafe_code, reason = "kill(2) has no safe wrapper in std; it only reads its two integer arguments")]
fn signal(child: &Child, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("a PID that does not fit pid_t")?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let result = unsafe { libc::kill(pid, signal) };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("kill({pid}, {signal})"));
    }
    Ok(())
}

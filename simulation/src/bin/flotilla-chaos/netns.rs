//! The chaos cluster's network: one Linux network namespace per node, wired by veth pairs to a
//! bridge in the root namespace, so each link between two nodes (and between a node and the
//! workload, which runs in the root namespace) can be cut on its own. A cut is a blackhole
//! route inside the sending node's namespace: `iptables` is not needed, only `ip`.
//!
//! A blackhole route on A towards B drops everything A sends to B. TCP between them then dies
//! in both directions (B's SYNs reach A but A's answers do not), so a one-sided route is the
//! way to cut a link "one way" for protocols that would notice, and a route on both sides is
//! a clean symmetric cut.
//!
//! Without root (or without `ip`), [`Network::loopback`] runs every node on 127.0.0.1 with
//! its own ports; then no link can be cut and only process faults are possible.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail, ensure};
use parking_lot::Mutex;

/// The port a node's client API listens on inside its namespace.
const CLIENT_PORT: u16 = 7100;
/// The port a node's Raft transport listens on inside its namespace.
const PEER_PORT: u16 = 7200;
/// The port a node's HTTP endpoint (/health, /metrics) listens on inside its namespace.
const HTTP_PORT: u16 = 7300;
/// Host octet of the bridge's address: the workload's source address.
const BRIDGE_HOST: u8 = 254;

/// Where a blocked link leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Another node.
    Node(u64),
    /// The workload (the root namespace, behind the bridge's address).
    Client,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Node(id) => write!(f, "n{id}"),
            Peer::Client => write!(f, "client"),
        }
    }
}

/// How the nodes are networked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// One namespace per node on `{subnet}.0/24`; `tag` keeps concurrent runs apart.
    Namespaces { tag: String, subnet: String },
    /// Everything on 127.0.0.1, node `i` on ports `base + 3(i-1) ..`; links cannot be cut.
    Loopback { port_base: u16 },
}

/// The nodes' addresses and the set of cut links. Created by [`Network::namespaces`] or
/// [`Network::loopback`]; dropping it removes every namespace and the bridge.
#[derive(Debug)]
pub struct Network {
    mode: Mode,
    nodes: u64,
    /// Links currently cut, as (sending node, destination).
    blocked: Mutex<BTreeSet<(u64, Peer)>>,
    /// Whether `Drop` still has to remove namespaces and the bridge.
    torn_down: Mutex<bool>,
}

impl Network {
    /// Creates namespaces `flchaos{tag}-n1..=nN` with addresses `{subnet}.i/24`, a bridge
    /// `flchaos{tag}-br` holding `{subnet}.254`, and removes leftovers of an earlier run with
    /// the same tag first (a run killed with SIGKILL leaves them behind).
    pub fn namespaces(nodes: u64, tag: &str, subnet: &str) -> anyhow::Result<Network> {
        ensure!(
            tag.len() <= 4 && tag.chars().all(|c| c.is_ascii_alphanumeric()),
            "--net-tag {tag:?}: use up to 4 letters or digits (interface names are limited to 15 bytes)"
        );
        ensure!((1..BRIDGE_HOST as u64).contains(&nodes), "{nodes} nodes do not fit in one /24 next to the bridge");
        let octets: Vec<&str> = subnet.split('.').collect();
        ensure!(
            octets.len() == 3 && octets.iter().all(|o| o.parse::<u8>().is_ok()),
            "--subnet {subnet:?} is not the first three octets of an IPv4 /24, like 10.213.0"
        );
        let network = Network {
            mode: Mode::Namespaces { tag: tag.to_string(), subnet: subnet.to_string() },
            nodes,
            blocked: Mutex::new(BTreeSet::new()),
            torn_down: Mutex::new(false),
        };
        network.remove_leftovers();
        network.create().context("creating the network namespaces (needs root and iproute2)")?;
        Ok(network)
    }

    /// Every node on 127.0.0.1, node `i` listening on `port_base + 3(i-1)` (client),
    /// `+1` (peer) and `+2` (HTTP). No link can be cut.
    pub fn loopback(nodes: u64, port_base: u16) -> Network {
        Network {
            mode: Mode::Loopback { port_base },
            nodes,
            blocked: Mutex::new(BTreeSet::new()),
            torn_down: Mutex::new(true),
        }
    }

    /// Whether links can be cut (namespaces), or only processes faulted (loopback).
    pub fn can_partition(&self) -> bool {
        matches!(self.mode, Mode::Namespaces { .. })
    }

    /// A one-line description for the run header.
    pub fn describe(&self) -> String {
        match &self.mode {
            Mode::Namespaces { tag, subnet } => format!(
                "network namespaces flchaos{tag}-n1..n{} on {subnet}.0/24, bridge flchaos{tag}-br ({subnet}.{BRIDGE_HOST})",
                self.nodes
            ),
            Mode::Loopback { port_base } => {
                format!("loopback 127.0.0.1, ports {port_base}.. (no network namespaces: partitions disabled)")
            }
        }
    }

    /// Node `id`'s client gRPC address.
    pub fn client_address(&self, id: u64) -> String {
        self.address(id, CLIENT_PORT, 0)
    }

    /// Node `id`'s Raft transport address.
    pub fn peer_address(&self, id: u64) -> String {
        self.address(id, PEER_PORT, 1)
    }

    /// Node `id`'s HTTP address.
    pub fn http_address(&self, id: u64) -> String {
        self.address(id, HTTP_PORT, 2)
    }

    /// A command that runs `program` as node `id`: inside its namespace through
    /// `ip netns exec`, which execs `program` in place, so the child's PID is the node's own.
    pub fn command(&self, id: u64, program: &Path) -> Command {
        match &self.mode {
            Mode::Namespaces { .. } => {
                let mut command = Command::new("ip");
                command.arg("netns").arg("exec").arg(self.namespace(id)).arg(program);
                command
            }
            Mode::Loopback { .. } => Command::new(program),
        }
    }

    /// Cuts what `from` sends to `to`. Idempotent.
    pub fn block(&self, from: u64, to: Peer) -> anyhow::Result<()> {
        ensure!(self.can_partition(), "links cannot be cut on loopback");
        let mut blocked = self.blocked.lock();
        if blocked.contains(&(from, to)) {
            return Ok(());
        }
        ip(&["-n", &self.namespace(from), "route", "add", "blackhole", &format!("{}/32", self.ip_of(to))])
            .with_context(|| format!("cutting {} -> {to}", Peer::Node(from)))?;
        blocked.insert((from, to));
        Ok(())
    }

    /// Cuts both directions between two nodes.
    pub fn block_both(&self, a: u64, b: u64) -> anyhow::Result<()> {
        self.block(a, Peer::Node(b))?;
        self.block(b, Peer::Node(a))
    }

    /// Restores every cut link.
    pub fn heal(&self) -> anyhow::Result<()> {
        let links: Vec<(u64, Peer)> = self.blocked.lock().iter().copied().collect();
        let mut first_error = None;
        for (from, to) in links {
            let result =
                ip(&["-n", &self.namespace(from), "route", "del", "blackhole", &format!("{}/32", self.ip_of(to))]);
            match result {
                Ok(()) => {
                    self.blocked.lock().remove(&(from, to));
                }
                Err(error) => {
                    first_error.get_or_insert(error.context(format!("restoring {} -> {to}", Peer::Node(from))));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The links cut right now, as (sending node, destination).
    pub fn blocked(&self) -> BTreeSet<(u64, Peer)> {
        self.blocked.lock().clone()
    }

    /// Removes the namespaces and the bridge. `Drop` does it too; calling it first reports
    /// errors instead of swallowing them.
    pub fn teardown(&self) -> anyhow::Result<()> {
        let mut torn_down = self.torn_down.lock();
        if *torn_down {
            return Ok(());
        }
        self.blocked.lock().clear();
        let mut errors = Vec::new();
        for id in 1..=self.nodes {
            // Deleting the root end of a veth deletes both ends. Deleting the namespace alone
            // would not do: it lives on while anything holds it, and the sockets of a killed
            // node still retransmitting into a cut link do, for minutes.
            if let Err(error) = ip(&["link", "del", &self.veth(id).0]) {
                errors.push(format!("{error:#}"));
            }
            if let Err(error) = ip(&["netns", "del", &self.namespace(id)]) {
                errors.push(format!("{error:#}"));
            }
        }
        if let Err(error) = ip(&["link", "del", &self.bridge()]) {
            errors.push(format!("{error:#}"));
        }
        *torn_down = true;
        ensure!(errors.is_empty(), "tearing down the chaos network: {}", errors.join("; "));
        Ok(())
    }

    fn create(&self) -> anyhow::Result<()> {
        // Mark it for teardown before the first change, so a half-built network is removed too.
        *self.torn_down.lock() = false;
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.ip_of(Peer::Client)), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for id in 1..=self.nodes {
            let namespace = self.namespace(id);
            let (host_end, node_end) = self.veth(id);
            ip(&["netns", "add", &namespace])?;
            ip(&["link", "add", &host_end, "type", "veth", "peer", "name", &node_end])?;
            ip(&["link", "set", &node_end, "netns", &namespace])?;
            ip(&["link", "set", &host_end, "master", &bridge])?;
            ip(&["link", "set", &host_end, "up"])?;
            ip(&["-n", &namespace, "addr", "add", &format!("{}/24", self.ip_of(Peer::Node(id))), "dev", &node_end])?;
            ip(&["-n", &namespace, "link", "set", &node_end, "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Removes namespaces, veths and the bridge of this tag left by an earlier run; absent
    /// ones are fine.
    fn remove_leftovers(&self) {
        for id in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.namespace(id)]);
            let _ = ip(&["link", "del", &self.veth(id).0]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }

    fn address(&self, id: u64, port: u16, loopback_offset: u16) -> String {
        match &self.mode {
            Mode::Namespaces { .. } => format!("{}:{port}", self.ip_of(Peer::Node(id))),
            Mode::Loopback { port_base } => {
                let index = u16::try_from(id - 1).expect("node ids are small");
                format!("127.0.0.1:{}", port_base + 3 * index + loopback_offset)
            }
        }
    }

    fn ip_of(&self, peer: Peer) -> String {
        let subnet = match &self.mode {
            Mode::Namespaces { subnet, .. } => subnet.as_str(),
            Mode::Loopback { .. } => return "127.0.0.1".into(),
        };
        match peer {
            Peer::Node(id) => format!("{subnet}.{id}"),
            Peer::Client => format!("{subnet}.{BRIDGE_HOST}"),
        }
    }

    fn tag(&self) -> &str {
        match &self.mode {
            Mode::Namespaces { tag, .. } => tag,
            Mode::Loopback { .. } => "",
        }
    }

    fn namespace(&self, id: u64) -> String {
        format!("flchaos{}-n{id}", self.tag())
    }

    fn bridge(&self) -> String {
        format!("flchaos{}-br", self.tag())
    }

    /// The (root-namespace end, node end) of node `id`'s veth pair.
    fn veth(&self, id: u64) -> (String, String) {
        (format!("flc{}-h{id}", self.tag()), format!("flc{}-n{id}", self.tag()))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(error) = self.teardown() {
            eprintln!("chaos: {error:#}");
        }
    }
}

/// Whether this process may create network namespaces: root, `ip` installed, and a trial
/// namespace can be added and removed. Returns why not, otherwise.
pub fn namespaces_unavailable(tag: &str) -> Option<String> {
    let probe = format!("flchaos{tag}-probe");
    let _ = ip(&["netns", "del", &probe]);
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(error) => Some(format!("{error:#}")),
    }
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running `ip {}` (is iproute2 installed?)", args.join(" ")))?;
    if !output.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

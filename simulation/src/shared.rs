//! State a run's tasks share: the history the checker judges, the event trace, and the
//! phase flags that sequence workload and nemesis. Used by the simulation and by the
//! real-process chaos test alike; only the clock differs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::checker::History;

/// The run's event log, stamped with the run's clock. In the simulation every line goes into
/// the hash that the determinism check compares.
#[derive(Debug, Default)]
pub struct Trace {
    pub lines: Vec<String>,
}

impl Trace {
    /// Appends an event that happened at `at`.
    pub fn record(&mut self, at: Duration, event: impl AsRef<str>) {
        self.lines.push(format!("{:>9.3}s {}", at.as_secs_f64(), event.as_ref()));
    }

    /// FNV-1a over every line: stable across processes and builds, unlike `RandomState`.
    pub fn hash(&self) -> u64 {
        let mut hash = flotilla_broker::Fnv64::default();
        for line in &self.lines {
            hash.write(line.as_bytes());
            hash.write(b"\n");
        }
        hash.finish()
    }
}

/// Something only the simulation driver can do (it owns the `Sim`): crashes, restarts and
/// per-link network settings. The nemesis queues them; the driver runs them between steps.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverAction {
    /// Stop the node's software and lose a torn tail of its unsynced writes.
    Crash(u64),
    /// Start the node again on what its disk kept.
    Restart(u64),
    /// Set the largest latency of every link between a node and everyone else.
    LinkLatency { node: u64, max: Duration },
    /// Set the rate at which a node's links drop messages (0 heals).
    LinkFailRate { node: u64, rate: f64 },
    /// Erase a node's disk (it must then refuse to start under its old id).
    Wipe(u64),
}

/// What the run's tasks share.
pub struct Shared {
    pub trace: Mutex<Trace>,
    pub history: Mutex<History>,
    /// Actions for the simulation driver.
    pub driver: Mutex<VecDeque<DriverAction>>,
    /// Set by the workload once its topics exist.
    pub topics_ready: AtomicBool,
    /// Set by the nemesis once every fault is healed.
    pub faults_done: AtomicBool,
    /// The run's clock: simulated time in the simulation, wall time in the chaos test.
    clock: Box<dyn Fn() -> Duration + Send + Sync>,
}

impl Shared {
    /// Shared state stamped by `clock`.
    pub fn new(clock: impl Fn() -> Duration + Send + Sync + 'static) -> Shared {
        Shared {
            trace: Mutex::default(),
            history: Mutex::default(),
            driver: Mutex::default(),
            topics_ready: AtomicBool::new(false),
            faults_done: AtomicBool::new(false),
            clock: Box::new(clock),
        }
    }

    /// The run's time now.
    pub fn now(&self) -> Duration {
        (self.clock)()
    }

    /// Records an event at the run's time now.
    pub fn note(&self, event: impl AsRef<str>) {
        let at = self.now();
        self.trace.lock().record(at, event);
    }

    /// Whether the nemesis has healed everything.
    pub fn faults_done(&self) -> bool {
        self.faults_done.load(Ordering::SeqCst)
    }

    /// Queues an action for the simulation driver.
    pub fn drive(&self, action: DriverAction) {
        self.driver.lock().push_back(action);
    }
}

//! The run's record: the nemesis's faults and the fault timeline as they happen, merged at
//! the end with the workload's trace into `history.jsonl`, one JSON object per line in time
//! order (for people and for other checkers; the checker's own input is `history.json`).
//!
//! Lines carry `t_ms`, monotonic milliseconds since the run began, and a `type`: `fault`,
//! `quiet` and `heal` for the nemesis, `faulty` for each change of the fault state, `crash`
//! for a node that exited on its own, `note` for the harness's remarks, `ack` for each
//! acknowledged record (partition, offset, value; the value names its producer), and `trace`
//! for the workload's other trace lines (failed attempts, fetch errors).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::timeline::{Snapshot, Timeline};

/// Shared by the supervisor side (nemesis) and the workload.
#[derive(Debug)]
pub struct Recorder {
    epoch: Instant,
    path: PathBuf,
    events: Mutex<Vec<(Duration, Value)>>,
    timeline: Mutex<Timeline>,
}

impl Recorder {
    /// A recorder writing `history.jsonl` in `run_dir`, with `epoch` as time zero.
    pub fn new(run_dir: &Path, epoch: Instant) -> Recorder {
        Recorder {
            epoch,
            path: run_dir.join("history.jsonl"),
            events: Mutex::new(Vec::new()),
            timeline: Mutex::new(Timeline::default()),
        }
    }

    /// Time since the run began.
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Where the history goes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps one event (an object) stamped with the current time.
    pub fn event(&self, event: Value) {
        let at = self.now();
        self.events.lock().push((at, event));
    }

    /// Records the fault state (`snapshot`, stamped now) if it changed.
    pub fn fault_state(&self, mut snapshot: Snapshot, nodes: &[u64]) {
        snapshot.at = self.now();
        let faulty = snapshot.faulty(nodes);
        let description = snapshot.describe();
        if self.timeline.lock().record(snapshot) {
            self.event(json!({ "type": "faulty", "count": faulty, "state": description }));
        }
    }

    /// A copy of the fault timeline.
    pub fn timeline(&self) -> Timeline {
        self.timeline.lock().clone()
    }

    /// Writes every event, and the workload's `trace` lines ("  12.345s what"), to
    /// `history.jsonl` in time order.
    pub fn write(&self, trace: &[String]) -> anyhow::Result<()> {
        let mut events: Vec<(Duration, Value)> = self.events.lock().clone();
        for line in trace {
            let (time, text) = line.trim_start().split_once("s ").unwrap_or(("0", line));
            let at = time.parse::<f64>().map(Duration::from_secs_f64).unwrap_or_default();
            events.push((at, trace_event(text)));
        }
        // Stable: events of one instant keep the order they were recorded in.
        events.sort_by_key(|(at, _)| *at);
        let file = File::create(&self.path).with_context(|| format!("creating {}", self.path.display()))?;
        let mut out = BufWriter::new(file);
        for (at, mut event) in events {
            if let Value::Object(fields) = &mut event {
                fields.insert("t_ms".into(), json!(duration_ms(at)));
            }
            serde_json::to_writer(&mut out, &event)?;
            out.write_all(b"\n")?;
        }
        out.flush().with_context(|| format!("writing {}", self.path.display()))
    }
}

/// A trace line as an event: acknowledgements ("ack chaos/1@17 p0-000001") structured, the
/// rest as text.
fn trace_event(text: &str) -> Value {
    let ack = text.strip_prefix("ack ").and_then(|rest| {
        let (place, value) = rest.split_once(' ')?;
        let (partition, offset) = place.split_once('@')?;
        let offset: u64 = offset.parse().ok()?;
        Some(json!({ "type": "ack", "partition": partition, "offset": offset, "value": value }))
    });
    ack.unwrap_or_else(|| json!({ "type": "trace", "text": text }))
}

/// Milliseconds, for JSON.
pub fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

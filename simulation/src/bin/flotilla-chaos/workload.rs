//! The chaos run's workload is the simulation's own (`flotilla_simulation::workload`):
//! concurrent producers of run-unique values, tailing consumers, the post-heal liveness check,
//! the final drain, replica digests and topic listings, all recorded into the shared
//! [`History`](flotilla_simulation::checker::History) the checker judges. This module only
//! sets it up for real sockets and wall time, and reads acknowledgement times back out of
//! its trace.

use std::sync::Arc;
use std::time::Duration;

use flotilla_client::{Client, ClientConfig, tcp_connector};
use flotilla_simulation::options::TopicSpec;
use flotilla_simulation::shared::Shared;
use flotilla_simulation::workload::{Environment, WorkloadPlan};

/// Records per produce call.
const BATCH_RECORDS: u64 = 4;
/// Pause between a producer's calls, to leave CPU for five nodes on a small machine.
const PRODUCE_PAUSE: Duration = Duration::from_millis(5);
/// Chance that a producer abandons a request mid-flight (a client crash) and retries it.
const ABANDON_CHANCE: f64 = 0.005;
/// Bound on one request. Long enough for a commit under load, short enough that a producer
/// facing a dead or paused leader moves on within a few seconds.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// What the workload does.
pub fn plan(seed: u64, topic: &str, partitions: u32, replication_factor: u32, producers: u32) -> WorkloadPlan {
    WorkloadPlan {
        seed,
        topics: vec![TopicSpec { name: topic.to_string(), partitions }],
        replication_factor,
        producers,
        // Half the producers idempotent: their records must never repeat, even across the
        // retries that kills and pauses force.
        idempotent_producers: producers / 2,
        consumers: partitions.max(1),
        batch_records: BATCH_RECORDS,
        produce_pause: PRODUCE_PAUSE,
        abandon_chance: ABANDON_CHANCE,
        // Consumer groups run in the simulation only: their recorded commits assume the
        // single-threaded runtime of a simulated host (see workload/group_consumer.rs).
        groups: Vec::new(),
        // Retention is judged in run time, which the chaos run's real clocks follow only
        // roughly; it runs in the simulation.
        retention: Default::default(),
        trims: false,
        record_padding: 0,
    }
}

/// Real TCP to `brokers`.
pub fn environment(brokers: Vec<String>) -> Environment {
    Environment { brokers, connector: tcp_connector(), request_timeout: REQUEST_TIMEOUT, clients: Default::default() }
}

/// A client for the harness's own questions (topic layout), with the SDK's retries.
pub fn admin_client(brokers: &[String]) -> anyhow::Result<Client> {
    let config = ClientConfig { request_timeout: REQUEST_TIMEOUT, ..ClientConfig::default() };
    Ok(Client::connect(brokers.to_vec(), config)?)
}

/// One acknowledged record as the trace tells it: when, and in which partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTime {
    /// Time since the run began.
    pub at: Duration,
    /// The partition.
    pub partition: u32,
}

/// Acknowledgement times, read from the workload's trace lines
/// `"   12.345s ack chaos/1@17 p0-000001"`.
pub fn ack_times(shared: &Shared) -> Vec<AckTime> {
    shared.trace.lock().lines.iter().filter_map(|line| parse_ack(line)).collect()
}

/// Attempts that left records unacknowledged, from the trace.
pub fn failed_attempts(shared: &Shared) -> usize {
    shared.trace.lock().lines.iter().filter(|line| line.contains(" records unacknowledged: ")).count()
}

fn parse_ack(line: &str) -> Option<AckTime> {
    let (time, event) = line.trim_start().split_once("s ")?;
    let rest = event.strip_prefix("ack ")?;
    let (partition, _) = rest.split_once('@')?;
    let (_, number) = partition.rsplit_once('/')?;
    Some(AckTime { at: Duration::from_secs_f64(time.parse().ok()?), partition: number.parse().ok()? })
}

/// The workload's state, stamped with time since `epoch`.
pub fn shared(epoch: tokio::time::Instant) -> Arc<Shared> {
    Arc::new(Shared::new(move || epoch.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_are_read_from_trace_lines() {
        assert_eq!(
            parse_ack("   12.345s ack chaos/1@17 p0-000001"),
            Some(AckTime { at: Duration::from_millis(12_345), partition: 1 })
        );
        assert_eq!(parse_ack("   12.345s producer 0 attempt 1 left 2 records unacknowledged: x"), None);
    }
}

//! Named regression scenarios: scripted fault schedules that reproduce public bugs in peer
//! systems, each run as its own seeded test (`simulation/tests/scenarios.rs`). The workload
//! and the checker are the same as in random runs; only the nemesis follows a script.

use std::time::Duration;

use serde::Serialize;

use crate::nemesis::Faults;
use crate::nemesis::faults::Role;
use crate::options::FaultKind;

/// A scripted scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// NATS #7564: acknowledge writes, then crash every node at once, twice; only what each
    /// node fsynced (plus a torn tail) survives, and every acknowledged record must.
    PowerLossAfterAcks,
    /// NATS #7567: on five nodes, pause two, crash a third with un-synced loss, then resume
    /// the two and pause the other two. No split brain, nothing acknowledged lost.
    PauseThenCrash,
    /// NATS #6888 / PR #5946: kill every node right after the topics are created, and keep
    /// killing nodes. The topics must still exist, with every acknowledged record.
    CrashAfterCreate,
    /// A partition leader paused past its election timeout, then resumed with a burst of
    /// stale messages: it must never acknowledge after losing leadership.
    PausedLeader,
    /// etcd #14098: crash leaders repeatedly so each keeps a torn prefix of its un-synced
    /// tail; every node must boot on it and the log must heal.
    TornTail,
    /// Jepsen TigerBeetle: wipe one node's disk and restart it with the same id: it must
    /// refuse to start rather than vote as an empty voter; the rest keep every acknowledged
    /// record.
    WipedDisk,
    /// Redpanda #3039: idempotent producers whose clients lose the partition leader (cut off
    /// from it, then the leader is killed) mid-produce, and retry against the new leader.
    /// No record may appear twice.
    IdempotentRetryAfterLeaderChange,
    /// NATS #7545: on five nodes, a replica move (the leader's own replica), a network
    /// partition and a kill of the partition's leader in quick succession, twice; nothing
    /// acknowledged is lost and the new replica set converges.
    MembershipPartitionKill,
    /// DESIGN.md §3's trap: a node cut off while retention trims every partition far past its
    /// log, so it can catch up only by installing a snapshot; right after the heal the
    /// partitions' leaders crash (a leader change mid-install). The node must end with exactly
    /// the records retention kept: no hole, nothing retention removed served back.
    SnapshotTrap,
    /// Review finding 7: every fsync of a partition leader's disk starts failing. The node
    /// must stop itself (fail-stop) instead of staying up as a zombie that answers heartbeats
    /// and votes; the others carry on with every acknowledged record; repaired and restarted,
    /// it rejoins on what it had synced.
    FsyncFails,
    /// Review suspicion A: a partition leader A is cut from follower C; once C campaigns,
    /// follower B crashes and restarts at once (a restarted node loads its vote without a
    /// lease, so it may vote for C at once). C, elected with B's vote, commits new records while A may still serve
    /// lease reads with its older high watermark. Judged by the cross-client read-after-
    /// acknowledge invariant.
    StaleLeaseRead,
}

impl Scenario {
    /// Every scenario, for `--list` and the tests.
    pub const ALL: [Scenario; 11] = [
        Scenario::PowerLossAfterAcks,
        Scenario::PauseThenCrash,
        Scenario::CrashAfterCreate,
        Scenario::PausedLeader,
        Scenario::TornTail,
        Scenario::WipedDisk,
        Scenario::IdempotentRetryAfterLeaderChange,
        Scenario::MembershipPartitionKill,
        Scenario::SnapshotTrap,
        Scenario::FsyncFails,
        Scenario::StaleLeaseRead,
    ];

    /// Nodes the scenario needs.
    pub fn nodes(self) -> u64 {
        match self {
            Scenario::PauseThenCrash | Scenario::MembershipPartitionKill => 5,
            _ => 3,
        }
    }

    /// Whether every producer of the scenario is idempotent.
    pub fn idempotent_only(self) -> bool {
        matches!(self, Scenario::IdempotentRetryAfterLeaderChange)
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Runs `scenario`'s script with the nemesis' primitives.
pub async fn script(scenario: Scenario, faults: &mut Faults) {
    match scenario {
        Scenario::PowerLossAfterAcks => {
            for _ in 0..2 {
                tokio::time::sleep(secs(4.0)).await;
                crate::coverage::hit("power_loss");
                let nodes = faults.nodes().to_vec();
                faults.crash_and_restart(&nodes, secs(2.0)).await;
            }
            tokio::time::sleep(secs(4.0)).await;
        }
        Scenario::PauseThenCrash => {
            tokio::time::sleep(secs(3.0)).await;
            let nodes = faults.nodes().to_vec();
            let (first_pair, rest) = nodes.split_at(2);
            let (victim, second_pair) = rest.split_at(1);
            for node in first_pair {
                faults.hold_node(*node);
            }
            tokio::time::sleep(secs(1.0)).await;
            faults.crash(victim);
            tokio::time::sleep(secs(3.0)).await;
            for node in first_pair {
                faults.release_node(*node);
            }
            for node in second_pair {
                faults.hold_node(*node);
            }
            tokio::time::sleep(secs(4.0)).await;
            faults.restart(victim);
            for node in second_pair {
                faults.release_node(*node);
            }
            tokio::time::sleep(secs(4.0)).await;
        }
        Scenario::CrashAfterCreate => {
            let nodes = faults.nodes().to_vec();
            faults.crash_and_restart(&nodes, secs(1.0)).await;
            tokio::time::sleep(secs(2.0)).await;
            faults.crash_and_restart(&nodes, secs(1.0)).await;
            for _ in 0..3 {
                tokio::time::sleep(secs(3.0)).await;
                let node = faults.find(Role::Any).await;
                faults.crash_and_restart(&[node], secs(1.5)).await;
            }
            tokio::time::sleep(secs(3.0)).await;
        }
        Scenario::PausedLeader => {
            for _ in 0..3 {
                tokio::time::sleep(secs(3.0)).await;
                let leader = faults.find(Role::PartitionLeader).await;
                faults.pause(leader, secs(4.0)).await;
            }
            tokio::time::sleep(secs(3.0)).await;
        }
        Scenario::TornTail => {
            for round in 0..5 {
                tokio::time::sleep(secs(2.5)).await;
                let role = if round % 2 == 0 { Role::PartitionLeader } else { Role::MetadataLeader };
                let leader = faults.find(role).await;
                faults.crash_and_restart(&[leader], secs(1.0)).await;
            }
            tokio::time::sleep(secs(3.0)).await;
        }
        Scenario::IdempotentRetryAfterLeaderChange => {
            for _ in 0..4 {
                tokio::time::sleep(secs(2.5)).await;
                faults.inject(FaultKind::ClientToLeader, secs(2.0)).await;
                tokio::time::sleep(secs(0.3)).await;
                faults.inject(FaultKind::CrashLeader, secs(1.5)).await;
            }
            tokio::time::sleep(secs(3.0)).await;
        }
        Scenario::MembershipPartitionKill => {
            for _ in 0..2 {
                tokio::time::sleep(secs(3.0)).await;
                if faults.move_replica(true, false, secs(0.1)).await {
                    crate::coverage::hit("membership_change_during_fault");
                }
                let node = faults.find(Role::Any).await;
                faults.isolate(node);
                faults.hold_for(secs(2.0)).await;
                let leader = faults.find(Role::PartitionLeader).await;
                faults.crash_and_restart(&[leader], secs(1.5)).await;
            }
            tokio::time::sleep(secs(4.0)).await;
        }
        Scenario::SnapshotTrap => {
            for _ in 0..2 {
                tokio::time::sleep(secs(3.0)).await;
                let node = faults.find(Role::Any).await;
                faults.isolate(node);
                faults.hold_for(secs(10.0)).await;
                tokio::time::sleep(secs(0.5)).await;
                let leader = faults.find(Role::PartitionLeader).await;
                faults.crash_and_restart(&[leader], secs(1.5)).await;
            }
            tokio::time::sleep(secs(5.0)).await;
        }
        Scenario::FsyncFails => {
            tokio::time::sleep(secs(3.0)).await;
            let node = faults.find(Role::PartitionLeader).await;
            faults.fail_disk(node);
            // Long enough for the node to notice and stop, and for the others to take over.
            tokio::time::sleep(secs(5.0)).await;
            faults.crash(&[node]);
            faults.repair_disk(node);
            tokio::time::sleep(secs(1.0)).await;
            faults.restart(&[node]);
            tokio::time::sleep(secs(5.0)).await;
        }
        Scenario::StaleLeaseRead => {
            for _ in 0..4 {
                tokio::time::sleep(secs(2.5)).await;
                let old_leader = faults.find(Role::PartitionLeader).await;
                let others = faults.others(old_leader);
                let (restarted, cut_off) = (others[0], others[1]);
                faults.cut_pair(old_leader, cut_off);
                // Past C's election timeout first: C campaigns, but B, still hearing A,
                // refuses it while A's lease holds. Then B restarts, without a lease.
                tokio::time::sleep(secs(1.6)).await;
                faults.crash_and_restart(&[restarted], secs(0.05)).await;
                faults.hold_for(secs(3.0)).await;
            }
            tokio::time::sleep(secs(3.0)).await;
        }
        Scenario::WipedDisk => {
            tokio::time::sleep(secs(3.0)).await;
            let node = faults.find(Role::Any).await;
            faults.crash(&[node]);
            faults.wipe(node);
            tokio::time::sleep(secs(1.0)).await;
            faults.restart(&[node]);
            tokio::time::sleep(secs(8.0)).await;
        }
    }
}

//! Liveness after healing: once every fault is repaired the cluster must serve again within a
//! bound — produces acknowledged, the final drain reaching every acknowledged offset, every
//! replica caught up. The workload records what did not happen in time.

use super::{Findings, History};

pub const NAME: &str = "liveness";

pub fn check(history: &History, findings: &mut Findings) {
    for failure in &history.liveness_failures {
        findings.violation(failure.clone());
    }
}

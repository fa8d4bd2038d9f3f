//! The trimmer: while the faults rotate, now and then deletes the oldest part of a random
//! partition of a topic with retention (`DeleteRecords`), recording every attempt before it
//! is sent, so the checker knows what trims may have removed.

use std::sync::Arc;
use std::time::Duration;

use flotilla_client::Client;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::{WorkloadPlan, error_chain};
use crate::checker::{PartitionKey, TrimAttempt};
use crate::coverage;
use crate::shared::Shared;

/// Pause between two trims, at least and at most.
const PAUSE_MIN: Duration = Duration::from_secs(2);
const PAUSE_MAX: Duration = Duration::from_secs(6);

pub struct Trimmer {
    partitions: Vec<PartitionKey>,
    client: Client,
    shared: Arc<Shared>,
    rng: StdRng,
}

impl Trimmer {
    /// A trimmer of the plan's retention topics.
    pub fn new(plan: &WorkloadPlan, client: Client, shared: Arc<Shared>) -> Trimmer {
        let partitions =
            plan.partitions().into_iter().filter(|p| plan.retention.contains_key(&p.topic)).collect::<Vec<_>>();
        Trimmer { partitions, client, shared, rng: StdRng::seed_from_u64(plan.seed ^ 0x7472_696d_6d65_7221) }
    }

    /// Trims until every fault is healed.
    pub async fn run(mut self) {
        while !self.shared.faults_done() {
            let pause = self.rng.random_range(PAUSE_MIN..=PAUSE_MAX);
            tokio::time::sleep(pause).await;
            let Some(partition) = self.partitions.choose(&mut self.rng).cloned() else { return };
            let offsets = match self.client.list_offsets(&partition.topic).await {
                Ok(all) => all.into_iter().find(|o| o.partition == partition.partition),
                Err(err) => {
                    self.shared.note(format!("trimmer: offsets of {partition}: {}", error_chain(&err)));
                    continue;
                }
            };
            let Some(offsets) = offsets else { continue };
            // A third of what the partition holds, never past what it holds.
            let held = offsets.high_watermark.saturating_sub(offsets.log_start_offset);
            let before = offsets.log_start_offset + held / 3;
            if held < 3 {
                continue;
            }
            let index = {
                let mut history = self.shared.history.lock();
                history.trims.push(TrimAttempt {
                    partition: partition.clone(),
                    before_offset: before,
                    log_start: None,
                });
                history.trims.len() - 1
            };
            match self.client.delete_records(&partition.topic, partition.partition, before).await {
                Ok(log_start) => {
                    coverage::hit("workload_trim_acknowledged");
                    self.shared.note(format!("trimmer: {partition} below {before}: log start {log_start}"));
                    self.shared.history.lock().trims[index].log_start = Some(log_start);
                }
                Err(err) => self.shared.note(format!("trimmer: {partition} below {before}: {}", error_chain(&err))),
            }
        }
    }
}

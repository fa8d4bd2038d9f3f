//! The fault schedule. It runs as its own simulated client so it can ask the cluster who
//! leads what. During the safety phase it rotates faults from the seed's mix, with quiet
//! spells between; then it heals everything and tells the workload. Named scenarios
//! (`scenarios.rs`) script the same primitives instead of drawing them at random.

pub mod faults;

use std::sync::Arc;
use std::time::Duration;

use flotilla_storage::MemoryEngine;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::Ordering;

pub use faults::Faults;

use crate::options::SimOptions;
use crate::scenarios;
use crate::shared::Shared;
use crate::workload::Environment;

/// Produce traffic before the first fault.
const WARMUP: Duration = Duration::from_secs(3);

/// Runs the fault schedule to the end of the safety phase, heals, and signals the workload.
pub async fn run(
    options: SimOptions,
    env: Environment,
    engines: Vec<(u64, Arc<MemoryEngine>)>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let rng = StdRng::seed_from_u64(options.seed ^ 0x6e65_6d65_7369_7321);
    let mut faults = Faults::new(&options, env.client(3)?, engines, Arc::clone(&shared), rng);
    while !shared.topics_ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match options.scenario {
        Some(scenario) => scenarios::script(scenario, &mut faults).await,
        None => {
            tokio::time::sleep(WARMUP).await;
            rotate(&options, &mut faults).await;
        }
    }
    faults.heal_everything().await;
    shared.note("nemesis done: every fault healed");
    shared.faults_done.store(true, Ordering::SeqCst);
    Ok(())
}

/// Draws a fault (or a quiet spell) from the mix every few seconds until the safety phase ends.
async fn rotate(options: &SimOptions, faults: &mut Faults) {
    let start = tokio::time::Instant::now();
    while start.elapsed() < options.safety {
        let span = faults.rng().random_range(options.fault_min..=options.fault_max);
        if faults.rng().random_bool(options.quiet_chance) {
            faults.note(format!("quiet for {:.1}s", span.as_secs_f64()));
            tokio::time::sleep(span).await;
            continue;
        }
        let kind = options.faults[faults.rng().random_range(0..options.faults.len())];
        faults.inject(kind, span).await;
    }
}

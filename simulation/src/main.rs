//! `flotilla-sim`: runs the simulation for one seed, prints the checker's verdict and exits
//! non-zero on any violation (1) or a broken run (2), printing the command that replays the
//! seed. One process runs one seed (see `flotilla_simulation::run`).

use std::process::ExitCode;

use clap::Parser;
use flotilla_simulation::{Scenario, replay_command};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Deterministic simulation of a three-node Flotilla cluster under partitions and crashes.
#[derive(Debug, Parser)]
#[command(name = "flotilla-sim", about)]
struct Flags {
    /// The seed; the same seed replays the same run.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// End with a power cut: every node crashes at once in the last round.
    #[arg(long)]
    power_loss: bool,
    /// Run on a deliberately broken disk whose sync makes nothing durable (to see the
    /// checker catch acknowledge-before-fsync; use with --power-loss).
    #[arg(long)]
    sync_lies: bool,
    /// Print the full event trace.
    #[arg(long)]
    trace: bool,
    /// Log filter for the nodes' own logs, e.g. "info" or "flotilla_server=debug".
    #[arg(long, env = "RUST_LOG", default_value = "off")]
    log: String,
}

/// Stamps log lines with simulated time, which is what the trace uses too.
struct SimTime;

impl FormatTime for SimTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(elapsed) => write!(w, "{:>9.3}s", elapsed.as_secs_f64()),
            None => write!(w, "{:>10}", "-"),
        }
    }
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(&flags.log))
        .with_timer(SimTime)
        .with_writer(std::io::stderr)
        .init();
    let scenario = Scenario { power_loss: flags.power_loss, sync_lies: flags.sync_lies };
    let replay = replay_command(flags.seed, &scenario);
    #[allow(clippy::disallowed_methods, reason = "reports the real time the run took; not part of the simulation")]
    let started = std::time::Instant::now();
    let outcome = flotilla_simulation::run(flags.seed, &scenario);
    let wall = started.elapsed();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(err) => {
            println!("seed {}: the run broke after {:.2}s: {err:#}", flags.seed, wall.as_secs_f64());
            println!("FAILED; replay with: {replay}");
            return ExitCode::from(2);
        }
    };
    if flags.trace {
        for line in &outcome.trace {
            println!("{line}");
        }
    }
    println!(
        "seed {}: {:.1}s simulated in {:.2}s, trace hash {:016x}",
        outcome.seed,
        outcome.simulated.as_secs_f64(),
        wall.as_secs_f64(),
        outcome.trace_hash
    );
    println!("{}", outcome.report);
    if outcome.report.ok() {
        ExitCode::SUCCESS
    } else {
        println!("FAILED; replay with: {replay}");
        ExitCode::from(1)
    }
}

//! `flotilla-sim`: runs one seed (exit 0 pass, 1 safety violation, 2 liveness failure,
//! 3 crash), or sweeps many seeds (`flotilla-sim sweep --seeds N`), one child process per
//! seed. Every failure prints the seed, the options it expanded to and the replay command.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use flotilla_simulation::options::{Bug, FaultKind, SimOptions};
use flotilla_simulation::scenarios::Scenario;
use flotilla_simulation::{Verdict, coverage, replay_command, sweep};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::prelude::*;

/// Deterministic simulation of a Flotilla cluster under rotating faults, with a history
/// checker.
#[derive(Debug, Parser)]
#[command(name = "flotilla-sim", about)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunFlags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run many seeds, each in its own process, and report totals and coverage.
    Sweep(SweepFlags),
    /// List the named regression scenarios.
    Scenarios,
}

#[derive(Debug, Args)]
struct RunFlags {
    /// The seed; the same seed replays the same run.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Run a named regression scenario instead of the seed's random fault mix.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Inject a deliberate bug, to see the checker catch it.
    #[arg(long, value_enum)]
    bug: Option<Bug>,
    /// Override the cluster size the seed picked (3 or 5).
    #[arg(long)]
    nodes: Option<u64>,
    /// Override the seed's fault mix (comma-separated kinds).
    #[arg(long, value_enum, value_delimiter = ',')]
    faults: Option<Vec<FaultKind>>,
    /// Override the safety phase's length, in simulated seconds.
    #[arg(long)]
    safety_secs: Option<u64>,
    /// Print the full event trace.
    #[arg(long)]
    trace: bool,
    /// Print one JSON summary line instead of the human report (what `sweep` reads).
    #[arg(long)]
    json: bool,
    /// Log filter for the nodes' own logs, e.g. "info" or "flotilla_server=debug".
    #[arg(long, env = "RUST_LOG", default_value = "off")]
    log: String,
}

#[derive(Debug, Args)]
struct SweepFlags {
    /// How many seeds.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    first: u64,
    /// Exactly these seeds (overrides --seeds/--first).
    #[arg(long, value_delimiter = ',')]
    seed_list: Option<Vec<u64>>,
    /// Runs at a time (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Fail the sweep when an expected coverage point stays at zero.
    #[arg(long)]
    require_coverage: bool,
    /// Flags passed to every run (e.g. `--bug sync-lies`).
    #[arg(last = true)]
    run_flags: Vec<String>,
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
    match flags.command {
        Some(Command::Sweep(sweep_flags)) => run_sweep(sweep_flags),
        Some(Command::Scenarios) => {
            for scenario in Scenario::ALL {
                let options = SimOptions::for_scenario(scenario, 1);
                println!("{}", replay_command(&options).replace("--seed 1 ", ""));
            }
            ExitCode::SUCCESS
        }
        None => run_one(flags.run),
    }
}

fn run_one(flags: RunFlags) -> ExitCode {
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_timer(SimTime)
                .with_writer(std::io::stderr)
                .with_filter(EnvFilter::new(&flags.log)),
        )
        .with(
            coverage::CoverageLayer
                .with_filter(Targets::new().with_target(flotilla_types::COVERAGE_TARGET, LevelFilter::DEBUG)),
        )
        .init();
    let mut options = match flags.scenario {
        Some(scenario) => SimOptions::for_scenario(scenario, flags.seed),
        None => SimOptions::from_seed(flags.seed),
    };
    options.bug = flags.bug;
    if let Some(nodes) = flags.nodes {
        options.nodes = nodes;
    }
    if let Some(faults) = flags.faults {
        options.faults = faults;
    }
    if let Some(secs) = flags.safety_secs {
        options.safety = std::time::Duration::from_secs(secs);
    }
    let replay = replay_command(&options);
    let options_line = options.to_string();
    #[allow(clippy::disallowed_methods, reason = "reports the real time the run took; not part of the simulation")]
    let started = std::time::Instant::now();
    let outcome = match flotilla_simulation::run(options) {
        Ok(outcome) => outcome,
        Err(err) => {
            println!("seed {}: could not run: {err:#}", flags.seed);
            return ExitCode::from(Verdict::Crash.exit_code());
        }
    };
    let wall = started.elapsed();
    if flags.json {
        let mut summary = serde_json::to_value(&outcome).expect("outcomes serialize");
        summary["replay"] = serde_json::Value::from(replay);
        summary["options_line"] = serde_json::Value::from(options_line);
        summary["wall_secs"] = serde_json::Value::from(wall.as_secs_f64());
        println!("{summary}");
        return ExitCode::from(outcome.verdict.exit_code());
    }
    if flags.trace {
        for line in &outcome.trace {
            println!("{line}");
        }
    }
    println!("seed {}: {options_line}", flags.seed);
    println!(
        "seed {}: {:.1}s simulated in {:.2}s, trace hash {:016x}",
        flags.seed,
        outcome.simulated_secs,
        wall.as_secs_f64(),
        outcome.trace_hash
    );
    println!("{}", outcome.report);
    let reached: Vec<String> =
        outcome.coverage.iter().filter(|(_, n)| **n > 0).map(|(point, n)| format!("{point}={n}")).collect();
    println!("coverage: {}", reached.join(" "));
    if let Some(broken) = &outcome.broken {
        println!("the run broke: {broken}");
    }
    match outcome.verdict {
        Verdict::Pass => println!("PASS"),
        verdict => println!("FAILED ({verdict:?}); replay with: {replay}"),
    }
    ExitCode::from(outcome.verdict.exit_code())
}

fn run_sweep(flags: SweepFlags) -> ExitCode {
    let seeds: Vec<u64> = match flags.seed_list {
        Some(list) => list,
        None => (flags.first..flags.first + flags.seeds).collect(),
    };
    let jobs = flags.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let binary = match std::env::current_exe() {
        Ok(binary) => binary,
        Err(err) => {
            eprintln!("cannot find this binary to run the seeds: {err}");
            return ExitCode::from(3);
        }
    };
    #[allow(clippy::disallowed_methods, reason = "reports the real time the sweep took; not part of the simulation")]
    let started = std::time::Instant::now();
    let report = sweep::sweep(&binary, &seeds, &flags.run_flags, jobs);
    println!("{report}");
    println!("wall time {:.1}s with {jobs} runs at a time", started.elapsed().as_secs_f64());
    let stuck = report.stuck_points();
    if !report.failures.is_empty() {
        return ExitCode::from(1);
    }
    if flags.require_coverage && !stuck.is_empty() {
        println!("coverage points stuck at zero: {}", stuck.join(", "));
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

//! Runs `flotilla-sim` as a child process: a simulation replays only as the sole tokio user
//! of its process (see `flotilla_simulation::run`), and tests run in parallel threads.

#![allow(dead_code, reason = "each test binary that includes this module uses a different part of it")]

use std::process::Command;

/// What one `flotilla-sim` process did.
pub struct Run {
    /// Exit code (0 pass, 1 safety, 2 liveness, 3 crash).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub command: String,
}

impl Run {
    /// The trace and the verdict, without the line carrying the wall-clock time.
    pub fn replayable_output(&self) -> Vec<&str> {
        self.stdout.lines().filter(|line| !line.contains(" simulated in ")).collect()
    }

    /// Everything printed, and how to run it again.
    pub fn explain(&self) -> String {
        format!("$ {}\n{}{}", self.command, self.stdout, self.stderr)
    }
}

/// Runs `flotilla-sim` with `args`.
pub fn simulate(args: &[&str]) -> Run {
    let binary = env!("CARGO_BIN_EXE_flotilla-sim");
    let output = Command::new(binary).args(args).env_remove("RUST_LOG").output().expect("flotilla-sim starts");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        command: format!("$CARGO_TARGET_DIR/release/flotilla-sim {}", args.join(" ")),
    }
}

/// A count from a sweep's first line, e.g. `count(run, "acknowledged records checked")`.
pub fn sweep_count(run: &Run, what: &str) -> u64 {
    let first = run.stdout.lines().next().unwrap_or_default();
    let words: Vec<&str> = first.split([' ', ',', '(']).filter(|w| !w.is_empty()).collect();
    let what: Vec<&str> = what.split(' ').collect();
    words
        .windows(what.len() + 1)
        .find(|window| window[1..] == what[..])
        .and_then(|window| window[0].parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} in {first:?}"))
}

/// What one `flotilla-chaos` process did.
pub struct ChaosRun {
    /// Exit code (0 pass, 1 violations, 2 the run broke).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Node logs and histories; removed by the caller once the run passed.
    pub run_dir: std::path::PathBuf,
}

/// Runs `flotilla-chaos` with `args` and the `flotilla` next to it, under its own run
/// directory, namespace names, subnet and ports, so it can run beside `make chaos` or another
/// checkout's tests. `lane` (0 to 4) keeps apart the runs of one test process, which may go
/// in parallel; `name` names its run directory.
pub fn chaos(lane: u32, name: &str, args: &[&str]) -> ChaosRun {
    assert!(lane < 5, "lane {lane}: the port ranges hold five");
    let chaos = std::path::PathBuf::from(env!("CARGO_BIN_EXE_flotilla-chaos"));
    let flotilla = chaos.with_file_name("flotilla");
    assert!(
        flotilla.is_file(),
        "no flotilla binary at {}: run `cargo build --release --workspace --all-targets` first (`make test` does)",
        flotilla.display()
    );
    let id = std::process::id();
    let run_dir = std::env::temp_dir().join(format!("flotilla-chaos-test-{id}-{name}"));
    let output = Command::new(&chaos)
        .args(args)
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["--net-tag", &format!("{lane}{:03}", id % 1000)])
        .args(["--subnet", &format!("10.{}.{}", 214 + lane, id % 250)])
        .args(["--port-base", &(20_000 + lane * 8_000 + (id % 500) * 16).to_string()])
        .arg("--flotilla")
        .arg(&flotilla)
        .env_remove("FLOTILLA_BIN")
        .output()
        .expect("flotilla-chaos starts");
    let run = ChaosRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        run_dir,
    };
    println!("{}", run.stdout);
    eprintln!("{}", run.stderr);
    run
}

/// The number that starts the rest of the chaos summary line beginning with `prefix`, e.g.
/// `summary_figure(stdout, "acknowledged records: ")`.
pub fn summary_figure(stdout: &str, prefix: &str) -> usize {
    stdout
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the summary has no {prefix:?} line"))
}

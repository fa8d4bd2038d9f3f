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

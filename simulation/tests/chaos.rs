//! The short CI version of the real-process chaos test: `flotilla-chaos` runs five real
//! `flotilla` processes on RocksDB through about a minute of rotating faults, heals, drains,
//! and must report a clean history.
//!
//! With root it partitions the network through namespaces; without, the binary says loudly
//! that it runs process faults only, and this test says so again — it never passes without
//! having run and faulted real processes. `FLOTILLA_CHAOS_SECONDS` changes the fault time.
//! It needs `flotilla` next to `flotilla-chaos`: run `cargo build --release --workspace
//! --all-targets` first (`make test` does).

use std::path::PathBuf;
use std::process::Command;

/// Fault time when `FLOTILLA_CHAOS_SECONDS` is not set.
const DEFAULT_SECONDS: u64 = 60;

#[test]
fn a_minute_of_rotating_faults_against_real_processes_loses_nothing() {
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_flotilla-chaos"));
    let flotilla = chaos.with_file_name("flotilla");
    assert!(
        flotilla.is_file(),
        "no flotilla binary at {}: run `cargo build --release --workspace --all-targets` first (`make test` does)",
        flotilla.display()
    );
    let seconds =
        std::env::var("FLOTILLA_CHAOS_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(DEFAULT_SECONDS);
    // Own names and subnet per test process, so this can run beside `make chaos` or another
    // checkout's tests on the same machine.
    let id = std::process::id();
    let run_dir = std::env::temp_dir().join(format!("flotilla-chaos-test-{id}"));
    let output = Command::new(&chaos)
        .args(["--seconds", &seconds.to_string(), "--seed", "42", "--nodes", "5"])
        // Shorter episodes than the default 5-20 s: more faults in the minute.
        .args(["--episode-min-secs", "4", "--episode-max-secs", "10"])
        .arg("--run-dir")
        .arg(&run_dir)
        .args(["--net-tag", &format!("t{}", id % 1000)])
        .args(["--subnet", &format!("10.214.{}", id % 250)])
        .args(["--port-base", &(30_000 + (id % 2000) * 16).to_string()])
        .arg("--flotilla")
        .arg(&flotilla)
        .env_remove("FLOTILLA_BIN")
        .output()
        .expect("flotilla-chaos starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    if stderr.contains("network partitions are DISABLED") {
        eprintln!(
            "\n{bang}\n!! chaos test: NO NETWORK NAMESPACES (not root?): only kill/pause/restart faults ran.\n!! Run as root for network partitions.\n{bang}",
            bang = "!".repeat(90)
        );
    }
    assert_eq!(
        output.status.code(),
        Some(0),
        "flotilla-chaos failed (1: violations, 2: the run broke); node logs and history in {}",
        run_dir.display()
    );
    assert!(stdout.contains("VERDICT: PASS"), "no passing verdict in the output");
    let faults: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("faults injected: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the summary counts injected faults");
    assert!(faults > 0, "the run injected no fault at all");
    let acknowledged: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("acknowledged records: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the summary counts acknowledged records");
    assert!(acknowledged > 0, "nothing was acknowledged: the workload never reached the nodes");
    // Keep the data of a failed run for inspection; a passing run's is only noise.
    let _ = std::fs::remove_dir_all(&run_dir);
}

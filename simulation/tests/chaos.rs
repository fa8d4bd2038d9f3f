//! The short CI version of the real-process chaos test: `flotilla-chaos` runs five real
//! `flotilla` processes on RocksDB through about a minute of rotating faults, heals, drains,
//! and must report a clean history.
//!
//! With root it partitions the network through namespaces; without, the binary says loudly
//! that it runs process faults only, and this test says so again — it never passes without
//! having run and faulted real processes. `FLOTILLA_CHAOS_SECONDS` changes the fault time.
//! It needs `flotilla` next to `flotilla-chaos`: run `cargo build --release --workspace
//! --all-targets` first (`make test` does).

mod support;

use support::{chaos, summary_figure};

/// Fault time when `FLOTILLA_CHAOS_SECONDS` is not set.
const DEFAULT_SECONDS: u64 = 60;

#[test]
fn a_minute_of_rotating_faults_against_real_processes_loses_nothing() {
    let seconds =
        std::env::var("FLOTILLA_CHAOS_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(DEFAULT_SECONDS);
    let run = chaos(
        0,
        "rotating",
        // Shorter episodes than the default 5-20 s: more faults in the minute.
        &[
            "--seconds",
            &seconds.to_string(),
            "--seed",
            "42",
            "--nodes",
            "5",
            "--episode-min-secs",
            "4",
            "--episode-max-secs",
            "10",
        ],
    );
    if run.stderr.contains("network partitions are DISABLED") {
        eprintln!(
            "\n{bang}\n!! chaos test: NO NETWORK NAMESPACES (not root?): only kill/pause/restart faults ran.\n!! Run as root for network partitions.\n{bang}",
            bang = "!".repeat(90)
        );
    }
    assert_eq!(
        run.code,
        Some(0),
        "flotilla-chaos failed (1: violations, 2: the run broke); node logs and history in {}",
        run.run_dir.display()
    );
    assert!(run.stdout.contains("VERDICT: PASS"), "no passing verdict in the output");
    assert!(summary_figure(&run.stdout, "faults injected: ") > 0, "the run injected no fault at all");
    assert!(
        summary_figure(&run.stdout, "acknowledged records: ") > 0,
        "nothing was acknowledged: the workload never reached the nodes"
    );
    // Keep the data of a failed run for inspection; a passing run's is only noise.
    let _ = std::fs::remove_dir_all(&run.run_dir);
}

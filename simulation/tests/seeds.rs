//! The simulation in `make test`: a fixed list of seeds through the random fault mix, the
//! determinism meta-test, and proof that the checker catches deliberately injected bugs: an
//! acknowledge-before-fsync within the same list, group members skipping records in one seed.

mod support;

use support::{simulate, sweep_count};

/// The seeds `make test` runs: a mix of 3- and 5-node clusters whose fault mixes together
/// cover every fault kind, power loss included; seeds 3, 7 and 8 run retention and trims, and
/// seed 34 sends batches of about 1 MiB. `make sim SEEDS=1000` runs many more.
const FIXED_SEEDS: &str = "1,2,3,4,5,6,7,8,9,10,11,12,34";

#[test]
fn the_fixed_seeds_lose_nothing() {
    let run = simulate(&["sweep", "--seed-list", FIXED_SEEDS, "--jobs", "2"]);
    assert_eq!(run.code, Some(0), "{}", run.explain());
    // A sweep in which little was acknowledged proves nothing.
    let acknowledged = sweep_count(&run, "acknowledged records checked");
    assert!(acknowledged > 20_000, "only {acknowledged} records acknowledged:\n{}", run.explain());
}

#[test]
fn the_same_seed_replays_the_same_run() {
    // One 3-node and one 5-node seed: the trace (every ack, fault and read) must match.
    for seed in ["7", "2"] {
        let first = simulate(&["--seed", seed, "--trace"]);
        let second = simulate(&["--seed", seed, "--trace"]);
        assert_eq!(first.code, Some(0), "{}", first.explain());
        let (a, b) = (first.replayable_output(), second.replayable_output());
        if a != b {
            let line = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
            panic!(
                "seed {seed}: two runs diverged at trace line {line}:\n  first:  {:?}\n  second: {:?}\nreplay with: {}",
                a.get(line),
                b.get(line),
                first.command
            );
        }
    }
}

#[test]
fn the_checker_catches_acknowledge_before_fsync_within_the_fixed_seeds() {
    let run = simulate(&["sweep", "--seed-list", FIXED_SEEDS, "--jobs", "2", "--", "--bug", "sync-lies"]);
    assert_eq!(run.code, Some(1), "disks that never sync must lose acknowledged records:\n{}", run.explain());
    assert!(run.stdout.contains(": safety —"), "some seed fails on safety, not only liveness:\n{}", run.explain());
    let lost = run.stdout.lines().find(|l| l.trim_start().starts_with("lost write")).unwrap_or_default();
    let conflicts = run.stdout.lines().find(|l| l.trim_start().starts_with("offset conflict")).unwrap_or_default();
    let count = |line: &str| line.split_whitespace().last().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    assert!(count(lost) + count(conflicts) > 0, "the violations name the lost data:\n{}", run.explain());
}

#[test]
fn the_checker_catches_group_members_that_skip_records() {
    // Seed 1 runs two consumer groups; with the bug every member skips the first record of
    // each partition it is handed.
    let run = simulate(&["--seed", "1", "--bug", "group-skip"]);
    assert_eq!(run.code, Some(1), "skipped records are a safety violation:\n{}", run.explain());
    assert!(
        run.stdout.contains("VIOLATION: group offsets: "),
        "the group offsets invariant names them:\n{}",
        run.explain()
    );
}

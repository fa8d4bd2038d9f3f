#!/usr/bin/env bash
# `make test`: runs every workspace test in release mode, flotilla-simulation's seeded runs
# included, then prints a summary: results per test binary, failing tests, and the replay
# commands that failing simulation tests printed. Arguments go to `cargo test` (after the
# defaults); the full output is kept in a log file named in the summary.
#
# Environment: CARGO (cargo).
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
CARGO=${CARGO:-cargo}

log=$(mktemp "${TMPDIR:-/tmp}/flotilla-test.XXXXXX")
# --no-fail-fast: one failing binary must not hide the results of the others.
command=("$CARGO" test --release --workspace --no-fail-fast "$@")
echo "test: ${command[*]}"
start=$SECONDS
status=0
"${command[@]}" 2>&1 | tee "$log" || status=$?
elapsed=$((SECONDS - start))

echo
echo "================================ make test summary ================================"
# libtest prints one "test result:" line per binary after cargo's "Running"/"Doc-tests" line
# naming it; failing tests appear as "test NAME ... FAILED".
awk '
    /^ *Running / {
        name = $0
        sub(/.*\/deps\//, "", name); sub(/\)$/, "", name); sub(/-[0-9a-f]+$/, "", name)
        kind = ($2 == "unittests") ? "unit" : $2
        current = name " (" kind ")"
    }
    /^ *Doc-tests / { current = $2 " (doc)" }
    /^test .* \.\.\. FAILED$/ { sub(/^test /, ""); sub(/ \.\.\. FAILED$/, ""); failed_tests[++nf] = current ": " $0 }
    /^test result: / {
        verdict = ($3 == "ok.") ? "ok" : "FAILED"
        passed += $4; failed += $6; ignored += $8; binaries++
        if ($4 + $6 + $8 > 0 || verdict != "ok")
            printf "  %-6s %-52s %5d passed %4d failed %4d ignored\n", verdict, current, $4, $6, $8
    }
    END {
        printf "  total: %d passed, %d failed, %d ignored in %d test binaries\n", passed, failed, ignored, binaries
        if (nf > 0) {
            print "  failing tests:"
            for (i = 1; i <= nf; i++) print "    " failed_tests[i]
        }
    }
' "$log"

if ! grep -q 'deps/flotilla_simulation-' "$log"; then
    echo "  note: the flotilla-simulation library ran no test binary (no tests yet, or the build failed)"
fi
mapfile -t replays < <(grep -iE 'replay' "$log" | grep -vE '^test .* \.\.\. (ok|ignored)$' | sort -u | head -n 20)
if [[ ${#replays[@]} -gt 0 ]]; then
    echo "  replay commands printed by failing runs:"
    printf '    %s\n' "${replays[@]}"
fi

echo "  full output: $log"
if [[ $status -eq 0 ]]; then
    echo "  PASSED in ${elapsed}s"
else
    if ! grep -q '^test result: ' "$log"; then
        echo "  cargo test stopped before any test ran (compile error? see the output above)"
    fi
    echo "  FAILED (cargo exit status $status) in ${elapsed}s"
fi
echo "==================================================================================="
exit "$status"

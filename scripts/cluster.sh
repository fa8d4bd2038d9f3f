#!/usr/bin/env bash
# Runs the local 3-node Flotilla cluster on 127.0.0.1 (layout: deploy/local/README.md).
#
#   scripts/cluster.sh [--no-restart] [-- NODE_ARGS...] foreground; Ctrl-C or SIGTERM stops the nodes;
#                                                      a node that dies is restarted on its data
#                                                      (RESTART_DELAY_S, default 1) unless --no-restart
#   scripts/cluster.sh --background [-- NODE_ARGS...]  return once every node accepts clients
#   scripts/cluster.sh --stop                          stop a cluster started with --background
#   scripts/cluster.sh --clean-data                    --stop, then delete .flotilla/
#
# Node i (1..3) serves clients on 127.0.0.1:710i, Raft peers on :720i, HTTP on :730i, keeps
# its data in .flotilla/node<i> and logs to .flotilla/node<i>.log (appended; data is reused
# across runs). NODE_ARGS are appended to every node's command line.
#
# Environment: FLOTILLA_BIN, FLO_BIN (default: $CARGO_TARGET_DIR/release/{flotilla,flo},
# CARGO_TARGET_DIR defaulting to ~/.cache/flotilla/target), STOP_GRACE_S (10: SIGTERM to
# SIGKILL), READY_DEADLINE_S (60: how long --background waits for the client ports, and then
# for a metadata leader with every node registered).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
DEV_DIR=$ROOT/.flotilla
PIDS_FILE=$DEV_DIR/pids
TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/flotilla/target}
FLOTILLA_BIN=${FLOTILLA_BIN:-$TARGET_DIR/release/flotilla}
FLO_BIN=${FLO_BIN:-$TARGET_DIR/release/flo}
STOP_GRACE_S=${STOP_GRACE_S:-10}
READY_DEADLINE_S=${READY_DEADLINE_S:-60}

HOST=127.0.0.1
NODES=(1 2 3)
INITIAL_CLUSTER="1=$HOST:7201,2=$HOST:7202,3=$HOST:7203"
BROKERS="$HOST:7101,$HOST:7102,$HOST:7103"

client_port() { echo $((7100 + $1)); }
peer_port() { echo $((7200 + $1)); }
http_port() { echo $((7300 + $1)); }
node_log() { echo "$DEV_DIR/node$1.log"; }

say() { echo "cluster: $*"; }
die() {
    echo "cluster: $*" >&2
    exit 1
}

# True when something accepts TCP connections on HOST:$1. The timeout covers a full listen
# backlog, where connect() would otherwise hang for the SYN retries.
port_open() {
    # shellcheck disable=SC2016 # $0 and $1 expand in the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# The last 30 lines the node wrote in this run (start_node marks each run in the log).
show_log_tail() {
    local log
    log=$(node_log "$1")
    if [[ -s $log ]]; then
        echo "---- $log (this run, last 30 lines) ----" >&2
        tac "$log" | sed '/^==== .*: starting node /q' | tac | tail -n 30 >&2
        echo "---- end of $log ----" >&2
    else
        echo "(node $1 wrote nothing to $log)" >&2
    fi
}

# Stops the given pids: SIGTERM, then SIGKILL for whatever is left after STOP_GRACE_S. Works
# for children and for the nodes of an earlier --background run alike (polls, never waits).
stop_pids() {
    local pids=("$@") left=() pid deadline
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    deadline=$((SECONDS + STOP_GRACE_S))
    while :; do
        left=()
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then left+=("$pid"); fi
        done
        [[ ${#left[@]} -gt 0 ]] || return 0
        if ((SECONDS >= deadline)); then
            say "still running ${STOP_GRACE_S}s after SIGTERM, sending SIGKILL: ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            return 0
        fi
        sleep 0.2
    done
}

# Pids from the pids file that still belong to this cluster's nodes (a pid the kernel reused
# for another process is skipped: its command line does not name our data directory).
background_pids() {
    local pid args
    [[ -f $PIDS_FILE ]] || return 0
    while read -r pid; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        args=$(ps -o args= -p "$pid" 2>/dev/null) || continue
        if [[ $args == *"--data-dir $DEV_DIR/node"* ]]; then echo "$pid"; fi
    done <"$PIDS_FILE"
}

stop_background() {
    local pids=()
    mapfile -t pids < <(background_pids)
    if [[ ${#pids[@]} -eq 0 ]]; then
        say "no background cluster running"
    else
        say "stopping background cluster (pids ${pids[*]})"
        stop_pids "${pids[@]}"
        say "stopped"
    fi
    rm -f "$PIDS_FILE"
}

clean_data() {
    local i port
    stop_background
    for i in "${NODES[@]}"; do
        for port in $(client_port "$i") $(peer_port "$i"); do
            if port_open "$port"; then
                die "something still listens on $HOST:$port (a foreground 'make cluster'? stop it first); not deleting $DEV_DIR"
            fi
        done
    done
    rm -rf -- "$DEV_DIR"
    say "deleted $DEV_DIR"
}

# Refuses to start over a running cluster or on ports someone else holds, naming the owner.
check_free() {
    local i port busy=0
    if [[ -n $(background_pids) ]]; then
        die "a background cluster is already running (pids in $PIDS_FILE); stop it with: make stop"
    fi
    for i in "${NODES[@]}"; do
        for port in $(client_port "$i") $(peer_port "$i") $(http_port "$i"); do
            if port_open "$port"; then
                echo "cluster: port $HOST:$port (node $i) is already in use" >&2
                if command -v ss >/dev/null 2>&1; then ss -Hltnp "sport = :$port" >&2 || true; fi
                busy=1
            fi
        done
    done
    ((busy == 0)) || die "free the ports above (another cluster? 'make stop' or Ctrl-C it) and retry"
}

PID_OF=()      # node id -> pid
STARTED_AT=()  # node id -> $SECONDS when it was last started
FAST_EXITS=()  # node id -> exits in a row that came soon after a start
# A node that dies is restarted after this many seconds (foreground mode, unless --no-restart),
# like a service manager would: killing a node (kill -9 of a leader, say) is something users
# do to a dev cluster on purpose, and the rest of the cluster must keep running meanwhile.
RESTART_DELAY_S=${RESTART_DELAY_S:-1}
# A node that exits this soon after starting, three times in a row, is broken (a bad flag, a
# data dir of another node): stop instead of looping.
CRASH_LOOP_WINDOW_S=5

# Replaces the (background) subshell with node $1, so its pid is the node's pid.
run_node() {
    local i=$1 launcher=()
    # nohup: background nodes outlive this script and the terminal it ran in.
    if [[ $MODE == background ]]; then launcher=(nohup); fi
    # The server reads FLOTILLA_* variables as configuration; keep this script's knobs out.
    exec "${launcher[@]}" env -u FLOTILLA_BIN -u FLO_BIN "$FLOTILLA_BIN" \
        --node-id "$i" \
        --data-dir "$DEV_DIR/node$i" \
        --listen "$HOST:$(client_port "$i")" \
        --peer-listen "$HOST:$(peer_port "$i")" \
        --http-listen "$HOST:$(http_port "$i")" \
        --initial-cluster "$INITIAL_CLUSTER" \
        "${NODE_ARGS[@]}"
}

start_node() {
    local i=$1 log
    log=$(node_log "$i")
    mkdir -p "$DEV_DIR/node$i"
    printf '\n==== %s: starting node %s: %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$i" "$FLOTILLA_BIN" >>"$log"
    run_node "$i" </dev/null >>"$log" 2>&1 &
    PID_OF[i]=$!
    STARTED_AT[i]=$SECONDS
}

all_pids() { echo "${PID_OF[@]}"; }

# Nodes whose process has exited (bash reaps its children, so kill -0 fails once one dies).
dead_nodes() {
    local i
    for i in "${!PID_OF[@]}"; do
        kill -0 "${PID_OF[$i]}" 2>/dev/null || echo "$i"
    done
}

EXIT_STATUS=()  # node id -> exit status of its last run

report_dead() {
    local i status shown
    for i in "$@"; do
        status=0
        wait "${PID_OF[$i]}" 2>/dev/null || status=$?
        EXIT_STATUS[i]=$status
        shown=$status
        if ((status > 128)); then shown="$status (SIG$(kill -l $((status - 128))))"; fi
        echo "cluster: node $i (pid ${PID_OF[$i]}) exited with status $shown" >&2
        if ((status != 0)); then show_log_tail "$i"; fi
    done
}

# Polls every node's client port until all accept connections; fails fast if a node exits.
wait_ready() {
    local deadline=$((SECONDS + READY_DEADLINE_S)) pending=("${NODES[@]}") next i dead
    while :; do
        dead=$(dead_nodes)
        if [[ -n $dead ]]; then
            # shellcheck disable=SC2086 # one node id per word
            report_dead $dead
            return 1
        fi
        next=()
        for i in "${pending[@]}"; do
            port_open "$(client_port "$i")" || next+=("$i")
        done
        pending=("${next[@]}")
        [[ ${#pending[@]} -gt 0 ]] || return 0
        if ((SECONDS >= deadline)); then
            for i in "${pending[@]}"; do
                echo "cluster: node $i does not accept connections on $HOST:$(client_port "$i") after ${READY_DEADLINE_S}s" >&2
                show_log_tail "$i"
            done
            return 1
        fi
        sleep 0.25
    done
}

# Polls `flo cluster status` until a metadata leader is elected and every node has registered:
# open client ports alone are not enough, a topic created before the registrations commit is
# refused (no registered nodes to place it on). Fails fast if a node exits.
wait_registered() {
    local deadline=$((SECONDS + READY_DEADLINE_S)) status dead
    [[ -x $FLO_BIN ]] || return 0
    while :; do
        dead=$(dead_nodes)
        if [[ -n $dead ]]; then
            # shellcheck disable=SC2086 # one node id per word
            report_dead $dead
            return 1
        fi
        status=$("$FLO_BIN" --brokers "$BROKERS" cluster status -o json 2>/dev/null || true)
        if [[ $status != *'"metadata_leader_id":null'* ]] &&
            (($(grep -o '"live":true' <<<"$status" | wc -l) >= ${#NODES[@]})); then
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "cluster: no metadata leader with all ${#NODES[@]} nodes registered after ${READY_DEADLINE_S}s; last status: ${status:-none}" >&2
            return 1
        fi
        sleep 0.25
    done
}

# Ctrl-C / SIGTERM: stop every node we started and exit 0. Further signals are ignored so the
# shutdown always completes (it takes at most STOP_GRACE_S).
on_signal() {
    trap '' INT TERM
    echo
    say "stopping nodes (SIGTERM, SIGKILL after ${STOP_GRACE_S}s)"
    # shellcheck disable=SC2046 # one pid per word
    stop_pids $(all_pids)
    if [[ $MODE == background ]]; then rm -f "$PIDS_FILE"; fi
    say "stopped; data kept in $DEV_DIR"
    exit 0
}

print_info() {
    local i flo=$FLO_BIN
    if command -v flo >/dev/null 2>&1; then flo=flo; fi
    echo
    say "3 nodes up on $HOST (data reused across runs; 'make clean-data' wipes it)"
    for i in "${NODES[@]}"; do
        printf '  node %s  pid %-7s client %s:%s  peer :%s  http :%s  log %s\n' "$i" "${PID_OF[$i]}" \
            "$HOST" "$(client_port "$i")" "$(peer_port "$i")" "$(http_port "$i")" "$(node_log "$i")"
    done
    echo "  brokers: $BROKERS  (flo's default; or --brokers / FLOTILLA_BROKERS)"
    echo "  try:     $flo cluster status"
    echo "  follow:  tail -F $DEV_DIR/node*.log"
}

start_cluster() {
    [[ -x $FLOTILLA_BIN ]] || die "no executable at $FLOTILLA_BIN; run 'make build' or set FLOTILLA_BIN"
    [[ -x $FLO_BIN ]] || say "note: no flo at $FLO_BIN ('make build' builds it; FLO_BIN overrides)"
    mkdir -p "$DEV_DIR"
    check_free

    trap on_signal INT TERM
    local i
    for i in "${NODES[@]}"; do start_node "$i"; done
    if [[ $MODE == background ]]; then
        printf '%s\n' "${PID_OF[@]}" >"$PIDS_FILE"
    fi
    say "started nodes (pids $(all_pids)); waiting up to ${READY_DEADLINE_S}s for client ports and registration"
    if ! wait_ready || ! wait_registered; then
        # shellcheck disable=SC2046 # one pid per word
        stop_pids $(all_pids)
        rm -f "$PIDS_FILE"
        die "cluster did not start"
    fi
    print_info

    if [[ $MODE == background ]]; then
        say "running in the background; stop with: make stop (or $0 --stop)"
        exit 0
    fi

    if [[ $RESTART == yes ]]; then
        say "Ctrl-C stops all three nodes; a node that dies is restarted after ${RESTART_DELAY_S}s"
    else
        say "Ctrl-C stops all three nodes; if one dies, all stop (--no-restart)"
    fi
    # Poll for dead nodes. Not `wait -n`: it waits for the *next* exit, so nodes that died
    # together (kill -9 of all three) while another was being handled are never noticed.
    # `sleep & wait` keeps the poll interruptible, so the Ctrl-C trap runs at once.
    local dead
    while :; do
        sleep 0.5 &
        wait $! || true
        dead=$(dead_nodes)
        [[ -n $dead ]] || continue
        # shellcheck disable=SC2086 # one node id per word
        report_dead $dead
        if [[ $RESTART == no ]]; then
            say "a node exited; stopping the others"
            # shellcheck disable=SC2046 # one pid per word
            stop_pids $(all_pids)
            exit 1
        fi
        # A clean exit (status 0) means the node was asked to stop (SIGTERM, Ctrl-C): like a
        # service manager's on-failure policy, only failures are restarted.
        local failed=()
        for i in $dead; do
            if ((EXIT_STATUS[i] == 0)); then
                say "node $i stopped cleanly; not restarting it"
                unset "PID_OF[$i]"
            else
                failed+=("$i")
            fi
        done
        if ((${#PID_OF[@]} == 0)); then
            say "every node has stopped; data kept in $DEV_DIR"
            exit 0
        fi
        for i in "${failed[@]}"; do
            if ((SECONDS - STARTED_AT[i] < CRASH_LOOP_WINDOW_S)); then
                FAST_EXITS[i]=$((${FAST_EXITS[i]:-0} + 1))
            else
                FAST_EXITS[i]=0
            fi
            if ((FAST_EXITS[i] >= 3)); then
                say "node $i keeps exiting within ${CRASH_LOOP_WINDOW_S}s of starting; stopping the cluster (see its log above)"
                # shellcheck disable=SC2046 # one pid per word
                stop_pids $(all_pids)
                exit 1
            fi
        done
        ((${#failed[@]} > 0)) || continue
        sleep "$RESTART_DELAY_S"
        for i in "${failed[@]}"; do
            start_node "$i"
            say "node $i restarted (pid ${PID_OF[$i]}) on its data in $DEV_DIR/node$i"
        done
    done
}

MODE=foreground
RESTART=yes
NODE_ARGS=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --background) MODE=background ;;
    --no-restart) RESTART=no ;;
    --stop) MODE=stop ;;
    --clean-data) MODE=clean-data ;;
    --)
        shift
        NODE_ARGS=("$@")
        break
        ;;
    -h | --help)
        sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
        exit 0
        ;;
    *) die "unknown argument '$1' (see $0 --help)" ;;
    esac
    shift
done

case $MODE in
stop) stop_background ;;
clean-data) clean_data ;;
*) start_cluster ;;
esac

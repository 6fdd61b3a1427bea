#!/usr/bin/env bash
# Snapshot: rows/s and peak RSS of the initial snapshot of a cdc table, on a
# private stack, with tests/integration/test_cdc_snapshot.sh doing the work
# and the checking (every row exactly once as "r" or "c", final state per key
# equal to the table).
#
#   bench/snapshot.sh [ROWS] [CONCURRENT_ROWS]
#     ROWS             rows in the table before the relay starts (default 1000000)
#     CONCURRENT_ROWS  rows a writer inserts during the snapshot, with updates
#                      and deletes of existing rows (default ROWS / 10)
#   BENCH_CHUNK      rows per chunk = relay.max_batch_events (default 5000)
#   BENCH_KILLS      also run once with that many SIGKILLs during the
#                    snapshot (default 2; 0: only the clean run)
#
# Prints, per run: rows published by the snapshot and its rows/s (from the
# relay's "snapshot finished" line: the last relay's share when it was
# killed before), wall time, and each relay's peak RSS (VmHWM).
source "$(dirname "$0")/common.sh"
ROWS=${1:-1000000}
CONC=${2:-$((ROWS / 10))}
CHUNK=${BENCH_CHUNK:-5000}
KILLS=${BENCH_KILLS:-2}

run() { # run KILLS NAME
    local kills=$1 name=$2 logs=$WORK/$2
    mkdir -p "$logs"
    say "$name: $ROWS rows, $CONC concurrent, chunk $CHUNK, $kills SIGKILL(s)"
    local rc=0
    STACK_DIR=$STACK_DIR OUTBOXD_BIN=$OUTBOXD_BIN OUTBOXD_TOOLS=$BUILD/tests/tools \
        OUTBOXD_SOURCE_DIR=$ROOT TEST_KEEP_LOGS=$logs SNAP_ROWS=$ROWS SNAP_CONC_ROWS=$CONC \
        SNAP_CHUNK=$CHUNK SNAP_KILLS=$kills SNAP_RSS_LIMIT_KB=${BENCH_RSS_LIMIT_KB:-65536} \
        "$ROOT/tests/integration/test_cdc_snapshot.sh" >"$logs/test.out" 2>&1 || rc=$?
    grep -E "events by op|snapshot_rows=|FAIL" "$logs/test.out" | sed "s/^/  $name: /" >&2
    local line
    line=$(sed -n 's/^.*snapshot finished: \([0-9]*\) rows in \([0-9.]*\) s (\([0-9]*\) rows\/s).*$/\1 \2 \3/p' \
        "$logs/relay-final.log" 2>/dev/null | tail -n 1)
    read -r n secs rate <<<"${line:-0 0 0}"
    local peak
    peak=$(sed -n 's/.*peak_rss_kb=\([0-9]*\).*/\1/p' "$logs/test.out" | tail -n 1)
    printf '%s: snapshot_rows=%s snapshot_s=%s snapshot_rows_per_s=%s peak_rss_kb=%s (%s MB) check=%s\n' \
        "$name" "$n" "$secs" "$rate" "${peak:-?}" "$(( ${peak:-0} / 1024 ))" \
        "$([ $rc -eq 0 ] && echo passed || echo FAILED)"
    return $rc
}
rc=0
run 0 clean || rc=1
[ "$KILLS" -eq 0 ] || run "$KILLS" killed || rc=1
exit $rc

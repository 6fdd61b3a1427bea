#!/usr/bin/env bash
# tests/repeat.sh TEST RUNS [LANES] - runs one integration test RUNS times
# (not a CI step): a private stack, LANES copies at a time (default 1; 2 or
# 3 load the machine as CI's -j2 does), and the output of every failed run
# kept. For a test that fails rarely: the exactly-once check then says where
# the missing events are (tests/integration/lib.sh, explain_missing), and a
# failed test's relays log their final counters.
#
#   tests/repeat.sh test_multi_db 100 2
#   BUILD=build-asan tests/repeat.sh test_multi_db 100 3      (ASan + UBSan)
#   REPEAT_ENV="RELAY_LOG_LEVEL=debug" tests/repeat.sh test_multi_db 50
#
# Only "# ctest: parallel" tests may run in several lanes (the others
# restart or pause the shared servers); test_registry_* and test_cdc_* get
# the schema registry as under ctest. Prints one line per run and at the
# end "N passed, N failed" with where the failed runs' output is; exit 1 if
# any failed. BUILD (default build) holds outboxd and the test tools; a
# build with -DOUTBOXD_SANITIZE=ON is detected from its CMakeCache.txt.
# REPEAT_OUT=DIR keeps the output there instead of a new directory under
# /tmp. Ctrl-C (or SIGTERM) ends the running tests with their children
# before the stack stops.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
usage() {
    echo "usage: tests/repeat.sh TEST RUNS [LANES]   (TEST: e.g. test_multi_db)" >&2
    exit 2
}
[ $# -ge 2 ] || usage
TEST=${1%.sh}
TEST=${TEST#integration.}
RUNS=$2
LANES=${3:-1}
case $RUNS in '' | *[!0-9]* | 0) usage ;; esac
case $LANES in '' | *[!0-9]* | 0) usage ;; esac
SCRIPT=$ROOT/tests/integration/$TEST.sh
[ -f "$SCRIPT" ] || {
    echo "repeat: no test $SCRIPT" >&2
    exit 2
}
if [ "$LANES" -gt 1 ] && ! grep -q '^# ctest: parallel' "$SCRIPT"; then
    echo "repeat: $TEST is not a '# ctest: parallel' test: run it with LANES 1" >&2
    exit 2
fi
BUILD=$(cd "${BUILD:-$ROOT/build}" && pwd)
export OUTBOXD_BIN=$BUILD/outboxd OUTBOXD_TOOLS=$BUILD/tests/tools OUTBOXD_SOURCE_DIR=$ROOT
[ -x "$OUTBOXD_BIN" ] && [ -x "$OUTBOXD_TOOLS/okcat" ] || {
    echo "repeat: build first (cmake -S . -B build -G Ninja && ninja -C build)" >&2
    exit 2
}
export OUTBOXD_SANITIZE=0
grep -q '^OUTBOXD_SANITIZE:BOOL=ON' "$BUILD/CMakeCache.txt" 2>/dev/null && OUTBOXD_SANITIZE=1
OUT=${REPEAT_OUT:-/tmp/outboxd-repeat-$TEST-$$}
mkdir -p "$OUT"
: >"$OUT/results"
: >"$OUT/pids"
export STACK_DIR=/tmp/outboxd-repeat-stack-$$ STACK_OWNER_PID=$$ STACK_OWNER_CLEAN=1
export STACK_KAFKA_PROXY=1 # as ctest's fixture starts it (the fault tests need it)
# Each run is a process group of its own (setsid): the end of this script
# ends a run still going with everything it started (relays, okcat,
# writers), then the stack.
finish() {
    local p
    if [ -f "$OUT/pids" ]; then
        while read -r p; do kill -TERM -- "-$p" 2>/dev/null || true; done <"$OUT/pids"
    fi
    # shellcheck disable=SC2046 # one pid per word
    kill $(jobs -p) 2>/dev/null || true
    wait 2>/dev/null || true
    "$ROOT/tests/stack/registry.sh" stop >/dev/null 2>&1 || true
    "$ROOT/tests/stack/stack.sh" stop --clean >/dev/null 2>&1 || true
}
trap finish EXIT
trap 'exit 130' INT TERM
"$ROOT/tests/stack/stack.sh" start >&2
case $TEST in test_registry_* | test_cdc_*) "$ROOT/tests/stack/registry.sh" start >&2 ;; esac

# lane K: runs K, K+LANES, K+2*LANES, ... and appends "run N pass|FAIL" lines.
lane() {
    local k=$1 n rc t
    for ((n = k; n <= RUNS; n += LANES)); do
        rc=0
        # shellcheck disable=SC2086 # REPEAT_ENV is VAR=value words
        setsid env ${REPEAT_ENV:-} "$SCRIPT" >"$OUT/run-$n.log" 2>&1 &
        t=$!
        echo "$t" >>"$OUT/pids"
        wait "$t" || rc=$?
        if [ "$rc" -eq 0 ]; then
            rm -f "$OUT/run-$n.log"
            echo "run $n pass" | tee -a "$OUT/results"
        else
            echo "run $n FAIL (exit $rc): $OUT/run-$n.log" | tee -a "$OUT/results"
        fi
    done
}
for ((k = 1; k <= LANES; k++)); do lane "$k" & done
wait
pass=$(grep -c ' pass$' "$OUT/results" || true)
failed=$(grep -c ' FAIL ' "$OUT/results" || true)
echo "$TEST: $pass passed, $failed failed of $RUNS (lanes $LANES, $BUILD)"
if [ "$failed" -gt 0 ] || [ $((pass + failed)) -ne "$RUNS" ]; then
    [ $((pass + failed)) -eq "$RUNS" ] || echo "repeat: only $((pass + failed)) of $RUNS runs reported" >&2
    echo "failed runs' output: $OUT"
    exit 1
fi
# Only what this script wrote: REPEAT_OUT may name a directory of the user's.
rm -f "$OUT/results" "$OUT/pids"
rmdir "$OUT" 2>/dev/null || true

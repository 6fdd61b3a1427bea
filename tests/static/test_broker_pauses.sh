#!/usr/bin/env bash
# bench/common.sh broker_pauses sums the test broker's stop-the-world pauses
# from its kafka-gc.log (tests/stack/stack.sh: -Xlog:gc,safepoint with
# epoch-millisecond stamps). Fed lines as JDK 17 writes them, across a
# rotated file, it must count only the safepoints within the window, tell
# the collector's from the others, and print the total, the share of the
# window, p50, p99, the longest (with its operation) and those of 5 ms or
# more; with none in the window it must say so instead of printing zeros.
# Also: every bench script parses (bash -n, ast.parse), since CI runs none.
set -euo pipefail
SRC=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() {
    echo "[test_broker_pauses] FAIL: $*" >&2
    exit 1
}
sp() { # EPOCH_MS OP TOTAL_NS
    printf '[%sms][12345ms][safepoint] Safepoint "%s", Time since last: 1000 ns, Reaching safepoint: 10 ns, Cleanup: 5 ns, At safepoint: 100 ns, Total: %s ns\n' "$1" "$2" "$3"
}
{
    sp 1000 G1CollectForAllocation 50000000 # before the window
    printf '[1500ms][12500ms][gc] GC(3) Pause Young (Normal) (G1 Evacuation Pause) 100M->20M(256M) 12.000ms\n'
} >"$WORK/kafka-gc.log.0"
{
    sp 2000 G1CollectForAllocation 12000000
    sp 2500 Cleanup 200000
    sp 3000 ZMarkStart 300000
    sp 3500 G1PauseRemark 7500000
    sp 4000 ICBufferFull 1000000
    sp 9000 G1CollectForAllocation 90000000 # after the window
} >"$WORK/kafka-gc.log"
# shellcheck disable=SC1090
source <(sed -n '/^broker_pauses()/,/^}/p' "$SRC/bench/common.sh")
out=$(STACK_DIR=$WORK broker_pauses 1800 5800 "in the test")
echo "$out"
want="latency: broker JVM pauses in the test: 5 safepoints (3 for the collector), stopped 21 ms in all (0.53% of 4 s); p50 1.00, p99 12.0, max 12.0 ms (G1CollectForAllocation, +0.2 s); 2 of 5 ms or more"
[ "$out" = "$want" ] || fail "want: $want"
out=$(STACK_DIR=$WORK broker_pauses 5000 6000 "in a quiet window")
case $out in *"none logged"*) ;; *) fail "a window without safepoints: $out" ;; esac
out=$(STACK_DIR=$WORK/none broker_pauses 0 9999 "without a log")
case $out in *"none logged"*) ;; *) fail "no kafka-gc.log: $out" ;; esac

for f in "$SRC"/bench/*.sh; do bash -n "$f" || fail "$f does not parse"; done
for f in "$SRC"/bench/*.py; do python3 -c "import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])" "$f" 2>"$WORK/py.err" || fail "$f: $(cat "$WORK/py.err")"; done
echo "[test_broker_pauses] ok"

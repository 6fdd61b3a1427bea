#!/usr/bin/env bash
# Installs what is needed and runs every test:
#   1. Debian packages and the Kafka jars (scripts/install-deps.sh)
#   2. a normal build: unit, mock-cluster and integration tests (ctest)
#   3. an AddressSanitizer + UndefinedBehaviorSanitizer build (LeakSanitizer
#      on): the whole suite again, the relay itself running instrumented
# Integration tests start a real PostgreSQL and Kafka (tests/stack/stack.sh)
# on free ports and stop them at the end, also when a test fails or this
# script is killed (the stack's watchdog follows this shell's pid).
#
#   scripts/test.sh                 everything
#   TESTS_SKIP_ASAN=1 scripts/test.sh   without the sanitizer pass
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

"$ROOT/scripts/install-deps.sh"

export STACK_OWNER_PID=$$
stacks=()
cleanup() {
    for d in "${stacks[@]}"; do STACK_DIR=$d "$ROOT/tests/stack/stack.sh" stop --clean >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

jobs=$(nproc)
run_suite() { # run_suite BUILD_DIR CMAKE_ARGS... -- CTEST_ARGS...
    local dir=$1
    shift
    local cargs=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do cargs+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    cmake -S "$ROOT" -B "$dir" -G Ninja -DOUTBOXD_WERROR=ON "${cargs[@]}" >/dev/null
    ninja -C "$dir"
    stacks+=("$(cmake -L -N "$dir" 2>/dev/null | sed -n 's/^STACK_DIR:PATH=//p')")
    (cd "$dir" && ctest --output-on-failure -j "$jobs" "$@")
    # The numbers the integration tests measured (counts of lost and
    # duplicated events, peak RSS), so they show in a passing run too.
    echo "--- measured by the integration tests ($dir)"
    grep -hE "^okcat: expected=|huge_txn_rows=|second relay refused|second signal:|rows written|relay killed|drained [0-9]+ rows" \
        "$dir/Testing/Temporary/LastTest.log" | sed 's/^/    /' || true
}

echo "=== build and test (RelWithDebInfo)"
run_suite "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo --

if [ "${TESTS_SKIP_ASAN:-0}" != 1 ]; then
    echo "=== build and test with AddressSanitizer + UndefinedBehaviorSanitizer"
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    run_suite "$ROOT/build-asan" -DCMAKE_BUILD_TYPE=Debug -DOUTBOXD_SANITIZE=ON --
fi
echo "=== all tests passed"

#!/usr/bin/env bash
# Installs what is needed and runs every test:
#   1. Debian packages and the Kafka jars (scripts/install-deps.sh)
#   2. .clang-format is respected (clang-format --dry-run --Werror)
#   3. a normal build: unit, mock-cluster, fuzz-regression and integration
#      tests (ctest)
#   4. an AddressSanitizer + UndefinedBehaviorSanitizer build (LeakSanitizer
#      on): the whole suite again, the relay itself running instrumented
#   5. a Release build (-O3) with -Werror, build only: what users build
#   6. a fuzz smoke: every libFuzzer target for FUZZ_SMOKE_SECONDS (default
#      20) with clang (bench/fuzz.sh)
# Integration tests start a real PostgreSQL and Kafka (tests/stack/stack.sh)
# on free ports and stop them at the end, also when a test fails or this
# script is killed (the stack's watchdog follows this shell's pid).
# Every step runs even when an earlier one failed; each prints its wall time.
# The last line is always "N passed, N failed": the ctest results of all
# passes summed, plus steps 2, 5 and 6 counted as one test each (CI reads
# it); the exit status is 0 only if nothing failed.
#
#   scripts/test.sh                 everything
#   TESTS_SKIP_ASAN=1 scripts/test.sh   without the sanitizer pass
#   TESTS_SKIP_FUZZ=1 scripts/test.sh   without the fuzz smoke
#   TESTS_CTEST_ARGS="-L unit" scripts/test.sh   only some ctest tests
#   TESTS_CTEST_JOBS=1 scripts/test.sh  one test at a time (default 2: two
#                    integration tests share the stack, except those whose
#                    "# ctest:" line says serial or lock; README "Tests")
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
# Not nproc: integration tests mostly wait on servers, and two at a time is
# what their "# ctest:" classification was checked for.
ctest_jobs=${TESTS_CTEST_JOBS:-2}
total_passed=0
total_failed=0
failed_steps=()

# step NAME COMMAND...: a check that is not a ctest test, counted as one.
step() {
    local name=$1 t0=$(date +%s) rc=0
    shift
    echo "=== $name"
    "$@" || rc=$?
    if [ $rc -eq 0 ]; then
        total_passed=$((total_passed + 1))
        echo "--- $name: passed in $(($(date +%s) - t0)) s"
    else
        total_failed=$((total_failed + 1))
        failed_steps+=("$name")
        echo "--- $name: FAILED (exit $rc) after $(($(date +%s) - t0)) s"
    fi
}

check_format() {
    local files bad
    mapfile -t files < <(git -C "$ROOT" ls-files '*.c' '*.h')
    bad=$(cd "$ROOT" && clang-format --dry-run --Werror "${files[@]}" 2>&1 | grep -cE '(warning|error):' || true)
    echo "clang-format: ${#files[@]} files, $bad findings"
    [ "$bad" -eq 0 ] || {
        (cd "$ROOT" && clang-format --dry-run --Werror "${files[@]}" 2>&1 | head -n 40)
        echo "run: clang-format -i \$(git ls-files '*.c' '*.h')"
        return 1
    }
}

build_release() {
    cmake -S "$ROOT" -B "$ROOT/build-release" -G Ninja -DCMAKE_BUILD_TYPE=Release -DOUTBOXD_WERROR=ON >/dev/null &&
        ninja -C "$ROOT/build-release" -j "$jobs"
}

run_suite() { # run_suite NAME BUILD_DIR CMAKE_ARGS... -- CTEST_ARGS...
    local name=$1 dir=$2 t0=$(date +%s)
    shift 2
    local cargs=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do cargs+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    echo "=== $name"
    if ! { cmake -S "$ROOT" -B "$dir" -G Ninja -DOUTBOXD_WERROR=ON "${cargs[@]}" >/dev/null && ninja -C "$dir"; }; then
        total_failed=$((total_failed + 1))
        failed_steps+=("$name: build")
        echo "--- $name: build FAILED after $(($(date +%s) - t0)) s"
        return 0
    fi
    stacks+=("$(cmake -L -N "$dir" 2>/dev/null | sed -n 's/^STACK_DIR:PATH=//p')")
    local rc=0
    (cd "$dir" && ctest --output-on-failure -j "$ctest_jobs" "$@") 2>&1 | tee "$dir/ctest-output.txt" || rc=$?
    # "100% tests passed, 0 tests failed out of 31"
    local summary p f n
    summary=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$dir/ctest-output.txt" | tail -n 1)
    if [ -n "$summary" ]; then
        f=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$summary")
        n=$(sed -E 's/.* failed out of ([0-9]+).*/\1/' <<<"$summary")
        p=$((n - f))
    else
        p=0
        f=1 # ctest itself failed before running anything
    fi
    total_passed=$((total_passed + p))
    total_failed=$((total_failed + f))
    [ "$f" -eq 0 ] && [ $rc -eq 0 ] || failed_steps+=("$name: $f ctest failures")
    # The numbers the integration tests measured (counts of lost and
    # duplicated events, peak RSS), so they show in a passing run too.
    echo "--- measured by the integration tests ($dir)"
    grep -hE "^okcat: expected=|huge_txn_rows=|second relay refused|second signal:|rows written|relay killed|drained [0-9]+ rows|seed [0-9]+ " \
        "$dir/Testing/Temporary/LastTest.log" 2>/dev/null | sed 's/^/    /' || true
    echo "--- $name: $p passed, $f failed in $(($(date +%s) - t0)) s"
}

step "format check (clang-format)" check_format

# TESTS_CTEST_ARGS: extra ctest arguments for both passes (e.g. "-L unit").
# shellcheck disable=SC2086
run_suite "build and test (RelWithDebInfo)" "$ROOT/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -- ${TESTS_CTEST_ARGS:-}

if [ "${TESTS_SKIP_ASAN:-0}" != 1 ]; then
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1
    export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    run_suite "build and test with AddressSanitizer + UndefinedBehaviorSanitizer" \
        "$ROOT/build-asan" -DCMAKE_BUILD_TYPE=Debug -DOUTBOXD_SANITIZE=ON -- ${TESTS_CTEST_ARGS:-}
    unset ASAN_OPTIONS UBSAN_OPTIONS
fi

step "Release build (-O3, -Werror; build only)" build_release

if [ "${TESTS_SKIP_FUZZ:-0}" != 1 ]; then
    step "fuzz smoke (${FUZZ_SMOKE_SECONDS:-20} s per target)" \
        env FUZZ_BUILD="$ROOT/build-fuzz" FUZZ_BUILD_JOBS="$jobs" "$ROOT/bench/fuzz.sh" "${FUZZ_SMOKE_SECONDS:-20}"
fi

if [ "$total_failed" -eq 0 ]; then
    echo "=== all tests passed"
else
    echo "=== FAILED: ${failed_steps[*]}"
fi
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]

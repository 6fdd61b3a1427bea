#!/usr/bin/env bash
# bench/fuzz.sh [SECONDS] - builds the libFuzzer targets (tests/fuzz) with
# clang 14 + ASan + UBSan and runs each for SECONDS (default 600), seeded from
# the captured fixtures and committed inputs. Prints per target: wall and CPU
# seconds, executions, coverage (cov = edges, ft = features, from libFuzzer's
# final stats), corpus size and crashes; exits 1 if any target crashed. A crash stops its target;
# the input is kept (path printed) and must become a regression input under
# tests/data/fuzz-regress/<target>/ (replayed by ctest fuzz_regress.<target>)
# with its fix.
#
#   bench/fuzz.sh 20                       CI smoke (scripts/test.sh)
#   FUZZ_JOBS=2 nice bench/fuzz.sh 600     two targets at a time
#   FUZZ_TARGETS="pgoutput config" bench/fuzz.sh 60
# Environment: FUZZ_BUILD (default build-fuzz), FUZZ_WORK (corpora, logs and
# crash inputs; default $FUZZ_BUILD/fuzz-work, emptied at the start),
# FUZZ_JOBS (default 1), FUZZ_TARGETS (default all), FUZZ_SEED (libFuzzer
# -seed, default 1, so a run can be repeated).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_PER_TARGET=${1:-600}
BUILD=${FUZZ_BUILD:-$ROOT/build-fuzz}
WORK=${FUZZ_WORK:-$BUILD/fuzz-work}
JOBS=${FUZZ_JOBS:-1}
TARGETS=${FUZZ_TARGETS:-pgoutput config checkpoint router}
SEED=${FUZZ_SEED:-1}
CC_FUZZ=${CC_FUZZ:-clang-14}

say() { printf 'fuzz: %s\n' "$*" >&2; }
command -v "$CC_FUZZ" >/dev/null || {
    say "$CC_FUZZ not found: run scripts/install-deps.sh (clang-14, libfuzzer-14-dev, libclang-rt-14-dev)"
    exit 2
}
case $SECONDS_PER_TARGET in '' | *[!0-9]*) say "SECONDS must be a whole number"; exit 2 ;; esac

say "building $BUILD (CC=$CC_FUZZ, OUTBOXD_FUZZ=ON)"
# -Werror is for the gcc builds (scripts/test.sh); a clang-only warning in
# new code must not stop the fuzzing (FUZZ_WERROR=ON to check it anyway).
CC=$CC_FUZZ cmake -S "$ROOT" -B "$BUILD" -G Ninja -DOUTBOXD_FUZZ=ON -DOUTBOXD_WERROR="${FUZZ_WERROR:-OFF}" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$BUILD" -j "${FUZZ_BUILD_JOBS:-2}" pgo_split $(for t in $TARGETS; do printf 'fuzz_%s ' "$t"; done) >/dev/null

rm -rf "$WORK"
mkdir -p "$WORK"

# Seeds: a fresh copy of what is committed, so the run never writes into the
# source tree. libFuzzer writes new inputs into the first directory only.
seeds() { # seeds TARGET DIR
    local t=$1 dir=$2
    mkdir -p "$dir"
    case $t in
    pgoutput) "$BUILD/tests/fuzz/pgo_split" "$dir" "$ROOT"/tests/data/pgoutput/*.bin >/dev/null ;;
    config) cp "$ROOT"/tests/data/config/bad/*.yaml "$ROOT"/tests/fuzz/seeds/config/* "$dir"/
            cp "$ROOT/config/outboxd.example.yaml" "$dir/example.yaml" ;;
    *) cp "$ROOT"/tests/fuzz/seeds/"$t"/* "$dir"/ ;;
    esac
    find "$ROOT/tests/data/fuzz-regress/$t" -type f ! -name '.*' -exec cp {} "$dir"/ \;
}

# Dictionaries: the configuration keys (from the spec tables, so always
# current) and the JSON field names the router reads.
dict() { # dict TARGET FILE
    case $1 in
    config)
        grep -o 'KEY("[a-z_.]*"' "$ROOT/src/relay/config.c" | sed 's/^KEY(//' | sort -u
        printf '"%s"\n' kafka: relay: sources: tables: messages: "- " ": " "\${" "}" true false \
            '"' "'" '[' ']' '{' '}' '&a' '*a' '!!str' '---' '...'
        ;;
    router | checkpoint)
        printf '"%s"\n' id aggregatetype aggregateid type payload timestamp region v source \
            system_id database slot commit_lsn end_lsn changes null true false '\\u0000' \
            '\\ud800' ':' ',' '{' '}' '[' ']' '0/0' 'FFFFFFFF/FFFFFFFF' '2026-11-24T12:00:00Z'
        ;;
    esac >"$2"
}

run_one() { # run_one TARGET
    local t=$1 dir=$WORK/$1
    mkdir -p "$dir/corpus" "$dir/artifacts"
    seeds "$t" "$dir/seeds"
    dict "$t" "$dir/dict"
    local dict_arg=()
    [ -s "$dir/dict" ] && dict_arg=(-dict="$dir/dict")
    # stdin from /dev/null: a fuzzed config may name /dev/stdin as a file.
    # The CPU time it got is printed too: on a shared machine a wall-clock
    # run of SECONDS may get far less.
    local TIMEFORMAT='%U %S'
    { time (cd "$dir" && nice "$BUILD/tests/fuzz/fuzz_$t" -max_total_time="$SECONDS_PER_TARGET" \
        -seed="$SEED" -print_final_stats=1 -timeout=25 -rss_limit_mb=2560 -max_len=65536 \
        -artifact_prefix="$dir/artifacts/" "${dict_arg[@]}" "$dir/corpus" "$dir/seeds" \
        </dev/null >"$dir/log" 2>&1 || true); } 2>"$dir/cpu"
}

start=$(date +%s)
running=0
for t in $TARGETS; do
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || true
        running=$((running - 1))
    fi
    say "running fuzz_$t for ${SECONDS_PER_TARGET}s"
    run_one "$t" &
    running=$((running + 1))
done
wait || true

printf '%-11s %7s %7s %11s %8s %6s %7s %8s %8s\n' target seconds cpu_s execs exec/s cov ft corpus crashes
failed=0
for t in $TARGETS; do
    dir=$WORK/$t
    log=$dir/log
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corpus=$(find "$dir/corpus" -type f | wc -l)
    crashes=$(find "$dir/artifacts" -type f | wc -l)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    cpu=$(awk '{ printf "%.0f", $1 + $2 }' "$dir/cpu" 2>/dev/null || true)
    printf '%-11s %7s %7s %11s %8s %6s %7s %8s %8s\n' "$t" "${secs:--}" "${cpu:--}" "${execs:--}" "${rate:--}" \
        "${cov:--}" "${ft:--}" "$corpus" "$crashes"
    if [ "$crashes" -gt 0 ] || [ -z "$execs" ]; then
        failed=1
        grep -E 'ERROR|invariant|SUMMARY|^    #[0-9] ' "$log" | head -15 | sed "s/^/    $t: /" >&2
        for a in "$dir"/artifacts/*; do
            [ -e "$a" ] && say "$t: input kept: $a (replay: $BUILD/tests/fuzz/fuzz_$t $a)"
        done
        [ -n "$execs" ] || say "$t: no final stats; see $log"
    fi
done
say "wall time $(($(date +%s) - start))s; logs, corpora and crash inputs in $WORK"
if [ "$failed" -ne 0 ]; then
    say "FAILED: a target crashed (or did not run)"
    exit 1
fi

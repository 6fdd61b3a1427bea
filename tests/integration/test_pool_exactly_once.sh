#!/usr/bin/env bash
# ctest: parallel
# Exactly-once with a shared producer pool (relay.kafka_producers): six
# databases written concurrently, the relay SIGKILLed five times at random
# moments (0.3 to 2.3 s after all sources stream; times from TEST_SEED,
# printed), switching modes and pool sizes between crashes:
#   run 1: own producers per source (kafka_producers 0), killed
#   runs 2-3: a pool of 2, killed      run 4: a pool of 3, killed
#   run 5: a pool of 1, killed (after a crash with 3: ids .1 and .2 orphaned)
#   final: a pool of 2, runs until everything is drained, stops on SIGTERM.
# A crash leaves transactions open under ids the next run does not use (the
# per-source ids, pool ids above the new size); they hold back the checkpoint
# topic's stable offset until the broker aborts them (transaction.timeout.ms,
# 10 s here), which the next run waits for: no loss, no duplicate.
# Asserted: every kill hit a streaming relay; every pool run logged its pool;
# restarts resumed from committed checkpoints;
# the pool runs had fewer threads than the per-source run; every event is in
# Kafka exactly once, in order per key.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DBS=()
for i in 1 2 3 4 5 6; do DBS+=("pool${i}_$RUN_ID"); done
for db in "${DBS[@]}"; do create_outbox_db "$db"; done
COMMIT_INTERVAL_MS=50 write_config "$WORK/base.yaml" "${DBS[@]}"
# A short transaction timeout bounds the wait for orphaned transactions.
sed -i 's/^\(  transactional_id_prefix: .*\)$/\1\n  properties:\n    transaction.timeout.ms: "10000"/' \
    "$WORK/base.yaml"
# config_with N: the configuration with relay.kafka_producers N.
config_with() {
    sed "s/^relay:\$/relay:\n  kafka_producers: $1/" "$WORK/base.yaml" >"$WORK/outboxd.yaml"
}
config_with 0
prepare_sources "$WORK/outboxd.yaml"

pids=()
for db in "${DBS[@]}"; do
    start_writers "$db" 1 2400 80 # ~30 s of writes at 80 txn/s per database
    pids+=("$WRITER_PID")
done
threads_of() { awk '/^Threads:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

sizes=(0 2 2 3 1)
kills=0
declare -A threads
for i in "${!sizes[@]}"; do
    n=${sizes[$i]}
    config_with "$n"
    start_relay "$WORK/outboxd.yaml" "relay$i"
    ts=$(date +%s%N)
    wait_streaming "$WORK/relay$i.log" "${#DBS[@]}"
    took=$((($(date +%s%N) - ts) / 1000000))
    threads[$i]=$(threads_of "$RELAY_PID")
    delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.3 + (r % 2000) / 1000 }')
    sleep "$delay"
    kill -9 "$RELAY_PID" || fail "relay $i had exited before its SIGKILL"
    rc=0
    wait "$RELAY_PID" 2>/dev/null || rc=$?
    [ "$rc" -eq 137 ] || fail "relay $i exited with status $rc, not by SIGKILL (137)"
    kills=$((kills + 1))
    if [ "$n" -gt 0 ]; then
        grep -q "kafka pool: $n transactional producers outboxd-$RUN_ID.pool.0" \
            "$WORK/relay$i.log" || fail "run $i (kafka_producers $n) did not start its pool"
    fi
    log "SIGKILL #$kills (kafka_producers $n, ${threads[$i]} threads, all streaming ${took} ms after start), ${delay}s after streaming"
done
config_with 2
start_relay "$WORK/outboxd.yaml" relay-final
relay=$RELAY_PID
wait_streaming "$WORK/relay-final.log" "${#DBS[@]}"
final_threads=$(threads_of "$relay")
wait_writers "${pids[@]}"
for db in "${DBS[@]}"; do wait_drained "$db" "${db}_${RUN_ID}"; done

: >"$WORK/expected.tsv"
for db in "${DBS[@]}"; do expected_events "$db" "$WORK/expected.tsv"; done
assert_rows_written "$WORK/expected.tsv" "${DBS[@]}"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed after $kills SIGKILLs"
stop_relay_ok "$relay"
log "threads: own producers ${threads[0]}, pool of 2 ${threads[1]} and ${final_threads}," \
    "pool of 3 ${threads[3]}, pool of 1 ${threads[4]}"
[ "${threads[1]}" -lt "${threads[0]}" ] ||
    fail "a pool of 2 ran ${threads[1]} threads, own producers ${threads[0]}"
# The kills interrupted real work: later runs resumed from checkpoints the
# killed ones committed (how many sources had committed before a kill
# depends on the timing; under a sanitizer some had not).
resumed=$(cat "$WORK"/relay[1-4].log "$WORK/relay-final.log" | grep -c "last checkpoint commit [0-9A-F]" || true)
log "sources that resumed from a committed checkpoint, over runs 2 to 6: $resumed"
[ "${resumed:-0}" -ge "${#DBS[@]}" ] ||
    fail "only ${resumed:-0} source starts resumed from a checkpoint: the kills interrupted no work"
for db in "${DBS[@]}"; do drop_source "$db" "${db}_${RUN_ID}"; done
log "PASS (relay killed $kills times)"

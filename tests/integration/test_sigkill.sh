#!/usr/bin/env bash
# ctest: parallel
# Exactly-once across crashes: the relay is killed with SIGKILL at random
# moments (6 times, each 0.3 to 2.3 s after it started streaming; the times
# come from TEST_SEED, printed) while two databases are being written; after
# a final clean run every event is in Kafka exactly once and in order per key.
# Asserted as well: every kill hit a live, streaming relay (exit by SIGKILL),
# and the final relay resumed from the checkpoints the killed ones committed.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DBS=(kpay_$RUN_ID kord_$RUN_ID)
for db in "${DBS[@]}"; do create_outbox_db "$db"; done
COMMIT_INTERVAL_MS=50 write_config "$WORK/outboxd.yaml" "${DBS[@]}"
prepare_sources "$WORK/outboxd.yaml"

pids=()
for db in "${DBS[@]}"; do
    start_writers "$db" 2 1500 200 # ~15 s of writes at 200 txn/s per database
    pids+=("$WRITER_PID")
done
kills=0
for i in $(seq 1 6); do
    start_relay "$WORK/outboxd.yaml" "relay$i"
    wait_streaming "$WORK/relay$i.log" "${#DBS[@]}" 120
    delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.3 + (r % 2000) / 1000 }')
    sleep "$delay"
    kill -9 "$RELAY_PID" || fail "relay $i had exited before its SIGKILL"
    rc=0
    wait "$RELAY_PID" 2>/dev/null || rc=$?
    [ "$rc" -eq 137 ] || fail "relay $i exited with status $rc, not by SIGKILL (137)"
    kills=$((kills + 1))
    log "SIGKILL #$kills, ${delay}s after the relay started streaming"
done
start_relay "$WORK/outboxd.yaml" relay-final
relay=$RELAY_PID
wait_writers "${pids[@]}"
for db in "${DBS[@]}"; do wait_drained "$db" "${db}_${RUN_ID}"; done

: >"$WORK/expected.tsv"
for db in "${DBS[@]}"; do expected_events "$db" "$WORK/expected.tsv"; done
assert_rows_written "$WORK/expected.tsv" "${DBS[@]}"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed after $kills SIGKILLs"
log "relay killed $kills times"
stop_relay_ok "$relay"
# The kills interrupted real work: every source of the final relay resumed
# from a checkpoint that the killed relays had committed.
resumed=$(grep -c "last checkpoint commit [0-9A-F]" "$WORK/relay-final.log" || true)
[ "${resumed:-0}" -eq "${#DBS[@]}" ] ||
    fail "the final relay resumed from a checkpoint for ${resumed:-0} of ${#DBS[@]} sources"
# What PostgreSQL resent after the last kill and the relay skipped.
sed -n 's/^.*\] \(.*skipped as already published.*\)$/    \1/p' "$WORK/relay-final.log" >&2
for db in "${DBS[@]}"; do drop_source "$db" "${db}_${RUN_ID}"; done
log "PASS"

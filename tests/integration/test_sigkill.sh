#!/usr/bin/env bash
# Exactly-once across crashes: the relay is killed with SIGKILL at random
# moments (6 times) while two databases are being written; after a final
# clean run every event is in Kafka exactly once and in order per key.
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
    sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 0.8 + (r % 2000) / 1000 }')"
    kill -9 "$RELAY_PID"
    wait "$RELAY_PID" 2>/dev/null || true
    kills=$((kills + 1))
    log "SIGKILL #$kills"
done
start_relay "$WORK/outboxd.yaml" relay-final
relay=$RELAY_PID
wait_writers "${pids[@]}"
for db in "${DBS[@]}"; do wait_drained "$db" "${db}_${RUN_ID}"; done

: >"$WORK/expected.tsv"
for db in "${DBS[@]}"; do expected_events "$db" "$WORK/expected.tsv"; done
log "rows written: $(wc -l <"$WORK/expected.tsv"), relay killed $kills times"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed after $kills SIGKILLs"
stop_relay_ok "$relay"
# Evidence that restarts re-read changes PostgreSQL resent and skipped them.
grep -h "skipped as already published" "$WORK"/relay*.log | sed 's/^.*\] //' | sort | uniq | tail -n 4 >&2 || true
for db in "${DBS[@]}"; do drop_source "$db" "${db}_${RUN_ID}"; done
log "PASS"

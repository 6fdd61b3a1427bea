#!/usr/bin/env bash
# ctest: serial -- asserts the relay's peak RSS
# A 1,000,000-row PostgreSQL transaction flows through with bounded memory:
# it is split into Kafka transactions of max_batch_events, each with a
# checkpoint that records how many of its changes are published. Prints the
# relay's peak RSS and fails above 256 MB. The relay is also SIGKILLed once
# in the middle, so the resume-inside-a-transaction path is exercised.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

ROWS=${HUGE_ROWS:-1000000}
DB=hpay_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

log "writing $ROWS rows in one transaction"
psql_db "$DB" -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
    SELECT '$DB', '$DB-' || (i % 100), 'Bulk', jsonb_build_object('seq', i, 'pad', repeat('p', 100))
    FROM generate_series(1, $ROWS) AS i"
RELAY_LOG_LEVEL=debug write_config "$WORK/debug.yaml" "$DB"
start_relay "$WORK/debug.yaml" relay1
first=$RELAY_PID
# Kill it once part of the transaction is committed in Kafka (a checkpoint
# with a change count), so the restart resumes inside the transaction.
for _ in $(seq 1 1200); do
    grep -q "checkpoint .* changes [1-9]" "$WORK/relay1.log" 2>/dev/null && break
    sleep 0.1
done
grep -q "checkpoint .* changes [1-9]" "$WORK/relay1.log" || fail "no partial checkpoint within 120 s"
sleep 1
kill -9 "$first"
wait "$first" 2>/dev/null || true
log "relay SIGKILLed mid-transaction; restarting"
start_relay "$WORK/outboxd.yaml" relay2
relay=$RELAY_PID
peak=0
t0=$(date +%s)
target=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
while :; do
    rss=$(peak_rss_kb "$relay")
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    done_=$(psql_db "$DB" -c "SELECT coalesce(confirmed_flush_lsn >= '$target', false) FROM pg_replication_slots WHERE slot_name = '${DB}_${RUN_ID}'")
    [ "$done_" = "t" ] && break
    [ $(($(date +%s) - t0)) -lt 900 ] || fail "not drained in 900 s"
    sleep 0.5
done
rss=$(peak_rss_kb "$relay")
[ "${rss:-0}" -gt "$peak" ] && peak=$rss
log "drained $ROWS rows in $(($(date +%s) - t0)) s after restart; relay peak RSS ${peak} kB ($((peak / 1024)) MB)"
grep -h "streaming slot" "$WORK/relay2.log" | sed 's/^.*\] //' >&2
grep -q "(partial)" "$WORK/relay2.log" || fail "restart did not resume from a partial checkpoint"
echo "huge_txn_rows=$ROWS peak_rss_kb=$peak" >&2

: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
IDLE_MS=8000 check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed for the huge transaction"
stop_relay_ok "$relay"
if [ "${OUTBOXD_SANITIZE:-0}" = 1 ]; then
    # ASan's shadow memory and quarantine inflate RSS; the bound is checked
    # in the normal build.
    log "sanitizer build: RSS bound not checked (${peak} kB)"
else
    [ "$peak" -lt $((256 * 1024)) ] || fail "peak RSS ${peak} kB is over 256 MB"
fi
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

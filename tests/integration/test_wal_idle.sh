#!/usr/bin/env bash
# ctest: lock kafka_proxy -- its broker outage is the shared broker's proxied listener cut
# WAL safety.
#  1. An idle outbox on a busy database does not pin WAL: for 20 s only a
#     table outside the publication is written; the slot's
#     confirmed_flush_lsn keeps advancing (sampled every second) and its
#     restart_lsn moves past a CHECKPOINT taken midway.
#  2. `outboxd status` reports the slot (active, confirmed LSN, lag), the
#     relay's state and lag seconds, and the last checkpoint in Kafka once an
#     event was published.
#  3. relay.max_slot_lag_bytes: with the broker unreachable (the relay
#     reaches Kafka through a Toxiproxy, faults.sh, and the proxy is
#     disabled: connections closed, new ones refused), an outbox
#     transaction larger than the limit raises the WARN line and the
#     slot_lag_exceeded metric, /healthz stays 200 (the loop still turns);
#     once the broker is reachable again, the lag drains, the relay says so, and every
#     event is in Kafka once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/prom.sh"
source "$here/faults.sh"
prom_venv

DB=wal_$RUN_ID
SLOT=${DB}_${RUN_ID}
create_outbox_db "$DB"
psql_db "$DB" -c "CREATE TABLE busy (id bigserial PRIMARY KEY, pad text)" >/dev/null
KAFKA_BOOTSTRAP=$KAFKA_VIA_PROXY write_config "$WORK/outboxd.yaml" "$DB"
PORT=$(free_port)
printf 'metrics:\n  listen: "127.0.0.1:%s"\n' "$PORT" >>"$WORK/outboxd.yaml"
sed -i 's/^relay:$/relay:\n  max_slot_lag_bytes: 65536/' "$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
for _ in $(seq 1 600); do
    [ "$(http_get "http://127.0.0.1:$PORT/readyz")" = 200 ] && break
    sleep 0.1
done
[ "$(http_get "http://127.0.0.1:$PORT/readyz")" = 200 ] || fail "relay never ready"

slot_col() { psql_db "$DB" -c "SELECT $1 FROM pg_replication_slots WHERE slot_name = '$SLOT'"; }

# --- 1. busy database, idle outbox ------------------------------------------
(for i in $(seq 1 100); do
    echo "INSERT INTO busy (pad) SELECT repeat('x', 200) FROM generate_series(1, 200);"
    echo "SELECT pg_sleep(0.2);"
done | psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >"$WORK/busy.log" 2>&1) &
busy=$!
BG_PIDS+=("$busy")
restart0=$(slot_col "restart_lsn - '0/0'")
prev=$(slot_col "confirmed_flush_lsn - '0/0'")
advances=0 samples=0 checkpointed=""
while kill -0 "$busy" 2>/dev/null; do
    sleep 1
    cur=$(slot_col "confirmed_flush_lsn - '0/0'")
    samples=$((samples + 1))
    [ "$cur" -gt "$prev" ] && advances=$((advances + 1))
    [ "$cur" -lt "$prev" ] && fail "confirmed_flush_lsn went back from $prev to $cur"
    prev=$cur
    if [ $samples -eq 8 ]; then
        psql_db "$DB" -c "CHECKPOINT" >/dev/null
        checkpointed=1
    fi
done
wait "$busy" || fail "busy writer failed: $(tail -n 3 "$WORK/busy.log")"
[ -n "$checkpointed" ] || fail "the busy phase ended before the checkpoint (too fast to test)"
wait_drained "$DB" "$SLOT" 120 # confirmed reaches the WAL written by the busy table alone
restart1=$(slot_col "restart_lsn - '0/0'")
retained=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn() - restart_lsn FROM pg_replication_slots WHERE slot_name = '$SLOT'")
wal_written=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn() - '0/0'")
log "busy phase: $samples one-second samples, confirmed_flush_lsn advanced in $advances; restart_lsn $restart0 -> $restart1; WAL retained now $retained bytes"
[ "$advances" -ge $((samples / 2)) ] ||
    fail "confirmed_flush_lsn advanced in only $advances of $samples seconds"
[ "$restart1" -gt "$restart0" ] || fail "restart_lsn did not move ($restart0): the slot pins WAL"

# --- 2. status --------------------------------------------------------------
"$OUTBOXD_BIN" status -c "$WORK/outboxd.yaml" >"$WORK/status1.txt" 2>&1 ||
    fail "status failed: $(cat "$WORK/status1.txt")"
cat "$WORK/status1.txt" >&2
grep -q "^source $DB$" "$WORK/status1.txt" || fail "status: no source line"
grep -q "^  active:           yes" "$WORK/status1.txt" || fail "status: slot not active"
grep -q "^  relay_state:      streaming" "$WORK/status1.txt" || fail "status: relay state"
grep -q "^  last_checkpoint:  none" "$WORK/status1.txt" || fail "status: a checkpoint before any event"
grep -Eq "^  lag_seconds:      0\.000" "$WORK/status1.txt" || fail "status: lag seconds"
status_lsn=$(awk '/^  confirmed_lsn:/ {print $2}' "$WORK/status1.txt")
[ -n "$status_lsn" ] || fail "status: no confirmed LSN"

psql_db "$DB" -c "SELECT write_events('w', 'k1', 3)" >/dev/null
wait_drained "$DB" "$SLOT"
"$OUTBOXD_BIN" status -c "$WORK/outboxd.yaml" >"$WORK/status2.txt" 2>&1 ||
    fail "status failed: $(cat "$WORK/status2.txt")"
grep -Eq "^  last_checkpoint:  commit [0-9A-F]+/[0-9A-F]+ end [0-9A-F]+/[0-9A-F]+, written" \
    "$WORK/status2.txt" || fail "status: no checkpoint after publishing: $(cat "$WORK/status2.txt")"
grep "last_checkpoint" "$WORK/status2.txt" >&2

# --- 3. max_slot_lag_bytes ----------------------------------------------------
log "cutting the relay's link to the broker"
toxi disable kafka
psql_db "$DB" -c "SELECT write_events('w', 'k2', 2000)" >/dev/null # ~1 MB of WAL
warned=""
for _ in $(seq 1 120); do
    grep -q "is over relay.max_slot_lag_bytes 65536" "$WORK/relay.log" && { warned=1; break; }
    sleep 0.5
done
[ -n "$warned" ] || fail "no max_slot_lag_bytes warning"
scrape "$PORT" "$WORK/m.lag"
exceeded=$(sample "$WORK/m.lag" outboxd_source_slot_lag_exceeded "source=\"$DB\"")
lagb=$(sample "$WORK/m.lag" outboxd_source_lag_bytes "source=\"$DB\"")
health=$(http_get "http://127.0.0.1:$PORT/healthz" "$WORK/health.txt")
log "broker down: lag_bytes=$lagb slot_lag_exceeded=$exceeded healthz=$health"
[ "${exceeded%.*}" = 1 ] || fail "slot_lag_exceeded is $exceeded"
[ "$health" = 200 ] || fail "/healthz $health during a broker outage: $(cat "$WORK/health.txt")"
# status names the broker problem and exits 1.
rc=0
"$OUTBOXD_BIN" status -c "$WORK/outboxd.yaml" >"$WORK/status3.txt" 2>&1 || rc=$?
[ $rc = 1 ] || fail "status exit $rc with the broker down"
grep -q "^kafka: " "$WORK/status3.txt" || fail "status does not name Kafka: $(cat "$WORK/status3.txt")"
log "restoring the relay's link to the broker"
toxi enable kafka
wait_drained "$DB" "$SLOT" 300
for _ in $(seq 1 60); do
    grep -q "is back under relay.max_slot_lag_bytes" "$WORK/relay.log" && break
    sleep 0.5
done
grep -q "is back under relay.max_slot_lag_bytes" "$WORK/relay.log" || fail "no 'back under' line"

expected_events "$DB" "$WORK/expected.tsv"
[ "$(wc -l <"$WORK/expected.tsv")" = 2003 ] || fail "expected 2003 rows"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"
stop_relay_ok "$relay"
drop_source "$DB" "$SLOT"
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# sources[].heartbeat_interval_ms on a database nobody writes: every 500 ms
# the relay writes a transactional logical message, PostgreSQL decodes it
# for the slot (pg_stat_replication_slots.total_txns grows), the relay
# publishes nothing for it (no event, no Kafka transaction, no checkpoint)
# and confirms past it (confirmed_flush_lsn reaches the WAL position taken
# after the heartbeats). heartbeats_total counts them. Without the key, no
# heartbeat is written.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/prom.sh"
prom_venv

DB=hb_$RUN_ID
SLOT=${DB}_${RUN_ID}
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
PORT=$(free_port)
printf 'metrics:\n  listen: "127.0.0.1:%s"\n' "$PORT" >>"$WORK/outboxd.yaml"
cp "$WORK/outboxd.yaml" "$WORK/plain.yaml"
sed -i "s/^    slot: \"$SLOT\"$/    slot: \"$SLOT\"\n    heartbeat_interval_ms: 500/" "$WORK/outboxd.yaml"
grep -q "heartbeat_interval_ms: 500" "$WORK/outboxd.yaml" || fail "config edit failed"
prepare_sources "$WORK/outboxd.yaml"

txns() { psql_db "$DB" -c "SELECT coalesce((SELECT total_txns FROM pg_stat_replication_slots WHERE slot_name = '$SLOT'), 0)"; }
wait_ready() {
    for _ in $(seq 1 600); do
        [ "$(http_get "http://127.0.0.1:$PORT/readyz")" = 200 ] && return 0
        sleep 0.1
    done
    fail "relay never ready"
}

# Without heartbeat_interval_ms: nothing is written.
start_relay "$WORK/plain.yaml" relay-plain
wait_ready
sleep 3
scrape "$PORT" "$WORK/m.plain"
[ "$(sample "$WORK/m.plain" outboxd_source_heartbeats_total "source=\"$DB\"")" = 0 ] ||
    fail "heartbeats written without heartbeat_interval_ms"
stop_relay_ok "$RELAY_PID"

t0=$(txns)
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
wait_ready
sleep 6
target=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
wait_drained "$DB" "$SLOT" 60
t1=$(txns)
scrape "$PORT" "$WORK/m"
beats=$(sample "$WORK/m" outboxd_source_heartbeats_total "source=\"$DB\"")
events=$(sample "$WORK/m" outboxd_source_events_published_total "source=\"$DB\"")
commits=$(sample "$WORK/m" outboxd_source_kafka_transactions_total "outcome=\"committed\",source=\"$DB\"")
log "heartbeats_total=$beats decoded transactions $t0 -> $t1, events=$events kafka_commits=$commits, confirmed past $target"
[ "${beats%.*}" -ge 8 ] || fail "only $beats heartbeats in 6 s at 500 ms"
[ $((t1 - t0)) -ge 8 ] || fail "the slot decoded only $((t1 - t0)) transactions"
[ "${events%.*}" = 0 ] || fail "heartbeats were published as events"
[ "${commits%.*}" = 0 ] || fail "Kafka transactions for heartbeats: $commits"
"$OUTBOXD_BIN" status -c "$WORK/outboxd.yaml" >"$WORK/status.txt" 2>&1 || fail "status: $(cat "$WORK/status.txt")"
grep -q "last_checkpoint:  none" "$WORK/status.txt" || fail "a checkpoint was written for heartbeats"
if grep -q '"WARN\|WARN ' "$WORK/relay.log"; then fail "warnings: $(grep WARN "$WORK/relay.log")"; fi
stop_relay_ok "$relay"

# Who may write heartbeats: a plain role without REPLICATION or superuser.
psql_db postgres -c "DROP ROLE IF EXISTS hb_plain_$RUN_ID; CREATE ROLE hb_plain_$RUN_ID LOGIN" >/dev/null
if psql -X -q -At -U "hb_plain_$RUN_ID" -d "$DB" \
    -c "SELECT pg_logical_emit_message(true, 'outboxd.heartbeat', '')" >"$WORK/plain.out" 2>&1; then
    log "a plain role may call pg_logical_emit_message"
else
    log "a plain role may not call pg_logical_emit_message: $(cat "$WORK/plain.out")"
fi
psql_db postgres -c "DROP ROLE IF EXISTS hb_plain_$RUN_ID" >/dev/null
drop_source "$DB" "$SLOT"
log "PASS"

#!/usr/bin/env bash
# ctest: serial -- the shared broker's proxied listener; waits out transaction.timeout.ms
# Fault matrix: the relay's connections to the broker go half-open (the proxy
# keeps them open but drops every byte both ways, no RST, and accepts new
# connections that go equally silent) for longer than the producer's
# transaction.timeout.ms (10 s here), so the broker aborts the open
# transaction on its own. Rows are written throughout. When the path heals
# the relay must find out (request timeouts, fenced epoch), rewind to its
# last committed checkpoint and carry on: every event exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=fko_$RUN_ID
TXN_TIMEOUT_MS=10000
create_outbox_db "$DB"
write_proxied_config "$WORK/outboxd.yaml" "$DB"
config_kafka_properties "$WORK/outboxd.yaml" "transaction.timeout.ms=$TXN_TIMEOUT_MS"
prepare_sources "$WORK/outboxd.yaml"

lsn0=$(slot_lsn "$DB" "${DB}_${RUN_ID}")
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
start_fixed_writers "$DB" 2 600 2 40 # 2,400 rows over ~30 s
writer=$WRITER_PID
wait_publishing "$DB" "${DB}_${RUN_ID}" "$lsn0"
sleep 3
hold_s=$((TXN_TIMEOUT_MS / 1000 + 5))
log "relay -> broker half-open (data dropped both ways, no RST) for $hold_s s"
toxi toxic kafka timeout upstream timeout=0
toxi toxic kafka timeout downstream timeout=0
lsn_cut=$(psql_db "$DB" -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '${DB}_${RUN_ID}'")
sleep "$hold_s"
kill -0 "$relay" || fail "relay died while the broker was unreachable"
toxi untoxic kafka timeout_upstream
toxi untoxic kafka timeout_downstream
log "relay -> broker healed"
wait_writers "$writer"
RELAY_WATCH=$relay finish_case "$DB"
stop_relay_ok "$relay"
log_grep "$WORK/relay.log" "(ERROR|WARN).*(timed out|Timed out|timeout|expired)" "the relay's requests timed out"
drop_case "$DB" "${DB}_${RUN_ID}"
log "PASS"

#!/usr/bin/env bash
# ctest: lock kafka_proxy -- the shared broker's proxied listener (one address)
# Fault matrix: the relay's replication connection goes silent (the proxy
# drops every byte both ways, no RST) for longer than the server's
# wal_sender_timeout (5 s here, asked for by the relay's connections, so
# other tests' walsenders keep the server's setting),
# so the server ends the walsender while the relay still holds an open Kafka
# transaction. When the path heals the relay reconnects, rewinds to its last
# committed checkpoint, skips what PostgreSQL resends and carries on; rows
# are written throughout (directly, not through the proxy): every event
# exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=fpc_$RUN_ID
create_outbox_db "$DB"
write_proxied_config "$WORK/outboxd.yaml" "$DB"
dsn_wal_sender_timeout "$WORK/outboxd.yaml" 5s
prepare_sources "$WORK/outboxd.yaml"
pg_log_off=$(stat -c %s "$STACK_DIR/pg.log")

lsn0=$(slot_lsn "$DB" "${DB}_${RUN_ID}")
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
start_fixed_writers "$DB" 2 600 2 40 # 2,400 rows over ~30 s
writer=$WRITER_PID
wait_publishing "$DB" "${DB}_${RUN_ID}" "$lsn0"
sleep 3
log "relay -> PostgreSQL silent (data dropped both ways) for 12 s, wal_sender_timeout 5 s"
toxi toxic pg timeout upstream timeout=0
toxi toxic pg timeout downstream timeout=0
wait_until 60 "the server to end the relay's walsender (wal_sender_timeout)" \
    pg_log_has "$pg_log_off" "@$DB LOG: +terminating walsender process due to replication timeout"
sleep 7
kill -0 "$relay" || fail "relay died while PostgreSQL was unreachable"
toxi untoxic pg timeout_upstream
toxi untoxic pg timeout_downstream
log "relay -> PostgreSQL healed"
wait_writers "$writer"
RELAY_WATCH=$relay finish_case "$DB"
stop_relay_ok "$relay"
log_grep "$WORK/relay.log" "(ERROR|WARN).*(replication|stream|connection|server)" "the relay lost its replication connection"
log_grep "$WORK/relay.log" "streaming slot.*last checkpoint commit [0-9A-F]+/" "the relay reconnected from its checkpoint"
drop_case "$DB" "${DB}_${RUN_ID}"
log "PASS"

#!/usr/bin/env bash
# ctest: lock kafka_proxy -- the shared broker's proxied listener (one address)
# Fault matrix: the relay's replication connection turns half-open (the proxy
# drops every byte both ways and keeps both connections open: no FIN, no RST)
# while the server's own wal_sender_timeout is long (20 s here, asked for by
# the relay's connections, so other tests keep the server's). Nothing tells
# the relay: its socket just stays silent, as behind a firewall that dropped
# the flow or after a failover moved the address. Wanted: the relay asks the
# server for a reply after half of relay.wal_receiver_timeout_ms (4 s here),
# gives the connection up when no answer comes, long before the server's
# timeout, says so, and once the path heals reconnects from its checkpoint;
# rows are written throughout (directly, not through the proxy): every event
# exactly once. Before the check existed the relay sat on the dead socket
# until the path healed (or TCP gave up, about 15 minutes).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=fph_$RUN_ID
create_outbox_db "$DB"
write_proxied_config "$WORK/outboxd.yaml" "$DB"
config_relay_keys "$WORK/outboxd.yaml" "wal_receiver_timeout_ms: ${HALFOPEN_RECEIVER_TIMEOUT_MS:-4000}"
dsn_wal_sender_timeout "$WORK/outboxd.yaml" 20s
prepare_sources "$WORK/outboxd.yaml"
pg_log_off=$(stat -c %s "$STACK_DIR/pg.log")

lsn0=$(slot_lsn "$DB" "${DB}_${RUN_ID}")
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
start_fixed_writers "$DB" 2 600 2 40 # 2,400 rows over ~30 s
writer=$WRITER_PID
wait_publishing "$DB" "${DB}_${RUN_ID}" "$lsn0"
sleep 2
log "relay -> PostgreSQL half-open (data dropped both ways, connections kept open)"
toxi toxic pg timeout upstream timeout=0
toxi toxic pg timeout downstream timeout=0
t0=$(date +%s)
wait_until 15 "the relay to give up the silent replication connection" \
    grep -q "connection is presumed dead" "$WORK/relay.log"
log "the relay gave the connection up after $(($(date +%s) - t0)) s"
! pg_log_has "$pg_log_off" "@$DB LOG: +terminating walsender process due to replication timeout" ||
    fail "the server's wal_sender_timeout ended the walsender first: the relay's own check did not act"
kill -0 "$relay" || fail "relay died while PostgreSQL was unreachable"
sleep 2
toxi untoxic pg timeout_upstream
toxi untoxic pg timeout_downstream
log "relay -> PostgreSQL healed"
wait_writers "$writer"
RELAY_WATCH=$relay finish_case "$DB"
stop_relay_ok "$relay"
log_grep "$WORK/relay.log" "streaming slot.*last checkpoint commit [0-9A-F]+/" "the relay reconnected from its checkpoint"
drop_case "$DB" "${DB}_${RUN_ID}"
log "PASS"

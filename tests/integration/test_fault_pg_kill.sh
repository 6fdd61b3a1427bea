#!/usr/bin/env bash
# ctest: serial -- SIGKILLs the shared PostgreSQL
# Fault matrix: the PostgreSQL postmaster is killed with SIGKILL while the
# relay streams (no shutdown checkpoint: the slot falls back to its last
# persisted position and the server resends), then started again. Rows are
# written throughout by a writer that retries across the outage and never
# writes a transaction twice: every event exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=fpk_$RUN_ID
create_outbox_db "$DB"
write_proxied_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

lsn0=$(slot_lsn "$DB" "${DB}_${RUN_ID}")
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
start_resilient_writer "$DB" 300 4 20 # 1,200 rows over ~20 s
writer=$WRITER_PID
wait_publishing "$DB" "${DB}_${RUN_ID}" "$lsn0"
sleep 3
pgpid=$(head -n 1 "$PGDATA/postmaster.pid")
log "SIGKILL to the postmaster (pid $pgpid)"
kill -KILL "$pgpid"
wait_until 30 "the postmaster (pid $pgpid) to die" bash -c "! kill -0 $pgpid 2>/dev/null || grep -q '^[^)]*) Z' /proc/$pgpid/stat"
sleep 3
kill -0 "$relay" || fail "relay died while PostgreSQL was down"
"$STACK_SH" start-pg >&2
wait "$writer" || fail "writer failed: $(tail -n 3 "$WORK/writer-$DB-$DB.log")"
RELAY_WATCH=$relay finish_case "$DB"
stop_relay_ok "$relay"
log_grep "$WORK/relay.log" "(ERROR|WARN).*(connection|server|terminat)" "the relay lost PostgreSQL"
log_grep "$WORK/relay.log" "streaming slot.*last checkpoint commit [0-9A-F]+/" "the relay reconnected from its checkpoint"
drop_case "$DB" "${DB}_${RUN_ID}"
log "PASS"

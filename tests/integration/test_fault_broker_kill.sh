#!/usr/bin/env bash
# ctest: serial -- SIGKILLs the shared broker
# Fault matrix: the Kafka broker is killed with SIGKILL (no clean shutdown,
# no controlled leader move) in the middle of the stream, stays down 5 s and
# is started again on the same ports and data; the relay's open transaction
# is lost with it. Rows are written throughout: every event exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=fbk_$RUN_ID
create_outbox_db "$DB"
write_proxied_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

lsn0=$(slot_lsn "$DB" "${DB}_${RUN_ID}")
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
start_fixed_writers "$DB" 2 500 2 40 # 2,000 rows over ~25 s
writer=$WRITER_PID
wait_publishing "$DB" "${DB}_${RUN_ID}" "$lsn0"
sleep 3
kpid=$(cat "$STACK_DIR/kafka.pid")
log "SIGKILL to the broker (pid $kpid)"
kill -KILL "$kpid"
wait_until 30 "the broker (pid $kpid) to die" bash -c "! kill -0 $kpid 2>/dev/null || grep -q '^[^)]*) Z' /proc/$kpid/stat"
sleep 5
kill -0 "$relay" || fail "relay died while the broker was down"
"$STACK_SH" start-kafka >&2
[ "$(cat "$STACK_DIR/kafka.pid")" != "$kpid" ] || fail "the broker was not restarted"
wait_writers "$writer"
RELAY_WATCH=$relay finish_case "$DB"
stop_relay_ok "$relay"
log_grep "$WORK/relay.log" "(ERROR|WARN).*(Connection refused|Disconnected|disconnect|brokers are down|transport|timed out|Timed out|retrying commit)" "the relay lost the broker"
drop_case "$DB" "${DB}_${RUN_ID}"
log "PASS"

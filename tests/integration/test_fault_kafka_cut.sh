#!/usr/bin/env bash
# ctest: lock kafka_proxy -- cuts the shared broker's proxied listener (one address)
# Fault matrix: the relay's connections to the broker are cut for 30 s in the
# middle of the stream (the proxy closes them and refuses new ones) while
# rows are written throughout. The relay aborts or retries, rewinds to its
# last committed checkpoint and resumes when the broker is reachable again:
# every event exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=fkc_$RUN_ID
create_outbox_db "$DB"
write_proxied_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

lsn0=$(slot_lsn "$DB" "${DB}_${RUN_ID}")
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
start_fixed_writers "$DB" 2 800 2 40 # 3,200 rows over ~40 s
writer=$WRITER_PID
wait_publishing "$DB" "${DB}_${RUN_ID}" "$lsn0"
sleep 3
log "cutting relay -> broker for ${CUT_S:=30} s"
toxi disable kafka
sleep "$CUT_S"
kill -0 "$relay" || fail "relay died during the cut"
toxi enable kafka
log "relay -> broker restored"
wait_writers "$writer"
RELAY_WATCH=$relay finish_case "$DB"
stop_relay_ok "$relay"
log_grep "$WORK/relay.log" "(ERROR|WARN).*(Kafka|kafka|broker|transaction|Broker|Local:)" "the relay saw the broker cut"
drop_case "$DB" "${DB}_${RUN_ID}"
log "PASS"

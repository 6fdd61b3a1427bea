#!/usr/bin/env bash
# ctest: lock kafka_proxy -- cuts the shared broker's proxied listener (one address)
# Fault matrix: the relay's connections to the broker are cut for 30 s in the
# middle of the stream (the proxy closes them and refuses new ones) while
# rows are written throughout. 3 s into the cut the relay is SIGKILLed and a
# new one started, which cannot reach Kafka at all until the cut ends. It
# retries, and resumes from the last committed checkpoint when the broker
# is reachable again: every event exactly once. Meanwhile its /metrics and
# log show the slot's lag growing (relay.max_slot_lag_bytes WARN), though it
# has never streamed: the lag is read from the server at each attempt.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=fkc_$RUN_ID
create_outbox_db "$DB"
write_proxied_config "$WORK/outboxd.yaml" "$DB"
# The slot's lag stays visible while no stream runs: the writers add about
# 5 to 10 kB of WAL a second, so a 30 s cut passes 32 kB (before, a relay that
# had not streamed yet showed lag_bytes 0 through the whole outage).
config_relay_keys "$WORK/outboxd.yaml" "max_slot_lag_bytes: 32768"
prepare_sources "$WORK/outboxd.yaml"

lsn0=$(slot_lsn "$DB" "${DB}_${RUN_ID}")
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
start_fixed_writers "$DB" 2 800 2 40 # 3,200 rows over ~40 s
writer=$WRITER_PID
wait_publishing "$DB" "${DB}_${RUN_ID}" "$lsn0"
sleep 3
over='slot lag [0-9]+ bytes is over relay.max_slot_lag_bytes'
log "cutting relay -> broker for ${CUT_S:=30} s"
toxi disable kafka
sleep 3
kill -9 "$relay" || fail "relay died during the cut"
wait "$relay" 2>/dev/null || true
start_relay "$WORK/outboxd.yaml" relay2
relay=$RELAY_PID
log "relay SIGKILLed 3 s into the cut; a new one started"
sleep $((CUT_S - 3))
kill -0 "$relay" || fail "the second relay died during the cut"
warned_during=$(grep -cE "$over" "$WORK/relay2.log" || true)
toxi enable kafka
log "relay -> broker restored"
[ "$warned_during" -gt 0 ] ||
    fail "no max_slot_lag_bytes WARN from the relay started during the cut: the slot's lag was not seen without a stream ($(curl -fsS "http://127.0.0.1:${METRICS_PORT:-0}/metrics" 2>/dev/null | grep lag_bytes || true))"
wait_writers "$writer"
RELAY_WATCH=$relay finish_case "$DB"
wait_log "$WORK/relay2.log" "slot lag [0-9]+ bytes is back under relay.max_slot_lag_bytes" 60
stop_relay_ok "$relay"
log_grep "$WORK/relay2.log" "(ERROR|WARN).*(Kafka|kafka|broker|transaction|Broker|Local:)" "the relay saw the broker cut"
log "during the cut, from a relay that had not streamed: $(grep -m1 -oE "$over [0-9]+" "$WORK/relay2.log"); after it: back under"
drop_case "$DB" "${DB}_${RUN_ID}"
log "PASS"

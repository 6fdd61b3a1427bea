#!/usr/bin/env bash
# ctest: serial -- the shared broker's proxied listener; SIGSTOP timed against transaction.timeout.ms
# Fault matrix: a relay frozen with SIGSTOP (a paused VM, a stuck node) while
# it holds an open Kafka transaction, past transaction.timeout.ms (10 s) and
# past wal_sender_timeout (5 s, so the server frees the slot). A second relay
# with the same configuration takes over: it gets the slot, its
# init_transactions fences the frozen one, and it publishes everything from
# the last committed checkpoint. The frozen relay is then resumed (SIGCONT):
# it must be fenced and exit non-zero without publishing anything more.
# Rows are written throughout: every event exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=fzm_$RUN_ID
TXN_TIMEOUT_MS=10000
create_outbox_db "$DB"
write_proxied_config "$WORK/relayA.yaml" "$DB"
config_kafka_properties "$WORK/relayA.yaml" "transaction.timeout.ms=$TXN_TIMEOUT_MS"
write_config "$WORK/relayB.yaml" "$DB" # same slot and transactional ids, direct links
config_kafka_properties "$WORK/relayB.yaml" "transaction.timeout.ms=$TXN_TIMEOUT_MS"
config_relay_keys "$WORK/relayB.yaml" "reconnect_max_backoff_ms: 2000"
prepare_sources "$WORK/relayA.yaml"
set_wal_sender_timeout 5s

lsn0=$(slot_lsn "$DB" "${DB}_${RUN_ID}")
start_relay "$WORK/relayA.yaml" relayA
a=$RELAY_PID
start_fixed_writers "$DB" 2 800 2 40 # 3,200 rows over ~40 s
writer=$WRITER_PID
wait_publishing "$DB" "${DB}_${RUN_ID}" "$lsn0"
sleep 2
# Stall A's broker link so that its current transaction cannot complete and
# keeps collecting rows, then freeze A in that state.
toxi toxic kafka timeout upstream timeout=0
toxi toxic kafka timeout downstream timeout=0
sleep 2
kill -STOP "$a"
STOPPED_PIDS+=("$a")
frozen_at=$(date +%s)
log "relay A (pid $a) frozen with SIGSTOP inside an open Kafka transaction"
toxi untoxic kafka timeout_upstream
toxi untoxic kafka timeout_downstream

start_relay "$WORK/relayB.yaml" relayB
b=$RELAY_PID
wait_until 90 "relay B to take the slot over" grep -q "streaming slot" "$WORK/relayB.log"
log "relay B streams: $(grep -m1 'streaming slot' "$WORK/relayB.log" | sed 's/^.*\] //' | cut -c1-160)"
while [ $(($(date +%s) - frozen_at)) -le $((TXN_TIMEOUT_MS / 1000 + 2)) ]; do sleep 0.5; done
# The frozen relay's broker connections saw dropped bytes: reset them so it
# hears from the broker at once when it wakes up (as after a network blip).
toxi disable kafka
toxi enable kafka
log "resuming relay A with SIGCONT after $(($(date +%s) - frozen_at)) s"
kill -CONT "$a"
rc_a=0
for _ in $(seq 1 900); do kill -0 "$a" 2>/dev/null || break; sleep 0.1; done
kill -0 "$a" 2>/dev/null && fail "the resumed relay A is still running 90 s after SIGCONT (it should be fenced and exit)"
wait "$a" || rc_a=$?
[ "$rc_a" -ne 0 ] || fail "the fenced relay A exited 0"
log "relay A exited with status $rc_a"
log_grep "$WORK/relayA.log" "(ERROR|FATAL).*(fenced|FENCED|INVALID_PRODUCER_EPOCH|newer instance)" "relay A was fenced"
kill -0 "$b" || fail "relay B died"

wait_writers "$writer"
RELAY_WATCH=$b finish_case "$DB"
stop_relay_ok "$b" "relay B"
reset_wal_sender_timeout
drop_case "$DB" "${DB}_${RUN_ID}"
log "PASS"

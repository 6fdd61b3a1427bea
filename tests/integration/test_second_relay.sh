#!/usr/bin/env bash
# A second relay on the same configuration is refused (its source cannot
# take the replication slot the first one holds) and publishes nothing; when
# the first stops, the second takes over from the committed checkpoint
# (init_transactions fences any leftover of the first). Every event exactly
# once throughout.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DB=spay_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

start_relay "$WORK/outboxd.yaml" relayA
a=$RELAY_PID
start_writers "$DB" 2 1500 250
writer=$WRITER_PID
sleep 2
start_relay "$WORK/outboxd.yaml" relayB
b=$RELAY_PID
sleep 4
kill -0 "$b" || fail "second relay exited instead of waiting"
grep -q "holds slot" "$WORK/relayB.log" || fail "second relay did not report the slot in use"
grep -q "streaming slot" "$WORK/relayB.log" && fail "second relay streamed while the first ran"
log "second relay refused: $(grep -m1 'holds slot' "$WORK/relayB.log" | sed 's/^.*\] //')"

stop_relay_ok "$a" "first relay"
wait_writers "$writer"
wait_drained "$DB" "${DB}_${RUN_ID}" 300
grep -q "streaming slot" "$WORK/relayB.log" || fail "second relay never took over"
# Waiting for the slot is normal for a standby instance: one WARN, no ERROR
# per retry, and an INFO once it has the slot.
n=$(grep -c "holds slot" "$WORK/relayB.log" || true)
[ "$n" -eq 1 ] || fail "the wait for the busy slot was logged $n times (want once)"
grep "ERROR" "$WORK/relayB.log" >&2 && fail "the second relay logged errors while waiting"
grep -q "INFO .*acquired replication slot" "$WORK/relayB.log" || fail "taking the slot over was not logged"

: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
assert_rows_written "$WORK/expected.tsv" "$DB"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed across the handover"
stop_relay_ok "$b" "second relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
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
# The writers' topics exist before the first relay starts: otherwise, on a
# loaded broker, its first event can find its topic not yet auto-created,
# and the relay's rewind (relay.missing_topic: wait) closes its stream for a
# moment, in which the second relay finds the slot free and starts as the
# active one; the wait this test is about would then not be seen.
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -t "$RUN_ID.ev.$DB" -t "$RUN_ID.ev.${DB}_audit" --create-topics 3 ||
    fail "cannot create the writers' topics"

start_relay "$WORK/outboxd.yaml" relayA
a=$RELAY_PID
start_writers "$DB" 2 1500 250
writer=$WRITER_PID
# The second relay starts once the first holds the slot (not after a fixed
# pause, which a loaded machine can outlast).
for _ in $(seq 1 600); do
    grep -q "streaming slot" "$WORK/relayA.log" && break
    kill -0 "$a" || fail "first relay exited"
    sleep 0.1
done
grep -q "streaming slot" "$WORK/relayA.log" || fail "first relay not streaming after 60 s"
start_relay "$WORK/outboxd.yaml" relayB
b=$RELAY_PID
for _ in $(seq 1 600); do
    grep -q "holds slot" "$WORK/relayB.log" && break
    kill -0 "$b" || fail "second relay exited instead of waiting"
    sleep 0.1
done
grep -q "holds slot" "$WORK/relayB.log" || fail "second relay did not report the slot in use within 60 s"
# It keeps waiting: still alive after a few of its retries.
sleep 2
kill -0 "$b" || fail "second relay exited instead of waiting"
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

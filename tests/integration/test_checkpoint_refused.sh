#!/usr/bin/env bash
# ctest: parallel
# A checkpoint topic that refuses the relay's checkpoint records (here its
# max.message.bytes is below a checkpoint record's size) cannot be fixed by
# retrying: the relay stops with a clear error naming the topic, instead of
# aborting and rewinding forever.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=ckref_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"
# 96 bytes: below any checkpoint record batch (61 bytes of batch header, the
# source name as key, the JSON value), but not below the 78 bytes of a
# transaction marker. With a smaller limit the broker cannot write the abort
# marker for the relay's transaction (RecordTooLargeException), and Kafka 3.9
# then keeps that transaction in PrepareAbort for good; after a broker
# restart its marker is retried, throws in the coordinator's marker handler
# and strands every other transaction sent in the same WriteTxnMarkers
# request (test_broker_restart hung that way on this shared broker).
"$STACK_SH" topic-create "$RUN_ID.checkpoints" 1 cleanup.policy=compact max.message.bytes=96 >&2

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
psql_db "$DB" -c "SELECT write_events('$DB', 'k-1', 2)" >/dev/null
wait_exit "$relay" 120 || fail "relay still running 120 s after its checkpoint record was refused"
rc=$EXIT_RC
grep "checkpoint" "$WORK/relay.log" | cut -c1-400 >&2
[ "$rc" -eq 1 ] || fail "relay exited $rc, expected 1"
grep -q "ERROR .*Kafka refused the checkpoint record for $RUN_ID.checkpoints: .*the checkpoint topic $RUN_ID.checkpoints is misconfigured" "$WORK/relay.log" ||
    fail "no clear error about the checkpoint topic"
n_rewinds=$(grep -c "rewinding to checkpoint" "$WORK/relay.log" || true)
[ "$n_rewinds" -le 1 ] || fail "$n_rewinds rewinds: the refused checkpoint record was retried"
# Nothing left stuck on the shared broker: the abort's markers were written
# (the coordinator logs a marker it cannot write as a fatal error).
sleep 2
if grep -q "while sending txn marker for outboxd-$RUN_ID\." "$STACK_DIR/kafka.log"; then
    fail "the broker could not write the transaction marker: $(grep -m1 "while sending txn marker for outboxd-$RUN_ID\." "$STACK_DIR/kafka.log")"
fi
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# The checkpoint reader starts at offset 0 (a logical start offset costs a
# lookup that librdkafka retries 500 ms later when the new client does not
# know the leader yet) and relies on auto.offset.reset: earliest when the log
# no longer starts there. Here the checkpoint topic is given a delete policy
# too and its first records are deleted (log start > 0): the next start must
# still read the last checkpoint (not start from the end and find none), and
# every event stays exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=plogst_$RUN_ID
SLOT="${DB}_${RUN_ID}"
TOPIC="$RUN_ID.checkpoints"
create_outbox_db "$DB"
RELAY_LOG_LEVEL=debug write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

# Two runs, so the checkpoint topic holds an older transaction (checkpoint and
# commit marker at offsets 0 and 1) before the last checkpoint.
for batch in k1 k2; do
    psql_db "$DB" -c "SELECT write_events('plog', '$batch', 20)" >/dev/null
    start_relay "$WORK/outboxd.yaml" "relay-$batch"
    wait_drained "$DB" "$SLOT" 300
    stop_relay_ok "$RELAY_PID"
done
last=$(sed -n 's/.*committed [0-9]* events.*, checkpoint \([0-9A-F/]*\) .*/\1/p' "$WORK/relay-k2.log" | tail -n 1)
[ -n "$last" ] || fail "the second run committed nothing (relay-k2.log)"

"$STACK_SH" kafka-run kafka.admin.ConfigCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --alter \
    --entity-type topics --entity-name "$TOPIC" --add-config 'cleanup.policy=[compact,delete]' \
    >"$WORK/config.log" 2>&1 || {
    cat "$WORK/config.log" >&2
    fail "could not add the delete policy to $TOPIC"
}
printf '{"partitions": [{"topic": "%s", "partition": 0, "offset": 2}], "version": 1}\n' "$TOPIC" >"$WORK/delete.json"
"$STACK_SH" kafka-run org.apache.kafka.tools.DeleteRecordsCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
    --offset-json-file "$WORK/delete.json" >"$WORK/delete.log" 2>&1 || {
    cat "$WORK/delete.log" >&2
    fail "could not delete the first records of $TOPIC"
}
grep -q "low_watermark: 2" "$WORK/delete.log" || fail "log start of $TOPIC not moved: $(cat "$WORK/delete.log")"

psql_db "$DB" -c "SELECT write_events('plog', 'k3', 20)" >/dev/null
start_relay "$WORK/outboxd.yaml" relay-k3
wait_drained "$DB" "$SLOT" 300
stop_relay_ok "$RELAY_PID"
grep -q "streaming slot .*last checkpoint commit $last" "$WORK/relay-k3.log" ||
    fail "the start after the deletion did not read the last checkpoint ($last): $(grep -E 'streaming slot|checkpoint records' "$WORK/relay-k3.log")"

expected_events "$DB" "$WORK/expected.tsv"
check_exactly_once "$WORK/expected.tsv" || fail "not exactly once"
log "PASS"

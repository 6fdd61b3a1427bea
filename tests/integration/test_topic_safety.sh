#!/usr/bin/env bash
# ctest: parallel
# A row chooses its topic through the template, but never the relay's own
# checkpoint topic (it once overwrote a source's checkpoint: the next start
# said "last checkpoint commit (none)") or dead-letter topic, and with
# allowed_topics only a matching one; other rows go to the dead-letter topic.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=tsafe_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
# The checkpoint topic is within reach of the template: "$RUN_ID.ev.cp".
sed -i "s/^  checkpoint_topic: .*/  checkpoint_topic: \"$RUN_ID.ev.cp\"/" "$WORK/outboxd.yaml"
sed -i "s/^\(        topic: \"$RUN_ID.ev.\${aggregatetype}\"\)$/\1\n        allowed_topics: '$RUN_ID\\\\.ev\\\\.(ok|cp|other)'/" "$WORK/outboxd.yaml"
[ "$(grep -c "allowed_topics: '$RUN_ID\\\\.ev\\\\.(ok|cp|other)'" "$WORK/outboxd.yaml")" -eq 2 ] || {
    cat "$WORK/outboxd.yaml" >&2
    fail "config edit failed"
}
prepare_sources "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
psql_db "$DB" <<SQL >/dev/null
SELECT write_events('ok', 'k-1', 3);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('cp', '$DB', 'Hijack', '{"commit_lsn": "0/0"}');
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('forbidden', 'k-9', 'Elsewhere', '{}');
SELECT pg_logical_emit_message(true, 'outbox', json_build_object('id', 'm-$RUN_ID', 'aggregatetype', 'cp', 'aggregateid', 'k-m', 'type', 'Hijack', 'payload', json_build_object('a', 1))::text);
SELECT write_events('ok', 'k-1', 3);
SQL
wait_drained "$DB" "${DB}_${RUN_ID}" 120
stop_relay_ok "$relay"

consume_json -t "$RUN_ID.dlt" >"$WORK/dlt.json"
cut -c1-400 "$WORK/dlt.json" >&2
[ "$(wc -l <"$WORK/dlt.json")" -eq 3 ] || fail "expected 3 dead-letter records"
[ "$(grep -c "is the relay's checkpoint topic" "$WORK/dlt.json")" -eq 2 ] || fail "checkpoint-topic rows not dead-lettered with the reason"
grep -q "topic '$RUN_ID.ev.forbidden' made by the template does not match allowed_topics" "$WORK/dlt.json" ||
    fail "allowed_topics not enforced"
# Only the relay's own records are in the checkpoint topic.
consume_json -t "$RUN_ID.ev.cp" >"$WORK/cp.json"
grep -v "\"key\":\"$DB\"" "$WORK/cp.json" | grep . && fail "a foreign record in the checkpoint topic"
grep -q 'Hijack' "$WORK/cp.json" && fail "a row reached the checkpoint topic"
: >"$WORK/expected.tsv"
psql_db "$DB" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM outbox WHERE type = 'Tested'" >>"$WORK/expected.tsv"
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -t "$RUN_ID.ev.ok" --idle-ms 4000 --timeout-ms 600000 \
    --expect "$WORK/expected.tsv" || fail "exactly-once check failed"
grep -q "ERROR .*does not exist" "$WORK/relay.log" && fail "an ERROR was logged (a new topic on an auto-creating broker is not missing)"
# The checkpoint is intact: a restart resumes from it.
start_relay "$WORK/outboxd.yaml" relay2
relay=$RELAY_PID
for _ in $(seq 1 600); do
    grep -q "streaming slot" "$WORK/relay2.log" && break
    sleep 0.1
done
grep "streaming slot" "$WORK/relay2.log" >&2 || fail "relay did not start"
grep -q "last checkpoint commit (none)" "$WORK/relay2.log" && fail "the checkpoint was overwritten"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

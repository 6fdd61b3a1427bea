#!/usr/bin/env bash
# ctest: parallel
# Rows that cannot become events go to the dead-letter topic, with the reason
# and the source position in headers, and the rows after them still arrive.
# Also: pg_logical_emit_message input, and deletes on the outbox ignored.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=dpay_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
sed -i 's/^relay:/relay:\n  max_event_bytes: 4096/' "$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID

psql_db "$DB" <<SQL
SELECT write_events('$DB', '$DB-1', 3);
-- NULL payload, NULL key, oversized payload, in one transaction with good rows
BEGIN;
SELECT write_events('$DB', '$DB-2', 1);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', '$DB-x', 'Broken', NULL);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', NULL, 'NoKey', '{"a":1}');
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', '$DB-y', 'Huge', jsonb_build_object('blob', repeat('z', 20000)));
SELECT write_events('$DB', '$DB-2', 1);
COMMIT;
-- insert-and-delete in one transaction: the insert is the event
BEGIN;
SELECT write_events('$DB', '$DB-3', 2);
DELETE FROM outbox WHERE aggregateid = '$DB-3';
COMMIT;
SELECT write_events('$DB', '$DB-1', 2);
SELECT pg_logical_emit_message(true, 'outbox', json_build_object('id', 'msg-$RUN_ID', 'aggregatetype', '$DB', 'aggregateid', '$DB-m', 'type', 'ViaMessage', 'payload', json_build_object('seq', 1))::text);
SQL
wait_drained "$DB" "${DB}_${RUN_ID}"

# The expected events: good rows (deleted ones included: they were inserted),
# plus the message.
: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
printf 'msg-%s\t%s-m\t%s.ev.%s\t1\n' "$RUN_ID" "$DB" "$RUN_ID" "$DB" >>"$WORK/expected.tsv"
# The two inserted-then-deleted rows are not in the table any more: counted
# separately below.
n_expected=$(( $(psql_db "$DB" -c "SELECT count(*) FROM outbox WHERE type = 'Tested'") + 1 ))
consume_json -T "^$RUN_ID\\.ev\\..*" >"$WORK/events.json"
n_events=$(wc -l <"$WORK/events.json")
log "events: $n_events (good rows still in the table + message: $n_expected, plus 2 deleted rows)"
[ "$n_events" -eq $((n_expected + 2)) ] || fail "expected $((n_expected + 2)) events, got $n_events"
grep -q '"ViaMessage"' "$WORK/events.json" || fail "message input not relayed"
[ "$(grep -c "\"$DB-3\"" "$WORK/events.json")" -ge 2 ] || fail "insert-then-delete rows not relayed"
grep -q 'Broken\|NoKey\|Huge' "$WORK/events.json" && fail "a bad row reached an event topic"

consume_json -t "$RUN_ID.dlt" >"$WORK/dlt.json"
cat "$WORK/dlt.json" >&2
[ "$(wc -l <"$WORK/dlt.json")" -eq 3 ] || fail "expected 3 dead-letter records"
grep -q "payload column 'payload' is NULL" "$WORK/dlt.json" || fail "no NULL-payload reason"
grep -q "key column 'aggregateid' is NULL" "$WORK/dlt.json" || fail "no NULL-key reason"
grep -q "exceeds relay.max_event_bytes" "$WORK/dlt.json" || fail "no oversize reason"
grep -q '"outboxd.lsn"' "$WORK/dlt.json" || fail "no position header"
grep -q "dead-letter topic" "$WORK/relay.log" || fail "dead letters not logged"

stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# A record Kafka refuses for good (here: larger than its topic's
# max.message.bytes, though below relay.max_event_bytes) must not block the
# stream: the transaction aborts, the relay rewinds, the refused change goes
# to the dead-letter topic with the broker's reason, and every other event
# arrives exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=rpay_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"
"$STACK_SH" topic-create "$RUN_ID.ev.tiny" 1 max.message.bytes=2048 >&2

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
psql_db "$DB" -c "SELECT write_events('$DB', '$DB-1', 5)" >/dev/null
psql_db "$DB" <<SQL >/dev/null
BEGIN;
SELECT write_events('$DB', '$DB-2', 2);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
VALUES ('tiny', 'tiny-1', 'TooBigForTheTopic', jsonb_build_object('blob', repeat('b', 5000)));
SELECT write_events('$DB', '$DB-2', 2);
COMMIT;
SQL
psql_db "$DB" -c "SELECT write_events('$DB', '$DB-1', 5)" >/dev/null
wait_drained "$DB" "${DB}_${RUN_ID}" 120

: >"$WORK/expected.tsv"
psql_db "$DB" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM outbox WHERE type = 'Tested'" >>"$WORK/expected.tsv"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed around a refused record"
consume_json -t "$RUN_ID.dlt" >"$WORK/dlt.json"
cut -c1-400 "$WORK/dlt.json" >&2
[ "$(wc -l <"$WORK/dlt.json")" -eq 1 ] || fail "expected 1 dead-letter record"
grep -q "Kafka refused the record for $RUN_ID.ev.tiny" "$WORK/dlt.json" || fail "no broker reason in the dead letter"
grep -q "goes to the dead-letter topic on replay" "$WORK/relay.log" || fail "refusal not logged"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

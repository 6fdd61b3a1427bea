#!/usr/bin/env bash
# ctest: parallel
# One poison row must never stop the relay. With max_event_bytes far above
# what Kafka accepts (5,000,000 against the broker's and librdkafka's ~1 MB),
# a 1.6 MB row is refused by Kafka; its dead-letter record must fit (the row
# JSON cut, with a marker; reason and position kept), the relay keeps
# running and the rows after it arrive. A dead-letter topic that refuses
# even that record gets a small one; one that refuses everything makes the
# source retry with backoff (one ERROR), never exit.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=poison_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
sed -i 's/^relay:/relay:\n  max_event_bytes: 5000000\n  reconnect_max_backoff_ms: 2000/' "$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"

big_row() { # big_row KEY
    psql_db "$DB" -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', '$1', 'Poison', jsonb_build_object('blob', repeat('p', 1600000)))" >/dev/null
}

log "phase 1: default dead-letter topic (1 MB limit)"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
psql_db "$DB" -c "SELECT write_events('$DB', 'k-1', 3)" >/dev/null
big_row poison-1
psql_db "$DB" -c "SELECT write_events('$DB', 'k-1', 3)" >/dev/null
wait_drained "$DB" "${DB}_${RUN_ID}" 180
kill -0 "$relay" 2>/dev/null || fail "relay exited on a poison row"
consume_json -t "$RUN_ID.dlt" >"$WORK/dlt.json"
n=$(wc -l <"$WORK/dlt.json")
size=$(wc -c <"$WORK/dlt.json")
log "dead-letter topic: $n record(s), $size bytes of JSON"
cut -c1-700 "$WORK/dlt.json" >&2
[ "$n" -eq 1 ] || fail "expected 1 dead-letter record, got $n"
grep -q '"key":"poison-1"' "$WORK/dlt.json" || fail "not the poison row"
grep -q '"outboxd.truncated":"row JSON of ' "$WORK/dlt.json" || fail "no outboxd.truncated header"
grep -q 'outboxd: truncated, [0-9]* of [0-9]* bytes kept' "$WORK/dlt.json" || fail "no truncation marker in the value"
grep -q '"outboxd.reason":"Kafka refused the record' "$WORK/dlt.json" || fail "no reason header"
grep -q '"outboxd.lsn":"' "$WORK/dlt.json" || fail "no position header"
[ "$size" -lt 1100000 ] || fail "dead-letter record larger than Kafka's limit"
grep -q "stopping all sources" "$WORK/relay.log" && fail "relay stopped its sources"
stop_relay_ok "$relay" "relay (phase 1)"

log "phase 2: a dead-letter topic limited to 100 kB refuses that record too"
"$STACK_SH" topic-create "$RUN_ID.dlt2" 1 max.message.bytes=100000 >&2
sed -i "s/^  dead_letter_topic: .*/  dead_letter_topic: \"$RUN_ID.dlt2\"/" "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml" relay2
relay=$RELAY_PID
big_row poison-2
psql_db "$DB" -c "SELECT write_events('$DB', 'k-2', 3)" >/dev/null
wait_drained "$DB" "${DB}_${RUN_ID}" 180
kill -0 "$relay" 2>/dev/null || fail "relay exited when its dead-letter record was refused"
consume_json -t "$RUN_ID.dlt2" >"$WORK/dlt2.json"
cut -c1-700 "$WORK/dlt2.json" >&2
[ "$(wc -l <"$WORK/dlt2.json")" -eq 1 ] || fail "expected 1 record in the 100 kB dead-letter topic"
grep -q '"key":"poison-2"' "$WORK/dlt2.json" || fail "not the poison row"
grep -q 'outboxd: truncated' "$WORK/dlt2.json" || fail "no truncation marker"
[ "$(wc -c <"$WORK/dlt2.json")" -lt 8000 ] || fail "the re-sent dead-letter record is not small"
grep -q "was refused too .*sending it again cut to 4096 bytes" "$WORK/relay2.log" || fail "re-send not logged"
stop_relay_ok "$relay" "relay (phase 2)"

log "phase 3: a dead-letter topic that refuses every record"
"$STACK_SH" topic-create "$RUN_ID.dlt3" 1 max.message.bytes=200 >&2
sed -i "s/^  dead_letter_topic: .*/  dead_letter_topic: \"$RUN_ID.dlt3\"/" "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml" relay3
relay=$RELAY_PID
big_row poison-3
# One ERROR, then retries whose backoff grows to the cap; the relay stays up.
for _ in $(seq 1 1800); do
    grep -q "rewound again without progress; reconnecting in 2000 ms" "$WORK/relay3.log" && break
    kill -0 "$relay" 2>/dev/null || fail "relay exited (crash loop) on a refused dead letter"
    sleep 0.1
done
grep -q "rewound again without progress; reconnecting in 2000 ms" "$WORK/relay3.log" ||
    fail "no backoff to the cap while the dead-letter topic refuses"
kill -0 "$relay" 2>/dev/null || fail "relay exited on a refused dead letter"
n_err=$(grep -c "ERROR .*refuses even a 4096-byte record" "$WORK/relay3.log" || true)
[ "$n_err" -eq 1 ] || fail "expected one ERROR about the dead-letter topic, got $n_err"
stop_relay_ok "$relay" "relay (phase 3)"

: >"$WORK/expected.tsv"
psql_db "$DB" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM outbox WHERE type = 'Tested'" >>"$WORK/expected.tsv"
check_exactly_once "$WORK/expected.tsv" || fail "rows after the poison rows did not arrive exactly once"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

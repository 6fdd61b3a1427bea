#!/usr/bin/env bash
# ctest: parallel
# max.message.bytes applies to a whole record batch: with linger.ms > 0 the
# small, valid events of one transaction travel in one batch with a big one,
# and the broker refuses them all together (and still refuses the small ones
# together once the big one is gone, when their batch alone is over the
# limit). Only the record Kafka refuses on its own may be dead-lettered: the
# relay replays the failed transaction one record per request to find it.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=rbat_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
sed -i 's/^  transactional_id_prefix: \(.*\)$/  transactional_id_prefix: \1\n  properties: { linger.ms: 200 }/' "$WORK/outboxd.yaml"
grep -q 'linger.ms: 200' "$WORK/outboxd.yaml" || fail "config edit failed"
prepare_sources "$WORK/outboxd.yaml"
# One partition, so every record of the transaction shares a batch. Each
# event alone (~600 bytes) fits; eight of them together do not.
"$STACK_SH" topic-create "$RUN_ID.ev.small" 1 max.message.bytes=2048 >&2

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
psql_db "$DB" <<SQL >/dev/null
BEGIN;
SELECT write_events('small', 'k-1', 4);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
VALUES ('small', 'big-1', 'TooBigForTheTopic', jsonb_build_object('blob', repeat('b', 5000)));
SELECT write_events('small', 'k-1', 4);
COMMIT;
SQL
# Later transactions are small enough for one batch.
psql_db "$DB" -c "SELECT write_events('small', 'k-2', 2)" >/dev/null
psql_db "$DB" -c "SELECT write_events('$DB', 'k-3', 5)" >/dev/null
wait_drained "$DB" "${DB}_${RUN_ID}" 180

: >"$WORK/expected.tsv"
psql_db "$DB" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM outbox WHERE type = 'Tested'" >>"$WORK/expected.tsv"
log "expected events: $(wc -l <"$WORK/expected.tsv") (8 small ones in the refused transaction)"
check_exactly_once "$WORK/expected.tsv" || fail "a valid event of the refused batch is missing or duplicated"
consume_json -t "$RUN_ID.dlt" >"$WORK/dlt.json"
cut -c1-300 "$WORK/dlt.json" >&2
n_dlt=$(wc -l <"$WORK/dlt.json")
[ "$n_dlt" -eq 1 ] || fail "expected exactly 1 dead-letter record (the big event), got $n_dlt"
grep -q '"key":"big-1"' "$WORK/dlt.json" || fail "the dead-lettered record is not the big one"
grep -q "Kafka refused the record for $RUN_ID.ev.small" "$WORK/dlt.json" || fail "no broker reason in the dead letter"
grep -q "replaying them one record per request" "$WORK/relay.log" || fail "batch refusal not logged"
# The producer that carried a refusal is replaced after the abort: with
# librdkafka 2.0 its next transaction failed on the refused record's gap in
# the sequence numbers ("requires epoch bump"), three extra backoff cycles.
n_gap=$(grep -c "requires epoch bump\|OUT_OF_ORDER_SEQUENCE" "$WORK/relay.log" || true)
[ "$n_gap" -eq 0 ] || fail "$n_gap transaction(s) failed on a producer left with a refused record's sequence gap"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

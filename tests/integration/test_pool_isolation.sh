#!/usr/bin/env bash
# ctest: parallel
# Failure isolation with a shared producer pool (relay.kafka_producers: 1,
# so three sources take turns on one producer): source A's transaction has
# a record its topic refuses, inside a batch the broker refuses as a whole
# (linger.ms 200; max.message.bytes applies to a batch). A aborts, replays
# the transaction one record per request, dead-letters exactly the big
# record and goes on; B and C, written concurrently, are not held up: all
# their events, and A's valid ones, arrive exactly once. Then a second
# relay with the same prefix and a pool fences the pool id: the first one
# stops with one ERROR naming the cause and the fix.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DBA=pisa_$RUN_ID
DBB=pisb_$RUN_ID
DBC=pisc_$RUN_ID
for db in "$DBA" "$DBB" "$DBC"; do create_outbox_db "$db"; done
write_config "$WORK/outboxd.yaml" "$DBA" "$DBB" "$DBC"
sed -i 's/^  transactional_id_prefix: \(.*\)$/  transactional_id_prefix: \1\n  properties: { linger.ms: 200 }/' "$WORK/outboxd.yaml"
sed -i 's/^relay:$/relay:\n  kafka_producers: 1/' "$WORK/outboxd.yaml"
grep -q 'linger.ms: 200' "$WORK/outboxd.yaml" && grep -q 'kafka_producers: 1' "$WORK/outboxd.yaml" ||
    fail "config edit failed"
prepare_sources "$WORK/outboxd.yaml"
"$STACK_SH" topic-create "$RUN_ID.ev.small" 1 max.message.bytes=2048 >&2

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
pids=()
for db in "$DBB" "$DBC"; do
    start_writers "$db" 1 400 50 # ~8 s at 50 txn/s
    pids+=("$WRITER_PID")
done
psql_db "$DBA" <<SQL >/dev/null
BEGIN;
SELECT write_events('small', 'k-1', 4);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
VALUES ('small', 'big-1', 'TooBigForTheTopic', jsonb_build_object('blob', repeat('b', 5000)));
SELECT write_events('small', 'k-1', 4);
COMMIT;
SQL
psql_db "$DBA" -c "SELECT write_events('small', 'k-2', 2)" >/dev/null
psql_db "$DBA" -c "SELECT write_events('$DBA', 'k-3', 5)" >/dev/null
wait_writers "${pids[@]}"
for db in "$DBA" "$DBB" "$DBC"; do wait_drained "$db" "${db}_${RUN_ID}" 180; done

grep -q "kafka pool: 1 transactional producers" "$WORK/relay.log" || fail "the pool did not start"
: >"$WORK/expected.tsv"
psql_db "$DBA" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM outbox WHERE type = 'Tested'" >>"$WORK/expected.tsv"
expected_events "$DBB" "$WORK/expected.tsv"
expected_events "$DBC" "$WORK/expected.tsv"
log "expected events: $(wc -l <"$WORK/expected.tsv")"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed beside a refused batch"
consume_json -t "$RUN_ID.dlt" >"$WORK/dlt.json"
cut -c1-300 "$WORK/dlt.json" >&2
n_dlt=$(wc -l <"$WORK/dlt.json")
[ "$n_dlt" -eq 1 ] || fail "expected exactly 1 dead-letter record (the big event), got $n_dlt"
grep -q '"key":"big-1"' "$WORK/dlt.json" || fail "the dead-lettered record is not the big one"
grep -q "\[$DBA\].*replaying them one record per request" "$WORK/relay.log" || fail "batch refusal not logged for A"
for db in "$DBB" "$DBC"; do
    ! grep -q "WARN  \[$db\].*rewinding" "$WORK/relay.log" || fail "source $db rewound: A's refusal reached it"
done

# Another process with the same transactional_id_prefix and a pool (here:
# a relay for a fourth database) fences the pool ids: the first relay stops
# on the next transaction with one ERROR naming the cause and the fix.
DBD=pisd_$RUN_ID
create_outbox_db "$DBD"
write_config "$WORK/other.yaml" "$DBD"
sed -i 's/^relay:$/relay:\n  kafka_producers: 1/' "$WORK/other.yaml"
prepare_sources "$WORK/other.yaml"
start_relay "$WORK/other.yaml" relay-other
other=$RELAY_PID
wait_log "$WORK/relay-other.log" "kafka pool: 1 transactional producers" 120 "the other relay's pool did not start"
psql_db "$DBB" -c "SELECT write_events('$DBB', 'after-fence', 1)" >/dev/null
wait_exit "$relay" 180 || fail "the fenced relay is still running 180 s after its pool id was taken"
rc=$EXIT_RC
[ "$rc" -ne 0 ] || fail "the fenced relay exited with status 0"
n_err=$(grep -c "ERROR.*pool producer 'outboxd-$RUN_ID.pool.0' was fenced.*another process runs with kafka.transactional_id_prefix 'outboxd-$RUN_ID'.*give every relay process its own kafka.transactional_id_prefix" "$WORK/relay.log" || true)
grep "ERROR" "$WORK/relay.log" | cut -c1-400 >&2
[ "$n_err" -eq 1 ] || fail "expected one ERROR naming the fencing cause and fix, got $n_err"
stop_relay_ok "$other" "the other relay"
for db in "$DBA" "$DBB" "$DBC" "$DBD"; do drop_source "$db" "${db}_${RUN_ID}"; done
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# A row routed to a topic that does not exist, on a broker that does not
# create topics (auto.create.topics.enable=false, as in production):
#  - relay.missing_topic: wait (default): one ERROR naming the topic and the
#    fix, rewinds back off exponentially up to reconnect_max_backoff_ms
#    (no hot loop), another source goes on meanwhile, and once the topic is
#    created every event arrives exactly once;
#  - dead_letter: the row goes to the dead-letter topic with the reason, a
#    snapshot's rows too (the snapshot finishes);
#  - create: outboxd creates the topic with create_topic_partitions;
#  - a topic deleted while in use is reported and waited for the same way
#    (librdkafka's abort then fails fatally; the sink replaces its producers).
# The broker is a second stack of this test's own (the shared one
# auto-creates topics); PostgreSQL is the shared stack's.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

STACK2=/tmp/outboxd-nac-$RUN_ID
extra_cleanup() {
    STACK_DIR=$STACK2 "$STACK_SH" stop --clean >/dev/null 2>&1 || true
}
log "starting a broker with auto.create.topics.enable=false in $STACK2"
STACK_DIR=$STACK2 STACK_KAFKA_AUTO_CREATE=false STACK_OWNER_PID=$$ STACK_OWNER_CLEAN=1 \
    STACK_KAFKA_HEAP="-Xmx512m -Xms128m" "$STACK_SH" start >&2
KAFKA_BOOTSTRAP=$(. "$STACK2/env" && echo "$KAFKA_BOOTSTRAP")
grep -q '^auto.create.topics.enable=false$' "$STACK2/server.properties" ||
    fail "second broker does not have auto-creation off"
topic_create() { STACK_DIR=$STACK2 "$STACK_SH" topic-create "$@" >&2; }

DBA=mta_$RUN_ID
DBB=mtb_$RUN_ID
create_outbox_db "$DBA"
create_outbox_db "$DBB"
write_config "$WORK/outboxd.yaml" "$DBA" "$DBB"
sed -i 's/^relay:/relay:\n  reconnect_max_backoff_ms: 4000/' "$WORK/outboxd.yaml"
# A record for a topic deleted under it is failed by librdkafka only after
# its message timeout, which the transaction timeout bounds: keep it short.
sed -i 's/^  transactional_id_prefix: \(.*\)$/  transactional_id_prefix: \1\n  properties: { transaction.timeout.ms: 20000 }/' "$WORK/outboxd.yaml"
grep -q 'transaction.timeout.ms: 20000' "$WORK/outboxd.yaml" || fail "config edit failed"
MPORT=$(free_port)
printf 'metrics:\n  listen: "127.0.0.1:%s"\n' "$MPORT" >>"$WORK/outboxd.yaml"
# test_missing_topic_pool.sh: the same with a shared producer pool.
if [ -n "${POOL_PRODUCERS:-}" ]; then
    sed -i "s/^relay:/relay:\n  kafka_producers: $POOL_PRODUCERS/" "$WORK/outboxd.yaml"
fi
prepare_sources "$WORK/outboxd.yaml"
# `outboxd check` names a fixed topic missing on a broker that does not
# create topics (kafkacheck.c), with the fix.
sed "s/^        topic: .*/        topic: \"$RUN_ID.fixed\"/" "$WORK/outboxd.yaml" >"$WORK/fixed.yaml"
rc=0
"$OUTBOXD_BIN" check -c "$WORK/fixed.yaml" >"$WORK/fixed.out" 2>&1 || rc=$?
cat "$WORK/fixed.out" >&2
[ "$rc" -eq 1 ] || fail "check of a missing fixed topic exited $rc, expected 1"
grep -q "kafka: topic $RUN_ID.fixed (events, written by source $DBA, table public.outbox) does not exist: with relay.missing_topic: wait its events would wait (the source stops there) until it exists; create it (kafka-topics.sh --bootstrap-server $KAFKA_BOOTSTRAP --create --topic $RUN_ID.fixed)" "$WORK/fixed.out" ||
    fail "check did not name the missing fixed topic"
topic_create "$RUN_ID.ev.$DBA" 1
topic_create "$RUN_ID.ev.$DBB" 1

# Before the row with the missing topic, in its own transaction: a good one.
psql_db "$DBA" -c "SELECT write_events('$DBA', '$DBA-1', 3)" >/dev/null
psql_db "$DBA" <<SQL >/dev/null
BEGIN;
SELECT write_events('$DBA', '$DBA-2', 2);
SELECT write_events('missing1', 'm-1', 1);
SELECT write_events('$DBA', '$DBA-2', 2);
COMMIT;
SQL
psql_db "$DBA" -c "SELECT write_events('$DBA', '$DBA-1', 3)" >/dev/null

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
t0=$(date +%s)
# The other source is not held up: its rows arrive while A waits.
psql_db "$DBB" -c "SELECT write_events('$DBB', '$DBB-1', 20)" >/dev/null
wait_drained "$DBB" "${DBB}_${RUN_ID}" 120
log "source B drained while A waits for its topic"

# Let A wait until its backoff has reached the cap (4000 ms) twice, then
# look at how it waited. A hot loop never gets there.
capped=0
for _ in $(seq 1 1800); do
    capped=$(grep -c "\[$DBA\] rewound again without progress; reconnecting in 4000 ms" "$WORK/relay.log" || true)
    [ "$capped" -ge 2 ] && break
    kill -0 "$relay" 2>/dev/null || fail "relay exited while waiting for a topic"
    sleep 0.1
done
waited=$(($(date +%s) - t0))
n_error=$(grep -c "ERROR \[$DBA\].*topic '$RUN_ID.ev.missing1' does not exist.*create topic '$RUN_ID.ev.missing1'" "$WORK/relay.log" || true)
n_rewind=$(grep -c "\[$DBA\] waiting for topic '$RUN_ID.ev.missing1' to be created; rewinding" "$WORK/relay.log" || true)
backoffs=$(grep "\[$DBA\] rewound again without progress; reconnecting in" "$WORK/relay.log" |
    sed 's/.*reconnecting in \([0-9]*\) ms.*/\1/' | tr '\n' ' ' || true)
log "waited ${waited} s: $n_error ERROR line(s) naming the topic, $n_rewind rewinds, backoffs (ms): $backoffs"
[ "$capped" -ge 2 ] || fail "the rewind backoff did not reach reconnect_max_backoff_ms (4000) within 180 s"
[ "$n_error" -eq 1 ] || fail "expected exactly one ERROR naming the missing topic and the fix, got $n_error"
# 200, 400, ..., 3200, 4000, 4000 (plus one restart of the sequence when
# the transaction before the missing topic commits).
[ "$n_rewind" -le 16 ] || fail "$n_rewind rewinds before the backoff reached its cap: not backing off"
kill -0 "$relay" 2>/dev/null || fail "relay exited while waiting for a topic"
# Within the 4 s rewind backoff just logged, source A does not stream: /readyz
# says so (it said 200 all along, the state stayed "streaming").
ready=$(curl -s -m 5 -o "$WORK/readyz.txt" -w '%{http_code}' "http://127.0.0.1:$MPORT/readyz" || true)
[ "$ready" = 503 ] && grep -q "$DBA.*backoff" "$WORK/readyz.txt" ||
    fail "/readyz while source $DBA waits for its topic: HTTP $ready: $(cat "$WORK/readyz.txt")"
log "/readyz while A waits for its topic: $ready ($(tr '\n' ' ' <"$WORK/readyz.txt" | cut -c1-200))"

log "creating the missing topic"
topic_create "$RUN_ID.ev.missing1" 1
wait_drained "$DBA" "${DBA}_${RUN_ID}" 120
grep -q "topic '$RUN_ID.ev.missing1' exists now" "$WORK/relay.log" || fail "recovery not logged"
: >"$WORK/expected.tsv"
expected_events "$DBA" "$WORK/expected.tsv"
expected_events "$DBB" "$WORK/expected.tsv"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed after the topic appeared"

# A topic deleted while in use (the relay knows it exists) is found by the
# produce errors, and waited for the same way.
log "deleting topic $RUN_ID.ev.missing1 while the relay uses it"
STACK_DIR=$STACK2 "$STACK_SH" topics --delete --topic "$RUN_ID.ev.missing1" >&2
for _ in $(seq 1 300); do
    STACK_DIR=$STACK2 "$STACK_SH" topics --list 2>/dev/null | grep -qx "$RUN_ID.ev.missing1" || break
    sleep 0.2
done
psql_db "$DBA" -c "SELECT write_events('missing1', 'm-1', 1)" >/dev/null
for _ in $(seq 1 1800); do
    [ "$(grep -c "ERROR \[$DBA\].*topic '$RUN_ID.ev.missing1' does not exist" "$WORK/relay.log" || true)" -ge 2 ] && break
    kill -0 "$relay" 2>/dev/null || fail "relay exited after a topic was deleted"
    sleep 0.1
done
[ "$(grep -c "ERROR \[$DBA\].*topic '$RUN_ID.ev.missing1' does not exist" "$WORK/relay.log" || true)" -eq 2 ] ||
    fail "a deleted topic was not reported (expected a second ERROR naming it)"
log "deleted topic reported; producers replaced $(grep -c "replacing the producers" "$WORK/relay.log" || true) time(s)"
topic_create "$RUN_ID.ev.missing1" 1
wait_drained "$DBA" "${DBA}_${RUN_ID}" 180
: >"$WORK/expected.tsv"
psql_db "$DBA" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM outbox WHERE aggregatetype = 'missing1' AND payload->>'seq' = '2'" >>"$WORK/expected.tsv"
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -t "$RUN_ID.ev.missing1" --idle-ms 4000 --timeout-ms 600000 \
    --expect "$WORK/expected.tsv" || fail "the event for the re-created topic did not arrive once"
stop_relay_ok "$relay" "relay (missing_topic: wait)"

log "missing_topic: dead_letter"
sed -i 's/^relay:/relay:\n  missing_topic: dead_letter/' "$WORK/outboxd.yaml"
# A cdc table snapshotted at this start, into a topic that does not exist:
# its rows go to the dead-letter topic too (before: the snapshot retried the
# chunk for ever and the whole source, outbox included, stood still).
psql_db "$DBA" -c "CREATE TABLE snapt (id int PRIMARY KEY, v text)" \
    -c "INSERT INTO snapt SELECT i, 'row ' || i FROM generate_series(1, 3) i" >/dev/null
python3 - "$WORK/outboxd.yaml" "$DBA" "$RUN_ID" <<'PY'
import sys
path, db, run = sys.argv[1:4]
lines = open(path).read().split("\n")
at = lines.index(f"  - name: {db}")
t = next(i for i in range(at, len(lines)) if lines[i] == "    tables:")
lines[t + 1:t + 1] = ["      - table: public.snapt", "        mode: cdc", "        snapshot: initial",
                      "        format: json", f'        topic: "{run}.cdcmissing"']
open(path, "w").write("\n".join(lines))
PY
start_relay "$WORK/outboxd.yaml" relay2
relay=$RELAY_PID
psql_db "$DBA" <<SQL >/dev/null
BEGIN;
SELECT write_events('$DBA', '$DBA-3', 1);
SELECT write_events('missing2', 'm-2', 1);
SELECT write_events('$DBA', '$DBA-3', 1);
COMMIT;
SQL
wait_drained "$DBA" "${DBA}_${RUN_ID}" 120
consume_json -t "$RUN_ID.dlt" >"$WORK/dlt.json"
cut -c1-600 "$WORK/dlt.json" >&2
[ "$(grep -c "missing2" "$WORK/dlt.json")" -eq 1 ] || fail "the missing2 row is not in the dead-letter topic once"
grep -q "topic '$RUN_ID.ev.missing2' does not exist.*relay.missing_topic: dead_letter" "$WORK/dlt.json" ||
    fail "no missing-topic reason in the dead letter"
n=$(grep -c "topic '$RUN_ID.cdcmissing' does not exist.*relay.missing_topic: dead_letter" "$WORK/dlt.json" || true)
[ "$n" -eq 3 ] || fail "the snapshot's 3 rows for the missing topic: $n dead letters, expected 3"
grep -q "snapshot finished" "$WORK/relay2.log" || fail "the snapshot into a missing topic did not finish"
stop_relay_ok "$relay" "relay (missing_topic: dead_letter)"

log "missing_topic: create"
sed -i 's/^  missing_topic: dead_letter/  missing_topic: create\n  create_topic_partitions: 2/' "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml" relay3
relay=$RELAY_PID
psql_db "$DBA" -c "SELECT write_events('missing3', 'm-3', 2)" >/dev/null
wait_drained "$DBA" "${DBA}_${RUN_ID}" 120
grep -q "created topic $RUN_ID.ev.missing3 (partitions 2" "$WORK/relay3.log" || fail "topic creation not logged"
STACK_DIR=$STACK2 "$STACK_SH" topics --describe --topic "$RUN_ID.ev.missing3" >"$WORK/describe.txt"
grep -q "PartitionCount: 2" "$WORK/describe.txt" || { cat "$WORK/describe.txt" >&2; fail "created topic does not have 2 partitions"; }
: >"$WORK/expected.tsv"
expected_events "$DBA" "$WORK/expected.tsv"
expected_events "$DBB" "$WORK/expected.tsv"
# missing2 went to the dead-letter topic; missing1 was deleted with its
# first event, then re-created.
awk -F'\t' -v t1="$RUN_ID.ev.missing1" -v t2="$RUN_ID.ev.missing2" \
    '!($3 == t2 || ($3 == t1 && $4 == "1"))' "$WORK/expected.tsv" >"$WORK/expected2.tsv"
check_exactly_once "$WORK/expected2.tsv" || fail "exactly-once check failed at the end"
stop_relay_ok "$relay" "relay (missing_topic: create)"
drop_source "$DBA" "${DBA}_${RUN_ID}"
drop_source "$DBB" "${DBB}_${RUN_ID}"
log "PASS"

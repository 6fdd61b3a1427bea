#!/usr/bin/env bash
# ctest: lock registry -- stops and restarts the shared schema registry
# The schema registry stops mid-stream and comes back empty (Apicurio in
# memory: its ids change): the relay waits with backoff, then registers its
# schemas again; nothing is lost or duplicated, order per key is kept, and a
# consumer (confluent-kafka AvroDeserializer, running throughout) decodes
# every event. Ids used after the restart resolve in the restarted registry.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
# shellcheck disable=SC1091
source "$STACK_DIR/registry/env"
PY=$("$OUTBOXD_SOURCE_DIR/tests/stack/pyvenv.sh")
KEYS=4
PER_KEY=${PER_KEY:-150}
TOTAL=$((KEYS * PER_KEY))

extra_cleanup() {
    # the registry must be running again for the tests after this one
    "$REGISTRY_SH" start-only >/dev/null 2>&1 || true
}

DB=regout_$RUN_ID
create_outbox_db "$DB"
cat >"$WORK/outboxd.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
schema_registry:
  url: "$REGISTRY_URL"
  cache_ttl_ms: 500
  timeout_ms: 2000
relay:
  commit_interval_ms: 20
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  schemas_dir: "$OUTBOXD_SOURCE_DIR/tests/data/schemas"
sources:
  - name: $DB
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "${DB}_${RUN_ID}"
    tables:
      - table: public.outbox
        topic: "$RUN_ID.ev.\${aggregatetype}"
EOF
# Twenty schemas first, so the relay's schema gets an id above 20; the
# restarted registry is empty and hands it an id of 1 or 2: the ids change.
for i in $(seq 1 20); do
    curl -sf -X POST -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
        --data "{\"schema\": \"{\\\"type\\\":\\\"record\\\",\\\"name\\\":\\\"Other$i\\\",\\\"fields\\\":[{\\\"name\\\":\\\"x\\\",\\\"type\\\":\\\"int\\\"}]}\"}" \
        "$REGISTRY_URL/subjects/$RUN_ID.other$i-value/versions" >/dev/null || fail "could not register Other$i"
done
prepare_sources "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID

# The consumer runs from start to end, like a service would.
"$PY" "$here/avro_consume.py" --bootstrap "$KAFKA_BOOTSTRAP" --topic "^$RUN_ID\\.ev\\..*" \
    --mode registry --registry-url "$REGISTRY_URL" --count "$TOTAL" --idle-ms 600000 \
    --timeout-s 900 --out "$WORK/events.jsonl" 2>"$WORK/consumer.log" &
consumer=$!
BG_PIDS+=("$consumer")

# One writer, one row per transaction, keys in turn, throughout the outage.
{
    for ((i = 0; i < PER_KEY; i++)); do
        for ((k = 1; k <= KEYS; k++)); do
            echo "SELECT write_events('$DB', '$DB-$k', 1); SELECT pg_sleep(0.01);"
        done
    done
} >"$WORK/writes.sql"
psql_db "$DB" -f "$WORK/writes.sql" >/dev/null &
writer=$!
BG_PIDS+=("$writer")

wait_lines() { # wait_lines FILE N TIMEOUT_S
    for _ in $(seq 1 $(($3 * 5))); do
        [ -f "$1" ] && [ "$(wc -l <"$1")" -ge "$2" ] && return 0
        sleep 0.2
    done
    fail "$1 did not reach $2 lines in $3 s"
}
wait_lines "$WORK/events.jsonl" 40 300
log "consumer has $(wc -l <"$WORK/events.jsonl") events; stopping the registry"
"$REGISTRY_SH" stop-only
for _ in $(seq 1 600); do
    grep -q "unreachable" "$WORK/relay.log" && break
    sleep 0.1
done
grep -q "unreachable" "$WORK/relay.log" || fail "the relay never noticed the registry was gone"
log "relay: $(grep -m1 unreachable "$WORK/relay.log" | cut -c1-200)"
# Keep it down a while longer, so retries back off, while rows pile up.
sleep 4
before=$(wc -l <"$WORK/events.jsonl")
"$REGISTRY_SH" start-only
log "registry back (events consumed while it was down: $before)"

wait "$writer" || fail "writer failed"
wait_drained "$DB" "${DB}_${RUN_ID}" 600
wait "$consumer" || fail "consumer failed: $(cat "$WORK/consumer.log")"

"$PY" - "$WORK/events.jsonl" "$KEYS" "$PER_KEY" "$DB" "$REGISTRY_URL" <<'PY'
import json, sys, urllib.request
events = [json.loads(l) for l in open(sys.argv[1])]
keys, per_key, db, url = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
errors = [e for e in events if "error" in e]
assert not errors, "%d undecodable, first: %s" % (len(errors), errors[0]["error"])
by_key = {}
for e in sorted(events, key=lambda e: (e["partition"], e["offset"])):
    by_key.setdefault(e["key"], []).append(e["value"]["payload"]["seq"])
for k in range(1, keys + 1):
    seqs = by_key.get("%s-%d" % (db, k), [])
    assert seqs == list(range(1, per_key + 1)), "key %d: %d events, first wrong at %s" % (
        k, len(seqs), next((i for i, s in enumerate(seqs) if s != i + 1), len(seqs)))
ids = []
for e in sorted(events, key=lambda e: (e["partition"], e["offset"])):
    if not ids or ids[-1] != e["schema_id"]:
        ids.append(e["schema_id"])
last = ids[-1]
assert len(ids) >= 2 and ids[0] > 20 and last <= 2, "schema ids did not change as expected: %s" % ids
with urllib.request.urlopen("%s/schemas/ids/%d" % (url, last)) as r:
    schema = json.load(r)["schema"]
assert "TestedEnvelope" in schema, schema[:200]
print("okcat-like: expected=%d got=%d lost=0 duplicated=0, order per key kept; schema ids in "
      "stream order: %s; id %d resolves in the restarted registry" % (
          keys * per_key, len(events), ids, last))
PY
grep -q "sent to dead-letter topic" "$WORK/relay.log" && fail "rows were dead-lettered"
log "relay rewinds while the registry was down: $(grep -c 'rewinding to checkpoint' "$WORK/relay.log")"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

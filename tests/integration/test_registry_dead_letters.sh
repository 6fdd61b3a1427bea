#!/usr/bin/env bash
# ctest: lock registry -- the shared schema registry (test_registry_outage stops it)
# Payloads that do not match their schema, and a schema the registry rejects
# as incompatible, go to the dead-letter topic (Avro, dead_letter.avsc, read
# back through the registry) with a reason naming the field; the rows around
# them are published in order: the stream goes on.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
# shellcheck disable=SC1091
source "$STACK_DIR/registry/env"
PY=$("$OUTBOXD_SOURCE_DIR/tests/stack/pyvenv.sh")

DB=regdl_$RUN_ID
create_outbox_db "$DB"
mkdir -p "$WORK/schemas"
cat >"$WORK/schemas/Order.avsc" <<'EOF'
{"type": "record", "name": "Order", "namespace": "io.outboxd.test", "fields": [
  {"name": "seq", "type": "long"},
  {"name": "items", "type": {"type": "array", "items": {"type": "record", "name": "Line", "fields": [
    {"name": "sku", "type": "string"},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}}]}}},
  {"name": "qty", "type": "int", "default": 1},
  {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}, "default": "NEW"},
  {"name": "id", "type": ["null", {"type": "string", "logicalType": "uuid"}], "default": null},
  {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}], "default": null},
  {"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}], "default": null},
  {"name": "t", "type": ["null", {"type": "int", "logicalType": "time-millis"}], "default": null},
  {"name": "hash", "type": ["null", {"type": "fixed", "name": "Hash", "size": 4}], "default": null},
  {"name": "blob", "type": ["null", "bytes"], "default": null},
  {"name": "tags", "type": ["null", {"type": "map", "values": "long"}], "default": null},
  {"name": "ok", "type": ["null", "boolean"], "default": null},
  {"name": "ratio", "type": ["null", "float"], "default": null},
  {"name": "alt", "type": ["null", "long", "string"], "default": null}
]}
EOF
cat >"$WORK/schemas/Evolving.avsc" <<'EOF'
{"type": "record", "name": "Evolving", "namespace": "io.outboxd.test", "fields": [
  {"name": "amount", "type": "long"}
]}
EOF

# The corpus: payload (jsonb text) and the exact reason expected.
cat >"$WORK/corpus.tsv" <<'EOF'
{"seq": 1, "items": [{"sku": "a", "price": "1"}, {"sku": "b", "price": "2"}, {"sku": "c", "price": "abc"}]}	payload.items[2].price: expected decimal(10,2), got "abc" (not a number)
{"seq": 1, "items": [{"sku": "a", "price": "1.234"}]}	payload.items[0].price: expected decimal(10,2), got "1.234" (more than 2 digits after the point)
{"seq": 1, "items": [{"sku": "a", "price": "123456789.00"}]}	payload.items[0].price: expected decimal(10,2), got "123456789.00" (more than 10 digits)
{"seq": 1, "items": [{"sku": "a"}]}	payload.items[0].price: required field (decimal(10,2)) is missing
{"seq": 1, "items": [], "qty": "3"}	payload.qty: expected int, got "3"
{"seq": 1, "items": [], "qty": 2147483648}	payload.qty: expected int, got 2147483648 (out of range)
{"seq": 1, "items": [], "qty": 1.5}	payload.qty: expected int, got 1.5 (not an integer)
{"seq": 1, "items": [], "extra": 1}	payload.extra: not a field of record io.outboxd.test.Order
{"seq": 1}	payload.items: required field (array) is missing
[1, 2]	payload: expected record io.outboxd.test.Order, got an array
null	payload: expected record io.outboxd.test.Order, got null
{"seq": 1, "items": {}}	payload.items: expected array, got an object
{"seq": 1, "items": [], "status": "LOST"}	payload.status: expected enum io.outboxd.test.Status, got "LOST" (symbols: NEW, PAID)
{"seq": 1, "items": [], "id": "not-a-uuid"}	payload.id: expected uuid, got "not-a-uuid" (use 8-4-4-4-12 hex digits)
{"seq": 1, "items": [], "day": "2026-02-30"}	payload.day: expected date, got "2026-02-30" (use YYYY-MM-DD)
{"seq": 1, "items": [], "at": "yesterday"}	payload.at: expected timestamp-micros, got "yesterday" (use RFC 3339, e.g. 2026-12-01T10:00:00Z)
{"seq": 1, "items": [], "t": "24:00:00"}	payload.t: expected time-millis, got "24:00:00" (use HH:MM:SS[.ffffff])
{"seq": 1, "items": [], "hash": "AAA="}	payload.hash: expected fixed io.outboxd.test.Hash (4 bytes), got "AAA=" (2 bytes)
{"seq": 1, "items": [], "blob": "***"}	payload.blob: expected bytes, got "***" (not base64)
{"seq": 1, "items": [], "tags": {"a": "x"}}	payload.tags.a: expected long, got "x"
{"seq": 1, "items": [], "ok": "yes"}	payload.ok: expected boolean, got "yes"
{"seq": 1, "items": [], "ratio": 1e39}	payload.ratio: expected float, got 9.9999999999999994e38 (out of range)
{"seq": 1, "items": [], "alt": true}	payload.alt: expected one of [null, long, string], got true
{"seq": 9007199254740993.5, "items": []}	payload.seq: expected long, got 9007199254740994.0 (not exactly an integer: beyond 2^53 write it without a fraction or exponent)
{"seq": "1", "items": []}	payload.seq: expected long, got "1"
EOF
n_bad=$(wc -l <"$WORK/corpus.tsv")

cat >"$WORK/outboxd.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
schema_registry:
  url: "$REGISTRY_URL"
  cache_ttl_ms: 1000
relay:
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  dead_letter_format: avro
  schemas_dir: schemas
sources:
  - name: $DB
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "${DB}_${RUN_ID}"
    tables:
      - table: public.outbox
        topic: "$RUN_ID.dl.\${aggregatetype}"
EOF

# A version under the Evolving topic's subject that the relay's schema is not
# BACKWARD compatible with (the registry runs with that global rule).
curl -sf -X POST -H 'Content-Type: application/vnd.schemaregistry.v1+json' \
    --data '{"schema": "{\"type\":\"record\",\"name\":\"EvolvingEnvelope\",\"namespace\":\"io.outboxd.test\",\"fields\":[{\"name\":\"id\",\"type\":\"long\"}]}"}' \
    "$REGISTRY_URL/subjects/$RUN_ID.dl.evolving-value/versions" >/dev/null ||
    fail "could not register the old Evolving version"

prepare_sources "$WORK/outboxd.yaml"
grep -qF "schemas: OK (2 typed payload schema(s), registry $REGISTRY_URL answers)" "$WORK/check.log" ||
    fail "outboxd check did not report the schemas and the registry: $(cat "$WORK/check.log")"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID

# Good Order rows (seq per key), the corpus and the Evolving rows between them.
{
    echo "BEGIN;"
    i=0
    while IFS=$'\t' read -r payload _reason; do
        i=$((i + 1))
        echo "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'good', 'Order', '{\"seq\": $i, \"items\": [{\"sku\": \"s$i\", \"price\": \"$i.99\"}]}');"
        echo "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-4000-8000-$(printf '%012d' "$i")', 'order', 'bad', 'Order', \$pl\$$payload\$pl\$::jsonb);"
        if ((i % 8 == 0)); then
            echo "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload) VALUES ('00000000-0000-4000-9000-$(printf '%012d' "$i")', 'evolving', 'ev', 'Evolving', '{\"amount\": $i}');"
            echo "COMMIT; BEGIN;"
        fi
    done <"$WORK/corpus.tsv"
    echo "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'good', 'Order', '{\"seq\": $((i + 1)), \"items\": []}');"
    echo "COMMIT;"
} >"$WORK/rows.sql"
psql_db "$DB" -f "$WORK/rows.sql" >/dev/null
n_ev=$(psql_db "$DB" -c "SELECT count(*) FROM outbox WHERE type = 'Evolving'")
log "wrote $((n_bad + 1)) good rows, $n_bad bad payloads, $n_ev rows of the incompatible schema"
wait_drained "$DB" "${DB}_${RUN_ID}"

consume() { # consume TOPIC COUNT OUT
    "$PY" "$here/avro_consume.py" --bootstrap "$KAFKA_BOOTSTRAP" --topic "$1" --mode registry \
        --registry-url "$REGISTRY_URL" --count "$2" --idle-ms 15000 --timeout-s 300 --out "$3"
}
consume "$RUN_ID.dlt" $((n_bad + n_ev)) "$WORK/dlt.jsonl"
consume "$RUN_ID.dl.order" $((n_bad + 1)) "$WORK/good.jsonl"

"$PY" - "$WORK/corpus.tsv" "$WORK/dlt.jsonl" "$WORK/good.jsonl" "$RUN_ID" <<'PY'
import json, sys
from decimal import Decimal as D
corpus = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
dlt = [json.loads(l) for l in open(sys.argv[2])]
good = [json.loads(l) for l in open(sys.argv[3])]
run = sys.argv[4]
bad = [d for d in dlt if d["key"] == "bad"]
ev = [d for d in dlt if d["key"] == "ev"]
assert not [d for d in dlt if "error" in d], [d["error"] for d in dlt if "error" in d][:3]
assert len(bad) == len(corpus), "expected %d dead letters for bad payloads, got %d" % (len(corpus), len(bad))
for i, ((payload, reason), d) in enumerate(zip(corpus, sorted(bad, key=lambda d: d["value"]["event_id"]))):
    v = d["value"]
    assert v["reason"] == reason, "row %d: reason\n  got      %s\n  expected %s" % (i + 1, v["reason"], reason)
    assert d["headers"]["outboxd.reason"] == reason
    assert v["event_id"] == "00000000-0000-4000-8000-%012d" % (i + 1), v["event_id"]
    row = json.loads(__import__("base64").b64decode(v["original"]["b64"]))
    num = lambda t: json.loads(t, parse_float=D, parse_int=D)  # jsonb writes 1e39 in full
    assert num(row["payload"]) == num(payload), (row["payload"], payload)
    assert v["source"]["table"] == "public.outbox" and v["source"]["lsn"] > 0
print("%d bad payloads dead-lettered (Avro, via the registry), each with its exact reason" % len(bad))
subject = "%s.dl.evolving-value" % run
assert len(ev) >= 1, "no dead letters for the incompatible schema"
for d in ev:
    r = d["value"]["reason"]
    assert "io.outboxd.test.EvolvingEnvelope" in r and subject in r and "incompatible" in r, r
print("%d rows of the incompatible schema dead-lettered: %s" % (len(ev), ev[0]["value"]["reason"][:300]))
seqs = [g["value"]["payload"]["seq"] for g in sorted(good, key=lambda g: g["offset"])]
assert not [g for g in good if "error" in g]
assert seqs == list(range(1, len(corpus) + 2)), seqs
print("%d good rows published in order around them" % len(seqs))
PY
[ "$(grep -c "ERROR.*$RUN_ID.dl.evolving-value" "$WORK/relay.log")" -eq 1 ] ||
    fail "expected one ERROR line naming the rejected subject"
grep "ERROR" "$WORK/relay.log" | cut -c1-400 >&2

stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

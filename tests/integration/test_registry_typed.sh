#!/usr/bin/env bash
# ctest: lock registry -- the shared schema registry (test_registry_outage stops it)
# Typed payloads decoded by consumers in another language, with the values
# that were written: every Avro type and logical type (AllTypes.avsc),
# NULLs, extreme numbers, non-ASCII text.
#  - relay A: schema registry (Apicurio), topic-record-name subjects; the
#    envelope table and a value_format: payload table; read with
#    confluent-kafka's AvroDeserializer.
#  - relay B: no registry, single-object encoding, schemas written to
#    relay.schema_store_dir; read with fastavro by fingerprint.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
# shellcheck disable=SC1091
source "$STACK_DIR/registry/env"
PY=$("$OUTBOXD_SOURCE_DIR/tests/stack/pyvenv.sh")
SEED=${SEED:-$(date +%s)}
N=${N_TYPED:-120}
log "seed $SEED, $N typed rows; registry $REGISTRY_URL"

"$PY" "$here/registry_typed.py" gen "$SEED" "$N" "$WORK/rows.sql" "$WORK/expected.json"

make_db() {
    local db=$1
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
    psql_db postgres -c "CREATE DATABASE \"$db\"" >/dev/null
    psql_db "$db" <<'SQL'
CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype text NOT NULL,
    aggregateid text, type text NOT NULL, payload jsonb);
CREATE TABLE outbox_pl (LIKE outbox INCLUDING ALL);
SQL
}

# config FILE DB TOPIC_PREFIX EXTRA_TOP EXTRA_RELAY
config() {
    cat >"$1" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID-$2"
$4
relay:
  commit_interval_ms: 20
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.$3.dlt"
  schemas_dir: "$OUTBOXD_SOURCE_DIR/tests/data/schemas"
$5
sources:
  - name: $2
    dsn: "host=$PGHOST port=$PGPORT dbname=$2 user=$PGUSER"
    slot: "${2}_${RUN_ID}"
    tables:
      - table: public.outbox
        topic: "$RUN_ID.$3.env"
      - table: public.outbox_pl
        topic: "$RUN_ID.$3.pl"
        value_format: payload
EOF
}

DBA=rega_$RUN_ID
DBB=regb_$RUN_ID
make_db "$DBA"
make_db "$DBB"
config "$WORK/a.yaml" "$DBA" a "schema_registry:
  url: \"$REGISTRY_URL\"
  subject_name_strategy: topic-record-name" ""
config "$WORK/b.yaml" "$DBB" b "" "  schema_store_dir: \"$WORK/schemas\""
prepare_sources "$WORK/a.yaml"
prepare_sources "$WORK/b.yaml"
start_relay "$WORK/a.yaml" relay-a
ra=$RELAY_PID
start_relay "$WORK/b.yaml" relay-b
rb=$RELAY_PID

for db in "$DBA" "$DBB"; do
    for t in outbox outbox_pl; do
        sed "s/%TABLE%/$t/" "$WORK/rows.sql" | psql_db "$db" >/dev/null
    done
done
n_rows=$(psql_db "$DBA" -c "SELECT count(*) FROM outbox")
log "wrote $n_rows rows per table into $DBA and $DBB"
wait_drained "$DBA" "${DBA}_${RUN_ID}"
wait_drained "$DBB" "${DBB}_${RUN_ID}"

consume() { # consume TOPIC MODE OUT
    "$PY" "$here/avro_consume.py" --bootstrap "$KAFKA_BOOTSTRAP" --topic "$1" --mode "$2" \
        --registry-url "$REGISTRY_URL" --store-dir "$WORK/schemas" --count "$n_rows" \
        --idle-ms 20000 --timeout-s 300 --out "$3"
}
consume "$RUN_ID.a.env" registry "$WORK/a-env.jsonl"
consume "$RUN_ID.a.pl" registry "$WORK/a-pl.jsonl"
consume "$RUN_ID.b.env" single "$WORK/b-env.jsonl"
consume "$RUN_ID.b.pl" single "$WORK/b-pl.jsonl"
"$PY" "$here/registry_typed.py" check "$WORK/expected.json" "$WORK/a-env.jsonl" envelope
"$PY" "$here/registry_typed.py" check "$WORK/expected.json" "$WORK/a-pl.jsonl" payload
"$PY" "$here/registry_typed.py" check "$WORK/expected.json" "$WORK/b-env.jsonl" envelope
"$PY" "$here/registry_typed.py" check "$WORK/expected.json" "$WORK/b-pl.jsonl" payload

# Nothing dead-lettered; the subjects follow topic-record-name.
grep -q "sent to dead-letter topic" "$WORK/relay-a.log" "$WORK/relay-b.log" && fail "rows were dead-lettered"
subjects=$(curl -sf "$REGISTRY_URL/subjects")
log "registry subjects: $subjects"
for s in "$RUN_ID.a.env-io.outboxd.test.AllTypesEnvelope" "$RUN_ID.a.env-io.outboxd.OutboxEvent" \
    "$RUN_ID.a.pl-io.outboxd.test.AllTypes" "$RUN_ID.a.pl-string"; do
    grep -qF "\"$s\"" <<<"$subjects" || fail "subject $s not registered"
done
# Without a registry, each schema used is stored under its fingerprint.
ls "$WORK/schemas" >&2
[ "$(ls "$WORK/schemas" | grep -c '^[0-9a-f]\{16\}\.avsc$')" -eq 4 ] ||
    fail "expected 4 stored schemas (envelope, typed envelope, payload record, string)"

# With the default strategy (topic-name), the types of a topic would share
# one subject: run and check warn, naming the fix.
grep -v "subject_name_strategy" "$WORK/a.yaml" >"$WORK/a-topicname.yaml"
"$OUTBOXD_BIN" check -c "$WORK/a-topicname.yaml" >"$WORK/tn.out" 2>&1 || true
grep -q "share the subject <topic>-value.*set schema_registry.subject_name_strategy: topic-record-name" "$WORK/tn.out" ||
    fail "no warning for typed payloads under the topic-name strategy: $(head -5 "$WORK/tn.out")"
grep -q "subject_name_strategy topic-name" "$WORK/relay-a.log" && fail "warned although the strategy is topic-record-name"

stop_relay_ok "$ra" relay-a
stop_relay_ok "$rb" relay-b
drop_source "$DBA" "${DBA}_${RUN_ID}"
drop_source "$DBB" "${DBB}_${RUN_ID}"
log "PASS"

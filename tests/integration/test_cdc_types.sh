#!/usr/bin/env bash
# ctest: lock registry -- the shared schema registry (test_registry_outage stops it)
# CDC mode (mode: cdc), every mapped type through the schema registry: a
# table with smallint .. inet, arrays, an enum and a domain, holding NULLs,
# extremes (NaN, +-Infinity, a 100-digit numeric, empty arrays, arrays with
# NULLs, BC dates), non-ASCII text and a large TOASTed value (CDC_BIG_MB,
# default 1). Insert, update without and with REPLICA IDENTITY FULL (the
# unchanged TOASTed value is Debezium's placeholder, then the full old
# image), delete (with tombstones), truncate. A Python consumer
# (confluent-kafka AvroDeserializer) decodes key and value of each event and
# compares every value with what was written; a second table in JSON
# (JsonConverter shape, schemas.enable and not) is checked the same way, and
# a third with columns_exclude / mask_hash / mask_null, and a fourth with a
# row_filter (a PostgreSQL 15 publication WHERE made by outboxd check). Two
# tables snapshotted at the start: one with a row_filter (the snapshot reads
# only the rows the publication sends) and an inheritance parent (its own
# rows only); a third without a primary key is skipped (ERROR), its changes
# streamed; a fourth has no row the snapshot reads (row filter,
# inheritance), so with the keyless one last in the run the "last" marker
# is on the inheritance parent's last row.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
# shellcheck disable=SC1091
source "$STACK_DIR/registry/env"
PY=$("$OUTBOXD_SOURCE_DIR/tests/stack/pyvenv.sh")
BIG_MB=${CDC_BIG_MB:-1}
CHUNKS=$((BIG_MB * 32768)) # 32-character md5 chunks: 1 MiB each 32768
DB=cdct_$RUN_ID
TOPIC="$RUN_ID.cdc.public.all_types"
log "registry $REGISTRY_URL; TOASTed value of $BIG_MB MiB"

psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
# A database whose own IntervalStyle is not PostgreSQL's default: the text
# the walsender sends must not depend on it (the relay pins it per session;
# unpinned, every change with an interval went to the dead-letter topic).
psql_db postgres -c "ALTER DATABASE \"$DB\" SET IntervalStyle = 'iso_8601'" >/dev/null
"$PY" "$here/cdc_check.py" sql-schema "$CHUNKS" | psql_db "$DB" >/dev/null
psql_db "$DB" -c "CREATE TABLE j (id integer PRIMARY KEY, c_tstz timestamptz, c_num numeric(10,3))" >/dev/null
psql_db "$DB" -c "CREATE TABLE js (LIKE j INCLUDING ALL)" >/dev/null
psql_db "$DB" -c "CREATE TABLE rf (id integer PRIMARY KEY, status text)" >/dev/null
psql_db "$DB" -c "CREATE TABLE pii (id integer PRIMARY KEY, email text, ssn text, keep integer, drop_me text)" >/dev/null
# Snapshotted before the relay first runs: a table with a row_filter (the
# snapshot reads only the rows the publication sends) and an inheritance
# parent (its own rows; its child's changes arrive under the child's name).
psql_db "$DB" -c "CREATE TABLE nopk (id integer, v text)" -c "ALTER TABLE nopk REPLICA IDENTITY FULL" \
    -c "INSERT INTO nopk VALUES (1, 'before')" >/dev/null
psql_db "$DB" -c "CREATE TABLE rfs (id integer PRIMARY KEY, status text)" \
    -c "INSERT INTO rfs VALUES (1, 'draft'), (2, 'paid'), (3, 'draft'), (4, 'paid')" >/dev/null
psql_db "$DB" -c "CREATE TABLE inh (id integer PRIMARY KEY, v text)" -c "CREATE TABLE inh_child () INHERITS (inh)" \
    -c "INSERT INTO inh VALUES (1, 'parent'), (2, 'parent')" -c "INSERT INTO inh_child VALUES (3, 'child')" >/dev/null
# Read after inh, none of its rows is read (its own are all filtered out,
# the row its row_filter takes is its inheritance child's); nopk, last in
# the run, is skipped: the snapshot's "last" marker belongs on inh's last
# row.
psql_db "$DB" -c "CREATE TABLE rfe (id integer PRIMARY KEY, status text)" \
    -c "CREATE TABLE rfe_child () INHERITS (rfe)" -c "INSERT INTO rfe VALUES (1, 'draft')" \
    -c "INSERT INTO rfe_child VALUES (2, 'paid')" >/dev/null

# Large records: the topic, the producer and the relay must all take them.
max=$((BIG_MB * 3 * 1048576 + 1048576))
"$STACK_SH" topic-create "$TOPIC" 1 "max.message.bytes=$max" >&2

cat >"$WORK/outboxd.yaml" <<EOF2
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
  properties:
    message.max.bytes: "$max"
schema_registry:
  url: "$REGISTRY_URL"
relay:
  commit_interval_ms: 20
  max_event_bytes: $max
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  missing_topic: create
  create_topic_partitions: 1
sources:
  - name: cdcsrc
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "${DB}_${RUN_ID}"
    tables:
      - table: public.all_types
        mode: cdc
        snapshot: never
        topic_prefix: "$RUN_ID.cdc"
        truncate_events: true
      - table: public.j
        mode: cdc
        snapshot: never
        format: json
        topic: "$RUN_ID.j"
      - table: public.js
        mode: cdc
        snapshot: never
        format: json
        json_schemas: false
        topic: "$RUN_ID.js"
      - table: public.pii
        mode: cdc
        snapshot: never
        topic: "$RUN_ID.pii"
        columns_exclude: [drop_me]
        mask_hash: [email]
        mask_null: [ssn]
      - table: public.rf
        mode: cdc
        snapshot: never
        format: json
        json_schemas: false
        topic: "$RUN_ID.rf"
        row_filter: "status <> 'draft'"
      - table: public.rfs
        mode: cdc
        snapshot: initial
        format: json
        json_schemas: false
        topic: "$RUN_ID.rfs"
        row_filter: "status <> 'draft'"
      - table: public.inh
        mode: cdc
        snapshot: initial
        format: json
        json_schemas: false
        topic: "$RUN_ID.inh"
      - table: public.rfe
        mode: cdc
        snapshot: initial
        format: json
        json_schemas: false
        topic: "$RUN_ID.rfe"
        row_filter: "status <> 'draft'"
      - table: public.nopk
        mode: cdc
        snapshot: initial
        format: json
        json_schemas: false
        topic: "$RUN_ID.nopk"
EOF2
prepare_sources "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID

"$PY" "$here/cdc_check.py" sql-changes "$CHUNKS" | psql_db "$DB" >/dev/null
psql_db "$DB" -c "INSERT INTO rf VALUES (1, 'draft'), (2, 'paid'), (3, 'draft'), (4, 'paid')" >/dev/null
rowfilter=$(psql_db "$DB" -c "SELECT rowfilter FROM pg_publication_tables WHERE tablename = 'rf'")
log "publication row filter of rf (made by outboxd check): $rowfilter"
[ -n "$rowfilter" ] || fail "outboxd check created the publication without rf's row filter"
psql_db "$DB" -c "INSERT INTO nopk VALUES (2, 'streamed')" >/dev/null
for i in 1 2 3; do
    psql_db "$DB" -c "INSERT INTO j VALUES ($i, '2026-11-24 12:00:00.5+02', $i.125)" >/dev/null
    psql_db "$DB" -c "INSERT INTO js VALUES ($i, '2026-11-24 12:00:00.5+02', $i.125)" >/dev/null
    psql_db "$DB" -c "INSERT INTO pii VALUES ($i, 'user$i@example.com', 'secret-$i', $((i * 2)), 'secret too')" >/dev/null
done
wait_drained "$DB" "${DB}_${RUN_ID}" 300
kill -0 "$relay" 2>/dev/null || fail "relay exited"

"$PY" "$here/cdc_check.py" types --bootstrap "$KAFKA_BOOTSTRAP" --registry "$REGISTRY_URL" \
    --topic "$TOPIC" --big-chunks "$CHUNKS" || fail "Avro change events do not match what was written"
"$PY" "$here/cdc_check.py" json --bootstrap "$KAFKA_BOOTSTRAP" --topic "$RUN_ID.j" --rows 3 --schemas 1 ||
    fail "JSON (schemas.enable) events do not match"
"$PY" "$here/cdc_check.py" json --bootstrap "$KAFKA_BOOTSTRAP" --topic "$RUN_ID.js" --rows 3 --schemas 0 ||
    fail "JSON events do not match"

"$PY" "$here/cdc_check.py" pii --bootstrap "$KAFKA_BOOTSTRAP" --registry "$REGISTRY_URL" \
    --topic "$RUN_ID.pii" --rows 3 || fail "filtered / masked events do not match"

"$PY" "$here/cdc_check.py" rowfilter --bootstrap "$KAFKA_BOOTSTRAP" --topic "$RUN_ID.rf" ||
    fail "the row filter let draft rows through or lost paid ones"

snap_ids() { consume_json -T "^$1\$" | jq -r '(.value | if type == "string" then fromjson else . end) | select(.op == "r") | .after.id' | sort -n | tr '\n' ' '; }
got=$(snap_ids "$RUN_ID.rfs")
[ "$got" = "2 4 " ] || fail "the snapshot of rfs (row_filter status <> 'draft') read ids '$got', expected '2 4 '"
got=$(snap_ids "$RUN_ID.inh")
[ "$got" = "1 2 " ] || fail "the snapshot of the inheritance parent inh read ids '$got', expected its own '1 2 ' (not its child's 3)"
# (rfe's topic has no record, so no topic: not read, okcat would wait for it)
grep -q "snapshot of public.rfe: 0 rows in this run" "$WORK/relay.log" ||
    fail "the snapshot of rfe read rows (its own are drafts, its child's are not its own): $(grep 'public.rfe' "$WORK/relay.log" | head -3)"
# The "last" marker: on the last row the run read (inh's 2), once.
got=$(for t in nopk rfs inh; do consume_json -T "^$RUN_ID\.$t\$"; done |
    jq -r '(.value | if type == "string" then fromjson else . end) | select(.source.snapshot == "last") | "\(.source.table) \(.after.id)"' | tr '\n' ' ')
[ "$got" = "inh 2 " ] || fail "snapshot \"last\" markers: '$got', expected 'inh 2 ' (the later tables rfe and nopk have no row the snapshot reads)"
log "snapshots: rfs read only the rows its row_filter takes, inh only its own rows, rfe none; \"last\" on inh 2"
# A table without a primary key cannot be snapshotted (read in key order):
# skipped with an ERROR, the other tables of the run read, its changes
# streamed (before: the source stopped, at every start).
grep -q "snapshot of public.nopk skipped: table public.nopk has no primary key" "$WORK/relay.log" ||
    fail "no ERROR naming the skipped snapshot of public.nopk: $(grep -i nopk "$WORK/relay.log" | head -3)"
got=$(consume_json -T "^$RUN_ID\.nopk\$" | jq -r '(.value | if type == "string" then fromjson else . end) | "\(.op) \(.after.id)"' | tr '\n' ' ')
[ "$got" = "c 2 " ] || fail "public.nopk: events '$got', expected the streamed insert only ('c 2 ')"

grep -q "sent to dead-letter topic" "$WORK/relay.log" && fail "changes were dead-lettered"
subjects=$(curl -sf "$REGISTRY_URL/subjects")
for s in "$TOPIC-key" "$TOPIC-value"; do
    grep -qF "\"$s\"" <<<"$subjects" || fail "subject $s not registered (subjects: $subjects)"
done
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

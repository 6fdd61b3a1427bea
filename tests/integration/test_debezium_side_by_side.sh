#!/usr/bin/env bash
# ctest: lock debezium -- the stack's one Kafka Connect worker (tests/stack/debezium.sh), which each side-by-side test stops at its end
# Debezium drop-in, side by side: Debezium's PostgreSQL connector 3.0.8 with
# the outbox EventRouter (Kafka Connect 3.9.1, distributed,
# exactly.once.source.support=enabled; tests/stack/debezium.sh) and outboxd
# with the same EventRouter properties in its tables[].debezium block relay
# the same outbox rows of one database (one publication, a slot each). The
# records must be the same field for field: topic (after a per-side prefix:
# both write to one broker), partition, key bytes, value bytes, headers,
# timestamp, and the order of events within each partition.
# Two tables, a connector each (and two tables in outboxd's one source):
# - outbox, JsonConverter key and value, expanded payload: 4 aggregate types
#   routed by a two-group Java regex (with \w in a class), NULL keys, NULL
#   payloads (tombstones), non-ASCII and control characters, null JSON
#   fields and empty arrays (dropped by Debezium), arrays of objects,
#   payloads Debezium leaves as strings (an array of integers and
#   fractions, a jsonb scalar), fractional numbers, headers with NULL values, booleans,
#   envelope fields, a float8 header (Java's Double.toString), an explicit
#   partition column on some rows (the rest by
#   the murmur2 partitioner), the event timestamp column;
# - outbox_s, StringConverter key and value: the jsonb text as PostgreSQL
#   prints it, NULL payloads (null values), routed by the type column with
#   the default regex, the id header from another column, an integer header,
#   the default (processing) timestamp, which is not compared;
# - outbox_b, a bytea payload through io.debezium.converters.BinaryDataConverter
#   (the bytes as they are: empty, NUL and high bytes, NULL with
#   route.tombstone.on.empty.payload, where an empty bytea is no tombstone),
#   a bytea header (base64). outbox's JSON envelope has a bytea field too
#   (JsonConverter: base64);
# - outbox_j, JsonConverter key and value with their default schemas.enable
#   (true, not set): {"schema", "payload"} records, the expanded payload's
#   inferred schema inside the envelope struct named after topic.prefix and
#   versioned by a schema version column, a NOT NULL key and envelope field
#   (outboxd.columns.not.null), float8 and bytea envelope fields;
# - outbox_k, the same with schemas.enable set to true, no envelope: the
#   expanded payload's schema as the value's, the Json string's where
#   Debezium does not expand, NULL payloads and NULL keys (a null payload
#   under its schema, not a tombstone); its payload column is a domain over
#   jsonb (pgoutput sends the domain's type; rendered as its base type).
# Slow (a Connect JVM): ctest label "sidebyside".
source "$(dirname "$0")/lib.sh"
ROOT=${OUTBOXD_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
DBZ=$ROOT/tests/stack/debezium.sh
PY=$("$ROOT/tests/stack/pyvenv.sh")
N=${DBZ_ROWS:-1200}
PER_TXN=20
SEED=${DBZ_SEED:-0.42}
DB="dbz_$RUN_ID"
DPFX="${RUN_ID}d"
OPFX="${RUN_ID}o"
CONNECTOR="outbox_$RUN_ID"

extra_cleanup() {
    "$DBZ" delete "$CONNECTOR" >/dev/null 2>&1 || true
    "$DBZ" delete "${CONNECTOR}_s" >/dev/null 2>&1 || true
    "$DBZ" delete "${CONNECTOR}_b" >/dev/null 2>&1 || true
    "$DBZ" delete "${CONNECTOR}_j" >/dev/null 2>&1 || true
    "$DBZ" delete "${CONNECTOR}_k" >/dev/null 2>&1 || true
    [ -n "${STARTED_CONNECT:-}" ] && "$DBZ" stop >/dev/null 2>&1
    for p in "${RELAY_PIDS[@]}"; do own_child "$p" && kill -9 "$p" 2>/dev/null || true; done
    # The connector's task lets go of its slot a moment after the delete.
    for _ in $(seq 1 20); do
        [ "$(psql_db postgres -c "SELECT count(*) FROM pg_replication_slots WHERE database = '$DB' AND active")" = 0 ] && break
        sleep 0.5
    done
    psql_db postgres -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '$DB' AND active" >/dev/null 2>&1 || true
    sleep 0.5
    drop_source "$DB" "obx_$RUN_ID"
    drop_source "$DB" "dbz_$RUN_ID"
    drop_source "$DB" "dbz2_$RUN_ID"
    drop_source "$DB" "dbz3_$RUN_ID"
    drop_source "$DB" "dbz4_$RUN_ID"
    drop_source "$DB" "dbz5_$RUN_ID"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}

log "seed $SEED, $N rows in transactions of $PER_TXN"
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" <<'SQL'
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text,
    type text NOT NULL,
    payload jsonb,
    tenant text,
    flag boolean NOT NULL,
    region text,
    version int4,
    part int4,
    ts timestamp(6) NOT NULL,
    weight float8,
    sig bytea);
CREATE TABLE outbox_s (
    event_id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jsonb,
    seq int8 NOT NULL);
CREATE TABLE outbox_b (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload bytea,
    blob bytea);
CREATE TABLE outbox_j (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jsonb,
    flag boolean NOT NULL,
    region text,
    version int4,
    weight float8,
    sig bytea);
CREATE DOMAIN jdom AS jsonb;
CREATE TABLE outbox_k (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text,
    type text NOT NULL,
    payload jdom);
-- only checked (outboxd check: column types without a schema)
CREATE TABLE outbox_d (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jdom,
    at timestamptz);
CREATE PUBLICATION dbz_pub FOR TABLE outbox, outbox_s, outbox_b, outbox_j, outbox_k, outbox_d;
SQL
psql_db "$DB" -c "SELECT pg_create_logical_replication_slot('dbz_$RUN_ID', 'pgoutput')" \
    -c "SELECT pg_create_logical_replication_slot('dbz2_$RUN_ID', 'pgoutput')" \
    -c "SELECT pg_create_logical_replication_slot('dbz3_$RUN_ID', 'pgoutput')" \
    -c "SELECT pg_create_logical_replication_slot('dbz4_$RUN_ID', 'pgoutput')" \
    -c "SELECT pg_create_logical_replication_slot('dbz5_$RUN_ID', 'pgoutput')" >/dev/null

# Topics: TYPE -> <prefix>.<letters of TYPE>.x<rest> (route.topic.regex below).
SUFFIXES=(.order.x .customer.x .Shipment.x .invoice.x_v2)
SUFFIXES_S=(s.Created s.Updated s.Cancelled)
SUFFIXES_B=(b.order b.customer b.Shipment b.invoice_v2)
SUFFIXES_J=(j.order j.customer j.Shipment j.invoice_v2)
SUFFIXES_K=(k.order k.customer k.Shipment k.invoice_v2)
TOPICS=()
for s in "${SUFFIXES[@]}" "${SUFFIXES_S[@]}" "${SUFFIXES_B[@]}" "${SUFFIXES_J[@]}" "${SUFFIXES_K[@]}"; do
    TOPICS+=("$DPFX$s" "$OPFX$s")
done
"$PY" "$(dirname "$0")/dbz_compare.py" create "$KAFKA_BOOTSTRAP" 3 "${TOPICS[@]}"

# The EventRouter properties, shared verbatim by both sides.
PLACEMENT_J="type:header:eventType,flag:envelope,region:envelope:regionName,weight:envelope,sig:envelope"
PLACEMENT="type:header:eventType,tenant:header,flag:header,region:envelope:regionName,version:envelope,part:partition,weight:header,sig:envelope"
cat >"$WORK/outboxd.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
  properties:
    partitioner: murmur2_random
relay:
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
sources:
  - name: dbz
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "obx_$RUN_ID"
    publication: dbz_pub
    create_publication: false
    tables:
      - table: public.outbox
        debezium:
          key.converter: org.apache.kafka.connect.json.JsonConverter
          key.converter.schemas.enable: "false"
          value.converter: org.apache.kafka.connect.json.JsonConverter
          value.converter.schemas.enable: "false"
          transforms.outbox.type: io.debezium.transforms.outbox.EventRouter
          transforms.outbox.route.topic.regex: "(?<head>[A-Za-z]+)(?<tail>[\\\\w.-]*)"
          transforms.outbox.route.topic.replacement: "$OPFX.\${head}.x\${tail}"
          transforms.outbox.table.expand.json.payload: "true"
          transforms.outbox.route.tombstone.on.empty.payload: "true"
          transforms.outbox.table.field.event.timestamp: ts
          transforms.outbox.table.fields.additional.placement: "$PLACEMENT"
      - table: public.outbox_s
        debezium:
          key.converter: org.apache.kafka.connect.storage.StringConverter
          value.converter: org.apache.kafka.connect.storage.StringConverter
          route.by.field: type
          route.topic.replacement: "${OPFX}s.\${routedByValue}"
          table.field.event.id: event_id
          table.fields.additional.placement: "seq:header:sequence,aggregatetype:header"
      - table: public.outbox_b
        debezium:
          key.converter: org.apache.kafka.connect.storage.StringConverter
          value.converter: io.debezium.converters.BinaryDataConverter
          route.topic.replacement: "${OPFX}b.\${routedByValue}"
          route.tombstone.on.empty.payload: "true"
          table.fields.additional.placement: "blob:header"
      - table: public.outbox_j
        debezium:
          topic.prefix: "${RUN_ID}j"
          outboxd.columns.not.null: "aggregateid,flag"
          key.converter: org.apache.kafka.connect.json.JsonConverter
          value.converter: org.apache.kafka.connect.json.JsonConverter
          route.topic.replacement: "${OPFX}j.\${routedByValue}"
          table.expand.json.payload: "true"
          table.field.event.schema.version: version
          table.fields.additional.placement: "$PLACEMENT_J"
      - table: public.outbox_k
        debezium:
          key.converter: org.apache.kafka.connect.json.JsonConverter
          key.converter.schemas.enable: "true"
          value.converter: org.apache.kafka.connect.json.JsonConverter
          value.converter.schemas.enable: "true"
          route.topic.replacement: "${OPFX}k.\${routedByValue}"
          table.expand.json.payload: "true"
EOF
cat >"$WORK/dbz.json" <<EOF
{
 "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
 "tasks.max": "1",
 "database.hostname": "$PGHOST", "database.port": "$PGPORT", "database.user": "$PGUSER",
 "database.password": "unused", "database.dbname": "$DB",
 "topic.prefix": "$RUN_ID",
 "plugin.name": "pgoutput", "slot.name": "dbz_$RUN_ID", "publication.name": "dbz_pub",
 "publication.autocreate.mode": "disabled",
 "table.include.list": "public.outbox",
 "snapshot.mode": "no_data",
 "exactly.once.support": "required",
 "key.converter": "org.apache.kafka.connect.json.JsonConverter",
 "key.converter.schemas.enable": "false",
 "value.converter": "org.apache.kafka.connect.json.JsonConverter",
 "value.converter.schemas.enable": "false",
 "transforms": "outbox",
 "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
 "transforms.outbox.route.topic.regex": "(?<head>[A-Za-z]+)(?<tail>[\\\\w.-]*)",
 "transforms.outbox.route.topic.replacement": "$DPFX.\${head}.x\${tail}",
 "transforms.outbox.table.expand.json.payload": "true",
 "transforms.outbox.route.tombstone.on.empty.payload": "true",
 "transforms.outbox.table.field.event.timestamp": "ts",
 "transforms.outbox.table.fields.additional.placement": "$PLACEMENT"
}
EOF
cat >"$WORK/dbz_s.json" <<EOF
{
 "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
 "tasks.max": "1",
 "database.hostname": "$PGHOST", "database.port": "$PGPORT", "database.user": "$PGUSER",
 "database.password": "unused", "database.dbname": "$DB",
 "topic.prefix": "${RUN_ID}s",
 "plugin.name": "pgoutput", "slot.name": "dbz2_$RUN_ID", "publication.name": "dbz_pub",
 "publication.autocreate.mode": "disabled",
 "table.include.list": "public.outbox_s",
 "snapshot.mode": "no_data",
 "exactly.once.support": "required",
 "key.converter": "org.apache.kafka.connect.storage.StringConverter",
 "value.converter": "org.apache.kafka.connect.storage.StringConverter",
 "transforms": "outbox",
 "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
 "transforms.outbox.route.by.field": "type",
 "transforms.outbox.route.topic.replacement": "${DPFX}s.\${routedByValue}",
 "transforms.outbox.table.field.event.id": "event_id",
 "transforms.outbox.table.fields.additional.placement": "seq:header:sequence,aggregatetype:header"
}
EOF
cat >"$WORK/dbz_b.json" <<EOF
{
 "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
 "tasks.max": "1",
 "database.hostname": "$PGHOST", "database.port": "$PGPORT", "database.user": "$PGUSER",
 "database.password": "unused", "database.dbname": "$DB",
 "topic.prefix": "${RUN_ID}b",
 "plugin.name": "pgoutput", "slot.name": "dbz3_$RUN_ID", "publication.name": "dbz_pub",
 "publication.autocreate.mode": "disabled",
 "table.include.list": "public.outbox_b",
 "snapshot.mode": "no_data",
 "exactly.once.support": "required",
 "key.converter": "org.apache.kafka.connect.storage.StringConverter",
 "value.converter": "io.debezium.converters.BinaryDataConverter",
 "transforms": "outbox",
 "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
 "transforms.outbox.route.topic.replacement": "${DPFX}b.\${routedByValue}",
 "transforms.outbox.route.tombstone.on.empty.payload": "true",
 "transforms.outbox.table.fields.additional.placement": "blob:header"
}
EOF
cat >"$WORK/dbz_j.json" <<EOF
{
 "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
 "tasks.max": "1",
 "database.hostname": "$PGHOST", "database.port": "$PGPORT", "database.user": "$PGUSER",
 "database.password": "unused", "database.dbname": "$DB",
 "topic.prefix": "${RUN_ID}j",
 "plugin.name": "pgoutput", "slot.name": "dbz4_$RUN_ID", "publication.name": "dbz_pub",
 "publication.autocreate.mode": "disabled",
 "table.include.list": "public.outbox_j",
 "snapshot.mode": "no_data",
 "exactly.once.support": "required",
 "key.converter": "org.apache.kafka.connect.json.JsonConverter",
 "value.converter": "org.apache.kafka.connect.json.JsonConverter",
 "transforms": "outbox",
 "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
 "transforms.outbox.route.topic.replacement": "${DPFX}j.\${routedByValue}",
 "transforms.outbox.table.expand.json.payload": "true",
 "transforms.outbox.table.field.event.schema.version": "version",
 "transforms.outbox.table.fields.additional.placement": "$PLACEMENT_J"
}
EOF
cat >"$WORK/dbz_k.json" <<EOF
{
 "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
 "tasks.max": "1",
 "database.hostname": "$PGHOST", "database.port": "$PGPORT", "database.user": "$PGUSER",
 "database.password": "unused", "database.dbname": "$DB",
 "topic.prefix": "${RUN_ID}k",
 "plugin.name": "pgoutput", "slot.name": "dbz5_$RUN_ID", "publication.name": "dbz_pub",
 "publication.autocreate.mode": "disabled",
 "table.include.list": "public.outbox_k",
 "snapshot.mode": "no_data",
 "exactly.once.support": "required",
 "key.converter": "org.apache.kafka.connect.json.JsonConverter",
 "key.converter.schemas.enable": "true",
 "value.converter": "org.apache.kafka.connect.json.JsonConverter",
 "value.converter.schemas.enable": "true",
 "transforms": "outbox",
 "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
 "transforms.outbox.route.topic.replacement": "${DPFX}k.\${routedByValue}",
 "transforms.outbox.table.expand.json.payload": "true"
}
EOF
"$OUTBOXD_BIN" check --create -c "$WORK/outboxd.yaml" >"$WORK/check.log" 2>&1 || {
    cat "$WORK/check.log" >&2
    fail "outboxd check failed"
}
# What check says of the schemas: JsonConverter's default schemas.enable
# (outbox_j, not outbox_k, which sets it); outboxd.columns.not.null
# compared with the catalog's NOT NULL columns a schema shows (outbox_j's
# list right, then wrong); columns of a type without a schema (outbox_d, a
# domain payload and a timestamptz envelope field, only checked).
if grep -q "outboxd.columns.not.null" "$WORK/check.log"; then
    cat "$WORK/check.log" >&2
    fail "check warned about outboxd.columns.not.null with the right list"
fi
grep -q "table public.outbox_j: JsonConverter without schemas.enable writes" "$WORK/check.log" &&
    ! grep -q "table public.outbox_k: JsonConverter without" "$WORK/check.log" || {
    cat "$WORK/check.log" >&2
    fail "check did not say (only) of outbox_j that it writes schemas by default"
}
sed 's/outboxd.columns.not.null: "aggregateid,flag"/outboxd.columns.not.null: "flag,region"/' \
    "$WORK/outboxd.yaml" >"$WORK/notnull.yaml"
cat >>"$WORK/notnull.yaml" <<EOF
      - table: public.outbox_d
        debezium:
          topic.prefix: "${RUN_ID}d"
          key.converter: org.apache.kafka.connect.json.JsonConverter
          value.converter: org.apache.kafka.connect.json.JsonConverter
          route.topic.replacement: "${OPFX}d.\${routedByValue}"
          table.fields.additional.placement: "at:envelope"
EOF
"$OUTBOXD_BIN" check -c "$WORK/notnull.yaml" >"$WORK/check_nn.log" 2>&1 || {
    cat "$WORK/check_nn.log" >&2
    fail "outboxd check failed on a wrong outboxd.columns.not.null (a warning, not a problem)"
}
grep -q 'table public.outbox_j: NOT NULL column(s) aggregateid not in outboxd.columns.not.null; NULL-able column(s) region in it.*set outboxd.columns.not.null: "aggregateid,flag"' \
    "$WORK/check_nn.log" || {
    cat "$WORK/check_nn.log" >&2
    fail "no warning naming outbox_j's NOT NULL columns"
}
! grep -q "table public.outbox_d: payload column" "$WORK/check_nn.log" &&
    grep -q "table public.outbox_d: envelope column 'at' is timestamp with time zone.*dead-letter" "$WORK/check_nn.log" || {
    cat "$WORK/check_nn.log" >&2
    fail "no warning naming outbox_d's columns without a schema"
}

if [ -z "$(cat "$STACK_DIR/connect/connect.pid" 2>/dev/null)" ] || ! kill -0 "$(cat "$STACK_DIR/connect/connect.pid")" 2>/dev/null; then
    STARTED_CONNECT=1
fi
t0=$(date +%s)
"$DBZ" start
"$DBZ" register "$CONNECTOR" "$WORK/dbz.json"
"$DBZ" register "${CONNECTOR}_s" "$WORK/dbz_s.json"
"$DBZ" register "${CONNECTOR}_b" "$WORK/dbz_b.json"
"$DBZ" register "${CONNECTOR}_j" "$WORK/dbz_j.json"
"$DBZ" register "${CONNECTOR}_k" "$WORK/dbz_k.json"
log "Debezium connector RUNNING after $(($(date +%s) - t0)) s"
start_relay "$WORK/outboxd.yaml" relay

# The rows: deterministic from the seed (setseed), written while both run;
# src is not in the publication.
psql_db "$DB" <<SQL
SELECT setseed($SEED);
CREATE TABLE src AS
SELECT i,
       md5('dbz' || i)::uuid AS id,
       (ARRAY['order', 'customer', 'Shipment', 'invoice_v2'])[1 + floor(random() * 4)::int] AS aggregatetype,
       CASE WHEN i % 50 = 7 THEN NULL ELSE 'agg-' || (random() * 200)::int || CASE WHEN i % 3 = 0 THEN '-ké' ELSE '' END END AS aggregateid,
       (ARRAY['Created', 'Updated', 'Cancelled'])[1 + i % 3] AS type,
       CASE WHEN i % 40 = 3 THEN NULL
            -- Debezium's schema inference fails (integers and fractions in
            -- one array), or does not apply (a jsonb scalar): the string.
            WHEN i % 13 = 6 THEN jsonb_build_object('orderId', i, 'prices', jsonb_build_array(10, 12.5))
            WHEN i % 17 = 8 THEN to_jsonb('scalar-' || i)
            ELSE jsonb_build_object(
                'orderId', i,
                'amount', (random() * 100000)::int,
                'price', round((random() * 1000)::numeric, 2),
                'ratio', (i % 8) / 8.0,
                'big', 9007199254740993 + i,
                'name', (ARRAY['ké', 'Müller', '日本語', 'plain', E'tab\there "quoted" \\\\ back'])[1 + i % 5],
                'active', i % 2 = 0,
                'note', CASE WHEN i % 4 = 0 THEN NULL ELSE 'n' || i END,
                'items', jsonb_build_array(i, i + 1, i + 2),
                'tags', CASE WHEN i % 11 = 5 THEN '[]'::jsonb ELSE jsonb_build_array('t' || i % 3) END,
                'lines', jsonb_build_array(jsonb_build_object('sku', 's' || i, 'qty', i % 4), jsonb_build_object('sku', 't' || i, 'qty', 1)),
                'address', jsonb_build_object('city', 'Zürich', 'zip', (1000 + i)::text))
       END AS payload,
       CASE WHEN i % 7 = 0 THEN NULL ELSE 'tenant-' || (i % 5) END AS tenant,
       i % 3 = 1 AS flag,
       CASE WHEN i % 6 = 0 THEN NULL ELSE (ARRAY['eu', 'us', 'apac-東'])[1 + i % 3] END AS region,
       CASE WHEN i % 9 = 0 THEN NULL ELSE i % 4 END AS version,
       CASE WHEN i % 5 = 0 THEN i % 3 END AS part,
       timestamp '2026-01-01 00:00:00' + i * interval '1.234567 second' AS ts,
       -- not i * 1e20: JDK 17's Double.toString prints one digit more than
       -- the shortest for some of those (README), which outboxd does not copy
       (ARRAY[NULL, i / 8.0, i * 1e-5, i * 1e9, i::float8, -0.1 * i])[1 + i % 6]::float8 AS weight,
       -- bytea: NULL, empty, NUL and high bytes, a few hundred bytes
       CASE WHEN i % 10 = 0 THEN NULL
            WHEN i % 13 = 4 THEN ''::bytea
            WHEN i % 7 = 2 THEN decode(repeat(md5('b' || i), 10), 'hex') || '\x00ff'::bytea
            ELSE decode(md5('b' || i), 'hex') END AS bin
FROM generate_series(1, $N) AS i;
SQL
# outbox_j's schema version: Debezium keeps one value schema per version
# and stops its task ("Struct schemas do not match") when a row of that
# version has another payload schema, so the version follows the payload's
# shape in src (NULL, the array Debezium does not expand, the scalar, the
# object with or without its null "note" and its empty "tags").
J_VERSION="CASE WHEN payload IS NULL THEN 1 WHEN i % 13 = 6 THEN 2 WHEN i % 17 = 8 THEN 3 ELSE 10 + (i % 4 = 0)::int + 2 * (i % 11 = 5)::int END"
for ((t = 0; t < N / PER_TXN; t++)); do
    w="i > $((t * PER_TXN)) AND i <= $(((t + 1) * PER_TXN))"
    echo "BEGIN;"
    echo "INSERT INTO outbox SELECT id, aggregatetype, aggregateid, type, payload, tenant, flag, region, version, part, ts, weight, bin FROM src WHERE $w ORDER BY i;"
    echo "INSERT INTO outbox_b SELECT md5('b' || id)::uuid, aggregatetype, coalesce(aggregateid, 'none'), type, CASE WHEN i % 40 = 3 THEN NULL ELSE bin END, CASE WHEN i % 3 = 0 THEN NULL ELSE decode(md5('h' || i), 'hex') END FROM src WHERE $w ORDER BY i;"
    echo "INSERT INTO outbox_j SELECT md5('j' || id)::uuid, aggregatetype, coalesce(aggregateid, 'none'), type, payload, flag, region, $J_VERSION, weight, bin FROM src WHERE $w ORDER BY i;"
    echo "INSERT INTO outbox_k SELECT md5('k' || id)::uuid, aggregatetype, aggregateid, type, payload FROM src WHERE $w ORDER BY i;"
    echo "INSERT INTO outbox_s SELECT md5('s' || id)::uuid, aggregatetype, coalesce(aggregateid, 'none'), type, payload, i::int8 * 1000000007 FROM src WHERE $w ORDER BY i;"
    echo "COMMIT;"
done >"$WORK/inserts.sql"
psql_db "$DB" -f "$WORK/inserts.sql" >/dev/null
log "wrote $N rows; comparing"

log "outbox (JsonConverter, expanded payload, envelope, partition, event timestamp):"
"$PY" "$(dirname "$0")/dbz_compare.py" compare "$KAFKA_BOOTSTRAP" "$N" 600 "$DPFX" "$OPFX" \
    "${SUFFIXES[@]}" | tee "$WORK/compare.log" >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "outbox: records differ (see above)"
log "outbox_s (StringConverter, jsonb text, routed by type; timestamps not compared):"
DBZ_COMPARE_NO_TIMESTAMP=1 "$PY" "$(dirname "$0")/dbz_compare.py" compare "$KAFKA_BOOTSTRAP" "$N" 600 \
    "$DPFX" "$OPFX" "${SUFFIXES_S[@]}" | tee "$WORK/compare_s.log" >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "outbox_s: records differ (see above)"
log "outbox_b (BinaryDataConverter, bytea payload, bytea header; timestamps not compared):"
DBZ_COMPARE_NO_TIMESTAMP=1 "$PY" "$(dirname "$0")/dbz_compare.py" compare "$KAFKA_BOOTSTRAP" "$N" 600 \
    "$DPFX" "$OPFX" "${SUFFIXES_B[@]}" | tee "$WORK/compare_b.log" >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "outbox_b: records differ (see above)"
log "outbox_j (JsonConverter, schemas.enable by default: schema and payload, envelope struct; timestamps not compared):"
DBZ_COMPARE_NO_TIMESTAMP=1 "$PY" "$(dirname "$0")/dbz_compare.py" compare "$KAFKA_BOOTSTRAP" "$N" 600 \
    "$DPFX" "$OPFX" "${SUFFIXES_J[@]}" | tee "$WORK/compare_j.log" >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "outbox_j: records differ (see above)"
log "outbox_k (JsonConverter, schemas.enable true, payload alone, NULL keys and payloads; timestamps not compared):"
DBZ_COMPARE_NO_TIMESTAMP=1 "$PY" "$(dirname "$0")/dbz_compare.py" compare "$KAFKA_BOOTSTRAP" "$N" 600 \
    "$DPFX" "$OPFX" "${SUFFIXES_K[@]}" | tee "$WORK/compare_k.log" >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "outbox_k: records differ (see above)"
grep -q " 0 differences" "$WORK/compare_j.log" || fail "no comparison summary (outbox_j)"
grep -q " 0 differences" "$WORK/compare_k.log" || fail "no comparison summary (outbox_k)"
grep -q " 0 differences" "$WORK/compare_b.log" || fail "no comparison summary (outbox_b)"
grep -q " 0 differences" "$WORK/compare.log" || fail "no comparison summary (outbox)"
grep -q " 0 differences" "$WORK/compare_s.log" || fail "no comparison summary (outbox_s)"
stop_relay_ok "$RELAY_PID" "outboxd"
if grep -q "dead-letter topic" "$WORK/relay.log"; then fail "outboxd dead-lettered rows"; fi
log "PASS: 5 x $N records identical field for field"

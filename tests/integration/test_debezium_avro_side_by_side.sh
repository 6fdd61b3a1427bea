#!/usr/bin/env bash
# ctest: lock registry,debezium -- the shared schema registry (test_registry_outage stops it; its in-memory storage fails concurrent registrations) and the stack's one Kafka Connect worker
# Debezium drop-in through an AvroConverter, side by side: Debezium 3.0.8's
# PostgreSQL connector with the outbox EventRouter and Apicurio's
# AvroConverter 2.4.2 writing Confluent's wire format (as-confluent,
# contentId) against the test registry (tests/stack/registry.sh), and
# outboxd with the same properties in its tables[].debezium block against
# the registry's Confluent API, on the same rows of one database (a slot
# each). Records must match field for field: topic, partition, key and value
# as (schema registered under the id, Avro datum bytes), headers, timestamp,
# order per partition; outboxd's ids must be registered under <topic>-key and
# <topic>-value (dbz_compare.py with DBZ_COMPARE_REGISTRY).
# Two tables, a connector each:
# - outbox_x: expanded JSON payload (a record inferred from the JSON: nested
#   records, arrays of ints, strings, non-ASCII, longs, doubles, booleans,
#   null fields left out), key a nullable text column (["null","string"],
#   NULL keys: no key, on rows with a partition column, since key-less
#   records are spread differently by Java's sticky partitioner and
#   librdkafka's), NULL payloads (null values), routed by a two-group regex,
#   header placements, a partition column, the event timestamp;
# - outbox_v: the payload as Debezium's io.debezium.data.Json string in an
#   envelope {payload, regionName, version, flag, sig (bytea: Avro bytes)}
#   named after topic.prefix,
#   table and the route, with table.field.event.schema.version (connect.version
#   of the value record: 1, 2, 3 or none), key a NOT NULL column ("string",
#   outboxd.columns.not.null), NULL payloads inside the envelope.
# The test registry (Apicurio, in memory) fails registrations that race
# ("No artifact with ID ..." from the converter, HTTP 500 to outboxd), and
# the converter's task then fails for good: the rows of the two tables are
# written one table after the other, each once Debezium's records of the
# one before are all out, and outboxd starts after Debezium is done (it
# reads its slot from the start, so this changes none of its records).
# Slow (a Connect JVM): ctest label "sidebyside".
source "$(dirname "$0")/lib.sh"
# shellcheck disable=SC1091
source "$STACK_DIR/registry/env"
ROOT=${OUTBOXD_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
DBZ=$ROOT/tests/stack/debezium.sh
PY=$("$ROOT/tests/stack/pyvenv.sh")
N=${DBZ_ROWS:-600}
PER_TXN=20
SEED=${DBZ_SEED:-0.17}
DB="dbza_$RUN_ID"
DPFX="${RUN_ID}d"
OPFX="${RUN_ID}o"
CONNECTOR="avro_$RUN_ID"
# Apicurio's own API, where its converter registers (the Confluent API is
# under /apis/ccompat/v7 of the same server).
APICURIO_URL=${REGISTRY_URL%/apis/ccompat/v7}/apis/registry/v2

extra_cleanup() {
    "$DBZ" delete "${CONNECTOR}_x" >/dev/null 2>&1 || true
    "$DBZ" delete "${CONNECTOR}_v" >/dev/null 2>&1 || true
    [ -n "${STARTED_CONNECT:-}" ] && "$DBZ" stop >/dev/null 2>&1
    for p in "${RELAY_PIDS[@]}"; do own_child "$p" && kill -9 "$p" 2>/dev/null || true; done
    for _ in $(seq 1 20); do
        [ "$(psql_db postgres -c "SELECT count(*) FROM pg_replication_slots WHERE database = '$DB' AND active")" = 0 ] && break
        sleep 0.5
    done
    psql_db postgres -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '$DB' AND active" >/dev/null 2>&1 || true
    sleep 0.5
    drop_source "$DB" "obx_$RUN_ID"
    drop_source "$DB" "dbzx_$RUN_ID"
    drop_source "$DB" "dbzv_$RUN_ID"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}

log "seed $SEED, $N rows per table in transactions of $PER_TXN; registry $REGISTRY_URL"
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" <<'SQL'
CREATE TABLE outbox_x (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text,
    type text NOT NULL,
    payload jsonb,
    tenant text,
    part int4,
    ts timestamp(6) NOT NULL);
CREATE TABLE outbox_v (
    id uuid PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload jsonb,
    region text,
    version int4,
    flag boolean,
    sv int4,
    ts timestamp(6) NOT NULL,
    sig bytea);
CREATE PUBLICATION dbza_pub FOR TABLE outbox_x, outbox_v;
SQL
psql_db "$DB" -c "SELECT pg_create_logical_replication_slot('dbzx_$RUN_ID', 'pgoutput')" \
    -c "SELECT pg_create_logical_replication_slot('dbzv_$RUN_ID', 'pgoutput')" >/dev/null

SUFFIXES_X=(.order.x .customer.x .Shipment.x)
SUFFIXES_V=(v.Created v.Updated v.Cancelled)
TOPICS=()
for s in "${SUFFIXES_X[@]}" "${SUFFIXES_V[@]}"; do TOPICS+=("$DPFX$s" "$OPFX$s"); done
"$PY" "$(dirname "$0")/dbz_compare.py" create "$KAFKA_BOOTSTRAP" 3 "${TOPICS[@]}"

# Apicurio's converter, set to write what Confluent's writes: the id in the
# value (no headers), Confluent's 4-byte id (as-confluent) being the
# Confluent API's id (contentId), the schema inline (dereference-schema; else
# Apicurio 2.4.2 fails on a schema that is not a record: "Not a record").
# Retries ride out the in-memory registry's lock timeouts when several
# clients register at once.
conv() {
    local c
    for c in key value; do
        cat <<EOF
 "$c.converter": "io.apicurio.registry.utils.converter.AvroConverter",
 "$c.converter.apicurio.registry.url": "$APICURIO_URL",
 "$c.converter.apicurio.registry.auto-register": "true",
 "$c.converter.apicurio.registry.as-confluent": "true",
 "$c.converter.apicurio.registry.use-id": "contentId",
 "$c.converter.apicurio.registry.headers.enabled": "false",
 "$c.converter.apicurio.registry.dereference-schema": "true",
 "$c.converter.apicurio.registry.retry-count": "10",
 "$c.converter.apicurio.registry.retry-backoff-ms": "500",
EOF
    done
}
connector() { # name table slot topic.prefix
    cat <<EOF
{
 "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
 "tasks.max": "1",
 "database.hostname": "$PGHOST", "database.port": "$PGPORT", "database.user": "$PGUSER",
 "database.password": "unused", "database.dbname": "$DB",
 "topic.prefix": "$4",
 "plugin.name": "pgoutput", "slot.name": "$3", "publication.name": "dbza_pub",
 "publication.autocreate.mode": "disabled",
 "table.include.list": "public.$2",
 "snapshot.mode": "no_data",
 "exactly.once.support": "required",
$(conv)
 "transforms": "outbox",
 "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
EOF
}
PLACE_X="type:header:eventType,tenant:header,part:partition"
PLACE_V="region:envelope:regionName,version:envelope,flag:envelope,type:header:eventType,sig:envelope"
{
    connector x outbox_x "dbzx_$RUN_ID" "dbzx"
    cat <<EOF
 "transforms.outbox.route.topic.regex": "(?<head>[A-Za-z]+)(?<tail>.*)",
 "transforms.outbox.route.topic.replacement": "$DPFX.\${head}.x\${tail}",
 "transforms.outbox.table.expand.json.payload": "true",
 "transforms.outbox.table.field.event.timestamp": "ts",
 "transforms.outbox.table.fields.additional.placement": "$PLACE_X"
}
EOF
} >"$WORK/dbz_x.json"
{
    connector v outbox_v "dbzv_$RUN_ID" "shop"
    cat <<EOF
 "transforms.outbox.route.by.field": "type",
 "transforms.outbox.route.topic.replacement": "${DPFX}v.\${routedByValue}",
 "transforms.outbox.table.field.event.schema.version": "sv",
 "transforms.outbox.table.field.event.timestamp": "ts",
 "transforms.outbox.table.fields.additional.placement": "$PLACE_V"
}
EOF
} >"$WORK/dbz_v.json"

cat >"$WORK/outboxd.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
  properties:
    partitioner: murmur2_random
relay:
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
schema_registry:
  url: "$REGISTRY_URL"
sources:
  - name: dbza
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "obx_$RUN_ID"
    publication: dbza_pub
    create_publication: false
    tables:
      - table: public.outbox_x
        debezium:
          key.converter: io.apicurio.registry.utils.converter.AvroConverter
          key.converter.apicurio.registry.as-confluent: "true"
          key.converter.apicurio.registry.use-id: contentId
          value.converter: io.apicurio.registry.utils.converter.AvroConverter
          value.converter.apicurio.registry.as-confluent: "true"
          value.converter.apicurio.registry.use-id: contentId
          value.converter.apicurio.registry.headers.enabled: "false"
          transforms.outbox.type: io.debezium.transforms.outbox.EventRouter
          transforms.outbox.route.topic.regex: "(?<head>[A-Za-z]+)(?<tail>.*)"
          transforms.outbox.route.topic.replacement: "$OPFX.\${head}.x\${tail}"
          transforms.outbox.table.expand.json.payload: "true"
          transforms.outbox.table.field.event.timestamp: ts
          transforms.outbox.table.fields.additional.placement: "$PLACE_X"
      - table: public.outbox_v
        debezium:
          key.converter: io.apicurio.registry.utils.converter.AvroConverter
          value.converter: io.confluent.connect.avro.AvroConverter
          topic.prefix: shop
          outboxd.columns.not.null: "aggregateid"
          route.by.field: type
          route.topic.replacement: "${OPFX}v.\${routedByValue}"
          table.field.event.schema.version: sv
          table.field.event.timestamp: ts
          table.fields.additional.placement: "$PLACE_V"
EOF
"$OUTBOXD_BIN" check --create -c "$WORK/outboxd.yaml" >"$WORK/check.log" 2>&1 || {
    cat "$WORK/check.log" >&2
    fail "outboxd check failed"
}

if [ -z "$(cat "$STACK_DIR/connect/connect.pid" 2>/dev/null)" ] || ! kill -0 "$(cat "$STACK_DIR/connect/connect.pid")" 2>/dev/null; then
    STARTED_CONNECT=1
fi
t0=$(date +%s)
"$DBZ" start
"$DBZ" register "${CONNECTOR}_x" "$WORK/dbz_x.json"
"$DBZ" register "${CONNECTOR}_v" "$WORK/dbz_v.json"
log "Debezium connectors RUNNING after $(($(date +%s) - t0)) s"

psql_db "$DB" <<SQL
SELECT setseed($SEED);
CREATE TABLE src AS
SELECT i,
       md5('dbza' || i)::uuid AS id,
       (ARRAY['order', 'customer', 'Shipment'])[1 + floor(random() * 3)::int] AS aggregatetype,
       CASE WHEN i % 50 = 10 THEN NULL ELSE 'agg-' || (random() * 200)::int || CASE WHEN i % 3 = 0 THEN '-ké' ELSE '' END END AS aggregateid,
       (ARRAY['Created', 'Updated', 'Cancelled'])[1 + i % 3] AS type,
       CASE WHEN i % 40 = 3 THEN NULL
            ELSE jsonb_build_object(
                'orderId', i,
                'amount', (random() * 100000)::int,
                'price', round((random() * 1000)::numeric, 2) + 0.5,
                'big', 9007199254740993 + i,
                'name', (ARRAY['ké', 'Müller', '日本語', 'plain', E'tab\there "quoted" \\\\ back'])[1 + i % 5],
                'active', i % 2 = 0,
                'note', CASE WHEN i % 4 = 0 THEN NULL ELSE 'n' || i END,
                'items', jsonb_build_array(i, i + 1, i + 2),
                'address', jsonb_build_object('city', 'Zürich', 'zip', (1000 + i)::text))
       END AS payload,
       CASE WHEN i % 7 = 0 THEN NULL ELSE 'tenant-' || (i % 5) END AS tenant,
       CASE WHEN i % 5 = 0 THEN i % 3 END AS part,
       i % 3 = 1 AS flag,
       CASE WHEN i % 6 = 0 THEN NULL ELSE (ARRAY['eu', 'us', 'apac-東'])[1 + i % 3] END AS region,
       CASE WHEN i % 9 = 0 THEN NULL ELSE i % 4 END AS version,
       CASE WHEN i % 11 = 0 THEN NULL ELSE 1 + (i / 7) % 3 END AS sv,
       timestamp '2026-01-01 00:00:00' + i * interval '1.234567 second' AS ts,
       CASE WHEN i % 10 = 0 THEN NULL WHEN i % 13 = 4 THEN ''::bytea ELSE decode(md5('s' || i), 'hex') END AS sig
FROM generate_series(1, $N) AS i;
SQL
for tbl in x v; do
    for ((t = 0; t < N / PER_TXN; t++)); do
        w="i > $((t * PER_TXN)) AND i <= $(((t + 1) * PER_TXN))"
        echo "BEGIN;"
        if [ $tbl = x ]; then
            echo "INSERT INTO outbox_x SELECT id, aggregatetype, aggregateid, type, payload, tenant, part, ts FROM src WHERE $w ORDER BY i;"
        else
            echo "INSERT INTO outbox_v SELECT md5('v' || id)::uuid, aggregatetype, coalesce(aggregateid, 'none'), type, payload, region, version, flag, sv, ts, sig FROM src WHERE $w ORDER BY i;"
        fi
        echo "COMMIT;"
    done >"$WORK/inserts_$tbl.sql"
done
wait_dbz() { # suffixes...
    "$PY" "$(dirname "$0")/dbz_compare.py" wait "$KAFKA_BOOTSTRAP" "$N" 300 "$DPFX" "$@" >&2 || {
        "$DBZ" status "${CONNECTOR}_x" >&2
        "$DBZ" status "${CONNECTOR}_v" >&2
        fail "Debezium did not write its $N records (connector status above)"
    }
}
psql_db "$DB" -f "$WORK/inserts_x.sql" >/dev/null
wait_dbz "${SUFFIXES_X[@]}"
psql_db "$DB" -f "$WORK/inserts_v.sql" >/dev/null
wait_dbz "${SUFFIXES_V[@]}"
log "wrote 2 x $N rows, Debezium's records are out after $(($(date +%s) - t0)) s; starting outboxd"
start_relay "$WORK/outboxd.yaml" relay

export DBZ_COMPARE_REGISTRY=$REGISTRY_URL
log "outbox_x (AvroConverter, expanded payload as a record, nullable key, tombstones):"
"$PY" "$(dirname "$0")/dbz_compare.py" compare "$KAFKA_BOOTSTRAP" "$N" 600 "$DPFX" "$OPFX" \
    "${SUFFIXES_X[@]}" | tee "$WORK/compare_x.log" >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "outbox_x: records differ (see above)"
log "outbox_v (AvroConverter, envelope with schema versions, NOT NULL key):"
"$PY" "$(dirname "$0")/dbz_compare.py" compare "$KAFKA_BOOTSTRAP" "$N" 600 "$DPFX" "$OPFX" \
    "${SUFFIXES_V[@]}" | tee "$WORK/compare_v.log" >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "outbox_v: records differ (see above)"
grep -q " 0 differences" "$WORK/compare_x.log" || fail "no comparison summary (outbox_x)"
grep -q " 0 differences" "$WORK/compare_v.log" || fail "no comparison summary (outbox_v)"
# What the comparison covered, so that it cannot pass on records that lack
# it: schemas of several shapes, tombstones, and the three schema versions.
grep -q "'tombstones': [1-9]" "$WORK/compare_x.log" || fail "outbox_x: no tombstones compared"
grep -q "'connect_versions': \[1, 2, 3\]" "$WORK/compare_v.log" ||
    fail "outbox_v: the value records do not carry connect.version 1, 2 and 3"
grep -q "'unversioned': [1-9]" "$WORK/compare_v.log" || fail "outbox_v: no record without a version"
stop_relay_ok "$RELAY_PID" "outboxd"
if grep -q "dead-letter topic" "$WORK/relay.log"; then fail "outboxd dead-lettered rows"; fi
log "PASS: 2 x $N records identical field for field through the AvroConverter"

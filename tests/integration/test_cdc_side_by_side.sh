#!/usr/bin/env bash
# ctest: lock registry,debezium -- the shared schema registry (test_registry_outage stops it; its in-memory storage fails concurrent registrations) and the stack's one Kafka Connect worker
# CDC side by side: Debezium 3.0.8's PostgreSQL connector in plain CDC mode
# (Kafka Connect 3.9.1, distributed, exactly.once.source.support=enabled;
# tests/stack/debezium.sh; no outbox router, its own slot and publication,
# JsonConverter with schemas.enable=true, its default) and outboxd with the
# same tables as `mode: cdc`, `format: json` (its own slot and publication)
# on the same rows of one database. Both use the same topic prefix, so the
# key and value bytes can be equal; Debezium's topics are renamed by a
# RegexRouter (<run>d.<topic>) so that both can share one broker. The
# records must be the same (tests/integration/cdc_compare.py): topic,
# partition (3 partitions, murmur2 on both sides), key bytes, headers, value
# schema and payload member by member, and the order within each partition;
# the fields allowed to differ are listed in cdc_compare.py with a reason.
# Two tables with the same columns (int, bigint, smallint, numeric(12,3),
# double, text, varchar, boolean, timestamptz, timestamp(6), date, uuid,
# jsonb, bytea, int[], text[], a TOASTed text on some rows, NULLs,
# non-ASCII): t_def (default replica identity) and t_full (REPLICA IDENTITY
# FULL); inserts, updates (values to NULL and back, the TOASTed column left
# unchanged: Debezium's placeholder), primary-key updates (delete, tombstone,
# create; one of a row whose TOASTed value is untouched: with FULL its create
# carries the value, as Debezium's), deletes (with tombstones), transactions
# touching both tables. A third table, t_ck, has a composite primary key
# (k2, k1) in the other order than its columns (k1, k2): the key is
# {k2, k1} on both sides (key bytes, partitions, key-update headers).
# The same again with Avro: a second connector with Apicurio's AvroConverter
# (Confluent wire format, as-confluent) and a second outboxd (format: avro,
# schema registry), compared as (registered schema, decoded datum).
# CDC_DBZ_AVRO=0 skips that part.
# Slow (a Connect JVM): ctest label "sidebyside".
source "$(dirname "$0")/lib.sh"
# shellcheck disable=SC1091
source "$STACK_DIR/registry/env"
ROOT=${OUTBOXD_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
DBZ=$ROOT/tests/stack/debezium.sh
PY=$("$ROOT/tests/stack/pyvenv.sh")
N=${CDC_DBZ_ROWS:-200}
PER_TXN=20
SEED=${CDC_DBZ_SEED:-0.31}
DB="cdcdbz_$RUN_ID"
PFX="${RUN_ID}c"
DRENAME="${RUN_ID}d."
CONNECTOR="cdc_$RUN_ID"
TOPICS=("$PFX.public.t_def" "$PFX.public.t_full" "$PFX.public.t_ck")
# Avro: a second connector (Apicurio's AvroConverter, Confluent wire format)
# and a second outboxd (format: avro, fixed topics) on slots of their own.
AVRO=${CDC_DBZ_AVRO:-1}
DARENAME="${RUN_ID}a."
OAPFX="${RUN_ID}b."
APICURIO_URL=${REGISTRY_URL%/apis/ccompat/v7}/apis/registry/v2

extra_cleanup() {
    "$DBZ" delete "$CONNECTOR" >/dev/null 2>&1 || true
    "$DBZ" delete "${CONNECTOR}_a" >/dev/null 2>&1 || true
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
    drop_source "$DB" "obxa_$RUN_ID"
    drop_source "$DB" "dbza_$RUN_ID"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}

log "seed $SEED, $N rows per table in transactions of $PER_TXN"
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" <<'SQL'
CREATE TABLE t_def (
    id integer PRIMARY KEY,
    b bigint,
    s smallint,
    n numeric(12,3),
    dp double precision,
    t text,
    v varchar(40),
    f boolean,
    tz timestamptz,
    tz3 timestamptz(3),
    ts timestamp(6),
    d date,
    u uuid,
    j jsonb,
    by bytea,
    ia integer[],
    ta text[],
    big text,
    nn text NOT NULL DEFAULT 'dflt');
CREATE TABLE t_full (LIKE t_def INCLUDING ALL);
ALTER TABLE t_full REPLICA IDENTITY FULL;
CREATE TABLE t_ck (k1 text, k2 integer, v text, PRIMARY KEY (k2, k1));
CREATE PUBLICATION dbz_pub FOR TABLE t_def, t_full, t_ck;
SQL
psql_db "$DB" -c "SELECT pg_create_logical_replication_slot('dbz_$RUN_ID', 'pgoutput')" \
    -c "SELECT pg_create_logical_replication_slot('dbza_$RUN_ID', 'pgoutput')" >/dev/null

TOPICS_ALL=()
for t in "${TOPICS[@]}"; do TOPICS_ALL+=("$t" "$DRENAME$t"); done
"$PY" "$(dirname "$0")/dbz_compare.py" create "$KAFKA_BOOTSTRAP" 3 "${TOPICS_ALL[@]}"
# Avro keys carry each side's schema id, so their bytes (and murmur2
# partitions) differ by construction: one partition each.
TOPICS_A=()
for t in "${TOPICS[@]}"; do TOPICS_A+=("$DARENAME$t" "$OAPFX$t"); done
"$PY" "$(dirname "$0")/dbz_compare.py" create "$KAFKA_BOOTSTRAP" 1 "${TOPICS_A[@]}"

cat >"$WORK/outboxd.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
  properties:
    # Java's producer partitioner: the same key bytes, the same partition.
    partitioner: murmur2_random
relay:
  commit_interval_ms: 50
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
sources:
  - name: cdcdbz
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "obx_$RUN_ID"
    publication: "obx_pub"
    tables:
      - table: public.t_def
        mode: cdc
        snapshot: never
        format: json
        topic_prefix: "$PFX"
      - table: public.t_full
        mode: cdc
        snapshot: never
        format: json
        topic_prefix: "$PFX"
      - table: public.t_ck
        mode: cdc
        snapshot: never
        format: json
        topic_prefix: "$PFX"
EOF
cat >"$WORK/dbz.json" <<EOF
{
 "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
 "tasks.max": "1",
 "database.hostname": "$PGHOST", "database.port": "$PGPORT", "database.user": "$PGUSER",
 "database.password": "unused", "database.dbname": "$DB",
 "topic.prefix": "$PFX",
 "plugin.name": "pgoutput", "slot.name": "dbz_$RUN_ID", "publication.name": "dbz_pub",
 "publication.autocreate.mode": "disabled",
 "table.include.list": "public.t_def,public.t_full,public.t_ck",
 "snapshot.mode": "no_data",
 "exactly.once.support": "required",
 "key.converter": "org.apache.kafka.connect.json.JsonConverter",
 "key.converter.schemas.enable": "true",
 "value.converter": "org.apache.kafka.connect.json.JsonConverter",
 "value.converter.schemas.enable": "true",
 "transforms": "rename",
 "transforms.rename.type": "org.apache.kafka.connect.transforms.RegexRouter",
 "transforms.rename.regex": "(.*)",
 "transforms.rename.replacement": "$DRENAME\$1"
}
EOF
cat >"$WORK/outboxd_a.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-a-$RUN_ID"
schema_registry:
  url: "$REGISTRY_URL"
relay:
  commit_interval_ms: 50
  checkpoint_topic: "$RUN_ID.checkpoints-a"
  dead_letter_topic: "$RUN_ID.dlt"
sources:
  - name: cdcdbz
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "obxa_$RUN_ID"
    publication: "obx_pub"
    tables:
      - table: public.t_def
        mode: cdc
        snapshot: never
        topic_prefix: "$PFX"
        topic: "$OAPFX$PFX.public.t_def"
      - table: public.t_full
        mode: cdc
        snapshot: never
        topic_prefix: "$PFX"
        topic: "$OAPFX$PFX.public.t_full"
      - table: public.t_ck
        mode: cdc
        snapshot: never
        topic_prefix: "$PFX"
        topic: "$OAPFX$PFX.public.t_ck"
EOF
# Apicurio's converter writing Confluent's wire format, as in
# test_debezium_avro_side_by_side.sh.
{
    grep -v '"key.converter\|"value.converter\|^}' "$WORK/dbz.json" |
        sed -e "s/\"slot.name\": \"dbz_/\"slot.name\": \"dbza_/" -e "s/\"$DRENAME/\"$DARENAME/"
    for c in key value; do
        cat <<EOF
 ,"$c.converter": "io.apicurio.registry.utils.converter.AvroConverter",
 "$c.converter.apicurio.registry.url": "$APICURIO_URL",
 "$c.converter.apicurio.registry.auto-register": "true",
 "$c.converter.apicurio.registry.as-confluent": "true",
 "$c.converter.apicurio.registry.use-id": "contentId",
 "$c.converter.apicurio.registry.headers.enabled": "false",
 "$c.converter.apicurio.registry.dereference-schema": "true",
 "$c.converter.apicurio.registry.retry-count": "10",
 "$c.converter.apicurio.registry.retry-backoff-ms": "500"
EOF
    done
    # Debezium names its JMX metrics after topic.prefix: a second connector
    # with the same prefix waits a minute for the name unless tagged.
    echo ' ,"custom.metric.tags": "converter=avro"'
    echo "}"
} >"$WORK/dbza.json"
# outboxd check creates outboxd's publication and slot: every change from
# here on is decoded for both sides.
prepare_sources "$WORK/outboxd.yaml"
if [ "$AVRO" = 1 ]; then
    "$OUTBOXD_BIN" check --create -c "$WORK/outboxd_a.yaml" >"$WORK/check_a.log" 2>&1 || {
        cat "$WORK/check_a.log" >&2
        fail "outboxd check (Avro) failed"
    }
fi

if [ -z "$(cat "$STACK_DIR/connect/connect.pid" 2>/dev/null)" ] || ! kill -0 "$(cat "$STACK_DIR/connect/connect.pid")" 2>/dev/null; then
    STARTED_CONNECT=1
fi
t0=$(date +%s)
T0_MS=$((t0 * 1000))
"$DBZ" start
"$DBZ" register "$CONNECTOR" "$WORK/dbz.json"
if [ "$AVRO" = 1 ]; then "$DBZ" register "${CONNECTOR}_a" "$WORK/dbza.json"; fi
log "Debezium connector RUNNING after $(($(date +%s) - t0)) s"
start_relay "$WORK/outboxd.yaml" relay
RELAY_J_PID=$RELAY_PID

# The rows, deterministic from the seed; src is not in either publication.
psql_db "$DB" <<SQL
SELECT setseed($SEED);
CREATE TABLE src AS
SELECT i AS id,
       CASE WHEN i % 11 = 0 THEN NULL ELSE (random() * 9e15)::bigint - 4500000000000000 END AS b,
       (i % 300 - 150)::smallint AS s,
       CASE WHEN i % 13 = 0 THEN NULL ELSE round((random() * 2e8 - 1e8)::numeric, 3) END AS n,
       CASE WHEN i % 17 = 0 THEN NULL ELSE random() * 1000 - 500 END AS dp,
       (ARRAY['plain', 'ké', 'Müller', '日本語', E'tab\there "q" \\\\ back', ''])[1 + i % 6] || i AS t,
       CASE WHEN i % 5 = 0 THEN NULL ELSE 'v' || (random() * 1e6)::int END AS v,
       CASE WHEN i % 7 = 3 THEN NULL ELSE i % 2 = 0 END AS f,
       CASE WHEN i % 9 = 0 THEN NULL
            WHEN i % 5 = 1 THEN timestamptz '2026-03-01 12:00:00+01' + i * interval '1 minute'
            ELSE timestamptz '2026-03-01 12:00:00+01' + (random() * 1e8) * interval '1 second'
                 + (i % 7) * interval '0.123457 second' END AS tz,
       CASE WHEN i % 9 = 1 THEN NULL
            ELSE timestamptz '2026-03-01 12:00:00+01' + (i % 4) * interval '0.1 second' + i * interval '1 hour' END AS tz3,
       timestamp '2025-12-31 23:59:59' + i * interval '1.000001 second' AS ts,
       CASE WHEN i % 10 = 0 THEN NULL ELSE date '1960-01-01' + (random() * 40000)::int END AS d,
       md5('u' || i)::uuid AS u,
       CASE WHEN i % 8 = 0 THEN NULL
            ELSE jsonb_build_object('i', i, 'name', 'Zürich', 'price', round((random() * 100)::numeric, 2),
                                    'tags', jsonb_build_array('a', i % 3), 'none', NULL) END AS j,
       CASE WHEN i % 6 = 0 THEN NULL ELSE decode(md5('b' || i), 'hex') END AS by,
       CASE WHEN i % 75 = 25 THEN (SELECT array_agg((random() * 2e9 - 1e9)::int) FROM generate_series(1, 3000))
            WHEN i % 4 = 0 THEN NULL WHEN i % 4 = 1 THEN '{}'::int[] ELSE ARRAY[i, -i, NULL, 7] END AS ia,
       CASE WHEN i % 3 = 0 THEN NULL ELSE ARRAY['x' || i, 'é', NULL] END AS ta,
       CASE WHEN i % 25 = 0 THEN (SELECT string_agg(md5(i || '-' || k), '') FROM generate_series(1, 400) k)
            WHEN i % 2 = 0 THEN NULL ELSE 'short ' || i END AS big,
       'nn' || i AS nn
FROM generate_series(1, $N) AS i;
SQL
for ((t = 0; t < N / PER_TXN; t++)); do
    w="id > $((t * PER_TXN)) AND id <= $(((t + 1) * PER_TXN))"
    echo "BEGIN;"
    echo "INSERT INTO t_def SELECT * FROM src WHERE $w ORDER BY id;"
    echo "INSERT INTO t_full SELECT * FROM src WHERE $w ORDER BY id DESC;"
    echo "INSERT INTO t_ck SELECT 'k' || (id % 7), id, t FROM src WHERE $w ORDER BY id;"
    echo "COMMIT;"
done >"$WORK/inserts.sql"
psql_db "$DB" -f "$WORK/inserts.sql" >/dev/null
EXPECTED=$((3 * N))

# count_of SQL: runs one data-modifying statement, prints the rows it touched.
count_of() { psql_db "$DB" -c "WITH x AS ($1 RETURNING 1) SELECT count(*) FROM x"; }
UPD=0 PKU=0 DEL=0
for tbl in t_def t_full; do
    # Updates: values changed, set to NULL and back; big (TOASTed on some
    # rows) left unchanged.
    c=$(count_of "UPDATE $tbl SET t = t || '-u', n = n + 1.5, j = j || '{\"u\": true}',
        tz = tz + interval '1 hour', ia = array_append(ia, 0), f = NOT f,
        v = CASE WHEN v IS NULL THEN 'was null' ELSE NULL END,
        by = CASE WHEN by IS NULL THEN '\\x00ff'::bytea ELSE NULL END WHERE id % 3 = 0")
    UPD=$((UPD + c))
    # (ids 25, 100, 175: their ia is a TOASTed int[], left unchanged: in t_def
    # Debezium's placeholder for an int array, its bytes as numbers)
    c=$(count_of "UPDATE $tbl SET b = b + 1, d = d + 1 WHERE id % 3 = 1 AND id % 25 = 0")
    UPD=$((UPD + c))
    # Primary-key updates: a delete (and tombstone) under the old key, a
    # create under the new one.
    c=$(count_of "UPDATE $tbl SET id = id + 100000, t = 'moved' WHERE id % 40 = 1")
    PKU=$((PKU + c))
    # ... and of a row whose TOASTed big is left untouched (id 50: 50 % 25).
    c=$(count_of "UPDATE $tbl SET id = id + 200000 WHERE id = 50")
    PKU=$((PKU + c))
    c=$(count_of "DELETE FROM $tbl WHERE id % 7 = 0")
    DEL=$((DEL + c))
done
# The composite key: updates, key updates (one key column), deletes.
c=$(count_of "UPDATE t_ck SET v = v || '-u' WHERE k2 % 3 = 0")
UPD=$((UPD + c))
c=$(count_of "UPDATE t_ck SET k2 = k2 + 100000 WHERE k2 % 40 = 1")
PKU=$((PKU + c))
c=$(count_of "UPDATE t_ck SET k1 = k1 || 'x' WHERE k2 % 40 = 2")
PKU=$((PKU + c))
c=$(count_of "DELETE FROM t_ck WHERE k2 % 7 = 0")
DEL=$((DEL + c))
# One transaction over both tables, interleaved.
psql_db "$DB" <<SQL
BEGIN;
UPDATE t_def SET s = s + 1 WHERE id = 2;
UPDATE t_full SET s = s + 1 WHERE id = 2;
DELETE FROM t_def WHERE id = 4;
DELETE FROM t_full WHERE id = 4;
INSERT INTO t_def (id, t) VALUES (999999, 'only id and t');
INSERT INTO t_full (id, t) VALUES (999999, 'only id and t');
COMMIT;
SQL
UPD=$((UPD + 2)) DEL=$((DEL + 2)) EXPECTED=$((EXPECTED + 2))
EXPECTED=$((EXPECTED + UPD + 3 * PKU + 2 * DEL))
log "wrote: $((3 * N + 2)) inserts, $UPD updates, $PKU key updates, $DEL deletes: $EXPECTED records per side; comparing"

# nn is NOT NULL DEFAULT 'dflt': the differences Debezium's catalog reading
# makes (README, Differences from Debezium) are reconciled, exactly those.
CDC_COMPARE_NOT_NULL_DEFAULTS="nn=dflt" "$PY" "$(dirname "$0")/cdc_compare.py" compare "$KAFKA_BOOTSTRAP" "$EXPECTED" 240 "$T0_MS" "$DRENAME" \
    "${TOPICS[@]}" | tee "$WORK/compare.log" >&2
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "records differ (see above)"
grep -q ": 0 differences, 0 problems" "$WORK/compare.log" || fail "no comparison summary"
if [ "$AVRO" = 1 ]; then
    # The in-memory registry fails registrations that race (see
    # test_debezium_avro_side_by_side.sh): outboxd's Avro relay starts once
    # Debezium's Avro records are all out; it reads its slot from the start.
    "$PY" "$(dirname "$0")/dbz_compare.py" wait "$KAFKA_BOOTSTRAP" "$EXPECTED" 240 "$DARENAME" "${TOPICS[@]}" >&2 ||
        fail "Debezium's Avro records did not all arrive"
    start_relay "$WORK/outboxd_a.yaml" relay_a
    RELAY_A_PID=$RELAY_PID
    log "Avro (AvroConverter, Confluent wire format, schemas from the registry):"
    # id, k1, k2: the key columns, required in Debezium's Avro, a nullable
    # union in outboxd's (README, Differences from Debezium).
    CDC_COMPARE_REGISTRY="$REGISTRY_URL" CDC_COMPARE_OBX_PREFIX="$OAPFX" CDC_COMPARE_NOT_NULL_DEFAULTS="nn=dflt" \
        CDC_COMPARE_KEY_COLUMNS=id,k1,k2 \
        "$PY" "$(dirname "$0")/cdc_compare.py" compare "$KAFKA_BOOTSTRAP" "$EXPECTED" 240 "$T0_MS" "$DARENAME" \
        "${TOPICS[@]}" | tee "$WORK/compare_a.log" >&2
    [ "${PIPESTATUS[0]}" -eq 0 ] || fail "Avro records differ (see above)"
    grep -q ": 0 differences, 0 problems" "$WORK/compare_a.log" || fail "no comparison summary (Avro)"
    stop_relay_ok "$RELAY_A_PID" "outboxd (Avro)"
fi
stop_relay_ok "$RELAY_J_PID" "outboxd"
if grep -q "dead-letter topic" "$WORK"/relay*.log; then fail "outboxd dead-lettered changes"; fi
log "PASS: $EXPECTED records per side identical field for field (listed exceptions)"

#!/usr/bin/env bash
# ctest: lock registry -- the shared schema registry (test_registry_outage stops it)
# CDC schema evolution under a running stream, through the registry (global
# BACKWARD compatibility): rows written in six phases of PER rows with
#   1 (id, phase, qty int, note)  2 ADD COLUMN added  3 DROP COLUMN note
#   4 ALTER qty TYPE bigint       5 ALTER qty TYPE text (long -> string: a
#     change the registry rejects)   6 ALTER qty TYPE bigint again.
# (Narrowing back to integer would not do: that schema is phase 3's, which
# the registry already holds and so returns without a compatibility check.)
# Each phase must decode with its own schema version (4 versions; phase 6
# reuses phase 4's), phase 5's rows must be in the dead-letter topic with the
# registry's reason and not in the table's topic, and the stream must go on.
# The relay is killed (-9) once in the middle: still every row exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
# shellcheck disable=SC1091
source "$STACK_DIR/registry/env"
PY=$("$OUTBOXD_SOURCE_DIR/tests/stack/pyvenv.sh")
PER=${CDC_ALTER_PER:-20}
DB=cdca_$RUN_ID
TOPIC="$RUN_ID.evo"
log "registry $REGISTRY_URL; $PER rows per phase"

psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" -c "CREATE TABLE evo (id integer PRIMARY KEY, phase integer NOT NULL, qty integer, note text)" >/dev/null

cat >"$WORK/outboxd.yaml" <<EOF2
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
schema_registry:
  url: "$REGISTRY_URL"
relay:
  commit_interval_ms: 20
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  missing_topic: create
  create_topic_partitions: 1
sources:
  - name: evo
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "${DB}_${RUN_ID}"
    tables:
      - table: public.evo
        mode: cdc
        snapshot: never
        topic: "$TOPIC"
EOF2
prepare_sources "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID

# rows PHASE COLUMNS VALUES-EXPRESSION: PER rows, one transaction each
rows() {
    local phase=$1 cols=$2 expr=$3 lo=$(( ($1 - 1) * PER + 1 )) hi=$(( $1 * PER ))
    for i in $(seq "$lo" "$hi"); do
        echo "INSERT INTO evo ($cols) SELECT $expr FROM (SELECT $i AS i) s;"
    done | psql_db "$DB" >/dev/null
}
rows 1 "id, phase, qty, note" "i, 1, i, 'nöte ' || i"
psql_db "$DB" -c "ALTER TABLE evo ADD COLUMN added text" >/dev/null
rows 2 "id, phase, qty, note, added" "i, 2, i, 'nöte ' || i, 'a' || i"
log "killing the relay (-9) mid-stream and starting it again"
kill -9 "$relay"
wait "$relay" 2>/dev/null || true
start_relay "$WORK/outboxd.yaml" relay
relay=$RELAY_PID
psql_db "$DB" -c "ALTER TABLE evo DROP COLUMN note" >/dev/null
rows 3 "id, phase, qty, added" "i, 3, i, 'a' || i"
psql_db "$DB" -c "ALTER TABLE evo ALTER COLUMN qty TYPE bigint" >/dev/null
rows 4 "id, phase, qty, added" "i, 4, i * 10000000000, 'a' || i"
psql_db "$DB" -c "ALTER TABLE evo ALTER COLUMN qty TYPE text" >/dev/null
rows 5 "id, phase, qty, added" "i, 5, i::text, 'a' || i"
psql_db "$DB" -c "ALTER TABLE evo ALTER COLUMN qty TYPE bigint USING qty::bigint" >/dev/null
rows 6 "id, phase, qty, added" "i, 6, i * 10000000000, 'a' || i"
wait_drained "$DB" "${DB}_${RUN_ID}" 300
kill -0 "$relay" 2>/dev/null || fail "relay exited"

"$PY" "$here/cdc_check.py" alter --bootstrap "$KAFKA_BOOTSTRAP" --registry "$REGISTRY_URL" \
    --topic "$TOPIC" --per "$PER" || fail "events do not decode with their own schema versions"

# The rejected phase: every row in the dead-letter topic, with the reason.
consume_json -t "$RUN_ID.dlt" >"$WORK/dlt.json"
n_dlt=$(wc -l <"$WORK/dlt.json")
log "dead-letter topic: $n_dlt records"
[ "$n_dlt" -eq "$PER" ] || fail "expected $PER dead letters (phase 5), got $n_dlt"
grep -q "schema registry rejected the value schema of table public.evo" "$WORK/dlt.json" ||
    fail "dead letters lack the registry's reason: $(head -c 600 "$WORK/dlt.json")"
for i in $(seq $((4 * PER + 1)) $((5 * PER))); do
    grep -q "\"id\\\\\":\\\\\"$i\\\\\"\|\"id\":\"$i\"" "$WORK/dlt.json" || fail "row $i not dead-lettered"
done
grep -q "schema registry rejected" "$WORK/relay.log" || fail "no WARN line naming the rejection"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# snapshot: when_needed versus initial after the slot is lost. Two cdc
# tables are snapshotted at the first start (items: when_needed, 5000 rows;
# kept: initial, 1000 rows); rows written while the relay streams arrive as
# "c". Then, with the relay stopped, the slot is dropped (a lost slot) and
# 20 rows are inserted into each table: no stream can deliver them. At the
# next start the relay creates the slot again and
#   - reads items again (when_needed): replaying its topic gives the table,
#     the 20 rows included (as "r");
#   - does not read kept again (initial): its topic has exactly 1000 "r"
#     events and lacks the 20 rows, as documented.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=snapwn_$RUN_ID
SLOT="${DB}_slot"
extra_cleanup() {
    for p in "${RELAY_PIDS[@]}"; do own_child "$p" && kill -9 "$p" 2>/dev/null || true; done
    wait "${RELAY_PIDS[@]}" 2>/dev/null || true
    drop_source "$DB" "$SLOT"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}
TOPIC="$RUN_ID.cdc"
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" <<SQL
CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL);
INSERT INTO items SELECT i, 0 FROM generate_series(1, 5000) AS i;
CREATE TABLE kept (id bigint PRIMARY KEY, v int NOT NULL);
INSERT INTO kept SELECT i, 0 FROM generate_series(1, 1000) AS i;
SQL
cat >"$WORK/outboxd.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
relay:
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
sources:
  - name: $DB
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "$SLOT"
    publication: "${DB}_pub"
    tables:
      - { table: public.items, mode: cdc, topic: "$TOPIC.items", format: json, json_schemas: false, snapshot: when_needed }
      - { table: public.kept, mode: cdc, topic: "$TOPIC.kept", format: json, json_schemas: false, snapshot: initial }
EOF
wait_log_count() { # wait_log_count FILE PATTERN COUNT
    for _ in $(seq 1 600); do
        [ "$(grep -c "$2" "$1" 2>/dev/null || true)" -ge "$3" ] && return 0
        sleep 0.2
    done
    fail "$1 lacks $3 x '$2' after 120 s"
}
start_relay "$WORK/outboxd.yaml" relay1
wait_log_count "$WORK/relay1.log" "snapshot finished" 1
psql_db "$DB" -c "INSERT INTO items SELECT i, 1 FROM generate_series(5001, 5010) AS i" \
    -c "INSERT INTO kept SELECT i, 1 FROM generate_series(1001, 1010) AS i"
wait_drained "$DB" "$SLOT"
stop_relay_ok "$RELAY_PID"

log "dropping slot $SLOT (a lost slot) and writing 20 rows per table that no stream delivers"
psql_db "$DB" -c "SELECT pg_drop_replication_slot('$SLOT')" >/dev/null
psql_db "$DB" -c "INSERT INTO items SELECT i, 2 FROM generate_series(5011, 5030) AS i" \
    -c "INSERT INTO kept SELECT i, 2 FROM generate_series(1011, 1030) AS i"

start_relay "$WORK/outboxd.yaml" relay2
wait_log_count "$WORK/relay2.log" "snapshot finished" 1
grep -q "snapshot progress and stream reconciliation points are dropped" "$WORK/relay2.log" ||
    fail "relay 2 did not notice the lost positions"
grep -q "snapshot of 1 table(s) starts" "$WORK/relay2.log" || fail "relay 2 did not read exactly one table"
psql_db "$DB" -c "UPDATE items SET v = 3 WHERE id <= 5"
wait_drained "$DB" "$SLOT"
stop_relay_ok "$RELAY_PID"

for t in items kept; do
    consume_json -t "$TOPIC.$t" >"$WORK/$t.jsonl"
    psql_db "$DB" -F $'\t' -c "SELECT id, v FROM $t" >"$WORK/$t.tsv"
done
python3 - "$WORK" <<'PY' || fail "when_needed / initial check failed"
import json, sys
w = sys.argv[1]
def replay(name):
    state, ops = {}, {}
    for line in open(f"{w}/{name}.jsonl"):
        v = json.loads(line).get("value")
        if v is None:
            continue
        v = json.loads(v) if isinstance(v, str) else v
        v = v.get("payload", v) if "op" not in v else v
        ops[v["op"]] = ops.get(v["op"], 0) + 1
        row = v["after"] if v["op"] != "d" else v["before"]
        if v["op"] == "d":
            state.pop(str(row["id"]), None)
        else:
            state[str(row["id"])] = str(row["v"])
    table = dict(l.rstrip("\n").split("\t") for l in open(f"{w}/{name}.tsv"))
    return state, ops, table
bad = []
state, ops, table = replay("items")
print(f"items: {ops}", file=sys.stderr)
if state != table:
    bad.append(f"items: replay differs from the table in {len(set(state.items()) ^ set(table.items()))} entries")
if ops.get("r") != 5000 + 5030:
    bad.append(f"items: {ops.get('r')} r events, expected 5000 + 5030 (read twice)")
state, ops, table = replay("kept")
print(f"kept: {ops}", file=sys.stderr)
if ops.get("r") != 1000:
    bad.append(f"kept: {ops.get('r')} r events, expected 1000 (read once)")
missing = sorted(set(table) - set(state), key=int)
if missing != [str(i) for i in range(1011, 1031)]:
    bad.append(f"kept: rows missing from the topic {missing[:5]}..., expected exactly 1011..1030")
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# A table read again while consumers hold its rows already (here: an ad-hoc
# snapshot of a table that was streaming). The relay is stopped; the signal
# row is written, then, before the relay reads it, row 5 is deleted, row 6
# deleted and inserted again, row 7 updated and row 11 inserted. The
# restarted relay reads the signal from the stream and takes the snapshot
# at a point after those changes, which it streams afterwards. Consumers
# must end with the table's rows: row 5 deleted (the snapshot cannot say so,
# only the stream's delete can; before, the stream skipped it as "already in
# the snapshot" and consumers kept row 5 for good), row 6 and 7 as they are.
# Also, before the relay first runs: TRUNCATE of two tables, ta (snapshot:
# initial, so read after the TRUNCATE) and tb (snapshot: never), then rows
# written to ta: the stream publishes the TRUNCATE for tb only (for ta too,
# it would empty consumers' copy of ta's rows read after it).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=snapagain_$RUN_ID
SLOT="${DB}_slot"
PUB="${DB}_pub"
TOPIC="$RUN_ID.cdc.items"
extra_cleanup() {
    drop_source "$DB" "$SLOT"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" <<SQL
CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL);
CREATE TABLE outboxd_signal (id text PRIMARY KEY, type text NOT NULL, data text);
CREATE TABLE ta (id bigint PRIMARY KEY, v text NOT NULL);
CREATE TABLE tb (id bigint PRIMARY KEY, v text NOT NULL);
SQL
{
    config_header
    cat <<EOF
  - name: $DB
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "$SLOT"
    publication: "$PUB"
    signal_table: public.outboxd_signal
    tables:
      - table: public.items
        mode: cdc
        topic: "$TOPIC"
        format: json
        json_schemas: false
        snapshot: never
      - table: public.ta
        mode: cdc
        topic: "$TOPIC.ta"
        format: json
        json_schemas: false
        snapshot: initial
        truncate_events: true
      - table: public.tb
        mode: cdc
        topic: "$TOPIC.tb"
        format: json
        json_schemas: false
        snapshot: never
        truncate_events: true
EOF
} >"$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"
psql_db "$DB" -c "ALTER PUBLICATION \"$PUB\" ADD TABLE outboxd_signal" >/dev/null
psql_db "$DB" >/dev/null <<'SQL'
INSERT INTO ta VALUES (1, 'gone'), (2, 'gone');
INSERT INTO tb VALUES (1, 'gone');
TRUNCATE ta, tb;
INSERT INTO ta VALUES (3, 'kept'), (4, 'kept');
SQL

# Streamed: consumers hold rows 1..10.
start_relay "$WORK/outboxd.yaml" relay1
relay=$RELAY_PID
wait_streaming "$WORK/relay1.log" 1 60
psql_db "$DB" -c "INSERT INTO items SELECT i, 'v' || i FROM generate_series(1, 10) i" >/dev/null
wait_drained "$DB" "$SLOT"
stop_relay_ok "$relay"

psql_db "$DB" >/dev/null <<'SQL'
INSERT INTO outboxd_signal VALUES ('again-1', 'execute-snapshot', '{"data-collections": ["public.items"]}');
DELETE FROM items WHERE id = 5;
DELETE FROM items WHERE id = 6;
INSERT INTO items VALUES (6, 'v6 again');
UPDATE items SET v = 'v7 updated' WHERE id = 7;
INSERT INTO items VALUES (11, 'v11');
SQL

start_relay "$WORK/outboxd.yaml" relay2
relay=$RELAY_PID
wait_log "$WORK/relay2.log" "snapshot finished" 120 "the restarted relay did not finish the requested snapshot"
wait_drained "$DB" "$SLOT"
stop_relay_ok "$relay"

# check.py EVENTS TABLE NAME ORDER REQUIRED_OP FORBIDDEN_OP: the events
# replayed give the table. ORDER lsn: in WAL order (source.lsn; the topic's
# partitions interleave otherwise); read: in the order read (per key that is
# the order published, which a read-again table needs: its window's changes
# come after its rows but have lower LSNs). REQUIRED_OP: an op with its id
# (r3), or an op letter alone (any id); FORBIDDEN_OP likewise, or -.
cat >"$WORK/check.py" <<'PY'
import json, sys
state, ops, evs = {}, [], []
def seen(want):
    return any(o == want or (len(want) == 1 and o.startswith(want)) for o in ops)
for line in open(sys.argv[1]):
    v = json.loads(line).get("value")
    if v is None:
        continue  # a tombstone
    if isinstance(v, str):
        v = json.loads(v)
    evs.append(v)
if sys.argv[4] == "lsn":
    evs.sort(key=lambda v: v["source"]["lsn"])
for v in evs:
    if v["op"] == "t":
        ops.append("t")
        state.clear()
        continue
    row = v["after"] if v["op"] in ("r", "c", "u") else v["before"]
    ops.append(f'{v["op"]}{row["id"]}')
    if v["op"] == "d":
        state.pop(str(row["id"]), None)
    else:
        state[str(row["id"])] = row["v"]
table = dict(line.rstrip("\n").split("\t") for line in open(sys.argv[2]))
print(f"{sys.argv[3]} events: " + " ".join(ops), file=sys.stderr)
bad = [f"id {k}: table {table.get(k)!r}, events give {state.get(k)!r}"
       for k in sorted(set(table) | set(state), key=int) if table.get(k) != state.get(k)]
if not seen(sys.argv[5]):
    bad.append(f"no {sys.argv[5]} event")
if sys.argv[6] != "-" and seen(sys.argv[6]):
    bad.append(f"a {sys.argv[6]} event")
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
check_topic() { # check_topic TABLE TOPIC ORDER REQUIRED_OP FORBIDDEN_OP
    consume_json -T "^$2\$" >"$WORK/$1.jsonl"
    psql_db "$DB" -F $'\t' -c "SELECT id, v FROM $1 ORDER BY id" >"$WORK/$1.tsv"
    python3 "$WORK/check.py" "$WORK/$1.jsonl" "$WORK/$1.tsv" "$1" "$3" "$4" "$5" || fail "consumers' copy of $1 differs from the table"
}
check_topic ta "$TOPIC.ta" lsn r3 t
check_topic tb "$TOPIC.tb" lsn t r1
# A snapshot (r) event shows the signal was served.
check_topic items "$TOPIC" read r -
drop_source "$DB" "$SLOT"
log "PASS: consumers' copy converged to the table (row 5 deleted, 6 re-inserted, 7 updated, 11 added)"

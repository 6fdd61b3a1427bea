#!/usr/bin/env bash
# ctest: parallel
# Ad-hoc snapshot of one cdc table on request, without restarting the
# stream: a row in the source's signal table (Debezium's format: type
# 'execute-snapshot', data {"data-collections": ["public.items"]}) makes the
# running relay read the table while its replication connection stays open,
# then stream on. The table (snapshot: never, so nothing was read at start)
# holds SNAP_ADHOC_ROWS rows (default 20000) and a writer inserts, updates
# and deletes throughout. The relay is SIGKILLed once during the ad-hoc read
# and must resume it at restart. Checked with read_committed:
#   - the first relay started the read on the signal without reconnecting;
#   - no key has two "r" events (changes committed between the stream's
#     position and the snapshot's point are published after the rows: the
#     consumers hold the table already, and a delete there must reach them;
#     test_cdc_snapshot_again);
#   - every row of the table has an "r" or a "c";
#   - replaying the events per key gives exactly the table's rows;
#   - exactly one event carries source.snapshot "last".
# A second signal, for a second table (items2, SNAP_ADHOC_ROWS / 10 rows,
# updated throughout), reaches the restarted relay while it streams: it
# reads that table and streams on in the same connection; the same checks
# hold for items2.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

ROWS=${SNAP_ADHOC_ROWS:-20000}
CONC=${SNAP_ADHOC_CONC_ROWS:-4000}
DB=snapadhoc_$RUN_ID
SLOT="${DB}_slot"
# Leave nothing behind in the shared server, also when the test fails.
extra_cleanup() {
    for p in "${RELAY_PIDS[@]}"; do own_child "$p" && kill -9 "$p" 2>/dev/null || true; done
    wait "${RELAY_PIDS[@]}" 2>/dev/null || true
    drop_source "$DB" "$SLOT"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}
PUB="${DB}_pub"
TOPIC="$RUN_ID.cdc.items"

psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" <<SQL
CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL, pad text);
INSERT INTO items SELECT i, 0, repeat(md5(i::text), 2) FROM generate_series(1, $ROWS) AS i;
CREATE TABLE items2 (id bigint PRIMARY KEY, v int NOT NULL, pad text);
INSERT INTO items2 SELECT i, 0, 'orig ' || i FROM generate_series(1, $ROWS / 10) AS i;
CREATE TABLE outboxd_signal (id text PRIMARY KEY, type text NOT NULL, data text);
SQL
cat >"$WORK/outboxd.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
relay:
  commit_interval_ms: 20
  max_batch_events: 500
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  log_level: debug
sources:
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
      - table: public.items2
        mode: cdc
        topic: "$TOPIC.2"
        format: json
        json_schemas: false
        snapshot: never
EOF
prepare_sources "$WORK/outboxd.yaml"
# The signal table's rows reach the relay through the publication.
psql_db "$DB" -c "ALTER PUBLICATION \"$PUB\" ADD TABLE outboxd_signal" >/dev/null

start_relay "$WORK/outboxd.yaml" relay1
first=$RELAY_PID
for _ in $(seq 1 600); do
    grep -q "streaming slot" "$WORK/relay1.log" 2>/dev/null && break
    sleep 0.2
done
grep -q "streaming slot" "$WORK/relay1.log" || fail "relay did not start streaming"

log "writer: $CONC inserts (ids $((ROWS + 1))..), updates of id (i*7919 % $ROWS)+1 every 5th, deletes of id (i*104729 % $ROWS)+1 every 25th transaction"
psql_db "$DB" >"$WORK/writer.log" 2>&1 <<SQL &
DO \$\$
BEGIN
    FOR i IN 1..$CONC LOOP
        INSERT INTO items VALUES ($ROWS + i, 1, 'new ' || i);
        IF i % 5 = 0 THEN
            UPDATE items SET v = v + 1, pad = 'upd ' || i WHERE id = (i::bigint * 7919) % $ROWS + 1;
        END IF;
        IF i % 25 = 0 THEN
            DELETE FROM items WHERE id = (i::bigint * 104729) % $ROWS + 1;
        END IF;
        IF i % 10 = 0 THEN
            UPDATE items2 SET v = v + 1, pad = 'upd ' || i WHERE id = (i::bigint * 31) % ($ROWS / 10) + 1;
        END IF;
        IF i = $CONC * 3 / 5 THEN
            INSERT INTO outboxd_signal VALUES ('adhoc-2', 'execute-snapshot',
                '{"data-collections": ["public.items2"]}');
        END IF;
        IF i = $CONC / 5 THEN
            INSERT INTO outboxd_signal VALUES ('adhoc-1', 'execute-snapshot',
                '{"data-collections": ["public.items"], "type": "blocking"}');
        END IF;
        COMMIT;
        PERFORM pg_sleep(0.002);
    END LOOP;
END
\$\$;
SQL
writer=$!
BG_PIDS+=("$writer")

# published LOG: rows of the ad-hoc run the relay reported as committed.
published() {
    sed -n 's/.*snapshot of public.items: \([0-9]*\) rows published.*/\1/p' "$1" 2>/dev/null | tail -n 1
}
want=$((ROWS * 30 / 100))
for _ in $(seq 1 3000); do
    n=$(published "$WORK/relay1.log")
    [ "${n:-0}" -ge "$want" ] && break
    kill -0 "$first" 2>/dev/null || fail "relay 1 exited"
    sleep 0.05
done
[ "${n:-0}" -ge "$want" ] || fail "the signal did not start a snapshot publishing $want rows within 150 s"
kill -9 "$first"
wait "$first" 2>/dev/null || true
grep -q "snapshot finished" "$WORK/relay1.log" && fail "the ad-hoc snapshot finished before the SIGKILL"
grep -q "signal adhoc-1: snapshot of public.items requested" "$WORK/relay1.log" ||
    fail "relay 1 did not log the signal"
[ "$(grep -c "streaming slot" "$WORK/relay1.log")" -eq 1 ] ||
    fail "relay 1 reconnected its stream for the ad-hoc snapshot"
log "SIGKILL during the ad-hoc snapshot after $n rows; restarting"

start_relay "$WORK/outboxd.yaml" relay2
relay=$RELAY_PID
finished() { grep -c "snapshot finished" "$WORK/relay2.log" 2>/dev/null || true; }
wait "$writer" || fail "writer failed: $(cat "$WORK/writer.log")"
for _ in $(seq 1 3000); do
    [ "$(finished)" -ge 2 ] && break
    kill -0 "$relay" 2>/dev/null || fail "relay 2 exited"
    sleep 0.1
done
grep -q "snapshot of 1 table(s) resumes" "$WORK/relay2.log" || fail "relay 2 did not resume the ad-hoc snapshot"
[ "$(finished)" -ge 2 ] || fail "relay 2 did not finish both snapshots (resumed items, signalled items2)"
grep -q "signal adhoc-2: snapshot of public.items2 requested" "$WORK/relay2.log" ||
    fail "relay 2 did not log the second signal"
[ "$(grep -c "streaming slot" "$WORK/relay2.log")" -eq 1 ] ||
    fail "relay 2 reconnected its stream for the second ad-hoc snapshot"
wait_drained "$DB" "$SLOT"
stop_relay_ok "$relay"

cat >"$WORK/check.py" <<'PY'
import json, sys
state, seq, ops, last, bad = {}, {}, {}, 0, []
norm = lambda x: None if x is None else str(x)
for line in open(sys.argv[1]):
    v = json.loads(line).get("value")
    if v is None:
        continue
    if isinstance(v, str):
        v = json.loads(v)
    if "payload" in v and "op" not in v:
        v = v["payload"]
    op = v["op"]
    ops[op] = ops.get(op, 0) + 1
    if (v.get("source") or {}).get("snapshot") == "last":
        last += 1
    row = v["after"] if op in ("r", "c", "u") else v["before"]
    k = norm(row["id"])
    seq.setdefault(k, []).append(op)
    if op == "d":
        state.pop(k, None)
    else:
        state[k] = (norm(row["v"]), norm(row["pad"]))
rows = {}
for line in open(sys.argv[2]):
    i, val, pad = line.rstrip("\n").split("\t")
    rows[i] = (val, pad)
# Consumers held the table's rows (it streamed before the signal): the
# changes committed between the stream's position and the snapshot's point
# are published after the rows (at least once; snapshot.c, "Reading a table
# again"), so a "c" may follow an "r"; a key is still read once.
for k, s in seq.items():
    if s.count("r") > 1:
        bad.append(f"key {k}: events {s}")
for k in rows:
    if not ({"r", "c"} & set(seq.get(k, []))):
        bad.append(f"table row {k} has neither r nor c")
for k in set(rows) | set(state):
    if rows.get(k) != state.get(k):
        bad.append(f"key {k}: table {rows.get(k)} but events give {state.get(k)}")
print(f"events by op: {dict(sorted(ops.items()))}; table rows: {len(rows)}; 'last' markers: {last}",
      file=sys.stderr)
if last != 1:
    bad.append(f"{last} events carry source.snapshot 'last'")
for b in bad[:30]:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
for t in items items2; do
    topic=$TOPIC
    [ "$t" = items ] || topic="$TOPIC.2"
    consume_json -t "$topic" --timeout-ms 300000 >"$WORK/$t.jsonl"
    psql_db "$DB" -F $'\t' -c "SELECT id, v, pad FROM $t" >"$WORK/$t.tsv"
    log "checking $t"
    python3 "$WORK/check.py" "$WORK/$t.jsonl" "$WORK/$t.tsv" || fail "ad-hoc snapshot check failed for $t"
done
log "PASS"

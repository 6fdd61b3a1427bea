#!/usr/bin/env bash
# ctest: parallel
# Initial snapshot of a cdc table, exactly once across crashes.
#
# SNAP_ROWS rows (default 100000) exist before the relay first runs; while
# it snapshots them a writer commits SNAP_CONC_ROWS (default 10000) inserts,
# plus updates and deletes of existing rows (chosen by formula, printed),
# one per transaction. The relay is SIGKILLed twice during the snapshot
# (after about 25% and 60% of the rows were published, read from its debug
# log) and resumed each time. At the end, read with read_committed:
#   - every key has at most one "r" or "c" event, and every row of the table
#     has exactly one;
#   - replaying the events per key gives exactly the table's rows (v, pad);
#   - exactly one event carries source.snapshot "last";
#   - both restarts resumed the snapshot (log), the last one finished it;
#   - each relay's peak RSS stays under 64 MB (SNAP_RSS_LIMIT_KB).
# bench/snapshot.sh runs the same with the issue's size (1,000,000 + 100,000).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

ROWS=${SNAP_ROWS:-100000}
CONC=${SNAP_CONC_ROWS:-10000}
CHUNK=${SNAP_CHUNK:-2000}
KILLS=${SNAP_KILLS:-2}
RSS_LIMIT_KB=${SNAP_RSS_LIMIT_KB:-65536}
DB=snap_$RUN_ID
SLOT="${DB}_slot"
# Leave nothing behind in the shared server, also when the test fails.
extra_cleanup() {
    for p in "${RELAY_PIDS[@]}"; do own_child "$p" && kill -9 "$p" 2>/dev/null || true; done
    wait "${RELAY_PIDS[@]}" 2>/dev/null || true
    drop_source "$DB" "$SLOT"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}
TOPIC="$RUN_ID.cdc.items"

psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" <<SQL
CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL, pad text);
INSERT INTO items SELECT i, 0, repeat(md5(i::text), 2) FROM generate_series(1, $ROWS) AS i;
SQL
log "table has $ROWS rows; writer will add $CONC rows (ids $((ROWS + 1))..$((ROWS + CONC))), update id (i*7919 % $ROWS)+1 every 5th and delete id (i*104729 % $ROWS)+1 every 25th transaction"

write_snap_config() {
    cat >"$1" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
relay:
  commit_interval_ms: 20
  max_batch_events: $CHUNK
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  log_level: debug
sources:
  - name: $DB
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "$SLOT"
    publication: "${DB}_pub"
    tables:
      - table: public.items
        mode: cdc
        topic: "$TOPIC"
        format: json
        json_schemas: false
        snapshot: initial
EOF
}
write_snap_config "$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"

# The writer: one change per transaction, paced so it spans the snapshot.
SLEEP_S=${SNAP_WRITE_SLEEP_S:-0.001}
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
        COMMIT;
        PERFORM pg_sleep($SLEEP_S);
    END LOOP;
END
\$\$;
SQL
writer=$!
BG_PIDS+=("$writer")

# published LOG: rows of the current run the relay reported as committed.
published() {
    sed -n 's/.*snapshot of public.items: \([0-9]*\) rows published.*/\1/p' "$1" 2>/dev/null | tail -n 1
}
peaks=()
t0=$(date +%s.%N)
for k in $(seq 1 "$KILLS"); do
    start_relay "$WORK/outboxd.yaml" "relay$k"
    # Kill once the relay itself has published this share of the rows.
    want=$((ROWS * (k == 1 ? 25 : 35) / 100))
    for _ in $(seq 1 3000); do
        n=$(published "$WORK/relay$k.log")
        [ "${n:-0}" -ge "$want" ] && break
        kill -0 "$RELAY_PID" 2>/dev/null || fail "relay $k exited during the snapshot"
        sleep 0.05
    done
    [ "${n:-0}" -ge "$want" ] || fail "relay $k did not publish $want snapshot rows within 150 s"
    peaks+=("$(peak_rss_kb "$RELAY_PID")")
    kill -9 "$RELAY_PID"
    wait "$RELAY_PID" 2>/dev/null || true
    grep -q "snapshot finished" "$WORK/relay$k.log" &&
        fail "relay $k finished the snapshot before its SIGKILL; the kill did not interrupt it"
    log "SIGKILL #$k after relay $k published ${n} snapshot rows"
    if [ "$k" -gt 1 ]; then
        grep -q "snapshot of 1 table(s) resumes" "$WORK/relay$k.log" ||
            fail "relay $k did not resume the snapshot"
    fi
done
start_relay "$WORK/outboxd.yaml" relay-final
relay=$RELAY_PID
for _ in $(seq 1 3000); do
    grep -q "snapshot finished" "$WORK/relay-final.log" && break
    kill -0 "$relay" 2>/dev/null || fail "the final relay exited during the snapshot"
    sleep 0.1
done
grep -q "snapshot finished" "$WORK/relay-final.log" || fail "snapshot did not finish within 300 s"
t1=$(date +%s.%N)
[ "$KILLS" -eq 0 ] || grep -q "snapshot of 1 table(s) resumes" "$WORK/relay-final.log" ||
    fail "the final relay did not resume the snapshot"
sed -n 's/^.*\] \(snapshot finished.*\)$/    \1/p' "$WORK/relay-final.log" >&2
wait "$writer" || fail "writer failed: $(cat "$WORK/writer.log")"
wait_drained "$DB" "$SLOT"
peaks+=("$(peak_rss_kb "$relay")")
stop_relay_ok "$relay"

consume_json -t "$TOPIC" --timeout-ms 600000 >"$WORK/events.jsonl"
psql_db "$DB" -F $'\t' -c "SELECT id, v, pad FROM items" >"$WORK/table.tsv"
python3 - "$WORK/events.jsonl" "$WORK/table.tsv" <<'PY' || fail "exactly-once / consistency check failed"
import json, sys
events, table = sys.argv[1], sys.argv[2]
state, created, ops, last = {}, {}, {}, 0
bad = []
def norm(x):
    return None if x is None else str(x)
for line in open(events):
    m = json.loads(line)
    v = m.get("value")
    if v is None:
        continue  # tombstone
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
    if op in ("r", "c"):
        created[k] = created.get(k, 0) + 1
        if created[k] > 1 and len(bad) < 10:
            bad.append(f"key {k}: {created[k]} r/c events")
    if op == "d":
        state.pop(k, None)
    else:
        state[k] = (norm(row["v"]), norm(row["pad"]))
rows = {}
for line in open(table):
    i, v, pad = line.rstrip("\n").split("\t")
    rows[i] = (v, pad)
for k in rows:
    if created.get(k, 0) != 1 and len(bad) < 20:
        bad.append(f"table row {k}: {created.get(k, 0)} r/c events")
for k in set(rows) | set(state):
    if rows.get(k) != state.get(k) and len(bad) < 30:
        bad.append(f"key {k}: table {rows.get(k)} but events give {state.get(k)}")
print(f"events by op: {dict(sorted(ops.items()))}; keys with r/c: {len(created)}; "
      f"table rows: {len(rows)}; snapshot 'last' markers: {last}", file=sys.stderr)
if last != 1:
    bad.append(f"{last} events carry source.snapshot 'last' (expected 1)")
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
max=0
for p in "${peaks[@]}"; do [ "$p" -gt "$max" ] && max=$p; done
log "snapshot of $ROWS rows (+$CONC concurrent) with $KILLS SIGKILLs took ${secs}s wall; peak RSS per relay (kB): ${peaks[*]}"
echo "snapshot_rows=$ROWS concurrent_rows=$CONC kills=$KILLS wall_s=$secs peak_rss_kb=$max" >&2
if [ "${OUTBOXD_SANITIZE:-0}" = 1 ]; then
    log "sanitizer build: RSS bound not checked"
else
    [ "$max" -lt "$RSS_LIMIT_KB" ] || fail "peak RSS ${max} kB is over ${RSS_LIMIT_KB} kB"
fi
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# A snapshot's queries must not wait for good on a server that went silent
# (a frozen backend, a path gone half-open: TCP keepalives are answered by
# the peer's kernel). A proxy (tests/tools/pg_silence_proxy.py) swallows the
# first chunk read of a cdc table's initial snapshot and keeps both sockets
# open and silent; the relay's other connections go through it untouched.
#  1. A SIGTERM while the chunk read is silent (limit 60 s) stops the relay
#     within a few seconds instead of waiting for the answer, and says so
#     without an ERROR line about the snapshot (it resumes at the next
#     start). Without the change the relay does not stop: the test fails.
#  2. The read is given up after relay.wal_receiver_timeout_ms (3 s) with a
#     message naming the cause, the snapshot resumes on a new connection,
#     and every row is published exactly once; a change after it streams.
#  3. The limit is on silence, not on the whole answer: through a link of
#     100 KB/s (Toxiproxy) a chunk of 16 rows of 40 KB takes about 6 s
#     against the same 3 s limit, and must not be given up (a limit on the
#     whole read would give it up on every retry: the snapshot would never
#     finish).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
FAULTS_KAFKA_PROXY=0 source "$here/faults.sh"

DB=snsil_$RUN_ID
SLOT="${DB}_slot"
ROWS=40
TOPIC="$RUN_ID.cdc.snap_t"
DB2=snslow_$RUN_ID
SLOT2="${DB2}_slot"
extra_cleanup() {
    for p in "${RELAY_PIDS[@]}"; do own_child "$p" && kill -9 "$p" 2>/dev/null || true; done
    wait "${RELAY_PIDS[@]}" 2>/dev/null || true
    drop_source "$DB" "$SLOT"
    drop_source "$DB2" "$SLOT2"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB2\" WITH (FORCE)" >/dev/null 2>&1 || true
    fault_cleanup
}
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" -c "CREATE TABLE snap_t (id integer PRIMARY KEY, v text)" \
    -c "INSERT INTO snap_t SELECT i, 'row ' || i FROM generate_series(1, $ROWS) i" >/dev/null

# write_snap_config FILE WAL_RECEIVER_TIMEOUT_MS [DB [SLOT [TABLE]]]
write_snap_config() {
    local db=${3:-$DB} slot=${4:-$SLOT} table=${5:-snap_t}
    cat >"$1" <<EOF2
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
relay:
  commit_interval_ms: 20
  max_batch_events: 15
  wal_receiver_timeout_ms: $2
  reconnect_max_backoff_ms: 1000
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  log_level: debug
sources:
  - name: $db
    dsn: "host=$PGHOST port=$PGPORT dbname=$db user=$PGUSER"
    slot: "$slot"
    publication: "${db}_pub"
    tables:
      - table: public.$table
        mode: cdc
        topic: "$RUN_ID.cdc.$table"
        format: json
        json_schemas: false
        snapshot: initial
EOF2
}
# The chunk reads: SELECT "id", "v" FROM ONLY "public"."snap_t" [WHERE ...] ORDER BY ...
CHUNK_PREFIX='SELECT "id", "v" FROM ONLY "public"."snap_t"'

# --- 1. a stop while the read is silent ------------------------------------
start_silence_proxy stopproxy "$CHUNK_PREFIX" 1
write_snap_config "$WORK/stop.yaml" 60000
dsn_via_proxy "$WORK/stop.yaml"
prepare_sources "$WORK/stop.yaml"
start_relay "$WORK/stop.yaml" relay_stop
relay=$RELAY_PID
wait_log "$WORK/stopproxy.log" silenced 60 "the snapshot's chunk read did not reach the proxy"
sleep 1 # the relay is inside the read now
t0=$(date +%s%N)
kill -TERM "$relay"
wait_exit "$relay" 10 ||
    fail "the relay did not stop within 10 s of SIGTERM while the snapshot's read was silent (see relay_stop.log)"
rc=$EXIT_RC
ms=$((($(date +%s%N) - t0) / 1000000))
log "stopped ${ms} ms after SIGTERM during the silent chunk read (exit $rc)"
[ "$rc" -eq 0 ] || fail "the relay exited $rc after SIGTERM (see relay_stop.log)"
[ "$ms" -lt 5000 ] || fail "the stop took $ms ms (the read should be given up at once)"
grep -q "snapshot of public.snap_t: reading a snapshot chunk: interrupted by a stop" "$WORK/relay_stop.log" ||
    fail "the relay did not say the snapshot read was cut short by the stop (see relay_stop.log)"
! grep -q " ERROR .*snapshot" "$WORK/relay_stop.log" || fail "a stop during the snapshot was logged as an error: $(grep -m2 ' ERROR .*snapshot' "$WORK/relay_stop.log")"
kill "${BG_PIDS[-1]}" 2>/dev/null || true

# --- 2. the read given up after the bound; the snapshot completes ---------
start_silence_proxy chunkproxy "$CHUNK_PREFIX" 1
write_snap_config "$WORK/outboxd.yaml" 3000
dsn_via_proxy "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml" relay
relay=$RELAY_PID
wait_log "$WORK/chunkproxy.log" silenced 60 "the snapshot's chunk read did not reach the proxy"
wait_log "$WORK/relay.log" "snapshot finished" 60 "the snapshot did not finish after the silent read"
grep -q "reading a snapshot chunk: no answer from PostgreSQL for [0-9]* ms (limit 3000 ms" "$WORK/relay.log" ||
    fail "the relay did not say why the chunk read failed: $(grep -m3 'snapshot' "$WORK/relay.log")"
log "evidence: $(grep -m1 -o 'reading a snapshot chunk: no answer.*presumed dead' "$WORK/relay.log")"
wait_streaming "$WORK/relay.log" 1 60
psql_db "$DB" -c "INSERT INTO snap_t VALUES ($ROWS + 1, 'after')" >/dev/null
wait_drained "$DB" "$SLOT" 60
stop_relay_ok "$relay"

consume_json -t "$TOPIC" >"$WORK/snap.json"
python3 - "$WORK/snap.json" "$ROWS" <<'PY' || fail "unexpected records (see above)"
import collections, json, sys
rows = int(sys.argv[2])
ops = collections.Counter()
ids = collections.Counter()
for line in open(sys.argv[1]):
    v = json.loads(line)["value"]
    v = json.loads(v) if isinstance(v, str) else v
    ops[v["op"]] += 1
    ids[v["after"]["id"]] += 1
want = collections.Counter({i: 1 for i in range(1, rows + 2)})
if ids != want or ops != collections.Counter({"r": rows, "c": 1}):
    print("ops", dict(ops), "ids off:", {k: n for k, n in (ids - want + (want - ids)).items()}, file=sys.stderr)
    sys.exit(1)
print(f"{rows} snapshot rows and 1 insert, each exactly once")
PY

# --- 3. a slow answer is not a silent one -----------------------------------
psql_db postgres -c "CREATE DATABASE \"$DB2\"" >/dev/null
psql_db "$DB2" -c "CREATE TABLE big_t (id integer PRIMARY KEY, v text)" \
    -c "INSERT INTO big_t SELECT i, repeat(chr(97 + i % 26), 40000) FROM generate_series(1, 16) i" >/dev/null
write_snap_config "$WORK/slow.yaml" 3000 "$DB2" "$SLOT2" big_t
sed -i "s/port=$PGPORT dbname=$DB2/port=$PG_PROXY_PORT dbname=$DB2/" "$WORK/slow.yaml"
grep -q "port=$PG_PROXY_PORT" "$WORK/slow.yaml" || fail "the dsn was not pointed at the proxy"
prepare_sources "$WORK/slow.yaml"
toxi toxic pg bandwidth downstream rate=100 || fail "cannot limit the PostgreSQL link"
t0=$(date +%s)
start_relay "$WORK/slow.yaml" relay_slow
relay=$RELAY_PID
wait_log "$WORK/relay_slow.log" "snapshot finished" 120 "the snapshot over the slow link did not finish"
secs=$(($(date +%s) - t0))
! grep -q "no answer from PostgreSQL" "$WORK/relay_slow.log" ||
    fail "a slow read was taken for a silent one: $(grep -m1 'no answer from PostgreSQL' "$WORK/relay_slow.log")"
log "16 rows of 40 KB through 100 KB/s: snapshot finished after ${secs} s with a 3 s limit, no read given up"
stop_relay_ok "$relay"
n=$(consume_json -t "$RUN_ID.cdc.big_t" | wc -l)
[ "$n" -eq 16 ] || fail "expected 16 snapshot records of big_t, read $n"
log "ok"

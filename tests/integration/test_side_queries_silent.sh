#!/usr/bin/env bash
# ctest: parallel
# Two queries outside the source's stream, each on a normal connection of
# its own, must not wait for good on a server that went silent (a frozen
# backend, a path that went half-open: TCP keepalives are answered by the
# peer's kernel). A proxy (tests/tools/pg_silence_proxy.py) swallows the
# first such query and keeps both sockets open and silent; the replication
# connection goes through the same proxy and is left alone.
#  1. cdc catalog look-up (the primary key of a REPLICA IDENTITY FULL table,
#     from the source's loop): given up after relay.wal_receiver_timeout_ms
#     (3 s), the source rewinds and reconnects, and the change is published.
#     Without the bound the loop waits for good and nothing is published.
#  2. heartbeat (one thread writes every source's): given up after 3 s and
#     written again on a new connection; and, with a 60 s setting, a SIGTERM
#     while it is silent stops the relay at once (the thread is joined at
#     exit: without the stop it would wait for good).
#  3. outboxd status: reports the database as not answering, after 3 s.
#  4. the retention slot's thread (replay_window): as the heartbeat.
#  5. outboxd replay in its slot-copy advance (no time limit): a SIGTERM
#     ends it at once and the copy is still dropped.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=sqs_$RUN_ID
SLOT=${DB}_${RUN_ID}
create_outbox_db "$DB"
psql_db "$DB" -c "CREATE TABLE full_t (id integer PRIMARY KEY, v text); ALTER TABLE full_t REPLICA IDENTITY FULL" >/dev/null

# --- 1. cdc catalog look-up -------------------------------------------------
start_silence_proxy cdcproxy "SELECT a.attname FROM pg_catalog.pg_index" 1
write_config "$WORK/cdc.yaml" "$DB"
# The cdc table goes under tables:, right after the outbox table's topic.
awk -v topic="$RUN_ID.full_t" '{ print }
    prev ~ /- table: public.outbox/ {
        print "      - table: public.full_t\n        mode: cdc\n        snapshot: never"
        print "        format: json\n        json_schemas: false\n        topic: \"" topic "\""
    }
    { prev = $0 }' "$WORK/cdc.yaml" >"$WORK/cdc.yaml.new"
mv "$WORK/cdc.yaml.new" "$WORK/cdc.yaml"
grep -q "table: public.full_t" "$WORK/cdc.yaml" || fail "config edit failed"
dsn_via_proxy "$WORK/cdc.yaml"
sed -i 's/^relay:$/relay:\n  wal_receiver_timeout_ms: 3000/' "$WORK/cdc.yaml"
prepare_sources "$WORK/cdc.yaml"
start_relay "$WORK/cdc.yaml"
relay=$RELAY_PID
wait_streaming "$WORK/relay.log" 1 60
psql_db "$DB" -c "INSERT INTO full_t VALUES (1, 'one'), (2, 'two')" >/dev/null
t0=$(date +%s)
wait_log "$WORK/cdcproxy.log" silenced 30 "the catalog look-up did not reach the proxy"
wait_drained "$DB" "$SLOT" 60
log "published after the silent catalog look-up in $(($(date +%s) - t0)) s"
grep -q "cdc: catalog query failed: no answer from PostgreSQL for [0-9]* ms (limit 3000 ms" "$WORK/relay.log" ||
    fail "the relay did not say why the catalog look-up failed: $(grep -m3 'catalog' "$WORK/relay.log")"
log "evidence: $(grep -m1 -o 'cdc: catalog query failed: no answer.*presumed dead' "$WORK/relay.log")"
consume_json -t "$RUN_ID.full_t" >"$WORK/full_t.json"
ids=$(python3 -c '
import json, sys
vals = [json.loads(l)["value"] for l in open(sys.argv[1])]
ids = sorted((json.loads(v) if isinstance(v, str) else v)["after"]["id"] for v in vals)
print(" ".join(map(str, ids)))' "$WORK/full_t.json") || fail "unexpected records: $(head -c 600 "$WORK/full_t.json")"
[ "$ids" = "1 2" ] || fail "expected the rows 1 and 2 once each, got: $ids"
stop_relay_ok "$relay"

# --- 2. heartbeat -----------------------------------------------------------
heartbeat_config() { # heartbeat_config FILE TIMEOUT_MS
    write_config "$1" "$DB"
    dsn_via_proxy "$1"
    sed -i "s/^relay:\$/relay:\n  wal_receiver_timeout_ms: $2/" "$1"
    sed -i "s/^    slot: \"$SLOT\"\$/    slot: \"$SLOT\"\n    heartbeat_interval_ms: 300/" "$1"
    grep -q "heartbeat_interval_ms: 300" "$1" || fail "config edit failed"
}
start_silence_proxy hbproxy "SELECT pg_logical_emit_message(true, 'outboxd.heartbeat'" 1
heartbeat_config "$WORK/hb.yaml" 3000
: >"$WORK/relay.log"
start_relay "$WORK/hb.yaml"
relay=$RELAY_PID
wait_log "$WORK/hbproxy.log" silenced 30 "no heartbeat reached the proxy"
wait_log "$WORK/relay.log" "heartbeat: pg_logical_emit_message failed: no answer from PostgreSQL" 15 \
    "the silent heartbeat was not given up"
wait_log "$WORK/relay.log" "heartbeat: writing again" 15 "heartbeats were not written again"
log "evidence: $(grep -m1 -o 'heartbeat: pg_logical_emit_message failed: no answer.*presumed dead' "$WORK/relay.log")"
stop_relay_ok "$relay"

start_silence_proxy hbproxy2 "SELECT pg_logical_emit_message(true, 'outboxd.heartbeat'" 1
heartbeat_config "$WORK/hb2.yaml" 60000
: >"$WORK/relay.log"
start_relay "$WORK/hb2.yaml"
relay=$RELAY_PID
wait_log "$WORK/hbproxy2.log" silenced 30 "no heartbeat reached the proxy"
sleep 0.5
t0=$(date +%s%N)
stop_relay_ok "$relay"
ms=$((($(date +%s%N) - t0) / 1000000))
log "stopped in $ms ms while the heartbeat's connection was silent"
[ "$ms" -lt 5000 ] || fail "the stop took $ms ms: the heartbeat thread waited on the silent connection"
# --- 3. outboxd status ------------------------------------------------------
# A status probe answers, naming the silent database, within the limit, and
# does not ask that database again for the replay window (a second wait).
start_silence_proxy stproxy "SELECT active, coalesce(active_pid" 1
heartbeat_config "$WORK/st.yaml" 3000
sed -i "s/^relay:\$/relay:\n  replay_window: 1s/" "$WORK/st.yaml"
grep -q "replay_window: 1s" "$WORK/st.yaml" || fail "config edit failed"
t0=$(date +%s%N)
rc=0
timeout 60 "$OUTBOXD_BIN" status -c "$WORK/st.yaml" >"$WORK/status.txt" 2>&1 || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
grep -q "silenced" "$WORK/stproxy.log" || fail "the status query did not reach the proxy: $(cat "$WORK/status.txt")"
[ "$rc" != 124 ] || fail "outboxd status waited on the silent connection for 60 s"
grep -q "database: *query failed: no answer from PostgreSQL" "$WORK/status.txt" ||
    fail "status did not report the silent database (exit $rc): $(cat "$WORK/status.txt")"
[ "$rc" != 0 ] || fail "status exited 0 with a database it could not query"
grep -q "replay_window: *unknown (retention slot .*the database did not answer" "$WORK/status.txt" ||
    fail "status asked the silent database again for the replay window: $(grep replay_window "$WORK/status.txt")"
[ "$ms" -lt 6000 ] || fail "status took $ms ms: more than one 3 s wait for the silent database"
log "status answered in $ms ms (exit $rc): $(grep -m1 -o 'query failed: no answer[^:]*' "$WORK/status.txt")"
# --- 4. the retention slot (replay_window) ---------------------------------
# Its thread's advance is given up after 3 s and done on a new connection;
# with a 60 s limit a SIGTERM while it is silent stops the relay at once.
retention_config() { # retention_config FILE TIMEOUT_MS
    write_config "$1" "$DB"
    dsn_via_proxy "$1"
    sed -i "s/^relay:\$/relay:\n  wal_receiver_timeout_ms: $2\n  replay_window: 1s/" "$1"
    grep -q "replay_window: 1s" "$1" || fail "config edit failed"
}
advance="SELECT end_lsn::text FROM pg_catalog.pg_replication_slot_advance"
start_silence_proxy rtproxy "$advance" 1
retention_config "$WORK/rt.yaml" 3000
prepare_sources "$WORK/rt.yaml"
psql_db "$DB" -c "SELECT 1 FROM pg_replication_slots WHERE slot_name = '${SLOT}_keep'" | grep -q 1 ||
    fail "outboxd check did not create the retention slot ${SLOT}_keep"
: >"$WORK/relay.log"
start_relay "$WORK/rt.yaml"
relay=$RELAY_PID
wait_streaming "$WORK/relay.log" 1 60
# P: past where the retention slot was made (a copy of the live slot).
psql_db "$DB" -c "SELECT write_events('$DB', 'rt', 1)" >/dev/null
P=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
ok=f
for i in $(seq 1 400); do
    # confirmations keep coming, so the window has positions to age
    [ $((i % 10)) -eq 1 ] && psql_db "$DB" -c "SELECT write_events('$DB', 'rt', 1)" >/dev/null
    ok=$(psql_db "$DB" -c "SELECT coalesce(confirmed_flush_lsn >= '$P', false) FROM pg_replication_slots WHERE slot_name = '${SLOT}_keep'")
    [ "$ok" = t ] && break
    sleep 0.1
done
grep -q "silenced" "$WORK/rtproxy.log" || fail "no advance reached the proxy"
grep -q "retention slot ${SLOT}_keep: advancing failed: no answer from PostgreSQL" "$WORK/relay.log" ||
    fail "the silent advance was not given up: $(grep -m3 retention "$WORK/relay.log")"
[ "$ok" = t ] || fail "the retention slot did not advance past $P within 40 s after the silent advance"
log "retention slot advanced past $P after: $(grep -m1 -o 'advancing failed: no answer[^(]*' "$WORK/relay.log")"
stop_relay_ok "$relay"

start_silence_proxy rtproxy2 "$advance" 1
retention_config "$WORK/rt2.yaml" 60000
: >"$WORK/relay.log"
start_relay "$WORK/rt2.yaml"
relay=$RELAY_PID
wait_streaming "$WORK/relay.log" 1 60
for i in $(seq 1 300); do
    [ $((i % 10)) -eq 1 ] && psql_db "$DB" -c "SELECT write_events('$DB', 'rt2', 1)" >/dev/null
    grep -q "silenced" "$WORK/rtproxy2.log" && break
    sleep 0.1
done
grep -q "silenced" "$WORK/rtproxy2.log" || fail "no advance reached the proxy"
t0=$(date +%s%N)
stop_relay_ok "$relay"
ms=$((($(date +%s%N) - t0) / 1000000))
log "stopped in $ms ms while the retention slot's advance was silent"
[ "$ms" -lt 5000 ] || fail "the stop took $ms ms: the retention thread waited on the silent connection"
# --- 5. outboxd replay stopped while a query has no time limit -------------
# Advancing the replay's slot copy has no time limit (its work grows with the
# range); silenced, the replay waits in it until a SIGTERM, which must end it
# at once and still drop the copy (on a new connection).
X=$(psql_db "$DB" -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '${SLOT}_keep'")
psql_db "$DB" -c "SELECT write_events('$DB', 'rp', 3)" >/dev/null
Y=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
start_silence_proxy rpproxy "SELECT end_lsn::text FROM pg_catalog.pg_replication_slot_advance" 1
retention_config "$WORK/rp.yaml" 3000
sed -i 's/^relay:$/relay:\n  missing_topic: create/' "$WORK/rp.yaml"
"$OUTBOXD_BIN" replay -c "$WORK/rp.yaml" --source "$DB" --from-lsn "$X" --to-lsn "$Y" \
    >"$WORK/replay.out" 2>"$WORK/replay.log" &
rpid=$!
BG_PIDS+=("$rpid")
for _ in $(seq 1 300); do
    grep -q "silenced" "$WORK/rpproxy.log" && break
    kill -0 "$rpid" 2>/dev/null || fail "the replay ended before its advance: $(tail -3 "$WORK/replay.log")"
    sleep 0.1
done
grep -q "silenced" "$WORK/rpproxy.log" || fail "the replay's advance did not reach the proxy: $(tail -3 "$WORK/replay.log")"
sleep 4 # past the 3 s limit of the other queries: this one has none
kill -0 "$rpid" 2>/dev/null || fail "the replay gave up its advance by itself: $(tail -3 "$WORK/replay.log")"
t0=$(date +%s%N)
kill -TERM "$rpid"
wait_exit "$rpid" 5 || fail "the replay did not end within 5 s of SIGTERM"
rc=$EXIT_RC
ms=$((($(date +%s%N) - t0) / 1000000))
left=$(psql_db "$DB" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${SLOT}_replay'")
[ "$left" = 0 ] || fail "the replay's slot copy ${SLOT}_replay was left behind: $(tail -3 "$WORK/replay.log")"
log "replay stopped in $ms ms during its advance (exit $rc), slot copy dropped"
drop_source "$DB" "${SLOT}_keep"
drop_source "$DB" "$SLOT"
log "PASS"

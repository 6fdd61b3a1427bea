#!/usr/bin/env bash
# ctest: parallel
# A retention slot (replay_window) that PostgreSQL invalidated because it held
# more WAL than max_slot_wal_keep_size allows:
#   1. the running relay warns, naming the slot and the fix, and the live
#      stream goes on;
#   2. a relay started afterwards streams (the lost slot is a warning for the
#      relay, not a reason to stop the outbox), every event exactly once;
#   3. `outboxd check` reports it (exit 1) and `outboxd replay` refuses (exit
#      2), both naming the fix;
#   4. the fix they name (drop the slot, `outboxd check --create`) starts a
#      new window: check passes, a dry-run replay from the new window counts
#      the events written after it.
#
# Uses its own throwaway cluster (1 MB WAL segments, max_slot_wal_keep_size
# 4MB; the stack's server stays untouched) and the stack's broker.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

# Not under $WORK: the postgres OS user (when run as root) must reach it.
D=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-lost.XXXXXX")
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$D"
P=$(free_port)
extra_cleanup() {
    [ -f "$D/pg/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$D/pg" -w stop -m immediate >/dev/null 2>&1
    rm -rf "$D"
    return 0
}
as_pg "$PG_BIN/initdb" -D "$D/pg" -U postgres -A trust --wal-segsize=1 >/dev/null
cat >>"$D/pg/postgresql.conf" <<EOF
port = $P
listen_addresses = '127.0.0.1'
unix_socket_directories = '$D'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_slot_wal_keep_size = 4MB
EOF
echo "host replication all 127.0.0.1/32 trust" >>"$D/pg/pg_hba.conf"
as_pg "$PG_BIN/pg_ctl" -D "$D/pg" -l "$D/pg.log" -w start >/dev/null
# From here on psql_db, create_outbox_db, write_config and wait_drained
# talk to this cluster.
export PGHOST=127.0.0.1 PGPORT=$P PGUSER=postgres

DB=app
create_outbox_db "$DB"
psql_db "$DB" -c "CREATE TABLE junk (v text)"
COMMIT_INTERVAL_MS=20 write_config "$WORK/outboxd.yaml" "$DB"
# A window of 12 MB of WAL: more than the server lets a slot hold (4 MB).
sed -i 's/^relay:$/relay:\n  status_interval_ms: 500/' "$WORK/outboxd.yaml"
sed -i "/^  - name: $DB\$/a\\    replay_window: 12MB" "$WORK/outboxd.yaml"
SLOT=${DB}_${RUN_ID}
KEEP=${SLOT}_keep
prepare_sources "$WORK/outboxd.yaml"
slot_status() { psql_db "$DB" -c "SELECT CASE WHEN restart_lsn IS NULL THEN 'lost' ELSE wal_status END FROM pg_replication_slots WHERE slot_name = '$1'"; }
[ "$(slot_status "$KEEP")" = reserved ] || fail "outboxd check did not create $KEEP"

ROWS=0
write_rows() { # write_rows N: N single-row transactions
    for _ in $(seq 1 "$1"); do
        ROWS=$((ROWS + 1))
        psql_db "$DB" -c "SELECT write_events('$DB', 'k$((ROWS % 7))', 1)" >/dev/null
    done
}

start_relay "$WORK/outboxd.yaml" relay
relay=$RELAY_PID
wait_streaming "$WORK/relay.log" 1
write_rows 20

# WAL the outbox does not publish, a megabyte at a time: the relay confirms
# it (its slot keeps up), the retention slot stays 12 MB behind, and a
# checkpoint each round removes what max_slot_wal_keep_size no longer keeps.
for i in $(seq 1 24); do
    psql_db "$DB" -c "INSERT INTO junk SELECT repeat('x', 1000) FROM generate_series(1, 1000)" >/dev/null
    psql_db "$DB" -c "SELECT pg_switch_wal()" >/dev/null
    wait_drained "$DB" "$SLOT" 60
    psql_db "$DB" -c "CHECKPOINT"
    [ "$(slot_status "$KEEP")" = lost ] && break
done
[ "$(slot_status "$KEEP")" = lost ] || fail "the retention slot was not invalidated after $i rounds: $(slot_status "$KEEP")"
[ "$(slot_status "$SLOT")" != lost ] || fail "test setup: the live slot was invalidated too"
log "retention slot $KEEP invalidated after $i rounds (live slot: $(slot_status "$SLOT"))"

# 1. The running relay: a warning naming the slot and the fix; the stream goes on.
write_rows 20
wait_log "$WORK/relay.log" "retention slot $KEEP has lost required WAL: .*pg_drop_replication_slot\\('$KEEP'\\) and run \`outboxd check --create\`" 45 \
    "the running relay did not warn about the lost retention slot"
wait_drained "$DB" "$SLOT"
log "running relay: $(grep -m1 "has lost required WAL" "$WORK/relay.log")"

# 2. A relay started now streams all the same.
stop_relay_ok "$relay"
start_relay "$WORK/outboxd.yaml" relay2
relay=$RELAY_PID
wait_streaming "$WORK/relay2.log" 1 60
grep -q "retention slot '$KEEP' has lost required WAL .*(the live stream goes on; only replay needs this slot)" "$WORK/relay2.log" ||
    fail "the restarted relay did not warn about the lost retention slot: $(grep -i retention "$WORK/relay2.log" | tail -3)"
write_rows 20
wait_drained "$DB" "$SLOT"
: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
[ "$(wc -l <"$WORK/expected.tsv")" -eq "$ROWS" ] || fail "test setup: $ROWS rows written, $(wc -l <"$WORK/expected.tsv") in the table"
check_exactly_once "$WORK/expected.tsv" || fail "events lost or duplicated"
log "relay restarted with the lost retention slot: streaming, $ROWS of $ROWS events exactly once"

# 3. check and replay name it.
rc=0
"$OUTBOXD_BIN" check -c "$WORK/outboxd.yaml" >"$WORK/check.out" 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "outboxd check exited $rc, expected 1: $(cat "$WORK/check.out")"
grep -q "retention slot '$KEEP' has lost required WAL .*pg_drop_replication_slot('$KEEP')" "$WORK/check.out" ||
    fail "outboxd check does not name the lost retention slot: $(cat "$WORK/check.out")"
X=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
rc=0
"$OUTBOXD_BIN" replay -c "$WORK/outboxd.yaml" --source "$DB" --from-lsn "$X" --dry-run \
    >"$WORK/replay.out" 2>"$WORK/replay.err" || rc=$?
[ "$rc" -eq 2 ] || fail "replay from a lost retention slot exited $rc, expected 2: $(cat "$WORK/replay.err")"
grep -q "retention slot $KEEP has lost required WAL .*pg_drop_replication_slot('$KEEP')" "$WORK/replay.err" ||
    fail "replay does not name the lost retention slot: $(cat "$WORK/replay.err")"
log "check: $(grep -m1 "lost required WAL" "$WORK/check.out")"
log "replay: $(cat "$WORK/replay.err")"

# 4. The fix they name starts a new window.
psql_db "$DB" -c "SELECT pg_drop_replication_slot('$KEEP')" >/dev/null
"$OUTBOXD_BIN" check --create -c "$WORK/outboxd.yaml" >"$WORK/check2.out" 2>&1 ||
    fail "outboxd check --create after dropping the lost slot: $(cat "$WORK/check2.out")"
[ "$(slot_status "$KEEP")" = reserved ] || fail "outboxd check --create did not re-create $KEEP"
Y=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
before=$ROWS
write_rows 15
wait_drained "$DB" "$SLOT"
Z=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
"$OUTBOXD_BIN" replay -c "$WORK/outboxd.yaml" --source "$DB" --from-lsn "$Y" --to-lsn "$Z" --dry-run \
    >"$WORK/replay2.out" 2>"$WORK/replay2.err" || fail "dry-run replay from the new window: $(cat "$WORK/replay2.err")"
grep -q "^would replay $((ROWS - before)) event(s) of source $DB" "$WORK/replay2.out" ||
    fail "the dry run did not count the $((ROWS - before)) events written after the new window began: $(cat "$WORK/replay2.out" "$WORK/replay2.err")"
log "new window: $(head -1 "$WORK/replay2.out")"

stop_relay_ok "$relay"
log "PASS"

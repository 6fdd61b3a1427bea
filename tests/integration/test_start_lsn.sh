#!/usr/bin/env bash
# ctest: parallel
# outboxd run --start-lsn SOURCE=LSN (README "Replay"): a deliberate skip
# forward. Phase A is relayed; phase B is written while the relay is stopped;
# the relay is restarted with --start-lsn at the end of phase B, and phase C
# is written after. Asserted:
#   - Kafka holds A and C exactly once and nothing of B (okcat --expect
#     counts any B event as unexpected);
#   - the WARN line names the range and counts what is skipped (B's
#     transactions and changes);
#   - an LSN behind the last checkpoint is refused (exit 2, nothing changed:
#     the slot stays where it was), as are an unknown source and a malformed
#     argument, each checked before the first skip;
#   - a SIGTERM while it counts what it skips stops it (exit 1, the slot
#     unchanged, no checkpoint, the relay not started).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=sl_$RUN_ID
SLOT=${DB}_${RUN_ID}
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

# write_txns KEY N: N transactions of 2 outbox rows each.
write_txns() {
    for _ in $(seq 1 "$2"); do echo "SELECT write_events('$DB', '$1', 2);"; done | psql_db "$DB" >/dev/null
}

start_relay "$WORK/outboxd.yaml" relay-a
A_START=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
write_txns ka 10
A_END=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
wait_drained "$DB" "$SLOT"
stop_relay_ok "$RELAY_PID"
: >"$WORK/a.tsv"
expected_events "$DB" "$WORK/a.tsv"

# Phase B while the relay is stopped: 15 transactions, 30 outbox rows.
B_START=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
write_txns kb 15
S=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
log "phase A ends at $A_END; phase B in [$B_START, $S]"

# Refusals first: nothing may change.
slot_before=$(psql_db "$DB" -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$SLOT'")
refused() { # refused PATTERN ARG
    local rc=0
    "$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" --start-lsn "$2" >"$WORK/relay-refused.log" 2>&1 || rc=$?
    [ "$rc" -eq 2 ] || fail "--start-lsn $2 exited $rc, expected 2: $(tail -3 "$WORK/relay-refused.log")"
    grep -q -- "$1" "$WORK/relay-refused.log" ||
        fail "--start-lsn $2: expected '$1', got: $(tail -3 "$WORK/relay-refused.log")"
    log "refused as expected: $(grep -- "$1" "$WORK/relay-refused.log" | head -1)"
}
refused "is behind the last checkpoint, which published up to" "$DB=$A_START"
refused "unknown source 'nosuch'" "nosuch=$S"
refused "is not SOURCE=LSN" "$DB"
# every argument is checked before the first skip: a good one first and an
# unknown source second skips nothing (the slot check below)
rc=0
"$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" --start-lsn "$DB=$S" --start-lsn "nosuch=$S" >"$WORK/relay-refused.log" 2>&1 || rc=$?
[ "$rc" -eq 2 ] && grep -q "unknown source 'nosuch'" "$WORK/relay-refused.log" ||
    fail "a good --start-lsn then an unknown source: exit $rc: $(tail -3 "$WORK/relay-refused.log")"
! grep -q "SKIPPING FORWARD\|checkpoint committed" "$WORK/relay-refused.log" ||
    fail "the first --start-lsn was done although the second was refused: $(grep -- --start-lsn "$WORK/relay-refused.log")"
[ "$(psql_db "$DB" -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$SLOT'")" = "$slot_before" ] ||
    fail "a refused --start-lsn moved the slot"

# A stop while the skip counts what it skips (a decoding of the whole range,
# with no time limit; held here by a lock on this database's
# pg_publication, which pgoutput reads at the range's first change): SIGTERM
# ends it with exit 1, named, and nothing is skipped.
psql_db "$DB" -c "BEGIN; LOCK TABLE pg_catalog.pg_publication IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120)" >/dev/null 2>&1 &
locker=$!
BG_PIDS+=("$locker")
unlock() {
    psql_db "$DB" -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$DB' AND query LIKE '%pg_sleep(120)%' AND pid <> pg_backend_pid()" >/dev/null
    wait "$locker" 2>/dev/null || true
}
locked=0
for _ in $(seq 1 300); do
    locked=$(psql_db "$DB" -c "SELECT count(*) FROM pg_locks WHERE database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND relation = 'pg_catalog.pg_publication'::regclass AND mode = 'AccessExclusiveLock' AND granted")
    [ "$locked" = 1 ] && break
    sleep 0.1
done
[ "$locked" = 1 ] || { unlock; fail "the lock on pg_publication was not taken within 30 s"; }
"$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" --start-lsn "$DB=$S" >"$WORK/relay-stopped.log" 2>&1 &
stopped=$!
RELAY_PIDS+=("$stopped")
waiting=0
for _ in $(seq 1 600); do
    waiting=$(psql_db "$DB" -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$DB' AND wait_event_type = 'Lock' AND query LIKE '%pg_logical_slot_peek_binary_changes%'")
    [ "$waiting" = 1 ] && break
    kill -0 "$stopped" 2>/dev/null || { unlock; fail "--start-lsn exited before its count: $(tail -5 "$WORK/relay-stopped.log")"; }
    sleep 0.1
done
[ "$waiting" = 1 ] || { unlock; fail "the count of what --start-lsn skips never waited on the lock"; }
kill -TERM "$stopped"
rc=0
for _ in $(seq 1 300); do kill -0 "$stopped" 2>/dev/null || break; sleep 0.1; done
kill -0 "$stopped" 2>/dev/null && { unlock; fail "--start-lsn still counting 30 s after SIGTERM"; }
wait "$stopped" || rc=$?
# The stopped relay must have cancelled its count: the slot is free while
# the lock is still held (else the backend would decode on, holding it).
free=f
for _ in $(seq 1 100); do
    free=$(psql_db "$DB" -c "SELECT active_pid IS NULL FROM pg_replication_slots WHERE slot_name = '$SLOT'")
    [ "$free" = t ] && break
    sleep 0.1
done
unlock
[ "$free" = t ] || fail "the count went on after the stop (slot $SLOT still active while the lock was held)"
[ "$rc" -eq 1 ] || fail "--start-lsn stopped by SIGTERM exited $rc, expected 1: $(tail -3 "$WORK/relay-stopped.log")"
grep -q "stopped by signal 15: the relay does not start" "$WORK/relay-stopped.log" ||
    fail "no line saying the stop: $(tail -3 "$WORK/relay-stopped.log")"
! grep -q "checkpoint committed at\|streaming slot" "$WORK/relay-stopped.log" ||
    fail "a stopped --start-lsn committed its checkpoint or started: $(tail -3 "$WORK/relay-stopped.log")"
[ "$(psql_db "$DB" -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$SLOT'")" = "$slot_before" ] ||
    fail "a stopped --start-lsn moved the slot"
log "stopped while counting: $(grep -o 'stopped by signal.*' "$WORK/relay-stopped.log" | head -1)"

# The skip.
"$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" --start-lsn "$DB=$S" >>"$WORK/relay-skip.log" 2>&1 &
RELAY_PID=$!
RELAY_PIDS+=("$RELAY_PID")
for _ in $(seq 1 600); do
    grep -q "streaming slot" "$WORK/relay-skip.log" && break
    kill -0 "$RELAY_PID" 2>/dev/null || fail "relay with --start-lsn exited: $(tail -5 "$WORK/relay-skip.log")"
    sleep 0.1
done
grep -q "WARN .*--start-lsn $S: SKIPPING FORWARD from [0-9A-F/]* (slot $SLOT) to $S, [0-9]* bytes of WAL: 15 transaction(s) with 30 change(s) of publication" \
    "$WORK/relay-skip.log" || fail "no WARN line counting the 15 skipped transactions: $(grep -- --start-lsn "$WORK/relay-skip.log")"
grep "SKIPPING FORWARD" "$WORK/relay-skip.log" >&2
grep -q "last checkpoint commit [0-9A-F]" "$WORK/relay-skip.log" || fail "the relay did not start from the skip's checkpoint"
[ "$(psql_db "$DB" -c "SELECT confirmed_flush_lsn >= '$S' FROM pg_replication_slots WHERE slot_name = '$SLOT'")" = t ] ||
    fail "the slot was not advanced to $S"

write_txns kc 10
wait_drained "$DB" "$SLOT"
: >"$WORK/all.tsv"
expected_events "$DB" "$WORK/all.tsv"
# Expected in Kafka: every row but phase B's (key kb).
grep -v -P "\t$DB-kb\t|\tkb\t" "$WORK/all.tsv" >"$WORK/expected.tsv" || true
[ "$(wc -l <"$WORK/expected.tsv")" -eq 40 ] || fail "expected 40 rows of phases A and C, found $(wc -l <"$WORK/expected.tsv")"
[ "$(grep -c -P "\tkb\t" "$WORK/all.tsv")" -eq 30 ] || fail "expected 30 phase B rows in the table"
check_exactly_once "$WORK/expected.tsv" >"$WORK/okcat.out" ||
    { cat "$WORK/okcat.out" >&2; fail "Kafka does not hold phases A and C exactly once without B"; }
tail -1 "$WORK/okcat.out" >&2
stop_relay_ok "$RELAY_PID"
drop_source "$DB" "$SLOT"
log "PASS"

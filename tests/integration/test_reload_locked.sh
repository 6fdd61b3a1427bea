#!/usr/bin/env bash
# ctest: parallel
# A reload adds a table that another session holds locked (a migration's
# ACCESS EXCLUSIVE lock, held up to 120 s): the source adds it to its publication
# from its own loop, and ALTER PUBLICATION ... ADD TABLE waits for the lock.
# That wait is bounded (statement_timeout, as the periodic catalog check's):
# the source logs why and streams on, so outbox rows written meanwhile
# arrive within seconds, not when the lock is released (before, the loop
# waited for the lock, sending no status updates, and every event waited
# with it). Once the lock is gone the periodic check adds the table.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=rlk_$RUN_ID
SLOT=${DB}_$RUN_ID
create_outbox_db "$DB"
psql_db "$DB" -c "CREATE TABLE lk (id integer PRIMARY KEY, v text)" >/dev/null
write_config "$WORK/a.yaml" "$DB"
sed -i 's/^relay:$/relay:\n  status_interval_ms: 2000/' "$WORK/a.yaml"
awk '{print} /^        topic: / && !done {print "      - table: public.lk\n        mode: cdc\n        snapshot: never\n        format: json\n        topic: \"'"$RUN_ID"'.lk\""; done=1}' \
    "$WORK/a.yaml" >"$WORK/b.yaml"
grep -q "table: public.lk" "$WORK/b.yaml" || fail "test setup: b.yaml not edited"
cp "$WORK/a.yaml" "$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml" relay
relay=$RELAY_PID
LOGF=$WORK/relay.log
wait_streaming "$LOGF" 1 60

# The lock, held up to 120 s by a session of its own (ended once checked):
# far beyond the bounded check's 5 s, so a loaded machine cannot blur them.
psql_db "$DB" -c "BEGIN; LOCK TABLE lk IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120); COMMIT;" >/dev/null 2>&1 &
locker=$!
BG_PIDS+=("$locker")
for _ in $(seq 1 100); do
    [ "$(psql_db "$DB" -c "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'lk' AND l.mode = 'AccessExclusiveLock' AND l.granted")" = 1 ] && break
    sleep 0.1
done
t0=$(date +%s)
cp "$WORK/b.yaml" "$WORK/outboxd.yaml"
kill -HUP "$relay"
wait_log "$LOGF" "reload: configuration 1 valid" 30 "the reload was not taken"
psql_db "$DB" -c "SELECT write_events('$DB', 'k-1', 5)" >/dev/null
: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
IDLE_MS=2000 check_exactly_once "$WORK/expected.tsv" || fail "events written during the lock did not arrive"
t1=$(date +%s)
[ $((t1 - t0)) -lt 60 ] || fail "the events took $((t1 - t0)) s: the source waited for the lock"
kill -0 "$locker" 2>/dev/null || fail "test setup: the lock was released before the events arrived"
grep -q "reload: .*statement timeout" "$LOGF" ||
    fail "the bounded ALTER PUBLICATION was not reported: $(grep reload "$LOGF" | tail -n 3)"
log "events written while lk was locked arrived within $((t1 - t0)) s; $(grep -o 'reload: .*statement timeout' "$LOGF" | head -1 | cut -c1-140)"

# Once the lock is gone, the periodic check adds the table.
psql_db "$DB" -c "SELECT pg_terminate_backend(pid) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'lk' AND l.mode = 'AccessExclusiveLock'" >/dev/null
wait "$locker" || true
for _ in $(seq 1 300); do
    [ "$(psql_db "$DB" -c "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'outboxd_pub' AND tablename = 'lk'")" = 1 ] && break
    sleep 0.1
done
[ "$(psql_db "$DB" -c "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'outboxd_pub' AND tablename = 'lk'")" = 1 ] ||
    fail "lk was not added to the publication after the lock was released"
stop_relay_ok "$relay"
drop_source "$DB" "$SLOT"
log "PASS"

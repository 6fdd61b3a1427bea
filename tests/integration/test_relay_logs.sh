#!/usr/bin/env bash
# ctest: parallel
# What the relay tells its operator:
# - the progress line comes every 30 s as the README says, also when nothing
#   changed, and counts updates skipped by on_update: skip;
# - a transaction that ended exactly at max_batch_events is not called
#   "(partial)" at the next start.
# (A PostgreSQL fast shutdown ending the stream with a reason is
# test_pg_fast_restart: it restarts the shared server, so it runs alone,
# while this test's minute of waiting for progress lines runs beside others.)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=plog_$RUN_ID
SLOT="${DB}_${RUN_ID}"
create_outbox_db "$DB"
MAX_BATCH_EVENTS=5 write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
# One transaction of exactly max_batch_events rows, then an UPDATE (skipped).
psql_db "$DB" -c "SELECT write_events('plog', 'k1', 5)" >/dev/null
psql_db "$DB" -c "UPDATE outbox SET type = 'Changed' WHERE ctid = (SELECT min(ctid) FROM outbox)" >/dev/null
wait_drained "$DB" "$SLOT" 300

log "waiting for two progress lines (every 30 s; nothing changes in between)"
for _ in $(seq 1 900); do
    [ "$(grep -c "published [0-9]* events" "$WORK/relay.log" || true)" -ge 2 ] && break
    sleep 0.1
done
n=$(grep -c "published [0-9]* events" "$WORK/relay.log" || true)
[ "$n" -ge 2 ] || fail "only $n progress line(s) in 90 s; the README promises one every 30 s"
grep "published [0-9]* events" "$WORK/relay.log" | tail -n 1 | sed 's/^.*\] //' >&2
grep -q "published 5 events.*1 updates skipped" "$WORK/relay.log" ||
    fail "the progress line does not show the skipped update"

stop_relay_ok "$relay"

log "restart: the last transaction (exactly max_batch_events rows) was published whole"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
for _ in $(seq 1 600); do
    [ "$(grep -c "streaming slot" "$WORK/relay.log")" -ge 2 ] && break
    sleep 0.1
done
line=$(grep "streaming slot" "$WORK/relay.log" | tail -n 1)
echo "$line" | sed 's/^.*\] //' >&2
echo "$line" | grep -q "last checkpoint commit [0-9A-F]*/[0-9A-F]*$" ||
    fail "the startup line does not show a whole last transaction: $line"
stop_relay_ok "$relay"

: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"
drop_source "$DB" "$SLOT"
log "PASS"

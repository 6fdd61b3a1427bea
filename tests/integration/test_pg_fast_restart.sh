#!/usr/bin/env bash
# ctest: serial -- restarts the shared PostgreSQL
# A PostgreSQL fast shutdown while the relay streams: the relay reports why
# the stream ended (never "ended by the server: ;" with an empty reason),
# reconnects once the server is back, and every event arrives once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=pfast_$RUN_ID
SLOT="${DB}_${RUN_ID}"
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
psql_db "$DB" -c "SELECT write_events('pfast', 'k1', 5)" >/dev/null
wait_drained "$DB" "$SLOT" 300

log "PostgreSQL fast restart while streaming"
"$STACK_SH" restart-pg --fast >&2
for _ in $(seq 1 600); do
    [ "$(grep -c "streaming slot" "$WORK/relay.log")" -ge 2 ] && break
    kill -0 "$relay" 2>/dev/null || fail "relay exited during the PostgreSQL restart"
    sleep 0.1
done
[ "$(grep -c "streaming slot" "$WORK/relay.log")" -ge 2 ] || fail "relay did not stream again within 60 s of the restart"
grep -E "replication stream ended|connection" "$WORK/relay.log" | sed 's/^.*\] //' | head -n 3 >&2
grep -Eq "replication stream ended|connection" "$WORK/relay.log" || fail "the end of the stream was not reported"
if grep -q "ended by the server: *;" "$WORK/relay.log"; then
    fail "the end of the stream was reported with an empty reason"
fi
psql_db "$DB" -c "SELECT write_events('pfast', 'k1', 5)" >/dev/null
wait_drained "$DB" "$SLOT" 300
stop_relay_ok "$relay"

: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
[ "$(wc -l <"$WORK/expected.tsv")" = 10 ] || fail "expected 10 rows"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"
drop_source "$DB" "$SLOT"
log "PASS"

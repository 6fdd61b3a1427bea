#!/usr/bin/env bash
# ctest: parallel
# A reload reaches a source that is backing off between failed starts at
# once: the new configuration is tried now, not when the backoff (which
# grows to relay.reconnect_max_backoff_ms) runs out. The source's start
# fails on a configured table that does not exist; after the retries have
# grown to 8 s, a reload without that table makes it stream within a few
# seconds (before the fix it waited out the 8 s), and its rows arrive. A
# reload refused before it (an invalid file) changes nothing: no early
# attempt.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=rbo_$RUN_ID
create_outbox_db "$DB"
CONF=$WORK/outboxd.yaml
good() {
    config_header
    cat <<EOF2
  - name: $DB
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "${DB}_$RUN_ID"
    publication: "outboxd_pub"
    tables:
      - table: public.outbox
        topic: "$RUN_ID.ev.\${aggregatetype}"
EOF2
}
good >"$WORK/good.yaml"
prepare_sources "$WORK/good.yaml"
# The same with a second table that does not exist: every start fails.
{
    good
    cat <<EOF2
      - table: public.not_there
        topic: "$RUN_ID.nt"
EOF2
} | sed "s/^relay:/relay:\n  reconnect_max_backoff_ms: 60000/" >"$CONF"
grep -q "reconnect_max_backoff_ms: 60000" "$CONF" || fail "test setup: $CONF not edited"
LOGF=$WORK/relay.log
start_relay "$CONF" relay
wait_log "$LOGF" "retrying in 8000 ms" 60 "no 8 s backoff between failed starts"
grep -q "not_there" "$LOGF" || fail "the failed start does not name the missing table: $(tail -n 5 "$LOGF")"
cp "$CONF" "$WORK/bad.yaml"
echo "relay: {bogus_key: 1}" >>"$WORK/bad.yaml"
cp "$WORK/bad.yaml" "$CONF"
kill -HUP "$RELAY_PID"
wait_log "$LOGF" "reload refused" 30 "the invalid file was not refused"
sleep 1
! grep -q "reconnecting now" "$LOGF" || fail "a refused reload ended the backoff: $(grep "reconnecting now" "$LOGF")"
cp "$WORK/good.yaml" "$CONF"
t0=$(date +%s%N)
kill -HUP "$RELAY_PID"
wait_log "$LOGF" "streaming slot" 60 "the source did not stream after the reload"
ms=$((($(date +%s%N) - t0) / 1000000))
line=$(grep -o "reload: reconnecting now instead of in [0-9]* ms" "$LOGF" | head -n 1)
[ -n "$line" ] || fail "no 'reconnecting now' line: $(tail -n 5 "$LOGF")"
left=$(echo "$line" | grep -o "[0-9]* ms" | cut -d' ' -f1)
[ "$left" -ge 4000 ] || fail "the backoff had only $left ms left at the reload (test setup)"
[ "$ms" -lt "$left" ] || fail "streaming $ms ms after the reload: the backoff ($left ms left) was waited out"
psql_db "$DB" -c "SELECT write_events('a', 'k1', 20)" >/dev/null
wait_drained "$DB" "${DB}_$RUN_ID" 120
n=$(consume_json -t "$RUN_ID.ev.a" --timeout-ms 60000 | wc -l)
[ "$n" -eq 20 ] || fail "expected 20 events, found $n"
stop_relay_ok "$RELAY_PID"
log "PASS: $line; streaming $ms ms after the reload; 20 of 20 events"

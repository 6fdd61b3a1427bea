#!/usr/bin/env bash
# ctest: parallel
# The running source's periodic catalog check (every table still exists and
# is in the publication) goes over a normal connection of its own, from the
# source's loop. When that connection goes silent (a frozen backend, a path
# that went half-open: TCP keepalives are answered by the peer's kernel),
# its query must not hold the loop, and with it the stream, for good: it is
# given up after relay.wal_receiver_timeout_ms (3 s here), said so, the
# connection reopened at the next check, and events keep flowing. A proxy
# (tests/tools/pg_silence_proxy.py) swallows the first catalog-check query
# and keeps both sockets open and silent; the replication connection goes
# through the same proxy and is left alone.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=ccs_$RUN_ID
SLOT=${DB}_${RUN_ID}
create_outbox_db "$DB"
# The check's query (src/relay/pgsetup.c, outboxd_pgsetup_watch) starts so.
start_silence_proxy proxy "SELECT c.oid IS NOT NULL" 1
write_config "$WORK/outboxd.yaml" "$DB"
dsn_via_proxy "$WORK/outboxd.yaml"
sed -i 's/^relay:$/relay:\n  status_interval_ms: 1000\n  wal_receiver_timeout_ms: 3000/' "$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
for _ in $(seq 1 600); do
    grep -q "silenced" "$WORK/proxy.log" && break
    kill -0 "$relay" 2>/dev/null || fail "the relay exited: $(tail -3 "$WORK/relay.log")"
    sleep 0.1
done
grep -q "silenced" "$WORK/proxy.log" || fail "no catalog check reached the proxy in 60 s: $(tail -3 "$WORK/relay.log")"
t0=$(date +%s)
log "the catalog check's connection is silent now; writing 1,000 events"
for i in $(seq 1 10); do echo "SELECT write_events('$DB', 'k$i', 100);"; done | psql_db "$DB" >/dev/null
# Without the bound the source loop waits on the silent connection for good
# and nothing more is relayed.
wait_drained "$DB" "$SLOT" 60
log "relayed while the check's connection was silent, after $(($(date +%s) - t0)) s"
grep -q "catalog check failed: no answer from PostgreSQL for [0-9]* ms (limit 3000 ms, set by relay.wal_receiver_timeout_ms): the connection is presumed dead" "$WORK/relay.log" ||
    fail "the relay did not say why the catalog check failed: $(grep -m3 'catalog' "$WORK/relay.log")"
log "evidence: $(grep -m1 -o 'catalog check failed: no answer.*presumed dead' "$WORK/relay.log")"
# The next checks reopen the connection and pass (the proxy silences only
# the first): no further failure once it reconnected.
n1=$(grep -c "catalog check failed" "$WORK/relay.log" || true)
sleep 3
n2=$(grep -c "catalog check failed" "$WORK/relay.log" || true)
[ "$n1" = "$n2" ] || fail "the catalog check keeps failing after the silent connection was closed ($n1, then $n2)"
: >"$WORK/all.tsv"
expected_events "$DB" "$WORK/all.tsv"
[ "$(wc -l <"$WORK/all.tsv")" = 1000 ] || fail "expected 1,000 outbox rows"
check_exactly_once "$WORK/all.tsv" >"$WORK/okcat.out" ||
    { cat "$WORK/okcat.out" >&2; fail "the events did not arrive exactly once"; }
tail -1 "$WORK/okcat.out" >&2
stop_relay_ok "$relay"
drop_source "$DB" "$SLOT"
log "PASS"

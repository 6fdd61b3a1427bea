#!/usr/bin/env bash
# ctest: parallel
# A server that goes silent at START_REPLICATION, before the stream exists:
# a walsender frozen right after it took the slot, or a path that went
# half-open at that moment. The stream's liveness check (status updates
# that ask for a reply) only runs once streaming, and TCP keepalives are
# answered by the peer's kernel, so a plain PQexec waited for good: a CI run
# of test_replay_frozen_server froze the replay's walsender in exactly that
# window and the replay hung. Every replication command now gives up after
# relay.wal_receiver_timeout_ms (3 s here). A proxy (tests/tools/
# pg_silence_proxy.py) swallows the first START_REPLICATION it sees and
# keeps both sockets open and silent, so the window is hit every run:
#   - the relay gives up the command, says why, reconnects (the next
#     START_REPLICATION passes) and relays every event exactly once;
#   - a replay gives up with exit 1 and the reason; run again, it completes
#     and its target holds the range exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=rsc_$RUN_ID
SLOT=${DB}_${RUN_ID}
create_outbox_db "$DB"

# The relay's connections go through the proxy, in the clear (it reads the
# protocol).
start_silence_proxy proxy1 START_REPLICATION 1
write_config "$WORK/outboxd.yaml" "$DB"
dsn_via_proxy "$WORK/outboxd.yaml"
sed -i 's/^relay:$/relay:\n  replay_window: 1h\n  missing_topic: create\n  wal_receiver_timeout_ms: 3000/' "$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"

X=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
for i in $(seq 1 5); do echo "SELECT write_events('$DB', 'k$i', 100);"; done | psql_db "$DB" >/dev/null

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
t0=$(date +%s)
# Without the bound the relay waits for good; 60 s separates the two on a
# loaded machine (the bound is 3 s).
for _ in $(seq 1 600); do
    grep -q "START_REPLICATION: no answer from PostgreSQL" "$WORK/relay.log" && break
    kill -0 "$relay" 2>/dev/null || fail "the relay exited: $(tail -3 "$WORK/relay.log")"
    sleep 0.1
done
grep -q "silenced" "$WORK/proxy1.log" || fail "the proxy silenced nothing: $(cat "$WORK/proxy1.log")"
grep -q "START_REPLICATION: no answer from PostgreSQL.*presumed dead" "$WORK/relay.log" ||
    fail "the relay still waits for START_REPLICATION 60 s after the server went silent"
log "the relay gave up the silent START_REPLICATION after $(($(date +%s) - t0)) s: $(grep -m1 -o 'START_REPLICATION: no answer.*presumed dead' "$WORK/relay.log")"
wait_drained "$DB" "$SLOT" 120
for i in $(seq 1 5); do echo "SELECT write_events('$DB', 'k$i', 100);"; done | psql_db "$DB" >/dev/null
wait_drained "$DB" "$SLOT" 120
Y=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
: >"$WORK/all.tsv"
expected_events "$DB" "$WORK/all.tsv"
[ "$(wc -l <"$WORK/all.tsv")" = 1000 ] || fail "expected 1,000 outbox rows"
check_exactly_once "$WORK/all.tsv" >"$WORK/okcat1.out" ||
    { cat "$WORK/okcat1.out" >&2; fail "the relay did not deliver every event exactly once"; }
tail -1 "$WORK/okcat1.out" >&2
stop_relay_ok "$relay"

# The replay, through a fresh proxy that silences its START_REPLICATION.
start_silence_proxy proxy2 START_REPLICATION 1
sed -i "s|port=[0-9]* sslmode=disable|port=$PROXY_PORT sslmode=disable|" "$WORK/outboxd.yaml"
awk -F'\t' -v OFS='\t' '{ $3 = $3 ".replay"; print }' "$WORK/all.tsv" >"$WORK/expect.tsv"
t0=$(date +%s)
rc=0
timeout -k 5 60 "$OUTBOXD_BIN" replay -c "$WORK/outboxd.yaml" --source "$DB" --from-lsn "$X" --to-lsn "$Y" \
    >"$WORK/replay1.out" 2>"$WORK/relay-replay1.log" || rc=$?
[ "$rc" != 124 ] || fail "the replay still waits for START_REPLICATION 60 s after the server went silent"
[ "$rc" = 1 ] || fail "the replay exited $rc, expected 1: $(tail -3 "$WORK/relay-replay1.log")"
grep -q "START_REPLICATION: no answer from PostgreSQL.*presumed dead" "$WORK/relay-replay1.log" ||
    fail "the replay did not say why it stopped: $(tail -3 "$WORK/relay-replay1.log")"
log "the replay gave up after $(($(date +%s) - t0)) s, exit 1"
"$OUTBOXD_BIN" replay -c "$WORK/outboxd.yaml" --source "$DB" --from-lsn "$X" --to-lsn "$Y" \
    >"$WORK/replay2.out" 2>"$WORK/relay-replay2.log" || fail "the second replay failed: $(tail -3 "$WORK/relay-replay2.log")"
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -T "^$RUN_ID\\.ev\\..*\\.replay\$" --idle-ms 3000 \
    --timeout-ms 120000 --expect "$WORK/expect.tsv" >"$WORK/okcat2.out" ||
    { cat "$WORK/okcat2.out" >&2; fail "the replay target does not hold the range exactly once"; }
tail -1 "$WORK/okcat2.out" >&2
drop_source "$DB" "$SLOT"
drop_source "$DB" "${SLOT}_keep"
log "PASS"

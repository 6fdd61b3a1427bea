#!/usr/bin/env bash
# ctest: serial -- sets the shared server's wal_sender_timeout; stops the shared broker
# Slow Kafka calls at startup (init_transactions, the checkpoint read,
# metadata: up to 10 to 15 s each while the broker is away) must not run
# while a replication stream is open, or a short wal_sender_timeout (managed
# servers use 30 s) kills it. The broker is stopped when the relay starts and
# comes back while the relay is inside those calls; with wal_sender_timeout at
# 5 s (the blocking calls take up to 10 s each) the relay must then stream
# without a single replication timeout.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=pwst_$RUN_ID
SLOT="${DB}_${RUN_ID}"
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

extra_cleanup() {
    psql_db postgres -c "ALTER SYSTEM RESET wal_sender_timeout" -c "SELECT pg_reload_conf()" >/dev/null 2>&1 || true
    "$STACK_SH" start-kafka >/dev/null 2>&1 || true
}
# The event topic exists beforehand: creating it on first use is not what
# this test measures.
"$STACK_SH" topic-create "$RUN_ID.ev.wst" 1 >&2
psql_db postgres -c "ALTER SYSTEM SET wal_sender_timeout = '5s'" -c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 1 50); do
    [ "$(psql_db postgres -c "SHOW wal_sender_timeout")" = "5s" ] && break
    sleep 0.1
done
[ "$(psql_db postgres -c "SHOW wal_sender_timeout")" = "5s" ] || fail "wal_sender_timeout was not applied"
pg_log_start=$(wc -c <"$STACK_DIR/pg.log")

psql_db "$DB" -c "SELECT write_events('wst', 'k1', 50)" >/dev/null
"$STACK_SH" stop-kafka >&2
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
# The relay is now inside blocking Kafka calls; let it sit there for several
# wal_sender_timeouts before the broker returns.
for _ in $(seq 1 600); do
    grep -q "Kafka not ready" "$WORK/relay.log" && break
    sleep 0.1
done
grep -q "Kafka not ready" "$WORK/relay.log" || fail "the relay never waited for Kafka"
sleep 6
"$STACK_SH" start-kafka >&2
kill -0 "$relay" || fail "relay died while the broker was away"
psql_db "$DB" -c "SELECT write_events('wst', 'k1', 50)" >/dev/null
wait_drained "$DB" "$SLOT" 300
# Idle streaming under the short timeout for a while: keepalives answered.
sleep 12
psql_db "$DB" -c "SELECT write_events('wst', 'k1', 50)" >/dev/null
wait_drained "$DB" "$SLOT" 300

: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"
stop_relay_ok "$relay"

timeouts=$(tail -c +"$((pg_log_start + 1))" "$STACK_DIR/pg.log" | grep -c "due to replication timeout" || true)
log "replication timeouts in the server log: $timeouts"
[ "$timeouts" -eq 0 ] || fail "the server ended the relay's replication connection for timeout"
if grep -E "replication stream ended|rewinding" "$WORK/relay.log" >&2; then
    fail "the relay's stream was interrupted"
fi
grep -c "Kafka not ready" "$WORK/relay.log" | sed 's/^/Kafka-not-ready retries: /' >&2
drop_source "$DB" "$SLOT"
log "PASS"

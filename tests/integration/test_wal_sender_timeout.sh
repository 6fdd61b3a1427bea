#!/usr/bin/env bash
# ctest: lock kafka_proxy -- its broker outage is the shared broker's proxied listener cut
# Slow Kafka calls at startup (init_transactions, the checkpoint read,
# metadata: up to 10 to 15 s each while the broker is away) must not run
# while a replication stream is open, or a short wal_sender_timeout (managed
# servers use 30 s) kills it. The broker is unreachable when the relay starts
# (it reaches Kafka through a Toxiproxy, faults.sh, whose proxy is disabled:
# connections refused) and comes back while the relay is inside those calls;
# with wal_sender_timeout at 5 s (asked for by the relay's own connections,
# so other tests' walsenders keep the server's setting; the blocking calls
# take up to 10 s each) the relay must then stream without a single
# replication timeout.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

DB=pwst_$RUN_ID
SLOT="${DB}_${RUN_ID}"
create_outbox_db "$DB"
KAFKA_BOOTSTRAP=$KAFKA_VIA_PROXY write_config "$WORK/outboxd.yaml" "$DB"
dsn_wal_sender_timeout "$WORK/outboxd.yaml" 5s
prepare_sources "$WORK/outboxd.yaml"

# The event topic exists beforehand: creating it on first use is not what
# this test measures.
"$STACK_SH" topic-create "$RUN_ID.ev.wst" 1 >&2
pg_log_start=$(wc -c <"$STACK_DIR/pg.log")

psql_db "$DB" -c "SELECT write_events('wst', 'k1', 50)" >/dev/null
log "the relay's link to the broker is cut"
toxi disable kafka
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
toxi enable kafka
log "the relay's link to the broker is back"
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

timeouts=$(tail -c +"$((pg_log_start + 1))" "$STACK_DIR/pg.log" | grep -Ec "@$DB LOG: +terminating walsender process due to replication timeout" || true)
log "replication timeouts in the server log: $timeouts"
[ "$timeouts" -eq 0 ] || fail "the server ended the relay's replication connection for timeout"
if grep -E "replication stream ended|rewinding" "$WORK/relay.log" >&2; then
    fail "the relay's stream was interrupted"
fi
grep -c "Kafka not ready" "$WORK/relay.log" | sed 's/^/Kafka-not-ready retries: /' >&2
drop_source "$DB" "$SLOT"
log "PASS"

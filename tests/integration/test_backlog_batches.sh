#!/usr/bin/env bash
# ctest: parallel
# A backlog is drained in full Kafka transactions, even when the stream
# pauses. Caught up, the relay commits as soon as PostgreSQL has nothing more
# to send (group commit). Behind (the walsender sends transactions 100 ms or
# more after their commit), a moment with nothing on the socket only means
# the walsender is still decoding or the link is slower than the relay;
# cutting there made drains commit many small transactions, each costing the
# broker AddPartitionsToTxn, EndTxn, markers and a checkpoint record.
# The backlog: 3,000 single-row transactions written before the relay
# starts, read through a PostgreSQL link limited to 200 KB/s (Toxiproxy;
# only the PostgreSQL proxy, so no lock), which leaves the relay's socket
# empty between the proxy's writes all through the drain. With
# relay.max_batch_events 500 and commit_interval_ms 30000 (a batch of 500
# takes about a second at that rate, so the interval never cuts one, even on
# a loaded machine) the events must go out in exactly 6 Kafka transactions of
# 500; a relay that cut at the pauses committed 9 or 10 transactions of 25 to
# 500 events in three runs. Every event exactly once and in order per key.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
FAULTS_KAFKA_PROXY=0 source "$here/faults.sh"

DB=backlog_$RUN_ID
SLOT=${DB}_${RUN_ID}
TOTAL=3000
BATCH=500
create_outbox_db "$DB"
PGPORT=$PG_PROXY_PORT MAX_BATCH_EVENTS=$BATCH COMMIT_INTERVAL_MS=30000 RELAY_LOG_LEVEL=debug \
    write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"
# One transaction per event (COMMIT inside a procedure), keys k0..k49.
psql_db "$DB" <<'SQL' >/dev/null
CREATE PROCEDURE backlog(n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        PERFORM write_events('backlog', 'k' || (i % 50), 1);
        COMMIT;
    END LOOP;
END $$;
SQL
psql_db "$DB" -c "CALL backlog($TOTAL)" >/dev/null
sleep 0.5 # every transaction is old when the walsender sends it
toxi toxic pg bandwidth downstream rate=200 || fail "cannot limit the PostgreSQL link"
log "backlog written: $TOTAL single-row transactions; PostgreSQL link limited to 200 KB/s"

start_relay "$WORK/outboxd.yaml" relay
relay=$RELAY_PID
wait_drained "$DB" "$SLOT" 120
: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
[ "$(wc -l <"$WORK/expected.tsv")" -eq "$TOTAL" ] || fail "expected $TOTAL outbox rows"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"
stop_relay_ok "$relay"

# The debug line of every Kafka commit: "committed N events in X ms ...".
sizes=$(sed -n 's/.* committed \([0-9]*\) events in .*/\1/p' "$WORK/relay.log" | tr '\n' ' ')
n=$(echo "$sizes" | wc -w)
log "Kafka transactions: $n, events in each: $sizes"
want=$((TOTAL / BATCH))
[ "$n" -eq "$want" ] || fail "the backlog went out in $n Kafka transactions ($sizes), expected $want of $BATCH: batches were cut before they were full"
for s in $sizes; do
    [ "$s" -eq "$BATCH" ] || fail "a Kafka transaction of $s events, expected $BATCH each ($sizes)"
done
drop_case "$DB" "$SLOT"
log "ok"

#!/usr/bin/env bash
# ctest: serial -- restarts the shared PostgreSQL
# Exactly-once across a PostgreSQL restart in the middle of the stream: a
# backlog is being relayed when the server is stopped in immediate mode
# (crash-like: the slot may fall back to its last persisted position); the
# relay reconnects with backoff, skips what it already published, and goes on
# with rows written after the restart.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DB=ppay_$RUN_ID
create_outbox_db "$DB"
MAX_BATCH_EVENTS=500 write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

start_writers "$DB" 2 4000 # a backlog before the relay starts
wait_writers "$WRITER_PID"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
sleep 1.5
log "restarting PostgreSQL (immediate) while the backlog streams"
"$STACK_SH" restart-pg --immediate >&2
kill -0 "$relay" || fail "relay died during the PostgreSQL restart"
start_writers "$DB" 2 1000 300
wait_writers "$WRITER_PID"
wait_drained "$DB" "${DB}_${RUN_ID}" 300

: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
assert_rows_written "$WORK/expected.tsv" "$DB"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed after PostgreSQL restart"
stop_relay_ok "$relay"
grep -q "rewinding" "$WORK/relay.log" || fail "the relay never saw the restart"
grep -E "rewinding|streaming slot|skipped as" "$WORK/relay.log" | sed 's/^.*\] //' | head -n 6 >&2
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

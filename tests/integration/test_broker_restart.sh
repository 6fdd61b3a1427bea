#!/usr/bin/env bash
# ctest: serial -- restarts the shared broker
# Exactly-once across a Kafka broker restart in the middle of the stream:
# the relay's open transaction fails or times out, it aborts, rewinds to the
# last committed checkpoint and carries on once the broker is back.
# Asserted as well: the broker really restarted (a new process) while rows
# were being written and relayed (some rows are written only after it).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DBS=(bpay_$RUN_ID)
for db in "${DBS[@]}"; do create_outbox_db "$db"; done
write_config "$WORK/outboxd.yaml" "${DBS[@]}"
prepare_sources "$WORK/outboxd.yaml"

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
start_writers "${DBS[0]}" 2 1500 200
writer=$WRITER_PID
# Mid-stream: the relay streams and has rows to relay when the broker goes.
for _ in $(seq 1 600); do
    grep -q "streaming slot" "$WORK/relay.log" && break
    kill -0 "$relay" || fail "relay exited before streaming"
    sleep 0.2
done
grep -q "streaming slot" "$WORK/relay.log" || fail "relay did not start streaming within 120 s"
delay=$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 1 + (r % 3000) / 1000 }')
sleep "$delay"
kill -0 "$writer" 2>/dev/null || fail "the writers finished before the broker restart"
broker_before=$(cat "$STACK_DIR/kafka.pid")
log "restarting the Kafka broker (pid $broker_before), ${delay}s after the relay streamed"
log_lines_before=$(wc -l <"$WORK/relay.log")
rows_before=$(psql_db "${DBS[0]}" -c "SELECT count(*) FROM outbox")
"$STACK_SH" restart-kafka >&2
broker_after=$(cat "$STACK_DIR/kafka.pid")
[ "$broker_after" != "$broker_before" ] || fail "the broker was not restarted (pid $broker_after)"
kill -0 "$relay" || fail "relay died during the broker restart"
wait_writers "$writer"
wait_drained "${DBS[0]}" "${DBS[0]}_${RUN_ID}" 300

: >"$WORK/expected.tsv"
expected_events "${DBS[0]}" "$WORK/expected.tsv"
assert_rows_written "$WORK/expected.tsv" "${DBS[0]}"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed after broker restart"
stop_relay_ok "$relay"
# The relay relayed across the restart: rows were still being written when
# the broker went (asserted above, and some rows came only after it), and
# every one of them arrived exactly once, so the relay published to the new
# broker process. Whether it also had to retry or abort depends on where the
# restart fell (a graceful restart between two commits needs neither, and
# librdkafka then reconnects silently), so that is shown, not asserted.
total=$(psql_db "${DBS[0]}" -c "SELECT count(*) FROM outbox")
[ "$rows_before" -lt "$total" ] ||
    fail "all $total rows were written before the broker restart ($rows_before): no row crossed it"
log "rows written before the restart: $rows_before of $total"
outage='retrying|rewinding|transaction aborted|[1-9][0-9]* aborted'
tail -n +"$((log_lines_before + 1))" "$WORK/relay.log" >"$WORK/after-restart.log"
if grep -qE "$outage" "$WORK/after-restart.log"; then
    log "the relay met the outage:"
    grep -E "$outage" "$WORK/after-restart.log" | sed 's/^.*\] //' | sort | uniq -c | sort -rn | head -n 5 >&2
else
    log "the restart fell between two commits: librdkafka reconnected without an error"
fi
drop_source "${DBS[0]}" "${DBS[0]}_${RUN_ID}"
log "PASS"

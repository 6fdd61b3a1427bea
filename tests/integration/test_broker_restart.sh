#!/usr/bin/env bash
# Exactly-once across a Kafka broker restart in the middle of the stream:
# the relay's open transaction fails or times out, it aborts, rewinds to the
# last committed checkpoint and carries on once the broker is back.
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
sleep 4
log "restarting the Kafka broker"
"$STACK_SH" restart-kafka >&2
kill -0 "$relay" || fail "relay died during the broker restart"
wait_writers "$writer"
wait_drained "${DBS[0]}" "${DBS[0]}_${RUN_ID}" 300

: >"$WORK/expected.tsv"
expected_events "${DBS[0]}" "$WORK/expected.tsv"
log "rows written: $(wc -l <"$WORK/expected.tsv")"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed after broker restart"
stop_relay_ok "$relay"
grep -E "aborted|rewinding|retrying" "$WORK/relay.log" | sed 's/^.*\] //' | sort | uniq -c | sort -rn | head -n 5 >&2 || true
drop_source "${DBS[0]}" "${DBS[0]}_${RUN_ID}"
log "PASS"

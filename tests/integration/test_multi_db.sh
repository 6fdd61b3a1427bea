#!/usr/bin/env bash
# ctest: parallel
# Three databases, 10,125 outbox rows written concurrently (single- and
# multi-row transactions), one relay: a read_committed consumer gets every
# event exactly once, on the templated topic, keyed by aggregate id, in commit
# order per key. The relay then stops on SIGTERM with exit status 0.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DBS=(pay_$RUN_ID ord_$RUN_ID mem_$RUN_ID)
for db in "${DBS[@]}"; do create_outbox_db "$db"; done
write_config "$WORK/outboxd.yaml" "${DBS[@]}"
prepare_sources "$WORK/outboxd.yaml"
# If an event goes missing, does PostgreSQL decode it? (explain_missing)
for db in "${DBS[@]}"; do copy_slot_for_peek "$db" "${db}_${RUN_ID}"; done

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
pids=()
for db in "${DBS[@]}"; do
    start_writers "$db" 3 450
    pids+=("$WRITER_PID")
done
wait_writers "${pids[@]}"
for db in "${DBS[@]}"; do wait_drained "$db" "${db}_${RUN_ID}"; done

: >"$WORK/expected.tsv"
for db in "${DBS[@]}"; do expected_events "$db" "$WORK/expected.tsv"; done
assert_rows_written "$WORK/expected.tsv" "${DBS[@]}" # 3 x writer_rows(3 x 450) = 10,125
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"

stop_relay_ok "$relay"
grep -q "streaming slot" "$WORK/relay.log" || fail "no startup position logged"
for db in "${DBS[@]}"; do drop_source "$db" "${db}_${RUN_ID}"; done
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# More sources than loop threads (relay.loop_threads, README "Many sources in
# one process"): six databases written concurrently, their loops sharing
#   run 1: 2 loop threads, own producers per source: SIGKILLed while streaming;
#   run 2: 1 loop thread, own producers: a SIGHUP reload under load applied
#          by every source, then SIGTERM under load;
#   run 3: 1 loop thread and a pool of 2 Kafka producers (a source holding a
#          pool producer keeps its thread, so the others cannot starve it),
#          drained, then a few rows more once every source sat idle, SIGTERM.
# Asserted: exactly the configured number of loop threads ("outboxd-loop"),
# whatever the number of sources; run 1's sources count no reconnect (their
# fence-then-yield is one attempt); every source streams; the reload is applied
# by all six; rows written to idle sources are relayed; a clean stop in time;
# every event in Kafka exactly once, in order per key.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DBS=()
for i in 1 2 3 4 5 6; do DBS+=("loops${i}_$RUN_ID"); done
for db in "${DBS[@]}"; do create_outbox_db "$db"; done
COMMIT_INTERVAL_MS=50 write_config "$WORK/base.yaml" "${DBS[@]}"
# config_with THREADS PRODUCERS
config_with() {
    sed "s/^relay:\$/relay:\n  loop_threads: $1\n  kafka_producers: $2/" "$WORK/base.yaml" \
        >"$WORK/outboxd.yaml"
}
config_with 2 0
prepare_sources "$WORK/outboxd.yaml"
MPORT=$(free_port)
printf 'metrics:\n  listen: "127.0.0.1:%s"\n' "$MPORT" >>"$WORK/outboxd.yaml"

# threads_named PID NAME: how many threads of PID have that name, the least
# of ten looks 0.1 s apart (a thread a loop thread starts has its creator's
# name until it names itself).
threads_named() {
    local least=-1 n
    for _ in $(seq 1 10); do
        n=$(grep -lx "$2" /proc/"$1"/task/*/comm 2>/dev/null | wc -l || true)
        [ "$least" -lt 0 ] || [ "$n" -lt "$least" ] && least=$n
        sleep 0.1
    done
    echo "$least"
}

pids=()
for db in "${DBS[@]}"; do
    start_writers "$db" 1 1600 80 # ~20 s of writes at 80 txn/s per database
    pids+=("$WRITER_PID")
done

start_relay "$WORK/outboxd.yaml" relay1
wait_streaming "$WORK/relay1.log" "${#DBS[@]}"
grep -q "6 sources share 2 loop threads (relay.loop_threads)" "$WORK/relay1.log" ||
    fail "run 1 did not log its loop threads"
n=$(threads_named "$RELAY_PID" outboxd-loop)
[ "$n" -eq 2 ] || fail "run 1 (relay.loop_threads 2, 6 sources) has $n loop threads"
n=$(threads_named "$RELAY_PID" outboxd-poller)
[ "$n" -eq 1 ] || fail "run 1 (6 sources on 2 loop threads) has $n poller threads"
# A first start on free slots: each source gave its thread up between
# fencing and reading (6 sources, 2 threads), which is the same attempt,
# not a reconnect (it was counted as one, 6 in all). Only a real retry or
# rewind (each logged) may count.
curl -sS -m 10 "http://127.0.0.1:$MPORT/metrics" >"$WORK/metrics1.txt" || fail "run 1: /metrics not answered"
rec=$(awk '/^outboxd_source_reconnects_total\{/ {s += $2; n++} END {print n + 0, s + 0}' "$WORK/metrics1.txt")
retries=$(grep -cE 'retrying in [0-9]+ ms|rewinding to checkpoint' "$WORK/relay1.log" || true)
[ "${rec%% *}" = 6 ] && [ "${rec##* }" -le "$retries" ] ||
    fail "run 1: reconnects_total over the sources (count, sum): $rec, with $retries retries or rewinds logged"
log "run 1: reconnects_total sum ${rec##* } ($retries retries or rewinds logged)"
sleep "$(awk -v r=$RANDOM 'BEGIN { printf "%.2f", 1 + (r % 2000) / 1000 }')"
kill -9 "$RELAY_PID" || fail "run 1 had exited before its SIGKILL"
wait "$RELAY_PID" 2>/dev/null || true
log "run 1: 6 sources on 2 loop threads, SIGKILLed while streaming"

# Same producer ids as run 1 (own producers): their init_transactions aborts
# what the SIGKILL left open (a pool's ids would leave it open until
# transaction.timeout.ms, hiding later events from read_committed readers).
config_with 1 0 # (no metrics: section from here on)
start_relay "$WORK/outboxd.yaml" relay2
relay=$RELAY_PID
t0=$(date +%s%N)
wait_streaming "$WORK/relay2.log" "${#DBS[@]}"
took=$((($(date +%s%N) - t0) / 1000000))
# The kill may have left transactions open under some sources' ids, with
# their checkpoint records: each source fences its ids and gives its thread
# up before reading, so no read waits (30 s each) for a source that has no
# thread to settle its own.
[ "$took" -lt 20000 ] || fail "run 2 took $took ms until all 6 sources streamed"
! grep -q "not at its end" "$WORK/relay2.log" ||
    fail "run 2: a checkpoint read waited for a transaction left open"
log "run 2: all 6 sources streaming $took ms after start"
n=$(threads_named "$relay" outboxd-loop)
[ "$n" -eq 1 ] || fail "run 2 (relay.loop_threads 1, 6 sources) has $n loop threads"
# A reload under load: every source applies it at a transaction boundary,
# each on the one thread.
sed -i "s/^  commit_interval_ms: .*/  commit_interval_ms: 30/" "$WORK/outboxd.yaml"
kill -HUP "$relay"
wait_log "$WORK/relay2.log" "configuration 1 applied by every source" 60 \
    "the reload was not applied by every source"
# A clean stop under load leaves no transaction open under any id.
t0=$(date +%s%N)
stop_relay_ok "$relay" "run 2"
took=$((($(date +%s%N) - t0) / 1000000))
[ "$took" -lt 10000 ] || fail "run 2 took $took ms to stop on SIGTERM under load"
log "run 2: 6 sources on 1 loop thread, reloaded, stopped under load in $took ms"

config_with 1 2
start_relay "$WORK/outboxd.yaml" relay3
relay=$RELAY_PID
wait_streaming "$WORK/relay3.log" "${#DBS[@]}"
n=$(threads_named "$relay" outboxd-loop)
[ "$n" -eq 1 ] || fail "run 3 (relay.loop_threads 1, 6 sources) has $n loop threads"
wait_writers "${pids[@]}"
for db in "${DBS[@]}"; do wait_drained "$db" "${db}_${RUN_ID}"; done
: >"$WORK/expected.tsv"
for db in "${DBS[@]}"; do expected_events "$db" "$WORK/expected.tsv"; done
assert_rows_written "$WORK/expected.tsv" "${DBS[@]}"
# Every loop idle now (parked with the poller): new rows still get through.
sleep 3
for db in "${DBS[@]}"; do
    psql_db "$db" -c "SELECT write_events('late', 'late-$db', 5)" >/dev/null
done
for db in "${DBS[@]}"; do wait_drained "$db" "${db}_${RUN_ID}" 60; done
: >"$WORK/all.tsv"
for db in "${DBS[@]}"; do expected_events "$db" "$WORK/all.tsv"; done
[ "$(wc -l <"$WORK/all.tsv")" -eq $(($(wc -l <"$WORK/expected.tsv") + 30)) ] ||
    fail "the late rows are not all in the outbox tables"
check_exactly_once "$WORK/all.tsv" || fail "exactly-once check failed"
t0=$(date +%s%N)
stop_relay_ok "$relay" "run 3"
took=$((($(date +%s%N) - t0) / 1000000))
[ "$took" -lt 10000 ] || fail "run 3 took $took ms to stop on SIGTERM"
log "run 3: 6 sources on 1 loop thread with a pool of 2 producers; stopped in $took ms"
for db in "${DBS[@]}"; do drop_source "$db" "${db}_${RUN_ID}"; done
log "PASS"

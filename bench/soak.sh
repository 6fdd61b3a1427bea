#!/usr/bin/env bash
# bench/soak.sh MINUTES - a soak run (not a CI test): a private stack, two
# databases written at a fixed rate of single-row transactions for MINUTES,
# one relay, and one random fault every minute, at a random second of it:
#   relay-kill       the relay is killed with SIGKILL and started again
#   broker-restart   the Kafka broker is stopped and started (SIGTERM)
#   broker-kill      the broker is killed with SIGKILL, started 5 s later
#   pg-restart       PostgreSQL is stopped in immediate mode and started
# The faults and their times come from SOAK_SEED (printed; set it to repeat
# a run). At the end the writers stop, the relay drains, and okcat (as the
# integration tests use it) compares Kafka with the outbox tables: it prints
# the lost (missing) and duplicated counts. Also printed: the relay's RSS
# at the start and at the end (VmRSS, and the process it was measured in, as
# a relay-kill starts a new one). Exits 1 on a lost, duplicated or
# out-of-order (per key) event.
#
#   bench/soak.sh 3
#   SOAK_RATE=50 SOAK_SEED=1234 bench/soak.sh 10    (transactions/s per database)
# BUILD (default build) is the build directory holding outboxd and okcat.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MINUTES=${1:?usage: bench/soak.sh MINUTES}
case $MINUTES in '' | *[!0-9]* | 0) echo "soak: MINUTES must be a positive whole number" >&2; exit 2 ;; esac
BUILD=${BUILD:-$ROOT/build}
RATE=${SOAK_RATE:-40}
SEED=${SOAK_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
export OUTBOXD_BIN=$BUILD/outboxd OUTBOXD_TOOLS=$BUILD/tests/tools
[ -x "$OUTBOXD_BIN" ] && [ -x "$OUTBOXD_TOOLS/okcat" ] || {
    echo "soak: build first (cmake -S . -B build -G Ninja && ninja -C build)" >&2
    exit 2
}
export STACK_DIR=${SOAK_STACK_DIR:-/tmp/outboxd-soak-$$}
export STACK_OWNER_PID=$$ STACK_OWNER_CLEAN=1
"$ROOT/tests/stack/stack.sh" start >&2

# The integration tests' helpers: outbox databases, config, relay start and
# stop, drain wait and the okcat exactly-once check. Its exit trap kills
# what was started in the background; extra_cleanup stops the stack.
extra_cleanup() { "$ROOT/tests/stack/stack.sh" stop --clean >/dev/null 2>&1 || true; }
# shellcheck source=../tests/integration/lib.sh
source "$ROOT/tests/integration/lib.sh"

FAULTS=(relay-kill broker-restart broker-kill pg-restart)
RANDOM=$SEED
log "seed $SEED (SOAK_SEED=$SEED repeats the faults and their times); $MINUTES min at $RATE txn/s per database"

DBS=(soak_a soak_b)
for db in "${DBS[@]}"; do create_outbox_db "$db"; done
write_config "$WORK/outboxd.yaml" "${DBS[@]}"
prepare_sources "$WORK/outboxd.yaml"

# Writers: single-row transactions at a fixed rate for the whole run. A
# PostgreSQL restart ends pgbench's connections, so it is started again
# for the time left (the rows it committed are in the table, which is what
# the check compares against).
# Keys are per database (okcat checks the order per key against its seq,
# which each database counts on its own).
writer_sql() { # writer_sql DB
    printf '%s\n' '\set k random(1, 50)' \
        "SELECT write_events('order', '$1-order-' || :k, 1);" >"$WORK/writer-$1.sql"
}
T0=$(date +%s)
END=$((T0 + MINUTES * 60))
writer_loop() {
    local db=$1 left
    while left=$((END - $(date +%s))) && [ "$left" -gt 0 ]; do
        pgbench -n -c 2 -j 2 -T "$left" -R "$RATE" -f "$WORK/writer-$db.sql" "$db" >>"$WORK/pgbench-$db.log" 2>&1 || sleep 1
    done
}
writers=()
for db in "${DBS[@]}"; do
    writer_sql "$db"
    writer_loop "$db" &
    writers+=($!)
    BG_PIDS+=($!)
done

start_relay "$WORK/outboxd.yaml"
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
for _ in $(seq 1 600); do
    [ "$(grep -c "streaming slot" "$WORK/relay.log" || true)" -ge "${#DBS[@]}" ] && break
    sleep 0.2
done
sleep 10 # warmed up: connections, producers and buffers in place
rss_start=$(rss "$RELAY_PID")
rss_start_pid=$RELAY_PID
log "relay RSS at start: ${rss_start} kB (pid $RELAY_PID)"

relay_starts=1
inject() { # inject FAULT
    case $1 in
    relay-kill)
        kill -9 "$RELAY_PID"
        wait "$RELAY_PID" 2>/dev/null || true
        start_relay "$WORK/outboxd.yaml"
        relay_starts=$((relay_starts + 1))
        ;;
    broker-restart) "$STACK_SH" restart-kafka >&2 ;;
    broker-kill)
        kill -9 "$(cat "$STACK_DIR/kafka.pid")"
        sleep 5
        "$STACK_SH" start-kafka >&2
        ;;
    pg-restart) "$STACK_SH" restart-pg --immediate >&2 ;;
    esac
}
for m in $(seq 1 "$MINUTES"); do
    fault=${FAULTS[RANDOM % ${#FAULTS[@]}]}
    at=$((T0 + (m - 1) * 60 + 5 + RANDOM % 50))
    now=$(date +%s)
    [ "$at" -gt "$now" ] && sleep $((at - now))
    log "minute $m: $fault at +$(($(date +%s) - T0))s"
    inject "$fault"
    kill -0 "$RELAY_PID" 2>/dev/null || fail "the relay exited after $fault (see $WORK/relay.log)"
done

for p in "${writers[@]}"; do wait "$p"; done
log "writers done at +$(($(date +%s) - T0))s; waiting for the relay to drain"
for db in "${DBS[@]}"; do wait_drained "$db" "${db}_${RUN_ID}" 600; done
rss_end=$(rss "$RELAY_PID")
hwm_end=$(peak_rss_kb "$RELAY_PID")

: >"$WORK/expected.tsv"
for db in "${DBS[@]}"; do expected_events "$db" "$WORK/expected.tsv"; done
rc=0
check_exactly_once "$WORK/expected.tsv" >"$WORK/okcat.out" 2>&1 || rc=$?
grep '^okcat: expected=' "$WORK/okcat.out" >&2 || cat "$WORK/okcat.out" >&2
stop_relay "$RELAY_PID" || log "relay exited $? after SIGTERM"
lost=$(sed -n 's/.* missing=\([0-9]*\).*/\1/p' "$WORK/okcat.out")
dups=$(sed -n 's/.* duplicates=\([0-9]*\).*/\1/p' "$WORK/okcat.out")
echo "soak: seed=$SEED minutes=$MINUTES rate=${RATE}/s/db rows=$(wc -l <"$WORK/expected.tsv") relay_starts=$relay_starts"
order=$(sed -n 's/.* order_violations=\([0-9]*\).*/\1/p' "$WORK/okcat.out")
echo "soak: lost=${lost:-?} duplicated=${dups:-?} out_of_order=${order:-?}"
if [ "$rss_start_pid" = "$RELAY_PID" ]; then
    echo "soak: relay RSS start=${rss_start}kB end=${rss_end}kB peak=${hwm_end}kB (same process, pid $RELAY_PID)"
else
    echo "soak: relay RSS start=${rss_start}kB (pid $rss_start_pid) end=${rss_end}kB peak=${hwm_end}kB (pid $RELAY_PID, started after a relay-kill)"
fi
for db in "${DBS[@]}"; do drop_source "$db" "${db}_${RUN_ID}"; done
[ "$rc" -eq 0 ] && [ "${lost:-1}" = 0 ] && [ "${dups:-1}" = 0 ] && [ "${order:-1}" = 0 ]

#!/usr/bin/env bash
# Many sources in one process: N databases (default 50), each with its own
# outbox table, publication and slot, relayed by one outboxd.
# Prints: time from start until every source streams and the CPU the relay,
# PostgreSQL (backends and walsenders) and the broker used until then, resident memory
# (current and peak), the process's thread count, its CPU use while idle
# (share of one core over BENCH_IDLE_S seconds, default 10), and a check
# that one row written in every database arrives (read_committed count).
#   bench/sources.sh [N]
# BENCH_POOL=K sets relay.kafka_producers: K (one pool of K producers shared
# by all sources; default 0, a producer set per source). BENCH_LOOPS=L sets
# relay.loop_threads: L (default: the relay's default, 16). BENCH_LOG_LEVEL
# sets relay.log_level; BENCH_KEEP_LOG=FILE keeps the relay's log there.
source "$(dirname "$0")/common.sh"
N=${1:-50}
IDLE_S=${BENCH_IDLE_S:-10}

# Each source holds a walsender and a slot; the stack's defaults are for tests.
psql -X -q -d postgres -c "ALTER SYSTEM SET max_replication_slots = $((N + 20))" \
    -c "ALTER SYSTEM SET max_wal_senders = $((N + 20))" \
    -c "ALTER SYSTEM SET max_connections = $((2 * N + 50))" >/dev/null
"$ROOT/tests/stack/stack.sh" restart-pg >&2

say "creating $N databases"
bench_db bench_src_tpl
for i in $(seq 1 "$N"); do
    psql -X -q -d postgres -c "CREATE DATABASE bench_src_$i TEMPLATE bench_src_tpl" >/dev/null
done
# The slots are created once every database exists: CREATE DATABASE writes
# the template's files to the WAL (about 7 MB each), and a slot created
# between them would make its walsender decode the WAL of every database
# created after it before its first message (200 walsenders reading up to
# 1.4 GB each at once, a backlog the relay did not cause). A relay restarted
# on an existing server starts near the WAL end, as here.
for i in $(seq 1 "$N"); do
    psql -X -q -At -d "bench_src_$i" -c "SELECT pg_create_logical_replication_slot('bench_src_$i', 'pgoutput')" >/dev/null
done
say "WAL each slot decodes before its first message: up to $(psql -X -q -At -d postgres -c "SELECT pg_size_pretty(max(pg_current_wal_lsn() - restart_lsn)) FROM pg_replication_slots")"

{
    printf '%s\n' "kafka:" "  bootstrap_servers: \"$KAFKA_BOOTSTRAP\"" "  transactional_id_prefix: benchsrc" \
        "relay:" "  checkpoint_topic: bench.checkpoints" "  dead_letter_topic: bench.dlt" \
        "  producers_per_source: ${BENCH_PRODUCERS:-2}" \
        "  kafka_producers: ${BENCH_POOL:-0}" "  loop_threads: ${BENCH_LOOPS:-16}" "  log_level: ${BENCH_LOG_LEVEL:-info}" "sources:"
    for i in $(seq 1 "$N"); do
        printf '%s\n' "  - name: src$i" \
            "    dsn: \"host=$PGHOST port=$PGPORT dbname=bench_src_$i user=$PGUSER\"" \
            "    slot: bench_src_$i" "    publication: bench_pub" "    tables:" \
            "      - table: public.outbox" "        topic: \"benchsrc.\${aggregatetype}\""
    done
} >"$WORK/outboxd.yaml"

# CPU ticks (user + system) of a process: with children=1 also the ticks
# of its children, both the live ones and the reaped ones (the postmaster
# reaps its backends and walsenders, so its cutime holds the exited ones).
ticks_of() {
    local pid=$1 children=${2:-0} t c
    t=$(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    if [ "$children" = 1 ]; then
        for c in $(pgrep -P "$pid"); do
            t=$((t + $(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || echo 0)))
        done
    fi
    echo "$t"
}
pg_master=$(head -n 1 "$STACK_DIR/pg/postmaster.pid")
kafka_master=$(cat "$STACK_DIR/kafka.pid")
# The broker is java under the pid file's shell (exec'd: the same pid).
# Busy ticks of the whole machine (all cores): a check on the split above,
# which samples per process at clock ticks and reads low for many short
# backends.
busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
busy0=$(busy)
pg0=$(ticks_of "$pg_master" 1)
kafka0=$(ticks_of "$kafka_master" 1)
t0=$(now_ms)
"$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" 2>"$WORK/relay.log" &
relay=$!
BG+=("$relay")
until [ "$(grep -c "streaming slot" "$WORK/relay.log")" -ge "$N" ]; do
    kill -0 "$relay" 2>/dev/null || { tail -n 30 "$WORK/relay.log" >&2; exit 1; }
    [ $(($(now_ms) - t0)) -lt 600000 ] || { say "not all sources streaming after 600 s"; exit 1; }
    sleep 0.05
done
t1=$(now_ms)
busy1=$(busy)
pg1=$(ticks_of "$pg_master" 1)
kafka1=$(ticks_of "$kafka_master" 1)
relay1=$(ticks_of "$relay")
sleep 2 # let startup work (producer connections, metadata) settle
ticks() { awk '{print $14 + $15}' "/proc/$relay/stat"; }
c0=$(ticks)
sleep "$IDLE_S"
c1=$(ticks)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$relay/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$relay/status")

t2=$(now_ms)
for i in $(seq 1 "$N"); do
    psql -X -q -d "bench_src_$i" -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'k$i', 'Ping', '{}')" >/dev/null
done
got=$("$OKCAT" -b "$KAFKA_BOOTSTRAP" -t benchsrc.order --count "$N" --timeout-ms 120000 2>/dev/null | sed -n 's/^okcat: consumed=//p')
t3=$(now_ms)
peak=$(peak_rss_kb "$relay")
kill -TERM "$relay"
wait "$relay" || true
[ -z "${BENCH_KEEP_LOG:-}" ] || cp "$WORK/relay.log" "$BENCH_KEEP_LOG"
hz=$(getconf CLK_TCK)
echo "sources: n=$N producers_per_source=${BENCH_PRODUCERS:-2} kafka_producers=${BENCH_POOL:-0} loop_threads=${BENCH_LOOPS:-16}"
echo "sources: all streaming $((t1 - t0)) ms after start"
# Where the cores went until then (2 cores give 2 s of CPU a second).
awk -v r="$relay1" -v p=$((pg1 - pg0)) -v k=$((kafka1 - kafka0)) -v hz="$hz" -v ms=$((t1 - t0)) \
    -v b=$((busy1 - busy0)) \
    'BEGIN { printf "sources: cpu until then: relay %.2f s, PostgreSQL %.2f s, broker %.2f s; the machine busy %.2f s (wall %.2f s)\n", r / hz, p / hz, k / hz, b / hz, ms / 1000 }'
awk -v c=$((c1 - c0)) -v hz="$hz" -v s="$IDLE_S" 'BEGIN { printf "sources: idle cpu %.1f%% of one core over %d s\n", 100 * c / hz / s, s }'
echo "sources: resident $((rss / 1024)) MB when idle, peak $((peak / 1024)) MB; threads $threads"
echo "sources: one row per database written, $got of $N read back (read_committed) $((t3 - t2)) ms after the first write"

#!/usr/bin/env bash
# Latency: rows written at a steady rate (default 5,000 single-row
# transactions per second for 60 seconds) while outboxd relays them; a
# read_committed consumer measures, for each event, receipt time minus the
# PostgreSQL commit time carried in the event.
#
# Steady state only: the clock starts once the consumer is assigned and has
# caught up with its partitions (okcat --ready-file), and the events of the
# first BENCH_WARMUP_MS (default 2000) after that are reported apart as
# warm-up (the consumer's first fetches make them wait hundreds of ms, which
# says nothing about the relay).
#
# Prints: steady-state p50/p90/p99/max, the warm-up figures, the relay's own
# Kafka commit durations (p50/p99/max and how many took over 100 ms, from its
# debug log), CPU seconds used by the relay, the broker and PostgreSQL during
# the run (a saturated machine explains a wide tail) and the relay's per
# thread, the broker's CPU per thread and its JVM's stop-the-world pauses
# (GC and other safepoints; STACK_KAFKA_GC picks its collector), and peak
# RSS (BENCH_PERF=1 adds a perf profile of the relay during the load: where
# its CPU goes at a steady rate); then the
# Kafka-side floor at the same rate (below; BENCH_FLOOR_LOAD=1 runs it
# beside the same PostgreSQL load, BENCH_CEILING=0 skips it).
# All of it on a warm broker: the same load runs through the relay for
# BENCH_BROKER_WARMUP_S (180) first, not counted (below).
#   bench/latency.sh [RATE] [SECONDS]
source "$(dirname "$0")/common.sh"
RATE=${1:-5000}
SECS=${2:-60}
WARMUP_MS=${BENCH_WARMUP_MS:-2000}
bench_db bench_lat
q -c "SELECT pg_create_logical_replication_slot('bench_lat', 'pgoutput')" >/dev/null
BENCH_LOG_LEVEL=${BENCH_LOG_LEVEL:-debug} bench_config "$WORK/outboxd.yaml" bench_lat
"$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" 2>"$WORK/relay.log" &
relay=$!
BG+=("$relay")
until grep -q "streaming slot" "$WORK/relay.log"; do
    kill -0 "$relay" 2>/dev/null || { say "outboxd exited before streaming:"; tail -n 5 "$WORK/relay.log" >&2; exit 1; }
    sleep 0.1
done

# A first row creates the topic, so the consumer is assigned its partitions
# at once; it starts at the end (auto.offset.reset=latest), so this row,
# committed before it joined, is not counted.
q -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'warm', 'Warm', '{}')"
until "$OKCAT" -b "$KAFKA_BOOTSTRAP" -t bench.order --count 1 --timeout-ms 2000 >/dev/null 2>&1; do sleep 0.2; done
broker=$(pgrep -f "kafka.Kafka.*$STACK_DIR" | head -n 1 || true)
printf '%s\n' '\set k random(1, 1000)' \
    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'order-' || :k, 'OrderCreated', '{\"amount\": 12, \"currency\": \"EUR\"}');" \
    >"$WORK/insert.sql"

# A warm broker, as in production (broker_warmup in common.sh): the same
# load through the relay for BENCH_BROKER_WARMUP_S first, not counted.
broker_warmup "$RATE" "$WORK/insert.sql" "$broker" bench.order=--latency
# latency_consumer TOPIC MODE NAME: a read_committed latency consumer
# (okcat MODE: --latency or --latency-from-timestamp) writing
# $WORK/NAME.out; returns once it is assigned and caught up, its pid in
# $consumer.
latency_consumer() {
    "$OKCAT" -b "$KAFKA_BOOTSTRAP" -t "$1" "$2" --ready-file "$WORK/$3.ready" \
        --warmup-ms "$WARMUP_MS" -X auto.offset.reset=latest --idle-ms 5000 \
        --timeout-ms $(((SECS + 180) * 1000)) \
        "${FETCH_OPTS[@]}" >"$WORK/$3.out" 2>&1 &
    consumer=$!
    BG+=("$consumer")
    local waited=0
    until [ -e "$WORK/$3.ready" ]; do
        sleep 0.1
        waited=$((waited + 1))
        [ "$waited" -lt 600 ] || { say "consumer $3 not ready after 60 s"; cat "$WORK/$3.out" >&2; exit 1; }
    done
    say "consumer $3 assigned and caught up after $((waited * 100)) ms"
}
latency_consumer bench.order --latency okcat

pgpost=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null || true)
pg_ticks() { # the postmaster and all its children (walsender, backends)
    local t=0 p
    for p in $(pgrep -P "$pgpost" 2>/dev/null) "$pgpost"; do
        t=$((t + $(cpu_ticks "$p")))
    done
    echo "$t"
}
r0=$(cpu_ticks "$relay")
thread_cpu "$relay" >"$WORK/threads0"
b0=$( [ -n "$broker" ] && cpu_ticks "$broker" || echo 0)
[ -z "$broker" ] || thread_cpu "$broker" >"$WORK/bthreads0"
p0=$(pg_ticks)

TOTAL=$((SECS + (WARMUP_MS + 999) / 1000))
say "writing $RATE transactions/s for $TOTAL s (the first ${WARMUP_MS} ms are warm-up)"
# BENCH_PERF=1: perf record on the relay during the load (its samples cost
# CPU on the same cores, so the latency of such a run is not the relay's;
# use it to see where the relay's CPU goes at a steady rate).
perf_pid=
if [ "${BENCH_PERF:-0}" = 1 ]; then
    command -v perf >/dev/null || { say "BENCH_PERF=1: perf missing (apt-get install linux-perf)"; exit 2; }
    perf record -F 499 -g -p "$relay" -o "$WORK/perf.data" >"$WORK/perf.log" 2>&1 &
    perf_pid=$!
    BG+=("$perf_pid")
fi
load_t0=$(now_ms)
relay_off=$(stat -c %s "$WORK/relay.log")
pgbench -n -c 4 -j 2 -R "$RATE" -T "$TOTAL" -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench.log" 2>&1
load_t1=$(now_ms)
r1=$(cpu_ticks "$relay")
thread_cpu "$relay" >"$WORK/threads1"
if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2>/dev/null || true
    wait "$perf_pid" || true
fi
b1=$( [ -n "$broker" ] && cpu_ticks "$broker" || echo 0)
[ -z "$broker" ] || thread_cpu "$broker" >"$WORK/bthreads1"
p1=$(pg_ticks)
wait "$consumer" || true
# The relay's debug lines of the measured load only (not the warm-up's),
# its last commits included (the consumer has read everything by now).
tail -c +$((relay_off + 1)) "$WORK/relay.log" >"$WORK/relay-load.log"
peak=$(peak_rss_kb "$relay")
kill -TERM "$relay"
wait "$relay" || true
written=$(q -c "SELECT count(*) FROM outbox")
hz=$(getconf CLK_TCK)

# The broker's share, same broker, same rate, right after: transactional
# librdkafka producers (tests/tools/kafka_ceiling; as many as the relay's
# ring, see ceiling_mode in common.sh) write the relay's own
# record at RATE/s, committing as soon as records are in hand as the relay
# does, with no PostgreSQL and no relay; each record stamped with the moment
# it came due, a read_committed consumer with the same settings measures
# receipt minus that (the wait for the commit in flight included). The
# relay's latency minus its PostgreSQL side cannot be lower than this.
# BENCH_CEILING=0 skips it.
# BENCH_FLOOR_LOAD=1: the floor runs beside PostgreSQL's share of the relay's
# run (the same pgbench load at RATE, and pg_recvlogical decoding it from a
# slot of its own into /dev/null, as the relay's walsender did), so the
# floor and the relay compete for the same two cores; what then remains
# between them is the relay's own cost.
if [ "${BENCH_CEILING:-1}" != 0 ]; then
    "$OKCAT" -b "$KAFKA_BOOTSTRAP" -t ceil.lat -t ceil.lat.ck --create-topics 3 >/dev/null
    latency_consumer ceil.lat --latency-from-timestamp okcat2
    floor_load=""
    if [ "${BENCH_FLOOR_LOAD:-0}" = 1 ]; then
        q -c "SELECT pg_create_logical_replication_slot('bench_lat_floor', 'pgoutput')" >/dev/null
        pg_recvlogical -d "$DB" --slot bench_lat_floor --start -o proto_version=1 \
            -o publication_names=bench_pub -f /dev/null 2>"$WORK/recvlogical.log" &
        recv=$!
        BG+=("$recv")
        pgbench -n -c 4 -j 2 -R "$RATE" -T "$TOTAL" -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench2.log" 2>&1 &
        load=$!
        BG+=("$load")
        floor_load=" beside the same PostgreSQL load (pgbench at $RATE/s, pg_recvlogical decoding it)"
    fi
    cb0=$( [ -n "$broker" ] && cpu_ticks "$broker" || echo 0)
    floor_t0=$(now_ms)
    KAFKA_CEILING_MODE=$(ceiling_mode) KAFKA_CEILING_RATE=$RATE "$BUILD/tests/tools/kafka_ceiling" "$KAFKA_BOOTSTRAP" ceil.lat \
        $((RATE * TOTAL)) from:bench.order 5000 ${BENCH_KAFKA_PROPS:-} >"$WORK/ceiling.out" 2>&1 ||
        cat "$WORK/ceiling.out" >&2
    floor_t1=$(now_ms)
    cb1=$( [ -n "$broker" ] && cpu_ticks "$broker" || echo 0)
    if [ -n "$floor_load" ]; then
        wait "$load" || true
        kill -TERM "$recv" 2>/dev/null || true
        wait "$recv" 2>/dev/null || true
        grep -E "^tps" "$WORK/pgbench2.log" | sed 's/^/latency: floor load: pgbench: /' >"$WORK/floor_load.txt" || true
    fi
    wait "$consumer" || true
fi

echo "latency: rate=$RATE/s seconds=$SECS warmup_ms=$WARMUP_MS (steady state: after the consumer was assigned and caught up, plus the warm-up)"
grep -E "^okcat: (latency|warmup_latency|consumed)" "$WORK/okcat.out" |
    sed -e 's/^okcat: latency_ms/latency: steady_ms/' -e 's/^okcat: warmup_latency_ms/latency: warmup_ms/' -e 's/^okcat: /latency: /'
# Where the milliseconds go. Each steady-state event is split at its
# record's CreateTime (when the relay handed it to librdkafka): before it,
# WAL send, decoding, and waiting for the Kafka commit in flight (the next
# batch is produced only after it); after it, the relay's own Kafka commit
# (flush + EndTxn, below), then the commit markers and the consumer's fetch.
grep -E "^okcat: (commit_to_produce|produce_to_receipt)" "$WORK/okcat.out" | sed 's/^okcat: /latency: split: /'
# The relay's view, per batch (its commit debug lines): how long after its
# oldest event's PostgreSQL commit the Kafka commit began, and that
# transaction's way there: when the walsender sent it (server clock: WAL
# written, woken, decoded) and when the relay read it off the socket (later
# when the relay was busy handling or committing).
pct() { sort -n | awk -v what="$1" '{v[NR] = $1} END { if (NR) printf "latency: split: relay batch, oldest event: PostgreSQL commit to %s p50=%.1f p99=%.1f max=%.1f ms (n=%d batches)\n", what, v[int(NR * 0.50 + 0.999999)], v[int(NR * 0.99 + 0.999999)], v[NR], NR }'; }
sed -n 's/.*commit began \([0-9.]*\) ms after.*/\1/p' "$WORK/relay-load.log" | pct "Kafka commit start"
sed -n 's/.*server sent it at \([-0-9.]*\) ms.*/\1/p' "$WORK/relay-load.log" | pct "walsender send"
sed -n 's/.*relay read it at \([-0-9.]*\) ms.*/\1/p' "$WORK/relay-load.log" | pct "relay read"
grep -E "^tps" "$WORK/pgbench.log" | sed 's/^/latency: pgbench: /'
# Kafka commit durations from the relay's debug lines
# ("committed N events in X ms ...").
sed -n 's/.*committed [0-9]* events in \([0-9.]*\) ms.*/\1/p' "$WORK/relay-load.log" | sort -n >"$WORK/commits"
awk '{v[NR] = $1; if ($1 > 100) slow++} END {
    if (NR == 0) { print "latency: relay kafka commits: none logged (BENCH_LOG_LEVEL=debug needed)"; exit }
    p50 = v[int(NR * 0.50 + 0.999999)]; p99 = v[int(NR * 0.99 + 0.999999)];
    printf "latency: relay kafka commits: n=%d p50=%.1f ms p99=%.1f ms max=%.1f ms over_100ms=%d\n", NR, p50, p99, v[NR], slow
}' "$WORK/commits"
# Where the slow ones went (sink debug lines "commit: N records flushed in
# X ms, EndTxn Y ms"): waiting for the produce acknowledgements (broker
# append, librdkafka queue) or the EndTxn round trip (transaction
# coordinator: the transaction log write and its replication).
awk '/ commit: [0-9]+ records flushed in / {
        for (j = 1; j <= NF; j++) { if ($j == "in" && $(j+2) == "ms,") f = $(j+1); if ($j == "EndTxn") e = $(j+1) }
        n++; tf += f; te += e
        if (f + e > 100) { slow++; if (f > e) sf++; else se++; if (shown++ < 5) printf "latency: slow kafka commit at %s: flush %.1f ms, EndTxn %.1f ms\n", $1, f, e } }
     END { if (n) printf "latency: kafka commits split: mean flush %.2f ms, mean EndTxn %.2f ms; of %d over 100 ms, %d mostly flush, %d mostly EndTxn\n", tf / n, te / n, slow, sf, se }' "$WORK/relay-load.log"
awk -v r=$((r1 - r0)) -v b=$((b1 - b0)) -v p=$((p1 - p0)) -v hz="$hz" -v s="$TOTAL" 'BEGIN {
    printf "latency: cpu during the load (share of one core): relay %.0f%%, broker %.0f%%, postgres %.0f%% (2 cores in all)\n",
        100 * r / hz / s, 100 * b / hz / s, 100 * p / hz / s
}'
# Per thread: the source loop (outboxd-loop), librdkafka's (rdk:*), the
# poller and main (the short-lived commit helpers, outboxd-commit, count
# in the process total above only).
thread_cpu_diff "$WORK/threads0" "$WORK/threads1" "latency: relay" $((TOTAL * 1000))
# The broker's threads (names cut to 15 characters by the kernel, digits
# dropped): request handlers and network processors (both
# data-plane-kafk), the partition verifier, the transaction marker
# sender, log cleaner, the JIT compilers (C1/C2 CompilerThre: a broker
# still warming up) and the collector (GC Thread, G1 Conc, G1 Refine).
[ -z "$broker" ] || thread_cpu_diff "$WORK/bthreads0" "$WORK/bthreads1" "latency: broker" $((TOTAL * 1000)) | awk 'NR <= 12'
broker_pauses "$load_t0" "$load_t1" "during the relay's load"
if [ -n "$perf_pid" ]; then
    perf report -i "$WORK/perf.data" --no-children --stdio --sort comm,dso,symbol -g none \
        --percent-limit 1 2>/dev/null | grep -E '^ +[0-9]' | head -n 40 | sed 's/^/latency: perf self /' || true
    [ -z "${BENCH_OUT:-}" ] || { mkdir -p "$BENCH_OUT" && cp "$WORK/perf.data" "$BENCH_OUT/latency.perf.data"; }
fi
if [ "${BENCH_CEILING:-1}" != 0 ]; then
    awk -v hz="$hz" -v s="$TOTAL" '/^kafka_ceiling: / { for (i = 1; i <= NF; i++) if ($i ~ /^cpu_ms=/) { sub(/cpu_ms=/, "", $i);
        printf "latency: kafka-side floor: producer process cpu %.0f%% of one core (the relay above: the same records, plus PostgreSQL'"'"'s side)\n", $i / 10 / s } }' "$WORK/ceiling.out"
    grep -E "^okcat: latency" "$WORK/okcat2.out" |
        sed "s|^okcat: latency_ms|latency: kafka-side floor (transactional librdkafka producers, mode $(ceiling_mode), at the same rate, no relay${floor_load:-, no PostgreSQL}; receipt - moment due): steady_ms|"
    [ ! -s "$WORK/floor_load.txt" ] || cat "$WORK/floor_load.txt"
    sed -n 's/^kafka_ceiling: /latency: kafka-side floor: /p' "$WORK/ceiling.out"
    awk -v b=$((cb1 - cb0)) -v hz="$hz" -v s="$TOTAL" 'BEGIN { printf "latency: kafka-side floor: broker cpu %.0f%% of one core\n", 100 * b / hz / s }'
    broker_pauses "$floor_t0" "$floor_t1" "during the floor's load"
fi
echo "latency: rows written=$written (incl. 1 first row and the broker warm-up's); relay peak RSS = $((peak / 1024)) MB (over its whole run, warm-up included); $(grep -o 'librdkafka [^)]*' "$WORK/relay.log" | head -n 1)"
grep -o 'published.*' "$WORK/relay.log" | tail -n 1 | sed 's/^/latency: relay (whole run, warm-up included): /'
[ -z "${BENCH_KEEP_LOG:-}" ] || cp "$WORK/relay.log" "$BENCH_KEEP_LOG"

#!/usr/bin/env bash
# Where the relay's time goes during a drain, in figures that survive a loaded
# machine (see bench/README.md):
#   - CPU milliseconds per 100,000 events of the relay process and of each of
#     its threads (utime + stime from /proc, so other processes' load does
#     not inflate them the way it inflates wall time);
#   - Kafka transactions and events per transaction, and the time the source
#     thread spent blocked in Kafka commits (the relay's own final stats line);
#   - with BENCH_PERF=1 (default): `perf record -g` on the relay for the whole
#     drain, and the top functions by self time (perf report --no-children)
#     plus a folded-stack file ($BENCH_OUT/profile.folded) for a flame graph
#     (inferno-flamegraph < profile.folded > flame.svg);
#   - with BENCH_STATS_MS=N: librdkafka statistics every N ms, summarised by
#     the relay at debug level (batch sizes, request latency, queue times).
#
#   bench/profile.sh [N] [ROWS_PER_TXN] [PAYLOAD_BYTES]
#   BENCH_RUNS (default 1) drains of the same backlog, each with its own slot;
#   BENCH_KAFKA_PROPS, BENCH_RELAY_KEYS: see common.sh;
#   BENCH_VARIANTS="a b c": compare settings on the same backlog, one drain
#     per variant and round (BENCH_RUNS rounds, variants alternating), each
#     variant a comma-separated list of librdkafka properties and relay.
#     keys, "-" for the defaults, e.g.
#     BENCH_VARIANTS="- linger.ms=20 compression.type=lz4 relay.max_batch_events=20000"
#     prints a table of CPU per 100k events and commits per variant;
#   BENCH_OUT: a directory to keep perf.data, the folded stacks and the logs.
source "$(dirname "$0")/common.sh"
N=${1:-200000}
ROWS=${2:-1}
PAYLOAD=${3:-0}
RUNS=${BENCH_RUNS:-1}
PERF=${BENCH_PERF:-1}
OUT=${BENCH_OUT:-$WORK/out}
mkdir -p "$OUT"
[ $((N % (4 * ROWS))) -eq 0 ] || {
    echo "bench: N must be a multiple of 4 * ROWS_PER_TXN (4 writer clients)" >&2
    exit 2
}
bench_db bench_prof
read -r -a VARS <<<"${BENCH_VARIANTS:--}"
NRUNS=$((RUNS * ${#VARS[@]}))
for i in $(seq 1 "$NRUNS"); do
    q -c "SELECT pg_create_logical_replication_slot('prof_$i', 'pgoutput')" >/dev/null
done
if [ "$PAYLOAD" -eq 0 ]; then
    payload_sql="'{\"amount\": 12, \"currency\": \"EUR\", \"items\": [1, 2, 3]}'::jsonb"
else
    payload_sql="jsonb_build_object('data', (SELECT string_agg(md5(random()::text || g || h), '') FROM generate_series(1, $((PAYLOAD / 32))) h))"
fi
printf '%s\n' '\set k random(1, 1000)' \
    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT 'order', 'order-' || (:k + g), 'OrderCreated', $payload_sql FROM generate_series(1, $ROWS) g;" \
    >"$WORK/insert.sql"
pgbench -n -c 4 -j 2 -t $((N / ROWS / 4)) -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench.log" 2>&1 || {
    cat "$WORK/pgbench.log" >&2
    exit 1
}
END=$(q -c "SELECT pg_current_wal_lsn()")
say "backlog of $N events ($ROWS per transaction) written, WAL end $END"
TICK=$(getconf CLK_TCK)

# cpu_ms PID: utime + stime of the whole process in ms.
cpu_ms() { awk -v t="$TICK" '{print int(($14 + $15) * 1000 / t)}' "/proc/$1/stat"; }

for i in $(seq 1 "$NRUNS"); do
    cfg=$WORK/outboxd.$i.yaml
    log=$OUT/relay.$i.log
    var=${VARS[$(((i - 1) % ${#VARS[@]}))]}
    kprops=${BENCH_KAFKA_PROPS:-} rkeys=${BENCH_RELAY_KEYS:-}
    for kv in ${var//,/ }; do
        case $kv in -) ;; relay.*) rkeys="$rkeys ${kv#relay.}" ;; *) kprops="$kprops $kv" ;; esac
    done
    BENCH_KAFKA_PROPS=$kprops BENCH_RELAY_KEYS=$rkeys BENCH_LOG_LEVEL=${BENCH_LOG_LEVEL:-debug} \
        bench_config "$cfg" "prof_$i" "bench_prof_$i" "prof$i"
    echo "profile: run $i: variant $var"
    [ -z "${BENCH_STATS_MS:-}" ] || sed -i "s/^  transactional_id_prefix: bench$/&\n  properties:\n    statistics.interval.ms: \"$BENCH_STATS_MS\"/" "$cfg"
    grep -q '^  properties:' "$cfg" && [ "$(grep -c '^  properties:' "$cfg")" -gt 1 ] && {
        echo "bench: BENCH_STATS_MS with BENCH_KAFKA_PROPS: put statistics.interval.ms in BENCH_KAFKA_PROPS" >&2
        exit 2
    }
    "$OUTBOXD_BIN" run -c "$cfg" 2>"$log" &
    relay=$!
    BG+=("$relay")
    until grep -q "streaming slot" "$log"; do
        kill -0 "$relay" 2>/dev/null || { tail -n 20 "$log" >&2; exit 1; }
        sleep 0.02
    done
    c0=$(cpu_ms "$relay")
    thread_cpu "$relay" >"$WORK/threads0"
    t0=$(now_ms)
    perf_pid=
    if [ "$PERF" = 1 ]; then
        perf record -F 499 --call-graph dwarf,16384 -p "$relay" -o "$OUT/perf.$i.data" >"$WORK/perf.log" 2>&1 &
        perf_pid=$!
    fi
    until slot_done "prof_$i" "$END"; do
        kill -0 "$relay" 2>/dev/null || { tail -n 20 "$log" >&2; exit 1; }
        sleep 0.05
    done
    t1=$(now_ms)
    c1=$(cpu_ms "$relay")
    thread_cpu "$relay" >"$WORK/threads1"
    if [ -n "$perf_pid" ]; then
        kill -INT "$perf_pid"
        wait "$perf_pid" || true
    fi
    kill -TERM "$relay"
    wait "$relay" || true
    n=$("$OKCAT" -b "$KAFKA_BOOTSTRAP" -t "prof$i.order" --idle-ms 3000 2>/dev/null | sed -n 's/^okcat: consumed=//p')
    echo "profile: run $i: drained $N events in $((t1 - t0)) ms ($((N * 1000 / (t1 - t0 > 0 ? t1 - t0 : 1))) events/s wall, machine load $(cut -d' ' -f1 /proc/loadavg)); read back ${n:-0}"
    echo "profile: run $i: relay CPU $((c1 - c0)) ms = $(((c1 - c0) * 100000 / N)) ms per 100k events"
    commits=$(grep -E "published [0-9]+ events" "$log" | tail -n 1 | sed -n 's/.* \([0-9]*\) Kafka transactions.*/\1/p')
    wait_ms=$(grep -E "commit wait:" "$log" | tail -n 1 | sed -n 's/.*commit wait: \([0-9.]*\) ms.*/\1/p')
    echo "$var $((c1 - c0)) ${commits:-0} ${wait_ms:-0} $((t1 - t0)) ${n:-0}" >>"$WORK/variants"
    join -a1 <(sort "$WORK/threads1") <(sort "$WORK/threads0") |
        awk -v n="$N" '{d = $2 - ($3 ? $3 : 0); if (d > 0) printf "profile: run %d:   thread %-16s %6d ms CPU, %5d ms per 100k events\n", '"$i"', $1, d, d * 100000 / n}'
    grep -E "published [0-9]+ events" "$log" | tail -n 1 | sed "s/^/profile: run $i: relay: /"
    grep -E "commit wait" "$log" | tail -n 1 | sed "s/^/profile: run $i: relay: /" || true
    awk '/ commit: [0-9]+ records flushed in / {
            for (j = 1; j <= NF; j++) { if ($j == "in" && $(j+2) == "ms,") f += $(j+1); if ($j == "EndTxn") e += $(j+1) }; k++ }
         END { if (k) printf "profile: run '"$i"': Kafka commits: %d, mean flush (waiting for produce acks) %.1f ms, mean EndTxn %.1f ms\n", k, f / k, e / k }' "$log"
    # intervals in which requests were answered (the last ones are idle)
    grep -E "kafka stats .*rtt avg [0-9]*[1-9]" "$log" | tail -n 3 | sed "s/^/profile: run $i: /" || true
    if [ -n "$perf_pid" ]; then
        perf report -i "$OUT/perf.$i.data" --no-children --stdio --sort symbol -g none \
            --percent-limit 1.5 2>/dev/null | grep -E '^ +[0-9]' | head -n 30 |
            sed "s/^/profile: run $i: self /"
        # Folded stacks (the stackcollapse format inferno and flamegraph.pl
        # read): one line per unique stack, root first, with its count.
        perf script -i "$OUT/perf.$i.data" 2>/dev/null | awk '
            function emit(   s, j) { s = comm; for (j = n - 1; j >= 0; j--) s = s ";" st[j]; c[s]++; n = 0 }
            /^[^ \t]/ { if (n) emit(); comm = $1; sub(/[0-9]+$/, "", comm); next }
            /^[ \t]+[0-9a-f]+ / {
                f = $2; sub(/\+0x[0-9a-f]+$/, "", f)
                if (f == "[unknown]") { f = $NF; gsub(/^.*\/|\)$/, "", f) }
                st[n++] = f; next }
            /^$/ { if (n) emit() }
            END { if (n) emit(); for (k in c) print k, c[k] }' >"$OUT/profile.$i.folded"
        echo "profile: run $i: folded stacks in $OUT/profile.$i.folded; CPU samples by area:"
        awk -f "$ROOT/bench/profile_areas.awk" "$OUT/profile.$i.folded" | sed "s/^/profile: run $i:   /"
    fi
done
if [ "${#VARS[@]}" -gt 1 ] || [ "$RUNS" -gt 1 ]; then
    echo "profile: per variant over $RUNS round(s), $N events each: median relay CPU per 100k events, Kafka commits, share of the drain the source thread waited in commits, wall ms (noisy), runs whose read-back differed"
    awk -v n="$N" '
        function median(list,   a, k, i, j, t) { k = split(list, a, " "); for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t } return a[int((k + 1) / 2)] }
        { cpu[$1] = cpu[$1] " " $2 * 100000 / n; com[$1] = com[$1] " " $3; w[$1] = w[$1] " " ($5 ? 100 * $4 / $5 : 0); wall[$1] = wall[$1] " " $5; if ($6 != n) bad[$1]++; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
        END { for (i = 1; i <= k; i++) { v = order[i]; printf "profile: %-40s cpu/100k %5.0f ms  commits %4d  commit wait %3.0f%%  wall %6d ms  bad %d\n", v, median(cpu[v]), median(com[v]), median(w[v]), median(wall[v]), bad[v] } }' "$WORK/variants"
fi

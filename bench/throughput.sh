#!/usr/bin/env bash
# Throughput: a backlog of N outbox events (default 200,000) in one database,
# drained
#   (a) by pg_recvlogical with pgoutput into /dev/null: the server's decoding
#       limit, the baseline, measured in the same run: BENCH_RUNS times
#       before outboxd and BENCH_RUNS times after it (one slow baseline run
#       once made a 0.3 ratio look like 1.0, so a single run is no limit);
#   (b) by outboxd into Kafka with exactly-once on (transactional producer,
#       events visible to read_committed consumers), BENCH_RUNS times, each
#       run with its own slot, source name and topic, all slots created
#       before the backlog so every run decodes the same WAL.
# Prints every run, the best, median and spread ((worst - best) / best) of
# each side, the ratio of the bests (target: >= 0.80) and of the medians,
# events/s and payload MB/s, outboxd's peak RSS, and the count read back
# from Kafka per run (must equal N).
#   (c) the Kafka-side ceiling: BENCH_RUNS times (after outboxd's runs),
#       tests/tools/kafka_ceiling writes N records with the relay's own event
#       value (the first record outboxd wrote), key and headers, in
#       transactions of the relay's mean size, through transactional
#       librdkafka producers taking turns as the relay's ring does
#       (ceiling_mode in common.sh) with the relay's settings and no
#       PostgreSQL: what this broker takes from them. outboxd / ceiling says how
#       much of the gap to the decoding limit is Kafka's (BENCH_CEILING=0
#       skips it). BENCH_CEILING_LOAD=1 runs each beside pg_recvlogical
#       decoding the same backlog from a slot of its own: on a machine where
#       the broker and PostgreSQL share the cores, what Kafka takes while the
#       server decodes at full speed (the relay's walsender decodes at the
#       relay's pace, so this is the harsher of the two).
#
#   bench/throughput.sh [N] [ROWS_PER_TXN] [PAYLOAD_BYTES]
#     N              events in the backlog (default 200000)
#     ROWS_PER_TXN   outbox rows per PostgreSQL transaction (default 1)
#     PAYLOAD_BYTES  0 (default): a small JSON payload of about 60 bytes;
#                    else a payload of about that many bytes of incompressible
#                    text (e.g. 10240 for 10 KB events)
#   BENCH_RUNS (default 3)
#   BENCH_WARMUP_RUNS (default 3): outboxd drains before the counted runs, on
#       their own slots, printed and not counted. A broker just started (as the
#       bench's is) runs its first drain 1.5 to 2 times slower (JIT warm-up)
#       and keeps getting faster over the next two (2026-12-02, 10-row
#       drains: with 1 warm-up the counted runs took 2,795, 2,238 and 1,592
#       ms, spread 43%; with 3 the warm-ups took 3,035, 1,945 and 1,893 ms
#       and the counted runs 1,871, 1,868 and 1,713, spread 8%);
#       pg_recvlogical has no broker to warm, and a production broker is warm.
# Every run's topic is created before the run (okcat --create-topics, the
# stack's 3 partitions), so no drain pays for topic creation.
source "$(dirname "$0")/common.sh"
N=${1:-200000}
ROWS=${2:-1}
PAYLOAD=${3:-0}
RUNS=${BENCH_RUNS:-3}
WARM=${BENCH_WARMUP_RUNS:-3}
[ "$ROWS" -ge 1 ] && [ $((N % (4 * ROWS))) -eq 0 ] || {
    echo "bench: N must be a multiple of 4 * ROWS_PER_TXN (4 writer clients)" >&2
    exit 2
}
bench_db bench_tp
CEIL_LOAD=${BENCH_CEILING_LOAD:-0}
for i in $(seq 1 "$RUNS"); do
    for slot in recv_a$i relay_$i recv_b$i $([ "$CEIL_LOAD" = 0 ] || echo "ceil_load$i"); do
        q -c "SELECT pg_create_logical_replication_slot('$slot', 'pgoutput')" >/dev/null
    done
done
topics=()
for i in $(seq 1 "$RUNS") $(seq 1 "$WARM" | sed 's/^/w/'); do topics+=(-t "bench$i.order"); done
CEIL=${BENCH_CEILING:-1}
[ "$CEIL" = 0 ] || for i in $(seq 1 "$RUNS"); do topics+=(-t "ceil$i.order" -t "ceil$i.order.ck"); done
for i in $(seq 1 "$WARM"); do
    q -c "SELECT pg_create_logical_replication_slot('relay_w$i', 'pgoutput')" >/dev/null
done
"$OKCAT" -b "$KAFKA_BOOTSTRAP" "${topics[@]}" --create-topics 3

if [ "$PAYLOAD" -eq 0 ]; then
    payload_sql="'{\"amount\": 12, \"currency\": \"EUR\", \"items\": [1, 2, 3]}'::jsonb"
    payload_bytes=52
else
    # md5 of a different text per 32 bytes: TOAST cannot compress it, so the
    # WAL and the stream carry the full size.
    payload_sql="jsonb_build_object('data', (SELECT string_agg(md5(random()::text || g || h), '') FROM generate_series(1, $((PAYLOAD / 32))) h))"
    payload_bytes=$((PAYLOAD / 32 * 32 + 11))
fi
say "writing $N events: $((N / ROWS)) transactions of $ROWS row(s), payload ~$payload_bytes bytes"
printf '%s\n' '\set k random(1, 1000)' \
    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT 'order', 'order-' || (:k + g), 'OrderCreated', $payload_sql FROM generate_series(1, $ROWS) g;" \
    >"$WORK/insert.sql"
pgbench -n -c 4 -j 2 -t $((N / ROWS / 4)) -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench.log" 2>&1 || {
    cat "$WORK/pgbench.log" >&2
    exit 1
}
END=$(q -c "SELECT pg_current_wal_lsn()")
say "backlog written, WAL end $END"

recv_run() { # recv_run SLOT -> milliseconds
    local t0 t1
    t0=$(now_ms)
    pg_recvlogical -d "$DB" --slot "$1" --start --endpos "$END" --no-loop \
        -o proto_version=1 -o publication_names=bench_pub -f /dev/null
    t1=$(now_ms)
    echo $((t1 - t0))
}

# outboxd: the clock runs from process start until the slot has confirmed the
# whole backlog, which the relay does only after the Kafka transaction holding
# it committed. Startup (connect, init_transactions of every producer id,
# checkpoint read) ends with the "streaming slot" line; the drain rate counts
# from there. Prints "drain_ms total_ms peak_kb consumed".
# CPU used during a run (utime + stime, clock ticks): where the time of a
# drain goes on a machine where the broker shares the cores. "postgres" is
# the postmaster and all its children (the walsender decoding included).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
BROKER_PID=$(pgrep -f "kafka.Kafka.*$STACK_DIR" | head -n 1 || true)
PG_PID=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null || true)
pg_ticks() {
    local t=0 p
    for p in $(pgrep -P "$PG_PID" 2>/dev/null) "$PG_PID"; do t=$((t + $(cpu_ticks "$p"))); done
    echo "$t"
}
broker_ticks() { [ -n "$BROKER_PID" ] && cpu_ticks "$BROKER_PID" || echo 0; }
HZ=$(getconf CLK_TCK)

relay_run() { # relay_run I
    local i=$1 cfg=$WORK/outboxd.$1.yaml log=$WORK/relay.$1.log t0 t1 relay peak r ts stream_ms n
    local b0 p0 rt bt pt
    bench_config "$cfg" "relay_$i" "bench_tp_$i" "bench$i"
    b0=$(broker_ticks)
    p0=$(pg_ticks)
    t0=$(now_ms)
    "$OUTBOXD_BIN" run -c "$cfg" 2>"$log" &
    relay=$!
    BG+=("$relay")
    peak=0
    until slot_done "relay_$i" "$END"; do
        r=$(peak_rss_kb "$relay")
        [ "${r:-0}" -gt "$peak" ] && peak=$r
        kill -0 "$relay" 2>/dev/null || { tail -n 20 "$log" >&2; return 1; }
        sleep 0.05
    done
    t1=$(now_ms)
    rt=$(cpu_ticks "$relay")
    bt=$(($(broker_ticks) - b0))
    pt=$(($(pg_ticks) - p0))
    r=$(peak_rss_kb "$relay")
    [ "${r:-0}" -gt "$peak" ] && peak=$r
    kill -TERM "$relay"
    wait "$relay" || true
    ts=$(grep -m1 "streaming slot" "$log" | cut -d' ' -f1)
    stream_ms=$(($(date -d "$ts" +%s%3N) - t0))
    n=$("$OKCAT" -b "$KAFKA_BOOTSTRAP" -t "bench$i.order" --idle-ms 3000 2>/dev/null | sed -n 's/^okcat: consumed=//p')
    awk -v r="$rt" -v b="$bt" -v p="$pt" -v hz="$HZ" -v ms=$((t1 - t0)) 'BEGIN {
        s = ms / 1000; printf "cores busy during the run: relay %.2f, broker %.2f, postgres %.2f (of 2)\n", r / hz / s, b / hz / s, p / hz / s }' >"$WORK/cpu.$i"
    echo "$((t1 - t0 - stream_ms)) $((t1 - t0)) $peak ${n:-0}"
}

: >"$WORK/results"
for i in $(seq 1 "$WARM"); do
    read -r drain total peak n < <(relay_run "w$i")
    echo "throughput: warm-up run outboxd #w$i (not counted): drain $drain ms, with startup $total ms, read back $n; $(cat "$WORK/cpu.w$i")" >&2
done
for i in $(seq 1 "$RUNS"); do
    ms=$(recv_run "recv_a$i")
    echo "throughput: run pg_recvlogical before #$i: $ms ms" >&2
    echo "recv $ms" >>"$WORK/results"
done
for i in $(seq 1 "$RUNS"); do
    read -r drain total peak n < <(relay_run "$i")
    echo "throughput: run outboxd #$i: drain $drain ms, with startup $total ms, peak RSS $((peak / 1024)) MB, read back $n; $(cat "$WORK/cpu.$i")" >&2
    echo "relay $drain $total $peak $n" >>"$WORK/results"
done
if [ "$CEIL" != 0 ]; then
    # The relay's mean transaction size (its final stats line, run 1).
    per_txn=$(grep -o 'published [0-9]* events, [0-9]* dead-lettered, [0-9]* Kafka transactions' "$WORK/relay.1.log" |
        tail -n 1 | awk '{ printf "%d", ($6 > 0 ? $2 / $6 : 5000) }')
    for i in $(seq 1 "$RUNS"); do
        load=""
        if [ "$CEIL_LOAD" != 0 ]; then
            # Beside PostgreSQL decoding the same backlog at full speed (a
            # slot of its own): the cores the broker shares in a drain.
            (recv_run "ceil_load$i" >"$WORK/ceil_load.$i") &
            loadpid=$!
            BG+=("$loadpid")
        fi
        line=$(KAFKA_CEILING_MODE=$(ceiling_mode) "$BUILD/tests/tools/kafka_ceiling" "$KAFKA_BOOTSTRAP" "ceil$i.order" "$N" from:bench1.order "$per_txn" \
            ${BENCH_KAFKA_PROPS:-})
        if [ "$CEIL_LOAD" != 0 ]; then
            wait "$loadpid" || true
            load=", beside pg_recvlogical decoding the backlog (it took $(cat "$WORK/ceil_load.$i") ms)"
        fi
        echo "throughput: run kafka_ceiling #$i ($per_txn events per transaction$load): $line" >&2
        echo "ceil $(echo "$line" | sed -n 's/.* ms=\([0-9]*\) .*/\1/p')" >>"$WORK/results"
    done
fi
for i in $(seq 1 "$RUNS"); do
    ms=$(recv_run "recv_b$i")
    echo "throughput: run pg_recvlogical after #$i: $ms ms" >&2
    echo "recv $ms" >>"$WORK/results"
done

cload="no PostgreSQL"
[ "$CEIL_LOAD" = 0 ] || cload="beside pg_recvlogical decoding the same backlog"
awk -v cmode="$(ceiling_mode)" -v cload="$cload" -v n="$N" -v rows="$ROWS" -v pb="$payload_bytes" -v runs="$RUNS" '
function sort(a, k,   i, j, t) { for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t } }
$1 == "recv" { r[++nr] = $2 }
$1 == "ceil" { c[++nc] = $2 }
$1 == "relay" { d[++nd] = $2; t[nd] = $3; if ($4 > peak) peak = $4; if ($5 != n) bad++ }
END {
    sort(r, nr); sort(d, nd); sort(t, nd);
    rbest = n / (r[1] / 1000); rmed = n / (r[int((nr + 1) / 2)] / 1000); rworst = n / (r[nr] / 1000);
    dbest = n / (d[1] / 1000); dmed = n / (d[int((nd + 1) / 2)] / 1000); dworst = n / (d[nd] / 1000);
    tbest = n / (t[1] / 1000);
    printf "throughput: events=%d in transactions of %d row(s), payload ~%d bytes; %d runs each\n", n, rows, pb, runs;
    printf "throughput: pg_recvlogical (decoding limit), %d runs before and %d after outboxd: best %.0f, median %.0f, worst %.0f events/s (spread %.0f%%)\n", runs, runs, rbest, rmed, rworst, 100 * (rbest - rworst) / rbest;
    printf "throughput: outboxd exactly-once into Kafka, draining: best %.0f, median %.0f, worst %.0f events/s (spread %.0f%%); best with startup %.0f events/s\n", dbest, dmed, dworst, 100 * (dbest - dworst) / dbest, tbest;
    printf "throughput: payload MB/s: pg_recvlogical best %.1f, outboxd best %.1f\n", rbest * pb / 1e6, dbest * pb / 1e6;
    printf "throughput: ratio outboxd / decoding limit: best/best %.2f, median/median %.2f (target >= 0.80)\n", dbest / rbest, dmed / rmed;
    if (nc) {
        sort(c, nc); cbest = n / (c[1] / 1000); cmed = n / (c[int((nc + 1) / 2)] / 1000); cworst = n / (c[nc] / 1000);
        printf "throughput: Kafka-side ceiling (transactional librdkafka producers, mode %s, the relay'"'"'s records, %s): best %.0f, median %.0f, worst %.0f events/s (spread %.0f%%)\n", cmode, cload, cbest, cmed, cworst, 100 * (cbest - cworst) / cbest;
        printf "throughput: ratio outboxd / Kafka-side ceiling: best/best %.2f, median/median %.2f\n", dbest / cbest, dmed / cmed;
    }
    printf "throughput: outboxd peak RSS %.1f MB; runs whose read-back count from Kafka (read_committed) differed from %d: %d\n", peak / 1024, n, bad;
}' "$WORK/results"

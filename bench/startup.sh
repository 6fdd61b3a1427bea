#!/usr/bin/env bash
# Startup time: from exec of `outboxd run` to its "streaming slot" line, for
# one source on a warm broker (issue 10: under 200 ms).
#
# A private stack, one outbox database and one source. BENCH_WARMUP starts
# (default 3) are not counted: the first creates the slot, the publication
# and the checkpoint topic, and one outbox row is relayed so that later
# starts read a real checkpoint (data and transaction markers, as after any
# restart). Then RUNS starts are timed; each run is stopped with SIGTERM and
# the next begins once PostgreSQL shows the slot released.
#
# Prints every run, best / median / worst and the spread ((worst - best) /
# best), and a per-phase breakdown (the median of each phase over the runs)
# from the timestamps of the relay's debug log: the process up to its
# "starting" line (configuration, Kafka preflight), then each "startup:"
# debug line, then "streaming slot". A phase is the time since the previous
# mark; phases whose line a build does not log are absent (an older build
# shows fewer, longer phases).
#
#   bench/startup.sh [RUNS]     RUNS timed starts (default 10)
#   BENCH_WARMUP (default 3), BENCH_PRODUCERS (producers_per_source, default 2),
#   BENCH_LOGS=DIR keeps the relays' debug logs there
source "$(dirname "$0")/common.sh"
RUNS=${1:-10}
WARMUP=${BENCH_WARMUP:-3}
[ "$RUNS" -ge 1 ] && [ "$WARMUP" -ge 1 ] || {
    echo "bench: RUNS and BENCH_WARMUP must be at least 1" >&2
    exit 2
}
bench_db bench_su
BENCH_LOG_LEVEL=debug bench_config "$WORK/outboxd.yaml" bench_su_slot bench_su bench_su

# Seconds since midnight UTC of now, as the log's stamps give it (ms).
day_ms() { # day_ms EPOCHREALTIME
    local s=${1%.*} f=${1#*.}
    f=${f}000
    echo $(((s % 86400) * 1000 + 10#${f:0:3}))
}

slot_free() {
    [ "$(q -c "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = 'bench_su_slot'")" = f ]
}

# one_start LOG: starts the relay, waits for "streaming slot", stops it.
# Prints the start time (ms since midnight UTC).
one_start() {
    local log=$1 t0 relay i
    for ((i = 0; i < 200; i++)); do
        slot_free && break
        sleep 0.05
    done
    : >"$log"
    t0=$EPOCHREALTIME
    "$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" 2>"$log" &
    relay=$!
    BG+=("$relay")
    for ((i = 0; i < 1500; i++)); do
        grep -q "streaming slot" "$log" && break
        kill -0 "$relay" 2>/dev/null || break
        sleep 0.02
    done
    if ! grep -q "streaming slot" "$log"; then
        tail -n 30 "$log" >&2
        kill -9 "$relay" 2>/dev/null || true
        return 1
    fi
    if [ -n "${ROW:-}" ]; then
        # Once: one event relayed, so that later starts read a checkpoint.
        q -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'o-1', 'OrderCreated', '{}')"
        local end
        end=$(q -c "SELECT pg_current_wal_lsn()")
        for ((i = 0; i < 600; i++)); do
            slot_done bench_su_slot "$end" && break
            sleep 0.05
        done
        slot_done bench_su_slot "$end" || {
            echo "bench: the warm-up event was not confirmed" >&2
            return 1
        }
    fi
    kill -TERM "$relay"
    wait "$relay" || true
    day_ms "$t0"
}

say "load: $(uptime | sed 's/.*load/load/')"
for ((w = 1; w <= WARMUP; w++)); do
    ROW=$([ "$w" -eq 1 ] && echo 1 || true)
    ROW=$ROW one_start "$WORK/warm.$w.log" >/dev/null
done
say "warm-up: $WARMUP start(s) done, one event relayed"

: >"$WORK/phases"
for ((r = 1; r <= RUNS; r++)); do
    t0=$(ROW= one_start "$WORK/run.$r.log")
    # Marks: "<ms since midnight> <phase name>" in log order.
    {
        echo "$t0 exec"
        grep -E "starting with|\] startup: |streaming slot" "$WORK/run.$r.log" |
            sed -E 's/^[0-9-]+T([0-9]+):([0-9]+):([0-9.]+)Z +[A-Z]+ +\[[^]]*\] (.*)$/\1 \2 \3 \4/' |
            awk '{ ms = ($1 * 3600 + $2 * 60) * 1000 + int($3 * 1000 + 0.5); $1 = $2 = $3 = "";
                   sub(/^ +/, ""); name = $0;
                   if (name ~ /^outboxd .* starting with/) name = "process up (configuration, Kafka preflight)";
                   else if (name ~ /^streaming slot/) name = "streaming slot";
                   else { sub(/^startup: /, "", name); sub(/[:(].*$/, "", name); sub(/ +$/, "", name) }
                   print ms, name }'
    } >"$WORK/marks.$r"
    total=$(awk 'NR == 1 { t0 = $1 } { last = $1 } END { d = last - t0; if (d < 0) d += 86400000; print d }' "$WORK/marks.$r")
    echo "startup: run #$r: $total ms" >&2
    echo "total $total" >>"$WORK/phases"
    awk -v r="$r" 'NR > 1 { d = $1 - prev; if (d < 0) d += 86400000; n = $0; sub(/^[0-9]+ /, "", n);
                            printf "phase %d %s|%d\n", NR - 1, n, d } { prev = $1 }' "$WORK/marks.$r" >>"$WORK/phases"
done

awk -v runs="$RUNS" -v warm="$WARMUP" '
function sort(a, k,   i, j, t) { for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t } }
$1 == "total" { t[++nt] = $2; next }
$1 == "phase" {
    line = $0; sub(/^phase [0-9]+ /, "", line); split(line, kv, "|");
    if (!(kv[1] in idx)) { idx[kv[1]] = $2; names[++nn] = kv[1] }
    c = ++cnt[kv[1]]; v[kv[1], c] = kv[2]
}
END {
    sort(t, nt);
    best = t[1]; worst = t[nt]; med = (nt % 2) ? t[(nt + 1) / 2] : (t[nt / 2] + t[nt / 2 + 1]) / 2;
    printf "startup: one source, warm broker, %d timed starts after %d warm-up start(s)\n", runs, warm;
    printf "startup: exec to \"streaming slot\": best %d ms, median %d ms, worst %d ms (spread %.0f%%)\n",
        best, med, worst, best ? 100 * (worst - best) / best : 0;
    printf "startup: phases (median over the runs that logged them; each since the previous mark):\n";
    for (i = 1; i <= nn; i++) {
        n = names[i]; k = cnt[n];
        for (j = 1; j <= k; j++) a[j] = v[n, j];
        sort(a, k);
        m = (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2;
        printf "startup:   %-55s %6.1f ms (min %d, max %d, %d run(s))\n", n, m, a[1], a[k], k;
    }
}' "$WORK/phases"
if [ -n "${BENCH_LOGS:-}" ]; then
    mkdir -p "$BENCH_LOGS" && cp "$WORK"/*.log "$BENCH_LOGS"/ && say "relay logs kept in $BENCH_LOGS"
fi
say "load: $(uptime | sed 's/.*load/load/')"

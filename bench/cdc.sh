#!/usr/bin/env bash
# CDC throughput next to the outbox rate, and snapshot rows/s, in one run.
#
# One database holds two tables written by the same pgbench script, so both
# backlogs lie in the same WAL: an outbox table (N single-row transactions,
# payload as in bench/throughput.sh) and a plain table "orders" (N
# single-row INSERT transactions, six columns of about the same size)
# captured with mode: cdc. Every relay run has its own slot, created before
# the backlog, so every run decodes the same WAL; they run one after the
# other in BENCH_RUNS rounds (default 3), the kind going first rotating each
# round (the first drain of a round also reads the WAL from disk):
#   outbox    the outbox table, exactly-once into Kafka (as throughput.sh)
#   cdc-json  orders, mode: cdc, format: json (JsonConverter with schemas)
#   cdc-avro  orders, mode: cdc, format: avro without a registry (single-
#             object encoding; BENCH_AVRO=0 leaves it out)
# then BENCH_RUNS snapshots of orders (its N rows, snapshot: initial, JSON,
# chunk relay.max_batch_events = BENCH_CHUNK, default 5000) with fresh slots.
#
# Drain time: from the relay's "streaming slot" line until the slot has
# confirmed the backlog (only done after the Kafka commit). MB/s: bytes the
# run's topic holds in the broker's log (record batches, keys, values and
# headers, no compression) per drain second. Every run's topic is read back
# (read_committed) and must hold N records. Prints every run, then per kind
# best, median, worst (events/s and MB/s) and spread ((best - worst) / best),
# the ratios cdc / outbox of the bests and of the medians, and the snapshot's
# rows/s (from the relay's "snapshot finished" line).
#
#   bench/cdc.sh [N]     N transactions per table (default 100000, a multiple of 4)
source "$(dirname "$0")/common.sh"
N=${1:-100000}
RUNS=${BENCH_RUNS:-3}
CHUNK=${BENCH_CHUNK:-5000}
KINDS="outbox cdc-json"
[ "${BENCH_AVRO:-1}" = 0 ] || KINDS="$KINDS cdc-avro"
[ $((N % 4)) -eq 0 ] || {
    echo "bench: N must be a multiple of 4 (4 writer clients)" >&2
    exit 2
}
KAFKA_DATA=$(sed -n 's/^log.dirs=//p' "$STACK_DIR/server.properties")

bench_db bench_cdc
q -c "CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL,
        amount numeric(12,2) NOT NULL, currency text NOT NULL, status text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())" \
    -c "CREATE PUBLICATION cdc_pub FOR TABLE orders"
for i in $(seq 1 "$RUNS"); do
    for k in $KINDS; do
        q -c "SELECT pg_create_logical_replication_slot('${k//-/_}_$i', 'pgoutput')" >/dev/null
    done
done
say "writing $N outbox and $N orders single-row transactions (4 clients)"
printf '%s\n' '\set k random(1, 1000)' \
    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'order-' || :k, 'OrderCreated', '{\"amount\": 12, \"currency\": \"EUR\", \"items\": [1, 2, 3]}');" \
    "INSERT INTO orders (customer, amount, currency, status) VALUES ('customer-' || :k, 12.50, 'EUR', 'NEW');" \
    >"$WORK/insert.sql"
pgbench -n -c 4 -j 2 -t $((N / 4)) -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench.log" 2>&1 || {
    cat "$WORK/pgbench.log" >&2
    exit 1
}
END=$(q -c "SELECT pg_current_wal_lsn()")
say "backlog written, WAL end $END"

# config KIND SLOT SOURCE TOPIC [SNAPSHOT]
config() {
    local kind=$1 slot=$2 src=$3 topic=$4 snap=${5:-never} cfg=$WORK/$3.yaml
    if [ "$kind" = outbox ]; then
        bench_config "$cfg" "$slot" "$src" "$topic"
    else
        printf '%s\n' \
            "kafka:" \
            "  bootstrap_servers: \"$KAFKA_BOOTSTRAP\"" \
            "  transactional_id_prefix: bench" \
            "relay:" \
            "  checkpoint_topic: bench.checkpoints" \
            "  dead_letter_topic: bench.dlt" \
            "  log_level: ${BENCH_LOG_LEVEL:-info}" \
            "  producers_per_source: ${BENCH_PRODUCERS:-2}" \
            "sources:" \
            "  - name: $src" \
            "    dsn: \"host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER\"" \
            "    slot: $slot" \
            "    publication: cdc_pub" \
            "    tables:" \
            "      - table: public.orders" \
            "        mode: cdc" \
            "        topic: \"$topic\"" \
            "        format: ${kind#cdc-}" \
            "        snapshot: $snap" >"$cfg"
        # The snapshot's chunk; drains keep the default batch like outbox runs.
        [ "$snap" = never ] || sed -i "s/^relay:/relay:\n  max_batch_events: $CHUNK/" "$cfg"
    fi
    echo "$cfg"
}

# topic_bytes TOPIC: bytes of the topic's log segments in the broker.
topic_bytes() {
    find "$KAFKA_DATA" -path "*/$1-[0-9]*/*.log" -printf '%s\n' 2>/dev/null | awk '{s += $1} END {print s + 0}'
}

# drain KIND I: prints "drain_ms bytes read_back".
drain() {
    local kind=$1 i=$2 slot=${1//-/_}_$2 src=bench_${1//-/_}_$2 topic cfg log relay t1 ts n
    topic="bench.${kind}.$i"
    [ "$kind" = outbox ] && topic="bench_${kind}_$i" # bench_config appends .${aggregatetype}
    cfg=$(config "$kind" "$slot" "$src" "$topic")
    [ "$kind" = outbox ] && topic="$topic.order"
    log=$WORK/$src.log
    "$OUTBOXD_BIN" run -c "$cfg" 2>"$log" &
    relay=$!
    BG+=("$relay")
    until slot_done "$slot" "$END"; do
        kill -0 "$relay" 2>/dev/null || { tail -n 20 "$log" >&2; return 1; }
        sleep 0.05
    done
    t1=$(now_ms)
    kill -TERM "$relay"
    wait "$relay" || true
    grep -q "dead-letter topic" "$log" && { say "dead letters in $src"; return 1; }
    ts=$(grep -m1 "streaming slot" "$log" | cut -d' ' -f1)
    n=$("$OKCAT" -b "$KAFKA_BOOTSTRAP" -t "$topic" --idle-ms 3000 2>/dev/null | sed -n 's/^okcat: consumed=//p')
    echo "$((t1 - $(date -d "$ts" +%s%3N))) $(topic_bytes "$topic") ${n:-0}"
}

# snapshot I: prints "rows seconds rows_per_s".
snapshot() {
    local i=$1 src=bench_snap_$1 cfg log relay line
    cfg=$(config cdc-json "bench_snap_$i" "$src" "bench.snap.$i" initial)
    log=$WORK/$src.log
    "$OUTBOXD_BIN" run -c "$cfg" 2>"$log" &
    relay=$!
    BG+=("$relay")
    until grep -q "snapshot finished" "$log"; do
        kill -0 "$relay" 2>/dev/null || { tail -n 20 "$log" >&2; return 1; }
        sleep 0.1
    done
    kill -TERM "$relay"
    wait "$relay" || true
    line=$(sed -n 's/^.*snapshot finished: \([0-9]*\) rows in \([0-9.]*\) s (\([0-9]*\) rows\/s).*$/\1 \2 \3/p' "$log" | tail -n 1)
    q -c "SELECT pg_drop_replication_slot('bench_snap_$i')" >/dev/null 2>&1 || true
    echo "${line:-0 0 0}"
}

: >"$WORK/results"
set -- $KINDS
nk=$#
for i in $(seq 1 "$RUNS"); do
    # Rotate which kind drains first in this round.
    order=()
    for j in $(seq 0 $((nk - 1))); do
        idx=$(((i - 1 + j) % nk + 1))
        order+=("${!idx}")
    done
    for k in "${order[@]}"; do
        read -r ms bytes n < <(drain "$k" "$i")
        awk -v i="$i" -v k="$k" -v ms="$ms" -v b="$bytes" -v n="$n" -v N="$N" 'BEGIN {
            printf "cdc: round %d %-8s drain %6d ms  %8.0f events/s  %6.2f MB/s  read back %d\n", i, k, ms, N * 1000 / ms, b / 1000 / ms, n }' >&2
        echo "$k $ms $bytes $n" >>"$WORK/results"
    done
done
for i in $(seq 1 "$RUNS"); do
    read -r rows secs rate < <(snapshot "$i")
    echo "cdc: snapshot #$i: $rows rows in $secs s, $rate rows/s" >&2
    echo "snapshot $rows $secs $rate" >>"$WORK/results"
done

awk -v n="$N" -v runs="$RUNS" -v chunk="$CHUNK" -v kindlist="$KINDS" '
function sort(a, k,   i, j, t) { for (i = 2; i <= k; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t } }
$1 == "snapshot" { s[++ns] = $4; if ($2 != n) sbad++; next }
{ k = $1; c[k]++; ms[k, c[k]] = $2; mbs[k, c[k]] = $3 / 1000 / $2; by[k] = $3 / n; if ($4 != n) bad++ }
END {
    printf "cdc: %d single-row transactions per table, %d rounds, one run, same WAL for every drain\n", n, runs;
    nk = split(kindlist, kinds, " ");
    for (x = 1; x <= nk; x++) {
        k = kinds[x]; m = c[k]; delete a; delete b;
        for (i = 1; i <= m; i++) { a[i] = ms[k, i]; b[i] = -mbs[k, i] }
        sort(a, m); sort(b, m);
        best[k] = n / (a[1] / 1000); med[k] = n / (a[int((m + 1) / 2)] / 1000); worst = n / (a[m] / 1000);
        printf "cdc: %-8s best %7.0f, median %7.0f, worst %7.0f events/s (spread %2.0f%%); MB/s into Kafka best %.2f, median %.2f (%.0f bytes/event in the broker log)\n",
            k, best[k], med[k], worst, 100 * (best[k] - worst) / best[k], -b[1], -b[int((m + 1) / 2)], by[k];
    }
    for (x = 2; x <= nk; x++) if ((k = kinds[x]) != "outbox")
        printf "cdc: ratio %s / outbox: best/best %.2f, median/median %.2f\n", k, best[k] / best["outbox"], med[k] / med["outbox"];
    sort(s, ns);
    printf "cdc: snapshot of %d rows (chunk %d, JSON): best %.0f, median %.0f, worst %.0f rows/s (spread %.0f%%)\n",
        n, chunk, s[ns], s[int((ns + 1) / 2)], s[1], s[ns] ? 100 * (s[ns] - s[1]) / s[ns] : 0;
    printf "cdc: runs whose read-back count (read_committed) differed from %d: %d drains, %d snapshots\n", n, bad, sbad;
}' "$WORK/results"

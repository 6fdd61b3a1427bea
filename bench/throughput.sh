#!/usr/bin/env bash
# Throughput: a backlog of N single-row outbox transactions (default 200,000)
# in one database, drained
#   (a) by pg_recvlogical with pgoutput into /dev/null: the server's decoding
#       limit, our baseline, measured in the same run;
#   (b) by outboxd into Kafka with exactly-once on (transactional producer,
#       events visible to read_committed consumers).
# Prints both rates, the ratio (target: >= 0.8) and outboxd's peak RSS.
#   bench/throughput.sh [N]
source "$(dirname "$0")/common.sh"
N=${1:-200000}
bench_db bench_tp
q -c "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')" >/dev/null
q -c "SELECT pg_create_logical_replication_slot('bench_relay', 'pgoutput')" >/dev/null

say "writing $N single-row transactions"
printf '%s\n' '\set k random(1, 1000)' \
    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'order-' || :k, 'OrderCreated', '{\"amount\": 12, \"currency\": \"EUR\", \"items\": [1, 2, 3]}');" \
    >"$WORK/insert.sql"
pgbench -n -c 4 -j 2 -t $((N / 4)) -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench.log" 2>&1
END=$(q -c "SELECT pg_current_wal_lsn()")
say "backlog written, WAL end $END"

# (a) decoding limit
t0=$(now_ms)
pg_recvlogical -d "$DB" --slot bench_recv --start --endpos "$END" --no-loop \
    -o proto_version=1 -o publication_names=bench_pub -f /dev/null
t1=$(now_ms)
recv_ms=$((t1 - t0))

# (b) outboxd, exactly-once into Kafka; the clock runs from process start
# (startup included) until the slot has confirmed the whole backlog, which
# the relay does only after the Kafka transaction holding it committed.
bench_config "$WORK/outboxd.yaml" bench_relay
t0=$(now_ms)
"$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" 2>"$WORK/relay.log" &
relay=$!
BG+=("$relay")
peak=0
until slot_done bench_relay "$END"; do
    r=$(peak_rss_kb "$relay")
    [ "${r:-0}" -gt "$peak" ] && peak=$r
    sleep 0.05
done
t1=$(now_ms)
r=$(peak_rss_kb "$relay")
[ "${r:-0}" -gt "$peak" ] && peak=$r
relay_ms=$((t1 - t0))
kill -TERM "$relay"
wait "$relay" || true
# Startup (connect, init_transactions of every producer id, checkpoint read)
# ends with the "streaming slot" line; the drain rate counts from there.
ts=$(grep -m1 "streaming slot" "$WORK/relay.log" | cut -d' ' -f1)
stream_ms=$(($(date -d "$ts" +%s%3N) - t0))
drain_ms=$((relay_ms - stream_ms))

n_kafka=$("$OKCAT" -b "$KAFKA_BOOTSTRAP" -t bench.order --idle-ms 3000 2>/dev/null | sed -n 's/^okcat: consumed=//p')
awk -v n="$N" -v a="$recv_ms" -v b="$relay_ms" -v d="$drain_ms" -v rss="$peak" -v k="$n_kafka" 'BEGIN {
    ra = n / (a / 1000); rb = n / (b / 1000); rd = n / (d / 1000);
    printf "throughput: transactions=%d\n", n;
    printf "throughput: pg_recvlogical (decoding limit): %.0f txn/s (%.2f s)\n", ra, a / 1000;
    printf "throughput: outboxd exactly-once into Kafka: %.0f events/s draining (%.2f s), %.0f events/s with its %.2f s startup\n", rd, d / 1000, rb, (b - d) / 1000;
    printf "throughput: ratio outboxd / decoding limit = %.2f draining, %.2f with startup (target >= 0.80)\n", rd / ra, rb / ra;
    printf "throughput: outboxd peak RSS = %.1f MB; events read back from Kafka (read_committed) = %d\n", rss / 1024, k;
}'

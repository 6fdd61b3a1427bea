#!/usr/bin/env bash
# Latency: rows written at a steady rate (default 5,000 single-row
# transactions per second for 60 seconds) while outboxd relays them; a
# read_committed consumer measures, for each event, receipt time minus the
# PostgreSQL commit time carried in the event. Prints p50, p90, p99, max and
# the relay's peak RSS (target: p99 < 25 ms on this machine).
#   bench/latency.sh [RATE] [SECONDS]
source "$(dirname "$0")/common.sh"
RATE=${1:-5000}
SECS=${2:-60}
bench_db bench_lat
q -c "SELECT pg_create_logical_replication_slot('bench_lat', 'pgoutput')" >/dev/null
bench_config "$WORK/outboxd.yaml" bench_lat
"$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" 2>"$WORK/relay.log" &
relay=$!
BG+=("$relay")
until grep -q "streaming slot" "$WORK/relay.log"; do sleep 0.1; done

# Warm-up row so the topic exists before the consumer subscribes.
q -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'warm', 'Warm', '{}')"
sleep 2
# fetch.wait.max.ms only bounds an idle fetch: the broker answers as soon as
# the last stable offset moves, so a short value adds no accuracy, only load.
# It starts at the end of the topic (auto.offset.reset=latest) so the
# warm-up row, committed before it joined, is not counted.
"$OKCAT" -b "$KAFKA_BOOTSTRAP" -t bench.order --latency -X auto.offset.reset=latest --idle-ms 5000 --timeout-ms $(((SECS + 120) * 1000)) \
    -X fetch.wait.max.ms=100 -X fetch.error.backoff.ms=5 >"$WORK/okcat.out" 2>&1 &
consumer=$!
BG+=("$consumer")
sleep 5 # let the consumer join the group and get its partitions

printf '%s\n' '\set k random(1, 1000)' \
    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'order-' || :k, 'OrderCreated', '{\"amount\": 12, \"currency\": \"EUR\"}');" \
    >"$WORK/insert.sql"
say "writing $RATE transactions/s for $SECS s"
pgbench -n -c 4 -j 2 -R "$RATE" -T "$SECS" -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench.log" 2>&1
wait "$consumer" || true
peak=$(peak_rss_kb "$relay")
kill -TERM "$relay"
wait "$relay" || true
written=$(q -c "SELECT count(*) FROM outbox")
grep -E "^okcat: (latency|consumed)" "$WORK/okcat.out" | sed 's/^okcat: /latency: /'
grep -E "^tps" "$WORK/pgbench.log" | sed 's/^/latency: pgbench: /'
echo "latency: rows written=$written (incl. 1 warm-up); relay peak RSS = $((peak / 1024)) MB"
grep -o 'published.*' "$WORK/relay.log" | tail -n 1 | sed 's/^/latency: relay: /'
[ -z "${BENCH_KEEP_LOG:-}" ] || cp "$WORK/relay.log" "$BENCH_KEEP_LOG"

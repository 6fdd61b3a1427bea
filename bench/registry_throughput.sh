#!/usr/bin/env bash
# Throughput with typed payloads and the schema registry, next to the
# envelope-only rate, measured in the same run on the same backlog of N
# single-row outbox transactions (default 100,000), each relay on its own
# slot, one after the other, in ROUNDS (default 3) alternating rounds:
#   (a) outboxd, envelope with the payload as JSON text, single-object encoding;
#   (b) outboxd, payload converted to OrderCreated.avsc (decimal, enum, array,
#       timestamp), Confluent wire format with ids from the registry
#       (tests/stack/registry.sh, Apicurio in memory).
# Prints both drain rates (from "streaming" to the slot confirming the
# backlog) and their ratio. Run it twice or more to see the spread.
#   bench/registry_throughput.sh [N]
source "$(dirname "$0")/common.sh"
N=${1:-100000}
"$ROOT/tests/stack/registry.sh" start >&2
trap '"$ROOT/tests/stack/registry.sh" stop >/dev/null 2>&1 || true; bench_cleanup' EXIT
# shellcheck disable=SC1091
source "$STACK_DIR/registry/env"

bench_db bench_reg
ROUNDS=${ROUNDS:-3}
for ((r = 1; r <= ROUNDS; r++)); do
    q -c "SELECT pg_create_logical_replication_slot('bench_env_$r', 'pgoutput')" >/dev/null
    q -c "SELECT pg_create_logical_replication_slot('bench_typed_$r', 'pgoutput')" >/dev/null
done
mkdir -p "$WORK/schemas"
cat >"$WORK/schemas/OrderCreated.avsc" <<'EOF'
{"type": "record", "name": "OrderCreated", "namespace": "bench", "fields": [
  {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}},
  {"name": "currency", "type": {"type": "enum", "name": "Currency", "symbols": ["EUR", "USD", "KRW"]}},
  {"name": "items", "type": {"type": "array", "items": "long"}},
  {"name": "at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
  {"name": "note", "type": ["null", "string"], "default": null}
]}
EOF

say "writing $N single-row transactions"
printf '%s\n' '\set k random(1, 1000)' \
    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'order-' || :k, 'OrderCreated', '{\"amount\": \"12.50\", \"currency\": \"EUR\", \"items\": [1, 2, 3], \"at\": \"2026-12-01T10:00:00.123456Z\"}');" \
    >"$WORK/insert.sql"
pgbench -n -c 4 -j 2 -t $((N / 4)) -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench.log" 2>&1
END=$(q -c "SELECT pg_current_wal_lsn()")
say "backlog written, WAL end $END"

# drain SLOT EXTRA_TOP EXTRA_RELAY: prints the drain time in ms.
drain() {
    local slot=$1 conf=$WORK/$1.yaml t0 relay ts
    bench_config "$conf" "$slot"
    sed -i "s/transactional_id_prefix: bench/transactional_id_prefix: bench-$slot/" "$conf"
    sed -i "s/topic: \"bench.\${aggregatetype}\"/topic: \"bench.$slot\"/" "$conf"
    [ -n "$2" ] && sed -i "s|^relay:|$2\nrelay:|" "$conf"
    [ -n "$3" ] && sed -i "s|^relay:|relay:\n$3|" "$conf"
    t0=$(now_ms)
    "$OUTBOXD_BIN" run -c "$conf" 2>"$WORK/$slot.log" &
    relay=$!
    BG+=("$relay")
    until slot_done "$slot" "$END"; do sleep 0.05; done
    local t1
    t1=$(now_ms)
    kill -TERM "$relay"
    wait "$relay" || true
    grep -q "dead-letter topic" "$WORK/$slot.log" && { say "dead letters in $slot"; exit 1; }
    ts=$(grep -m1 "streaming slot" "$WORK/$slot.log" | cut -d' ' -f1)
    echo $((t1 - $(date -d "$ts" +%s%3N)))
}
# Alternating rounds: the first drain of a backlog also pays for reading the
# WAL from disk, so each kind goes first once and the spread is printed.
for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then
        env_ms=$(drain "bench_env_$r" "" "")
        typed_ms=$(drain "bench_typed_$r" "schema_registry:\n  url: \"$REGISTRY_URL\"" "  schemas_dir: \"$WORK/schemas\"")
    else
        typed_ms=$(drain "bench_typed_$r" "schema_registry:\n  url: \"$REGISTRY_URL\"" "  schemas_dir: \"$WORK/schemas\"")
        env_ms=$(drain "bench_env_$r" "" "")
    fi
    echo "$env_ms $typed_ms"
done >"$WORK/rounds"
awk -v n="$N" '{
    ra = n / ($1 / 1000); rb = n / ($2 / 1000);
    printf "registry_throughput: round %d: envelope %.0f events/s, typed+registry %.0f events/s, ratio %.2f\n", NR, ra, rb, rb / ra;
    if (NR == 1 || ra > ba) ba = ra; if (NR == 1 || rb > bb) bb = rb;
    if (NR == 1 || ra < wa) wa = ra; if (NR == 1 || rb < wb) wb = rb;
} END {
    printf "registry_throughput: transactions=%d per drain, %d rounds\n", n, NR;
    printf "registry_throughput: envelope (JSON payload, single-object): best %.0f, worst %.0f events/s draining\n", ba, wa;
    printf "registry_throughput: typed payload + schema registry (wire format): best %.0f, worst %.0f events/s draining\n", bb, wb;
    printf "registry_throughput: ratio of the best rates typed+registry / envelope = %.2f\n", bb / ba;
}' "$WORK/rounds"

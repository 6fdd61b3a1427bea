#!/usr/bin/env bash
# Throughput with typed payloads and the schema registry, next to the
# envelope-only rate, measured in the same run on the same backlog of N
# single-row outbox transactions (default 100,000), each relay on its own
# slot, one after the other:
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
q -c "SELECT pg_create_logical_replication_slot('bench_env', 'pgoutput')" >/dev/null
q -c "SELECT pg_create_logical_replication_slot('bench_typed', 'pgoutput')" >/dev/null
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
env_ms=$(drain bench_env "" "")
typed_ms=$(drain bench_typed "schema_registry:\n  url: \"$REGISTRY_URL\"" "  schemas_dir: \"$WORK/schemas\"")
awk -v n="$N" -v a="$env_ms" -v b="$typed_ms" 'BEGIN {
    ra = n / (a / 1000); rb = n / (b / 1000);
    printf "registry_throughput: transactions=%d\n", n;
    printf "registry_throughput: envelope (JSON payload, single-object): %.0f events/s draining (%.2f s)\n", ra, a / 1000;
    printf "registry_throughput: typed payload + schema registry (wire format): %.0f events/s draining (%.2f s)\n", rb, b / 1000;
    printf "registry_throughput: ratio typed+registry / envelope = %.2f\n", rb / ra;
}'

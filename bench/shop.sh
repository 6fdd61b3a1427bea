#!/usr/bin/env bash
# bench/shop.sh - payments per second through the shop's gateway at a steady
# offered rate, with p50/p99 from the request to the saga's final state
# (payments.finished_at - created_at), unthrottled and with every consumer
# throttled. Prints numbers; not a test.
#
#   bench/shop.sh [PAYMENTS] [OFFERED_RATE_PER_S] [THROTTLE_PER_S]
#   defaults: 200 payments at 20/s, throttle 10 events/s per consumer
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
N=${1:-200} RATE=${2:-20} THROTTLE=${3:-10}
SHOP_ROOT=$ROOT SHOP_BIN=$BUILD/src/shop/outboxd-shop
[ -x "$SHOP_BIN" ] || {
    say "build outboxd-shop first"
    exit 2
}
SHOP_WORK=$WORK/shop
source "$ROOT/deploy/shop/shop.sh"
trap 'shop_stop_all; bench_cleanup' EXIT

run() { # run LABEL CONSUMER_RATE
    local label=$1 crate=$2
    SHOP_PREFIX="bench$crate" SHOP_RATE=$crate SHOP_SAGA_TIMEOUT_MS=600000
    SHOP_GATEWAY_RATE=100000 SHOP_GATEWAY_BURST=100000
    shop_init
    shop_start_all >&2
    local tok=$SHOP_ADMIN_TOKEN m id ut kb
    kb=$(shop_api POST /api/admin/products "$tok" '{"name": "kb", "price": 10, "stock": 1000000}' | jq .id)
    m=$(shop_api POST /api/members "" '{"name": "bench"}')
    id=$(jq .id <<<"$m") ut=$(jq -r .token <<<"$m")
    shop_api POST "/api/members/$id/charge" "$ut" '{"amount": 100000000}' >/dev/null
    local orders=() i
    for i in $(seq 1 "$N"); do
        orders+=("$(shop_api POST /api/orders "$ut" "{\"productId\": $kb, \"quantity\": 1, \"amount\": 10}" | jq .id)")
    done
    say "$label: $N payments offered at $RATE/s"
    local gap start=$SECONDS
    gap=$(awk -v r="$RATE" 'BEGIN { printf "%.4f", 1 / r }')
    for o in "${orders[@]}"; do
        curl -s -o /dev/null -X POST -H "Authorization: Bearer $ut" -H 'Content-Type: application/json' \
            --data "{\"orderId\": $o, \"productId\": $kb, \"quantity\": 1, \"amount\": 10}" \
            "$SHOP_GATEWAY/api/payments" &
        sleep "$gap"
    done
    wait_done() { [ "$(shop_db payment "SELECT count(*) FROM payments WHERE status IN ('COMPLETED', 'FAILED')")" = "$N" ]; }
    shop_wait_for "all sagas final" 900 wait_done
    shop_db payment "SELECT format('%-22s completed %s of %s, %s payments/s, p50 %s ms, p99 %s ms', '$label',
        count(*) FILTER (WHERE status = 'COMPLETED'), count(*),
        round(count(*) / extract(epoch FROM max(finished_at) - min(created_at))::numeric, 1),
        round(1000 * extract(epoch FROM percentile_cont(0.5) WITHIN GROUP (ORDER BY finished_at - created_at))::numeric),
        round(1000 * extract(epoch FROM percentile_cont(0.99) WITHIN GROUP (ORDER BY finished_at - created_at))::numeric))
        FROM payments"
    curl -s "http://127.0.0.1:${SHOP_PORT[member]}/stats" | jq -r '.consumers[] | "  member/\(.consumer): throttled \(.throttledMs) ms"'
    shop_stop_all
    rm -rf "$SHOP_WORK"
}
run unthrottled 0
run "throttled@${THROTTLE}/s" "$THROTTLE"

#!/usr/bin/env bash
# The main job: the seed's shop running on outboxd (README "The shop (payment
# SAGA)"). On a fresh machine it installs what is needed, builds, starts a
# local PostgreSQL and Kafka (tests/stack/stack.sh), a schema registry
# (tests/stack/registry.sh), Redis, the eight shop services (each its own
# process and database), outboxd relaying every service's outbox in the
# registry's wire format, and nginx as the API gateway, all on free ports. Then,
# through the gateway: seeds products, a coupon and two members; runs a
# payment that succeeds and one that fails on stock (and is compensated);
# prints each saga's trace and the final balances, stock, coupon and order
# states. Everything is stopped at the end (also on Ctrl-C or an error).
#
#   scripts/demo.sh [--keep]     --keep: leave it all running, print how to stop
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
step() { printf '\n'; bold "== $*"; }

step "installing dependencies"
scripts/install-deps.sh
step "building"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build outboxd outboxd-shop

export STACK_DIR=/tmp/outboxd-demo
SHOP_ROOT=$ROOT
SHOP_BIN=$ROOT/build/src/shop/outboxd-shop
OUTBOXD_BIN=$ROOT/build/outboxd
SHOP_WORK=$STACK_DIR/shop
SHOP_PREFIX=demo
# shellcheck source=deploy/shop/shop.sh
source deploy/shop/shop.sh

finish() {
    local rc=$?
    if [ "$KEEP" = 1 ] && [ $rc = 0 ]; then
        echo
        echo "kept running (gateway $SHOP_GATEWAY, admin token $SHOP_ADMIN_TOKEN);"
        echo "stop with: kill \$(awk '{print \$2}' $SHOP_WORK/pids); REGISTRY_DIR=$SHOP_REGISTRY_DIR tests/stack/registry.sh stop; STACK_DIR=$STACK_DIR tests/stack/stack.sh stop --clean"
        return
    fi
    if [ $rc != 0 ] && [ -d "$SHOP_WORK" ]; then
        echo "demo failed; last lines of each log in $SHOP_WORK:" >&2
        for f in "$SHOP_WORK"/*.log; do
            [ -s "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }
        done
    fi
    step "stopping everything"
    shop_stop_all
    tests/stack/stack.sh stop --clean >/dev/null 2>&1 || true
    echo "stopped: services, outboxd, nginx, Redis, the schema registry, Kafka, PostgreSQL"
}
trap finish EXIT
trap 'exit 130' INT TERM
[ "$KEEP" = 1 ] || export STACK_OWNER_PID=$$ STACK_OWNER_CLEAN=1

step "starting PostgreSQL and Kafka"
tests/stack/stack.sh start
# shellcheck disable=SC1091
source "$STACK_DIR/env"
export PGHOST PGPORT PGUSER KAFKA_BOOTSTRAP PATH="$PG_BIN:$PATH"

step "starting the schema registry, Redis, the services, outboxd and the nginx gateway"
rm -rf "$SHOP_WORK"
SHOP_SAGA_TIMEOUT_MS=${SHOP_SAGA_TIMEOUT_MS:-30000}
shop_init
shop_start_all
for s in "${SHOP_SERVICES[@]}"; do
    printf '  %-13s pid %-7s http 127.0.0.1:%s  database %s\n' "$s" "${SHOP_PID[$s]}" \
        "${SHOP_PORT[$s]}" "${SHOP_DB_PREFIX}$s"
done
printf '  %-13s pid %-7s (deploy/shop/outboxd.yaml: 8 sources, values in the registry wire format)\n' outboxd "${SHOP_PID[outboxd]}"
printf '  %-13s pid %-7s %s (Apicurio, Confluent API; the services decode through it)\n' registry \
    "$(cat "$SHOP_REGISTRY_DIR/registry.pid")" "$SHOP_REGISTRY_URL"
printf '  %-13s pid %-7s gateway %s\n' nginx "${SHOP_PID[nginx]}" "$SHOP_GATEWAY"
printf '  %-13s pid %-7s port %s\n' redis "${SHOP_PID[redis]}" "$SHOP_REDIS_PORT"

api() { # api METHOD PATH TOKEN [JSON]: a call through the gateway; fails on a non-2xx
    local out
    shop_api "$@" >"$SHOP_WORK/api.out"
    out=$(cat "$SHOP_WORK/api.out")
    printf '  %s %s -> %s\n' "$1" "$2" "$SHOP_CODE" >&2
    case $SHOP_CODE in 2*) ;; *)
        echo "  unexpected answer: $out" >&2
        return 1
        ;;
    esac
    echo "$out"
}

step "seeding through the gateway (admin routes need the admin token)"
A=$SHOP_ADMIN_TOKEN
KEYBOARD=$(api POST /api/admin/products "$A" '{"name": "mechanical keyboard", "price": 39800, "stock": 10}' | jq .id)
MONITOR=$(api POST /api/admin/products "$A" '{"name": "4K monitor", "price": 250000, "stock": 1}' | jq .id)
COUPON=$(api POST /api/admin/coupons "$A" '{"name": "WELCOME5000", "discount": 5000, "total": 3}' | jq .id)
KIM=$(api POST /api/members '' '{"name": "kim"}')
KIM_ID=$(jq .id <<<"$KIM") KIM_TOKEN=$(jq -r .token <<<"$KIM")
LEE=$(api POST /api/members '' '{"name": "lee"}')
LEE_ID=$(jq .id <<<"$LEE") LEE_TOKEN=$(jq -r .token <<<"$LEE")
api POST "/api/members/$KIM_ID/charge" "$KIM_TOKEN" '{"amount": 100000}' >/dev/null
api POST "/api/members/$LEE_ID/charge" "$LEE_TOKEN" '{"amount": 600000}' >/dev/null
api POST "/api/coupons/$COUPON/issue" "$KIM_TOKEN" >/dev/null

step "the gateway refuses what it should"
shop_api POST "/api/payments" "" '{}' >/dev/null
echo "  no token                  -> $SHOP_CODE"
shop_api GET "/api/orders" "not-a-token" >/dev/null
echo "  wrong token               -> $SHOP_CODE"
shop_api POST /api/admin/products "$KIM_TOKEN" '{"name": "x", "price": 1, "stock": 1}' >/dev/null
echo "  a user on an admin route  -> $SHOP_CODE"

# pay TOKEN MEMBER PRODUCT QTY PRICE COUPON DISCOUNT: order, then pay and wait.
pay() {
    local token=$1 member=$2 product=$3 qty=$4 price=$5 coupon=$6 discount=$7
    local amount=$((price * qty - discount)) order body
    body="\"productId\": $product, \"quantity\": $qty, \"couponId\": $coupon, \"amount\": $amount, \"discount\": $discount"
    order=$(api POST /api/orders "$token" "{$body}" | jq .id)
    api POST "/api/payments?wait=20s" "$token" "{\"orderId\": $order, \"memberId\": $member, $body}"
}

print_saga() { # print_saga PAYMENT_JSON TOKEN
    local id
    id=$(jq -r .paymentId <<<"$1")
    jq -r '"  payment \(.paymentId): \(.status) in \(.elapsedMs) ms" + (if .reason then " (\(.reason))" else "" end)' <<<"$1"
    jq -r '.participants[] | "    \(.service | .+"        " | .[:8]) \(.result)\(if .compensation then ", compensation \(.compensation)" else "" end)"' <<<"$1"
    echo "  trace (GET /api/payments/$id/trace):"
    api GET "/api/payments/$id/trace" "$2" 2>/dev/null |
        jq -r '.trace[] | "    \(.at[11:23])  \(.service | .+"         " | .[:9]) \(.step)\(if .detail then ": \(.detail)" else "" end)"'
}

step "payment 1: kim buys 2 keyboards with the coupon (79600 - 5000 = 74600)"
P1=$(pay "$KIM_TOKEN" "$KIM_ID" "$KEYBOARD" 2 39800 "$COUPON" 5000)
print_saga "$P1" "$KIM_TOKEN"

step "payment 2: lee buys 2 monitors, only 1 in stock: product fails, the others are compensated"
P2=$(pay "$LEE_TOKEN" "$LEE_ID" "$MONITOR" 2 250000 null 0)
print_saga "$P2" "$LEE_TOKEN"

step "final state (each read from its own service's database)"
echo "  balances:"
shop_db member "SELECT '    ' || name || ': ' || balance FROM members WHERE role = 'user' ORDER BY id"
echo "  stock:"
shop_db product "SELECT '    ' || name || ': ' || stock FROM products ORDER BY id"
echo "  coupon WELCOME5000:"
shop_db coupon "SELECT '    issued ' || issued || ' of ' || total FROM coupons WHERE id = $COUPON"
shop_db coupon "SELECT '    member ' || member_id || ': ' || status FROM member_coupons WHERE coupon_id = $COUPON ORDER BY member_id"
echo "  orders:"
shop_db order "SELECT '    order ' || id || ' (member ' || member_id || '): ' || status || coalesce(' (last failure: ' || last_failure || ')', '') FROM orders ORDER BY id"

# notification and the data platform consume the outcomes asynchronously
shop_wait_eq "notifications" 60 2 shop_db notification 'SELECT count(*) FROM notifications'
shop_wait_eq "the data platform" 60 1 shop_db platform 'SELECT count(*) FROM received_orders'
echo "  notifications sent:"
shop_db notification "SELECT '    to member ' || member_id || ': ' || message FROM notifications ORDER BY id"
echo "  external data platform received:"
shop_db platform "SELECT '    order ' || order_id || ', amount ' || (payload->>'amount') FROM received_orders"
shop_wait_for "popular products" 60 sh -c "curl -s '$SHOP_GATEWAY/api/popular?days=3' | jq -e '.top | length > 0'"
echo "  popular products, last 3 days (Redis):"
shop_api GET "/api/popular?days=3&limit=5" | jq -r '.top[] | "    product \(.productId): \(.quantity) sold"'
step "the schema registry: what the events went through"
echo "  subjects (GET $SHOP_REGISTRY_URL/subjects): the envelope under <topic>-value, registered at launch, looked up by outboxd:"
shop_registry_subjects | jq -r --arg p "$SHOP_TOPIC_PREFIX" \
    '.[] | select(startswith($p) and (endswith(".dlt-value") | not)) | "    " + .' | sort
echo "  one payment-result record as the services read it (outboxd-shop cat):"
"$SHOP_BIN" cat --kafka "$KAFKA_BOOTSTRAP" --topic "${SHOP_TOPIC_PREFIX}payment-result" \
    --registry "$SHOP_REGISTRY_URL" >"$SHOP_WORK/payment-result.jsonl"
jq -c '{schemaId, type: .value.type, payload: .value.payload}' "$SHOP_WORK/payment-result.jsonl" |
    sed -n '1s/^/    /p'
for s in "${SHOP_SERVICES[@]}"; do
    curl -s "http://127.0.0.1:${SHOP_PORT[$s]}/stats" | jq -r '[.consumers[].handled] | add // 0'
done | awk '{ s += $1 } END { printf "  the services decoded and applied %d events (writer schema fetched once per id, then cached)\n", s }'
echo "  outboxd relayed $(for s in "${SHOP_SERVICES[@]}"; do shop_db "$s" 'SELECT count(*) FROM outbox'; done | awk "{ s += \$1 } END { print s }") outbox rows"

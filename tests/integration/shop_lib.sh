# Helpers of the shop's end-to-end tests (test_shop_*.sh): the real
# PostgreSQL and Kafka of the shared stack, plus a schema registry, Redis,
# the eight services, outboxd and nginx started by deploy/shop/shop.sh under
# a per-test prefix.
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SHOP_ROOT=${OUTBOXD_SOURCE_DIR:?}
SHOP_BIN=${OUTBOXD_SHOP_BIN:-$(dirname "$OUTBOXD_BIN")/src/shop/outboxd-shop}
[ -x "$SHOP_BIN" ] || fail "no outboxd-shop binary at $SHOP_BIN (build the outboxd-shop target)"
for tool in redis-server nginx curl jq; do
    command -v "$tool" >/dev/null || fail "$tool not installed (scripts/install-deps.sh)"
done
SHOP_WORK=$WORK/shop
SHOP_PREFIX=$RUN_ID
# the registry's watchdog stops it should this test die without cleaning up
SHOP_OWNER_PID=$$
# shellcheck source=../../deploy/shop/shop.sh
source "$SHOP_ROOT/deploy/shop/shop.sh"
T0=$SECONDS

extra_cleanup() {
    # rc is lib.sh cleanup()'s local: bash scopes it dynamically
    if [ "${rc:-0}" -ne 0 ] || [ "${SHOP_FAILED:-0}" = 1 ]; then
        for f in "$SHOP_WORK"/*.log; do
            [ -s "$f" ] && { echo "--- $f" >&2; tail -n 25 "$f" >&2; }
        done
    fi
    # a test that closed a service's database (ALLOW_CONNECTIONS false) and
    # failed before opening it: open it so that its slot and it can be dropped
    [ -n "${SHOP_REOPEN_DB:-}" ] &&
        psql -X -q -d postgres -c "ALTER DATABASE \"$SHOP_REOPEN_DB\" ALLOW_CONNECTIONS true" >/dev/null 2>&1
    shop_stop_all
    # Under ASan/UBSan (OUTBOXD_SANITIZE) a report in any service's log fails
    # the test (rc is lib.sh cleanup()'s exit status).
    local bad
    bad=$(grep -l -E 'ERROR: (Address|Leak|UndefinedBehavior)Sanitizer|runtime error:' "$SHOP_WORK"/*.log 2>/dev/null || true)
    if [ -n "$bad" ]; then
        for f in $bad; do
            echo "--- sanitizer report in $f" >&2
            grep -A 30 -E 'Sanitizer|runtime error:' "$f" | head -60 >&2
        done
        rc=1
    fi
}
fail() {
    SHOP_FAILED=1
    log "FAIL: $*"
    exit 1
}

# api METHOD PATH TOKEN [JSON] EXPECTED_CODE: through the gateway; fails the
# test on another status. Prints the body.
api() {
    local want=${5:-200}
    shop_api "$1" "$2" "$3" "${4:-}" >"$SHOP_WORK/api.out"
    [ "$SHOP_CODE" = "$want" ] || fail "$1 $2: HTTP $SHOP_CODE, expected $want: $(cat "$SHOP_WORK/api.out")"
    cat "$SHOP_WORK/api.out"
}

# new_member NAME BALANCE: prints "ID TOKEN".
new_member() {
    local m id tok
    m=$(api POST /api/members "" "{\"name\": \"$1\"}" 201)
    id=$(jq .id <<<"$m")
    tok=$(jq -r .token <<<"$m")
    [ "$2" -gt 0 ] && api POST "/api/members/$id/charge" "$tok" "{\"amount\": $2}" >/dev/null
    echo "$id $tok"
}

new_product() { # new_product NAME PRICE STOCK: prints the id
    api POST /api/admin/products "$SHOP_ADMIN_TOKEN" "{\"name\": \"$1\", \"price\": $2, \"stock\": $3}" 201 | jq .id
}

new_coupon() { # new_coupon NAME DISCOUNT TOTAL: prints the id
    api POST /api/admin/coupons "$SHOP_ADMIN_TOKEN" "{\"name\": \"$1\", \"discount\": $2, \"total\": $3}" 201 | jq .id
}

# order TOKEN PRODUCT QTY AMOUNT COUPON DISCOUNT: prints the order id.
order() {
    api POST /api/orders "$1" "{\"productId\": $2, \"quantity\": $3, \"amount\": $4, \"couponId\": $5, \"discount\": $6}" 201 | jq .id
}

# pay TOKEN ORDER PRODUCT QTY AMOUNT COUPON DISCOUNT [WAIT]: prints the payment JSON.
pay() {
    local wait=${8:-60s}
    local body="{\"orderId\": $2, \"productId\": $3, \"quantity\": $4, \"amount\": $5, \"couponId\": $6, \"discount\": $7}"
    shop_api POST "/api/payments?wait=$wait" "$1" "$body" >"$SHOP_WORK/api.out"
    case $SHOP_CODE in 200 | 202) ;; *) fail "POST /api/payments: HTTP $SHOP_CODE: $(cat "$SHOP_WORK/api.out")" ;; esac
    cat "$SHOP_WORK/api.out"
}

payment_status() { # payment_status ID
    shop_db payment "SELECT status FROM payments WHERE id = '$1'"
}

# wait_payment ID STATUS [TIMEOUT_S]
wait_payment() {
    shop_wait_eq "payment $1 $2" "${3:-120}" "$2" payment_status "$1" ||
        fail "payment $1 is $(payment_status "$1"), expected $2"
}

# snapshot: balances, stock, coupon holdings and order states, one line each.
snapshot() {
    shop_db member "SELECT 'member ' || id || ' ' || balance FROM members ORDER BY id"
    shop_db product "SELECT 'product ' || id || ' ' || stock FROM products ORDER BY id"
    shop_db coupon "SELECT 'coupon ' || id || ' issued ' || issued FROM coupons ORDER BY id"
    shop_db coupon "SELECT 'coupon ' || coupon_id || ' member ' || member_id || ' ' || status FROM member_coupons ORDER BY 1"
    shop_db order "SELECT 'order ' || id || ' ' || status FROM orders ORDER BY id"
}

# topic_dump TOPIC: every committed record of <prefix>.TOPIC, one JSON line
# each, decoded as the services decode it (outboxd-shop cat: through the
# schema registry; "schemaId" present for the registry's wire format).
topic_dump() {
    "$SHOP_BIN" cat --kafka "$KAFKA_BOOTSTRAP" --topic "$SHOP_TOPIC_PREFIX$1" \
        ${SHOP_REGISTRY_URL:+--registry "$SHOP_REGISTRY_URL"} 2>/dev/null | grep '^{' || true
}

# topic_count TOPIC [PAYMENT_ID]: records on <prefix>.TOPIC (for one payment).
topic_count() {
    topic_dump "$1" | { if [ -n "${2:-}" ]; then grep -c "$2" || true; else grep -c . || true; fi; }
}

# wait_outbox_drained: every service's slot has confirmed all WAL written so
# far, i.e. outboxd has committed every outbox row to Kafka.
wait_outbox_drained() {
    for s in "${SHOP_SERVICES[@]}"; do
        wait_drained "${SHOP_DB_PREFIX}$s" "${SHOP_SLOT_PREFIX}_$s" "${1:-120}"
    done
}

# settle: the system is quiet: relay drained and no payment in flight.
settle() {
    shop_wait_eq "no saga in flight" 120 0 shop_db payment "SELECT count(*) FROM payments WHERE status IN ('PENDING', 'COMPENSATING')" ||
        fail "sagas still in flight: $(shop_db payment "SELECT id, status FROM payments WHERE status IN ('PENDING', 'COMPENSATING')")"
    wait_outbox_drained
}

shop_up() {
    shop_init
    shop_start_all || fail "could not start the shop (logs above)"
    log "shop up in $((SECONDS - T0)) s (prefix $SHOP_PREFIX, gateway $SHOP_GATEWAY)"
}

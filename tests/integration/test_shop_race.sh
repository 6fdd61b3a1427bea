#!/usr/bin/env bash
# ctest: serial -- eight services; asserts the platform's rate limit held it back
# Concurrency through the gateway (real PostgreSQL, Kafka, outboxd, Redis,
# nginx): 200 members race to be issued a coupon limited to 30, then 230
# payments (every member once, each coupon holder a second time with the
# same coupon) race for a product with 50 in stock. Afterwards: stock never
# below zero and equal to 50 minus what completed; the coupon issued exactly
# 30 times and never used twice; balances sum to the start minus what
# completed; every payment COMPLETED or FAILED; orders agree.
# shellcheck disable=SC1091
source "$(dirname "$0")/shop_lib.sh"

N=200 STOCK=50 COUPONS=30 PRICE=1000 DISCOUNT=100 BALANCE=1000 PAR=${SHOP_RACE_PARALLEL:-16}
SHOP_SAGA_TIMEOUT_MS=120000
shop_up

KB=$(new_product keyboard $PRICE $STOCK)
CPN=$(new_coupon limited $DISCOUNT $COUPONS)
# The members are seeded in member's database (their sign-up is tested
# elsewhere); tokens are tok-<run>-<n>.
shop_db member "INSERT INTO members (name, token, balance)
    SELECT 'm' || i, 'tok-$RUN_ID-' || i, $BALANCE FROM generate_series(1, $N) i" >/dev/null
mapfile -t MEMBERS < <(shop_db member "SELECT id || ' ' || token FROM members WHERE role = 'user' ORDER BY id")
[ ${#MEMBERS[@]} = $N ] || fail "seeded ${#MEMBERS[@]} members"

export SHOP_GATEWAY KB CPN PRICE DISCOUNT
# ------------------------------------------------------- coupon issuance race
log "$N members race for $COUPONS coupons ($PAR in parallel)"
printf '%s\n' "${MEMBERS[@]}" | xargs -P "$PAR" -L 1 bash -c '
    code=$(curl -s -o /dev/null -w "%{http_code}" -X POST -H "Authorization: Bearer $1" \
        "$SHOP_GATEWAY/api/coupons/$CPN/issue")
    echo "$0 $code"' >"$WORK/issue.txt"
issued=$(grep -c ' 201$' "$WORK/issue.txt" || true)
refused=$(grep -c ' 409$' "$WORK/issue.txt" || true)
[ "$issued" = $COUPONS ] || fail "coupon issued $issued times, expected $COUPONS ($(cut -d' ' -f2 "$WORK/issue.txt" | sort | uniq -c | tr '\n' ' '))"
[ "$refused" = $((N - COUPONS)) ] || fail "$refused refusals, expected $((N - COUPONS))"
[ "$(shop_db coupon "SELECT issued || '/' || count(mc.*) FROM coupons c LEFT JOIN member_coupons mc ON mc.coupon_id = c.id WHERE c.id = $CPN GROUP BY issued")" = "$COUPONS/$COUPONS" ] ||
    fail "coupon bookkeeping: $(shop_db coupon "SELECT * FROM coupons")"

# --------------------------------------------------------------- orders
# every member one order; each holder pays with the coupon, and a second
# order of each holder tries the same coupon again
: >"$WORK/orders.in"
for m in "${MEMBERS[@]}"; do
    read -r id tok <<<"$m"
    if grep -q "^$id 201$" "$WORK/issue.txt"; then
        echo "$tok $CPN" >>"$WORK/orders.in"
        echo "$tok $CPN" >>"$WORK/orders.in"
    else
        echo "$tok null" >>"$WORK/orders.in"
    fi
done
TOTAL=$(grep -c . "$WORK/orders.in")
log "creating $TOTAL orders"
xargs -P "$PAR" -L 1 bash -c '
    tok=$0 coupon=$1 discount=0
    [ "$coupon" != null ] && discount=$DISCOUNT
    body="{\"productId\": $KB, \"quantity\": 1, \"couponId\": $coupon, \"amount\": $((PRICE - discount)), \"discount\": $discount}"
    o=$(curl -s -X POST -H "Authorization: Bearer $tok" -H "Content-Type: application/json" --data "$body" "$SHOP_GATEWAY/api/orders")
    echo "$tok $(jq -c ". + {discount: $discount}" <<<"$o")"' <"$WORK/orders.in" >"$WORK/orders.txt"
[ "$(grep -c '"status":"CREATED"' "$WORK/orders.txt")" = "$TOTAL" ] || fail "not every order was created: $(grep -v CREATED "$WORK/orders.txt" | head -3)"

# ---------------------------------------------------------------- payments
# The data platform is down during the race; it comes back throttled (20
# events/s, 5 fetched ahead) to a backlog, and the back-pressure shows in its
# /stats.
shop_stop_service platform
log "$TOTAL payments race for $STOCK in stock"
t0=$SECONDS
xargs -P "$PAR" -L 1 -d '\n' bash -c '
    tok=${0%% *} o=${0#* }
    body=$(jq -c "{orderId: .id, productId, quantity, couponId, amount, discount}" <<<"$o")
    curl -s -X POST -H "Authorization: Bearer $tok" -H "Content-Type: application/json" \
        --data "$body" "$SHOP_GATEWAY/api/payments" | jq -r ".paymentId // \"ERROR \(.)\""' \
    <"$WORK/orders.txt" >"$WORK/payments.txt"
grep -q ERROR "$WORK/payments.txt" && fail "payment refused: $(grep ERROR "$WORK/payments.txt" | head -3)"
[ "$(grep -c . "$WORK/payments.txt")" = "$TOTAL" ] || fail "only $(grep -c . "$WORK/payments.txt") payments accepted"
shop_wait_eq "every payment final" 300 0 shop_db payment "SELECT count(*) FROM payments WHERE status NOT IN ('COMPLETED', 'FAILED')" ||
    fail "payments not final: $(shop_db payment "SELECT status, count(*) FROM payments GROUP BY 1")"
log "all $TOTAL sagas ended in $((SECONDS - t0)) s: $(shop_db payment "SELECT string_agg(status || ' ' || n, ', ') FROM (SELECT status, count(*) n FROM payments GROUP BY 1) s")"
shop_start_service platform --rate 20 --max-in-flight 5
shop_wait_ready platform || fail "platform did not restart"
settle

# ---------------------------------------------------------------- invariants
completed=$(shop_db payment "SELECT count(*) FROM payments WHERE status = 'COMPLETED'")
paid=$(shop_db payment "SELECT coalesce(sum(amount), 0) FROM payments WHERE status = 'COMPLETED'")
with_coupon=$(shop_db payment "SELECT count(*) FROM payments WHERE status = 'COMPLETED' AND coupon_id IS NOT NULL")
stock=$(shop_db product "SELECT stock FROM products WHERE id = $KB")
[ "$stock" -ge 0 ] || fail "stock below zero: $stock"
[ "$stock" = $((STOCK - completed)) ] || fail "stock $stock, expected $STOCK - $completed completed"
[ "$completed" -gt 0 ] || fail "nothing completed"
used=$(shop_db coupon "SELECT count(*) FROM member_coupons WHERE coupon_id = $CPN AND status = 'USED'")
[ "$used" = "$with_coupon" ] || fail "coupons USED $used, completed payments with the coupon $with_coupon"
[ "$used" -le $COUPONS ] || fail "coupon over-used: $used > $COUPONS"
sum=$(shop_db member "SELECT sum(balance) FROM members WHERE role = 'user'")
[ "$sum" = $((N * BALANCE - paid)) ] || fail "balances sum to $sum, expected $((N * BALANCE)) - $paid"
neg=$(shop_db member "SELECT count(*) FROM members WHERE balance < 0")
[ "$neg" = 0 ] || fail "$neg negative balances"
[ "$(shop_db order "SELECT count(*) FROM orders WHERE status = 'COMPLETED'")" = "$completed" ] || fail "orders COMPLETED differ from payments"
[ "$(shop_db order "SELECT count(*) FROM orders WHERE status = 'PAYING'")" = 0 ] || fail "orders left PAYING"
# no holder paid twice with one coupon
twice=$(shop_db payment "SELECT count(*) FROM (SELECT member_id FROM payments WHERE status = 'COMPLETED' AND coupon_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1) s")
[ "$twice" = 0 ] || fail "$twice members used one coupon twice"
# every participant's bookkeeping agrees with the coordinator's outcome
for s in order member coupon product; do
    applied=$(shop_db "$s" "SELECT count(*) FROM payment_ops WHERE state = 'APPLIED'")
    [ "$applied" = "$completed" ] || fail "$s has $applied applied steps, expected $completed (the rest compensated or failed)"
done
shop_wait_eq "the throttled platform caught up" 120 "$completed" shop_db platform "SELECT count(*) FROM received_orders" ||
    fail "platform received $(shop_db platform "SELECT count(*) FROM received_orders") of $completed"
throttled=$(curl -s "http://127.0.0.1:${SHOP_PORT[platform]}/stats" | jq '.consumers[0].throttledMs')
[ "$throttled" -gt 0 ] || fail "the platform's rate limit never held it back (throttledMs $throttled)"
log "completed $completed (with coupon $with_coupon), stock left $stock, paid $paid; platform throttled ${throttled} ms"
log "PASS in $((SECONDS - T0)) s"

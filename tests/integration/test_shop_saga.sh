#!/usr/bin/env bash
# ctest: serial -- eight services; gateway rate limit (429)
# The shop's payment SAGA end to end (real PostgreSQL, Kafka, the schema
# registry, outboxd, Redis, nginx; every call through the gateway):
#  - success: balance, stock, coupon and order end right; one complete-order;
#    notification, the data platform and popular products reflect it;
#  - each participant failing in turn (no balance, no stock, coupon used,
#    order not payable): exactly the successful ones are compensated, every
#    database ends as before, payment FAILED, payment-failed emitted once;
#  - the gateway refuses a missing or wrong token and a user on an admin
#    route (creating a coupon, listing the members: 403 on any route), and
#    rate-limits per token and per address (a new token each time); a user
#    reads and cancels only their own orders and payments (another's: 404),
#    an admin reads every one; a discount without a coupon is refused.
# shellcheck disable=SC1091
source "$(dirname "$0")/shop_lib.sh"

# a low gateway rate, so that the rate limit can be seen below
SHOP_GATEWAY_RATE=20 SHOP_GATEWAY_BURST=40
shop_up

PRICE=1000
KB=$(new_product keyboard $PRICE 10)
CPN=$(new_coupon ten 100 5)
read -r KIM KIM_T <<<"$(new_member kim 10000)"
read -r LEE LEE_T <<<"$(new_member lee 10000)"
api POST "/api/coupons/$CPN/issue" "$KIM_T" "" 201 >/dev/null
api POST "/api/coupons/$CPN/issue" "$LEE_T" "" 201 >/dev/null

# ---------------------------------------------------------------- success
log "success: kim buys 2 with the coupon"
O=$(order "$KIM_T" "$KB" 2 1900 "$CPN" 100)
P=$(pay "$KIM_T" "$O" "$KB" 2 1900 "$CPN" 100)
PID=$(jq -r .paymentId <<<"$P")
[ "$(jq -r .status <<<"$P")" = COMPLETED ] || fail "payment not COMPLETED: $P"
[ "$(shop_db member "SELECT balance FROM members WHERE id = $KIM")" = 8100 ] || fail "kim's balance is not 8100"
[ "$(shop_db product "SELECT stock FROM products WHERE id = $KB")" = 8 ] || fail "stock is not 8"
[ "$(shop_db coupon "SELECT status FROM member_coupons WHERE coupon_id = $CPN AND member_id = $KIM")" = USED ] || fail "coupon not USED"
shop_wait_eq "order COMPLETED" 60 COMPLETED shop_db order "SELECT status FROM orders WHERE id = $O" || fail "order not COMPLETED"
shop_wait_eq "notification" 60 1 shop_db notification "SELECT count(*) FROM notifications WHERE payment_id = '$PID' AND kind = 'PAYMENT_COMPLETED'" || fail "no notification"
shop_wait_eq "data platform" 60 1 shop_db platform "SELECT count(*) FROM received_orders WHERE payment_id = '$PID'" || fail "the data platform did not receive the order"
shop_wait_for "popular products" 60 sh -c "curl -s '$SHOP_GATEWAY/api/popular?days=3' | jq -e '.top[0] == {\"productId\": $KB, \"quantity\": 2}'" ||
    fail "popular products: $(shop_api GET '/api/popular?days=3')"
TRACE=$(api GET "/api/payments/$PID/trace" "$KIM_T")
for svc in order member coupon product; do
    jq -e --arg s "$svc" '[.trace[] | select(.service == $s and .step == "result")] | length == 1' <<<"$TRACE" >/dev/null ||
        fail "trace lacks $svc's result: $TRACE"
done
jq -e '.trace[-1].step == "COMPLETED"' <<<"$TRACE" >/dev/null || fail "trace does not end COMPLETED"
settle
[ "$(topic_count complete-order "$PID")" = 1 ] || fail "complete-order not exactly once"
[ "$(topic_count payment-pending "$PID")" = 1 ] || fail "payment-pending not exactly once"
# the saga's trace id (the payment id) travels in the trace_id header, from
# the coordinator's outbox through each participant's answer
topic_dump payment-result | grep "$PID" | jq -s -e --arg p "$PID" 'length == 4 and (map(.headers.trace_id == $p) | all)' >/dev/null ||
    fail "payment-result records lack the trace_id header: $(topic_dump payment-result | grep "$PID" | head -n 1)"
# the events went through the schema registry: each in its wire format (a
# schema id, decoded with the schema fetched by id), the envelope registered
# under <topic>-value
topic_dump payment-result | grep "$PID" | jq -s -e 'length == 4 and (map(.schemaId | type == "number") | all)' >/dev/null ||
    fail "payment-result records are not in the registry's wire format: $(topic_dump payment-result | grep "$PID" | head -n 1 | cut -c 1-400)"
SUBJECTS=$(shop_registry_subjects) || fail "the registry does not answer GET /subjects"
for t in payment-pending payment-result complete-order; do
    jq -e --arg s "$SHOP_TOPIC_PREFIX$t-value" 'index($s) != null' <<<"$SUBJECTS" >/dev/null ||
        fail "subject $SHOP_TOPIC_PREFIX$t-value not registered: $SUBJECTS"
done
! grep 'schema registry rejected' "$SHOP_WORK/outboxd.log" || fail "outboxd had a schema refused by the registry (above)"
log "registry: $(jq length <<<"$SUBJECTS") subjects registered, payment-result records carry schema id $(topic_dump payment-result | grep "$PID" | head -n 1 | jq .schemaId)"

# ------------------------------------------------- each participant failing
# fail_case NAME FAILING_SERVICE TOKEN ORDER QTY AMOUNT COUPON DISCOUNT
fail_case() {
    local name=$1 failing=$2 tok=$3 o=$4 qty=$5 amount=$6 coupon=$7 discount=$8
    log "failure: $name"
    settle
    local before after p pid
    before=$(snapshot)
    p=$(pay "$tok" "$o" "$KB" "$qty" "$amount" "$coupon" "$discount")
    pid=$(jq -r .paymentId <<<"$p")
    [ "$(jq -r .status <<<"$p")" = FAILED ] || fail "$name: payment not FAILED: $p"
    jq -e --arg f "$failing" '[.participants[] | select(.result == "FAIL") | .service] == [$f]' <<<"$p" >/dev/null ||
        fail "$name: expected only $failing to fail: $p"
    jq -e '[.participants[] | select(.result == "SUCCESS") | .compensation] | all(. == "DONE")' <<<"$p" >/dev/null ||
        fail "$name: a successful participant was not compensated: $p"
    jq -e '[.participants[] | select(.result != "SUCCESS") | .compensation] | all(. == null)' <<<"$p" >/dev/null ||
        fail "$name: a failed participant was sent a compensation: $p"
    settle
    # the order's state is restored by cancel-order; only last_failure notes it
    after=$(snapshot)
    [ "$before" = "$after" ] || fail "$name: state changed: $(diff <(echo "$before") <(echo "$after"))"
    FAILED_PIDS+=("$name=$pid")
    shop_wait_eq "failure notification" 60 1 shop_db notification "SELECT count(*) FROM notifications WHERE payment_id = '$pid'" ||
        fail "$name: no failure notification"
}

FAILED_PIDS=()
O2=$(order "$LEE_T" "$KB" 3 2900 "$CPN" 100)
# member: 2900 > balance after lee's balance is drained to 1000
shop_db member "UPDATE members SET balance = 1000 WHERE id = $LEE" >/dev/null
fail_case "no balance" member "$LEE_T" "$O2" 3 2900 "$CPN" 100
shop_db member "UPDATE members SET balance = 100000 WHERE id = $LEE" >/dev/null

O3=$(order "$LEE_T" "$KB" 9 8900 "$CPN" 100)
fail_case "no stock" product "$LEE_T" "$O3" 9 8900 "$CPN" 100

O4=$(order "$KIM_T" "$KB" 1 900 "$CPN" 100)
fail_case "coupon used" coupon "$KIM_T" "$O4" 1 900 "$CPN" 100

api POST "/api/orders/$O2/cancel" "$LEE_T" "" >/dev/null
# once more: the order is there but no longer CREATED, a conflict (not 404)
shop_api POST "/api/orders/$O2/cancel" "$LEE_T" "" >/dev/null
[ "$SHOP_CODE" = 409 ] && grep -q "order $O2 is CANCELED: only a CREATED order can be canceled" "$SHOP_WORK/api.body" ||
    fail "cancelling a canceled order: HTTP $SHOP_CODE: $(cat "$SHOP_WORK/api.body"), expected 409"
fail_case "order not payable" order "$LEE_T" "$O2" 3 2900 "$CPN" 100

# after all that, lee can still pay a good order
O5=$(order "$LEE_T" "$KB" 1 900 "$CPN" 100)
P=$(pay "$LEE_T" "$O5" "$KB" 1 900 "$CPN" 100)
[ "$(jq -r .status <<<"$P")" = COMPLETED ] || fail "lee's payment after the failures: $P"

# lee paying kim's order (CREATED again): order refuses it as "no order",
# as one that does not exist (the reason is shown to the payer)
o4_failure=$(shop_db order "SELECT coalesce(last_failure, '') FROM orders WHERE id = $O4")
fail_case "another member's order" order "$LEE_T" "$O4" 1 1000 null 0
# once order has handled that payment-failed event, kim's order must not
# carry it
ev=$(shop_db payment "SELECT id FROM outbox WHERE aggregatetype LIKE '%payment-failed' AND aggregateid = '${FAILED_PIDS[-1]#*=}'")
[ -n "$ev" ] || fail "no payment-failed outbox row for lee's payment"
shop_wait_eq "order handled payment-failed" 60 1 shop_db order "SELECT count(*) FROM inbox WHERE event_id = '$ev'" ||
    fail "order never handled lee's payment-failed ($ev)"
[ "$(shop_db order "SELECT coalesce(last_failure, '') FROM orders WHERE id = $O4")" = "$o4_failure" ] ||
    fail "lee's failed payment was noted on kim's order"
reason=$(api GET "/api/payments/${FAILED_PIDS[-1]#*=}" "$LEE_T" | jq -r '.participants[] | select(.service == "order") | .reason')
[ "$reason" = "no order $O4" ] || fail "lee paying kim's order: order's reason is '$reason', expected 'no order $O4'"

# the client states the amount (README: by choice), but cannot choose its
# price: an order and a payment agreeing on 1 for a product of $PRICE fail
# at product, which checks amount + discount against price x quantity
O6=$(order "$KIM_T" "$KB" 1 1 null 0)
fail_case "amount below the price" product "$KIM_T" "$O6" 1 1 null 0
reason=$(api GET "/api/payments/${FAILED_PIDS[-1]#*=}" "$KIM_T" | jq -r '.participants[] | select(.service == "product") | .reason')
[ "$reason" = "amount 1 + discount 0 != price $PRICE x 1" ] || fail "a payment below the price: product's reason is '$reason'"

# what Kafka holds (read once for all cases)
settle
topic_dump payment-failed >"$WORK/failed.json"
topic_dump complete-order >"$WORK/complete.json"
for np in "${FAILED_PIDS[@]}"; do
    name=${np%%=*} pid=${np#*=}
    [ "$(grep -c "$pid" "$WORK/failed.json")" = 1 ] || fail "$name: payment-failed not exactly once"
    [ "$(grep -c "$pid" "$WORK/complete.json")" = 0 ] || fail "$name: complete-order emitted"
done
[ "$(grep -c . "$WORK/failed.json")" = 6 ] || fail "payment-failed records: $(grep -c . "$WORK/failed.json"), expected 6"
[ "$(grep -c . "$WORK/complete.json")" = 2 ] || fail "complete-order records: $(grep -c . "$WORK/complete.json"), expected 2"

# ---------------------------------------------------------------- gateway
log "gateway: authentication, roles, rate limit"
shop_api POST /api/payments "" '{}' >/dev/null
[ "$SHOP_CODE" = 401 ] || fail "no token: HTTP $SHOP_CODE, expected 401"
shop_api GET /api/orders "wrong-token" >/dev/null
[ "$SHOP_CODE" = 401 ] || fail "wrong token: HTTP $SHOP_CODE, expected 401"
shop_api POST /api/admin/products "$KIM_T" '{"name": "x", "price": 1, "stock": 1}' >/dev/null
[ "$SHOP_CODE" = 403 ] || fail "user on an admin route: HTTP $SHOP_CODE, expected 403"
shop_api POST /api/admin/coupons "$KIM_T" '{"name": "x", "discount": 1, "total": 1}' >/dev/null
[ "$SHOP_CODE" = 403 ] || fail "user on the admin coupon route: HTTP $SHOP_CODE, expected 403"
shop_api GET "/api/members/$LEE" "$KIM_T" >/dev/null
[ "$SHOP_CODE" = 403 ] || fail "kim reading lee's account: HTTP $SHOP_CODE, expected 403"
shop_api GET /api/members/ "$KIM_T" >/dev/null
[ "$SHOP_CODE" = 403 ] || fail "a user listing every member and balance: HTTP $SHOP_CODE, expected 403"
shop_api POST /api/coupons/ "$KIM_T" '{"name": "free", "discount": 100000, "total": 1}' >/dev/null
[ "$SHOP_CODE" = 403 ] || fail "a user creating a coupon through /api/coupons/: HTTP $SHOP_CODE, expected 403"
[ "$(shop_db coupon "SELECT count(*) FROM coupons WHERE name = 'free'")" = 0 ] || fail "the user's coupon was created"
# a discount without a coupon would be free goods: refused by order and payment
shop_api POST /api/orders "$KIM_T" "{\"productId\": $KB, \"quantity\": 1, \"amount\": 0, \"couponId\": null, \"discount\": $PRICE}" >/dev/null
[ "$SHOP_CODE" = 400 ] || fail "an order with a discount and no coupon: HTTP $SHOP_CODE, expected 400"
OF=$(order "$KIM_T" "$KB" 1 0 null 0)
shop_api POST "/api/payments?wait=5s" "$KIM_T" "{\"orderId\": $OF, \"productId\": $KB, \"quantity\": 1, \"amount\": 0, \"couponId\": null, \"discount\": $PRICE}" >"$SHOP_WORK/free.out"
[ "$SHOP_CODE" = 400 ] || fail "a payment with a discount and no coupon: HTTP $SHOP_CODE, expected 400: $(cat "$SHOP_WORK/free.out")"
grep -q "without a couponId" "$SHOP_WORK/free.out" || fail "unclear refusal: $(cat "$SHOP_WORK/free.out")"
# a user sees and cancels only their own orders and payments; another's is
# "not found", as one that does not exist; an admin sees every one
shop_api GET "/api/orders/$O" "$LEE_T" >/dev/null
[ "$SHOP_CODE" = 404 ] || fail "lee reading kim's order: HTTP $SHOP_CODE, expected 404"
o4_status=$(shop_db order "SELECT status FROM orders WHERE id = $O4")
shop_api POST "/api/orders/$O4/cancel" "$LEE_T" "" >/dev/null
[ "$SHOP_CODE" = 404 ] || fail "lee cancelling kim's order: HTTP $SHOP_CODE, expected 404"
[ "$(shop_db order "SELECT status FROM orders WHERE id = $O4")" = "$o4_status" ] || fail "lee's cancel changed kim's order"
shop_api GET "/api/payments/$PID" "$LEE_T" >/dev/null
[ "$SHOP_CODE" = 404 ] || fail "lee reading kim's payment: HTTP $SHOP_CODE, expected 404"
shop_api GET "/api/payments/$PID/trace" "$LEE_T" >/dev/null
[ "$SHOP_CODE" = 404 ] || fail "lee reading kim's payment trace: HTTP $SHOP_CODE, expected 404"
[ "$(api GET /api/orders "$LEE_T" | jq -c '[.[].memberId] | unique')" = "[$LEE]" ] || fail "lee's order list holds others' orders"
[ "$(api GET /api/payments "$KIM_T" | jq -c '[.[].memberId] | unique')" = "[$KIM]" ] || fail "kim's payment list holds others' payments"
[ "$(api GET /api/orders/$O "$KIM_T" | jq .id)" = "$O" ] || fail "kim cannot read his own order"
[ "$(api GET /api/payments/$PID "$KIM_T" | jq -r .paymentId)" = "$PID" ] || fail "kim cannot read his own payment"
[ "$(api GET /api/orders "$SHOP_ADMIN_TOKEN" | jq -c "[.[].memberId | select(. == $KIM or . == $LEE)] | unique")" = "[$KIM,$LEE]" ] ||
    fail "the admin's order list lacks kim's or lee's orders"
shop_api POST /api/products "" '{"name": "x", "price": 1, "stock": 1}' >/dev/null
[ "$SHOP_CODE" = 403 ] || fail "POST on the public catalogue: HTTP $SHOP_CODE, expected 403"
# the rate limit: 20 r/s with a burst of 40 per client and token
# (one curl process on one kept-alive connection: fast enough on a loaded machine)
urls=()
for _ in $(seq 1 400); do urls+=(-o /dev/null "$SHOP_GATEWAY/api/products"); done
codes=$(curl -s -H "Authorization: Bearer $KIM_T" -w '%{http_code}\n' "${urls[@]}" | sort | uniq -c)
grep -q ' 429$' <<<"$codes" || fail "no request was rate-limited: $codes"
grep -q ' 200$' <<<"$codes" || fail "no request got through: $codes"
# another token is not limited by kim's burst
api GET /api/orders "$LEE_T" >/dev/null
# a new token on every request (limit_req runs before the token is checked)
# is bounded by the address's own limit: 5 times the per-token one, 100 r/s
# with a burst of 200 here (requests nginx itself refuses: cheap and fast)
args=()
for i in $(seq 1 1000); do
    args+=(--next -s -o /dev/null -w '%{http_code}\n' -H "Authorization: Bearer forged-$i" -X POST "$SHOP_GATEWAY/api/products")
done
codes=$(curl "${args[@]:1}" | sort | uniq -c)
grep -q ' 429$' <<<"$codes" || fail "a new token on every request was never rate-limited: $codes"
log "a new token on every request: $(tr -s ' \n' ' ' <<<"$codes")"

log "PASS in $((SECONDS - T0)) s"

#!/usr/bin/env bash
# ctest: serial -- eight services plus a registry; saga timeouts measured in seconds
# The shop under faults (real PostgreSQL, Kafka, outboxd, Redis, nginx):
#  - redelivery: every event consumed again from offset zero (new consumer
#    groups) changes nothing: each consumer finds all in its inbox;
#  - a poison message lands on <topic>.dlt after the retries, once per
#    consumer, with the error, and the consumers go on; a value that is not
#    outboxd's Avro at all is dead-lettered without retries, also with a
#    binary key and a trace_id header that are not UTF-8 (stored as hex);
#  - the schema registry away: a service that has no schema cached waits
#    for it (retries with backoff) and dead-letters nothing;
#  - a service's database away (member's, refusing connections) while a
#    command and a compensation wait for it: both are applied once it is
#    back, nothing dead-lettered, no payment left COMPENSATING;
#  - timeout: product stopped, the saga fails by timeout and compensates the
#    others; product comes back, its late success is compensated too;
#  - an event whose own statement ends its database session every time is
#    dead-lettered after the retries, not waited for as an outage; a
#    compensation sent before its command leaves a tombstone that refuses
#    the command later; a compensation dead-lettered leaves its saga
#    COMPENSATING, counted as overdue in the payment service's /stats, until
#    it is sent again;
#  - the coordinator SIGKILLed with sagas open, restarted: all finish;
#  - outboxd SIGKILLed with sagas open, restarted: same outcomes, each
#    complete-order exactly once.
# shellcheck disable=SC1091
source "$(dirname "$0")/shop_lib.sh"

SHOP_SAGA_TIMEOUT_MS=120000
shop_up

KB=$(new_product keyboard 1000 1000)
read -r KIM KIM_T <<<"$(new_member kim 1000000)"

# ------------------------------------------------------------- redelivery
log "redelivery: one good and one failed payment, then every consumer again from offset 0"
O=$(order "$KIM_T" "$KB" 1 1000 null 0)
P=$(pay "$KIM_T" "$O" "$KB" 1 1000 null 0)
[ "$(jq -r .status <<<"$P")" = COMPLETED ] || fail "first payment: $P"
O=$(order "$KIM_T" "$KB" 5000 5000000 null 0)
P=$(pay "$KIM_T" "$O" "$KB" 5000 5000000 null 0)
[ "$(jq -r .status <<<"$P")" = FAILED ] || fail "second payment should fail: $P"
settle
before=$(snapshot)
REPLAY=(--group-prefix "${SHOP_TOPIC_PREFIX}replay.")
for s in "${SHOP_SERVICES[@]}"; do
    shop_stop_service "$s"
    shop_start_service "$s" "${REPLAY[@]}"
done
for s in "${SHOP_SERVICES[@]}"; do shop_wait_ready "$s" || fail "$s did not restart"; done
# each consumer must find every event it had handled already in its inbox
replayed() {
    local s=$1 stats c want got handled
    stats=$(curl -s "http://127.0.0.1:${SHOP_PORT[$s]}/stats") || return 1
    for c in $(jq -r '.consumers[].consumer' <<<"$stats"); do
        want=$(shop_db "$s" "SELECT count(*) FROM inbox WHERE consumer = '$c'")
        got=$(jq --arg c "$c" '.consumers[] | select(.consumer == $c) | .duplicates' <<<"$stats")
        handled=$(jq --arg c "$c" '.consumers[] | select(.consumer == $c) | .handled' <<<"$stats")
        [ "$handled" = 0 ] || fail "$s/$c applied $handled event(s) again on redelivery"
        [ "$got" = "$want" ] || return 1
    done
}
total=0
for s in "${SHOP_SERVICES[@]}"; do
    shop_wait_for "$s to re-read everything" 120 replayed "$s" ||
        fail "$s did not see every event again: $(curl -s "http://127.0.0.1:${SHOP_PORT[$s]}/stats")"
    total=$((total + $(curl -s "http://127.0.0.1:${SHOP_PORT[$s]}/stats" | jq '[.consumers[].duplicates] | add // 0')))
done
settle
after=$(snapshot)
[ "$before" = "$after" ] || fail "redelivery changed state: $(diff <(echo "$before") <(echo "$after"))"
log "redelivery: $total events delivered twice, none applied twice"

# ------------------------------------------------------------------ poison
log "poison: a payment-pending without the fields any participant needs"
shop_db payment "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload)
    VALUES (gen_random_uuid(), '${SHOP_TOPIC_PREFIX}payment-pending', 'poison', 'payment-pending', '{\"garbage\": true}')" >/dev/null
dlt_count() { topic_dump payment-pending.dlt | grep -c 'field \\"paymentId\\" is missing' || true; }
shop_wait_eq "4 dead letters (one per participant)" 120 4 dlt_count ||
    fail "payment-pending.dlt holds $(dlt_count) dead letters, expected 4: $(topic_dump payment-pending.dlt | head -c 2000)"
topic_dump payment-pending.dlt | head -n 1 | jq -e '.value.payload.attempts == 4 and .value.payload.event.payload.garbage == true' >/dev/null ||
    fail "dead letter lacks attempts or the original event: $(topic_dump payment-pending.dlt | head -n 1)"
for s in order member coupon product; do
    d=$(curl -s "http://127.0.0.1:${SHOP_PORT[$s]}/stats" | jq '.consumers[] | select(.consumer == "pending") | .deadLetters')
    [ "$d" = 1 ] || fail "$s dead-lettered $d events, expected 1"
done
log "poison: a value that is not outboxd's Avro at all (written straight to Kafka)"
"$OUTBOXD_TOOLS/shop_produce" "$KAFKA_BOOTSTRAP" "${SHOP_TOPIC_PREFIX}payment-pending" raw '{"not": "avro"}' ||
    fail "could not produce the raw message"
raw_count() { topic_dump payment-pending.dlt | grep -c 'not an outboxd event' || true; }
shop_wait_eq "4 dead letters of the undecodable value" 120 4 raw_count ||
    fail "undecodable value dead-lettered $(raw_count) times, expected 4"
# not decodable is not retried: the first attempt never ran a handler
topic_dump payment-pending.dlt | grep 'not an outboxd event' | jq -s -e 'map(.value.payload.attempts == 0) | all' >/dev/null ||
    fail "undecodable value was retried"
log "poison: a binary key and a trace_id header that are not UTF-8 (a foreign producer)"
# The database takes neither as text: the dead letter must still be written
# (key and trace as hex), or the consumer would retry it for ever and stop.
"$OUTBOXD_TOOLS/shop_produce" --trace-hex c328 "$KAFKA_BOOTSTRAP" "${SHOP_TOPIC_PREFIX}payment-pending" hex:ff10 '{"binary": "key"}' ||
    fail "could not produce the binary-keyed message"
bin_count() { topic_dump payment-pending.dlt | grep -cF '"key":"hex:ff10"' || true; }
shop_wait_eq "4 dead letters of the binary-keyed value" 120 4 bin_count ||
    fail "the binary-keyed value was dead-lettered $(bin_count) times, expected 4 (a consumer stuck on it?)"
topic_dump payment-pending.dlt | grep -F '"key":"hex:ff10"' | head -n 1 | jq -e '.headers.trace_id == "hex:c328"' >/dev/null ||
    fail "the dead letter does not carry the trace_id as hex: $(topic_dump payment-pending.dlt | grep -F '"key":"hex:ff10"' | head -n 1)"
O=$(order "$KIM_T" "$KB" 1 1000 null 0)
P=$(pay "$KIM_T" "$O" "$KB" 1 1000 null 0)
[ "$(jq -r .status <<<"$P")" = COMPLETED ] || fail "payment after the poison messages: $P"

# ------------------------------------------------------------ registry away
# The registry frozen (SIGSTOP: requests time out; its in-memory schemas
# are kept, as a real registry keeps them across an outage), while a
# product service with nothing cached needs a schema.
log "registry away: product restarted (no schema cached) while the registry does not answer"
REG_PID=$(cat "$SHOP_REGISTRY_DIR/registry.pid")
shop_stop_service product
kill -STOP "$REG_PID"
shop_start_service product "${REPLAY[@]}"
shop_wait_ready product || { kill -CONT "$REG_PID"; fail "product did not restart"; }
O=$(order "$KIM_T" "$KB" 1 1000 null 0)
P=$(pay "$KIM_T" "$O" "$KB" 1 1000 null 0 1s)
PID=$(jq -r .paymentId <<<"$P")
product_stat() { curl -s "http://127.0.0.1:${SHOP_PORT[product]}/stats" | jq "[.consumers[].$1] | add"; }
product_waits() { [ "$(product_stat registryWaits)" -ge 2 ]; }
shop_wait_for "product retrying the schema lookup" 120 product_waits || {
    kill -CONT "$REG_PID"
    fail "product did not wait for the registry: $(curl -s "http://127.0.0.1:${SHOP_PORT[product]}/stats")"
}
kill -CONT "$REG_PID"
wait_payment "$PID" COMPLETED 120
[ "$(product_stat deadLetters)" = 0 ] || fail "product dead-lettered an event while the registry was away"
[ "$(topic_count payment-pending.dlt "$PID")" = 0 ] || fail "the payment's command is on payment-pending.dlt"
log "registry away: product retried the lookup $(product_stat registryWaits) time(s), then applied the event; payment COMPLETED, nothing dead-lettered"

# ---------------------------------------------------------- database away
# member's database refuses connections (ALLOW_CONNECTIONS false, its
# sessions terminated) for longer than the retries would last (4 attempts
# from 100 ms: under a second), while member has a command and a
# compensation to apply: the payment-pending of a good payment, and the
# refund-balance of one that fails at product (stock 1, quantity 2) after
# member had applied its step (product is held back until the database is
# closed). Both are good events: they must wait for the database, not land
# on a .dlt (a dead-lettered command leaves its saga waiting for the
# timeout; a dead-lettered compensation leaves the payment COMPENSATING for
# ever). The good payment goes straight to the payment service: the gateway
# authenticates through member, which is away.
log "database away: member's database refuses connections while it has a command and a compensation to apply"
SCARCE=$(new_product scarce 1000 1)
O1=$(order "$KIM_T" "$KB" 1 1000 null 0)
O2=$(order "$KIM_T" "$SCARCE" 2 2000 null 0)
settle
# what must hold after: kim paid 1,000 once, keyboard's stock one less,
# nothing else changed
state() {
    shop_db member "SELECT balance FROM members WHERE id = $KIM"
    shop_db product "SELECT id || ' ' || stock FROM products WHERE id IN ($KB, $SCARCE) ORDER BY id"
    shop_db order "SELECT id || ' ' || status FROM orders WHERE id IN ($O1, $O2) ORDER BY id"
}
want=$(
    echo $(($(shop_db member "SELECT balance FROM members WHERE id = $KIM") - 1000))
    shop_db product "SELECT id || ' ' || CASE WHEN id = $KB THEN stock - 1 ELSE stock END FROM products WHERE id IN ($KB, $SCARCE) ORDER BY id"
    echo "$O1 COMPLETED"
    echo "$O2 CREATED"
)
member_stat() { curl -s "http://127.0.0.1:${SHOP_PORT[member]}/stats" | jq --arg c "$1" ".consumers[] | select(.consumer == \$c) | .$2"; }
dl0=$(($(member_stat pending deadLetters) + $(member_stat refund deadLetters)))
MDB="${SHOP_DB_PREFIX}member"
member_db_allow() {
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "ALTER DATABASE \"$MDB\" ALLOW_CONNECTIONS $1" >/dev/null
}
# should the test fail while it is closed, the cleanup opens it again
SHOP_REOPEN_DB=$MDB
shop_stop_service product
P2=$(pay "$KIM_T" "$O2" "$SCARCE" 2 2000 null 0 0s)
PID2=$(jq -r .paymentId <<<"$P2")
shop_wait_eq "member's step of the failing payment applied" 120 APPLIED shop_db member "SELECT state FROM payment_ops WHERE payment_id = '$PID2'" ||
    fail "member did not apply its step of $PID2"
member_db_allow false || fail "could not close member's database"
psql -X -q -At -d postgres -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '$MDB'" >/dev/null || fail "could not end member's sessions"
PID1=$(curl -s --max-time 60 -X POST -H "X-Member-Id: $KIM" -H 'Content-Type: application/json' \
    --data "{\"orderId\": $O1, \"productId\": $KB, \"quantity\": 1, \"amount\": 1000, \"couponId\": null, \"discount\": 0}" \
    "http://127.0.0.1:${SHOP_PORT[payment]}/payments?wait=0s" | jq -r '.paymentId // empty')
[ -n "$PID1" ] || fail "could not start the good payment"
shop_start_service product "${REPLAY[@]}"
shop_wait_ready product || fail "product did not restart"
# well past the retries' budget on both consumers: 200+400+800+1600 ms
waiting() { [ "$(member_stat pending unavailableWaits)" -ge 5 ] && [ "$(member_stat refund unavailableWaits)" -ge 5 ]; }
shop_wait_for "member waiting for its database on both consumers" 120 waiting || fail "member did not wait for its database: $(curl -s "http://127.0.0.1:${SHOP_PORT[member]}/stats")"
during="$(payment_status "$PID1") $(payment_status "$PID2")"
log "member waited $(member_stat pending unavailableWaits) + $(member_stat refund unavailableWaits) time(s); payments $during; opening its database again"
member_db_allow true || fail "could not open member's database again"
SHOP_REOPEN_DB=""
[ "$during" = "PENDING COMPENSATING" ] || fail "payments were $during during the outage, expected PENDING COMPENSATING"
wait_payment "$PID1" COMPLETED 180
wait_payment "$PID2" FAILED 180
settle
dl1=$(($(member_stat pending deadLetters) + $(member_stat refund deadLetters)))
[ "$dl1" = "$dl0" ] || fail "member dead-lettered $((dl1 - dl0)) event(s) while its database was away"
for t in payment-pending refund-balance; do
    [ "$(topic_count "$t.dlt" "$PID1")" = 0 ] && [ "$(topic_count "$t.dlt" "$PID2")" = 0 ] ||
        fail "an event of the two payments is on $t.dlt"
done
[ "$(shop_db member "SELECT state FROM payment_ops WHERE payment_id = '$PID2'")" = COMPENSATED ] ||
    fail "member's step of the failed payment is $(shop_db member "SELECT state FROM payment_ops WHERE payment_id = '$PID2'")"
[ "$want" = "$(state)" ] || fail "state after the outage: $(diff <(echo "$want") <(state))"
# member's pooled HTTP connections ended with its sessions: the gateway's
# next request (authenticated by member) must get a fresh one, not an error
shop_api GET /api/orders "$KIM_T" >/dev/null
[ "$SHOP_CODE" = 200 ] || fail "the first request through the gateway after the outage: HTTP $SHOP_CODE: $(cat "$SHOP_WORK/api.body")"
log "database away: the good payment COMPLETED, the failing one FAILED and compensated, nothing dead-lettered"

# ----------------------------------------------------------------- timeout
log "timeout: product stopped, saga times out after 5 s; product back, its late success is undone"
shop_stop_service payment
SHOP_SAGA_TIMEOUT_MS=5000 shop_start_service payment "${REPLAY[@]}"
shop_wait_ready payment || fail "payment did not restart"
O=$(order "$KIM_T" "$KB" 2 2000 null 0)
settle
before=$(snapshot)
shop_stop_service product
P=$(pay "$KIM_T" "$O" "$KB" 2 2000 null 0 60s)
PID=$(jq -r .paymentId <<<"$P")
[ "$(jq -r .status <<<"$P")" = FAILED ] || fail "timed-out payment: $P"
jq -e '.participants[] | select(.service == "product") | .result == "TIMEOUT"' <<<"$P" >/dev/null || fail "product not TIMEOUT: $P"
jq -e '[.participants[] | select(.service != "product") | .compensation] | all(. == "DONE")' <<<"$P" >/dev/null ||
    fail "the others were not compensated: $P"
shop_start_service product "${REPLAY[@]}"
shop_wait_ready product || fail "product did not restart"
shop_wait_eq "the late product result compensated" 120 SUCCESS/DONE shop_db payment "SELECT late_result || '/' || compensation FROM saga_steps WHERE payment_id = '$PID' AND service = 'product'" ||
    fail "late result: $(shop_db payment "SELECT * FROM saga_steps WHERE payment_id = '$PID'")"
settle
after=$(snapshot)
[ "$before" = "$after" ] || fail "timeout left state changed: $(diff <(echo "$before") <(echo "$after"))"
[ "$(payment_status "$PID")" = FAILED ] || fail "payment is $(payment_status "$PID") after the late result"
[ "$(topic_count payment-failed "$PID")" = 1 ] || fail "payment-failed not exactly once after the late result"
[ "$(shop_db product "SELECT state FROM payment_ops WHERE payment_id = '$PID'")" = COMPENSATED ] || fail "product's step not COMPENSATED"

# ------------------------------------------ an event that ends its session
# member's step of one payment runs a statement that terminates its own
# backend (a trigger calling pg_terminate_backend on itself, as a crashing
# statement would): every attempt loses the connection inside the event's
# transaction while the database answers in between. That is the event's
# fault, not an outage: from the 3rd such attempt in a row it counts as
# failing (2 waits, then 4 counted attempts: 6 sessions ended) and is
# dead-lettered, instead of holding member's partition for ever. The saga
# fails by timeout (payment still runs with 5 s). Then what an operator
# would do: compensate member's step (it never applied it: a tombstone) and
# send the command again with the trigger gone: member refuses it
# ("payment already compensated") and nothing changes.
log "an event that ends its own database session: member's step dead-lettered, not waited for"
POISON=$(new_product poison 4242 10)
O=$(order "$KIM_T" "$POISON" 1 4242 null 0)
settle
before=$(snapshot)
shop_db member "CREATE FUNCTION end_own_session() RETURNS trigger LANGUAGE plpgsql AS \$\$
    BEGIN PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); RETURN NEW; END \$\$;
    CREATE TRIGGER end_own_session BEFORE UPDATE ON members FOR EACH ROW
    WHEN (OLD.balance - NEW.balance = 4242) EXECUTE FUNCTION end_own_session()" >/dev/null ||
    fail "could not create the trigger"
dl0=$(member_stat pending deadLetters)
P=$(pay "$KIM_T" "$O" "$POISON" 1 4242 null 0 60s)
PID=$(jq -r .paymentId <<<"$P")
[ "$(jq -r .status <<<"$P")" = FAILED ] || fail "the payment whose member step ends its session: $P"
jq -e '.participants[] | select(.service == "member") | .result == "TIMEOUT"' <<<"$P" >/dev/null || fail "member not TIMEOUT: $P"
member_dl() { [ "$(member_stat pending deadLetters)" -gt "$dl0" ]; }
shop_wait_for "member dead-lettering the event" 60 member_dl || fail "member did not dead-letter the event: $(curl -s "http://127.0.0.1:${SHOP_PORT[member]}/stats")"
shop_wait_eq "the dead letter on payment-pending.dlt" 60 1 topic_count payment-pending.dlt "$PID" ||
    fail "payment-pending.dlt holds $(topic_count payment-pending.dlt "$PID") records of $PID"
DL=$(topic_dump payment-pending.dlt | grep "$PID")
jq -e '.value.payload.consumer | endswith("member/pending")' <<<"$DL" >/dev/null &&
    jq -e '.value.payload.attempts == 4' <<<"$DL" >/dev/null &&
    grep -q "the database session ended inside this event's transaction in each of the last 6 attempts" <<<"$DL" ||
    fail "the dead letter does not say why or how often: $DL"
[ "$(shop_db member "SELECT count(*) FROM payment_ops WHERE payment_id = '$PID'")" = 0 ] || fail "member recorded a step it never applied"
shop_db member "DROP TRIGGER end_own_session ON members" >/dev/null || fail "could not drop the trigger"
settle
[ "$before" = "$(snapshot)" ] || fail "the failed payment changed state: $(diff <(echo "$before") <(snapshot))"
# the operator: compensate member's step, then send the command again
CMD=$(jq -c .value.payload.event.payload <<<"$DL")
[ "$(jq -r .paymentId <<<"$CMD")" = "$PID" ] || fail "the dead letter lacks the command: $DL"
operator_send() { # operator_send TOPIC: CMD into the payment service's outbox
    shop_db payment "INSERT INTO outbox (id, aggregatetype, aggregateid, type, payload, trace_id)
        VALUES (gen_random_uuid(), '${SHOP_TOPIC_PREFIX}$1', '$PID', '$1', '$CMD'::jsonb, '$PID')" >/dev/null ||
        fail "could not write $1 into the payment outbox"
}
operator_send refund-balance
shop_wait_eq "member's tombstone" 60 "COMPENSATED compensated before the command arrived" shop_db member "SELECT state || ' ' || reason FROM payment_ops WHERE payment_id = '$PID'" ||
    fail "member's step after the early compensation: $(shop_db member "SELECT * FROM payment_ops WHERE payment_id = '$PID'")"
refunded_nothing() { topic_dump balance-refunded | grep "$PID" | grep -c "nothing to undo (command not seen yet)" || true; }
shop_wait_eq "balance-refunded says nothing was undone" 60 1 refunded_nothing ||
    fail "balance-refunded: $(topic_dump balance-refunded | grep "$PID")"
operator_send payment-pending
shop_wait_eq "member's late answer" 60 FAIL shop_db payment "SELECT coalesce(late_result, '') FROM saga_steps WHERE payment_id = '$PID' AND service = 'member'" ||
    fail "member's late result: $(shop_db payment "SELECT * FROM saga_steps WHERE payment_id = '$PID'")"
# the coordinator traces the late result in the transaction that set it
shop_db payment "SELECT detail FROM saga_trace WHERE payment_id = '$PID' AND service = 'member' AND step = 'late result'" | grep -q "^failure: payment already compensated" ||
    fail "member's answer to the command after its compensation: $(shop_db payment "SELECT service, step, detail FROM saga_trace WHERE payment_id = '$PID' ORDER BY seq")"
settle
[ "$before" = "$(snapshot)" ] || fail "the command after the compensation changed state: $(diff <(echo "$before") <(snapshot))"
[ "$(payment_status "$PID")" = FAILED ] || fail "payment is $(payment_status "$PID") after the operator's messages"
[ "$(shop_db member "SELECT state FROM payment_ops WHERE payment_id = '$PID'")" = COMPENSATED ] || fail "member's tombstone was overwritten"
log "an event that ends its own session: dead-lettered after 4 counted attempts; the compensation before the command left a tombstone that refused the command"

# ------------------------------------- a compensation that cannot be applied
# member refuses to refund one amount (a trigger raising an error: a real
# failure, not an outage), so its compensation of a payment that fails at
# product is dead-lettered and the saga stays COMPENSATING. The payment
# service counts it in GET /stats once it is overdue (twice the saga
# timeout); with the cause fixed, the compensation sent again from its dead
# letter finishes the saga: FAILED, everything restored.
log "a compensation that cannot be applied: counted as overdue, finished when sent again"
REFUSED=$(new_product refused 4343 1)
O=$(order "$KIM_T" "$REFUSED" 2 8686 null 0)
settle
before=$(snapshot)
payment_sagas() { curl -s "http://127.0.0.1:${SHOP_PORT[payment]}/stats" | jq -r ".sagas.$1"; }
[ "$(payment_sagas compensatingOverdue)" = 0 ] || fail "overdue compensations before the test: $(curl -s "http://127.0.0.1:${SHOP_PORT[payment]}/stats")"
shop_db member "CREATE FUNCTION refuse_refund() RETURNS trigger LANGUAGE plpgsql AS \$\$
    BEGIN RAISE EXCEPTION 'refunds of 8686 refused (test)'; END \$\$;
    CREATE TRIGGER refuse_refund BEFORE UPDATE ON members FOR EACH ROW
    WHEN (NEW.balance - OLD.balance = 8686) EXECUTE FUNCTION refuse_refund()" >/dev/null ||
    fail "could not create the trigger"
P=$(pay "$KIM_T" "$O" "$REFUSED" 2 8686 null 0 0s)
PID=$(jq -r .paymentId <<<"$P")
shop_wait_eq "member's refund dead-lettered" 60 1 topic_count refund-balance.dlt "$PID" ||
    fail "refund-balance.dlt holds $(topic_count refund-balance.dlt "$PID") records of $PID"
shop_wait_eq "the saga counted as overdue" 60 1 payment_sagas compensatingOverdue ||
    fail "payment /stats: $(curl -s "http://127.0.0.1:${SHOP_PORT[payment]}/stats")"
[ "$(payment_status "$PID")" = COMPENSATING ] || fail "payment is $(payment_status "$PID"), expected COMPENSATING"
[ "$(payment_sagas compensating)" = 1 ] || fail "payment /stats: $(curl -s "http://127.0.0.1:${SHOP_PORT[payment]}/stats")"
# the coordinator warns, naming it (every saga timeout: 5 s here)
overdue_warned() { grep -q "1 saga(s) COMPENSATING for longer than twice the saga timeout, the oldest $PID" "$SHOP_WORK/payment.log"; }
shop_wait_for "the coordinator's warning" 30 overdue_warned || fail "no warning about the overdue saga in payment.log: $(tail -n 5 "$SHOP_WORK/payment.log")"
api GET "/api/payments/$PID" "$KIM_T" >"$WORK/stuck.json"
jq -e '.participants[] | select(.service == "member") | .compensation == "SENT"' "$WORK/stuck.json" >/dev/null ||
    fail "the payment does not show member's compensation SENT: $(cat "$WORK/stuck.json")"
shop_db member "DROP TRIGGER refuse_refund ON members" >/dev/null || fail "could not drop the trigger"
CMD=$(topic_dump refund-balance.dlt | grep "$PID" | jq -c .value.payload.event.payload)
[ "$(jq -r .paymentId <<<"$CMD")" = "$PID" ] || fail "the dead letter lacks the compensation: $CMD"
operator_send refund-balance
wait_payment "$PID" FAILED 60
[ "$(payment_sagas compensatingOverdue)" = 0 ] || fail "still overdue after the saga finished: $(curl -s "http://127.0.0.1:${SHOP_PORT[payment]}/stats")"
settle
[ "$before" = "$(snapshot)" ] || fail "the compensation sent again did not restore everything: $(diff <(echo "$before") <(snapshot))"
log "a compensation that cannot be applied: the saga counted as overdue, FAILED and restored once it was sent again"

# ------------------------------------------- coordinator killed mid-saga
# start_batch N: N orders paid without waiting, with product stopped so that
# every saga is surely open (three results in, product's missing) when the
# fault hits; prints the payment ids. product is started again by the caller.
start_batch() {
    local i o p orders=()
    for i in $(seq 1 "$1"); do orders+=("$(order "$KIM_T" "$KB" 1 1000 null 0)"); done
    shop_stop_service product
    for o in "${orders[@]}"; do
        p=$(pay "$KIM_T" "$o" "$KB" 1 1000 null 0 0s)
        jq -r .paymentId <<<"$p"
    done
}
shop_stop_service payment
shop_start_service payment "${REPLAY[@]}"
shop_wait_ready payment || fail "payment did not restart"
settle
stock0=$(shop_db product "SELECT stock FROM products WHERE id = $KB")
log "coordinator: 10 payments open, then SIGKILL the payment service"
mapfile -t PIDS < <(start_batch 10)
[ ${#PIDS[@]} = 10 ] || fail "could not start 10 payments"
IN1=$(printf "'%s'," "${PIDS[@]}" | sed 's/,$//')
shop_wait_eq "3 results in for all 10" 120 30 shop_db payment "SELECT count(*) FROM saga_steps WHERE result IS NOT NULL AND payment_id IN ($IN1)" ||
    fail "results: $(shop_db payment "SELECT count(*) FROM saga_steps WHERE result IS NOT NULL AND payment_id IN ($IN1)")"
shop_stop_service payment KILL
open=$(shop_db payment "SELECT count(*) FROM payments WHERE status IN ('PENDING', 'COMPENSATING')")
[ "$open" = 10 ] || fail "expected 10 open sagas at the kill, found $open"
log "coordinator killed with $open sagas open; product's results arrive while it is down"
shop_start_service product "${REPLAY[@]}"
shop_wait_ready product || fail "product did not restart"
shop_wait_eq "product answered all 10" 120 10 shop_db product "SELECT count(*) FROM payment_ops WHERE state = 'APPLIED' AND payment_id IN ($IN1)" ||
    fail "product did not answer"
shop_start_service payment "${REPLAY[@]}"
for p in "${PIDS[@]}"; do wait_payment "$p" COMPLETED 180; done
settle
[ "$(shop_db product "SELECT stock FROM products WHERE id = $KB")" = $((stock0 - 10)) ] || fail "stock after the coordinator restart"

# ------------------------------------------------ outboxd killed mid-saga
log "outboxd: 10 payments open, then SIGKILL outboxd"
mapfile -t PIDS2 < <(start_batch 10)
[ ${#PIDS2[@]} = 10 ] || fail "could not start 10 payments"
IN2=$(printf "'%s'," "${PIDS2[@]}" | sed 's/,$//')
shop_wait_eq "3 results in for the new 10" 120 30 shop_db payment "SELECT count(*) FROM saga_steps WHERE result IS NOT NULL AND payment_id IN ($IN2)" ||
    fail "results: $(shop_db payment "SELECT count(*) FROM saga_steps WHERE result IS NOT NULL AND payment_id IN ($IN2)")"
shop_stop_service outboxd KILL
open=$(shop_db payment "SELECT count(*) FROM payments WHERE status IN ('PENDING', 'COMPENSATING')")
[ "$open" = 10 ] || fail "expected 10 open sagas at the kill, found $open"
log "outboxd killed with $open sagas open; product answers into its outbox while the relay is down"
shop_start_service product "${REPLAY[@]}"
shop_wait_ready product || fail "product did not restart"
shop_wait_eq "product answered the new 10" 120 10 shop_db product "SELECT count(*) FROM payment_ops WHERE state = 'APPLIED' AND payment_id IN ($IN2)" ||
    fail "product did not answer"
"$OUTBOXD_BIN" run -c "$SHOP_RELAY_CONFIG" >>"$SHOP_WORK/outboxd.log" 2>&1 &
SHOP_PID[outboxd]=$!
echo "outboxd $!" >>"$SHOP_WORK/pids"
for p in "${PIDS2[@]}"; do wait_payment "$p" COMPLETED 180; done
settle
[ "$(shop_db product "SELECT stock FROM products WHERE id = $KB")" = $((stock0 - 20)) ] || fail "stock after the relay restart"
topic_dump complete-order >"$WORK/complete.json"
for p in "${PIDS[@]}" "${PIDS2[@]}"; do
    [ "$(grep -c "$p" "$WORK/complete.json")" = 1 ] || fail "complete-order for $p not exactly once"
done
shop_wait_eq "the data platform got 24 orders" 60 24 shop_db platform "SELECT count(*) FROM received_orders" ||
    fail "data platform: $(shop_db platform "SELECT count(*) FROM received_orders") orders, expected 24 (2 before, 1 while the registry was away, 1 while member's database was, 10 + 10)"

log "PASS in $((SECONDS - T0)) s"

#!/usr/bin/env bash
# ctest: serial -- bounds the second signal's exit at 2 s
# One failing source does not stop the others: source B points at a database
# that does not exist yet; A relays its events meanwhile while B is retried
# with backoff. Once B's database appears, B catches up. SIGINT stops the
# relay with status 0. A slot dropped behind the relay's back is reported.
# Then: a second signal exits at once even while a source is stuck (Kafka
# unreachable).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

A=fa_$RUN_ID
B=fb_$RUN_ID
create_outbox_db "$A"
psql_db postgres -c "DROP DATABASE IF EXISTS \"$B\" WITH (FORCE)" >/dev/null
write_config "$WORK/outboxd.yaml" "$A" "$B"
sed -i 's/^relay:/relay:\n  reconnect_max_backoff_ms: 1000/' "$WORK/outboxd.yaml"
"$OUTBOXD_BIN" check --create -c "$WORK/outboxd.yaml" >"$WORK/check.out" 2>&1 && fail "check passed with a missing database"
grep -q "source $B: cannot connect" "$WORK/check.out" || fail "check did not name the failing source: $(cat "$WORK/check.out")"

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
psql_db "$A" -c "SELECT write_events('$A', '$A-1', 50)" >/dev/null
wait_drained "$A" "${A}_${RUN_ID}" 60
grep -q "\[$B\].*does not exist" "$WORK/relay.log" || fail "failing source not reported"
grep -q "\[$B\] retrying in" "$WORK/relay.log" || fail "failing source not retried"

create_outbox_db "$B"
psql_db "$B" -c "SELECT pg_sleep(0)" >/dev/null
# The relay creates B's publication and slot on its next attempt; rows
# written after that are relayed.
for _ in $(seq 1 100); do
    [ -n "$(psql_db "$B" -c "SELECT 1 FROM pg_replication_slots WHERE slot_name = '${B}_${RUN_ID}'")" ] && break
    sleep 0.2
done
psql_db "$B" -c "SELECT write_events('$B', '$B-1', 30)" >/dev/null
wait_drained "$B" "${B}_${RUN_ID}" 60

: >"$WORK/expected.tsv"
expected_events "$A" "$WORK/expected.tsv"
expected_events "$B" "$WORK/expected.tsv"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"

kill -INT "$relay"
rc=0
wait "$relay" || rc=$?
[ $rc -eq 0 ] || fail "relay exited $rc after SIGINT"

# A replication slot that disappears after the source published is created
# again, and the relay says loudly that rows committed meanwhile were not
# relayed.
psql_db "$A" -c "SELECT pg_drop_replication_slot('${A}_${RUN_ID}')" >/dev/null
psql_db "$A" -c "SELECT write_events('$A', '$A-lost', 3)" >/dev/null
start_relay "$WORK/outboxd.yaml" relay-lostslot
lost=$RELAY_PID
wait_log "$WORK/relay-lostslot.log" "\[$A\].*was missing and has been created again" 20 \
    "a re-created slot was not reported"
log "lost slot reported: $(grep -m1 'was missing' "$WORK/relay-lostslot.log" | sed 's/^.*\] //' | cut -c1-120)..."
stop_relay_ok "$lost"

# Second signal: with Kafka unreachable the source is stuck in
# init_transactions; the first SIGTERM asks for a clean stop, the second
# must end the process at once.
sed "s/bootstrap_servers: .*/bootstrap_servers: \"127.0.0.1:$(free_port)\"/" "$WORK/outboxd.yaml" >"$WORK/nokafka.yaml"
start_relay "$WORK/nokafka.yaml" relay-nokafka
stuck=$RELAY_PID
sleep 2
kill -TERM "$stuck"
sleep 0.5
kill -0 "$stuck" || fail "expected the relay to still be waiting on Kafka after one signal"
t0=$(date +%s%N)
kill -TERM "$stuck"
rc=0
wait "$stuck" || rc=$?
ms=$((($(date +%s%N) - t0) / 1000000))
log "second signal: exit status $rc after ${ms} ms"
[ $rc -ne 0 ] || fail "second signal should exit non-zero"
[ $ms -lt 2000 ] || fail "second signal took ${ms} ms"
grep -q "second signal" "$WORK/relay-nokafka.log" || fail "no message for the second signal"

drop_source "$A" "${A}_${RUN_ID}"
drop_source "$B" "${B}_${RUN_ID}"
log "PASS"

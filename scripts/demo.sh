#!/usr/bin/env bash
# The main job, on a fresh machine: installs what is needed, builds, starts a
# local PostgreSQL and Kafka (tests/stack/stack.sh), creates the payment,
# order and member databases with their outbox tables, runs outboxd on
# config/outboxd.example.yaml, writes a small payment run as outbox rows
# (and one pg_logical_emit_message), and prints the decoded events as a
# read_committed consumer receives them. Everything is stopped at the end;
# with --keep the stack and the relay stay up (stop them with
# `STACK_DIR=/tmp/outboxd-demo tests/stack/stack.sh stop`).
#
#   scripts/demo.sh [--keep]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
KEEP=0
[ "${1:-}" = "--keep" ] && KEEP=1

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "installing dependencies"
scripts/install-deps.sh
step "building"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build outboxd okcat

export STACK_DIR=/tmp/outboxd-demo
RELAY=""
finish() {
    if [ "$KEEP" = 1 ]; then
        echo "kept running: relay pid ${RELAY:-none}, stack in $STACK_DIR"
        return
    fi
    [ -n "$RELAY" ] && kill -TERM "$RELAY" 2>/dev/null && wait "$RELAY" 2>/dev/null || true
    tests/stack/stack.sh stop --clean >/dev/null 2>&1 || true
}
trap finish EXIT
[ "$KEEP" = 1 ] || export STACK_OWNER_PID=$$
step "starting PostgreSQL and Kafka"
tests/stack/stack.sh start
# shellcheck disable=SC1091
source "$STACK_DIR/env"
export PGHOST PGPORT PGUSER KAFKA_BOOTSTRAP PATH="$PG_BIN:$PATH"

step "creating the payment, order and member databases with an outbox table each"
for db in payment order member; do
    psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" -c "CREATE DATABASE \"$db\""
    psql -X -q -d "$db" -c "CREATE TABLE outbox (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        aggregatetype text NOT NULL,
        aggregateid text NOT NULL,
        type text NOT NULL,
        payload jsonb NOT NULL,
        \"timestamp\" timestamptz NOT NULL DEFAULT now())"
done

step "outboxd check (creates each publication and slot)"
build/outboxd check -c config/outboxd.example.yaml

step "starting outboxd"
build/outboxd run -c config/outboxd.example.yaml 2> >(sed -u 's/^/  relay | /' >&2) &
RELAY=$!
sleep 2

step "a payment run, written as outbox rows in each service's own transaction"
psql -X -q -d payment -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES
    ('payment', 'order-1001', 'PaymentPending', '{\"orderId\": 1001, \"memberId\": 7, \"productId\": 42, \"quantity\": 2, \"couponId\": 5, \"amount\": 39800}')"
psql -X -q -d order -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES
    ('payment-result', 'order-1001', 'PaymentResult', '{\"orderId\": 1001, \"service\": \"order\", \"success\": true}')"
psql -X -q -d member -c "BEGIN;
    INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES
    ('payment-result', 'order-1001', 'PaymentResult', '{\"orderId\": 1001, \"service\": \"member\", \"success\": true, \"balanceAfter\": 60200}');
    COMMIT;"
psql -X -q -d payment -c "SELECT pg_logical_emit_message(true, 'outbox',
    '{\"id\": \"5d0f4a52-0000-4000-8000-000000001001\", \"aggregatetype\": \"complete-order\", \"aggregateid\": \"order-1001\", \"type\": \"CompleteOrder\", \"payload\": {\"orderId\": 1001, \"status\": \"COMPLETED\"}}')" >/dev/null

step "events as a read_committed consumer sees them (decoded from Avro)"
build/tests/tools/okcat -b "$KAFKA_BOOTSTRAP" -T '^outbox\.event\..*' --count 4 --idle-ms 3000 --json |
    grep '^{' | sed 's/^/  /'

step "stopping outboxd with SIGTERM"
kill -TERM "$RELAY"
rc=0
wait "$RELAY" || rc=$?
RELAY=""
echo "outboxd exited with status $rc"

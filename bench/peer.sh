#!/usr/bin/env bash
# outboxd and Debezium side by side, in the same run, on the same database:
#   1. throughput: a backlog of N single-row outbox transactions (default
#      100,000) drained by each (each has its own slot, both created before the
#      backlog), one after the other; each clock runs from its start (process
#      start for outboxd, connector registration for Debezium) until a
#      read_committed consumer, started before, has read all N records; the
#      drain part excludes startup (outboxd: until its "streaming slot" line;
#      Debezium: until its task is RUNNING);
#   2. latency: RATE transactions/s for SECONDS with both relaying live, a
#      read_committed consumer on each side (receipt minus PostgreSQL commit
#      time: from the event for outboxd; for Debezium from the record
#      timestamp, which its EventRouter takes from the row's timestamp column,
#      now() at the transaction's start), steady state only
#      (both consumers assigned and caught up, then BENCH_WARMUP_MS);
#      all of it after both carried the same load for BENCH_BROKER_WARMUP_S
#      (default 180, not counted: a warm broker and a warm Connect JVM;
#      broker_warmup in common.sh), and the CPU each used during it;
#   3. resident memory of each (outboxd process; the Connect worker JVM);
#   4. the floor beside Debezium (BENCH_PEER_FLOOR=0 skips it): outboxd
#      stopped, transactional librdkafka producers write its records at RATE
#      in its place while Debezium carries the same load: the p99 a relay
#      that costs nothing would have there, and Debezium's over it, the best
#      ratio any relay could reach on this machine.
# Debezium: PostgreSQL connector 3.0.8.Final + outbox EventRouter on Kafka
# Connect 3.9.1 distributed with exactly.once.source.support=enabled, JSON
# values (tests/stack/debezium.sh). outboxd: exactly-once, Avro envelope.
#   bench/peer.sh [N] [RATE] [SECONDS]
source "$(dirname "$0")/common.sh"
N=${1:-100000}
RATE=${2:-2000}
SECS=${3:-30}
WARMUP_MS=${BENCH_WARMUP_MS:-2000}
DBZ=$ROOT/tests/stack/debezium.sh
bench_db bench_peer
# Debezium's EventRouter sets the record timestamp to the processing time,
# unless table.field.event.timestamp names a column of an INT64 timestamp type
# (a timestamptz column is a string to it; timestamp(6) is MicroTimestamp).
# now() is the transaction's start, at most a single insert's duration before
# its commit, so both sides measure from the PostgreSQL transaction.
q -c "ALTER TABLE outbox ADD COLUMN \"timestamp\" timestamp(6) NOT NULL DEFAULT (now() AT TIME ZONE 'utc')"
q -c "SELECT pg_create_logical_replication_slot('peer_relay', 'pgoutput')" >/dev/null
q -c "SELECT pg_create_logical_replication_slot('peer_dbz', 'pgoutput')" >/dev/null
"$DBZ" start >&2
# shellcheck disable=SC1091
source "$STACK_DIR/connect/env"
BG+=("$CONNECT_PID")

printf '%s\n' '\set k random(1, 1000)' \
    "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', 'order-' || :k, 'OrderCreated', '{\"amount\": 12, \"currency\": \"EUR\", \"items\": [1, 2, 3]}');" \
    >"$WORK/insert.sql"
say "writing a backlog of $N single-row transactions"
pgbench -n -c 4 -j 2 -t $((N / 4)) -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench.log" 2>&1
END=$(q -c "SELECT pg_current_wal_lsn()")

# Both sides are timed the same way: a read_committed consumer started
# before the relay counts the backlog's N records (Debezium confirms to its
# slot only the LSNs of events it processed, so the slot is no clock for it).
"$ROOT/tests/stack/stack.sh" topic-create peer.order 3 >/dev/null 2>&1
"$ROOT/tests/stack/stack.sh" topic-create dbz.order 3 >/dev/null 2>&1
count_until() { # count_until TOPIC: blocks until N records are read
    "$OKCAT" -b "$KAFKA_BOOTSTRAP" -t "$1" --count "$N" --timeout-ms 1800000 >"$WORK/count.$1" 2>&1
}

# --- outboxd
bench_config "$WORK/outboxd.yaml" peer_relay bench_peer peer
count_until peer.order &
counter=$!
t0=$(now_ms)
"$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" 2>"$WORK/relay.log" &
relay=$!
BG+=("$relay")
wait "$counter" || { say "outboxd: backlog not read back"; cat "$WORK/count.peer.order" >&2; exit 1; }
t1=$(now_ms)
ts=$(grep -m1 "streaming slot" "$WORK/relay.log" | cut -d' ' -f1)
relay_start=$(($(date -d "$ts" +%s%3N) - t0))
relay_total=$((t1 - t0))

# --- Debezium
cat >"$WORK/dbz.json" <<EOF
{
 "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
 "tasks.max": "1",
 "database.hostname": "$PGHOST", "database.port": "$PGPORT", "database.user": "$PGUSER",
 "database.password": "unused", "database.dbname": "$DB",
 "topic.prefix": "dbz",
 "plugin.name": "pgoutput", "slot.name": "peer_dbz", "publication.name": "bench_pub",
 "publication.autocreate.mode": "disabled",
 "table.include.list": "public.outbox",
 "snapshot.mode": "no_data",
 "exactly.once.support": "required",
 "transforms": "outbox",
 "transforms.outbox.type": "io.debezium.transforms.outbox.EventRouter",
 "transforms.outbox.route.topic.replacement": "dbz.\${routedByValue}",
 "transforms.outbox.table.expand.json.payload": "true",
 "transforms.outbox.table.field.event.timestamp": "timestamp",
 "key.converter": "org.apache.kafka.connect.storage.StringConverter",
 "value.converter": "org.apache.kafka.connect.json.JsonConverter",
 "value.converter.schemas.enable": "false"
}
EOF
count_until dbz.order &
counter=$!
t0=$(now_ms)
"$DBZ" register outbox "$WORK/dbz.json" >&2
t_run=$(now_ms)
wait "$counter" || { say "debezium: backlog not read back"; cat "$WORK/count.dbz.order" >&2; exit 1; }
t1=$(now_ms)
dbz_start=$((t_run - t0))
dbz_total=$((t1 - t0))

n_relay=$(sed -n 's/^okcat: consumed=//p' "$WORK/count.peer.order")
n_dbz=$(sed -n 's/^okcat: consumed=//p' "$WORK/count.dbz.order")

# --- latency, both live, on a warm broker (broker_warmup, common.sh: both
# relays carry the same load first, not counted; it warms Connect's JVM too)
broker=$(pgrep -f "kafka.Kafka.*$STACK_DIR" | head -n 1 || true)
broker_warmup "$RATE" "$WORK/insert.sql" "$broker" peer.order=--latency dbz.order=--latency-from-timestamp
start_consumer() { # start_consumer TOPIC OUT [okcat args]; sets CONSUMER (not in $(...):
    # a consumer started in a subshell is not this shell's child to wait for)
    local topic=$1 out=$2
    shift 2
    rm -f "$out.ready"
    "$OKCAT" -b "$KAFKA_BOOTSTRAP" -t "$topic" "$@" --ready-file "$out.ready" --warmup-ms "$WARMUP_MS" \
        -X auto.offset.reset=latest --idle-ms 8000 --timeout-ms $(((SECS + 240) * 1000)) \
        "${FETCH_OPTS[@]}" >"$out" 2>&1 &
    CONSUMER=$!
    BG+=("$CONSUMER")
}
start_consumer peer.order "$WORK/lat.relay" --latency
c1=$CONSUMER
start_consumer dbz.order "$WORK/lat.dbz" --latency-from-timestamp
c2=$CONSUMER
until [ -e "$WORK/lat.relay.ready" ] && [ -e "$WORK/lat.dbz.ready" ]; do sleep 0.1; done
TOTAL=$((SECS + (WARMUP_MS + 999) / 1000))
say "writing $RATE transactions/s for $TOTAL s with both relays live"
hz=$(getconf CLK_TCK)
r0=$(cpu_ticks "$relay") d0=$(cpu_ticks "$CONNECT_PID") b0=$( [ -n "$broker" ] && cpu_ticks "$broker" || echo 0)
j0=$( [ -n "$broker" ] && broker_jit_ms "$broker" || echo 0) dj0=$(broker_jit_ms "$CONNECT_PID")
t_load=$(now_ms)
pgbench -n -c 4 -j 2 -R "$RATE" -T "$TOTAL" -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench2.log" 2>&1
t_load=$(($(now_ms) - t_load))
r1=$(cpu_ticks "$relay") d1=$(cpu_ticks "$CONNECT_PID") b1=$( [ -n "$broker" ] && cpu_ticks "$broker" || echo 0)
j1=$( [ -n "$broker" ] && broker_jit_ms "$broker" || echo 0) dj1=$(broker_jit_ms "$CONNECT_PID")
wait "$c1" "$c2" || true
rss_relay=$(awk '/VmHWM/ {print $2}' "/proc/$relay/status")
rss_dbz=$(awk '/VmHWM/ {print $2}' "/proc/$CONNECT_PID/status")
kill -TERM "$relay"
wait "$relay" || true

# --- the floor beside Debezium (BENCH_PEER_FLOOR=0 skips it): what a relay
# that spends nothing of its own would show in outboxd's place. outboxd is
# stopped; Debezium keeps relaying the same pgbench load at RATE, a
# pg_recvlogical decodes it from a slot of its own (outboxd's walsender),
# and transactional librdkafka producers (tests/tools/kafka_ceiling, the
# relay's ring) write outboxd's own record at RATE, each stamped with the
# moment it came due and read back by the same kind of consumer. Debezium's
# p99 over this floor's p99 is the best ratio any relay could reach against
# Debezium on this machine, beside this load.
floor_done=0
if [ "${BENCH_PEER_FLOOR:-1}" != 0 ]; then
    "$OKCAT" -b "$KAFKA_BOOTSTRAP" -t ceil.peer -t ceil.peer.ck --create-topics 3 >/dev/null
    q -c "SELECT pg_create_logical_replication_slot('peer_floor', 'pgoutput')" >/dev/null
    pg_recvlogical -d "$DB" --slot peer_floor --start -o proto_version=1 \
        -o publication_names=bench_pub -f /dev/null 2>"$WORK/recvlogical.log" &
    recv=$!
    BG+=("$recv")
    start_consumer ceil.peer "$WORK/floor.out" --latency-from-timestamp
    c1=$CONSUMER
    start_consumer dbz.order "$WORK/floor.dbz" --latency-from-timestamp
    c2=$CONSUMER
    until [ -e "$WORK/floor.out.ready" ] && [ -e "$WORK/floor.dbz.ready" ]; do sleep 0.1; done
    say "the floor: kafka_ceiling at $RATE/s for $TOTAL s beside Debezium carrying the same load"
    pgbench -n -c 4 -j 2 -R "$RATE" -T "$TOTAL" -f "$WORK/insert.sql" "$DB" >"$WORK/pgbench3.log" 2>&1 &
    load=$!
    BG+=("$load")
    KAFKA_CEILING_MODE=$(ceiling_mode) KAFKA_CEILING_RATE=$RATE "$BUILD/tests/tools/kafka_ceiling" "$KAFKA_BOOTSTRAP" ceil.peer \
        $((RATE * TOTAL)) from:peer.order 5000 ${BENCH_KAFKA_PROPS:-} >"$WORK/ceiling.out" 2>&1 ||
        cat "$WORK/ceiling.out" >&2
    wait "$load" || true
    kill -TERM "$recv" 2>/dev/null || true
    wait "$recv" 2>/dev/null || true
    wait "$c1" "$c2" || true
    floor_done=1
fi
"$DBZ" stop >&2

awk -v n="$N" -v rs="$relay_start" -v rt="$relay_total" -v ds="$dbz_start" -v dt="$dbz_total" \
    -v nr="${n_relay:-0}" -v nd="${n_dbz:-0}" 'BEGIN {
    printf "peer: backlog of %d single-row transactions\n", n;
    printf "peer: outboxd  drain %.0f events/s (%.2f s after %.2f s startup), read back %d\n", n / ((rt - rs) / 1000), (rt - rs) / 1000, rs / 1000, nr;
    printf "peer: debezium drain %.0f events/s (%.2f s after %.2f s until its task ran), read back %d\n", n / ((dt - ds) / 1000), (dt - ds) / 1000, ds / 1000, nd;
    printf "peer: throughput ratio outboxd / debezium = %.2f (target >= 3)\n", ((dt - ds) / (rt - rs));
}'
for side in relay dbz; do
    grep -E "^okcat: (latency|warmup_latency)" "$WORK/lat.$side" | sed -e "s/^okcat: /peer: $side /" || {
        say "no latency figures from the $side consumer:"
        tail -n 5 "$WORK/lat.$side" >&2
    }
done
awk -v r=$((r1 - r0)) -v d=$((d1 - d0)) -v b=$((b1 - b0)) -v j=$((j1 - j0)) -v dj=$((dj1 - dj0)) -v hz="$hz" -v ms="$t_load" 'BEGIN {
    printf "peer: cpu during the latency load (share of one core, 2 in all): outboxd %.0f%%, debezium (Connect JVM) %.0f%% (its JIT %.1f%%), broker %.0f%% (its JIT %.1f%%)\n",
        100 * r / hz / (ms / 1000), 100 * d / hz / (ms / 1000), dj / ms * 100, 100 * b / hz / (ms / 1000), j / ms * 100
}'
if [ "$floor_done" = 1 ]; then
    grep -E "^okcat: latency_ms" "$WORK/floor.out" |
        sed "s|^okcat: latency_ms|peer: floor (kafka_ceiling, mode $(ceiling_mode), in outboxd's place beside Debezium and the same load; receipt - moment due) latency_ms|" ||
        { say "no latency figures from the floor's consumer:"; tail -n 5 "$WORK/floor.out" >&2; }
    grep -E "^okcat: latency_ms" "$WORK/floor.dbz" | sed "s|^okcat: latency_ms|peer: dbz beside the floor latency_ms|" || true
    # p99=... of each: Debezium's over the floor's is the best ratio any
    # relay could show against Debezium here.
    fp=$(sed -n 's/^okcat: latency_ms.* p99=\([0-9.]*\).*/\1/p' "$WORK/floor.out")
    dp=$(sed -n 's/^okcat: latency_ms.* p99=\([0-9.]*\).*/\1/p' "$WORK/floor.dbz")
    [ -z "$fp" ] || [ -z "$dp" ] || awk -v f="$fp" -v d="$dp" 'BEGIN {
        if (f > 0) printf "peer: best p99 ratio any relay could show here: debezium %.1f / floor %.1f ms = %.1fx (target 30x)\n", d, f, d / f }'
fi
echo "peer: peak RSS outboxd $((rss_relay / 1024)) MB, debezium (Connect worker JVM) $((rss_dbz / 1024)) MB"

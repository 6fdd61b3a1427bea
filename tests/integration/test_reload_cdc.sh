#!/usr/bin/env bash
# ctest: parallel
# SIGHUP reload with a cdc table. The cdc module reads its table settings
# (topic, columns, masks) from the configuration it was made with, and the
# relay frees the previous configuration once every source has moved on, so a
# reload must hand cdc a new instance built from the new configuration (and
# the snapshot its new settings). 100 rows are inserted and drained under
# topic A, the topic is changed to B with SIGHUP, then 100 more rows are
# inserted and one of the first is updated: exactly ids 1..100 on A (creates),
# exactly ids 101..200 plus the update on B. Before the fix the second half
# still went to A, read from freed memory (the ASan pass reports it).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=cdcr_$RUN_ID
SLOT=${DB}_${RUN_ID}
psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" -c "CREATE TABLE items (id integer PRIMARY KEY, v text)" >/dev/null

conf() { # conf FILE TOPIC
    cat >"$1" <<EOF2
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
relay:
  commit_interval_ms: 20
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  missing_topic: create
  create_topic_partitions: 1
sources:
  - name: items
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "$SLOT"
    tables:
      - table: public.items
        mode: cdc
        snapshot: never
        format: json
        topic: "$2"
EOF2
}
CONF=$WORK/outboxd.yaml
conf "$CONF" "$RUN_ID.a"
prepare_sources "$CONF"
start_relay "$CONF"
relay=$RELAY_PID

insert() { # insert LO HI: one transaction per row
    for i in $(seq "$1" "$2"); do echo "INSERT INTO items VALUES ($i, 'v$i');"; done | psql_db "$DB" >/dev/null
}
insert 1 100
wait_drained "$DB" "$SLOT" 120

conf "$CONF.new" "$RUN_ID.b"
mv "$CONF.new" "$CONF"
kill -HUP "$relay"
for _ in $(seq 1 300); do grep -q "reload: configuration 1 applied" "$WORK/relay.log" && break; sleep 0.2; done
grep -q "reload: configuration 1 applied" "$WORK/relay.log" || fail "the reload was not applied"
insert 101 200
psql_db "$DB" -c "UPDATE items SET v = 'changed' WHERE id = 7" >/dev/null
wait_drained "$DB" "$SLOT" 120
kill -0 "$relay" || fail "the relay died after the reload"

ids() { # ids TOPIC: "op id" of every record (read to the end), sorted
    "$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -t "$1" --idle-ms 3000 --timeout-ms 30000 --json >"$WORK/$1.json" ||
        { log "okcat: $(head -c 500 "$WORK/$1.json")"; return 1; }
    python3 -c '
import json, sys
for line in sys.stdin:
    if not line.startswith("{"):
        continue  # the okcat summary line
    v = json.loads(line)["value"]
    if isinstance(v, str):
        v = json.loads(v)
    p = v.get("payload", v)
    print(p["op"], (p["after"] or p["before"])["id"])' <"$WORK/$1.json" | sort -k1,1 -k2n
}
a=$(ids "$RUN_ID.a") || fail "topic A could not be read: $(head -c 600 "$WORK/$RUN_ID.a.json")"
b=$(ids "$RUN_ID.b") || fail "topic B could not be read"
[ "$a" = "$(for i in $(seq 1 100); do echo "c $i"; done)" ] || fail "topic A is not exactly creates 1..100: $(head -c 300 <<<"$a")"
[ "$b" = "$( (for i in $(seq 101 200); do echo "c $i"; done; echo "u 7") | sort -k1,1 -k2n)" ] ||
    fail "topic B is not exactly creates 101..200 and the update of 7: $(head -c 300 <<<"$b")"
log "topic A: 100 creates (1..100); topic B: 100 creates (101..200) and the update of id 7"
stop_relay_ok "$relay"
drop_source "$DB" "$SLOT"
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# A snapshot row Kafka refuses for good (bigger than the topic's
# max.message.bytes) goes to the dead-letter topic, with a reason naming the
# table and the key, in the same Kafka transaction as the rest of its chunk
# and the chunk's progress; the snapshot goes on and streaming starts after
# it. Before this, the chunk was retried forever.
#
# ROWS rows (3000) exist before the relay first runs; row BIG (1777, in the
# middle of a chunk of CHUNK rows) carries a 300 kB text, the others about
# 70 bytes. The table's topic has one partition and max.message.bytes
# 262144: a chunk of small events fits in one batch, the big event does not
# (alone, nor in the batch it shares with its neighbours). After the
# snapshot, 10 inserts and one update are streamed. At the end, read with
# read_committed:
#   - the chunk holding BIG is refused as a whole at most once, and read
#     again with as many rows, BIG going to the dead-letter topic;
#   - every row but BIG has exactly one "r" event, BIG none; the streamed
#     changes are there exactly once; one event carries snapshot "last";
#   - the dead-letter topic has exactly one record: BIG's row, with the
#     reason naming public.items and (id)=(1777) and the broker's refusal.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

ROWS=3000
BIG=1777
CHUNK=250
DB=snapref_$RUN_ID
SLOT="${DB}_slot"
TOPIC="$RUN_ID.cdc.items"
extra_cleanup() {
    for p in "${RELAY_PIDS[@]}"; do own_child "$p" && kill -9 "$p" 2>/dev/null || true; done
    wait "${RELAY_PIDS[@]}" 2>/dev/null || true
    drop_source "$DB" "$SLOT"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}

psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
psql_db "$DB" <<SQL
CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL, pad text);
INSERT INTO items SELECT i, 0, md5(i::text) FROM generate_series(1, $ROWS) AS i;
UPDATE items SET pad = repeat('x', 300000) WHERE id = $BIG;
SQL
"$STACK_SH" topic-create "$TOPIC" 1 max.message.bytes=262144 >&2
log "table has $ROWS rows, row $BIG with a 300 kB text; topic $TOPIC takes at most 262144 bytes per batch"

cat >"$WORK/outboxd.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
relay:
  commit_interval_ms: 20
  max_batch_events: $CHUNK
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
sources:
  - name: $DB
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "$SLOT"
    publication: "${DB}_pub"
    tables:
      - { table: public.items, mode: cdc, topic: "$TOPIC", format: json, json_schemas: false, snapshot: initial }
EOF
prepare_sources "$WORK/outboxd.yaml"

start_relay "$WORK/outboxd.yaml" relay
for _ in $(seq 1 900); do
    grep -q "snapshot finished" "$WORK/relay.log" && break
    kill -0 "$RELAY_PID" 2>/dev/null || fail "the relay exited during the snapshot"
    sleep 0.2
done
grep -q "snapshot finished" "$WORK/relay.log" ||
    fail "the snapshot did not finish within 180 s ($(grep -c 'resuming from the last committed chunk\|retrying in' "$WORK/relay.log") retries logged)"
grep "snapshot row sent to dead-letter topic\|goes to the dead-letter topic" "$WORK/relay.log" | cut -c1-300 >&2 || true
# The refused chunk is read again as it was (as many rows), so BIG is found
# in it at the first retry: at most one refusal of the whole chunk and one
# "is in" (none when librdkafka happened to send BIG in a batch of its own,
# which the relay then names at once). (Reading a first chunk of 64 rows
# after the reconnect committed rows without BIG, logged "is in" and had the
# next chunk refused again: 4 times.)
together=$(grep -c "records of one chunk together" "$WORK/relay.log" || true)
isin=$(grep -c "the refused chunk is in" "$WORK/relay.log" || true)
[ "$together" -le 1 ] && [ "$isin" -le 1 ] ||
    fail "the chunk holding row $BIG was refused together $together time(s) and logged in $isin time(s), expected at most once each"
# Each producer that carried a refusal is replaced after the abort (with
# librdkafka 2.0 its next transaction failed on the sequence gap the refused
# record left, "requires epoch bump": two more retries, 3 s of backoff).
n_gap=$(grep -c "requires epoch bump\|OUT_OF_ORDER_SEQUENCE" "$WORK/relay.log" || true)
[ "$n_gap" -eq 0 ] || fail "$n_gap transaction(s) failed on a producer left with a refused record's sequence gap"

psql_db "$DB" -c "INSERT INTO items SELECT i, 1, 'new ' || i FROM generate_series($ROWS + 1, $ROWS + 10) AS i" \
    -c "UPDATE items SET v = 2 WHERE id = 5" >/dev/null
wait_drained "$DB" "$SLOT" 120
stop_relay_ok "$RELAY_PID"

consume_json -t "$TOPIC" >"$WORK/items.jsonl"
consume_json -t "$RUN_ID.dlt" >"$WORK/dlt.jsonl"
python3 - "$WORK" "$ROWS" "$BIG" <<'PY' || fail "refused snapshot row check failed"
import json, sys
w, rows, big = sys.argv[1], int(sys.argv[2]), sys.argv[3]
bad = []
count, last, streamed = {}, 0, []
for line in open(f"{w}/items.jsonl"):
    v = json.loads(line).get("value")
    if v is None:
        continue
    v = json.loads(v) if isinstance(v, str) else v
    if v["op"] == "r":
        k = str(v["after"]["id"])
        count[k] = count.get(k, 0) + 1
        if v["source"]["snapshot"] == "last":
            last += 1
    else:
        streamed.append((v["op"], str(v["after"]["id"]), v["after"]["v"]))
want = {str(i) for i in range(1, rows + 1)} - {big}
missing = sorted(want - set(count), key=int)
twice = sorted((k for k, n in count.items() if n > 1), key=int)
print(f"r events: {sum(count.values())} for {len(count)} keys; streamed: {len(streamed)}; "
      f"snapshot=last: {last}", file=sys.stderr)
if missing:
    bad.append(f"{len(missing)} rows missing, e.g. {missing[:5]}")
if twice:
    bad.append(f"{len(twice)} rows twice, e.g. {twice[:5]}")
if big in count:
    bad.append(f"the refused row {big} has an r event on the topic")
if set(count) - want - {big}:
    bad.append(f"unexpected keys {sorted(set(count) - want)[:5]}")
if last != 1:
    bad.append(f"{last} events with snapshot 'last', expected 1")
want_streamed = sorted([("c", str(i), 1) for i in range(rows + 1, rows + 11)] + [("u", "5", 2)])
if sorted(streamed) != want_streamed:
    bad.append(f"streamed changes {sorted(streamed)[:12]} differ from {want_streamed}")
dl = [json.loads(l) for l in open(f"{w}/dlt.jsonl")]
print(f"dead letters: {len(dl)}", file=sys.stderr)
if len(dl) != 1:
    bad.append(f"{len(dl)} dead-letter records, expected 1")
for d in dl:
    h = d.get("headers") or {}
    reason = h.get("outboxd.reason", "")
    print(f"  headers: {json.dumps(h)[:400]}", file=sys.stderr)
    val = d["value"]
    val = json.loads(val) if isinstance(val, str) else val
    after = val.get("after") or {}
    if h.get("outboxd.table") != "public.items":
        bad.append(f"dead letter names table {h.get('outboxd.table')!r}")
    for part in ("public.items", f"(id)=({big})", "Kafka refused the record", "too large"):
        if part not in reason:
            bad.append(f"dead-letter reason lacks {part!r}: {reason!r}")
    if str(after.get("id")) != big or len(after.get("pad") or "") != 300000:
        bad.append(f"dead letter does not hold row {big} whole (id {after.get('id')}, "
                   f"pad {len(after.get('pad') or '')} chars)")
for b in bad:
    print("  " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
log "PASS"

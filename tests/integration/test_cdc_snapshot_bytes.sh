#!/usr/bin/env bash
# ctest: parallel
# A snapshot's chunks are bounded in bytes, not only in rows. A table of
# ROWS rows of about 150 kB each (60 MB) with the default max_batch_events
# (5,000 rows): before, the whole table was one chunk, held twice in memory
# until its Kafka commit (libpq's result and librdkafka's queue), so rows of
# 1 MB made 5,000-row chunks of 10 GB resident. Now the first chunk a
# session reads of a table is 64 rows, and the bytes per row measured on
# each chunk size the next to about 16 MB. Checked:
#   - the relay's debug lines: the first chunk is 64 rows, no chunk holds
#     more than 16 MB plus one row, every row is in some chunk;
#   - every row has exactly one "r" event in Kafka (read_committed), and a
#     change after the snapshot streams;
#   - outside the sanitizer build, the relay's peak RSS stays under 96 MB
#     (measured 49 MB; with the whole table in one chunk, 133 MB);
#   - a second table, rnd: RND_ROWS rows of 600 kB of random bytes (TOAST
#     cannot compress them), analyzed: the catalog's size per row (doubled:
#     bytea arrives as hex text) makes its first chunk 13 rows (16 MB over
#     1.2 MB), at most 16 checked, where the fixed first chunk of 64 rows
#     read the whole table (72 MB of text) at once; every row has one "r"
#     event. The same for rndp, partitioned (its rows are its partitions':
#     the parent's own size is 0).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

ROWS=400
RND_ROWS=60
DB=snapbytes_$RUN_ID
SLOT="${DB}_slot"
TOPIC="$RUN_ID.cdc.big"
RSS_LIMIT_KB=98304
extra_cleanup() {
    drop_source "$DB" "$SLOT"
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
}
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
# 4,700 md5s: 150,400 bytes of text per row (TOAST compresses it on disk;
# the query's answer has it in full).
psql_db "$DB" <<SQL >/dev/null
CREATE TABLE big (id bigint PRIMARY KEY, pad text NOT NULL);
INSERT INTO big SELECT i, repeat(md5(i::text), 4700) FROM generate_series(1, $ROWS) i;
CREATE TABLE rnd (id bigint PRIMARY KEY, b bytea NOT NULL);
INSERT INTO rnd SELECT i, decode(string_agg(md5(random()::text || j), ''), 'hex')
FROM generate_series(1, $RND_ROWS) i, generate_series(1, 37500) j GROUP BY i;
ANALYZE rnd;
CREATE TABLE rndp (id bigint PRIMARY KEY, b bytea NOT NULL) PARTITION BY RANGE (id);
CREATE TABLE rndp_1 PARTITION OF rndp FOR VALUES FROM (1) TO (31);
CREATE TABLE rndp_2 PARTITION OF rndp FOR VALUES FROM (31) TO (1000);
INSERT INTO rndp SELECT * FROM rnd;
ANALYZE rndp;
SQL
{
    RELAY_LOG_LEVEL=debug config_header
    cat <<EOF
  - name: $DB
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "$SLOT"
    publication: "${DB}_pub"
    tables:
      - table: public.big
        mode: cdc
        topic: "$TOPIC"
        format: json
        json_schemas: false
        snapshot: initial
      - table: public.rnd
        mode: cdc
        topic: "$TOPIC.rnd"
        format: json
        json_schemas: false
        snapshot: initial
      - table: public.rndp
        mode: cdc
        topic: "$TOPIC.rndp"
        format: json
        json_schemas: false
        snapshot: initial
EOF
} >"$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
wait_log "$WORK/relay.log" "snapshot finished" 120 "the snapshot did not finish"
kill -0 "$relay" 2>/dev/null || fail "the relay exited after the snapshot"
peak=$(peak_rss_kb "$relay")
psql_db "$DB" -c "UPDATE big SET pad = 'after' WHERE id = 7" >/dev/null
wait_drained "$DB" "$SLOT"
stop_relay_ok "$relay"

# "snapshot of public.big: N rows published (chunk of K rows, B bytes: ..."
sed -n 's/.*snapshot of public\.big: [0-9]* rows published (chunk of \([0-9]*\) rows, \([0-9]*\) bytes.*/\1 \2/p' \
    "$WORK/relay.log" >"$WORK/chunks"
log "chunks (rows bytes): $(tr '\n' ';' <"$WORK/chunks")"
awk -v rows="$ROWS" '
    NR == 1 && $1 != 64 { print "the first chunk has " $1 " rows, expected 64"; bad = 1 }
    $2 > 16 * 1048576 + 160000 { print "a chunk of " $1 " rows holds " $2 " bytes, over 16 MB and a row"; bad = 1 }
    { sum += $1 }
    END {
        if (NR < 4) { print "only " NR " chunk(s)"; bad = 1 }
        if (sum != rows) { print "the chunks hold " sum " rows, expected " rows; bad = 1 }
        exit bad
    }' "$WORK/chunks" >&2 || fail "snapshot chunks are not bounded in bytes (rows bytes: $(tr '\n' ';' <"$WORK/chunks"))"

for tb in rnd rndp; do
    sed -n "s/.*snapshot of public\\.$tb: [0-9]* rows published (chunk of \\([0-9]*\\) rows, \\([0-9]*\\) bytes.*/\\1 \\2/p" \
        "$WORK/relay.log" >"$WORK/chunks_$tb"
    log "$tb chunks (rows bytes): $(tr '\n' ';' <"$WORK/chunks_$tb")"
    awk -v rows="$RND_ROWS" -v tb="$tb" '
        NR == 1 && $1 > 16 { print "the first chunk of " tb " has " $1 " rows, expected at most 16"; bad = 1 }
        { sum += $1 }
        END { if (sum != rows) { print "the chunks of " tb " hold " sum " rows, expected " rows; bad = 1 }; exit bad }' \
        "$WORK/chunks_$tb" >&2 || fail "the first chunk of $tb is not sized from the catalog (rows bytes: $(tr '\n' ';' <"$WORK/chunks_$tb"))"
    n_rnd=$(consume_json -T "^$TOPIC\\.$tb\$" | jq -r '(.value | if type == "string" then fromjson else . end) | select(.op == "r" and (.after.b | length) == 800000) | .after.id' | sort -u | wc -l)
    [ "$n_rnd" -eq "$RND_ROWS" ] || fail "expected $RND_ROWS r events of $tb with 600 kB each, got $n_rnd"
done

consume_json -T "^$TOPIC\$" | jq -r '(.value | if type == "string" then fromjson else . end) | "\(.op) \(.after.id) \(.after.pad | length)"' >"$WORK/events"
n_r=$(awk '$1 == "r" && $3 == 150400' "$WORK/events" | awk '{print $2}' | sort -un | wc -l)
all_r=$(awk '$1 == "r"' "$WORK/events" | wc -l)
[ "$n_r" -eq "$ROWS" ] && [ "$all_r" -eq "$ROWS" ] ||
    fail "expected $ROWS r events of distinct rows with their 150400-byte text, got $all_r events of $n_r rows"
grep -qx "u 7 5" "$WORK/events" || fail "the update after the snapshot is missing: $(grep -v '^r ' "$WORK/events" | head -3)"
log "$ROWS rows in $(wc -l <"$WORK/chunks") chunks, each once in Kafka; the relay's peak RSS ${peak} kB"
if [ "${OUTBOXD_SANITIZE:-0}" = 1 ]; then
    log "sanitizer build: RSS bound not checked"
else
    [ "$peak" -lt "$RSS_LIMIT_KB" ] || fail "peak RSS ${peak} kB is over ${RSS_LIMIT_KB} kB"
fi
log "PASS"

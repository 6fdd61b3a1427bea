#!/usr/bin/env bash
# ctest: serial -- asserts the relay's peak RSS
# Input the router must validate before encoding (issue 5, items 6 to 8):
#  1. bytes that are not UTF-8 (a SQL_ASCII database stores them unchecked)
#     are dead-lettered with a reason and a valid JSON value (base64), and
#     the stream goes on: no "out of memory", no rewind loop;
#  2. on_update: publish with an unchanged TOASTed payload: under REPLICA
#     IDENTITY FULL the old image's value is published; without FULL the row
#     is dead-lettered telling the user to set it (never a fake value);
#  3. a payload of several MB over a small max_event_bytes is dead-lettered
#     from its raw size: the relay's peak RSS grows by well under a few times
#     the row size (measured with VmHWM, bound asserted and printed).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

SEED=${SEED:-$RANDOM}
PARTS=${PARTS:-1 2 3 4 5} # a subset runs alone, e.g. PARTS=2
part() { [[ " $PARTS " == *" $1 "* ]]; }
log "seed $SEED (payload contents; SEED=$SEED reproduces)"

outbox_ddl() { # outbox_ddl TABLE: columns nullable, so bad rows can be written
    cat <<SQL
CREATE TABLE $1 (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,
    aggregateid text,
    type text,
    payload jsonb,
    status text,
    "timestamp" timestamptz NOT NULL DEFAULT now()
);
SQL
}

# ---- 1. non-UTF-8 bytes from a SQL_ASCII database ----
test_utf8() {
DB=iascii_$RUN_ID
psql_db postgres -c "CREATE DATABASE \"$DB\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" >/dev/null
[ "$(psql_db "$DB" -c "SHOW server_encoding")" = SQL_ASCII ] || fail "database is not SQL_ASCII"
outbox_ddl outbox | psql_db "$DB" >/dev/null
write_config "$WORK/ascii.yaml" "$DB"
prepare_sources "$WORK/ascii.yaml"
start_relay "$WORK/ascii.yaml" relay
relay=$RELAY_PID
psql_db "$DB" <<SQL
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', 'k-1', 'Good', '{"seq": 1}');
-- 0xff 0xfe in the payload and in the key
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
VALUES ('$DB', E'bad-\\xff\\xfe', 'BadBytes', E'{"text": "\\xff\\xfe"}');
-- bad bytes plus another reason to dead-letter (NULL type): before the fix
-- the dead-letter JSON failed ("out of memory") and the source rewound forever
INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
VALUES ('$DB', E'bad2-\\xff\\xfe', NULL, E'{"text": "\\xff\\xfe"}');
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', 'k-1', 'Good', '{"seq": 2}');
SQL
[ "$(psql_db "$DB" -c "SELECT count(*) FROM outbox WHERE position(E'\\\\xff'::bytea in convert_to(aggregateid, 'SQL_ASCII')) > 0")" = 2 ] ||
    fail "the bad bytes were not stored"
wait_drained "$DB" "${DB}_${RUN_ID}" 120
consume_json -t "$RUN_ID.ev.$DB" >"$WORK/ascii_events.json"
consume_json -t "$RUN_ID.dlt" >"$WORK/ascii_dlt.json"
cat "$WORK/ascii_dlt.json" >&2
n_ev=$(wc -l <"$WORK/ascii_events.json")
n_dlt=$(wc -l <"$WORK/ascii_dlt.json")
log "SQL_ASCII: $n_ev events (want 2), $n_dlt dead letters (want 2)"
[ "$n_ev" -eq 2 ] || fail "expected the 2 good rows as events, got $n_ev"
[ "$n_dlt" -eq 2 ] || fail "expected 2 dead-letter records, got $n_dlt"
grep -q "BadBytes" "$WORK/ascii_events.json" && fail "a row with invalid UTF-8 was published as an event"
grep -q "is not valid UTF-8 (byte 0xff" "$WORK/ascii_dlt.json" || fail "no invalid-UTF-8 reason"
grep -q "type column 'type' is NULL" "$WORK/ascii_dlt.json" || fail "no NULL-type reason"
grep -q 'base64' "$WORK/ascii_dlt.json" || fail "dead-letter reason does not say how the bytes are kept"
# Each dead-letter value is JSON holding the raw bytes: {"base64": "..."}
# decodes back to 0xff 0xfe.
jq -r '.value' "$WORK/ascii_dlt.json" | while read -r v; do
    b64=$(jq -r '.aggregateid.base64' <<<"$v") || fail "dead-letter value is not JSON: $v"
    [ "$(printf %s "$b64" | base64 -d | tail -c 2 | od -An -tx1 | tr -d ' ')" = fffe ] ||
        fail "aggregateid bytes not kept: $b64"
done
grep -q "out of memory" "$WORK/relay.log" && fail "relay reported out of memory"
grep -q "rewinding" "$WORK/relay.log" && fail "relay rewound"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
}

# ---- 2. TOAST under on_update: publish ----
test_toast() {
DB=itoast_$RUN_ID
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
{
    outbox_ddl outbox_full
    echo "ALTER TABLE outbox_full REPLICA IDENTITY FULL;"
    outbox_ddl outbox_def
} | psql_db "$DB" >/dev/null
cat >"$WORK/toast.yaml" <<EOF2
kafka: { bootstrap_servers: "$KAFKA_BOOTSTRAP", transactional_id_prefix: "outboxd-$RUN_ID" }
relay: { checkpoint_topic: "$RUN_ID.checkpoints", dead_letter_topic: "$RUN_ID.dlt2" }
sources:
  - name: $DB
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "${DB}_${RUN_ID}"
    publication: "outboxd_pub"
    tables:
      - { table: public.outbox_full, on_update: publish, topic: "$RUN_ID.toast.\${aggregatetype}" }
      - { table: public.outbox_def, on_update: publish, topic: "$RUN_ID.toast.\${aggregatetype}" }
EOF2
prepare_sources "$WORK/toast.yaml"
start_relay "$WORK/toast.yaml" relay_toast
relay=$RELAY_PID
# 64 KB of md5 hex: stored out of line (TOASTed) even if compressed.
blob="(SELECT string_agg(md5('$SEED' || i), '') FROM generate_series(1, 2000) i)"
psql_db "$DB" <<SQL
INSERT INTO outbox_full (aggregatetype, aggregateid, type, payload) VALUES ('full', 'f-1', 'Big', jsonb_build_object('blob', $blob));
INSERT INTO outbox_def (aggregatetype, aggregateid, type, payload) VALUES ('def', 'd-1', 'Big', jsonb_build_object('blob', $blob));
SQL
[ "$(psql_db "$DB" -c "SELECT pg_column_size(payload) > 8192 AND pg_total_relation_size(reltoastrelid) > 0 FROM outbox_full, pg_class WHERE relname = 'outbox_full'")" = t ] ||
    fail "payload was not TOASTed"
psql_db "$DB" -c "UPDATE outbox_full SET status = 'sent'" -c "UPDATE outbox_def SET status = 'sent'"
wait_drained "$DB" "${DB}_${RUN_ID}" 120
want_md5=$(psql_db "$DB" -c "SELECT md5(payload->>'blob') FROM outbox_full")
consume_json -T "^$RUN_ID\\.toast\\..*" >"$WORK/toast_events.json"
consume_json -t "$RUN_ID.dlt2" >"$WORK/toast_dlt.json"
jq -c '{topic, key, dlt: .headers["outboxd.reason"]}' "$WORK/toast_dlt.json" >&2
n_full=$(grep -c '"key":"f-1"' "$WORK/toast_events.json" || true)
log "TOAST: outbox_full events $n_full (want 2: insert and update), dead letters $(wc -l <"$WORK/toast_dlt.json") (want 1)"
[ "$n_full" -eq 2 ] || fail "REPLICA IDENTITY FULL: expected insert and update events for f-1, got $n_full"
jq -r 'select(.key == "f-1") | .value.payload.blob' "$WORK/toast_events.json" | while read -r b; do
    [ "$(printf %s "$b" | md5sum | cut -d' ' -f1)" = "$want_md5" ] || fail "f-1 event payload differs from the row's"
done
[ "$(grep -c '"key":"d-1"' "$WORK/toast_events.json" || true)" -eq 1 ] || fail "outbox_def: expected only the insert as an event"
[ "$(wc -l <"$WORK/toast_dlt.json")" -eq 1 ] || fail "expected 1 dead-letter record (the outbox_def update)"
grep -q "unchanged TOASTed value.*REPLICA IDENTITY FULL" "$WORK/toast_dlt.json" || fail "no REPLICA IDENTITY FULL reason"
grep -q "public.outbox_def REPLICA IDENTITY FULL" "$WORK/toast_dlt.json" || fail "the reason does not name the table"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
}

# ---- 3. memory bounded by max_event_bytes, not by the row ----
test_memory() {
DB=imem_$RUN_ID
psql_db postgres -c "CREATE DATABASE \"$DB\"" >/dev/null
outbox_ddl outbox | psql_db "$DB" >/dev/null
write_config "$WORK/mem.yaml" "$DB"
sed -i "s/^relay:/relay:\n  max_event_bytes: 100000/; s/$RUN_ID.dlt/$RUN_ID.dlt3/" "$WORK/mem.yaml"
prepare_sources "$WORK/mem.yaml"
start_relay "$WORK/mem.yaml" relay_mem
relay=$RELAY_PID
psql_db "$DB" -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', 'm-1', 'Small', '{\"seq\": 1}')"
wait_drained "$DB" "${DB}_${RUN_ID}" 120
base_kb=$(peak_rss_kb "$relay")
ROW_MB=${ROW_MB:-8}
psql_db "$DB" -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', 'm-2', 'Huge', jsonb_build_object('blob', (SELECT string_agg(md5('$SEED' || i), '') FROM generate_series(1, $ROW_MB * 32768) i)))"
psql_db "$DB" -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', 'm-1', 'Small', '{\"seq\": 2}')"
wait_drained "$DB" "${DB}_${RUN_ID}" 180
peak_kb=$(peak_rss_kb "$relay")
row_kb=$((ROW_MB * 1024))
growth_kb=$((peak_kb - base_kb))
bound_kb=$((3 * row_kb))
echo "input_validation_row_kb=$row_kb rss_base_kb=$base_kb rss_peak_kb=$peak_kb growth_kb=$growth_kb bound_kb=$bound_kb" >&2
log "a ${ROW_MB} MB row over max_event_bytes 100000: relay peak RSS ${base_kb} -> ${peak_kb} kB, growth ${growth_kb} kB ($((growth_kb * 100 / row_kb))% of the row; bound 300%)"
if [ "${OUTBOXD_SANITIZE:-0}" = 1 ]; then
    log "sanitizer build: RSS bound not checked (ASan's quarantine keeps freed memory)"
else
    [ "$growth_kb" -le "$bound_kb" ] || fail "peak RSS grew by ${growth_kb} kB, more than 3x the ${row_kb} kB row"
fi
consume_json -t "$RUN_ID.dlt3" >"$WORK/mem_dlt.json"
jq -c '{key, reason: .headers["outboxd.reason"], value_len: (.value | tostring | length)}' "$WORK/mem_dlt.json" >&2
[ "$(wc -l <"$WORK/mem_dlt.json")" -eq 1 ] || fail "expected the huge row as the one dead letter"
grep -q "row of [0-9]* bytes (payload column 'payload' [0-9]* bytes) exceeds relay.max_event_bytes (100000)" "$WORK/mem_dlt.json" ||
    fail "no size reason"
[ "$(consume_json -t "$RUN_ID.ev.$DB" | wc -l)" -eq 2 ] || fail "the small rows around the huge one were not both published"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
}

# ---- 4. a LATIN1 database: text arrives converted to UTF-8 ----
# The relay asks for client_encoding UTF8; without it the walsender sends the
# database's bytes (0xe9 for 'é'), which are not UTF-8.
test_latin1() {
DB=ilatin_$RUN_ID
psql_db postgres -c "CREATE DATABASE \"$DB\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0" >/dev/null
outbox_ddl outbox | psql_db "$DB" >/dev/null
write_config "$WORK/latin.yaml" "$DB"
sed -i "s/$RUN_ID.dlt/$RUN_ID.dlt4/" "$WORK/latin.yaml"
prepare_sources "$WORK/latin.yaml"
start_relay "$WORK/latin.yaml" relay_latin
relay=$RELAY_PID
PGCLIENTENCODING=UTF8 psql_db "$DB" -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$DB', 'café', 'Accented', '{\"name\": \"café\"}')"
[ "$(psql_db "$DB" -c "SELECT encode(convert_to(aggregateid, 'LATIN1'), 'hex') FROM outbox")" = 636166e9 ] ||
    fail "the row is not stored as LATIN1"
wait_drained "$DB" "${DB}_${RUN_ID}" 120
consume_json -t "$RUN_ID.ev.$DB" >"$WORK/latin_events.json"
cat "$WORK/latin_events.json" >&2
[ "$(wc -l <"$WORK/latin_events.json")" -eq 1 ] || fail "expected the LATIN1 row as one event"
[ "$(jq -r '.value.payload.name' "$WORK/latin_events.json")" = "café" ] || fail "payload text not converted to UTF-8"
[ "$(jq -r '.value.aggregate_id' "$WORK/latin_events.json")" = "café" ] || fail "aggregate id not converted to UTF-8"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
}

# ---- 5. a topic template naming a missing column, at run time ----
# check reports it (test_check.sh); run does not refuse the source: each row
# is dead-lettered and one ERROR names the column.
test_template_column() {
DB=itpl_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/tpl.yaml" "$DB"
sed -i 's/^        topic: "\(.*\)\.ev\.\${aggregatetype}"$/        topic: "\1.ev.${tenant}"/; s/'"$RUN_ID"'.dlt/'"$RUN_ID"'.dlt5/' "$WORK/tpl.yaml"
grep -q 'ev.${tenant}' "$WORK/tpl.yaml" || fail "test setup: template not replaced"
rc=0
"$OUTBOXD_BIN" check --create -c "$WORK/tpl.yaml" >"$WORK/tpl_check.out" 2>&1 || rc=$?
[ $rc -eq 1 ] && grep -q "has no column 'tenant'" "$WORK/tpl_check.out" || fail "check did not report the template column (exit $rc)"
start_relay "$WORK/tpl.yaml" relay_tpl
relay=$RELAY_PID
psql_db "$DB" -c "SELECT write_events('$DB', 'k', 3)" >/dev/null
wait_drained "$DB" "${DB}_${RUN_ID}" 120
[ "$(consume_json -t "$RUN_ID.dlt5" | grep -c "column 'tenant' (named in the topic template) is missing")" -eq 3 ] ||
    fail "expected the 3 rows dead-lettered with the missing template column"
n_err=$(grep -c "ERROR.*column 'tenant' (named in the topic template) is missing" "$WORK/relay_tpl.log" || true)
log "template column: 3 rows dead-lettered, $n_err ERROR line(s)"
[ "$n_err" -eq 1 ] || fail "expected one ERROR for the relation, got $n_err"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
}

if part 1; then test_utf8; fi
if part 5; then test_template_column; fi
if part 4; then test_latin1; fi
if part 2; then test_toast; fi
if part 3; then test_memory; fi
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# The metrics endpoint during a real run: /readyz turns 200 once the source
# streams; while 3000 outbox rows are written /metrics is scraped every
# quarter second and every scrape parses with prometheus_client's parser; afterwards
# the event counter equals the rows written, lag (bytes and seconds) falls to
# zero, the confirmed LSN matches the slot's confirmed_flush_lsn, the commit
# histogram counts every committed Kafka transaction, and every metric the
# Grafana dashboard (deploy/grafana) queries is exported. The relay logs JSON
# lines (--log-format json), every one of which parses.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/prom.sh"
prom_venv

DB=met_$RUN_ID
SLOT=${DB}_${RUN_ID}
ROWS=3000
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
PORT=$(free_port)
printf 'metrics:\n  listen: "127.0.0.1:%s"\n' "$PORT" >>"$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"

"$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" --log-format json >>"$WORK/relay.log" 2>&1 &
relay=$!
RELAY_PIDS+=("$relay")

ready=""
for _ in $(seq 1 600); do
    code=$(http_get "http://127.0.0.1:$PORT/readyz")
    [ "$code" = 200 ] && { ready=1; break; }
    [ "$code" = 503 ] || [ "$code" = 000 ] || fail "/readyz answered $code"
    sleep 0.1
done
[ -n "$ready" ] || fail "/readyz never turned 200"
[ "$(http_get "http://127.0.0.1:$PORT/healthz")" = 200 ] || fail "/healthz not 200 while streaming"
log "ready on port $PORT"

# Writers: 300 transactions of 10 rows, from a background psql, paced so
# that the scrapes below see the relay at work (at least 3 s).
(for i in $(seq 1 300); do echo "SELECT write_events('m', 'k$((i % 20))', 10); SELECT pg_sleep(0.01);"; done |
    psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >"$WORK/writer.log" 2>&1) &
writer=$!
BG_PIDS+=("$writer")

scrapes=0 max_lag_bytes=0 max_lag_s=0
while kill -0 "$writer" 2>/dev/null; do
    scrape "$PORT" "$WORK/m.$scrapes"
    lb=$(sample "$WORK/m.$scrapes" outboxd_source_lag_bytes "source=\"$DB\"")
    ls=$(sample "$WORK/m.$scrapes" outboxd_source_lag_seconds "source=\"$DB\"")
    max_lag_bytes=$(python3 -c "print(max(float('$max_lag_bytes'), float('$lb')))")
    max_lag_s=$(python3 -c "print(max(float('$max_lag_s'), float('$ls')))")
    scrapes=$((scrapes + 1))
    sleep 0.25
done
wait "$writer" || fail "writer failed: $(tail -n 5 "$WORK/writer.log")"
n=$(psql_db "$DB" -c "SELECT count(*) FROM outbox")
[ "$n" -eq "$ROWS" ] || fail "wrote $n rows, expected $ROWS"
wait_drained "$DB" "$SLOT"

# Counters and lag settle once the last commit is confirmed.
final="$WORK/m.final"
ok=""
for _ in $(seq 1 300); do
    scrape "$PORT" "$final"
    ev=$(sample "$final" outboxd_source_events_published_total "source=\"$DB\"")
    lb=$(sample "$final" outboxd_source_lag_bytes "source=\"$DB\"")
    ls=$(sample "$final" outboxd_source_lag_seconds "source=\"$DB\"")
    if [ "${ev%.*}" = "$ROWS" ] && [ "$lb" = 0 ] && [ "$ls" = 0 ]; then
        ok=1
        break
    fi
    sleep 0.2
done
[ -n "$ok" ] || fail "after draining: events=$ev (want $ROWS) lag_bytes=$lb lag_seconds=$ls"
scrapes=$((scrapes + 1))

val() { sample "$final" "$1" "${2:-source=\"$DB\"}"; }
committed=$(val outboxd_source_kafka_transactions_total "outcome=\"committed\",source=\"$DB\"")
aborted=$(val outboxd_source_kafka_transactions_total "outcome=\"aborted\",source=\"$DB\"")
hcount=$(val outboxd_source_kafka_commit_seconds_count)
bytes=$(val outboxd_source_bytes_published_total)
dead=$(val outboxd_source_dead_letters_total)
streaming=$(val outboxd_source_state "source=\"$DB\",state=\"streaming\"")
confirmed=$(val outboxd_source_confirmed_lsn)
slot_lsn=$(psql_db "$DB" -c "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = '$SLOT'")
log "scrapes=$scrapes events=$ev bytes=$bytes committed=$committed aborted=$aborted histogram_count=$hcount max_lag_bytes=$max_lag_bytes max_lag_seconds=$max_lag_s confirmed=$confirmed slot=$slot_lsn"
[ "${committed%.*}" -ge 1 ] || fail "no committed Kafka transaction counted"
[ "$hcount" = "$committed" ] || fail "commit histogram count $hcount != committed transactions $committed"
[ "${aborted%.*}" = 0 ] || fail "aborted transactions: $aborted"
[ "${dead%.*}" = 0 ] || fail "dead letters: $dead"
[ "${streaming%.*}" = 1 ] || fail "state streaming is $streaming"
# Each event is an Avro record of well over 100 bytes.
python3 -c "import sys; sys.exit(0 if float('$bytes') > 100 * $ROWS else 1)" ||
    fail "bytes_published $bytes too small"
# The slot may have moved on by a keepalive since the scrape, never back.
python3 -c "import sys; sys.exit(0 if 0 < int(float('$confirmed')) <= int('$slot_lsn') else 1)" ||
    fail "confirmed_lsn metric $confirmed is not at or before the slot's confirmed_flush_lsn $slot_lsn"

# Every metric the Grafana dashboard queries is one the relay exports.
"$PROM_VENV/bin/python" - "$OUTBOXD_SOURCE_DIR/deploy/grafana/outboxd.json" "$final" <<'PY' ||
import json, re, sys
dash = json.load(open(sys.argv[1]))
exported = {line.split("{")[0] for line in open(sys.argv[2])}
exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
used = {m for e in exprs for m in re.findall(r"outboxd_[a-z_]+", e)}
missing = sorted(used - exported)
assert not missing, f"dashboard uses metrics the relay does not export: {missing}"
print(f"dashboard: {len(exprs)} queries over {len(used)} metrics, all exported", file=sys.stderr)
PY
    fail "Grafana dashboard out of date"

# And the events really are in Kafka, once each.
expected_events "$DB" "$WORK/expected.tsv"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"

stop_relay_ok "$relay"
# Every log line is one JSON object with ts, level, scope and msg.
"$PROM_VENV/bin/python" - "$WORK/relay.log" <<'PY' || fail "relay log is not JSON lines"
import json, sys
n = 0
for line in open(sys.argv[1], encoding="utf-8"):
    o = json.loads(line)
    assert set(o) == {"ts", "level", "scope", "msg"}, o
    n += 1
assert n >= 3, n
print(f"{n} JSON log lines", file=sys.stderr)
PY
grep -q '"msg":"serving /metrics' "$WORK/relay.log" || fail "no 'serving /metrics' line"
drop_source "$DB" "$SLOT"
log "PASS"

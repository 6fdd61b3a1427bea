#!/usr/bin/env bash
# ctest: parallel
# SIGHUP reload under load (README "Reloading the configuration").
#
# Writers run the whole time. Three reloads:
#  1. the table's topic template changes (RUN.ev.X -> RUN.ev.v2.X) and a
#     table is added (public.outbox2, not yet in the publication): the relay
#     logs the switch point, the end LSN up to which events are in Kafka
#     under the old mapping. A test_decoding slot created before the writers
#     gives every outbox row's commit end LSN, so the expected set is exact:
#     rows of transactions ending at or before the switch point on the old
#     topic, every later row on the new one; okcat checks every row once, on
#     that topic, with its key, in per-key order. A 50000-row transaction
#     committed just before the signal is still being received when it
#     arrives: the switch must wait for its end. Rows written to outbox2
#     after the reload arrive (the relay added it to its publication).
#  2. an invalid file (an unknown key): one ERROR naming file:line:key, no
#     new generation; the rows written afterwards still follow mapping 1.
#  3. log_level: debug, a Kafka property (linger.ms: new producers with the
#     same transactional.id, the stream goes on exactly once), outbox2
#     removed (its later rows are not published: okcat would count them as
#     unexpected) and a changed relay.checkpoint_topic: DEBUG lines appear
#     only from then on; the checkpoint topic change is refused with a
#     "needs a restart" WARN.
#  4. log_format: json: the log lines are JSON objects from then on.
# /metrics counts the reloads by result.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DB=rl_$RUN_ID
SLOT=${DB}_${RUN_ID}
PEEK=peek_$RUN_ID
CONF=$WORK/outboxd.yaml
BIG=50000
create_outbox_db "$DB"
PORT=$(free_port)
# Kafka transactions of at most 1000 events: the big transaction below is
# committed in parts, which shows when the relay is inside it.
MAX_BATCH_EVENTS=1000 write_config "$WORK/a.yaml" "$DB"
printf 'metrics:\n  listen: "127.0.0.1:%s"\n' "$PORT" >>"$WORK/a.yaml"
# Mapping 1: the new topic template; the invalid file; mapping 1 at debug.
# b: the new template, and outbox2 after the first table's topic line.
sed "s/\"$RUN_ID\\.ev\\.\\\${aggregatetype}\"/\"$RUN_ID.ev.v2.\${aggregatetype}\"/" "$WORK/a.yaml" |
    awk -v t="        topic: \"$RUN_ID.ev.v2.\${aggregatetype}\"" \
        '{print} /^        topic: / && !done {print "      - table: public.outbox2"; print t; done=1}' \
        >"$WORK/b.yaml"
grep -q "ev.v2" "$WORK/b.yaml" && grep -q "public.outbox2" "$WORK/b.yaml" ||
    fail "test setup: b.yaml not edited"
# bad: a third template (were any of it applied, rows would land on v3 and
# okcat would count them on the wrong topic) and an unknown key.
sed -e 's/^relay:$/relay:\n  bogus_key: 1/' -e 's/\.ev\.v2\./.ev.v3./' "$WORK/b.yaml" >"$WORK/bad.yaml"
grep -q "ev.v3" "$WORK/bad.yaml" || fail "test setup: bad.yaml not edited"
sed -e 's/log_level: info/log_level: debug/' \
    -e "s/checkpoint_topic: \"$RUN_ID.checkpoints\"/checkpoint_topic: \"$RUN_ID.checkpoints2\"/" \
    -e 's/^  transactional_id_prefix: .*/&\n  properties:\n    linger.ms: "7"/' \
    -e '/public.outbox2/,+1d' \
    "$WORK/b.yaml" >"$WORK/c.yaml"
grep -q "log_level: debug" "$WORK/c.yaml" && grep -q "checkpoints2" "$WORK/c.yaml" &&
    grep -q 'linger.ms: "7"' "$WORK/c.yaml" && ! grep -q outbox2 "$WORK/c.yaml" &&
    grep -q "ev.v2" "$WORK/c.yaml" || fail "test setup: c.yaml not edited"
psql_db "$DB" -c "CREATE TABLE outbox2 (LIKE outbox INCLUDING DEFAULTS INCLUDING INDEXES)" >/dev/null
# outbox2 rows: N rows, each its own key (seq 1), in one transaction.
write_outbox2() { # write_outbox2 FIRST N
    psql_db "$DB" -c "INSERT INTO outbox2 (aggregatetype, aggregateid, type, payload)
        SELECT 'o2', 'o2-' || i, 'Tested', jsonb_build_object('seq', 1)
        FROM generate_series($1, $1 + $2 - 1) i" >/dev/null
}

cp "$WORK/a.yaml" "$CONF"
prepare_sources "$CONF"
extra_cleanup() {
    psql_db "$DB" -c "SELECT pg_drop_replication_slot('$PEEK') FROM pg_replication_slots WHERE slot_name = '$PEEK'" >/dev/null 2>&1 || true
}
psql_db "$DB" -c "SELECT pg_create_logical_replication_slot('$PEEK', 'test_decoding')" >/dev/null

LOGF=$WORK/relay.log
start_relay "$CONF" relay
relay=$RELAY_PID
for _ in $(seq 1 600); do grep -q "streaming slot" "$LOGF" && break; sleep 0.1; done
grep -q "streaming slot" "$LOGF" || fail "relay did not start streaming"

# 4 clients x 300 transactions at 60 per second: about 20 s of writes.
start_writers "$DB" 4 300 60
writer=$WRITER_PID
rows() { psql_db "$DB" -c "SELECT count(*) FROM outbox"; }
wait_rows() { # wait_rows N: until at least N more rows than now were written
    local want=$(($(rows) + $1))
    for _ in $(seq 1 300); do [ "$(rows)" -ge "$want" ] && return 0; sleep 0.1; done
    fail "writers did not write $1 more rows within 30 s"
}
metric() { curl -fsS "http://127.0.0.1:$PORT/metrics" | awk -v k="$1" '$1 == k {print $2}'; }

wait_rows 300
[ "$(grep -c ' DEBUG ' "$LOGF" || true)" = 0 ] || fail "DEBUG lines at log_level info"

# 1. Changed mapping, mid-stream, and mid-transaction: a 50000-row
# transaction commits just before the signal, so the relay is still
# receiving it when the reload arrives; it must switch only after it (its
# rows all on one topic, as the expected set by commit position says).
cp "$WORK/b.yaml" "$CONF"
psql_db "$DB" -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
    SELECT '$DB', 'big-1', 'Tested', jsonb_build_object('seq', i, 'key', 'big-1')
    FROM generate_series(1, $BIG) i" >/dev/null
# The signal goes once the relay has committed a first part of it (the
# writers alone add about 150 events a second).
published() { metric "outboxd_source_events_published_total{source=\"$DB\"}"; }
p0=$(published)
for _ in $(seq 1 600); do [ "$(published)" -ge $((p0 + 1000)) ] && break; sleep 0.02; done
[ "$(published)" -ge $((p0 + 1000)) ] || fail "the relay did not start publishing the big transaction"
kill -HUP "$relay"
wait_log "$LOGF" "configuration 1 applied by every source" 60
line=$(grep "reload: configuration 1 applied" "$LOGF" | grep "\[$DB\]")
SWITCH=$(sed -E 's/.*events up to end LSN ([0-9A-F]+\/[0-9A-F]+).*/\1/' <<<"$line")
[[ $SWITCH =~ ^[0-9A-F]+/[0-9A-F]+$ ]] || fail "no switch point in: $line"
log "mapping 1 applied; switch point $SWITCH"
kill -0 "$writer" 2>/dev/null || fail "writers finished before the reload: the switch was not mid-stream"
write_outbox2 1 20
# Received under mapping 1 before reload 3 removes the table again (a
# mapping applies by stream position, not by wall-clock time).
wait_drained "$DB" "$SLOT" 120
wait_rows 100

# 2. An invalid file: refused, nothing changes.
cp "$WORK/bad.yaml" "$CONF"
kill -HUP "$relay"
wait_log "$LOGF" "reload refused" 30
bad=$(grep "reload refused" "$LOGF")
log "invalid file: $bad"
[ "$(grep -c "reload refused" "$LOGF")" = 1 ] || fail "more than one line for the refused reload"
[[ $bad == *ERROR* ]] || fail "the refused reload is not logged at ERROR: $bad"
grep -Eq "outboxd\.yaml:5: relay\.bogus_key: " <<<"$bad" || fail "the ERROR does not name file:line:key: $bad"
grep -q "configuration 2" "$LOGF" && fail "an invalid file produced a new configuration"
wait_rows 100

# 3. Log level (and a key that needs a restart).
cp "$WORK/c.yaml" "$CONF"
kill -HUP "$relay"
wait_log "$LOGF" "configuration 2 applied by every source" 60
line2=$(grep "reload: configuration 2 applied" "$LOGF" | grep "\[$DB\]")
[[ $line2 == *"new Kafka producers"* ]] || fail "linger.ms changed but the source did not build new producers"
SWITCH2=$(sed -E 's/.*events up to end LSN ([0-9A-F]+\/[0-9A-F]+).*/\1/' <<<"$line2")
[[ $SWITCH2 =~ ^[0-9A-F]+/[0-9A-F]+$ ]] || fail "no switch point in: $line2"
log "mapping 2 applied; switch point $SWITCH2"
write_outbox2 1001 20 # outbox2 is no longer configured: not published
grep -Eq "WARN .*relay\.checkpoint_topic: needs a restart" "$LOGF" ||
    fail "no 'needs a restart' WARN for relay.checkpoint_topic"
reload3=$(grep -n "SIGHUP: reloading" "$LOGF" | tail -n1 | cut -d: -f1)
[ "$(head -n "$reload3" "$LOGF" | grep -c ' DEBUG ' || true)" = 0 ] || fail "DEBUG lines before the level changed"
for _ in $(seq 1 300); do
    [ "$(tail -n +"$reload3" "$LOGF" | grep -c " DEBUG \[$DB\] committed" || true)" -gt 0 ] && break
    sleep 0.1
done
[ "$(tail -n +"$reload3" "$LOGF" | grep -c " DEBUG \[$DB\] committed" || true)" -gt 0 ] ||
    fail "no DEBUG lines after log_level: debug was reloaded"
log "log level debug in force; checkpoint topic change refused with a WARN"

# 4. Log format: JSON lines from then on.
sed 's/^relay:$/relay:\n  log_format: json/' "$WORK/c.yaml" >"$CONF"
kill -HUP "$relay"
wait_log "$LOGF" '^\{"ts":"[^"]*","level":"info","scope":"main","msg":"reload: configuration 3 applied by every source"' 60
log "log format json in force"

wait_writers "$writer"
wait_drained "$DB" "$SLOT"
ok=$(metric 'outboxd_config_reloads_total{result="success"}')
bad_n=$(metric 'outboxd_config_reloads_total{result="failure"}')
[ "$ok" = 3 ] && [ "$bad_n" = 1 ] || fail "reload counters: success=$ok failure=$bad_n (expected 3 and 1)"
stop_relay_ok "$relay"
grep -q "checkpoints2" <(grep -v "needs a restart" "$LOGF") && fail "the relay used the new checkpoint topic"

# Every row with the commit end LSN of its transaction (test_decoding).
EXP=$WORK/expected.tsv
psql_db "$DB" -F $'\t' >"$EXP" <<SQL
CREATE TEMP TABLE c AS SELECT lsn, xid, data FROM pg_logical_slot_peek_changes('$PEEK', NULL, NULL);
CREATE TEMP TABLE ins AS SELECT xid, substring(data FROM 'id\\[uuid\\]:''([0-9a-f-]+)''')::uuid AS id
    FROM c WHERE data LIKE 'table public.outbox: INSERT:%';
CREATE TEMP TABLE com AS SELECT xid, lsn FROM c WHERE data LIKE 'COMMIT%';
ANALYZE ins;
ANALYZE com;
SELECT o.id, o.aggregateid,
       CASE WHEN com.lsn <= '$SWITCH'::pg_lsn THEN '$RUN_ID.ev.' ELSE '$RUN_ID.ev.v2.' END
       || o.aggregatetype, o.payload->>'seq'
FROM outbox o JOIN ins ON ins.id = o.id JOIN com USING (xid);
SQL
[ "$(grep -c $'\tbig-1\t' "$EXP")" = "$BIG" ] || fail "the big transaction's rows are not all in the expected set"
# The relay was inside it when the signal came: it switched after its end.
n_big_old=$(awk -F'\t' -v t="$RUN_ID.ev.$DB" '$2 == "big-1" && $3 == t' "$EXP" | wc -l)
[ "$n_big_old" = "$BIG" ] || fail "the switch point $SWITCH falls inside the big transaction ($n_big_old of $BIG rows before it)"
grep -v $'\tbig-1\t' "$EXP" >"$WORK/writers.tsv"
assert_rows_written "$WORK/writers.tsv" "$DB"
n_new=$(awk -F'\t' '$3 ~ /\.ev\.v2\./' "$EXP" | wc -l)
n_old=$(($(wc -l <"$EXP") - n_new))
log "expected: $n_old rows under the old mapping, $n_new under the new one"
[ "$n_old" -gt 0 ] && [ "$n_new" -gt 0 ] || fail "the switch was not mid-stream ($n_old old, $n_new new)"
# outbox2 rows of transactions between the two switch points are published
# (all of the first 20: the relay had them before reload 3); the later ones,
# written after the table was removed again, must not be.
psql_db "$DB" -F $'\t' >>"$EXP" <<SQL
CREATE TEMP TABLE c AS SELECT lsn, xid, data FROM pg_logical_slot_peek_changes('$PEEK', NULL, NULL);
CREATE TEMP TABLE ins AS SELECT xid, substring(data FROM 'id\\[uuid\\]:''([0-9a-f-]+)''')::uuid AS id
    FROM c WHERE data LIKE 'table public.outbox2: INSERT:%';
CREATE TEMP TABLE com AS SELECT xid, lsn FROM c WHERE data LIKE 'COMMIT%';
SELECT o.id, o.aggregateid, '$RUN_ID.ev.v2.o2', '1'
FROM outbox2 o JOIN ins ON ins.id = o.id JOIN com USING (xid)
WHERE com.lsn > '$SWITCH'::pg_lsn AND com.lsn <= '$SWITCH2'::pg_lsn;
SQL
n_o2=$(grep -c $'\to2-' "$EXP" || true)
[ "$n_o2" = 20 ] || fail "expected the 20 outbox2 rows written under mapping 1, found $n_o2"
[ "$(psql_db "$DB" -c "SELECT count(*) FROM outbox2")" = 40 ] || fail "outbox2 does not hold 40 rows"
check_exactly_once "$EXP"
extra_cleanup
drop_source "$DB" "$SLOT"
log "PASS"

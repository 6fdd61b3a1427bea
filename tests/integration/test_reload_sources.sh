#!/usr/bin/env bash
# ctest: parallel
# SIGHUP reload, what changes a source's stream or its set (README
# "Reloading the configuration"):
#  1. the first messages[] entry of a source: PostgreSQL sends logical
#     messages only to a stream that asked for them at its start, so the
#     source restarts its stream; a message emitted after the reload is in
#     Kafka, exactly once (before, it was confirmed past unseen).
#  2. metrics.ready_min_sources counts the sources running, not those of the
#     file: a third source added (it starts only at the restart) with
#     ready_min_sources 3 is refused, naming the running count. So is a
#     dead_letter_topic equal to the running checkpoint topic (the file's
#     checkpoint_topic, which needs a restart, being another).
#  3. a source removed by one reload and put back by the next with another
#     slot: the slot needs a restart, and the WARN says so (it was taken for
#     a source "added" and its slot applied live); its rows still arrive.
#  4. a cdc table added with a row_filter, then its row_filter changed: the
#     publication keeps its WHERE, and a WARN says so with the SQL to run
#     (it was ignored silently).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

[ "${PG_SERVER_VERSION:-15}" -ge 14 ] || {
    log "SKIP: pgoutput passes logical messages from PostgreSQL 14 on"
    exit 0
}
A=rsa_$RUN_ID
B=rsb_$RUN_ID
create_outbox_db "$A"
create_outbox_db "$B"
PORT=$(free_port)
CONF=$WORK/outboxd.yaml

# source NAME [SLOT] [MESSAGES]: one source block.
source_block() {
    cat <<EOF
  - name: $1
    dsn: "host=$PGHOST port=$PGPORT dbname=$1 user=$PGUSER"
    slot: "${2:-${1}_$RUN_ID}"
    publication: "outboxd_pub"
    tables:
      - table: public.outbox
        topic: "$RUN_ID.ev.\${aggregatetype}"
EOF
    [ -z "${3:-}" ] || cat <<EOF
    messages:
      - prefix: outbox
        topic: "$RUN_ID.msg.\${aggregatetype}"
EOF
}
metrics_block() { printf 'metrics:\n  listen: "127.0.0.1:%s"\n  ready_min_sources: %s\n' "$PORT" "$1"; }
{ config_header; source_block "$A"; source_block "$B"; metrics_block 0; } >"$WORK/a.yaml"
# 1: messages for A.
{ config_header; source_block "$A" "" m; source_block "$B"; metrics_block 0; } >"$WORK/b.yaml"
# 2: a third source and ready_min_sources 3 (refused).
{ config_header; source_block "$A" "" m; source_block "$B"; source_block "rsc_$RUN_ID"; metrics_block 3; } >"$WORK/c.yaml"
# 2b: the dead-letter topic set to the running checkpoint topic.
sed -e "s/^  checkpoint_topic: .*/  checkpoint_topic: \"$RUN_ID.other\"/" \
    -e "s/^  dead_letter_topic: .*/  dead_letter_topic: \"$RUN_ID.checkpoints\"/" "$WORK/b.yaml" >"$WORK/c2.yaml"
grep -q "dead_letter_topic: \"$RUN_ID.checkpoints\"" "$WORK/c2.yaml" || fail "test setup: c2.yaml not edited"
# 3: B removed, then back with another slot.
{ config_header; source_block "$A" "" m; metrics_block 0; } >"$WORK/d.yaml"
{ config_header; source_block "$A" "" m; source_block "$B" "${B}_other"; metrics_block 0; } >"$WORK/e.yaml"
# 4: a cdc table with a row filter, then another filter.
rf_block() {
    cat <<EOF
      - table: public.rf
        mode: cdc
        snapshot: never
        format: json
        topic_prefix: "$RUN_ID.cdc"
        row_filter: "$1"
EOF
}
awk -v add="$(rf_block "status = 'a'")" '{print} /^        topic: / && !done {print add; done=1}' "$WORK/e.yaml" >"$WORK/f.yaml"
awk -v add="$(rf_block "status = 'b'")" '{print} /^        topic: / && !done {print add; done=1}' "$WORK/e.yaml" >"$WORK/g.yaml"
grep -q "status = 'a'" "$WORK/f.yaml" && grep -q "status = 'b'" "$WORK/g.yaml" || fail "test setup: f/g.yaml not edited"
psql_db "$A" -c "CREATE TABLE rf (id integer PRIMARY KEY, status text)" >/dev/null

cp "$WORK/a.yaml" "$CONF"
prepare_sources "$CONF"
LOGF=$WORK/relay.log
start_relay "$CONF" relay
relay=$RELAY_PID
wait_streaming "$LOGF" 2
reload() { # reload FILE: SIGHUP with FILE in place; waits for its outcome line
    local before
    before=$(grep -cE 'reload: configuration [0-9]+ applied by every source|reload refused' "$LOGF" || true)
    cp "$1" "$CONF"
    kill -HUP "$relay"
    for _ in $(seq 1 600); do
        [ "$(grep -cE 'reload: configuration [0-9]+ applied by every source|reload refused' "$LOGF" || true)" -gt "$before" ] && return 0
        sleep 0.1
    done
    fail "no outcome of the reload of $(basename "$1") within 60 s: $(tail -n 5 "$LOGF")"
}
emit() { # emit DB ID: a logical message in the outbox contract
    psql_db "$1" -c "SELECT pg_logical_emit_message(true, 'outbox', json_build_object('id', '$2', 'aggregatetype', 'm', 'aggregateid', '$2', 'type', 'ViaMessage', 'payload', json_build_object('seq', 1))::text)" >/dev/null
}

# 1. Before: no messages[] for A, so a message is not relayed (nothing asks).
emit "$A" "before-$RUN_ID"
psql_db "$A" -c "SELECT write_events('$A', '$A-1', 10)" >/dev/null
wait_drained "$A" "${A}_$RUN_ID" 120
reload "$WORK/b.yaml"
grep -q "reload: configuration 1 applied by every source" "$LOGF" || fail "b.yaml was not applied: $(tail -n 5 "$LOGF")"
emit "$A" "after-$RUN_ID"
psql_db "$A" -c "SELECT write_events('$A', '$A-1', 10)" >/dev/null
wait_drained "$A" "${A}_$RUN_ID" 120
consume_json -t "$RUN_ID.msg.m" --timeout-ms 60000 >"$WORK/msg.json"
ids=$(jq -r '.key' "$WORK/msg.json" | sort | tr '\n' ' ')
n_after=$(grep -c "after-$RUN_ID" "$WORK/msg.json" || true)
n_before=$(grep -c "before-$RUN_ID" "$WORK/msg.json" || true)
[ "$n_after" -eq 1 ] || fail "the message emitted after messages[] was added: $n_after record(s) on $RUN_ID.msg.m, expected 1 (records: $ids)"
[ "$n_before" -eq 0 ] || fail "the message emitted before messages[] was configured was relayed ($n_before)"
grep -q "\[$A\] reload: messages\[\] configured: restarting the stream" "$LOGF" ||
    fail "no 'restarting the stream' line for $A"
n=$(consume_json -t "$RUN_ID.ev.$A" --timeout-ms 60000 | wc -l)
[ "$n" -eq 20 ] || fail "expected the 20 outbox events of $A exactly once across the restarted stream, found $n"
log "1. messages[] added by reload: the stream restarted, the later message relayed once (the earlier one not), 20 of 20 outbox events"

# 2. ready_min_sources above the running sources.
reload "$WORK/c.yaml"
grep -q "reload refused: .*metrics.ready_min_sources: 3 is more than the 2 running source(s)" "$LOGF" ||
    fail "ready_min_sources 3 with 2 running sources was not refused: $(grep -E 'reload' "$LOGF" | tail -n 3)"
curl -fsS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/readyz" | grep -qx 200 ||
    fail "/readyz is not 200 after the refused reload"
log "2. $(grep -o 'reload refused: .*' "$LOGF" | tail -n 1 | cut -c1-200)"
reload "$WORK/c2.yaml"
grep -q "reload refused: .*relay.dead_letter_topic: '$RUN_ID.checkpoints' is the running relay.checkpoint_topic" "$LOGF" ||
    fail "a dead_letter_topic equal to the running checkpoint topic was not refused: $(grep -E 'reload' "$LOGF" | tail -n 3)"
log "2b. $(grep -o 'reload refused: .*' "$LOGF" | tail -n 1 | cut -c1-200)"

# 3. B removed, then put back with another slot.
reload "$WORK/d.yaml"
grep -q "reload: sources: source $B removed: needs a restart" "$LOGF" || fail "no WARN for the removed source: $(grep reload "$LOGF" | tail -n 3)"
reload "$WORK/e.yaml"
grep -q "reload: sources\\[1\\].slot: needs a restart" "$LOGF" ||
    fail "the changed slot of the source put back is not pinned: $(grep 'reload' "$LOGF" | tail -n 4)"
! grep -q "source $B added" "$LOGF" || fail "the source put back was taken for an added one: $(grep -F "source $B added" "$LOGF")"
psql_db "$B" -c "SELECT write_events('$B', '$B-1', 10)" >/dev/null
wait_drained "$B" "${B}_$RUN_ID" 120
n=$(consume_json -t "$RUN_ID.ev.$B" --timeout-ms 60000 | wc -l)
[ "$n" -eq 10 ] || fail "expected 10 events of $B on its own slot after it was put back, found $n"
[ "$(psql_db "$B" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${B}_other'")" = 0 ] ||
    fail "a slot ${B}_other exists: the restart-only slot was applied"
log "3. $(grep -o "reload: sources\\[1\\].slot: needs a restart.*" "$LOGF" | head -n 1); $n of 10 events of $B on its running slot"

# 4. A row filter added with its table, then changed (publication WHERE:
# PostgreSQL 15+).
if [ "${PG_SERVER_VERSION:-15}" -lt 15 ]; then
    stop_relay_ok "$relay"
    log "PASS (part 4 skipped: row_filter needs PostgreSQL 15)"
    exit 0
fi
reload "$WORK/f.yaml"
grep -q "reload: configuration 4 applied by every source" "$LOGF" || fail "f.yaml was not applied: $(grep reload "$LOGF" | tail -n 3)"
[ "$(psql_db "$A" -c "SELECT rowfilter IS NOT NULL FROM pg_publication_tables WHERE pubname = 'outboxd_pub' AND tablename = 'rf'")" = t ] ||
    fail "the added table rf is not in the publication with its row filter"
! grep -q "row_filter changed" "$LOGF" || fail "a row_filter WARN before the filter changed"
reload "$WORK/g.yaml"
grep -q "\\[$A\\] reload: sources\\[0\\].tables\\[1\\].row_filter changed: publication outboxd_pub keeps the WHERE it has for public.rf.*ADD TABLE \"public\".\"rf\" WHERE (status = 'b')" "$LOGF" ||
    fail "no WARN for the changed row_filter: $(grep reload "$LOGF" | tail -n 3)"
log "4. $(grep -o 'reload: sources\[0\].tables\[1\].row_filter changed.*' "$LOGF" | cut -c1-160)"
stop_relay_ok "$relay"
log "PASS"

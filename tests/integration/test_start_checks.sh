#!/usr/bin/env bash
# ctest: parallel
# A starting source checks PostgreSQL on its replication connection (SQL by
# the simple protocol, the parameters inlined as quoted literals), so a start
# costs the server one backend, not two (bench/sources.sh: with 200 sources
# the server's CPU for the start fell from 2.3-2.9 s to 0.7-1.1 s).
#  1. Names that need quoting all the way: a schema and a table with a quote,
#     a backslash and a non-ASCII letter. The relay itself (no `outboxd check` first) creates the
#     publication and the slot, and relays every event exactly once.
#  2. A check that fails there is reported as before: a missing outbox
#     column is named with its fix, the source is retried, and it streams
#     once the column exists.
#  3. A start opens no normal connection: over a second run of the relay,
#     pg_stat_database.sessions of each database grows by exactly 1, the
#     periodic catalog check's kept connection (walsenders are not counted);
#     a check on a connection of its own made it 2.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

A=sca_$RUN_ID
B=scb_$RUN_ID
SCHEMA="Odd'Sch\\é"
TABLE="Out'b\\ox"
PUB=pub_sc # publication names are checked: [a-z0-9_]
qi() { printf '"%s"' "${1//\"/\"\"}"; } # SQL identifier
QT="$(qi "$SCHEMA").$(qi "$TABLE")"

create_outbox_db "$A"
psql_db "$A" <<SQL
CREATE SCHEMA $(qi "$SCHEMA");
CREATE TABLE $QT (LIKE public.outbox INCLUDING ALL);
SQL
create_outbox_db "$B"
psql_db "$B" -c 'ALTER TABLE outbox DROP COLUMN type' >/dev/null

yq() { local s=${1//\\/\\\\}; printf '"%s"' "${s//\"/\\\"}"; } # YAML double-quoted
{
    config_header | sed 's/^relay:$/relay:\n  reconnect_max_backoff_ms: 1000/'
    cat <<EOF
  - name: a
    dsn: "host=$PGHOST port=$PGPORT dbname=$A user=$PGUSER"
    slot: "${A}_s"
    publication: $PUB
    tables:
      - table: $(yq "$SCHEMA.$TABLE")
        topic: "$RUN_ID.ev.\${aggregatetype}"
  - name: b
    dsn: "host=$PGHOST port=$PGPORT dbname=$B user=$PGUSER"
    slot: "${B}_s"
    publication: outboxd_pub
    tables:
      - table: public.outbox
        topic: "$RUN_ID.ev.\${aggregatetype}"
EOF
} >"$WORK/outboxd.yaml"

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
wait_log "$WORK/relay.log" "\\[a\\] streaming slot" 120 "source a did not stream"
# 100 events on 5 keys in one transaction, numbered per key in insert order.
psql_db "$A" -c "INSERT INTO $QT (aggregatetype, aggregateid, type, payload)
    SELECT 'order', 'k' || (i % 5), 'Tested', jsonb_build_object('seq', (i - 1) / 5 + 1)
    FROM generate_series(1, 100) i" >/dev/null

# 2. b's check fails on its replication connection and says what to do.
wait_log "$WORK/relay.log" "\\[b\\].*table public.outbox has no column 'type' \\(configured as columns.type\\); add it" 60 \
    "b's missing column was not reported"
grep -q "\\[b\\] streaming slot" "$WORK/relay.log" && fail "b streamed without its type column"
psql_db "$B" -c "ALTER TABLE outbox ADD COLUMN type text NOT NULL DEFAULT 'Tested'" >/dev/null
wait_log "$WORK/relay.log" "\\[b\\] streaming slot" 60 "b did not stream once its column existed"
psql_db "$B" -c "SELECT write_events('order', 'b1', 20)" >/dev/null

wait_drained "$A" "${A}_s"
wait_drained "$B" "${B}_s"
: >"$WORK/expected.tsv"
psql_db "$A" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM $QT" \
    >>"$WORK/expected.tsv"
expected_events "$B" "$WORK/expected.tsv"
[ "$(wc -l <"$WORK/expected.tsv")" = 120 ] || fail "expected 120 rows, have $(wc -l <"$WORK/expected.tsv")"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"
[ "$(psql_db "$A" -c "SELECT count(*) FROM pg_publication_tables WHERE pubname = '$PUB' AND schemaname = '${SCHEMA//\'/\'\'}' AND tablename = '${TABLE//\'/\'\'}'")" = 1 ] ||
    fail "the relay did not create publication $PUB for $SCHEMA.$TABLE"

stop_relay_ok "$relay"

# 3. A second start, both sources ready: every relay connection to a
# database is counted once it is closed. Let each source's catalog check
# open its kept connection (it runs right after the stream starts), stop,
# wait for the backends to end, compare. Only the postgres database is
# queried meanwhile: the test's own sessions would count too.
if [ "${PG_SERVER_VERSION:-15}" -ge 14 ]; then # the column exists from 14 on
    sessions() { psql_db postgres -c "SELECT sessions FROM pg_stat_database WHERE datname = '$1'"; }
    backends() { psql_db postgres -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$1' $2"; }
    sa0=$(sessions "$A")
    sb0=$(sessions "$B")
    : >"$WORK/relay.log"
    start_relay "$WORK/outboxd.yaml"
    relay=$RELAY_PID
    wait_streaming "$WORK/relay.log" 2 120
    for db in "$A" "$B"; do
        for _ in $(seq 1 300); do
            [ "$(backends "$db" "AND backend_type = 'client backend' AND application_name LIKE 'outboxd-%'")" -ge 1 ] && break
            sleep 0.1
        done
    done
    stop_relay_ok "$relay"
    for db in "$A" "$B"; do
        for _ in $(seq 1 100); do
            [ "$(backends "$db")" = 0 ] && break
            sleep 0.1
        done
    done
    na=$(($(sessions "$A") - sa0))
    nb=$(($(sessions "$B") - sb0))
    log "normal connections the relay opened in its start and first catalog check: a $na, b $nb"
    [ "$na" = 1 ] && [ "$nb" = 1 ] ||
        fail "the relay opened $na and $nb normal connections to the databases, expected 1 each (the catalog check's)"
fi
drop_source "$A" "${A}_s"
drop_source "$B" "${B}_s"
log "PASS"

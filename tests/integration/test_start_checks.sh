#!/usr/bin/env bash
# ctest: parallel
# A starting source checks PostgreSQL on its replication connection (SQL by
# the simple protocol, the parameters inlined as quoted literals), so a start
# costs the server one backend, not two (bench/sources.sh: a 200-source start
# took about 1 s less of the machine's CPU, and 0.5 s less time).
#  1. Names that need quoting all the way: a schema and a table with a quote,
#     a backslash and a non-ASCII letter. The relay itself (no `outboxd check`
#     first) creates the publication and the slot, and relays every event
#     exactly once.
#  2. A check that fails there is reported as before: a missing outbox
#     column is named with its fix, the source is retried (opening no normal
#     connection), and it streams once the column exists.
#  3. A start opens no normal connection: over a second run of the relay,
#     pg_stat_database.sessions of each database grows by exactly 1, the
#     periodic catalog check's kept connection (walsenders are not counted);
#     a check on a connection of its own made it 2.
#  4. When the replication connection is refused (a role without
#     REPLICATION), the checks on a normal connection say why and how to fix
#     it, as before.
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
NOREPL=norepl_$RUN_ID
psql_db postgres -c "CREATE ROLE $NOREPL LOGIN" >/dev/null
extra_cleanup() { psql_db postgres -c "DROP ROLE IF EXISTS $NOREPL" >/dev/null 2>&1; }
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
  - name: c
    dsn: "host=$PGHOST port=$PGPORT dbname=postgres user=$NOREPL"
    slot: "${A}_c"
    publication: outboxd_pub
    tables:
      - table: public.outbox
        topic: "$RUN_ID.ev.\${aggregatetype}"
EOF
} >"$WORK/outboxd.yaml"

# pg_stat_database.sessions counts a database's normal connections (not
# walsenders); from PostgreSQL 15 on (shared-memory statistics) an ended
# backend has flushed its count before it leaves pg_stat_activity. Only the
# postgres database is queried while counting: the test's own sessions
# would count too.
count_sessions=0
[ "${PG_SERVER_VERSION:-15}" -lt 15 ] || count_sessions=1
sessions() { psql_db postgres -c "SELECT sessions FROM pg_stat_database WHERE datname = '$1'"; }
backends() { psql_db postgres -c "SELECT count(*) FROM pg_stat_activity WHERE datname = '$1' $2"; }
# until_backends DB OP N WHAT [EXTRA_WHERE]: until DB's backend count OP N.
until_backends() {
    for _ in $(seq 1 300); do
        [ "$(backends "$1" "${5:-}")" "$2" "$3" ] && return 0
        sleep 0.1
    done
    fail "$4 within 30 s"
}
[ $count_sessions = 0 ] || sb0=$(sessions "$B")

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
if [ $count_sessions = 1 ]; then
    # Three failed starts, the first two long over: no normal connection.
    for _ in $(seq 1 300); do
        [ "$(grep -c "\\[b\\].*has no column 'type'" "$WORK/relay.log")" -ge 3 ] && break
        sleep 0.1
    done
    until_backends "$B" -eq 0 "b's failed checks left a normal connection open" \
        "AND backend_type = 'client backend'"
    n=$(($(sessions "$B") - sb0))
    log "normal connections opened by b's $(grep -c "\\[b\\].*has no column 'type'" "$WORK/relay.log") failed starts: $n"
    [ "$n" = 0 ] || fail "b's failed starts opened $n normal connections, expected none (the checks run on the replication connection)"
fi
# 4. c's replication connection is refused; the normal connection's checks
# say why.
wait_log "$WORK/relay.log" "\\[c\\] source c: role '$NOREPL' may not use replication \\(it has neither REPLICATION nor SUPERUSER\\); grant it with: ALTER ROLE \"$NOREPL\" WITH REPLICATION" 60 \
    "c's missing REPLICATION was not explained"
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
# wait for the backends to end, compare.
if [ $count_sessions = 1 ]; then
    sa0=$(sessions "$A")
    sb0=$(sessions "$B")
    : >"$WORK/relay.log"
    start_relay "$WORK/outboxd.yaml"
    relay=$RELAY_PID
    wait_streaming "$WORK/relay.log" 2 120
    for db in "$A" "$B"; do
        until_backends "$db" -ge 1 "no catalog check connection to $db" \
            "AND backend_type = 'client backend' AND application_name LIKE 'outboxd-%'"
    done
    stop_relay_ok "$relay"
    for db in "$A" "$B"; do until_backends "$db" -eq 0 "the relay's backends of $db did not end"; done
    na=$(($(sessions "$A") - sa0))
    nb=$(($(sessions "$B") - sb0))
    log "normal connections the relay opened in its start and first catalog check: a $na, b $nb"
    [ "$na" = 1 ] && [ "$nb" = 1 ] ||
        fail "the relay opened $na and $nb normal connections to the databases, expected 1 each (the catalog check's)"
fi
drop_source "$A" "${A}_s"
drop_source "$B" "${B}_s"
log "PASS"

#!/usr/bin/env bash
# `outboxd check` names what is wrong and how to fix it: a missing outbox
# column, a missing publication (not created when create_publication is
# false), wal_level not logical (on a second server initdb'd here with
# wal_level=replica). A correct setup prints "configuration OK". Also the
# command line: --help, --version, a bad file (exit 2, file:line).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

expect_check() { # expect_check CONFIG EXIT_CODE PATTERN...
    local conf=$1 want=$2 rc=0
    shift 2
    "$OUTBOXD_BIN" check -c "$conf" >"$WORK/check.out" 2>&1 || rc=$?
    cat "$WORK/check.out" >&2
    [ "$rc" -eq "$want" ] || fail "check exited $rc, expected $want"
    for pat in "$@"; do
        grep -q -- "$pat" "$WORK/check.out" || fail "check output lacks: $pat"
    done
}

# 1. A correct database: publication and slot are created, all OK.
DB=cgood_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/good.yaml" "$DB"
expect_check "$WORK/good.yaml" 0 "configuration OK" "source $DB: OK" "kafka: OK"
[ "$(psql_db "$DB" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${DB}_${RUN_ID}'")" = 1 ] ||
    fail "check did not create the slot"

# 2. A missing outbox column.
DB2=ccol_$RUN_ID
create_outbox_db "$DB2"
psql_db "$DB2" -c "ALTER TABLE outbox DROP COLUMN aggregateid"
write_config "$WORK/col.yaml" "$DB2"
expect_check "$WORK/col.yaml" 1 "has no column 'aggregateid'" "problem(s) found"

# 3. A missing publication that we may not create.
DB3=cpub_$RUN_ID
create_outbox_db "$DB3"
write_config "$WORK/pub.yaml" "$DB3"
sed -i 's/^    publication: .*/    publication: "not_there"\n    create_publication: false/' "$WORK/pub.yaml"
expect_check "$WORK/pub.yaml" 1 "publication 'not_there' does not exist" "CREATE PUBLICATION"

# 4. wal_level = replica on a second, throwaway server.
PORT2=$(free_port)
PG2="$WORK/pg2"
chmod 755 "$WORK"
mkdir -p "$PG2" && chown postgres "$PG2" 2>/dev/null || true
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
as_pg initdb -D "$PG2/data" -U postgres --auth=trust --no-sync >"$WORK/initdb2.log" 2>&1 || fail "initdb: $(tail -3 "$WORK/initdb2.log")"
extra_cleanup() { as_pg pg_ctl -D "$PG2/data" -m immediate stop >/dev/null 2>&1; }
as_pg pg_ctl -D "$PG2/data" -l "$PG2/log" -w -o "-c wal_level=replica -c port=$PORT2 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG2" start >/dev/null ||
    fail "second server did not start"
psql -X -q -h 127.0.0.1 -p "$PORT2" -U postgres -d postgres -c "CREATE TABLE outbox (id uuid, aggregatetype text, aggregateid text, type text, payload jsonb)"
cat >"$WORK/wal.yaml" <<EOF2
kafka: { bootstrap_servers: "$KAFKA_BOOTSTRAP" }
sources:
  - name: walcheck
    dsn: "host=127.0.0.1 port=$PORT2 dbname=postgres user=postgres"
    tables: [ { table: public.outbox } ]
EOF2
expect_check "$WORK/wal.yaml" 1 "wal_level is 'replica' but must be 'logical'" "restart PostgreSQL"

# 5. Command line.
"$OUTBOXD_BIN" --help | grep -q "outboxd check -c FILE" || fail "--help"
"$OUTBOXD_BIN" --version | grep -q "^outboxd " || fail "--version"
printf 'kafka:\n  bootstrap_servers: x\nsources:\n  - name: a\n    dsn: "dbname=a"\n    tables: [ { table: public.outbox, mode: bogus } ]\n' >"$WORK/bad.yaml"
rc=0
"$OUTBOXD_BIN" run -c "$WORK/bad.yaml" 2>"$WORK/bad.err" || rc=$?
cat "$WORK/bad.err" >&2
[ $rc -eq 2 ] || fail "bad config exited $rc, expected 2"
grep -q "bad.yaml:6: sources\[0\].tables\[0\].mode" "$WORK/bad.err" || fail "bad config error lacks file:line: key"
rc=0
"$OUTBOXD_BIN" -c "$WORK/nonexistent.yaml" 2>"$WORK/none.err" || rc=$?
[ $rc -eq 2 ] && grep -q "nonexistent.yaml" "$WORK/none.err" || fail "missing file not reported"

for db in "$DB" "$DB2" "$DB3"; do drop_source "$db" "${db}_${RUN_ID}"; done
log "PASS"

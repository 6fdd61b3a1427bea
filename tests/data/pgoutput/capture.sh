#!/usr/bin/env bash
#
# Regenerates the pgoutput decoder fixtures in this directory from a real
# PostgreSQL 15 server. test_pgoutput decodes every record of every fixture.
#
#   tests/data/pgoutput/capture.sh [PATH_TO_pgo_capture]
#
# pgo_capture is tests/tools/pgo_capture.c; without an argument the script
# looks for it in $PGO_CAPTURE, then in <repo>/build*/tests/tools/. PG_BIN
# selects the server binaries (default /usr/lib/postgresql/15/bin).
#
# The script starts its own throwaway server (initdb into a mktemp directory,
# wal_level=logical, max_prepared_transactions=10, logical_decoding_work_mem=64kB
# so that big transactions stream, Unix socket only, in the temp directory) and
# stops and deletes it on exit. When run as root the server runs as the
# "postgres" user, since initdb refuses to run as root.
#
# Fixtures (each file is a sequence of records: 4-byte big-endian length, then
# the payload of one XLogData message, i.e. one pgoutput message):
#   proto1.bin           proto_version 1, messages on: Type, Relation, Insert
#                        with NULLs and a TOASTed value, Update leaving the
#                        TOASTed column unchanged ('u'), key-changing Update
#                        ('K'), REPLICA IDENTITY FULL Update/Delete ('O'),
#                        Delete ('K'), transactional and non-transactional
#                        logical messages, Truncate, and a transaction
#                        replayed under a replication origin (Origin message).
#   proto2_stream.bin    proto_version 2, streaming on: a small plain
#                        transaction, a streamed committed one (with an
#                        in-stream logical message), a streamed aborted one,
#                        and a streamed one whose subtransaction is rolled back.
#   proto3_twophase.bin  proto_version 3, two_phase on, streaming on: PREPARE +
#                        COMMIT PREPARED, PREPARE + ROLLBACK PREPARED, and a
#                        big prepared transaction that streams (Stream Prepare).
#
# OIDs, xids, LSNs and commit timestamps differ on every run; the test only
# asserts on values the workloads below fix (names, row values, flags, order).
# If you change a workload, update tests/unit/test_pgoutput.c to match.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

capture=${1:-${PGO_CAPTURE:-}}
if [ -z "$capture" ]; then
    for c in "$repo"/build*/tests/tools/pgo_capture; do
        if [ -x "$c" ]; then
            capture=$c
            break
        fi
    done
fi
if [ -z "$capture" ] || [ ! -x "$capture" ]; then
    echo "capture.sh: pgo_capture not found; build it (ninja -C <build> pgo_capture)" \
         "and pass its path" >&2
    exit 1
fi
for b in initdb pg_ctl psql; do
    if [ ! -x "$PG_BIN/$b" ]; then
        echo "capture.sh: $PG_BIN/$b not found (set PG_BIN)" >&2
        exit 1
    fi
done

tmp=$(mktemp -d /tmp/pgo-capture.XXXXXX)
run_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
cleanup() {
    if [ -f "$tmp/data/postmaster.pid" ]; then
        run_pg "$PG_BIN/pg_ctl" -D "$tmp/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$tmp"
fi

# No TCP listener at all: the port number only names the socket file in the
# private socket directory, so it cannot collide with another server.
port=$((20000 + RANDOM % 20000))
run_pg "$PG_BIN/initdb" -D "$tmp/data" -U postgres --auth=trust -E UTF8 --locale=C \
    >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; exit 1; }
cat >>"$tmp/data/postgresql.conf" <<EOF
listen_addresses = ''
port = $port
unix_socket_directories = '$tmp'
wal_level = logical
max_wal_senders = 4
max_replication_slots = 4
max_prepared_transactions = 10
logical_decoding_work_mem = 64kB
timezone = 'UTC'
datestyle = 'ISO, MDY'
fsync = off
EOF
run_pg "$PG_BIN/pg_ctl" -D "$tmp/data" -l "$tmp/server.log" -w start >/dev/null \
    || { cat "$tmp/server.log" >&2; exit 1; }

conninfo="host=$tmp port=$port user=postgres dbname=postgres"
sql() {
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -At -d "$conninfo" "$@"
}
# capture SLOT FILE OPTIONS: everything the slot has, up to the current WAL end.
capture() {
    local end
    end=$(sql -c "SELECT pg_current_wal_lsn()")
    "$capture" -d "$conninfo" -S "$1" -o "$here/$2" -O "$3" -e "$end" -i 10
}
# wait_for QUERY: polls until QUERY returns true, for at most 30 seconds.
wait_for() {
    local i
    for i in $(seq 300); do
        if [ "$(sql -c "$1")" = t ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "capture.sh: timed out waiting for: $1" >&2
    exit 1
}
# caught_up SLOT: waits until the walsender on SLOT has decoded all WAL so far.
caught_up() {
    local end
    end=$(sql -c "SELECT pg_current_wal_lsn()")
    wait_for "SELECT r.sent_lsn >= '$end' FROM pg_stat_replication r
              JOIN pg_replication_slots s ON s.active_pid = r.pid
              WHERE s.slot_name = '$1'"
}

sql >/dev/null <<'EOF'
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE t (
    id integer PRIMARY KEY,
    name text NOT NULL,
    amount numeric(10, 2),
    flag boolean,
    created timestamptz,
    doc jsonb,
    feeling mood,
    big text,
    note text
);
-- EXTERNAL: stored out of line uncompressed, so a 4000-byte value is TOASTed.
ALTER TABLE t ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE t_full (id integer, v text);
ALTER TABLE t_full REPLICA IDENTITY FULL;
CREATE TABLE t_trunc (id serial PRIMARY KEY);
CREATE TABLE s (id integer, v text, m mood);
CREATE TABLE c (id integer PRIMARY KEY, v text);
CREATE PUBLICATION p FOR ALL TABLES;
SELECT pg_replication_origin_create('upstream');
EOF

# ---- (a) protocol 1 ----
sql -c "SELECT pg_create_logical_replication_slot('s1', 'pgoutput')" >/dev/null
sql >/dev/null <<'EOF'
BEGIN;
INSERT INTO t VALUES (1, 'alice', 12.50, true, '2024-01-02 03:04:05+00', '{"a": 1}', 'happy',
                      repeat('x', 4000), NULL);
INSERT INTO t VALUES (2, 'bob', NULL, NULL, NULL, NULL, NULL, NULL, 'second');
COMMIT;
UPDATE t SET note = 'touched' WHERE id = 1;
UPDATE t SET id = 3 WHERE id = 2;
INSERT INTO t_full VALUES (1, 'one'), (2, NULL);
UPDATE t_full SET v = 'uno' WHERE id = 1;
DELETE FROM t_full WHERE id = 2;
DELETE FROM t WHERE id = 3;
BEGIN;
SELECT pg_logical_emit_message(true, 'outbox', 'hello tx');
INSERT INTO t_trunc DEFAULT VALUES;
COMMIT;
SELECT pg_logical_emit_message(false, 'ntx', 'payload');
TRUNCATE t_full, t_trunc RESTART IDENTITY;
-- Replay a transaction as if it came from another node: the walsender then
-- sends an Origin message after Begin (and uses the origin's commit time).
SELECT pg_replication_origin_session_setup('upstream');
BEGIN;
SELECT pg_replication_origin_xact_setup('0/ABCDEF', '2024-01-01 00:00:00+00');
INSERT INTO t_full VALUES (9, 'from upstream');
COMMIT;
SELECT pg_replication_origin_session_reset();
EOF
capture s1 proto1.bin "proto_version '1', publication_names 'p', messages 'true'"

# ---- (b) protocol 2, streaming ----
# Captured live: the walsender streams an in-progress transaction's rows only
# while it is still in progress. Decoded after the fact, the aborted
# transaction is seen as concurrently aborted and its stream segment holds no
# rows (only Type and Relation), so it is kept open until it has streamed.
sql -c "SELECT pg_create_logical_replication_slot('s2', 'pgoutput')" >/dev/null
"$capture" -d "$conninfo" -S s2 -o "$here/proto2_stream.bin" -i 5 \
    -O "proto_version '2', publication_names 'p', messages 'true', streaming 'on'" &
capture_pid=$!
wait_for "SELECT active FROM pg_replication_slots WHERE slot_name = 's2'"
sql >/dev/null <<'EOF'
INSERT INTO s VALUES (0, 'small', 'ok');
BEGIN;
SELECT pg_logical_emit_message(true, 'big', 'in stream');
INSERT INTO s SELECT g, 'c' || g, 'happy' FROM generate_series(1, 1000) g;
COMMIT;
EOF
caught_up s2
streams=$(sql -c "SELECT stream_count FROM pg_stat_replication_slots WHERE slot_name = 's2'")
mkfifo "$tmp/session"
sql <"$tmp/session" >/dev/null &
session_pid=$!
exec 3>"$tmp/session"
echo "BEGIN; INSERT INTO s SELECT g, 'a' || g, 'sad' FROM generate_series(1, 600) g;" >&3
wait_for "SELECT stream_count > $streams FROM pg_stat_replication_slots WHERE slot_name = 's2'"
echo "ROLLBACK;" >&3
exec 3>&-
wait "$session_pid"
sql >/dev/null <<'EOF'
BEGIN;
INSERT INTO s SELECT g, 'p' || g, 'ok' FROM generate_series(1, 200) g;
SAVEPOINT sp;
INSERT INTO s SELECT g, 's' || g, 'ok' FROM generate_series(1, 600) g;
ROLLBACK TO SAVEPOINT sp;
INSERT INTO s VALUES (-1, 'after', 'ok');
COMMIT;
EOF
caught_up s2
wait "$capture_pid"

# ---- (c) protocol 3, two-phase ----
# The slot must be created with two_phase (4th argument) for PREPARE to be
# decoded at prepare time.
sql -c "SELECT pg_create_logical_replication_slot('s3', 'pgoutput', false, true)" >/dev/null
sql >/dev/null <<'EOF'
BEGIN;
INSERT INTO c VALUES (1, 'prepared');
PREPARE TRANSACTION 'gid-commit';
COMMIT PREPARED 'gid-commit';
BEGIN;
INSERT INTO c VALUES (2, 'rolled back');
PREPARE TRANSACTION 'gid-rollback';
ROLLBACK PREPARED 'gid-rollback';
BEGIN;
INSERT INTO c SELECT g, 'big' || g FROM generate_series(100, 1099) g;
PREPARE TRANSACTION 'gid-stream';
COMMIT PREPARED 'gid-stream';
EOF
capture s3 proto3_twophase.bin \
    "proto_version '3', publication_names 'p', two_phase 'on', streaming 'on'"

ls -l "$here"/*.bin

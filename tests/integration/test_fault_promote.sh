#!/usr/bin/env bash
# ctest: lock kafka_proxy -- proxies the shared broker's proxied listener (one address)
# Fault matrix: failover to a promoted standby that is behind. A standby is
# taken with pg_basebackup (Debian's PostgreSQL 15, which copies servers up
# to 15; a newer server is copied with pg_backup_start/pg_backup_stop and a
# file copy, the low-level way, since Maven's server binaries have no
# pg_basebackup) and run by the server's own binaries; it stops receiving WAL
# (async replication that lost its tail); the primary goes on and the relay
# publishes well past the standby's position. The standby is promoted, the
# operator runs `outboxd check` against it (the documented first step: it
# creates the slot there), and the relay's address (the proxy, like a
# virtual IP) is moved to the new primary while the relay runs. New commits
# on the new primary have LSNs below the relay's last checkpoint: a relay
# that skips by the old LSNs drops them silently. Wanted: none is skipped,
# each arrives exactly once, and the relay reports the gap loudly.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/faults.sh"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
SERVER_BIN=${PG_SERVER_BIN:-$PG_BIN} # pg_ctl of the server's own version
STANDBY=$(mktemp -d /tmp/outboxd-standby.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$STANDBY"
SB_PORT=$(free_port)
standby_cleanup() {
    as_pg "$SERVER_BIN/pg_ctl" -D "$STANDBY/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$STANDBY"
}
extra_cleanup() { standby_cleanup; fault_cleanup; }

DB=fpm_$RUN_ID
SLOT=${DB}_${RUN_ID}
create_outbox_db "$DB"
write_proxied_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"
lsn0=$(slot_lsn "$DB" "$SLOT")
start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID

# Phase A on the primary: published, and part of the standby's copy.
start_fixed_writers "$DB" 2 100 2 100 a # 400 rows
wait_writers "$WRITER_PID"
wait_drained_watch "$DB" "$SLOT" "$relay"

# low_level_backup DIR: a copy of the stack's cluster between
# pg_backup_start and pg_backup_stop (PostgreSQL 15+ names) in one session,
# its backup_label from pg_backup_stop, and the WAL to the backup's end
# (pg_backup_stop switches WAL files, so a second copy of pg_wal has it).
# Like pg_basebackup, it leaves out the primary's slots and its pid file.
low_level_backup() {
    local dir=$1
    psql -X -q -At -v ON_ERROR_STOP=1 -d postgres >"$WORK/backup_label" 2>"$WORK/basebackup.log" <<SQL || return 1
SELECT pg_backup_start('outboxd-test', true) \\g /dev/null
\\! cp -a "$PGDATA/." "$dir/"
SELECT labelfile FROM pg_backup_stop(false);
SQL
    cp -a "$PGDATA/pg_wal/." "$dir/pg_wal/"
    rm -f "$dir/postmaster.pid" "$dir/postmaster.opts"
    rm -rf "$dir"/pg_replslot/*
    cp "$WORK/backup_label" "$dir/backup_label"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$dir"
    grep -q "^START WAL LOCATION" "$dir/backup_label"
}
if [ "${PG_SERVER_VERSION:-15}" -le 15 ]; then
    log "pg_basebackup of the primary (a standby that then stops receiving WAL)"
    as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$PGPORT" -U postgres -D "$STANDBY/data" -X stream -c fast \
        >"$WORK/basebackup.log" 2>&1 || { cat "$WORK/basebackup.log" >&2; fail "pg_basebackup failed"; }
else
    log "low-level backup of the PostgreSQL $PG_SERVER_VERSION primary (pg_basebackup $(basename "$(dirname "$PG_BIN")") cannot copy it)"
    as_pg mkdir -m 700 "$STANDBY/data"
    low_level_backup "$STANDBY/data" || { cat "$WORK/basebackup.log" >&2; fail "the low-level backup failed"; }
fi
as_pg touch "$STANDBY/data/standby.signal" # no primary_conninfo: it stays where the backup ends
as_pg "$SERVER_BIN/pg_ctl" -D "$STANDBY/data" -l "$STANDBY/standby.log" -w -t 90 \
    -o "-p $SB_PORT -k $STANDBY -c listen_addresses=127.0.0.1" start >/dev/null ||
    { tail -n 20 "$STANDBY/standby.log" >&2; fail "the standby did not start"; }

# Phase B on the primary only: the relay publishes past the standby.
start_fixed_writers "$DB" 2 500 4 200 b # 4,000 rows
wait_writers "$WRITER_PID"
wait_drained_watch "$DB" "$SLOT" "$relay"
ck_lsn=$(slot_lsn "$DB" "$SLOT")
: >"$WORK/expected.tsv"
expected_events "$DB" "$WORK/expected.tsv"
log "relay published up to $ck_lsn on the old primary ($(wc -l <"$WORK/expected.tsv") rows)"

log "promoting the standby (port $SB_PORT)"
as_pg "$SERVER_BIN/pg_ctl" -D "$STANDBY/data" -w -t 90 promote >/dev/null || fail "promote failed"
sb_lsn=$(psql -X -qAt -h 127.0.0.1 -p "$SB_PORT" -d "$DB" -c "SELECT pg_current_wal_lsn()")
log "new primary: timeline $(psql -X -qAt -h 127.0.0.1 -p "$SB_PORT" -d "$DB" -c "SELECT timeline_id FROM pg_control_checkpoint()"), WAL at $sb_lsn (the relay's checkpoint is at $ck_lsn)"
# The operator's first step on the new primary: check creates the slot.
PGPORT=$SB_PORT write_config "$WORK/check-new.yaml" "$DB"
prepare_sources "$WORK/check-new.yaml"
log "moving the relay's PostgreSQL address to the new primary"
toxi upstream pg "127.0.0.1:$SB_PORT"

# Phase C on the new primary: every row must be published.
PGPORT=$SB_PORT start_fixed_writers "$DB" 2 100 2 50 c # 400 rows
wait_writers "$WRITER_PID"
end_lsn=$(psql -X -qAt -h 127.0.0.1 -p "$SB_PORT" -d "$DB" -c "SELECT pg_current_wal_lsn()")
[ "$(psql -X -qAt -h 127.0.0.1 -p "$SB_PORT" -d "$DB" -c "SELECT '$end_lsn'::pg_lsn < '$ck_lsn'::pg_lsn")" = t ] ||
    fail "test setup: the new primary's WAL ($end_lsn) passed the old checkpoint ($ck_lsn); write more in phase B"
log "phase C committed on the new primary below the old checkpoint ($end_lsn < $ck_lsn)"
PGPORT=$SB_PORT RELAY_WATCH=$relay wait_drained_watch "$DB" "$SLOT" "$relay"
PGPORT=$SB_PORT psql_db "$DB" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM outbox WHERE aggregateid LIKE 'c-%'" >>"$WORK/expected.tsv"
n=$(wc -l <"$WORK/expected.tsv")
[ "$n" -eq 4800 ] || fail "expected 4,800 rows (400 + 4,000 on the old primary, 400 on the new), found $n"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed across the failover (rows committed on the new primary below the old checkpoint were skipped?)"
stop_relay_ok "$relay"
log_grep "$WORK/relay.log" "ERROR.*(cannot be trusted|were not relayed|may be missing)" "the relay reported the gap"
drop_case "$DB" "$SLOT"
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# A standby promoted after it fell behind the primary: same system id, a new
# timeline, LSNs lower than the relay's last checkpoint. The relay pointed at
# the new primary (whose slot `outboxd check` created) must not skip the new
# primary's rows by the old LSNs, and must say what happened.
#
# Uses its own two throwaway clusters (the stack's server stays untouched) and
# the stack's broker.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

# Not under $WORK: the postgres OS user (when run as root) must reach it.
D=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-promo.XXXXXX")
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$D"
P1=$(free_port)
P2=$(free_port)
[ "$P1" != "$P2" ] || P2=$((P1 + 1))
extra_cleanup() {
    for c in p1 p2; do
        [ -f "$D/$c/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" -D "$D/$c" -w stop -m immediate >/dev/null 2>&1
    done
    rm -rf "$D"
    return 0
}

as_pg "$PG_BIN/initdb" -D "$D/p1" -U postgres -A trust >/dev/null
cat >>"$D/p1/postgresql.conf" <<EOF
port = $P1
listen_addresses = '127.0.0.1'
unix_socket_directories = '$D'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
EOF
echo "host replication all 127.0.0.1/32 trust" >>"$D/p1/pg_hba.conf"
as_pg "$PG_BIN/pg_ctl" -D "$D/p1" -l "$D/p1.log" -w start >/dev/null

q() { psql -X -q -At -h 127.0.0.1 -p "$1" -U postgres -d "${3:-app}" -v ON_ERROR_STOP=1 -c "$2"; }
ins() { q "$1" "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT 'a', '$2', 't', jsonb_build_object('seq', g) FROM generate_series(1, $3) g" >/dev/null; }
q "$P1" "CREATE DATABASE app" postgres >/dev/null
q "$P1" "CREATE TABLE outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype text NOT NULL, aggregateid text, type text NOT NULL, payload jsonb)" >/dev/null

config() { # config PORT FILE
    cat >"$2" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
relay:
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
sources:
  - name: app
    dsn: "host=127.0.0.1 port=$1 dbname=app user=postgres"
    slot: app_slot
    publication: app_pub
    tables:
      - table: public.outbox
        topic: "$RUN_ID.ev.\${aggregateid}"
EOF
}
config "$P1" "$WORK/p1.yaml"
config "$P2" "$WORK/p2.yaml"
prepare_sources "$WORK/p1.yaml"

ins "$P1" before 10
start_relay "$WORK/p1.yaml" relay1
wait_slot() { # wait_slot PORT: the relay confirmed all WAL written so far
    local target ok
    target=$(q "$1" "SELECT pg_current_wal_lsn()")
    for _ in $(seq 1 1500); do
        ok=$(q "$1" "SELECT coalesce(confirmed_flush_lsn >= '$target', false) FROM pg_replication_slots WHERE slot_name = 'app_slot'")
        [ "$ok" = t ] && return 0
        sleep 0.2
    done
    fail "slot on port $1 did not reach $target"
}
wait_slot "$P1"

log "standby from a base backup, then stopped: it falls behind"
as_pg "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$P1" -U postgres -D "$D/p2" -R -X stream -c fast
sed -i "s/^port = $P1/port = $P2/" "$D/p2/postgresql.conf"
as_pg "$PG_BIN/pg_ctl" -D "$D/p2" -l "$D/p2.log" -w start >/dev/null
target=$(q "$P1" "SELECT pg_current_wal_lsn()")
for _ in $(seq 1 600); do
    [ "$(q "$P2" "SELECT pg_last_wal_replay_lsn() >= '$target'" postgres)" = t ] && break
    sleep 0.1
done
[ "$(q "$P2" "SELECT pg_last_wal_replay_lsn() >= '$target'" postgres)" = t ] || fail "the standby did not catch up"
as_pg "$PG_BIN/pg_ctl" -D "$D/p2" -w stop >/dev/null

ins "$P1" lost_on_failover 20 # published from the old primary, never on the standby
wait_slot "$P1"
stop_relay_ok "$RELAY_PID" "relay on the old primary"
# What the old primary published: every row it has, once.
: >"$WORK/expected.tsv"
q "$P1" "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregateid, '-' FROM outbox" | tr '|' '\t' >>"$WORK/expected.tsv"
as_pg "$PG_BIN/pg_ctl" -D "$D/p1" -w stop -m immediate >/dev/null

log "promote the standby; check creates the slot there; new rows"
as_pg "$PG_BIN/pg_ctl" -D "$D/p2" -l "$D/p2.log" -w start >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$D/p2" -w promote >/dev/null
prepare_sources "$WORK/p2.yaml"
ins "$P2" after_promotion 5
start_relay "$WORK/p2.yaml" relay2
wait_slot "$P2"
stop_relay_ok "$RELAY_PID" "relay on the promoted standby"

grep -q "ERROR .*cannot be trusted on this server: it was written on timeline 1 up to .*, but this server's history left timeline 1 at" "$WORK/relay2.log" ||
    fail "the relay did not report the checkpoint of the old timeline"
grep "cannot be trusted" "$WORK/relay2.log" | sed 's/^.*\] //' | cut -c1-300 >&2

# Everything published exactly once: the new primary's rows included.
q "$P2" "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregateid, '-' FROM outbox WHERE aggregateid = 'after_promotion'" | tr '|' '\t' >>"$WORK/expected.tsv"
log "rows expected: $(wc -l <"$WORK/expected.tsv") (30 from the old primary, 5 written after the promotion)"
IDLE_MS=3000 check_exactly_once "$WORK/expected.tsv" || fail "rows of the promoted standby were skipped or duplicated"
log "PASS"

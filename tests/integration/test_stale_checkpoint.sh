#!/usr/bin/env bash
# ctest: parallel
# A checkpoint whose LSNs name other transactions on this server (after a
# standby promotion or a restore: same system id, lower LSNs or another
# timeline) must never make the relay skip new commits.
#
# The relay publishes a first batch and stops; the slot is dropped and created
# again by `outboxd check` (the documented first step on a new primary). The
# checkpoint topic then gets the record the old primary would have left:
#   A. an older-format record (no timeline) reaching far beyond this server's
#      WAL, as a primary that was ahead of the promoted standby writes;
#   B. a record of timeline N+1 at the current WAL position, from a history
#      this server does not have.
# Rows written after each step must be published exactly once, and the relay
# must say loudly that it did not trust the checkpoint.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=pstale_$RUN_ID
SLOT="${DB}_${RUN_ID}"
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
prepare_sources "$WORK/outboxd.yaml"

# forge_checkpoint COMMIT_LSN END_LSN TIMELINE|-: what the old primary's relay
# would have committed last for this source.
forge_checkpoint() {
    local commit=$1 end=$2 tli=$3 sysid extra=""
    sysid=$(psql_db "$DB" -c "SELECT system_identifier FROM pg_control_system()")
    [ "$tli" = "-" ] || extra=",\"timeline\":$tli"
    printf '%s|{"v":1,"source":"%s","system_id":"%s","database":"%s","slot":"%s","commit_lsn":"%s","end_lsn":"%s","changes":-1%s}\n' \
        "$DB" "$DB" "$sysid" "$DB" "$SLOT" "$commit" "$end" "$extra" |
        "$STACK_SH" kafka-run kafka.tools.ConsoleProducer --bootstrap-server "$KAFKA_BOOTSTRAP" \
            --topic "$RUN_ID.checkpoints" --property parse.key=true --property 'key.separator=|' \
            >"$WORK/producer.log" 2>&1 || {
        cat "$WORK/producer.log" >&2
        fail "could not write the forged checkpoint"
    }
}

recreate_slot_with_check() {
    psql_db "$DB" -c "SELECT pg_drop_replication_slot('$SLOT')" >/dev/null
    prepare_sources "$WORK/outboxd.yaml"
    grep -q "created replication slot" "$WORK/check.log" || fail "outboxd check did not create the slot"
}

psql_db "$DB" -c "SELECT write_events('stale', 'k1', 40)" >/dev/null
start_relay "$WORK/outboxd.yaml"
wait_drained "$DB" "$SLOT" 300
stop_relay_ok "$RELAY_PID"

log "A: slot re-created by check, checkpoint (old format) far beyond this server's WAL"
recreate_slot_with_check
forge_checkpoint "FFF/1000" "FFF/1040" -
psql_db "$DB" -c "SELECT write_events('stale', 'k2', 30)" >/dev/null
start_relay "$WORK/outboxd.yaml"
wait_drained "$DB" "$SLOT" 300
stop_relay_ok "$RELAY_PID"
grep -q "cannot be trusted on this server: it reaches FFF/1040 but this server's WAL ends at" \
    "$WORK/relay.log" || fail "A: the relay did not report the untrusted checkpoint"

log "B: checkpoint of a timeline this server does not have, at its current WAL position"
tli=$(psql_db "$DB" -c "SELECT timeline_id FROM pg_control_checkpoint()")
psql_db "$DB" -c "SELECT write_events('stale', 'k3', 30)" >/dev/null
recreate_slot_with_check
psql_db "$DB" -c "SELECT write_events('stale', 'k3', 20)" >/dev/null
lsn=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
forge_checkpoint "$lsn" "$lsn" $((tli + 1))
start_relay "$WORK/outboxd.yaml"
wait_drained "$DB" "$SLOT" 300
stop_relay_ok "$RELAY_PID"
grep -q "written on timeline $((tli + 1)), which is not in the history of this server" \
    "$WORK/relay.log" || fail "B: the relay did not report the foreign timeline"

# Rows of k3 written before the slot was re-created were never decoded (the
# relay said so); everything else arrives exactly once.
: >"$WORK/expected.tsv"
psql_db "$DB" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM outbox WHERE aggregateid <> 'k3' OR (payload->>'seq')::int > 30" >>"$WORK/expected.tsv"
log "rows expected: $(wc -l <"$WORK/expected.tsv")"
check_exactly_once "$WORK/expected.tsv" || fail "rows written after the slot was re-created were skipped or duplicated"
grep -E "cannot be trusted|streaming slot" "$WORK/relay.log" | sed 's/^.*\] //' | cut -c1-240 >&2
drop_source "$DB" "$SLOT"
log "PASS"

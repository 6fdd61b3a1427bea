#!/usr/bin/env bash
# ctest: parallel
# outboxd replay against a server that stops answering mid-replay: the
# walsender serving the replay's slot copy is frozen with SIGSTOP (its socket
# stays open and silent, like a half-open path). The replay asks for a reply
# every second; unanswered for relay.wal_receiver_timeout_ms (3 s here) it
# must give up with exit 1 and say why, instead of hanging until TCP gives
# up. Run again once the server is back, it resumes: the range is in its
# target exactly once.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB=rpf_$RUN_ID
SLOT=${DB}_${RUN_ID}
create_outbox_db "$DB"
write_config "$WORK/outboxd.yaml" "$DB"
sed -i 's/^relay:$/relay:\n  replay_window: 1h\n  missing_topic: create\n  wal_receiver_timeout_ms: 3000/' "$WORK/outboxd.yaml"
# Small Kafka transactions and far more WAL than the socket buffers hold
# (with autotuning they held all of 15,000 rows once, under ASan: the replay
# finished its range after the freeze and exited 0), so the replay is still
# streaming when its walsender is frozen.
sed -i 's/^  max_batch_events: .*/  max_batch_events: 50/' "$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"

X=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
for i in $(seq 1 200); do echo "SELECT write_events('$DB', 'k$((i % 5))', 500);"; done | psql_db "$DB" >/dev/null
Y=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
: >"$WORK/all.tsv"
expected_events "$DB" "$WORK/all.tsv"
awk -F'\t' -v OFS='\t' '{ $3 = $3 ".replay"; print }' "$WORK/all.tsv" >"$WORK/expect.tsv"
[ "$(wc -l <"$WORK/expect.tsv")" = 100000 ] || fail "expected 100,000 rows in [X, Y]"

FROZEN=""
extra_cleanup() { [ -z "$FROZEN" ] || kill -CONT "$FROZEN" 2>/dev/null || true; }

"$OUTBOXD_BIN" replay -c "$WORK/outboxd.yaml" --source "$DB" --from-lsn "$X" --to-lsn "$Y" \
    >"$WORK/replay1.out" 2>"$WORK/relay-replay1.log" &
rpid=$!
BG_PIDS+=("$rpid")
# The walsender, not the normal backend that advances the new copy first
# (the slot shows active under it too; frozen there, the replay waits in a
# query with no time limit: see replay_copy).
for _ in $(seq 1 600); do
    FROZEN=$(psql_db "$DB" -c "SELECT s.active_pid FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = '${SLOT}_replay' AND s.active")
    [ -n "$FROZEN" ] && break
    kill -0 "$rpid" 2>/dev/null || fail "the replay ended before it could be frozen: $(cat "$WORK/relay-replay1.log")"
    sleep 0.05
done
[ -n "$FROZEN" ] || fail "the replay's walsender never showed up"
kill -STOP "$FROZEN"
t0=$(date +%s)
log "froze walsender $FROZEN of the replay's slot copy"
# What the socket buffers already held is relayed first (seconds), then
# the silence counts; without the check the replay hangs for good, so a
# generous bound separates the two on a loaded machine.
wait_exit "$rpid" 90 || fail "the replay still hangs 90 s after its server froze"
rc=$EXIT_RC
kill -CONT "$FROZEN"
FROZEN=""
[ "$rc" = 1 ] || fail "the replay exited $rc, expected 1: $(tail -3 "$WORK/relay-replay1.log")"
grep -q "the connection is presumed dead" "$WORK/relay-replay1.log" ||
    fail "the replay did not say why it stopped: $(tail -3 "$WORK/relay-replay1.log")"
log "the replay gave up $(($(date +%s) - t0)) s after the freeze, exit 1"

"$OUTBOXD_BIN" replay -c "$WORK/outboxd.yaml" --source "$DB" --from-lsn "$X" --to-lsn "$Y" \
    >"$WORK/replay2.out" 2>"$WORK/relay-replay2.log" || fail "the second replay failed: $(tail -3 "$WORK/relay-replay2.log")"
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -T "^$RUN_ID\\.ev\\..*\\.replay\$" --idle-ms 3000 \
    --timeout-ms 120000 --expect "$WORK/expect.tsv" >"$WORK/okcat.out" ||
    { cat "$WORK/okcat.out" >&2; fail "the replay target does not hold the range exactly once"; }
tail -1 "$WORK/okcat.out" >&2
drop_source "$DB" "$SLOT"
drop_source "$DB" "${SLOT}_keep"
log "PASS"

#!/usr/bin/env bash
# ctest: parallel
# outboxd replay (README "Replay"): events published, then replayed from an
# LSN into fresh topics while the relay keeps running and writers keep
# writing.
#   1. The replayed set equals the original set committed in [X, Y], each
#      exactly once, with the replay headers (outboxd.replay,
#      outboxd.replay.lsn >= X); the live topics hold every row exactly once.
#   2. --dry-run counts the same events and publishes nothing.
#   3. A replay killed with SIGKILL midway and run again resumes from its
#      checkpoint, also after another replay of the source (another target)
#      ran in between: both targets hold the range exactly once.
#   4. A source with a short window: the relay advances its retention slot,
#      and a replay from before the window is refused naming where it starts.
#   5. Clear errors: unknown source, no retention slot, --to-lsn before
#      --from-lsn, a target that is the checkpoint or dead-letter topic, a
#      target that refuses the records for good.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/writers.sh"

DB=rp_$RUN_ID
DB2=rpw_$RUN_ID
create_outbox_db "$DB"
create_outbox_db "$DB2"
COMMIT_INTERVAL_MS=20 write_config "$WORK/outboxd.yaml" "$DB" "$DB2"
# relay: replay_window 1h for every source, missing topics created; the
# second source overrides it with 2s (its retention slot moves during the
# test); status_interval_ms short so confirmations (and so the window) move.
sed -i 's/^relay:$/relay:\n  replay_window: 1h\n  missing_topic: create\n  status_interval_ms: 500/' \
    "$WORK/outboxd.yaml"
sed -i "/^  - name: $DB2\$/a\\    replay_window: 2s" "$WORK/outboxd.yaml"
MPORT=$(free_port)
printf 'metrics:\n  listen: "127.0.0.1:%s"\n' "$MPORT" >>"$WORK/outboxd.yaml"
SLOT=${DB}_${RUN_ID}
SLOT2=${DB2}_${RUN_ID}
prepare_sources "$WORK/outboxd.yaml"
for s in "$SLOT" "$SLOT2"; do
    [ "$(psql_db "$DB" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${s}_keep'")" = 1 ] ||
        fail "outboxd check did not create retention slot ${s}_keep"
done
log "outboxd check created the retention slots ${SLOT}_keep and ${SLOT2}_keep"

start_relay "$WORK/outboxd.yaml" relay
relay=$RELAY_PID

# Phase A, before X; phase B, [X, Y]; phase C runs during the replays.
start_writers "$DB" 2 150
wait_writers "$WRITER_PID"
: >"$WORK/a.tsv"
expected_events "$DB" "$WORK/a.tsv"
X=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
start_writers "$DB" 2 200
wait_writers "$WRITER_PID"
Y=$(psql_db "$DB" -c "SELECT pg_current_wal_lsn()")
: >"$WORK/ab.tsv"
expected_events "$DB" "$WORK/ab.tsv"
# Phase B's rows: written after X and before Y (no writer ran at X or Y).
sort "$WORK/a.tsv" >"$WORK/a.sorted"
sort "$WORK/ab.tsv" | comm -13 "$WORK/a.sorted" - >"$WORK/b.tsv"
nb=$(wc -l <"$WORK/b.tsv")
[ "$nb" -gt 0 ] || fail "phase B wrote no rows"
log "X=$X Y=$Y: $(wc -l <"$WORK/a.tsv") rows before X, $nb rows in [X, Y]"
wait_drained "$DB" "$SLOT"

start_writers "$DB" 2 400 100 # phase C: ~8 s at 100 txn/s, during the replays
writer_c=$WRITER_PID

replay() { "$OUTBOXD_BIN" replay -c "$WORK/outboxd.yaml" "$@"; }

# 2. Dry run: the count of phase B, nothing published.
replay --source "$DB" --from-lsn "$X" --to-lsn "$Y" --topic-suffix .dry --dry-run \
    >"$WORK/dry.out" 2>"$WORK/relay-dry.log" || fail "dry run failed: $(cat "$WORK/relay-dry.log")"
grep -q "^would replay $nb event(s) of source $DB committed in \[$X, $Y\] (dry run" "$WORK/dry.out" ||
    fail "dry run did not count $nb events: $(cat "$WORK/dry.out")"
grep -q "topic $RUN_ID.ev.$DB.dry:" "$WORK/dry.out" || fail "dry run lists no topics: $(cat "$WORK/dry.out")"
log "dry run: $(head -1 "$WORK/dry.out")"

# 1. The replay into <topic>.replay.
replay --source "$DB" --from-lsn "$X" --to-lsn "$Y" >"$WORK/replay.out" 2>"$WORK/relay-replay.log" ||
    fail "replay failed: $(cat "$WORK/relay-replay.log")"
cat "$WORK/replay.out" >&2
grep -q "^replayed $nb event(s)" "$WORK/replay.out" || fail "replay did not report $nb events"
awk -F'\t' -v OFS='\t' '{ $3 = $3 ".replay"; print }' "$WORK/b.tsv" >"$WORK/b-replay.tsv"
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -T "^$RUN_ID\\.ev\\..*\\.replay\$" --idle-ms 4000 \
    --timeout-ms 300000 --expect "$WORK/b-replay.tsv" >"$WORK/okcat-replay.out" ||
    { cat "$WORK/okcat-replay.out" >&2; fail "the replay topics do not hold phase B exactly once"; }
tail -1 "$WORK/okcat-replay.out" >&2
# Every replayed record carries the replay headers, its original LSN >= X.
consume_json -T "^$RUN_ID\\.ev\\..*\\.replay\$" >"$WORK/replay.json"
python3 - "$WORK/replay.json" "$X" "$nb" <<'PY' || fail "replay headers missing or wrong"
import json, sys
def lsn(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)
x, n, seen = lsn(sys.argv[2]), int(sys.argv[3]), 0
for line in open(sys.argv[1]):
    h = json.loads(line)["headers"]
    assert h.get("outboxd.replay") == "true", h
    assert lsn(h["outboxd.replay.lsn"]) >= x, h
    assert lsn(h["outboxd.replay.commit_lsn"]) >= x, h
    seen += 1
assert seen == n, (seen, n)
print(f"{seen} replayed records carry outboxd.replay=true and an LSN >= X", file=sys.stderr)
PY
# The copy is gone; the live slot was never taken.
[ "$(psql_db "$DB" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${SLOT}_replay'")" = 0 ] ||
    fail "replay slot ${SLOT}_replay left behind"
kill -0 "$relay" || fail "the live relay died during the replay"

# 3. SIGKILL midway, then resume. Small Kafka transactions so the replay
# takes a while; killed once its copy slot shows a committed position.
sed 's/^  max_batch_events: .*/  max_batch_events: 2/' "$WORK/outboxd.yaml" >"$WORK/small.yaml"
"$OUTBOXD_BIN" replay -c "$WORK/small.yaml" --source "$DB" --from-lsn "$X" --to-lsn "$Y" \
    --topic-suffix .replay2 >"$WORK/kill.out" 2>"$WORK/relay-kill.log" &
rpid=$!
BG_PIDS+=("$rpid")
killed=no
for _ in $(seq 1 600); do
    moved=$(psql_db "$DB" -c "SELECT coalesce(confirmed_flush_lsn > '$X', false) FROM pg_replication_slots WHERE slot_name = '${SLOT}_replay'")
    if [ "$moved" = t ]; then
        kill -9 "$rpid" && killed=yes
        break
    fi
    kill -0 "$rpid" 2>/dev/null || break
    sleep 0.05
done
rc=0
wait "$rpid" 2>/dev/null || rc=$?
[ "$killed" = yes ] && [ "$rc" -eq 137 ] ||
    fail "the replay was not killed midway (killed=$killed, exit $rc): $(tail -5 "$WORK/relay-kill.log")"
log "replay SIGKILLed midway"
# Its walsender notices the dead client only at its next read of the socket
# (it may be busy decoding): until then the copy slot is still active, and
# an active slot is not a leftover.
for _ in $(seq 1 300); do
    [ "$(psql_db "$DB" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${SLOT}_replay' AND active")" = 0 ] && break
    sleep 0.1
done
# Until it is run again, `outboxd check` points at the leftover copy.
"$OUTBOXD_BIN" check -c "$WORK/outboxd.yaml" >"$WORK/check2.log" 2>&1 || true
grep -q "replay slot ${SLOT}_replay was left by an interrupted .outboxd replay. and holds WAL" "$WORK/check2.log" ||
    fail "outboxd check does not warn about the leftover replay slot: $(cat "$WORK/check2.log")"
# Another replay of the source in between (another target): it cleans the
# leftover copy, and its checkpoints must not replace the killed one's (they
# shared a key: the rerun below then started over and published twice).
replay --source "$DB" --from-lsn "$X" --to-lsn "$Y" --topic-suffix .replay3 \
    >"$WORK/replay3.out" 2>"$WORK/relay-replay3.log" || fail "replay .replay3 failed: $(cat "$WORK/relay-replay3.log")"
grep -q "dropping replay slot ${SLOT}_replay left over" "$WORK/relay-replay3.log" ||
    fail "the next replay did not clean the killed run's slot"
! grep -q "resuming:" "$WORK/relay-replay3.log" || fail "replay .replay3 resumed another replay's checkpoint"
replay --source "$DB" --from-lsn "$X" --to-lsn "$Y" --topic-suffix .replay2 \
    >"$WORK/resume.out" 2>"$WORK/relay-resume.log" || fail "resumed replay failed: $(cat "$WORK/relay-resume.log")"
cat "$WORK/resume.out" >&2
grep -q "resuming: an earlier run of this replay committed up to" "$WORK/relay-resume.log" ||
    fail "the rerun did not resume from the killed run's checkpoint (after another replay of the source)"
awk -F'\t' -v OFS='\t' '{ $3 = $3 ".replay3"; print }' "$WORK/b.tsv" >"$WORK/b-replay3.tsv"
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -T "^$RUN_ID\\.ev\\..*\\.replay3\$" --idle-ms 4000 \
    --timeout-ms 300000 --expect "$WORK/b-replay3.tsv" >"$WORK/okcat-replay3.out" ||
    { cat "$WORK/okcat-replay3.out" >&2; fail "the .replay3 topics do not hold phase B exactly once"; }
awk -F'\t' -v OFS='\t' '{ $3 = $3 ".replay2"; print }' "$WORK/b.tsv" >"$WORK/b-replay2.tsv"
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -T "^$RUN_ID\\.ev\\..*\\.replay2\$" --idle-ms 4000 \
    --timeout-ms 300000 --expect "$WORK/b-replay2.tsv" >"$WORK/okcat-replay2.out" ||
    { cat "$WORK/okcat-replay2.out" >&2; fail "after SIGKILL and rerun the target does not hold phase B exactly once"; }
tail -1 "$WORK/okcat-replay2.out" >&2

# The live stream: every row of phases A, B and C exactly once.
wait_writers "$writer_c"
wait_drained "$DB" "$SLOT"
: >"$WORK/all.tsv"
expected_events "$DB" "$WORK/all.tsv"
assert_rows_written "$WORK/all.tsv" "$DB"
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -T "^$RUN_ID\\.ev\\.[^.]*\$" --idle-ms 4000 \
    --timeout-ms 600000 --expect "$WORK/all.tsv" >"$WORK/okcat-live.out" ||
    { cat "$WORK/okcat-live.out" >&2; fail "the live topics lost or duplicated events during the replays"; }
tail -1 "$WORK/okcat-live.out" >&2

# Without --to-lsn the range ends at the WAL end when the replay starts: from
# Y on that is phase C exactly (the writers are done, the database idle), and
# the replay ends by itself. --to-topic puts everything into one topic.
sort "$WORK/ab.tsv" >"$WORK/ab.sorted"
sort "$WORK/all.tsv" | comm -13 "$WORK/ab.sorted" - |
    awk -F'\t' -v OFS='\t' -v t="$RUN_ID.tail" '{ $3 = t; print }' >"$WORK/c.tsv"
nc=$(wc -l <"$WORK/c.tsv")
timeout 300 "$OUTBOXD_BIN" replay -c "$WORK/outboxd.yaml" --source "$DB" --from-lsn "$Y" \
    --to-topic "$RUN_ID.tail" >"$WORK/tail.out" 2>"$WORK/relay-tail.log" ||
    fail "replay to the WAL end failed or did not end: $(tail -3 "$WORK/relay-tail.log")"
grep -q "^replayed $nc event(s) of source $DB committed in \[$Y, " "$WORK/tail.out" ||
    fail "replay to the WAL end did not report phase C's $nc events: $(cat "$WORK/tail.out")"
"$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -t "$RUN_ID.tail" --idle-ms 4000 \
    --timeout-ms 300000 --expect "$WORK/c.tsv" >"$WORK/okcat-tail.out" ||
    { cat "$WORK/okcat-tail.out" >&2; fail "--to-topic $RUN_ID.tail does not hold phase C exactly once"; }
log "replay from Y to the WAL end into one topic: $(head -1 "$WORK/tail.out")"

# 4. The 2 s window of the second source moves behind the live slot.
P0=$(psql_db "$DB2" -c "SELECT pg_current_wal_lsn()")
psql_db "$DB2" -c "SELECT write_events('$DB2', 'k1', 3)"
P=$(psql_db "$DB2" -c "SELECT pg_current_wal_lsn()")
wait_drained "$DB2" "$SLOT2"
for i in $(seq 1 300); do
    # keep confirmations coming so the ring has fresh entries to age
    [ $((i % 10)) -eq 0 ] && psql_db "$DB2" -c "SELECT write_events('$DB2', 'k2', 1)"
    ok=$(psql_db "$DB2" -c "SELECT coalesce(confirmed_flush_lsn >= '$P', false) FROM pg_replication_slots WHERE slot_name = '${SLOT2}_keep'")
    [ "$ok" = t ] && break
    sleep 0.1
done
[ "$ok" = t ] || fail "the relay did not advance retention slot ${SLOT2}_keep past $P within 30 s"
W=$(psql_db "$DB2" -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '${SLOT2}_keep'")
L=$(psql_db "$DB2" -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$SLOT2'")
[ "$(psql_db "$DB2" -c "SELECT '$W'::pg_lsn <= '$L'::pg_lsn")" = t ] ||
    fail "retention slot at $W is ahead of the live slot at $L"
log "retention slot ${SLOT2}_keep advanced to $W (live slot at $L, 2 s window)"
# The metric and `outboxd status` show the window.
# (The relay reads the advance's answer on a later turn: poll, bounded.)
check_metrics() {
    curl -sf "http://127.0.0.1:$MPORT/metrics" >"$WORK/metrics.txt" || fail "no /metrics"
    python3 - "$WORK/metrics.txt" "$DB2" "$P" "$DB" <<'PY'
import sys
def lsn(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)
vals = {}
for line in open(sys.argv[1]):
    for src in (sys.argv[2], sys.argv[4]):
        for m in ("outboxd_source_retention_slot_lsn", "outboxd_source_replay_window_bytes"):
            if line.startswith('%s{source="%s"}' % (m, src)):
                vals[(m, src)] = float(line.split()[-1])
assert vals[("outboxd_source_retention_slot_lsn", sys.argv[2])] >= lsn(sys.argv[3]), vals
assert vals[("outboxd_source_retention_slot_lsn", sys.argv[4])] > 0, vals
assert vals[("outboxd_source_replay_window_bytes", sys.argv[4])] > 0, vals
print("metrics:", vals, file=sys.stderr)
PY
}
for _ in $(seq 1 50); do check_metrics 2>/dev/null && break; sleep 0.2; done
check_metrics || fail "retention metrics wrong: $(grep -E 'retention|replay_window' "$WORK/metrics.txt")"
"$OUTBOXD_BIN" status -c "$WORK/outboxd.yaml" >"$WORK/status.out" 2>&1 || true
grep -q "replay_window:    2 s; retention slot ${SLOT2}_keep at " "$WORK/status.out" ||
    fail "status does not show the replay window: $(cat "$WORK/status.out")"
grep -q "replay_window:    3600 s; retention slot ${SLOT}_keep at " "$WORK/status.out" ||
    fail "status does not show the 1h replay window: $(cat "$WORK/status.out")"
grep "replay_window:" "$WORK/status.out" >&2
rc=0
replay --source "$DB2" --from-lsn "$P0" >"$WORK/before.out" 2>"$WORK/before.err" || rc=$?
[ "$rc" -eq 2 ] || fail "a replay from before the window exited $rc, expected 2"
W2=$(psql_db "$DB2" -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '${SLOT2}_keep'")
grep -Eq "is before the replay window, which starts at [0-9A-F]+/[0-9A-F]+ .*use --from-lsn" "$WORK/before.err" ||
    fail "unclear error for a replay before the window: $(cat "$WORK/before.err")"
log "before the window: $(cat "$WORK/before.err") (window now at $W2)"

# 5. Clear errors.
expect_error() { # expect_error PATTERN ARGS...
    local pat=$1 rc=0
    shift
    "$OUTBOXD_BIN" replay "$@" >"$WORK/err.out" 2>"$WORK/err.err" || rc=$?
    [ "$rc" -eq 2 ] || fail "replay $* exited $rc, expected 2: $(cat "$WORK/err.err")"
    grep -q -- "$pat" "$WORK/err.err" || fail "replay $*: expected '$pat', got: $(cat "$WORK/err.err")"
    log "error as expected: $(cat "$WORK/err.err")"
}
expect_error "unknown source 'nosuch' (expected one of the configuration's sources: $DB, $DB2)" \
    -c "$WORK/outboxd.yaml" --source nosuch --from-lsn "$X"
expect_error "is before --from-lsn" -c "$WORK/outboxd.yaml" --source "$DB" --from-lsn "$Y" --to-lsn "$X"
expect_error "needs --from-lsn" -c "$WORK/outboxd.yaml" --source "$DB"
expect_error "exclude each other" -c "$WORK/outboxd.yaml" --source "$DB" --from-lsn "$X" \
    --topic-suffix .a --to-topic b
expect_error "is the relay's checkpoint topic (relay.checkpoint_topic)" -c "$WORK/outboxd.yaml" \
    --source "$DB" --from-lsn "$X" --to-topic "$RUN_ID.checkpoints"
# Another replay of the source running (here: its lock held by a session of
# our own, as a replay started at the same moment would hold it): refused,
# after waiting 10 s for a just-killed one to let go.
psql_db "$DB" -c "SELECT pg_advisory_lock(hashtext('outboxd replay'), hashtext('${SLOT}_replay'))" -c "SELECT pg_sleep(60)" >/dev/null 2>&1 &
locker=$!
BG_PIDS+=("$locker")
for _ in $(seq 1 100); do
    [ "$(psql_db "$DB" -c "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = hashtext('${SLOT}_replay')::oid")" = 1 ] && break
    sleep 0.1
done
expect_error "another replay is running (it holds the replay lock of slot ${SLOT}_replay)" -c "$WORK/outboxd.yaml" \
    --source "$DB" --from-lsn "$X" --to-lsn "$Y" --dry-run
psql_db "$DB" -c "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = hashtext('${SLOT}_replay')::oid" >/dev/null
wait "$locker" 2>/dev/null || true
# A suffix that makes an event topic the relay's dead-letter topic (checked
# per event, as the suffix is appended to each event's topic).
sed "s/^  dead_letter_topic: .*/  dead_letter_topic: \"$RUN_ID.ev.$DB.dl\"/" "$WORK/outboxd.yaml" >"$WORK/dl.yaml"
expect_error "would be replayed into $RUN_ID.ev.$DB.dl, the relay's dead-letter topic" -c "$WORK/dl.yaml" \
    --source "$DB" --from-lsn "$X" --to-lsn "$Y" --topic-suffix .dl --dry-run
# A target that refuses the records for good (max.message.bytes below
# them): a rerun would stop at the same record, so it is exit 2, naming it.
"$STACK_SH" topic-create "$RUN_ID.small" 1 max.message.bytes=100 >&2
expect_error "Kafka refused a record of the transaction committed at .* for good" -c "$WORK/outboxd.yaml" \
    --source "$DB" --from-lsn "$X" --to-lsn "$Y" --to-topic "$RUN_ID.small"
grep -v 'replay_window' "$WORK/outboxd.yaml" >"$WORK/nowindow.yaml"
expect_error "has no retention slot, so there is nothing to replay from: set replay_window" \
    -c "$WORK/nowindow.yaml" --source "$DB" --from-lsn "$X"

stop_relay_ok "$relay"
for s in "$SLOT" "$SLOT2"; do
    drop_source "$DB" "${s}_keep"
    drop_source "$DB2" "${s}_keep"
done
drop_source "$DB" "$SLOT"
drop_source "$DB2" "$SLOT2"
log "PASS"

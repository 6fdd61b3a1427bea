# Shared helpers for integration tests. Source it; it loads the stack's env
# (tests/stack/stack.sh start must have run: ctest's fixture does that).
set -euo pipefail

: "${STACK_DIR:?STACK_DIR must be set (ctest sets it)}"
: "${OUTBOXD_BIN:?OUTBOXD_BIN must be set}"
: "${OUTBOXD_TOOLS:?OUTBOXD_TOOLS must be set}"
# shellcheck disable=SC1091
source "$STACK_DIR/env"
export PGHOST PGPORT PGUSER
export PATH="$PG_BIN:$PATH"

TEST_NAME=$(basename "$0" .sh)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/outboxd-${TEST_NAME}.XXXXXX")
RELAY_PIDS=()
BG_PIDS=()
PEEK_SLOTS=() # copy_slot_for_peek

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "$TEST_NAME" "$*" >&2; }
fail() {
    log "FAIL: $*"
    exit 1
}

# own_child PID: PID is a live child of this test's shell. A PID this test
# recorded and has since reaped (stop_relay waits) may belong to anyone by
# now: pid_max is 32768 here, and a busy machine wraps it in minutes (a
# stale kill -9 took down another stack's broker).
own_child() {
    [ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" = "$$" ]
}

# any_own_child PID...: one of them is still a live child of this shell.
any_own_child() {
    local p
    for p in "$@"; do own_child "$p" && return 0; done
    return 1
}

cleanup() {
    local rc=$?
    # A failed test's relays get SIGTERM first (up to 5 s): each source then
    # logs its final counters (events published, skipped, aborts), which say
    # on which side of the relay a missing event was lost. Before
    # extra_cleanup, which may stop what they talk to (a second server,
    # Toxiproxy) or kill them itself.
    if [ $rc -ne 0 ]; then
        local alive=() r
        for r in "${RELAY_PIDS[@]}"; do
            # CONT: a relay a test stopped (SIGSTOP) would not act on it.
            own_child "$r" && kill -TERM "$r" 2>/dev/null && kill -CONT "$r" 2>/dev/null &&
                alive+=("$r")
        done
        for _ in $(seq 1 50); do
            any_own_child "${alive[@]}" || break
            sleep 0.1
        done
    fi
    if declare -F extra_cleanup >/dev/null; then extra_cleanup || true; fi
    for p in "${BG_PIDS[@]}" "${RELAY_PIDS[@]}"; do
        own_child "$p" && kill -9 "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    local ps
    for ps in "${PEEK_SLOTS[@]}"; do
        drop_source "${ps%%:*}" "${ps#*:}"
    done
    # A failed test may not reach its own drops: its outbox databases and
    # their slots go here, so that no slot holds the shared server's WAL for
    # the rest of the run.
    if [ $rc -ne 0 ]; then
        local db
        for db in "${OUTBOX_DBS[@]}"; do
            # A killed relay's walsender may still hold its slot a moment.
            for _ in 1 2 3 4 5; do
                psql_db postgres -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = '$db' AND active" \
                    -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '$db' AND NOT active" >/dev/null 2>&1 || true
                [ "$(psql_db postgres -c "SELECT count(*) FROM pg_replication_slots WHERE database = '$db'" 2>/dev/null)" = 0 ] && break
                sleep 0.2
            done
            psql_db postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
        done
    fi
    if [ $rc -ne 0 ]; then
        log "exit $rc; relay logs follow (last 60 lines each)"
        for f in "$WORK"/relay*.log; do
            [ -f "$f" ] && { echo "--- $f" >&2; tail -n 60 "$f" >&2; }
        done
    fi
    # TEST_KEEP_LOGS=DIR: keep the relay logs of a passing run too.
    if [ -n "${TEST_KEEP_LOGS:-}" ]; then
        mkdir -p "$TEST_KEEP_LOGS" && cp "$WORK"/relay*.log "$TEST_KEEP_LOGS"/ 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT

psql_db() { # psql_db DB SQL...
    local db=$1
    shift
    psql -X -q -v ON_ERROR_STOP=1 -At -d "$db" "$@"
}

# A unique prefix so tests sharing one broker never read each other's topics.
RUN_ID="t$(date +%s%N | tail -c 9)$$"

# create_outbox_db DB: a database with a Debezium-style outbox table and a
# write_events() function that writes N rows for one key in the caller's
# transaction, numbering them per key (the row lock on seqs serializes
# writers of one key, so seq order is commit order).
OUTBOX_DBS=()
create_outbox_db() {
    local db=$1
    OUTBOX_DBS+=("$db")
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
    psql_db postgres -c "CREATE DATABASE \"$db\"" >/dev/null
    psql_db "$db" <<'SQL'
CREATE TABLE outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,
    aggregateid text,
    type text NOT NULL,
    payload jsonb,
    "timestamp" timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE seqs (aggregateid text PRIMARY KEY, n bigint NOT NULL);
CREATE FUNCTION write_events(aggtype text, agg text, nrows int) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE s bigint;
BEGIN
    FOR i IN 1..nrows LOOP
        INSERT INTO seqs VALUES (agg, 1)
            ON CONFLICT (aggregateid) DO UPDATE SET n = seqs.n + 1 RETURNING n INTO s;
        INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
        VALUES (aggtype, agg, 'Tested', jsonb_build_object('seq', s, 'key', agg, 'pad', repeat('x', 64)));
    END LOOP;
END $$;
SQL
}

# drop_slot_and_pub DB SLOT: leaves nothing behind in the shared server.
drop_source() {
    local db=$1 slot=$2
    psql_db "$db" -c "SELECT pg_drop_replication_slot('$slot') FROM pg_replication_slots WHERE slot_name = '$slot'" >/dev/null 2>&1 || true
}

# config_header: the kafka: and relay: sections of a test's configuration
# (this run's broker, transactional ids and topics), up to "sources:".
config_header() {
    cat <<EOF2
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
relay:
  commit_interval_ms: ${COMMIT_INTERVAL_MS:-20}
  max_batch_events: ${MAX_BATCH_EVENTS:-5000}
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  log_level: ${RELAY_LOG_LEVEL:-info}
sources:
EOF2
}

# write_config FILE SOURCE_DB... : one source per database, outbox table
# public.outbox, topics "$RUN_ID.${aggregatetype}".
write_config() {
    local file=$1
    shift
    {
        config_header
        for db in "$@"; do
            cat <<EOF2
  - name: $db
    dsn: "host=$PGHOST port=$PGPORT dbname=$db user=$PGUSER"
    slot: "${db}_${RUN_ID}"
    publication: "outboxd_pub"
    tables:
      - table: public.outbox
        topic: "$RUN_ID.ev.\${aggregatetype}"
EOF2
            # pgoutput passes logical decoding messages from PostgreSQL 14 on.
            [ "${PG_SERVER_VERSION:-15}" -lt 14 ] || cat <<EOF2
    messages:
      - prefix: outbox
        topic: "$RUN_ID.ev.\${aggregatetype}"
EOF2
        done
    } >"$file"
}

# prepare_sources CONFIG: `outboxd check` creates each publication and slot,
# so rows written from now on are decoded even before the relay first runs.
prepare_sources() {
    "$OUTBOXD_BIN" check --create -c "$1" >"$WORK/check.log" 2>&1 || {
        cat "$WORK/check.log" >&2
        fail "outboxd check failed"
    }
}

# start_relay CONFIG LOGNAME: runs outboxd in the background; sets RELAY_PID.
start_relay() {
    local conf=$1 name=${2:-relay}
    "$OUTBOXD_BIN" run -c "$conf" >>"$WORK/$name.log" 2>&1 &
    RELAY_PID=$!
    RELAY_PIDS+=("$RELAY_PID")
}

# stop_relay PID: SIGTERM and wait; returns the relay's exit status.
stop_relay() {
    local pid=$1 rc=0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "relay $pid did not stop within 60 s; killing"
        kill -9 "$pid"
        wait "$pid" 2>/dev/null || true
        return 99
    fi
    wait "$pid" || rc=$?
    return $rc
}

# stop_relay_ok PID [WHAT]: SIGTERM; fails the test unless the relay exits 0.
stop_relay_ok() {
    local rc=0
    stop_relay "$1" || rc=$?
    [ $rc -eq 0 ] || fail "${2:-relay} exited $rc after SIGTERM"
}

# consume_json OKCAT_ARGS... : every record as one JSON line (report lines dropped).
consume_json() {
    "$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" --idle-ms 3000 --json "$@" | grep '^{' || true
}

# wait_drained DB SLOT [TIMEOUT_S]: until the slot has confirmed everything
# written so far (the relay confirms only what Kafka has committed).
wait_drained() {
    local db=$1 slot=$2 timeout=${3:-300}
    local target
    target=$(psql_db "$db" -c "SELECT pg_current_wal_lsn()")
    for _ in $(seq 1 $((timeout * 5))); do
        local ok
        ok=$(psql_db "$db" -c "SELECT coalesce(confirmed_flush_lsn >= '$target', false) FROM pg_replication_slots WHERE slot_name = '$slot'")
        [ "$ok" = "t" ] && return 0
        sleep 0.2
    done
    fail "slot $slot did not reach $target within ${timeout}s"
}

# expected_events DB FILE: append id, key, topic, seq of every outbox row.
expected_events() {
    local db=$1 file=$2
    psql_db "$db" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.' || aggregatetype, payload->>'seq' FROM outbox WHERE payload IS NOT NULL AND aggregateid IS NOT NULL" >>"$file"
}

# check_exactly_once FILE: every expected event exactly once, in order per key.
# When events are missing, explain_missing says where they are, if anywhere.
check_exactly_once() {
    local file=$1 out
    out=$(mktemp "$WORK/okcat-check.XXXXXX")
    if "$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -T "^$RUN_ID\\.ev\\..*" \
        --idle-ms "${IDLE_MS:-4000}" --timeout-ms 600000 --expect "$file" | tee "$out"; then
        return 0
    fi
    explain_missing "$out" || true
    return 1
}

# copy_slot_for_peek DB SLOT: a test_decoding copy of SLOT (same start
# position), so that explain_missing can ask PostgreSQL whether it decodes a
# missing event at all; dropped when the test ends. Best effort: a server
# without test_decoding (a reduced build, e.g. tests/pg_versions.sh's) only
# loses that answer.
copy_slot_for_peek() {
    if psql_db "$1" -c "SELECT pg_copy_logical_replication_slot('$2', '$2_peek', false, 'test_decoding')" \
        >/dev/null 2>"$WORK/peek-copy.err"; then
        PEEK_SLOTS+=("$1:$2_peek")
    else
        log "no test_decoding copy of slot $2 (explain_missing will not ask PostgreSQL): $(head -c 300 "$WORK/peek-copy.err")"
    fi
}

# explain_missing OKCAT_OUTPUT: for the events okcat named missing (its
# examples: the first 10), a second read of every topic of this run (dead
# letters and checkpoints included) with read_uncommitted tells apart "in
# Kafka but in an aborted or still open transaction" (with topic, partition
# and offset) from "not in Kafka at all", and the slot copies (if any) say
# whether PostgreSQL decoded it: a rare miss (CI) is otherwise not
# diagnosable after the fact.
explain_missing() {
    local out=$1 ids id line n=0
    ids=$(sed -n 's/^okcat:   missing: id=\([^ ]*\) .*/\1/p' "$out")
    [ -n "$ids" ] || return 0
    "$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -T "^$RUN_ID\\..*" \
        -X isolation.level=read_uncommitted --idle-ms 3000 --stable-wait-ms 0 \
        --timeout-ms 120000 --print >"$WORK/read-uncommitted.txt" 2>&1 || true
    for id in $ids; do
        line=$(awk -F '\t' -v id="$id" '$5 == id {print $1 " [" $2 "] offset " $3 " key " $4}' \
            "$WORK/read-uncommitted.txt" | head -n 3)
        if [ -n "$line" ]; then
            log "missing event $id is in Kafka, found only read_uncommitted (an aborted or open transaction, or the committed read missed it): $line"
        else
            log "missing event $id is in no topic of this run, even read_uncommitted"
        fi
        n=$((n + 1))
    done
    log "read_uncommitted: $(tail -n 1 "$WORK/read-uncommitted.txt") over $n missing event(s)"
    local ps db slot f
    for ps in "${PEEK_SLOTS[@]}"; do
        db=${ps%%:*} slot=${ps#*:} f="$WORK/peek-$slot.txt"
        psql_db "$db" -F $'\t' -c "SELECT lsn, xid, data FROM pg_logical_slot_peek_changes('$slot', NULL, NULL)" >"$f" 2>&1 || true
        for id in $ids; do
            grep -q -F "$id" "$f" || continue
            log "PostgreSQL decodes missing event $id (slot copy $slot): $(grep -F "$id" "$f" | cut -f1,2 | head -n 1 | tr '\t' ' ') (lsn, xid); its transaction: $(awk -F '\t' -v id="$id" '$3 ~ /^BEGIN/ {b=$0} index($3, id) {print b; exit}' "$f" | cut -f1,3)"
        done
    done
}

# wait_streaming LOG N [TIMEOUT_S]: until N distinct sources logged
# "streaming slot" in LOG (a reconnect logs the line again, so lines are not
# counted); fails when the relay ($RELAY_PID) exits first or after TIMEOUT_S
# (default 180).
wait_streaming() {
    local f=$1 want=$2 timeout=${3:-180} n
    for _ in $(seq 1 $((timeout * 5))); do
        # The relay's shell may not have opened LOG yet: sed then exits 2,
        # which pipefail and set -e would make this test's exit status.
        n=$(sed -n 's/.* \[\([^]]*\)\] streaming slot .*/\1/p' "$f" 2>/dev/null | sort -u | wc -l || true)
        [ "${n:-0}" -ge "$want" ] && return 0
        kill -0 "$RELAY_PID" 2>/dev/null || fail "relay exited before streaming (see $f)"
        sleep 0.2
    done
    fail "relay did not stream all $want sources within $timeout s (see $f)"
}

# wait_log FILE PATTERN [TIMEOUT_S] [WHAT]: until FILE has a line matching
# the extended regex PATTERN; after TIMEOUT_S (default 60) fails with WHAT
# (default: the pattern) and FILE's last lines.
wait_log() {
    local f=$1 pat=$2 timeout=${3:-60} what=${4:-"no line matching '$2' in $1"}
    for _ in $(seq 1 $((timeout * 10))); do
        grep -Eq -- "$pat" "$f" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "$what within $timeout s: $(tail -n 5 "$f" 2>/dev/null)"
}

# count_lines FILE PATTERN: how many lines of FILE match the extended regex.
count_lines() { grep -cE -- "$2" "$1" 2>/dev/null || true; }

# wait_more FILE PATTERN BEFORE TIMEOUT_S WHAT: until more than BEFORE lines
# of FILE match PATTERN (count_lines before the action); else fails with WHAT.
wait_more() {
    local f=$1 pat=$2 before=$3 timeout=$4 what=$5
    for _ in $(seq 1 $((timeout * 10))); do
        [ "$(count_lines "$f" "$pat")" -gt "$before" ] && return 0
        sleep 0.1
    done
    fail "$what within $timeout s: $(grep -E -- "$pat" "$f" 2>/dev/null | tail -n 2)"
}

# wait_exit PID TIMEOUT_S: until PID (a child of this shell) has exited,
# then EXIT_RC is its exit status; returns 1 (EXIT_RC empty) when it still
# runs after TIMEOUT_S. (bash reaps its children as they exit and keeps
# their status for wait, so kill -0 fails as soon as one has ended.)
wait_exit() {
    local pid=$1 timeout=$2
    EXIT_RC=""
    for _ in $(seq 1 $((timeout * 20))); do
        if ! kill -0 "$pid" 2>/dev/null; then
            EXIT_RC=0
            wait "$pid" || EXIT_RC=$?
            return 0
        fi
        sleep 0.05
    done
    return 1
}

peak_rss_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# start_silence_proxy NAME PREFIX TIMES: tests/tools/pg_silence_proxy.py to
# the stack's server, swallowing the first TIMES queries that start with
# PREFIX and leaving their connection silent both ways; sets PROXY_PORT.
start_silence_proxy() {
    local name=$1
    python3 "$OUTBOXD_SOURCE_DIR/tests/tools/pg_silence_proxy.py" 127.0.0.1 "$PGPORT" \
        "$WORK/$name.port" "$2" "$3" 2>"$WORK/$name.log" &
    BG_PIDS+=("$!")
    for _ in $(seq 1 100); do
        [ -s "$WORK/$name.port" ] && break
        sleep 0.05
    done
    [ -s "$WORK/$name.port" ] || fail "the proxy did not start: $(cat "$WORK/$name.log")"
    PROXY_PORT=$(cat "$WORK/$name.port")
}

# dsn_via_proxy CONFIG: the sources' dsn (write_config's) through
# 127.0.0.1:$PROXY_PORT, in the clear (the proxy reads the protocol).
dsn_via_proxy() {
    sed -i "s|dsn: \"host=$PGHOST port=$PGPORT |dsn: \"host=127.0.0.1 port=$PROXY_PORT sslmode=disable gssencmode=disable |" "$1"
    grep -q "port=$PROXY_PORT" "$1" || fail "the dsn was not pointed at the proxy"
}

# free_port: a TCP port no socket uses, below the kernel's ephemeral range
# (an outgoing connection's local port is invisible to a connect probe but
# makes a later bind fail with EADDRINUSE), checked in every socket state.
# Never the port the stack's broker advertises for its proxied listener: no
# one listens there between fault tests, but a test running beside this one
# may need it for its Toxiproxy (faults.sh).
free_port() {
    local p lo=32768
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=32768
    [ "$lo" -gt 21000 ] || lo=32768
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % (lo - 20000)))
        [ "127.0.0.1:$p" != "${KAFKA_VIA_PROXY:-}" ] || continue
        [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ] || continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    fail "no free port"
}

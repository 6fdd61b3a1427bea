# Fault-matrix helpers (tests/integration/test_fault_*.sh). Source after
# lib.sh. Starts a Toxiproxy (tests/stack/toxiproxy.sh) for this test with two
# proxies the test controls:
#   pg     127.0.0.1:$PG_PROXY_PORT -> the stack's PostgreSQL
#   kafka  $KAFKA_VIA_PROXY -> the broker's PROXIED listener ($KAFKA_PROXIED)
# The broker advertises its PROXIED listener at $KAFKA_VIA_PROXY (the stack
# was started with STACK_KAFKA_PROXY=1), so a relay bootstrapping there keeps
# every broker connection on the proxy; the checking consumer (okcat), psql
# and the writers connect directly and see no fault.
# FAULTS_KAFKA_PROXY=0 (set before sourcing): only the PostgreSQL proxy. The
# Kafka one listens on the one address the shared broker advertises, so a
# test with it must hold the kafka_proxy lock; one without it need not.

FAULTS_SRC=${OUTBOXD_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
TOXI_SH=$FAULTS_SRC/tests/stack/toxiproxy.sh
# shellcheck disable=SC1091
declare -F wait_writers >/dev/null || source "$FAULTS_SRC/tests/integration/writers.sh"
[ "${FAULTS_KAFKA_PROXY:-1}" = 0 ] || { [ -n "${KAFKA_VIA_PROXY:-}" ] && [ -n "${KAFKA_PROXIED:-}" ]; } ||
    fail "the stack in $STACK_DIR has no proxied Kafka listener: start it with STACK_KAFKA_PROXY=1 (ctest's fixture does; on a running stack that restarts the broker)"

FAULTS_WITH_KAFKA_PROXY=${FAULTS_KAFKA_PROXY:-1} # lasts beyond the source line
FAULT_RESTORE_WST=0 # wal_sender_timeout was changed and must be reset
STOPPED_PIDS=()     # processes sent SIGSTOP, resumed by the cleanup

toxi() { "$TOXI_SH" "$@"; }

# The cleanup leaves the shared stack as the next test expects it.
fault_cleanup() {
    local p
    # FAULTS_KEEP_LOGS=DIR: keep this test's logs (lib.sh deletes WORK).
    if [ -n "${FAULTS_KEEP_LOGS:-}" ]; then
        mkdir -p "$FAULTS_KEEP_LOGS/$TEST_NAME" && cp "$WORK"/*.log "$FAULTS_KEEP_LOGS/$TEST_NAME/" 2>/dev/null || true
    fi
    for p in "${STOPPED_PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; done
    TOXI_DIR=$WORK/toxiproxy "$TOXI_SH" stop >/dev/null 2>&1 || true
    "$STACK_SH" status >/dev/null 2>&1 || {
        log "cleanup: restarting the stack's stopped servers"
        "$STACK_SH" start-pg >&2 || true
        "$STACK_SH" start-kafka >&2 || true
    }
    if [ "$FAULT_RESTORE_WST" = 1 ]; then
        psql_db postgres -c "ALTER SYSTEM RESET wal_sender_timeout" -c "SELECT pg_reload_conf()" >/dev/null 2>&1 || true
    fi
}
extra_cleanup() { fault_cleanup; }

export TOXI_DIR=$WORK/toxiproxy
STACK_OWNER_PID=$$ "$TOXI_SH" start >&2 2>"$WORK/toxiproxy-start.log" || {
    cat "$WORK/toxiproxy-start.log" >&2
    fail "toxiproxy did not start"
}
# shellcheck disable=SC1091
source "$TOXI_DIR/env"
# A proxy's listen port can be taken between the probe and the bind (the
# server then answers HTTP 500 "address already in use"): the PostgreSQL
# proxy tries another port; the Kafka one must have the port the broker
# advertises, so it waits for it. Every failure is shown, never swallowed.
for try in 1 2 3 4 5; do
    PG_PROXY_PORT=$(free_port)
    toxi proxy pg "127.0.0.1:$PG_PROXY_PORT" "127.0.0.1:$PGPORT" 2>"$WORK/toxi-proxy.err" && break
    log "toxiproxy could not listen for PostgreSQL on $PG_PROXY_PORT (try $try): $(cat "$WORK/toxi-proxy.err")"
    [ "$try" -lt 5 ] || fail "toxiproxy: no PostgreSQL proxy after 5 ports"
done
[ "$FAULTS_WITH_KAFKA_PROXY" = 0 ] || for try in $(seq 1 20); do
    toxi proxy kafka "$KAFKA_VIA_PROXY" "$KAFKA_PROXIED" 2>"$WORK/toxi-proxy.err" && break
    log "toxiproxy could not listen on $KAFKA_VIA_PROXY (the broker's advertised proxied address; try $try): $(cat "$WORK/toxi-proxy.err"); sockets there: $(ss -Htan "( sport = :${KAFKA_VIA_PROXY##*:} )" 2>/dev/null | tr '\n' ' ')"
    [ "$try" -lt 20 ] || fail "toxiproxy: the Kafka proxy could not listen on $KAFKA_VIA_PROXY"
    sleep 0.5
done

# write_proxied_config FILE DB...: write_config with the relay's PostgreSQL
# and Kafka connections through the proxies, and a short reconnect backoff
# cap so a healed fault is noticed within seconds.
write_proxied_config() {
    local file=$1
    shift
    # Without its own Kafka proxy the address may be another test's.
    [ "$FAULTS_WITH_KAFKA_PROXY" != 0 ] || fail "write_proxied_config needs the Kafka proxy (FAULTS_KAFKA_PROXY=0 was set)"
    KAFKA_BOOTSTRAP=$KAFKA_VIA_PROXY PGPORT=$PG_PROXY_PORT write_config "$file" "$@"
    config_relay_keys "$file" "reconnect_max_backoff_ms: ${RECONNECT_MAX_BACKOFF_MS:-2000}"
}

# config_relay_keys FILE "key: value"...: adds keys under relay:.
config_relay_keys() {
    local file=$1 kv
    shift
    for kv in "$@"; do
        sed -i "/^relay:\$/a\\  $kv" "$file"
    done
}

# config_kafka_properties FILE K=V...: kafka.properties entries (librdkafka).
config_kafka_properties() {
    local file=$1 kv lines=""
    shift
    for kv in "$@"; do lines+="\\n    ${kv%%=*}: \"${kv#*=}\""; done
    sed -i "/^kafka:\$/a\\  properties:$lines" "$file"
}

# dsn_wal_sender_timeout FILE SETTING: every source's connections ask for
# this wal_sender_timeout themselves (libpq options; a user-settable
# parameter since PostgreSQL 12), so the shared server's setting, and every
# other test's walsender, is left alone. The server logs such a timeout as
# "user@DB LOG:  terminating walsender process due to replication timeout".
dsn_wal_sender_timeout() {
    sed -i "s/^\(    dsn: \"[^\"]*\)\"\$/\1 options='-c wal_sender_timeout=$2'\"/" "$1"
    grep -q "options='-c wal_sender_timeout=$2'" "$1" || fail "could not set wal_sender_timeout in the dsn of $1"
    # The relay hands the dsn to libpq as it is: the server applies it.
    local dsn got
    dsn=$(sed -n 's/^    dsn: "\(.*\)"$/\1/p' "$1" | head -n 1)
    got=$(psql -X -At -d "$dsn" -c "SHOW wal_sender_timeout") || fail "dsn $dsn refused"
    [ "$got" = "$2" ] || fail "a connection with dsn $dsn has wal_sender_timeout $got, not $2"
}

# wal_sender_timeout SETTING: ALTER SYSTEM + reload (reset by the cleanup);
# changes it for every test on the shared server (dsn_wal_sender_timeout
# does not).
set_wal_sender_timeout() {
    FAULT_RESTORE_WST=1
    psql_db postgres -c "ALTER SYSTEM SET wal_sender_timeout = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
    local i
    for i in $(seq 1 50); do
        [ "$(psql_db postgres -c "SHOW wal_sender_timeout")" = "$1" ] && return 0
        sleep 0.1
    done
    fail "wal_sender_timeout did not become $1"
}
reset_wal_sender_timeout() {
    psql_db postgres -c "ALTER SYSTEM RESET wal_sender_timeout" -c "SELECT pg_reload_conf()" >/dev/null
    FAULT_RESTORE_WST=0
}

# Deterministic writers: CLIENTS pgbench clients run TXNS transactions each,
# each writing exactly ROWS outbox rows for one of 50 keys (seeded: the seed
# is printed), at RATE transactions per second in all. Sets WRITER_PID and
# adds CLIENTS*TXNS*ROWS to WRITES_EXPECTED.
WRITES_EXPECTED=0
WRITER_SEED=${WRITER_SEED:-$((RANDOM * 32768 + RANDOM))}
start_fixed_writers() { # DB CLIENTS TXNS ROWS RATE [KEYPREFIX]
    local db=$1 clients=$2 txns=$3 rows=$4 rate=$5 prefix=${6:-$1}
    local script="$WORK/pgbench-fixed-$db-$prefix.sql"
    printf '\\set k random(1, 50)\nSELECT write_events(%s, %s || :k, %d);\n' \
        "'$db'" "'$prefix-'" "$rows" >"$script"
    log "writers on $db: $clients clients x $txns txns x $rows rows at $rate txn/s (pgbench --random-seed=$WRITER_SEED)"
    pgbench -n -c "$clients" -j "$clients" -t "$txns" -R "$rate" --random-seed="$WRITER_SEED" \
        -f "$script" "$db" >"$WORK/pgbench-$db-$prefix.log" 2>&1 &
    WRITER_PID=$!
    BG_PIDS+=("$WRITER_PID")
    WRITES_EXPECTED=$((WRITES_EXPECTED + clients * txns * rows))
}

# wait_until TIMEOUT_S WHAT COMMAND...: polls COMMAND every 0.2 s.
wait_until() {
    local timeout=$1 what=$2 i
    shift 2
    for i in $(seq 1 $((timeout * 5))); do
        "$@" && return 0
        sleep 0.2
    done
    fail "timed out after ${timeout}s waiting for $what"
}

# published_count: events on this test's topics so far (read_committed).
published_count() {
    "$OUTBOXD_TOOLS/okcat" -b "$KAFKA_BOOTSTRAP" -T "^$RUN_ID\\.ev\\..*" --idle-ms 1500 --timeout-ms 60000 2>&1 |
        sed -n 's/^okcat: .*received=\([0-9]*\).*/\1/p' | tail -n 1
}

# log_grep FILE REGEX WHAT: asserts the relay logged evidence of the fault.
log_grep() {
    grep -Eq "$2" "$1" || fail "no evidence in $(basename "$1") that $3 (expected /$2/)"
    log "evidence ($3): $(grep -Em1 "$2" "$1" | sed 's/^.*\] //' | cut -c1-200)"
}

# finish_case DB...: (RELAY_WATCH=PID: fail as soon as that relay exits) the writers' rows are all in the tables, every slot has
# confirmed everything, and a read_committed consumer finds every event
# exactly once (missing=0, duplicates=0) in per-key order.
finish_case() {
    local db n
    : >"$WORK/expected.tsv"
    for db in "$@"; do
        if [ -n "${RELAY_WATCH:-}" ]; then
            wait_drained_watch "$db" "${db}_${RUN_ID}" "$RELAY_WATCH" "${DRAIN_TIMEOUT_S:-300}"
        else
            wait_drained "$db" "${db}_${RUN_ID}" "${DRAIN_TIMEOUT_S:-300}"
        fi
        expected_events "$db" "$WORK/expected.tsv"
    done
    n=$(wc -l <"$WORK/expected.tsv")
    log "rows written: $n (expected $WRITES_EXPECTED)"
    [ "$n" -eq "$WRITES_EXPECTED" ] || fail "the writers wrote $n rows, not $WRITES_EXPECTED"
    check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"
}

# slot_confirmed_past DB SLOT LSN: the slot's confirmed position is past LSN.
slot_confirmed_past() {
    [ "$(psql_db "$1" -c "SELECT coalesce(confirmed_flush_lsn > '$3', false) FROM pg_replication_slots WHERE slot_name = '$2'")" = t ]
}

# wait_drained_watch DB SLOT PID [TIMEOUT_S]: wait_drained that fails at once
# when the relay PID has exited.
wait_drained_watch() {
    local db=$1 slot=$2 pid=$3 timeout=${4:-300} target i
    target=$(psql_db "$db" -c "SELECT pg_current_wal_lsn()")
    for i in $(seq 1 $((timeout * 5))); do
        [ "$(psql_db "$db" -c "SELECT coalesce(confirmed_flush_lsn >= '$target', false) FROM pg_replication_slots WHERE slot_name = '$slot'")" = t ] && return 0
        kill -0 "$pid" 2>/dev/null || {
            local rc=0
            wait "$pid" || rc=$?
            fail "the relay (pid $pid) exited with status $rc before slot $slot reached $target"
        }
        sleep 0.2
    done
    fail "slot $slot did not reach $target within ${timeout}s"
}

# A writer that survives PostgreSQL going away: TXNS transactions of ROWS
# rows each (keys KEYPREFIX-1..50, seeded), about RATE per second, one psql
# per transaction; each transaction also inserts its number into
# writer_done, so a retry after an unknown outcome (connection lost at
# COMMIT) cannot write a transaction twice. Adds TXNS*ROWS to
# WRITES_EXPECTED; sets WRITER_PID.
start_resilient_writer() { # DB TXNS ROWS RATE [KEYPREFIX]
    local db=$1 txns=$2 rows=$3 rate=$4 prefix=${5:-$1}
    psql_db "$db" -c "CREATE TABLE IF NOT EXISTS writer_done (prefix text, n int, PRIMARY KEY (prefix, n))"
    log "resilient writer on $db: $txns txns x $rows rows at ~$rate txn/s (seed $WRITER_SEED)"
    (
        RANDOM=$WRITER_SEED
        pause=$(awk -v r="$rate" 'BEGIN { printf "%.3f", 1 / r }')
        for ((n = 1; n <= txns; n++)); do
            k=$((RANDOM % 50 + 1))
            for ((try = 1; ; try++)); do
                out=$(psql -X -q -At -v ON_ERROR_STOP=1 -d "$db" 2>&1 <<SQL
BEGIN;
INSERT INTO writer_done VALUES ('$prefix', $n);
SELECT write_events('$db', '$prefix-$k', $rows);
COMMIT;
SQL
                ) && break
                case $out in *duplicate\ key*) break ;; esac
                ((try < 600)) || { echo "writer: transaction $n failed 600 times: $out" >&2; exit 1; }
                sleep 0.2
            done
            sleep "$pause"
        done
    ) >"$WORK/writer-$db-$prefix.log" 2>&1 &
    WRITER_PID=$!
    BG_PIDS+=("$WRITER_PID")
    WRITES_EXPECTED=$((WRITES_EXPECTED + txns * rows))
}

# pg_log_has OFFSET REGEX: the stack's server log has REGEX past byte OFFSET.
pg_log_has() { tail -c +"$(($1 + 1))" "$STACK_DIR/pg.log" | grep -Eq "$2"; }

# slot_lsn DB SLOT: the slot's confirmed position now.
slot_lsn() { psql_db "$1" -c "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '$2'"; }
# wait_publishing DB SLOT LSN0: until the relay confirmed past LSN0 (taken
# before it started), i.e. it has committed its first Kafka transaction.
wait_publishing() {
    wait_until 90 "the relay to commit its first Kafka transaction through the proxy" slot_confirmed_past "$1" "$2" "$3"
}

# drop_case DB SLOT: drops the slot and the database once the relay's
# walsender is gone (through a slow proxy the server learns of a closed
# connection late), so tests leave the shared server as they found it.
drop_case() {
    local db=$1 slot=$2 i
    for i in $(seq 1 150); do
        [ "$(psql_db "$db" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot' AND active")" = 0 ] && break
        [ "$i" = 100 ] && psql_db "$db" -c "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '$slot' AND active" >/dev/null
        sleep 0.2
    done
    psql_db "$db" -c "SELECT pg_drop_replication_slot('$slot') FROM pg_replication_slots WHERE slot_name = '$slot'" >/dev/null
    psql_db postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
}

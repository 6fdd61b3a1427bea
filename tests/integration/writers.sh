# Concurrent outbox writers on pgbench. Source after lib.sh.
# Each pgbench transaction calls write_events() with 1 to 4 rows for one key
# (so single-row and multi-row transactions mix), over two aggregate types
# (two topics) and 50 keys per type.
#
# Deterministic: the number of rows of a transaction comes from a per-database
# counter (1 + n % 4 for the n-th transaction), so a run of T transactions
# always writes writer_rows(T) rows, whatever the interleaving; check it with
# assert_rows_written. Keys and types are random, from pgbench's generator
# seeded with TEST_SEED (printed; set it to repeat a run). Sourcing this file
# also seeds bash's $RANDOM with it, for tests that draw random times.

TEST_SEED=${TEST_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
RANDOM=$TEST_SEED
log "seed $TEST_SEED (TEST_SEED=$TEST_SEED repeats this run's keys and times)"
declare -A WRITER_TXNS=()

# pgbench_script DB FILE
pgbench_script() {
    local db=$1 file=$2
    cat >"$file" <<EOF2
\\set k random(1, 50)
\\set t random(0, 1)
SELECT write_events(CASE WHEN :t = 0 THEN '$db' ELSE '${db}_audit' END, CASE WHEN :t = 0 THEN '$db' ELSE '${db}_audit' END || '-' || :k, 1 + (nextval('writer_txn') % 4)::int);
EOF2
}

# writer_rows TXNS: rows written by transactions 1..TXNS of one database
# (2, 3, 4, 1, 2, 3, 4, 1, ...).
writer_rows() {
    local t=$1
    local rows=$((t / 4 * 10)) r=$((t % 4))
    [ "$r" -ge 1 ] && rows=$((rows + 2))
    [ "$r" -ge 2 ] && rows=$((rows + 3))
    [ "$r" -ge 3 ] && rows=$((rows + 4))
    echo "$rows"
}

# start_writers DB CLIENTS TXNS_PER_CLIENT [RATE]: pgbench in the background;
# appends its pid to BG_PIDS and sets WRITER_PID.
start_writers() {
    local db=$1 clients=$2 txns=$3 rate=${4:-}
    local script="$WORK/pgbench-$db.sql"
    pgbench_script "$db" "$script"
    psql_db "$db" -c "CREATE SEQUENCE IF NOT EXISTS writer_txn" >/dev/null
    WRITER_TXNS[$db]=$((${WRITER_TXNS[$db]:-0} + clients * txns))
    local args=(-n -c "$clients" -j "$clients" -t "$txns" -f "$script" --random-seed="$TEST_SEED")
    [ -n "$rate" ] && args+=(-R "$rate")
    pgbench "${args[@]}" "$db" >>"$WORK/pgbench-$db.log" 2>&1 &
    WRITER_PID=$!
    BG_PIDS+=("$WRITER_PID")
}

# wait_writers PID...: fails the test if a writer failed.
wait_writers() {
    for p in "$@"; do
        wait "$p" || fail "writer $p failed: $(tail -n 5 "$WORK"/pgbench-*.log)"
    done
}

# assert_rows_written FILE DB...: FILE (from expected_events) holds exactly
# the rows the writers of these databases wrote, no more, no fewer; prints
# the count (the exactly-once check then compares Kafka against FILE).
assert_rows_written() {
    local file=$1
    shift
    local want=0 db
    for db in "$@"; do want=$((want + $(writer_rows "${WRITER_TXNS[$db]:-0}"))); done
    local got
    got=$(wc -l <"$file")
    [ "$got" -eq "$want" ] || fail "expected $want outbox rows from the writers, found $got"
    log "rows written: $got (as expected for ${*})"
}

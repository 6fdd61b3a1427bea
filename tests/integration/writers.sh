# Concurrent outbox writers on pgbench. Source after lib.sh.
# Each pgbench transaction calls write_events() with 1 to 4 rows for one key
# (so single-row and multi-row transactions mix), over two aggregate types
# (two topics) and 50 keys per type.

# pgbench_script DB FILE
pgbench_script() {
    local db=$1 file=$2
    cat >"$file" <<EOF2
\\set k random(1, 50)
\\set n random(1, 4)
\\set t random(0, 1)
SELECT write_events(CASE WHEN :t = 0 THEN '$db' ELSE '${db}_audit' END, CASE WHEN :t = 0 THEN '$db' ELSE '${db}_audit' END || '-' || :k, :n);
EOF2
}

# start_writers DB CLIENTS TXNS_PER_CLIENT [RATE]: pgbench in the background;
# appends its pid to BG_PIDS and sets WRITER_PID.
start_writers() {
    local db=$1 clients=$2 txns=$3 rate=${4:-}
    local script="$WORK/pgbench-$db.sql"
    pgbench_script "$db" "$script"
    local args=(-n -c "$clients" -j "$clients" -t "$txns" -f "$script")
    [ -n "$rate" ] && args+=(-R "$rate")
    pgbench "${args[@]}" "$db" >"$WORK/pgbench-$db.log" 2>&1 &
    WRITER_PID=$!
    BG_PIDS+=("$WRITER_PID")
}

# wait_writers PID...: fails the test if a writer failed.
wait_writers() {
    for p in "$@"; do
        wait "$p" || fail "writer $p failed: $(tail -n 5 "$WORK"/pgbench-*.log)"
    done
}

#!/usr/bin/env bash
# ctest: serial -- counts watchdog pings in fixed windows
# sd_notify against a socket this test listens on (as systemd would):
# two sources, the second one's database does not exist yet. While only the
# first streams, the relay reports "1 of 2 sources streaming" and feeds the
# watchdog, but does not send READY=1. Once the database is created the
# second source streams and READY=1 arrives with "2 of 2"; WATCHDOG=1 keeps
# coming at half of WATCHDOG_USEC. SIGHUP brings RELOADING=1 with
# MONOTONIC_USEC (the CLOCK_MONOTONIC time the reload began, checked against
# this test's own clock), then READY=1 once every source applied it; an
# invalid file brings RELOADING=1 and READY=1 with a "reload refused" status.
# SIGTERM brings STOPPING=1 and exit 0. With metrics.ready_min_sources: 1,
# READY=1 comes once one of two sources streams (the /readyz rule).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DB1=na_$RUN_ID
DB2=nb_$RUN_ID
create_outbox_db "$DB1"
psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB2\" WITH (FORCE)" >/dev/null
write_config "$WORK/outboxd.yaml" "$DB1" "$DB2"
sed -i 's/^relay:$/relay:\n  reconnect_max_backoff_ms: 1000/' "$WORK/outboxd.yaml"

SOCK="$WORK/notify.sock"
MSGS="$WORK/notify.log"
python3 "$OUTBOXD_SOURCE_DIR/tests/tools/notify_listen.py" "$SOCK" "$MSGS" &
BG_PIDS+=("$!")
for _ in $(seq 1 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
[ -S "$SOCK" ] || fail "notify listener did not start"

count() { grep -c -- "$1" "$MSGS" || true; }
# wait_msg PATTERN TIMEOUT_S
wait_msg() {
    for _ in $(seq 1 $(($2 * 10))); do
        grep -q -- "$1" "$MSGS" && return 0
        sleep 0.1
    done
    fail "no '$1' notification within $2 s; got: $(cut -f2 "$MSGS" | sort | uniq -c)"
}

# A 2 s watchdog: WATCHDOG=1 every second while the loops turn.
NOTIFY_SOCKET=$SOCK WATCHDOG_USEC=2000000 "$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" \
    >>"$WORK/relay.log" 2>&1 &
relay=$!
RELAY_PIDS+=("$relay")

wait_msg "STATUS=1 of 2 sources streaming" 120
# The second source keeps failing; the relay is alive and says so, not ready.
w0=$(count "WATCHDOG=1")
sleep 4
w1=$(count "WATCHDOG=1")
grep -q "database \"$DB2\" does not exist" "$WORK/relay.log" || fail "second source did not fail as set up"
[ "$(count READY=1)" = 0 ] || fail "READY=1 sent while a source was not streaming"
[ $((w1 - w0)) -ge 2 ] || fail "watchdog not fed while one source retries ($w0 -> $w1 in 4 s)"
log "one source streaming: no READY, $((w1 - w0)) watchdog pings in 4 s"

created_ms=$(($(date +%s%N) / 1000000))
create_outbox_db "$DB2"
wait_msg "READY=1" 120
ready_line=$(grep -- "READY=1" "$MSGS")
ready_ms=${ready_line%%$'\t'*}
log "READY: $ready_line"
[ "$ready_ms" -ge "$created_ms" ] || fail "READY=1 before the second database existed"
[[ $ready_line == *"STATUS=2 of 2 sources streaming"* ]] || fail "READY without the 2 of 2 status"
[ "$(count READY=1)" = 1 ] || fail "READY=1 sent more than once before any SIGHUP"

w0=$(count "WATCHDOG=1")
sleep 5
w1=$(count "WATCHDOG=1")
[ $((w1 - w0)) -ge 3 ] || fail "watchdog: only $((w1 - w0)) pings in 5 s after READY"
log "streaming: $((w1 - w0)) watchdog pings in 5 s"

# SIGHUP: RELOADING=1 + MONOTONIC_USEC, then READY=1 when both sources applied it.
mono_us() { python3 -c 'import time; print(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)'; }
# reload_once N: the Nth RELOADING=1 and the READY=1 after it; sets RELOAD_STATUS.
reload_once() {
    local n=$1 before after rel mono ready
    before=$(mono_us)
    kill -HUP "$relay"
    for _ in $(seq 1 600); do [ "$(count RELOADING=1)" -ge "$n" ] && break; sleep 0.1; done
    [ "$(count RELOADING=1)" = "$n" ] || fail "RELOADING=1 count $(count RELOADING=1) after SIGHUP $n"
    rel=$(grep -n -- "RELOADING=1" "$MSGS" | sed -n "${n}p")
    after=$(mono_us)
    mono=$(grep -o 'MONOTONIC_USEC=[0-9]*' <<<"$rel" | cut -d= -f2)
    [ -n "$mono" ] || fail "RELOADING=1 without MONOTONIC_USEC: $rel"
    [ "$mono" -ge "$before" ] && [ "$mono" -le "$after" ] ||
        fail "MONOTONIC_USEC=$mono is not the reload's start (between $before and $after)"
    for _ in $(seq 1 600); do
        ready=$(tail -n +"${rel%%:*}" "$MSGS" | grep -- "READY=1" | head -n1 || true)
        [ -n "$ready" ] && break
        sleep 0.1
    done
    [ -n "$ready" ] || fail "no READY=1 after RELOADING=1 number $n"
    RELOAD_STATUS=$(grep -o 'STATUS=.*' <<<"$ready")
    log "SIGHUP $n: $(cut -f2 <<<"${rel#*:}") then $(cut -f2 <<<"$ready")"
}
reload_once 1
[[ $RELOAD_STATUS == *"configuration reloaded; 2 of 2 sources streaming"* ]] ||
    fail "READY after the reload without the reloaded status: $RELOAD_STATUS"
grep -q "configuration 1 applied by every source" "$WORK/relay.log" ||
    fail "READY=1 sent but the log does not say every source applied the reload"
cp "$WORK/outboxd.yaml" "$WORK/good.yaml"
sed -i 's/^relay:$/relay:\n  no_such_key: 1/' "$WORK/outboxd.yaml"
reload_once 2
[[ $RELOAD_STATUS == *"reload refused"* ]] || fail "READY after a refused reload without saying so: $RELOAD_STATUS"
cp "$WORK/good.yaml" "$WORK/outboxd.yaml"

[ "$(count STOPPING=1)" = 0 ] || fail "STOPPING=1 before SIGTERM"
stop_relay_ok "$relay"
wait_msg "STOPPING=1" 5
log "notifications: $(cut -f2 "$MSGS" | sed 's/WATCHDOG=1/WATCHDOG/' | uniq -c | tr -s ' ' | tr '\n' ';')"

# READY=1 follows /readyz's rule: with metrics.ready_min_sources: 1 the
# unit is started once one of two sources streams, while the other's
# database is missing (before, READY waited for every source, and a unit's
# start timeout then killed the sources that did stream). Here the relay
# starts with the default (every source), waits, and a SIGHUP lowering
# ready_min_sources to 1 brings READY=1 (it was only looked at when the
# streaming count changed).
DB3=nc_$RUN_ID
psql_db postgres -c "DROP DATABASE IF EXISTS \"$DB3\" WITH (FORCE)" >/dev/null
write_config "$WORK/min1.yaml" "$DB1" "$DB3"
printf 'metrics:\n  listen: "127.0.0.1:%s"\n  ready_min_sources: 0\n' "$(free_port)" >>"$WORK/min1.yaml"
: >"$MSGS"
NOTIFY_SOCKET=$SOCK "$OUTBOXD_BIN" run -c "$WORK/min1.yaml" >>"$WORK/relay-min1.log" 2>&1 &
relay=$!
RELAY_PIDS+=("$relay")
wait_msg "STATUS=1 of 2 sources streaming" 120
sleep 2
[ "$(count READY=1)" = 0 ] || fail "READY=1 with ready_min_sources 0 while one of two sources waits"
sed -i 's/^  ready_min_sources: 0$/  ready_min_sources: 1/' "$WORK/min1.yaml"
kill -HUP "$relay"
wait_msg "READY=1" 60
ready_line=$(grep -- "READY=1" "$MSGS")
[[ $ready_line == *"STATUS=1 of 2 sources streaming"* ]] ||
    fail "with ready_min_sources 1, READY=1 without the 1 of 2 status: $ready_line"
wait_log "$WORK/relay-min1.log" "database \"$DB3\" does not exist" 60 "the second source did not fail as set up"
log "ready_min_sources 1: $(cut -f2 <<<"$ready_line") while $DB3 does not exist"
stop_relay_ok "$relay"
drop_source "$DB1" "${DB1}_${RUN_ID}"
drop_source "$DB2" "${DB2}_${RUN_ID}"
drop_source "$DB3" "${DB3}_${RUN_ID}"
log "PASS"

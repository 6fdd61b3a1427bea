#!/usr/bin/env bash
# ctest: serial -- counts watchdog pings in fixed windows
# /healthz and the systemd watchdog follow the source loops, end to end. The
# source's "database" is a TCP server that accepts connections and never
# answers, so the loop hangs inside the connection attempt (the dsn has no
# connect_timeout). Within metrics.stall_timeout_ms (2 s here) /healthz
# turns 503 naming the source and WATCHDOG=1 stops; once that server goes
# away the attempt fails, the loop turns again (retrying with backoff),
# /healthz is 200 and the watchdog pings resume. SIGTERM then stops the
# relay with exit 0 and STOPPING=1.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/prom.sh"

PORT=$(free_port)
PGFAKE=$(free_port)
cat >"$WORK/hang.py" <<'PY'
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(16)
held = []
while True:
    c, _ = s.accept()   # accept, read nothing, answer nothing
    held.append(c)
PY
python3 "$WORK/hang.py" "$PGFAKE" &
hang=$!
BG_PIDS+=("$hang")
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PGFAKE") 2>/dev/null && break; sleep 0.1; done

cat >"$WORK/outboxd.yaml" <<EOF
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  transactional_id_prefix: "outboxd-$RUN_ID"
relay:
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  reconnect_max_backoff_ms: 1000
metrics:
  listen: "127.0.0.1:$PORT"
  stall_timeout_ms: 2000
sources:
  - name: hang
    dsn: "host=127.0.0.1 port=$PGFAKE dbname=nothing user=nobody"
    tables:
      - table: public.outbox
EOF

SOCK="$WORK/notify.sock"
MSGS="$WORK/notify.log"
python3 "$OUTBOXD_SOURCE_DIR/tests/tools/notify_listen.py" "$SOCK" "$MSGS" &
BG_PIDS+=("$!")
for _ in $(seq 1 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
pings() { grep -c "WATCHDOG=1" "$MSGS" || true; }

NOTIFY_SOCKET=$SOCK WATCHDOG_USEC=1000000 "$OUTBOXD_BIN" run -c "$WORK/outboxd.yaml" \
    >>"$WORK/relay.log" 2>&1 &
relay=$!
RELAY_PIDS+=("$relay")

stalled=""
for _ in $(seq 1 300); do
    code=$(http_get "http://127.0.0.1:$PORT/healthz" "$WORK/health.txt")
    [ "$code" = 503 ] && { stalled=1; break; }
    sleep 0.1
done
[ -n "$stalled" ] || fail "/healthz never turned 503 while the loop hung"
grep -q "source hang: connecting, loop last turned" "$WORK/health.txt" ||
    fail "/healthz does not name the stalled source: $(cat "$WORK/health.txt")"
p0=$(pings)
sleep 3
p1=$(pings)
[ "$p1" = "$p0" ] || fail "watchdog fed while the loop hung ($p0 -> $p1)"
log "hung: /healthz 503 ($(head -n 2 "$WORK/health.txt" | tail -n 1)); watchdog pings stopped at $p1"

kill "$hang"
wait "$hang" 2>/dev/null || true
ok=""
for _ in $(seq 1 300); do
    [ "$(http_get "http://127.0.0.1:$PORT/healthz")" = 200 ] && { ok=1; break; }
    sleep 0.1
done
[ -n "$ok" ] || fail "/healthz did not recover once the connection attempt failed"
p2=$(pings)
sleep 3
p3=$(pings)
[ $((p3 - p2)) -ge 3 ] || fail "watchdog did not resume ($p2 -> $p3 in 3 s)"
[ "$(http_get "http://127.0.0.1:$PORT/readyz")" = 503 ] || fail "/readyz 200 without a streaming source"
log "recovered: /healthz 200, $((p3 - p2)) watchdog pings in 3 s, /readyz 503 (retrying)"
[ "$(grep -c READY=1 "$MSGS" || true)" = 0 ] || fail "READY=1 without a streaming source"
stop_relay_ok "$relay"
grep -q "STOPPING=1" "$MSGS" || fail "no STOPPING=1"
log "PASS"

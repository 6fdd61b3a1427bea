#!/usr/bin/env bash
# tests/stack/toxiproxy.sh - a Toxiproxy server (TCP proxy with injected
# faults) for outboxd's fault tests, driven through its HTTP API with curl.
#
#   TOXI_DIR=/tmp/t tests/stack/toxiproxy.sh start    # then: . /tmp/t/env
#   tests/stack/toxiproxy.sh proxy pg 127.0.0.1:25001 127.0.0.1:5432
#   tests/stack/toxiproxy.sh toxic pg latency downstream latency=200
#   tests/stack/toxiproxy.sh disable pg ; ... ; tests/stack/toxiproxy.sh enable pg
#   tests/stack/toxiproxy.sh stop [--clean]
#
# The server is Shopify's toxiproxy v2.12.0, built once from the Go module
# proxy with `go install` into $OUTBOXD_CACHE_DIR (default ~/.cache/outboxd)
# /toxiproxy-2.12.0 (`install` does only that; `start` does it when needed).
#
# Environment:
#   TOXI_DIR         state directory (default: $STACK_DIR/toxiproxy, else
#                    $PWD/.toxiproxy): pid, port, log, env
#   STACK_OWNER_PID  if set at `start`, a watchdog stops the server when that
#                    process disappears (a killed test leaves nothing behind)
#   TOXI_TIMEOUT     bound for every wait, seconds (default 30)
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
TOXI_VERSION=v2.12.0
if [[ -z ${TOXI_DIR:-} ]]; then
  if [[ -n ${STACK_DIR:-} ]]; then TOXI_DIR=$STACK_DIR/toxiproxy; else TOXI_DIR=$PWD/.toxiproxy; fi
fi
[[ $TOXI_DIR == /* ]] || TOXI_DIR=$PWD/$TOXI_DIR
TOXI_DIR=${TOXI_DIR%/}
export TOXI_DIR
TOXI_TIMEOUT=${TOXI_TIMEOUT:-30}
PIDFILE=$TOXI_DIR/server.pid
PORTFILE=$TOXI_DIR/port
OWNER_FILE=$TOXI_DIR/owner
WD_PIDFILE=$TOXI_DIR/watchdog.pid
ENV_FILE=$TOXI_DIR/env
LOG=$TOXI_DIR/server.log

log() { printf 'toxiproxy: %s\n' "$*" >&2; }
die() { printf 'toxiproxy: ERROR: %s\n' "$*" >&2; exit 1; }
now() { printf '%(%s)T' -1; }
cache_dir() { printf '%s' "${OUTBOXD_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/outboxd}"; }
bin_dir() { printf '%s/toxiproxy-%s' "$(cache_dir)" "${TOXI_VERSION#v}"; }

pid_alive() {
  local st
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
  st=${st##*) }
  [[ ${st:0:1} != Z ]]
}
pid_starttime() {
  local st
  { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
  st=${st##*) }
  # shellcheck disable=SC2086
  set -- $st
  printf '%s' "${20}"
}
pid_cmdline_has() {
  local -a a
  { mapfile -d '' a <"/proc/$1/cmdline"; } 2>/dev/null || return 1
  local IFS=' '
  [[ "${a[*]}" == *"$2"* ]]
}
read_pidfile() { local p=""; [[ -f $1 ]] && read -r p <"$1" 2>/dev/null; printf '%s' "$p"; }
port_listening() { [[ -n $(ss -Htln "( sport = :$1 )" 2>/dev/null) ]]; }
# pick_port: a free port in 20000-31999 (below the ephemeral range), never
# the one a test stack's broker advertises for the proxy to listen on.
pick_port() {
  local p i
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + (${SRANDOM:-$((RANDOM * 32768 + RANDOM))} % 12000)))
    [[ $p == "${KAFKA_VIA_PROXY:-}" || "127.0.0.1:$p" == "${KAFKA_VIA_PROXY:-}" ]] && continue
    [[ -n $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] && continue
    printf '%s' "$p"
    return 0
  done
  die "could not find a free TCP port"
}

# ---------------------------------------------------------------- install --
# Idempotent: builds the server and the CLI once (about two minutes), under a
# lock so concurrent first runs do not race.
cmd_install() {
  local dir
  dir=$(bin_dir)
  if [[ -x $dir/server && -x $dir/cli ]]; then
    printf '%s\n' "$dir"
    return 0
  fi
  command -v go >/dev/null 2>&1 || die "go not found: toxiproxy $TOXI_VERSION is built with 'go install' (Go >= 1.23; the toolchain may be fetched from the Go module proxy)"
  mkdir -p "$(cache_dir)"
  (
    flock -w 900 8 || die "timed out waiting for $dir.lock"
    [[ -x $dir/server && -x $dir/cli ]] && exit 0
    log "building toxiproxy $TOXI_VERSION with go install (once; log: $dir.log)"
    rm -rf "$dir.tmp.$$"
    mkdir -p "$dir.tmp.$$"
    if ! GOBIN="$dir.tmp.$$" GOFLAGS=-buildvcs=false go install \
      "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXI_VERSION" \
      "github.com/Shopify/toxiproxy/v2/cmd/cli@$TOXI_VERSION" </dev/null >"$dir.log" 2>&1; then
      tail -n 20 "$dir.log" >&2
      rm -rf "$dir.tmp.$$"
      die "go install of toxiproxy $TOXI_VERSION failed (log: $dir.log)"
    fi
    rm -rf "$dir"
    mv "$dir.tmp.$$" "$dir"
  ) 8>>"$dir.lock" || exit 1
  printf '%s\n' "$dir"
}

# ----------------------------------------------------------------- server --
server_pid() { read_pidfile "$PIDFILE"; }
server_port() { read_pidfile "$PORTFILE"; }
server_running() {
  local p
  p=$(server_pid)
  [[ -n $p ]] && pid_alive "$p" && pid_cmdline_has "$p" "-port $(server_port)"
}
api_url() { printf 'http://127.0.0.1:%s' "$(server_port)"; }

# api METHOD PATH [JSON]: prints the response; fails with the server's error.
api() {
  local method=$1 path=$2 body=${3:-} out code
  [[ -f $PORTFILE ]] || die "no toxiproxy in $TOXI_DIR (run: $SELF start)"
  local args=(-sS -m 30 -X "$method" -o "$TOXI_DIR/.resp.$$" -w '%{http_code}')
  [[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data "$body")
  code=$(curl "${args[@]}" "$(api_url)$path") || { rm -f "$TOXI_DIR/.resp.$$"; die "toxiproxy API at $(api_url) unreachable"; }
  out=$(cat "$TOXI_DIR/.resp.$$" 2>/dev/null || true)
  rm -f "$TOXI_DIR/.resp.$$"
  [[ $code == 2* ]] || die "$method $path -> HTTP $code: $out"
  printf '%s\n' "$out"
}

watchdog_running() {
  local p
  p=$(read_pidfile "$WD_PIDFILE")
  [[ -n $p ]] && pid_alive "$p" && pid_cmdline_has "$p" "__watchdog"
}
# Stops the server when the owner process is gone; exits when the server is.
watchdog_main() {
  echo $$ >"$WD_PIDFILE"
  local opid ostart
  while :; do
    server_running || break
    [[ $(read_pidfile "$WD_PIDFILE") == "$$" ]] || break
    if [[ -f $OWNER_FILE ]]; then
      read -r opid ostart <"$OWNER_FILE" || true
      if [[ -n ${opid:-} ]] && { ! pid_alive "$opid" || [[ $(pid_starttime "$opid") != "${ostart:-}" ]]; }; then
        log "$(date '+%F %T') owner process $opid is gone: stopping toxiproxy"
        TOXI_WATCHDOG_PID=$$ bash "$SELF" stop || true
        break
      fi
    fi
    sleep 1
  done
  [[ $(read_pidfile "$WD_PIDFILE") == "$$" ]] && rm -f "$WD_PIDFILE"
  exit 0
}

write_env() {
  local t=$ENV_FILE.tmp.$$
  {
    printf '# toxiproxy - generated by %s start; source this file\n' "$SELF"
    printf "export TOXI_DIR='%s'\n" "$TOXI_DIR"
    printf "export TOXI_SH='%s'\n" "$SELF"
    printf "export TOXIPROXY_URL='%s'\n" "$(api_url)"
    printf "export TOXIPROXY_CLI='%s/cli'\n" "$(bin_dir)"
  } >"$t"
  mv -f "$t" "$ENV_FILE"
}

cmd_start() {
  local dir port attempt i
  mkdir -p "$TOXI_DIR"
  if server_running; then
    log "already running (pid $(server_pid), $(api_url))"
  else
    dir=$(cmd_install)
    for attempt in 1 2 3; do
      port=$(pick_port)
      printf '%s\n' "$port" >"$PORTFILE"
      rm -f "$PIDFILE"
      # setsid: a test's Ctrl-C must not reach the proxy before its cleanup.
      # shellcheck disable=SC2016 # expanded by the inner shell
      (
        cd /
        exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
          "$dir/server" -host 127.0.0.1 -port "$port"
      ) </dev/null >>"$LOG" 2>&1 &
      for ((i = 0; i < TOXI_TIMEOUT * 10; i++)); do
        # Our server answers, not another test's that got this port first.
        if curl -fsS -m 2 "$(api_url)/version" >/dev/null 2>&1 &&
          ss -Htlnp "( sport = :$port )" 2>/dev/null | grep -q "pid=$(server_pid),"; then break 2; fi
        [[ -f $PIDFILE ]] && ! pid_alive "$(server_pid)" && break
        sleep 0.1
      done
      [[ -f $PIDFILE ]] && pid_alive "$(server_pid)" && kill -KILL "$(server_pid)" 2>/dev/null
      log "toxiproxy did not answer on port $port (attempt $attempt); log: $LOG"
      ((attempt == 3)) && { tail -n 20 "$LOG" >&2; die "toxiproxy did not start"; }
    done
    log "up (pid $(server_pid), $(api_url))"
  fi
  if [[ -n ${STACK_OWNER_PID:-} ]]; then
    pid_alive "$STACK_OWNER_PID" || die "STACK_OWNER_PID=$STACK_OWNER_PID is not a running process"
    printf '%s %s\n' "$STACK_OWNER_PID" "$(pid_starttime "$STACK_OWNER_PID")" >"$OWNER_FILE"
    if ! watchdog_running; then
      (
        cd /
        exec setsid bash "$SELF" __watchdog
      ) </dev/null >>"$TOXI_DIR/watchdog.log" 2>&1 &
    fi
  fi
  write_env
}

cmd_stop() {
  local clean=0 p i
  [[ ${1:-} == --clean ]] && clean=1
  [[ -d $TOXI_DIR ]] || return 0
  p=$(read_pidfile "$WD_PIDFILE")
  if [[ -n $p && $p != "${TOXI_WATCHDOG_PID:-}" ]] && watchdog_running; then
    kill -TERM "$p" 2>/dev/null || true
  fi
  rm -f "$WD_PIDFILE" "$OWNER_FILE"
  if server_running; then
    p=$(server_pid)
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do pid_alive "$p" || break; sleep 0.1; done
    pid_alive "$p" && kill -KILL "$p" 2>/dev/null
    for ((i = 0; i < 50; i++)); do pid_alive "$p" || break; sleep 0.1; done
    pid_alive "$p" && die "toxiproxy (pid $p) did not exit"
    log "stopped"
  fi
  rm -f "$PIDFILE"
  if ((clean)); then
    [[ -f $PORTFILE || ! -e $TOXI_DIR/server.log ]] || die "refusing to delete $TOXI_DIR"
    rm -rf "$TOXI_DIR"
  fi
}

# json_attrs K=V...: {"k":v,...}; values that are numbers stay numbers.
json_attrs() {
  local kv k v out="" sep=""
  for kv in "$@"; do
    [[ $kv == *=* ]] || die "expected KEY=VALUE, got '$kv'"
    k=${kv%%=*} v=${kv#*=}
    if [[ $v =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then out+="$sep\"$k\":$v"; else out+="$sep\"$k\":\"$v\""; fi
    sep=,
  done
  printf '{%s}' "$out"
}

usage() {
  cat <<EOF
usage: $(basename "$0") COMMAND [args]     (TOXI_DIR=$TOXI_DIR)
  install                        build toxiproxy $TOXI_VERSION into $(bin_dir) (idempotent)
  start | stop [--clean]         the server, on a free port of 127.0.0.1; writes \$TOXI_DIR/env
  proxy NAME LISTEN UPSTREAM     create (or replace) a proxy, e.g. proxy pg 127.0.0.1:25001 127.0.0.1:5432
  upstream NAME UPSTREAM         point a proxy elsewhere (its connections are closed)
  delete NAME                    remove a proxy
  disable NAME | enable NAME     cut a proxy: connections closed, new ones refused | restore it
  toxic NAME TYPE STREAM [K=V..] add toxic TYPE_STREAM (STREAM: upstream = client to server,
                                 downstream = server to client), e.g. toxic pg latency downstream
                                 latency=200; bandwidth rate=KB/s; timeout timeout=0 (drop data,
                                 keep the connection open: half-open); reset_peer; slow_close
  untoxic NAME TOXIC             remove a toxic (by name, e.g. latency_downstream)
  reset                          enable every proxy and remove every toxic
  list                           GET /proxies (JSON)
  url                            the API's base URL
EOF
}

main() {
  local cmd=${1:-}
  [[ $# -gt 0 ]] && shift
  case $cmd in
  install) cmd_install >/dev/null; printf '%s\n' "$(bin_dir)" ;;
  start) cmd_start ;;
  stop) cmd_stop "$@" ;;
  proxy)
    [[ $# -eq 3 ]] || die "usage: proxy NAME LISTEN UPSTREAM"
    (api DELETE "/proxies/$1") >/dev/null 2>&1 || true
    api POST /proxies "{\"name\":\"$1\",\"listen\":\"$2\",\"upstream\":\"$3\",\"enabled\":true}" >/dev/null
    log "proxy $1: $2 -> $3" ;;
  upstream)
    [[ $# -eq 2 ]] || die "usage: upstream NAME UPSTREAM"
    api POST "/proxies/$1" "{\"upstream\":\"$2\"}" >/dev/null
    log "proxy $1 -> $2" ;;
  delete)
    [[ $# -eq 1 ]] || die "usage: delete NAME"
    api DELETE "/proxies/$1" >/dev/null ;;
  disable | enable)
    [[ $# -eq 1 ]] || die "usage: $cmd NAME"
    api POST "/proxies/$1" "{\"enabled\":$([[ $cmd == enable ]] && echo true || echo false)}" >/dev/null
    log "proxy $1 ${cmd}d" ;;
  toxic)
    [[ $# -ge 3 ]] || die "usage: toxic NAME TYPE STREAM [K=V ...]"
    local name=$1 type=$2 stream=$3
    shift 3
    [[ $stream == upstream || $stream == downstream ]] || die "STREAM must be upstream or downstream, not '$stream'"
    api POST "/proxies/$name/toxics" \
      "{\"name\":\"${type}_$stream\",\"type\":\"$type\",\"stream\":\"$stream\",\"toxicity\":1,\"attributes\":$(json_attrs "$@")}" >/dev/null
    log "proxy $name: toxic ${type}_$stream $*" ;;
  untoxic)
    [[ $# -eq 2 ]] || die "usage: untoxic NAME TOXIC"
    api DELETE "/proxies/$1/toxics/$2" >/dev/null
    log "proxy $1: removed toxic $2" ;;
  reset) api POST /reset >/dev/null ;;
  list) api GET /proxies ;;
  url) api_url; echo ;;
  __watchdog) watchdog_main ;;
  -h | --help | help | "") usage ;;
  *)
    usage >&2
    exit 2 ;;
  esac
}

main "$@"

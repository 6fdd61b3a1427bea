#!/usr/bin/env bash
# tests/stack/registry.sh - a real Confluent-compatible schema registry
# (Apicurio Registry 2.4.2.Final, in-memory storage, Confluent API under
# /apis/ccompat/v7) for outboxd's integration tests. See tests/stack/README.md.
#
#   tests/stack/registry.sh build            # once: ~2 min cold, cached
#   REGISTRY_DIR=/tmp/r tests/stack/registry.sh start   # then: . /tmp/r/env
#   tests/stack/registry.sh stop | restart | status | env | url
#
# Environment:
#   REGISTRY_DIR     state directory (default: $STACK_DIR/registry if STACK_DIR
#                    is set, else $PWD/.registry)
#   STACK_OWNER_PID  if set at `start`, a watchdog stops the registry when that
#                    process disappears (or REGISTRY_DIR is deleted)
#   STACK_TIMEOUT    bound for every wait, seconds (default 90)
#   REGISTRY_HEAP    JVM heap options (default -Xmx256m)
#   JAVA             java binary (default $JAVA_HOME/bin/java or java)
#
# The registry keeps its schemas in memory: a restart forgets them, and the
# ids it hands out afterwards differ (the restart command keeps the port).
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
SRC=$(dirname "$SELF")/registry
if [[ -z ${REGISTRY_DIR:-} ]]; then
  if [[ -n ${STACK_DIR:-} ]]; then REGISTRY_DIR=${STACK_DIR%/}/registry; else REGISTRY_DIR=$PWD/.registry; fi
fi
[[ $REGISTRY_DIR == /* ]] || REGISTRY_DIR=$PWD/$REGISTRY_DIR
REGISTRY_DIR=${REGISTRY_DIR%/}
export REGISTRY_DIR
STACK_TIMEOUT=${STACK_TIMEOUT:-90}
REGISTRY_HEAP=${REGISTRY_HEAP:--Xmx256m}
if [[ -z ${JAVA:-} ]]; then
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then JAVA=$JAVA_HOME/bin/java; else JAVA=java; fi
fi

PIDFILE=$REGISTRY_DIR/registry.pid
PORTFILE=$REGISTRY_DIR/port
OUT=$REGISTRY_DIR/registry.log
ENV_FILE=$REGISTRY_DIR/env
WD_PIDFILE=$REGISTRY_DIR/watchdog.pid
OWNER_FILE=$REGISTRY_DIR/owner
RUNNING_MARK=$REGISTRY_DIR/running

log() { printf 'registry: %s\n' "$*" >&2; }
die() { printf 'registry: ERROR: %s\n' "$*" >&2; exit 1; }
die_log() {
  local f=$1; shift
  printf 'registry: ERROR: %s\n' "$*" >&2
  if [[ -s $f ]]; then
    printf -- '---- last 40 lines of %s ----\n' "$f" >&2
    tail -n 40 "$f" >&2 || true
  fi
  exit 1
}
now() { printf '%(%s)T' -1; }
shq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }
cache_dir() { printf '%s' "${OUTBOXD_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/outboxd}"; }

# Same process checks as stack.sh (zombies do not count as running).
pid_alive() {
  local pid=$1 st
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  { read -r st <"/proc/$pid/stat"; } 2>/dev/null || return 1
  st=${st##*) }
  [[ ${st:0:1} != Z ]] && return 0
  local tasks=("/proc/$pid/task/"*)
  ((${#tasks[@]} > 1))
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
port_in_use() {
  if command -v ss >/dev/null 2>&1; then
    [[ -n $(ss -Htan "( sport = :$1 )" 2>/dev/null) ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}
pick_port() {
  local p i
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + (${SRANDOM:-$((RANDOM * 32768 + RANDOM))} % 12000)))
    port_in_use "$p" && continue
    printf '%s' "$p"
    return 0
  done
  die "could not find a free TCP port"
}
take_lock() {
  exec 9>>"$1"
  flock -w "${2:-$STACK_TIMEOUT}" 9 || die "timed out waiting for the lock $1"
}

# ------------------------------------------------------------------ build --
# Prints the path of the runnable jar, building it once per recipe (keyed by
# the hash of the pom, settings and extra properties).
build_dir() {
  local key
  key=$(cat "$SRC/pom.xml" "$SRC/settings.xml" "$SRC/extra.properties" | sha256sum | cut -c1-16)
  printf '%s/registry-%s' "$(cache_dir)" "$key"
}
jar_path() { printf '%s/target/outboxd-test-registry-0-runner.jar' "$(build_dir)"; }
cmd_build() {
  local dir jar mvnlog
  dir=$(build_dir)
  jar=$(jar_path)
  if [[ -s $jar ]]; then
    printf '%s\n' "$jar"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "maven (mvn) not found: run scripts/install-deps.sh"
  command -v unzip >/dev/null 2>&1 || die "unzip not found: run scripts/install-deps.sh"
  mkdir -p "$dir"
  take_lock "$dir.lock" 900
  if [[ -s $jar ]]; then
    printf '%s\n' "$jar"
    return 0
  fi
  mvnlog=$dir/mvn.log
  log "building Apicurio Registry 2.4.2.Final from Maven Central (once, ~2 min; log: $mvnlog)"
  rm -rf "$dir/src" "$dir/target" "$dir/app"
  mkdir -p "$dir/src/main/resources"
  cp "$SRC/pom.xml" "$SRC/settings.xml" "$dir/"
  local mvn=(mvn -B -Dstyle.color=never -s "$dir/settings.xml" -f "$dir/pom.xml")
  "${mvn[@]}" dependency:copy -Dartifact=io.apicurio:apicurio-registry-app:2.4.2.Final:jar \
    -DoutputDirectory="$dir/app" </dev/null >"$mvnlog" 2>&1 9>&- ||
    die_log "$mvnlog" "maven could not fetch apicurio-registry-app"
  # The app's own configuration, plus what makes Quarkus package it.
  unzip -p "$dir/app/apicurio-registry-app-2.4.2.Final.jar" application.properties \
    >"$dir/src/main/resources/application.properties" ||
    die "apicurio-registry-app jar has no application.properties"
  cat "$SRC/extra.properties" >>"$dir/src/main/resources/application.properties"
  "${mvn[@]}" package -DskipTests </dev/null >>"$mvnlog" 2>&1 9>&- ||
    die_log "$mvnlog" "maven could not build the registry"
  [[ -s $jar ]] || die_log "$mvnlog" "the build made no $jar"
  log "built $jar"
  printf '%s\n' "$jar"
}

# ---------------------------------------------------------------- process --
reg_pid() { read_pidfile "$PIDFILE"; }
reg_running() {
  local p
  p=$(reg_pid)
  [[ -n $p ]] && pid_alive "$p" && pid_cmdline_has "$p" "-Doutboxd.registry.dir=$REGISTRY_DIR"
}
reg_port() { read_pidfile "$PORTFILE"; }
reg_url() { printf 'http://127.0.0.1:%s/apis/ccompat/v7' "$(reg_port)"; }

# ready: the Confluent API answers with 200.
reg_ready() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$(reg_url)/subjects" 2>/dev/null || true)
  [[ $code == 200 ]]
}

reg_launch() {
  local jar=$1 port=$2 heap
  read -r -a heap <<<"$REGISTRY_HEAP"
  rm -f "$PIDFILE"
  # shellcheck disable=SC2016 # expanded by the inner shell
  (
    cd /
    exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDFILE" \
      "$JAVA" "${heap[@]}" -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError \
      -Djava.awt.headless=true -Doutboxd.registry.dir="$REGISTRY_DIR" \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
      -Dregistry.rules.global.compatibility=BACKWARD \
      -Dquarkus.log.level=WARN -Dquarkus.log.category.\"io.apicurio\".level=INFO \
      -jar "$jar"
  ) </dev/null >>"$OUT" 2>&1 9>&- &
}

# reg_start PORT_OR_EMPTY: empty picks a free port (and retries on a clash).
reg_start() {
  local want=$1 jar port attempt deadline pid off
  if reg_running && reg_ready; then
    log "already running (pid $(reg_pid), $(reg_url))"
    return 0
  fi
  reg_running && reg_stop
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found: run scripts/install-deps.sh"
  command -v curl >/dev/null 2>&1 || die "curl not found: run scripts/install-deps.sh"
  jar=$(cmd_build)
  for attempt in 1 2 3; do
    port=$want
    [[ -n $port ]] || port=$(pick_port)
    printf '%s\n' "$port" >"$PORTFILE"
    off=$(stat -c %s "$OUT" 2>/dev/null || echo 0)
    reg_launch "$jar" "$port"
    deadline=$(($(now) + STACK_TIMEOUT))
    pid=""
    while (($(now) < deadline)); do
      [[ -n $pid ]] || pid=$(reg_pid)
      if [[ -n $pid ]] && ! pid_alive "$pid"; then
        if [[ -z $want ]] && ((attempt < 3)) &&
          tail -c +"$((off + 1))" "$OUT" 2>/dev/null | grep -q 'Address already in use\|Port.*already'; then
          log "port $port was taken; retrying with another"
          continue 2
        fi
        die_log "$OUT" "the registry exited during startup"
      fi
      if reg_ready; then
        log "up (pid $(reg_pid), $(reg_url))"
        return 0
      fi
      sleep 0.2
    done
    reg_stop
    die_log "$OUT" "the registry did not answer within ${STACK_TIMEOUT}s"
  done
  die_log "$OUT" "the registry could not bind a port"
}

reg_stop() {
  local p deadline
  p=$(reg_pid)
  if [[ -z $p ]] || ! reg_running; then
    rm -f "$PIDFILE"
    return 0
  fi
  kill -TERM "$p" 2>/dev/null || true
  deadline=$(($(now) + 20))
  while pid_alive "$p" && (($(now) < deadline)); do sleep 0.1; done
  if pid_alive "$p"; then
    log "did not stop within 20 s; SIGKILL $p"
    kill -KILL "$p" 2>/dev/null || true
    deadline=$(($(now) + 10))
    while pid_alive "$p" && (($(now) < deadline)); do sleep 0.1; done
    pid_alive "$p" && die "registry (pid $p) survives SIGKILL"
  fi
  rm -f "$PIDFILE"
  log "stopped"
}

# --------------------------------------------------------------- watchdog --
watchdog_running() {
  local p
  p=$(read_pidfile "$WD_PIDFILE")
  [[ -n $p ]] && pid_alive "$p" && pid_cmdline_has "$p" "__watchdog"
}
watchdog_launch() {
  watchdog_running && return 0
  (
    cd /
    exec setsid bash "$SELF" __watchdog
  ) </dev/null >>"$REGISTRY_DIR/watchdog.log" 2>&1 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do
    watchdog_running && return 0
    sleep 0.05
  done
  die "watchdog did not start"
}
# Stops the registry when the owner is gone or REGISTRY_DIR was deleted (a
# `stack.sh stop --clean` of the enclosing stack); exits when it is stopped.
watchdog_main() {
  echo $$ >"$WD_PIDFILE"
  local opid ostart pid
  pid=$(reg_pid)
  while :; do
    if [[ ! -d $REGISTRY_DIR ]]; then
      [[ -n $pid ]] && pid_alive "$pid" && pid_cmdline_has "$pid" "-Doutboxd.registry.dir=$REGISTRY_DIR" &&
        kill -KILL "$pid" 2>/dev/null
      exit 0
    fi
    [[ -f $RUNNING_MARK ]] || break
    [[ $(read_pidfile "$WD_PIDFILE") == "$$" ]] || break
    [[ -n $(reg_pid) ]] && pid=$(reg_pid)
    if [[ -f $OWNER_FILE ]]; then
      read -r opid ostart <"$OWNER_FILE" || true
      if [[ -n ${opid:-} ]] && { ! pid_alive "$opid" || [[ $(pid_starttime "$opid") != "${ostart:-}" ]]; }; then
        log "$(date '+%F %T') owner process $opid is gone: stopping the registry"
        rm -f "$RUNNING_MARK"
        reg_stop || true
        break
      fi
    fi
    sleep 1
  done
  [[ -d $REGISTRY_DIR && $(read_pidfile "$WD_PIDFILE") == "$$" ]] && rm -f "$WD_PIDFILE"
  exit 0
}

write_env() {
  local t=$ENV_FILE.tmp.$$
  {
    printf '# outboxd test registry - generated by %s start; source this file\n' "$SELF"
    printf 'export REGISTRY_DIR=%s\n' "$(shq "$REGISTRY_DIR")"
    printf 'export REGISTRY_SH=%s\n' "$(shq "$SELF")"
    printf 'export REGISTRY_URL=%s\n' "$(shq "$(reg_url)")"
  } >"$t"
  mv -f "$t" "$ENV_FILE"
}

# ------------------------------------------------------------- commands --
cmd_start() {
  mkdir -p "$REGISTRY_DIR"
  take_lock "$REGISTRY_DIR/.lock"
  : >"$RUNNING_MARK"
  if [[ -n ${STACK_OWNER_PID:-} ]]; then
    pid_alive "$STACK_OWNER_PID" || die "STACK_OWNER_PID=$STACK_OWNER_PID is not a running process"
    printf '%s %s\n' "$STACK_OWNER_PID" "$(pid_starttime "$STACK_OWNER_PID")" >"$OWNER_FILE"
  fi
  # The same port as before when there was one: a restarted registry must
  # be found where the relay's configuration says.
  reg_start "$(reg_port)"
  write_env
  [[ -f $OWNER_FILE ]] && watchdog_launch
  return 0
}

cmd_stop() {
  [[ -d $REGISTRY_DIR ]] || return 0
  take_lock "$REGISTRY_DIR/.lock"
  rm -f "$RUNNING_MARK" "$OWNER_FILE"
  reg_stop
  local wp
  wp=$(read_pidfile "$WD_PIDFILE")
  [[ -n $wp ]] && watchdog_running && kill -TERM "$wp" 2>/dev/null
  rm -f "$WD_PIDFILE"
  return 0
}

usage() {
  cat <<EOF
usage: $(basename "$0") COMMAND     (REGISTRY_DIR=$REGISTRY_DIR)
  build       build (once) and print the registry jar
  start       start it on a free port of 127.0.0.1 (the same port again
              after a stop), write \$REGISTRY_DIR/env (REGISTRY_URL)
  stop        stop it (exit 0 if it is not running)
  restart     stop, then start on the same port (schemas are forgotten)
  status      exit 0 if it runs and answers, 3 otherwise
  url | env   print the Confluent API URL / the env file
EOF
}

case ${1:-} in
build) cmd_build ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart)
  [[ -f $PORTFILE ]] || die "no registry in $REGISTRY_DIR (run: $SELF start)"
  mkdir -p "$REGISTRY_DIR"
  take_lock "$REGISTRY_DIR/.lock"
  reg_stop
  : >"$RUNNING_MARK"
  reg_start "$(reg_port)"
  ;;
stop-only)
  # Stops the JVM but keeps the watchdog and the port (for outage tests).
  take_lock "$REGISTRY_DIR/.lock"
  reg_stop ;;
start-only)
  take_lock "$REGISTRY_DIR/.lock"
  reg_start "$(reg_port)" ;;
status)
  if reg_running && reg_ready; then
    echo "registry: running (pid $(reg_pid), $(reg_url))"
  else
    echo "registry: stopped"
    exit 3
  fi ;;
url) reg_url; echo ;;
env)
  [[ -f $ENV_FILE ]] || die "no env file; run: $SELF start"
  cat "$ENV_FILE" ;;
__watchdog) watchdog_main ;;
-h | --help | help | "") usage ;;
*)
  usage >&2
  exit 2 ;;
esac

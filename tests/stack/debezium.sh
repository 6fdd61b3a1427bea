#!/usr/bin/env bash
# tests/stack/debezium.sh - Debezium's PostgreSQL connector on Kafka Connect
# (distributed worker, exactly.once.source.support=enabled) beside a running
# test stack (tests/stack/stack.sh), for side-by-side tests and benchmarks
# against outboxd. Test-only: Connect 3.9.1 and Debezium 3.0.8.Final come
# from Maven Central (tests/stack/debezium/pom.xml); nothing of it ships.
#
#   STACK_DIR=/tmp/s tests/stack/debezium.sh start   # then: . /tmp/s/connect/env
#   tests/stack/debezium.sh register NAME FILE.json  # PUT the connector config, wait until RUNNING
#   tests/stack/debezium.sh status NAME | delete NAME | stop | classpath | plugins
#
# The worker listens on a free port of 127.0.0.1 (CONNECT_URL in the env
# file); its state (worker.properties, connect.log, pid) is in
# $STACK_DIR/connect. A watchdog stops it when STACK_OWNER_PID (if set at
# start) or the stack's Kafka goes away, so a killed run leaves nothing.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")
SRC=$(dirname "$SELF")
STACK_DIR=${STACK_DIR:-$PWD/.stack}
[[ $STACK_DIR == /* ]] || STACK_DIR=$PWD/$STACK_DIR
export STACK_DIR
DIR=$STACK_DIR/connect
PIDFILE=$DIR/connect.pid
ENVF=$DIR/env
TIMEOUT=${STACK_TIMEOUT:-180}
JAVA=${JAVA:-java}

log() { printf 'debezium: %s\n' "$*" >&2; }
die() {
    printf 'debezium: ERROR: %s\n' "$*" >&2
    exit 1
}
die_log() {
    printf 'debezium: ERROR: %s; last lines of %s:\n' "$2" "$1" >&2
    tail -n 40 "$1" >&2 2>/dev/null || true
    exit 1
}

stack_env() {
    [[ -f $STACK_DIR/env ]] || die "no running stack in $STACK_DIR (run tests/stack/stack.sh start)"
    # shellcheck disable=SC1091
    source "$STACK_DIR/env"
}

classpath() {
    local dir=${XDG_CACHE_HOME:-$HOME/.cache}/outboxd key file
    mkdir -p "$dir"
    key=$(sha256sum "$SRC/debezium/pom.xml" | cut -c1-16)
    file=$dir/debezium-classpath-$key.txt
    if [[ -s $file ]] && tr ':' '\n' <"$file" | while read -r j; do [[ -f $j ]] || exit 1; done; then
        printf '%s\n' "$file"
        return
    fi
    command -v mvn >/dev/null 2>&1 || die "maven (mvn) not found: run scripts/install-deps.sh"
    log "resolving the Connect + Debezium classpath with maven (once; log: $dir/debezium-mvn.log)"
    mvn -B -q -Dstyle.color=never -f "$SRC/debezium/pom.xml" dependency:build-classpath \
        -Dmdep.outputFile="$file.tmp.$$" </dev/null >"$dir/debezium-mvn.log" 2>&1 ||
        die_log "$dir/debezium-mvn.log" "maven could not resolve $SRC/debezium/pom.xml"
    mv -f "$file.tmp.$$" "$file"
    printf '%s\n' "$file"
}

# The plugin.path directory: Apicurio's AvroConverter 2.4.2.Final (writes
# Confluent's wire format with apicurio.registry.as-confluent=true) and its
# dependencies in plugins/apicurio-converter, loaded in a class loader of its
# own (tests/stack/debezium/apicurio/pom.xml). Prints the directory.
plugins() {
    local dir=${XDG_CACHE_HOME:-$HOME/.cache}/outboxd key out
    mkdir -p "$dir"
    key=$(cat "$SRC/debezium/apicurio/pom.xml" "$SRC/registry/settings.xml" | sha256sum | cut -c1-16)
    out=$dir/connect-plugins-$key
    if [[ -f $out/apicurio-converter/.complete ]]; then
        printf '%s\n' "$out"
        return
    fi
    command -v mvn >/dev/null 2>&1 || die "maven (mvn) not found: run scripts/install-deps.sh"
    log "resolving Apicurio's AvroConverter with maven (once; log: $dir/connect-plugins-mvn.log)"
    rm -rf "$out.tmp.$$"
    mvn -B -q -Dstyle.color=never -s "$SRC/registry/settings.xml" -f "$SRC/debezium/apicurio/pom.xml" \
        dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$out.tmp.$$/apicurio-converter" </dev/null >"$dir/connect-plugins-mvn.log" 2>&1 ||
        die_log "$dir/connect-plugins-mvn.log" "maven could not resolve $SRC/debezium/apicurio/pom.xml"
    touch "$out.tmp.$$/apicurio-converter/.complete"
    rm -rf "$out"
    mv -f "$out.tmp.$$" "$out"
    printf '%s\n' "$out"
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }
connect_pid() {
    local p=""
    [[ -f $PIDFILE ]] && read -r p <"$PIDFILE"
    pid_alive "$p" && grep -qa ConnectDistributed "/proc/$p/cmdline" 2>/dev/null && printf '%s\n' "$p"
    return 0
}

free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((32000 + RANDOM % 8000))
        [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] && { echo "$p"; return; }
    done
    die "no free port"
}

http() { curl -sS --max-time 10 "$@"; }

cmd_start() {
    stack_env
    mkdir -p "$DIR"
    if [[ -n $(connect_pid) ]]; then
        log "already running (pid $(connect_pid))"
        return 0
    fi
    local cp port plugdir
    cp=$(cat "$(classpath)")
    plugdir=$(plugins)
    port=$(free_port)
    cat >"$DIR/worker.properties" <<EOF
bootstrap.servers=$KAFKA_BOOTSTRAP
group.id=outboxd-sidebyside
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
config.storage.topic=connect-configs
offset.storage.topic=connect-offsets
status.storage.topic=connect-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.storage.partitions=1
status.storage.partitions=1
# Exactly-once source support (KIP-618): each source task writes its records
# and its offsets in one Kafka transaction, the mode users compare us with.
exactly.once.source.support=enabled
offset.flush.interval.ms=1000
listeners=http://127.0.0.1:$port
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$port
# Converters that are not on the classpath (Apicurio's AvroConverter).
plugin.path=$plugdir
EOF
    cat >"$DIR/log4j.properties" <<EOF
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$DIR/connect.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.reflections=ERROR
EOF
    : >"$DIR/connect.log"
    (
        cd "$DIR"
        exec setsid "$JAVA" -Xmx${DEBEZIUM_HEAP:-512m} -XX:+UseG1GC -Djava.awt.headless=true \
            -Dlog4j.configuration="file:$DIR/log4j.properties" \
            -cp "$cp" org.apache.kafka.connect.cli.ConnectDistributed "$DIR/worker.properties"
    ) </dev/null >"$DIR/connect.out" 2>&1 &
    echo $! >"$PIDFILE"
    printf 'export CONNECT_URL=%s\nexport CONNECT_PID=%s\n' "http://127.0.0.1:$port" "$!" >"$ENVF"
    # Watchdog: the worker goes when its owner or the stack's broker goes.
    local owner=${STACK_OWNER_PID:-} kpid=""
    [[ -f $STACK_DIR/kafka.pid ]] && read -r kpid <"$STACK_DIR/kafka.pid"
    (
        cd /
        exec setsid bash -c '
            while kill -0 "$1" 2>/dev/null; do
                if [[ -n $2 ]] && ! kill -0 "$2" 2>/dev/null; then break; fi
                if [[ -n $3 ]] && ! kill -0 "$3" 2>/dev/null; then break; fi
                sleep 1
            done
            kill -TERM "$1" 2>/dev/null; sleep 10; kill -KILL "$1" 2>/dev/null; exit 0' \
            debezium-watchdog "$(cat "$PIDFILE")" "$owner" "$kpid"
    ) </dev/null >/dev/null 2>&1 &
    local t0=$SECONDS
    until http "http://127.0.0.1:$port/connectors" >/dev/null 2>&1; do
        pid_alive "$(cat "$PIDFILE")" || die_log "$DIR/connect.out" "Kafka Connect exited"
        ((SECONDS - t0 < TIMEOUT)) || die_log "$DIR/connect.log" "Kafka Connect REST not up after $TIMEOUT s"
        sleep 0.5
    done
    log "Kafka Connect up at http://127.0.0.1:$port (pid $(cat "$PIDFILE")) after $((SECONDS - t0)) s; env: $ENVF"
}

cmd_stop() {
    local p
    p=$(connect_pid)
    if [[ -n $p ]]; then
        kill -TERM "$p" 2>/dev/null || true
        for _ in $(seq 1 200); do
            pid_alive "$p" || break
            sleep 0.1
        done
        pid_alive "$p" && kill -KILL "$p" 2>/dev/null || true
        log "stopped"
    fi
    rm -f "$PIDFILE"
}

url() {
    [[ -f $ENVF ]] || die "not started (no $ENVF)"
    # shellcheck disable=SC1090
    source "$ENVF"
    printf '%s\n' "$CONNECT_URL"
}

cmd_register() {
    local name=$1 file=$2 u state t0=$SECONDS
    u=$(url)
    # A worker that has just started may answer 404 until it has joined its
    # group and read the config topic: retry within the timeout.
    until http -f -X PUT -H 'Content-Type: application/json' --data-binary "@$file" \
        "$u/connectors/$name/config" >/dev/null 2>"$DIR/put.err"; do
        ((SECONDS - t0 < TIMEOUT)) || die "PUT $u/connectors/$name/config failed: $(cat "$DIR/put.err")"
        sleep 1
    done
    until state=$(http "$u/connectors/$name/status" 2>/dev/null) &&
        [[ $state == *'"tasks":[{'*'"state":"RUNNING"'* ]]; do
        [[ $state == *FAILED* ]] && {
            printf '%s\n' "$state" >&2
            die "connector $name failed"
        }
        ((SECONDS - t0 < TIMEOUT)) || die_log "$DIR/connect.log" "connector $name not RUNNING after $TIMEOUT s: $state"
        sleep 0.5
    done
    log "connector $name running"
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
register) cmd_register "$2" "$3" ;;
status) http "$(url)/connectors/$2/status" && echo ;;
delete) http -X DELETE "$(url)/connectors/$2" ;;
classpath) classpath ;;
plugins) plugins ;;
*)
    sed -n '2,16p' "$SELF" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

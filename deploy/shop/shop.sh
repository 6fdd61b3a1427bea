# deploy/shop/shop.sh - start and stop the shop (the schema registry, Redis,
# the eight services, outboxd, nginx) on free ports. Sourced by scripts/demo.sh and the shop's
# integration tests; needs PostgreSQL and Kafka already up (tests/stack) and
# PGHOST, PGPORT, PGUSER, KAFKA_BOOTSTRAP, PATH with psql in the environment.
#
# Inputs (set before calling shop_init):
#   SHOP_ROOT      the source tree
#   SHOP_BIN       the outboxd-shop binary
#   OUTBOXD_BIN    the outboxd binary
#   SHOP_WORK      a directory for logs, configs, pid files
#   SHOP_PREFIX    isolates one run on a shared server/broker: databases
#                  <prefix>_<service>, slots, topics <prefix>., consumer groups
#   optional knobs, with the defaults used here (some differ from
#   outboxd-shop's own, README "The shop"): SHOP_SAGA_TIMEOUT_MS (20000),
#   SHOP_RATE (0: unlimited), SHOP_RETRIES (3), SHOP_RETRY_BACKOFF_MS (100),
#   SHOP_GATEWAY_RATE (200 r/s) and SHOP_GATEWAY_BURST (400) per client
#   and token; SHOP_GATEWAY_ADDR_RATE and SHOP_GATEWAY_ADDR_BURST (5 times
#   those) per client address, whatever its tokens
#   SHOP_REGISTRY  1 (default): start a schema registry (tests/stack/registry.sh,
#                  Apicurio in memory, in $SHOP_WORK/registry); outboxd writes
#                  the Confluent wire format and the services decode through
#                  it. 0: no registry, single-object Avro.
#   SHOP_REGISTRY_URL  set by the caller: use that registry, start none
#   SHOP_OWNER_PID  if set, the registry's watchdog stops it when that
#                  process is gone (else STACK_OWNER_PID, if set)
# Everything started is recorded in $SHOP_WORK/pids; shop_stop_all stops it.

SHOP_SERVICES=(member product coupon order payment popular notification platform)
declare -A SHOP_PORT SHOP_PID

shop_log() { printf '%s [shop] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
shop_die() {
    shop_log "ERROR: $*"
    return 1
}

# shop_free_port: a TCP port on 127.0.0.1 nobody listens on (and not yet
# handed out by this run), below Linux's ephemeral range (32768-60999) so an
# outgoing connection cannot take it between now and the bind.
shop_free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((12000 + RANDOM % 20000))
        grep -qx "$p" "$SHOP_WORK/ports" 2>/dev/null && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p" >>"$SHOP_WORK/ports"
            echo "$p"
            return 0
        fi
    done
    shop_die "no free port"
}

shop_init() {
    : "${SHOP_ROOT:?}" "${SHOP_BIN:?}" "${OUTBOXD_BIN:?}" "${SHOP_WORK:?}" "${SHOP_PREFIX:?}"
    mkdir -p "$SHOP_WORK"
    : >"$SHOP_WORK/pids"
    : >"$SHOP_WORK/ports"
    export SHOP_DB_PREFIX="${SHOP_PREFIX}_"
    export SHOP_SLOT_PREFIX="${SHOP_PREFIX}"
    export SHOP_TOPIC_PREFIX="${SHOP_PREFIX}."
    export SHOP_TXN_PREFIX="outboxd-${SHOP_PREFIX}"
    SHOP_ADMIN_TOKEN=${SHOP_ADMIN_TOKEN:-admin-$SHOP_PREFIX-$RANDOM$RANDOM}
    for s in "${SHOP_SERVICES[@]}"; do SHOP_PORT[$s]=$(shop_free_port); done
    SHOP_REDIS_PORT=$(shop_free_port)
    SHOP_GATEWAY_PORT=$(shop_free_port)
    SHOP_GATEWAY="http://127.0.0.1:$SHOP_GATEWAY_PORT"
    SHOP_REGISTRY_DIR=$SHOP_WORK/registry
    SHOP_REGISTRY_OWN=0
    if [ "${SHOP_REGISTRY:-1}" != 1 ]; then
        SHOP_REGISTRY_URL=""
    elif [ -z "${SHOP_REGISTRY_URL:-}" ]; then
        SHOP_REGISTRY_OWN=1
        SHOP_REGISTRY_PORT=$(shop_free_port)
        SHOP_REGISTRY_URL="http://127.0.0.1:$SHOP_REGISTRY_PORT/apis/ccompat/v7"
    fi
    export SHOP_REGISTRY_URL
    SHOP_RELAY_CONFIG=$SHOP_WORK/outboxd.yaml
}

# shop_start_registry: launches the registry in the background (its JVM
# takes a while; the services start meanwhile, since the URL is known).
shop_start_registry() {
    [ "$SHOP_REGISTRY_OWN" = 1 ] || return 0
    mkdir -p "$SHOP_REGISTRY_DIR"
    # registry.sh start binds the port recorded here (as on a restart)
    echo "$SHOP_REGISTRY_PORT" >"$SHOP_REGISTRY_DIR/port"
    REGISTRY_DIR=$SHOP_REGISTRY_DIR STACK_OWNER_PID=${SHOP_OWNER_PID:-${STACK_OWNER_PID:-}} \
        "$SHOP_ROOT/tests/stack/registry.sh" start >"$SHOP_WORK/registry-start.log" 2>&1 &
    SHOP_REGISTRY_STARTER=$!
}

# shop_wait_registry: until the registry answers. If another process took
# its port meanwhile, starts it on another one and restarts the services
# with the new URL.
shop_wait_registry() {
    [ "$SHOP_REGISTRY_OWN" = 1 ] || return 0
    local rc=0
    if [ -n "${SHOP_REGISTRY_STARTER:-}" ]; then
        wait "$SHOP_REGISTRY_STARTER" || rc=$?
        SHOP_REGISTRY_STARTER=""
    fi
    if [ $rc != 0 ] && grep -q 'Address already in use\|Port.*already' "$SHOP_REGISTRY_DIR/registry.log" 2>/dev/null; then
        shop_log "port $SHOP_REGISTRY_PORT of the registry was taken; trying another"
        SHOP_REGISTRY_PORT=$(shop_free_port)
        SHOP_REGISTRY_URL="http://127.0.0.1:$SHOP_REGISTRY_PORT/apis/ccompat/v7"
        shop_start_registry
        rc=0
        wait "$SHOP_REGISTRY_STARTER" || rc=$?
        SHOP_REGISTRY_STARTER=""
        if [ $rc = 0 ]; then
            for s in "${SHOP_SERVICES[@]}"; do
                [ -n "${SHOP_PID[$s]:-}" ] || continue
                shop_stop_service "$s"
                shop_start_service "$s"
            done
            for s in "${SHOP_SERVICES[@]}"; do shop_wait_ready "$s" || return 1; done
        fi
    fi
    if [ $rc != 0 ]; then
        cat "$SHOP_WORK/registry-start.log" >&2
        shop_die "the schema registry did not start (log: $SHOP_REGISTRY_DIR/registry.log)"
        return 1
    fi
}

# The topics the services write through their outboxes (each may also get
# a <topic>.dlt).
SHOP_EVENT_TOPICS=(payment-pending payment-result cancel-order refund-balance rollback-coupon
    restore-inventory order-canceled balance-refunded coupon-rolledback inventory-restored
    payment-failed complete-order)

# shop_register_schemas: registers the envelope schema (the text outboxd
# registers, config/avro/outbox_envelope.avsc) under <topic>-value for every
# event topic and its .dlt, one at a time, before outboxd starts, as a
# deployment registers its schemas; outboxd then only finds them. Without
# this, outboxd's sources register the same schema under several new
# subjects at once, and Apicurio's in-memory store answers some of those
# concurrent first registrations with 409 "artifact already exists", which
# outboxd takes as a rejection and dead-letters the event.
shop_register_schemas() {
    [ -n "$SHOP_REGISTRY_URL" ] || return 0
    local body t subj code
    body=$(jq -Rs '{schema: .}' "$SHOP_ROOT/config/avro/outbox_envelope.avsc") || return 1
    for t in "${SHOP_EVENT_TOPICS[@]}"; do
        for subj in "$SHOP_TOPIC_PREFIX$t-value" "$SHOP_TOPIC_PREFIX$t.dlt-value"; do
            code=$(curl -s -o "$SHOP_WORK/register.out" -w '%{http_code}' --max-time 30 -X POST \
                -H 'Content-Type: application/vnd.schemaregistry.v1+json' --data "$body" \
                "$SHOP_REGISTRY_URL/subjects/$subj/versions") || code=000
            [ "$code" = 200 ] || {
                shop_die "registering $subj in $SHOP_REGISTRY_URL: HTTP $code $(cat "$SHOP_WORK/register.out" 2>/dev/null)"
                return 1
            }
        done
    done
}

# shop_registry_subjects: the subjects registered, as one JSON array.
shop_registry_subjects() {
    curl -sf --max-time 10 "$SHOP_REGISTRY_URL/subjects"
}

# shop_relay_config: outboxd's configuration for this run, from
# deploy/shop/outboxd.yaml (without its schema_registry section when no
# registry runs).
shop_relay_config() {
    if [ -n "$SHOP_REGISTRY_URL" ]; then
        cp "$SHOP_ROOT/deploy/shop/outboxd.yaml" "$SHOP_RELAY_CONFIG"
    else
        awk '/^schema_registry:/ { skip = 1; next } skip && /^[^ #]/ { skip = 0 } !skip' \
            "$SHOP_ROOT/deploy/shop/outboxd.yaml" >"$SHOP_RELAY_CONFIG"
    fi
}

_shop_track() { echo "$1 $2" >>"$SHOP_WORK/pids"; }

# shop_create_dbs: one fresh database per service.
shop_create_dbs() {
    for s in "${SHOP_SERVICES[@]}"; do
        psql -X -q -v ON_ERROR_STOP=1 -d postgres \
            -c "DROP DATABASE IF EXISTS \"${SHOP_DB_PREFIX}$s\" WITH (FORCE)" \
            -c "CREATE DATABASE \"${SHOP_DB_PREFIX}$s\"" >/dev/null || return 1
    done
}

shop_db() { # shop_db SERVICE SQL: one value per line, fields separated by |
    psql -X -q -v ON_ERROR_STOP=1 -At -d "${SHOP_DB_PREFIX}$1" -c "$2"
}

shop_start_redis() {
    local try
    for try in 1 2 3; do
        _shop_start_redis && return 0
        grep -q 'Address already in use' "$SHOP_WORK/redis.log" 2>/dev/null || return 1
        shop_log "port $SHOP_REDIS_PORT of redis was taken; trying another"
        SHOP_REDIS_PORT=$(shop_free_port)
    done
    return 1
}

_shop_start_redis() {
    : >"$SHOP_WORK/redis.log"
    redis-server --port "$SHOP_REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$SHOP_WORK" --logfile "$SHOP_WORK/redis.log" --daemonize no &
    SHOP_PID[redis]=$!
    _shop_track redis $!
    local pid=$!
    for _ in $(seq 1 100); do
        redis-cli -p "$SHOP_REDIS_PORT" ping 2>/dev/null | grep -q PONG && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    shop_die "redis did not answer on port $SHOP_REDIS_PORT (see $SHOP_WORK/redis.log)"
}

# shop_start_service SERVICE [extra outboxd-shop options]
shop_start_service() {
    local s=$1
    shift
    local args=(--db "host=$PGHOST port=$PGPORT user=$PGUSER dbname=${SHOP_DB_PREFIX}$s"
        --kafka "$KAFKA_BOOTSTRAP" --http "${SHOP_PORT[$s]}"
        --topic-prefix "$SHOP_TOPIC_PREFIX" --group-prefix "$SHOP_TOPIC_PREFIX"
        --retries "${SHOP_RETRIES:-3}" --retry-backoff-ms "${SHOP_RETRY_BACKOFF_MS:-100}"
        --rate "${SHOP_RATE:-0}")
    case $s in
    member) args+=(--admin-token "$SHOP_ADMIN_TOKEN") ;;
    payment) args+=(--saga-timeout-ms "${SHOP_SAGA_TIMEOUT_MS:-20000}") ;;
    popular) args+=(--redis "127.0.0.1:$SHOP_REDIS_PORT") ;;
    esac
    [ -n "$SHOP_REGISTRY_URL" ] && args+=(--registry "$SHOP_REGISTRY_URL")
    "$SHOP_BIN" "$s" "${args[@]}" "$@" >>"$SHOP_WORK/$s.log" 2>&1 &
    SHOP_PID[$s]=$!
    _shop_track "$s" $!
}

# shop_wait_ready SERVICE: until its HTTP answers and its consumers are up.
shop_wait_ready() {
    local s=$1
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:${SHOP_PORT[$s]}/health" >/dev/null 2>&1 && return 0
        kill -0 "${SHOP_PID[$s]}" 2>/dev/null || {
            tail -n 20 "$SHOP_WORK/$s.log" >&2
            shop_die "service $s exited (log: $SHOP_WORK/$s.log)"
            return 1
        }
        sleep 0.1
    done
    shop_die "service $s not ready within 60 s (log: $SHOP_WORK/$s.log)"
}

shop_start_services() {
    for s in "${SHOP_SERVICES[@]}"; do shop_start_service "$s"; done
    for s in "${SHOP_SERVICES[@]}"; do
        # On a shared machine another process may take a port between the
        # check and the bind: then try another port (twice).
        local try
        for try in 1 2 3; do
            shop_wait_ready "$s" && continue 2
            grep -q 'cannot listen' "$SHOP_WORK/$s.log" || return 1
            [ $try = 3 ] && return 1
            shop_log "port ${SHOP_PORT[$s]} of $s was taken; trying another"
            : >"$SHOP_WORK/$s.log"
            SHOP_PORT[$s]=$(shop_free_port)
            shop_start_service "$s"
        done
    done
}

# shop_stop_service SERVICE [SIGNAL]: default TERM and wait; KILL for a crash.
shop_stop_service() {
    local s=$1 sig=${2:-TERM} pid=${SHOP_PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    SHOP_PID[$s]=""
}

shop_start_relay() {
    shop_relay_config
    "$OUTBOXD_BIN" check --create -c "$SHOP_RELAY_CONFIG" >"$SHOP_WORK/check.log" 2>&1 || {
        cat "$SHOP_WORK/check.log" >&2
        shop_die "outboxd check failed"
        return 1
    }
    "$OUTBOXD_BIN" run -c "$SHOP_RELAY_CONFIG" >>"$SHOP_WORK/outboxd.log" 2>&1 &
    SHOP_PID[outboxd]=$!
    _shop_track outboxd $!
}

shop_start_nginx() {
    local try
    for try in 1 2 3; do
        _shop_start_nginx && return 0
        grep -q 'Address already in use' "$SHOP_WORK/nginx-error.log" "$SHOP_WORK/nginx.out" 2>/dev/null || return 1
        shop_log "port $SHOP_GATEWAY_PORT of the gateway was taken; trying another"
        SHOP_GATEWAY_PORT=$(shop_free_port)
        SHOP_GATEWAY="http://127.0.0.1:$SHOP_GATEWAY_PORT"
    done
    return 1
}

_shop_start_nginx() {
    mkdir -p "$SHOP_WORK/nginx-tmp"
    sed -e "s|@WORK@|$SHOP_WORK|g" \
        -e "s|@GATEWAY_PORT@|$SHOP_GATEWAY_PORT|g" \
        -e "s|@RATE@|${SHOP_GATEWAY_RATE:-200}|g" \
        -e "s|@BURST@|${SHOP_GATEWAY_BURST:-400}|g" \
        -e "s|@ADDR_RATE@|${SHOP_GATEWAY_ADDR_RATE:-$((${SHOP_GATEWAY_RATE:-200} * 5))}|g" \
        -e "s|@ADDR_BURST@|${SHOP_GATEWAY_ADDR_BURST:-$((${SHOP_GATEWAY_BURST:-400} * 5))}|g" \
        "$SHOP_ROOT/deploy/shop/nginx.conf" >"$SHOP_WORK/nginx.conf"
    for s in "${SHOP_SERVICES[@]}"; do
        local up=${s^^}
        sed -i "s|@${up}_PORT@|${SHOP_PORT[$s]}|g" "$SHOP_WORK/nginx.conf"
    done
    nginx -t -p "$SHOP_WORK" -c "$SHOP_WORK/nginx.conf" >"$SHOP_WORK/nginx-t.log" 2>&1 || {
        cat "$SHOP_WORK/nginx-t.log" >&2
        shop_die "nginx configuration refused"
        return 1
    }
    nginx -p "$SHOP_WORK" -c "$SHOP_WORK/nginx.conf" >>"$SHOP_WORK/nginx.out" 2>&1 &
    SHOP_PID[nginx]=$!
    _shop_track nginx $!
    # nginx's own answer, not just an open port (another process may hold it)
    for _ in $(seq 1 100); do
        kill -0 "${SHOP_PID[nginx]}" 2>/dev/null || return 1
        curl -s -m 2 "$SHOP_GATEWAY/" 2>/dev/null | grep -q 'no such route' && return 0
        sleep 0.1
    done
    shop_die "nginx did not listen on $SHOP_GATEWAY_PORT (see $SHOP_WORK/nginx-error.log)"
}

# shop_start_all: the registry, Redis, databases, services, outboxd, nginx.
shop_start_all() {
    shop_start_registry || return 1
    shop_start_redis || return 1
    shop_create_dbs || return 1
    shop_start_services || return 1
    shop_wait_registry || return 1
    shop_register_schemas || return 1
    shop_start_relay || return 1
    shop_start_nginx || return 1
}

# shop_stop_all: everything this run started, then its slots and databases
# (unless SHOP_KEEP_DBS=1).
shop_stop_all() {
    local name pid
    if [ -f "$SHOP_WORK/pids" ]; then
        while read -r name pid; do
            kill -TERM "$pid" 2>/dev/null || true
        done <"$SHOP_WORK/pids"
        for _ in $(seq 1 100); do
            local alive=0
            while read -r name pid; do
                kill -0 "$pid" 2>/dev/null && alive=1
            done <"$SHOP_WORK/pids"
            [ $alive = 0 ] && break
            sleep 0.1
        done
        while read -r name pid; do
            kill -9 "$pid" 2>/dev/null || true
        done <"$SHOP_WORK/pids"
        : >"$SHOP_WORK/pids"
    fi
    # the registry runs in its own session: its script stops it (after a
    # start still under way, which holds its lock)
    if [ "${SHOP_REGISTRY_OWN:-0}" = 1 ] && [ -d "${SHOP_REGISTRY_DIR:-}" ]; then
        REGISTRY_DIR=$SHOP_REGISTRY_DIR "$SHOP_ROOT/tests/stack/registry.sh" stop >>"$SHOP_WORK/registry-start.log" 2>&1 || true
        # Its URL is gone with it: a later shop_init (bench/shop.sh runs the
        # shop twice) must start its own again, not take this one as given.
        SHOP_REGISTRY_URL=""
        SHOP_REGISTRY_OWN=0
    fi
    wait 2>/dev/null || true
    [ "${SHOP_KEEP_DBS:-0}" = 1 ] && return 0
    for s in "${SHOP_SERVICES[@]}"; do
        psql -X -q -d "${SHOP_DB_PREFIX}$s" -c \
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '${SHOP_SLOT_PREFIX}_$s'" \
            >/dev/null 2>&1 || true
        psql -X -q -d postgres -c "DROP DATABASE IF EXISTS \"${SHOP_DB_PREFIX}$s\" WITH (FORCE)" \
            >/dev/null 2>&1 || true
    done
}

# shop_api METHOD PATH [TOKEN] [JSON]: a request through the gateway; prints
# the body and sets SHOP_CODE to the HTTP status.
shop_api() {
    local method=$1 path=$2 token=${3:-} body=${4:-} out
    local args=(-s -X "$method" -o "$SHOP_WORK/api.body" -w '%{http_code}' --max-time 120)
    [ -n "$token" ] && args+=(-H "Authorization: Bearer $token")
    [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data "$body")
    SHOP_CODE=$(curl "${args[@]}" "$SHOP_GATEWAY$path") || SHOP_CODE=000
    cat "$SHOP_WORK/api.body" 2>/dev/null
}

# shop_svc_api SERVICE METHOD PATH [JSON]: straight to a service (tests).
shop_svc_api() {
    local s=$1 method=$2 path=$3 body=${4:-}
    local args=(-s -X "$method" -o "$SHOP_WORK/api.body" -w '%{http_code}' --max-time 120)
    [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data "$body")
    SHOP_CODE=$(curl "${args[@]}" "http://127.0.0.1:${SHOP_PORT[$s]}$path") || SHOP_CODE=000
    cat "$SHOP_WORK/api.body" 2>/dev/null
}

# shop_wait_eq DESCRIPTION TIMEOUT_S EXPECTED COMMAND...: until COMMAND
# (run again each time) prints EXPECTED.
shop_wait_eq() {
    local what=$1 timeout=$2 want=$3
    shift 3
    local end=$((SECONDS + timeout)) got=""
    while ((SECONDS < end)); do
        got=$("$@" 2>/dev/null) || true
        [ "$got" = "$want" ] && return 0
        sleep 0.2
    done
    shop_die "timed out after ${timeout}s waiting for: $what (last: ${got:0:300})"
}

# shop_wait_for DESCRIPTION TIMEOUT_S COMMAND...: until COMMAND succeeds.
shop_wait_for() {
    local what=$1 timeout=$2
    shift 2
    local end=$((SECONDS + timeout))
    while ((SECONDS < end)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    shop_die "timed out after ${timeout}s waiting for: $what"
}

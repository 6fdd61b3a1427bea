#!/usr/bin/env bash
# ctest: lock registry -- the shared schema registry (test_registry_outage stops it)
# The registry behind HTTPS with credentials (tls_auth_proxy.py in front of
# the test registry, a throw-away CA): the relay verifies the server with
# schema_registry.ca_file and authenticates with Basic auth (password_file)
# or a bearer token (bearer_token_file); wrong or missing ones are named.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
# shellcheck disable=SC1091
source "$STACK_DIR/registry/env"
PY=$("$OUTBOXD_SOURCE_DIR/tests/stack/pyvenv.sh")

# A CA and a server certificate for 127.0.0.1 signed by it.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=outboxd test CA" \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" >/dev/null 2>&1 || fail "openssl: CA"
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$WORK/srv.key" \
    -out "$WORK/srv.csr" >/dev/null 2>&1 || fail "openssl: CSR"
printf 'subjectAltName=IP:127.0.0.1\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/srv.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/san.ext" -out "$WORK/srv.pem" >/dev/null 2>&1 || fail "openssl: sign"

upstream=${REGISTRY_URL%/apis/ccompat/v7}
"$PY" "$here/tls_auth_proxy.py" "$WORK/srv.pem" "$WORK/srv.key" "$upstream" outboxd 's3cr3t:pw' \
    tok-$RUN_ID "$WORK/proxy.port" "$WORK/proxy.log" 2>"$WORK/proxy.err" &
BG_PIDS+=($!)
for _ in $(seq 1 300); do [ -s "$WORK/proxy.port" ] && break; sleep 0.1; done
[ -s "$WORK/proxy.port" ] || fail "proxy did not start: $(cat "$WORK/proxy.err")"
URL="https://127.0.0.1:$(cat "$WORK/proxy.port")/apis/ccompat/v7"
printf 's3cr3t:pw\n' >"$WORK/password"
printf 'wrong\n' >"$WORK/wrong"
printf 'tok-%s\n' "$RUN_ID" >"$WORK/token"

DB=regtls_$RUN_ID
create_outbox_db "$DB"
conf() { # conf FILE REGISTRY_KEYS...
    local f=$1
    shift
    write_config "$f" "$DB"
    {
        echo "schema_registry:"
        echo "  url: \"$URL\""
        for kv in "$@"; do echo "  $kv"; done
    } >"$WORK/reg.part"
    sed -i "/^relay:/e cat $WORK/reg.part" "$f"
    sed -i "s|^relay:|relay:\n  schemas_dir: \"$OUTBOXD_SOURCE_DIR/tests/data/schemas\"|" "$f"
}
check_says() { # check_says CONFIG EXIT PATTERN
    local rc=0
    "$OUTBOXD_BIN" check --create -c "$1" >"$WORK/check.out" 2>&1 || rc=$?
    grep -qF -- "$3" "$WORK/check.out" && [ "$rc" -eq "$2" ] ||
        fail "check on $(basename "$1"): exit $rc, expected $2 and '$3' in: $(cat "$WORK/check.out")"
    log "check $(basename "$1"): $(grep -F -- "$3" "$WORK/check.out" | head -1 | cut -c1-200)"
}

conf "$WORK/noca.yaml" "basic_auth_user: outboxd" "password_file: $WORK/password"
check_says "$WORK/noca.yaml" 1 "schema registry: cannot reach $URL/subjects"
conf "$WORK/wrongpw.yaml" "basic_auth_user: outboxd" "password_file: $WORK/wrong" "ca_file: $WORK/ca.pem"
check_says "$WORK/wrongpw.yaml" 1 "answered HTTP 401: Unauthorized (check the schema_registry credentials)"
conf "$WORK/bearer.yaml" "bearer_token_file: $WORK/token" "ca_file: $WORK/ca.pem"
check_says "$WORK/bearer.yaml" 0 "registry $URL answers"
conf "$WORK/basic.yaml" "basic_auth_user: outboxd" "password_file: $WORK/password" "ca_file: $WORK/ca.pem"
check_says "$WORK/basic.yaml" 0 "registry $URL answers"

# Events through HTTPS + Basic auth; read back through the registry itself.
start_relay "$WORK/basic.yaml"
relay=$RELAY_PID
psql_db "$DB" -c "SELECT write_events('$DB', '$DB-1', 50)" >/dev/null
wait_drained "$DB" "${DB}_${RUN_ID}"
"$PY" "$here/avro_consume.py" --bootstrap "$KAFKA_BOOTSTRAP" --topic "$RUN_ID.ev.$DB" --mode registry \
    --registry-url "$REGISTRY_URL" --count 50 --idle-ms 15000 --timeout-s 300 --out "$WORK/ev.jsonl"
"$PY" - "$WORK/ev.jsonl" <<'PY'
import json, sys
ev = [json.loads(l) for l in open(sys.argv[1])]
assert not [e for e in ev if "error" in e], ev[0]
seqs = [e["value"]["payload"]["seq"] for e in sorted(ev, key=lambda e: e["offset"])]
assert seqs == list(range(1, 51)), seqs
print("50 typed events registered over HTTPS with Basic auth, decoded in order")
PY
grep -q "POST /apis/ccompat/v7/subjects/.*/versions basic" "$WORK/proxy.log" ||
    fail "the relay did not register through the proxy with Basic auth"
grep -q "GET /apis/ccompat/v7/subjects bearer" "$WORK/proxy.log" || fail "bearer token not sent"
stop_relay_ok "$relay"
drop_source "$DB" "${DB}_${RUN_ID}"
log "PASS"

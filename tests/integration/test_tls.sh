#!/usr/bin/env bash
# ctest: parallel
# TLS and secrets, against a second stack of our own (tests/stack/stack.sh's
# opt-in switches) with a throw-away CA made here by openssl:
#   - PostgreSQL with ssl = on; the test role may only connect with hostssl +
#     scram-sha-256; the relay uses sslmode=verify-full, sslrootcert and
#     password_file, and pg_stat_ssl shows its connections encrypted;
#   - Kafka with an SSL, a SASL_SSL and a SASL_PLAINTEXT listener (SCRAM-SHA-512
#     user made at format time); the relay reaches the broker only through
#     SASL_SSL (security.protocol, ssl.ca.location, sasl.* through
#     kafka.properties; sasl.password from kafka.secret_properties_file or ${ENV});
#   - a wrong CA (either server) and a wrong SASL password are named by
#     `outboxd check` and `run` with the key to fix;
#   - a rotated PostgreSQL password (the role's and the file's) is used after
#     a reload (SIGHUP), refused with the old one before it;
#   - no password appears in check, run (log level debug), status or
#     /metrics output.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/prom.sh"
prom_venv

PG_SECRET="pg-Secret-$RUN_ID-x7"
KAFKA_SECRET="kafka-Secret-$RUN_ID-q9"
WRONG_SECRET="wrong-Secret-$RUN_ID-z3"
ROTATED_SECRET="pg-Rotated-$RUN_ID-k4"

# --- a CA, a server certificate for 127.0.0.1 and localhost, a second CA --
ca() { # ca NAME
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=outboxd test $1" \
        -keyout "$WORK/$1.key" -out "$WORK/$1.pem" >/dev/null 2>&1 || fail "openssl: $1"
}
ca ca
ca wrongca
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$WORK/srv.key" \
    -out "$WORK/srv.csr" >/dev/null 2>&1 || fail "openssl: CSR"
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/srv.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/san.ext" -out "$WORK/srv.pem" >/dev/null 2>&1 || fail "openssl: sign"
openssl pkcs12 -export -in "$WORK/srv.pem" -inkey "$WORK/srv.key" -name broker \
    -passout pass:keystore-pw -out "$WORK/srv.p12" >/dev/null 2>&1 || fail "openssl: pkcs12"
chmod 644 "$WORK"/*.pem # the relay reads them; the stack copies the key itself

# --- the stack ------------------------------------------------------------
TLS_STACK=$(mktemp -d /tmp/outboxd-tls-stack.XXXXXX)
extra_cleanup() { STACK_DIR=$TLS_STACK "$OUTBOXD_SOURCE_DIR/tests/stack/stack.sh" stop --clean >/dev/null 2>&1; }
SSL_PORT=$(free_port)
SASL_SSL_PORT=$(free_port)
SASL_PLAIN_PORT=$(free_port)
while [ "$SASL_SSL_PORT" = "$SSL_PORT" ]; do SASL_SSL_PORT=$(free_port); done
while [ "$SASL_PLAIN_PORT" = "$SSL_PORT" ] || [ "$SASL_PLAIN_PORT" = "$SASL_SSL_PORT" ]; do
    SASL_PLAIN_PORT=$(free_port)
done
cat >"$WORK/hba" <<EOF
hostnossl all          tlsuser 0.0.0.0/0    reject
hostssl   all          tlsuser 127.0.0.1/32 scram-sha-256
hostssl   replication  tlsuser 127.0.0.1/32 scram-sha-256
EOF
cat >"$WORK/kafka-extra.properties" <<EOF
ssl.keystore.type=PKCS12
ssl.keystore.location=$WORK/srv.p12
ssl.keystore.password=keystore-pw
ssl.key.password=keystore-pw
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
log "starting a TLS stack in $TLS_STACK (SSL :$SSL_PORT, SASL_SSL :$SASL_SSL_PORT, SASL_PLAINTEXT :$SASL_PLAIN_PORT)"
# STACK_KAFKA_PROXY=0: tests/repeat.sh exports 1 for its own stack; this one
# must not inherit the proxied listener beside its extra ones.
STACK_DIR=$TLS_STACK STACK_OWNER_PID=$$ STACK_OWNER_CLEAN=1 STACK_KAFKA_PROXY=0 STACK_KAFKA_HEAP="-Xmx512m -Xms128m" \
    STACK_PG_SSL_CERT=$WORK/srv.pem STACK_PG_SSL_KEY=$WORK/srv.key STACK_PG_HBA_FIRST=$WORK/hba \
    STACK_KAFKA_EXTRA_LISTENERS="SSL://127.0.0.1:$SSL_PORT,SASL_SSL://127.0.0.1:$SASL_SSL_PORT,SASL_PLAINTEXT://127.0.0.1:$SASL_PLAIN_PORT" \
    STACK_KAFKA_EXTRA_PROPS=$WORK/kafka-extra.properties \
    STACK_KAFKA_SCRAM="SCRAM-SHA-512=[name=outboxd,password=$KAFKA_SECRET]" \
    "$OUTBOXD_SOURCE_DIR/tests/stack/stack.sh" start >"$WORK/stack.log" 2>&1 ||
    fail "TLS stack did not start: $(tail -n 30 "$WORK/stack.log")"
# From here on psql, okcat and KAFKA_BOOTSTRAP (PLAINTEXT, for the test's own
# reads) address this stack.
# shellcheck disable=SC1091
source "$TLS_STACK/env"
export PGHOST PGPORT PGUSER

DB=tls_$RUN_ID
create_outbox_db "$DB"
psql_db "$DB" -v pw="$PG_SECRET" -v db="$DB" >/dev/null <<'SQL'
SET password_encryption = 'scram-sha-256';
CREATE ROLE tlsuser LOGIN REPLICATION PASSWORD :'pw';
ALTER DATABASE :"db" OWNER TO tlsuser;
ALTER TABLE outbox OWNER TO tlsuser;
ALTER TABLE seqs OWNER TO tlsuser;
ALTER FUNCTION write_events(text, text, int) OWNER TO tlsuser;
SQL
[ "$(psql_db "$DB" -c "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'tlsuser'")" = "SCRAM-SHA-256\$" ] ||
    fail "tlsuser's password is not stored as SCRAM"
printf '%s\n' "$PG_SECRET" >"$WORK/pg.password"
printf '%s\n' "$WRONG_SECRET" >"$WORK/pg.wrong"
printf '# SASL secret\nsasl.password=%s\n' "$KAFKA_SECRET" >"$WORK/kafka.secret"
printf 'sasl.password=%s\n' "$WRONG_SECRET" >"$WORK/kafka.wrong"
chmod 600 "$WORK"/*.password "$WORK"/*.secret "$WORK"/*.wrong "$WORK/pg.wrong"
METRICS_PORT=$(free_port)

# conf FILE PG_CA KAFKA_CA PG_PWFILE [KAFKA_SECRET_LINE...]: the relay's
# configuration as an operator writes it (README "TLS and secrets").
conf() {
    local f=$1 pgca=$2 kca=$3 pwfile=$4
    shift 4
    cat >"$f" <<EOF
kafka:
  bootstrap_servers: "127.0.0.1:$SASL_SSL_PORT"
  transactional_id_prefix: "outboxd-$RUN_ID"
  properties:
    security.protocol: SASL_SSL
    ssl.ca.location: "$kca"
    sasl.mechanisms: SCRAM-SHA-512
    sasl.username: outboxd
EOF
    for l in "$@"; do printf '%s\n' "$l" >>"$f"; done
    cat >>"$f" <<EOF
relay:
  commit_interval_ms: 20
  checkpoint_topic: "$RUN_ID.checkpoints"
  dead_letter_topic: "$RUN_ID.dlt"
  log_level: debug
metrics:
  listen: 127.0.0.1:$METRICS_PORT
sources:
  - name: $DB
    dsn: "host=127.0.0.1 port=$PGPORT dbname=$DB user=tlsuser sslmode=verify-full sslrootcert=$pgca connect_timeout=10"
    password_file: "$pwfile"
    heartbeat_interval_ms: 500
    slot: "${DB}_slot"
    publication: "outboxd_pub"
    tables:
      - table: public.outbox
        topic: "$RUN_ID.ev.\${aggregatetype}"
EOF
}
SECRET_FILE_LINE="  secret_properties_file: \"$WORK/kafka.secret\""
conf "$WORK/good.yaml" "$WORK/ca.pem" "$WORK/ca.pem" "$WORK/pg.password" "$SECRET_FILE_LINE"
conf "$WORK/env.yaml" "$WORK/ca.pem" "$WORK/ca.pem" "$WORK/pg.password" '    sasl.password: ${OUTBOXD_TEST_SASL_PASSWORD}'
conf "$WORK/pgwrongca.yaml" "$WORK/wrongca.pem" "$WORK/ca.pem" "$WORK/pg.password" "$SECRET_FILE_LINE"
conf "$WORK/kwrongca.yaml" "$WORK/ca.pem" "$WORK/wrongca.pem" "$WORK/pg.password" "$SECRET_FILE_LINE"
conf "$WORK/pgwrongpw.yaml" "$WORK/ca.pem" "$WORK/ca.pem" "$WORK/pg.wrong" "$SECRET_FILE_LINE"
conf "$WORK/kwrongpw.yaml" "$WORK/ca.pem" "$WORK/ca.pem" "$WORK/pg.password" \
    "  secret_properties_file: \"$WORK/kafka.wrong\""
# Plain TLS (no SASL) and SASL over plaintext: the other two listeners.
sed -e "s/:$SASL_SSL_PORT\"/:$SSL_PORT\"/" -e 's/security.protocol: SASL_SSL/security.protocol: SSL/' \
    -e '/sasl\./d' -e '/secret_properties_file/d' "$WORK/good.yaml" >"$WORK/ssl.yaml"
sed -e "s/:$SASL_SSL_PORT\"/:$SASL_PLAIN_PORT\"/" -e 's/security.protocol: SASL_SSL/security.protocol: SASL_PLAINTEXT/' \
    -e '/ssl.ca.location/d' "$WORK/good.yaml" >"$WORK/saslplain.yaml"

OUTPUTS=()
# check_says CONFIG EXIT PATTERN...: outboxd check exits EXIT and prints every PATTERN.
check_says() {
    local cf=$1 want=$2 rc=0 out
    shift 2
    out=$WORK/check-$(basename "$cf" .yaml).out
    OUTBOXD_TEST_SASL_PASSWORD=$KAFKA_SECRET "$OUTBOXD_BIN" check --create -c "$cf" >"$out" 2>&1 || rc=$?
    OUTPUTS+=("$out")
    [ "$rc" -eq "$want" ] || fail "check $(basename "$cf"): exit $rc, expected $want: $(cat "$out")"
    for p in "$@"; do
        grep -qF -- "$p" "$out" || fail "check $(basename "$cf"): no '$p' in: $(cat "$out")"
        log "check $(basename "$cf"): $(grep -F -- "$p" "$out" | head -1 | cut -c1-220)"
    done
}

check_says "$WORK/good.yaml" 0 "kafka: OK (1 broker(s) at 127.0.0.1:$SASL_SSL_PORT)" "source $DB: OK"
check_says "$WORK/env.yaml" 0 "kafka: OK (1 broker(s) at 127.0.0.1:$SASL_SSL_PORT)"
check_says "$WORK/ssl.yaml" 0 "kafka: OK (1 broker(s) at 127.0.0.1:$SSL_PORT)"
check_says "$WORK/saslplain.yaml" 0 "kafka: OK (1 broker(s) at 127.0.0.1:$SASL_PLAIN_PORT)"
check_says "$WORK/pgwrongca.yaml" 1 "certificate verify failed" "check sslrootcert"
check_says "$WORK/kwrongca.yaml" 1 "TLS handshake failed: certificate verify failed; check ssl.ca.location"
check_says "$WORK/pgwrongpw.yaml" 1 'password authentication failed for user "tlsuser"' "check password_file"
check_says "$WORK/kwrongpw.yaml" 1 "SASL authentication failed" "check sasl.username and sasl.password"
# verify-full checks the name: the server's certificate does not name this host.
sed 's/host=127.0.0.1 /host=db.invalid hostaddr=127.0.0.1 /' "$WORK/good.yaml" >"$WORK/pgwronghost.yaml"
check_says "$WORK/pgwronghost.yaml" 1 'does not match host name "db.invalid"' "check host in the dsn"
# Without TLS the role is refused outright (pg_hba hostnossl reject).
sed 's/sslmode=verify-full/sslmode=disable/' "$WORK/good.yaml" >"$WORK/nossl.yaml"
check_says "$WORK/nossl.yaml" 1 'no encryption; the server accepts this user only over TLS; set sslmode=verify-full'

# --- run: events over TLS + SCRAM, at log level debug ---------------------
start_relay "$WORK/good.yaml" relay
relay=$RELAY_PID
OUTPUTS+=("$WORK/relay.log")
# write_and_count KEY ROWS TOTAL WHAT: ROWS more events, drained; Kafka must
# then hold TOTAL events of this run, else fails saying WHAT.
write_and_count() {
    psql_db "$DB" -c "SELECT write_events('$DB', '$DB-$1', $2)" >/dev/null
    wait_drained "$DB" "${DB}_slot" 120
    local n
    n=$(consume_json -T "^$RUN_ID\\.ev\\..*" --timeout-ms 60000 | wc -l)
    [ "$n" -eq "$3" ] || fail "$4: expected $3 events in Kafka, found $n"
}
write_and_count 1 100 100 "through SASL_SSL"
log "100 events published through SASL_SSL (SCRAM-SHA-512) from a verify-full connection"
ssl=$(psql_db "$DB" -c "SELECT count(*) FILTER (WHERE s.ssl), count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'tlsuser'")
[ "${ssl%|*}" = "${ssl#*|}" ] && [ "${ssl#*|}" -ge 2 ] || fail "relay connections not all TLS (encrypted|all: $ssl)"
[ "$(psql_db "$DB" -c "SELECT string_agg(s.ssl::text || ' ' || s.version, ',') FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.usename = 'tlsuser'")" = "true TLSv1.3" ] ||
    fail "the replication connection is not TLS"
log "relay's PostgreSQL connections encrypted (pg_stat_ssl encrypted|all: $ssl)"

scrape "$METRICS_PORT" "$WORK/metrics.samples"
curl -s -m 10 "http://127.0.0.1:$METRICS_PORT/metrics" >"$WORK/metrics.raw" || fail "scrape failed"
OUTPUTS+=("$WORK/metrics.raw" "$WORK/metrics.samples")
grep -q "^outboxd_source_events_published_total{source=\"$DB\"} 100" "$WORK/metrics.samples" ||
    fail "metrics: events_published_total is not 100: $(grep events_published "$WORK/metrics.samples")"
"$OUTBOXD_BIN" status -c "$WORK/good.yaml" >"$WORK/status.out" 2>&1 || fail "status failed: $(cat "$WORK/status.out")"
OUTPUTS+=("$WORK/status.out")
grep -q "${DB}_slot" "$WORK/status.out" || fail "status does not show the slot: $(cat "$WORK/status.out")"

# --- password rotation (README "Reload"): the role's password changes and
# the file gets the new one; the relay's next connection still uses the old
# one (refused, named) until a SIGHUP reads the file again, then streams.
psql_db "$DB" -v pw="$ROTATED_SECRET" >/dev/null <<'SQL'
SET password_encryption = 'scram-sha-256';
ALTER ROLE tlsuser PASSWORD :'pw';
SQL
printf '%s\n' "$ROTATED_SECRET" >"$WORK/pg.password"
psql_db "$DB" -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'tlsuser'" >/dev/null
wait_log "$WORK/relay.log" 'password authentication failed for user "tlsuser".*check password_file' 60
log "rotation: before the reload, the old password is refused: $(grep -m1 -o 'password authentication failed for user "tlsuser".*' "$WORK/relay.log" | cut -c1-160)"
# The heartbeat's own connection was ended above too (its next reconnect
# with the old password is refused, in the same streak of failures).
wait_log "$WORK/relay.log" 'heartbeat: ' 60
hb_again=$(count_lines "$WORK/relay.log" 'heartbeat: writing again')
kill -HUP "$relay"
wait_log "$WORK/relay.log" "reload: configuration [0-9]+ applied" 60
# ... and uses the file's new password from its next connection, as the
# source does (it kept the first configuration's for good before).
wait_more "$WORK/relay.log" 'heartbeat: writing again' "$hb_again" 30 \
    "the heartbeat did not reconnect with the rotated password"
write_and_count 2 50 150 "after the password rotation and reload"
log "rotation: after SIGHUP the relay reconnected with the file's new password; 150 of 150 events in Kafka; the heartbeat writes again"
# A later reload pointing password_file elsewhere: the path needs a restart,
# so the running file is kept, and read again: the connections go on with
# its current (rotated) password, not the one read at start.
cp "$WORK/good.yaml" "$WORK/good.saved"
printf 'not-the-password\n' >"$WORK/other.password"
chmod 600 "$WORK/other.password"
sed -i "s|password_file: \"$WORK/pg.password\"|password_file: \"$WORK/other.password\"|" "$WORK/good.yaml"
grep -q other.password "$WORK/good.yaml" || fail "test setup: good.yaml not edited"
applied=$(count_lines "$WORK/relay.log" 'reload: configuration [0-9]+ applied by every source')
kill -HUP "$relay"
wait_more "$WORK/relay.log" 'reload: configuration [0-9]+ applied by every source' "$applied" 60 \
    "the reload moving password_file was not applied"
grep -q 'reload: sources\[0\].password_file: needs a restart' "$WORK/relay.log" ||
    fail "no 'needs a restart' WARN for the changed password_file: $(grep reload "$WORK/relay.log" | tail -n 3)"
hb_again=$(count_lines "$WORK/relay.log" 'heartbeat: writing again')
psql_db "$DB" -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'tlsuser'" >/dev/null
wait_more "$WORK/relay.log" 'heartbeat: writing again' "$hb_again" 30 \
    "after a reload that moved password_file, the heartbeat did not reconnect (the start's password came back?)"
write_and_count 3 50 200 "after a reload that moved password_file"
cp "$WORK/good.saved" "$WORK/good.yaml"
log "rotation, then password_file moved by a reload (needs a restart): the running file's current password is kept; 200 of 200 events"

stop_relay_ok "$relay"
grep -q "DEBUG" "$WORK/relay.log" || fail "the relay log has no debug lines"

# --- run with a wrong CA: the log names the cause and the key -------------
start_relay "$WORK/kwrongca.yaml" relay-kwrongca
OUTPUTS+=("$WORK/relay-kwrongca.log")
wait_log "$WORK/relay-kwrongca.log" "certificate verify failed; check ssl.ca.location" 60
# librdkafka retries meanwhile, each attempt reported: the ERROR is logged
# once per sink and 30 s (the rest at debug), not once per attempt.
sleep 5 # not a synchronisation: only lets the retries happen
kill -TERM "$RELAY_PID"
wait "$RELAY_PID" 2>/dev/null || true
n_err=$(grep -c 'ERROR .*] kafka: TLS handshake failed' "$WORK/relay-kwrongca.log")
n_dbg=$(grep -c 'DEBUG.*SSL handshake failed' "$WORK/relay-kwrongca.log")
log "run, Kafka wrong CA: $n_err ERROR line(s) \"kafka: TLS handshake failed ...\" for $n_dbg handshake failure(s) at debug"
grep ' ERROR ' "$WORK/relay-kwrongca.log" | cut -c26-200 | sort | uniq -c | sort -rn | head -n 5 >&2
[ "$n_err" -le 4 ] || fail "the TLS failure is logged at ERROR $n_err times within seconds"
grep -q 'init_transactions: .*(last connection error: TLS handshake failed: certificate verify failed; check ssl.ca.location' "$WORK/relay-kwrongca.log" ||
    fail "the init_transactions timeout does not name the TLS failure"
rc=0
"$OUTBOXD_BIN" status -c "$WORK/kwrongca.yaml" >"$WORK/status-kwrongca.out" 2>&1 || rc=$?
OUTPUTS+=("$WORK/status-kwrongca.out")
grep -qF "certificate verify failed; check ssl.ca.location" "$WORK/status-kwrongca.out" && [ $rc -ne 0 ] ||
    fail "status with a wrong Kafka CA (exit $rc): $(cat "$WORK/status-kwrongca.out")"
log "status, Kafka wrong CA: $(grep -F 'check ssl.ca.location' "$WORK/status-kwrongca.out" | head -1 | cut -c1-220)"
log "run, Kafka wrong CA: $(grep -F 'check ssl.ca.location' "$WORK/relay-kwrongca.log" | head -1 | cut -c1-220)"
start_relay "$WORK/kwrongpw.yaml" relay-kwrongpw
OUTPUTS+=("$WORK/relay-kwrongpw.log")
wait_log "$WORK/relay-kwrongpw.log" "SASL authentication failed; check sasl.username and sasl.password" 60
kill -TERM "$RELAY_PID"
wait "$RELAY_PID" 2>/dev/null || true
log "run, Kafka wrong SASL password: $(grep -F 'SASL authentication failed' "$WORK/relay-kwrongpw.log" | head -1 | cut -c1-200)"
start_relay "$WORK/pgwrongca.yaml" relay-pgwrongca
OUTPUTS+=("$WORK/relay-pgwrongca.log")
wait_log "$WORK/relay-pgwrongca.log" "check sslrootcert" 60
kill -TERM "$RELAY_PID"
wait "$RELAY_PID" 2>/dev/null || true
log "run, PostgreSQL wrong CA: $(grep -F 'check sslrootcert' "$WORK/relay-pgwrongca.log" | head -1 | cut -c1-220)"

# --- no secret anywhere ---------------------------------------------------
for f in "${OUTPUTS[@]}"; do
    [ -s "$f" ] || fail "$f is empty: nothing was checked"
    ! grep -qE 'AddressSanitizer|runtime error:' "$f" || fail "sanitizer report in $f"
    for s in "$PG_SECRET" "$KAFKA_SECRET" "$WRONG_SECRET" "$ROTATED_SECRET"; do
        ! grep -qF -- "$s" "$f" || fail "a password appears in $f: $(grep -nF -- "$s" "$f" | head -3)"
    done
done
log "no password in ${#OUTPUTS[@]} outputs ($(cat "${OUTPUTS[@]}" | wc -l) lines: $(printf '%s\n' "${OUTPUTS[@]}" | xargs -n1 basename | tr '\n' ' '))"
drop_source "$DB" "${DB}_slot"
log "PASS"

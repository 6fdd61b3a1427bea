#!/usr/bin/env bash
# ctest: parallel
# `outboxd check` changes nothing unless --create, and names what is wrong
# and how to fix it: a missing outbox
# column, a missing publication (not created when create_publication is
# false), wal_level not logical (on a second server initdb'd here with
# wal_level=replica), a topic template naming a missing column, and Kafka
# down (one line, no raw librdkafka output). A correct setup prints
# "configuration OK". Configuration errors exit 2 for check and run alike: a
# bad file (file:line), kafka.properties librdkafka refuses (alone or in
# combination), mode: cdc. Also the command line: --help, --version. And
# the Kafka topics' configuration (a checkpoint topic not compacted, topics
# too small for the transaction markers).
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

expect_check() { # expect_check CONFIG EXIT_CODE PATTERN...
    local conf=$1 want=$2 rc=0
    shift 2
    "$OUTBOXD_BIN" check -c "$conf" >"$WORK/check.out" 2>&1 || rc=$?
    cat "$WORK/check.out" >&2
    [ "$rc" -eq "$want" ] || fail "check exited $rc, expected $want"
    for pat in "$@"; do
        grep -q -- "$pat" "$WORK/check.out" || fail "check output lacks: $pat"
    done
}

# 1. A correct database. check changes nothing (DESIGN.md section 5; a slot
#    that no relay reads would keep WAL for ever): the publication and slot
#    it would create are notes, not problems. check --create makes them, as
#    run does at its start; --create belongs to check alone.
DB=cgood_$RUN_ID
create_outbox_db "$DB"
write_config "$WORK/good.yaml" "$DB"
slots() { psql_db "$DB" -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${DB}_${RUN_ID}'"; }
pubs() { psql_db "$DB" -c "SELECT count(*) FROM pg_publication WHERE pubname = 'outboxd_pub'"; }
expect_check "$WORK/good.yaml" 0 "configuration OK" "source $DB: OK once the notes above are done" "kafka: OK" \
    "source $DB: publication 'outboxd_pub' does not exist yet; outboxd run creates it at its start (create_publication: true), or outboxd check --create now, with: CREATE PUBLICATION" \
    "source $DB: replication slot '${DB}_${RUN_ID}' does not exist yet; outboxd run creates it at its start (create_slot: true), or outboxd check --create now"
[ "$(slots) $(pubs)" = "0 0" ] || fail "check without --create changed the database: slots and publications $(slots) $(pubs)"
grep -q "created replication slot\|created publication" "$WORK/check.out" && fail "check without --create says it created something"
rc=0
"$OUTBOXD_BIN" check --create -c "$WORK/good.yaml" >"$WORK/check-create.out" 2>&1 || rc=$?
[ $rc = 0 ] || fail "check --create exited $rc: $(cat "$WORK/check-create.out")"
grep -q "created publication outboxd_pub" "$WORK/check-create.out" && grep -q "created replication slot ${DB}_${RUN_ID} (pgoutput)" "$WORK/check-create.out" ||
    fail "check --create did not say what it created: $(cat "$WORK/check-create.out")"
[ "$(slots) $(pubs)" = "1 1" ] || fail "check --create did not create the publication and slot: $(slots) $(pubs)"
expect_check "$WORK/good.yaml" 0 "configuration OK" "source $DB: OK (slot ${DB}_${RUN_ID}, publication outboxd_pub)"
grep -q "does not exist yet; outboxd run" "$WORK/check.out" && fail "check still notes a missing slot or publication after --create"
rc=0
"$OUTBOXD_BIN" run --create -c "$WORK/good.yaml" >"$WORK/run-create.out" 2>&1 || rc=$?
[ $rc = 2 ] && grep -q -- "--create belongs to the check command" "$WORK/run-create.out" ||
    fail "run --create: exit $rc: $(cat "$WORK/run-create.out")"

# 1b. A slot made by hand before the publication: run would create the
#     publication younger than the slot and refuse to start, so plain check
#     must not say OK; check --create names the slot advance that skips the
#     changes in between.
DB1B=cslot_$RUN_ID
create_outbox_db "$DB1B"
write_config "$WORK/slotfirst.yaml" "$DB1B"
psql_db "$DB1B" -c "SELECT pg_create_logical_replication_slot('${DB1B}_${RUN_ID}', 'pgoutput')" >/dev/null
expect_check "$WORK/slotfirst.yaml" 1 \
    "source $DB1B: replication slot '${DB1B}_${RUN_ID}' exists but publication 'outboxd_pub' does not: created now (by outboxd run or check --create) it would be younger than the slot" \
    "problem(s) found"
[ "$(psql_db "$DB1B" -c "SELECT count(*) FROM pg_publication WHERE pubname = 'outboxd_pub'")" = 0 ] ||
    fail "check without --create created the publication"
# A row written now, before the publication exists: check --create makes
# the publication and names the advance, and what it costs (the row is not
# relayed: pgoutput either fails on it or, on newer minor releases, skips
# it for want of the publication).
psql_db "$DB1B" -c "SELECT write_events('early', 'e-1', 1)" >/dev/null
rc=0
"$OUTBOXD_BIN" check --create -c "$WORK/slotfirst.yaml" >"$WORK/slotfirst.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && grep -q "is older than publication 'outboxd_pub', which was just created.*pg_replication_slot_advance.*rows written to the tables in that stretch are then not relayed" "$WORK/slotfirst.out" ||
    fail "check --create over an older slot (exit $rc): $(cat "$WORK/slotfirst.out")"
drop_source "$DB1B" "${DB1B}_${RUN_ID}"

# 1c. A role with REPLICATION that may not create the publication (it owns
#     no table): check creates nothing, but tries the publication's DDL in a
#     transaction it rolls back, so the refusal is a problem, not a note
#     followed by a relay that cannot start.
DB1C=cown_$RUN_ID
ROLE1C=cown_$RUN_ID
create_outbox_db "$DB1C"
psql_db "$DB1C" -c "CREATE ROLE $ROLE1C LOGIN REPLICATION" -c "GRANT SELECT ON outbox TO $ROLE1C" -c "GRANT CREATE ON DATABASE $DB1C TO $ROLE1C" >/dev/null
write_config "$WORK/notowner.yaml" "$DB1C"
sed -i "s/ user=$PGUSER\"/ user=$ROLE1C\"/" "$WORK/notowner.yaml"
grep -q "user=$ROLE1C" "$WORK/notowner.yaml" || fail "test setup: dsn user not replaced"
expect_check "$WORK/notowner.yaml" 1 \
    "source $DB1C: publication 'outboxd_pub' does not exist, and creating it would fail (tried in a transaction rolled back): must be owner of table outbox" \
    "problem(s) found"
[ "$(psql_db "$DB1C" -c "SELECT count(*) FROM pg_publication WHERE pubname = 'outboxd_pub'")" = 0 ] ||
    fail "check without --create left a publication behind"
psql_db "$DB1C" -c "DROP OWNED BY $ROLE1C" -c "DROP ROLE $ROLE1C" >/dev/null

# 1d. Publications and roles.
cdc_config() { # cdc_config FILE DB [SCOPE]: a cdc table (public.items) beside the outbox
    {
        config_header
        cat <<EOF2
  - name: $2
    dsn: "host=$PGHOST port=$PGPORT dbname=$2 user=$PGUSER"
    slot: "${2}_${RUN_ID}"
    publication: "outboxd_pub"
    publication_scope: ${3:-tables}
    tables:
      - table: public.outbox
        topic: "$RUN_ID.ev.\${aggregatetype}"
      - table: public.items
        mode: cdc
        topic: "$RUN_ID.items"
        format: json
        json_schemas: false
        snapshot: never
EOF2
    } >"$1"
}
# An existing publication that publishes no deletes: a cdc table's deletes
# would never arrive.
DB1D=cops_$RUN_ID
create_outbox_db "$DB1D"
psql_db "$DB1D" -c "CREATE TABLE items (id int PRIMARY KEY, v text)" >/dev/null
psql_db "$DB1D" -c "CREATE PUBLICATION outboxd_pub FOR TABLE outbox, items WITH (publish = 'insert, update')" >/dev/null
cdc_config "$WORK/ops.yaml" "$DB1D"
expect_check "$WORK/ops.yaml" 1 \
    "source $DB1D: publication 'outboxd_pub' does not publish deletes (cdc); run: ALTER PUBLICATION \"outboxd_pub\" SET (publish = 'insert, update, delete')"
# publication_scope: all with a cdc table publishes updates and deletes of
# every table: one without a replica identity would then refuse UPDATE and
# DELETE, so the publication is not created; without cdc tables it
# publishes inserts only (test_recreated_table updates such a table).
DB1E=cscope_$RUN_ID
create_outbox_db "$DB1E"
psql_db "$DB1E" -c "CREATE TABLE items (id int PRIMARY KEY, v text)" -c "CREATE TABLE nokey (v int)" >/dev/null
cdc_config "$WORK/scope.yaml" "$DB1E" all
expect_check "$WORK/scope.yaml" 1 \
    "source $DB1E: publication 'outboxd_pub' (publication_scope: all) would publish updates and deletes of every table in its scope, as cdc tables need, and PostgreSQL then refuses UPDATE and DELETE on each of them without a replica identity: public.nokey; give each a primary key"
rc=0
"$OUTBOXD_BIN" check --create -c "$WORK/scope.yaml" >"$WORK/scope-create.out" 2>&1 || rc=$?
[ "$rc" = 1 ] && [ "$(psql_db "$DB1E" -c "SELECT count(*) FROM pg_publication WHERE pubname = 'outboxd_pub'")" = 0 ] ||
    fail "check --create made the publication over a table without a replica identity (exit $rc): $(cat "$WORK/scope-create.out")"
psql_db "$DB1E" -c "ALTER TABLE nokey REPLICA IDENTITY FULL" >/dev/null
"$OUTBOXD_BIN" check --create -c "$WORK/scope.yaml" >"$WORK/scope-create.out" 2>&1 ||
    fail "check --create with every table keyed: $(cat "$WORK/scope-create.out")"
grep -q "FOR ALL TABLES WITH (publish = 'insert, update, delete')" "$WORK/scope-create.out" ||
    fail "the FOR ALL TABLES publication does not name its publish list: $(cat "$WORK/scope-create.out")"
# A row filter the configuration does not name (a reused publication's):
# the rows it leaves out would never be relayed (PostgreSQL 15+). A problem
# for a cdc table (row_filter would name it); a note for an outbox table
# (which takes no row_filter: the filter may be deliberate).
if [ "$(psql_db postgres -c "SHOW server_version_num")" -ge 150000 ]; then
    DB1F=cfilt_$RUN_ID
    create_outbox_db "$DB1F"
    psql_db "$DB1F" -c "CREATE TABLE items (id int PRIMARY KEY, v text)" \
        -c "CREATE PUBLICATION outboxd_pub FOR TABLE outbox WHERE (aggregatetype <> 'draft'), items WHERE (v <> 'x')" >/dev/null
    cdc_config "$WORK/filter.yaml" "$DB1F"
    expect_check "$WORK/filter.yaml" 1 \
        "source $DB1F: publication 'outboxd_pub' publishes only the rows of public.items that match WHERE (v <> 'x'::text), but no row_filter is configured" \
        "source $DB1F: publication 'outboxd_pub' publishes only the rows of outbox table public.outbox that match WHERE (aggregatetype <> 'draft'::text): the others are never relayed"
    grep -q "publishes only the rows of outbox table.*problem" "$WORK/check.out" && fail "the outbox table's filter counted as a problem"
    psql_db "$DB1F" -c "ALTER PUBLICATION outboxd_pub DROP TABLE items" >/dev/null
    write_config "$WORK/filter2.yaml" "$DB1F"
    expect_check "$WORK/filter2.yaml" 0 "publishes only the rows of outbox table public.outbox"
fi
# Amazon RDS grants replication by membership in rds_replication (the
# role's REPLICATION attribute stays false there): not a problem.
ROLE1G=crds_$RUN_ID
psql_db postgres -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') THEN CREATE ROLE rds_replication NOLOGIN; END IF; END \$\$" >/dev/null
psql_db "$DB" -c "CREATE ROLE $ROLE1G LOGIN IN ROLE rds_replication" >/dev/null
sed "s/ user=$PGUSER\"/ user=$ROLE1G\"/" "$WORK/good.yaml" >"$WORK/rds.yaml"
"$OUTBOXD_BIN" check -c "$WORK/rds.yaml" >"$WORK/rds.out" 2>&1 || true
grep -q "source $DB: " "$WORK/rds.out" || fail "test setup: no report for $DB: $(cat "$WORK/rds.out")"
grep -q "may not use replication" "$WORK/rds.out" &&
    fail "a member of rds_replication was refused: $(cat "$WORK/rds.out")"
psql_db "$DB" -c "REVOKE rds_replication FROM $ROLE1G" >/dev/null
"$OUTBOXD_BIN" check -c "$WORK/rds.yaml" >"$WORK/rds.out" 2>&1 || true
grep -q "role '$ROLE1G' may not use replication" "$WORK/rds.out" ||
    fail "a role without replication was not refused: $(cat "$WORK/rds.out")"
psql_db "$DB" -c "DROP ROLE $ROLE1G" -c "DROP ROLE IF EXISTS rds_replication" >/dev/null
log "publications and roles: as expected"

# 2. A missing outbox column.
DB2=ccol_$RUN_ID
create_outbox_db "$DB2"
psql_db "$DB2" -c "ALTER TABLE outbox DROP COLUMN aggregateid"
write_config "$WORK/col.yaml" "$DB2"
expect_check "$WORK/col.yaml" 1 "has no column 'aggregateid'" "problem(s) found"

# 2b. A bytea payload: a problem with a plain outbox table and with a
# Debezium drop-in table through StringConverter (Debezium writes a
# ByteBuffer's toString()), fine through BinaryDataConverter.
DB2B=cbin_$RUN_ID
create_outbox_db "$DB2B"
psql_db "$DB2B" -c "ALTER TABLE outbox ALTER COLUMN payload TYPE bytea USING convert_to(payload::text, 'UTF8')"
bin_config() { # bin_config FILE VALUE_CONVERTER
    {
        config_header
        cat <<EOF
  - name: $DB2B
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB2B user=$PGUSER"
    slot: "${DB2B}_$RUN_ID"
    tables:
      - table: public.outbox
        debezium:
          value.converter: $2
EOF
    } >"$1"
}
write_config "$WORK/bin_plain.yaml" "$DB2B"
expect_check "$WORK/bin_plain.yaml" 1 "is bytea, but the payload must be jsonb, json, text or varchar" "problem(s) found"
bin_config "$WORK/bin_str.yaml" org.apache.kafka.connect.storage.StringConverter
expect_check "$WORK/bin_str.yaml" 1 "is bytea, and through value.converter StringConverter Debezium writes a ByteBuffer's toString()" "problem(s) found"
bin_config "$WORK/bin_raw.yaml" io.debezium.converters.BinaryDataConverter
"$OUTBOXD_BIN" check -c "$WORK/bin_raw.yaml" >"$WORK/check.out" 2>&1 || true
cat "$WORK/check.out" >&2
grep -q "bytea" "$WORK/check.out" && fail "check reports a bytea payload through BinaryDataConverter"

# 3. A missing publication that we may not create.
DB3=cpub_$RUN_ID
create_outbox_db "$DB3"
write_config "$WORK/pub.yaml" "$DB3"
sed -i 's/^    publication: .*/    publication: "not_there"\n    create_publication: false/' "$WORK/pub.yaml"
expect_check "$WORK/pub.yaml" 1 "publication 'not_there' does not exist" "CREATE PUBLICATION"

# 4. wal_level = replica on a second, throwaway server.
PORT2=$(free_port)
PG2="$WORK/pg2"
chmod 755 "$WORK"
mkdir -p "$PG2" && chown postgres "$PG2" 2>/dev/null || true
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }
as_pg initdb -D "$PG2/data" -U postgres --auth=trust --no-sync >"$WORK/initdb2.log" 2>&1 || fail "initdb: $(tail -3 "$WORK/initdb2.log")"
extra_cleanup() { as_pg pg_ctl -D "$PG2/data" -m immediate stop >/dev/null 2>&1; }
as_pg pg_ctl -D "$PG2/data" -l "$PG2/log" -w -o "-c wal_level=replica -c port=$PORT2 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG2" start >/dev/null ||
    fail "second server did not start"
psql -X -q -h 127.0.0.1 -p "$PORT2" -U postgres -d postgres -c "CREATE TABLE outbox (id uuid, aggregatetype text, aggregateid text, type text, payload jsonb)"
cat >"$WORK/wal.yaml" <<EOF2
kafka: { bootstrap_servers: "$KAFKA_BOOTSTRAP" }
sources:
  - name: walcheck
    dsn: "host=127.0.0.1 port=$PORT2 dbname=postgres user=postgres"
    tables: [ { table: public.outbox } ]
EOF2
expect_check "$WORK/wal.yaml" 1 "wal_level is 'replica' but must be 'logical'" "restart PostgreSQL"

# 5. Command line.
"$OUTBOXD_BIN" --help | grep -q "outboxd check -c FILE" || fail "--help"
"$OUTBOXD_BIN" --version | grep -q "^outboxd " || fail "--version"
printf 'kafka:\n  bootstrap_servers: x\nsources:\n  - name: a\n    dsn: "dbname=a"\n    tables: [ { table: public.outbox, mode: bogus } ]\n' >"$WORK/bad.yaml"
rc=0
"$OUTBOXD_BIN" run -c "$WORK/bad.yaml" 2>"$WORK/bad.err" || rc=$?
cat "$WORK/bad.err" >&2
[ $rc -eq 2 ] || fail "bad config exited $rc, expected 2"
grep -q "bad.yaml:6: sources\[0\].tables\[0\].mode" "$WORK/bad.err" || fail "bad config error lacks file:line: key"
rc=0
"$OUTBOXD_BIN" -c "$WORK/nonexistent.yaml" 2>"$WORK/none.err" || rc=$?
[ $rc -eq 2 ] && grep -q "nonexistent.yaml" "$WORK/none.err" || fail "missing file not reported"

# 6. A topic template naming a column the table lacks: every row would be
#    dead-lettered, so check says so (before: "configuration OK").
DB6=ctpl_$RUN_ID
create_outbox_db "$DB6"
write_config "$WORK/tpl.yaml" "$DB6"
sed -i 's/^        topic: "\(.*\)\.ev\.\${aggregatetype}"$/        topic: "\1.ev.${tenant}"/' "$WORK/tpl.yaml"
grep -q 'ev.${tenant}' "$WORK/tpl.yaml" || fail "test setup: template not replaced"
expect_check "$WORK/tpl.yaml" 1 "has no column 'tenant', which the topic template" "problem(s) found"

# 7. kafka.properties librdkafka refuses: a configuration error (exit 2) for
#    check and run alike, with file:line; before, check ignored them and run
#    exited 1 from the source thread.
bad_props() { # bad_props FILE PROPERTIES_YAML
    cat >"$1" <<EOF2
kafka:
  bootstrap_servers: "$KAFKA_BOOTSTRAP"
  properties:
$2
sources:
  - name: props
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "${DB}_${RUN_ID}"
    publication: "outboxd_pub"
    tables: [ { table: public.outbox } ]
EOF2
}
expect_run() { # expect_run CONFIG EXIT_CODE PATTERN...
    local conf=$1 want=$2 rc=0
    shift 2
    timeout 60 "$OUTBOXD_BIN" run -c "$conf" >"$WORK/run.out" 2>&1 || rc=$?
    cat "$WORK/run.out" >&2
    [ "$rc" -eq "$want" ] || fail "run exited $rc, expected $want"
    for pat in "$@"; do
        grep -q -- "$pat" "$WORK/run.out" || fail "run output lacks: $pat"
    done
}
bad_props "$WORK/unknown.yaml" '    compression.type: lz4
    no.such.property: "1"'
expect_check "$WORK/unknown.yaml" 2 "unknown.yaml:5: kafka.properties.no.such.property: No such configuration property"
expect_run "$WORK/unknown.yaml" 2 "unknown.yaml:5: kafka.properties.no.such.property"
bad_props "$WORK/badval.yaml" '    linger.ms: "soon"'
expect_check "$WORK/badval.yaml" 2 "badval.yaml:4: kafka.properties.linger.ms: Invalid value"
# Valid one by one, refused together with the transactions the sink needs.
bad_props "$WORK/acks.yaml" '    acks: "1"'
expect_check "$WORK/acks.yaml" 2 "acks.yaml: kafka.properties: .*acks.* must be set to .all."
expect_run "$WORK/acks.yaml" 2 "acks.yaml: kafka.properties"

# 8. A cdc table's snapshot mode is one of initial, never, when_needed.
bad_props "$WORK/cdc.yaml" '    compression.type: lz4'
sed -i 's/tables: \[ { table: public.outbox } \]/tables: [ { table: public.outbox, mode: cdc, topic: cdc.t, snapshot: sometimes } ]/' "$WORK/cdc.yaml"
expect_check "$WORK/cdc.yaml" 2 "cdc.yaml:10: sources\[0\].tables\[0\].snapshot: unknown snapshot 'sometimes'"
expect_run "$WORK/cdc.yaml" 2 "unknown snapshot 'sometimes'"

# 9. Kafka down: one clear line, none of librdkafka's raw log lines.
cat >"$WORK/nokafka.yaml" <<EOF2
kafka: { bootstrap_servers: "127.0.0.1:$(free_port)" }
sources:
  - name: nokafka
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB user=$PGUSER"
    slot: "${DB}_${RUN_ID}"
    publication: "outboxd_pub"
    tables: [ { table: public.outbox } ]
EOF2
expect_check "$WORK/nokafka.yaml" 1 "kafka: cannot reach 127.0.0.1:[0-9]* within 10 s: .*; is the broker running?" "1 problem(s) found"
grep -q '^%[0-9]|\|rdkafka#\|\[kafka\]' "$WORK/check.out" && fail "check printed librdkafka's log lines"

# 10. The topics as the broker holds them (kafkacheck.c): a checkpoint topic
#     that is not compacted, a dead-letter topic that cannot take the
#     transaction markers (both problems, each with the kafka-configs.sh
#     command that fixes it), a fixed event topic smaller than
#     max_event_bytes (a note). Absent checkpoint and dead-letter topics
#     are fine (the relay creates them), as is an absent event topic on a
#     broker that creates topics (this one; test_missing_topic.sh has the
#     other kind). The relay warns of the checkpoint topic at its start.
#     Fixed topics of cdc tables and messages are checked alike.
"$STACK_SH" topic-create "$RUN_ID.ckdel" 1 cleanup.policy=delete >&2
"$STACK_SH" topic-create "$RUN_ID.dlttiny" 1 max.message.bytes=90 >&2
"$STACK_SH" topic-create "$RUN_ID.small" 1 max.message.bytes=5000 >&2
write_config "$WORK/topics.yaml" "$DB"
sed -i -e "s/^  checkpoint_topic: .*/  checkpoint_topic: \"$RUN_ID.ckdel\"/" \
    -e "s/^  dead_letter_topic: .*/  dead_letter_topic: \"$RUN_ID.dlttiny\"/" \
    -e "s/^        topic: .*/        topic: \"$RUN_ID.small\"/" "$WORK/topics.yaml"
grep -q "topic: \"$RUN_ID.small\"" "$WORK/topics.yaml" || fail "test setup: topics not replaced"
expect_check "$WORK/topics.yaml" 1 \
    "kafka: topic $RUN_ID.ckdel (checkpoint) has cleanup.policy=delete, but it must be compacted" \
    "alter --entity-type topics --entity-name $RUN_ID.ckdel --add-config cleanup.policy=compact" \
    "kafka: topic $RUN_ID.dlttiny (dead-letter) has max.message.bytes=90: below 100 bytes the broker may not write the marker" \
    "kafka: topic $RUN_ID.small (events, written by source $DB, table public.outbox): max.message.bytes=5000 is below relay.max_event_bytes (1000000)" \
    "^2 problem(s) found"
# The relay says it too, once, at its start (for those who never run
# check), and starts anyway.
start_relay "$WORK/topics.yaml" topics-relay
wait_streaming "$WORK/topics-relay.log" 1 120
wait_log "$WORK/topics-relay.log" "WARN .*kafka: topic $RUN_ID.ckdel \(checkpoint\) has cleanup.policy=delete, but it must be compacted" 30
stop_relay_ok "$RELAY_PID"
[ "$(grep -c "has cleanup.policy=delete" "$WORK/topics-relay.log")" -eq 1 ] || fail "the relay did not warn exactly once"
write_config "$WORK/topics2.yaml" "$DB"
sed -i -e "s/^  checkpoint_topic: .*/  checkpoint_topic: \"$RUN_ID.cknew\"/" \
    -e "s/^        topic: .*/        topic: \"$RUN_ID.absent\"/" "$WORK/topics2.yaml"
expect_check "$WORK/topics2.yaml" 0 \
    "kafka: topic $RUN_ID.cknew (checkpoint): does not exist yet; the relay creates it, compacted" \
    "kafka: topic $RUN_ID.absent (events, written by source $DB, table public.outbox): does not exist yet; created at its first event (the broker's auto.create.topics.enable=true)" \
    "configuration OK"
# A compacted checkpoint topic too small for a checkpoint record, and a
# client that may not have topics created (allow.auto.create.topics=false):
# an absent fixed topic is then a problem on this broker too.
"$STACK_SH" topic-create "$RUN_ID.cksmall" 1 cleanup.policy=compact max.message.bytes=500 >&2
write_config "$WORK/topics3.yaml" "$DB"
sed -i -e "s/^  checkpoint_topic: .*/  checkpoint_topic: \"$RUN_ID.cksmall\"/" \
    -e "s/^  transactional_id_prefix: \(.*\)$/  transactional_id_prefix: \1\n  properties: { allow.auto.create.topics: \"false\" }/" \
    -e "s/^        topic: .*/        topic: \"$RUN_ID.absent\"/" "$WORK/topics3.yaml"
grep -q 'allow.auto.create.topics: "false"' "$WORK/topics3.yaml" || fail "test setup: properties not added"
expect_check "$WORK/topics3.yaml" 1 \
    "kafka: topic $RUN_ID.cksmall (checkpoint) has max.message.bytes=500: a checkpoint record takes a few hundred bytes" \
    "kafka: topic $RUN_ID.absent (events, written by source $DB, table public.outbox) does not exist: with relay.missing_topic: wait" \
    "^2 problem(s) found"
# check created none of them.
"$STACK_SH" topics --list | grep -qx "$RUN_ID.cknew\|$RUN_ID.absent" && fail "check created a topic"
# The fixed topics of a cdc table (its default, <source>.<schema>.<table>)
# and of logical decoding messages are looked at too.
DB7=ccdc_$RUN_ID
create_outbox_db "$DB7"
"$STACK_SH" topic-create "$DB7.public.seqs" 1 max.message.bytes=90 >&2
"$STACK_SH" topic-create "$RUN_ID.msgsmall" 1 max.message.bytes=5000 >&2
{
    config_header
    cat <<EOF2
  - name: $DB7
    dsn: "host=$PGHOST port=$PGPORT dbname=$DB7 user=$PGUSER"
    slot: "${DB7}_${RUN_ID}"
    publication: "cdcpub"
    tables:
      - table: public.outbox
      - table: public.seqs
        mode: cdc
        snapshot: never
        format: json
EOF2
    # pgoutput passes logical decoding messages from PostgreSQL 14 on.
    [ "${PG_SERVER_VERSION:-15}" -lt 14 ] || cat <<EOF2
    messages:
      - prefix: outbox
        topic: "$RUN_ID.msgsmall"
EOF2
} >"$WORK/topics4.yaml"
pats=("kafka: topic $DB7.public.seqs (events, written by source $DB7, cdc table public.seqs) has max.message.bytes=90: below 100 bytes the broker may not write the marker"
    "^1 problem(s) found")
[ "${PG_SERVER_VERSION:-15}" -lt 14 ] ||
    pats+=("kafka: topic $RUN_ID.msgsmall (events, written by source $DB7, messages with prefix 'outbox'): max.message.bytes=5000 is below relay.max_event_bytes")
expect_check "$WORK/topics4.yaml" 1 "${pats[@]}"

for db in "$DB" "$DB2" "$DB3" "$DB6" "$DB7"; do drop_source "$db" "${db}_${RUN_ID}"; done
log "PASS"

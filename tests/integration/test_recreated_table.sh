#!/usr/bin/env bash
# ctest: parallel
# A renamed or re-created outbox table must never lose rows silently. While
# the relay runs, as a migration tool would:
#   ALTER TABLE outbox RENAME TO outbox_old; INSERT INTO outbox_old ...;
#   CREATE TABLE outbox (...); INSERT INTO outbox ...
# With publication_scope: tables (default) the relay reports the rename as an
# ERROR, finds the new table missing from the publication within the status
# interval, adds it (create_publication) and says which rows were not relayed;
# rows written after that are published. With publication_scope: all (and
# schema, on PostgreSQL 15+) the new table is covered from its creation, so
# its first row is published too.
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"

DBT=prt_$RUN_ID  # publication_scope: tables
DBA=pra_$RUN_ID  # publication_scope: all
DBS=prs_$RUN_ID  # publication_scope: schema (PostgreSQL 15+)
create_outbox_db "$DBT"
create_outbox_db "$DBA"
WIDE=("$DBA")
if [ "$(psql_db postgres -c "SHOW server_version_num")" -ge 150000 ]; then
    create_outbox_db "$DBS"
    WIDE+=("$DBS")
fi
# An application table without a primary key in the wide publications'
# scope: they publish inserts only (an outbox needs no more), so PostgreSQL
# keeps taking UPDATE and DELETE on it.
for db in "${WIDE[@]}"; do
    psql_db "$db" -c "CREATE TABLE nokey (v int)" -c "INSERT INTO nokey VALUES (1), (2)" >/dev/null
done
write_config "$WORK/outboxd.yaml" "$DBT" "${WIDE[@]}"
# status_interval_ms bounds how soon a missing table is found.
sed -i '/^relay:/a\  status_interval_ms: 2000' "$WORK/outboxd.yaml"
# publication_scope for the second source only (its entry follows its dsn line).
sed -i "/dbname=$DBA /a\    publication_scope: all" "$WORK/outboxd.yaml"
sed -i "/dbname=$DBS /a\    publication_scope: schema" "$WORK/outboxd.yaml"
prepare_sources "$WORK/outboxd.yaml"
grep -q "FOR ALL TABLES" "$WORK/check.log" || {
    cat "$WORK/check.log" >&2
    fail "check did not create a FOR ALL TABLES publication for publication_scope: all"
}
if [ ${#WIDE[@]} -gt 1 ] && ! grep -q 'FOR TABLES IN SCHEMA "public" WITH (publish = '"'insert'"')' "$WORK/check.log"; then
    cat "$WORK/check.log" >&2
    fail "check did not create a FOR TABLES IN SCHEMA publication (inserts only) for publication_scope: schema"
fi
for db in "${WIDE[@]}"; do
    psql_db "$db" -c "UPDATE nokey SET v = v + 10" -c "DELETE FROM nokey WHERE v = 11" >"$WORK/nokey.out" 2>&1 ||
        fail "$db: UPDATE/DELETE on a table without a replica identity refused under the wide publication: $(cat "$WORK/nokey.out")"
done
log "the wide publications publish inserts only: UPDATE and DELETE on a table without a key still work"

insert() { # insert DB TABLE KEY SEQ
    psql_db "$1" -c "INSERT INTO $2 (aggregatetype, aggregateid, type, payload) VALUES ('rt', '$3', 'Tested', jsonb_build_object('seq', $4))" >/dev/null
}

start_relay "$WORK/outboxd.yaml"
relay=$RELAY_PID
for db in "$DBT" "${WIDE[@]}"; do
    for i in 1 2 3; do insert "$db" outbox before "$i"; done
    wait_drained "$db" "${db}_${RUN_ID}" 300
done

log "rename the outbox away, write to it, create a new outbox, write to that"
for db in "$DBT" "${WIDE[@]}"; do
    psql_db "$db" <<'SQL'
ALTER TABLE outbox RENAME TO outbox_old;
INSERT INTO outbox_old (aggregatetype, aggregateid, type, payload) VALUES ('rt', 'old', 'Tested', '{"seq": 1}');
CREATE TABLE outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,
    aggregateid text,
    type text NOT NULL,
    payload jsonb,
    "timestamp" timestamptz NOT NULL DEFAULT now()
);
INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('rt', 'new', 'Tested', '{"seq": 1}');
SQL
done

# The rename is reported when the renamed table's next change is decoded; the
# new table is found missing from the (tables) publication by the catalog check.
for _ in $(seq 1 600); do
    grep -q "was renamed to public.outbox_old" "$WORK/relay.log" &&
        grep -q "has been added now" "$WORK/relay.log" && break
    sleep 0.1
done
grep -q "ERROR.*\[$DBT\] published table public.outbox (oid [0-9]*) was renamed to public.outbox_old" "$WORK/relay.log" ||
    fail "the rename was not reported as an ERROR"
grep -q "ERROR.*\[$DBT\] source $DBT: table public.outbox (oid [0-9]*) was not in publication 'outboxd_pub'.*has been added now" "$WORK/relay.log" ||
    fail "the re-created table missing from the publication was not found and reported"
for db in "${WIDE[@]}"; do
    grep -q "ERROR.*\[$db\] published table public.outbox (oid [0-9]*) was renamed" "$WORK/relay.log" ||
        fail "the rename was not reported for source $db"
    if grep -q "\[$db\] source $db: table public.outbox .*was not in publication" "$WORK/relay.log"; then
        fail "the publication of source $db covers the new table, yet it was reported missing"
    fi
done

log "rows written to the new table from now on are published"
for db in "$DBT" "${WIDE[@]}"; do
    for i in 2 3 4; do insert "$db" outbox new "$i"; done
    wait_drained "$db" "${db}_${RUN_ID}" 300
done

# Expected: the rows before the rename, and the new table's rows; its first row
# (written before the catalog check added it) only with publication_scope: all.
# The row written to outbox_old is not relayed under either scope (reported).
: >"$WORK/expected.tsv"
psql_db "$DBT" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.rt', '-' FROM outbox_old WHERE aggregateid = 'before' UNION ALL SELECT id, aggregateid, '$RUN_ID.ev.rt', '-' FROM outbox WHERE (payload->>'seq')::int > 1" >>"$WORK/expected.tsv"
for db in "${WIDE[@]}"; do
    psql_db "$db" -F $'\t' -c "SELECT id, aggregateid, '$RUN_ID.ev.rt', '-' FROM outbox_old WHERE aggregateid = 'before' UNION ALL SELECT id, aggregateid, '$RUN_ID.ev.rt', '-' FROM outbox" >>"$WORK/expected.tsv"
done
log "rows expected: $(wc -l <"$WORK/expected.tsv")"
check_exactly_once "$WORK/expected.tsv" || fail "exactly-once check failed"
stop_relay_ok "$relay"
grep -E "renamed|added now" "$WORK/relay.log" | sed 's/^.*\] //' | cut -c1-200 >&2
drop_source "$DBT" "${DBT}_${RUN_ID}"
for db in "${WIDE[@]}"; do drop_source "$db" "${db}_${RUN_ID}"; done
log "PASS"

/*
 * PostgreSQL side of a source: connecting, and checking (and where configured,
 * creating) what replication needs: wal_level=logical, the publication with
 * the configured tables, the replication slot with the pgoutput plugin, and
 * the outbox columns. Used by `outboxd check` and by each source at startup.
 */
#ifndef OUTBOXD_PGSETUP_H
#define OUTBOXD_PGSETUP_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "outboxd/relay/config.h"
#include "outboxd/common/util.h"

/*
 * Checks a source on a normal connection. With create=true a missing
 * publication (if src->create_publication) and slot (if src->create_slot)
 * are created. With create=false (outboxd check without --create) nothing
 * is created: what run would create is a note, not a problem, once the
 * publication's DDL has succeeded in a transaction that is rolled back.
 * Each problem is appended to report as one line: what is wrong and how to
 * fix it, e.g.
 *
 *   source payment: wal_level is 'replica'; set wal_level = logical in
 *   postgresql.conf and restart
 *
 * Returns the number of problems (0 = ready), or -1 if it could not connect
 * (the reason is appended to report). *created_slot (may be NULL) tells
 * whether this call created the replication slot.
 */
int outboxd_pgsetup_check(const outboxd_source_conf_t *src, bool create, outboxd_buf_t *report,
                          bool *created_slot);

/* The domain types of the outbox tables' columns and their base types (one
 * level), found by the checks below when asked for (domains not NULL:
 * added to what it holds; a domain's base type never changes, so entries
 * stay right, and a check that failed half-way loses none): see
 * outboxd_router_set_domains. */
typedef struct outboxd_pg_domains {
    uint32_t *oid, *base;
    size_t n;
} outboxd_pg_domains_t;
void outboxd_pg_domains_free(outboxd_pg_domains_t *d);

/* outboxd_pgsetup_check with create, for a source's own loop (after a
 * refused replication connection, for tables a reload added): every query
 * bounded as the catalog watch's are (outboxd_pgsetup_loop_bound of
 * timeout_ms, statement_timeout half of it, abandoned when *stop is set),
 * and the retention slot's problems are warnings, as in the relay's check
 * at connect. */
int outboxd_pgsetup_check_in_loop(const outboxd_source_conf_t *src, int timeout_ms,
                                  atomic_int *stop, outboxd_buf_t *report, bool *created_slot,
                                  outboxd_pg_domains_t *domains);

/*
 * The same checks on a source's open replication connection (replication=
 * database, in command mode), so a starting source opens one connection, not
 * two: SQL runs there by the simple protocol, the parameters inlined as
 * quoted literals. Returns the number of problems (0 = ready). *conn_lost
 * tells that the connection failed on the way: close it and try again.
 * A row_filter goes into the publication's DDL as it is (config.c allows no
 * ';' outside quotes in it, so it stays one statement).
 */
int outboxd_pgsetup_check_repl(const outboxd_source_conf_t *src, PGconn *conn, bool create,
                               outboxd_buf_t *report, bool *created_slot, bool *conn_lost,
                               outboxd_pg_domains_t *domains);
/*
 * The cheap check a running source repeats every status interval on its own
 * normal connection (*conn, opened on first use, closed and NULLed when
 * lost; the caller PQfinishes it at the end): every configured table still
 * exists and is in the publication. A table missing from the publication
 * (re-created or renamed into place) is added when create_publication
 * allows and the table has a replica identity, and reported either way,
 * with which rows cannot be relayed. Returns the number of problems (one
 * report line each), or -1 when it could not connect or was stopped. Each
 * query is bounded by timeout_ms (relay.wal_receiver_timeout_ms), at most
 * OUTBOXD_PGSETUP_WATCH_MAX_MS (also when 0), with a statement_timeout of
 * half that, and abandoned when *stop (may be NULL) is set (then -1, and the
 * connection is closed).
 */
#define OUTBOXD_PGSETUP_WATCH_MAX_MS 10000
int outboxd_pgsetup_watch(const outboxd_source_conf_t *src, int timeout_ms, atomic_int *stop,
                          PGconn **conn, outboxd_buf_t *report);

/* The bound of a query run in a source's loop on a normal connection (the
 * catalog check above, the fenced source's slot query): timeout_ms
 * (relay.wal_receiver_timeout_ms), at most OUTBOXD_PGSETUP_WATCH_MAX_MS, and
 * that also when timeout_ms is 0 (no liveness check): the loop must come
 * back to its stream. */
int outboxd_pgsetup_loop_bound(int timeout_ms);

/*
 * For `outboxd check`: each ${column} of an outbox table's topic template
 * names a column of the table (otherwise every row would be dead-lettered).
 * One report line per missing column; returns their number (0 also when the
 * server cannot be reached: outboxd_pgsetup_check reports that).
 */
int outboxd_pgsetup_check_topics(const outboxd_source_conf_t *src, outboxd_buf_t *report);

#endif

/*
 * Opening PostgreSQL connections for a source (normal and replication).
 * Below pgsetup and repl: both connect through it.
 */
#ifndef OUTBOXD_PGCONN_H
#define OUTBOXD_PGCONN_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "outboxd/relay/config.h"

/*
 * Opens a connection for src: its dsn plus password (from password_file) and
 * session settings the decoder relies on (DateStyle=ISO, TimeZone=UTC,
 * client_encoding=UTF8, checked after connecting; SQL_ASCII for a SQL_ASCII
 * database, which cannot convert), and
 * application_name=outboxd-<source>. replication=true opens a logical
 * replication connection (replication=database). Returns NULL with errstr
 * filled (the libpq message, without trailing newline) on failure.
 */
PGconn *outboxd_pg_connect(const outboxd_source_conf_t *src, bool replication, char *errstr,
                           size_t errstr_size);

/* "WHAT: message" (the message alone when what is NULL) of libpq's last
 * error on conn into errstr, without the newline libpq ends it with. */
void outboxd_pg_error(PGconn *conn, const char *what, char *errstr, size_t errstr_size);

/* Asks the server to cancel what conn runs (best effort: a query abandoned
 * by outboxd_pg_exec_bounded at a stop would otherwise run on, holding a
 * slot active, until it tries to answer). Blocks while it connects to the
 * server: for a stop, when the server is presumed to answer, not for a
 * silent one. */
void outboxd_pg_cancel(PGconn *conn);

/* Drops trailing newlines and spaces from a libpq message. */
void outboxd_pg_chomp(char *msg);

/*
 * PQexec (nparams 0 and params NULL: the simple protocol, which replication
 * commands need) or PQexecParams with text parameters, with a bound: a
 * server that accepted the connection and then went silent (a frozen
 * backend or walsender, a path that went half-open) would keep libpq waiting
 * for good, since TCP keepalives are answered by the peer's kernel. The
 * answer is given up after timeout_ms without a byte from the server (0: no
 * limit; the callers pass relay.wal_receiver_timeout_ms): the limit restarts
 * whenever bytes arrive, so a long answer that keeps coming (a snapshot chunk
 * of large rows on a slow link) is not taken for a dead connection. It is
 * abandoned as soon as *stop (may be NULL) is set. Returns the result as
 * PQexec would (the last one, or the COPY one), or NULL with errstr ("WHAT:
 * ..." when what is given); the connection is then unusable and must be
 * closed.
 */
PGresult *outboxd_pg_exec_bounded(PGconn *conn, const char *sql, int nparams,
                                  const char *const *params, const char *what, int timeout_ms,
                                  atomic_int *stop, char *errstr, size_t errstr_size);

/* outboxd_pg_exec_bounded for a statement that must succeed: a result other
 * than PGRES_TUPLES_OK or PGRES_COMMAND_OK is cleared and reported the same
 * way, NULL with libpq's message in errstr ("WHAT: ..." when what is given). */
PGresult *outboxd_pg_query_bounded(PGconn *conn, const char *sql, int nparams,
                                   const char *const *params, const char *what, int timeout_ms,
                                   atomic_int *stop, char *errstr, size_t errstr_size);

#endif

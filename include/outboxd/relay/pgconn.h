/*
 * Opening PostgreSQL connections for a source (normal and replication).
 * Below pgsetup and repl: both connect through it.
 */
#ifndef OUTBOXD_PGCONN_H
#define OUTBOXD_PGCONN_H

#include <libpq-fe.h>
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

#endif

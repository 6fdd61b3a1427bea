/*
 * Checking a source's PostgreSQL side, and creating what is missing when asked:
 * wal_level and replication settings, the role's replication privilege, the
 * configured tables and their outbox columns, the publication and the logical
 * replication slot.
 *
 * Every problem becomes one line of the report ("source NAME: what is wrong;
 * how to fix it") and counts toward the return value. What outboxd creates is
 * logged at INFO. Conditions that do not stop the relay today but deserve
 * attention (a slot that is about to lose WAL) are logged at WARN and neither
 * reported nor counted, so a zero return always means "ready".
 *
 * Beyond the basics it catches setups that look fine but break at run time:
 * a payload column of a non-text type, a table without replica identity in a
 * publication that publishes updates or deletes (the application's UPDATE and
 * DELETE would start failing), a partitioned table published without
 * publish_via_partition_root, a PostgreSQL 15 column list that leaves out
 * configured columns, and a slot older than the publication this check just
 * created (pgoutput cannot decode the changes in between).
 *
 * max_replication_slots = 0 and max_wal_senders = 0 are counted as problems,
 * not warnings: with either, the relay cannot hold a slot or open its
 * replication connection, so reporting the source as ready would be wrong.
 *
 * All values go to the server as parameters (on a starting source's
 * replication connection, which takes the simple protocol only, inlined as
 * PQescapeLiteral literals); identifiers pasted into DDL are quoted with
 * PQescapeIdentifier, and literals shown in suggested SQL with
 * PQescapeLiteral.
 */
#include "outboxd/relay/pgsetup.h"
#include "outboxd/relay/pgconn.h"
#include "outboxd/relay/connhint.h"
#include "outboxd/relay/debezium.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/common/log.h"

/* Type OIDs from PostgreSQL's pg_type.dat; they never change between versions. */
#define BYTEA_OID   17
#define TEXT_OID    25
#define JSON_OID    114
#define VARCHAR_OID 1043
#define JSONB_OID   3802

typedef struct table_state {
    bool found;        /* exists and is a table or a partitioned table */
    bool partitioned;  /* relkind 'p' */
    bool has_identity; /* UPDATE/DELETE keep working when updates/deletes are published */
    char oid[16];
} table_state_t;

typedef struct check {
    const outboxd_source_conf_t *src;
    PGconn *conn;
    bool create;
    outboxd_buf_t *report;
    int problems;
    int server_version;
    bool conn_lost;
    bool simple;      /* a replication connection: SQL by the simple protocol only */
    int timeout_ms;   /* > 0: each query bounded (outboxd_pg_exec_bounded) */
    atomic_int *stop; /* with timeout_ms: a query being waited for is abandoned */
    bool wal_ok;      /* wal_level = logical and slots can exist */
    bool role_ok;     /* may create a logical slot */
    bool tables_ok;   /* every configured table exists and is a table */
    bool any_partitioned;
    bool pub_exists;          /* the publication exists (possibly created by this check) */
    char pub_created_lsn[32]; /* WAL position just after this check created it, or "" */
    table_state_t *tables;
    bool slot_created; /* this call created the replication slot */
    /* The relay's own check as a source connects: the retention slot's
     * problems are warnings there, since the live stream does not need
     * the replay window (a slot PostgreSQL invalidated must not stop the
     * outbox); `outboxd check` counts them as problems. */
    bool relay;
    outboxd_pg_domains_t *domains; /* NULL, or where check_columns adds domains */
} check_t;

void outboxd_pg_domains_free(outboxd_pg_domains_t *d)
{
    free(d->oid);
    free(d->base);
    d->oid = d->base = NULL;
    d->n = 0;
}

static void add_domain(check_t *c, uint32_t oid, uint32_t base)
{
    outboxd_pg_domains_t *d = c->domains;
    for (size_t i = 0; i < d->n; i++)
        if (d->oid[i] == oid)
            return;
    uint32_t *o = realloc(d->oid, (d->n + 1) * sizeof(uint32_t));
    if (o)
        d->oid = o;
    uint32_t *b = o ? realloc(d->base, (d->n + 1) * sizeof(uint32_t)) : NULL;
    if (b)
        d->base = b;
    if (!o || !b) {
        LOG_WARN(c->src->name,
                 "out of memory noting domain type %u: a column of it is rendered "
                 "as that type, not its base type, until the next check",
                 oid);
        return;
    }
    d->oid[d->n] = oid;
    d->base[d->n++] = base;
}

/* One configured column name of an outbox table and the key that set it. */
typedef struct colref {
    const char *name;
    const char *key;     /* YAML key: "columns.payload", "key", "headers" */
    size_t header_index; /* for headers */
} colref_t;

/*
 * Appends s with line breaks (and the indentation libpq puts after them)
 * turned into "; ", so a multi-line server or libpq message stays one report
 * line.
 */
static void append_flat(outboxd_buf_t *b, const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n') {
            while (i + 1 < n && isspace((unsigned char)s[i + 1]))
                i++;
            outboxd_buf_append_str(b, "; ");
        } else if (s[i] == '\t' || s[i] == '\r') {
            outboxd_buf_append(b, " ", 1);
        } else {
            outboxd_buf_append(b, &s[i], 1);
        }
    }
}

/* One line of the report: "source NAME: " and the text, flattened. */
static void report_line(check_t *c, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void report_line(check_t *c, const char *fmt, va_list ap)
{
    char *text = NULL;
    int n = vasprintf(&text, fmt, ap);
    outboxd_buf_printf(c->report, "source %s: ", c->src->name);
    append_flat(c->report, n >= 0 ? text : "out of memory while writing the report");
    outboxd_buf_append_str(c->report, "\n");
    if (n >= 0)
        free(text);
}

static void problem(check_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(check_t *c, const char *fmt, ...)
{
    c->problems++;
    va_list ap;
    va_start(ap, fmt);
    report_line(c, fmt, ap);
    va_end(ap);
}

static void retention_problem(check_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* In the relay's own check a WARN line (with suffix), in `outboxd check` a
 * report line, counted as a problem when count. */
static void relay_warn_or_report(check_t *c, bool count, const char *suffix, const char *fmt,
                                 va_list ap) __attribute__((format(printf, 4, 0)));

static void relay_warn_or_report(check_t *c, bool count, const char *suffix, const char *fmt,
                                 va_list ap)
{
    if (c->relay) {
        char *text = NULL;
        if (vasprintf(&text, fmt, ap) >= 0) {
            LOG_WARN(c->src->name, "%s%s", text, suffix);
            free(text);
        }
    } else {
        c->problems += count;
        report_line(c, fmt, ap);
    }
}

static void retention_problem(check_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    relay_warn_or_report(c, true, " (the live stream goes on; only replay needs this slot)", fmt,
                         ap);
    va_end(ap);
}

/* A line of the report that is not a problem (check still exits 0). */
static void note(check_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void note(check_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    report_line(c, fmt, ap);
    va_end(ap);
}

/* The server's primary message plus its hint, or libpq's message when the
 * failure happened before the server answered. */
static void result_error(PGconn *conn, const PGresult *res, char *out, size_t size)
{
    const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *hint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
    if (!msg)
        msg = PQerrorMessage(conn);
    if (hint)
        snprintf(out, size, "%s (hint: %s)", msg, hint);
    else
        snprintf(out, size, "%s", msg);
}

/*
 * A replication connection (replication=database) runs SQL, but only by the
 * simple protocol: there sql's $1..$9 become the parameters as quoted
 * literals (PQescapeLiteral, which knows the connection's encoding and
 * standard_conforming_strings). Every statement of this file uses $N only as
 * a parameter (no dollar quoting, no '$' in a literal). Returns a malloc'd
 * statement, or NULL with the reason in err.
 */
static char *inline_params(PGconn *conn, const char *sql, int nparams, const char *const *params,
                           char *err, size_t errsize)
{
    outboxd_buf_t b = {0};
    bool ok = true;
    for (const char *p = sql; *p && ok; p++) {
        int n = p[0] == '$' && p[1] >= '1' && p[1] <= '9' && !isdigit((unsigned char)p[2])
                    ? p[1] - '0'
                    : 0;
        if (n == 0 || n > nparams) {
            ok = outboxd_buf_append(&b, p, 1);
            continue;
        }
        p++;
        if (!params[n - 1]) {
            ok = outboxd_buf_append_str(&b, "NULL");
            continue;
        }
        char *lit = PQescapeLiteral(conn, params[n - 1], strlen(params[n - 1]));
        if (!lit) {
            snprintf(err, errsize, "could not quote a parameter: %s", PQerrorMessage(conn));
            outboxd_buf_free(&b);
            return NULL;
        }
        ok = outboxd_buf_append_str(&b, lit);
        PQfreemem(lit);
    }
    if (!ok || !b.data) {
        snprintf(err, errsize, "out of memory");
        outboxd_buf_free(&b);
        return NULL;
    }
    return b.data;
}

/* Runs sql with text parameters. Returns the result on success; on failure
 * returns NULL with the reason in err. */
static PGresult *run(check_t *c, const char *sql, int nparams, const char *const *params, char *err,
                     size_t errsize)
{
    PGresult *res;
    char *text = NULL;
    if (c->simple) {
        text = inline_params(c->conn, sql, nparams, params, err, errsize);
        if (!text)
            return NULL;
        sql = text;
        nparams = 0;
        params = NULL;
    }
    if (c->timeout_ms > 0) {
        /* The running source's check: a silent server must not hold up
         * the source loop (and its stream) for good. Parameters always,
         * as PQexecParams: the extended protocol runs one statement
         * (inlined ones by the simple protocol: no parameters at all). */
        static const char *const no_params[1] = {NULL};
        const char *const *pp = text ? NULL : params ? params : no_params;
        res = outboxd_pg_exec_bounded(c->conn, sql, nparams, pp, NULL, c->timeout_ms, c->stop, err,
                                      errsize);
        free(text);
        if (!res) {
            c->conn_lost = true; /* unusable now: closed, reopened next time */
            return NULL;
        }
    } else {
        res = text ? PQexec(c->conn, text)
                   : PQexecParams(c->conn, sql, nparams, NULL, params, NULL, NULL, 0);
        free(text);
    }
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    result_error(c->conn, res, err, errsize);
    PQclear(res);
    if (PQstatus(c->conn) == CONNECTION_BAD)
        c->conn_lost = true;
    return NULL;
}

/*
 * Runs a catalog query. A failed query is itself a problem: the check cannot
 * tell whether the source is ready. Once the connection is gone, later steps
 * are skipped silently instead of each adding the same failure.
 */
static PGresult *query(check_t *c, const char *what, const char *sql, int nparams,
                       const char *const *params)
{
    if (c->conn_lost)
        return NULL;
    char err[1024];
    PGresult *res = run(c, sql, nparams, params, err, sizeof(err));
    if (!res)
        problem(c, "could not %s: %s", what, err);
    return res;
}

static bool field_true(const PGresult *res, int row, int col)
{
    return !PQgetisnull(res, row, col) && PQgetvalue(res, row, col)[0] == 't';
}

static bool append_ident(PGconn *conn, outboxd_buf_t *b, const char *s)
{
    char *q = PQescapeIdentifier(conn, s, strlen(s));
    if (!q)
        return false;
    bool ok = outboxd_buf_append_str(b, q);
    PQfreemem(q);
    return ok;
}

static bool append_literal(PGconn *conn, outboxd_buf_t *b, const char *s)
{
    char *q = PQescapeLiteral(conn, s, strlen(s));
    if (!q)
        return false;
    bool ok = outboxd_buf_append_str(b, q);
    PQfreemem(q);
    return ok;
}

static bool append_table(PGconn *conn, outboxd_buf_t *b, const outboxd_table_conf_t *t)
{
    return append_ident(conn, b, t->schema) && outboxd_buf_append_str(b, ".") &&
           append_ident(conn, b, t->name);
}

/* Where a table entry sits in the configuration, for "fix the name" hints. */
static void table_where(const outboxd_table_conf_t *t, char *out, size_t size)
{
    if (t->line > 0)
        snprintf(out, size, " (line %d of the configuration)", t->line);
    else
        out[0] = '\0';
}

/* A notice on the watch's connection between two checks (its check_t is
 * gone by then). */
static void notice_between_checks(void *arg, const char *message)
{
    (void)arg;
    LOG_DEBUG(NULL, "server: %.*s", (int)strcspn(message, "\n"), message);
}

static void notice_to_log(void *arg, const char *message)
{
    const check_t *c = arg;
    char line[1024];
    snprintf(line, sizeof(line), "%s", message);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == ' '))
        line[--n] = '\0';
    /* Server notices during the check (e.g. CREATE PUBLICATION warning about
     * wal_level) repeat what the report already says; keep them for debugging
     * instead of letting libpq print them to stderr. */
    LOG_DEBUG(c->src->name, "server: %s", line);
}

/* 1. wal_level and the settings replication cannot work without. */
static bool too_old(check_t *c)
{
    int v = c->server_version;
    if (v >= 100000)
        return false;
    problem(
        c,
        "PostgreSQL %d.%d is too old; outboxd needs PostgreSQL 10 or later (the pgoutput plugin)",
        v / 10000, (v / 100) % 100);
    return true;
}

static void check_settings(check_t *c)
{
    int v = c->server_version;
    if (!too_old(c) && c->src->n_messages > 0 && v < 140000)
        problem(c,
                "PostgreSQL %d does not pass logical decoding messages through pgoutput (the "
                "messages option exists from 14 on), which messages: needs; upgrade to "
                "PostgreSQL 14 or later, or remove the messages: entries of this source",
                v / 10000);
    if (c->src->publication_scope == OUTBOXD_PUB_SCHEMA && v < 150000)
        problem(c,
                "publication_scope: schema needs PostgreSQL 15 or later (FOR TABLES IN SCHEMA); "
                "this is PostgreSQL %d: use publication_scope: all (decodes every table) or "
                "tables",
                v / 10000);

    PGresult *res = query(c, "read the server settings",
                          "SELECT current_setting('wal_level'), "
                          "current_setting('max_replication_slots')::int, "
                          "current_setting('max_wal_senders')::int",
                          0, NULL);
    if (!res)
        return;
    const char *wal_level = PQgetvalue(res, 0, 0);
    int max_slots = atoi(PQgetvalue(res, 0, 1));
    int max_senders = atoi(PQgetvalue(res, 0, 2));
    c->wal_ok = true;
    if (strcmp(wal_level, "logical") != 0) {
        problem(c,
                "wal_level is '%s' but must be 'logical'; set wal_level = logical in "
                "postgresql.conf (or run ALTER SYSTEM SET wal_level = logical) and restart "
                "PostgreSQL",
                wal_level);
        c->wal_ok = false;
    }
    if (max_slots == 0) {
        problem(c, "max_replication_slots is 0, so no replication slot can exist; set "
                   "max_replication_slots = 10 (at least one per source) in postgresql.conf and "
                   "restart PostgreSQL");
        c->wal_ok = false;
    }
    if (max_senders == 0)
        problem(c, "max_wal_senders is 0, so the server accepts no replication connection; set "
                   "max_wal_senders = 10 (at least one per source) in postgresql.conf and restart "
                   "PostgreSQL");
    PQclear(res);
}

/* 2. The role may create a logical slot and start replication. */
static void check_role(check_t *c)
{
    /* Amazon RDS and Aurora grant replication by membership in
     * rds_replication (rolreplication stays false there). */
    PGresult *res = query(c, "read the role's privileges",
                          "SELECT rolname, rolreplication, rolsuper, EXISTS (SELECT 1 FROM "
                          "pg_catalog.pg_roles g WHERE g.rolname = 'rds_replication' AND "
                          "pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER')) "
                          "FROM pg_catalog.pg_roles WHERE rolname = current_user",
                          0, NULL);
    if (!res)
        return;
    if (PQntuples(res) == 1) {
        /* On a replication connection the walsender has already let the
         * role in, whatever grants it. */
        c->role_ok =
            c->simple || field_true(res, 0, 1) || field_true(res, 0, 2) || field_true(res, 0, 3);
        if (!c->role_ok) {
            const char *role = PQgetvalue(res, 0, 0);
            outboxd_buf_t sql = {0};
            outboxd_buf_append_str(&sql, "ALTER ROLE ");
            bool ok = append_ident(c->conn, &sql, role);
            outboxd_buf_append_str(&sql, " WITH REPLICATION");
            problem(c,
                    "role '%s' may not use replication (it has neither REPLICATION nor "
                    "SUPERUSER); grant it with: %s",
                    role, ok && sql.data ? sql.data : "ALTER ROLE <role> WITH REPLICATION");
            outboxd_buf_free(&sql);
        }
    }
    PQclear(res);
}

static const char *relkind_name(char kind)
{
    switch (kind) {
    case 'v':
        return "a view";
    case 'm':
        return "a materialized view";
    case 'f':
        return "a foreign table";
    case 'S':
        return "a sequence";
    case 'i':
    case 'I':
        return "an index";
    default:
        return "not a table";
    }
}

/* 3. Each configured table exists and is a plain or partitioned table. */
static void check_tables(check_t *c)
{
    const outboxd_source_conf_t *src = c->src;
    /* format('%I.%I') quotes like the server parses, so to_regclass finds
     * mixed-case and otherwise odd names exactly as configured. A table
     * without replica identity makes UPDATE and DELETE on it fail once a
     * publication publishes them; partitioned tables are left out of that
     * test because their partitions carry the identity. */
    static const char *sql =
        "SELECT c.oid, c.relkind, "
        "c.relkind = 'p' OR CASE c.relreplident "
        "  WHEN 'f' THEN true "
        "  WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i "
        "                        WHERE i.indrelid = c.oid AND i.indisprimary) "
        "  WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i "
        "                        WHERE i.indrelid = c.oid AND i.indisreplident) "
        "  ELSE false END "
        "FROM pg_catalog.pg_class c "
        "WHERE c.oid = pg_catalog.to_regclass(pg_catalog.format('%I.%I', $1::text, $2::text))";
    c->tables_ok = true;
    for (size_t i = 0; i < src->n_tables; i++) {
        const outboxd_table_conf_t *t = &src->tables[i];
        table_state_t *ts = &c->tables[i];
        const char *params[2] = {t->schema, t->name};
        PGresult *res = query(c, "look up a configured table", sql, 2, params);
        if (!res) {
            c->tables_ok = false;
            continue;
        }
        char where[64];
        table_where(t, where, sizeof(where));
        if (PQntuples(res) == 0) {
            problem(c, "table %s.%s does not exist; create it, or correct its name%s", t->schema,
                    t->name, where);
            c->tables_ok = false;
        } else {
            char kind = PQgetvalue(res, 0, 1)[0];
            if (kind == 'r' || kind == 'p') {
                ts->found = true;
                ts->partitioned = kind == 'p';
                ts->has_identity = field_true(res, 0, 2);
                snprintf(ts->oid, sizeof(ts->oid), "%s", PQgetvalue(res, 0, 0));
                if (ts->partitioned)
                    c->any_partitioned = true;
            } else {
                problem(c,
                        "%s.%s is %s, not a table, and cannot be published; configure the "
                        "underlying table instead%s",
                        t->schema, t->name, relkind_name(kind), where);
                c->tables_ok = false;
            }
        }
        PQclear(res);
    }
}

static void colref_key(const colref_t *r, char *out, size_t size)
{
    if (strcmp(r->key, "headers") == 0)
        snprintf(out, size, "headers[%zu]", r->header_index);
    else
        snprintf(out, size, "%s", r->key);
}

static size_t add_colref(colref_t *refs, size_t n, const char *name, const char *key,
                         size_t header_index)
{
    if (!name || !*name)
        return n;
    /* key usually repeats columns.aggregateid: check each name once */
    for (size_t i = 0; i < n; i++)
        if (strcmp(refs[i].name, name) == 0)
            return n;
    refs[n].name = name;
    refs[n].key = key;
    refs[n].header_index = header_index;
    return n + 1;
}

/* The distinct column names an outbox table entry refers to, in config order.
 * refs must hold 7 + n_header_columns entries. */
static size_t table_colrefs(const outboxd_table_conf_t *t, colref_t *refs)
{
    size_t n = 0;
    n = add_colref(refs, n, t->columns.id, "columns.id", 0);
    n = add_colref(refs, n, t->columns.aggregatetype, "columns.aggregatetype", 0);
    n = add_colref(refs, n, t->columns.aggregateid, "columns.aggregateid", 0);
    n = add_colref(refs, n, t->columns.type, "columns.type", 0);
    n = add_colref(refs, n, t->columns.payload, "columns.payload", 0);
    n = add_colref(refs, n, t->columns.timestamp, "columns.timestamp", 0);
    n = add_colref(refs, n, t->key_column, "key", 0);
    for (size_t h = 0; h < t->n_header_columns; h++)
        n = add_colref(refs, n, t->header_columns[h], "headers", h);
    return n;
}

static colref_t *alloc_colrefs(const outboxd_table_conf_t *t)
{
    return calloc(7 + t->n_header_columns, sizeof(colref_t));
}

/* A Debezium drop-in table's value.converter, or NULL. */
static const char *dbz_value_converter(const outboxd_table_conf_t *t)
{
    for (size_t i = 0; i < t->n_debezium; i++)
        if (strcmp(t->debezium[i].key, "value.converter") == 0)
            return t->debezium[i].value;
    return NULL;
}

/* 4. Every configured column of an outbox table exists; payload is text-like. */
static void check_columns(check_t *c)
{
    const outboxd_source_conf_t *src = c->src;
    /* Domains are resolved one level, enough for "CREATE DOMAIN x AS jsonb". */
    static const char *sql = "SELECT a.attname, "
                             "(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END), "
                             "pg_catalog.format_type(a.atttypid, a.atttypmod), "
                             "t.typtype = 'd', a.atttypid "
                             "FROM pg_catalog.pg_attribute a "
                             "JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
                             "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped";
    for (size_t i = 0; i < src->n_tables; i++) {
        const outboxd_table_conf_t *t = &src->tables[i];
        if (t->mode != OUTBOXD_MODE_OUTBOX || !c->tables[i].found)
            continue;
        const char *params[1] = {c->tables[i].oid};
        PGresult *res = query(c, "read a table's columns", sql, 1, params);
        if (!res)
            continue;
        colref_t *refs = alloc_colrefs(t);
        if (!refs) {
            problem(c, "out of memory while checking the columns of %s.%s", t->schema, t->name);
            PQclear(res);
            continue;
        }
        size_t nrefs = table_colrefs(t, refs);
        int rows = PQntuples(res);
        /* Every domain column of an outbox table, with its base type (one
         * level): a Debezium drop-in table renders it as that type, for
         * whichever column its settings (a reload may change them) use. */
        for (int k = 0; c->domains && k < rows; k++)
            if (strcmp(PQgetvalue(res, k, 3), "t") == 0)
                add_domain(c, (uint32_t)strtoul(PQgetvalue(res, k, 4), NULL, 10),
                           (uint32_t)strtoul(PQgetvalue(res, k, 1), NULL, 10));
        for (size_t r = 0; r < nrefs; r++) {
            int row = -1;
            for (int k = 0; k < rows && row < 0; k++)
                if (strcmp(PQgetvalue(res, k, 0), refs[r].name) == 0)
                    row = k;
            char key[64];
            colref_key(&refs[r], key, sizeof(key));
            if (row < 0) {
                problem(c,
                        "table %s.%s has no column '%s' (configured as %s); add it or set %s to "
                        "the column's name",
                        t->schema, t->name, refs[r].name, key, key);
                continue;
            }
            if (t->columns.payload && strcmp(refs[r].name, t->columns.payload) == 0) {
                long type = atol(PQgetvalue(res, row, 1));
                /* The payload is relayed as JSON text; other types (bytea in
                 * particular) would arrive as their text output, which is
                 * not what a consumer expects. A Debezium drop-in table
                 * writes bytea as Debezium does (its converters' bytes). */
                const char *conv = dbz_value_converter(t);
                if (type == BYTEA_OID && conv &&
                    strcmp(conv, "org.apache.kafka.connect.storage.StringConverter") == 0)
                    problem(c,
                            "column '%s' of %s.%s (configured as %s) is bytea, and through "
                            "value.converter StringConverter Debezium writes a ByteBuffer's "
                            "toString() (java.nio.HeapByteBuffer[pos=0 lim=...]), not the "
                            "bytes; set value.converter to "
                            "io.debezium.converters.BinaryDataConverter (the bytes as they "
                            "are) or JsonConverter (base64)",
                            refs[r].name, t->schema, t->name, key);
                else if (type != JSONB_OID && type != JSON_OID && type != TEXT_OID &&
                         type != VARCHAR_OID && !(type == BYTEA_OID && t->n_debezium))
                    problem(c,
                            "column '%s' of %s.%s (configured as %s) is %s, but the payload "
                            "must be jsonb, json, text or varchar (or bytea with a debezium: "
                            "block); change the column's type (jsonb is recommended)",
                            refs[r].name, t->schema, t->name, key, PQgetvalue(res, row, 2));
            }
        }
        free(refs);
        PQclear(res);
    }
}

/* A warning: logged at a source's start, a report line (not a problem) in
 * `outboxd check`. */
static void warning(check_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void warning(check_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    relay_warn_or_report(c, false, "", fmt, ap);
    va_end(ap);
}

static bool csv_has(const outboxd_buf_t *b, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = b->data; p && *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p = end ? end + 1 : p + len;
    }
    return false;
}

/* Column types a Debezium drop-in renders with a schema (debezium.c's
 * column_schema): text, varchar, bpchar, name, json, jsonb, uuid, int2,
 * int4, int8, oid, float4, float8, boolean, bytea. */
static bool dbz_schema_type(long oid)
{
    static const long ok[] = {25, 1043, 1042, 19,  114, 3802, 2950, 21,
                              23, 20,   26,   700, 701, 16,   17};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (ok[i] == oid)
            return true;
    return false;
}

/*
 * 4b. A Debezium drop-in table whose converters write schemas (an
 * AvroConverter, or JsonConverter with schemas.enable, its default):
 * - said once when JsonConverter's schemas.enable is left to its default
 *   (the records are {"schema", "payload"}, as Debezium's with that config);
 * - Debezium makes the schema of a NOT NULL column required ("optional":
 *   false, no null branch in Avro), and pgoutput does not tell outboxd which
 *   columns are NOT NULL: outboxd.columns.not.null must list them, or the
 *   bytes differ. Warned about with the value to set, from the catalog;
 * - a key, payload or envelope column of a type outboxd renders no schema
 *   for (a domain counts as its base type, one level) has its rows
 *   dead-lettered: warned about, naming the column and type.
 */
static void check_dbz_schemas(check_t *c)
{
    const outboxd_source_conf_t *src = c->src;
    static const char *sql =
        "SELECT a.attname, a.attnotnull, t.typtype = 'd', "
        "(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END), "
        "pg_catalog.format_type(a.atttypid, a.atttypmod), "
        "pg_catalog.format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END, "
        "NULL) "
        "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum";
    for (size_t i = 0; i < src->n_tables; i++) {
        const outboxd_table_conf_t *t = &src->tables[i];
        if (t->mode != OUTBOXD_MODE_OUTBOX || !t->n_debezium || !c->tables[i].found)
            continue;
        char err[512];
        outboxd_dbz_t *d = outboxd_dbz_new(t->debezium, t->n_debezium, err, sizeof(err));
        if (!d) /* the configuration's own error, reported at load */
            continue;
        bool key = d->key_avro || d->key_schemas, value = d->value_avro || d->value_schemas;
        if (d->schemas_implicit) {
            const char *fmt = "table %s.%s: JsonConverter without schemas.enable writes "
                              "{\"schema\": ..., \"payload\": ...} records, Kafka Connect's "
                              "default (Debezium's with this config too); set "
                              "key.converter.schemas.enable / value.converter.schemas.enable: "
                              "\"false\" in its debezium: block for the values alone";
            if (c->relay)
                LOG_INFO(c->src->name, fmt, t->schema, t->name);
            else
                note(c, fmt, t->schema, t->name);
        }
        const char *params[1] = {c->tables[i].oid};
        PGresult *res = key || value ? query(c, "read a table's columns", sql, 1, params) : NULL;
        outboxd_buf_t listed = {0}, want = {0}, missing = {0}, extra = {0};
        for (size_t k = 0; k < d->n_not_null; k++)
            outboxd_buf_printf(&listed, "%s%s", k ? "," : "", d->not_null[k]);
        for (int r = 0; res && r < PQntuples(res); r++) {
            const char *col = PQgetvalue(res, r, 0);
            bool notnull = strcmp(PQgetvalue(res, r, 1), "t") == 0;
            bool domain = strcmp(PQgetvalue(res, r, 2), "t") == 0;
            const char *what = NULL;
            if (key && strcmp(col, d->col_key) == 0)
                what = "key";
            else if (value && strcmp(col, d->col_payload) == 0)
                what = "payload";
            for (size_t p = 0; value && !what && p < d->n_places; p++)
                if (d->places[p].where == OUTBOXD_DBZ_ENVELOPE &&
                    strcmp(d->places[p].column, col) == 0)
                    what = "envelope";
            if (!what)
                continue;
            /* A domain is rendered as its base type (one level; the relay
             * learns which in check_columns). */
            long base = atol(PQgetvalue(res, r, 3));
            if (!dbz_schema_type(base))
                warning(c,
                        "table %s.%s: %s column '%s' is %s%s%s, and outboxd renders no schema for "
                        "it through %s (it does for text, varchar, uuid, json, jsonb, integers, "
                        "floats, boolean and bytea, and domains over them): its rows go to the "
                        "dead-letter topic%s",
                        t->schema, t->name, what, col, PQgetvalue(res, r, 4),
                        domain ? ", a domain over " : "", domain ? PQgetvalue(res, r, 5) : "",
                        (strcmp(what, "key") == 0 ? d->key_avro : d->value_avro)
                            ? "an AvroConverter"
                            : "a JsonConverter with schemas.enable",
                        domain ? " (domains are resolved one level)" : "");
            bool is_listed = csv_has(&listed, col);
            if (notnull)
                outboxd_buf_printf(&want, "%s%s", want.len ? "," : "", col);
            if (notnull && !is_listed)
                outboxd_buf_printf(&missing, "%s%s", missing.len ? ", " : "", col);
            if (!notnull && is_listed)
                outboxd_buf_printf(&extra, "%s%s", extra.len ? ", " : "", col);
        }
        if (missing.len || extra.len)
            warning(c,
                    "table %s.%s: %s%s%s%s%s%s: Debezium's schema of a NOT NULL column is "
                    "required (\"optional\": false; in Avro no null branch) and of the others "
                    "optional, and pgoutput does not tell outboxd which are which, so these "
                    "records would differ from Debezium's; set outboxd.columns.not.null: \"%s\" "
                    "in its debezium: block",
                    t->schema, t->name, missing.len ? "NOT NULL column(s) " : "",
                    missing.len ? missing.data : "",
                    missing.len ? " not in outboxd.columns.not.null" : "",
                    extra.len ? (missing.len ? "; NULL-able column(s) " : "NULL-able column(s) ")
                              : "",
                    extra.len ? extra.data : "",
                    extra.len ? " in it (a NULL there is dead-lettered)" : "",
                    want.len ? want.data : "");
        PQclear(res);
        outboxd_buf_free(&listed);
        outboxd_buf_free(&want);
        outboxd_buf_free(&missing);
        outboxd_buf_free(&extra);
        outboxd_dbz_destroy(d);
    }
}

/* Whether schema name already appears among the first n tables. */
static bool schema_seen(const outboxd_source_conf_t *src, size_t n, const char *schema)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(src->tables[i].schema, schema) == 0)
            return true;
    return false;
}

/* A cdc table's row_filter as a PostgreSQL 15 publication WHERE clause
 * (older servers are told in check_row_filter). */
static bool append_row_filter(check_t *c, outboxd_buf_t *sql, const outboxd_table_conf_t *t)
{
    if (!t->row_filter || c->server_version < 150000)
        return true;
    return outboxd_buf_printf(sql, " WHERE (%s)", t->row_filter);
}

static void check_row_filter(check_t *c, const outboxd_table_conf_t *t);

/* A publication over every table or whole schemas, not only the
 * configured tables (a schema scope without tables is a FOR TABLE one). */
static bool wide_scope(const outboxd_source_conf_t *src)
{
    return src->publication_scope == OUTBOXD_PUB_ALL ||
           (src->publication_scope == OUTBOXD_PUB_SCHEMA && src->n_tables > 0);
}

/* What this source's tables need a publication to publish. */
typedef struct pub_ops {
    bool ins, upd, del, trunc;
} pub_ops_t;

static pub_ops_t needed_ops(const outboxd_source_conf_t *src)
{
    pub_ops_t o = {.ins = true}; /* a messages-only source too: a valid list */
    for (size_t i = 0; i < src->n_tables; i++) {
        const outboxd_table_conf_t *t = &src->tables[i];
        bool cdc = t->mode == OUTBOXD_MODE_CDC;
        o.upd = o.upd || cdc || t->on_update != OUTBOXD_UPDATE_SKIP;
        o.del = o.del || cdc;
        o.trunc = o.trunc || (cdc && t->truncate_events);
    }
    return o;
}

/* "CREATE PUBLICATION ..." for this source's tables, as run and as suggested. */
static bool create_publication_sql(check_t *c, outboxd_buf_t *sql)
{
    const outboxd_source_conf_t *src = c->src;
    bool wide = wide_scope(src);
    bool ok = outboxd_buf_append_str(sql, "CREATE PUBLICATION ") &&
              append_ident(c->conn, sql, src->publication);
    if (src->publication_scope == OUTBOXD_PUB_ALL) {
        /* Covers tables created later (a re-created outbox) from their
         * creation on; the relay keeps only the configured ones. */
        ok = ok && outboxd_buf_append_str(sql, " FOR ALL TABLES");
    } else if (src->publication_scope == OUTBOXD_PUB_SCHEMA && src->n_tables > 0) {
        for (size_t i = 0; ok && i < src->n_tables; i++) {
            if (schema_seen(src, i, src->tables[i].schema))
                continue;
            ok = outboxd_buf_append_str(sql, i == 0 ? " FOR TABLES IN SCHEMA " : ", ") &&
                 append_ident(c->conn, sql, src->tables[i].schema);
        }
    } else {
        /* Without tables (messages: only) an empty publication is still
         * needed: pgoutput refuses to start without publication_names. */
        for (size_t i = 0; ok && i < src->n_tables; i++)
            ok = outboxd_buf_append_str(sql, i == 0 ? " FOR TABLE " : ", ") &&
                 append_table(c->conn, sql, &src->tables[i]) &&
                 append_row_filter(c, sql, &src->tables[i]);
    }
    /* A publication covering tables outboxd does not relay publishes only
     * what the configured ones need: PostgreSQL refuses UPDATE and DELETE
     * on every table without a replica identity that a publication
     * publishes updates or deletes of (the default), which would break
     * the application's other tables (an outbox-only source needs inserts
     * only). A FOR TABLE publication keeps the default, so that updates of
     * an outbox row are seen and reported (on_update: skip). */
    const char *sep = " WITH (";
    if (ok && wide) {
        pub_ops_t o = needed_ops(src);
        bool trunc = o.trunc && c->server_version >= 110000;
        ok = outboxd_buf_printf(sql, "%spublish = '%s%s%s%s'", sep, o.ins ? "insert" : "",
                                o.upd ? ", update" : "", o.del ? ", delete" : "",
                                trunc ? ", truncate" : "");
        sep = ", ";
    }
    /* Otherwise rows of a partitioned outbox arrive under the partitions'
     * names, which match no configured table. */
    if (ok && c->any_partitioned && c->server_version >= 130000) {
        ok = outboxd_buf_printf(sql, "%spublish_via_partition_root = true", sep);
        sep = ", ";
    }
    if (ok && strcmp(sep, ", ") == 0) /* an option was written */
        ok = outboxd_buf_append_str(sql, ")");
    return ok;
}

static bool alter_add_table_sql(check_t *c, const outboxd_table_conf_t *t, outboxd_buf_t *sql)
{
    return outboxd_buf_append_str(sql, "ALTER PUBLICATION ") &&
           append_ident(c->conn, sql, c->src->publication) &&
           outboxd_buf_append_str(sql, " ADD TABLE ") && append_table(c->conn, sql, t) &&
           append_row_filter(c, sql, t);
}

static void identity_problem(check_t *c, const outboxd_table_conf_t *t, const char *what)
{
    outboxd_buf_t sql = {0};
    bool ok = outboxd_buf_append_str(&sql, "ALTER TABLE ") && append_table(c->conn, &sql, t) &&
              outboxd_buf_append_str(&sql, " REPLICA IDENTITY FULL");
    problem(c,
            "table %s.%s has no replica identity (no primary key), so UPDATE and DELETE on it "
            "fail while publication '%s' publishes updates or deletes%s; add a primary key, "
            "or run: %s",
            t->schema, t->name, c->src->publication, what,
            ok ? sql.data : "ALTER TABLE <table> REPLICA IDENTITY FULL");
    outboxd_buf_free(&sql);
}

/*
 * check without --create creates nothing, but must still find what would
 * stop run from creating it (not the owner of a table, FOR ALL TABLES
 * without superuser): the DDL runs in a transaction that is rolled back
 * (publication DDL is transactional). Returns true when it would succeed;
 * false with err filled.
 */
static bool ddl_would_succeed(check_t *c, const char *sql, char *err, size_t errsize)
{
    PGresult *res = run(c, "BEGIN", 0, NULL, err, errsize);
    if (!res)
        return false;
    PQclear(res);
    res = run(c, sql, 0, NULL, err, errsize);
    bool ok = res != NULL;
    PQclear(res);
    char e2[256];
    res = run(c, "ROLLBACK", 0, NULL, e2, sizeof(e2));
    PQclear(res);
    return ok;
}

/* A logical pgoutput slot of this database, still usable, that a
 * publication created now would be younger than (see check_slot_predates). */
static bool usable_slot_exists(check_t *c)
{
    const char *params[1] = {c->src->slot};
    PGresult *res = query(c, "look up the replication slot",
                          c->server_version >= 130000
                              ? "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = "
                                "$1 AND slot_type = 'logical' AND plugin = 'pgoutput' AND "
                                "database = current_database() AND wal_status IS DISTINCT FROM "
                                "'lost'"
                              : "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = "
                                "$1 AND slot_type = 'logical' AND plugin = 'pgoutput' AND "
                                "database = current_database()",
                          1, params);
    bool found = res && PQntuples(res) > 0;
    PQclear(res);
    return found;
}

/*
 * A FOR ALL TABLES or FOR TABLES IN SCHEMA publication that must publish
 * updates or deletes (cdc tables, on_update) would make PostgreSQL refuse
 * UPDATE and DELETE on every table in its scope without a replica
 * identity: the application's tables too. Such tables are a problem (the
 * publication is not created); false then.
 */
static bool scope_identity_ok(check_t *c)
{
    const outboxd_source_conf_t *src = c->src;
    if (!wide_scope(src))
        return true;
    bool all = src->publication_scope == OUTBOXD_PUB_ALL;
    pub_ops_t o = needed_ops(src);
    if (!o.upd && !o.del)
        return true;
    /* The schemas, one a line (a schema name with a line break in it is
     * not worth a second way). */
    outboxd_buf_t schemas = {0};
    for (size_t i = 0; i < src->n_tables; i++)
        if (!schema_seen(src, i, src->tables[i].schema))
            outboxd_buf_printf(&schemas, "%s%s", schemas.len ? "\n" : "", src->tables[i].schema);
    const char *params[1] = {schemas.data ? schemas.data : ""};
    /* Partitions are left out: their parent is listed. */
    PGresult *res =
        query(c, "look for tables without a replica identity",
              "SELECT pg_catalog.format('%I.%I', n.nspname, r.relname) FROM pg_catalog.pg_class r "
              "JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace "
              "WHERE r.relkind IN ('r', 'p') AND r.relpersistence = 'p' AND NOT r.relispartition "
              "AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "
              "AND ($2 OR n.nspname = ANY (pg_catalog.string_to_array($1, E'\\n'))) "
              "AND (r.relreplident = 'n' OR (r.relreplident = 'd' AND NOT EXISTS (SELECT 1 FROM "
              "pg_catalog.pg_index i WHERE i.indrelid = r.oid AND i.indisprimary))) "
              "ORDER BY 1 LIMIT 11",
              2, (const char *const[]){params[0], all ? "true" : "false"});
    outboxd_buf_free(&schemas);
    if (!res)
        return false;
    int n = PQntuples(res);
    if (n > 0) {
        outboxd_buf_t list = {0};
        for (int i = 0; i < n && i < 10; i++)
            outboxd_buf_printf(&list, "%s%s", i ? ", " : "", PQgetvalue(res, i, 0));
        problem(c,
                "publication '%s' (publication_scope: %s) would publish %s of every table in "
                "its scope, as %s need%s, and PostgreSQL then refuses UPDATE and DELETE on each "
                "of them without a replica identity: %s%s; give each a primary key (or ALTER "
                "TABLE ... REPLICA IDENTITY FULL), or set publication_scope: tables",
                src->publication, all ? "all" : "schema", o.del ? "updates and deletes" : "updates",
                o.del ? "cdc tables" : "on_update", o.del ? "" : "s", list.data ? list.data : "",
                n > 10 ? ", ..." : "");
        outboxd_buf_free(&list);
    }
    PQclear(res);
    return n == 0;
}

static void missing_publication(check_t *c)
{
    const outboxd_source_conf_t *src = c->src;
    outboxd_buf_t sql = {0};
    if (!create_publication_sql(c, &sql)) {
        problem(c, "publication '%s' does not exist (out of memory building its SQL)",
                src->publication);
        outboxd_buf_free(&sql);
        return;
    }
    /* A new publication publishes updates and deletes (the default; a wide
     * one only what the tables need), so it must not be created over a
     * table that would then refuse them. */
    bool identity_ok = true;
    pub_ops_t ops = needed_ops(src);
    bool wide = wide_scope(src);
    for (size_t i = 0; i < src->n_tables && (!wide || ops.upd || ops.del); i++) {
        if (c->tables[i].found && !c->tables[i].has_identity) {
            identity_problem(c, &src->tables[i], " (once the publication is created)");
            identity_ok = false;
        }
    }
    if (!scope_identity_ok(c))
        identity_ok = false;
    if (!src->create_publication) {
        problem(c, "publication '%s' does not exist; create it with: %s", src->publication,
                sql.data);
    } else if (!c->create) {
        /* outboxd check validates only (DESIGN.md section 5): what it would
         * create is left to run, or to check --create. */
        char err[1024];
        if (usable_slot_exists(c))
            problem(c,
                    "replication slot '%s' exists but publication '%s' does not: created now (by "
                    "outboxd run or check --create) it would be younger than the slot, and "
                    "pgoutput cannot decode the changes in between; run outboxd check --create, "
                    "which creates it and names the pg_replication_slot_advance that skips them "
                    "(rows written to the tables in that stretch are then not relayed: write "
                    "them again if they matter)",
                    src->slot, src->publication);
        else if (!c->tables_ok || !identity_ok || c->conn_lost)
            problem(c,
                    "publication '%s' does not exist; it can be created once the problems above "
                    "are fixed (or create it with: %s)",
                    src->publication, sql.data);
        else if (!ddl_would_succeed(c, sql.data, err, sizeof(err)))
            problem(c,
                    "publication '%s' does not exist, and creating it would fail (tried in a "
                    "transaction rolled back): %s; create it as a role that owns the tables and "
                    "has CREATE on the database, with: %s",
                    src->publication, err, sql.data);
        else
            note(c,
                 "publication '%s' does not exist yet; outboxd run creates it at its start "
                 "(create_publication: true), or outboxd check --create now, with: %s",
                 src->publication, sql.data);
    } else if (!c->tables_ok || !identity_ok || c->conn_lost) {
        problem(c,
                "publication '%s' does not exist; it is created once the problems above are "
                "fixed (or create it with: %s)",
                src->publication, sql.data);
    } else {
        char err[1024];
        PGresult *res = run(c, sql.data, 0, NULL, err, sizeof(err));
        if (res) {
            LOG_INFO(src->name, "created publication %s: %s", src->publication, sql.data);
            c->pub_exists = true;
            PQclear(res);
            res = run(c, "SELECT pg_catalog.pg_current_wal_lsn()::text", 0, NULL, err, sizeof(err));
            if (res) {
                snprintf(c->pub_created_lsn, sizeof(c->pub_created_lsn), "%s",
                         PQgetvalue(res, 0, 0));
                PQclear(res);
            }
        } else {
            problem(c,
                    "could not create publication '%s': %s; create it as a role that owns the "
                    "tables and has CREATE on the database, with: %s",
                    src->publication, err, sql.data);
        }
    }
    outboxd_buf_free(&sql);
}

/* The publish list an existing publication needs: what it has plus what
 * the tables need (needed_ops: inserts for outbox rows, updates when
 * on_update wants them, and for cdc tables updates, deletes and, with
 * truncate_events, truncates). Without them those changes never reach the
 * relay, and nothing would say so. */
static void publish_ops_problem(check_t *c, const PGresult *pub, pub_ops_t need)
{
    bool has[4] = {field_true(pub, 0, 0), field_true(pub, 0, 1), field_true(pub, 0, 2),
                   field_true(pub, 0, 3)};
    bool want[4] = {need.ins, need.upd, need.del, need.trunc && c->server_version >= 110000};
    static const char *const op[4] = {"insert", "update", "delete", "truncate"};
    static const char *const what[4] = {"inserts (outbox rows, cdc)", "updates (on_update, cdc)",
                                        "deletes (cdc)", "truncates (truncate_events)"};
    outboxd_buf_t missing = {0}, sql = {0};
    for (int i = 0; i < 4; i++)
        if (want[i] && !has[i])
            outboxd_buf_printf(&missing, "%s%s", missing.len ? ", " : "", what[i]);
    if (!missing.len)
        return;
    outboxd_buf_append_str(&sql, "ALTER PUBLICATION ");
    bool ok = append_ident(c->conn, &sql, c->src->publication) &&
              outboxd_buf_append_str(&sql, " SET (publish = '");
    bool first = true;
    for (int i = 0; ok && i < 4; i++) {
        if (!has[i] && !want[i])
            continue;
        ok = outboxd_buf_printf(&sql, "%s%s", first ? "" : ", ", op[i]);
        first = false;
    }
    ok = ok && outboxd_buf_append_str(&sql, "')");
    /* A publication over all tables or whole schemas that starts
     * publishing updates or deletes makes PostgreSQL refuse them on every
     * table in its scope without a replica identity. */
    bool wide = field_true(pub, 0, 4) || c->src->publication_scope == OUTBOXD_PUB_SCHEMA;
    bool adds_upd_del = (want[1] && !has[1]) || (want[2] && !has[2]);
    problem(c, "publication '%s' does not publish %s; run: %s%s", c->src->publication,
            missing.data ? missing.data : "what the tables need",
            ok ? sql.data : "ALTER PUBLICATION <publication> SET (publish = '...')",
            wide && adds_upd_del
                ? " (it covers all tables or whole schemas: first give every table in its scope "
                  "a primary key or REPLICA IDENTITY, or PostgreSQL refuses UPDATE and DELETE "
                  "on those without one)"
                : "");
    outboxd_buf_free(&missing);
    outboxd_buf_free(&sql);
}

/* Configured columns of an outbox table that a PostgreSQL 15 column list
 * leaves out: the relay would see them as NULL. One line per table. */
static void check_column_list(check_t *c, const outboxd_table_conf_t *t, const table_state_t *ts)
{
    const char *params[4] = {c->src->publication, t->schema, t->name, ts->oid};
    PGresult *res = query(c, "read the publication's column list",
                          "SELECT a.attname FROM pg_catalog.pg_attribute a, "
                          "pg_catalog.pg_publication_tables p "
                          "WHERE p.pubname = $1 AND p.schemaname = $2 AND p.tablename = $3 "
                          "AND a.attrelid = $4::oid AND a.attnum > 0 AND NOT a.attisdropped "
                          "AND NOT (a.attname = ANY (p.attnames))",
                          4, params);
    if (!res)
        return;
    colref_t *refs = PQntuples(res) > 0 ? alloc_colrefs(t) : NULL;
    size_t nrefs = refs ? table_colrefs(t, refs) : 0;
    outboxd_buf_t cols = {0};
    for (size_t r = 0; r < nrefs; r++)
        for (int k = 0; k < PQntuples(res); k++)
            if (strcmp(PQgetvalue(res, k, 0), refs[r].name) == 0)
                outboxd_buf_printf(&cols, "%s'%s'", cols.len ? ", " : "", refs[r].name);
    if (cols.len) {
        outboxd_buf_t tbl = {0}, pub = {0};
        bool ok =
            append_table(c->conn, &tbl, t) && append_ident(c->conn, &pub, c->src->publication);
        /* Dropping and re-adding in one transaction removes the column list
         * without a moment in which the table's rows go unpublished. */
        problem(c,
                "publication '%s' has a column list for %s.%s that leaves out configured "
                "column(s) %s; publish all columns with: BEGIN; ALTER PUBLICATION %s DROP "
                "TABLE %s; ALTER PUBLICATION %s ADD TABLE %s; COMMIT",
                c->src->publication, t->schema, t->name, cols.data, ok ? pub.data : "<publication>",
                ok ? tbl.data : "<table>", ok ? pub.data : "<publication>",
                ok ? tbl.data : "<table>");
        outboxd_buf_free(&tbl);
        outboxd_buf_free(&pub);
    }
    outboxd_buf_free(&cols);
    free(refs);
    PQclear(res);
}

/* A configured table the existing publication does not carry. */
static void add_missing_table(check_t *c, const outboxd_table_conf_t *t, bool publishes_upd_del,
                              bool has_identity)
{
    outboxd_buf_t sql = {0};
    if (!alter_add_table_sql(c, t, &sql)) {
        problem(c, "publication '%s' does not include %s.%s (out of memory building its SQL)",
                c->src->publication, t->schema, t->name);
        outboxd_buf_free(&sql);
        return;
    }
    bool identity_ok = has_identity || !publishes_upd_del;
    if (!identity_ok)
        identity_problem(c, t, " (once the table is added)");
    if (c->create && c->src->create_publication && identity_ok) {
        char err[1024];
        /* pgoutput decides membership at each change: with a slot that
         * was already reading, the table's changes committed before this
         * moment (a re-created outbox written while the relay was down)
         * are skipped for good, as the running watch reports too. */
        bool slot_before = usable_slot_exists(c);
        PGresult *res = run(c, sql.data, 0, NULL, err, sizeof(err));
        if (res && slot_before) {
            LOG_WARN(c->src->name,
                     "added %s.%s to publication %s (%s); rows committed to it before now and "
                     "after slot %s's position were NOT relayed and never will be (PostgreSQL "
                     "publishes a table's changes only from when it joined the publication): "
                     "if it had any, publish them again (write them anew) or use "
                     "publication_scope: schema or all, which covers re-created tables",
                     t->schema, t->name, c->src->publication, sql.data, c->src->slot);
            PQclear(res);
        } else if (res) {
            LOG_INFO(c->src->name, "added %s.%s to publication %s: %s", t->schema, t->name,
                     c->src->publication, sql.data);
            PQclear(res);
        } else {
            problem(c,
                    "publication '%s' does not include %s.%s and adding it failed: %s; run as "
                    "the owner of the publication and the table: %s",
                    c->src->publication, t->schema, t->name, err, sql.data);
        }
    } else if (!c->create && c->src->create_publication && identity_ok) {
        char err[1024];
        if (ddl_would_succeed(c, sql.data, err, sizeof(err)))
            note(c,
                 "publication '%s' does not include %s.%s yet; outboxd run adds it at its start "
                 "(create_publication: true), or outboxd check --create now, with: %s",
                 c->src->publication, t->schema, t->name, sql.data);
        else
            problem(c,
                    "publication '%s' does not include %s.%s, and adding it would fail (tried in "
                    "a transaction rolled back): %s; run as the owner of the publication and the "
                    "table: %s",
                    c->src->publication, t->schema, t->name, err, sql.data);
    } else {
        problem(c, "publication '%s' does not include %s.%s; run: %s", c->src->publication,
                t->schema, t->name, sql.data);
    }
    outboxd_buf_free(&sql);
}

/*
 * An existing publication narrower than publication_scope asks for. Not a
 * problem (the relay works with what the publication has), but a re-created
 * table would not be covered from its creation as configured.
 */
static void scope_mismatch(check_t *c, bool alltables)
{
    const outboxd_source_conf_t *src = c->src;
    if (alltables || src->publication_scope == OUTBOXD_PUB_TABLES)
        return;
    outboxd_buf_t pub = {0};
    if (!append_ident(c->conn, &pub, src->publication)) {
        outboxd_buf_free(&pub);
        return;
    }
    if (src->publication_scope == OUTBOXD_PUB_ALL) {
        LOG_WARN(src->name,
                 "publication %s lists tables, but publication_scope is all; re-create it to "
                 "cover tables created later (with the relay stopped): DROP PUBLICATION %s; "
                 "CREATE PUBLICATION %s FOR ALL TABLES",
                 src->publication, pub.data, pub.data);
    } else if (c->server_version >= 150000) {
        for (size_t i = 0; i < src->n_tables && !c->conn_lost; i++) {
            const char *schema = src->tables[i].schema;
            if (schema_seen(src, i, schema))
                continue;
            const char *params[2] = {src->publication, schema};
            PGresult *res = query(c, "read the publication's schemas",
                                  "SELECT 1 FROM pg_catalog.pg_publication_namespace pn "
                                  "JOIN pg_catalog.pg_publication p ON p.oid = pn.pnpubid "
                                  "JOIN pg_catalog.pg_namespace n ON n.oid = pn.pnnspid "
                                  "WHERE p.pubname = $1 AND n.nspname = $2",
                                  2, params);
            if (!res)
                continue;
            if (PQntuples(res) == 0) {
                outboxd_buf_t nsp = {0};
                if (append_ident(c->conn, &nsp, schema))
                    LOG_WARN(src->name,
                             "publication %s does not cover schema %s, but publication_scope is "
                             "schema; run: ALTER PUBLICATION %s ADD TABLES IN SCHEMA %s",
                             src->publication, schema, pub.data, nsp.data);
                outboxd_buf_free(&nsp);
            }
            PQclear(res);
        }
    }
    outboxd_buf_free(&pub);
}

/* 5. The publication exists, publishes inserts, and carries every table. */
static void check_publication(check_t *c)
{
    const outboxd_source_conf_t *src = c->src;
    if (c->server_version < 100000)
        return;
    /* pubtruncate is PostgreSQL 11+, pubviaroot 13+. */
    const char *sql =
        c->server_version >= 130000
            ? "SELECT pubinsert, pubupdate, pubdelete, pubtruncate, puballtables, pubviaroot "
              "FROM pg_catalog.pg_publication WHERE pubname = $1"
            : "SELECT pubinsert, pubupdate, pubdelete, false, puballtables, false "
              "FROM pg_catalog.pg_publication WHERE pubname = $1";
    const char *params[1] = {src->publication};
    PGresult *pub = query(c, "look up the publication", sql, 1, params);
    if (!pub)
        return;
    if (PQntuples(pub) == 0) {
        PQclear(pub);
        missing_publication(c);
        return;
    }
    c->pub_exists = true;
    pub_ops_t need = needed_ops(src);
    need.ins = src->n_tables > 0;
    publish_ops_problem(c, pub, need);
    bool publishes_upd_del = field_true(pub, 0, 1) || field_true(pub, 0, 2);
    bool viaroot = field_true(pub, 0, 5);
    bool alltables = field_true(pub, 0, 4);
    PQclear(pub);
    scope_mismatch(c, alltables);

    for (size_t i = 0; i < src->n_tables && !c->conn_lost; i++) {
        const outboxd_table_conf_t *t = &src->tables[i];
        const table_state_t *ts = &c->tables[i];
        if (!ts->found)
            continue; /* reported in step 3 */
        if (ts->partitioned && !viaroot) {
            /* pg_publication_tables lists the partitions then, not the
             * configured table, so membership is not checked until fixed. */
            outboxd_buf_t fix = {0};
            outboxd_buf_append_str(&fix, "ALTER PUBLICATION ");
            bool ok = append_ident(c->conn, &fix, src->publication) &&
                      outboxd_buf_append_str(&fix, " SET (publish_via_partition_root = true)");
            problem(c,
                    "publication '%s' would publish rows of partitioned table %s.%s under "
                    "its partitions' names; run: %s",
                    src->publication, t->schema, t->name,
                    ok ? fix.data
                       : "ALTER PUBLICATION <publication> SET (publish_via_partition_root = "
                         "true)");
            outboxd_buf_free(&fix);
            continue;
        }
        const char *mparams[3] = {src->publication, t->schema, t->name};
        PGresult *res = query(c, "check the publication's tables",
                              "SELECT 1 FROM pg_catalog.pg_publication_tables "
                              "WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                              3, mparams);
        if (!res)
            continue;
        bool member = PQntuples(res) > 0;
        PQclear(res);
        if (!member) {
            add_missing_table(c, t, publishes_upd_del, ts->has_identity);
            continue;
        }
        if (!ts->has_identity && publishes_upd_del)
            identity_problem(c, t, "");
        if (t->row_filter || c->server_version >= 150000)
            check_row_filter(c, t);
        if (t->mode == OUTBOXD_MODE_OUTBOX && c->server_version >= 150000)
            check_column_list(c, t, ts);
    }
}

/* A configured row_filter the publication does not have (it was made
 * before the key was set, or on a server before 15), or a row filter the
 * configuration does not name (a reused publication's): rows it leaves out
 * would never reach the relay, and nothing would say so. A filter that
 * differs from the configured one is not compared (PostgreSQL deparses
 * it); a reload that changes row_filter warns. */
static void check_row_filter(check_t *c, const outboxd_table_conf_t *t)
{
    if (c->server_version < 150000) {
        problem(c,
                "table %s.%s: row_filter needs PostgreSQL 15 or later (publication WHERE); "
                "remove it or upgrade",
                t->schema, t->name);
        return;
    }
    const char *params[3] = {c->src->publication, t->schema, t->name};
    PGresult *res = query(c, "check the publication's row filter",
                          "SELECT rowfilter IS NULL, coalesce(rowfilter, '') FROM "
                          "pg_catalog.pg_publication_tables "
                          "WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
                          3, params);
    if (!res)
        return;
    bool none = PQntuples(res) > 0 && PQgetvalue(res, 0, 0)[0] == 't';
    if (!t->row_filter) {
        if (PQntuples(res) > 0 && !none) {
            outboxd_buf_t fix = {0};
            bool ok = outboxd_buf_append_str(&fix, "BEGIN; ALTER PUBLICATION ") &&
                      append_ident(c->conn, &fix, c->src->publication) &&
                      outboxd_buf_append_str(&fix, " DROP TABLE ") &&
                      append_table(c->conn, &fix, t) && outboxd_buf_append_str(&fix, "; ") &&
                      alter_add_table_sql(c, t, &fix) && outboxd_buf_append_str(&fix, "; COMMIT");
            const char *how =
                ok ? fix.data : "ALTER PUBLICATION ... DROP TABLE ...; ... ADD TABLE ...";
            if (t->mode == OUTBOXD_MODE_CDC) {
                problem(c,
                        "publication '%s' publishes only the rows of %s.%s that match WHERE %s, "
                        "but no row_filter is configured, so the others would never be relayed "
                        "(and a snapshot would publish them): set row_filter to that expression "
                        "if it is meant, or publish every row with: %s",
                        c->src->publication, t->schema, t->name, PQgetvalue(res, 0, 1), how);
            } else if (c->relay) {
                /* An outbox table takes no row_filter: a filter someone put
                 * on the publication may be deliberate (internal types). */
                LOG_WARN(c->src->name,
                         "publication '%s' publishes only the rows of outbox table %s.%s that "
                         "match WHERE %s: the others are never relayed; if that is not meant, "
                         "publish every row with: %s",
                         c->src->publication, t->schema, t->name, PQgetvalue(res, 0, 1), how);
            } else {
                note(c,
                     "publication '%s' publishes only the rows of outbox table %s.%s that match "
                     "WHERE %s: the others are never relayed; if that is not meant, publish "
                     "every row with: %s",
                     c->src->publication, t->schema, t->name, PQgetvalue(res, 0, 1), how);
            }
            outboxd_buf_free(&fix);
        }
        PQclear(res);
        return;
    }
    PQclear(res);
    if (!none)
        return;
    outboxd_buf_t fix = {0};
    bool ok = outboxd_buf_append_str(&fix, "ALTER PUBLICATION ") &&
              append_ident(c->conn, &fix, c->src->publication) &&
              outboxd_buf_append_str(&fix, " DROP TABLE ") && append_table(c->conn, &fix, t) &&
              outboxd_buf_append_str(&fix, "; ") && alter_add_table_sql(c, t, &fix);
    problem(c, "publication '%s' publishes every row of %s.%s but row_filter is set; run: %s",
            c->src->publication, t->schema, t->name,
            ok ? fix.data : "ALTER PUBLICATION ... DROP TABLE ...; ... ADD TABLE ... WHERE (...)");
    outboxd_buf_free(&fix);
}

static void missing_slot(check_t *c)
{
    const outboxd_source_conf_t *src = c->src;
    outboxd_buf_t shown = {0};
    bool ok = outboxd_buf_append_str(&shown, "SELECT pg_create_logical_replication_slot(") &&
              append_literal(c->conn, &shown, src->slot) &&
              outboxd_buf_append_str(&shown, ", 'pgoutput')");
    const char *sql = ok ? shown.data
                         : "SELECT pg_create_logical_replication_slot(<slot>, "
                           "'pgoutput')";
    if (!src->create_slot) {
        problem(c, "replication slot '%s' does not exist; create it%s with: %s", src->slot,
                c->pub_exists ? "" : " after the publication", sql);
    } else if (!c->create) {
        /* Not made here: a slot that no relay reads keeps WAL for ever. */
        note(c,
             "replication slot '%s' does not exist yet; outboxd run creates it at its start "
             "(create_slot: true), or outboxd check --create now; rows committed before it "
             "exists are not relayed",
             src->slot);
    } else if (!c->wal_ok || !c->role_ok || !c->pub_exists || c->conn_lost) {
        /* Besides failing outright without wal_level/privilege, a slot made
         * before its publication cannot decode changes made in between:
         * pgoutput looks the publication up as of each change. */
        problem(c,
                "replication slot '%s' does not exist; it is created once the problems above "
                "are fixed (or create it with: %s)",
                src->slot, sql);
    } else {
        /* Waits for transactions already running to finish, as any logical
         * slot creation does. */
        const char *params[1] = {src->slot};
        char err[1024];
        PGresult *res = run(c,
                            "SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot($1, "
                            "'pgoutput')",
                            1, params, err, sizeof(err));
        if (res) {
            LOG_INFO(src->name, "created replication slot %s (pgoutput) at %s", src->slot,
                     PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "?");
            c->slot_created = true;
            PQclear(res);
        } else {
            problem(c, "could not create replication slot '%s': %s; create it with: %s", src->slot,
                    err, sql);
        }
    }
    outboxd_buf_free(&shown);
}

/*
 * A slot that already existed when this check created the publication:
 * pgoutput looks the publication up as of each change it decodes, so any
 * change between the slot's position and the publication's creation fails
 * with "publication does not exist" and the relay never gets past it.
 * Nothing in that range was published, so skipping it loses no event.
 */
static void check_slot_predates(check_t *c)
{
    const char *params[2] = {c->src->slot, c->pub_created_lsn};
    PGresult *res = query(c, "read the replication slot's position",
                          "SELECT confirmed_flush_lsn < $2::pg_lsn "
                          "FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                          2, params);
    if (!res)
        return;
    if (PQntuples(res) > 0 && field_true(res, 0, 0)) {
        outboxd_buf_t sql = {0};
        bool ok = outboxd_buf_append_str(&sql, "SELECT pg_replication_slot_advance(") &&
                  append_literal(c->conn, &sql, c->src->slot) &&
                  outboxd_buf_printf(&sql, ", '%s')", c->pub_created_lsn);
        problem(c,
                "replication slot '%s' is older than publication '%s', which was just "
                "created, so pgoutput cannot decode the changes in between; skip them with: "
                "%s (rows written to the tables in that stretch are then not relayed: write "
                "them again if they matter)",
                c->src->slot, c->src->publication,
                ok ? sql.data : "SELECT pg_replication_slot_advance(<slot>, <lsn>)");
        outboxd_buf_free(&sql);
    }
    PQclear(res);
}

/* 6. The slot exists (or is created), is logical with pgoutput, belongs to
 * this database and still has its WAL. */
static void check_slot(check_t *c)
{
    const outboxd_source_conf_t *src = c->src;
    if (c->server_version < 100000)
        return;
    /* wal_status is PostgreSQL 13+. */
    const char *sql = c->server_version >= 130000
                          ? "SELECT slot_type, plugin, database, current_database(), wal_status "
                            "FROM pg_catalog.pg_replication_slots WHERE slot_name = $1"
                          : "SELECT slot_type, plugin, database, current_database(), NULL "
                            "FROM pg_catalog.pg_replication_slots WHERE slot_name = $1";
    const char *params[1] = {src->slot};
    PGresult *res = query(c, "look up the replication slot", sql, 1, params);
    if (!res)
        return;
    if (PQntuples(res) == 0) {
        PQclear(res);
        missing_slot(c);
        return;
    }
    const char *type = PQgetvalue(res, 0, 0);
    const char *plugin = PQgetvalue(res, 0, 1);
    const char *db = PQgetvalue(res, 0, 2);
    const char *curdb = PQgetvalue(res, 0, 3);
    const char *wal_status = PQgetisnull(res, 0, 4) ? "" : PQgetvalue(res, 0, 4);
    outboxd_buf_t drop = {0};
    bool ok = outboxd_buf_append_str(&drop, "SELECT pg_drop_replication_slot(") &&
              append_literal(c->conn, &drop, src->slot) && outboxd_buf_append_str(&drop, ")");
    const char *drop_sql = ok ? drop.data : "SELECT pg_drop_replication_slot(<slot>)";
    if (strcmp(type, "logical") != 0) {
        problem(c,
                "replication slot '%s' is a %s slot, but outboxd needs a logical one; set slot "
                "to another name, or drop it with: %s",
                src->slot, type, drop_sql);
    } else {
        if (strcmp(plugin, "pgoutput") != 0)
            problem(c,
                    "replication slot '%s' uses plugin '%s', but outboxd needs 'pgoutput'; set "
                    "slot to another name, or drop it (its unread changes are lost) with: %s",
                    src->slot, plugin, drop_sql);
        /* a lost slot is recreated anyway, advancing it would not help */
        if (c->pub_created_lsn[0] && strcmp(wal_status, "lost") != 0)
            check_slot_predates(c);
        if (strcmp(db, curdb) != 0)
            problem(c,
                    "replication slot '%s' belongs to database '%s' but the dsn connects to "
                    "database '%s'; point the dsn at '%s' or set slot to another name",
                    src->slot, db, curdb, db);
        if (strcmp(wal_status, "lost") == 0)
            problem(c,
                    "replication slot '%s' has lost required WAL; drop and recreate it (events "
                    "written since it was lost cannot be relayed): %s",
                    src->slot, drop_sql);
        else if (strcmp(wal_status, "unreserved") == 0)
            LOG_WARN(src->name,
                     "replication slot %s is beyond max_slot_wal_keep_size (wal_status "
                     "unreserved); its WAL will be removed at the next checkpoint unless "
                     "outboxd catches up",
                     src->slot);
    }
    outboxd_buf_free(&drop);
    PQclear(res);
}

/* A replay's slot copy left by a crash holds WAL until the next replay of
 * the source drops it: say so (not a problem for the relay itself). */
static void warn_leftover_replay(check_t *c)
{
    char name[128];
    snprintf(name, sizeof(name), "%s%s", c->src->slot, OUTBOXD_REPLAY_SUFFIX);
    const char *params[1] = {name};
    char err[512];
    PGresult *res = run(c,
                        "SELECT coalesce(restart_lsn::text, '') FROM "
                        "pg_catalog.pg_replication_slots WHERE slot_name = $1 AND NOT active",
                        1, params, err, sizeof(err));
    if (res && PQntuples(res) > 0)
        LOG_WARN(c->src->name,
                 "replay slot %s was left by an interrupted `outboxd replay` and holds WAL from "
                 "%s: run that replay again to finish it (it drops the slot), or drop it with "
                 "SELECT pg_drop_replication_slot('%s')",
                 name, PQgetvalue(res, 0, 0), name);
    PQclear(res);
}

/*
 * 7. With replay_window: the retention slot (relay/replay.h), a logical
 * pgoutput slot the relay keeps that window behind the live one. Created as
 * a copy of the live slot, so it holds from the live position on (and the
 * creation does not wait for running transactions as a new slot would).
 */
static void check_retention_slot(check_t *c)
{
    const outboxd_source_conf_t *src = c->src;
    if (!src->retention_slot || c->server_version < 120000 || c->conn_lost) {
        if (src->retention_slot && c->server_version && c->server_version < 120000)
            retention_problem(
                c, "replay_window needs PostgreSQL 12 or later (pg_copy_logical_replication_"
                   "slot); remove replay_window for this source");
        return;
    }
    const char *params[2] = {src->retention_slot, src->slot};
    /* wal_status is PostgreSQL 13+. */
    PGresult *res =
        query(c, "look up the retention slot",
              c->server_version >= 130000
                  ? "SELECT slot_type, coalesce(plugin, ''), "
                    "coalesce(confirmed_flush_lsn::text, ''), CASE WHEN restart_lsn IS NULL THEN "
                    "'lost' ELSE coalesce(wal_status, '') END "
                    "FROM pg_catalog.pg_replication_slots WHERE slot_name = $1"
                  : "SELECT slot_type, coalesce(plugin, ''), "
                    "coalesce(confirmed_flush_lsn::text, ''), '' "
                    "FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
              1, params);
    if (!res)
        return;
    if (PQntuples(res) > 0) {
        warn_leftover_replay(c);
        if (strcmp(PQgetvalue(res, 0, 0), "logical") != 0 ||
            strcmp(PQgetvalue(res, 0, 1), "pgoutput") != 0)
            retention_problem(
                c,
                "retention slot '%s' exists but is not a logical pgoutput slot; drop it with "
                "SELECT pg_drop_replication_slot('%s') and run outboxd check --create",
                src->retention_slot, src->retention_slot);
        else if (strcmp(PQgetvalue(res, 0, 3), "lost") == 0)
            /* max_slot_wal_keep_size removed WAL it kept: nothing can be
             * replayed from it, and a replay's copy of it fails. */
            retention_problem(
                c,
                "retention slot '%s' has lost required WAL (wal_status lost: "
                "max_slot_wal_keep_size removed it), so nothing can be replayed from it; "
                "drop it with SELECT pg_drop_replication_slot('%s') and run outboxd check "
                "--create (or restart the relay) to create it anew: events committed after "
                "that can be replayed",
                src->retention_slot, src->retention_slot);
        PQclear(res);
        return;
    }
    PQclear(res);
    if (src->create_slot && !c->create) {
        note(c,
             "retention slot '%s' (replay_window) does not exist yet; outboxd run creates it at "
             "its start (create_slot: true), or outboxd check --create now; events committed "
             "before it exists cannot be replayed",
             src->retention_slot);
        return;
    }
    if (!src->create_slot || !c->wal_ok || !c->role_ok || !c->pub_exists) {
        retention_problem(
            c,
            "retention slot '%s' (replay_window) does not exist; run outboxd check --create "
            "or start the relay (create_slot: true) to create it, or create it with: SELECT "
            "pg_copy_logical_replication_slot('%s', '%s')",
            src->retention_slot, src->slot, src->retention_slot);
        return;
    }
    char err[1024];
    res = run(c,
              "SELECT lsn FROM pg_catalog.pg_copy_logical_replication_slot($2, $1) "
              "WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots "
              "WHERE slot_name = $2)",
              2, params, err, sizeof(err));
    if (res && PQntuples(res) == 0) {
        /* No live slot to copy (a check that could not create it). */
        PQclear(res);
        res = run(c,
                  "SELECT lsn FROM pg_catalog.pg_create_logical_replication_slot($1, "
                  "'pgoutput')",
                  1, params, err, sizeof(err));
    }
    if (!res) {
        retention_problem(c, "could not create retention slot '%s': %s", src->retention_slot, err);
        return;
    }
    LOG_INFO(src->name,
             "created retention slot %s at %s: `outboxd replay` can replay events committed "
             "from this position on",
             src->retention_slot, PQntuples(res) > 0 ? PQgetvalue(res, 0, 0) : "?");
    PQclear(res);
}

/*
 * The checks in order (each later one leans on what the earlier found), on
 * c->conn. Its notices go to the log only meanwhile (c is on the caller's
 * stack), then back to the processor before: libpq's default, which takes
 * no argument (a replication connection outlives the check; repl.c sets
 * none).
 */
static void run_checks(check_t *c)
{
    PQnoticeProcessor before = PQsetNoticeProcessor(c->conn, notice_to_log, c);
    c->tables = calloc(c->src->n_tables ? c->src->n_tables : 1, sizeof(table_state_t));
    if (!c->tables) {
        problem(c, "out of memory while checking PostgreSQL");
    } else {
        check_settings(c);
        check_role(c);
        check_tables(c);
        check_columns(c);
        check_dbz_schemas(c);
        check_publication(c);
        check_slot(c);
        check_retention_slot(c);
    }
    free(c->tables);
    c->tables = NULL;
    PQsetNoticeProcessor(c->conn, before, NULL);
}

/*
 * For a check in a source's loop: the session's statement_timeout is half
 * the bound, so a query that only waits for a lock (an ALTER PUBLICATION
 * behind a long transaction) is cancelled by the server, and reported as
 * such, before the bound gives the connection up. 0; else conn is closed:
 * -1 when a stop interrupted it (not a problem), 1 with the failure in
 * report ("source NAME: WHAT failed: ...").
 */
static int bound_session(PGconn *conn, const outboxd_source_conf_t *src, int timeout_ms,
                         atomic_int *stop, const char *what, outboxd_buf_t *report)
{
    char set[96], err[1024];
    snprintf(set, sizeof(set), "SET statement_timeout = %d", timeout_ms / 2);
    PGresult *res =
        outboxd_pg_exec_bounded(conn, set, 0, NULL, NULL, timeout_ms, stop, err, sizeof(err));
    if (res) {
        PQclear(res);
        return 0;
    }
    PQfinish(conn);
    if (stop && atomic_load(stop))
        return -1;
    outboxd_buf_printf(report, "source %s: %s failed: ", src->name, what);
    append_flat(report, err);
    outboxd_buf_append_str(report, "\n");
    return 1;
}

static int check_on_new_conn(const outboxd_source_conf_t *src, bool create, outboxd_buf_t *report,
                             bool *created_slot, bool relay, int timeout_ms, atomic_int *stop,
                             outboxd_pg_domains_t *domains)
{
    if (created_slot)
        *created_slot = false;
    char err[1024];
    PGconn *conn = outboxd_pg_connect(src, false, err, sizeof(err));
    if (!conn) {
        outboxd_buf_printf(report, "source %s: cannot connect to PostgreSQL: ", src->name);
        append_flat(report, err);
        if (outboxd_connhint_pg(err))
            outboxd_buf_append_str(report, "\n"); /* pgconn named the fix */
        else if (src->password_file)
            outboxd_buf_printf(report,
                               "; check the dsn (host, port, dbname, user) and the password in "
                               "%s\n",
                               src->password_file);
        else
            outboxd_buf_append_str(report, "; check the dsn (host, port, dbname, user), and set "
                                           "password_file if the server asks for a password\n");
        return -1;
    }
    if (timeout_ms > 0) {
        int rc = bound_session(conn, src, timeout_ms, stop, "check", report);
        if (rc != 0)
            return rc;
    }
    check_t c = {
        .src = src,
        .conn = conn,
        .create = create,
        .report = report,
        .server_version = PQserverVersion(conn),
        .timeout_ms = timeout_ms,
        .stop = stop,
        .relay = relay,
        .domains = domains,
    };
    run_checks(&c);
    PQfinish(conn);
    if (created_slot)
        *created_slot = c.slot_created;
    if (stop && atomic_load(stop))
        return -1; /* queries cut short by a stop are no problems */
    return c.problems;
}

int outboxd_pgsetup_check(const outboxd_source_conf_t *src, bool create, outboxd_buf_t *report,
                          bool *created_slot)
{
    return check_on_new_conn(src, create, report, created_slot, false, 0, NULL, NULL);
}

int outboxd_pgsetup_check_in_loop(const outboxd_source_conf_t *src, int timeout_ms,
                                  atomic_int *stop, outboxd_buf_t *report, bool *created_slot,
                                  outboxd_pg_domains_t *domains)
{
    return check_on_new_conn(src, true, report, created_slot, true,
                             outboxd_pgsetup_loop_bound(timeout_ms), stop, domains);
}

int outboxd_pgsetup_check_repl(const outboxd_source_conf_t *src, PGconn *conn, bool create,
                               outboxd_buf_t *report, bool *created_slot, bool *conn_lost,
                               outboxd_pg_domains_t *domains)
{
    check_t c = {
        .domains = domains,
        .src = src,
        .conn = conn,
        .create = create,
        .report = report,
        .simple = true,
        .server_version = PQserverVersion(conn),
        .relay = true,
    };
    if (!too_old(&c)) /* a 9.x walsender takes no SQL: say only that */
        run_checks(&c);
    *created_slot = c.slot_created;
    *conn_lost = c.conn_lost;
    return c.problems;
}

int outboxd_pgsetup_watch(const outboxd_source_conf_t *src, int timeout_ms, atomic_int *stop,
                          PGconn **connp, outboxd_buf_t *report)
{
    char err[1024];
    /* The check runs in the source's loop, which sends the walsender its
     * status updates: its queries are bounded well below the server's
     * wal_sender_timeout and Kafka's transaction.timeout.ms (60 s by
     * default), and its statement_timeout below that bound, so a query
     * that only waits for a lock is cancelled by the server (and reported
     * as such) before the connection would be given up as silent. */
    timeout_ms = outboxd_pgsetup_loop_bound(timeout_ms);
    if (!*connp) {
        PGconn *conn = outboxd_pg_connect(src, false, err, sizeof(err));
        if (!conn) {
            outboxd_buf_printf(report, "source %s: catalog check could not connect: ", src->name);
            append_flat(report, err);
            outboxd_buf_append_str(report, "\n");
            return -1;
        }
        /* A stuck catalog must not hold up the stream for long. */
        int rc = bound_session(conn, src, timeout_ms, stop, "catalog check", report);
        if (rc != 0)
            return rc;
        *connp = conn;
    }
    check_t c = {
        .src = src,
        .conn = *connp,
        .create = true,
        .report = report,
        .server_version = PQserverVersion(*connp),
        .timeout_ms = timeout_ms,
        .stop = stop,
    };
    PQsetNoticeProcessor(c.conn, notice_to_log, &c);
    /* One row per configured table: exists, partitioned, member of the
     * publication, has a replica identity, and whether the publication
     * publishes updates or deletes (then adding a table without one would
     * break the application's UPDATE and DELETE). */
    static const char *sql =
        "SELECT c.oid IS NOT NULL, coalesce(c.relkind = 'p', false), "
        "EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt "
        "        WHERE pt.pubname = $1 AND pt.schemaname = $2 AND pt.tablename = $3), "
        "coalesce(CASE c.relreplident "
        "  WHEN 'f' THEN true "
        "  WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i "
        "                        WHERE i.indrelid = c.oid AND i.indisprimary) "
        "  WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_catalog.pg_index i "
        "                        WHERE i.indrelid = c.oid AND i.indisreplident) "
        "  ELSE false END, false), "
        "EXISTS (SELECT 1 FROM pg_catalog.pg_publication p WHERE p.pubname = $1 "
        "        AND (p.pubupdate OR p.pubdelete)), c.oid "
        "FROM (SELECT pg_catalog.to_regclass(pg_catalog.format('%I.%I', $2::text, $3::text)) "
        "      AS oid) r LEFT JOIN pg_catalog.pg_class c ON c.oid = r.oid";
    for (size_t i = 0; i < src->n_tables && !c.conn_lost; i++) {
        const outboxd_table_conf_t *t = &src->tables[i];
        const char *params[3] = {src->publication, t->schema, t->name};
        PGresult *res = run(&c, sql, 3, params, err, sizeof(err));
        if (!res) {
            outboxd_buf_printf(report, "source %s: catalog check failed: ", src->name);
            append_flat(report, err);
            outboxd_buf_append_str(report, "\n");
            c.problems++;
            break;
        }
        bool exists = field_true(res, 0, 0), partitioned = field_true(res, 0, 1);
        bool member = field_true(res, 0, 2), identity = field_true(res, 0, 3);
        bool upd_del = field_true(res, 0, 4);
        char oid[16];
        snprintf(oid, sizeof(oid), "%s", PQgetisnull(res, 0, 5) ? "" : PQgetvalue(res, 0, 5));
        PQclear(res);
        if (!exists) {
            problem(&c,
                    "configured table %s.%s does not exist any more (dropped or renamed?): rows "
                    "written under its new name are not relayed; rename it back, or create it "
                    "again and it is added to publication '%s'%s",
                    t->schema, t->name, src->publication,
                    src->create_publication ? "" : " by hand");
            continue;
        }
        if (member || partitioned) /* partitions carry membership without viaroot */
            continue;
        outboxd_buf_t add = {0};
        bool ok = alter_add_table_sql(&c, t, &add);
        if (src->create_publication && ok && (identity || !upd_del)) {
            PGresult *r2 = run(&c, add.data, 0, NULL, err, sizeof(err));
            if (r2) {
                PQclear(r2);
                problem(&c,
                        "table %s.%s (oid %s) was not in publication '%s' (re-created or renamed "
                        "into place while the relay ran?) and has been added now (%s): rows "
                        "written to it before this moment were NOT relayed and never will be; "
                        "republish them by hand (e.g. INSERT them again)",
                        t->schema, t->name, oid, src->publication, add.data);
            } else {
                problem(&c,
                        "table %s.%s is not in publication '%s', so its rows are NOT relayed, "
                        "and adding it failed: %s; run: %s",
                        t->schema, t->name, src->publication, err, add.data);
            }
        } else if (ok && !identity && upd_del) {
            problem(&c,
                    "table %s.%s is not in publication '%s', so its rows are NOT relayed; it has "
                    "no replica identity, so add a primary key first, then run: %s",
                    t->schema, t->name, src->publication, add.data);
        } else {
            problem(&c,
                    "table %s.%s is not in publication '%s', so its rows are NOT relayed; run: %s",
                    t->schema, t->name, src->publication, ok ? add.data : "ALTER PUBLICATION ...");
        }
        outboxd_buf_free(&add);
    }
    if (c.conn_lost) {
        PQfinish(*connp);
        *connp = NULL;
    } else {
        PQsetNoticeProcessor(*connp, notice_between_checks, NULL);
    }
    if (stop && atomic_load(stop))
        return -1; /* interrupted by the relay stopping: not a problem to report */
    return c.problems;
}

/*
 * The ${column} placeholders of each outbox table's topic template against
 * the table's columns. Only `outboxd check` asks: at run time such rows go
 * to the dead-letter topic (the router logs one ERROR per relation) rather
 * than the source refusing to start.
 */
int outboxd_pgsetup_check_topics(const outboxd_source_conf_t *src, outboxd_buf_t *report)
{
    char err[1024];
    PGconn *conn = outboxd_pg_connect(src, false, err, sizeof(err));
    if (!conn)
        return 0; /* outboxd_pgsetup_check reports the connection */
    check_t c = {.src = src, .conn = conn, .report = report};
    PQsetNoticeProcessor(conn, notice_to_log, &c);
    static const char *sql = "SELECT a.attname FROM pg_catalog.pg_attribute a "
                             "WHERE a.attrelid = pg_catalog.to_regclass(pg_catalog.format("
                             "'%I.%I', $1::text, $2::text)) AND a.attnum > 0 "
                             "AND NOT a.attisdropped";
    for (size_t i = 0; i < src->n_tables && !c.conn_lost; i++) {
        const outboxd_table_conf_t *t = &src->tables[i];
        if (t->mode != OUTBOXD_MODE_OUTBOX || !t->topic)
            continue;
        const char *params[2] = {t->schema, t->name};
        PGresult *res = query(&c, "read a table's columns", sql, 2, params);
        if (!res)
            continue;
        if (PQntuples(res) == 0) { /* no such table: reported by the main check */
            PQclear(res);
            continue;
        }
        char where[64];
        table_where(t, where, sizeof(where));
        for (const char *p = t->topic; (p = strstr(p, "${")) != NULL;) {
            const char *end = strchr(p + 2, '}');
            if (!end)
                break; /* the config loader refuses this already */
            int len = (int)(end - p - 2);
            bool found = false;
            for (int k = 0; k < PQntuples(res) && !found; k++) {
                const char *name = PQgetvalue(res, k, 0);
                found = (int)strlen(name) == len && strncmp(name, p + 2, (size_t)len) == 0;
            }
            if (!found)
                problem(&c,
                        "table %s.%s has no column '%.*s', which the topic template '%s' "
                        "names, so every row would go to the dead-letter topic; add the column "
                        "or correct topic%s",
                        t->schema, t->name, len, p + 2, t->topic, where);
            p = end + 1;
        }
        PQclear(res);
    }
    PQfinish(conn);
    return c.problems;
}

int outboxd_pgsetup_loop_bound(int timeout_ms)
{
    return timeout_ms <= 0 || timeout_ms > OUTBOXD_PGSETUP_WATCH_MAX_MS
               ? OUTBOXD_PGSETUP_WATCH_MAX_MS
               : timeout_ms;
}

/*
 * Opening PostgreSQL connections for a source.
 */
#include "outboxd/relay/pgconn.h"

#include "outboxd/relay/connhint.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "outboxd/common/util.h"

PGconn *outboxd_pg_connect(const outboxd_source_conf_t *src, bool replication, char *errstr,
                           size_t errstr_size)
{
    char appname[128];
    snprintf(appname, sizeof(appname), "outboxd-%s", src->name);
    /* The walsender formats values with these settings, so timestamps in the
     * stream are ISO and UTC regardless of the server's defaults. */
    const char *keys[12];
    const char *vals[12];
    int i = 0;
    /* Defaults that the dsn may override (it is expanded after them): a
     * connection attempt to an address that drops packets fails after 10 s
     * instead of the kernel's two minutes of SYN retries, and TCP keepalives
     * find a dead peer of an idle connection in about a minute instead of
     * the kernel's two hours. The replication stream has its own, stricter
     * check (relay.wal_receiver_timeout_ms, source.c). */
    keys[i] = "connect_timeout";
    vals[i++] = "10";
    keys[i] = "keepalives_idle";
    vals[i++] = "30";
    keys[i] = "keepalives_interval";
    vals[i++] = "10";
    keys[i] = "keepalives_count";
    vals[i++] = "3";
    keys[i] = "dbname";
    vals[i++] = src->dsn; /* expand_dbname: the dsn is parsed as a conninfo */
    /* A keyword given after the dsn replaces the dsn's own, so options
     * set in the dsn (a statement_timeout, a wal_sender_timeout) are kept
     * by joining them with ours; ours come last and win where both set the
     * same parameter, since the stream's parsing depends on them. */
    const char *ours =
        "-c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3";
    char options[1024];
    snprintf(options, sizeof(options), "%s", ours);
    PQconninfoOption *parsed = PQconninfoParse(src->dsn, NULL);
    for (PQconninfoOption *o = parsed; o && o->keyword; o++) {
        if (strcmp(o->keyword, "options") == 0 && o->val && o->val[0]) {
            int n = snprintf(options, sizeof(options), "%s %s", o->val, ours);
            if (n < 0 || (size_t)n >= sizeof(options)) {
                snprintf(errstr, errstr_size,
                         "the dsn's options are longer than %zu bytes: shorten them",
                         sizeof(options) - strlen(ours) - 2);
                PQconninfoFree(parsed);
                return NULL;
            }
        }
    }
    PQconninfoFree(parsed);
    keys[i] = "options";
    vals[i++] = options;
    keys[i] = "application_name";
    vals[i++] = appname;
    /* Text reaches us converted to UTF-8 (pgoutput converts to the client
     * encoding), which the Avro strings and the dead-letter JSON need. After
     * the dsn, so it wins over a client_encoding given there. */
    keys[i] = "client_encoding";
    vals[i++] = "UTF8";
    if (src->password) {
        keys[i] = "password";
        vals[i++] = src->password;
    }
    if (replication) {
        keys[i] = "replication";
        vals[i++] = "database";
    }
    keys[i] = NULL;
    vals[i] = NULL;
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        snprintf(errstr, errstr_size, "%s", PQerrorMessage(conn));
        size_t n = strlen(errstr);
        while (n > 0 && (errstr[n - 1] == '\n' || errstr[n - 1] == ' '))
            errstr[--n] = '\0';
        /* libpq's TLS and authentication failures name no setting; add the
         * dsn key or file that fixes them. */
        const char *hint = outboxd_connhint_pg(errstr);
        if (hint && n + 2 < errstr_size)
            snprintf(errstr + n, errstr_size - n, "; %s", hint);
        PQfinish(conn);
        return NULL;
    }
    /* A SQL_ASCII database stores any bytes and cannot convert them: asked
     * for UTF8, its walsender validates each value and stops the stream at
     * the first bad byte, for good. Take its bytes as they are instead; the
     * router dead-letters values that are not UTF-8. */
    const char *server_enc = PQparameterStatus(conn, "server_encoding");
    const char *want = server_enc && strcmp(server_enc, "SQL_ASCII") == 0 ? "SQL_ASCII" : "UTF8";
    const char *enc = PQparameterStatus(conn, "client_encoding");
    if ((!enc || strcmp(enc, want) != 0) && PQsetClientEncoding(conn, want) != 0) {
        snprintf(errstr, errstr_size, "cannot set client_encoding to %s: %s", want,
                 PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    enc = PQparameterStatus(conn, "client_encoding");
    if (!enc || strcmp(enc, want) != 0) {
        snprintf(errstr, errstr_size,
                 "the server did not accept client_encoding %s (it reports '%s'); outboxd "
                 "needs text as UTF-8",
                 want, enc ? enc : "nothing");
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

void outboxd_pg_cancel(PGconn *conn)
{
    PGcancel *c = conn ? PQgetCancel(conn) : NULL;
    if (!c)
        return;
    char e[256];
    (void)PQcancel(c, e, sizeof(e));
    PQfreeCancel(c);
}

void outboxd_pg_chomp(char *msg)
{
    size_t n = strlen(msg);
    while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
        msg[--n] = '\0';
}

void outboxd_pg_error(PGconn *conn, const char *what, char *errstr, size_t errstr_size)
{
    snprintf(errstr, errstr_size, "%s%s%s", what ? what : "", what ? ": " : "",
             PQerrorMessage(conn));
    outboxd_pg_chomp(errstr);
}

PGresult *outboxd_pg_exec_bounded(PGconn *conn, const char *sql, int nparams,
                                  const char *const *params, const char *what, int timeout_ms,
                                  atomic_int *stop, char *errstr, size_t errstr_size)
{
    int sent = nparams == 0 && !params
                   ? PQsendQuery(conn, sql)
                   : PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (!sent) {
        outboxd_pg_error(conn, what, errstr, errstr_size);
        return NULL;
    }
    const char *sep = what ? ": " : "";
    what = what ? what : "";
    int64_t start = outboxd_now_ms();
    PGresult *last = NULL;
    for (;;) {
        while (PQisBusy(conn)) {
            if (stop && atomic_load(stop)) {
                snprintf(errstr, errstr_size, "%s%sinterrupted by a stop", what, sep);
                PQclear(last);
                return NULL;
            }
            int64_t waited = outboxd_now_ms() - start;
            if (timeout_ms > 0 && waited >= timeout_ms) {
                snprintf(errstr, errstr_size,
                         "%s%sno answer from PostgreSQL for %lld ms (limit %d ms, set by "
                         "relay.wal_receiver_timeout_ms): the connection is presumed dead "
                         "(a frozen server or a half-open path)",
                         what, sep, (long long)waited, timeout_ms);
                PQclear(last);
                return NULL;
            }
            /* Short polls: a stop is seen within 100 ms. */
            struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
            int prc = poll(&pfd, 1, 100);
            if (prc < 0 && errno != EINTR) {
                snprintf(errstr, errstr_size, "%s%spoll: %s", what, sep, strerror(errno));
                PQclear(last);
                return NULL;
            }
            /* Bytes came: the server is alive, the limit is on silence. */
            if (prc > 0 && (pfd.revents & POLLIN))
                start = outboxd_now_ms();
            /* Every round, not only when the socket is readable: with TLS
             * the answer may already sit decrypted in libpq's buffers. A
             * non-blocking read, cheap when there is nothing. */
            if (!PQconsumeInput(conn)) {
                outboxd_pg_error(conn, what[0] ? what : NULL, errstr, errstr_size);
                PQclear(last);
                return NULL;
            }
        }
        PGresult *res = PQgetResult(conn);
        if (!res)
            break;
        ExecStatusType st = PQresultStatus(res);
        PQclear(last);
        last = res;
        /* As PQexec: a COPY result is the end (the connection is in COPY
         * mode now; asking again would return it again). */
        if (st == PGRES_COPY_BOTH || st == PGRES_COPY_OUT || st == PGRES_COPY_IN)
            break;
    }
    if (!last)
        outboxd_pg_error(conn, what[0] ? what : NULL, errstr, errstr_size);
    return last;
}

PGresult *outboxd_pg_query_bounded(PGconn *conn, const char *sql, int nparams,
                                   const char *const *params, const char *what, int timeout_ms,
                                   atomic_int *stop, char *errstr, size_t errstr_size)
{
    PGresult *res = outboxd_pg_exec_bounded(conn, sql, nparams, params, what, timeout_ms, stop,
                                            errstr, errstr_size);
    if (!res)
        return NULL;
    ExecStatusType st = PQresultStatus(res);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
        return res;
    outboxd_pg_error(conn, what, errstr, errstr_size);
    PQclear(res);
    return NULL;
}

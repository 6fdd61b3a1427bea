/*
 * Logical replication stream over libpq (see repl.h).
 *
 * Shape follows pg_recvlogical: PQgetCopyData in async mode, PQconsumeInput
 * when the socket is readable, keepalive replies as soon as one asks for it.
 */
#include "outboxd/relay/repl.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/common/log.h"
#include "outboxd/relay/pgconn.h"

struct outboxd_repl {
    PGconn *conn;
    char *copybuf; /* last buffer from PQgetCopyData, freed on the next call */
    const char *scope;
};

static uint64_t get_u64(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | u[i];
    return v;
}

static void put_u64(char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (char)(v & 0xff);
        v >>= 8;
    }
}

static void chomp_error(char *errstr)
{
    size_t n = strlen(errstr);
    while (n > 0 && (errstr[n - 1] == '\n' || errstr[n - 1] == ' '))
        errstr[--n] = '\0';
}

static int conn_error(PGconn *conn, const char *what, char *errstr, size_t errstr_size)
{
    snprintf(errstr, errstr_size, "%s: %s", what, PQerrorMessage(conn));
    chomp_error(errstr);
    return -1;
}

outboxd_repl_t *outboxd_repl_start(const outboxd_source_conf_t *src, outboxd_lsn_t start_lsn,
                                   outboxd_repl_ident_t *ident, char *errstr, size_t errstr_size)
{
    PGconn *conn = outboxd_pg_connect(src, true, errstr, errstr_size);
    if (!conn)
        return NULL;

    PGresult *res = PQexec(conn, "IDENTIFY_SYSTEM");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) < 4) {
        conn_error(conn, "IDENTIFY_SYSTEM failed", errstr, errstr_size);
        PQclear(res);
        PQfinish(conn);
        return NULL;
    }
    memset(ident, 0, sizeof(*ident));
    snprintf(ident->system_id, sizeof(ident->system_id), "%s", PQgetvalue(res, 0, 0));
    ident->timeline = (uint32_t)strtoul(PQgetvalue(res, 0, 1), NULL, 10);
    outboxd_lsn_parse(PQgetvalue(res, 0, 2), &ident->xlogpos);
    snprintf(ident->database, sizeof(ident->database), "%s", PQgetvalue(res, 0, 3));
    PQclear(res);

    char *slot = PQescapeIdentifier(conn, src->slot, strlen(src->slot));
    /* publication_names is a string literal holding a list of identifiers. */
    char *pubident = PQescapeIdentifier(conn, src->publication, strlen(src->publication));
    char *publit = pubident ? PQescapeLiteral(conn, pubident, strlen(pubident)) : NULL;
    if (!slot || !pubident || !publit) {
        conn_error(conn, "escaping slot/publication name", errstr, errstr_size);
        PQfreemem(slot);
        PQfreemem(pubident);
        PQfreemem(publit);
        PQfinish(conn);
        return NULL;
    }
    char lsn[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(start_lsn, lsn);
    char sql[1024];
    snprintf(sql, sizeof(sql),
             "START_REPLICATION SLOT %s LOGICAL %s (proto_version '1', publication_names %s, "
             "messages 'true')",
             slot, lsn, publit);
    PQfreemem(slot);
    PQfreemem(pubident);
    PQfreemem(publit);

    res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        conn_error(conn, "START_REPLICATION failed", errstr, errstr_size);
        PQclear(res);
        PQfinish(conn);
        return NULL;
    }
    PQclear(res);
    if (PQsetnonblocking(conn, 1) != 0) {
        conn_error(conn, "PQsetnonblocking", errstr, errstr_size);
        PQfinish(conn);
        return NULL;
    }

    outboxd_repl_t *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(errstr, errstr_size, "out of memory");
        PQfinish(conn);
        return NULL;
    }
    r->conn = conn;
    r->scope = src->name;
    return r;
}

int outboxd_repl_fd(const outboxd_repl_t *r)
{
    return PQsocket(r->conn);
}

static int read_result_after_copy(outboxd_repl_t *r, char *errstr, size_t errstr_size)
{
    /* The COPY ended: the server says why in the following result. */
    PGresult *res = PQgetResult(r->conn);
    if (res && PQresultStatus(res) != PGRES_COMMAND_OK)
        snprintf(errstr, errstr_size, "replication stream ended: %s", PQresultErrorMessage(res));
    else
        snprintf(errstr, errstr_size, "replication stream ended by the server: %s",
                 PQerrorMessage(r->conn));
    chomp_error(errstr);
    PQclear(res);
    return -1;
}

int outboxd_repl_next(outboxd_repl_t *r, outboxd_repl_msg_t *out, char *errstr, size_t errstr_size)
{
    memset(out, 0, sizeof(*out));
    if (r->copybuf) {
        PQfreemem(r->copybuf);
        r->copybuf = NULL;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        char *buf = NULL;
        int n = PQgetCopyData(r->conn, &buf, 1);
        if (n == 0) {
            if (attempt == 0) {
                /* Nothing buffered: pull what the socket has, then retry once. */
                if (!PQconsumeInput(r->conn))
                    return conn_error(r->conn, "reading replication stream", errstr, errstr_size);
                continue;
            }
            out->kind = OUTBOXD_REPL_NONE;
            return 0;
        }
        if (n == -1)
            return read_result_after_copy(r, errstr, errstr_size);
        if (n < -1)
            return conn_error(r->conn, "reading replication stream", errstr, errstr_size);
        r->copybuf = buf;
        if (buf[0] == 'w') {
            if (n < 25) {
                snprintf(errstr, errstr_size, "short XLogData message (%d bytes)", n);
                return -1;
            }
            out->kind = OUTBOXD_REPL_DATA;
            out->wal_start = get_u64(buf + 1);
            out->wal_end = get_u64(buf + 9);
            out->data = (const uint8_t *)buf + 25;
            out->len = (size_t)n - 25;
            return 0;
        }
        if (buf[0] == 'k') {
            if (n < 18) {
                snprintf(errstr, errstr_size, "short keepalive message (%d bytes)", n);
                return -1;
            }
            out->kind = OUTBOXD_REPL_KEEPALIVE;
            out->wal_end = get_u64(buf + 1);
            out->reply_requested = buf[17] != 0;
            return 0;
        }
        snprintf(errstr, errstr_size, "unexpected replication message type 0x%02x",
                 (unsigned char)buf[0]);
        return -1;
    }
    out->kind = OUTBOXD_REPL_NONE;
    return 0;
}

int outboxd_repl_send_status(outboxd_repl_t *r, outboxd_lsn_t lsn, bool reply_requested,
                             char *errstr, size_t errstr_size)
{
    char msg[34];
    msg[0] = 'r';
    put_u64(msg + 1, lsn);  /* written */
    put_u64(msg + 9, lsn);  /* flushed: what the slot may advance to */
    put_u64(msg + 17, lsn); /* applied */
    put_u64(msg + 25, (uint64_t)(outboxd_wall_us() - OUTBOXD_PG_EPOCH_OFFSET_US));
    msg[33] = reply_requested ? 1 : 0;
    int rc = PQputCopyData(r->conn, msg, sizeof(msg));
    if (rc == 0) {
        /* Nonblocking and the output buffer is full: push it out, retry. */
        if (PQflush(r->conn) < 0)
            return conn_error(r->conn, "sending standby status update", errstr, errstr_size);
        rc = PQputCopyData(r->conn, msg, sizeof(msg));
    }
    if (rc <= 0)
        return conn_error(r->conn, "sending standby status update", errstr, errstr_size);
    /* Nonblocking: a partial flush finishes on a later call. */
    if (PQflush(r->conn) < 0)
        return conn_error(r->conn, "sending standby status update", errstr, errstr_size);
    return 0;
}

void outboxd_repl_destroy(outboxd_repl_t *r)
{
    if (!r)
        return;
    if (r->copybuf)
        PQfreemem(r->copybuf);
    PQfinish(r->conn);
    free(r);
}

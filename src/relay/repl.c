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
    bool streaming;   /* START_REPLICATION done: status updates may be sent */
    int timeout_ms;   /* a command unanswered this long fails (0: no limit) */
    atomic_int *stop; /* set: a command being waited for is abandoned */
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

static int conn_error(PGconn *conn, const char *what, char *errstr, size_t errstr_size)
{
    outboxd_pg_error(conn, what, errstr, errstr_size);
    return -1;
}

void outboxd_repl_start_options(int server_version, bool want_messages, const char *publit,
                                outboxd_buf_t *out)
{
    /* proto_version 1 is understood by every pgoutput (10+) and never
     * streams in-progress transactions. "messages" exists from 14 on; an
     * older pgoutput rejects the whole command for it, and a newer one would
     * decode messages nobody configured. */
    outboxd_buf_printf(out, "proto_version '1', publication_names %s", publit);
    if (want_messages && server_version >= 140000)
        outboxd_buf_append_str(out, ", messages 'true'");
}

outboxd_repl_t *outboxd_repl_connect(const outboxd_source_conf_t *src, int timeout_ms,
                                     atomic_int *stop, outboxd_repl_ident_t *ident, bool *opened,
                                     char *errstr, size_t errstr_size)
{
    PGconn *conn = outboxd_pg_connect(src, true, errstr, errstr_size);
    if (opened)
        *opened = conn != NULL;
    if (!conn)
        return NULL;

    PGresult *res = outboxd_pg_exec_bounded(conn, "IDENTIFY_SYSTEM", 0, NULL, "IDENTIFY_SYSTEM",
                                            timeout_ms, stop, errstr, errstr_size);
    if (!res) {
        PQfinish(conn);
        return NULL;
    }
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
    ident->server_version = PQserverVersion(conn);
    PQclear(res);

    outboxd_repl_t *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(errstr, errstr_size, "out of memory");
        PQfinish(conn);
        return NULL;
    }
    r->conn = conn;
    r->scope = src->name;
    r->timeout_ms = timeout_ms;
    r->stop = stop;
    return r;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Lines "parentTLI <tab> switchpoint <tab> reason"; '#' starts a comment. */
static outboxd_lsn_t switchpoint_in_text(const char *history, uint32_t tli)
{
    const char *p = history;
    while (p && *p) {
        const char *eol = strchr(p, '\n');
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        char line[256];
        snprintf(line, sizeof(line), "%.*s", (int)(n < sizeof(line) - 1 ? n : sizeof(line) - 1), p);
        char *end = NULL;
        unsigned long parent = strtoul(line, &end, 10);
        if (end != line && parent == tli) {
            while (*end == ' ' || *end == '\t')
                end++;
            char lsn[32];
            size_t k = 0;
            while (end[k] && end[k] != ' ' && end[k] != '\t' && k < sizeof(lsn) - 1) {
                lsn[k] = end[k];
                k++;
            }
            lsn[k] = '\0';
            outboxd_lsn_t v = 0;
            if (outboxd_lsn_parse(lsn, &v))
                return v;
        }
        p = eol ? eol + 1 : NULL;
    }
    return 0;
}

outboxd_lsn_t outboxd_repl_history_switchpoint(const char *history, uint32_t tli)
{
    if (history[0] != '\\' || history[1] != 'x')
        return switchpoint_in_text(history, tli);
    /* The same file as bytea in hex output (a server that sends the
     * column through the bytea output function). */
    size_t n = strlen(history + 2) / 2;
    char *text = malloc(n + 1);
    if (!text)
        return 0;
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(history[2 + 2 * i]), lo = hexval(history[3 + 2 * i]);
        text[i] = (char)(hi < 0 || lo < 0 ? ' ' : (hi << 4 | lo));
    }
    text[n] = '\0';
    outboxd_lsn_t v = switchpoint_in_text(text, tli);
    free(text);
    return v;
}

int outboxd_repl_timeline_end(outboxd_repl_t *r, uint32_t server_tli, uint32_t tli,
                              outboxd_lsn_t *end, char *errstr, size_t errstr_size)
{
    *end = 0;
    if (tli >= server_tli || server_tli < 2)
        return 0;
    char sql[64];
    snprintf(sql, sizeof(sql), "TIMELINE_HISTORY %u", server_tli);
    PGresult *res = outboxd_pg_exec_bounded(r->conn, sql, 0, NULL, "TIMELINE_HISTORY",
                                            r->timeout_ms, r->stop, errstr, errstr_size);
    if (!res)
        return -1;
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) < 2) {
        conn_error(r->conn, "TIMELINE_HISTORY failed", errstr, errstr_size);
        PQclear(res);
        return -1;
    }
    *end = outboxd_repl_history_switchpoint(PQgetvalue(res, 0, 1), tli);
    PQclear(res);
    return 0;
}

int outboxd_repl_slot_state(outboxd_repl_t *r, const char *slot, outboxd_lsn_t *confirmed,
                            int *active_pid, char *errstr, size_t errstr_size)
{
    *confirmed = 0;
    *active_pid = 0;
    char *lit = PQescapeLiteral(r->conn, slot, strlen(slot));
    if (!lit)
        return conn_error(r->conn, "escaping the slot name", errstr, errstr_size);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT confirmed_flush_lsn, active_pid FROM pg_catalog.pg_replication_slots "
             "WHERE slot_name = %s",
             lit);
    PQfreemem(lit);
    PGresult *res = outboxd_pg_exec_bounded(r->conn, sql, 0, NULL, "reading the slot's position",
                                            r->timeout_ms, r->stop, errstr, errstr_size);
    if (!res)
        return -1;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        conn_error(r->conn, "reading the slot's position", errstr, errstr_size);
        PQclear(res);
        return -1;
    }
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
        outboxd_lsn_parse(PQgetvalue(res, 0, 0), confirmed);
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 1))
        *active_pid = atoi(PQgetvalue(res, 0, 1));
    PQclear(res);
    return 0;
}

int outboxd_repl_stream(outboxd_repl_t *r, const outboxd_source_conf_t *src,
                        outboxd_lsn_t start_lsn, char *errstr, size_t errstr_size)
{
    PGconn *conn = r->conn;
    char *slot = PQescapeIdentifier(conn, src->slot, strlen(src->slot));
    /* publication_names is a string literal holding a list of identifiers. */
    char *pubident = PQescapeIdentifier(conn, src->publication, strlen(src->publication));
    char *publit = pubident ? PQescapeLiteral(conn, pubident, strlen(pubident)) : NULL;
    if (!slot || !pubident || !publit) {
        conn_error(conn, "escaping slot/publication name", errstr, errstr_size);
        PQfreemem(slot);
        PQfreemem(pubident);
        PQfreemem(publit);
        return -1;
    }
    char lsn[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(start_lsn, lsn);
    outboxd_buf_t sql = {0};
    outboxd_buf_printf(&sql, "START_REPLICATION SLOT %s LOGICAL %s (", slot, lsn);
    outboxd_repl_start_options(PQserverVersion(conn), src->n_messages > 0, publit, &sql);
    bool ok = outboxd_buf_append_str(&sql, ")");
    PQfreemem(slot);
    PQfreemem(pubident);
    PQfreemem(publit);
    if (!ok || !sql.data) {
        outboxd_buf_free(&sql);
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }

    /* Bounded: a walsender that froze after taking the slot and before
     * answering must not hang the relay or a replay here (the stream's own
     * liveness check only starts once streaming). */
    PGresult *res = outboxd_pg_exec_bounded(conn, sql.data, 0, NULL, "START_REPLICATION",
                                            r->timeout_ms, r->stop, errstr, errstr_size);
    outboxd_buf_free(&sql);
    if (!res)
        return -1;
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        conn_error(conn, "START_REPLICATION failed", errstr, errstr_size);
        PQclear(res);
        return -1;
    }
    PQclear(res);
    if (PQsetnonblocking(conn, 1) != 0)
        return conn_error(conn, "PQsetnonblocking", errstr, errstr_size);
    r->streaming = true;
    return 0;
}

PGconn *outboxd_repl_pgconn(outboxd_repl_t *r)
{
    return r->streaming ? NULL : r->conn;
}

int outboxd_repl_backend_pid(const outboxd_repl_t *r)
{
    return PQbackendPID(r->conn);
}

int outboxd_repl_fd(const outboxd_repl_t *r)
{
    return PQsocket(r->conn);
}

static int read_result_after_copy(outboxd_repl_t *r, char *errstr, size_t errstr_size)
{
    /* The COPY ended: the server says why in the following result. */
    PGresult *res = PQgetResult(r->conn);
    if (res && PQresultStatus(res) != PGRES_COMMAND_OK) {
        const char *primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        /* pgoutput looks a publication up as of each change it decodes: a
         * publication created (or re-created) after the slot's position is
         * "missing" for the changes before it, at every reconnect. */
        bool pub_missing = primary && strncmp(primary, "publication \"", 13) == 0 &&
                           strstr(primary, "\" does not exist");
        snprintf(errstr, errstr_size, "replication stream ended: %s%s", PQresultErrorMessage(res),
                 pub_missing
                     ? "; if that publication exists now, it was created after the slot's "
                       "position (the CONTEXT above names the LSN decoding is stuck at): "
                       "pgoutput cannot decode the changes before it existed. Skip them with "
                       "SELECT pg_replication_slot_advance('<slot>', pg_current_wal_lsn()) "
                       "while the relay is stopped; rows committed in that stretch, outbox rows "
                       "included, are then not relayed: write them again if they matter"
                     : "");
    } else {
        /* A clean end of COPY (the server shutting down, or the walsender
         * ending the stream) often carries no message at all. */
        char reason[256];
        snprintf(reason, sizeof(reason), "%s", PQerrorMessage(r->conn));
        outboxd_pg_chomp(reason);
        snprintf(errstr, errstr_size, "replication stream ended by the server: %s",
                 reason[0] ? reason
                           : "no reason given (the server may be shutting down or restarting)");
    }
    outboxd_pg_chomp(errstr);
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
            out->send_time_us = (int64_t)get_u64(buf + 17) + OUTBOXD_PG_EPOCH_OFFSET_US;
            out->recv_time_us = 0; /* read just now (see repl.h) */
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
            out->send_time_us = (int64_t)get_u64(buf + 9) + OUTBOXD_PG_EPOCH_OFFSET_US;
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
    if (!r->streaming)
        return 0; /* not streaming yet: nothing to confirm, no timeout runs */
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

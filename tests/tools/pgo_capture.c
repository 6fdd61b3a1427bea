/*
 * pgo_capture: record raw pgoutput messages from a logical replication slot.
 *
 *   pgo_capture -d CONNINFO -S SLOT -o OUTFILE [-O OPTIONS] [-e END_LSN]
 *               [-i IDLE_SECS] [-v]
 *
 * Runs START_REPLICATION SLOT <SLOT> LOGICAL 0/0 (<OPTIONS>) on a replication
 * connection (replication=database is added to CONNINFO) and writes the
 * payload of every XLogData message to OUTFILE as a record: 4-byte big-endian
 * length, then the payload bytes. OPTIONS is the plugin option list as
 * PostgreSQL wants it, e.g. "proto_version '2', publication_names 'p',
 * streaming 'on'". Stops once the server has sent everything up to END_LSN
 * (a keepalive reports it, or a message starts past it), or after IDLE_SECS
 * (default 5) without any message. Keepalives are answered, and flush is
 * confirmed up to the last message received, so the slot advances.
 *
 * Used by tests/data/pgoutput/capture.sh to produce decoder fixtures.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "outboxd/common/util.h"

static uint64_t rd64(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | u[i];
    return v;
}

static void wr64(char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (char)(v & 0xff);
        v >>= 8;
    }
}

static int64_t pg_now(void)
{
    return outboxd_wall_us() - OUTBOXD_PG_EPOCH_OFFSET_US;
}

/* Standby status update; reply_requested makes the server answer at once
 * with a keepalive carrying its sent position. */
static int send_status(PGconn *conn, outboxd_lsn_t lsn, bool reply_requested)
{
    char msg[1 + 8 + 8 + 8 + 8 + 1];
    msg[0] = 'r';
    wr64(msg + 1, lsn);
    wr64(msg + 9, lsn);
    wr64(msg + 17, lsn);
    wr64(msg + 25, (uint64_t)pg_now());
    msg[33] = reply_requested ? 1 : 0;
    if (PQputCopyData(conn, msg, sizeof(msg)) <= 0 || PQflush(conn) < 0) {
        fprintf(stderr, "pgo_capture: sending status: %s", PQerrorMessage(conn));
        return -1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: pgo_capture -d CONNINFO -S SLOT -o OUTFILE [-O OPTIONS] "
                    "[-e END_LSN] [-i IDLE_SECS] [-v]\n");
}

int main(int argc, char **argv)
{
    const char *conninfo = NULL, *slot = NULL, *outpath = NULL, *options = NULL;
    outboxd_lsn_t end_lsn = 0;
    bool have_end = false, verbose = false;
    int idle_secs = 5;
    int opt;
    while ((opt = getopt(argc, argv, "d:S:o:O:e:i:v")) != -1) {
        switch (opt) {
        case 'd':
            conninfo = optarg;
            break;
        case 'S':
            slot = optarg;
            break;
        case 'o':
            outpath = optarg;
            break;
        case 'O':
            options = optarg;
            break;
        case 'e':
            if (!outboxd_lsn_parse(optarg, &end_lsn)) {
                fprintf(stderr, "pgo_capture: bad LSN '%s'\n", optarg);
                return 2;
            }
            have_end = true;
            break;
        case 'i':
            idle_secs = atoi(optarg);
            break;
        case 'v':
            verbose = true;
            break;
        default:
            usage();
            return 2;
        }
    }
    if (!conninfo || !slot || !outpath || idle_secs <= 0) {
        usage();
        return 2;
    }

    const char *keys[] = {"dbname", "replication", NULL};
    const char *vals[] = {conninfo, "database", NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "pgo_capture: connect: %s", conn ? PQerrorMessage(conn) : "OOM\n");
        PQfinish(conn);
        return 1;
    }

    outboxd_buf_t cmd = {0};
    outboxd_buf_printf(&cmd, "START_REPLICATION SLOT \"%s\" LOGICAL 0/0", slot);
    if (options && *options)
        outboxd_buf_printf(&cmd, " (%s)", options);
    if (!cmd.data) {
        fprintf(stderr, "pgo_capture: out of memory\n");
        PQfinish(conn);
        return 1;
    }
    PGresult *res = PQexec(conn, cmd.data);
    if (PQresultStatus(res) != PGRES_COPY_BOTH) {
        fprintf(stderr, "pgo_capture: %s: %s", cmd.data, PQerrorMessage(conn));
        PQclear(res);
        PQfinish(conn);
        outboxd_buf_free(&cmd);
        return 1;
    }
    PQclear(res);
    outboxd_buf_free(&cmd);

    FILE *out = fopen(outpath, "wb");
    if (!out) {
        fprintf(stderr, "pgo_capture: %s: %s\n", outpath, strerror(errno));
        PQfinish(conn);
        return 1;
    }

    int rc = 0;
    long nrecords = 0;
    outboxd_lsn_t last_lsn = 0;
    int64_t last_activity = outboxd_now_ms();
    int64_t last_ping = 0;
    bool done = false;
    while (!done) {
        char *copybuf = NULL;
        int n = PQgetCopyData(conn, &copybuf, 1);
        if (n == 0) {
            int64_t now = outboxd_now_ms();
            if (now - last_activity >= (int64_t)idle_secs * 1000) {
                if (verbose)
                    fprintf(stderr, "pgo_capture: idle for %d s, stopping\n", idle_secs);
                break;
            }
            /* Ask for a keepalive once a second while idle: it reports how far
             * the server has decoded, which is how END_LSN is detected. */
            if (have_end && now - last_ping >= 1000) {
                if (send_status(conn, last_lsn, true) < 0) {
                    rc = 1;
                    break;
                }
                last_ping = now;
            }
            int sock = PQsocket(conn);
            fd_set rfds;
            FD_ZERO(&rfds);
            FD_SET(sock, &rfds);
            struct timeval tv = {0, 200 * 1000};
            if (select(sock + 1, &rfds, NULL, NULL, &tv) < 0 && errno != EINTR) {
                fprintf(stderr, "pgo_capture: select: %s\n", strerror(errno));
                rc = 1;
                break;
            }
            if (!PQconsumeInput(conn)) {
                fprintf(stderr, "pgo_capture: %s", PQerrorMessage(conn));
                rc = 1;
                break;
            }
            continue;
        }
        if (n == -1)
            break; /* server ended the copy */
        if (n < 0) {
            fprintf(stderr, "pgo_capture: %s", PQerrorMessage(conn));
            rc = 1;
            break;
        }
        if (copybuf[0] == 'w' && n >= 25) {
            outboxd_lsn_t start = rd64(copybuf + 1);
            if (have_end && start > end_lsn) {
                done = true;
            } else {
                uint32_t len = (uint32_t)(n - 25);
                unsigned char hdr[4] = {(unsigned char)(len >> 24), (unsigned char)(len >> 16),
                                        (unsigned char)(len >> 8), (unsigned char)len};
                if (fwrite(hdr, 1, 4, out) != 4 || fwrite(copybuf + 25, 1, len, out) != len) {
                    fprintf(stderr, "pgo_capture: write %s: %s\n", outpath, strerror(errno));
                    rc = 1;
                    done = true;
                }
                nrecords++;
                if (start > last_lsn)
                    last_lsn = start;
                last_activity = outboxd_now_ms();
                if (verbose)
                    fprintf(stderr, "pgo_capture: %c %" PRIu32 " bytes at %X/%X\n", copybuf[25],
                            len, (uint32_t)(start >> 32), (uint32_t)start);
            }
        } else if (copybuf[0] == 'k' && n >= 18) {
            outboxd_lsn_t wal_end = rd64(copybuf + 1);
            if (have_end && wal_end >= end_lsn) {
                if (verbose)
                    fprintf(stderr, "pgo_capture: server sent up to %X/%X, done\n",
                            (uint32_t)(wal_end >> 32), (uint32_t)wal_end);
                done = true;
            } else if (copybuf[17] && send_status(conn, last_lsn, false) < 0) {
                rc = 1;
                done = true;
            }
        }
        PQfreemem(copybuf);
    }

    if (rc == 0 && last_lsn)
        send_status(conn, last_lsn, false);
    if (fclose(out) != 0) {
        fprintf(stderr, "pgo_capture: close %s: %s\n", outpath, strerror(errno));
        rc = 1;
    }
    /* End the copy politely; the server answers CopyDone and CommandComplete. */
    if (PQputCopyEnd(conn, NULL) > 0) {
        PQflush(conn);
        char *copybuf;
        while (PQgetCopyData(conn, &copybuf, 0) >= 0)
            PQfreemem(copybuf);
        while ((res = PQgetResult(conn)) != NULL)
            PQclear(res);
    }
    PQfinish(conn);
    if (verbose || rc == 0)
        fprintf(stderr, "pgo_capture: wrote %ld records to %s\n", nrecords, outpath);
    return rc;
}

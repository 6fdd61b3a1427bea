/*
 * The PostgreSQL logical replication stream of one source (libpq, COPY BOTH).
 *
 * Wraps START_REPLICATION ... LOGICAL with pgoutput, reads XLogData and
 * keepalive messages without blocking, and sends standby status updates.
 * Decoding the XLogData payload is pgoutput.c's job.
 */
#ifndef OUTBOXD_REPL_H
#define OUTBOXD_REPL_H

#include <libpq-fe.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/relay/config.h"
#include "outboxd/common/util.h"

typedef struct outboxd_repl outboxd_repl_t;

typedef enum {
    OUTBOXD_REPL_NONE = 0,      /* nothing to read right now: poll the fd */
    OUTBOXD_REPL_DATA = 1,      /* an XLogData message */
    OUTBOXD_REPL_KEEPALIVE = 2, /* a primary keepalive */
} outboxd_repl_kind_t;

typedef struct outboxd_repl_msg {
    outboxd_repl_kind_t kind;
    outboxd_lsn_t wal_start; /* DATA: WAL position of this message */
    outboxd_lsn_t wal_end;   /* server's current end of WAL */
    bool reply_requested;    /* KEEPALIVE: answer at once or be disconnected */
    /* The server's clock when it wrote the message (Unix epoch, us): for a
     * change, when the walsender had decoded it (latency split). */
    int64_t send_time_us;
    /* DATA: when the relay read a message it handles later (the source's
     * read-ahead sets it, for pgoutput Begin messages only); 0: read just
     * now. Not a clock read per message on the hot path. */
    int64_t recv_time_us;
    const uint8_t *data; /* DATA: pgoutput payload, valid until the next call */
    size_t len;
} outboxd_repl_msg_t;

/* Server identity, from IDENTIFY_SYSTEM. */
typedef struct outboxd_repl_ident {
    char system_id[32];
    char database[64];
    uint32_t timeline;
    outboxd_lsn_t xlogpos;
    int server_version; /* PQserverVersion, e.g. 150004 */
} outboxd_repl_ident_t;

/*
 * The option list of START_REPLICATION for pgoutput (without parentheses),
 * appended to out: proto_version 1 and the publication (publit: an escaped
 * string literal), plus messages 'true' only when the source configures
 * messages and the server (PostgreSQL 14+) knows the option.
 */
void outboxd_repl_start_options(int server_version, bool want_messages, const char *publit,
                                outboxd_buf_t *out);

/*
 * Connects (replication=database) and identifies the system, without
 * streaming yet: the connection waits for commands, so no wal_sender_timeout
 * runs while the caller does slow work (Kafka) before outboxd_repl_stream.
 * Every command on the connection (this one's IDENTIFY_SYSTEM, the ones
 * below, START_REPLICATION) fails when unanswered for timeout_ms
 * (relay.wal_receiver_timeout_ms; 0: no limit) or when *stop (may be NULL)
 * is set while it waits. *opened (may be NULL) tells whether the server
 * accepted the connection: on a failure, whether it was IDENTIFY_SYSTEM's.
 */
outboxd_repl_t *outboxd_repl_connect(const outboxd_source_conf_t *src, int timeout_ms,
                                     atomic_int *stop, outboxd_repl_ident_t *ident, bool *opened,
                                     char *errstr, size_t errstr_size);

/*
 * From a timeline history file's text: the LSN at which timeline tli ended
 * (the switchpoint of its line), or 0 if tli is not in it.
 */
outboxd_lsn_t outboxd_repl_history_switchpoint(const char *history, uint32_t tli);

/*
 * Before streaming: where timeline tli (older than the server's server_tli)
 * ended in this server's history (TIMELINE_HISTORY), in *end; 0 when tli is
 * not an ancestor. Returns 0, or -1 with errstr.
 */
int outboxd_repl_timeline_end(outboxd_repl_t *r, uint32_t server_tli, uint32_t tli,
                              outboxd_lsn_t *end, char *errstr, size_t errstr_size);

/* Before streaming: the slot's confirmed_flush_lsn (0 if none) and the pid
 * of the process streaming from it (0 if none). 0, or -1 with errstr. */
int outboxd_repl_slot_state(outboxd_repl_t *r, const char *slot, outboxd_lsn_t *confirmed,
                            int *active_pid, char *errstr, size_t errstr_size);

/*
 * START_REPLICATION from the slot at start_lsn (0 = the slot's confirmed
 * position) with outboxd_repl_start_options. Returns 0, or -1 with errstr
 * (the handle must then be destroyed).
 */
int outboxd_repl_stream(outboxd_repl_t *r, const outboxd_source_conf_t *src,
                        outboxd_lsn_t start_lsn, char *errstr, size_t errstr_size);

/* Process id of the walsender serving this connection (what
 * pg_replication_slots.active_pid shows while it streams the slot). */
int outboxd_repl_backend_pid(const outboxd_repl_t *r);
/* The libpq connection, for SQL (simple protocol) in command mode only:
 * before outboxd_repl_stream. */
PGconn *outboxd_repl_pgconn(outboxd_repl_t *r);

/* Socket to poll for reading. */
int outboxd_repl_fd(const outboxd_repl_t *r);

/*
 * Reads the next message without blocking. Returns 0 with out->kind set
 * (NONE when nothing is buffered), or -1 when the stream failed or ended
 * (errstr says why: server gone, slot dropped, protocol error).
 */
int outboxd_repl_next(outboxd_repl_t *r, outboxd_repl_msg_t *out, char *errstr, size_t errstr_size);

/*
 * Sends a standby status update: written = flushed = applied = lsn. The
 * server may then recycle WAL up to lsn and will not resend transactions
 * that committed before it. Does nothing before outboxd_repl_stream.
 * Returns 0, or -1 with errstr.
 */
int outboxd_repl_send_status(outboxd_repl_t *r, outboxd_lsn_t lsn, bool reply_requested,
                             char *errstr, size_t errstr_size);

/* Ends the stream and closes the connection. Accepts NULL. */
void outboxd_repl_destroy(outboxd_repl_t *r);

#endif

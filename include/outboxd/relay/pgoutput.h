/*
 * pgoutput logical replication message decoder.
 *
 * A pure module: bytes in (the payload of one XLogData message, i.e. what
 * follows the 'w' header), typed messages out. It keeps the relation cache
 * (Relation messages) and the streaming state (between Stream Start and
 * Stream Stop, in-stream messages carry an xid after the type byte).
 * No I/O, no allocation per row beyond a reusable column array.
 *
 * Protocol reference: PostgreSQL docs "Logical Replication Message Formats".
 * Every message type of protocol versions 1 to 4 is decoded; a byte that is
 * not a known type, or a truncated message, yields an error, never a crash.
 */
#ifndef OUTBOXD_PGOUTPUT_H
#define OUTBOXD_PGOUTPUT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/common/util.h"

typedef enum {
    OUTBOXD_PGO_BEGIN = 'B',
    OUTBOXD_PGO_MESSAGE = 'M',
    OUTBOXD_PGO_COMMIT = 'C',
    OUTBOXD_PGO_ORIGIN = 'O',
    OUTBOXD_PGO_RELATION = 'R',
    OUTBOXD_PGO_TYPE = 'Y',
    OUTBOXD_PGO_INSERT = 'I',
    OUTBOXD_PGO_UPDATE = 'U',
    OUTBOXD_PGO_DELETE = 'D',
    OUTBOXD_PGO_TRUNCATE = 'T',
    OUTBOXD_PGO_STREAM_START = 'S',
    OUTBOXD_PGO_STREAM_STOP = 'E',
    OUTBOXD_PGO_STREAM_COMMIT = 'c',
    OUTBOXD_PGO_STREAM_ABORT = 'A',
    OUTBOXD_PGO_BEGIN_PREPARE = 'b',
    OUTBOXD_PGO_PREPARE = 'P',
    OUTBOXD_PGO_COMMIT_PREPARED = 'K',
    OUTBOXD_PGO_ROLLBACK_PREPARED = 'r',
    OUTBOXD_PGO_STREAM_PREPARE = 'p',
} outboxd_pgo_kind_t;

/* One column value of a tuple. data points into the decoded buffer (not
 * NUL-terminated) and is valid until the next outboxd_pgo_decode call. */
typedef struct outboxd_pgo_datum {
    char kind; /* 'n' NULL, 'u' unchanged TOASTed value, 't' text, 'b' binary */
    const char *data;
    uint32_t len;
} outboxd_pgo_datum_t;

typedef struct outboxd_pgo_column {
    char *name;
    uint32_t type_oid;
    int32_t typmod;
    bool is_key; /* part of the replica identity */
} outboxd_pgo_column_t;

/* Cached relation, owned by the decoder; stays valid until a later Relation
 * message for the same oid replaces it or the decoder is destroyed. */
typedef struct outboxd_pgo_relation {
    uint32_t oid;
    char *nspname;
    char *relname;
    char replident; /* 'd' default, 'n' nothing, 'f' full, 'i' index */
    int ncols;
    outboxd_pgo_column_t *cols;
} outboxd_pgo_relation_t;

typedef struct outboxd_pgo_tuple {
    int ncols;
    outboxd_pgo_datum_t *cols; /* decoder-owned, valid until next decode */
} outboxd_pgo_tuple_t;

typedef struct outboxd_pgo_msg {
    outboxd_pgo_kind_t kind;
    /* xid of the streamed transaction for in-stream R/Y/I/U/D/T/M messages,
     * 0 outside a stream. */
    uint32_t stream_xid;
    union {
        struct {
            outboxd_lsn_t final_lsn; /* LSN of the commit record */
            int64_t commit_ts;       /* PostgreSQL epoch microseconds */
            uint32_t xid;
        } begin;
        struct {
            uint8_t flags;
            outboxd_lsn_t commit_lsn;
            outboxd_lsn_t end_lsn; /* the position to confirm */
            int64_t commit_ts;
        } commit;
        struct {
            outboxd_lsn_t lsn;
            const char *name; /* NUL-terminated, points into the buffer */
        } origin;
        const outboxd_pgo_relation_t *relation; /* RELATION: the cached entry */
        struct {
            uint32_t oid;
            const char *nspname;
            const char *typname;
        } type;
        struct {
            const outboxd_pgo_relation_t *rel;
            /* UPDATE/DELETE: 'K' key-only old tuple, 'O' full old tuple,
             * 0 when absent. INSERT: 0. */
            char old_kind;
            outboxd_pgo_tuple_t old_tuple; /* ncols 0 when absent */
            outboxd_pgo_tuple_t new_tuple; /* ncols 0 for DELETE */
        } change;                          /* INSERT, UPDATE, DELETE */
        struct {
            uint8_t options; /* 1 CASCADE, 2 RESTART IDENTITY */
            int nrels;
            const uint32_t *rel_oids; /* decoder-owned */
        } truncate;
        struct {
            bool transactional;
            outboxd_lsn_t lsn;
            const char *prefix; /* NUL-terminated, points into the buffer */
            const char *content;
            uint32_t content_len;
        } message;
        struct {
            uint32_t xid;
            bool first_segment;
        } stream_start;
        struct {
            uint32_t xid;
            uint8_t flags;
            outboxd_lsn_t commit_lsn;
            outboxd_lsn_t end_lsn;
            int64_t commit_ts;
        } stream_commit;
        struct {
            uint32_t xid;
            uint32_t subxid;
            outboxd_lsn_t abort_lsn; /* protocol 4 with parallel streaming, else 0 */
            int64_t abort_ts;        /* likewise */
        } stream_abort;
        /* BEGIN_PREPARE, PREPARE, STREAM_PREPARE, COMMIT_PREPARED and
         * ROLLBACK_PREPARED share this shape; the meaning of lsn1/lsn2/ts1/ts2:
         *   BEGIN_PREPARE:     prepare_lsn, end_lsn, prepare_ts, -
         *   PREPARE:           prepare_lsn, end_lsn, prepare_ts, -
         *   STREAM_PREPARE:    prepare_lsn, end_lsn, prepare_ts, -
         *   COMMIT_PREPARED:   commit_lsn, end_lsn, commit_ts, -
         *   ROLLBACK_PREPARED: prepare_end_lsn, rollback_end_lsn, prepare_ts, rollback_ts */
        struct {
            uint8_t flags;
            outboxd_lsn_t lsn1;
            outboxd_lsn_t lsn2;
            int64_t ts1;
            int64_t ts2;
            uint32_t xid;
            const char *gid; /* NUL-terminated, points into the buffer */
        } twophase;
    } u;
} outboxd_pgo_msg_t;

typedef struct outboxd_pgo_decoder outboxd_pgo_decoder_t;

/* Returns NULL on OOM. */
outboxd_pgo_decoder_t *outboxd_pgo_decoder_new(void);
void outboxd_pgo_decoder_destroy(outboxd_pgo_decoder_t *dec);

/* Forget streaming state (call after a reconnect). Relations are kept: the
 * server re-sends Relation messages on a new connection anyway. */
void outboxd_pgo_decoder_reset(outboxd_pgo_decoder_t *dec);

/*
 * Decodes one message. Returns 0 and fills *out, or -1 with errstr filled
 * (unknown type, truncated message, change for an unknown relation oid, OOM).
 * Pointers in *out refer to buf or to decoder storage and are valid until the
 * next call.
 */
int outboxd_pgo_decode(outboxd_pgo_decoder_t *dec, const uint8_t *buf, size_t len,
                       outboxd_pgo_msg_t *out, char *errstr, size_t errstr_size);

/* Cached relation by oid, or NULL. */
const outboxd_pgo_relation_t *outboxd_pgo_relation_get(const outboxd_pgo_decoder_t *dec,
                                                       uint32_t oid);

/* Human-readable name of a message kind ("Begin", "Stream Commit", ...). */
const char *outboxd_pgo_kind_name(outboxd_pgo_kind_t kind);

#endif

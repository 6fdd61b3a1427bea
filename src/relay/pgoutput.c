/*
 * pgoutput logical replication message decoder (protocol versions 1 to 4).
 *
 * Every read goes through a bounds-checked cursor, so a truncated or corrupt
 * message yields -1 with an error string and never an out-of-bounds read.
 * Decoder state (relation cache, stream state) only changes after a message
 * has been decoded completely, so a failed decode leaves the decoder as it was.
 */
#include "outboxd/relay/pgoutput.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The server never sends more columns than this (MaxTupleAttributeNumber);
 * a larger count can only come from a corrupt message. */
#define MAX_COLUMNS 1664

/* Growable datum array for one tuple; reused across messages so decoding a
 * row does not allocate once the array has reached the widest relation. */
typedef struct datum_array {
    outboxd_pgo_datum_t *items;
    int cap;
} datum_array_t;

struct outboxd_pgo_decoder {
    /* Open-addressing hash of relation pointers keyed by oid. Entries are
     * individually allocated so pointers handed out stay valid when the table
     * grows. Relations are never removed, only replaced, so no tombstones. */
    outboxd_pgo_relation_t **rels;
    size_t rels_cap; /* power of two, 0 before the first Relation */
    size_t rels_count;

    datum_array_t old_datums;
    datum_array_t new_datums;

    uint32_t *trunc_oids;
    size_t trunc_cap;

    bool in_stream;
    uint32_t stream_xid;
};

/* Bounds-checked big-endian reader over one message. */
typedef struct reader {
    const uint8_t *buf;
    size_t len;
    size_t pos;
    const char *what; /* message kind name, for error text */
    char *errstr;
    size_t errstr_size;
} reader_t;

static int fail(reader_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(reader_t *r, const char *fmt, ...)
{
    if (r->errstr && r->errstr_size > 0) {
        int n = snprintf(r->errstr, r->errstr_size, "pgoutput: ");
        if (n >= 0 && (size_t)n < r->errstr_size) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(r->errstr + n, r->errstr_size - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

static int need(reader_t *r, size_t n)
{
    size_t have = r->len - r->pos;
    if (n > have)
        return fail(r, "truncated %s message (needed %zu bytes at offset %zu, have %zu)", r->what,
                    n, r->pos, have);
    return 0;
}

static int get_u8(reader_t *r, uint8_t *out)
{
    if (need(r, 1) < 0)
        return -1;
    *out = r->buf[r->pos++];
    return 0;
}

static int get_u16(reader_t *r, uint16_t *out)
{
    if (need(r, 2) < 0)
        return -1;
    const uint8_t *p = r->buf + r->pos;
    *out = (uint16_t)((uint16_t)p[0] << 8 | p[1]);
    r->pos += 2;
    return 0;
}

static int get_u32(reader_t *r, uint32_t *out)
{
    if (need(r, 4) < 0)
        return -1;
    const uint8_t *p = r->buf + r->pos;
    *out = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
    r->pos += 4;
    return 0;
}

static int get_u64(reader_t *r, uint64_t *out)
{
    uint32_t hi, lo;
    /* need(8) first so a truncation is reported as 8 bytes short, not 4;
     * the checked reads keep the compiler's -O3 flow analysis happy too. */
    if (need(r, 8) < 0 || get_u32(r, &hi) < 0 || get_u32(r, &lo) < 0)
        return -1;
    *out = (uint64_t)hi << 32 | lo;
    return 0;
}

static int get_i64(reader_t *r, int64_t *out)
{
    uint64_t v;
    if (get_u64(r, &v) < 0)
        return -1;
    /* Two's complement reinterpretation without implementation-defined
     * conversion of out-of-range unsigned values. */
    memcpy(out, &v, sizeof(v));
    return 0;
}

/* A NUL-terminated string inside the message; *out points into the buffer. */
static int get_str(reader_t *r, const char **out, size_t *len_out)
{
    const uint8_t *start = r->buf + r->pos;
    size_t have = r->len - r->pos;
    const uint8_t *nul = have ? memchr(start, '\0', have) : NULL;
    if (!nul)
        return fail(r, "unterminated string in %s message at offset %zu", r->what, r->pos);
    *out = (const char *)start;
    if (len_out)
        *len_out = (size_t)(nul - start);
    r->pos += (size_t)(nul - start) + 1;
    return 0;
}

static int get_bytes(reader_t *r, uint32_t n, const uint8_t **out)
{
    if (need(r, n) < 0)
        return -1;
    *out = r->buf + r->pos;
    r->pos += n;
    return 0;
}

/* Trailing bytes mean the message was parsed with the wrong layout (or the
 * server speaks a protocol version we did not ask for): refuse rather than
 * hand out misparsed fields. */
static int expect_end(reader_t *r)
{
    if (r->pos != r->len)
        return fail(r, "%zu unexpected trailing bytes after %s message (length %zu)",
                    r->len - r->pos, r->what, r->len);
    return 0;
}

/* The server sends an empty namespace for pg_catalog to save space. */
static const char *namespace_name(const char *nsp)
{
    return nsp[0] == '\0' ? "pg_catalog" : nsp;
}

/* ---- relation cache ---- */

static size_t oid_slot(uint32_t oid, size_t cap)
{
    /* Fibonacci hashing: oids are mostly sequential, spread them out. */
    return (size_t)((oid * 2654435769u) & (uint32_t)(cap - 1));
}

static outboxd_pgo_relation_t **rel_find_slot(outboxd_pgo_relation_t **rels, size_t cap,
                                              uint32_t oid)
{
    size_t i = oid_slot(oid, cap);
    while (rels[i] && rels[i]->oid != oid)
        i = (i + 1) & (cap - 1);
    return &rels[i];
}

/* Makes room for one more entry; returns false on OOM. */
static bool rel_reserve(outboxd_pgo_decoder_t *dec)
{
    /* Keep the load factor at or below one half so probes stay short. */
    if (dec->rels_cap && (dec->rels_count + 1) * 2 <= dec->rels_cap)
        return true;
    size_t cap = dec->rels_cap ? dec->rels_cap * 2 : 16;
    outboxd_pgo_relation_t **rels = calloc(cap, sizeof(*rels));
    if (!rels)
        return false;
    for (size_t i = 0; i < dec->rels_cap; i++) {
        if (dec->rels[i])
            *rel_find_slot(rels, cap, dec->rels[i]->oid) = dec->rels[i];
    }
    free(dec->rels);
    dec->rels = rels;
    dec->rels_cap = cap;
    return true;
}

static void rel_free(outboxd_pgo_relation_t *rel)
{
    /* Names and columns live in the same allocation as the struct. */
    free(rel);
}

const outboxd_pgo_relation_t *outboxd_pgo_relation_get(const outboxd_pgo_decoder_t *dec,
                                                       uint32_t oid)
{
    if (!dec || !dec->rels_cap)
        return NULL;
    return *rel_find_slot(dec->rels, dec->rels_cap, oid);
}

/* ---- lifecycle ---- */

outboxd_pgo_decoder_t *outboxd_pgo_decoder_new(void)
{
    return calloc(1, sizeof(outboxd_pgo_decoder_t));
}

void outboxd_pgo_decoder_destroy(outboxd_pgo_decoder_t *dec)
{
    if (!dec)
        return;
    for (size_t i = 0; i < dec->rels_cap; i++)
        rel_free(dec->rels[i]);
    free(dec->rels);
    free(dec->old_datums.items);
    free(dec->new_datums.items);
    free(dec->trunc_oids);
    free(dec);
}

void outboxd_pgo_decoder_reset(outboxd_pgo_decoder_t *dec)
{
    if (!dec)
        return;
    dec->in_stream = false;
    dec->stream_xid = 0;
}

/* ---- message bodies ---- */

/* In-stream R/Y/I/U/D/T/M messages carry the (sub)transaction xid first. */
static int read_stream_xid(outboxd_pgo_decoder_t *dec, reader_t *r, outboxd_pgo_msg_t *out)
{
    if (!dec->in_stream)
        return 0;
    return get_u32(r, &out->stream_xid);
}

static int decode_begin(reader_t *r, outboxd_pgo_msg_t *out)
{
    if (get_u64(r, &out->u.begin.final_lsn) < 0 || get_i64(r, &out->u.begin.commit_ts) < 0 ||
        get_u32(r, &out->u.begin.xid) < 0)
        return -1;
    return expect_end(r);
}

static int decode_commit(reader_t *r, outboxd_pgo_msg_t *out)
{
    if (get_u8(r, &out->u.commit.flags) < 0 || get_u64(r, &out->u.commit.commit_lsn) < 0 ||
        get_u64(r, &out->u.commit.end_lsn) < 0 || get_i64(r, &out->u.commit.commit_ts) < 0)
        return -1;
    return expect_end(r);
}

static int decode_origin(reader_t *r, outboxd_pgo_msg_t *out)
{
    if (get_u64(r, &out->u.origin.lsn) < 0 || get_str(r, &out->u.origin.name, NULL) < 0)
        return -1;
    return expect_end(r);
}

static int decode_message(outboxd_pgo_decoder_t *dec, reader_t *r, outboxd_pgo_msg_t *out)
{
    uint8_t flags = 0;
    const uint8_t *content = NULL;
    if (read_stream_xid(dec, r, out) < 0 || get_u8(r, &flags) < 0 ||
        get_u64(r, &out->u.message.lsn) < 0 || get_str(r, &out->u.message.prefix, NULL) < 0 ||
        get_u32(r, &out->u.message.content_len) < 0 ||
        get_bytes(r, out->u.message.content_len, &content) < 0)
        return -1;
    out->u.message.transactional = (flags & 1) != 0;
    out->u.message.content = (const char *)content;
    return expect_end(r);
}

static int decode_type(outboxd_pgo_decoder_t *dec, reader_t *r, outboxd_pgo_msg_t *out)
{
    const char *nsp = NULL;
    if (read_stream_xid(dec, r, out) < 0 || get_u32(r, &out->u.type.oid) < 0 ||
        get_str(r, &nsp, NULL) < 0 || get_str(r, &out->u.type.typname, NULL) < 0)
        return -1;
    out->u.type.nspname = namespace_name(nsp);
    return expect_end(r);
}

static int decode_relation(outboxd_pgo_decoder_t *dec, reader_t *r, outboxd_pgo_msg_t *out)
{
    uint32_t oid = 0;
    const char *nsp = NULL, *relname = NULL;
    size_t nsp_len = 0, relname_len = 0;
    uint8_t replident = 0;
    uint16_t ncols_raw = 0;

    if (read_stream_xid(dec, r, out) < 0 || get_u32(r, &oid) < 0 ||
        get_str(r, &nsp, &nsp_len) < 0 || get_str(r, &relname, &relname_len) < 0 ||
        get_u8(r, &replident) < 0 || get_u16(r, &ncols_raw) < 0)
        return -1;
    int16_t ncols = (int16_t)ncols_raw;
    if (ncols < 0 || ncols > MAX_COLUMNS)
        return fail(r, "invalid column count %d in Relation message for oid %" PRIu32, (int)ncols,
                    oid);
    nsp = namespace_name(nsp);
    nsp_len = strlen(nsp);

    /* First pass validates the column list and sizes one allocation holding
     * the struct, the column array and every name, so replacing or freeing a
     * relation is a single free and a failed message allocates nothing. */
    size_t col_start = r->pos;
    size_t names_len = nsp_len + 1 + relname_len + 1;
    for (int i = 0; i < ncols; i++) {
        uint8_t flags = 0;
        const char *name = NULL;
        size_t name_len = 0;
        uint32_t typoid = 0, typmod = 0;
        if (get_u8(r, &flags) < 0 || get_str(r, &name, &name_len) < 0 || get_u32(r, &typoid) < 0 ||
            get_u32(r, &typmod) < 0)
            return -1;
        names_len += name_len + 1;
    }
    if (expect_end(r) < 0)
        return -1;

    size_t size =
        sizeof(outboxd_pgo_relation_t) + (size_t)ncols * sizeof(outboxd_pgo_column_t) + names_len;
    if (!rel_reserve(dec))
        return fail(r, "out of memory caching relation %" PRIu32, oid);
    outboxd_pgo_relation_t *rel = malloc(size);
    if (!rel)
        return fail(r, "out of memory caching relation %" PRIu32, oid);
    rel->oid = oid;
    rel->replident = (char)replident;
    rel->ncols = ncols;
    rel->cols = (outboxd_pgo_column_t *)(rel + 1);
    char *names = (char *)(rel->cols + ncols);
    memcpy(names, nsp, nsp_len + 1);
    rel->nspname = names;
    names += nsp_len + 1;
    memcpy(names, relname, relname_len + 1);
    rel->relname = names;
    names += relname_len + 1;

    /* Second pass cannot fail: the first one checked every bound. */
    r->pos = col_start;
    for (int i = 0; i < ncols; i++) {
        uint8_t flags = 0;
        const char *name = NULL;
        size_t name_len = 0;
        uint32_t typoid = 0, typmod = 0;
        get_u8(r, &flags);
        get_str(r, &name, &name_len);
        get_u32(r, &typoid);
        get_u32(r, &typmod);
        outboxd_pgo_column_t *col = &rel->cols[i];
        memcpy(names, name, name_len + 1);
        col->name = names;
        names += name_len + 1;
        col->type_oid = typoid;
        memcpy(&col->typmod, &typmod, sizeof(typmod));
        col->is_key = (flags & 1) != 0;
    }

    outboxd_pgo_relation_t **slot = rel_find_slot(dec->rels, dec->rels_cap, oid);
    if (*slot)
        rel_free(*slot);
    else
        dec->rels_count++;
    *slot = rel;
    out->u.relation = rel;
    return 0;
}

static bool datums_reserve(datum_array_t *a, int n)
{
    if (n <= a->cap)
        return true;
    int cap = a->cap ? a->cap : 16;
    while (cap < n)
        cap *= 2;
    outboxd_pgo_datum_t *items = realloc(a->items, (size_t)cap * sizeof(*items));
    if (!items)
        return false;
    a->items = items;
    a->cap = cap;
    return true;
}

static int decode_tuple(reader_t *r, const outboxd_pgo_relation_t *rel, datum_array_t *arr,
                        outboxd_pgo_tuple_t *tup)
{
    uint16_t ncols_raw;
    if (get_u16(r, &ncols_raw) < 0)
        return -1;
    int16_t ncols = (int16_t)ncols_raw;
    if (ncols != rel->ncols)
        return fail(r, "%s tuple for %s.%s has %d columns, relation has %d (offset %zu)", r->what,
                    rel->nspname, rel->relname, (int)ncols, rel->ncols, r->pos - 2);
    if (!datums_reserve(arr, ncols))
        return fail(r, "out of memory decoding %s tuple", r->what);
    for (int i = 0; i < ncols; i++) {
        outboxd_pgo_datum_t *d = &arr->items[i];
        uint8_t kind;
        if (get_u8(r, &kind) < 0)
            return -1;
        d->kind = (char)kind;
        d->data = NULL;
        d->len = 0;
        switch (kind) {
        case 'n':
        case 'u':
            break;
        case 't':
        case 'b': {
            const uint8_t *data;
            if (get_u32(r, &d->len) < 0)
                return -1;
            if (d->len > r->len - r->pos)
                return fail(r,
                            "%s column %d (%s) length %" PRIu32
                            " exceeds the %zu bytes left at offset %zu",
                            r->what, i + 1, rel->cols[i].name, d->len, r->len - r->pos, r->pos);
            get_bytes(r, d->len, &data);
            d->data = (const char *)data;
            break;
        }
        default:
            return fail(r, "unknown column kind 0x%02x in %s column %d (%s) at offset %zu", kind,
                        r->what, i + 1, rel->cols[i].name, r->pos - 1);
        }
    }
    tup->ncols = ncols;
    tup->cols = arr->items;
    return 0;
}

static int change_relation(outboxd_pgo_decoder_t *dec, reader_t *r, outboxd_pgo_msg_t *out)
{
    uint32_t oid;
    if (read_stream_xid(dec, r, out) < 0 || get_u32(r, &oid) < 0)
        return -1;
    out->u.change.rel = outboxd_pgo_relation_get(dec, oid);
    if (!out->u.change.rel)
        return fail(r, "%s for unknown relation oid %" PRIu32 " (no Relation message seen)",
                    r->what, oid);
    return 0;
}

static int expect_tuple_tag(reader_t *r, uint8_t tag, const char *allowed)
{
    if (!strchr(allowed, tag) || tag == '\0')
        return fail(r, "unexpected tuple tag 0x%02x in %s message at offset %zu (expected %s)", tag,
                    r->what, r->pos - 1, allowed);
    return 0;
}

static int decode_insert(outboxd_pgo_decoder_t *dec, reader_t *r, outboxd_pgo_msg_t *out)
{
    uint8_t tag;
    if (change_relation(dec, r, out) < 0 || get_u8(r, &tag) < 0 ||
        expect_tuple_tag(r, tag, "N") < 0 ||
        decode_tuple(r, out->u.change.rel, &dec->new_datums, &out->u.change.new_tuple) < 0)
        return -1;
    return expect_end(r);
}

static int decode_update(outboxd_pgo_decoder_t *dec, reader_t *r, outboxd_pgo_msg_t *out)
{
    uint8_t tag;
    if (change_relation(dec, r, out) < 0 || get_u8(r, &tag) < 0 ||
        expect_tuple_tag(r, tag, "KON") < 0)
        return -1;
    if (tag == 'K' || tag == 'O') {
        out->u.change.old_kind = (char)tag;
        if (decode_tuple(r, out->u.change.rel, &dec->old_datums, &out->u.change.old_tuple) < 0 ||
            get_u8(r, &tag) < 0 || expect_tuple_tag(r, tag, "N") < 0)
            return -1;
    }
    if (decode_tuple(r, out->u.change.rel, &dec->new_datums, &out->u.change.new_tuple) < 0)
        return -1;
    return expect_end(r);
}

static int decode_delete(outboxd_pgo_decoder_t *dec, reader_t *r, outboxd_pgo_msg_t *out)
{
    uint8_t tag;
    if (change_relation(dec, r, out) < 0 || get_u8(r, &tag) < 0 ||
        expect_tuple_tag(r, tag, "KO") < 0)
        return -1;
    out->u.change.old_kind = (char)tag;
    if (decode_tuple(r, out->u.change.rel, &dec->old_datums, &out->u.change.old_tuple) < 0)
        return -1;
    return expect_end(r);
}

static int decode_truncate(outboxd_pgo_decoder_t *dec, reader_t *r, outboxd_pgo_msg_t *out)
{
    uint32_t nrels;
    if (read_stream_xid(dec, r, out) < 0 || get_u32(r, &nrels) < 0 ||
        get_u8(r, &out->u.truncate.options) < 0)
        return -1;
    /* Check the count against what is left before allocating for it. */
    if (nrels > (r->len - r->pos) / 4 || nrels > INT32_MAX)
        return fail(r, "Truncate relation count %" PRIu32 " exceeds the %zu bytes left", nrels,
                    r->len - r->pos);
    if (nrels > dec->trunc_cap) {
        uint32_t *oids = realloc(dec->trunc_oids, (size_t)nrels * sizeof(*oids));
        if (!oids)
            return fail(r, "out of memory decoding Truncate message");
        dec->trunc_oids = oids;
        dec->trunc_cap = nrels;
    }
    for (uint32_t i = 0; i < nrels; i++)
        get_u32(r, &dec->trunc_oids[i]);
    out->u.truncate.nrels = (int)nrels;
    out->u.truncate.rel_oids = dec->trunc_oids;
    return expect_end(r);
}

static int decode_stream_start(reader_t *r, outboxd_pgo_msg_t *out)
{
    uint8_t first;
    if (get_u32(r, &out->u.stream_start.xid) < 0 || get_u8(r, &first) < 0)
        return -1;
    out->u.stream_start.first_segment = first == 1;
    return expect_end(r);
}

static int decode_stream_commit(reader_t *r, outboxd_pgo_msg_t *out)
{
    if (get_u32(r, &out->u.stream_commit.xid) < 0 || get_u8(r, &out->u.stream_commit.flags) < 0 ||
        get_u64(r, &out->u.stream_commit.commit_lsn) < 0 ||
        get_u64(r, &out->u.stream_commit.end_lsn) < 0 ||
        get_i64(r, &out->u.stream_commit.commit_ts) < 0)
        return -1;
    return expect_end(r);
}

static int decode_stream_abort(reader_t *r, outboxd_pgo_msg_t *out)
{
    if (get_u32(r, &out->u.stream_abort.xid) < 0 || get_u32(r, &out->u.stream_abort.subxid) < 0)
        return -1;
    /* Protocol 4 with streaming = parallel appends abort_lsn and abort_ts;
     * nothing in the message says so, only its length does. */
    if (r->pos == r->len)
        return 0;
    if (get_u64(r, &out->u.stream_abort.abort_lsn) < 0 ||
        get_i64(r, &out->u.stream_abort.abort_ts) < 0)
        return -1;
    return expect_end(r);
}

/* Begin Prepare: no flags byte; the others start with one. */
static int decode_twophase(reader_t *r, outboxd_pgo_msg_t *out, bool has_flags, bool two_ts)
{
    if (has_flags && get_u8(r, &out->u.twophase.flags) < 0)
        return -1;
    if (get_u64(r, &out->u.twophase.lsn1) < 0 || get_u64(r, &out->u.twophase.lsn2) < 0 ||
        get_i64(r, &out->u.twophase.ts1) < 0)
        return -1;
    if (two_ts && get_i64(r, &out->u.twophase.ts2) < 0)
        return -1;
    if (get_u32(r, &out->u.twophase.xid) < 0 || get_str(r, &out->u.twophase.gid, NULL) < 0)
        return -1;
    return expect_end(r);
}

/* ---- entry point ---- */

const char *outboxd_pgo_kind_name(outboxd_pgo_kind_t kind)
{
    switch (kind) {
    case OUTBOXD_PGO_BEGIN:
        return "Begin";
    case OUTBOXD_PGO_MESSAGE:
        return "Message";
    case OUTBOXD_PGO_COMMIT:
        return "Commit";
    case OUTBOXD_PGO_ORIGIN:
        return "Origin";
    case OUTBOXD_PGO_RELATION:
        return "Relation";
    case OUTBOXD_PGO_TYPE:
        return "Type";
    case OUTBOXD_PGO_INSERT:
        return "Insert";
    case OUTBOXD_PGO_UPDATE:
        return "Update";
    case OUTBOXD_PGO_DELETE:
        return "Delete";
    case OUTBOXD_PGO_TRUNCATE:
        return "Truncate";
    case OUTBOXD_PGO_STREAM_START:
        return "Stream Start";
    case OUTBOXD_PGO_STREAM_STOP:
        return "Stream Stop";
    case OUTBOXD_PGO_STREAM_COMMIT:
        return "Stream Commit";
    case OUTBOXD_PGO_STREAM_ABORT:
        return "Stream Abort";
    case OUTBOXD_PGO_BEGIN_PREPARE:
        return "Begin Prepare";
    case OUTBOXD_PGO_PREPARE:
        return "Prepare";
    case OUTBOXD_PGO_COMMIT_PREPARED:
        return "Commit Prepared";
    case OUTBOXD_PGO_ROLLBACK_PREPARED:
        return "Rollback Prepared";
    case OUTBOXD_PGO_STREAM_PREPARE:
        return "Stream Prepare";
    }
    return "Unknown";
}

static bool known_kind(uint8_t b)
{
    return strchr("BMCORYIUDTSEcAbPKrp", b) != NULL && b != '\0';
}

/* Messages the server may send between Stream Start and Stream Stop. Origin
 * follows Stream Start of a transaction that has one (without an xid). */
static bool allowed_in_stream(uint8_t b)
{
    return strchr("RYIUDTMOE", b) != NULL && b != '\0';
}

int outboxd_pgo_decode(outboxd_pgo_decoder_t *dec, const uint8_t *buf, size_t len,
                       outboxd_pgo_msg_t *out, char *errstr, size_t errstr_size)
{
    reader_t r = {buf, len, 0, "pgoutput", errstr, errstr_size};
    if (!dec || !out || (!buf && len))
        return fail(&r, "invalid arguments");
    memset(out, 0, sizeof(*out));
    if (len == 0)
        return fail(&r, "empty message");

    uint8_t type = buf[0];
    r.pos = 1;
    if (!known_kind(type))
        return fail(&r, "unknown message type 0x%02x", type);
    outboxd_pgo_kind_t kind = (outboxd_pgo_kind_t)type;
    out->kind = kind;
    r.what = outboxd_pgo_kind_name(kind);

    if (dec->in_stream && !allowed_in_stream(type))
        return fail(&r, "%s message inside a stream (xid %" PRIu32 ")", r.what, dec->stream_xid);

    switch (kind) {
    case OUTBOXD_PGO_BEGIN:
        return decode_begin(&r, out);
    case OUTBOXD_PGO_MESSAGE:
        return decode_message(dec, &r, out);
    case OUTBOXD_PGO_COMMIT:
        return decode_commit(&r, out);
    case OUTBOXD_PGO_ORIGIN:
        if (decode_origin(&r, out) < 0)
            return -1;
        /* Tie an in-stream Origin to its stream although the wire carries no
         * xid for it. */
        if (dec->in_stream)
            out->stream_xid = dec->stream_xid;
        return 0;
    case OUTBOXD_PGO_RELATION:
        return decode_relation(dec, &r, out);
    case OUTBOXD_PGO_TYPE:
        return decode_type(dec, &r, out);
    case OUTBOXD_PGO_INSERT:
        return decode_insert(dec, &r, out);
    case OUTBOXD_PGO_UPDATE:
        return decode_update(dec, &r, out);
    case OUTBOXD_PGO_DELETE:
        return decode_delete(dec, &r, out);
    case OUTBOXD_PGO_TRUNCATE:
        return decode_truncate(dec, &r, out);
    case OUTBOXD_PGO_STREAM_START:
        if (decode_stream_start(&r, out) < 0)
            return -1;
        dec->in_stream = true;
        dec->stream_xid = out->u.stream_start.xid;
        return 0;
    case OUTBOXD_PGO_STREAM_STOP:
        if (!dec->in_stream)
            return fail(&r, "Stream Stop without Stream Start");
        if (expect_end(&r) < 0)
            return -1;
        dec->in_stream = false;
        dec->stream_xid = 0;
        return 0;
    case OUTBOXD_PGO_STREAM_COMMIT:
        return decode_stream_commit(&r, out);
    case OUTBOXD_PGO_STREAM_ABORT:
        return decode_stream_abort(&r, out);
    case OUTBOXD_PGO_BEGIN_PREPARE:
        return decode_twophase(&r, out, false, false);
    case OUTBOXD_PGO_PREPARE:
    case OUTBOXD_PGO_STREAM_PREPARE:
    case OUTBOXD_PGO_COMMIT_PREPARED:
        return decode_twophase(&r, out, true, false);
    case OUTBOXD_PGO_ROLLBACK_PREPARED:
        return decode_twophase(&r, out, true, true);
    }
    return fail(&r, "unknown message type 0x%02x", type);
}

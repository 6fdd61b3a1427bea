/*
 * Fuzz target: the pgoutput decoder (src/relay/pgoutput.c).
 *
 * Input: the fixture format of tests/data/pgoutput/NAME.bin, a sequence of
 * records, each a 4-byte big-endian length then one pgoutput message; a last
 * record shorter than its length is decoded as what is left. One decoder
 * sees the whole sequence, so Relation messages and stream state carry over
 * to the changes that follow, as on a real connection.
 *
 * Beyond "no crash, no sanitizer report", every decoded message is checked:
 * what it points to lies inside the input or the decoder's relation cache,
 * tuples have the relation's column count, and a failed decode names its
 * cause.
 */
#include <string.h>

#include "fuzz.h"
#include "outboxd/relay/pgoutput.h"

static bool inside(const void *p, size_t n, const uint8_t *buf, size_t len)
{
    const uint8_t *q = p;
    return q >= buf && n <= len && q - buf <= (ptrdiff_t)(len - n);
}

/* A NUL-terminated string that lies wholly inside buf. */
static bool str_inside(const char *s, const uint8_t *buf, size_t len)
{
    if (!inside(s, 1, buf, len))
        return false;
    size_t left = len - (size_t)((const uint8_t *)s - buf);
    return memchr(s, '\0', left) != NULL;
}

static void check_tuple(const outboxd_pgo_tuple_t *t, const outboxd_pgo_relation_t *rel,
                        const uint8_t *buf, size_t len)
{
    FUZZ_CHECK(t->ncols == rel->ncols);
    for (int i = 0; i < t->ncols; i++) {
        const outboxd_pgo_datum_t *d = &t->cols[i];
        FUZZ_CHECK(d->kind == 'n' || d->kind == 'u' || d->kind == 't' || d->kind == 'b');
        if (d->kind == 't' || d->kind == 'b')
            FUZZ_CHECK(d->len == 0 || inside(d->data, d->len, buf, len));
    }
}

static void check_msg(const outboxd_pgo_decoder_t *dec, const outboxd_pgo_msg_t *m,
                      const uint8_t *buf, size_t len)
{
    FUZZ_CHECK(strcmp(outboxd_pgo_kind_name(m->kind), "") != 0);
    switch (m->kind) {
    case OUTBOXD_PGO_RELATION: {
        const outboxd_pgo_relation_t *rel = m->u.relation;
        FUZZ_CHECK(rel && outboxd_pgo_relation_get(dec, rel->oid) == rel);
        FUZZ_CHECK(rel->ncols >= 0 && rel->nspname[0] != '\0');
        for (int i = 0; i < rel->ncols; i++)
            FUZZ_CHECK(strlen(rel->cols[i].name) < len);
        break;
    }
    case OUTBOXD_PGO_INSERT:
    case OUTBOXD_PGO_UPDATE:
    case OUTBOXD_PGO_DELETE: {
        const outboxd_pgo_relation_t *rel = m->u.change.rel;
        FUZZ_CHECK(rel && outboxd_pgo_relation_get(dec, rel->oid) == rel);
        if (m->kind != OUTBOXD_PGO_DELETE)
            check_tuple(&m->u.change.new_tuple, rel, buf, len);
        else
            FUZZ_CHECK(m->u.change.new_tuple.ncols == 0);
        if (m->u.change.old_kind)
            check_tuple(&m->u.change.old_tuple, rel, buf, len);
        else
            FUZZ_CHECK(m->u.change.old_tuple.ncols == 0);
        break;
    }
    case OUTBOXD_PGO_MESSAGE:
        FUZZ_CHECK(str_inside(m->u.message.prefix, buf, len));
        FUZZ_CHECK(m->u.message.content_len == 0 ||
                   inside(m->u.message.content, m->u.message.content_len, buf, len));
        break;
    case OUTBOXD_PGO_ORIGIN:
        FUZZ_CHECK(str_inside(m->u.origin.name, buf, len));
        break;
    case OUTBOXD_PGO_TYPE:
        FUZZ_CHECK(str_inside(m->u.type.typname, buf, len));
        break;
    case OUTBOXD_PGO_TRUNCATE:
        FUZZ_CHECK(m->u.truncate.nrels >= 0);
        for (int i = 0; i < m->u.truncate.nrels; i++)
            (void)m->u.truncate.rel_oids[i]; /* readable (ASan checks) */
        break;
    case OUTBOXD_PGO_BEGIN_PREPARE:
    case OUTBOXD_PGO_PREPARE:
    case OUTBOXD_PGO_COMMIT_PREPARED:
    case OUTBOXD_PGO_ROLLBACK_PREPARED:
    case OUTBOXD_PGO_STREAM_PREPARE:
        FUZZ_CHECK(str_inside(m->u.twophase.gid, buf, len));
        break;
    default:
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    outboxd_pgo_decoder_t *dec = outboxd_pgo_decoder_new();
    FUZZ_CHECK(dec);
    size_t pos = 0;
    while (pos < size) {
        size_t n = size - pos; /* fewer than 4 bytes left: they are the message */
        if (n >= 4) {
            n = (size_t)data[pos] << 24 | (size_t)data[pos + 1] << 16 | (size_t)data[pos + 2] << 8 |
                data[pos + 3];
            pos += 4;
            if (n > size - pos)
                n = size - pos;
        }
        /* A copy of exactly n bytes, so ASan sees any read past the message
         * (the decoder must not rely on bytes after it). */
        uint8_t *msg = malloc(n ? n : 1);
        FUZZ_CHECK(msg);
        memcpy(msg, data + pos, n);
        pos += n;
        outboxd_pgo_msg_t out;
        char err[256] = "";
        memset(&out, 0, sizeof(out));
        if (outboxd_pgo_decode(dec, msg, n, &out, err, sizeof(err)) == 0)
            check_msg(dec, &out, msg, n);
        else
            FUZZ_CHECK(strncmp(err, "pgoutput: ", 10) == 0 && err[10] != '\0');
        free(msg);
    }
    outboxd_pgo_decoder_destroy(dec);
    return 0;
}

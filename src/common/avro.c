/*
 * Avro single-object encoding of outbox events, on avro-c's generic values.
 *
 * The schema's fingerprint is taken over a Parsing Canonical Form that we
 * build from the schema's own JSON text with jansson: avro-c 1.11's
 * avro_schema_to_json drops logicalType and defaults, so a schema written out
 * by avro-c is not the schema we publish.
 */
#include "outboxd/common/avro.h"
#include "outboxd/common/avro_datum.h"

#include <avro.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAGIC0      0xC3
#define MAGIC1      0x01
#define HEADER_LEN  10
#define RABIN_EMPTY UINT64_C(0xc15d213aa4d7a795)
/* Bounds recursion over schemas and data, which may come from outside. */
#define MAX_DEPTH 128
/* Longest zig-zag varint of a 64-bit value. */
#define VARINT_MAX 10

struct outboxd_avro {
    avro_schema_t schema;
    avro_value_iface_t *iface;
    avro_value_t value;
    bool value_ok;
    avro_writer_t writer;
    avro_reader_t reader;
    uint64_t fingerprint;
    unsigned char header[HEADER_LEN];

    /* Field handles into value; generic record fields live inside the record,
     * so these stay valid for the value's lifetime. */
    avro_value_t f_id, f_type, f_aggregate_type, f_aggregate_id, f_payload, f_occurred_at;
    avro_value_t f_name, f_database, f_table, f_lsn, f_commit_lsn, f_xid, f_commit_time;
    int payload_null_branch;
    int payload_string_branch;

    /* avro-c reads one byte past a string's length, so strings that are not
     * NUL-terminated are copied here first. */
    char *scratch;
    size_t scratch_cap;
};

static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
{
    if (!errstr || errstr_size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
}

/* ---- CRC-64-AVRO (Rabin) fingerprint ---------------------------------- */

static uint64_t rabin_table[256];
static pthread_once_t rabin_once = PTHREAD_ONCE_INIT;

static void rabin_init(void)
{
    for (unsigned i = 0; i < 256; i++) {
        uint64_t fp = i;
        for (int j = 0; j < 8; j++)
            fp = (fp >> 1) ^ (RABIN_EMPTY & (0 - (fp & 1)));
        rabin_table[i] = fp;
    }
}

uint64_t outboxd_avro_fingerprint64(const void *data, size_t len)
{
    pthread_once(&rabin_once, rabin_init);
    const unsigned char *p = data;
    uint64_t fp = RABIN_EMPTY;
    for (size_t i = 0; i < len; i++)
        fp = (fp >> 8) ^ rabin_table[(fp ^ p[i]) & 0xff];
    return fp;
}

/* ---- Parsing Canonical Form -------------------------------------------- */

typedef struct canon {
    outboxd_buf_t out;
    char **names; /* fullnames defined so far, for references */
    size_t nnames, names_cap;
    char *errstr;
    size_t errstr_size;
    bool oom;
} canon_t;

static const char *const primitives[] = {"null",  "boolean", "int",   "long",
                                         "float", "double",  "bytes", "string"};

static bool is_primitive(const char *s)
{
    for (size_t i = 0; i < sizeof(primitives) / sizeof(primitives[0]); i++)
        if (strcmp(s, primitives[i]) == 0)
            return true;
    return false;
}

static void emit(canon_t *c, const char *s)
{
    if (!outboxd_buf_append_str(&c->out, s))
        c->oom = true;
}

/* [STRINGS]: JSON string literal with the minimal escapes; UTF-8 passes
 * through unchanged. */
static void emit_string(canon_t *c, const char *s)
{
    emit(c, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        switch (*p) {
        case '"':
            emit(c, "\\\"");
            break;
        case '\\':
            emit(c, "\\\\");
            break;
        case '\b':
            emit(c, "\\b");
            break;
        case '\f':
            emit(c, "\\f");
            break;
        case '\n':
            emit(c, "\\n");
            break;
        case '\r':
            emit(c, "\\r");
            break;
        case '\t':
            emit(c, "\\t");
            break;
        default:
            if (*p < 0x20) {
                snprintf(esc, sizeof(esc), "\\u%04x", *p);
                emit(c, esc);
            } else if (!outboxd_buf_append(&c->out, p, 1)) {
                c->oom = true;
            }
        }
    }
    emit(c, "\"");
}

static bool name_defined(const canon_t *c, const char *fullname)
{
    for (size_t i = 0; i < c->nnames; i++)
        if (strcmp(c->names[i], fullname) == 0)
            return true;
    return false;
}

/* Takes ownership of fullname. */
static bool define_name(canon_t *c, char *fullname)
{
    if (name_defined(c, fullname)) {
        set_err(c->errstr, c->errstr_size, "schema: type name \"%s\" is defined twice", fullname);
        free(fullname);
        return false;
    }
    if (c->nnames == c->names_cap) {
        size_t cap = c->names_cap ? c->names_cap * 2 : 8;
        char **n = realloc(c->names, cap * sizeof(*n));
        if (!n) {
            free(fullname);
            c->oom = true;
            return false;
        }
        c->names = n;
        c->names_cap = cap;
    }
    c->names[c->nnames++] = fullname;
    return true;
}

/* [FULLNAMES]: a dotted name is already full; otherwise it lives in ns. */
static char *make_fullname(const char *name, const char *ns)
{
    if (strchr(name, '.') || !ns || !*ns)
        return strdup(name);
    size_t nl = strlen(ns), ml = strlen(name);
    char *s = malloc(nl + 1 + ml + 1);
    if (!s)
        return NULL;
    memcpy(s, ns, nl);
    s[nl] = '.';
    memcpy(s + nl + 1, name, ml + 1);
    return s;
}

/* The namespace that a named type passes on to the types nested in it. */
static char *namespace_of(const char *fullname)
{
    const char *dot = strrchr(fullname, '.');
    return outboxd_strndup(fullname, dot ? (size_t)(dot - fullname) : 0);
}

static bool canon_schema(canon_t *c, json_t *s, const char *ns, int depth);

static bool canon_reference(canon_t *c, const char *name, const char *ns)
{
    char *full = make_fullname(name, ns);
    if (!full) {
        c->oom = true;
        return false;
    }
    /* A short name that is not defined in the enclosing namespace may still
     * name a type in the null namespace (as the Java implementation resolves). */
    if (!name_defined(c, full) && !strchr(name, '.') && name_defined(c, name)) {
        free(full);
        full = strdup(name);
        if (!full) {
            c->oom = true;
            return false;
        }
    }
    if (!name_defined(c, full)) {
        set_err(c->errstr, c->errstr_size, "schema: unknown type \"%s\"", full);
        free(full);
        return false;
    }
    emit_string(c, full);
    free(full);
    return true;
}

static const char *get_string_member(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool canon_named(canon_t *c, json_t *s, const char *type, const char *ns, int depth)
{
    const char *name = get_string_member(s, "name");
    if (!name || !*name) {
        set_err(c->errstr, c->errstr_size, "schema: %s without a name", type);
        return false;
    }
    const char *own_ns = ns;
    json_t *nsj = json_object_get(s, "namespace");
    if (json_is_string(nsj))
        own_ns = json_string_value(nsj);
    else if (nsj && !json_is_null(nsj)) {
        set_err(c->errstr, c->errstr_size, "schema: namespace of %s is not a string", name);
        return false;
    }
    char *full = make_fullname(name, own_ns);
    char *inner_ns = full ? namespace_of(full) : NULL;
    if (!full || !inner_ns) {
        free(full);
        free(inner_ns);
        c->oom = true;
        return false;
    }
    emit(c, "{\"name\":");
    emit_string(c, full);
    emit(c, ",\"type\":");
    /* Java, the reference implementation, writes an error as a record. */
    emit_string(c, strcmp(type, "error") == 0 ? "record" : type);
    /* Defined before its fields so that a record may refer to itself. */
    if (!define_name(c, full)) {
        free(inner_ns);
        return false;
    }

    bool ok = true;
    if (strcmp(type, "enum") == 0) {
        json_t *syms = json_object_get(s, "symbols");
        if (!json_is_array(syms)) {
            set_err(c->errstr, c->errstr_size, "schema: enum %s has no symbols array", name);
            ok = false;
        }
        emit(c, ",\"symbols\":[");
        for (size_t i = 0; ok && i < json_array_size(syms); i++) {
            json_t *sym = json_array_get(syms, i);
            if (!json_is_string(sym)) {
                set_err(c->errstr, c->errstr_size, "schema: enum %s has a non-string symbol", name);
                ok = false;
                break;
            }
            if (i)
                emit(c, ",");
            emit_string(c, json_string_value(sym));
        }
        emit(c, "]}");
    } else if (strcmp(type, "fixed") == 0) {
        json_t *size = json_object_get(s, "size");
        if (!json_is_integer(size) || json_integer_value(size) < 0) {
            set_err(c->errstr, c->errstr_size, "schema: fixed %s has no valid size", name);
            ok = false;
        } else {
            char num[32];
            /* [INTEGERS]: plain decimal, no leading zeros */
            snprintf(num, sizeof(num), ",\"size\":%" JSON_INTEGER_FORMAT "}",
                     json_integer_value(size));
            emit(c, num);
        }
    } else { /* record, error */
        json_t *fields = json_object_get(s, "fields");
        if (!json_is_array(fields)) {
            set_err(c->errstr, c->errstr_size, "schema: record %s has no fields array", name);
            ok = false;
        }
        emit(c, ",\"fields\":[");
        for (size_t i = 0; ok && i < json_array_size(fields); i++) {
            json_t *f = json_array_get(fields, i);
            const char *fname = json_is_object(f) ? get_string_member(f, "name") : NULL;
            json_t *ftype = json_is_object(f) ? json_object_get(f, "type") : NULL;
            if (!fname || !ftype) {
                set_err(c->errstr, c->errstr_size,
                        "schema: field %zu of record %s needs a name and a type", i, name);
                ok = false;
                break;
            }
            emit(c, i ? ",{\"name\":" : "{\"name\":");
            emit_string(c, fname);
            emit(c, ",\"type\":");
            ok = canon_schema(c, ftype, inner_ns, depth + 1);
            emit(c, "}");
        }
        emit(c, "]}");
    }
    free(inner_ns);
    return ok;
}

static bool canon_schema(canon_t *c, json_t *s, const char *ns, int depth)
{
    if (depth > MAX_DEPTH) {
        set_err(c->errstr, c->errstr_size, "schema: nested too deeply");
        return false;
    }
    if (c->oom)
        return false;

    if (json_is_string(s)) {
        const char *name = json_string_value(s);
        if (is_primitive(name)) {
            emit_string(c, name);
            return true;
        }
        return canon_reference(c, name, ns);
    }

    if (json_is_array(s)) { /* union */
        emit(c, "[");
        for (size_t i = 0; i < json_array_size(s); i++) {
            if (i)
                emit(c, ",");
            if (!canon_schema(c, json_array_get(s, i), ns, depth + 1))
                return false;
        }
        emit(c, "]");
        return true;
    }

    if (!json_is_object(s)) {
        set_err(c->errstr, c->errstr_size, "schema: expected a string, array or object");
        return false;
    }

    json_t *tj = json_object_get(s, "type");
    if (json_is_object(tj) || json_is_array(tj))
        return canon_schema(c, tj, ns, depth + 1);
    if (!json_is_string(tj)) {
        set_err(c->errstr, c->errstr_size, "schema: object without a \"type\" string");
        return false;
    }
    const char *type = json_string_value(tj);

    /* [PRIMITIVES]: {"type":"long","logicalType":...} becomes "long". */
    if (is_primitive(type)) {
        emit_string(c, type);
        return true;
    }
    if (strcmp(type, "record") == 0 || strcmp(type, "error") == 0 || strcmp(type, "enum") == 0 ||
        strcmp(type, "fixed") == 0)
        return canon_named(c, s, type, ns, depth);
    if (strcmp(type, "array") == 0 || strcmp(type, "map") == 0) {
        bool is_array = type[0] == 'a';
        const char *key = is_array ? "items" : "values";
        json_t *sub = json_object_get(s, key);
        if (!sub) {
            set_err(c->errstr, c->errstr_size, "schema: %s without \"%s\"", type, key);
            return false;
        }
        emit(c, is_array ? "{\"type\":\"array\",\"items\":" : "{\"type\":\"map\",\"values\":");
        if (!canon_schema(c, sub, ns, depth + 1))
            return false;
        emit(c, "}");
        return true;
    }
    /* {"type":"SomeName"} refers to a type defined earlier. */
    return canon_reference(c, type, ns);
}

char *outboxd_avro_canonical_form(const char *schema_json, char *errstr, size_t errstr_size)
{
    json_error_t jerr;
    json_t *root = json_loads(schema_json, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        set_err(errstr, errstr_size, "schema JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                jerr.column);
        return NULL;
    }
    canon_t c = {.errstr = errstr, .errstr_size = errstr_size};
    bool ok = canon_schema(&c, root, "", 0);
    json_decref(root);
    for (size_t i = 0; i < c.nnames; i++)
        free(c.names[i]);
    free(c.names);
    if (ok && c.oom)
        set_err(errstr, errstr_size, "schema: out of memory");
    if (!ok || c.oom) {
        outboxd_buf_free(&c.out);
        return NULL;
    }
    if (!c.out.data) /* nothing was emitted; cannot happen for a valid schema */
        return strdup("");
    return c.out.data;
}

/* ---- instance ----------------------------------------------------------- */

static bool get_field(avro_value_t *rec, const char *name, avro_type_t type, avro_value_t *dst,
                      char *errstr, size_t errstr_size)
{
    if (avro_value_get_by_name(rec, name, dst, NULL) != 0) {
        set_err(errstr, errstr_size, "envelope schema: no field \"%s\"", name);
        return false;
    }
    if (avro_value_get_type(dst) != type) {
        set_err(errstr, errstr_size, "envelope schema: field \"%s\" has an unexpected type", name);
        return false;
    }
    return true;
}

static bool bind_fields(outboxd_avro_t *av, char *errstr, size_t errstr_size)
{
    avro_value_t *v = &av->value;
    avro_value_t source;
    if (!get_field(v, "id", AVRO_STRING, &av->f_id, errstr, errstr_size) ||
        !get_field(v, "type", AVRO_STRING, &av->f_type, errstr, errstr_size) ||
        !get_field(v, "aggregate_type", AVRO_STRING, &av->f_aggregate_type, errstr, errstr_size) ||
        !get_field(v, "aggregate_id", AVRO_STRING, &av->f_aggregate_id, errstr, errstr_size) ||
        !get_field(v, "payload", AVRO_UNION, &av->f_payload, errstr, errstr_size) ||
        !get_field(v, "occurred_at", AVRO_INT64, &av->f_occurred_at, errstr, errstr_size) ||
        !get_field(v, "source", AVRO_RECORD, &source, errstr, errstr_size) ||
        !get_field(&source, "name", AVRO_STRING, &av->f_name, errstr, errstr_size) ||
        !get_field(&source, "database", AVRO_STRING, &av->f_database, errstr, errstr_size) ||
        !get_field(&source, "table", AVRO_STRING, &av->f_table, errstr, errstr_size) ||
        !get_field(&source, "lsn", AVRO_INT64, &av->f_lsn, errstr, errstr_size) ||
        !get_field(&source, "commit_lsn", AVRO_INT64, &av->f_commit_lsn, errstr, errstr_size) ||
        !get_field(&source, "xid", AVRO_INT64, &av->f_xid, errstr, errstr_size) ||
        !get_field(&source, "commit_time", AVRO_INT64, &av->f_commit_time, errstr, errstr_size))
        return false;

    avro_schema_t u = avro_value_get_schema(&av->f_payload);
    av->payload_null_branch = av->payload_string_branch = -1;
    for (size_t i = 0; i < avro_schema_union_size(u); i++) {
        avro_schema_t b = avro_schema_union_branch(u, (int)i);
        if (is_avro_null(b))
            av->payload_null_branch = (int)i;
        else if (is_avro_string(b))
            av->payload_string_branch = (int)i;
    }
    if (av->payload_null_branch < 0 || av->payload_string_branch < 0) {
        set_err(errstr, errstr_size, "envelope schema: payload must be a union of null and string");
        return false;
    }
    return true;
}

outboxd_avro_t *outboxd_avro_new(char *errstr, size_t errstr_size)
{
    outboxd_avro_t *av = calloc(1, sizeof(*av));
    if (!av) {
        set_err(errstr, errstr_size, "out of memory");
        return NULL;
    }
    const char *json = outboxd_envelope_schema_json;
    if (avro_schema_from_json_length(json, strlen(json), &av->schema) != 0) {
        set_err(errstr, errstr_size, "envelope schema: %s", avro_strerror());
        goto fail;
    }
    char *canon = outboxd_avro_canonical_form(json, errstr, errstr_size);
    if (!canon)
        goto fail;
    av->fingerprint = outboxd_avro_fingerprint64(canon, strlen(canon));
    free(canon);
    av->header[0] = MAGIC0;
    av->header[1] = MAGIC1;
    for (int i = 0; i < 8; i++)
        av->header[2 + i] = (unsigned char)(av->fingerprint >> (8 * i));

    av->iface = avro_generic_class_from_schema(av->schema);
    if (!av->iface) {
        set_err(errstr, errstr_size, "avro value class: %s", avro_strerror());
        goto fail;
    }
    if (avro_generic_value_new(av->iface, &av->value) != 0) {
        set_err(errstr, errstr_size, "avro value: %s", avro_strerror());
        goto fail;
    }
    av->value_ok = true;
    if (!bind_fields(av, errstr, errstr_size))
        goto fail;
    av->writer = avro_writer_memory(NULL, 0);
    av->reader = avro_reader_memory(NULL, 0);
    if (!av->writer || !av->reader) {
        set_err(errstr, errstr_size, "avro memory reader/writer: %s", avro_strerror());
        goto fail;
    }
    return av;
fail:
    outboxd_avro_destroy(av);
    return NULL;
}

void outboxd_avro_destroy(outboxd_avro_t *av)
{
    if (!av)
        return;
    if (av->writer)
        avro_writer_free(av->writer);
    if (av->reader)
        avro_reader_free(av->reader);
    if (av->value_ok)
        avro_value_decref(&av->value);
    if (av->iface)
        avro_value_iface_decref(av->iface);
    if (av->schema)
        avro_schema_decref(av->schema);
    free(av->scratch);
    free(av);
}

uint64_t outboxd_avro_envelope_fingerprint(const outboxd_avro_t *av)
{
    return av->fingerprint;
}

/* ---- encode ------------------------------------------------------------- */

static int set_str(outboxd_avro_t *av, avro_value_t *field, outboxd_str_t s)
{
    /* avro_value_set_string_len takes the size including a NUL terminator
     * and copies that many bytes, so the source must have a readable NUL. */
    if (s.len + 1 > av->scratch_cap) {
        size_t cap = av->scratch_cap ? av->scratch_cap : 256;
        while (cap < s.len + 1)
            cap *= 2;
        char *p = realloc(av->scratch, cap);
        if (!p)
            return ENOMEM;
        av->scratch = p;
        av->scratch_cap = cap;
    }
    if (s.len)
        memcpy(av->scratch, s.ptr, s.len);
    av->scratch[s.len] = '\0';
    return avro_value_set_string_len(field, av->scratch, s.len + 1);
}

int outboxd_avro_encode(outboxd_avro_t *av, const outboxd_envelope_t *ev, outboxd_buf_t *out,
                        char *errstr, size_t errstr_size)
{
    int rc = avro_value_reset(&av->value);
    avro_value_t branch;
    if (!rc)
        rc = set_str(av, &av->f_id, ev->id);
    if (!rc)
        rc = set_str(av, &av->f_type, ev->type);
    if (!rc)
        rc = set_str(av, &av->f_aggregate_type, ev->aggregate_type);
    if (!rc)
        rc = set_str(av, &av->f_aggregate_id, ev->aggregate_id);
    if (!rc)
        rc = avro_value_set_branch(
            &av->f_payload, ev->payload_null ? av->payload_null_branch : av->payload_string_branch,
            &branch);
    if (!rc)
        rc = ev->payload_null ? avro_value_set_null(&branch) : set_str(av, &branch, ev->payload);
    if (!rc)
        rc = avro_value_set_long(&av->f_occurred_at, ev->occurred_at_us);
    if (!rc)
        rc = set_str(av, &av->f_name, ev->source_name);
    if (!rc)
        rc = set_str(av, &av->f_database, ev->database);
    if (!rc)
        rc = set_str(av, &av->f_table, ev->table);
    /* LSNs stay below 2^63 in practice; Avro has no unsigned long. */
    if (!rc)
        rc = avro_value_set_long(&av->f_lsn, (int64_t)ev->lsn);
    if (!rc)
        rc = avro_value_set_long(&av->f_commit_lsn, (int64_t)ev->commit_lsn);
    if (!rc)
        rc = avro_value_set_long(&av->f_xid, (int64_t)ev->xid);
    if (!rc)
        rc = avro_value_set_long(&av->f_commit_time, ev->commit_time_us);
    if (rc) {
        set_err(errstr, errstr_size, "avro encode: %s",
                rc == ENOMEM ? "out of memory" : avro_strerror());
        return -1;
    }

    /* An upper bound on the datum size for this schema (every string and long
     * costs at most VARINT_MAX bytes beyond its content), so one pass
     * normally suffices; the retry only guards against a schema change. */
    size_t cap = ev->id.len + ev->type.len + ev->aggregate_type.len + ev->aggregate_id.len +
                 (ev->payload_null ? 0 : ev->payload.len) + ev->source_name.len + ev->database.len +
                 ev->table.len + 16 * VARINT_MAX;
    for (;;) {
        if (!outboxd_buf_reserve(out, HEADER_LEN + cap)) {
            set_err(errstr, errstr_size, "avro encode: out of memory");
            return -1;
        }
        char *dst = out->data + out->len;
        avro_writer_memory_set_dest(av->writer, dst + HEADER_LEN, (int64_t)cap);
        rc = avro_value_write(av->writer, &av->value);
        if (rc == 0)
            break;
        if (rc != ENOSPC) {
            set_err(errstr, errstr_size, "avro encode: %s", avro_strerror());
            return -1;
        }
        cap *= 2;
    }
    int64_t written = avro_writer_tell(av->writer);
    memcpy(out->data + out->len, av->header, HEADER_LEN);
    out->len += HEADER_LEN + (size_t)written;
    out->data[out->len] = '\0';
    return 0;
}

/* ---- decode ------------------------------------------------------------- */

static bool read_varint(const unsigned char **p, const unsigned char *end, int64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < VARINT_MAX; i++) {
        if (*p >= end)
            return false;
        unsigned char b = *(*p)++;
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = (int64_t)((v >> 1) ^ (0 - (v & 1)));
            return true;
        }
    }
    return false;
}

/*
 * Walks one datum of schema s without building it. avro-c 1.11.1 allocates
 * whatever length a string claims before checking that the bytes are there,
 * so one damaged length means a huge allocation (an abort under ASan); input
 * is checked here before avro_value_read sees it.
 */
static bool check_datum(avro_schema_t s, const unsigned char **p, const unsigned char *end,
                        int depth, char *errstr, size_t errstr_size)
{
    int64_t n;
    if (depth > MAX_DEPTH) {
        set_err(errstr, errstr_size, "avro decode: datum nested too deeply");
        return false;
    }
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return true;
    case AVRO_BOOLEAN:
        if (*p >= end || **p > 1)
            goto bad;
        (*p)++;
        return true;
    case AVRO_INT32:
        if (!read_varint(p, end, &n) || n < INT32_MIN || n > INT32_MAX)
            goto bad;
        return true;
    case AVRO_INT64:
        if (!read_varint(p, end, &n))
            goto bad;
        return true;
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
        n = avro_typeof(s) == AVRO_FLOAT ? 4 : 8;
        if (end - *p < n)
            goto bad;
        *p += n;
        return true;
    case AVRO_STRING:
    case AVRO_BYTES:
        if (!read_varint(p, end, &n) || n < 0 || n > end - *p)
            goto bad;
        *p += n;
        return true;
    case AVRO_FIXED:
        n = avro_schema_fixed_size(s);
        if (n < 0 || n > end - *p)
            goto bad;
        *p += n;
        return true;
    case AVRO_ENUM:
        if (!read_varint(p, end, &n) || n < 0 || n >= avro_schema_enum_number_of_symbols(s))
            goto bad;
        return true;
    case AVRO_UNION:
        if (!read_varint(p, end, &n) || n < 0 || (uint64_t)n >= avro_schema_union_size(s))
            goto bad;
        return check_datum(avro_schema_union_branch(s, (int)n), p, end, depth + 1, errstr,
                           errstr_size);
    case AVRO_RECORD:
        for (size_t i = 0; i < avro_schema_record_size(s); i++)
            if (!check_datum(avro_schema_record_field_get_by_index(s, (int)i), p, end, depth + 1,
                             errstr, errstr_size))
                return false;
        return true;
    case AVRO_ARRAY:
    case AVRO_MAP:
        for (;;) {
            int64_t bytes;
            if (!read_varint(p, end, &n))
                goto bad;
            if (n == 0)
                return true;
            if (n < 0) {
                if (n == INT64_MIN || !read_varint(p, end, &bytes))
                    goto bad;
                n = -n;
            }
            /* Also bounds the work for items that take no bytes (null). */
            if (n > end - *p)
                goto bad;
            for (int64_t i = 0; i < n; i++) {
                if (avro_typeof(s) == AVRO_MAP) {
                    int64_t klen;
                    if (!read_varint(p, end, &klen) || klen < 0 || klen > end - *p)
                        goto bad;
                    *p += klen;
                }
                avro_schema_t item = avro_typeof(s) == AVRO_MAP ? avro_schema_map_values(s)
                                                                : avro_schema_array_items(s);
                if (!check_datum(item, p, end, depth + 1, errstr, errstr_size))
                    return false;
            }
        }
    case AVRO_LINK:
        return check_datum(avro_schema_link_target(s), p, end, depth + 1, errstr, errstr_size);
    default:
        set_err(errstr, errstr_size, "avro decode: unsupported schema type");
        return false;
    }
bad:
    set_err(errstr, errstr_size, "avro decode: truncated or malformed datum");
    return false;
}

/* A JSON string for s; bytes that are not UTF-8 become U+FFFD, since the
 * decoder is for looking at data, which should not fail on one bad byte. */
static json_t *json_text(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j)
        return j;
    outboxd_buf_t b = {0};
    const unsigned char *p = (const unsigned char *)s;
    bool ok = true;
    for (size_t i = 0; i < len && ok;) {
        size_t n = outboxd_utf8_len(p + i, len - i);
        if (n) {
            ok = outboxd_buf_append(&b, p + i, n);
            i += n;
        } else {
            ok = outboxd_buf_append(&b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    j = ok ? json_stringn(b.data ? b.data : "", b.len) : NULL;
    outboxd_buf_free(&b);
    return j;
}

static json_t *value_to_json(avro_value_t *v, int depth)
{
    if (depth > MAX_DEPTH)
        return NULL;
    switch (avro_value_get_type(v)) {
    case AVRO_NULL:
        return json_null();
    case AVRO_BOOLEAN: {
        int b = 0;
        return avro_value_get_boolean(v, &b) ? NULL : json_boolean(b);
    }
    case AVRO_INT32: {
        int32_t i = 0;
        return avro_value_get_int(v, &i) ? NULL : json_integer(i);
    }
    case AVRO_INT64: {
        int64_t l = 0;
        return avro_value_get_long(v, &l) ? NULL : json_integer(l);
    }
    case AVRO_FLOAT:
    case AVRO_DOUBLE: {
        double d = 0;
        float f = 0;
        int rc = avro_value_get_type(v) == AVRO_FLOAT ? avro_value_get_float(v, &f)
                                                      : avro_value_get_double(v, &d);
        if (rc)
            return NULL;
        if (avro_value_get_type(v) == AVRO_FLOAT)
            d = f;
        json_t *j = json_real(d);
        return j ? j : json_null(); /* NaN and infinities have no JSON form */
    }
    case AVRO_STRING: {
        const char *s = NULL;
        size_t size = 0;
        /* size counts the NUL terminator */
        if (avro_value_get_string(v, &s, &size))
            return NULL;
        return json_text(s ? s : "", size ? size - 1 : 0);
    }
    case AVRO_BYTES:
    case AVRO_FIXED: {
        const void *buf = NULL;
        size_t size = 0;
        int rc = avro_value_get_type(v) == AVRO_BYTES ? avro_value_get_bytes(v, &buf, &size)
                                                      : avro_value_get_fixed(v, &buf, &size);
        return rc ? NULL : json_text(buf ? buf : "", size);
    }
    case AVRO_ENUM: {
        int idx = 0;
        if (avro_value_get_enum(v, &idx))
            return NULL;
        const char *sym = avro_schema_enum_get(avro_value_get_schema(v), idx);
        return sym ? json_string(sym) : NULL;
    }
    case AVRO_UNION: {
        avro_value_t branch;
        if (avro_value_get_current_branch(v, &branch))
            return NULL;
        return value_to_json(&branch, depth + 1);
    }
    case AVRO_ARRAY:
    case AVRO_MAP:
    case AVRO_RECORD: {
        bool is_array = avro_value_get_type(v) == AVRO_ARRAY;
        size_t n = 0;
        if (avro_value_get_size(v, &n))
            return NULL;
        json_t *res = is_array ? json_array() : json_object();
        for (size_t i = 0; res && i < n; i++) {
            avro_value_t child;
            const char *name = NULL;
            json_t *cj = NULL;
            if (avro_value_get_by_index(v, i, &child, &name) == 0)
                cj = value_to_json(&child, depth + 1);
            if (!cj || (is_array ? json_array_append_new(res, cj)
                                 : json_object_set_new(res, name ? name : "", cj))) {
                json_decref(res);
                res = NULL;
            }
        }
        return res;
    }
    default:
        return NULL;
    }
}

bool outboxd_avro_datum_check(avro_schema_t s, const unsigned char **p, const unsigned char *end,
                              char *errstr, size_t errstr_size)
{
    return check_datum(s, p, end, 0, errstr, errstr_size);
}

json_t *outboxd_avro_value_to_json(avro_value_t *v)
{
    return value_to_json(v, 0);
}

char *outboxd_avro_decode_to_json(outboxd_avro_t *av, const void *buf, size_t len, char *errstr,
                                  size_t errstr_size)
{
    const unsigned char *b = buf;
    if (len < 2) {
        set_err(errstr, errstr_size, "avro decode: %zu-byte message, too short for magic C3 01",
                len);
        return NULL;
    }
    if (b[0] != MAGIC0 || b[1] != MAGIC1) {
        set_err(errstr, errstr_size,
                "avro decode: magic %02X %02X, expected C3 01 (Avro single-object encoding)", b[0],
                b[1]);
        return NULL;
    }
    if (len < HEADER_LEN) {
        set_err(errstr, errstr_size,
                "avro decode: %zu-byte message, too short for the 8-byte schema fingerprint", len);
        return NULL;
    }
    uint64_t fp = 0;
    for (int i = 0; i < 8; i++)
        fp |= (uint64_t)b[2 + i] << (8 * i);
    if (fp != av->fingerprint) {
        set_err(errstr, errstr_size,
                "avro decode: schema fingerprint %016" PRIx64
                " does not match the envelope schema's %016" PRIx64,
                fp, av->fingerprint);
        return NULL;
    }

    const unsigned char *p = b + HEADER_LEN, *end = b + len;
    if (!check_datum(av->schema, &p, end, 0, errstr, errstr_size))
        return NULL;
    if (p != end) {
        set_err(errstr, errstr_size, "avro decode: %zu trailing bytes after the datum",
                (size_t)(end - p));
        return NULL;
    }

    avro_reader_memory_set_source(av->reader, (const char *)b + HEADER_LEN,
                                  (int64_t)(len - HEADER_LEN));
    if (avro_value_read(av->reader, &av->value) != 0) {
        set_err(errstr, errstr_size, "avro decode: %s", avro_strerror());
        return NULL;
    }
    json_t *root = value_to_json(&av->value, 0);
    if (!root) {
        set_err(errstr, errstr_size, "avro decode: cannot render the datum as JSON");
        return NULL;
    }
    /* The payload is JSON text: embed it as a value when it parses. */
    json_t *payload = json_object_get(root, "payload");
    if (json_is_string(payload)) {
        json_t *parsed = json_loadb(json_string_value(payload), json_string_length(payload),
                                    JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (parsed)
            json_object_set_new(root, "payload", parsed);
    }
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text)
        set_err(errstr, errstr_size, "avro decode: out of memory");
    return text;
}

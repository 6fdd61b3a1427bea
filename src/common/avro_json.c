/*
 * JSON values -> Avro binary under an .avsc schema (see avro_json.h).
 *
 * The datum is written directly (zig-zag varints, length-prefixed strings,
 * little-endian floats, blocks for arrays and maps): simpler than avro-c's
 * value API for data that arrives as JSON, and it knows the logical types
 * that avro-c 1.11 does not.
 */
#include "outboxd/common/avro_json.h"

#include <avro.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outboxd/common/avro.h"

/* Bounds recursion over schemas and data. */
#define MAX_DEPTH 64

typedef enum {
    T_NULL,
    T_BOOLEAN,
    T_INT,
    T_LONG,
    T_FLOAT,
    T_DOUBLE,
    T_BYTES,
    T_STRING,
    T_RECORD,
    T_ENUM,
    T_ARRAY,
    T_MAP,
    T_UNION,
    T_FIXED,
} kind_t;

typedef enum {
    L_NONE,
    L_DECIMAL,
    L_UUID,
    L_DATE,
    L_TIME_MILLIS,
    L_TIME_MICROS,
    L_TS_MILLIS,
    L_TS_MICROS,
    L_LOCAL_TS_MILLIS,
    L_LOCAL_TS_MICROS,
} logical_t;

typedef struct node node_t;

typedef struct field {
    char *name;
    node_t *type;
    json_t *def; /* default value, or NULL */
} field_t;

struct node {
    kind_t kind;
    logical_t logical;
    int precision, scale; /* decimal */
    char *name;           /* full name of a named type */
    field_t *fields;      /* record */
    char **symbols;       /* enum */
    node_t **branches;    /* union */
    size_t n;             /* fields, symbols or branches */
    node_t *items;        /* array items, map values */
    int64_t size;         /* fixed */
};

struct outboxd_avsc {
    char *text;
    json_t *json;
    node_t **nodes; /* every node, for freeing */
    size_t n_nodes, cap_nodes;
    node_t *root;
    uint64_t fingerprint;
};

static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
{
    if (!errstr || !errstr_size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
}

/* ---- compiling a schema ------------------------------------------------- */

typedef struct compiler {
    outboxd_avsc_t *sc;
    char *errstr;
    size_t errstr_size;
} compiler_t;

static node_t *new_node(compiler_t *c, kind_t kind)
{
    outboxd_avsc_t *sc = c->sc;
    if (sc->n_nodes == sc->cap_nodes) {
        size_t cap = sc->cap_nodes ? sc->cap_nodes * 2 : 16;
        node_t **p = realloc(sc->nodes, cap * sizeof(*p));
        if (!p)
            return NULL;
        sc->nodes = p;
        sc->cap_nodes = cap;
    }
    node_t *n = calloc(1, sizeof(*n));
    if (!n)
        return NULL;
    n->kind = kind;
    sc->nodes[sc->n_nodes++] = n;
    return n;
}

static const struct {
    const char *name;
    kind_t kind;
} prim_names[] = {{"null", T_NULL},   {"boolean", T_BOOLEAN}, {"int", T_INT},
                  {"long", T_LONG},   {"float", T_FLOAT},     {"double", T_DOUBLE},
                  {"bytes", T_BYTES}, {"string", T_STRING}};

static int prim_kind(const char *s)
{
    for (size_t i = 0; i < sizeof(prim_names) / sizeof(prim_names[0]); i++)
        if (strcmp(s, prim_names[i].name) == 0)
            return (int)prim_names[i].kind;
    return -1;
}

static char *full_name(const char *name, const char *ns)
{
    if (strchr(name, '.') || !ns || !*ns)
        return strdup(name);
    size_t n = strlen(ns) + strlen(name) + 2;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s.%s", ns, name);
    return s;
}

static node_t *find_named(compiler_t *c, const char *name, const char *ns)
{
    char *full = full_name(name, ns);
    node_t *found = NULL;
    for (size_t i = 0; full && i < c->sc->n_nodes && !found; i++) {
        node_t *n = c->sc->nodes[i];
        if (n->name && strcmp(n->name, full) == 0)
            found = n;
    }
    /* An unqualified name may also refer to the null namespace. */
    for (size_t i = 0; !found && !strchr(name, '.') && i < c->sc->n_nodes; i++) {
        node_t *n = c->sc->nodes[i];
        if (n->name && strcmp(n->name, name) == 0)
            found = n;
    }
    free(full);
    return found;
}

/* Largest decimal precision a fixed of size bytes can hold:
 * floor(log10(2^(8*size-1) - 1)). */
static int fixed_max_precision(int64_t size)
{
    if (size <= 0)
        return 0;
    if (size > 64)
        size = 64;
    return (int)floor(log10(2.0) * (double)(8 * size - 1));
}

static node_t *compile(compiler_t *c, json_t *s, const char *ns, const char *where, int depth);

static bool set_logical(compiler_t *c, node_t *n, json_t *s, const char *where)
{
    const char *lt = json_string_value(json_object_get(s, "logicalType"));
    if (!lt)
        return true;
    struct {
        const char *name;
        logical_t l;
        kind_t on;
    } map[] = {{"uuid", L_UUID, T_STRING},
               {"date", L_DATE, T_INT},
               {"time-millis", L_TIME_MILLIS, T_INT},
               {"time-micros", L_TIME_MICROS, T_LONG},
               {"timestamp-millis", L_TS_MILLIS, T_LONG},
               {"timestamp-micros", L_TS_MICROS, T_LONG},
               {"local-timestamp-millis", L_LOCAL_TS_MILLIS, T_LONG},
               {"local-timestamp-micros", L_LOCAL_TS_MICROS, T_LONG}};
    if (strcmp(lt, "decimal") == 0) {
        if (n->kind != T_BYTES && n->kind != T_FIXED) {
            set_err(c->errstr, c->errstr_size, "%s: logicalType decimal needs bytes or fixed",
                    where);
            return false;
        }
        json_t *p = json_object_get(s, "precision"), *sc = json_object_get(s, "scale");
        if (!json_is_integer(p) || json_integer_value(p) < 1 ||
            (sc && (!json_is_integer(sc) || json_integer_value(sc) < 0 ||
                    json_integer_value(sc) > json_integer_value(p)))) {
            set_err(c->errstr, c->errstr_size,
                    "%s: decimal needs an integer precision >= 1 and 0 <= scale <= precision",
                    where);
            return false;
        }
        n->precision = (int)json_integer_value(p);
        n->scale = sc ? (int)json_integer_value(sc) : 0;
        if (n->kind == T_FIXED && n->size > 256) {
            set_err(c->errstr, c->errstr_size, "%s: a decimal fixed may have at most 256 bytes",
                    where);
            return false;
        }
        if (n->kind == T_FIXED && n->precision > fixed_max_precision(n->size)) {
            set_err(c->errstr, c->errstr_size,
                    "%s: decimal precision %d does not fit a fixed of %lld bytes (at most %d)",
                    where, n->precision, (long long)n->size, fixed_max_precision(n->size));
            return false;
        }
        if (n->kind == T_BYTES && n->precision > 1000) {
            set_err(c->errstr, c->errstr_size, "%s: decimal precision %d is too large", where,
                    n->precision);
            return false;
        }
        n->logical = L_DECIMAL;
        return true;
    }
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        if (strcmp(lt, map[i].name) != 0)
            continue;
        if (n->kind != map[i].on) {
            set_err(c->errstr, c->errstr_size, "%s: logicalType %s needs type %s", where, lt,
                    prim_names[map[i].on].name);
            return false;
        }
        n->logical = map[i].l;
        return true;
    }
    /* The spec: unknown logical types are read as their underlying type. */
    return true;
}

static node_t *compile_named(compiler_t *c, json_t *s, const char *type, const char *ns,
                             const char *where, int depth)
{
    const char *name = json_string_value(json_object_get(s, "name"));
    if (!name || !*name) {
        set_err(c->errstr, c->errstr_size, "%s: %s without a name", where, type);
        return NULL;
    }
    const char *own_ns = json_string_value(json_object_get(s, "namespace"));
    if (!own_ns)
        own_ns = ns;
    char *full = full_name(name, own_ns);
    if (!full)
        return NULL;
    if (find_named(c, full, NULL)) {
        set_err(c->errstr, c->errstr_size, "%s: type %s is defined twice", where, full);
        free(full);
        return NULL;
    }
    kind_t kind = strcmp(type, "enum") == 0    ? T_ENUM
                  : strcmp(type, "fixed") == 0 ? T_FIXED
                                               : T_RECORD;
    node_t *n = new_node(c, kind);
    if (!n) {
        free(full);
        return NULL;
    }
    n->name = full;
    const char *dot = strrchr(full, '.');
    char *inner_ns = outboxd_strndup(full, dot ? (size_t)(dot - full) : 0);
    if (!inner_ns)
        return NULL;
    node_t *ret = n;
    if (kind == T_ENUM) {
        json_t *syms = json_object_get(s, "symbols");
        if (!json_is_array(syms) || json_array_size(syms) == 0) {
            set_err(c->errstr, c->errstr_size, "%s: enum %s needs a symbols array", where, full);
            ret = NULL;
        } else {
            n->symbols = calloc(json_array_size(syms), sizeof(char *));
            for (size_t i = 0; n->symbols && i < json_array_size(syms); i++) {
                const char *sym = json_string_value(json_array_get(syms, i));
                if (!sym) {
                    set_err(c->errstr, c->errstr_size, "%s: enum %s has a non-string symbol", where,
                            full);
                    ret = NULL;
                    break;
                }
                n->symbols[n->n++] = strdup(sym);
            }
            if (!n->symbols)
                ret = NULL;
        }
    } else if (kind == T_FIXED) {
        json_t *size = json_object_get(s, "size");
        if (!json_is_integer(size) || json_integer_value(size) < 0 ||
            json_integer_value(size) > (1 << 20)) {
            set_err(c->errstr, c->errstr_size, "%s: fixed %s needs a size", where, full);
            ret = NULL;
        } else {
            n->size = json_integer_value(size);
            if (!set_logical(c, n, s, where))
                ret = NULL;
        }
    } else {
        json_t *fields = json_object_get(s, "fields");
        if (!json_is_array(fields)) {
            set_err(c->errstr, c->errstr_size, "%s: record %s needs a fields array", where, full);
            ret = NULL;
        } else {
            n->fields = calloc(json_array_size(fields) + 1, sizeof(field_t));
            if (!n->fields)
                ret = NULL;
            for (size_t i = 0; ret && i < json_array_size(fields); i++) {
                json_t *f = json_array_get(fields, i);
                const char *fname = json_string_value(json_object_get(f, "name"));
                json_t *ftype = json_object_get(f, "type");
                if (!fname || !ftype) {
                    set_err(c->errstr, c->errstr_size,
                            "%s: field %zu of record %s needs a name and a type", where, i, full);
                    ret = NULL;
                    break;
                }
                char fwhere[512];
                snprintf(fwhere, sizeof(fwhere), "%s.%s", where, fname);
                field_t *fl = &n->fields[n->n++];
                fl->name = strdup(fname);
                fl->def = json_object_get(f, "default");
                fl->type = compile(c, ftype, inner_ns, fwhere, depth + 1);
                if (!fl->name || !fl->type)
                    ret = NULL;
            }
        }
    }
    free(inner_ns);
    return ret;
}

static node_t *compile(compiler_t *c, json_t *s, const char *ns, const char *where, int depth)
{
    if (depth > MAX_DEPTH) {
        set_err(c->errstr, c->errstr_size, "%s: schema nested too deeply", where);
        return NULL;
    }
    if (json_is_string(s)) {
        const char *name = json_string_value(s);
        int k = prim_kind(name);
        if (k >= 0)
            return new_node(c, (kind_t)k);
        node_t *n = find_named(c, name, ns);
        if (!n)
            set_err(c->errstr, c->errstr_size, "%s: unknown type \"%s\"", where, name);
        return n;
    }
    if (json_is_array(s)) {
        node_t *n = new_node(c, T_UNION);
        if (!n)
            return NULL;
        n->branches = calloc(json_array_size(s) + 1, sizeof(node_t *));
        if (!n->branches)
            return NULL;
        for (size_t i = 0; i < json_array_size(s); i++) {
            node_t *b = compile(c, json_array_get(s, i), ns, where, depth + 1);
            if (!b)
                return NULL;
            if (b->kind == T_UNION) {
                set_err(c->errstr, c->errstr_size, "%s: a union may not contain a union", where);
                return NULL;
            }
            n->branches[n->n++] = b;
        }
        return n;
    }
    if (!json_is_object(s)) {
        set_err(c->errstr, c->errstr_size, "%s: expected a type name, an array or an object",
                where);
        return NULL;
    }
    json_t *tj = json_object_get(s, "type");
    if (json_is_object(tj) || json_is_array(tj))
        return compile(c, tj, ns, where, depth + 1);
    const char *type = json_string_value(tj);
    if (!type) {
        set_err(c->errstr, c->errstr_size, "%s: object without a \"type\"", where);
        return NULL;
    }
    int k = prim_kind(type);
    if (k >= 0) {
        node_t *n = new_node(c, (kind_t)k);
        if (!n || !set_logical(c, n, s, where))
            return NULL;
        return n;
    }
    if (!strcmp(type, "record") || !strcmp(type, "error") || !strcmp(type, "enum") ||
        !strcmp(type, "fixed"))
        return compile_named(c, s, type, ns, where, depth);
    if (!strcmp(type, "array") || !strcmp(type, "map")) {
        bool arr = type[0] == 'a';
        json_t *sub = json_object_get(s, arr ? "items" : "values");
        if (!sub) {
            set_err(c->errstr, c->errstr_size, "%s: %s without \"%s\"", where, type,
                    arr ? "items" : "values");
            return NULL;
        }
        node_t *n = new_node(c, arr ? T_ARRAY : T_MAP);
        if (!n)
            return NULL;
        n->items = compile(c, sub, ns, where, depth + 1);
        return n->items ? n : NULL;
    }
    node_t *n = find_named(c, type, ns);
    if (!n)
        set_err(c->errstr, c->errstr_size, "%s: unknown type \"%s\"", where, type);
    return n;
}

outboxd_avsc_t *outboxd_avsc_parse(const char *text, size_t len, char *errstr, size_t errstr_size)
{
    outboxd_avsc_t *sc = calloc(1, sizeof(*sc));
    if (!sc) {
        set_err(errstr, errstr_size, "out of memory");
        return NULL;
    }
    sc->text = outboxd_strndup(text, len);
    if (!sc->text) {
        set_err(errstr, errstr_size, "out of memory");
        goto fail;
    }
    json_error_t jerr;
    sc->json = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!sc->json) {
        set_err(errstr, errstr_size, "not valid JSON: %s (line %d, column %d)", jerr.text,
                jerr.line, jerr.column);
        goto fail;
    }
    /* avro-c's parser as a second opinion on what Avro accepts (names,
     * defaults), so a schema we take is one other implementations take. */
    avro_schema_t as = NULL;
    if (avro_schema_from_json_length(text, len, &as) != 0) {
        set_err(errstr, errstr_size, "not a valid Avro schema: %s", avro_strerror());
        goto fail;
    }
    avro_schema_decref(as);
    compiler_t c = {.sc = sc, .errstr = errstr, .errstr_size = errstr_size};
    if (errstr && errstr_size)
        errstr[0] = '\0';
    sc->root = compile(&c, sc->json, "", "schema", 0);
    if (!sc->root) {
        if (errstr && errstr_size && !errstr[0])
            set_err(errstr, errstr_size, "out of memory");
        goto fail;
    }
    char *canon = outboxd_avro_canonical_form(sc->text, errstr, errstr_size);
    if (!canon)
        goto fail;
    sc->fingerprint = outboxd_avro_fingerprint64(canon, strlen(canon));
    free(canon);
    return sc;
fail:
    outboxd_avsc_destroy(sc);
    return NULL;
}

void outboxd_avsc_destroy(outboxd_avsc_t *sc)
{
    if (!sc)
        return;
    for (size_t i = 0; i < sc->n_nodes; i++) {
        node_t *n = sc->nodes[i];
        free(n->name);
        for (size_t j = 0; n->fields && j < n->n; j++)
            free(n->fields[j].name);
        free(n->fields);
        for (size_t j = 0; n->symbols && j < n->n; j++)
            free(n->symbols[j]);
        free(n->symbols);
        free(n->branches);
        free(n);
    }
    free(sc->nodes);
    json_decref(sc->json);
    free(sc->text);
    free(sc);
}

const char *outboxd_avsc_text(const outboxd_avsc_t *sc)
{
    return sc->text;
}

const char *outboxd_avsc_fullname(const outboxd_avsc_t *sc)
{
    return sc->root->name;
}

bool outboxd_avsc_is_record(const outboxd_avsc_t *sc)
{
    return sc->root->kind == T_RECORD;
}

uint64_t outboxd_avsc_fingerprint(const outboxd_avsc_t *sc)
{
    return sc->fingerprint;
}

/* ---- writing ------------------------------------------------------------ */

bool outboxd_avro_write_long(outboxd_buf_t *out, int64_t v)
{
    uint64_t z = ((uint64_t)v << 1) ^ (uint64_t)(v >> 63);
    unsigned char b[10];
    size_t n = 0;
    while (z & ~UINT64_C(0x7f)) {
        b[n++] = (unsigned char)((z & 0x7f) | 0x80);
        z >>= 7;
    }
    b[n++] = (unsigned char)z;
    return outboxd_buf_append(out, b, n);
}

bool outboxd_avro_write_string(outboxd_buf_t *out, const char *s, size_t len)
{
    return outboxd_avro_write_long(out, (int64_t)len) && outboxd_buf_append(out, s, len);
}

static bool write_float(outboxd_buf_t *out, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    unsigned char b[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                          (unsigned char)(u >> 24)};
    return outboxd_buf_append(out, b, 4);
}

static bool write_double(outboxd_buf_t *out, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    unsigned char b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(u >> (8 * i));
    return outboxd_buf_append(out, b, 8);
}

/* ---- encoding JSON ------------------------------------------------------ */

typedef struct enc {
    outboxd_buf_t *out;
    outboxd_buf_t path; /* "payload.items[2]" while descending */
    char *errstr;
    size_t errstr_size;
    bool oom;
} enc_t;

/* Short rendering of a JSON value for messages: "abc", 12, {...}. */
static void describe(const json_t *v, char *buf, size_t n)
{
    if (!v) {
        snprintf(buf, n, "nothing");
        return;
    }
    if (json_is_object(v)) {
        snprintf(buf, n, "an object");
        return;
    }
    if (json_is_array(v)) {
        snprintf(buf, n, "an array");
        return;
    }
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) {
        snprintf(buf, n, "a value");
        return;
    }
    if (strlen(s) > 60)
        snprintf(buf, n, "%.57s...", s);
    else
        snprintf(buf, n, "%s", s);
    free(s);
}

static const char *type_name(const node_t *n, char *buf, size_t size)
{
    switch (n->logical) {
    case L_DECIMAL:
        snprintf(buf, size, "decimal(%d,%d)", n->precision, n->scale);
        return buf;
    case L_UUID:
        return "uuid";
    case L_DATE:
        return "date";
    case L_TIME_MILLIS:
        return "time-millis";
    case L_TIME_MICROS:
        return "time-micros";
    case L_TS_MILLIS:
        return "timestamp-millis";
    case L_TS_MICROS:
        return "timestamp-micros";
    case L_LOCAL_TS_MILLIS:
        return "local-timestamp-millis";
    case L_LOCAL_TS_MICROS:
        return "local-timestamp-micros";
    case L_NONE:
        break;
    }
    switch (n->kind) {
    case T_RECORD:
        snprintf(buf, size, "record %s", n->name);
        return buf;
    case T_ENUM:
        snprintf(buf, size, "enum %s", n->name);
        return buf;
    case T_FIXED:
        snprintf(buf, size, "fixed %s (%lld bytes)", n->name, (long long)n->size);
        return buf;
    case T_ARRAY:
        return "array";
    case T_MAP:
        return "map";
    case T_UNION:
        return "union";
    default:
        return prim_names[n->kind].name;
    }
}

/* "path: expected T, got V[ (detail)]"; returns 1 (a mismatch). */
static int mismatch(enc_t *e, const node_t *n, const json_t *v, const char *detail)
{
    char tn[128], got[80];
    describe(v, got, sizeof(got));
    set_err(e->errstr, e->errstr_size, "%s: expected %s, got %s%s%s%s", e->path.data,
            type_name(n, tn, sizeof(tn)), got, detail ? " (" : "", detail ? detail : "",
            detail ? ")" : "");
    return 1;
}

static bool out_ok(enc_t *e, bool ok)
{
    if (!ok)
        e->oom = true;
    return ok;
}

/* An integral JSON number as int64. */
static bool json_int64(const json_t *v, int64_t *out)
{
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return true;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        /* Beyond 2^53 a double need not be the integer that was written. */
        if (d != floor(d) || fabs(d) > 9007199254740992.0)
            return false;
        *out = (int64_t)d;
        return true;
    }
    return false;
}

/* ---- base64 (RFC 4648, padding required, no line breaks) ---- */

static int b64val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* Decodes s into out (appended). Returns false on malformed input. */
static bool b64_decode(const char *s, size_t len, outboxd_buf_t *out, bool *oom)
{
    if (len % 4)
        return false;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            unsigned char ch = (unsigned char)s[i + k];
            if (ch == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad)
                return false;
            v[k] = b64val(ch);
            if (v[k] < 0)
                return false;
        }
        unsigned char b[3] = {(unsigned char)(v[0] << 2 | v[1] >> 4),
                              (unsigned char)(v[1] << 4 | v[2] >> 2),
                              (unsigned char)(v[2] << 6 | v[3])};
        if (!outboxd_buf_append(out, b, (size_t)(3 - pad))) {
            *oom = true;
            return false;
        }
    }
    return true;
}

/* ---- decimals ---- */

/*
 * Parses decimal text ("-12.50", "1e3") to an unscaled integer at scale,
 * written as minimal big-endian two's complement into be (cap bytes).
 * Returns the byte count, or -1 with why filled.
 */
static int decimal_bytes(const char *s, int precision, int scale, unsigned char *be, int cap,
                         char *why, size_t why_size)
{
    const char *p = s;
    bool neg = false;
    if (*p == '-' || *p == '+')
        neg = *p++ == '-';
    char digits[1100];
    int nd = 0, frac = 0;
    bool any = false, dot = false;
    for (; *p; p++) {
        if (*p >= '0' && *p <= '9') {
            any = true;
            if (nd == 0 && *p == '0') {
                if (dot)
                    frac++;
                continue; /* leading zero */
            }
            if (nd >= (int)sizeof(digits) - 1) {
                snprintf(why, why_size, "too many digits");
                return -1;
            }
            digits[nd++] = *p;
            if (dot)
                frac++;
        } else if (*p == '.' && !dot) {
            dot = true;
        } else {
            break;
        }
    }
    if (!any) {
        snprintf(why, why_size, "not a number");
        return -1;
    }
    long exp = 0;
    if (*p == 'e' || *p == 'E') {
        char *end;
        errno = 0;
        exp = strtol(p + 1, &end, 10);
        if (end == p + 1 || *end || errno || exp > 10000 || exp < -10000) {
            snprintf(why, why_size, "not a number");
            return -1;
        }
        p = end;
    }
    if (*p) {
        snprintf(why, why_size, "not a number");
        return -1;
    }
    /* value = digits * 10^(exp - frac); unscaled = digits * 10^(exp - frac + scale) */
    long shift = exp - frac + scale;
    if (shift < 0) {
        /* Drop trailing digits only when they are zeros: no rounding. */
        for (long i = 0; i < -shift; i++) {
            if (nd == 0)
                break;
            if (digits[nd - 1] != '0') {
                snprintf(why, why_size, "more than %d digits after the point", scale);
                return -1;
            }
            nd--;
        }
        shift = 0;
    }
    if (nd > 0 && nd + shift > precision) {
        snprintf(why, why_size, "more than %d digits", precision);
        return -1;
    }
    for (long i = 0; i < shift && nd > 0; i++)
        digits[nd++] = '0';
    /* Base-10 digits -> base-256, big-endian, magnitude in be[cap-len..cap). */
    int len = 0;
    memset(be, 0, (size_t)cap);
    for (int i = 0; i < nd; i++) {
        int carry = digits[i] - '0';
        for (int k = cap - 1; k >= cap - len; k--) {
            int v = be[k] * 10 + carry;
            be[k] = (unsigned char)(v & 0xff);
            carry = v >> 8;
        }
        while (carry) {
            if (len >= cap) {
                snprintf(why, why_size, "too large");
                return -1;
            }
            len++;
            be[cap - len] = (unsigned char)(carry & 0xff);
            carry >>= 8;
        }
    }
    if (len == 0)
        len = 1; /* zero */
    /* Room for the sign bit. */
    if (be[cap - len] & 0x80) {
        if (len >= cap) {
            snprintf(why, why_size, "too large");
            return -1;
        }
        len++;
    }
    if (neg) {
        /* two's complement of the len-byte magnitude */
        int carry = 1;
        for (int k = cap - 1; k >= cap - len; k--) {
            int v = (unsigned char)~be[k] + carry;
            be[k] = (unsigned char)(v & 0xff);
            carry = v >> 8;
        }
        /* -2^(8len-1) etc.: trim a redundant 0xff byte */
        while (len > 1 && be[cap - len] == 0xff && (be[cap - len + 1] & 0x80))
            len--;
    }
    memmove(be, be + cap - len, (size_t)len);
    return len;
}

static int enc_decimal(enc_t *e, const node_t *n, const json_t *v)
{
    char text[1100];
    if (json_is_string(v)) {
        if (json_string_length(v) >= sizeof(text))
            return mismatch(e, n, v, "too many digits");
        snprintf(text, sizeof(text), "%s", json_string_value(v));
    } else if (json_is_integer(v)) {
        snprintf(text, sizeof(text), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        /* A JSON number reached us as a double: only up to 15 significant
         * digits survive that exactly. */
        snprintf(text, sizeof(text), "%.15g", d);
        if (strtod(text, NULL) != d)
            return mismatch(e, n, v,
                            "a JSON number with more than 15 significant digits has lost "
                            "precision already; send the decimal as a string");
    } else {
        return mismatch(e, n, v, NULL);
    }
    unsigned char be[512];
    char why[128];
    int cap = n->kind == T_FIXED ? (int)n->size : (int)sizeof(be);
    if (cap > (int)sizeof(be))
        cap = (int)sizeof(be);
    int len = decimal_bytes(text, n->precision, n->scale, be, cap, why, sizeof(why));
    if (len < 0)
        return mismatch(e, n, v, why);
    if (n->kind == T_FIXED) {
        unsigned char fx[512];
        int64_t size = n->size;
        memset(fx, (be[0] & 0x80) ? 0xff : 0x00, (size_t)size);
        memcpy(fx + size - len, be, (size_t)len);
        return out_ok(e, outboxd_buf_append(e->out, fx, (size_t)size)) ? 0 : -1;
    }
    return out_ok(e, outboxd_avro_write_long(e->out, len) &&
                         outboxd_buf_append(e->out, be, (size_t)len))
               ? 0
               : -1;
}

/* ---- dates and times ---- */

static bool ndigits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)**p))
            return false;
        v = v * 10 + (**p - '0');
        (*p)++;
    }
    *out = v;
    return true;
}

static int64_t days_from_civil(int64_t y, int m, int d)
{
    /* Howard Hinnant's algorithm: proleptic Gregorian, no time zone. */
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static bool valid_date(int y, int m, int d)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m < 1 || m > 12 || d < 1)
        return false;
    int max = mdays[m - 1] + (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
    return d <= max;
}

static bool parse_date(const char **p, int64_t *days)
{
    int y, m, d;
    if (!ndigits(p, 4, &y) || *(*p)++ != '-' || !ndigits(p, 2, &m) || *(*p)++ != '-' ||
        !ndigits(p, 2, &d) || !valid_date(y, m, d))
        return false;
    *days = days_from_civil(y, m, d);
    return true;
}

/* HH:MM:SS[.ffffff] -> microseconds since midnight (more digits must be 0s). */
static bool parse_time(const char **p, int64_t *us, bool *extra_digits)
{
    int h, mi, s;
    if (!ndigits(p, 2, &h) || *(*p)++ != ':' || !ndigits(p, 2, &mi) || *(*p)++ != ':' ||
        !ndigits(p, 2, &s) || h > 23 || mi > 59 || s > 59)
        return false;
    int64_t frac = 0;
    int nf = 0;
    *extra_digits = false;
    if (**p == '.') {
        (*p)++;
        if (!isdigit((unsigned char)**p))
            return false;
        while (isdigit((unsigned char)**p)) {
            if (nf < 6) {
                frac = frac * 10 + (**p - '0');
                nf++;
            } else if (**p != '0') {
                *extra_digits = true;
            }
            (*p)++;
        }
    }
    while (nf++ < 6)
        frac *= 10;
    *us = ((int64_t)h * 3600 + mi * 60 + s) * 1000000 + frac;
    return true;
}

/* Zone suffix: Z, +HH:MM, +HHMM, +HH -> offset seconds. */
static bool parse_zone(const char **p, int *off)
{
    *off = 0;
    if (**p == 'Z' || **p == 'z') {
        (*p)++;
        return true;
    }
    if (**p != '+' && **p != '-')
        return false;
    int sign = *(*p)++ == '-' ? -1 : 1, h, m = 0;
    if (!ndigits(p, 2, &h) || h > 23)
        return false;
    if (**p == ':')
        (*p)++;
    if (isdigit((unsigned char)**p) && (!ndigits(p, 2, &m) || m > 59))
        return false;
    *off = sign * (h * 3600 + m * 60);
    return true;
}

static int enc_logical_time(enc_t *e, const node_t *n, const json_t *v)
{
    bool millis =
        n->logical == L_TIME_MILLIS || n->logical == L_TS_MILLIS || n->logical == L_LOCAL_TS_MILLIS;
    int64_t val;
    if (json_is_integer(v) || json_is_real(v)) {
        if (!json_int64(v, &val))
            return mismatch(e, n, v, "not an integer");
    } else if (json_is_string(v)) {
        const char *p = json_string_value(v);
        int64_t days = 0, us = 0;
        bool extra = false;
        int off = 0;
        switch (n->logical) {
        case L_DATE:
            if (!parse_date(&p, &days) || *p)
                return mismatch(e, n, v, "use YYYY-MM-DD");
            val = days;
            break;
        case L_TIME_MILLIS:
        case L_TIME_MICROS:
            if (!parse_time(&p, &us, &extra) || *p)
                return mismatch(e, n, v, "use HH:MM:SS[.ffffff]");
            if (extra || (millis && us % 1000))
                return mismatch(e, n, v, "more precision than the type holds");
            val = millis ? us / 1000 : us;
            break;
        default: { /* timestamps */
            bool local = n->logical == L_LOCAL_TS_MILLIS || n->logical == L_LOCAL_TS_MICROS;
            if (!parse_date(&p, &days) || (*p != 'T' && *p != 't' && *p != ' '))
                return mismatch(e, n, v,
                                local ? "use YYYY-MM-DDTHH:MM:SS[.ffffff]"
                                      : "use RFC 3339, e.g. 2026-12-01T10:00:00Z");
            p++;
            if (!parse_time(&p, &us, &extra))
                return mismatch(e, n, v, "use RFC 3339, e.g. 2026-12-01T10:00:00Z");
            if (*p && (local || !parse_zone(&p, &off)))
                return mismatch(e, n, v, local ? "a local timestamp has no zone" : "bad zone");
            if (*p)
                return mismatch(e, n, v, "trailing text");
            if (extra || (millis && us % 1000))
                return mismatch(e, n, v, "more precision than the type holds");
            /* days stay within +-3.7e6 (4-digit years): no overflow */
            int64_t total_us = days * 86400000000LL + us - (int64_t)off * 1000000;
            val = millis ? total_us / 1000 : total_us;
        }
        }
    } else {
        return mismatch(e, n, v, NULL);
    }
    if (n->kind == T_INT) {
        int64_t max = n->logical == L_TIME_MILLIS ? 86400000 : INT32_MAX;
        int64_t min = n->logical == L_TIME_MILLIS ? 0 : INT32_MIN;
        if (val < min || val >= max + (n->logical != L_TIME_MILLIS))
            return mismatch(e, n, v, "out of range");
    } else if (n->logical == L_TIME_MICROS && (val < 0 || val >= 86400000000LL)) {
        return mismatch(e, n, v, "out of range");
    }
    return out_ok(e, outboxd_avro_write_long(e->out, val)) ? 0 : -1;
}

static bool is_uuid(const char *s, size_t len)
{
    if (len != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

/* ---- the walk ---- */

static int enc_value(enc_t *e, const node_t *n, const json_t *v, bool is_default, int depth);

/* Extends the path by ".name" or "[i]"; returns the old length. */
static size_t path_push_field(enc_t *e, const char *name)
{
    size_t old = e->path.len;
    out_ok(e, outboxd_buf_printf(&e->path, ".%s", name));
    return old;
}

static size_t path_push_index(enc_t *e, size_t i)
{
    size_t old = e->path.len;
    out_ok(e, outboxd_buf_printf(&e->path, "[%zu]", i));
    return old;
}

static void path_pop(enc_t *e, size_t old)
{
    if (e->path.data && old <= e->path.len) {
        e->path.len = old;
        e->path.data[old] = '\0';
    }
}

static int enc_record(enc_t *e, const node_t *n, const json_t *v, bool is_default, int depth)
{
    if (!json_is_object(v))
        return mismatch(e, n, v, NULL);
    /* Every member must be a field: an unknown member would be lost. */
    const char *key;
    json_t *member;
    json_object_foreach((json_t *)v, key, member)
    {
        bool known = false;
        for (size_t i = 0; i < n->n && !known; i++)
            known = strcmp(n->fields[i].name, key) == 0;
        if (!known) {
            size_t old = path_push_field(e, key);
            set_err(e->errstr, e->errstr_size, "%s: not a field of record %s", e->path.data,
                    n->name);
            path_pop(e, old);
            return 1;
        }
    }
    for (size_t i = 0; i < n->n; i++) {
        const field_t *f = &n->fields[i];
        json_t *fv = json_object_get(v, f->name);
        size_t old = path_push_field(e, f->name);
        int rc;
        if (fv) {
            rc = enc_value(e, f->type, fv, is_default, depth + 1);
        } else if (f->def) {
            rc = enc_value(e, f->type, f->def, true, depth + 1);
        } else {
            /* A nullable field may be left out: it is null. */
            bool nullable = false;
            for (size_t b = 0; f->type->kind == T_UNION && b < f->type->n; b++)
                nullable |= f->type->branches[b]->kind == T_NULL;
            if (nullable || f->type->kind == T_NULL) {
                rc = enc_value(e, f->type, json_null(), false, depth + 1);
            } else {
                char tn[128];
                set_err(e->errstr, e->errstr_size, "%s: required field (%s) is missing",
                        e->path.data, type_name(f->type, tn, sizeof(tn)));
                rc = 1;
            }
        }
        path_pop(e, old);
        if (rc)
            return rc;
    }
    return 0;
}

static int enc_union(enc_t *e, const node_t *n, const json_t *v, bool is_default, int depth)
{
    if (is_default) { /* a union's default is a value of its first branch */
        if (!n->n)
            return mismatch(e, n, v, NULL);
        if (!out_ok(e, outboxd_avro_write_long(e->out, 0)))
            return -1;
        return enc_value(e, n->branches[0], v, true, depth + 1);
    }
    size_t mark = e->out->len;
    int first_rc = 1, tried = 0;
    char first_err[512] = "";
    const node_t *only = NULL;
    for (size_t i = 0; i < n->n; i++) {
        const node_t *b = n->branches[i];
        if ((b->kind == T_NULL) != json_is_null(v))
            continue;
        if (!out_ok(e, outboxd_avro_write_long(e->out, (int64_t)i)))
            return -1;
        int rc = enc_value(e, b, v, false, depth + 1);
        if (rc == 0)
            return 0;
        if (rc < 0)
            return rc;
        e->out->len = mark;
        if (!tried++) {
            only = b;
            first_rc = rc;
            snprintf(first_err, sizeof(first_err), "%s", e->errstr ? e->errstr : "");
        }
    }
    if (tried == 1 && only) {
        /* ["null", T]: T's own message says more than "one of". */
        set_err(e->errstr, e->errstr_size, "%s", first_err);
        return first_rc;
    }
    outboxd_buf_t names = {0};
    for (size_t i = 0; i < n->n; i++) {
        char tn[128];
        out_ok(e, outboxd_buf_printf(&names, "%s%s", i ? ", " : "",
                                     type_name(n->branches[i], tn, sizeof(tn))));
    }
    char got[80];
    describe(v, got, sizeof(got));
    set_err(e->errstr, e->errstr_size, "%s: expected one of [%s], got %s", e->path.data,
            names.data ? names.data : "", got);
    outboxd_buf_free(&names);
    return 1;
}

static int enc_value(enc_t *e, const node_t *n, const json_t *v, bool is_default, int depth)
{
    if (e->oom)
        return -1;
    if (depth > MAX_DEPTH) {
        set_err(e->errstr, e->errstr_size, "%s: nested too deeply", e->path.data);
        return 1;
    }
    outboxd_buf_t *out = e->out;
    if (n->logical == L_DECIMAL && !is_default)
        return enc_decimal(e, n, v);
    if (n->logical >= L_DATE && n->logical <= L_LOCAL_TS_MICROS && !is_default)
        return enc_logical_time(e, n, v);
    switch (n->kind) {
    case T_NULL:
        return json_is_null(v) ? 0 : mismatch(e, n, v, NULL);
    case T_BOOLEAN:
        if (!json_is_boolean(v))
            return mismatch(e, n, v, NULL);
        return out_ok(e, outboxd_buf_append(out, json_is_true(v) ? "\1" : "\0", 1)) ? 0 : -1;
    case T_INT:
    case T_LONG: {
        int64_t i;
        if (!json_is_number(v))
            return mismatch(e, n, v, NULL);
        if (!json_int64(v, &i))
            return mismatch(e, n, v,
                            json_is_integer(v) || floor(json_real_value(v)) != json_real_value(v)
                                ? "not an integer"
                                : "not exactly an integer: beyond 2^53 write it without a "
                                  "fraction or exponent");
        if (n->kind == T_INT && (i < INT32_MIN || i > INT32_MAX))
            return mismatch(e, n, v, "out of range");
        return out_ok(e, outboxd_avro_write_long(out, i)) ? 0 : -1;
    }
    case T_FLOAT:
    case T_DOUBLE: {
        double d;
        if (json_is_number(v)) {
            d = json_number_value(v);
        } else if (json_is_string(v) && strcmp(json_string_value(v), "NaN") == 0) {
            d = NAN;
        } else if (json_is_string(v) && strcmp(json_string_value(v), "Infinity") == 0) {
            d = INFINITY;
        } else if (json_is_string(v) && strcmp(json_string_value(v), "-Infinity") == 0) {
            d = -INFINITY;
        } else {
            return mismatch(e, n, v, NULL);
        }
        if (n->kind == T_FLOAT) {
            if (isfinite(d) && fabs(d) > 3.4028234663852886e38)
                return mismatch(e, n, v, "out of range");
            return out_ok(e, write_float(out, (float)d)) ? 0 : -1;
        }
        return out_ok(e, write_double(out, d)) ? 0 : -1;
    }
    case T_STRING:
        if (!json_is_string(v))
            return mismatch(e, n, v, NULL);
        if (n->logical == L_UUID && !is_default &&
            !is_uuid(json_string_value(v), json_string_length(v)))
            return mismatch(e, n, v, "use 8-4-4-4-12 hex digits");
        return out_ok(e,
                      outboxd_avro_write_string(out, json_string_value(v), json_string_length(v)))
                   ? 0
                   : -1;
    case T_BYTES:
    case T_FIXED: {
        if (!json_is_string(v))
            return mismatch(e, n, v, NULL);
        outboxd_buf_t raw = {0};
        bool oom = false, ok;
        const char *s = json_string_value(v);
        size_t len = json_string_length(v);
        if (is_default) {
            /* Defaults are written as in Avro's JSON encoding: code points
             * U+0000..U+00FF are the bytes. */
            ok = true;
            for (size_t i = 0; i < len && ok;) {
                size_t cl = outboxd_utf8_len((const unsigned char *)s + i, len - i);
                unsigned char b;
                if (cl == 1)
                    b = (unsigned char)s[i];
                else if (cl == 2 && (unsigned char)s[i] <= 0xc3)
                    b = (unsigned char)(((s[i] & 0x03) << 6) | (s[i + 1] & 0x3f));
                else {
                    ok = false;
                    break;
                }
                ok = outboxd_buf_append(&raw, &b, 1);
                oom = !ok;
                i += cl;
            }
        } else {
            ok = b64_decode(s, len, &raw, &oom);
        }
        if (oom) {
            outboxd_buf_free(&raw);
            e->oom = true;
            return -1;
        }
        if (!ok) {
            outboxd_buf_free(&raw);
            return mismatch(e, n, v, "not base64");
        }
        int rc = 0;
        if (n->kind == T_FIXED) {
            if ((int64_t)raw.len != n->size) {
                char why[64];
                snprintf(why, sizeof(why), "%zu bytes", raw.len);
                rc = mismatch(e, n, v, why);
            } else if (!out_ok(e, outboxd_buf_append(out, raw.data, raw.len))) {
                rc = -1;
            }
        } else if (!out_ok(e, outboxd_avro_write_long(out, (int64_t)raw.len) &&
                                  outboxd_buf_append(out, raw.data ? raw.data : "", raw.len))) {
            rc = -1;
        }
        outboxd_buf_free(&raw);
        return rc;
    }
    case T_ENUM:
        if (json_is_string(v))
            for (size_t i = 0; i < n->n; i++)
                if (strcmp(n->symbols[i], json_string_value(v)) == 0)
                    return out_ok(e, outboxd_avro_write_long(out, (int64_t)i)) ? 0 : -1;
        {
            outboxd_buf_t syms = {0};
            for (size_t i = 0; i < n->n && i < 8; i++)
                out_ok(e, outboxd_buf_printf(&syms, "%s%s", i ? ", " : "", n->symbols[i]));
            if (n->n > 8)
                out_ok(e, outboxd_buf_append_str(&syms, ", ..."));
            char why[300];
            snprintf(why, sizeof(why), "symbols: %s", syms.data ? syms.data : "");
            outboxd_buf_free(&syms);
            return mismatch(e, n, v, why);
        }
    case T_ARRAY: {
        if (!json_is_array(v))
            return mismatch(e, n, v, NULL);
        size_t cnt = json_array_size(v);
        if (cnt && !out_ok(e, outboxd_avro_write_long(out, (int64_t)cnt)))
            return -1;
        for (size_t i = 0; i < cnt; i++) {
            size_t old = path_push_index(e, i);
            int rc = enc_value(e, n->items, json_array_get(v, i), is_default, depth + 1);
            path_pop(e, old);
            if (rc)
                return rc;
        }
        return out_ok(e, outboxd_avro_write_long(out, 0)) ? 0 : -1;
    }
    case T_MAP: {
        if (!json_is_object(v))
            return mismatch(e, n, v, NULL);
        size_t cnt = json_object_size(v);
        if (cnt && !out_ok(e, outboxd_avro_write_long(out, (int64_t)cnt)))
            return -1;
        const char *key;
        json_t *member;
        json_object_foreach((json_t *)v, key, member)
        {
            if (!out_ok(e, outboxd_avro_write_string(out, key, strlen(key))))
                return -1;
            size_t old = path_push_field(e, key);
            int rc = enc_value(e, n->items, member, is_default, depth + 1);
            path_pop(e, old);
            if (rc)
                return rc;
        }
        return out_ok(e, outboxd_avro_write_long(out, 0)) ? 0 : -1;
    }
    case T_RECORD:
        return enc_record(e, n, v, is_default, depth);
    case T_UNION:
        return enc_union(e, n, v, is_default, depth);
    }
    return mismatch(e, n, v, NULL);
}

int outboxd_avsc_encode(const outboxd_avsc_t *sc, const json_t *v, const char *path,
                        outboxd_buf_t *out, char *errstr, size_t errstr_size)
{
    enc_t e = {.out = out, .errstr = errstr, .errstr_size = errstr_size};
    size_t mark = out->len;
    if (!outboxd_buf_append_str(&e.path, path ? path : "value")) {
        set_err(errstr, errstr_size, "out of memory");
        return -1;
    }
    int rc = enc_value(&e, sc->root, v, false, 0);
    if (e.oom) {
        rc = -1;
        set_err(errstr, errstr_size, "out of memory encoding %s", path ? path : "value");
    }
    if (rc) {
        out->len = mark;
        if (out->data)
            out->data[mark] = '\0';
    }
    outboxd_buf_free(&e.path);
    return rc;
}

/*
 * The kit's decoder: the one place that knows how the relay frames its
 * values (see outboxd_shop_decode in kit.h). Two encodings are read:
 *
 *  - Confluent wire format (outboxd with schema_registry.url): magic 0, the
 *    schema id (4 bytes, big-endian), the Avro binary datum. The writer
 *    schema is fetched once per id from the registry (GET
 *    /schemas/ids/{id}) and kept, compiled, for the life of the decoder: an
 *    id never changes meaning within a registry.
 *  - Avro single-object encoding (outboxd without a registry): C3 01, the
 *    envelope schema's fingerprint, the datum (outboxd_avro_decode_to_json).
 *
 * Both give the same JSON: the envelope's fields, with a payload that is
 * JSON text embedded as a JSON value (a typed payload is a record already).
 *
 * check_datum and value_to_json below follow src/common/avro.c's (static
 * there): the walk that bounds every length before avro-c reads the datum
 * (avro-c 1.11 allocates a claimed string length before checking it), and
 * the avro-c value to JSON rendering.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <avro.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/registry.h"
#include "outboxd/common/util.h"
#include "outboxd/shop/kit.h"

#define MAX_DEPTH  128
#define VARINT_MAX 10

typedef struct writer_schema {
    int32_t id;
    avro_schema_t schema;
    avro_value_iface_t *iface;
    avro_value_t value;
    struct writer_schema *next;
} writer_schema_t;

struct outboxd_shop_decoder {
    outboxd_avro_t *av;
    outboxd_registry_t *reg; /* NULL without --registry */
    char *registry_url;
    avro_reader_t reader;
    writer_schema_t *schemas;
    uint64_t lookups;
};

outboxd_shop_decoder_t *outboxd_shop_decoder_new(const char *registry_url, char *errstr,
                                                 size_t errstr_size)
{
    outboxd_shop_decoder_t *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    d->av = outboxd_avro_new(errstr, errstr_size);
    if (!d->av)
        goto fail;
    d->reader = avro_reader_memory(NULL, 0);
    if (!d->reader) {
        snprintf(errstr, errstr_size, "avro reader: %s", avro_strerror());
        goto fail;
    }
    if (registry_url && *registry_url) {
        outboxd_registry_conf_t rc = {.url = registry_url, .timeout_ms = 5000};
        d->reg = outboxd_registry_new(&rc, errstr, errstr_size);
        d->registry_url = strdup(registry_url);
        if (!d->reg || !d->registry_url) {
            if (d->reg)
                snprintf(errstr, errstr_size, "out of memory");
            goto fail;
        }
    }
    return d;
fail:
    outboxd_shop_decoder_destroy(d);
    return NULL;
}

void outboxd_shop_decoder_destroy(outboxd_shop_decoder_t *d)
{
    if (!d)
        return;
    writer_schema_t *w = d->schemas;
    while (w) {
        writer_schema_t *next = w->next;
        avro_value_decref(&w->value);
        avro_value_iface_decref(w->iface);
        avro_schema_decref(w->schema);
        free(w);
        w = next;
    }
    if (d->reader)
        avro_reader_free(d->reader);
    outboxd_registry_destroy(d->reg);
    free(d->registry_url);
    outboxd_avro_destroy(d->av);
    free(d);
}

uint64_t outboxd_shop_decoder_lookups(const outboxd_shop_decoder_t *d)
{
    return d->lookups;
}

/* ------------------------------------------------- datum walk and JSON */

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

/* Walks one datum of schema s without building it: false when it is
 * truncated or malformed (see the file comment for why). */
static bool check_datum(avro_schema_t s, const unsigned char **p, const unsigned char *end,
                        int depth)
{
    int64_t n;
    if (depth > MAX_DEPTH)
        return false;
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return true;
    case AVRO_BOOLEAN:
        if (*p >= end || **p > 1)
            return false;
        (*p)++;
        return true;
    case AVRO_INT32:
        return read_varint(p, end, &n) && n >= INT32_MIN && n <= INT32_MAX;
    case AVRO_INT64:
        return read_varint(p, end, &n);
    case AVRO_FLOAT:
    case AVRO_DOUBLE:
        n = avro_typeof(s) == AVRO_FLOAT ? 4 : 8;
        if (end - *p < n)
            return false;
        *p += n;
        return true;
    case AVRO_STRING:
    case AVRO_BYTES:
        if (!read_varint(p, end, &n) || n < 0 || n > end - *p)
            return false;
        *p += n;
        return true;
    case AVRO_FIXED:
        n = avro_schema_fixed_size(s);
        if (n < 0 || n > end - *p)
            return false;
        *p += n;
        return true;
    case AVRO_ENUM:
        return read_varint(p, end, &n) && n >= 0 && n < avro_schema_enum_number_of_symbols(s);
    case AVRO_UNION:
        if (!read_varint(p, end, &n) || n < 0 || (uint64_t)n >= avro_schema_union_size(s))
            return false;
        return check_datum(avro_schema_union_branch(s, (int)n), p, end, depth + 1);
    case AVRO_RECORD:
        for (size_t i = 0; i < avro_schema_record_size(s); i++)
            if (!check_datum(avro_schema_record_field_get_by_index(s, (int)i), p, end, depth + 1))
                return false;
        return true;
    case AVRO_ARRAY:
    case AVRO_MAP:
        for (;;) {
            int64_t bytes;
            if (!read_varint(p, end, &n))
                return false;
            if (n == 0)
                return true;
            if (n < 0) {
                if (n == INT64_MIN || !read_varint(p, end, &bytes))
                    return false;
                n = -n;
            }
            if (n > end - *p) /* also bounds items that take no bytes */
                return false;
            for (int64_t i = 0; i < n; i++) {
                if (avro_typeof(s) == AVRO_MAP) {
                    int64_t klen;
                    if (!read_varint(p, end, &klen) || klen < 0 || klen > end - *p)
                        return false;
                    *p += klen;
                }
                avro_schema_t item = avro_typeof(s) == AVRO_MAP ? avro_schema_map_values(s)
                                                                : avro_schema_array_items(s);
                if (!check_datum(item, p, end, depth + 1))
                    return false;
            }
        }
    case AVRO_LINK:
        return check_datum(avro_schema_link_target(s), p, end, depth + 1);
    default:
        return false;
    }
}

/* A JSON string; bytes that are not UTF-8 become U+FFFD. */
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
    case AVRO_FLOAT: {
        float f = 0;
        if (avro_value_get_float(v, &f))
            return NULL;
        json_t *j = json_real(f);
        return j ? j : json_null(); /* NaN and infinities have no JSON form */
    }
    case AVRO_DOUBLE: {
        double d = 0;
        if (avro_value_get_double(v, &d))
            return NULL;
        json_t *j = json_real(d);
        return j ? j : json_null();
    }
    case AVRO_STRING: {
        const char *s = NULL;
        size_t size = 0; /* counts the NUL terminator */
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

/* ------------------------------------------------------- wire format */

/* The compiled writer schema of id: cached, else fetched from the registry.
 * NULL with *retry set when the registry could not be asked. */
static writer_schema_t *writer_schema(outboxd_shop_decoder_t *d, int32_t id, bool *retry,
                                      char *errstr, size_t errstr_size)
{
    for (writer_schema_t *w = d->schemas; w; w = w->next)
        if (w->id == id)
            return w;
    char *text = NULL;
    d->lookups++;
    outboxd_registry_status_t st =
        outboxd_registry_schema_by_id(d->reg, id, &text, errstr, errstr_size);
    if (st != OUTBOXD_REGISTRY_OK) {
        *retry = st == OUTBOXD_REGISTRY_RETRY;
        return NULL;
    }
    writer_schema_t *w = calloc(1, sizeof(*w));
    if (!w) {
        free(text);
        snprintf(errstr, errstr_size, "out of memory");
        *retry = true;
        return NULL;
    }
    w->id = id;
    if (avro_schema_from_json_length(text, strlen(text), &w->schema) != 0) {
        snprintf(errstr, errstr_size,
                 "schema id %" PRId32 " from %s is not a valid Avro schema: %s", id,
                 d->registry_url, avro_strerror());
        free(text);
        free(w);
        return NULL;
    }
    free(text);
    w->iface = avro_generic_class_from_schema(w->schema);
    if (!w->iface || avro_generic_value_new(w->iface, &w->value) != 0) {
        snprintf(errstr, errstr_size, "schema id %" PRId32 ": %s", id, avro_strerror());
        if (w->iface)
            avro_value_iface_decref(w->iface);
        avro_schema_decref(w->schema);
        free(w);
        return NULL;
    }
    w->next = d->schemas;
    d->schemas = w;
    return w;
}

static json_t *decode_wire(outboxd_shop_decoder_t *d, const unsigned char *b, size_t len,
                           bool *retry, char *errstr, size_t errstr_size)
{
    int32_t id;
    if (!outboxd_registry_wire_parse(b, len, &id)) {
        snprintf(errstr, errstr_size,
                 "%zu-byte value: too short for the Confluent wire format header (magic 0 and a "
                 "4-byte schema id)",
                 len);
        return NULL;
    }
    if (!d->reg) {
        snprintf(errstr, errstr_size,
                 "the value is in the Confluent wire format (schema id %" PRId32
                 ") but this service has no schema registry (start it with --registry URL)",
                 id);
        return NULL;
    }
    writer_schema_t *w = writer_schema(d, id, retry, errstr, errstr_size);
    if (!w)
        return NULL;
    const unsigned char *p = b + OUTBOXD_WIRE_HEADER_LEN, *end = b + len;
    if (!check_datum(w->schema, &p, end, 0)) {
        snprintf(errstr, errstr_size,
                 "wire format: the datum is truncated or malformed for schema id %" PRId32, id);
        return NULL;
    }
    if (p != end) {
        snprintf(errstr, errstr_size,
                 "wire format: %zu trailing bytes after the datum of schema id %" PRId32,
                 (size_t)(end - p), id);
        return NULL;
    }
    avro_reader_memory_set_source(d->reader, (const char *)b + OUTBOXD_WIRE_HEADER_LEN,
                                  (int64_t)(len - OUTBOXD_WIRE_HEADER_LEN));
    if (avro_value_read(d->reader, &w->value) != 0) {
        snprintf(errstr, errstr_size, "wire format, schema id %" PRId32 ": %s", id,
                 avro_strerror());
        return NULL;
    }
    json_t *root = value_to_json(&w->value, 0);
    if (!json_is_object(root)) {
        json_decref(root);
        snprintf(errstr, errstr_size,
                 "wire format, schema id %" PRId32 ": the datum is not a record (an envelope)", id);
        return NULL;
    }
    /* The envelope's payload is JSON text: embed it as a value when it
     * parses, as the single-object path does. */
    json_t *payload = json_object_get(root, "payload");
    if (json_is_string(payload)) {
        json_t *parsed = json_loadb(json_string_value(payload), json_string_length(payload),
                                    JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (parsed)
            json_object_set_new(root, "payload", parsed);
    }
    return root;
}

json_t *outboxd_shop_decode(outboxd_shop_decoder_t *d, const void *buf, size_t len, bool *retry,
                            char *errstr, size_t errstr_size)
{
    const unsigned char *b = buf;
    *retry = false;
    if (len >= 1 && b[0] == 0)
        return decode_wire(d, b, len, retry, errstr, errstr_size);
    if (len < 2 || b[0] != 0xC3 || b[1] != 0x01) {
        snprintf(errstr, errstr_size,
                 "not an outboxd event: the value starts with %s%02X %02X, neither 00 (Confluent "
                 "wire format, schema registry) nor C3 01 (Avro single-object encoding)",
                 len < 2 ? "(short) " : "", len >= 1 ? b[0] : 0, len >= 2 ? b[1] : 0);
        return NULL;
    }
    char *text = outboxd_avro_decode_to_json(d->av, buf, len, errstr, errstr_size);
    if (!text)
        return NULL;
    json_error_t jerr;
    json_t *j = json_loads(text, 0, &jerr);
    free(text);
    if (!j)
        snprintf(errstr, errstr_size, "decoded envelope is not JSON: %s", jerr.text);
    return j;
}

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
 * Untrusted bytes are bounds-checked with outboxd_avro_datum_check before
 * avro-c reads them, and rendered with outboxd_avro_value_to_json
 * (src/common/avro.c), like the relay's own decoder.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <avro.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/avro_datum.h"
#include "outboxd/common/registry.h"
#include "outboxd/common/util.h"
#include "outboxd/shop/kit.h"

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
    char why[256];
    if (!outboxd_avro_datum_check(w->schema, &p, end, why, sizeof(why))) {
        snprintf(errstr, errstr_size, "wire format, schema id %" PRId32 ": %s", id, why);
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
    json_t *root = outboxd_avro_value_to_json(&w->value);
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

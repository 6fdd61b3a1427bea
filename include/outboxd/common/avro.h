/*
 * Avro encoding of outbox events (avro-c).
 *
 * Without a schema registry the value is Avro single-object encoding:
 *   0xC3 0x01, the schema's 8-byte CRC-64-AVRO (Rabin) fingerprint in
 *   little-endian order, then the Avro binary datum.
 * The fingerprint is computed over the Parsing Canonical Form, which we build
 * from the schema's own JSON text (avro-c 1.11's avro_schema_to_json loses
 * logicalType and defaults, so it is never used to write a schema out).
 */
#ifndef OUTBOXD_AVRO_H
#define OUTBOXD_AVRO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/common/util.h"

/* The envelope schema text (config/avro/outbox_envelope.avsc), embedded. */
extern const char outboxd_envelope_schema_json[];

/* A string that need not be NUL-terminated. */
typedef struct outboxd_str {
    const char *ptr;
    size_t len;
} outboxd_str_t;

/* Field values of one event (see outbox_envelope.avsc). Borrowed pointers. */
typedef struct outboxd_envelope {
    outboxd_str_t id;
    outboxd_str_t type;
    outboxd_str_t aggregate_type;
    outboxd_str_t aggregate_id;
    bool payload_null;
    outboxd_str_t payload;  /* JSON text */
    int64_t occurred_at_us; /* Unix epoch microseconds */
    outboxd_str_t source_name;
    outboxd_str_t database;
    outboxd_str_t table;
    outboxd_lsn_t lsn;
    outboxd_lsn_t commit_lsn;
    uint32_t xid;
    int64_t commit_time_us; /* Unix epoch microseconds */
} outboxd_envelope_t;

typedef struct outboxd_avro outboxd_avro_t;

/* Parses the embedded envelope schema. Returns NULL and fills errstr on error.
 * One instance per thread (avro-c values are not thread-safe). */
outboxd_avro_t *outboxd_avro_new(char *errstr, size_t errstr_size);
void outboxd_avro_destroy(outboxd_avro_t *av);

/* Appends the single-object encoding of ev to out (out is not reset first).
 * Returns 0, or -1 with errstr filled. */
int outboxd_avro_encode(outboxd_avro_t *av, const outboxd_envelope_t *ev, outboxd_buf_t *out,
                        char *errstr, size_t errstr_size);

/* Decodes a single-object-encoded envelope into a JSON object text (for the
 * test consumer and the demo). Checks the magic and the fingerprint.
 * Returns a malloc'ed NUL-terminated string the caller frees, or NULL with
 * errstr filled. */
char *outboxd_avro_decode_to_json(outboxd_avro_t *av, const void *buf, size_t len, char *errstr,
                                  size_t errstr_size);

/* The envelope schema's fingerprint (as written after the magic). */
uint64_t outboxd_avro_envelope_fingerprint(const outboxd_avro_t *av);

/* CRC-64-AVRO (Rabin) fingerprint of bytes, as the Avro spec defines it. */
uint64_t outboxd_avro_fingerprint64(const void *data, size_t len);

/* Parsing Canonical Form of a schema JSON text (Avro spec, "Parsing Canonical
 * Form for Schemas"). Returns a malloc'ed string, or NULL with errstr filled. */
char *outboxd_avro_canonical_form(const char *schema_json, char *errstr, size_t errstr_size);

#endif

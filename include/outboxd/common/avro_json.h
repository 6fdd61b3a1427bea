/*
 * Avro schemas given as .avsc text, and JSON values written as Avro binary
 * against them: the typed payloads of outbox events.
 *
 * A schema is kept as the text it was given (avro-c 1.11 drops logicalType
 * when it writes a schema out, so its output is never what is published) and
 * compiled into a small tree of its own, which knows the logical types:
 * decimal (bytes and fixed), uuid, date, time-millis, time-micros,
 * timestamp-millis, timestamp-micros, local-timestamp-millis/-micros.
 *
 * JSON input per Avro type (README "Typed payloads" has the table):
 *   null: null; boolean: true/false; int, long: integers (integral reals
 *   too) in range; float, double: numbers, or "NaN", "Infinity", "-Infinity";
 *   string: strings; bytes, fixed: base64 strings; enum: a symbol;
 *   array: arrays; map: objects; record: objects with exactly the record's
 *   fields (missing ones take their default, or null when nullable);
 *   union: the value of the first branch that accepts it (null -> "null");
 *   decimal: strings ("-12.50") or numbers (at most 15 significant digits,
 *   beyond that a double has lost digits already); uuid: canonical text;
 *   date: "YYYY-MM-DD" or days; time-*: "HH:MM:SS[.ffffff]" or units since
 *   midnight; timestamp-*: RFC 3339 / ISO 8601 text or units since the epoch.
 * A value that does not fit is reported with its path:
 *   payload.items[2].price: expected decimal(10,2), got "abc"
 */
#ifndef OUTBOXD_AVRO_JSON_H
#define OUTBOXD_AVRO_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/common/util.h"

typedef struct outboxd_avsc outboxd_avsc_t;

/* Parses and checks a schema (also with avro-c, as a second opinion). The
 * text is copied. NULL with errstr filled on error. Immutable afterwards, so
 * one instance may be shared by threads. */
outboxd_avsc_t *outboxd_avsc_parse(const char *text, size_t len, char *errstr, size_t errstr_size);
void outboxd_avsc_destroy(outboxd_avsc_t *sc);

/* The schema text as given (NUL-terminated). */
const char *outboxd_avsc_text(const outboxd_avsc_t *sc);
/* Full name of the top-level type when it is named (record, enum, fixed),
 * else NULL. */
const char *outboxd_avsc_fullname(const outboxd_avsc_t *sc);
/* True when the top-level type is a record. */
bool outboxd_avsc_is_record(const outboxd_avsc_t *sc);
/* CRC-64-AVRO fingerprint of the Parsing Canonical Form. */
uint64_t outboxd_avsc_fingerprint(const outboxd_avsc_t *sc);

/*
 * Appends the Avro binary encoding of v under sc to out. path names v in
 * messages ("payload"). Returns 0; 1 when v does not match (errstr holds
 * "path: expected ..., got ..."; out is left as it was); -1 on OOM.
 */
int outboxd_avsc_encode(const outboxd_avsc_t *sc, const json_t *v, const char *path,
                        outboxd_buf_t *out, char *errstr, size_t errstr_size);

/* Avro binary primitives (false only on OOM). */
bool outboxd_avro_write_long(outboxd_buf_t *out, int64_t v);
bool outboxd_avro_write_string(outboxd_buf_t *out, const char *s, size_t len);

#endif

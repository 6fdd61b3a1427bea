/*
 * Avro datum helpers on avro-c's own types, shared by the relay and the
 * shop's consumers (which decode what the relay publishes): a bounds check
 * of untrusted bytes before avro-c reads them, and the rendering of an avro-c
 * value as JSON. Kept apart from avro.h, whose types are opaque.
 */
#ifndef OUTBOXD_AVRO_DATUM_H
#define OUTBOXD_AVRO_DATUM_H

#include <avro.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Walks one datum of schema s at *p without building it and advances *p
 * past it. avro-c 1.11.1 allocates whatever length a string claims before
 * checking that the bytes are there, so untrusted input must pass this
 * before avro_value_read sees it. False (errstr filled) when the datum is
 * truncated or malformed. */
bool outboxd_avro_datum_check(avro_schema_t s, const unsigned char **p, const unsigned char *end,
                              char *errstr, size_t errstr_size);

/* A new JSON value for v (the caller owns it), or NULL. Bytes and fixed
 * become strings (bytes that are not UTF-8 become U+FFFD), NaN and
 * infinities null, unions their current branch. */
json_t *outboxd_avro_value_to_json(avro_value_t *v);

#endif

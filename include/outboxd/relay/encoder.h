/*
 * Encoder: the bytes of an event's (or a dead letter's) Kafka value.
 *
 * Schema per event: the envelope (config/avro/outbox_envelope.avsc, payload
 * as JSON text), a per-type envelope whose payload field is the record of
 * relay.schemas_dir/<type>.avsc, or with value_format: payload that record
 * alone (an Avro string when the type has no .avsc).
 * Framing: with schema_registry.url the Confluent wire format (0, 4-byte
 * big-endian schema id, datum; the schema registered under the subject of
 * the configured strategy); without, Avro single-object encoding (C3 01,
 * 8-byte fingerprint, datum), and every schema used is written to
 * relay.schema_store_dir/<fingerprint as 16 hex digits>.avsc when set.
 *
 * One encoder per source thread (it owns a registry client and buffers).
 */
#ifndef OUTBOXD_ENCODER_H
#define OUTBOXD_ENCODER_H

#include <stddef.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/util.h"
#include "outboxd/relay/config.h"

/* The dead-letter schema text (config/avro/dead_letter.avsc), embedded. */
extern const char outboxd_dead_letter_schema_json[];

typedef struct outboxd_encoder outboxd_encoder_t;

/* Loads every <type>.avsc of schemas_dir and checks it; reads the registry
 * secrets. conf must outlive the encoder. NULL + errstr naming the file or
 * key on error. */
outboxd_encoder_t *outboxd_encoder_new(const outboxd_config_t *conf, char *errstr,
                                       size_t errstr_size);
void outboxd_encoder_destroy(outboxd_encoder_t *enc);

/* For outboxd check: a line about the schemas loaded and, with a registry,
 * whether it answers. 0, or -1 when the registry does not. */
int outboxd_encoder_check(outboxd_encoder_t *enc, char *msg, size_t msg_size);

/* Number of typed payload schemas loaded (for logs and tests). */
size_t outboxd_encoder_n_types(const outboxd_encoder_t *enc);

/*
 * Writes ev's value for topic into out (reset first).
 * Returns 0; 1 when the event cannot be encoded for good (payload does not
 * match its schema, registry rejects the schema): reason filled, the caller
 * dead-letters the change; -1 when it should be tried again later (registry
 * unreachable, OOM): errstr filled, the caller rewinds. It does not wait:
 * the caller's own backoff does (a source's rewind backoff, growing while
 * rewinds make no progress), so a loop thread shared with other sources is
 * never put to sleep for one source's registry.
 */
int outboxd_encoder_event(outboxd_encoder_t *enc, const outboxd_envelope_t *ev,
                          outboxd_value_format_t format, const char *topic, outboxd_buf_t *out,
                          char *reason, size_t reason_size, char *errstr, size_t errstr_size);

/*
 * Debezium drop-in with an AvroConverter: resets out and writes the
 * Confluent wire header for schema_text registered under subject (as the
 * converter does: <topic>-key / <topic>-value, the text as is); the caller
 * appends the datum. Returns as outboxd_encoder_event: 0; 1 with reason
 * (the registry rejects the schema, or there is no registry); -1 with
 * errstr (registry unreachable, OOM; the caller backs off).
 */
int outboxd_encoder_registered(outboxd_encoder_t *enc, const char *subject, const char *schema_text,
                               outboxd_buf_t *out, char *reason, size_t reason_size, char *errstr,
                               size_t errstr_size);

/* What a dead-letter record says (dead_letter.avsc). Borrowed pointers. */
typedef struct outboxd_dead_letter {
    const char *reason;
    outboxd_str_t event_id; /* ptr NULL: none */
    outboxd_str_t key;      /* ptr NULL: none */
    outboxd_str_t original; /* row JSON or message content */
    const char *source_name, *database, *table;
    outboxd_lsn_t lsn, commit_lsn;
    uint32_t xid;
    int64_t commit_time_us;
} outboxd_dead_letter_t;

/* Writes the Avro dead-letter value into out (reset first). 0, or -1 with
 * errstr (registry unreachable or refusing the dead-letter schema). */
int outboxd_encoder_dead_letter(outboxd_encoder_t *enc, const outboxd_dead_letter_t *dl,
                                outboxd_buf_t *out, char *errstr, size_t errstr_size);

/* The encoder's registry client, or NULL without schema_registry.url (for
 * cdc.c, which registers its own schemas with the same client). */
struct outboxd_registry;
struct outboxd_registry *outboxd_encoder_registry(outboxd_encoder_t *enc);

/* The envelope schema for a type with a typed payload (for tests and
 * tools): NULL when the type has none. */
const char *outboxd_encoder_type_schema(const outboxd_encoder_t *enc, const char *type,
                                        outboxd_value_format_t format);

#endif

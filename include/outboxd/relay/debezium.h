/*
 * Debezium drop-in: records as Debezium's outbox EventRouter
 * (io.debezium.transforms.outbox.EventRouter, Debezium 3.0) emits them
 * through Kafka Connect's StringConverter or JsonConverter
 * (with or without schemas.enable), or an AvroConverter with a Confluent-compatible
 * registry (Confluent's wire format; the Connect schema translated to Avro
 * as Confluent's AvroData does, which Apicurio's converter copies), so that a table switched from
 * Debezium to outboxd changes nothing a consumer sees: topic, partition, key bytes, value bytes,
 * the id header and placed headers, record timestamp.
 *
 * Configured per table with a `debezium:` mapping that takes Debezium's own
 * property names verbatim (the EventRouter's, with or without their
 * "transforms.<name>." prefix, and key.converter / value.converter); see
 * README "Migrating from Debezium".
 */
#ifndef OUTBOXD_DEBEZIUM_H
#define OUTBOXD_DEBEZIUM_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/common/util.h"
#include "outboxd/relay/config.h"

typedef enum {
    OUTBOXD_DBZ_HEADER = 0,   /* a Kafka header named alias */
    OUTBOXD_DBZ_ENVELOPE = 1, /* a field of the value struct {payload, alias...} */
    OUTBOXD_DBZ_PARTITION = 2 /* the record's partition (an integer column) */
} outboxd_dbz_where_t;

typedef struct outboxd_dbz_place {
    char *column;
    char *alias; /* the column name when none is given */
    outboxd_dbz_where_t where;
} outboxd_dbz_place_t;

/* A part of route.topic.replacement: literal text or a regex group. */
typedef struct outboxd_dbz_repl {
    char *text; /* literal; NULL for a group */
    int group;  /* POSIX group index */
} outboxd_dbz_repl_t;

typedef struct outboxd_dbz {
    char *col_id;                /* table.field.event.id, default id */
    char *col_key;               /* table.field.event.key, default aggregateid */
    char *col_payload;           /* table.field.event.payload, default payload */
    char *col_route;             /* route.by.field, default aggregatetype */
    char *col_ts;                /* table.field.event.timestamp, NULL: producer time */
    outboxd_dbz_place_t *places; /* table.fields.additional.placement */
    size_t n_places;
    bool error_on_missing;   /* table.fields.additional.error.on.missing, default true */
    bool expand_json;        /* table.expand.json.payload, default false */
    bool keep_null_fields;   /* table.json.payload.null.behavior: optional_bytes */
    bool tombstone_on_empty; /* route.tombstone.on.empty.payload, default false */
    bool key_json;           /* key.converter is JsonConverter (else StringConverter) */
    bool value_json;         /* value.converter is JsonConverter (else StringConverter) */
    bool key_avro;           /* key.converter is an AvroConverter */
    /* JsonConverter's schemas.enable (its default: true): the record is
     * {"schema": <Connect schema>, "payload": <value>} (key_json /
     * value_json with it, the delegate's setting for a delegate) */
    bool key_schemas;
    bool value_schemas;
    bool schemas_implicit; /* a JsonConverter's schemas.enable not set (true) */
    bool value_avro;       /* value.converter is an AvroConverter */
    /* value.converter passes bytes on (BinaryDataConverter, Kafka's
     * ByteArrayConverter; the class name, else NULL): a bytea payload without
     * envelope placements is the value as it is; with BinaryDataConverter
     * (value_bytes_delegates) any other value goes to
     * value.converter.delegate.converter.type (value_delegate; value_json
     * says which); without one the row is dead-lettered. */
    const char *value_bytes;
    bool value_bytes_delegates;
    bool value_delegate;
    char *col_version;  /* table.field.event.schema.version (an int4 column), or NULL */
    char *topic_prefix; /* topic.prefix: names the Avro value record of envelopes */
    char **not_null;    /* outboxd.columns.not.null: NOT NULL columns (Avro schemas) */
    size_t n_not_null;
    /* Debezium caches the value struct's schema, named after the
     * route.by.field value of the first row that made it, per payload schema
     * (or per schema version): the first name seen per key, kept here. */
    char **name_keys, **name_vals;
    size_t n_names;
    regex_t re; /* route.topic.regex, anchored, translated to POSIX ERE */
    size_t re_groups;
    outboxd_dbz_repl_t *repl; /* route.topic.replacement */
    size_t n_repl;
} outboxd_dbz_t;

/* Parses and checks the properties. NULL + errstr naming the property and
 * what is expected (an unknown or unsupported property is an error). */
outboxd_dbz_t *outboxd_dbz_new(const outboxd_kv_t *props, size_t n, char *errstr,
                               size_t errstr_size);
void outboxd_dbz_destroy(outboxd_dbz_t *d);

/* The topic for a route.by.field value: the replacement when the regex
 * matches the whole value, else the value itself. 0, or -1 (OOM). */
int outboxd_dbz_topic(const outboxd_dbz_t *d, const char *v, size_t len, outboxd_buf_t *out);

/* A column value as the key converter renders it (type_oid: its
 * PostgreSQL type; v NULL: SQL NULL, which only JsonConverter renders, as
 * the bytes null). 0, or -1 (OOM). */
int outboxd_dbz_key(const outboxd_dbz_t *d, const char *v, size_t len, uint32_t type_oid,
                    outboxd_buf_t *out);

/* A column value as Connect's SimpleHeaderConverter renders it (booleans
 * true/false, floats as Java prints them, bytea base64, other types their
 * PostgreSQL text). Appends; 0 or -1 (OOM or malformed bytea text). */
int outboxd_dbz_header_text(const char *v, size_t len, uint32_t type_oid, outboxd_buf_t *out);

/* The payload text as Debezium's table.expand.json.payload and its
 * JsonConverter print it: an object through the Connect schema
 * JsonSchemaData infers (compact, key order kept, fractional numbers as Java
 * doubles, null fields and empty arrays left out unless keep_nulls, merged
 * objects of an array each with every field); where that inference fails,
 * or the text does not start with { or [ or is not JSON, the JSON string of
 * the text, as Debezium keeps it. Appends. 0; -1 (OOM). reason is unused
 * (kept for the callers' shape). */
int outboxd_dbz_expand_json(const char *v, size_t len, bool keep_nulls, outboxd_buf_t *out,
                            char *reason, size_t reason_size);

/* A column value for the value: its name, text (NULL: SQL NULL), type. */
typedef struct outboxd_dbz_field {
    const char *name;
    const char *data;
    size_t len;
    uint32_t type_oid;
} outboxd_dbz_field_t;

/*
 * The record value: the payload alone, or with envelope placements the
 * struct {payload, alias...} as JsonConverter writes it. *tombstone is set
 * when the record must have a null value (NULL payload with
 * route.tombstone.on.empty.payload). Writes out (reset first). 0; 1 when the
 * payload cannot be rendered (reason filled); -1 (OOM).
 */
int outboxd_dbz_value(const outboxd_dbz_t *d, const outboxd_dbz_field_t *payload,
                      const outboxd_dbz_field_t *env, size_t n_env, outboxd_buf_t *out,
                      bool *tombstone, char *reason, size_t reason_size);

/*
 * JsonConverter with schemas.enable (key_schemas / value_schemas, its
 * default): {"schema": <the Connect schema as JsonConverter writes it>,
 * "payload": <the value>}. The key: the column's schema (optional unless in
 * outboxd.columns.not.null) and value (NULL: null). Writes out (reset
 * first). 0; 1 when the column cannot be rendered (reason filled); -1 (OOM).
 */
int outboxd_dbz_schema_key(const outboxd_dbz_t *d, const outboxd_dbz_field_t *key,
                           outboxd_buf_t *out, char *reason, size_t reason_size);
/*
 * The value, as outboxd_dbz_value but with its schema when value_schemas
 * (else outboxd_dbz_value itself): the payload's (inferred when expanded),
 * or the struct of envelope placements named and versioned as with an
 * AvroConverter (table, routed, version: as outboxd_dbz_avro_value). A NULL
 * payload is a null payload under its schema, a tombstone only with
 * route.tombstone.on.empty.payload. 0; 1 with reason; -1 (OOM).
 */
int outboxd_dbz_schema_value(outboxd_dbz_t *d, const char *table, const char *routed,
                             const outboxd_dbz_field_t *payload, const outboxd_dbz_field_t *env,
                             size_t n_env, const outboxd_dbz_field_t *version, outboxd_buf_t *out,
                             bool *tombstone, char *reason, size_t reason_size);
/* Avro converters (key.converter / value.converter AvroConverter). */

/*
 * The key through an AvroConverter: its Avro schema text (what the
 * converter registers under <topic>-key) into schema, the Avro binary datum
 * into datum (both reset first). v NULL: SQL NULL (the caller sends no key).
 * 0; 1 when the column cannot be rendered (reason filled); -1 (OOM).
 */
int outboxd_dbz_avro_key(const outboxd_dbz_t *d, const outboxd_dbz_field_t *key,
                         outboxd_buf_t *schema, outboxd_buf_t *datum, char *reason,
                         size_t reason_size);

/*
 * The value through an AvroConverter: schema text (registered under
 * <topic>-value) and datum, or *tombstone. table: "schema.name" of the
 * outbox table, routed: the route.by.field value (both name the value
 * record of envelope placements), version: the schema version column (NULL
 * when not configured or SQL NULL). 0; 1 with reason (a row Debezium could
 * not convert either); -1 (OOM).
 */
int outboxd_dbz_avro_value(outboxd_dbz_t *d, const char *table, const char *routed,
                           const outboxd_dbz_field_t *payload, const outboxd_dbz_field_t *env,
                           size_t n_env, const outboxd_dbz_field_t *version, outboxd_buf_t *schema,
                           outboxd_buf_t *datum, bool *tombstone, char *reason, size_t reason_size);

#endif

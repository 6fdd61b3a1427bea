/*
 * CDC mode: change events of plain tables (tables[].mode: cdc) in Debezium's
 * envelope, as Debezium's PostgreSQL connector (3.0) writes them through
 * AvroConverter (schema registry) or JsonConverter.
 *
 * One outboxd_cdc_t per source thread (it owns a registry client, a normal
 * PostgreSQL connection for type look-ups, opened lazily, and buffers); not
 * thread-safe. The same instance serves the streaming loop (source.c) and
 * the initial snapshot; calls may come outside a replication transaction.
 *
 * outboxd_cdc_change builds every record of one change (the event and, after
 * a delete with tombstones_on_delete, the tombstone; or a dead-letter record
 * when the change cannot be encoded for good) and hands each, in order, to
 * the caller's emit callback, which produces it (source.c: into the open
 * Kafka transaction through outboxd_sink_produce, with the checkpoint
 * committed in the same transaction, exactly like outbox events). All
 * records are built before the first emit, so a failure to build never
 * leaves half a change produced.
 *
 * Ownership: the relation, tuples and source info are borrowed for the call
 * only; nothing is kept (the relation's columns are copied into a per-oid
 * cache and compared on every call, so a caller may build the relation
 * itself, e.g. from the catalog for a snapshot: then give it what pgoutput's
 * Relation message would carry (oid, nspname, relname, relreplident, and
 * the columns in attnum order without dropped and generated ones, with
 * atttypid, atttypmod and is_key = part of the replica identity index or,
 * for the default identity, the primary key), or every alternation between
 * the two shapes builds (and registers) the schema again). A record passed
 * to emit
 * (topic, key, value, headers) points into the instance's buffers and is
 * valid only during that emit call; the sink copies what it produces.
 */
#ifndef OUTBOXD_CDC_H
#define OUTBOXD_CDC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/common/util.h"
#include "outboxd/relay/config.h"
#include "outboxd/relay/pgoutput.h"
#include "outboxd/relay/router.h"

typedef struct outboxd_cdc outboxd_cdc_t;

/* Debezium's source block of one change. */
typedef struct outboxd_cdc_source {
    /* Streaming: the change's WAL position. Snapshot: the slot's consistent
     * point (source.lsn of every snapshot read, as Debezium does). */
    outboxd_lsn_t lsn;
    /* Commit LSN of the transaction (source.sequence's first element);
     * 0 for a snapshot read. */
    outboxd_lsn_t commit_lsn;
    uint32_t xid;           /* 0: none (snapshot): source.txId is null */
    int64_t commit_time_us; /* Unix epoch; snapshot: when the read ran */
    const char *snapshot;   /* "true", "last", "false"; NULL means "false" */
} outboxd_cdc_source_t;

/*
 * The callback producing one record. dead_letter tells a dead-letter record
 * from an event or tombstone (for counters and logs). Returns 0, or a
 * non-zero code of the caller's own choosing, which outboxd_cdc_change
 * returns at once without emitting the change's later records.
 */
typedef int (*outboxd_cdc_emit_cb)(void *opaque, const outboxd_record_t *rec, bool dead_letter,
                                   const char *reason);

/* A code no emit callback may use: see outboxd_cdc_change. */
#define OUTBOXD_CDC_RETRY (-1000)

/* A cdc table's topic: its topic as given, else
 * <topic_prefix>.<schema>.<table> (topic_prefix defaults to the source's
 * name), appended to out. False when out of memory. */
bool outboxd_cdc_topic_name(const outboxd_source_conf_t *src, const outboxd_table_conf_t *tc,
                            outboxd_buf_t *out);

/* conf and src must outlive the instance; database is copied (source.db).
 * stop (may be NULL) cuts a catalog look-up short. Fails (NULL + errstr) on
 * a configuration it cannot serve. */
outboxd_cdc_t *outboxd_cdc_new(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                               const char *database, atomic_int *stop, char *errstr,
                               size_t errstr_size);
void outboxd_cdc_destroy(outboxd_cdc_t *c);

/* The configured cdc table for a relation, or NULL when the relation is
 * not a cdc table of this source. */
const outboxd_table_conf_t *outboxd_cdc_table(const outboxd_cdc_t *c, const char *nspname,
                                              const char *relname);

/* A Relation message for oid arrived: forget what is cached for it (the
 * next change compares columns anyway; this only frees memory early). */
void outboxd_cdc_forget(outboxd_cdc_t *c, uint32_t oid);

/*
 * Publishes one change of a cdc table.
 *   op: 'c' insert, 'u' update, 'd' delete, 't' truncate, 'r' snapshot read.
 *   before: old image ('u', 'd'; key-only unless REPLICA IDENTITY FULL), or
 *           NULL / ncols 0 when absent.
 *   after:  new image ('c', 'u', 'r'), or NULL for 'd' and 't'.
 *   Datums are text format ('t'), NULL ('n') or unchanged TOAST ('u').
 * Returns 0 when every record was emitted; the emit callback's non-zero code
 * when it returned one; OUTBOXD_CDC_RETRY with errstr when the records
 * could not be built and retrying later can help (registry unreachable,
 * catalog connection lost, OOM): nothing was emitted, call again.
 * A change that can never be encoded (the registry rejects its schema) is
 * emitted as a dead-letter record to relay.dead_letter_topic instead.
 */
int outboxd_cdc_change(outboxd_cdc_t *c, const outboxd_pgo_relation_t *rel, char op,
                       const outboxd_pgo_tuple_t *before, const outboxd_pgo_tuple_t *after,
                       const outboxd_cdc_source_t *si, outboxd_cdc_emit_cb emit, void *opaque,
                       char *errstr, size_t errstr_size);

/*
 * Same arguments, but the change is dead-lettered with reason instead of
 * published (Kafka refused its event for good, e.g. too large for the topic):
 * one dead-letter record is emitted. Same returns.
 */
int outboxd_cdc_dead_letter(outboxd_cdc_t *c, const outboxd_pgo_relation_t *rel, char op,
                            const outboxd_pgo_tuple_t *before, const outboxd_pgo_tuple_t *after,
                            const outboxd_cdc_source_t *si, const char *reason,
                            outboxd_cdc_emit_cb emit, void *opaque, char *errstr,
                            size_t errstr_size);

/* The Avro key or value schema text in use for relation oid (after a change
 * of it was built), or NULL. Valid until the relation changes. For tests. */
const char *outboxd_cdc_avro_schema(const outboxd_cdc_t *c, uint32_t oid, bool key);

/* Counters since start. */
typedef struct outboxd_cdc_stats {
    uint64_t events;
    uint64_t tombstones;
    uint64_t dead_letters;
    uint64_t schemas; /* value schemas built (one per table and relation version) */
} outboxd_cdc_stats_t;
void outboxd_cdc_stats(const outboxd_cdc_t *c, outboxd_cdc_stats_t *out);

/*
 * Type mapping, exposed for unit tests. A PostgreSQL type (after domains
 * are resolved to their base type and arrays to their element type) maps to
 * a Debezium/Connect type; kind is one of the OUTBOXD_CDC_T_* values.
 */
typedef enum {
    OUTBOXD_CDC_T_STRING = 0, /* text forms: text, varchar, char, enum, json, inet, unknown */
    OUTBOXD_CDC_T_INT16,
    OUTBOXD_CDC_T_INT32,
    OUTBOXD_CDC_T_INT64,
    OUTBOXD_CDC_T_FLOAT32,
    OUTBOXD_CDC_T_FLOAT64,
    OUTBOXD_CDC_T_BOOL,
    OUTBOXD_CDC_T_BYTES,
    OUTBOXD_CDC_T_DECIMAL,     /* numeric(p,s): Connect Decimal, bytes */
    OUTBOXD_CDC_T_VARDECIMAL,  /* numeric: VariableScaleDecimal {scale, value} */
    OUTBOXD_CDC_T_DATE,        /* io.debezium.time.Date, int32 days */
    OUTBOXD_CDC_T_TIME_MILLIS, /* io.debezium.time.Time, int32 ms (time(0..3)) */
    OUTBOXD_CDC_T_TIME_MICROS, /* io.debezium.time.MicroTime, int64 us */
    OUTBOXD_CDC_T_TS_MILLIS,   /* io.debezium.time.Timestamp (timestamp(0..3)) */
    OUTBOXD_CDC_T_TS_MICROS,   /* io.debezium.time.MicroTimestamp */
    OUTBOXD_CDC_T_ZTIME,       /* io.debezium.time.ZonedTime, string */
    OUTBOXD_CDC_T_ZTIMESTAMP,  /* io.debezium.time.ZonedTimestamp, string */
    OUTBOXD_CDC_T_INTERVAL,    /* io.debezium.time.MicroDuration, int64 us */
    OUTBOXD_CDC_T_UUID,        /* io.debezium.data.Uuid, string */
    OUTBOXD_CDC_T_JSON,        /* io.debezium.data.Json, string */
} outboxd_cdc_kind_t;

/* Kind of a scalar type oid with its typmod; unknown oids: STRING. */
outboxd_cdc_kind_t outboxd_cdc_kind(uint32_t type_oid, int32_t typmod);

/*
 * Converts one text-format value to the kind's value for the JSON converter
 * (a JSON text appended to out: a number, a string, true/false, or for
 * bytes/decimal the base64 string). Returns 0; 1 when the text does not
 * parse as the kind (reason filled; the caller falls back to the text form).
 */
int outboxd_cdc_json_value(outboxd_cdc_kind_t kind, int32_t typmod, const char *text, size_t len,
                           outboxd_buf_t *out, char *reason, size_t reason_size);

/* Hex SHA-256 of data (mask_hash), exposed for tests. */
void outboxd_cdc_sha256_hex(const void *data, size_t len, char out[65]);

#endif

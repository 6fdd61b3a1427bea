/*
 * Router: turns one decoded change (an outbox row, or a
 * pg_logical_emit_message) into one Kafka record: an event for its topic, a
 * dead-letter record, or nothing (deletes, updates under on_update: skip,
 * tables and prefixes that are not configured).
 *
 * The record's buffers belong to the router and stay valid until the next
 * route call; the sink copies what it produces.
 */
#ifndef OUTBOXD_ROUTER_H
#define OUTBOXD_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/relay/config.h"
#include "outboxd/relay/pgoutput.h"
#include "outboxd/common/util.h"

#define OUTBOXD_MAX_HEADERS 32

typedef struct outboxd_header {
    const char *name;  /* NUL-terminated */
    const char *value; /* NULL: a header with a null value */
    size_t len;
} outboxd_header_t;

typedef struct outboxd_record {
    const char *topic; /* NUL-terminated */
    const char *key;   /* NULL: no key */
    size_t key_len;
    const void *value; /* NULL: a null value (tombstone) */
    size_t value_len;
    outboxd_header_t headers[OUTBOXD_MAX_HEADERS];
    size_t n_headers;
    bool has_partition; /* else the producer's partitioner decides */
    int32_t partition;
    int64_t timestamp_ms; /* record timestamp; 0: the producer's current time */
} outboxd_record_t;

/* Where a change sits in the stream. */
typedef struct outboxd_change_ctx {
    outboxd_lsn_t lsn;        /* WAL position of the change */
    outboxd_lsn_t commit_lsn; /* of its transaction */
    uint32_t xid;
    int64_t commit_time_us; /* Unix epoch */
    int64_t change_index;   /* within its transaction */
} outboxd_change_ctx_t;

typedef enum {
    OUTBOXD_ROUTE_IGNORE = 0,      /* nothing to publish */
    OUTBOXD_ROUTE_EVENT = 1,       /* rec is an event */
    OUTBOXD_ROUTE_DEAD_LETTER = 2, /* rec is a dead-letter record; reason in errstr */
} outboxd_route_t;

typedef struct outboxd_router outboxd_router_t;

/* conf and src must outlive the router. database is copied. NULL + errstr on error. */
outboxd_router_t *outboxd_router_new(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                                     const char *database, char *errstr, size_t errstr_size);
void outboxd_router_destroy(outboxd_router_t *rt);

/*
 * Routes an INSERT, UPDATE, DELETE, TRUNCATE or MESSAGE. Returns the route
 * kind (>= 0), or -1 on an internal error (OOM, Avro failure) with errstr.
 * For OUTBOXD_ROUTE_DEAD_LETTER, errstr holds the reason (also in a header).
 */
int outboxd_router_route(outboxd_router_t *rt, const outboxd_pgo_msg_t *msg,
                         const outboxd_change_ctx_t *ctx, outboxd_record_t *rec, char *errstr,
                         size_t errstr_size);

/*
 * Builds the dead-letter record for a change that routes to an event but
 * that Kafka refused (see outboxd_sink_refused), with reason in its headers.
 * Returns OUTBOXD_ROUTE_DEAD_LETTER, OUTBOXD_ROUTE_IGNORE for a change that
 * is not an outbox row or configured message, or -1 with errstr.
 */
int outboxd_router_dead_letter(outboxd_router_t *rt, const outboxd_pgo_msg_t *msg,
                               const outboxd_change_ctx_t *ctx, const char *reason,
                               outboxd_record_t *rec, char *errstr, size_t errstr_size);

/*
 * Same, with the whole dead-letter record (value, key, headers) kept within
 * max_bytes (0: the default limit, min(relay.max_event_bytes, the producer's
 * message.max.bytes)); a value that does not fit is cut with a marker and an
 * outboxd.truncated header. Used when Kafka refused a dead-letter record.
 */
int outboxd_router_dead_letter_max(outboxd_router_t *rt, const outboxd_pgo_msg_t *msg,
                                   const outboxd_change_ctx_t *ctx, const char *reason,
                                   size_t max_bytes, outboxd_record_t *rec, char *errstr,
                                   size_t errstr_size);

/* Domain types and their base types (n pairs, copied; replaces those set
 * before): a Debezium drop-in table renders a column of a domain type as its
 * base type, as Debezium does (pgoutput sends the domain's own type). The
 * source sets them from its checks at each connection. 0, or -1 (OOM: the
 * previous ones stay). */
int outboxd_router_set_domains(outboxd_router_t *rt, const uint32_t *oid, const uint32_t *base,
                               size_t n);

/* A Relation message for oid arrived: the next change of that table binds
 * the configured columns to the (possibly changed) relation again. */
void outboxd_router_forget(outboxd_router_t *rt, uint32_t oid);

/* Counters since start, for logs and (later) metrics. */
typedef struct outboxd_router_stats {
    uint64_t events;
    uint64_t dead_letters;
    uint64_t ignored_deletes;
    uint64_t skipped_updates;
    uint64_t ignored_other;
} outboxd_router_stats_t;
void outboxd_router_stats(const outboxd_router_t *rt, outboxd_router_stats_t *out);

/* Parses an ISO 8601 / PostgreSQL timestamp text ("2026-11-24 12:00:00.5+00",
 * "2026-11-24T12:00:00Z"); no zone means UTC. Returns 0 and Unix microseconds,
 * or -1. Exposed for tests. */
int outboxd_parse_timestamp(const char *s, size_t len, int64_t *out_us);

#endif

/*
 * Confluent-compatible schema registry client (libcurl + jansson).
 *
 * Registers a schema under a subject (POST /subjects/{subject}/versions,
 * which returns the existing id when the schema is there already) or only
 * looks it up (POST /subjects/{subject}), and caches the id per (subject,
 * schema text). A cached id is checked again after cache_ttl_ms, so a
 * registry that lost its schemas (an in-memory one restarted) gets them
 * again; every error also drops the whole cache.
 *
 * One client per thread (it holds a curl handle); not thread-safe.
 */
#ifndef OUTBOXD_REGISTRY_H
#define OUTBOXD_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/common/util.h"

typedef enum {
    OUTBOXD_SUBJECT_TOPIC_NAME = 0,   /* <topic>-value */
    OUTBOXD_SUBJECT_RECORD_NAME,      /* <record full name> */
    OUTBOXD_SUBJECT_TOPIC_RECORD_NAME /* <topic>-<record full name> */
} outboxd_subject_strategy_t;

typedef struct outboxd_registry_conf {
    const char *url;          /* base URL, e.g. http://127.0.0.1:8081 (no trailing /) */
    const char *username;     /* Basic auth, or NULL */
    const char *password;     /* with username */
    const char *bearer_token; /* Authorization: Bearer, or NULL */
    const char *ca_file;      /* PEM bundle to verify https servers, or NULL */
    long timeout_ms;          /* per request */
    long cache_ttl_ms;        /* re-check a cached id after this long; 0: never */
    bool auto_register;       /* false: look up only; a missing schema is an error */
} outboxd_registry_conf_t;

typedef struct outboxd_registry outboxd_registry_t;

/* Results of outboxd_registry_id. */
typedef enum {
    OUTBOXD_REGISTRY_OK = 0,
    /* Unreachable, timed out, 5xx, 401/403, 429, anything unexpected: the
     * caller retries later and must not lose or skip the event. */
    OUTBOXD_REGISTRY_RETRY = 1,
    /* The registry refuses this schema for this subject for good: 409
     * incompatible, 422 invalid, or (with auto_register off) 404 not
     * registered. The caller dead-letters the event. */
    OUTBOXD_REGISTRY_REJECTED = 2,
} outboxd_registry_status_t;

/* conf strings are copied. NULL with errstr on error. */
outboxd_registry_t *outboxd_registry_new(const outboxd_registry_conf_t *conf, char *errstr,
                                         size_t errstr_size);
void outboxd_registry_destroy(outboxd_registry_t *reg);

/*
 * The schema id of schema_text under subject (registering it when
 * auto_register). errstr names subject and cause on RETRY and REJECTED.
 * A rejection is cached for cache_ttl_ms too, so a stream of rows of a
 * rejected schema does not call the registry once per row.
 */
outboxd_registry_status_t outboxd_registry_id(outboxd_registry_t *reg, const char *subject,
                                              const char *schema_text, int32_t *id, char *errstr,
                                              size_t errstr_size);

/*
 * GET {url}/schemas/ids/{id}: the schema text registered with that id (what a
 * consumer of the wire format needs). On OK *schema_text is malloc'ed (the
 * caller frees it). REJECTED when the registry answers that it does not know
 * the id (404) or the schema is not Avro; RETRY as for outboxd_registry_id
 * (unreachable, 5xx, 401/403, 429, garbage). Not cached here: the caller
 * caches per id, since an id never changes meaning in a registry.
 */
outboxd_registry_status_t outboxd_registry_schema_by_id(outboxd_registry_t *reg, int32_t id,
                                                        char **schema_text, char *errstr,
                                                        size_t errstr_size);

/* GET {url}/subjects: reachable, and the credentials are accepted. 0, or -1
 * with errstr (for outboxd check; changes nothing in the registry). */
int outboxd_registry_ping(outboxd_registry_t *reg, char *errstr, size_t errstr_size);

/* Drops every cached id and rejection. */
void outboxd_registry_forget(outboxd_registry_t *reg);

/* Requests sent since start (for tests and stats). */
uint64_t outboxd_registry_requests(const outboxd_registry_t *reg);

/* The subject for a value schema. record_name may be NULL for a schema that
 * is not named (then the record strategies fail). Appends to out. Returns
 * false when the strategy needs a record name, or on OOM. */
bool outboxd_registry_subject(outboxd_subject_strategy_t strategy, const char *topic,
                              const char *record_name, outboxd_buf_t *out);

/* Parses "topic-name" / "record-name" / "topic-record-name" (also the
 * Confluent class names TopicNameStrategy, RecordNameStrategy,
 * TopicRecordNameStrategy). */
bool outboxd_registry_parse_strategy(const char *s, outboxd_subject_strategy_t *out);

/* Confluent wire format header: magic 0, then the id big-endian. */
#define OUTBOXD_WIRE_HEADER_LEN 5
void outboxd_registry_wire_header(int32_t id, unsigned char out[OUTBOXD_WIRE_HEADER_LEN]);
/* Reads the header; false when buf is shorter or the magic is not 0. */
bool outboxd_registry_wire_parse(const void *buf, size_t len, int32_t *id);

#endif

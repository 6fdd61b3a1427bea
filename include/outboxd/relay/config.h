/*
 * YAML configuration (libyaml). See README "Configuration reference".
 *
 * The loaded configuration is immutable and owned by the caller of
 * outboxd_config_load / outboxd_config_parse; free it with
 * outboxd_config_destroy. Every string in it is NUL-terminated and owned by
 * the config. Errors are reported as "FILE:LINE: KEY.PATH: message", e.g.
 *   outboxd.yaml:14: sources[0].slot: must be a string
 */
#ifndef OUTBOXD_CONFIG_H
#define OUTBOXD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/common/util.h"

typedef enum {
    OUTBOXD_MODE_OUTBOX = 0,
    OUTBOXD_MODE_CDC = 1, /* change events of a plain table (relay/cdc.h) */
} outboxd_table_mode_t;

/* tables[].format of a cdc table. */
typedef enum {
    OUTBOXD_CDC_AVRO = 0, /* AvroConverter: registry wire format, or single-object */
    OUTBOXD_CDC_JSON = 1, /* JsonConverter */
} outboxd_cdc_format_t;

/* tables[].snapshot of a cdc table (Debezium's snapshot.mode). */
typedef enum {
    OUTBOXD_SNAPSHOT_INITIAL = 0,
    OUTBOXD_SNAPSHOT_NEVER = 1,
    OUTBOXD_SNAPSHOT_WHEN_NEEDED = 2,
} outboxd_snapshot_mode_t;

/* What an UPDATE on an outbox table does (outbox rows should be immutable). */
typedef enum {
    OUTBOXD_UPDATE_SKIP = 0,   /* logged at WARN, counted, not published (default) */
    OUTBOXD_UPDATE_PUBLISH,    /* the new row image is published as an event */
    OUTBOXD_UPDATE_DEAD_LETTER /* the new row image goes to the dead-letter topic */
} outboxd_update_policy_t;

/* What a publication created by outboxd covers (publication_scope). */
typedef enum {
    OUTBOXD_PUB_TABLES = 0, /* FOR TABLE the configured tables (default) */
    OUTBOXD_PUB_SCHEMA = 1, /* FOR TABLES IN SCHEMA of the configured tables (PostgreSQL 15+) */
    OUTBOXD_PUB_ALL = 2,    /* FOR ALL TABLES, the relay keeps the configured ones */
} outboxd_pub_scope_t;

/* What happens to an event whose topic does not exist (see README). */
typedef enum {
    OUTBOXD_MISSING_TOPIC_WAIT = 0,    /* the source waits, with backoff, until it exists */
    OUTBOXD_MISSING_TOPIC_DEAD_LETTER, /* the row goes to the dead-letter topic */
    OUTBOXD_MISSING_TOPIC_CREATE       /* outboxd creates it (AdminClient CreateTopics) */
} outboxd_missing_topic_t;

/* The Kafka value of an outbox event (tables[].value_format). */
typedef enum {
    OUTBOXD_VALUE_ENVELOPE = 0, /* the outboxd envelope (payload typed when an .avsc exists) */
    OUTBOXD_VALUE_PAYLOAD = 1,  /* the payload alone, as Avro (typed, or an Avro string) */
} outboxd_value_format_t;

/* relay.dead_letter_format */
typedef enum {
    OUTBOXD_DLT_JSON = 0, /* the row as a JSON object (default) */
    OUTBOXD_DLT_AVRO = 1, /* config/avro/dead_letter.avsc */
} outboxd_dlt_format_t;

typedef struct outboxd_kv {
    char *key;
    char *value;
    int line; /* of the key in the YAML, for messages */
} outboxd_kv_t;

/* Column names of an outbox table; defaults match Debezium's outbox router. */
typedef struct outboxd_outbox_columns {
    char *id;            /* default "id" */
    char *aggregatetype; /* default "aggregatetype" */
    char *aggregateid;   /* default "aggregateid" */
    char *type;          /* default "type" */
    char *payload;       /* default "payload" */
    char *timestamp;     /* default NULL: occurred-at falls back to commit time */
} outboxd_outbox_columns_t;

typedef struct outboxd_table_conf {
    char *schema; /* "public" when the YAML gives an unqualified name */
    char *name;
    outboxd_table_mode_t mode;
    char *topic;      /* template, "${column}" placeholders; default
                         "outbox.event.${aggregatetype}" */
    char *key_column; /* default: columns.aggregateid */
    outboxd_outbox_columns_t columns;
    char **header_columns; /* extra columns copied into Kafka headers */
    size_t n_header_columns;
    outboxd_update_policy_t on_update;
    /* POSIX extended regex a templated topic must match as a whole (NULL:
     * any topic); others are dead-lettered. */
    char *allowed_topics;
    int value_format; /* outboxd_value_format_t, default envelope */
    /* debezium: Debezium EventRouter / converter properties taken verbatim
     * (relay/debezium.h); n_debezium 0: not a Debezium drop-in table */
    outboxd_kv_t *debezium;
    size_t n_debezium;
    /* mode: cdc (relay/cdc.h). topic NULL: <topic_prefix>.<schema>.<table> */
    char *topic_prefix;        /* NULL: the source's name (Debezium's topic.prefix) */
    int cdc_format;            /* outboxd_cdc_format_t, default avro */
    bool json_schemas;         /* format json: schema block (schemas.enable), default true */
    bool tombstones_on_delete; /* default true */
    bool truncate_events;      /* op t events; default false (Debezium's skipped.operations=t) */
    int snapshot;              /* outboxd_snapshot_mode_t, default initial */
    /* column filters and masks (names; n 0: none). include: only these
     * columns in before/after; exclude: never these. mask_hash: the hex
     * SHA-256 of the value's text; mask_null: always null. */
    char **columns_include, **columns_exclude, **mask_hash, **mask_null;
    size_t n_columns_include, n_columns_exclude, n_mask_hash, n_mask_null;
    /* SQL boolean expression: the publication's row filter (PostgreSQL 15
     * publication WHERE, set by outboxd check); NULL: every row */
    char *row_filter;
    int line; /* line of this entry in the YAML, for messages */
} outboxd_table_conf_t;

/*
 * pg_logical_emit_message(true, prefix, content) input. content is a JSON
 * object with the same fields an outbox row has: id, aggregatetype,
 * aggregateid, type, payload (any JSON), optional timestamp (RFC 3339).
 */
typedef struct outboxd_message_conf {
    char *prefix;
    char *topic;          /* template over the JSON object's top-level fields */
    char *allowed_topics; /* as for tables */
    int line;
} outboxd_message_conf_t;

typedef struct outboxd_source_conf {
    char *name;
    char *dsn;               /* libpq connection string, without the password */
    char *password_file;     /* may be NULL */
    char *password;          /* read from password_file at load time; may be NULL */
    char *slot;              /* default "outboxd_<name>" */
    char *publication;       /* default "outboxd_<name>" */
    bool create_slot;        /* default true */
    bool create_publication; /* default true */
    int publication_scope;   /* outboxd_pub_scope_t, default tables */
    /* default 0: no heartbeat messages (heartbeat.h) */
    int heartbeat_interval_ms;
    /* replay_window (relay/replay.h): how far behind the live slot the
     * retention slot is kept, as a time (ms) or a WAL size (bytes); both 0:
     * no retention slot, no replay. Inherited from relay.replay_window. */
    int64_t replay_window_ms;
    uint64_t replay_window_bytes;
    char *retention_slot; /* "<slot>_keep" when a window is set, else NULL */
    /* "schema.table" whose inserted rows ask for an ad-hoc snapshot
     * (relay/snapshot.h), or NULL */
    char *signal_table;
    outboxd_table_conf_t *tables;
    size_t n_tables;
    outboxd_message_conf_t *messages;
    size_t n_messages;
    int line;
} outboxd_source_conf_t;

typedef struct outboxd_config {
    char *path; /* as given to load, for messages */

    /* kafka: */
    char *bootstrap_servers;        /* required */
    char *transactional_id_prefix;  /* default "outboxd" */
    outboxd_kv_t *kafka_properties; /* passed to librdkafka as-is; includes the
                                       entries of kafka_secret_properties_file */
    size_t n_kafka_properties;
    char *kafka_secret_properties_file; /* may be NULL */

    /* schema_registry: (optional; see README "Schema registry") */
    char *schema_registry_url;    /* may be NULL: no registry */
    int subject_name_strategy;    /* outboxd_subject_strategy_t, default topic-name */
    char *registry_user;          /* basic_auth_user, or NULL */
    char *registry_password_file; /* with basic_auth_user */
    char *registry_token_file;    /* bearer_token_file, or NULL */
    char *registry_ca_file;       /* ca_file, or NULL */
    int registry_timeout_ms;      /* default 5000 */
    int registry_cache_ttl_ms;    /* default 300000 */
    bool registry_auto_register;  /* default true */

    /* relay: */
    int commit_interval_ms;       /* default 20 */
    int max_batch_events;         /* default 5000 */
    size_t max_event_bytes;       /* default 1000000 */
    char *checkpoint_topic;       /* default "outboxd.checkpoints" */
    char *dead_letter_topic;      /* default "outboxd.dlt" */
    int status_interval_ms;       /* default 10000: standby status update period */
    int reconnect_max_backoff_ms; /* default 30000 */
    /* Like PostgreSQL's own wal_receiver_timeout: after half of it without a
     * message from the walsender the relay asks for a reply; after the rest,
     * the connection is presumed dead (a half-open link, a frozen server)
     * and reconnected. 0 disables. Default 60000. */
    int wal_receiver_timeout_ms;
    char *log_level;  /* default "info" */
    char *log_format; /* "text" (default) or "json" */
    /* Transactional producers per source used in turn (default 2), so a
     * transaction never waits for the broker to finish writing the previous
     * one's commit markers (see sink.c). */
    int producers_per_source;
    /* 0 (default): every source has its own producers (producers_per_source).
     * N > 0: one process-wide pool of N transactional producers
     * (<prefix>.pool.<k>) that sources borrow one Kafka transaction at a
     * time (sink.h, "Many sources" in README). */
    int kafka_producers;
    /* At most this many threads run the sources' loops (default 16; loops.h):
     * up to that many sources, one thread each; more sources share them. */
    int loop_threads;
    /* Default true: while a Kafka transaction commits (in a helper thread),
     * the source thread keeps reading the replication stream into a bounded
     * buffer instead of leaving PostgreSQL's walsender blocked (source.c). */
    bool pipeline_commits;
    outboxd_missing_topic_t missing_topic; /* default wait */
    int create_topic_partitions;           /* for missing_topic: create; -1 = broker default */
    int create_topic_replication_factor;   /* same; -1 = broker default */
    /* Typed payloads and schemas (relative paths: to the config file). */
    char *schemas_dir;      /* <type>.avsc per event type, or NULL */
    char *schema_store_dir; /* without a registry: <fingerprint>.avsc written here, or NULL */
    int dead_letter_format; /* outboxd_dlt_format_t, default json */

    /* metrics: HTTP endpoint (metrics.h); no server when listen is NULL */
    char *metrics_listen;          /* may be NULL */
    int metrics_stall_timeout_ms;  /* default 60000: /healthz and watchdog limit */
    int metrics_ready_min_sources; /* default 0: /readyz needs every source */
    size_t max_slot_lag_bytes;     /* relay.max_slot_lag_bytes, default 0: no limit */
    /* relay.replay_window: the default of sources[].replay_window */
    int64_t replay_window_ms;
    uint64_t replay_window_bytes;

    outboxd_source_conf_t *sources;
    size_t n_sources;
} outboxd_config_t;

/* Reads and validates a file. Returns NULL and fills errstr on error. */
outboxd_config_t *outboxd_config_load(const char *path, char *errstr, size_t errstr_size);

/* Same, from memory; name is used as the file name in messages. */
outboxd_config_t *outboxd_config_parse(const char *text, size_t len, const char *name, char *errstr,
                                       size_t errstr_size);

void outboxd_config_destroy(outboxd_config_t *conf);

/*
 * For a reload: every key marked restart in the key tables (a source's dsn,
 * slot, publication, ...; see README "Reloading the configuration") whose
 * value in next differs from running gets its running value back in next,
 * and its path is appended to changed, one per line ("relay.checkpoint_topic",
 * "sources[0].dsn"); sources added to or removed from the file are listed as
 * "sources: source NAME removed" / "sources[N]: source NAME added" (sources
 * are matched by name; next keeps the added ones, which the caller does not
 * start). Returns 0, or -1 when out of memory.
 */
int outboxd_config_pin_restart_keys(outboxd_config_t *next, const outboxd_config_t *running,
                                    outboxd_buf_t *changed);

/*
 * With more than OUTBOXD_OWN_PRODUCERS_NOTE_SOURCES sources and no producer
 * pool (relay.kafka_producers: 0), a note for the operator (logged at start)
 * on what a pool saves, in buf; else NULL. Own producers cost each source
 * its own librdkafka clients (threads, connections, bootstrap), which grew
 * 200 sources to 1,618 threads and 130 MB against 34 threads and 38 MB with
 * a pool of 4 (bench/sources.sh).
 */
#define OUTBOXD_OWN_PRODUCERS_NOTE_SOURCES 16
const char *outboxd_config_producers_note(const outboxd_config_t *conf, char *buf, size_t buf_size);

/*
 * Parses a replay_window value: a duration ("90s", "30m", "1h", "2d") into
 * *ms, or a WAL size ("500MB", "2GB", "1TB", "4096kB", "1048576B"; units of
 * 1024 as in postgresql.conf) into *bytes; the other is set to 0. Returns 0,
 * or -1 (not one of those, zero, or too large).
 */
int outboxd_config_parse_window(const char *text, int64_t *ms, uint64_t *bytes);

/* Suffixes of the slots derived from sources[].slot when replay_window is
 * set: the retention slot, and the copy `outboxd replay` streams from. */
#define OUTBOXD_RETENTION_SUFFIX "_keep"
#define OUTBOXD_REPLAY_SUFFIX    "_replay"

#endif

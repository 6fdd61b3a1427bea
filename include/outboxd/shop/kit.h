/*
 * The shop's kit: what every service of the payment SAGA needs to talk to the
 * others through its own database and Kafka only (DESIGN.md section 6).
 *
 *  - outbox: a service writes an outbox row in its own transaction; outboxd
 *    publishes it. No service produces to Kafka.
 *  - consumer: read_committed, decodes the relay's Avro envelope (through the
 *    schema registry when outboxd uses one), records the
 *    event id in an inbox table in the same local transaction as the business
 *    change, commits the Kafka offset only after the local commit; bounded
 *    retries with backoff, then `<topic>.dlt` through the service's outbox,
 *    but a database (or Redis) that is away is waited out, never a reason to
 *    dead-letter;
 *    a per-consumer rate limit and a bound on messages fetched ahead.
 *  - http: a small JSON server (libmicrohttpd, thread per connection).
 *  - pool: PostgreSQL connections for HTTP handlers.
 *
 * The kit links outboxd_common only: it never sees the relay's headers.
 */
#ifndef OUTBOXD_SHOP_KIT_H
#define OUTBOXD_SHOP_KIT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

/* Settings shared by one service process. Strings are borrowed. */
typedef struct outboxd_shop_conf {
    const char *service;      /* "member", "payment", ... */
    const char *dsn;          /* the service's own database */
    const char *bootstrap;    /* Kafka */
    const char *topic_prefix; /* prepended to every topic name ("" in production) */
    const char *group_prefix; /* consumer group = <group_prefix><service>.<consumer> */
    double rate_per_s;        /* per-consumer rate limit; 0 = unlimited */
    int max_in_flight;        /* messages fetched ahead of processing (queued.min.messages) */
    int retries;              /* handler attempts after the first, then dead letter */
    int retry_backoff_ms;     /* first backoff; doubles per attempt, capped at 5 s */
    int topic_partitions;     /* partitions of the topics the kit creates */
    const char *registry_url; /* schema registry (Confluent API) for wire-format values, or NULL */
} outboxd_shop_conf_t;

/* Creates the outbox and inbox tables when missing (the outbox has the
 * Debezium columns plus trace_id, which outboxd places in a header).
 * Returns 0, or -1 with errstr filled. */
int outboxd_shop_schema_ensure(PGconn *conn, char *errstr, size_t errstr_size);

/* True for the SQLSTATEs that say the database (not the statement) is the
 * problem, so that the same statement may succeed later: connection
 * exceptions (class 08), insufficient resources (53000, 53100 disk full,
 * 53300 too many connections; not 53200 out of memory or 53400 a configured
 * limit, which one event can cause), operator intervention
 * (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now),
 * serialization failure (40001) and deadlock (40P01). */
bool outboxd_shop_sqlstate_transient(const char *sqlstate);

/* The SQLSTATE of the last statement run in this thread through
 * outboxd_shop_exec/query/command when it failed ("" when it succeeded, or
 * its failure had none, as a lost connection has not);
 * outboxd_shop_sqlstate_clear forgets it. */
const char *outboxd_shop_last_sqlstate(void);
void outboxd_shop_sqlstate_clear(void);

/* After a failed statement on conn in this thread: true when the database
 * itself is the cause (the connection lost, or a SQLSTATE
 * outboxd_shop_sqlstate_transient accepts), not the statement. The one rule
 * behind the consumer's waits and the HTTP handlers' 503. */
bool outboxd_shop_db_away(PGconn *conn);

/* Runs sql (no parameters); returns 0 or -1 with errstr filled. */
int outboxd_shop_exec(PGconn *conn, const char *sql, char *errstr, size_t errstr_size);

/* Writes one outbox row in the caller's open transaction: aggregatetype is
 * <topic_prefix><topic> (the relay's topic template is "${aggregatetype}"),
 * aggregateid is the Kafka key. payload is borrowed. trace_id may be NULL.
 * Returns 0, or -1 with errstr filled. */
int outboxd_shop_outbox_write(PGconn *conn, const outboxd_shop_conf_t *conf, const char *topic,
                              const char *key, const char *type, json_t *payload,
                              const char *trace_id, char *errstr, size_t errstr_size);

/* Connects and checks the connection; NULL with errstr filled on failure. */
PGconn *outboxd_shop_connect(const char *dsn, char *errstr, size_t errstr_size);

/* One event as a handler sees it. All members are borrowed for the call. */
typedef struct outboxd_shop_event {
    const char *id;       /* the outbox row's id */
    const char *type;     /* the outbox row's type */
    const char *topic;    /* without the topic prefix */
    const char *key;      /* aggregateid */
    const char *trace_id; /* from the trace_id header, or "" */
    json_t *payload;      /* the outbox row's payload (a JSON value) */
    json_t *envelope;     /* the whole decoded envelope */
} outboxd_shop_event_t;

/* A handler runs inside the local transaction that also records the event in
 * the inbox. It returns 0 when done (the transaction commits), or, with
 * errstr filled and the transaction rolled back:
 *  - OUTBOXD_SHOP_FAILED (-1): the event cannot be applied; it is retried
 *    conf->retries times, then dead-lettered;
 *  - OUTBOXD_SHOP_UNAVAILABLE (-2): something the handler needs is away (a
 *    store other than the service's database, such as Redis): the event is
 *    good, so it is retried with backoff until that answers, never
 *    dead-lettered (a dead-lettered command would leave its saga waiting for
 *    a step that never runs, and a dead-lettered compensation would leave the
 *    payment COMPENSATING).
 * The kit itself counts a -1 as unavailable when the service's database is
 * the cause: the connection is lost, or the failed statement's SQLSTATE is
 * one outboxd_shop_sqlstate_transient accepts. */
#define OUTBOXD_SHOP_FAILED      (-1)
#define OUTBOXD_SHOP_UNAVAILABLE (-2)
typedef int (*outboxd_shop_handler_fn)(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev,
                                       char *errstr, size_t errstr_size);

/*
 * Decodes one Kafka value written by outboxd into its envelope as JSON (the
 * payload embedded as a JSON value). The only place that knows the framing:
 *  - Confluent wire format (outboxd with schema_registry.url): magic 0 and a
 *    4-byte schema id; the writer schema is fetched from registry_url with
 *    GET /schemas/ids/{id} once per id and cached;
 *  - Avro single-object encoding (outboxd without a registry): C3 01 and the
 *    envelope schema's fingerprint.
 * Returns a new reference, or NULL with errstr filled and *retry set when
 * the failure is passing (the registry unreachable, 5xx, ...): the caller
 * tries again later instead of giving up on the event. registry_url may be
 * NULL (then wire-format values are refused, naming --registry).
 */
typedef struct outboxd_shop_decoder outboxd_shop_decoder_t;
outboxd_shop_decoder_t *outboxd_shop_decoder_new(const char *registry_url, char *errstr,
                                                 size_t errstr_size);
void outboxd_shop_decoder_destroy(outboxd_shop_decoder_t *d);
json_t *outboxd_shop_decode(outboxd_shop_decoder_t *d, const void *buf, size_t len, bool *retry,
                            char *errstr, size_t errstr_size);
/* Schema lookups sent to the registry so far (for tests: the cache works). */
uint64_t outboxd_shop_decoder_lookups(const outboxd_shop_decoder_t *d);

/* Counters of one consumer (read with outboxd_shop_consumer_stats). */
typedef struct outboxd_shop_consumer_stats {
    int64_t handled;    /* events applied (local transaction committed) */
    int64_t duplicates; /* events already in the inbox */
    int64_t retries;    /* failed attempts that were retried */
    int64_t dead_letters;
    int64_t throttled_ms;      /* time spent waiting for the rate limit (back-pressure) */
    int64_t registry_waits;    /* decodes retried because the schema registry was away */
    int64_t unavailable_waits; /* attempts retried because the database (or Redis) was away */
} outboxd_shop_consumer_stats_t;

typedef struct outboxd_shop_consumer outboxd_shop_consumer_t;

/* A consumer of topics (names without the prefix) running handler for each
 * event. name must be unique within the service (it names the inbox rows and
 * the consumer group). Creates the topics when missing. */
outboxd_shop_consumer_t *outboxd_shop_consumer_new(const outboxd_shop_conf_t *conf,
                                                   const char *name, const char *const *topics,
                                                   size_t n_topics, outboxd_shop_handler_fn handler,
                                                   void *opaque, char *errstr, size_t errstr_size);
/* Starts the consumer's thread. Returns 0 or -1 with errstr filled. */
int outboxd_shop_consumer_start(outboxd_shop_consumer_t *c, char *errstr, size_t errstr_size);
void outboxd_shop_consumer_stats(outboxd_shop_consumer_t *c, outboxd_shop_consumer_stats_t *out);
const char *outboxd_shop_consumer_name(const outboxd_shop_consumer_t *c);
/* True once the group has assigned partitions to this consumer (before that,
 * events wait on the broker: a service is "ready" when all its consumers are). */
bool outboxd_shop_consumer_assigned(outboxd_shop_consumer_t *c);
/* Stops the thread (if started) and frees everything. */
void outboxd_shop_consumer_destroy(outboxd_shop_consumer_t *c);

/* Token bucket used by the consumer (exposed for tests). */
typedef struct outboxd_shop_throttle {
    double rate;  /* tokens per second; <= 0 means unlimited */
    double burst; /* bucket size */
    double tokens;
    int64_t last_us;
} outboxd_shop_throttle_t;
void outboxd_shop_throttle_init(outboxd_shop_throttle_t *t, double rate, int64_t now_us);
/* Takes one token; returns how many microseconds to wait before retrying
 * (0 = taken). */
int64_t outboxd_shop_throttle_take(outboxd_shop_throttle_t *t, int64_t now_us);

/* A pool of connections for HTTP handlers (thread-safe). */
typedef struct outboxd_shop_pool outboxd_shop_pool_t;
outboxd_shop_pool_t *outboxd_shop_pool_new(const char *dsn);
PGconn *outboxd_shop_pool_get(outboxd_shop_pool_t *p, char *errstr, size_t errstr_size);
/* Returns conn to the pool (closes it when broken). */
void outboxd_shop_pool_put(outboxd_shop_pool_t *p, PGconn *conn);
void outboxd_shop_pool_destroy(outboxd_shop_pool_t *p);

/* HTTP. A request as a route handler sees it; borrowed for the call. */
#define OUTBOXD_SHOP_MAX_RESP_HEADERS 4
typedef struct outboxd_shop_req {
    const char *method;
    const char *path;
    json_t *body; /* parsed JSON body, or NULL when there was none */
    void *mhd_conn;
    /* response headers a handler adds (outboxd_shop_resp_header) */
    int n_resp_headers;
    const char *resp_header_name[OUTBOXD_SHOP_MAX_RESP_HEADERS];
    char resp_header_value[OUTBOXD_SHOP_MAX_RESP_HEADERS][128];
} outboxd_shop_req_t;

/* Adds a response header (name must be a literal or outlive the request). */
void outboxd_shop_resp_header(outboxd_shop_req_t *r, const char *name, const char *value);

/* Query argument or request header, NULL when absent. */
const char *outboxd_shop_req_query(const outboxd_shop_req_t *r, const char *name);
const char *outboxd_shop_req_header(const outboxd_shop_req_t *r, const char *name);

/* A route handler sets *status and returns the JSON body (a new reference),
 * or NULL for an empty body. */
typedef json_t *(*outboxd_shop_route_fn)(void *opaque, outboxd_shop_req_t *req, int *status);

typedef struct outboxd_shop_http outboxd_shop_http_t;
/* Listens on 127.0.0.1:port. Returns NULL with errstr filled. */
outboxd_shop_http_t *outboxd_shop_http_new(int port, outboxd_shop_route_fn route, void *opaque,
                                           char *errstr, size_t errstr_size);
void outboxd_shop_http_destroy(outboxd_shop_http_t *h);

/* {"error": msg} with *status set. */
json_t *outboxd_shop_error(int *status, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Splits "/a/b/c" into at most max segments (copied into buf). Returns the
 * number of segments. */
int outboxd_shop_path_split(const char *path, char *buf, size_t buf_size, char **seg, int max);

/* Runs a parameterised query; returns the result on PGRES_TUPLES_OK or
 * PGRES_COMMAND_OK, else NULL with errstr filled (the result is cleared). */
PGresult *outboxd_shop_query(PGconn *conn, const char *sql, int n, const char *const *params,
                             char *errstr, size_t errstr_size);

/* outboxd_shop_query for a statement whose result is not needed: 0, or -1
 * with errstr filled. */
int outboxd_shop_command(PGconn *conn, const char *sql, int n, const char *const *params,
                         char *errstr, size_t errstr_size);

/* Rows of a result as a JSON array of objects (column names as keys; values
 * typed from the column type: int/numeric as numbers, bool, json/jsonb parsed). */
json_t *outboxd_shop_rows_json(const PGresult *res);

#endif

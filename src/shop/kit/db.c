/*
 * The kit's PostgreSQL side: the outbox and inbox tables, the outbox writer,
 * query helpers and a connection pool for HTTP handlers.
 */
#include "outboxd/shop/kit.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/common/log.h"

/* The outbox has Debezium's columns; trace_id goes into a Kafka header
 * (deploy/shop/outboxd.yaml: headers: [trace_id]). The inbox holds the ids of
 * handled events per consumer: the insert is the idempotency check, in the
 * same transaction as the business change. */
static const char *kit_schema = "CREATE TABLE IF NOT EXISTS outbox ("
                                " id uuid PRIMARY KEY,"
                                " aggregatetype text NOT NULL,"
                                " aggregateid text NOT NULL,"
                                " type text NOT NULL,"
                                " payload jsonb,"
                                " trace_id text NOT NULL DEFAULT '',"
                                " created_at timestamptz NOT NULL DEFAULT clock_timestamp());"
                                "CREATE TABLE IF NOT EXISTS inbox ("
                                " consumer text NOT NULL,"
                                " event_id text NOT NULL,"
                                " handled_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
                                " PRIMARY KEY (consumer, event_id));";

/* Per thread: each consumer and each HTTP connection runs on its own. */
static _Thread_local char last_sqlstate[6];

static void note_sqlstate(const PGresult *res)
{
    const char *s = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    snprintf(last_sqlstate, sizeof(last_sqlstate), "%s", s ? s : "");
}

const char *outboxd_shop_last_sqlstate(void)
{
    return last_sqlstate;
}

void outboxd_shop_sqlstate_clear(void)
{
    last_sqlstate[0] = '\0';
}

bool outboxd_shop_sqlstate_transient(const char *s)
{
    if (!s || strlen(s) != 5)
        return false;
    if (strncmp(s, "08", 2) == 0)
        return true;
    /* Of class 53 not 53200 (out of memory) nor 53400 (a limit such as
     * temp_file_limit): one event can cause those, and would loop for ever. */
    /* 25006: a read-only transaction, i.e. a session on a server in
     * recovery (a failover in progress, or a standby): the consumer
     * reconnects and tries again, it is not the event's fault. */
    return strcmp(s, "25006") == 0 || strcmp(s, "53000") == 0 || strcmp(s, "53100") == 0 ||
           strcmp(s, "53300") == 0 || strcmp(s, "57P01") == 0 || strcmp(s, "57P02") == 0 ||
           strcmp(s, "57P03") == 0 || strcmp(s, "40001") == 0 || strcmp(s, "40P01") == 0;
}

bool outboxd_shop_db_away(PGconn *conn)
{
    return PQstatus(conn) != CONNECTION_OK || outboxd_shop_sqlstate_transient(last_sqlstate);
}

int outboxd_shop_exec(PGconn *conn, const char *sql, char *errstr, size_t errstr_size)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        note_sqlstate(res);
        snprintf(errstr, errstr_size, "%s", PQerrorMessage(conn));
        size_t n = strlen(errstr);
        while (n > 0 && (errstr[n - 1] == '\n' || errstr[n - 1] == ' '))
            errstr[--n] = '\0';
        PQclear(res);
        return -1;
    }
    last_sqlstate[0] = '\0';
    PQclear(res);
    return 0;
}

int outboxd_shop_schema_ensure(PGconn *conn, char *errstr, size_t errstr_size)
{
    /* Concurrent CREATE TABLE IF NOT EXISTS can still collide on the catalog;
     * an advisory lock makes two starting processes take turns. */
    if (outboxd_shop_exec(conn, "SELECT pg_advisory_lock(7231)", errstr, errstr_size) < 0)
        return -1;
    int rc = outboxd_shop_exec(conn, kit_schema, errstr, errstr_size);
    char e2[256];
    outboxd_shop_exec(conn, "SELECT pg_advisory_unlock(7231)", e2, sizeof(e2));
    return rc;
}

PGresult *outboxd_shop_query(PGconn *conn, const char *sql, int n, const char *const *params,
                             char *errstr, size_t errstr_size)
{
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        note_sqlstate(res);
        const char *msg = PQresultErrorMessage(res);
        snprintf(errstr, errstr_size, "%s", msg && *msg ? msg : PQerrorMessage(conn));
        size_t len = strlen(errstr);
        while (len > 0 && (errstr[len - 1] == '\n' || errstr[len - 1] == ' '))
            errstr[--len] = '\0';
        PQclear(res);
        return NULL;
    }
    last_sqlstate[0] = '\0';
    return res;
}

int outboxd_shop_command(PGconn *conn, const char *sql, int n, const char *const *params,
                         char *errstr, size_t errstr_size)
{
    PGresult *res = outboxd_shop_query(conn, sql, n, params, errstr, errstr_size);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

int outboxd_shop_outbox_write(PGconn *conn, const outboxd_shop_conf_t *conf, const char *topic,
                              const char *key, const char *type, json_t *payload,
                              const char *trace_id, char *errstr, size_t errstr_size)
{
    char aggtype[512];
    snprintf(aggtype, sizeof(aggtype), "%s%s", conf->topic_prefix ? conf->topic_prefix : "", topic);
    char *text = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text) {
        snprintf(errstr, errstr_size, "outbox %s: cannot serialise the payload", topic);
        return -1;
    }
    const char *params[5] = {aggtype, key, type, text, trace_id ? trace_id : ""};
    PGresult *res = outboxd_shop_query(conn,
                                       "INSERT INTO outbox (id, aggregatetype, aggregateid, type, "
                                       "payload, trace_id) VALUES (gen_random_uuid(), $1, $2, $3, "
                                       "$4::jsonb, $5)",
                                       5, params, errstr, errstr_size);
    free(text);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

PGconn *outboxd_shop_connect(const char *dsn, char *errstr, size_t errstr_size)
{
    /* A host that does not answer must not hold a consumer (which waits
     * out a database that is away) past a stop for TCP's minutes: 5 s
     * unless the dsn or PGCONNECT_TIMEOUT sets a timeout. */
    bool own = getenv("PGCONNECT_TIMEOUT") != NULL;
    PQconninfoOption *opts = own ? NULL : PQconninfoParse(dsn, NULL);
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val && *o->val)
            own = true;
    PQconninfoFree(opts);
    const char *const keys[] = {"dbname", own ? NULL : "connect_timeout", NULL};
    const char *const vals[] = {dsn, own ? NULL : "5", NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(conn) != CONNECTION_OK) {
        snprintf(errstr, errstr_size, "cannot connect to \"%s\": %s", dsn, PQerrorMessage(conn));
        size_t n = strlen(errstr);
        while (n > 0 && errstr[n - 1] == '\n')
            errstr[--n] = '\0';
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

static json_t *cell_json(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return json_null();
    const char *v = PQgetvalue(res, row, col);
    switch (PQftype(res, col)) {
    case 20: /* int8 */
    case 21: /* int2 */
    case 23: /* int4 */
        return json_integer(strtoll(v, NULL, 10));
    case 700:  /* float4 */
    case 701:  /* float8 */
    case 1700: /* numeric */
        return json_real(strtod(v, NULL));
    case 16: /* bool */
        return json_boolean(v[0] == 't');
    case 114:  /* json */
    case 3802: /* jsonb */
    {
        json_t *j = json_loads(v, JSON_DECODE_ANY, NULL);
        return j ? j : json_string(v);
    }
    default:
        return json_string(v);
    }
}

json_t *outboxd_shop_rows_json(const PGresult *res)
{
    json_t *arr = json_array();
    for (int r = 0; r < PQntuples(res); r++) {
        json_t *o = json_object();
        for (int c = 0; c < PQnfields(res); c++)
            json_object_set_new(o, PQfname(res, c), cell_json(res, r, c));
        json_array_append_new(arr, o);
    }
    return arr;
}

/* ------------------------------------------------------------------ pool */

#define POOL_MAX_IDLE 16

struct outboxd_shop_pool {
    pthread_mutex_t mu;
    char *dsn;
    PGconn *idle[POOL_MAX_IDLE];
    int n_idle;
};

outboxd_shop_pool_t *outboxd_shop_pool_new(const char *dsn)
{
    outboxd_shop_pool_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->dsn = strdup(dsn);
    if (!p->dsn) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->mu, NULL);
    return p;
}

/* An idle connection the server has ended (a restart, pg_terminate_backend)
 * still says CONNECTION_OK until something reads from it. An idle pooled
 * connection has nothing to say (the shop does not LISTEN): anything to
 * read, the server's FATAL message or the end of the stream, means it is
 * gone, and the request gets a fresh connection instead of an error. */
static bool idle_alive(PGconn *c)
{
    if (PQstatus(c) != CONNECTION_OK || PQsocket(c) < 0)
        return false;
    struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
    return poll(&pfd, 1, 0) == 0;
}

PGconn *outboxd_shop_pool_get(outboxd_shop_pool_t *p, char *errstr, size_t errstr_size)
{
    for (;;) {
        pthread_mutex_lock(&p->mu);
        PGconn *c = p->n_idle > 0 ? p->idle[--p->n_idle] : NULL;
        pthread_mutex_unlock(&p->mu);
        if (!c)
            break;
        if (idle_alive(c))
            return c;
        PQfinish(c);
    }
    return outboxd_shop_connect(p->dsn, errstr, errstr_size);
}

void outboxd_shop_pool_put(outboxd_shop_pool_t *p, PGconn *conn)
{
    if (!conn)
        return;
    /* A session on a server in recovery (25006: a failover, a standby)
     * would refuse every write of the requests that get it next. */
    if (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE ||
        strcmp(last_sqlstate, "25006") == 0) {
        PQfinish(conn);
        return;
    }
    pthread_mutex_lock(&p->mu);
    if (p->n_idle < POOL_MAX_IDLE) {
        p->idle[p->n_idle++] = conn;
        conn = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    if (conn)
        PQfinish(conn);
}

void outboxd_shop_pool_destroy(outboxd_shop_pool_t *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_idle; i++)
        PQfinish(p->idle[i]);
    pthread_mutex_destroy(&p->mu);
    free(p->dsn);
    free(p);
}

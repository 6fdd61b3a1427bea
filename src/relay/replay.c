/*
 * Replay from a slot LSN, the retention slot that makes it possible, and
 * `run --start-lsn` (see replay.h).
 */
#include "outboxd/relay/replay.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "outboxd/common/log.h"
#include "outboxd/relay/checkpoint.h"
#include "outboxd/relay/pgconn.h"
#include "outboxd/relay/pgoutput.h"
#include "outboxd/relay/repl.h"
#include "outboxd/relay/router.h"
#include "outboxd/relay/sink.h"

/* How often the retention slot is advanced, and how long to wait before
 * connecting again after its connection failed. */
#define RETENTION_ADVANCE_MS    1000
#define RETENTION_RETRY_MS      10000
#define RETENTION_LOST_CHECK_MS 30000
#define RETENTION_STEP_BYTES    (128ULL << 20) /* WAL decoded by one advance at most */
/* A replay commits its Kafka transaction at least this often. */
#define REPLAY_COMMIT_MS 1000
#define PROGRESS_LOG_MS  10000
#define MAX_TOPICS       64

/* ---- window arithmetic -------------------------------------------------- */

void outboxd_window_note(outboxd_window_ring_t *r, outboxd_lsn_t lsn, int64_t at_us,
                         int64_t step_us)
{
    if (step_us <= 0)
        step_us = 1;
    if (r->n) {
        size_t last = (r->head + r->n - 1) % OUTBOXD_WINDOW_RING;
        if (lsn <= r->e[last].lsn)
            return;
        /* Same bucket of step_us: the newer fact replaces the older one
         * (both halves of it, so the entry stays true); buckets are fixed,
         * so a steady stream of confirmations still seals one per step. */
        if (at_us / step_us == r->e[last].at_us / step_us) {
            r->e[last].lsn = lsn;
            r->e[last].at_us = at_us;
            return;
        }
    }
    if (r->n == OUTBOXD_WINDOW_RING) {
        r->head = (r->head + 1) % OUTBOXD_WINDOW_RING;
        r->n--;
    }
    size_t i = (r->head + r->n) % OUTBOXD_WINDOW_RING;
    r->e[i].lsn = lsn;
    r->e[i].at_us = at_us;
    r->n++;
}

outboxd_lsn_t outboxd_window_target(outboxd_window_ring_t *r, int64_t now_us, int64_t window_ms,
                                    uint64_t window_bytes, outboxd_lsn_t live_lsn)
{
    if (window_bytes)
        return live_lsn > window_bytes ? live_lsn - window_bytes : 0;
    int64_t cutoff = now_us - window_ms * 1000;
    if (!r->n || r->e[r->head].at_us > cutoff)
        return 0;
    /* Drop entries a newer eligible one supersedes; keep the newest
     * eligible one, it stays the answer until a later one ages in. */
    while (r->n >= 2 && r->e[(r->head + 1) % OUTBOXD_WINDOW_RING].at_us <= cutoff) {
        r->head = (r->head + 1) % OUTBOXD_WINDOW_RING;
        r->n--;
    }
    return r->e[r->head].lsn;
}

/* ---- the retention slot ---------------------------------------------------- */

/*
 * The source thread only notes confirmed positions (a mutex and a few
 * stores); a thread of its own talks to PostgreSQL, so a slow or unreachable
 * server never stalls the live stream.
 */
struct outboxd_retention {
    /* A private copy of what it needs from the source's configuration
     * (name, dsn, password, slot names, window), so a configuration
     * replaced and freed under the source cannot pull it from under the
     * thread. */
    outboxd_source_conf_t own;
    const outboxd_source_conf_t *src; /* &own */
    pthread_t thread;
    bool started;
    atomic_int stop;
    int timeout_ms;       /* one query's limit (relay.wal_receiver_timeout_ms) */
    pthread_mutex_t lock; /* guards ring, live, stats, own.password */
    outboxd_window_ring_t ring;
    outboxd_lsn_t live; /* last confirmed position of the live slot */
    outboxd_stats_t *stats;
    /* The thread's own: */
    PGconn *conn;
    int64_t next_connect_ms;
    int64_t last_warn_ms;
    outboxd_lsn_t advanced; /* where the retention slot is, as far as we know */
    bool lost;              /* invalidated by PostgreSQL: its own warning */
    int64_t lost_warn_ms;
    int64_t lost_checked_ms;
};

static void retention_warn(outboxd_retention_t *r, const char *what, const char *why)
{
    int64_t now = outboxd_now_ms();
    /* Lost: its own warning says it all, while connected (a keeper that
     * cannot connect says so). */
    if ((r->lost && r->conn) || (r->last_warn_ms && now - r->last_warn_ms < 60000))
        return;
    r->last_warn_ms = now;
    LOG_WARN(r->src->name,
             "retention slot %s: %s: %s (the replay window is not moving; it keeps more WAL "
             "until this is fixed; `outboxd check --create` re-creates a missing retention slot)",
             r->src->retention_slot, what, why);
}

static outboxd_stats_t *retention_stats(outboxd_retention_t *r)
{
    pthread_mutex_lock(&r->lock);
    outboxd_stats_t *st = r->stats;
    pthread_mutex_unlock(&r->lock);
    return st;
}

/* Runs one query on the thread's connection: the single text value, or
 * false (warned; a broken connection is dropped and retried later). Bounded
 * (a silent server would otherwise keep the window from moving, and the
 * source's stop, which joins this thread, waiting for good). */
static bool retention_query(outboxd_retention_t *r, const char *what, const char *sql, int n,
                            const char *const *params, outboxd_lsn_t *out)
{
    char err[512];
    PGresult *res = outboxd_pg_exec_bounded(r->conn, sql, n, params, NULL, r->timeout_ms, &r->stop,
                                            err, sizeof(err));
    bool ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!res) {
        if (!atomic_load(&r->stop))
            retention_warn(r, what, err);
        /* Unusable now (an answer may still come): opened again later. */
        PQfinish(r->conn);
        r->conn = NULL;
        r->next_connect_ms = outboxd_now_ms() + RETENTION_RETRY_MS;
        return false;
    } else if (!ok) {
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        retention_warn(r, what, msg ? msg : PQerrorMessage(r->conn));
    } else if (PQntuples(res) == 0) {
        retention_warn(r, what, "the slot does not exist");
        ok = false;
    } else {
        ok = outboxd_lsn_parse(PQgetvalue(res, 0, 0), out);
    }
    PQclear(res);
    if (PQstatus(r->conn) == CONNECTION_BAD) {
        PQfinish(r->conn);
        r->conn = NULL;
        r->next_connect_ms = outboxd_now_ms() + RETENTION_RETRY_MS;
    }
    return ok;
}

static bool retention_connect(outboxd_retention_t *r)
{
    char err[512];
    /* The password may be replaced by a reload (rotation) meanwhile: connect
     * with a copy of the current one. */
    pthread_mutex_lock(&r->lock);
    outboxd_source_conf_t c = r->own;
    c.password = r->own.password ? strdup(r->own.password) : NULL;
    bool oom = r->own.password && !c.password;
    pthread_mutex_unlock(&r->lock);
    if (oom) {
        retention_warn(r, "cannot connect", "out of memory");
        r->next_connect_ms = outboxd_now_ms() + RETENTION_RETRY_MS;
        return false;
    }
    r->conn = outboxd_pg_connect(&c, false, err, sizeof(err));
    if (c.password) {
        explicit_bzero(c.password, strlen(c.password));
        free(c.password);
    }
    if (!r->conn) {
        retention_warn(r, "cannot connect", err);
        r->next_connect_ms = outboxd_now_ms() + RETENTION_RETRY_MS;
        return false;
    }
    /* Where it is now, for the metric before the first advance. */
    const char *params[1] = {r->src->retention_slot};
    outboxd_lsn_t lsn;
    if (retention_query(r, "reading its position",
                        "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots "
                        "WHERE slot_name = $1",
                        1, params, &lsn)) {
        r->advanced = lsn;
        outboxd_stats_retention(retention_stats(r), lsn);
    }
    return r->conn != NULL;
}

/*
 * Whether PostgreSQL invalidated the slot (max_slot_wal_keep_size): then
 * every advance fails for good and nothing can be replayed from it. Said
 * with the fix, once a minute (re-creating it is the operator's call: it
 * gives up the window's past for good). Asked after a failed advance and
 * every RETENTION_LOST_CHECK_MS, since a window of hours attempts no
 * advance for that long.
 */
static void check_lost(outboxd_retention_t *r)
{
    r->lost_checked_ms = outboxd_now_ms();
    if (!r->conn)
        return;
    const char *params[1] = {r->src->retention_slot};
    char err[256];
    PGresult *res = outboxd_pg_exec_bounded(
        r->conn,
        "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND "
        "(restart_lsn IS NULL OR wal_status = 'lost')",
        1, params, NULL, r->timeout_ms, &r->stop, err, sizeof(err));
    if (!res) {
        PQfinish(r->conn); /* unusable now: opened again later */
        r->conn = NULL;
        r->next_connect_ms = outboxd_now_ms() + RETENTION_RETRY_MS;
        return;
    }
    /* PostgreSQL 12 has no wal_status: an error, taken as not lost. */
    r->lost = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) > 0;
    PQclear(res);
    int64_t now = outboxd_now_ms();
    if (r->lost && (!r->lost_warn_ms || now - r->lost_warn_ms >= 60000)) {
        r->lost_warn_ms = now;
        LOG_WARN(r->src->name,
                 "retention slot %s has lost required WAL: PostgreSQL invalidated it "
                 "(max_slot_wal_keep_size), so nothing before now can be replayed; drop it with "
                 "SELECT pg_drop_replication_slot('%s') and run `outboxd check --create` (or "
                 "restart the relay) to start a new window",
                 r->src->retention_slot, r->src->retention_slot);
    }
}

/* One turn of the thread: advance to the window's target if it moved. */
static void retention_turn(outboxd_retention_t *r)
{
    pthread_mutex_lock(&r->lock);
    bool any = r->live != 0;
    outboxd_lsn_t target =
        outboxd_window_target(&r->ring, outboxd_wall_us(), r->src->replay_window_ms,
                              r->src->replay_window_bytes, r->live);
    pthread_mutex_unlock(&r->lock);
    /* Connected from the first confirmation on, so the metric shows where
     * the window starts before it first moves. */
    if (!any || (!r->conn && (outboxd_now_ms() < r->next_connect_ms || !retention_connect(r))))
        return;
    if (!target || target <= r->advanced) {
        if (outboxd_now_ms() - r->lost_checked_ms >= RETENTION_LOST_CHECK_MS)
            check_lost(r);
        return;
    }
    /* The advance decodes everything up to the target, in one query that is
     * given up at the time limit: after a long silence the window may have
     * moved far, so catch up by steps (one a turn). */
    if (r->advanced && target - r->advanced > RETENTION_STEP_BYTES)
        target = r->advanced + RETENTION_STEP_BYTES;
    char t[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(target, t);
    const char *params[2] = {r->src->retention_slot, t};
    outboxd_lsn_t lsn;
    /* GREATEST: a slot cannot go back, and another process (an operator)
     * may have moved it; a missing slot gives NULL and the advance names
     * the problem. */
    if (retention_query(r, "advancing failed",
                        "SELECT end_lsn::text FROM pg_catalog.pg_replication_slot_advance($1, "
                        "GREATEST($2::pg_lsn, (SELECT confirmed_flush_lsn FROM "
                        "pg_catalog.pg_replication_slots WHERE slot_name = $1)))",
                        2, params, &lsn)) {
        r->advanced = lsn;
        r->lost = false;
        outboxd_stats_retention(retention_stats(r), lsn);
        return;
    }
    check_lost(r);
}

static void *retention_run(void *arg)
{
    outboxd_retention_t *r = arg;
    /* Not the name of the loop thread that started it. */
    pthread_setname_np(pthread_self(), "outboxd-retain");
    while (!atomic_load(&r->stop)) {
        retention_turn(r);
        for (int i = 0; i < RETENTION_ADVANCE_MS / 100 && !atomic_load(&r->stop); i++)
            usleep(100 * 1000);
    }
    return NULL;
}

static void free_own(outboxd_retention_t *r)
{
    free(r->own.name);
    free(r->own.dsn);
    if (r->own.password) {
        explicit_bzero(r->own.password, strlen(r->own.password));
        free(r->own.password);
    }
    free(r->own.slot);
    free(r->own.retention_slot);
    free(r);
}

outboxd_retention_t *outboxd_retention_new(const outboxd_source_conf_t *src, int timeout_ms)
{
    if (!src->retention_slot)
        return NULL;
    outboxd_retention_t *r = calloc(1, sizeof(*r));
    if (!r) {
        LOG_ERROR(src->name, "out of memory: the retention slot %s is not advanced",
                  src->retention_slot);
        return NULL;
    }
    r->own.name = strdup(src->name);
    r->own.dsn = strdup(src->dsn);
    r->own.password = src->password ? strdup(src->password) : NULL;
    r->own.slot = strdup(src->slot);
    r->own.retention_slot = strdup(src->retention_slot);
    r->own.replay_window_ms = src->replay_window_ms;
    r->own.replay_window_bytes = src->replay_window_bytes;
    r->src = &r->own;
    if (!r->own.name || !r->own.dsn || (src->password && !r->own.password) || !r->own.slot ||
        !r->own.retention_slot) {
        LOG_ERROR(src->name, "out of memory: the retention slot %s is not advanced",
                  src->retention_slot);
        free_own(r);
        return NULL;
    }
    atomic_init(&r->stop, 0);
    r->timeout_ms = timeout_ms;
    pthread_mutex_init(&r->lock, NULL);
    int e = pthread_create(&r->thread, NULL, retention_run, r);
    if (e) {
        LOG_ERROR(src->name, "pthread_create: %s: the retention slot %s is not advanced",
                  strerror(e), src->retention_slot);
        pthread_mutex_destroy(&r->lock);
        free_own(r);
        return NULL;
    }
    r->started = true;
    return r;
}

void outboxd_retention_set_password(outboxd_retention_t *r, const char *password)
{
    if (!r)
        return;
    char *copy = password ? strdup(password) : NULL;
    if (password && !copy) {
        LOG_ERROR(r->own.name,
                  "out of memory: the retention slot %s keeps connecting with the old password",
                  r->own.retention_slot);
        return;
    }
    pthread_mutex_lock(&r->lock);
    char *old = r->own.password;
    r->own.password = copy;
    pthread_mutex_unlock(&r->lock);
    if (old) {
        explicit_bzero(old, strlen(old));
        free(old);
    }
}

void outboxd_retention_destroy(outboxd_retention_t *r)
{
    if (!r)
        return;
    atomic_store(&r->stop, 1);
    if (r->started)
        pthread_join(r->thread, NULL);
    if (r->conn)
        PQfinish(r->conn);
    pthread_mutex_destroy(&r->lock);
    free_own(r);
}

void outboxd_retention_confirmed(outboxd_retention_t *r, outboxd_lsn_t lsn, outboxd_stats_t *st)
{
    if (!r || !lsn)
        return;
    /* The confirmation time stands in for the commit time: it is later, so
     * "confirmed a window ago" implies "committed a window ago" and the
     * slot never passes a transaction younger than the window. */
    int64_t step = r->src->replay_window_ms * 1000 / 512;
    pthread_mutex_lock(&r->lock);
    outboxd_window_note(&r->ring, lsn, outboxd_wall_us(), step < 1000000 ? 1000000 : step);
    if (lsn > r->live)
        r->live = lsn;
    r->stats = st;
    pthread_mutex_unlock(&r->lock);
}

/* ---- small helpers ---------------------------------------------------------- */

static const outboxd_source_conf_t *find_source(const outboxd_config_t *conf, const char *name)
{
    for (size_t i = 0; i < conf->n_sources; i++)
        if (strcmp(conf->sources[i].name, name) == 0)
            return &conf->sources[i];
    return NULL;
}

static void list_sources(const outboxd_config_t *conf, char *out, size_t size)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < conf->n_sources && used < size; i++)
        used +=
            (size_t)snprintf(out + used, size - used, "%s%s", i ? ", " : "", conf->sources[i].name);
}

/* One-row, one-column query on *pg; the value is copied into out. 1 found,
 * 0 no row, -1 error (errstr). Given up after timeout_ms (0: no limit, for a
 * query whose work grows with the range) or at a stop, so a silent server
 * cannot hold a replay or --start-lsn for good; the connection is then
 * closed (*pg NULL: later queries fail, cleanup reconnects), after asking
 * the server to cancel the query when it was a stop. */
static int query_value(PGconn **pg, int timeout_ms, atomic_int *stop, const char *sql, int nparams,
                       const char *const *params, char *out, size_t out_size, char *errstr,
                       size_t errstr_size)
{
    if (!*pg) {
        snprintf(errstr, errstr_size,
                 "no connection to PostgreSQL (an earlier query was given up)");
        return -1;
    }
    static const char *const no_params[1] = {NULL};
    PGresult *res = outboxd_pg_exec_bounded(*pg, sql, nparams, params ? params : no_params, NULL,
                                            timeout_ms, stop, errstr, errstr_size);
    if (!res) {
        if (stop && atomic_load(stop))
            outboxd_pg_cancel(*pg);
        PQfinish(*pg);
        *pg = NULL;
        return -1;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        snprintf(errstr, errstr_size, "%s", msg ? msg : PQerrorMessage(*pg));
        PQclear(res);
        return -1;
    }
    int found = PQntuples(res) > 0 && !PQgetisnull(res, 0, 0);
    if (found)
        snprintf(out, out_size, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return found;
}

static void window_text(const outboxd_source_conf_t *src, char *out, size_t size)
{
    if (src->replay_window_bytes)
        snprintf(out, size, "%llu bytes of WAL", (unsigned long long)src->replay_window_bytes);
    else
        snprintf(out, size, "%.0f s", (double)src->replay_window_ms / 1000.0);
}

/* FNV-1a, to name a replay's target in its checkpoint. */
static uint64_t fnv1a(const char *a, const char *b)
{
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = a; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *p = b; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return h;
}

/* ---- arguments ---------------------------------------------------------------- */

int outboxd_replay_set_option(outboxd_replay_args_t *a, const char *name, const char *value,
                              char *errstr, size_t errstr_size)
{
    if (strcmp(name, "dry-run") == 0) {
        a->dry_run = true;
        return 0;
    }
    if (!value || !*value) {
        snprintf(errstr, errstr_size, "--%s needs a value", name);
        return -1;
    }
    if (strcmp(name, "source") == 0) {
        a->source = value;
    } else if (strcmp(name, "from-lsn") == 0 || strcmp(name, "to-lsn") == 0) {
        outboxd_lsn_t lsn;
        if (!outboxd_lsn_parse(value, &lsn) || lsn == 0) {
            snprintf(errstr, errstr_size,
                     "--%s: '%.64s' is not an LSN (expected the X/Y form PostgreSQL prints, "
                     "e.g. 0/1A2B3C4, from pg_current_wal_lsn() or an event's source.lsn)",
                     name, value);
            return -1;
        }
        if (name[0] == 'f') {
            a->from_lsn = lsn;
            a->have_from = true;
        } else {
            a->to_lsn = lsn;
        }
    } else if (strcmp(name, "topic-suffix") == 0) {
        if (strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
            strlen(value)) {
            snprintf(errstr, errstr_size,
                     "--topic-suffix: '%.64s' has characters a topic name cannot have (expected "
                     "letters, digits, '.', '_', '-', e.g. .replay)",
                     value);
            return -1;
        }
        a->topic_suffix = value;
    } else if (strcmp(name, "to-topic") == 0) {
        if (strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
                strlen(value) ||
            strlen(value) > 249) {
            snprintf(errstr, errstr_size,
                     "--to-topic: '%.64s' is not a Kafka topic name (expected at most 249 "
                     "letters, digits, '.', '_', '-')",
                     value);
            return -1;
        }
        a->to_topic = value;
    } else {
        snprintf(errstr, errstr_size, "unknown replay option --%s", name);
        return -1;
    }
    return 0;
}

int outboxd_replay_check_args(const outboxd_replay_args_t *a, char *errstr, size_t errstr_size)
{
    if (!a->source) {
        snprintf(errstr, errstr_size, "replay needs --source NAME (a source of the configuration)");
        return -1;
    }
    if (!a->have_from) {
        snprintf(errstr, errstr_size,
                 "replay needs --from-lsn LSN (where to start, e.g. an event's source.lsn)");
        return -1;
    }
    if (a->to_lsn && a->to_lsn < a->from_lsn) {
        char f[OUTBOXD_LSN_STRLEN], t[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(a->from_lsn, f);
        outboxd_lsn_format(a->to_lsn, t);
        snprintf(errstr, errstr_size,
                 "--to-lsn %s is before --from-lsn %s (expected an end at or after the start)", t,
                 f);
        return -1;
    }
    if (a->to_topic && a->topic_suffix) {
        snprintf(errstr, errstr_size,
                 "--topic-suffix and --to-topic exclude each other (give one of them)");
        return -1;
    }
    return 0;
}

int outboxd_replay_parse_start_lsn(const char *arg, char *name, size_t name_size,
                                   outboxd_lsn_t *lsn, char *errstr, size_t errstr_size)
{
    const char *eq = arg ? strchr(arg, '=') : NULL;
    if (!eq || eq == arg || (size_t)(eq - arg) >= name_size || !outboxd_lsn_parse(eq + 1, lsn) ||
        *lsn == 0) {
        snprintf(errstr, errstr_size,
                 "--start-lsn: '%.100s' is not SOURCE=LSN (expected e.g. payment=0/1A2B3C4)",
                 arg ? arg : "");
        return -1;
    }
    snprintf(name, name_size, "%.*s", (int)(eq - arg), arg);
    return 0;
}

/* ---- outboxd replay ------------------------------------------------------------- */

typedef struct topic_count {
    char *topic;
    uint64_t n;
} topic_count_t;

typedef struct replay {
    const outboxd_config_t *conf;
    const outboxd_source_conf_t *src;
    outboxd_source_conf_t rsrc; /* src with the replay's name and slot */
    const outboxd_replay_args_t *a;
    atomic_int *stop;
    char rname[128];
    char rslot[80];
    char replay_id[64]; /* in the checkpoint's slot field: which replay it belongs to */
    outboxd_lsn_t from, to;
    outboxd_lsn_t window; /* where the retention slot stood: the oldest position replayable */

    PGconn *pg;
    outboxd_repl_t *repl;
    outboxd_repl_ident_t ident;
    outboxd_pgo_decoder_t *dec;
    outboxd_router_t *rt;
    outboxd_sink_t *sink;
    outboxd_checkpoint_t ck; /* last committed by this replay (resume) */

    bool in_txn, skip_txn;
    outboxd_lsn_t commit_lsn;
    uint32_t xid;
    int64_t commit_time_us;
    int64_t change_idx;
    outboxd_lsn_t change_lsn;
    int64_t change_ord;

    bool batch_open;
    int batch_events;
    int64_t batch_started_ms;
    outboxd_checkpoint_t batch_ck;
    outboxd_lsn_t confirmed; /* end LSN of the last transaction committed to Kafka */
    int64_t last_status_ms, last_progress_ms;
    int64_t last_recv_ms; /* the last message from the walsender */

    uint64_t n_events, batch_n, n_dead, n_skipped, n_txns;
    bool refused; /* Kafka refused a record for good: a rerun cannot pass it */
    topic_count_t topics[MAX_TOPICS];
    size_t n_topics;
    uint64_t other_topics;
    outboxd_buf_t topic;
    bool done;
    bool copied; /* this run created the slot copy */
    bool marker; /* a WAL record was written after the end (see replay_prepare) */
} replay_t;

static void count_topic(replay_t *rp, const char *topic)
{
    for (size_t i = 0; i < rp->n_topics; i++)
        if (strcmp(rp->topics[i].topic, topic) == 0) {
            rp->topics[i].n++;
            return;
        }
    if (rp->n_topics < MAX_TOPICS && (rp->topics[rp->n_topics].topic = strdup(topic))) {
        rp->topics[rp->n_topics++].n = 1;
        return;
    }
    rp->other_topics++;
}

static void replay_keepalive(void *opaque)
{
    replay_t *rp = opaque;
    char err[256];
    if (rp->repl && outboxd_now_ms() - rp->last_status_ms >= 1000) {
        outboxd_repl_send_status(rp->repl, rp->confirmed, false, err, sizeof(err));
        rp->last_status_ms = outboxd_now_ms();
    }
}

/* Commits the open Kafka transaction with this replay's checkpoint. 0, or
 * -1 with errstr. */
/* After an aborted transaction: true with errstr when Kafka refused one of
 * its records (or the checkpoint) for good, which a rerun would meet again
 * (at the produce call or at the commit, whichever learns it first). */
static bool refused_for_good(replay_t *rp, outboxd_lsn_t commit_lsn, char *errstr,
                             size_t errstr_size)
{
    char reason[512];
    for (int tries = 0;; tries++) {
        if (outboxd_sink_refused(rp->sink, reason, sizeof(reason), NULL) ||
            outboxd_sink_checkpoint_refused(rp->sink, reason, sizeof(reason)))
            break;
        if (tries == 1)
            return false;
        /* Learned at a produce call, the refusal's delivery reports may
         * still wait in the producers' queues: serve them once. */
        outboxd_sink_poll(rp->sink);
    }
    rp->refused = true;
    char c[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(commit_lsn, c);
    snprintf(errstr, errstr_size,
             "Kafka refused a record of the transaction committed at %s for good (%s): nothing "
             "of it is visible; make the target topic take it (its max.message.bytes, this "
             "producer's ACLs; or the checkpoint topic's) or replay into another target "
             "(--to-topic, --topic-suffix), then run again",
             c, reason);
    return true;
}

static int replay_commit(replay_t *rp, char *errstr, size_t errstr_size)
{
    if (!rp->batch_open)
        return 0;
    outboxd_checkpoint_t ck;
    if (rp->in_txn) {
        /* Mid-transaction (a huge one): the changes covered so far. */
        ck = rp->ck;
        ck.commit_lsn = rp->commit_lsn;
        ck.end_lsn = 0;
        ck.changes = rp->change_idx;
        ck.last_lsn = rp->change_idx > 0 ? rp->change_lsn : 0;
        ck.last_lsn_n = rp->change_idx > 0 ? rp->change_ord + 1 : 0;
    } else {
        ck = rp->batch_ck;
        ck.last_lsn = 0;
        ck.last_lsn_n = 0;
    }
    ck.timeline = rp->ident.timeline;
    snprintf(ck.system_id, sizeof(ck.system_id), "%s", rp->ident.system_id);
    snprintf(ck.database, sizeof(ck.database), "%s", rp->ident.database);
    snprintf(ck.slot, sizeof(ck.slot), "%s", rp->replay_id);
    char err[512];
    replay_keepalive(rp);
    outboxd_sink_status_t st = outboxd_sink_commit(rp->sink, &ck, err, sizeof(err));
    if (st != OUTBOXD_SINK_OK) {
        if (st == OUTBOXD_SINK_ABORTED && refused_for_good(rp, ck.commit_lsn, errstr, errstr_size))
            return -1;
        snprintf(errstr, errstr_size,
                 "Kafka commit failed: %s; nothing of this transaction is visible, run the same "
                 "command again to resume",
                 err);
        return -1;
    }
    rp->ck = ck;
    rp->n_events += rp->batch_n;
    rp->batch_n = 0;
    rp->batch_open = false;
    rp->batch_events = 0;
    if (ck.changes < 0)
        rp->confirmed = ck.end_lsn;
    return 0;
}

static int replay_change(replay_t *rp, const outboxd_pgo_msg_t *msg, outboxd_lsn_t wal_start,
                         char *errstr, size_t errstr_size)
{
    if (!rp->in_txn)
        return 0; /* a non-transactional message: the relay ignores those too */
    if (rp->batch_open && rp->batch_events >= rp->conf->max_batch_events &&
        replay_commit(rp, errstr, errstr_size) < 0)
        return -1;
    int64_t idx = rp->change_idx++;
    if (idx > 0 && wal_start == rp->change_lsn) {
        rp->change_ord++;
    } else {
        rp->change_lsn = wal_start;
        rp->change_ord = 0;
    }
    outboxd_change_pos_t cpos = {.index = idx, .lsn = wal_start, .lsn_ordinal = rp->change_ord};
    if (rp->skip_txn || outboxd_checkpoint_covers_change(&rp->ck, rp->commit_lsn, &cpos)) {
        rp->n_skipped++;
        return 0;
    }
    outboxd_change_ctx_t ctx = {
        .lsn = wal_start,
        .commit_lsn = rp->commit_lsn,
        .xid = rp->xid,
        .commit_time_us = rp->commit_time_us,
        .change_index = idx,
    };
    outboxd_record_t rec;
    char err[512];
    int r = outboxd_router_route(rp->rt, msg, &ctx, &rec, err, sizeof(err));
    if (r < 0) {
        snprintf(errstr, errstr_size, "%s", err);
        return -1;
    }
    if (r == OUTBOXD_ROUTE_IGNORE)
        return 0;
    if (r == OUTBOXD_ROUTE_DEAD_LETTER) {
        /* It went to the dead-letter topic when it was relayed; the
         * dead-letter topic is not a replay target. */
        rp->n_dead++;
        return 0;
    }
    outboxd_buf_reset(&rp->topic);
    if (!(rp->a->to_topic
              ? outboxd_buf_printf(&rp->topic, "%s", rp->a->to_topic)
              : outboxd_buf_printf(&rp->topic, "%s%s", rec.topic,
                                   rp->a->topic_suffix ? rp->a->topic_suffix : ".replay"))) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    if (strcmp(rp->topic.data, rp->conf->checkpoint_topic) == 0 ||
        strcmp(rp->topic.data, rp->conf->dead_letter_topic) == 0) {
        /* Only a suffix gets here (--to-topic is checked at the start): an
         * event topic plus the suffix would be the relay's own topic. */
        bool ck = strcmp(rp->topic.data, rp->conf->checkpoint_topic) == 0;
        snprintf(errstr, errstr_size,
                 "--topic-suffix: the event of topic %s would be replayed into %s, the relay's %s "
                 "topic (relay.%s): choose another suffix or --to-topic",
                 rec.topic, rp->topic.data, ck ? "checkpoint" : "dead-letter",
                 ck ? "checkpoint_topic" : "dead_letter_topic");
        rp->refused = true;
        return -1;
    }
    count_topic(rp, rp->topic.data);
    if (rp->a->dry_run) {
        rp->n_events++;
        return 0;
    }
    char lsn[OUTBOXD_LSN_STRLEN], clsn[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(wal_start, lsn);
    outboxd_lsn_format(rp->commit_lsn, clsn);
    if (rec.n_headers + 3 > OUTBOXD_MAX_HEADERS) {
        snprintf(errstr, errstr_size,
                 "the event at %s has %zu headers, too many to add the 3 replay headers (at most "
                 "%d in all): configure fewer header columns",
                 lsn, rec.n_headers, OUTBOXD_MAX_HEADERS);
        return -1;
    }
    rec.headers[rec.n_headers++] = (outboxd_header_t){"outboxd.replay", "true", 4};
    rec.headers[rec.n_headers++] = (outboxd_header_t){"outboxd.replay.lsn", lsn, strlen(lsn)};
    rec.headers[rec.n_headers++] =
        (outboxd_header_t){"outboxd.replay.commit_lsn", clsn, strlen(clsn)};
    rec.topic = rp->topic.data;
    outboxd_sink_status_t st = outboxd_sink_produce(rp->sink, &rec, err, sizeof(err));
    if (st == OUTBOXD_SINK_MISSING_TOPIC) {
        snprintf(errstr, errstr_size,
                 "replay target topic '%s' does not exist: create it (kafka-topics.sh --create "
                 "--topic %s ...) or set relay.missing_topic: create, then run the same command "
                 "again (it resumes)",
                 rec.topic, rec.topic);
        return -1;
    }
    if (st != OUTBOXD_SINK_OK) {
        if (st == OUTBOXD_SINK_ABORTED && refused_for_good(rp, rp->commit_lsn, errstr, errstr_size))
            return -1;
        snprintf(errstr, errstr_size, "producing to %s: %s; run the same command again to resume",
                 rec.topic, err);
        return -1;
    }
    if (!rp->batch_open) {
        rp->batch_open = true;
        rp->batch_started_ms = outboxd_now_ms();
    }
    rp->batch_events++;
    rp->batch_n++;
    return 0;
}

static int replay_data(replay_t *rp, const outboxd_repl_msg_t *m, char *errstr, size_t errstr_size)
{
    outboxd_pgo_msg_t msg;
    if (outboxd_pgo_decode(rp->dec, m->data, m->len, &msg, errstr, errstr_size) < 0)
        return -1;
    switch (msg.kind) {
    case OUTBOXD_PGO_BEGIN:
        if (msg.u.begin.final_lsn > rp->to) {
            rp->done = true; /* committed after the end of the range */
            return 0;
        }
        rp->in_txn = true;
        rp->commit_lsn = msg.u.begin.final_lsn;
        rp->xid = msg.u.begin.xid;
        rp->commit_time_us = msg.u.begin.commit_ts + OUTBOXD_PG_EPOCH_OFFSET_US;
        rp->change_idx = 0;
        rp->change_lsn = 0;
        rp->change_ord = 0;
        rp->skip_txn =
            rp->commit_lsn < rp->from || outboxd_checkpoint_covers(&rp->ck, rp->commit_lsn, -1);
        rp->n_txns++;
        return 0;
    case OUTBOXD_PGO_COMMIT:
        rp->in_txn = false;
        if (rp->batch_open) {
            rp->batch_ck.commit_lsn = rp->commit_lsn;
            rp->batch_ck.end_lsn = msg.u.commit.end_lsn;
            rp->batch_ck.changes = -1;
            if (rp->batch_events >= rp->conf->max_batch_events ||
                outboxd_now_ms() - rp->batch_started_ms >= REPLAY_COMMIT_MS)
                return replay_commit(rp, errstr, errstr_size);
        } else {
            rp->confirmed = msg.u.commit.end_lsn;
        }
        /* The next commit record starts at or after this one's end. */
        if (msg.u.commit.end_lsn > rp->to)
            rp->done = true;
        return 0;
    case OUTBOXD_PGO_INSERT:
    case OUTBOXD_PGO_UPDATE:
    case OUTBOXD_PGO_DELETE:
    case OUTBOXD_PGO_TRUNCATE:
    case OUTBOXD_PGO_MESSAGE:
        return replay_change(rp, &msg, m->wal_start, errstr, errstr_size);
    case OUTBOXD_PGO_RELATION:
        outboxd_router_forget(rp->rt, msg.u.relation->oid);
        return 0;
    default:
        return 0;
    }
}

/* Streams the copy until the range is done or a stop. 0, or -1 (errstr). */
static int replay_stream(replay_t *rp, char *errstr, size_t errstr_size)
{
    char err[512];
    rp->last_progress_ms = rp->last_recv_ms = outboxd_now_ms();
    while (!rp->done) {
        if (atomic_load(rp->stop) && !rp->in_txn) {
            /* What is in hand is committed first (README: a stop commits
             * what it holds), so a rerun has less to do. */
            if (rp->batch_open && replay_commit(rp, errstr, errstr_size) < 0)
                return -1;
            snprintf(errstr, errstr_size,
                     "interrupted; what was committed stays, run the same command again to "
                     "resume");
            return -1;
        }
        outboxd_repl_msg_t m;
        if (outboxd_repl_next(rp->repl, &m, err, sizeof(err)) < 0) {
            snprintf(errstr, errstr_size, "replication stream: %s; run the same command again",
                     err);
            return -1;
        }
        int64_t now = outboxd_now_ms();
        if (m.kind != OUTBOXD_REPL_NONE)
            rp->last_recv_ms = now;
        switch (m.kind) {
        case OUTBOXD_REPL_DATA:
            if (replay_data(rp, &m, errstr, errstr_size) < 0)
                return -1;
            break;
        case OUTBOXD_REPL_KEEPALIVE:
            /* In logical replication the keepalive's position is how far
             * the walsender has decoded: past the end, nothing more in the
             * range can come. */
            /* Strictly past: a commit record may start exactly at the end
             * (the marker written after the end makes the position move
             * past it; without it, at the end is taken as past). */
            if (!rp->in_txn && (m.wal_end > rp->to || (!rp->marker && m.wal_end >= rp->to)))
                rp->done = true;
            if (m.reply_requested)
                replay_keepalive(rp);
            break;
        case OUTBOXD_REPL_NONE: {
            if (rp->batch_open && !rp->in_txn && replay_commit(rp, errstr, errstr_size) < 0)
                return -1;
            if (now - rp->last_status_ms >= 1000) {
                /* reply requested: the keepalive answer says how far decoding got */
                outboxd_repl_send_status(rp->repl, rp->confirmed, true, err, sizeof(err));
                rp->last_status_ms = now;
            }
            /* Every status update above asks for a reply, so silence
             * for relay.wal_receiver_timeout_ms means a dead connection
             * (half-open path, frozen server), as in the relay. */
            int timeout = rp->conf->wal_receiver_timeout_ms;
            if (timeout > 0 && now - rp->last_recv_ms >= timeout) {
                snprintf(errstr, errstr_size,
                         "no message from PostgreSQL for %lld ms (relay.wal_receiver_timeout_ms "
                         "= %d): the connection is presumed dead; what was committed stays, run "
                         "the same command again to resume",
                         (long long)(now - rp->last_recv_ms), timeout);
                return -1;
            }
            struct pollfd pfd = {.fd = outboxd_repl_fd(rp->repl), .events = POLLIN};
            if (poll(&pfd, 1, 100) < 0 && errno != EINTR) {
                snprintf(errstr, errstr_size, "poll: %s", strerror(errno));
                return -1;
            }
            if (rp->sink)
                outboxd_sink_poll(rp->sink);
            break;
        }
        }
        if (now - rp->last_progress_ms >= PROGRESS_LOG_MS) {
            char c[OUTBOXD_LSN_STRLEN], t[OUTBOXD_LSN_STRLEN];
            outboxd_lsn_format(rp->commit_lsn, c);
            outboxd_lsn_format(rp->to, t);
            LOG_INFO(rp->rname, "replaying: %llu events so far, at commit %s of %s",
                     (unsigned long long)(rp->n_events + rp->batch_n), c, t);
            rp->last_progress_ms = now;
        }
    }
    if (rp->batch_open && replay_commit(rp, errstr, errstr_size) < 0)
        return -1;
    return 0;
}

/* Drops the replay's slot copy; the walsender may need a moment to let go. */
static void drop_copy(replay_t *rp)
{
    const char *params[1] = {rp->rslot};
    char err[512], v[8];
    if (!rp->pg) /* given up mid-query: a connection of its own */
        rp->pg = outboxd_pg_connect(rp->src, false, err, sizeof(err));
    if (!rp->pg) {
        LOG_WARN(rp->rname,
                 "could not drop replay slot %s: %s; it holds WAL until dropped: SELECT "
                 "pg_drop_replication_slot('%s')",
                 rp->rslot, err, rp->rslot);
        return;
    }
    for (int i = 0; i < 50; i++) {
        /* No stop: it runs after one, to clean up. */
        int rc = query_value(&rp->pg, rp->conf->wal_receiver_timeout_ms, NULL,
                             "SELECT pg_catalog.pg_drop_replication_slot(slot_name)::text FROM "
                             "pg_catalog.pg_replication_slots WHERE slot_name = $1",
                             1, params, v, sizeof(v), err, sizeof(err));
        if (rc >= 0)
            return;
        if (!strstr(err, "is active"))
            break;
        usleep(100 * 1000);
    }
    LOG_WARN(rp->rname,
             "could not drop replay slot %s: %s; it holds WAL until dropped: SELECT "
             "pg_drop_replication_slot('%s')",
             rp->rslot, err, rp->rslot);
}

static void print_report(replay_t *rp, FILE *out)
{
    char f[OUTBOXD_LSN_STRLEN], t[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(rp->from, f);
    outboxd_lsn_format(rp->to, t);
    fprintf(out, "%s %llu event(s) of source %s committed in [%s, %s]%s\n",
            rp->a->dry_run ? "would replay" : "replayed", (unsigned long long)rp->n_events,
            rp->src->name, f, t, rp->a->dry_run ? " (dry run: nothing published)" : "");
    for (size_t i = 0; i < rp->n_topics; i++)
        fprintf(out, "  topic %s: %llu\n", rp->topics[i].topic,
                (unsigned long long)rp->topics[i].n);
    if (rp->other_topics)
        fprintf(out, "  %llu more in other topics\n", (unsigned long long)rp->other_topics);
    if (rp->n_skipped)
        fprintf(out, "  %llu change(s) skipped: an earlier run of this replay published them\n",
                (unsigned long long)rp->n_skipped);
    if (rp->n_dead)
        fprintf(out,
                "  %llu change(s) not replayed: they route to the dead-letter topic (%s), "
                "which is not a replay target\n",
                (unsigned long long)rp->n_dead, rp->conf->dead_letter_topic);
}

/* Checks the request against the server and sets rp->to. 0, 2 (refused),
 * or 1 (errstr). */
static int replay_prepare(replay_t *rp, char *errstr, size_t errstr_size)
{
    const outboxd_source_conf_t *src = rp->src;
    char err[512], w[OUTBOXD_LSN_STRLEN + 8], cur[OUTBOXD_LSN_STRLEN + 8];
    rp->pg = outboxd_pg_connect(src, false, err, sizeof(err));
    if (!rp->pg) {
        snprintf(errstr, errstr_size, "source %s: cannot connect to PostgreSQL: %s", src->name,
                 err);
        return 1;
    }
    const char *p1[1] = {src->retention_slot};
    /* 'lost' for a slot PostgreSQL invalidated (max_slot_wal_keep_size; the
     * column is 13+, and such a slot cannot be copied). */
    int rc = query_value(
        &rp->pg, rp->conf->wal_receiver_timeout_ms, rp->stop,
        PQserverVersion(rp->pg) >= 130000
            ? "SELECT CASE WHEN wal_status = 'lost' OR restart_lsn IS NULL THEN 'lost' ELSE "
              "confirmed_flush_lsn::text END FROM pg_catalog.pg_replication_slots "
              "WHERE slot_name = $1"
            : "SELECT confirmed_flush_lsn::text FROM "
              "pg_catalog.pg_replication_slots WHERE slot_name = $1",
        1, p1, w, sizeof(w), err, sizeof(err));
    if (rc < 0) {
        snprintf(errstr, errstr_size, "source %s: %s", src->name, err);
        return 1;
    }
    if (rc == 0) {
        snprintf(
            errstr, errstr_size,
            "source %s: retention slot %s does not exist: run `outboxd check --create -c FILE` (or "
            "start the relay) to create it; replay then covers events committed after it "
            "was created",
            src->name, src->retention_slot);
        return 2;
    }
    if (strcmp(w, "lost") == 0) {
        snprintf(errstr, errstr_size,
                 "source %s: retention slot %s has lost required WAL (wal_status lost: "
                 "max_slot_wal_keep_size removed it), so nothing can be replayed from it: drop "
                 "it with SELECT pg_drop_replication_slot('%s') and run `outboxd check --create "
                 "-c FILE` (or restart the relay) to create it anew; replay then covers events "
                 "committed after that",
                 src->name, src->retention_slot, src->retention_slot);
        return 2;
    }
    /* Checked against the window once it is known where this replay starts
     * (window_refused): a rerun resumes after its checkpoint, which may
     * still be inside the window when --from-lsn no longer is. */
    outboxd_lsn_parse(w, &rp->window);
    char f[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(rp->from, f);
    if (query_value(&rp->pg, rp->conf->wal_receiver_timeout_ms, rp->stop,
                    "SELECT pg_catalog.pg_current_wal_lsn()::text", 0, NULL, cur, sizeof(cur), err,
                    sizeof(err)) <= 0) {
        snprintf(errstr, errstr_size, "source %s: %s", src->name, err);
        return 1;
    }
    outboxd_lsn_t wal_end;
    outboxd_lsn_parse(cur, &wal_end);
    if (rp->from > wal_end) {
        snprintf(errstr, errstr_size,
                 "source %s: --from-lsn %s is after the server's WAL end %s (expected a position "
                 "already written)",
                 src->name, f, cur);
        return 2;
    }
    rp->to = rp->a->to_lsn ? rp->a->to_lsn : wal_end;
    if (rp->to > wal_end)
        rp->to = wal_end; /* nothing later exists yet */
    if (rp->to < rp->from) {
        char t[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(rp->to, t);
        snprintf(errstr, errstr_size,
                 "source %s: --to-lsn %s is before --from-lsn %s (expected an end at or after the "
                 "start)",
                 src->name, t, f);
        return 2;
    }
    /* A WAL record after the end, so the walsender's position passes it
     * even on an idle server (best effort: a role without the right to
     * call it just waits for the next write). */
    char mark[OUTBOXD_LSN_STRLEN + 8];
    rc = query_value(&rp->pg, rp->conf->wal_receiver_timeout_ms, rp->stop,
                     "SELECT pg_catalog.pg_logical_emit_message(false, 'outboxd.replay', '')::text",
                     0, NULL, mark, sizeof(mark), err, sizeof(err));
    rp->marker = rc > 0;
    if (!rp->pg) {
        snprintf(errstr, errstr_size, "source %s: %s", src->name, err);
        return 1;
    }
    if (!rp->marker)
        LOG_DEBUG(rp->rname, "no end marker (%s): the end is taken when decoding reaches it", err);

    /* Two replays of one source started at the same moment could both find
     * the copy unused below (and one drop the other's): a session advisory
     * lock, held until this replay's connection closes (a crash releases
     * it), decides first. */
    const char *p2[1] = {rp->rslot};
    char got[8];
    /* A replay just killed: its backend ends (and lets go) within moments;
     * wait for that (bounded) rather than call it a running one. */
    for (int i = 0; i < 100; i++) {
        rc = query_value(&rp->pg, rp->conf->wal_receiver_timeout_ms, rp->stop,
                         "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('outboxd "
                         "replay'), pg_catalog.hashtext($1))::text",
                         1, p2, got, sizeof(got), err, sizeof(err));
        if (rc <= 0 || strcmp(got, "true") == 0 || atomic_load(rp->stop))
            break;
        usleep(100 * 1000);
    }
    if (rc <= 0) {
        snprintf(errstr, errstr_size, "source %s: %s", src->name,
                 rc < 0 ? err : "no answer to pg_try_advisory_lock");
        return 1;
    }
    if (strcmp(got, "true") != 0) {
        snprintf(errstr, errstr_size,
                 "source %s: another replay is running (it holds the replay lock of slot %s); "
                 "wait for it to finish",
                 src->name, rp->rslot);
        return 2;
    }
    /* A copy left over by a replay that crashed is dropped; one in use
     * means another replay of this source runs now. */
    char pid[32];
    /* A replay just killed: its walsender notices the closed socket within
     * moments; wait for that (bounded) rather than call it a running one. */
    for (int i = 0; i < 100; i++) {
        rc = query_value(&rp->pg, rp->conf->wal_receiver_timeout_ms, rp->stop,
                         "SELECT coalesce(active_pid::text, '0') FROM "
                         "pg_catalog.pg_replication_slots WHERE slot_name = $1",
                         1, p2, pid, sizeof(pid), err, sizeof(err));
        if (rc <= 0 || strcmp(pid, "0") == 0)
            break;
        usleep(100 * 1000);
    }
    if (rc < 0) {
        snprintf(errstr, errstr_size, "source %s: %s", src->name, err);
        return 1;
    }
    if (rc > 0 && strcmp(pid, "0") != 0) {
        snprintf(errstr, errstr_size,
                 "source %s: another replay is running (slot %s is streamed by PID %s); wait for "
                 "it to finish",
                 src->name, rp->rslot, pid);
        return 2;
    }
    if (rc > 0) {
        LOG_WARN(rp->rname, "dropping replay slot %s left over by an interrupted replay",
                 rp->rslot);
        drop_copy(rp);
    }
    return 0;
}

/* The first position this run must still decode: --from-lsn, or past what
 * an earlier run of the same replay committed (its whole transaction, or
 * the start of one it committed in part). */
static outboxd_lsn_t replay_needs(const replay_t *rp)
{
    outboxd_lsn_t need = rp->from;
    if (rp->ck.commit_lsn) {
        outboxd_lsn_t r = rp->ck.changes < 0 && rp->ck.end_lsn ? rp->ck.end_lsn : rp->ck.commit_lsn;
        if (r > need)
            need = r;
    }
    return need;
}

/* 2 with errstr when what this run needs is no longer in the window (the
 * retention slot stood at window, or the copy at it, after that). */
static int window_refused(replay_t *rp, outboxd_lsn_t window, char *errstr, size_t errstr_size)
{
    outboxd_lsn_t need = replay_needs(rp);
    if (need >= window)
        return 0;
    char f[OUTBOXD_LSN_STRLEN], w[OUTBOXD_LSN_STRLEN], n[OUTBOXD_LSN_STRLEN], win[64];
    outboxd_lsn_format(rp->from, f);
    outboxd_lsn_format(window, w);
    outboxd_lsn_format(need, n);
    window_text(rp->src, win, sizeof(win));
    if (need == rp->from)
        snprintf(errstr, errstr_size,
                 "source %s: --from-lsn %s is before the replay window, which starts at %s "
                 "(retention slot %s, replay_window %s); events committed before %s cannot be "
                 "replayed: use --from-lsn %s or later",
                 rp->src->name, f, w, rp->src->retention_slot, win, w, w);
    else
        snprintf(errstr, errstr_size,
                 "source %s: this replay (--from-lsn %s) would resume at %s, after what an "
                 "earlier run of it committed, but the replay window now starts at %s "
                 "(retention slot %s, replay_window %s): the events committed in [%s, %s) can "
                 "no longer be read; --from-lsn %s starts another replay, whose target gets "
                 "again what this one published",
                 rp->src->name, f, n, w, rp->src->retention_slot, win, n, w, w);
    return 2;
}

/* Copies the retention slot and advances the copy to at. 0, 2, or 1. */
static int replay_copy(replay_t *rp, outboxd_lsn_t at, char *errstr, size_t errstr_size)
{
    char err[512], v[OUTBOXD_LSN_STRLEN + 8], a[OUTBOXD_LSN_STRLEN];
    const char *p[2] = {rp->src->retention_slot, rp->rslot};
    /* Before: a copy query given up may still have made the copy (the drop
     * takes a missing slot in its stride). */
    rp->copied = true;
    if (query_value(&rp->pg, rp->conf->wal_receiver_timeout_ms, rp->stop,
                    "SELECT lsn::text FROM pg_catalog.pg_copy_logical_replication_slot($1, $2)", 2,
                    p, v, sizeof(v), err, sizeof(err)) < 0) {
        snprintf(errstr, errstr_size, "source %s: copying retention slot %s: %s", rp->src->name,
                 rp->src->retention_slot, err);
        return 1;
    }
    /* The relay may have advanced the retention slot since it was looked
     * at: the copy is the truth. */
    const char *p1[1] = {rp->rslot};
    if (query_value(&rp->pg, rp->conf->wal_receiver_timeout_ms, rp->stop,
                    "SELECT confirmed_flush_lsn::text FROM pg_catalog.pg_replication_slots WHERE "
                    "slot_name = $1",
                    1, p1, v, sizeof(v), err, sizeof(err)) <= 0) {
        snprintf(errstr, errstr_size, "source %s: reading replay slot %s: %s", rp->src->name,
                 rp->rslot, err);
        return 1;
    }
    outboxd_lsn_t copied;
    outboxd_lsn_parse(v, &copied);
    /* The relay may just have advanced the retention slot. */
    int rc = window_refused(rp, copied, errstr, errstr_size);
    if (rc)
        return rc;
    if (copied > at)
        at = copied; /* a slot cannot go back; nothing needed lies before */
    outboxd_lsn_format(at, a);
    const char *p3[2] = {rp->rslot, a};
    /* Decodes up to at: no time limit, a stop ends it. */
    if (query_value(&rp->pg, 0, rp->stop,
                    "SELECT end_lsn::text FROM pg_catalog.pg_replication_slot_advance($1, "
                    "$2::pg_lsn)",
                    2, p3, v, sizeof(v), err, sizeof(err)) < 0) {
        snprintf(errstr, errstr_size, "source %s: advancing replay slot %s to %s: %s",
                 rp->src->name, rp->rslot, a, err);
        return 1;
    }
    return 0;
}

/* The Kafka side: fence an earlier run, read where it got. 0 or 1. */
static int replay_open_kafka(replay_t *rp, char *errstr, size_t errstr_size)
{
    char err[1024];
    rp->sink =
        outboxd_sink_new(rp->conf, &rp->rsrc, replay_keepalive, rp, rp->stop, err, sizeof(err));
    if (!rp->sink) {
        snprintf(errstr, errstr_size, "%s", err);
        return 1;
    }
    /* Keyed by this replay (range start and target), not only by source:
     * another replay of the source must not overwrite where this one got
     * (its rerun would then start over and publish again what it had). The
     * transactional.id stays the source's replay id, so any replay fences
     * what an interrupted one left open. */
    char key[300];
    snprintf(key, sizeof(key), "%s.%016llx", rp->rname,
             (unsigned long long)fnv1a("replay", rp->replay_id));
    outboxd_sink_set_checkpoint_key(rp->sink, key);
    outboxd_checkpoint_t ck;
    outboxd_sink_status_t st = outboxd_sink_init(rp->sink, &ck, err, sizeof(err));
    if (st != OUTBOXD_SINK_OK) {
        snprintf(errstr, errstr_size, "Kafka not ready: %s", err);
        return 1;
    }
    /* Older builds wrote every replay of a source under <source>.replay:
     * one of this very replay there (interrupted by an older outboxd) is
     * still where it got. */
    if (!ck.commit_lsn || strcmp(ck.slot, rp->replay_id) != 0) {
        outboxd_checkpoint_t old;
        if (outboxd_sink_read_checkpoint_key(rp->sink, rp->rname, &old, err, sizeof(err)) ==
                OUTBOXD_SINK_OK &&
            old.commit_lsn && strcmp(old.slot, rp->replay_id) == 0)
            ck = old;
    }
    /* Only a checkpoint of this very replay (same start and target, same
     * server history) says what is already in the target. */
    if (ck.commit_lsn && strcmp(ck.slot, rp->replay_id) == 0) {
        char c[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(ck.commit_lsn, c);
        LOG_INFO(rp->rname,
                 "resuming: an earlier run of this replay committed up to commit %s%s; what it "
                 "published is skipped",
                 c, ck.changes >= 0 ? " (part of a large transaction)" : "");
        rp->ck = ck;
    }
    return 0;
}

int outboxd_replay_run(const outboxd_config_t *conf, const outboxd_replay_args_t *a,
                       atomic_int *stop, FILE *out, char *errstr, size_t errstr_size)
{
    const outboxd_source_conf_t *src = find_source(conf, a->source);
    if (!src) {
        char names[512];
        list_sources(conf, names, sizeof(names));
        snprintf(errstr, errstr_size,
                 "unknown source '%s' (expected one of the configuration's sources: %s)", a->source,
                 names);
        return 2;
    }
    if (!src->retention_slot) {
        snprintf(
            errstr, errstr_size,
            "source %s has no retention slot, so there is nothing to replay from: set "
            "replay_window (e.g. replay_window: 1h) under the source or under relay:, then "
            "run `outboxd check --create` or restart the relay to create the slot; only events "
            "committed after that can be replayed",
            src->name);
        return 2;
    }
    if (a->to_topic && (strcmp(a->to_topic, conf->checkpoint_topic) == 0 ||
                        strcmp(a->to_topic, conf->dead_letter_topic) == 0)) {
        snprintf(errstr, errstr_size,
                 "--to-topic %s is the relay's %s topic (relay.%s): expected a topic of its own "
                 "for the replayed events",
                 a->to_topic,
                 strcmp(a->to_topic, conf->checkpoint_topic) == 0 ? "checkpoint" : "dead-letter",
                 strcmp(a->to_topic, conf->checkpoint_topic) == 0 ? "checkpoint_topic"
                                                                  : "dead_letter_topic");
        return 2;
    }
    for (size_t i = 0; i < src->n_tables; i++)
        if (src->tables[i].mode == OUTBOXD_MODE_CDC)
            LOG_WARN(src->name,
                     "replay: table %s.%s is in cdc mode, whose change events replay does "
                     "not re-publish (only outbox tables and messages are replayed)",
                     src->tables[i].schema, src->tables[i].name);
    replay_t *rp = calloc(1, sizeof(*rp));
    if (!rp) {
        snprintf(errstr, errstr_size, "out of memory");
        return 1;
    }
    rp->conf = conf;
    rp->src = src;
    rp->a = a;
    rp->stop = stop;
    rp->from = a->from_lsn;
    snprintf(rp->rname, sizeof(rp->rname), "%s.replay", src->name);
    snprintf(rp->rslot, sizeof(rp->rslot), "%s%s", src->slot, OUTBOXD_REPLAY_SUFFIX);
    rp->rsrc = *src;
    rp->rsrc.name = rp->rname;
    rp->rsrc.slot = rp->rslot;
    char f[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(a->from_lsn, f);
    snprintf(rp->replay_id, sizeof(rp->replay_id), "replay %s %016llx", f,
             (unsigned long long)fnv1a(a->to_topic ? "to-topic" : "suffix",
                                       a->to_topic       ? a->to_topic
                                       : a->topic_suffix ? a->topic_suffix
                                                         : ".replay"));
    int rc = replay_prepare(rp, errstr, errstr_size);
    char err[1024];
    if (rc == 0 && !a->dry_run)
        rc = replay_open_kafka(rp, errstr, errstr_size);
    if (rc == 0)
        rc = window_refused(rp, rp->window, errstr, errstr_size);
    if (rc == 0) {
        /* A resumed replay starts at its checkpoint's transaction. */
        outboxd_lsn_t at = rp->ck.commit_lsn > rp->from ? rp->ck.commit_lsn : rp->from;
        char atl[OUTBOXD_LSN_STRLEN], t[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(at, atl);
        outboxd_lsn_format(rp->to, t);
        LOG_INFO(
            rp->rname, "%s events committed in [%s, %s] of source %s from slot %s (a copy of %s)",
            a->dry_run ? "counting" : "replaying", f, t, src->name, rp->rslot, src->retention_slot);
        rc = replay_copy(rp, at, errstr, errstr_size);
    }
    if (rc == 0) {
        rp->repl = outboxd_repl_connect(&rp->rsrc, conf->wal_receiver_timeout_ms, stop, &rp->ident,
                                        NULL, err, sizeof(err));
        rp->dec = outboxd_pgo_decoder_new();
        if (!rp->repl || !rp->dec ||
            !(rp->rt = outboxd_router_new(conf, src, rp->ident.database, err, sizeof(err))) ||
            outboxd_repl_stream(rp->repl, &rp->rsrc, 0, err, sizeof(err)) < 0) {
            snprintf(errstr, errstr_size, "source %s: %s", src->name,
                     rp->dec ? err : "out of memory");
            rc = 1;
        }
    }
    if (rc == 0 && rp->ck.commit_lsn && rp->ck.system_id[0] &&
        (strcmp(rp->ck.system_id, rp->ident.system_id) != 0 ||
         rp->ck.timeline != rp->ident.timeline)) {
        snprintf(errstr, errstr_size,
                 "source %s: the checkpoint of an earlier run of this replay was written on "
                 "another server or timeline (system %s timeline %u, now %s timeline %u): its "
                 "LSNs name other transactions; replay into another target (--to-topic or "
                 "--topic-suffix)",
                 src->name, rp->ck.system_id, rp->ck.timeline, rp->ident.system_id,
                 rp->ident.timeline);
        rc = 2;
    }
    if (rc == 0 && replay_stream(rp, errstr, errstr_size) < 0)
        rc = rp->refused ? 2 : 1;
    outboxd_repl_destroy(rp->repl);
    rp->repl = NULL;
    if (rc != 0 && rp->sink && outboxd_sink_in_txn(rp->sink))
        outboxd_sink_abort(rp->sink, err, sizeof(err));
    if (rp->copied)
        drop_copy(rp);
    if (rc == 0)
        print_report(rp, out);
    else if (rc == 1 && (rp->n_events || rp->n_skipped))
        print_report(rp, out);
    outboxd_sink_destroy(rp->sink);
    outboxd_router_destroy(rp->rt);
    outboxd_pgo_decoder_destroy(rp->dec);
    if (rp->pg)
        PQfinish(rp->pg);
    for (size_t i = 0; i < rp->n_topics; i++)
        free(rp->topics[i].topic);
    outboxd_buf_free(&rp->topic);
    free(rp);
    return rc;
}

/* ---- outboxd run --start-lsn ------------------------------------------------ */

int outboxd_replay_skip_to(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                           outboxd_lsn_t lsn, atomic_int *stop, char *errstr, size_t errstr_size)
{
    char err[1024], l[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(lsn, l);
    PGconn *pg = outboxd_pg_connect(src, false, err, sizeof(err));
    if (!pg) {
        snprintf(errstr, errstr_size, "--start-lsn %s=%s: cannot connect: %s", src->name, l, err);
        return -1;
    }
    int rc = -1;
    outboxd_repl_t *repl = NULL;
    outboxd_sink_t *sink = NULL;
    const char *p1[1] = {src->slot};
    PGresult *res = outboxd_pg_query_bounded(
        pg,
        "SELECT coalesce(active_pid, 0)::text, coalesce(confirmed_flush_lsn::text, ''), "
        "pg_catalog.pg_current_wal_lsn()::text "
        "FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
        1, p1, NULL, conf->wal_receiver_timeout_ms, stop, err, sizeof(err));
    if (!res) {
        snprintf(errstr, errstr_size, "--start-lsn %s=%s: reading slot %s: %s", src->name, l,
                 src->slot, err);
        goto out;
    }
    if (PQntuples(res) != 1) {
        snprintf(
            errstr, errstr_size,
            "--start-lsn %s=%s: slot %s does not exist; run `outboxd check --create -c FILE` first",
            src->name, l, src->slot);
        rc = -2; /* refused */
        goto out;
    }
    char slot_pos[OUTBOXD_LSN_STRLEN + 8], wal[OUTBOXD_LSN_STRLEN + 8];
    snprintf(slot_pos, sizeof(slot_pos), "%s", PQgetvalue(res, 0, 1));
    snprintf(wal, sizeof(wal), "%s", PQgetvalue(res, 0, 2));
    if (strcmp(PQgetvalue(res, 0, 0), "0") != 0) {
        snprintf(errstr, errstr_size,
                 "--start-lsn %s=%s: slot %s is in use by PID %s (another relay?): stop it first",
                 src->name, l, src->slot, PQgetvalue(res, 0, 0));
        rc = -2; /* refused */
        goto out;
    }
    outboxd_lsn_t from = 0, wal_end = 0;
    outboxd_lsn_parse(slot_pos, &from);
    outboxd_lsn_parse(wal, &wal_end);
    if (lsn > wal_end) {
        snprintf(errstr, errstr_size,
                 "--start-lsn %s=%s is after the server's WAL end %s (expected a position "
                 "already written)",
                 src->name, l, wal);
        rc = -2; /* refused */
        goto out;
    }
    outboxd_repl_ident_t ident;
    repl = outboxd_repl_connect(src, conf->wal_receiver_timeout_ms, stop, &ident, NULL, err,
                                sizeof(err));
    if (!repl) {
        snprintf(errstr, errstr_size, "--start-lsn %s=%s: %s", src->name, l, err);
        goto out;
    }
    sink = outboxd_sink_new(conf, src, NULL, NULL, stop, err, sizeof(err));
    outboxd_checkpoint_t ck;
    if (!sink || outboxd_sink_init(sink, &ck, err, sizeof(err)) != OUTBOXD_SINK_OK) {
        snprintf(errstr, errstr_size, "--start-lsn %s=%s: Kafka: %s", src->name, l, err);
        goto out;
    }
    outboxd_lsn_t upto = ck.end_lsn ? ck.end_lsn : ck.commit_lsn;
    if (upto > lsn) {
        char u[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(upto, u);
        snprintf(errstr, errstr_size,
                 "--start-lsn %s=%s is behind the last checkpoint, which published up to %s: "
                 "refused (it would publish events again; to do that on purpose use `outboxd "
                 "replay`)",
                 src->name, l, u);
        rc = -2; /* refused */
        goto out;
    }
    /* Checked after the checkpoint, which says more. */
    if (lsn < from) {
        snprintf(errstr, errstr_size,
                 "--start-lsn %s=%s is behind slot %s, which is at %s: a slot cannot go back "
                 "(to publish older events again use `outboxd replay`)",
                 src->name, l, src->slot, slot_pos);
        rc = -2; /* refused */
        goto out;
    }
    /* What is skipped: the publication's transactions committed before lsn
     * that the slot still holds (upto_lsn: those committing before it). */
    const char *p2[3] = {src->slot, l, src->publication};
    /* Decodes the whole range: no time limit, a stop ends it. */
    PGresult *peek = outboxd_pg_query_bounded(
        pg,
        "SELECT count(*) FILTER (WHERE get_byte(data, 0) = 66), "
        "count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68, 84, 77)) "
        "FROM pg_catalog.pg_logical_slot_peek_binary_changes($1, $2::pg_lsn, NULL, "
        "'proto_version', '1', 'publication_names', $3)",
        3, p2, NULL, 0, stop, err, sizeof(err));
    char txns[32] = "?", changes[32] = "?";
    if (peek && PQntuples(peek) == 1) {
        snprintf(txns, sizeof(txns), "%s", PQgetvalue(peek, 0, 0));
        snprintf(changes, sizeof(changes), "%s", PQgetvalue(peek, 0, 1));
    } else if (!peek) {
        /* A stop, or the connection is gone: the checkpoint below is the
         * skip; go on only when the server still answers. */
        if (stop && atomic_load(stop))
            outboxd_pg_cancel(pg); /* else it decodes on, holding the slot */
        if (PQstatus(pg) != CONNECTION_OK || (stop && atomic_load(stop))) {
            snprintf(errstr, errstr_size, "--start-lsn %s=%s: %s", src->name, l, err);
            goto out;
        }
        LOG_WARN(src->name, "--start-lsn: could not count what is skipped: %s", err);
    }
    PQclear(peek);
    LOG_WARN(src->name,
             "--start-lsn %s: SKIPPING FORWARD from %s (slot %s) to %s, %llu bytes of WAL: %s "
             "transaction(s) with %s change(s) of publication %s are NOT relayed (outbox rows "
             "stay in their tables unless deleted; they can be replayed with `outboxd replay` "
             "only if a retention slot held them)",
             l, slot_pos, src->slot, l, (unsigned long long)(lsn - from), txns, changes,
             src->publication);
    /* The checkpoint first: if the advance below is lost (a server crash
     * before its next checkpoint), skipping by it still holds. Commit
     * records before lsn are covered, one at lsn is not, as for the slot. */
    outboxd_checkpoint_t nck = {0};
    nck.commit_lsn = lsn - 1;
    nck.end_lsn = lsn;
    nck.changes = -1;
    nck.timeline = ident.timeline;
    snprintf(nck.system_id, sizeof(nck.system_id), "%s", ident.system_id);
    snprintf(nck.database, sizeof(nck.database), "%s", ident.database);
    snprintf(nck.slot, sizeof(nck.slot), "%s", src->slot);
    if (outboxd_sink_commit(sink, &nck, err, sizeof(err)) != OUTBOXD_SINK_OK) {
        /* Given up (a stop, a broker that did not answer) is not known to be
         * undone: the EndTxn may still complete. */
        snprintf(errstr, errstr_size,
                 "--start-lsn %s=%s: committing the checkpoint: %s (it may have been committed "
                 "all the same: `outboxd status` shows the last checkpoint; running the same "
                 "command again is safe)",
                 src->name, l, err);
        goto out;
    }
    outboxd_repl_destroy(repl);
    repl = NULL;
    const char *p3[2] = {src->slot, l};
    char v[OUTBOXD_LSN_STRLEN + 8];
    if (query_value(&pg, 0, stop,
                    "SELECT end_lsn::text FROM pg_catalog.pg_replication_slot_advance($1, "
                    "$2::pg_lsn)",
                    2, p3, v, sizeof(v), err, sizeof(err)) < 0) {
        /* The checkpoint alone makes the relay skip; the slot catches up
         * with the first confirmation. */
        LOG_WARN(src->name, "--start-lsn: advancing slot %s failed (%s); the checkpoint skips",
                 src->slot, err);
    }
    LOG_WARN(src->name, "--start-lsn: checkpoint committed at %s; the relay starts from there", l);
    rc = 0;
out:
    PQclear(res);
    outboxd_repl_destroy(repl);
    outboxd_sink_destroy(sink);
    PQfinish(pg);
    return rc;
}

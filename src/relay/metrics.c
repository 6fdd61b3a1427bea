/*
 * Metrics registry, Prometheus exposition and health endpoints (metrics.h).
 */
#include "outboxd/relay/metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/common/log.h"

#define LAG_WARN_INTERVAL_MS 60000

typedef struct entry {
    outboxd_stats_t *st;
    bool over_limit;      /* main thread only */
    int64_t last_warn_ms; /* main thread only */
} entry_t;

struct outboxd_metrics {
    pthread_mutex_t lock; /* guards the list and the options */
    entry_t *entries;
    size_t n, cap;
    outboxd_metrics_options_t opts;
    int64_t start_wall_us;
    uint64_t reloads_ok, reloads_failed; /* SIGHUP reloads, under lock */
};

outboxd_metrics_t *outboxd_metrics_new(const outboxd_metrics_options_t *opts)
{
    outboxd_metrics_t *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    pthread_mutex_init(&m->lock, NULL);
    m->opts = *opts;
    m->start_wall_us = outboxd_wall_us();
    return m;
}

void outboxd_metrics_destroy(outboxd_metrics_t *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        outboxd_stats_destroy(m->entries[i].st);
    free(m->entries);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void outboxd_metrics_set_options(outboxd_metrics_t *m, const outboxd_metrics_options_t *opts)
{
    pthread_mutex_lock(&m->lock);
    m->opts = *opts;
    pthread_mutex_unlock(&m->lock);
}

void outboxd_metrics_reloaded(outboxd_metrics_t *m, bool ok)
{
    pthread_mutex_lock(&m->lock);
    if (ok)
        m->reloads_ok++;
    else
        m->reloads_failed++;
    pthread_mutex_unlock(&m->lock);
}

outboxd_stats_t *outboxd_metrics_source(outboxd_metrics_t *m, const char *name)
{
    outboxd_stats_t *st = NULL;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n && !st; i++)
        if (strcmp(outboxd_stats_name(m->entries[i].st), name) == 0)
            st = m->entries[i].st;
    if (!st) {
        if (m->n == m->cap) {
            size_t cap = m->cap ? m->cap * 2 : 8;
            entry_t *e = realloc(m->entries, cap * sizeof(*e));
            if (!e)
                goto out;
            m->entries = e;
            m->cap = cap;
        }
        st = outboxd_stats_new(name);
        if (st)
            m->entries[m->n++] = (entry_t){.st = st};
    }
out:
    pthread_mutex_unlock(&m->lock);
    return st;
}

/* Label values: backslash, double quote and newline escaped. */
static bool label(outboxd_buf_t *b, const char *v)
{
    for (const char *p = v; *p; p++) {
        bool ok;
        if (*p == '\\')
            ok = outboxd_buf_append_str(b, "\\\\");
        else if (*p == '"')
            ok = outboxd_buf_append_str(b, "\\\"");
        else if (*p == '\n')
            ok = outboxd_buf_append_str(b, "\\n");
        else
            ok = outboxd_buf_append(b, p, 1);
        if (!ok)
            return false;
    }
    return true;
}

static bool header(outboxd_buf_t *b, const char *name, const char *type, const char *help)
{
    return outboxd_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample per source of a value picked from its snapshot. */
typedef double (*pick_fn)(const outboxd_stats_snapshot_t *s);

#define PICK(field)                                                                                \
    static double pick_##field(const outboxd_stats_snapshot_t *s)                                  \
    {                                                                                              \
        return (double)s->field;                                                                   \
    }
PICK(events)
PICK(bytes)
PICK(dead_letters)
PICK(skipped)
PICK(reconnects)
PICK(heartbeats)
PICK(confirmed_lsn)
PICK(wal_end_lsn)
PICK(lag_bytes)
PICK(lag_seconds)
PICK(stall_seconds)
PICK(retention_lsn)
PICK(replay_window_bytes)

static bool per_source(outboxd_buf_t *b, const char *name, const char *type, const char *help,
                       const outboxd_stats_snapshot_t *snaps, outboxd_stats_t **sts, size_t n,
                       pick_fn pick)
{
    bool ok = header(b, name, type, help);
    for (size_t i = 0; i < n && ok; i++) {
        ok = outboxd_buf_printf(b, "%s{source=\"", name) && label(b, outboxd_stats_name(sts[i])) &&
             outboxd_buf_printf(b, "\"} %.17g\n", pick(&snaps[i]));
    }
    return ok;
}

bool outboxd_metrics_render(outboxd_metrics_t *m, outboxd_buf_t *b)
{
    pthread_mutex_lock(&m->lock);
    size_t n = m->n;
    outboxd_metrics_options_t opts = m->opts;
    uint64_t reloads_ok = m->reloads_ok, reloads_failed = m->reloads_failed;
    outboxd_stats_t **sts = calloc(n ? n : 1, sizeof(*sts));
    outboxd_stats_snapshot_t *snaps = calloc(n ? n : 1, sizeof(*snaps));
    if (sts && snaps)
        for (size_t i = 0; i < n; i++)
            sts[i] = m->entries[i].st;
    pthread_mutex_unlock(&m->lock);
    if (!sts || !snaps) {
        free(sts);
        free(snaps);
        return false;
    }
    /* Entries are never removed while the registry lives, so the pointers
     * stay valid after the lock is released. */
    for (size_t i = 0; i < n; i++)
        outboxd_stats_read(sts[i], &snaps[i]);

    bool ok = header(b, "outboxd_build_info", "gauge", "Version of the running outboxd.") &&
              outboxd_buf_printf(b, "outboxd_build_info{version=\"%s\"} 1\n", OUTBOXD_VERSION) &&
              header(b, "outboxd_start_time_seconds", "gauge",
                     "Start time of the process, Unix seconds.") &&
              outboxd_buf_printf(b, "outboxd_start_time_seconds %.3f\n",
                                 (double)m->start_wall_us / 1e6) &&
              header(b, "outboxd_max_slot_lag_bytes", "gauge",
                     "relay.max_slot_lag_bytes (0: no limit).") &&
              outboxd_buf_printf(b, "outboxd_max_slot_lag_bytes %llu\n",
                                 (unsigned long long)opts.max_slot_lag_bytes);
    ok = ok &&
         header(b, "outboxd_config_reloads_total", "counter",
                "Configuration reloads (SIGHUP) by result; a failure keeps the running "
                "configuration.") &&
         outboxd_buf_printf(b,
                            "outboxd_config_reloads_total{result=\"success\"} %llu\n"
                            "outboxd_config_reloads_total{result=\"failure\"} %llu\n",
                            (unsigned long long)reloads_ok, (unsigned long long)reloads_failed);
    ok = ok &&
         per_source(b, "outboxd_source_events_published_total", "counter",
                    "Events committed to Kafka (dead letters not included).", snaps, sts, n,
                    pick_events) &&
         per_source(b, "outboxd_source_bytes_published_total", "counter",
                    "Key and value bytes of the records committed to Kafka.", snaps, sts, n,
                    pick_bytes) &&
         per_source(b, "outboxd_source_dead_letters_total", "counter",
                    "Records committed to the dead-letter topic.", snaps, sts, n,
                    pick_dead_letters) &&
         per_source(b, "outboxd_source_skipped_changes_total", "counter",
                    "Changes PostgreSQL resent that an earlier run had published.", snaps, sts, n,
                    pick_skipped);
    if (ok) {
        ok = header(b, "outboxd_source_kafka_transactions_total", "counter",
                    "Kafka transactions by outcome.");
        for (size_t i = 0; i < n && ok; i++) {
            ok = outboxd_buf_append_str(b, "outboxd_source_kafka_transactions_total{source=\"") &&
                 label(b, outboxd_stats_name(sts[i])) &&
                 outboxd_buf_printf(b, "\",outcome=\"committed\"} %llu\n",
                                    (unsigned long long)snaps[i].txn_committed) &&
                 outboxd_buf_append_str(b, "outboxd_source_kafka_transactions_total{source=\"") &&
                 label(b, outboxd_stats_name(sts[i])) &&
                 outboxd_buf_printf(b, "\",outcome=\"aborted\"} %llu\n",
                                    (unsigned long long)snaps[i].txn_aborted);
        }
    }
    ok = ok &&
         per_source(b, "outboxd_source_reconnects_total", "counter",
                    "Connection attempts after the first one.", snaps, sts, n, pick_reconnects) &&
         per_source(b, "outboxd_source_heartbeats_total", "counter",
                    "Heartbeat messages written (sources[].heartbeat_interval_ms).", snaps, sts, n,
                    pick_heartbeats) &&
         per_source(b, "outboxd_source_confirmed_lsn", "gauge",
                    "WAL position last confirmed to PostgreSQL (as a number).", snaps, sts, n,
                    pick_confirmed_lsn) &&
         per_source(b, "outboxd_source_server_wal_end_lsn", "gauge",
                    "Server end of WAL last reported, on the stream or at a connection attempt (as "
                    "a number).",
                    snaps, sts, n, pick_wal_end_lsn) &&
         per_source(b, "outboxd_source_lag_bytes", "gauge",
                    "Server end of WAL minus the confirmed position.", snaps, sts, n,
                    pick_lag_bytes) &&
         per_source(b, "outboxd_source_lag_seconds", "gauge",
                    "Age of the oldest transaction received and not yet in Kafka; 0 when caught "
                    "up.",
                    snaps, sts, n, pick_lag_seconds) &&
         per_source(b, "outboxd_source_loop_stall_seconds", "gauge",
                    "Time since the source loop last turned.", snaps, sts, n, pick_stall_seconds) &&
         per_source(b, "outboxd_source_retention_slot_lsn", "gauge",
                    "Position of the retention slot (replay_window; 0: none or not advanced "
                    "yet).",
                    snaps, sts, n, pick_retention_lsn) &&
         per_source(b, "outboxd_source_replay_window_bytes", "gauge",
                    "Confirmed position minus the retention slot's: the WAL `outboxd replay` "
                    "can reach back.",
                    snaps, sts, n, pick_replay_window_bytes);
    if (ok) {
        ok = header(b, "outboxd_source_slot_lag_exceeded", "gauge",
                    "1 while lag_bytes is over relay.max_slot_lag_bytes.");
        for (size_t i = 0; i < n && ok; i++)
            ok = outboxd_buf_append_str(b, "outboxd_source_slot_lag_exceeded{source=\"") &&
                 label(b, outboxd_stats_name(sts[i])) &&
                 outboxd_buf_printf(b, "\"} %d\n",
                                    opts.max_slot_lag_bytes &&
                                        snaps[i].lag_bytes > opts.max_slot_lag_bytes);
    }
    if (ok) {
        ok = header(b, "outboxd_source_state", "gauge", "1 for the state the source is in.");
        for (size_t i = 0; i < n && ok; i++)
            for (int s = 0; s < OUTBOXD_SRC_N_STATES && ok; s++)
                ok = outboxd_buf_append_str(b, "outboxd_source_state{source=\"") &&
                     label(b, outboxd_stats_name(sts[i])) &&
                     outboxd_buf_printf(b, "\",state=\"%s\"} %d\n",
                                        outboxd_source_state_name((outboxd_source_state_t)s),
                                        (int)snaps[i].state == s);
    }
    if (ok) {
        const char *h = "outboxd_source_kafka_commit_seconds";
        ok = header(b, h, "histogram", "Duration of Kafka transaction commits.");
        for (size_t i = 0; i < n && ok; i++) {
            for (int k = 0; k <= OUTBOXD_STATS_N_BUCKETS && ok; k++) {
                ok = outboxd_buf_printf(b, "%s_bucket{source=\"", h) &&
                     label(b, outboxd_stats_name(sts[i]));
                if (ok && k < OUTBOXD_STATS_N_BUCKETS)
                    ok = outboxd_buf_printf(b, "\",le=\"%g\"} %llu\n",
                                            outboxd_stats_bucket_bounds[k],
                                            (unsigned long long)snaps[i].commit_buckets[k]);
                else if (ok)
                    ok = outboxd_buf_printf(b, "\",le=\"+Inf\"} %llu\n",
                                            (unsigned long long)snaps[i].commit_buckets[k]);
            }
            ok = ok && outboxd_buf_printf(b, "%s_sum{source=\"", h) &&
                 label(b, outboxd_stats_name(sts[i])) &&
                 outboxd_buf_printf(b, "\"} %.6f\n", snaps[i].commit_sum_seconds) &&
                 outboxd_buf_printf(b, "%s_count{source=\"", h) &&
                 label(b, outboxd_stats_name(sts[i])) &&
                 outboxd_buf_printf(b, "\"} %llu\n", (unsigned long long)snaps[i].commit_count);
        }
    }
    free(sts);
    free(snaps);
    return ok;
}

static bool running(outboxd_source_state_t st)
{
    return st != OUTBOXD_SRC_STOPPED && st != OUTBOXD_SRC_FAILED;
}

bool outboxd_metrics_healthy(outboxd_metrics_t *m, outboxd_buf_t *why)
{
    bool ok = true;
    pthread_mutex_lock(&m->lock);
    double limit = (double)m->opts.stall_timeout_ms / 1000.0;
    for (size_t i = 0; i < m->n; i++) {
        outboxd_stats_snapshot_t s;
        outboxd_stats_read(m->entries[i].st, &s);
        if (s.state == OUTBOXD_SRC_FAILED || (running(s.state) && s.stall_seconds > limit)) {
            ok = false;
            if (why)
                outboxd_buf_printf(why,
                                   "source %s: %s, loop last turned %.1f s ago (limit %.1f s)\n",
                                   outboxd_stats_name(m->entries[i].st),
                                   outboxd_source_state_name(s.state), s.stall_seconds, limit);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return ok;
}

void outboxd_metrics_counts(outboxd_metrics_t *m, int *total, int *streaming)
{
    int t = 0, s = 0;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < m->n; i++) {
        outboxd_stats_snapshot_t snap;
        outboxd_stats_read(m->entries[i].st, &snap);
        t++;
        s += snap.state == OUTBOXD_SRC_STREAMING;
    }
    pthread_mutex_unlock(&m->lock);
    *total = t;
    *streaming = s;
}

bool outboxd_metrics_ready(outboxd_metrics_t *m, outboxd_buf_t *why)
{
    int need;
    pthread_mutex_lock(&m->lock);
    need = m->opts.ready_min_sources > 0 ? m->opts.ready_min_sources : (int)m->n;
    for (size_t i = 0; why && i < m->n; i++) {
        outboxd_stats_snapshot_t s;
        outboxd_stats_read(m->entries[i].st, &s);
        outboxd_buf_printf(why, "source %s: %s\n", outboxd_stats_name(m->entries[i].st),
                           outboxd_source_state_name(s.state));
    }
    pthread_mutex_unlock(&m->lock);
    int total, streaming;
    outboxd_metrics_counts(m, &total, &streaming);
    if (why)
        outboxd_buf_printf(why, "%d of %d sources streaming, %d needed\n", streaming, total, need);
    return total > 0 && streaming >= need;
}

void outboxd_metrics_check(outboxd_metrics_t *m)
{
    pthread_mutex_lock(&m->lock);
    uint64_t limit = m->opts.max_slot_lag_bytes;
    int64_t now = outboxd_now_ms();
    for (size_t i = 0; i < m->n && limit; i++) {
        entry_t *e = &m->entries[i];
        outboxd_stats_snapshot_t s;
        outboxd_stats_read(e->st, &s);
        if (s.lag_bytes > limit) {
            if (!e->over_limit || now - e->last_warn_ms >= LAG_WARN_INTERVAL_MS) {
                char c[OUTBOXD_LSN_STRLEN], w[OUTBOXD_LSN_STRLEN];
                outboxd_lsn_format(s.confirmed_lsn, c);
                outboxd_lsn_format(s.wal_end_lsn, w);
                LOG_WARN(outboxd_stats_name(e->st),
                         "slot lag %llu bytes is over relay.max_slot_lag_bytes %llu (confirmed %s, "
                         "server WAL at %s, state %s): PostgreSQL keeps that WAL until the relay "
                         "catches up; check Kafka and the relay's log",
                         (unsigned long long)s.lag_bytes, (unsigned long long)limit, c, w,
                         outboxd_source_state_name(s.state));
                e->last_warn_ms = now;
            }
            e->over_limit = true;
        } else if (e->over_limit) {
            LOG_INFO(outboxd_stats_name(e->st),
                     "slot lag %llu bytes is back under relay.max_slot_lag_bytes %llu",
                     (unsigned long long)s.lag_bytes, (unsigned long long)limit);
            e->over_limit = false;
        }
    }
    pthread_mutex_unlock(&m->lock);
}

void outboxd_metrics_http_handler(void *opaque, const char *path, outboxd_http_response_t *r)
{
    outboxd_metrics_t *m = opaque;
    if (strcmp(path, "/metrics") == 0) {
        r->content_type = "text/plain; version=0.0.4; charset=utf-8";
        if (!outboxd_metrics_render(m, &r->body)) {
            outboxd_buf_reset(&r->body);
            r->status = 500;
            outboxd_buf_append_str(&r->body, "out of memory\n");
        }
    } else if (strcmp(path, "/healthz") == 0) {
        outboxd_buf_t why = {0};
        bool ok = outboxd_metrics_healthy(m, &why);
        r->status = ok ? 200 : 503;
        outboxd_buf_append_str(&r->body, ok ? "ok\n" : "stalled\n");
        if (why.len)
            outboxd_buf_append(&r->body, why.data, why.len);
        outboxd_buf_free(&why);
    } else if (strcmp(path, "/readyz") == 0) {
        outboxd_buf_t why = {0};
        bool ok = outboxd_metrics_ready(m, &why);
        r->status = ok ? 200 : 503;
        outboxd_buf_append_str(&r->body, ok ? "ready\n" : "not ready\n");
        if (why.len)
            outboxd_buf_append(&r->body, why.data, why.len);
        outboxd_buf_free(&why);
    } else {
        r->status = 404;
        outboxd_buf_append_str(&r->body, "not found; try /metrics, /healthz or /readyz\n");
    }
}

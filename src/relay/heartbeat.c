/*
 * Heartbeat writer (heartbeat.h).
 */
#include "outboxd/relay/heartbeat.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "outboxd/common/log.h"
#include "outboxd/relay/pgconn.h"
#include "outboxd/relay/pgsetup.h"

typedef struct beat {
    const outboxd_source_conf_t *src; /* of the first configuration: never freed */
    char *password;                   /* a reloaded one (rotation), under mu; NULL: src's */
    outboxd_stats_t *stats;
    PGconn *pg;
    int64_t next_ms;
    bool failing; /* the last attempt failed: log again only on recovery */
} beat_t;

struct outboxd_heartbeat {
    atomic_int *stop;
    int timeout_ms; /* one heartbeat's limit: see beat_once */
    beat_t *beats;
    size_t n;
    pthread_mutex_t mu; /* guards beats[].password */
    pthread_t thread;
};

static void free_secret(char *p)
{
    if (p) {
        explicit_bzero(p, strlen(p));
        free(p);
    }
}

/* Connects with the source's current password: a reload may have replaced
 * the one of the first configuration (rotation). */
static PGconn *beat_connect(outboxd_heartbeat_t *hb, beat_t *b, char *err, size_t err_size)
{
    outboxd_source_conf_t c = *b->src;
    pthread_mutex_lock(&hb->mu);
    char *pw = b->password ? strdup(b->password) : NULL;
    bool oom = b->password && !pw;
    pthread_mutex_unlock(&hb->mu);
    if (oom) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    if (pw)
        c.password = pw;
    PGconn *pg = outboxd_pg_connect(&c, false, err, err_size);
    free_secret(pw);
    return pg;
}

/* One thread writes every source's heartbeats: a database that accepted the
 * connection and then went silent (frozen, a half-open path) must not hold
 * the others' heartbeats, nor the shutdown that joins the thread, for good.
 * The query is given up as the source loops' are (outboxd_pgsetup_loop_bound:
 * relay.wal_receiver_timeout_ms, at most 10 s) or at stop, and the
 * connection reopened next time. */
static void beat_once(outboxd_heartbeat_t *hb, beat_t *b)
{
    char err[512];
    if (b->pg && PQstatus(b->pg) != CONNECTION_OK) {
        PQfinish(b->pg);
        b->pg = NULL;
    }
    if (!b->pg) {
        b->pg = beat_connect(hb, b, err, sizeof(err));
        if (!b->pg) {
            if (!b->failing)
                LOG_WARN(b->src->name, "heartbeat: %s; retrying every %d ms", err,
                         b->src->heartbeat_interval_ms);
            b->failing = true;
            return;
        }
    }
    PGresult *res = outboxd_pg_query_bounded(
        b->pg, "SELECT pg_logical_emit_message(true, '" OUTBOXD_HEARTBEAT_PREFIX "', ''::text)", 0,
        NULL, NULL, hb->timeout_ms, hb->stop, err, sizeof(err));
    if (!res) {
        if (!b->failing && !atomic_load(hb->stop))
            LOG_WARN(b->src->name, "heartbeat: pg_logical_emit_message failed: %s", err);
        b->failing = true;
        PQfinish(b->pg); /* reconnect next time */
        b->pg = NULL;
    } else {
        if (b->failing)
            LOG_INFO(b->src->name, "heartbeat: writing again");
        b->failing = false;
        outboxd_stats_heartbeat(b->stats);
    }
    PQclear(res);
}

static void *run(void *arg)
{
    outboxd_heartbeat_t *hb = arg;
    while (!atomic_load(hb->stop)) {
        int64_t now = outboxd_now_ms();
        for (size_t i = 0; i < hb->n && !atomic_load(hb->stop); i++) {
            beat_t *b = &hb->beats[i];
            if (now >= b->next_ms) {
                beat_once(hb, b);
                b->next_ms = outboxd_now_ms() + b->src->heartbeat_interval_ms;
            }
        }
        usleep(50 * 1000);
    }
    return NULL;
}

outboxd_heartbeat_t *outboxd_heartbeat_start(const outboxd_config_t *conf,
                                             outboxd_metrics_t *metrics, atomic_int *stop,
                                             char *errstr, size_t errstr_size)
{
    errstr[0] = '\0';
    size_t n = 0;
    for (size_t i = 0; i < conf->n_sources; i++)
        n += conf->sources[i].heartbeat_interval_ms > 0;
    if (n == 0)
        return NULL;
    outboxd_heartbeat_t *hb = calloc(1, sizeof(*hb));
    if (hb)
        hb->beats = calloc(n, sizeof(*hb->beats));
    if (!hb || !hb->beats) {
        free(hb);
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    hb->stop = stop;
    pthread_mutex_init(&hb->mu, NULL);
    hb->timeout_ms = outboxd_pgsetup_loop_bound(conf->wal_receiver_timeout_ms);
    int64_t now = outboxd_now_ms();
    for (size_t i = 0; i < conf->n_sources; i++) {
        const outboxd_source_conf_t *src = &conf->sources[i];
        if (src->heartbeat_interval_ms <= 0)
            continue;
        beat_t *b = &hb->beats[hb->n++];
        b->src = src;
        b->stats = metrics ? outboxd_metrics_source(metrics, src->name) : NULL;
        b->next_ms = now + src->heartbeat_interval_ms;
    }
    int e = pthread_create(&hb->thread, NULL, run, hb);
    if (e) {
        snprintf(errstr, errstr_size, "heartbeat thread: %s", strerror(e));
        pthread_mutex_destroy(&hb->mu);
        free(hb->beats);
        free(hb);
        return NULL;
    }
    return hb;
}

void outboxd_heartbeat_stop(outboxd_heartbeat_t *hb)
{
    if (!hb)
        return;
    pthread_join(hb->thread, NULL);
    for (size_t i = 0; i < hb->n; i++) {
        PQfinish(hb->beats[i].pg);
        free_secret(hb->beats[i].password);
    }
    pthread_mutex_destroy(&hb->mu);
    free(hb->beats);
    free(hb);
}

void outboxd_heartbeat_reload(outboxd_heartbeat_t *hb, const outboxd_config_t *conf)
{
    if (!hb)
        return;
    for (size_t i = 0; i < hb->n; i++) {
        beat_t *b = &hb->beats[i];
        const outboxd_source_conf_t *src = NULL;
        for (size_t k = 0; k < conf->n_sources && !src; k++)
            if (strcmp(conf->sources[k].name, b->src->name) == 0)
                src = &conf->sources[k];
        if (!src)
            continue; /* removed from the file: runs as it is until the restart */
        char *copy = src->password ? strdup(src->password) : NULL;
        if (src->password && !copy) {
            LOG_ERROR(b->src->name, "out of memory: the heartbeat keeps the old password");
            continue;
        }
        pthread_mutex_lock(&hb->mu);
        char *old = b->password;
        b->password = copy;
        pthread_mutex_unlock(&hb->mu);
        free_secret(old);
    }
}

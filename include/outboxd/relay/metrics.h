/*
 * The relay's metrics registry and its HTTP endpoints:
 *   /metrics  Prometheus text exposition (version 0.0.4)
 *   /healthz  200 while every running source loop turned within
 *             stall_timeout_ms, else 503 naming the stalled sources
 *   /readyz   200 when every source (or ready_min_sources of them) streams
 *
 * Sources are registered by name and their statistics live as long as the
 * registry, so a source that is restarted, or kept across a configuration
 * reload, keeps its counters. The registry is thread-safe: a mutex guards
 * the list, and the statistics themselves are atomics (stats.h).
 */
#ifndef OUTBOXD_METRICS_H
#define OUTBOXD_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "outboxd/common/http.h"
#include "outboxd/common/util.h"
#include "outboxd/relay/stats.h"

typedef struct outboxd_metrics_options {
    int stall_timeout_ms;        /* healthz and watchdog: a loop idle longer is stalled */
    int ready_min_sources;       /* readyz: 0 = all sources */
    uint64_t max_slot_lag_bytes; /* 0 = no limit */
} outboxd_metrics_options_t;

typedef struct outboxd_metrics outboxd_metrics_t;

outboxd_metrics_t *outboxd_metrics_new(const outboxd_metrics_options_t *opts);
void outboxd_metrics_destroy(outboxd_metrics_t *m);

/* Replaces the options (e.g. after a reload). */
void outboxd_metrics_set_options(outboxd_metrics_t *m, const outboxd_metrics_options_t *opts);

/* Counts a configuration reload (outboxd_config_reloads_total{result}). */
void outboxd_metrics_reloaded(outboxd_metrics_t *m, bool ok);

/* The statistics of source name, created on first use; owned by m. NULL on OOM. */
outboxd_stats_t *outboxd_metrics_source(outboxd_metrics_t *m, const char *name);

/* Appends the exposition text. false on OOM. */
bool outboxd_metrics_render(outboxd_metrics_t *m, outboxd_buf_t *out);

/* Whether every source loop that still runs turned recently; why lists the
 * stalled ones (may be NULL). */
bool outboxd_metrics_healthy(outboxd_metrics_t *m, outboxd_buf_t *why);

/* Whether enough sources stream (all, or ready_min_sources); why says which
 * do not (may be NULL). */
bool outboxd_metrics_ready(outboxd_metrics_t *m, outboxd_buf_t *why);

/* Number of registered sources and of those streaming. */
void outboxd_metrics_counts(outboxd_metrics_t *m, int *total, int *streaming);

/* Periodic work of the main thread (about once a second): warns once a
 * minute per source whose lag is over max_slot_lag_bytes, and once when it
 * is back under. */
void outboxd_metrics_check(outboxd_metrics_t *m);

/* outboxd_http_handler_fn serving the three endpoints; opaque is the registry. */
void outboxd_metrics_http_handler(void *opaque, const char *path, outboxd_http_response_t *resp);

#endif

/*
 * Per-source statistics (see stats.h). Relaxed atomics: each value is read
 * and written whole; no reader needs an order between two of them.
 */
#include "outboxd/relay/stats.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

const double outboxd_stats_bucket_bounds[OUTBOXD_STATS_N_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

static const char *state_names[OUTBOXD_SRC_N_STATES] = {
    "starting", "connecting", "streaming", "backoff", "stopping", "stopped", "failed"};

struct outboxd_stats {
    char *name;
    atomic_int state;
    atomic_bool connected_before;
    atomic_int_least64_t last_tick_ms; /* monotonic */
    atomic_uint_least64_t events, bytes, dead_letters, skipped;
    atomic_uint_least64_t txn_committed, txn_aborted, reconnects, heartbeats;
    atomic_uint_least64_t confirmed_lsn, wal_end_lsn;
    atomic_uint_least64_t retention_lsn; /* replay_window's slot; 0: none */
    /* Commit time (Unix us) of the oldest transaction received and not yet
     * in Kafka; 0 when caught up. */
    atomic_int_least64_t pending_since_us;
    /* Bytes produced into the open Kafka transaction: only the source's
     * thread touches it, but it is read by nobody else either. */
    uint64_t open_bytes;
    atomic_uint_least64_t buckets[OUTBOXD_STATS_N_BUCKETS + 1]; /* not cumulative */
    atomic_uint_least64_t commit_sum_us;
};

#define LOAD(x)     atomic_load_explicit(&(x), memory_order_relaxed)
#define STORE(x, v) atomic_store_explicit(&(x), (v), memory_order_relaxed)
#define ADD(x, v)   atomic_fetch_add_explicit(&(x), (v), memory_order_relaxed)

const char *outboxd_source_state_name(outboxd_source_state_t st)
{
    return (unsigned)st < OUTBOXD_SRC_N_STATES ? state_names[st] : "unknown";
}

outboxd_stats_t *outboxd_stats_new(const char *name)
{
    outboxd_stats_t *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->name = strdup(name);
    if (!st->name) {
        free(st);
        return NULL;
    }
    STORE(st->last_tick_ms, outboxd_now_ms());
    return st;
}

void outboxd_stats_destroy(outboxd_stats_t *st)
{
    if (!st)
        return;
    free(st->name);
    free(st);
}

const char *outboxd_stats_name(const outboxd_stats_t *st)
{
    return st->name;
}

void outboxd_stats_state(outboxd_stats_t *st, outboxd_source_state_t state)
{
    if (!st)
        return;
    if (state == OUTBOXD_SRC_CONNECTING) {
        if (atomic_exchange(&st->connected_before, true))
            ADD(st->reconnects, 1);
    }
    STORE(st->state, (int)state);
    outboxd_stats_tick(st);
}

void outboxd_stats_tick(outboxd_stats_t *st)
{
    if (st)
        STORE(st->last_tick_ms, outboxd_now_ms());
}

void outboxd_stats_wal_end(outboxd_stats_t *st, outboxd_lsn_t lsn)
{
    if (st && lsn)
        STORE(st->wal_end_lsn, lsn);
}

void outboxd_stats_retention(outboxd_stats_t *st, outboxd_lsn_t lsn)
{
    if (st)
        STORE(st->retention_lsn, lsn);
}

void outboxd_stats_confirmed(outboxd_stats_t *st, outboxd_lsn_t lsn)
{
    /* 0: nothing confirmed on this connection yet (a status update sent
     * before the stream): the server still holds the last known position. */
    if (st && lsn)
        STORE(st->confirmed_lsn, lsn);
}

void outboxd_stats_txn_begin(outboxd_stats_t *st, int64_t commit_time_us)
{
    if (st && LOAD(st->pending_since_us) == 0)
        STORE(st->pending_since_us, commit_time_us > 0 ? commit_time_us : 1);
}

void outboxd_stats_caught_up(outboxd_stats_t *st)
{
    if (st)
        STORE(st->pending_since_us, 0);
}

void outboxd_stats_produced(outboxd_stats_t *st, uint64_t bytes)
{
    if (st)
        st->open_bytes += bytes;
}

void outboxd_stats_committed(outboxd_stats_t *st, uint64_t events, uint64_t dead_letters,
                             int64_t latency_us)
{
    if (!st)
        return;
    ADD(st->events, events);
    ADD(st->dead_letters, dead_letters);
    ADD(st->bytes, st->open_bytes);
    st->open_bytes = 0;
    ADD(st->txn_committed, 1);
    if (latency_us < 0)
        latency_us = 0;
    double secs = (double)latency_us / 1e6;
    int b = 0;
    while (b < OUTBOXD_STATS_N_BUCKETS && secs > outboxd_stats_bucket_bounds[b])
        b++;
    ADD(st->buckets[b], 1);
    ADD(st->commit_sum_us, (uint64_t)latency_us);
}

void outboxd_stats_aborted(outboxd_stats_t *st)
{
    if (!st)
        return;
    ADD(st->txn_aborted, 1);
    st->open_bytes = 0;
}

void outboxd_stats_rewound(outboxd_stats_t *st)
{
    if (st)
        st->open_bytes = 0;
}

void outboxd_stats_heartbeat(outboxd_stats_t *st)
{
    if (st)
        ADD(st->heartbeats, 1);
}

void outboxd_stats_skipped(outboxd_stats_t *st, uint64_t n)
{
    if (st)
        ADD(st->skipped, n);
}

void outboxd_stats_read(const outboxd_stats_t *cst, outboxd_stats_snapshot_t *out)
{
    outboxd_stats_t *st = (outboxd_stats_t *)cst; /* atomic loads take non-const */
    memset(out, 0, sizeof(*out));
    out->state = (outboxd_source_state_t)LOAD(st->state);
    out->events = LOAD(st->events);
    out->bytes = LOAD(st->bytes);
    out->dead_letters = LOAD(st->dead_letters);
    out->skipped = LOAD(st->skipped);
    out->txn_committed = LOAD(st->txn_committed);
    out->txn_aborted = LOAD(st->txn_aborted);
    out->reconnects = LOAD(st->reconnects);
    out->heartbeats = LOAD(st->heartbeats);
    out->confirmed_lsn = LOAD(st->confirmed_lsn);
    out->retention_lsn = LOAD(st->retention_lsn);
    out->replay_window_bytes = out->retention_lsn && out->confirmed_lsn > out->retention_lsn
                                   ? out->confirmed_lsn - out->retention_lsn
                                   : 0;
    out->wal_end_lsn = LOAD(st->wal_end_lsn);
    out->lag_bytes = out->wal_end_lsn > out->confirmed_lsn && out->confirmed_lsn
                         ? out->wal_end_lsn - out->confirmed_lsn
                         : 0;
    int64_t since = LOAD(st->pending_since_us);
    if (since > 0) {
        int64_t d = outboxd_wall_us() - since;
        out->lag_seconds = d > 0 ? (double)d / 1e6 : 0.0;
    }
    int64_t stall = outboxd_now_ms() - LOAD(st->last_tick_ms);
    out->stall_seconds = stall > 0 ? (double)stall / 1000.0 : 0.0;
    uint64_t cum = 0;
    for (int b = 0; b <= OUTBOXD_STATS_N_BUCKETS; b++) {
        cum += LOAD(st->buckets[b]);
        out->commit_buckets[b] = cum;
    }
    out->commit_count = cum;
    out->commit_sum_seconds = (double)LOAD(st->commit_sum_us) / 1e6;
}

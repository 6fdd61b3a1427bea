/*
 * Per-source counters and gauges, written by the source's thread and read by
 * the metrics endpoint, the watchdog and `status` from other threads. Every
 * field is an atomic: updates are a few relaxed stores or adds on the hot
 * path, readers get a snapshot that is consistent per field (not across
 * fields, which Prometheus does not need).
 *
 * Every updater accepts NULL, so a source without a metrics registry (tests,
 * tools) runs unchanged.
 */
#ifndef OUTBOXD_STATS_H
#define OUTBOXD_STATS_H

#include <stdbool.h>
#include <stdint.h>

#include "outboxd/common/util.h"

typedef enum {
    OUTBOXD_SRC_STARTING = 0,
    OUTBOXD_SRC_CONNECTING, /* checking the database, opening the stream, reading the checkpoint */
    OUTBOXD_SRC_STREAMING,  /* replication stream open */
    OUTBOXD_SRC_BACKOFF,    /* waiting before the next connection attempt */
    OUTBOXD_SRC_STOPPING,   /* committing the batch in hand after a stop request */
    OUTBOXD_SRC_STOPPED,    /* thread ended cleanly */
    OUTBOXD_SRC_FAILED,     /* thread ended on a fatal error */
    OUTBOXD_SRC_N_STATES
} outboxd_source_state_t;

const char *outboxd_source_state_name(outboxd_source_state_t st);

/* Upper bounds (seconds) of the Kafka commit latency histogram; +Inf follows. */
#define OUTBOXD_STATS_N_BUCKETS 14
extern const double outboxd_stats_bucket_bounds[OUTBOXD_STATS_N_BUCKETS];

typedef struct outboxd_stats outboxd_stats_t;

/* name is copied. NULL on OOM. */
outboxd_stats_t *outboxd_stats_new(const char *name);
void outboxd_stats_destroy(outboxd_stats_t *st);
const char *outboxd_stats_name(const outboxd_stats_t *st);

/* ---- updaters (the source's thread) ---- */

/* Entering CONNECTING again after the first time counts a reconnect. */
void outboxd_stats_state(outboxd_stats_t *st, outboxd_source_state_t state);
/* The loop turned (healthz and the systemd watchdog look at this). */
void outboxd_stats_tick(outboxd_stats_t *st);
/* Server's end of WAL, from every keepalive and XLogData message. */
void outboxd_stats_wal_end(outboxd_stats_t *st, outboxd_lsn_t lsn);
/* Position of the retention slot (replay_window), after it was advanced. */
void outboxd_stats_retention(outboxd_stats_t *st, outboxd_lsn_t lsn);
/* Position confirmed to PostgreSQL in a standby status update, or the
 * slot's as the server holds it when a source connects. 0 is ignored
 * (nothing confirmed on this connection yet). */
void outboxd_stats_confirmed(outboxd_stats_t *st, outboxd_lsn_t lsn);
/* A transaction was received (Begin): if nothing was pending, the lag in
 * seconds counts from its commit time (Unix microseconds). */
void outboxd_stats_txn_begin(outboxd_stats_t *st, int64_t commit_time_us);
/* Nothing received is waiting for Kafka any more: lag seconds 0. */
void outboxd_stats_caught_up(outboxd_stats_t *st);
/* A record (key + value bytes) was produced into the open Kafka transaction. */
void outboxd_stats_produced(outboxd_stats_t *st, uint64_t bytes);
/* The open Kafka transaction committed with these events and dead letters
 * after latency_us; the bytes produced into it count as published. */
void outboxd_stats_committed(outboxd_stats_t *st, uint64_t events, uint64_t dead_letters,
                             int64_t latency_us);
/* A Kafka transaction was aborted. */
void outboxd_stats_aborted(outboxd_stats_t *st);
/* The stream rewound: what was produced and not committed does not count. */
void outboxd_stats_rewound(outboxd_stats_t *st);
/* A heartbeat message was written (heartbeat.h). */
void outboxd_stats_heartbeat(outboxd_stats_t *st);
/* Changes skipped because an earlier run had published them. */
void outboxd_stats_skipped(outboxd_stats_t *st, uint64_t n);

/* ---- readers (any thread) ---- */

typedef struct outboxd_stats_snapshot {
    outboxd_source_state_t state;
    uint64_t events, bytes, dead_letters, skipped;
    uint64_t txn_committed, txn_aborted, reconnects, heartbeats;
    outboxd_lsn_t confirmed_lsn, wal_end_lsn;
    outboxd_lsn_t retention_lsn;  /* 0: no retention slot (or not advanced yet) */
    uint64_t replay_window_bytes; /* confirmed - retention: WAL replay can reach */
    uint64_t lag_bytes;           /* wal_end - confirmed, 0 when unknown or ahead */
    double lag_seconds;           /* 0 when caught up */
    double stall_seconds;         /* since the loop last turned */
    uint64_t commit_buckets[OUTBOXD_STATS_N_BUCKETS + 1]; /* cumulative; last is +Inf */
    uint64_t commit_count;
    double commit_sum_seconds;
} outboxd_stats_snapshot_t;

void outboxd_stats_read(const outboxd_stats_t *st, outboxd_stats_snapshot_t *out);

#endif

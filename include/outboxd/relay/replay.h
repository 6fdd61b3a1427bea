/*
 * Replay from a slot LSN, and deliberate skips forward.
 *
 * A logical slot cannot go back past its confirmed position, so a source
 * with replay_window keeps a second slot, the retention slot
 * (<slot>_keep), that the relay advances that window (a time or a WAL size)
 * behind the position it confirms on the live slot. `outboxd replay` copies
 * the retention slot (pg_copy_logical_replication_slot) to <slot>_replay,
 * advances the copy to --from-lsn and streams it up to --to-lsn through the
 * source's router and encoder into the target topics, with headers marking
 * the records as replays. The live slot and stream are never touched.
 *
 * A replay is exactly-once into its target like the relay itself: its own
 * transactional producer (<prefix>.<source>.replay) commits the records with
 * a checkpoint under the key <source>.replay.<hash of start and target>,
 * and a replay run again with the same --from-lsn and target resumes after
 * that checkpoint.
 *
 * `outboxd run --start-lsn SOURCE=LSN` skips forward: it commits a
 * checkpoint at LSN and advances the live slot there, logging what is
 * skipped.
 */
#ifndef OUTBOXD_REPLAY_H
#define OUTBOXD_REPLAY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "outboxd/common/util.h"
#include "outboxd/relay/config.h"
#include "outboxd/relay/stats.h"

/* ---- the window arithmetic (pure, unit-tested) ---- */

#define OUTBOXD_WINDOW_RING 1024

/*
 * Positions the live slot confirmed and when (wall clock): enough to find
 * "the newest position confirmed at least a window ago". Entries are
 * coarsened to at least 1 s (or window/512) apart, so the ring never fills
 * within a window; when it does fill, the oldest entry goes, which only
 * keeps more WAL than asked for.
 */
typedef struct outboxd_window_ring {
    struct {
        outboxd_lsn_t lsn;
        int64_t at_us;
    } e[OUTBOXD_WINDOW_RING];
    size_t head, n;
} outboxd_window_ring_t;

/* Records that lsn was confirmed at at_us (entries closer than step_us to
 * the newest one replace it: its position grows, its time stays). */
void outboxd_window_note(outboxd_window_ring_t *r, outboxd_lsn_t lsn, int64_t at_us,
                         int64_t step_us);

/*
 * Where the retention slot may go now: for a time window, the newest noted
 * position confirmed at or before now_us - window_ms (entries older than it
 * are dropped); for a size window, live_lsn - window_bytes. 0: nowhere yet.
 */
outboxd_lsn_t outboxd_window_target(outboxd_window_ring_t *r, int64_t now_us, int64_t window_ms,
                                    uint64_t window_bytes, outboxd_lsn_t live_lsn);

/* ---- the retention slot, kept by the source thread ---- */

typedef struct outboxd_retention outboxd_retention_t;

/* NULL when src has no replay_window (or on OOM, then replay is unavailable
 * and said so in the log). Starts a thread of its own that advances the
 * retention slot on its own normal connection; each query is given up after
 * timeout_ms (relay.wal_receiver_timeout_ms; 0: no limit) or at destroy.
 * What it needs of src is copied: a configuration reload may free src. */
outboxd_retention_t *outboxd_retention_new(const outboxd_source_conf_t *src, int timeout_ms);
/* Stops and joins the thread. Accepts NULL. */
void outboxd_retention_destroy(outboxd_retention_t *r);

/* A reloaded password (rotation): used from the keeper's next connection,
 * as the source's own connections do. Copied. Accepts NULL r. */
void outboxd_retention_set_password(outboxd_retention_t *r, const char *password);

/*
 * The live slot has been confirmed up to lsn (after the Kafka commit that
 * covers it): noted under a mutex, no I/O, so the source loop never waits on
 * it. About once a second the retention thread advances the retention slot
 * to the window's target with pg_replication_slot_advance. st (may be NULL)
 * receives the retention slot's position. Accepts NULL r.
 */
void outboxd_retention_confirmed(outboxd_retention_t *r, outboxd_lsn_t lsn, outboxd_stats_t *st);

/* ---- outboxd replay ---- */

typedef struct outboxd_replay_args {
    const char *source;
    outboxd_lsn_t from_lsn;   /* required */
    outboxd_lsn_t to_lsn;     /* 0: the server's WAL end when the replay starts */
    const char *topic_suffix; /* default ".replay" when to_topic is not set */
    const char *to_topic;     /* every record into this topic */
    bool dry_run;
    bool have_from;
} outboxd_replay_args_t;

/*
 * One replay option: "source", "from-lsn", "to-lsn", "topic-suffix",
 * "to-topic" (value required) or "dry-run" (value NULL). Returns 0, or -1
 * with errstr naming the option and what a valid value looks like.
 */
int outboxd_replay_set_option(outboxd_replay_args_t *a, const char *name, const char *value,
                              char *errstr, size_t errstr_size);

/* After all options: --source and --from-lsn given, --to-lsn not before
 * --from-lsn, not both --topic-suffix and --to-topic. 0, or -1 with errstr. */
int outboxd_replay_check_args(const outboxd_replay_args_t *a, char *errstr, size_t errstr_size);

/*
 * Runs a replay; the report (or the dry run's plan) goes to out, progress to
 * the log. *stop (a signal) ends it after committing what it holds.
 * Returns 0 when done, 1 on a failure (rerun resumes), 2 when the request
 * cannot be served (unknown source, no retention slot, --from-lsn before the
 * window, --to-lsn before --from-lsn): errstr says why and what to do.
 */
int outboxd_replay_run(const outboxd_config_t *conf, const outboxd_replay_args_t *a,
                       atomic_int *stop, FILE *out, char *errstr, size_t errstr_size);

/* ---- outboxd run --start-lsn ---- */

/* "SOURCE=LSN" into name (name_size bytes) and *lsn. 0, or -1 with errstr. */
int outboxd_replay_parse_start_lsn(const char *arg, char *name, size_t name_size,
                                   outboxd_lsn_t *lsn, char *errstr, size_t errstr_size);

/*
 * Before the relay starts: skips source src forward to lsn. Refused (-2,
 * errstr) when the slot is missing, while another process streams it, when
 * lsn is behind the last checkpoint or the slot's position, or beyond the
 * server's WAL. Otherwise counts what is skipped (transactions and changes
 * of the publication), logs it at WARN, commits a checkpoint at lsn in Kafka
 * and advances the slot to lsn. Returns 0; -1 with errstr when a server
 * could not be reached or failed, or *stop was set (nothing is skipped
 * unless the checkpoint was committed, which errstr says may have happened
 * when its commit was given up; running it again is safe).
 */
int outboxd_replay_skip_to(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                           outboxd_lsn_t lsn, atomic_int *stop, char *errstr, size_t errstr_size);

#endif

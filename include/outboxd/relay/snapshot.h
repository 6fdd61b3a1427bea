/*
 * Initial snapshot of a source's cdc tables (tables[].snapshot: initial or
 * when_needed): the rows that exist before streaming are read in a snapshot
 * whose position in the WAL is exactly known, and published as op "r"
 * through relay/cdc.h, a chunk per Kafka transaction together with the
 * checkpoint record, which carries the snapshot's progress. See snapshot.c
 * for why this is exactly once across crashes, and README "Snapshots".
 *
 * One instance per source thread (not thread-safe). It keeps the parsed
 * progress, a normal connection (reads and key comparisons) and, while a
 * snapshot is read, a replication connection holding the temporary slot
 * that exported the snapshot.
 */
#ifndef OUTBOXD_SNAPSHOT_H
#define OUTBOXD_SNAPSHOT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "outboxd/relay/cdc.h"
#include "outboxd/relay/checkpoint.h"
#include "outboxd/relay/config.h"
#include "outboxd/relay/pgoutput.h"
#include "outboxd/relay/repl.h"
#include "outboxd/relay/sink.h"
#include "outboxd/relay/stats.h"

typedef struct outboxd_snapshot outboxd_snapshot_t;

/* conf, src and stop (the source's; its queries give up at once when set)
 * must outlive the instance. NULL + errstr on OOM. */
outboxd_snapshot_t *outboxd_snapshot_new(const outboxd_config_t *conf,
                                         const outboxd_source_conf_t *src, atomic_int *stop,
                                         char *errstr, size_t errstr_size);
void outboxd_snapshot_destroy(outboxd_snapshot_t *sn);

/* A configuration reload (reload.h) replaced conf and src: the instance
 * reads the new ones from now on; its progress and the stream's
 * reconciliation state stay. Call from the source's thread only. */
void outboxd_snapshot_rebind(outboxd_snapshot_t *sn, const outboxd_config_t *conf,
                             const outboxd_source_conf_t *src);

/* Whether any cdc table of src has a snapshot mode other than never. */
bool outboxd_snapshot_configured(const outboxd_source_conf_t *src);

/*
 * Every connect, after the checkpoint was read and judged: takes the
 * progress from ck->snapshot (saved is the text before the checkpoint was
 * judged, as judging may drop the whole record), and decides what to
 * snapshot now: every cdc table with a snapshot mode whose snapshot has not
 * finished, and, when positions_lost (the slot was created again after the
 * source had published, or the checkpoint's positions could not be trusted),
 * every when_needed table again. ck->snapshot is rewritten with the result.
 * Returns 0, or -1 with errstr (the progress in the checkpoint is
 * unreadable: a fatal configuration problem).
 */
int outboxd_snapshot_prepare(outboxd_snapshot_t *sn, outboxd_checkpoint_t *ck, const char *saved,
                             bool positions_lost, char *errstr, size_t errstr_size);

/* Whether outboxd_snapshot_run has work to do. */
bool outboxd_snapshot_pending(const outboxd_snapshot_t *sn);

/* What outboxd_snapshot_run publishes through. */
typedef struct outboxd_snapshot_io {
    outboxd_sink_t *sink;
    outboxd_cdc_t *cdc;
    const outboxd_repl_ident_t *ident; /* the source's server (checkpoint identity) */
    outboxd_checkpoint_t *ck;          /* in: last committed; out: likewise, after each chunk */
    atomic_int *stop;
    outboxd_stats_t *stats; /* may be NULL */
    /* Called between chunks (may be NULL): a snapshot read while the
     * stream is open must keep answering the walsender. */
    void (*keepalive)(void *opaque);
    void *opaque;
} outboxd_snapshot_io_t;

/*
 * Reads what prepare decided, before the source starts streaming. Each
 * chunk (relay.max_batch_events rows, keyset-paginated by primary key) is
 * one Kafka transaction with a checkpoint that records the last key
 * published. Returns 0 when nothing is left to read, -1 to retry (Kafka
 * aborted, PostgreSQL lost, stopping: the next call resumes from *io->ck),
 * -2 on a fatal error (logged).
 */
int outboxd_snapshot_run(outboxd_snapshot_t *sn, const outboxd_snapshot_io_t *io);

/*
 * For the stream: whether a change (INSERT, UPDATE, DELETE, TRUNCATE) of a
 * transaction committed at commit_lsn is already reflected in snapshot rows
 * published before (read under a snapshot that saw that transaction), so
 * publishing it would show it twice. dec resolves a TRUNCATE's relations:
 * one is reflected only when every truncated table was snapshotted under
 * snapshots that saw it. Returns 1 (skip it), 0 (publish it),
 * or -1 with errstr (the comparison needed the server and it failed:
 * retry).
 */
int outboxd_snapshot_reflected(outboxd_snapshot_t *sn, const outboxd_pgo_decoder_t *dec,
                               const outboxd_pgo_msg_t *msg, outboxd_lsn_t commit_lsn, char *errstr,
                               size_t errstr_size);

/* For a TRUNCATE that outboxd_snapshot_reflected publishes (not every
 * table it names was read after it): whether this one of its tables was
 * (every snapshot of its rows saw the TRUNCATE), so its 't' event must be
 * left out. sn may be NULL. */
bool outboxd_snapshot_truncate_reflected(outboxd_snapshot_t *sn, const outboxd_pgo_relation_t *rel,
                                         outboxd_lsn_t commit_lsn);

/*
 * Ad-hoc snapshots (sources[].signal_table). Whether rel is the source's
 * signal table.
 */
bool outboxd_snapshot_is_signal(const outboxd_source_conf_t *src,
                                const outboxd_pgo_relation_t *rel);

/*
 * An inserted signal row (columns id, type, data as Debezium's signal
 * table): type "execute-snapshot" with data {"data-collections":
 * ["schema.table", ...]} asks to snapshot those cdc tables again. The
 * request is remembered (other rows are logged and ignored) and applied by
 * outboxd_snapshot_apply_request at the end of the signal's transaction.
 */
void outboxd_snapshot_signal(outboxd_snapshot_t *sn, const outboxd_pgo_relation_t *rel,
                             const outboxd_pgo_tuple_t *tup);

/* Whether a signal asked for a snapshot not applied yet. */
/* The stream was closed before the Commit of the transaction that carried
 * the requests: forget them (that transaction is not in Kafka, so it is
 * sent again, signal rows included, and asks again). NULL is a no-op. */
void outboxd_snapshot_forget_requests(outboxd_snapshot_t *sn);

bool outboxd_snapshot_requested(const outboxd_snapshot_t *sn);

/*
 * Turns the requested tables into a run (ck->snapshot rewritten; commit it
 * with the signal's transaction so the request survives a crash, then call
 * outboxd_snapshot_run). Returns 0, or -1 with errstr (progress too large).
 */
int outboxd_snapshot_apply_request(outboxd_snapshot_t *sn, outboxd_checkpoint_t *ck, char *errstr,
                                   size_t errstr_size);

#endif

/*
 * The per-source relay loop (see source.h and DESIGN.md section 3).
 *
 * Positions: ck_committed is what Kafka durably holds (events + checkpoint
 * committed together). confirm_lsn is what we tell PostgreSQL it may forget:
 * only the end LSN of transactions whose events are committed in Kafka, or a
 * keepalive's WAL end when nothing is in flight. After any failure we
 * reconnect; PostgreSQL resends from the slot's confirmed position and every
 * change already covered by ck_committed is skipped.
 */
#include "outboxd/relay/source.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "outboxd/relay/cdc.h"
#include "outboxd/relay/checkpoint.h"
#include "outboxd/common/log.h"
#include "outboxd/relay/pgoutput.h"
#include "outboxd/relay/pgconn.h"
#include "outboxd/relay/pgsetup.h"
#include "outboxd/relay/repl.h"
#include "outboxd/relay/replay.h"
#include "outboxd/relay/router.h"
#include "outboxd/relay/sink.h"
#include "outboxd/relay/snapshot.h"
#include "outboxd/relay/stats.h"

#define STATS_LOG_INTERVAL_MS 30000
/* First pause before reconnecting after a rewind; it doubles while the same
 * failure repeats without progress, up to reconnect_max_backoff_ms. */
#define REWIND_MIN_BACKOFF_MS 200
/* A dead-letter record Kafka refused is sent again cut to this size. */
#define SMALL_DEAD_LETTER_BYTES 4096
/* Bounds of what is read ahead of processing while a Kafka commit runs
 * (relay.pipeline_commits): replication messages, and their bytes. Messages
 * over PEND_BIG_BYTES get their own allocation instead of arena space. */
#define PEND_MAX_MSGS  16384
#define PEND_MAX_BYTES (4u << 20)
#define PEND_BIG_BYTES (64u << 10)
/* The stream loop's poll: BUSY_POLL_MS normally; IDLE_POLL_MS (bounded by
 * the stall and liveness timeouts) once nothing was received for
 * IDLE_AFTER_MS and no batch is open. */
#define BUSY_POLL_MS  100
#define IDLE_POLL_MS  5000
#define IDLE_AFTER_MS 2000
/*
 * Behind: the walsender sent the newest transaction at least BACKLOG_LAG_MS
 * after its commit: it is working through a backlog, and a moment with
 * nothing on the socket means it is still decoding (or the link is slower
 * than the relay), not that it has nothing more. Cutting the Kafka
 * transaction there (the group commit of a relay that is caught up) made a
 * drain commit many small transactions, each with its AddPartitionsToTxn,
 * EndTxn, markers and checkpoint record for the broker to serve (40 to 168
 * transactions for the same 200,000 events, bench/README "Backlog
 * batches"). Behind, a pause does not cut the batch: it is cut when full
 * (max_batch_events) or once open for commit_interval_ms, but at least
 * BACKLOG_BATCH_MS (its events are that late already, and fuller
 * transactions let the relay catch up sooner), and at once when another
 * source waits for the loop's thread or for a producer of the pool.
 * Both times normally come from the server's clock. They do not when the
 * change was replicated from another server (the origin's commit time) or
 * is decoded on a standby (the primary's); a clock ahead there by more than
 * BACKLOG_LAG_MS only costs a caught-up relay up to BACKLOG_BATCH_MS per
 * batch.
 */
#define BACKLOG_LAG_MS   100
#define BACKLOG_BATCH_MS 100

/* Where the loop's next step resumes (step). */
#define PHASE_RUN              0 /* (re)connect if needed, then stream */
#define PHASE_STREAM           1 /* inside stream() */
#define PHASE_BACKOFF          2 /* pausing until backoff_until_ms */
#define CONNECT_MIN_BACKOFF_MS 500
#define CONNECT_YIELD          1 /* connect_source: call again on the next turn */

struct outboxd_source {
    const outboxd_config_t *conf;
    const outboxd_source_conf_t *src;
    const char *name;
    atomic_int *stop;
    /* The loop runs as steps on the pool of loop threads (loops.h); what
     * run() kept in locals lives here, since a step returns to wait. */
    outboxd_loop_t *loop;
    int phase;              /* PHASE_*: where the next step resumes */
    int rc;                 /* the last stream()/connect result, as run() had it */
    int connect_backoff_ms; /* pause before the next connection attempt */
    int64_t backoff_until_ms;
    int64_t stop_seen_ms; /* the stream saw the stop flag (0: not yet) */
    bool stream_waiting;  /* stream() returned to wait for the socket */
    atomic_bool done;
    int result; /* 0 clean, 1 fatal */

    outboxd_repl_t *repl;
    outboxd_repl_ident_t ident;
    outboxd_pgo_decoder_t *dec;
    outboxd_router_t *router;
    outboxd_cdc_t *cdc; /* NULL when no table has mode: cdc */
    outboxd_sink_t *sink;
    bool sink_ready;
    /* connect_source gave its thread up between fencing its producers and
     * reading its checkpoint (see there); the replication connection stays
     * open in command mode meanwhile. */
    bool connect_resume;
    bool restart_now; /* the stream was closed on purpose (a reload): reconnect at once */
    /* Domain types of the Debezium drop-in tables' columns, from the last
     * checks: the router renders them as their base types. */
    outboxd_pg_domains_t domains;
    bool reload_applied;       /* apply_reload switched to a new configuration */
    bool connect_created_slot; /* made by a connect whose checkpoint is not judged yet */
    outboxd_sink_pool_t *pool; /* relay.kafka_producers > 0: the shared producers */

    outboxd_checkpoint_t ck_committed; /* last checkpoint committed in Kafka */
    outboxd_checkpoint_t batch_ck;     /* last whole transaction in the open batch */
    bool batch_open;                   /* a Kafka transaction holds events */
    int batch_events;
    int64_t batch_deadline_ms;

    /* The PostgreSQL transaction being received. */
    bool in_txn;
    bool behind;   /* the newest transaction came from a backlog (BACKLOG_LAG_MS) */
    bool skip_txn; /* wholly covered by ck_committed */
    outboxd_lsn_t txn_commit_lsn;
    uint32_t txn_xid;
    int64_t txn_commit_time_us;
    int64_t txn_send_time_us; /* when the walsender sent its Begin (server clock) */
    int64_t txn_recv_time_us; /* when this relay read that Begin */
    int64_t change_idx;
    outboxd_lsn_t change_lsn;   /* WAL position of the last change received */
    int64_t change_lsn_ordinal; /* its ordinal among changes at that position */

    outboxd_lsn_t confirm_lsn;
    outboxd_lsn_t sent_lsn;
    int64_t last_status_ms;
    /* Liveness of the replication connection (relay.wal_receiver_timeout_ms):
     * when the last message came, and when we asked the server for a reply
     * because of the silence (0: no question outstanding). */
    int64_t last_recv_ms;
    int64_t ping_ms;

    /* Counters for the periodic log line; events and dead letters count
     * once their Kafka transaction committed. */
    uint64_t n_events, n_dead, n_commits, n_aborts, n_skipped;
    /* Time the source thread spent blocked in Kafka commits (the stream is
     * not read meanwhile), and the longest one: bench/profile.sh reads it. */
    uint64_t commit_wait_us, commit_max_us;
    uint64_t batch_n_events, batch_n_dead;
    uint64_t n_slot_recreated;
    uint64_t n_untrusted;  /* connects that found the checkpoint's LSNs unusable */
    bool slot_busy_logged; /* waiting for a slot another process holds */
    bool quiet_retry;      /* the next "retrying" line is not news */
    /* Relations pgoutput described in this process (oid and qualified
     * name), to tell a renamed table from a new one. */
    struct rel_name {
        uint32_t oid;
        char *name;
    } * rels;
    size_t n_rels;
    PGconn *watch_conn; /* normal connection for the periodic catalog check */
    int64_t last_watch_ms;

    /* Position of every record produced in the open Kafka transaction, in
     * produce order, to find the change behind a record Kafka refused. */
    outboxd_change_ctx_t *batch_pos;
    size_t n_batch_pos;
    bool pending_pos; /* batch_pos[n_batch_pos] is the record being produced */
    /* A change whose record Kafka refused for good: dead-lettered when the
     * rewound stream reaches it again. */
    bool refused_set;
    outboxd_lsn_t refused_commit_lsn;
    int64_t refused_idx;
    char refused_reason[256];
    /* The last change dead-lettered that way: if its dead-letter record is
     * refused as well, retrying cannot help. */
    bool forced_set;
    outboxd_lsn_t forced_commit_lsn;
    int64_t forced_idx;
    int forced_level;      /* 0: dead letter of normal size; 1: a small one */
    bool dlt_error_logged; /* the dead-letter topic refuses even small records */
    /* Several records were refused together (a whole batch): the changes up
     * to isolate_until are replayed one record per request to find the one
     * Kafka refuses, instead of dead-lettering a guess. */
    bool isolating;
    outboxd_change_ctx_t isolate_until;
    /* relay.missing_topic: wait: the topic waited for (ERROR logged once). */
    char waiting_topic[256];
    char missing_err[512];
    /* Backoff of rewinds that repeat without progress (see run). */
    int rewind_backoff_ms;
    uint64_t commits_at_rewind;
    outboxd_lsn_t confirm_at_rewind;
    int64_t stream_start_ms;
    int64_t batch_first_commit_us; /* commit time of the batch's oldest change */
    int64_t batch_first_send_us;   /* when the server sent that transaction */
    int64_t batch_first_recv_us;   /* when the relay read it */
    int64_t last_stats_ms;
    uint64_t logged_events;
    outboxd_stats_t *stats;         /* owned by the metrics registry; may be NULL */
    outboxd_retention_t *retention; /* replay_window's slot keeper; NULL: none */
    /* Initial snapshot of cdc tables and the stream's reconciliation with
     * it (snapshot.h); NULL while the source has none. */
    outboxd_snapshot_t *snap;

    /*
     * Commit pipelining (relay.pipeline_commits). A Kafka commit runs in a
     * helper thread while this thread reads the replication stream ahead
     * into the FIFO below (it alone touches the libpq connection; the
     * helper alone touches the sink until it is joined). The messages are
     * handled afterwards in their order, exactly as if read then, so every
     * position, checkpoint and confirmation rule is unchanged: only the
     * walsender keeps decoding while Kafka commits.
     */
    struct pend_msg {
        outboxd_repl_msg_t m; /* data points into pend_arena or to big */
        uint8_t *big;         /* own copy of a large message, or NULL */
    } * pend;                 /* ring of PEND_MAX_MSGS entries */
    size_t pend_head, pend_n;
    uint8_t *pend_arena; /* PEND_MAX_BYTES; appended at pend_tail */
    size_t pend_tail;
    size_t pend_bytes; /* arena bytes in use plus big copies */
    bool pend_failed;  /* the read-ahead ended with pend_err: reported in order */
    char pend_err[512];
    int wake[2]; /* the helper writes a byte when the commit returned */
    /* An idle source sleeps idle_poll_ms at a time instead of 100 ms (200
     * idle sources woke 2,000 times a second: 3.5% of a core; at 1 s, 200
     * times a second, 5.1 to 5.5% on a slower machine, most of it in the
     * pool's poller, whose every turn polls every parked source); stop and
     * reload write to idle_fd so they are not delayed by it, and what the
     * server sends (its keepalives asking for a reply) wakes it too. */
    int idle_fd;
    int idle_poll_ms;
    int64_t last_pollin_ms; /* the replication socket was last readable */
    atomic_bool committing; /* the helper thread owns the sink */
    atomic_bool commit_done;
    uint64_t n_read_ahead;     /* messages read while a commit ran */
    int64_t last_tick_seen_ms; /* coarse clock at the last stats tick */
    bool msg_from_libpq;       /* the message being handled is in libpq's buffer */
    bool no_read_ahead;        /* a commit now must not read the stream (see handle_change) */

    /* Configuration reload (outboxd_source_reload). The thread writes conf,
     * src and sink_conf under reload_mu; main reads them under it to know
     * which configurations this thread may still read. */
    pthread_mutex_t reload_mu;
    atomic_bool reload_pending;
    const outboxd_config_t *next_conf; /* handed over, not yet applied */
    const outboxd_source_conf_t *next_src;
    uint64_t next_gen;
    const outboxd_config_t *taking;    /* being applied */
    const outboxd_config_t *sink_conf; /* the sink and its producers were built from it */
    atomic_uint_fast64_t applied_gen;
    atomic_uint_fast64_t refused_gen; /* the last generation it could not build */
};

/* The idle loop's poll: long enough to matter, short enough for the
 * loop-stall health check, the liveness ping and the status updates to keep
 * their resolution (all three can be reloaded, so it is computed again). */
static int idle_poll_for(const outboxd_config_t *conf)
{
    int ms = IDLE_POLL_MS;
    if (conf->metrics_stall_timeout_ms > 0 && conf->metrics_stall_timeout_ms / 4 < ms)
        ms = conf->metrics_stall_timeout_ms / 4;
    if (conf->wal_receiver_timeout_ms > 0 && conf->wal_receiver_timeout_ms / 4 < ms)
        ms = conf->wal_receiver_timeout_ms / 4;
    if (conf->status_interval_ms > 0 && conf->status_interval_ms / 2 < ms)
        ms = conf->status_interval_ms / 2;
    return ms < BUSY_POLL_MS ? BUSY_POLL_MS : ms;
}

outboxd_source_t *outboxd_source_new(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                                     atomic_int *stop, char *errstr, size_t errstr_size)
{
    outboxd_source_t *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    s->conf = conf;
    s->src = src;
    s->name = src->name;
    s->stop = stop;
    s->sink_conf = conf;
    atomic_init(&s->done, false);
    atomic_init(&s->committing, false);
    atomic_init(&s->commit_done, false);
    s->wake[0] = s->wake[1] = -1;
    s->idle_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); /* -1: no long sleeps */
    s->idle_poll_ms = idle_poll_for(conf);
    atomic_init(&s->reload_pending, false);
    atomic_init(&s->applied_gen, 0);
    atomic_init(&s->refused_gen, 0);
    pthread_mutex_init(&s->reload_mu, NULL);
    s->dec = outboxd_pgo_decoder_new();
    s->retention = outboxd_retention_new(src, conf->wal_receiver_timeout_ms);
    s->batch_pos = calloc((size_t)conf->max_batch_events + 1, sizeof(*s->batch_pos));
    if (!s->dec || !s->batch_pos) {
        outboxd_pgo_decoder_destroy(s->dec);
        outboxd_retention_destroy(s->retention);
        free(s->batch_pos);
        if (s->idle_fd >= 0)
            close(s->idle_fd);
        snprintf(errstr, errstr_size, "out of memory");
        free(s);
        return NULL;
    }
    return s;
}

static bool stopping(const outboxd_source_t *s)
{
    return atomic_load(s->stop) != 0;
}

/* Sends a standby status update if due (or forced). Errors surface on the
 * next read, so they are only logged here. */
/* CLOCK_MONOTONIC (outboxd_now_ms's clock) at jiffy resolution, read
 * without a clock-source access. */
static int64_t coarse_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * An idle loop's wait: idle_poll_ms, or until just after the next status
 * update or catalog check is due if that comes first. Waking every
 * idle_poll_ms alone (status_interval_ms / 2 with the defaults) let both
 * slip by a whole period when a wake fell a millisecond short of the
 * interval: 15 s instead of 10. 5 ms past the due time covers the coarse
 * clock the status update reads; at least 50 ms, so a due time that a
 * round does not act on (no connection yet) cannot make a busy loop.
 */
static int idle_timeout(outboxd_source_t *s)
{
    int64_t interval = s->conf->status_interval_ms;
    int timeout = s->idle_poll_ms;
    if (interval <= 0)
        return timeout;
    int64_t now = outboxd_now_ms();
    int64_t due = s->last_status_ms + interval;
    if (s->src->n_tables > 0 && s->last_watch_ms + interval < due)
        due = s->last_watch_ms + interval;
    int64_t until = due + 5 - now;
    if (until < 50)
        until = 50;
    return until < timeout ? (int)until : timeout;
}

static void send_status(outboxd_source_t *s, bool force)
{
    if (!s->repl)
        return;
    int64_t now = force ? outboxd_now_ms() : coarse_now_ms();
    if (!force && s->sent_lsn == s->confirm_lsn &&
        now - s->last_status_ms < s->conf->status_interval_ms)
        return;
    char err[512];
    if (outboxd_repl_send_status(s->repl, s->confirm_lsn, false, err, sizeof(err)) < 0) {
        LOG_DEBUG(s->name, "%s", err);
        return;
    }
    s->sent_lsn = s->confirm_lsn;
    s->last_status_ms = now;
    outboxd_stats_confirmed(s->stats, s->sent_lsn);
    /* Only what Kafka holds is confirmed, so the window trails that. */
    outboxd_retention_confirmed(s->retention, s->sent_lsn, s->stats);
}

/* Called by the sink between retries of blocking Kafka calls, so that
 * wal_sender_timeout does not end our replication connection meanwhile. */
static void keepalive(void *opaque)
{
    outboxd_source_t *s = opaque;
    outboxd_stats_tick(s->stats); /* a blocking Kafka call is still progress */
    /* Called in the commit helper thread: the source thread owns the
     * replication connection then and keeps it alive itself. */
    if (!s->repl || atomic_load(&s->committing))
        return;
    if (outboxd_now_ms() - s->last_status_ms >= 1000)
        send_status(s, true);
}

static void confirm(outboxd_source_t *s, outboxd_lsn_t lsn)
{
    if (lsn > s->confirm_lsn)
        s->confirm_lsn = lsn;
}

/* Drops what was read ahead (the stream restarts from the checkpoint). */
static void pend_clear(outboxd_source_t *s)
{
    while (s->pend_n) {
        free(s->pend[s->pend_head].big);
        s->pend_head = (s->pend_head + 1) % PEND_MAX_MSGS;
        s->pend_n--;
    }
    s->pend_head = 0;
    s->pend_tail = 0;
    s->pend_bytes = 0;
    s->pend_failed = false;
}

static void close_stream(outboxd_source_t *s)
{
    pend_clear(s);
    outboxd_repl_destroy(s->repl);
    s->repl = NULL;
    outboxd_pgo_decoder_reset(s->dec);
    /* A snapshot request noted in a transaction whose Commit was not
     * reached would otherwise be acted on at the first Commit after the
     * reconnect: possibly one PostgreSQL resends from before the
     * checkpoint, moving it backwards. */
    outboxd_snapshot_forget_requests(s->snap);
    s->in_txn = false;
    s->skip_txn = false;
}

/*
 * After an aborted Kafka transaction: if Kafka refused one of its records for
 * good, remember that change so it goes to the dead-letter topic on replay
 * instead of failing the same way forever. When several records were refused
 * together (max.message.bytes applies to a whole batch, so with linger.ms
 * valid records fail beside the culprit), the transaction is first replayed
 * one record per request to find the one Kafka refuses. A dead-letter record
 * refused too is sent again cut small; if even that is refused the source
 * retries with backoff (never exits: the same row would stop it at every
 * start). Returns -2 only when the checkpoint record itself was refused.
 */
static int note_refused(outboxd_source_t *s)
{
    char reason[256];
    if (outboxd_sink_checkpoint_refused(s->sink, reason, sizeof(reason))) {
        LOG_ERROR(s->name,
                  "%s: the checkpoint topic %s is misconfigured (it must accept this source's "
                  "checkpoint records of a few hundred bytes: check its max.message.bytes and "
                  "the ACLs of this producer); fix it and restart",
                  reason, s->conf->checkpoint_topic);
        return -2;
    }
    uint64_t count = 0;
    uint64_t seq = outboxd_sink_refused(s->sink, reason, sizeof(reason), &count);
    size_t known = s->n_batch_pos + (s->pending_pos ? 1 : 0);
    if (!seq || seq > known)
        return 0;
    if (count > 1 && !s->isolating) {
        s->isolating = true;
        s->isolate_until = s->batch_pos[known - 1];
        outboxd_sink_set_one_by_one(s->sink, true);
        LOG_WARN(s->name,
                 "Kafka refused %llu records of one transaction together (%s; max.message.bytes "
                 "applies to a whole batch): replaying them one record per request to find the "
                 "one it refuses",
                 (unsigned long long)count, reason);
        return 0;
    }
    const outboxd_change_ctx_t *pos = &s->batch_pos[seq - 1];
    char lsn[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(pos->lsn, lsn);
    if (s->forced_set && s->forced_commit_lsn == pos->commit_lsn &&
        s->forced_idx == pos->change_index) {
        /* The dead-letter record of that change was refused as well. */
        if (s->forced_level == 0) {
            s->forced_level = 1;
            LOG_WARN(s->name,
                     "the dead-letter record for the change at %s was refused too (%s); sending it "
                     "again cut to %d bytes",
                     lsn, reason, SMALL_DEAD_LETTER_BYTES);
        } else if (!s->dlt_error_logged) {
            s->dlt_error_logged = true;
            LOG_ERROR(s->name,
                      "the dead-letter topic %s refuses even a %d-byte record for the change at "
                      "%s (%s): fix the dead-letter topic (max.message.bytes, ACLs); this source "
                      "retries with backoff, the others go on",
                      s->conf->dead_letter_topic, SMALL_DEAD_LETTER_BYTES, lsn, reason);
        }
        s->refused_set = true;
        s->refused_commit_lsn = pos->commit_lsn;
        s->refused_idx = pos->change_index;
        return 0;
    }
    s->refused_set = true;
    s->refused_commit_lsn = pos->commit_lsn;
    s->refused_idx = pos->change_index;
    s->forced_level = 0;
    s->dlt_error_logged = false;
    snprintf(s->refused_reason, sizeof(s->refused_reason), "%s", reason);
    LOG_WARN(s->name, "%s: the change at %s (xid %u) goes to the dead-letter topic on replay",
             reason, lsn, pos->xid);
    return 0;
}

/* Aborts what is in flight; the stream must be reopened afterwards. quiet:
 * an expected repeat (waiting for a topic), logged at info. */
static int rewind_stream_as(outboxd_source_t *s, const char *why, bool quiet)
{
    char err[512];
    outboxd_stats_rewound(s->stats);
    if (outboxd_sink_in_txn(s->sink)) {
        s->n_aborts++;
        outboxd_stats_aborted(s->stats);
        if (outboxd_sink_abort(s->sink, err, sizeof(err)) == OUTBOXD_SINK_FATAL) {
            LOG_ERROR(s->name, "%s", err);
            return -2;
        }
    }
    if (note_refused(s) < 0)
        return -2;
    if (!outboxd_sink_ready(s->sink))
        s->sink_ready = false; /* new producers: init and read the checkpoint again */
    s->n_batch_pos = 0;
    char lsn[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(s->ck_committed.commit_lsn, lsn);
    if (quiet)
        LOG_INFO(s->name, "%s; rewinding to checkpoint %s (changes %lld) and reconnecting", why,
                 lsn, (long long)s->ck_committed.changes);
    else
        LOG_WARN(s->name, "%s; rewinding to checkpoint %s (changes %lld) and reconnecting", why,
                 lsn, (long long)s->ck_committed.changes);
    s->batch_open = false;
    s->batch_events = 0;
    s->batch_n_events = s->batch_n_dead = 0;
    close_stream(s);
    return -1;
}

static int rewind_stream(outboxd_source_t *s, const char *why)
{
    return rewind_stream_as(s, why, false);
}

/*
 * relay.missing_topic: wait. One ERROR per topic naming it and the fix; the
 * source then rewinds with a growing backoff (see run) and tries again, so
 * the event is published as soon as the topic exists. Other sources go on.
 */
static int wait_for_topic(outboxd_source_t *s, const char *topic)
{
    if (strcmp(s->waiting_topic, topic) != 0) {
        snprintf(s->waiting_topic, sizeof(s->waiting_topic), "%s", topic);
        LOG_ERROR(s->name,
                  "%s: this source waits for it (relay.missing_topic: wait) and retries with "
                  "backoff up to relay.reconnect_max_backoff_ms; fix: create topic '%s' "
                  "(kafka-topics.sh --create --topic %s ...), or set relay.missing_topic to "
                  "create (outboxd creates missing topics) or dead_letter (their rows go to %s)",
                  s->missing_err, topic, topic, s->conf->dead_letter_topic);
    }
    char why[600];
    snprintf(why, sizeof(why), "waiting for topic '%s' to be created", topic);
    return rewind_stream_as(s, why, true);
}

/* ---- commit pipelining (relay.pipeline_commits) ---- */

static bool pend_room(const outboxd_source_t *s)
{
    return !s->pend_failed && s->pend_n < PEND_MAX_MSGS && s->pend_bytes < PEND_MAX_BYTES &&
           s->pend_tail + PEND_BIG_BYTES <= PEND_MAX_BYTES;
}

/* Appends a message read ahead (its data is copied: libpq reuses its
 * buffer). A message of the arena is never moved while it may be in use. */
static bool pend_push(outboxd_source_t *s, const outboxd_repl_msg_t *m)
{
    struct pend_msg *e = &s->pend[(s->pend_head + s->pend_n) % PEND_MAX_MSGS];
    e->m = *m;
    e->big = NULL;
    /* When a transaction was read, for the latency split (handle_data):
     * only its Begin needs the clock. */
    if (m->kind == OUTBOXD_REPL_DATA && m->len && m->data[0] == 'B')
        e->m.recv_time_us = outboxd_wall_us();
    if (m->kind == OUTBOXD_REPL_DATA && m->len) {
        uint8_t *dst;
        if (m->len > PEND_BIG_BYTES) {
            if (!(e->big = malloc(m->len)))
                return false;
            dst = e->big;
        } else {
            dst = s->pend_arena + s->pend_tail;
            s->pend_tail += m->len;
        }
        memcpy(dst, m->data, m->len);
        e->m.data = dst;
        s->pend_bytes += m->len;
    }
    s->pend_n++;
    return true;
}

/* Releases the oldest message once handled; an empty FIFO starts its arena
 * over, and a FIFO whose front half is free moves down (no message is in
 * use between two handled messages). */
static void pend_pop(outboxd_source_t *s)
{
    struct pend_msg *e = &s->pend[s->pend_head];
    if (e->m.kind == OUTBOXD_REPL_DATA)
        s->pend_bytes -= e->m.len;
    free(e->big);
    e->big = NULL;
    s->pend_head = (s->pend_head + 1) % PEND_MAX_MSGS;
    s->pend_n--;
    if (!s->pend_n) {
        s->pend_head = 0;
        s->pend_tail = 0;
    }
}

static void pend_compact(outboxd_source_t *s)
{
    if (!s->pend_n || s->pend_tail < PEND_MAX_BYTES / 2)
        return;
    /* Arena messages are stored in FIFO order: the oldest one starts the
     * live region. */
    size_t start = s->pend_tail;
    for (size_t i = 0; i < s->pend_n; i++) {
        const struct pend_msg *e = &s->pend[(s->pend_head + i) % PEND_MAX_MSGS];
        if (e->m.kind == OUTBOXD_REPL_DATA && e->m.len && !e->big) {
            start = (size_t)(e->m.data - s->pend_arena);
            break;
        }
    }
    if (start < PEND_MAX_BYTES / 4)
        return;
    memmove(s->pend_arena, s->pend_arena + start, s->pend_tail - start);
    for (size_t i = 0; i < s->pend_n; i++) {
        struct pend_msg *e = &s->pend[(s->pend_head + i) % PEND_MAX_MSGS];
        if (e->m.kind == OUTBOXD_REPL_DATA && e->m.len && !e->big)
            e->m.data -= start;
    }
    s->pend_tail -= start;
}

typedef struct commit_job {
    outboxd_source_t *s;
    const outboxd_checkpoint_t *ck;
    outboxd_sink_status_t st;
    char err[512];
} commit_job_t;

static void *commit_thread(void *arg)
{
    commit_job_t *job = arg;
    outboxd_source_t *s = job->s;
    /* A new thread inherits its creator's name (outboxd-loop). */
    pthread_setname_np(pthread_self(), "outboxd-commit");
    job->st = outboxd_sink_commit(s->sink, job->ck, job->err, sizeof(job->err));
    atomic_store(&s->commit_done, true);
    ssize_t w = write(s->wake[1], "c", 1);
    (void)w; /* the pipe is only a wake-up; commit_done is the truth */
    return NULL;
}

static bool pipeline_ready(outboxd_source_t *s)
{
    if (!s->conf->pipeline_commits || !s->repl)
        return false;
    if (s->wake[0] >= 0)
        return true;
    if (!s->pend)
        s->pend = calloc(PEND_MAX_MSGS, sizeof(*s->pend));
    if (!s->pend_arena)
        s->pend_arena = malloc(PEND_MAX_BYTES);
    if (!s->pend || !s->pend_arena || pipe(s->wake) < 0) {
        s->wake[0] = s->wake[1] = -1;
        return false; /* commit without read-ahead */
    }
    for (int i = 0; i < 2; i++) {
        fcntl(s->wake[i], F_SETFL, fcntl(s->wake[i], F_GETFL) | O_NONBLOCK);
        fcntl(s->wake[i], F_SETFD, FD_CLOEXEC);
    }
    return true;
}

/*
 * While the helper commits: reads the stream ahead into the FIFO (bounded),
 * answers keepalives that ask for a reply and sends the periodic status
 * update (the position confirmed before the commit), so wal_sender_timeout
 * never runs out however long the commit takes. A read error is queued
 * behind what was read, and nothing more is read.
 */
static void read_ahead_until_committed(outboxd_source_t *s)
{
    while (!atomic_load(&s->commit_done)) {
        bool room = !stopping(s) && pend_room(s);
        for (int k = 0; room && k < 1024 && !atomic_load(&s->commit_done); k++) {
            outboxd_repl_msg_t m;
            char err[512];
            if (outboxd_repl_next(s->repl, &m, err, sizeof(err)) < 0) {
                snprintf(s->pend_err, sizeof(s->pend_err), "%s", err);
                s->pend_failed = true;
                break;
            }
            if (m.kind == OUTBOXD_REPL_NONE)
                break;
            s->last_recv_ms = coarse_now_ms(); /* the server is alive (check_liveness) */
            s->ping_ms = 0;
            /* The server's WAL end as read, so lag metrics count what waits
             * in the ring (it is not recorded again when handled). */
            outboxd_stats_wal_end(s->stats, m.wal_end);
            if (m.kind == OUTBOXD_REPL_KEEPALIVE && m.reply_requested) {
                send_status(s, true);
                m.reply_requested = false;
            }
            if (!pend_push(s, &m)) {
                snprintf(s->pend_err, sizeof(s->pend_err), "out of memory reading ahead");
                s->pend_failed = true;
                break;
            }
            s->n_read_ahead++;
            room = pend_room(s);
        }
        if (outboxd_now_ms() - s->last_status_ms >= 1000)
            send_status(s, true);
        if (atomic_load(&s->commit_done))
            break;
        struct pollfd pfd[2] = {{.fd = s->wake[0], .events = POLLIN},
                                {.fd = outboxd_repl_fd(s->repl), .events = POLLIN}};
        (void)poll(pfd, room ? 2 : 1, 100);
    }
    char drain[16];
    while (read(s->wake[0], drain, sizeof(drain)) > 0)
        ;
}

/* outboxd_sink_commit, with the stream read ahead meanwhile when enabled. */
static outboxd_sink_status_t sink_commit(outboxd_source_t *s, const outboxd_checkpoint_t *ck,
                                         char *err, size_t err_size)
{
    if (s->no_read_ahead || !pipeline_ready(s))
        return outboxd_sink_commit(s->sink, ck, err, err_size);
    commit_job_t job = {.s = s, .ck = ck, .st = OUTBOXD_SINK_FATAL};
    atomic_store(&s->commit_done, false);
    atomic_store(&s->committing, true);
    pthread_t helper;
    if (pthread_create(&helper, NULL, commit_thread, &job) != 0) {
        atomic_store(&s->committing, false);
        return outboxd_sink_commit(s->sink, ck, err, err_size);
    }
    read_ahead_until_committed(s);
    pthread_join(helper, NULL);
    atomic_store(&s->committing, false);
    snprintf(err, err_size, "%s", job.err);
    return job.st;
}

/* Commits the open batch. Returns 0, -1 (rewound), -2 (fatal). */
static int commit_batch(outboxd_source_t *s)
{
    if (!s->batch_open)
        return 0;
    outboxd_checkpoint_t ck;
    if (s->in_txn) {
        /* Mid-transaction (batch full or interval over): record how many of
         * its changes are covered; nothing new can be confirmed yet. */
        ck = s->ck_committed;
        ck.commit_lsn = s->txn_commit_lsn;
        ck.end_lsn = 0;
        ck.changes = s->change_idx;
        /* The position of the last change received (and so covered) is
         * what a replay skips by; the count is kept for older readers. */
        ck.last_lsn = s->change_idx > 0 ? s->change_lsn : 0;
        ck.last_lsn_n = s->change_idx > 0 ? s->change_lsn_ordinal + 1 : 0;
    } else {
        ck = s->batch_ck;
        ck.last_lsn = 0;
        ck.last_lsn_n = 0;
    }
    /* The snapshot's progress rides along in every checkpoint. */
    memcpy(ck.snapshot, s->ck_committed.snapshot, sizeof(ck.snapshot));
    ck.timeline = s->ident.timeline;
    snprintf(ck.system_id, sizeof(ck.system_id), "%s", s->ident.system_id);
    snprintf(ck.database, sizeof(ck.database), "%s", s->ident.database);
    snprintf(ck.slot, sizeof(ck.slot), "%s", s->src->slot);
    char err[512];
    /* The commit can block for a while (a broker that just came back):
     * give wal_sender_timeout a fresh start first. */
    keepalive(s);
    int64_t t0 = outboxd_now_us();
    int64_t wall0 = outboxd_wall_us();
    outboxd_sink_status_t st = sink_commit(s, &ck, err, sizeof(err));
    if (st == OUTBOXD_SINK_FATAL) {
        LOG_ERROR(s->name, "%s", err);
        return -2;
    }
    if (st != OUTBOXD_SINK_OK) {
        s->n_aborts++;
        outboxd_stats_aborted(s->stats);
        s->batch_open = false;
        s->batch_events = 0;
        return rewind_stream(s, err);
    }
    /* Committed: events and checkpoint are durable in Kafka; what must run
     * after a commit goes below (the confirmation comes last). */
    s->n_commits++;
    int64_t took_us = outboxd_now_us() - t0;
    s->commit_wait_us += (uint64_t)took_us;
    if ((uint64_t)took_us > s->commit_max_us)
        s->commit_max_us = (uint64_t)took_us;
    outboxd_stats_committed(s->stats, s->batch_n_events, s->batch_n_dead, took_us);
    if (!s->in_txn)
        outboxd_stats_caught_up(s->stats);
    s->n_events += s->batch_n_events;
    s->n_dead += s->batch_n_dead;
    s->batch_n_events = s->batch_n_dead = 0;
    if (outboxd_log_get_level() <= OUTBOXD_LOG_DEBUG) {
        char lsn[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(ck.commit_lsn, lsn);
        /* How far behind PostgreSQL's commit the batch started (WAL send +
         * decode + wait for the previous Kafka commit), and the commit
         * itself. The oldest transaction's way there is split at the
         * walsender's send time (server clock: decoding on the server) and
         * the moment this relay read it (socket, and a read delayed by
         * handling or a commit); bench/latency.sh prints the split. */
        LOG_DEBUG(s->name,
                  "committed %d events in %.1f ms (commit began %.1f ms after the batch's first "
                  "PostgreSQL commit; server sent it at %.1f ms, relay read it at %.1f ms), "
                  "checkpoint %s changes %lld",
                  s->batch_events, (double)(outboxd_now_us() - t0) / 1000.0,
                  (double)(wall0 - s->batch_first_commit_us) / 1000.0,
                  (double)(s->batch_first_send_us - s->batch_first_commit_us) / 1000.0,
                  (double)(s->batch_first_recv_us - s->batch_first_commit_us) / 1000.0, lsn,
                  (long long)ck.changes);
    }
    s->ck_committed = ck;
    s->batch_open = false;
    s->batch_events = 0;
    if (s->isolating && outboxd_checkpoint_covers(&ck, s->isolate_until.commit_lsn,
                                                  s->isolate_until.change_index)) {
        s->isolating = false;
        outboxd_sink_set_one_by_one(s->sink, false);
        LOG_INFO(s->name, "the refused transaction is replayed; producing in batches again");
    }
    if (ck.changes < 0) {
        confirm(s, ck.end_lsn);
        send_status(s, true);
    }
    return 0;
}

static int publish(outboxd_source_t *s, const outboxd_record_t *rec,
                   const outboxd_change_ctx_t *ctx)
{
    if (!s->batch_open)
        s->n_batch_pos = 0;
    char err[512];
    /* Room for one more entry is reserved, so a record refused by the
     * produce call itself is found too. */
    s->batch_pos[s->n_batch_pos] = *ctx;
    s->pending_pos = true;
    outboxd_sink_status_t st = outboxd_sink_produce(s->sink, rec, err, sizeof(err));
    if (st == OUTBOXD_SINK_FATAL) {
        s->pending_pos = false;
        LOG_ERROR(s->name, "%s", err);
        return -2;
    }
    if (st == OUTBOXD_SINK_MISSING_TOPIC) {
        /* Nothing produced; the caller applies relay.missing_topic. */
        s->pending_pos = false;
        snprintf(s->missing_err, sizeof(s->missing_err), "%s", err);
        return -3;
    }
    if (st != OUTBOXD_SINK_OK) {
        int rc = rewind_stream(s, err);
        s->pending_pos = false;
        return rc;
    }
    s->pending_pos = false;
    if (s->waiting_topic[0] && strcmp(rec->topic, s->waiting_topic) == 0) {
        LOG_INFO(s->name, "topic '%s' exists now; its events flow again", s->waiting_topic);
        s->waiting_topic[0] = '\0';
    }
    outboxd_stats_produced(s->stats, rec->key_len + rec->value_len);
    if (!s->batch_open) {
        s->batch_open = true;
        s->batch_deadline_ms = outboxd_now_ms() + s->conf->commit_interval_ms;
        s->batch_first_commit_us = s->txn_commit_time_us;
        s->batch_first_send_us = s->txn_send_time_us;
        s->batch_first_recv_us = s->txn_recv_time_us;
    }
    s->batch_events++;
    if (s->n_batch_pos < (size_t)s->conf->max_batch_events)
        s->n_batch_pos++;
    return 0;
}

static bool batch_full(const outboxd_source_t *s)
{
    return s->batch_open && s->batch_events >= s->conf->max_batch_events;
}

/* CDC: the emit callback of outboxd_cdc_change (cdc.h). */
typedef struct cdc_emit {
    outboxd_source_t *s;
    const outboxd_change_ctx_t *ctx;
    char topic[256]; /* a topic that does not exist (publish returned -3) */
} cdc_emit_t;

static int cdc_emit(void *opaque, const outboxd_record_t *rec, bool dead_letter, const char *reason)
{
    cdc_emit_t *e = opaque;
    int rc = publish(e->s, rec, e->ctx);
    if (rc == -3)
        snprintf(e->topic, sizeof(e->topic), "%s", rec->topic);
    if (rc == 0 && dead_letter) {
        char lsn[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(e->ctx->lsn, lsn);
        LOG_WARN(e->s->name, "change at %s (xid %u) sent to dead-letter topic %s: %s", lsn,
                 e->ctx->xid, e->s->conf->dead_letter_topic, reason ? reason : "");
        e->s->batch_n_dead++;
    } else if (rc == 0) {
        e->s->batch_n_events++;
    }
    return rc;
}

/* One change of cdc tables through cdc.c: the same publish path (and Kafka
 * transaction, and checkpoint) as outbox events. Returns 1 when msg is not
 * a change of a cdc table (the router takes it), else as handle_change. */
static int handle_cdc(outboxd_source_t *s, const outboxd_pgo_msg_t *msg,
                      const outboxd_change_ctx_t *ctx)
{
    int nrels = 1; /* relations of this change: one, or the truncated ones */
    char op;
    const outboxd_pgo_tuple_t *before = NULL, *after = NULL;
    switch (msg->kind) {
    case OUTBOXD_PGO_INSERT:
    case OUTBOXD_PGO_UPDATE:
    case OUTBOXD_PGO_DELETE:
        op = msg->kind == OUTBOXD_PGO_INSERT ? 'c' : msg->kind == OUTBOXD_PGO_UPDATE ? 'u' : 'd';
        if (msg->u.change.old_kind)
            before = &msg->u.change.old_tuple;
        if (msg->kind != OUTBOXD_PGO_DELETE)
            after = &msg->u.change.new_tuple;
        break;
    case OUTBOXD_PGO_TRUNCATE:
        op = 't';
        nrels = msg->u.truncate.nrels;
        break;
    default:
        return 1;
    }
    outboxd_cdc_source_t si = {
        .lsn = ctx->lsn,
        .commit_lsn = ctx->commit_lsn,
        .xid = ctx->xid,
        .commit_time_us = ctx->commit_time_us,
        .snapshot = "false",
    };
    bool any = false;
    for (int i = 0; i < nrels; i++) {
        const outboxd_pgo_relation_t *rel =
            op == 't' ? outboxd_pgo_relation_get(s->dec, msg->u.truncate.rel_oids[i])
                      : msg->u.change.rel;
        if (!rel || !outboxd_cdc_table(s->cdc, rel->nspname, rel->relname))
            continue;
        /* A TRUNCATE of several tables, some of them read by a snapshot
         * after it (their rows are the ones left): not for those, or
         * consumers would drop rows that exist. */
        if (op == 't' && outboxd_snapshot_truncate_reflected(s->snap, rel, ctx->commit_lsn))
            continue;
        any = true;
        cdc_emit_t em = {.s = s, .ctx = ctx};
        char err[512];
        int r;
        if (s->refused_set && s->refused_commit_lsn == ctx->commit_lsn &&
            s->refused_idx == ctx->change_index) {
            /* Kafka refused this change's event for good: dead-letter it. */
            s->refused_set = false;
            s->forced_set = true;
            s->forced_commit_lsn = ctx->commit_lsn;
            s->forced_idx = ctx->change_index;
            r = outboxd_cdc_dead_letter(s->cdc, rel, op, before, after, &si, s->refused_reason,
                                        cdc_emit, &em, err, sizeof(err));
        } else {
            r = outboxd_cdc_change(s->cdc, rel, op, before, after, &si, cdc_emit, &em, err,
                                   sizeof(err));
        }
        if (r == OUTBOXD_CDC_RETRY)
            return rewind_stream(s, err);
        if (r == -3 && s->conf->missing_topic == OUTBOXD_MISSING_TOPIC_DEAD_LETTER) {
            char reason[600];
            snprintf(reason, sizeof(reason), "%s (relay.missing_topic: dead_letter)",
                     s->missing_err);
            r = outboxd_cdc_dead_letter(s->cdc, rel, op, before, after, &si, reason, cdc_emit, &em,
                                        err, sizeof(err));
            if (r == OUTBOXD_CDC_RETRY)
                return rewind_stream(s, err);
        }
        if (r == -3)
            return wait_for_topic(s, em.topic);
        if (r < 0)
            return r;
    }
    return any ? 0 : 1; /* the router sees what it saw before cdc existed */
}

static int handle_change(outboxd_source_t *s, const outboxd_pgo_msg_t *msg, outboxd_lsn_t wal_start)
{
    if (msg->kind == OUTBOXD_PGO_MESSAGE && !msg->u.message.transactional && !s->in_txn) {
        /* Sent outside any transaction; the router warns and ignores it. */
        outboxd_change_ctx_t ctx = {.lsn = wal_start};
        outboxd_record_t rec;
        char err[512];
        (void)outboxd_router_route(s->router, msg, &ctx, &rec, err, sizeof(err));
        return 0;
    }
    if (!s->in_txn) {
        LOG_ERROR(s->name, "protocol error: %s outside a transaction",
                  outboxd_pgo_kind_name(msg->kind));
        return rewind_stream(s, "unexpected message");
    }
    if (batch_full(s)) {
        /* Split here: the transaction goes on, and msg is used after the
         * commit. Read from libpq, its data lives in libpq's buffer, which
         * the next read (reading ahead) would free: commit without. */
        s->no_read_ahead = s->msg_from_libpq;
        int rc = commit_batch(s);
        s->no_read_ahead = false;
        if (rc < 0)
            return rc;
    }
    int64_t idx = s->change_idx++;
    if (idx > 0 && wal_start == s->change_lsn) {
        s->change_lsn_ordinal++;
    } else {
        s->change_lsn = wal_start;
        s->change_lsn_ordinal = 0;
    }
    outboxd_change_pos_t cpos = {
        .index = idx, .lsn = wal_start, .lsn_ordinal = s->change_lsn_ordinal};
    if (s->skip_txn ||
        outboxd_checkpoint_covers_change(&s->ck_committed, s->txn_commit_lsn, &cpos)) {
        s->n_skipped++;
        outboxd_stats_skipped(s->stats, 1);
        return 0;
    }
    if (s->src->signal_table && msg->kind == OUTBOXD_PGO_INSERT &&
        outboxd_snapshot_is_signal(s->src, msg->u.change.rel)) {
        /* An ad-hoc snapshot request, acted on at its Commit. */
        char serr[512];
        if (!s->snap &&
            !(s->snap = outboxd_snapshot_new(s->conf, s->src, s->stop, serr, sizeof(serr))))
            return rewind_stream(s, serr);
        outboxd_snapshot_signal(s->snap, msg->u.change.rel, &msg->u.change.new_tuple);
        return 0;
    }
    if (s->snap) {
        /* Already in the rows a snapshot published (see snapshot.c). */
        char serr[512];
        int rf =
            outboxd_snapshot_reflected(s->snap, s->dec, msg, s->txn_commit_lsn, serr, sizeof(serr));
        if (rf < 0)
            return rewind_stream(s, serr);
        if (rf > 0) {
            s->n_skipped++;
            outboxd_stats_skipped(s->stats, 1);
            return 0;
        }
    }
    outboxd_change_ctx_t ctx = {
        .lsn = wal_start,
        .commit_lsn = s->txn_commit_lsn,
        .xid = s->txn_xid,
        .commit_time_us = s->txn_commit_time_us,
        .change_index = idx,
    };
    if (s->cdc) {
        int cr = handle_cdc(s, msg, &ctx);
        if (cr != 1)
            return cr;
    }
    outboxd_record_t rec;
    char err[512];
    int r;
    if (s->refused_set && s->refused_commit_lsn == s->txn_commit_lsn && s->refused_idx == idx) {
        s->refused_set = false;
        s->forced_set = true;
        s->forced_commit_lsn = s->txn_commit_lsn;
        s->forced_idx = idx;
        r = outboxd_router_dead_letter_max(s->router, msg, &ctx, s->refused_reason,
                                           s->forced_level ? SMALL_DEAD_LETTER_BYTES : 0, &rec, err,
                                           sizeof(err));
    } else {
        r = outboxd_router_route(s->router, msg, &ctx, &rec, err, sizeof(err));
    }
    if (r < 0) {
        /* Not a property of the row (OOM, Avro library failure): retry. */
        return rewind_stream(s, err);
    }
    if (r == OUTBOXD_ROUTE_IGNORE)
        return 0;
    int rc = publish(s, &rec, &ctx);
    if (rc == -3 && r == OUTBOXD_ROUTE_EVENT &&
        s->conf->missing_topic == OUTBOXD_MISSING_TOPIC_DEAD_LETTER) {
        char reason[600];
        snprintf(reason, sizeof(reason), "%s (relay.missing_topic: dead_letter)", s->missing_err);
        r = outboxd_router_dead_letter(s->router, msg, &ctx, reason, &rec, err, sizeof(err));
        if (r < 0)
            return rewind_stream(s, err);
        rc = r == OUTBOXD_ROUTE_DEAD_LETTER ? publish(s, &rec, &ctx) : 0;
        if (r != OUTBOXD_ROUTE_DEAD_LETTER)
            return 0;
    }
    if (rc == -3)
        return wait_for_topic(s, rec.topic);
    if (rc < 0)
        return rc;
    if (r == OUTBOXD_ROUTE_DEAD_LETTER) {
        char lsn[OUTBOXD_LSN_STRLEN];
        outboxd_lsn_format(wal_start, lsn);
        LOG_WARN(s->name, "change at %s (xid %u) sent to dead-letter topic %s: %s", lsn, s->txn_xid,
                 s->conf->dead_letter_topic, err);
        s->batch_n_dead++;
    } else {
        s->batch_n_events++;
    }
    /* A full batch is committed when the next message shows whether this
     * change ended its transaction (then the checkpoint covers it whole). */
    return 0;
}

static bool is_configured(const outboxd_source_t *s, const char *nsp, const char *rel)
{
    for (size_t i = 0; i < s->src->n_tables; i++)
        if (strcmp(s->src->tables[i].schema, nsp) == 0 && strcmp(s->src->tables[i].name, rel) == 0)
            return true;
    return false;
}

/*
 * Remembers the name of each relation pgoutput describes. A known oid under a
 * new name is a renamed table: when the old or the new name is a configured
 * table, rows now go somewhere the configuration does not say (a renamed
 * outbox's rows are ignored under its new name, a new table under the old
 * name is not in a FOR TABLE publication), so say it loudly.
 */
static int note_relation(outboxd_source_t *s, const outboxd_pgo_relation_t *rel)
{
    char name[300];
    snprintf(name, sizeof(name), "%s.%s", rel->nspname, rel->relname);
    for (size_t i = 0; i < s->n_rels; i++) {
        if (s->rels[i].oid != rel->oid)
            continue;
        if (strcmp(s->rels[i].name, name) != 0) {
            const char *dot = strchr(s->rels[i].name, '.');
            char oldnsp[300];
            snprintf(oldnsp, sizeof(oldnsp), "%.*s", dot ? (int)(dot - s->rels[i].name) : 0,
                     s->rels[i].name);
            bool old_conf = dot && is_configured(s, oldnsp, dot + 1);
            bool new_conf = is_configured(s, rel->nspname, rel->relname);
            if (old_conf || new_conf)
                LOG_ERROR(s->name,
                          "published table %s (oid %u) was renamed to %s: %s; rename it back, or "
                          "configure the table under its new name (and add the new table %s to "
                          "publication %s if one was created)",
                          s->rels[i].name, rel->oid, name,
                          new_conf ? "its rows are now relayed as the configured table of that "
                                     "name"
                                   : "its rows (changes at this point on) are NOT relayed, and "
                                     "rows of a table created under the old name reach this "
                                     "source only if the publication includes it",
                          s->rels[i].name, s->src->publication);
            char *copy = strdup(name);
            if (copy) {
                free(s->rels[i].name);
                s->rels[i].name = copy;
            }
        }
        return 0;
    }
    struct rel_name *grown = realloc(s->rels, (s->n_rels + 1) * sizeof(*grown));
    char *copy = strdup(name);
    if (!grown || !copy) {
        free(copy);
        if (grown)
            s->rels = grown;
        return 0; /* only a diagnostic is lost */
    }
    s->rels = grown;
    s->rels[s->n_rels].oid = rel->oid;
    s->rels[s->n_rels].name = copy;
    s->n_rels++;
    return 0;
}

/*
 * At the Commit of a transaction that inserted a snapshot signal: the
 * request is committed to Kafka together with that transaction (so it
 * survives a crash: the next start resumes the run before streaming), then
 * the tables are read while the stream's connection stays open and is kept
 * alive; changes streamed afterwards are reconciled with the rows read (see
 * snapshot.c). Returns 0, -1 (stream closed, reconnect), -2 (fatal).
 */
static int adhoc_snapshot(outboxd_source_t *s, outboxd_lsn_t end_lsn)
{
    char err[1024];
    /* The request changes the snapshot progress in ck_committed, which is
     * what Kafka holds only once the commit below succeeds: keep the old
     * one to put back if it fails (else the next connect would run a
     * snapshot Kafka never heard of, and the resent signal a second). */
    char before[OUTBOXD_CHECKPOINT_SNAPSHOT_MAX];
    memcpy(before, s->ck_committed.snapshot, sizeof(before));
    if (outboxd_snapshot_apply_request(s->snap, &s->ck_committed, err, sizeof(err)) < 0) {
        LOG_ERROR(s->name, "%s", err);
        return -2;
    }
    s->batch_ck.commit_lsn = s->txn_commit_lsn;
    s->batch_ck.end_lsn = end_lsn;
    s->batch_ck.changes = -1;
    if (!s->batch_open) {
        s->batch_open = true;
        s->batch_deadline_ms = outboxd_now_ms();
    }
    int rc = commit_batch(s);
    if (rc < 0) {
        memcpy(s->ck_committed.snapshot, before, sizeof(before));
        return rc;
    }
    outboxd_snapshot_io_t io = {
        .sink = s->sink,
        .cdc = s->cdc,
        .ident = &s->ident,
        .ck = &s->ck_committed,
        .stop = s->stop,
        .stats = s->stats,
        .keepalive = keepalive,
        .opaque = s,
    };
    rc = outboxd_snapshot_run(s->snap, &io);
    if (rc == -2)
        return -2;
    if (rc < 0) {
        close_stream(s); /* the next connect resumes the run */
        return -1;
    }
    return 0;
}

/* Returns 0, -1 (stream closed, reconnect), -2 (fatal). */
static int handle_data(outboxd_source_t *s, const outboxd_repl_msg_t *m)
{
    outboxd_pgo_msg_t msg;
    char err[512];
    if (outboxd_pgo_decode(s->dec, m->data, m->len, &msg, err, sizeof(err)) < 0)
        return rewind_stream(s, err);
    switch (msg.kind) {
    case OUTBOXD_PGO_BEGIN:
        if (s->in_txn)
            return rewind_stream(s, "protocol error: Begin inside a transaction");
        s->in_txn = true;
        s->txn_commit_lsn = msg.u.begin.final_lsn;
        s->txn_xid = msg.u.begin.xid;
        s->txn_commit_time_us = msg.u.begin.commit_ts + OUTBOXD_PG_EPOCH_OFFSET_US;
        s->txn_send_time_us = m->send_time_us;
        s->txn_recv_time_us = m->recv_time_us ? m->recv_time_us : outboxd_wall_us();
        s->behind = msg.u.begin.commit_ts != 0 &&
                    s->txn_send_time_us - s->txn_commit_time_us >= BACKLOG_LAG_MS * 1000;
        s->change_idx = 0;
        s->change_lsn = 0;
        s->change_lsn_ordinal = 0;
        outboxd_stats_txn_begin(s->stats, s->txn_commit_time_us);
        s->skip_txn = outboxd_checkpoint_covers(&s->ck_committed, s->txn_commit_lsn, -1);
        return 0;
    case OUTBOXD_PGO_COMMIT:
        if (!s->in_txn)
            return rewind_stream(s, "protocol error: Commit without Begin");
        s->in_txn = false;
        if (outboxd_snapshot_requested(s->snap) && !s->skip_txn &&
            !outboxd_checkpoint_covers(&s->ck_committed, s->txn_commit_lsn, -1))
            return adhoc_snapshot(s, msg.u.commit.end_lsn);
        if (s->batch_open) {
            s->batch_ck.commit_lsn = s->txn_commit_lsn;
            s->batch_ck.end_lsn = msg.u.commit.end_lsn;
            s->batch_ck.changes = -1;
            if (batch_full(s))
                return commit_batch(s);
        } else {
            /* Nothing of it is in flight: skipped, ignored, or committed
             * already in earlier parts. */
            confirm(s, msg.u.commit.end_lsn);
            outboxd_stats_caught_up(s->stats);
        }
        return 0;
    case OUTBOXD_PGO_INSERT:
    case OUTBOXD_PGO_UPDATE:
    case OUTBOXD_PGO_DELETE:
    case OUTBOXD_PGO_TRUNCATE:
    case OUTBOXD_PGO_MESSAGE:
        return handle_change(s, &msg, m->wal_start);
    case OUTBOXD_PGO_RELATION:
        /* The table may have changed: bind its columns again. */
        outboxd_router_forget(s->router, msg.u.relation->oid);
        if (s->cdc)
            outboxd_cdc_forget(s->cdc, msg.u.relation->oid);
        return note_relation(s, msg.u.relation);
    case OUTBOXD_PGO_TYPE:
    case OUTBOXD_PGO_ORIGIN:
        return 0;
    default:
        /* Streaming and two-phase messages are not requested (proto 1). */
        snprintf(err, sizeof(err), "unexpected pgoutput message %s",
                 outboxd_pgo_kind_name(msg.kind));
        return rewind_stream(s, err);
    }
}

static void log_stats(outboxd_source_t *s, bool force)
{
    int64_t now = outboxd_now_ms();
    if (!force && now - s->last_stats_ms < STATS_LOG_INTERVAL_MS)
        return;
    s->last_stats_ms = now;
    /* Every interval, changed or not: an unchanged line is news too (an
     * idle outbox, or a stalled stream). */
    s->logged_events = s->n_events + s->n_dead;
    outboxd_router_stats_t rs = {0};
    if (s->router)
        outboxd_router_stats(s->router, &rs);
    char lsn[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(s->confirm_lsn, lsn);
    LOG_INFO(s->name,
             "published %llu events, %llu dead-lettered, %llu Kafka transactions (%llu aborted), "
             "%llu changes skipped as already published, %llu updates skipped (on_update: "
             "skip); confirmed %s",
             (unsigned long long)s->n_events, (unsigned long long)s->n_dead,
             (unsigned long long)s->n_commits, (unsigned long long)s->n_aborts,
             (unsigned long long)s->n_skipped, (unsigned long long)rs.skipped_updates, lsn);
    if (s->n_commits)
        LOG_DEBUG(s->name,
                  "commit wait: %.1f ms blocked in %llu Kafka commits (mean %.2f ms, max %.1f ms), "
                  "%.1f events per commit, %llu replication messages read ahead during commits",
                  (double)s->commit_wait_us / 1000.0, (unsigned long long)s->n_commits,
                  (double)s->commit_wait_us / 1000.0 / (double)s->n_commits,
                  (double)s->commit_max_us / 1000.0,
                  (double)(s->n_events + s->n_dead) / (double)s->n_commits,
                  (unsigned long long)s->n_read_ahead);
}

/*
 * Every status interval: are the configured tables still there and in the
 * publication? A table dropped and created again (migration tools do) or
 * renamed into place is otherwise not in a FOR TABLE publication, and its
 * rows would be lost without a word.
 */
static void watch_catalog(outboxd_source_t *s)
{
    int64_t now = outboxd_now_ms();
    if (s->src->n_tables == 0 || now - s->last_watch_ms < s->conf->status_interval_ms)
        return;
    s->last_watch_ms = now;
    outboxd_buf_t report = {0};
    int problems = outboxd_pgsetup_watch(s->src, s->conf->wal_receiver_timeout_ms, s->stop,
                                         &s->watch_conn, &report);
    char *save = NULL;
    for (char *line = report.data ? strtok_r(report.data, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save)) {
        if (problems < 0)
            LOG_DEBUG(s->name, "%s", line); /* the stream notices an unreachable server */
        else
            LOG_ERROR(s->name, "%s", line);
    }
    outboxd_buf_free(&report);
}

/*
 * A Kafka transaction holds whole PostgreSQL transactions. It is cut inside
 * one only when it reaches max_batch_events (bounded memory for huge
 * transactions) or has been open for SPLIT_AFTER_MS (a slow transaction made
 * mostly of ignored changes must not run into transaction.timeout.ms).
 */
#define SPLIT_AFTER_MS 10000

static bool split_due(const outboxd_source_t *s)
{
    return outboxd_now_ms() - (s->batch_deadline_ms - s->conf->commit_interval_ms) >=
           SPLIT_AFTER_MS;
}

/* When the open batch is due by time (see BACKLOG_LAG_MS). */
static int64_t batch_due_ms(const outboxd_source_t *s)
{
    int extra = BACKLOG_BATCH_MS - s->conf->commit_interval_ms;
    return s->batch_deadline_ms + (s->behind && extra > 0 ? extra : 0);
}

/*
 * A replication connection can die without an error reaching us: a half-open
 * link (a firewall or NAT that drops the flow, a failover that moved the
 * address) or a frozen server leave the socket silent for as long as TCP
 * retransmits, about 15 minutes. The walsender itself need not send anything
 * on an idle server (our status updates keep its own timeout satisfied), so
 * silence alone proves nothing: after half of wal_receiver_timeout_ms without
 * a message we ask for a reply (the status update's reply-requested flag,
 * which every walsender answers at once with a keepalive), and only when
 * that question stays unanswered for the other half is the connection
 * presumed dead. This is how PostgreSQL's own walreceiver does it. Called
 * only after a poll that found nothing to read, so time spent in a blocking
 * Kafka call never counts as silence: the question is asked first.
 */
static int check_liveness(outboxd_source_t *s, char *errstr, size_t errstr_size)
{
    int timeout = s->conf->wal_receiver_timeout_ms;
    if (timeout <= 0 || !s->repl)
        return 0;
    int64_t now = outboxd_now_ms();
    if (!s->ping_ms) {
        if (now - s->last_recv_ms < timeout / 2)
            return 0;
        char err[512];
        if (outboxd_repl_send_status(s->repl, s->confirm_lsn, true, err, sizeof(err)) < 0)
            LOG_DEBUG(s->name, "%s", err); /* a dead socket answers on the next read */
        else {
            s->sent_lsn = s->confirm_lsn;
            outboxd_stats_confirmed(s->stats, s->sent_lsn);
        }
        s->last_status_ms = now;
        s->ping_ms = now;
        LOG_DEBUG(s->name, "no message from the server for %lld ms: asking for a reply",
                  (long long)(now - s->last_recv_ms));
        return 0;
    }
    if (now - s->ping_ms < timeout - timeout / 2)
        return 0;
    snprintf(errstr, errstr_size,
             "no message from PostgreSQL for %lld ms, not even an answer to a reply request "
             "(relay.wal_receiver_timeout_ms = %d): the connection is presumed dead (a "
             "half-open network path or a frozen server)",
             (long long)(now - s->last_recv_ms), timeout);
    return -1;
}

static int apply_reload(outboxd_source_t *s);

/* The router renders the domain columns the last checks found as their
 * base types. */
static void set_domains(outboxd_source_t *s)
{
    if (s->router &&
        outboxd_router_set_domains(s->router, s->domains.oid, s->domains.base, s->domains.n) < 0)
        LOG_WARN(s->name, "out of memory handing the router its domain types: it keeps those it "
                          "had");
}

/* After the wait stream() asked for: what a poll on this thread did once. */
static int after_wait(outboxd_source_t *s, const outboxd_loop_wait_t *w)
{
    char err[512];
    /* Bytes of a message not complete yet (a partial read, or TLS
     * buffering) are activity too: no long sleep before the rest. */
    if (w->revents[0])
        s->last_pollin_ms = outboxd_now_ms();
    if (w->revents[1] & POLLIN) {
        uint64_t v;
        ssize_t r = read(s->idle_fd, &v, sizeof(v));
        (void)r; /* only a wake-up: the flags are the truth */
    }
    /* Nothing came during the wait. With loops sharing threads, the wait
     * may have ended a while before this loop got a thread back: what came
     * meanwhile is not silence. */
    bool silent = !w->revents[0] && !w->revents[1];
    if (silent) {
        struct pollfd pfd = {.fd = outboxd_repl_fd(s->repl), .events = POLLIN};
        silent = poll(&pfd, 1, 0) == 0;
    }
    if (silent && check_liveness(s, err, sizeof(err)) < 0)
        return rewind_stream(s, err);
    outboxd_sink_poll(s->sink);
    log_stats(s, false);
    if (!stopping(s))
        watch_catalog(s); /* a stop wakes every idle source at once */
    /* The end of the loop's round, as after any message. */
    if (s->batch_open && !s->pend_n && coarse_now_ms() >= batch_due_ms(s) &&
        (!s->in_txn || split_due(s))) {
        int rc = commit_batch(s);
        if (rc < 0)
            return rc;
    }
    send_status(s, false);
    return 0;
}

/* Reads and handles messages until the stream fails, we are stopped, or
 * there is nothing to read. Returns 0 (stopped), -1 (reconnect), -2
 * (fatal), STREAM_WAIT (wait as *w says, then call again) or STREAM_YIELD
 * (call again when the pool gives the loop a thread back). */
#define STREAM_WAIT  1
#define STREAM_YIELD 2
static int stream(outboxd_source_t *s, outboxd_loop_wait_t *w)
{
    char err[512];
    if (s->stream_waiting) {
        s->stream_waiting = false;
        int rc = after_wait(s, w);
        if (rc < 0)
            return rc;
    }
    for (;;) {
        if (stopping(s)) {
            /* Finish the PostgreSQL transaction being received first, so
             * the last Kafka transaction holds it whole (bounded wait). */
            if (!s->stop_seen_ms)
                s->stop_seen_ms = outboxd_now_ms();
            if (!s->in_txn || outboxd_now_ms() - s->stop_seen_ms > 5000)
                return 0;
        } else if (atomic_load(&s->reload_pending) && !s->in_txn) {
            /* A transaction boundary: commit the batch, then switch. */
            int rc = apply_reload(s);
            if (rc < 0)
                return rc;
        } else if (!s->in_txn && !s->batch_open && s->loop && outboxd_loop_should_yield(s->loop)) {
            /* Between transactions, holding no producer: another source
             * waits for a thread (relay.loop_threads). What was read ahead
             * stays in the FIFO (own copies) for the next turn. */
            return STREAM_YIELD;
        }
        /* Clock reads are not free on every machine (a VM's clock source
         * showed up in profiles): per message, a coarse clock is enough for
         * the batch deadline and the status interval. */
        int64_t now = coarse_now_ms();
        if (now != s->last_tick_seen_ms) {
            s->last_tick_seen_ms = now;
            outboxd_stats_tick(s->stats);
        }
        outboxd_repl_msg_t m;
        /* What was read ahead during a commit comes first, in order. */
        bool ahead = s->pend_n > 0;
        if (ahead) {
            pend_compact(s);
            m = s->pend[s->pend_head].m;
        } else if (s->pend_failed) {
            s->pend_failed = false;
            snprintf(err, sizeof(err), "%s", s->pend_err);
            return rewind_stream(s, err);
        } else if (outboxd_repl_next(s->repl, &m, err, sizeof(err)) < 0) {
            return rewind_stream(s, err);
        }
        if (m.kind != OUTBOXD_REPL_NONE) {
            if (!ahead)
                outboxd_stats_wal_end(s->stats, m.wal_end);
            s->last_recv_ms = outboxd_now_ms();
            s->ping_ms = 0;
        }
        int rc = 0;
        switch (m.kind) {
        case OUTBOXD_REPL_DATA:
            s->msg_from_libpq = !ahead;
            rc = handle_data(s, &m);
            s->msg_from_libpq = false;
            break;
        case OUTBOXD_REPL_KEEPALIVE:
            if (!s->in_txn && !s->batch_open)
                confirm(s, m.wal_end); /* idle: don't pin WAL */
            if (m.reply_requested)
                send_status(s, true);
            break;
        case OUTBOXD_REPL_NONE: {
            /* Group commit: the server has nothing more for us right now,
             * so waiting would only add latency. Under load the socket is
             * rarely empty and batches grow up to max_batch_events or
             * commit_interval_ms, whichever comes first. Behind a backlog
             * an empty socket says nothing (BACKLOG_LAG_MS). */
            int timeout = BUSY_POLL_MS;
            bool held = false;
            if (s->batch_open && (!s->in_txn || split_due(s))) {
                int64_t due = batch_due_ms(s);
                /* Behind, the wait for more keeps the loop's thread and the
                 * batch's producer: not while another source waits for
                 * either. */
                bool loop_wanted =
                    s->loop && !s->in_txn && s->behind && outboxd_loop_contended(s->loop);
                if (s->in_txn || !s->behind || outboxd_now_ms() >= due || loop_wanted ||
                    outboxd_sink_pool_contended(s->sink)) {
                    rc = commit_batch(s);
                    /* Let the thread go now: going on, the next batch
                     * (what was read ahead, more backlog) would be cut
                     * small at the next pause while that loop waits. */
                    if (rc == 0 && loop_wanted && !s->batch_open) {
                        send_status(s, false);
                        return STREAM_YIELD;
                    }
                    break;
                }
                /* Behind: the walsender is still decoding the backlog. The
                 * wait is at most BUSY_POLL_MS, so the loop's round (stats
                 * tick, status updates, liveness) runs as usual. */
                int64_t left = due - outboxd_now_ms();
                timeout = left < 1 ? 1 : left < BUSY_POLL_MS ? (int)left : BUSY_POLL_MS;
                held = true;
            }
            /* Nothing open and nothing received for a while: sleep longer
             * (stop and reload wake it through idle_fd). */
            int64_t quiet_since =
                s->last_recv_ms > s->last_pollin_ms ? s->last_recv_ms : s->last_pollin_ms;
            if (!s->batch_open && !s->in_txn && s->idle_fd >= 0 &&
                outboxd_now_ms() - quiet_since >= IDLE_AFTER_MS)
                timeout = idle_timeout(s);
            /* The wait itself is the pool's (loops.h): on this thread, or,
             * when sources outnumber loop threads, on its poller. A source
             * with a batch open may hold a producer of the Kafka pool that
             * another source waits for, so it keeps its thread. */
            w->fd[0] = outboxd_repl_fd(s->repl);
            w->fd[1] = s->idle_fd;
            w->timeout_ms = timeout;
            w->may_park = !s->batch_open;
            /* A batch held open behind a backlog (above) is ended, not
             * waited on, when another source is queued for a thread (only
             * then: a wait inside a transaction could not end anything). */
            w->kick_ends_wait = held;
            s->stream_waiting = true;
            return STREAM_WAIT;
        }
        }
        if (rc < 0)
            return rc; /* a rewind dropped the read-ahead */
        if (ahead)
            pend_pop(s); /* handled: its bytes may be reused */
        /* commit_interval_ms bounds how long a received change waits; what
         * was read ahead is a backlog, committed in full batches (or when
         * the read-ahead is used up), so commits stay few while behind. */
        if (s->batch_open && !s->pend_n && now >= batch_due_ms(s) && (!s->in_txn || split_due(s))) {
            if ((rc = commit_batch(s)) < 0)
                return rc;
        }
        send_status(s, false);
    }
}

/*
 * Judges the committed checkpoint against the server this connection reached
 * (every connect: a failover or a restore can happen between any two). When
 * its LSNs cannot be trusted to name the same transactions here, it is
 * dropped: nothing is skipped by it, so what the slot sends is published,
 * possibly again, and never lost to a stale position. Returns -1 when the
 * server could not be asked.
 */
static int judge_checkpoint(outboxd_source_t *s, bool created_slot)
{
    outboxd_checkpoint_t *ck = &s->ck_committed;
    if (!ck->commit_lsn)
        return 0;
    char err[512];
    outboxd_server_pos_t srv = {
        .system_id = s->ident.system_id,
        .database = s->ident.database,
        .slot = s->src->slot,
        .timeline = s->ident.timeline,
        .wal_pos = s->ident.xlogpos,
    };
    if (ck->timeline && ck->timeline < s->ident.timeline &&
        (!ck->system_id[0] || strcmp(ck->system_id, s->ident.system_id) == 0) &&
        outboxd_repl_timeline_end(s->repl, s->ident.timeline, ck->timeline, &srv.ck_timeline_end,
                                  err, sizeof(err)) < 0) {
        LOG_ERROR(s->name, "%s", err);
        return -1;
    }
    outboxd_lsn_t slot_pos = 0;
    int pid = 0;
    if (outboxd_repl_slot_state(s->repl, s->src->slot, &slot_pos, &pid, err, sizeof(err)) < 0) {
        LOG_ERROR(s->name, "%s", err);
        return -1;
    }
    char why[512];
    bool trusted = outboxd_checkpoint_trusted(ck, &srv, why, sizeof(why));
    char ckl[OUTBOXD_LSN_STRLEN], sl[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(ck->end_lsn ? ck->end_lsn : ck->commit_lsn, ckl);
    outboxd_lsn_format(slot_pos, sl);
    if (created_slot) {
        /* The slot vanished (dropped, or lost in a failover) after this
         * source had published: whatever was committed in between was never
         * decoded and cannot be relayed. Say so loudly; the rows are still
         * in the outbox table unless the services delete them. */
        LOG_ERROR(s->name,
                  "replication slot %s was missing and has been created again at %s, but this "
                  "source had published up to %s: outbox rows committed in between were not "
                  "relayed (they remain in the outbox table unless deleted; republish them by "
                  "hand)",
                  s->src->slot, sl, ckl);
        s->n_slot_recreated++;
        /* A new slot cannot resend anything published before, and after a
         * failover its LSNs may be below the old checkpoint: skipping by it
         * would drop new events. */
        memset(ck, 0, sizeof(*ck));
        return 0;
    }
    outboxd_lsn_t upto = ck->end_lsn ? ck->end_lsn : ck->commit_lsn;
    if (trusted && ck->timeline && ck->timeline != s->ident.timeline && slot_pos > upto) {
        /* Written before this server's history left the checkpoint's
         * timeline, so the LSNs agree; but the slot here (a promoted
         * standby has no copy of the old primary's slot) starts after
         * the checkpoint, and what committed in between was never
         * decoded by it. */
        LOG_ERROR(s->name,
                  "the last checkpoint (published up to %s on timeline %u) is older than slot "
                  "%s on this server (timeline %u), which starts at %s: outbox rows committed "
                  "between %s and %s may not have been relayed; compare the outbox table with "
                  "the topics and republish missing rows by hand",
                  ckl, ck->timeline, s->src->slot, s->ident.timeline, sl, ckl, sl);
    }
    if (trusted)
        return 0;
    s->n_untrusted++;
    char from[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(srv.ck_timeline_end ? srv.ck_timeline_end : 0, from);
    LOG_ERROR(s->name,
              "the last checkpoint (published up to %s) cannot be trusted on this server: %s. "
              "Not skipping by its LSNs: everything slot %s sends from its position %s is "
              "published, possibly again (consumers must be idempotent). Outbox rows committed "
              "on this server before %s%s%s that this slot never decoded may be missing: "
              "compare the outbox table with the topics and republish missing rows by hand",
              ckl, why, s->src->slot, sl, sl, srv.ck_timeline_end ? " and after " : "",
              srv.ck_timeline_end ? from : "");
    memset(ck, 0, sizeof(*ck));
    return 0;
}

/* Own producers, or a sink borrowing from the pool. */
static outboxd_sink_t *make_sink(outboxd_source_t *s, const outboxd_config_t *conf,
                                 const outboxd_source_conf_t *src, char *err, size_t err_size)
{
    if (s->pool)
        return outboxd_sink_new_pooled(s->pool, conf, src, keepalive, s, s->stop, err, err_size);
    return outboxd_sink_new(conf, src, keepalive, s, s->stop, err, err_size);
}

/* The Kafka side, once: producers fenced and the last checkpoint read, before
 * any replication connection exists (so its slow calls cannot run into
 * wal_sender_timeout). 0, -1 retry, -2 fatal. */
static int open_kafka(outboxd_source_t *s)
{
    char err[1024];
    if (!s->sink) {
        s->sink = make_sink(s, s->conf, s->src, err, sizeof(err));
        if (!s->sink) {
            LOG_ERROR(s->name, "%s", err);
            return -2;
        }
    }
    if (s->sink_ready)
        return 0;
    outboxd_checkpoint_t ck;
    outboxd_sink_status_t st = outboxd_sink_init(s->sink, &ck, err, sizeof(err));
    if (st == OUTBOXD_SINK_FATAL) {
        LOG_ERROR(s->name, "%s", err);
        return -2;
    }
    if (st != OUTBOXD_SINK_OK) {
        LOG_ERROR(s->name, "Kafka not ready: %s", err);
        return -1;
    }
    s->ck_committed = ck;
    s->sink_ready = true;
    return 0;
}

/* ---- configuration reload ------------------------------------------------ */

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Whether the Kafka client settings differ (a pool keeps its producers). */
static bool kafka_conf_differs(const outboxd_config_t *a, const outboxd_config_t *b)
{
    if (!str_eq(a->bootstrap_servers, b->bootstrap_servers) ||
        a->n_kafka_properties != b->n_kafka_properties)
        return true;
    for (size_t i = 0; i < a->n_kafka_properties; i++)
        if (!str_eq(a->kafka_properties[i].key, b->kafka_properties[i].key) ||
            !str_eq(a->kafka_properties[i].value, b->kafka_properties[i].value))
            return true;
    return false;
}

/* Whether anything the sink reads from its configuration differs. */
static bool sink_conf_differs(const outboxd_config_t *a, const outboxd_config_t *b)
{
    return kafka_conf_differs(a, b) || !str_eq(a->dead_letter_topic, b->dead_letter_topic) ||
           !str_eq(a->checkpoint_topic, b->checkpoint_topic) ||
           !str_eq(a->transactional_id_prefix, b->transactional_id_prefix) ||
           a->missing_topic != b->missing_topic ||
           a->create_topic_partitions != b->create_topic_partitions ||
           a->create_topic_replication_factor != b->create_topic_replication_factor ||
           a->producers_per_source != b->producers_per_source ||
           a->kafka_producers != b->kafka_producers;
}

static bool tables_differ(const outboxd_source_conf_t *a, const outboxd_source_conf_t *b)
{
    if (a->n_tables != b->n_tables)
        return true;
    for (size_t i = 0; i < a->n_tables; i++)
        if (!str_eq(a->tables[i].schema, b->tables[i].schema) ||
            !str_eq(a->tables[i].name, b->tables[i].name))
            return true;
    return false;
}

/* Done with generation gen (applied or refused): main may stop waiting. */
static void reload_done(outboxd_source_t *s, uint64_t gen)
{
    pthread_mutex_lock(&s->reload_mu);
    s->taking = NULL;
    if (s->next_gen == gen) {
        s->next_conf = NULL;
        s->next_src = NULL;
        atomic_store(&s->reload_pending, false);
    }
    pthread_mutex_unlock(&s->reload_mu);
    atomic_store(&s->applied_gen, gen);
}

/*
 * Applies a configuration handed over by outboxd_source_reload, at a
 * transaction boundary: the batch in hand is committed under the running
 * configuration first, so every event is produced under exactly one. The
 * router is rebuilt (table mappings); the sink is rebuilt when anything it
 * reads changed (Kafka properties): its producers are destroyed with nothing
 * open (the batch was just committed) and the new ones, with the same
 * transactional.id, initialize and read back the checkpoint. Returns 0, -1
 * (stream closed: reconnect), -2 (fatal).
 */
static int apply_reload(outboxd_source_t *s)
{
    if (!atomic_load(&s->reload_pending) || s->in_txn || stopping(s))
        return 0;
    if (s->batch_open) {
        int rc = commit_batch(s);
        if (rc < 0)
            return rc; /* rewound: applied once nothing is in flight */
    }
    pthread_mutex_lock(&s->reload_mu);
    const outboxd_config_t *conf = s->next_conf;
    const outboxd_source_conf_t *src = s->next_src;
    uint64_t gen = s->next_gen;
    s->taking = conf; /* main keeps it while we build from it */
    pthread_mutex_unlock(&s->reload_mu);
    if (!conf) {
        reload_done(s, gen);
        return 0;
    }
    char err[1024];
    bool new_sink = s->sink && sink_conf_differs(s->sink_conf, conf);
    bool new_tables = tables_differ(s->src, src);
    /* PostgreSQL sends logical messages only to a stream started asking for
     * them (repl.c): the first messages[] entry needs a new stream, or the
     * messages would be confirmed past unseen. */
    bool new_messages = s->src->n_messages == 0 && src->n_messages > 0;
    outboxd_router_t *rt = NULL;
    outboxd_sink_t *sk = NULL;
    outboxd_cdc_t *cd = NULL;
    bool ok = true;
    bool want_cdc = false;
    for (size_t i = 0; i < src->n_tables; i++)
        want_cdc = want_cdc || src->tables[i].mode == OUTBOXD_MODE_CDC;
    if (s->router) {
        rt = outboxd_router_new(conf, src, s->ident.database, err, sizeof(err));
        ok = rt != NULL;
    }
    /* The cdc instance reads its table settings from the configuration
     * it was made with, which main frees once this source moves on: a new
     * one, built like the router (its schema caches start empty). A cdc
     * table added here streams from the switch point; its initial snapshot
     * is not run (request one with the signal table). */
    if (ok && s->router && want_cdc) {
        cd = outboxd_cdc_new(conf, src, s->ident.database, s->stop, err, sizeof(err));
        ok = cd != NULL;
    }
    if (ok && new_sink && s->pool && kafka_conf_differs(s->sink_conf, conf))
        LOG_WARN(s->name, "reload: kafka.bootstrap_servers, kafka.properties: needs a restart "
                          "with relay.kafka_producers (the pool keeps the producers it started "
                          "with); ignored until then");
    if (ok && new_sink) {
        sk = make_sink(s, conf, src, err, sizeof(err));
        ok = sk != NULL;
    }
    if (!ok) {
        LOG_ERROR(s->name, "reload: %s; this source keeps its running configuration", err);
        outboxd_router_destroy(rt);
        outboxd_cdc_destroy(cd);
        atomic_store(&s->refused_gen, gen); /* before done: main reads them in that order */
        reload_done(s, gen);
        return 0;
    }
    /* The old router and sink still point into the running configuration,
     * which main keeps until this thread reports it no longer uses it. */
    if (rt) {
        outboxd_router_destroy(s->router);
        s->router = rt;
        set_domains(s);
    }
    s->reload_applied = true;
    /* NULL when no cdc table is left, or while disconnected: the next
     * connect makes one from the new configuration. */
    outboxd_cdc_destroy(s->cdc);
    s->cdc = cd;
    outboxd_snapshot_rebind(s->snap, conf, src);
    if (sk) {
        outboxd_sink_destroy(s->sink);
        s->sink = sk;
        /* Replaying a refused transaction one record per request goes on
         * with the new producers (else a batch refused again would
         * dead-letter a guess, not the culprit). */
        outboxd_sink_set_one_by_one(sk, s->isolating);
        s->sink_ready = false;
    }
    pthread_mutex_lock(&s->reload_mu);
    s->conf = conf;
    s->idle_poll_ms = idle_poll_for(conf);
    s->src = src;
    s->name = src->name;
    if (sk || !s->sink)
        s->sink_conf = conf;
    pthread_mutex_unlock(&s->reload_mu);
    /* The password file was read again (rotation): the retention slot's
     * keeper connects with it from its next connection, as the source. */
    outboxd_retention_set_password(s->retention, src->password);

    if (new_tables && s->repl) {
        /* Added tables join a publication outboxd manages, as at start. */
        outboxd_buf_t report = {0};
        if (outboxd_pgsetup_check_in_loop(s->src, s->conf->wal_receiver_timeout_ms, s->stop,
                                          &report, NULL, &s->domains) != 0 &&
            report.data) {
            char *save = NULL;
            for (char *line = strtok_r(report.data, "\n", &save); line;
                 line = strtok_r(NULL, "\n", &save))
                LOG_ERROR(s->name, "reload: %s", line);
        }
        outboxd_buf_free(&report);
        set_domains(s);
    }
    int rc = 0;
    if (new_messages && s->repl) {
        /* Nothing is in flight (the batch was just committed): the stream
         * starts again from the checkpoint, as after a rewind. */
        LOG_INFO(s->name, "reload: messages[] configured: restarting the stream so that "
                          "PostgreSQL sends logical messages");
        close_stream(s);
        s->restart_now = true;
        rc = -1;
    } else if (sk && s->repl) {
        outboxd_checkpoint_t before = s->ck_committed;
        keepalive(s);
        rc = open_kafka(s);
        if (rc == -1) {
            LOG_WARN(s->name, "reload: the new Kafka producer is not ready; reconnecting");
            close_stream(s);
        } else if (rc == 0 && (before.commit_lsn != s->ck_committed.commit_lsn ||
                               before.end_lsn != s->ck_committed.end_lsn ||
                               before.changes != s->ck_committed.changes)) {
            /* Cannot happen unless another writer of this checkpoint key
             * exists: go by what Kafka holds. */
            LOG_WARN(s->name, "reload: the checkpoint read back differs from the one committed; "
                              "rewinding to it");
            close_stream(s);
            rc = -1;
        }
    }
    char lsn[OUTBOXD_LSN_STRLEN];
    const outboxd_checkpoint_t *ck = &s->ck_committed;
    outboxd_lsn_format(ck->changes < 0 ? ck->end_lsn : ck->commit_lsn, lsn);
    LOG_INFO(s->name,
             "reload: configuration %llu applied%s%s; events up to end LSN %s%s are in Kafka "
             "under the previous configuration, later ones go under this one",
             (unsigned long long)gen, rt ? " (table mappings rebuilt)" : "",
             sk ? " (new Kafka producers, same transactional.id)" : "", lsn,
             ck->changes >= 0 && ck->commit_lsn ? " (commit, partly)" : "");
    reload_done(s, gen);
    return rc;
}

void outboxd_source_reload(outboxd_source_t *s, const outboxd_config_t *conf,
                           const outboxd_source_conf_t *src, uint64_t gen)
{
    pthread_mutex_lock(&s->reload_mu);
    s->next_conf = conf;
    s->next_src = src;
    s->next_gen = gen;
    atomic_store(&s->reload_pending, true);
    pthread_mutex_unlock(&s->reload_mu);
    outboxd_source_wake(s);
}

void outboxd_source_wake(outboxd_source_t *s)
{
    if (s && s->idle_fd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(s->idle_fd, &one, sizeof(one));
        (void)w; /* a full counter is still readable: the wake-up is there */
    }
}

bool outboxd_source_uses(outboxd_source_t *s, const outboxd_config_t *conf)
{
    pthread_mutex_lock(&s->reload_mu);
    bool used =
        s->conf == conf || s->sink_conf == conf || s->next_conf == conf || s->taking == conf;
    pthread_mutex_unlock(&s->reload_mu);
    return used;
}

uint64_t outboxd_source_applied(outboxd_source_t *s)
{
    return atomic_load(&s->applied_gen);
}

uint64_t outboxd_source_refused(outboxd_source_t *s)
{
    return atomic_load(&s->refused_gen);
}

/* Another outboxd (a second instance for failover) holds the slot; waiting
 * is normal there, so say it once. */
static void slot_busy(outboxd_source_t *s, const char *err)
{
    if (!s->slot_busy_logged)
        LOG_WARN(s->name,
                 "%s: another process (probably another outboxd with this configuration) holds "
                 "slot '%s'; this instance waits for it",
                 err, s->src->slot);
    else
        LOG_DEBUG(s->name, "%s", err);
    s->slot_busy_logged = true;
    s->quiet_retry = true;
}

/*
 * The snapshot of cdc tables, before streaming (snapshot.h): decides from
 * the checkpoint what is left to read and reads it, committing each chunk
 * with the checkpoint. 0, -1 retry (resumes at the next connect), -2 fatal.
 */
static int run_snapshot(outboxd_source_t *s, const char *saved, bool positions_lost)
{
    char err[1024];
    if (!s->snap) {
        s->snap = outboxd_snapshot_new(s->conf, s->src, s->stop, err, sizeof(err));
        if (!s->snap) {
            LOG_ERROR(s->name, "%s", err);
            return -1;
        }
    }
    if (outboxd_snapshot_prepare(s->snap, &s->ck_committed, saved, positions_lost, err,
                                 sizeof(err)) < 0) {
        LOG_ERROR(s->name, "%s", err);
        return -2;
    }
    if (!outboxd_snapshot_pending(s->snap))
        return 0;
    outboxd_snapshot_io_t io = {
        .sink = s->sink,
        .cdc = s->cdc,
        .ident = &s->ident,
        .ck = &s->ck_committed,
        .stop = s->stop,
        .stats = s->stats,
    };
    return outboxd_snapshot_run(s->snap, &io);
}

/* Logs a check's report, one line each. */
static void log_report(outboxd_source_t *s, outboxd_buf_t *report)
{
    char *save = NULL;
    for (char *line = strtok_r(report->data, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        LOG_ERROR(s->name, "%s", line);
}

/*
 * The PostgreSQL half of a connect: the replication connection, left in
 * command mode, and the checks (which may create the slot: remembered in
 * connect_created_slot until the checkpoint was judged, even across failed
 * attempts). Returns 0, -1 (retry) or -2 (fatal).
 *
 * The checks run on the replication connection itself (SQL by the simple
 * protocol), so a start costs the server one backend, not two: with hundreds
 * of sources starting on a small server the backend starts and their first
 * catalog reads are what the start waits for. When the replication
 * connection cannot be opened, the checks on a normal connection say why in
 * their own words (wal_level, max_wal_senders, the role's REPLICATION, the
 * dsn) before the bare connection error does.
 */
static int connect_postgres(outboxd_source_t *s)
{
    char err[1024];
    outboxd_buf_t report = {0};
    bool created_slot = false;
    if (!s->sink) {
        /* Created now, initialized later (open_kafka): creating fences no
         * one, and the producers' connections to the broker are set up
         * while PostgreSQL is checked. */
        s->sink = make_sink(s, s->conf, s->src, err, sizeof(err));
        if (!s->sink) {
            LOG_ERROR(s->name, "%s", err);
            return -2;
        }
    }
    /* The replication connection waits in command mode (no
     * wal_sender_timeout runs) while Kafka is set up: starting the stream
     * first would leave it unanswered during Kafka's slow calls. */
    bool opened = false;
    s->repl = outboxd_repl_connect(s->src, s->conf->wal_receiver_timeout_ms, s->stop, &s->ident,
                                   &opened, err, sizeof(err));
    if (!s->repl) {
        /* Only a refused connection is worth a second one to explain it: not
         * a stop, not a server that took it and then went silent or failed
         * IDENTIFY_SYSTEM, and not a connect_timeout (the second would wait
         * as long). */
        bool explain = !opened && !atomic_load(s->stop) && !strstr(err, "timeout expired");
        int problems = explain
                           ? outboxd_pgsetup_check_in_loop(s->src, s->conf->wal_receiver_timeout_ms,
                                                           s->stop, &report, &created_slot, NULL)
                           : 0;
        if (created_slot)
            s->connect_created_slot = true;
        if (problems != 0 && report.data) {
            LOG_DEBUG(s->name, "replication connection: %s", err);
            log_report(s, &report);
        } else {
            LOG_ERROR(s->name, "%s", err);
        }
        outboxd_buf_free(&report);
        return -1;
    }
    LOG_DEBUG(s->name, "startup: replication connection open (IDENTIFY_SYSTEM)");
    /* The server's WAL end as of now: lag_bytes keeps growing while the
     * source retries without a stream (a Kafka outage), instead of showing
     * the last value the stream gave. */
    outboxd_stats_wal_end(s->stats, s->ident.xlogpos);
    bool lost = false;
    int problems = outboxd_pgsetup_check_repl(s->src, outboxd_repl_pgconn(s->repl), true, &report,
                                              &created_slot, &lost, &s->domains);
    set_domains(s);
    if (created_slot)
        s->connect_created_slot = true;
    if (problems != 0 || lost) {
        if (report.data)
            log_report(s, &report);
        else
            LOG_ERROR(s->name, "the replication connection failed during the checks: %.*s",
                      (int)strcspn(PQerrorMessage(outboxd_repl_pgconn(s->repl)), "\n"),
                      PQerrorMessage(outboxd_repl_pgconn(s->repl)));
        outboxd_buf_free(&report);
        close_stream(s);
        return -1;
    }
    outboxd_buf_free(&report);
    LOG_DEBUG(s->name, "startup: PostgreSQL checked (connection, settings, tables, slot)");
    return 0;
}

/* Opens the stream (and on first use the Kafka side). 0, -1 retry, -2 fatal. */
static int connect_source(outboxd_source_t *s)
{
    char err[1024];
    /* Resumed after giving the thread up between fencing and reading (see
     * below): PostgreSQL is checked and the replication connection open. */
    bool resumed = s->connect_resume;
    s->connect_resume = false;
    if (!resumed) {
        int rc = connect_postgres(s);
        if (rc < 0)
            return rc;
    }
    outboxd_lsn_t slot_pos = 0;
    int pid = 0;
    if (!resumed || !s->sink_ready) {
        if (outboxd_repl_slot_state(s->repl, s->src->slot, &slot_pos, &pid, err, sizeof(err)) < 0) {
            LOG_ERROR(s->name, "%s", err);
            close_stream(s);
            return -1;
        }
        /* What this server holds as confirmed: for the metrics, with the WAL
         * end connect_postgres read. A process started during a Kafka outage
         * has confirmed nothing itself, and after a failover the last
         * position it confirmed is another server's. */
        if (slot_pos)
            outboxd_stats_confirmed(s->stats, slot_pos);
    }
    bool created_slot = s->connect_created_slot;
    if (!s->sink_ready) {
        /* Kafka's first init fences the producers of any other instance
         * with this configuration: while another process streams from the
         * slot, wait instead of fencing it. */
        if (pid) {
            snprintf(err, sizeof(err), "replication slot \"%s\" is active for PID %d", s->src->slot,
                     pid);
            close_stream(s);
            slot_busy(s, err);
            return -1;
        }
        LOG_DEBUG(s->name, "startup: slot %s free", s->src->slot);
        if (!s->pool && !outboxd_sink_ready(s->sink) &&
            s->conf->n_sources > (size_t)s->conf->loop_threads) {
            /*
             * Sources sharing loop threads start a few at a time. A killed
             * relay may have left transactions open under other sources'
             * ids with their checkpoint records; the checkpoint topic cannot
             * be read to its end until their own init_transactions settles
             * them, which they cannot do while this source holds a thread
             * waiting for that (30 s, then again). So fence now, give the
             * thread up, and read when the queue comes round again: by then
             * the sources ahead have fenced theirs too. The slot is looked
             * at again then (above): the turn may take a while.
             */
            outboxd_sink_status_t st = outboxd_sink_fence(s->sink, err, sizeof(err));
            if (st != OUTBOXD_SINK_OK) {
                LOG_ERROR(s->name, "%s%s",
                          st == OUTBOXD_SINK_FATAL ? "" : "Kafka not ready: ", err);
                close_stream(s);
                return st == OUTBOXD_SINK_FATAL ? -2 : -1;
            }
            s->connect_resume = true;
            return CONNECT_YIELD;
        }
        int rc = open_kafka(s);
        if (rc < 0) {
            close_stream(s);
            return rc;
        }
    }
    if (!s->router) {
        s->router = outboxd_router_new(s->conf, s->src, s->ident.database, err, sizeof(err));
        if (!s->router) {
            LOG_ERROR(s->name, "%s", err);
            close_stream(s);
            return -2;
        }
        set_domains(s);
    }
    bool any_cdc = false;
    for (size_t i = 0; i < s->src->n_tables; i++)
        any_cdc = any_cdc || s->src->tables[i].mode == OUTBOXD_MODE_CDC;
    if (any_cdc && !s->cdc) {
        s->cdc = outboxd_cdc_new(s->conf, s->src, s->ident.database, s->stop, err, sizeof(err));
        if (!s->cdc) {
            LOG_ERROR(s->name, "%s", err);
            close_stream(s);
            return -2;
        }
    }
    /* Judging may drop the checkpoint; the snapshot's progress is kept
     * apart to see what survives. */
    char saved_snap[OUTBOXD_CHECKPOINT_SNAPSHOT_MAX];
    memcpy(saved_snap, s->ck_committed.snapshot, sizeof(saved_snap));
    bool had_ck = s->ck_committed.commit_lsn != 0 || saved_snap[0];
    bool had_commit = s->ck_committed.commit_lsn != 0;
    if (judge_checkpoint(s, created_slot) < 0) {
        close_stream(s);
        return -1;
    }
    s->connect_created_slot = false; /* judged: a checkpoint from now on is this slot's */
    LOG_DEBUG(s->name, "startup: checkpoint judged against the server");
    if (outboxd_snapshot_configured(s->src) || saved_snap[0]) {
        bool lost = (created_slot && had_ck) || (had_commit && !s->ck_committed.commit_lsn);
        int rc = run_snapshot(s, saved_snap, lost);
        if (rc < 0) {
            close_stream(s);
            return rc;
        }
    }
    /* What was confirmed on an earlier connection may be a position of
     * another server's history (after a failover): never send it here. */
    s->confirm_lsn = 0;
    s->sent_lsn = 0;
    if (outboxd_repl_stream(s->repl, s->src, 0, err, sizeof(err)) < 0) {
        close_stream(s);
        if (strstr(err, "is active for PID")) {
            slot_busy(s, err);
        } else {
            LOG_ERROR(s->name, "%s", err);
        }
        return -1;
    }
    LOG_DEBUG(s->name, "startup: START_REPLICATION sent");
    if (s->slot_busy_logged) {
        LOG_INFO(s->name, "acquired replication slot %s", s->src->slot);
        s->slot_busy_logged = false;
    }
    s->last_status_ms = s->last_recv_ms = outboxd_now_ms();
    s->ping_ms = 0;
    char ckl[OUTBOXD_LSN_STRLEN], pos[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(s->ck_committed.commit_lsn, ckl);
    outboxd_lsn_format(s->ident.xlogpos, pos);
    LOG_INFO(s->name,
             "streaming slot %s of database %s (system %s, timeline %u, server WAL at %s); last "
             "checkpoint commit %s%s",
             s->src->slot, s->ident.database, s->ident.system_id, s->ident.timeline, pos,
             s->ck_committed.commit_lsn ? ckl : "(none)",
             s->ck_committed.changes >= 0 && s->ck_committed.commit_lsn ? " (partial)" : "");
    return 0;
}

/* Pauses the loop for ms (a backoff), waking every idle_poll_ms for the
 * stats tick (the stall check) and the producers' callbacks, and at once on
 * a stop or a reload (idle_fd). */
static outboxd_loop_rc_t backoff_wait(outboxd_source_t *s, outboxd_loop_wait_t *w, int64_t left)
{
    w->fd[0] = s->idle_fd;
    w->fd[1] = -1;
    /* Without idle_fd (no eventfd) a stop is seen only by waking. */
    int step = s->idle_fd >= 0 ? s->idle_poll_ms : BUSY_POLL_MS;
    w->timeout_ms = left < step ? (int)left : step;
    w->may_park = true; /* an aborted or never begun transaction holds no producer */
    w->kick_ends_wait = false;
    return OUTBOXD_LOOP_WAIT;
}

static outboxd_loop_rc_t start_backoff(outboxd_source_t *s, outboxd_loop_wait_t *w, int ms)
{
    s->phase = PHASE_BACKOFF;
    s->backoff_until_ms = outboxd_now_ms() + ms;
    return backoff_wait(s, w, ms);
}

/*
 * The pause before reconnecting after a rewind. It doubles, up to
 * reconnect_max_backoff_ms, while rewinds repeat without progress (no Kafka
 * commit, no newly confirmed position, a short stream), so a
 * failure that lasts (a missing topic, a broker refusing every transaction)
 * does not spin; a successful reconnect alone does not reset it.
 */
static int next_rewind_backoff(outboxd_source_t *s)
{
    /* A stream that ran for a minute on top of the longest backoff is taken
     * as healthy even without commits (an idle outbox). */
    bool progress =
        s->n_commits != s->commits_at_rewind || s->confirm_lsn != s->confirm_at_rewind ||
        outboxd_now_ms() - s->stream_start_ms > 60000 + (int64_t)s->conf->reconnect_max_backoff_ms;
    if (progress || s->rewind_backoff_ms == 0)
        s->rewind_backoff_ms = REWIND_MIN_BACKOFF_MS;
    else if (s->rewind_backoff_ms < s->conf->reconnect_max_backoff_ms)
        s->rewind_backoff_ms = s->rewind_backoff_ms * 2 > s->conf->reconnect_max_backoff_ms
                                   ? s->conf->reconnect_max_backoff_ms
                                   : s->rewind_backoff_ms * 2;
    s->commits_at_rewind = s->n_commits;
    s->confirm_at_rewind = s->confirm_lsn;
    if (s->rewind_backoff_ms > REWIND_MIN_BACKOFF_MS)
        LOG_INFO(s->name, "rewound again without progress; reconnecting in %d ms",
                 s->rewind_backoff_ms);
    return s->rewind_backoff_ms;
}

/* pid of the process holding this source's slot (0: none), on a normal
 * connection (the replication one is streaming); -1 when it cannot tell. */
static int slot_holder(outboxd_source_t *s)
{
    char err[512];
    PGconn *conn = s->watch_conn;
    if (!conn)
        conn = outboxd_pg_connect(s->src, false, err, sizeof(err));
    if (!conn)
        return -1;
    const char *params[1] = {s->src->slot};
    /* Bounded as the catalog check is (it runs in the loop too). */
    int bound = outboxd_pgsetup_loop_bound(s->conf->wal_receiver_timeout_ms);
    PGresult *res = outboxd_pg_exec_bounded(
        conn,
        "SELECT coalesce(active_pid, 0) FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
        1, params, NULL, bound, s->stop, err, sizeof(err));
    int pid = -1;
    if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        pid = atoi(PQgetvalue(res, 0, 0));
    bool silent = !res;
    PQclear(res);
    if (silent && conn == s->watch_conn) {
        LOG_WARN(s->name, "checking who holds the slot: %s", err);
        s->watch_conn = NULL; /* unusable now; the next check reconnects */
        PQfinish(conn);
        return -1;
    }
    if (conn != s->watch_conn)
        PQfinish(conn);
    return pid;
}

/*
 * After a fatal Kafka error that was fencing. When the link to the broker was
 * silent for longer than transaction.timeout.ms, the broker aborts our open
 * transaction itself and bumps the producer epoch, and librdkafka reports
 * exactly what it reports when another instance with the same
 * transactional.id has started. Only one process can stream a replication
 * slot, so while this source's walsender still holds the slot no other
 * instance is publishing for it: new producers (their init_transactions
 * finish whatever is left open) and a rewind to the last checkpoint are
 * safe. A zombie instance has lost the slot (its walsender timed out and
 * another relay took it over) and still stops, as it must. Returns true when
 * the source recovered.
 */
static bool recover_fenced(outboxd_source_t *s)
{
    if (!s->sink || !s->repl || !outboxd_sink_fenced(s->sink) || stopping(s))
        return false;
    int holder = slot_holder(s);
    int mine = outboxd_repl_backend_pid(s->repl);
    if (holder < 0) {
        LOG_ERROR(s->name,
                  "fenced, and who holds slot %s could not be told (PostgreSQL did not answer); "
                  "stopping, since another instance may have taken over",
                  s->src->slot);
        return false;
    }
    if (holder == 0 || holder != mine) {
        LOG_ERROR(s->name, "fenced, and slot %s is %s: another instance has taken over; stopping",
                  s->src->slot, holder > 0 ? "held by another process" : "not held by this relay");
        return false;
    }
    char err[512];
    if (outboxd_sink_replace_producers(s->sink, err, sizeof(err)) < 0) {
        LOG_ERROR(s->name, "replacing the fenced producers failed: %s", err);
        return false;
    }
    LOG_WARN(s->name,
             "fenced while this relay still holds slot %s (walsender pid %d): the broker aborted "
             "a transaction that outlived transaction.timeout.ms (the link to it was silent); "
             "replacing the producers and rewinding to the last checkpoint",
             s->src->slot, mine);
    s->n_aborts++;
    outboxd_stats_aborted(s->stats);
    outboxd_stats_rewound(s->stats);
    s->sink_ready = false; /* init_transactions and read the checkpoint again */
    s->batch_open = false;
    s->batch_events = 0;
    s->batch_n_events = s->batch_n_dead = 0;
    s->n_batch_pos = 0;
    close_stream(s);
    return true;
}

/*
 * The source's loop, one step at a time (loops.h): connect, stream, back off
 * and reconnect, until stopped or a fatal error. A step returns whenever it
 * would wait (for the replication socket, or a backoff), and resumes where
 * it left off (s->phase, and stream() itself).
 */
static outboxd_loop_rc_t step(void *arg, outboxd_loop_wait_t *w)
{
    outboxd_source_t *s = arg;
    if (s->phase == PHASE_BACKOFF) {
        if (w->revents[0] & POLLIN) {
            uint64_t v;
            ssize_t r = read(s->idle_fd, &v, sizeof(v));
            (void)r; /* a stop or a reload: both are looked at below */
        }
        outboxd_stats_tick(s->stats);
        if (!s->repl && atomic_load(&s->reload_pending)) {
            /* Nothing in flight: apply now, and try the new configuration
             * (tables, a rotated password file's content) once at once
             * rather than after a backoff that may be
             * reconnect_max_backoff_ms (which keeps growing if that attempt
             * fails too: a reload is one early attempt, not a reset). A
             * refused reload changes nothing, so waits as before. */
            s->reload_applied = false;
            (void)apply_reload(s);
            int64_t now = outboxd_now_ms();
            if (s->reload_applied && s->backoff_until_ms > now) {
                LOG_INFO(s->name, "reload: reconnecting now instead of in %lld ms",
                         (long long)(s->backoff_until_ms - now));
                s->backoff_until_ms = 0;
            }
        }
        if (s->sink)
            outboxd_sink_poll(s->sink);
        int64_t left = s->backoff_until_ms - outboxd_now_ms();
        if (left > 0 && !stopping(s))
            return backoff_wait(s, w, left);
        s->phase = PHASE_RUN;
    }
    for (;;) {
        if (s->phase == PHASE_RUN) {
            if (stopping(s))
                break;
            if (!s->repl || s->connect_resume) {
                if (!s->connect_resume) {
                    (void)apply_reload(s); /* nothing in flight: apply now */
                    outboxd_stats_state(s->stats, OUTBOXD_SRC_CONNECTING);
                } else {
                    /* The same attempt, resumed after a yield: not a
                     * reconnect (outboxd_source_reconnects_total). */
                    outboxd_stats_tick(s->stats);
                }
                s->rc = connect_source(s);
                if (s->rc == CONNECT_YIELD) {
                    s->rc = 0;
                    return OUTBOXD_LOOP_YIELD;
                }
                if (s->rc == -2)
                    break;
                if (s->rc < 0) {
                    outboxd_stats_state(s->stats, OUTBOXD_SRC_BACKOFF);
                    int backoff = s->connect_backoff_ms;
                    if (s->quiet_retry)
                        LOG_DEBUG(s->name, "retrying in %d ms", backoff);
                    else
                        LOG_INFO(s->name, "retrying in %d ms", backoff);
                    s->quiet_retry = false;
                    s->connect_backoff_ms = backoff * 2 > s->conf->reconnect_max_backoff_ms
                                                ? s->conf->reconnect_max_backoff_ms
                                                : backoff * 2;
                    return start_backoff(s, w, backoff);
                }
                s->connect_backoff_ms = CONNECT_MIN_BACKOFF_MS;
            }
            /* Also after a rewind that kept the connection (BACKOFF below). */
            outboxd_stats_state(s->stats, OUTBOXD_SRC_STREAMING);
            s->stream_start_ms = outboxd_now_ms();
            s->stop_seen_ms = 0;
            s->stream_waiting = false;
            s->phase = PHASE_STREAM;
        }
        s->rc = stream(s, w);
        if (s->rc == STREAM_WAIT)
            return OUTBOXD_LOOP_WAIT;
        if (s->rc == STREAM_YIELD)
            return OUTBOXD_LOOP_YIELD;
        s->phase = PHASE_RUN;
        if (s->rc == -2 && recover_fenced(s))
            s->rc = -1;
        if (s->rc == -2)
            break;
        if (s->rc == -1 && s->restart_now && !stopping(s)) {
            s->restart_now = false; /* not a failure: no backoff */
            continue;
        }
        if (s->rc == -1 && !stopping(s)) {
            /* Rewinding (a Kafka abort, a topic to wait for): not streaming
             * for /readyz and outboxd_source_state until the stream runs
             * again, which may be reconnect_max_backoff_ms away. */
            outboxd_stats_state(s->stats, OUTBOXD_SRC_BACKOFF);
            return start_backoff(s, w, next_rewind_backoff(s));
        }
    }
    int rc = s->rc;
    if (s->connect_resume) {
        s->connect_resume = false; /* stopped between two turns of its start */
        close_stream(s);
    }
    outboxd_stats_state(s->stats, OUTBOXD_SRC_STOPPING);
    if (rc != -2 && s->repl && s->sink) {
        /* Stopping: finish the batch in hand, then tell PostgreSQL. */
        if (commit_batch(s) == -2)
            rc = -2;
        send_status(s, true);
    }
    log_stats(s, true);
    close_stream(s);
    s->result = rc == -2 ? 1 : 0;
    outboxd_stats_state(s->stats, s->result ? OUTBOXD_SRC_FAILED : OUTBOXD_SRC_STOPPED);
    atomic_store(&s->done, true);
    return OUTBOXD_LOOP_DONE;
}

void outboxd_source_set_stats(outboxd_source_t *s, outboxd_stats_t *stats)
{
    s->stats = stats;
}

void outboxd_source_set_pool(outboxd_source_t *s, outboxd_sink_pool_t *pool)
{
    s->pool = pool;
}

int outboxd_source_start(outboxd_source_t *s, outboxd_loops_t *loops, char *errstr,
                         size_t errstr_size)
{
    s->phase = PHASE_RUN;
    s->connect_backoff_ms = CONNECT_MIN_BACKOFF_MS;
    s->last_stats_ms = outboxd_now_ms();
    return outboxd_loops_add(loops, step, s, &s->loop, errstr, errstr_size);
}

bool outboxd_source_done(outboxd_source_t *s)
{
    return atomic_load(&s->done);
}

int outboxd_source_join(outboxd_source_t *s)
{
    if (s->loop) {
        outboxd_loop_join(s->loop);
        s->loop = NULL;
    }
    return s->result;
}

void outboxd_source_destroy(outboxd_source_t *s)
{
    if (!s)
        return;
    outboxd_source_join(s);
    close_stream(s);
    outboxd_sink_destroy(s->sink);
    outboxd_router_destroy(s->router);
    outboxd_pg_domains_free(&s->domains);
    outboxd_cdc_destroy(s->cdc);
    outboxd_snapshot_destroy(s->snap);
    outboxd_pgo_decoder_destroy(s->dec);
    free(s->batch_pos);
    free(s->pend);
    free(s->pend_arena);
    for (int i = 0; i < 2; i++)
        if (s->wake[i] >= 0)
            close(s->wake[i]);
    if (s->idle_fd >= 0)
        close(s->idle_fd);
    for (size_t i = 0; i < s->n_rels; i++)
        free(s->rels[i].name);
    free(s->rels);
    if (s->watch_conn)
        PQfinish(s->watch_conn);
    pthread_mutex_destroy(&s->reload_mu);
    outboxd_retention_destroy(s->retention);
    free(s);
}

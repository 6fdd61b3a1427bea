/*
 * Kafka transactional sink of one source.
 *
 * One transactional producer (transactional.id = <prefix>.<source>). Events
 * of whole PostgreSQL transactions and one checkpoint record are produced in
 * one Kafka transaction; the caller confirms the LSN to PostgreSQL only
 * after outboxd_sink_commit returned OUTBOXD_SINK_OK.
 *
 * Error classes (librdkafka's): retriable errors are retried inside the sink
 * (calling the keepalive callback between attempts so the replication
 * connection is not timed out); abortable errors abort the transaction and
 * return OUTBOXD_SINK_ABORTED (the caller rewinds to the last committed
 * checkpoint); fatal errors (fenced by a newer instance, authorization)
 * return OUTBOXD_SINK_FATAL.
 */
#ifndef OUTBOXD_SINK_H
#define OUTBOXD_SINK_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#include "outboxd/relay/checkpoint.h"
#include "outboxd/relay/config.h"
#include "outboxd/relay/router.h"

typedef enum {
    OUTBOXD_SINK_OK = 0,
    OUTBOXD_SINK_ABORTED = 1, /* transaction aborted: rewind and retry */
    OUTBOXD_SINK_RETRY = 2,   /* not started (e.g. broker unreachable): retry later */
    /* The record's topic does not exist (and relay.missing_topic is not
     * create): nothing was produced, the open transaction is untouched. */
    OUTBOXD_SINK_MISSING_TOPIC = 3,
    OUTBOXD_SINK_FATAL = -1, /* stop this source and exit non-zero */
} outboxd_sink_status_t;

typedef struct outboxd_sink outboxd_sink_t;

/*
 * Pool mode (relay.kafka_producers N > 0): one process-wide pool of N
 * transactional producers, transactional.id <prefix>.pool.<k>. A pooled
 * sink borrows a free producer when its transaction begins (its first
 * produce) and gives it back when the transaction ends (commit or abort);
 * while it waits for one it calls its keepalive callback. A transaction
 * still holds one source's events and that source's checkpoint record, so
 * the exactly-once protocol holds per source as with own producers.
 *
 * The first outboxd_sink_init of any pooled sink runs init_transactions on
 * every pool id (in parallel; the others wait), so every transaction a
 * previous process left open under a pool id is settled before any source
 * reads its checkpoint. A pool producer that fails with a fatal error other
 * than fencing is replaced (new producer, same id) by the source that saw
 * the error; fencing means another process uses the same
 * transactional_id_prefix, and is fatal for the source that sees it.
 */
typedef struct outboxd_sink_pool outboxd_sink_pool_t;

/* conf must outlive the pool (and every sink made from it); stop is the
 * process's stop flag. Producers are created, nothing is contacted. NULL +
 * errstr on a configuration error. */
outboxd_sink_pool_t *outboxd_sink_pool_new(const outboxd_config_t *conf, int n, atomic_int *stop,
                                           char *errstr, size_t errstr_size);
/* After every sink made from it was destroyed. */
void outboxd_sink_pool_destroy(outboxd_sink_pool_t *p);

/* Called between retries; also checked: *stop set means give up. */
typedef void (*outboxd_keepalive_cb)(void *opaque);

/* conf and src must outlive the sink. NULL + errstr on a configuration error. */
outboxd_sink_t *outboxd_sink_new(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                                 outboxd_keepalive_cb keepalive, void *opaque, atomic_int *stop,
                                 char *errstr, size_t errstr_size);
/* A sink that borrows its producers from pool (see above); conf and src as
 * for outboxd_sink_new. */
outboxd_sink_t *outboxd_sink_new_pooled(outboxd_sink_pool_t *pool, const outboxd_config_t *conf,
                                        const outboxd_source_conf_t *src,
                                        outboxd_keepalive_cb keepalive, void *opaque,
                                        atomic_int *stop, char *errstr, size_t errstr_size);
void outboxd_sink_destroy(outboxd_sink_t *s);

/*
 * init_transactions (fences older instances with the same transactional.id
 * and completes their open transaction), ensures the checkpoint topic
 * exists (compacted), and reads this source's last committed checkpoint into
 * *ck (zeroed when there is none). Must be called once before begin; may be
 * called again after OUTBOXD_SINK_RETRY.
 */
outboxd_sink_status_t outboxd_sink_init(outboxd_sink_t *s, outboxd_checkpoint_t *ck, char *errstr,
                                        size_t errstr_size);

/*
 * The first part of outboxd_sink_init alone (own producers): init_transactions,
 * which settles what an earlier run left open under this source's ids. A
 * later outboxd_sink_init does not repeat it. Nothing for a pooled sink (its
 * pool settles every id at once). Returns OK, or as outboxd_sink_init.
 */
outboxd_sink_status_t outboxd_sink_fence(outboxd_sink_t *s, char *errstr, size_t errstr_size);

/* Whether a Kafka transaction is open. */
bool outboxd_sink_in_txn(const outboxd_sink_t *s);

/* With a pool of producers (relay.kafka_producers): whether another source
 * waits for one of them right now (false without a pool). */
bool outboxd_sink_pool_contended(const outboxd_sink_t *s);

/* Produces one record, beginning a transaction if none is open. */
outboxd_sink_status_t outboxd_sink_produce(outboxd_sink_t *s, const outboxd_record_t *rec,
                                           char *errstr, size_t errstr_size);

/* Produces the checkpoint record and commits. */
outboxd_sink_status_t outboxd_sink_commit(outboxd_sink_t *s, const outboxd_checkpoint_t *ck,
                                          char *errstr, size_t errstr_size);

/*
 * After OUTBOXD_SINK_ABORTED: the number (1 = first record produced in the
 * aborted transaction, counting every outboxd_sink_produce call) of a record
 * Kafka refused for a reason that retrying cannot fix (too large for the
 * broker or topic, invalid, not authorized), with the reason; 0 if none.
 * *count (if not NULL) is how many records were refused: more than one
 * usually means a whole batch was refused (max.message.bytes applies to a
 * batch) and the returned one, the largest, is only a guess; replay with
 * outboxd_sink_set_one_by_one to find the culprit. Valid until the next
 * transaction begins.
 */
uint64_t outboxd_sink_refused(const outboxd_sink_t *s, char *reason, size_t reason_size,
                              uint64_t *count);

/* After OUTBOXD_SINK_ABORTED: whether Kafka refused the checkpoint record
 * itself (the checkpoint topic is misconfigured; retrying cannot help). */
bool outboxd_sink_checkpoint_refused(const outboxd_sink_t *s, char *reason, size_t reason_size);

/* After OUTBOXD_SINK_ABORTED: a topic a record failed for as unknown (deleted
 * while in use), or NULL. */
const char *outboxd_sink_missing_topic(const outboxd_sink_t *s);

/* One record per request: each produce waits for its delivery report (and
 * aborts when it is refused), so a refusal identifies exactly one record.
 * Slow; for replaying a transaction that failed with several refusals. */
void outboxd_sink_set_one_by_one(outboxd_sink_t *s, bool on);

/* The key the checkpoint is read and written under (default: the source's
 * name, which also names the transactional.id). Before outboxd_sink_init. A
 * replay keys its checkpoint by what it replays, so two replays of one
 * source keep apart where each got. */
void outboxd_sink_set_checkpoint_key(outboxd_sink_t *s, const char *key);

/* The last checkpoint under another key (after outboxd_sink_init): for a
 * replay, what an older version wrote under its former key. */
outboxd_sink_status_t outboxd_sink_read_checkpoint_key(outboxd_sink_t *s, const char *key,
                                                       outboxd_checkpoint_t *ck, char *errstr,
                                                       size_t errstr_size);

/* False after the sink replaced its producers (a fatal producer-state error
 * other than fencing, reported as OUTBOXD_SINK_ABORTED): call
 * outboxd_sink_init again before producing. */
bool outboxd_sink_ready(const outboxd_sink_t *s);

/*
 * After OUTBOXD_SINK_FATAL: whether the error was fencing. That is either
 * another producer with the same transactional.id (another instance), or the
 * broker's transaction coordinator aborting a transaction of ours that
 * outlived transaction.timeout.ms (a link to the broker silent that long),
 * which bumps the producer epoch the same way. The caller tells them apart
 * (see source.c: who holds the replication slot). Always false for a
 * pooled sink: a pool id is shared by all sources, so holding one's slot
 * proves nothing; fencing there is fatal (the error says why).
 */
bool outboxd_sink_fenced(const outboxd_sink_t *s);

/* Replaces every producer by a new one with the same transactional.id (their
 * init_transactions finish what the old ones left open); the sink must be
 * initialized again with outboxd_sink_init. Returns 0, or -1 with errstr. */
int outboxd_sink_replace_producers(outboxd_sink_t *s, char *errstr, size_t errstr_size);

/* Aborts the open transaction, if any. */
outboxd_sink_status_t outboxd_sink_abort(outboxd_sink_t *s, char *errstr, size_t errstr_size);

/* Serves librdkafka callbacks (errors, logs); call from the source loop. */
void outboxd_sink_poll(outboxd_sink_t *s);

/*
 * Builds the producer and the checkpoint reader from conf exactly as the
 * sink does (the same property code, then rd_kafka_new, which refuses
 * invalid combinations) and destroys them again; nothing is contacted on
 * purpose. Returns 0, or -1 with errstr (a configuration error).
 */
int outboxd_sink_check_conf(const outboxd_config_t *conf, char *errstr, size_t errstr_size);

/*
 * What is known to cost the relay with the librdkafka of version (as
 * rd_kafka_version() gives it): a sentence for the startup log, or NULL.
 * Before 2.4.0 librdkafka's main thread serves its queue with a 0 ms timeout
 * while its next timer is less than 1 ms away (librdkafka #4671), and a
 * transaction arms such a timer each time it registers partitions, so every
 * Kafka transaction spins a producer's main thread for about 1 to 2 ms.
 */
const char *outboxd_sink_librdkafka_note(int version);

/*
 * The relay's defaults for every librdkafka client it makes (before the
 * kafka.properties entries, which override them): client metrics push off
 * (enable.metrics.push, librdkafka 2.5.0 and later).
 */
struct rd_kafka_conf_s;
void outboxd_sink_conf_defaults(struct rd_kafka_conf_s *kc);

/*
 * Asks the brokers for metadata within timeout_ms, with librdkafka's log
 * lines kept at debug. Returns the number of brokers, -1 with the
 * transport's reason in errstr, or -2 when a broker answered but TLS, SASL or
 * security.protocol failed (errstr: the cause and the property to fix).
 */
int outboxd_sink_probe(const outboxd_config_t *conf, int timeout_ms, char *errstr,
                       size_t errstr_size);

/*
 * A Kafka client (an rd_kafka_t *, untyped so this header needs no
 * librdkafka) with the sink's settings and librdkafka's log lines at debug,
 * for admin requests (kafkacheck.c); NULL with the reason in errstr.
 * outboxd_sink_admin_poll serves its callbacks (errors; a SASL OAUTHBEARER
 * token refresh) and returns the first error it reported, as cause and fix
 * for TLS or SASL failures (NULL: none yet); the caller polls it while it
 * waits, and destroys it with outboxd_sink_admin_destroy.
 */
void *outboxd_sink_admin_client(const outboxd_config_t *conf, char *errstr, size_t errstr_size);
const char *outboxd_sink_admin_poll(void *client);
void outboxd_sink_admin_destroy(void *client);

#endif

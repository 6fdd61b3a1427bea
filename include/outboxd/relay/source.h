/*
 * One source: a PostgreSQL database relayed into Kafka by its own loop, with
 * its own replication connection, slot, decoder, router and transactional
 * producer. Sources share only the configuration, logging, the pool of loop
 * threads that runs their loops (loops.h, relay.loop_threads) and, when
 * configured, a pool of Kafka producers.
 *
 * The loop runs until *stop is set (then it commits the batch in hand and
 * confirms it) or until a fatal error (fenced, bad configuration the relay
 * cannot fix by retrying). PostgreSQL outages and abortable Kafka errors are
 * retried with backoff and never end the loop. "The thread" below is
 * whichever loop thread runs the source's loop at the time: one at a time.
 */
#ifndef OUTBOXD_SOURCE_H
#define OUTBOXD_SOURCE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "outboxd/relay/config.h"
#include "outboxd/relay/loops.h"
#include "outboxd/relay/sink.h"
#include "outboxd/relay/stats.h"

typedef struct outboxd_source outboxd_source_t;

/* conf and src must outlive the source; stop is shared by all sources. */
outboxd_source_t *outboxd_source_new(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                                     atomic_int *stop, char *errstr, size_t errstr_size);

/* Where the source reports its statistics (metrics.h); call before
 * outboxd_source_start. stats must outlive the source; NULL for none. */
void outboxd_source_set_stats(outboxd_source_t *s, outboxd_stats_t *stats);

/* relay.kafka_producers > 0: the source borrows its Kafka producers from
 * pool (sink.h) instead of making its own; call before outboxd_source_start.
 * pool must outlive the source. */
void outboxd_source_set_pool(outboxd_source_t *s, outboxd_sink_pool_t *pool);

/* Starts the loop on loops (which must outlive the source). Returns 0, or -1
 * with errstr. */
int outboxd_source_start(outboxd_source_t *s, outboxd_loops_t *loops, char *errstr,
                         size_t errstr_size);

/* True once the loop has finished (without blocking). */
bool outboxd_source_done(outboxd_source_t *s);

/* Wakes the source's loop if it sleeps idle (call after setting the stop
 * flag, so an idle source stops at once rather than after its poll). */
void outboxd_source_wake(outboxd_source_t *s);

/* Waits for the loop to finish; returns 0 for a clean stop, 1 after a fatal error. */
int outboxd_source_join(outboxd_source_t *s);

void outboxd_source_destroy(outboxd_source_t *s);

/*
 * Configuration reload. Hands the source a new configuration (conf, and src
 * its entry for this source), generation gen. The thread applies it at its
 * next transaction boundary (it commits the batch in hand first) and logs a
 * line when it did; a newer hand-over before that replaces this one.
 * conf must stay valid while outboxd_source_uses(s, conf) is true.
 */
void outboxd_source_reload(outboxd_source_t *s, const outboxd_config_t *conf,
                           const outboxd_source_conf_t *src, uint64_t gen);

/* Whether the thread may still read conf (running on it, its Kafka producers
 * built from it, or handed over and not yet applied). */
bool outboxd_source_uses(outboxd_source_t *s, const outboxd_config_t *conf);

/* The last generation the thread applied (or refused with an ERROR); 0 for
 * the configuration it was created with. */
uint64_t outboxd_source_applied(outboxd_source_t *s);
/* The last reload generation this source could not build (it kept its
 * running configuration and logged why), 0 if none. */
uint64_t outboxd_source_refused(outboxd_source_t *s);

#endif

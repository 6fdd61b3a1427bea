/*
 * Checkpoint store: reads the last committed checkpoint of sources from the
 * compacted checkpoint topic (checkpoint.h for the record).
 *
 * The topic is read from the beginning with read_committed up to the high
 * watermark. Sources that ask at about the same time are served by one read
 * (a "round"): a round closes its list of sources before it takes the high
 * watermarks, so every source it serves asked before the read began, and a
 * source asking later waits for the next round. The caller must have fenced
 * every producer that can hold an open transaction with the source's
 * checkpoint (init_transactions) before it asks: then all of that source's
 * checkpoints lie below the watermark the round takes.
 *
 * Thread-safe; each asking thread calls its own keepalive while it waits.
 */
#ifndef OUTBOXD_CKSTORE_H
#define OUTBOXD_CKSTORE_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>

#include "outboxd/relay/checkpoint.h"

typedef struct outboxd_ckstore outboxd_ckstore_t;

/*
 * base: a consumer configuration (bootstrap servers, security, the user's
 * consumer properties); the store takes ownership. topic: the checkpoint
 * topic; group: a group.id for the reader (nothing is committed to it).
 * gather_ms: how long the first asker of a round waits for others to join
 * (0 for a store serving one source). NULL + errstr on a bad property.
 */
outboxd_ckstore_t *outboxd_ckstore_new(rd_kafka_conf_t *base, const char *topic, const char *group,
                                       int gather_ms, char *errstr, size_t errstr_size);
void outboxd_ckstore_destroy(outboxd_ckstore_t *cs);

/*
 * Reads the last committed checkpoint of source name into *ck (zeroed when
 * there is none). keepalive(opaque) is called every 200 ms or so while
 * reading or waiting (may be NULL). Returns 0; -1 with errstr when the read
 * failed or timed out (retry later); -2 with errstr when a client could not
 * be made (a configuration error).
 */
int outboxd_ckstore_read(outboxd_ckstore_t *cs, const char *name, outboxd_checkpoint_t *ck,
                         void (*keepalive)(void *), void *opaque, char *errstr, size_t errstr_size);

#endif

/*
 * Checkpoint records: what a source has durably published to Kafka.
 *
 * One record is written to the compacted checkpoint topic (key = source name)
 * inside every Kafka transaction, so it commits or aborts together with the
 * events it covers. PostgreSQL transactions are identified by the LSN of
 * their commit record, which increases in the order pgoutput sends them.
 *
 * The value is a small JSON object (readable with any consumer):
 *   {"v":1,"source":"payment","system_id":"7311...","database":"payment",
 *    "slot":"outboxd_payment","commit_lsn":"0/1A2B3C0","end_lsn":"0/1A2B3F8",
 *    "changes":-1}
 * changes = -1: the transaction at commit_lsn was published whole.
 * changes = N >= 0: only its first N changes were (a huge transaction split
 * over several Kafka transactions); end_lsn is then 0.
 */
#ifndef OUTBOXD_CHECKPOINT_H
#define OUTBOXD_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/common/util.h"

typedef struct outboxd_checkpoint {
    outboxd_lsn_t commit_lsn; /* 0: nothing published yet */
    outboxd_lsn_t end_lsn;
    int64_t changes;
    char system_id[32];
    char database[64];
    char slot[64];
} outboxd_checkpoint_t;

/* Appends the JSON value to out. Returns 0, or -1 on OOM. */
int outboxd_checkpoint_encode(const char *source, const outboxd_checkpoint_t *ck,
                              outboxd_buf_t *out);

/* Parses a value. Returns 0, or -1 with errstr filled. */
int outboxd_checkpoint_decode(const void *data, size_t len, outboxd_checkpoint_t *ck, char *errstr,
                              size_t errstr_size);

/*
 * Whether change number change_index (0-based, counting every change message
 * of the transaction) of the transaction whose commit record is at
 * commit_lsn has already been published according to ck. change_index -1
 * asks about the whole transaction (true only if all of it was).
 */
bool outboxd_checkpoint_covers(const outboxd_checkpoint_t *ck, outboxd_lsn_t commit_lsn,
                               int64_t change_index);

#endif

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
 *    "changes":-1,"timeline":1}
 * changes = -1: the transaction at commit_lsn was published whole.
 * changes = N >= 0: only its first N changes were (a huge transaction split
 * over several Kafka transactions); end_lsn is then 0, and "last_lsn" and
 * "last_lsn_n" say where the split is by WAL position: every change before
 * last_lsn and the first last_lsn_n changes at last_lsn (one WAL record, e.g.
 * a COPY's multi-insert, can carry several) were published. Positions, unlike
 * the count, do not shift when the publication's tables change between the
 * first send and a replay. Records without them (written by older versions)
 * are read with the count.
 * "timeline" (absent in older records: 0, unknown) is the server's timeline
 * when the record was written: after a promotion or a point-in-time restore
 * the same LSNs name other transactions.
 * "snapshot" (absent when the source never snapshotted) is the progress of
 * the initial snapshot of the source's cdc tables, an object owned by
 * relay/snapshot.c; this module keeps it as opaque compact JSON text so it
 * rides along in every record (older relays ignore the key).
 */
#ifndef OUTBOXD_CHECKPOINT_H
#define OUTBOXD_CHECKPOINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outboxd/common/util.h"

/* Room for the snapshot progress (its keys are primary key values). */
#define OUTBOXD_CHECKPOINT_SNAPSHOT_MAX 4096

typedef struct outboxd_checkpoint {
    outboxd_lsn_t commit_lsn; /* 0: nothing published yet */
    outboxd_lsn_t end_lsn;
    int64_t changes;
    char system_id[32];
    char database[64];
    char slot[64];
    uint32_t timeline;      /* 0: unknown (older record) */
    outboxd_lsn_t last_lsn; /* partial: WAL position of the last covered change; 0: use changes */
    int64_t last_lsn_n;     /* partial: changes at last_lsn covered (>= 1) */
    /* Snapshot progress as compact JSON text (snapshot.h), "" for none. */
    char snapshot[OUTBOXD_CHECKPOINT_SNAPSHOT_MAX];
} outboxd_checkpoint_t;

/* Where a change sits in its transaction. */
typedef struct outboxd_change_pos {
    int64_t index;       /* 0-based, counting every change message of the transaction */
    outboxd_lsn_t lsn;   /* WAL position of the change (XLogData start) */
    int64_t lsn_ordinal; /* 0-based among the changes at this same lsn */
} outboxd_change_pos_t;

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

/*
 * Like outboxd_checkpoint_covers for one change, but by its WAL position when
 * ck records one (last_lsn), else by pos->index.
 */
bool outboxd_checkpoint_covers_change(const outboxd_checkpoint_t *ck, outboxd_lsn_t commit_lsn,
                                      const outboxd_change_pos_t *pos);

/* What a server says about itself and the slot, to judge a checkpoint by. */
typedef struct outboxd_server_pos {
    const char *system_id;
    const char *database;
    const char *slot;
    uint32_t timeline;
    outboxd_lsn_t wal_pos; /* the server's current WAL position */
    /* Where the checkpoint's timeline ended in this server's history (from
     * TIMELINE_HISTORY), when ck's timeline is an older one of this server;
     * 0 when unknown or not in the history. */
    outboxd_lsn_t ck_timeline_end;
} outboxd_server_pos_t;

/*
 * Whether skipping by ck's LSNs is safe on this server: the same system,
 * database and slot, and LSNs that mean the same transactions (the same
 * timeline, or ck written before this server's history left ck's timeline;
 * and not beyond the server's current WAL, which only a restored or other
 * cluster can be). Returns true, or false with the reason in why.
 */
bool outboxd_checkpoint_trusted(const outboxd_checkpoint_t *ck, const outboxd_server_pos_t *srv,
                                char *why, size_t why_size);

#endif

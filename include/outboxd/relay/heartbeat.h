/*
 * Heartbeats for databases with no traffic at all (sources[].heartbeat_interval_ms).
 *
 * Every interval, a transactional logical message with the prefix
 * "outboxd.heartbeat" and no content is written on an ordinary connection
 * of the source: PostgreSQL decodes it like any transaction, the relay
 * ignores it (no table, a prefix nobody configures) and confirms its end, so
 * the slot moves forward even when nothing else in the database is written.
 * Nothing is ever published for it.
 *
 * One thread serves every source that asks for heartbeats. A failure (the
 * database is down) is logged once per streak and retried at the next tick.
 */
#ifndef OUTBOXD_HEARTBEAT_H
#define OUTBOXD_HEARTBEAT_H

#include <stdatomic.h>

#include "outboxd/relay/config.h"
#include "outboxd/relay/metrics.h"

#define OUTBOXD_HEARTBEAT_PREFIX "outboxd.heartbeat"

typedef struct outboxd_heartbeat outboxd_heartbeat_t;

/* Starts the thread when some source has heartbeat_interval_ms > 0; returns
 * NULL otherwise, or with errstr filled when the thread cannot start (check
 * errstr[0]). conf, metrics (may be NULL) and stop must outlive it. */
outboxd_heartbeat_t *outboxd_heartbeat_start(const outboxd_config_t *conf,
                                             outboxd_metrics_t *metrics, atomic_int *stop,
                                             char *errstr, size_t errstr_size);

/* After a reload: each source's password as the new configuration has it
 * (password_file read again: rotation), used from that heartbeat's next
 * connection, as the source's own connections do. Copied: conf need not
 * outlive the call. Accepts NULL hb. */
void outboxd_heartbeat_reload(outboxd_heartbeat_t *hb, const outboxd_config_t *conf);

/* Waits for the thread (which ends once *stop is set) and frees. Accepts NULL. */
void outboxd_heartbeat_stop(outboxd_heartbeat_t *hb);

#endif

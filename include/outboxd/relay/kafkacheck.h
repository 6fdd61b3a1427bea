/*
 * `outboxd check`'s look at the Kafka topics the relay writes to, by their
 * configuration as the broker holds it (DescribeConfigs): settings that
 * break the relay only later, at a commit or after days, named with the
 * command that fixes them.
 *
 *   - the checkpoint topic (relay.checkpoint_topic) must be compacted: with
 *     cleanup.policy=delete its records are deleted with the topic's
 *     retention, so an idle source's last checkpoint can be gone at its next
 *     start, and every start reads all the checkpoints the retention keeps
 *     instead of one per source;
 *   - every topic a transaction writes to (checkpoint, dead-letter, the
 *     fixed topics of outbox tables and messages, cdc tables' topics) must
 *     take the broker's own transaction markers (max.message.bytes of at
 *     least 100 bytes; a marker is 78 in Kafka 3.9): below that Kafka may
 *     not end the transaction and keeps it pending (README, "Never below
 *     100 bytes");
 *   - the checkpoint topic must take a checkpoint record (1 KB at least:
 *     one Kafka refuses stops the relay);
 *   - a fixed event topic (as above) that does not exist, on a broker that
 *     does not create topics (auto.create.topics.enable=false), with
 *     relay.missing_topic wait (the source would wait) or dead_letter (its
 *     rows would be dead-lettered).
 * A topic whose configuration this client may not read (no DescribeConfigs
 * ACL) is named and not counted as a problem. Topics from templates with
 * ${column} placeholders are known only at run time and are not checked.
 */
#ifndef OUTBOXD_KAFKACHECK_H
#define OUTBOXD_KAFKACHECK_H

#include <stdatomic.h>

#include "outboxd/common/util.h"
#include "outboxd/relay/config.h"

/* The smallest max.message.bytes that takes a transaction marker (78
 * bytes as Kafka 3.9 writes it), with a margin. */
#define OUTBOXD_MIN_TOPIC_MESSAGE_BYTES 100
/* The checkpoint topic's: its records take a few hundred bytes (the source
 * name as key and in the JSON value, with the database and slot names and
 * the positions: checkpoint.c). */
#define OUTBOXD_MIN_CHECKPOINT_MESSAGE_BYTES 1024

/*
 * Appends one line per finding to report ("kafka: topic NAME (ROLE): ...").
 * Returns the number of problems (0: nothing to fix), or -1 when the topics
 * could not be looked at (report says why: no answer within timeout_ms, an
 * old broker), which `outboxd check` reports without counting it.
 */
int outboxd_kafkacheck_topics(const outboxd_config_t *conf, int timeout_ms, outboxd_buf_t *report);

/*
 * The checkpoint topic alone, in a thread of its own with a client of its
 * own, so no source's start waits for it (a DescribeConfigs took 5 to 33 ms
 * on a 2-core machine): `outboxd run` asks once, when every source streams
 * (or 10 s after its start), since an operator
 * who made the topic, and never ran `outboxd check`, may have made it with
 * the cluster's defaults. Its problems are logged as WARN (the relay runs
 * regardless), anything else at debug. stop ends its wait early. NULL when
 * the thread could not start (nothing is checked then).
 */
typedef struct outboxd_kafkacheck_bg outboxd_kafkacheck_bg_t;
outboxd_kafkacheck_bg_t *outboxd_kafkacheck_start(const outboxd_config_t *conf, atomic_int *stop);
/* Waits for the thread (about 200 ms once stop is set, then the destruction
 * of its client). NULL: no-op. */
void outboxd_kafkacheck_join(outboxd_kafkacheck_bg_t *bg);

#endif

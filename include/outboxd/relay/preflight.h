/*
 * Checks of a loaded configuration that the YAML loader cannot make, run by
 * `outboxd check` and `outboxd run` before anything connects: what this
 * version supports (mode: cdc not yet), and whether librdkafka accepts
 * kafka.properties, each on its own and together (the Kafka clients are
 * built by the sink's own code, see outboxd_sink_check_conf). Every problem
 * is a configuration error: the caller exits 2.
 */
#ifndef OUTBOXD_PREFLIGHT_H
#define OUTBOXD_PREFLIGHT_H

#include "outboxd/common/util.h"
#include "outboxd/relay/config.h"

/*
 * Appends one line per problem to report, as "FILE:LINE: key.path: message
 * and fix" (FILE: without a line for combinations). Returns the number of
 * problems, 0 when the configuration may run.
 */
int outboxd_preflight_check(const outboxd_config_t *conf, outboxd_buf_t *report);

#endif

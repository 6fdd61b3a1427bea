/*
 * `outboxd status`: what an operator asks first about a running (or
 * stopped) relay, per source: the slot (active, confirmed position, how much
 * WAL it holds), the last checkpoint committed in Kafka, and from the
 * running relay's metrics endpoint (when metrics.listen is set) its state
 * and lag in seconds. Read-only: it never takes the slot or fences the
 * relay's producers.
 */
#ifndef OUTBOXD_STATUS_H
#define OUTBOXD_STATUS_H

#include <stdio.h>

#include "outboxd/relay/config.h"

/* Prints the report to out. Returns the number of problems found (a source
 * unreachable, a slot missing, Kafka unreachable). */
int outboxd_status_report(const outboxd_config_t *conf, FILE *out);

#endif

/*
 * systemd service notifications (sd_notify): READY=1, RELOADING=1, STOPPING=1, STATUS=,
 * WATCHDOG=1. Every call is a no-op when the process was not started by
 * systemd (NOTIFY_SOCKET unset), so the relay runs the same in a terminal,
 * a container or a test.
 */
#ifndef OUTBOXD_NOTIFY_H
#define OUTBOXD_NOTIFY_H

#include <stdbool.h>
#include <stdint.h>

/* READY=1 with a STATUS= line. */
void outboxd_notify_ready(const char *status);
/* STOPPING=1 with a STATUS= line. */
void outboxd_notify_stopping(const char *status);
/* RELOADING=1 with MONOTONIC_USEC= (now, CLOCK_MONOTONIC) and a STATUS=
 * line; READY=1 must follow once the reload is done (or failed). */
void outboxd_notify_reloading(const char *status);
/* A STATUS= line only. */
void outboxd_notify_status(const char *status);
/* WATCHDOG=1. */
void outboxd_notify_watchdog(void);
/* The watchdog period systemd asks for (WatchdogSec), in microseconds, or 0
 * when no watchdog is set up for this process. */
uint64_t outboxd_notify_watchdog_usec(void);

#endif

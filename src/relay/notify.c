/*
 * sd_notify wrappers (notify.h). libsystemd does the protocol (a datagram to
 * $NOTIFY_SOCKET, abstract or path); we only compose the messages.
 */
#include "outboxd/relay/notify.h"

#include <stdio.h>
#include <time.h>
#include <systemd/sd-daemon.h>

#include "outboxd/common/log.h"

static void notify(const char *state, const char *status)
{
    char msg[512];
    if (status && state)
        snprintf(msg, sizeof(msg), "%s\nSTATUS=%s", state, status);
    else if (status)
        snprintf(msg, sizeof(msg), "STATUS=%s", status);
    else
        snprintf(msg, sizeof(msg), "%s", state);
    int r = sd_notify(0, msg);
    if (r < 0)
        LOG_DEBUG(NULL, "sd_notify failed: error %d", r);
}

void outboxd_notify_ready(const char *status)
{
    notify("READY=1", status);
}

void outboxd_notify_stopping(const char *status)
{
    notify("STOPPING=1", status);
}

void outboxd_notify_status(const char *status)
{
    notify(NULL, status);
}

void outboxd_notify_reloading(const char *status)
{
    /* systemd (notify-reload) wants the CLOCK_MONOTONIC time the reload
     * began, so it can tell this reload's READY=1 from an earlier one. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char state[96];
    snprintf(state, sizeof(state), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    notify(state, status);
}

void outboxd_notify_watchdog(void)
{
    notify("WATCHDOG=1", NULL);
}

uint64_t outboxd_notify_watchdog_usec(void)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        return usec;
    return 0;
}

/*
 * Line-oriented logging to stderr. Each line is formatted into a local buffer
 * and written with one write(2), so lines from source threads never interleave.
 */
#include "outboxd/common/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = OUTBOXD_LOG_INFO;

static const char *level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void outboxd_log_set_level(outboxd_log_level_t level)
{
    atomic_store(&log_level, (int)level);
}

outboxd_log_level_t outboxd_log_get_level(void)
{
    return (outboxd_log_level_t)atomic_load(&log_level);
}

int outboxd_log_level_parse(const char *name, outboxd_log_level_t *out)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(name, names[i]) == 0) {
            *out = (outboxd_log_level_t)i;
            return 1;
        }
    }
    if (strcasecmp(name, "warning") == 0) {
        *out = OUTBOXD_LOG_WARN;
        return 1;
    }
    return 0;
}

void outboxd_log(outboxd_log_level_t level, const char *scope, const char *fmt, ...)
{
    if ((int)level < atomic_load(&log_level))
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s [%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, level_names[level], scope ? scope : "main");
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

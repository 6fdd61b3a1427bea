/*
 * Line-oriented logging to stderr. Each line is formatted into a local buffer
 * and written with one write(2), so lines from source threads never interleave.
 */
#include "outboxd/common/log.h"

#include "outboxd/common/util.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level = OUTBOXD_LOG_INFO;
static atomic_int log_format = OUTBOXD_LOG_FORMAT_TEXT;

static const char *level_names[] = {"DEBUG", "INFO", "WARN", "ERROR"};

void outboxd_log_set_level(outboxd_log_level_t level)
{
    atomic_store(&log_level, (int)level);
}

outboxd_log_level_t outboxd_log_get_level(void)
{
    return (outboxd_log_level_t)atomic_load(&log_level);
}

void outboxd_log_set_format(outboxd_log_format_t format)
{
    atomic_store(&log_format, (int)format);
}

int outboxd_log_format_parse(const char *name, outboxd_log_format_t *out)
{
    if (strcasecmp(name, "text") == 0) {
        *out = OUTBOXD_LOG_FORMAT_TEXT;
        return 1;
    }
    if (strcasecmp(name, "json") == 0) {
        *out = OUTBOXD_LOG_FORMAT_JSON;
        return 1;
    }
    return 0;
}

/* Appends s as the inside of a JSON string: quotes, backslashes and control
 * characters escaped, bytes >= 0x80 passed through (messages quote UTF-8
 * data; invalid sequences are replaced so collectors do not reject the
 * line). Stops before overflowing out; returns the new length. */
static size_t json_escape(char *out, size_t len, size_t cap, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (const unsigned char *p = (const unsigned char *)s; *p && len + 7 < cap;) {
        unsigned char ch = *p;
        if (ch == '"' || ch == '\\') {
            out[len++] = '\\';
            out[len++] = (char)ch;
        } else if (ch == '\n') {
            out[len++] = '\\';
            out[len++] = 'n';
        } else if (ch == '\t') {
            out[len++] = '\\';
            out[len++] = 't';
        } else if (ch < 0x20 || ch == 0x7f) {
            memcpy(out + len, "\\u00", 4);
            len += 4;
            out[len++] = hex[ch >> 4];
            out[len++] = hex[ch & 15];
        } else if (ch >= 0x80) {
            size_t n = outboxd_utf8_len(p, strlen((const char *)p));
            if (n == 0) {
                memcpy(out + len, "\\ufffd", 6);
                len += 6;
                p++;
                continue;
            }
            if (len + n + 7 >= cap)
                break;
            memcpy(out + len, p, n);
            len += n;
            p += n;
            continue;
        } else {
            out[len++] = (char)ch;
        }
        p++;
    }
    return len;
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
    char msg[1536];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[64];
    snprintf(stamp, sizeof(stamp), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ts.tv_nsec / 1000000));
    size_t len;
    va_list ap;
    va_start(ap, fmt);
    if (atomic_load(&log_format) == OUTBOXD_LOG_FORMAT_JSON) {
        static const char *json_levels[] = {"debug", "info", "warn", "error"};
        if (vsnprintf(msg, sizeof(msg), fmt, ap) < 0)
            msg[0] = '\0';
        int n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",\"scope\":\"", stamp,
                         json_levels[level]);
        len = json_escape(line, (size_t)n, sizeof(line) - 8, scope ? scope : "main");
        memcpy(line + len, "\",\"msg\":\"", 9);
        len = json_escape(line, len + 9, sizeof(line) - 4, msg);
        line[len++] = '"';
        line[len++] = '}';
    } else {
        int n = snprintf(line, sizeof(line), "%s %-5s [%s] ", stamp, level_names[level],
                         scope ? scope : "main");
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
        len = (size_t)n + (m < 0 ? 0 : (size_t)m);
        if (len > sizeof(line) - 2)
            len = sizeof(line) - 2;
    }
    va_end(ap);
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

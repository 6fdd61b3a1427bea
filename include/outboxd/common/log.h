/*
 * Logging to stderr, one line per event of interest:
 *   2026-11-24T12:00:00.123Z INFO  [payment] message
 * or, in the JSON format (one object per line, for log collectors):
 *   {"ts":"2026-11-24T12:00:00.123Z","level":"info","scope":"payment","msg":"message"}
 * Thread-safe (one write(2) per line).
 */
#ifndef OUTBOXD_LOG_H
#define OUTBOXD_LOG_H

typedef enum {
    OUTBOXD_LOG_DEBUG = 0,
    OUTBOXD_LOG_INFO = 1,
    OUTBOXD_LOG_WARN = 2,
    OUTBOXD_LOG_ERROR = 3,
} outboxd_log_level_t;

void outboxd_log_set_level(outboxd_log_level_t level);
outboxd_log_level_t outboxd_log_get_level(void);
typedef enum {
    OUTBOXD_LOG_FORMAT_TEXT = 0,
    OUTBOXD_LOG_FORMAT_JSON = 1,
} outboxd_log_format_t;

void outboxd_log_set_format(outboxd_log_format_t format);
/* Returns false for an unknown name ("text", "json"). */
int outboxd_log_format_parse(const char *name, outboxd_log_format_t *out);

/* Returns false for an unknown name ("debug", "info", "warn", "error"). */
int outboxd_log_level_parse(const char *name, outboxd_log_level_t *out);

/* scope is a short tag (a source name, "main", "kafka"); may be NULL. */
void outboxd_log(outboxd_log_level_t level, const char *scope, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define LOG_DEBUG(scope, ...) outboxd_log(OUTBOXD_LOG_DEBUG, scope, __VA_ARGS__)
#define LOG_INFO(scope, ...)  outboxd_log(OUTBOXD_LOG_INFO, scope, __VA_ARGS__)
#define LOG_WARN(scope, ...)  outboxd_log(OUTBOXD_LOG_WARN, scope, __VA_ARGS__)
#define LOG_ERROR(scope, ...) outboxd_log(OUTBOXD_LOG_ERROR, scope, __VA_ARGS__)

#endif

/*
 * Small shared helpers: a growable byte buffer, LSN text conversion, clocks.
 */
#ifndef OUTBOXD_UTIL_H
#define OUTBOXD_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A PostgreSQL WAL position. */
typedef uint64_t outboxd_lsn_t;

/* Growable byte buffer. The buffer owns data; outboxd_buf_free releases it. */
typedef struct outboxd_buf {
    char *data;
    size_t len;
    size_t cap;
} outboxd_buf_t;

/* Each returns false only when memory is exhausted. */
bool outboxd_buf_reserve(outboxd_buf_t *b, size_t extra);
bool outboxd_buf_append(outboxd_buf_t *b, const void *data, size_t len);
bool outboxd_buf_append_str(outboxd_buf_t *b, const char *s);
bool outboxd_buf_printf(outboxd_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void outboxd_buf_reset(outboxd_buf_t *b);
void outboxd_buf_free(outboxd_buf_t *b);
/* Appends the standard base64 of data (RFC 4648: padded, no line breaks). */
bool outboxd_buf_base64(outboxd_buf_t *b, const void *data, size_t len);

/* PostgreSQL's bytea text (hex "\x..." or the escape format) decoded into
 * out (reset first); false on malformed text or OOM. */
bool outboxd_bytea_parse(const char *s, size_t len, outboxd_buf_t *out);

/* "16/B374D848" form; out must hold OUTBOXD_LSN_STRLEN bytes. */
#define OUTBOXD_LSN_STRLEN 24
void outboxd_lsn_format(outboxd_lsn_t lsn, char *out);
/* Parses "X/Y"; returns false on malformed text. */
bool outboxd_lsn_parse(const char *s, outboxd_lsn_t *out);

/* Monotonic clock in milliseconds / microseconds. */
int64_t outboxd_now_ms(void);
int64_t outboxd_now_us(void);
/* Wall clock, microseconds since the Unix epoch. */
int64_t outboxd_wall_us(void);

/* PostgreSQL timestamps count microseconds from 2000-01-01. */
#define OUTBOXD_PG_EPOCH_OFFSET_US 946684800000000LL

/* Length of the valid UTF-8 sequence at p (at most left bytes), or 0 when
 * there is none (overlong forms, surrogates and values past U+10FFFF are
 * invalid). */
size_t outboxd_utf8_len(const unsigned char *p, size_t left);

/* strdup / strndup that return NULL on OOM (no abort). */
char *outboxd_strndup(const char *s, size_t n);

#endif

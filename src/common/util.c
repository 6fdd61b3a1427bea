/*
 * Small shared helpers: growable buffer, LSN text, clocks.
 */
#include "outboxd/common/util.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

bool outboxd_buf_reserve(outboxd_buf_t *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p)
        return false;
    b->data = p;
    b->cap = cap;
    return true;
}

bool outboxd_buf_append(outboxd_buf_t *b, const void *data, size_t len)
{
    if (!outboxd_buf_reserve(b, len))
        return false;
    if (len)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0'; /* always NUL-terminated for convenience */
    return true;
}

bool outboxd_buf_append_str(outboxd_buf_t *b, const char *s)
{
    return outboxd_buf_append(b, s, strlen(s));
}

bool outboxd_buf_printf(outboxd_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !outboxd_buf_reserve(b, (size_t)n))
        return false;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return true;
}

bool outboxd_buf_base64(outboxd_buf_t *b, const void *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (!outboxd_buf_reserve(b, (len + 2) / 3 * 4))
        return false;
    const unsigned char *p = data;
    char *o = b->data + b->len;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < len)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < len)
            v |= p[i + 2];
        *o++ = tab[(v >> 18) & 63];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        *o++ = i + 2 < len ? tab[v & 63] : '=';
    }
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0'; /* reserve keeps room for it */
    return true;
}

/* bytea text: see util.h. */
bool outboxd_bytea_parse(const char *s, size_t len, outboxd_buf_t *out)
{
    outboxd_buf_reset(out);
    if (len >= 2 && s[0] == '\\' && s[1] == 'x') {
        if ((len - 2) % 2 || !outboxd_buf_reserve(out, (len - 2) / 2 + 1))
            return false;
        for (size_t i = 2; i < len; i += 2) {
            int v = 0;
            for (int k = 0; k < 2; k++) {
                char c = s[i + (size_t)k];
                int h = c >= '0' && c <= '9'   ? c - '0'
                        : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                               : -1;
                if (h < 0)
                    return false;
                v = v * 16 + h;
            }
            out->data[out->len++] = (char)v;
        }
        out->data[out->len] = '\0';
        return true;
    }
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '\\') {
            if (i + 1 < len && s[i + 1] == '\\') {
                i++;
            } else if (i + 3 < len) {
                c = (char)(((s[i + 1] - '0') << 6) | ((s[i + 2] - '0') << 3) | (s[i + 3] - '0'));
                i += 3;
            } else {
                return false;
            }
        }
        if (!outboxd_buf_append(out, &c, 1))
            return false;
    }
    return true;
}

void outboxd_buf_reset(outboxd_buf_t *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

void outboxd_buf_free(outboxd_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void outboxd_lsn_format(outboxd_lsn_t lsn, char *out)
{
    snprintf(out, OUTBOXD_LSN_STRLEN, "%X/%X", (uint32_t)(lsn >> 32), (uint32_t)lsn);
}

bool outboxd_lsn_parse(const char *s, outboxd_lsn_t *out)
{
    unsigned int hi, lo;
    int n = 0;
    if (!s || sscanf(s, "%X/%X%n", &hi, &lo, &n) != 2 || s[n] != '\0')
        return false;
    *out = ((uint64_t)hi << 32) | lo;
    return true;
}

int64_t outboxd_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t outboxd_now_ms(void)
{
    return outboxd_now_us() / 1000;
}

int64_t outboxd_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

char *outboxd_strndup(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (!p)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

size_t outboxd_utf8_len(const unsigned char *p, size_t left)
{
    unsigned char c = p[0];
    size_t n;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        cp = c & 0x07;
    } else
        return 0;
    if (left < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((n == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (n == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return n;
}

/*
 * A small HTTP server for operational endpoints (metrics, health), on
 * libmicrohttpd with its own listening thread. GET and HEAD only; every
 * request is answered by one handler callback that fills a response.
 *
 * The server knows nothing about what it serves: the relay registers a
 * handler (metrics.c) and the shop may register its own. Options live in a
 * struct so that TLS (certificate and key) can be added without changing
 * callers.
 */
#ifndef OUTBOXD_HTTP_H
#define OUTBOXD_HTTP_H

#include <stddef.h>

#include "outboxd/common/util.h"

typedef struct outboxd_http outboxd_http_t;

typedef struct outboxd_http_options {
    /* "host:port", "[v6addr]:port" or ":port" (all interfaces). Port 0
     * picks a free port (see outboxd_http_port). */
    const char *listen;
} outboxd_http_options_t;

/* What a handler fills. body is empty and status 200 on entry; the server
 * frees body after sending. content_type must be a static string. */
typedef struct outboxd_http_response {
    int status;
    const char *content_type;
    outboxd_buf_t body;
} outboxd_http_response_t;

/* Called on the server's thread, one request at a time. path excludes the
 * query string. */
typedef void (*outboxd_http_handler_fn)(void *opaque, const char *path,
                                        outboxd_http_response_t *resp);

/* Binds and starts serving. Returns NULL with errstr (e.g. the address is
 * in use) on failure. */
outboxd_http_t *outboxd_http_new(const outboxd_http_options_t *opts,
                                 outboxd_http_handler_fn handler, void *opaque, char *errstr,
                                 size_t errstr_size);

/* The bound TCP port. */
int outboxd_http_port(const outboxd_http_t *h);

/* Stops serving (waits for the request in progress) and frees. Accepts NULL. */
void outboxd_http_destroy(outboxd_http_t *h);

/*
 * Splits "host:port" / "[v6]:port" / ":port" into host (empty for all
 * interfaces) and port. Returns 0, or -1 with errstr. Exposed for tests.
 */
int outboxd_http_split_listen(const char *listen, char *host, size_t host_size, int *port,
                              char *errstr, size_t errstr_size);

#endif

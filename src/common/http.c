/*
 * HTTP server for operational endpoints (see http.h). We create the listening
 * socket ourselves, so that a bad address or a port in use gives a precise
 * error and port 0 can be reported, and hand it to libmicrohttpd, which runs
 * one internal thread polling it.
 */
#include "outboxd/common/http.h"

#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct outboxd_http {
    struct MHD_Daemon *daemon;
    int fd;
    int port;
    outboxd_http_handler_fn handler;
    void *opaque;
};

int outboxd_http_split_listen(const char *listen, char *host, size_t host_size, int *port,
                              char *errstr, size_t errstr_size)
{
    const char *colon, *h = listen;
    size_t hlen;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':') {
            snprintf(errstr, errstr_size,
                     "invalid listen address '%s' (expected [ipv6]:port, e.g. [::1]:9187)", listen);
            return -1;
        }
        h = listen + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(listen, ':');
        if (!colon) {
            snprintf(errstr, errstr_size,
                     "invalid listen address '%s' (expected host:port, e.g. 127.0.0.1:9187)",
                     listen);
            return -1;
        }
        hlen = (size_t)(colon - listen);
    }
    char *end = NULL;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end || errno || p < 0 || p > 65535) {
        snprintf(errstr, errstr_size, "invalid port in listen address '%s' (expected 0 to 65535)",
                 listen);
        return -1;
    }
    if (hlen >= host_size) {
        snprintf(errstr, errstr_size, "host name too long in listen address '%s'", listen);
        return -1;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)p;
    return 0;
}

static int open_listener(const char *addr, int *port_out, char *errstr, size_t errstr_size)
{
    char host[256];
    int port;
    if (outboxd_http_split_listen(addr, host, sizeof(host), &port, errstr, errstr_size) < 0)
        return -1;
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, service, &hints, &res);
    if (gai != 0) {
        snprintf(errstr, errstr_size, "cannot resolve listen address '%s': %s", addr,
                 gai_strerror(gai));
        return -1;
    }
    int fd = -1, last_errno = 0;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 64) < 0) {
            last_errno = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(errstr, errstr_size, "cannot listen on %s: %s%s", addr, strerror(last_errno),
                 last_errno == EADDRINUSE
                     ? " (another process uses the port; change metrics.listen)"
                     : "");
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    *port_out = port;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            *port_out = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6)
            *port_out = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    return fd;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls)
{
    (void)version;
    (void)upload_data;
    outboxd_http_t *h = cls;
    /* First call for a request: headers only. Nothing to wait for with GET,
     * but libmicrohttpd expects the first call to return without queuing. */
    if (*req_cls == NULL) {
        *req_cls = h;
        return MHD_YES;
    }
    outboxd_http_response_t r = {.status = 200, .content_type = "text/plain; charset=utf-8"};
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* ignore any body */
        return MHD_YES;
    }
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        r.status = MHD_HTTP_METHOD_NOT_ALLOWED;
        outboxd_buf_append_str(&r.body, "only GET and HEAD\n");
    } else {
        h->handler(h->opaque, url, &r);
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        r.body.len, r.body.data ? r.body.data : (void *)"", MHD_RESPMEM_MUST_COPY);
    outboxd_buf_free(&r.body);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r.content_type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (r.status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned int)r.status, resp);
    MHD_destroy_response(resp);
    return ret;
}

outboxd_http_t *outboxd_http_new(const outboxd_http_options_t *opts,
                                 outboxd_http_handler_fn handler, void *opaque, char *errstr,
                                 size_t errstr_size)
{
    outboxd_http_t *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    h->handler = handler;
    h->opaque = opaque;
    h->fd = open_listener(opts->listen, &h->port, errstr, errstr_size);
    if (h->fd < 0) {
        free(h);
        return NULL;
    }
    /* One polling thread serves every request: scrapes are small and rare,
     * and the handlers only read counters. A slow client is cut off after
     * 10 s so it cannot hold the thread. */
    h->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL,
                                 answer, h, MHD_OPTION_LISTEN_SOCKET, h->fd,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)10,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned int)32, MHD_OPTION_END);
    if (!h->daemon) {
        snprintf(errstr, errstr_size, "cannot start the HTTP server on %s", opts->listen);
        close(h->fd);
        free(h);
        return NULL;
    }
    return h;
}

int outboxd_http_port(const outboxd_http_t *h)
{
    return h->port;
}

void outboxd_http_destroy(outboxd_http_t *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->daemon); /* closes the listening socket too */
    free(h);
}

/*
 * The kit's HTTP server: libmicrohttpd, one thread per connection (a payment
 * request may wait for its saga), JSON bodies in and out via jansson.
 */
#include "outboxd/shop/kit.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <microhttpd.h>

#include "outboxd/common/log.h"
#include "outboxd/common/util.h"

#define MAX_BODY (1 << 20)

struct outboxd_shop_http {
    struct MHD_Daemon *d;
    outboxd_shop_route_fn route;
    void *opaque;
};

typedef struct body {
    outboxd_buf_t buf;
    bool too_big;
} body_t;

const char *outboxd_shop_req_query(const outboxd_shop_req_t *r, const char *name)
{
    return MHD_lookup_connection_value(r->mhd_conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *outboxd_shop_req_header(const outboxd_shop_req_t *r, const char *name)
{
    return MHD_lookup_connection_value(r->mhd_conn, MHD_HEADER_KIND, name);
}

void outboxd_shop_resp_header(outboxd_shop_req_t *r, const char *name, const char *value)
{
    if (r->n_resp_headers >= OUTBOXD_SHOP_MAX_RESP_HEADERS)
        return;
    r->resp_header_name[r->n_resp_headers] = name;
    snprintf(r->resp_header_value[r->n_resp_headers], sizeof(r->resp_header_value[0]), "%s", value);
    r->n_resp_headers++;
}

json_t *outboxd_shop_error(int *status, int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    *status = code;
    return json_pack("{s:s}", "error", msg);
}

int outboxd_shop_path_split(const char *path, char *buf, size_t buf_size, char **seg, int max)
{
    snprintf(buf, buf_size, "%s", path);
    int n = 0;
    char *save = NULL;
    for (char *t = strtok_r(buf, "/", &save); t && n < max; t = strtok_r(NULL, "/", &save))
        seg[n++] = t;
    return n;
}

static enum MHD_Result reply(struct MHD_Connection *conn, int status, json_t *body,
                             const outboxd_shop_req_t *req)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    size_t len = text ? strlen(text) : 0;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, text ? text : (void *)"", MHD_RESPMEM_MUST_COPY);
    free(text);
    if (!r)
        return MHD_NO;
    if (body)
        MHD_add_response_header(r, "Content-Type", "application/json");
    for (int i = 0; req && i < req->n_resp_headers; i++)
        MHD_add_response_header(r, req->resp_header_name[i], req->resp_header_value[i]);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    (void)version;
    outboxd_shop_http_t *h = cls;
    body_t *b = *con_cls;
    if (!b) {
        b = calloc(1, sizeof(*b));
        if (!b)
            return MHD_NO;
        *con_cls = b;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (b->buf.len + *upload_data_size > MAX_BODY)
            b->too_big = true;
        else if (!outboxd_buf_append(&b->buf, upload_data, *upload_data_size))
            return MHD_NO;
        *upload_data_size = 0;
        return MHD_YES;
    }
    int status = 200;
    json_t *out;
    if (b->too_big) {
        out = outboxd_shop_error(&status, 413, "request body larger than %d bytes", MAX_BODY);
        enum MHD_Result r = reply(conn, status, out, NULL);
        json_decref(out);
        return r;
    }
    json_t *in = NULL;
    if (b->buf.len) {
        json_error_t jerr;
        in = json_loadb(b->buf.data, b->buf.len, 0, &jerr);
        if (!in) {
            out = outboxd_shop_error(&status, 400, "request body is not JSON: %s (line %d)",
                                     jerr.text, jerr.line);
            enum MHD_Result r = reply(conn, status, out, NULL);
            json_decref(out);
            return r;
        }
    }
    outboxd_shop_req_t req = {.method = method, .path = url, .body = in, .mhd_conn = conn};
    out = h->route(h->opaque, &req, &status);
    enum MHD_Result r = reply(conn, status, out, &req);
    json_decref(out);
    json_decref(in);
    return r;
}

static void on_done(void *cls, struct MHD_Connection *conn, void **con_cls,
                    enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    body_t *b = *con_cls;
    if (b) {
        outboxd_buf_free(&b->buf);
        free(b);
        *con_cls = NULL;
    }
}

outboxd_shop_http_t *outboxd_shop_http_new(int port, outboxd_shop_route_fn route, void *opaque,
                                           char *errstr, size_t errstr_size)
{
    outboxd_shop_http_t *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    h->route = route;
    h->opaque = opaque;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                                MHD_USE_ERROR_LOG,
                            (uint16_t)port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR, &sa,
                            MHD_OPTION_NOTIFY_COMPLETED, on_done, NULL,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120, MHD_OPTION_END);
    if (!h->d) {
        snprintf(errstr, errstr_size,
                 "cannot listen on 127.0.0.1:%d (in use? pick another port with --http)", port);
        free(h);
        return NULL;
    }
    return h;
}

void outboxd_shop_http_destroy(outboxd_shop_http_t *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->d);
    free(h);
}

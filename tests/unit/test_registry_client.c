/*
 * Schema registry client against a scripted HTTP server on 127.0.0.1 (a
 * thread in this process): what is sent (path, body, auth), how answers are
 * classified (200 -> id, 409/422 -> REJECTED, 5xx/401/garbage -> RETRY),
 * the cache per (subject, schema) with its TTL, and that an error drops the
 * cache so ids are asked for again (a restarted in-memory registry).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "outboxd/common/registry.h"

#define MAX_REQ 32

typedef struct server {
    int fd;
    int port;
    pthread_t thread;
    /* scripted answers, one per request: "status|body" */
    const char *answers[MAX_REQ];
    int n_answers;
    /* what came in */
    char requests[MAX_REQ][4096];
    int n_requests;
    pthread_mutex_t mu;
} server_t;

static void *serve(void *arg)
{
    server_t *s = arg;
    for (;;) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0)
            return NULL;
        /* one request per connection is enough: answer with Connection: close */
        char buf[4096];
        size_t len = 0;
        for (;;) {
            ssize_t n = read(c, buf + len, sizeof(buf) - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            buf[len] = '\0';
            char *hdr_end = strstr(buf, "\r\n\r\n");
            if (!hdr_end)
                continue;
            char *cl = strcasestr(buf, "Content-Length:");
            size_t body = cl ? (size_t)atol(cl + 15) : 0;
            if (len >= (size_t)(hdr_end + 4 - buf) + body)
                break;
        }
        pthread_mutex_lock(&s->mu);
        int i = s->n_requests++;
        if (i < MAX_REQ)
            snprintf(s->requests[i], sizeof(s->requests[i]), "%s", buf);
        const char *ans = i < s->n_answers ? s->answers[i] : "500|{\"message\":\"unscripted\"}";
        pthread_mutex_unlock(&s->mu);
        int status = atoi(ans);
        const char *body = strchr(ans, '|') + 1;
        char out[8192];
        int n = snprintf(out, sizeof(out),
                         "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: "
                         "%zu\r\nConnection: close\r\n\r\n%s",
                         status, strlen(body), body);
        if (write(c, out, (size_t)n) < 0) {
            /* the client went away: nothing to do */
        }
        close(c);
    }
}

static server_t *server_start(const char **answers, int n)
{
    server_t *s = calloc(1, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    for (int i = 0; i < n; i++)
        s->answers[i] = answers[i];
    s->n_answers = n;
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd, 8), 0);
    socklen_t al = sizeof(a);
    getsockname(s->fd, (struct sockaddr *)&a, &al);
    s->port = ntohs(a.sin_port);
    pthread_create(&s->thread, NULL, serve, s);
    return s;
}

static void server_stop(server_t *s)
{
    shutdown(s->fd, SHUT_RDWR);
    close(s->fd);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* A client of the test server at path, registering (auto_register) or
 * only looking schemas up. */
static outboxd_registry_t *client_at(server_t *s, const char *path, long ttl, const char *user,
                                     const char *token, bool auto_register)
{
    char url[64], err[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", s->port, path);
    outboxd_registry_conf_t rc = {.url = url,
                                  .username = user,
                                  .password = user ? "s3cret" : NULL,
                                  .bearer_token = token,
                                  .timeout_ms = 5000,
                                  .cache_ttl_ms = ttl,
                                  .auto_register = auto_register};
    outboxd_registry_t *reg = outboxd_registry_new(&rc, err, sizeof(err));
    assert_non_null(reg);
    return reg;
}

static outboxd_registry_t *client(server_t *s, long ttl, const char *user, const char *token)
{
    return client_at(s, "/apis/ccompat/v7/", ttl, user, token, true);
}

static void test_register_and_cache(void **state)
{
    (void)state;
    const char *answers[] = {"200|{\"id\":42}", "200|{\"id\":43}", "200|{\"id\":42}"};
    server_t *s = server_start(answers, 3);
    outboxd_registry_t *reg = client(s, 0, "alice", NULL);
    int32_t id = 0;
    char err[512];
    assert_int_equal(outboxd_registry_id(reg, "orders-value", "\"string\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_OK);
    assert_int_equal(id, 42);
    /* cached: no second request for the same pair */
    assert_int_equal(outboxd_registry_id(reg, "orders-value", "\"string\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_OK);
    assert_int_equal(id, 42);
    assert_int_equal(outboxd_registry_requests(reg), 1);
    /* another subject: another request */
    assert_int_equal(outboxd_registry_id(reg, "a/b value", "\"string\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_OK);
    assert_int_equal(id, 43);
    const char *r0 = s->requests[0];
    assert_non_null(strstr(r0, "POST /apis/ccompat/v7/subjects/orders-value/versions HTTP/1.1"));
    assert_non_null(strstr(r0, "{\"schema\":\"\\\"string\\\"\"}"));
    assert_non_null(strstr(r0, "Content-Type: application/vnd.schemaregistry.v1+json"));
    /* Basic alice:s3cret */
    assert_non_null(strstr(r0, "Authorization: Basic YWxpY2U6czNjcmV0"));
    /* the subject is URL-encoded */
    assert_non_null(strstr(s->requests[1], "/subjects/a%2Fb%20value/versions"));
    outboxd_registry_destroy(reg);
    server_stop(s);
}

static void test_classification(void **state)
{
    (void)state;
    const char *answers[] = {
        "409|{\"error_code\":409,\"message\":\"Schema being registered is incompatible\"}",
        "422|{\"error_code\":42201,\"message\":\"Invalid schema\"}",
        "500|{\"message\":\"boom\"}",
        "401|{\"message\":\"Unauthorized\"}",
        "200|not json",
        "200|{\"id\":7}",
        "409|{\"error_code\":409,\"message\":\"An artifact with ID 's5-value' in group "
        "'null' already exists.\"}",
        "200|{\"id\":8}",
    };
    server_t *s = server_start(answers, 8);
    outboxd_registry_t *reg = client(s, 0, NULL, "tok-123");
    int32_t id = -1;
    char err[512];
    assert_int_equal(outboxd_registry_id(reg, "s1", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_REJECTED);
    assert_non_null(strstr(err, "subject s1 as incompatible"));
    assert_non_null(strstr(err, "Schema being registered is incompatible"));
    assert_non_null(strstr(s->requests[0], "Authorization: Bearer tok-123"));
    /* the rejection is cached too: no request */
    assert_int_equal(outboxd_registry_id(reg, "s1", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_REJECTED);
    assert_int_equal(outboxd_registry_requests(reg), 1);
    assert_int_equal(outboxd_registry_id(reg, "s2", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_REJECTED);
    assert_non_null(strstr(err, "as invalid: Invalid schema"));
    assert_int_equal(outboxd_registry_id(reg, "s3", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_RETRY);
    assert_non_null(strstr(err, "answered HTTP 500 for subject s3: boom"));
    /* the error dropped the cache: s1 is asked for again (answer 401) */
    assert_int_equal(outboxd_registry_id(reg, "s1", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_RETRY);
    assert_non_null(strstr(err, "refused access (HTTP 401)"));
    assert_int_equal(outboxd_registry_id(reg, "s4", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_RETRY);
    assert_non_null(strstr(err, "answer without an id"));
    assert_int_equal(outboxd_registry_id(reg, "s4", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_OK);
    assert_int_equal(id, 7);
    /* A subject created concurrently (Apicurio's 409 "already exists") is
     * not a rejection: retried, and the next registration gets the id. */
    assert_int_equal(outboxd_registry_id(reg, "s5", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_RETRY);
    assert_non_null(strstr(err, "created concurrently"));
    assert_int_equal(outboxd_registry_id(reg, "s5", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_OK);
    assert_int_equal(id, 8);
    outboxd_registry_destroy(reg);
    server_stop(s);
}

/* Error codes decide what is for good: a registry in READONLY or IMPORT
 * mode (422, error_code 42205) is waited for; with auto_register off, only
 * the registry's own "not found" (40401, 40403) is a verdict, not a 404
 * from a proxy or a url missing its API path. */
static void test_error_codes(void **state)
{
    (void)state;
    const char *answers[] = {
        "422|{\"error_code\":42205,\"message\":\"Subject m1 is in read-only mode\"}",
        "200|{\"id\":3}",
        "404|<html>Not Found</html>",
        "404|{\"error_code\":40401,\"message\":\"Subject 'm3' not found.\"}",
    };
    server_t *s = server_start(answers, 4);
    outboxd_registry_t *reg = client(s, 0, NULL, NULL);
    int32_t id = 0;
    char err[512];
    assert_int_equal(outboxd_registry_id(reg, "m1", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_RETRY);
    assert_non_null(strstr(err, "READONLY or IMPORT mode"));
    assert_int_equal(outboxd_registry_id(reg, "m1", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_OK);
    assert_int_equal(id, 3);
    outboxd_registry_destroy(reg);

    reg = client_at(s, "/", 0, NULL, NULL, false);
    assert_int_equal(outboxd_registry_id(reg, "m2", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_RETRY);
    assert_non_null(strstr(err, "without a registry error code"));
    assert_non_null(strstr(err, "check schema_registry.url"));
    assert_int_equal(outboxd_registry_id(reg, "m3", "\"int\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_REJECTED);
    assert_non_null(strstr(err, "is not registered under subject m3"));
    assert_non_null(strstr(s->requests[3], "POST /subjects/m3 HTTP/1.1"));
    outboxd_registry_destroy(reg);
    server_stop(s);
}

/* After the TTL a cached id is confirmed again, and a new id is taken. */
static void test_ttl(void **state)
{
    (void)state;
    const char *answers[] = {"200|{\"id\":1}", "200|{\"id\":5}"};
    server_t *s = server_start(answers, 2);
    outboxd_registry_t *reg = client(s, 50, NULL, NULL);
    int32_t id = 0;
    char err[512];
    assert_int_equal(outboxd_registry_id(reg, "t", "\"long\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_OK);
    assert_int_equal(id, 1);
    usleep(120 * 1000);
    assert_int_equal(outboxd_registry_id(reg, "t", "\"long\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_OK);
    assert_int_equal(id, 5);
    assert_int_equal(outboxd_registry_requests(reg), 2);
    outboxd_registry_destroy(reg);
    server_stop(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_register_and_cache),
        cmocka_unit_test(test_classification),
        cmocka_unit_test(test_error_codes),
        cmocka_unit_test(test_ttl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

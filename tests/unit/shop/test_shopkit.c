/*
 * The shop kit's pure parts: the token bucket, the envelope decoder (what the
 * relay encodes, the kit reads back: single-object Avro, and the Confluent
 * wire format with the writer schema looked up in a scripted registry),
 * path splitting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/registry.h"
#include "outboxd/shop/kit.h"

static void test_throttle_unlimited(void **state)
{
    (void)state;
    outboxd_shop_throttle_t t;
    outboxd_shop_throttle_init(&t, 0, 0);
    for (int i = 0; i < 1000; i++)
        assert_int_equal(outboxd_shop_throttle_take(&t, 0), 0);
}

static void test_throttle_rate(void **state)
{
    (void)state;
    outboxd_shop_throttle_t t;
    /* 10 per second: a burst of 1, then one every 100 ms */
    outboxd_shop_throttle_init(&t, 10, 1000000);
    assert_int_equal(outboxd_shop_throttle_take(&t, 1000000), 0);
    int64_t wait = outboxd_shop_throttle_take(&t, 1000000);
    assert_true(wait > 99000 && wait <= 100001);
    assert_true(outboxd_shop_throttle_take(&t, 1050000) > 0);
    assert_int_equal(outboxd_shop_throttle_take(&t, 1100001), 0);
    /* idle time refills only up to the burst */
    assert_int_equal(outboxd_shop_throttle_take(&t, 9000000), 0);
    assert_true(outboxd_shop_throttle_take(&t, 9000000) > 0);

    /* 1000 per second over one simulated second: about 1000 taken */
    outboxd_shop_throttle_init(&t, 1000, 0);
    int taken = 0;
    for (int64_t now = 0; now < 1000000; now += 100)
        taken += outboxd_shop_throttle_take(&t, now) == 0;
    assert_true(taken >= 1000 && taken <= 1100);
}

#define S(lit) ((outboxd_str_t){.ptr = (lit), .len = sizeof(lit) - 1})

static void test_decode_roundtrip(void **state)
{
    (void)state;
    char err[256];
    outboxd_avro_t *av = outboxd_avro_new(err, sizeof(err));
    assert_non_null(av);
    outboxd_shop_decoder_t *d = outboxd_shop_decoder_new(NULL, err, sizeof(err));
    bool retry = true;
    assert_non_null(d);
    outboxd_envelope_t ev = {
        .id = S("0b6c6f0e-0000-4000-8000-000000000001"),
        .type = S("payment-pending"),
        .aggregate_type = S("payment-pending"),
        .aggregate_id = S("p-1"),
        .payload = S("{\"paymentId\": \"p-1\", \"amount\": 1900}"),
        .occurred_at_us = 1700000000000000LL,
        .source_name = S("payment"),
        .database = S("shop_payment"),
        .table = S("public.outbox"),
    };
    outboxd_buf_t buf = {0};
    assert_int_equal(outboxd_avro_encode(av, &ev, &buf, err, sizeof(err)), 0);
    json_t *j = outboxd_shop_decode(d, buf.data, buf.len, &retry, err, sizeof(err));
    assert_non_null(j);
    assert_false(retry);
    assert_string_equal(json_string_value(json_object_get(j, "id")),
                        "0b6c6f0e-0000-4000-8000-000000000001");
    assert_string_equal(json_string_value(json_object_get(j, "aggregate_id")), "p-1");
    json_t *p = json_object_get(j, "payload");
    assert_true(json_is_object(p));
    assert_int_equal(json_integer_value(json_object_get(p, "amount")), 1900);
    json_decref(j);

    /* not an envelope: refused with a reason, not crashed on */
    err[0] = '\0';
    assert_null(outboxd_shop_decode(d, "{\"x\":1}", 7, &retry, err, sizeof(err)));
    assert_non_null(strstr(err, "neither 00 (Confluent wire format"));
    assert_false(retry);
    buf.data[buf.len - 1] ^= 0x7f; /* a truncated / corrupted datum */
    j = outboxd_shop_decode(d, buf.data, buf.len - 3, &retry, err, sizeof(err));
    json_decref(j);
    outboxd_buf_free(&buf);
    outboxd_shop_decoder_destroy(d);
    outboxd_avro_destroy(av);
}

/* A scripted registry: one request per connection, answers "status|body" in
 * order (after the script: 500), requests recorded. */
typedef struct server {
    int fd, port;
    pthread_t thread;
    char *answers[8];
    int n_answers;
    char requests[8][1024];
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
        char buf[1024];
        size_t len = 0;
        for (;;) { /* GET: the headers are the whole request */
            ssize_t n = read(c, buf + len, sizeof(buf) - 1 - len);
            if (n <= 0)
                break;
            len += (size_t)n;
            buf[len] = '\0';
            if (strstr(buf, "\r\n\r\n") || len == sizeof(buf) - 1)
                break;
        }
        buf[len] = '\0';
        pthread_mutex_lock(&s->mu);
        int i = s->n_requests++;
        if (i < 8)
            snprintf(s->requests[i], sizeof(s->requests[i]), "%s", buf);
        const char *ans = i < s->n_answers ? s->answers[i] : "500|{\"message\":\"unscripted\"}";
        pthread_mutex_unlock(&s->mu);
        const char *body = strchr(ans, '|') + 1;
        char *out = NULL;
        int n = asprintf(&out,
                         "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: "
                         "%zu\r\nConnection: close\r\n\r\n%s",
                         atoi(ans), strlen(body), body);
        if (n > 0 && write(c, out, (size_t)n) < 0) {
            /* the client went away: nothing to do */
        }
        free(out);
        close(c);
    }
}

static server_t *server_start(char **answers, int n)
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

/* What outboxd writes with schema_registry.url set: the wire header (magic
 * 0, id big-endian) and the envelope's Avro datum (the same datum as in the
 * single-object encoding, which has a 10-byte header instead). */
static void test_decode_wire_format(void **state)
{
    (void)state;
    char err[512];
    outboxd_avro_t *av = outboxd_avro_new(err, sizeof(err));
    assert_non_null(av);
    outboxd_envelope_t ev = {
        .id = S("0b6c6f0e-0000-4000-8000-000000000002"),
        .type = S("payment-result"),
        .aggregate_type = S("payment-result"),
        .aggregate_id = S("p-2"),
        .payload = S("{\"paymentId\": \"p-2\", \"service\": \"member\", \"ok\": true}"),
        .occurred_at_us = 1700000000000001LL,
        .source_name = S("member"),
        .database = S("shop_member"),
        .table = S("public.outbox"),
        .lsn = 42,
    };
    outboxd_buf_t so = {0}, wire = {0};
    assert_int_equal(outboxd_avro_encode(av, &ev, &so, err, sizeof(err)), 0);
    unsigned char h[OUTBOXD_WIRE_HEADER_LEN];
    outboxd_registry_wire_header(7, h);
    assert_true(outboxd_buf_append(&wire, h, sizeof(h)));
    assert_true(outboxd_buf_append(&wire, so.data + 10, so.len - 10));

    json_t *sj = json_pack("{s:s}", "schema", outboxd_envelope_schema_json);
    char *sbody = json_dumps(sj, JSON_COMPACT);
    json_decref(sj);
    char *ok_answer = NULL;
    assert_true(asprintf(&ok_answer, "200|%s", sbody) > 0);
    free(sbody);
    char *answers[] = {
        "503|{\"message\":\"starting up\"}",
        ok_answer,
        "404|{\"error_code\":40403,\"message\":\"Schema 8 not found\"}",
    };
    server_t *s = server_start(answers, 3);
    char url[80];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/apis/ccompat/v7", s->port);
    outboxd_shop_decoder_t *d = outboxd_shop_decoder_new(url, err, sizeof(err));
    assert_non_null(d);
    bool retry = false;

    /* the registry is away (503): not decodable yet, to be retried */
    assert_null(outboxd_shop_decode(d, wire.data, wire.len, &retry, err, sizeof(err)));
    assert_true(retry);
    assert_non_null(strstr(err, "HTTP 503 for schema id 7"));
    /* it is back: the schema is fetched and the event decodes to the same
     * JSON as the single-object encoding of the same envelope */
    json_t *j = outboxd_shop_decode(d, wire.data, wire.len, &retry, err, sizeof(err));
    assert_non_null(j);
    assert_false(retry);
    json_t *ref = outboxd_shop_decode(d, so.data, so.len, &retry, err, sizeof(err));
    assert_non_null(ref);
    assert_true(json_equal(j, ref));
    assert_true(json_is_true(json_object_get(json_object_get(j, "payload"), "ok")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "source"), "lsn")), 42);
    json_decref(ref);
    json_decref(j);
    assert_non_null(strstr(s->requests[1], "GET /apis/ccompat/v7/schemas/ids/7 HTTP/1.1"));
    /* cached per id: the next event of id 7 asks nothing */
    j = outboxd_shop_decode(d, wire.data, wire.len, &retry, err, sizeof(err));
    assert_non_null(j);
    json_decref(j);
    assert_int_equal(outboxd_shop_decoder_lookups(d), 2);
    assert_int_equal(s->n_requests, 2);

    /* an id the registry does not know: refused for good (dead letter) */
    wire.data[4] = 8;
    assert_null(outboxd_shop_decode(d, wire.data, wire.len, &retry, err, sizeof(err)));
    assert_false(retry);
    assert_non_null(strstr(err, "does not know schema id 8"));
    /* a damaged datum of a known id: refused, no crash, no request */
    wire.data[4] = 7;
    assert_null(outboxd_shop_decode(d, wire.data, wire.len - 5, &retry, err, sizeof(err)));
    assert_false(retry);
    assert_non_null(strstr(err, "truncated or malformed"));
    assert_null(outboxd_shop_decode(d, wire.data, 3, &retry, err, sizeof(err)));
    assert_false(retry);
    assert_int_equal(s->n_requests, 3);

    /* the registry gone altogether: retry, never a verdict on the event */
    server_stop(s);
    wire.data[4] = 9;
    assert_null(outboxd_shop_decode(d, wire.data, wire.len, &retry, err, sizeof(err)));
    assert_true(retry);
    assert_non_null(strstr(err, "unreachable (schema id 9)"));
    outboxd_shop_decoder_destroy(d);

    /* no registry configured: a wire-format value is refused, naming the fix */
    d = outboxd_shop_decoder_new(NULL, err, sizeof(err));
    assert_non_null(d);
    assert_null(outboxd_shop_decode(d, wire.data, wire.len, &retry, err, sizeof(err)));
    assert_false(retry);
    assert_non_null(strstr(err, "--registry URL"));
    outboxd_shop_decoder_destroy(d);

    free(ok_answer);
    outboxd_buf_free(&so);
    outboxd_buf_free(&wire);
    outboxd_avro_destroy(av);
}

static void test_path_split(void **state)
{
    (void)state;
    char buf[64], *seg[4];
    assert_int_equal(outboxd_shop_path_split("/payments/abc/trace", buf, sizeof(buf), seg, 4), 3);
    assert_string_equal(seg[0], "payments");
    assert_string_equal(seg[2], "trace");
    assert_int_equal(outboxd_shop_path_split("/", buf, sizeof(buf), seg, 4), 0);
    assert_int_equal(outboxd_shop_path_split("//a//b/", buf, sizeof(buf), seg, 4), 2);
    assert_int_equal(outboxd_shop_path_split("/a/b/c/d/e/f", buf, sizeof(buf), seg, 4), 4);
}

/* Which failures of the service's database the consumer waits out instead
 * of dead-lettering the event. */
static void test_sqlstate_transient(void **state)
{
    (void)state;
    const char *transient[] = {"08000", "08006", "08001", "53100", "53300",
                               "57P01", "57P02", "57P03", "40001", "40P01"};
    for (size_t i = 0; i < sizeof(transient) / sizeof(transient[0]); i++)
        assert_true(outboxd_shop_sqlstate_transient(transient[i]));
    /* the statement's or the data's fault: retried a few times, then .dlt */
    const char *permanent[] = {"23505", "23503", "22P02", "42P01", "42703",
                               "25P02", "53200", "53400", "57014", "55000",
                               "P0001", "",      "08",    "0800",  "080000"};
    for (size_t i = 0; i < sizeof(permanent) / sizeof(permanent[0]); i++)
        assert_false(outboxd_shop_sqlstate_transient(permanent[i]));
    assert_false(outboxd_shop_sqlstate_transient(NULL));
    outboxd_shop_sqlstate_clear();
    assert_string_equal(outboxd_shop_last_sqlstate(), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_throttle_unlimited), cmocka_unit_test(test_throttle_rate),
        cmocka_unit_test(test_decode_roundtrip),   cmocka_unit_test(test_decode_wire_format),
        cmocka_unit_test(test_path_split),         cmocka_unit_test(test_sqlstate_transient),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

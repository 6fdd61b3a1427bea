/*
 * Operational surface: per-source statistics, the Prometheus exposition,
 * /healthz and /readyz decisions, the HTTP server answering over a real
 * socket, and JSON log lines.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "outboxd/common/http.h"
#include "outboxd/common/log.h"
#include "outboxd/relay/metrics.h"
#include "outboxd/relay/stats.h"

static void test_stats_counts_only_committed(void **state)
{
    (void)state;
    outboxd_stats_t *st = outboxd_stats_new("payment");
    assert_non_null(st);
    outboxd_stats_produced(st, 100);
    outboxd_stats_produced(st, 50);
    outboxd_stats_aborted(st); /* those 150 bytes never reached a consumer */
    outboxd_stats_produced(st, 70);
    outboxd_stats_committed(st, 1, 0, 3000); /* 3 ms */
    outboxd_stats_produced(st, 30);
    outboxd_stats_rewound(st);
    outboxd_stats_produced(st, 5);
    outboxd_stats_committed(st, 0, 1, 2000000); /* 2 s */
    outboxd_stats_snapshot_t s;
    outboxd_stats_read(st, &s);
    assert_int_equal(s.events, 1);
    assert_int_equal(s.dead_letters, 1);
    assert_int_equal(s.bytes, 75);
    assert_int_equal(s.txn_committed, 2);
    assert_int_equal(s.txn_aborted, 1);
    assert_int_equal(s.commit_count, 2);
    /* 3 ms lands in le=0.005 (index 2), 2 s in le=2.5 (index 10) */
    assert_int_equal(s.commit_buckets[1], 0);
    assert_int_equal(s.commit_buckets[2], 1);
    assert_int_equal(s.commit_buckets[9], 1);
    assert_int_equal(s.commit_buckets[10], 2);
    assert_int_equal(s.commit_buckets[OUTBOXD_STATS_N_BUCKETS], 2);
    assert_true(s.commit_sum_seconds > 2.0029 && s.commit_sum_seconds < 2.0031);
    outboxd_stats_destroy(st);
}

static void test_stats_lag_and_reconnects(void **state)
{
    (void)state;
    outboxd_stats_t *st = outboxd_stats_new("p");
    outboxd_stats_snapshot_t s;
    outboxd_stats_wal_end(st, 5000);
    outboxd_stats_confirmed(st, 1000);
    outboxd_stats_txn_begin(st, outboxd_wall_us() - 3000000); /* committed 3 s ago */
    outboxd_stats_txn_begin(st, outboxd_wall_us());           /* later one: oldest counts */
    outboxd_stats_read(st, &s);
    assert_int_equal(s.lag_bytes, 4000);
    assert_true(s.lag_seconds >= 2.9 && s.lag_seconds < 60);
    outboxd_stats_confirmed(st, 6000); /* ahead of the last wal_end seen */
    outboxd_stats_caught_up(st);
    outboxd_stats_read(st, &s);
    assert_int_equal(s.lag_bytes, 0);
    assert_true(s.lag_seconds == 0.0);
    outboxd_stats_state(st, OUTBOXD_SRC_CONNECTING);
    outboxd_stats_state(st, OUTBOXD_SRC_STREAMING);
    outboxd_stats_state(st, OUTBOXD_SRC_CONNECTING);
    outboxd_stats_state(st, OUTBOXD_SRC_BACKOFF);
    outboxd_stats_state(st, OUTBOXD_SRC_CONNECTING);
    outboxd_stats_read(st, &s);
    assert_int_equal(s.reconnects, 2);
    assert_int_equal(s.state, OUTBOXD_SRC_CONNECTING);
    outboxd_stats_destroy(st);
    /* NULL is accepted everywhere. */
    outboxd_stats_tick(NULL);
    outboxd_stats_committed(NULL, 1, 1, 1);
}

static void test_render(void **state)
{
    (void)state;
    outboxd_metrics_options_t o = {.stall_timeout_ms = 60000, .max_slot_lag_bytes = 100};
    outboxd_metrics_t *m = outboxd_metrics_new(&o);
    outboxd_stats_t *a = outboxd_metrics_source(m, "payment");
    outboxd_stats_t *b = outboxd_metrics_source(m, "order");
    assert_ptr_equal(outboxd_metrics_source(m, "payment"), a); /* same name, same stats */
    outboxd_stats_produced(a, 10);
    outboxd_stats_committed(a, 7, 0, 1000);
    outboxd_stats_wal_end(b, 1000);
    outboxd_stats_confirmed(b, 10);
    outboxd_stats_state(a, OUTBOXD_SRC_STREAMING);
    outboxd_buf_t out = {0};
    assert_true(outboxd_metrics_render(m, &out));
    outboxd_buf_append(&out, "", 1);
    const char *t = out.data;
    assert_non_null(strstr(t, "# TYPE outboxd_source_events_published_total counter\n"));
    assert_non_null(strstr(t, "outboxd_source_events_published_total{source=\"payment\"} 7\n"));
    assert_non_null(strstr(t, "outboxd_source_events_published_total{source=\"order\"} 0\n"));
    assert_non_null(strstr(t, "outboxd_source_bytes_published_total{source=\"payment\"} 10\n"));
    assert_non_null(strstr(
        t,
        "outboxd_source_kafka_transactions_total{source=\"payment\",outcome=\"committed\"} 1\n"));
    assert_non_null(strstr(t, "outboxd_source_lag_bytes{source=\"order\"} 990\n"));
    assert_non_null(strstr(t, "outboxd_source_slot_lag_exceeded{source=\"order\"} 1\n"));
    assert_non_null(strstr(t, "outboxd_source_slot_lag_exceeded{source=\"payment\"} 0\n"));
    assert_non_null(strstr(t, "outboxd_source_state{source=\"payment\",state=\"streaming\"} 1\n"));
    assert_non_null(strstr(t, "outboxd_source_state{source=\"order\",state=\"streaming\"} 0\n"));
    assert_non_null(strstr(t, "outboxd_source_state{source=\"order\",state=\"starting\"} 1\n"));
    assert_non_null(strstr(
        t, "outboxd_source_kafka_commit_seconds_bucket{source=\"payment\",le=\"0.001\"} 1\n"));
    assert_non_null(strstr(
        t, "outboxd_source_kafka_commit_seconds_bucket{source=\"payment\",le=\"+Inf\"} 1\n"));
    assert_non_null(strstr(t, "outboxd_source_kafka_commit_seconds_count{source=\"payment\"} 1\n"));
    assert_non_null(strstr(t, "outboxd_max_slot_lag_bytes 100\n"));
    outboxd_buf_free(&out);

    /* readyz: one of two streaming is not ready, unless one is enough. */
    assert_false(outboxd_metrics_ready(m, NULL));
    o.ready_min_sources = 1;
    outboxd_metrics_set_options(m, &o);
    assert_true(outboxd_metrics_ready(m, NULL));
    outboxd_stats_state(b, OUTBOXD_SRC_STREAMING);
    o.ready_min_sources = 0;
    outboxd_metrics_set_options(m, &o);
    assert_true(outboxd_metrics_ready(m, NULL));
    assert_true(outboxd_metrics_healthy(m, NULL));
    /* A failed source is unhealthy. */
    outboxd_stats_state(b, OUTBOXD_SRC_FAILED);
    outboxd_buf_t why = {0};
    assert_false(outboxd_metrics_healthy(m, &why));
    outboxd_buf_append(&why, "", 1);
    assert_non_null(strstr(why.data, "source order: failed"));
    outboxd_buf_free(&why);
    outboxd_metrics_destroy(m);
}

static void test_stall(void **state)
{
    (void)state;
    outboxd_metrics_options_t o = {.stall_timeout_ms = 1000};
    outboxd_metrics_t *m = outboxd_metrics_new(&o);
    outboxd_stats_t *a = outboxd_metrics_source(m, "a");
    outboxd_stats_state(a, OUTBOXD_SRC_STREAMING);
    assert_true(outboxd_metrics_healthy(m, NULL));
    usleep(1300 * 1000);
    assert_false(outboxd_metrics_healthy(m, NULL));
    outboxd_stats_tick(a);
    assert_true(outboxd_metrics_healthy(m, NULL));
    /* A stopped source does not turn and is not stalled. */
    outboxd_stats_state(a, OUTBOXD_SRC_STOPPED);
    usleep(1300 * 1000);
    assert_true(outboxd_metrics_healthy(m, NULL));
    outboxd_metrics_destroy(m);
}

/* GET path over a fresh TCP connection; returns the status code, body in out. */
static int http_get(int port, const char *method, const char *path, char *out, size_t size)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    char req[256];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\n\r\n", method, path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    size_t len = 0;
    ssize_t r;
    while (len + 1 < size && (r = read(fd, out + len, size - len - 1)) > 0)
        len += (size_t)r;
    out[len] = '\0';
    close(fd);
    int code = 0;
    sscanf(out, "HTTP/1.%*d %d", &code);
    return code;
}

static void test_http_server(void **state)
{
    (void)state;
    outboxd_metrics_options_t o = {.stall_timeout_ms = 60000};
    outboxd_metrics_t *m = outboxd_metrics_new(&o);
    outboxd_stats_t *a = outboxd_metrics_source(m, "payment");
    char err[256];
    outboxd_http_options_t ho = {.listen = "127.0.0.1:0"};
    outboxd_http_t *h = outboxd_http_new(&ho, outboxd_metrics_http_handler, m, err, sizeof(err));
    assert_non_null(h);
    int port = outboxd_http_port(h);
    assert_true(port > 0);
    static char buf[65536];
    assert_int_equal(http_get(port, "GET", "/metrics", buf, sizeof(buf)), 200);
    assert_non_null(strstr(buf, "text/plain; version=0.0.4"));
    assert_non_null(strstr(buf, "outboxd_source_events_published_total{source=\"payment\"} 0"));
    assert_int_equal(http_get(port, "GET", "/readyz", buf, sizeof(buf)), 503);
    assert_non_null(strstr(buf, "source payment: starting"));
    outboxd_stats_state(a, OUTBOXD_SRC_STREAMING);
    assert_int_equal(http_get(port, "GET", "/readyz", buf, sizeof(buf)), 200);
    assert_int_equal(http_get(port, "GET", "/healthz", buf, sizeof(buf)), 200);
    assert_int_equal(http_get(port, "HEAD", "/healthz", buf, sizeof(buf)), 200);
    assert_int_equal(http_get(port, "GET", "/nope", buf, sizeof(buf)), 404);
    assert_int_equal(http_get(port, "POST", "/metrics", buf, sizeof(buf)), 405);

    /* The same port again: a clear error. */
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    outboxd_http_options_t ho2 = {.listen = addr};
    assert_null(outboxd_http_new(&ho2, outboxd_metrics_http_handler, m, err, sizeof(err)));
    assert_non_null(strstr(err, "in use"));
    outboxd_http_destroy(h);
    outboxd_metrics_destroy(m);

    /* The listening socket is closed with the server: the port is free. */
    h = outboxd_http_new(&ho2, outboxd_metrics_http_handler, m, err, sizeof(err));
    assert_non_null(h);
    outboxd_http_destroy(h);
}

static void test_split_listen(void **state)
{
    (void)state;
    char host[64], err[256];
    int port;
    assert_int_equal(
        outboxd_http_split_listen("[::1]:9187", host, sizeof(host), &port, err, sizeof(err)), 0);
    assert_string_equal(host, "::1");
    assert_int_equal(port, 9187);
    assert_int_equal(
        outboxd_http_split_listen("0.0.0.0:80", host, sizeof(host), &port, err, sizeof(err)), 0);
    assert_string_equal(host, "0.0.0.0");
    assert_int_equal(
        outboxd_http_split_listen("localhost", host, sizeof(host), &port, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "expected host:port"));
    assert_int_equal(
        outboxd_http_split_listen("h:99999", host, sizeof(host), &port, err, sizeof(err)), -1);
    assert_int_equal(
        outboxd_http_split_listen("[::1]9187", host, sizeof(host), &port, err, sizeof(err)), -1);
}

/* Runs fn with stderr redirected to a file; returns what was written. */
static char *capture_stderr(void (*fn)(void))
{
    char path[] = "/tmp/outboxd-test-log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    fn();
    dup2(saved, STDERR_FILENO);
    close(saved);
    off_t len = lseek(fd, 0, SEEK_END);
    char *buf = calloc(1, (size_t)len + 1);
    assert_int_equal(pread(fd, buf, (size_t)len, 0), len);
    close(fd);
    unlink(path);
    return buf;
}

static void log_some(void)
{
    LOG_WARN("payment",
             "quote \" backslash \\ newline\n tab\t ctrl\x01 utf8 h\xc3\xa9 bad \xff end");
    LOG_INFO(NULL, "plain");
    LOG_DEBUG(NULL, "not shown at info");
}

static void test_json_log(void **state)
{
    (void)state;
    outboxd_log_format_t f;
    assert_true(outboxd_log_format_parse("JSON", &f));
    assert_false(outboxd_log_format_parse("xml", &f));
    outboxd_log_set_format(OUTBOXD_LOG_FORMAT_JSON);
    char *out = capture_stderr(log_some);
    outboxd_log_set_format(OUTBOXD_LOG_FORMAT_TEXT);
    char *save = NULL;
    char *line1 = strtok_r(out, "\n", &save);
    char *line2 = strtok_r(NULL, "\n", &save);
    assert_non_null(line1);
    assert_non_null(line2);
    assert_null(strtok_r(NULL, "\n", &save)); /* debug filtered, one line per call */
    json_error_t je;
    json_t *o = json_loads(line1, 0, &je);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "level")), "warn");
    assert_string_equal(json_string_value(json_object_get(o, "scope")), "payment");
    assert_string_equal(json_string_value(json_object_get(o, "msg")),
                        "quote \" backslash \\ newline\n tab\t ctrl\x01 utf8 h\xc3\xa9 bad "
                        "\xef\xbf\xbd end");
    const char *ts = json_string_value(json_object_get(o, "ts"));
    assert_non_null(ts);
    assert_int_equal(strlen(ts), 24); /* 2026-11-24T12:00:00.123Z */
    json_decref(o);
    o = json_loads(line2, 0, &je);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "scope")), "main");
    json_decref(o);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stats_counts_only_committed),
        cmocka_unit_test(test_stats_lag_and_reconnects),
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_stall),
        cmocka_unit_test(test_http_server),
        cmocka_unit_test(test_split_listen),
        cmocka_unit_test(test_json_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

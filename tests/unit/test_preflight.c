/*
 * Configuration checks beyond the YAML (preflight.c): kafka.properties that
 * librdkafka refuses, alone (with file:line) or in combination with what the
 * sink sets (rd_kafka_new), and mode: cdc. No broker is contacted.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "outboxd/relay/config.h"
#include "outboxd/relay/preflight.h"

/* Runs the preflight on a config with the given properties block and table
 * options; returns the problem count, report in *out (caller frees). */
static int preflight(const char *props, const char *table_opts, outboxd_buf_t *out)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "kafka:\n"
             "  bootstrap_servers: 127.0.0.1:9\n"
             "  properties:\n"
             "%s"
             "sources:\n"
             "  - name: s\n"
             "    dsn: \"dbname=s\"\n"
             "    tables:\n"
             "      - table: public.outbox%s\n",
             props, table_opts);
    char err[512];
    outboxd_config_t *conf = outboxd_config_parse(text, strlen(text), "p.yaml", err, sizeof(err));
    if (!conf)
        fail_msg("config: %s", err);
    int n = outboxd_preflight_check(conf, out);
    outboxd_config_destroy(conf);
    return n;
}

static void test_good(void **state)
{
    (void)state;
    outboxd_buf_t r = {0};
    assert_int_equal(preflight("    compression.type: lz4\n    linger.ms: \"5\"\n", "", &r), 0);
    assert_int_equal(r.len, 0);
    outboxd_buf_free(&r);
}

static void test_unknown_and_invalid(void **state)
{
    (void)state;
    outboxd_buf_t r = {0};
    assert_int_equal(preflight("    compression.type: lz4\n"
                               "    no.such.thing: \"1\"\n"
                               "    linger.ms: \"soon\"\n",
                               "", &r),
                     2);
    assert_non_null(strstr(r.data, "p.yaml:5: kafka.properties.no.such.thing: No such "
                                   "configuration property"));
    assert_non_null(strstr(r.data, "p.yaml:6: kafka.properties.linger.ms: Invalid value"));
    outboxd_buf_free(&r);
}

/* Each valid alone, refused by rd_kafka_new with the transactions the sink
 * configures. */
static void test_combination(void **state)
{
    (void)state;
    outboxd_buf_t r = {0};
    assert_int_equal(preflight("    acks: \"1\"\n", "", &r), 1);
    assert_non_null(strstr(r.data, "p.yaml: kafka.properties: "));
    assert_non_null(strstr(r.data, "acks"));
    outboxd_buf_free(&r);
    assert_int_equal(preflight("    enable.idempotence: \"false\"\n", "", &r), 1);
    assert_non_null(strstr(r.data, "enable.idempotence"));
    outboxd_buf_free(&r);
}

/* Every snapshot mode of a cdc table runs (relay/snapshot.h). */
static void test_cdc_snapshot_modes(void **state)
{
    (void)state;
    outboxd_buf_t r = {0};
    assert_int_equal(preflight("", "\n        mode: cdc\n        topic: cdc.t", &r), 0);
    outboxd_buf_free(&r);
    assert_int_equal(preflight("", "\n        mode: cdc\n        snapshot: when_needed", &r), 0);
    outboxd_buf_free(&r);
    assert_int_equal(preflight("", "\n        mode: cdc\n        snapshot: never", &r), 0);
    outboxd_buf_free(&r);
    /* a row filter is a publication WHERE of a cdc table */
    assert_int_equal(preflight("", "\n        row_filter: \"x > 1\"", &r), 1);
    assert_non_null(strstr(r.data, "tables[0].row_filter: only for mode cdc"));
    outboxd_buf_free(&r);
    assert_int_equal(
        preflight("", "\n        mode: cdc\n        snapshot: never\n        row_filter: \"x > 1\"",
                  &r),
        0);
    outboxd_buf_free(&r);
    /* a ';' inside quotes keeps it one expression (config.c refuses others) */
    assert_int_equal(preflight("",
                               "\n        mode: cdc\n        snapshot: never\n        row_filter: "
                               "\"x <> 'a;b' AND \\\"y;\\\" > 1\"",
                               &r),
                     0);
    outboxd_buf_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_unknown_and_invalid),
        cmocka_unit_test(test_combination),
        cmocka_unit_test(test_cdc_snapshot_modes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

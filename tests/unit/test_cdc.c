/*
 * CDC mode (cdc.c) without servers: the PostgreSQL -> Debezium type
 * mapping, text-to-value conversion of every mapped type (extremes, NaN,
 * infinity, BC dates, 100-digit numerics), and whole change events in JSON
 * (with and without the schema block) and Avro single-object encoding, whose
 * schemas must be valid Avro.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/avro_json.h"
#include "outboxd/relay/cdc.h"
#include "outboxd/relay/config.h"

/* numeric(p,s) typmod */
#define NUMMOD(p, s) ((((p) << 16) | (s)) + 4)

static void test_kinds(void **state)
{
    (void)state;
    assert_int_equal(outboxd_cdc_kind(21, -1), OUTBOXD_CDC_T_INT16);
    assert_int_equal(outboxd_cdc_kind(23, -1), OUTBOXD_CDC_T_INT32);
    assert_int_equal(outboxd_cdc_kind(20, -1), OUTBOXD_CDC_T_INT64);
    assert_int_equal(outboxd_cdc_kind(700, -1), OUTBOXD_CDC_T_FLOAT32);
    assert_int_equal(outboxd_cdc_kind(701, -1), OUTBOXD_CDC_T_FLOAT64);
    assert_int_equal(outboxd_cdc_kind(16, -1), OUTBOXD_CDC_T_BOOL);
    assert_int_equal(outboxd_cdc_kind(25, -1), OUTBOXD_CDC_T_STRING);
    assert_int_equal(outboxd_cdc_kind(1043, 24), OUTBOXD_CDC_T_STRING);
    assert_int_equal(outboxd_cdc_kind(1042, 9), OUTBOXD_CDC_T_STRING);
    assert_int_equal(outboxd_cdc_kind(17, -1), OUTBOXD_CDC_T_BYTES);
    assert_int_equal(outboxd_cdc_kind(1700, NUMMOD(12, 3)), OUTBOXD_CDC_T_DECIMAL);
    assert_int_equal(outboxd_cdc_kind(1700, -1), OUTBOXD_CDC_T_VARDECIMAL);
    assert_int_equal(outboxd_cdc_kind(1082, -1), OUTBOXD_CDC_T_DATE);
    /* time.precision.mode=adaptive: precision <= 3 in millis */
    assert_int_equal(outboxd_cdc_kind(1083, 3), OUTBOXD_CDC_T_TIME_MILLIS);
    assert_int_equal(outboxd_cdc_kind(1083, -1), OUTBOXD_CDC_T_TIME_MICROS);
    assert_int_equal(outboxd_cdc_kind(1114, 0), OUTBOXD_CDC_T_TS_MILLIS);
    assert_int_equal(outboxd_cdc_kind(1114, 6), OUTBOXD_CDC_T_TS_MICROS);
    assert_int_equal(outboxd_cdc_kind(1266, -1), OUTBOXD_CDC_T_ZTIME);
    assert_int_equal(outboxd_cdc_kind(1184, -1), OUTBOXD_CDC_T_ZTIMESTAMP);
    assert_int_equal(outboxd_cdc_kind(1186, -1), OUTBOXD_CDC_T_INTERVAL);
    assert_int_equal(outboxd_cdc_kind(2950, -1), OUTBOXD_CDC_T_UUID);
    assert_int_equal(outboxd_cdc_kind(114, -1), OUTBOXD_CDC_T_JSON);
    assert_int_equal(outboxd_cdc_kind(3802, -1), OUTBOXD_CDC_T_JSON);
    assert_int_equal(outboxd_cdc_kind(869, -1), OUTBOXD_CDC_T_STRING);
    /* an unknown oid: its text form */
    assert_int_equal(outboxd_cdc_kind(987654, -1), OUTBOXD_CDC_T_STRING);
}

/* The JSON value of text under kind (NULL: conversion must fail). */
static void expect(outboxd_cdc_kind_t k, int32_t mod, const char *text, const char *want)
{
    outboxd_buf_t b = {0};
    char reason[256] = "";
    int r = outboxd_cdc_json_value(k, mod, text, strlen(text), &b, reason, sizeof(reason));
    if (!want) {
        if (r != 1)
            fail_msg("'%s' (kind %d): expected a failure, got %d '%s'", text, k, r,
                     b.data ? b.data : "");
        assert_non_null(strstr(reason, "cannot read"));
    } else {
        if (r != 0)
            fail_msg("'%s' (kind %d): %d %s", text, k, r, reason);
        if (strcmp(b.data, want) != 0)
            fail_msg("'%s' (kind %d): got %s, want %s", text, k, b.data, want);
    }
    outboxd_buf_free(&b);
}

static void test_values(void **state)
{
    (void)state;
    expect(OUTBOXD_CDC_T_INT16, -1, "-32768", "-32768");
    expect(OUTBOXD_CDC_T_INT16, -1, "32768", NULL);
    expect(OUTBOXD_CDC_T_INT64, -1, "-9223372036854775808", "-9223372036854775808");
    expect(OUTBOXD_CDC_T_FLOAT32, -1, "NaN", "\"NaN\"");
    expect(OUTBOXD_CDC_T_FLOAT64, -1, "-Infinity", "\"-Infinity\"");
    expect(OUTBOXD_CDC_T_FLOAT64, -1, "1.5e+300", "1.5e+300");
    expect(OUTBOXD_CDC_T_BOOL, -1, "t", "true");
    expect(OUTBOXD_CDC_T_STRING, -1,
           "Gr\xc3\xbc\xc3\x9f"
           "e \"q\"\n",
           "\"Gr\xc3\xbc\xc3\x9f"
           "e \\\"q\\\"\\n\"");
    expect(OUTBOXD_CDC_T_BYTES, -1, "\\x00ff41", "\"AP9B\"");
    /* Decimal: unscaled two's complement big-endian, base64 in JSON */
    expect(OUTBOXD_CDC_T_DECIMAL, NUMMOD(12, 3), "1.500", "\"Bdw=\"");
    expect(OUTBOXD_CDC_T_DECIMAL, NUMMOD(12, 3), "-1.000", "\"/Bg=\"");
    expect(OUTBOXD_CDC_T_DECIMAL, NUMMOD(5, 0), "128", "\"AIA=\"");
    expect(OUTBOXD_CDC_T_DECIMAL, NUMMOD(5, 0), "-128", "\"gA==\"");
    expect(OUTBOXD_CDC_T_DECIMAL, NUMMOD(5, 0), "0", "\"AA==\"");
    expect(OUTBOXD_CDC_T_VARDECIMAL, -1, "-0.01", "{\"scale\":2,\"value\":\"/w==\"}");
    expect(OUTBOXD_CDC_T_VARDECIMAL, -1, "NaN", "null");
    expect(OUTBOXD_CDC_T_VARDECIMAL, -1, "Infinity", "null");
    expect(OUTBOXD_CDC_T_DATE, -1, "1970-01-02", "1");
    expect(OUTBOXD_CDC_T_DATE, -1, "1969-12-31", "-1");
    expect(OUTBOXD_CDC_T_DATE, -1, "0001-01-01 BC", "-719528");
    expect(OUTBOXD_CDC_T_DATE, -1, "infinity", "2147483647");
    expect(OUTBOXD_CDC_T_DATE, -1, "2026-13-01", NULL);
    expect(OUTBOXD_CDC_T_TIME_MICROS, -1, "10:15:30.123456", "36930123456");
    expect(OUTBOXD_CDC_T_TIME_MILLIS, 3, "10:15:30.123", "36930123");
    expect(OUTBOXD_CDC_T_TIME_MICROS, -1, "24:00:00", "86400000000");
    expect(OUTBOXD_CDC_T_TS_MICROS, -1, "2026-11-24 12:00:00.5", "1795521600500000");
    expect(OUTBOXD_CDC_T_TS_MILLIS, 3, "1969-12-31 23:59:59.999", "-1");
    expect(OUTBOXD_CDC_T_TS_MICROS, -1, "infinity", "9223372036854775807");
    expect(OUTBOXD_CDC_T_TS_MICROS, -1, "-infinity", "-9223372036854775808");
    expect(OUTBOXD_CDC_T_ZTIMESTAMP, -1, "2026-11-24 12:00:00.5+02",
           "\"2026-11-24T10:00:00.500000Z\"");
    expect(OUTBOXD_CDC_T_ZTIMESTAMP, -1, "2026-11-24 00:30:00-05:30",
           "\"2026-11-24T06:00:00.000000Z\"");
    expect(OUTBOXD_CDC_T_ZTIMESTAMP, -1, "infinity", "\"infinity\"");
    /* Debezium's width: the declared precision; 0 as Java's ISO format */
    expect(OUTBOXD_CDC_T_ZTIMESTAMP, 3, "2026-11-24 12:00:00.12+02",
           "\"2026-11-24T10:00:00.120Z\"");
    expect(OUTBOXD_CDC_T_ZTIMESTAMP, 0, "2026-11-24 12:00:00+02", "\"2026-11-24T10:00:00Z\"");
    expect(OUTBOXD_CDC_T_ZTIME, -1, "01:15:30.25+02", "\"23:15:30.25Z\"");
    expect(OUTBOXD_CDC_T_INTERVAL, -1, "1 year 2 mons 3 days 04:05:06.789", "37091106789000");
    expect(OUTBOXD_CDC_T_INTERVAL, -1, "-1 days +00:00:01", "-86399000000");
    expect(OUTBOXD_CDC_T_INTERVAL, -1, "00:00:00", "0");
    expect(OUTBOXD_CDC_T_UUID, -1, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
           "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"");
}

static void test_numeric_100_digits(void **state)
{
    (void)state;
    /* 10^99 + 1 with scale 0, and its negation: two's complement round trip */
    char text[128] = "1";
    for (int i = 0; i < 98; i++)
        strcat(text, "0");
    strcat(text, "1");
    outboxd_buf_t b = {0};
    char reason[256];
    assert_int_equal(outboxd_cdc_json_value(OUTBOXD_CDC_T_VARDECIMAL, -1, text, strlen(text), &b,
                                            reason, sizeof(reason)),
                     0);
    json_error_t je;
    json_t *v = json_loads(b.data, 0, &je);
    assert_non_null(v);
    assert_int_equal(json_integer_value(json_object_get(v, "scale")), 0);
    /* 10^99+1 needs 329 bits: 42 bytes, base64 56 characters */
    assert_int_equal(strlen(json_string_value(json_object_get(v, "value"))), 56);
    json_decref(v);
    outboxd_buf_free(&b);
}

/* ---- whole events --------------------------------------------------------- */

typedef struct captured {
    int n;
    outboxd_buf_t key[4], value[4];
    bool null_value[4], has_key[4], dead[4];
    char topic[4][128];
} captured_t;

static int capture(void *opaque, const outboxd_record_t *rec, bool dead_letter, const char *reason)
{
    (void)reason;
    captured_t *c = opaque;
    int i = c->n++;
    snprintf(c->topic[i], sizeof(c->topic[i]), "%s", rec->topic);
    c->has_key[i] = rec->key != NULL;
    if (rec->key)
        outboxd_buf_append(&c->key[i], rec->key, rec->key_len);
    c->null_value[i] = rec->value == NULL;
    if (rec->value)
        outboxd_buf_append(&c->value[i], rec->value, rec->value_len);
    c->dead[i] = dead_letter;
    return 0;
}

static void captured_free(captured_t *c)
{
    for (int i = 0; i < 4; i++) {
        outboxd_buf_free(&c->key[i]);
        outboxd_buf_free(&c->value[i]);
    }
    memset(c, 0, sizeof(*c));
}

static outboxd_config_t *cdc_conf(const char *opts)
{
    char text[1024];
    snprintf(text, sizeof(text),
             "kafka:\n"
             "  bootstrap_servers: 127.0.0.1:9\n"
             "sources:\n"
             "  - name: shop\n"
             "    dsn: \"dbname=shop\"\n"
             "    tables:\n"
             "      - table: public.orders\n"
             "        mode: cdc\n"
             "        snapshot: never\n"
             "%s",
             opts);
    char err[512];
    outboxd_config_t *conf = outboxd_config_parse(text, strlen(text), "c.yaml", err, sizeof(err));
    if (!conf)
        fail_msg("config: %s", err);
    return conf;
}

static outboxd_pgo_column_t cols[] = {
    {"id", 23, -1, true},
    {"amount", 1700, NUMMOD(10, 2), false},
    {"note", 25, -1, false},
    {"tags", 1009, -1, false},
};
static outboxd_pgo_relation_t rel = {16400, "public", "orders", 'd', 4, cols};

static void test_json_events(void **state)
{
    (void)state;
    outboxd_config_t *conf = cdc_conf("        format: json\n");
    char err[512];
    outboxd_cdc_t *c = outboxd_cdc_new(conf, &conf->sources[0], "shopdb", NULL, err, sizeof(err));
    assert_non_null(c);
    outboxd_pgo_datum_t row[4] = {
        {'t', "7", 1}, {'t', "12.50", 5}, {'u', NULL, 0}, {'t', "{a,NULL,\"b c\"}", 14}};
    outboxd_pgo_tuple_t after = {4, row};
    outboxd_cdc_source_t si = {.lsn = 0x1000,
                               .commit_lsn = 0x1100,
                               .xid = 42,
                               .commit_time_us = 1795521600500000LL,
                               .snapshot = "false"};
    captured_t cap = {0};
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 'u', NULL, &after, &si, capture, &cap, err, sizeof(err)), 0);
    assert_int_equal(cap.n, 1);
    assert_string_equal(cap.topic[0], "shop.public.orders");
    json_error_t je;
    json_t *k = json_loads(cap.key[0].data, 0, &je);
    assert_non_null(k);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(k, "payload"), "id")), 7);
    assert_string_equal(json_string_value(json_object_get(json_object_get(k, "schema"), "name")),
                        "shop.public.orders.Key");
    json_decref(k);
    json_t *v = json_loads(cap.value[0].data, 0, &je);
    if (!v)
        fail_msg("value is not JSON (%s): %s", je.text, cap.value[0].data);
    json_t *p = json_object_get(v, "payload");
    assert_true(json_is_null(json_object_get(p, "before")));
    json_t *a = json_object_get(p, "after");
    assert_string_equal(json_string_value(json_object_get(a, "note")),
                        "__debezium_unavailable_value");
    assert_string_equal(json_string_value(json_object_get(a, "amount")), "BOI=");
    json_t *tags = json_object_get(a, "tags");
    assert_int_equal(json_array_size(tags), 3);
    assert_true(json_is_null(json_array_get(tags, 1)));
    assert_string_equal(json_string_value(json_array_get(tags, 2)), "b c");
    assert_string_equal(json_string_value(json_object_get(p, "op")), "u");
    json_t *src = json_object_get(p, "source");
    assert_string_equal(json_string_value(json_object_get(src, "connector")), "postgresql");
    assert_string_equal(json_string_value(json_object_get(src, "db")), "shopdb");
    assert_string_equal(json_string_value(json_object_get(src, "table")), "orders");
    assert_int_equal(json_integer_value(json_object_get(src, "txId")), 42);
    assert_int_equal(json_integer_value(json_object_get(src, "lsn")), 0x1000);
    assert_int_equal(json_integer_value(json_object_get(src, "ts_ms")), 1795521600500LL);
    assert_string_equal(json_string_value(json_object_get(src, "sequence")), "[\"4352\",\"4096\"]");
    json_decref(v);
    captured_free(&cap);

    /* delete: before = key image, after null, then a tombstone */
    outboxd_pgo_datum_t old[4] = {{'t', "7", 1}, {'n', NULL, 0}, {'n', NULL, 0}, {'n', NULL, 0}};
    outboxd_pgo_tuple_t before = {4, old};
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 'd', &before, NULL, &si, capture, &cap, err, sizeof(err)), 0);
    assert_int_equal(cap.n, 2);
    assert_true(cap.null_value[1]);
    assert_string_equal(cap.key[0].data, cap.key[1].data);
    captured_free(&cap);

    /* a primary-key update: delete + tombstone + create */
    outboxd_pgo_datum_t nrow[4] = {{'t', "8", 1}, {'t', "1.00", 4}, {'t', "x", 1}, {'t', "{}", 2}};
    outboxd_pgo_tuple_t nafter = {4, nrow};
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 'u', &before, &nafter, &si, capture, &cap, err, sizeof(err)),
        0);
    assert_int_equal(cap.n, 3);
    assert_non_null(strstr(cap.value[0].data, "\"op\":\"d\""));
    assert_true(cap.null_value[1]);
    assert_non_null(strstr(cap.value[2].data, "\"op\":\"c\""));
    assert_non_null(strstr(cap.value[2].data, "\"tags\":[]"));
    captured_free(&cap);

    /* REPLICA IDENTITY FULL: the old image holds the unchanged TOASTed
     * note; a primary-key update's create carries it, as Debezium's does
     * (not the placeholder) */
    outboxd_pgo_datum_t fold[4] = {
        {'t', "8", 1}, {'t', "1.00", 4}, {'t', "kept", 4}, {'t', "{}", 2}};
    outboxd_pgo_tuple_t fbefore = {4, fold};
    outboxd_pgo_datum_t fnew[4] = {{'t', "9", 1}, {'t', "1.00", 4}, {'u', NULL, 0}, {'t', "{}", 2}};
    outboxd_pgo_tuple_t fafter = {4, fnew};
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 'u', &fbefore, &fafter, &si, capture, &cap, err, sizeof(err)),
        0);
    assert_int_equal(cap.n, 3);
    assert_non_null(strstr(cap.value[2].data, "\"op\":\"c\""));
    if (!strstr(cap.value[2].data, "\"note\":\"kept\""))
        fail_msg("the create of a key update lost the unchanged TOASTed value: %s",
                 cap.value[2].data);
    assert_null(strstr(cap.value[2].data, "__debezium_unavailable_value"));
    captured_free(&cap);
    /* ... and a dead letter of such an update shows the filled row too */
    outboxd_pgo_datum_t fbad[4] = {{'t', "8", 1}, {'t', "abc", 3}, {'u', NULL, 0}, {'t', "{}", 2}};
    outboxd_pgo_tuple_t fbadafter = {4, fbad};
    assert_int_equal(outboxd_cdc_change(c, &rel, 'u', &fbefore, &fbadafter, &si, capture, &cap, err,
                                        sizeof(err)),
                     0);
    assert_int_equal(cap.n, 1);
    assert_true(cap.dead[0]);
    if (!strstr(cap.value[0].data, "kept"))
        fail_msg("the dead letter of a FULL update lost the unchanged TOASTed value: %s",
                 cap.value[0].data);
    captured_free(&cap);

    /* a value that does not parse: dead-lettered, with the reason */
    outboxd_pgo_datum_t badrow[4] = {
        {'t', "9", 1}, {'t', "abc", 3}, {'n', NULL, 0}, {'n', NULL, 0}};
    outboxd_pgo_tuple_t bad = {4, badrow};
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 'c', NULL, &bad, &si, capture, &cap, err, sizeof(err)), 0);
    assert_int_equal(cap.n, 1);
    assert_true(cap.dead[0]);
    assert_string_equal(cap.topic[0], "outboxd.dlt");
    assert_non_null(strstr(cap.value[0].data, "\"amount\":\"abc\""));
    captured_free(&cap);

    /* truncate: skipped unless truncate_events (Debezium's default) */
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 't', NULL, NULL, &si, capture, &cap, err, sizeof(err)), 0);
    assert_int_equal(cap.n, 0);
    outboxd_cdc_destroy(c);
    outboxd_config_destroy(conf);
}

static void test_json_without_schemas(void **state)
{
    (void)state;
    outboxd_config_t *conf = cdc_conf("        format: json\n        json_schemas: false\n"
                                      "        topic: orders.cdc\n        truncate_events: true\n");
    char err[512];
    outboxd_cdc_t *c = outboxd_cdc_new(conf, &conf->sources[0], "shopdb", NULL, err, sizeof(err));
    assert_non_null(c);
    outboxd_cdc_source_t si = {.lsn = 1, .commit_lsn = 2, .xid = 3, .commit_time_us = 4};
    captured_t cap = {0};
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 't', NULL, NULL, &si, capture, &cap, err, sizeof(err)), 0);
    assert_int_equal(cap.n, 1);
    assert_string_equal(cap.topic[0], "orders.cdc");
    assert_false(cap.has_key[0]);
    json_error_t je;
    json_t *v = json_loads(cap.value[0].data, 0, &je);
    assert_non_null(v);
    assert_null(json_object_get(v, "schema"));
    assert_string_equal(json_string_value(json_object_get(v, "op")), "t");
    json_decref(v);
    captured_free(&cap);
    outboxd_cdc_destroy(c);
    outboxd_config_destroy(conf);
}

static void test_avro_schemas(void **state)
{
    (void)state;
    outboxd_config_t *conf = cdc_conf("");
    char err[512];
    outboxd_cdc_t *c = outboxd_cdc_new(conf, &conf->sources[0], "shopdb", NULL, err, sizeof(err));
    assert_non_null(c);
    outboxd_pgo_datum_t row[4] = {
        {'t', "7", 1}, {'t', "12.50", 5}, {'t', "hi", 2}, {'t', "{a}", 3}};
    outboxd_pgo_tuple_t after = {4, row};
    outboxd_cdc_source_t si = {.lsn = 1, .commit_lsn = 2, .xid = 3, .commit_time_us = 4};
    captured_t cap = {0};
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 'c', NULL, &after, &si, capture, &cap, err, sizeof(err)), 0);
    assert_int_equal(cap.n, 1);
    for (int k = 0; k < 2; k++) {
        const char *text = outboxd_cdc_avro_schema(c, rel.oid, k == 0);
        assert_non_null(text);
        outboxd_avsc_t *sc = outboxd_avsc_parse(text, strlen(text), err, sizeof(err));
        if (!sc)
            fail_msg("schema %d invalid: %s\n%s", k, err, text);
        /* the single-object header names this schema's fingerprint */
        const outboxd_buf_t *b = k == 0 ? &cap.key[0] : &cap.value[0];
        uint64_t fp = outboxd_avsc_fingerprint(sc);
        assert_int_equal((unsigned char)b->data[0], 0xC3);
        for (int i = 0; i < 8; i++)
            assert_int_equal((unsigned char)b->data[2 + i], (unsigned char)(fp >> (8 * i)));
        outboxd_avsc_destroy(sc);
    }
    /* ALTER TABLE ... ADD COLUMN: a new relation gives a new value schema */
    const char *v1 = outboxd_cdc_avro_schema(c, rel.oid, false);
    char *v1copy = strdup(v1);
    outboxd_pgo_column_t cols2[5];
    memcpy(cols2, cols, sizeof(cols));
    cols2[4] = (outboxd_pgo_column_t){"extra", 1184, -1, false};
    outboxd_pgo_relation_t rel2 = {16400, "public", "orders", 'd', 5, cols2};
    outboxd_pgo_datum_t row2[5] = {{'t', "7", 1},
                                   {'t', "12.50", 5},
                                   {'t', "hi", 2},
                                   {'t', "{a}", 3},
                                   {'t', "2026-01-01 00:00:00+00", 22}};
    outboxd_pgo_tuple_t after2 = {5, row2};
    captured_free(&cap);
    assert_int_equal(
        outboxd_cdc_change(c, &rel2, 'c', NULL, &after2, &si, capture, &cap, err, sizeof(err)), 0);
    const char *v2 = outboxd_cdc_avro_schema(c, rel.oid, false);
    assert_string_not_equal(v1copy, v2);
    assert_non_null(strstr(v2, "\"extra\""));
    free(v1copy);
    outboxd_cdc_stats_t st;
    outboxd_cdc_stats(c, &st);
    assert_int_equal(st.schemas, 2);
    assert_int_equal(st.events, 2);
    captured_free(&cap);
    outboxd_cdc_destroy(c);
    outboxd_config_destroy(conf);
}

static void test_sha256(void **state)
{
    (void)state;
    char hex[65];
    outboxd_cdc_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    outboxd_cdc_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 56 bytes */
    outboxd_cdc_sha256_hex(m, strlen(m), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

/* columns_exclude drops a column, mask_hash hashes one (a string column
 * then), mask_null nulls one; the key keeps its columns; dead letters obey
 * the same filters. */
static void test_filters_and_masks(void **state)
{
    (void)state;
    outboxd_config_t *conf = cdc_conf("        format: json\n        json_schemas: true\n"
                                      "        columns_exclude: [note]\n"
                                      "        mask_hash: [tags]\n"
                                      "        mask_null: [amount, nosuch]\n");
    char err[512];
    outboxd_cdc_t *c = outboxd_cdc_new(conf, &conf->sources[0], "shopdb", NULL, err, sizeof(err));
    assert_non_null(c);
    outboxd_pgo_datum_t row[4] = {
        {'t', "7", 1}, {'t', "12.50", 5}, {'t', "secret note", 11}, {'t', "abc", 3}};
    outboxd_pgo_tuple_t after = {4, row};
    outboxd_cdc_source_t si = {.lsn = 1, .commit_lsn = 2, .xid = 3, .commit_time_us = 4};
    captured_t cap = {0};
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 'c', NULL, &after, &si, capture, &cap, err, sizeof(err)), 0);
    assert_int_equal(cap.n, 1);
    json_error_t je;
    json_t *v = json_loads(cap.value[0].data, 0, &je);
    assert_non_null(v);
    json_t *a = json_object_get(json_object_get(v, "payload"), "after");
    assert_null(json_object_get(a, "note"));
    assert_true(json_is_null(json_object_get(a, "amount")));
    assert_string_equal(json_string_value(json_object_get(a, "tags")),
                        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(json_integer_value(json_object_get(a, "id")), 7);
    assert_null(strstr(cap.value[0].data, "secret"));
    assert_null(strstr(cap.value[0].data, "\"field\":\"note\""));
    json_decref(v);
    captured_free(&cap);
    /* a dead letter (a bad id) keeps the filters */
    outboxd_pgo_datum_t bad[4] = {
        {'t', "x", 1}, {'t', "12.50", 5}, {'t', "secret note", 11}, {'t', "abc", 3}};
    outboxd_pgo_tuple_t badt = {4, bad};
    assert_int_equal(
        outboxd_cdc_change(c, &rel, 'c', NULL, &badt, &si, capture, &cap, err, sizeof(err)), 0);
    assert_true(cap.dead[0]);
    assert_null(strstr(cap.value[0].data, "secret"));
    assert_null(strstr(cap.value[0].data, "12.50"));
    captured_free(&cap);
    outboxd_cdc_destroy(c);
    outboxd_config_destroy(conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kinds),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_numeric_100_digits),
        cmocka_unit_test(test_json_events),
        cmocka_unit_test(test_json_without_schemas),
        cmocka_unit_test(test_avro_schemas),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_filters_and_masks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

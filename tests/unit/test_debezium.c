/*
 * Debezium drop-in (relay/debezium.h): each EventRouter property and
 * converter, the bytes they render, config errors, and the router's records
 * for a tables[].debezium table (topic, key, value, headers, partition,
 * timestamp, tombstones, dead letters). The expected bytes are what
 * Debezium 3.0.8 writes (checked side by side by
 * tests/integration/test_debezium_side_by_side.sh).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/relay/config.h"
#include "outboxd/relay/debezium.h"
#include "outboxd/relay/router.h"

static outboxd_dbz_t *dbz(const char *const *kv, char *err)
{
    outboxd_kv_t props[16];
    size_t n = 0;
    for (; kv[2 * n]; n++) {
        props[n].key = (char *)kv[2 * n];
        props[n].value = (char *)kv[2 * n + 1];
        props[n].line = 1;
    }
    return outboxd_dbz_new(props, n, err, 512);
}

#define STRCONV  "org.apache.kafka.connect.storage.StringConverter"
#define JSONCONV "org.apache.kafka.connect.json.JsonConverter"

static void assert_buf(const outboxd_buf_t *b, const char *want)
{
    if (b->len != strlen(want) || memcmp(b->data, want, b->len) != 0)
        fail_msg("got '%.*s', want '%s'", (int)b->len, b->data ? b->data : "", want);
}

static void test_topic_default(void **state)
{
    (void)state;
    char err[512];
    const char *kv[] = {"value.converter", STRCONV, NULL};
    outboxd_dbz_t *d = dbz(kv, err);
    assert_non_null(d);
    outboxd_buf_t b = {0};
    assert_int_equal(outboxd_dbz_topic(d, "Order", 5, &b), 0);
    assert_buf(&b, "outbox.event.Order");
    assert_string_equal(b.data, "outbox.event.Order");
    assert_string_equal(d->col_id, "id");
    assert_string_equal(d->col_key, "aggregateid");
    assert_string_equal(d->col_payload, "payload");
    assert_string_equal(d->col_route, "aggregatetype");
    assert_null(d->col_ts);
    outboxd_buf_free(&b);
    outboxd_dbz_destroy(d);
}

static void test_topic_regex_groups(void **state)
{
    (void)state;
    char err[512];
    /* transforms.<name>. prefixes are taken as pasted from a connector. */
    const char *kv[] = {"value.converter",
                        JSONCONV,
                        "transforms.outbox.route.topic.regex",
                        "(?<head>[A-Za-z]+)(?:_)?(?<tail>\\d*)",
                        "transforms.outbox.route.topic.replacement",
                        "ev.${head}.$2.x",
                        "transforms.outbox.route.by.field",
                        "kind",
                        NULL};
    outboxd_dbz_t *d = dbz(kv, err);
    if (!d)
        fail_msg("%s", err);
    assert_string_equal(d->col_route, "kind");
    outboxd_buf_t b = {0};
    assert_int_equal(outboxd_dbz_topic(d, "invoice_22", 10, &b), 0);
    assert_buf(&b, "ev.invoice.22.x");
    assert_int_equal(outboxd_dbz_topic(d, "order", 5, &b), 0);
    assert_buf(&b, "ev.order..x");
    /* No match of the whole value: the value itself is the topic. */
    assert_int_equal(outboxd_dbz_topic(d, "a-b", 3, &b), 0);
    assert_buf(&b, "a-b");
    outboxd_buf_free(&b);
    outboxd_dbz_destroy(d);
}

/* Java escapes inside [...] and \D \W \S: in a POSIX bracket a backslash
 * is a literal, so copied as they were [\w.-] matched only 'w' '.' '-' and
 * events went to the unrouted topic without a word. */
static void topic_is(const char *regex, const char *value, const char *want)
{
    char err[512];
    const char *kv[] = {"value.converter", STRCONV, "route.topic.regex", regex, NULL};
    outboxd_dbz_t *d = dbz(kv, err);
    if (!d)
        fail_msg("%s: %s", regex, err);
    outboxd_buf_t b = {0};
    assert_int_equal(outboxd_dbz_topic(d, value, strlen(value), &b), 0);
    if (strcmp(b.data, want) != 0)
        fail_msg("regex %s, value %s: topic '%s', expected '%s'", regex, value, b.data, want);
    outboxd_buf_free(&b);
    outboxd_dbz_destroy(d);
}

static void test_topic_regex_classes(void **state)
{
    (void)state;
    topic_is("(?<routedByValue>[\\w.-]+)", "order.v2-x", "outbox.event.order.v2-x");
    topic_is("(?<routedByValue>[\\w.-]+)", "a b", "a b");
    topic_is("(?<routedByValue>[\\d]+)x", "42x", "outbox.event.42");
    topic_is("(?<routedByValue>[^\\s]+)", "a b", "a b");
    topic_is("(?<routedByValue>[^\\s]+)", "ab", "outbox.event.ab");
    topic_is("(?<routedByValue>[a\\-z]+)", "a-z", "outbox.event.a-z");
    topic_is("(?<routedByValue>[a\\-z]+)", "b", "b");
    topic_is("(?<routedByValue>[\\]x]+)", "]x]", "outbox.event.]x]");
    topic_is("(?<routedByValue>[\\^a]+)", "^a", "outbox.event.^a");
    topic_is("(?<routedByValue>\\D+)", "orders", "outbox.event.orders");
    topic_is("(?<routedByValue>\\D+)", "ab1", "ab1");
    topic_is("(?<routedByValue>\\W)(?<x>\\S+)", ".ab", "outbox.event..");
    topic_is("(?<routedByValue>\\w+)\\.v", "order.v", "outbox.event.order");
    topic_is("(?<routedByValue>\\w+)\\.v", "orderxv", "orderxv");
    /* The order of a class kept: a '-' after a class escape is a literal,
     * ^ ] - [ escaped are literals wherever they stand. */
    topic_is("(?<routedByValue>[\\w-.]+)", "a-b.c", "outbox.event.a-b.c");
    topic_is("(?<routedByValue>[\\w-a]+)", "`", "`");
    topic_is("(?<routedByValue>[-^]+)", "-^", "outbox.event.-^");
    topic_is("(?<routedByValue>[-^]+)", "a", "a");
    topic_is("(?<routedByValue>[\\^]+)", "^^", "outbox.event.^^");
    topic_is("(?<routedByValue>[\\^]+)", "a", "a");
    topic_is("(?<routedByValue>[a\\]]+)", "]a", "outbox.event.]a");
    topic_is("(?<routedByValue>[!-\\]]+)", "]!", "outbox.event.]!");
    topic_is("(?<routedByValue>[\\[.]+)", "[.", "outbox.event.[.");
    /* Escaped punctuation GNU would read as an anchor is the character. */
    topic_is("(?<routedByValue>x\\<y)", "x<y", "outbox.event.x<y");
    char err[512];
    const char *refused[] = {"\\t",    "[\\p{L}]+", "\\p{L}+", "[a-z&&[^b]]", "[a[b]]",
                             "(a)\\1", "\\bx",      "[\\D]",   NULL};
    for (size_t i = 0; refused[i]; i++) {
        const char *kv[] = {"value.converter", STRCONV, "route.topic.regex", refused[i], NULL};
        outboxd_dbz_t *d = dbz(kv, err);
        if (d)
            fail_msg("route.topic.regex %s was taken", refused[i]);
        assert_non_null(strstr(err, "route.topic.regex"));
        assert_non_null(strstr(err, "POSIX"));
    }
    /* 30 groups fit; 31 (with the whole match and the anchor group: 33 >
     * 32) do not. */
    outboxd_buf_t fit = {0};
    for (int i = 0; i < 29; i++)
        outboxd_buf_append_str(&fit, "(a)");
    outboxd_buf_append_str(&fit, "(?<routedByValue>b)");
    outboxd_buf_append(&fit, "", 1);
    outboxd_buf_t v30 = {0};
    for (int i = 0; i < 29; i++)
        outboxd_buf_append_str(&v30, "a");
    outboxd_buf_append_str(&v30, "b");
    outboxd_buf_append(&v30, "", 1);
    topic_is(fit.data, v30.data, "outbox.event.b");
    outboxd_buf_free(&fit);
    outboxd_buf_free(&v30);
    outboxd_buf_t many = {0};
    for (int i = 0; i < 31; i++)
        outboxd_buf_append_str(&many, "(a)");
    outboxd_buf_append(&many, "", 1);
    const char *kv[] = {"value.converter", STRCONV, "route.topic.regex", many.data, NULL};
    assert_null(dbz(kv, err));
    assert_non_null(strstr(err, "more than 30 groups"));
    outboxd_buf_free(&many);
}

/* Each part of a placement trimmed, as Debezium; more placements than a
 * record carries refused (they were dropped without a word). */
static void test_placements(void **state)
{
    (void)state;
    char err[512];
    const char *kv[] = {"value.converter",
                        JSONCONV,
                        "value.converter.schemas.enable",
                        "false",
                        "table.fields.additional.placement",
                        " type : header : eventType , region:envelope: regionName",
                        NULL};
    outboxd_dbz_t *d = dbz(kv, err);
    if (!d)
        fail_msg("%s", err);
    assert_int_equal(d->n_places, 2);
    assert_string_equal(d->places[0].column, "type");
    assert_string_equal(d->places[0].alias, "eventType");
    assert_int_equal(d->places[0].where, OUTBOXD_DBZ_HEADER);
    assert_string_equal(d->places[1].column, "region");
    assert_string_equal(d->places[1].alias, "regionName");
    outboxd_dbz_destroy(d);
    outboxd_buf_t many = {0};
    for (int i = 0; i < 32; i++)
        outboxd_buf_printf(&many, "%sc%d:envelope", i ? "," : "", i);
    const char *kv2[] = {"value.converter", JSONCONV, "table.fields.additional.placement",
                         many.data, NULL};
    assert_null(dbz(kv2, err));
    assert_non_null(strstr(err, "more than 31 placements"));
    outboxd_buf_free(&many);
}

static void test_config_errors(void **state)
{
    (void)state;
    char err[512];
    const char *unknown[] = {"value.converter", STRCONV, "route.topic.nope", "x", NULL};
    assert_null(dbz(unknown, err));
    assert_non_null(strstr(err, "route.topic.nope"));
    const char *noconv[] = {"route.by.field", "x", NULL};
    assert_null(dbz(noconv, err));
    assert_non_null(strstr(err, "value.converter is required"));
    const char *proto[] = {"value.converter", "io.confluent.connect.protobuf.ProtobufConverter",
                           NULL};
    assert_null(dbz(proto, err));
    assert_non_null(strstr(err, "ProtobufConverter"));
    assert_non_null(strstr(err, "AvroConverter"));
    const char *schemas[] = {"value.converter", JSONCONV, "value.converter.schemas.enable", "yes",
                             NULL};
    assert_null(dbz(schemas, err));
    assert_non_null(strstr(err, "value.converter.schemas.enable: expected true or false"));
    const char *place[] = {"value.converter", JSONCONV, "table.fields.additional.placement",
                           "type:body", NULL};
    assert_null(dbz(place, err));
    assert_non_null(strstr(err, "unknown placement 'body'"));
    const char *env_str[] = {"value.converter", STRCONV, "table.fields.additional.placement",
                             "type:envelope", NULL};
    assert_null(dbz(env_str, err));
    assert_non_null(strstr(err, "needs value.converter JsonConverter"));
    const char *badgroup[] = {"value.converter", STRCONV, "route.topic.replacement", "t.${nope}",
                              NULL};
    assert_null(dbz(badgroup, err));
    assert_non_null(strstr(err, "route.topic.replacement"));
    assert_non_null(strstr(err, "nope"));
    const char *look[] = {"value.converter", STRCONV, "route.topic.regex", "(?=x).*", NULL};
    assert_null(dbz(look, err));
    assert_non_null(strstr(err, "route.topic.regex"));
    const char *lazy[] = {"value.converter", STRCONV, "route.topic.regex", "(?<routedByValue>.*?)x",
                          NULL};
    assert_null(dbz(lazy, err));
    assert_non_null(strstr(err, "lazy or possessive"));
    const char *badbool[] = {"value.converter", STRCONV, "route.tombstone.on.empty.payload", "yes",
                             NULL};
    assert_null(dbz(badbool, err));
    assert_non_null(strstr(err, "expected true or false"));
}

static void test_key_converters(void **state)
{
    (void)state;
    char err[512];
    const char *s[] = {"value.converter", STRCONV, "key.converter", STRCONV, NULL};
    const char *j[] = {"value.converter", STRCONV, "key.converter", JSONCONV, NULL};
    outboxd_dbz_t *ds = dbz(s, err), *dj = dbz(j, err);
    assert_non_null(ds);
    assert_non_null(dj);
    outboxd_buf_t b = {0};
    assert_int_equal(outboxd_dbz_key(ds, "k\"é", 4, 25, &b), 0);
    assert_buf(&b, "k\"é");
    assert_int_equal(outboxd_dbz_key(dj, "k\"é\n", 5, 25, &b), 0);
    assert_buf(&b, "\"k\\\"é\\n\"");
    assert_int_equal(outboxd_dbz_key(dj, "42", 2, 23, &b), 0); /* int4: a JSON number */
    assert_buf(&b, "42");
    assert_int_equal(outboxd_dbz_key(ds, "t", 1, 16, &b), 0); /* bool: true/false */
    assert_buf(&b, "true");
    assert_int_equal(outboxd_dbz_key(dj, NULL, 0, 25, &b), 0); /* SQL NULL */
    assert_buf(&b, "null");
    outboxd_buf_free(&b);
    outboxd_dbz_destroy(ds);
    outboxd_dbz_destroy(dj);
}

/* bytea payloads: Debezium's BinaryDataConverter and Kafka's
 * ByteArrayConverter pass them on as they are; JsonConverter writes Connect
 * BYTES as base64. */
#define BBCONV "io.debezium.converters.BinaryDataConverter"
#define BACONV "org.apache.kafka.connect.converters.ByteArrayConverter"
static void test_bytea(void **state)
{
    (void)state;
    char err[512], reason[512];
    outboxd_buf_t b = {0};
    bool tomb;
    outboxd_dbz_field_t p = {"payload", "\\x00ff0a", 8, 17}, pnull = {"payload", NULL, 0, 17};
    outboxd_dbz_field_t pempty = {"payload", "\\x", 2, 17};
    outboxd_dbz_field_t ptext = {"payload", "{}", 2, 3802};

    const char *bb[] = {"value.converter", BBCONV, "route.tombstone.on.empty.payload", "true",
                        NULL};
    outboxd_dbz_t *d = dbz(bb, err);
    assert_non_null(d);
    assert_int_equal(outboxd_dbz_value(d, &p, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_false(tomb);
    assert_int_equal(b.len, 3);
    assert_memory_equal(b.data, "\x00\xff\n", 3);
    assert_int_equal(outboxd_dbz_value(d, &pnull, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_true(tomb);
    /* An empty bytea is no "empty payload": a ByteBuffer's toString() is
     * never blank. */
    assert_int_equal(outboxd_dbz_value(d, &pempty, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_false(tomb);
    assert_int_equal(b.len, 0);
    /* The same in the escape format (bytea_output = escape), whose empty
     * text would be blank. */
    outboxd_dbz_field_t pesc = {"payload", "", 0, 17};
    assert_int_equal(outboxd_dbz_value(d, &pesc, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_false(tomb);
    assert_int_equal(b.len, 0);
    /* Not bytea, and no delegate: Debezium's task fails; the row is
     * dead-lettered with the fix. */
    assert_int_equal(outboxd_dbz_value(d, &ptext, NULL, 0, &b, &tomb, reason, sizeof(reason)), 1);
    assert_non_null(strstr(reason, "value.converter.delegate.converter.type"));
    outboxd_dbz_destroy(d);

    /* With a JsonConverter delegate: text payloads and envelopes go to it;
     * bytea in it is base64. */
    const char *del[] = {"value.converter",
                         BBCONV,
                         "value.converter.delegate.converter.type",
                         JSONCONV,
                         "value.converter.delegate.converter.type.schemas.enable",
                         "false",
                         "table.fields.additional.placement",
                         "sig:envelope",
                         NULL};
    d = dbz(del, err);
    assert_non_null(d);
    outboxd_dbz_field_t env[] = {{"sig", "\\x666f6f", 8, 17}};
    assert_int_equal(outboxd_dbz_value(d, &p, env, 1, &b, &tomb, reason, sizeof(reason)), 0);
    assert_buf(&b, "{\"payload\":\"AP8K\",\"sig\":\"Zm9v\"}");
    assert_int_equal(outboxd_dbz_value(d, &ptext, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_buf(&b, "\"{}\"");
    outboxd_dbz_destroy(d);

    /* JsonConverter, expansion on: a bytea payload is not expanded. */
    const char *j[] = {"value.converter",
                       JSONCONV,
                       "table.expand.json.payload",
                       "true",
                       "key.converter",
                       JSONCONV,
                       "route.tombstone.on.empty.payload",
                       "true",
                       NULL};
    d = dbz(j, err);
    assert_int_equal(outboxd_dbz_value(d, &p, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_buf(&b, "\"AP8K\"");
    /* An empty bytea is no "empty payload", in either text format. */
    assert_int_equal(outboxd_dbz_value(d, &pesc, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_false(tomb);
    assert_buf(&b, "\"\"");
    assert_int_equal(outboxd_dbz_key(d, "\\x666f", 6, 17, &b), 0);
    assert_buf(&b, "\"Zm8=\"");
    outboxd_dbz_destroy(d);

    /* Load-time errors: envelopes without a delegate, an Avro delegate, a
     * delegate for another converter, the ByteArrayConverters. */
    const char *noenv[] = {"value.converter", BBCONV, "table.fields.additional.placement",
                           "sig:envelope", NULL};
    assert_null(dbz(noenv, err));
    assert_non_null(strstr(err, "sig:envelope makes the value a struct"));
    const char *avdel[] = {"value.converter", BBCONV, "value.converter.delegate.converter.type",
                           "io.confluent.connect.avro.AvroConverter", NULL};
    assert_null(dbz(avdel, err));
    assert_non_null(strstr(err, "is not supported"));
    const char *strdel[] = {"value.converter", STRCONV, "value.converter.delegate.converter.type",
                            JSONCONV, NULL};
    assert_null(dbz(strdel, err));
    assert_non_null(strstr(err, "is a setting of " BBCONV));
    const char *dba[] = {"value.converter", "io.debezium.converters.ByteArrayConverter", NULL};
    assert_null(dbz(dba, err));
    assert_non_null(strstr(err, "ByteBuffer"));
    assert_non_null(strstr(err, BBCONV));
    const char *badel[] = {"value.converter", BACONV, "value.converter.delegate.converter.type",
                           JSONCONV, NULL};
    assert_null(dbz(badel, err));
    const char *baenv[] = {"value.converter", BACONV, "table.fields.additional.placement",
                           "sig:envelope", NULL};
    assert_null(dbz(baenv, err));
    assert_non_null(strstr(err, "cannot write"));

    /* Kafka's ByteArrayConverter: bytea as it is; anything else fails. */
    const char *ba[] = {"value.converter", BACONV, NULL};
    d = dbz(ba, err);
    assert_non_null(d);
    assert_int_equal(outboxd_dbz_value(d, &p, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_int_equal(b.len, 3);
    assert_int_equal(outboxd_dbz_value(d, &ptext, NULL, 0, &b, &tomb, reason, sizeof(reason)), 1);
    assert_non_null(strstr(reason, BACONV));
    assert_null(strstr(reason, "delegate"));
    outboxd_dbz_destroy(d);
    outboxd_buf_free(&b);
}

static void expand(const char *in, bool keep_nulls, const char *want)
{
    outboxd_buf_t b = {0};
    char reason[256];
    assert_int_equal(
        outboxd_dbz_expand_json(in, strlen(in), keep_nulls, &b, reason, sizeof(reason)), 0);
    assert_buf(&b, want);
    outboxd_buf_free(&b);
}

static void test_expand_json(void **state)
{
    (void)state;
    /* jsonb text as PostgreSQL prints it -> Jackson's compact form. */
    expand("{\"name\": \"ké\", \"amount\": 39800, \"orderId\": 1}", false,
           "{\"name\":\"ké\",\"amount\":39800,\"orderId\":1}");
    /* null fields: dropped (table.json.payload.null.behavior ignore), kept
     * with optional_bytes. */
    expand("{\"a\": null, \"b\": [1, 2]}", false, "{\"b\":[1,2]}");
    expand("{\"a\": null, \"b\": [1, 2]}", true, "{\"a\":null,\"b\":[1,2]}");
    /* Fractional numbers as Java doubles. */
    expand("[12.50, 0.125, 1.0, 0.0001, 12345678.9, 100.25, -3.5]", false,
           "[12.5,0.125,1.0,1.0E-4,1.23456789E7,100.25,-3.5]");
    expand("{\"big\": 9007199254740993}", false, "{\"big\":9007199254740993}");
    /* Escapes as Jackson writes them; non-ASCII and / as is. */
    expand("{\"s\": \"tab\\there \\\"q\\\" \\\\ a/b \\u0001 日本\"}", false,
           "{\"s\":\"tab\\there \\\"q\\\" \\\\ a/b \\u0001 日本\"}");
    expand("{\"n\": {\"t\": true, \"f\": false}}", false, "{\"n\":{\"t\":true,\"f\":false}}");
    /* Through the Connect schema JsonSchemaData infers, as JsonConverter
     * prints the struct: an empty array has no schema (the field is left
     * out); objects of an array merge into one struct, each printed with
     * every field (null where it lacks one). */
    expand("{\"id\": 1, \"tags\": [], \"n\": 2}", false, "{\"id\":1,\"n\":2}");
    expand("{\"l\": [{\"a\": 1}, {\"b\": \"x\"}]}", false,
           "{\"l\":[{\"a\":1,\"b\":null},{\"a\":null,\"b\":\"x\"}]}");
    /* Where Debezium's expansion fails or does not apply, the payload stays
     * the string: arrays mixing types or integers and fractions, arrays of
     * only nulls, a text not starting with { or [ (a jsonb scalar), text
     * that is not JSON (Debezium logs a warning; before, outboxd
     * dead-lettered the row). */
    expand("{\"p\": [10, 12.5]}", false, "\"{\\\"p\\\": [10, 12.5]}\"");
    expand("{\"p\": [1, \"x\"]}", false, "\"{\\\"p\\\": [1, \\\"x\\\"]}\"");
    expand("{\"p\": [null]}", false, "\"{\\\"p\\\": [null]}\"");
    expand("\"abc\"", false, "\"\\\"abc\\\"\"");
    expand("42", false, "\"42\"");
    expand("{nope", false, "\"{nope\"");
}

static void test_values(void **state)
{
    (void)state;
    char err[512], reason[256];
    outboxd_buf_t b = {0};
    bool tomb;
    const char *payload_text = "{\"a\": 1}";
    outboxd_dbz_field_t p = {"payload", payload_text, strlen(payload_text), 3802};
    outboxd_dbz_field_t pnull = {"payload", NULL, 0, 3802};

    /* StringConverter: the jsonb text as is; NULL payload: a null value. */
    const char *s[] = {"value.converter", STRCONV, NULL};
    outboxd_dbz_t *d = dbz(s, err);
    assert_int_equal(outboxd_dbz_value(d, &p, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_false(tomb);
    assert_buf(&b, "{\"a\": 1}");
    assert_int_equal(outboxd_dbz_value(d, &pnull, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_true(tomb);
    outboxd_dbz_destroy(d);

    /* JsonConverter without expansion: a JSON string; NULL: the bytes null. */
    const char *j[] = {"value.converter", JSONCONV, NULL};
    d = dbz(j, err);
    assert_int_equal(outboxd_dbz_value(d, &p, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_buf(&b, "\"{\\\"a\\\": 1}\"");
    assert_int_equal(outboxd_dbz_value(d, &pnull, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_false(tomb);
    assert_buf(&b, "null");
    outboxd_dbz_destroy(d);

    /* Expanded, tombstone on empty payload, envelope fields in order. */
    const char *e[] = {"value.converter",
                       JSONCONV,
                       "value.converter.schemas.enable",
                       "false",
                       "table.expand.json.payload",
                       "true",
                       "route.tombstone.on.empty.payload",
                       "true",
                       "table.fields.additional.placement",
                       "type:envelope:eventType,version:envelope,flag:envelope",
                       NULL};
    d = dbz(e, err);
    assert_non_null(d);
    outboxd_dbz_field_t env[] = {
        {"eventType", "Created", 7, 25}, {"version", NULL, 0, 23}, {"flag", "f", 1, 16}};
    assert_int_equal(outboxd_dbz_value(d, &p, env, 3, &b, &tomb, reason, sizeof(reason)), 0);
    assert_buf(&b,
               "{\"payload\":{\"a\":1},\"eventType\":\"Created\",\"version\":null,\"flag\":false}");
    env[1].data = "7";
    env[1].len = 1;
    assert_int_equal(outboxd_dbz_value(d, &p, env, 2, &b, &tomb, reason, sizeof(reason)), 0);
    assert_buf(&b, "{\"payload\":{\"a\":1},\"eventType\":\"Created\",\"version\":7}");
    assert_int_equal(outboxd_dbz_value(d, &pnull, env, 3, &b, &tomb, reason, sizeof(reason)), 0);
    assert_true(tomb);
    /* Debezium's "empty payload" is also a text its trim() empties. */
    outboxd_dbz_field_t pblank = {"payload", " \n\t", 3, 25}, pempty = {"payload", "", 0, 25};
    assert_int_equal(outboxd_dbz_value(d, &pblank, env, 3, &b, &tomb, reason, sizeof(reason)), 0);
    assert_true(tomb);
    assert_int_equal(outboxd_dbz_value(d, &pempty, NULL, 0, &b, &tomb, reason, sizeof(reason)), 0);
    assert_true(tomb);
    outboxd_buf_t h = {0};
    assert_int_equal(outboxd_dbz_header_text("f", 1, 16, &h), 0);
    assert_buf(&h, "false");
    /* float4 / float8 as Java's Float / Double.toString (Connect's text of
     * FLOAT32 / FLOAT64 in a header or a StringConverter key). */
    const char *floats[][3] = {{"1", "701", "1.0"},
                               {"0.0001", "701", "1.0E-4"},
                               {"1e+20", "701", "1.0E20"},
                               {"-2.5", "701", "-2.5"},
                               {"NaN", "701", "NaN"},
                               {"-Infinity", "701", "-Infinity"},
                               {"0.1", "700", "0.1"},
                               {"3.4028235e+38", "700", "3.4028235E38"},
                               {"12345678", "701", "1.2345678E7"}};
    for (size_t i = 0; i < sizeof(floats) / sizeof(floats[0]); i++) {
        outboxd_buf_reset(&h);
        assert_int_equal(outboxd_dbz_header_text(floats[i][0], strlen(floats[i][0]),
                                                 (uint32_t)atoi(floats[i][1]), &h),
                         0);
        outboxd_buf_append(&h, "", 1);
        if (strcmp(h.data, floats[i][2]) != 0)
            fail_msg("%s (oid %s): '%s', expected '%s'", floats[i][0], floats[i][1], h.data,
                     floats[i][2]);
    }
    outboxd_buf_free(&h);
    outboxd_buf_free(&b);
    outboxd_dbz_destroy(d);
}

/* ---- the router with a tables[].debezium table ---- */

static const char *CONFIG =
    "kafka:\n"
    "  bootstrap_servers: 127.0.0.1:9\n"
    "sources:\n"
    "  - name: shop\n"
    "    dsn: \"dbname=shop\"\n"
    "    tables:\n"
    "      - table: public.outbox\n"
    "        debezium:\n"
    "          key.converter: org.apache.kafka.connect.json.JsonConverter\n"
    "          key.converter.schemas.enable: \"false\"\n"
    "          value.converter: org.apache.kafka.connect.json.JsonConverter\n"
    "          value.converter.schemas.enable: \"false\"\n"
    "          transforms.outbox.type: io.debezium.transforms.outbox.EventRouter\n"
    "          transforms.outbox.route.topic.replacement: \"dbz.${routedByValue}\"\n"
    "          transforms.outbox.table.expand.json.payload: \"true\"\n"
    "          transforms.outbox.route.tombstone.on.empty.payload: \"true\"\n"
    "          transforms.outbox.table.field.event.timestamp: ts\n"
    "          transforms.outbox.table.fields.additional.placement: "
    "\"type:header:eventType,tenant:header,region:envelope:regionName,part:partition\"\n";

static outboxd_pgo_column_t COLS[] = {
    {"id", 2950, -1, true},    {"aggregatetype", 25, -1, false}, {"aggregateid", 25, -1, false},
    {"type", 25, -1, false},   {"payload", 3802, -1, false},     {"ts", 1114, 6, false},
    {"tenant", 25, -1, false}, {"region", 25, -1, false},        {"part", 23, -1, false},
};
#define NCOLS 9

typedef struct fixture {
    outboxd_config_t *conf;
    outboxd_router_t *rt;
    outboxd_pgo_relation_t rel;
    outboxd_pgo_datum_t vals[NCOLS];
} fixture_t;

static void set(fixture_t *f, int i, const char *v)
{
    f->vals[i].kind = v ? 't' : 'n';
    f->vals[i].data = v;
    f->vals[i].len = v ? (uint32_t)strlen(v) : 0;
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    char err[512];
    f->conf = outboxd_config_parse(CONFIG, strlen(CONFIG), "test.yaml", err, sizeof(err));
    if (!f->conf)
        fail_msg("config: %s", err);
    f->rt = outboxd_router_new(f->conf, &f->conf->sources[0], "shopdb", err, sizeof(err));
    if (!f->rt)
        fail_msg("router: %s", err);
    outboxd_pgo_relation_t base = {16384, "public", "outbox", 'd', NCOLS, COLS};
    f->rel = base;
    const char *v[] = {"5b1c7c1e-4f0e-4d6b-9a55-000000000001",
                       "order",
                       "order-ké",
                       "OrderCreated",
                       "{\"name\": \"ké\", \"note\": null, \"price\": 12.50}",
                       "2026-11-24 12:00:00.123999",
                       "acme",
                       "eu",
                       NULL};
    for (int i = 0; i < NCOLS; i++)
        set(f, i, v[i]);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    outboxd_router_destroy(f->rt);
    outboxd_config_destroy(f->conf);
    free(f);
    return 0;
}

static const outboxd_change_ctx_t CTX = {
    .lsn = 0x1000020, .commit_lsn = 0x1000100, .xid = 777, .commit_time_us = 1764000000000000LL};

static int route(fixture_t *f, outboxd_record_t *rec, char *err)
{
    outboxd_pgo_msg_t m;
    memset(&m, 0, sizeof(m));
    m.kind = OUTBOXD_PGO_INSERT;
    m.u.change.rel = &f->rel;
    m.u.change.new_tuple.ncols = NCOLS;
    m.u.change.new_tuple.cols = f->vals;
    return outboxd_router_route(f->rt, &m, &CTX, rec, err, 512);
}

static void assert_bytes(const void *p, size_t len, const char *want)
{
    if (!p || len != strlen(want) || memcmp(p, want, len) != 0)
        fail_msg("got '%.*s', want '%s'", (int)len, p ? (const char *)p : "(null)", want);
}

/* ---- AvroConverter: the schema texts and datums are what Debezium 3.0.8
 * with Apicurio's AvroConverter 2.4.2 registered and wrote for the same
 * rows (tests/integration/test_debezium_avro_side_by_side.sh) ---- */

#define AVROCONV "io.apicurio.registry.utils.converter.AvroConverter"
#define JSON_OID 3802
#define TEXT_OID 25
#define INT4_OID 23

static void assert_hex(const outboxd_buf_t *b, const char *hex)
{
    char got[1024] = "";
    for (size_t i = 0; i < b->len && 2 * i + 2 < sizeof(got); i++)
        snprintf(got + 2 * i, 3, "%02x", (unsigned char)b->data[i]);
    if (strcmp(got, hex) != 0)
        fail_msg("got %s, want %s", got, hex);
}

/* JsonConverter's schemas.enable (its default when not set): the Connect
 * schema beside the value, as JsonConverter writes it. */
static void test_json_schemas(void **state)
{
    (void)state;
    char err[512], reason[256];
    bool tomb = true;
    outboxd_buf_t b = {0};
    const char *def[] = {
        "key.converter", JSONCONV, "value.converter", JSONCONV, "outboxd.columns.not.null",
        "aggregateid",   NULL};
    outboxd_dbz_t *d = dbz(def, err);
    if (!d)
        fail_msg("%s", err);
    assert_true(d->key_schemas);
    assert_true(d->value_schemas);
    outboxd_dbz_field_t k = {"aggregateid", "order-1", 7, 25};
    assert_int_equal(outboxd_dbz_schema_key(d, &k, &b, reason, sizeof(reason)), 0);
    assert_buf(&b, "{\"schema\":{\"type\":\"string\",\"optional\":false},\"payload\":\"order-1\"}");
    k.data = NULL;
    k.len = 0;
    assert_int_equal(outboxd_dbz_schema_key(d, &k, &b, reason, sizeof(reason)), 1);
    assert_non_null(strstr(reason, "'aggregateid' is NULL but listed in outboxd.columns.not.null"));
    outboxd_dbz_field_t kn = {"n", "42", 2, 20}, kb = {"b", "\\x00ff", 6, 17};
    assert_int_equal(outboxd_dbz_schema_key(d, &kn, &b, reason, sizeof(reason)), 0);
    assert_buf(&b, "{\"schema\":{\"type\":\"int64\",\"optional\":true},\"payload\":42}");
    assert_int_equal(outboxd_dbz_schema_key(d, &kb, &b, reason, sizeof(reason)), 0);
    assert_buf(&b, "{\"schema\":{\"type\":\"bytes\",\"optional\":true},\"payload\":\"AP8=\"}");
    outboxd_dbz_field_t kd = {"day", "2026-01-01", 10, 1082};
    assert_int_equal(outboxd_dbz_schema_key(d, &kd, &b, reason, sizeof(reason)), 1);
    assert_non_null(strstr(reason, "key column 'day' has a type (oid 1082)"));
    /* The payload alone: the Json string, a NULL one null under its schema. */
    outboxd_dbz_field_t p = {"payload", "{\"a\": 1}", 8, 3802}, pnull = {"payload", NULL, 0, 3802};
    assert_int_equal(outboxd_dbz_schema_value(d, "public.outbox", "order", &p, NULL, 0, NULL, &b,
                                              &tomb, reason, sizeof(reason)),
                     0);
    assert_false(tomb);
    assert_buf(&b, "{\"schema\":{\"type\":\"string\",\"optional\":true,\"name\":\"io.debezium.data."
                   "Json\",\"version\":1},\"payload\":\"{\\\"a\\\": 1}\"}");
    tomb = true;
    assert_int_equal(outboxd_dbz_schema_value(d, "public.outbox", "order", &pnull, NULL, 0, NULL,
                                              &b, &tomb, reason, sizeof(reason)),
                     0);
    assert_false(tomb);
    assert_buf(&b, "{\"schema\":{\"type\":\"string\",\"optional\":true,\"name\":\"io.debezium.data."
                   "Json\",\"version\":1},\"payload\":null}");
    outboxd_dbz_destroy(d);

    /* Expanded, in the envelope struct named after topic.prefix, versioned. */
    const char *e[] = {"value.converter",
                       JSONCONV,
                       "topic.prefix",
                       "pfx",
                       "table.expand.json.payload",
                       "true",
                       "table.field.event.schema.version",
                       "version",
                       "table.fields.additional.placement",
                       "region:envelope:regionName,flag:envelope",
                       "outboxd.columns.not.null",
                       "flag,region", /* columns, not aliases */
                       NULL};
    d = dbz(e, err);
    if (!d)
        fail_msg("%s", err);
    const char *ptext = "{\"a\": 1, \"b\": {\"c\": \"x\"}, \"n\": null}";
    outboxd_dbz_field_t px = {"payload", ptext, strlen(ptext), 3802};
    outboxd_dbz_field_t env[] = {{"regionName", "eu", 2, 25}, {"flag", "t", 1, 16}};
    outboxd_dbz_field_t ver = {"version", "3", 1, 23};
    assert_int_equal(outboxd_dbz_schema_value(d, "public.outbox", "order", &px, env, 2, &ver, &b,
                                              &tomb, reason, sizeof(reason)),
                     0);
    assert_buf(&b,
               "{\"schema\":{\"type\":\"struct\",\"fields\":[{\"type\":\"struct\",\"fields\":[{"
               "\"type\":\"int32\",\"optional\":true,\"field\":\"a\"},{\"type\":\"struct\","
               "\"fields\":[{\"type\":\"string\",\"optional\":true,\"field\":\"c\"}],\"optional\":"
               "true,\"name\":\"payload.b\",\"field\":\"b\"}],\"optional\":true,\"name\":"
               "\"payload\",\"field\":\"payload\"},{\"type\":\"string\",\"optional\":false,"
               "\"field\":\"regionName\"},{\"type\":\"boolean\",\"optional\":false,\"field\":"
               "\"flag\"}],\"optional\":false,\"name\":\"pfx.public.outbox.order.Value\","
               "\"version\":3},\"payload\":{\"payload\":{\"a\":1,\"b\":{\"c\":\"x\"}},"
               "\"regionName\":\"eu\",\"flag\":true}}");
    /* A top-level array is not expanded here (Debezium's expansion throws). */
    outboxd_dbz_field_t pa = {"payload", "[1, 2]", 6, 3802};
    ver.data = NULL;
    assert_int_equal(outboxd_dbz_schema_value(d, "public.outbox", "customer", &pa, env, 2, &ver, &b,
                                              &tomb, reason, sizeof(reason)),
                     0);
    assert_non_null(strstr((char *)b.data, "\"payload\":{\"payload\":\"[1, 2]\","));
    /* no version column value: a struct without a version */
    assert_non_null(
        strstr((char *)b.data, "\"name\":\"pfx.public.outbox.customer.Value\"},\"payload\":"));
    env[1].data = NULL;
    assert_int_equal(outboxd_dbz_schema_value(d, "public.outbox", "order", &px, env, 2, &ver, &b,
                                              &tomb, reason, sizeof(reason)),
                     1);
    assert_non_null(strstr(reason, "'flag' is NULL but listed"));
    outboxd_dbz_destroy(d);
    /* Without topic.prefix an envelope struct has no name. */
    const char *nopfx[] = {"value.converter", JSONCONV, "table.fields.additional.placement",
                           "region:envelope", NULL};
    assert_null(dbz(nopfx, err));
    assert_non_null(strstr(err, "topic.prefix"));

    /* Other converters ignore the setting; BinaryDataConverter's delegate
     * has its own, and a bytea payload alone is its bytes either way. */
    const char *str[] = {"value.converter", STRCONV, "value.converter.schemas.enable", "TRUE",
                         NULL};
    d = dbz(str, err);
    if (!d)
        fail_msg("%s", err);
    assert_false(d->value_schemas);
    outboxd_dbz_destroy(d);
    const char *bin[] = {"value.converter", "io.debezium.converters.BinaryDataConverter",
                         "value.converter.delegate.converter.type", JSONCONV, NULL};
    d = dbz(bin, err);
    if (!d)
        fail_msg("%s", err);
    assert_true(d->value_schemas);
    outboxd_dbz_field_t pbin = {"payload", "\\x00ff", 6, 17};
    assert_int_equal(outboxd_dbz_schema_value(d, "public.outbox", "order", &pbin, NULL, 0, NULL, &b,
                                              &tomb, reason, sizeof(reason)),
                     0);
    assert_int_equal(b.len, 2);
    assert_memory_equal(b.data, "\x00\xff", 2);
    outboxd_dbz_destroy(d);
    const char *bin_off[] = {"value.converter",
                             "io.debezium.converters.BinaryDataConverter",
                             "value.converter.delegate.converter.type",
                             JSONCONV,
                             "value.converter.delegate.converter.type.schemas.enable",
                             "false",
                             NULL};
    d = dbz(bin_off, err);
    if (!d)
        fail_msg("%s", err);
    assert_false(d->value_schemas);
    outboxd_dbz_destroy(d);
    outboxd_buf_free(&b);
}

static void test_avro_key_and_string_value(void **state)
{
    (void)state;
    char err[512], reason[512];
    const char *kv[] = {"key.converter",
                        AVROCONV,
                        "value.converter",
                        AVROCONV,
                        "value.converter.apicurio.registry.as-confluent",
                        "true",
                        NULL};
    outboxd_dbz_t *d = dbz(kv, err);
    assert_non_null(d);
    assert_true(d->key_avro && d->value_avro);
    outboxd_buf_t schema = {0}, datum = {0};
    outboxd_dbz_field_t key = {"aggregateid", "agg-1", 5, TEXT_OID};
    assert_int_equal(outboxd_dbz_avro_key(d, &key, &schema, &datum, reason, sizeof(reason)), 0);
    assert_buf(&schema, "[\"null\",\"string\"]");
    assert_hex(&datum, "020a6167672d31");
    const char *pl = "{\"orderId\": 2}";
    outboxd_dbz_field_t payload = {"payload", pl, strlen(pl), JSON_OID};
    bool tomb = true;
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "order", &payload, NULL, 0, NULL,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     0);
    assert_false(tomb);
    assert_buf(&schema, "[\"null\",{\"type\":\"string\",\"connect.version\":1,\"connect.name\":"
                        "\"io.debezium.data.Json\"}]");
    assert_hex(&datum, "021c7b226f726465724964223a20327d");
    /* A NULL payload is a null value (the converter writes null). */
    payload.data = NULL;
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "order", &payload, NULL, 0, NULL,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     0);
    assert_true(tomb);
    /* bytea: Connect BYTES, Avro bytes (expansion does not apply). */
    outboxd_dbz_field_t bin = {"payload", "\\x00ff0a", 8, 17};
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "order", &bin, NULL, 0, NULL,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     0);
    assert_false(tomb);
    assert_buf(&schema, "[\"null\",\"bytes\"]");
    assert_hex(&datum, "020600ff0a");
    outboxd_dbz_destroy(d);
    /* A NOT NULL key column: no union. */
    const char *kv2[] = {
        "key.converter", AVROCONV, "value.converter", AVROCONV, "outboxd.columns.not.null",
        "aggregateid",   NULL};
    d = dbz(kv2, err);
    assert_non_null(d);
    assert_int_equal(outboxd_dbz_avro_key(d, &key, &schema, &datum, reason, sizeof(reason)), 0);
    assert_buf(&schema, "\"string\"");
    assert_hex(&datum, "0a6167672d31");
    outboxd_buf_free(&schema);
    outboxd_buf_free(&datum);
    outboxd_dbz_destroy(d);
}

static void test_avro_expanded(void **state)
{
    (void)state;
    char err[512], reason[512];
    const char *kv[] = {"value.converter", AVROCONV, "table.expand.json.payload", "true", NULL};
    outboxd_dbz_t *d = dbz(kv, err);
    assert_non_null(d);
    outboxd_buf_t schema = {0}, datum = {0};
    const char *pl = "{\"big\": 9007199254740993, \"name\": \"k\xc3\xa9\", \"note\": null, "
                     "\"items\": [1, 2, 3], \"price\": 12.5, \"active\": true, \"address\": "
                     "{\"zip\": \"1000\", \"city\": \"Z\xc3\xbcrich\"}, \"orderId\": 1}";
    outboxd_dbz_field_t payload = {"payload", pl, strlen(pl), JSON_OID};
    bool tomb = true;
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "order", &payload, NULL, 0, NULL,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     0);
    assert_buf(
        &schema,
        "{\"type\":\"record\",\"name\":\"payload\",\"fields\":[{\"name\":\"big\",\"type\":["
        "\"null\","
        "\"long\"],\"default\":null},{\"name\":\"name\",\"type\":[\"null\",\"string\"],\"default\":"
        "null},{\"name\":\"items\",\"type\":[\"null\",{\"type\":\"array\",\"items\":[\"null\","
        "\"int\"]}],\"default\":null},{\"name\":\"price\",\"type\":[\"null\",\"double\"],"
        "\"default\":null},{\"name\":\"active\",\"type\":[\"null\",\"boolean\"],\"default\":null},"
        "{\"name\":\"address\",\"type\":[\"null\",{\"type\":\"record\",\"name\":\"address\","
        "\"namespace\":\"payload\",\"fields\":[{\"name\":\"zip\",\"type\":[\"null\",\"string\"],"
        "\"default\":null},{\"name\":\"city\",\"type\":[\"null\",\"string\"],\"default\":null}],"
        "\"connect.name\":\"payload.address\"}],\"default\":null},{\"name\":\"orderId\",\"type\":"
        "[\"null\",\"int\"],\"default\":null}],\"connect.name\":\"payload\"}");
    assert_hex(&datum, "02828080808080802002066bc3a90206020202040206000200000000000029400201020208"
                       "31303030020e5ac3bc726963680202");
    /* Objects of an array whose field is a number in one and a string in
     * another: the merged schema does not fit the value, and the payload
     * stays the Json string (it stopped the stream as out of memory). */
    const char *misfit = "{\"arr\": [{\"a\": 1}, {\"a\": \"x\"}]}";
    outboxd_dbz_field_t pm = {"payload", misfit, strlen(misfit), JSON_OID};
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "order", &pm, NULL, 0, NULL,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     0);
    assert_non_null(strstr((char *)schema.data, "io.debezium.data.Json"));
    /* Debezium's expansion fails on an array mixing types: the payload stays
     * the Json string. */
    const char *mixed = "{\"a\": [1, \"x\"]}";
    payload.data = mixed;
    payload.len = strlen(mixed);
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "order", &payload, NULL, 0, NULL,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     0);
    assert_buf(&schema, "[\"null\",{\"type\":\"string\",\"connect.version\":1,\"connect.name\":"
                        "\"io.debezium.data.Json\"}]");
    /* A field name Avro refuses: Debezium's task would fail; a reason here. */
    const char *bad = "{\"first-name\": \"x\"}";
    payload.data = bad;
    payload.len = strlen(bad);
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "order", &payload, NULL, 0, NULL,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     1);
    assert_non_null(strstr(reason, "first-name"));
    outboxd_buf_free(&schema);
    outboxd_buf_free(&datum);
    outboxd_dbz_destroy(d);
}

static void test_avro_envelope_version(void **state)
{
    (void)state;
    char err[512], reason[512];
    const char *kv[] = {"value.converter",
                        AVROCONV,
                        "table.fields.additional.placement",
                        "region:envelope:regionName,version:envelope",
                        "table.field.event.schema.version",
                        "sv",
                        "topic.prefix",
                        "expc",
                        NULL};
    outboxd_dbz_t *d = dbz(kv, err);
    assert_non_null(d);
    assert_string_equal(d->col_version, "sv");
    outboxd_buf_t schema = {0}, datum = {0};
    outboxd_dbz_field_t payload = {"payload", NULL, 0, JSON_OID};
    outboxd_dbz_field_t env[2] = {{"regionName", "us", 2, TEXT_OID}, {"version", "1", 1, INT4_OID}};
    outboxd_dbz_field_t ver = {"sv", "5", 1, INT4_OID};
    bool tomb = true;
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "order", &payload, env, 2, &ver,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     0);
    assert_false(tomb); /* a null payload inside the envelope */
    const char *want =
        "{\"type\":\"record\",\"name\":\"Value\",\"namespace\":\"expc.public.outbox.order\","
        "\"fields\":[{\"name\":\"payload\",\"type\":[\"null\",{\"type\":\"string\",\"connect."
        "version\":1,\"connect.name\":\"io.debezium.data.Json\"}],\"default\":null},{\"name\":"
        "\"regionName\",\"type\":[\"null\",\"string\"],\"default\":null},{\"name\":\"version\","
        "\"type\":[\"null\",\"int\"],\"default\":null}],\"connect.version\":5,\"connect.name\":"
        "\"expc.public.outbox.order.Value\"}";
    assert_buf(&schema, want);
    assert_hex(&datum, "00020475730202");
    /* The same version on a row routed elsewhere keeps the first name, as
     * Debezium's per-version schema cache does. */
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "customer", &payload, env, 2, &ver,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     0);
    assert_buf(&schema, want);
    /* No version (SQL NULL): no connect.version, a name of its own. */
    ver.data = NULL;
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "customer", &payload, env, 2, &ver,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     0);
    assert_null(strstr(schema.data, "\"connect.version\":5"));
    assert_non_null(strstr(schema.data, "\"connect.name\":\"expc.public.outbox.customer.Value\""));
    /* The version column must be int4. */
    outboxd_dbz_field_t ver8 = {"sv", "5", 1, 20};
    assert_int_equal(outboxd_dbz_avro_value(d, "public.outbox", "order", &payload, env, 2, &ver8,
                                            &schema, &datum, &tomb, reason, sizeof(reason)),
                     1);
    assert_non_null(strstr(reason, "int4"));
    outboxd_buf_free(&schema);
    outboxd_buf_free(&datum);
    outboxd_dbz_destroy(d);
}

static void test_avro_config_errors(void **state)
{
    (void)state;
    char err[512];
    struct {
        const char *k1, *v1, *k2, *v2, *want;
    } cases[] = {
        {"value.converter.apicurio.registry.as-confluent", "false", NULL, NULL, "as-confluent"},
        {"value.converter.apicurio.registry.headers.enabled", "true", NULL, NULL, "headers"},
        {"value.converter.apicurio.registry.use-id", "globalId", NULL, NULL, "contentId"},
        {"value.converter.value.subject.name.strategy",
         "io.confluent.kafka.serializers.subject.RecordNameStrategy", NULL, NULL,
         "TopicNameStrategy"},
        {"table.fields.additional.placement", "region:envelope", NULL, NULL, "topic.prefix"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *kv[] = {"value.converter", AVROCONV, cases[i].k1, cases[i].v1, NULL};
        outboxd_dbz_t *d = dbz(kv, err);
        if (d)
            fail_msg("case %zu accepted", i);
        if (!strstr(err, cases[i].want))
            fail_msg("case %zu: '%s' does not name %s", i, err, cases[i].want);
    }
    const char *ok[] = {"value.converter", "io.confluent.connect.avro.AvroConverter",
                        "value.converter.schema.registry.url", "http://r:8081", NULL};
    outboxd_dbz_t *d = dbz(ok, err);
    assert_non_null(d);
    outboxd_dbz_destroy(d);
}

static void test_router_record(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    assert_int_equal(route(f, &rec, err), OUTBOXD_ROUTE_EVENT);
    assert_string_equal(rec.topic, "dbz.order");
    assert_bytes(rec.key, rec.key_len, "\"order-ké\"");
    assert_bytes(rec.value, rec.value_len,
                 "{\"payload\":{\"name\":\"ké\",\"price\":12.5},\"regionName\":\"eu\"}");
    /* Exactly Debezium's headers: id, then the placements in order. */
    assert_int_equal(rec.n_headers, 3);
    assert_string_equal(rec.headers[0].name, "id");
    assert_bytes(rec.headers[0].value, rec.headers[0].len, "5b1c7c1e-4f0e-4d6b-9a55-000000000001");
    assert_string_equal(rec.headers[1].name, "eventType");
    assert_bytes(rec.headers[1].value, rec.headers[1].len, "OrderCreated");
    assert_string_equal(rec.headers[2].name, "tenant");
    assert_bytes(rec.headers[2].value, rec.headers[2].len, "acme");
    assert_false(rec.has_partition); /* NULL partition column: the partitioner */
    /* timestamp(6) is MicroTimestamp: ms, truncated. */
    assert_int_equal(rec.timestamp_ms, 1795521600123LL);
}

static void test_router_nulls(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    set(f, 2, NULL); /* aggregateid: JsonConverter writes the key bytes null */
    set(f, 4, NULL); /* payload: a tombstone */
    set(f, 6, NULL); /* tenant: a header with a null value */
    set(f, 8, "2");  /* part: the partition */
    assert_int_equal(route(f, &rec, err), OUTBOXD_ROUTE_EVENT);
    assert_bytes(rec.key, rec.key_len, "null");
    assert_null(rec.value);
    assert_int_equal(rec.value_len, 0);
    assert_string_equal(rec.headers[2].name, "tenant");
    assert_null(rec.headers[2].value);
    assert_true(rec.has_partition);
    assert_int_equal(rec.partition, 2);
}

static void test_router_dead_letters(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    set(f, 1, NULL); /* route.by.field NULL */
    assert_int_equal(route(f, &rec, err), OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "route.by.field column 'aggregatetype' is NULL"));
    set(f, 1, "order");
    /* A payload that is not JSON stays the string, as with Debezium
     * (which logs a warning); it was dead-lettered before. */
    set(f, 4, "{not json");
    assert_int_equal(route(f, &rec, err), OUTBOXD_ROUTE_EVENT);
    const char *want = "{\"payload\":\"{not json\",";
    if (rec.value_len < strlen(want) || memcmp(rec.value, want, strlen(want)) != 0)
        fail_msg("value %.*s", (int)rec.value_len, (const char *)rec.value);
    set(f, 4, "{}");
    set(f, 8, "-1");
    assert_int_equal(route(f, &rec, err), OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "partition column 'part'"));
    set(f, 8, NULL);
    set(f, 1, "bad topic!");
    assert_int_equal(route(f, &rec, err), OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "not a valid Kafka topic name"));
}

/* StringConverter for both, custom columns, a placement whose column the
 * table lacks with error.on.missing false, no timestamp column. */
static void test_router_string_converters(void **state)
{
    (void)state;
    const char *conf_text =
        "kafka:\n"
        "  bootstrap_servers: 127.0.0.1:9\n"
        "sources:\n"
        "  - name: shop\n"
        "    dsn: \"dbname=shop\"\n"
        "    tables:\n"
        "      - table: public.outbox\n"
        "        debezium:\n"
        "          key.converter: org.apache.kafka.connect.storage.StringConverter\n"
        "          value.converter: org.apache.kafka.connect.storage.StringConverter\n"
        "          table.field.event.id: tenant\n"
        "          table.field.event.key: region\n"
        "          table.field.event.payload: type\n"
        "          route.by.field: aggregateid\n"
        "          table.fields.additional.error.on.missing: \"false\"\n"
        "          table.fields.additional.placement: \"nope:header,part:header:p\"\n";
    char err[512];
    outboxd_config_t *conf =
        outboxd_config_parse(conf_text, strlen(conf_text), "t.yaml", err, sizeof(err));
    if (!conf)
        fail_msg("config: %s", err);
    /* outboxd check sees the EventRouter's columns. */
    const outboxd_table_conf_t *tc = &conf->sources[0].tables[0];
    assert_string_equal(tc->columns.id, "tenant");
    assert_string_equal(tc->key_column, "region");
    assert_string_equal(tc->columns.payload, "type");
    assert_string_equal(tc->columns.aggregatetype, "aggregateid");
    assert_null(tc->columns.type);
    assert_int_equal(tc->n_header_columns, 0); /* error.on.missing false: not required */
    outboxd_router_t *rt = outboxd_router_new(conf, &conf->sources[0], "db", err, sizeof(err));
    if (!rt)
        fail_msg("router: %s", err);
    outboxd_pgo_datum_t vals[NCOLS];
    const char *v[] = {"x", "order", "agg1", NULL, "{}", "2026-01-01 00:00:00", "t-1", NULL, "7"};
    for (int i = 0; i < NCOLS; i++) {
        vals[i].kind = v[i] ? 't' : 'n';
        vals[i].data = v[i];
        vals[i].len = v[i] ? (uint32_t)strlen(v[i]) : 0;
    }
    outboxd_pgo_relation_t rel = {16384, "public", "outbox", 'd', NCOLS, COLS};
    outboxd_pgo_msg_t m;
    memset(&m, 0, sizeof(m));
    m.kind = OUTBOXD_PGO_INSERT;
    m.u.change.rel = &rel;
    m.u.change.new_tuple.ncols = NCOLS;
    m.u.change.new_tuple.cols = vals;
    outboxd_record_t rec;
    assert_int_equal(outboxd_router_route(rt, &m, &CTX, &rec, err, sizeof(err)),
                     OUTBOXD_ROUTE_EVENT);
    assert_string_equal(rec.topic, "outbox.event.agg1");
    assert_null(rec.key);   /* NULL key with StringConverter: no key */
    assert_null(rec.value); /* NULL payload with StringConverter: a null value */
    assert_int_equal(rec.timestamp_ms, 0);
    assert_int_equal(rec.n_headers, 2);
    assert_string_equal(rec.headers[0].name, "id");
    assert_bytes(rec.headers[0].value, rec.headers[0].len, "t-1");
    assert_string_equal(rec.headers[1].name, "p");
    assert_bytes(rec.headers[1].value, rec.headers[1].len, "7");
    vals[3].kind = 't';
    vals[3].data = "{\"a\": [1, 2]}";
    vals[3].len = (uint32_t)strlen(vals[3].data);
    assert_int_equal(outboxd_router_route(rt, &m, &CTX, &rec, err, sizeof(err)),
                     OUTBOXD_ROUTE_EVENT);
    assert_bytes(rec.value, rec.value_len, "{\"a\": [1, 2]}"); /* the text as is */
    outboxd_router_destroy(rt);
    outboxd_config_destroy(conf);
}

static void test_config_block_errors(void **state)
{
    (void)state;
    char err[512];
    const char *bad = "kafka:\n"
                      "  bootstrap_servers: 127.0.0.1:9\n"
                      "sources:\n"
                      "  - name: shop\n"
                      "    dsn: \"dbname=shop\"\n"
                      "    tables:\n"
                      "      - table: public.outbox\n"
                      "        debezium:\n"
                      "          value.converter: org.apache.kafka.connect.json.JsonConverter\n"
                      "          transforms.outbox.table.field.event.payload.id: x\n";
    outboxd_config_t *c = outboxd_config_parse(bad, strlen(bad), "t.yaml", err, sizeof(err));
    assert_null(c);
    assert_non_null(strstr(err, "t.yaml:8: sources[0].tables[0].debezium"));
    assert_non_null(strstr(err, "transforms.outbox.table.field.event.payload.id"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topic_default),
        cmocka_unit_test(test_topic_regex_groups),
        cmocka_unit_test(test_topic_regex_classes),
        cmocka_unit_test(test_placements),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_key_converters),
        cmocka_unit_test(test_expand_json),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_bytea),
        cmocka_unit_test(test_json_schemas),
        cmocka_unit_test(test_avro_key_and_string_value),
        cmocka_unit_test(test_avro_expanded),
        cmocka_unit_test(test_avro_envelope_version),
        cmocka_unit_test(test_avro_config_errors),
        cmocka_unit_test_setup_teardown(test_router_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_router_nulls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_router_dead_letters, setup, teardown),
        cmocka_unit_test(test_router_string_converters),
        cmocka_unit_test(test_config_block_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

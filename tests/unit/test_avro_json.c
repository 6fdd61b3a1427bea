/*
 * JSON -> Avro binary (avro_json.c): every Avro type and logical type, exact
 * bytes where the spec fixes them, round trips through avro-c's reader as an
 * independent decoder, and every error path with the field path it names.
 * Also the Confluent wire format, subject strategies and the encoder's
 * envelope (byte-identical to avro.c's) and typed values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <avro.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/avro_json.h"
#include "outboxd/common/registry.h"
#include "outboxd/relay/config.h"
#include "outboxd/relay/encoder.h"

static outboxd_avsc_t *parse(const char *text)
{
    char err[512];
    outboxd_avsc_t *sc = outboxd_avsc_parse(text, strlen(text), err, sizeof(err));
    if (!sc)
        fail_msg("schema %s: %s", text, err);
    return sc;
}

/* Encodes json under schema; returns the bytes as a hex string. */
static char *hex_of(const char *schema, const char *json)
{
    outboxd_avsc_t *sc = parse(schema);
    json_error_t jerr;
    json_t *v = json_loads(json, JSON_DECODE_ANY, &jerr);
    assert_non_null(v);
    outboxd_buf_t out = {0};
    char err[512];
    int rc = outboxd_avsc_encode(sc, v, "payload", &out, err, sizeof(err));
    if (rc != 0)
        fail_msg("encode %s under %s: %s", json, schema, err);
    char *hex = calloc(out.len * 2 + 1, 1);
    for (size_t i = 0; i < out.len; i++)
        sprintf(hex + 2 * i, "%02x", (unsigned char)out.data[i]);
    outboxd_buf_free(&out);
    json_decref(v);
    outboxd_avsc_destroy(sc);
    return hex;
}

#define ASSERT_HEX(schema, json, expect)                                                           \
    do {                                                                                           \
        char *h_ = hex_of(schema, json);                                                           \
        if (strcmp(h_, expect) != 0)                                                               \
            fail_msg("%s under %s: got %s, expected %s", json, schema, h_, expect);                \
        free(h_);                                                                                  \
    } while (0)

/* Exact encodings from the Avro specification and by hand. */
static void test_primitive_bytes(void **state)
{
    (void)state;
    ASSERT_HEX("\"null\"", "null", "");
    ASSERT_HEX("\"boolean\"", "true", "01");
    ASSERT_HEX("\"boolean\"", "false", "00");
    /* zig-zag: 0->00, -1->01, 1->02, -2->03, 2->04, -64->7f, 64->8001 */
    ASSERT_HEX("\"int\"", "0", "00");
    ASSERT_HEX("\"int\"", "-1", "01");
    ASSERT_HEX("\"int\"", "1", "02");
    ASSERT_HEX("\"int\"", "-64", "7f");
    ASSERT_HEX("\"int\"", "64", "8001");
    ASSERT_HEX("\"int\"", "2147483647", "feffffff0f");
    ASSERT_HEX("\"int\"", "-2147483648", "ffffffff0f");
    ASSERT_HEX("\"int\"", "3.0", "06"); /* integral real */
    ASSERT_HEX("\"long\"", "9223372036854775807", "feffffffffffffffff01");
    ASSERT_HEX("\"long\"", "-9223372036854775808", "ffffffffffffffffff01");
    ASSERT_HEX("\"float\"", "1.5", "0000c03f");
    ASSERT_HEX("\"double\"", "1.5", "000000000000f83f");
    ASSERT_HEX("\"double\"", "\"-Infinity\"", "000000000000f0ff");
    ASSERT_HEX("\"string\"", "\"foo\"", "06666f6f");
    ASSERT_HEX("\"string\"", "\"\xed\x95\x9c\"", "06ed959c"); /* non-ASCII stays UTF-8 */
    ASSERT_HEX("\"bytes\"", "\"AAH/\"", "060001ff");          /* base64 */
    ASSERT_HEX("\"bytes\"", "\"\"", "00");
    ASSERT_HEX("{\"type\":\"fixed\",\"name\":\"F\",\"size\":2}", "\"q80=\"", "abcd");
    ASSERT_HEX("{\"type\":\"enum\",\"name\":\"E\",\"symbols\":[\"A\",\"B\",\"C\"]}", "\"C\"", "04");
    /* arrays and maps: one block with its count, then the 0 end marker */
    ASSERT_HEX("{\"type\":\"array\",\"items\":\"long\"}", "[3, 27]", "04063600");
    ASSERT_HEX("{\"type\":\"array\",\"items\":\"long\"}", "[]", "00");
    ASSERT_HEX("{\"type\":\"map\",\"values\":\"int\"}", "{\"a\": 1}", "0202610200");
    ASSERT_HEX("[\"null\",\"string\"]", "null", "00");
    ASSERT_HEX("[\"null\",\"string\"]", "\"a\"", "020261");
    ASSERT_HEX("[\"null\",\"long\",\"string\"]", "\"a\"", "040261");
    ASSERT_HEX("{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"long\"},"
               "{\"name\":\"b\",\"type\":\"string\"}]}",
               "{\"b\": \"foo\", \"a\": 27}", "3606666f6f");
}

static void test_logical_bytes(void **state)
{
    (void)state;
    const char *dec =
        "{\"type\":\"bytes\",\"logicalType\":\"decimal\",\"precision\":10,\"scale\":2}";
    ASSERT_HEX(dec, "\"12.34\"", "0404d2"); /* 1234 = 0x04d2 */
    ASSERT_HEX(dec, "\"-1\"", "029c");      /* -100 = 0x9c */
    ASSERT_HEX(dec, "\"0\"", "0200");
    ASSERT_HEX(dec, "\"1.28\"", "040080");   /* 128 needs a sign byte */
    ASSERT_HEX(dec, "\"-1.28\"", "0280");    /* -128 does not */
    ASSERT_HEX(dec, "\"-2.56\"", "04ff00");  /* -256 */
    ASSERT_HEX(dec, "19.99", "0407cf");      /* a JSON number: 1999 */
    ASSERT_HEX(dec, "7", "0402bc");          /* 700 */
    ASSERT_HEX(dec, "\"1.5e1\"", "0405dc");  /* 1500 */
    ASSERT_HEX(dec, "\"12.300\"", "0404ce"); /* trailing zeros beyond the scale are fine */
    const char *fdec = "{\"type\":\"fixed\",\"name\":\"D\",\"size\":4,\"logicalType\":\"decimal\","
                       "\"precision\":9,\"scale\":0}";
    ASSERT_HEX(fdec, "\"-1\"", "ffffffff"); /* sign-extended to the size */
    ASSERT_HEX(fdec, "\"258\"", "00000102");
    const char *big =
        "{\"type\":\"bytes\",\"logicalType\":\"decimal\",\"precision\":38,\"scale\":0}";
    /* 10^37 = 0x0785ee10d5da46d900f436a000000000 */
    ASSERT_HEX(big, "\"10000000000000000000000000000000000000\"",
               "200785ee10d5da46d900f436a000000000");
    ASSERT_HEX("{\"type\":\"string\",\"logicalType\":\"uuid\"}",
               "\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\"",
               "4830613162326333642d346535662d363037312d383239332d613462356336643765386639");
    ASSERT_HEX("{\"type\":\"int\",\"logicalType\":\"date\"}", "\"1970-01-02\"", "02");
    ASSERT_HEX("{\"type\":\"int\",\"logicalType\":\"date\"}", "\"1969-12-31\"", "01");
    ASSERT_HEX("{\"type\":\"int\",\"logicalType\":\"date\"}", "\"2000-03-01\"",
               "92ac01"); /* 11017 */
    ASSERT_HEX("{\"type\":\"int\",\"logicalType\":\"date\"}", "19000", "f0a802");
    ASSERT_HEX("{\"type\":\"int\",\"logicalType\":\"time-millis\"}", "\"00:00:01.5\"", "b817");
    ASSERT_HEX("{\"type\":\"long\",\"logicalType\":\"time-micros\"}", "\"00:00:00.000001\"", "02");
    ASSERT_HEX("{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}",
               "\"1970-01-01T00:00:01Z\"", "d00f");
    ASSERT_HEX("{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}",
               "\"1970-01-01T02:00:01+02:00\"", "d00f");
    ASSERT_HEX("{\"type\":\"long\",\"logicalType\":\"timestamp-micros\"}",
               "\"1969-12-31T23:59:59.999999Z\"", "01");
    ASSERT_HEX("{\"type\":\"long\",\"logicalType\":\"timestamp-micros\"}", "-1", "01");
    ASSERT_HEX("{\"type\":\"long\",\"logicalType\":\"local-timestamp-micros\"}",
               "\"1970-01-01 00:00:00.000002\"", "04");
}

/* One schema with every type, read back with avro-c. */
static const char *all_schema =
    "{\"type\":\"record\",\"name\":\"All\",\"namespace\":\"t\",\"fields\":["
    "{\"name\":\"n\",\"type\":\"null\"},"
    "{\"name\":\"b\",\"type\":\"boolean\"},"
    "{\"name\":\"i\",\"type\":\"int\"},"
    "{\"name\":\"l\",\"type\":\"long\"},"
    "{\"name\":\"f\",\"type\":\"float\"},"
    "{\"name\":\"d\",\"type\":\"double\"},"
    "{\"name\":\"by\",\"type\":\"bytes\"},"
    "{\"name\":\"s\",\"type\":\"string\"},"
    "{\"name\":\"e\",\"type\":{\"type\":\"enum\",\"name\":\"Color\",\"symbols\":[\"RED\",\"GREEN\"]"
    "}},"
    "{\"name\":\"fx\",\"type\":{\"type\":\"fixed\",\"name\":\"Four\",\"size\":4}},"
    "{\"name\":\"a\",\"type\":{\"type\":\"array\",\"items\":{\"type\":\"record\",\"name\":\"Item\","
    "\"fields\":[{\"name\":\"sku\",\"type\":\"string\"},{\"name\":\"price\",\"type\":{\"type\":"
    "\"bytes\",\"logicalType\":\"decimal\",\"precision\":10,\"scale\":2}}]}}},"
    "{\"name\":\"m\",\"type\":{\"type\":\"map\",\"values\":\"long\"}},"
    "{\"name\":\"u\",\"type\":[\"null\",\"string\"]},"
    "{\"name\":\"u2\",\"type\":[\"null\",\"Item\"],\"default\":null},"
    "{\"name\":\"def\",\"type\":\"string\",\"default\":\"dflt\"},"
    "{\"name\":\"id\",\"type\":{\"type\":\"string\",\"logicalType\":\"uuid\"}},"
    "{\"name\":\"dt\",\"type\":{\"type\":\"int\",\"logicalType\":\"date\"}},"
    "{\"name\":\"tm\",\"type\":{\"type\":\"int\",\"logicalType\":\"time-millis\"}},"
    "{\"name\":\"tu\",\"type\":{\"type\":\"long\",\"logicalType\":\"time-micros\"}},"
    "{\"name\":\"tsm\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-millis\"}},"
    "{\"name\":\"tsu\",\"type\":{\"type\":\"long\",\"logicalType\":\"timestamp-micros\"}},"
    "{\"name\":\"fd\",\"type\":{\"type\":\"fixed\",\"name\":\"Money\",\"size\":8,"
    "\"logicalType\":\"decimal\",\"precision\":18,\"scale\":4}}"
    "]}";

static const char *all_value =
    "{\"n\":null,\"b\":true,\"i\":-2147483648,\"l\":9223372036854775807,\"f\":3.5,"
    "\"d\":-1.7976931348623157e308,\"by\":\"AP8=\",\"s\":\"caf\xc3\xa9 \xed\x95\x9c\xea\xb8\x80 "
    "\xf0\x9f\x98\x80\",\"e\":\"GREEN\",\"fx\":\"AQIDBA==\","
    "\"a\":[{\"sku\":\"x\",\"price\":\"1.50\"},{\"sku\":\"y\",\"price\":\"-99999999.99\"}],"
    "\"m\":{\"k\":-1},\"u\":\"here\",\"id\":\"0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9\","
    "\"dt\":\"2026-12-01\",\"tm\":\"23:59:59.999\",\"tu\":\"12:00:00.000001\","
    "\"tsm\":\"2026-12-01T10:00:00.123Z\",\"tsu\":\"2026-12-01T10:00:00.123456+00:00\","
    "\"fd\":\"-12345678901234.5678\"}";

static void test_round_trip_avro_c(void **state)
{
    (void)state;
    outboxd_avsc_t *sc = parse(all_schema);
    json_t *v = json_loads(all_value, 0, NULL);
    assert_non_null(v);
    outboxd_buf_t out = {0};
    char err[512];
    int rc = outboxd_avsc_encode(sc, v, "payload", &out, err, sizeof(err));
    if (rc)
        fail_msg("%s", err);
    assert_string_equal(outboxd_avsc_fullname(sc), "t.All");

    avro_schema_t as;
    assert_int_equal(avro_schema_from_json_length(all_schema, strlen(all_schema), &as), 0);
    avro_value_iface_t *iface = avro_generic_class_from_schema(as);
    avro_value_t val;
    assert_int_equal(avro_generic_value_new(iface, &val), 0);
    avro_reader_t rd = avro_reader_memory(out.data, (int64_t)out.len);
    if (avro_value_read(rd, &val) != 0)
        fail_msg("avro-c cannot read the datum: %s", avro_strerror());
    /* the datum is exactly what avro-c would write for that value */
    size_t vsize = 0;
    assert_int_equal(avro_value_sizeof(&val, &vsize), 0);
    assert_int_equal(vsize, out.len);

    avro_value_t f, g;
    int32_t i32;
    int64_t i64;
    const char *s;
    size_t sz;
    const void *bytes;
    assert_int_equal(avro_value_get_by_name(&val, "i", &f, NULL), 0);
    avro_value_get_int(&f, &i32);
    assert_int_equal(i32, INT32_MIN);
    avro_value_get_by_name(&val, "l", &f, NULL);
    avro_value_get_long(&f, &i64);
    assert_true(i64 == INT64_MAX);
    avro_value_get_by_name(&val, "d", &f, NULL);
    double d;
    avro_value_get_double(&f, &d);
    assert_true(d == -1.7976931348623157e308);
    avro_value_get_by_name(&val, "by", &f, NULL);
    avro_value_get_bytes(&f, &bytes, &sz);
    assert_int_equal(sz, 2);
    assert_memory_equal(bytes, "\x00\xff", 2);
    avro_value_get_by_name(&val, "s", &f, NULL);
    avro_value_get_string(&f, &s, &sz);
    assert_string_equal(s, "caf\xc3\xa9 \xed\x95\x9c\xea\xb8\x80 \xf0\x9f\x98\x80");
    avro_value_get_by_name(&val, "e", &f, NULL);
    int e;
    avro_value_get_enum(&f, &e);
    assert_int_equal(e, 1);
    avro_value_get_by_name(&val, "a", &f, NULL);
    avro_value_get_size(&f, &sz);
    assert_int_equal(sz, 2);
    avro_value_get_by_index(&f, 1, &g, NULL);
    avro_value_t price;
    avro_value_get_by_name(&g, "price", &price, NULL);
    avro_value_get_bytes(&price, &bytes, &sz);
    /* -9999999999 = 0xfdabf41c01 */
    assert_int_equal(sz, 5);
    assert_memory_equal(bytes, "\xfd\xab\xf4\x1c\x01", 5);
    avro_value_get_by_name(&val, "u2", &f, NULL);
    int disc;
    avro_value_get_discriminant(&f, &disc);
    assert_int_equal(disc, 0); /* left out, default null */
    avro_value_get_by_name(&val, "def", &f, NULL);
    avro_value_get_string(&f, &s, &sz);
    assert_string_equal(s, "dflt");
    avro_value_get_by_name(&val, "dt", &f, NULL);
    avro_value_get_int(&f, &i32);
    assert_int_equal(i32, 20788); /* 2026-12-01 */
    avro_value_get_by_name(&val, "tm", &f, NULL);
    avro_value_get_int(&f, &i32);
    assert_int_equal(i32, 86399999);
    avro_value_get_by_name(&val, "tsm", &f, NULL);
    avro_value_get_long(&f, &i64);
    assert_true(i64 == 1796119200123LL);
    avro_value_get_by_name(&val, "tsu", &f, NULL);
    avro_value_get_long(&f, &i64);
    assert_true(i64 == 1796119200123456LL);
    avro_value_get_by_name(&val, "fd", &f, NULL);
    avro_value_get_fixed(&f, &bytes, &sz);
    assert_int_equal(sz, 8);
    /* -123456789012345678 = 0xfe4964b459cf0cb2 */
    assert_memory_equal(bytes, "\xfe\x49\x64\xb4\x59\xcf\x0c\xb2", 8);

    avro_reader_free(rd);
    avro_value_decref(&val);
    avro_value_iface_decref(iface);
    avro_schema_decref(as);
    json_decref(v);
    outboxd_buf_free(&out);
    outboxd_avsc_destroy(sc);
}

typedef struct bad {
    const char *json;
    const char *reason; /* exact message */
} bad_t;

/* Each bad value and the exact reason, with the field path. */
static const bad_t bads[] = {
    {"{\"items\":[{\"price\":\"1\"},{\"price\":\"2\"},{\"price\":\"abc\"}]}",
     "payload.items[2].price: expected decimal(10,2), got \"abc\" (not a number)"},
    {"{\"items\":[{\"price\":\"1.234\"}]}",
     "payload.items[0].price: expected decimal(10,2), got \"1.234\" (more than 2 digits after the "
     "point)"},
    {"{\"items\":[{\"price\":\"123456789.00\"}]}",
     "payload.items[0].price: expected decimal(10,2), got \"123456789.00\" (more than 10 digits)"},
    {"{\"items\":[{\"price\":12345678901234567.5}]}",
     "payload.items[0].price: expected decimal(10,2), got 12345678901234568.0 (a JSON number "
     "with more than 15 significant digits has lost precision already; send the decimal as a "
     "string)"},
    {"{\"items\":[], \"qty\":\"3\"}", "payload.qty: expected int, got \"3\""},
    {"{\"items\":[], \"qty\":2147483648}",
     "payload.qty: expected int, got 2147483648 (out of range)"},
    {"{\"items\":[], \"qty\":1.5}", "payload.qty: expected int, got 1.5 (not an integer)"},
    {"{\"items\":[], \"extra\":1}", "payload.extra: not a field of record Order"},
    {"{}", "payload.items: required field (array) is missing"},
    {"[]", "payload: expected record Order, got an array"},
    {"{\"items\":{}}", "payload.items: expected array, got an object"},
    {"{\"items\":[], \"status\":\"LOST\"}",
     "payload.status: expected enum Status, got \"LOST\" (symbols: NEW, PAID)"},
    {"{\"items\":[], \"id\":\"not-a-uuid\"}",
     "payload.id: expected uuid, got \"not-a-uuid\" (use 8-4-4-4-12 hex digits)"},
    {"{\"items\":[], \"day\":\"2026-02-30\"}",
     "payload.day: expected date, got \"2026-02-30\" (use YYYY-MM-DD)"},
    {"{\"items\":[], \"at\":\"yesterday\"}",
     "payload.at: expected timestamp-micros, got \"yesterday\" (use RFC 3339, e.g. "
     "2026-12-01T10:00:00Z)"},
    {"{\"items\":[], \"at\":\"2026-12-01T10:00:00+25:00\"}",
     "payload.at: expected timestamp-micros, got \"2026-12-01T10:00:00+25:00\" (bad zone)"},
    {"{\"items\":[], \"t\":\"24:00:00\"}",
     "payload.t: expected time-millis, got \"24:00:00\" (use HH:MM:SS[.ffffff])"},
    {"{\"items\":[], \"t\":\"10:00:00.0005\"}",
     "payload.t: expected time-millis, got \"10:00:00.0005\" (more precision than the type holds)"},
    {"{\"items\":[], \"hash\":\"AAA=\"}",
     "payload.hash: expected fixed Hash (4 bytes), got \"AAA=\" (2 bytes)"},
    {"{\"items\":[], \"blob\":\"***\"}", "payload.blob: expected bytes, got \"***\" (not base64)"},
    {"{\"items\":[], \"note\":5}", "payload.note: expected string, got 5"},
    {"{\"items\":[], \"tags\":{\"a\":\"x\"}}", "payload.tags.a: expected long, got \"x\""},
    {"{\"items\":[], \"ok\":\"yes\"}", "payload.ok: expected boolean, got \"yes\""},
    {"{\"items\":[], \"ratio\":1e39}",
     "payload.ratio: expected float, got 9.9999999999999994e38 (out of range)"},
    {"{\"items\":[], \"alt\":true}", "payload.alt: expected one of [null, long, string], got true"},
    {"{\"items\":[{\"price\":null}]}", "payload.items[0].price: expected decimal(10,2), got null"},
};

static const char *order_schema =
    "{\"type\":\"record\",\"name\":\"Order\",\"fields\":["
    "{\"name\":\"items\",\"type\":{\"type\":\"array\",\"items\":{\"type\":\"record\",\"name\":"
    "\"Line\",\"fields\":[{\"name\":\"price\",\"type\":{\"type\":\"bytes\",\"logicalType\":"
    "\"decimal\",\"precision\":10,\"scale\":2}}]}}},"
    "{\"name\":\"qty\",\"type\":\"int\",\"default\":1},"
    "{\"name\":\"status\",\"type\":{\"type\":\"enum\",\"name\":\"Status\",\"symbols\":[\"NEW\","
    "\"PAID\"]},\"default\":\"NEW\"},"
    "{\"name\":\"id\",\"type\":[\"null\",{\"type\":\"string\",\"logicalType\":\"uuid\"}]},"
    "{\"name\":\"day\",\"type\":[\"null\",{\"type\":\"int\",\"logicalType\":\"date\"}]},"
    "{\"name\":\"at\",\"type\":[\"null\",{\"type\":\"long\",\"logicalType\":\"timestamp-micros\"}]}"
    ","
    "{\"name\":\"t\",\"type\":[\"null\",{\"type\":\"int\",\"logicalType\":\"time-millis\"}]},"
    "{\"name\":\"hash\",\"type\":[\"null\",{\"type\":\"fixed\",\"name\":\"Hash\",\"size\":4}]},"
    "{\"name\":\"blob\",\"type\":[\"null\",\"bytes\"]},"
    "{\"name\":\"note\",\"type\":[\"null\",\"string\"]},"
    "{\"name\":\"tags\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"long\"}]},"
    "{\"name\":\"ok\",\"type\":[\"null\",\"boolean\"]},"
    "{\"name\":\"ratio\",\"type\":[\"null\",\"float\"]},"
    "{\"name\":\"alt\",\"type\":[\"null\",\"long\",\"string\"]}"
    "]}";

static void test_errors_name_the_path(void **state)
{
    (void)state;
    outboxd_avsc_t *sc = parse(order_schema);
    for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
        json_t *v = json_loads(bads[i].json, JSON_DECODE_ANY, NULL);
        if (!v)
            fail_msg("bad JSON in the test: %s", bads[i].json);
        outboxd_buf_t out = {0};
        outboxd_buf_append_str(&out, "keep");
        char err[512] = "";
        int rc = outboxd_avsc_encode(sc, v, "payload", &out, err, sizeof(err));
        if (rc != 1 || strcmp(err, bads[i].reason) != 0)
            fail_msg("case %zu %s: rc %d, reason\n  got:      %s\n  expected: %s", i, bads[i].json,
                     rc, err, bads[i].reason);
        /* a failed encode leaves the buffer as it was */
        assert_int_equal(out.len, 4);
        assert_string_equal(out.data, "keep");
        outboxd_buf_free(&out);
        json_decref(v);
    }
    /* and a good one under the same schema */
    json_t *v = json_loads("{\"items\":[{\"price\":\"0.01\"}],\"alt\":\"s\",\"tags\":{}}", 0, NULL);
    outboxd_buf_t out = {0};
    char err[256];
    assert_int_equal(outboxd_avsc_encode(sc, v, "payload", &out, err, sizeof(err)), 0);
    outboxd_buf_free(&out);
    json_decref(v);
    outboxd_avsc_destroy(sc);
}

static void test_bad_schemas(void **state)
{
    (void)state;
    struct {
        const char *schema, *err;
    } cases[] = {
        {"{", "not valid JSON"},
        {"{\"type\":\"record\",\"name\":\"R\",\"fields\":[{\"name\":\"a\",\"type\":\"Nope\"}]}",
         "not a valid Avro schema"},
        {"{\"type\":\"bytes\",\"logicalType\":\"decimal\",\"precision\":2,\"scale\":3}",
         "decimal needs an integer precision >= 1 and 0 <= scale <= precision"},
        {"{\"type\":\"fixed\",\"name\":\"F\",\"size\":2,\"logicalType\":\"decimal\","
         "\"precision\":9}",
         "does not fit a fixed of 2 bytes (at most 4)"},
        {"{\"type\":\"string\",\"logicalType\":\"date\"}", "logicalType date needs type int"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[512] = "";
        outboxd_avsc_t *sc =
            outboxd_avsc_parse(cases[i].schema, strlen(cases[i].schema), err, sizeof(err));
        if (sc || !strstr(err, cases[i].err))
            fail_msg("schema %s: expected an error with '%s', got '%s'", cases[i].schema,
                     cases[i].err, err);
    }
    /* unknown logical types are read as their underlying type (spec) */
    outboxd_avsc_t *sc = parse("{\"type\":\"long\",\"logicalType\":\"my-own\"}");
    outboxd_avsc_destroy(sc);
}

static void test_wire_format_and_subjects(void **state)
{
    (void)state;
    unsigned char h[OUTBOXD_WIRE_HEADER_LEN];
    outboxd_registry_wire_header(0x01020304, h);
    assert_memory_equal(h, "\x00\x01\x02\x03\x04", 5);
    int32_t id = 0;
    assert_true(outboxd_registry_wire_parse(h, 5, &id));
    assert_int_equal(id, 0x01020304);
    outboxd_registry_wire_header(7, h);
    assert_memory_equal(h, "\x00\x00\x00\x00\x07", 5);
    assert_false(outboxd_registry_wire_parse(h, 4, &id));
    h[0] = 1;
    assert_false(outboxd_registry_wire_parse(h, 5, &id));

    outboxd_buf_t b = {0};
    assert_true(outboxd_registry_subject(OUTBOXD_SUBJECT_TOPIC_NAME, "orders", "a.B", &b));
    assert_string_equal(b.data, "orders-value");
    outboxd_buf_reset(&b);
    assert_true(outboxd_registry_subject(OUTBOXD_SUBJECT_RECORD_NAME, "orders", "a.B", &b));
    assert_string_equal(b.data, "a.B");
    outboxd_buf_reset(&b);
    assert_true(outboxd_registry_subject(OUTBOXD_SUBJECT_TOPIC_RECORD_NAME, "orders", "a.B", &b));
    assert_string_equal(b.data, "orders-a.B");
    outboxd_buf_reset(&b);
    assert_false(outboxd_registry_subject(OUTBOXD_SUBJECT_RECORD_NAME, "orders", NULL, &b));
    outboxd_buf_free(&b);

    outboxd_subject_strategy_t st;
    assert_true(outboxd_registry_parse_strategy("record-name", &st));
    assert_int_equal(st, OUTBOXD_SUBJECT_RECORD_NAME);
    assert_true(outboxd_registry_parse_strategy(
        "io.confluent.kafka.serializers.subject.TopicRecordNameStrategy", &st));
    assert_int_equal(st, OUTBOXD_SUBJECT_TOPIC_RECORD_NAME);
    assert_false(outboxd_registry_parse_strategy("topic", &st));
}

/* A registry that is not there: RETRY with the URL in the message, and no
 * id made up. */
static void test_registry_unreachable(void **state)
{
    (void)state;
    outboxd_registry_conf_t rc = {
        .url = "http://127.0.0.1:1/", .timeout_ms = 2000, .auto_register = true};
    char err[512];
    outboxd_registry_t *reg = outboxd_registry_new(&rc, err, sizeof(err));
    assert_non_null(reg);
    int32_t id = -7;
    assert_int_equal(outboxd_registry_id(reg, "s-value", "\"string\"", &id, err, sizeof(err)),
                     OUTBOXD_REGISTRY_RETRY);
    assert_int_equal(id, -7);
    assert_non_null(strstr(err, "http://127.0.0.1:1 unreachable (subject s-value)"));
    assert_int_equal(outboxd_registry_requests(reg), 1);
    outboxd_registry_destroy(reg);
}

/* ---- encoder ---- */

static outboxd_config_t *config_with(const char *extra_relay)
{
    char yaml[2048], err[512];
    snprintf(yaml, sizeof(yaml),
             "kafka: {bootstrap_servers: 127.0.0.1:9}\n"
             "relay:\n  dead_letter_topic: dlt\n%s"
             "sources:\n  - name: s\n    dsn: \"host=x\"\n    tables:\n      - table: outbox\n",
             extra_relay);
    outboxd_config_t *conf =
        outboxd_config_parse(yaml, strlen(yaml), "/tmp/x/outboxd.yaml", err, sizeof(err));
    if (!conf)
        fail_msg("config: %s", err);
    return conf;
}

static outboxd_envelope_t sample_event(const char *type, const char *payload)
{
    outboxd_envelope_t ev = {
        .id = {"id-1", 4},
        .type = {type, strlen(type)},
        .aggregate_type = {"order", 5},
        .aggregate_id = {"o-1", 3},
        .payload = {payload, strlen(payload)},
        .occurred_at_us = 1764583200123456LL,
        .source_name = {"s", 1},
        .database = {"db", 2},
        .table = {"public.outbox", 13},
        .lsn = 0x16B374D848ULL,
        .commit_lsn = 0x16B374D900ULL,
        .xid = 4242,
        .commit_time_us = 1764583200000000LL,
    };
    return ev;
}

/* The untyped envelope is byte for byte what avro.c wrote before. */
static void test_encoder_envelope_matches_avro_c(void **state)
{
    (void)state;
    outboxd_config_t *conf = config_with("");
    char err[512], reason[512];
    outboxd_encoder_t *enc = outboxd_encoder_new(conf, err, sizeof(err));
    if (!enc)
        fail_msg("%s", err);
    outboxd_avro_t *av = outboxd_avro_new(err, sizeof(err));
    assert_non_null(av);
    const char *payloads[] = {"{\"a\":1}", "", "{\"k\":\"\xed\x95\x9c\"}"};
    for (size_t i = 0; i < 3; i++) {
        outboxd_envelope_t ev = sample_event("T", payloads[i]);
        outboxd_buf_t a = {0}, b = {0};
        assert_int_equal(outboxd_avro_encode(av, &ev, &a, err, sizeof(err)), 0);
        assert_int_equal(outboxd_encoder_event(enc, &ev, OUTBOXD_VALUE_ENVELOPE, "t", &b, reason,
                                               sizeof(reason), err, sizeof(err)),
                         0);
        assert_int_equal(a.len, b.len);
        assert_memory_equal(a.data, b.data, a.len);
        outboxd_buf_free(&a);
        outboxd_buf_free(&b);
    }
    outboxd_avro_destroy(av);
    outboxd_encoder_destroy(enc);
    outboxd_config_destroy(conf);
}

static void test_encoder_typed(void **state)
{
    (void)state;
    char dir[] = "/tmp/outboxd-test-schemas.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[300], store[300];
    snprintf(path, sizeof(path), "%s/OrderPlaced.avsc", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"type\":\"record\",\"name\":\"OrderPlaced\",\"namespace\":\"shop\",\"fields\":["
          "{\"name\":\"n\",\"type\":\"long\"}]}",
          f);
    fclose(f);
    snprintf(store, sizeof(store), "%s/store", dir);
    char relay[700];
    snprintf(relay, sizeof(relay), "  schemas_dir: %s\n  schema_store_dir: %s\n", dir, store);
    outboxd_config_t *conf = config_with(relay);
    char err[512], reason[512];
    outboxd_encoder_t *enc = outboxd_encoder_new(conf, err, sizeof(err));
    if (!enc)
        fail_msg("%s", err);
    assert_int_equal(outboxd_encoder_n_types(enc), 1);
    const char *env = outboxd_encoder_type_schema(enc, "OrderPlaced", OUTBOXD_VALUE_ENVELOPE);
    assert_non_null(env);
    assert_non_null(strstr(env, "\"name\":\"OrderPlacedEnvelope\""));
    assert_null(outboxd_encoder_type_schema(enc, "Other", OUTBOXD_VALUE_ENVELOPE));

    /* payload alone: single-object header with the .avsc's fingerprint */
    outboxd_envelope_t ev = sample_event("OrderPlaced", "{\"n\": -2}");
    outboxd_buf_t b = {0};
    assert_int_equal(outboxd_encoder_event(enc, &ev, OUTBOXD_VALUE_PAYLOAD, "t", &b, reason,
                                           sizeof(reason), err, sizeof(err)),
                     0);
    assert_int_equal(b.len, 11);
    assert_memory_equal(b.data, "\xc3\x01", 2);
    assert_int_equal((unsigned char)b.data[10], 0x03);
    /* the schema was stored under its fingerprint */
    uint64_t fp = 0;
    for (int i = 0; i < 8; i++)
        fp |= (uint64_t)(unsigned char)b.data[2 + i] << (8 * i);
    char stored[400];
    snprintf(stored, sizeof(stored), "%s/%016llx.avsc", store, (unsigned long long)fp);
    assert_int_equal(access(stored, R_OK), 0);

    /* typed envelope: header + id type aggtype aggid + payload datum + ... */
    assert_int_equal(outboxd_encoder_event(enc, &ev, OUTBOXD_VALUE_ENVELOPE, "t", &b, reason,
                                           sizeof(reason), err, sizeof(err)),
                     0);
    const char prefix[] = "\x08id-1\x16OrderPlaced\x0aorder\x06o-1\x03";
    assert_memory_equal(b.data + 10, prefix, sizeof(prefix) - 1);

    /* a payload that does not match: reason, nothing published */
    ev = sample_event("OrderPlaced", "{\"n\": \"x\"}");
    assert_int_equal(outboxd_encoder_event(enc, &ev, OUTBOXD_VALUE_ENVELOPE, "t", &b, reason,
                                           sizeof(reason), err, sizeof(err)),
                     1);
    assert_string_equal(reason, "payload.n: expected long, got \"x\"");
    ev = sample_event("OrderPlaced", "{\"n\": ");
    assert_int_equal(outboxd_encoder_event(enc, &ev, OUTBOXD_VALUE_ENVELOPE, "t", &b, reason,
                                           sizeof(reason), err, sizeof(err)),
                     1);
    assert_non_null(strstr(reason, "payload: not valid JSON for type OrderPlaced"));

    /* Avro dead letter */
    outboxd_dead_letter_t dl = {.reason = "r",
                                .event_id = {"e", 1},
                                .original = {"{}", 2},
                                .source_name = "s",
                                .database = "db",
                                .table = "t",
                                .lsn = 1,
                                .commit_lsn = 2,
                                .xid = 3,
                                .commit_time_us = 4};
    assert_int_equal(outboxd_encoder_dead_letter(enc, &dl, &b, err, sizeof(err)), 0);
    const char dlt[] = "\x02r\x02\x02\x65\x00\x04{}\x02s\x04\x64\x62\x02t\x02\x04\x06\x08";
    assert_int_equal(b.len, 10 + sizeof(dlt) - 1);
    assert_memory_equal(b.data + 10, dlt, sizeof(dlt) - 1);
    outboxd_buf_free(&b);

    outboxd_encoder_destroy(enc);
    outboxd_config_destroy(conf);
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void test_encoder_bad_schema_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/outboxd-test-schemas.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[300];
    snprintf(path, sizeof(path), "%s/Broken.avsc", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"type\":\"record\",\"name\":\"B\",\"fields\":[{\"name\":\"a\",\"type\":\"nope\"}]}",
          f);
    fclose(f);
    char relay[400];
    snprintf(relay, sizeof(relay), "  schemas_dir: %s\n", dir);
    outboxd_config_t *conf = config_with(relay);
    char err[512];
    assert_null(outboxd_encoder_new(conf, err, sizeof(err)));
    assert_non_null(strstr(err, path));
    outboxd_config_destroy(conf);
    unlink(path);
    rmdir(dir);

    conf = config_with("  schemas_dir: /nonexistent/outboxd-schemas\n");
    assert_null(outboxd_encoder_new(conf, err, sizeof(err)));
    assert_non_null(strstr(err, "relay.schemas_dir: cannot open /nonexistent/outboxd-schemas"));
    outboxd_config_destroy(conf);
}

/* Registry secrets and files are read at start; a missing one is named. */
static void test_encoder_registry_files(void **state)
{
    (void)state;
    struct {
        const char *yaml, *err;
    } cases[] = {
        {"schema_registry: {url: \"http://127.0.0.1:1\", basic_auth_user: u, password_file: "
         "/nonexistent/pw}\n",
         "schema_registry.password_file: cannot read /nonexistent/pw"},
        {"schema_registry: {url: \"http://127.0.0.1:1\", bearer_token_file: /nonexistent/tok}\n",
         "schema_registry.bearer_token_file: cannot read /nonexistent/tok"},
        {"schema_registry: {url: \"http://127.0.0.1:1\", ca_file: /nonexistent/ca.pem}\n",
         "schema_registry.ca_file: cannot read /nonexistent/ca.pem"},
        {"schema_registry: {url: \"http://127.0.0.1:1\", basic_auth_user: u}\n",
         "schema_registry.basic_auth_user needs schema_registry.password_file"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char yaml[1024], err[512];
        snprintf(yaml, sizeof(yaml),
                 "kafka: {bootstrap_servers: 127.0.0.1:9}\n%s"
                 "sources:\n  - name: s\n    dsn: \"host=x\"\n    tables:\n      - table: outbox\n",
                 cases[i].yaml);
        outboxd_config_t *conf =
            outboxd_config_parse(yaml, strlen(yaml), "t.yaml", err, sizeof(err));
        if (!conf)
            fail_msg("config %zu: %s", i, err);
        outboxd_encoder_t *enc = outboxd_encoder_new(conf, err, sizeof(err));
        if (enc || !strstr(err, cases[i].err))
            fail_msg("case %zu: expected '%s', got '%s'", i, cases[i].err, enc ? "success" : err);
        outboxd_config_destroy(conf);
    }
}

/* jsonb writes 1e308 as a 309-digit integer: the payload still converts,
 * and the longs beside it stay exact. */
static void test_encoder_giant_integers(void **state)
{
    (void)state;
    char dir[] = "/tmp/outboxd-test-schemas.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[300];
    snprintf(path, sizeof(path), "%s/Big.avsc", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"type\":\"record\",\"name\":\"Big\",\"fields\":[{\"name\":\"d\",\"type\":"
          "\"double\"},{\"name\":\"l\",\"type\":\"long\"},{\"name\":\"f\",\"type\":\"double\"}]}",
          f);
    fclose(f);
    char relay[400];
    snprintf(relay, sizeof(relay), "  schemas_dir: %s\n", dir);
    outboxd_config_t *conf = config_with(relay);
    char err[512], reason[512];
    outboxd_encoder_t *enc = outboxd_encoder_new(conf, err, sizeof(err));
    assert_non_null(enc);
    outboxd_buf_t payload = {0};
    outboxd_buf_append_str(&payload, "{\"d\": -1");
    for (int i = 0; i < 308; i++)
        outboxd_buf_append_str(&payload, "0");
    outboxd_buf_append_str(&payload,
                           ", \"l\": 9223372036854775807, \"f\": 0.000000000000000000001}");
    outboxd_envelope_t ev = sample_event("Big", payload.data);
    outboxd_buf_t b = {0};
    int rc = outboxd_encoder_event(enc, &ev, OUTBOXD_VALUE_PAYLOAD, "t", &b, reason, sizeof(reason),
                                   err, sizeof(err));
    if (rc)
        fail_msg("rc %d: %s", rc, reason);
    assert_int_equal(b.len, 10 + 8 + 10 + 8);
    double d;
    memcpy(&d, b.data + 10, 8); /* little-endian host */
    assert_true(d == -1e308);
    assert_memory_equal(b.data + 18, "\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", 10);
    memcpy(&d, b.data + 28, 8);
    assert_true(d == 1e-21);
    outboxd_buf_free(&b);
    outboxd_buf_free(&payload);
    outboxd_encoder_destroy(enc);
    outboxd_config_destroy(conf);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_primitive_bytes),
        cmocka_unit_test(test_logical_bytes),
        cmocka_unit_test(test_round_trip_avro_c),
        cmocka_unit_test(test_errors_name_the_path),
        cmocka_unit_test(test_bad_schemas),
        cmocka_unit_test(test_wire_format_and_subjects),
        cmocka_unit_test(test_registry_unreachable),
        cmocka_unit_test(test_encoder_envelope_matches_avro_c),
        cmocka_unit_test(test_encoder_typed),
        cmocka_unit_test(test_encoder_bad_schema_file),
        cmocka_unit_test(test_encoder_registry_files),
        cmocka_unit_test(test_encoder_giant_integers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

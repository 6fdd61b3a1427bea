/*
 * The shop kit's pure parts: the token bucket, the envelope decoder (what the
 * relay encodes, the kit reads back), path splitting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "outboxd/common/avro.h"
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
    outboxd_shop_decoder_t *d = outboxd_shop_decoder_new(err, sizeof(err));
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
    json_t *j = outboxd_shop_decode(d, buf.data, buf.len, err, sizeof(err));
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "id")),
                        "0b6c6f0e-0000-4000-8000-000000000001");
    assert_string_equal(json_string_value(json_object_get(j, "aggregate_id")), "p-1");
    json_t *p = json_object_get(j, "payload");
    assert_true(json_is_object(p));
    assert_int_equal(json_integer_value(json_object_get(p, "amount")), 1900);
    json_decref(j);

    /* not an envelope: refused with a reason, not crashed on */
    err[0] = '\0';
    assert_null(outboxd_shop_decode(d, "{\"x\":1}", 7, err, sizeof(err)));
    assert_true(strlen(err) > 0);
    buf.data[buf.len - 1] ^= 0x7f; /* a truncated / corrupted datum */
    j = outboxd_shop_decode(d, buf.data, buf.len - 3, err, sizeof(err));
    json_decref(j);
    outboxd_buf_free(&buf);
    outboxd_shop_decoder_destroy(d);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_throttle_unlimited),
        cmocka_unit_test(test_throttle_rate),
        cmocka_unit_test(test_decode_roundtrip),
        cmocka_unit_test(test_path_split),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Shared helpers of src/common/util.c: base64 (RFC 4648 test vectors, and
 * every tail length) and PostgreSQL's two bytea text formats.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "outboxd/common/util.h"

static void base64_vectors(void **state)
{
    (void)state;
    /* RFC 4648 section 10. */
    static const char *in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *out[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        outboxd_buf_t b = {0};
        assert_true(outboxd_buf_append_str(&b, "<"));
        assert_true(outboxd_buf_base64(&b, in[i], strlen(in[i])));
        assert_true(outboxd_buf_append_str(&b, ">"));
        char want[32];
        snprintf(want, sizeof(want), "<%s>", out[i]);
        assert_string_equal(b.data, want);
        outboxd_buf_free(&b);
    }
    /* High bytes and both alphabet ends. */
    const unsigned char bin[] = {0xfb, 0xff, 0xbf, 0x00, 0x10, 0x83};
    outboxd_buf_t b = {0};
    assert_true(outboxd_buf_base64(&b, bin, sizeof(bin)));
    assert_string_equal(b.data, "+/+/ABCD");
    outboxd_buf_free(&b);
}

static void bytea_formats(void **state)
{
    (void)state;
    outboxd_buf_t b = {0};
    assert_true(outboxd_bytea_parse("\\x00ff10Ab", 10, &b));
    assert_int_equal(b.len, 4);
    assert_memory_equal(b.data, "\x00\xff\x10\xab", 4);
    assert_true(outboxd_bytea_parse("\\x", 2, &b));
    assert_int_equal(b.len, 0);
    /* The escape format (bytea_output = escape): \\ and octal \nnn. */
    assert_true(outboxd_bytea_parse("a\\\\b\\000\\377", 12, &b));
    assert_int_equal(b.len, 5);
    assert_memory_equal(b.data, "a\\b\x00\xff", 5);
    assert_false(outboxd_bytea_parse("\\x0", 3, &b));
    assert_false(outboxd_bytea_parse("\\xzz", 4, &b));
    outboxd_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(base64_vectors),
        cmocka_unit_test(bytea_formats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

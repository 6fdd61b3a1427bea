/*
 * sources[].publication_scope: tables (default), schema, all; anything else
 * is a configuration error naming the allowed values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "outboxd/relay/config.h"

static outboxd_config_t *parse_scope(const char *scope, char *err, size_t errsize)
{
    char text[512];
    snprintf(text, sizeof(text),
             "kafka:\n"
             "  bootstrap_servers: k:9092\n"
             "sources:\n"
             "  - name: s\n"
             "    dsn: \"host=h dbname=d user=u\"\n"
             "%s%s%s"
             "    tables:\n"
             "      - table: public.outbox\n",
             scope ? "    publication_scope: " : "", scope ? scope : "", scope ? "\n" : "");
    err[0] = '\0';
    return outboxd_config_parse(text, strlen(text), "test.yaml", err, errsize);
}

static void test_scope_values(void **state)
{
    (void)state;
    char err[512];
    struct {
        const char *text;
        int want;
    } cases[] = {{NULL, OUTBOXD_PUB_TABLES},
                 {"tables", OUTBOXD_PUB_TABLES},
                 {"schema", OUTBOXD_PUB_SCHEMA},
                 {"all", OUTBOXD_PUB_ALL}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        outboxd_config_t *c = parse_scope(cases[i].text, err, sizeof(err));
        if (!c)
            fail_msg("%s: %s", cases[i].text ? cases[i].text : "(default)", err);
        assert_int_equal(c->sources[0].publication_scope, cases[i].want);
        outboxd_config_destroy(c);
    }
}

static void test_scope_bad_value(void **state)
{
    (void)state;
    char err[512];
    outboxd_config_t *c = parse_scope("database", err, sizeof(err));
    assert_null(c);
    assert_non_null(strstr(err, "publication_scope"));
    assert_non_null(strstr(err, "schema"));
    assert_non_null(strstr(err, "test.yaml:6"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scope_values),
        cmocka_unit_test(test_scope_bad_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

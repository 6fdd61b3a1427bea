/*
 * Replay pieces that need no server: the replay_window values, the window
 * arithmetic that decides where the retention slot may go, the replay's
 * option checks and --start-lsn's SOURCE=LSN.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "outboxd/relay/config.h"
#include "outboxd/relay/replay.h"

#define SEC 1000000LL /* microseconds */

static void window_values(void **state)
{
    (void)state;
    int64_t ms;
    uint64_t bytes;
    assert_int_equal(outboxd_config_parse_window("1h", &ms, &bytes), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(bytes, 0);
    assert_int_equal(outboxd_config_parse_window("30m", &ms, &bytes), 0);
    assert_int_equal(ms, 1800000);
    assert_int_equal(outboxd_config_parse_window("90s", &ms, &bytes), 0);
    assert_int_equal(ms, 90000);
    assert_int_equal(outboxd_config_parse_window("2d", &ms, &bytes), 0);
    assert_int_equal(ms, 2 * 86400000LL);
    assert_int_equal(outboxd_config_parse_window("2GB", &ms, &bytes), 0);
    assert_int_equal(bytes, 2ULL << 30);
    assert_int_equal(ms, 0);
    assert_int_equal(outboxd_config_parse_window("500MB", &ms, &bytes), 0);
    assert_int_equal(bytes, 500ULL << 20);
    assert_int_equal(outboxd_config_parse_window("4096kB", &ms, &bytes), 0);
    assert_int_equal(bytes, 4096ULL << 10);
    /* Refused: no unit, zero, unknown unit, negative, a typo's size. */
    assert_int_equal(outboxd_config_parse_window("3600", &ms, &bytes), -1);
    assert_int_equal(outboxd_config_parse_window("0h", &ms, &bytes), -1);
    assert_int_equal(outboxd_config_parse_window("1w", &ms, &bytes), -1);
    assert_int_equal(outboxd_config_parse_window("-1h", &ms, &bytes), -1);
    assert_int_equal(outboxd_config_parse_window("h", &ms, &bytes), -1);
    assert_int_equal(outboxd_config_parse_window("99999999TB", &ms, &bytes), -1);
    assert_int_equal(outboxd_config_parse_window("400d", &ms, &bytes), -1);
}

static const char base_yaml[] = "kafka: {bootstrap_servers: \"k:9092\"}\n"
                                "relay:\n"
                                "  replay_window: 1h\n"
                                "sources:\n"
                                "  - name: a\n"
                                "    dsn: \"dbname=a\"\n"
                                "    tables: [{table: outbox}]\n"
                                "  - name: b\n"
                                "    dsn: \"dbname=b\"\n"
                                "    replay_window: 2GB\n"
                                "    tables: [{table: outbox}]\n";

static void window_config(void **state)
{
    (void)state;
    char err[512];
    outboxd_config_t *c =
        outboxd_config_parse(base_yaml, strlen(base_yaml), "t.yaml", err, sizeof(err));
    assert_non_null(c);
    assert_int_equal(c->sources[0].replay_window_ms, 3600000); /* inherited from relay: */
    assert_string_equal(c->sources[0].retention_slot, "outboxd_a_keep");
    assert_int_equal(c->sources[1].replay_window_bytes, 2ULL << 30); /* its own */
    assert_int_equal(c->sources[1].replay_window_ms, 0);
    assert_string_equal(c->sources[1].retention_slot, "outboxd_b_keep");
    outboxd_config_destroy(c);

    static const char none[] = "kafka: {bootstrap_servers: \"k:9092\"}\n"
                               "sources:\n"
                               "  - name: a\n"
                               "    dsn: \"dbname=a\"\n"
                               "    tables: [{table: outbox}]\n";
    c = outboxd_config_parse(none, strlen(none), "t.yaml", err, sizeof(err));
    assert_non_null(c);
    assert_null(c->sources[0].retention_slot); /* opt-in */
    outboxd_config_destroy(c);

    static const char bad[] = "kafka: {bootstrap_servers: \"k:9092\"}\n"
                              "sources:\n"
                              "  - name: a\n"
                              "    dsn: \"dbname=a\"\n"
                              "    replay_window: 3600\n"
                              "    tables: [{table: outbox}]\n";
    c = outboxd_config_parse(bad, strlen(bad), "t.yaml", err, sizeof(err));
    assert_null(c);
    assert_non_null(
        strstr(err, "t.yaml:5: sources[0].replay_window: invalid replay_window '3600'"));

    /* 57 characters + "_replay" is more than a PostgreSQL name holds. */
    static const char longslot[] =
        "kafka: {bootstrap_servers: \"k:9092\"}\n"
        "sources:\n"
        "  - name: a\n"
        "    dsn: \"dbname=a\"\n"
        "    slot: abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefg\n"
        "    replay_window: 1h\n"
        "    tables: [{table: outbox}]\n";
    c = outboxd_config_parse(longslot, strlen(longslot), "t.yaml", err, sizeof(err));
    assert_null(c);
    assert_non_null(strstr(err, "too long for replay_window (expected at most 56 characters"));
}

/* A time window: the target is the newest position confirmed at least a
 * window ago, never a younger one. */
static void window_time(void **state)
{
    (void)state;
    outboxd_window_ring_t *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    int64_t t0 = 1000 * SEC;
    /* Confirmed 100 at t0, 200 at t0+10s, 300 at t0+20s. */
    outboxd_window_note(r, 100, t0, SEC);
    outboxd_window_note(r, 200, t0 + 10 * SEC, SEC);
    outboxd_window_note(r, 300, t0 + 20 * SEC, SEC);
    /* 60 s window. */
    assert_int_equal(outboxd_window_target(r, t0 + 59 * SEC, 60000, 0, 300), 0);
    assert_int_equal(outboxd_window_target(r, t0 + 60 * SEC, 60000, 0, 300), 100);
    assert_int_equal(outboxd_window_target(r, t0 + 69 * SEC, 60000, 0, 300), 100);
    assert_int_equal(outboxd_window_target(r, t0 + 70 * SEC, 60000, 0, 300), 200);
    assert_int_equal(outboxd_window_target(r, t0 + 500 * SEC, 60000, 0, 300), 300);
    /* It stays the answer until a later one ages in. */
    assert_int_equal(outboxd_window_target(r, t0 + 501 * SEC, 60000, 0, 300), 300);
    /* Positions never go back; an older or equal one is ignored. */
    outboxd_window_note(r, 250, t0 + 600 * SEC, SEC);
    assert_int_equal(outboxd_window_target(r, t0 + 700 * SEC, 60000, 0, 300), 300);
    free(r);
}

/* Confirmations within one step share an entry, which takes the later
 * position and the later time (never an earlier time for a later position,
 * which would let the slot pass a younger transaction). */
static void window_buckets(void **state)
{
    (void)state;
    outboxd_window_ring_t *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    int64_t t0 = 1000 * SEC;
    for (int i = 0; i < 10; i++) /* every 100 ms for 1 s: one bucket */
        outboxd_window_note(r, 100 + (outboxd_lsn_t)i, t0 + i * SEC / 10, SEC);
    assert_int_equal(r->n, 1);
    assert_int_equal(outboxd_window_target(r, t0 + 60 * SEC, 60000, 0, 0), 0);
    assert_int_equal(outboxd_window_target(r, t0 + 60 * SEC + 9 * SEC / 10, 60000, 0, 0), 109);
    /* A steady stream still seals one entry per step. */
    for (int i = 10; i < 100; i++)
        outboxd_window_note(r, 100 + (outboxd_lsn_t)i, t0 + i * SEC / 10, SEC);
    assert_true(r->n >= 9 && r->n <= 10);
    /* A full ring drops its oldest entries: the slot only lags more. */
    outboxd_window_ring_t *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    for (int i = 0; i < OUTBOXD_WINDOW_RING + 10; i++)
        outboxd_window_note(f, 1 + (outboxd_lsn_t)i, t0 + i * SEC, SEC);
    assert_int_equal(f->n, OUTBOXD_WINDOW_RING);
    /* Entries of t0 .. t0+9s are gone: a cutoff among them finds nothing. */
    assert_int_equal(outboxd_window_target(f, t0 + 10 * SEC + SEC / 2, 1000, 0, 0), 0);
    assert_int_equal(outboxd_window_target(f, t0 + 11 * SEC, 1000, 0, 0), 11);
    assert_int_equal(outboxd_window_target(f, t0 + 2000 * SEC, 1000, 0, 0),
                     OUTBOXD_WINDOW_RING + 10);
    free(f);
    free(r);
}

static void window_bytes(void **state)
{
    (void)state;
    outboxd_window_ring_t r = {0};
    assert_int_equal(outboxd_window_target(&r, 0, 0, 1000, 5000), 4000);
    assert_int_equal(outboxd_window_target(&r, 0, 0, 1000, 999), 0);
}

static void replay_options(void **state)
{
    (void)state;
    char err[512];
    outboxd_replay_args_t a = {0};
    assert_int_equal(outboxd_replay_check_args(&a, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "--source"));
    assert_int_equal(outboxd_replay_set_option(&a, "source", "pay", err, sizeof(err)), 0);
    assert_int_equal(outboxd_replay_check_args(&a, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "--from-lsn"));
    assert_int_equal(outboxd_replay_set_option(&a, "from-lsn", "0/1A2B3C4", err, sizeof(err)), 0);
    assert_int_equal(a.from_lsn, 0x1A2B3C4);
    assert_int_equal(outboxd_replay_check_args(&a, err, sizeof(err)), 0);
    assert_int_equal(outboxd_replay_set_option(&a, "to-lsn", "0/100", err, sizeof(err)), 0);
    assert_int_equal(outboxd_replay_check_args(&a, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "--to-lsn 0/100 is before --from-lsn 0/1A2B3C4"));
    assert_int_equal(outboxd_replay_set_option(&a, "to-lsn", "1/0", err, sizeof(err)), 0);
    assert_int_equal(outboxd_replay_check_args(&a, err, sizeof(err)), 0);
    assert_int_equal(outboxd_replay_set_option(&a, "from-lsn", "12345", err, sizeof(err)), -1);
    assert_non_null(strstr(err, "is not an LSN"));
    assert_int_equal(outboxd_replay_set_option(&a, "topic-suffix", ".re play", err, sizeof(err)),
                     -1);
    assert_int_equal(outboxd_replay_set_option(&a, "topic-suffix", ".replay", err, sizeof(err)), 0);
    assert_int_equal(outboxd_replay_set_option(&a, "to-topic", "t", err, sizeof(err)), 0);
    assert_int_equal(outboxd_replay_check_args(&a, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "exclude each other"));
    assert_int_equal(outboxd_replay_set_option(&a, "dry-run", NULL, err, sizeof(err)), 0);
    assert_true(a.dry_run);
}

static void start_lsn_arg(void **state)
{
    (void)state;
    char name[64], err[512];
    outboxd_lsn_t lsn;
    assert_int_equal(outboxd_replay_parse_start_lsn("payment=16/B374D848", name, sizeof(name), &lsn,
                                                    err, sizeof(err)),
                     0);
    assert_string_equal(name, "payment");
    assert_int_equal(lsn, (0x16ULL << 32) | 0xB374D848ULL);
    assert_int_equal(
        outboxd_replay_parse_start_lsn("payment", name, sizeof(name), &lsn, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "is not SOURCE=LSN"));
    assert_int_equal(
        outboxd_replay_parse_start_lsn("=0/1", name, sizeof(name), &lsn, err, sizeof(err)), -1);
    assert_int_equal(
        outboxd_replay_parse_start_lsn("p=zz", name, sizeof(name), &lsn, err, sizeof(err)), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(window_values), cmocka_unit_test(window_config),
        cmocka_unit_test(window_time),   cmocka_unit_test(window_buckets),
        cmocka_unit_test(window_bytes),  cmocka_unit_test(replay_options),
        cmocka_unit_test(start_lsn_arg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

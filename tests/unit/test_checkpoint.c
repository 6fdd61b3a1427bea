/*
 * Checkpoint records (old and new fields), the skip rule by WAL position,
 * whether a checkpoint can be trusted on a server, and the pure parts of the
 * replication connection: START_REPLICATION options by server version and
 * timeline history parsing.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "outboxd/relay/checkpoint.h"
#include "outboxd/relay/repl.h"

static outboxd_checkpoint_t decode_str(const char *json)
{
    outboxd_checkpoint_t ck;
    char err[256];
    int rc = outboxd_checkpoint_decode(json, strlen(json), &ck, err, sizeof(err));
    if (rc != 0)
        fail_msg("decode failed: %s", err);
    return ck;
}

static void test_round_trip_new_fields(void **state)
{
    (void)state;
    outboxd_checkpoint_t ck = {.commit_lsn = 0x1A2B3C0,
                               .end_lsn = 0,
                               .changes = 5000,
                               .timeline = 3,
                               .last_lsn = 0x1A00010,
                               .last_lsn_n = 2};
    snprintf(ck.system_id, sizeof(ck.system_id), "7311");
    snprintf(ck.database, sizeof(ck.database), "payment");
    snprintf(ck.slot, sizeof(ck.slot), "outboxd_payment");
    outboxd_buf_t b = {0};
    assert_int_equal(outboxd_checkpoint_encode("payment", &ck, &b), 0);
    assert_non_null(strstr(b.data, "\"timeline\":3"));
    assert_non_null(strstr(b.data, "\"last_lsn\":\"0/1A00010\""));
    assert_non_null(strstr(b.data, "\"changes\":5000")); /* still there for older readers */
    outboxd_checkpoint_t back = decode_str(b.data);
    assert_int_equal(back.timeline, 3);
    assert_int_equal(back.last_lsn, 0x1A00010);
    assert_int_equal(back.last_lsn_n, 2);
    assert_int_equal(back.changes, 5000);
    assert_string_equal(back.slot, "outboxd_payment");
    outboxd_buf_free(&b);

    /* A whole transaction carries no split position. */
    ck.changes = -1;
    ck.end_lsn = 0x1A2B3F8;
    assert_int_equal(outboxd_checkpoint_encode("payment", &ck, &b), 0);
    assert_null(strstr(b.data, "last_lsn"));
    back = decode_str(b.data);
    assert_int_equal(back.last_lsn, 0);
    outboxd_buf_free(&b);
}

static void test_old_record_still_read(void **state)
{
    (void)state;
    /* As written before timeline and last_lsn existed. */
    outboxd_checkpoint_t ck =
        decode_str("{\"v\":1,\"source\":\"p\",\"system_id\":\"7311\",\"database\":\"p\","
                   "\"slot\":\"s\",\"commit_lsn\":\"0/500\",\"end_lsn\":\"0/0\",\"changes\":3}");
    assert_int_equal(ck.timeline, 0);
    assert_int_equal(ck.last_lsn, 0);
    assert_int_equal(ck.changes, 3);
    assert_string_equal(ck.snapshot, ""); /* no snapshot progress */
    /* Without a position the count decides. */
    outboxd_change_pos_t p = {.index = 2, .lsn = 0x9999, .lsn_ordinal = 0};
    assert_true(outboxd_checkpoint_covers_change(&ck, 0x500, &p));
    p.index = 3;
    assert_false(outboxd_checkpoint_covers_change(&ck, 0x500, &p));
}

static void test_bad_last_lsn_rejected(void **state)
{
    (void)state;
    outboxd_checkpoint_t ck;
    char err[256];
    const char *j = "{\"v\":1,\"commit_lsn\":\"0/500\",\"end_lsn\":\"0/0\",\"changes\":3,"
                    "\"last_lsn\":\"0/400\"}";
    assert_int_equal(outboxd_checkpoint_decode(j, strlen(j), &ck, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "last_lsn_n"));
}

/* The snapshot progress (relay/snapshot.c) rides along as an object and
 * comes back as the same compact text; one too large for the field is an
 * error, not a silently cut progress. */
static void test_snapshot_progress(void **state)
{
    (void)state;
    outboxd_checkpoint_t ck = {.commit_lsn = 0, .end_lsn = 0, .changes = -1};
    const char *progress = "{\"v\":1,\"done\":[\"public.a\"],\"segs\":{\"public.b\":[[null,"
                           "\"0/16B3F48\"],[[\"100\"],\"0/16C0000\"]]},\"run\":{\"tables\":["
                           "\"public.b\"],\"i\":0,\"key\":[\"250\"]}}";
    snprintf(ck.snapshot, sizeof(ck.snapshot), "%s", progress);
    outboxd_buf_t b = {0};
    assert_int_equal(outboxd_checkpoint_encode("p", &ck, &b), 0);
    assert_non_null(strstr(b.data, "\"snapshot\":{\"v\":1"));
    outboxd_checkpoint_t back = decode_str(b.data);
    assert_string_equal(back.snapshot, progress);
    assert_int_equal(back.commit_lsn, 0);
    outboxd_buf_free(&b);

    outboxd_buf_t big = {0};
    outboxd_buf_append_str(&big, "{\"v\":1,\"commit_lsn\":\"0/0\",\"end_lsn\":\"0/0\","
                                 "\"changes\":-1,\"snapshot\":{\"done\":[");
    for (int i = 0; i < 400; i++)
        outboxd_buf_printf(&big, "%s\"public.table_number_%d\"", i ? "," : "", i);
    outboxd_buf_append_str(&big, "]}}");
    char err[256];
    assert_int_equal(outboxd_checkpoint_decode(big.data, big.len, &ck, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "snapshot progress is too long"));
    outboxd_buf_free(&big);
}

/*
 * The defect: a split transaction of changes A B C D E at increasing LSNs,
 * published up to C (count 3). Before the replay, the publication dropped the
 * table of change A (or the configuration stopped asking for messages, which
 * pgoutput then no longer sends), so the replay sends B C D E: by count, D
 * (index 2) looks covered and is lost. By position it is not.
 */
static void test_skip_by_position_survives_membership_change(void **state)
{
    (void)state;
    outboxd_checkpoint_t ck = {
        .commit_lsn = 0x9000, .changes = 3, .last_lsn = 0x300, .last_lsn_n = 1};
    /* The count alone (the old rule) takes D, now the third change, for
     * published: */
    assert_true(outboxd_checkpoint_covers(&ck, 0x9000, 2));
    outboxd_lsn_t replay[4] = {0x200, 0x300, 0x400, 0x500};
    bool want[4] = {true, true, false, false};
    for (int i = 0; i < 4; i++) {
        outboxd_change_pos_t p = {.index = i, .lsn = replay[i], .lsn_ordinal = 0};
        assert_int_equal(outboxd_checkpoint_covers_change(&ck, 0x9000, &p), want[i]);
    }
    /* Another transaction is not affected. */
    outboxd_change_pos_t p = {.index = 0, .lsn = 0x100, .lsn_ordinal = 0};
    assert_true(outboxd_checkpoint_covers_change(&ck, 0x8000, &p));
    assert_false(outboxd_checkpoint_covers_change(&ck, 0xA000, &p));
}

/* Several changes in one WAL record (a COPY's multi-insert). */
static void test_skip_within_one_record(void **state)
{
    (void)state;
    outboxd_checkpoint_t ck = {
        .commit_lsn = 0x9000, .changes = 7, .last_lsn = 0x300, .last_lsn_n = 2};
    outboxd_change_pos_t p = {.index = 0, .lsn = 0x300, .lsn_ordinal = 1};
    assert_true(outboxd_checkpoint_covers_change(&ck, 0x9000, &p));
    p.lsn_ordinal = 2;
    assert_false(outboxd_checkpoint_covers_change(&ck, 0x9000, &p));
}

static outboxd_checkpoint_t ck_on(uint32_t tli, outboxd_lsn_t commit, outboxd_lsn_t end)
{
    outboxd_checkpoint_t ck = {.commit_lsn = commit, .end_lsn = end, .changes = -1};
    ck.timeline = tli;
    snprintf(ck.system_id, sizeof(ck.system_id), "7311");
    snprintf(ck.database, sizeof(ck.database), "db");
    snprintf(ck.slot, sizeof(ck.slot), "slot");
    return ck;
}

static outboxd_server_pos_t server(uint32_t tli, outboxd_lsn_t wal)
{
    outboxd_server_pos_t s = {
        .system_id = "7311", .database = "db", .slot = "slot", .timeline = tli, .wal_pos = wal};
    return s;
}

static void test_trusted(void **state)
{
    (void)state;
    char why[512];
    outboxd_checkpoint_t ck = ck_on(1, 0x5000, 0x5040);
    outboxd_server_pos_t srv = server(1, 0x9000);
    assert_true(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));

    /* Another cluster. */
    srv.system_id = "9999";
    assert_false(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));
    assert_non_null(strstr(why, "9999"));
    srv = server(1, 0x9000);

    /* Another slot or database. */
    srv.slot = "other";
    assert_false(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));
    srv = server(1, 0x9000);
    srv.database = "other";
    assert_false(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));

    /* Promotion: same system, new timeline, lower LSNs. The old primary
     * published up to 0x5040; the standby left timeline 1 at 0x3000. */
    srv = server(2, 0x4000);
    srv.ck_timeline_end = 0x3000;
    assert_false(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));
    assert_non_null(strstr(why, "timeline 1"));
    /* ... also once the new primary's WAL passed the old position. */
    srv.wal_pos = 0x90000;
    assert_false(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));
    /* The checkpoint before the switch: shared history, skipping is right. */
    srv.ck_timeline_end = 0x6000;
    assert_true(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));
    /* Timeline not in this server's history. */
    srv.ck_timeline_end = 0;
    assert_false(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));
    ck = ck_on(3, 0x5000, 0x5040);
    srv = server(2, 0x90000);
    assert_false(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));

    /* An old record (no timeline) ahead of the server's WAL: a restore. */
    ck = ck_on(0, 0x5000, 0x5040);
    srv = server(1, 0x4000);
    assert_false(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));
    assert_non_null(strstr(why, "WAL ends at"));
    srv.wal_pos = 0x5040;
    assert_true(outboxd_checkpoint_trusted(&ck, &srv, why, sizeof(why)));

    /* Nothing published yet: nothing to distrust. */
    outboxd_checkpoint_t none = {0};
    assert_true(outboxd_checkpoint_trusted(&none, &srv, why, sizeof(why)));
}

static void test_start_options_by_version(void **state)
{
    (void)state;
    struct {
        int version;
        bool messages;
        const char *want;
    } cases[] = {
        {100023, true, "proto_version '1', publication_names '\"p\"'"},
        {130011, true, "proto_version '1', publication_names '\"p\"'"},
        {130011, false, "proto_version '1', publication_names '\"p\"'"},
        {140000, true, "proto_version '1', publication_names '\"p\"', messages 'true'"},
        {140000, false, "proto_version '1', publication_names '\"p\"'"},
        {170002, true, "proto_version '1', publication_names '\"p\"', messages 'true'"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        outboxd_buf_t b = {0};
        outboxd_repl_start_options(cases[i].version, cases[i].messages, "'\"p\"'", &b);
        assert_string_equal(b.data, cases[i].want);
        outboxd_buf_free(&b);
    }
}

static void test_history_switchpoint(void **state)
{
    (void)state;
    const char *h = "1\t0/3000060\tno recovery target specified\n"
                    "\n"
                    "2\t0/5A000000\tat restore point \"x\"\n";
    assert_int_equal(outboxd_repl_history_switchpoint(h, 1), 0x3000060);
    assert_int_equal(outboxd_repl_history_switchpoint(h, 2), 0x5A000000);
    assert_int_equal(outboxd_repl_history_switchpoint(h, 3), 0);
    assert_int_equal(outboxd_repl_history_switchpoint("", 1), 0);
    /* "1\t0/3000060\tx\n" as bytea in hex output */
    assert_int_equal(outboxd_repl_history_switchpoint("\\x3109302f333030303036300978200a", 1),
                     0x3000060);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_new_fields),
        cmocka_unit_test(test_old_record_still_read),
        cmocka_unit_test(test_bad_last_lsn_rejected),
        cmocka_unit_test(test_snapshot_progress),
        cmocka_unit_test(test_skip_by_position_survives_membership_change),
        cmocka_unit_test(test_skip_within_one_record),
        cmocka_unit_test(test_trusted),
        cmocka_unit_test(test_start_options_by_version),
        cmocka_unit_test(test_history_switchpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Kafka sink error paths on librdkafka's mock cluster: checkpoint round trip
 * through read_committed, an aborted transaction staying invisible, fencing
 * of an older instance, retriable coordinator errors. (The real broker is
 * exercised by the integration tests; this tier injects errors the real one
 * cannot be made to produce on demand.)
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "outboxd/relay/config.h"
#include "outboxd/common/log.h"
#include "outboxd/relay/sink.h"

/* Kafka protocol API keys (librdkafka's RD_KAFKAP_* enum is not public). */
#define API_PRODUCE 0
#define API_END_TXN 26

typedef struct fixture {
    rd_kafka_t *mock_rk;
    rd_kafka_mock_cluster_t *mc; /* NULL when running against a real broker */
    outboxd_config_t *conf;
    char events_topic[64];
} fixture_t;

static atomic_int stop_flag = 0;
static const char *events_topic;

/*
 * With OUTBOXD_TEST_KAFKA_BOOTSTRAP set (the integration tier does that) the
 * same tests run against a real broker; error injection needs the mock
 * cluster and is skipped there, fencing needs a real broker's epochs.
 */
static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    char err[512];
    const char *real = getenv("OUTBOXD_TEST_KAFKA_BOOTSTRAP");
    const char *bootstrap = real;
    static int seq;
    char run[48];
    snprintf(run, sizeof(run), "s%ld-%d-%d", (long)time(NULL), (int)getpid(), seq++);
    if (!real) {
        rd_kafka_conf_t *kc = rd_kafka_conf_new();
        rd_kafka_conf_set(kc, "log_level", "3", NULL, 0); /* quiet: no brokers */
        f->mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
        assert_non_null(f->mock_rk);
        f->mc = rd_kafka_mock_cluster_new(f->mock_rk, 3);
        assert_non_null(f->mc);
        bootstrap = rd_kafka_mock_cluster_bootstraps(f->mc);
    }
    snprintf(f->events_topic, sizeof(f->events_topic), "events-%s", run);
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             "kafka:\n"
             "  bootstrap_servers: \"%s\"\n"
             "  transactional_id_prefix: \"sinktest-%s\"\n"
             "  properties: { transaction.timeout.ms: \"10000\" }\n"
             "relay:\n"
             "  checkpoint_topic: \"ckpt-%s\"\n"
             "sources:\n"
             "  - name: pay\n"
             "    dsn: \"dbname=pay\"\n"
             "    tables: [ { table: public.outbox } ]\n"
             "  - name: ord\n"
             "    dsn: \"dbname=ord\"\n"
             "    tables: [ { table: public.outbox } ]\n",
             bootstrap, run, run);
    f->conf = outboxd_config_parse(yaml, strlen(yaml), "sink-test.yaml", err, sizeof(err));
    if (!f->conf)
        fail_msg("%s", err);
    if (f->mc) {
        rd_kafka_mock_topic_create(f->mc, f->conf->checkpoint_topic, 1, 1);
        rd_kafka_mock_topic_create(f->mc, f->events_topic, 3, 1);
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    outboxd_config_destroy(f->conf);
    if (f->mc)
        rd_kafka_mock_cluster_destroy(f->mc);
    if (f->mock_rk)
        rd_kafka_destroy(f->mock_rk);
    free(f);
    return 0;
}

static outboxd_sink_t *new_sink_for(fixture_t *f, int source, outboxd_checkpoint_t *ck)
{
    char err[512];
    events_topic = f->events_topic;
    outboxd_sink_t *s = outboxd_sink_new(f->conf, &f->conf->sources[source], NULL, NULL, &stop_flag,
                                         err, sizeof(err));
    if (!s)
        fail_msg("sink_new: %s", err);
    outboxd_sink_status_t st = outboxd_sink_init(s, ck, err, sizeof(err));
    if (st != OUTBOXD_SINK_OK)
        fail_msg("sink_init: %d %s", st, err);
    return s;
}

static outboxd_sink_t *new_sink(fixture_t *f, outboxd_checkpoint_t *ck)
{
    return new_sink_for(f, 0, ck);
}

static outboxd_sink_status_t produce_n(outboxd_sink_t *s, int n, char *err, size_t errsize)
{
    for (int i = 0; i < n; i++) {
        char key[16], val[32];
        snprintf(key, sizeof(key), "k%d", i % 4);
        snprintf(val, sizeof(val), "value-%d", i);
        outboxd_record_t rec = {.topic = events_topic,
                                .key = key,
                                .key_len = strlen(key),
                                .value = val,
                                .value_len = strlen(val),
                                .n_headers = 1};
        rec.headers[0].name = "id";
        rec.headers[0].value = val;
        rec.headers[0].len = strlen(val);
        outboxd_sink_status_t st = outboxd_sink_produce(s, &rec, err, errsize);
        if (st != OUTBOXD_SINK_OK)
            return st;
    }
    return OUTBOXD_SINK_OK;
}

static outboxd_checkpoint_t ck_at(outboxd_lsn_t commit, outboxd_lsn_t end, int64_t changes)
{
    outboxd_checkpoint_t ck;
    memset(&ck, 0, sizeof(ck));
    ck.commit_lsn = commit;
    ck.end_lsn = end;
    ck.changes = changes;
    strcpy(ck.system_id, "42");
    return ck;
}

/* One committed transaction (checkpoint 0x100), then one Kafka refuses (an
 * injected MSG_SIZE_TOO_LARGE): its commit (checkpoint 0x300) must abort. */
static void commit_then_refused(fixture_t *f, outboxd_sink_t *a)
{
    char err[512];
    assert_int_equal(produce_n(a, 3, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_checkpoint_t c1 = ck_at(0x100, 0x140, -1);
    assert_int_equal(outboxd_sink_commit(a, &c1, err, sizeof(err)), OUTBOXD_SINK_OK);
    rd_kafka_mock_push_request_errors(f->mc, API_PRODUCE, 1, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    assert_int_equal(produce_n(a, 3, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_checkpoint_t c2 = ck_at(0x300, 0x340, -1);
    assert_int_equal(outboxd_sink_commit(a, &c2, err, sizeof(err)), OUTBOXD_SINK_ABORTED);
}

/* As the source does after a rewind: n records and a commit, tried again
 * while it does not succeed (the epoch bump after an abort may cost one more
 * attempt), at most 5 times. With only_aborted, an attempt failing other
 * than ABORTED fails the test. Returns the last status. */
static outboxd_sink_status_t produce_commit_retrying(outboxd_sink_t *s, int n,
                                                     const outboxd_checkpoint_t *ck,
                                                     bool only_aborted, char *err, size_t errsize)
{
    outboxd_sink_status_t st = OUTBOXD_SINK_ABORTED;
    for (int attempt = 0; attempt < 5 && st != OUTBOXD_SINK_OK; attempt++) {
        st = produce_n(s, n, err, errsize);
        if (st == OUTBOXD_SINK_OK)
            st = outboxd_sink_commit(s, ck, err, errsize);
        if (only_aborted && st != OUTBOXD_SINK_OK)
            assert_int_equal(st, OUTBOXD_SINK_ABORTED);
    }
    return st;
}

static void test_checkpoint_round_trip(void **state)
{
    fixture_t *f = *state;
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_sink_t *a = new_sink(f, &ck);
    assert_int_equal(ck.commit_lsn, 0); /* fresh topic: nothing yet */
    assert_int_equal(produce_n(a, 10, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_checkpoint_t c1 = ck_at(0x100, 0x140, -1);
    assert_int_equal(outboxd_sink_commit(a, &c1, err, sizeof(err)), OUTBOXD_SINK_OK);
    assert_int_equal(produce_n(a, 5, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_checkpoint_t c2 = ck_at(0x200, 0, 5);
    assert_int_equal(outboxd_sink_commit(a, &c2, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_sink_destroy(a);

    outboxd_sink_t *b = new_sink(f, &ck);
    assert_int_equal(ck.commit_lsn, 0x200);
    assert_int_equal(ck.changes, 5);
    assert_string_equal(ck.system_id, "42");
    outboxd_sink_destroy(b);
}

static void test_aborted_transaction_invisible(void **state)
{
    fixture_t *f = *state;
    if (!f->mc)
        skip(); /* needs error injection */
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_sink_t *a = new_sink(f, &ck);
    /* The second transaction fails permanently: it must abort and its
     * checkpoint must not become visible. */
    commit_then_refused(f, a);
    assert_false(outboxd_sink_in_txn(a));

    /* The producer stays usable: as the source does after a rewind, retry
     * (the epoch bump after an abort may cost one more aborted attempt). */
    outboxd_checkpoint_t c3 = ck_at(0x200, 0x240, -1);
    assert_int_equal(produce_commit_retrying(a, 2, &c3, true, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_sink_destroy(a);

    outboxd_sink_t *b = new_sink(f, &ck);
    assert_int_equal(ck.commit_lsn, 0x200);
    outboxd_sink_destroy(b);
}

static void test_fencing(void **state)
{
    fixture_t *f = *state;
    if (f->mc)
        skip(); /* librdkafka 2.0.2's mock cluster does not fence by epoch */
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_sink_t *old = new_sink(f, &ck);
    assert_int_equal(produce_n(old, 2, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_checkpoint_t c1 = ck_at(0x100, 0x140, -1);
    assert_int_equal(outboxd_sink_commit(old, &c1, err, sizeof(err)), OUTBOXD_SINK_OK);

    /* A second instance with the same transactional.id fences the first. */
    outboxd_sink_t *newer = new_sink(f, &ck);
    assert_int_equal(ck.commit_lsn, 0x100);

    outboxd_sink_status_t st = produce_n(old, 2, err, sizeof(err));
    if (st == OUTBOXD_SINK_OK) {
        outboxd_checkpoint_t c2 = ck_at(0x900, 0x940, -1);
        st = outboxd_sink_commit(old, &c2, err, sizeof(err));
    }
    assert_int_equal(st, OUTBOXD_SINK_FATAL);
    if (!strstr(err, "fenced"))
        fail_msg("fatal error does not say fenced: %s", err);

    /* The newer one works and the zombie's checkpoint never became visible. */
    assert_int_equal(produce_n(newer, 2, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_checkpoint_t c3 = ck_at(0x200, 0x240, -1);
    assert_int_equal(outboxd_sink_commit(newer, &c3, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_sink_destroy(old);
    outboxd_sink_destroy(newer);
    outboxd_sink_t *third = new_sink(f, &ck);
    assert_int_equal(ck.commit_lsn, 0x200);
    outboxd_sink_destroy(third);
}

static void test_retriable_commit(void **state)
{
    fixture_t *f = *state;
    if (!f->mc)
        skip(); /* needs error injection */
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_sink_t *a = new_sink(f, &ck);
    /* Coordinator hiccups on EndTxn are retried, not surfaced as aborts. */
    rd_kafka_mock_push_request_errors(f->mc, API_END_TXN, 2,
                                      RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
                                      RD_KAFKA_RESP_ERR_NOT_COORDINATOR);
    assert_int_equal(produce_n(a, 4, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_checkpoint_t c1 = ck_at(0x500, 0x540, -1);
    assert_int_equal(outboxd_sink_commit(a, &c1, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_sink_destroy(a);
    outboxd_sink_t *b = new_sink(f, &ck);
    assert_int_equal(ck.commit_lsn, 0x500);
    outboxd_sink_destroy(b);
}

static outboxd_sink_t *pooled(fixture_t *f, outboxd_sink_pool_t *p, int source);

/* Brings broker 1 back after 60 s unless told to earlier: without the
 * limit on aborts, the abort below would otherwise wait for ever. */
typedef struct watchdog {
    rd_kafka_mock_cluster_t *mc;
    atomic_int done;
} watchdog_t;

static void *watchdog_run(void *arg)
{
    watchdog_t *w = arg;
    for (int i = 0; i < 600 && !atomic_load(&w->done); i++)
        usleep(100 * 1000);
    rd_kafka_mock_broker_set_up(w->mc, 1);
    return NULL;
}

/*
 * An abort that never finishes (CI saw librdkafka 2.0.2 time out an abort for
 * minutes after a broker restart) must not hold the source for ever: after
 * transaction.timeout.ms (10 s here) the sink replaces its producers and
 * reports ABORTED; initialized again once the broker is back, it reads the
 * last committed checkpoint and commits the next transaction.
 */
static void abort_that_never_finishes(fixture_t *f, bool pool)
{
    char err[512];
    /* Every transactional id the source may use is coordinated by broker 1. */
    char id[128];
    for (int i = 0; i < 4; i++) {
        if (pool)
            snprintf(id, sizeof(id), "%s.pool.%d", f->conf->transactional_id_prefix, i);
        else if (i == 0)
            snprintf(id, sizeof(id), "%s.pay", f->conf->transactional_id_prefix);
        else
            snprintf(id, sizeof(id), "%s.pay.%d", f->conf->transactional_id_prefix, i);
        assert_int_equal(rd_kafka_mock_coordinator_set(f->mc, "transaction", id, 1), 0);
    }
    outboxd_checkpoint_t ck;
    outboxd_sink_pool_t *p = NULL;
    outboxd_sink_t *a;
    if (pool) {
        p = outboxd_sink_pool_new(f->conf, 1, &stop_flag, err, sizeof(err));
        if (!p)
            fail_msg("pool_new: %s", err);
        a = pooled(f, p, 0);
        assert_int_equal(outboxd_sink_init(a, &ck, err, sizeof(err)), OUTBOXD_SINK_OK);
    } else {
        a = new_sink(f, &ck);
    }
    assert_int_equal(produce_n(a, 3, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_checkpoint_t c1 = ck_at(0x100, 0x140, -1);
    assert_int_equal(outboxd_sink_commit(a, &c1, err, sizeof(err)), OUTBOXD_SINK_OK);

    assert_int_equal(produce_n(a, 3, err, sizeof(err)), OUTBOXD_SINK_OK);
    assert_true(outboxd_sink_in_txn(a));
    /* The records reach the partitions (AddPartitionsToTxn), so the abort
     * needs the coordinator: without that librdkafka aborts locally. */
    usleep(1000 * 1000);
    assert_int_equal(rd_kafka_mock_broker_set_down(f->mc, 1), 0);
    watchdog_t w = {.mc = f->mc};
    pthread_t wt;
    assert_int_equal(pthread_create(&wt, NULL, watchdog_run, &w), 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    outboxd_sink_status_t st = outboxd_sink_abort(a, err, sizeof(err));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    atomic_store(&w.done, 1);
    pthread_join(wt, NULL);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (st != OUTBOXD_SINK_ABORTED)
        fail_msg("abort: %d %s (after %.1f s)", st, err, secs);
    if (!strstr(err, "has not finished"))
        fail_msg("the error does not say the abort did not finish: %s", err);
    if (secs < 9.5 || secs > 45)
        fail_msg("gave up after %.1f s, not after transaction.timeout.ms (10 s)", secs);
    assert_false(outboxd_sink_in_txn(a));
    if (!pool) {
        assert_false(outboxd_sink_ready(a)); /* new producers: init again */
        st = outboxd_sink_init(a, &ck, err, sizeof(err));
        if (st != OUTBOXD_SINK_OK)
            fail_msg("init after the replacement: %d %s", st, err);
        assert_int_equal(ck.commit_lsn, 0x100);
    }
    /* The next transaction commits (a pool slot left not ready by the
     * replacement is initialized by this borrower). */
    outboxd_checkpoint_t c2 = ck_at(0x200, 0x240, -1);
    st = produce_n(a, 2, err, sizeof(err));
    if (st == OUTBOXD_SINK_OK)
        st = outboxd_sink_commit(a, &c2, err, sizeof(err));
    if (st != OUTBOXD_SINK_OK)
        fail_msg("the transaction after the replacement: %d %s", st, err);
    outboxd_sink_destroy(a);
    if (p)
        outboxd_sink_pool_destroy(p);
    outboxd_sink_t *b = new_sink(f, &ck);
    assert_int_equal(ck.commit_lsn, 0x200);
    outboxd_sink_destroy(b);
}

static void test_abort_that_never_finishes(void **state)
{
    fixture_t *f = *state;
    if (!f->mc)
        skip(); /* needs a coordinator that goes away */
    abort_that_never_finishes(f, false);
}

static void test_pool_abort_that_never_finishes(void **state)
{
    fixture_t *f = *state;
    if (!f->mc)
        skip();
    abort_that_never_finishes(f, true);
}

/*
 * Another source's transaction left open on the shared checkpoint topic holds
 * back the last stable offset. A restarting source must still find its
 * newest checkpoint (written after that open transaction), not stop at the
 * stable offset with an older one, which would republish events.
 */
static void test_checkpoint_behind_open_transaction(void **state)
{
    fixture_t *f = *state;
    if (f->mc)
        skip(); /* the mock cluster does not hold back read_committed reads */
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_sink_t *pay = new_sink(f, &ck);
    outboxd_checkpoint_t c1 = ck_at(0x100, 0x140, -1);
    assert_int_equal(produce_n(pay, 1, err, sizeof(err)), OUTBOXD_SINK_OK);
    assert_int_equal(outboxd_sink_commit(pay, &c1, err, sizeof(err)), OUTBOXD_SINK_OK);

    /* Source "ord" writes its checkpoint record but never commits (it
     * "crashed"); the broker aborts it after transaction.timeout.ms. */
    outboxd_sink_t *ord = new_sink_for(f, 1, &ck);
    outboxd_record_t rec = {.topic = f->conf->checkpoint_topic,
                            .key = "ord",
                            .key_len = 3,
                            .value = "{}",
                            .value_len = 2};
    assert_int_equal(outboxd_sink_produce(ord, &rec, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_sink_poll(ord);
    sleep(1); /* let the record reach the broker */

    outboxd_checkpoint_t c2 = ck_at(0x200, 0x240, -1);
    assert_int_equal(produce_n(pay, 1, err, sizeof(err)), OUTBOXD_SINK_OK);
    assert_int_equal(outboxd_sink_commit(pay, &c2, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_sink_destroy(pay);

    /* A restart of "pay" while "ord"'s transaction is still open. */
    char e2[512];
    outboxd_sink_t *again =
        outboxd_sink_new(f->conf, &f->conf->sources[0], NULL, NULL, &stop_flag, e2, sizeof(e2));
    assert_non_null(again);
    outboxd_sink_status_t st = OUTBOXD_SINK_RETRY;
    for (int attempt = 0; attempt < 3 && st == OUTBOXD_SINK_RETRY; attempt++)
        st = outboxd_sink_init(again, &ck, e2, sizeof(e2));
    if (st != OUTBOXD_SINK_OK)
        fail_msg("init: %s", e2);
    assert_int_equal(ck.commit_lsn, 0x200);
    outboxd_sink_destroy(again);
    outboxd_sink_destroy(ord);
}

/* The fixture's Kafka settings with one source "pay" and n producers. */
static outboxd_config_t *conf_with_producers(const fixture_t *f, int n)
{
    char yaml[2048], err[512];
    snprintf(yaml, sizeof(yaml),
             "kafka:\n"
             "  bootstrap_servers: \"%s\"\n"
             "  transactional_id_prefix: \"%s\"\n"
             "  properties: { transaction.timeout.ms: \"10000\" }\n"
             "relay:\n"
             "  checkpoint_topic: \"%s\"\n"
             "  producers_per_source: %d\n"
             "sources:\n"
             "  - name: pay\n"
             "    dsn: \"dbname=pay\"\n"
             "    tables: [ { table: public.outbox } ]\n",
             f->conf->bootstrap_servers, f->conf->transactional_id_prefix,
             f->conf->checkpoint_topic, n);
    outboxd_config_t *c =
        outboxd_config_parse(yaml, strlen(yaml), "sink-test.yaml", err, sizeof(err));
    if (!c)
        fail_msg("%s", err);
    return c;
}

/*
 * Every producer's first record to a topic went out only after librdkafka's
 * next topic scan (once a second), so with two producers taking turns each
 * new topic cost the second one up to 1 s (sink.c, warm_producer). Here 15
 * topics each get one transaction on either producer of the ring: without
 * the warm-up the second producer's 15 waits add up to about 7.5 s (under
 * 4 s with a chance of about 1 in 50,000); with it, the 30 transactions
 * take a few hundred ms. Mock cluster only: a real broker's commit times
 * under load would make the bound noisy.
 */
static void test_new_topic_does_not_wait_for_metadata_scan(void **state)
{
    fixture_t *f = *state;
    if (!f->mc)
        skip();
    enum { TOPICS = 15 };
    char names[TOPICS][96];
    for (int i = 0; i < TOPICS; i++) {
        snprintf(names[i], sizeof(names[i]), "%s-new%d", f->events_topic, i);
        rd_kafka_mock_topic_create(f->mc, names[i], 3, 1);
    }
    outboxd_config_t *c = conf_with_producers(f, 2);
    char err[512];
    outboxd_sink_t *s =
        outboxd_sink_new(c, &c->sources[0], NULL, NULL, &stop_flag, err, sizeof(err));
    assert_non_null(s);
    outboxd_checkpoint_t ck;
    if (outboxd_sink_init(s, &ck, err, sizeof(err)) != OUTBOXD_SINK_OK)
        fail_msg("init: %s", err);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    outboxd_lsn_t lsn = 0x100;
    for (int i = 0; i < TOPICS; i++) {
        for (int turn = 0; turn < 2; turn++) { /* the ring's two producers */
            events_topic = names[i];
            if (produce_n(s, 1, err, sizeof(err)) != OUTBOXD_SINK_OK)
                fail_msg("produce to %s: %s", names[i], err);
            outboxd_checkpoint_t ci = ck_at(lsn, lsn + 0x10, -1);
            lsn += 0x100;
            if (outboxd_sink_commit(s, &ci, err, sizeof(err)) != OUTBOXD_SINK_OK)
                fail_msg("commit: %s", err);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    print_message("%d transactions on %d new topics: %ld ms\n", 2 * TOPICS, TOPICS, ms);
    if (ms >= 4000)
        fail_msg("%d transactions on %d new topics took %ld ms: a producer waited for its "
                 "metadata scan",
                 2 * TOPICS, TOPICS, ms);
    outboxd_sink_destroy(s);
    outboxd_config_destroy(c);
}

/*
 * An older instance ran with more producers than the newer one uses and left
 * a transaction open on its fourth id. The newer instance's init fences the
 * ids above its ring too (all at once with its own producers), so the old
 * producer can no longer commit.
 */
static void test_fences_ids_above_the_ring(void **state)
{
    fixture_t *f = *state;
    if (f->mc)
        skip(); /* librdkafka 2.0.2's mock cluster does not fence by epoch */
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_config_t *wide = conf_with_producers(f, 4), *narrow = conf_with_producers(f, 2);
    events_topic = f->events_topic;
    outboxd_sink_t *old =
        outboxd_sink_new(wide, &wide->sources[0], NULL, NULL, &stop_flag, err, sizeof(err));
    assert_non_null(old);
    assert_int_equal(outboxd_sink_init(old, &ck, err, sizeof(err)), OUTBOXD_SINK_OK);
    /* Three commits move the ring on to its fourth producer (id .3). */
    for (int i = 1; i <= 3; i++) {
        outboxd_checkpoint_t c =
            ck_at((outboxd_lsn_t)0x100 * i, (outboxd_lsn_t)0x100 * i + 0x40, -1);
        assert_int_equal(produce_n(old, 1, err, sizeof(err)), OUTBOXD_SINK_OK);
        assert_int_equal(outboxd_sink_commit(old, &c, err, sizeof(err)), OUTBOXD_SINK_OK);
    }
    assert_int_equal(produce_n(old, 2, err, sizeof(err)), OUTBOXD_SINK_OK);

    outboxd_sink_t *newer =
        outboxd_sink_new(narrow, &narrow->sources[0], NULL, NULL, &stop_flag, err, sizeof(err));
    assert_non_null(newer);
    outboxd_sink_status_t st = outboxd_sink_init(newer, &ck, err, sizeof(err));
    if (st != OUTBOXD_SINK_OK)
        fail_msg("init: %d %s", st, err);
    assert_int_equal(ck.commit_lsn, 0x300);

    outboxd_checkpoint_t c4 = ck_at(0x900, 0x940, -1);
    st = outboxd_sink_commit(old, &c4, err, sizeof(err));
    assert_int_equal(st, OUTBOXD_SINK_FATAL);
    if (!strstr(err, "fenced"))
        fail_msg("the old producer of id .3 was not fenced: %s", err);
    outboxd_sink_destroy(old);

    /* The newer instance works, and the fenced commit never became visible. */
    assert_int_equal(produce_n(newer, 1, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_checkpoint_t c5 = ck_at(0x400, 0x440, -1);
    assert_int_equal(outboxd_sink_commit(newer, &c5, err, sizeof(err)), OUTBOXD_SINK_OK);
    outboxd_sink_destroy(newer);
    outboxd_sink_t *third = new_sink(f, &ck);
    assert_int_equal(ck.commit_lsn, 0x400);
    outboxd_sink_destroy(third);
    outboxd_config_destroy(wide);
    outboxd_config_destroy(narrow);
}

/*
 * One record per request (the replay of a transaction whose refused records
 * could not be told apart): a refusal aborts at once and names exactly the
 * refused record, counted once.
 */
static void test_one_by_one_names_refused_record(void **state)
{
    fixture_t *f = *state;
    if (!f->mc)
        skip(); /* needs error injection */
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_sink_t *a = new_sink(f, &ck);
    outboxd_sink_set_one_by_one(a, true);
    assert_int_equal(produce_n(a, 2, err, sizeof(err)), OUTBOXD_SINK_OK);
    /* The third record's produce request is refused for good. */
    rd_kafka_mock_push_request_errors(f->mc, API_PRODUCE, 1, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    assert_int_equal(produce_n(a, 1, err, sizeof(err)), OUTBOXD_SINK_ABORTED);
    assert_false(outboxd_sink_in_txn(a));
    char reason[256] = "";
    uint64_t count = 0;
    assert_int_equal(outboxd_sink_refused(a, reason, sizeof(reason), &count), 3);
    assert_int_equal(count, 1);
    if (!strstr(reason, "Kafka refused the record for events-"))
        fail_msg("reason: %s", reason);
    char ckr[256];
    assert_false(outboxd_sink_checkpoint_refused(a, ckr, sizeof(ckr)));
    outboxd_sink_destroy(a);
}

/* A refused checkpoint record is reported as such (the source stops: its
 * topic is misconfigured), never as a refused event to dead-letter. */
static void test_checkpoint_record_refused(void **state)
{
    fixture_t *f = *state;
    if (!f->mc)
        skip(); /* needs error injection */
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_sink_t *a = new_sink(f, &ck);
    outboxd_sink_set_one_by_one(a, true); /* the event is delivered before the checkpoint */
    assert_int_equal(produce_n(a, 1, err, sizeof(err)), OUTBOXD_SINK_OK);
    rd_kafka_mock_push_request_errors(f->mc, API_PRODUCE, 1, RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
    outboxd_checkpoint_t c1 = ck_at(0x100, 0x140, -1);
    assert_int_equal(outboxd_sink_commit(a, &c1, err, sizeof(err)), OUTBOXD_SINK_ABORTED);
    char reason[256] = "";
    assert_true(outboxd_sink_checkpoint_refused(a, reason, sizeof(reason)));
    if (!strstr(reason, "Kafka refused the checkpoint record for ckpt-"))
        fail_msg("reason: %s", reason);
    uint64_t count = 9;
    assert_int_equal(outboxd_sink_refused(a, reason, sizeof(reason), &count), 0);
    assert_int_equal(count, 0);
    outboxd_sink_destroy(a);
}

/* ---- the shared producer pool (relay.kafka_producers) ---- */

typedef struct pool_job {
    outboxd_sink_t *s;
    outboxd_checkpoint_t ck; /* to commit, or read by init */
    bool init;               /* outboxd_sink_init instead of produce + commit */
    outboxd_sink_status_t st;
    atomic_bool finished;
    char err[512];
} pool_job_t;

static void *pool_job_run(void *arg)
{
    pool_job_t *j = arg;
    if (j->init) {
        j->st = outboxd_sink_init(j->s, &j->ck, j->err, sizeof(j->err));
    } else {
        j->st = produce_n(j->s, 3, j->err, sizeof(j->err));
        if (j->st == OUTBOXD_SINK_OK)
            j->st = outboxd_sink_commit(j->s, &j->ck, j->err, sizeof(j->err));
    }
    atomic_store(&j->finished, true);
    return NULL;
}

static outboxd_sink_t *pooled(fixture_t *f, outboxd_sink_pool_t *p, int source)
{
    char err[512];
    events_topic = f->events_topic;
    outboxd_sink_t *s = outboxd_sink_new_pooled(p, f->conf, &f->conf->sources[source], NULL, NULL,
                                                &stop_flag, err, sizeof(err));
    if (!s)
        fail_msg("sink_new_pooled: %s", err);
    return s;
}

/*
 * Two sources on a pool of one producer: the second source's transaction
 * waits while the first holds the producer and runs once it was given back;
 * a refusal in one source's transaction aborts only that one; a new pool's
 * first start reads both sources' checkpoints (both ask at once).
 */
static void test_pool_shares_producers(void **state)
{
    fixture_t *f = *state;
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_sink_pool_t *p = outboxd_sink_pool_new(f->conf, 1, &stop_flag, err, sizeof(err));
    if (!p)
        fail_msg("pool_new: %s", err);
    outboxd_sink_t *a = pooled(f, p, 0), *b = pooled(f, p, 1);
    assert_int_equal(outboxd_sink_init(a, &ck, err, sizeof(err)), OUTBOXD_SINK_OK);
    assert_int_equal(ck.commit_lsn, 0);
    assert_int_equal(outboxd_sink_init(b, &ck, err, sizeof(err)), OUTBOXD_SINK_OK);
    assert_int_equal(ck.commit_lsn, 0);

    /* a holds the only producer from its first produce to its commit. */
    assert_int_equal(produce_n(a, 5, err, sizeof(err)), OUTBOXD_SINK_OK);
    pool_job_t jb = {.s = b, .ck = ck_at(0x300, 0x340, -1)};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, pool_job_run, &jb), 0);
    usleep(500 * 1000);
    assert_false(atomic_load(&jb.finished)); /* still waiting for the producer */
    outboxd_checkpoint_t c1 = ck_at(0x100, 0x140, -1);
    assert_int_equal(outboxd_sink_commit(a, &c1, err, sizeof(err)), OUTBOXD_SINK_OK);
    pthread_join(t, NULL);
    if (jb.st != OUTBOXD_SINK_OK)
        fail_msg("b: %d %s", jb.st, jb.err);

    if (f->mc) {
        /* A refusal in a's transaction: a aborts, b's next one commits. */
        rd_kafka_mock_push_request_errors(f->mc, API_PRODUCE, 1,
                                          RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE);
        assert_int_equal(produce_n(a, 3, err, sizeof(err)), OUTBOXD_SINK_OK);
        outboxd_checkpoint_t c2 = ck_at(0x500, 0x540, -1);
        assert_int_equal(outboxd_sink_commit(a, &c2, err, sizeof(err)), OUTBOXD_SINK_ABORTED);
        char reason[256] = "";
        /* (the injected error hits whichever produce request goes first:
         * the events' or the checkpoint's) */
        assert_true(outboxd_sink_refused(a, reason, sizeof(reason), NULL) > 0 ||
                    outboxd_sink_checkpoint_refused(a, reason, sizeof(reason)));
        outboxd_checkpoint_t c3 = ck_at(0x400, 0x440, -1);
        assert_int_equal(produce_commit_retrying(b, 2, &c3, false, err, sizeof(err)),
                         OUTBOXD_SINK_OK);
        /* a goes on too. (Also needed for the read below: the mock
         * cluster's epoch bump, which ends a transaction refused this way,
         * leaves its records visible to read_committed; a real broker's
         * does not, see test_pool_isolation.sh.) */
        outboxd_checkpoint_t c4 = ck_at(0x600, 0x640, -1);
        assert_int_equal(produce_commit_retrying(a, 2, &c4, false, err, sizeof(err)),
                         OUTBOXD_SINK_OK);
    }
    outboxd_sink_destroy(a);
    outboxd_sink_destroy(b);
    outboxd_sink_pool_destroy(p);

    /* A new process's pool (two producers): both sources start at once. */
    p = outboxd_sink_pool_new(f->conf, 2, &stop_flag, err, sizeof(err));
    if (!p)
        fail_msg("pool_new: %s", err);
    pool_job_t ja = {.s = pooled(f, p, 0), .init = true};
    pool_job_t jb2 = {.s = pooled(f, p, 1), .init = true};
    pthread_t ta, tb;
    assert_int_equal(pthread_create(&ta, NULL, pool_job_run, &ja), 0);
    assert_int_equal(pthread_create(&tb, NULL, pool_job_run, &jb2), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    if (ja.st != OUTBOXD_SINK_OK || jb2.st != OUTBOXD_SINK_OK)
        fail_msg("init: %d %s / %d %s", ja.st, ja.err, jb2.st, jb2.err);
    assert_int_equal(ja.ck.commit_lsn, f->mc ? 0x600 : 0x100);
    assert_int_equal(jb2.ck.commit_lsn, f->mc ? 0x400 : 0x300);
    outboxd_sink_destroy(ja.s);
    outboxd_sink_destroy(jb2.s);
    outboxd_sink_pool_destroy(p);
}

/*
 * After a failed transaction every topic is looked up again: a topic
 * deleted while the transaction ran must be reported missing on the replay
 * instead of produced to from memory (a pool producer was once fenced that
 * way: its replayed transaction waited for the deleted topic until it
 * outlived transaction.timeout.ms). The mock cluster answers metadata for
 * the "deleted" topic with UNKNOWN_TOPIC_OR_PART once its error is set.
 */
static void check_missing_after_abort(fixture_t *f, outboxd_sink_t *a)
{
    char err[512];
    commit_then_refused(f, a);
    rd_kafka_mock_topic_set_error(f->mc, f->events_topic, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART);
    outboxd_sink_status_t st = produce_n(a, 1, err, sizeof(err));
    if (st != OUTBOXD_SINK_MISSING_TOPIC)
        fail_msg("replay after an abort produced to a deleted topic: status %d (%s)", st, err);
    assert_non_null(strstr(err, f->events_topic));
    assert_false(outboxd_sink_in_txn(a));
    /* The topic is back: the relay goes on. */
    rd_kafka_mock_topic_set_error(f->mc, f->events_topic, RD_KAFKA_RESP_ERR_NO_ERROR);
    outboxd_checkpoint_t c3 = ck_at(0x200, 0x240, -1);
    st = produce_commit_retrying(a, 2, &c3, false, err, sizeof(err));
    if (st != OUTBOXD_SINK_OK)
        fail_msg("after the topic came back: %d %s", st, err);
}

static void test_topics_rechecked_after_abort(void **state)
{
    fixture_t *f = *state;
    if (!f->mc)
        skip(); /* needs error injection */
    outboxd_checkpoint_t ck;
    outboxd_sink_t *a = new_sink(f, &ck);
    check_missing_after_abort(f, a);
    outboxd_sink_destroy(a);
}

static void test_pool_topics_rechecked_after_abort(void **state)
{
    fixture_t *f = *state;
    if (!f->mc)
        skip(); /* needs error injection */
    char err[512];
    outboxd_checkpoint_t ck;
    outboxd_sink_pool_t *p = outboxd_sink_pool_new(f->conf, 1, &stop_flag, err, sizeof(err));
    if (!p)
        fail_msg("pool_new: %s", err);
    outboxd_sink_t *a = pooled(f, p, 0);
    assert_int_equal(outboxd_sink_init(a, &ck, err, sizeof(err)), OUTBOXD_SINK_OK);
    check_missing_after_abort(f, a);
    outboxd_sink_destroy(a);
    outboxd_sink_pool_destroy(p);
}

/* The startup note about librdkafka's busy main thread: for the versions
 * before the fix only (Debian bookworm's 2.0.2 among them). */
static void test_librdkafka_note(void **state)
{
    (void)state;
    const char *old = outboxd_sink_librdkafka_note(0x020002ff); /* 2.0.2 */
    assert_non_null(old);
    assert_non_null(strstr(old, "2.4.0"));
    assert_non_null(outboxd_sink_librdkafka_note(0x020301ff)); /* 2.3.1 */
    assert_null(outboxd_sink_librdkafka_note(0x020400ff));     /* 2.4.0 */
    assert_null(outboxd_sink_librdkafka_note(0x020800ff));     /* 2.8.0 */
}

/* Client metrics push is off wherever librdkafka has it (2.5.0 and later:
 * on 2.8.0 its shutdown step made each destroy wait 1 s); older versions do
 * not know the property and get nothing. Run with a newer librdkafka, e.g.
 * LD_LIBRARY_PATH from bench/common.sh's BENCH_LIBRDKAFKA, to check both. */
static void test_conf_defaults(void **state)
{
    (void)state;
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    outboxd_sink_conf_defaults(kc);
    char v[16] = "";
    size_t n = sizeof(v);
    rd_kafka_conf_res_t res = rd_kafka_conf_get(kc, "enable.metrics.push", v, &n);
    if (rd_kafka_version() >= 0x02050000) {
        assert_int_equal(res, RD_KAFKA_CONF_OK);
        assert_string_equal(v, "false");
    } else {
        assert_int_equal(res, RD_KAFKA_CONF_UNKNOWN);
    }
    rd_kafka_conf_destroy(kc);
}

int main(void)
{
    outboxd_log_set_level(OUTBOXD_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_checkpoint_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_aborted_transaction_invisible, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fencing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retriable_commit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_abort_that_never_finishes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_abort_that_never_finishes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_one_by_one_names_refused_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_record_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_behind_open_transaction, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fences_ids_above_the_ring, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_shares_producers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_topics_rechecked_after_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pool_topics_rechecked_after_abort, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_topic_does_not_wait_for_metadata_scan, setup,
                                        teardown),
        cmocka_unit_test(test_librdkafka_note),
        cmocka_unit_test(test_conf_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

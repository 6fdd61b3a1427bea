/*
 * kafka_ceiling: what the broker takes from one transactional librdkafka
 * producer with no PostgreSQL in the way, the Kafka-side limit of a drain
 * (bench/throughput.sh prints it beside the relay's rate).
 *
 *   kafka_ceiling BOOTSTRAP TOPIC N VALUE TXN_EVENTS [prop=val]...
 *
 * Writes N records to TOPIC shaped like the relay's: key "order-<1..1000>",
 * headers "id" (36 bytes) and "type", and as value either VALUE bytes or,
 * with VALUE "from:TOPIC2", the value of the first record of TOPIC2
 * (partition 0; the relay's own event, so the bytes are the same), in Kafka
 * transactions of TXN_EVENTS records (each with one small record to a
 * second topic, TOPIC.ck, as the relay's checkpoint), with the relay's
 * producer defaults (librdkafka's, queue.buffering.max.kbytes 65536) and
 * the given properties. Every producer has the metadata of both topics
 * before the clock starts (as the relay's producers do: sink.c,
 * warm_producer). Prints one line:
 *   kafka_ceiling: events=N ms=X events_per_s=X mb_per_s=X transactions=N ... cpu_ms=X
 * (cpu_ms: this process's CPU, all its threads, until the last commit: what
 * a bare producer spends on the same records, beside the relay's CPU).
 *
 * With KAFKA_CEILING_RATE=R (events per second), the records are written at
 * that steady rate instead, for N / R seconds, and transactions are cut the
 * way the relay cuts them at a steady rate: commit as soon as records are in
 * hand, the next transaction takes what came due meanwhile (TXN_EVENTS is
 * then only the upper bound). Each record's timestamp is the moment it came
 * due (not when it was produced), so a read_committed consumer measuring
 * receipt minus timestamp (okcat --latency-from-timestamp) counts the wait
 * for the previous commit too: the latency of a relay that has every event
 * in hand the moment it is committed and spends no time of its own, the
 * Kafka-side floor of the relay's latency on this machine
 * (bench/latency.sh).
 * KAFKA_CEILING_MODE says how transactions follow each other:
 *   one      (default) one producer, each transaction begins when the
 *            previous commit returned;
 *   ring     two producers (transactional ids .0 and .1) taking turns, still
 *            strictly one after the other: the relay's ring today
 *            (relay.producers_per_source, sink.c);
 *   overlap  two producers taking turns, and the next transaction's records
 *            are produced into the idle producer while the previous
 *            transaction commits. Its partitions of TOPIC are paused
 *            (rd_kafka_pause_partitions) until the previous transaction's
 *            records are all acknowledged (its flush returned), so nothing
 *            of the next one reaches a partition before the previous one's
 *            records there: per-key order holds. It commits only after the
 *            previous commit returned. What the relay could gain by
 *            pipelining its transactions this way (not built yet);
 *   unsafe   as overlap without the pause: the next transaction's records
 *            race the previous one's. Breaks per-key order (okcat --expect
 *            counts the violations); an upper bound only.
 * With KAFKA_CEILING_EXPECT=FILE it writes one line per record for
 * okcat --expect (id, key, topic, sequence number), so a run can be checked
 * for loss, duplicates and per-key order. KAFKA_CEILING_ID_BASE=B numbers
 * ids and sequence numbers from B (a second run after a first of B records
 * continues its ids and per-key order).
 * With KAFKA_CEILING_ORPHAN=1, after the last commit it begins one more
 * transaction, writes a record to every partition of TOPIC, waits for them
 * to be acknowledged and exits without committing or aborting: the open
 * transaction a killed producer leaves (until the broker aborts it after
 * transaction.timeout.ms it holds back every partition's last stable
 * offset; okcat's --stable-wait-ms is tested with it).
 * Exit 0, or 1 on any Kafka error.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int failed(const char *what, rd_kafka_error_t *err)
{
    fprintf(stderr, "kafka_ceiling: %s: %s\n", what, rd_kafka_error_string(err));
    rd_kafka_error_destroy(err);
    return 1;
}

/* The value of the first record of partition 0 of topic (read_committed). */
static char *first_value(const char *bootstrap, const char *topic, long *len)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", bootstrap, err, sizeof(err)) ||
        rd_kafka_conf_set(conf, "group.id", "kafka-ceiling", err, sizeof(err)) ||
        rd_kafka_conf_set(conf, "isolation.level", "read_committed", err, sizeof(err))) {
        fprintf(stderr, "kafka_ceiling: %s\n", err);
        return NULL;
    }
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!c) {
        fprintf(stderr, "kafka_ceiling: %s\n", err);
        return NULL;
    }
    rd_kafka_topic_partition_list_t *tp = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(tp, topic, 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(c, tp);
    rd_kafka_topic_partition_list_destroy(tp);
    char *v = NULL;
    int64_t until = now_us() + 15000000;
    while (!v && now_us() < until) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 500);
        if (!m)
            continue;
        if (!m->err && (v = malloc(m->len + 1))) {
            memcpy(v, m->payload, m->len);
            *len = (long)m->len;
        }
        rd_kafka_message_destroy(m);
    }
    if (!v)
        fprintf(stderr, "kafka_ceiling: no record read from %s [0]\n", topic);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return v;
}

static int delivery_errors;

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err && delivery_errors++ == 0)
        fprintf(stderr, "kafka_ceiling: delivery: %s\n", rd_kafka_err2str(m->err));
}

enum mode { MODE_ONE, MODE_RING, MODE_OVERLAP, MODE_UNSAFE };

/* One producer of the ring and the commit of its transaction, which in the
 * overlapping modes runs in a thread of its own. */
typedef struct prod {
    rd_kafka_t *rk;
    pthread_t th;
    bool committing;     /* th runs (joined before the next use) */
    atomic_bool flushed; /* every record of its transaction is acknowledged */
    rd_kafka_error_t *err;
} prod_t;

static void *commit_thread(void *arg)
{
    prod_t *p = arg;
    /* commit_transaction flushes too; flushing first tells the next
     * transaction when it may send. */
    rd_kafka_flush(p->rk, 60000);
    atomic_store(&p->flushed, true);
    p->err = rd_kafka_commit_transaction(p->rk, 60000);
    return NULL;
}

/* Waits for p's commit (if one runs); 1 when it failed. */
static int join_commit(prod_t *p)
{
    if (!p->committing)
        return 0;
    pthread_join(p->th, NULL);
    p->committing = false;
    if (p->err) {
        rd_kafka_error_t *e = p->err;
        p->err = NULL;
        return failed("commit_transaction", e);
    }
    return 0;
}

static rd_kafka_t *new_producer(int argc, char **argv, const char *txnid)
{
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err, sizeof(err)) ||
        rd_kafka_conf_set(conf, "transactional.id", txnid, err, sizeof(err)) ||
        rd_kafka_conf_set(conf, "queue.buffering.max.kbytes", "65536", err, sizeof(err))) {
        fprintf(stderr, "kafka_ceiling: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    for (int i = 6; i < argc; i++) {
        char kv[512];
        snprintf(kv, sizeof(kv), "%s", argv[i]);
        char *eq = strchr(kv, '=');
        if (!eq) {
            fprintf(stderr, "kafka_ceiling: %s: expected prop=val\n", argv[i]);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
        *eq = '\0';
        if (rd_kafka_conf_set(conf, kv, eq + 1, err, sizeof(err))) {
            fprintf(stderr, "kafka_ceiling: %s\n", err);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "kafka_ceiling: %s\n", err);
        return NULL;
    }
    rd_kafka_error_t *e = rd_kafka_init_transactions(rk, 30000);
    if (e) {
        failed("init_transactions", e);
        rd_kafka_destroy(rk);
        return NULL;
    }
    return rk;
}

/* TOPIC's partitions, for pausing them. */
static rd_kafka_topic_partition_list_t *topic_partitions(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_topic_partition_list_t *l = NULL;
    if (rkt && rd_kafka_metadata(rk, 0, rkt, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        md->topic_cnt == 1 && !md->topics[0].err) {
        l = rd_kafka_topic_partition_list_new(md->topics[0].partition_cnt);
        for (int i = 0; i < md->topics[0].partition_cnt; i++)
            rd_kafka_topic_partition_list_add(l, topic, md->topics[0].partitions[i].id);
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    if (rkt)
        rd_kafka_topic_destroy(rkt);
    if (!l)
        fprintf(stderr, "kafka_ceiling: no metadata for topic %s\n", topic);
    return l;
}

/* KAFKA_CEILING_ORPHAN: see the top. Does not return on success. */
static int leave_open(rd_kafka_t *rk, const char *topic, FILE *expect, const char *expect_path)
{
    if (expect && fclose(expect) != 0) {
        perror(expect_path);
        return 2;
    }
    rd_kafka_topic_partition_list_t *parts = topic_partitions(rk, topic);
    if (!parts)
        return 1;
    rd_kafka_error_t *e = rd_kafka_begin_transaction(rk);
    if (e)
        return failed("begin_transaction", e);
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_resp_err_t r = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(parts->elems[i].partition),
            RD_KAFKA_V_KEY("orphan", 6), RD_KAFKA_V_VALUE("never committed", 15),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (r) {
            fprintf(stderr, "kafka_ceiling: produce: %s\n", rd_kafka_err2str(r));
            return 1;
        }
    }
    if (rd_kafka_flush(rk, 30000) || delivery_errors) {
        fprintf(stderr, "kafka_ceiling: the open transaction's records were not acknowledged\n");
        return 1;
    }
    printf("kafka_ceiling: left a transaction open on %d partition(s) of %s\n", parts->cnt, topic);
    fflush(stdout);
    _exit(0); /* no destroy: it would abort the transaction */
}

/* Asks rk for topic's metadata now: librdkafka 2.0 would otherwise fetch
 * it only at its next topic scan (once a second) after the first record,
 * a wait of up to 1 s per producer and topic inside the timed run. */
static void warm(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    if (rkt && rd_kafka_metadata(rk, 0, rkt, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_metadata_destroy(md);
    if (rkt)
        rd_kafka_topic_destroy(rkt);
}

/* A copy of l for rk. A list remembers the partition objects of the
 * producer it was first used with (librdkafka 2.0 caches them in it), so
 * each producer pauses and resumes through a list of its own. */
static rd_kafka_topic_partition_list_t *list_for(const rd_kafka_topic_partition_list_t *l)
{
    rd_kafka_topic_partition_list_t *c = rd_kafka_topic_partition_list_new(l->cnt);
    for (int i = 0; i < l->cnt; i++)
        rd_kafka_topic_partition_list_add(c, l->elems[i].topic, l->elems[i].partition);
    return c;
}

/* Pauses every partition of l on rk; false when rk does not know one of
 * them yet (its first transaction): then it must not send early either. */
static bool pause_all(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *l)
{
    rd_kafka_pause_partitions(rk, l);
    bool all = true;
    for (int i = 0; i < l->cnt; i++)
        all = all && !l->elems[i].err;
    if (!all)
        rd_kafka_resume_partitions(rk, l);
    return all;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: kafka_ceiling BOOTSTRAP TOPIC N VALUE_BYTES TXN_EVENTS "
                        "[prop=val]...\n");
        return 2;
    }
    const char *topic = argv[2];
    long n = atol(argv[3]), vbytes = 0, txn = atol(argv[5]);
    const char *mode_env = getenv("KAFKA_CEILING_MODE");
    enum mode mode = MODE_ONE;
    if (mode_env && strcmp(mode_env, "ring") == 0)
        mode = MODE_RING;
    else if (mode_env && strcmp(mode_env, "overlap") == 0)
        mode = MODE_OVERLAP;
    else if (mode_env && strcmp(mode_env, "unsafe") == 0)
        mode = MODE_UNSAFE;
    else if (mode_env && *mode_env && strcmp(mode_env, "one") != 0) {
        fprintf(stderr,
                "kafka_ceiling: KAFKA_CEILING_MODE=%s: expected one, ring, overlap or "
                "unsafe\n",
                mode_env);
        return 2;
    }
    char *value;
    if (strncmp(argv[4], "from:", 5) == 0) {
        if (!(value = first_value(argv[1], argv[4] + 5, &vbytes)))
            return 1;
    } else {
        vbytes = atol(argv[4]);
        if (vbytes < 0 || !(value = malloc((size_t)vbytes + 1)))
            return 2;
        unsigned vs = 7; /* random hex, like the benches' md5 payloads */
        for (long i = 0; i < vbytes; i++)
            value[i] = "0123456789abcdef"[rand_r(&vs) % 16];
    }
    if (n <= 0 || txn <= 0) {
        fprintf(stderr, "kafka_ceiling: N and TXN_EVENTS must be > 0\n");
        return 2;
    }
    FILE *expect = NULL;
    const char *expect_path = getenv("KAFKA_CEILING_EXPECT");
    if (expect_path && *expect_path && !(expect = fopen(expect_path, "w"))) {
        perror(expect_path);
        return 2;
    }
    char txnid[64], cktopic[300];
    snprintf(cktopic, sizeof(cktopic), "%s.ck", topic);
    int n_prods = mode == MODE_ONE ? 1 : 2;
    prod_t prods[2] = {0};
    for (int i = 0; i < n_prods; i++) {
        snprintf(txnid, sizeof(txnid), "kafka-ceiling.%ld.%d", (long)getpid(), i);
        if (!(prods[i].rk = new_producer(argc, argv, txnid)))
            return 2;
        atomic_init(&prods[i].flushed, false);
    }
    rd_kafka_topic_partition_list_t *parts = NULL, *own[2] = {NULL, NULL};
    if (mode == MODE_OVERLAP) {
        if (!(parts = topic_partitions(prods[0].rk, topic)))
            return 1;
        for (int i = 0; i < n_prods; i++)
            own[i] = list_for(parts);
    }
    for (int i = 0; i < n_prods; i++) {
        warm(prods[i].rk, topic);
        warm(prods[i].rk, cktopic);
    }
    rd_kafka_error_t *e;
    unsigned seed = 1;
    long done = 0, txns = 0, overlapped = 0;
    int cur = 0;
    const char *base_env = getenv("KAFKA_CEILING_ID_BASE");
    long id_base = base_env ? atol(base_env) : 0;
    const char *rate_env = getenv("KAFKA_CEILING_RATE");
    double rate = rate_env ? atof(rate_env) : 0;
    int64_t t0 = now_us();
    struct timespec w0;
    clock_gettime(CLOCK_REALTIME, &w0);
    int64_t wall0_ms = (int64_t)w0.tv_sec * 1000 + w0.tv_nsec / 1000000;
    while (done < n) {
        prod_t *p = &prods[cur], *prev = &prods[(cur + n_prods - 1) % n_prods];
        rd_kafka_t *rk = p->rk;
        long upto = done + txn < n ? done + txn : n;
        if (rate > 0) {
            /* Records due by now (a steady arrival rate), at least one. */
            long due = (long)((double)(now_us() - t0) / 1e6 * rate);
            if (due <= done) {
                int64_t next = t0 + (int64_t)((double)(done + 1) * 1e6 / rate);
                int64_t wait = next - now_us();
                if (wait > 0)
                    usleep((useconds_t)wait);
                rd_kafka_poll(rk, 0);
                continue;
            }
            if (due < upto)
                upto = due;
        }
        if (join_commit(p)) /* its own previous transaction */
            return 1;
        /* While the previous transaction commits on the other producer,
         * this one's records wait in librdkafka (paused partitions) until
         * the previous ones are acknowledged; if this producer cannot pause
         * yet, it waits for that before producing at all. */
        bool paused = false;
        if (prev != p && prev->committing && mode == MODE_OVERLAP) {
            paused = pause_all(rk, own[cur]);
            while (!paused && !atomic_load(&prev->flushed))
                usleep(100);
            if (paused)
                overlapped++;
        }
        if ((e = rd_kafka_begin_transaction(rk)))
            return failed("begin_transaction", e);
        for (; done < upto; done++) {
            char key[32], id[64];
            int klen = snprintf(key, sizeof(key), "order-%d", 1 + (int)(rand_r(&seed) % 1000));
            snprintf(id, sizeof(id), "00000000-0000-4000-8000-%012ld", id_base + done);
            if (expect)
                fprintf(expect, "%s\t%s\t%s\t%ld\n", id, key, topic, id_base + done);
            rd_kafka_headers_t *h = rd_kafka_headers_new(2);
            rd_kafka_header_add(h, "id", 2, id, 36);
            rd_kafka_header_add(h, "type", 4, "OrderCreated", 12);
            for (;;) {
                rd_kafka_resp_err_t r = rd_kafka_producev(
                    rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, (size_t)klen),
                    RD_KAFKA_V_VALUE(value, (size_t)vbytes),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                    RD_KAFKA_V_TIMESTAMP(rate > 0 ? wall0_ms + (int64_t)((double)done * 1e3 / rate)
                                                  : 0),
                    RD_KAFKA_V_END);
                if (r == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                    rd_kafka_poll(rk, 10);
                    continue;
                }
                if (r) {
                    rd_kafka_headers_destroy(h);
                    fprintf(stderr, "kafka_ceiling: produce: %s\n", rd_kafka_err2str(r));
                    return 1;
                }
                break;
            }
            if (paused && atomic_load(&prev->flushed)) {
                rd_kafka_resume_partitions(rk, own[cur]);
                paused = false;
            }
            rd_kafka_poll(rk, 0);
        }
        while (paused && !atomic_load(&prev->flushed))
            usleep(100);
        if (paused)
            rd_kafka_resume_partitions(rk, own[cur]);
        /* The checkpoint record goes out after the previous transaction's
         * records are acknowledged (overlap: the wait above). */
        if (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(cktopic), RD_KAFKA_V_KEY("ck", 2),
                              RD_KAFKA_V_VALUE("checkpoint-record-of-about-200-bytes", 36),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END)) {
            fprintf(stderr, "kafka_ceiling: produce checkpoint failed\n");
            return 1;
        }
        /* A transaction commits only after the one before it did. */
        if (prev != p && join_commit(prev))
            return 1;
        if (mode == MODE_OVERLAP || mode == MODE_UNSAFE) {
            atomic_store(&p->flushed, false);
            p->committing = true;
            if (pthread_create(&p->th, NULL, commit_thread, p) != 0) {
                fprintf(stderr, "kafka_ceiling: pthread_create failed\n");
                return 1;
            }
        } else if ((e = rd_kafka_commit_transaction(rk, 60000))) {
            return failed("commit_transaction", e);
        }
        txns++;
        cur = (cur + 1) % n_prods;
    }
    for (int i = 0; i < n_prods; i++)
        if (join_commit(&prods[i]))
            return 1;
    const char *orphan_env = getenv("KAFKA_CEILING_ORPHAN");
    if (orphan_env && atoi(orphan_env) > 0)
        return leave_open(prods[0].rk, topic, expect, expect_path);
    int64_t us = now_us() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_ms = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
                    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
    /* The lists hold references to the producers' partitions: first. */
    if (parts) {
        rd_kafka_topic_partition_list_destroy(parts);
        for (int i = 0; i < n_prods; i++)
            rd_kafka_topic_partition_list_destroy(own[i]);
    }
    for (int i = 0; i < n_prods; i++)
        rd_kafka_destroy(prods[i].rk);
    free(value);
    if (expect && fclose(expect) != 0) {
        perror(expect_path);
        return 2;
    }
    if (delivery_errors)
        return 1;
    double s = (double)us / 1e6;
    printf("kafka_ceiling: events=%ld value_bytes=%ld ms=%.0f events_per_s=%.0f mb_per_s=%.1f "
           "transactions=%ld mode=%s overlapped=%ld cpu_ms=%.0f\n",
           n, vbytes, s * 1000, (double)n / s, (double)n * (double)vbytes / s / 1e6, txns,
           mode == MODE_ONE       ? "one"
           : mode == MODE_RING    ? "ring"
           : mode == MODE_OVERLAP ? "overlap"
                                  : "unsafe",
           overlapped, cpu_ms);
    return 0;
}

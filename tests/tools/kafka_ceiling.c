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
 * the given properties. Prints one line:
 *   kafka_ceiling: events=N ms=X events_per_s=X mb_per_s=X transactions=N
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
 * Exit 0, or 1 on any Kafka error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: kafka_ceiling BOOTSTRAP TOPIC N VALUE_BYTES TXN_EVENTS "
                        "[prop=val]...\n");
        return 2;
    }
    const char *topic = argv[2];
    long n = atol(argv[3]), vbytes = 0, txn = atol(argv[5]);
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
    char err[512], txnid[64], cktopic[300];
    snprintf(txnid, sizeof(txnid), "kafka-ceiling.%ld", (long)getpid());
    snprintf(cktopic, sizeof(cktopic), "%s.ck", topic);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err, sizeof(err)) ||
        rd_kafka_conf_set(conf, "transactional.id", txnid, err, sizeof(err)) ||
        rd_kafka_conf_set(conf, "queue.buffering.max.kbytes", "65536", err, sizeof(err))) {
        fprintf(stderr, "kafka_ceiling: %s\n", err);
        return 2;
    }
    for (int i = 6; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "kafka_ceiling: %s: expected prop=val\n", argv[i]);
            return 2;
        }
        *eq = '\0';
        if (rd_kafka_conf_set(conf, argv[i], eq + 1, err, sizeof(err))) {
            fprintf(stderr, "kafka_ceiling: %s\n", err);
            return 2;
        }
    }
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "kafka_ceiling: %s\n", err);
        return 2;
    }
    rd_kafka_error_t *e = rd_kafka_init_transactions(rk, 30000);
    if (e)
        return failed("init_transactions", e);
    unsigned seed = 1;
    long done = 0, txns = 0;
    const char *rate_env = getenv("KAFKA_CEILING_RATE");
    double rate = rate_env ? atof(rate_env) : 0;
    int64_t t0 = now_us();
    struct timespec w0;
    clock_gettime(CLOCK_REALTIME, &w0);
    int64_t wall0_ms = (int64_t)w0.tv_sec * 1000 + w0.tv_nsec / 1000000;
    while (done < n) {
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
        if ((e = rd_kafka_begin_transaction(rk)))
            return failed("begin_transaction", e);
        for (; done < upto; done++) {
            char key[32], id[64];
            int klen = snprintf(key, sizeof(key), "order-%d", 1 + (int)(rand_r(&seed) % 1000));
            snprintf(id, sizeof(id), "00000000-0000-4000-8000-%012ld", done);
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
            rd_kafka_poll(rk, 0);
        }
        if (rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(cktopic), RD_KAFKA_V_KEY("ck", 2),
                              RD_KAFKA_V_VALUE("checkpoint-record-of-about-200-bytes", 36),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END)) {
            fprintf(stderr, "kafka_ceiling: produce checkpoint failed\n");
            return 1;
        }
        if ((e = rd_kafka_commit_transaction(rk, 60000)))
            return failed("commit_transaction", e);
        txns++;
    }
    int64_t us = now_us() - t0;
    rd_kafka_destroy(rk);
    free(value);
    if (delivery_errors)
        return 1;
    double s = (double)us / 1e6;
    printf("kafka_ceiling: events=%ld value_bytes=%ld ms=%.0f events_per_s=%.0f mb_per_s=%.1f "
           "transactions=%ld\n",
           n, vbytes, s * 1000, (double)n / s, (double)n * (double)vbytes / s / 1e6, txns);
    return 0;
}

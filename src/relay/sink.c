/*
 * Kafka transactional sink (see sink.h). Error classification follows
 * librdkafka's examples/transactions.c: fatal -> stop, txn_requires_abort ->
 * abort and rewind, retriable -> retry the same call.
 */
#include "outboxd/relay/sink.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "outboxd/common/log.h"
#include "outboxd/relay/ckstore.h"
#include "outboxd/relay/connhint.h"

/* How long one blocking transactional call may take before we retry it
 * (keeping the replication connection alive in between). */
#define TXN_CALL_TIMEOUT_MS 10000
#define MAX_PRODUCERS       4
/* A producer's first metadata request for a topic (warm_producer). */
#define WARM_TIMEOUT_MS 2000

/* A small set of topic names (linear: a relay writes to a handful). */
typedef struct topic_set {
    char **names;
    size_t n, cap;
} topic_set_t;

static bool set_has(const topic_set_t *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->names[i], name) == 0)
            return true;
    return false;
}

static void set_add(topic_set_t *t, const char *name)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **k = realloc(t->names, cap * sizeof(*k));
        if (!k)
            return; /* only a cache: asked again next time */
        t->names = k;
        t->cap = cap;
    }
    char *dup = strdup(name);
    if (dup)
        t->names[t->n++] = dup;
}

static void set_remove(topic_set_t *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++) {
        if (strcmp(t->names[i], name) == 0) {
            free(t->names[i]);
            t->names[i] = t->names[--t->n];
            return;
        }
    }
}

static void set_clear(topic_set_t *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->names[i]);
    t->n = 0;
}

static void set_free(topic_set_t *t)
{
    set_clear(t);
    free(t->names);
    t->names = NULL;
    t->cap = 0;
}

/*
 * Why several producers: right after EndTxn the broker's transaction
 * coordinator is still writing commit markers, and an AddPartitionsToTxn for
 * the next transaction of the same transactional.id is answered with
 * CONCURRENT_TRANSACTIONS, which librdkafka 2.0 retries after a fixed 20 ms.
 * Back-to-back transactions therefore cost 20 ms each. Using a small ring of
 * producers (transactional.id <prefix>.<source>, <prefix>.<source>.1, ...)
 * in turn gives each one a whole commit cycle to settle. Transactions are
 * still strictly sequential (the next one begins only after the previous
 * commit returned), so events keep their order in every partition, and the
 * checkpoint records of all producers land in one partition (same key) in
 * commit order. init_transactions on every id fences every producer of an
 * older instance.
 */
struct outboxd_sink {
    const outboxd_config_t *conf;
    const outboxd_source_conf_t *src;
    rd_kafka_t *rk; /* the producer of the current/next transaction */
    rd_kafka_t *rks[MAX_PRODUCERS];
    int n_rks;
    int cur;
    bool rk_ready[MAX_PRODUCERS]; /* init_transactions of rks[i] has returned success */
    /* The ids above n_rks (see outboxd_sink_init): a throw-away producer
     * each while its init_transactions runs, and whether it has fenced. */
    rd_kafka_t *fence_rks[MAX_PRODUCERS];
    bool fence_done[MAX_PRODUCERS];
    char txnid[256];  /* of rks[0]; the others append .1, .2, ... */
    char ck_key[256]; /* the checkpoint's key; empty: the source's name */
    char txnids[MAX_PRODUCERS][300];
    /* Records of the open transaction are numbered 1, 2, ... in produce
     * order (the number rides as the message opaque). refused_seq is the
     * record the broker refused for a reason retrying cannot fix, so the
     * source can dead-letter it after the rewind instead of looping. */
    uint64_t seq;
    uint64_t refused_seq;
    size_t refused_size;
    char refused_reason[256];
    uint64_t n_refused; /* records refused for good in the open transaction */
    /* The broker refused a record of the open transaction (a delivery
     * report, not a local refusal): its producer is replaced after the abort
     * (see refresh_producer). */
    bool broker_refused;
    uint64_t ck_seq; /* number of the checkpoint record; 0 before commit */
    bool ck_refused; /* Kafka refused the checkpoint record itself */
    char ck_refused_reason[256];
    /* Replaying a transaction whose refused records could not be told apart
     * (a whole batch refused): every record waits for its delivery report
     * before the next is produced, so a refusal names exactly one record. */
    bool one_by_one;
    /* Topics seen to exist (names), so that only a new name costs a
     * metadata request; missing_topic is one a delivery failed for as
     * unknown (deleted while in use). */
    topic_set_t known;
    char missing_topic[256];
    /* Per producer of rks[] (a pool holder: rks[0]), the topics it has
     * metadata for (see warm_producer). */
    topic_set_t warm[MAX_PRODUCERS];
    /* A fatal producer-state error another producer can recover from (see
     * recoverable_fatal): the producers are recreated at the API boundary. */
    bool reset_needed;
    /* The last fatal error was fencing: see outboxd_sink_fenced. */
    bool fenced;
    bool initialized;
    bool in_txn;
    outboxd_keepalive_cb keepalive;
    void *opaque;
    atomic_int *stop;
    outboxd_buf_t ckbuf;
    /* Pool mode: the pool, and the slot borrowed for the transaction in
     * hand (NULL between transactions; s->rk is its producer meanwhile). */
    outboxd_sink_pool_t *pool;
    struct pool_slot *slot;
    outboxd_ckstore_t *ckstore; /* own producers: this source's reader (lazily) */
    /* A pool producer's holder (the opaque of its callbacks): the sink whose
     * transaction uses the producer now, NULL while it is free. Written by
     * the borrowing thread only, which is also the one polling it. */
    outboxd_sink_t *borrower;
    /* The last TLS/SASL failure logged at ERROR (error_cb): librdkafka
     * reports every reconnect attempt, so repeats within 30 s only count. */
    char conn_hint[512];
    int64_t conn_hint_ms;
    unsigned conn_hint_repeats;
};

/* The checkpoint's key in the checkpoint topic. */
static const char *ck_key(const outboxd_sink_t *s)
{
    return s->ck_key[0] ? s->ck_key : s->src->name;
}

/* Pool mode (see sink.h and the pool section below). */
typedef struct pool_slot {
    outboxd_sink_t *holder; /* owns the producer (holder->rk) and its transactional.id */
    bool busy;              /* borrowed (or polled while idle) */
    bool ready;             /* init_transactions done for the current producer */
    bool broken;            /* hit a fatal error: replace the producer before use */
} pool_slot_t;

typedef enum { POOL_NEW, POOL_STARTING, POOL_READY } pool_state_t;

struct outboxd_sink_pool {
    const outboxd_config_t *conf;
    atomic_int *stop;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a slot became free, or the start ended */
    pool_slot_t *slots;
    int n;
    int next; /* where the search for a free slot starts (round robin) */
    pool_state_t state;
    atomic_llong polled_ms;     /* when idle producers were last polled */
    atomic_int waiting;         /* sources waiting in borrow() for a producer */
    outboxd_ckstore_t *ckstore; /* one checkpoint read serves many sources */
};

static outboxd_sink_status_t borrow(outboxd_sink_t *s, char *errstr, size_t errstr_size);
static void release(outboxd_sink_t *s);
static void pool_poll_idle(outboxd_sink_pool_t *p);
static outboxd_sink_status_t pool_start(outboxd_sink_t *s, char *errstr, size_t errstr_size);
static int replace_slot_producer(outboxd_sink_t *s, char *errstr, size_t errstr_size);
static int replace_slot_producer_as(outboxd_sink_t *s, bool routine, char *errstr,
                                    size_t errstr_size);

/* The sink a producer's callback reports to: its own, or for a pool
 * producer the sink that borrowed it (see outboxd_sink_pool_t). */
static outboxd_sink_t *cb_sink(void *opaque)
{
    outboxd_sink_t *s = opaque;
    return s->borrower ? s->borrower : s;
}

static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    outboxd_sink_t *s = cb_sink(opaque);
    (void)rk;
    /* A TLS or SASL failure does not heal by retrying: ERROR, with the
     * property to fix instead of librdkafka's wording (kept at debug). Only
     * for these codes: a broker restarting also cuts handshakes short
     * (_TRANSPORT), which is routine. */
    char hint[512];
    if ((err == RD_KAFKA_RESP_ERR__SSL || err == RD_KAFKA_RESP_ERR__AUTHENTICATION) &&
        outboxd_connhint_kafka(reason, hint, sizeof(hint))) {
        int64_t now = outboxd_now_ms();
        LOG_DEBUG(s->src->name, "kafka: %s", reason);
        if (strcmp(hint, s->conn_hint) == 0 && now - s->conn_hint_ms < 30000) {
            s->conn_hint_repeats++;
            return;
        }
        if (s->conn_hint_repeats && strcmp(hint, s->conn_hint) == 0)
            LOG_ERROR(s->src->name, "kafka: %s (%u more time(s) in the last %lld s)", hint,
                      s->conn_hint_repeats, (long long)((now - s->conn_hint_ms) / 1000));
        else
            LOG_ERROR(s->src->name, "kafka: %s", hint);
        snprintf(s->conn_hint, sizeof(s->conn_hint), "%s", hint);
        s->conn_hint_ms = now;
        s->conn_hint_repeats = 0;
        return;
    }
    /* Transport errors while the broker restarts are routine and retried by
     * librdkafka; fatal ones are reported by the failing call too. */
    if (err == RD_KAFKA_RESP_ERR__FATAL)
        LOG_ERROR(s->src->name, "kafka fatal error: %s", reason);
    else if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || err == RD_KAFKA_RESP_ERR__TRANSPORT)
        LOG_DEBUG(s->src->name, "kafka: %s", reason);
    else
        LOG_WARN(s->src->name, "kafka: %s: %s", rd_kafka_err2name(err), reason);
}

/* Delivery failures surface as an abortable commit_transaction error; the
 * callback is registered because librdkafka's flush inside
 * commit_transaction wakes up on delivery reports instead of polling in
 * 10 ms steps, which shortens every commit by several milliseconds. */
static bool refused_for_good(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
        return true;
    default:
        return false;
    }
}

/* Remembers a refused record. Of several (a whole batch refused as too
 * large: max.message.bytes applies to a batch), the largest is reported, and
 * the count tells the caller it cannot be sure (outboxd_sink_refused). */
static void note_refused(outboxd_sink_t *s, uint64_t seq, size_t size, rd_kafka_resp_err_t err,
                         const char *topic)
{
    if (seq && seq == s->ck_seq) {
        s->ck_refused = true;
        snprintf(s->ck_refused_reason, sizeof(s->ck_refused_reason),
                 "Kafka refused the checkpoint record for %s: %s", topic, rd_kafka_err2str(err));
        return;
    }
    s->n_refused++;
    if (s->refused_seq && size <= s->refused_size)
        return;
    s->refused_seq = seq;
    s->refused_size = size;
    snprintf(s->refused_reason, sizeof(s->refused_reason), "Kafka refused the record for %s: %s",
             topic, rd_kafka_err2str(err));
}

static bool unknown_topic(rd_kafka_resp_err_t err)
{
    return err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
           err == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
}

static void forget_topic(outboxd_sink_t *s, const char *topic)
{
    set_remove(&s->known, topic);
}

/*
 * After a transaction failed (aborted, or its producer replaced): every
 * topic is looked up again before its next record. A topic deleted under
 * the relay does not always fail with an unknown-topic delivery report: the
 * transaction's checkpoint record may time out first (CI, pool mode), and
 * a replay that trusted the old answer produced to the deleted topic until
 * the transaction outlived transaction.timeout.ms and the producer was
 * fenced. One metadata request per topic after a failure is cheap.
 */
static void forget_topics(outboxd_sink_t *s)
{
    set_clear(&s->known);
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    outboxd_sink_t *s = cb_sink(opaque);
    (void)rk;
    if (!m->err || !m->_private)
        return;
    const char *topic = rd_kafka_topic_name(m->rkt);
    if (refused_for_good(m->err)) {
        note_refused(s, (uint64_t)(uintptr_t)m->_private, m->len + m->key_len, m->err, topic);
        s->broker_refused = true;
    } else if (unknown_topic(m->err)) {
        /* Deleted while in use: checked again (and reported) on replay. */
        forget_topic(s, topic);
        snprintf(s->missing_topic, sizeof(s->missing_topic), "%s", topic);
    }
}

/*
 * librdkafka statistics (only when kafka.properties sets
 * statistics.interval.ms): one debug line per interval with what explains a
 * drain rate or a commit time: per broker the request round trip, the time
 * records wait in librdkafka's queue before a request is built and in the
 * output buffer, and the requests sent so far per type; per topic the mean batch
 * (records and bytes per partition request). Times in ms.
 */
static double window(json_t *o, const char *key, const char *field)
{
    return json_number_value(json_object_get(json_object_get(o, key), field)) / 1000.0;
}

static int stats_cb(rd_kafka_t *rk, char *json, size_t json_len, void *opaque)
{
    outboxd_sink_t *s = cb_sink(opaque);
    (void)rk;
    if (outboxd_log_get_level() > OUTBOXD_LOG_DEBUG)
        return 0;
    json_t *root = json_loadb(json, json_len, 0, NULL);
    if (!root)
        return 0;
    char line[4096];
    size_t n = 0;
    n += (size_t)snprintf(line + n, sizeof(line) - n, "%s: msgs in queue %lld, sent %lld",
                          json_string_value(json_object_get(root, "name")),
                          (long long)json_integer_value(json_object_get(root, "msg_cnt")),
                          (long long)json_integer_value(json_object_get(root, "txmsgs")));
    const char *key;
    json_t *b;
    json_object_foreach(json_object_get(root, "brokers"), key, b)
    {
        if (json_integer_value(json_object_get(b, "nodeid")) < 0 || n >= sizeof(line))
            continue;
        n += (size_t)snprintf(
            line + n, sizeof(line) - n,
            "; broker %lld: rtt avg %.1f p99 %.1f max %.1f, queue wait avg %.1f p99 %.1f, "
            "outbuf avg %.1f, produce requests %lld",
            (long long)json_integer_value(json_object_get(b, "nodeid")), window(b, "rtt", "avg"),
            window(b, "rtt", "p99"), window(b, "rtt", "max"), window(b, "int_latency", "avg"),
            window(b, "int_latency", "p99"), window(b, "outbuf_latency", "avg"),
            (long long)json_integer_value(json_object_get(json_object_get(b, "req"), "Produce")));
        /* Every request type sent so far (cumulative): what the client asks
         * of the broker besides producing (metadata, transaction calls). */
        const char *api;
        json_t *cnt;
        json_object_foreach(json_object_get(b, "req"), api, cnt)
        {
            if (json_integer_value(cnt) > 0 && n < sizeof(line))
                n += (size_t)snprintf(line + n, sizeof(line) - n, ", %s %lld", api,
                                      (long long)json_integer_value(cnt));
        }
    }
    json_t *t;
    json_object_foreach(json_object_get(root, "topics"), key, t)
    {
        if (n >= sizeof(line))
            break;
        json_t *bs = json_object_get(t, "batchsize"), *bc = json_object_get(t, "batchcnt");
        if (!json_integer_value(json_object_get(bc, "cnt")))
            continue;
        n += (size_t)snprintf(line + n, sizeof(line) - n,
                              "; topic %s: batch avg %lld records %lld bytes", key,
                              (long long)json_integer_value(json_object_get(bc, "avg")),
                              (long long)json_integer_value(json_object_get(bs, "avg")));
    }
    LOG_DEBUG(s->src->name, "kafka stats %s", line);
    json_decref(root);
    return 0;
}

/* The source of the throw-away clients outboxd_sink_check_conf builds. */
static char check_name[] = "kafka";
static const outboxd_source_conf_t check_src = {.name = check_name};

static void log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    const outboxd_sink_t *s = rk ? rd_kafka_opaque(rk) : NULL;
    if (s && s->src == &check_src) {
        /* A configuration check: its client is destroyed at once, so that
         * the broker is down or slow says nothing yet. */
        LOG_DEBUG("kafka", "%s: %s", fac, buf);
        return;
    }
    if (strcmp(fac, "FAIL") == 0)
        LOG_DEBUG("kafka", "%s: %s", fac, buf); /* error_cb reports these too */
    else if (level <= 3)
        LOG_ERROR("kafka", "%s: %s", fac, buf);
    else if (level <= 4)
        LOG_WARN("kafka", "%s: %s", fac, buf);
    else
        LOG_DEBUG("kafka", "%s: %s", fac, buf);
}

static bool producer_only(const char *key)
{
    static const char *prefixes[] = {"compression.",
                                     "linger.",
                                     "batch.",
                                     "queue.buffering.",
                                     "acks",
                                     "request.required.acks",
                                     "enable.idempotence",
                                     "transaction",
                                     "message.timeout",
                                     "retries",
                                     "delivery.",
                                     "partitioner",
                                     "sticky."};
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++)
        if (strncmp(key, prefixes[i], strlen(prefixes[i])) == 0)
            return true;
    return false;
}

static int set(rd_kafka_conf_t *kc, const char *k, const char *v, char *errstr, size_t errstr_size)
{
    char e[512];
    if (rd_kafka_conf_set(kc, k, v, e, sizeof(e)) != RD_KAFKA_CONF_OK) {
        snprintf(errstr, errstr_size, "kafka property %s=%s: %s", k, v, e);
        return -1;
    }
    return 0;
}

void outboxd_sink_conf_defaults(rd_kafka_conf_t *kc)
{
    /* librdkafka 2.5.0 added client metrics pushed to a broker that asks
     * for them (KIP-714, enable.metrics.push, default true). The relay has
     * its own (/metrics), and the push's shutdown step made every
     * rd_kafka_destroy on 2.8.0 wait up to 1 s (its wake-up can come before
     * the wait begins), so a start took 2 s and a stop 1 s. Off here; a
     * kafka.properties entry, set after this, turns it back on. */
    if (rd_kafka_version() >= 0x02050000) {
        char e[256];
        (void)rd_kafka_conf_set(kc, "enable.metrics.push", "false", e, sizeof(e));
    }
}

/* Base config shared by the producer and the checkpoint reader: the user's
 * properties win over our defaults. */
static rd_kafka_conf_t *base_conf(const outboxd_config_t *conf, bool consumer, char *errstr,
                                  size_t errstr_size)
{
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    outboxd_sink_conf_defaults(kc);
    if (set(kc, "bootstrap.servers", conf->bootstrap_servers, errstr, errstr_size) < 0)
        goto fail;
    rd_kafka_conf_set_log_cb(kc, log_cb);
    for (size_t i = 0; i < conf->n_kafka_properties; i++) {
        const outboxd_kv_t *kv = &conf->kafka_properties[i];
        if (consumer && producer_only(kv->key))
            continue;
        if (set(kc, kv->key, kv->value, errstr, errstr_size) < 0)
            goto fail;
    }
    return kc;
fail:
    rd_kafka_conf_destroy(kc);
    return NULL;
}

static bool user_set(const outboxd_config_t *conf, const char *key)
{
    for (size_t i = 0; i < conf->n_kafka_properties; i++)
        if (strcmp(conf->kafka_properties[i].key, key) == 0)
            return true;
    return false;
}

static rd_kafka_t *new_producer(outboxd_sink_t *s, const char *txnid, char *errstr,
                                size_t errstr_size)
{
    const outboxd_config_t *conf = s->conf;
    rd_kafka_conf_t *kc = base_conf(conf, false, errstr, errstr_size);
    if (!kc)
        return NULL;
    if (set(kc, "transactional.id", txnid, errstr, errstr_size) < 0)
        goto fail;
    /* Bound what librdkafka may buffer: a huge PostgreSQL transaction is
     * split into Kafka transactions of max_batch_events, so this is only
     * reached with very large events. */
    if (!user_set(conf, "queue.buffering.max.kbytes") &&
        set(kc, "queue.buffering.max.kbytes", "65536", errstr, errstr_size) < 0)
        goto fail;
    rd_kafka_conf_set_error_cb(kc, error_cb);
    rd_kafka_conf_set_dr_msg_cb(kc, dr_msg_cb);
    if (user_set(conf, "statistics.interval.ms"))
        rd_kafka_conf_set_stats_cb(kc, stats_cb);
    rd_kafka_conf_set_opaque(kc, s);
    char e[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, e, sizeof(e));
    if (!rk) {
        snprintf(errstr, errstr_size, "creating Kafka producer: %s", e);
        goto fail;
    }
    return rk;
fail:
    rd_kafka_conf_destroy(kc);
    return NULL;
}

/* What every sink has, with producers of its own or borrowed: txnid is
 * <prefix>.<source> (own producers use it; it names the checkpoint reader). */
static outboxd_sink_t *sink_alloc(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                                  outboxd_keepalive_cb keepalive, void *opaque, atomic_int *stop,
                                  char *errstr, size_t errstr_size)
{
    outboxd_sink_t *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    s->conf = conf;
    s->src = src;
    s->keepalive = keepalive;
    s->opaque = opaque;
    s->stop = stop;
    snprintf(s->txnid, sizeof(s->txnid), "%s.%s", conf->transactional_id_prefix, src->name);
    return s;
}

outboxd_sink_t *outboxd_sink_new(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                                 outboxd_keepalive_cb keepalive, void *opaque, atomic_int *stop,
                                 char *errstr, size_t errstr_size)
{
    outboxd_sink_t *s = sink_alloc(conf, src, keepalive, opaque, stop, errstr, errstr_size);
    if (!s)
        return NULL;
    s->n_rks = conf->producers_per_source;
    if (s->n_rks < 1)
        s->n_rks = 1;
    if (s->n_rks > MAX_PRODUCERS)
        s->n_rks = MAX_PRODUCERS;
    for (int i = 0; i < MAX_PRODUCERS; i++) {
        if (i == 0)
            snprintf(s->txnids[i], sizeof(s->txnids[i]), "%s", s->txnid);
        else
            snprintf(s->txnids[i], sizeof(s->txnids[i]), "%s.%d", s->txnid, i);
    }
    for (int i = 0; i < s->n_rks; i++) {
        s->rks[i] = new_producer(s, s->txnids[i], errstr, errstr_size);
        if (!s->rks[i])
            goto fail;
    }
    /* The throw-away producers that fence the ids above the ring
     * (outboxd_sink_init) are created now too, so that their connections
     * are set up by the time they are used. */
    for (int i = s->n_rks; i < MAX_PRODUCERS; i++) {
        s->fence_rks[i] = new_producer(s, s->txnids[i], errstr, errstr_size);
        if (!s->fence_rks[i])
            goto fail;
    }
    s->rk = s->rks[0];
    LOG_DEBUG(src->name, "startup: producers created (%d, and %d to fence ids above)", s->n_rks,
              MAX_PRODUCERS - s->n_rks);
    return s;
fail:
    for (int i = 0; i < MAX_PRODUCERS; i++) {
        if (s->rks[i])
            rd_kafka_destroy(s->rks[i]);
        if (s->fence_rks[i])
            rd_kafka_destroy(s->fence_rks[i]);
    }
    free(s);
    return NULL;
}

outboxd_sink_t *outboxd_sink_new_pooled(outboxd_sink_pool_t *pool, const outboxd_config_t *conf,
                                        const outboxd_source_conf_t *src,
                                        outboxd_keepalive_cb keepalive, void *opaque,
                                        atomic_int *stop, char *errstr, size_t errstr_size)
{
    outboxd_sink_t *s = sink_alloc(conf, src, keepalive, opaque, stop, errstr, errstr_size);
    if (!s)
        return NULL;
    /* No producers of its own: s->rk is a pool producer while a
     * transaction is in hand. */
    s->pool = pool;
    return s;
}

void outboxd_sink_destroy(outboxd_sink_t *s)
{
    if (!s)
        return;
    if (s->rk && s->in_txn) {
        rd_kafka_error_t *err = rd_kafka_abort_transaction(s->rk, 5000);
        if (err) {
            rd_kafka_error_destroy(err);
            if (s->slot)
                s->slot->broken = true; /* the next borrower's init settles it */
        }
        s->in_txn = false;
    }
    release(s);
    for (int i = 0; i < s->n_rks; i++) {
        if (!s->rks[i])
            continue; /* a pool producer whose replacement failed */
        rd_kafka_flush(s->rks[i], 5000);
        rd_kafka_destroy(s->rks[i]);
    }
    for (int i = 0; i < MAX_PRODUCERS; i++)
        if (s->fence_rks[i])
            rd_kafka_destroy(s->fence_rks[i]);
    outboxd_buf_free(&s->ckbuf);
    outboxd_ckstore_destroy(s->ckstore);
    set_free(&s->known);
    for (int i = 0; i < MAX_PRODUCERS; i++)
        set_free(&s->warm[i]);
    free(s);
}

bool outboxd_sink_pool_contended(const outboxd_sink_t *s)
{
    return s->pool && atomic_load(&s->pool->waiting) > 0;
}

bool outboxd_sink_in_txn(const outboxd_sink_t *s)
{
    return s->in_txn;
}

void outboxd_sink_poll(outboxd_sink_t *s)
{
    for (int i = 0; i < s->n_rks; i++)
        rd_kafka_poll(s->rks[i], 0);
    if (s->slot)
        rd_kafka_poll(s->rk, 0);
    else if (s->pool)
        pool_poll_idle(s->pool);
}

/* After a transaction ended (committed or aborted): the next one goes to
 * the next producer of the ring. */
static void rotate(outboxd_sink_t *s)
{
    if (s->pool) {
        release(s); /* the next one borrows whichever producer is free */
        return;
    }
    s->cur = (s->cur + 1) % s->n_rks;
    s->rk = s->rks[s->cur];
}

/*
 * Fatal errors of the producer's own transactional state, seen when a topic
 * is deleted while a transaction uses it (AddPartitionsToTxn fails, then
 * librdkafka 2.0's abort ends in INVALID_TXN_STATE). A new producer with the
 * same transactional.id fences the old one and aborts what it left open, so
 * the source can rewind and go on. Fenced and authorization errors stay
 * fatal.
 */
static bool recoverable_fatal(rd_kafka_resp_err_t ferr)
{
    return ferr == RD_KAFKA_RESP_ERR_INVALID_TXN_STATE ||
           ferr == RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID ||
           ferr == RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER ||
           ferr == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_ID_MAPPING;
}

static bool is_fencing(rd_kafka_resp_err_t ferr)
{
    return ferr == RD_KAFKA_RESP_ERR__FENCED || ferr == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
           ferr == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;
}

/* Fencing of a pool id: the ids are the process's, not a source's, so
 * this is another process with the same prefix (or, rarely, a transaction
 * that outlived transaction.timeout.ms). */
static void pool_fenced_error(const outboxd_sink_t *s, const char *what, const char *reason,
                              char *errstr, size_t errstr_size)
{
    snprintf(errstr, errstr_size,
             "%s: pool producer '%s' was fenced (%s): another process runs with "
             "kafka.transactional_id_prefix '%s' and relay.kafka_producers (or the broker "
             "aborted a transaction that outlived transaction.timeout.ms); give every relay "
             "process its own kafka.transactional_id_prefix",
             what, s->slot->holder->txnid, reason, s->conf->transactional_id_prefix);
}

/* Maps a transactional API error to a status, logging it. */
static outboxd_sink_status_t classify(outboxd_sink_t *s, rd_kafka_error_t *err, const char *what,
                                      char *errstr, size_t errstr_size)
{
    snprintf(errstr, errstr_size, "%s: %s", what, rd_kafka_error_string(err));
    /* A timeout says nothing of why: add a TLS/SASL failure seen lately
     * (the poll serves error_cb reports queued during the blocking call;
     * only before init completes, when no delivery report can be pending). */
    if (rd_kafka_error_code(err) == RD_KAFKA_RESP_ERR__TIMED_OUT && s->rk && !s->initialized)
        rd_kafka_poll(s->rk, 0);
    if (rd_kafka_error_code(err) == RD_KAFKA_RESP_ERR__TIMED_OUT && s->conn_hint[0] &&
        outboxd_now_ms() - s->conn_hint_ms < 60000) {
        size_t n = strlen(errstr);
        snprintf(errstr + n, errstr_size - n, " (last connection error: %s)", s->conn_hint);
    }
    outboxd_sink_status_t st;
    if (rd_kafka_error_is_fatal(err)) {
        char reason[512];
        rd_kafka_resp_err_t ferr = rd_kafka_fatal_error(s->rk, reason, sizeof(reason));
        s->fenced = is_fencing(ferr);
        if (s->fenced && s->slot)
            pool_fenced_error(s, what, reason, errstr, errstr_size);
        else if (s->fenced)
            snprintf(errstr, errstr_size,
                     "%s: fenced (%s): another outboxd instance with transactional.id '%s' "
                     "has started, or the broker aborted a transaction of ours that outlived "
                     "transaction.timeout.ms",
                     what, reason, s->txnids[s->cur]);
        else if (ferr)
            snprintf(errstr, errstr_size, "%s: fatal Kafka error %s: %s", what,
                     rd_kafka_err2name(ferr), reason);
        if (recoverable_fatal(ferr))
            s->reset_needed = true;
        st = OUTBOXD_SINK_FATAL;
    } else if (rd_kafka_error_txn_requires_abort(err)) {
        st = OUTBOXD_SINK_ABORTED;
    } else if (rd_kafka_error_is_retriable(err)) {
        st = OUTBOXD_SINK_RETRY;
    } else {
        /* Neither retriable nor abortable: librdkafka's examples treat it
         * as fatal (the producer's state is not what we think). */
        st = OUTBOXD_SINK_FATAL;
    }
    rd_kafka_error_destroy(err);
    return st;
}

/* Creates the compacted checkpoint topic if it does not exist. */
static bool topic_exists(outboxd_sink_t *s, const char *name)
{
    const rd_kafka_metadata_t *md = NULL;
    bool exists = false;
    /* all_topics=0 with a topic handle: brokers with auto-create enabled
     * would create it with the default (non-compacted) policy, so ask for
     * all topics instead. */
    rd_kafka_resp_err_t err = rd_kafka_metadata(s->rk, 1, NULL, &md, 10000);
    if (!err) {
        for (int i = 0; i < md->topic_cnt; i++)
            if (strcmp(md->topics[i].topic, name) == 0 && !md->topics[i].err)
                exists = true;
        rd_kafka_metadata_destroy(md);
    }
    return exists;
}

static outboxd_sink_status_t ensure_checkpoint_topic(outboxd_sink_t *s, char *errstr,
                                                     size_t errstr_size)
{
    char e[512];
    if (topic_exists(s, s->conf->checkpoint_topic))
        return OUTBOXD_SINK_OK;
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(s->conf->checkpoint_topic, 1, -1, e, sizeof(e));
    if (!nt) {
        snprintf(errstr, errstr_size, "checkpoint topic: %s", e);
        return OUTBOXD_SINK_FATAL;
    }
    rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
    /* Small segments so compaction keeps the topic (read at every start)
     * short. */
    rd_kafka_NewTopic_set_config(nt, "segment.ms", "600000");
    rd_kafka_queue_t *q = rd_kafka_queue_new(s->rk);
    rd_kafka_AdminOptions_t *opts =
        rd_kafka_AdminOptions_new(s->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, 15000, e, sizeof(e));
    rd_kafka_CreateTopics(s->rk, &nt, 1, opts, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 20000);
    outboxd_sink_status_t st = OUTBOXD_SINK_OK;
    if (!ev) {
        snprintf(errstr, errstr_size, "creating checkpoint topic %s: timed out",
                 s->conf->checkpoint_topic);
        st = OUTBOXD_SINK_RETRY;
    } else if (rd_kafka_event_error(ev)) {
        snprintf(errstr, errstr_size, "creating checkpoint topic %s: %s", s->conf->checkpoint_topic,
                 rd_kafka_event_error_string(ev));
        st = OUTBOXD_SINK_RETRY;
    } else {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t n;
        const rd_kafka_topic_result_t **tr = rd_kafka_CreateTopics_result_topics(res, &n);
        for (size_t i = 0; i < n; i++) {
            rd_kafka_resp_err_t terr = rd_kafka_topic_result_error(tr[i]);
            if (terr == RD_KAFKA_RESP_ERR_NO_ERROR) {
                LOG_INFO(s->src->name, "created checkpoint topic %s (compacted)",
                         s->conf->checkpoint_topic);
            } else if (terr != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                snprintf(errstr, errstr_size, "creating checkpoint topic %s: %s",
                         s->conf->checkpoint_topic, rd_kafka_topic_result_error_string(tr[i]));
                st = (terr == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
                      terr == RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED)
                         ? OUTBOXD_SINK_FATAL
                         : OUTBOXD_SINK_RETRY;
            }
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_queue_destroy(q);
    return st;
}

/* The last committed checkpoint of this source (ckstore.h). Runs after
 * init_transactions, so our own previous transactions are committed or
 * aborted. A pooled sink shares the pool's store, whose one read serves
 * every source asking at about the same time. */
static outboxd_sink_status_t read_checkpoint(outboxd_sink_t *s, outboxd_checkpoint_t *ck,
                                             char *errstr, size_t errstr_size)
{
    memset(ck, 0, sizeof(*ck));
    outboxd_ckstore_t *cs = s->pool ? s->pool->ckstore : s->ckstore;
    if (!cs) {
        rd_kafka_conf_t *kc = base_conf(s->conf, true, errstr, errstr_size);
        if (!kc)
            return OUTBOXD_SINK_FATAL;
        char group[300];
        snprintf(group, sizeof(group), "%s.checkpoint-reader", s->txnid);
        cs = s->ckstore =
            outboxd_ckstore_new(kc, s->conf->checkpoint_topic, group, 0, errstr, errstr_size);
        if (!cs)
            return OUTBOXD_SINK_FATAL;
    }
    int rc = outboxd_ckstore_read(cs, ck_key(s), ck, s->keepalive, s->opaque, errstr, errstr_size);
    if (rc == 0)
        return OUTBOXD_SINK_OK;
    return rc == -2 ? OUTBOXD_SINK_FATAL : OUTBOXD_SINK_RETRY;
}

/*
 * init_transactions of every producer of the ring and, with a throw-away
 * producer each, of the ids above it (an older instance may have run with a
 * larger producers_per_source), all at once: each call is resumable, so the
 * first pass only starts every one (a timeout of 1 ms) and later passes wait
 * on one at a time in short steps, with the keepalive in between, until all
 * have succeeded or TXN_CALL_TIMEOUT_MS has passed (what one call used to
 * wait). What fails is reported as when they ran one after the other; the
 * others keep running and are resumed by the next call.
 */
#define INIT_STEP_MS 100

static outboxd_sink_status_t init_producers(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    for (int i = s->n_rks; i < MAX_PRODUCERS; i++) {
        if (s->fence_done[i] || s->fence_rks[i])
            continue;
        s->fence_rks[i] = new_producer(s, s->txnids[i], errstr, errstr_size);
        if (!s->fence_rks[i])
            return OUTBOXD_SINK_FATAL;
    }
    int64_t deadline = outboxd_now_ms() + TXN_CALL_TIMEOUT_MS;
    for (int pass = 0;; pass++) {
        /* The first producer still waiting in this pass and its last error:
         * reported when the time is up (a ring producer first, through
         * classify, which names a recent TLS or SASL failure). */
        rd_kafka_error_t *waiting = NULL;
        int waiting_i = -1;
        for (int i = 0; i < MAX_PRODUCERS; i++) {
            bool ring = i < s->n_rks;
            rd_kafka_t *rk = ring ? s->rks[i] : s->fence_rks[i];
            if (ring ? s->rk_ready[i] : s->fence_done[i])
                continue;
            if (s->keepalive)
                s->keepalive(s->opaque);
            int64_t left = deadline - outboxd_now_ms();
            int wait_ms =
                pass == 0 ? 1 : (int)(left < INIT_STEP_MS ? (left > 1 ? left : 1) : INIT_STEP_MS);
            rd_kafka_error_t *err = rd_kafka_init_transactions(rk, wait_ms);
            /* A step that ends before the producer id is assigned says
             * timed out, or names what delayed it (the coordinator still
             * loading, not yet known): retriable, and resumed by the next
             * call, as a single call would have waited it out. */
            if (err && rd_kafka_error_is_retriable(err) && !rd_kafka_error_is_fatal(err)) {
                if (!waiting) {
                    waiting = err;
                    waiting_i = i;
                } else {
                    rd_kafka_error_destroy(err);
                }
                continue;
            }
            if (ring) {
                if (err) {
                    if (waiting)
                        rd_kafka_error_destroy(waiting);
                    s->cur = i;
                    s->rk = rk;
                    return classify(s, err, "init_transactions", errstr, errstr_size);
                }
                s->rk_ready[i] = true;
                continue;
            }
            outboxd_sink_status_t st = OUTBOXD_SINK_OK;
            if (err) {
                snprintf(errstr, errstr_size, "init_transactions (fencing %s): %s", s->txnids[i],
                         rd_kafka_error_string(err));
                st = rd_kafka_error_is_fatal(err) ? OUTBOXD_SINK_FATAL : OUTBOXD_SINK_RETRY;
                rd_kafka_error_destroy(err);
            } else {
                s->fence_done[i] = true;
            }
            rd_kafka_destroy(rk);
            s->fence_rks[i] = NULL;
            if (st != OUTBOXD_SINK_OK) {
                if (waiting)
                    rd_kafka_error_destroy(waiting);
                return st;
            }
        }
        if (!waiting)
            return OUTBOXD_SINK_OK;
        if (outboxd_now_ms() < deadline) {
            rd_kafka_error_destroy(waiting);
            continue;
        }
        if (waiting_i < s->n_rks) {
            s->cur = waiting_i;
            s->rk = s->rks[waiting_i];
            return classify(s, waiting, "init_transactions", errstr, errstr_size);
        }
        snprintf(errstr, errstr_size, "init_transactions (fencing %s): %s", s->txnids[waiting_i],
                 rd_kafka_error_string(waiting));
        rd_kafka_error_destroy(waiting);
        return OUTBOXD_SINK_RETRY;
    }
}

outboxd_sink_status_t outboxd_sink_fence(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    if (s->pool || s->initialized)
        return OUTBOXD_SINK_OK;
    outboxd_sink_status_t st = init_producers(s, errstr, errstr_size);
    if (st != OUTBOXD_SINK_OK)
        return st;
    s->cur = 0;
    s->rk = s->rks[0];
    s->initialized = true;
    LOG_DEBUG(s->src->name, "startup: init_transactions done (%d producers, ids up to %s fenced)",
              s->n_rks, s->txnids[MAX_PRODUCERS - 1]);
    return OUTBOXD_SINK_OK;
}

outboxd_sink_status_t outboxd_sink_init(outboxd_sink_t *s, outboxd_checkpoint_t *ck, char *errstr,
                                        size_t errstr_size)
{
    if (s->pool) {
        /* Every pool id is fenced (its leftovers settled) before any
         * checkpoint is read; the topic was ensured by the start too. */
        outboxd_sink_status_t st = pool_start(s, errstr, errstr_size);
        if (st != OUTBOXD_SINK_OK)
            return st;
        s->initialized = true;
        return read_checkpoint(s, ck, errstr, errstr_size);
    }
    outboxd_sink_status_t st = outboxd_sink_fence(s, errstr, errstr_size);
    if (st != OUTBOXD_SINK_OK)
        return st;
    st = ensure_checkpoint_topic(s, errstr, errstr_size);
    if (st != OUTBOXD_SINK_OK)
        return st;
    LOG_DEBUG(s->src->name, "startup: checkpoint topic checked");
    st = read_checkpoint(s, ck, errstr, errstr_size);
    if (st == OUTBOXD_SINK_OK)
        LOG_DEBUG(s->src->name, "startup: checkpoint read");
    return st;
}

static void pause_briefly(outboxd_sink_t *s, int attempt)
{
    if (s->keepalive)
        s->keepalive(s->opaque);
    int ms = 100 << (attempt < 5 ? attempt : 5);
    usleep((useconds_t)ms * 1000);
}

/* Replaces every producer by a new one with the same transactional.id; the
 * caller must run outboxd_sink_init again (see outboxd_sink_ready). */
static int recreate_producers(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    forget_topics(s);
    if (s->pool) {
        /* Only the borrowed producer failed: replace it now (its
         * init_transactions aborts what the old one left open, so no
         * checkpoint read waits for it) and give it back. The sink stays
         * initialized: its checkpoint is still the last committed one. */
        s->in_txn = false;
        int rc = s->slot ? replace_slot_producer(s, errstr, errstr_size) : 0;
        release(s);
        return rc;
    }
    for (int i = 0; i < s->n_rks; i++) {
        rd_kafka_purge(s->rks[i], RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_destroy(s->rks[i]);
        s->rks[i] = NULL;
    }
    for (int i = 0; i < MAX_PRODUCERS; i++)
        set_clear(&s->warm[i]); /* new producers know no topic */
    s->in_txn = false;
    s->initialized = false;
    memset(s->rk_ready, 0, sizeof(s->rk_ready));
    s->fenced = false;
    s->cur = 0;
    for (int i = 0; i < s->n_rks; i++) {
        s->rks[i] = new_producer(s, s->txnids[i], errstr, errstr_size);
        if (!s->rks[i]) {
            while (--i >= 0) {
                rd_kafka_destroy(s->rks[i]);
                s->rks[i] = NULL;
            }
            s->n_rks = 0;
            s->rk = NULL;
            return -1;
        }
    }
    s->rk = s->rks[0];
    return 0;
}

/* At the API boundary: a recoverable fatal error becomes ABORTED with new
 * producers (the caller rewinds and initializes the sink again). */
static outboxd_sink_status_t settle(outboxd_sink_t *s, outboxd_sink_status_t st, char *errstr,
                                    size_t errstr_size)
{
    if (s->slot && st == OUTBOXD_SINK_FATAL && !s->reset_needed) {
        /* The source stops; the producer's state is unknown: the next
         * borrower replaces it (or, when it was fenced, stops too). */
        s->slot->broken = true;
        s->in_txn = false;
        release(s);
    } else if (s->slot && !s->in_txn && st != OUTBOXD_SINK_FATAL) {
        release(s); /* no transaction in hand (e.g. a missing topic) */
    }
    if (st != OUTBOXD_SINK_FATAL || !s->reset_needed)
        return st;
    s->reset_needed = false;
    char e[512];
    if (recreate_producers(s, e, sizeof(e)) < 0) {
        size_t n = strlen(errstr);
        snprintf(errstr + n, errstr_size - n, "; recreating the producer failed: %s", e);
        return OUTBOXD_SINK_FATAL;
    }
    LOG_WARN(s->src->name,
             "%s; replacing the producers (the new ones abort what the old ones left open)",
             errstr);
    return OUTBOXD_SINK_ABORTED;
}

bool outboxd_sink_ready(const outboxd_sink_t *s)
{
    return s->initialized;
}

bool outboxd_sink_fenced(const outboxd_sink_t *s)
{
    return s->fenced && !s->pool;
}

int outboxd_sink_replace_producers(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    if (s->pool) {
        snprintf(errstr, errstr_size, "pool producers are replaced by the pool");
        return -1;
    }
    return recreate_producers(s, errstr, errstr_size);
}

static outboxd_sink_status_t abort_txn(outboxd_sink_t *s, char *errstr, size_t errstr_size);

outboxd_sink_status_t outboxd_sink_abort(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    return settle(s, abort_txn(s, errstr, errstr_size), errstr, errstr_size);
}

/* How long an abort may keep timing out before the producer is replaced:
 * the producer's transaction.timeout.ms (the broker aborts the transaction by
 * itself after that, so waiting longer gains nothing), at least one call. */
static int64_t abort_limit_ms(rd_kafka_t *rk)
{
    char buf[32];
    size_t len = sizeof(buf);
    long long ms = 0;
    if (rd_kafka_conf_get(rd_kafka_conf(rk), "transaction.timeout.ms", buf, &len) ==
        RD_KAFKA_CONF_OK)
        ms = atoll(buf);
    return ms > TXN_CALL_TIMEOUT_MS ? ms : TXN_CALL_TIMEOUT_MS;
}

/*
 * After the broker refused a record for good (too large, invalid), librdkafka
 * (2.0.2 at least) aborts the transaction without bumping the producer's
 * epoch: the partition's sequence numbers keep the refused record's gap, the
 * producer's next transaction fails with OUT_OF_ORDER_SEQUENCE_NUMBER
 * ("requires epoch bump", then "Local: Erroneous state") and only the one after
 * it gets through, a retry cycle (1 s, then 2 s of backoff) lost for every
 * producer that carried a refusal. A new producer with the same
 * transactional.id starts a new epoch with sequences from 0, for one
 * InitProducerId round trip. Failing that, the producers are all replaced
 * (reset_needed), as for a fatal producer-state error.
 */
static outboxd_sink_status_t refresh_producer(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    if (s->slot) {
        if (replace_slot_producer_as(s, true, errstr, errstr_size) < 0) {
            s->reset_needed = true;
            return OUTBOXD_SINK_FATAL;
        }
        return OUTBOXD_SINK_OK; /* borrow() runs init_transactions if it has not */
    }
    int i = s->cur;
    rd_kafka_t *rk = new_producer(s, s->txnids[i], errstr, errstr_size);
    if (!rk) {
        s->reset_needed = true;
        return OUTBOXD_SINK_FATAL;
    }
    rd_kafka_destroy(s->rks[i]); /* idle: its transaction was aborted */
    s->rk = s->rks[i] = rk;
    s->rk_ready[i] = false;
    set_clear(&s->warm[i]); /* the new producer knows no topic */
    int64_t deadline = outboxd_now_ms() + TXN_CALL_TIMEOUT_MS;
    for (;;) {
        if (s->keepalive)
            s->keepalive(s->opaque);
        rd_kafka_error_t *err = rd_kafka_init_transactions(rk, INIT_STEP_MS);
        if (!err)
            break;
        if (!rd_kafka_error_is_retriable(err) || rd_kafka_error_is_fatal(err) ||
            outboxd_now_ms() >= deadline) {
            classify(s, err, "init_transactions of a new producer after a refused record", errstr,
                     errstr_size);
            /* Fenced: another instance took over, and the source stops
             * (new producers would fence it back). */
            if (!s->fenced)
                s->reset_needed = true;
            return OUTBOXD_SINK_FATAL;
        }
        rd_kafka_error_destroy(err);
    }
    s->rk_ready[i] = true;
    LOG_DEBUG(s->src->name, "replaced producer %s after a refused record", s->txnids[i]);
    return OUTBOXD_SINK_OK;
}

/*
 * Retries a timed-out abort, but not for ever. With librdkafka 2.0.2 an abort
 * that needs an epoch bump (messages timed out after a broker restart) was
 * seen to time out for minutes on end, the producer never delivering to the
 * restarted broker again (CI, test_broker_restart). Past the limit the abort
 * ends as a recoverable fatal error: settle() replaces the producers, whose
 * init_transactions fences the stuck one and aborts what it left open, and
 * the source rewinds to its checkpoint, which an abort never moves.
 */
static outboxd_sink_status_t abort_txn(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    if (!s->in_txn)
        return OUTBOXD_SINK_OK;
    int64_t t0 = outboxd_now_ms();
    int64_t limit = abort_limit_ms(s->rk);
    for (int attempt = 0;; attempt++) {
        rd_kafka_error_t *err = rd_kafka_abort_transaction(s->rk, TXN_CALL_TIMEOUT_MS);
        if (!err) {
            s->in_txn = false;
            forget_topics(s);
            if (s->broker_refused) {
                s->broker_refused = false;
                outboxd_sink_status_t rst = refresh_producer(s, errstr, errstr_size);
                if (rst != OUTBOXD_SINK_OK)
                    return rst;
            }
            rotate(s);
            return OUTBOXD_SINK_OK;
        }
        outboxd_sink_status_t st = classify(s, err, "abort_transaction", errstr, errstr_size);
        if (st == OUTBOXD_SINK_FATAL)
            return st;
        if (s->stop && atomic_load(s->stop) && attempt >= 3) {
            /* Shutting down: leave it; the next instance's
             * init_transactions (or the transaction timeout) aborts it. */
            LOG_WARN(s->src->name, "%s; giving up on shutdown", errstr);
            s->in_txn = false;
            if (s->slot) {
                s->slot->broken = true; /* its abort call is still pending */
                release(s);
            }
            return OUTBOXD_SINK_OK;
        }
        int64_t waited = outboxd_now_ms() - t0;
        if (waited >= limit) {
            size_t n = strlen(errstr);
            snprintf(errstr + n, errstr_size - n,
                     "; the abort has not finished in %lld s (transaction.timeout.ms is %lld s)",
                     (long long)(waited / 1000), (long long)(limit / 1000));
            s->reset_needed = true;
            return OUTBOXD_SINK_FATAL;
        }
        LOG_WARN(s->src->name, "%s; retrying", errstr);
        pause_briefly(s, attempt);
    }
}

/* After an abortable error: abort, report ABORTED (or FATAL). */
static outboxd_sink_status_t abort_after(outboxd_sink_t *s, outboxd_sink_status_t st, char *errstr,
                                         size_t errstr_size)
{
    if (st == OUTBOXD_SINK_FATAL)
        return st;
    char why[512];
    snprintf(why, sizeof(why), "%s", errstr);
    char aerr[512];
    if (outboxd_sink_abort(s, aerr, sizeof(aerr)) == OUTBOXD_SINK_FATAL) {
        snprintf(errstr, errstr_size, "%s", aerr);
        return OUTBOXD_SINK_FATAL;
    }
    snprintf(errstr, errstr_size, "%s (transaction aborted)", why);
    return OUTBOXD_SINK_ABORTED;
}

static outboxd_sink_status_t begin(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    rd_kafka_error_t *err = rd_kafka_begin_transaction(s->rk);
    if (err) {
        outboxd_sink_status_t st = classify(s, err, "begin_transaction", errstr, errstr_size);
        return st == OUTBOXD_SINK_FATAL ? st : OUTBOXD_SINK_ABORTED;
    }
    s->in_txn = true;
    s->seq = 0;
    s->refused_seq = 0;
    s->refused_size = 0;
    s->n_refused = 0;
    s->broker_refused = false;
    s->ck_seq = 0;
    s->ck_refused = false;
    s->missing_topic[0] = '\0';
    return OUTBOXD_SINK_OK;
}

/* ---- topics that may not exist ---- */

static bool is_known(const outboxd_sink_t *s, const char *topic)
{
    return set_has(&s->known, topic);
}

static void remember_topic(outboxd_sink_t *s, const char *topic)
{
    set_add(&s->known, topic);
}

/* The warm set of the producer in hand (own: the ring's current one; pool:
 * the borrowed slot's, kept by its holder). */
static topic_set_t *warm_set(outboxd_sink_t *s)
{
    if (s->slot)
        return &s->slot->holder->warm[0];
    if (!s->pool && s->cur >= 0 && s->cur < MAX_PRODUCERS && s->rk == s->rks[s->cur])
        return &s->warm[s->cur];
    return NULL;
}

const char *outboxd_sink_librdkafka_note(int version)
{
    /* 2.4.0 released the fix (librdkafka commit 807b23a, "Fix to main loop
     * timeout calculation"); versions are 0xMMmmrrpp. */
    if (version >= 0x02040000)
        return NULL;
    return "its main thread busy-waits up to 1 ms each time a Kafka transaction registers "
           "partitions (librdkafka issue 4671, fixed in 2.4.0): at steady rates most of the "
           "relay's CPU, e.g. 40% of a core at 5,000 events/s against 18% on 2.8.0 "
           "(README, Performance); link a newer librdkafka where your distribution has one";
}

/*
 * librdkafka 2.0 fetches the metadata of a topic a producer has not used
 * before only at its next topic scan, once a second: the first record to
 * it (and the commit waiting for that record) waited up to 1 s. Every
 * producer of the ring and every pool producer pays that once per topic,
 * the checkpoint topic included: measured in a 200,000-event drain as one
 * 600 ms to 1 s commit per run with two producers (bench/README.md). So
 * before a producer's first record to a topic, its metadata is asked for
 * at once (one round trip). Whatever the answer, the topic is not asked
 * for again on this producer: the produce path handles a missing topic.
 */
static void warm_producer(outboxd_sink_t *s, const char *topic)
{
    topic_set_t *w = warm_set(s);
    if (!w || set_has(w, topic))
        return;
    rd_kafka_topic_t *t = rd_kafka_topic_new(s->rk, topic, NULL);
    if (t) {
        const rd_kafka_metadata_t *md = NULL;
        if (rd_kafka_metadata(s->rk, 0, t, &md, WARM_TIMEOUT_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
            rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(t);
    }
    set_add(w, topic);
}

typedef enum { TOPIC_EXISTS, TOPIC_MISSING, TOPIC_UNSURE } topic_state_t;

/*
 * Asks the broker about one topic, as a produce would: a broker with
 * auto.create.topics.enable creates it on this request (then it exists),
 * one without answers UNKNOWN_TOPIC_OR_PART. Anything else (timeout,
 * broker down) is left to the produce path.
 */
static topic_state_t topic_state(outboxd_sink_t *s, const char *topic)
{
    rd_kafka_topic_t *t = rd_kafka_topic_new(s->rk, topic, NULL);
    if (!t)
        return TOPIC_UNSURE;
    const rd_kafka_metadata_t *md = NULL;
    topic_state_t st = TOPIC_UNSURE;
    rd_kafka_resp_err_t err = rd_kafka_metadata(s->rk, 0, t, &md, 5000);
    if (!err && md->topic_cnt == 1) {
        rd_kafka_resp_err_t terr = md->topics[0].err;
        if (terr == RD_KAFKA_RESP_ERR_NO_ERROR || terr == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE)
            st = TOPIC_EXISTS;
        topic_set_t *w = terr == RD_KAFKA_RESP_ERR_NO_ERROR ? warm_set(s) : NULL;
        if (w && !set_has(w, topic))
            set_add(w, topic); /* this producer has its partitions now */
        else if (unknown_topic(terr))
            st = TOPIC_MISSING;
    }
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    return st;
}

/* CreateTopics with the configured partitions and replication factor (-1:
 * the broker's defaults). 0 on success or when it exists already. */
static int create_topic(outboxd_sink_t *s, const char *topic, char *errstr, size_t errstr_size)
{
    char e[512];
    rd_kafka_NewTopic_t *nt =
        rd_kafka_NewTopic_new(topic, s->conf->create_topic_partitions,
                              s->conf->create_topic_replication_factor, e, sizeof(e));
    if (!nt) {
        snprintf(errstr, errstr_size, "creating topic %.249s: %.200s", topic, e);
        return -1;
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(s->rk);
    rd_kafka_AdminOptions_t *opts =
        rd_kafka_AdminOptions_new(s->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(opts, 10000, e, sizeof(e));
    rd_kafka_CreateTopics(s->rk, &nt, 1, opts, q);
    rd_kafka_event_t *ev = NULL;
    /* Poll in short steps so the replication connection stays alive. */
    for (int i = 0; i < 15 && !ev; i++) {
        if (s->keepalive)
            s->keepalive(s->opaque);
        ev = rd_kafka_queue_poll(q, 1000);
    }
    int rc = -1;
    if (!ev) {
        snprintf(errstr, errstr_size, "creating topic %.249s: timed out", topic);
    } else if (rd_kafka_event_error(ev)) {
        snprintf(errstr, errstr_size, "creating topic %.249s: %.200s", topic,
                 rd_kafka_event_error_string(ev));
    } else {
        size_t n = 0;
        const rd_kafka_topic_result_t **tr =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
        rd_kafka_resp_err_t terr =
            n ? rd_kafka_topic_result_error(tr[0]) : RD_KAFKA_RESP_ERR_NO_ERROR;
        if (terr == RD_KAFKA_RESP_ERR_NO_ERROR || terr == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            if (terr == RD_KAFKA_RESP_ERR_NO_ERROR)
                LOG_INFO(s->src->name,
                         "created topic %s (partitions %d, replication factor %d; -1: "
                         "the broker's default)",
                         topic, s->conf->create_topic_partitions,
                         s->conf->create_topic_replication_factor);
            rc = 0;
        } else {
            snprintf(errstr, errstr_size, "creating topic %.249s: %.200s", topic,
                     rd_kafka_topic_result_error_string(tr[0]));
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opts);
    rd_kafka_NewTopic_destroy(nt);
    rd_kafka_queue_destroy(q);
    return rc;
}

/*
 * Before the first record for a topic name: does it exist? A missing one is
 * created when relay.missing_topic is create (and always for the relay's own
 * dead-letter topic); otherwise OUTBOXD_SINK_MISSING_TOPIC tells the caller
 * to apply its policy. Producing blindly would instead hold the record for
 * topic.metadata.propagation.max.ms and then fail the whole transaction.
 */
static outboxd_sink_status_t check_topic(outboxd_sink_t *s, const char *topic, char *errstr,
                                         size_t errstr_size)
{
    if (strcmp(topic, s->conf->checkpoint_topic) == 0 || is_known(s, topic))
        return OUTBOXD_SINK_OK;
    topic_state_t st = topic_state(s, topic);
    /* A broker that creates topics automatically still answers the request
     * that triggered the creation with UNKNOWN_TOPIC_OR_PART (KRaft): ask
     * again briefly before calling the topic missing. */
    for (int wait_ms = 250; st == TOPIC_MISSING && wait_ms <= 1000; wait_ms *= 2) {
        if (s->keepalive)
            s->keepalive(s->opaque);
        usleep((useconds_t)wait_ms * 1000);
        st = topic_state(s, topic);
    }
    if (st == TOPIC_UNSURE)
        return OUTBOXD_SINK_OK;
    if (st == TOPIC_MISSING) {
        bool create = s->conf->missing_topic == OUTBOXD_MISSING_TOPIC_CREATE ||
                      strcmp(topic, s->conf->dead_letter_topic) == 0;
        if (!create) {
            snprintf(errstr, errstr_size,
                     "topic '%s' does not exist (and the broker does not create topics "
                     "automatically)",
                     topic);
            return OUTBOXD_SINK_MISSING_TOPIC;
        }
        char cerr[512];
        if (create_topic(s, topic, cerr, sizeof(cerr)) < 0) {
            snprintf(errstr, errstr_size,
                     "topic '%.249s' does not exist and could not be created: %.480s", topic, cerr);
            return OUTBOXD_SINK_MISSING_TOPIC;
        }
    }
    remember_topic(s, topic);
    return OUTBOXD_SINK_OK;
}

/* In one_by_one mode: waits for the record just produced to be delivered,
 * and aborts at once when Kafka refused it, so that the refusal names it. */
static outboxd_sink_status_t await_delivery(outboxd_sink_t *s, const char *topic, char *errstr,
                                            size_t errstr_size)
{
    while (rd_kafka_flush(s->rk, 1000) == RD_KAFKA_RESP_ERR__TIMED_OUT) {
        if (s->stop && atomic_load(s->stop))
            break; /* the commit (or its abort) settles it */
        if (s->keepalive)
            s->keepalive(s->opaque);
    }
    if (s->n_refused || s->ck_refused) {
        snprintf(errstr, errstr_size, "%s",
                 s->ck_refused ? s->ck_refused_reason : s->refused_reason);
        return abort_after(s, OUTBOXD_SINK_ABORTED, errstr, errstr_size);
    }
    if (s->missing_topic[0]) {
        snprintf(errstr, errstr_size, "producing to %s: unknown topic", topic);
        return abort_after(s, OUTBOXD_SINK_ABORTED, errstr, errstr_size);
    }
    return OUTBOXD_SINK_OK;
}

static outboxd_sink_status_t produce_raw(outboxd_sink_t *s, const char *topic, const void *key,
                                         size_t key_len, const void *value, size_t value_len,
                                         const outboxd_header_t *hdrs, size_t n_hdrs,
                                         int32_t partition, int64_t timestamp_ms, char *errstr,
                                         size_t errstr_size)
{
    if (s->pool && !s->slot) {
        /* A transaction begins here (or a topic is looked up for it):
         * from now until it ends the source holds one pool producer. */
        outboxd_sink_status_t bst = borrow(s, errstr, errstr_size);
        if (bst != OUTBOXD_SINK_OK)
            return bst;
    }
    outboxd_sink_status_t cst = check_topic(s, topic, errstr, errstr_size);
    if (cst != OUTBOXD_SINK_OK)
        return cst; /* nothing produced; the open transaction stays as it is */
    if (!s->in_txn) {
        outboxd_sink_status_t st = begin(s, errstr, errstr_size);
        if (st != OUTBOXD_SINK_OK)
            return st;
    }
    warm_producer(s, topic);
    for (;;) {
        rd_kafka_headers_t *h = NULL;
        if (n_hdrs) {
            h = rd_kafka_headers_new(n_hdrs);
            for (size_t i = 0; i < n_hdrs; i++)
                rd_kafka_header_add(h, hdrs[i].name, -1, hdrs[i].value, (ssize_t)hdrs[i].len);
        }
        rd_kafka_resp_err_t err =
            rd_kafka_producev(s->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, key_len),
                              RD_KAFKA_V_VALUE((void *)value, value_len),
                              RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_TIMESTAMP(timestamp_ms),
                              RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                              RD_KAFKA_V_OPAQUE((void *)(uintptr_t)(s->seq + 1)), RD_KAFKA_V_END);
        if (!err) {
            s->seq++;
            return s->one_by_one ? await_delivery(s, topic, errstr, errstr_size) : OUTBOXD_SINK_OK;
        }
        if (h)
            rd_kafka_headers_destroy(h);
        if (refused_for_good(err))
            note_refused(s, s->seq + 1, value_len + key_len, err, topic);
        else if (unknown_topic(err)) {
            forget_topic(s, topic);
            snprintf(s->missing_topic, sizeof(s->missing_topic), "%s", topic);
        }
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && !(s->stop && atomic_load(s->stop))) {
            /* Back-pressure: let librdkafka send, keep PostgreSQL informed. */
            rd_kafka_poll(s->rk, 10);
            if (s->keepalive)
                s->keepalive(s->opaque);
            continue;
        }
        char reason[512];
        rd_kafka_resp_err_t ferr = rd_kafka_fatal_error(s->rk, reason, sizeof(reason));
        if (ferr) {
            snprintf(errstr, errstr_size, "producing to %s: fatal Kafka error %s: %s", topic,
                     rd_kafka_err2name(ferr), reason);
            s->fenced = is_fencing(ferr);
            if (s->fenced && s->slot)
                pool_fenced_error(s, "producing", reason, errstr, errstr_size);
            if (recoverable_fatal(ferr))
                s->reset_needed = true;
            return OUTBOXD_SINK_FATAL;
        }
        snprintf(errstr, errstr_size, "producing to %s: %s", topic, rd_kafka_err2str(err));
        return abort_after(s, OUTBOXD_SINK_ABORTED, errstr, errstr_size);
    }
}

uint64_t outboxd_sink_refused(const outboxd_sink_t *s, char *reason, size_t reason_size,
                              uint64_t *count)
{
    if (s->refused_seq)
        snprintf(reason, reason_size, "%s", s->refused_reason);
    if (count)
        *count = s->n_refused;
    return s->refused_seq;
}

bool outboxd_sink_checkpoint_refused(const outboxd_sink_t *s, char *reason, size_t reason_size)
{
    if (s->ck_refused)
        snprintf(reason, reason_size, "%s", s->ck_refused_reason);
    return s->ck_refused;
}

const char *outboxd_sink_missing_topic(const outboxd_sink_t *s)
{
    return s->missing_topic[0] ? s->missing_topic : NULL;
}

void outboxd_sink_set_one_by_one(outboxd_sink_t *s, bool on)
{
    s->one_by_one = on;
}

void outboxd_sink_set_checkpoint_key(outboxd_sink_t *s, const char *key)
{
    snprintf(s->ck_key, sizeof(s->ck_key), "%s", key ? key : "");
}

outboxd_sink_status_t outboxd_sink_read_checkpoint_key(outboxd_sink_t *s, const char *key,
                                                       outboxd_checkpoint_t *ck, char *errstr,
                                                       size_t errstr_size)
{
    char saved[sizeof(s->ck_key)];
    memcpy(saved, s->ck_key, sizeof(saved));
    snprintf(s->ck_key, sizeof(s->ck_key), "%s", key);
    outboxd_sink_status_t st = read_checkpoint(s, ck, errstr, errstr_size);
    memcpy(s->ck_key, saved, sizeof(saved));
    return st;
}

outboxd_sink_status_t outboxd_sink_produce(outboxd_sink_t *s, const outboxd_record_t *rec,
                                           char *errstr, size_t errstr_size)
{
    return settle(s,
                  produce_raw(s, rec->topic, rec->key, rec->key ? rec->key_len : 0, rec->value,
                              rec->value_len, rec->headers, rec->n_headers,
                              rec->has_partition ? rec->partition : RD_KAFKA_PARTITION_UA,
                              rec->timestamp_ms, errstr, errstr_size),
                  errstr, errstr_size);
}

static outboxd_sink_status_t commit_txn(outboxd_sink_t *s, const outboxd_checkpoint_t *ck,
                                        char *errstr, size_t errstr_size);

outboxd_sink_status_t outboxd_sink_commit(outboxd_sink_t *s, const outboxd_checkpoint_t *ck,
                                          char *errstr, size_t errstr_size)
{
    return settle(s, commit_txn(s, ck, errstr, errstr_size), errstr, errstr_size);
}

static outboxd_sink_status_t commit_txn(outboxd_sink_t *s, const outboxd_checkpoint_t *ck,
                                        char *errstr, size_t errstr_size)
{
    outboxd_buf_reset(&s->ckbuf);
    if (outboxd_checkpoint_encode(ck_key(s), ck, &s->ckbuf) < 0) {
        snprintf(errstr, errstr_size, "out of memory encoding checkpoint");
        return abort_after(s, OUTBOXD_SINK_ABORTED, errstr, errstr_size);
    }
    s->ck_seq = s->seq + 1;
    outboxd_sink_status_t st =
        produce_raw(s, s->conf->checkpoint_topic, ck_key(s), strlen(ck_key(s)), s->ckbuf.data,
                    s->ckbuf.len, NULL, 0, RD_KAFKA_PARTITION_UA, 0, errstr, errstr_size);
    if (st != OUTBOXD_SINK_OK)
        return st;
    /* commit_transaction flushes first; flushing here splits its time into
     * waiting for the produce requests and the EndTxn round trip (debug
     * log). A flush that takes longer is left to commit_transaction. */
    int64_t t0 = outboxd_now_us();
    rd_kafka_flush(s->rk, 1000);
    int64_t t1 = outboxd_now_us();
    for (int attempt = 0;; attempt++) {
        rd_kafka_error_t *err = rd_kafka_commit_transaction(s->rk, TXN_CALL_TIMEOUT_MS);
        if (!err) {
            LOG_DEBUG(s->src->name, "commit: %llu records flushed in %.1f ms, EndTxn %.1f ms",
                      (unsigned long long)s->seq, (double)(t1 - t0) / 1000.0,
                      (double)(outboxd_now_us() - t1) / 1000.0);
            s->in_txn = false;
            rotate(s);
            return OUTBOXD_SINK_OK;
        }
        st = classify(s, err, "commit_transaction", errstr, errstr_size);
        if (st != OUTBOXD_SINK_RETRY)
            return abort_after(s, st, errstr, errstr_size);
        if (s->stop && atomic_load(s->stop) && attempt >= 3) {
            /* Shutting down and the broker does not answer: give up without
             * an abort (it would conflict with the pending commit call).
             * Nothing was confirmed to PostgreSQL, so nothing is lost; the
             * next instance's init_transactions settles the transaction. */
            s->in_txn = false;
            if (s->slot) {
                s->slot->broken = true; /* its commit call is still pending */
                release(s);
            }
            return OUTBOXD_SINK_ABORTED;
        }
        LOG_WARN(s->src->name, "%s; retrying commit", errstr);
        pause_briefly(s, attempt);
    }
}

/* ---- the producer pool (relay.kafka_producers) ---- */

/*
 * Why a pool: with own producers every source costs producers_per_source
 * librdkafka instances (each a main thread, a thread per broker, and its own
 * bootstrap, InitProducerId and idle timers), which made hundreds of
 * sources slow to start and heavy at rest. A source needs a producer only
 * while a transaction is in hand, so N shared ones serve many sources; a
 * slot is taken for one transaction (first produce through commit or
 * abort, including the pipelined commit in source.c's helper thread) and
 * given back. Each transaction still carries one source's events and its
 * checkpoint, in the order that source produced them, so nothing of the
 * exactly-once protocol changes. Handing a producer to the least recently
 * used slot first gives each a commit cycle to settle (see the ring above).
 */

static char pool_name[] = "kafka-pool";
static const outboxd_source_conf_t pool_src = {.name = pool_name};

/* The pool's wait for a free producer, per round (then keepalive). */
#define POOL_WAIT_STEP_MS 200
/* init_transactions of every pool id: each call this long, round robin,
 * while all of them progress in the background. */
#define POOL_INIT_STEP_MS    100
#define POOL_INIT_TIMEOUT_MS 60000
/* The first source asking for its checkpoint waits this long for others
 * to join the same read of the checkpoint topic. */
#define POOL_GATHER_MS 50

static outboxd_sink_t *new_holder(const outboxd_sink_pool_t *p, int k, char *errstr,
                                  size_t errstr_size)
{
    outboxd_sink_t *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    h->conf = p->conf;
    h->src = &pool_src;
    h->stop = p->stop;
    snprintf(h->txnid, sizeof(h->txnid), "%s.pool.%d", p->conf->transactional_id_prefix, k);
    snprintf(h->txnids[0], sizeof(h->txnids[0]), "%s", h->txnid);
    h->rks[0] = new_producer(h, h->txnid, errstr, errstr_size);
    if (!h->rks[0]) {
        free(h);
        return NULL;
    }
    h->n_rks = 1;
    h->rk = h->rks[0];
    return h;
}

outboxd_sink_pool_t *outboxd_sink_pool_new(const outboxd_config_t *conf, int n, atomic_int *stop,
                                           char *errstr, size_t errstr_size)
{
    outboxd_sink_pool_t *p = calloc(1, sizeof(*p));
    if (p)
        p->slots = calloc((size_t)(n > 0 ? n : 1), sizeof(*p->slots));
    if (!p || !p->slots) {
        free(p);
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    p->conf = conf;
    p->stop = stop;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    rd_kafka_conf_t *kc = base_conf(conf, true, errstr, errstr_size);
    char group[300];
    snprintf(group, sizeof(group), "%s.pool.checkpoint-reader", conf->transactional_id_prefix);
    if (!kc || !(p->ckstore = outboxd_ckstore_new(kc, conf->checkpoint_topic, group, POOL_GATHER_MS,
                                                  errstr, errstr_size))) {
        outboxd_sink_pool_destroy(p);
        return NULL;
    }
    for (int k = 0; k < n; k++) {
        p->slots[k].holder = new_holder(p, k, errstr, errstr_size);
        if (!p->slots[k].holder) {
            outboxd_sink_pool_destroy(p);
            return NULL;
        }
        p->n++;
    }
    return p;
}

void outboxd_sink_pool_destroy(outboxd_sink_pool_t *p)
{
    if (!p)
        return;
    for (int k = 0; k < p->n; k++)
        outboxd_sink_destroy(p->slots[k].holder);
    outboxd_ckstore_destroy(p->ckstore);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->slots);
    free(p);
}

/* Runs init_transactions on every pool id in parallel: each call with a
 * short timeout, round robin, until all are done (librdkafka resumes a
 * timed-out init_transactions in the background). Then the checkpoint
 * topic is ensured once for all sources. */
static outboxd_sink_status_t pool_init_all(outboxd_sink_pool_t *p, outboxd_sink_t *s, char *errstr,
                                           size_t errstr_size)
{
    int64_t t0 = outboxd_now_ms();
    for (;;) {
        int left = 0;
        for (int k = 0; k < p->n; k++) {
            pool_slot_t *sl = &p->slots[k];
            if (sl->ready)
                continue;
            rd_kafka_error_t *err = rd_kafka_init_transactions(sl->holder->rk, POOL_INIT_STEP_MS);
            if (!err) {
                sl->ready = true;
                continue;
            }
            if (rd_kafka_error_is_retriable(err) && !rd_kafka_error_is_fatal(err)) {
                snprintf(errstr, errstr_size, "init_transactions of %s: %s", sl->holder->txnid,
                         rd_kafka_error_string(err));
                rd_kafka_error_destroy(err);
                left++;
                continue;
            }
            outboxd_sink_status_t st =
                classify(sl->holder, err, "init_transactions", errstr, errstr_size);
            return st == OUTBOXD_SINK_FATAL ? st : OUTBOXD_SINK_RETRY;
        }
        if (!left)
            break;
        if (s->stop && atomic_load(s->stop))
            return OUTBOXD_SINK_RETRY;
        if (outboxd_now_ms() - t0 > POOL_INIT_TIMEOUT_MS) {
            size_t len = strlen(errstr);
            snprintf(errstr + len, errstr_size - len, " (%d of %d pool producers not ready)", left,
                     p->n);
            return OUTBOXD_SINK_RETRY;
        }
        if (s->keepalive)
            s->keepalive(s->opaque);
    }
    LOG_INFO(NULL, "kafka pool: %d transactional producers %s.pool.0..%d ready in %lld ms", p->n,
             p->conf->transactional_id_prefix, p->n - 1, (long long)(outboxd_now_ms() - t0));
    return ensure_checkpoint_topic(p->slots[0].holder, errstr, errstr_size);
}

/* The first pooled sink to initialize starts the pool; the others wait for
 * it (and retry it when it failed). */
static outboxd_sink_status_t pool_start(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    outboxd_sink_pool_t *p = s->pool;
    pthread_mutex_lock(&p->mu);
    while (p->state == POOL_STARTING) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += POOL_WAIT_STEP_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
        pthread_mutex_unlock(&p->mu);
        if (s->keepalive)
            s->keepalive(s->opaque);
        pthread_mutex_lock(&p->mu);
    }
    if (p->state == POOL_READY) {
        pthread_mutex_unlock(&p->mu);
        return OUTBOXD_SINK_OK;
    }
    p->state = POOL_STARTING;
    pthread_mutex_unlock(&p->mu);
    outboxd_sink_status_t st = pool_init_all(p, s, errstr, errstr_size);
    pthread_mutex_lock(&p->mu);
    p->state = st == OUTBOXD_SINK_OK ? POOL_READY : POOL_NEW;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return st;
}

/* The borrowed slot's producer hit a fatal error other than fencing: a new
 * producer with the same transactional.id, initialized at once (its
 * init_transactions fences the old one and aborts what it left open). When
 * the init does not finish, the slot stays not ready and its next borrower
 * resumes it. */
static int replace_slot_producer(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    return replace_slot_producer_as(s, false, errstr, errstr_size);
}

/* routine: after a refused record (refresh_producer), logged at debug. */
static int replace_slot_producer_as(outboxd_sink_t *s, bool routine, char *errstr,
                                    size_t errstr_size)
{
    pool_slot_t *sl = s->slot;
    outboxd_sink_t *h = sl->holder;
    if (h->rk) { /* NULL when an earlier replacement failed */
        rd_kafka_purge(h->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_poll(h->rk, 0); /* the purge's delivery reports, to us */
        rd_kafka_destroy(h->rk);
    }
    h->rk = h->rks[0] = NULL;
    set_clear(&h->warm[0]); /* the new producer knows no topic */
    sl->ready = false;
    sl->broken = true;
    s->rk = NULL;
    h->rk = h->rks[0] = new_producer(h, h->txnid, errstr, errstr_size);
    if (!h->rk)
        return -1; /* still broken: the next borrower tries again */
    sl->broken = false;
    s->rk = h->rk;
    if (routine)
        LOG_DEBUG(s->src->name, "replaced pool producer %s after a refused record", h->txnid);
    else
        LOG_WARN(s->src->name, "replaced pool producer %s", h->txnid);
    for (int attempt = 0; attempt < 3 && !sl->ready; attempt++) {
        if (s->keepalive)
            s->keepalive(s->opaque);
        rd_kafka_error_t *err = rd_kafka_init_transactions(h->rk, TXN_CALL_TIMEOUT_MS / 5);
        if (!err)
            sl->ready = true;
        else if (rd_kafka_error_is_retriable(err) && !rd_kafka_error_is_fatal(err))
            rd_kafka_error_destroy(err);
        else {
            rd_kafka_error_destroy(err);
            sl->broken = true;
            break;
        }
    }
    return 0;
}

/* Takes a free pool producer for the transaction about to begin, waiting
 * (with the keepalive) while all are in use. */
static outboxd_sink_status_t borrow(outboxd_sink_t *s, char *errstr, size_t errstr_size)
{
    outboxd_sink_pool_t *p = s->pool;
    pool_slot_t *sl = NULL;
    int64_t t0 = outboxd_now_ms();
    bool counted = false; /* in p->waiting */
    pthread_mutex_lock(&p->mu);
    for (;;) {
        for (int i = 0; i < p->n && !sl; i++) {
            pool_slot_t *c = &p->slots[(p->next + i) % p->n];
            if (!c->busy)
                sl = c;
        }
        if (sl)
            break;
        if (!counted) {
            counted = true;
            atomic_fetch_add(&p->waiting, 1);
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += POOL_WAIT_STEP_MS * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
        pthread_mutex_unlock(&p->mu);
        if (s->keepalive)
            s->keepalive(s->opaque);
        if (s->stop && atomic_load(s->stop) && outboxd_now_ms() - t0 > TXN_CALL_TIMEOUT_MS) {
            snprintf(errstr, errstr_size, "stopping: no pool producer came free in %d ms",
                     TXN_CALL_TIMEOUT_MS);
            atomic_fetch_sub(&p->waiting, 1);
            return OUTBOXD_SINK_ABORTED;
        }
        pthread_mutex_lock(&p->mu);
    }
    sl->busy = true;
    p->next = (int)(sl - p->slots + 1) % p->n;
    pthread_mutex_unlock(&p->mu);
    if (counted)
        atomic_fetch_sub(&p->waiting, 1);
    int64_t waited = outboxd_now_ms() - t0;
    if (waited >= 1000)
        LOG_DEBUG(s->src->name, "waited %lld ms for a pool producer", (long long)waited);
    sl->holder->borrower = s;
    s->slot = sl;
    s->rk = sl->holder->rk;
    if (sl->broken) {
        char reason[512];
        rd_kafka_resp_err_t ferr = s->rk ? rd_kafka_fatal_error(s->rk, reason, sizeof(reason))
                                         : RD_KAFKA_RESP_ERR_NO_ERROR;
        if (is_fencing(ferr)) {
            s->fenced = true;
            pool_fenced_error(s, "taking a pool producer", reason, errstr, errstr_size);
            release(s);
            return OUTBOXD_SINK_FATAL;
        }
        if (replace_slot_producer(s, errstr, errstr_size) < 0) {
            release(s);
            return OUTBOXD_SINK_FATAL;
        }
    }
    rd_kafka_poll(s->rk, 0); /* what the producer reported while idle */
    for (int attempt = 0; !sl->ready; attempt++) {
        rd_kafka_error_t *err = rd_kafka_init_transactions(s->rk, TXN_CALL_TIMEOUT_MS / 5);
        if (!err) {
            sl->ready = true;
            break;
        }
        outboxd_sink_status_t st = classify(s, err, "init_transactions", errstr, errstr_size);
        if (st != OUTBOXD_SINK_RETRY || (s->stop && atomic_load(s->stop)) || attempt >= 5) {
            if (st == OUTBOXD_SINK_FATAL)
                sl->broken = true;
            release(s);
            return st == OUTBOXD_SINK_FATAL ? st : OUTBOXD_SINK_ABORTED;
        }
        if (s->keepalive)
            s->keepalive(s->opaque);
    }
    return OUTBOXD_SINK_OK;
}

/* Gives the borrowed producer back. Its pending delivery reports are
 * served first, so they reach this sink and not the next borrower. */
static void release(outboxd_sink_t *s)
{
    pool_slot_t *sl = s->slot;
    if (!sl)
        return;
    outboxd_sink_t *h = sl->holder;
    if (h->rk) {
        rd_kafka_poll(h->rk, 0);
        char reason[512];
        if (rd_kafka_fatal_error(h->rk, reason, sizeof(reason)))
            sl->broken = true;
    } else {
        sl->broken = true;
    }
    h->borrower = NULL;
    s->slot = NULL;
    s->rk = NULL;
    outboxd_sink_pool_t *p = s->pool;
    pthread_mutex_lock(&p->mu);
    sl->busy = false;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* Serves the callbacks of free pool producers (errors, logs) once a
 * second at most, from whichever source loop gets here first: every free
 * one each time (idle loops wake only every few seconds, so one producer a
 * turn left a pool of four unpolled for 20 s with one idle source). */
static void pool_poll_idle(outboxd_sink_pool_t *p)
{
    int64_t now = outboxd_now_ms();
    if (now - atomic_load(&p->polled_ms) < 1000 || pthread_mutex_trylock(&p->mu) != 0)
        return;
    if (now - atomic_load(&p->polled_ms) < 1000 || p->state != POOL_READY) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    atomic_store(&p->polled_ms, now);
    int *ks = malloc((size_t)p->n * sizeof(*ks));
    int n = 0;
    for (int i = 0; ks && i < p->n; i++) {
        if (!p->slots[i].busy && p->slots[i].holder->rk) {
            p->slots[i].busy = true; /* borrowed for the poll */
            ks[n++] = i;
        }
    }
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < n; i++)
        rd_kafka_poll(p->slots[ks[i]].holder->rk, 0);
    if (n) {
        pthread_mutex_lock(&p->mu);
        for (int i = 0; i < n; i++)
            p->slots[ks[i]].busy = false;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    free(ks);
}

/* ---- configuration checks (outboxd check, and run before sources start) ---- */

static void probe_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);

int outboxd_sink_check_conf(const outboxd_config_t *conf, char *errstr, size_t errstr_size)
{
    /* The clients exactly as the sink makes them: rd_kafka_new refuses
     * combinations no single property shows (acks=1 or
     * enable.idempotence=false with the transactions the sink needs). */
    outboxd_sink_t *tmp = calloc(1, sizeof(*tmp));
    if (!tmp) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    tmp->conf = conf;
    tmp->src = &check_src;
    char txnid[300];
    snprintf(txnid, sizeof(txnid), "%s.check", conf->transactional_id_prefix);
    rd_kafka_t *rk = new_producer(tmp, txnid, errstr, errstr_size);
    if (rk)
        rd_kafka_destroy(rk);
    free(tmp);
    if (!rk)
        return -1;
    rd_kafka_conf_t *kc = base_conf(conf, true, errstr, errstr_size);
    if (!kc)
        return -1;
    rd_kafka_conf_set_log_cb(kc, probe_log_cb);
    char e[512];
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, e, sizeof(e));
    if (!rk) {
        snprintf(errstr, errstr_size, "creating the checkpoint reader: %s", e);
        rd_kafka_conf_destroy(kc);
        return -1;
    }
    rd_kafka_destroy(rk);
    return 0;
}

typedef struct probe {
    char reason[512];
    char hint[512]; /* a TLS or SASL failure, told as cause and fix */
} probe_t;

static void probe_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    probe_t *p = opaque;
    (void)rk;
    (void)err;
    if (!p->reason[0])
        snprintf(p->reason, sizeof(p->reason), "%s", reason);
    if (!p->hint[0])
        outboxd_connhint_kafka(reason, p->hint, sizeof(p->hint));
}

static void probe_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    /* The caller prints one line with the reason (error_cb); librdkafka's
     * own lines would repeat it, so they only go to the debug log. */
    (void)rk;
    (void)level;
    LOG_DEBUG("kafka", "%s: %s", fac, buf);
}

int outboxd_sink_probe(const outboxd_config_t *conf, int timeout_ms, char *errstr,
                       size_t errstr_size)
{
    rd_kafka_conf_t *kc = base_conf(conf, false, errstr, errstr_size);
    if (!kc)
        return -1;
    probe_t p = {{0}, {0}};
    rd_kafka_conf_set_log_cb(kc, probe_log_cb);
    rd_kafka_conf_set_error_cb(kc, probe_error_cb);
    rd_kafka_conf_set_opaque(kc, &p);
    char e[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, e, sizeof(e));
    if (!rk) {
        snprintf(errstr, errstr_size, "cannot create a client: %s", e);
        rd_kafka_conf_destroy(kc);
        return -1;
    }
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t err;
    /* In steps, so a TLS or SASL failure (which retrying does not heal) ends
     * the wait at once instead of at the timeout. */
    int64_t deadline = outboxd_now_ms() + timeout_ms;
    for (;;) {
        int64_t left = deadline - outboxd_now_ms();
        err = rd_kafka_metadata(rk, 0, NULL, &md, (int)(left < 500 ? (left > 0 ? left : 1) : 500));
        if (!err)
            break;
        /* A failed SASL exchange fails the request as a transport error
         * before its error_cb is queued: poll a little for the reason. */
        rd_kafka_poll(rk, err == RD_KAFKA_RESP_ERR__TIMED_OUT ? 0 : 100);
        if (p.hint[0] || left <= 500 ||
            (err != RD_KAFKA_RESP_ERR__TIMED_OUT && err != RD_KAFKA_RESP_ERR__TRANSPORT))
            break;
    }
    int brokers = -1;
    if (err) {
        rd_kafka_poll(rk, 0); /* serves error_cb: the transport's reason */
        if (p.hint[0]) {
            snprintf(errstr, errstr_size, "%s", p.hint);
            brokers = -2;
        } else {
            snprintf(errstr, errstr_size, "%s", p.reason[0] ? p.reason : rd_kafka_err2str(err));
        }
    } else {
        brokers = md->broker_cnt;
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_destroy(rk);
    return brokers;
}

void *outboxd_sink_admin_client(const outboxd_config_t *conf, char *errstr, size_t errstr_size)
{
    rd_kafka_conf_t *kc = base_conf(conf, false, errstr, errstr_size);
    if (!kc)
        return NULL;
    probe_t *p = calloc(1, sizeof(*p)); /* the reasons of its errors */
    if (!p) {
        snprintf(errstr, errstr_size, "out of memory");
        rd_kafka_conf_destroy(kc);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(kc, probe_log_cb);
    rd_kafka_conf_set_error_cb(kc, probe_error_cb);
    rd_kafka_conf_set_opaque(kc, p);
    char e[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, e, sizeof(e));
    if (!rk) {
        snprintf(errstr, errstr_size, "cannot create a client: %s", e);
        rd_kafka_conf_destroy(kc);
        free(p);
    }
    return rk;
}

const char *outboxd_sink_admin_poll(void *client)
{
    rd_kafka_t *rk = client;
    rd_kafka_poll(rk, 0);
    const probe_t *p = rd_kafka_opaque(rk);
    return p->hint[0] ? p->hint : p->reason[0] ? p->reason : NULL;
}

void outboxd_sink_admin_destroy(void *client)
{
    if (!client)
        return;
    probe_t *p = rd_kafka_opaque(client);
    rd_kafka_destroy(client);
    free(p);
}

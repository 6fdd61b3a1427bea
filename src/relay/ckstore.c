/*
 * Checkpoint store (see ckstore.h). One read of the checkpoint topic serves
 * every source that asked before it began, so a start of hundreds of
 * sources reads the topic a few times instead of once per source (each read
 * is two Kafka clients, a metadata and a ListOffsets round trip, and the
 * whole topic).
 */
#include "outboxd/relay/ckstore.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "outboxd/common/log.h"
#include "outboxd/common/util.h"

#define READ_TIMEOUT_MS 30000
#define WAIT_STEP_MS    200

typedef enum { REQ_WAITING, REQ_IN_ROUND, REQ_DONE } req_state_t;

/* One source's question, on the asking thread's stack. */
typedef struct req {
    const char *name;
    outboxd_checkpoint_t *ck;
    long records; /* checkpoint records of this source seen */
    req_state_t state;
    int rc;
    char err[512];
    struct req *next;
} req_t;

struct outboxd_ckstore {
    rd_kafka_conf_t *reader; /* read_committed, partition EOF, no commits */
    rd_kafka_conf_t *wm;     /* read_uncommitted: the true high watermark */
    char *topic;
    int gather_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    req_t *waiting; /* asked, not yet in a round */
    bool reading;   /* a round is under way */
    long rounds;
};

static int set(rd_kafka_conf_t *kc, const char *k, const char *v, char *errstr, size_t errstr_size)
{
    char e[512];
    if (rd_kafka_conf_set(kc, k, v, e, sizeof(e)) != RD_KAFKA_CONF_OK) {
        snprintf(errstr, errstr_size, "kafka property %s=%s: %s", k, v, e);
        return -1;
    }
    return 0;
}

outboxd_ckstore_t *outboxd_ckstore_new(rd_kafka_conf_t *base, const char *topic, const char *group,
                                       int gather_ms, char *errstr, size_t errstr_size)
{
    outboxd_ckstore_t *cs = calloc(1, sizeof(*cs));
    if (!cs || !(cs->topic = strdup(topic))) {
        free(cs);
        rd_kafka_conf_destroy(base);
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    cs->gather_ms = gather_ms;
    pthread_mutex_init(&cs->mu, NULL);
    pthread_cond_init(&cs->cv, NULL);
    cs->wm = rd_kafka_conf_dup(base);
    cs->reader = base;
    /* ListOffsets answers with the isolation level of the asking client:
     * read_committed would give the stable offset, so the watermarks come
     * from a read_uncommitted handle. */
    if (set(cs->reader, "group.id", group, errstr, errstr_size) < 0 ||
        set(cs->reader, "isolation.level", "read_committed", errstr, errstr_size) < 0 ||
        set(cs->reader, "enable.partition.eof", "true", errstr, errstr_size) < 0 ||
        set(cs->reader, "enable.auto.commit", "false", errstr, errstr_size) < 0 ||
        /* The end of a partition is only reported by a fetch that finds
         * nothing new, which the broker holds back for this long: the
         * default 500 ms would be most of a start. */
        set(cs->reader, "fetch.wait.max.ms", "10", errstr, errstr_size) < 0 ||
        /* Reading starts at offset 0 (read_round): a log that no longer
         * starts there is read from its beginning. */
        set(cs->reader, "auto.offset.reset", "earliest", errstr, errstr_size) < 0 ||
        set(cs->wm, "isolation.level", "read_uncommitted", errstr, errstr_size) < 0) {
        outboxd_ckstore_destroy(cs);
        return NULL;
    }
    return cs;
}

void outboxd_ckstore_destroy(outboxd_ckstore_t *cs)
{
    if (!cs)
        return;
    if (cs->reader)
        rd_kafka_conf_destroy(cs->reader);
    if (cs->wm)
        rd_kafka_conf_destroy(cs->wm);
    pthread_cond_destroy(&cs->cv);
    pthread_mutex_destroy(&cs->mu);
    free(cs->topic);
    free(cs);
}

static int by_name(const void *a, const void *b)
{
    return strcmp((*(req_t *const *)a)->name, (*(req_t *const *)b)->name);
}

/* The member a record key belongs to, or NULL (members sorted by name). */
static req_t *member_of(req_t **m, size_t n, const void *key, size_t key_len)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        size_t nl = strlen(m[mid]->name);
        int c = memcmp(m[mid]->name, key, nl < key_len ? nl : key_len);
        if (c == 0)
            c = nl < key_len ? -1 : (nl > key_len ? 1 : 0);
        if (c == 0)
            return m[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/*
 * One read for the members of a round: from the beginning, read_committed,
 * each partition up to the high watermark taken now (after the round
 * closed). read_committed reports the end of a partition at its last stable
 * offset, which a transaction of another source open at the time holds
 * back; stopping there could return an older checkpoint, so the read goes
 * on to the watermark (the open transaction ends within its transaction
 * timeout). 0, -1 retry, -2 configuration; errstr for all members.
 */
static int read_round(outboxd_ckstore_t *cs, req_t **m, size_t n, void (*keepalive)(void *),
                      void *opaque, char *errstr, size_t errstr_size)
{
    char e[512];
    rd_kafka_conf_t *kc = rd_kafka_conf_dup(cs->reader);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, kc, e, sizeof(e));
    if (!c) {
        rd_kafka_conf_destroy(kc);
        snprintf(errstr, errstr_size, "creating checkpoint reader: %.400s", e);
        return -2;
    }
    int rc = -1;
    int64_t *target = NULL;
    bool *done = NULL;
    rd_kafka_topic_t *t = rd_kafka_topic_new(c, cs->topic, NULL);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(c, 0, t, &md, 15000);
    if (err || md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt < 1) {
        snprintf(errstr, errstr_size, "checkpoint topic %s metadata: %s", cs->topic,
                 rd_kafka_err2str(err ? err : (md && md->topic_cnt ? md->topics[0].err : 0)));
        goto out;
    }
    int nparts = md->topics[0].partition_cnt;
    parts = rd_kafka_topic_partition_list_new(nparts);
    /* Offset 0 rather than OFFSET_BEGINNING: librdkafka looks a logical
     * offset up, and retries that lookup 500 ms later when the partition's
     * leader is not yet known to the new client, which it often is not right
     * after the metadata call (one start in ten). A compacted topic keeps
     * offset 0 as its start; otherwise auto.offset.reset applies. */
    for (int i = 0; i < nparts; i++)
        rd_kafka_topic_partition_list_add(parts, cs->topic, md->topics[0].partitions[i].id)
            ->offset = 0;
    if ((err = rd_kafka_assign(c, parts))) {
        snprintf(errstr, errstr_size, "assigning checkpoint topic: %s", rd_kafka_err2str(err));
        goto out;
    }
    target = calloc((size_t)nparts, sizeof(int64_t));
    done = calloc((size_t)nparts, sizeof(bool));
    if (!target || !done) {
        snprintf(errstr, errstr_size, "out of memory");
        goto out;
    }
    int remaining = nparts;
    /* The target is the leader's high watermark (ListOffsets), not the one
     * a fetch response carries: a response from a leader just elected, or
     * from a follower (client.rack), can carry an older one, and a read that
     * stops there misses the last checkpoint (a rewind to an older one:
     * duplicates). The reader above fetches meanwhile. */
    kc = rd_kafka_conf_dup(cs->wm);
    rd_kafka_t *w = rd_kafka_new(RD_KAFKA_CONSUMER, kc, e, sizeof(e));
    if (!w) {
        rd_kafka_conf_destroy(kc);
        snprintf(errstr, errstr_size, "creating watermark reader: %.400s", e);
        rc = -2;
        goto out;
    }
    for (int i = 0; i < nparts; i++) {
        int64_t lo = 0, hi = 0;
        err = rd_kafka_query_watermark_offsets(w, cs->topic, parts->elems[i].partition, &lo, &hi,
                                               10000);
        if (err) {
            snprintf(errstr, errstr_size, "checkpoint topic %s watermarks: %s", cs->topic,
                     rd_kafka_err2str(err));
            rd_kafka_destroy(w);
            goto out;
        }
        target[i] = hi;
        if (hi <= lo) {
            done[i] = true; /* empty */
            remaining--;
        }
    }
    rd_kafka_destroy(w);
    int64_t deadline = outboxd_now_ms() + READ_TIMEOUT_MS;
    while (remaining > 0) {
        if (outboxd_now_ms() > deadline) {
            snprintf(errstr, errstr_size,
                     "reading checkpoint topic %s: not at its end after %d ms (another "
                     "producer's transaction open on it?)",
                     cs->topic, READ_TIMEOUT_MS);
            goto out;
        }
        if (keepalive)
            keepalive(opaque);
        rd_kafka_message_t *msg = rd_kafka_consumer_poll(c, WAIT_STEP_MS);
        if (!msg)
            continue;
        int idx = -1;
        for (int i = 0; i < nparts; i++)
            if (parts->elems[i].partition == msg->partition)
                idx = i;
        if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            if (idx >= 0 && !done[idx] && msg->offset >= target[idx]) {
                done[idx] = true;
                remaining--;
            }
        } else if (msg->err) {
            LOG_DEBUG("checkpoints", "checkpoint reader: %s", rd_kafka_message_errstr(msg));
        } else {
            req_t *r = msg->key && msg->payload ? member_of(m, n, msg->key, msg->key_len) : NULL;
            if (r) {
                outboxd_checkpoint_t c2;
                char derr[256];
                if (outboxd_checkpoint_decode(msg->payload, msg->len, &c2, derr, sizeof(derr)) ==
                    0) {
                    *r->ck = c2;
                    r->records++;
                } else {
                    LOG_WARN(r->name, "skipping unreadable checkpoint at offset %lld: %s",
                             (long long)msg->offset, derr);
                }
            }
            if (idx >= 0 && !done[idx] && msg->offset + 1 >= target[idx]) {
                done[idx] = true;
                remaining--;
            }
        }
        rd_kafka_message_destroy(msg);
    }
    rc = 0;
out:
    free(target);
    free(done);
    if (parts)
        rd_kafka_topic_partition_list_destroy(parts);
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return rc;
}

static void wait_step(outboxd_ckstore_t *cs)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += WAIT_STEP_MS * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(&cs->cv, &cs->mu, &ts);
}

/* The leader of a round: gathers who asked, reads once, answers them all. */
static void lead_round(outboxd_ckstore_t *cs, void (*keepalive)(void *), void *opaque)
{
    cs->reading = true;
    if (cs->gather_ms > 0) {
        /* Sources starting together ask within a few milliseconds of each
         * other: a short wait lets one read serve them all. */
        pthread_mutex_unlock(&cs->mu);
        usleep((useconds_t)cs->gather_ms * 1000);
        pthread_mutex_lock(&cs->mu);
    }
    size_t n = 0;
    for (req_t *r = cs->waiting; r; r = r->next)
        n++;
    req_t **m = calloc(n ? n : 1, sizeof(*m));
    size_t i = 0;
    for (req_t *r = cs->waiting; r; r = r->next) {
        r->state = REQ_IN_ROUND;
        if (m)
            m[i++] = r;
    }
    req_t *members = cs->waiting;
    cs->waiting = NULL; /* closed: later askers wait for the next round */
    long round = ++cs->rounds;
    pthread_mutex_unlock(&cs->mu);

    char err[512] = "out of memory";
    int rc = -1;
    int64_t t0 = outboxd_now_ms();
    if (m) {
        qsort(m, n, sizeof(*m), by_name);
        rc = read_round(cs, m, n, keepalive, opaque, err, sizeof(err));
    }
    LOG_DEBUG("checkpoints", "round %ld: read %s for %zu source(s) in %lld ms%s%s", round,
              cs->topic, n, (long long)(outboxd_now_ms() - t0), rc ? ": " : "", rc ? err : "");
    free(m);

    pthread_mutex_lock(&cs->mu);
    for (req_t *r = members; r; r = r->next) {
        r->rc = rc;
        if (rc)
            snprintf(r->err, sizeof(r->err), "%s", err);
        r->state = REQ_DONE;
    }
    cs->reading = false;
    pthread_cond_broadcast(&cs->cv);
}

int outboxd_ckstore_read(outboxd_ckstore_t *cs, const char *name, outboxd_checkpoint_t *ck,
                         void (*keepalive)(void *), void *opaque, char *errstr, size_t errstr_size)
{
    memset(ck, 0, sizeof(*ck));
    req_t r = {.name = name, .ck = ck, .state = REQ_WAITING};
    pthread_mutex_lock(&cs->mu);
    r.next = cs->waiting;
    cs->waiting = &r;
    while (r.state != REQ_DONE) {
        if (!cs->reading && r.state == REQ_WAITING) {
            lead_round(cs, keepalive, opaque); /* returns with the lock held */
            continue;
        }
        wait_step(cs);
        pthread_mutex_unlock(&cs->mu);
        if (keepalive)
            keepalive(opaque);
        pthread_mutex_lock(&cs->mu);
    }
    pthread_mutex_unlock(&cs->mu);
    if (r.rc) {
        snprintf(errstr, errstr_size, "%s", r.err);
        return r.rc;
    }
    LOG_DEBUG(name, "read %ld checkpoint records", r.records);
    return 0;
}

/*
 * The kit's consumer: read_committed, one event at a time, each applied in a
 * local transaction that also inserts the event id into the inbox; the Kafka
 * offset is committed only after that transaction commits. A crash between
 * the two redelivers the event, and the inbox makes it a no-op.
 *
 * A failing handler is retried with exponential backoff; after conf->retries
 * retries the event goes to "<topic>.dlt" through the service's own outbox
 * (with the error), in a transaction that also records it in the inbox, and
 * the consumer goes on. A failure that says what the handler needs is away
 * (the service's database, Redis: see OUTBOXD_SHOP_UNAVAILABLE) is not the
 * event's fault: it is retried until that answers and never counted against
 * the retries, as a schema registry that is away is. Only events that cannot
 * be applied reach the dead-letter topic. One exception (LOST_INSIDE_MAX):
 * an event during whose own statements the session ends again and again,
 * while the database answers each time in between, is the cause, not the
 * victim (a statement that crashes or terminates its backend); it is counted
 * like any failing event, so it cannot hold its partition for ever.
 *
 * Throttling: a token bucket (conf->rate_per_s) in front of the handler, and
 * librdkafka's prefetch bounded to conf->max_in_flight messages, so a slow
 * service applies back-pressure on the broker instead of buffering.
 */
#include "outboxd/shop/kit.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>

#include "outboxd/common/log.h"
#include "outboxd/common/util.h"

/* ------------------------------------------------------------- throttle */

void outboxd_shop_throttle_init(outboxd_shop_throttle_t *t, double rate, int64_t now_us)
{
    t->rate = rate;
    t->burst = rate > 1 ? rate / 10 : 1; /* a tenth of a second's worth */
    if (t->burst < 1)
        t->burst = 1;
    t->tokens = t->burst;
    t->last_us = now_us;
}

int64_t outboxd_shop_throttle_take(outboxd_shop_throttle_t *t, int64_t now_us)
{
    if (t->rate <= 0)
        return 0;
    if (now_us > t->last_us) {
        t->tokens += (double)(now_us - t->last_us) * t->rate / 1e6;
        if (t->tokens > t->burst)
            t->tokens = t->burst;
        t->last_us = now_us;
    }
    if (t->tokens >= 1) {
        t->tokens -= 1;
        return 0;
    }
    int64_t wait = (int64_t)((1 - t->tokens) * 1e6 / t->rate) + 1;
    return wait;
}

/* ------------------------------------------------------------- consumer */

struct outboxd_shop_consumer {
    outboxd_shop_conf_t conf;
    char *name;
    char scope[64];
    char **topics; /* full names, prefix included */
    size_t n_topics;
    outboxd_shop_handler_fn handler;
    void *opaque;
    rd_kafka_t *rk;
    outboxd_shop_decoder_t *dec;
    PGconn *conn;
    bool read_only; /* the last statement met 25006: reconnect before the next */
    outboxd_shop_throttle_t throttle;
    pthread_t thread;
    bool started;
    atomic_int stop;
    pthread_mutex_t mu; /* guards stats */
    outboxd_shop_consumer_stats_t stats;
};

const char *outboxd_shop_consumer_name(const outboxd_shop_consumer_t *c)
{
    return c->name;
}

bool outboxd_shop_consumer_assigned(outboxd_shop_consumer_t *c)
{
    rd_kafka_topic_partition_list_t *l = NULL;
    if (rd_kafka_assignment(c->rk, &l) != RD_KAFKA_RESP_ERR_NO_ERROR || !l)
        return false;
    bool any = l->cnt > 0;
    rd_kafka_topic_partition_list_destroy(l);
    return any;
}

void outboxd_shop_consumer_stats(outboxd_shop_consumer_t *c, outboxd_shop_consumer_stats_t *out)
{
    pthread_mutex_lock(&c->mu);
    *out = c->stats;
    pthread_mutex_unlock(&c->mu);
}

static void stat_add(outboxd_shop_consumer_t *c, int64_t *field, int64_t n)
{
    pthread_mutex_lock(&c->mu);
    *field += n;
    pthread_mutex_unlock(&c->mu);
}

static bool set_conf(rd_kafka_conf_t *kc, const char *k, const char *v, char *errstr,
                     size_t errstr_size)
{
    if (rd_kafka_conf_set(kc, k, v, errstr, errstr_size) != RD_KAFKA_CONF_OK)
        return false;
    return true;
}

/* Creates the consumed topics (and their .dlt) so that subscribing never
 * races the first event; "already exists" is fine. */
static int create_topics(outboxd_shop_consumer_t *c, char *errstr, size_t errstr_size)
{
    size_t n = c->n_topics * 2;
    rd_kafka_NewTopic_t **nt = calloc(n, sizeof(*nt));
    if (!nt) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    int parts = c->conf.topic_partitions > 0 ? c->conf.topic_partitions : 3;
    for (size_t i = 0; i < c->n_topics; i++) {
        char dlt[512];
        snprintf(dlt, sizeof(dlt), "%s.dlt", c->topics[i]);
        /* Replication factor -1: the broker's default.replication.factor
         * (1 would lose saga commands with one broker, and fail outright
         * where min.insync.replicas is 2). */
        nt[2 * i] = rd_kafka_NewTopic_new(c->topics[i], parts, -1, NULL, 0);
        nt[2 * i + 1] = rd_kafka_NewTopic_new(dlt, 1, -1, NULL, 0);
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(c->rk);
    rd_kafka_AdminOptions_t *opt = rd_kafka_AdminOptions_new(c->rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_operation_timeout(opt, 30000, NULL, 0);
    rd_kafka_CreateTopics(c->rk, nt, n, opt, q);
    int rc = 0;
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 60000);
    if (!ev) {
        snprintf(errstr, errstr_size, "creating topics: no answer from %s within 60 s",
                 c->conf.bootstrap);
        rc = -1;
    } else if (rd_kafka_event_error(ev)) {
        snprintf(errstr, errstr_size, "creating topics: %s", rd_kafka_event_error_string(ev));
        rc = -1;
    } else {
        const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
        size_t cnt;
        const rd_kafka_topic_result_t **tr = rd_kafka_CreateTopics_result_topics(res, &cnt);
        for (size_t i = 0; i < cnt; i++) {
            rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tr[i]);
            if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                snprintf(errstr, errstr_size, "creating topic %s: %s",
                         rd_kafka_topic_result_name(tr[i]),
                         rd_kafka_topic_result_error_string(tr[i]));
                rc = -1;
            }
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_AdminOptions_destroy(opt);
    rd_kafka_queue_destroy(q);
    for (size_t i = 0; i < n; i++)
        rd_kafka_NewTopic_destroy(nt[i]);
    free(nt);
    return rc;
}

outboxd_shop_consumer_t *outboxd_shop_consumer_new(const outboxd_shop_conf_t *conf,
                                                   const char *name, const char *const *topics,
                                                   size_t n_topics, outboxd_shop_handler_fn handler,
                                                   void *opaque, char *errstr, size_t errstr_size)
{
    outboxd_shop_consumer_t *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    c->conf = *conf;
    c->name = strdup(name);
    c->handler = handler;
    c->opaque = opaque;
    snprintf(c->scope, sizeof(c->scope), "%s/%s", conf->service, name);
    c->topics = calloc(n_topics, sizeof(char *));
    if (!c->name || !c->topics) {
        snprintf(errstr, errstr_size, "out of memory");
        goto fail;
    }
    c->n_topics = n_topics;
    for (size_t i = 0; i < n_topics; i++) {
        if (asprintf(&c->topics[i], "%s%s", conf->topic_prefix ? conf->topic_prefix : "",
                     topics[i]) < 0) {
            c->topics[i] = NULL;
            snprintf(errstr, errstr_size, "out of memory");
            goto fail;
        }
    }
    c->dec = outboxd_shop_decoder_new(conf->registry_url, errstr, errstr_size);
    if (!c->dec)
        goto fail;

    char group[512], inflight[32];
    snprintf(group, sizeof(group), "%s%s.%s", conf->group_prefix ? conf->group_prefix : "",
             conf->service, name);
    snprintf(inflight, sizeof(inflight), "%d", conf->max_in_flight > 0 ? conf->max_in_flight : 100);
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    if (!set_conf(kc, "bootstrap.servers", conf->bootstrap, errstr, errstr_size) ||
        !set_conf(kc, "group.id", group, errstr, errstr_size) ||
        !set_conf(kc, "isolation.level", "read_committed", errstr, errstr_size) ||
        !set_conf(kc, "enable.auto.commit", "false", errstr, errstr_size) ||
        !set_conf(kc, "auto.offset.reset", "earliest", errstr, errstr_size) ||
        !set_conf(kc, "queued.min.messages", inflight, errstr, errstr_size) ||
        !set_conf(kc, "queued.max.messages.kbytes", "4096", errstr, errstr_size) ||
        !set_conf(kc, "topic.metadata.refresh.interval.ms", "2000", errstr, errstr_size) ||
        !set_conf(kc, "session.timeout.ms", "10000", errstr, errstr_size) ||
        !set_conf(kc, "heartbeat.interval.ms", "1000", errstr, errstr_size)) {
        rd_kafka_conf_destroy(kc);
        goto fail;
    }
    char kerr[512];
    c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, kerr, sizeof(kerr));
    if (!c->rk) {
        rd_kafka_conf_destroy(kc);
        snprintf(errstr, errstr_size, "kafka consumer: %s", kerr);
        goto fail;
    }
    rd_kafka_poll_set_consumer(c->rk);
    if (create_topics(c, errstr, errstr_size) < 0)
        goto fail;
    rd_kafka_topic_partition_list_t *tl = rd_kafka_topic_partition_list_new((int)n_topics);
    for (size_t i = 0; i < n_topics; i++)
        rd_kafka_topic_partition_list_add(tl, c->topics[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(c->rk, tl);
    rd_kafka_topic_partition_list_destroy(tl);
    if (e) {
        snprintf(errstr, errstr_size, "subscribe: %s", rd_kafka_err2str(e));
        goto fail;
    }
    c->conn = outboxd_shop_connect(conf->dsn, errstr, errstr_size);
    if (!c->conn)
        goto fail;
    outboxd_shop_throttle_init(&c->throttle, conf->rate_per_s, outboxd_now_us());
    return c;
fail:
    outboxd_shop_consumer_destroy(c);
    return NULL;
}

/* Sleeps up to us, waking early when asked to stop. */
static void nap_us(outboxd_shop_consumer_t *c, int64_t us)
{
    while (us > 0 && !atomic_load(&c->stop)) {
        int64_t step = us > 50000 ? 50000 : us;
        struct timespec ts = {.tv_sec = step / 1000000, .tv_nsec = (step % 1000000) * 1000};
        nanosleep(&ts, NULL);
        us -= step;
    }
}

static void ensure_conn(outboxd_shop_consumer_t *c)
{
    if (PQstatus(c->conn) != CONNECTION_OK) {
        LOG_WARN(c->scope, "database connection lost; reconnecting");
        PQreset(c->conn);
    } else if (c->read_only) {
        /* A session on a server in recovery (a standby, or a failover not
         * finished) takes no writes: a new one finds the primary (a dsn
         * with several hosts and target_session_attrs=read-write). */
        LOG_WARN(c->scope, "database session is read-only (25006); reconnecting");
        PQreset(c->conn);
    }
    c->read_only = false;
}

/*
 * Bytes from the wire (a Kafka key, a header) as text a database takes:
 * valid UTF-8 without NUL, at most max bytes (cut at a character
 * boundary); anything else as "hex:" and the bytes in hex (as many as
 * fit). A foreign producer's binary key must not make an event impossible
 * to store, dead letter included.
 */
static void clean_text(const void *p, size_t n, size_t max, char *out, size_t out_size)
{
    const unsigned char *b = p;
    /* jansson's check of UTF-8 (what the database will insist on too). */
    json_t *valid = memchr(b, 0, n) ? NULL : json_stringn((const char *)b, n);
    if (valid) {
        json_decref(valid);
        size_t cut = n < max ? n : max;
        if (cut > out_size - 1)
            cut = out_size - 1;
        while (cut > 0 && cut < n && (b[cut] & 0xC0) == 0x80)
            cut--; /* not inside a character */
        memcpy(out, b, cut);
        out[cut] = '\0';
        return;
    }
    size_t o = (size_t)snprintf(out, out_size, "hex:");
    for (size_t k = 0; k < n && o + 2 < out_size && o + 2 <= max; k++)
        o += (size_t)snprintf(out + o, out_size - o, "%02x", b[k]);
}

static void rollback(outboxd_shop_consumer_t *c)
{
    char e[256];
    if (PQtransactionStatus(c->conn) != PQTRANS_IDLE)
        outboxd_shop_exec(c->conn, "ROLLBACK", e, sizeof(e));
}

/* Inserts the inbox row; returns 1 when new, 0 when already handled, -1 on error. */
static int inbox_insert(outboxd_shop_consumer_t *c, const char *event_id, char *errstr,
                        size_t errstr_size)
{
    const char *p[2] = {c->name, event_id};
    PGresult *res = outboxd_shop_query(c->conn,
                                       "INSERT INTO inbox (consumer, event_id) VALUES ($1, $2) "
                                       "ON CONFLICT DO NOTHING",
                                       2, p, errstr, errstr_size);
    if (!res)
        return -1;
    int n = atoi(PQcmdTuples(res));
    PQclear(res);
    return n > 0 ? 1 : 0;
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : "";
}

/* A failure of the service's database itself rather than of the statement:
 * the connection is gone or the SQLSTATE says "try again". Read before the
 * ROLLBACK, which would not change either. */
static int db_failure(outboxd_shop_consumer_t *c)
{
    if (strcmp(outboxd_shop_last_sqlstate(), "25006") == 0)
        c->read_only = true;
    return outboxd_shop_db_away(c->conn) ? OUTBOXD_SHOP_UNAVAILABLE : OUTBOXD_SHOP_FAILED;
}

/* One attempt: returns 0 applied, 1 duplicate, OUTBOXD_SHOP_FAILED or
 * OUTBOXD_SHOP_UNAVAILABLE (errstr filled). *lost_inside tells that the
 * transaction had begun (BEGIN and the inbox row went through, so the
 * database answered) and the session then ended during the handler's
 * statements or the COMMIT. */
static int apply_once(outboxd_shop_consumer_t *c, const char *event_id,
                      const outboxd_shop_event_t *ev, bool *lost_inside, char *errstr,
                      size_t errstr_size)
{
    *lost_inside = false;
    outboxd_shop_sqlstate_clear();
    ensure_conn(c);
    if (outboxd_shop_exec(c->conn, "BEGIN", errstr, errstr_size) < 0)
        return db_failure(c);
    int fresh = inbox_insert(c, event_id, errstr, errstr_size);
    if (fresh <= 0) {
        int rc = fresh == 0 ? 1 : db_failure(c);
        rollback(c);
        return rc;
    }
    int hrc = c->handler(c->opaque, c->conn, ev, errstr, errstr_size);
    if (hrc >= 0 && outboxd_shop_exec(c->conn, "COMMIT", errstr, errstr_size) == 0)
        return 0;
    int rc = hrc == OUTBOXD_SHOP_UNAVAILABLE ? hrc : db_failure(c);
    *lost_inside = PQstatus(c->conn) == CONNECTION_BAD;
    rollback(c);
    return rc;
}

/* Consecutive attempts of one event whose session ended inside its own
 * transaction (see apply_once) after which the event counts as failing (and
 * each further such attempt too). A database restarting or failing over
 * ends a session once, maybe twice, and then refuses connections for a
 * while (which starts the count again): three in a row with the database
 * answering in between is the event. */
#define LOST_INSIDE_MAX 3

/* The event goes to <topic>.dlt through our outbox, recorded in the inbox
 * in the same transaction so a redelivery does not dead-letter it twice. */
static int dead_letter(outboxd_shop_consumer_t *c, const rd_kafka_message_t *m,
                       const char *event_id, json_t *envelope, const char *trace_id,
                       const char *error, int attempts, bool minimal, char *errstr,
                       size_t errstr_size)
{
    ensure_conn(c);
    const char *full = rd_kafka_topic_name(m->rkt);
    size_t plen = strlen(c->conf.topic_prefix ? c->conf.topic_prefix : "");
    const char *topic = strlen(full) >= plen ? full + plen : full;
    char dlt[512];
    snprintf(dlt, sizeof(dlt), "%s.dlt", topic);
    json_t *p = json_object();
    json_object_set_new(p, "error", json_string(error));
    json_object_set_new(p, "consumer", json_string(c->scope));
    json_object_set_new(p, "topic", json_string(full));
    json_object_set_new(p, "partition", json_integer(m->partition));
    json_object_set_new(p, "offset", json_integer(m->offset));
    json_object_set_new(p, "attempts", json_integer(attempts));
    json_object_set_new(p, "eventId", json_string(event_id));
    if (envelope && !minimal)
        json_object_set(p, "event", envelope);
    else if (envelope)
        json_object_set_new(p, "eventOmitted",
                            json_string("the event's value could not be stored (see error)"));
    char key[256];
    clean_text(m->key ? m->key : "", m->key ? m->key_len : 0, 200, key, sizeof(key));
    int rc = -1;
    if (outboxd_shop_exec(c->conn, "BEGIN", errstr, errstr_size) < 0)
        goto out;
    int fresh = inbox_insert(c, event_id, errstr, errstr_size);
    if (fresh < 0)
        goto out;
    if (fresh == 1 && outboxd_shop_outbox_write(c->conn, &c->conf, dlt, key[0] ? key : event_id,
                                                "DeadLetter", p, trace_id, errstr, errstr_size) < 0)
        goto out;
    if (outboxd_shop_exec(c->conn, "COMMIT", errstr, errstr_size) < 0)
        goto out;
    rc = 0;
out:
    if (rc < 0)
        rollback(c);
    json_decref(p);
    return rc;
}

/* Returns true when the event is done with (applied, duplicate or
 * dead-lettered): only then may its offset be committed. */
static bool handle_message(outboxd_shop_consumer_t *c, const rd_kafka_message_t *m)
{
    char errstr[1024] = "";
    char event_id[256];
    /* An undecodable value has no event id: its position names it. */
    snprintf(event_id, sizeof(event_id), "%s/%d/%lld", rd_kafka_topic_name(m->rkt), m->partition,
             (long long)m->offset);
    char trace_id[128] = "";
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const void *v;
        size_t vlen;
        if (rd_kafka_header_get_last(hdrs, "trace_id", &v, &vlen) == RD_KAFKA_RESP_ERR_NO_ERROR &&
            v)
            clean_text(v, vlen, 127, trace_id, sizeof(trace_id));
    }
    json_t *env = NULL;
    if (!m->payload)
        snprintf(errstr, sizeof(errstr), "empty value (a tombstone?)");
    /* A registry that is away is no reason to give up on a good event: wait
     * for it (the offset stays uncommitted), with backoff. */
    for (int64_t backoff = 200; m->payload;) {
        bool retry = false;
        env = outboxd_shop_decode(c->dec, m->payload, m->len, &retry, errstr, sizeof(errstr));
        if (env || !retry)
            break;
        LOG_WARN(c->scope, "event at %s: cannot decode yet, retrying in %lld ms: %s", event_id,
                 (long long)backoff, errstr);
        stat_add(c, &c->stats.registry_waits, 1);
        nap_us(c, backoff * 1000);
        if (atomic_load(&c->stop))
            return false;
        backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
    }
    int attempts = 0;
    if (env) {
        const char *id = jstr(env, "id");
        if (*id)
            snprintf(event_id, sizeof(event_id), "%s", id);
        const char *full = rd_kafka_topic_name(m->rkt);
        size_t plen = strlen(c->conf.topic_prefix ? c->conf.topic_prefix : "");
        outboxd_shop_event_t ev = {
            .id = event_id,
            .type = jstr(env, "type"),
            .topic = strlen(full) >= plen ? full + plen : full,
            .key = jstr(env, "aggregate_id"),
            .trace_id = trace_id,
            .payload = json_object_get(env, "payload"),
            .envelope = env,
        };
        int64_t backoff = c->conf.retry_backoff_ms > 0 ? c->conf.retry_backoff_ms : 100;
        int64_t away_backoff = 200, away_ms = 0;
        int lost_inside = 0;
        for (;;) {
            attempts++;
            bool inside;
            int rc = apply_once(c, event_id, &ev, &inside, errstr, sizeof(errstr));
            /* in a row: any other outcome (the database refusing
             * connections, an ordinary failure) starts the count again */
            lost_inside = inside ? lost_inside + 1 : 0;
            if (rc == OUTBOXD_SHOP_UNAVAILABLE && lost_inside >= LOST_INSIDE_MAX) {
                char why[sizeof(errstr)];
                snprintf(why, sizeof(why),
                         "the database session ended inside this event's transaction in each of "
                         "the last %d attempts, the database answering in between: the event is "
                         "the likely cause: %.700s",
                         lost_inside, errstr);
                snprintf(errstr, sizeof(errstr), "%s", why);
                rc = OUTBOXD_SHOP_FAILED;
            }
            if (rc == OUTBOXD_SHOP_UNAVAILABLE) {
                /* Not the event's fault: wait, do not count it (the offset
                 * stays uncommitted until it is applied). After a minute
                 * the wait is an ERROR: someone should look. */
                attempts--;
                if (away_ms < 60000)
                    LOG_WARN(c->scope,
                             "event %s (%s): waiting for what it needs, retrying in %lld ms (not "
                             "counted against the retries): %s",
                             event_id, ev.topic, (long long)away_backoff, errstr);
                else
                    LOG_ERROR(c->scope,
                              "event %s (%s): still waiting for what it needs after %lld s, "
                              "retrying in %lld ms: %s",
                              event_id, ev.topic, (long long)(away_ms / 1000),
                              (long long)away_backoff, errstr);
                stat_add(c, &c->stats.unavailable_waits, 1);
                nap_us(c, away_backoff * 1000);
                away_ms += away_backoff;
                if (atomic_load(&c->stop)) {
                    json_decref(env);
                    return false;
                }
                away_backoff = away_backoff * 2 > 5000 ? 5000 : away_backoff * 2;
                continue;
            }
            if (rc == 0) {
                stat_add(c, &c->stats.handled, 1);
                json_decref(env);
                return true;
            }
            if (rc == 1) {
                LOG_DEBUG(c->scope, "event %s already handled; skipped", event_id);
                stat_add(c, &c->stats.duplicates, 1);
                json_decref(env);
                return true;
            }
            if (attempts > c->conf.retries || atomic_load(&c->stop))
                break;
            LOG_WARN(c->scope, "event %s (%s) failed (attempt %d of %d), retrying in %lld ms: %s",
                     event_id, ev.topic, attempts, c->conf.retries + 1, (long long)backoff, errstr);
            stat_add(c, &c->stats.retries, 1);
            nap_us(c, backoff * 1000);
            backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
        }
        if (atomic_load(&c->stop) && attempts <= c->conf.retries) {
            /* Not given up on: the offset stays uncommitted, the event comes back. */
            json_decref(env);
            return false;
        }
    }
    LOG_ERROR(c->scope, "event %s dead-lettered to %s.dlt after %d attempt(s): %s", event_id,
              rd_kafka_topic_name(m->rkt), attempts, errstr);
    char derr[1024];
    /* Losing nothing matters more than going on: retry the dead letter until
     * it is written (the database may be down). */
    int64_t backoff = 200;
    bool minimal = false;
    for (;;) {
        outboxd_shop_sqlstate_clear();
        if (dead_letter(c, m, event_id, env, trace_id, errstr, attempts, minimal, derr,
                        sizeof(derr)) == 0)
            break;
        /* The event itself may be what the database refuses (a string
         * jsonb does not take, such as one with \u0000: SQLSTATE class 22):
         * then the dead letter goes without it, naming where it is. */
        if (!minimal && env && strncmp(outboxd_shop_last_sqlstate(), "22", 2) == 0) {
            LOG_ERROR(c->scope,
                      "cannot store event %s in its dead letter (%s); writing the dead "
                      "letter without it",
                      event_id, derr);
            minimal = true;
            continue;
        }
        if (strcmp(outboxd_shop_last_sqlstate(), "25006") == 0)
            c->read_only = true;
        LOG_ERROR(c->scope, "cannot write the dead letter for %s (retrying): %s", event_id, derr);
        if (atomic_load(&c->stop)) {
            json_decref(env);
            return false;
        }
        nap_us(c, backoff * 1000);
        backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
    }
    stat_add(c, &c->stats.dead_letters, 1);
    json_decref(env);
    return true;
}

static void *consumer_main(void *arg)
{
    outboxd_shop_consumer_t *c = arg;
    LOG_INFO(c->scope, "consuming %zu topic(s), first %s, rate %s, max in flight %d", c->n_topics,
             c->topics[0], c->conf.rate_per_s > 0 ? "limited" : "unlimited", c->conf.max_in_flight);
    while (!atomic_load(&c->stop)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c->rk, 200);
        if (!m)
            continue;
        if (m->err) {
            /* Right after the kit created a topic the broker may not list it
             * yet: not worth a warning. */
            if (m->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                LOG_DEBUG(c->scope, "consumer: %s", rd_kafka_message_errstr(m));
            else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                LOG_WARN(c->scope, "consumer: %s", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        int64_t wait;
        int64_t waited = 0;
        while ((wait = outboxd_shop_throttle_take(&c->throttle, outboxd_now_us())) > 0 &&
               !atomic_load(&c->stop)) {
            nap_us(c, wait);
            waited += wait;
        }
        if (waited)
            stat_add(c, &c->stats.throttled_ms, waited / 1000);
        if (atomic_load(&c->stop)) {
            rd_kafka_message_destroy(m);
            break;
        }
        if (handle_message(c, m)) {
            rd_kafka_resp_err_t e = rd_kafka_commit_message(c->rk, m, 0);
            if (e)
                LOG_WARN(c->scope,
                         "offset commit failed (the event will be redelivered and "
                         "skipped by the inbox): %s",
                         rd_kafka_err2str(e));
        }
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

int outboxd_shop_consumer_start(outboxd_shop_consumer_t *c, char *errstr, size_t errstr_size)
{
    int e = pthread_create(&c->thread, NULL, consumer_main, c);
    if (e) {
        snprintf(errstr, errstr_size, "pthread_create: %s", strerror(e));
        return -1;
    }
    c->started = true;
    return 0;
}

void outboxd_shop_consumer_destroy(outboxd_shop_consumer_t *c)
{
    if (!c)
        return;
    atomic_store(&c->stop, 1);
    if (c->started)
        pthread_join(c->thread, NULL);
    if (c->rk) {
        rd_kafka_consumer_close(c->rk);
        rd_kafka_destroy(c->rk);
    }
    if (c->conn)
        PQfinish(c->conn);
    outboxd_shop_decoder_destroy(c->dec);
    for (size_t i = 0; i < c->n_topics; i++)
        free(c->topics[i]);
    free(c->topics);
    free(c->name);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

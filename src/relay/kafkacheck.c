/*
 * `outboxd check`: the configuration of the Kafka topics the relay writes
 * to (kafkacheck.h says what is checked and why).
 */
#include "outboxd/relay/kafkacheck.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/common/log.h"
#include "outboxd/relay/cdc.h"
#include "outboxd/relay/sink.h"

typedef enum { ROLE_CHECKPOINT, ROLE_DEAD_LETTER, ROLE_EVENTS } role_t;

typedef struct checked_topic {
    const char *name;
    char *owned; /* name, when built here (a cdc table's topic) */
    role_t role;
    char where[160]; /* events: the source and table that write to it */
} checked_topic_t;

static const char *role_name(role_t r)
{
    return r == ROLE_CHECKPOINT ? "checkpoint" : r == ROLE_DEAD_LETTER ? "dead-letter" : "events";
}

/* Adds an event topic unless already in the list (the first role wins: a
 * fixed event topic equal to a reserved one is refused by the router
 * anyway); takes owned (NULL: name is the configuration's). */
static void add_events(checked_topic_t *t, size_t *n, const char *name, char *owned,
                       const char *where)
{
    for (size_t j = 0; j < *n; j++) {
        if (strcmp(t[j].name, name) == 0) {
            free(owned);
            return;
        }
    }
    t[*n] = (checked_topic_t){.name = name, .owned = owned, .role = ROLE_EVENTS};
    snprintf(t[*n].where, sizeof(t[*n].where), "%s", where);
    (*n)++;
}

static void free_topics(checked_topic_t *t, size_t n)
{
    for (size_t i = 0; t && i < n; i++)
        free(t[i].owned);
    free(t);
}

/* The topics to look at, each once: the relay's own two, and every event
 * topic the configuration names outright (outbox tables and messages with a
 * fixed topic, cdc tables); a template's topics are known only from rows. */
static size_t gather(const outboxd_config_t *conf, checked_topic_t **out)
{
    size_t cap = 2, n = 0;
    for (size_t i = 0; i < conf->n_sources; i++)
        cap += conf->sources[i].n_tables + conf->sources[i].n_messages;
    checked_topic_t *t = calloc(cap, sizeof(*t));
    if (!t)
        return 0;
    t[n++] = (checked_topic_t){.name = conf->checkpoint_topic, .role = ROLE_CHECKPOINT};
    if (strcmp(conf->dead_letter_topic, conf->checkpoint_topic) != 0)
        t[n++] = (checked_topic_t){.name = conf->dead_letter_topic, .role = ROLE_DEAD_LETTER};
    char where[160];
    for (size_t i = 0; i < conf->n_sources; i++) {
        const outboxd_source_conf_t *src = &conf->sources[i];
        for (size_t k = 0; k < src->n_tables; k++) {
            const outboxd_table_conf_t *tc = &src->tables[k];
            if (tc->mode == OUTBOXD_MODE_CDC) {
                outboxd_buf_t b = {0};
                if (!outboxd_cdc_topic_name(src, tc, &b)) {
                    outboxd_buf_free(&b);
                    continue;
                }
                snprintf(where, sizeof(where), ", written by source %s, cdc table %s.%s", src->name,
                         tc->schema, tc->name);
                add_events(t, &n, b.data, b.data, where);
                continue;
            }
            if (tc->mode != OUTBOXD_MODE_OUTBOX || !tc->topic || strstr(tc->topic, "${"))
                continue;
            snprintf(where, sizeof(where), ", written by source %s, table %s.%s", src->name,
                     tc->schema, tc->name);
            add_events(t, &n, tc->topic, NULL, where);
        }
        for (size_t k = 0; k < src->n_messages; k++) {
            const outboxd_message_conf_t *mc = &src->messages[k];
            if (!mc->topic || strstr(mc->topic, "${"))
                continue;
            snprintf(where, sizeof(where), ", written by source %s, messages with prefix '%s'",
                     src->name, mc->prefix);
            add_events(t, &n, mc->topic, NULL, where);
        }
    }
    *out = t;
    return n;
}

static const char *entry(const rd_kafka_ConfigResource_t *res, const char *name)
{
    size_t n;
    const rd_kafka_ConfigEntry_t **e = rd_kafka_ConfigResource_configs(res, &n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(rd_kafka_ConfigEntry_name(e[i]), name) == 0)
            return rd_kafka_ConfigEntry_value(e[i]);
    return NULL;
}

/* One topic's answer; returns its problems. */
static int judge(const outboxd_config_t *conf, const checked_topic_t *t,
                 const rd_kafka_ConfigResource_t *res, int auto_create, bool say_ok,
                 outboxd_buf_t *report)
{
    const char *role = role_name(t->role);
    const char *bs = conf->bootstrap_servers;
    rd_kafka_resp_err_t err = rd_kafka_ConfigResource_error(res);
    if (err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
        if (t->role == ROLE_CHECKPOINT) {
            outboxd_buf_printf(report,
                               "kafka: topic %s (checkpoint): does not exist yet; the relay "
                               "creates it, compacted, at its first start\n",
                               t->name);
            return 0;
        }
        if (t->role == ROLE_DEAD_LETTER) {
            outboxd_buf_printf(report,
                               "kafka: topic %s (dead-letter): does not exist yet; created when "
                               "first needed\n",
                               t->name);
            return 0;
        }
        if (conf->missing_topic == OUTBOXD_MISSING_TOPIC_CREATE || auto_create == 1) {
            outboxd_buf_printf(report,
                               "kafka: topic %s (events%s): does not exist yet; created at its "
                               "first event (%s)\n",
                               t->name, t->where,
                               conf->missing_topic == OUTBOXD_MISSING_TOPIC_CREATE
                                   ? "relay.missing_topic: create"
                                   : "the broker's auto.create.topics.enable=true");
            return 0;
        }
        outboxd_buf_printf(
            report,
            "kafka: topic %s (events%s) does not exist: with relay.missing_topic: %s its events "
            "would %s; create it (kafka-topics.sh --bootstrap-server %s --create --topic %s) or "
            "set relay.missing_topic: create%s\n",
            t->name, t->where,
            conf->missing_topic == OUTBOXD_MISSING_TOPIC_WAIT ? "wait" : "dead_letter",
            conf->missing_topic == OUTBOXD_MISSING_TOPIC_WAIT
                ? "wait (the source stops there) until it exists"
                : "go to the dead-letter topic",
            bs, t->name,
            auto_create < 0 ? " (the broker's auto.create.topics.enable could not be read: if it "
                              "is true, the broker creates the topic at the first event)"
                            : "");
        return 1;
    }
    if (err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
        err == RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED) {
        outboxd_buf_printf(report,
                           "kafka: topic %s (%s): not checked: this client may not read its "
                           "configuration (%s; the DescribeConfigs ACL)\n",
                           t->name, role, rd_kafka_err2str(err));
        return 0;
    }
    if (err) {
        const char *why = rd_kafka_ConfigResource_error_string(res);
        outboxd_buf_printf(report, "kafka: topic %s (%s): not checked: %s\n", t->name, role,
                           why && *why ? why : rd_kafka_err2str(err));
        return 0;
    }
    int problems = 0;
    const char *policy = entry(res, "cleanup.policy");
    if (t->role == ROLE_CHECKPOINT && policy && !strstr(policy, "compact")) {
        outboxd_buf_printf(
            report,
            "kafka: topic %s (checkpoint) has cleanup.policy=%s, but it must be compacted: its "
            "records are deleted with the topic's retention (an idle source's last checkpoint "
            "with them) and every start reads all it keeps; fix: kafka-configs.sh "
            "--bootstrap-server %s --alter --entity-type topics --entity-name %s --add-config "
            "cleanup.policy=compact\n",
            t->name, policy, bs, t->name);
        problems++;
    }
    const char *mmb = entry(res, "max.message.bytes");
    long long max_bytes = mmb ? strtoll(mmb, NULL, 10) : -1;
    if (mmb && t->role == ROLE_CHECKPOINT && max_bytes < OUTBOXD_MIN_CHECKPOINT_MESSAGE_BYTES) {
        outboxd_buf_printf(
            report,
            "kafka: topic %s (checkpoint) has max.message.bytes=%lld: a checkpoint record takes "
            "a few hundred bytes and one Kafka refuses stops the relay%s; fix: kafka-configs.sh "
            "--bootstrap-server %s --alter --entity-type topics --entity-name %s --add-config "
            "max.message.bytes=1048588\n",
            t->name, max_bytes,
            max_bytes < OUTBOXD_MIN_TOPIC_MESSAGE_BYTES
                ? " (and below 100 bytes the broker may not write the marker that ends a "
                  "transaction, which then stays pending for good)"
                : "",
            bs, t->name);
        problems++;
    } else if (mmb && max_bytes < OUTBOXD_MIN_TOPIC_MESSAGE_BYTES) {
        outboxd_buf_printf(
            report,
            "kafka: topic %s (%s%s) has max.message.bytes=%lld: below %d bytes the broker may "
            "not write the marker that ends a Kafka transaction (78 bytes in Kafka 3.9), which "
            "then stays pending for good (and can hold up others); fix: kafka-configs.sh "
            "--bootstrap-server %s --alter --entity-type topics --entity-name %s --add-config "
            "max.message.bytes=1048588\n",
            t->name, role, t->where, max_bytes, OUTBOXD_MIN_TOPIC_MESSAGE_BYTES, bs, t->name);
        problems++;
    } else if (mmb && t->role == ROLE_EVENTS && (size_t)max_bytes < conf->max_event_bytes) {
        /* Allowed (a topic may be meant for small events), but say what
         * becomes of the larger ones. */
        outboxd_buf_printf(report,
                           "kafka: topic %s (events%s): max.message.bytes=%lld is below "
                           "relay.max_event_bytes (%zu): larger events go to the dead-letter "
                           "topic\n",
                           t->name, t->where, max_bytes, conf->max_event_bytes);
    }
    if (!problems && say_ok)
        outboxd_buf_printf(report,
                           "kafka: topic %s (%s): OK (cleanup.policy=%s, "
                           "max.message.bytes=%s)\n",
                           t->name, role, policy ? policy : "?", mmb ? mmb : "?");
    return problems;
}

/*
 * DescribeConfigs of the n topics on rk (with the broker's own settings when
 * with_broker) and each one judged; returns the problems, or -1 when the
 * broker did not answer.
 */
static int describe(rd_kafka_t *rk, const outboxd_config_t *conf, const checked_topic_t *topics,
                    size_t n, bool with_broker, int timeout_ms, atomic_int *stop,
                    outboxd_buf_t *report)
{
    char e[512];
    /* A broker's auto.create.topics.enable decides whether a missing event
     * topic is one (the relay's metadata request creates it): one BROKER
     * resource is allowed per request, the one whose broker answers. */
    char broker_id[16] = "";
    const rd_kafka_metadata_t *md = NULL;
    if (with_broker &&
        rd_kafka_metadata(rk, 0, NULL, &md, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (md->broker_cnt > 0)
            snprintf(broker_id, sizeof(broker_id), "%d", (int)md->brokers[0].id);
        rd_kafka_metadata_destroy(md);
    }
    size_t n_res = n + (broker_id[0] ? 1 : 0);
    rd_kafka_ConfigResource_t **res = calloc(n_res, sizeof(*res));
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_AdminOptions_t *opts =
        rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
    rd_kafka_event_t *ev = NULL;
    int problems = -1;
    if (!res || !q || !opts) {
        outboxd_buf_printf(report, "kafka: topics not checked: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        res[i] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topics[i].name);
    if (broker_id[0])
        res[n] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_BROKER, broker_id);
    rd_kafka_AdminOptions_set_request_timeout(opts, timeout_ms, e, sizeof(e));
    rd_kafka_DescribeConfigs(rk, res, n_res, opts, q);
    /* In steps, so a stop (the relay's) ends the wait. */
    int64_t deadline = outboxd_now_ms() + timeout_ms + 2000;
    const char *why = NULL;
    while (!ev && outboxd_now_ms() < deadline && !(stop && atomic_load(stop))) {
        ev = rd_kafka_queue_poll(q, 200);
        why = outboxd_sink_admin_poll(rk); /* callbacks: errors, SASL tokens */
    }
    if (!ev) {
        if (stop && atomic_load(stop))
            outboxd_buf_printf(report, "kafka: topics not checked: stopped\n");
        else
            outboxd_buf_printf(report,
                               "kafka: topics not checked: the broker did not describe them "
                               "within %d s%s%s\n",
                               timeout_ms / 1000, why ? ": " : "", why ? why : "");
        goto out;
    }
    if (rd_kafka_event_error(ev)) {
        outboxd_buf_printf(report,
                           "kafka: topics not checked: the broker did not describe them (%s)\n",
                           rd_kafka_event_error_string(ev));
        goto out;
    }
    size_t cnt = 0;
    const rd_kafka_ConfigResource_t **rr =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &cnt);
    int auto_create = -1; /* unknown (not asked, no ACL) */
    /* A producer asks the broker to create a topic only while librdkafka's
     * allow.auto.create.topics is true (a producer's default). */
    bool client_creates = true;
    for (size_t i = 0; i < conf->n_kafka_properties; i++)
        if (strcmp(conf->kafka_properties[i].key, "allow.auto.create.topics") == 0)
            client_creates = strcmp(conf->kafka_properties[i].value, "false") != 0;
    for (size_t j = 0; j < cnt; j++) {
        if (rd_kafka_ConfigResource_type(rr[j]) != RD_KAFKA_RESOURCE_BROKER ||
            rd_kafka_ConfigResource_error(rr[j]))
            continue;
        const char *v = entry(rr[j], "auto.create.topics.enable");
        if (v)
            auto_create = strcmp(v, "true") == 0;
    }
    if (!client_creates)
        auto_create = 0;
    problems = 0;
    for (size_t i = 0; i < n; i++) {
        const rd_kafka_ConfigResource_t *r = NULL;
        for (size_t j = 0; j < cnt && !r; j++)
            if (rd_kafka_ConfigResource_type(rr[j]) == RD_KAFKA_RESOURCE_TOPIC &&
                strcmp(rd_kafka_ConfigResource_name(rr[j]), topics[i].name) == 0)
                r = rr[j];
        if (r)
            problems += judge(conf, &topics[i], r, auto_create, with_broker, report);
        else
            outboxd_buf_printf(report, "kafka: topic %s (%s): not checked: no answer for it\n",
                               topics[i].name, role_name(topics[i].role));
    }
out:
    if (ev)
        rd_kafka_event_destroy(ev);
    if (res)
        for (size_t i = 0; i < n_res; i++)
            if (res[i])
                rd_kafka_ConfigResource_destroy(res[i]);
    free(res);
    if (opts)
        rd_kafka_AdminOptions_destroy(opts);
    if (q)
        rd_kafka_queue_destroy(q);
    return problems;
}

int outboxd_kafkacheck_topics(const outboxd_config_t *conf, int timeout_ms, outboxd_buf_t *report)
{
    char e[512];
    checked_topic_t *topics = NULL;
    size_t n = gather(conf, &topics);
    if (!n) {
        outboxd_buf_printf(report, "kafka: topics not checked: out of memory\n");
        return -1;
    }
    rd_kafka_t *rk = outboxd_sink_admin_client(conf, e, sizeof(e));
    if (!rk) {
        outboxd_buf_printf(report, "kafka: topics not checked: %s\n", e);
        free_topics(topics, n);
        return -1;
    }
    int problems = describe(rk, conf, topics, n, true, timeout_ms, NULL, report);
    outboxd_sink_admin_destroy(rk);
    free_topics(topics, n);
    return problems;
}

struct outboxd_kafkacheck_bg {
    pthread_t thread;
    const outboxd_config_t *conf;
    atomic_int *stop;
};

static void *bg_run(void *arg)
{
    outboxd_kafkacheck_bg_t *bg = arg;
    pthread_setname_np(pthread_self(), "outboxd-kcheck");
    char e[512];
    rd_kafka_t *rk = outboxd_sink_admin_client(bg->conf, e, sizeof(e));
    if (!rk) {
        LOG_DEBUG(NULL, "checkpoint topic not checked: %s", e);
        return NULL;
    }
    checked_topic_t t = {.name = bg->conf->checkpoint_topic, .role = ROLE_CHECKPOINT};
    outboxd_buf_t report = {0};
    int problems = describe(rk, bg->conf, &t, 1, false, 10000, bg->stop, &report);
    char *save = NULL;
    for (char *line = report.data ? strtok_r(report.data, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save)) {
        if (problems > 0)
            LOG_WARN(NULL, "%s", line);
        else
            LOG_DEBUG(NULL, "%s", line);
    }
    outboxd_buf_free(&report);
    outboxd_sink_admin_destroy(rk);
    return NULL;
}

outboxd_kafkacheck_bg_t *outboxd_kafkacheck_start(const outboxd_config_t *conf, atomic_int *stop)
{
    outboxd_kafkacheck_bg_t *bg = calloc(1, sizeof(*bg));
    if (!bg)
        return NULL;
    bg->conf = conf;
    bg->stop = stop;
    if (pthread_create(&bg->thread, NULL, bg_run, bg) != 0) {
        free(bg);
        return NULL;
    }
    return bg;
}

void outboxd_kafkacheck_join(outboxd_kafkacheck_bg_t *bg)
{
    if (!bg)
        return;
    pthread_join(bg->thread, NULL);
    free(bg);
}

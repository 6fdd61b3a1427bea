/*
 * outboxd-shop cat: prints every committed record of a topic as one JSON
 * line, its value decoded by the kit's decoder (outboxd_shop_decode), so
 * through the schema registry when the value is in the wire format. For the
 * shop's tests and the demo: what the services read, read the same way.
 *
 *   {"topic", "partition", "offset", "key", "headers": {...},
 *    "schemaId": N (wire format only), "value": {envelope} | "error": "..."}
 *
 * Reads read_committed from the beginning of every partition up to its end
 * (the last stable offset), then exits 0; 1 on an error.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "outboxd/common/registry.h"
#include "outboxd/common/util.h"
#include "shop.h"

static json_t *text_or_null(const void *p, size_t len)
{
    if (!p)
        return json_null();
    json_t *j = json_stringn(p, len);
    return j ? j : json_string("(not UTF-8)");
}

static void print_record(outboxd_shop_decoder_t *dec, const rd_kafka_message_t *m)
{
    json_t *o = json_object();
    json_object_set_new(o, "topic", json_string(rd_kafka_topic_name(m->rkt)));
    json_object_set_new(o, "partition", json_integer(m->partition));
    json_object_set_new(o, "offset", json_integer(m->offset));
    json_object_set_new(o, "key", text_or_null(m->key, m->key_len));
    json_t *h = json_object();
    rd_kafka_headers_t *hdrs = NULL;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *v;
        size_t vlen;
        for (size_t i = 0;
             rd_kafka_header_get_all(hdrs, i, &name, &v, &vlen) == RD_KAFKA_RESP_ERR_NO_ERROR; i++)
            json_object_set_new(h, name, text_or_null(v, vlen));
    }
    json_object_set_new(o, "headers", h);
    int32_t id;
    if (m->payload && outboxd_registry_wire_parse(m->payload, m->len, &id))
        json_object_set_new(o, "schemaId", json_integer(id));
    char err[1024];
    bool retry = false;
    json_t *v =
        m->payload ? outboxd_shop_decode(dec, m->payload, m->len, &retry, err, sizeof(err)) : NULL;
    if (v)
        json_object_set_new(o, "value", v);
    else
        json_object_set_new(o, "error", json_string(m->payload ? err : "no value"));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s)
        puts(s);
    free(s);
    json_decref(o);
}

int shop_cat_main(int argc, char **argv)
{
    const char *bootstrap = NULL, *topic = NULL, *registry = NULL;
    long timeout_ms = 30000;
    static const struct option opts[] = {
        {"kafka", required_argument, 0, 'k'},    {"topic", required_argument, 0, 't'},
        {"registry", required_argument, 0, 'S'}, {"timeout-ms", required_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'},           {0, 0, 0, 0},
    };
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'k':
            bootstrap = optarg;
            break;
        case 't':
            topic = optarg;
            break;
        case 'S':
            registry = optarg;
            break;
        case 'T':
            timeout_ms = atol(optarg);
            break;
        case 'h':
        default:
            fprintf(ch == 'h' ? stdout : stderr,
                    "usage: outboxd-shop cat --kafka HOST:PORT --topic T [--registry URL] "
                    "[--timeout-ms N]\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    if (!bootstrap || !topic) {
        fprintf(stderr, "outboxd-shop cat: --kafka and --topic are required\n");
        return 2;
    }
    char err[1024];
    outboxd_shop_decoder_t *dec = outboxd_shop_decoder_new(registry, err, sizeof(err));
    if (!dec) {
        fprintf(stderr, "outboxd-shop cat: %s\n", err);
        return 1;
    }
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    const char *kv[][2] = {
        {"bootstrap.servers", bootstrap},      {"group.id", "outboxd-shop-cat"},
        {"enable.auto.commit", "false"},       {"enable.partition.eof", "true"},
        {"isolation.level", "read_committed"}, {"auto.offset.reset", "earliest"}};
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
        if (rd_kafka_conf_set(kc, kv[i][0], kv[i][1], err, sizeof(err)) != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "outboxd-shop cat: %s\n", err);
            rd_kafka_conf_destroy(kc);
            outboxd_shop_decoder_destroy(dec);
            return 1;
        }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, kc, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "outboxd-shop cat: %s\n", err);
        rd_kafka_conf_destroy(kc);
        outboxd_shop_decoder_destroy(dec);
        return 1;
    }
    rd_kafka_poll_set_consumer(rk);
    int rc = 1;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, (int)timeout_ms);
    int parts = 0;
    if (e)
        fprintf(stderr, "outboxd-shop cat: metadata of %s: %s\n", topic, rd_kafka_err2str(e));
    else if (md->topic_cnt != 1 || md->topics[0].err)
        fprintf(stderr, "outboxd-shop cat: topic %s: %s\n", topic,
                md->topic_cnt ? rd_kafka_err2str(md->topics[0].err) : "not found");
    else
        parts = md->topics[0].partition_cnt;
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    if (parts > 0) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
        for (int p = 0; p < parts; p++)
            rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_assign(rk, l);
        rd_kafka_topic_partition_list_destroy(l);
        bool *done = calloc((size_t)parts, sizeof(bool));
        int n_done = 0;
        int64_t deadline = outboxd_now_ms() + timeout_ms;
        while (done && n_done < parts && outboxd_now_ms() < deadline) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
            if (!m)
                continue;
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                if (m->partition >= 0 && m->partition < parts && !done[m->partition]) {
                    done[m->partition] = true;
                    n_done++;
                }
            } else if (m->err) {
                fprintf(stderr, "outboxd-shop cat: %s\n", rd_kafka_message_errstr(m));
            } else {
                print_record(dec, m);
            }
            rd_kafka_message_destroy(m);
        }
        if (done && n_done == parts)
            rc = 0;
        else
            fprintf(stderr, "outboxd-shop cat: %s not read to its end within %ld ms\n", topic,
                    timeout_ms);
        free(done);
    }
    fflush(stdout);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    outboxd_shop_decoder_destroy(dec);
    return rc;
}

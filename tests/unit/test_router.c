/*
 * Router: outbox rows and messages -> records (topic template, key, headers,
 * Avro value, dead-letter reasons), plus timestamp parsing and the checkpoint
 * skip rule.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/common/avro.h"
#include "outboxd/relay/checkpoint.h"
#include "outboxd/relay/config.h"
#include "outboxd/relay/router.h"

static const char *CONFIG = "kafka:\n"
                            "  bootstrap_servers: 127.0.0.1:9\n"
                            "relay:\n"
                            "  max_event_bytes: 2048\n"
                            "sources:\n"
                            "  - name: shop\n"
                            "    dsn: \"dbname=shop\"\n"
                            "    tables:\n"
                            "      - table: public.outbox\n"
                            "        columns: { timestamp: ts }\n"
                            "        headers: [tenant]\n"
                            "      - table: public.outbox_pub\n"
                            "        on_update: publish\n"
                            "        topic: \"fixed.${type}\"\n"
                            "        headers: [tenant]\n"
                            "      - table: public.outbox_dlt\n"
                            "        on_update: dead_letter\n"
                            "    messages:\n"
                            "      - prefix: outbox\n";

static outboxd_pgo_column_t COLS[] = {
    {"id", 2950, -1, true},    {"aggregatetype", 25, -1, false}, {"aggregateid", 25, -1, false},
    {"type", 25, -1, false},   {"payload", 3802, -1, false},     {"ts", 1184, -1, false},
    {"tenant", 25, -1, false},
};

typedef struct fixture {
    outboxd_config_t *conf;
    outboxd_router_t *rt;
    outboxd_avro_t *av;
    outboxd_pgo_relation_t rel, rel_pub, rel_dlt, rel_other;
    outboxd_pgo_datum_t vals[7];
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    char err[512];
    f->conf = outboxd_config_parse(CONFIG, strlen(CONFIG), "test.yaml", err, sizeof(err));
    if (!f->conf)
        fail_msg("config: %s", err);
    f->rt = outboxd_router_new(f->conf, &f->conf->sources[0], "shopdb", err, sizeof(err));
    if (!f->rt)
        fail_msg("router: %s", err);
    f->av = outboxd_avro_new(err, sizeof(err));
    outboxd_pgo_relation_t base = {16384, "public", "outbox", 'd', 7, COLS};
    f->rel = base;
    f->rel_pub = base;
    f->rel_pub.oid = 16385;
    f->rel_pub.relname = "outbox_pub";
    f->rel_dlt = base;
    f->rel_dlt.oid = 16386;
    f->rel_dlt.relname = "outbox_dlt";
    f->rel_other = base;
    f->rel_other.oid = 16387;
    f->rel_other.relname = "unrelated";
    const char *v[] = {"5b1c7c1e-4f0e-4d6b-9a55-000000000001",
                       "order",
                       "order-42",
                       "OrderCreated",
                       "{\"total\": 10}",
                       "2026-11-24 12:00:00.25+00",
                       "acme"};
    for (int i = 0; i < 7; i++) {
        f->vals[i].kind = 't';
        f->vals[i].data = v[i];
        f->vals[i].len = (uint32_t)strlen(v[i]);
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    outboxd_router_destroy(f->rt);
    outboxd_avro_destroy(f->av);
    outboxd_config_destroy(f->conf);
    free(f);
    return 0;
}

static const outboxd_change_ctx_t CTX = {.lsn = 0x1000020,
                                         .commit_lsn = 0x1000100,
                                         .xid = 777,
                                         .commit_time_us = 1764000000000000LL,
                                         .change_index = 0};

static int route_kind(fixture_t *f, outboxd_pgo_kind_t kind, const outboxd_pgo_relation_t *rel,
                      outboxd_record_t *rec, char *err)
{
    outboxd_pgo_msg_t m;
    memset(&m, 0, sizeof(m));
    m.kind = kind;
    m.u.change.rel = rel;
    m.u.change.new_tuple.ncols = 7;
    m.u.change.new_tuple.cols = f->vals;
    if (kind == OUTBOXD_PGO_DELETE) {
        m.u.change.old_kind = 'K';
        m.u.change.old_tuple = m.u.change.new_tuple;
        m.u.change.new_tuple.ncols = 0;
    }
    return outboxd_router_route(f->rt, &m, &CTX, rec, err, 512);
}

static const char *header(const outboxd_record_t *rec, const char *name, size_t *len)
{
    for (size_t i = 0; i < rec->n_headers; i++)
        if (strcmp(rec->headers[i].name, name) == 0) {
            *len = rec->headers[i].len;
            return rec->headers[i].value;
        }
    return NULL;
}

static void assert_header(const outboxd_record_t *rec, const char *name, const char *want)
{
    size_t len = 0;
    const char *v = header(rec, name, &len);
    if (!v)
        fail_msg("header %s missing", name);
    if (len != strlen(want) || memcmp(v, want, len) != 0)
        fail_msg("header %s = '%.*s', want '%s'", name, (int)len, v, want);
}

/* What a record weighs: value, key, header names and values. */
static size_t record_bytes(const outboxd_record_t *rec)
{
    size_t n = rec->value_len + (rec->key ? rec->key_len : 0);
    for (size_t i = 0; i < rec->n_headers; i++)
        n += strlen(rec->headers[i].name) + rec->headers[i].len;
    return n;
}

static json_t *decode(fixture_t *f, const outboxd_record_t *rec)
{
    char err[512];
    char *text = outboxd_avro_decode_to_json(f->av, rec->value, rec->value_len, err, sizeof(err));
    if (!text)
        fail_msg("decode: %s", err);
    json_t *o = json_loads(text, 0, NULL);
    free(text);
    assert_non_null(o);
    return o;
}

static void test_insert_event(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err), OUTBOXD_ROUTE_EVENT);
    assert_string_equal(rec.topic, "outbox.event.order");
    assert_int_equal(rec.key_len, 8);
    assert_memory_equal(rec.key, "order-42", 8);
    assert_header(&rec, "id", "5b1c7c1e-4f0e-4d6b-9a55-000000000001");
    assert_header(&rec, "type", "OrderCreated");
    assert_header(&rec, "tenant", "acme");
    json_t *o = decode(f, &rec);
    assert_string_equal(json_string_value(json_object_get(o, "type")), "OrderCreated");
    assert_string_equal(json_string_value(json_object_get(o, "aggregate_id")), "order-42");
    /* 2026-11-24T12:00:00.25Z in microseconds */
    assert_int_equal(json_integer_value(json_object_get(o, "occurred_at")), 1795521600250000LL);
    json_t *src = json_object_get(o, "source");
    assert_string_equal(json_string_value(json_object_get(src, "name")), "shop");
    assert_string_equal(json_string_value(json_object_get(src, "database")), "shopdb");
    assert_string_equal(json_string_value(json_object_get(src, "table")), "public.outbox");
    assert_int_equal(json_integer_value(json_object_get(src, "lsn")), 0x1000020);
    assert_int_equal(json_integer_value(json_object_get(src, "commit_lsn")), 0x1000100);
    assert_int_equal(json_integer_value(json_object_get(src, "xid")), 777);
    json_t *payload = json_object_get(o, "payload");
    assert_int_equal(json_integer_value(json_object_get(payload, "total")), 10);
    json_decref(o);
}

static void test_null_payload_dead_letter(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    f->vals[4].kind = 'n';
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    f->vals[4].kind = 't';
    assert_string_equal(rec.topic, "outboxd.dlt");
    assert_header(&rec, "outboxd.reason", "payload column 'payload' is NULL");
    assert_header(&rec, "outboxd.table", "public.outbox");
    assert_header(&rec, "outboxd.lsn", "0/1000020");
    assert_header(&rec, "outboxd.xid", "777");
    assert_header(&rec, "id", "5b1c7c1e-4f0e-4d6b-9a55-000000000001");
    json_t *row = json_loadb(rec.value, rec.value_len, 0, NULL);
    assert_non_null(row);
    assert_true(json_is_null(json_object_get(row, "payload")));
    assert_string_equal(json_string_value(json_object_get(row, "aggregateid")), "order-42");
    json_decref(row);
}

static void test_null_key_dead_letter(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    f->vals[2].kind = 'n';
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    f->vals[2].kind = 't';
    assert_null(rec.key);
    assert_non_null(strstr(err, "'aggregateid' is NULL"));
}

static void test_oversized_dead_letter(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    char *big = malloc(5000);
    memset(big, 'x', 5000);
    big[0] = '"';
    big[4999] = '"';
    f->vals[4].data = big;
    f->vals[4].len = 5000;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "exceeds relay.max_event_bytes (2048)"));
    /* The dead-letter record itself respects the limit: big values cut
     * with a marker, reason and position kept. */
    assert_true(record_bytes(&rec) <= 2048);
    assert_non_null(strstr(rec.value, "...[outboxd: truncated, "));
    assert_non_null(strstr(rec.value, " of 5000 bytes kept]"));
    json_t *row = json_loadb(rec.value, rec.value_len, 0, NULL);
    assert_non_null(row);
    assert_string_equal(json_string_value(json_object_get(row, "aggregateid")), "order-42");
    json_decref(row);
    size_t len;
    assert_non_null(header(&rec, "outboxd.truncated", &len));
    assert_header(&rec, "outboxd.lsn", "0/1000020");
    assert_non_null(header(&rec, "outboxd.reason", &len));

    /* A huge key (and id) must not push the record over the limit either:
     * both count, and are cut. */
    char *bigkey = malloc(3000);
    memset(bigkey, 'k', 3000);
    f->vals[2].data = bigkey;
    f->vals[2].len = 3000;
    f->vals[0].data = bigkey;
    f->vals[0].len = 3000;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_true(record_bytes(&rec) <= 2048);
    assert_non_null(header(&rec, "outboxd.reason", &len));
    assert_non_null(header(&rec, "outboxd.commit_lsn", &len));
    /* A caller-given lower limit (after Kafka refused a dead letter). */
    outboxd_pgo_msg_t m;
    memset(&m, 0, sizeof(m));
    m.kind = OUTBOXD_PGO_INSERT;
    m.u.change.rel = &f->rel;
    m.u.change.new_tuple.ncols = 7;
    m.u.change.new_tuple.cols = f->vals;
    assert_int_equal(
        outboxd_router_dead_letter_max(f->rt, &m, &CTX, "refused", 1500, &rec, err, sizeof(err)),
        OUTBOXD_ROUTE_DEAD_LETTER);
    assert_true(record_bytes(&rec) <= 1500);
    assert_header(&rec, "outboxd.reason", "refused");
    f->vals[2].data = "order-42";
    f->vals[2].len = 8;
    f->vals[0].data = "5b1c7c1e-4f0e-4d6b-9a55-000000000001";
    f->vals[0].len = 36;
    free(bigkey);
    f->vals[4].data = "{}";
    f->vals[4].len = 2;
    free(big);
}

static void test_bad_timestamp_and_topic(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    f->vals[5].data = "yesterday";
    f->vals[5].len = 9;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "not a timestamp"));
    f->vals[5].kind = 'n'; /* NULL timestamp: commit time is used */
    f->vals[1].data = "bad topic/name";
    f->vals[1].len = 14;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "not a valid Kafka topic name"));
    f->vals[1].data = "order";
    f->vals[1].len = 5;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err), OUTBOXD_ROUTE_EVENT);
    json_t *o = decode(f, &rec);
    assert_int_equal(json_integer_value(json_object_get(o, "occurred_at")), CTX.commit_time_us);
    json_decref(o);
    f->vals[5].kind = 't';
}

static void test_update_delete_policies(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    assert_int_equal(route_kind(f, OUTBOXD_PGO_UPDATE, &f->rel, &rec, err), OUTBOXD_ROUTE_IGNORE);
    assert_int_equal(route_kind(f, OUTBOXD_PGO_UPDATE, &f->rel_pub, &rec, err),
                     OUTBOXD_ROUTE_EVENT);
    assert_string_equal(rec.topic, "fixed.OrderCreated");
    assert_int_equal(route_kind(f, OUTBOXD_PGO_UPDATE, &f->rel_dlt, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_int_equal(route_kind(f, OUTBOXD_PGO_DELETE, &f->rel, &rec, err), OUTBOXD_ROUTE_IGNORE);
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel_other, &rec, err),
                     OUTBOXD_ROUTE_IGNORE);
    outboxd_router_stats_t st;
    outboxd_router_stats(f->rt, &st);
    assert_int_equal(st.skipped_updates, 1);
    assert_int_equal(st.ignored_deletes, 1);
}

static void test_missing_column(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    outboxd_pgo_relation_t narrow = f->rel;
    narrow.ncols = 4; /* no payload, ts, tenant */
    narrow.oid = 99;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &narrow, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "column 'payload' (columns.payload) is missing"));
}

/* The decoder may put a changed relation at the old address: after
 * outboxd_router_forget the columns are bound again by name. */
static void test_relation_change_same_address(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err), OUTBOXD_ROUTE_EVENT);
    /* Same struct, columns now in another order (type and aggregateid swapped). */
    outboxd_pgo_column_t swapped[7];
    memcpy(swapped, COLS, sizeof(swapped));
    swapped[2] = COLS[3];
    swapped[3] = COLS[2];
    f->rel.cols = swapped;
    outboxd_pgo_datum_t tmp = f->vals[2];
    f->vals[2] = f->vals[3];
    f->vals[3] = tmp;
    outboxd_router_forget(f->rt, f->rel.oid);
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err), OUTBOXD_ROUTE_EVENT);
    assert_int_equal(rec.key_len, 8);
    assert_memory_equal(rec.key, "order-42", 8);
    assert_header(&rec, "type", "OrderCreated");
    f->rel.cols = COLS;
}

/* Key and headers count against max_event_bytes too. */
static void test_headers_count_toward_size(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    char *tenant = malloc(1900);
    memset(tenant, 't', 1900);
    f->vals[6].data = tenant;
    f->vals[6].len = 1900;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "with key and headers"));
    assert_string_equal(rec.topic, "outboxd.dlt");
    f->vals[6].data = "acme";
    f->vals[6].len = 4;
    free(tenant);
}

static int route_message(fixture_t *f, const char *prefix, const char *content, bool txn,
                         outboxd_record_t *rec, char *err)
{
    outboxd_pgo_msg_t m;
    memset(&m, 0, sizeof(m));
    m.kind = OUTBOXD_PGO_MESSAGE;
    m.u.message.transactional = txn;
    m.u.message.prefix = prefix;
    m.u.message.content = content;
    m.u.message.content_len = (uint32_t)strlen(content);
    return outboxd_router_route(f->rt, &m, &CTX, rec, err, 512);
}

static void test_messages(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    const char *good = "{\"id\":\"m-1\",\"aggregatetype\":\"payment\",\"aggregateid\":7,"
                       "\"type\":\"PaymentPending\",\"payload\":{\"amount\":5}}";
    assert_int_equal(route_message(f, "outbox", good, true, &rec, err), OUTBOXD_ROUTE_EVENT);
    assert_string_equal(rec.topic, "outbox.event.payment");
    assert_int_equal(rec.key_len, 1);
    assert_memory_equal(rec.key, "7", 1);
    assert_header(&rec, "id", "m-1");
    json_t *o = decode(f, &rec);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "source"), "table")),
                        "message:outbox");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(o, "payload"), "amount")),
                     5);
    json_decref(o);
    assert_int_equal(route_message(f, "outbox", good, false, &rec, err), OUTBOXD_ROUTE_IGNORE);
    assert_int_equal(route_message(f, "other", good, true, &rec, err), OUTBOXD_ROUTE_IGNORE);
    assert_int_equal(route_message(f, "outbox", "not json", true, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_string_equal(rec.topic, "outboxd.dlt");
    assert_int_equal(rec.value_len, 8);
    assert_int_equal(route_message(f, "outbox", "{\"id\":\"x\"}", true, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "'aggregatetype' is missing"));
}

/* A big message dead-lettered: content cut so the record fits. */
static void test_message_dead_letter_fits(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    char *big = malloc(6001);
    memset(big, 'z', 6000);
    big[6000] = '\0';
    assert_int_equal(route_message(f, "outbox", big, true, &rec, err), OUTBOXD_ROUTE_DEAD_LETTER);
    assert_true(record_bytes(&rec) <= 2048);
    size_t len;
    assert_non_null(header(&rec, "outboxd.truncated", &len));
    assert_non_null(header(&rec, "outboxd.reason", &len));
    free(big);
}

/*
 * Topic safety: a template never resolves to the relay's checkpoint or
 * dead-letter topic, and allowed_topics (anchored POSIX ERE) dead-letters
 * any topic outside it, for tables and messages alike.
 */
static void test_topic_safety(void **state)
{
    (void)state;
    static const char *conf_text = "kafka: { bootstrap_servers: 127.0.0.1:9 }\n"
                                   "relay: { checkpoint_topic: relay.cp, dead_letter_topic: "
                                   "relay.dlt }\n"
                                   "sources:\n"
                                   "  - name: shop\n"
                                   "    dsn: dbname=shop\n"
                                   "    tables:\n"
                                   "      - table: public.outbox\n"
                                   "        topic: \"${aggregatetype}\"\n"
                                   "      - table: public.outbox_pub\n"
                                   "        topic: \"${aggregatetype}\"\n"
                                   "        allowed_topics: 'orders\\.(created|paid)|audit'\n"
                                   "    messages:\n"
                                   "      - prefix: outbox\n"
                                   "        topic: \"${aggregatetype}\"\n"
                                   "        allowed_topics: 'msg\\..*'\n";
    char err[512];
    outboxd_config_t *conf =
        outboxd_config_parse(conf_text, strlen(conf_text), "t.yaml", err, sizeof(err));
    if (!conf)
        fail_msg("config: %s", err);
    outboxd_router_t *rt = outboxd_router_new(conf, &conf->sources[0], "shopdb", err, sizeof(err));
    if (!rt)
        fail_msg("router: %s", err);
    outboxd_pgo_relation_t rel = {16384, "public", "outbox", 'd', 7, COLS};
    outboxd_pgo_relation_t rel_pub = rel;
    rel_pub.oid = 16385;
    rel_pub.relname = "outbox_pub";
    outboxd_pgo_datum_t vals[7];
    const char *v[] = {"id-1", "x", "agg-1", "T", "{}", "2026-11-24 12:00:00+00", "acme"};
    for (int i = 0; i < 7; i++) {
        vals[i].kind = 't';
        vals[i].data = v[i];
        vals[i].len = (uint32_t)strlen(v[i]);
    }
    outboxd_pgo_msg_t m;
    memset(&m, 0, sizeof(m));
    m.kind = OUTBOXD_PGO_INSERT;
    m.u.change.new_tuple.ncols = 7;
    m.u.change.new_tuple.cols = vals;
    outboxd_record_t rec;
    struct {
        const outboxd_pgo_relation_t *rel;
        const char *aggtype;
        int want;
        const char *why;
    } cases[] = {
        {&rel, "orders.created", OUTBOXD_ROUTE_EVENT, NULL},
        {&rel, "relay.cp", OUTBOXD_ROUTE_DEAD_LETTER, "is the relay's checkpoint topic"},
        {&rel, "relay.dlt", OUTBOXD_ROUTE_DEAD_LETTER, "is the relay's dead-letter topic"},
        {&rel_pub, "orders.created", OUTBOXD_ROUTE_EVENT, NULL},
        {&rel_pub, "audit", OUTBOXD_ROUTE_EVENT, NULL},
        /* anchored: a prefix or a suffix match is not enough */
        {&rel_pub, "orders.created.x", OUTBOXD_ROUTE_DEAD_LETTER, "does not match allowed_topics"},
        {&rel_pub, "xaudit", OUTBOXD_ROUTE_DEAD_LETTER, "does not match allowed_topics"},
        {&rel_pub, "payments.command", OUTBOXD_ROUTE_DEAD_LETTER,
         "topic 'payments.command' made by the template does not match allowed_topics "
         "'orders\\.(created|paid)|audit'"},
        {&rel_pub, "relay.cp", OUTBOXD_ROUTE_DEAD_LETTER, "is the relay's checkpoint topic"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        m.u.change.rel = cases[i].rel;
        vals[1].data = cases[i].aggtype;
        vals[1].len = (uint32_t)strlen(cases[i].aggtype);
        err[0] = '\0';
        int r = outboxd_router_route(rt, &m, &CTX, &rec, err, sizeof(err));
        if (r != cases[i].want)
            fail_msg("case %zu (%s): route %d, want %d (%s)", i, cases[i].aggtype, r, cases[i].want,
                     err);
        if (cases[i].want == OUTBOXD_ROUTE_DEAD_LETTER) {
            assert_string_equal(rec.topic, "relay.dlt");
            if (!strstr(err, cases[i].why))
                fail_msg("case %zu: reason '%s' lacks '%s'", i, err, cases[i].why);
        } else {
            assert_string_equal(rec.topic, cases[i].aggtype);
        }
    }
    outboxd_pgo_msg_t mm;
    memset(&mm, 0, sizeof(mm));
    mm.kind = OUTBOXD_PGO_MESSAGE;
    mm.u.message.transactional = true;
    mm.u.message.prefix = "outbox";
    const char *msgs[] = {
        "{\"id\":\"1\",\"aggregatetype\":\"msg.ok\",\"aggregateid\":\"a\",\"type\":\"T\","
        "\"payload\":{}}",
        "{\"id\":\"1\",\"aggregatetype\":\"relay.cp\",\"aggregateid\":\"a\",\"type\":\"T\","
        "\"payload\":{}}",
        "{\"id\":\"1\",\"aggregatetype\":\"other\",\"aggregateid\":\"a\",\"type\":\"T\","
        "\"payload\":{}}"};
    int want[] = {OUTBOXD_ROUTE_EVENT, OUTBOXD_ROUTE_DEAD_LETTER, OUTBOXD_ROUTE_DEAD_LETTER};
    for (size_t i = 0; i < 3; i++) {
        mm.u.message.content = msgs[i];
        mm.u.message.content_len = (uint32_t)strlen(msgs[i]);
        int r = outboxd_router_route(rt, &mm, &CTX, &rec, err, sizeof(err));
        if (r != want[i])
            fail_msg("message %zu: route %d, want %d (%s)", i, r, want[i], err);
    }
    assert_non_null(strstr(err, "does not match allowed_topics 'msg\\..*'"));
    outboxd_router_destroy(rt);
    outboxd_config_destroy(conf);
}

static void test_timestamps(void **state)
{
    (void)state;
    int64_t us;
    assert_int_equal(outboxd_parse_timestamp("1970-01-01 00:00:00+00", 22, &us), 0);
    assert_int_equal(us, 0);
    const char *s = "2000-01-01T00:00:00.000001Z";
    assert_int_equal(outboxd_parse_timestamp(s, strlen(s), &us), 0);
    assert_int_equal(us, 946684800000001LL);
    s = "2026-11-24 14:30:00+02:30";
    assert_int_equal(outboxd_parse_timestamp(s, strlen(s), &us), 0);
    assert_int_equal(us, 1795521600000000LL);
    s = "2026-11-24 12:00:00";
    assert_int_equal(outboxd_parse_timestamp(s, strlen(s), &us), 0);
    assert_int_equal(us, 1795521600000000LL);
    const char *bad[] = {"",
                         "2026-11-24",
                         "2026-13-01 00:00:00",
                         "2026-11-24 12:00:00+",
                         "2026-11-24 12:00:00.",
                         "2026-11-24 12:00:00 junk"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(outboxd_parse_timestamp(bad[i], strlen(bad[i]), &us), -1);
}

static void test_checkpoint(void **state)
{
    (void)state;
    outboxd_checkpoint_t ck = {.commit_lsn = 0x500, .end_lsn = 0x540, .changes = -1};
    strcpy(ck.system_id, "7311");
    strcpy(ck.database, "pay");
    strcpy(ck.slot, "s");
    outboxd_buf_t b = {0};
    assert_int_equal(outboxd_checkpoint_encode("pay", &ck, &b), 0);
    outboxd_checkpoint_t back;
    char err[256];
    assert_int_equal(outboxd_checkpoint_decode(b.data, b.len, &back, err, sizeof(err)), 0);
    assert_int_equal(back.commit_lsn, 0x500);
    assert_int_equal(back.end_lsn, 0x540);
    assert_int_equal(back.changes, -1);
    assert_string_equal(back.system_id, "7311");
    outboxd_buf_free(&b);
    assert_int_equal(outboxd_checkpoint_decode("{}", 2, &back, err, sizeof(err)), -1);
    assert_int_equal(outboxd_checkpoint_decode("nope", 4, &back, err, sizeof(err)), -1);

    /* whole transaction at 0x500 published */
    assert_true(outboxd_checkpoint_covers(&ck, 0x400, -1));
    assert_true(outboxd_checkpoint_covers(&ck, 0x500, -1));
    assert_true(outboxd_checkpoint_covers(&ck, 0x500, 3));
    assert_false(outboxd_checkpoint_covers(&ck, 0x501, 0));
    /* first 10 changes of the transaction at 0x500 published */
    ck.changes = 10;
    assert_false(outboxd_checkpoint_covers(&ck, 0x500, -1));
    assert_true(outboxd_checkpoint_covers(&ck, 0x500, 9));
    assert_false(outboxd_checkpoint_covers(&ck, 0x500, 10));
    assert_true(outboxd_checkpoint_covers(&ck, 0x4ff, 100));
    outboxd_checkpoint_t none = {0};
    assert_false(outboxd_checkpoint_covers(&none, 1, 0));
}

/* Bytes that are not UTF-8 (a SQL_ASCII database passes them through) never
 * reach an Avro string: the row is dead-lettered, and the dead-letter value
 * is valid JSON that keeps the raw bytes as base64. Before the fix the row
 * was published with the bytes in Avro strings, and with any other reason to
 * dead-letter it the router failed with "out of memory" (a rewind loop). */
static void test_invalid_utf8(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    f->vals[4].data = "{\"a\": \"\xff\xfe\"}";
    f->vals[4].len = 11;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_string_equal(rec.topic, "outboxd.dlt");
    assert_non_null(
        strstr(err, "payload column 'payload' is not valid UTF-8 (byte 0xff at offset 7)"));
    assert_non_null(strstr(err, "{\"base64\": \"<raw bytes>\"}"));
    json_t *row = json_loadb(rec.value, rec.value_len, 0, NULL);
    assert_non_null(row);
    /* base64 of {"a": "\xff\xfe"} */
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(row, "payload"), "base64")),
        "eyJhIjogIv/+In0=");
    assert_string_equal(json_string_value(json_object_get(row, "aggregateid")), "order-42");
    json_decref(row);

    /* In the key column (aggregateid) with another reason to dead-letter
     * (NULL type): still a valid dead-letter record, not an internal error. */
    f->vals[4].data = "{}";
    f->vals[4].len = 2;
    f->vals[2].data = "ord\xff\xfe";
    f->vals[2].len = 5;
    f->vals[3].kind = 'n';
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "type column 'type' is NULL"));
    row = json_loadb(rec.value, rec.value_len, 0, NULL);
    assert_non_null(row);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(row, "aggregateid"), "base64")),
        "b3Jk//4=");
    json_decref(row);
    f->vals[3].kind = 't';
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "aggregateid column 'aggregateid' is not valid UTF-8"));
    /* An overlong form and a lone continuation byte are invalid too. */
    f->vals[2].data = "\xc0\xaf";
    f->vals[2].len = 2;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    f->vals[2].data = "caf\xc3\xa9"; /* valid two-byte sequence */
    f->vals[2].len = 5;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err), OUTBOXD_ROUTE_EVENT);
    f->vals[2].data = "order-42";
    f->vals[2].len = 8;
    /* Long ASCII runs are checked a word at a time: the offset of a bad byte
     * after them, in the last partial word, and a valid sequence across a
     * word boundary. */
    f->vals[4].data = "{\"a\": \"0123456789abcdefghij\xff\"}";
    f->vals[4].len = 30;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "(byte 0xff at offset 27)"));
    f->vals[4].data = "{\"a\": \"0123456789abcdefgh\"}\xe2";
    f->vals[4].len = 28;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "(byte 0xe2 at offset 27)"));
    f->vals[4].data = "{\"a\": \"\xe2\x82\xac 0123456789abcdef\"}";
    f->vals[4].len = 29;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err), OUTBOXD_ROUTE_EVENT);
    f->vals[4].data = "{\"a\": \"01234\xe2\x82\xac 56789abcdef\"}";
    f->vals[4].len = 29;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err), OUTBOXD_ROUTE_EVENT);
    f->vals[4].data = "{}";
    f->vals[4].len = 2;
}

static int route_update(fixture_t *f, const outboxd_pgo_relation_t *rel, outboxd_pgo_datum_t *newv,
                        char old_kind, outboxd_pgo_datum_t *oldv, outboxd_record_t *rec, char *err)
{
    outboxd_pgo_msg_t m;
    memset(&m, 0, sizeof(m));
    m.kind = OUTBOXD_PGO_UPDATE;
    m.u.change.rel = rel;
    m.u.change.new_tuple.ncols = 7;
    m.u.change.new_tuple.cols = newv;
    m.u.change.old_kind = old_kind;
    if (old_kind) {
        m.u.change.old_tuple.ncols = 7;
        m.u.change.old_tuple.cols = oldv;
    }
    return outboxd_router_route(f->rt, &m, &CTX, rec, err, 512);
}

/* on_update: publish with an unchanged TOASTed payload ('u' in the new
 * image): under REPLICA IDENTITY FULL the old image holds the value and it
 * is used (before the fix: dead-lettered, telling the user to set the FULL
 * that was already set); without FULL, dead-lettered with the fix. */
static void test_toast_update(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    outboxd_pgo_datum_t newv[7], oldv[7];
    memcpy(newv, f->vals, sizeof(newv));
    memcpy(oldv, f->vals, sizeof(oldv));
    newv[4].kind = 'u';
    newv[4].data = NULL;
    newv[4].len = 0;
    oldv[4].data = "{\"big\": \"toasted\"}";
    oldv[4].len = (uint32_t)strlen(oldv[4].data);
    assert_int_equal(route_update(f, &f->rel_pub, newv, 'O', oldv, &rec, err), OUTBOXD_ROUTE_EVENT);
    json_t *o = decode(f, &rec);
    assert_string_equal(json_string_value(json_object_get(json_object_get(o, "payload"), "big")),
                        "toasted");
    json_decref(o);

    /* Key-only old image (default replica identity): no value to use. */
    assert_int_equal(route_update(f, &f->rel_pub, newv, 'K', oldv, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "payload column 'payload' is an unchanged TOASTed value"));
    assert_non_null(strstr(err, "ALTER TABLE public.outbox_pub REPLICA IDENTITY FULL"));
    json_t *row = json_loadb(rec.value, rec.value_len, 0, NULL);
    assert_non_null(row);
    assert_non_null(strstr(json_string_value(json_object_get(row, "payload")), "not sent"));
    json_decref(row);
    assert_int_equal(route_update(f, &f->rel_pub, newv, 0, NULL, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);

    /* A header column that was not sent is not silently left out. */
    memcpy(newv, f->vals, sizeof(newv));
    newv[6].kind = 'u';
    assert_int_equal(route_update(f, &f->rel_pub, newv, 0, NULL, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "configured column 'tenant' is an unchanged TOASTed value"));
}

/* A row over max_event_bytes is dead-lettered from its raw size, before any
 * copy: the reason names the size, and the dead-letter value cuts the big
 * column (before the fix the payload was Avro-encoded and then copied
 * into JSON before the limit was noticed). */
static void test_size_checked_before_encoding(void **state)
{
    fixture_t *f = *state;
    outboxd_record_t rec;
    char err[512];
    size_t n = 100000;
    char *big = malloc(n);
    memset(big, 'x', n);
    big[0] = '"';
    big[n - 1] = '"';
    big[10] = '\xff'; /* not even looked at: the size decides first */
    f->vals[4].data = big;
    f->vals[4].len = (uint32_t)n;
    assert_int_equal(route_kind(f, OUTBOXD_PGO_INSERT, &f->rel, &rec, err),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "payload column 'payload' 100000 bytes) exceeds "
                                "relay.max_event_bytes (2048)"));
    assert_true(rec.value_len <= 2048);
    /* The big column is cut (kept as base64, since it is not valid UTF-8),
     * and a header says the row was cut. */
    assert_non_null(strstr(rec.value, "\"base64\""));
    bool truncated = false;
    for (size_t i = 0; i < rec.n_headers; i++)
        truncated |= strcmp(rec.headers[i].name, "outboxd.truncated") == 0;
    assert_true(truncated);
    f->vals[4].data = "{}";
    f->vals[4].len = 2;

    /* A message over the limit is not parsed (this one is not even JSON). */
    big[n - 1] = '\0';
    assert_int_equal(route_message(f, "outbox", big, true, &rec, err), OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "message of 99999 bytes exceeds relay.max_event_bytes (2048)"));
    assert_true(rec.value_len <= 2048);
    free(big);
}

/* A topic template naming a column the table does not have: every row is
 * dead-lettered with the reason (outboxd check reports it beforehand). */
static void test_topic_column_missing(void **state)
{
    (void)state;
    static const char *conf_text = "kafka: { bootstrap_servers: 127.0.0.1:9 }\n"
                                   "sources:\n"
                                   "  - name: s\n"
                                   "    dsn: \"dbname=s\"\n"
                                   "    tables:\n"
                                   "      - table: public.outbox\n"
                                   "        topic: \"t.${tenant_id}\"\n";
    char err[512];
    outboxd_config_t *conf =
        outboxd_config_parse(conf_text, strlen(conf_text), "t.yaml", err, sizeof(err));
    assert_non_null(conf);
    outboxd_router_t *rt = outboxd_router_new(conf, &conf->sources[0], "db", err, sizeof(err));
    assert_non_null(rt);
    outboxd_pgo_relation_t rel = {16384, "public", "outbox", 'd', 7, COLS};
    outboxd_pgo_datum_t vals[7];
    for (int i = 0; i < 7; i++) {
        vals[i].kind = 't';
        vals[i].data = "x";
        vals[i].len = 1;
    }
    outboxd_pgo_msg_t m;
    memset(&m, 0, sizeof(m));
    m.kind = OUTBOXD_PGO_INSERT;
    m.u.change.rel = &rel;
    m.u.change.new_tuple.ncols = 7;
    m.u.change.new_tuple.cols = vals;
    outboxd_record_t rec;
    assert_int_equal(outboxd_router_route(rt, &m, &CTX, &rec, err, sizeof(err)),
                     OUTBOXD_ROUTE_DEAD_LETTER);
    assert_non_null(strstr(err, "column 'tenant_id'"));
    assert_non_null(strstr(err, "topic"));
    outboxd_router_destroy(rt);
    outboxd_config_destroy(conf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_insert_event, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_payload_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_null_key_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_oversized_dead_letter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_timestamp_and_topic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_update_delete_policies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_column, setup, teardown),
        cmocka_unit_test_setup_teardown(test_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_relation_change_same_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_headers_count_toward_size, setup, teardown),
        cmocka_unit_test_setup_teardown(test_message_dead_letter_fits, setup, teardown),
        cmocka_unit_test(test_topic_safety),
        cmocka_unit_test_setup_teardown(test_invalid_utf8, setup, teardown),
        cmocka_unit_test_setup_teardown(test_toast_update, setup, teardown),
        cmocka_unit_test_setup_teardown(test_size_checked_before_encoding, setup, teardown),
        cmocka_unit_test(test_topic_column_missing),
        cmocka_unit_test(test_timestamps),
        cmocka_unit_test(test_checkpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

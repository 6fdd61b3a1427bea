/*
 * Router: decoded change -> Kafka record (see router.h).
 *
 * Outbox tables are bound to relations lazily: the first change for a
 * relation oid resolves the configured column names to positions, and the
 * binding is redone whenever the server sends a new Relation message (the
 * decoder then hands out a new relation pointer).
 */
#include "outboxd/relay/router.h"

#include <jansson.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/log.h"
#include "outboxd/relay/debezium.h"
#include "outboxd/relay/encoder.h"

/* A compiled topic template: literal text and placeholders, in order. */
typedef struct tpl_part {
    char *text; /* literal, or the placeholder's column / field name */
    bool is_var;
    int col; /* column index for table templates, -1 unbound */
} tpl_part_t;

typedef struct tpl {
    tpl_part_t *parts;
    size_t n;
} tpl_t;

typedef struct binding {
    const outboxd_table_conf_t *tc;
    uint32_t oid;
    const outboxd_pgo_relation_t *rel; /* the relation this binding was made for */
    int c_id, c_aggtype, c_aggid, c_type, c_payload, c_ts, c_key;
    int *c_headers;
    tpl_t topic;
    char *missing;    /* a configured column the table lacks, or NULL */
    char *table_name; /* "schema.name" */
    regex_t allowed;  /* tc->allowed_topics, anchored; valid when has_allowed */
    bool has_allowed;
    outboxd_dbz_t *dbz; /* tables[].debezium: a Debezium drop-in table, or NULL */
    int c_route;        /* its route.by.field column */
    int *c_place;       /* its placement columns (-1: missing, allowed) */
    int c_version;      /* its table.field.event.schema.version column, or -1 */
} binding_t;

typedef struct msg_binding {
    const outboxd_message_conf_t *mc;
    tpl_t topic;
    char *table_name; /* "message:<prefix>" */
    regex_t allowed;
    bool has_allowed;
} msg_binding_t;

struct outboxd_router {
    const outboxd_config_t *conf;
    const outboxd_source_conf_t *src;
    char *database;
    outboxd_avro_t *avro;
    binding_t *bindings;
    size_t n_bindings;
    msg_binding_t *msgs;
    size_t n_msgs;
    outboxd_buf_t topic;
    outboxd_buf_t value;
    outboxd_buf_t scratch; /* NUL-terminated copies and header text */
    char lsnbuf[3][OUTBOXD_LSN_STRLEN];
    char xidbuf[16];
    char *msg_text; /* message-input field strings, freed per call */
    json_t *msg_json;
    outboxd_router_stats_t stats;
    bool warned_update;
    /* Dead-letter records are built to fit this many bytes, key and headers
     * included (see dead_letter_limit). */
    size_t dl_max;
    char dl_note[256]; /* text of the outboxd.truncated header */
    /* UPDATE row image with unchanged TOASTed values taken from the old
     * tuple (REPLICA IDENTITY FULL); grows to the widest table seen. */
    outboxd_pgo_datum_t *merged;
    int merged_cap;
    outboxd_encoder_t *enc; /* event values: envelope or typed, registry or not */
    outboxd_buf_t dlt;      /* Avro dead-letter value (relay.dead_letter_format: avro) */
    outboxd_buf_t dbz_key;  /* Debezium drop-in: the rendered key */
    outboxd_buf_t dbz_hdr;  /* and header texts */
    outboxd_buf_t dbz_schema, dbz_datum, dbz_subject; /* its AvroConverter parts */
    /* Domain types of its columns and their base types (from the source's
     * checks: pgoutput sends a domain's own type). */
    uint32_t *dom_oid, *dom_base;
    size_t n_dom;
};

/* Producer default of librdkafka's message.max.bytes: larger records are
 * refused by the client itself, whatever the topic allows. */
#define RDKAFKA_MESSAGE_MAX_BYTES 1000000

/*
 * A dead-letter record must always be accepted, or the row behind it blocks
 * the stream: it is kept within max_event_bytes and within the producer's
 * message.max.bytes (a broker's default limit is about the same, 1 MiB).
 */
static size_t dead_letter_limit(const outboxd_config_t *conf)
{
    size_t limit = RDKAFKA_MESSAGE_MAX_BYTES;
    for (size_t i = 0; i < conf->n_kafka_properties; i++) {
        if (strcmp(conf->kafka_properties[i].key, "message.max.bytes") == 0) {
            char *end;
            unsigned long long v = strtoull(conf->kafka_properties[i].value, &end, 10);
            if (*end == '\0' && v >= 4096)
                limit = (size_t)v;
        }
    }
    return limit < conf->max_event_bytes ? limit : conf->max_event_bytes;
}

/* Compiles allowed_topics as a whole-name match. */
static int compile_allowed(const char *pattern, regex_t *re, bool *has, char *errstr,
                           size_t errstr_size)
{
    if (!pattern)
        return 0;
    size_t n = strlen(pattern) + 5;
    char *anchored = malloc(n);
    if (!anchored) {
        snprintf(errstr, errstr_size, "out of memory");
        return -1;
    }
    snprintf(anchored, n, "^(%s)$", pattern);
    int rc = regcomp(re, anchored, REG_EXTENDED | REG_NOSUB);
    free(anchored);
    if (rc != 0) {
        char msg[256];
        regerror(rc, re, msg, sizeof(msg));
        snprintf(errstr, errstr_size, "allowed_topics '%.100s': %s", pattern, msg);
        return -1;
    }
    *has = true;
    return 0;
}

/*
 * Whether a templated topic may be used: never the relay's own checkpoint or
 * dead-letter topic (a row could overwrite a source's progress), and, when
 * allowed_topics is set, only a matching name. Fills reason when not.
 */
static bool topic_allowed(const outboxd_router_t *rt, const char *topic, const regex_t *re,
                          bool has_re, const char *pattern, char *reason, size_t reason_size)
{
    if (strcmp(topic, rt->conf->checkpoint_topic) == 0) {
        snprintf(reason, reason_size,
                 "topic '%.200s' made by the template is the relay's checkpoint topic "
                 "(relay.checkpoint_topic); events may never be published there",
                 topic);
        return false;
    }
    if (strcmp(topic, rt->conf->dead_letter_topic) == 0) {
        snprintf(reason, reason_size,
                 "topic '%.200s' made by the template is the relay's dead-letter topic "
                 "(relay.dead_letter_topic); events may never be published there",
                 topic);
        return false;
    }
    if (has_re && regexec(re, topic, 0, NULL, 0) != 0) {
        snprintf(reason, reason_size,
                 "topic '%.200s' made by the template does not match allowed_topics '%.200s'",
                 topic, pattern);
        return false;
    }
    return true;
}

/* ---- topic templates ---- */

static void tpl_free(tpl_t *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->parts[i].text);
    free(t->parts);
    t->parts = NULL;
    t->n = 0;
}

static int tpl_add(tpl_t *t, const char *s, size_t len, bool is_var)
{
    tpl_part_t *p = realloc(t->parts, (t->n + 1) * sizeof(*p));
    if (!p)
        return -1;
    t->parts = p;
    p[t->n].text = outboxd_strndup(s, len);
    if (!p[t->n].text)
        return -1;
    p[t->n].is_var = is_var;
    p[t->n].col = -1;
    t->n++;
    return 0;
}

/* The config module has validated the braces already; be defensive anyway. */
static int tpl_compile(tpl_t *t, const char *s, char *errstr, size_t errstr_size)
{
    const char *p = s;
    while (*p) {
        const char *open = strstr(p, "${");
        if (!open) {
            if (tpl_add(t, p, strlen(p), false) < 0)
                goto oom;
            break;
        }
        if (open > p && tpl_add(t, p, (size_t)(open - p), false) < 0)
            goto oom;
        const char *close = strchr(open + 2, '}');
        if (!close || close == open + 2) {
            snprintf(errstr, errstr_size, "topic template '%s': unbalanced or empty ${}", s);
            return -1;
        }
        if (tpl_add(t, open + 2, (size_t)(close - open - 2), true) < 0)
            goto oom;
        p = close + 1;
    }
    return 0;
oom:
    snprintf(errstr, errstr_size, "out of memory");
    return -1;
}

static bool valid_topic(const char *t, size_t len)
{
    if (len == 0 || len > 249)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return !(len == 1 && t[0] == '.') && !(len == 2 && t[0] == '.' && t[1] == '.');
}

/* ---- construction ---- */

outboxd_router_t *outboxd_router_new(const outboxd_config_t *conf, const outboxd_source_conf_t *src,
                                     const char *database, char *errstr, size_t errstr_size)
{
    outboxd_router_t *rt = calloc(1, sizeof(*rt));
    if (!rt) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    rt->conf = conf;
    rt->src = src;
    rt->dl_max = dead_letter_limit(conf);
    rt->database = strdup(database ? database : "");
    rt->avro = outboxd_avro_new(errstr, errstr_size);
    if (!rt->database || !rt->avro)
        goto fail;
    rt->enc = outboxd_encoder_new(conf, errstr, errstr_size);
    if (!rt->enc)
        goto fail;
    rt->bindings = calloc(src->n_tables ? src->n_tables : 1, sizeof(binding_t));
    rt->msgs = calloc(src->n_messages ? src->n_messages : 1, sizeof(msg_binding_t));
    if (!rt->bindings || !rt->msgs) {
        snprintf(errstr, errstr_size, "out of memory");
        goto fail;
    }
    for (size_t i = 0; i < src->n_tables; i++) {
        const outboxd_table_conf_t *tc = &src->tables[i];
        /* cdc tables are cdc.c's: source.c never routes their changes here. */
        if (tc->mode != OUTBOXD_MODE_OUTBOX)
            continue;
        binding_t *b = &rt->bindings[rt->n_bindings++];
        b->tc = tc;
        size_t n = strlen(tc->schema) + strlen(tc->name) + 2;
        b->table_name = malloc(n);
        b->c_headers = calloc(tc->n_header_columns ? tc->n_header_columns : 1, sizeof(int));
        if (!b->table_name || !b->c_headers) {
            snprintf(errstr, errstr_size, "out of memory");
            goto fail;
        }
        snprintf(b->table_name, n, "%s.%s", tc->schema, tc->name);
        if (tc->n_debezium) {
            char why[512];
            b->dbz = outboxd_dbz_new(tc->debezium, tc->n_debezium, why, sizeof(why));
            if (!b->dbz) {
                snprintf(errstr, errstr_size, "table %s: debezium: %s", b->table_name, why);
                goto fail;
            }
            if ((b->dbz->key_avro || b->dbz->value_avro) && !conf->schema_registry_url) {
                snprintf(errstr, errstr_size,
                         "table %s: debezium: an AvroConverter needs schema_registry.url (the "
                         "registry the converter's apicurio.registry.url or schema.registry.url "
                         "points to)",
                         b->table_name);
                goto fail;
            }
            b->c_place = calloc(b->dbz->n_places ? b->dbz->n_places : 1, sizeof(int));
            if (!b->c_place) {
                snprintf(errstr, errstr_size, "out of memory");
                goto fail;
            }
        }
        if (tpl_compile(&b->topic, tc->topic, errstr, errstr_size) < 0 ||
            compile_allowed(tc->allowed_topics, &b->allowed, &b->has_allowed, errstr, errstr_size) <
                0)
            goto fail;
    }
    for (size_t i = 0; i < src->n_messages; i++) {
        msg_binding_t *m = &rt->msgs[rt->n_msgs++];
        m->mc = &src->messages[i];
        size_t n = strlen(m->mc->prefix) + 9;
        m->table_name = malloc(n);
        if (!m->table_name) {
            snprintf(errstr, errstr_size, "out of memory");
            goto fail;
        }
        snprintf(m->table_name, n, "message:%s", m->mc->prefix);
        if (tpl_compile(&m->topic, m->mc->topic, errstr, errstr_size) < 0 ||
            compile_allowed(m->mc->allowed_topics, &m->allowed, &m->has_allowed, errstr,
                            errstr_size) < 0)
            goto fail;
    }
    return rt;
fail:
    outboxd_router_destroy(rt);
    return NULL;
}

void outboxd_router_destroy(outboxd_router_t *rt)
{
    if (!rt)
        return;
    for (size_t i = 0; i < rt->n_bindings; i++) {
        tpl_free(&rt->bindings[i].topic);
        free(rt->bindings[i].c_headers);
        free(rt->bindings[i].missing);
        free(rt->bindings[i].table_name);
        outboxd_dbz_destroy(rt->bindings[i].dbz);
        free(rt->bindings[i].c_place);
        if (rt->bindings[i].has_allowed)
            regfree(&rt->bindings[i].allowed);
    }
    for (size_t i = 0; i < rt->n_msgs; i++) {
        tpl_free(&rt->msgs[i].topic);
        free(rt->msgs[i].table_name);
        if (rt->msgs[i].has_allowed)
            regfree(&rt->msgs[i].allowed);
    }
    free(rt->bindings);
    free(rt->msgs);
    free(rt->database);
    outboxd_avro_destroy(rt->avro);
    outboxd_encoder_destroy(rt->enc);
    outboxd_buf_free(&rt->dlt);
    outboxd_buf_free(&rt->dbz_key);
    outboxd_buf_free(&rt->dbz_hdr);
    outboxd_buf_free(&rt->dbz_schema);
    outboxd_buf_free(&rt->dbz_datum);
    outboxd_buf_free(&rt->dbz_subject);
    free(rt->dom_oid);
    free(rt->dom_base);
    outboxd_buf_free(&rt->topic);
    outboxd_buf_free(&rt->value);
    outboxd_buf_free(&rt->scratch);
    json_decref(rt->msg_json);
    free(rt->merged);
    free(rt);
}

void outboxd_router_forget(outboxd_router_t *rt, uint32_t oid)
{
    /* The decoder may hand out the new relation at the old one's address,
     * so the pointer alone cannot tell that the columns changed. */
    for (size_t i = 0; i < rt->n_bindings; i++)
        if (rt->bindings[i].oid == oid)
            rt->bindings[i].rel = NULL;
}

void outboxd_router_stats(const outboxd_router_t *rt, outboxd_router_stats_t *out)
{
    *out = rt->stats;
}

/* ---- binding tables to relations ---- */

static int col_index(const outboxd_pgo_relation_t *rel, const char *name)
{
    if (!name)
        return -1;
    for (int i = 0; i < rel->ncols; i++)
        if (strcmp(rel->cols[i].name, name) == 0)
            return i;
    return -1;
}

/* Resolves a required column; remembers the first missing one. */
static int need_col(binding_t *b, const outboxd_pgo_relation_t *rel, const char *name,
                    const char *what)
{
    int i = col_index(rel, name);
    if (i < 0 && !b->missing) {
        size_t n = strlen(name) + strlen(what) + 64;
        b->missing = malloc(n);
        if (b->missing)
            snprintf(b->missing, n, "column '%s' (%s) is missing from the table", name, what);
    }
    return i;
}

/* A Debezium drop-in table: the EventRouter's columns (topic templates,
 * columns: and headers: do not apply). */
static void bind_dbz(outboxd_router_t *rt, binding_t *b, const outboxd_pgo_relation_t *rel)
{
    const outboxd_dbz_t *d = b->dbz;
    b->c_id = need_col(b, rel, d->col_id, "table.field.event.id");
    b->c_key = need_col(b, rel, d->col_key, "table.field.event.key");
    b->c_payload = need_col(b, rel, d->col_payload, "table.field.event.payload");
    b->c_route = need_col(b, rel, d->col_route, "route.by.field");
    b->c_ts = d->col_ts ? need_col(b, rel, d->col_ts, "table.field.event.timestamp") : -1;
    /* Debezium reads the version column only for the struct of envelope
     * placements. */
    bool has_env = false;
    for (size_t i = 0; i < d->n_places; i++)
        has_env = has_env || d->places[i].where == OUTBOXD_DBZ_ENVELOPE;
    b->c_version = d->col_version && has_env
                       ? need_col(b, rel, d->col_version, "table.field.event.schema.version")
                       : -1;
    for (size_t i = 0; i < d->n_places; i++)
        b->c_place[i] = d->error_on_missing ? need_col(b, rel, d->places[i].column,
                                                       "table.fields.additional.placement")
                                            : col_index(rel, d->places[i].column);
    b->rel = rel;
    b->oid = rel->oid;
    if (b->missing)
        LOG_ERROR(rt->src->name, "table %s: %s; its rows go to the dead-letter topic",
                  b->table_name, b->missing);
}

static binding_t *bind(outboxd_router_t *rt, const outboxd_pgo_relation_t *rel)
{
    for (size_t i = 0; i < rt->n_bindings; i++) {
        binding_t *b = &rt->bindings[i];
        if (b->rel == rel && b->oid == rel->oid)
            return b;
    }
    for (size_t i = 0; i < rt->n_bindings; i++) {
        binding_t *b = &rt->bindings[i];
        if (strcmp(b->tc->schema, rel->nspname) != 0 || strcmp(b->tc->name, rel->relname) != 0)
            continue;
        const outboxd_outbox_columns_t *c = &b->tc->columns;
        free(b->missing);
        b->missing = NULL;
        if (b->dbz) {
            bind_dbz(rt, b, rel);
            return b;
        }
        b->c_id = need_col(b, rel, c->id, "columns.id");
        b->c_aggtype = need_col(b, rel, c->aggregatetype, "columns.aggregatetype");
        b->c_aggid = need_col(b, rel, c->aggregateid, "columns.aggregateid");
        b->c_type = need_col(b, rel, c->type, "columns.type");
        b->c_payload = need_col(b, rel, c->payload, "columns.payload");
        b->c_ts = c->timestamp ? need_col(b, rel, c->timestamp, "columns.timestamp") : -1;
        b->c_key = need_col(b, rel, b->tc->key_column, "key");
        for (size_t h = 0; h < b->tc->n_header_columns; h++)
            b->c_headers[h] = need_col(b, rel, b->tc->header_columns[h], "headers");
        for (size_t p = 0; p < b->topic.n; p++)
            if (b->topic.parts[p].is_var)
                b->topic.parts[p].col =
                    need_col(b, rel, b->topic.parts[p].text, "named in the topic template");
        b->rel = rel;
        b->oid = rel->oid;
        if (b->missing)
            LOG_ERROR(rt->src->name, "table %s: %s; its rows go to the dead-letter topic",
                      b->table_name, b->missing);
        return b;
    }
    return NULL;
}

/* ---- record building ---- */

static void add_header(outboxd_record_t *rec, const char *name, const char *value, size_t len)
{
    if (rec->n_headers >= OUTBOXD_MAX_HEADERS)
        return;
    rec->headers[rec->n_headers].name = name;
    rec->headers[rec->n_headers].value = value;
    rec->headers[rec->n_headers].len = len;
    rec->n_headers++;
}

/* What the record costs against a message size limit, counted generously
 * (librdkafka adds per-record and per-header framing to key + value), so
 * that a record within max_event_bytes is never refused by a producer or
 * broker limit of the same size. */
static size_t record_size(const outboxd_record_t *rec)
{
    size_t n = 512 + rec->value_len + (rec->key ? rec->key_len : 0);
    for (size_t i = 0; i < rec->n_headers; i++)
        n += 64 + strlen(rec->headers[i].name) + rec->headers[i].len;
    return n;
}

static const outboxd_pgo_datum_t *datum(const outboxd_pgo_tuple_t *t, int i)
{
    if (i < 0 || i >= t->ncols)
        return NULL;
    return &t->cols[i];
}

static bool has_text(const outboxd_pgo_datum_t *d)
{
    return d && (d->kind == 't' || d->kind == 'b');
}

/* Offset of the first byte of s that does not start a valid UTF-8 sequence,
 * or -1 when all of s is UTF-8. PostgreSQL converts text to the client
 * encoding (UTF8, see pgconn.c) except from a SQL_ASCII database, whose
 * bytes pass through unchecked. */
static long utf8_invalid_at(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        /* ASCII runs a word at a time: a payload of 10 KB is checked in
         * about a microsecond instead of ten. */
        uint64_t w;
        if (len - i >= sizeof(w)) {
            memcpy(&w, p + i, sizeof(w));
            if (!(w & 0x8080808080808080ull)) {
                i += sizeof(w);
                continue;
            }
        }
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = outboxd_utf8_len(p + i, len - i);
        if (n == 0)
            return (long)i;
        i += n;
    }
    return -1;
}

/* Standard base64 (RFC 4648, padded) of len bytes; NULL on OOM. */
static char *base64(const char *data, size_t len)
{
    outboxd_buf_t b = {0};
    if (!outboxd_buf_base64(&b, data, len)) {
        outboxd_buf_free(&b);
        return NULL;
    }
    return b.data; /* reserve allocates, also for len 0 */
}

/* Bytes of column data a tuple holds, before any copy or encoding. */
static size_t tuple_bytes(const outboxd_pgo_tuple_t *t)
{
    size_t n = 0;
    for (int i = 0; i < t->ncols; i++)
        if (has_text(&t->cols[i]))
            n += t->cols[i].len;
    return n;
}

/* Position headers that every dead-letter record carries. */
static void add_position_headers(outboxd_router_t *rt, outboxd_record_t *rec,
                                 const outboxd_change_ctx_t *ctx, const char *table)
{
    outboxd_lsn_format(ctx->lsn, rt->lsnbuf[0]);
    outboxd_lsn_format(ctx->commit_lsn, rt->lsnbuf[1]);
    snprintf(rt->xidbuf, sizeof(rt->xidbuf), "%u", ctx->xid);
    add_header(rec, "outboxd.source", rt->src->name, strlen(rt->src->name));
    add_header(rec, "outboxd.database", rt->database, strlen(rt->database));
    add_header(rec, "outboxd.table", table, strlen(table));
    add_header(rec, "outboxd.lsn", rt->lsnbuf[0], strlen(rt->lsnbuf[0]));
    add_header(rec, "outboxd.commit_lsn", rt->lsnbuf[1], strlen(rt->lsnbuf[1]));
    add_header(rec, "outboxd.xid", rt->xidbuf, strlen(rt->xidbuf));
}

/* Length of the longest prefix of s[0..n) that ends on a UTF-8 character
 * boundary (so a cut never splits a character). */
static size_t utf8_cut(const char *s, size_t n)
{
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* Key and id header of a dead-letter record are cut to this many bytes, so
 * that they can never make the record too large themselves. */
#define DL_ID_MAX 1024
/* Room left for the outboxd.truncated header when sizing a value. */
#define DL_NOTE_ROOM 256

/* The row as a JSON object {"column": "text" | null, ...}, every value
 * longer than cap bytes cut to cap with a marker saying how much was kept.
 * NULL on OOM (or a value jansson cannot encode). */
static char *row_json(const outboxd_pgo_relation_t *rel, const outboxd_pgo_tuple_t *t, size_t cap)
{
    json_t *cols = json_object();
    if (!cols)
        return NULL;
    for (int i = 0; i < rel->ncols && i < t->ncols; i++) {
        const outboxd_pgo_datum_t *d = &t->cols[i];
        json_t *v;
        if (d->kind == 'n') {
            v = json_null();
        } else if (d->kind == 'u') {
            v = json_string("(unchanged TOASTed value, not sent by the server)");
        } else if (utf8_invalid_at(d->data, d->len) >= 0) {
            /* jansson (and any JSON reader) refuses such a string: keep the
             * bytes (up to cap), in a shape no text column can take. */
            char *b64 = base64(d->data, d->len > cap ? cap : d->len);
            v = b64 ? json_pack("{s:s}", "base64", b64) : NULL;
            free(b64);
        } else if (d->len > cap) {
            size_t keep = utf8_cut(d->data, cap);
            char note[96];
            int nn = snprintf(note, sizeof(note), "...[outboxd: truncated, %zu of %u bytes kept]",
                              keep, d->len);
            char *tmp = malloc(keep + (size_t)nn + 1);
            if (!tmp) {
                json_decref(cols);
                return NULL;
            }
            memcpy(tmp, d->data, keep);
            memcpy(tmp + keep, note, (size_t)nn + 1);
            v = json_stringn_nocheck(tmp, keep + (size_t)nn);
            free(tmp);
        } else {
            v = json_stringn_nocheck(d->data, d->len);
        }
        if (!v || json_object_set_new(cols, rel->cols[i].name, v) < 0) {
            json_decref(cols);
            return NULL;
        }
    }
    char *text = json_dumps(cols, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(cols);
    return text;
}

/* With relay.dead_letter_format: avro, the JSON value rec carries becomes the
 * original field of a dead_letter.avsc record. 0, or -1 with errstr. */
static int avro_dead_letter(outboxd_router_t *rt, outboxd_record_t *rec, const char *reason,
                            const outboxd_change_ctx_t *ctx, const char *table, char *errstr,
                            size_t errstr_size)
{
    if (rt->conf->dead_letter_format != OUTBOXD_DLT_AVRO)
        return 0;
    outboxd_dead_letter_t dl = {
        .reason = reason,
        .key = {rec->key, rec->key_len},
        .original = {rec->value, rec->value_len},
        .source_name = rt->src->name,
        .database = rt->database,
        .table = table,
        .lsn = ctx->lsn,
        .commit_lsn = ctx->commit_lsn,
        .xid = ctx->xid,
        .commit_time_us = ctx->commit_time_us,
    };
    for (size_t i = 0; i < rec->n_headers; i++)
        if (strcmp(rec->headers[i].name, "id") == 0)
            dl.event_id = (outboxd_str_t){rec->headers[i].value, rec->headers[i].len};
    if (outboxd_encoder_dead_letter(rt->enc, &dl, &rt->dlt, errstr, errstr_size) < 0)
        return -1;
    rec->value = rt->dlt.data;
    rec->value_len = rt->dlt.len;
    return 0;
}

/*
 * Dead-letter value: the row as JSON, so that nothing of it is lost. The
 * whole record (value, key, headers) must fit rt->dl_max, or Kafka would
 * refuse it and the row would block the stream: when the JSON is too large,
 * the longest values are cut (each with a marker) to the largest length that
 * fits, and the header outboxd.truncated says so. The row is still in the
 * outbox table unless the service deletes it.
 */
static int dead_letter_row(outboxd_router_t *rt, binding_t *b, const outboxd_pgo_tuple_t *t,
                           const char *reason, const outboxd_change_ctx_t *ctx,
                           outboxd_record_t *rec, char *errstr, size_t errstr_size)
{
    const outboxd_pgo_relation_t *rel = b->rel;
    rec->topic = rt->conf->dead_letter_topic;
    size_t id_max = rt->dl_max / 8 < DL_ID_MAX ? rt->dl_max / 8 : DL_ID_MAX;
    const outboxd_pgo_datum_t *key = datum(t, b->c_key);
    if (has_text(key)) {
        rec->key = key->data;
        rec->key_len = key->len > id_max ? utf8_cut(key->data, id_max) : key->len;
    }
    const outboxd_pgo_datum_t *id = datum(t, b->c_id);
    if (has_text(id))
        add_header(rec, "id", id->data, id->len > id_max ? utf8_cut(id->data, id_max) : id->len);
    bool as_base64 = false;
    for (int i = 0; i < rel->ncols && i < t->ncols; i++)
        if (t->cols[i].kind == 't' && utf8_invalid_at(t->cols[i].data, t->cols[i].len) >= 0)
            as_base64 = true;
    outboxd_buf_reset(&rt->scratch);
    if (!outboxd_buf_append_str(&rt->scratch, reason) ||
        (as_base64 &&
         !outboxd_buf_append_str(&rt->scratch, "; columns that are not valid UTF-8 are given "
                                               "in this value as {\"base64\": \"<raw bytes>\"}")))
        goto oom;
    snprintf(errstr, errstr_size, "%s", rt->scratch.data);
    add_header(rec, "outboxd.reason", rt->scratch.data, rt->scratch.len);
    add_position_headers(rt, rec, ctx, b->table_name);

    size_t overhead = record_size(rec) + DL_NOTE_ROOM;
    size_t budget = rt->dl_max > overhead ? rt->dl_max - overhead : 0;
    /* A row far over the budget is never rendered whole (memory stays
     * bounded by the limit, not by the row): its size is estimated from the
     * raw column lengths instead. */
    char *text = NULL;
    size_t full = tuple_bytes(t);
    if (full <= budget) {
        text = row_json(rel, t, SIZE_MAX);
        if (!text)
            goto oom;
        full = strlen(text);
    }
    if (full > budget) {
        /* The largest per-value cap that fits (the size grows with it). */
        size_t lo = 0, hi = 0;
        for (int i = 0; i < rel->ncols && i < t->ncols; i++)
            if (t->cols[i].kind != 'n' && t->cols[i].kind != 'u' && t->cols[i].len > hi)
                hi = t->cols[i].len;
        /* No value longer than the whole budget can fit, so every attempt
         * renders at most about ncols * budget bytes (memory bounded by the
         * limit, not by the row). */
        if (hi > budget)
            hi = budget;
        free(text);
        text = NULL;
        while (lo < hi) {
            size_t mid = lo + (hi - lo + 1) / 2;
            char *try = row_json(rel, t, mid);
            if (!try)
                goto oom;
            if (strlen(try) <= budget)
                lo = mid;
            else
                hi = mid - 1;
            free(try);
        }
        text = row_json(rel, t, lo);
        if (!text)
            goto oom;
        if (strlen(text) > budget) {
            /* Even the column names do not fit: keep only the marker. */
            free(text);
            text = strdup("{\"outboxd.truncated\":\"row omitted: too large for the dead-letter "
                          "record\"}");
            if (!text)
                goto oom;
        }
        snprintf(rt->dl_note, sizeof(rt->dl_note),
                 "row JSON of %zu bytes cut to %zu bytes (dead-letter records are kept within "
                 "%zu bytes); values ending in ...[outboxd: truncated, ...] are incomplete",
                 full, strlen(text), rt->dl_max);
        add_header(rec, "outboxd.truncated", rt->dl_note, strlen(rt->dl_note));
    }
    outboxd_buf_reset(&rt->value);
    bool ok = outboxd_buf_append_str(&rt->value, text);
    free(text);
    if (!ok)
        goto oom;
    rec->value = rt->value.data;
    rec->value_len = rt->value.len;
    if (avro_dead_letter(rt, rec, reason, ctx, b->table_name, errstr, errstr_size) < 0)
        return -1;
    rt->stats.dead_letters++;
    return OUTBOXD_ROUTE_DEAD_LETTER;
oom:
    snprintf(errstr, errstr_size, "out of memory building a dead-letter record");
    return -1;
}

static outboxd_str_t dstr(const outboxd_pgo_datum_t *d)
{
    outboxd_str_t s = {d->data, d->len};
    return s;
}

static outboxd_str_t cstr(const char *s)
{
    outboxd_str_t r = {s, strlen(s)};
    return r;
}

/*
 * Fills the source part of ev, encodes it into rt->value (for the topic in
 * rt->topic) and checks the size. Returns 0, -1 to try again later (errstr:
 * registry unreachable, OOM), or 1 when the change cannot become an event
 * (reason filled: payload does not match its schema, registry rejects the
 * schema, over max_event_bytes; the caller dead-letters the change).
 */
static int encode_event(outboxd_router_t *rt, outboxd_envelope_t *ev, const char *table,
                        outboxd_value_format_t format, const outboxd_change_ctx_t *ctx,
                        char *reason, size_t reason_size, char *errstr, size_t errstr_size)
{
    ev->source_name = cstr(rt->src->name);
    ev->database = cstr(rt->database);
    ev->table = cstr(table);
    ev->lsn = ctx->lsn;
    ev->commit_lsn = ctx->commit_lsn;
    ev->xid = ctx->xid;
    ev->commit_time_us = ctx->commit_time_us;
    int rc = outboxd_encoder_event(rt->enc, ev, format, rt->topic.data, &rt->value, reason,
                                   reason_size, errstr, errstr_size);
    if (rc != 0)
        return rc;
    if (rt->value.len > rt->conf->max_event_bytes) {
        snprintf(reason, reason_size, "event of %zu bytes exceeds relay.max_event_bytes (%zu)",
                 rt->value.len, rt->conf->max_event_bytes);
        return 1;
    }
    return 0;
}

/* The event record: templated topic, key, Avro value, id and type headers. */
static void event_record(outboxd_router_t *rt, outboxd_record_t *rec, const outboxd_envelope_t *ev,
                         outboxd_str_t key)
{
    rec->topic = rt->topic.data;
    rec->key = key.ptr;
    rec->key_len = key.len;
    rec->value = rt->value.data;
    rec->value_len = rt->value.len;
    add_header(rec, "id", ev->id.ptr, ev->id.len);
    add_header(rec, "type", ev->type.ptr, ev->type.len);
    rt->stats.events++;
}

/* When rec with its key and headers is over max_event_bytes: fills reason,
 * clears rec for the dead-letter record that replaces it, returns true. */
static bool too_large(outboxd_router_t *rt, outboxd_record_t *rec, char *reason, size_t reason_size)
{
    size_t size = record_size(rec);
    if (size <= rt->conf->max_event_bytes)
        return false;
    snprintf(reason, reason_size,
             "event with key and headers of about %zu bytes exceeds relay.max_event_bytes (%zu)",
             size, rt->conf->max_event_bytes);
    rt->stats.events--;
    memset(rec, 0, sizeof(*rec));
    return true;
}

/* Why a column's value is missing from an UPDATE: pgoutput sends 'u' for an
 * unchanged TOASTed value, which only a full old row image carries. */
static void unsent_reason(const binding_t *b, const char *what, const char *name, char *reason,
                          size_t reason_size)
{
    snprintf(reason, reason_size,
             "%s column '%s' is an unchanged TOASTed value that PostgreSQL does not send in an "
             "UPDATE unless the table has REPLICA IDENTITY FULL; run: ALTER TABLE %s REPLICA "
             "IDENTITY FULL",
             what, name, b->table_name);
}

/* The name of a configured optional column (timestamp, headers, topic
 * placeholders) whose value the server did not send, or NULL. */
static const char *unsent_optional(const binding_t *b, const outboxd_pgo_tuple_t *t)
{
    const outboxd_pgo_datum_t *d = datum(t, b->c_ts);
    if (d && d->kind == 'u')
        return b->rel->cols[b->c_ts].name;
    for (size_t h = 0; h < b->tc->n_header_columns; h++) {
        d = datum(t, b->c_headers[h]);
        if (d && d->kind == 'u')
            return b->rel->cols[b->c_headers[h]].name;
    }
    for (size_t p = 0; p < b->topic.n; p++) {
        d = b->topic.parts[p].is_var ? datum(t, b->topic.parts[p].col) : NULL;
        if (d && d->kind == 'u')
            return b->rel->cols[b->topic.parts[p].col].name;
    }
    return NULL;
}

/*
 * An AvroConverter's bytes: rt->dbz_schema registered under
 * <topic>-<what> (key or value), then rt->dbz_datum, into out. 0; 1 with
 * reason (rejected); -1 with errstr (try again) or with errstr empty (OOM).
 */
static int dbz_avro_frame(outboxd_router_t *rt, const char *what, outboxd_buf_t *out, char *reason,
                          size_t reason_size, char *errstr, size_t errstr_size)
{
    errstr[0] = '\0';
    outboxd_buf_reset(&rt->dbz_subject);
    if (!outboxd_buf_printf(&rt->dbz_subject, "%s-%s", rt->topic.data, what))
        return -1;
    char why[600];
    int rc = outboxd_encoder_registered(rt->enc, rt->dbz_subject.data, rt->dbz_schema.data, out,
                                        why, sizeof(why), errstr, errstr_size);
    if (rc > 0)
        snprintf(reason, reason_size, "registry: subject %.100s, schema %.120s: %.200s",
                 rt->dbz_subject.data, rt->dbz_schema.data, why);
    if (rc != 0)
        return rc;
    if (!outboxd_buf_append(out, rt->dbz_datum.data ? rt->dbz_datum.data : "", rt->dbz_datum.len) ||
        !outboxd_buf_append(out, "", 1))
        return -1;
    out->len--; /* NUL-terminated, not counted */
    return 0;
}

/*
 * A row of a Debezium drop-in table: the record Debezium's EventRouter would
 * write through the configured converters (debezium.h). Rows Debezium could
 * not route (NULL route.by.field value, a topic Kafka cannot take) are
 * dead-lettered; a payload that is not JSON stays the string, as there.
 */
/* A column's type as the Debezium drop-in renders it: a domain's base type
 * (as Debezium's type registry resolves it), other types as they are. */
static uint32_t dbz_type(const outboxd_router_t *rt, const outboxd_pgo_relation_t *rel, int col)
{
    uint32_t oid = rel->cols[col].type_oid;
    for (size_t i = 0; i < rt->n_dom; i++)
        if (rt->dom_oid[i] == oid)
            return rt->dom_base[i];
    return oid;
}

int outboxd_router_set_domains(outboxd_router_t *rt, const uint32_t *oid, const uint32_t *base,
                               size_t n)
{
    uint32_t *o = NULL, *b = NULL;
    if (n && (!(o = malloc(n * sizeof(uint32_t))) || !(b = malloc(n * sizeof(uint32_t))))) {
        free(o);
        return -1;
    }
    if (n) {
        memcpy(o, oid, n * sizeof(uint32_t));
        memcpy(b, base, n * sizeof(uint32_t));
    }
    free(rt->dom_oid);
    free(rt->dom_base);
    rt->dom_oid = o;
    rt->dom_base = b;
    rt->n_dom = n;
    return 0;
}

static int route_dbz_row(outboxd_router_t *rt, binding_t *b, const outboxd_pgo_tuple_t *t,
                         const outboxd_change_ctx_t *ctx, outboxd_record_t *rec, char *errstr,
                         size_t errstr_size)
{
    const outboxd_dbz_t *d = b->dbz;
    const outboxd_pgo_relation_t *rel = b->rel;
    char reason[512];
    int used[5 + OUTBOXD_MAX_HEADERS];
    size_t n_used = 0;
    used[n_used++] = b->c_id;
    used[n_used++] = b->c_key;
    used[n_used++] = b->c_payload;
    used[n_used++] = b->c_route;
    if (b->c_version >= 0)
        used[n_used++] = b->c_version;
    for (size_t i = 0; i < d->n_places && n_used < sizeof(used) / sizeof(used[0]); i++)
        used[n_used++] = b->c_place[i];
    size_t raw = 0;
    for (size_t i = 0; i < n_used + 1; i++) {
        int col = i < n_used ? used[i] : b->c_ts;
        const outboxd_pgo_datum_t *v = datum(t, col);
        if (v && v->kind == 'u') {
            unsent_reason(b, "configured", rel->cols[col].name, reason, sizeof(reason));
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
        }
        if (has_text(v)) {
            raw += v->len;
            long bad = v->kind == 't' ? utf8_invalid_at(v->data, v->len) : -1;
            if (bad >= 0) {
                snprintf(reason, sizeof(reason),
                         "column '%s' is not valid UTF-8 (byte 0x%02x at offset %ld): write "
                         "UTF-8 text (or use a UTF8 database)",
                         rel->cols[col].name, (unsigned char)v->data[bad], bad);
                return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
            }
        }
    }
    if (raw > rt->conf->max_event_bytes) {
        snprintf(reason, sizeof(reason), "row of %zu bytes exceeds relay.max_event_bytes (%zu)",
                 raw, rt->conf->max_event_bytes);
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    }
    const outboxd_pgo_datum_t *route = datum(t, b->c_route);
    if (!has_text(route)) {
        snprintf(reason, sizeof(reason), "route.by.field column '%s' is NULL", d->col_route);
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    }
    if (outboxd_dbz_topic(d, route->data, route->len, &rt->topic) < 0)
        goto oom;
    if (!valid_topic(rt->topic.data, rt->topic.len)) {
        snprintf(reason, sizeof(reason),
                 "topic '%.200s' made by route.topic.replacement is not a valid Kafka topic "
                 "name (letters, digits, '.', '_', '-'; at most 249)",
                 rt->topic.data);
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    }
    if (!topic_allowed(rt, rt->topic.data, &b->allowed, b->has_allowed, b->tc->allowed_topics,
                       reason, sizeof(reason)))
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);

    /* Value: the payload, and the envelope placements in configured order. */
    const outboxd_pgo_datum_t *pd = datum(t, b->c_payload);
    outboxd_dbz_field_t payload = {d->col_payload, has_text(pd) ? pd->data : NULL,
                                   has_text(pd) ? pd->len : 0, dbz_type(rt, rel, b->c_payload)};
    if (payload.data == NULL && has_text(pd))
        payload.data = ""; /* an empty text is not NULL */
    outboxd_dbz_field_t env[OUTBOXD_MAX_HEADERS];
    size_t n_env = 0;
    for (size_t i = 0; i < d->n_places && n_env < OUTBOXD_MAX_HEADERS; i++) {
        if (d->places[i].where != OUTBOXD_DBZ_ENVELOPE || b->c_place[i] < 0)
            continue;
        const outboxd_pgo_datum_t *v = datum(t, b->c_place[i]);
        env[n_env++] =
            (outboxd_dbz_field_t){d->places[i].alias, has_text(v) ? (v->data ? v->data : "") : NULL,
                                  has_text(v) ? v->len : 0, dbz_type(rt, rel, b->c_place[i])};
    }
    bool tombstone = false;
    int rc;
    errstr[0] = '\0';
    /* The schema version column and the routed value name a value's schema
     * (Avro, JsonConverter with schemas.enable). */
    const outboxd_pgo_datum_t *vd = b->c_version >= 0 ? datum(t, b->c_version) : NULL;
    outboxd_dbz_field_t ver = {d->col_version, has_text(vd) ? vd->data : NULL,
                               has_text(vd) ? vd->len : 0,
                               b->c_version >= 0 ? dbz_type(rt, rel, b->c_version) : 0};
    if (d->value_avro) {
        char *routed = outboxd_strndup(route->data, route->len);
        if (!routed)
            goto oom;
        rc = outboxd_dbz_avro_value(b->dbz, b->table_name, routed, &payload, env, n_env, &ver,
                                    &rt->dbz_schema, &rt->dbz_datum, &tombstone, reason,
                                    sizeof(reason));
        free(routed);
        if (rc == 0 && !tombstone)
            rc = dbz_avro_frame(rt, "value", &rt->value, reason, sizeof(reason), errstr,
                                errstr_size);
        if (rc < 0 && !errstr[0])
            goto oom;
        if (rc < 0)
            return -1; /* registry unreachable: rewind, try again */
    } else if (d->value_schemas) {
        char *routed = outboxd_strndup(route->data, route->len);
        if (!routed)
            goto oom;
        rc = outboxd_dbz_schema_value(b->dbz, b->table_name, routed, &payload, env, n_env, &ver,
                                      &rt->value, &tombstone, reason, sizeof(reason));
        free(routed);
        if (rc < 0)
            goto oom;
    } else {
        rc = outboxd_dbz_value(d, &payload, env, n_env, &rt->value, &tombstone, reason,
                               sizeof(reason));
        if (rc < 0)
            goto oom;
    }
    if (rc > 0)
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    if (!tombstone && !outboxd_buf_append(&rt->value, "", 1))
        goto oom;
    if (!tombstone)
        rt->value.len--; /* a non-NULL pointer even for an empty value */

    /* Timestamp: the event timestamp column in ms, else the producer's now
     * (Debezium's default is its processing time). */
    const outboxd_pgo_datum_t *ts = datum(t, b->c_ts);
    int64_t ts_us = 0;
    if (has_text(ts) && outboxd_parse_timestamp(ts->data, ts->len, &ts_us) < 0) {
        snprintf(reason, sizeof(reason),
                 "table.field.event.timestamp column '%s' value '%.*s' is not a timestamp",
                 d->col_ts, (int)(ts->len > 64 ? 64 : ts->len), ts->data);
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    }

    /* Key and header texts go to buffers first: pointers are taken once
     * they no longer move. */
    const outboxd_pgo_datum_t *kd = datum(t, b->c_key);
    /* A NULL key: no key with StringConverter, the bytes null with
     * JsonConverter (the key field has a schema), {"schema": ..., "payload":
     * null} with its schemas.enable. */
    bool has_key = has_text(kd) || d->key_json;
    if (has_key && d->key_avro) {
        errstr[0] = '\0';
        outboxd_dbz_field_t kf = {d->col_key, kd->data ? kd->data : "", kd->len,
                                  dbz_type(rt, rel, b->c_key)};
        rc = outboxd_dbz_avro_key(d, &kf, &rt->dbz_schema, &rt->dbz_datum, reason, sizeof(reason));
        if (rc == 0)
            rc = dbz_avro_frame(rt, "key", &rt->dbz_key, reason, sizeof(reason), errstr,
                                errstr_size);
        if (rc < 0 && !errstr[0])
            goto oom;
        if (rc < 0)
            return -1;
        if (rc > 0)
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    } else if (has_key && d->key_schemas) {
        outboxd_dbz_field_t kf = {d->col_key, has_text(kd) ? (kd->data ? kd->data : "") : NULL,
                                  has_text(kd) ? kd->len : 0, dbz_type(rt, rel, b->c_key)};
        rc = outboxd_dbz_schema_key(d, &kf, &rt->dbz_key, reason, sizeof(reason));
        if (rc < 0)
            goto oom;
        if (rc > 0)
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    } else if (has_key && outboxd_dbz_key(d, has_text(kd) ? (kd->data ? kd->data : "") : NULL,
                                          has_text(kd) ? kd->len : 0, dbz_type(rt, rel, b->c_key),
                                          &rt->dbz_key) < 0)
        goto oom;
    size_t off[OUTBOXD_MAX_HEADERS], len[OUTBOXD_MAX_HEADERS];
    bool null[OUTBOXD_MAX_HEADERS];
    const char *name[OUTBOXD_MAX_HEADERS];
    size_t n_h = 0;
    outboxd_buf_reset(&rt->dbz_hdr);
    for (size_t i = 0; i <= d->n_places && n_h < OUTBOXD_MAX_HEADERS; i++) {
        int col = i == 0 ? b->c_id : b->c_place[i - 1];
        if (i > 0 && (d->places[i - 1].where != OUTBOXD_DBZ_HEADER || col < 0))
            continue;
        const outboxd_pgo_datum_t *v = datum(t, col);
        name[n_h] = i == 0 ? "id" : d->places[i - 1].alias;
        off[n_h] = rt->dbz_hdr.len;
        null[n_h] = !has_text(v);
        if (has_text(v) &&
            outboxd_dbz_header_text(v->data, v->len, dbz_type(rt, rel, col), &rt->dbz_hdr) < 0)
            goto oom;
        len[n_h] = rt->dbz_hdr.len - off[n_h];
        n_h++;
    }
    if (!outboxd_buf_append(&rt->dbz_hdr, "", 1))
        goto oom;

    rec->topic = rt->topic.data;
    if (has_key) {
        rec->key = rt->dbz_key.data ? rt->dbz_key.data : "";
        rec->key_len = rt->dbz_key.len;
    }
    rec->value = tombstone ? NULL : rt->value.data;
    rec->value_len = tombstone ? 0 : rt->value.len;
    for (size_t i = 0; i < n_h; i++)
        add_header(rec, name[i], null[i] ? NULL : rt->dbz_hdr.data + off[i], len[i]);
    for (size_t i = 0; i < d->n_places; i++) {
        if (d->places[i].where != OUTBOXD_DBZ_PARTITION || b->c_place[i] < 0)
            continue;
        const outboxd_pgo_datum_t *v = datum(t, b->c_place[i]);
        if (!has_text(v))
            continue; /* NULL: the partitioner decides, as with Debezium */
        char tmp[16], *end;
        long p = -1;
        if (v->len < sizeof(tmp)) {
            memcpy(tmp, v->data, v->len);
            tmp[v->len] = '\0';
            p = strtol(tmp, &end, 10);
            if (*end != '\0')
                p = -1;
        }
        if (p < 0 || p > INT32_MAX) {
            snprintf(reason, sizeof(reason),
                     "partition column '%s' is not a partition number (a non-negative integer)",
                     d->places[i].column);
            memset(rec, 0, sizeof(*rec));
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
        }
        rec->has_partition = true;
        rec->partition = (int32_t)p;
    }
    rec->timestamp_ms = ts_us / 1000; /* Java's integer division: toward zero */
    rt->stats.events++;
    if (too_large(rt, rec, reason, sizeof(reason)))
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    return OUTBOXD_ROUTE_EVENT;
oom:
    snprintf(errstr, errstr_size, "out of memory building a Debezium record");
    return -1;
}

static int route_row(outboxd_router_t *rt, binding_t *b, const outboxd_pgo_tuple_t *t,
                     const outboxd_change_ctx_t *ctx, outboxd_record_t *rec, char *errstr,
                     size_t errstr_size)
{
    char reason[512];
    if (b->missing)
        return dead_letter_row(rt, b, t, b->missing, ctx, rec, errstr, errstr_size);
    if (b->dbz)
        return route_dbz_row(rt, b, t, ctx, rec, errstr, errstr_size);

    struct {
        int col;
        const char *what;
    } required[] = {{b->c_id, "id"},
                    {b->c_key, "key"},
                    {b->c_aggtype, "aggregatetype"},
                    {b->c_aggid, "aggregateid"},
                    {b->c_type, "type"},
                    {b->c_payload, "payload"}};
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        const outboxd_pgo_datum_t *d = datum(t, required[i].col);
        if (!has_text(d)) {
            const char *name = b->rel->cols[required[i].col].name;
            if (d && d->kind == 'u')
                unsent_reason(b, required[i].what, name, reason, sizeof(reason));
            else
                snprintf(reason, sizeof(reason), "%s column '%s' is NULL", required[i].what, name);
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
        }
    }
    /* The optional columns too: a timestamp, header or topic column whose
     * value was not sent has no value to use (and must not be faked). */
    const char *unsent = unsent_optional(b, t);
    if (unsent) {
        unsent_reason(b, "configured", unsent, reason, sizeof(reason));
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    }

    /* Size first, from the raw lengths: a row whose columns alone exceed the
     * limit is dead-lettered without being copied or encoded, so memory
     * does not grow with the size of a bad row. */
    size_t raw = 0;
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++)
        raw += datum(t, required[i].col)->len;
    for (size_t h = 0; h < b->tc->n_header_columns; h++) {
        const outboxd_pgo_datum_t *d = datum(t, b->c_headers[h]);
        if (has_text(d))
            raw += d->len;
    }
    if (raw > rt->conf->max_event_bytes) {
        snprintf(reason, sizeof(reason),
                 "row of %zu bytes (payload column '%s' %u bytes) exceeds "
                 "relay.max_event_bytes (%zu)",
                 raw, b->rel->cols[b->c_payload].name, datum(t, b->c_payload)->len,
                 rt->conf->max_event_bytes);
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    }

    /* Avro strings are UTF-8 by definition; consumers would fail on (or
     * silently alter) anything else. The key and headers are bytes. */
    for (size_t i = 0; i < sizeof(required) / sizeof(required[0]); i++) {
        if (strcmp(required[i].what, "key") == 0)
            continue;
        const outboxd_pgo_datum_t *d = datum(t, required[i].col);
        long bad = utf8_invalid_at(d->data, d->len);
        if (bad >= 0) {
            snprintf(reason, sizeof(reason),
                     "%s column '%s' is not valid UTF-8 (byte 0x%02x at offset %ld), which an "
                     "Avro string must be; the database is probably SQL_ASCII and a writer "
                     "stored raw bytes: write UTF-8 text (or use a UTF8 database)",
                     required[i].what, b->rel->cols[required[i].col].name,
                     (unsigned char)d->data[bad], bad);
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
        }
    }

    /* Topic from the template. */
    outboxd_buf_reset(&rt->topic);
    for (size_t p = 0; p < b->topic.n; p++) {
        const tpl_part_t *part = &b->topic.parts[p];
        if (!part->is_var) {
            if (!outboxd_buf_append_str(&rt->topic, part->text))
                goto oom;
            continue;
        }
        const outboxd_pgo_datum_t *d = datum(t, part->col);
        if (!has_text(d)) {
            snprintf(reason, sizeof(reason), "topic template column '%s' is NULL", part->text);
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
        }
        if (!outboxd_buf_append(&rt->topic, d->data, d->len))
            goto oom;
    }
    if (!rt->topic.data || !valid_topic(rt->topic.data, rt->topic.len)) {
        snprintf(reason, sizeof(reason),
                 "topic '%.200s' made by the template is not a valid Kafka topic name "
                 "(letters, digits, '.', '_', '-'; at most 249)",
                 rt->topic.data ? rt->topic.data : "");
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    }
    if (!topic_allowed(rt, rt->topic.data, &b->allowed, b->has_allowed, b->tc->allowed_topics,
                       reason, sizeof(reason)))
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);

    int64_t occurred = ctx->commit_time_us;
    const outboxd_pgo_datum_t *ts = datum(t, b->c_ts);
    if (has_text(ts) && outboxd_parse_timestamp(ts->data, ts->len, &occurred) < 0) {
        snprintf(reason, sizeof(reason), "timestamp column '%s' value '%.*s' is not a timestamp",
                 b->tc->columns.timestamp, (int)(ts->len > 64 ? 64 : ts->len), ts->data);
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    }

    const outboxd_pgo_datum_t *id = datum(t, b->c_id);
    const outboxd_pgo_datum_t *type = datum(t, b->c_type);
    outboxd_envelope_t ev = {
        .id = dstr(id),
        .type = dstr(type),
        .aggregate_type = dstr(datum(t, b->c_aggtype)),
        .aggregate_id = dstr(datum(t, b->c_aggid)),
        .payload_null = false,
        .payload = dstr(datum(t, b->c_payload)),
        .occurred_at_us = occurred,
    };
    int enc = encode_event(rt, &ev, b->table_name, (outboxd_value_format_t)b->tc->value_format, ctx,
                           reason, sizeof(reason), errstr, errstr_size);
    if (enc < 0)
        return -1;
    if (enc > 0)
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    event_record(rt, rec, &ev, dstr(datum(t, b->c_key)));
    for (size_t h = 0; h < b->tc->n_header_columns; h++) {
        const outboxd_pgo_datum_t *d = datum(t, b->c_headers[h]);
        if (has_text(d))
            add_header(rec, b->tc->header_columns[h], d->data, d->len);
    }
    if (too_large(rt, rec, reason, sizeof(reason)))
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    return OUTBOXD_ROUTE_EVENT;
oom:
    snprintf(errstr, errstr_size, "out of memory building a topic name");
    return -1;
}

/* ---- pg_logical_emit_message input ---- */

/* Text of a top-level JSON field: strings as-is, numbers and booleans
 * formatted, objects/arrays as compact JSON. Appends to scratch; returns the
 * offset of the NUL-terminated text, -1 when absent or null, -2 when out of
 * memory. */
static long field_text(outboxd_router_t *rt, json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v))
        return -1;
    long off = (long)rt->scratch.len;
    if (json_is_string(v)) {
        if (!outboxd_buf_append(&rt->scratch, json_string_value(v), json_string_length(v)))
            return -2;
    } else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
        if (!s)
            return -2;
        bool ok = outboxd_buf_append_str(&rt->scratch, s);
        free(s);
        if (!ok)
            return -2;
    }
    if (!outboxd_buf_append(&rt->scratch, "", 1)) /* keep the NUL inside len */
        return -2;
    return off;
}

static int dead_letter_message(outboxd_router_t *rt, msg_binding_t *m, const outboxd_pgo_msg_t *msg,
                               const char *reason, const outboxd_change_ctx_t *ctx,
                               outboxd_record_t *rec, char *errstr, size_t errstr_size)
{
    rec->topic = rt->conf->dead_letter_topic;
    char full[600];
    snprintf(full, sizeof(full), "%s", reason);
    snprintf(errstr, errstr_size, "%s", full);
    outboxd_buf_reset(&rt->topic);
    if (!outboxd_buf_append_str(&rt->topic, full))
        goto oom;
    add_header(rec, "outboxd.reason", rt->topic.data, rt->topic.len);
    add_position_headers(rt, rec, ctx, m->table_name);
    /* The whole record must fit (see dead_letter_row); the rest of the
     * content is lost, which outboxd.truncated says. */
    size_t overhead = record_size(rec) + DL_NOTE_ROOM;
    size_t budget = rt->dl_max > overhead ? rt->dl_max - overhead : 0;
    size_t len = msg->u.message.content_len;
    if (len > budget) {
        len = utf8_cut(msg->u.message.content, budget);
        snprintf(rt->dl_note, sizeof(rt->dl_note),
                 "message content of %u bytes cut to %zu bytes (dead-letter records are kept "
                 "within %zu bytes)",
                 msg->u.message.content_len, len, rt->dl_max);
        add_header(rec, "outboxd.truncated", rt->dl_note, strlen(rt->dl_note));
    }
    outboxd_buf_reset(&rt->value);
    if (!outboxd_buf_append(&rt->value, msg->u.message.content, len))
        goto oom;
    rec->value = rt->value.data;
    rec->value_len = rt->value.len;
    if (avro_dead_letter(rt, rec, full, ctx, m->table_name, errstr, errstr_size) < 0)
        return -1;
    rt->stats.dead_letters++;
    return OUTBOXD_ROUTE_DEAD_LETTER;
oom:
    snprintf(errstr, errstr_size, "out of memory building a dead-letter record");
    return -1;
}

static int route_message(outboxd_router_t *rt, const outboxd_pgo_msg_t *msg,
                         const outboxd_change_ctx_t *ctx, outboxd_record_t *rec, char *errstr,
                         size_t errstr_size)
{
    msg_binding_t *m = NULL;
    for (size_t i = 0; i < rt->n_msgs; i++)
        if (strcmp(rt->msgs[i].mc->prefix, msg->u.message.prefix) == 0)
            m = &rt->msgs[i];
    if (!m) {
        rt->stats.ignored_other++;
        return OUTBOXD_ROUTE_IGNORE;
    }
    if (!msg->u.message.transactional) {
        /* A non-transactional message has no commit to tie exactly-once to,
         * and is sent even if the writer's transaction rolls back. */
        LOG_WARN(rt->src->name,
                 "ignoring non-transactional message with prefix '%s' at %X/%X: use "
                 "pg_logical_emit_message(true, ...)",
                 m->mc->prefix, (uint32_t)(ctx->lsn >> 32), (uint32_t)ctx->lsn);
        rt->stats.ignored_other++;
        return OUTBOXD_ROUTE_IGNORE;
    }
    json_decref(rt->msg_json);
    rt->msg_json = NULL;
    char reason[512];
    if (msg->u.message.content_len > rt->conf->max_event_bytes) {
        /* Not parsed: the JSON tree and the fields taken from it would cost
         * several times the content's size. */
        snprintf(reason, sizeof(reason), "message of %u bytes exceeds relay.max_event_bytes (%zu)",
                 msg->u.message.content_len, rt->conf->max_event_bytes);
        return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
    }
    json_error_t jerr;
    rt->msg_json = json_loadb(msg->u.message.content, msg->u.message.content_len, 0, &jerr);
    if (!rt->msg_json || !json_is_object(rt->msg_json)) {
        snprintf(reason, sizeof(reason), "message content is not a JSON object: %s",
                 rt->msg_json ? "not an object" : jerr.text);
        return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
    }
    json_t *o = rt->msg_json;
    outboxd_buf_reset(&rt->scratch);
    /* Reserve up front so offsets stay valid (scratch may move while growing;
     * we only turn offsets into pointers at the end). */
    const char *names[] = {"id", "aggregatetype", "aggregateid", "type", "payload"};
    long off[5];
    for (int i = 0; i < 5; i++) {
        off[i] = field_text(rt, o, names[i]);
        if (off[i] == -2)
            goto oom;
        if (off[i] < 0) {
            snprintf(reason, sizeof(reason), "message field '%s' is missing or null", names[i]);
            return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
        }
    }
    int64_t occurred = ctx->commit_time_us;
    long ts_off = field_text(rt, o, "timestamp");
    if (ts_off == -2)
        goto oom;
    outboxd_buf_reset(&rt->topic);
    for (size_t p = 0; p < m->topic.n; p++) {
        const tpl_part_t *part = &m->topic.parts[p];
        if (!part->is_var) {
            if (!outboxd_buf_append_str(&rt->topic, part->text))
                goto oom;
            continue;
        }
        long f = field_text(rt, o, part->text);
        if (f == -2)
            goto oom;
        if (f < 0) {
            snprintf(reason, sizeof(reason), "topic template field '%s' is missing or null",
                     part->text);
            return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
        }
        if (!outboxd_buf_append_str(&rt->topic, rt->scratch.data + f))
            goto oom;
    }
    const char *sc = rt->scratch.data;
    if (ts_off >= 0 && outboxd_parse_timestamp(sc + ts_off, strlen(sc + ts_off), &occurred) < 0) {
        snprintf(reason, sizeof(reason), "message field 'timestamp' is not a timestamp");
        return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
    }
    if (!rt->topic.data || !valid_topic(rt->topic.data, rt->topic.len)) {
        snprintf(reason, sizeof(reason), "topic '%.200s' is not a valid Kafka topic name",
                 rt->topic.data ? rt->topic.data : "");
        return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
    }
    if (!topic_allowed(rt, rt->topic.data, &m->allowed, m->has_allowed, m->mc->allowed_topics,
                       reason, sizeof(reason)))
        return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
    outboxd_envelope_t ev = {
        .id = cstr(sc + off[0]),
        .aggregate_type = cstr(sc + off[1]),
        .aggregate_id = cstr(sc + off[2]),
        .type = cstr(sc + off[3]),
        .payload = cstr(sc + off[4]),
        .occurred_at_us = occurred,
    };
    int enc = encode_event(rt, &ev, m->table_name, OUTBOXD_VALUE_ENVELOPE, ctx, reason,
                           sizeof(reason), errstr, errstr_size);
    if (enc < 0)
        return -1;
    if (enc > 0)
        return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
    event_record(rt, rec, &ev, cstr(sc + off[2]));
    if (too_large(rt, rec, reason, sizeof(reason)))
        return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
    return OUTBOXD_ROUTE_EVENT;
oom:
    snprintf(errstr, errstr_size, "out of memory routing a message");
    return -1;
}

int outboxd_router_dead_letter_max(outboxd_router_t *rt, const outboxd_pgo_msg_t *msg,
                                   const outboxd_change_ctx_t *ctx, const char *reason,
                                   size_t max_bytes, outboxd_record_t *rec, char *errstr,
                                   size_t errstr_size)
{
    size_t saved = rt->dl_max;
    if (max_bytes && max_bytes < rt->dl_max)
        rt->dl_max = max_bytes;
    int r = outboxd_router_dead_letter(rt, msg, ctx, reason, rec, errstr, errstr_size);
    rt->dl_max = saved;
    return r;
}

/*
 * The row image an INSERT or UPDATE publishes. pgoutput sends an unchanged
 * TOASTed value of an UPDATE as 'u' (no data); under REPLICA IDENTITY FULL
 * the old image ('O') carries it in full, so it is taken from there. Without
 * it the 'u' stays and the row is dead-lettered, saying how to fix it.
 * Returns NULL on OOM.
 */
static const outboxd_pgo_tuple_t *row_image(outboxd_router_t *rt, const outboxd_pgo_msg_t *msg,
                                            outboxd_pgo_tuple_t *merged)
{
    const outboxd_pgo_tuple_t *nt = &msg->u.change.new_tuple;
    const outboxd_pgo_tuple_t *ot = &msg->u.change.old_tuple;
    if (msg->kind != OUTBOXD_PGO_UPDATE || msg->u.change.old_kind != 'O')
        return nt;
    bool any = false;
    for (int i = 0; i < nt->ncols && i < ot->ncols; i++)
        if (nt->cols[i].kind == 'u' && ot->cols[i].kind != 'u')
            any = true;
    if (!any)
        return nt;
    if (nt->ncols > rt->merged_cap) {
        outboxd_pgo_datum_t *m = realloc(rt->merged, (size_t)nt->ncols * sizeof(*m));
        if (!m)
            return NULL;
        rt->merged = m;
        rt->merged_cap = nt->ncols;
    }
    for (int i = 0; i < nt->ncols; i++)
        rt->merged[i] = (nt->cols[i].kind == 'u' && i < ot->ncols) ? ot->cols[i] : nt->cols[i];
    merged->ncols = nt->ncols;
    merged->cols = rt->merged;
    return merged;
}

int outboxd_router_dead_letter(outboxd_router_t *rt, const outboxd_pgo_msg_t *msg,
                               const outboxd_change_ctx_t *ctx, const char *reason,
                               outboxd_record_t *rec, char *errstr, size_t errstr_size)
{
    memset(rec, 0, sizeof(*rec));
    if ((msg->kind == OUTBOXD_PGO_INSERT || msg->kind == OUTBOXD_PGO_UPDATE)) {
        binding_t *b = bind(rt, msg->u.change.rel);
        outboxd_pgo_tuple_t merged;
        const outboxd_pgo_tuple_t *t = b ? row_image(rt, msg, &merged) : NULL;
        if (b && !t) {
            snprintf(errstr, errstr_size, "out of memory");
            return -1;
        }
        if (b)
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    } else if (msg->kind == OUTBOXD_PGO_MESSAGE) {
        for (size_t i = 0; i < rt->n_msgs; i++)
            if (strcmp(rt->msgs[i].mc->prefix, msg->u.message.prefix) == 0)
                return dead_letter_message(rt, &rt->msgs[i], msg, reason, ctx, rec, errstr,
                                           errstr_size);
    }
    return OUTBOXD_ROUTE_IGNORE;
}

int outboxd_router_route(outboxd_router_t *rt, const outboxd_pgo_msg_t *msg,
                         const outboxd_change_ctx_t *ctx, outboxd_record_t *rec, char *errstr,
                         size_t errstr_size)
{
    memset(rec, 0, sizeof(*rec));
    switch (msg->kind) {
    case OUTBOXD_PGO_INSERT:
    case OUTBOXD_PGO_UPDATE: {
        binding_t *b = bind(rt, msg->u.change.rel);
        if (!b) {
            rt->stats.ignored_other++;
            return OUTBOXD_ROUTE_IGNORE;
        }
        outboxd_pgo_tuple_t merged;
        const outboxd_pgo_tuple_t *t = row_image(rt, msg, &merged);
        if (!t) {
            snprintf(errstr, errstr_size, "out of memory");
            return -1;
        }
        if (msg->kind == OUTBOXD_PGO_UPDATE) {
            switch (b->tc->on_update) {
            case OUTBOXD_UPDATE_SKIP:
                if (!rt->warned_update) {
                    LOG_WARN(rt->src->name,
                             "UPDATE on outbox table %s skipped (on_update: skip); outbox "
                             "rows should be inserted, not updated",
                             b->table_name);
                    rt->warned_update = true;
                }
                rt->stats.skipped_updates++;
                return OUTBOXD_ROUTE_IGNORE;
            case OUTBOXD_UPDATE_DEAD_LETTER:
                return dead_letter_row(rt, b, t,
                                       "UPDATE on an outbox table (on_update: dead_letter)", ctx,
                                       rec, errstr, errstr_size);
            case OUTBOXD_UPDATE_PUBLISH:
                break;
            }
        }
        return route_row(rt, b, t, ctx, rec, errstr, errstr_size);
    }
    case OUTBOXD_PGO_DELETE:
        /* Services may insert and delete in one transaction to keep the
         * outbox empty; the insert is the event. */
        rt->stats.ignored_deletes++;
        return OUTBOXD_ROUTE_IGNORE;
    case OUTBOXD_PGO_MESSAGE:
        return route_message(rt, msg, ctx, rec, errstr, errstr_size);
    default:
        rt->stats.ignored_other++;
        return OUTBOXD_ROUTE_IGNORE;
    }
}

/* ---- timestamps ---- */

static int digits(const char **p, const char *end, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (*p >= end || **p < '0' || **p > '9')
            return -1;
        v = v * 10 + (**p - '0');
        (*p)++;
    }
    *out = v;
    return 0;
}

int outboxd_parse_timestamp(const char *s, size_t len, int64_t *out_us)
{
    const char *p = s, *end = s + len;
    int y, mo, d, h, mi, sec;
    if (digits(&p, end, 4, &y) || p >= end || *p++ != '-' || digits(&p, end, 2, &mo) || p >= end ||
        *p++ != '-' || digits(&p, end, 2, &d))
        return -1;
    if (p >= end || (*p != ' ' && *p != 'T'))
        return -1;
    p++;
    if (digits(&p, end, 2, &h) || p >= end || *p++ != ':' || digits(&p, end, 2, &mi) || p >= end ||
        *p++ != ':' || digits(&p, end, 2, &sec))
        return -1;
    int64_t frac = 0;
    if (p < end && *p == '.') {
        p++;
        int n = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (n < 6) {
                frac = frac * 10 + (*p - '0');
                n++;
            }
            p++;
        }
        if (n == 0)
            return -1;
        while (n++ < 6)
            frac *= 10;
    }
    int offset_s = 0;
    if (p < end) {
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p == '-' ? -1 : 1, oh = 0, om = 0;
            p++;
            if (digits(&p, end, 2, &oh))
                return -1;
            if (p < end && *p == ':')
                p++;
            if (p < end && digits(&p, end, 2, &om))
                return -1;
            offset_s = sign * (oh * 3600 + om * 60);
        } else {
            return -1;
        }
    }
    if (p != end || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    time_t t = timegm(&tm);
    *out_us = ((int64_t)t - offset_s) * 1000000 + frac;
    return 0;
}

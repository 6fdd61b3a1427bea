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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/log.h"
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
} binding_t;

typedef struct msg_binding {
    const outboxd_message_conf_t *mc;
    tpl_t topic;
    char *table_name; /* "message:<prefix>" */
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
    outboxd_encoder_t *enc; /* event values: envelope or typed, registry or not */
    outboxd_buf_t dlt;      /* Avro dead-letter value (relay.dead_letter_format: avro) */
};

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
        binding_t *b = &rt->bindings[rt->n_bindings++];
        b->tc = tc;
        if (tc->mode != OUTBOXD_MODE_OUTBOX) {
            snprintf(errstr, errstr_size,
                     "source %s: table %s.%s: mode cdc is not supported by this version yet; "
                     "use mode: outbox",
                     src->name, tc->schema, tc->name);
            goto fail;
        }
        size_t n = strlen(tc->schema) + strlen(tc->name) + 2;
        b->table_name = malloc(n);
        b->c_headers = calloc(tc->n_header_columns ? tc->n_header_columns : 1, sizeof(int));
        if (!b->table_name || !b->c_headers) {
            snprintf(errstr, errstr_size, "out of memory");
            goto fail;
        }
        snprintf(b->table_name, n, "%s.%s", tc->schema, tc->name);
        if (tpl_compile(&b->topic, tc->topic, errstr, errstr_size) < 0)
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
        if (tpl_compile(&m->topic, m->mc->topic, errstr, errstr_size) < 0)
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
    }
    for (size_t i = 0; i < rt->n_msgs; i++) {
        tpl_free(&rt->msgs[i].topic);
        free(rt->msgs[i].table_name);
    }
    free(rt->bindings);
    free(rt->msgs);
    free(rt->database);
    outboxd_avro_destroy(rt->avro);
    outboxd_encoder_destroy(rt->enc);
    outboxd_buf_free(&rt->dlt);
    outboxd_buf_free(&rt->topic);
    outboxd_buf_free(&rt->value);
    outboxd_buf_free(&rt->scratch);
    json_decref(rt->msg_json);
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
                b->topic.parts[p].col = need_col(b, rel, b->topic.parts[p].text, "topic");
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
 * Dead-letter value: the row as JSON ({"column": "text" | null, ...}) so that
 * nothing of it is lost. If that alone exceeds max_event_bytes, columns over
 * 1 KiB are replaced by a note with their size (the row is still in the
 * outbox table unless the service deletes it).
 */
static int dead_letter_row(outboxd_router_t *rt, binding_t *b, const outboxd_pgo_tuple_t *t,
                           const char *reason, const outboxd_change_ctx_t *ctx,
                           outboxd_record_t *rec, char *errstr, size_t errstr_size)
{
    const outboxd_pgo_relation_t *rel = b->rel;
    for (int pass = 0; pass < 3; pass++) {
        json_t *cols = json_object();
        if (!cols)
            goto oom;
        for (int i = 0; i < rel->ncols && i < t->ncols; i++) {
            const outboxd_pgo_datum_t *d = &t->cols[i];
            json_t *v;
            if (pass == 2 && strcmp(rel->cols[i].name, b->tc->columns.id) != 0) {
                /* Still too large with big columns left out: keep the id. */
                continue;
            } else if (d->kind == 'n')
                v = json_null();
            else if (d->kind == 'u')
                v = json_string("(unchanged TOASTed value, not sent by the server)");
            else if (pass == 1 && d->len > 1024) {
                char note[96];
                snprintf(note, sizeof(note), "(omitted: %u bytes)", d->len);
                v = json_string(note);
            } else
                v = json_stringn_nocheck(d->data, d->len);
            json_object_set_new(cols, rel->cols[i].name, v);
        }
        char *text = json_dumps(cols, JSON_COMPACT | JSON_PRESERVE_ORDER);
        json_decref(cols);
        if (!text)
            goto oom;
        outboxd_buf_reset(&rt->value);
        bool ok = outboxd_buf_append_str(&rt->value, text);
        free(text);
        if (!ok)
            goto oom;
        if (rt->value.len + 1024 <= rt->conf->max_event_bytes) /* room for headers */
            break;
    }
    rec->topic = rt->conf->dead_letter_topic;
    rec->value = rt->value.data;
    rec->value_len = rt->value.len;
    const outboxd_pgo_datum_t *key = datum(t, b->c_key);
    if (has_text(key)) {
        rec->key = key->data;
        rec->key_len = key->len;
    }
    const outboxd_pgo_datum_t *id = datum(t, b->c_id);
    if (has_text(id))
        add_header(rec, "id", id->data, id->len);
    snprintf(errstr, errstr_size, "%s", reason);
    outboxd_buf_reset(&rt->scratch);
    outboxd_buf_append_str(&rt->scratch, reason);
    add_header(rec, "outboxd.reason", rt->scratch.data, rt->scratch.len);
    add_position_headers(rt, rec, ctx, b->table_name);
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

static int route_row(outboxd_router_t *rt, binding_t *b, const outboxd_pgo_tuple_t *t,
                     const outboxd_change_ctx_t *ctx, outboxd_record_t *rec, char *errstr,
                     size_t errstr_size)
{
    char reason[512];
    if (b->missing)
        return dead_letter_row(rt, b, t, b->missing, ctx, rec, errstr, errstr_size);

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
                snprintf(reason, sizeof(reason),
                         "%s column '%s' is an unchanged TOASTed value the server did not "
                         "send (set REPLICA IDENTITY FULL on the table)",
                         required[i].what, name);
            else
                snprintf(reason, sizeof(reason), "%s column '%s' is NULL", required[i].what, name);
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
        }
    }

    /* Topic from the template. */
    outboxd_buf_reset(&rt->topic);
    for (size_t p = 0; p < b->topic.n; p++) {
        const tpl_part_t *part = &b->topic.parts[p];
        if (!part->is_var) {
            outboxd_buf_append_str(&rt->topic, part->text);
            continue;
        }
        const outboxd_pgo_datum_t *d = datum(t, part->col);
        if (!has_text(d)) {
            snprintf(reason, sizeof(reason), "topic template column '%s' is NULL", part->text);
            return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
        }
        outboxd_buf_append(&rt->topic, d->data, d->len);
    }
    if (!rt->topic.data || !valid_topic(rt->topic.data, rt->topic.len)) {
        snprintf(reason, sizeof(reason),
                 "topic '%.200s' made by the template is not a valid Kafka topic name "
                 "(letters, digits, '.', '_', '-'; at most 249)",
                 rt->topic.data ? rt->topic.data : "");
        return dead_letter_row(rt, b, t, reason, ctx, rec, errstr, errstr_size);
    }

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
}

/* ---- pg_logical_emit_message input ---- */

/* Text of a top-level JSON field: strings as-is, numbers and booleans
 * formatted, objects/arrays as compact JSON. Appends to scratch; returns the
 * offset of the NUL-terminated text, or -1 when absent or null. */
static long field_text(outboxd_router_t *rt, json_t *obj, const char *name)
{
    json_t *v = json_object_get(obj, name);
    if (!v || json_is_null(v))
        return -1;
    long off = (long)rt->scratch.len;
    if (json_is_string(v)) {
        outboxd_buf_append(&rt->scratch, json_string_value(v), json_string_length(v));
    } else {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
        if (!s)
            return -1;
        outboxd_buf_append_str(&rt->scratch, s);
        free(s);
    }
    outboxd_buf_append(&rt->scratch, "", 1); /* keep the NUL inside len */
    return off;
}

static int dead_letter_message(outboxd_router_t *rt, msg_binding_t *m, const outboxd_pgo_msg_t *msg,
                               const char *reason, const outboxd_change_ctx_t *ctx,
                               outboxd_record_t *rec, char *errstr, size_t errstr_size)
{
    size_t len = msg->u.message.content_len;
    if (len > rt->conf->max_event_bytes)
        len = rt->conf->max_event_bytes; /* the rest is lost: say so in the reason */
    outboxd_buf_reset(&rt->value);
    if (!outboxd_buf_append(&rt->value, msg->u.message.content, len))
        goto oom;
    rec->topic = rt->conf->dead_letter_topic;
    rec->value = rt->value.data;
    rec->value_len = rt->value.len;
    char full[600];
    if (len < msg->u.message.content_len)
        snprintf(full, sizeof(full), "%s (content truncated from %u bytes)", reason,
                 msg->u.message.content_len);
    else
        snprintf(full, sizeof(full), "%s", reason);
    snprintf(errstr, errstr_size, "%s", full);
    outboxd_buf_reset(&rt->topic);
    if (!outboxd_buf_append_str(&rt->topic, full))
        goto oom;
    add_header(rec, "outboxd.reason", rt->topic.data, rt->topic.len);
    add_position_headers(rt, rec, ctx, m->table_name);
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
    json_error_t jerr;
    rt->msg_json = json_loadb(msg->u.message.content, msg->u.message.content_len, 0, &jerr);
    char reason[512];
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
        if (off[i] < 0) {
            snprintf(reason, sizeof(reason), "message field '%s' is missing or null", names[i]);
            return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
        }
    }
    int64_t occurred = ctx->commit_time_us;
    long ts_off = field_text(rt, o, "timestamp");
    outboxd_buf_reset(&rt->topic);
    for (size_t p = 0; p < m->topic.n; p++) {
        const tpl_part_t *part = &m->topic.parts[p];
        if (!part->is_var) {
            outboxd_buf_append_str(&rt->topic, part->text);
            continue;
        }
        long f = field_text(rt, o, part->text);
        if (f < 0) {
            snprintf(reason, sizeof(reason), "topic template field '%s' is missing or null",
                     part->text);
            return dead_letter_message(rt, m, msg, reason, ctx, rec, errstr, errstr_size);
        }
        outboxd_buf_append_str(&rt->topic, rt->scratch.data + f);
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
}

int outboxd_router_dead_letter(outboxd_router_t *rt, const outboxd_pgo_msg_t *msg,
                               const outboxd_change_ctx_t *ctx, const char *reason,
                               outboxd_record_t *rec, char *errstr, size_t errstr_size)
{
    memset(rec, 0, sizeof(*rec));
    if ((msg->kind == OUTBOXD_PGO_INSERT || msg->kind == OUTBOXD_PGO_UPDATE)) {
        binding_t *b = bind(rt, msg->u.change.rel);
        if (b)
            return dead_letter_row(rt, b, &msg->u.change.new_tuple, reason, ctx, rec, errstr,
                                   errstr_size);
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
                return dead_letter_row(rt, b, &msg->u.change.new_tuple,
                                       "UPDATE on an outbox table (on_update: dead_letter)", ctx,
                                       rec, errstr, errstr_size);
            case OUTBOXD_UPDATE_PUBLISH:
                break;
            }
        }
        return route_row(rt, b, &msg->u.change.new_tuple, ctx, rec, errstr, errstr_size);
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

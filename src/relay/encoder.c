/*
 * Encoder: event and dead-letter values (see encoder.h).
 *
 * The envelope's datum is written field by field in the order of
 * outbox_envelope.avsc (checked when the encoder is made); a typed payload
 * is written by avro_json.c from the row's JSON.
 */
#include "outboxd/relay/encoder.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "outboxd/common/avro_json.h"
#include "outboxd/common/log.h"
#include "outboxd/common/registry.h"

#define MAX_SECRET_SIZE 8192

typedef struct schema {
    outboxd_avsc_t *avsc;
    unsigned char so_header[10]; /* single-object: C3 01 + fingerprint (LE) */
    bool stored;                 /* written to schema_store_dir */
    bool rejected_logged;        /* the registry's rejection was logged */
} schema_t;

typedef struct type_entry {
    char *type;
    schema_t payload;  /* schemas_dir/<type>.avsc */
    schema_t envelope; /* the envelope with that payload */
} type_entry_t;

struct outboxd_encoder {
    const outboxd_config_t *conf;
    type_entry_t *types;
    size_t n_types;
    schema_t envelope;    /* payload as JSON text */
    schema_t string;      /* value_format payload without an .avsc */
    schema_t dead_letter; /* dead_letter.avsc */
    outboxd_registry_t *reg;
    char *store_dir;
    outboxd_buf_t subject;
};

/* ---- setup -------------------------------------------------------------- */

static bool schema_init(schema_t *s, const char *text, char *errstr, size_t errstr_size)
{
    s->avsc = outboxd_avsc_parse(text, strlen(text), errstr, errstr_size);
    if (!s->avsc)
        return false;
    uint64_t fp = outboxd_avsc_fingerprint(s->avsc);
    s->so_header[0] = 0xC3;
    s->so_header[1] = 0x01;
    for (int i = 0; i < 8; i++)
        s->so_header[2 + i] = (unsigned char)(fp >> (8 * i));
    return true;
}

/* A path from the configuration: relative ones are relative to the
 * configuration file's directory, so the service's working directory does
 * not matter. */
static char *resolve_path(const outboxd_config_t *conf, const char *p)
{
    if (p[0] == '/' || !conf->path)
        return strdup(p);
    char *copy = strdup(conf->path);
    if (!copy)
        return NULL;
    const char *dir = dirname(copy);
    size_t n = strlen(dir) + strlen(p) + 2;
    char *r = malloc(n);
    if (r)
        snprintf(r, n, "%s/%s", dir, p);
    free(copy);
    return r;
}

static char *read_small_file(const char *path, size_t max, size_t *len_out, char *errstr,
                             size_t errstr_size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(errstr, errstr_size, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    outboxd_buf_t b = {0};
    char chunk[4096];
    size_t n;
    bool ok = true;
    while (ok && (n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + n > max) {
            snprintf(errstr, errstr_size, "%s is larger than %zu bytes", path, max);
            ok = false;
        } else if (!outboxd_buf_append(&b, chunk, n)) {
            snprintf(errstr, errstr_size, "out of memory reading %s", path);
            ok = false;
        }
    }
    if (ok && ferror(f)) {
        snprintf(errstr, errstr_size, "cannot read %s: %s", path, strerror(errno));
        ok = false;
    }
    fclose(f);
    if (!ok) {
        outboxd_buf_free(&b);
        return NULL;
    }
    if (!b.data && !outboxd_buf_append(&b, "", 0)) {
        snprintf(errstr, errstr_size, "out of memory reading %s", path);
        return NULL;
    }
    if (len_out)
        *len_out = b.len;
    return b.data;
}

/* A secret file's first line. */
static char *read_secret(const outboxd_config_t *conf, const char *file, const char *key,
                         char *errstr, size_t errstr_size)
{
    char *path = resolve_path(conf, file);
    char err[300];
    char *s = path ? read_small_file(path, MAX_SECRET_SIZE, NULL, err, sizeof(err)) : NULL;
    free(path);
    if (!s) {
        snprintf(errstr, errstr_size, "schema_registry.%s: %s", key, path ? err : "out of memory");
        return NULL;
    }
    s[strcspn(s, "\r\n")] = '\0';
    return s;
}

/*
 * The envelope with payload_json as the payload field's type, named after
 * the payload record (<Name>Envelope in its namespace) so that record-name
 * subjects differ per type; Source keeps its full name io.outboxd.Source.
 */
static char *typed_envelope_text(const outboxd_avsc_t *payload, char *errstr, size_t errstr_size)
{
    json_t *env = json_loads(outboxd_envelope_schema_json, 0, NULL);
    json_t *pl = json_loads(outboxd_avsc_text(payload), JSON_DECODE_ANY, NULL);
    char *text = NULL;
    if (!env || !pl)
        goto done;
    const char *full = outboxd_avsc_fullname(payload);
    const char *dot = strrchr(full, '.');
    char name[512];
    snprintf(name, sizeof(name), "%sEnvelope", dot ? dot + 1 : full);
    json_object_set_new(env, "name", json_string(name));
    if (dot)
        json_object_set_new(env, "namespace", json_stringn(full, (size_t)(dot - full)));
    else
        json_object_del(env, "namespace");
    json_object_set_new(env, "doc",
                        json_string("One outbox event as published by outboxd, with a typed "
                                    "payload (relay.schemas_dir)."));
    json_t *fields = json_object_get(env, "fields");
    for (size_t i = 0; i < json_array_size(fields); i++) {
        json_t *f = json_array_get(fields, i);
        const char *fname = json_string_value(json_object_get(f, "name"));
        if (fname && strcmp(fname, "payload") == 0) {
            json_object_set(f, "type", pl);
            json_object_del(f, "default");
            json_object_set_new(f, "doc", json_string("The payload, typed."));
        } else if (fname && strcmp(fname, "source") == 0) {
            json_t *st = json_object_get(f, "type");
            json_object_set_new(st, "name", json_string("io.outboxd.Source"));
        }
    }
    text = json_dumps(env, JSON_INDENT(0) | JSON_COMPACT | JSON_PRESERVE_ORDER);
done:
    if (!text)
        snprintf(errstr, errstr_size, "out of memory building a typed envelope schema");
    json_decref(env);
    json_decref(pl);
    return text;
}

/* The envelope's fields must be in the order the datum is written. */
static bool check_envelope_order(char *errstr, size_t errstr_size)
{
    static const char *const order[] = {"id",      "type",        "aggregate_type", "aggregate_id",
                                        "payload", "occurred_at", "source"};
    json_t *env = json_loads(outboxd_envelope_schema_json, 0, NULL);
    json_t *fields = json_object_get(env, "fields");
    bool ok = json_array_size(fields) == 7;
    for (size_t i = 0; ok && i < 7; i++)
        ok = strcmp(json_string_value(json_object_get(json_array_get(fields, i), "name")) ?: "",
                    order[i]) == 0;
    json_t *pt = ok ? json_object_get(json_array_get(fields, 4), "type") : NULL;
    ok = ok && json_array_size(pt) == 2 &&
         strcmp(json_string_value(json_array_get(pt, 0)) ?: "", "null") == 0 &&
         strcmp(json_string_value(json_array_get(pt, 1)) ?: "", "string") == 0;
    json_decref(env);
    if (!ok)
        snprintf(errstr, errstr_size,
                 "envelope schema: fields must be id, type, aggregate_type, aggregate_id, "
                 "payload ([null, string]), occurred_at, source");
    return ok;
}

static int cmp_type(const void *a, const void *b)
{
    return strcmp(((const type_entry_t *)a)->type, ((const type_entry_t *)b)->type);
}

static bool load_types(outboxd_encoder_t *enc, char *errstr, size_t errstr_size)
{
    char *dir = resolve_path(enc->conf, enc->conf->schemas_dir);
    if (!dir) {
        snprintf(errstr, errstr_size, "out of memory");
        return false;
    }
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(errstr, errstr_size, "relay.schemas_dir: cannot open %s: %s", dir,
                 strerror(errno));
        free(dir);
        return false;
    }
    bool ok = true;
    struct dirent *de;
    while (ok && (de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n <= 5 || strcmp(de->d_name + n - 5, ".avsc") != 0 || de->d_name[0] == '.')
            continue;
        type_entry_t *t = realloc(enc->types, (enc->n_types + 1) * sizeof(*t));
        if (!t) {
            snprintf(errstr, errstr_size, "out of memory");
            ok = false;
            break;
        }
        enc->types = t;
        t = &enc->types[enc->n_types++];
        memset(t, 0, sizeof(*t));
        t->type = outboxd_strndup(de->d_name, n - 5);
        size_t pl = strlen(dir) + n + 2;
        char *path = malloc(pl);
        char err[400];
        size_t len = 0;
        char *text = NULL;
        if (path) {
            snprintf(path, pl, "%s/%s", dir, de->d_name);
            text = read_small_file(path, 1 << 20, &len, err, sizeof(err));
        }
        if (!t->type || !path || !text) {
            snprintf(errstr, errstr_size, "relay.schemas_dir: %s",
                     text || !path ? "out of memory" : err);
            ok = false;
        } else if (!schema_init(&t->payload, text, err, sizeof(err))) {
            snprintf(errstr, errstr_size, "%s: %s", path, err);
            ok = false;
        } else if (!outboxd_avsc_is_record(t->payload.avsc)) {
            snprintf(errstr, errstr_size,
                     "%s: the schema of a typed payload must be a record (event type %s)", path,
                     t->type);
            ok = false;
        } else {
            char *env = typed_envelope_text(t->payload.avsc, err, sizeof(err));
            if (!env || !schema_init(&t->envelope, env, err, sizeof(err))) {
                snprintf(errstr, errstr_size, "%s: as an envelope payload: %s", path, err);
                ok = false;
            }
            free(env);
        }
        free(text);
        free(path);
    }
    closedir(d);
    free(dir);
    if (ok && enc->n_types > 1)
        qsort(enc->types, enc->n_types, sizeof(*enc->types), cmp_type);
    return ok;
}

/*
 * A Debezium drop-in table with an AvroConverter writes through the
 * registry: without schema_registry.url that is a configuration error,
 * reported here so that outboxd check names it before anything runs.
 */
static bool check_debezium_avro(const outboxd_config_t *conf, char *errstr, size_t errstr_size)
{
    for (size_t i = 0; i < conf->n_sources; i++) {
        const outboxd_source_conf_t *src = &conf->sources[i];
        for (size_t j = 0; j < src->n_tables; j++) {
            const outboxd_table_conf_t *t = &src->tables[j];
            for (size_t k = 0; k < t->n_debezium; k++) {
                const outboxd_kv_t *kv = &t->debezium[k];
                size_t n = kv->value ? strlen(kv->value) : 0;
                if ((strcmp(kv->key, "key.converter") == 0 ||
                     strcmp(kv->key, "value.converter") == 0) &&
                    n >= 13 && strcmp(kv->value + n - 13, "AvroConverter") == 0) {
                    snprintf(errstr, errstr_size,
                             "%s:%d: sources[%zu].tables[%zu].debezium: %s: an AvroConverter "
                             "needs schema_registry.url (the registry the converter's "
                             "apicurio.registry.url or schema.registry.url points to)",
                             conf->path ? conf->path : "<config>", kv->line, i, j, kv->key);
                    return false;
                }
            }
        }
    }
    return true;
}

outboxd_encoder_t *outboxd_encoder_new(const outboxd_config_t *conf, char *errstr,
                                       size_t errstr_size)
{
    outboxd_encoder_t *enc = calloc(1, sizeof(*enc));
    char *password = NULL, *token = NULL;
    if (!enc) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    enc->conf = conf;
    char err[400];
    if (!check_envelope_order(errstr, errstr_size))
        goto fail;
    if (!schema_init(&enc->envelope, outboxd_envelope_schema_json, err, sizeof(err))) {
        snprintf(errstr, errstr_size, "envelope schema: %s", err);
        goto fail;
    }
    if (!schema_init(&enc->string, "{\"type\": \"string\"}", errstr, errstr_size))
        goto fail;
    if (!schema_init(&enc->dead_letter, outboxd_dead_letter_schema_json, err, sizeof(err))) {
        snprintf(errstr, errstr_size, "dead-letter schema: %s", err);
        goto fail;
    }
    if (conf->schemas_dir && !load_types(enc, errstr, errstr_size))
        goto fail;
    if (!conf->schema_registry_url && !check_debezium_avro(conf, errstr, errstr_size))
        goto fail;
    if (conf->schema_store_dir && !conf->schema_registry_url) {
        enc->store_dir = resolve_path(conf, conf->schema_store_dir);
        if (!enc->store_dir) {
            snprintf(errstr, errstr_size, "out of memory");
            goto fail;
        }
        if (mkdir(enc->store_dir, 0755) != 0 && errno != EEXIST) {
            snprintf(errstr, errstr_size, "relay.schema_store_dir: cannot create %s: %s",
                     enc->store_dir, strerror(errno));
            goto fail;
        }
        if (access(enc->store_dir, W_OK) != 0) {
            snprintf(errstr, errstr_size, "relay.schema_store_dir: cannot write to %s: %s",
                     enc->store_dir, strerror(errno));
            goto fail;
        }
    }
    if (conf->schema_registry_url) {
        if (conf->registry_user && !conf->registry_password_file) {
            snprintf(errstr, errstr_size,
                     "schema_registry.basic_auth_user needs schema_registry.password_file");
            goto fail;
        }
        if (conf->registry_password_file && !conf->registry_user) {
            snprintf(errstr, errstr_size,
                     "schema_registry.password_file needs schema_registry.basic_auth_user");
            goto fail;
        }
        if (conf->registry_user && conf->registry_token_file) {
            snprintf(errstr, errstr_size,
                     "schema_registry: use basic_auth_user or bearer_token_file, not both");
            goto fail;
        }
        if (conf->registry_password_file &&
            !(password = read_secret(conf, conf->registry_password_file, "password_file", errstr,
                                     errstr_size)))
            goto fail;
        if (conf->registry_token_file &&
            !(token = read_secret(conf, conf->registry_token_file, "bearer_token_file", errstr,
                                  errstr_size)))
            goto fail;
        char *ca = conf->registry_ca_file ? resolve_path(conf, conf->registry_ca_file) : NULL;
        if (ca && access(ca, R_OK) != 0) {
            snprintf(errstr, errstr_size, "schema_registry.ca_file: cannot read %s: %s", ca,
                     strerror(errno));
            free(ca);
            goto fail;
        }
        outboxd_registry_conf_t rc = {
            .url = conf->schema_registry_url,
            .username = conf->registry_user,
            .password = password,
            .bearer_token = token,
            .ca_file = ca,
            .timeout_ms = conf->registry_timeout_ms,
            .cache_ttl_ms = conf->registry_cache_ttl_ms,
            .auto_register = conf->registry_auto_register,
        };
        enc->reg = outboxd_registry_new(&rc, errstr, errstr_size);
        free(ca);
        if (!enc->reg)
            goto fail;
    }
    if (password)
        explicit_bzero(password, strlen(password));
    if (token)
        explicit_bzero(token, strlen(token));
    free(password);
    free(token);
    return enc;
fail:
    if (password)
        explicit_bzero(password, strlen(password));
    if (token)
        explicit_bzero(token, strlen(token));
    free(password);
    free(token);
    outboxd_encoder_destroy(enc);
    return NULL;
}

void outboxd_encoder_destroy(outboxd_encoder_t *enc)
{
    if (!enc)
        return;
    for (size_t i = 0; i < enc->n_types; i++) {
        free(enc->types[i].type);
        outboxd_avsc_destroy(enc->types[i].payload.avsc);
        outboxd_avsc_destroy(enc->types[i].envelope.avsc);
    }
    free(enc->types);
    outboxd_avsc_destroy(enc->envelope.avsc);
    outboxd_avsc_destroy(enc->string.avsc);
    outboxd_avsc_destroy(enc->dead_letter.avsc);
    outboxd_registry_destroy(enc->reg);
    free(enc->store_dir);
    outboxd_buf_free(&enc->subject);
    free(enc);
}

int outboxd_encoder_check(outboxd_encoder_t *enc, char *msg, size_t msg_size)
{
    char err[600];
    if (enc->reg && outboxd_registry_ping(enc->reg, err, sizeof(err)) < 0) {
        snprintf(msg, msg_size, "schema registry: %s", err);
        return -1;
    }
    snprintf(msg, msg_size, "schemas: OK (%zu typed payload schema(s)%s%s%s)", enc->n_types,
             enc->reg ? ", registry " : "", enc->reg ? enc->conf->schema_registry_url : "",
             enc->reg ? " answers" : "");
    return 0;
}

size_t outboxd_encoder_n_types(const outboxd_encoder_t *enc)
{
    return enc->n_types;
}

static type_entry_t *find_type(const outboxd_encoder_t *enc, const char *type, size_t len)
{
    size_t lo = 0, hi = enc->n_types;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *t = enc->types[mid].type;
        int c = strncmp(t, type, len);
        if (c == 0 && t[len] != '\0')
            c = 1;
        if (c == 0)
            return &enc->types[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const char *outboxd_encoder_type_schema(const outboxd_encoder_t *enc, const char *type,
                                        outboxd_value_format_t format)
{
    type_entry_t *t = find_type(enc, type, strlen(type));
    if (!t)
        return NULL;
    return outboxd_avsc_text(format == OUTBOXD_VALUE_PAYLOAD ? t->payload.avsc : t->envelope.avsc);
}

/* ---- framing ------------------------------------------------------------ */

/* Writes s's text as <store_dir>/<fingerprint>.avsc once (atomically). */
static int store_schema(outboxd_encoder_t *enc, schema_t *s, char *errstr, size_t errstr_size)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof(path), "%s/%016" PRIx64 ".avsc", enc->store_dir,
             outboxd_avsc_fingerprint(s->avsc));
    if (access(path, F_OK) == 0) {
        s->stored = true;
        return 0;
    }
    /* sources are threads of one process: the temporary name is per thread */
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld.%lx", path, (long)getpid(),
             (unsigned long)pthread_self());
    FILE *f = fopen(tmp, "wb");
    const char *text = outboxd_avsc_text(s->avsc);
    bool ok = f && fwrite(text, 1, strlen(text), f) == strlen(text);
    if (f && fclose(f) != 0)
        ok = false;
    if (ok && rename(tmp, path) != 0)
        ok = false;
    if (!ok) {
        snprintf(errstr, errstr_size, "relay.schema_store_dir: cannot write %s: %s", path,
                 strerror(errno));
        unlink(tmp);
        return -1;
    }
    s->stored = true;
    return 0;
}

/*
 * Resets out and writes the header for schema s on topic.
 * 0; 1 with reason (rejected for good); -1 with errstr (try again).
 */
static int frame(outboxd_encoder_t *enc, schema_t *s, const char *topic, outboxd_buf_t *out,
                 char *reason, size_t reason_size, char *errstr, size_t errstr_size)
{
    outboxd_buf_reset(out);
    if (!enc->reg) {
        if (enc->store_dir && !s->stored && store_schema(enc, s, errstr, errstr_size) < 0)
            return -1;
        if (!outboxd_buf_append(out, s->so_header, sizeof(s->so_header)))
            goto oom;
        return 0;
    }
    outboxd_buf_reset(&enc->subject);
    /* A primitive schema's name is its type, as Confluent's serializers
     * name it for the record strategies ("<topic>-string"). */
    const char *name = outboxd_avsc_fullname(s->avsc);
    if (!name)
        name = "string";
    if (!outboxd_registry_subject((outboxd_subject_strategy_t)enc->conf->subject_name_strategy,
                                  topic, name, &enc->subject))
        goto oom;
    int32_t id = 0;
    char err[700];
    outboxd_registry_status_t st = outboxd_registry_id(
        enc->reg, enc->subject.data, outboxd_avsc_text(s->avsc), &id, err, sizeof(err));
    if (st == OUTBOXD_REGISTRY_RETRY) {
        snprintf(errstr, errstr_size, "%s", err);
        return -1;
    }
    if (st == OUTBOXD_REGISTRY_REJECTED) {
        /* The registry's text is cut so the schema's name always fits. */
        snprintf(reason, reason_size, "schema %s (fingerprint %016" PRIx64 "): %.480s", name,
                 outboxd_avsc_fingerprint(s->avsc), err);
        if (!s->rejected_logged) {
            LOG_ERROR("registry", "%s; rows with this schema go to the dead-letter topic", reason);
            s->rejected_logged = true;
        }
        return 1;
    }
    s->rejected_logged = false;
    unsigned char h[OUTBOXD_WIRE_HEADER_LEN];
    outboxd_registry_wire_header(id, h);
    if (!outboxd_buf_append(out, h, sizeof(h)))
        goto oom;
    return 0;
oom:
    snprintf(errstr, errstr_size, "out of memory encoding a value");
    return -1;
}

int outboxd_encoder_registered(outboxd_encoder_t *enc, const char *subject, const char *schema_text,
                               outboxd_buf_t *out, char *reason, size_t reason_size, char *errstr,
                               size_t errstr_size)
{
    outboxd_buf_reset(out);
    if (!enc->reg) {
        snprintf(reason, reason_size, "an AvroConverter needs schema_registry.url");
        return 1;
    }
    int32_t id = 0;
    char err[700];
    outboxd_registry_status_t st =
        outboxd_registry_id(enc->reg, subject, schema_text, &id, err, sizeof(err));
    if (st == OUTBOXD_REGISTRY_RETRY) {
        snprintf(errstr, errstr_size, "%s", err);
        return -1;
    }
    if (st == OUTBOXD_REGISTRY_REJECTED) {
        /* Debezium's task fails here; outboxd dead-letters the row and goes
         * on (the registry's rejection is cached, so this is not a request
         * per row). */
        snprintf(reason, reason_size, "%.480s", err);
        return 1;
    }
    unsigned char h[OUTBOXD_WIRE_HEADER_LEN];
    outboxd_registry_wire_header(id, h);
    if (!outboxd_buf_append(out, h, sizeof(h))) {
        snprintf(errstr, errstr_size, "out of memory encoding a value");
        return -1;
    }
    return 0;
}

/* ---- values ------------------------------------------------------------- */

static bool put_str(outboxd_buf_t *out, outboxd_str_t s)
{
    return outboxd_avro_write_string(out, s.ptr ? s.ptr : "", s.ptr ? s.len : 0);
}

static bool put_cstr(outboxd_buf_t *out, const char *s)
{
    return outboxd_avro_write_string(out, s ? s : "", s ? strlen(s) : 0);
}

/* io.outboxd.Source */
static bool put_source(outboxd_buf_t *out, const char *name, const char *db, const char *table,
                       outboxd_lsn_t lsn, outboxd_lsn_t commit_lsn, uint32_t xid,
                       int64_t commit_time)
{
    /* LSNs stay below 2^63 in practice; Avro has no unsigned long. */
    return put_cstr(out, name) && put_cstr(out, db) && put_cstr(out, table) &&
           outboxd_avro_write_long(out, (int64_t)lsn) &&
           outboxd_avro_write_long(out, (int64_t)commit_lsn) &&
           outboxd_avro_write_long(out, (int64_t)xid) && outboxd_avro_write_long(out, commit_time);
}

/*
 * PostgreSQL's jsonb writes a number like 1e308 as a 309-digit integer,
 * which jansson refuses ("too big integer"). Copies s with ".0" after every
 * integer outside the int64 range, so such numbers are read as doubles and
 * every other integer stays exact. NULL on OOM.
 */
static char *bigints_as_reals(const char *s, size_t len, size_t *out_len)
{
    outboxd_buf_t b = {0};
    bool in_str = false, ok = true;
    for (size_t i = 0; i < len && ok;) {
        char ch = s[i];
        if (in_str) {
            size_t n = (ch == '\\' && i + 1 < len) ? 2 : 1;
            if (ch == '"')
                in_str = false;
            ok = outboxd_buf_append(&b, s + i, n);
            i += n;
            continue;
        }
        if (ch == '"') {
            in_str = true;
        } else if (ch == '-' || (ch >= '0' && ch <= '9')) {
            /* a whole number token: -?digits(.digits)?([eE][+-]?digits)? */
            size_t j = i + (ch == '-'), d0 = j;
            while (j < len && s[j] >= '0' && s[j] <= '9')
                j++;
            size_t nd = j - d0;
            bool integer = true;
            if (j < len && s[j] == '.') {
                integer = false;
                for (j++; j < len && s[j] >= '0' && s[j] <= '9'; j++)
                    ;
            }
            if (j < len && (s[j] == 'e' || s[j] == 'E')) {
                integer = false;
                j++;
                if (j < len && (s[j] == '+' || s[j] == '-'))
                    j++;
                while (j < len && s[j] >= '0' && s[j] <= '9')
                    j++;
            }
            const char *lim = ch == '-' ? "9223372036854775808" : "9223372036854775807";
            bool big = integer && (nd > 19 || (nd == 19 && memcmp(s + d0, lim, 19) > 0));
            ok = outboxd_buf_append(&b, s + i, j - i) && (!big || outboxd_buf_append(&b, ".0", 2));
            i = j;
            continue;
        }
        ok = outboxd_buf_append(&b, s + i, 1);
        i++;
    }
    if (!ok) {
        outboxd_buf_free(&b);
        return NULL;
    }
    *out_len = b.len;
    return b.data ? b.data : strdup("");
}

static int typed_payload(type_entry_t *t, const outboxd_envelope_t *ev, outboxd_buf_t *out,
                         char *reason, size_t reason_size, char *errstr, size_t errstr_size)
{
    json_error_t jerr;
    json_t *v =
        json_loadb(ev->payload.ptr ? ev->payload.ptr : "", ev->payload.len, JSON_DECODE_ANY, &jerr);
    if (!v && strstr(jerr.text, "too big")) { /* "too big [negative] integer" */
        size_t n = 0;
        char *fixed = bigints_as_reals(ev->payload.ptr, ev->payload.len, &n);
        if (!fixed) {
            snprintf(errstr, errstr_size, "out of memory reading a payload");
            return -1;
        }
        v = json_loadb(fixed, n, JSON_DECODE_ANY, &jerr);
        free(fixed);
    }
    if (!v) {
        snprintf(reason, reason_size, "payload: not valid JSON for type %s: %s", t->type,
                 jerr.text);
        return 1;
    }
    int rc = outboxd_avsc_encode(t->payload.avsc, v, "payload", out, reason, reason_size);
    json_decref(v);
    if (rc < 0)
        snprintf(errstr, errstr_size, "%s", reason);
    return rc;
}

int outboxd_encoder_event(outboxd_encoder_t *enc, const outboxd_envelope_t *ev,
                          outboxd_value_format_t format, const char *topic, outboxd_buf_t *out,
                          char *reason, size_t reason_size, char *errstr, size_t errstr_size)
{
    type_entry_t *t = enc->n_types ? find_type(enc, ev->type.ptr, ev->type.len) : NULL;
    if (t && ev->payload_null) {
        snprintf(reason, reason_size, "payload: NULL, but type %s has a typed payload schema",
                 t->type);
        return 1;
    }
    schema_t *s = format == OUTBOXD_VALUE_PAYLOAD ? (t ? &t->payload : &enc->string)
                                                  : (t ? &t->envelope : &enc->envelope);
    int rc = frame(enc, s, topic, out, reason, reason_size, errstr, errstr_size);
    if (rc)
        return rc;
    bool ok = true;
    if (format == OUTBOXD_VALUE_PAYLOAD) {
        if (t)
            return typed_payload(t, ev, out, reason, reason_size, errstr, errstr_size);
        ok = put_str(out, ev->payload);
    } else {
        ok = put_str(out, ev->id) && put_str(out, ev->type) && put_str(out, ev->aggregate_type) &&
             put_str(out, ev->aggregate_id);
        if (ok && t) {
            rc = typed_payload(t, ev, out, reason, reason_size, errstr, errstr_size);
            if (rc)
                return rc;
        } else if (ok) {
            ok = ev->payload_null ? outboxd_avro_write_long(out, 0)
                                  : outboxd_avro_write_long(out, 1) && put_str(out, ev->payload);
        }
        ok = ok && outboxd_avro_write_long(out, ev->occurred_at_us) &&
             put_source(out, ev->source_name.ptr, ev->database.ptr, ev->table.ptr, ev->lsn,
                        ev->commit_lsn, ev->xid, ev->commit_time_us);
    }
    if (!ok) {
        snprintf(errstr, errstr_size, "out of memory encoding an event");
        return -1;
    }
    return 0;
}

int outboxd_encoder_dead_letter(outboxd_encoder_t *enc, const outboxd_dead_letter_t *dl,
                                outboxd_buf_t *out, char *errstr, size_t errstr_size)
{
    char reason[700];
    int rc = frame(enc, &enc->dead_letter, enc->conf->dead_letter_topic, out, reason,
                   sizeof(reason), errstr, errstr_size);
    if (rc > 0) {
        /* Nowhere else to put it: stop the stream until this is fixed. */
        snprintf(errstr, errstr_size, "the dead-letter schema was rejected: %s", reason);
        return -1;
    }
    if (rc < 0)
        return -1;
    bool ok = put_cstr(out, dl->reason);
    ok = ok && (dl->event_id.ptr ? outboxd_avro_write_long(out, 1) && put_str(out, dl->event_id)
                                 : outboxd_avro_write_long(out, 0));
    ok = ok && (dl->key.ptr ? outboxd_avro_write_long(out, 1) && put_str(out, dl->key)
                            : outboxd_avro_write_long(out, 0));
    ok = ok && put_str(out, dl->original) &&
         put_source(out, dl->source_name, dl->database, dl->table, dl->lsn, dl->commit_lsn, dl->xid,
                    dl->commit_time_us);
    if (!ok) {
        snprintf(errstr, errstr_size, "out of memory encoding a dead-letter record");
        return -1;
    }
    return 0;
}

struct outboxd_registry *outboxd_encoder_registry(outboxd_encoder_t *enc)
{
    return enc->reg;
}

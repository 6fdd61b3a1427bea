/*
 * Confluent schema registry client (see registry.h).
 *
 * The API (same on Confluent, Apicurio's /apis/ccompat/v7, Karapace, ...):
 *   POST {url}/subjects/{subject}/versions  {"schema": "<text>"}  -> {"id": N}
 *   POST {url}/subjects/{subject}           {"schema": "<text>"}  -> {"id": N, ...}
 *   errors: {"error_code": 40901, "message": "..."} with HTTP 409, 422, ...
 */
#include "outboxd/common/registry.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    char *subject;
    char *schema;
    int32_t id;
    bool rejected;    /* a cached rejection; reason in why */
    char *why;        /* for rejected entries */
    int64_t valid_ms; /* when the entry was last confirmed */
    struct entry *next;
} entry_t;

#define N_BUCKETS 64

struct outboxd_registry {
    char *url, *username, *password, *ca_file;
    char *auth_header;
    long timeout_ms, cache_ttl_ms;
    bool auto_register;
    CURL *curl;
    struct curl_slist *headers;
    entry_t *buckets[N_BUCKETS];
    outboxd_buf_t resp;
    uint64_t requests;
};

static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *errstr, size_t errstr_size, const char *fmt, ...)
{
    if (!errstr || !errstr_size)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errstr, errstr_size, fmt, ap);
    va_end(ap);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;
static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

outboxd_registry_t *outboxd_registry_new(const outboxd_registry_conf_t *conf, char *errstr,
                                         size_t errstr_size)
{
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) {
        set_err(errstr, errstr_size, "libcurl initialisation failed: %s",
                curl_easy_strerror(curl_init_rc));
        return NULL;
    }
    if (!conf->url || !*conf->url) {
        set_err(errstr, errstr_size, "schema registry: no url");
        return NULL;
    }
    outboxd_registry_t *reg = calloc(1, sizeof(*reg));
    if (!reg) {
        set_err(errstr, errstr_size, "out of memory");
        return NULL;
    }
    bool oom = false;
    reg->url = dup_or_null(conf->url, &oom);
    reg->username = dup_or_null(conf->username, &oom);
    reg->password = dup_or_null(conf->password, &oom);
    reg->ca_file = dup_or_null(conf->ca_file, &oom);
    if (reg->url) {
        size_t n = strlen(reg->url);
        while (n > 0 && reg->url[n - 1] == '/')
            reg->url[--n] = '\0';
    }
    reg->timeout_ms = conf->timeout_ms > 0 ? conf->timeout_ms : 5000;
    reg->cache_ttl_ms = conf->cache_ttl_ms;
    reg->auto_register = conf->auto_register;
    reg->curl = curl_easy_init();
    reg->headers = curl_slist_append(NULL, "Content-Type: application/vnd.schemaregistry.v1+json");
    if (reg->headers)
        reg->headers = curl_slist_append(
            reg->headers, "Accept: application/vnd.schemaregistry.v1+json, application/json");
    if (conf->bearer_token && reg->headers) {
        size_t n = strlen(conf->bearer_token) + 32;
        reg->auth_header = malloc(n);
        if (reg->auth_header) {
            snprintf(reg->auth_header, n, "Authorization: Bearer %s", conf->bearer_token);
            reg->headers = curl_slist_append(reg->headers, reg->auth_header);
        } else {
            oom = true;
        }
    }
    if (oom || !reg->curl || !reg->headers) {
        set_err(errstr, errstr_size, "schema registry client: out of memory");
        outboxd_registry_destroy(reg);
        return NULL;
    }
    return reg;
}

static void free_entry(entry_t *e)
{
    free(e->subject);
    free(e->schema);
    free(e->why);
    free(e);
}

void outboxd_registry_forget(outboxd_registry_t *reg)
{
    for (size_t b = 0; b < N_BUCKETS; b++) {
        entry_t *e = reg->buckets[b];
        while (e) {
            entry_t *next = e->next;
            free_entry(e);
            e = next;
        }
        reg->buckets[b] = NULL;
    }
}

void outboxd_registry_destroy(outboxd_registry_t *reg)
{
    if (!reg)
        return;
    outboxd_registry_forget(reg);
    if (reg->curl)
        curl_easy_cleanup(reg->curl);
    curl_slist_free_all(reg->headers);
    free(reg->url);
    free(reg->username);
    if (reg->password) {
        /* do not leave the secret in freed memory */
        memset(reg->password, 0, strlen(reg->password));
        free(reg->password);
    }
    free(reg->ca_file);
    free(reg->auth_header);
    outboxd_buf_free(&reg->resp);
    free(reg);
}

uint64_t outboxd_registry_requests(const outboxd_registry_t *reg)
{
    return reg->requests;
}

static size_t hash(const char *subject, const char *schema)
{
    /* FNV-1a over both strings */
    uint64_t h = 1469598103934665603ULL;
    for (const char *p = subject; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    h = (h ^ 0xff) * 1099511628211ULL;
    for (const char *p = schema; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return (size_t)(h % N_BUCKETS);
}

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    outboxd_buf_t *b = userdata;
    size_t n = size * nmemb;
    if (b->len + n > (1 << 20)) /* an answer is small; do not buffer a flood */
        return 0;
    return outboxd_buf_append(b, ptr, n) ? n : 0;
}

/* The registry's own words: "message" of its error body, else the body. */
/* The answer's message, and its Confluent error_code (0 when it has none:
 * not a registry's answer, e.g. a proxy's). */
static long error_text(const outboxd_buf_t *resp, char *out, size_t n)
{
    json_t *j = resp->data ? json_loadb(resp->data, resp->len, 0, NULL) : NULL;
    const char *msg = j ? json_string_value(json_object_get(j, "message")) : NULL;
    json_t *code = j ? json_object_get(j, "error_code") : NULL;
    long ec = json_is_integer(code) ? (long)json_integer_value(code) : 0;
    if (msg)
        snprintf(out, n, "%s", msg);
    else
        snprintf(out, n, "%.300s", resp->data ? resp->data : "(empty answer)");
    json_decref(j);
    return ec;
}

static outboxd_registry_status_t request(outboxd_registry_t *reg, const char *subject,
                                         const char *schema_text, int32_t *id, char *errstr,
                                         size_t errstr_size)
{
    char *esc = curl_easy_escape(reg->curl, subject, 0);
    json_t *body = json_pack("{s:s}", "schema", schema_text);
    char *body_text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    outboxd_buf_t url = {0};
    bool ok = esc && body_text &&
              outboxd_buf_printf(&url, "%s/subjects/%s%s", reg->url, esc,
                                 reg->auto_register ? "/versions" : "");
    curl_free(esc);
    if (!ok) {
        free(body_text);
        outboxd_buf_free(&url);
        set_err(errstr, errstr_size, "schema registry: out of memory");
        return OUTBOXD_REGISTRY_RETRY;
    }
    CURL *c = reg->curl;
    curl_easy_reset(c);
    outboxd_buf_reset(&reg->resp);
    curl_easy_setopt(c, CURLOPT_URL, url.data);
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body_text);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body_text));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, reg->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &reg->resp);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, reg->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, reg->timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* threads: no SIGALRM for timeouts */
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (reg->username) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERNAME, reg->username);
        curl_easy_setopt(c, CURLOPT_PASSWORD, reg->password ? reg->password : "");
    }
    if (reg->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, reg->ca_file);
    reg->requests++;
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    free(body_text);
    if (rc != CURLE_OK) {
        set_err(errstr, errstr_size, "schema registry %s unreachable (subject %s): %s", reg->url,
                subject, curl_easy_strerror(rc));
        outboxd_buf_free(&url);
        return OUTBOXD_REGISTRY_RETRY;
    }
    char msg[400];
    long code = error_text(&reg->resp, msg, sizeof(msg));
    outboxd_registry_status_t st = OUTBOXD_REGISTRY_RETRY;
    if (status == 200) {
        json_t *j = json_loadb(reg->resp.data ? reg->resp.data : "", reg->resp.len, 0, NULL);
        json_t *jid = json_object_get(j, "id");
        if (json_is_integer(jid) && json_integer_value(jid) >= 0 &&
            json_integer_value(jid) <= INT32_MAX) {
            *id = (int32_t)json_integer_value(jid);
            st = OUTBOXD_REGISTRY_OK;
        } else {
            set_err(errstr, errstr_size,
                    "schema registry %s: answer without an id for subject %s: %s", url.data,
                    subject, msg);
        }
        json_decref(j);
    } else if (status == 409 && strstr(msg, "already exists")) {
        /* Not a verdict on the schema: Apicurio's Confluent API answers
         * this when two registrations of a new subject race (several
         * sources or topics registering at once). Registering again finds
         * the subject and returns its id, so this is worth a retry, never a
         * dead letter. */
        set_err(errstr, errstr_size,
                "schema registry %s: subject %s was being created concurrently (%s); retrying",
                url.data, subject, msg);
        st = OUTBOXD_REGISTRY_RETRY;
    } else if (status == 409) {
        set_err(errstr, errstr_size,
                "schema registry rejected the schema for subject %s as incompatible with the "
                "registered versions (make the change compatible, or change the subject's "
                "compatibility level): %s",
                subject, msg);
        st = OUTBOXD_REGISTRY_REJECTED;
    } else if (status == 422 && code == 42205) {
        /* A subject or the registry in READONLY or IMPORT mode (a
         * migration, a DR cut-over): it passes, so wait, never dead-letter. */
        set_err(errstr, errstr_size,
                "schema registry %s does not take registrations now (%s; error_code 42205: "
                "READONLY or IMPORT mode) for subject %s; retrying until its mode is READWRITE",
                reg->url, msg, subject);
        st = OUTBOXD_REGISTRY_RETRY;
    } else if (status == 422) {
        set_err(errstr, errstr_size,
                "schema registry rejected the schema for subject %s as "
                "invalid: %s",
                subject, msg);
        st = OUTBOXD_REGISTRY_REJECTED;
    } else if (status == 404 && !reg->auto_register && code != 40401 && code != 40403) {
        /* Not the registry's "not found" (error_code 40401 subject, 40403
         * schema): a proxy's, or a url missing its API path. */
        set_err(errstr, errstr_size,
                "schema registry %s answered HTTP 404 for subject %s without a registry error "
                "code (%s): check schema_registry.url (its path, e.g. /apis/ccompat/v7 for "
                "Apicurio); retrying",
                reg->url, subject, msg);
        st = OUTBOXD_REGISTRY_RETRY;
    } else if (status == 404 && !reg->auto_register) {
        set_err(errstr, errstr_size,
                "schema is not registered under subject %s (schema_registry.auto_register is "
                "off: register it first): %s",
                subject, msg);
        st = OUTBOXD_REGISTRY_REJECTED;
    } else if (status == 401 || status == 403) {
        set_err(errstr, errstr_size,
                "schema registry %s refused access (HTTP %ld) for subject %s: %s (check "
                "schema_registry.basic_auth_user / password_file / bearer_token_file)",
                reg->url, status, subject, msg);
    } else {
        set_err(errstr, errstr_size, "schema registry %s answered HTTP %ld for subject %s: %s",
                url.data, status, subject, msg);
    }
    outboxd_buf_free(&url);
    return st;
}

outboxd_registry_status_t outboxd_registry_id(outboxd_registry_t *reg, const char *subject,
                                              const char *schema_text, int32_t *id, char *errstr,
                                              size_t errstr_size)
{
    size_t b = hash(subject, schema_text);
    entry_t *e = reg->buckets[b];
    while (e && (strcmp(e->subject, subject) != 0 || strcmp(e->schema, schema_text) != 0))
        e = e->next;
    int64_t now = outboxd_now_ms();
    if (e && (reg->cache_ttl_ms <= 0 || now - e->valid_ms < reg->cache_ttl_ms)) {
        if (e->rejected) {
            set_err(errstr, errstr_size, "%s", e->why);
            return OUTBOXD_REGISTRY_REJECTED;
        }
        *id = e->id;
        return OUTBOXD_REGISTRY_OK;
    }
    int32_t got = -1;
    outboxd_registry_status_t st = request(reg, subject, schema_text, &got, errstr, errstr_size);
    if (st == OUTBOXD_REGISTRY_RETRY) {
        /* Whatever the registry knew may be gone when it comes back (an
         * in-memory registry restarted hands out new ids): ask again for
         * every schema then. */
        outboxd_registry_forget(reg);
        return st;
    }
    if (!e) {
        e = calloc(1, sizeof(*e));
        if (!e || !(e->subject = strdup(subject)) || !(e->schema = strdup(schema_text))) {
            if (e)
                free_entry(e);
            set_err(errstr, errstr_size, "schema registry: out of memory");
            return OUTBOXD_REGISTRY_RETRY;
        }
        e->next = reg->buckets[b];
        reg->buckets[b] = e;
    }
    e->valid_ms = now;
    e->rejected = st == OUTBOXD_REGISTRY_REJECTED;
    free(e->why);
    e->why = e->rejected ? strdup(errstr ? errstr : "rejected") : NULL;
    if (e->rejected && !e->why) {
        set_err(errstr, errstr_size, "schema registry: out of memory");
        return OUTBOXD_REGISTRY_RETRY;
    }
    if (st == OUTBOXD_REGISTRY_OK)
        e->id = got, *id = got;
    return st;
}

int outboxd_registry_ping(outboxd_registry_t *reg, char *errstr, size_t errstr_size)
{
    outboxd_buf_t url = {0};
    if (!outboxd_buf_printf(&url, "%s/subjects", reg->url)) {
        set_err(errstr, errstr_size, "out of memory");
        return -1;
    }
    CURL *c = reg->curl;
    curl_easy_reset(c);
    outboxd_buf_reset(&reg->resp);
    curl_easy_setopt(c, CURLOPT_URL, url.data);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, reg->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &reg->resp);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, reg->timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (reg->username) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERNAME, reg->username);
        curl_easy_setopt(c, CURLOPT_PASSWORD, reg->password ? reg->password : "");
    }
    if (reg->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, reg->ca_file);
    reg->requests++;
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    int ret = 0;
    if (rc != CURLE_OK) {
        set_err(errstr, errstr_size, "cannot reach %s: %s", url.data, curl_easy_strerror(rc));
        ret = -1;
    } else if (status != 200) {
        char msg[300];
        error_text(&reg->resp, msg, sizeof(msg));
        set_err(errstr, errstr_size, "%s answered HTTP %ld: %s%s", url.data, status, msg,
                status == 401 || status == 403 ? " (check the schema_registry credentials)" : "");
        ret = -1;
    }
    outboxd_buf_free(&url);
    return ret;
}

bool outboxd_registry_subject(outboxd_subject_strategy_t strategy, const char *topic,
                              const char *record_name, outboxd_buf_t *out)
{
    switch (strategy) {
    case OUTBOXD_SUBJECT_TOPIC_NAME:
        return outboxd_buf_printf(out, "%s-value", topic);
    case OUTBOXD_SUBJECT_RECORD_NAME:
        return record_name && outboxd_buf_append_str(out, record_name);
    case OUTBOXD_SUBJECT_TOPIC_RECORD_NAME:
        return record_name && outboxd_buf_printf(out, "%s-%s", topic, record_name);
    }
    return false;
}

bool outboxd_registry_parse_strategy(const char *s, outboxd_subject_strategy_t *out)
{
    static const struct {
        const char *name;
        outboxd_subject_strategy_t st;
    } names[] = {{"topic-name", OUTBOXD_SUBJECT_TOPIC_NAME},
                 {"TopicNameStrategy", OUTBOXD_SUBJECT_TOPIC_NAME},
                 {"record-name", OUTBOXD_SUBJECT_RECORD_NAME},
                 {"RecordNameStrategy", OUTBOXD_SUBJECT_RECORD_NAME},
                 {"topic-record-name", OUTBOXD_SUBJECT_TOPIC_RECORD_NAME},
                 {"TopicRecordNameStrategy", OUTBOXD_SUBJECT_TOPIC_RECORD_NAME}};
    const char *dot = strrchr(s, '.'); /* io.confluent...TopicNameStrategy */
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(s, names[i].name) == 0 || (dot && strcmp(dot + 1, names[i].name) == 0)) {
            *out = names[i].st;
            return true;
        }
    return false;
}

void outboxd_registry_wire_header(int32_t id, unsigned char out[OUTBOXD_WIRE_HEADER_LEN])
{
    uint32_t u = (uint32_t)id;
    out[0] = 0;
    out[1] = (unsigned char)(u >> 24);
    out[2] = (unsigned char)(u >> 16);
    out[3] = (unsigned char)(u >> 8);
    out[4] = (unsigned char)u;
}

bool outboxd_registry_wire_parse(const void *buf, size_t len, int32_t *id)
{
    const unsigned char *b = buf;
    if (len < OUTBOXD_WIRE_HEADER_LEN || b[0] != 0)
        return false;
    *id = (int32_t)((uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4]);
    return true;
}

outboxd_registry_status_t outboxd_registry_schema_by_id(outboxd_registry_t *reg, int32_t id,
                                                        char **schema_text, char *errstr,
                                                        size_t errstr_size)
{
    *schema_text = NULL;
    outboxd_buf_t url = {0};
    if (!outboxd_buf_printf(&url, "%s/schemas/ids/%" PRId32, reg->url, id)) {
        set_err(errstr, errstr_size, "schema registry: out of memory");
        return OUTBOXD_REGISTRY_RETRY;
    }
    CURL *c = reg->curl;
    curl_easy_reset(c);
    outboxd_buf_reset(&reg->resp);
    curl_easy_setopt(c, CURLOPT_URL, url.data);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, reg->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &reg->resp);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, reg->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, reg->timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (reg->username) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERNAME, reg->username);
        curl_easy_setopt(c, CURLOPT_PASSWORD, reg->password ? reg->password : "");
    }
    if (reg->ca_file)
        curl_easy_setopt(c, CURLOPT_CAINFO, reg->ca_file);
    reg->requests++;
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK) {
        set_err(errstr, errstr_size, "schema registry %s unreachable (schema id %" PRId32 "): %s",
                reg->url, id, curl_easy_strerror(rc));
        outboxd_buf_free(&url);
        return OUTBOXD_REGISTRY_RETRY;
    }
    char msg[400];
    long code = error_text(&reg->resp, msg, sizeof(msg));
    outboxd_registry_status_t st = OUTBOXD_REGISTRY_RETRY;
    if (status == 200) {
        json_t *j = json_loadb(reg->resp.data ? reg->resp.data : "", reg->resp.len, 0, NULL);
        const char *text = json_string_value(json_object_get(j, "schema"));
        const char *type = json_string_value(json_object_get(j, "schemaType"));
        if (type && strcmp(type, "AVRO") != 0) {
            set_err(errstr, errstr_size,
                    "schema registry %s: schema id %" PRId32 " is a %s schema, not Avro", reg->url,
                    id, type);
            st = OUTBOXD_REGISTRY_REJECTED;
        } else if (!text) {
            set_err(errstr, errstr_size, "schema registry %s: answer without a schema: %s",
                    url.data, msg);
        } else if (!(*schema_text = strdup(text))) {
            set_err(errstr, errstr_size, "schema registry: out of memory");
        } else {
            st = OUTBOXD_REGISTRY_OK;
        }
        json_decref(j);
    } else if (status == 404 && code != 40403) {
        set_err(errstr, errstr_size,
                "schema registry %s answered HTTP 404 for schema id %" PRId32
                " without a registry error code (%s): check schema_registry.url (its path, "
                "e.g. /apis/ccompat/v7 for Apicurio); retrying",
                reg->url, id, msg);
    } else if (status == 404) {
        set_err(errstr, errstr_size,
                "schema registry %s does not know schema id %" PRId32
                " (was the event written against another registry, or did an in-memory "
                "registry restart and forget it?): %s",
                reg->url, id, msg);
        st = OUTBOXD_REGISTRY_REJECTED;
    } else if (status == 401 || status == 403) {
        set_err(errstr, errstr_size,
                "schema registry %s refused access (HTTP %ld) for schema id %" PRId32
                ": %s (check the credentials)",
                reg->url, status, id, msg);
    } else {
        set_err(errstr, errstr_size,
                "schema registry %s answered HTTP %ld for schema id %" PRId32 ": %s", url.data,
                status, id, msg);
    }
    outboxd_buf_free(&url);
    return st;
}

/*
 * Debezium drop-in: EventRouter properties and the bytes its converters
 * write (see debezium.h).
 *
 * What Debezium 3.0's EventRouter does, and what is rendered here:
 * - topic: route.topic.regex (a Java regex, translated to POSIX ERE) matched
 *   against the whole route.by.field value; on a match the value of
 *   route.topic.replacement with $n / ${name} filled in, else the value;
 * - key: table.field.event.key, through the key converter;
 * - value: the payload column; with table.expand.json.payload parsed and
 *   printed again by Jackson; with envelope placements a struct
 *   {payload, alias...}; NULL payload: null (a tombstone when
 *   route.tombstone.on.empty.payload, which also takes an empty or blank
 *   text);
 * - headers: "id" and the header placements (SimpleHeaderConverter);
 * - timestamp: table.field.event.timestamp (a timestamp column) in ms;
 * - with an AvroConverter, key and value are the Connect schema (the
 *   column's, the Json string's, the one JsonSchemaData infers for an
 *   expanded payload, or the value struct with its schema version) as
 *   Confluent's AvroData translates it, and the Avro binary of the value;
 *   the caller registers the schema and frames the datum (encoder.h).
 */
#include "outboxd/relay/debezium.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "outboxd/common/avro_json.h"
#include "outboxd/relay/router.h"

/* PostgreSQL type oids whose rendering differs from their text. */
#define OID_BOOL   16
#define OID_BYTEA  17
#define OID_INT8   20
#define OID_INT2   21
#define OID_INT4   23
#define OID_OID    26
#define OID_FLOAT4 700
#define OID_FLOAT8 701

static char *dup_or(const char *v, const char *def)
{
    return strdup(v ? v : def);
}

static bool is_int_type(uint32_t oid)
{
    return oid == OID_INT2 || oid == OID_INT4 || oid == OID_INT8 || oid == OID_OID;
}

/* ---- Java regex -> POSIX ERE ---- */

/* Groups a topic regex match keeps (regexec's nmatch): the whole match,
 * the anchor group added around the regex, and the regex's own. */
#define MAX_GROUPS 32

/* The POSIX text of a Java class escape (\d \w \s, also \D \W \S outside
 * brackets), for use inside a bracket expression (in) or alone; NULL: not a
 * class escape. java.util.regex's classes are ASCII unless
 * UNICODE_CHARACTER_CLASS, which a topic regex cannot set. */
static const char *class_escape(char c, bool in)
{
    switch (c) {
    case 'd':
        return in ? "0-9" : "[0-9]";
    case 'w':
        return in ? "A-Za-z0-9_" : "[A-Za-z0-9_]";
    case 's':
        return in ? "[:space:]" : "[[:space:]]";
    case 'D':
        return in ? NULL : "[^0-9]";
    case 'W':
        return in ? NULL : "[^A-Za-z0-9_]";
    case 'S':
        return in ? NULL : "[^[:space:]]";
    default:
        return NULL;
    }
}

/* Translates the Java bracket expression at *pp ('[') into POSIX; *pp is
 * left on its ']'. In a POSIX bracket a backslash is a literal and ']' '-'
 * '^' '[' are special by position, so the elements keep their order and
 * Java's escaped literals become collating symbols ([.].] [.-.] [.^.]
 * [.[.]), which POSIX reads as those characters anywhere (also as range
 * ends, as Java reads them); a '-' right after a class escape is a literal
 * in Java ([\w-.]) and is written [.-.] too. */
static int translate_bracket(const char **pp, const char *java, outboxd_buf_t *ere, char *errstr,
                             size_t errstr_size)
{
    const char *p = *pp + 1;
    bool neg = *p == '^';
    if (neg)
        p++;
    outboxd_buf_t body = {0};
    bool after_class = false; /* the last element was \d \w or \s */
    if (*p == ']') {          /* a ']' first is a literal */
        outboxd_buf_append_str(&body, "[.].]");
        p++;
    }
    for (; *p && *p != ']'; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            const char *cls = class_escape(*p, true);
            after_class = cls != NULL;
            if (cls) {
                outboxd_buf_append_str(&body, cls);
            } else if (strchr("]-^[", *p)) {
                char sym[6] = {'[', '.', *p, '.', ']', '\0'};
                outboxd_buf_append_str(&body, sym);
            } else if (ispunct((unsigned char)*p)) {
                outboxd_buf_append(&body, p, 1); /* \. \\ \/ ...: the character */
            } else {
                snprintf(errstr, errstr_size,
                         "'%.200s' uses \\%c in a character class, which outboxd does not "
                         "translate to POSIX (inside [...] only \\d \\w \\s and escaped "
                         "punctuation)",
                         java, *p);
                outboxd_buf_free(&body);
                return -1;
            }
            continue;
        }
        if (*p == '[' || (*p == '&' && p[1] == '&')) {
            snprintf(errstr, errstr_size,
                     "'%.200s' nests or intersects character classes, which outboxd does not "
                     "translate to POSIX",
                     java);
            outboxd_buf_free(&body);
            return -1;
        }
        if (*p == '-' && after_class)
            outboxd_buf_append_str(&body, "[.-.]");
        else
            outboxd_buf_append(&body, p, 1);
        after_class = false;
    }
    if (*p != ']') {
        snprintf(errstr, errstr_size, "unbalanced [ in '%.200s'", java);
        outboxd_buf_free(&body);
        return -1;
    }
    if (!body.len) {
        /* Java refuses [] and [^] (an empty class) too. */
        snprintf(errstr, errstr_size, "empty character class in '%.200s'", java);
        outboxd_buf_free(&body);
        return -1;
    }
    outboxd_buf_append_str(ere, neg ? "[^" : "[");
    outboxd_buf_append(ere, body.data, body.len);
    outboxd_buf_append_str(ere, "]");
    outboxd_buf_free(&body);
    *pp = p;
    return 0;
}

/*
 * Translates the subset of java.util.regex that topic regexes use: named
 * groups (?<name>...), non-capturing groups (?:...) (made capturing, group
 * numbers mapped back), character classes, \d \w \s \D \W \S, escaped
 * punctuation. names[j] / map[j]: the POSIX group of Java group j
 * (1-based). Other (? constructs and escapes (\b, \t, \p{...}, back
 * references, ...) are refused: copied as they are, POSIX would read them
 * differently and route events to other topics without a word.
 */
static int translate_regex(const char *java, outboxd_buf_t *ere, char ***names, int **map,
                           size_t *n_java, char *errstr, size_t errstr_size)
{
    int posix = 1; /* group 1 is the whole-match anchor group added below */
    outboxd_buf_append_str(ere, "^(");
    for (const char *p = java; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            const char *cls = class_escape(*p, false);
            if (cls) {
                outboxd_buf_append_str(ere, cls);
            } else if (strchr(".[]{}()\\*+?^$|", *p)) {
                char e[2] = {'\\', *p};
                outboxd_buf_append(ere, e, 2); /* special in ERE too */
            } else if (ispunct((unsigned char)*p)) {
                /* A literal in ERE as it stands: GNU reads \< \> \` \'
                 * as anchors, so the backslash goes. */
                outboxd_buf_append(ere, p, 1);
            } else {
                snprintf(errstr, errstr_size,
                         "'%.200s' uses \\%c, which outboxd does not translate to POSIX (only "
                         "\\d \\w \\s \\D \\W \\S and escaped punctuation)",
                         java, *p);
                return -1;
            }
            continue;
        }
        if (*p == '[') {
            if (translate_bracket(&p, java, ere, errstr, errstr_size) < 0)
                return -1;
            continue;
        }
        if (*p == '(') {
            posix++;
            char *name = NULL;
            bool capturing = true;
            if (p[1] == '?') {
                if (p[2] == ':') {
                    p += 2;
                    capturing = false;
                } else if (p[2] == '<' && p[3] != '=' && p[3] != '!') {
                    const char *end = strchr(p + 3, '>');
                    if (!end) {
                        snprintf(errstr, errstr_size, "unterminated group name in '%.200s'", java);
                        return -1;
                    }
                    name = outboxd_strndup(p + 3, (size_t)(end - p - 3));
                    p = end;
                } else {
                    snprintf(errstr, errstr_size,
                             "'%.200s' uses a Java regex construct outboxd does not translate "
                             "(only groups, (?<name>...), (?:...), classes, \\d \\w \\s)",
                             java);
                    return -1;
                }
            }
            /* Only capturing Java groups get a Java number. */
            if (capturing) {
                char **nn = realloc(*names, (*n_java + 1) * sizeof(char *));
                int *mm = nn ? realloc(*map, (*n_java + 1) * sizeof(int)) : NULL;
                if (nn)
                    *names = nn;
                if (!nn || !mm) {
                    free(name);
                    snprintf(errstr, errstr_size, "out of memory");
                    return -1;
                }
                *map = mm;
                (*names)[*n_java] = name;
                (*map)[*n_java] = posix;
                (*n_java)++;
            }
            outboxd_buf_append_str(ere, "(");
            continue;
        }
        if (strchr("*+?}", *p) && p[1] && strchr("?+", p[1])) {
            snprintf(errstr, errstr_size,
                     "'%.200s' uses a lazy or possessive quantifier (%c%c), which POSIX regular "
                     "expressions do not have",
                     java, *p, p[1]);
            return -1;
        }
        outboxd_buf_append(ere, p, 1);
    }
    if (posix >= MAX_GROUPS) {
        /* The match keeps MAX_GROUPS groups: a replacement naming a later
         * one would come out empty. */
        snprintf(errstr, errstr_size, "'%.200s' has more than %d groups", java, MAX_GROUPS - 2);
        return -1;
    }
    outboxd_buf_append_str(ere, ")$");
    return 0;
}

/* Parses the replacement ($n, ${name}, \x) against the Java groups. */
static int parse_replacement(outboxd_dbz_t *d, const char *s, char **names, const int *map,
                             size_t n_java, char *errstr, size_t errstr_size)
{
    outboxd_buf_t lit = {0};
    int rc = 0;
#define FLUSH_LIT()                                                                                \
    do {                                                                                           \
        if (lit.len) {                                                                             \
            outboxd_dbz_repl_t *r = realloc(d->repl, (d->n_repl + 1) * sizeof(*r));                \
            if (!r)                                                                                \
                goto oom;                                                                          \
            d->repl = r;                                                                           \
            r[d->n_repl].text = outboxd_strndup(lit.data, lit.len);                                \
            r[d->n_repl].group = 0;                                                                \
            if (!r[d->n_repl++].text)                                                              \
                goto oom;                                                                          \
            outboxd_buf_reset(&lit);                                                               \
        }                                                                                          \
    } while (0)
    for (const char *p = s; *p; p++) {
        if (*p == '\\' && p[1]) {
            outboxd_buf_append(&lit, ++p, 1);
            continue;
        }
        if (*p != '$') {
            outboxd_buf_append(&lit, p, 1);
            continue;
        }
        int group = -1;
        if (p[1] == '{') {
            const char *end = strchr(p + 2, '}');
            if (!end) {
                snprintf(errstr, errstr_size, "unterminated ${ in '%.200s'", s);
                rc = -1;
                goto out;
            }
            for (size_t j = 0; j < n_java; j++)
                if (names[j] && strlen(names[j]) == (size_t)(end - p - 2) &&
                    strncmp(names[j], p + 2, (size_t)(end - p - 2)) == 0)
                    group = map[j];
            if (group < 0) {
                snprintf(errstr, errstr_size, "'%.200s' names a group '%.*s' that %s", s,
                         (int)(end - p - 2), p + 2, "route.topic.regex does not define");
                rc = -1;
                goto out;
            }
            p = end;
        } else if (isdigit((unsigned char)p[1])) {
            int j = p[1] - '0';
            p++;
            if (j == 0)
                group = 1;
            else if ((size_t)j <= n_java)
                group = map[j - 1];
            else {
                snprintf(errstr, errstr_size, "'%.200s' refers to group $%d that %s", s, j,
                         "route.topic.regex does not have");
                rc = -1;
                goto out;
            }
        } else {
            snprintf(errstr, errstr_size, "'%.200s': a lone $ (write \\$ for a dollar sign)", s);
            rc = -1;
            goto out;
        }
        FLUSH_LIT();
        outboxd_dbz_repl_t *r = realloc(d->repl, (d->n_repl + 1) * sizeof(*r));
        if (!r)
            goto oom;
        d->repl = r;
        r[d->n_repl].text = NULL;
        r[d->n_repl++].group = group;
    }
    FLUSH_LIT();
#undef FLUSH_LIT
out:
    outboxd_buf_free(&lit);
    return rc;
oom:
    snprintf(errstr, errstr_size, "out of memory");
    outboxd_buf_free(&lit);
    return -1;
}

/* ---- properties ---- */

static int parse_bool(const char *key, const char *v, bool *out, char *errstr, size_t errstr_size)
{
    if (strcmp(v, "true") == 0)
        *out = true;
    else if (strcmp(v, "false") == 0)
        *out = false;
    else {
        snprintf(errstr, errstr_size, "%s: expected true or false, got '%.100s'", key, v);
        return -1;
    }
    return 0;
}

/* s without its leading and trailing white space (in place). */
static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *end = s + strlen(s);
    while (end > s && isspace((unsigned char)end[-1]))
        *--end = '\0';
    return s;
}

/* Placements a record can carry: the headers are the "id" header and one
 * per header placement, the envelope one field per placement, both in
 * fixed arrays of OUTBOXD_MAX_HEADERS (router.c). */
#define MAX_PLACES (OUTBOXD_MAX_HEADERS - 1)

static int parse_placements(outboxd_dbz_t *d, const char *key, const char *v, char *errstr,
                            size_t errstr_size)
{
    char *copy = strdup(v), *save = NULL;
    if (!copy)
        goto oom;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        item = trim(item);
        if (!*item)
            continue;
        /* Each part trimmed, as Debezium's EventRouterConfigDefinition. */
        char *col = item, *where = strchr(item, ':'), *alias = NULL;
        if (where) {
            *where++ = '\0';
            alias = strchr(where, ':');
            if (alias) {
                *alias++ = '\0';
                alias = trim(alias);
            }
            where = trim(where);
            col = trim(col);
        }
        if (d->n_places >= MAX_PLACES) {
            snprintf(errstr, errstr_size,
                     "%s: more than %d placements (outboxd carries at most %d per record); "
                     "place fewer columns",
                     key, MAX_PLACES, MAX_PLACES);
            free(copy);
            return -1;
        }
        outboxd_dbz_where_t w;
        if (!where || !*col) {
            snprintf(errstr, errstr_size,
                     "%s: '%.100s' is not column:placement[:alias] (placement header, envelope "
                     "or partition)",
                     key, item);
            free(copy);
            return -1;
        }
        if (strcmp(where, "header") == 0)
            w = OUTBOXD_DBZ_HEADER;
        else if (strcmp(where, "envelope") == 0)
            w = OUTBOXD_DBZ_ENVELOPE;
        else if (strcmp(where, "partition") == 0)
            w = OUTBOXD_DBZ_PARTITION;
        else {
            snprintf(errstr, errstr_size,
                     "%s: unknown placement '%.100s' for column %.100s (expected header, "
                     "envelope or partition)",
                     key, where, col);
            free(copy);
            return -1;
        }
        outboxd_dbz_place_t *p = realloc(d->places, (d->n_places + 1) * sizeof(*p));
        if (!p)
            goto oom;
        d->places = p;
        p[d->n_places].column = strdup(col);
        p[d->n_places].alias = strdup(alias && *alias ? alias : col);
        p[d->n_places].where = w;
        d->n_places++;
        if (!p[d->n_places - 1].column || !p[d->n_places - 1].alias)
            goto oom;
    }
    free(copy);
    return 0;
oom:
    free(copy);
    snprintf(errstr, errstr_size, "out of memory");
    return -1;
}

/*
 * Value converters that pass a bytea payload on as it is. Debezium's
 * PostgreSQL connector hands bytea over as a ByteBuffer. BinaryDataConverter
 * (Debezium 2 and 3; ByteBufferConverter in 1.x) writes its bytes and gives
 * any other value (schema not BYTES) to its delegate.converter.type, failing
 * the task without one; Kafka's ByteArrayConverter takes ByteBuffers too (3.x)
 * and fails on anything else. Debezium's own ByteArrayConverter takes byte[]
 * only: with a bytea it fails (or hands the ByteBuffer to its delegate).
 */
static const char *bytes_converter(const char *v, bool *delegates)
{
    static const char *const names[] = {"io.debezium.converters.BinaryDataConverter",
                                        "io.debezium.converters.ByteBufferConverter",
                                        "org.apache.kafka.connect.converters.ByteArrayConverter"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(v, names[i]) == 0) {
            *delegates = i < 2;
            return names[i];
        }
    return NULL;
}

static int parse_converter(const char *key, const char *v, bool *json, bool *avro, char *errstr,
                           size_t errstr_size)
{
    *json = *avro = false;
    if (strcmp(v, "io.debezium.converters.ByteArrayConverter") == 0) {
        snprintf(errstr, errstr_size,
                 "%s: '%.100s' fails on a bytea payload of Debezium's PostgreSQL connector "
                 "(a ByteBuffer there, and it takes byte[] only); use "
                 "io.debezium.converters.BinaryDataConverter, which outboxd supports",
                 key, v);
        return -1;
    }
    if (strcmp(v, "org.apache.kafka.connect.json.JsonConverter") == 0)
        *json = true;
    else if (strcmp(v, "io.apicurio.registry.utils.converter.AvroConverter") == 0 ||
             strcmp(v, "io.confluent.connect.avro.AvroConverter") == 0)
        *avro = true;
    else if (strcmp(v, "org.apache.kafka.connect.storage.StringConverter") != 0) {
        snprintf(errstr, errstr_size,
                 "%s: '%.200s' is not supported (expected "
                 "org.apache.kafka.connect.storage.StringConverter, "
                 "org.apache.kafka.connect.json.JsonConverter, "
                 "io.apicurio.registry.utils.converter.AvroConverter or "
                 "io.confluent.connect.avro.AvroConverter)",
                 key, v);
        return -1;
    }
    return 0;
}

static bool ends_with(const char *s, const char *tail)
{
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && strcmp(s + n - m, tail) == 0;
}

/*
 * A converter's own setting (key.converter.<setting>): the registry's
 * address and credentials are outboxd's schema_registry block, so most are
 * accepted as they are; those that would change the bytes are checked.
 * schemas.enable (JsonConverter's; other converters ignore it) goes to
 * *schemas: 1 true, 0 false, as Kafka's ConfigDef reads a boolean.
 */
static int converter_setting(const char *k, const char *setting, const char *v, int *schemas,
                             int *set, char *errstr, size_t errstr_size)
{
    if (strcmp(setting, "schemas.enable") == 0) {
        if (strcasecmp(v, "true") == 0 || strcasecmp(v, "false") == 0) {
            *schemas = *set = strcasecmp(v, "true") == 0;
            return 0;
        }
        snprintf(errstr, errstr_size, "%s: expected true or false, got '%.100s'", k, v);
        return -1;
    }
    const char *bad = NULL;
    if (strcmp(setting, "apicurio.registry.as-confluent") == 0 && strcmp(v, "true") != 0)
        bad = "true (Confluent's wire format: magic byte 0 and a 4-byte id)";
    else if (strcmp(setting, "apicurio.registry.headers.enabled") == 0 && strcmp(v, "false") != 0)
        bad = "false (the schema id in the value, as Confluent's converter writes it)";
    else if (strcmp(setting, "apicurio.registry.use-id") == 0 && strcmp(v, "contentId") != 0)
        bad = "contentId (the id the registry's Confluent API hands out)";
    else if (strcmp(setting, "apicurio.registry.artifact-resolver-strategy") == 0 &&
             !ends_with(v, ".TopicIdStrategy"))
        bad = "io.apicurio.registry.serde.strategy.TopicIdStrategy (subjects <topic>-key and "
              "<topic>-value)";
    else if ((strcmp(setting, "key.subject.name.strategy") == 0 ||
              strcmp(setting, "value.subject.name.strategy") == 0) &&
             !ends_with(v, ".TopicNameStrategy"))
        bad = "io.confluent.kafka.serializers.subject.TopicNameStrategy (subjects <topic>-key "
              "and <topic>-value)";
    else if ((strcmp(setting, "connect.meta.data") == 0 && strcmp(v, "true") != 0) ||
             (strcmp(setting, "enhanced.avro.schema.support") == 0 && strcmp(v, "false") != 0))
        bad = "its default";
    if (bad) {
        snprintf(errstr, errstr_size, "%s: only %s is supported, got '%.100s'", k, bad, v);
        return -1;
    }
    return 0;
}

static int parse_list(const char *v, char ***out, size_t *n)
{
    char *copy = strdup(v), *save = NULL;
    if (!copy)
        return -1;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*item))
            item++;
        char *end = item + strlen(item);
        while (end > item && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (!*item)
            continue;
        char **l = realloc(*out, (*n + 1) * sizeof(char *));
        if (!l || !(l[*n] = strdup(item))) {
            if (l)
                *out = l;
            free(copy);
            return -1;
        }
        *out = l;
        (*n)++;
    }
    free(copy);
    return 0;
}

/* Properties accepted and ignored: they change nothing in the records. */
static const char *const ignored_props[] = {
    "type",                      /* io.debezium.transforms.outbox.EventRouter */
    "table.op.invalid.behavior", /* updates: tables[].on_update decides */
    "route.topic.regex.ignore.case", NULL};

outboxd_dbz_t *outboxd_dbz_new(const outboxd_kv_t *props, size_t n, char *errstr,
                               size_t errstr_size)
{
    outboxd_dbz_t *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    d->error_on_missing = true;
    const char *regex = "(?<routedByValue>.*)";
    const char *replacement = "outbox.event.${routedByValue}";
    const char *c_id = NULL, *c_key = NULL, *c_payload = NULL, *c_route = NULL;
    bool have_value_conv = false;
    const char *delegate = NULL; /* value.converter.delegate.converter.type */
    /* schemas.enable of the key, value and delegate converters; JsonConverter's
     * default is true */
    int key_schemas = 1, value_schemas = 1, delegate_schemas = 1;
    int key_schemas_set = -1, value_schemas_set = -1, delegate_schemas_set = -1; /* -1: not set */
    char **names = NULL;
    int *map = NULL;
    size_t n_java = 0;
    outboxd_buf_t ere = {0};
    for (size_t i = 0; i < n; i++) {
        const char *k = props[i].key, *v = props[i].value ? props[i].value : "";
        /* "transforms.outbox.route.by.field" as pasted from a connector config. */
        if (strncmp(k, "transforms.", 11) == 0 && strchr(k + 11, '.'))
            k = strchr(k + 11, '.') + 1;
        int rc = 0;
        bool ign = false;
        for (size_t j = 0; ignored_props[j]; j++)
            ign = ign || strcmp(k, ignored_props[j]) == 0;
        if (ign)
            continue;
        if (strcmp(k, "table.field.event.id") == 0)
            c_id = v;
        else if (strcmp(k, "table.field.event.key") == 0)
            c_key = v;
        else if (strcmp(k, "table.field.event.payload") == 0)
            c_payload = v;
        else if (strcmp(k, "table.field.event.timestamp") == 0)
            d->col_ts = *v ? strdup(v) : NULL;
        else if (strcmp(k, "route.by.field") == 0)
            c_route = v;
        else if (strcmp(k, "route.topic.regex") == 0)
            regex = v;
        else if (strcmp(k, "route.topic.replacement") == 0)
            replacement = v;
        else if (strcmp(k, "route.tombstone.on.empty.payload") == 0)
            rc = parse_bool(props[i].key, v, &d->tombstone_on_empty, errstr, errstr_size);
        else if (strcmp(k, "table.expand.json.payload") == 0)
            rc = parse_bool(props[i].key, v, &d->expand_json, errstr, errstr_size);
        else if (strcmp(k, "table.fields.additional.error.on.missing") == 0)
            rc = parse_bool(props[i].key, v, &d->error_on_missing, errstr, errstr_size);
        else if (strcmp(k, "table.json.payload.null.behavior") == 0) {
            if (strcmp(v, "ignore") == 0 || strcmp(v, "optional_bytes") == 0)
                d->keep_null_fields = strcmp(v, "optional_bytes") == 0;
            else {
                snprintf(errstr, errstr_size, "%s: expected ignore or optional_bytes, got '%.100s'",
                         props[i].key, v);
                rc = -1;
            }
        } else if (strcmp(k, "table.fields.additional.placement") == 0)
            rc = parse_placements(d, props[i].key, v, errstr, errstr_size);
        else if (strcmp(k, "table.field.event.schema.version") == 0) {
            free(d->col_version);
            d->col_version = *v ? strdup(v) : NULL;
        } else if (strcmp(k, "topic.prefix") == 0) {
            free(d->topic_prefix);
            d->topic_prefix = strdup(v);
        } else if (strcmp(k, "outboxd.columns.not.null") == 0) {
            if (parse_list(v, &d->not_null, &d->n_not_null) < 0) {
                snprintf(errstr, errstr_size, "out of memory");
                rc = -1;
            }
        } else if (strcmp(k, "key.converter") == 0)
            rc = parse_converter(k, v, &d->key_json, &d->key_avro, errstr, errstr_size);
        else if (strcmp(k, "value.converter") == 0) {
            d->value_bytes = bytes_converter(v, &d->value_bytes_delegates);
            if (!d->value_bytes)
                rc = parse_converter(k, v, &d->value_json, &d->value_avro, errstr, errstr_size);
            have_value_conv = true;
        } else if (strcmp(k, "value.converter.delegate.converter.type") == 0)
            delegate = v;
        else if (strncmp(k, "value.converter.delegate.converter.type.", 40) == 0)
            rc = converter_setting(k, k + 40, v, &delegate_schemas, &delegate_schemas_set, errstr,
                                   errstr_size);
        else if (strncmp(k, "key.converter.", 14) == 0)
            rc = converter_setting(k, k + 14, v, &key_schemas, &key_schemas_set, errstr,
                                   errstr_size);
        else if (strncmp(k, "value.converter.", 16) == 0)
            rc = converter_setting(k, k + 16, v, &value_schemas, &value_schemas_set, errstr,
                                   errstr_size);
        else {
            snprintf(errstr, errstr_size,
                     "unknown or unsupported Debezium property '%.200s' (see README "
                     "\"Migrating from Debezium\" for the supported ones)",
                     props[i].key);
            rc = -1;
        }
        if (rc < 0)
            goto fail;
    }
    if (!have_value_conv) {
        snprintf(errstr, errstr_size,
                 "value.converter is required (org.apache.kafka.connect.storage.StringConverter, "
                 "org.apache.kafka.connect.json.JsonConverter or an AvroConverter, as in the "
                 "connector config)");
        goto fail;
    }
    if (delegate && !(d->value_bytes && d->value_bytes_delegates)) {
        snprintf(errstr, errstr_size,
                 "value.converter.delegate.converter.type is a setting of "
                 "io.debezium.converters.BinaryDataConverter, not of the value.converter "
                 "configured");
        goto fail;
    }
    if (delegate) {
        bool avro = false;
        if (parse_converter("value.converter.delegate.converter.type", delegate, &d->value_json,
                            &avro, errstr, errstr_size) < 0)
            goto fail;
        if (avro) {
            snprintf(errstr, errstr_size,
                     "value.converter.delegate.converter.type: an AvroConverter as the delegate "
                     "of %s is not supported (JsonConverter or StringConverter are)",
                     d->value_bytes);
            goto fail;
        }
        d->value_delegate = true;
    }
    d->key_schemas = d->key_json && key_schemas;
    d->value_schemas = d->value_json && (d->value_delegate ? delegate_schemas : value_schemas);
    d->schemas_implicit =
        (d->key_json && key_schemas_set < 0) ||
        (d->value_json && (d->value_delegate ? delegate_schemas_set : value_schemas_set) < 0);
    for (size_t i = 0; i < d->n_places; i++)
        if (d->places[i].where == OUTBOXD_DBZ_ENVELOPE && d->value_bytes && !d->value_delegate) {
            snprintf(errstr, errstr_size,
                     "table.fields.additional.placement: %s:envelope makes the value a struct, "
                     "which %s %s (Debezium's task fails on every row)",
                     d->places[i].column, d->value_bytes,
                     d->value_bytes_delegates
                         ? "passes to value.converter.delegate.converter.type, and none is set"
                         : "cannot write");
            goto fail;
        }
    for (size_t i = 0; i < d->n_places; i++)
        if (d->places[i].where == OUTBOXD_DBZ_ENVELOPE && !d->value_json && !d->value_avro) {
            snprintf(errstr, errstr_size,
                     "table.fields.additional.placement: %s:envelope needs value.converter "
                     "JsonConverter or AvroConverter (with StringConverter Debezium writes "
                     "Connect's Struct toString(), which no consumer should parse)",
                     d->places[i].column);
            goto fail;
        }
    if (!d->topic_prefix && (d->value_avro || d->value_schemas))
        for (size_t i = 0; i < d->n_places; i++)
            if (d->places[i].where == OUTBOXD_DBZ_ENVELOPE) {
                /* The value struct is named <topic.prefix>.<schema>.<table>.<route>.Value. */
                snprintf(errstr, errstr_size,
                         "topic.prefix (the connector's) is required with envelope placements "
                         "and %s: it names the value's %s",
                         d->value_avro ? "AvroConverter" : "JsonConverter with schemas.enable",
                         d->value_avro ? "Avro record" : "Connect schema");
                goto fail;
            }
    if (!d->topic_prefix && !(d->topic_prefix = strdup(""))) {
        snprintf(errstr, errstr_size, "out of memory");
        goto fail;
    }
    d->col_id = dup_or(c_id, "id");
    d->col_key = dup_or(c_key, "aggregateid");
    d->col_payload = dup_or(c_payload, "payload");
    d->col_route = dup_or(c_route, "aggregatetype");
    if (!d->col_id || !d->col_key || !d->col_payload || !d->col_route) {
        snprintf(errstr, errstr_size, "out of memory");
        goto fail;
    }
    char why[300];
    if (translate_regex(regex, &ere, &names, &map, &n_java, why, sizeof(why)) < 0) {
        snprintf(errstr, errstr_size, "route.topic.regex: %s", why);
        goto fail;
    }
    int rc = regcomp(&d->re, ere.data, REG_EXTENDED);
    if (rc != 0) {
        char msg[200];
        regerror(rc, &d->re, msg, sizeof(msg));
        snprintf(errstr, errstr_size, "route.topic.regex '%.200s': %s", regex, msg);
        goto fail;
    }
    d->re_groups = d->re.re_nsub + 1;
    if (parse_replacement(d, replacement, names, map, n_java, why, sizeof(why)) < 0) {
        snprintf(errstr, errstr_size, "route.topic.replacement: %s", why);
        regfree(&d->re);
        d->re_groups = 0;
        goto fail;
    }
    for (size_t j = 0; j < n_java; j++)
        free(names[j]);
    free(names);
    free(map);
    outboxd_buf_free(&ere);
    return d;
fail:
    for (size_t j = 0; j < n_java; j++)
        free(names[j]);
    free(names);
    free(map);
    outboxd_buf_free(&ere);
    outboxd_dbz_destroy(d);
    return NULL;
}

void outboxd_dbz_destroy(outboxd_dbz_t *d)
{
    if (!d)
        return;
    free(d->col_id);
    free(d->col_key);
    free(d->col_payload);
    free(d->col_route);
    free(d->col_ts);
    free(d->col_version);
    free(d->topic_prefix);
    for (size_t i = 0; i < d->n_not_null; i++)
        free(d->not_null[i]);
    free(d->not_null);
    for (size_t i = 0; i < d->n_names; i++) {
        free(d->name_keys[i]);
        free(d->name_vals[i]);
    }
    free(d->name_keys);
    free(d->name_vals);
    for (size_t i = 0; i < d->n_places; i++) {
        free(d->places[i].column);
        free(d->places[i].alias);
    }
    free(d->places);
    if (d->re_groups)
        regfree(&d->re);
    for (size_t i = 0; i < d->n_repl; i++)
        free(d->repl[i].text);
    free(d->repl);
    free(d);
}

/* ---- rendering ---- */

int outboxd_dbz_topic(const outboxd_dbz_t *d, const char *v, size_t len, outboxd_buf_t *out)
{
    outboxd_buf_reset(out);
    char *s = outboxd_strndup(v, len);
    if (!s)
        return -1;
    regmatch_t m[MAX_GROUPS];
    size_t nm = d->re_groups < 32 ? d->re_groups : 32;
    bool ok = true;
    if (strlen(s) == len && regexec(&d->re, s, nm, m, 0) == 0) {
        for (size_t i = 0; i < d->n_repl && ok; i++) {
            const outboxd_dbz_repl_t *r = &d->repl[i];
            if (r->text)
                ok = outboxd_buf_append_str(out, r->text);
            else if ((size_t)r->group < nm && m[r->group].rm_so >= 0)
                ok = outboxd_buf_append(out, s + m[r->group].rm_so,
                                        (size_t)(m[r->group].rm_eo - m[r->group].rm_so));
        }
    } else {
        ok = outboxd_buf_append(out, v, len);
    }
    ok = ok && outboxd_buf_append(out, "", 1);
    free(s);
    if (!ok)
        return -1;
    out->len--; /* NUL-terminated, not counted */
    return 0;
}

/* A JSON string as Jackson writes it: \" \\ \b \f \n \r \t, other control
 * characters as \u00XX, everything else (non-ASCII too) as is. */
static bool json_str(outboxd_buf_t *out, const char *s, size_t len)
{
    bool ok = outboxd_buf_append(out, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len && ok; i++) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = c == '"'    ? "\\\""
                          : c == '\\' ? "\\\\"
                          : c == '\b' ? "\\b"
                          : c == '\f' ? "\\f"
                          : c == '\n' ? "\\n"
                          : c == '\r' ? "\\r"
                          : c == '\t' ? "\\t"
                                      : NULL;
        if (!esc && c >= 0x20)
            continue;
        ok = outboxd_buf_append(out, s + run, i - run);
        run = i + 1;
        if (esc)
            ok = ok && outboxd_buf_append_str(out, esc);
        else
            ok = ok && outboxd_buf_printf(out, "\\u%04X", c);
    }
    return ok && outboxd_buf_append(out, s + run, len - run) && outboxd_buf_append(out, "\"", 1);
}

/* A double as Java's Double.toString prints it (Float.toString with
 * single: the value is a float): the shortest digits that read back as the
 * same value; plain between 1e-3 and 1e7, else d.dddE[-]n. */
static bool java_number(outboxd_buf_t *out, double x, bool single)
{
    if (isnan(x))
        return outboxd_buf_append_str(out, "NaN");
    if (isinf(x))
        return outboxd_buf_append_str(out, x < 0 ? "-Infinity" : "Infinity");
    if (x == 0)
        return outboxd_buf_append_str(out, signbit(x) ? "-0.0" : "0.0");
    char e[40];
    for (int prec = 0; prec < 17; prec++) {
        snprintf(e, sizeof(e), "%.*e", prec, x);
        if (single ? strtof(e, NULL) == (float)x : strtod(e, NULL) == x)
            break;
    }
    /* e: [-]d[.ddd]e[+-]xx */
    char digits[24];
    size_t nd = 0;
    const char *p = e;
    bool neg = *p == '-';
    if (neg)
        p++;
    for (; *p && *p != 'e'; p++)
        if (isdigit((unsigned char)*p))
            digits[nd++] = *p;
    int exp10 = atoi(p + 1); /* x = d.ddd * 10^exp10 */
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = '\0';
    bool ok = !neg || outboxd_buf_append(out, "-", 1);
    double ax = fabs(x);
    if (ax >= 1e-3 && ax < 1e7) {
        if (exp10 >= 0) {
            for (int i = 0; i <= exp10; i++)
                ok = ok && outboxd_buf_append(out, (size_t)i < nd ? &digits[i] : "0", 1);
            ok = ok && outboxd_buf_append(out, ".", 1);
            if ((size_t)(exp10 + 1) < nd)
                ok = ok && outboxd_buf_append_str(out, digits + exp10 + 1);
            else
                ok = ok && outboxd_buf_append(out, "0", 1);
        } else {
            ok = ok && outboxd_buf_append_str(out, "0.");
            for (int i = -1; i > exp10; i--)
                ok = ok && outboxd_buf_append(out, "0", 1);
            ok = ok && outboxd_buf_append_str(out, digits);
        }
    } else {
        ok = ok && outboxd_buf_append(out, digits, 1) && outboxd_buf_append(out, ".", 1) &&
             outboxd_buf_append_str(out, nd > 1 ? digits + 1 : "0") &&
             outboxd_buf_printf(out, "E%d", exp10);
    }
    return ok;
}

static bool java_double(outboxd_buf_t *out, double x)
{
    return java_number(out, x, false);
}

static bool dump_json(const json_t *v, bool keep_nulls, outboxd_buf_t *out)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        bool ok = outboxd_buf_append(out, "{", 1), first = true;
        const char *k;
        json_t *kv;
        void *tmp;
        json_object_foreach_safe((json_t *)v, tmp, k, kv)
        {
            if (json_is_null(kv) && !keep_nulls)
                continue;
            if (!first)
                ok = ok && outboxd_buf_append(out, ",", 1);
            first = false;
            ok = ok && json_str(out, k, strlen(k)) && outboxd_buf_append(out, ":", 1) &&
                 dump_json(kv, keep_nulls, out);
        }
        return ok && outboxd_buf_append(out, "}", 1);
    }
    case JSON_ARRAY: {
        bool ok = outboxd_buf_append(out, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++)
            ok = ok && (i == 0 || outboxd_buf_append(out, ",", 1)) &&
                 dump_json(json_array_get(v, i), keep_nulls, out);
        return ok && outboxd_buf_append(out, "]", 1);
    }
    case JSON_STRING:
        return json_str(out, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        return outboxd_buf_printf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    case JSON_REAL:
        return java_double(out, json_real_value(v));
    case JSON_TRUE:
        return outboxd_buf_append_str(out, "true");
    case JSON_FALSE:
        return outboxd_buf_append_str(out, "false");
    case JSON_NULL:
        return outboxd_buf_append_str(out, "null");
    }
    return false;
}

/* bytea text as base64: Connect BYTES (a ByteBuffer) as JsonConverter
 * (Jackson's binary node) and Connect's Values text (headers) write it. */
static bool bytea_base64(outboxd_buf_t *out, const char *v, size_t len)
{
    outboxd_buf_t raw = {0};
    bool ok = outboxd_bytea_parse(v, len, &raw) && outboxd_buf_base64(out, raw.data, raw.len);
    outboxd_buf_free(&raw);
    return ok;
}

static bool bytea_json(outboxd_buf_t *out, const char *v, size_t len)
{
    return outboxd_buf_append(out, "\"", 1) && bytea_base64(out, v, len) &&
           outboxd_buf_append(out, "\"", 1);
}

/* A column value as a JSON value of the Connect type Debezium gives it:
 * integers and booleans as such, floats as Java doubles, bytea base64,
 * others strings. */
static bool column_json(outboxd_buf_t *out, const char *v, size_t len, uint32_t oid)
{
    if (!v)
        return outboxd_buf_append_str(out, "null");
    if (oid == OID_BYTEA)
        return bytea_json(out, v, len);
    if (is_int_type(oid))
        return outboxd_buf_append(out, v, len);
    if (oid == OID_BOOL)
        return outboxd_buf_append_str(out, len && v[0] == 't' ? "true" : "false");
    if (oid == OID_FLOAT4 || oid == OID_FLOAT8) {
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(len < 63 ? len : 63), v);
        double x = strtod(tmp, NULL);
        return oid == OID_FLOAT4 ? java_number(out, (double)(float)x, true) : java_double(out, x);
    }
    return json_str(out, v, len);
}

int outboxd_dbz_key(const outboxd_dbz_t *d, const char *v, size_t len, uint32_t type_oid,
                    outboxd_buf_t *out)
{
    outboxd_buf_reset(out);
    bool ok;
    if (d->key_json)
        ok = column_json(out, v, len, type_oid);
    else
        ok = outboxd_dbz_header_text(v, len, type_oid, out) == 0;
    return ok ? 0 : -1;
}

int outboxd_dbz_header_text(const char *v, size_t len, uint32_t type_oid, outboxd_buf_t *out)
{
    bool ok;
    if (type_oid == OID_BOOL) {
        ok = outboxd_buf_append_str(out, len && v[0] == 't' ? "true" : "false");
    } else if (type_oid == OID_BYTEA) {
        ok = bytea_base64(out, v, len);
    } else if (type_oid == OID_FLOAT4 || type_oid == OID_FLOAT8) {
        /* Connect's FLOAT32/FLOAT64 as text: Java's Float/Double.toString
         * (1.0 where PostgreSQL prints 1, 1.0E-4 where it prints 0.0001). */
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(len < 63 ? len : 63), v);
        double x = strtod(tmp, NULL);
        ok =
            java_number(out, type_oid == OID_FLOAT4 ? (double)(float)x : x, type_oid == OID_FLOAT4);
    } else
        ok = outboxd_buf_append(out, v, len);
    return ok ? 0 : -1;
}

/* The payload as a JSON value (the JsonConverter side). */
static int payload_json(const outboxd_dbz_t *d, const outboxd_dbz_field_t *p, outboxd_buf_t *out,
                        char *reason, size_t reason_size)
{
    if (!p->data)
        return outboxd_buf_append_str(out, "null") ? 0 : -1;
    /* Not a string: Debezium does not expand it ("payload is not a string"). */
    if (p->type_oid == OID_BYTEA)
        return bytea_json(out, p->data, p->len) ? 0 : -1;
    if (d->expand_json)
        return outboxd_dbz_expand_json(p->data, p->len, d->keep_null_fields, out, reason,
                                       reason_size);
    return json_str(out, p->data, p->len) ? 0 : -1;
}

/* Debezium's "empty payload" (EventRouterDelegate): null, or a text that
 * Java's trim() leaves empty (every character <= U+0020). */
static bool empty_payload(const outboxd_dbz_field_t *p)
{
    if (!p->data)
        return true;
    /* A bytea payload is a ByteBuffer, whose toString() is never blank. */
    if (p->type_oid == OID_BYTEA)
        return false;
    for (size_t i = 0; i < p->len; i++)
        if ((unsigned char)p->data[i] > 0x20)
            return false;
    return true;
}

int outboxd_dbz_value(const outboxd_dbz_t *d, const outboxd_dbz_field_t *payload,
                      const outboxd_dbz_field_t *env, size_t n_env, outboxd_buf_t *out,
                      bool *tombstone, char *reason, size_t reason_size)
{
    outboxd_buf_reset(out);
    if (d->value_bytes && n_env == 0 && payload->type_oid == OID_BYTEA) {
        /* BinaryDataConverter, ByteArrayConverter: the bytes as they are,
         * null for NULL. */
        *tombstone = !payload->data;
        if (*tombstone)
            return 0;
        if (!outboxd_bytea_parse(payload->data, payload->len, out)) {
            snprintf(reason, reason_size, "payload column '%s': malformed bytea text",
                     payload->name);
            return 1;
        }
        return 0;
    }
    if (d->value_bytes && !d->value_delegate &&
        !(d->tombstone_on_empty && empty_payload(payload))) {
        snprintf(reason, reason_size,
                 "value.converter %s takes a bytea payload, and payload column '%s' is of "
                 "another type (oid %u)%s (Debezium's task fails on this row)",
                 d->value_bytes, payload->name, payload->type_oid,
                 d->value_bytes_delegates
                     ? "; set value.converter.delegate.converter.type for such values"
                     : "");
        return 1;
    }
    /* StringConverter renders a null value as a null record value, so a
     * NULL payload is a tombstone with it whatever the option says; with
     * the option an empty or blank text is one too, as with Debezium. */
    *tombstone =
        (!payload->data && !d->value_json) || (d->tombstone_on_empty && empty_payload(payload));
    if (*tombstone)
        return 0;
    if (!d->value_json)
        return outboxd_buf_append(out, payload->data, payload->len) ? 0 : -1;
    if (n_env == 0)
        return payload_json(d, payload, out, reason, reason_size);
    if (!outboxd_buf_append_str(out, "{\"payload\":"))
        return -1;
    int rc = payload_json(d, payload, out, reason, reason_size);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < n_env; i++) {
        if (!outboxd_buf_append(out, ",", 1) || !json_str(out, env[i].name, strlen(env[i].name)) ||
            !outboxd_buf_append(out, ":", 1) ||
            !column_json(out, env[i].data, env[i].len, env[i].type_oid))
            return -1;
    }
    return outboxd_buf_append(out, "}", 1) ? 0 : -1;
}

/* ---- AvroConverter ---- */

/*
 * A Connect schema, as far as the EventRouter makes them: column schemas
 * (Debezium's types for the PostgreSQL column), the payload's (Debezium's
 * io.debezium.data.Json, or the one table.expand.json.payload infers from
 * the JSON) and the value struct of envelope placements.
 */
typedef enum {
    CS_STRING,
    CS_INT16,
    CS_INT32,
    CS_INT64,
    CS_FLOAT32,
    CS_FLOAT64,
    CS_BOOL,
    CS_BYTES,
    CS_ARRAY,
    CS_STRUCT
} cs_type_t;

typedef struct cs {
    cs_type_t type;
    bool optional;
    char *name;  /* Connect schema name, or NULL */
    int version; /* Connect schema version, when has_version */
    bool has_version;
    struct cs *items; /* CS_ARRAY */
    char **fnames;    /* CS_STRUCT fields, in order */
    struct cs **fields;
    size_t n;
} cs_t;

#define OID_TEXT    25
#define OID_VARCHAR 1043
#define OID_BPCHAR  1042
#define OID_NAME    19
#define OID_JSON    114
#define OID_JSONB   3802
#define OID_UUID    2950

static void cs_free(cs_t *c)
{
    if (!c)
        return;
    free(c->name);
    cs_free(c->items);
    for (size_t i = 0; i < c->n; i++) {
        free(c->fnames[i]);
        cs_free(c->fields[i]);
    }
    free(c->fnames);
    free(c->fields);
    free(c);
}

static cs_t *cs_new(cs_type_t type, bool optional, const char *name, int version)
{
    cs_t *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->type = type;
    c->optional = optional;
    c->version = version;
    c->has_version = version > 0;
    if (name && !(c->name = strdup(name))) {
        free(c);
        return NULL;
    }
    return c;
}

/* Appends field (owned from here on, also on failure). */
static bool cs_add(cs_t *st, const char *fname, cs_t *field)
{
    char **n = realloc(st->fnames, (st->n + 1) * sizeof(char *));
    if (n)
        st->fnames = n;
    cs_t **f = n ? realloc(st->fields, (st->n + 1) * sizeof(cs_t *)) : NULL;
    if (f)
        st->fields = f;
    if (!n || !f || !(st->fnames[st->n] = strdup(fname))) {
        cs_free(field);
        return false;
    }
    st->fields[st->n++] = field;
    return true;
}

static bool is_not_null(const outboxd_dbz_t *d, const char *col)
{
    for (size_t i = 0; i < d->n_not_null; i++)
        if (strcmp(d->not_null[i], col) == 0)
            return true;
    return false;
}

/*
 * The schema Debezium's PostgreSQL connector gives a column of this type
 * (optional unless listed in outboxd.columns.not.null: pgoutput does not
 * say). NULL with *unsupported for types not rendered here.
 */
static cs_t *column_schema(const outboxd_dbz_t *d, const char *col, uint32_t oid, bool *unsupported)
{
    bool opt = !is_not_null(d, col);
    *unsupported = false;
    switch (oid) {
    case OID_TEXT:
    case OID_VARCHAR:
    case OID_BPCHAR:
    case OID_NAME:
        return cs_new(CS_STRING, opt, NULL, 0);
    case OID_JSON:
    case OID_JSONB:
        return cs_new(CS_STRING, opt, "io.debezium.data.Json", 1);
    case OID_UUID:
        return cs_new(CS_STRING, opt, "io.debezium.data.Uuid", 1);
    case OID_INT2:
        return cs_new(CS_INT16, opt, NULL, 0);
    case OID_INT4:
        return cs_new(CS_INT32, opt, NULL, 0);
    case OID_INT8:
        return cs_new(CS_INT64, opt, NULL, 0);
    case OID_OID:
        return cs_new(CS_INT64, opt, NULL, 0);
    case OID_FLOAT4:
        return cs_new(CS_FLOAT32, opt, NULL, 0);
    case OID_FLOAT8:
        return cs_new(CS_FLOAT64, opt, NULL, 0);
    case OID_BOOL:
        return cs_new(CS_BOOL, opt, NULL, 0);
    case OID_BYTEA:
        return cs_new(CS_BYTES, opt, NULL, 0);
    }
    *unsupported = true;
    return NULL;
}

/* Avro's name rule (Avro's Java library refuses others, and so the
 * converter). */
static bool avro_name_ok(const char *s, size_t len)
{
    if (len == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < len; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

static bool avro_fullname_ok(const char *s)
{
    const char *p = s;
    for (;;) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (!avro_name_ok(p, len))
            return false;
        if (!dot)
            return true;
        p = dot + 1;
    }
}

/* ---- Avro schema text, as Avro's Java Schema.toString() writes it ---- */

static bool avro_props(outboxd_buf_t *o, const cs_t *c)
{
    bool ok = true;
    if (c->has_version)
        ok = outboxd_buf_printf(o, ",\"connect.version\":%d", c->version);
    if (c->name)
        ok = ok && outboxd_buf_append_str(o, ",\"connect.name\":") &&
             json_str(o, c->name, strlen(c->name));
    if (c->type == CS_INT16)
        ok = ok && outboxd_buf_append_str(o, ",\"connect.type\":\"int16\"");
    return ok;
}

static const char *avro_prim(cs_type_t t)
{
    switch (t) {
    case CS_STRING:
        return "string";
    case CS_INT16:
    case CS_INT32:
        return "int";
    case CS_INT64:
        return "long";
    case CS_FLOAT32:
        return "float";
    case CS_FLOAT64:
        return "double";
    case CS_BOOL:
        return "boolean";
    case CS_BYTES:
        return "bytes";
    default:
        return NULL;
    }
}

/*
 * The Avro schema of c as Confluent's AvroData makes it (connect.meta.data
 * on): optional -> ["null", T] (no union at top level for a struct, since
 * the converter registers a record's own schema), struct -> record named
 * after the Connect name (ConnectDefault in io.confluent.connect.avro when
 * unnamed), fields of optional types with "default": null, connect.version /
 * connect.name / connect.type properties. ns: the enclosing namespace (Avro
 * writes a record's namespace only when it differs).
 */
static bool avro_schema(outboxd_buf_t *o, const cs_t *c, const char *ns, bool top)
{
    bool ok = true;
    bool in_union = c->optional && !(top && c->type == CS_STRUCT);
    if (in_union)
        ok = outboxd_buf_append_str(o, "[\"null\",");
    const char *prim = avro_prim(c->type);
    if (prim) {
        if (!c->has_version && !c->name && c->type != CS_INT16)
            ok = ok && outboxd_buf_printf(o, "\"%s\"", prim);
        else
            ok = ok && outboxd_buf_printf(o, "{\"type\":\"%s\"", prim) && avro_props(o, c) &&
                 outboxd_buf_append(o, "}", 1);
    } else if (c->type == CS_ARRAY) {
        ok = ok && outboxd_buf_append_str(o, "{\"type\":\"array\",\"items\":") &&
             avro_schema(o, c->items, ns, false) && avro_props(o, c) &&
             outboxd_buf_append(o, "}", 1);
    } else {
        const char *full = c->name ? c->name : "io.confluent.connect.avro.ConnectDefault";
        const char *dot = strrchr(full, '.');
        const char *name = dot ? dot + 1 : full;
        char *space = dot ? outboxd_strndup(full, (size_t)(dot - full)) : NULL;
        if (dot && !space)
            return false;
        ok = ok && outboxd_buf_append_str(o, "{\"type\":\"record\",\"name\":") &&
             json_str(o, name, strlen(name));
        if (ok && (space ? !ns || strcmp(space, ns) != 0 : ns != NULL))
            ok = outboxd_buf_append_str(o, ",\"namespace\":") &&
                 (space ? json_str(o, space, strlen(space)) : outboxd_buf_append_str(o, "\"\""));
        ok = ok && outboxd_buf_append_str(o, ",\"fields\":[");
        for (size_t i = 0; ok && i < c->n; i++) {
            ok = (i == 0 || outboxd_buf_append(o, ",", 1)) &&
                 outboxd_buf_append_str(o, "{\"name\":") &&
                 json_str(o, c->fnames[i], strlen(c->fnames[i])) &&
                 outboxd_buf_append_str(o, ",\"type\":") &&
                 avro_schema(o, c->fields[i], space, false) &&
                 (!c->fields[i]->optional || outboxd_buf_append_str(o, ",\"default\":null")) &&
                 outboxd_buf_append(o, "}", 1);
        }
        ok = ok && outboxd_buf_append(o, "]", 1) && avro_props(o, c) &&
             outboxd_buf_append(o, "}", 1);
        free(space);
    }
    return ok && (!in_union || outboxd_buf_append(o, "]", 1));
}

/* A struct's Avro names (record and fields) must be valid, or the
 * converter fails; reason names the first that is not. */
static bool avro_names_ok(const cs_t *c, char *reason, size_t reason_size)
{
    if (c->type == CS_ARRAY)
        return avro_names_ok(c->items, reason, reason_size);
    if (c->type != CS_STRUCT)
        return true;
    if (c->name && !avro_fullname_ok(c->name)) {
        snprintf(reason, reason_size,
                 "'%.200s' is not a valid Avro record name (letters, digits, '_', dots between "
                 "names), so no AvroConverter can write this record",
                 c->name);
        return false;
    }
    for (size_t i = 0; i < c->n; i++) {
        if (!avro_name_ok(c->fnames[i], strlen(c->fnames[i]))) {
            snprintf(reason, reason_size,
                     "'%.200s' is not a valid Avro field name (letters, digits, '_'; not "
                     "starting with a digit), so no AvroConverter can write this record",
                     c->fnames[i]);
            return false;
        }
        if (!avro_names_ok(c->fields[i], reason, reason_size))
            return false;
    }
    return true;
}

/* ---- Avro binary ---- */

static bool put_le(outboxd_buf_t *o, uint64_t u, int n)
{
    unsigned char b[8];
    for (int i = 0; i < n; i++)
        b[i] = (unsigned char)(u >> (8 * i));
    return outboxd_buf_append(o, b, (size_t)n);
}

static bool put_double(outboxd_buf_t *o, double x)
{
    uint64_t u;
    memcpy(&u, &x, 8);
    return put_le(o, u, 8);
}

static bool put_float(outboxd_buf_t *o, float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return put_le(o, u, 4);
}

/* A column's text as the datum of its column schema (not the union). */
static int column_datum(outboxd_buf_t *o, const cs_t *c, const char *v, size_t len, const char *col,
                        char *reason, size_t reason_size)
{
    char tmp[64];
    char *end;
    if (c->type == CS_STRING)
        return outboxd_avro_write_string(o, v, len) ? 0 : -1;
    if (c->type == CS_BOOL)
        return outboxd_buf_append(o, len && v[0] == 't' ? "\1" : "\0", 1) ? 0 : -1;
    if (c->type == CS_BYTES) {
        outboxd_buf_t raw = {0};
        bool ok = outboxd_bytea_parse(v, len, &raw) &&
                  outboxd_avro_write_long(o, (int64_t)raw.len) &&
                  outboxd_buf_append(o, raw.data, raw.len);
        outboxd_buf_free(&raw);
        return ok ? 0 : -1;
    }
    snprintf(tmp, sizeof(tmp), "%.*s", (int)(len < 63 ? len : 63), v);
    errno = 0;
    if (c->type == CS_FLOAT32 || c->type == CS_FLOAT64) {
        double x = strtod(tmp, &end);
        if (*end) {
            snprintf(reason, reason_size, "column '%s': '%s' is not a number", col, tmp);
            return 1;
        }
        return (c->type == CS_FLOAT32 ? put_float(o, (float)x) : put_double(o, x)) ? 0 : -1;
    }
    long long x = strtoll(tmp, &end, 10);
    if (*end || errno) {
        snprintf(reason, reason_size, "column '%s': '%s' is not an integer", col, tmp);
        return 1;
    }
    return outboxd_avro_write_long(o, x) ? 0 : -1;
}

/* A column value as a (possibly optional) field or top-level datum. */
static int column_value(outboxd_buf_t *o, const cs_t *c, const outboxd_dbz_field_t *f, char *reason,
                        size_t reason_size)
{
    if (!f->data) {
        if (!c->optional) {
            snprintf(reason, reason_size,
                     "column '%s' is NULL but listed in outboxd.columns.not.null", f->name);
            return 1;
        }
        return outboxd_avro_write_long(o, 0) ? 0 : -1;
    }
    if (c->optional && !outboxd_avro_write_long(o, 1))
        return -1;
    return column_datum(o, c, f->data, f->len, f->name, reason, reason_size);
}

/* ---- table.expand.json.payload: Debezium's JsonSchemaData ---- */

/* Thrown by JsonSchemaData: Debezium then keeps the payload as a string. */
#define EXPAND_FAILS ((cs_t *)-1)

static cs_t *json_schema(const outboxd_dbz_t *d, const char *key, const json_t *v);

/* What json_schema returns for a field without a schema (JSON null,
 * empty array): the field is left out. */
static cs_t skip_field;

/* Merges right's fields into left (JsonSchemaData.mergeSchema). */
static bool merge_struct(cs_t *left, cs_t *right)
{
    for (size_t i = 0; i < right->n; i++) {
        size_t j = 0;
        while (j < left->n && strcmp(left->fnames[j], right->fnames[i]) != 0)
            j++;
        if (j == left->n) {
            if (!cs_add(left, right->fnames[i], right->fields[i]))
                return false;
            right->fields[i] = NULL;
        } else if (left->fields[j]->type == CS_BYTES && right->fields[i]->type != CS_BYTES) {
            cs_free(left->fields[j]);
            left->fields[j] = right->fields[i];
            right->fields[i] = NULL;
        }
    }
    return true;
}

static cs_t *json_array_schema(const outboxd_dbz_t *d, const char *key, const json_t *a)
{
    /* getFirstArrayElement: the first non-null element; all of one JSON
     * type, numbers of one Connect type. */
    const json_t *ref = NULL;
    size_t i;
    json_t *e;
    json_array_foreach(a, i, e)
    {
        if (json_is_null(e))
            continue;
        if (!ref) {
            ref = e;
            continue;
        }
        bool same = json_typeof(e) == json_typeof(ref) ||
                    (json_is_boolean(e) && json_is_boolean(ref)) ||
                    (json_is_number(e) && json_is_number(ref));
        if (!same)
            return EXPAND_FAILS;
        if (json_is_number(e)) {
            cs_t *s1 = json_schema(d, NULL, ref), *s2 = json_schema(d, NULL, e);
            bool eq = s1 && s2 && s1->type == s2->type;
            cs_free(s1);
            cs_free(s2);
            if (!eq)
                return EXPAND_FAILS;
        }
    }
    cs_t *item = NULL;
    /* Objects: their schemas merged in array order. Debezium merges a
     * HashSet of them, whose order follows Java identity hash codes (it can
     * change with each worker start): the fields of objects of different
     * shapes can come in another order there (README). */
    if (ref && json_is_object(ref)) {
        json_array_foreach(a, i, e)
        {
            if (!json_is_object(e))
                continue;
            cs_t *s = json_schema(d, key, e);
            if (!s || s == EXPAND_FAILS) {
                cs_free(item);
                return s;
            }
            if (!item)
                item = s;
            else {
                bool ok = merge_struct(item, s);
                cs_free(s);
                if (!ok) {
                    cs_free(item);
                    return NULL;
                }
            }
        }
    } else {
        /* only nulls, or empty arrays: "unrecognized member schema" */
        if (!ref)
            return EXPAND_FAILS;
        item = json_schema(d, NULL, ref);
        if (!item || item == EXPAND_FAILS)
            return item;
        if (item == &skip_field)
            return EXPAND_FAILS;
    }
    cs_t *arr = cs_new(CS_ARRAY, true, NULL, 0);
    if (!arr) {
        cs_free(item);
        return NULL;
    }
    arr->items = item;
    return arr;
}

/* JsonSchemaData.toConnectSchema. */
static cs_t *json_schema(const outboxd_dbz_t *d, const char *key, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_STRING:
        return cs_new(CS_STRING, true, NULL, 0);
    case JSON_TRUE:
    case JSON_FALSE:
        return cs_new(CS_BOOL, true, NULL, 0);
    case JSON_INTEGER: {
        json_int_t x = json_integer_value(v);
        return cs_new(x >= INT32_MIN && x <= INT32_MAX ? CS_INT32 : CS_INT64, true, NULL, 0);
    }
    case JSON_REAL:
        return cs_new(CS_FLOAT64, true, NULL, 0);
    case JSON_NULL:
        return d->keep_null_fields ? cs_new(CS_BYTES, true, NULL, 0) : &skip_field;
    case JSON_ARRAY:
        return json_array_size(v) == 0 ? &skip_field : json_array_schema(d, key, v);
    case JSON_OBJECT: {
        cs_t *st = cs_new(CS_STRUCT, true, key, 0);
        if (!st)
            return NULL;
        const char *k;
        json_t *fv;
        json_object_foreach((json_t *)v, k, fv)
        {
            bool dup = false;
            for (size_t i = 0; i < st->n && !dup; i++)
                dup = strcmp(st->fnames[i], k) == 0;
            if (dup)
                continue;
            outboxd_buf_t fk = {0};
            if ((key && *key && !outboxd_buf_printf(&fk, "%s.", key)) ||
                !outboxd_buf_append_str(&fk, k) || !outboxd_buf_append(&fk, "", 1)) {
                outboxd_buf_free(&fk);
                cs_free(st);
                return NULL;
            }
            cs_t *f = json_schema(d, fk.data, fv);
            outboxd_buf_free(&fk);
            if (f == &skip_field)
                continue;
            if (!f || f == EXPAND_FAILS || !cs_add(st, k, f)) {
                cs_free(st);
                return f == EXPAND_FAILS ? f : NULL;
            }
        }
        return st;
    }
    }
    return EXPAND_FAILS;
}

/* JsonSchemaData.toConnectData, written as Avro: a value for schema c
 * (c optional: with its union index). */
static bool json_datum(outboxd_buf_t *o, const cs_t *c, const json_t *v, bool top)
{
    bool in_union = c->optional && !(top && c->type == CS_STRUCT);
    if (!v || json_is_null(v))
        return in_union && outboxd_avro_write_long(o, 0);
    if (in_union && !outboxd_avro_write_long(o, 1))
        return false;
    switch (c->type) {
    case CS_STRING:
        return json_is_string(v) &&
               outboxd_avro_write_string(o, json_string_value(v), json_string_length(v));
    case CS_BOOL:
        return json_is_boolean(v) && outboxd_buf_append(o, json_is_true(v) ? "\1" : "\0", 1);
    case CS_INT16:
    case CS_INT32:
    case CS_INT64:
        return json_is_integer(v) && outboxd_avro_write_long(o, json_integer_value(v));
    case CS_FLOAT32:
        return json_is_number(v) && put_float(o, (float)json_number_value(v));
    case CS_FLOAT64:
        return json_is_number(v) && put_double(o, json_number_value(v));
    case CS_BYTES:
        return false; /* only ever null */
    case CS_ARRAY: {
        if (!json_is_array(v))
            return false;
        size_t n = json_array_size(v);
        bool ok = true;
        if (n)
            ok = outboxd_avro_write_long(o, (int64_t)n);
        for (size_t i = 0; ok && i < n; i++)
            ok = json_datum(o, c->items, json_array_get(v, i), false);
        return ok && outboxd_avro_write_long(o, 0);
    }
    case CS_STRUCT: {
        if (!json_is_object(v))
            return false;
        bool ok = true;
        for (size_t i = 0; ok && i < c->n; i++)
            ok = json_datum(o, c->fields[i], json_object_get(v, c->fnames[i]), false);
        return ok;
    }
    }
    return false;
}

/*
 * The expanded payload: schema and datum, or *fallback when Debezium's
 * expansion fails (its "JSON expansion failed" warning: the payload stays a
 * string). A JSON number outside 64 bits makes Debezium's toConnectData
 * fail, and so a fallback here too.
 */
/* The object payload and the schema JsonSchemaData infers for it, or
 * neither (*j NULL) where Debezium's expansion fails and the payload stays
 * the string: not an object (a top-level array among them: toConnectData
 * makes a Struct of an array schema, which throws), or no schema. 0, or -1
 * (OOM). */
static int infer_payload(const outboxd_dbz_t *d, const outboxd_dbz_field_t *p, json_t **j, cs_t **c)
{
    *j = NULL;
    *c = NULL;
    if (p->len == 0 || p->data[0] != '{')
        return 0;
    json_t *v = json_loadb(p->data, p->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!v || !json_is_object(v)) {
        json_decref(v);
        return 0;
    }
    cs_t *s = json_schema(d, d->col_payload, v);
    if (!s || s == EXPAND_FAILS || s == &skip_field) {
        json_decref(v);
        return s ? 0 : -1;
    }
    *j = v;
    *c = s;
    return 0;
}

static int expand_avro(const outboxd_dbz_t *d, const outboxd_dbz_field_t *p, cs_t **schema,
                       outboxd_buf_t *datum, bool *fallback)
{
    *fallback = true;
    *schema = NULL;
    json_t *j;
    cs_t *c;
    if (infer_payload(d, p, &j, &c) < 0)
        return -1;
    if (!j)
        return 0;
    bool ok = json_datum(datum, c, j, true);
    json_decref(j);
    if (!ok) {
        /* A value its own (merged) schema does not fit, e.g. objects of
         * an array with one field as a number and as a string: Debezium's
         * conversion throws and the payload stays the string, as on the
         * JSON path (this was an "out of memory" that stopped the stream). */
        cs_free(c);
        return 0;
    }
    *fallback = false;
    *schema = c;
    return 0;
}

/* JsonConverter's JSON of the value JsonSchemaData.toConnectData makes of
 * v for schema c: a struct's fields in the schema's order, each present
 * (null when v lacks it), numbers as their Connect type prints. false when
 * v does not fit c (or out of memory). */
static bool json_text(outboxd_buf_t *o, const cs_t *c, const json_t *v)
{
    if (!v || json_is_null(v))
        return outboxd_buf_append_str(o, "null");
    switch (c->type) {
    case CS_STRING:
        return json_is_string(v) && json_str(o, json_string_value(v), json_string_length(v));
    case CS_BOOL:
        return json_is_boolean(v) && outboxd_buf_append_str(o, json_is_true(v) ? "true" : "false");
    case CS_INT16:
    case CS_INT32:
    case CS_INT64:
        return json_is_integer(v) &&
               outboxd_buf_printf(o, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    case CS_FLOAT32:
    case CS_FLOAT64:
        return json_is_number(v) && java_double(o, json_number_value(v));
    case CS_BYTES:
        return false; /* only ever null */
    case CS_ARRAY: {
        if (!json_is_array(v))
            return false;
        bool ok = outboxd_buf_append(o, "[", 1);
        for (size_t i = 0; ok && i < json_array_size(v); i++)
            ok = (i == 0 || outboxd_buf_append(o, ",", 1)) &&
                 json_text(o, c->items, json_array_get(v, i));
        return ok && outboxd_buf_append(o, "]", 1);
    }
    case CS_STRUCT: {
        if (!json_is_object(v))
            return false;
        bool ok = outboxd_buf_append(o, "{", 1);
        for (size_t i = 0; ok && i < c->n; i++)
            ok = (i == 0 || outboxd_buf_append(o, ",", 1)) &&
                 json_str(o, c->fnames[i], strlen(c->fnames[i])) && outboxd_buf_append(o, ":", 1) &&
                 json_text(o, c->fields[i], json_object_get(v, c->fnames[i]));
        return ok && outboxd_buf_append(o, "}", 1);
    }
    }
    return false;
}

int outboxd_dbz_expand_json(const char *v, size_t len, bool keep_nulls, outboxd_buf_t *out,
                            char *reason, size_t reason_size)
{
    (void)reason;
    (void)reason_size;
    size_t at = out->len;
    /* Debezium expands only a text that starts with { or [ and parses;
     * otherwise (a jsonb scalar, text that is not JSON: Debezium logs a
     * warning) the payload stays the string. */
    json_t *j = NULL;
    if (len > 0 && (v[0] == '{' || v[0] == '['))
        j = json_loadb(v, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!j)
        return json_str(out, v, len) ? 0 : -1;
    bool ok;
    if (json_is_array(j)) {
        /* A top-level array: printed as Jackson does (not through a
         * Connect schema; see README, expanded payload corner cases). */
        ok = dump_json(j, keep_nulls, out);
    } else {
        outboxd_dbz_t d = {.keep_null_fields = keep_nulls};
        cs_t *c = json_schema(&d, "payload", j);
        if (!c) {
            json_decref(j);
            return -1;
        }
        if (c == EXPAND_FAILS || c == &skip_field) {
            /* JsonSchemaData refused it (an empty or mixed array, one of
             * only nulls, ...): Debezium keeps the string. */
            ok = json_str(out, v, len);
        } else {
            ok = json_text(out, c, j);
            cs_free(c);
            if (!ok) {
                out->len = at; /* a value its own schema does not fit */
                ok = json_str(out, v, len);
            }
        }
    }
    json_decref(j);
    return ok ? 0 : -1;
}

/* ---- key and value ---- */

/* The key column's schema, or NULL with *rc: 1 (a type no schema is
 * rendered for, reason naming it and conv) or -1 (OOM). */
static cs_t *key_schema(const outboxd_dbz_t *d, const outboxd_dbz_field_t *key, const char *conv,
                        int *rc, char *reason, size_t reason_size)
{
    bool unsupported;
    cs_t *c = column_schema(d, key->name, key->type_oid, &unsupported);
    *rc = c ? 0 : unsupported ? 1 : -1;
    if (*rc == 1)
        snprintf(reason, reason_size,
                 "key column '%s' has a type (oid %u) outboxd does not render through %s (text, "
                 "varchar, uuid, json, integers, floats, boolean, bytea)",
                 key->name, key->type_oid, conv);
    return c;
}

int outboxd_dbz_avro_key(const outboxd_dbz_t *d, const outboxd_dbz_field_t *key,
                         outboxd_buf_t *schema, outboxd_buf_t *datum, char *reason,
                         size_t reason_size)
{
    outboxd_buf_reset(schema);
    outboxd_buf_reset(datum);
    int krc;
    cs_t *c = key_schema(d, key, "an AvroConverter", &krc, reason, reason_size);
    if (!c)
        return krc;
    int rc = avro_schema(schema, c, NULL, true) && outboxd_buf_append(schema, "", 1) ? 0 : -1;
    if (rc == 0) {
        schema->len--;
        rc = column_value(datum, c, key, reason, reason_size);
    }
    cs_free(c);
    return rc;
}

/* The routed name of the value record, first one per key (see debezium.h). */
static const char *struct_route(outboxd_dbz_t *d, const char *key, const char *routed)
{
    for (size_t i = 0; i < d->n_names; i++)
        if (strcmp(d->name_keys[i], key) == 0)
            return d->name_vals[i];
    if (d->n_names >= 10000) /* Debezium's cache is as large (LRU) */
        return routed;
    char **k = realloc(d->name_keys, (d->n_names + 1) * sizeof(char *));
    if (k)
        d->name_keys = k;
    char **v = k ? realloc(d->name_vals, (d->n_names + 1) * sizeof(char *)) : NULL;
    if (v)
        d->name_vals = v;
    char *ks = strdup(key), *vs = strdup(routed);
    if (!k || !v || !ks || !vs) {
        free(ks);
        free(vs);
        return routed; /* not remembered: only a later row's name can differ */
    }
    d->name_keys[d->n_names] = ks;
    d->name_vals[d->n_names++] = vs;
    return vs;
}

/*
 * The value struct of envelope placements: {payload (pc, owned from here
 * on, also on failure), the envelope columns...}, named
 * <prefix>.<schema>.<table>.<route>.Value after the first row of its payload
 * schema (or version) since start, as Debezium's cache does, and versioned
 * by the schema version column. conv names the converter in reasons. 0 with
 * *out; 1 with reason (a row Debezium could not convert); -1 (OOM).
 */
/* The column of an envelope field (env fields are named by their alias). */
static const char *env_column(const outboxd_dbz_t *d, const char *alias)
{
    for (size_t i = 0; i < d->n_places; i++)
        if (d->places[i].where == OUTBOXD_DBZ_ENVELOPE && strcmp(d->places[i].alias, alias) == 0)
            return d->places[i].column;
    return alias;
}

static int value_struct(outboxd_dbz_t *d, const char *table, const char *routed, cs_t *pc,
                        const outboxd_dbz_field_t *env, size_t n_env,
                        const outboxd_dbz_field_t *version, const char *conv, cs_t **out,
                        char *reason, size_t reason_size)
{
    *out = NULL;
    int rc = -1;
    cs_t *st = NULL;
    outboxd_buf_t key = {0}, ptext = {0}, name = {0};
    bool has_version = version && version->data, unsupported;
    long ver = 0;
    if (has_version) {
        char tmp[32], *end;
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(version->len < 31 ? version->len : 31),
                 version->data);
        ver = strtol(tmp, &end, 10);
        if (*end || version->type_oid != OID_INT4) {
            snprintf(reason, reason_size,
                     "table.field.event.schema.version column '%s' must be an int4 column "
                     "(Debezium reads it as INT32)",
                     version->name);
            rc = 1;
            goto out;
        }
    }
    if (d->col_version) {
        if (!outboxd_buf_printf(&key, "v:%ld:%d", ver, has_version))
            goto out;
    } else if (!avro_schema(&ptext, pc, NULL, false) || !outboxd_buf_append_str(&key, "p:") ||
               !outboxd_buf_append(&key, ptext.data, ptext.len)) {
        goto out;
    }
    if (!outboxd_buf_append(&key, "", 1))
        goto out;
    const char *route = struct_route(d, key.data, routed);
    if (!outboxd_buf_printf(&name, "%s%s%s.%s.Value", d->topic_prefix, *d->topic_prefix ? "." : "",
                            table, route))
        goto out;
    if (!(st = cs_new(CS_STRUCT, false, name.data, 0)))
        goto out;
    if (has_version) {
        /* SchemaBuilder.version(): Connect's version, any int (a version
         * of 0 or less is still one). */
        st->version = (int)ver;
        st->has_version = true;
    }
    bool added = cs_add(st, "payload", pc);
    pc = NULL;
    if (!added)
        goto out;
    for (size_t i = 0; i < n_env; i++) {
        /* outboxd.columns.not.null names columns, not their aliases */
        cs_t *f = column_schema(d, env_column(d, env[i].name), env[i].type_oid, &unsupported);
        if (!f && unsupported) {
            snprintf(reason, reason_size,
                     "envelope column '%s' has a type (oid %u) outboxd does not render through "
                     "%s (text, varchar, uuid, json, integers, floats, boolean, bytea)",
                     env[i].name, env[i].type_oid, conv);
            rc = 1;
            goto out;
        }
        if (!f || !cs_add(st, env[i].name, f))
            goto out;
    }
    *out = st;
    st = NULL;
    rc = 0;
out:
    cs_free(pc);
    cs_free(st);
    outboxd_buf_free(&key);
    outboxd_buf_free(&ptext);
    outboxd_buf_free(&name);
    return rc;
}

int outboxd_dbz_avro_value(outboxd_dbz_t *d, const char *table, const char *routed,
                           const outboxd_dbz_field_t *payload, const outboxd_dbz_field_t *env,
                           size_t n_env, const outboxd_dbz_field_t *version, outboxd_buf_t *schema,
                           outboxd_buf_t *datum, bool *tombstone, char *reason, size_t reason_size)
{
    outboxd_buf_reset(schema);
    outboxd_buf_reset(datum);
    bool has_env = false;
    for (size_t i = 0; i < d->n_places; i++)
        has_env = has_env || d->places[i].where == OUTBOXD_DBZ_ENVELOPE;
    /* Without envelope placements the value is the payload, and a null
     * payload a null value, which the converter writes as a null record
     * value, whatever route.tombstone.on.empty.payload says (which also
     * makes an empty or blank text one). */
    *tombstone = (!payload->data && !has_env) || (d->tombstone_on_empty && empty_payload(payload));
    if (*tombstone)
        return 0;
    int rc = -1;
    cs_t *pc = NULL, *st = NULL;
    outboxd_buf_t pdatum = {0};
    bool fallback = true, unsupported;
    if (d->expand_json && payload->data && payload->type_oid != OID_BYTEA) {
        if (expand_avro(d, payload, &pc, &pdatum, &fallback) < 0)
            goto out;
    }
    if (fallback) {
        outboxd_buf_reset(&pdatum);
        pc = column_schema(d, payload->name, payload->type_oid, &unsupported);
        if (!pc && unsupported) {
            snprintf(reason, reason_size,
                     "payload column '%s' has a type (oid %u) outboxd does not render through "
                     "an AvroConverter (jsonb, json, text, varchar, bytea)",
                     payload->name, payload->type_oid);
            rc = 1;
            goto out;
        }
        if (!pc)
            goto out;
        /* the datum without a union index, as the expanded one */
        if (payload->data) {
            rc = column_datum(&pdatum, pc, payload->data, payload->len, payload->name, reason,
                              reason_size);
            if (rc != 0)
                goto out;
            rc = -1;
        }
    }
    if (!avro_names_ok(pc, reason, reason_size)) {
        rc = 1;
        goto out;
    }
    if (!has_env) {
        /* The payload is the value: a record's own schema, or the
         * (optional) string's union. */
        if (!avro_schema(schema, pc, NULL, true) ||
            (pc->type != CS_STRUCT && pc->optional && !outboxd_avro_write_long(datum, 1)) ||
            !outboxd_buf_append(datum, pdatum.data ? pdatum.data : "", pdatum.len))
            goto out;
        rc = 0;
        goto out;
    }
    rc = value_struct(d, table, routed, pc, env, n_env, version, "an AvroConverter", &st, reason,
                      reason_size);
    pc = NULL;
    if (rc != 0)
        goto out;
    rc = -1;
    if (!avro_names_ok(st, reason, reason_size)) {
        rc = 1;
        goto out;
    }
    if (!avro_schema(schema, st, NULL, true))
        goto out;
    /* payload: optional in the struct (a union) */
    if (st->fields[0]->optional) {
        if (!payload->data) {
            if (!outboxd_avro_write_long(datum, 0))
                goto out;
        } else if (!outboxd_avro_write_long(datum, 1)) {
            goto out;
        }
    } else if (!payload->data) {
        snprintf(reason, reason_size,
                 "payload column '%s' is NULL but listed in outboxd.columns.not.null",
                 payload->name);
        rc = 1;
        goto out;
    }
    if (payload->data && !outboxd_buf_append(datum, pdatum.data ? pdatum.data : "", pdatum.len))
        goto out;
    for (size_t i = 0; i < n_env; i++) {
        rc = column_value(datum, st->fields[i + 1], &env[i], reason, reason_size);
        if (rc != 0)
            goto out;
    }
    rc = 0;
out:
    if (rc == 0 && !outboxd_buf_append(schema, "", 1))
        rc = -1;
    if (rc == 0)
        schema->len--;
    cs_free(pc);
    cs_free(st);
    outboxd_buf_free(&pdatum);
    return rc;
}

/* ---- JsonConverter with schemas.enable (its default) ---- */

static const char *connect_type(cs_type_t t)
{
    switch (t) {
    case CS_STRING:
        return "string";
    case CS_INT16:
        return "int16";
    case CS_INT32:
        return "int32";
    case CS_INT64:
        return "int64";
    case CS_FLOAT32:
        return "float";
    case CS_FLOAT64:
        return "double";
    case CS_BOOL:
        return "boolean";
    case CS_BYTES:
        return "bytes";
    case CS_ARRAY:
        return "array";
    case CS_STRUCT:
        return "struct";
    }
    return "string";
}

/* A Connect schema as JsonConverter.asJsonSchema writes it: type (with its
 * fields or items), optional, name, version; fname, a struct field's name,
 * last ("field"). */
static bool connect_schema_json(outboxd_buf_t *o, const cs_t *c, const char *fname)
{
    bool ok = outboxd_buf_printf(o, "{\"type\":\"%s\"", connect_type(c->type));
    if (c->type == CS_ARRAY)
        ok = ok && outboxd_buf_append_str(o, ",\"items\":") &&
             connect_schema_json(o, c->items, NULL);
    if (c->type == CS_STRUCT) {
        ok = ok && outboxd_buf_append_str(o, ",\"fields\":[");
        for (size_t i = 0; ok && i < c->n; i++)
            ok = (i == 0 || outboxd_buf_append(o, ",", 1)) &&
                 connect_schema_json(o, c->fields[i], c->fnames[i]);
        ok = ok && outboxd_buf_append(o, "]", 1);
    }
    ok = ok && outboxd_buf_printf(o, ",\"optional\":%s", c->optional ? "true" : "false");
    if (c->name)
        ok = ok && outboxd_buf_append_str(o, ",\"name\":") && json_str(o, c->name, strlen(c->name));
    if (c->has_version)
        ok = ok && outboxd_buf_printf(o, ",\"version\":%d", c->version);
    if (fname)
        ok = ok && outboxd_buf_append_str(o, ",\"field\":") && json_str(o, fname, strlen(fname));
    return ok && outboxd_buf_append(o, "}", 1);
}

/* A column's value under its schema c: null for SQL NULL, or 1 (reason)
 * when c says the column is NOT NULL (JsonConverter refuses a null for a
 * required schema). */
static int column_json_checked(outboxd_buf_t *o, const cs_t *c, const outboxd_dbz_field_t *f,
                               char *reason, size_t reason_size)
{
    if (!f->data && !c->optional) {
        snprintf(reason, reason_size, "column '%s' is NULL but listed in outboxd.columns.not.null",
                 f->name);
        return 1;
    }
    return column_json(o, f->data, f->len, f->type_oid) ? 0 : -1;
}

int outboxd_dbz_schema_key(const outboxd_dbz_t *d, const outboxd_dbz_field_t *key,
                           outboxd_buf_t *out, char *reason, size_t reason_size)
{
    outboxd_buf_reset(out);
    int krc;
    cs_t *c = key_schema(d, key, "a JsonConverter with schemas.enable", &krc, reason, reason_size);
    if (!c)
        return krc;
    int rc = outboxd_buf_append_str(out, "{\"schema\":") && connect_schema_json(out, c, NULL) &&
                     outboxd_buf_append_str(out, ",\"payload\":")
                 ? column_json_checked(out, c, key, reason, reason_size)
                 : -1;
    if (rc == 0 && !outboxd_buf_append(out, "}", 1))
        rc = -1;
    cs_free(c);
    return rc;
}

/* The expanded payload's schema and JSON text, or *fallback where
 * Debezium's expansion fails and the payload stays the string (as
 * expand_avro; a top-level array is one: JsonSchemaData makes a Struct of
 * its schema, which throws). */
static int expand_text(const outboxd_dbz_t *d, const outboxd_dbz_field_t *p, cs_t **schema,
                       outboxd_buf_t *text, bool *fallback)
{
    *fallback = true;
    *schema = NULL;
    json_t *j;
    cs_t *c;
    if (infer_payload(d, p, &j, &c) < 0)
        return -1;
    if (!j)
        return 0;
    size_t at = text->len;
    if (json_text(text, c, j)) {
        *schema = c;
        *fallback = false;
    } else {
        text->len = at; /* a value its own schema does not fit: the string */
        cs_free(c);
    }
    json_decref(j);
    return 0;
}

int outboxd_dbz_schema_value(outboxd_dbz_t *d, const char *table, const char *routed,
                             const outboxd_dbz_field_t *payload, const outboxd_dbz_field_t *env,
                             size_t n_env, const outboxd_dbz_field_t *version, outboxd_buf_t *out,
                             bool *tombstone, char *reason, size_t reason_size)
{
    /* A bytea payload alone through BinaryDataConverter: its bytes; and
     * without JsonConverter's schemas the value has none. */
    if (!d->value_schemas || (d->value_bytes && n_env == 0 && payload->type_oid == OID_BYTEA))
        return outboxd_dbz_value(d, payload, env, n_env, out, tombstone, reason, reason_size);
    outboxd_buf_reset(out);
    /* A null value has a schema here (the payload's, or the struct), so a
     * NULL payload is a tombstone only with the option, as with Debezium. */
    *tombstone = d->tombstone_on_empty && empty_payload(payload);
    if (*tombstone)
        return 0;
    int rc = -1;
    cs_t *pc = NULL, *st = NULL;
    outboxd_buf_t ptext = {0};
    bool fallback = true, unsupported;
    if (d->expand_json && payload->data && payload->type_oid != OID_BYTEA &&
        expand_text(d, payload, &pc, &ptext, &fallback) < 0)
        goto out;
    if (fallback) {
        pc = column_schema(d, payload->name, payload->type_oid, &unsupported);
        if (!pc && unsupported) {
            snprintf(reason, reason_size,
                     "payload column '%s' has a type (oid %u) outboxd does not render through a "
                     "JsonConverter with schemas.enable (jsonb, json, text, varchar, bytea)",
                     payload->name, payload->type_oid);
            rc = 1;
            goto out;
        }
        if (!pc)
            goto out;
        outboxd_buf_reset(&ptext);
        rc = column_json_checked(&ptext, pc, payload, reason, reason_size);
        if (rc != 0)
            goto out;
        rc = -1;
    }
    bool has_env = false;
    for (size_t i = 0; i < d->n_places; i++)
        has_env = has_env || d->places[i].where == OUTBOXD_DBZ_ENVELOPE;
    if (!has_env) {
        if (outboxd_buf_append_str(out, "{\"schema\":") && connect_schema_json(out, pc, NULL) &&
            outboxd_buf_append_str(out, ",\"payload\":") &&
            outboxd_buf_append(out, ptext.data ? ptext.data : "", ptext.len) &&
            outboxd_buf_append(out, "}", 1))
            rc = 0;
        goto out;
    }
    rc = value_struct(d, table, routed, pc, env, n_env, version,
                      "a JsonConverter with schemas.enable", &st, reason, reason_size);
    pc = NULL;
    if (rc != 0)
        goto out;
    rc = -1;
    if (!outboxd_buf_append_str(out, "{\"schema\":") || !connect_schema_json(out, st, NULL) ||
        !outboxd_buf_append_str(out, ",\"payload\":{\"payload\":") ||
        !outboxd_buf_append(out, ptext.data ? ptext.data : "", ptext.len))
        goto out;
    for (size_t i = 0; i < n_env; i++) {
        if (!outboxd_buf_append(out, ",", 1) || !json_str(out, env[i].name, strlen(env[i].name)) ||
            !outboxd_buf_append(out, ":", 1))
            goto out;
        rc = column_json_checked(out, st->fields[i + 1], &env[i], reason, reason_size);
        if (rc != 0)
            goto out;
        rc = -1;
    }
    if (outboxd_buf_append_str(out, "}}"))
        rc = 0;
out:
    cs_free(pc);
    cs_free(st);
    outboxd_buf_free(&ptext);
    return rc;
}

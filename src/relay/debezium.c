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
 *   route.tombstone.on.empty.payload);
 * - headers: "id" and the header placements (SimpleHeaderConverter);
 * - timestamp: table.field.event.timestamp (a timestamp column) in ms.
 */
#include "outboxd/relay/debezium.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* PostgreSQL type oids whose rendering differs from their text. */
#define OID_BOOL   16
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

/*
 * Translates the subset of java.util.regex that topic regexes use: named
 * groups (?<name>...), non-capturing groups (?:...) (made capturing, group
 * numbers mapped back), \d \w \s. names[j] / map[j]: the POSIX group of Java
 * group j (1-based). Other (? constructs are refused.
 */
static int translate_regex(const char *java, outboxd_buf_t *ere, char ***names, int **map,
                           size_t *n_java, char *errstr, size_t errstr_size)
{
    int posix = 1; /* group 1 is the whole-match anchor group added below */
    outboxd_buf_append_str(ere, "^(");
    for (const char *p = java; *p; p++) {
        if (*p == '\\' && p[1]) {
            p++;
            const char *cls = *p == 'd'   ? "[0-9]"
                              : *p == 'w' ? "[A-Za-z0-9_]"
                              : *p == 's' ? "[[:space:]]"
                                          : NULL;
            if (cls)
                outboxd_buf_append_str(ere, cls);
            else {
                char e[2] = {'\\', *p};
                outboxd_buf_append(ere, e, 2);
            }
            continue;
        }
        if (*p == '[') { /* copy a bracket expression as is */
            const char *q = p + 1;
            if (*q == '^')
                q++;
            if (*q == ']')
                q++;
            while (*q && *q != ']')
                q++;
            if (!*q) {
                snprintf(errstr, errstr_size, "unbalanced [ in '%.200s'", java);
                return -1;
            }
            outboxd_buf_append(ere, p, (size_t)(q - p + 1));
            p = q;
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

static int parse_placements(outboxd_dbz_t *d, const char *key, const char *v, char *errstr,
                            size_t errstr_size)
{
    char *copy = strdup(v), *save = NULL;
    if (!copy)
        goto oom;
    for (char *item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*item))
            item++;
        char *end = item + strlen(item);
        while (end > item && isspace((unsigned char)end[-1]))
            *--end = '\0';
        if (!*item)
            continue;
        char *col = item, *where = strchr(item, ':'), *alias = NULL;
        if (where) {
            *where++ = '\0';
            alias = strchr(where, ':');
            if (alias)
                *alias++ = '\0';
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

static int parse_converter(const char *key, const char *v, bool *json, char *errstr,
                           size_t errstr_size)
{
    if (strcmp(v, "org.apache.kafka.connect.json.JsonConverter") == 0)
        *json = true;
    else if (strcmp(v, "org.apache.kafka.connect.storage.StringConverter") == 0)
        *json = false;
    else {
        snprintf(errstr, errstr_size,
                 "%s: '%.200s' is not supported (expected "
                 "org.apache.kafka.connect.storage.StringConverter or "
                 "org.apache.kafka.connect.json.JsonConverter; for Avro use value_format: "
                 "payload with a schema registry)",
                 key, v);
        return -1;
    }
    return 0;
}

/* Properties accepted and ignored: they change nothing in the records. */
static const char *const ignored_props[] = {
    "type",                             /* io.debezium.transforms.outbox.EventRouter */
    "table.op.invalid.behavior",        /* updates: tables[].on_update decides */
    "table.field.event.schema.version", /* a Connect schema version: no bytes with these converters
                                         */
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
        else if (strcmp(k, "key.converter") == 0)
            rc = parse_converter(k, v, &d->key_json, errstr, errstr_size);
        else if (strcmp(k, "value.converter") == 0) {
            rc = parse_converter(k, v, &d->value_json, errstr, errstr_size);
            have_value_conv = true;
        } else if (strcmp(k, "key.converter.schemas.enable") == 0 ||
                   strcmp(k, "value.converter.schemas.enable") == 0) {
            if (strcmp(v, "false") != 0) {
                snprintf(errstr, errstr_size,
                         "%s: only false is supported (JSON with an inline Connect schema is "
                         "not produced by outboxd)",
                         k);
                rc = -1;
            }
        } else {
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
                 "value.converter is required (org.apache.kafka.connect.storage.StringConverter "
                 "or org.apache.kafka.connect.json.JsonConverter, as in the connector config)");
        goto fail;
    }
    for (size_t i = 0; i < d->n_places; i++)
        if (d->places[i].where == OUTBOXD_DBZ_ENVELOPE && !d->value_json) {
            snprintf(errstr, errstr_size,
                     "table.fields.additional.placement: %s:envelope needs value.converter "
                     "JsonConverter (with StringConverter Debezium writes Connect's Struct "
                     "toString(), which no consumer should parse)",
                     d->places[i].column);
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
    regmatch_t m[32];
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

/* A double as Java's Double.toString prints it: the shortest digits that
 * read back as the same double; plain between 1e-3 and 1e7, else
 * d.dddE[-]n. */
static bool java_double(outboxd_buf_t *out, double x)
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
        if (strtod(e, NULL) == x)
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

int outboxd_dbz_expand_json(const char *v, size_t len, bool keep_nulls, outboxd_buf_t *out,
                            char *reason, size_t reason_size)
{
    json_error_t jerr;
    /* jsonb keeps its keys in one order; jansson keeps insertion order. */
    json_t *j = json_loadb(v, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!j) {
        snprintf(reason, reason_size,
                 "payload is not JSON, which table.expand.json.payload needs: %s (at offset %d)",
                 jerr.text, jerr.position);
        return 1;
    }
    bool ok = dump_json(j, keep_nulls, out);
    json_decref(j);
    return ok ? 0 : -1;
}

/* A column value as a JSON value of the Connect type Debezium gives it:
 * integers and booleans as such, floats as Java doubles, others strings. */
static bool column_json(outboxd_buf_t *out, const char *v, size_t len, uint32_t oid)
{
    if (!v)
        return outboxd_buf_append_str(out, "null");
    if (is_int_type(oid))
        return outboxd_buf_append(out, v, len);
    if (oid == OID_BOOL)
        return outboxd_buf_append_str(out, len && v[0] == 't' ? "true" : "false");
    if (oid == OID_FLOAT4 || oid == OID_FLOAT8) {
        char tmp[64];
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(len < 63 ? len : 63), v);
        return java_double(out, strtod(tmp, NULL));
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
    if (type_oid == OID_BOOL)
        ok = outboxd_buf_append_str(out, len && v[0] == 't' ? "true" : "false");
    else
        ok = outboxd_buf_append(out, v, len);
    return ok ? 0 : -1;
}

/* The payload as a JSON value (the JsonConverter side). */
static int payload_json(const outboxd_dbz_t *d, const outboxd_dbz_field_t *p, outboxd_buf_t *out,
                        char *reason, size_t reason_size)
{
    if (!p->data)
        return outboxd_buf_append_str(out, "null") ? 0 : -1;
    if (d->expand_json)
        return outboxd_dbz_expand_json(p->data, p->len, d->keep_null_fields, out, reason,
                                       reason_size);
    return json_str(out, p->data, p->len) ? 0 : -1;
}

int outboxd_dbz_value(const outboxd_dbz_t *d, const outboxd_dbz_field_t *payload,
                      const outboxd_dbz_field_t *env, size_t n_env, outboxd_buf_t *out,
                      bool *tombstone, char *reason, size_t reason_size)
{
    outboxd_buf_reset(out);
    /* StringConverter renders a null value as a null record value, so a
     * NULL payload is a tombstone with it whatever the option says. */
    *tombstone = !payload->data && (d->tombstone_on_empty || !d->value_json);
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

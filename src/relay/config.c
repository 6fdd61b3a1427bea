/*
 * YAML configuration loader.
 *
 * The text is read with libyaml's event API into a small tree of nodes that
 * remember their line numbers (the document API loses them after loading and
 * resolves aliases silently). The tree is then walked with one key table per
 * mapping (key, kind, field offset, default, range), in the style of
 * pgbouncer's config tables; what a table cannot express (lists, derived
 * defaults, cross-source checks) is done by small custom functions.
 *
 * The first error stops the load. Every error is one line:
 *   FILE:LINE: KEY.PATH: what is wrong (expected ...)
 * Errors that belong to no key (YAML syntax, an empty file, a second
 * document) have no KEY.PATH part.
 *
 * Environment variables: every scalar value except topic templates goes
 * through ${NAME} / ${NAME:-default} expansion, with $$ for a literal $.
 * Keys are never expanded.
 *
 * YAML aliases (*name) are rejected: a config that reads the same in every
 * place is easier to review, and the error can then point at the right line.
 * Anchors (&name) without aliases have no effect and are ignored.
 */
#include "outboxd/relay/config.h"
#include "outboxd/common/registry.h"
#include "outboxd/relay/debezium.h"
#include "outboxd/common/util.h"

#include <ctype.h>
#include <errno.h>
#include <libpq-fe.h>
#include <regex.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define MAX_DEPTH        32
#define MAX_KEYS         64 /* keys of one mapping (the relay: section has the most) */
#define PATH_LEN         256
#define MAX_FILE_BYTES   (16u * 1024 * 1024)
#define MAX_SECRET_BYTES 65536
#define PG_NAME_MAX      63 /* NAMEDATALEN - 1 */
#define TOPIC_NAME_MAX   249
/* Producers use "<prefix>.<source>" and "<prefix>.<source>.<n>" (source
 * names are at most PG_NAME_MAX and have no dots, so ids of two sources never
 * collide); the prefix bound keeps every id and the checkpoint reader's group
 * id well inside the sink's buffers and Kafka's limits, never truncated. */
#define TXN_PREFIX_MAX 128

#define DEFAULT_TOPIC_TEMPLATE "outbox.event.${aggregatetype}"

/* Enum fields are written through an int pointer by the key tables. */
_Static_assert(sizeof(outboxd_table_mode_t) == sizeof(int), "enum size");
_Static_assert(sizeof(outboxd_update_policy_t) == sizeof(int), "enum size");
_Static_assert(sizeof(outboxd_missing_topic_t) == sizeof(int), "enum size");

/* ---- parse tree ---------------------------------------------------------- */

typedef enum { N_SCALAR, N_MAP, N_SEQ, N_ALIAS } node_type_t;

typedef struct node {
    node_type_t type;
    int line;
    char *value; /* scalar text, or the alias name */
    size_t len;
    bool plain; /* plain (unquoted) scalar: only these can be null */
    /* N_MAP: key, value, key, value, ...; N_SEQ: the items */
    struct node **kids;
    size_t n_kids;
    size_t cap_kids;
} node_t;

typedef struct ctx {
    const char *name; /* file name for messages */
    const char *text;
    size_t text_len;
    char *err;
    size_t err_size;
} ctx_t;

__attribute__((format(printf, 4, 5))) static bool fail(ctx_t *c, int line, const char *path,
                                                       const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!c->err || c->err_size == 0)
        return false;
    if (path && *path)
        snprintf(c->err, c->err_size, "%s:%d: %s: %s", c->name, line, path, msg);
    else
        snprintf(c->err, c->err_size, "%s:%d: %s", c->name, line, msg);
    /* Values from the file are quoted in messages; a control character in
     * one (a "\n" escape, say) must not break the one-line promise. */
    for (char *p = c->err; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    }
    return false;
}

static bool oom(ctx_t *c, int line, const char *path)
{
    return fail(c, line, path, "out of memory");
}

static void node_free(node_t *n)
{
    if (!n)
        return;
    for (size_t i = 0; i < n->n_kids; i++)
        node_free(n->kids[i]);
    free(n->kids);
    free(n->value);
    free(n);
}

static bool node_add(node_t *n, node_t *kid)
{
    if (n->n_kids == n->cap_kids) {
        size_t cap = n->cap_kids ? n->cap_kids * 2 : 8;
        node_t **k = realloc(n->kids, cap * sizeof(*k));
        if (!k)
            return false;
        n->kids = k;
        n->cap_kids = cap;
    }
    n->kids[n->n_kids++] = kid;
    return true;
}

/* Line and column of a byte offset, for reader errors that carry no mark. */
static void offset_position(const ctx_t *c, size_t offset, int *line, int *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < offset && i < c->text_len; i++) {
        if (c->text[i] == '\n') {
            (*line)++;
            *col = 1;
        } else {
            (*col)++;
        }
    }
}

static bool syntax_error(ctx_t *c, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR)
        return fail(c, 1, NULL, "out of memory while parsing YAML");
    int line, col;
    size_t index;
    if (p->error == YAML_READER_ERROR) {
        index = p->problem_offset;
        offset_position(c, index, &line, &col);
    } else {
        index = p->problem_mark.index;
        line = (int)p->problem_mark.line + 1;
        col = (int)p->problem_mark.column + 1;
    }
    const char *problem = p->problem ? p->problem : "unknown error";
    /* libyaml's message for a tab in indentation ("found character that
     * cannot start any token") does not say what the character is. */
    const char *hint = "";
    if (index < c->text_len && c->text[index] == '\t')
        hint = "; tabs cannot be used for indentation, use spaces";
    if (p->context)
        return fail(c, line, NULL, "yaml syntax error: %s (column %d%s) %s started at line %d",
                    problem, col, hint, p->context, (int)p->context_mark.line + 1);
    return fail(c, line, NULL, "yaml syntax error: %s (column %d%s)", problem, col, hint);
}

static bool next_event(ctx_t *c, yaml_parser_t *p, yaml_event_t *ev)
{
    if (!yaml_parser_parse(p, ev))
        return syntax_error(c, p);
    return true;
}

/* Builds the node that starts with ev (which the caller deletes). */
static node_t *build(ctx_t *c, yaml_parser_t *p, const yaml_event_t *ev, int depth)
{
    int line = (int)ev->start_mark.line + 1;
    node_t *n = calloc(1, sizeof(*n));
    if (!n) {
        oom(c, line, NULL);
        return NULL;
    }
    n->line = line;
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        n->type = N_ALIAS;
        n->value = strdup((const char *)ev->data.alias.anchor);
        if (!n->value)
            goto nomem;
        return n;
    case YAML_SCALAR_EVENT:
        n->type = N_SCALAR;
        n->len = ev->data.scalar.length;
        n->value = outboxd_strndup((const char *)ev->data.scalar.value, n->len);
        if (!n->value)
            goto nomem;
        n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        return n;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        n->type = ev->type == YAML_SEQUENCE_START_EVENT ? N_SEQ : N_MAP;
        yaml_event_type_t end = n->type == N_SEQ ? YAML_SEQUENCE_END_EVENT : YAML_MAPPING_END_EVENT;
        /* Recursion is bounded so that hostile input cannot exhaust the stack;
         * a valid config is four levels deep. */
        if (depth >= MAX_DEPTH) {
            fail(c, line, NULL, "nesting deeper than %d levels", MAX_DEPTH);
            goto err;
        }
        for (;;) {
            yaml_event_t e;
            if (!next_event(c, p, &e))
                goto err;
            if (e.type == end) {
                yaml_event_delete(&e);
                break;
            }
            node_t *kid = build(c, p, &e, depth + 1);
            yaml_event_delete(&e);
            if (!kid)
                goto err;
            if (!node_add(n, kid)) {
                node_free(kid);
                goto nomem;
            }
        }
        return n;
    }
    default:
        fail(c, line, NULL, "yaml syntax error: unexpected event %d", (int)ev->type);
        goto err;
    }
nomem:
    oom(c, line, NULL);
err:
    node_free(n);
    return NULL;
}

/* Returns the root node of the single document, or NULL with the error set. */
static node_t *load_tree(ctx_t *c)
{
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        oom(c, 1, NULL);
        return NULL;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)c->text, c->text_len);
    node_t *root = NULL;
    bool ok = false;
    for (;;) {
        yaml_event_t ev;
        if (!next_event(c, &p, &ev))
            break;
        yaml_event_type_t t = ev.type;
        int line = (int)ev.start_mark.line + 1;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            ok = true;
            break;
        }
        if (t == YAML_STREAM_START_EVENT || t == YAML_DOCUMENT_END_EVENT) {
            yaml_event_delete(&ev);
            continue;
        }
        if (t == YAML_DOCUMENT_START_EVENT) {
            yaml_event_delete(&ev);
            if (root) {
                fail(c, line, NULL,
                     "a second YAML document (expected a single document; remove the '---')");
                break;
            }
            continue;
        }
        root = build(c, &p, &ev, 0);
        yaml_event_delete(&ev);
        if (!root)
            break;
    }
    yaml_parser_delete(&p);
    if (!ok) {
        node_free(root);
        return NULL;
    }
    if (!root)
        fail(c, 1, NULL, "empty configuration (expected a mapping with kafka and sources)");
    return root;
}

/* ---- typed access to nodes ---------------------------------------------- */

static bool is_null(const node_t *n)
{
    return n->type == N_SCALAR && n->plain &&
           (n->len == 0 || strcmp(n->value, "~") == 0 || strcmp(n->value, "null") == 0 ||
            strcmp(n->value, "Null") == 0 || strcmp(n->value, "NULL") == 0);
}

static const char *node_kind(const node_t *n)
{
    switch (n->type) {
    case N_MAP:
        return "a mapping";
    case N_SEQ:
        return "a list";
    case N_ALIAS:
        return "an alias";
    default:
        return is_null(n) ? "an empty value" : "a scalar";
    }
}

static bool want(ctx_t *c, const node_t *n, node_type_t type, const char *path, int line,
                 const char *expected)
{
    if (n->type == N_ALIAS)
        return fail(c, n->line, path,
                    "YAML aliases (*%.64s) are not supported (expected %s written out in full)",
                    n->value, expected);
    if (n->type != type)
        return fail(c, line, path, "expected %s, got %s", expected, node_kind(n));
    return true;
}

/* Paths are built by hand: a truncated path is still a useful message, and
 * snprintf would draw -Wformat-truncation at -O2. */
static void append_path(char *out, size_t *len, const char *s)
{
    size_t n = strlen(s);
    if (n > PATH_LEN - 1 - *len)
        n = PATH_LEN - 1 - *len;
    memcpy(out + *len, s, n);
    *len += n;
    out[*len] = '\0';
}

static void join_key(char *out, const char *path, const char *key)
{
    size_t len = 0;
    out[0] = '\0';
    append_path(out, &len, path);
    if (*path)
        append_path(out, &len, ".");
    append_path(out, &len, key);
}

static void join_index(char *out, const char *path, size_t i)
{
    char idx[32];
    size_t len = 0;
    snprintf(idx, sizeof(idx), "[%zu]", i);
    out[0] = '\0';
    append_path(out, &len, path);
    append_path(out, &len, idx);
}

static bool is_var_start(char ch)
{
    return isalpha((unsigned char)ch) || ch == '_';
}

static bool is_var_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '_';
}

/*
 * ${NAME} is the variable's value (an error if unset), ${NAME:-default} the
 * default when it is unset or empty (as in the shell), $$ a literal $. A $
 * followed by anything else is kept, so "pa$word" needs no escaping.
 */
static bool expand_env(ctx_t *c, const char *in, const char *path, int line, char **out)
{
    outboxd_buf_t b = {0};
    const char *p = in;
    *out = NULL;
    while (*p) {
        if (p[0] != '$' || (p[1] != '$' && p[1] != '{')) {
            const char *q = strchr(p + 1, '$');
            size_t n = q ? (size_t)(q - p) : strlen(p);
            if (!outboxd_buf_append(&b, p, n))
                goto nomem;
            p += n;
            continue;
        }
        if (p[1] == '$') {
            if (!outboxd_buf_append(&b, "$", 1))
                goto nomem;
            p += 2;
            continue;
        }
        const char *name = p + 2;
        const char *close = strchr(name, '}');
        if (!close) {
            fail(c, line, path,
                 "unterminated '${' (expected ${NAME} or ${NAME:-default}; write $$ for a "
                 "literal $)");
            goto err;
        }
        const char *end = name;
        while (end < close && !(end[0] == ':' && end[1] == '-'))
            end++;
        size_t name_len = (size_t)(end - name);
        bool valid = name_len > 0 && name_len < 128 && is_var_start(name[0]);
        for (size_t i = 1; valid && i < name_len; i++)
            valid = is_var_char(name[i]);
        if (!valid) {
            fail(c, line, path,
                 "invalid environment variable reference '%.*s' (expected ${NAME} or "
                 "${NAME:-default} with NAME made of letters, digits and _; write $$ for a "
                 "literal $)",
                 (int)(close - p + 1 > 100 ? 100 : close - p + 1), p);
            goto err;
        }
        char var[128];
        memcpy(var, name, name_len);
        var[name_len] = '\0';
        const char *val = getenv(var);
        size_t val_len = val ? strlen(val) : 0;
        if (end < close) {
            if (!val || !*val) {
                val = end + 2;
                val_len = (size_t)(close - val);
            }
        } else if (!val) {
            fail(c, line, path,
                 "environment variable %s is not set (expected it in the environment, or a "
                 "default as in ${%s:-default})",
                 var, var);
            goto err;
        }
        if (!outboxd_buf_append(&b, val, val_len))
            goto nomem;
        p = close + 1;
    }
    if (!b.data && !outboxd_buf_append(&b, "", 0))
        goto nomem;
    *out = b.data;
    return true;
nomem:
    oom(c, line, path);
err:
    outboxd_buf_free(&b);
    return false;
}

/*
 * A scalar as a new string. Null (an empty plain value, ~, null) is always an
 * error; an empty string (quoted, or from an empty variable) only when
 * allow_empty is false.
 */
static bool scalar_text(ctx_t *c, const node_t *n, const char *path, int line, const char *expected,
                        bool expand, bool allow_empty, char **out)
{
    *out = NULL;
    if (!want(c, n, N_SCALAR, path, line, expected))
        return false;
    if (is_null(n))
        return fail(c, line, path, "empty value (expected %s)", expected);
    if (strlen(n->value) != n->len)
        return fail(c, line, path, "contains a NUL character (expected %s)", expected);
    char *s;
    if (expand) {
        if (!expand_env(c, n->value, path, line, &s))
            return false;
    } else {
        s = strdup(n->value);
        if (!s)
            return oom(c, line, path);
    }
    if (!allow_empty && !*s) {
        free(s);
        return fail(c, line, path, "empty value (expected %s)", expected);
    }
    *out = s;
    return true;
}

static bool scalar_int(ctx_t *c, const node_t *n, const char *path, int line, long long min,
                       long long max, long long *out)
{
    char expected[96];
    snprintf(expected, sizeof(expected), "an integer between %lld and %lld", min, max);
    char *s;
    if (!scalar_text(c, n, path, line, expected, true, false, &s))
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    bool ok = (isdigit((unsigned char)s[0]) || s[0] == '-' || s[0] == '+') && *end == '\0';
    if (!ok) {
        fail(c, line, path, "expected %s, got '%.100s'", expected, s);
        free(s);
        return false;
    }
    if (errno == ERANGE || v < min || v > max) {
        fail(c, line, path, "%.100s is out of range (expected %s)", s, expected);
        free(s);
        return false;
    }
    free(s);
    *out = v;
    return true;
}

/* ---- value checks ---------------------------------------------------------- */

typedef bool (*check_fn)(ctx_t *c, const char *value, const char *path, int line);

static bool check_source_name(ctx_t *c, const char *v, const char *path, int line)
{
    size_t n = strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-");
    if (v[n] != '\0' || n > PG_NAME_MAX)
        return fail(c, line, path,
                    "invalid source name '%.100s' (expected letters, digits, _ and -, at most %d "
                    "characters)",
                    v, PG_NAME_MAX);
    return true;
}

static bool check_slot(ctx_t *c, const char *v, const char *path, int line)
{
    size_t n = strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789_");
    if (v[n] != '\0' || n > PG_NAME_MAX)
        return fail(c, line, path,
                    "invalid replication slot name '%.100s' (expected lowercase letters, digits "
                    "and _, at most %d characters)",
                    v, PG_NAME_MAX);
    return true;
}

/* Held to the slot rule too, so it never needs quoting in SQL. */
static bool check_publication(ctx_t *c, const char *v, const char *path, int line)
{
    size_t n = strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789_");
    if (v[n] != '\0' || n > PG_NAME_MAX || isdigit((unsigned char)v[0]))
        return fail(c, line, path,
                    "invalid publication name '%.100s' (expected lowercase letters, digits and _, "
                    "not starting with a digit, at most %d characters)",
                    v, PG_NAME_MAX);
    return true;
}

/*
 * A row filter is pasted into CREATE or ALTER PUBLICATION ... WHERE (filter),
 * on a starting source's replication connection by the simple protocol,
 * where a ';' would end the statement and run what follows as another: one
 * expression only. A ';' inside a quoted string or identifier is fine.
 */
static bool check_row_filter(ctx_t *c, const char *v, const char *path, int line)
{
    char quote = 0;
    for (const char *p = v; *p; p++) {
        if (quote)
            quote = *p == quote ? 0 : quote;
        else if (*p == '\'' || *p == '"')
            quote = *p;
        else if (*p == ';')
            return fail(c, line, path,
                        "must be one SQL expression, but it has a ';' outside quotes "
                        "(remove it)");
    }
    return true;
}

static bool check_column(ctx_t *c, const char *v, const char *path, int line)
{
    if (strlen(v) > PG_NAME_MAX)
        return fail(c, line, path, "column name '%.100s' is too long (expected at most %d bytes)",
                    v, PG_NAME_MAX);
    return true;
}

static bool topic_char(char ch)
{
    return isalnum((unsigned char)ch) || ch == '.' || ch == '_' || ch == '-';
}

static bool check_topic_name(ctx_t *c, const char *v, const char *path, int line)
{
    size_t n = strlen(v);
    for (size_t i = 0; i < n; i++) {
        if (!topic_char(v[i]))
            return fail(c, line, path,
                        "invalid character '%c' in topic name '%.100s' (expected letters, "
                        "digits, '.', '_' and '-')",
                        v[i], v);
    }
    if (n > TOPIC_NAME_MAX || strcmp(v, ".") == 0 || strcmp(v, "..") == 0)
        return fail(c, line, path,
                    "invalid topic name '%.100s' (expected at most %d characters, not '.' or "
                    "'..')",
                    v, TOPIC_NAME_MAX);
    return true;
}

/*
 * A topic template: Kafka topic characters and ${name} placeholders, each
 * closed and non-empty. The relay substitutes the placeholders per event.
 */
static bool check_template(ctx_t *c, const char *v, const char *path, int line)
{
    const char *p = v;
    bool placeholders = false;
    while (*p) {
        if (p[0] == '$' && p[1] == '{') {
            const char *name = p + 2;
            size_t n = strcspn(name, "${}");
            if (name[n] != '}')
                return fail(c, line, path,
                            "unbalanced '${' in topic template '%.100s' (expected ${column} "
                            "placeholders closed by '}')",
                            v);
            if (n == 0)
                return fail(c, line, path,
                            "empty placeholder '${}' in topic template '%.100s' (expected "
                            "${column} with a column name)",
                            v);
            placeholders = true;
            p = name + n + 1;
            continue;
        }
        if (*p == '}')
            return fail(c, line, path,
                        "unbalanced '}' in topic template '%.100s' (expected ${column} "
                        "placeholders opened by '${')",
                        v);
        if (!topic_char(*p))
            return fail(c, line, path,
                        "invalid character '%c' in topic template '%.100s' (expected letters, "
                        "digits, '.', '_', '-' and ${column} placeholders)",
                        *p, v);
        p++;
    }
    if (!placeholders)
        return check_topic_name(c, v, path, line);
    return true;
}

/* allowed_topics: a POSIX extended regex, matched against the whole topic. */
static bool check_topic_regex(ctx_t *c, const char *v, const char *path, int line)
{
    size_t n = strlen(v);
    char *anchored = malloc(n + 5);
    if (!anchored)
        return oom(c, line, path);
    snprintf(anchored, n + 5, "^(%s)$", v);
    regex_t re;
    int rc = regcomp(&re, anchored, REG_EXTENDED | REG_NOSUB);
    free(anchored);
    if (rc != 0) {
        char msg[256];
        regerror(rc, &re, msg, sizeof(msg));
        return fail(c, line, path,
                    "invalid regular expression '%.100s': %s (expected a POSIX extended regex "
                    "matched against the whole topic name, e.g. \"orders\\..*\")",
                    v, msg);
    }
    regfree(&re);
    return true;
}

static bool check_txn_prefix(ctx_t *c, const char *v, const char *path, int line)
{
    size_t n = strlen(v);
    if (n > TXN_PREFIX_MAX)
        return fail(c, line, path,
                    "transactional_id_prefix of %zu characters is too long (expected at most %d, "
                    "so that every producer id '<prefix>.<source>.<n>' is used whole)",
                    n, TXN_PREFIX_MAX);
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)v[i] <= 0x20 || (unsigned char)v[i] >= 0x7f)
            return fail(c, line, path,
                        "transactional_id_prefix '%.100s' contains a space or a non-printable "
                        "character (expected printable ASCII, e.g. letters, digits, '.', '_', "
                        "'-')",
                        v);
    }
    return true;
}

static bool check_log_level(ctx_t *c, const char *v, const char *path, int line)
{
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
        if (strcmp(v, levels[i]) == 0)
            return true;
    }
    return fail(c, line, path, "unknown log_level '%.100s' (expected debug, info, warn or error)",
                v);
}

static bool check_log_format(ctx_t *c, const char *v, const char *path, int line)
{
    if (strcmp(v, "text") == 0 || strcmp(v, "json") == 0)
        return true;
    return fail(c, line, path, "unknown log_format '%.100s' (expected text or json)", v);
}

static bool check_url(ctx_t *c, const char *v, const char *path, int line)
{
    if ((strncmp(v, "http://", 7) != 0 || !v[7]) && (strncmp(v, "https://", 8) != 0 || !v[8]))
        return fail(c, line, path,
                    "invalid URL '%.100s' (expected http://host:port or https://host:port)", v);
    return true;
}

static bool check_listen(ctx_t *c, const char *v, const char *path, int line)
{
    const char *colon = strrchr(v, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == v || !isdigit((unsigned char)colon[1]) || *end || port < 1 ||
        port > 65535)
        return fail(c, line, path,
                    "invalid listen address '%.100s' (expected host:port, e.g. 127.0.0.1:9187)", v);
    return true;
}

/*
 * The dsn is checked with libpq's own parser. A dsn without '=' that is not a
 * URI is a bare database name (libpq's expand_dbname rule). Passwords are
 * refused: they would sit in the config file and in `ps`-visible places.
 */
static bool check_dsn(ctx_t *c, const char *v, const char *path, int line)
{
    if (!strchr(v, '=') && strncmp(v, "postgresql://", 13) != 0 &&
        strncmp(v, "postgres://", 11) != 0)
        return true;
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(v, &errmsg);
    if (!opts) {
        if (!errmsg)
            return oom(c, line, path);
        size_t n = strlen(errmsg);
        while (n > 0 && (errmsg[n - 1] == '\n' || errmsg[n - 1] == ' '))
            errmsg[--n] = '\0';
        fail(c, line, path,
             "invalid connection string: %s (expected a libpq connection string, e.g. "
             "\"host=127.0.0.1 dbname=app user=outboxd\")",
             errmsg);
        PQfreemem(errmsg);
        return false;
    }
    bool has_password = false;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (strcmp(o->keyword, "password") == 0 && o->val)
            has_password = true;
    }
    PQconninfoFree(opts);
    if (has_password)
        return fail(c, line, path,
                    "contains a password (expected no secrets inline: put the password in a file "
                    "and set password_file)");
    return true;
}

/* ---- key tables ------------------------------------------------------------ */

typedef enum {
    K_STR,     /* char *, env-expanded */
    K_TOPIC,   /* char *, a topic template, NOT env-expanded */
    K_INT,     /* int in [min, max] */
    K_SIZE,    /* size_t in [min, max] */
    K_BOOL,    /* bool: true or false */
    K_ENUM,    /* int from names */
    K_SECTION, /* nested mapping into the same struct (offset) */
    K_CUSTOM,  /* custom(base) */
} kind_t;

typedef struct enum_name {
    const char *name;
    int value;
} enum_name_t;

typedef struct key_spec key_spec_t;
typedef bool (*custom_fn)(ctx_t *c, const node_t *n, const char *path, int line, void *base);

struct key_spec {
    const char *key;
    kind_t kind;
    size_t offset;
    bool required;
    const char *hint; /* what a valid value looks like */
    const char *def_str;
    long long def_num;
    long long min, max;
    const enum_name_t *names; /* K_ENUM, NULL-terminated */
    const key_spec_t *section;
    check_fn check;
    custom_fn custom;
    /* A change is not applied by a reload (SIGHUP): it needs a restart, the
     * running value stays (README "Reloading the configuration"). Keys
     * without the mark are reloadable. */
    bool restart;
};

#define KEY(k, kd, st, f) .key = (k), .kind = (kd), .offset = offsetof(st, f)

static bool parse_properties(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_sources(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_tables(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_messages(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_headers(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_debezium(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_table_name(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_secret_file(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_cols_include(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_cols_exclude(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_mask_hash(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_mask_null(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_window_relay(ctx_t *c, const node_t *n, const char *path, int line, void *base);
static bool parse_window_source(ctx_t *c, const node_t *n, const char *path, int line, void *base);

static const enum_name_t mode_names[] = {
    {"outbox", OUTBOXD_MODE_OUTBOX}, {"cdc", OUTBOXD_MODE_CDC}, {NULL, 0}};

static const enum_name_t update_names[] = {{"skip", OUTBOXD_UPDATE_SKIP},
                                           {"publish", OUTBOXD_UPDATE_PUBLISH},
                                           {"dead_letter", OUTBOXD_UPDATE_DEAD_LETTER},
                                           {NULL, 0}};

static const enum_name_t pub_scope_names[] = {{"tables", OUTBOXD_PUB_TABLES},
                                              {"schema", OUTBOXD_PUB_SCHEMA},
                                              {"all", OUTBOXD_PUB_ALL},
                                              {NULL, 0}};

static const enum_name_t missing_topic_names[] = {
    {"wait", OUTBOXD_MISSING_TOPIC_WAIT},
    {"dead_letter", OUTBOXD_MISSING_TOPIC_DEAD_LETTER},
    {"create", OUTBOXD_MISSING_TOPIC_CREATE},
    {NULL, 0}};

static const enum_name_t strategy_names[] = {
    {"topic-name", OUTBOXD_SUBJECT_TOPIC_NAME},
    {"record-name", OUTBOXD_SUBJECT_RECORD_NAME},
    {"topic-record-name", OUTBOXD_SUBJECT_TOPIC_RECORD_NAME},
    {NULL, 0}};

static const enum_name_t value_format_names[] = {
    {"envelope", OUTBOXD_VALUE_ENVELOPE}, {"payload", OUTBOXD_VALUE_PAYLOAD}, {NULL, 0}};

static const enum_name_t cdc_format_names[] = {
    {"avro", OUTBOXD_CDC_AVRO}, {"json", OUTBOXD_CDC_JSON}, {NULL, 0}};

static const enum_name_t snapshot_names[] = {{"initial", OUTBOXD_SNAPSHOT_INITIAL},
                                             {"never", OUTBOXD_SNAPSHOT_NEVER},
                                             {"when_needed", OUTBOXD_SNAPSHOT_WHEN_NEEDED},
                                             {NULL, 0}};

static const enum_name_t dlt_format_names[] = {
    {"json", OUTBOXD_DLT_JSON}, {"avro", OUTBOXD_DLT_AVRO}, {NULL, 0}};

static const key_spec_t kafka_spec[] = {
    {KEY("bootstrap_servers", K_STR, outboxd_config_t, bootstrap_servers), .required = true,
     .hint = "host:port[,host:port...]"},
    {KEY("transactional_id_prefix", K_STR, outboxd_config_t, transactional_id_prefix),
     .def_str = "outboxd", .hint = "a string", .check = check_txn_prefix, .restart = true},
    {.key = "properties",
     .kind = K_CUSTOM,
     .custom = parse_properties,
     .hint = "a mapping of librdkafka properties"},
    {.key = "secret_properties_file",
     .kind = K_CUSTOM,
     .custom = parse_secret_file,
     .hint = "a file of key=value librdkafka properties"},
    {0}};

static const key_spec_t schema_registry_spec[] = {
    {KEY("url", K_STR, outboxd_config_t, schema_registry_url), .required = true,
     .hint = "http://host:port", .check = check_url},
    {KEY("subject_name_strategy", K_ENUM, outboxd_config_t, subject_name_strategy),
     .names = strategy_names, .def_num = OUTBOXD_SUBJECT_TOPIC_NAME},
    {KEY("basic_auth_user", K_STR, outboxd_config_t, registry_user), .hint = "a user name"},
    {KEY("password_file", K_STR, outboxd_config_t, registry_password_file), .hint = "a file path"},
    {KEY("bearer_token_file", K_STR, outboxd_config_t, registry_token_file), .hint = "a file path"},
    {KEY("ca_file", K_STR, outboxd_config_t, registry_ca_file), .hint = "a PEM file path"},
    {KEY("timeout_ms", K_INT, outboxd_config_t, registry_timeout_ms), .def_num = 5000, .min = 100,
     .max = 600000},
    {KEY("cache_ttl_ms", K_INT, outboxd_config_t, registry_cache_ttl_ms), .def_num = 300000,
     .min = 0, .max = 86400000},
    {KEY("auto_register", K_BOOL, outboxd_config_t, registry_auto_register), .def_num = 1},
    {0}};

static const key_spec_t relay_spec[] = {
    {KEY("commit_interval_ms", K_INT, outboxd_config_t, commit_interval_ms), .def_num = 20,
     .min = 1, .max = 60000},
    {KEY("max_batch_events", K_INT, outboxd_config_t, max_batch_events), .def_num = 5000, .min = 1,
     .max = 1000000, .restart = true},
    {KEY("max_event_bytes", K_SIZE, outboxd_config_t, max_event_bytes), .def_num = 1000000,
     .min = 1024, .max = 100000000},
    {KEY("checkpoint_topic", K_STR, outboxd_config_t, checkpoint_topic),
     .def_str = "outboxd.checkpoints", .hint = "a Kafka topic name", .check = check_topic_name,
     .restart = true},
    {KEY("dead_letter_topic", K_STR, outboxd_config_t, dead_letter_topic), .def_str = "outboxd.dlt",
     .hint = "a Kafka topic name", .check = check_topic_name},
    {KEY("status_interval_ms", K_INT, outboxd_config_t, status_interval_ms), .def_num = 10000,
     .min = 100, .max = 60000},
    {KEY("reconnect_max_backoff_ms", K_INT, outboxd_config_t, reconnect_max_backoff_ms),
     .def_num = 30000, .min = 100, .max = 3600000},
    {KEY("wal_receiver_timeout_ms", K_INT, outboxd_config_t, wal_receiver_timeout_ms),
     .def_num = 60000, .min = 0, .max = 3600000},
    {KEY("producers_per_source", K_INT, outboxd_config_t, producers_per_source), .def_num = 2,
     .min = 1, .max = 4, .restart = true},
    {KEY("kafka_producers", K_INT, outboxd_config_t, kafka_producers), .def_num = 0, .min = 0,
     .max = 256, .restart = true},
    {KEY("loop_threads", K_INT, outboxd_config_t, loop_threads), .def_num = 16, .min = 1,
     .max = 1024, .restart = true},
    {KEY("pipeline_commits", K_BOOL, outboxd_config_t, pipeline_commits), .def_num = 1},
    {KEY("missing_topic", K_ENUM, outboxd_config_t, missing_topic), .names = missing_topic_names,
     .def_num = OUTBOXD_MISSING_TOPIC_WAIT},
    /* Defaults (-1) leave the choice to the broker (num.partitions,
     * default.replication.factor); an explicit value must be positive. */
    {KEY("create_topic_partitions", K_INT, outboxd_config_t, create_topic_partitions),
     .def_num = -1, .min = 1, .max = 100000},
    {KEY("create_topic_replication_factor", K_INT, outboxd_config_t,
         create_topic_replication_factor),
     .def_num = -1, .min = 1, .max = 32767},
    {KEY("log_level", K_STR, outboxd_config_t, log_level), .def_str = "info",
     .hint = "debug, info, warn or error", .check = check_log_level},
    {KEY("log_format", K_STR, outboxd_config_t, log_format), .def_str = "text",
     .hint = "text or json", .check = check_log_format},
    {KEY("schemas_dir", K_STR, outboxd_config_t, schemas_dir), .hint = "a directory path"},
    {KEY("schema_store_dir", K_STR, outboxd_config_t, schema_store_dir),
     .hint = "a directory path"},
    {KEY("dead_letter_format", K_ENUM, outboxd_config_t, dead_letter_format),
     .names = dlt_format_names, .def_num = OUTBOXD_DLT_JSON},
    {KEY("max_slot_lag_bytes", K_SIZE, outboxd_config_t, max_slot_lag_bytes), .def_num = 0,
     .min = 0, .max = 1LL << 50},
    {.key = "replay_window",
     .kind = K_CUSTOM,
     .custom = parse_window_relay,
     .hint = "a duration (30m, 1h, 2d) or a WAL size (500MB, 2GB)",
     .restart = true},
    {0}};

static const key_spec_t metrics_spec[] = {
    {KEY("listen", K_STR, outboxd_config_t, metrics_listen), .required = true, .hint = "host:port",
     .check = check_listen, .restart = true},
    {KEY("stall_timeout_ms", K_INT, outboxd_config_t, metrics_stall_timeout_ms), .def_num = 60000,
     .min = 1000, .max = 3600000},
    {KEY("ready_min_sources", K_INT, outboxd_config_t, metrics_ready_min_sources), .def_num = 0,
     .min = 0, .max = 10000},
    {0}};

static const key_spec_t root_spec[] = {
    {.key = "kafka",
     .kind = K_SECTION,
     .section = kafka_spec,
     .required = true,
     .hint = "a mapping with bootstrap_servers"},
    {.key = "schema_registry", .kind = K_SECTION, .section = schema_registry_spec},
    {.key = "relay", .kind = K_SECTION, .section = relay_spec},
    {.key = "metrics", .kind = K_SECTION, .section = metrics_spec},
    {.key = "sources",
     .kind = K_CUSTOM,
     .custom = parse_sources,
     .required = true,
     .hint = "a list of sources"},
    {0}};

static const key_spec_t source_spec[] = {
    {KEY("name", K_STR, outboxd_source_conf_t, name), .required = true,
     .hint = "a source name of letters, digits, _ and -", .check = check_source_name,
     .restart = true},
    {KEY("dsn", K_STR, outboxd_source_conf_t, dsn), .required = true,
     .hint = "a libpq connection string", .check = check_dsn, .restart = true},
    {KEY("password_file", K_STR, outboxd_source_conf_t, password_file), .hint = "a file path",
     .restart = true},
    {KEY("slot", K_STR, outboxd_source_conf_t, slot), .hint = "a replication slot name",
     .check = check_slot, .restart = true},
    {KEY("publication", K_STR, outboxd_source_conf_t, publication), .hint = "a publication name",
     .check = check_publication, .restart = true},
    {KEY("create_slot", K_BOOL, outboxd_source_conf_t, create_slot), .def_num = 1, .restart = true},
    {KEY("create_publication", K_BOOL, outboxd_source_conf_t, create_publication), .def_num = 1,
     .restart = true},
    {KEY("publication_scope", K_ENUM, outboxd_source_conf_t, publication_scope),
     .names = pub_scope_names, .def_num = OUTBOXD_PUB_TABLES, .restart = true},
    {KEY("heartbeat_interval_ms", K_INT, outboxd_source_conf_t, heartbeat_interval_ms),
     .def_num = 0, .min = 0, .max = 3600000, .restart = true},
    {.key = "replay_window",
     .kind = K_CUSTOM,
     .custom = parse_window_source,
     .hint = "a duration (30m, 1h, 2d) or a WAL size (500MB, 2GB)",
     .restart = true},
    {KEY("signal_table", K_STR, outboxd_source_conf_t, signal_table),
     .hint = "a table name (schema.table) whose rows ask for snapshots", .restart = true},
    {.key = "tables", .kind = K_CUSTOM, .custom = parse_tables, .hint = "a list of tables"},
    {.key = "messages",
     .kind = K_CUSTOM,
     .custom = parse_messages,
     .hint = "a list of message prefixes"},
    {0}};

static const key_spec_t columns_spec[] = {
    {KEY("id", K_STR, outboxd_outbox_columns_t, id), .def_str = "id", .hint = "a column name",
     .check = check_column},
    {KEY("aggregatetype", K_STR, outboxd_outbox_columns_t, aggregatetype),
     .def_str = "aggregatetype", .hint = "a column name", .check = check_column},
    {KEY("aggregateid", K_STR, outboxd_outbox_columns_t, aggregateid), .def_str = "aggregateid",
     .hint = "a column name", .check = check_column},
    {KEY("type", K_STR, outboxd_outbox_columns_t, type), .def_str = "type", .hint = "a column name",
     .check = check_column},
    {KEY("payload", K_STR, outboxd_outbox_columns_t, payload), .def_str = "payload",
     .hint = "a column name", .check = check_column},
    {KEY("timestamp", K_STR, outboxd_outbox_columns_t, timestamp), .hint = "a column name",
     .check = check_column},
    {0}};

/* topic has no table default: it depends on the mode (see parse_tables). */
static const key_spec_t table_spec[] = {
    {.key = "table",
     .kind = K_CUSTOM,
     .custom = parse_table_name,
     .required = true,
     .hint = "schema.table or table"},
    {KEY("mode", K_ENUM, outboxd_table_conf_t, mode), .names = mode_names,
     .def_num = OUTBOXD_MODE_OUTBOX},
    {KEY("topic", K_TOPIC, outboxd_table_conf_t, topic), .hint = "a topic template"},
    {KEY("key", K_STR, outboxd_table_conf_t, key_column), .hint = "a column name",
     .check = check_column},
    {KEY("columns", K_SECTION, outboxd_table_conf_t, columns), .section = columns_spec},
    {.key = "headers", .kind = K_CUSTOM, .custom = parse_headers, .hint = "a list of column names"},
    {KEY("on_update", K_ENUM, outboxd_table_conf_t, on_update), .names = update_names,
     .def_num = OUTBOXD_UPDATE_SKIP},
    {KEY("allowed_topics", K_STR, outboxd_table_conf_t, allowed_topics),
     .hint = "a regular expression", .check = check_topic_regex},
    {KEY("value_format", K_ENUM, outboxd_table_conf_t, value_format), .names = value_format_names,
     .def_num = OUTBOXD_VALUE_ENVELOPE},
    {.key = "debezium",
     .kind = K_CUSTOM,
     .custom = parse_debezium,
     .hint = "a mapping of Debezium EventRouter and converter properties"},
    /* mode: cdc */
    {KEY("topic_prefix", K_STR, outboxd_table_conf_t, topic_prefix), .hint = "a topic prefix"},
    {KEY("format", K_ENUM, outboxd_table_conf_t, cdc_format), .names = cdc_format_names,
     .def_num = OUTBOXD_CDC_AVRO},
    {KEY("json_schemas", K_BOOL, outboxd_table_conf_t, json_schemas), .def_num = 1},
    {KEY("tombstones_on_delete", K_BOOL, outboxd_table_conf_t, tombstones_on_delete), .def_num = 1},
    {KEY("truncate_events", K_BOOL, outboxd_table_conf_t, truncate_events), .def_num = 0},
    {KEY("snapshot", K_ENUM, outboxd_table_conf_t, snapshot), .names = snapshot_names,
     .def_num = OUTBOXD_SNAPSHOT_INITIAL},
    {.key = "columns_include",
     .kind = K_CUSTOM,
     .custom = parse_cols_include,
     .hint = "a list of column names"},
    {.key = "columns_exclude",
     .kind = K_CUSTOM,
     .custom = parse_cols_exclude,
     .hint = "a list of column names"},
    {.key = "mask_hash",
     .kind = K_CUSTOM,
     .custom = parse_mask_hash,
     .hint = "a list of column names"},
    {KEY("row_filter", K_STR, outboxd_table_conf_t, row_filter),
     .hint = "an SQL boolean expression over the table's columns", .check = check_row_filter},
    {.key = "mask_null",
     .kind = K_CUSTOM,
     .custom = parse_mask_null,
     .hint = "a list of column names"},
    {0}};

static const key_spec_t message_spec[] = {
    {KEY("prefix", K_STR, outboxd_message_conf_t, prefix), .required = true,
     .hint = "a pg_logical_emit_message prefix"},
    {KEY("topic", K_TOPIC, outboxd_message_conf_t, topic), .def_str = DEFAULT_TOPIC_TEMPLATE,
     .hint = "a topic template"},
    {KEY("allowed_topics", K_STR, outboxd_message_conf_t, allowed_topics),
     .hint = "a regular expression", .check = check_topic_regex},
    {0}};

static size_t spec_count(const key_spec_t *spec)
{
    size_t n = 0;
    while (spec[n].key)
        n++;
    return n;
}

static int spec_line(const key_spec_t *spec, const int *lines, const char *key)
{
    for (size_t i = 0; spec[i].key; i++) {
        if (strcmp(spec[i].key, key) == 0)
            return lines[i];
    }
    return 0;
}

/* "a, b or c" */
static void list_names(outboxd_buf_t *b, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            outboxd_buf_append_str(b, i + 1 == n ? " or " : ", ");
        outboxd_buf_append_str(b, names[i]);
    }
}

static bool apply_defaults(ctx_t *c, const key_spec_t *k, char *base, const char *path, int line)
{
    void *field = base + k->offset;
    switch (k->kind) {
    case K_STR:
    case K_TOPIC:
        if (k->def_str && !*(char **)field) {
            *(char **)field = strdup(k->def_str);
            if (!*(char **)field)
                return oom(c, line, path);
        }
        return true;
    case K_INT:
    case K_ENUM:
        *(int *)field = (int)k->def_num;
        return true;
    case K_SIZE:
        *(size_t *)field = (size_t)k->def_num;
        return true;
    case K_BOOL:
        *(bool *)field = k->def_num != 0;
        return true;
    case K_SECTION:
        for (const key_spec_t *s = k->section; s->key; s++) {
            if (!apply_defaults(c, s, field, path, line))
                return false;
        }
        return true;
    case K_CUSTOM:
        return true;
    }
    return true;
}

static bool parse_mapping(ctx_t *c, const node_t *n, const char *path, int line,
                          const key_spec_t *spec, void *base, int *lines_out);

static bool parse_value(ctx_t *c, const key_spec_t *k, const node_t *v, const char *path, int line,
                        char *base)
{
    void *field = base + k->offset;
    switch (k->kind) {
    case K_STR:
    case K_TOPIC: {
        char *s;
        if (!scalar_text(c, v, path, line, k->hint ? k->hint : "a string", k->kind == K_STR, false,
                         &s))
            return false;
        *(char **)field = s;
        if (k->kind == K_TOPIC && !check_template(c, s, path, line))
            return false;
        return !k->check || k->check(c, s, path, line);
    }
    case K_INT:
    case K_SIZE: {
        long long x;
        if (!scalar_int(c, v, path, line, k->min, k->max, &x))
            return false;
        if (k->kind == K_INT)
            *(int *)field = (int)x;
        else
            *(size_t *)field = (size_t)x;
        return true;
    }
    case K_BOOL: {
        char *s;
        if (!scalar_text(c, v, path, line, "true or false", true, false, &s))
            return false;
        bool ok = true;
        if (strcmp(s, "true") == 0)
            *(bool *)field = true;
        else if (strcmp(s, "false") == 0)
            *(bool *)field = false;
        else
            ok = fail(c, line, path, "expected true or false, got '%.100s'", s);
        free(s);
        return ok;
    }
    case K_ENUM: {
        const char *names[8];
        size_t n = 0;
        while (n < 8 && k->names[n].name) {
            names[n] = k->names[n].name;
            n++;
        }
        outboxd_buf_t alts = {0};
        list_names(&alts, names, n);
        char *s;
        bool ok = scalar_text(c, v, path, line, alts.data ? alts.data : "a name", true, false, &s);
        if (ok) {
            size_t i = 0;
            while (i < n && strcmp(s, names[i]) != 0)
                i++;
            if (i < n)
                *(int *)field = k->names[i].value;
            else
                ok = fail(c, line, path, "unknown %s '%.100s' (expected %s)", k->key, s,
                          alts.data ? alts.data : "");
            free(s);
        }
        outboxd_buf_free(&alts);
        return ok;
    }
    case K_SECTION:
        return parse_mapping(c, is_null(v) ? NULL : v, path, line, k->section, field, NULL);
    case K_CUSTOM:
        return k->custom(c, v, path, line, base);
    }
    return true;
}

/*
 * Walks a mapping with a key table: unknown and duplicate keys are errors,
 * missing keys get their defaults or, when required, an error. n NULL is an
 * empty mapping (a section written as "relay:" with nothing under it). line
 * is the line of the key that holds this mapping, for "missing" messages.
 * lines_out, if not NULL, receives the line of each key (0 = absent).
 */
static bool parse_mapping(ctx_t *c, const node_t *n, const char *path, int line,
                          const key_spec_t *spec, void *base, int *lines_out)
{
    size_t nspec = spec_count(spec);
    int lines[MAX_KEYS] = {0};
    char child[PATH_LEN];
    if (nspec > MAX_KEYS)
        return fail(c, line, path, "internal error: key table too large");
    if (n && !want(c, n, N_MAP, path, line, "a mapping"))
        return false;
    for (size_t i = 0; n && i + 1 < n->n_kids; i += 2) {
        const node_t *key = n->kids[i];
        const node_t *val = n->kids[i + 1];
        if (key->type != N_SCALAR || is_null(key))
            return fail(c, key->line, path, "keys must be plain names, got %s", node_kind(key));
        join_key(child, path, key->value);
        size_t k = 0;
        while (k < nspec && strcmp(spec[k].key, key->value) != 0)
            k++;
        if (k == nspec) {
            const char *names[MAX_KEYS];
            for (size_t j = 0; j < nspec; j++)
                names[j] = spec[j].key;
            outboxd_buf_t b = {0};
            list_names(&b, names, nspec);
            fail(c, key->line, child, "unknown key '%.100s' (expected %s%s)", key->value,
                 nspec > 1 ? "one of " : "", b.data ? b.data : "");
            outboxd_buf_free(&b);
            return false;
        }
        if (lines[k])
            return fail(c, key->line, child, "duplicate key '%s' (first at line %d)", spec[k].key,
                        lines[k]);
        lines[k] = key->line;
        if (!parse_value(c, &spec[k], val, child, key->line, base))
            return false;
    }
    for (size_t k = 0; k < nspec; k++) {
        if (lines[k])
            continue;
        join_key(child, path, spec[k].key);
        if (spec[k].required)
            return fail(c, line, child, "required key is missing (expected %s)",
                        spec[k].hint ? spec[k].hint : "a value");
        if (!apply_defaults(c, &spec[k], base, child, line))
            return false;
    }
    if (lines_out)
        memcpy(lines_out, lines, sizeof(int) * nspec);
    return true;
}

/* ---- custom parts --------------------------------------------------------- */

/*
 * kafka.properties: librdkafka settings, string to scalar, in file order. The
 * two that outboxd sets itself are refused rather than silently overridden.
 */
/* Properties that hold secrets: never written inline in the file. */
static bool secret_property(const char *key)
{
    size_t n = strlen(key);
    return strstr(key, "password") || strstr(key, "secret") ||
           (n >= 8 && strcmp(key + n - 8, ".key.pem") == 0);
}

/* A value that is exactly one ${NAME} reference: the secret comes from the
 * environment. (${NAME:-default} would put a default secret inline.) */
static bool env_reference(const char *raw)
{
    size_t n = strlen(raw);
    if (n < 4 || raw[0] != '$' || raw[1] != '{' || raw[n - 1] != '}' || !is_var_start(raw[2]))
        return false;
    for (size_t i = 3; i < n - 1; i++)
        if (!is_var_char(raw[i]))
            return false;
    return true;
}

/* Checks a property name against the reserved ones and those already set;
 * on success appends an entry with the key (value still NULL). */
static outboxd_kv_t *add_property(ctx_t *c, outboxd_config_t *conf, const char *key, int line,
                                  const char *path)
{
    if (strcmp(key, "bootstrap.servers") == 0 || strcmp(key, "metadata.broker.list") == 0) {
        fail(c, line, path, "set by outboxd (expected kafka.bootstrap_servers instead)");
        return NULL;
    }
    if (strcmp(key, "transactional.id") == 0) {
        fail(c, line, path,
             "set by outboxd per source (expected kafka.transactional_id_prefix instead)");
        return NULL;
    }
    for (size_t j = 0; j < conf->n_kafka_properties; j++) {
        if (strcmp(conf->kafka_properties[j].key, key) == 0) {
            fail(c, line, path,
                 "duplicate key '%.100s' (set both in kafka.properties and in "
                 "kafka.secret_properties_file, or twice)",
                 key);
            return NULL;
        }
    }
    outboxd_kv_t *kv = realloc(conf->kafka_properties,
                               (conf->n_kafka_properties + 1) * sizeof(*conf->kafka_properties));
    if (!kv) {
        oom(c, line, path);
        return NULL;
    }
    conf->kafka_properties = kv;
    kv = &conf->kafka_properties[conf->n_kafka_properties];
    kv->value = NULL;
    kv->line = line;
    kv->key = strdup(key);
    if (!kv->key) {
        oom(c, line, path);
        return NULL;
    }
    conf->n_kafka_properties++;
    return kv;
}

/*
 * kafka.properties: librdkafka settings, string to scalar, in file order. The
 * two that outboxd sets itself are refused rather than silently overridden,
 * and so are secrets written inline (as for dsn passwords): a secret property
 * must be a ${ENV} reference or live in kafka.secret_properties_file.
 */
static bool parse_properties(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_config_t *conf = base;
    if (is_null(n))
        return true;
    if (!want(c, n, N_MAP, path, line, "a mapping of librdkafka properties"))
        return false;
    size_t count = n->n_kids / 2;
    char child[PATH_LEN];
    for (size_t i = 0; i < count; i++) {
        const node_t *key = n->kids[2 * i];
        const node_t *val = n->kids[2 * i + 1];
        if (key->type != N_SCALAR || is_null(key))
            return fail(c, key->line, path, "keys must be plain names, got %s", node_kind(key));
        join_key(child, path, key->value);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(n->kids[2 * j]->value, key->value) == 0)
                return fail(c, key->line, child, "duplicate key '%.100s' (first at line %d)",
                            key->value, n->kids[2 * j]->line);
        }
        if (secret_property(key->value) && val->type == N_SCALAR && !is_null(val) &&
            !env_reference(val->value))
            return fail(c, key->line, child,
                        "a secret written inline (expected no secrets inline: write ${ENV_VAR} "
                        "naming an environment variable that holds it, or put the property in "
                        "kafka.secret_properties_file)");
        outboxd_kv_t *kv = add_property(c, conf, key->value, key->line, child);
        if (!kv)
            return false;
        if (!scalar_text(c, val, child, key->line, "a scalar value", true, true, &kv->value))
            return false;
    }
    return true;
}

/*
 * kafka.secret_properties_file: librdkafka properties (for secrets such as
 * sasl.password) read from a file, one "key=value" per line; blank lines and
 * lines starting with '#' are skipped. Values are taken as written (no ${}
 * expansion), like password_file.
 */
/* ---- notes for the operator ------------------------------------------------ */

const char *outboxd_config_producers_note(const outboxd_config_t *conf, char *buf, size_t buf_size)
{
    if (conf->kafka_producers > 0 || conf->n_sources <= OUTBOXD_OWN_PRODUCERS_NOTE_SOURCES)
        return NULL;
    snprintf(buf, buf_size,
             "%zu sources, each with its own %d Kafka producer(s) (relay.kafka_producers: 0): "
             "%zu librdkafka clients, each with its threads and broker connections; a shared "
             "pool (e.g. relay.kafka_producers: 4) starts faster and takes far fewer threads "
             "and less memory (200 sources: 34 threads and 38 MB against 1,618 and 130 MB; "
             "README \"Many sources in one process\"); it needs a restart to change",
             conf->n_sources, conf->producers_per_source,
             conf->n_sources * (size_t)conf->producers_per_source);
    return buf;
}

/* ---- replay_window ---------------------------------------------------------- */

int outboxd_config_parse_window(const char *text, int64_t *ms, uint64_t *bytes)
{
    static const struct {
        const char *unit;
        bool size;
        uint64_t mult;
    } units[] = {{"s", false, 1000},       {"m", false, 60000},      {"min", false, 60000},
                 {"h", false, 3600000},    {"d", false, 86400000},   {"B", true, 1},
                 {"kB", true, 1ULL << 10}, {"KB", true, 1ULL << 10}, {"MB", true, 1ULL << 20},
                 {"GB", true, 1ULL << 30}, {"TB", true, 1ULL << 40}};
    *ms = 0;
    *bytes = 0;
    if (!text || !isdigit((unsigned char)text[0]))
        return -1;
    char *end;
    errno = 0;
    unsigned long long n = strtoull(text, &end, 10);
    if (errno == ERANGE || n == 0)
        return -1;
    while (*end == ' ')
        end++;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(end, units[i].unit) != 0)
            continue;
        /* At most 2^50 bytes (1 PiB) or a year: beyond that a typo. */
        uint64_t limit = units[i].size ? (1ULL << 50) : 366ULL * 86400000;
        if (n > limit / units[i].mult)
            return -1;
        if (units[i].size)
            *bytes = n * units[i].mult;
        else
            *ms = (int64_t)(n * units[i].mult);
        return 0;
    }
    return -1;
}

static bool parse_window(ctx_t *c, const node_t *n, const char *path, int line, int64_t *ms,
                         uint64_t *bytes)
{
    static const char expected[] =
        "a duration (90s, 30m, 1h, 2d) or a WAL size (500MB, 2GB; units of 1024)";
    char *s;
    if (!scalar_text(c, n, path, line, expected, true, false, &s))
        return false;
    bool ok = outboxd_config_parse_window(s, ms, bytes) == 0;
    if (!ok)
        fail(c, line, path, "invalid replay_window '%.100s' (expected %s, greater than 0)", s,
             expected);
    free(s);
    return ok;
}

static bool parse_window_relay(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_config_t *conf = base;
    return parse_window(c, n, path, line, &conf->replay_window_ms, &conf->replay_window_bytes);
}

static bool parse_window_source(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_source_conf_t *src = base;
    return parse_window(c, n, path, line, &src->replay_window_ms, &src->replay_window_bytes);
}

/*
 * After the whole file is read (relay: may come after sources:): sources
 * without their own replay_window take relay's, and each source with one
 * gets its retention slot name, which with the replay copy's suffix must
 * still be a PostgreSQL name.
 */
static bool finish_windows(ctx_t *c, outboxd_config_t *conf)
{
    for (size_t i = 0; i < conf->n_sources; i++) {
        outboxd_source_conf_t *s = &conf->sources[i];
        if (!s->replay_window_ms && !s->replay_window_bytes) {
            s->replay_window_ms = conf->replay_window_ms;
            s->replay_window_bytes = conf->replay_window_bytes;
        }
        if (!s->replay_window_ms && !s->replay_window_bytes)
            continue;
        char path[PATH_LEN];
        snprintf(path, sizeof(path), "sources[%zu].slot", i);
        size_t longest = strlen(OUTBOXD_RETENTION_SUFFIX) > strlen(OUTBOXD_REPLAY_SUFFIX)
                             ? strlen(OUTBOXD_RETENTION_SUFFIX)
                             : strlen(OUTBOXD_REPLAY_SUFFIX);
        if (strlen(s->slot) + longest > PG_NAME_MAX)
            return fail(c, s->line, path,
                        "slot '%s' is too long for replay_window (expected at most %zu "
                        "characters, so that its retention slot %s%s and replay slot %s%s are "
                        "PostgreSQL names)",
                        s->slot, PG_NAME_MAX - longest, s->slot, OUTBOXD_RETENTION_SUFFIX, s->slot,
                        OUTBOXD_REPLAY_SUFFIX);
        size_t len = strlen(s->slot) + strlen(OUTBOXD_RETENTION_SUFFIX) + 1;
        s->retention_slot = malloc(len);
        if (!s->retention_slot)
            return oom(c, s->line, path);
        snprintf(s->retention_slot, len, "%s%s", s->slot, OUTBOXD_RETENTION_SUFFIX);
    }
    /* The retention slot and a replay's copy are named after the slot: a
     * source streaming from one of those names would have its live slot
     * advanced by the other's keeper, or dropped as a replay's leftover. */
    for (size_t i = 0; i < conf->n_sources; i++) {
        const outboxd_source_conf_t *s = &conf->sources[i];
        if (!s->retention_slot)
            continue;
        const char *suffixes[] = {OUTBOXD_RETENTION_SUFFIX, OUTBOXD_REPLAY_SUFFIX};
        const char *what[] = {"retention slot", "replay slot"};
        size_t n = strlen(s->slot);
        for (size_t j = 0; j < conf->n_sources; j++) {
            const outboxd_source_conf_t *o = &conf->sources[j];
            for (size_t k = 0; k < 2; k++) {
                if (j == i || strncmp(o->slot, s->slot, n) != 0 ||
                    strcmp(o->slot + n, suffixes[k]) != 0)
                    continue;
                char path[PATH_LEN];
                snprintf(path, sizeof(path), "sources[%zu].slot", j);
                return fail(c, o->line, path,
                            "slot '%s' is the %s of source '%s' (its replay_window keeps "
                            "%s%s%s): expected a slot name that does not end in %s or %s "
                            "after another source's slot",
                            o->slot, what[k], s->name, s->slot, suffixes[k],
                            k == 0 ? "" : " during a replay", OUTBOXD_RETENTION_SUFFIX,
                            OUTBOXD_REPLAY_SUFFIX);
            }
        }
    }
    return true;
}

/* The line of key under the top-level section sect, else the section's,
 * else 1 (for messages about a pair of keys). */
static int key_line(const node_t *root, const char *sect, const char *key)
{
    for (size_t i = 0; i + 1 < root->n_kids; i += 2) {
        const node_t *k = root->kids[i], *v = root->kids[i + 1];
        if (k->type != N_SCALAR || !k->value || strcmp(k->value, sect) != 0)
            continue;
        for (size_t j = 0; v->type == N_MAP && j + 1 < v->n_kids; j += 2)
            if (v->kids[j]->type == N_SCALAR && v->kids[j]->value &&
                strcmp(v->kids[j]->value, key) == 0)
                return v->kids[j]->line;
        return k->line;
    }
    return 1;
}

/* The checkpoint topic is compacted and keyed by source: dead letters in it
 * could replace a checkpoint (a dead letter's key is the event's). */
static bool finish_topics(ctx_t *c, const node_t *root, outboxd_config_t *conf)
{
    if (conf->checkpoint_topic && conf->dead_letter_topic &&
        strcmp(conf->checkpoint_topic, conf->dead_letter_topic) == 0)
        return fail(c, key_line(root, "relay", "dead_letter_topic"), "relay.dead_letter_topic",
                    "'%s' is also relay.checkpoint_topic (expected another topic: the "
                    "checkpoint topic is compacted and holds one record per source, which a "
                    "dead letter could replace)",
                    conf->dead_letter_topic);
    return true;
}

static bool parse_secret_file(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_config_t *conf = base;
    char *file;
    if (!scalar_text(c, n, path, line, "a file path", true, false, &file))
        return false;
    conf->kafka_secret_properties_file = file;
    FILE *f = fopen(file, "rb");
    if (!f)
        return fail(c, line, path, "cannot read %.200s: %s", file, strerror(errno));
    outboxd_buf_t b = {0};
    char chunk[4096];
    size_t got;
    bool ok = true;
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + got > MAX_SECRET_BYTES) {
            ok = fail(c, line, path, "%.200s is larger than %d bytes (expected a few properties)",
                      file, MAX_SECRET_BYTES);
            break;
        }
        if (!outboxd_buf_append(&b, chunk, got)) {
            ok = oom(c, line, path);
            break;
        }
    }
    if (ok && ferror(f))
        ok = fail(c, line, path, "cannot read %.200s: %s", file, strerror(errno));
    fclose(f);
    explicit_bzero(chunk, sizeof(chunk));
    if (ok && b.len && memchr(b.data, '\0', b.len))
        ok = fail(c, line, path, "%.200s contains a NUL byte (expected key=value lines)", file);
    int fline = 0;
    char *next = ok ? b.data : NULL;
    while (ok && next) {
        char *l = next;
        char *nl = strchr(l, '\n');
        if (nl)
            *nl = '\0';
        next = nl ? nl + 1 : NULL;
        fline++;
        size_t len = strlen(l);
        while (len && (l[len - 1] == '\r' || l[len - 1] == ' ' || l[len - 1] == '\t'))
            l[--len] = '\0';
        while (*l == ' ' || *l == '\t')
            l++;
        if (!*l || *l == '#')
            continue;
        char *eq = strchr(l, '=');
        if (!eq || eq == l) {
            ok = fail(c, line, path, "%.200s:%d: not a key=value line (expected key=value)", file,
                      fline);
            break;
        }
        char *kend = eq;
        while (kend > l && (kend[-1] == ' ' || kend[-1] == '\t'))
            kend--;
        *kend = '\0';
        char *v = eq + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        char child[PATH_LEN];
        join_key(child, "kafka.properties", l);
        outboxd_kv_t *kv = add_property(c, conf, l, line, child);
        if (!kv || !(kv->value = strdup(v)))
            ok = kv ? oom(c, line, path) : false;
    }
    if (b.data)
        explicit_bzero(b.data, b.cap);
    outboxd_buf_free(&b);
    return ok;
}

static bool parse_table_name(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_table_conf_t *t = base;
    char *v;
    if (!scalar_text(c, n, path, line, "schema.table or table", true, false, &v))
        return false;
    const char *dot = strchr(v, '.');
    bool ok = true;
    if (dot && strchr(dot + 1, '.'))
        ok = fail(c, line, path,
                  "invalid table name '%.100s': too many dots (expected schema.table or table)", v);
    else if (dot && (dot == v || !dot[1]))
        ok = fail(c, line, path,
                  "invalid table name '%.100s': empty schema or table part (expected "
                  "schema.table or table)",
                  v);
    if (ok) {
        t->schema = dot ? outboxd_strndup(v, (size_t)(dot - v)) : strdup("public");
        t->name = strdup(dot ? dot + 1 : v);
        if (!t->schema || !t->name)
            ok = oom(c, line, path);
        else if (strlen(t->schema) > PG_NAME_MAX || strlen(t->name) > PG_NAME_MAX)
            ok = fail(c, line, path,
                      "invalid table name '%.100s': a part is longer than %d bytes (expected "
                      "PostgreSQL identifiers)",
                      v, PG_NAME_MAX);
    }
    free(v);
    return ok;
}

static bool parse_headers(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_table_conf_t *t = base;
    if (is_null(n))
        return true;
    if (!want(c, n, N_SEQ, path, line, "a list of column names"))
        return false;
    if (n->n_kids == 0)
        return true;
    t->header_columns = calloc(n->n_kids, sizeof(char *));
    if (!t->header_columns)
        return oom(c, line, path);
    char child[PATH_LEN];
    for (size_t i = 0; i < n->n_kids; i++) {
        const node_t *item = n->kids[i];
        join_index(child, path, i);
        if (!scalar_text(c, item, child, item->line, "a column name", true, false,
                         &t->header_columns[i]))
            return false;
        t->n_header_columns = i + 1;
        if (!check_column(c, t->header_columns[i], child, item->line))
            return false;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(t->header_columns[j], t->header_columns[i]) == 0)
                return fail(c, item->line, child,
                            "duplicate header column '%.100s' (first at line %d)",
                            t->header_columns[i], n->kids[j]->line);
        }
    }
    return true;
}

/* A list of distinct column names (the cdc filters and masks). */
static bool parse_col_list(ctx_t *c, const node_t *n, const char *path, int line, char ***out,
                           size_t *n_out)
{
    if (is_null(n))
        return true;
    if (!want(c, n, N_SEQ, path, line, "a list of column names"))
        return false;
    if (n->n_kids == 0)
        return true;
    *out = calloc(n->n_kids, sizeof(char *));
    if (!*out)
        return oom(c, line, path);
    char child[PATH_LEN];
    for (size_t i = 0; i < n->n_kids; i++) {
        const node_t *item = n->kids[i];
        join_index(child, path, i);
        if (!scalar_text(c, item, child, item->line, "a column name", true, false, &(*out)[i]))
            return false;
        *n_out = i + 1;
        if (!check_column(c, (*out)[i], child, item->line))
            return false;
        for (size_t j = 0; j < i; j++)
            if (strcmp((*out)[j], (*out)[i]) == 0)
                return fail(c, item->line, child, "duplicate column '%.100s' (first at line %d)",
                            (*out)[i], n->kids[j]->line);
    }
    return true;
}

static bool parse_cols_include(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_table_conf_t *t = base;
    return parse_col_list(c, n, path, line, &t->columns_include, &t->n_columns_include);
}

static bool parse_cols_exclude(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_table_conf_t *t = base;
    return parse_col_list(c, n, path, line, &t->columns_exclude, &t->n_columns_exclude);
}

static bool parse_mask_hash(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_table_conf_t *t = base;
    return parse_col_list(c, n, path, line, &t->mask_hash, &t->n_mask_hash);
}

static bool parse_mask_null(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_table_conf_t *t = base;
    return parse_col_list(c, n, path, line, &t->mask_null, &t->n_mask_null);
}

/*
 * tables[].debezium: Debezium's property names and values verbatim (a
 * connector config's transforms.<name>.* and converter entries); checked
 * here by the module that renders them, so a mistake is reported at load.
 */
static bool parse_debezium(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_table_conf_t *t = base;
    if (is_null(n))
        return true;
    if (!want(c, n, N_MAP, path, line, "a mapping of Debezium properties"))
        return false;
    size_t count = n->n_kids / 2;
    t->debezium = calloc(count ? count : 1, sizeof(*t->debezium));
    if (!t->debezium)
        return oom(c, line, path);
    char child[PATH_LEN];
    for (size_t i = 0; i < count; i++) {
        const node_t *key = n->kids[2 * i];
        const node_t *val = n->kids[2 * i + 1];
        if (key->type != N_SCALAR || is_null(key))
            return fail(c, key->line, path, "keys must be plain names, got %s", node_kind(key));
        join_key(child, path, key->value);
        for (size_t j = 0; j < i; j++) {
            if (strcmp(n->kids[2 * j]->value, key->value) == 0)
                return fail(c, key->line, child, "duplicate key '%.100s' (first at line %d)",
                            key->value, n->kids[2 * j]->line);
        }
        outboxd_kv_t *kv = &t->debezium[i];
        kv->line = key->line;
        kv->key = strdup(key->value);
        t->n_debezium = i + 1;
        if (!kv->key)
            return oom(c, key->line, child);
        /* Not expanded: ${routedByValue} and ${group} are Debezium's. */
        if (!scalar_text(c, val, child, key->line, "a scalar value", false, true, &kv->value))
            return false;
    }
    char err[512];
    outboxd_dbz_t *d = outboxd_dbz_new(t->debezium, t->n_debezium, err, sizeof(err));
    if (!d)
        return fail(c, line, path, "%s", err);
    outboxd_dbz_destroy(d);
    return true;
}

static bool set_col(char **field, const char *v)
{
    free(*field);
    *field = v ? strdup(v) : NULL;
    return !v || *field;
}

/*
 * A debezium table's columns are the EventRouter's: they replace columns,
 * key and headers, so every module that checks or reports a table's columns
 * (outboxd check in particular) sees the ones the table needs.
 */
static bool debezium_columns(ctx_t *c, outboxd_table_conf_t *t, int line, const char *path)
{
    char err[512];
    outboxd_dbz_t *d = outboxd_dbz_new(t->debezium, t->n_debezium, err, sizeof(err));
    if (!d)
        return fail(c, line, path, "%s", err);
    bool ok = set_col(&t->columns.id, d->col_id) &&
              set_col(&t->columns.aggregatetype, d->col_route) &&
              set_col(&t->columns.aggregateid, d->col_key) && set_col(&t->columns.type, NULL) &&
              set_col(&t->columns.payload, d->col_payload) &&
              set_col(&t->columns.timestamp, d->col_ts) && set_col(&t->key_column, d->col_key);
    for (size_t i = 0; i < t->n_header_columns; i++)
        free(t->header_columns[i]);
    free(t->header_columns);
    t->header_columns = NULL;
    t->n_header_columns = 0;
    if (ok && d->error_on_missing && d->n_places) {
        t->header_columns = calloc(d->n_places, sizeof(char *));
        ok = t->header_columns != NULL;
        for (size_t i = 0; ok && i < d->n_places; i++) {
            t->header_columns[i] = strdup(d->places[i].column);
            ok = t->header_columns[i] != NULL;
            t->n_header_columns = i + 1;
        }
    }
    outboxd_dbz_destroy(d);
    return ok || oom(c, line, path);
}

/* The start of a list of mappings at n: false (the error given) when n is
 * not a list; else room for its items in *items (calloc'd: every item's
 * defaults zero) and their number in *count (NULL and 0 for a null or empty
 * list). */
static bool list_of_mappings(ctx_t *c, const node_t *n, const char *path, int line,
                             const char *what, size_t item_size, void **items, size_t *count)
{
    *items = NULL;
    *count = 0;
    if (is_null(n))
        return true;
    if (!want(c, n, N_SEQ, path, line, what))
        return false;
    if (n->n_kids == 0)
        return true;
    *items = calloc(n->n_kids, item_size);
    if (!*items)
        return oom(c, line, path);
    *count = n->n_kids;
    return true;
}

/* One item of a list of mappings into dst with spec (a null item: every
 * default), the line of each key in lines. */
static bool list_item(ctx_t *c, const node_t *item, const char *item_path, const key_spec_t *spec,
                      void *dst, int *lines)
{
    if (!is_null(item) && !want(c, item, N_MAP, item_path, item->line, "a mapping"))
        return false;
    return parse_mapping(c, is_null(item) ? NULL : item, item_path, item->line, spec, dst, lines);
}

static bool parse_tables(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_source_conf_t *s = base;
    void *items;
    if (!list_of_mappings(c, n, path, line, "a list of tables", sizeof(*s->tables), &items,
                          &s->n_tables))
        return false;
    s->tables = items;
    char item_path[PATH_LEN], child[PATH_LEN];
    for (size_t i = 0; i < s->n_tables; i++) {
        const node_t *item = n->kids[i];
        outboxd_table_conf_t *t = &s->tables[i];
        int lines[MAX_KEYS] = {0};
        join_index(item_path, path, i);
        t->line = item->line;
        if (!list_item(c, item, item_path, table_spec, t, lines))
            return false;
        if (t->mode == OUTBOXD_MODE_CDC && t->topic && strstr(t->topic, "${")) {
            /* cdc.c writes a table's changes to one topic, used as given. */
            join_key(child, item_path, "topic");
            return fail(c, spec_line(table_spec, lines, "topic"), child,
                        "a cdc table's topic is one fixed name, not a template ('%.100s'); "
                        "leave it out for <topic_prefix>.<schema>.<table>",
                        t->topic);
        }
        if (!t->topic && t->mode != OUTBOXD_MODE_CDC) {
            /* A cdc table's default is <topic_prefix>.<schema>.<table> (cdc.c). */
            join_key(child, item_path, "topic");
            t->topic = strdup(DEFAULT_TOPIC_TEMPLATE);
            if (!t->topic)
                return oom(c, item->line, child);
        }
        if (!t->key_column) {
            t->key_column = strdup(t->columns.aggregateid);
            if (!t->key_column)
                return oom(c, item->line, item_path);
        }
        if (t->n_debezium && !debezium_columns(c, t, item->line, item_path))
            return false;
        for (size_t j = 0; j < i; j++) {
            const outboxd_table_conf_t *o = &s->tables[j];
            if (strcmp(o->schema, t->schema) == 0 && strcmp(o->name, t->name) == 0) {
                join_key(child, item_path, "table");
                return fail(c, spec_line(table_spec, lines, "table"), child,
                            "duplicate table '%.64s.%.64s' (first at line %d)", t->schema, t->name,
                            o->line);
            }
        }
    }
    return true;
}

static bool parse_messages(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_source_conf_t *s = base;
    void *items;
    if (!list_of_mappings(c, n, path, line, "a list of message prefixes", sizeof(*s->messages),
                          &items, &s->n_messages))
        return false;
    s->messages = items;
    char item_path[PATH_LEN], child[PATH_LEN];
    for (size_t i = 0; i < s->n_messages; i++) {
        const node_t *item = n->kids[i];
        outboxd_message_conf_t *m = &s->messages[i];
        int lines[MAX_KEYS] = {0};
        join_index(item_path, path, i);
        m->line = item->line;
        if (!list_item(c, item, item_path, message_spec, m, lines))
            return false;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(s->messages[j].prefix, m->prefix) == 0) {
                join_key(child, item_path, "prefix");
                return fail(c, spec_line(message_spec, lines, "prefix"), child,
                            "duplicate message prefix '%.100s' (first at line %d)", m->prefix,
                            s->messages[j].line);
            }
        }
    }
    return true;
}

/* The default slot and publication: "outboxd_" + the name in slot spelling. */
static char *default_pg_name(const char *source_name)
{
    size_t n = strlen(source_name);
    char *s = malloc(n + sizeof("outboxd_"));
    if (!s)
        return NULL;
    memcpy(s, "outboxd_", 8);
    for (size_t i = 0; i < n; i++) {
        char ch = source_name[i];
        s[8 + i] = ch == '-' ? '_' : (char)tolower((unsigned char)ch);
    }
    s[8 + n] = '\0';
    return s;
}

static bool read_password(ctx_t *c, outboxd_source_conf_t *s, const char *path, int line)
{
    FILE *f = fopen(s->password_file, "rb");
    if (!f)
        return fail(c, line, path, "cannot read %.200s: %s", s->password_file, strerror(errno));
    outboxd_buf_t b = {0};
    char chunk[4096];
    size_t n;
    bool ok = true;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + n > MAX_SECRET_BYTES) {
            ok = fail(c, line, path, "%.200s is larger than %d bytes (expected a password file)",
                      s->password_file, MAX_SECRET_BYTES);
            break;
        }
        if (!outboxd_buf_append(&b, chunk, n)) {
            ok = oom(c, line, path);
            break;
        }
    }
    if (ok && ferror(f))
        ok = fail(c, line, path, "cannot read %.200s: %s", s->password_file, strerror(errno));
    fclose(f);
    explicit_bzero(chunk, sizeof(chunk));
    if (ok) {
        if (b.len > 0 && b.data[b.len - 1] == '\n')
            b.data[--b.len] = '\0';
        if (b.len > 0 && b.data[b.len - 1] == '\r')
            b.data[--b.len] = '\0';
        if (b.len == 0)
            ok = fail(c, line, path, "%.200s is empty (expected the password)", s->password_file);
        else if (memchr(b.data, '\0', b.len))
            ok = fail(c, line, path, "%.200s contains a NUL byte (expected the password as text)",
                      s->password_file);
    }
    if (!ok) {
        if (b.data)
            explicit_bzero(b.data, b.cap);
        outboxd_buf_free(&b);
        return false;
    }
    s->password = b.data;
    return true;
}

static bool parse_source(ctx_t *c, const node_t *item, const char *path, outboxd_config_t *conf,
                         size_t index)
{
    outboxd_source_conf_t *s = &conf->sources[index];
    int lines[MAX_KEYS] = {0};
    char child[PATH_LEN];
    s->line = item->line;
    if (!is_null(item) && !want(c, item, N_MAP, path, item->line, "a mapping (a source)"))
        return false;
    if (!parse_mapping(c, is_null(item) ? NULL : item, path, item->line, source_spec, s, lines))
        return false;

    int name_line = spec_line(source_spec, lines, "name");
    for (size_t j = 0; j < index; j++) {
        if (strcmp(conf->sources[j].name, s->name) == 0) {
            join_key(child, path, "name");
            return fail(c, name_line, child, "duplicate source name '%s' (first at line %d)",
                        s->name, conf->sources[j].line);
        }
    }

    const char *defaulted[] = {"slot", "publication"};
    char **fields[] = {&s->slot, &s->publication};
    for (size_t i = 0; i < 2; i++) {
        if (*fields[i])
            continue;
        join_key(child, path, defaulted[i]);
        *fields[i] = default_pg_name(s->name);
        if (!*fields[i])
            return oom(c, s->line, child);
        if (strlen(*fields[i]) > PG_NAME_MAX)
            return fail(c, s->line, child,
                        "default name '%s' is longer than %d characters (expected an explicit "
                        "%s or a shorter source name)",
                        *fields[i], PG_NAME_MAX, defaulted[i]);
    }

    int slot_line = spec_line(source_spec, lines, "slot");
    for (size_t j = 0; j < index; j++) {
        if (strcmp(conf->sources[j].slot, s->slot) == 0) {
            join_key(child, path, "slot");
            return fail(c, slot_line ? slot_line : s->line, child,
                        "duplicate slot '%s' (also used by source '%s' at line %d; expected a "
                        "slot name unique across sources)",
                        s->slot, conf->sources[j].name, conf->sources[j].line);
        }
    }

    if (s->password_file) {
        join_key(child, path, "password_file");
        if (!read_password(c, s, child, spec_line(source_spec, lines, "password_file")))
            return false;
    }

    if (s->n_tables == 0 && s->n_messages == 0)
        return fail(c, s->line, path,
                    "source '%s' has neither tables nor messages (expected at least one of them)",
                    s->name);
    return true;
}

static bool parse_sources(ctx_t *c, const node_t *n, const char *path, int line, void *base)
{
    outboxd_config_t *conf = base;
    if (!is_null(n) && !want(c, n, N_SEQ, path, line, "a list of sources"))
        return false;
    size_t count = is_null(n) ? 0 : n->n_kids;
    if (count == 0)
        return fail(c, line, path, "empty list (expected at least one source)");
    conf->sources = calloc(count, sizeof(*conf->sources));
    if (!conf->sources)
        return oom(c, line, path);
    conf->n_sources = count;
    char item_path[PATH_LEN];
    for (size_t i = 0; i < count; i++) {
        join_index(item_path, path, i);
        if (!parse_source(c, n->kids[i], item_path, conf, i))
            return false;
    }
    return true;
}

/* ---- public --------------------------------------------------------------- */

outboxd_config_t *outboxd_config_parse(const char *text, size_t len, const char *name, char *errstr,
                                       size_t errstr_size)
{
    ctx_t c = {.name = name ? name : "<config>",
               .text = text ? text : "", /* libyaml asserts on a NULL input */
               .text_len = text ? len : 0,
               .err = errstr,
               .err_size = errstr_size};
    if (errstr && errstr_size)
        errstr[0] = '\0';
    node_t *root = load_tree(&c);
    if (!root)
        return NULL;
    outboxd_config_t *conf = NULL;
    if (is_null(root)) {
        fail(&c, root->line, NULL,
             "empty configuration (expected a mapping with kafka and sources)");
        goto err;
    }
    if (root->type != N_MAP) {
        fail(&c, root->line, NULL,
             "the top level is %s (expected a mapping with kafka, schema_registry, relay, "
             "metrics and sources)",
             node_kind(root));
        goto err;
    }
    conf = calloc(1, sizeof(*conf));
    if (!conf || !(conf->path = strdup(c.name))) {
        oom(&c, 1, NULL);
        goto err;
    }
    if (!parse_mapping(&c, root, "", root->line, root_spec, conf, NULL) ||
        !finish_windows(&c, conf) || !finish_topics(&c, root, conf))
        goto err;
    node_free(root);
    return conf;
err:
    node_free(root);
    outboxd_config_destroy(conf);
    return NULL;
}

outboxd_config_t *outboxd_config_load(const char *path, char *errstr, size_t errstr_size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (errstr && errstr_size)
            snprintf(errstr, errstr_size, "%s: cannot read: %s", path, strerror(errno));
        return NULL;
    }
    outboxd_buf_t b = {0};
    char chunk[65536];
    size_t n;
    bool ok = true;
    const char *why = NULL;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + n > MAX_FILE_BYTES) {
            why = "file is larger than 16 MiB";
            ok = false;
            break;
        }
        if (!outboxd_buf_append(&b, chunk, n)) {
            why = "out of memory";
            ok = false;
            break;
        }
    }
    if (ok && ferror(f)) {
        why = strerror(errno);
        ok = false;
    }
    fclose(f);
    if (!ok) {
        if (errstr && errstr_size)
            snprintf(errstr, errstr_size, "%s: cannot read: %s", path, why);
        outboxd_buf_free(&b);
        return NULL;
    }
    outboxd_config_t *conf =
        outboxd_config_parse(b.data ? b.data : "", b.len, path, errstr, errstr_size);
    outboxd_buf_free(&b);
    return conf;
}

static void free_table(outboxd_table_conf_t *t)
{
    free(t->schema);
    free(t->name);
    free(t->topic);
    free(t->key_column);
    free(t->columns.id);
    free(t->columns.aggregatetype);
    free(t->columns.aggregateid);
    free(t->columns.type);
    free(t->columns.payload);
    free(t->columns.timestamp);
    free(t->allowed_topics);
    free(t->topic_prefix);
    free(t->row_filter);
    char **lists[4] = {t->columns_include, t->columns_exclude, t->mask_hash, t->mask_null};
    size_t ns[4] = {t->n_columns_include, t->n_columns_exclude, t->n_mask_hash, t->n_mask_null};
    for (int l = 0; l < 4; l++) {
        for (size_t k = 0; lists[l] && k < ns[l]; k++)
            free(lists[l][k]);
        free(lists[l]);
    }
    for (size_t i = 0; i < t->n_header_columns; i++)
        free(t->header_columns[i]);
    free(t->header_columns);
    for (size_t i = 0; i < t->n_debezium; i++) {
        free(t->debezium[i].key);
        free(t->debezium[i].value);
    }
    free(t->debezium);
}

void outboxd_config_destroy(outboxd_config_t *conf)
{
    if (!conf)
        return;
    free(conf->path);
    free(conf->bootstrap_servers);
    free(conf->transactional_id_prefix);
    for (size_t i = 0; i < conf->n_kafka_properties; i++) {
        free(conf->kafka_properties[i].key);
        if (conf->kafka_properties[i].value) {
            /* may be a secret */
            explicit_bzero(conf->kafka_properties[i].value,
                           strlen(conf->kafka_properties[i].value));
            free(conf->kafka_properties[i].value);
        }
    }
    free(conf->kafka_properties);
    free(conf->kafka_secret_properties_file);
    free(conf->schema_registry_url);
    free(conf->registry_user);
    free(conf->registry_password_file);
    free(conf->registry_token_file);
    free(conf->registry_ca_file);
    free(conf->schemas_dir);
    free(conf->schema_store_dir);
    free(conf->checkpoint_topic);
    free(conf->dead_letter_topic);
    free(conf->log_level);
    free(conf->log_format);
    free(conf->metrics_listen);
    for (size_t i = 0; i < conf->n_sources; i++) {
        outboxd_source_conf_t *s = &conf->sources[i];
        free(s->name);
        free(s->dsn);
        free(s->password_file);
        if (s->password) {
            explicit_bzero(s->password, strlen(s->password));
            free(s->password);
        }
        free(s->slot);
        free(s->retention_slot);
        free(s->publication);
        free(s->signal_table);
        for (size_t j = 0; j < s->n_tables; j++)
            free_table(&s->tables[j]);
        free(s->tables);
        for (size_t j = 0; j < s->n_messages; j++) {
            free(s->messages[j].prefix);
            free(s->messages[j].topic);
            free(s->messages[j].allowed_topics);
        }
        free(s->messages);
    }
    free(conf->sources);
    free(conf);
}

/* ---- reload: keys that need a restart ---------------------------------- */

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* Puts the running value of every key marked restart into next where they
 * differ, naming each in changed ("PATH\n"). -1 on OOM. */
static int pin_keys(const key_spec_t *spec, char *next, const char *running, const char *prefix,
                    outboxd_buf_t *changed)
{
    for (const key_spec_t *k = spec; k->key; k++) {
        void *nf = next + k->offset;
        const void *rf = running + k->offset;
        if (k->kind == K_SECTION) {
            char p[PATH_LEN];
            snprintf(p, sizeof(p), "%s%s.", prefix, k->key);
            if (pin_keys(k->section, nf, rf, p, changed) < 0)
                return -1;
            continue;
        }
        if (!k->restart)
            continue;
        bool same = true;
        switch (k->kind) {
        case K_STR:
        case K_TOPIC:
            same = str_eq(*(char *const *)nf, *(char *const *)rf);
            break;
        case K_INT:
        case K_ENUM:
            same = *(const int *)nf == *(const int *)rf;
            break;
        case K_SIZE:
            same = *(const size_t *)nf == *(const size_t *)rf;
            break;
        case K_BOOL:
            same = *(const bool *)nf == *(const bool *)rf;
            break;
        default:
            break;
        }
        if (same)
            continue;
        if (!outboxd_buf_printf(changed, "%s%s\n", prefix, k->key))
            return -1;
        switch (k->kind) {
        case K_STR:
        case K_TOPIC: {
            const char *old = *(char *const *)rf;
            char *copy = old ? strdup(old) : NULL;
            if (old && !copy)
                return -1;
            free(*(char **)nf);
            *(char **)nf = copy;
            break;
        }
        case K_INT:
        case K_ENUM:
            *(int *)nf = *(const int *)rf;
            break;
        case K_SIZE:
            *(size_t *)nf = *(const size_t *)rf;
            break;
        case K_BOOL:
            *(bool *)nf = *(const bool *)rf;
            break;
        default:
            break;
        }
    }
    return 0;
}

int outboxd_config_pin_restart_keys(outboxd_config_t *next, const outboxd_config_t *running,
                                    outboxd_buf_t *changed)
{
    if (pin_keys(root_spec, (char *)next, (const char *)running, "", changed) < 0)
        return -1;
    for (size_t i = 0; i < running->n_sources; i++) {
        const outboxd_source_conf_t *rs = &running->sources[i];
        outboxd_source_conf_t *ns = NULL;
        size_t j;
        for (j = 0; j < next->n_sources && !ns; j++)
            if (strcmp(next->sources[j].name, rs->name) == 0)
                ns = &next->sources[j];
        if (!ns) {
            if (!outboxd_buf_printf(changed, "sources: source %s removed\n", rs->name))
                return -1;
            continue;
        }
        bool pw_changed = !str_eq(ns->password_file, rs->password_file);
        char p[PATH_LEN];
        snprintf(p, sizeof(p), "sources[%zu].", j - 1);
        if (pin_keys(source_spec, (char *)ns, (const char *)rs, p, changed) < 0)
            return -1;
        if (ns->replay_window_ms != rs->replay_window_ms ||
            ns->replay_window_bytes != rs->replay_window_bytes ||
            !str_eq(ns->retention_slot, rs->retention_slot)) {
            /* The retention slot is set up when the source starts. */
            char *copy = rs->retention_slot ? strdup(rs->retention_slot) : NULL;
            if ((rs->retention_slot && !copy) ||
                !outboxd_buf_printf(changed, "sources[%zu].replay_window\n", j - 1)) {
                free(copy);
                return -1;
            }
            free(ns->retention_slot);
            ns->retention_slot = copy;
            ns->replay_window_ms = rs->replay_window_ms;
            ns->replay_window_bytes = rs->replay_window_bytes;
        }
        if (pw_changed) {
            /* The password belongs to its file: keep the running file, and
             * read it again, so a rotation in it (the role's password and
             * the file changed, then SIGHUP) still takes; running is the
             * start configuration, whose password may be older. */
            char *copy = NULL;
            if (rs->password_file) {
                char e[512];
                ctx_t rc = {.name = next->path, .err = e, .err_size = sizeof(e)};
                outboxd_source_conf_t tmp = {.password_file = rs->password_file};
                if (read_password(&rc, &tmp, "password_file", 0))
                    copy = tmp.password;
            }
            if (!copy && rs->password && !(copy = strdup(rs->password)))
                return -1;
            if (ns->password) {
                explicit_bzero(ns->password, strlen(ns->password));
                free(ns->password);
            }
            ns->password = copy;
        }
    }
    for (size_t j = 0; j < next->n_sources; j++) {
        bool known = false;
        for (size_t i = 0; i < running->n_sources && !known; i++)
            known = strcmp(next->sources[j].name, running->sources[i].name) == 0;
        if (!known && !outboxd_buf_printf(changed, "sources[%zu]: source %s added\n", j,
                                          next->sources[j].name))
            return -1;
    }
    return 0;
}

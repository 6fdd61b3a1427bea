/*
 * okcat: the Kafka consumer the integration tests, benchmarks and demo use to
 * read what outboxd published and to check its delivery claims (every event
 * exactly once, on the right topic with the right key, in per-key order).
 *
 * It reads with isolation.level=read_committed, so it sees exactly what a
 * downstream transactional reader would: aborted relay transactions are
 * invisible, and a duplicate here is a real duplicate.
 *
 * Report lines start with "okcat: " and go to stdout after any message lines;
 * diagnostics go to stderr. Exit codes: 0 ok, 1 --expect found a violation,
 * 2 usage or Kafka setup error, 3 --count not reached.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "outboxd/common/avro.h"
#include "outboxd/common/util.h"

#define EXIT_VIOLATION 1
#define EXIT_SETUP     2
#define EXIT_COUNT     3

#define MAX_EXAMPLES 10
#define NONE         UINT32_MAX
#define SEQ_UNKNOWN  INT64_MIN

static const char usage_text[] =
    "usage: okcat -b BOOTSTRAP [-t TOPIC]... [-T REGEX] [-X prop=val]...\n"
    "             [--idle-ms N] [--timeout-ms N] [--count N] [--print | --json]\n"
    "             [--expect FILE] [--latency | --latency-from-timestamp]\n"
    "\n"
    "Reads topics with a fresh consumer group (read_committed, from the earliest\n"
    "offset, no offset commits) and decodes outboxd's Avro values to JSON.\n"
    "\n"
    "  -b, --bootstrap B     Kafka bootstrap servers (required)\n"
    "  -t, --topic TOPIC     subscribe to TOPIC (repeatable)\n"
    "  -T, --regex REGEX     subscribe to all topics matching REGEX (anchored with ^\n"
    "                        if not already); new topics are found within ~1 s\n"
    "  -X prop=val           librdkafka consumer property (repeatable, overrides\n"
    "                        okcat's defaults, e.g. -X group.id=fixed)\n"
    "  --idle-ms N           stop once at least one message was read, every\n"
    "                        assigned partition is at its end and N ms passed\n"
    "                        without a new message (default 5000); with --count\n"
    "                        this rule applies only if given explicitly\n"
    "  --stable-wait-ms N    before an idle stop, wait up to N ms (default 60000;\n"
    "                        0: don't) while a partition has records past its last\n"
    "                        stable offset: a transaction still open, e.g. one a\n"
    "                        killed producer left that the broker has not yet\n"
    "                        aborted; what follows it is not readable until then\n"
    "  --timeout-ms N        stop after N ms overall (default 120000)\n"
    "  --count N             stop after N messages; exit 3 if fewer were read\n"
    "  --print               one line per message:\n"
    "                        topic TAB partition TAB offset TAB key TAB id-header TAB value\n"
    "                        (control characters and invalid UTF-8 escaped)\n"
    "  --json                one JSON object per message instead:\n"
    "                        {topic, partition, offset, key, headers, value}\n"
    "                        value: the decoded event, else the raw value as a string\n"
    "  --expect FILE         check delivery against FILE, one expected event per line:\n"
    "                        id TAB key TAB topic TAB seq  (seq: per-key order, or -;\n"
    "                        key or topic - means not checked; # starts a comment).\n"
    "                        Each id must arrive exactly once, on its topic with its\n"
    "                        key, and per key and partition in increasing seq order\n"
    "                        (a redelivered id counts as a duplicate, not also as an\n"
    "                        order violation). Exit 1 on any violation.\n"
    "  --latency             report receipt time minus the event's source.commit_time\n"
    "  --latency-from-timestamp\n"
    "                        same, but from the Kafka message timestamp\n"
    "  --ready-file FILE     create FILE once partitions are assigned and every one\n"
    "                        has reached its end (a benchmark starts its clock then)\n"
    "  --warmup-ms N         with --latency: events committed before N ms after that\n"
    "                        moment are reported apart, as warm-up (default 0)\n"
    "  --create-topics N     create every -t TOPIC with N partitions (the broker's\n"
    "                        replication factor; existing ones are left as they\n"
    "                        are) and exit: benchmarks create their topics before\n"
    "                        the clock starts\n"
    "  -h, --help            this text\n"
    "\n"
    "The event id is the Kafka header \"id\", else the \"id\" field of the value.\n"
    "Values that are not outboxd Avro (e.g. dead-letter JSON) are shown raw.\n"
    "\n"
    "Report lines go to stdout after the message lines, the last one always\n"
    "\"okcat: consumed=N\":\n"
    "  okcat: latency_ms p50=X p90=X p99=X max=X n=N           (--latency)\n"
    "  okcat: warmup_latency_ms p50=X p90=X p99=X max=X n=N    (--latency --warmup-ms)\n"
    "  okcat: commit_to_produce_ms ... / produce_to_receipt_ms ...  (--latency: steady\n"
    "         state split at the record's CreateTime, +-1 ms)\n"
    "  okcat:   missing|duplicate|unexpected|...: EXAMPLE       (--expect, <= 10 each)\n"
    "  okcat: expected=N received=N unique=N missing=N duplicates=N unexpected=N\n"
    "         wrong_topic=N wrong_key=N order_violations=N      (--expect, one line)\n"
    "  okcat: stopped=count|idle|timeout|signal|error elapsed_ms=N\n"
    "Exit: 0 ok; 2 usage or Kafka setup error; else 3 if --count was not reached;\n"
    "else 1 if --expect found a violation.\n";

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

/* A test tool has nothing sensible to do without memory. */
static void oom(void)
{
    fputs("okcat: out of memory\n", stderr);
    exit(EXIT_SETUP);
}

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        oom();
    return p;
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p)
        oom();
    return p;
}

/* ---- string arena: expected sets hold ~1M small strings that live until exit,
 * so they are packed into big blocks instead of one malloc each. */

#define ARENA_BLOCK (1u << 20)

typedef struct arena_block {
    struct arena_block *next;
    size_t used, size;
    char data[];
} arena_block_t;

typedef struct arena {
    arena_block_t *head;
} arena_t;

static char *arena_strndup(arena_t *a, const char *s, size_t len)
{
    arena_block_t *b = a->head;
    if (!b || b->size - b->used < len + 1) {
        size_t size = len + 1 > ARENA_BLOCK ? len + 1 : ARENA_BLOCK;
        b = malloc(sizeof(*b) + size);
        if (!b)
            oom();
        b->size = size;
        b->used = 0;
        b->next = a->head;
        a->head = b;
    }
    char *p = b->data + b->used;
    memcpy(p, s, len);
    p[len] = '\0';
    b->used += len + 1;
    return p;
}

static void arena_free(arena_t *a)
{
    while (a->head) {
        arena_block_t *next = a->head->next;
        free(a->head);
        a->head = next;
    }
}

/* ---- string map: open addressing with linear probing. Slots keep the hash
 * next to the index, so most probes that miss never touch the string. Strings
 * get dense indices 0..n-1 in insertion order, so callers keep per-string data
 * in parallel arrays and list examples in file order. */

static uint32_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (uint32_t)h;
}

static uint32_t hash_bytes(const char *s, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a, then a finalizer for the low bits */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return mix64(h ^ len);
}

typedef struct slot {
    uint32_t hash;
    uint32_t idx1; /* index + 1; 0 marks an empty slot */
} slot_t;

typedef struct strmap {
    slot_t *slots;
    size_t cap; /* power of two */
    const char **strs;
    uint32_t *lens;
    uint32_t n, alloc;
    arena_t *arena;
} strmap_t;

static void strmap_init(strmap_t *m, arena_t *arena)
{
    memset(m, 0, sizeof(*m));
    m->arena = arena;
    m->cap = 64;
    m->slots = xcalloc(m->cap, sizeof(slot_t));
}

static void strmap_free(strmap_t *m)
{
    free(m->slots);
    free(m->strs);
    free(m->lens);
}

static uint32_t strmap_find_h(const strmap_t *m, const char *s, size_t len, uint32_t h)
{
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const slot_t *sl = &m->slots[i];
        if (!sl->idx1)
            return NONE;
        uint32_t idx = sl->idx1 - 1;
        if (sl->hash == h && m->lens[idx] == len && memcmp(m->strs[idx], s, len) == 0)
            return idx;
    }
}

static void strmap_place(slot_t *slots, size_t cap, uint32_t h, uint32_t idx1)
{
    size_t mask = cap - 1;
    size_t i = h & mask;
    while (slots[i].idx1)
        i = (i + 1) & mask;
    slots[i].hash = h;
    slots[i].idx1 = idx1;
}

/* Adds s (absent, hash h) and returns its index. */
static uint32_t strmap_add_h(strmap_t *m, const char *s, size_t len, uint32_t h)
{
    if (len > UINT32_MAX || m->n >= UINT32_MAX - 1)
        oom();
    /* Keep the load under 0.7: linear probing degrades quickly above that. */
    if ((size_t)(m->n + 1) * 10 > m->cap * 7) {
        size_t ncap = m->cap * 2;
        slot_t *ns = xcalloc(ncap, sizeof(slot_t));
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].idx1)
                strmap_place(ns, ncap, m->slots[i].hash, m->slots[i].idx1);
        free(m->slots);
        m->slots = ns;
        m->cap = ncap;
    }
    if (m->n == m->alloc) {
        m->alloc = m->alloc ? m->alloc * 2 : 64;
        m->strs = xrealloc(m->strs, m->alloc * sizeof(*m->strs));
        m->lens = xrealloc(m->lens, m->alloc * sizeof(*m->lens));
    }
    uint32_t idx = m->n++;
    m->strs[idx] = arena_strndup(m->arena, s, len);
    m->lens[idx] = (uint32_t)len;
    strmap_place(m->slots, m->cap, h, idx + 1);
    return idx;
}

static uint32_t strmap_intern(strmap_t *m, const char *s, size_t len)
{
    uint32_t h = hash_bytes(s, len);
    uint32_t idx = strmap_find_h(m, s, len, h);
    return idx != NONE ? idx : strmap_add_h(m, s, len, h);
}

/* ---- small maps keyed by (a, b, c) integers, for per-partition and
 * per-(key, partition) state. Entries start with a tkey_t; a new entry is
 * zeroed apart from its key. */

typedef struct tkey {
    uint32_t a, b;
    int32_t c;
    uint32_t used;
} tkey_t;

typedef struct tmap {
    char *slots;
    size_t esize, cap, n;
} tmap_t;

static uint32_t tkey_hash(uint32_t a, uint32_t b, int32_t c)
{
    return mix64(((uint64_t)a << 32 | b) ^ ((uint64_t)(uint32_t)c * 0x9e3779b97f4a7c15ULL));
}

static tkey_t *tmap_slot(char *slots, size_t esize, size_t cap, uint32_t a, uint32_t b, int32_t c)
{
    size_t mask = cap - 1;
    for (size_t i = tkey_hash(a, b, c) & mask;; i = (i + 1) & mask) {
        tkey_t *k = (tkey_t *)(slots + i * esize);
        if (!k->used || (k->a == a && k->b == b && k->c == c))
            return k;
    }
}

static void *tmap_get(tmap_t *m, uint32_t a, uint32_t b, int32_t c, bool *created)
{
    if (!m->slots) {
        m->cap = 64;
        m->slots = xcalloc(m->cap, m->esize);
    }
    tkey_t *k = tmap_slot(m->slots, m->esize, m->cap, a, b, c);
    *created = !k->used;
    if (k->used)
        return k;
    if ((m->n + 1) * 10 > m->cap * 7) {
        size_t ncap = m->cap * 2;
        char *ns = xcalloc(ncap, m->esize);
        for (size_t i = 0; i < m->cap; i++) {
            tkey_t *o = (tkey_t *)(m->slots + i * m->esize);
            if (o->used)
                memcpy(tmap_slot(ns, m->esize, ncap, o->a, o->b, o->c), o, m->esize);
        }
        free(m->slots);
        m->slots = ns;
        m->cap = ncap;
        k = tmap_slot(m->slots, m->esize, m->cap, a, b, c);
    }
    k->used = 1;
    k->a = a;
    k->b = b;
    k->c = c;
    m->n++;
    return k;
}

/* The i-th used entry's successor: for (i = 0; (e = tmap_next(m, &i));) */
static void *tmap_next(const tmap_t *m, size_t *i)
{
    for (; *i < m->cap; (*i)++) {
        tkey_t *k = (tkey_t *)(m->slots + *i * m->esize);
        if (k->used) {
            (*i)++;
            return k;
        }
    }
    return NULL;
}

/* ---- text escaping for one-line output */

/* Appends s so that it stays on one tab-separated field: control characters,
 * backslashes and bytes that are not UTF-8 become escapes. */
static void append_escaped(outboxd_buf_t *b, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        size_t n = outboxd_utf8_len(p + i, len - i);
        bool ok;
        if (c == '\\')
            ok = outboxd_buf_append(b, "\\\\", 2);
        else if (c == '\t')
            ok = outboxd_buf_append(b, "\\t", 2);
        else if (c == '\n')
            ok = outboxd_buf_append(b, "\\n", 2);
        else if (c == '\r')
            ok = outboxd_buf_append(b, "\\r", 2);
        else if (c < 0x20 || c == 0x7f || n == 0)
            ok = outboxd_buf_printf(b, "\\x%02x", c);
        else
            ok = outboxd_buf_append(b, p + i, n);
        if (!ok)
            oom();
        i += n ? n : 1;
    }
}

/* A JSON string for arbitrary bytes: as is if valid UTF-8, else escaped. */
static json_t *json_bytes(const void *data, size_t len)
{
    if (!data)
        return json_null();
    json_t *j = json_stringn(data, len);
    if (j)
        return j;
    outboxd_buf_t b = {0};
    append_escaped(&b, data, len);
    j = json_stringn(b.data ? b.data : "", b.len);
    outboxd_buf_free(&b);
    return j ? j : json_null();
}

/* ---- options and state */

typedef struct opts {
    const char *bootstrap;
    const char **topics;
    size_t ntopics;
    const char *regex;
    const char **props;
    size_t nprops;
    int64_t idle_ms;
    bool idle_given;
    int64_t timeout_ms;
    int64_t count; /* 0: no count */
    bool print, json;
    const char *expect_file;
    bool latency, latency_ts;
    const char *ready_file; /* created once assigned and caught up */
    int64_t warmup_ms;
    int64_t create_partitions; /* --create-topics: 0 = off */
    int64_t stable_wait_ms;    /* idle stop: wait this long for open transactions */
} opts_t;

typedef struct examples {
    char *text[MAX_EXAMPLES];
    size_t n;
} examples_t;

typedef struct expect_info {
    uint32_t key;   /* index in keys, or NONE: not checked */
    uint32_t topic; /* index in topics, or NONE: not checked */
    int64_t seq;    /* SEQ_UNKNOWN: not checked */
    uint32_t received;
    bool expected; /* false: an id that was only received */
} expect_info_t;

/* Per-stream order state, keyed by (key, topic, partition): Kafka orders only
 * within a partition, so that is the sequence a per-key order can be checked
 * on. Normally each key lives in one partition of one topic. */
typedef struct ostate {
    tkey_t k;
    uint32_t last_id; /* NONE before the first event */
    int64_t last_seq;
} ostate_t;

typedef struct checker {
    arena_t arena;
    strmap_t ids, keys, topics;
    expect_info_t *info; /* parallel to ids */
    size_t info_alloc;
    tmap_t order; /* of ostate_t */
    uint64_t expected, received, no_id, wrong_topic, wrong_key, order_violations;
    examples_t ex_no_id, ex_wrong_topic, ex_wrong_key, ex_order;
} checker_t;

typedef struct samples {
    int64_t *v;
    size_t n, alloc;
} samples_t;

static void examples_add(examples_t *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void examples_add(examples_t *e, const char *fmt, ...)
{
    if (e->n >= MAX_EXAMPLES)
        return;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&e->text[e->n], fmt, ap) < 0)
        oom();
    va_end(ap);
    e->n++;
}

static void examples_free(examples_t *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->text[i]);
    e->n = 0;
}

static bool parse_i64(const char *s, int64_t min, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min)
        return false;
    *out = v;
    return true;
}

/* ---- expect file */

static void info_reserve(checker_t *c)
{
    if (c->ids.n < c->info_alloc)
        return;
    c->info_alloc = c->info_alloc ? c->info_alloc * 2 : 1024;
    c->info = xrealloc(c->info, c->info_alloc * sizeof(*c->info));
}

static int load_expect(checker_t *c, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "okcat: cannot open expect file %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    uint64_t lineno = 0;
    int rc = 0;
    while ((len = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (len == 0 || line[0] == '#')
            continue;
        char *field[4];
        int nf = 0;
        for (char *p = line; p && nf < 4; nf++) {
            field[nf] = p;
            p = strchr(p, '\t');
            if (p && nf < 3)
                *p++ = '\0';
        }
        /* Exactly four fields: a fifth would most likely be a key or an id
         * with a tab in it, which this format cannot carry. */
        if (nf != 4 || strchr(field[3], '\t') || field[0][0] == '\0') {
            fprintf(stderr, "okcat: %s:%" PRIu64 ": expected id<TAB>key<TAB>topic<TAB>seq\n", path,
                    lineno);
            rc = -1;
            break;
        }
        int64_t seq = SEQ_UNKNOWN;
        if (strcmp(field[3], "-") != 0 && !parse_i64(field[3], INT64_MIN + 1, &seq)) {
            fprintf(stderr, "okcat: %s:%" PRIu64 ": seq must be an integer or -, got \"%s\"\n",
                    path, lineno, field[3]);
            rc = -1;
            break;
        }
        size_t idlen = strlen(field[0]);
        uint32_t h = hash_bytes(field[0], idlen);
        if (strmap_find_h(&c->ids, field[0], idlen, h) != NONE) {
            /* Two expectations for one id cannot both be checked. */
            fprintf(stderr, "okcat: %s:%" PRIu64 ": duplicate id %s\n", path, lineno, field[0]);
            rc = -1;
            break;
        }
        info_reserve(c);
        uint32_t idx = strmap_add_h(&c->ids, field[0], idlen, h);
        expect_info_t *in = &c->info[idx];
        in->key =
            strcmp(field[1], "-") == 0 ? NONE : strmap_intern(&c->keys, field[1], strlen(field[1]));
        in->topic = strcmp(field[2], "-") == 0
                        ? NONE
                        : strmap_intern(&c->topics, field[2], strlen(field[2]));
        in->seq = seq;
        in->received = 0;
        in->expected = true;
        c->expected++;
    }
    if (rc == 0 && ferror(f)) {
        fprintf(stderr, "okcat: error reading %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    free(line);
    fclose(f);
    return rc;
}

/* ---- per message */

typedef struct msgview {
    const char *topic;
    int32_t partition;
    int64_t offset;
    const char *key;
    size_t key_len;
    const char *id; /* not NUL-terminated */
    size_t id_len;
} msgview_t;

static void check_message(checker_t *c, const msgview_t *m)
{
    c->received++;
    if (!m->id) {
        c->no_id++;
        examples_add(&c->ex_no_id, "%s/%" PRId32 "@%" PRId64, m->topic, m->partition, m->offset);
        return;
    }
    uint32_t h = hash_bytes(m->id, m->id_len);
    uint32_t idx = strmap_find_h(&c->ids, m->id, m->id_len, h);
    if (idx == NONE) {
        /* Remembered so repeats of an unexpected id count as duplicates. */
        info_reserve(c);
        idx = strmap_add_h(&c->ids, m->id, m->id_len, h);
        c->info[idx] = (expect_info_t){.key = NONE, .topic = NONE, .seq = SEQ_UNKNOWN};
    }
    expect_info_t *in = &c->info[idx];
    in->received++;
    if (!in->expected)
        return;
    const char *id = c->ids.strs[idx];
    uint32_t topic = strmap_intern(&c->topics, m->topic, strlen(m->topic));
    if (in->topic != NONE && in->topic != topic) {
        c->wrong_topic++;
        examples_add(&c->ex_wrong_topic, "id=%s expected topic %s, got %s/%" PRId32 "@%" PRId64, id,
                     c->topics.strs[in->topic], m->topic, m->partition, m->offset);
    }
    if (in->key != NONE && (c->keys.lens[in->key] != m->key_len ||
                            memcmp(c->keys.strs[in->key], m->key, m->key_len) != 0)) {
        c->wrong_key++;
        outboxd_buf_t got = {0};
        if (m->key)
            append_escaped(&got, m->key, m->key_len);
        examples_add(&c->ex_wrong_key, "id=%s expected key %s, got %s at %s/%" PRId32 "@%" PRId64,
                     id, c->keys.strs[in->key], m->key ? got.data ? got.data : "" : "(null)",
                     m->topic, m->partition, m->offset);
        outboxd_buf_free(&got);
    }
    /* A redelivery is already a duplicate; checking its order too would report
     * one fault twice. */
    if (in->received != 1 || in->seq == SEQ_UNKNOWN)
        return;
    uint32_t key =
        in->key != NONE ? in->key : strmap_intern(&c->keys, m->key ? m->key : "", m->key_len);
    bool created;
    ostate_t *o = tmap_get(&c->order, key, topic, m->partition, &created);
    if (created)
        o->last_id = NONE;
    if (o->last_id != NONE && in->seq <= o->last_seq) {
        c->order_violations++;
        examples_add(&c->ex_order,
                     "key=%s %s/%" PRId32 "@%" PRId64 ": id=%s seq=%" PRId64
                     " after id=%s seq=%" PRId64,
                     c->keys.strs[key], m->topic, m->partition, m->offset, id, in->seq,
                     c->ids.strs[o->last_id], o->last_seq);
    }
    /* Compare with the previous event, not the maximum, so one event out of
     * place counts once rather than once per later event. */
    o->last_id = idx;
    o->last_seq = in->seq;
}

static void print_examples(const char *what, const examples_t *e, uint64_t total)
{
    for (size_t i = 0; i < e->n; i++)
        printf("okcat:   %s: %s\n", what, e->text[i]);
    if (total > e->n)
        printf("okcat:   %s: ... and %" PRIu64 " more\n", what, total - e->n);
}

static bool report_expect(checker_t *c)
{
    uint64_t unique = 0, missing = 0, duplicates = 0, unexpected = c->no_id;
    examples_t ex_missing = {0}, ex_dup = {0}, ex_unexp = {0};
    uint64_t n_dup_ids = 0;
    for (uint32_t i = 0; i < c->ids.n; i++) {
        const expect_info_t *in = &c->info[i];
        const char *id = c->ids.strs[i];
        if (in->received > 0)
            unique++;
        if (in->received > 1) {
            duplicates += in->received - 1;
            n_dup_ids++;
            examples_add(&ex_dup, "id=%s received %" PRIu32 " times%s", id, in->received,
                         in->expected ? "" : " (unexpected)");
        }
        if (!in->expected) {
            unexpected++;
            examples_add(&ex_unexp, "id=%s", id);
        } else if (in->received == 0) {
            missing++;
            char seq[32] = "-";
            if (in->seq != SEQ_UNKNOWN)
                snprintf(seq, sizeof(seq), "%" PRId64, in->seq);
            examples_add(&ex_missing, "id=%s key=%s topic=%s seq=%s", id,
                         in->key != NONE ? c->keys.strs[in->key] : "-",
                         in->topic != NONE ? c->topics.strs[in->topic] : "-", seq);
        }
    }
    print_examples("missing", &ex_missing, missing);
    print_examples("duplicate", &ex_dup, n_dup_ids);
    print_examples("unexpected", &ex_unexp, unexpected - c->no_id);
    print_examples("unexpected (no id)", &c->ex_no_id, c->no_id);
    print_examples("wrong_topic", &c->ex_wrong_topic, c->wrong_topic);
    print_examples("wrong_key", &c->ex_wrong_key, c->wrong_key);
    print_examples("order_violation", &c->ex_order, c->order_violations);
    printf("okcat: expected=%" PRIu64 " received=%" PRIu64 " unique=%" PRIu64 " missing=%" PRIu64
           " duplicates=%" PRIu64 " unexpected=%" PRIu64 " wrong_topic=%" PRIu64
           " wrong_key=%" PRIu64 " order_violations=%" PRIu64 "\n",
           c->expected, c->received, unique, missing, duplicates, unexpected, c->wrong_topic,
           c->wrong_key, c->order_violations);
    examples_free(&ex_missing);
    examples_free(&ex_dup);
    examples_free(&ex_unexp);
    return missing == 0 && duplicates == 0 && unexpected == 0 && c->wrong_topic == 0 &&
           c->wrong_key == 0 && c->order_violations == 0;
}

static void checker_init(checker_t *c)
{
    memset(c, 0, sizeof(*c));
    strmap_init(&c->ids, &c->arena);
    strmap_init(&c->keys, &c->arena);
    strmap_init(&c->topics, &c->arena);
    c->order.esize = sizeof(ostate_t);
}

static void checker_free(checker_t *c)
{
    strmap_free(&c->ids);
    strmap_free(&c->keys);
    strmap_free(&c->topics);
    free(c->info);
    free(c->order.slots);
    examples_free(&c->ex_no_id);
    examples_free(&c->ex_wrong_topic);
    examples_free(&c->ex_wrong_key);
    examples_free(&c->ex_order);
    arena_free(&c->arena);
}

/* ---- latency */

static void samples_add(samples_t *s, int64_t v)
{
    if (s->n == s->alloc) {
        s->alloc = s->alloc ? s->alloc * 2 : 4096;
        s->v = xrealloc(s->v, s->alloc * sizeof(*s->v));
    }
    s->v[s->n++] = v;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted samples. */
static double percentile_ms(const samples_t *s, double q)
{
    size_t rank = (size_t)(q * (double)s->n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > s->n)
        rank = s->n;
    return (double)s->v[rank - 1] / 1000.0;
}

static void report_latency(samples_t *s, const char *name)
{
    if (s->n == 0) {
        printf("okcat: %s p50=- p90=- p99=- max=- n=0\n", name);
        return;
    }
    qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
    printf("okcat: %s p50=%.3f p90=%.3f p99=%.3f max=%.3f n=%zu\n", name, percentile_ms(s, 0.50),
           percentile_ms(s, 0.90), percentile_ms(s, 0.99), (double)s->v[s->n - 1] / 1000.0, s->n);
}

/* source.commit_time in µs from the decoded event. Accepts the Avro JSON
 * encoding's {"long": n} wrapper too, so it does not depend on how the
 * decoder renders a logical type. */
static bool commit_time_us(json_t *ev, int64_t *out)
{
    json_t *t = json_object_get(json_object_get(ev, "source"), "commit_time");
    if (json_is_object(t))
        t = json_object_get(t, "long");
    if (json_is_integer(t)) {
        *out = (int64_t)json_integer_value(t);
        return true;
    }
    if (json_is_real(t)) {
        *out = (int64_t)json_real_value(t);
        return true;
    }
    return false;
}

/* ---- fast envelope reader. A full decode goes through avro-c and two
 * jansson round trips and runs at ~30k events/s, slower than the relay
 * publishes, which would put okcat's own backlog into --latency. The id and
 * commit_time need only a walk over the binary datum. Its field order is
 * checked at startup against outboxd_avro_encode (peek_selftest), and the
 * fingerprint check ties every message to that same schema. */

typedef struct peek {
    const char *id;
    size_t id_len;
    int64_t commit_time_us;
} peek_t;

static bool avro_long(const unsigned char **p, const unsigned char *end, int64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        unsigned c = *(*p)++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = (int64_t)(v >> 1) ^ -(int64_t)(v & 1); /* zig-zag */
            return true;
        }
    }
    return false;
}

static bool avro_string(const unsigned char **p, const unsigned char *end, const char **str,
                        size_t *len)
{
    int64_t n;
    if (!avro_long(p, end, &n) || n < 0 || n > end - *p)
        return false;
    *str = (const char *)*p;
    *len = (size_t)n;
    *p += n;
    return true;
}

static bool envelope_peek(uint64_t fingerprint, const void *buf, size_t len, peek_t *out)
{
    const unsigned char *p = buf, *end = p + len;
    if (len < 10 || p[0] != 0xc3 || p[1] != 0x01)
        return false;
    uint64_t fp = 0;
    for (int i = 0; i < 8; i++)
        fp |= (uint64_t)p[2 + i] << (8 * i);
    if (fp != fingerprint)
        return false;
    p += 10;
    const char *str;
    size_t n;
    int64_t v;
    if (!avro_string(&p, end, &out->id, &out->id_len))
        return false;
    for (int i = 0; i < 3; i++) /* type, aggregate_type, aggregate_id */
        if (!avro_string(&p, end, &str, &n))
            return false;
    if (!avro_long(&p, end, &v) || (v != 0 && v != 1)) /* payload: null or string */
        return false;
    if (v == 1 && !avro_string(&p, end, &str, &n))
        return false;
    if (!avro_long(&p, end, &v)) /* occurred_at */
        return false;
    for (int i = 0; i < 3; i++) /* source: name, database, table */
        if (!avro_string(&p, end, &str, &n))
            return false;
    for (int i = 0; i < 3; i++) /* lsn, commit_lsn, xid */
        if (!avro_long(&p, end, &v))
            return false;
    return avro_long(&p, end, &out->commit_time_us) && p == end;
}

/* Whether envelope_peek reads what outboxd_avro_encode writes. */
static bool peek_selftest(outboxd_avro_t *av)
{
    static const char id[] = "okcat-selftest-\xc3\xa9";
    outboxd_envelope_t ev = {
        .id = {id, sizeof(id) - 1},
        .type = {"type", 4},
        .aggregate_type = {"aggregate", 9},
        .aggregate_id = {"key", 3},
        .payload = {"{\"a\":1}", 7},
        .occurred_at_us = -5,
        .source_name = {"source", 6},
        .database = {"db", 2},
        .table = {"public.outbox", 13},
        .lsn = 0x16B374D848ULL,
        .commit_lsn = 0x16B374D900ULL,
        .xid = 4000000000u,
        .commit_time_us = 1763985600123456LL,
    };
    bool ok = true;
    for (int pass = 0; ok && pass < 2; pass++) {
        ev.payload_null = pass == 1;
        outboxd_buf_t b = {0};
        char err[256];
        peek_t pk;
        ok = outboxd_avro_encode(av, &ev, &b, err, sizeof(err)) == 0 &&
             envelope_peek(outboxd_avro_envelope_fingerprint(av), b.data, b.len, &pk) &&
             pk.id_len == ev.id.len && memcmp(pk.id, ev.id.ptr, pk.id_len) == 0 &&
             pk.commit_time_us == ev.commit_time_us;
        outboxd_buf_free(&b);
    }
    return ok;
}

/* ---- Kafka */

/* Per partition ever assigned: where to resume and whether it is caught up. */
typedef struct pstate {
    tkey_t k;            /* a: topic index, c: partition */
    int64_t next_offset; /* -1 until a message was consumed */
    int64_t eof_offset;  /* where the last end of partition was reported */
    bool assigned, eof;
} pstate_t;

typedef struct run {
    const opts_t *o;
    outboxd_avro_t *av;
    checker_t *chk; /* NULL without --expect */
    samples_t lat;
    samples_t warm; /* --warmup-ms: latencies of events committed before steady_us */
    /* Steady-state events split at the record's CreateTime (when the relay
     * handed it to librdkafka): PostgreSQL commit to produce, and produce
     * to receipt (the Kafka commit, its markers, the consumer's fetch). */
    samples_t to_produce, after_produce;
    int64_t steady_us; /* wall clock; 0 until ready */
    outboxd_buf_t line;
    uint64_t consumed;
    arena_t arena;
    strmap_t topics;
    tmap_t parts; /* of pstate_t */
    bool fast;    /* envelope_peek usable */
    uint64_t fingerprint;
} run_t;

/* Events committed before the consumer was ready (plus --warmup-ms) measure
 * the consumer's own start (first fetches, group join), not the relay: they
 * are kept apart so a steady-state figure is not a warm-up figure. */
static void add_latency(run_t *r, int64_t committed_us, int64_t recv_wall_us)
{
    bool warm = r->o->warmup_ms > 0 &&
                (r->steady_us == 0 || committed_us < r->steady_us + r->o->warmup_ms * 1000);
    samples_add(warm ? &r->warm : &r->lat, recv_wall_us - committed_us);
}

static pstate_t *part_state(run_t *r, const char *topic, int32_t partition)
{
    bool created;
    uint32_t t = strmap_intern(&r->topics, topic, strlen(topic));
    pstate_t *p = tmap_get(&r->parts, t, 0, partition, &created);
    if (created)
        p->next_offset = -1;
    return p;
}

/* True when partitions are assigned and every one has reported its end since
 * its last message: idle time alone would also stop while a slow partition
 * or a rebalance is still to deliver. */
static bool caught_up(const run_t *r)
{
    size_t i = 0, n = 0;
    pstate_t *p;
    while ((p = tmap_next(&r->parts, &i))) {
        if (!p->assigned)
            continue;
        if (!p->eof)
            return false;
        n++;
    }
    return n > 0;
}

/* Nothing is committed, so a partition that is revoked and assigned again
 * (every eager rebalance does that, e.g. when -T finds a new topic) would
 * restart at the earliest offset and everything in it would look duplicated.
 * The positions are kept here instead and handed back on assignment. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    run_t *r = opaque;
    bool assign = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    for (int i = 0; i < parts->cnt; i++) {
        rd_kafka_topic_partition_t *tp = &parts->elems[i];
        pstate_t *p = part_state(r, tp->topic, tp->partition);
        p->assigned = assign;
        p->eof = false;
        if (assign && p->next_offset >= 0)
            tp->offset = p->next_offset;
    }
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t aerr = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (cooperative)
        error = assign ? rd_kafka_incremental_assign(rk, parts)
                       : rd_kafka_incremental_unassign(rk, parts);
    else
        aerr = rd_kafka_assign(rk, assign ? parts : NULL);
    if (error) {
        fprintf(stderr, "okcat: %s failed: %s\n", assign ? "assign" : "unassign",
                rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    } else if (aerr) {
        fprintf(stderr, "okcat: %s failed: %s\n", assign ? "assign" : "unassign",
                rd_kafka_err2str(aerr));
    }
}

static rd_kafka_t *make_consumer(const opts_t *o, run_t *r)
{
    char err[512];
    unsigned char rnd[8];
    char group[64];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        /* Not a security matter: the group only has to be unused. */
        uint64_t x = (uint64_t)outboxd_wall_us() ^ ((uint64_t)getpid() << 32);
        memcpy(rnd, &x, sizeof(rnd));
    }
    int n = snprintf(group, sizeof(group), "okcat-");
    for (size_t i = 0; i < sizeof(rnd); i++)
        n += snprintf(group + n, sizeof(group) - (size_t)n, "%02x", rnd[i]);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *defaults[][2] = {
        {"bootstrap.servers", o->bootstrap},
        {"group.id", group},
        {"client.id", "okcat"},
        {"isolation.level", "read_committed"},
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"auto.offset.reset", "earliest"},
        {"enable.partition.eof", "true"}, /* for caught_up() */
        /* Regex subscriptions only see topics created after start once the
         * metadata is refreshed; the default is 5 minutes. */
        {"topic.metadata.refresh.interval.ms", "1000"},
    };
    for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
        if (rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], err, sizeof(err)) !=
            RD_KAFKA_CONF_OK) {
            fprintf(stderr, "okcat: %s\n", err);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    for (size_t i = 0; i < o->nprops; i++) {
        const char *eq = strchr(o->props[i], '=');
        if (!eq || eq == o->props[i]) {
            fprintf(stderr, "okcat: -X expects prop=val, got \"%s\"\n", o->props[i]);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
        char *name = outboxd_strndup(o->props[i], (size_t)(eq - o->props[i]));
        if (!name)
            oom();
        rd_kafka_conf_res_t r = rd_kafka_conf_set(conf, name, eq + 1, err, sizeof(err));
        free(name);
        if (r != RD_KAFKA_CONF_OK) {
            fprintf(stderr, "okcat: -X %s: %s\n", o->props[i], err);
            rd_kafka_conf_destroy(conf);
            return NULL;
        }
    }
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_opaque(conf, r);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "okcat: cannot create consumer: %s\n", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

/*
 * The idle stop's last check. A read_committed consumer reports the end of
 * a partition at its last stable offset: a transaction still open there (a
 * killed producer's, which the broker aborts only after its
 * transaction.timeout.ms) hides every record after it, so stopping then
 * would report committed events as missing. True once every assigned
 * partition's end is its high watermark, or after --stable-wait-ms. The
 * high watermark is the one the last fetch response carried (librdkafka
 * keeps it apart from the stable offset it reads up to), so this asks the
 * broker nothing.
 */
typedef struct stab {
    int64_t since_ms; /* when found unstable; 0 until then */
    bool done;        /* stable, or given up */
} stab_t;

static bool stable(rd_kafka_t *rk, run_t *r, stab_t *st, int64_t now)
{
    const opts_t *o = r->o;
    if (o->stable_wait_ms == 0 || st->done)
        return true;
    size_t i = 0, n = 0;
    pstate_t *p, *first = NULL;
    int64_t first_hi = 0;
    while ((p = tmap_next(&r->parts, &i))) {
        if (!p->assigned)
            continue;
        int64_t lo = -1, hi = -1;
        if (rd_kafka_get_watermark_offsets(rk, r->topics.strs[p->k.a], p->k.c, &lo, &hi) || hi < 0)
            continue; /* not fetched yet: its end of partition is still to come */
        if (hi > p->eof_offset) {
            if (!first) {
                first = p;
                first_hi = hi;
            }
            n++;
        }
    }
    int64_t waited = st->since_ms ? now - st->since_ms : 0;
    if (n == 0) {
        if (st->since_ms)
            fprintf(stderr, "okcat: the open transactions ended after %" PRId64 " ms\n", waited);
        st->done = true;
        return true;
    }
    if (!st->since_ms) {
        st->since_ms = now;
        fprintf(stderr,
                "okcat: %zu partition(s) have records past their last stable offset, e.g. %s "
                "[%" PRId32 "] ends at %" PRId64 " of %" PRId64
                ": a transaction is open there (the broker aborts a dead producer's after its "
                "transaction.timeout.ms); waiting up to %" PRId64 " ms\n",
                n, r->topics.strs[first->k.a], first->k.c, first->eof_offset, first_hi,
                o->stable_wait_ms);
    } else if (waited >= o->stable_wait_ms) {
        fprintf(stderr,
                "okcat: %zu partition(s) still have an open transaction after %" PRId64
                " ms, e.g. %s [%" PRId32 "] ends at %" PRId64 " of %" PRId64
                "; stopping without what follows it\n",
                n, waited, r->topics.strs[first->k.a], first->k.c, first->eof_offset, first_hi);
        st->done = true;
        return true;
    }
    return false;
}

static int subscribe(rd_kafka_t *rk, const opts_t *o)
{
    rd_kafka_topic_partition_list_t *l =
        rd_kafka_topic_partition_list_new((int)o->ntopics + (o->regex ? 1 : 0));
    for (size_t i = 0; i < o->ntopics; i++)
        rd_kafka_topic_partition_list_add(l, o->topics[i], RD_KAFKA_PARTITION_UA);
    char *pattern = NULL;
    if (o->regex) {
        /* librdkafka treats a subscription as a regex only if it starts with ^. */
        if (o->regex[0] == '^') {
            pattern = strdup(o->regex);
        } else if (asprintf(&pattern, "^%s", o->regex) < 0) {
            pattern = NULL;
        }
        if (!pattern)
            oom();
        rd_kafka_topic_partition_list_add(l, pattern, RD_KAFKA_PARTITION_UA);
    }
    rd_kafka_resp_err_t err = rd_kafka_subscribe(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err) {
        fprintf(stderr, "okcat: cannot subscribe to %s: %s\n", pattern ? pattern : "topics",
                rd_kafka_err2str(err));
        free(pattern);
        return -1;
    }
    free(pattern);
    return 0;
}

/* Consumer errors worth stopping for. Everything else (a topic that does not
 * exist yet, a broker that is briefly down) is retried by librdkafka, and
 * tests deliberately restart brokers under the relay. */
static bool error_is_fatal(rd_kafka_t *rk, rd_kafka_resp_err_t err)
{
    char buf[512];
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        rd_kafka_fatal_error(rk, buf, sizeof(buf));
        fprintf(stderr, "okcat: fatal consumer error: %s\n", buf);
        return true;
    }
    return err == RD_KAFKA_RESP_ERR__AUTHENTICATION || err == RD_KAFKA_RESP_ERR__INVALID_ARG ||
           err == RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED ||
           err == RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED;
}

/* ---- options */

static int parse_opts(int argc, char **argv, opts_t *o)
{
    enum {
        OPT_IDLE = 256,
        OPT_TIMEOUT,
        OPT_COUNT,
        OPT_PRINT,
        OPT_JSON,
        OPT_EXPECT,
        OPT_LATENCY,
        OPT_LATENCY_TS,
        OPT_READY_FILE,
        OPT_WARMUP_MS,
        OPT_CREATE,
        OPT_STABLE_WAIT,
    };
    static const struct option longopts[] = {
        {"bootstrap", required_argument, NULL, 'b'},
        {"topic", required_argument, NULL, 't'},
        {"regex", required_argument, NULL, 'T'},
        {"idle-ms", required_argument, NULL, OPT_IDLE},
        {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
        {"count", required_argument, NULL, OPT_COUNT},
        {"print", no_argument, NULL, OPT_PRINT},
        {"json", no_argument, NULL, OPT_JSON},
        {"expect", required_argument, NULL, OPT_EXPECT},
        {"latency", no_argument, NULL, OPT_LATENCY},
        {"latency-from-timestamp", no_argument, NULL, OPT_LATENCY_TS},
        {"ready-file", required_argument, NULL, OPT_READY_FILE},
        {"warmup-ms", required_argument, NULL, OPT_WARMUP_MS},
        {"create-topics", required_argument, NULL, OPT_CREATE},
        {"stable-wait-ms", required_argument, NULL, OPT_STABLE_WAIT},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    o->idle_ms = 5000;
    o->timeout_ms = 120000;
    o->stable_wait_ms = 60000;
    int c;
    while ((c = getopt_long(argc, argv, "b:t:T:X:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'b':
            o->bootstrap = optarg;
            break;
        case 't':
            o->topics = xrealloc(o->topics, (o->ntopics + 1) * sizeof(*o->topics));
            o->topics[o->ntopics++] = optarg;
            break;
        case 'T':
            if (o->regex) {
                fprintf(stderr, "okcat: -T given twice; combine the patterns with |\n");
                return -1;
            }
            o->regex = optarg;
            break;
        case 'X':
            o->props = xrealloc(o->props, (o->nprops + 1) * sizeof(*o->props));
            o->props[o->nprops++] = optarg;
            break;
        case OPT_IDLE:
            if (!parse_i64(optarg, 1, &o->idle_ms)) {
                fprintf(stderr, "okcat: --idle-ms needs a positive integer, got \"%s\"\n", optarg);
                return -1;
            }
            o->idle_given = true;
            break;
        case OPT_STABLE_WAIT:
            if (!parse_i64(optarg, 0, &o->stable_wait_ms)) {
                fprintf(stderr,
                        "okcat: --stable-wait-ms needs a non-negative integer, got \"%s\"\n",
                        optarg);
                return -1;
            }
            break;
        case OPT_TIMEOUT:
            if (!parse_i64(optarg, 1, &o->timeout_ms)) {
                fprintf(stderr, "okcat: --timeout-ms needs a positive integer, got \"%s\"\n",
                        optarg);
                return -1;
            }
            break;
        case OPT_COUNT:
            if (!parse_i64(optarg, 1, &o->count)) {
                fprintf(stderr, "okcat: --count needs a positive integer, got \"%s\"\n", optarg);
                return -1;
            }
            break;
        case OPT_PRINT:
            o->print = true;
            break;
        case OPT_JSON:
            o->json = true;
            break;
        case OPT_EXPECT:
            o->expect_file = optarg;
            break;
        case OPT_READY_FILE:
            o->ready_file = optarg;
            break;
        case OPT_WARMUP_MS:
            if (!parse_i64(optarg, 1, &o->warmup_ms)) {
                fprintf(stderr, "okcat: --warmup-ms needs a positive integer, got \"%s\"\n",
                        optarg);
                return -1;
            }
            break;
        case OPT_CREATE:
            if (!parse_i64(optarg, 1, &o->create_partitions)) {
                fprintf(stderr,
                        "okcat: --create-topics needs a positive partition count, got \"%s\"\n",
                        optarg);
                return -1;
            }
            break;
        case OPT_LATENCY:
            o->latency = true;
            break;
        case OPT_LATENCY_TS:
            o->latency = true;
            o->latency_ts = true;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return 1;
        default:
            fputs(usage_text, stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "okcat: unexpected argument \"%s\"\n", argv[optind]);
        return -1;
    }
    if (!o->bootstrap) {
        fprintf(stderr, "okcat: -b BOOTSTRAP is required\n");
        return -1;
    }
    if (o->ntopics == 0 && !o->regex) {
        fprintf(stderr, "okcat: give at least one -t TOPIC or a -T REGEX\n");
        return -1;
    }
    return 0;
}

/* ---- main loop */

static void handle_message(run_t *r, const rd_kafka_message_t *m, int64_t recv_wall_us)
{
    const opts_t *o = r->o;
    const char *topic = rd_kafka_topic_name(m->rkt);
    pstate_t *ps = part_state(r, topic, m->partition);
    ps->next_offset = m->offset + 1;
    ps->eof = false;
    rd_kafka_headers_t *hdrs = NULL;
    const void *hid = NULL;
    size_t hid_len = 0;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(hdrs, "id", &hid, &hid_len) != RD_KAFKA_RESP_ERR_NO_ERROR)
        hid = NULL;

    /* Decoding is the expensive part of a million-event check, so it is done
     * only when something needs the value, and the fields are read with
     * envelope_peek when possible. */
    bool need_fields = (o->latency && !o->latency_ts) || (r->chk && !hid);
    peek_t pk;
    bool peeked = need_fields && r->fast && m->payload &&
                  envelope_peek(r->fingerprint, m->payload, m->len, &pk);
    char *decoded = NULL;
    json_t *ev = NULL;
    if (m->payload && (o->print || o->json || (need_fields && !r->fast))) {
        char err[256];
        decoded = outboxd_avro_decode_to_json(r->av, m->payload, m->len, err, sizeof(err));
        if (decoded && (o->json || (need_fields && !r->fast)))
            ev = json_loads(decoded, 0, NULL);
    }

    const char *id = hid;
    size_t id_len = hid_len;
    bool have_commit = false;
    int64_t commit_us = 0;
    json_t *raw = NULL;
    if (peeked) {
        if (!id) {
            id = pk.id;
            id_len = pk.id_len;
        }
        have_commit = true;
        commit_us = pk.commit_time_us;
    } else if (ev) {
        json_t *jid = json_object_get(ev, "id");
        if (!id && json_is_string(jid)) {
            id = json_string_value(jid);
            id_len = json_string_length(jid);
        }
        have_commit = commit_time_us(ev, &commit_us);
    } else if (r->chk && !id && m->payload && !decoded) {
        /* Not an event: e.g. a dead-letter record, which is JSON. */
        raw = json_loadb(m->payload, m->len, 0, NULL);
        json_t *jid = json_object_get(raw, "id");
        if (json_is_string(jid)) {
            id = json_string_value(jid);
            id_len = json_string_length(jid);
        }
    }

    if (r->chk) {
        msgview_t v = {.topic = topic,
                       .partition = m->partition,
                       .offset = m->offset,
                       .key = m->key,
                       .key_len = m->key ? m->key_len : 0,
                       .id = id,
                       .id_len = id_len};
        check_message(r->chk, &v);
    }

    if (o->latency) {
        if (o->latency_ts) {
            rd_kafka_timestamp_type_t tt;
            int64_t ts_ms = rd_kafka_message_timestamp(m, &tt);
            if (ts_ms >= 0)
                add_latency(r, ts_ms * 1000, recv_wall_us);
        } else if (have_commit) {
            add_latency(r, commit_us, recv_wall_us);
            rd_kafka_timestamp_type_t tt;
            int64_t ts_ms = rd_kafka_message_timestamp(m, &tt);
            bool warm = o->warmup_ms > 0 &&
                        (r->steady_us == 0 || commit_us < r->steady_us + o->warmup_ms * 1000);
            if (!warm && ts_ms >= 0 && tt == RD_KAFKA_TIMESTAMP_CREATE_TIME) {
                samples_add(&r->to_produce, ts_ms * 1000 - commit_us);
                samples_add(&r->after_produce, recv_wall_us - ts_ms * 1000);
            }
        }
    }

    if (o->json) {
        json_t *obj = json_object();
        json_t *hobj = json_object();
        const char *name;
        const void *val;
        size_t vlen;
        for (size_t i = 0; hdrs && rd_kafka_header_get_all(hdrs, i, &name, &val, &vlen) ==
                                       RD_KAFKA_RESP_ERR_NO_ERROR;
             i++)
            json_object_set_new(hobj, name, json_bytes(val, vlen));
        json_object_set_new(obj, "topic", json_string(topic));
        json_object_set_new(obj, "partition", json_integer(m->partition));
        json_object_set_new(obj, "offset", json_integer(m->offset));
        json_object_set_new(obj, "key", json_bytes(m->key, m->key_len));
        json_object_set_new(obj, "headers", hobj);
        json_t *value = ev && decoded ? json_incref(ev)
                        : decoded     ? json_string(decoded)
                                      : json_bytes(m->payload, m->len);
        json_object_set_new(obj, "value", value);
        char *s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!s)
            oom();
        puts(s);
        free(s);
        json_decref(obj);
    } else if (o->print) {
        outboxd_buf_t *b = &r->line;
        outboxd_buf_reset(b);
        if (!outboxd_buf_printf(b, "%s\t%" PRId32 "\t%" PRId64 "\t", topic, m->partition,
                                m->offset))
            oom();
        if (m->key)
            append_escaped(b, m->key, m->key_len);
        if (!outboxd_buf_append(b, "\t", 1))
            oom();
        if (hid)
            append_escaped(b, hid, hid_len);
        if (!outboxd_buf_append(b, "\t", 1))
            oom();
        if (decoded)
            append_escaped(b, decoded, strlen(decoded));
        else if (m->payload)
            append_escaped(b, m->payload, m->len);
        else if (!outboxd_buf_append_str(b, "null"))
            oom();
        if (!outboxd_buf_append(b, "\n", 1))
            oom();
        fwrite(b->data, 1, b->len, stdout);
    }
    json_decref(raw);
    json_decref(ev);
    free(decoded);
}

/* --create-topics: CreateTopics for every -t topic; exit status 0 when each
 * exists afterwards. */
static int create_topics(const opts_t *o)
{
    char err[512];
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    if (rd_kafka_conf_set(kc, "bootstrap.servers", o->bootstrap, err, sizeof(err)) !=
        RD_KAFKA_CONF_OK) {
        fprintf(stderr, "okcat: %s\n", err);
        rd_kafka_conf_destroy(kc);
        return EXIT_SETUP;
    }
    for (size_t i = 0; i < o->nprops; i++) {
        char *kv = strdup(o->props[i]), *eq = kv ? strchr(kv, '=') : NULL;
        if (eq) {
            *eq = '\0';
            (void)rd_kafka_conf_set(kc, kv, eq + 1, err, sizeof(err));
        }
        free(kv);
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, kc, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "okcat: %s\n", err);
        rd_kafka_conf_destroy(kc);
        return EXIT_SETUP;
    }
    rd_kafka_NewTopic_t **nt = xrealloc(NULL, o->ntopics * sizeof(*nt));
    for (size_t i = 0; i < o->ntopics; i++) {
        nt[i] =
            rd_kafka_NewTopic_new(o->topics[i], (int)o->create_partitions, -1, err, sizeof(err));
        if (!nt[i]) {
            fprintf(stderr, "okcat: topic %s: %s\n", o->topics[i], err);
            rd_kafka_NewTopic_destroy_array(nt, i);
            free(nt);
            rd_kafka_destroy(rk);
            return EXIT_SETUP;
        }
    }
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_CreateTopics(rk, nt, o->ntopics, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
    int rc = EXIT_SETUP;
    if (!ev) {
        fprintf(stderr, "okcat: creating topics: no answer in 30 s\n");
    } else if (rd_kafka_event_error(ev)) {
        fprintf(stderr, "okcat: creating topics: %s\n", rd_kafka_event_error_string(ev));
    } else {
        size_t n;
        const rd_kafka_topic_result_t **tr =
            rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &n);
        rc = 0;
        for (size_t i = 0; i < n; i++) {
            rd_kafka_resp_err_t e = rd_kafka_topic_result_error(tr[i]);
            if (e && e != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
                fprintf(stderr, "okcat: creating %s: %s\n", rd_kafka_topic_result_name(tr[i]),
                        rd_kafka_topic_result_error_string(tr[i]));
                rc = EXIT_SETUP;
            }
        }
    }
    if (ev)
        rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_NewTopic_destroy_array(nt, o->ntopics);
    free(nt);
    rd_kafka_destroy(rk);
    return rc;
}

int main(int argc, char **argv)
{
    opts_t o = {0};
    int prc = parse_opts(argc, argv, &o);
    if (prc != 0) {
        free(o.topics);
        free(o.props);
        return prc > 0 ? 0 : EXIT_SETUP;
    }
    if (o.create_partitions > 0) {
        int crc = create_topics(&o);
        free(o.topics);
        free(o.props);
        return crc;
    }

    int rc = EXIT_SETUP;
    checker_t chk;
    bool have_chk = false;
    rd_kafka_t *rk = NULL;
    stab_t stab = {0};
    run_t r = {.o = &o, .parts = {.esize = sizeof(pstate_t)}};
    strmap_init(&r.topics, &r.arena);
    char err[512];
    int64_t start_ms = outboxd_now_ms();

    r.av = outboxd_avro_new(err, sizeof(err));
    if (!r.av) {
        fprintf(stderr, "okcat: cannot load the envelope schema: %s\n", err);
        goto out;
    }
    r.fingerprint = outboxd_avro_envelope_fingerprint(r.av);
    r.fast = peek_selftest(r.av);
    if (!r.fast)
        fprintf(stderr, "okcat: note: envelope layout changed, decoding every value in full\n");
    if (o.expect_file) {
        checker_init(&chk);
        have_chk = true;
        if (load_expect(&chk, o.expect_file) != 0)
            goto out;
        r.chk = &chk;
    }

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rk = make_consumer(&o, &r);
    if (!rk)
        goto out;

    /* librdkafka retries an unreachable cluster forever; ask for metadata up
     * front so a wrong address fails with a clear message instead of a
     * timeout. Retried for a while: a broker that is still starting fails a
     * request fast. */
    const struct rd_kafka_metadata *md = NULL;
    int64_t connect_ms = o.timeout_ms < 10000 ? o.timeout_ms : 10000;
    rd_kafka_resp_err_t merr;
    for (;;) {
        int64_t left = connect_ms - (outboxd_now_ms() - start_ms);
        merr = rd_kafka_metadata(rk, 0, NULL, &md, left > 0 ? (int)left : 1);
        if (!merr || stop_signal || outboxd_now_ms() - start_ms >= connect_ms)
            break;
        usleep(200 * 1000);
    }
    if (merr) {
        fprintf(stderr, "okcat: cannot connect to Kafka at %s: %s\n", o.bootstrap,
                rd_kafka_err2str(merr));
        goto out;
    }
    rd_kafka_metadata_destroy(md);
    if (subscribe(rk, &o) != 0)
        goto out;

    const char *stopped = "timeout";
    bool fatal = false;
    int64_t last_msg_ms = 0;
    bool idle_rule = o.count == 0 || o.idle_given;
    for (;;) {
        if (stop_signal) {
            stopped = "signal";
            break;
        }
        if (o.count && r.consumed >= (uint64_t)o.count) {
            stopped = "count";
            break;
        }
        int64_t now = outboxd_now_ms();
        if (now - start_ms >= o.timeout_ms) {
            stopped = "timeout";
            break;
        }
        if (idle_rule && r.consumed > 0 && now - last_msg_ms >= o.idle_ms && caught_up(&r) &&
            stable(rk, &r, &stab, now)) {
            stopped = "idle";
            break;
        }
        if (!r.steady_us && caught_up(&r)) {
            r.steady_us = outboxd_wall_us();
            if (o.ready_file) {
                FILE *f = fopen(o.ready_file, "w");
                if (f)
                    fclose(f);
                else
                    fprintf(stderr, "okcat: cannot create %s: %s\n", o.ready_file, strerror(errno));
            }
        }
        int64_t wait = o.timeout_ms - (now - start_ms);
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, wait < 100 ? (int)wait : 100);
        if (!m) {
            /* Flush while idle, not per line: output may be a million lines. */
            fflush(stdout);
            continue;
        }
        if (m->err) {
            if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                if (m->rkt) {
                    pstate_t *ps = part_state(&r, rd_kafka_topic_name(m->rkt), m->partition);
                    ps->eof = true;
                    ps->eof_offset = m->offset;
                }
            } else {
                if (m->rkt)
                    fprintf(stderr, "okcat: consumer error on %s [%" PRId32 "]: %s\n",
                            rd_kafka_topic_name(m->rkt), m->partition, rd_kafka_message_errstr(m));
                else
                    fprintf(stderr, "okcat: consumer error: %s\n", rd_kafka_message_errstr(m));
                fatal = error_is_fatal(rk, m->err);
            }
            rd_kafka_message_destroy(m);
            if (fatal)
                break;
            continue;
        }
        int64_t recv_wall_us = outboxd_wall_us();
        handle_message(&r, m, recv_wall_us);
        rd_kafka_message_destroy(m);
        r.consumed++;
        last_msg_ms = outboxd_now_ms();
    }
    fflush(stdout);

    rc = 0;
    if (o.latency) {
        report_latency(&r.lat, "latency_ms");
        if (o.warmup_ms > 0)
            report_latency(&r.warm, "warmup_latency_ms");
        if (!o.latency_ts) {
            /* CreateTime has millisecond resolution: these are +-1 ms. */
            report_latency(&r.to_produce, "commit_to_produce_ms");
            report_latency(&r.after_produce, "produce_to_receipt_ms");
        }
    }
    if (r.chk && !report_expect(r.chk))
        rc = EXIT_VIOLATION;
    if (o.count && r.consumed < (uint64_t)o.count)
        rc = EXIT_COUNT;
    if (fatal)
        rc = EXIT_SETUP;
    printf("okcat: stopped=%s elapsed_ms=%" PRId64 "\n", fatal ? "error" : stopped,
           outboxd_now_ms() - start_ms);
    printf("okcat: consumed=%" PRIu64 "\n", r.consumed);

out:
    fflush(stdout);
    if (rk) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    if (have_chk)
        checker_free(&chk);
    if (r.av)
        outboxd_avro_destroy(r.av);
    strmap_free(&r.topics);
    free(r.parts.slots);
    arena_free(&r.arena);
    free(r.lat.v);
    free(r.to_produce.v);
    free(r.after_produce.v);
    free(r.warm.v);
    outboxd_buf_free(&r.line);
    free(o.topics);
    free(o.props);
    return rc;
}

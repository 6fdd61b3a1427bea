/*
 * Initial snapshot of cdc tables (see snapshot.h and README "Snapshots").
 *
 * How a snapshot lines up with the stream
 * ---------------------------------------
 * A snapshot is read under a snapshot exported by a *temporary* logical
 * slot created for the purpose (CREATE_REPLICATION_SLOT ... TEMPORARY
 * LOGICAL pgoutput with SNAPSHOT 'export') on a replication connection that
 * stays open and idle while the rows are read. PostgreSQL guarantees for
 * that slot's consistent point P what its own table synchronization relies
 * on: a transaction whose commit record lies before P is visible in the
 * exported snapshot, one at or after P is not (it is what that slot would
 * decode). The source's own slot is older (its position M <= P), so the
 * stream delivers every transaction committed from M on. For a row of the
 * snapshot the rule is therefore exact:
 *
 *     a streamed change of a snapshotted key, from a transaction whose
 *     commit LSN is below P, is already reflected in the row read: skip it;
 *     one at or after P is not: publish it.
 *
 * Nothing is missed (every commit >= P is streamed, every commit < P is in
 * the row) and nothing shows twice. Using a temporary slot rather than the
 * source's slot keeps one mechanism for the first start, for tables added to
 * a running source, and for resuming: the source's slot may already hold
 * unread outbox changes, which dropping and re-creating it would lose.
 *
 * Chunks and crashes
 * ------------------
 * Rows are read by primary key, a chunk (at most relay.max_batch_events
 * rows, sized to about CHUNK_BYTES from the previous chunk's rows) per
 * query (keyset pagination: WHERE (pk) > (last key) ORDER BY pk LIMIT n), and
 * each chunk is one Kafka transaction whose checkpoint record carries the
 * progress: the run's tables, the current one and the last key published.
 * Kafka commits the rows and the progress together or neither.
 *
 * After a crash the exported snapshot is gone. The run resumes with a new
 * temporary slot (consistent point P2) and reads the keys after the last
 * published one under its snapshot. The checkpoint keeps, per table, the
 * list of segments [(after key, P)]: keys up to K were read under P1, keys
 * after K under P2. A streamed change finds its key's segment (the last one
 * whose "after key" is below the key, in the table's primary-key order) and
 * is skipped iff its commit LSN is below that segment's P. Each segment is
 * exact by the argument above, so the union is: every key was published once
 * by the snapshot, and from its own segment's point on by the stream. This
 * is the watermark idea of DBLog and of Debezium's incremental snapshots,
 * with the watermark being a slot's consistent point instead of a signal row.
 *
 * Key order: the segment boundaries are compared in the table's primary-key
 * order, which is PostgreSQL's (collations): integer keys are compared here,
 * any other key type by asking the server (only for changes committed before
 * the last segment's point, on tables with more than one segment, i.e. only
 * after a crash during the snapshot).
 *
 * Reading a table again
 * ---------------------
 * The skip rule is exact for a consumer that starts with none of the
 * table's rows. A table read while consumers may hold rows from the stream
 * already (a snapshot requested with the signal table, a table switched
 * from snapshot: never to initial or added by a reload, a when_needed
 * table read again) gets no segment: the stream publishes every change of
 * its from the stream's position M on, also those before P, after the
 * snapshot's rows. A change committed before P is then seen twice (in its
 * row and as itself), but the consumer's copy converges to the table: a
 * row deleted between M and P is deleted (skipped, its delete would leave
 * the consumer's old copy of the row for good), one deleted and inserted
 * again ends inserted. At least once for that window, as Debezium's
 * blocking snapshot.
 *
 * Streaming starts only when the run has finished (a stop or a failure
 * during the run resumes it at the next connect). Segments are forgotten once
 * the stream's checkpoint is past their point (nothing below it can come
 * again).
 */
#include "outboxd/relay/snapshot.h"

#include <inttypes.h>
#include <stdarg.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "outboxd/common/log.h"
#include "outboxd/relay/pgconn.h"
#include "outboxd/relay/pgsetup.h"

#define INT2_OID 21
#define INT4_OID 23
#define INT8_OID 20

/* A table as the snapshot reads it (from the catalog). */
typedef struct table_info {
    char *name; /* "schema.table", the key in the progress */
    outboxd_pgo_relation_t rel;
    int *pk; /* indices into rel.cols, in primary-key order */
    int npk;
    bool pk_int;      /* every key column is int2/int4/int8: compared here */
    char *cmp_sql;    /* SELECT ROW(key casts) > ROW(...) for other key types */
    char *first_sql;  /* first chunk */
    char *next_sql;   /* chunks after a key */
    char *more_sql;   /* whether a row follows a key */
    double row_bytes; /* bytes per row of the last chunk read (0: none yet) */
    double est_bytes; /* the catalog's bytes per row (0: none), estimate_row_bytes */
    bool estimated;   /* estimate_row_bytes ran */
} table_info_t;

/* A chunk holds about this many bytes of rows at most, besides
 * max_batch_events rows: its rows are in memory twice until its Kafka
 * commit (libpq's result, librdkafka's queue), so a bound in rows alone
 * would keep 5,000 rows of 1 MB (10 GB) resident. The bytes per row measured
 * on each chunk size the next. The first chunk a session reads of a table
 * is at most FIRST_CHUNK_ROWS rows, fewer when the catalog's size per row
 * says they are large (estimate_row_bytes: a lower bound, TOAST compresses),
 * and FIRST_CHUNK_BLIND rows when the table is large and its row count
 * unknown (never analyzed). */
#define CHUNK_BYTES       ((double)(16 << 20))
#define FIRST_CHUNK_ROWS  64
#define FIRST_CHUNK_BLIND 4

/* Rows the next chunk of ti asks for, at most max_rows. */
static int chunk_rows(const table_info_t *ti, int max_rows)
{
    if (ti->row_bytes <= 0) {
        int first = FIRST_CHUNK_ROWS;
        if (ti->est_bytes > 0 && CHUNK_BYTES / ti->est_bytes < first)
            first = CHUNK_BYTES / ti->est_bytes < 1 ? 1 : (int)(CHUNK_BYTES / ti->est_bytes);
        return max_rows < first ? max_rows : first;
    }
    double rows = CHUNK_BYTES / ti->row_bytes;
    return rows >= max_rows ? max_rows : rows < 1 ? 1 : (int)rows;
}

/* One segment of a snapshotted table: keys after `key` (NULL: from the
 * start) were read under a snapshot at consistent point p. */
typedef struct seg {
    char **key;
    outboxd_lsn_t p;
} seg_t;

/* A snapshot row whose event Kafka refused for good (too large for the
 * topic, ...): when its chunk is read again the row goes to the dead-letter
 * topic instead, in the chunk's transaction (see note_refused). */
typedef struct refused_row {
    char *table;
    char **key; /* primary key values (text), NULL-terminated */
    char reason[768];
    int level; /* 0: dead letter with the row; 1: without it (that was refused too) */
    bool used; /* dead-lettered in the open Kafka transaction */
} refused_row_t;

typedef struct seg_table {
    char *name;
    seg_t *segs;
    size_t n;
    outboxd_lsn_t min_p, max_p;
    table_info_t *info; /* loaded on first need for key comparisons */
} seg_table_t;

struct outboxd_snapshot {
    const outboxd_config_t *conf;
    const outboxd_source_conf_t *src;
    const char *name;
    json_t *state; /* the progress, as in the checkpoint */
    bool pending;
    PGconn *conn;     /* normal connection: reads and key comparisons */
    atomic_int *stop; /* the source's: gives up a query at once */
    /* The stream filter, built from state["segs"]. */
    seg_table_t *segt;
    size_t n_segt;
    outboxd_lsn_t max_p;
    json_t *requested; /* tables a signal asked for, not applied yet */
    refused_row_t *refused;
    size_t n_refused;
    /* A chunk's records were refused together (max.message.bytes applies
     * to a whole batch): it is replayed one record per request to find the
     * one Kafka refuses, instead of dead-lettering a guess. */
    bool isolating;
    /* The rows and table of the chunk being read: a chunk given up (Kafka
     * refused it, the connection failed) is read again with as many rows,
     * so the retry finds its refused record in the same chunk (the bytes
     * per row measured are lost with the session). */
    int retry_rows;
    char retry_table[300];
    bool dlt_error_logged; /* the dead-letter topic refuses even a small record */
};

static bool is_cdc(const outboxd_table_conf_t *t)
{
    return t->mode == OUTBOXD_MODE_CDC;
}

static bool wants_snapshot(const outboxd_table_conf_t *t)
{
    return t->mode == OUTBOXD_MODE_CDC && t->snapshot != OUTBOXD_SNAPSHOT_NEVER;
}

bool outboxd_snapshot_configured(const outboxd_source_conf_t *src)
{
    for (size_t i = 0; i < src->n_tables; i++)
        if (wants_snapshot(&src->tables[i]))
            return true;
    return false;
}

outboxd_snapshot_t *outboxd_snapshot_new(const outboxd_config_t *conf,
                                         const outboxd_source_conf_t *src, atomic_int *stop,
                                         char *errstr, size_t errstr_size)
{
    outboxd_snapshot_t *sn = calloc(1, sizeof(*sn));
    if (!sn) {
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    sn->conf = conf;
    sn->src = src;
    sn->name = src->name;
    sn->stop = stop;
    return sn;
}

void outboxd_snapshot_rebind(outboxd_snapshot_t *sn, const outboxd_config_t *conf,
                             const outboxd_source_conf_t *src)
{
    if (!sn)
        return;
    sn->conf = conf;
    sn->src = src;
    sn->name = src->name;
}

static void free_key(char **key)
{
    if (!key)
        return;
    for (char **k = key; *k; k++)
        free(*k);
    free(key);
}

static void free_info(table_info_t *ti)
{
    if (!ti)
        return;
    free(ti->name);
    free(ti->rel.nspname);
    free(ti->rel.relname);
    for (int i = 0; i < ti->rel.ncols; i++)
        free(ti->rel.cols[i].name);
    free(ti->rel.cols);
    free(ti->pk);
    free(ti->cmp_sql);
    free(ti->first_sql);
    free(ti->next_sql);
    free(ti->more_sql);
    free(ti);
}

static void clear_refused(outboxd_snapshot_t *sn, bool only_used)
{
    size_t kept = 0;
    for (size_t i = 0; i < sn->n_refused; i++) {
        refused_row_t *m = &sn->refused[i];
        if (only_used && !m->used) {
            sn->refused[kept++] = *m;
            continue;
        }
        free(m->table);
        free_key(m->key);
    }
    sn->n_refused = kept;
    if (!kept) {
        free(sn->refused);
        sn->refused = NULL;
    }
}

static void free_filter(outboxd_snapshot_t *sn)
{
    for (size_t i = 0; i < sn->n_segt; i++) {
        seg_table_t *st = &sn->segt[i];
        free(st->name);
        for (size_t j = 0; j < st->n; j++)
            free_key(st->segs[j].key);
        free(st->segs);
        free_info(st->info);
    }
    free(sn->segt);
    sn->segt = NULL;
    sn->n_segt = 0;
    sn->max_p = 0;
}

void outboxd_snapshot_destroy(outboxd_snapshot_t *sn)
{
    if (!sn)
        return;
    free_filter(sn);
    clear_refused(sn, false);
    json_decref(sn->state);
    json_decref(sn->requested);
    if (sn->conn)
        PQfinish(sn->conn);
    free(sn);
}

bool outboxd_snapshot_pending(const outboxd_snapshot_t *sn)
{
    return sn->pending;
}

/* ---- progress (JSON) ---- */

static bool in_array(json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
            return true;
    }
    return false;
}

static void table_name(const outboxd_table_conf_t *t, char *out, size_t size)
{
    snprintf(out, size, "%s.%s", t->schema, t->name);
}

static const outboxd_table_conf_t *configured(const outboxd_snapshot_t *sn, const char *name)
{
    char n[300];
    for (size_t i = 0; i < sn->src->n_tables; i++) {
        const outboxd_table_conf_t *t = &sn->src->tables[i];
        table_name(t, n, sizeof(n));
        if (wants_snapshot(t) && strcmp(n, name) == 0)
            return t;
    }
    return NULL;
}

/* Configured cdc tables (any snapshot mode: an ad-hoc request may name
 * one with snapshot: never). */
static const outboxd_table_conf_t *cdc_table(const outboxd_snapshot_t *sn, const char *name)
{
    char n[300];
    for (size_t i = 0; i < sn->src->n_tables; i++) {
        const outboxd_table_conf_t *t = &sn->src->tables[i];
        table_name(t, n, sizeof(n));
        if (is_cdc(t) && strcmp(n, name) == 0)
            return t;
    }
    return NULL;
}

/* A key as a NULL-terminated array of strings, from a JSON array. */
static char **key_from_json(json_t *arr)
{
    if (!json_is_array(arr))
        return NULL;
    size_t n = json_array_size(arr);
    char **key = calloc(n + 1, sizeof(char *));
    if (!key)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(arr, i));
        key[i] = strdup(s ? s : "");
        if (!key[i]) {
            free_key(key);
            return NULL;
        }
    }
    return key;
}

static const char *lsn_text(json_t *v)
{
    const char *s = json_string_value(v);
    return s ? s : "";
}

/* Rebuilds the stream filter from state["segs"]. */
static int build_filter(outboxd_snapshot_t *sn)
{
    free_filter(sn);
    json_t *segs = json_object_get(sn->state, "segs");
    if (!json_is_object(segs) || json_object_size(segs) == 0)
        return 0;
    sn->segt = calloc(json_object_size(segs), sizeof(*sn->segt));
    if (!sn->segt)
        return -1;
    const char *name;
    json_t *list;
    json_object_foreach(segs, name, list)
    {
        seg_table_t *st = &sn->segt[sn->n_segt++];
        st->name = strdup(name);
        st->segs = calloc(json_array_size(list) + 1, sizeof(seg_t));
        if (!st->name || !st->segs)
            return -1;
        size_t i;
        json_t *e;
        json_array_foreach(list, i, e)
        {
            seg_t *sg = &st->segs[st->n];
            json_t *k = json_array_get(e, 0);
            if (!json_is_null(k) && !(sg->key = key_from_json(k)))
                return -1;
            if (!outboxd_lsn_parse(lsn_text(json_array_get(e, 1)), &sg->p))
                return -1;
            if (st->n == 0 || sg->p < st->min_p)
                st->min_p = sg->p;
            if (sg->p > st->max_p)
                st->max_p = sg->p;
            st->n++;
        }
        if (st->max_p > sn->max_p)
            sn->max_p = st->max_p;
    }
    return 0;
}

/* Writes the state into ck->snapshot. -1 when it does not fit. */
static int store_state(outboxd_snapshot_t *sn, outboxd_checkpoint_t *ck, char *errstr,
                       size_t errstr_size)
{
    char *text = json_dumps(sn->state, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) {
        snprintf(errstr, errstr_size, "out of memory encoding the snapshot progress");
        return -1;
    }
    size_t n = strlen(text);
    if (n >= sizeof(ck->snapshot)) {
        snprintf(errstr, errstr_size,
                 "the snapshot progress (%zu bytes: tables, primary key values and one segment "
                 "per resumed snapshot) does not fit the checkpoint record's %zu bytes; snapshot "
                 "fewer tables per source, or tables with shorter primary keys",
                 n, sizeof(ck->snapshot) - 1);
        free(text);
        return -1;
    }
    memcpy(ck->snapshot, text, n + 1);
    free(text);
    return 0;
}

/* Table name is read in the run without skipping streamed changes (see
 * "Reading a table again" above). */
static void mark_replay(json_t *run, const char *name)
{
    json_t *r = json_object_get(run, "replay");
    if (!json_is_array(r)) {
        r = json_array();
        json_object_set_new(run, "replay", r);
    }
    if (!in_array(r, name))
        json_array_append_new(r, json_string(name));
}

int outboxd_snapshot_prepare(outboxd_snapshot_t *sn, outboxd_checkpoint_t *ck, const char *saved,
                             bool positions_lost, char *errstr, size_t errstr_size)
{
    json_decref(sn->state);
    sn->state = NULL;
    sn->pending = false;
    const char *text = ck->snapshot[0] ? ck->snapshot : (saved && saved[0] ? saved : NULL);
    if (text) {
        json_error_t jerr;
        sn->state = json_loads(text, 0, &jerr);
        if (!json_is_object(sn->state)) {
            snprintf(errstr, errstr_size,
                     "the snapshot progress in the checkpoint record is unreadable (%s): %.200s",
                     jerr.text, text);
            json_decref(sn->state);
            sn->state = NULL;
            return -1;
        }
    } else {
        sn->state = json_pack("{s:i}", "v", 1);
    }
    json_t *done = json_object_get(sn->state, "done");
    if (!json_is_array(done)) {
        done = json_array();
        json_object_set_new(sn->state, "done", done);
    }
    if (!json_is_object(json_object_get(sn->state, "segs")))
        json_object_set_new(sn->state, "segs", json_object());
    json_t *segs = json_object_get(sn->state, "segs");
    json_t *run = json_object_get(sn->state, "run");

    if (positions_lost) {
        /* The segments' points name positions of another slot or history:
         * they cannot be compared with this stream. A run in progress
         * starts over (its rows so far are published again). when_needed
         * tables are snapshotted again: changes may have been missed. */
        if (json_object_size(segs) || run)
            LOG_WARN(sn->name,
                     "the slot's positions changed (slot re-created or checkpoint not trusted): "
                     "snapshot progress and stream reconciliation points are dropped%s",
                     run ? "; the snapshot in progress starts over" : "");
        json_object_clear(segs);
        json_object_del(sn->state, "run");
        run = NULL;
        for (size_t i = 0; i < json_array_size(done);) {
            const outboxd_table_conf_t *t =
                configured(sn, json_string_value(json_array_get(done, i)));
            if (t && t->snapshot == OUTBOXD_SNAPSHOT_WHEN_NEEDED) {
                json_array_remove(done, i);
                continue;
            }
            i++;
        }
    } else if (ck->commit_lsn) {
        /* The stream's checkpoint is past a table's every point: nothing
         * committed before them can be sent again. */
        const char *name;
        json_t *list;
        void *tmp;
        json_object_foreach_safe(segs, tmp, name, list)
        {
            bool all_below = true;
            size_t i;
            json_t *e;
            json_array_foreach(list, i, e)
            {
                outboxd_lsn_t p = 0;
                outboxd_lsn_parse(lsn_text(json_array_get(e, 1)), &p);
                if (p > ck->commit_lsn)
                    all_below = false;
            }
            if (all_below && !(run && in_array(json_object_get(run, "tables"), name)))
                json_object_del(segs, name);
        }
    }

    /* What to read: a run in progress resumes; tables configured since
     * are added to it; otherwise every wanting table not done yet. */
    json_t *tables = run ? json_object_get(run, "tables") : NULL;
    if (run && !json_is_array(tables)) {
        snprintf(errstr, errstr_size, "the snapshot progress in the checkpoint lacks run.tables");
        return -1;
    }
    if (run) {
        /* Tables no longer configured leave the run. */
        size_t cur = (size_t)json_integer_value(json_object_get(run, "i"));
        for (size_t i = 0; i < json_array_size(tables);) {
            const char *n = json_string_value(json_array_get(tables, i));
            if (!n || !cdc_table(sn, n)) {
                LOG_WARN(sn->name, "table %s left the configuration during its snapshot",
                         n ? n : "?");
                json_array_remove(tables, i);
                if (i < cur)
                    cur--;
                else if (i == cur)
                    json_object_set_new(run, "key", json_null());
                continue;
            }
            i++;
        }
        json_object_set_new(run, "i", json_integer((json_int_t)cur));
    }
    char n[300];
    for (size_t i = 0; i < sn->src->n_tables; i++) {
        const outboxd_table_conf_t *t = &sn->src->tables[i];
        table_name(t, n, sizeof(n));
        if (!wants_snapshot(t) || in_array(done, n) || (tables && in_array(tables, n)))
            continue;
        if (!run) {
            run = json_pack("{s:[], s:i, s:n}", "tables", "i", 0, "key");
            json_object_set_new(sn->state, "run", run);
            tables = json_object_get(run, "tables");
        }
        json_array_append_new(tables, json_string(n));
        /* The source has streamed before: this table's changes may have
         * been published already (snapshot: never switched to initial, a
         * table added by a reload, when_needed after lost positions, whose
         * checkpoint was set aside). Not known per table: a table
         * configured at a restart gets the same (at least once for the
         * window, a change may show after its row as well). */
        if (ck->commit_lsn || positions_lost)
            mark_replay(run, n);
    }
    if (run && (size_t)json_integer_value(json_object_get(run, "i")) >= json_array_size(tables)) {
        json_object_del(sn->state, "run");
        run = NULL;
    }
    sn->pending = run != NULL;
    if (build_filter(sn) < 0) {
        snprintf(errstr, errstr_size, "the snapshot segments in the checkpoint are unreadable");
        return -1;
    }
    return store_state(sn, ck, errstr, errstr_size);
}

/* ---- catalog ---- */

static char *xstrdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xstrdup_printf(const char *fmt, ...)
{
    char *out = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&out, fmt, ap);
    va_end(ap);
    return n < 0 ? NULL : out;
}

static void pg_err(PGconn *conn, PGresult *res, const char *what, char *errstr, size_t errstr_size)
{
    const char *m = res ? PQresultErrorMessage(res) : "";
    if (!m || !m[0])
        m = PQerrorMessage(conn);
    snprintf(errstr, errstr_size, "%s: %s", what, m);
    size_t n = strlen(errstr);
    while (n > 0 && (errstr[n - 1] == '\n' || errstr[n - 1] == ' '))
        errstr[--n] = '\0';
}

/*
 * Every query of the snapshot's normal connection is bounded: a server that
 * accepted it and went silent (a frozen backend, a path gone half-open:
 * TCP keepalives are answered by the peer's kernel) would otherwise hold the
 * source's loop, and every source sharing its thread, for good. The run's
 * reads are given up after relay.wal_receiver_timeout_ms without a byte from
 * the server (0: no limit; a chunk of large rows may take long, but its rows
 * keep coming, which restarts the limit), the stream filter's look-ups after
 * the loop's bound (at most 10 s, also when 0; the stream then rewinds). A
 * stop gives the query up at once. NULL with errstr on any failure; a
 * connection whose query was given up is closed (its answer may still come),
 * so the next use opens a new one.
 */
/* A read cut short by the source's stop is no error: the run resumes from
 * its last committed chunk at the next start. */
#define LOG_READ_FAILED(sn, ...)                                                                   \
    do {                                                                                           \
        if ((sn)->stop && atomic_load((sn)->stop))                                                 \
            LOG_INFO((sn)->name, __VA_ARGS__);                                                     \
        else                                                                                       \
            LOG_ERROR((sn)->name, __VA_ARGS__);                                                    \
    } while (0)

static int run_bound(const outboxd_snapshot_t *sn)
{
    return sn->conf->wal_receiver_timeout_ms > 0 ? sn->conf->wal_receiver_timeout_ms : 0;
}

static int filter_bound(const outboxd_snapshot_t *sn)
{
    return outboxd_pgsetup_loop_bound(sn->conf->wal_receiver_timeout_ms);
}

static PGresult *sn_query(outboxd_snapshot_t *sn, int timeout_ms, const char *sql, int nparams,
                          const char *const *params, const char *what, char *errstr,
                          size_t errstr_size)
{
    PGresult *res = outboxd_pg_query_bounded(sn->conn, sql, nparams, params, what, timeout_ms,
                                             sn->stop, errstr, errstr_size);
    if (!res &&
        (PQstatus(sn->conn) != CONNECTION_OK || PQtransactionStatus(sn->conn) == PQTRANS_ACTIVE)) {
        PQfinish(sn->conn);
        sn->conn = NULL;
    }
    return res;
}

/*
 * The relation as pgoutput would describe it (columns neither dropped nor
 * generated, in attnum order, replica identity flags as pgoutput sets them)
 * and its primary key. NULL with errstr; *fatal tells a table that cannot be
 * snapshotted (no primary key) from a failed query.
 */
static table_info_t *load_info(outboxd_snapshot_t *sn, int timeout_ms, const char *nsp,
                               const char *relname, bool *fatal, char *errstr, size_t errstr_size)
{
    *fatal = false;
    const char *p[2] = {nsp, relname};
    PGresult *res =
        sn_query(sn, timeout_ms,
                 "SELECT c.oid, c.relreplident, c.relkind FROM pg_catalog.pg_class c JOIN "
                 "pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN "
                 "('r', 'p')",
                 2, p, "reading the table's catalog entry", errstr, errstr_size);
    if (!res)
        return NULL;
    if (PQntuples(res) != 1) {
        snprintf(errstr, errstr_size, "table %s.%s does not exist", nsp, relname);
        *fatal = true;
        PQclear(res);
        return NULL;
    }
    table_info_t *ti = calloc(1, sizeof(*ti));
    if (!ti) {
        PQclear(res);
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    char oid[16];
    snprintf(oid, sizeof(oid), "%s", PQgetvalue(res, 0, 0));
    ti->rel.oid = (uint32_t)strtoul(oid, NULL, 10);
    ti->rel.replident = PQgetvalue(res, 0, 1)[0];
    /* A plain table may have inheritance children, whose rows the stream
     * names by the children (and so ignores): read the table's own rows
     * only. A partitioned table has none of its own (its partitions'
     * arrive under its name, publish_via_partition_root). */
    bool only = PQgetvalue(res, 0, 2)[0] == 'r';
    PQclear(res);
    /* The publication sends only the rows its WHERE takes (row_filter,
     * PostgreSQL 15+; pgsetup makes sure the publication has the
     * configured one): the snapshot reads the same rows, or rows whose
     * changes never arrive would stay with consumers for good. */
    const char *filter = NULL;
    for (size_t i = 0; i < sn->src->n_tables; i++)
        if (strcmp(sn->src->tables[i].schema, nsp) == 0 &&
            strcmp(sn->src->tables[i].name, relname) == 0)
            filter = sn->src->tables[i].row_filter;
    ti->name = xstrdup_printf("%s.%s", nsp, relname);
    ti->rel.nspname = strdup(nsp);
    ti->rel.relname = strdup(relname);
    const char *p1[1] = {oid};
    /* key_pos: position in the primary key (0: not in it); ident: in the
     * replica identity index (pgoutput flags every column for FULL). */
    res = sn_query(
        sn, timeout_ms,
        "SELECT a.attname, a.atttypid, a.atttypmod, "
        "  coalesce((SELECT k.ord FROM pg_catalog.pg_index i, "
        "    unnest(i.indkey::int2[]) WITH ORDINALITY AS k(att, ord) "
        "    WHERE i.indrelid = a.attrelid AND i.indisprimary AND k.att = a.attnum "
        "      AND k.ord <= i.indnkeyatts), 0), "
        "  coalesce((SELECT EXISTS (SELECT 1 FROM unnest(i.indkey::int2[]) WITH ORDINALITY "
        "      AS k(att, ord) WHERE k.att = a.attnum AND k.ord <= i.indnkeyatts) "
        "    FROM pg_catalog.pg_index i "
        "    WHERE i.indrelid = a.attrelid AND CASE c.relreplident WHEN 'd' THEN i.indisprimary "
        "      WHEN 'i' THEN i.indisreplident ELSE false END), false), "
        "  format_type(a.atttypid, a.atttypmod), "
        "  (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname) "
        "     FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace cn "
        "       ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation) "
        "FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped "
        "  AND coalesce(to_jsonb(a) ->> 'attgenerated', '') = '' "
        "ORDER BY a.attnum",
        1, p1, "reading the table's columns", errstr, errstr_size);
    if (!res) {
        free_info(ti);
        return NULL;
    }
    PGconn *conn = sn->conn; /* for the escapes below */
    int n = PQntuples(res);
    ti->rel.cols = calloc((size_t)(n ? n : 1), sizeof(outboxd_pgo_column_t));
    ti->pk = calloc((size_t)(n ? n : 1), sizeof(int));
    if (!ti->name || !ti->rel.nspname || !ti->rel.relname || !ti->rel.cols || !ti->pk) {
        PQclear(res);
        free_info(ti);
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    ti->rel.ncols = n;
    int npk = 0;
    for (int i = 0; i < n; i++) {
        outboxd_pgo_column_t *c = &ti->rel.cols[i];
        c->name = strdup(PQgetvalue(res, i, 0));
        c->type_oid = (uint32_t)strtoul(PQgetvalue(res, i, 1), NULL, 10);
        c->typmod = (int32_t)strtol(PQgetvalue(res, i, 2), NULL, 10);
        c->is_key = ti->rel.replident == 'f' || PQgetvalue(res, i, 4)[0] == 't';
        int pos = atoi(PQgetvalue(res, i, 3));
        if (pos > 0 && pos <= n) {
            ti->pk[pos - 1] = i;
            npk = pos > npk ? pos : npk;
        }
    }
    ti->npk = npk;
    if (npk == 0) {
        snprintf(errstr, errstr_size,
                 "table %s.%s has no primary key: the snapshot reads tables in primary-key order "
                 "(resumable in chunks); add a primary key, or set its snapshot: never",
                 nsp, relname);
        *fatal = true;
        PQclear(res);
        free_info(ti);
        return NULL;
    }
    /* SQL: the columns, the key list, the comparison. */
    outboxd_buf_t cols = {0}, keys = {0}, params = {0}, cmp_a = {0}, cmp_b = {0};
    bool ok = true;
    ti->pk_int = true;
    for (int i = 0; i < n && ok; i++) {
        char *q = PQescapeIdentifier(conn, ti->rel.cols[i].name, strlen(ti->rel.cols[i].name));
        ok = q && ti->rel.cols[i].name && outboxd_buf_printf(&cols, "%s%s", i ? ", " : "", q);
        PQfreemem(q);
    }
    for (int k = 0; k < npk && ok; k++) {
        int ci = ti->pk[k];
        const outboxd_pgo_column_t *c = &ti->rel.cols[ci];
        if (c->type_oid != INT2_OID && c->type_oid != INT4_OID && c->type_oid != INT8_OID)
            ti->pk_int = false;
        char *q = PQescapeIdentifier(conn, c->name, strlen(c->name));
        const char *type = PQgetvalue(res, ci, 5);
        const char *coll = PQgetisnull(res, ci, 6) ? NULL : PQgetvalue(res, ci, 6);
        char collate[200] = "";
        if (coll)
            snprintf(collate, sizeof(collate), " COLLATE %s", coll);
        ok = q && outboxd_buf_printf(&keys, "%s%s", k ? ", " : "", q) &&
             outboxd_buf_printf(&params, "%s$%d", k ? ", " : "", k + 1) &&
             outboxd_buf_printf(&cmp_a, "%s$%d::%s%s", k ? ", " : "", k + 1, type, collate) &&
             outboxd_buf_printf(&cmp_b, "%s$%d::%s%s", k ? ", " : "", npk + k + 1, type, collate);
        PQfreemem(q);
    }
    PQclear(res);
    char *qn = PQescapeIdentifier(conn, nsp, strlen(nsp));
    char *qr = PQescapeIdentifier(conn, relname, strlen(relname));
    if (ok && qn && qr) {
        /* A row constructor comparison walks the primary key index in
         * order, as ORDER BY does: one index range scan per chunk. */
        const char *from = only ? "ONLY " : "";
        ti->first_sql = xstrdup_printf("SELECT %s FROM %s%s.%s%s%s%s ORDER BY %s LIMIT $1",
                                       cols.data, from, qn, qr, filter ? " WHERE (" : "",
                                       filter ? filter : "", filter ? ")" : "", keys.data);
        ti->next_sql =
            xstrdup_printf("SELECT %s FROM %s%s.%s WHERE %s%s%s(%s) > (%s) ORDER BY %s LIMIT $%d",
                           cols.data, from, qn, qr, filter ? "(" : "", filter ? filter : "",
                           filter ? ") AND " : "", keys.data, params.data, keys.data, npk + 1);
        ti->more_sql =
            xstrdup_printf("SELECT EXISTS (SELECT 1 FROM %s%s.%s WHERE %s%s%s(%s) > (%s))", from,
                           qn, qr, filter ? "(" : "", filter ? filter : "", filter ? ") AND " : "",
                           keys.data, params.data);
        ti->cmp_sql = xstrdup_printf("SELECT ROW(%s) > ROW(%s)", cmp_a.data, cmp_b.data);
    }
    PQfreemem(qn);
    PQfreemem(qr);
    outboxd_buf_free(&cols);
    outboxd_buf_free(&keys);
    outboxd_buf_free(&params);
    outboxd_buf_free(&cmp_a);
    outboxd_buf_free(&cmp_b);
    if (!ti->first_sql || !ti->next_sql || !ti->more_sql || !ti->cmp_sql) {
        free_info(ti);
        snprintf(errstr, errstr_size, "out of memory");
        return NULL;
    }
    return ti;
}

static int ensure_conn(outboxd_snapshot_t *sn, char *errstr, size_t errstr_size)
{
    if (sn->conn && PQstatus(sn->conn) != CONNECTION_OK) {
        PQfinish(sn->conn);
        sn->conn = NULL;
    }
    if (!sn->conn)
        sn->conn = outboxd_pg_connect(sn->src, false, errstr, errstr_size);
    return sn->conn ? 0 : -1;
}

/* ---- the stream filter ---- */

/* >0 when a sorts after b in the table's key order, else <= 0; -2 on error. */
static int key_after(outboxd_snapshot_t *sn, const table_info_t *ti, const char *const *a,
                     char *const *b, char *errstr, size_t errstr_size)
{
    if (ti->pk_int) {
        for (int k = 0; k < ti->npk; k++) {
            long long x = strtoll(a[k], NULL, 10), y = strtoll(b[k], NULL, 10);
            if (x != y)
                return x > y ? 1 : -1;
        }
        return 0;
    }
    if (ensure_conn(sn, errstr, errstr_size) < 0)
        return -2;
    const char *params[64];
    if (ti->npk > 32) {
        snprintf(errstr, errstr_size, "primary key of %s has more than 32 columns", ti->name);
        return -2;
    }
    for (int k = 0; k < ti->npk; k++) {
        params[k] = a[k];
        params[ti->npk + k] = b[k];
    }
    PGresult *res = sn_query(sn, filter_bound(sn), ti->cmp_sql, 2 * ti->npk, params,
                             "comparing primary keys", errstr, errstr_size);
    if (!res)
        return -2;
    if (PQntuples(res) != 1) {
        snprintf(errstr, errstr_size, "comparing primary keys: %d rows", PQntuples(res));
        PQclear(res);
        return -2;
    }
    int r = PQgetvalue(res, 0, 0)[0] == 't' ? 1 : -1;
    PQclear(res);
    return r;
}

static seg_table_t *seg_table(outboxd_snapshot_t *sn, const char *nsp, const char *rel)
{
    char name[300];
    snprintf(name, sizeof(name), "%s.%s", nsp, rel);
    for (size_t i = 0; i < sn->n_segt; i++)
        if (strcmp(sn->segt[i].name, name) == 0)
            return &sn->segt[i];
    return NULL;
}

/*
 * A TRUNCATE before every segment's point of each table it names was seen
 * by every read of those tables: publishing it after their rows would empty
 * a consumer's copy of rows that exist. One between the points of a
 * resumed table's segments was seen by some reads and not by others; it is
 * published (the consumer drops the rows read before it, which the stream
 * then no longer repairs) and said loudly.
 */
static int truncate_reflected(outboxd_snapshot_t *sn, const outboxd_pgo_decoder_t *dec,
                              const outboxd_pgo_msg_t *msg, outboxd_lsn_t commit_lsn)
{
    if (!dec || msg->u.truncate.nrels == 0)
        return 0;
    int seen = 0, partly = 0;
    for (int i = 0; i < msg->u.truncate.nrels; i++) {
        const outboxd_pgo_relation_t *rel =
            outboxd_pgo_relation_get(dec, msg->u.truncate.rel_oids[i]);
        seg_table_t *st = rel ? seg_table(sn, rel->nspname, rel->relname) : NULL;
        if (st && commit_lsn < st->min_p)
            seen++;
        else if (st && commit_lsn < st->max_p)
            partly++;
    }
    if (partly)
        LOG_WARN(sn->name,
                 "a TRUNCATE committed while a resumed snapshot was read is published; rows "
                 "read before it were published by the snapshot and are emptied by it: "
                 "re-snapshot the table if consumers must hold them");
    return seen == msg->u.truncate.nrels ? 1 : 0;
}

bool outboxd_snapshot_truncate_reflected(outboxd_snapshot_t *sn, const outboxd_pgo_relation_t *rel,
                                         outboxd_lsn_t commit_lsn)
{
    if (!sn || !rel)
        return false;
    seg_table_t *st = seg_table(sn, rel->nspname, rel->relname);
    return st && commit_lsn < st->min_p;
}

int outboxd_snapshot_reflected(outboxd_snapshot_t *sn, const outboxd_pgo_decoder_t *dec,
                               const outboxd_pgo_msg_t *msg, outboxd_lsn_t commit_lsn, char *errstr,
                               size_t errstr_size)
{
    if (!sn || commit_lsn >= sn->max_p)
        return 0;
    if (msg->kind == OUTBOXD_PGO_TRUNCATE)
        return truncate_reflected(sn, dec, msg, commit_lsn);
    if (msg->kind != OUTBOXD_PGO_INSERT && msg->kind != OUTBOXD_PGO_UPDATE &&
        msg->kind != OUTBOXD_PGO_DELETE)
        return 0;
    const outboxd_pgo_relation_t *rel = msg->u.change.rel;
    seg_table_t *st = seg_table(sn, rel->nspname, rel->relname);
    if (!st || commit_lsn >= st->max_p)
        return 0;
    if (commit_lsn < st->min_p)
        return 1; /* below every segment's point: whichever holds the key saw it */
    /* Several segments (a resumed snapshot): find the key's. */
    if (!st->info) {
        if (ensure_conn(sn, errstr, errstr_size) < 0)
            return -1;
        bool fatal;
        st->info = load_info(sn, filter_bound(sn), rel->nspname, rel->relname, &fatal, errstr,
                             errstr_size);
        if (!st->info)
            return fatal ? 0 : -1;
    }
    const table_info_t *ti = st->info;
    const outboxd_pgo_tuple_t *tup =
        msg->kind == OUTBOXD_PGO_DELETE ? &msg->u.change.old_tuple : &msg->u.change.new_tuple;
    const char *key[32];
    char *vals[32];
    if (ti->npk > 32)
        return 0;
    int found = 0;
    for (int k = 0; k < ti->npk; k++) {
        const char *want = ti->rel.cols[ti->pk[k]].name;
        vals[k] = NULL;
        for (int c = 0; c < rel->ncols && c < tup->ncols; c++) {
            if (strcmp(rel->cols[c].name, want) == 0 && tup->cols[c].kind == 't') {
                vals[k] = outboxd_strndup(tup->cols[c].data, tup->cols[c].len);
                break;
            }
        }
        if (vals[k])
            found++;
        key[k] = vals[k];
    }
    int result = 0;
    if (found == ti->npk) {
        const seg_t *sg = &st->segs[0];
        for (size_t j = st->n; j-- > 0;) {
            if (!st->segs[j].key) {
                sg = &st->segs[j];
                break;
            }
            int nk = 0;
            while (st->segs[j].key[nk])
                nk++;
            if (nk != ti->npk) {
                /* The primary key changed since the segment was read: the
                 * keys cannot be compared. Publishing is the safe side (a
                 * change seen twice, never one lost). */
                LOG_WARN(sn->name,
                         "the primary key of %s changed during its snapshot (%d columns, %d "
                         "when read): its change is published without reconciliation",
                         ti->name, ti->npk, nk);
                result = 2;
                break;
            }
            int a = key_after(sn, ti, key, st->segs[j].key, errstr, errstr_size);
            if (a == -2) {
                result = -1;
                break;
            }
            if (a > 0) {
                sg = &st->segs[j];
                break;
            }
        }
        if (result == 0)
            result = commit_lsn < sg->p ? 1 : 0;
        else if (result == 2)
            result = 0;
    }
    for (int k = 0; k < ti->npk; k++)
        free(vals[k]);
    return result;
}

/* ---- reading ---- */

typedef struct emit_ctx {
    outboxd_snapshot_t *sn;
    const outboxd_snapshot_io_t *io;
    outboxd_sink_status_t st;
    char err[512];
    uint64_t events, dead, bytes;
    /* The chunk row behind each record of the open Kafka transaction, in
     * produce order (the sink numbers them 1, 2, ...), to find the row of a
     * record Kafka refused. pos_ok: the transaction began with this chunk. */
    int row;
    int *rec_row;
    size_t n_rec, cap_rec;
    bool pos_ok;
} emit_ctx_t;

static int emit(void *opaque, const outboxd_record_t *rec, bool dead_letter, const char *reason)
{
    emit_ctx_t *e = opaque;
    if (e->pos_ok && e->n_rec == e->cap_rec) {
        size_t cap = e->cap_rec ? 2 * e->cap_rec : 1024;
        int *p = realloc(e->rec_row, cap * sizeof(*p));
        if (p) {
            e->rec_row = p;
            e->cap_rec = cap;
        } else {
            e->pos_ok = false; /* a refusal is then retried, not dead-lettered */
        }
    }
    /* Recorded before producing: a record refused by the produce call
     * itself is found too. */
    if (e->pos_ok)
        e->rec_row[e->n_rec++] = e->row;
    e->st = outboxd_sink_produce(e->io->sink, rec, e->err, sizeof(e->err));
    if (e->st == OUTBOXD_SINK_MISSING_TOPIC && e->pos_ok)
        e->n_rec--; /* nothing was produced */
    if (e->st != OUTBOXD_SINK_OK)
        return 1;
    if (dead_letter) {
        e->dead++;
        LOG_WARN(e->sn->name, "snapshot row sent to dead-letter topic %s: %s",
                 e->sn->conf->dead_letter_topic, reason ? reason : "");
    } else {
        e->events++;
    }
    e->bytes += rec->key_len + rec->value_len;
    outboxd_stats_produced(e->io->stats, rec->key_len + rec->value_len);
    return 0;
}

/* The refused-row entry for row r of a chunk of table tname, or NULL. */
static refused_row_t *find_refused(outboxd_snapshot_t *sn, const char *tname,
                                   const table_info_t *ti, PGresult *res, int r)
{
    for (size_t i = 0; i < sn->n_refused; i++) {
        refused_row_t *m = &sn->refused[i];
        if (strcmp(m->table, tname) != 0)
            continue;
        int k = 0;
        while (k < ti->npk && m->key[k] && strcmp(m->key[k], PQgetvalue(res, r, ti->pk[k])) == 0)
            k++;
        if (k == ti->npk && !m->key[k])
            return m;
    }
    return NULL;
}

/*
 * After the chunk's Kafka transaction was aborted (its rows in res, already
 * aborted): if Kafka refused one of its records for good, remember that row
 * so the next read of the chunk dead-letters it instead of failing the same
 * way forever; as in source.c, records refused together are first replayed
 * one per request to find the one Kafka refuses, and a dead letter refused
 * too is sent again without the row's values. Returns -1 (retry the chunk)
 * or -2 (the checkpoint record itself was refused: fatal).
 */
static int note_refused(emit_ctx_t *e, const table_info_t *ti, const char *tname, PGresult *res)
{
    outboxd_snapshot_t *sn = e->sn;
    outboxd_sink_t *sink = e->io->sink;
    char reason[256];
    if (outboxd_sink_checkpoint_refused(sink, reason, sizeof(reason))) {
        LOG_ERROR(sn->name,
                  "%s: the checkpoint topic %s is misconfigured (it must accept this source's "
                  "checkpoint records, with the snapshot progress up to a few kB: check its "
                  "max.message.bytes and the ACLs of this producer); fix it and restart",
                  reason, sn->conf->checkpoint_topic);
        return -2;
    }
    uint64_t count = 0;
    uint64_t seq = outboxd_sink_refused(sink, reason, sizeof(reason), &count);
    if (!e->pos_ok || !seq || seq > e->n_rec)
        return -1;
    if (count > 1 && !sn->isolating) {
        sn->isolating = true;
        outboxd_sink_set_one_by_one(sink, true);
        LOG_WARN(sn->name,
                 "snapshot of %s: Kafka refused %llu records of one chunk together (%s; "
                 "max.message.bytes applies to a whole batch): replaying the chunk one record per "
                 "request to find the one it refuses",
                 tname, (unsigned long long)count, reason);
        return -1;
    }
    int r = e->rec_row[seq - 1];
    refused_row_t *m = find_refused(sn, tname, ti, res, r);
    if (m) {
        /* Its dead letter was refused as well. */
        if (m->level == 0) {
            m->level = 1;
            LOG_WARN(sn->name,
                     "the dead-letter record for %s was refused too (%s); sending it again "
                     "without the row's values",
                     m->reason, reason);
        } else if (!sn->dlt_error_logged) {
            sn->dlt_error_logged = true;
            LOG_ERROR(sn->name,
                      "the dead-letter topic %s refuses even a small record for %s (%s): fix the "
                      "dead-letter topic (max.message.bytes, ACLs); the snapshot retries with "
                      "backoff",
                      sn->conf->dead_letter_topic, m->reason, reason);
        }
        return -1;
    }
    refused_row_t *grown = realloc(sn->refused, (sn->n_refused + 1) * sizeof(*grown));
    if (!grown)
        return -1;
    sn->refused = grown;
    m = &sn->refused[sn->n_refused];
    *m =
        (refused_row_t){.table = strdup(tname), .key = calloc((size_t)ti->npk + 1, sizeof(char *))};
    bool ok = m->table && m->key;
    outboxd_buf_t cols = {0}, vals = {0};
    for (int k = 0; k < ti->npk && ok; k++) {
        const char *v = PQgetvalue(res, r, ti->pk[k]);
        ok = (m->key[k] = strdup(v)) != NULL &&
             outboxd_buf_printf(&cols, "%s%s", k ? ", " : "", ti->rel.cols[ti->pk[k]].name) &&
             outboxd_buf_printf(&vals, "%s%.100s", k ? ", " : "", v);
    }
    if (ok) {
        snprintf(m->reason, sizeof(m->reason), "snapshot row of %s with key (%s)=(%s): %s", tname,
                 cols.data, vals.data, reason);
        sn->n_refused++;
        LOG_WARN(sn->name,
                 "%s; the row goes to the dead-letter topic %s when its chunk is read again",
                 m->reason, sn->conf->dead_letter_topic);
    } else {
        free(m->table);
        free_key(m->key);
    }
    outboxd_buf_free(&cols);
    outboxd_buf_free(&vals);
    return -1;
}

/* Abort what is open after a failure; -1 (retry) or -2 (fatal). */
static int give_up(emit_ctx_t *e, int rc)
{
    char err[512];
    if (outboxd_sink_in_txn(e->io->sink) &&
        outboxd_sink_abort(e->io->sink, err, sizeof(err)) == OUTBOXD_SINK_FATAL) {
        LOG_ERROR(e->sn->name, "%s", err);
        return -2;
    }
    return rc;
}

/* The replication connection whose temporary slot exported the snapshot. */
static PGconn *export_snapshot(outboxd_snapshot_t *sn, outboxd_lsn_t *point, char *snap,
                               size_t snap_size, char *errstr, size_t errstr_size)
{
    PGconn *rc = outboxd_pg_connect(sn->src, true, errstr, errstr_size);
    if (!rc)
        return NULL;
    char slot[64];
    /* The walsender's pid makes the name unique; the slot goes away with
     * the connection (TEMPORARY), also when the relay is killed. */
    snprintf(slot, sizeof(slot), "outboxd_snap_%d", PQbackendPID(rc));
    char sql[256];
    if (PQserverVersion(rc) >= 150000)
        snprintf(sql, sizeof(sql),
                 "CREATE_REPLICATION_SLOT %s TEMPORARY LOGICAL pgoutput (SNAPSHOT 'export')", slot);
    else
        snprintf(sql, sizeof(sql),
                 "CREATE_REPLICATION_SLOT %s TEMPORARY LOGICAL pgoutput "
                 "EXPORT_SNAPSHOT",
                 slot);
    /* No time limit: creating a logical slot waits for every transaction
     * running at that moment to end, however long it runs (a bound would
     * make a long transaction an endless retry). A stop gives it up. */
    const char *what = "creating a temporary replication slot to export a snapshot";
    PGresult *res =
        outboxd_pg_exec_bounded(rc, sql, 0, NULL, what, 0, sn->stop, errstr, errstr_size);
    if (!res) {
        /* The walsender waits for those transactions and would notice the
         * closed connection only when they end, holding a WAL sender and a
         * slot entry until then: ask it to cancel. */
        if (sn->stop && atomic_load(sn->stop))
            outboxd_pg_cancel(rc);
        PQfinish(rc);
        return NULL;
    }
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQnfields(res) < 3 ||
        !outboxd_lsn_parse(PQgetvalue(res, 0, 1), point)) {
        pg_err(rc, res, what, errstr, errstr_size);
        snprintf(errstr + strlen(errstr), errstr_size - strlen(errstr),
                 " (the snapshot needs one free replication slot and WAL sender besides the "
                 "source's: check max_replication_slots and max_wal_senders)");
        PQclear(res);
        PQfinish(rc);
        return NULL;
    }
    snprintf(snap, snap_size, "%s", PQgetvalue(res, 0, 2));
    PQclear(res);
    return rc;
}

static int exec_ok(outboxd_snapshot_t *sn, const char *sql, char *errstr, size_t errstr_size)
{
    PGresult *res = sn_query(sn, run_bound(sn), sql, 0, NULL, sql, errstr, errstr_size);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

/* Before a session's first chunk of ti: the catalog's bytes per row, the
 * table's heap and TOAST size over its row count (see CHUNK_BYTES). 0, or -1
 * (errstr). */
static int estimate_row_bytes(outboxd_snapshot_t *sn, table_info_t *ti, char *errstr,
                              size_t errstr_size)
{
    char oid[16];
    snprintf(oid, sizeof(oid), "%u", ti->rel.oid);
    const char *p[1] = {oid};
    /* A partitioned table's rows are its partitions' (pg_inherits rather
     * than pg_partition_tree, which PostgreSQL 10 and 11 lack); a plain
     * table's are its own (read FROM ONLY). A row count is unknown before
     * the first ANALYZE: -1 from PostgreSQL 14 on, 0 before. */
    PGresult *res = sn_query(
        sn, run_bound(sn),
        "WITH RECURSIVE t(oid) AS (SELECT $1::oid UNION ALL SELECT i.inhrelid FROM "
        "pg_catalog.pg_inherits i JOIN t ON i.inhparent = t.oid JOIN pg_catalog.pg_class p ON "
        "p.oid = t.oid WHERE p.relkind = 'p') "
        "SELECT coalesce(sum(pg_catalog.pg_table_size(c.oid)), 0)::float8, "
        "coalesce(sum(greatest(c.reltuples, 0)) FILTER (WHERE c.relkind <> 'p'), 0)::float8, "
        "coalesce(bool_or(c.relkind <> 'p' AND c.reltuples <= 0 AND "
        "pg_catalog.pg_table_size(c.oid) > 0), false), "
        "EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type y ON "
        "y.oid = a.atttypid WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT "
        "a.attisdropped AND 'bytea'::regtype IN (y.oid, y.typbasetype)) "
        "FROM t JOIN pg_catalog.pg_class c ON c.oid = t.oid",
        1, p, "estimating a table's row size", errstr, errstr_size);
    if (!res)
        return -1;
    ti->estimated = true;
    if (PQntuples(res) == 1) {
        double size = atof(PQgetvalue(res, 0, 0)), tuples = atof(PQgetvalue(res, 0, 1));
        bool unknown = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
        if (unknown) {
            if (size > CHUNK_BYTES) /* never analyzed, and large */
                ti->est_bytes = CHUNK_BYTES / FIRST_CHUNK_BLIND;
        } else if (tuples >= 1) {
            ti->est_bytes = size / tuples;
        }
        /* bytea (or a domain over it) arrives as hex text: two characters
         * per byte. */
        if (!unknown && strcmp(PQgetvalue(res, 0, 3), "t") == 0)
            ti->est_bytes *= 2;
    }
    PQclear(res);
    return 0;
}

/* Whether ti has a row after the key of res's row r (within its
 * row_filter): 1, 0, or -1 (errstr). Asked instead of reading one row more
 * than the chunk, which with rows of hundreds of megabytes doubled what a
 * chunk of one row holds. */
static int more_rows(outboxd_snapshot_t *sn, const table_info_t *ti, PGresult *res, int r,
                     char *errstr, size_t errstr_size)
{
    const char *params[32];
    for (int k = 0; k < ti->npk && k < 32; k++)
        params[k] = PQgetvalue(res, r, ti->pk[k]);
    PGresult *m = sn_query(sn, run_bound(sn), ti->more_sql, ti->npk < 32 ? ti->npk : 32, params,
                           "looking for the table's next row", errstr, errstr_size);
    if (!m)
        return -1;
    int more = PQntuples(m) == 1 && strcmp(PQgetvalue(m, 0, 0), "t") == 0;
    PQclear(m);
    return more;
}

/* Whether any table after index i of the run has a row (under the snapshot). */
static int later_rows(outboxd_snapshot_t *sn, json_t *tables, size_t i, char *errstr,
                      size_t errstr_size)
{
    for (size_t j = i + 1; j < json_array_size(tables); j++) {
        const char *name = json_string_value(json_array_get(tables, j));
        const outboxd_table_conf_t *t = cdc_table(sn, name);
        if (!t)
            continue;
        /* The rows the table's chunks will read (load_info): none without a
         * primary key (skipped), its row_filter, a plain table's own rows
         * (not its inheritance children's), a partitioned table's
         * partitions'; else the "last" marker is put on no row when the
         * later tables have only rows the snapshot skips. */
        char *qn = PQescapeIdentifier(sn->conn, t->schema, strlen(t->schema));
        char *qr = PQescapeIdentifier(sn->conn, t->name, strlen(t->name));
        const char *f = t->row_filter ? t->row_filter : "true";
        char *sql = qn && qr
                        ? xstrdup_printf("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i "
                                         "WHERE i.indrelid = $1::regclass AND i.indisprimary) "
                                         "AND (EXISTS (SELECT 1 FROM ONLY %s.%s WHERE (%s)) OR "
                                         "(coalesce((SELECT c.relkind = 'p' FROM "
                                         "pg_catalog.pg_class c WHERE c.oid = $1::regclass), "
                                         "false) AND EXISTS (SELECT 1 FROM %s.%s WHERE (%s))))",
                                         qn, qr, f, qn, qr, f)
                        : NULL;
        char *reg = qn && qr ? xstrdup_printf("%s.%s", qn, qr) : NULL;
        PQfreemem(qn);
        PQfreemem(qr);
        if (!sql || !reg) {
            free(sql);
            free(reg);
            snprintf(errstr, errstr_size, "out of memory");
            return -1;
        }
        const char *p[1] = {reg};
        PGresult *res = sn_query(sn, run_bound(sn), sql, 1, p, "looking for rows in later tables",
                                 errstr, errstr_size);
        free(sql);
        free(reg);
        if (!res)
            return -1;
        bool any = PQgetvalue(res, 0, 0)[0] == 't';
        PQclear(res);
        if (any)
            return 1;
    }
    return 0;
}

/* Commits the open chunk (or only the progress) with the checkpoint. */
static int commit_chunk(emit_ctx_t *e, int64_t t0_us)
{
    outboxd_snapshot_t *sn = e->sn;
    const outboxd_snapshot_io_t *io = e->io;
    outboxd_checkpoint_t ck = *io->ck;
    char err[512];
    if (store_state(sn, &ck, err, sizeof(err)) < 0) {
        LOG_ERROR(sn->name, "%s", err);
        return give_up(e, -2);
    }
    ck.timeline = io->ident->timeline;
    snprintf(ck.system_id, sizeof(ck.system_id), "%s", io->ident->system_id);
    snprintf(ck.database, sizeof(ck.database), "%s", io->ident->database);
    snprintf(ck.slot, sizeof(ck.slot), "%s", sn->src->slot);
    outboxd_sink_status_t st = outboxd_sink_commit(io->sink, &ck, err, sizeof(err));
    if (st == OUTBOXD_SINK_FATAL) {
        LOG_ERROR(sn->name, "%s", err);
        return -2;
    }
    if (st != OUTBOXD_SINK_OK) {
        LOG_WARN(sn->name,
                 "snapshot chunk not committed (%s); resuming from the last committed "
                 "chunk",
                 err);
        outboxd_stats_aborted(io->stats);
        return give_up(e, -1);
    }
    outboxd_stats_committed(io->stats, e->events, e->dead, outboxd_now_us() - t0_us);
    memcpy(io->ck, &ck, sizeof(ck));
    return 0;
}

int outboxd_snapshot_run(outboxd_snapshot_t *sn, const outboxd_snapshot_io_t *io)
{
    if (!sn->pending)
        return 0;
    char err[1024];
    emit_ctx_t e = {.sn = sn, .io = io};
    json_t *run = json_object_get(sn->state, "run");
    json_t *tables = json_object_get(run, "tables");
    json_t *segs = json_object_get(sn->state, "segs");
    json_t *done = json_object_get(sn->state, "done");
    if (ensure_conn(sn, err, sizeof(err)) < 0) {
        LOG_ERROR(sn->name, "snapshot: %s", err);
        return -1;
    }
    outboxd_lsn_t point = 0;
    char snapname[128];
    int64_t t_start = outboxd_now_ms();
    PGconn *exporter = export_snapshot(sn, &point, snapname, sizeof(snapname), err, sizeof(err));
    if (!exporter) {
        LOG_READ_FAILED(sn, "snapshot: %s", err);
        return -1;
    }
    char points[OUTBOXD_LSN_STRLEN];
    outboxd_lsn_format(point, points);
    char sql[256];
    snprintf(sql, sizeof(sql), "SET TRANSACTION SNAPSHOT '%s'", snapname);
    if (exec_ok(sn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err, sizeof(err)) < 0 ||
        exec_ok(sn, sql, err, sizeof(err)) < 0) {
        LOG_READ_FAILED(sn, "snapshot: %s", err);
        PQfinish(exporter);
        PQfinish(sn->conn);
        sn->conn = NULL;
        return -1;
    }
    size_t i = (size_t)json_integer_value(json_object_get(run, "i"));
    json_t *key0 = json_object_get(run, "key");
    LOG_INFO(sn->name, "snapshot of %zu table(s) %s at %s (snapshot %s)%s",
             json_array_size(tables) - i, json_is_array(key0) || i ? "resumes" : "starts", points,
             snapname, json_is_array(key0) ? " after the last published key" : "");
    int rc = 0;
    bool first_of_session = true;
    uint64_t rows_total = 0;
    int chunk = sn->conf->max_batch_events > 0 ? sn->conf->max_batch_events : 5000;
    /* The run (and its table list) is deleted from the state when its last
     * chunk is in: keep the list alive and the name copied until then. */
    json_incref(tables);
    for (; i < json_array_size(tables) && rc == 0; i++) {
        char tname[300];
        snprintf(tname, sizeof(tname), "%s", json_string_value(json_array_get(tables, i)));
        const outboxd_table_conf_t *t = cdc_table(sn, tname);
        bool fatal = false;
        table_info_t *ti =
            t ? load_info(sn, run_bound(sn), t->schema, t->name, &fatal, err, sizeof(err)) : NULL;
        if (!ti && (fatal || !t)) {
            /* A table that cannot be read (no primary key, gone, no longer
             * a cdc table): skipped with an ERROR, not a source that stops
             * at every start. Not marked done, so a snapshot: initial table
             * is tried again at the next start (once fixed, it is read). */
            LOG_ERROR(sn->name,
                      "snapshot of %s skipped: %s; its rows that exist are not read (its changes "
                      "stream as usual); once fixed, request a snapshot with the signal table, "
                      "or restart the relay for a snapshot: initial table",
                      tname, t ? err : "it is no longer configured as a cdc table");
            json_object_set_new(run, "i", json_integer((json_int_t)(i + 1)));
            json_object_set_new(run, "key", json_null());
            /* Segments of an earlier, interrupted read of it would make the
             * stream skip changes of keys it never read. */
            json_object_del(segs, tname);
            first_of_session = false;
            if (i + 1 >= json_array_size(tables)) {
                /* The run ends here: committed as any last chunk is. */
                json_object_del(sn->state, "run");
                run = NULL;
                rc = commit_chunk(&e, outboxd_now_us());
                break;
            }
            continue;
        }
        if (!ti) {
            LOG_READ_FAILED(sn, "snapshot of %s: %s", tname, err);
            rc = -1;
            break;
        }
        json_t *key = json_object_get(run, "key");
        /* This table's segment under this snapshot. */
        json_t *seg =
            json_pack("[O,s]", json_is_array(key) && first_of_session ? key : json_null(), points);
        if (in_array(json_object_get(run, "replay"), tname)) {
            /* Consumers may hold the table's rows already (see "Reading a
             * table again" above): no segment, nothing skipped. */
            json_decref(seg);
            json_object_del(segs, tname);
            if (!(json_is_array(key) && first_of_session)) {
                key = json_null();
                json_object_set_new(run, "key", json_null());
            }
        } else if (json_is_array(key) && first_of_session) {
            json_t *list = json_object_get(segs, tname);
            if (!json_is_array(list)) {
                list = json_array();
                json_object_set_new(segs, tname, list);
            }
            json_array_append_new(list, seg);
        } else {
            json_object_set_new(segs, tname, json_pack("[o]", seg));
            key = json_null();
            json_object_set_new(run, "key", json_null());
        }
        first_of_session = false;
        uint64_t table_rows = 0;
        for (;;) {
            if (atomic_load(io->stop)) {
                rc = give_up(&e, -1);
                break;
            }
            /* A long snapshot is progress, not a stall (/healthz). */
            outboxd_stats_tick(io->stats);
            if (io->keepalive)
                io->keepalive(io->opaque);
            int64_t t0 = outboxd_now_us();
            if (ti->row_bytes <= 0 && !ti->estimated) {
                if (estimate_row_bytes(sn, ti, err, sizeof(err)) < 0) {
                    LOG_READ_FAILED(sn, "snapshot of %s: %s", tname, err);
                    rc = give_up(&e, -1);
                    break;
                }
                if (ti->est_bytes > 0)
                    LOG_DEBUG(sn->name,
                              "snapshot of %s: the catalog says %.0f bytes per row; first chunk "
                              "of %d rows",
                              tname, ti->est_bytes, chunk_rows(ti, chunk));
            }
            int rows = chunk_rows(ti, chunk);
            if (sn->retry_rows > 0 && strcmp(sn->retry_table, tname) == 0)
                rows = sn->retry_rows < chunk ? sn->retry_rows : chunk;
            sn->retry_rows = rows;
            snprintf(sn->retry_table, sizeof(sn->retry_table), "%s", tname);
            char limit[16];
            snprintf(limit, sizeof(limit), "%d", rows);
            const char *params[34];
            int np = 0;
            if (json_is_array(key)) {
                for (size_t k = 0; k < json_array_size(key) && k < 32; k++)
                    params[np++] = json_string_value(json_array_get(key, k));
                if (np != ti->npk) {
                    /* The primary key changed during the snapshot: the keys
                     * read so far say nothing in the new order. The table
                     * is read again from its start under this snapshot
                     * (its rows read before are published again, as r). */
                    LOG_WARN(sn->name,
                             "snapshot of %s: the checkpoint's key has %d values but the primary "
                             "key now has %d columns (changed during the snapshot); reading the "
                             "table again from its start",
                             tname, np, ti->npk);
                    if (!in_array(json_object_get(run, "replay"), tname))
                        json_object_set_new(segs, tname, json_pack("[[n,s]]", points));
                    json_object_set_new(run, "key", json_null());
                    key = json_null();
                    np = 0;
                }
            }
            params[np++] = limit;
            PGresult *res =
                sn_query(sn, run_bound(sn), json_is_array(key) ? ti->next_sql : ti->first_sql, np,
                         params, "reading a snapshot chunk", err, sizeof(err));
            if (!res) {
                LOG_READ_FAILED(sn, "snapshot of %s: %s", tname, err);
                rc = give_up(&e, -1);
                break;
            }
            int64_t t_read = outboxd_now_us();
            int n = PQntuples(res);
            bool more = false;
            if (n >= rows) {
                n = rows;
                int m = more_rows(sn, ti, res, n - 1, err, sizeof(err));
                if (m < 0) {
                    LOG_READ_FAILED(sn, "snapshot of %s: %s", tname, err);
                    PQclear(res);
                    rc = give_up(&e, -1);
                    break;
                }
                more = m > 0;
            }
            bool final = false;
            if (!more) {
                int later = later_rows(sn, tables, i, err, sizeof(err));
                if (later < 0) {
                    LOG_READ_FAILED(sn, "snapshot: %s", err);
                    PQclear(res);
                    rc = give_up(&e, -1);
                    break;
                }
                final = later == 0;
            }
            outboxd_pgo_datum_t *datums = calloc((size_t)ti->rel.ncols + 1, sizeof(*datums));
            if (!datums) {
                PQclear(res);
                rc = give_up(&e, -1);
                break;
            }
            outboxd_cdc_source_t si = {
                .lsn = point,
                .commit_lsn = 0,
                .xid = 0,
                .commit_time_us = outboxd_wall_us(),
            };
            e.events = e.dead = 0;
            e.n_rec = 0;
            e.pos_ok = !outboxd_sink_in_txn(io->sink);
            for (size_t k = 0; k < sn->n_refused; k++)
                sn->refused[k].used = false;
            size_t bytes = 0;
            for (int r = 0; r < n && rc == 0; r++) {
                for (int c = 0; c < ti->rel.ncols; c++) {
                    if (PQgetisnull(res, r, c)) {
                        datums[c] = (outboxd_pgo_datum_t){.kind = 'n'};
                    } else {
                        datums[c] = (outboxd_pgo_datum_t){.kind = 't',
                                                          .data = PQgetvalue(res, r, c),
                                                          .len = (uint32_t)PQgetlength(res, r, c)};
                        bytes += datums[c].len;
                    }
                }
                outboxd_pgo_tuple_t after = {.ncols = ti->rel.ncols, .cols = datums};
                si.snapshot = final && r == n - 1 ? "last" : "true";
                e.row = r;
                refused_row_t *m = sn->n_refused ? find_refused(sn, tname, ti, res, r) : NULL;
                int cr;
                if (m) {
                    /* Kafka refused this row's event for good: dead-letter it. */
                    m->used = true;
                    cr = outboxd_cdc_dead_letter(io->cdc, &ti->rel, 'r', NULL,
                                                 m->level ? NULL : &after, &si, m->reason, emit, &e,
                                                 err, sizeof(err));
                } else {
                    cr = outboxd_cdc_change(io->cdc, &ti->rel, 'r', NULL, &after, &si, emit, &e,
                                            err, sizeof(err));
                    if (cr != 0 && cr != OUTBOXD_CDC_RETRY && e.st == OUTBOXD_SINK_MISSING_TOPIC &&
                        sn->conf->missing_topic == OUTBOXD_MISSING_TOPIC_DEAD_LETTER) {
                        /* As a streamed change: the row goes to the
                         * dead-letter topic, the snapshot goes on. */
                        char reason[700];
                        snprintf(reason, sizeof(reason), "%s (relay.missing_topic: dead_letter)",
                                 e.err);
                        cr = outboxd_cdc_dead_letter(io->cdc, &ti->rel, 'r', NULL, &after, &si,
                                                     reason, emit, &e, err, sizeof(err));
                    }
                }
                if (cr == 0)
                    continue;
                if (cr == OUTBOXD_CDC_RETRY) {
                    LOG_ERROR(sn->name, "snapshot of %s: %s", tname, err);
                    rc = give_up(&e, -1);
                } else if (e.st == OUTBOXD_SINK_FATAL) {
                    LOG_ERROR(sn->name, "%s", e.err);
                    rc = -2;
                } else {
                    LOG_ERROR(sn->name,
                              "snapshot of %s: %s; resuming from the last committed "
                              "chunk",
                              tname, e.err);
                    rc = give_up(&e, -1);
                    if (rc == -1)
                        rc = note_refused(&e, ti, tname, res);
                }
            }
            free(datums);
            if (rc != 0) {
                PQclear(res);
                break;
            }
            if (n > 0)
                ti->row_bytes = (double)(bytes + (size_t)ti->rel.ncols * 8) / n;
            if (n > 0) {
                json_t *nk = json_array();
                for (int k = 0; k < ti->npk; k++)
                    json_array_append_new(nk, json_string(PQgetvalue(res, n - 1, ti->pk[k])));
                json_object_set_new(run, "key", nk);
                key = nk;
            }
            table_rows += (uint64_t)n;
            rows_total += (uint64_t)n;
            if (!more) {
                /* The table is done: in the same transaction as its last rows. */
                json_array_append_new(done, json_string(tname));
                json_object_set_new(run, "i", json_integer((json_int_t)(i + 1)));
                json_object_set_new(run, "key", json_null());
                if (i + 1 >= json_array_size(tables)) {
                    json_object_del(sn->state, "run");
                    run = NULL;
                }
            }
            if (n > 0 || !run) {
                int64_t t_prod = outboxd_now_us();
                rc = commit_chunk(&e, t0);
                if (rc == -1)
                    rc = note_refused(&e, ti, tname, res);
                if (rc != 0) {
                    PQclear(res);
                    break;
                }
                sn->retry_rows = 0; /* this chunk is in */
                /* Dead letters of refused rows are in Kafka now. */
                clear_refused(sn, true);
                if (sn->isolating) {
                    sn->isolating = false;
                    outboxd_sink_set_one_by_one(io->sink, false);
                    LOG_INFO(sn->name, "the refused chunk is in; producing in batches again");
                }
                LOG_DEBUG(sn->name,
                          "snapshot of %s: %llu rows published (chunk of %d rows, %zu bytes: "
                          "read %.1f ms, encode+produce %.1f ms, commit %.1f ms)",
                          tname, (unsigned long long)table_rows, n, bytes,
                          (double)(t_read - t0) / 1e3, (double)(t_prod - t_read) / 1e3,
                          (double)(outboxd_now_us() - t_prod) / 1e3);
            }
            PQclear(res);
            if (!more) {
                sn->retry_rows = 0;
                break;
            }
        }
        if (rc == 0)
            LOG_INFO(sn->name, "snapshot of %s: %llu rows in this run", tname,
                     (unsigned long long)table_rows);
        free_info(ti);
        if (!run)
            break;
    }
    json_decref(tables);
    free(e.rec_row);
    if (rc != -1 && sn->isolating) {
        /* Finished or failed for good: the stream produces in batches. A
         * retry keeps it, to find the refused record of the chunk. */
        sn->isolating = false;
        outboxd_sink_set_one_by_one(io->sink, false);
    }
    if (rc == 0)
        clear_refused(sn, false);
    /* Ending the read transaction and closing the exporting connection
     * drops the temporary slot. After a failure the connection is closed
     * instead (which ends the transaction too): a query given up there may
     * still be running, and a ROLLBACK would wait for it. */
    if (rc == 0) {
        char rerr[512];
        PGresult *res =
            sn_query(sn, run_bound(sn), "ROLLBACK", 0, NULL, "ROLLBACK", rerr, sizeof(rerr));
        if (res) {
            PQclear(res);
        } else {
            /* Never reuse a connection that may still be in the read
             * transaction: the filter's look-ups open a new one. */
            PQfinish(sn->conn);
            sn->conn = NULL;
        }
    }
    PQfinish(exporter);
    if (rc != 0) {
        /* The next connect rebuilds the progress from the last commit. */
        PQfinish(sn->conn);
        sn->conn = NULL;
        return rc;
    }
    sn->pending = false;
    if (build_filter(sn) < 0) {
        LOG_ERROR(sn->name, "out of memory");
        return -1;
    }
    double secs = (double)(outboxd_now_ms() - t_start) / 1000.0;
    LOG_INFO(sn->name,
             "snapshot finished: %llu rows in %.1f s (%.0f rows/s); streaming starts at the "
             "slot's position, changes committed before %s on snapshotted keys are skipped",
             (unsigned long long)rows_total, secs, secs > 0 ? (double)rows_total / secs : 0.0,
             points);
    return 0;
}

/* ---- ad-hoc snapshots ---- */

bool outboxd_snapshot_is_signal(const outboxd_source_conf_t *src, const outboxd_pgo_relation_t *rel)
{
    const char *sig = src->signal_table;
    if (!sig)
        return false;
    const char *dot = strchr(sig, '.');
    if (!dot)
        return strcmp(rel->nspname, "public") == 0 && strcmp(rel->relname, sig) == 0;
    return strlen(rel->nspname) == (size_t)(dot - sig) &&
           strncmp(rel->nspname, sig, (size_t)(dot - sig)) == 0 &&
           strcmp(rel->relname, dot + 1) == 0;
}

static char *column_text(const outboxd_pgo_relation_t *rel, const outboxd_pgo_tuple_t *tup,
                         const char *name)
{
    for (int c = 0; c < rel->ncols && c < tup->ncols; c++)
        if (strcmp(rel->cols[c].name, name) == 0 && tup->cols[c].kind == 't')
            return outboxd_strndup(tup->cols[c].data, tup->cols[c].len);
    return NULL;
}

void outboxd_snapshot_signal(outboxd_snapshot_t *sn, const outboxd_pgo_relation_t *rel,
                             const outboxd_pgo_tuple_t *tup)
{
    char *id = column_text(rel, tup, "id");
    char *type = column_text(rel, tup, "type");
    char *data = column_text(rel, tup, "data");
    json_t *o = data ? json_loads(data, 0, NULL) : NULL;
    json_t *cols = json_object_get(o, "data-collections");
    if (!type || strcmp(type, "execute-snapshot") != 0 || !json_is_array(cols)) {
        LOG_WARN(sn->name,
                 "signal %s ignored: only type 'execute-snapshot' with data "
                 "{\"data-collections\": [\"schema.table\", ...]} is understood (got type '%s')",
                 id ? id : "?", type ? type : "");
        goto out;
    }
    const char *kind = json_string_value(json_object_get(o, "type"));
    size_t i;
    json_t *v;
    json_array_foreach(cols, i, v)
    {
        const char *n = json_string_value(v);
        char full[300];
        if (n && !strchr(n, '.'))
            snprintf(full, sizeof(full), "public.%s", n);
        else
            snprintf(full, sizeof(full), "%s", n ? n : "");
        if (!cdc_table(sn, full)) {
            LOG_WARN(sn->name, "signal %s: '%s' is not a cdc table of this source; ignored",
                     id ? id : "?", full);
            continue;
        }
        if (!sn->requested)
            sn->requested = json_array();
        if (!in_array(sn->requested, full))
            json_array_append_new(sn->requested, json_string(full));
        LOG_INFO(sn->name,
                 "signal %s: snapshot of %s requested (%s; read as a blocking snapshot: the "
                 "stream waits, its connection stays open)",
                 id ? id : "?", full, kind ? kind : "no type given");
    }
out:
    json_decref(o);
    free(id);
    free(type);
    free(data);
}

void outboxd_snapshot_forget_requests(outboxd_snapshot_t *sn)
{
    if (sn && sn->requested)
        json_array_clear(sn->requested);
}

bool outboxd_snapshot_requested(const outboxd_snapshot_t *sn)
{
    return sn && json_array_size(sn->requested) > 0;
}

int outboxd_snapshot_apply_request(outboxd_snapshot_t *sn, outboxd_checkpoint_t *ck, char *errstr,
                                   size_t errstr_size)
{
    if (!sn->state) {
        json_error_t jerr;
        sn->state =
            ck->snapshot[0] ? json_loads(ck->snapshot, 0, &jerr) : json_pack("{s:i}", "v", 1);
        if (!json_is_object(sn->state)) {
            snprintf(errstr, errstr_size, "the snapshot progress in the checkpoint is unreadable");
            return -1;
        }
    }
    json_t *done = json_object_get(sn->state, "done");
    if (!json_is_array(done)) {
        done = json_array();
        json_object_set_new(sn->state, "done", done);
    }
    if (!json_is_object(json_object_get(sn->state, "segs")))
        json_object_set_new(sn->state, "segs", json_object());
    json_t *run = json_object_get(sn->state, "run");
    if (!run) {
        run = json_pack("{s:[], s:i, s:n}", "tables", "i", 0, "key");
        json_object_set_new(sn->state, "run", run);
    }
    json_t *tables = json_object_get(run, "tables");
    size_t i;
    json_t *v;
    json_array_foreach(sn->requested, i, v)
    {
        const char *n = json_string_value(v);
        for (size_t j = 0; j < json_array_size(done);) {
            if (strcmp(json_string_value(json_array_get(done, j)), n) == 0)
                json_array_remove(done, j);
            else
                j++;
        }
        if (!in_array(tables, n))
            json_array_append_new(tables, json_string(n));
        mark_replay(run, n);
    }
    json_array_clear(sn->requested);
    sn->pending = true;
    return store_state(sn, ck, errstr, errstr_size);
}

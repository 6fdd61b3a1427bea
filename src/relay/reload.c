/*
 * Configuration reload (reload.h).
 *
 * Memory: a source thread reads its configuration without locks, so a
 * configuration is freed only when no source reports using it
 * (outboxd_source_uses: running on it, its Kafka producers built from it, or
 * handed over and not yet taken). The first configuration belongs to main
 * and is never freed here; the newest one is always kept.
 */
#include "outboxd/relay/reload.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outboxd/common/log.h"
#include "outboxd/relay/notify.h"
#include "outboxd/relay/preflight.h"
#include "outboxd/relay/router.h"

struct outboxd_reload {
    const outboxd_config_t *initial; /* not owned */
    const outboxd_config_t *latest;  /* initial, or the last of owned */
    outboxd_config_t **owned;        /* loaded here; freed when unused */
    size_t n_owned;
    char *cli_log_level;  /* NULL: relay.log_level decides */
    char *cli_log_format; /* NULL: relay.log_format decides */
    uint64_t gen;         /* generation of latest (0: initial) */
    bool waiting;         /* latest handed over, not applied everywhere yet */
};

outboxd_reload_t *outboxd_reload_new(const outboxd_config_t *initial, const char *cli_log_level,
                                     const char *cli_log_format)
{
    outboxd_reload_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->initial = initial;
    r->latest = initial;
    r->cli_log_level = cli_log_level ? strdup(cli_log_level) : NULL;
    r->cli_log_format = cli_log_format ? strdup(cli_log_format) : NULL;
    if ((cli_log_level && !r->cli_log_level) || (cli_log_format && !r->cli_log_format)) {
        outboxd_reload_destroy(r);
        return NULL;
    }
    return r;
}

void outboxd_reload_destroy(outboxd_reload_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_owned; i++)
        outboxd_config_destroy(r->owned[i]);
    free(r->owned);
    free(r->cli_log_level);
    free(r->cli_log_format);
    free(r);
}

static const outboxd_source_conf_t *find_source(const outboxd_config_t *conf, const char *name)
{
    for (size_t i = 0; i < conf->n_sources; i++)
        if (strcmp(conf->sources[i].name, name) == 0)
            return &conf->sources[i];
    return NULL;
}

/* What `outboxd run` checks before it starts, beyond the loader, on the
 * file as it will apply (keys that need a restart already pinned): returns
 * false with the first problem in err. initial: the configuration the
 * process started with, whose sources are the ones running. */
static bool validate(const outboxd_config_t *next, const outboxd_config_t *initial, char *err,
                     size_t err_size)
{
    outboxd_buf_t pre = {0};
    if (outboxd_preflight_check(next, &pre) > 0) {
        const char *nl = pre.data ? strchr(pre.data, '\n') : NULL;
        snprintf(err, err_size, "%.*s", nl ? (int)(nl - pre.data) : (int)pre.len,
                 pre.data ? pre.data : "preflight check failed");
        outboxd_buf_free(&pre);
        return false;
    }
    outboxd_buf_free(&pre);
    /* The loader compared the file's topics; the checkpoint topic is the
     * running one now (it needs a restart). */
    if (strcmp(next->dead_letter_topic, next->checkpoint_topic) == 0) {
        snprintf(err, err_size,
                 "%s: relay.dead_letter_topic: '%s' is the running relay.checkpoint_topic "
                 "(which changes only at a restart): expected another topic",
                 next->path, next->dead_letter_topic);
        return false;
    }
    /* Sources added to the file start only at the restart: what can stream
     * until then are those running. */
    size_t running = 0;
    for (size_t i = 0; i < initial->n_sources; i++)
        running += find_source(next, initial->sources[i].name) != NULL;
    if (next->metrics_ready_min_sources > (int)running) {
        snprintf(err, err_size,
                 "%s: metrics.ready_min_sources: %d is more than the %zu running source(s) "
                 "(sources added to the file start at the restart): use at most %zu, or 0 "
                 "for all",
                 next->path, next->metrics_ready_min_sources, running, running);
        return false;
    }
    /* Each running source's new mapping must build (typed payload schemas,
     * registry settings), or the source would refuse it later. */
    for (size_t i = 0; i < initial->n_sources; i++) {
        const outboxd_source_conf_t *src = find_source(next, initial->sources[i].name);
        if (!src)
            continue;
        char e[768];
        outboxd_router_t *rt = outboxd_router_new(next, src, "", e, sizeof(e));
        if (!rt) {
            snprintf(err, err_size, "%s: sources[%zu] (%s): %s", next->path,
                     (size_t)(src - next->sources), src->name, e);
            return false;
        }
        outboxd_router_destroy(rt);
    }
    return true;
}

/* An SQL identifier, quoted (for SQL shown to the operator). */
static const char *quoted(char *out, size_t size, const char *name)
{
    size_t n = 0;
    if (size < 3)
        return "";
    out[n++] = '"';
    for (const char *p = name; *p && n + 3 < size; p++) {
        if (*p == '"')
            out[n++] = '"';
        out[n++] = *p;
    }
    out[n++] = '"';
    out[n] = '\0';
    return out;
}

static bool same_text(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* A changed row_filter of a table the publication already has: the WHERE
 * is written when outboxd adds a table, never changed afterwards, so say
 * what to run (else the old filter would go on silently). */
static void warn_row_filters(const outboxd_config_t *next, const outboxd_config_t *prev)
{
    for (size_t i = 0; i < next->n_sources; i++) {
        const outboxd_source_conf_t *ns = &next->sources[i];
        const outboxd_source_conf_t *ps = find_source(prev, ns->name);
        for (size_t j = 0; ps && j < ns->n_tables; j++) {
            const outboxd_table_conf_t *nt = &ns->tables[j];
            for (size_t k = 0; k < ps->n_tables; k++) {
                const outboxd_table_conf_t *pt = &ps->tables[k];
                if (strcmp(nt->schema, pt->schema) != 0 || strcmp(nt->name, pt->name) != 0 ||
                    same_text(nt->row_filter, pt->row_filter))
                    continue;
                char qp[200], qs[200], qt[200];
                quoted(qp, sizeof(qp), ns->publication);
                quoted(qs, sizeof(qs), nt->schema);
                quoted(qt, sizeof(qt), nt->name);
                LOG_WARN(ns->name,
                         "reload: sources[%zu].tables[%zu].row_filter changed: publication %s "
                         "keeps the WHERE it has for %s.%s (outboxd writes one only when it "
                         "adds a table); to change it run, in one transaction: ALTER "
                         "PUBLICATION %s DROP TABLE %s.%s; ALTER PUBLICATION %s ADD TABLE "
                         "%s.%s%s%s%s",
                         i, j, ns->publication, nt->schema, nt->name, qp, qs, qt, qp, qs, qt,
                         nt->row_filter ? " WHERE (" : "", nt->row_filter ? nt->row_filter : "",
                         nt->row_filter ? ")" : "");
            }
        }
    }
}

/* Log level and format: the command line wins over the file. */
static void apply_logging(outboxd_reload_t *r, const outboxd_config_t *next)
{
    outboxd_log_level_t lvl;
    const char *lname = r->cli_log_level ? r->cli_log_level : next->log_level;
    if (lname && outboxd_log_level_parse(lname, &lvl) && lvl != outboxd_log_get_level()) {
        /* Said at the more verbose of the two levels, so it shows. */
        if (lvl > OUTBOXD_LOG_INFO)
            LOG_INFO(NULL, "reload: log level %s", lname);
        outboxd_log_set_level(lvl);
        if (lvl <= OUTBOXD_LOG_INFO)
            LOG_INFO(NULL, "reload: log level %s", lname);
    }
    outboxd_log_format_t fmt;
    const char *fname = r->cli_log_format ? r->cli_log_format : next->log_format;
    if (fname && outboxd_log_format_parse(fname, &fmt))
        outboxd_log_set_format(fmt);
}

bool outboxd_reload_start(outboxd_reload_t *r, outboxd_source_t *const *sources, size_t n,
                          outboxd_metrics_t *metrics, bool notify)
{
    const char *path = r->initial->path;
    if (notify)
        outboxd_notify_reloading("reloading the configuration");
    LOG_INFO(NULL, "SIGHUP: reloading %s", path);
    char err[1024];
    outboxd_config_t *next = outboxd_config_load(path, err, sizeof(err));
    /* Keys that need a restart keep the values the process started with:
     * pinned against the first configuration, not the last reload, so a
     * source removed by one reload and put back by a later one keeps them
     * too (it never stopped running on them). Then validated as it will
     * apply. */
    outboxd_buf_t changed = {0};
    if (next && outboxd_config_pin_restart_keys(next, r->initial, &changed) < 0) {
        snprintf(err, sizeof(err), "out of memory");
        outboxd_config_destroy(next);
        next = NULL;
    }
    if (next && !validate(next, r->initial, err, sizeof(err))) {
        outboxd_config_destroy(next);
        next = NULL;
    }
    outboxd_config_t **grown = NULL;
    if (next) {
        grown = realloc(r->owned, (r->n_owned + 1) * sizeof(*grown));
        if (!grown) {
            snprintf(err, sizeof(err), "out of memory");
            outboxd_config_destroy(next);
            next = NULL;
        } else {
            r->owned = grown;
        }
    }
    if (!next) {
        outboxd_buf_free(&changed);
        LOG_ERROR(NULL, "reload refused: %s; the running configuration stays in force", err);
        outboxd_metrics_reloaded(metrics, false);
        if (notify)
            outboxd_notify_ready("reload refused (see the log); running configuration kept");
        return false;
    }
    char *save = NULL;
    for (char *line = changed.data ? strtok_r(changed.data, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save))
        LOG_WARN(NULL, "reload: %s: needs a restart; ignored until then", line);
    outboxd_buf_free(&changed);

    warn_row_filters(next, r->latest);
    r->owned[r->n_owned++] = next;
    r->latest = next;
    r->gen++;
    r->waiting = true;
    apply_logging(r, next);
    outboxd_metrics_options_t mopts = {
        .stall_timeout_ms =
            next->metrics_stall_timeout_ms > 0 ? next->metrics_stall_timeout_ms : 60000,
        .ready_min_sources = next->metrics_ready_min_sources,
        .max_slot_lag_bytes = next->max_slot_lag_bytes,
    };
    outboxd_metrics_set_options(metrics, &mopts);
    size_t handed = 0;
    for (size_t i = 0; i < n && i < r->initial->n_sources; i++) {
        const outboxd_source_conf_t *src = find_source(next, r->initial->sources[i].name);
        if (!sources[i] || !src)
            continue;
        outboxd_source_reload(sources[i], next, src, r->gen);
        handed++;
    }
    outboxd_metrics_reloaded(metrics, true);
    LOG_INFO(NULL,
             "reload: configuration %llu valid; %zu source(s) apply it at their next transaction "
             "boundary",
             (unsigned long long)r->gen, handed);
    return true;
}

const outboxd_config_t *outboxd_reload_latest(const outboxd_reload_t *r)
{
    return r->latest;
}

bool outboxd_reload_poll(outboxd_reload_t *r, outboxd_source_t *const *sources, size_t n)
{
    for (size_t k = 0; k < r->n_owned;) {
        outboxd_config_t *c = r->owned[k];
        bool used = c == r->latest;
        for (size_t i = 0; i < n && !used; i++)
            used = sources[i] && outboxd_source_uses(sources[i], c);
        if (used) {
            k++;
            continue;
        }
        outboxd_config_destroy(c);
        r->owned[k] = r->owned[--r->n_owned];
    }
    if (!r->waiting)
        return false;
    size_t applied = 0, refused = 0;
    for (size_t i = 0; i < n && i < r->initial->n_sources; i++) {
        if (!sources[i] || outboxd_source_done(sources[i]) ||
            !find_source(r->latest, r->initial->sources[i].name))
            continue;
        if (outboxd_source_applied(sources[i]) < r->gen)
            return false;
        if (outboxd_source_refused(sources[i]) == r->gen)
            refused++;
        else
            applied++;
    }
    r->waiting = false;
    if (refused)
        /* Each such source logged its ERROR (why, and that it keeps its
         * running configuration); a fix of the file and another SIGHUP
         * hands the configuration over again. */
        LOG_WARN(NULL,
                 "reload: configuration %llu applied by %zu source(s) and refused by %zu, which "
                 "keep their running configuration (see their reload ERROR)",
                 (unsigned long long)r->gen, applied, refused);
    else
        LOG_INFO(NULL, "reload: configuration %llu applied by every source",
                 (unsigned long long)r->gen);
    return true;
}

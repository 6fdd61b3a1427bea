/*
 * outboxd: PostgreSQL outbox tables -> Kafka, exactly once.
 *
 *   outboxd run -c FILE      relay (also: outboxd -c FILE)
 *   outboxd check -c FILE    validate the file, then check every source
 *   outboxd status -c FILE   slots, checkpoints and lag of every source
 *   outboxd replay -c FILE --source S --from-lsn X ...   re-publish a range
 *
 * Only main() exits. Signal handlers only set a flag; a second SIGTERM or
 * SIGINT exits at once.
 */
#include <getopt.h>
#include <pthread.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "outboxd/relay/config.h"
#include "outboxd/common/log.h"
#include "outboxd/common/registry.h"
#include "outboxd/relay/encoder.h"
#include "outboxd/relay/pgsetup.h"
#include "outboxd/relay/preflight.h"
#include "outboxd/relay/sink.h"
#include "outboxd/relay/source.h"
#include "outboxd/relay/heartbeat.h"
#include "outboxd/relay/kafkacheck.h"
#include "outboxd/relay/metrics.h"
#include "outboxd/relay/notify.h"
#include "outboxd/relay/reload.h"
#include "outboxd/relay/status.h"
#include "outboxd/relay/replay.h"

#define KAFKA_PROBE_TIMEOUT_MS 10000
#define MAX_START_LSN          64 /* --start-lsn options at most */

static volatile sig_atomic_t got_signal = 0;
/* SIGHUP: reload the configuration (the main loop acts on it). */
static volatile sig_atomic_t got_hup = 0;
/* Read by every source thread; set by main once a signal was seen. */
static atomic_int stop_flag = 0;

static void on_signal(int sig)
{
    if (got_signal) {
        /* Second signal: leave now. Nothing is lost: PostgreSQL keeps
         * everything past the last confirmed position. */
        static const char msg[] = "outboxd: second signal, exiting immediately\n";
        ssize_t w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
        (void)w;
        _exit(128 + sig);
    }
    got_signal = sig;
}

static void on_hup(int sig)
{
    (void)sig;
    got_hup = 1;
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: outboxd [run] -c FILE [--log-level LEVEL] [--log-format text|json]\n"
               "       outboxd check -c FILE [--create]\n"
               "       outboxd status -c FILE\n"
               "       outboxd replay -c FILE --source S --from-lsn X [--to-lsn Y]\n"
               "                      [--topic-suffix SUF | --to-topic T] [--dry-run]\n"
               "       outboxd --help | --version\n"
               "\n"
               "Relays transactional outbox rows from PostgreSQL (logical replication,\n"
               "pgoutput) into Kafka with exactly-once delivery to read_committed consumers.\n"
               "\n"
               "Commands:\n"
               "  run     relay until SIGTERM/SIGINT (the default); SIGHUP reloads the\n"
               "          configuration file (README: Reloading the configuration)\n"
               "  check   validate the configuration, then connect to every source and\n"
               "          check wal_level, the publication, the slot and the outbox\n"
               "          columns; prints what to fix, or 'configuration OK'; changes\n"
               "          nothing, unless --create: then it creates the publication and\n"
               "          slot where create_publication / create_slot allow, as run does\n"
               "  status  per source: replication slot (active, confirmed LSN, lag, WAL\n"
               "          retained), last checkpoint in Kafka, and the running relay's\n"
               "          state and lag in seconds (from metrics.listen); read-only\n"
               "  replay  re-publish the events of source S committed in [X, Y] (Y: the\n"
               "          WAL end now) from its retention slot (replay_window) into the\n"
               "          topics + SUF (default .replay) or into T, exactly once, with\n"
               "          header outboxd.replay; --dry-run counts them; the relay is untouched\n"
               "\n"
               "Options:\n"
               "  -c, --config FILE     configuration file (YAML)\n"
               "  -l, --log-level LVL   debug, info, warn or error (overrides relay.log_level)\n"
               "      --log-format FMT  text (default) or json (one JSON object per line)\n"
               "      --start-lsn S=LSN run: skip source S forward to LSN before starting\n"
               "                        (events committed before it are NOT relayed)\n"
               "  -h, --help            this text\n"
               "  -V, --version         version\n"
               "\n"
               "Exit status: 0 after a clean stop, 1 on a fatal error (e.g. fenced by\n"
               "another instance) and from check when it found a problem, 2 on a usage\n"
               "or configuration error; a second SIGTERM/SIGINT exits at once (128 + signal).\n");
}

/* Validates only, as DESIGN.md section 5 asks: a slot made by check for a
 * relay that never starts would keep WAL for ever. --create makes what
 * create_publication / create_slot allow (as run does at its start), for
 * a slot that must exist before the first outbox rows are written. */
/*
 * Typed payloads give each event type its own record (<Type>Envelope); with
 * the topic-name strategy every type on a topic shares the subject
 * <topic>-value, and a registry with a compatibility rule (Confluent's
 * default BACKWARD) refuses a second record name there, dead-lettering
 * that type's events. Said at the start (run and check) unless every outbox
 * topic template names the type column (one type per topic).
 */
static void warn_typed_subjects(const outboxd_config_t *conf)
{
    if (!conf->schemas_dir || !conf->schema_registry_url ||
        conf->subject_name_strategy != OUTBOXD_SUBJECT_TOPIC_NAME)
        return;
    for (size_t i = 0; i < conf->n_sources; i++) {
        for (size_t j = 0; j < conf->sources[i].n_tables; j++) {
            const outboxd_table_conf_t *t = &conf->sources[i].tables[j];
            if (t->mode != OUTBOXD_MODE_OUTBOX)
                continue;
            char want[300];
            snprintf(want, sizeof(want), "${%s}", t->columns.type ? t->columns.type : "type");
            if (t->topic && strstr(t->topic, want))
                continue;
            LOG_WARN(NULL,
                     "relay.schemas_dir with schema_registry.subject_name_strategy topic-name: "
                     "the event types of one topic (sources[%zu].tables[%zu], topic %s) share "
                     "the subject <topic>-value, and a registry that checks compatibility "
                     "(Confluent's default, BACKWARD) refuses a second type's record there, "
                     "sending its events to the dead-letter topic; set "
                     "schema_registry.subject_name_strategy: topic-record-name (or put "
                     "${%s} in the topic)",
                     i, j, t->topic ? t->topic : "outbox.event.${aggregatetype}",
                     t->columns.type ? t->columns.type : "type");
            return;
        }
    }
}

static int cmd_check(const outboxd_config_t *conf, bool create)
{
    int problems = 0;
    for (size_t i = 0; i < conf->n_sources; i++) {
        const outboxd_source_conf_t *src = &conf->sources[i];
        outboxd_buf_t report = {0};
        int n = outboxd_pgsetup_check(src, create, &report, NULL);
        if (n >= 0)
            n += outboxd_pgsetup_check_topics(src, &report);
        if (report.len)
            fputs(report.data, stdout);
        if (report.len && report.data[report.len - 1] != '\n')
            fputc('\n', stdout);
        size_t report_len = report.len;
        outboxd_buf_free(&report);
        /* With n == 0 every line of the report is a note: something run
         * will create; "OK" alone would read as if it existed. */
        if (n == 0 && report_len)
            printf("source %s: OK once the notes above are done (outboxd run does them at its "
                   "start, check --create now)\n",
                   src->name);
        else if (n == 0)
            printf("source %s: OK (slot %s, publication %s)\n", src->name, src->slot,
                   src->publication);
        problems += n < 0 ? 1 : n;
    }
    /* Typed payload schemas parse, registry secrets read, registry answers. */
    char e[512];
    outboxd_encoder_t *enc = outboxd_encoder_new(conf, e, sizeof(e));
    if (!enc || outboxd_encoder_check(enc, e, sizeof(e)) < 0) {
        printf("%s\n", e);
        problems++;
    } else {
        printf("%s\n", e);
    }
    outboxd_encoder_destroy(enc);
    /* Kafka reachability: a metadata request within 10 seconds, with the
     * client the sink would build; one line, not librdkafka's own. */
    int brokers = outboxd_sink_probe(conf, KAFKA_PROBE_TIMEOUT_MS, e, sizeof(e));
    if (brokers == -2) {
        printf("kafka: cannot connect to %s: %s\n", conf->bootstrap_servers, e);
        problems++;
    } else if (brokers < 0) {
        printf("kafka: cannot reach %s within %d s: %s; is the broker running? (check "
               "kafka.bootstrap_servers)\n",
               conf->bootstrap_servers, KAFKA_PROBE_TIMEOUT_MS / 1000, e);
        problems++;
    } else {
        printf("kafka: OK (%d broker(s) at %s)\n", brokers, conf->bootstrap_servers);
        /* The topics' configuration, as the broker holds it (kafkacheck.h). */
        outboxd_buf_t report = {0};
        int n = outboxd_kafkacheck_topics(conf, KAFKA_PROBE_TIMEOUT_MS, &report);
        if (report.len)
            fputs(report.data, stdout);
        outboxd_buf_free(&report);
        /* Topics it could not look at (the line says why) are not a
         * problem of the configuration. */
        if (n > 0)
            problems += n;
    }
    char pnote[512];
    if (outboxd_config_producers_note(conf, pnote, sizeof(pnote)))
        printf("note: %s\n", pnote); /* advice, not a problem */
    if (problems == 0) {
        printf("configuration OK\n");
        return 0;
    }
    printf("%d problem(s) found\n", problems);
    return 1;
}

/*
 * Health as systemd sees it: READY=1 once the sources /readyz asks for
 * stream (every source, or metrics.ready_min_sources of them); WATCHDOG=1
 * at half the watchdog period, only while every source loop turns (the same
 * test as /healthz), so a stuck loop gets the service restarted.
 */
typedef struct supervisor {
    outboxd_metrics_t *metrics;
    bool ready_sent;
    int last_streaming;
    uint64_t watchdog_usec;
    int64_t last_watchdog_ms;
    int64_t last_check_ms;
} supervisor_t;

static void supervise(supervisor_t *sv)
{
    int64_t now = outboxd_now_ms();
    int total, streaming;
    outboxd_metrics_counts(sv->metrics, &total, &streaming);
    /* Readiness is looked at on every pass, not only when the count
     * changes: a reload may lower metrics.ready_min_sources while the unit
     * still waits for its start. */
    bool ready_now = !sv->ready_sent && outboxd_metrics_ready(sv->metrics, NULL);
    if (streaming != sv->last_streaming || ready_now) {
        char status[128];
        snprintf(status, sizeof(status), "%d of %d sources streaming", streaming, total);
        if (ready_now) {
            outboxd_notify_ready(status);
            sv->ready_sent = true;
        } else {
            outboxd_notify_status(status);
        }
        sv->last_streaming = streaming;
    }
    if (sv->watchdog_usec && now - sv->last_watchdog_ms >= (int64_t)(sv->watchdog_usec / 2000)) {
        if (outboxd_metrics_healthy(sv->metrics, NULL)) {
            outboxd_notify_watchdog();
            sv->last_watchdog_ms = now;
        }
    }
    if (now - sv->last_check_ms >= 1000) {
        outboxd_metrics_check(sv->metrics);
        sv->last_check_ms = now;
    }
}

static int cmd_run(const outboxd_config_t *conf, const char *cli_level, const char *cli_format)
{
    outboxd_source_t **sources = calloc(conf->n_sources, sizeof(*sources));
    char err[512];
    int rc = 0;
    if (!sources) {
        LOG_ERROR(NULL, "out of memory");
        return 1;
    }
    outboxd_metrics_options_t mopts = {
        .stall_timeout_ms =
            conf->metrics_stall_timeout_ms > 0 ? conf->metrics_stall_timeout_ms : 60000,
        .ready_min_sources = conf->metrics_ready_min_sources,
        .max_slot_lag_bytes = conf->max_slot_lag_bytes,
    };
    outboxd_metrics_t *metrics = outboxd_metrics_new(&mopts);
    outboxd_http_t *http = NULL;
    outboxd_reload_t *reloader = outboxd_reload_new(conf, cli_level, cli_format);
    if (!metrics || !reloader) {
        LOG_ERROR(NULL, "out of memory");
        outboxd_metrics_destroy(metrics);
        outboxd_reload_destroy(reloader);
        free(sources);
        return 1;
    }
    for (size_t i = 0; i < conf->n_sources; i++)
        outboxd_metrics_source(metrics, conf->sources[i].name);
    if (conf->metrics_listen) {
        outboxd_http_options_t hopts = {.listen = conf->metrics_listen};
        http = outboxd_http_new(&hopts, outboxd_metrics_http_handler, metrics, err, sizeof(err));
        if (!http) {
            LOG_ERROR(NULL, "metrics.listen: %s", err);
            outboxd_metrics_destroy(metrics);
            outboxd_reload_destroy(reloader);
            free(sources);
            return 1;
        }
        LOG_INFO(NULL, "serving /metrics, /healthz and /readyz on %s (port %d)",
                 conf->metrics_listen, outboxd_http_port(http));
    }
    supervisor_t sv = {
        .metrics = metrics, .last_streaming = -1, .watchdog_usec = outboxd_notify_watchdog_usec()};
    if (sv.watchdog_usec)
        LOG_INFO(NULL, "systemd watchdog every %.1f s", (double)sv.watchdog_usec / 1e6);
    LOG_INFO(NULL, "outboxd %s starting with %zu source(s), Kafka at %s (librdkafka %s)",
             OUTBOXD_VERSION, conf->n_sources, conf->bootstrap_servers, rd_kafka_version_str());
    const char *rdk_note = outboxd_sink_librdkafka_note(rd_kafka_version());
    if (rdk_note)
        LOG_INFO(NULL, "librdkafka %s: %s", rd_kafka_version_str(), rdk_note);
    size_t started = 0;
    /* One pool of transactional producers for all sources (sink.h); conf
     * outlives it: a reload cannot change relay.kafka_producers. */
    outboxd_sink_pool_t *pool = NULL;
    if (conf->kafka_producers > 0) {
        pool = outboxd_sink_pool_new(conf, conf->kafka_producers, &stop_flag, err, sizeof(err));
        if (!pool) {
            LOG_ERROR(NULL, "relay.kafka_producers: %s", err);
            atomic_store(&stop_flag, 1);
            rc = 1;
        } else {
            LOG_INFO(NULL, "sources share %d Kafka producers (relay.kafka_producers)",
                     conf->kafka_producers);
        }
    }
    char pnote[512];
    if (outboxd_config_producers_note(conf, pnote, sizeof(pnote)))
        LOG_INFO(NULL, "%s", pnote);
    /* The sources' loops run on at most relay.loop_threads threads (loops.h). */
    outboxd_loops_t *loops = NULL;
    if (rc == 0) {
        loops = outboxd_loops_new(conf->loop_threads, err, sizeof(err));
        if (!loops) {
            LOG_ERROR(NULL, "relay.loop_threads: %s", err);
            atomic_store(&stop_flag, 1);
            rc = 1;
        } else if (conf->n_sources > (size_t)conf->loop_threads) {
            LOG_INFO(NULL, "%zu sources share %d loop threads (relay.loop_threads)",
                     conf->n_sources, conf->loop_threads);
        }
    }
    for (size_t i = 0; i < conf->n_sources && rc == 0; i++) {
        sources[i] = outboxd_source_new(conf, &conf->sources[i], &stop_flag, err, sizeof(err));
        if (sources[i])
            outboxd_source_set_stats(sources[i],
                                     outboxd_metrics_source(metrics, conf->sources[i].name));
        if (sources[i] && pool)
            outboxd_source_set_pool(sources[i], pool);
        if (!sources[i] || outboxd_source_start(sources[i], loops, err, sizeof(err)) < 0) {
            LOG_ERROR(conf->sources[i].name, "%s", err);
            atomic_store(&stop_flag, 1);
            rc = 1;
            break;
        }
        started++;
    }
    /* The checkpoint topic's configuration (kafkacheck.h), looked at once
     * every source streams or after 10 s: not on their way to streaming. */
    outboxd_kafkacheck_bg_t *kcheck = NULL;
    bool kcheck_started = false;
    int64_t run_start_ms = outboxd_now_ms();
    outboxd_heartbeat_t *heartbeat = NULL;
    if (rc == 0) {
        heartbeat = outboxd_heartbeat_start(conf, metrics, &stop_flag, err, sizeof(err));
        if (!heartbeat && err[0]) {
            LOG_ERROR(NULL, "%s", err);
            atomic_store(&stop_flag, 1);
            rc = 1;
        }
    }
    /* Wait for a signal, or for a source to end on its own (fatal). */
    while (!atomic_load(&stop_flag)) {
        if (got_signal) {
            LOG_INFO(NULL, "signal %d: committing the batch in hand, then stopping",
                     (int)got_signal);
            outboxd_notify_stopping("committing the batch in hand, then stopping");
            atomic_store(&stop_flag, 1);
            break;
        }
        for (size_t i = 0; i < started; i++) {
            if (outboxd_source_done(sources[i])) {
                LOG_ERROR(NULL, "source %s stopped on a fatal error; stopping all sources",
                          conf->sources[i].name);
                atomic_store(&stop_flag, 1);
                rc = 1;
            }
        }
        if (got_hup) {
            got_hup = 0;
            /* RELOADING=1 only once READY=1 was sent: before that systemd
             * still waits for the start to finish. */
            if (outboxd_reload_start(reloader, sources, started, metrics, sv.ready_sent))
                outboxd_heartbeat_reload(heartbeat, outboxd_reload_latest(reloader));
        }
        if (outboxd_reload_poll(reloader, sources, started) && sv.ready_sent) {
            char status[128];
            int total, streaming;
            outboxd_metrics_counts(metrics, &total, &streaming);
            snprintf(status, sizeof(status), "configuration reloaded; %d of %d sources streaming",
                     streaming, total);
            outboxd_notify_ready(status);
        }
        supervise(&sv);
        if (!kcheck_started && (sv.ready_sent || outboxd_now_ms() - run_start_ms > 10000)) {
            kcheck = outboxd_kafkacheck_start(conf, &stop_flag);
            kcheck_started = true;
        }
        usleep(50 * 1000);
    }
    if (!got_signal)
        outboxd_notify_stopping("a source failed; stopping");
    for (size_t i = 0; i < conf->n_sources; i++)
        outboxd_source_wake(sources[i]); /* idle loops sleep up to 5 s */
    for (size_t i = 0; i < conf->n_sources; i++) {
        if (sources[i] && outboxd_source_join(sources[i]) != 0)
            rc = 1;
        outboxd_source_destroy(sources[i]);
    }
    free(sources);
    outboxd_loops_destroy(loops);    /* after every loop finished */
    outboxd_sink_pool_destroy(pool); /* after every sink borrowing from it */
    /* Only now: a source may have run on a reloaded configuration. */
    outboxd_reload_destroy(reloader);
    outboxd_heartbeat_stop(heartbeat);
    outboxd_kafkacheck_join(kcheck);
    /* The endpoint answers until the sources are gone, so a scrape during
     * shutdown sees the stopping states. */
    outboxd_http_destroy(http);
    outboxd_metrics_destroy(metrics);
    LOG_INFO(NULL, "stopped%s", rc ? " after a fatal error" : "");
    return rc;
}

/* replay and run --start-lsn: a signal sets stop_flag, which their work
 * polls (a replay commits what it holds first; a skip's count is
 * cancelled). Between watch_start and watch_end. */
static void *watch_signal(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_flag)) {
        if (got_signal)
            atomic_store(&stop_flag, 1);
        usleep(50 * 1000);
    }
    return NULL;
}

static bool watch_start(pthread_t *t)
{
    return pthread_create(t, NULL, watch_signal, NULL) == 0;
}

/* Ends the watcher and clears stop_flag (a signal stays in got_signal). */
static void watch_end(pthread_t *t, bool watching)
{
    atomic_store(&stop_flag, 1);
    if (watching)
        pthread_join(*t, NULL);
    atomic_store(&stop_flag, 0);
}

static int cmd_replay(const outboxd_config_t *conf, const outboxd_replay_args_t *a)
{
    pthread_t t;
    bool watching = watch_start(&t);
    char err[2048];
    int rc = outboxd_replay_run(conf, a, &stop_flag, stdout, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "outboxd replay: %s\n", err);
    watch_end(&t, watching);
    return rc;
}

/* One --start-lsn SOURCE=LSN: its source and position; 2 (usage) when the
 * argument is malformed or names no source. */
static int start_lsn_resolve(const outboxd_config_t *conf, const char *arg,
                             const outboxd_source_conf_t **src, outboxd_lsn_t *lsn)
{
    char name[256], err[2048];
    if (outboxd_replay_parse_start_lsn(arg, name, sizeof(name), lsn, err, sizeof(err)) < 0) {
        fprintf(stderr, "outboxd: %s\n", err);
        return 2;
    }
    *src = NULL;
    for (size_t j = 0; j < conf->n_sources; j++)
        if (strcmp(conf->sources[j].name, name) == 0)
            *src = &conf->sources[j];
    if (!*src) {
        fprintf(stderr, "outboxd: --start-lsn: unknown source '%s'\n", name);
        return 2;
    }
    return 0;
}

/* run --start-lsn SOURCE=LSN...: every argument is checked first (a typo
 * in the second must not come after the first skip was committed), then
 * each skip is done (or refused) before any source starts. A signal stops
 * the count of what is skipped (it decodes the whole range, without a time
 * limit). 0, 1 (failed or stopped: the relay does not start), 2 (refused). */
static int cmd_start_lsn(const outboxd_config_t *conf, const char *const *args, size_t n)
{
    const outboxd_source_conf_t *srcs[MAX_START_LSN];
    outboxd_lsn_t lsns[MAX_START_LSN];
    for (size_t i = 0; i < n; i++)
        if (start_lsn_resolve(conf, args[i], &srcs[i], &lsns[i]) != 0)
            return 2;
    pthread_t t;
    bool watching = n > 0 && watch_start(&t);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char err[2048];
        int r = outboxd_replay_skip_to(conf, srcs[i], lsns[i], &stop_flag, err, sizeof(err));
        if (r == -1 && got_signal) {
            LOG_WARN(srcs[i]->name,
                     "%s; stopped by signal %d: the relay does not start (run the same command "
                     "again to skip)",
                     err, (int)got_signal);
        } else if (r < 0) {
            LOG_ERROR(srcs[i]->name, "%s", err);
        }
        rc = r == 0 ? 0 : r == -2 ? 2 : 1;
    }
    watch_end(&t, watching);
    return rc;
}

int main(int argc, char **argv)
{
    const char *command = "run";
    if (argc > 1 && argv[1][0] != '-') {
        command = argv[1];
        argv++;
        argc--;
        if (strcmp(command, "run") != 0 && strcmp(command, "check") != 0 &&
            strcmp(command, "status") != 0 && strcmp(command, "replay") != 0) {
            fprintf(stderr,
                    "outboxd: unknown command '%s' (expected run, check, status or replay)\n",
                    command);
            usage(stderr);
            return 2;
        }
    }
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"log-format", required_argument, NULL, 'F'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {"source", required_argument, NULL, 'R'},
                                         {"from-lsn", required_argument, NULL, 'R'},
                                         {"to-lsn", required_argument, NULL, 'R'},
                                         {"topic-suffix", required_argument, NULL, 'R'},
                                         {"to-topic", required_argument, NULL, 'R'},
                                         {"dry-run", no_argument, NULL, 'R'},
                                         {"start-lsn", required_argument, NULL, 'S'},
                                         {"create", no_argument, NULL, 'C'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL, *level = NULL, *format = NULL;
    outboxd_replay_args_t rargs = {0};
    bool replay_opts = false, create = false;
    const char *start_lsn[MAX_START_LSN];
    size_t n_start_lsn = 0;
    char aerr[512];
    int c, idx = 0;
    while ((c = getopt_long(argc, argv, "c:l:hV", opts, &idx)) != -1) {
        switch (c) {
        case 'R':
            replay_opts = true;
            if (outboxd_replay_set_option(&rargs, opts[idx].name, optarg, aerr, sizeof(aerr)) < 0) {
                fprintf(stderr, "outboxd: %s\n", aerr);
                return 2;
            }
            break;
        case 'S':
            if (n_start_lsn == sizeof(start_lsn) / sizeof(start_lsn[0])) {
                fprintf(stderr, "outboxd: too many --start-lsn options\n");
                return 2;
            }
            start_lsn[n_start_lsn++] = optarg;
            break;
        case 'C':
            create = true;
            break;
        case 'c':
            path = optarg;
            break;
        case 'l':
            level = optarg;
            break;
        case 'F':
            format = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("outboxd %s (librdkafka %s)\n", OUTBOXD_VERSION, rd_kafka_version_str());
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "outboxd: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    bool is_replay = strcmp(command, "replay") == 0;
    if (replay_opts && !is_replay) {
        fprintf(stderr, "outboxd: --source, --from-lsn, --to-lsn, --topic-suffix, --to-topic and "
                        "--dry-run belong to the replay command\n");
        return 2;
    }
    if (create && strcmp(command, "check") != 0) {
        fprintf(stderr, "outboxd: --create belongs to the check command\n");
        return 2;
    }
    if (n_start_lsn && strcmp(command, "run") != 0) {
        fprintf(stderr, "outboxd: --start-lsn belongs to the run command\n");
        return 2;
    }
    if (is_replay && outboxd_replay_check_args(&rargs, aerr, sizeof(aerr)) < 0) {
        fprintf(stderr, "outboxd: %s\n", aerr);
        return 2;
    }
    if (!path) {
        fprintf(stderr, "outboxd: no configuration file; use -c FILE\n");
        usage(stderr);
        return 2;
    }
    if (format) {
        outboxd_log_format_t fmt;
        if (!outboxd_log_format_parse(format, &fmt)) {
            fprintf(stderr, "outboxd: unknown log format '%s' (text or json)\n", format);
            return 2;
        }
        outboxd_log_set_format(fmt);
    }
    char err[1024];
    outboxd_config_t *conf = outboxd_config_load(path, err, sizeof(err));
    if (!conf) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    outboxd_log_level_t lvl;
    const char *lname = level ? level : conf->log_level;
    if (!outboxd_log_level_parse(lname, &lvl)) {
        fprintf(stderr, "outboxd: unknown log level '%s' (debug, info, warn, error)\n", lname);
        outboxd_config_destroy(conf);
        return 2;
    }
    outboxd_log_set_level(lvl);
    if (!format) {
        outboxd_log_format_t fmt;
        if (conf->log_format && outboxd_log_format_parse(conf->log_format, &fmt))
            outboxd_log_set_format(fmt);
    }

    /* What the YAML loader cannot see (kafka.properties librdkafka refuses,
     * a row_filter where a publication cannot carry it) is a configuration
     * error for run and check alike. */
    outboxd_buf_t pre = {0};
    if (outboxd_preflight_check(conf, &pre) > 0) {
        fputs(pre.data, stderr);
        outboxd_buf_free(&pre);
        outboxd_config_destroy(conf);
        return 2;
    }
    outboxd_buf_free(&pre);

    warn_typed_subjects(conf);
    if (conf->metrics_ready_min_sources > (int)conf->n_sources) {
        fprintf(stderr,
                "%s: metrics.ready_min_sources: %d is more than the %zu configured source(s) "
                "(expected 0 for all, or at most %zu)\n",
                conf->path, conf->metrics_ready_min_sources, conf->n_sources, conf->n_sources);
        outboxd_config_destroy(conf);
        return 2;
    }
    int rc;
    if (strcmp(command, "check") == 0) {
        rc = cmd_check(conf, create);
    } else if (strcmp(command, "status") == 0) {
        int problems = outboxd_status_report(conf, stdout);
        if (problems)
            printf("%d problem(s) found\n", problems);
        rc = problems ? 1 : 0;
    } else {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        sa.sa_handler = on_hup;
        sigaction(SIGHUP, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        if (is_replay)
            rc = cmd_replay(conf, &rargs);
        else
            rc = cmd_start_lsn(conf, start_lsn, n_start_lsn);
        if (rc == 0 && !is_replay && got_signal)
            /* A stop that came while --start-lsn skipped (its skips are
             * done): do not start the sources only to stop them. */
            LOG_INFO(NULL, "signal %d before the sources started: not starting", (int)got_signal);
        else if (rc == 0 && !is_replay)
            rc = cmd_run(conf, level, format);
    }
    outboxd_config_destroy(conf);
    return rc;
}

/*
 * outboxd: PostgreSQL outbox tables -> Kafka, exactly once.
 *
 *   outboxd run -c FILE      relay (also: outboxd -c FILE)
 *   outboxd check -c FILE    validate the file, then check every source
 *
 * Only main() exits. Signal handlers only set a flag; a second SIGTERM or
 * SIGINT exits at once.
 */
#include <getopt.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "outboxd/relay/config.h"
#include "outboxd/common/log.h"
#include "outboxd/relay/encoder.h"
#include "outboxd/relay/pgsetup.h"
#include "outboxd/relay/preflight.h"
#include "outboxd/relay/sink.h"
#include "outboxd/relay/source.h"

#define KAFKA_PROBE_TIMEOUT_MS 10000

static volatile sig_atomic_t got_signal = 0;
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

static void usage(FILE *f)
{
    fprintf(f, "Usage: outboxd [run] -c FILE [--log-level LEVEL]\n"
               "       outboxd check -c FILE\n"
               "       outboxd --help | --version\n"
               "\n"
               "Relays transactional outbox rows from PostgreSQL (logical replication,\n"
               "pgoutput) into Kafka with exactly-once delivery to read_committed consumers.\n"
               "\n"
               "Commands:\n"
               "  run     relay until SIGTERM/SIGINT (the default)\n"
               "  check   validate the configuration, then connect to every source and\n"
               "          check wal_level, the publication, the slot and the outbox\n"
               "          columns (creating the publication and slot where configured);\n"
               "          prints what to fix, or 'configuration OK'\n"
               "\n"
               "Options:\n"
               "  -c, --config FILE     configuration file (YAML)\n"
               "  -l, --log-level LVL   debug, info, warn or error (overrides relay.log_level)\n"
               "  -h, --help            this text\n"
               "  -V, --version         version\n"
               "\n"
               "Exit status: 0 after a clean stop, 1 on a fatal error (e.g. fenced by\n"
               "another instance), 2 on a usage or configuration error.\n");
}

static int cmd_check(const outboxd_config_t *conf)
{
    int problems = 0;
    for (size_t i = 0; i < conf->n_sources; i++) {
        const outboxd_source_conf_t *src = &conf->sources[i];
        outboxd_buf_t report = {0};
        int n = outboxd_pgsetup_check(src, true, &report, NULL);
        if (n >= 0)
            n += outboxd_pgsetup_check_topics(src, &report);
        if (report.len)
            fputs(report.data, stdout);
        if (report.len && report.data[report.len - 1] != '\n')
            fputc('\n', stdout);
        outboxd_buf_free(&report);
        if (n == 0)
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
    if (brokers < 0) {
        printf("kafka: cannot reach %s within %d s: %s; is the broker running? (check "
               "kafka.bootstrap_servers)\n",
               conf->bootstrap_servers, KAFKA_PROBE_TIMEOUT_MS / 1000, e);
        problems++;
    } else {
        printf("kafka: OK (%d broker(s) at %s)\n", brokers, conf->bootstrap_servers);
    }
    if (problems == 0) {
        printf("configuration OK\n");
        return 0;
    }
    printf("%d problem(s) found\n", problems);
    return 1;
}

static int cmd_run(const outboxd_config_t *conf)
{
    outboxd_source_t **sources = calloc(conf->n_sources, sizeof(*sources));
    char err[512];
    int rc = 0;
    if (!sources) {
        LOG_ERROR(NULL, "out of memory");
        return 1;
    }
    LOG_INFO(NULL, "outboxd %s starting with %zu source(s), Kafka at %s", OUTBOXD_VERSION,
             conf->n_sources, conf->bootstrap_servers);
    size_t started = 0;
    for (size_t i = 0; i < conf->n_sources; i++) {
        sources[i] = outboxd_source_new(conf, &conf->sources[i], &stop_flag, err, sizeof(err));
        if (!sources[i] || outboxd_source_start(sources[i], err, sizeof(err)) < 0) {
            LOG_ERROR(conf->sources[i].name, "%s", err);
            atomic_store(&stop_flag, 1);
            rc = 1;
            break;
        }
        started++;
    }
    /* Wait for a signal, or for a source to end on its own (fatal). */
    while (!atomic_load(&stop_flag)) {
        if (got_signal) {
            LOG_INFO(NULL, "signal %d: committing the batch in hand, then stopping",
                     (int)got_signal);
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
        usleep(50 * 1000);
    }
    for (size_t i = 0; i < conf->n_sources; i++) {
        if (sources[i] && outboxd_source_join(sources[i]) != 0)
            rc = 1;
        outboxd_source_destroy(sources[i]);
    }
    free(sources);
    LOG_INFO(NULL, "stopped%s", rc ? " after a fatal error" : "");
    return rc;
}

int main(int argc, char **argv)
{
    const char *command = "run";
    if (argc > 1 && argv[1][0] != '-') {
        command = argv[1];
        argv++;
        argc--;
        if (strcmp(command, "run") != 0 && strcmp(command, "check") != 0) {
            fprintf(stderr, "outboxd: unknown command '%s' (expected run or check)\n", command);
            usage(stderr);
            return 2;
        }
    }
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"log-level", required_argument, NULL, 'l'},
                                         {"help", no_argument, NULL, 'h'},
                                         {"version", no_argument, NULL, 'V'},
                                         {NULL, 0, NULL, 0}};
    const char *path = NULL, *level = NULL;
    int c;
    while ((c = getopt_long(argc, argv, "c:l:hV", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'l':
            level = optarg;
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
    if (!path) {
        fprintf(stderr, "outboxd: no configuration file; use -c FILE\n");
        usage(stderr);
        return 2;
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

    /* What the YAML loader cannot see (kafka.properties librdkafka refuses,
     * mode: cdc) is a configuration error for run and check alike. */
    outboxd_buf_t pre = {0};
    if (outboxd_preflight_check(conf, &pre) > 0) {
        fputs(pre.data, stderr);
        outboxd_buf_free(&pre);
        outboxd_config_destroy(conf);
        return 2;
    }
    outboxd_buf_free(&pre);

    int rc;
    if (strcmp(command, "check") == 0) {
        rc = cmd_check(conf);
    } else {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        rc = cmd_run(conf);
    }
    outboxd_config_destroy(conf);
    return rc;
}

/*
 * outboxd-shop SERVICE [options]: one service of the payment SAGA as its own
 * process, with its own database (schema created at start), its consumers
 * and its HTTP API. See README "The shop (payment SAGA)".
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "outboxd/common/log.h"
#include "shop.h"

static volatile sig_atomic_t got_signal = 0;

static void on_signal(int sig)
{
    got_signal = sig;
}

static const shop_service_def_t *const services[] = {
    &shop_member_def,  &shop_product_def, &shop_coupon_def,       &shop_order_def,
    &shop_payment_def, &shop_popular_def, &shop_notification_def, &shop_platform_def,
};
#define N_SERVICES (sizeof(services) / sizeof(services[0]))

static void usage(FILE *f)
{
    fprintf(f, "usage: outboxd-shop SERVICE --db DSN --kafka HOST:PORT --http PORT [options]\n"
               "services: member product coupon order payment popular notification platform\n"
               "   or: outboxd-shop cat --kafka HOST:PORT --topic T [--registry URL]: a topic's\n"
               "       records as JSON lines, decoded as the services decode them\n"
               "options:\n"
               "  --topic-prefix P      prefix of every topic (default none)\n"
               "  --group-prefix P      prefix of consumer groups (default shop.)\n"
               "  --rate N              events per second per consumer, 0 = unlimited (default 0)\n"
               "  --max-in-flight N     messages fetched ahead per partition (default 100;\n"
               "                        at most 4 MB per consumer)\n"
               "  --retries N           retries of a failing event before its .dlt (default 3)\n"
               "  --retry-backoff-ms N  first retry backoff, doubling (default 200)\n"
               "  --saga-timeout-ms N   payment: fail a saga missing results after N ms "
               "(default 10000)\n"
               "  --redis HOST:PORT     popular: Redis (default 127.0.0.1:6379)\n"
               "  --admin-token T       member: token of the admin account created at start\n"
               "  --popular-days N      popular: default window in days (default 3)\n"
               "  --registry URL        schema registry (Confluent API) to decode events in its\n"
               "                        wire format (needed when outboxd has schema_registry.url)\n"
               "  --log-level L         debug, info, warn, error (default info)\n");
}

typedef struct wrap {
    const shop_service_def_t *def;
    shop_svc_t *svc;
    outboxd_shop_consumer_t **consumers;
    size_t n;
} wrap_t;

/* GET /health and GET /stats for every service, the rest to the service. */
static json_t *route(void *opaque, outboxd_shop_req_t *req, int *status)
{
    wrap_t *w = opaque;
    if (strcmp(req->method, "GET") == 0 && strcmp(req->path, "/health") == 0) {
        size_t assigned = 0;
        for (size_t i = 0; i < w->n; i++)
            assigned += outboxd_shop_consumer_assigned(w->consumers[i]);
        *status = assigned == w->n ? 200 : 503;
        return json_pack("{s:s,s:s,s:I,s:I}", "service", w->def->name, "status",
                         assigned == w->n ? "ok" : "waiting for partition assignment", "consumers",
                         (json_int_t)w->n, "assigned", (json_int_t)assigned);
    }
    if (strcmp(req->method, "GET") == 0 && strcmp(req->path, "/stats") == 0) {
        json_t *arr = json_array();
        for (size_t i = 0; i < w->n; i++) {
            outboxd_shop_consumer_stats_t s;
            outboxd_shop_consumer_stats(w->consumers[i], &s);
            json_array_append_new(arr, json_pack("{s:s,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "consumer",
                                                 outboxd_shop_consumer_name(w->consumers[i]),
                                                 "handled", (json_int_t)s.handled, "duplicates",
                                                 (json_int_t)s.duplicates, "retries",
                                                 (json_int_t)s.retries, "deadLetters",
                                                 (json_int_t)s.dead_letters, "throttledMs",
                                                 (json_int_t)s.throttled_ms, "registryWaits",
                                                 (json_int_t)s.registry_waits, "unavailableWaits",
                                                 (json_int_t)s.unavailable_waits));
        }
        *status = 200;
        json_t *out = json_pack("{s:s,s:o}", "service", w->def->name, "consumers", arr);
        if (w->def->stats) {
            json_t *extra = w->def->stats(w->svc);
            if (extra)
                json_object_update(out, extra);
            json_decref(extra);
        }
        return out;
    }
    return w->def->route(w->svc, req, status);
}

int shop_cat_main(int argc, char **argv); /* cat.c */

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "cat") == 0)
        return shop_cat_main(argc, argv);
    if (argc < 2 || argv[1][0] == '-') {
        usage(argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        return argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2;
    }
    const shop_service_def_t *def = NULL;
    for (size_t i = 0; i < N_SERVICES; i++)
        if (strcmp(services[i]->name, argv[1]) == 0)
            def = services[i];
    if (!def) {
        fprintf(stderr, "outboxd-shop: unknown service \"%s\"\n", argv[1]);
        usage(stderr);
        return 2;
    }
    static shop_svc_t svc;
    svc.conf = (outboxd_shop_conf_t){
        .service = def->name,
        .topic_prefix = "",
        .group_prefix = "shop.",
        .rate_per_s = 0,
        .max_in_flight = 100,
        .retries = 3,
        .retry_backoff_ms = 200,
        .topic_partitions = 3,
    };
    svc.saga_timeout_ms = 10000;
    svc.redis_host = "127.0.0.1";
    svc.redis_port = 6379;
    svc.popular_days = 3;
    int http_port = 0;
    static char redis_host[256];
    static const struct option opts[] = {
        {"db", required_argument, 0, 'd'},
        {"kafka", required_argument, 0, 'k'},
        {"http", required_argument, 0, 'H'},
        {"topic-prefix", required_argument, 0, 't'},
        {"group-prefix", required_argument, 0, 'g'},
        {"rate", required_argument, 0, 'r'},
        {"max-in-flight", required_argument, 0, 'f'},
        {"retries", required_argument, 0, 'R'},
        {"retry-backoff-ms", required_argument, 0, 'b'},
        {"saga-timeout-ms", required_argument, 0, 'T'},
        {"redis", required_argument, 0, 'x'},
        {"admin-token", required_argument, 0, 'a'},
        {"popular-days", required_argument, 0, 'p'},
        {"log-level", required_argument, 0, 'l'},
        {"registry", required_argument, 0, 'S'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    optind = 2;
    int ch;
    while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'd':
            svc.conf.dsn = optarg;
            break;
        case 'k':
            svc.conf.bootstrap = optarg;
            break;
        case 'H':
            http_port = atoi(optarg);
            break;
        case 't':
            svc.conf.topic_prefix = optarg;
            break;
        case 'g':
            svc.conf.group_prefix = optarg;
            break;
        case 'r':
            svc.conf.rate_per_s = atof(optarg);
            break;
        case 'f':
            svc.conf.max_in_flight = atoi(optarg);
            break;
        case 'R':
            svc.conf.retries = atoi(optarg);
            break;
        case 'b':
            svc.conf.retry_backoff_ms = atoi(optarg);
            break;
        case 'T':
            svc.saga_timeout_ms = atoi(optarg);
            break;
        case 'x': {
            snprintf(redis_host, sizeof(redis_host), "%s", optarg);
            char *colon = strrchr(redis_host, ':');
            if (!colon) {
                fprintf(stderr, "outboxd-shop: --redis wants HOST:PORT, got \"%s\"\n", optarg);
                return 2;
            }
            *colon = '\0';
            svc.redis_host = redis_host;
            svc.redis_port = atoi(colon + 1);
            break;
        }
        case 'a':
            svc.admin_token = optarg;
            break;
        case 'p':
            svc.popular_days = atoi(optarg);
            break;
        case 'l': {
            outboxd_log_level_t lvl;
            if (!outboxd_log_level_parse(optarg, &lvl)) {
                fprintf(stderr, "outboxd-shop: --log-level: unknown level \"%s\"\n", optarg);
                return 2;
            }
            outboxd_log_set_level(lvl);
            break;
        }
        case 'S':
            svc.conf.registry_url = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!svc.conf.dsn || !svc.conf.bootstrap || http_port <= 0 || http_port > 65535) {
        fprintf(stderr, "outboxd-shop %s: --db, --kafka and --http (1..65535) are required\n",
                def->name);
        return 2;
    }
    if (svc.conf.retries < 0 || svc.conf.max_in_flight < 1 || svc.conf.rate_per_s < 0 ||
        svc.saga_timeout_ms < 100) {
        fprintf(stderr,
                "outboxd-shop %s: --retries >= 0, --max-in-flight >= 1, --rate >= 0 and "
                "--saga-timeout-ms >= 100 are required\n",
                def->name);
        return 2;
    }

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char errstr[1024];
    int rc = 1;
    wrap_t w = {.def = def, .svc = &svc};
    outboxd_shop_http_t *http = NULL;
    PGconn *conn = outboxd_shop_connect(svc.conf.dsn, errstr, sizeof(errstr));
    if (!conn) {
        LOG_ERROR(def->name,
                  "%s (is PostgreSQL up and the database created? deploy/shop/shop.sh creates one "
                  "per service)",
                  errstr);
        return 1;
    }
    if (outboxd_shop_schema_ensure(conn, errstr, sizeof(errstr)) < 0 ||
        outboxd_shop_exec(conn, def->schema_sql, errstr, sizeof(errstr)) < 0) {
        LOG_ERROR(def->name, "creating the schema: %s", errstr);
        PQfinish(conn);
        return 1;
    }
    PQfinish(conn);
    svc.pool = outboxd_shop_pool_new(svc.conf.dsn);
    w.consumers = calloc(def->n_consumers ? def->n_consumers : 1, sizeof(*w.consumers));
    if (!svc.pool || !w.consumers) {
        LOG_ERROR(def->name, "out of memory");
        goto out;
    }
    if (def->start && def->start(&svc, errstr, sizeof(errstr)) < 0) {
        LOG_ERROR(def->name, "%s", errstr);
        goto out;
    }
    for (size_t i = 0; i < def->n_consumers; i++) {
        const shop_consumer_def_t *cd = &def->consumers[i];
        size_t nt = 0;
        while (nt < 6 && cd->topics[nt])
            nt++;
        outboxd_shop_consumer_t *c = outboxd_shop_consumer_new(
            &svc.conf, cd->name, cd->topics, nt, cd->fn, &svc, errstr, sizeof(errstr));
        if (!c) {
            LOG_ERROR(def->name, "consumer %s: %s", cd->name, errstr);
            goto out;
        }
        w.consumers[w.n++] = c;
        if (outboxd_shop_consumer_start(c, errstr, sizeof(errstr)) < 0) {
            LOG_ERROR(def->name, "consumer %s: %s", cd->name, errstr);
            goto out;
        }
    }
    http = outboxd_shop_http_new(http_port, route, &w, errstr, sizeof(errstr));
    if (!http) {
        LOG_ERROR(def->name, "%s", errstr);
        goto out;
    }
    LOG_INFO(def->name,
             "ready: http 127.0.0.1:%d, %zu consumer(s), topic prefix \"%s\", registry %s",
             http_port, w.n, svc.conf.topic_prefix,
             svc.conf.registry_url ? svc.conf.registry_url : "none (single-object Avro only)");
    while (!got_signal) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 100000000};
        nanosleep(&ts, NULL);
    }
    LOG_INFO(def->name, "signal %d: stopping", (int)got_signal);
    rc = 0;
out:
    atomic_store(&svc.stop, 1);
    outboxd_shop_http_destroy(http);
    for (size_t i = 0; i < w.n; i++)
        outboxd_shop_consumer_destroy(w.consumers[i]);
    if (def->stop)
        def->stop(&svc);
    free(w.consumers);
    outboxd_shop_pool_destroy(svc.pool);
    return rc;
}

/*
 * `outboxd status` (status.h). Three read-only looks per source: SQL on the
 * database (pg_replication_slots), a read_committed pass over the checkpoint
 * topic, and a GET of the running relay's /metrics.
 */
#include "outboxd/relay/status.h"

#include <librdkafka/rdkafka.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "outboxd/common/http.h"
#include "outboxd/common/util.h"
#include "outboxd/relay/checkpoint.h"
#include "outboxd/relay/connhint.h"
#include "outboxd/relay/pgconn.h"
#include "outboxd/relay/sink.h"
#include "outboxd/relay/stats.h"

#define KAFKA_TIMEOUT_MS 20000

typedef struct found_ck {
    bool found;
    outboxd_checkpoint_t ck;
    int64_t timestamp_ms; /* Kafka record timestamp: when the relay committed it */
} found_ck_t;

/* Keeps the first TLS or SASL failure, told as cause and fix (connhint.h):
 * a timeout alone would not say why the broker did not answer. */
static void status_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    char *hint = opaque;
    (void)rk;
    (void)err;
    if (!hint[0])
        outboxd_connhint_kafka(reason, hint, 512);
}

/*
 * Reads the whole checkpoint topic with read_committed up to its end and keeps
 * the last record of each source. A transaction of the relay open right now
 * holds the end back until it commits, which is what read_committed means:
 * only committed checkpoints are reported.
 */
static int read_checkpoints(const outboxd_config_t *conf, found_ck_t *found, char *errstr,
                            size_t errstr_size)
{
    char e[512];
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    outboxd_sink_conf_defaults(kc);
    const char *fixed[][2] = {{"bootstrap.servers", conf->bootstrap_servers},
                              {"group.id", "outboxd-status"},
                              {"isolation.level", "read_committed"},
                              {"enable.partition.eof", "true"},
                              {"enable.auto.commit", "false"},
                              {"log_level", "3"}};
    /* User properties first (security settings matter here too); producer
     * settings a consumer does not know are refused by librdkafka and
     * skipped. */
    for (size_t i = 0; i < conf->n_kafka_properties; i++)
        (void)rd_kafka_conf_set(kc, conf->kafka_properties[i].key, conf->kafka_properties[i].value,
                                e, sizeof(e));
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (rd_kafka_conf_set(kc, fixed[i][0], fixed[i][1], e, sizeof(e)) != RD_KAFKA_CONF_OK) {
            snprintf(errstr, errstr_size, "kafka: %.400s", e);
            rd_kafka_conf_destroy(kc);
            return -1;
        }
    }
    char hint[512] = "";
    rd_kafka_conf_set_error_cb(kc, status_error_cb);
    rd_kafka_conf_set_opaque(kc, hint);
    rd_kafka_t *c = rd_kafka_new(RD_KAFKA_CONSUMER, kc, e, sizeof(e));
    if (!c) {
        snprintf(errstr, errstr_size, "kafka: %.400s", e);
        rd_kafka_conf_destroy(kc);
        return -1;
    }
    int rc = -1;
    rd_kafka_topic_t *t = rd_kafka_topic_new(c, conf->checkpoint_topic, NULL);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_topic_partition_list_t *parts = NULL;
    rd_kafka_resp_err_t err = rd_kafka_metadata(c, 0, t, &md, 10000);
    if (err) {
        rd_kafka_poll(c, 100); /* serves status_error_cb */
        if (hint[0])
            snprintf(errstr, errstr_size, "kafka: cannot connect to %s: %s",
                     conf->bootstrap_servers, hint);
        else
            snprintf(errstr, errstr_size, "kafka: cannot reach %s: %s", conf->bootstrap_servers,
                     rd_kafka_err2str(err));
        goto out;
    }
    if (md->topic_cnt != 1 || md->topics[0].err || md->topics[0].partition_cnt < 1) {
        if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) {
            rc = 0; /* no relay has run yet: no checkpoints */
            goto out;
        }
        snprintf(
            errstr, errstr_size, "kafka: checkpoint topic %s: %s", conf->checkpoint_topic,
            rd_kafka_err2str(md->topic_cnt ? md->topics[0].err : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
        goto out;
    }
    int nparts = md->topics[0].partition_cnt;
    parts = rd_kafka_topic_partition_list_new(nparts);
    for (int i = 0; i < nparts; i++)
        rd_kafka_topic_partition_list_add(parts, conf->checkpoint_topic,
                                          md->topics[0].partitions[i].id)
            ->offset = RD_KAFKA_OFFSET_BEGINNING;
    if ((err = rd_kafka_assign(c, parts))) {
        snprintf(errstr, errstr_size, "kafka: assign: %s", rd_kafka_err2str(err));
        goto out;
    }
    int remaining = nparts;
    int64_t deadline = outboxd_now_ms() + KAFKA_TIMEOUT_MS;
    while (remaining > 0) {
        if (outboxd_now_ms() > deadline) {
            snprintf(errstr, errstr_size,
                     "kafka: checkpoint topic %s not read to its end within %d ms",
                     conf->checkpoint_topic, KAFKA_TIMEOUT_MS);
            goto out;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(c, 200);
        if (!m)
            continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            remaining--;
        } else if (!m->err && m->key && m->payload) {
            for (size_t i = 0; i < conf->n_sources; i++) {
                const char *name = conf->sources[i].name;
                if (m->key_len != strlen(name) || memcmp(m->key, name, m->key_len) != 0)
                    continue;
                char derr[256];
                outboxd_checkpoint_t ck;
                if (outboxd_checkpoint_decode(m->payload, m->len, &ck, derr, sizeof(derr)) == 0) {
                    found[i].found = true;
                    found[i].ck = ck;
                    found[i].timestamp_ms = rd_kafka_message_timestamp(m, NULL);
                }
            }
        }
        rd_kafka_message_destroy(m);
    }
    rc = 0;
out:
    if (parts)
        rd_kafka_topic_partition_list_destroy(parts);
    if (md)
        rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(t);
    rd_kafka_consumer_close(c);
    rd_kafka_destroy(c);
    return rc;
}

/* GET /metrics from the running relay. Returns 0 with the body, or -1. */
static int fetch_metrics(const char *listen, outboxd_buf_t *body, char *errstr, size_t errstr_size)
{
    char host[256];
    int port;
    if (outboxd_http_split_listen(listen, host, sizeof(host), &port, errstr, errstr_size) < 0)
        return -1;
    /* A wildcard listen address is reached over loopback. */
    if (!host[0] || strcmp(host, "0.0.0.0") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    else if (strcmp(host, "::") == 0)
        snprintf(host, sizeof(host), "::1");
    char service[16];
    snprintf(service, sizeof(service), "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, service, &hints, &res) != 0 || !res) {
        snprintf(errstr, errstr_size, "cannot resolve %s", host);
        return -1;
    }
    int fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
    struct timeval tv = {.tv_sec = 3};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    }
    if (fd < 0 || connect(fd, res->ai_addr, res->ai_addrlen) < 0) {
        snprintf(errstr, errstr_size, "no relay answers on %s", listen);
        if (fd >= 0)
            close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    char req[300];
    int n = snprintf(req, sizeof(req), "GET /metrics HTTP/1.0\r\nHost: %s\r\n\r\n", host);
    if (write(fd, req, (size_t)n) != n) {
        snprintf(errstr, errstr_size, "cannot send to %s", listen);
        close(fd);
        return -1;
    }
    outboxd_buf_t raw = {0};
    char chunk[8192];
    ssize_t r;
    while ((r = read(fd, chunk, sizeof(chunk))) > 0)
        if (!outboxd_buf_append(&raw, chunk, (size_t)r))
            break;
    close(fd);
    outboxd_buf_append(&raw, "", 1);
    const char *sep = raw.data ? strstr(raw.data, "\r\n\r\n") : NULL;
    if (!sep || strncmp(raw.data, "HTTP/1.", 7) != 0 || strncmp(raw.data + 9, "200", 3) != 0) {
        snprintf(errstr, errstr_size, "unexpected answer from %s", listen);
        outboxd_buf_free(&raw);
        return -1;
    }
    outboxd_buf_append_str(body, sep + 4);
    outboxd_buf_free(&raw);
    return 0;
}

/* The value of the sample metric{source="name"EXTRA in an exposition text,
 * where EXTRA is more labels and the closing brace (NULL: just "}"). */
static bool metric_value(const char *text, const char *metric, const char *source,
                         const char *extra, double *out)
{
    char prefix[300];
    snprintf(prefix, sizeof(prefix), "%s{source=\"%s\"%s", metric, source, extra ? extra : "}");
    size_t pl = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, prefix, pl) == 0) {
            *out = strtod(p + pl, NULL);
            return true;
        }
    }
    return false;
}

static void fmt_time(int64_t ms, char *out, size_t size)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", (tm.tm_year + 1900) % 10000,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

/* The queries are bounded like the relay's (relay.wal_receiver_timeout_ms):
 * a status probe must answer, naming the database, even when a server went
 * silent. *answered says whether the server answered (the connection can
 * then serve the next query). */
static int report_slot(PGconn *pg, const outboxd_source_conf_t *src, int timeout_ms, FILE *out,
                       bool *answered)
{
    char err[512];
    const char *params[1] = {src->slot};
    PGresult *res = outboxd_pg_query_bounded(
        pg,
        "SELECT active, coalesce(active_pid::text, ''), coalesce(confirmed_flush_lsn::text, ''), "
        "coalesce(restart_lsn::text, ''), pg_current_wal_lsn()::text, "
        "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint::text, ''), "
        "coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint::text, ''), "
        "coalesce(wal_status, ''), plugin, database "
        "FROM pg_replication_slots WHERE slot_name = $1",
        1, params, NULL, timeout_ms, NULL, err, sizeof(err));
    int problems = 0;
    *answered = res != NULL;
    if (!res) {
        fprintf(out, "  database:         query failed: %s\n", err);
        problems = 1;
    } else if (PQntuples(res) == 0) {
        fprintf(
            out,
            "  slot:             %s MISSING (run `outboxd check --create -c FILE` to create it)\n",
            src->slot);
        problems = 1;
    } else {
        bool active = PQgetvalue(res, 0, 0)[0] == 't';
        fprintf(out, "  slot:             %s (plugin %s, database %s)\n", src->slot,
                PQgetvalue(res, 0, 8), PQgetvalue(res, 0, 9));
        if (active)
            fprintf(out, "  active:           yes (walsender pid %s)\n", PQgetvalue(res, 0, 1));
        else
            fprintf(out, "  active:           no (no relay is streaming from it)\n");
        fprintf(out, "  confirmed_lsn:    %s\n", PQgetvalue(res, 0, 2));
        fprintf(out, "  server_wal_lsn:   %s\n", PQgetvalue(res, 0, 4));
        fprintf(out, "  lag_bytes:        %s\n", PQgetvalue(res, 0, 5));
        fprintf(out, "  retained_wal:     %s bytes (restart_lsn %s, wal_status %s)\n",
                PQgetvalue(res, 0, 6), PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 7));
        if (strcmp(PQgetvalue(res, 0, 7), "lost") == 0) {
            fprintf(out, "  PROBLEM: the slot lost WAL it needed (max_slot_wal_keep_size); "
                         "events were lost, re-create the slot and republish\n");
            problems = 1;
        }
    }
    PQclear(res);
    return problems;
}

/* replay_window: where the retention slot is, i.e. how far back `outboxd
 * replay` can reach. pg NULL: the database did not answer the slot query
 * (report_slot said so), and asking again would only wait as long again. */
static int report_retention(PGconn *pg, const outboxd_source_conf_t *src, int timeout_ms, FILE *out)
{
    if (!src->retention_slot) {
        fprintf(out, "  replay_window:    none (set replay_window to keep a retention slot)\n");
        return 0;
    }
    if (!pg) {
        fprintf(out,
                "  replay_window:    unknown (retention slot %s: the database did not "
                "answer, see above)\n",
                src->retention_slot);
        return 0; /* counted once, by report_slot */
    }
    char err[512];
    const char *params[2] = {src->retention_slot, src->slot};
    PGresult *res = outboxd_pg_query_bounded(
        pg,
        "SELECT coalesce(r.confirmed_flush_lsn::text, ''), "
        "coalesce(pg_wal_lsn_diff(l.confirmed_flush_lsn, r.confirmed_flush_lsn)::bigint::text, "
        "''), coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), r.restart_lsn)::bigint::text, '') "
        "FROM pg_replication_slots r LEFT JOIN pg_replication_slots l ON l.slot_name = $2 "
        "WHERE r.slot_name = $1",
        2, params, NULL, timeout_ms, NULL, err, sizeof(err));
    char win[64];
    if (src->replay_window_bytes)
        snprintf(win, sizeof(win), "%llu bytes", (unsigned long long)src->replay_window_bytes);
    else
        snprintf(win, sizeof(win), "%.0f s", (double)src->replay_window_ms / 1000.0);
    int problems = 0;
    if (!res) {
        fprintf(out, "  replay_window:    query failed: %s\n", err);
        problems = 1;
    } else if (PQntuples(res) == 0) {
        fprintf(out,
                "  replay_window:    %s, but retention slot %s is MISSING (run `outboxd check "
                "--create -c FILE` to create it)\n",
                win, src->retention_slot);
        problems = 1;
    } else {
        fprintf(out,
                "  replay_window:    %s; retention slot %s at %s (replay can start there), %s "
                "bytes behind the live slot, retaining %s bytes of WAL\n",
                win, src->retention_slot, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
                PQgetvalue(res, 0, 2));
    }
    PQclear(res);
    return problems;
}

int outboxd_status_report(const outboxd_config_t *conf, FILE *out)
{
    int problems = 0;
    char err[512];
    found_ck_t *found = calloc(conf->n_sources ? conf->n_sources : 1, sizeof(*found));
    if (!found) {
        fprintf(out, "out of memory\n");
        return 1;
    }
    bool kafka_ok = read_checkpoints(conf, found, err, sizeof(err)) == 0;
    if (!kafka_ok) {
        fprintf(out, "%s\n", err);
        problems++;
    }
    outboxd_buf_t metrics = {0};
    bool have_metrics = false;
    char merr[512] = "metrics.listen not set";
    if (conf->metrics_listen)
        have_metrics = fetch_metrics(conf->metrics_listen, &metrics, merr, sizeof(merr)) == 0;
    outboxd_buf_append(&metrics, "", 1);
    int64_t now_ms = outboxd_wall_us() / 1000;
    for (size_t i = 0; i < conf->n_sources; i++) {
        const outboxd_source_conf_t *src = &conf->sources[i];
        fprintf(out, "source %s\n", src->name);
        /* One connection for both queries; after a silent one, none more. */
        PGconn *pg = outboxd_pg_connect(src, false, err, sizeof(err));
        bool answered = false;
        if (!pg) {
            fprintf(out, "  database:         UNREACHABLE: %s\n", err);
            problems++;
        } else {
            problems += report_slot(pg, src, conf->wal_receiver_timeout_ms, out, &answered);
        }
        problems += report_retention(answered ? pg : NULL, src, conf->wal_receiver_timeout_ms, out);
        if (pg)
            PQfinish(pg);
        if (!kafka_ok) {
            fprintf(out, "  last_checkpoint:  unknown (Kafka not readable)\n");
        } else if (!found[i].found) {
            fprintf(out, "  last_checkpoint:  none (nothing published yet)\n");
        } else {
            const outboxd_checkpoint_t *ck = &found[i].ck;
            char c[OUTBOXD_LSN_STRLEN], e[OUTBOXD_LSN_STRLEN], ts[64];
            outboxd_lsn_format(ck->commit_lsn, c);
            outboxd_lsn_format(ck->end_lsn, e);
            fmt_time(found[i].timestamp_ms, ts, sizeof(ts));
            if (ck->changes < 0)
                fprintf(out, "  last_checkpoint:  commit %s end %s, written %s (%.1f s ago)\n", c,
                        e, ts, (double)(now_ms - found[i].timestamp_ms) / 1000.0);
            else
                fprintf(out,
                        "  last_checkpoint:  commit %s first %lld changes (a large transaction "
                        "in parts), written %s (%.1f s ago)\n",
                        c, (long long)ck->changes, ts,
                        (double)(now_ms - found[i].timestamp_ms) / 1000.0);
        }
        double lag_s = 0, streaming = 0; /* streaming: a state sample's value */
        if (have_metrics &&
            metric_value(metrics.data, "outboxd_source_lag_seconds", src->name, NULL, &lag_s)) {
            const char *state = "unknown";
            for (int k = 0; k < OUTBOXD_SRC_N_STATES; k++) {
                const char *name = outboxd_source_state_name((outboxd_source_state_t)k);
                char extra[64];
                snprintf(extra, sizeof(extra), ",state=\"%s\"}", name);
                if (metric_value(metrics.data, "outboxd_source_state", src->name, extra,
                                 &streaming) &&
                    streaming == 1)
                    state = name;
            }
            fprintf(out, "  relay_state:      %s\n", state);
            fprintf(out, "  lag_seconds:      %.3f\n", lag_s);
        } else {
            fprintf(out, "  relay_state:      unknown (%s)\n",
                    have_metrics ? "source not in the relay's metrics" : merr);
            fprintf(out, "  lag_seconds:      unknown\n");
        }
    }
    outboxd_buf_free(&metrics);
    free(found);
    return problems;
}

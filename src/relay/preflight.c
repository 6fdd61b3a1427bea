/*
 * Configuration checks beyond the YAML (see preflight.h).
 */
#include "outboxd/relay/preflight.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>

#include "outboxd/relay/sink.h"

/* Each kafka.properties entry on its own, so the message can name its line. */
static int check_properties(const outboxd_config_t *conf, outboxd_buf_t *report)
{
    int problems = 0;
    rd_kafka_conf_t *kc = rd_kafka_conf_new();
    for (size_t i = 0; i < conf->n_kafka_properties; i++) {
        const outboxd_kv_t *kv = &conf->kafka_properties[i];
        char e[512];
        rd_kafka_conf_res_t res = rd_kafka_conf_set(kc, kv->key, kv->value, e, sizeof(e));
        if (res == RD_KAFKA_CONF_OK)
            continue;
        problems++;
        outboxd_buf_printf(report, "%s:%d: kafka.properties.%s: %s; %s\n", conf->path, kv->line,
                           kv->key, e,
                           res == RD_KAFKA_CONF_UNKNOWN
                               ? "remove it or correct its name (librdkafka's CONFIGURATION.md "
                                 "lists the properties)"
                               : "correct the value");
    }
    rd_kafka_conf_destroy(kc);
    return problems;
}

int outboxd_preflight_check(const outboxd_config_t *conf, outboxd_buf_t *report)
{
    int problems = 0;
    for (size_t i = 0; i < conf->n_sources; i++) {
        const outboxd_source_conf_t *src = &conf->sources[i];
        for (size_t j = 0; j < src->n_tables; j++) {
            const outboxd_table_conf_t *t = &src->tables[j];
            if (t->row_filter &&
                (t->mode != OUTBOXD_MODE_CDC || src->publication_scope != OUTBOXD_PUB_TABLES)) {
                problems++;
                outboxd_buf_printf(report,
                                   "%s:%d: sources[%zu].tables[%zu].row_filter: only for mode cdc "
                                   "tables of a source with publication_scope: tables (a "
                                   "publication WHERE applies to FOR TABLE entries)\n",
                                   conf->path, t->line, i, j);
            }
        }
    }
    int bad = check_properties(conf, report);
    problems += bad;
    if (bad == 0) {
        char e[1024];
        if (outboxd_sink_check_conf(conf, e, sizeof(e)) < 0) {
            problems++;
            outboxd_buf_printf(report, "%s: kafka.properties: %s\n", conf->path, e);
        }
    }
    return problems;
}

/*
 * Fuzz target: the configuration loader (outboxd_config_parse, libyaml and
 * the spec tables of src/relay/config.c).
 *
 * Input: YAML text. A configuration that loads must be complete (the
 * required keys set, defaults filled in, every source with a name, slot and
 * something to publish), and a router must build from each of its sources
 * (topic templates are parsed there). One that does not load must say why,
 * as "NAME:..." so the user can find the line.
 */
#include <string.h>

#include "fuzz.h"
#include "outboxd/common/log.h"
#include "outboxd/relay/config.h"
#include "outboxd/relay/router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once++)
        outboxd_log_set_level(OUTBOXD_LOG_ERROR);
    char err[1024] = "";
    outboxd_config_t *conf =
        outboxd_config_parse((const char *)data, size, "fuzz.yaml", err, sizeof(err));
    if (!conf) {
        FUZZ_CHECK(strncmp(err, "fuzz.yaml", 9) == 0 && strlen(err) > 10);
        return 0;
    }
    FUZZ_CHECK(conf->bootstrap_servers && conf->transactional_id_prefix);
    FUZZ_CHECK(conf->checkpoint_topic && conf->dead_letter_topic && conf->log_level);
    FUZZ_CHECK(conf->n_sources > 0 && conf->sources);
    FUZZ_CHECK(conf->max_batch_events > 0 && conf->commit_interval_ms >= 0);
    for (size_t i = 0; i < conf->n_kafka_properties; i++)
        FUZZ_CHECK(conf->kafka_properties[i].key && conf->kafka_properties[i].value);
    for (size_t i = 0; i < conf->n_sources; i++) {
        const outboxd_source_conf_t *s = &conf->sources[i];
        FUZZ_CHECK(s->name && s->name[0] && s->dsn && s->slot && s->publication);
        FUZZ_CHECK(s->n_tables + s->n_messages > 0);
        for (size_t t = 0; t < s->n_tables; t++) {
            const outboxd_table_conf_t *tc = &s->tables[t];
            FUZZ_CHECK(tc->schema && tc->name && tc->key_column);
            /* A cdc table's topic may be left out: <topic_prefix>.<schema>.<table>. */
            FUZZ_CHECK(tc->topic || tc->mode == OUTBOXD_MODE_CDC);
            /* A debezium table's columns are the EventRouter's: it has no
             * type column, and its route and key fields are its own. */
            if (tc->n_debezium)
                FUZZ_CHECK(tc->columns.id && tc->columns.payload);
            else
                FUZZ_CHECK(tc->columns.id && tc->columns.aggregatetype && tc->columns.aggregateid &&
                           tc->columns.type && tc->columns.payload);
            for (size_t h = 0; h < tc->n_header_columns; h++)
                FUZZ_CHECK(tc->header_columns[h]);
        }
        for (size_t m = 0; m < s->n_messages; m++)
            FUZZ_CHECK(s->messages[m].prefix && s->messages[m].topic);
        outboxd_router_t *rt = outboxd_router_new(conf, s, "fuzzdb", err, sizeof(err));
        FUZZ_CHECK(rt || err[0]);
        outboxd_router_destroy(rt);
    }
    outboxd_config_destroy(conf);
    return 0;
}

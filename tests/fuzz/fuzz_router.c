/*
 * Fuzz target: the logical-message path of the router (outboxd_router_route
 * with a MESSAGE): JSON parsing with jansson, field extraction, the topic
 * template, timestamps, Avro encoding, the size check and dead-lettering.
 *
 * Input: byte 0 chooses the message (bit 0: transactional when clear, so
 * most inputs take the interesting path; bits 1-2: which configured prefix,
 * or one that is not configured); the rest is the message content, normally
 * a JSON object {"id", "aggregatetype", "aggregateid", "type", "payload",
 * optional "timestamp", and "region" for one template}.
 *
 * Checked: an event goes to a valid topic that is neither the checkpoint nor
 * the dead-letter topic, and its value decodes as the Avro envelope; a
 * dead-letter record goes to the dead-letter topic with a reason; no record
 * is larger than max_event_bytes allows (for a dead-letter record: its value).
 */
#include <string.h>

#include "fuzz.h"
#include "outboxd/common/avro.h"
#include "outboxd/common/log.h"
#include "outboxd/relay/config.h"
#include "outboxd/relay/router.h"

static const char CONFIG[] = "kafka:\n"
                             "  bootstrap_servers: 127.0.0.1:9\n"
                             "relay:\n"
                             "  max_event_bytes: 4096\n"
                             "sources:\n"
                             "  - name: fuzz\n"
                             "    dsn: \"dbname=fuzz\"\n"
                             "    messages:\n"
                             "      - prefix: outbox\n"
                             "      - prefix: regional\n"
                             "        topic: \"events.${region}.${aggregatetype}\"\n"
                             "      - prefix: fixed\n"
                             "        topic: \"fixed.topic\"\n";
static const char *PREFIXES[] = {"outbox", "regional", "fixed", "not-configured"};

static outboxd_config_t *conf;
static outboxd_router_t *rt;
static outboxd_avro_t *av;

/* At exit, so LeakSanitizer's final check sees only real leaks (some of
 * avro-c's schema allocations are not reachable from these pointers). */
static void fini(void)
{
    outboxd_router_destroy(rt);
    outboxd_avro_destroy(av);
    outboxd_config_destroy(conf);
}

static void init(void)
{
    char err[512];
    outboxd_log_set_level(OUTBOXD_LOG_ERROR);
    conf = outboxd_config_parse(CONFIG, sizeof(CONFIG) - 1, "fuzz.yaml", err, sizeof(err));
    if (!conf) {
        fprintf(stderr, "fuzz_router: config: %s\n", err);
        abort();
    }
    rt = outboxd_router_new(conf, &conf->sources[0], "fuzzdb", err, sizeof(err));
    av = outboxd_avro_new(err, sizeof(err));
    if (!rt || !av) {
        fprintf(stderr, "fuzz_router: %s\n", err);
        abort();
    }
    atexit(fini);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!rt)
        init();
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    /* The content in an allocation of its own exact size, so ASan sees a
     * read past its end (it is not NUL-terminated on the wire either). */
    size_t n = size - 1;
    char *content = malloc(n ? n : 1);
    FUZZ_CHECK(content);
    memcpy(content, data + 1, n);

    outboxd_pgo_msg_t msg;
    memset(&msg, 0, sizeof(msg));
    msg.kind = OUTBOXD_PGO_MESSAGE;
    msg.u.message.transactional = (sel & 1) == 0;
    msg.u.message.lsn = 0x16B3748;
    msg.u.message.prefix = PREFIXES[(sel >> 1) & 3];
    msg.u.message.content = content;
    msg.u.message.content_len = (uint32_t)n;
    outboxd_change_ctx_t ctx = {.lsn = 0x16B3748,
                                .commit_lsn = 0x16B3800,
                                .xid = 740,
                                .commit_time_us = 1795000000000000,
                                .change_index = 0};
    outboxd_record_t rec;
    char err[1024] = "";
    int r = outboxd_router_route(rt, &msg, &ctx, &rec, err, sizeof(err));
    FUZZ_CHECK(r == -1 || r == OUTBOXD_ROUTE_IGNORE || r == OUTBOXD_ROUTE_EVENT ||
               r == OUTBOXD_ROUTE_DEAD_LETTER);
    if (r == -1)
        FUZZ_CHECK(err[0] != '\0');
    if (r == OUTBOXD_ROUTE_IGNORE)
        FUZZ_CHECK(!msg.u.message.transactional || ((sel >> 1) & 3) == 3);
    if (r == OUTBOXD_ROUTE_EVENT || r == OUTBOXD_ROUTE_DEAD_LETTER) {
        FUZZ_CHECK(rec.topic && rec.topic[0] && strlen(rec.topic) <= 249);
        FUZZ_CHECK(rec.value || rec.value_len == 0);
        FUZZ_CHECK(rec.n_headers <= OUTBOXD_MAX_HEADERS);
        size_t total = rec.key_len + rec.value_len;
        for (size_t i = 0; i < rec.n_headers; i++) {
            FUZZ_CHECK(rec.headers[i].name && rec.headers[i].name[0]);
            FUZZ_CHECK(rec.headers[i].value || rec.headers[i].len == 0);
            total += strlen(rec.headers[i].name) + rec.headers[i].len;
        }
        /* The whole record only for events: a dead-letter record's headers
         * are not counted yet (issue 5, 1.5, being fixed elsewhere); its
         * value is truncated to the limit. */
        if (r == OUTBOXD_ROUTE_EVENT)
            FUZZ_CHECK(total <= conf->max_event_bytes);
        else
            FUZZ_CHECK(rec.value_len <= conf->max_event_bytes);
    }
    if (r == OUTBOXD_ROUTE_EVENT) {
        FUZZ_CHECK(strcmp(rec.topic, conf->checkpoint_topic) != 0);
        FUZZ_CHECK(strcmp(rec.topic, conf->dead_letter_topic) != 0);
        for (const char *p = rec.topic; *p; p++)
            FUZZ_CHECK((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                       (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-');
        char derr[512];
        char *json = outboxd_avro_decode_to_json(av, rec.value, rec.value_len, derr, sizeof(derr));
        if (!json) {
            fprintf(stderr, "fuzz_router: event value does not decode: %s\n", derr);
            abort();
        }
        free(json);
    }
    if (r == OUTBOXD_ROUTE_DEAD_LETTER) {
        FUZZ_CHECK(strcmp(rec.topic, conf->dead_letter_topic) == 0);
        FUZZ_CHECK(err[0] != '\0');
    }
    free(content);
    return 0;
}

/*
 * Configuration loader: a full config, defaults, the shipped example, the
 * corpus of bad configs in tests/data/config/bad, environment expansion and
 * password files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "outboxd/relay/config.h"

#define BAD_DIR       TEST_DATA_DIR "/config/bad"
#define TEST_DATA_DIR OUTBOXD_TEST_DATA_DIR

static char errbuf[1024];

static outboxd_config_t *parse(const char *text)
{
    errbuf[0] = '\0';
    return outboxd_config_parse(text, strlen(text), "test.yaml", errbuf, sizeof(errbuf));
}

/* Parses text that must fail and checks the message contains expect. */
static void parse_fails(const char *text, const char *expect)
{
    outboxd_config_t *conf = parse(text);
    if (conf) {
        outboxd_config_destroy(conf);
        fail_msg("parsed, expected error containing \"%s\"", expect);
    }
    if (!strstr(errbuf, expect))
        fail_msg("error \"%s\" does not contain \"%s\"", errbuf, expect);
    assert_null(strchr(errbuf, '\n'));
}

static const char *FULL = "kafka:\n"
                          "  bootstrap_servers: k1:9092,k2:9092\n"
                          "  transactional_id_prefix: relay\n"
                          "  properties: { compression.type: lz4, linger.ms: 5 }\n"
                          "schema_registry: { url: http://127.0.0.1:8081 }\n"
                          "relay:\n"
                          "  commit_interval_ms: 50\n"
                          "  max_batch_events: 100\n"
                          "  max_event_bytes: 2048\n"
                          "  checkpoint_topic: cp\n"
                          "  dead_letter_topic: dlt\n"
                          "  status_interval_ms: 500\n"
                          "  reconnect_max_backoff_ms: 1000\n"
                          "  log_level: debug\n"
                          "metrics: { listen: 127.0.0.1:9187 }\n"
                          "sources:\n"
                          "  - name: payment\n"
                          "    dsn: \"host=127.0.0.1 port=5432 dbname=payment user=outboxd\"\n"
                          "    slot: slot_pay\n"
                          "    publication: pub_pay\n"
                          "    create_slot: false\n"
                          "    create_publication: false\n"
                          "    tables:\n"
                          "      - table: public.outbox\n"
                          "        mode: outbox\n"
                          "        topic: \"events.${aggregatetype}.${type}\"\n"
                          "        key: aggregateid\n"
                          "        columns: { id: eid, aggregatetype: at, aggregateid: aid, type: "
                          "t, payload: p, timestamp: created_at }\n"
                          "        headers: [tenant, trace_id]\n"
                          "        on_update: dead_letter\n"
                          "      - table: audit\n"
                          "        mode: cdc\n"
                          "        topic: payment.public.audit\n"
                          "        on_update: publish\n"
                          "    messages:\n"
                          "      - prefix: outbox\n"
                          "        topic: \"msg.${aggregatetype}\"\n"
                          "  - name: Order-Service\n"
                          "    dsn: postgresql://outboxd@127.0.0.1/order\n"
                          "    messages:\n"
                          "      - prefix: ev\n";

static void test_full(void **state)
{
    (void)state;
    outboxd_config_t *c = parse(FULL);
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->path, "test.yaml");
    assert_string_equal(c->bootstrap_servers, "k1:9092,k2:9092");
    assert_string_equal(c->transactional_id_prefix, "relay");
    assert_int_equal(c->n_kafka_properties, 2);
    assert_string_equal(c->kafka_properties[0].key, "compression.type");
    assert_string_equal(c->kafka_properties[0].value, "lz4");
    assert_string_equal(c->kafka_properties[1].key, "linger.ms");
    assert_string_equal(c->kafka_properties[1].value, "5");
    assert_string_equal(c->schema_registry_url, "http://127.0.0.1:8081");
    assert_int_equal(c->commit_interval_ms, 50);
    assert_int_equal(c->max_batch_events, 100);
    assert_int_equal(c->max_event_bytes, 2048);
    assert_string_equal(c->checkpoint_topic, "cp");
    assert_string_equal(c->dead_letter_topic, "dlt");
    assert_int_equal(c->status_interval_ms, 500);
    assert_int_equal(c->reconnect_max_backoff_ms, 1000);
    assert_string_equal(c->log_level, "debug");
    assert_string_equal(c->metrics_listen, "127.0.0.1:9187");
    assert_int_equal(c->n_sources, 2);

    const outboxd_source_conf_t *s = &c->sources[0];
    assert_string_equal(s->name, "payment");
    assert_string_equal(s->dsn, "host=127.0.0.1 port=5432 dbname=payment user=outboxd");
    assert_null(s->password_file);
    assert_null(s->password);
    assert_string_equal(s->slot, "slot_pay");
    assert_string_equal(s->publication, "pub_pay");
    assert_false(s->create_slot);
    assert_false(s->create_publication);
    assert_int_equal(s->line, 17);
    assert_int_equal(s->n_tables, 2);
    const outboxd_table_conf_t *t = &s->tables[0];
    assert_string_equal(t->schema, "public");
    assert_string_equal(t->name, "outbox");
    assert_int_equal(t->mode, OUTBOXD_MODE_OUTBOX);
    assert_string_equal(t->topic, "events.${aggregatetype}.${type}");
    assert_string_equal(t->key_column, "aggregateid");
    assert_string_equal(t->columns.id, "eid");
    assert_string_equal(t->columns.aggregatetype, "at");
    assert_string_equal(t->columns.aggregateid, "aid");
    assert_string_equal(t->columns.type, "t");
    assert_string_equal(t->columns.payload, "p");
    assert_string_equal(t->columns.timestamp, "created_at");
    assert_int_equal(t->n_header_columns, 2);
    assert_string_equal(t->header_columns[0], "tenant");
    assert_string_equal(t->header_columns[1], "trace_id");
    assert_int_equal(t->on_update, OUTBOXD_UPDATE_DEAD_LETTER);
    assert_int_equal(t->line, 24);
    t = &s->tables[1];
    assert_string_equal(t->schema, "public");
    assert_string_equal(t->name, "audit");
    assert_int_equal(t->mode, OUTBOXD_MODE_CDC);
    assert_string_equal(t->topic, "payment.public.audit");
    assert_string_equal(t->key_column, "aggregateid");
    assert_int_equal(t->on_update, OUTBOXD_UPDATE_PUBLISH);
    assert_int_equal(s->n_messages, 1);
    assert_string_equal(s->messages[0].prefix, "outbox");
    assert_string_equal(s->messages[0].topic, "msg.${aggregatetype}");
    assert_int_equal(s->messages[0].line, 36);

    s = &c->sources[1];
    assert_string_equal(s->name, "Order-Service");
    /* Default slot and publication use slot spelling of the name. */
    assert_string_equal(s->slot, "outboxd_order_service");
    assert_string_equal(s->publication, "outboxd_order_service");
    assert_true(s->create_slot);
    assert_true(s->create_publication);
    assert_int_equal(s->n_tables, 0);
    assert_null(s->tables);
    assert_int_equal(s->n_messages, 1);
    assert_string_equal(s->messages[0].topic, "outbox.event.${aggregatetype}");
    outboxd_config_destroy(c);
}

static void test_minimal_defaults(void **state)
{
    (void)state;
    outboxd_config_t *c = parse("kafka: { bootstrap_servers: 127.0.0.1:9092 }\n"
                                "sources:\n"
                                "  - name: payment\n"
                                "    dsn: dbname=payment\n"
                                "    tables: [ { table: outbox } ]\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->transactional_id_prefix, "outboxd");
    assert_int_equal(c->n_kafka_properties, 0);
    assert_null(c->kafka_properties);
    assert_null(c->schema_registry_url);
    assert_int_equal(c->commit_interval_ms, 20);
    assert_int_equal(c->max_batch_events, 5000);
    assert_int_equal(c->max_event_bytes, 1000000);
    assert_string_equal(c->checkpoint_topic, "outboxd.checkpoints");
    assert_string_equal(c->dead_letter_topic, "outboxd.dlt");
    assert_int_equal(c->status_interval_ms, 10000);
    assert_int_equal(c->reconnect_max_backoff_ms, 30000);
    assert_string_equal(c->log_level, "info");
    assert_null(c->metrics_listen);
    assert_int_equal(c->n_sources, 1);
    const outboxd_source_conf_t *s = &c->sources[0];
    assert_null(s->password_file);
    assert_null(s->password);
    assert_string_equal(s->slot, "outboxd_payment");
    assert_string_equal(s->publication, "outboxd_payment");
    assert_true(s->create_slot);
    assert_true(s->create_publication);
    assert_int_equal(s->n_messages, 0);
    assert_null(s->messages);
    assert_int_equal(s->n_tables, 1);
    const outboxd_table_conf_t *t = &s->tables[0];
    assert_string_equal(t->schema, "public");
    assert_string_equal(t->name, "outbox");
    assert_int_equal(t->mode, OUTBOXD_MODE_OUTBOX);
    assert_string_equal(t->topic, "outbox.event.${aggregatetype}");
    assert_string_equal(t->key_column, "aggregateid");
    assert_string_equal(t->columns.id, "id");
    assert_string_equal(t->columns.aggregatetype, "aggregatetype");
    assert_string_equal(t->columns.aggregateid, "aggregateid");
    assert_string_equal(t->columns.type, "type");
    assert_string_equal(t->columns.payload, "payload");
    assert_null(t->columns.timestamp);
    assert_int_equal(t->n_header_columns, 0);
    assert_null(t->header_columns);
    assert_int_equal(t->on_update, OUTBOXD_UPDATE_SKIP);
    outboxd_config_destroy(c);
}

/* key defaults to the configured aggregateid column, not the literal name. */
static void test_key_follows_aggregateid(void **state)
{
    (void)state;
    outboxd_config_t *c = parse("kafka: { bootstrap_servers: b:1 }\n"
                                "relay:\n"
                                "sources:\n"
                                "  - name: p\n"
                                "    dsn: dbname=p\n"
                                "    tables:\n"
                                "      - table: s.t\n"
                                "        columns: { aggregateid: agg_id }\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->sources[0].tables[0].schema, "s");
    assert_string_equal(c->sources[0].tables[0].name, "t");
    assert_string_equal(c->sources[0].tables[0].key_column, "agg_id");
    assert_string_equal(c->sources[0].tables[0].columns.id, "id");
    /* An empty relay: section still gets the defaults. */
    assert_int_equal(c->commit_interval_ms, 20);
    outboxd_config_destroy(c);
}

static void test_example(void **state)
{
    (void)state;
    /* The example's defaults apply when the variables are unset. */
    unsetenv("KAFKA_BOOTSTRAP");
    unsetenv("PGHOST");
    unsetenv("PGPORT");
    unsetenv("PGUSER");
    outboxd_config_t *c = outboxd_config_load(OUTBOXD_SOURCE_DIR "/config/outboxd.example.yaml",
                                              errbuf, sizeof(errbuf));
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->bootstrap_servers, "127.0.0.1:9092");
    assert_int_equal(c->n_sources, 3);
    const char *names[] = {"payment", "order", "member"};
    for (size_t i = 0; i < 3; i++) {
        const outboxd_source_conf_t *s = &c->sources[i];
        char dsn[256];
        snprintf(dsn, sizeof(dsn), "host=127.0.0.1 port=5432 dbname=%s user=postgres", names[i]);
        assert_string_equal(s->name, names[i]);
        assert_string_equal(s->dsn, dsn);
        assert_int_equal(s->n_tables, 1);
        assert_string_equal(s->tables[0].schema, "public");
        assert_string_equal(s->tables[0].name, "outbox");
        assert_string_equal(s->tables[0].topic, "outbox.event.${aggregatetype}");
        assert_int_equal(s->n_messages, i == 0 ? 1 : 0);
    }
    assert_string_equal(c->sources[0].messages[0].prefix, "outbox");
    assert_string_equal(c->sources[1].slot, "outboxd_order");
    outboxd_config_destroy(c);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Each file's first line is "# expect: <substring of the error>". */
static void test_bad_corpus(void **state)
{
    (void)state;
    unsetenv("OUTBOXD_TEST_UNSET_VAR");
    DIR *d = opendir(BAD_DIR);
    assert_non_null(d);
    char *names[256];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 256) {
        size_t len = strlen(e->d_name);
        if (len > 5 && strcmp(e->d_name + len - 5, ".yaml") == 0)
            names[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), name_cmp);
    assert_true(n >= 20);

    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", BAD_DIR, names[i]);
        FILE *f = fopen(path, "r");
        assert_non_null(f);
        char first[512] = "";
        if (!fgets(first, sizeof(first), f))
            first[0] = '\0';
        fclose(f);
        first[strcspn(first, "\n")] = '\0';
        const char *tag = "# expect: ";
        const char *expect = strncmp(first, tag, strlen(tag)) == 0 ? first + strlen(tag) : NULL;

        errbuf[0] = '\0';
        outboxd_config_t *c = outboxd_config_load(path, errbuf, sizeof(errbuf));
        const char *why = NULL;
        if (!expect)
            why = "no '# expect: ' first line";
        else if (c)
            why = "loaded without error";
        else if (!strstr(errbuf, names[i]))
            why = "error does not name the file";
        else if (!strstr(errbuf, expect))
            why = "error does not contain the expected text";
        else if (strchr(errbuf, '\n'))
            why = "error is more than one line";
        else if (!strstr(expect, ": ") || expect[0] != ':')
            why = "expectation lacks :LINE: and a key path";
        if (why) {
            print_error("%s: %s\n  expected: %s\n  got:      %s\n", names[i], why,
                        expect ? expect : "?", errbuf);
            failures++;
        }
        outboxd_config_destroy(c);
        free(names[i]);
    }
    print_message("%zu bad configs checked\n", n);
    assert_int_equal(failures, 0);
}

static void test_env_expansion(void **state)
{
    (void)state;
    setenv("OUTBOXD_T_HOST", "db.example", 1);
    setenv("OUTBOXD_T_EMPTY", "", 1);
    unsetenv("OUTBOXD_T_UNSET");
    setenv("aggregatetype", "SHOULD_NOT_APPEAR", 1);
    outboxd_config_t *c =
        parse("kafka:\n"
              "  bootstrap_servers: ${OUTBOXD_T_UNSET:-k:9092}\n"
              "  transactional_id_prefix: a$$b$c${OUTBOXD_T_EMPTY}\n"
              "  properties: { sasl.username: \"${OUTBOXD_T_HOST}\", client.id: "
              "\"${OUTBOXD_T_EMPTY:-x}\" "
              "}\n"
              "sources:\n"
              "  - name: p\n"
              "    dsn: \"host=${OUTBOXD_T_HOST} port=${OUTBOXD_T_UNSET:-5432} dbname=p\"\n"
              "    tables:\n"
              "      - table: outbox\n"
              "        topic: \"outbox.event.${aggregatetype}\"\n"
              "    messages:\n"
              "      - prefix: ${OUTBOXD_T_UNSET:-outbox}\n"
              "        topic: \"m.${aggregatetype}\"\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->bootstrap_servers, "k:9092");
    /* $$ is a literal $, a $ not followed by { or $ is kept, empty var is empty. */
    assert_string_equal(c->transactional_id_prefix, "a$b$c");
    assert_string_equal(c->kafka_properties[0].value, "db.example");
    assert_string_equal(c->kafka_properties[1].value, "x");
    assert_string_equal(c->sources[0].dsn, "host=db.example port=5432 dbname=p");
    /* Topic templates are never expanded from the environment. */
    assert_string_equal(c->sources[0].tables[0].topic, "outbox.event.${aggregatetype}");
    assert_string_equal(c->sources[0].messages[0].prefix, "outbox");
    assert_string_equal(c->sources[0].messages[0].topic, "m.${aggregatetype}");
    outboxd_config_destroy(c);

    parse_fails("kafka: { bootstrap_servers: \"${OUTBOXD_T_UNSET}\" }\n",
                "test.yaml:1: kafka.bootstrap_servers: environment variable OUTBOXD_T_UNSET is "
                "not set");
    parse_fails("kafka: { bootstrap_servers: \"${1X}\" }\n",
                "test.yaml:1: kafka.bootstrap_servers: invalid environment variable reference "
                "'${1X}'");
    /* An empty variable is no way around a required value. */
    parse_fails("kafka: { bootstrap_servers: \"${OUTBOXD_T_EMPTY}\" }\n",
                "test.yaml:1: kafka.bootstrap_servers: empty value");
    /* Integers and booleans are expanded too. */
    setenv("OUTBOXD_T_MS", "77", 1);
    c = parse("kafka: { bootstrap_servers: b:1 }\n"
              "relay: { commit_interval_ms: \"${OUTBOXD_T_MS}\" }\n"
              "sources: [ { name: p, dsn: dbname=p, create_slot: \"${OUTBOXD_T_UNSET:-false}\", "
              "messages: [ { prefix: x } ] } ]\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_int_equal(c->commit_interval_ms, 77);
    assert_false(c->sources[0].create_slot);
    outboxd_config_destroy(c);
    unsetenv("OUTBOXD_T_HOST");
    unsetenv("OUTBOXD_T_EMPTY");
    unsetenv("OUTBOXD_T_MS");
    unsetenv("aggregatetype");
}

static void test_password_file(void **state)
{
    (void)state;
    char path[] = "/tmp/outboxd-test-pw-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char secret[] = "s3cr3t with spaces\n";
    assert_int_equal(write(fd, secret, strlen(secret)), (ssize_t)strlen(secret));
    close(fd);

    char text[1024];
    snprintf(text, sizeof(text),
             "kafka: { bootstrap_servers: b:1 }\n"
             "sources:\n"
             "  - name: p\n"
             "    dsn: dbname=p\n"
             "    password_file: %s\n"
             "    tables: [ { table: outbox } ]\n",
             path);
    outboxd_config_t *c = parse(text);
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->sources[0].password_file, path);
    assert_string_equal(c->sources[0].password, "s3cr3t with spaces");
    outboxd_config_destroy(c);

    /* Only one trailing newline is stripped. */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("pw\n\n", f);
    fclose(f);
    c = parse(text);
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->sources[0].password, "pw\n");
    outboxd_config_destroy(c);

    /* An empty password file is an error. */
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("\n", f);
    fclose(f);
    parse_fails(text, "test.yaml:5: sources[0].password_file: ");
    assert_non_null(strstr(errbuf, "is empty"));

    unlink(path);
    parse_fails(text, "test.yaml:5: sources[0].password_file: cannot read ");
    assert_non_null(strstr(errbuf, "No such file or directory"));
}

/* Secret librdkafka properties: from ${ENV} or kafka.secret_properties_file,
 * never inline (the inline cases are in the bad corpus, 70-73). */
static void test_kafka_secrets(void **state)
{
    (void)state;
    setenv("OUTBOXD_TEST_SASL_PW", "from-env", 1);
    outboxd_config_t *c = parse("kafka:\n"
                                "  bootstrap_servers: b:1\n"
                                "  properties: { sasl.username: u, sasl.password: "
                                "\"${OUTBOXD_TEST_SASL_PW}\" }\n"
                                "sources: [ { name: p, dsn: dbname=p, messages: [ { prefix: o } "
                                "] } ]\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_int_equal(c->n_kafka_properties, 2);
    assert_string_equal(c->kafka_properties[1].key, "sasl.password");
    assert_string_equal(c->kafka_properties[1].value, "from-env");
    outboxd_config_destroy(c);

    char path[] = "/tmp/outboxd-test-kafka-secrets-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char body[] = "# SASL credentials\n\nsasl.password = p=w d\r\nssl.key.password=k\n";
    assert_int_equal(write(fd, body, strlen(body)), (ssize_t)strlen(body));
    close(fd);
    char text[1024];
    snprintf(text, sizeof(text),
             "kafka:\n"
             "  bootstrap_servers: b:1\n"
             "  secret_properties_file: %s\n"
             "  properties: { sasl.username: u }\n"
             "sources: [ { name: p, dsn: dbname=p, messages: [ { prefix: o } ] } ]\n",
             path);
    c = parse(text);
    if (!c)
        fail_msg("%s", errbuf);
    assert_string_equal(c->kafka_secret_properties_file, path);
    assert_int_equal(c->n_kafka_properties, 3);
    assert_string_equal(c->kafka_properties[0].key, "sasl.password");
    assert_string_equal(c->kafka_properties[0].value, "p=w d");
    assert_string_equal(c->kafka_properties[1].key, "ssl.key.password");
    assert_string_equal(c->kafka_properties[1].value, "k");
    assert_string_equal(c->kafka_properties[2].key, "sasl.username");
    outboxd_config_destroy(c);

    /* The same property in both places, a reserved one, a malformed line. */
    snprintf(text, sizeof(text),
             "kafka:\n"
             "  bootstrap_servers: b:1\n"
             "  secret_properties_file: %s\n"
             "  properties: { sasl.password: \"${OUTBOXD_TEST_SASL_PW}\" }\n"
             "sources: [ { name: p, dsn: dbname=p, messages: [ { prefix: o } ] } ]\n",
             path);
    parse_fails(text, "test.yaml:4: kafka.properties.sasl.password: duplicate key");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("transactional.id=x\n", f);
    fclose(f);
    parse_fails(text, "test.yaml:3: kafka.properties.transactional.id: set by outboxd per source");
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("# ok\nsasl.password\n", f);
    fclose(f);
    parse_fails(text, ":2: not a key=value line");
    unlink(path);
    unsetenv("OUTBOXD_TEST_SASL_PW");
}

/* relay.missing_topic, create_topic_*, allowed_topics: defaults and values. */
static void test_topic_policies(void **state)
{
    (void)state;
    /* A cdc table's topic is used as given: a template is refused. */
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "sources: [ { name: p, dsn: dbname=p, tables: [ { table: t, mode: cdc, "
                "topic: 'cdc.${id}' } ] } ]\n",
                "a cdc table's topic is one fixed name, not a template");
    outboxd_config_t *c = parse("kafka: { bootstrap_servers: b:1 }\n"
                                "sources: [ { name: p, dsn: dbname=p, tables: [ { table: t } ], "
                                "messages: [ { prefix: o } ] } ]\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_int_equal(c->missing_topic, OUTBOXD_MISSING_TOPIC_WAIT);
    assert_int_equal(c->create_topic_partitions, -1);
    assert_int_equal(c->create_topic_replication_factor, -1);
    assert_null(c->sources[0].tables[0].allowed_topics);
    assert_null(c->sources[0].messages[0].allowed_topics);
    outboxd_config_destroy(c);
    c = parse("kafka: { bootstrap_servers: b:1, transactional_id_prefix: a.b-c_d }\n"
              "relay: { missing_topic: create, create_topic_partitions: 6, "
              "create_topic_replication_factor: 3 }\n"
              "sources: [ { name: p, dsn: dbname=p, tables: [ { table: t, allowed_topics: "
              "'orders\\.(created|paid)' } ], messages: [ { prefix: o, allowed_topics: 'x.*' } "
              "] } ]\n");
    if (!c)
        fail_msg("%s", errbuf);
    assert_int_equal(c->missing_topic, OUTBOXD_MISSING_TOPIC_CREATE);
    assert_int_equal(c->create_topic_partitions, 6);
    assert_int_equal(c->create_topic_replication_factor, 3);
    assert_string_equal(c->sources[0].tables[0].allowed_topics, "orders\\.(created|paid)");
    assert_string_equal(c->sources[0].messages[0].allowed_topics, "x.*");
    outboxd_config_destroy(c);
    parse_fails("kafka: { bootstrap_servers: b:1 }\nrelay: { missing_topic: dead_letter }\n"
                "sources: [ { name: p, dsn: dbname=p, messages: [ { prefix: o, allowed_topics: "
                "'[' } ] } ]\n",
                "test.yaml:3: sources[0].messages[0].allowed_topics: invalid regular expression");
}

static void test_misc_errors(void **state)
{
    (void)state;
    /* Errors not tied to a key have no key path. */
    parse_fails("", "test.yaml:1: empty configuration");
    parse_fails("# only a comment\n", "test.yaml:1: empty configuration");
    parse_fails("- a\n- b\n", "test.yaml:1: the top level is a list");
    parse_fails("kafka: { bootstrap_servers: b:1 }\n---\nx: 1\n",
                "test.yaml:2: a second YAML document");
    /* A URI with a password is caught by libpq's parser. */
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "sources: [ { name: p, dsn: \"postgresql://u:pw@h/db\", tables: [ { table: t } "
                "] } ]\n",
                "test.yaml:2: sources[0].dsn: contains a password");
    /* A control character in a value does not break the single line. */
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "relay: { log_level: \"in\\nfo\" }\n",
                "test.yaml:2: relay.log_level: unknown log_level 'in fo'");
    /* Integers: no floats, hex or overflow. */
    parse_fails("kafka: { bootstrap_servers: b:1 }\nrelay: { commit_interval_ms: 1.5 }\n",
                "relay.commit_interval_ms: expected an integer between 1 and 60000, got '1.5'");
    parse_fails("kafka: { bootstrap_servers: b:1 }\nrelay: { max_event_bytes: "
                "99999999999999999999999 }\n",
                "relay.max_event_bytes: 99999999999999999999999 is out of range");
    /* Lists of mappings: the list, then each item. A null item is all
     * defaults (a table without its table name, here). */
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "sources: [ { name: p, dsn: dbname=p, tables: outbox } ]\n",
                "sources[0].tables: expected a list of tables, got a scalar");
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "sources: [ { name: p, dsn: dbname=p, messages: { prefix: p } } ]\n",
                "sources[0].messages: expected a list of message prefixes, got a mapping");
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "sources: [ { name: p, dsn: dbname=p, tables: [ { table: t }, public.u ] } ]\n",
                "sources[0].tables[1]: expected a mapping, got a scalar");
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "sources: [ { name: p, dsn: dbname=p, messages: [ [ p ] ] } ]\n",
                "sources[0].messages[0]: expected a mapping, got a list");
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "sources: [ { name: p, dsn: dbname=p, tables: [ ~ ] } ]\n",
                "sources[0].tables[0].table: ");
    /* Default slot names collide after spelling normalization. */
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "sources:\n"
                "  - { name: a-b, dsn: dbname=x, messages: [ { prefix: p } ] }\n"
                "  - { name: a_b, dsn: dbname=y, messages: [ { prefix: p } ] }\n",
                "test.yaml:4: sources[1].slot: duplicate slot 'outboxd_a_b'");
    /* A slot named like another source's retention or replay slot: that
     * source's keeper would advance it, a replay drop it. */
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "sources:\n"
                "  - { name: pay, dsn: dbname=x, replay_window: 1h, messages: [ { prefix: p } ] }\n"
                "  - { name: pay_keep, dsn: dbname=y, slot: outboxd_pay_keep, messages: [ { "
                "prefix: p } ] }\n",
                "test.yaml:4: sources[1].slot: slot 'outboxd_pay_keep' is the retention slot "
                "of source 'pay'");
    parse_fails(
        "kafka: { bootstrap_servers: b:1 }\n"
        "sources:\n"
        "  - { name: pay_replay, dsn: dbname=y, messages: [ { prefix: p } ] }\n"
        "  - { name: pay, dsn: dbname=x, replay_window: 1h, messages: [ { prefix: p } ] }\n",
        "test.yaml:3: sources[0].slot: slot 'outboxd_pay_replay' is the replay slot of "
        "source 'pay'");
    /* Dead letters in the compacted checkpoint topic could replace a
     * checkpoint. */
    parse_fails("kafka: { bootstrap_servers: b:1 }\n"
                "relay:\n"
                "  checkpoint_topic: same\n"
                "  dead_letter_topic: same\n"
                "sources: [ { name: p, dsn: dbname=p, messages: [ { prefix: p } ] } ]\n",
                "test.yaml:4: relay.dead_letter_topic: 'same' is also relay.checkpoint_topic");
    /* Missing file. */
    errbuf[0] = '\0';
    assert_null(outboxd_config_load("/nonexistent/outboxd.yaml", errbuf, sizeof(errbuf)));
    assert_non_null(strstr(errbuf, "/nonexistent/outboxd.yaml: cannot read: No such file"));
    outboxd_config_destroy(NULL);
}

/* Many sources without a producer pool get a note naming the setting; a
 * pool, or few sources, none. */
static void test_producers_note(void **state)
{
    (void)state;
    outboxd_buf_t y = {0};
    outboxd_buf_printf(&y, "kafka: {bootstrap_servers: \"a:9092\"}\nsources:\n");
    for (int i = 0; i < OUTBOXD_OWN_PRODUCERS_NOTE_SOURCES; i++)
        outboxd_buf_printf(&y,
                           "  - name: s%d\n    dsn: \"host=h dbname=d%d\"\n"
                           "    tables: [{table: public.outbox}]\n",
                           i, i);
    char note[512];
    outboxd_config_t *c = parse(y.data);
    assert_non_null(c);
    assert_null(outboxd_config_producers_note(c, note, sizeof(note)));
    outboxd_config_destroy(c);
    outboxd_buf_printf(&y, "  - name: last\n    dsn: \"host=h dbname=dl\"\n"
                           "    tables: [{table: public.outbox}]\n");
    c = parse(y.data);
    assert_non_null(c);
    const char *n = outboxd_config_producers_note(c, note, sizeof(note));
    assert_non_null(n);
    char want[128];
    snprintf(want, sizeof(want), "%d sources, each with its own %d Kafka producer(s)",
             OUTBOXD_OWN_PRODUCERS_NOTE_SOURCES + 1, c->producers_per_source);
    assert_non_null(strstr(n, want));
    assert_non_null(strstr(n, "relay.kafka_producers: 4"));
    outboxd_config_destroy(c);
    /* The same sources with a pool: nothing to say. */
    outboxd_buf_t z = {0};
    outboxd_buf_printf(&z, "relay: {kafka_producers: 2}\n%s", y.data);
    c = parse(z.data);
    assert_non_null(c);
    assert_null(outboxd_config_producers_note(c, note, sizeof(note)));
    outboxd_config_destroy(c);
    outboxd_buf_free(&y);
    outboxd_buf_free(&z);
}

/* Reload: keys marked restart get their running value back and are named;
 * reloadable keys keep the new value; sources are matched by name. */
static void test_pin_restart_keys(void **state)
{
    (void)state;
    static const char run_yaml[] =
        "kafka: {bootstrap_servers: \"a:9092\", transactional_id_prefix: p1}\n"
        "relay: {checkpoint_topic: ck1, commit_interval_ms: 20, log_level: info}\n"
        "sources:\n"
        "  - name: s1\n"
        "    dsn: \"host=h1 dbname=d\"\n"
        "    slot: slot1\n"
        "    tables: [{table: public.outbox, topic: \"t1.${aggregatetype}\"}]\n"
        "  - name: gone\n"
        "    dsn: \"host=h1 dbname=g\"\n"
        "    tables: [{table: public.outbox}]\n";
    static const char next_yaml[] =
        "kafka: {bootstrap_servers: \"b:9092\", transactional_id_prefix: p2}\n"
        "relay: {checkpoint_topic: ck2, commit_interval_ms: 50, log_level: debug}\n"
        "sources:\n"
        "  - name: new\n"
        "    dsn: \"host=h1 dbname=n\"\n"
        "    tables: [{table: public.outbox}]\n"
        "  - name: s1\n"
        "    dsn: \"host=h2 dbname=d\"\n"
        "    slot: slot1\n"
        "    tables: [{table: public.outbox, topic: \"t2.${aggregatetype}\"}]\n";
    outboxd_config_t *running = parse(run_yaml);
    assert_non_null(running);
    outboxd_config_t *next = parse(next_yaml);
    assert_non_null(next);
    outboxd_buf_t changed = {0};
    assert_int_equal(outboxd_config_pin_restart_keys(next, running, &changed), 0);
    assert_non_null(changed.data);
    assert_string_equal(changed.data, "kafka.transactional_id_prefix\n"
                                      "relay.checkpoint_topic\n"
                                      "sources[1].dsn\n"
                                      "sources: source gone removed\n"
                                      "sources[0]: source new added\n");
    assert_string_equal(next->transactional_id_prefix, "p1");
    assert_string_equal(next->checkpoint_topic, "ck1");
    assert_string_equal(next->sources[1].dsn, "host=h1 dbname=d");
    /* reloadable: the new values stay */
    assert_string_equal(next->bootstrap_servers, "b:9092");
    assert_int_equal(next->commit_interval_ms, 50);
    assert_string_equal(next->log_level, "debug");
    assert_string_equal(next->sources[1].tables[0].topic, "t2.${aggregatetype}");
    outboxd_buf_free(&changed);
    /* Nothing left to pin the second time. */
    assert_int_equal(outboxd_config_pin_restart_keys(next, running, &changed), 0);
    assert_string_equal(changed.data, "sources: source gone removed\n"
                                      "sources[0]: source new added\n");
    outboxd_buf_free(&changed);
    outboxd_config_destroy(next);
    outboxd_config_destroy(running);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full),
        cmocka_unit_test(test_minimal_defaults),
        cmocka_unit_test(test_key_follows_aggregateid),
        cmocka_unit_test(test_example),
        cmocka_unit_test(test_bad_corpus),
        cmocka_unit_test(test_env_expansion),
        cmocka_unit_test(test_password_file),
        cmocka_unit_test(test_misc_errors),
        cmocka_unit_test(test_kafka_secrets),
        cmocka_unit_test(test_topic_policies),
        cmocka_unit_test(test_pin_restart_keys),
        cmocka_unit_test(test_producers_note),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

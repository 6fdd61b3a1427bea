/*
 * shop_produce: writes raw values to a topic, for the shop's tests only (a
 * message outboxd would never write, to see the consumers dead-letter it).
 *
 *   shop_produce [--trace-hex HEX] BOOTSTRAP TOPIC KEY VALUE...
 *
 * A KEY of the form hex:HEX is those bytes (a foreign producer's binary
 * key); --trace-hex adds a trace_id header of those bytes.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

/* Decodes HEX into a new buffer; NULL when it is not hex. */
static unsigned char *unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex);
    unsigned char *b = malloc(n / 2 + 1);
    if (!b || n % 2)
        goto bad;
    for (size_t i = 0; i < n / 2; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            goto bad;
        b[i] = (unsigned char)v;
    }
    *len = n / 2;
    return b;
bad:
    free(b);
    return NULL;
}

int main(int argc, char **argv)
{
    unsigned char *trace = NULL;
    size_t trace_len = 0;
    if (argc > 2 && strcmp(argv[1], "--trace-hex") == 0) {
        if (!(trace = unhex(argv[2], &trace_len))) {
            fprintf(stderr, "shop_produce: --trace-hex %s is not hex\n", argv[2]);
            return 2;
        }
        argc -= 2;
        argv += 2;
    }
    if (argc < 5) {
        fprintf(stderr, "usage: shop_produce [--trace-hex HEX] BOOTSTRAP TOPIC KEY VALUE...\n");
        free(trace);
        return 2;
    }
    unsigned char *key = (unsigned char *)argv[3];
    size_t key_len = strlen(argv[3]);
    bool key_owned = strncmp(argv[3], "hex:", 4) == 0;
    if (key_owned && !(key = unhex(argv[3] + 4, &key_len))) {
        fprintf(stderr, "shop_produce: key %s is not hex\n", argv[3]);
        free(trace);
        return 2;
    }
    char err[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", argv[1], err, sizeof(err)) ||
        rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof(err))) {
        fprintf(stderr, "shop_produce: %s\n", err);
        return 2;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "shop_produce: %s\n", err);
        return 2;
    }
    int rc = 0;
    for (int i = 4; i < argc; i++) {
        /* Owned by the message once produced: a copy each time. */
        rd_kafka_headers_t *h = rd_kafka_headers_new(1);
        if (trace)
            rd_kafka_header_add(h, "trace_id", -1, trace, (ssize_t)trace_len);
        rd_kafka_resp_err_t e = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(argv[2]), RD_KAFKA_V_KEY(key, key_len),
            RD_KAFKA_V_VALUE(argv[i], strlen(argv[i])), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
        if (e) {
            rd_kafka_headers_destroy(h);
            fprintf(stderr, "shop_produce: %s\n", rd_kafka_err2str(e));
            rc = 1;
        }
    }
    if (rd_kafka_flush(rk, 30000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "shop_produce: not delivered within 30 s\n");
        rc = 1;
    }
    rd_kafka_destroy(rk);
    if (key_owned)
        free(key);
    free(trace);
    return rc;
}

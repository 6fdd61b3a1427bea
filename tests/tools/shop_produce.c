/*
 * shop_produce: writes raw values to a topic, for the shop's tests only (a
 * message outboxd would never write, to see the consumers dead-letter it).
 *
 *   shop_produce BOOTSTRAP TOPIC KEY VALUE...
 */
#include <stdio.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: shop_produce BOOTSTRAP TOPIC KEY VALUE...\n");
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
        rd_kafka_resp_err_t e = rd_kafka_producev(
            rk, RD_KAFKA_V_TOPIC(argv[2]), RD_KAFKA_V_KEY(argv[3], strlen(argv[3])),
            RD_KAFKA_V_VALUE(argv[i], strlen(argv[i])), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_END);
        if (e) {
            fprintf(stderr, "shop_produce: %s\n", rd_kafka_err2str(e));
            rc = 1;
        }
    }
    if (rd_kafka_flush(rk, 30000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
        fprintf(stderr, "shop_produce: not delivered within 30 s\n");
        rc = 1;
    }
    rd_kafka_destroy(rk);
    return rc;
}

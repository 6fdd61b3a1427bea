/*
 * platform: the external data platform of the seed's diagram, receiving
 * every completed order (complete-order).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

static const char schema[] = "CREATE TABLE IF NOT EXISTS received_orders ("
                             " payment_id text PRIMARY KEY,"
                             " order_id bigint NOT NULL,"
                             " payload jsonb NOT NULL,"
                             " received_at timestamptz NOT NULL DEFAULT clock_timestamp());";

static int on_completed(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                        size_t errstr_size)
{
    (void)opaque;
    long long order;
    const char *payment_id = shop_jstr(ev->payload, "paymentId", errstr, errstr_size);
    if (!payment_id || !shop_jint(ev->payload, "orderId", &order, errstr, errstr_size))
        return -1;
    char o[32];
    snprintf(o, sizeof(o), "%lld", order);
    char *text = json_dumps(ev->payload, JSON_COMPACT);
    const char *p[3] = {payment_id, o, text};
    /* a second complete-order for one payment would be a coordinator bug:
     * the primary key makes it fail loudly (and land on the .dlt) */
    PGresult *res = outboxd_shop_query(conn,
                                       "INSERT INTO received_orders (payment_id, order_id, "
                                       "payload) VALUES ($1, $2, $3)",
                                       3, p, errstr, errstr_size);
    free(text);
    if (!res)
        return -1;
    PQclear(res);
    return 0;
}

static const shop_consumer_def_t consumers[] = {
    {"completed", {"complete-order"}, on_completed},
};

static json_t *route(void *opaque, outboxd_shop_req_t *req, int *status)
{
    shop_svc_t *svc = opaque;
    if (strcmp(req->method, "GET") != 0 || strcmp(req->path, "/platform/orders") != 0)
        return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
    return shop_http_rows(svc,
                          "SELECT payment_id AS \"paymentId\", order_id AS \"orderId\", payload, "
                          "received_at::text AS \"receivedAt\" FROM received_orders ORDER BY "
                          "received_at",
                          0, NULL, status);
}

const shop_service_def_t shop_platform_def = {
    .name = "platform",
    .schema_sql = schema,
    .consumers = consumers,
    .n_consumers = sizeof(consumers) / sizeof(consumers[0]),
    .route = route,
};

/*
 * notification: records each message it would send to a member when a
 * payment completes or fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shop.h"

static const char schema[] = "CREATE TABLE IF NOT EXISTS notifications ("
                             " id bigserial PRIMARY KEY,"
                             " event_id text NOT NULL UNIQUE,"
                             " payment_id text NOT NULL,"
                             " member_id bigint NOT NULL,"
                             " kind text NOT NULL,"
                             " message text NOT NULL,"
                             " created_at timestamptz NOT NULL DEFAULT clock_timestamp());";

static int on_outcome(void *opaque, PGconn *conn, const outboxd_shop_event_t *ev, char *errstr,
                      size_t errstr_size)
{
    (void)opaque;
    long long member, order;
    const char *payment_id = shop_jstr(ev->payload, "paymentId", errstr, errstr_size);
    if (!payment_id || !shop_jint(ev->payload, "memberId", &member, errstr, errstr_size) ||
        !shop_jint(ev->payload, "orderId", &order, errstr, errstr_size))
        return -1;
    bool ok = strcmp(ev->topic, "complete-order") == 0;
    char msg[1024], m[32];
    if (ok) {
        snprintf(msg, sizeof(msg), "Your payment for order %lld is complete.", order);
    } else {
        const char *reason = json_string_value(json_object_get(ev->payload, "reason"));
        snprintf(msg, sizeof(msg), "Your payment for order %lld failed: %s. Nothing was charged.",
                 order, reason ? reason : "unknown reason");
    }
    snprintf(m, sizeof(m), "%lld", member);
    const char *p[5] = {ev->id, payment_id, m, ok ? "PAYMENT_COMPLETED" : "PAYMENT_FAILED", msg};
    return outboxd_shop_command(conn,
                                "INSERT INTO notifications (event_id, payment_id, "
                                "member_id, kind, message) VALUES ($1, $2, $3, $4, $5)",
                                5, p, errstr, errstr_size);
}

static const shop_consumer_def_t consumers[] = {
    {"outcome", {"complete-order", "payment-failed"}, on_outcome},
};

/* GET /notifications[?memberId=N] */
static json_t *route(void *opaque, outboxd_shop_req_t *req, int *status)
{
    shop_svc_t *svc = opaque;
    if (strcmp(req->method, "GET") != 0 || strcmp(req->path, "/notifications") != 0)
        return outboxd_shop_error(status, 404, "no route %s %s", req->method, req->path);
    const char *m = outboxd_shop_req_header(req, "X-Member-Id");
    if (!m || !*m)
        m = outboxd_shop_req_query(req, "memberId");
    const char *p[1] = {m};
    return shop_http_rows(svc,
                          "SELECT id, payment_id AS \"paymentId\", member_id AS \"memberId\", "
                          "kind, message, created_at::text AS \"createdAt\" FROM notifications "
                          "WHERE $1::bigint IS NULL OR member_id = $1::bigint ORDER BY id",
                          1, p, status);
}

const shop_service_def_t shop_notification_def = {
    .name = "notification",
    .schema_sql = schema,
    .consumers = consumers,
    .n_consumers = sizeof(consumers) / sizeof(consumers[0]),
    .route = route,
};
